"""Exporter ``tensorrt`` (ONNX -> serialized TensorRT engine) and backend ``tensorrt``.

Needs the ``tensorrt`` Python package (10.x) and a CUDA GPU visible to torch. I/O buffers are
torch CUDA tensors (no pycuda needed). On a machine without them both components register,
report themselves unavailable with the reason, and raise ``BackendUnavailableError`` when used.
Explicitly quantized (QDQ) ONNX graphs build INT8 engines; ``fp16=True`` allows FP16 kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import modelopt_core as mo


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


@mo.config
class TrtBuildConfig:
    fp16: bool = mo.field(False, help="allow FP16 kernels")
    workspace_mb: int = mo.field(2048, validator=mo.positive, help="builder workspace limit")
    optimization_level: int = mo.field(3, validator=mo.in_range(0, 5),
                                       help="builder optimization level (0-5)")
    min_batch: int = mo.field(1, validator=mo.positive, help="optimization profile: min batch")
    opt_batch: int = mo.field(8, validator=mo.positive, help="optimization profile: opt batch")
    max_batch: int = mo.field(32, validator=mo.positive, help="optimization profile: max batch")


def build_engine(onnx_model: Any, cfg: TrtBuildConfig, inputs: Sequence[mo.TensorSpec]) -> bytes:
    """Parse an ONNX ModelProto and build a serialized engine (explicit batch, one profile)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model.SerializeToString()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise mo.ExportError(f"tensorrt: the ONNX parser rejected the model: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    config.builder_optimization_level = cfg.optimization_level
    if cfg.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if any(n.op_type == "QuantizeLinear" for n in onnx_model.graph.node):
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        spec = inputs[i] if i < len(inputs) else None
        fixed = [d if d >= 0 else (spec.shape[j] if spec and isinstance(spec.shape[j], int)
                                   else 1) for j, d in enumerate(shape)]
        mk = (lambda b: tuple([b] + fixed[1:]) if shape[0] < 0 else tuple(fixed))
        profile.set_shape(t.name, mk(cfg.min_batch), mk(cfg.opt_batch), mk(cfg.max_batch))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise mo.ExportError("tensorrt: engine build failed (see the TensorRT log above).")
    return bytes(engine)


class TrtExporter(mo.Exporter):
    """ONNX -> TensorRT engine (INT8 from QDQ graphs, optional FP16)."""

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
        engine = build_engine(artifact.model, self.config, artifact.inputs)
        return artifact.evolve(step=self.step(), format="tensorrt", model=engine)


class TrtRunner(mo.Runner):
    """Runs a deserialized engine with torch CUDA tensors as I/O buffers."""

    def __init__(self, artifact: mo.ModelArtifact, engine: Any) -> None:
        import tensorrt as trt
        import torch

        super().__init__(artifact, "cuda")
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


class TrtBackend(mo.Backend):
    """TensorRT runtime: runs engines, or builds one from an ONNX artifact on load."""

    name = "tensorrt"
    accepts = ("tensorrt", "onnx")
    Config = TrtBuildConfig
    install_hint = TrtExporter.install_hint

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return _trt_availability()

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        import tensorrt as trt

        data = (artifact.model if artifact.format == "tensorrt"
                else build_engine(artifact.model, self.config, artifact.inputs))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise mo.ArtifactError("tensorrt: the engine could not be deserialized (built for "
                                   "another TensorRT version or GPU?); rebuild it here.")
        return TrtRunner(artifact, engine)
