"""What a recipe (see :mod:`.space`) costs and how it reads: :func:`recipe_costs` (accuracy
control, training), :func:`describe_recipe` (one line, options at their defaults left out)."""

from __future__ import annotations

from typing import Any

import attrs

import modelopt_core as mo

#: the precision components' accuracy-control field (per-layer float fallback within a budget)
FALLBACK_FIELD = "max_accuracy_drop"


def optimizer_cls(name: str | None, pm: Any = None) -> type | None:
    """The registered optimizer class ``name``, or None (an export step, an unknown name)."""
    if not name:
        return None
    try:
        return (pm or mo.get_plugin_manager()).get("optimizer", name).cls
    except mo.ModeloptError:
        return None


def trains(name: str, pm: Any = None) -> bool:
    """Whether optimizer ``name`` trains (it needs ``train_data``, or it is a ``recover``
    stage): its cost grows with the data and epochs."""
    cls = optimizer_cls(name, pm)
    return cls is not None and ("train_data" in cls.needs or cls.stage == "recover")


def recipe_costs(recipe: dict[str, Any], pm: Any = None) -> tuple[str, ...]:
    """What makes a recipe expensive: ``"accuracy_control"`` (a precision step with
    ``max_accuracy_drop``: many evaluations of ``eval_fn``) and/or ``"training"`` (a step
    that trains, :func:`trains`); ``()`` for a cheap recipe (exports, post-training
    quantization, pruning alone)."""
    out = []
    if any(st.get(FALLBACK_FIELD) is not None for st in recipe["steps"] if "apply" in st):
        out.append("accuracy_control")
    if any(trains(st["apply"], pm) or "epochs" in st
           for st in recipe["steps"] if "apply" in st):
        out.append("training")
    return tuple(out)


def describe_recipe(recipe: dict[str, Any], pm: Any = None) -> str:
    """One line: ``prune.structured(ratio=0.3) > export openvino > openvino.quantize() @
    openvino(...)``. With the plugin manager ``pm``, options equal to the component's default
    are left out (the recipe itself, in trials.json and best.json, has them all)."""
    def shown(kind: str, name: str, opts: dict[str, Any]) -> str:
        defaults = _config_defaults(pm, kind, name)
        return ", ".join(f"{k}={v}" for k, v in opts.items()
                         if k not in defaults or not _same(defaults[k], v))

    parts = []
    for st in map(mo.RecipeStep.from_data, recipe["steps"]):
        if st.verb == "export":
            parts.append(f"export {st.name}")
        else:
            parts.append(f"{st.name}({shown('optimizer', st.name, st.config)})")
    opts = shown("backend", recipe["backend"], dict(recipe["backend_options"]))
    return " > ".join(parts or ["fp32"]) + f" @ {recipe['backend']}" + \
        (f"({opts})" if opts else "")


def _config_defaults(pm: Any, kind: str, name: str) -> dict[str, Any]:
    """The config defaults of a registered component (empty without ``pm`` or a Config)."""
    if pm is None:
        return {}
    try:
        cls = pm.get(kind, name).cls
    except mo.ModeloptError:
        return {}
    cfg = getattr(cls, "Config", None)
    if cfg is None:
        return {}
    out = {}
    for field_name, a in mo.config_fields(cfg).items():
        d = a.default
        if isinstance(d, attrs.Factory):  # type: ignore[arg-type]
            d = d.factory() if not d.takes_self else attrs.NOTHING
        if d is not attrs.NOTHING:
            out[field_name] = d
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as data (a tuple default and the list a study stored are the same)."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return list(a) == list(b)
    return a == b and isinstance(a, bool) == isinstance(b, bool)
