"""Session: the driver a user holds. Applies optimizers, exports, loads runners, compares.

``Session.original`` wraps the user's model and is never mutated; every step appends a new,
immutable :class:`ModelArtifact` to ``Session.history``; ``Session.current`` is the newest.
A step that fails raises and leaves the history as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .artifact import ModelArtifact
from .gate import AccuracyGate, recover
from .errors import (AccuracyBudgetError, DataError, FormatError, InputSpecError, ModeloptError,
                     StepError)
from .interfaces import Component, Context, Runner, timed
from .original import first_artifact
from .plugins import PluginManager, component_origin, get_plugin_manager
from .report import Report

__all__ = ["Session"]

log = logging.getLogger("modelopt")

DEFAULT_PROFILERS = ("latency", "throughput", "size", "accuracy")


class Session:
    """Drive a model through optimization steps and measure every result.

    Args:
        model: a trained ``torch.nn.Module`` (never mutated) or a :class:`ModelArtifact`.
        example_inputs: a tuple of example input tensors (fixes names, ranks and dtypes).
        calibration_data: iterable of model inputs, for calibration (static quantization...).
        train_data: iterable of ``(inputs, targets)``, for steps that train.
        eval_fn: ``callable(runner) -> float``, higher is better (accuracy, mAP...).
        input_names: names for the inputs (default ``input``, ``input_1``...).
        device: ``"cpu"`` or ``"cuda"`` for training/calibration work.
        plugins: a :class:`PluginManager` (default: the process-wide one).
        progress: show progress bars on long steps.
        dynamic_batch: treat the first input dim as a symbolic batch dimension.
        max_accuracy_drop: with ``eval_fn``, the accuracy gate: after every step the new
            artifact is evaluated and a drop of more than this many points (vs the original)
            rejects the step (see :mod:`modelopt_core.gate`).
            Without ``eval_fn``, the gate measures agreement with the float model on a
            quarter of the calibration batches (at least one), held back from calibration:
            top-1 agreement for a classifier, else cosine similarity (``0.1`` = at least 90%
            agreement). See :mod:`modelopt_core.gate`.
        on_budget: ``"raise"`` (default: :class:`AccuracyBudgetError`, the step kept in the
            history marked rejected) or ``"warn"`` (the step kept, the drop noted).
        recover: when an optimizer's result misses the accuracy budget, try the optimizer's
            recoveries (better calibration, layers in float, accuracy control...) cheapest
            first and keep the first within the budget (default True).
        dynamic_axes: more symbolic dims per input, ``{"input_ids": {1: "sequence"}}`` or
            ``{"input": {2: "height", 3: "width"}}``: carried into ONNX export and input checks.
        outputs: the outputs to deploy, when the model returns more than you use: indices
            into its flat outputs or their names (``["output_0"]`` keeps a detector's decoded
            boxes and drops the raw feature maps it also returns). Every artifact and runner
            then has just these; training steps still see the model's whole training-mode
            output. Default: all.
        step_cache: a folder (or a :class:`~modelopt_core.step_cache.StepCache`): a step
            computed before on the same input, config, component version and data is loaded
            from it instead of recomputed (see :mod:`modelopt_core.step_cache`).

    ``example_inputs`` may be a dict of named tensors for a model called with keyword inputs
    (Hugging Face style, ``model(**inputs)``); the model may return a tensor, a tuple, a dict or
    a ``ModelOutput``. Runners on every backend take the inputs the same way (positionally in
    the dict's order, by keyword, or as one dict) and return the model's own structure. Such a
    model is held as a :class:`~modelopt_core.io.StructuredModule` view (``.module`` is your
    model, shared, never changed) so that every component sees positional, flat tensors.
    """

    def __init__(self, model: Any, example_inputs: Sequence[Any] | Any, *,
                 calibration_data: Iterable[Any] | None = None,
                 train_data: Iterable[Any] | None = None,
                 eval_fn: Callable[[Runner], float] | None = None,
                 task_loss: Callable[[Any, Any], Any] | None = None,
                 input_names: Sequence[str] | None = None, device: str = "cpu",
                 plugins: PluginManager | None = None, progress: bool = True,
                 dynamic_batch: bool = True,
                 dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
                 max_accuracy_drop: float | None = None, on_budget: str = "raise",
                 recover: bool = True, outputs: Sequence[int | str] | None = None,
                 step_cache: Any = None) -> None:
        import torch

        keyword = isinstance(example_inputs, Mapping)
        if keyword:
            if input_names is not None:
                raise InputSpecError("Session: example_inputs is a dict, whose keys name the "
                                     "inputs; drop input_names.")
            input_names = [str(k) for k in example_inputs]
            example_inputs = tuple(example_inputs.values())
        elif not isinstance(example_inputs, (tuple, list)):
            example_inputs = (example_inputs,)
        example_inputs = tuple(example_inputs)
        if not example_inputs or not all(isinstance(x, torch.Tensor) for x in example_inputs):
            raise InputSpecError("Session: example_inputs must be a non-empty tuple (or dict) "
                                 "of torch tensors, e.g. (torch.randn(1, 3, 224, 224),).")
        if eval_fn is not None and not callable(eval_fn):
            raise DataError("Session: eval_fn must be callable(runner) -> float.")
        if task_loss is not None and not callable(task_loss):
            raise DataError("Session: task_loss must be callable(outputs, targets) -> scalar "
                            "tensor (the loss training steps minimize for your task).")
        self.pm = plugins or get_plugin_manager()
        self.example_inputs = example_inputs
        self.calibration_data = calibration_data
        self.train_data = train_data
        self.eval_fn = eval_fn
        self.task_loss = task_loss
        self.device = device
        self.progress = progress
        self.recover = bool(recover)
        self.step_cache = _step_cache(step_cache)
        self.holdout_batches: list[tuple[Any, ...]] = []
        self.gate: AccuracyGate | None = None
        if max_accuracy_drop is not None:
            if eval_fn is None and calibration_data is None:
                raise DataError("Session: max_accuracy_drop needs eval_fn (callable(runner) -> "
                                "float, higher is better) to measure the drop, or "
                                "calibration_data, part of which is held back to measure "
                                "agreement with the float model.")
            self.gate = AccuracyGate(max_accuracy_drop, on_budget)
        if isinstance(model, ModelArtifact):
            self._history = [model]
            self._hold_back()
            return
        if not isinstance(model, torch.nn.Module):
            raise FormatError(f"Session: model must be a torch.nn.Module or ModelArtifact, got "
                              f"{type(model).__name__}.")
        self._history = [first_artifact(model, example_inputs, input_names, keyword,
                                        dynamic_batch, dynamic_axes, outputs)]
        self._hold_back()

    def _hold_back(self) -> None:
        """With an accuracy gate and no eval_fn: hold back the last quarter of the
        calibration batches (at least one) to measure agreement with the float model."""
        if self.gate is None or self.eval_fn is not None:
            return
        from .gate import Agreement, _backend_for

        who = "Session(max_accuracy_drop, no eval_fn)"
        batches = self.context().calibration_batches(who)
        if len(batches) < 2:
            raise DataError(f"{who}: the gate holds back a quarter of calibration_data (at "
                            "least one batch) to measure agreement with the float model, "
                            f"and {len(batches)} batch was given: pass at least 2 batches "
                            "(better 8 or more), or an eval_fn.")
        k = max(1, len(batches) // 4)
        self.holdout_batches = batches[-k:]
        self.calibration_data = batches[:-k]
        original = self.original
        self.gate.eval_fn = Agreement(
            self.holdout_batches,
            lambda: self._make_runner(original, _backend_for(self, original)))
        self.gate.metric = "agreement with the float model"

    # ---- state ---------------------------------------------------------------------------

    @property
    def original(self) -> ModelArtifact:
        """The user's model as the first artifact (never mutated)."""
        return self._history[0]

    @property
    def current(self) -> ModelArtifact:
        """The newest artifact."""
        return self._history[-1]

    @property
    def history(self) -> tuple[ModelArtifact, ...]:
        """Every artifact, oldest first."""
        return tuple(self._history)

    def context(self) -> Context:
        """A fresh :class:`Context` for a component run."""
        return Context(example_inputs=self.example_inputs,
                       calibration_data=self.calibration_data, train_data=self.train_data,
                       eval_fn=self.eval_fn, task_loss=self.task_loss, device=self.device, original=self.original,
                       history=self.history, log=log, show_progress=self.progress,
                       runner_factory=self._make_runner, plugins=self.pm)

    # ---- steps ---------------------------------------------------------------------------

    def apply(self, name: str, **config: Any) -> ModelArtifact:
        """Apply optimizer ``name`` with typed config kwargs to the current artifact."""
        info = self.pm.get("optimizer", name)
        cls = info.cls
        art = self.current
        if art.format not in cls.accepts:
            hint = (f" Run s.export({cls.accepts[0]!r}) first." if cls.accepts else "")
            raise FormatError(f"optimizer {name!r} accepts {list(cls.accepts)} artifacts, but the "
                              f"current artifact ({art.name}) is {art.format!r}.{hint}")
        inst = cls(**config)
        cls.ensure_available()
        for need in cls.needs:
            if getattr(self, need, None) is None:
                raise DataError(f"optimizer {name!r} needs Session({need}=...); none was given.")
        out = self._run(inst, art, lambda ctx: inst.apply(art, ctx), raise_budget=False)
        g = out.metadata.get("accuracy_gate") or {}
        if g and not g.get("met", True) and self.recover:
            out = self._recover(cls, inst, config, art)
        if self.gate is not None:
            self.gate.raise_for(out)
        return out

    def _recover(self, cls: Any, inst: Component, config: Mapping[str, Any],
                 art: ModelArtifact) -> ModelArtifact:
        """The newest artifact missed the accuracy budget: see :func:`.gate.recover`."""
        return recover(self, cls, inst, config, art)

    def export(self, target: str = "onnx", **config: Any) -> ModelArtifact:
        """Export the current artifact to format ``target`` through the registered exporters.

        ``config`` goes to the last exporter of the chain.
        """
        from .plan import export_chain

        # every link's config and availability is checked before any runs
        insts = export_chain(self.pm, self.current.format, target, config)
        if not insts:
            raise FormatError(f"export: the current artifact is already {target!r}.")
        for inst in insts:
            type(inst).ensure_available()
        before = len(self._history)
        try:
            for inst in insts:
                art = self.current
                self._run(inst, art, lambda ctx, inst=inst, art=art: inst.export(art, ctx))
        except AccuracyBudgetError:
            raise  # the rejected link stays in the history for inspection
        except BaseException:
            del self._history[before:]  # a failed chain leaves the history as it was
            raise
        return self.current

    def _run(self, inst: Component, art: ModelArtifact,
             fn: Callable[[Context], ModelArtifact], raise_budget: bool = True,
             eval_fn: Callable[[Any], float] | None = None) -> ModelArtifact:
        if (art.metadata.get("accuracy_gate") or {}).get("rejected"):
            raise AccuracyBudgetError(
                f"{inst.kind} {inst.name!r}: the current artifact ({art.name}) was rejected by "
                "the accuracy gate; call session.discard() first, then try another step.")
        from .steps import check_output

        ctx = self.context()
        if eval_fn is not None and ctx.eval_fn is None:  # a recovery measuring agreement
            ctx = attrs.evolve(ctx, eval_fn=eval_fn)
        elapsed = timed()
        try:
            out = fn(ctx) if self.step_cache is None else \
                self.step_cache.run(self, inst, art, ctx, fn)
        except ModeloptError:
            raise
        except Exception as e:  # a library's own error inside a step: say which step
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise StepError(
                f"{inst.kind} {inst.name!r} failed on {art.name!r} ({art.format}): "
                f"{type(e).__name__}: {first}. The history is unchanged; the original "
                "exception is chained (run with --verbose, or see __cause__).") from e
        check_output(inst, art, out)
        plugin, version = component_origin(self.pm, type(inst))
        last = out.lineage[-1]
        step = attrs.evolve(last, plugin=plugin, version=version, duration_s=round(elapsed(), 4),
                            notes=tuple(last.notes) + tuple(n for n in ctx.notes
                                                            if n not in last.notes))
        out = attrs.evolve(out, lineage=out.lineage[:-1] + (step,))
        if self.gate is not None:
            out = self.gate.check(self, out)
        self._history.append(out)
        if self.gate is not None and raise_budget:
            self.gate.raise_for(out)
        return out

    def plan(self, steps: Iterable[Any], where: str = "step", first: int = 1) -> Any:
        """Check ``steps`` (:class:`~modelopt_core.RecipeStep` s, their data or recipe
        tables) from the current artifact without running anything: configs, the format
        chain, the data each needs and what this machine lacks. Returns a
        :class:`~modelopt_core.Plan`; the first invalid step raises ConfigError."""
        from .plan import plan_steps

        return plan_steps(self.pm, steps, self.current.format,
                          lambda n: getattr(self, n, None) is not None,
                          "pass it to Session(...).", where, first)

    def run(self, steps: Iterable[Any], say: Callable[[str], Any] | None = None) -> ModelArtifact:
        """Plan ``steps`` (:meth:`plan`; a step this machine cannot run refuses them all
        before any runs), then apply/export each; returns the newest artifact."""
        from .steps import run_steps

        return run_steps(self, steps, say, where="step")

    def fork(self, artifact: ModelArtifact | None = None, *, progress: bool | None = None,
             accuracy_gate: bool = True) -> Session:
        """A new session on the same data, plugins, options and step cache whose history is
        this one's up to ``artifact`` (default: the current one); an artifact not in the
        history starts the fork's own (it is then the fork's original). ``accuracy_gate``:
        False drops the gate in the fork. This session is not changed."""
        from .steps import fork_session

        return fork_session(self, artifact, progress, accuracy_gate)

    def discard(self) -> ModelArtifact:
        """Drop the newest artifact (e.g. one the accuracy gate rejected); returns it. The
        original cannot be discarded."""
        if len(self._history) == 1:
            raise DataError("Session.discard: only the original is left; it cannot be "
                            "discarded.")
        return self._history.pop()

    def optimize(self, target: str = "onnxruntime", objective: str = "latency",
                 max_accuracy_drop: float = 1.0, budget_trials: int | None = 20,
                 time_budget_s: float | None = None, **options: Any) -> Any:
        """Search recipes (prune -> recovery -> precision -> runtime options) for ``target``
        (``"openvino"``, ``"onnxruntime"``, ``"torch"``), each measured on the real runtime,
        minimizing ``objective`` (``"latency"``, ``"size"``, ``"energy"``) with at most
        ``max_accuracy_drop`` points of ``eval_fn`` lost; resumable (Optuna study in
        ``out_dir``). ``options``: ``space``, ``storage``, ``study_name``, ``out_dir``,
        ``seed``, ``runtime_options``, ``profiler_options``, ``threads``, ``step_cache``;
        ``executor="ray"`` (``ray_address``, ``ray_workers``): the trials run on a Ray cluster
        (docs/scale-out.md). Returns a ``modelopt_search.SearchResult``; the original is never
        changed. See docs/search.md."""
        search = self.pm.service("search", hint='Session.optimize needs the search plugin: '
                                 'pip install "modelopt-core[search]".')
        return search(self, target, objective, max_accuracy_drop, budget_trials,
                      time_budget_s, **options)

    # ---- running and measuring ------------------------------------------------------------

    def runner(self, backend: str | None = None, artifact: ModelArtifact | None = None,
               **options: Any) -> Runner:
        """A callable running ``artifact`` (default: current) on ``backend``: torch tensors
        in, torch tensors out, shaped like the original model's outputs. Without a backend:
        the runtime the artifact carries (``props.runtime`` and its options), else the
        reference backend of its format (``torch`` for the original)."""
        art = artifact or self.current
        backend, options = self.pm.runtime_for(art, backend, options)
        return self._make_runner(art, backend, **options)

    def _make_runner(self, artifact: ModelArtifact, backend: str, **options: Any) -> Runner:
        return self.pm.backend_for(artifact, backend, options).load(artifact, self.context())

    def compare(self, backends: Sequence[str] = ("torch",),
                profilers: Sequence[str] = DEFAULT_PROFILERS,
                artifacts: Sequence[ModelArtifact] | None = None,
                backend_options: dict[str, dict[str, Any]] | None = None,
                profiler_options: dict[str, dict[str, Any]] | None = None) -> Report:
        """Profile every artifact (default: the whole history) on every backend that runs its
        format; returns a :class:`Report` whose first row is the baseline."""
        from .measure import compare_artifacts

        return compare_artifacts(self, backends, profilers, artifacts, backend_options,
                                 profiler_options)


def _step_cache(value: Any) -> Any:
    """``Session(step_cache=...)``: None, a StepCache, or the folder of one."""
    if value is None:
        return None
    from .step_cache import StepCache

    return value if isinstance(value, StepCache) else StepCache(value)
