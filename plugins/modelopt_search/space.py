"""The recipe space: which stages a trial draws, per target, and how one recipe is sampled.

A recipe is plain data: ``{"steps": [...], "backend": ..., "backend_options": {...}}`` where
``steps`` have the shape of ``modelopt run`` recipe steps (``{"apply": name, **config}`` or
``{"export": format}``), so a found recipe pastes into a run recipe. The ranges of every
component option come from the component's own config fields (``mo.field(search=...)``);
this module only says which components make each stage, and holds the few options a
component cannot declare itself (training epochs live in the shared ``TrainConfig``).
"""

from __future__ import annotations

import copy
from typing import Any

import attrs

import modelopt_core as mo
from modelopt_core import Choice

from .errors import SearchError
from .recipes import (
    FALLBACK_FIELD,
    _config_defaults,
    describe_recipe,
    recipe_costs,
    trains,
)
from .runtimes import (  # noqa: F401 (unavailable_targets: importable from here as before)
    check_target,
    native_bf16,
    targets,
    thread_option_of,
    unavailable_targets,
    unreachable_steps,
)
from .runtimes import (
    targets as _registry_targets,  # (target_spaces has a parameter targets)
)

__all__ = [  # (the names of .runtimes and .recipes, importable from here as before)
    "check_space",
    "check_target",
    "default_space",
    "describe_recipe",
    "escalated_params",
    "merge_space",
    "native_bf16",
    "recipe_costs",
    "repaired_params",
    "sample_recipe",
    "starting_recipes",
    "target_spaces",
    "targets",
    "thread_option_of",
]

#: the search's first choices for the built-in targets (plain data, overridable with
#: ``space=``): precision and graph stages per target. A target not listed here gets every
#: available optimizer that accepts its format and declares the stage (``Optimizer.stage``)
_PRECISION = {
    "openvino": ["none", "openvino.quantize"],
    "onnxruntime": ["none", "onnx.quantize_static", "onnx.quantize_dynamic"],
    "torch": ["none", "quantize.dynamic", "quantize.bf16"],
}
_GRAPH = {"openvino": ["none"], "onnxruntime": ["none", "onnx.optimize"], "torch": ["none"]}


def _stage_names(stage: str, fmt: str, pm: Any) -> list[str]:
    return ["none"] + [i.name for i in pm.components("optimizer")
                       if i.cls.stage == stage and fmt in i.cls.accepts
                       and i.cls.availability()[0]]

#: runtime options searched per target (backend config values; data, overridable)
_RUNTIME: dict[str, dict[str, Any]] = {
    "openvino": {"performance_hint": {"choice": ["LATENCY"]},
                 "inference_precision": {"choice": ["f32", "bf16"]}},
    "onnxruntime": {"graph_optimization_level": {"choice": ["all", "extended"]}},
    "torch": {},
}


def default_space(target: str, pm: Any = None) -> dict[str, Any]:
    """The default recipe space for ``target`` as plain data (see docs/search.md)."""
    pm = pm or mo.get_plugin_manager()
    fmt, _ = check_target(target, pm)
    return {
        "prune": ["none", "prune.structured"],
        "recovery": ["none", "distill.logits"],
        "graph": list(_GRAPH.get(target) or _stage_names("graph", fmt, pm)),
        "precision": list(_PRECISION.get(target) or _stage_names("precision", fmt, pm)),
        "runtime": copy.deepcopy(_RUNTIME.get(target, {})),
        # options a component cannot declare on its own fields, and fixed settings
        # (an exporter's as "export.<format>")
        "params": {"distill.logits": {"epochs": {"ints": [1, 3]}}},
        "fixed": {"distill.logits": {"lr": 3e-3, "eval_each_epoch": False},
                  "prune.structured": {"round_to": None}},
    }


def merge_space(target: str, override: dict[str, Any] | None,
                pm: Any = None) -> dict[str, Any]:
    """The default space with the user's ``override`` (same keys) laid over it."""
    space = default_space(target, pm)
    for key, value in (override or {}).items():
        if key not in space:
            raise SearchError(f"optimize: unknown search-space key {key!r}; valid keys: "
                              f"{', '.join(space)}.")
        if key in ("params", "fixed"):
            for comp, opts in dict(value).items():
                space[key].setdefault(comp, {}).update(opts)
        elif key == "runtime":
            space[key] = dict(value)
        else:
            space[key] = list(value)
    return space


def check_space(space: dict[str, Any], pm: Any, has_train: bool) -> dict[str, Any]:
    """Drop stage components that are missing or unavailable here (or need train data the
    session lacks); fail when a stage is left empty. Returns the checked space."""
    out = copy.deepcopy(space)
    for stage in ("prune", "recovery", "graph", "precision"):
        keep = []
        for name in out[stage]:
            if name == "none":
                keep.append(name)
                continue
            try:
                cls = pm.get("optimizer", name).cls
            except mo.ModeloptError as e:
                raise SearchError(f"optimize: search space [{stage}]: {e}") from e
            if not cls.availability()[0]:
                continue
            if "train_data" in getattr(cls, "needs", ()) and not has_train:
                continue
            keep.append(name)
        if not keep:
            raise SearchError(f"optimize: no component of the [{stage}] stage "
                              f"{space[stage]} is available here; add 'none' or install one.")
        out[stage] = keep
    return out


def _component_space(name: str, space: dict[str, Any], pm: Any) -> dict[str, Any]:
    cls = pm.get("optimizer", name).cls
    spaces: dict[str, Any] = dict(mo.search_space(cls))
    for field, data in space["params"].get(name, {}).items():
        spaces[field] = mo.space_from_data(data, f"search space params.{name}.{field}")
    return spaces


def _sample_component(trial: Any, name: str, space: dict[str, Any], pm: Any) -> dict[str, Any]:
    cfg = dict(space["fixed"].get(name, {}))
    for field, sp in _component_space(name, space, pm).items():
        if field not in cfg:
            cfg[field] = sp.suggest(trial, f"{name}.{field}")
    return {"apply": name, **cfg}


#: share of the search's budget given to a component's own accuracy control (eval noise margin)
FALLBACK_SHARE = 0.8


def sample_recipe(trial: Any, target: str | list[str], space: dict[str, Any], pm: Any,
                  fixed_runtime: dict[str, Any] | None = None,
                  max_drop: float | None = None, source: str = "torch") -> dict[str, Any]:
    """Draw one recipe on an Optuna trial (define-by-run). With several targets (a list),
    ``space`` and ``fixed_runtime`` map each target to its own, and the trial draws the
    target first (parameter ``target``; the precision and runtime parameters are then named
    per target). ``source``: the original's format (no export step to it)."""
    tag = ""
    if not isinstance(target, str):
        if len(target) == 1:
            target, space = target[0], space[target[0]]
            fixed_runtime = (fixed_runtime or {}).get(target)
        else:
            target = trial.suggest_categorical("target", list(target))
            space, fixed_runtime = space[target], (fixed_runtime or {}).get(target)
            tag = f".{target}"
    fmt, backend = check_target(target, pm, source)
    steps: list[dict[str, Any]] = []
    prune = trial.suggest_categorical("prune", space["prune"])
    if prune != "none":
        steps.append(_sample_component(trial, prune, space, pm))
        recovery = trial.suggest_categorical("recovery", space["recovery"])
        if recovery != "none":
            steps.append(_sample_component(trial, recovery, space, pm))
    precision = trial.suggest_categorical(f"precision{tag}", space["precision"])
    prec_cls = pm.get("optimizer", precision).cls if precision != "none" else None
    if fmt != source and (prec_cls is None or fmt in prec_cls.accepts):
        steps.append({"export": fmt, **space["fixed"].get(f"export.{fmt}", {})})
    if len(space["graph"]) > 1 or space["graph"] != ["none"]:
        graph = trial.suggest_categorical(f"graph{tag}", space["graph"])
        if graph != "none":
            steps.append(_sample_component(trial, graph, space, pm))
    if prec_cls is not None:
        if "torch" in prec_cls.accepts and fmt != "torch":
            raise SearchError(f"optimize: precision {precision!r} runs on torch artifacts, but "
                              f"target {target!r} needs {fmt!r}; drop it from the space.")
        step = _sample_component(trial, precision, space, pm)
        # per-layer float fallback: a component with accuracy control (openvino.quantize:
        # NNCF reverts the most sensitive layers to float until the eval_fn is within budget)
        if (max_drop is not None and FALLBACK_FIELD in mo.config_fields(prec_cls.Config)
                and FALLBACK_FIELD not in step
                and trial.suggest_categorical(f"{precision}.float_fallback", [False, True])):
            step[FALLBACK_FIELD] = round(FALLBACK_SHARE * max_drop, 6)
        steps.append(step)
    options = dict(fixed_runtime or {})
    for opt, data in space["runtime"].items():
        sp = mo.space_from_data(data, f"search space runtime.{opt}")
        options[opt] = sp.suggest(trial, f"runtime{tag}.{opt}")
    steps = [mo.RecipeStep.from_data(st, f"optimize: trial step {i + 1}").to_recipe()
             for i, st in enumerate(steps)]  # plain data, as a run recipe's [[steps]]
    return {"target": target, "steps": steps, "backend": backend, "backend_options": options}


def _params_expensive(p: dict[str, Any], pm: Any = None) -> bool:
    """Whether starting params draw an expensive recipe (see :func:`recipe_costs`)."""
    return any(k.endswith(".float_fallback") and v is True for k, v in p.items()) or \
        p.get("recovery", "none") != "none" or (
            p.get("prune", "none") != "none" and trains(str(p["prune"]), pm))


def starting_recipes(space: dict[str, Any], pm: Any,
                     targets: list[str] | None = None) -> list[dict[str, Any]]:
    """Optuna params of the first trials of a new study, cheap and likely good first: the
    plain export (the floor to beat), the same in bf16 on OpenVINO where the CPU has native
    bf16 (:func:`native_bf16`), each precision alone with its defaults (and INT8 with the
    first/last weighted layers in float where the component can), then the expensive ones:
    float fallback (accuracy control), prune 30% + recovery, without and with precision (the
    best practice's ladder; :func:`escalated_params` climbs it further). With several
    ``targets`` (``space`` then maps each to its own), the cheap rungs of every target come
    before the expensive rungs of any."""
    if targets is not None and len(targets) > 1:
        ladders = []
        for t in targets:
            ladders.append([])
            for p in starting_recipes(space[t], pm):
                p["target"] = t
                p[f"precision.{t}"] = p.pop("precision")
                if "graph" in p:
                    p[f"graph.{t}"] = p.pop("graph")
                for k in [k for k in p if k.startswith("runtime.")]:
                    p[f"runtime.{t}.{k[8:]}"] = p.pop(k)
                ladders[-1].append(p)
        # the targets take turns (each one's plain export first: a short search sees them
        # all); stable: each target's own order kept
        out = [ld[i] for i in range(max(map(len, ladders))) for ld in ladders if i < len(ld)]
        return sorted(out, key=_params_expensive)
    if targets is not None:
        space = space[targets[0]]
    out: list[dict[str, Any]] = []
    if "none" in space["precision"]:  # the plain export on the runtime: the floor to beat
        out.append({"prune": "none", "precision": "none"})
    bf16 = _bf16_runtime(space)
    if bf16 and "none" in space["precision"]:
        out.append({"prune": "none", "precision": "none", **bf16})
    for p in space["precision"]:
        if p != "none":  # the component's own defaults first, then with float fallback
            first = {"prune": "none", "precision": p, **_defaults(p, space, pm)}
            fields = mo.config_fields(pm.get("optimizer", p).cls.Config)
            if FALLBACK_FIELD in fields:
                first[f"{p}.float_fallback"] = False
            out.append(first)
            # INT8 with the first and last weighted layers kept in float: cheap (no
            # accuracy control) and often what holds a tight budget. It is drawn only when
            # the component searches a ``float_ends`` option (openvino.quantize's, once it
            # declares ``search=``); FLOAT_ENDS_PLACE: an ``overflow_fix`` rung belongs here
            # too once the component declares its space.
            comp = _component_space(p, space, pm)
            if "float_ends" in comp and _inside(comp["float_ends"], True) \
                    and first.get(f"{p}.float_ends") is not True:
                out.append({**first, f"{p}.float_ends": True})
            if FALLBACK_FIELD in fields:
                out.append({**first, f"{p}.float_fallback": True})
    if bf16:  # each precision's defaults with its float ops in bf16
        out += [{**p, **bf16} for p in list(out) if p["precision"] != "none"
                and not _params_expensive(p, pm)
                and not any(k.endswith(".float_ends") and v is True for k, v in p.items())]
    if "prune.structured" in space["prune"]:
        rec = "distill.logits" if "distill.logits" in space["recovery"] else "none"
        precision = next((p for p in space["precision"] if p != "none"), "none")
        pruned: dict[str, Any] = {"prune": "prune.structured", "recovery": rec}
        ratio = _component_space("prune.structured", space, pm).get("ratio")
        if ratio is not None and _inside(ratio, 0.3):
            pruned["prune.structured.ratio"] = 0.3
        if "none" in space["precision"]:  # prune + recovery alone, then with precision
            out.append({**pruned, "precision": "none"})
        if precision != "none":
            start = {**pruned, "precision": precision, **_defaults(precision, space, pm)}
            if len(space["graph"]) > 1:  # the demo's pipeline: graph optimization included
                start["graph"] = space["graph"][-1]
            out.append(start)
    first_runtime = {}
    for opt, data in space["runtime"].items():  # each runtime choice's first value
        sp = mo.space_from_data(data, f"search space runtime.{opt}")
        if isinstance(sp, Choice):
            first_runtime[f"runtime.{opt}"] = sp.values[0]
    out = [{**first_runtime, **p} for p in out]
    out = [p for p in out if all(p[k] in space[k] for k in ("prune", "recovery", "graph",
                                                             "precision") if k in p)]
    return sorted(out, key=_params_expensive)  # stable: cheap rungs first


def _bf16_runtime(space: dict[str, Any]) -> dict[str, Any]:
    """``{"runtime.inference_precision": "bf16"}`` when the space searches that runtime option
    with a bf16 choice and this CPU has native bf16; else ``{}``."""
    data = space["runtime"].get("inference_precision")
    if data is None or not native_bf16():
        return {}
    sp = mo.space_from_data(data, "search space runtime.inference_precision")
    if isinstance(sp, Choice) and "bf16" in sp.values and sp.values[0] != "bf16":
        return {"runtime.inference_precision": "bf16"}
    return {}


def escalated_params(params: dict[str, Any], space: dict[str, Any],
                     pm: Any) -> dict[str, Any] | None:
    """The Optuna params of the next, more aggressive step after a recipe that is the
    feasible best so far ("add aggressive techniques step by step"): its pruning ratio one
    step up its space (the grid step, the next larger choice, or a fifth of the range);
    ``None`` when it does not prune or already sits at the top of the range. ``space`` is
    the trial's target's."""
    prune = params.get("prune")
    key = f"{prune}.ratio"
    if prune in (None, "none") or key not in params:
        return None
    sp = _component_space(prune, space, pm).get("ratio")
    v = params[key]
    if isinstance(sp, Choice):
        up = sorted(c for c in sp.values if isinstance(c, (int, float))
                    and not isinstance(c, bool) and c > v)
        nxt = up[0] if up else None
    elif sp is not None and not getattr(sp, "log", False):
        nxt = round(v + (sp.step or (sp.hi - sp.lo) / 5), 10)
        nxt = nxt if nxt <= sp.hi + 1e-9 else None
    else:
        nxt = None
    return None if nxt is None else {**params, key: nxt}


def repaired_params(params: dict[str, Any], space: dict[str, Any],
                    pm: Any) -> list[dict[str, Any]]:
    """After a precision step alone missed the budget: the same recipe with one choice
    option of the precision component changed at a time (e.g. openvino.quantize with
    ``preset="mixed"``, then with ``fast_bias_correction=False``...), each a variant the
    sampler might take long to reach. Empty when the recipe prunes (the pruning is the
    likelier culprit) or has no precision step. ``space`` is the trial's target's."""
    key = next((k for k in params if k == "precision" or k.startswith("precision.")), None)
    name = params.get(key) if key else None
    if params.get("prune", "none") != "none" or name in (None, "none"):
        return []
    out = []
    for field, sp in _component_space(name, space, pm).items():
        pkey = f"{name}.{field}"
        if isinstance(sp, Choice) and pkey in params:
            out += [{**params, pkey: v} for v in sp.values if v != params[pkey]]
    return out


def _inside(sp: Any, v: Any) -> bool:
    if isinstance(sp, Choice):
        return any(v == c and type(v) is type(c) for c in sp.values)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and sp.lo <= v <= sp.hi


def _defaults(name: str, space: dict[str, Any], pm: Any) -> dict[str, Any]:
    """Optuna params holding a component's config defaults (where its space has them)."""
    defaults = _config_defaults(pm, "optimizer", name)
    out = {}
    for field, sp in _component_space(name, space, pm).items():
        default = defaults.get(field, attrs.NOTHING)
        if field not in space["fixed"].get(name, {}) and _inside(sp, default):
            out[f"{name}.{field}"] = default
    return out


def target_spaces(targets: list[str], override: dict[str, Any] | None, pm: Any,
                  has_train: bool, source: str = "torch",
                  notes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """target -> its checked space; an override's ``precision``/``runtime`` may be keyed
    by target (``{"openvino": [...], "onnxruntime": [...]}``). Steps an original of format
    ``source`` cannot reach are left out, each stage's once in ``notes``."""
    out = {}
    have = _registry_targets(pm, source)
    for t in targets:
        o = dict(override or {})
        for key in ("graph", "precision", "runtime"):
            if isinstance(o.get(key), dict) and set(o[key]) <= set(have) and o[key]:
                if t in o[key]:
                    o[key] = o[key][t]
                else:
                    del o[key]
        space, said = unreachable_steps(merge_space(t, o, pm), pm, source)
        out[t] = check_space(space, pm, has_train)
        if notes is not None:
            notes += [n for n in said if n not in notes]
    return out
