"""Issue 12 benchmark: serving over loopback HTTP (dynamic batching, result cache) and the
in-process batcher's overhead.

ResNet-18-shaped model (``modelopt_demo.models.ResNet18``, BatchNorm fitted to image-like data
as in ``bench_core.calibrated_resnet``), ONNX Runtime INT8 from the Session
(``onnx`` -> ``onnx.optimize`` -> ``onnx.quantize_static``), saved and served by three
``modelopt serve`` processes started side by side: no batching (``--max-batch-size 1``),
dynamic batching (``--max-batch-size 16``), the same with 2 replicas of half the threads
(``--workers 2``) and dynamic batching with the result cache. The
load client (``modelopt_serve.client``, the engine of ``modelopt bench-serve``) keeps 32
single-image requests in flight (safetensors bodies) and the servers are measured round-robin
(``--repeats`` rounds; ratios are taken inside a round, the median and range reported):

- batching vs none: throughput ratio (bar >= 3x) and p99 ratio (bar <= 2x);
- two replicas of half the threads each (batching as above) vs none: parallel inference;
- cache vs none, both batched, 50% of requests repeating one of 8 earlier inputs: throughput
  ratio (bar: > 1, it "rises accordingly") and the cache-hit counter read from ``/metrics``
  (bar: the repeats are hits, >= 40% of requests);
- in process, no HTTP: ``batcher(x)`` (``max_batch_size=1``) vs ``runner(x)`` per request
  (``common.interleaved_p50``), the batcher's overhead in ms (bar <= 0.2 ms).

    python benchmarks/bench_serve.py [--quick] [--threads 2] [--requests 1000]

``--quick``: the demo's SmallCNN (8x8 digits) in FP32, few requests, one round: a smoke run
(< 60 s), not for quoting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import calibrated_resnet
from common import interleaved_p50, span, write_results

import modelopt_core as mo
from modelopt_demo.data import image_batches

#: the served backend (--backend) and its thread option
BACKEND = "onnxruntime"
THREADS = {"onnxruntime": "intra_op_num_threads", "openvino": "inference_num_threads"}
NONE, BATCH, CACHE = "no batching (max batch 1)", "dynamic batching (max batch 16)", \
    "batching + cache"
REPL = "dynamic batching, 2 replicas"


def build_artifact(args: argparse.Namespace, folder: Path) -> tuple[Path, torch.Tensor, str]:
    """Save the served model; returns (folder, one request's input, description)."""
    if args.quick:
        from modelopt_demo.models import SmallCNN

        torch.manual_seed(0)
        model, x = SmallCNN().eval(), torch.randn(1, 1, 8, 8)
        s = mo.Session(model, (x,), progress=False)
        s.export("onnx")
        desc = "SmallCNN 1x8x8, ONNX Runtime FP32 (quick smoke run)"
    else:
        model = calibrated_resnet(image_batches(8, seed=1))
        x = image_batches(1, batch_size=1, seed=3)[0]
        s = mo.Session(model, (x,), calibration_data=image_batches(16, seed=2), progress=False)
        if args.backend == "openvino":
            s.export("openvino")
            s.apply("openvino.quantize")
            desc = "ResNet-18-shaped 3x224x224, OpenVINO INT8 (Session openvino.quantize, NNCF)"
        else:
            s.export("onnx")
            s.apply("onnx.optimize")
            s.apply("onnx.quantize_static", per_channel=True, calibrate_method="minmax")
            desc = "ResNet-18-shaped 3x224x224, ONNX Runtime INT8 (Session onnx.quantize_static)"
    s.current.save(folder)
    return folder, x, desc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(path: Path, threads: int, *flags: str) -> Iterator[str]:
    """A ``modelopt serve`` process; yields its URL once ready, SIGTERMs it afterwards."""
    import httpx

    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, "-m", "modelopt_core", "-q", "serve", str(path),
                             "--port", str(port), "--backend", BACKEND, "--backend-option",
                             f"{THREADS[BACKEND]}={threads}", *flags],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server {flags} died: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {flags} not ready in 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def metric(url: str, name: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in fam.samples:
            if s.name == name and not s.labels:
                return s.value
    return 0.0


def http_part(args: argparse.Namespace, path: Path) -> tuple[list[dict[str, Any]], dict]:
    from modelopt_serve.client import load_test

    batching = ("--max-batch-size", "16", "--max-delay-ms", str(args.delay_ms),
                "--max-idle-ms", str(args.delay_ms if args.idle_ms is None else args.idle_ms))
    flags = {NONE: ("--max-batch-size", "1"), BATCH: batching,
             CACHE: (*batching, "--cache-size", "1024"),
             REPL: (*batching, "--workers", "2")}
    threads = {k: args.threads for k in flags} | {REPL: max(1, args.threads // 2)}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in (*flags, "batch50")}
    hits: list[float] = []
    with contextlib.ExitStack() as stack:
        urls = {k: stack.enter_context(server(path, threads[k], *f)) for k, f in flags.items()}
        kw = {"concurrency": args.concurrency, "requests": args.requests, "duration_s": 300.0}
        for url in urls.values():  # warm-up: sessions, connections, allocator
            load_test(url, concurrency=args.concurrency, requests=2 * args.concurrency)
        for r in range(args.repeats):
            runs[NONE].append(load_test(urls[NONE], seed=10 * r, **kw))
            runs[BATCH].append(load_test(urls[BATCH], seed=10 * r, **kw))
            runs[REPL].append(load_test(urls[REPL], seed=10 * r, **kw))
            runs["batch50"].append(load_test(urls[BATCH], seed=10 * r + 5, repeat_fraction=0.5,
                                             **kw))
            before = metric(urls[CACHE], "modelopt_serve_cache_hits_total")
            runs[CACHE].append(load_test(urls[CACHE], seed=10 * r + 5, repeat_fraction=0.5,
                                         **kw))
            hits.append(metric(urls[CACHE], "modelopt_serve_cache_hits_total") - before)
    thr = sorted(b["throughput_rps"] / n["throughput_rps"] for b, n in zip(runs[BATCH], runs[NONE]))
    p99 = sorted(b["p99_ms"] / n["p99_ms"] for b, n in zip(runs[BATCH], runs[NONE]))
    repl = sorted(p["throughput_rps"] / n["throughput_rps"] for p, n in zip(runs[REPL],
                                                                            runs[NONE]))
    cache = sorted(c["throughput_rps"] / b["throughput_rps"]
                   for c, b in zip(runs[CACHE], runs["batch50"]))
    hit_share = sorted(h / args.requests for h in hits)
    rows = []
    half = max(1, args.threads // 2)
    for k, label in [(NONE, NONE), (BATCH, BATCH),
                     (REPL, f"{REPL} x {half} thread{'s' if half > 1 else ''}"),
                     ("batch50", BATCH + ", 50% repeats"), (CACHE, CACHE + ", 50% repeats")]:
        rs = runs[k]
        med = lambda key, rs=rs: sorted(x[key] for x in rs)[len(rs) // 2]
        rows.append({"config": label, "throughput_rps": med("throughput_rps"),
                     "p50_ms": med("p50_ms"), "p95_ms": med("p95_ms"), "p99_ms": med("p99_ms"),
                     "errors": sum(x["errors"] for x in rs)})
    rows[1].update(throughput_vs_none=thr[len(thr) // 2], range=span(thr),
                   p99_vs_none=p99[len(p99) // 2])
    rows[2].update(throughput_vs_none=repl[len(repl) // 2], range=span(repl),
                   p99_vs_none=sorted(p["p99_ms"] / n["p99_ms"] for p, n in zip(
                       runs[REPL], runs[NONE]))[len(repl) // 2])
    rows[4].update(throughput_vs_none=cache[len(cache) // 2], range=span(cache),
                   cache_hit_share=hit_share[len(hit_share) // 2])
    bars = {"batching throughput >= 3x no batching": thr[len(thr) // 2] >= 3,
            "batching p99 <= 2x no batching p99": p99[len(p99) // 2] <= 2,
            "cache: repeats served as hits (>= 40% of requests)": hit_share[0] >= 0.4,
            "cache: throughput rises with 50% repeats": cache[len(cache) // 2] > 1}
    return rows, bars


def overhead_part(args: argparse.Namespace, path: Path, x: torch.Tensor) -> tuple[dict, dict]:
    from modelopt_serve import DynamicBatcher, ReplicaPool
    from modelopt_serve.replicas import load_runner

    runner = load_runner(mo.load_artifact(path), BACKEND, {THREADS[BACKEND]: args.threads})
    batcher = DynamicBatcher(ReplicaPool.from_runner(runner), max_batch_size=1, max_delay_ms=0)
    reps = [interleaved_p50({"runner": lambda: runner(x), "batcher": lambda: batcher(x)},
                            rounds=args.rounds) for _ in range(args.repeats)]
    batcher.close()
    # the most any batcher can gain on this model and machine: per-image time at batch 16
    # against batch 1, the model alone (no HTTP, no queue)
    x16 = x.repeat(16, *([1] * (x.dim() - 1)))
    ceil = sorted(r["b1"] / (r["b16"] / 16) for r in (
        interleaved_p50({"b1": lambda: runner(x), "b16": lambda: runner(x16)},
                        rounds=max(3, args.rounds // 3)) for _ in range(args.repeats)))
    runner.close()
    over = sorted(r["batcher"] - r["runner"] for r in reps)
    row = {"config": "in process, batch 1: batcher(x) - runner(x)",
           "p50_ms": sorted(r["runner"] for r in reps)[len(reps) // 2],
           "overhead_ms": over[len(over) // 2],
           "range": f"{over[0]:.3f}-{over[-1]:.3f} ms",
           "batch16_gain_per_image": ceil[len(ceil) // 2]}
    return row, {"batcher overhead at batch 1 <= 0.2 ms": over[len(over) // 2] <= 0.2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, few requests, one round "
                    "(a smoke run, not for quoting)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of each server")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=1000, help="requests per measured run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=5.0, help="--max-delay-ms of batching")
    ap.add_argument("--idle-ms", type=float, default=1.0, help="--max-idle-ms of batching "
                    "(default 1, the server's; a negative value: no idle window)")
    ap.add_argument("--backend", choices=sorted(THREADS), default="onnxruntime",
                    help="runtime of the served INT8 model")
    args = ap.parse_args()
    if args.idle_ms is not None and args.idle_ms < 0:
        args.idle_ms = None
    global BACKEND
    BACKEND = args.backend
    if args.quick:
        args.requests, args.repeats, args.concurrency = 64, 1, 16
    args.rounds = 6 if args.quick else 30
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        path, x, desc = build_artifact(args, Path(d) / "served")
        build_s = time.perf_counter() - t0
        rows, bars = http_part(args, path)
        over_row, over_bar = overhead_part(args, path, x)
    rows.append(over_row)
    bars |= over_bar
    notes = [f"{desc}; built in {build_s:.1f} s",
             (f"{args.concurrency} concurrent clients of single-image safetensors requests over "
             f"loopback HTTP, {args.requests} requests per run, {args.repeats} rounds "
             f"round-robin; each server: 1 replica of {args.threads} intra-op threads (the "
             f"2-replica one: {max(1, args.threads // 2)} each), max delay {args.delay_ms} ms"
             + (f", max idle {args.idle_ms} ms" if args.idle_ms is not None else
                ", no idle window") + "; the client runs in this process, the servers in "
             "their own"),
             ("the cache row's ratio is against dynamic batching with the same 50% repeats "
              "(the row above it), the others' against no batching"),
             ("ratios: median over rounds, range in the range column; cache_hit_share: hits "
             "counted by the server's /metrics over the run's requests"),
             ("batch16_gain_per_image: the model alone in process, per-image time at batch 1 / "
              "(time at batch 16 / 16): the ceiling of what batching can add on this machine "
              "(HTTP, decoding and the client share the same 2 cores on top)")]
    notes += [f"bar: {k} -> {'MET' if ok else 'NOT MET'}" for k, ok in bars.items()]
    write_results("serve" if BACKEND == "onnxruntime" else f"serve-{BACKEND}",
                  {"benchmark": "serve", "backend": BACKEND, "quick": args.quick,
                   "threads": args.threads, "concurrency": args.concurrency,
                   "requests": args.requests, "bars": bars}, rows,
                  ["config", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "errors",
                   "throughput_vs_none", "p99_vs_none", "range", "cache_hit_share",
                   "overhead_ms", "batch16_gain_per_image"],
                  "Serving: dynamic batching, result cache, batcher overhead", notes)


if __name__ == "__main__":
    main()
