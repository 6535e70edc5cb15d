"""The :class:`Context`: what a component may use from the session (data, device,
progress, logging, exporting and loading on other runtimes)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from . import _registry
from .artifact import ModelArtifact, TensorSpec
from .errors import BackendUnavailableError, DataError

if TYPE_CHECKING:
    from .plugins import PluginManager
    from .runner import Runner

__all__ = ["Context"]


@attrs.define(eq=False)
class Context:
    """What a component may use from the session: data, device, progress, logging."""

    example_inputs: tuple[Any, ...] = ()
    calibration_data: Iterable[Any] | None = None
    train_data: Iterable[Any] | None = None
    eval_fn: Callable[[Any], float] | None = None
    #: the task's training loss ``task_loss(outputs, targets) -> scalar tensor`` (outputs as
    #: the model returns them); None: cross-entropy of output 0 against class labels
    task_loss: Callable[[Any, Any], Any] | None = None
    device: str = "cpu"
    original: ModelArtifact | None = None
    history: Sequence[ModelArtifact] = ()
    log: logging.Logger = attrs.field(factory=lambda: logging.getLogger("modelopt"))
    show_progress: bool = True
    runner_factory: Callable[..., Runner] | None = None
    #: the session's plugin manager (formats for saving, components by name); None: global
    plugins: PluginManager | None = None
    notes: list[str] = attrs.field(factory=list)
    _train_prepared: Any = attrs.field(default=None, init=False, repr=False)

    def warn(self, message: str) -> None:
        """Record a warning: logged, and kept in the lineage step of the running component."""
        self.log.warning(message)
        self.notes.append(message)

    def status(self, message: str) -> None:
        """Say what a long stage is doing now (stderr, when progress display is on; the log
        at INFO always), so a step that works for seconds is never silent."""
        self.log.info(message)
        if self.show_progress:
            import sys

            print(f"  {message}", file=sys.stderr, flush=True)

    def progress(self, iterable: Iterable[Any], total: int | None = None,
                 desc: str = "") -> Iterator[Any]:
        """Wrap ``iterable`` in a progress bar (tqdm) when progress display is on."""
        if not self.show_progress:
            yield from iterable
            return
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)

    def calibration_batches(self, who: str, limit: int | None = None) -> list[tuple[Any, ...]]:
        """The calibration data as a list of input tuples (at most ``limit``), each checked
        against the model's input specs (see :mod:`modelopt_core.data`); :class:`DataError`
        if missing, empty or malformed."""
        specs = self.original.inputs if self.original is not None else ()
        return _batches(self.calibration_data, "calibration_data", who, limit, inputs_only=True,
                        specs=specs, warn=self.warn)

    def training_batches(self, who: str) -> Iterable[Any]:
        """The training data, checked up front as far as is cheap (see
        :func:`modelopt_core.data.prepare_train_data`: lists item by item, a one-shot iterator
        by its first item; DataLoaders are checked as :func:`~modelopt_core.training.fit` draws
        them); :class:`DataError` if missing, malformed or a used-up one-shot iterator."""
        from .data import prepare_train_data, warn_once

        if self.train_data is None:
            raise DataError(f"{who}: needs train_data (an iterable of (inputs, targets)); pass "
                            "Session(..., train_data=loader).")
        if self._train_prepared is None:  # once per step: a one-shot iterator is read once
            specs = self.original.inputs if self.original is not None else ()
            self._train_prepared = prepare_train_data(self.train_data, specs, who,
                                                      warn_once(self.warn))
        return self._train_prepared

    def export(self, artifact: ModelArtifact, target: str, **config: Any) -> ModelArtifact:
        """``artifact`` exported to format ``target`` through the session's exporters (for
        components that measure on another runtime); ``config`` goes to the last exporter of
        the chain (:func:`~modelopt_core.plan.export_chain`, the one chain builder; every
        link checked and available before any runs, each held to the component contract).
        The session's history is not touched."""
        from .plan import export_chain
        from .steps import run_checked

        pm = self.plugins or _registry.default_plugins()
        insts = export_chain(pm, artifact.format, target, config)  # all checked first
        for inst in insts:
            type(inst).ensure_available()
        for inst in insts:
            art = artifact
            artifact = run_checked(inst, art, lambda inst=inst, art=art: inst.export(art, self))
        return artifact

    def runner(self, artifact: ModelArtifact, backend: str = "torch", **options: Any) -> Runner:
        """Load ``artifact`` on a registered backend (for components that measure)."""
        if self.runner_factory is None:
            raise BackendUnavailableError("this context has no backend access")
        return self.runner_factory(artifact, backend, **options)


def _batches(data: Any, field_name: str, who: str, limit: int | None, inputs_only: bool,
             specs: Sequence[TensorSpec] = (),
             warn: Callable[[str], None] | None = None) -> list[tuple[Any, ...]]:
    """Up to ``limit`` batches of model inputs from ``data``, each validated against ``specs``
    (numpy items converted, ``warn`` told once); :class:`DataError` naming ``field_name`` and
    the batch index otherwise."""
    from .data import check_batch, check_iterable, is_one_shot, split_targets, warn_once

    if data is None:
        raise DataError(f"{who}: needs {field_name}; pass Session(..., {field_name}=...) with an "
                        "iterable of model inputs.")
    check_iterable(data, field_name, who, specs)
    warn = warn_once(warn)
    out = []
    for item in data:
        if inputs_only:
            item, split = split_targets(item, specs)
            if split and warn is not None:  # said once (warn_once)
                warn(f"{who}: {field_name} yields (inputs, targets) pairs, as a training "
                     "loader does; the targets are dropped")
        out.append(check_batch(item, specs, field_name, len(out), who, warn))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        once = (" It is a one-shot iterator, already used up by an earlier step: pass a list "
                "or a DataLoader." if is_one_shot(data) else "")
        raise DataError(f"{who}: {field_name} is empty; give at least one batch of inputs."
                        + once)
    return out
