"""Recipes: a whole pipeline (model, data, training, steps, comparison, output) in one
TOML/JSON file, run by ``modelopt run RECIPE`` (``--dry-run`` checks it without running).

```toml
model = "modelopt_demo.models:SmallCNN"        # "module:callable" returning an nn.Module;
model_kwargs = {width = 32}                    # the recipe's folder and the working
                                               # directory are importable
weights = "weights.safetensors"                # optional; safetensors only
example_inputs = [[1, 1, 8, 8]]                # float32 shapes
data = "modelopt_demo.recipes:digits_data"     # optional "module:callable" -> dict with any of
                                               # calibration_data, train_data, eval_fn
[train]                                        # optional: train the model first (the shared
epochs = 8                                     # training loop; any TrainConfig option)
lr = 0.003

[[steps]]
export = "onnx"
[[steps]]
apply = "onnx.quantize_static"
per_channel = true

[compare]
title = "digits INT8"
backends = ["torch", "onnxruntime"]
profilers = ["accuracy", "latency", "size"]
profiler_options = {latency = {min_time_s = 0.5}}
backend_options = {onnxruntime = {intra_op_num_threads = 2}}

[output]
dir = "out/digits-int8"                        # report.md/.json/.html and final-artifact/
final = "latency"                              # the final artifact: the best measured row by
max_accuracy_drop = 1.0                        # latency | size | throughput | accuracy within
                                               # this many points of the original's accuracy
                                               # ("last": the last step)
```
The model and data callables are imported from the named modules: a recipe runs code you
chose, like a Python script does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .callables import build_model, import_callable
from .errors import ConfigError, ModeloptError, close_names
from .outputs import (
    FINAL,
    FINAL_MAX_DROP,
    check_final,
    choose_final,
    link_folder,
    write_outputs,
)
from .plan import UNAVAILABLE, plan_steps, unavailable_line
from .steps import as_steps, run_steps

if TYPE_CHECKING:
    from .plugins import PluginManager

DEFAULT_PROFILERS = ("accuracy", "latency", "size")

__all__ = ["TOP_KEYS", "UNAVAILABLE", "build_model", "build_session", "check_keys",
           "check_runnable", "import_callable", "load_recipe", "plan_recipe", "run_recipe",
           "unavailable_here"]

#: the top-level keys of a recipe
TOP_KEYS = {"model", "model_kwargs", "weights", "example_inputs", "data", "train", "steps",
        "compare", "output", "input_names"}
_TABLES = {"compare": {"backends", "profilers", "profiler_options", "backend_options", "title"},
           "output": {"dir", "final", "max_accuracy_drop"}}
_DATA_KEYS = {"calibration_data", "train_data", "eval_fn", "task_loss"}


def check_keys(where: str, got: Any, valid: set[str]) -> None:
    """ConfigError naming ``where`` unless ``got`` is a table whose keys are all in ``valid``
    (unknown keys get a did-you-mean)."""
    if not isinstance(got, dict):
        raise ConfigError(f"{where} must be a table/object, got {type(got).__name__}.")
    unknown = sorted(set(got) - valid)
    if unknown:
        hints = [f"{k!r} (did you mean {close_names(k, valid)[0]!r}?)" if close_names(k, valid)
                 else repr(k) for k in unknown]
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}. Valid keys: "
                          f"{', '.join(sorted(valid))}.")


#: what ``modelopt run --model ... --calibration ...`` gives instead of the recipe
MODEL_KEYS = {"model", "model_kwargs", "weights", "example_inputs", "data", "train",
              "input_names"}


def load_recipe(path: str | Path, model_given: bool = False) -> dict[str, Any]:
    """Read and validate a recipe file (``.toml`` or ``.json``). ``model_given``: the model
    and its data come from ``--model``/``--calibration``, so the recipe holds its steps,
    ``[compare]`` and ``[output]`` only."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {p}: no such file.")
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(p.read_text())
        else:
            data = json.loads(p.read_text())
    except (ValueError, ImportError) as e:
        raise ConfigError(f"recipe {p}: cannot parse ({e}).") from e
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {p}: the top level must be a table/object.")
    if "search" in data:
        raise ConfigError(f"recipe {p} is a search recipe (it has a [search] table): run it with "
                          f"`modelopt optimize {p}`. `modelopt run` runs recipes of [[steps]].")
    check_keys(f"recipe {p}", data, TOP_KEYS)
    if model_given and MODEL_KEYS & set(data):
        raise ConfigError(f"recipe {p}: --model and --calibration give the model and its "
                          f"data, so the recipe may hold only [[steps]], [compare] and "
                          f"[output]; drop {sorted(MODEL_KEYS & set(data))} from it, or run "
                          "it without --model.")
    for table, valid in _TABLES.items():
        if table in data:
            check_keys(f"recipe {p}: [{table}]", data[table], valid)
    if "train" in data:
        from .config import build_config
        from .training import TrainConfig

        if not isinstance(data["train"], dict):
            raise ConfigError(f"recipe {p}: [train] must be a table of training options.")
        build_config(TrainConfig, dict(data["train"]), f"recipe {p}: [train]")
    if "data" not in data and "train" in data:
        raise ConfigError(f"recipe {p}: [train] needs training data: add data = "
                          "\"module:callable\" returning {'train_data': ...}.")
    for k in ("model", "example_inputs"):
        if k not in data and not model_given:
            raise ConfigError(f"recipe {p}: missing required key {k!r}.")
    shapes = data.get("example_inputs", [[1]])
    if not (isinstance(shapes, list) and shapes and all(
            isinstance(s, list) and s and all(isinstance(d, int) and d > 0 for d in s)
            for s in shapes)):
        raise ConfigError(f"recipe {p}: example_inputs must be a list of shapes, e.g. "
                          "[[1, 3, 224, 224]].")
    as_steps(data.get("steps", []), f"recipe {p}: step")  # each a RecipeStep
    return data


def plan_recipe(path: str | Path, plugins: PluginManager | None = None) -> list[str]:
    """Check a recipe without running anything heavy: the model and data callables import,
    every step's component exists and takes its config, the formats chain (exports have a
    path, optimizers accept the format they get), steps find the data they need, every
    backend and profiler exists and each backend runs some artifact of the pipeline.
    Returns the plan as lines, ending with one ``not available here: ...`` line per component
    this machine lacks, naming the step or table that uses it (its optional dependencies or
    hardware: the recipe is valid, but it cannot run here; see :func:`unavailable_here`);
    raises :class:`ConfigError` naming the first problem."""
    from .plugins import get_plugin_manager

    p = Path(path)
    r = load_recipe(p)
    pm = plugins or get_plugin_manager()
    import_callable(r["model"], "model", p.parent)
    lines = [f"model {r['model']} on inputs {r['example_inputs']}"]
    if "data" in r:
        import_callable(r["data"], "data", p.parent)
        lines.append(f"data from {r['data']}")
    if "train" in r:
        lines.append(f"train {r['train']}")
    missing: list[str] = []
    formats = _plan_steps(r, pm, lines, missing)
    _plan_compare(r.get("compare", {}), pm, formats, lines, missing)
    out = r.get("output", {})
    check_final(out.get("final", "latency"), out.get("max_accuracy_drop", FINAL_MAX_DROP),
                "recipe [output]", pm)
    if out.get("dir"):
        lines.append(f"write to {out['dir']}; final artifact: {_final_text(out)}")
    return lines + list(dict.fromkeys(missing))


def _final_text(out: dict[str, Any]) -> str:
    """How ``[output]`` picks the final artifact, in words (the plan's line)."""
    final = out.get("final", "latency")
    return "the last step" if final == "last" else (
        f"the best measured row by {final} within "
        f"{out.get('max_accuracy_drop', FINAL_MAX_DROP):g} accuracy points of the original")


def unavailable_here(plan: list[str]) -> list[str]:
    """The lines of a :func:`plan_recipe` plan that name a component this machine lacks."""
    return [line for line in plan if line.startswith(UNAVAILABLE)]


def _plan_steps(r: dict[str, Any], pm: Any, lines: list[str], missing: list[str],
                fmt: str = "torch", has_data: bool = False) -> list[str]:
    """Check the recipe's steps with the one planner (:func:`~modelopt_core.plan.plan_steps`),
    adding a plan line per step and a line per unavailable component to ``missing``;
    returns the formats the pipeline makes from an original of format ``fmt``
    (``has_data``: calibration data and an eval_fn come with it)."""
    if "data" in r:  # the data callable's keys are known only when it runs
        has = None
    else:
        has = (lambda n: has_data and n in ("calibration_data", "eval_fn"))
    plan = plan_steps(pm, r.get("steps", []), fmt, has,
                      'add data = "module:callable" to the recipe.')
    lines += plan.lines
    missing += plan.unavailable
    return list(plan.formats)


def _plan_compare(cmp: dict[str, Any], pm: Any, formats: list[str], lines: list[str],
                  missing: list[str]) -> None:
    """Check ``[compare]``'s backends and profilers (see :func:`plan_recipe`)."""
    for b in cmp.get("backends", ["torch"]):
        try:
            cls = pm.get("backend", b).cls
        except ModeloptError as e:
            raise ConfigError(f"recipe [compare] backends: {e}") from e
        accepts = cls.accepts
        missing += unavailable_line("[compare] backends", "backend", cls)
        if not set(accepts) & set(formats):
            raise ConfigError(f"recipe [compare]: backend {b!r} runs {list(accepts)} artifacts, "
                              f"but the pipeline makes only {sorted(set(formats))}; drop it or "
                              "add an export step.")
    for prof in cmp.get("profilers", DEFAULT_PROFILERS):
        try:
            pm.get("profiler", prof).cls(**cmp.get("profiler_options", {}).get(prof, {}))
        except ModeloptError as e:
            raise ConfigError(f"recipe [compare] profilers: {e}") from e
    lines.append(f"compare on {cmp.get('backends', ['torch'])} with "
                 f"{cmp.get('profilers', list(DEFAULT_PROFILERS))}")


def check_runnable(path: str | Path, plugins: PluginManager | None = None) -> list[str]:
    """The plan of the recipe at ``path`` (:func:`plan_recipe`) when every component it uses
    runs here; else :class:`BackendUnavailableError` naming each step (or ``[compare]``
    backend) that cannot, before anything is built or trained."""
    from .errors import BackendUnavailableError

    lines = plan_recipe(path, plugins)
    missing = unavailable_here(lines)
    if missing:
        said = "; ".join(m[len(UNAVAILABLE):] for m in missing)
        raise BackendUnavailableError(
            f"recipe {path} cannot run on this machine, so nothing was run (the model was not "
            f"built or trained): {said}. Run it where those are available (install what the "
            "reasons name), or drop those steps or backends from the recipe.")
    return lines


def run_recipe(path: str | Path, progress: bool = True, out_dir: str | Path | None = None,
               say: Any = print) -> Any:
    """Run a recipe: build the model (training it when the recipe has ``[train]``), apply the
    steps, compare, write outputs (to ``out_dir`` when given, else ``[output].dir``):
    ``report.md``, ``report.json``, ``report.html`` and the final artifact in
    ``final-artifact/``: the best measured one within the accuracy budget (``[output]`` final
    and max_accuracy_drop, see :func:`~modelopt_core.outputs.choose_final`), not the last step (see :func:`~modelopt_core.outputs.write_outputs`; ``artifact``, the
    name older versions wrote, links to it). Every check comes first
    (:func:`check_runnable`): nothing runs for a recipe that cannot finish here.
    Returns the :class:`~modelopt_core.Report`; ``say`` receives the progress lines."""
    p = Path(path)
    check_runnable(p)
    r = load_recipe(p)
    s = build_session(p, r, progress=progress, say=say)
    return run_pipeline(s, r, f"modelopt run {p.name}", out_dir, say)


def run_pipeline(s: Any, r: dict[str, Any], title: str, out_dir: str | Path | None = None,
                 say: Any = print) -> Any:
    """The recipe ``r``'s steps, comparison and outputs on the session ``s`` (see
    :func:`run_recipe`); ``title``: the report's unless ``[compare]`` gives one."""
    run_steps(s, r.get("steps", []), say)  # the one step runner (planned first)
    cmp = r.get("compare", {})
    say("measuring every step...")
    report = s.compare(backends=cmp.get("backends", ["torch"]),
                       profilers=cmp.get("profilers", list(DEFAULT_PROFILERS)),
                       backend_options=cmp.get("backend_options"),
                       profiler_options=cmp.get("profiler_options"))
    report.title = cmp.get("title", title)
    metric = getattr(s.eval_fn, "metric", None)  # what the accuracy column is, when it says
    if isinstance(metric, str) and metric:
        report.notes.setdefault("accuracy", []).insert(0, metric)
    out = out_dir or r.get("output", {}).get("dir")
    if out:
        o = r.get("output", {})
        final, view = choose_final(s, report, o.get("final", "latency"),
                                   o.get("max_accuracy_drop", FINAL_MAX_DROP), say,
                                   cmp.get("backend_options"))
        write_outputs(report, final, Path(out), say, command="run", **view)
        link_folder(Path(out), "artifact", FINAL)  # the name older versions wrote
    return report


def build_session(path: str | Path, r: dict[str, Any], progress: bool = True,
                  say: Any = print) -> Any:
    """The recipe's model (weights loaded, trained when it has ``[train]``) and data in a
    :class:`~modelopt_core.Session`; ``r`` is the loaded recipe of the file at ``path``
    (callables are imported relative to its folder)."""
    import torch

    from .artifact import load_artifact
    from .session import Session

    p = Path(path)
    model = import_callable(r["model"], "model", p.parent)(**r.get("model_kwargs", {}))
    if "weights" in r:
        model = load_artifact(p.parent / r["weights"], model=model).model
    inputs = tuple(torch.randn(*s) for s in r["example_inputs"])
    data = import_callable(r["data"], "data", p.parent)() if "data" in r else {}
    if not isinstance(data, dict) or set(data) - _DATA_KEYS:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"recipe {p}: the data callable must return a dict with any of "
                          f"{sorted(_DATA_KEYS)}; got {got}.")
    if "train" in r:
        model = _train(model, r["train"], data, progress, say)
    return Session(model, inputs, input_names=r.get("input_names"), progress=progress, **data)


def _train(model: Any, options: dict[str, Any], data: dict[str, Any], progress: bool,
           say: Any) -> Any:
    """Train a copy of the freshly built model with the shared loop (``[train]``)."""
    import copy

    from .config import build_config
    from .errors import DataError
    from .interfaces import Context
    from .training import TrainConfig, fit

    if data.get("train_data") is None:
        raise DataError("recipe [train]: the data callable returned no train_data.")
    cfg = build_config(TrainConfig, dict(options), "recipe [train]")
    say(f"training {type(model).__name__} ({cfg.epochs} epochs)...")
    model = copy.deepcopy(model)
    fit(model, data["train_data"], config=cfg, ctx=Context(show_progress=progress))
    return model.eval()
