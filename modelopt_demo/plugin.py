"""Entry point of modelopt_demo: the ``modelopt demo`` command (registered through the
``register_commands`` hook like any plugin's; the core does not import the demo)."""

from __future__ import annotations

import argparse
from typing import Any

import modelopt_core as mo

EXAMPLES = """examples:
  modelopt demo                    train a digits CNN (offline), prune, distill, export,
                                   quantize to INT8, compare; writes modelopt-demo-out/
                                   (final-artifact/: the fastest step within the budget)
  modelopt demo --epochs 3 --out /tmp/demo --quiet
  modelopt demo --task detection   YOLO-style detector on digit canvases: slim, feature KD,
                                   INT8 on OpenVINO, mAP@0.5 as accuracy"""


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("classification", "detection"), default="classification",
                   help="classification: SmallCNN on digits; detection: a YOLO-style detector "
                        "on digit canvases (slim -> KD -> INT8 -> OpenVINO)")
    p.add_argument("--out", default=None, help="folder for report + artifact (default "
                                               "modelopt-demo-out / modelopt-detect-out)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: 8 classification, 30 detection)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars: one line per training epoch instead")
    p.add_argument("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
                   help="the final artifact is the fastest measured step within this many "
                        "points of the original's accuracy (default: 1.0 top-1 classification, "
                        "1.5 mAP@0.5 detection)")


def _run(args: argparse.Namespace) -> int:
    quiet = getattr(args, "quiet", False)
    if args.max_accuracy_drop is not None and not args.max_accuracy_drop >= 0:
        raise mo.ConfigError(f"demo: --max-accuracy-drop must be >= 0, got "
                             f"{args.max_accuracy_drop:g}.")
    kw = {} if args.max_accuracy_drop is None else {"max_accuracy_drop": args.max_accuracy_drop}
    if args.task == "detection":
        from .detection import run_detection_demo

        out = args.out or "modelopt-detect-out"
        kw.update({} if args.epochs is None else {"epochs": args.epochs})
        run_detection_demo(out, progress=args.progress, quiet=quiet, **kw)
        return 0
    from .demo import run_demo

    run_demo(args.out or "modelopt-demo-out", epochs=8 if args.epochs is None else args.epochs,
             progress=args.progress, quiet=quiet, **kw)
    return 0


@mo.hookimpl
def register_commands(register: Any) -> None:
    """``modelopt demo``: the end-to-end walk-through on bundled data."""
    register("demo", help="train a digits CNN offline, optimize it end to end, compare",
             setup=_setup, run=_run, examples=EXAMPLES)
