"""Issue 27 item 2 benchmark: the step cache. Two searches over the same recipe (the demo's
digits CNN, trained as the demo trains it; every trial prunes 30% and recovers with
``--epochs`` (default 40) epochs of logit distillation on the digits training set, then
exports to ONNX with one of three precisions), the second a new
study in a new folder sharing the first one's step cache. Figures: each search's wall time,
its cache hits and the steps it computed. Bar: the second search takes <= 0.5x the first's
wall time.

    flock -x /tmp/modelopt-bench.lock python benchmarks/bench_step_cache.py [--trials 4]
        [--epochs 40] [--no-cache-baseline]

The first search already shares the prefix between its own trials (computed once, loaded by
the others); ``--no-cache-baseline`` also times the first search without a cache (the cost
of every trial recomputing its prefix).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn
from modelopt_demo.demo import train_demo_model

SPACE = {"prune": ["prune.structured"], "recovery": ["distill.logits"],
         "precision": ["none", "onnx.quantize_dynamic", "onnx.quantize_static"],
         "graph": ["none"],
         "fixed": {"export.onnx": {"exporter": "torchscript"},
                   "prune.structured": {"ratio": 0.3, "round_to": None, "importance": "l1",
                                        "scope": "local"},
                   "distill.logits": {"epochs": 40, "lr": 3e-3, "eval_each_epoch": False,
                                      "temperature": 4.0, "alpha": 0.5}}}


def _search(model: Any, d: Any, out: Path, cache: Any, trials: int,
            epochs: int) -> dict[str, Any]:
    SPACE["fixed"]["distill.logits"]["epochs"] = epochs
    s = mo.Session(model, (d.example,), calibration_data=d.calibration, train_data=d.train,
                   eval_fn=accuracy_fn(d.test), progress=False)
    t = time.perf_counter()
    res = s.optimize(target="onnxruntime", budget_trials=trials, out_dir=out, threads=1,
                     space=SPACE, max_accuracy_drop=5.0, step_cache=cache,
                     profiler_options={"latency": {"min_time_s": 0.1, "warmup": 3}})
    wall = time.perf_counter() - t
    rows = json.loads((out / "trials.json").read_text())["trials"]
    ran = [r for r in rows if "lineage" in r and "duplicate_of" not in r]
    notes = [n for n in res.report.notes.get("search", []) if n.startswith("step cache")]
    return {"wall_s": round(wall, 2), "trials": len(ran),
            "steps": sum(len(r["lineage"]) - 1 for r in ran),
            "cache_hits": sum(r.get("cache_hits", 0) for r in ran),
            "best": res.best_row["recipe"] if res.best_row else None,
            "note": notes[0] if notes else "no step cache"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=40, help="the recovery's epochs")
    ap.add_argument("--no-cache-baseline", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    model, d = train_demo_model(progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = []
        if args.no_cache_baseline:
            table.append({"run": "first search, no step cache",
                          **_search(model, d, tmp / "nocache", False, args.trials,
                                   args.epochs)})
        first = {"run": "first search (fresh cache)",
                 **_search(model, d, tmp / "a", None, args.trials, args.epochs)}
        second = {"run": "second search, same recipe (new study, first's cache)",
                  **_search(model, d, tmp / "b", tmp / "a" / "step-cache", args.trials,
                            args.epochs)}
        table += [first, second]
    ratio = second["wall_s"] / first["wall_s"]
    for r in table:
        r["ratio_to_first"] = round(r["wall_s"] / first["wall_s"], 3)
    bar = "met" if ratio <= 0.5 else "NOT met"
    write_results("step-cache", {"trials": args.trials, "epochs": args.epochs,
                                 "ratio": ratio}, table,
                  ["run", "trials", "steps", "cache_hits", "wall_s", "ratio_to_first", "best"],
                  "Step cache: a second search over the same recipe",
                  [f"second / first wall time: {ratio:.3f}x (bar <= 0.5x: {bar})",
                   (f"recipe: digits CNN, prune.structured 30% -> distill.logits "
                    f"{args.epochs} epochs -> ONNX (torchscript) -> none | quantize_dynamic | "
                    f"quantize_static, on onnxruntime at 1 thread, {args.trials} trials per "
                    "search"),
                   ("what a cached search still spends: the baseline and every trial's "
                    "measurement (latency, accuracy), the early-rejection accuracy checks, the "
                    "end's side-by-side re-timing and the reports")]
                  + [f"{r['run']}: {r['note']}" for r in table]
                  + [(f"reproduce: flock -x /tmp/modelopt-bench.lock .venv/bin/python "
                      f"benchmarks/bench_step_cache.py --no-cache-baseline --epochs "
                      f"{args.epochs} --trials {args.trials}")])


if __name__ == "__main__":
    main()
