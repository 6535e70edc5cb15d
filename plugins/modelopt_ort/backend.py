"""Backend ``onnxruntime``: runs ONNX artifacts with ONNX Runtime (providers, graph
optimization level, thread counts). Torch tensors in, torch tensors out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import modelopt_core as mo

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


@mo.config
class OrtConfig:
    providers: tuple[str, ...] = mo.field(("CPUExecutionProvider",),
                                          help="execution providers, in priority order")
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = mo.field(
        "all", help="ORT graph optimization level")
    intra_op_num_threads: int | None = mo.field(None, validator=mo.positive,
                                                help="threads inside an op (default: ORT's)")
    inter_op_num_threads: int | None = mo.field(None, validator=mo.positive,
                                                help="threads across ops (parallel mode)")
    execution_mode: Literal["sequential", "parallel"] = mo.field("sequential")
    allow_spinning: bool = mo.field(True, help="worker threads spin-wait between runs (lowest "
                                    "latency; turn off when sharing cores with other work)")
    optimized_model_path: str | None = mo.field(None, help="write ORT's optimized graph here")
    enable_mem_pattern: bool = mo.field(
        True, help="plan activation memory from the first run's allocation pattern (fixed "
                   "shapes run faster; turn off when input shapes vary a lot)")
    enable_cpu_mem_arena: bool = mo.field(
        True, help="keep freed CPU buffers in ORT's arena for reuse (faster; off returns "
                   "memory to the system, lower peak RSS)")


class OrtRunner(mo.Runner):
    """An ``onnxruntime.InferenceSession`` behind the Runner interface. Safe to share
    between threads: ``InferenceSession.run`` may be called concurrently (ORT's documented
    contract), so calls run in parallel."""

    thread_safe = True

    def __init__(self, artifact: mo.ModelArtifact, session: Any, device: str) -> None:
        super().__init__(artifact, device)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def _run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        import torch

        # a CPU tensor without autograd is viewed as it is (no detach/cpu round trip); ORT
        # copies the feeds in and returns fresh output arrays, so the outputs are the caller's
        feeds = {n: (x.numpy() if x.device.type == "cpu" and not x.requires_grad
                     else x.detach().cpu().numpy())
                 for n, x in zip(self.input_names, inputs)}
        return [torch.from_numpy(o) for o in self.session.run(self.output_names, feeds)]

    def _release(self) -> None:
        self.session = None


class OrtBackend(mo.Backend):
    """ONNX Runtime inference (CPU by default; CUDA/TensorRT providers when installed)."""

    name = "onnxruntime"
    accepts = ("onnx",)
    Config = OrtConfig
    thread_option = "intra_op_num_threads"
    releases_gil = True
    reference_for = ("onnx",)
    requires = ("onnxruntime",)
    install_hint = "pip install onnxruntime (or onnxruntime-gpu)"

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        import onnxruntime as ort

        cfg = self.config
        have = ort.get_available_providers()
        missing = [p for p in cfg.providers if p not in have]
        if missing:
            raise mo.BackendUnavailableError(
                f"onnxruntime: provider(s) {missing} are not available here (available: {have}). "
                "Install onnxruntime-gpu for CUDA/TensorRT providers, or choose from the list.")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                              _LEVELS[cfg.graph_optimization_level])
        if cfg.intra_op_num_threads:
            so.intra_op_num_threads = cfg.intra_op_num_threads
        if cfg.inter_op_num_threads:
            so.inter_op_num_threads = cfg.inter_op_num_threads
        so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if cfg.execution_mode == "parallel"
                             else ort.ExecutionMode.ORT_SEQUENTIAL)
        if not cfg.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.enable_mem_pattern = cfg.enable_mem_pattern
        so.enable_cpu_mem_arena = cfg.enable_cpu_mem_arena
        if cfg.optimized_model_path:
            so.optimized_model_filepath = cfg.optimized_model_path
        # the ONNX format (from the registry) hands the model over: its bytes, or over 2 GiB
        # the path of a temporary file with external data
        pm = getattr(ctx, "plugins", None) or mo.get_plugin_manager()
        fmt = pm.get("format", "onnx").cls()
        try:
            with fmt.runtime_source(artifact.model) as src:
                sess = ort.InferenceSession(src, so, providers=list(cfg.providers))
        except Exception as e:
            raise mo.FormatError(f"onnxruntime: cannot load {artifact.name!r}: {e}") from e
        device = "cuda" if any("CUDA" in p or "Tensorrt" in p for p in cfg.providers) else "cpu"
        return OrtRunner(artifact, sess, device)
