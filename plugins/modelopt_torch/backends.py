"""Backends ``torch`` (eager) and ``torch.compile``.

The runner works on a private copy of the model (eval mode, optional channels_last and bf16
autocast), so loading never touches the artifact's module. Artifacts whose weights are in a
reduced precision carry ``metadata["torch_compute_dtype"]``: inputs are cast to it at the
runner boundary and outputs cast back to float32.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any, Literal

import modelopt_core as mo


@mo.config
class TorchConfig:
    channels_last: bool = mo.field(False, help="convert 4-D weights/inputs to channels_last")
    autocast: Literal["none", "bfloat16", "float16"] = mo.field(
        "none", help="run under torch.autocast with this dtype")
    device: str | None = mo.field(None, help="device to run on (default: the session's)")
    num_threads: int | None = mo.field(None, validator=mo.positive,
                                       help="torch intra-op threads (default: unchanged)")


class TorchRunner(mo.Runner):
    """Runs a private eval-mode copy of a torch model."""

    def __init__(self, artifact: mo.ModelArtifact, module: Any, device: str,
                 channels_last: bool, autocast: str,
                 compile_options: dict[str, Any] | None = None) -> None:
        super().__init__(artifact, device)
        self.module = module
        self.channels_last = channels_last
        self.autocast = autocast
        self.compute_dtype = artifact.metadata.get("torch_compute_dtype")
        # torch.compile compiles on the first call (and on recompiles): Inductor options must
        # be in force then; one reusable patch object keeps the per-call cost at a few us
        self._patch: Any = contextlib.nullcontext()
        if compile_options:
            import torch._inductor.config as inductor_config

            self._patch = inductor_config.patch(compile_options)

    def _run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        import torch

        xs = []
        for x in inputs:
            x = x.to(self.device)
            if self.compute_dtype and x.is_floating_point():
                x = x.to(getattr(torch, self.compute_dtype))
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            xs.append(x)
        ac = (torch.autocast(device_type=torch.device(self.device).type,
                             dtype=getattr(torch, self.autocast))
              if self.autocast != "none" else contextlib.nullcontext())
        with torch.inference_mode(), ac, self._patch:
            out = self.module(*xs)
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        return [o.float() if o.is_floating_point() else o for o in outs]

    def synchronize(self) -> None:
        import torch

        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()

    def _release(self) -> None:
        self.module = None


class TorchBackend(mo.Backend):
    """PyTorch eager execution (channels_last and bf16 autocast options)."""

    name = "torch"
    accepts = ("torch",)
    Config = TorchConfig

    def _prepare(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> tuple[Any, str]:
        import torch

        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        device = cfg.device or ctx.device
        module = copy.deepcopy(artifact.model).eval().to(device)
        if cfg.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module, device

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        module, device = self._prepare(artifact, ctx)
        return TorchRunner(artifact, module, device, self.config.channels_last,
                           self.config.autocast)


@mo.config
class CompileConfig(TorchConfig):
    mode: Literal["default", "reduce-overhead", "max-autotune",
                  "max-autotune-no-cudagraphs"] = mo.field("default", help="torch.compile mode")
    compiler: str = mo.field("inductor", help="torch.compile backend")
    dynamic: bool | None = mo.field(None, help="dynamic shapes (None: let torch decide)")
    fullgraph: bool = mo.field(False, help="fail on graph breaks instead of falling back")
    freezing: bool = mo.field(
        True, help="Inductor freezing: weights become constants, folded and pre-packed for "
                   "oneDNN/cuBLAS at compile time (inference only: the runner owns a private "
                   "copy, so the artifact's module is never frozen)")


class TorchCompileBackend(TorchBackend):
    """torch.compile (Inductor by default); compiles lazily on the first call."""

    name = "torch.compile"
    Config = CompileConfig

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        import torch

        module, device = self._prepare(artifact, ctx)
        cfg = self.config
        compiled = torch.compile(module, mode=cfg.mode, backend=cfg.compiler,
                                 dynamic=cfg.dynamic, fullgraph=cfg.fullgraph)
        options = {"freezing": cfg.freezing} if cfg.compiler == "inductor" else None
        return TorchRunner(artifact, compiled, device, cfg.channels_last, cfg.autocast, options)
