"""Checkpoints of the training loop: safetensors for tensors, JSON for scalars (never pickle).

A :class:`Checkpointer` writes ``<folder>/last`` after every epoch (rank 0 only: the caller
decides) and swaps it in atomically, so a process killed mid-write leaves the previous
checkpoint whole; resuming restores the model, the extra trained tensors (adapters), the
optimizer, the mixed-precision scaler, any extra training state (an EMA teacher) and the
loop's counters, so a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .config import config_to_data
from .errors import TrainingError

__all__ = ["Checkpointer", "load_checkpoint_weights"]

log = logging.getLogger("modelopt.training")

#: config keys that may change between an interrupted run and its resume without a warning
_SKIP_CFG = ("resume", "checkpoint_dir", "epochs", "steps", "device", "strategy")
#: the loop's counters a checkpoint carries
STATE_KEYS = ("epoch", "step", "history", "best", "bad")


class Checkpointer:
    """Save and load ``<checkpoint_dir>/last`` for one training run (``cfg``: its
    :class:`~modelopt_core.training.TrainConfig`; ``warn``: where a changed config is said)."""

    def __init__(self, checkpoint_dir: str | os.PathLike[str], cfg: Any, warn: Any = None) -> None:
        self.folder = Path(checkpoint_dir) / "last"
        self.cfg = cfg
        self.warn = warn or log.warning

    def exists(self) -> bool:
        """Whether a complete checkpoint is there to resume from."""
        return (self.folder / "state.json").exists()

    def _config(self) -> dict[str, Any]:
        return {k: v for k, v in config_to_data(self.cfg).items() if k not in _SKIP_CFG}

    def save(self, model: Any, extra: list[Any], opt: Any, scaler_state: Any,
             state: dict[str, Any], extra_state: Any = None) -> None:
        """Write model/optimizer tensors (safetensors) and scalars (JSON); swap in atomically."""
        from safetensors.torch import save_file

        folder = self.folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".last.tmp-", dir=folder.parent))
        weights = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        weights.update({f"__extra__.{i}": p.detach().cpu().clone() for i, p in enumerate(extra)})
        if extra_state is not None:
            weights.update({f"__state__.{k}": v.detach().cpu().clone().contiguous()
                            for k, v in extra_state.state_dict().items()})
        save_file(weights, str(tmp / "model.safetensors"))
        sd = opt.state_dict()
        tensors, scalars = {}, {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if hasattr(v, "detach"):
                    tensors[f"{idx}.{k}"] = v.detach().cpu().clone().contiguous()
                else:
                    scalars[f"{idx}.{k}"] = v
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta = {**{k: state[k] for k in STATE_KEYS}, "opt_scalars": scalars,
                "param_groups": sd["param_groups"], "scaler": scaler_state or None,
                "config": self._config()}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, model: Any, extra: list[Any], opt: Any,
             extra_state: Any = None) -> tuple[dict[str, Any], Any]:
        """Restore everything :meth:`save` wrote; returns ``(loop counters, scaler state)``."""
        import torch
        from safetensors.torch import load_file

        folder = self.folder
        meta = json.loads((folder / "state.json").read_text())
        now = self._config()
        if meta.get("config") != now:
            diff = sorted(k for k in now if meta.get("config", {}).get(k) != now[k])
            self.warn(f"fit: resuming {folder} with a different config ({', '.join(diff)} "
                      "changed).")
        weights = load_file(str(folder / "model.safetensors"))
        ex = [weights.pop(f"__extra__.{i}", None) for i in range(len(extra))]
        saved_state = {k[len("__state__."):]: weights.pop(k) for k in list(weights)
                       if k.startswith("__state__.")}
        if extra_state is not None:
            if not saved_state:
                raise TrainingError(f"fit: {folder} holds no extra training state (e.g. an EMA "
                                    "teacher) but this run keeps one; resume from a checkpoint "
                                    "written by the same kind of run, or set resume=False.")
            extra_state.load_state_dict(saved_state)
        model.load_state_dict(weights)
        with torch.no_grad():
            for p, v in zip(extra, ex):
                if v is not None:
                    p.copy_(v)
        opt.load_state_dict(_optimizer_state(folder, meta))
        return {k: meta[k] for k in STATE_KEYS}, meta.get("scaler")


def _optimizer_state(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    per: dict[int, dict[str, Any]] = {}
    for key, v in load_file(str(folder / "optimizer.safetensors")).items():
        idx, k = key.split(".", 1)
        per.setdefault(int(idx), {})[k] = v
    for key, v in meta["opt_scalars"].items():
        idx, k = key.split(".", 1)
        per.setdefault(int(idx), {})[k] = v
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v
               for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": per, "param_groups": groups}


def load_checkpoint_weights(checkpoint_dir: str | os.PathLike[str], model: Any) -> Any:
    """Load the model weights of ``checkpoint_dir/last`` into ``model`` (safetensors only)."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(checkpoint_dir) / "last" / "model.safetensors"))
    model.load_state_dict({k: v for k, v in weights.items()
                           if not k.startswith(("__extra__.", "__state__."))})
    return model
