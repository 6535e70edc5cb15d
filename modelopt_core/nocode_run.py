"""``modelopt run --model MODEL --calibration DATA [--eval EVAL] [RECIPE]``: a pipeline on a
model given as a file (see :mod:`.nocode`), no Python needed.

With a recipe, its ``[[steps]]``, ``[compare]`` and ``[output]`` run on the model (a recipe
for ``--model`` names no model or data of its own). Without one, the default pipeline: INT8
post-training quantization calibrated on ``--calibration`` (ONNX Runtime's static
quantization, after an ONNX export for a torch model; OpenVINO's for an OpenVINO model),
every artifact measured (accuracy, latency, size) on the reference runtime of its format;
the final artifact is the fastest within 1 accuracy point of the original. To compare every
runtime available here and search their options, use ``modelopt optimize`` with the same
options.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["DEFAULT_OUT", "DEFAULT_STEPS", "default_recipe", "dry_run", "run_nocode"]

#: the default pipeline's steps by the original's format
DEFAULT_STEPS: dict[str, list[dict[str, Any]]] = {
    "torch": [{"export": "onnx"}, {"apply": "onnx.quantize_static"}],
    "onnx": [{"apply": "onnx.quantize_static"}],
    "openvino": [{"apply": "openvino.quantize"}],
}
#: where ``modelopt run --model`` writes without ``--out`` or an ``[output]`` dir
DEFAULT_OUT = "modelopt-run-out"


def default_recipe(fmt: str, pm: Any) -> dict[str, Any]:
    """The default pipeline for an original of format ``fmt``: its steps, compared on the
    available reference backend of every format it makes."""
    if fmt not in DEFAULT_STEPS:
        raise ConfigError(f"modelopt run --model: no default pipeline for a {fmt!r} model; "
                          f"give a recipe of [[steps]] (modelopt run --model ... RECIPE), or "
                          "search with modelopt optimize --model ...")
    steps = [dict(st) for st in DEFAULT_STEPS[fmt]]
    return {"steps": steps, "compare": {"backends": _reference_backends(fmt, steps, pm)}}


def _reference_backends(fmt: str, steps: list[dict[str, Any]], pm: Any) -> list[str]:
    """The available reference backend of every format the steps make from ``fmt``."""
    formats = [fmt] + [st["export"] for st in steps if "export" in st]
    found = (pm.reference_backend(f) for f in formats)
    return list(dict.fromkeys(b for b in found if b is not None))


def _recipe(args: argparse.Namespace, fmt: str, pm: Any) -> dict[str, Any]:
    """The recipe file (its [compare] backends default to the reference backends of the
    formats it makes), or the default pipeline."""
    from .recipe import load_recipe

    if args.recipe is None:
        return default_recipe(fmt, pm)
    r = load_recipe(args.recipe, model_given=True)
    cmp = dict(r.get("compare", {}))
    cmp.setdefault("backends", _reference_backends(fmt, r.get("steps", []), pm))
    return {**r, "compare": cmp}


def dry_run(args: argparse.Namespace, session: Any) -> list[str]:
    """The plan of ``modelopt run --model ... --dry-run``: the model and its data (loaded and
    checked), then each step from the model's format, the comparison and the output."""
    from .recipe import _plan_compare, _plan_steps

    pm = session.pm
    fmt = session.original.format
    r = _recipe(args, fmt, pm)
    lines = [f"model {args.model} ({fmt}) on inputs "
             f"{[list(s.shape) for s in session.original.inputs]}, calibration "
             f"{args.calibration} ({len(session.calibration_data)} batches)",
             f"accuracy: {getattr(session.eval_fn, 'metric', 'eval_fn')}"]
    if args.recipe is None:
        lines.append("no recipe: the default pipeline (INT8 post-training quantization)")
    missing: list[str] = []
    formats = _plan_steps(r, pm, lines, missing, fmt, has_data=True)
    _plan_compare(r.get("compare", {}), pm, formats, lines, missing)
    out = args.out or r.get("output", {}).get("dir") or DEFAULT_OUT
    lines.append(f"write to {out}")
    return lines + list(dict.fromkeys(missing))


def run_nocode(args: argparse.Namespace, session: Any, say: Any = print) -> Any:
    """Run the recipe (or the default pipeline) on ``session`` (see the module doc); returns
    the report, the outputs written to ``--out``, else the recipe's [output] dir, else
    :data:`DEFAULT_OUT`."""
    from .errors import BackendUnavailableError
    from .recipe import UNAVAILABLE, run_pipeline, unavailable_here

    missing = unavailable_here(dry_run(args, session))
    if missing:
        said = "; ".join(m[len(UNAVAILABLE):] for m in missing)
        raise BackendUnavailableError(f"modelopt run --model {args.model}: cannot run on this "
                                      f"machine, so nothing was run: {said}.")
    r = _recipe(args, session.original.format, session.pm)
    out = args.out or r.get("output", {}).get("dir") or DEFAULT_OUT
    name = Path(args.recipe).name if args.recipe else "the default pipeline"
    return run_pipeline(session, r, f"modelopt run {name} on {Path(args.model).name}", out,
                        say)
