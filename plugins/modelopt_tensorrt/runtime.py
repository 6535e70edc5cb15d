"""The TensorRT runtime side of the ``tensorrt`` plugin: whether this machine can run it (the
``tensorrt`` package and an NVIDIA GPU, asked of the driver through NVML while torch is not
loaded) and the runner that executes a deserialized engine with torch CUDA tensors as I/O
buffers. Nothing heavy is imported at module load."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import modelopt_core as mo

from .profile import check_profile


def _trt_availability() -> tuple[bool, str]:
    """(whether the tensorrt components can run here, why not when they cannot)."""
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
