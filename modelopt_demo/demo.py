"""``modelopt demo``: train the digits CNN, optimize it through the Session, compare.

Offline: the data is the digits set shipped in the package, the model is defined in-project.
The pipeline is a list of Session steps; steps whose component is not installed are skipped
with a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import modelopt_core as mo

from .data import accuracy_fn, load_digits_data
from .models import SmallCNN

#: (session method, component or target, config) — the default demo pipeline
PIPELINE: list[tuple[str, str, dict[str, Any]]] = [
    ("apply", "prune.structured", {"ratio": 0.3, "importance": "l1"}),
    ("apply", "distill.logits", {"epochs": 3, "lr": 3e-3}),
    ("export", "onnx", {}),
    ("apply", "onnx.optimize", {}),
    ("apply", "onnx.quantize_static", {"per_channel": True, "calibrate_method": "minmax"}),
]


DEMO_COLUMNS = ["step", "backend", "accuracy", "accuracy_delta", "latency_p50_ms",
                "latency_p95_ms", "speedup", "throughput_per_s", "size_mb", "size_ratio",
                "peak_rss_mb", "regression"]
#: the accuracy budget the final artifact is chosen within: points of top-1 accuracy (%)
MAX_ACCURACY_DROP = 1.0


def train_demo_model(epochs: int = 8, seed: int = 0, progress: bool = True) -> tuple[Any, Any]:
    """Train SmallCNN on digits with the shared training loop; returns (model, data)."""
    from modelopt_core.training import TrainConfig, fit

    torch.manual_seed(seed)
    data = load_digits_data(seed=seed)
    model = SmallCNN()
    ctx = mo.Context(show_progress=progress)
    fit(model, data.train, config=TrainConfig(epochs=epochs, lr=3e-3, seed=seed), ctx=ctx)
    return model.eval(), data


def run_steps(s: mo.Session, steps: Sequence[tuple[str, str, dict[str, Any]]],
              say: Callable[..., Any] = print) -> None:
    """Run ``(method, name, config)`` steps on ``s``, one line each (time and lineage notes);
    optimizers that are not installed are skipped with a line saying so."""
    for method, name, cfg in steps:
        if method == "apply" and not any(i.name == name for i in s.pm.components("optimizer")):
            say(f"      - {name}: not installed, skipped")
            continue
        t = time.perf_counter()
        art = getattr(s, method)(name, **cfg)
        notes = "; ".join(art.lineage[-1].notes)
        say(f"      - {art.name} ({time.perf_counter() - t:.1f} s){': ' + notes if notes else ''}")


def run_demo(out_dir: str | Path = "modelopt-demo-out", epochs: int = 8,
             backends: tuple[str, ...] = ("torch", "onnxruntime"), progress: bool = True,
             pipeline: list[tuple[str, str, dict[str, Any]]] | None = None,
             quiet: bool = False, max_accuracy_drop: float = MAX_ACCURACY_DROP) -> mo.Report:
    """Train, optimize, compare; writes ``report.md``, ``report.json``, ``report.html`` (with
    the Pareto plots) and the final artifact: the fastest measured step within
    ``max_accuracy_drop`` points of the original's accuracy (:func:`choose_final`).
    ``quiet`` prints only the table."""
    say = (lambda *a: None) if quiet else print
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    out = Path(out_dir)
    t0 = time.perf_counter()
    say(f"[1/3] training SmallCNN on the digits data ({epochs} epochs)...")
    model, data = train_demo_model(epochs, progress=progress)
    say(f"      trained in {time.perf_counter() - t0:.1f} s")
    s = mo.Session(model, (data.example,), calibration_data=data.calibration,
                   train_data=data.train, eval_fn=accuracy_fn(data.test), progress=progress)
    say("[2/3] optimizing through the Session:")
    run_steps(s, PIPELINE if pipeline is None else pipeline, say)
    say("[3/3] measuring every step (accuracy, latency, throughput, size, memory)...")
    report = s.compare(backends=list(backends),
                       profilers=["accuracy", "latency", "throughput", "size", "memory"],
                       profiler_options={"latency": {"iterations": 50}})
    report.title = "modelopt demo: SmallCNN on digits (batch 1)"
    report.print(columns=[c for c in DEMO_COLUMNS if c in report.columns])
    finish(s, report, out, max_accuracy_drop, say, t0)
    return report


def finish(s: mo.Session, report: mo.Report, out: Path, max_accuracy_drop: float,
           say: Callable[..., Any], t0: float) -> None:
    """The demo's final artifact, the best measured step within ``max_accuracy_drop`` points
    of the original's accuracy (not simply the last step; :func:`modelopt_core.outputs.
    choose_final`), and the output folder every command writes (reports with the final
    marked on the HTML page, ``final-artifact/``)."""
    from modelopt_core.outputs import choose_final, write_outputs

    final, view = choose_final(s, report, "latency", max_accuracy_drop, say)
    write_outputs(report, final, out, say=say, command="demo", **view)
    say(f"      ({time.perf_counter() - t0:.1f} s in all)")
