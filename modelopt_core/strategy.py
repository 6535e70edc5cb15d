"""Where training runs: one process, or data-parallel over the processes of a
``torch.distributed`` group, built on Lightning Fabric (``lightning-fabric``).

:class:`Strategy` owns what differs between the two: wrapping the model (DistributedDataParallel
under ``ddp``), autocast and the fp16 GradScaler (Fabric's precision plugins), backward,
gradient clipping, the optimizer step, the collectives the loop needs (mean loss, extra
tensors' gradients, buffers, one rank's result to all) and which rank writes files.

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` set, world > 1)
the first training step joins the group itself (gloo on CPU, nccl on CUDA; see
:func:`init_from_env`), so a script that builds a ``Session`` and calls ``apply`` trains
data-parallel with no distributed code of its own. Fabric and torch are imported lazily:
``import modelopt_core`` imports neither.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError

__all__ = ["Strategy", "init_from_env", "world_info", "is_main_process", "barrier", "on_main"]

log = logging.getLogger("modelopt.training")

_FABRIC_HINT = ('training needs Lightning Fabric: pip install "lightning-fabric>=2.4" '
                '(a dependency of modelopt-core; reinstall it).')


def world_info() -> tuple[int, int]:
    """``(world size, rank)`` of the initialised ``torch.distributed`` group, else ``(1, 0)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def init_from_env(device_type: str = "cpu") -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1) when
    none is initialised yet: nccl when training on CUDA (``device_type``), else gloo; destroyed
    at exit. Returns whether a group of several processes is up afterwards."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"training: WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} "
                          "are not set; launch with torchrun (which sets them all) or unset "
                          "WORLD_SIZE for one process.")
    cuda = device_type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(_destroy)
    log.info("joined the torchrun group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    return dist.get_world_size() > 1


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Whether this process writes files: rank 0 of the group (or the only process)."""
    return world_info()[1] == 0


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for without one)."""
    import torch.distributed as dist

    if world_info()[0] > 1:
        dist.barrier()


def _group_environment() -> Any:
    """The running process group as Fabric's cluster environment (torchrun's or the caller's
    own ``init_process_group``): Fabric then wraps and syncs, and never launches processes."""
    from lightning_fabric.plugins.environments import ClusterEnvironment

    class ProcessGroupEnvironment(ClusterEnvironment):
        @property
        def creates_processes_externally(self) -> bool:
            return True

        @property
        def main_address(self) -> str:
            return os.environ.get("MASTER_ADDR", "127.0.0.1")

        @property
        def main_port(self) -> int:
            return int(os.environ.get("MASTER_PORT", "0"))

        @staticmethod
        def detect() -> bool:
            return world_info()[0] > 1

        def world_size(self) -> int:
            return world_info()[0]

        def set_world_size(self, size: int) -> None:
            pass  # the group's own size is the truth

        def global_rank(self) -> int:
            return world_info()[1]

        def set_global_rank(self, rank: int) -> None:
            pass

        def local_rank(self) -> int:
            return int(os.environ.get("LOCAL_RANK", world_info()[1] % _local_world()))

        def node_rank(self) -> int:
            return world_info()[1] // _local_world()

    return ProcessGroupEnvironment()


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_info()[0]))


_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_SINGLE: dict[tuple[Any, ...], Any] = {}


@contextlib.contextmanager
def _fabric_quiet() -> Iterator[None]:
    """Fabric's INFO lines ("Using bfloat16 Automatic Mixed Precision") go to stderr through
    its own handler; while it is set up they are held back (warnings still show)."""
    logger = logging.getLogger("lightning_fabric")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _single_fabric(accel: str, devices: Any, precision: str) -> Any:
    """A one-process Fabric, kept per (accelerator, devices, precision): building one scans
    every installed package's entry points (~0.1 s), and a training step may call fit many
    times. Stateless between runs, except fp16's GradScaler: that one is never shared."""
    from lightning_fabric import Fabric

    key = (accel, devices, precision)
    if precision == "16-mixed" or key not in _SINGLE:
        with _fabric_quiet():
            fabric = Fabric(accelerator=accel, devices=list(devices) if accel == "cuda" else 1,
                            precision=precision)
        if precision == "16-mixed":
            return fabric
        _SINGLE[key] = fabric
    return _SINGLE[key]


class Strategy:
    """One training run's placement: ``kind`` is ``"single"`` (this process alone) or
    ``"ddp"`` (data-parallel over the group); :meth:`resolve` picks it from the config."""

    def __init__(self, kind: str, device: Any, precision: str = "fp32") -> None:
        try:
            from lightning_fabric import Fabric
            from lightning_fabric.strategies import DDPStrategy
        except ImportError as e:  # pragma: no cover - a base dependency
            raise ConfigError(_FABRIC_HINT) from e

        self.kind, self.device = kind, device
        accel = {"cuda": "cuda", "mps": "mps"}.get(device.type, "cpu")
        prec = _PRECISION[precision]
        self.world, self.rank = world_info() if kind == "ddp" else (1, 0)
        if kind == "ddp":
            local = _local_world()
            with _fabric_quiet():
                self.fabric = Fabric(accelerator=accel, devices=local,
                                     num_nodes=max(1, self.world // local), precision=prec,
                                     strategy=DDPStrategy(
                                         cluster_environment=_group_environment()))
                self.fabric.launch()  # joins the existing group: nothing is spawned
        else:
            devices = [device.index or 0] if accel == "cuda" else 1
            self.fabric = _single_fabric(accel, tuple(devices) if accel == "cuda" else 1, prec)

    @classmethod
    def resolve(cls, choice: str, device: Any, precision: str, warn: Any) -> Strategy:
        """``choice`` of :class:`~modelopt_core.training.TrainConfig` ``strategy``: ``auto``
        is ``ddp`` in a group of several processes (joining torchrun's), else ``single``."""
        if precision == "fp16" and device.type != "cuda":
            warn(f"fit: precision='fp16' needs CUDA; training on {device} uses bf16 autocast "
                 "instead.")
            precision = "bf16"
        if choice == "single":
            return cls("single", device, precision)
        grouped = init_from_env(device.type) or _initialised()  # torchrun's group, or the caller's
        if grouped:
            if device.type == "cuda" and device.index is None:
                import torch

                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            return cls("ddp", device, precision)
        if choice == "ddp":
            raise ConfigError("fit: strategy='ddp' needs several processes: launch the script "
                              "with torchrun --nproc-per-node N (or init_process_group first), "
                              "or use strategy='auto'.")
        return cls("single", device, precision)

    # ---- the pieces of a step ---------------------------------------------------------

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (checkpoints) and shows progress."""
        return self.rank == 0

    def setup(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        """Wrap the model (DDP broadcasts rank 0's weights) and the optimizer."""
        return self.fabric.setup(model, optimizer, move_to_device=False)

    def autocast(self) -> Any:
        return self.fabric.autocast()

    def backward(self, loss: Any) -> None:
        self.fabric.backward(loss)

    def clip(self, net: Any, opt: Any, max_norm: float) -> None:
        """Unscale (fp16) and clip the global norm of every optimised tensor."""
        self.fabric.clip_gradients(net, opt, max_norm=max_norm, error_if_nonfinite=False)

    def scaler_state(self) -> Any:
        return self.fabric.strategy.precision.state_dict() or None

    def load_scaler_state(self, state: Any) -> None:
        if state:
            self.fabric.strategy.precision.load_state_dict(state)

    # ---- collectives (no-ops in one process) -------------------------------------------

    def mean(self, value: Any) -> Any:
        """The mean of ``value`` (a tensor) over the ranks."""
        return self.fabric.all_reduce(value, reduce_op="mean") if self.world > 1 else value

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (so that all ranks stop together)."""
        if self.world == 1:
            return flag
        import torch

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.fabric.all_reduce(t, reduce_op="sum")[0] > 0)

    def sync_grads(self, tensors: list[Any]) -> None:
        """Average the gradients of tensors outside the wrapped model (adapters)."""
        if self.world > 1:
            for p in tensors:
                if p.grad is not None:
                    p.grad.copy_(self.fabric.all_reduce(p.grad, reduce_op="mean"))

    def sync_buffers(self, model: Any) -> None:
        """Average floating buffers (BN running stats) over ranks; others follow rank 0."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for b in model.buffers():
            if b.is_floating_point():
                b.copy_(self.fabric.all_reduce(b, reduce_op="mean"))
            else:
                dist.broadcast(b, src=0)

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (small plain data)."""
        return self.fabric.broadcast(obj, src=0) if self.world > 1 else obj

    def barrier(self) -> None:
        if self.world > 1:
            self.fabric.barrier()


def _initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def on_main(write: Any, what: str) -> Any:
    """Run ``write()`` on rank 0 only when processes train together (torchrun): the other
    ranks wait for it and return its result (a path: the one rank 0 wrote), or raise
    :class:`~modelopt_core.errors.ArtifactError` when it failed, so no rank hangs or goes on
    believing a file exists. Without a group of several processes: just ``write()``."""
    import sys

    if "torch.distributed" not in sys.modules or world_info()[0] == 1:
        return write()  # no group can be up without torch.distributed imported
    import torch.distributed as dist

    from .errors import ArtifactError

    box: list[Any] = [None, None]
    err: BaseException | None = None
    if world_info()[1] == 0:
        try:
            box[1] = write()
        except BaseException as e:  # shared below, then raised here unchanged
            err, box[0] = e, f"{type(e).__name__}: {str(e)[:300]}"
    dist.broadcast_object_list(box, src=0)
    if err is not None:
        raise err
    if box[0] is not None:
        raise ArtifactError(f"{what}: rank 0 (the process that writes) failed: {box[0]}; this "
                            "rank wrote nothing.")
    return box[1]
