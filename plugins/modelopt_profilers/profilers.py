"""Profilers: latency percentiles, throughput, peak memory, size on disk, accuracy.

Timing profilers run the session's example inputs (optionally tiled to ``batch_size``),
warm up first, and synchronise the device around each timed call.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import modelopt_core as mo


def _inputs(ctx: mo.Context, batch_size: int | None) -> tuple[Any, ...]:
    xs = tuple(ctx.example_inputs)
    if not xs:
        raise mo.DataError("profiler: the session has no example_inputs to run.")
    if batch_size is None:
        return xs
    out = []
    for x in xs:
        reps = -(-batch_size // x.shape[0])
        out.append(x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size].contiguous())
    return tuple(out)


def _timed_calls(runner: mo.Runner, xs: tuple[Any, ...], warmup: int, iterations: int,
                 min_time_s: float) -> list[float]:
    for _ in range(warmup):
        runner(*xs)
    runner.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iterations or (time.perf_counter() - start) < min_time_s:
        t0 = time.perf_counter()
        runner(*xs)
        runner.synchronize()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * iterations:
            break
    return times


def _percentile(sorted_vals: list[float], q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


@mo.config
class LatencyConfig:
    warmup: int = mo.field(5, validator=mo.in_range(0, 10_000), help="untimed calls first")
    iterations: int = mo.field(30, validator=mo.positive, help="timed calls (at least)")
    min_time_s: float = mo.field(0.0, validator=mo.in_range(0, 3600),
                                 help="keep timing until this many seconds passed")
    batch_size: int | None = mo.field(None, validator=mo.positive,
                                      help="tile example inputs to this batch size")


class LatencyProfiler(mo.Profiler):
    """Per-call latency: p50/p95/p99, mean and std in milliseconds (after warm-up)."""

    name = "latency"
    Config = LatencyConfig

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        c = self.config
        ts = sorted(t * 1e3 for t in _timed_calls(runner, _inputs(ctx, c.batch_size), c.warmup,
                                                   c.iterations, c.min_time_s))
        return {"latency_p50_ms": _percentile(ts, 0.50), "latency_p95_ms": _percentile(ts, 0.95),
                "latency_p99_ms": _percentile(ts, 0.99), "latency_mean_ms": statistics.fmean(ts),
                "latency_std_ms": statistics.pstdev(ts), "latency_n": len(ts)}


class ThroughputProfiler(mo.Profiler):
    """Samples per second over repeated calls (batch = first input's leading dim)."""

    name = "throughput"
    Config = LatencyConfig

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        c = self.config
        xs = _inputs(ctx, c.batch_size)
        ts = _timed_calls(runner, xs, c.warmup, c.iterations, c.min_time_s)
        return {"throughput_per_s": xs[0].shape[0] * len(ts) / sum(ts)}


def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@mo.config
class MemoryConfig:
    iterations: int = mo.field(3, validator=mo.positive, help="calls while tracking the peak")


class MemoryProfiler(mo.Profiler):
    """Peak memory of inference: CUDA peak allocated, or CPU peak RSS growth (Linux)."""

    name = "memory"
    Config = MemoryConfig

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        import torch

        xs = _inputs(ctx, None)
        if runner.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(self.config.iterations):
                runner(*xs)
            torch.cuda.synchronize()
            return {"peak_memory_mb": (torch.cuda.max_memory_allocated() - base) / 2**20,
                    "memory_device": "cuda"}
        runner(*xs)  # first-call allocations (arenas, lazy init) are part of the cost
        try:  # "5" resets the peak RSS (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return {"memory_device": "cpu", "peak_rss_mb": _maxrss_mb()}
        base = _rss_kb("VmRSS") or 0
        for _ in range(self.config.iterations):
            runner(*xs)
        peak = _rss_kb("VmHWM") or base
        return {"peak_memory_mb": max(peak - base, 0) / 1024, "peak_rss_mb": peak / 1024,
                "memory_device": "cpu"}


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SizeProfiler(mo.Profiler):
    """Bytes on disk of the saved artifact, parameter count and weight sparsity."""

    name = "size"

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as d:
            folder = artifact.save(Path(d) / "a")
            size = sum(p.stat().st_size for p in folder.iterdir() if p.name != "manifest.json")
        out: dict[str, Any] = {"size_mb": size / 2**20, "size_bytes": size}
        out.update(weight_stats(artifact))
        return out


def weight_stats(artifact: mo.ModelArtifact) -> dict[str, Any]:
    """Parameter count, overall sparsity and per-layer sparsity of weight tensors."""
    import numpy as np

    layers: dict[str, tuple[int, int]] = {}  # name -> (zeros, total)
    params = 0
    if artifact.format == "torch":
        for name, p in artifact.model.named_parameters():
            params += p.numel()
            if name.endswith("weight") and p.dim() > 1:
                layers[name[:-7]] = (int((p == 0).sum()), p.numel())
    elif artifact.format == "onnx":
        from onnx import numpy_helper

        for init in artifact.model.graph.initializer:
            a = numpy_helper.to_array(init)
            if a.dtype.kind == "f" or a.dtype in (np.int8, np.uint8):
                params += a.size
                if a.ndim > 1:
                    layers[init.name] = (int((a == 0).sum()), a.size)
    else:
        return {}
    zeros = sum(z for z, _ in layers.values())
    total = sum(t for _, t in layers.values())
    return {"params": params, "sparsity": zeros / total if total else 0.0,
            "layer_sparsity": {k: z / t for k, (z, t) in layers.items()}}


class AccuracyProfiler(mo.Profiler):
    """The session's ``eval_fn(runner)`` (higher is better); nothing when none is given."""

    name = "accuracy"

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        if ctx.eval_fn is None:
            return {}
        value = ctx.eval_fn(runner)
        try:
            return {"accuracy": float(value)}
        except (TypeError, ValueError) as e:
            raise mo.DataError(f"accuracy: eval_fn returned {value!r}, not a number.") from e
