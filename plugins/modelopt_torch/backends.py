"""Backends ``torch`` (eager) and ``torch.compile``.

The runner works on a private copy of the model (eval mode, optional channels_last and bf16
autocast), so loading never touches the artifact's module. Artifacts whose weights are in a
reduced precision carry ``props.compute_dtype``: inputs are cast to it at the
runner boundary and outputs cast back to float32.

The device is checked when the runner is loaded: a malformed string is a ``ConfigError``, a
device this machine lacks (``"cuda"`` on a CPU-only torch) a ``BackendUnavailableError``.
``num_threads``, ``cudnn_benchmark`` and ``deterministic`` are torch settings that are
process-wide: the runner sets them only while a call runs and restores the previous values
afterwards, so while a call runs they apply to every thread of the process (with several
runners in several threads, the values of the first call in are kept until the last call out
restores the process's own).

A runner shared between threads runs one call at a time: a model's ``forward`` may keep
Python state between calls (Ultralytics' Detect head caches anchors per input shape), which
concurrent calls would corrupt. For parallel torch inference load one runner per thread (what
``modelopt serve --workers`` does); each holds its own copy of the model.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Sequence
from typing import Any, Literal

import modelopt_core as mo


@mo.config
class TorchConfig:
    channels_last: bool = mo.field(False, help="convert 4-D weights/inputs to channels_last")
    autocast: Literal["none", "bfloat16", "float16"] = mo.field(
        "none", help="run under torch.autocast with this dtype")
    device: str | None = mo.field(None, help="device to run on (default: the session's)")
    num_threads: int | None = mo.field(
        None, validator=mo.positive,
        help="torch intra-op threads while a call runs (process-wide during the call; the "
             "previous count is restored after it; default: unchanged)")
    cudnn_benchmark: bool | None = mo.field(
        None, help="CUDA: let cuDNN time its convolution algorithms for each new input shape "
                   "and keep the fastest (fixed shapes: faster after the first call); "
                   "per call, restored after it; default: unchanged")
    deterministic: bool = mo.field(
        False, help="torch.use_deterministic_algorithms while a call runs (bit-reproducible "
                    "results; some CUDA kernels are slower or refuse); restored after it")


#: guards the process-wide settings: how many calls are inside a _Settings, and the values
#: the first of them found (restored when the last one leaves)
_SETTINGS_LOCK = threading.Lock()
_SETTINGS_SHARED: dict[str, Any] = {"inside": 0, "saved": None}


class _Settings:
    """Reusable context manager for torch's process-wide settings: inside, the intra-op thread
    count, ``cudnn.benchmark`` and deterministic algorithms are as asked (None: untouched);
    the previous values are restored on exit, also when the call raises. Safe across threads:
    the first call in saves the process's values, the last call out restores them (calls from
    several threads at once would otherwise save each other's values and leave them set)."""

    def __init__(self, num_threads: int | None = None, cudnn_benchmark: bool | None = None,
                 deterministic: bool | None = None) -> None:
        self.wanted = {"threads": num_threads, "benchmark": cudnn_benchmark,
                       "deterministic": deterministic}

    @staticmethod
    def _get() -> dict[str, Any]:
        import torch

        return {"threads": torch.get_num_threads(),
                "benchmark": torch.backends.cudnn.benchmark,
                "deterministic": torch.are_deterministic_algorithms_enabled()}

    @staticmethod
    def _set(values: dict[str, Any]) -> None:
        import torch

        now = _Settings._get()
        if values.get("threads") is not None and values["threads"] != now["threads"]:
            torch.set_num_threads(values["threads"])
        if values.get("benchmark") is not None and values["benchmark"] != now["benchmark"]:
            torch.backends.cudnn.benchmark = values["benchmark"]
        if values.get("deterministic") is not None and \
                values["deterministic"] != now["deterministic"]:
            torch.use_deterministic_algorithms(values["deterministic"])

    def __enter__(self) -> None:
        with _SETTINGS_LOCK:
            if not _SETTINGS_SHARED["inside"]:
                _SETTINGS_SHARED["saved"] = self._get()
                self._set(self.wanted)
            _SETTINGS_SHARED["inside"] += 1

    def __exit__(self, *exc: object) -> None:
        with _SETTINGS_LOCK:
            _SETTINGS_SHARED["inside"] -= 1
            if not _SETTINGS_SHARED["inside"]:
                self._set(_SETTINGS_SHARED["saved"])


def check_device(device: str, who: str) -> str:
    """Validate a torch device string for backend ``who`` and return it.

    :class:`ConfigError` for a malformed string (``"banana"``, ``"cuda:x"``) or the ``meta``
    device (it holds no data); :class:`BackendUnavailableError` for a device this machine or
    this torch build lacks (``"cuda"`` without CUDA, an index past the device count)."""
    import torch

    if not isinstance(device, str | torch.device):
        raise mo.ConfigError(f"{who}: device must be a string like 'cpu' or 'cuda:0', not "
                             f"{type(device).__name__}.")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise mo.ConfigError(
            f"{who}: device {device!r} is not a torch device string ({str(e).splitlines()[0]}); "
            "use 'cpu', 'cuda' or 'cuda:<index>'.") from None
    if dev.type == "meta":
        raise mo.ConfigError(f"{who}: device 'meta' holds no data and cannot run a model; use "
                             "'cpu' or 'cuda'.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"this torch build ({torch.__version__}) has no CUDA"
                   if torch.version.cuda is None else "torch.cuda.is_available() is False")
            raise mo.BackendUnavailableError(
                f"{who}: device {device!r} is unavailable: torch was not compiled with CUDA / "
                f"no CUDA device ({why}). Use device='cpu', or install a CUDA build of torch "
                "on a machine with an NVIDIA GPU.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise mo.BackendUnavailableError(
                f"{who}: device {device!r} is unavailable: this machine has {count} CUDA "
                f"device(s) (cuda:0..cuda:{count - 1}).")
        return str(device)
    if dev.type != "cpu":
        try:  # mps, xpu, ...: torch knows the name but this build or machine may lack it
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as e:
            raise mo.BackendUnavailableError(
                f"{who}: device {device!r} is unavailable here "
                f"({str(e).splitlines()[0][:160]}). "
                "Use device='cpu'.") from None
    return str(device)


class TorchRunner(mo.Runner):
    """Runs a private eval-mode copy of a torch model."""

    #: entered around every call (a :class:`_Settings` when a process-wide option is set)
    _threads: Any = contextlib.nullcontext()

    def __init__(self, artifact: mo.ModelArtifact, module: Any, device: str,
                 channels_last: bool, autocast: str,
                 compile_options: dict[str, Any] | None = None) -> None:
        super().__init__(artifact, device)
        self.module = module
        self.channels_last = channels_last
        self.autocast = autocast
        self.compute_dtype = artifact.props.compute_dtype
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
        with self._threads, torch.inference_mode(), ac, self._patch:
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
    thread_option = "num_threads"
    releases_gil = True  # torch's kernels run without the GIL
    reference_for = ("torch",)

    def _prepare(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> tuple[Any, str]:
        """A private eval-mode copy of the model on the checked device (no global state is
        changed: ``num_threads`` applies per call, see :meth:`_scope`)."""
        import torch

        cfg = self.config
        device = check_device(cfg.device if cfg.device is not None else ctx.device,
                              f"backend {self.name!r}")
        module = copy.deepcopy(artifact.model).eval().to(device)
        if cfg.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module, device

    def _scope(self, runner: TorchRunner) -> TorchRunner:
        """Make ``runner`` apply the process-wide options (threads, cuDNN benchmark,
        deterministic algorithms) only around each call (restored afterwards)."""
        cfg = self.config
        if cfg.num_threads or cfg.cudnn_benchmark is not None or cfg.deterministic:
            runner._threads = _Settings(cfg.num_threads, cfg.cudnn_benchmark,
                                        True if cfg.deterministic else None)
        return runner

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        """A :class:`TorchRunner` on a private copy of the artifact's module."""
        module, device = self._prepare(artifact, ctx)
        return self._scope(TorchRunner(artifact, module, device, self.config.channels_last,
                                       self.config.autocast))


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
    reference_for = ()  # eager torch is the reference for torch artifacts

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        """A :class:`TorchRunner` on a compiled private copy (compiled on the first call)."""
        import torch

        module, device = self._prepare(artifact, ctx)
        cfg = self.config
        compiled = torch.compile(module, mode=cfg.mode, backend=cfg.compiler,
                                 dynamic=cfg.dynamic, fullgraph=cfg.fullgraph)
        options = {"freezing": cfg.freezing} if cfg.compiler == "inductor" else None
        return self._scope(TorchRunner(artifact, compiled, device, cfg.channels_last,
                                       cfg.autocast, options))
