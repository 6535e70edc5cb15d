"""Backend ``torch.pipeline``: a torch model split into stages with
``torch.distributed.pipelining`` (``pipeline()`` + ``SplitPoint`` + ``ScheduleGPipe``), one
process per stage in a gloo group on this machine, for models too big for one process or
device. Outputs equal the unsplit model's.

The split is before the modules named in ``split_points`` (dotted names, as
``model.named_modules()`` gives them); without them, before top-level children chosen so the
stages hold about the same number of parameters. Each batch is cut into ``microbatches``
equal parts along dim 0 (the batch must divide evenly) that flow through the stages in GPipe
order; with more than one, the stages overlap.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import modelopt_core as mo


@mo.config
class PipelineConfig:
    stages: int = mo.field(2, validator=mo.positive,
                           help="pipeline stages (one process each)")
    split_points: tuple[str, ...] | None = mo.field(
        None, help="module names to split before, stages-1 of them (default: top-level "
                   "children balanced by parameter count)")
    microbatches: int = mo.field(
        1, validator=mo.positive,
        help="microbatches per batch (the batch must be a multiple; >= stages lets the "
             "stages overlap)")
    num_threads: int | None = mo.field(
        None, validator=mo.positive,
        help="torch threads in each stage process (default: CPU cores / stages)")


def balanced_split(model: Any, stages: int) -> tuple[str, ...]:
    """Names of ``stages - 1`` top-level children to split before, so that each stage's
    parameter count is as close as possible to an equal share (every stage gets at least one
    child). :class:`ConfigError` naming ``stages`` when there are too few children."""
    children = list(model.named_children())
    if stages > len(children):
        raise mo.ConfigError(
            f"backend 'torch.pipeline': config key 'stages' is {stages}, but the model has "
            f"only {len(children)} top-level children to split between "
            f"({[n for n, _ in children]}); use fewer stages or give 'split_points'.")
    sizes = [sum(p.numel() for p in m.parameters()) for _, m in children]
    total, before = sum(sizes), [0]
    for s in sizes:
        before.append(before[-1] + s)  # before[j]: parameters of children[:j]
    cuts, prev = [], 0
    for k in range(1, stages):
        target = k * total / stages
        lo, hi = prev + 1, len(children) - (stages - k)
        j = min(range(lo, hi + 1), key=lambda i: abs(before[i] - target))
        cuts.append(j)
        prev = j
    return tuple(children[j][0] for j in cuts)


def check_split_points(model: Any, names: tuple[str, ...], stages: int) -> tuple[str, ...]:
    """``names`` when each is a submodule of ``model`` and there are ``stages - 1`` of them,
    else a :class:`ConfigError` naming ``split_points``."""
    names = tuple(names)
    known = {n for n, _ in model.named_modules() if n}
    unknown = [n for n in names if n not in known]
    if unknown:
        tops = [n for n, _ in model.named_children()]
        raise mo.ConfigError(
            f"backend 'torch.pipeline': config key 'split_points' names unknown module(s) "
            f"{unknown}; use names from model.named_modules() (top level: {tops}).")
    if len(names) != stages - 1 or len(set(names)) != len(names):
        raise mo.ConfigError(
            f"backend 'torch.pipeline': config key 'split_points' needs {stages - 1} distinct "
            f"name(s) for {stages} stages, got {list(names)}.")
    return names


def _torch_dir() -> Path | None:
    """Where torch is installed, found without importing it (plugin discovery stays light)."""
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


class PipelineBackend(mo.Backend):
    """A torch model split into pipeline stages, one process each
    (torch.distributed.pipelining, gloo): for models that do not fit one process/device."""

    name = "torch.pipeline"
    accepts = ("torch",)
    Config = PipelineConfig
    thread_option = "num_threads"
    releases_gil = True  # the work happens in the stage processes
    requires = ("torch",)
    install_hint = "pip install torch (a build with torch.distributed and gloo)"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """torch with ``torch.distributed.pipelining``; gloo too, checked here when torch is
        already imported (else at load: asking must not import torch)."""
        ok, why = super().availability()
        if not ok:
            return ok, why
        root = _torch_dir()
        if root is None or not (root / "distributed" / "pipelining" / "__init__.py").exists():
            return False, "this torch has no torch.distributed.pipelining (torch >= 2.4 has it)."
        if "torch" in sys.modules:
            return _distributed_availability()
        return True, ""

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        """Start the stage processes (each holds the model; it is traced and split per input
        shape on first use)."""
        from .runner import PipelineRunner

        ok, why = _distributed_availability()
        if not ok:
            raise mo.BackendUnavailableError(f"backend {self.name!r} unavailable: {why}")
        cfg = self.config
        if str(ctx.device or "cpu").split(":")[0] != "cpu":
            raise mo.BackendUnavailableError(
                f"backend {self.name!r} runs its stages on CPU processes (gloo) only, not on "
                f"{ctx.device!r}.")
        model = artifact.model
        points = (check_split_points(model, cfg.split_points, cfg.stages)
                  if cfg.split_points is not None else balanced_split(model, cfg.stages))
        threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // cfg.stages)
        # the stage processes get a private eval-mode copy (never the artifact's module)
        private = copy.deepcopy(model).eval()
        return PipelineRunner(artifact, private, stages=cfg.stages, split_points=points,
                              microbatches=cfg.microbatches, threads=threads)


def _distributed_availability() -> tuple[bool, str]:
    import torch.distributed as dist

    if not dist.is_available():
        return False, "this torch build has no torch.distributed."
    if not dist.is_gloo_available():
        return False, "this torch build has no gloo backend for torch.distributed."
    return True, ""
