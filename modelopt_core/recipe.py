"""Recipes: a whole pipeline (model, data, steps, comparison, output) in one TOML/JSON file,
run by ``modelopt run RECIPE``.

```toml
model = "modelopt_demo.models:SmallCNN"        # "module:callable" returning an nn.Module
model_kwargs = {width = 32}
weights = "weights.safetensors"                # optional; safetensors only
example_inputs = [[1, 1, 8, 8]]                # float32 shapes
data = "modelopt_demo.recipes:digits_data"     # optional "module:callable" -> dict with any of
                                               # calibration_data, train_data, eval_fn
[[steps]]
export = "onnx"
[[steps]]
apply = "onnx.quantize_static"
per_channel = true

[compare]
backends = ["torch", "onnxruntime"]
profilers = ["accuracy", "latency", "size"]

[output]
dir = "out/digits-int8"
```
The model and data callables are imported from the named modules: a recipe runs code you
chose, like a Python script does.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from .errors import ConfigError, close_names

__all__ = ["load_recipe", "run_recipe"]

_TOP = {"model", "model_kwargs", "weights", "example_inputs", "data", "steps", "compare",
        "output", "input_names"}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read and validate a recipe file (``.toml`` or ``.json``)."""
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
    for k in data:
        if k not in _TOP:
            hint = close_names(k, _TOP)
            raise ConfigError(f"recipe {p}: unknown key {k!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f". Valid keys: {', '.join(sorted(_TOP))}.")
    for k in ("model", "example_inputs"):
        if k not in data:
            raise ConfigError(f"recipe {p}: missing required key {k!r}.")
    shapes = data["example_inputs"]
    if not (isinstance(shapes, list) and shapes and all(
            isinstance(s, list) and s and all(isinstance(d, int) and d > 0 for d in s)
            for s in shapes)):
        raise ConfigError(f"recipe {p}: example_inputs must be a list of shapes, e.g. "
                          "[[1, 3, 224, 224]].")
    for i, st in enumerate(data.get("steps", [])):
        verbs = [v for v in ("apply", "export") if v in st]
        if len(verbs) != 1:
            raise ConfigError(f"recipe {p}: step {i + 1} needs exactly one of 'apply' "
                              f"(an optimizer name) or 'export' (a target format), got {st}.")
    return data


def _import(ref: str, field: str) -> Any:
    mod, _, attr = ref.partition(":")
    if not mod or not attr:
        raise ConfigError(f"recipe: {field} must look like 'package.module:callable', "
                          f"got {ref!r}.")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"recipe: cannot import {field} {ref!r}: {e}") from e
    if not callable(obj):
        raise ConfigError(f"recipe: {field} {ref!r} is not callable.")
    return obj


def run_recipe(path: str | Path, progress: bool = True) -> Any:
    """Run a recipe: build the Session, apply the steps, compare, write outputs.
    Returns the :class:`~modelopt_core.Report`."""
    import torch

    from .artifact import load_artifact
    from .session import Session

    r = load_recipe(path)
    model = _import(r["model"], "model")(**r.get("model_kwargs", {}))
    if "weights" in r:
        wpath = Path(path).parent / r["weights"]
        model = load_artifact(wpath, model=model).model
    inputs = tuple(torch.randn(*s) for s in r["example_inputs"])
    data = _import(r["data"], "data")() if "data" in r else {}
    unknown = set(data) - {"calibration_data", "train_data", "eval_fn"}
    if unknown:
        raise ConfigError(f"recipe: data callable returned unknown keys {sorted(unknown)}; use "
                          "calibration_data, train_data, eval_fn.")
    s = Session(model, inputs, input_names=r.get("input_names"), progress=progress, **data)
    for i, st in enumerate(r.get("steps", [])):
        st = dict(st)
        verb = "apply" if "apply" in st else "export"
        name = st.pop(verb)
        try:
            art = getattr(s, verb)(name, **st)
        except ConfigError as e:
            raise ConfigError(f"recipe step {i + 1} ({verb} {name!r}): {e}") from e
        print(f"step {i + 1}: {verb} {name} -> {art.format} "
              f"({art.lineage[-1].duration_s:.1f} s)")
    cmp = r.get("compare", {})
    report = s.compare(backends=cmp.get("backends", ["torch"]),
                       profilers=cmp.get("profilers", ["latency", "size", "accuracy"]))
    report.print()
    out = r.get("output", {}).get("dir")
    if out:
        out = Path(out)
        report.to_markdown(out / "report.md")
        report.to_json(out / "report.json")
        s.current.save(out / "artifact")
        print(f"wrote {out}/report.md, report.json and artifact/")
    return report
