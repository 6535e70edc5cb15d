"""Backend ``openvino``: runs OpenVINO artifacts with the OpenVINO runtime.

Options map onto OpenVINO's compile properties: ``device`` (CPU, GPU, GPU.1, AUTO, NPU...),
``performance_hint`` (LATENCY / THROUGHPUT), ``num_streams``, ``inference_num_threads`` and
``inference_precision``. ``inference_precision`` defaults to ``"f32"`` so that the runner
matches the torch original like every FP32 backend; ``"bf16"`` (fast on CPUs with AVX-512
BF16 / AMX) and ``"f16"`` trade accuracy for speed, and ``None`` leaves the device's own
default (bf16 on such CPUs). INT8 models (``openvino.quantize``, QDQ graphs) run their
quantized ops in INT8 whatever the precision; it applies to the rest. Check accuracy before
using ``"f16"`` with INT8 graphs: on this project's AVX-512 FP16 test CPU the ResNet-18 QDQ
graph of ``onnx.quantize_static`` kept only 52% top-1 agreement in f16 (99% in f32 and bf16).

The runner keeps the torch-in / torch-out contract: inputs are copied once into the infer
request's own input tensors, which then runs with no arguments (``run_many`` fills its
requests the same way); passing them to ``infer()``, shared or not, went through OpenVINO's
Python input dispatch, ~0.1 ms a call. Outputs are copied once out of the request's buffers,
which the next call reuses, so a caller may keep them; in the artifact's output order.
``batch=N`` compiles the model for that static batch (an IR exported with
``dynamic_batch=False`` is static already). The runner may be shared between threads:
each call takes an idle infer request from a pool (a new one when all are busy; an
``InferRequest`` runs one inference at a time and reuses its output buffers), so concurrent
calls run in parallel and each gets its own input's answer. For throughput, ``run_many`` runs a
list of input tuples through an ``openvino.AsyncInferQueue`` (several infer requests in
flight, one per stream) and returns the outputs in input order.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import modelopt_core as mo

_PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}


def _device(inst: Any, attr: Any, value: str) -> None:
    if not re.fullmatch(r"(CPU|GPU(\.\d+)?|NPU|AUTO(:[A-Z0-9.,]+)?|MULTI:[A-Z0-9.,]+|"
                        r"HETERO:[A-Z0-9.,]+)", value):
        raise mo.ConfigError(f"device: {value!r} is not an OpenVINO device; use CPU, GPU, "
                             "GPU.<n>, NPU or AUTO (AUTO:GPU,CPU for a priority list).")


@mo.config
class OpenVinoConfig:
    """Options of the ``openvino`` backend."""

    device: str = mo.field("CPU", validator=_device,
                           help="OpenVINO device: CPU, GPU, GPU.<n>, NPU, AUTO")
    performance_hint: Literal["LATENCY", "THROUGHPUT"] | None = mo.field(
        None, help="OpenVINO performance hint (default: the device's, LATENCY on CPU)")
    num_streams: int | None = mo.field(None, validator=mo.positive,
                                       help="parallel execution streams (default: the hint's)")
    inference_num_threads: int | None = mo.field(
        None, validator=mo.positive, help="CPU threads for inference (default: all cores)")
    inference_precision: Literal["f32", "bf16", "f16"] | None = mo.field(
        "f32", help="precision of the non-quantized ops; None: the device's default (bf16 "
                    "on CPUs with bf16 support)")
    async_jobs: int | None = mo.field(None, validator=mo.positive,
                                      help="infer requests run_many keeps in flight "
                                           "(default: OpenVINO's optimal number)")
    batch: int | None = mo.field(None, validator=mo.positive,
                                 help="compile for this fixed batch size (the inputs' first "
                                      "dimension, where it is dynamic): static shapes run a "
                                      "little faster; other batch sizes are then refused")


def compile_properties(cfg: OpenVinoConfig) -> dict[str, Any]:
    """OpenVINO compile properties of a config (AUTO/MULTI pass the CPU ones through)."""
    props: dict[str, Any] = {}
    if cfg.performance_hint:
        props["PERFORMANCE_HINT"] = cfg.performance_hint
    if cfg.num_streams:
        props["NUM_STREAMS"] = str(cfg.num_streams)
    if cfg.inference_num_threads:
        props["INFERENCE_NUM_THREADS"] = cfg.inference_num_threads
    if cfg.inference_precision:
        props["INFERENCE_PRECISION_HINT"] = _PRECISIONS[cfg.inference_precision]
    if cfg.device.split(":")[0] in ("AUTO", "MULTI", "HETERO"):
        device_only = {k: v for k, v in props.items() if k != "PERFORMANCE_HINT"}
        props = {k: v for k, v in props.items() if k == "PERFORMANCE_HINT"}
        if device_only:
            props["DEVICE_PROPERTIES"] = {"CPU": device_only}
    return props


def check_device(device: str) -> None:
    """BackendUnavailableError when ``device`` (or, for AUTO:/MULTI: lists, every listed
    device) is not one this machine's OpenVINO runtime offers."""
    from .common import core

    have = core().available_devices
    kind, _, rest = device.partition(":")
    wanted = [d for d in rest.split(",") if d] if rest else ([] if kind == "AUTO" else [kind])
    missing = [d for d in wanted if d not in have and not any(h.startswith(d + ".")
                                                              for h in have)]
    if missing:
        raise mo.BackendUnavailableError(
            f"openvino: device {missing[0]!r} is not available here (OpenVINO sees {have}). "
            "Install the device's driver (Intel GPU: the compute runtime / level-zero, NPU: "
            "the NPU driver), or choose one of those devices, e.g. device='CPU' or 'AUTO'.")


class OpenVinoRunner(mo.Runner):
    """An ``openvino.CompiledModel`` behind the Runner interface (torch in, torch out); safe
    to share between threads (a pool of infer requests, one per concurrent call)."""

    thread_safe = True

    def __init__(self, artifact: mo.ModelArtifact, compiled: Any, device: str = "cpu",
                 async_jobs: int | None = None, batch: int | None = None) -> None:
        super().__init__(artifact, device)
        from .common import output_indices

        self.compiled = compiled
        #: idle infer requests (deque pops/appends are atomic); a busy pool grows by one
        self._requests: deque[Any] = deque([compiled.create_infer_request()])
        self._async_lock = threading.Lock()  # one run_many at a time (one queue, one callback)
        self.output_index = output_indices(compiled.outputs,
                                           [s.name for s in artifact.outputs])
        self.async_jobs = async_jobs
        self.batch = batch
        self._queue: Any = None

    def _feeds(self, inputs: Sequence[Any]) -> list[Any]:
        from .common import to_numpy

        return [to_numpy(x) for x in inputs]

    def _run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        import torch

        if self.batch is not None:
            for x in inputs:
                if x.dim() and x.shape[0] != self.batch:
                    raise mo.InputSpecError(
                        f"runner for {self.artifact.name!r} was compiled for batch "
                        f"{self.batch} (batch=); got an input of batch {x.shape[0]}.")
        feeds = [x.numpy() if _plain_cpu(x) else _to_numpy(x) for x in inputs]
        try:
            request = self._requests.pop()
        except IndexError:  # every request is busy in another thread
            request = self.compiled.create_infer_request()
        try:
            # the inputs are copied into the request's own tensors and the request runs with
            # no arguments: OpenVINO's Python input dispatch (inputs passed to infer(), shared
            # or not) cost ~0.1 ms a call, 5-10% of a 1.4 ms YOLOv8n INT8 inference. run_many
            # fills its requests the same way: the CPU plugin's results can differ bitwise
            # between a shared and a copied input, and both paths must give the same answer.
            # The outputs are views of the request's buffers, copied once below (the next
            # call reuses them).
            if fill_inputs(request, feeds):
                request.infer()
            else:
                request.infer(feeds, share_inputs=True, share_outputs=True)
            out = request.get_output_tensor
            return [torch.from_numpy(out(i).data.copy()) for i in self.output_index]
        finally:
            self._requests.append(request)

    def run_many(self, batches: Iterable[Any]) -> list[Any]:
        """:meth:`mo.Runner.run_many` with several infer requests in flight
        (``openvino.AsyncInferQueue``): every item of ``batches`` (an input tuple, a single
        tensor, or a dict of named inputs, as ``runner(...)`` takes) runs, and the outputs
        come back in the order of ``batches``, each structured like ``runner(item)``'s.
        Throughput rises with the number of streams (``performance_hint="THROUGHPUT"`` or
        ``num_streams``)."""
        self._enter()  # RunnerClosedError once closed; close() waits for this call
        try:
            with self._async_lock:
                return self._run_async(batches)
        finally:
            self._leave()

    #: the name this method had before the Runner protocol's ``run_many``
    run_async = run_many

    def _run_async(self, batches: Iterable[Any]) -> list[Any]:
        import openvino as ov
        import torch

        prepared = []
        for item in batches:
            xs = self.call_inputs(item)
            self.check_inputs(xs)
            prepared.append(self._feeds(xs))
        if self._queue is None:
            self._queue = ov.AsyncInferQueue(self.compiled, self.async_jobs or 0)
        results: list[Any] = [None] * len(prepared)

        def done(request: Any, index: int) -> None:
            results[index] = [request.get_output_tensor(i).data.copy()
                              for i in self.output_index]

        self._queue.set_callback(done)
        for i, feeds in enumerate(prepared):
            # the request start_async takes next is the idle one this returns (the queue's
            # front; only this thread starts requests: _async_lock): fill it as _run does
            request = self._queue[self._queue.get_idle_request_id()]
            if fill_inputs(request, feeds):
                self._queue.start_async(None, i)
            else:
                self._queue.start_async(feeds, i, share_inputs=True)
        self._queue.wait_all()
        return [self.unflatten([torch.from_numpy(o) for o in outs]) for outs in results]

    def _release(self) -> None:
        if self._queue is not None:
            self._queue.wait_all()
        self._queue = None
        self._requests.clear()
        self.compiled = None


class OpenVinoBackend(mo.Backend):
    """OpenVINO runtime (CPU by default; GPU/NPU/AUTO; f32/bf16/f16; async throughput)."""

    name = "openvino"
    accepts = ("openvino",)
    Config = OpenVinoConfig
    thread_option = "inference_num_threads"
    releases_gil = True
    reference_for = ("openvino",)
    requires = ("openvino",)
    install_hint = "pip install 'modelopt-core[openvino]'"

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        from .common import core

        cfg = self.config
        check_device(cfg.device)
        model = artifact.model
        if cfg.batch is not None:
            model = static_batch(model, cfg.batch, artifact.name)
        try:
            compiled = core().compile_model(model, cfg.device, compile_properties(cfg))
        except Exception as e:
            msg = str(e).strip().splitlines()
            raise mo.FormatError(f"openvino: cannot compile {artifact.name!r} for "
                                 f"{cfg.device} ({type(e).__name__}: "
                                 f"{(msg[0] if msg else '')[:300]}).") from e
        device = "cpu" if cfg.device == "CPU" else cfg.device.lower()
        return OpenVinoRunner(artifact, compiled, device, cfg.async_jobs,
                              cfg.batch if model is not artifact.model else None)


def static_batch(model: Any, batch: int, name: str) -> Any:
    """A copy of the OpenVINO ``model`` whose inputs' dynamic first dimension is ``batch``
    (the model itself when every input's first dimension is static already; one that
    differs from ``batch`` is a ConfigError)."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or len(shape) == 0:
            continue
        first = shape[0]
        if first.is_static:
            if first.get_length() != batch:
                raise mo.ConfigError(f"openvino: batch={batch}, but {name!r} has a fixed batch "
                                     f"of {first.get_length()} (input {port.any_name!r}).")
            continue
        dims = list(shape)
        dims[0] = batch
        shapes[port.any_name] = type(shape)(dims)
    if not shapes:
        return model
    model = model.clone()
    model.reshape(shapes)
    return model


def fill_inputs(request: Any, feeds: Sequence[Any]) -> bool:
    """Copy numpy ``feeds`` into ``request``'s own input tensors, resizing a tensor whose
    shape differs (a dynamic dim); False, with nothing written, when a feed cannot be copied
    as it is (another dtype, or an element type numpy has no dtype for): the caller then
    passes the feeds to ``infer`` instead."""
    import numpy as np

    tensors = [request.get_input_tensor(i) for i in range(len(feeds))]
    for t, f in zip(tensors, feeds):
        try:
            if t.element_type.to_dtype() != f.dtype:
                return False
        except Exception:  # noqa: BLE001 - no numpy dtype (bf16, string): the other path
            return False
    for t, f in zip(tensors, feeds):
        data = t.data  # a numpy view; its shape is cheap (tuple(t.shape) costs ~25 us)
        if data.shape != f.shape:
            t.shape = list(f.shape)
            data = t.data
        np.copyto(data, f, casting="no")
    return True


def _plain_cpu(x: Any) -> bool:
    """A tensor numpy can view as it is: CPU, no autograd, a numpy dtype, contiguous."""
    import torch

    return (x.device.type == "cpu" and not x.requires_grad and x.dtype != torch.bfloat16
            and x.is_contiguous())


def _to_numpy(x: Any) -> Any:
    from .common import to_numpy

    return to_numpy(x)
