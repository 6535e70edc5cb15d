"""Exporter ``tensorrt`` (ONNX -> serialized TensorRT engine) and backend ``tensorrt``.

Needs the ``tensorrt`` Python package (10.x) and a CUDA GPU visible to torch. I/O buffers are
torch CUDA tensors (no pycuda needed). On a machine without them both components register,
report themselves unavailable with the reason, and raise ``BackendUnavailableError`` when used.

Precision:

- ``fp16=True`` sets ``BuilderFlag.FP16`` only where ``builder.platform_has_fast_fp16``; on a
  GPU without fast FP16 the option is ignored and the step says so.
- ``int8=True`` builds INT8 from an FP32 ONNX model by entropy calibration: an
  ``IInt8EntropyCalibrator2`` draws up to ``calibration_batches`` batches of the session's
  ``calibration_data`` (as torch CUDA tensors; batches whose shapes differ from the first
  one's are skipped, since TensorRT calibrates at one shape, its calibration profile). The
  calibration cache TensorRT writes is kept with the engine (:class:`TrtEngine`) and saved as
  ``calibration.cache`` next to ``model.bin`` in the artifact folder; a later build reuses it
  (``calibration_cache="history:-1"`` or a path to that file or to a saved tensorrt artifact)
  and then skips calibration, so it needs no calibration data.
- Explicitly quantized (QDQ) ONNX graphs always build INT8 (no calibration).

Shapes: one optimization profile covers every symbolic dim of the inputs. The ``"batch"`` dim
takes ``min_batch`` / ``opt_batch`` / ``max_batch``; any other symbolic dim (e.g. from
``Session(dynamic_axes={"input": {2: "height"}})``) defaults to its size in the example inputs
for min, opt and max; ``profile_min`` / ``profile_opt`` / ``profile_max`` (``{dim name:
size}``) override either. The profile is recorded in the artifact's metadata, and the runner
refuses an input outside it with an :class:`InputSpecError` naming the dim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import modelopt_core as mo

#: where calibration batches are placed for TensorRT to read (device memory)
CALIBRATION_DEVICE = "cuda"
#: the file the calibration cache is saved as, next to model.bin
CACHE_FILE = "calibration.cache"
_MAX_CACHE_BYTES = 64 << 20


def _trt_availability() -> tuple[bool, str]:
    import importlib.util
    import sys

    if importlib.util.find_spec("tensorrt") is None:
        return False, ("missing module tensorrt (needs an NVIDIA GPU). Install with: "
                       "pip install 'modelopt-core[tensorrt]'")
    torch = sys.modules.get("torch")
    if torch is None:  # listing plugins: ask the driver (NVML), never import torch for it
        if not _nvml_gpu_count():
            return False, "no NVIDIA GPU is visible (TensorRT needs one)"
        return True, ""
    if not torch.cuda.is_available():  # in a session torch is loaded: its answer is the one
        return False, "no CUDA GPU is visible to torch (TensorRT needs an NVIDIA GPU)"
    return True, ""


def _nvml_gpu_count() -> int:
    """NVIDIA GPUs the driver reports through NVML (0 without a driver); unlike ``cuInit``
    this creates no CUDA context, so a later ``fork`` stays safe."""
    import ctypes

    for lib in ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll"):
        try:
            nvml = ctypes.CDLL(lib)
        except OSError:
            continue
        try:
            if nvml.nvmlInit_v2() != 0:
                return 0
            count = ctypes.c_uint(0)
            ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
            nvml.nvmlShutdown()
            return count.value if ok else 0
        except AttributeError:  # an NVML too old for the _v2 entry points
            return 0
    return 0


class TrtEngine(bytes):
    """A serialized TensorRT engine (``bytes``) that may carry the INT8 calibration cache it
    was built with (``calibration_cache``; None when it was not calibrated)."""

    calibration_cache: bytes | None

    def __new__(cls, data: bytes, calibration_cache: bytes | None = None) -> TrtEngine:
        obj = super().__new__(cls, data)
        obj.calibration_cache = None if calibration_cache is None else bytes(calibration_cache)
        return obj


def _dims(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and any(v < 1 for v in value.values()):
        raise mo.ConfigError(f"config key {attr.name!r}: every size must be >= 1, got {value}")


@mo.config
class TrtBuildConfig:
    fp16: bool = mo.field(False, help="allow FP16 kernels (only where the GPU has fast FP16: "
                                      "builder.platform_has_fast_fp16)")
    int8: bool = mo.field(False, help="INT8 from an FP32 ONNX model, calibrated on the "
                                      "session's calibration_data (entropy calibrator)")
    calibration_batches: int = mo.field(16, validator=mo.positive,
                                        help="int8: calibration batches to draw")
    calibration_cache: str | None = mo.field(
        None, help="int8: reuse a calibration cache instead of calibrating: 'history:<i>' (a "
                   "tensorrt artifact of the session), a calibration.cache file, or a saved "
                   "tensorrt artifact folder")
    workspace_mb: int = mo.field(2048, validator=mo.positive, help="builder workspace limit")
    optimization_level: int = mo.field(3, validator=mo.in_range(0, 5),
                                       help="builder optimization level (0-5)")
    min_batch: int = mo.field(1, validator=mo.positive, help="optimization profile: min batch")
    opt_batch: int = mo.field(8, validator=mo.positive, help="optimization profile: opt batch")
    max_batch: int = mo.field(32, validator=mo.positive, help="optimization profile: max batch")
    profile_min: dict[str, int] | None = mo.field(
        None, validator=_dims, help="optimization profile: min size per symbolic dim name")
    profile_opt: dict[str, int] | None = mo.field(
        None, validator=_dims, help="optimization profile: opt size per symbolic dim name "
                                    "(default: the example inputs' size; batch: opt_batch)")
    profile_max: dict[str, int] | None = mo.field(
        None, validator=_dims, help="optimization profile: max size per symbolic dim name")


def profile_shapes(net_inputs: Sequence[tuple[str, Sequence[int]]],
                   specs: Sequence[mo.TensorSpec], example_inputs: Sequence[Any],
                   cfg: TrtBuildConfig) -> dict[str, dict[str, list[int]]]:
    """``{input: {"min": shape, "opt": shape, "max": shape}}`` for the network's inputs
    (``(name, dims)`` with -1 for dynamic dims), see the module docstring. ConfigError for a
    profile key that names no symbolic dim, or a dim whose min <= opt <= max fails."""
    by_name = {s.name: (i, s) for i, s in enumerate(specs)}
    given = {k: dict(getattr(cfg, f"profile_{k}") or {}) for k in ("min", "opt", "max")}
    seen: dict[str, tuple[int, int, int]] = {}
    out: dict[str, dict[str, list[int]]] = {}
    for idx, (name, dims) in enumerate(net_inputs):
        i, spec = by_name.get(name, (idx, specs[idx] if idx < len(specs) else None))
        ex = example_inputs[i] if i < len(example_inputs) else None
        shapes: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
        for j, d in enumerate(dims):
            if d >= 0:
                lo = opt = hi = int(d)
            else:
                sym = spec.shape[j] if spec is not None and j < len(spec.shape) else None
                sym = sym if isinstance(sym, str) else f"{name}_dim{j}"
                size = (int(ex.shape[j]) if ex is not None and j < ex.dim() else 1)
                base = ((cfg.min_batch, cfg.opt_batch, cfg.max_batch) if sym == "batch"
                        else (size, size, size))
                lo, opt, hi = (given[k].get(sym, b) for k, b in zip(("min", "opt", "max"),
                                                                    base))
                if sym not in given["opt"] and sym != "batch":
                    opt = min(max(opt, lo), hi)  # the example size, inside a given range
                if not 1 <= lo <= opt <= hi:
                    raise mo.ConfigError(
                        f"tensorrt: optimization profile of dim {sym!r} (input {name!r}, dim "
                        f"{j}) needs 1 <= min <= opt <= max, got min={lo}, opt={opt}, max={hi}; "
                        "set profile_min / profile_opt / profile_max (batch: min_batch / "
                        "opt_batch / max_batch).")
                if seen.setdefault(sym, (lo, opt, hi)) != (lo, opt, hi):
                    raise mo.ConfigError(f"tensorrt: dim {sym!r} is shared by several inputs "
                                         "but got different profile ranges.")
            shapes["min"].append(lo)
            shapes["opt"].append(opt)
            shapes["max"].append(hi)
        out[name] = shapes
    unknown = sorted({k for g in given.values() for k in g} - set(seen))
    if unknown:
        raise mo.ConfigError(f"tensorrt: profile dims {unknown} are not symbolic dims of the "
                             f"model's inputs (those are: {sorted(seen) or 'none'}).")
    return out


def make_calibrator(trt: Any, batches: Sequence[Sequence[Any]], names: Sequence[str],
                    cache: bytes | None) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` (tuples of torch tensors in the
    order of ``names``) from device memory, reading ``cache`` when given (TensorRT then skips
    calibration) and keeping what TensorRT writes in ``.written``."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches, self.names, self.cache = list(batches), list(names), cache
            self.drawn = 0
            self.written: bytes | None = None
            self._live: list[Any] = []  # device buffers of the batch TensorRT is reading

        def get_batch_size(self) -> int:
            return int(self.batches[0][0].shape[0]) if self.batches else 1

        def get_batch(self, names: Sequence[str], *args: Any) -> list[int] | None:
            if self.drawn >= len(self.batches):
                return None
            batch = self.batches[self.drawn]
            self.drawn += 1
            order = [self.names.index(n) if n in self.names else k for k, n in enumerate(names)]
            self._live = [batch[k].to(CALIBRATION_DEVICE).contiguous() for k in order]
            if CALIBRATION_DEVICE == "cuda":
                torch.cuda.synchronize()
            return [int(t.data_ptr()) for t in self._live]

        def read_calibration_cache(self, *args: Any) -> bytes | None:
            return self.cache

        def write_calibration_cache(self, cache: Any, *args: Any) -> None:
            self.written = bytes(cache)

    return EntropyCalibrator()


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_from(spec: str, ctx: Any) -> tuple[bytes, str]:
    """The calibration cache ``spec`` names (see ``calibration_cache``), and where from."""
    if spec.startswith("history:"):
        try:
            art = ctx.history[int(spec.split(":", 1)[1])]
        except (ValueError, IndexError):
            raise mo.ConfigError(f"tensorrt: calibration_cache={spec!r} names no artifact of "
                                 f"the session history ({len(ctx.history)} entries).") from None
        cache = getattr(art.model, "calibration_cache", None)
        if not cache:
            raise mo.ConfigError(f"tensorrt: calibration_cache={spec!r} is a {art.format!r} "
                                 "artifact without a calibration cache; give an INT8 tensorrt "
                                 "artifact built by calibration.")
        return cache, spec
    path = Path(spec)
    if path.is_dir():  # a saved tensorrt artifact: loaded (hash-checked) like any artifact
        art = mo.load_artifact(path)
        cache = getattr(art.model, "calibration_cache", None)
        if art.format != "tensorrt" or not cache:
            raise mo.ConfigError(f"tensorrt: {path} is a {art.format!r} artifact without "
                                 f"{CACHE_FILE}; give an INT8 tensorrt artifact or the file.")
        return cache, str(path)
    if not path.is_file():
        raise mo.ConfigError(f"tensorrt: calibration_cache={spec!r} is neither 'history:<i>', "
                             "a file nor an artifact folder.")
    if path.stat().st_size > _MAX_CACHE_BYTES:
        raise mo.ConfigError(f"tensorrt: {path} is larger than {_MAX_CACHE_BYTES} bytes; it is "
                             "not a calibration cache.")
    return path.read_bytes(), str(path)


def _calibration(trt: Any, cfg: TrtBuildConfig, names: Sequence[str],
                 specs: Sequence[mo.TensorSpec], ctx: Any, who: str, notes: list[str]
                 ) -> tuple[Any, list[list[int]] | None, dict[str, Any]]:
    """(calibrator, the calibration shapes per input or None, metadata record)."""
    import torch

    cache, source = _cache_from(cfg.calibration_cache, ctx) if cfg.calibration_cache else (
        None, "")
    batches: list[tuple[Any, ...]] = []
    if cache is None:
        if ctx is None:
            raise mo.DataError(f"{who}: int8=True needs calibration data (Session("
                               "calibration_data=...)) or calibration_cache=.")
        drawn = ctx.calibration_batches(who, cfg.calibration_batches)
        shape0 = [tuple(x.shape) for x in drawn[0]]
        batches = [b for b in drawn if [tuple(x.shape) for x in b] == shape0]
        if len(batches) < len(drawn):
            notes.append(f"{who}: calibrated on {len(batches)} of {len(drawn)} calibration "
                         f"batches (TensorRT calibrates at one shape, {shape0}; the others "
                         "were skipped)")
        fdt = {s.name: getattr(torch, s.dtype, None) for s in specs}
        batches = [tuple(x.to(fdt[n]) if x.is_floating_point() and fdt.get(n) is not None
                         else x for n, x in zip(names, b)) for b in batches]
        shapes = [list(x.shape) for x in batches[0]]
    else:
        shapes = None
        notes.append(f"{who}: INT8 scales from the calibration cache of {source} "
                     "(no calibration run)")
    calib = make_calibrator(trt, batches, names, cache)
    record = {"batches": len(batches), "source": source or "calibration_data"}
    return calib, shapes, record


def build_engine(onnx_model: Any, cfg: TrtBuildConfig, inputs: Sequence[mo.TensorSpec],
                 ctx: Any = None, who: str = "tensorrt") -> tuple[TrtEngine, dict[str, Any],
                                                                  list[str]]:
    """Parse an ONNX ModelProto and build a serialized engine (explicit batch, one profile
    over every symbolic dim, FP16 / INT8 as configured). Returns the engine (with its
    calibration cache when calibrated), a metadata record and notes for the step."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    data = onnx_model.SerializeToString()
    if not parser.parse(data):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise mo.ExportError(f"{who}: the ONNX parser rejected the model: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    config.builder_optimization_level = cfg.optimization_level
    notes: list[str] = []

    def warn(msg: str) -> None:  # an option that cannot take effect here: said loudly
        ctx.warn(msg) if ctx is not None else notes.append(msg)

    precisions = ["fp32"]
    if cfg.fp16:
        if getattr(builder, "platform_has_fast_fp16", True):
            config.set_flag(trt.BuilderFlag.FP16)
            precisions.append("fp16")
        else:
            warn(f"{who}: fp16=True ignored: this GPU has no fast FP16 "
                         "(builder.platform_has_fast_fp16 is False); the engine keeps FP32")
    net_inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in net_inputs]
    example = tuple(getattr(ctx, "example_inputs", ()) or ())
    profile_data = profile_shapes([(t.name, tuple(t.shape)) for t in net_inputs], inputs,
                                  example, cfg)
    info: dict[str, Any] = {"onnx_sha256": _fingerprint(data), "profile": profile_data}
    calib = None
    if any(n.op_type == "QuantizeLinear" for n in onnx_model.graph.node):
        config.set_flag(trt.BuilderFlag.INT8)
        precisions.append("int8")
        info["int8"] = "qdq"
        if cfg.int8:
            notes.append(f"{who}: the ONNX graph is explicitly quantized (QDQ): INT8 from its "
                         "scales, no calibration")
    elif cfg.int8:
        if not getattr(builder, "platform_has_fast_int8", True):
            warn(f"{who}: int8=True ignored: this GPU has no fast INT8 "
                         "(builder.platform_has_fast_int8 is False)")
        else:
            calib, shapes, info["calibration"] = _calibration(trt, cfg, names, inputs, ctx,
                                                              who, notes)
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = calib
            cal = builder.create_optimization_profile()
            for k, name in enumerate(names):
                shape = tuple(shapes[k]) if shapes else tuple(profile_data[name]["opt"])
                cal.set_shape(name, shape, shape, shape)
            config.set_calibration_profile(cal)
            precisions.append("int8")
            info["int8"] = "calibrated"
    profile = builder.create_optimization_profile()
    for name in names:
        p = profile_data[name]
        profile.set_shape(name, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise mo.ExportError(f"{who}: engine build failed (see the TensorRT log above).")
    cache = None
    if calib is not None:
        cache = calib.written or calib.cache
        if cache is None:
            raise mo.ExportError(f"{who}: TensorRT wrote no calibration cache; INT8 "
                                 "calibration did not run.")
        info["calibration"]["cache_sha256"] = _fingerprint(cache)
        info["calibration"]["drawn"] = calib.drawn
    info["precisions"] = precisions
    return TrtEngine(bytes(engine), cache), info, notes


class TrtExporter(mo.Exporter):
    """ONNX -> TensorRT engine (INT8 by calibration or from QDQ graphs, optional FP16)."""

    name = "tensorrt"
    source = "onnx"
    target = "tensorrt"
    Config = TrtBuildConfig
    install_hint = "pip install 'modelopt-core[tensorrt]' on a machine with an NVIDIA GPU"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return _trt_availability()

    def export(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        self.ensure_available()
        engine, info, notes = build_engine(artifact.model, self.config, artifact.inputs, ctx,
                                           self.name)
        return artifact.evolve(step=self.step(notes=notes), format="tensorrt", model=engine,
                               metadata={"tensorrt": info})


class TrtRunner(mo.Runner):
    """Runs a deserialized engine with torch CUDA tensors as I/O buffers. Shared between
    threads, it runs one call at a time (the base class's lock): an execution context holds
    the call's shapes and buffer addresses and is not thread-safe (TensorRT's docs)."""

    def __init__(self, artifact: mo.ModelArtifact, engine: Any,
                 profile: dict[str, dict[str, list[int]]] | None = None) -> None:
        import tensorrt as trt
        import torch

        super().__init__(artifact, "cuda")
        self.profile = profile or {}
        self.trt, self.torch = trt, torch
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names
                       if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names
                        if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _dtype(self, name: str) -> Any:
        t = self.trt.nptype(self.engine.get_tensor_dtype(name))
        return self.torch.from_numpy(__import__("numpy").zeros(1, dtype=t)).dtype

    def _run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        torch = self.torch
        keep = []
        for name, x in zip(self.inputs, inputs):
            check_profile(self.profile.get(name), name, tuple(x.shape))
            x = x.to("cuda", self._dtype(name)).contiguous()
            keep.append(x)
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for name in self.outputs:
            o = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name),
                            device="cuda")
            outs.append(o)
            self.context.set_tensor_address(name, o.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise mo.ModeloptError("tensorrt: execute_async_v3 failed")
        self.stream.synchronize()
        return [o.float() for o in outs]

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()

    def _release(self) -> None:
        self.context = None
        self.engine = None


def check_profile(p: dict[str, list[int]] | None, name: str, shape: tuple[int, ...]) -> None:
    """InputSpecError when ``shape`` lies outside the engine's optimization profile ``p``."""
    if not p:
        return
    for j, (d, lo, hi) in enumerate(zip(shape, p["min"], p["max"])):
        if not lo <= d <= hi:
            raise mo.InputSpecError(
                f"tensorrt: input {name!r} dim {j} is {d}, outside the engine's optimization "
                f"profile [{lo}, {hi}] (min {p['min']}, max {p['max']}); rebuild the engine "
                "with a wider range (min_batch / max_batch, profile_min / profile_max).")


class TrtBackend(mo.Backend):
    """TensorRT runtime: runs engines, or builds one from an ONNX artifact on load."""

    name = "tensorrt"
    accepts = ("tensorrt", "onnx")
    Config = TrtBuildConfig
    releases_gil = True
    reference_for = ("tensorrt",)
    install_hint = TrtExporter.install_hint

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return _trt_availability()

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        import tensorrt as trt

        if artifact.format == "tensorrt":
            data, profile = artifact.model, (artifact.metadata.get("tensorrt") or {}).get(
                "profile")
        else:
            data, info, _ = build_engine(artifact.model, self.config, artifact.inputs, ctx)
            profile = info["profile"]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise mo.ArtifactError("tensorrt: the engine could not be deserialized (built for "
                                   "another TensorRT version or GPU?); rebuild it here.")
        return TrtRunner(artifact, engine, profile if isinstance(profile, dict) else None)
