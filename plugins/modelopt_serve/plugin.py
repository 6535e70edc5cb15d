"""Entry point of the built-in ``modelopt_serve`` plugin: the ``modelopt serve`` and
``modelopt bench-serve`` commands. Nothing heavy is imported here (fastapi, uvicorn, torch and
ray load inside the commands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import modelopt_core as mo
from modelopt_core.cli import add_model_options, model_options

SERVE_HINT = 'pip install -e ".[serve]"'

SERVE_EXAMPLES = """examples:
  modelopt serve out/model-int8 --backend onnxruntime --max-batch-size 32 --max-delay-ms 5
  modelopt serve out/model-int8 --backend openvino --workers 2 --cache-size 10000 --port 8080
  modelopt serve out/model-int8 --ray --workers 2      # Ray Serve, 2 replicas
  modelopt serve out/pruned --backend torch --model modelopt_demo.models:SmallCNN  # torch format
  modelopt serve out/fp32 --name fp32 --variant int8=out/int8:10 --admin-token $TOKEN  # 90/10
  modelopt serve out/fp32 --variant int8=out/int8 --shadow int8   # int8 mirrors, never answers
  curl -s localhost:8000/variants; curl -s localhost:8000/ready; curl -s localhost:8000/metrics"""

BENCH_EXAMPLES = """examples:
  modelopt bench-serve http://127.0.0.1:8000 --concurrency 32 --requests 2000
  modelopt bench-serve http://127.0.0.1:8000 --duration-s 30 --repeat-fraction 0.5 --json
  modelopt bench-serve http://127.0.0.1:8000 --requests 2000 --compare-variants"""


def _need(module: str, hint: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise mo.BackendUnavailableError(f"modelopt serve needs {module!r}; install it with "
                                         f"{hint}.")


def _setup_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="a saved artifact folder (ModelArtifact.save)")
    p.add_argument("--backend", default=None,
                   help="any registered backend: onnxruntime, openvino, torch... (default: "
                        "the runtime the artifact carries, e.g. a search's best, with its "
                        "options; else its format's reference backend)")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend config option (repeatable), e.g. --backend-option "
                        "device=CPU, overriding the options the artifact carries; values "
                        "parse as JSON when they can")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="most rows per model run; 1 turns batching off (default 32)")
    p.add_argument("--max-delay-ms", type=float, default=5.0,
                   help="longest wait for a batch to fill (default 5)")
    p.add_argument("--max-idle-ms", type=float, default=1.0,
                   help="a batch also leaves once no request arrived for this long, so a lone "
                        "request does not wait --max-delay-ms (default 1; >= --max-delay-ms "
                        "turns it off)")
    p.add_argument("--preferred-batch-sizes", default="",
                   help="comma-separated batch sizes to pad to, e.g. 1,4,8,16")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="queued requests before new ones get 503 (default 1024)")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="a request not started within this gets 504 (default: none)")
    p.add_argument("--workers", type=int, default=1,
                   help="model replicas (Ray Serve replicas with --ray) (default 1)")
    p.add_argument("--replica-mode", choices=("auto", "thread", "process"), default="auto",
                   help="how --workers replicas run: threads (runtimes that release the GIL), "
                        "worker processes (a crash takes only its own requests; the worker "
                        "is replaced), or auto: threads for ONNX Runtime / OpenVINO / torch / "
                        "TensorRT, processes otherwise (default auto; not with --ray, whose "
                        "replicas are processes)")
    p.add_argument("--cache-size", type=int, default=0,
                   help="result-cache entries; 0 turns the cache off (default 0)")
    p.add_argument("--cache-mb", type=float, default=256.0,
                   help="result-cache size limit in MB (default 256)")
    p.add_argument("--cache-ttl-s", type=float, default=None,
                   help="result-cache entry lifetime (default: no expiry)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="larger request bodies get 413 (default 16)")
    p.add_argument("--read-timeout-s", type=float, default=30.0,
                   help="a request's headers and body must arrive within this many seconds of "
                        "its first byte, else 408 and the connection is closed (default 30)")
    p.add_argument("--access-log", action="store_true",
                   help="log a JSON line for every request (default: only failed ones, status "
                        "400 and up)")
    p.add_argument("--stats-interval-s", type=float, default=60.0,
                   help="log a stats line (rps, p50/p99, errors, batches, cache, memory) and "
                        "anomaly warnings every so many seconds (default 60; 0: off)")
    p.add_argument("--p99-alert-ms", type=float, default=500.0,
                   help="a stats window whose p99 latency is above this is logged as an "
                        "anomaly (default 500)")
    _setup_variants(p)
    add_model_options(p)
    p.add_argument("--ray", action="store_true",
                   help="serve on Ray Serve (RAY_ADDRESS, else a local Ray) with --workers "
                        "replicas; needs the [serve-ray] extra")


def _setup_variants(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("variants (A/B, canary, shadow), feedback and traffic capture")
    g.add_argument("--name", default=None,
                   help="the served artifact's variant name (X-Variant, the metrics' variant "
                        "label; default: its folder's name)")
    g.add_argument("--variant", action="append", default=[], metavar="NAME=PATH[:WEIGHT]",
                   help="serve another artifact too (repeatable), with WEIGHT percent of the "
                        "traffic; variants without a weight share what is left equally "
                        "(`--variant int8=out/int8:10`: 90/10). X-Variant: NAME forces one, "
                        "X-Client-Key: KEY keeps a client on one")
    g.add_argument("--shadow", action="append", default=[], metavar="NAME",
                   help="a --variant that only mirrors the primary's traffic off the response "
                        "path: its answers are compared (GET /variants), never returned")
    g.add_argument("--admin-token", default=None,
                   help="token that POST /variants (set weights, promote) requires "
                        "(default: $MODELOPT_ADMIN_TOKEN; neither: POST /variants is off)")
    g.add_argument("--split-seed", type=int, default=None,
                   help="seed of the random traffic split (default: from the OS)")
    g.add_argument("--feedback-max", type=int, default=100_000,
                   help="request ids remembered for POST /feedback (default 100000)")
    g.add_argument("--capture", default=None, metavar="DIR",
                   help="keep a bounded random sample of the primary's request inputs in DIR "
                        "(npz shards; never the outputs), for --calibration-from")
    g.add_argument("--capture-rate", type=float, default=0.01,
                   help="share of request rows eligible for capture (default 0.01)")
    g.add_argument("--capture-max", type=int, default=10_000,
                   help="most samples kept in the capture folder (default 10000)")


def _variant_options(args: argparse.Namespace) -> dict[str, Any]:
    """The app options of the variant flags (create_app's keywords)."""
    from modelopt_serve.routing import parse_variant

    variants = {}
    for text in args.variant:
        name, path, weight = parse_variant(text)
        if name in variants:
            raise mo.ConfigError(f"--variant {text!r}: the name {name!r} is used twice.")
        variants[name] = (path, weight)
    capture = None if args.capture is None else {
        "folder": args.capture, "rate": args.capture_rate, "max_samples": args.capture_max}
    return {"variants": variants, "shadow": tuple(args.shadow), "name": args.name,
            "admin_token": args.admin_token, "split_seed": args.split_seed,
            "feedback_max": args.feedback_max, "capture": capture}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    backend_options = mo.parse_options(args.backend_option)
    try:
        preferred = tuple(int(x) for x in args.preferred_batch_sizes.split(",") if x.strip())
    except ValueError:
        raise mo.ConfigError(f"--preferred-batch-sizes {args.preferred_batch_sizes!r}: expected "
                             "comma-separated integers like 1,4,8,16.") from None
    model, model_kwargs = model_options(args)
    return {"backend_options": backend_options or None,
            "model": model, "model_kwargs": model_kwargs,
            "max_batch_size": args.max_batch_size, "max_delay_ms": args.max_delay_ms,
            "max_idle_ms": args.max_idle_ms, "stats_interval_s": args.stats_interval_s,
            "p99_alert_ms": args.p99_alert_ms,
            "preferred_batch_sizes": preferred, "max_queue": args.max_queue,
            "timeout_s": args.timeout_s, "cache_size": args.cache_size,
            "cache_mb": args.cache_mb, "cache_ttl_s": args.cache_ttl_s,
            "max_body_mb": args.max_body_mb, "read_timeout_s": args.read_timeout_s,
            "access_log": args.access_log}


def _run_serve(args: argparse.Namespace) -> int:
    _need("fastapi", SERVE_HINT)
    _need("uvicorn", SERVE_HINT)
    level = "warning" if args.quiet else "info"
    if args.ray:
        if args.replica_mode != "auto":
            raise mo.ConfigError("--replica-mode applies to modelopt serve's own replicas; "
                                 "with --ray every replica is a Ray actor process already: "
                                 "leave it out.")
        if args.capture:
            raise mo.ConfigError("--capture writes one folder from one process; with --ray "
                                 "every replica is a process: capture on a modelopt serve "
                                 "without --ray.")
        _need("ray", 'pip install -e ".[serve-ray]"')
        from modelopt_serve.server import serve_ray

        return serve_ray(args.artifact, backend=args.backend, host=args.host, port=args.port,
                         num_replicas=args.workers, log_level=level, **_options(args),
                         **_variant_options(args))
    from modelopt_serve.server import serve

    return serve(args.artifact, backend=args.backend, host=args.host, port=args.port,
                 workers=args.workers, mode=args.replica_mode, log_level=level,
                 **_options(args), **_variant_options(args))


def _setup_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000 (loopback only)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--requests", type=int, default=200, help="requests to send (default 200)")
    p.add_argument("--duration-s", type=float, default=None,
                   help="stop after this many seconds even if requests remain")
    p.add_argument("--repeat-fraction", type=float, default=0.0,
                   help="share of requests that re-send an earlier input (default 0)")
    p.add_argument("--format", choices=["tensors", "json", "npz"], default="tensors",
                   help="request body format (default tensors: safetensors bytes)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback host")
    p.add_argument("--client-key", default=None,
                   help="send X-Client-Key with every request (sticky to one variant)")
    p.add_argument("--compare-variants", action="store_true",
                   help="then print the server's live verdict per variant (GET /variants): "
                        "p50/p99 with 95%% CIs, throughput, errors, shadow agreement, and "
                        "faster / slower / no significant difference, as modelopt compare")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _run_bench(args: argparse.Namespace) -> int:
    _need("aiohttp", SERVE_HINT)
    import json

    from modelopt_serve import codec
    from modelopt_serve.client import load_test

    media = {"tensors": codec.TENSORS, "json": codec.JSON, "npz": codec.NPZ}[args.format]
    res = load_test(args.url, concurrency=args.concurrency, requests=args.requests,
                    duration_s=args.duration_s, repeat_fraction=args.repeat_fraction,
                    media_type=media, allow_remote=args.allow_remote,
                    headers={"X-Client-Key": args.client_key} if args.client_key else None)
    if args.compare_variants:
        from modelopt_serve.client import fetch_variants

        res["variants"] = fetch_variants(args.url, args.allow_remote)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['requests']} requests ({res['ok']} ok, {res['errors']} errors) in "
              f"{res['duration_s']:.2f} s: {res['throughput_rps']:.1f} req/s, p50 "
              f"{res['p50_ms']:.2f} ms, p95 {res['p95_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms; "
              f"status {res['status_counts']}"
              + (f"; answered by {res['variant_counts']}" if res["variant_counts"] else ""))
        if args.compare_variants:
            from modelopt_serve.client import variants_table

            print("\n".join(variants_table(res["variants"])))
    return 0 if res["errors"] == 0 else 1


@mo.hookimpl
def register_commands(register: Callable[..., None]) -> None:
    """``modelopt serve`` and ``modelopt bench-serve``."""
    register("serve", help="serve a saved artifact over HTTP: dynamic batching, result cache, "
             "replicas, Prometheus metrics (or on Ray Serve with --ray)",
             setup=_setup_serve, run=_run_serve, examples=SERVE_EXAMPLES)
    register("bench-serve", help="load-test a modelopt server: throughput and p50/p95/p99 "
             "latency (loopback only)", setup=_setup_bench, run=_run_bench,
             examples=BENCH_EXAMPLES)
