"""Options shared by ``modelopt`` commands: ``--model``/``--model-kwargs`` (the architecture
of a torch-format artifact, for ``compare`` and ``serve``; the model to optimize, with
``--calibration``, ``--eval`` and ``--batch-size``, for ``optimize`` and ``run``: the no-code
entry, see :mod:`modelopt_core.nocode`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_model_options", "model_options", "nocode_session"]


def add_model_options(parser: argparse.ArgumentParser, original: bool = False) -> None:
    """``--model MODULE:CALLABLE`` and ``--model-kwargs JSON``: the architecture of a
    torch-format artifact (weights and lineage only), for commands that load one. With
    ``original``: the no-code entry of ``optimize`` and ``run`` instead (see
    :mod:`modelopt_core.nocode`): ``--model`` is the model to optimize (an ONNX or
    ``torch.export`` file, or ``MODULE:CALLABLE``), with ``--calibration``, ``--eval`` and
    ``--batch-size``."""
    if not original:
        parser.add_argument("--model", default=None, metavar="MODULE:CALLABLE",
                            help="the architecture of a torch-format artifact (its weights "
                                 "load into what this returns), e.g. "
                                 "modelopt_demo.models:SmallCNN")
    else:
        parser.add_argument(
            "--model", default=None, metavar="MODEL",
            help="the model to optimize, no recipe needed: model.onnx (an ONNX file), "
                 "model.pt2 (torch.export.save), a saved non-torch artifact folder, or "
                 "package.module:callable returning a torch.nn.Module; needs --calibration")
    parser.add_argument("--model-kwargs", default=None, metavar="JSON",
                        help='keyword arguments of --model, e.g. \'{"width": 16}\'')
    if original:
        parser.add_argument(
            "--calibration", metavar="DATA",
            help="model inputs for --model: data.npz (one array per input, named by the "
                 "input, samples first) or a folder of .npy (one input) / .npz files")
        parser.add_argument(
            "--eval", metavar="EVAL", dest="eval_data",
            help="labels for top-1 accuracy: eval.npz (inputs as in --calibration plus "
                 "'labels') or labels.npy (one per calibration sample; the last quarter is "
                 "then held out). Without it: agreement with the original on held-out "
                 "calibration samples")
        parser.add_argument("--batch-size", type=int, metavar="N",
                            help="samples per batch, for calibration and timing (default: "
                                 "the model's fixed batch, else 8)")


def nocode_session(args: argparse.Namespace, progress: bool = False, plugins: Any = None
                   ) -> Any:
    """The Session of ``--model ... --calibration ...`` (:func:`add_model_options` with
    ``original``), or None when ``--model`` is not given; :class:`ConfigError` for a
    ``--calibration``/``--eval``/``--batch-size`` without ``--model`` and the reverse."""
    from .errors import ConfigError

    given = [f for f, v in (("--calibration", args.calibration), ("--eval", args.eval_data),
                            ("--batch-size", args.batch_size)) if v is not None]
    if args.model is None:
        if given:
            raise ConfigError(f"{', '.join(given)} go(es) with --model (the no-code entry: "
                              "--model model.onnx --calibration data.npz).")
        return None
    if args.calibration is None:
        raise ConfigError(f"--model {args.model} needs --calibration data.npz (or a folder of "
                          ".npy files): the inputs to calibrate on and measure with.")
    from .nocode import nocode_session as build

    model, kwargs = model_options(args)
    return build(model, args.calibration, args.eval_data, kwargs, args.batch_size,
                 progress=progress, plugins=plugins)


def model_options(args: argparse.Namespace) -> tuple[str | None, dict[str, Any] | None]:
    """``(--model, --model-kwargs parsed)`` of :func:`add_model_options`, checked."""
    from .errors import ConfigError

    text = getattr(args, "model_kwargs", None)
    if text is None:
        return args.model, None
    if args.model is None:
        raise ConfigError("--model-kwargs goes with --model MODULE:CALLABLE.")
    try:
        kwargs = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--model-kwargs {text!r}: not JSON ({e}); give an object like "
                          '\'{"width": 16}\'.') from None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--model-kwargs {text!r}: expected a JSON object of keyword "
                          "arguments.")
    return args.model, kwargs
