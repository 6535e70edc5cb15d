"""Are the demo's figures repeatable? Runs ``modelopt demo`` N times back to back (separate
processes, as a user would) and reports each run's final speedup (ORT INT8 vs torch eager
FP32, batch 1), accuracy, and the spread around the median.

Bar (issue 16): on a quiet machine, five runs give final speedups within +-15% of their median.

    python benchmarks/bench_demo.py            # 5 runs, ~2-3 min
    python benchmarks/bench_demo.py --runs 3 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.runs):
            out = Path(d) / f"run{i}"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "modelopt_core", "demo", "--quiet",
                            "--epochs", str(args.epochs), "--out", str(out)], check=True,
                           stdout=subprocess.DEVNULL)
            report = json.loads((out / "report.json").read_text())
            first, last = report["rows"][0], report["rows"][-1]
            rows.append({"run": i + 1, "final_speedup": last["speedup"],
                         "eager_p50_ms": first["latency_p50_ms"],
                         "int8_p50_ms": last["latency_p50_ms"],
                         "int8_iqr_ms": last.get("latency_iqr_ms"),
                         "accuracy": last.get("accuracy"), "load_1min":
                             report["environment"].get("load_1min"),
                         "wall_s": round(time.perf_counter() - t0, 1)})
            print(f"run {i + 1}: final speedup {last['speedup']:.2f}x", flush=True)
    speedups = [r["final_speedup"] for r in rows]
    med = statistics.median(speedups)
    worst = max(abs(s / med - 1) for s in speedups)
    for r in rows:
        r["vs_median_pct"] = round(100 * (r["final_speedup"] / med - 1), 1)
    verdict = "MET" if worst <= 0.15 else "NOT MET"
    write_results(
        "demo", {"runs": args.runs, "epochs": args.epochs, "median_speedup": med,
                 "max_deviation_pct": 100 * worst},
        rows, ["run", "final_speedup", "vs_median_pct", "eager_p50_ms", "int8_p50_ms",
               "int8_iqr_ms", "accuracy", "load_1min", "wall_s"],
        f"modelopt demo, {args.runs} runs back to back",
        [f"median final speedup {med:.2f}x; largest deviation {100 * worst:.1f}% "
         f"(bar: within +-15%: {verdict})",
         "each run is a separate `python -m modelopt_core demo --quiet` process: training, "
         "pipeline and measurement included"])


if __name__ == "__main__":
    main()
