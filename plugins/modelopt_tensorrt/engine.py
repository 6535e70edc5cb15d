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

This module builds engines (:func:`build_engine`) and holds the exporter and the backend;
the profiles are in :mod:`.profile`, the calibration cache and batches in :mod:`.calibration`,
the availability check and the runner in :mod:`.runtime` (their names used elsewhere are
importable from here as before).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import modelopt_core as mo

from .calibration import CACHE_FILE, _calibration_input  # noqa: F401 (CACHE_FILE re-exported)
from .profile import check_profile, profile_shapes  # noqa: F401 (check_profile re-exported)
from .runtime import TrtRunner, _trt_availability

#: where calibration batches are placed for TensorRT to read (device memory)
CALIBRATION_DEVICE = "cuda"


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


def _warn(ctx: Any, notes: list[str], msg: str) -> None:
    """An option that cannot take effect here: said loudly (a warning of the session, or a
    note of the step without one)."""
    ctx.warn(msg) if ctx is not None else notes.append(msg)


def _set_calibration(trt: Any, builder: Any, config: Any, cfg: TrtBuildConfig,
                     names: Sequence[str], specs: Sequence[mo.TensorSpec], ctx: Any, who: str,
                     info: dict[str, Any], notes: list[str]) -> Any:
    """Calibrated INT8 on the builder ``config``: an entropy calibrator fed by the calibration
    cache or batches (:func:`.calibration._calibration_input`), and a calibration profile at
    the batches' shapes (with a cache: the optimization profile's opt shapes, from
    ``info["profile"]``). Records ``info["calibration"]``; returns the calibrator."""
    batches, shapes, cache, source = _calibration_input(cfg, names, specs, ctx, who, notes)
    calib = make_calibrator(trt, batches, names, cache)
    info["calibration"] = {"batches": len(batches), "source": source or "calibration_data"}
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calib
    cal = builder.create_optimization_profile()
    for k, name in enumerate(names):
        shape = tuple(shapes[k]) if shapes else tuple(info["profile"][name]["opt"])
        cal.set_shape(name, shape, shape, shape)
    config.set_calibration_profile(cal)
    return calib


def _written_cache(calib: Any, info: dict[str, Any], who: str) -> bytes | None:
    """The calibration cache of a build with ``calib`` (None without one), its fingerprint
    and the batches drawn recorded in ``info["calibration"]``; ExportError when TensorRT
    wrote none."""
    if calib is None:
        return None
    cache = calib.written or calib.cache
    if cache is None:
        raise mo.ExportError(f"{who}: TensorRT wrote no calibration cache; INT8 "
                             "calibration did not run.")
    info["calibration"]["cache_sha256"] = _fingerprint(cache)
    info["calibration"]["drawn"] = calib.drawn
    return cache


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
    parser = trt.OnnxParser(network, logger)  # kept until the build: it owns the weights
    data = onnx_model.SerializeToString()
    if not parser.parse(data):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise mo.ExportError(f"{who}: the ONNX parser rejected the model: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    config.builder_optimization_level = cfg.optimization_level
    notes: list[str] = []
    precisions = ["fp32"]
    if cfg.fp16:
        if getattr(builder, "platform_has_fast_fp16", True):
            config.set_flag(trt.BuilderFlag.FP16)
            precisions.append("fp16")
        else:
            _warn(ctx, notes, f"{who}: fp16=True ignored: this GPU has no fast FP16 "
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
            _warn(ctx, notes, f"{who}: int8=True ignored: this GPU has no fast INT8 "
                              "(builder.platform_has_fast_int8 is False)")
        else:
            calib = _set_calibration(trt, builder, config, cfg, names, inputs, ctx, who, info,
                                     notes)
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
    cache = _written_cache(calib, info, who)
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
