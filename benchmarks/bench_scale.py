"""Issue 27 item 4 benchmark: the search on a Ray cluster against the search in one process.

The same recipe and trial budget (the demo's digits CNN, trained as the demo trains it; a
space: prune ratios 0.2-0.5, logit-distillation recovery of 10-20 epochs and three ONNX precisions on
ONNX Runtime at 1 thread, accuracy within 2 points), searched (a) in one process and (b) on a
local 2-node Ray cluster (``ray.cluster_utils.Cluster``, 1 CPU per node, one worker per node,
trials at 1 thread), each a new study in a new folder, no step cache (each trial computes its
own steps in both). Figures: each search's wall time (the ``optimize`` call: baseline, trials,
the end's side-by-side confirmation, reports; the cluster is started before, as a user's
cluster runs already, and its start is given apart), the trials run, each best's confirmed
p50, and both bests re-timed side by side here at the end (interleaved p50, so the two
searches' confirmations, taken minutes apart, are not compared across time). Bars: Ray wall
time <= 0.65x the single process's; Ray's best's side-by-side p50 within noise of the single
process's best or faster (the bootstrap 95% interval of the ratio of medians reaches 1 or
lies below it). The two searches may find different recipes: parallel workers draw in
another order.

    flock -x /tmp/modelopt-bench.lock python benchmarks/bench_scale.py [--trials 12]
"""

from __future__ import annotations

import argparse
import json
import os
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
         "params": {"prune.structured": {"ratio": [0.2, 0.3, 0.4, 0.5]},
                    "distill.logits": {"epochs": [10, 15, 20]}},
         "fixed": {"export.onnx": {"exporter": "torchscript"},
                   "prune.structured": {"round_to": None, "importance": "l1",
                                        "scope": "local"},
                   "distill.logits": {"lr": 3e-3, "eval_each_epoch": False,
                                      "temperature": 4.0, "alpha": 0.5}}}


def _search(model: Any, d: Any, out: Path, trials: int, **ray: Any) -> dict[str, Any]:
    s = mo.Session(model, (d.example,), calibration_data=d.calibration, train_data=d.train,
                   eval_fn=accuracy_fn(d.test), progress=False)
    t = time.perf_counter()
    res = s.optimize(target="onnxruntime", budget_trials=trials, out_dir=out, threads=1,
                     space=SPACE, max_accuracy_drop=2.0, step_cache=False,
                     profiler_options={"latency": {"min_time_s": 0.1, "warmup": 3}}, **ray)
    wall = time.perf_counter() - t
    rows = json.loads((out / "trials.json").read_text())["trials"]
    ran = [r for r in rows if "duplicate_of" not in r]
    best = res.best_row or {}
    return {"wall_s": round(wall, 2), "trials": len(ran),
            "nodes": len({r["node"] for r in rows if r.get("node")}) or 1,
            "best": best.get("recipe"), "accuracy": best.get("accuracy"),
            "confirmed_p50_ms": best.get("confirmed_p50_ms"),
            "trial_p50_ms": best.get("latency_p50_ms")}


def _side_by_side(outs: list[Path], model: Any, example: Any) -> tuple[list[float], ...]:
    """Both bests re-timed here, interleaved, as they were saved (their runtime and threads):
    (p50 ms of each, then the ratio of the second's p50 to the first's with its bootstrap 95%
    interval)."""
    import statistics

    from modelopt_search.ab import interleaved_times

    from modelopt_core.stats import bootstrap_ratio_ci

    runners = [mo.Session(mo.load_artifact(out / "best", model=model), (example,),
                          progress=False).runner() for out in outs]
    try:
        times = interleaved_times(runners, (example,), runs=600, warmup=20, block=20,
                                  pause_s=0.02)
    finally:
        for r in runners:
            r.close()
    return [1e3 * statistics.median(t) for t in times], bootstrap_ratio_ci(times[0], times[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    args = ap.parse_args()
    import ray
    import torch
    from ray.cluster_utils import Cluster

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model, d = train_demo_model(progress=False)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        single = {"run": "one process", **_search(model, d, tmp / "single", args.trials)}
        t = time.perf_counter()
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                           "include_dashboard": False})
        try:
            c.add_node(num_cpus=1)
            c.wait_for_nodes()
            start_s = time.perf_counter() - t
            on_ray = {"run": "Ray, 2 nodes x 1 CPU",
                      **_search(model, d, tmp / "ray", args.trials, executor="ray",
                                ray_address=c.address)}
        finally:
            ray.shutdown()
            c.shutdown()
        p50, (p50_ratio, lo, hi) = _side_by_side([tmp / "single", tmp / "ray"], model,
                                                 d.example)
    table = [single, on_ray]
    single["side_by_side_p50_ms"] = round(p50[0], 5)
    on_ray["side_by_side_p50_ms"] = round(p50[1], 5)
    ratio = on_ray["wall_s"] / single["wall_s"]
    verdict = ("within noise" if lo <= 1 <= hi else "faster (outside noise)" if hi < 1
               else "slower (outside noise)")
    for r in table:
        r["wall_ratio"] = round(r["wall_s"] / single["wall_s"], 3)
    write_results("scale", {"trials": args.trials, "ratio": ratio, "p50_ratio": p50_ratio,
                            "p50_ratio_ci": [lo, hi],
                            "cluster_start_s": start_s, "load_before": load}, table,
                  ["run", "nodes", "trials", "wall_s", "wall_ratio", "best", "accuracy",
                   "trial_p50_ms", "confirmed_p50_ms", "side_by_side_p50_ms"],
                  "Search on a Ray cluster vs one process",
                  [(f"Ray / one-process wall time: {ratio:.3f}x (bar <= 0.65x: "
                   f"{'met' if ratio <= 0.65 else 'NOT met'})"),
                   (f"the two bests re-timed side by side here (600 interleaved calls each): "
                   f"Ray's / one process's p50 = {p50_ratio:.3f} (95% CI {lo:.3f}-{hi:.3f}): "
                   f"Ray's best is {verdict} (bar: within noise or faster: "
                   f"{'met' if lo <= 1 else 'NOT met'})"),
                   (f"the local cluster's start ({start_s:.1f} s) is not in the Ray wall time: "
                   "a user's cluster runs already"),
                   ("recipe: digits CNN (trained 8 epochs), prune.structured {0.2, 0.3, 0.4, "
                   "0.5} -> distill.logits {10, 15, 20 epochs} -> ONNX (torchscript) -> none | "
                   "quantize_dynamic | quantize_static, on onnxruntime at 1 thread, accuracy "
                   f"within 2 points, {args.trials} trials each, no step cache"),
                   f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores)",
                   ("reproduce: flock -x /tmp/modelopt-bench.lock .venv/bin/python "
                   "benchmarks/bench_scale.py")])


if __name__ == "__main__":
    main()
