"""``modelopt demo --task detection``: train the YOLO-style detector on digits detection,
then slim -> feature KD -> OpenVINO -> INT8 through the Session and compare every step
(mAP@0.5 as the accuracy column, latency, size)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

import modelopt_core as mo

from ..demo import finish
from .dataset import load_detection_data
from .models import YoloDetector
from .pipeline import PIPELINE, detection_session, run_pipeline
from .train import train_detector

__all__ = ["DEMO_COLUMNS", "SIZES", "run_detection_demo"]

#: size presets: canvas, train / test canvases, width, distillation epochs, INT8 calibration
#: canvases, latency iterations ("tiny" is for tests: seconds, the numbers mean nothing)
SIZES: dict[str, dict[str, int]] = {
    "default": {"canvas": 64, "n_train": 2000, "n_test": 500, "width": 8, "kd_epochs": 20,
                "calib": 64, "latency_iters": 30},
    "tiny": {"canvas": 32, "n_train": 64, "n_test": 16, "width": 4, "kd_epochs": 1,
             "calib": 4, "latency_iters": 3},
}
DEMO_COLUMNS = ["step", "backend", "accuracy", "accuracy_delta", "latency_p50_ms",
                "speedup", "size_mb", "size_ratio", "peak_rss_mb", "regression"]
#: the accuracy budget the final artifact is chosen within: points of mAP@0.5 (%), the bar
#: docs/detection.md sets for slim + KD + INT8
MAX_ACCURACY_DROP = 1.5


def run_detection_demo(out_dir: str | Path = "modelopt-detect-out", epochs: int = 30,
                       progress: bool = True, quiet: bool = False,
                       backends: tuple[str, ...] = ("torch", "openvino"),
                       size: str | None = None,
                       max_accuracy_drop: float = MAX_ACCURACY_DROP) -> mo.Report:
    """Train, optimize, compare; writes ``report.md``, ``report.json`` (and ``report.html``
    when the Report can render it) and the final artifact: the fastest measured step within
    ``max_accuracy_drop`` mAP@0.5 points of the original (see
    :func:`~modelopt_demo.demo.finish`). ``size`` picks a preset of :data:`SIZES`
    (default: ``$MODELOPT_DETECT_SIZE`` or ``"default"``)."""
    say = (lambda *a: None) if quiet else print
    size = size or os.environ.get("MODELOPT_DETECT_SIZE", "default")
    if size not in SIZES:
        raise mo.ConfigError(f"detection demo: unknown size {size!r} (MODELOPT_DETECT_SIZE); "
                             f"use one of {list(SIZES)}.")
    cfg = SIZES[size]
    canvas, n_train, n_test, width = cfg["canvas"], cfg["n_train"], cfg["n_test"], cfg["width"]
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    out, t0 = Path(out_dir), time.perf_counter()
    data = load_detection_data(n_train=n_train, n_val=min(200, n_test), n_test=n_test,
                               size=canvas)
    say(f"[1/3] training YoloDetector (width {width}) on {n_train} {canvas}x{canvas} digit "
        f"canvases ({epochs} epochs)...")
    model = YoloDetector(width=width)
    train_detector(model, data, epochs=epochs, sparsity=1e-4, progress=progress)
    say(f"      trained in {time.perf_counter() - t0:.1f} s")
    s = detection_session(model, data, progress=progress, calib_batches=cfg["calib"])
    say("[2/3] optimizing through the Session:")
    over = {"distill.features": {"epochs": cfg["kd_epochs"]},
            "openvino.quantize": {"calibration_batches": cfg["calib"]}}
    steps = [(m, n, dict(c, **over.get(n, {}))) for m, n, c in PIPELINE]
    run_pipeline(s, steps, say)  # slim -> feature KD (+ detection loss) -> OpenVINO -> INT8
    say("[3/3] measuring every step (mAP@0.5 as accuracy, latency, size, memory)...")
    avail = {i.name for i in s.pm.components("backend") if i.cls.availability()[0]}
    kw = {"backends": [b for b in backends if b in avail] or ["torch"],
          "profilers": ["accuracy", "latency", "size", "memory"],
          "profiler_options": {"latency": {"iterations": cfg["latency_iters"],
                                           "min_time_s": 0.3 * (size != "tiny")}}}
    report = s.compare(**kw)
    report.title = (f"modelopt demo: YOLO-style detector on digits ({canvas}x{canvas}, batch 1;"
                    " accuracy = mAP@0.5 %)")
    report.print(columns=[c for c in DEMO_COLUMNS if c in report.columns])
    finish(s, report, out, max_accuracy_drop, say, t0)
    return report
