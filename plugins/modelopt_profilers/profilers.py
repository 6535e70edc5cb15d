"""Profilers: latency percentiles, throughput, peak memory, size on disk, accuracy.

Timing profilers run the session's example inputs or its calibration batches (optionally
tiled to ``batch_size``), warm up first, synchronise the device around each timed call, and
time for a minimum duration rather than a fixed count, so that fast models get enough samples.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import modelopt_core as mo


def _inputs(ctx: mo.Context, batch_size: int | None, source: str = "example",
            limit: int = 64) -> list[tuple[Any, ...]]:
    """The inputs to time: the example inputs, or the session's calibration batches ("use
    real input data"), each optionally tiled/cut to ``batch_size`` rows."""
    if source == "calibration":
        sets = ctx.calibration_batches("profiler", limit=limit)
    else:
        xs = tuple(ctx.example_inputs)
        if not xs:
            raise mo.DataError("profiler: the session has no example_inputs to run.")
        sets = [xs]
    if batch_size is None:
        return sets
    out = []
    for xs in sets:
        tiled = []
        for x in xs:
            reps = -(-batch_size // x.shape[0])
            tiled.append(x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size].contiguous())
        out.append(tuple(tiled))
    return out


def _timed_calls(runner: mo.Runner, sets: list[tuple[Any, ...]], c: Any) -> list[float]:
    """Per-call seconds: ``warmup`` untimed calls, then timed calls (cycling through the input
    sets) until both ``iterations`` calls and ``min_time_s`` seconds are reached, or
    ``max_iterations`` calls."""
    for i in range(c.warmup):
        runner(*sets[i % len(sets)])
    runner.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while (len(times) < c.iterations or time.perf_counter() - start < c.min_time_s) \
            and len(times) < c.max_iterations:
        xs = sets[len(times) % len(sets)]
        t0 = time.perf_counter()
        runner(*xs)
        runner.synchronize()
        times.append(time.perf_counter() - t0)
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
    warmup: int = mo.field(10, validator=mo.in_range(0, 10_000), help="untimed calls first")
    iterations: int = mo.field(30, validator=mo.positive, help="timed calls (at least)")
    min_time_s: float = mo.field(0.3, validator=mo.in_range(0, 3600),
                                 help="keep timing until this many seconds passed")
    max_iterations: int = mo.field(100_000, validator=mo.positive,
                                   help="stop after this many timed calls")
    batch_size: int | None = mo.field(None, validator=mo.positive,
                                      help="tile the inputs to this batch size")
    inputs: Literal["example", "calibration"] = mo.field(
        "example", help="time the example inputs, or cycle through the session's "
                        "calibration batches (real data)")
    noise_threshold: float = mo.field(
        0.25, validator=mo.in_range(0, 100),
        help="flag the row as noisy when the interquartile range exceeds this fraction of "
             "the median")


class LatencyProfiler(mo.Profiler):
    """Per-call latency in ms after warm-up: p50/p95/p99, mean, std, min, max and the
    interquartile range, timed for at least ``min_time_s``; flags noisy measurements."""

    name = "latency"
    Config = LatencyConfig
    columns = (
        mo.Column("latency_p50_ms", "p50 ms", "ms", "{:.3f}", "lower", order=20),
        mo.Column("latency_p95_ms", "p95 ms", "ms", "{:.3f}", "lower", order=21),
        *(mo.Column(f"latency_{k}_ms", f"{k if k != 'iqr' else 'IQR'} ms", "ms", "{:.3f}",
                    "lower", table=False) for k in ("p99", "mean", "std", "min", "max", "iqr")),
        mo.Column("latency_n", "timed calls", "calls", table=False),
        mo.Column("latency_noisy", "noisy", table=False),
    )

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        c = self.config
        ts = sorted(t * 1e3 for t in _timed_calls(runner, _inputs(ctx, c.batch_size, c.inputs),
                                                   c))
        p25, p50, p75 = (_percentile(ts, q) for q in (0.25, 0.5, 0.75))
        out = {"latency_p50_ms": p50, "latency_p95_ms": _percentile(ts, 0.95),
               "latency_p99_ms": _percentile(ts, 0.99), "latency_mean_ms": statistics.fmean(ts),
               "latency_std_ms": statistics.pstdev(ts), "latency_min_ms": ts[0],
               "latency_max_ms": ts[-1], "latency_iqr_ms": p75 - p25, "latency_n": len(ts)}
        spread = (p75 - p25) / p50 if p50 > 0 else 0.0
        if spread > c.noise_threshold:
            out["latency_noisy"] = True
            ctx.warn(f"latency of {artifact.name!r} on this backend is noisy: interquartile "
                     f"range {100 * spread:.0f}% of the median (threshold "
                     f"{100 * c.noise_threshold:.0f}%); the machine is busy, or raise "
                     "min_time_s.")
        return out


@mo.config
class ThroughputConfig:
    warmup: int = mo.field(10, validator=mo.in_range(0, 10_000), help="untimed calls first")
    min_time_s: float = mo.field(0.5, validator=mo.in_range(0, 3600),
                                 help="time blocks of calls for at least this long")
    block_time_s: float = mo.field(0.02, validator=mo.in_range(1e-4, 60),
                                   help="each timed block runs calls for about this long")
    min_blocks: int = mo.field(5, validator=mo.positive, help="timed blocks (at least)")
    batch_size: int | None = mo.field(None, validator=mo.positive,
                                      help="tile the inputs to this batch size")
    inputs: Literal["example", "calibration"] = mo.field(
        "example", help="the example inputs, or the session's calibration batches")


class ThroughputProfiler(mo.Profiler):
    """Samples per second: blocks of back-to-back calls for at least ``min_time_s``; the
    median block rate (robust to a stray slow call, and consistent with the median
    latency). Reports the duration and the number of calls measured."""

    name = "throughput"
    Config = ThroughputConfig
    columns = (
        mo.Column("throughput_per_s", "samples/s", "samples/s", "{:,.0f}", "higher", order=30),
        mo.Column("throughput_duration_s", "throughput s", "s", "{:.2f}", table=False),
        mo.Column("throughput_calls", "throughput calls", "calls", table=False),
    )

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        c = self.config
        sets = _inputs(ctx, c.batch_size, c.inputs)
        for i in range(c.warmup):
            runner(*sets[i % len(sets)])
        runner.synchronize()
        t0 = time.perf_counter()  # calls per block from one timed call
        runner(*sets[0])
        runner.synchronize()
        per_block = max(1, int(c.block_time_s / max(time.perf_counter() - t0, 1e-7)))
        rates: list[float] = []
        calls = 0
        start = time.perf_counter()
        while len(rates) < c.min_blocks or time.perf_counter() - start < c.min_time_s:
            samples = 0
            t0 = time.perf_counter()
            for i in range(per_block):
                xs = sets[(calls + i) % len(sets)]
                runner(*xs)
                samples += xs[0].shape[0] if xs[0].dim() else 1
            runner.synchronize()
            rates.append(samples / (time.perf_counter() - t0))
            calls += per_block
        return {"throughput_per_s": statistics.median(rates),
                "throughput_duration_s": time.perf_counter() - start,
                "throughput_calls": calls}


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
    """Peak memory of inference: CUDA peak allocated (``peak_memory_mb``); on CPU the
    process's peak RSS while running (``peak_rss_mb``, the whole process: Python, libraries,
    every loaded model) and its growth during the calls (``rss_growth_mb``)."""

    name = "memory"
    Config = MemoryConfig
    columns = (
        mo.Column("peak_memory_mb", "peak MB", "MB", "{:.1f}", "lower", order=60),
        mo.Column("peak_rss_mb", "RSS MB", "MB", "{:.0f}", "lower", order=61),
        mo.Column("rss_growth_mb", "RSS +MB", "MB", "{:.1f}", "lower", order=62),
        mo.Column("memory_device", "memory device", table=False),
    )

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        import torch

        xs = _inputs(ctx, None)[0]
        if runner.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(self.config.iterations):
                runner(*xs)
            torch.cuda.synchronize()
            return {"peak_memory_mb": (torch.cuda.max_memory_allocated() - base) / 2**20,
                    "memory_device": "cuda"}
        # a CPU runtime's activations come from allocators that reuse freed blocks, so a
        # per-inference peak cannot be told apart from the process: report the process's
        runner(*xs)  # first-call allocations (arenas, lazy init) are part of the cost
        try:  # "5" resets the peak RSS (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return {"memory_device": "cpu", "peak_rss_mb": _maxrss_mb()}
        base = _rss_kb("VmRSS") or 0
        for _ in range(self.config.iterations):
            runner(*xs)
        peak = _rss_kb("VmHWM") or base
        return {"peak_rss_mb": peak / 1024, "rss_growth_mb": max(peak - base, 0) / 1024,
                "memory_device": "cpu"}


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SizeProfiler(mo.Profiler):
    """Bytes on disk of the saved artifact, parameter count and weight sparsity."""

    name = "size"
    columns = (
        mo.Column("size_mb", "size MB", "MB", "{:.3f}", "lower", order=40),
        mo.Column("size_bytes", "size bytes", "bytes", "{:,}", "lower", table=False),
        mo.Column("params", "params", "", "{:,}", "lower", order=50),
        mo.Column("sparsity", "sparsity", "%", lambda v: f"{100 * v:.1f}%", order=51),
        mo.Column("layer_sparsity", "layer sparsity", table=False),
        mo.Column("quantized_zero_fraction", "INT8 zeros", "%", lambda v: f"{100 * v:.1f}%",
                  table=False),
    )

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as d:
            folder = artifact.save(Path(d) / "a", plugins=ctx.plugins)
            size = sum(p.stat().st_size for p in folder.rglob("*")  # packages are folders
                       if p.is_file() and p.name != "manifest.json")
        out: dict[str, Any] = {"size_mb": size / 2**20, "size_bytes": size}
        out.update(weight_stats(artifact))
        return out


def weight_stats(artifact: mo.ModelArtifact) -> dict[str, Any]:
    """Parameter count, overall sparsity and per-layer sparsity of weight tensors.

    ONNX weights are read from initializers and ``Constant`` nodes; quantized (INT8/UINT8)
    weights count as parameters, but not towards ``sparsity``: a quantized weight at its zero
    point may be pruned or merely rounded to zero, so that fraction is reported apart
    (``quantized_zero_fraction``). Quantization scales and zero points are not parameters."""
    layers: dict[str, tuple[int, int]] = {}  # float weights: name -> (zeros, total)
    qzeros = qtotal = 0  # quantized weights: values at their zero point, all values
    params = 0
    if artifact.format == "torch":
        for name, p in artifact.model.named_parameters():
            params += p.numel()
            if name.endswith("weight") and p.dim() > 1:
                layers[name[:-7]] = (int((p == 0).sum()), p.numel())
    elif artifact.format == "onnx":
        for name, a, zp in _onnx_weights(artifact.model):
            params += a.size
            if a.ndim > 1 and zp is None:
                layers[name] = (int((a == 0).sum()), a.size)
            elif a.ndim > 1:
                qzeros += int(((a.astype("int32") - zp) == 0).sum())
                qtotal += a.size
    else:
        return {}
    out: dict[str, Any] = {"params": params}
    total = sum(t for _, t in layers.values())
    if total:  # INT8 weights that round to their zero point are not pruning: kept apart
        out["sparsity"] = sum(z for z, _ in layers.values()) / total
        out["layer_sparsity"] = {k: z / t for k, (z, t) in layers.items()}
    if qtotal:
        out["quantized_zero_fraction"] = qzeros / qtotal
    return out


# ONNX ops that take a quantized weight: op -> (weight input, its zero-point input)
_QWEIGHT = {"DequantizeLinear": (0, 2), "MatMulInteger": (1, 3), "ConvInteger": (1, 3)}
_QPARAMS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "MatMulInteger": (2, 3),
            "ConvInteger": (2, 3), "DynamicQuantizeLinear": ()}


def _onnx_weights(model: Any) -> list[tuple[str, Any, Any]]:
    """(name, array, zero point or None) of every weight constant of an ONNX graph."""
    import numpy as np
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
    qparams: set[str] = set()
    zero_of: dict[str, tuple[str, int | None]] = {}  # quantized weight -> (zp name, axis)
    for node in model.graph.node:
        qparams.update(node.input[i] for i in _QPARAMS.get(node.op_type, ())
                       if i < len(node.input))
        if node.op_type in _QWEIGHT:
            w, z = _QWEIGHT[node.op_type]
            if w < len(node.input) and node.input[w] in consts:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1) \
                    if node.op_type == "DequantizeLinear" else None
                zero_of[node.input[w]] = (node.input[z] if z < len(node.input) else "", axis)
    out = []
    for name, t in consts.items():
        if name in qparams and name not in zero_of:
            continue
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f":
            out.append((name, a, None))
        elif a.dtype in (np.int8, np.uint8) and name in zero_of:
            zname, axis = zero_of[name]
            zp = numpy_helper.to_array(consts[zname]).astype("int32") if zname in consts \
                else np.zeros((), "int32")
            if zp.ndim == 1 and axis is not None and a.ndim > 1:
                shape = [1] * a.ndim
                shape[axis % a.ndim] = zp.size
                zp = zp.reshape(shape)
            out.append((name, a, zp))
    return out


class AccuracyProfiler(mo.Profiler):
    """The session's ``eval_fn(runner)`` (higher is better); nothing when none is given."""

    name = "accuracy"
    columns = (mo.Column("accuracy", "accuracy", "", "{:.2f}", "higher", order=10),)

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        if ctx.eval_fn is None:
            return {}
        value = ctx.eval_fn(runner)
        try:
            return {"accuracy": float(value)}
        except (TypeError, ValueError) as e:
            raise mo.DataError(f"accuracy: eval_fn returned {value!r}, not a number.") from e
