"""Session: the driver a user holds. Applies optimizers, exports, loads runners, compares.

``Session.original`` wraps the user's model and is never mutated; every step appends a new,
immutable :class:`ModelArtifact` to ``Session.history``; ``Session.current`` is the newest.
A step that fails raises and leaves the history as it was.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from .artifact import ModelArtifact, Step, TensorSpec
from .errors import DataError, FormatError, InputSpecError, ModeloptError
from .interfaces import Component, Context, Runner, spec_inputs, timed
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
    """

    def __init__(self, model: Any, example_inputs: Sequence[Any] | Any, *,
                 calibration_data: Iterable[Any] | None = None,
                 train_data: Iterable[Any] | None = None,
                 eval_fn: Callable[[Runner], float] | None = None,
                 input_names: Sequence[str] | None = None, device: str = "cpu",
                 plugins: PluginManager | None = None, progress: bool = True,
                 dynamic_batch: bool = True) -> None:
        import torch

        if not isinstance(example_inputs, (tuple, list)):
            example_inputs = (example_inputs,)
        example_inputs = tuple(example_inputs)
        if not example_inputs or not all(isinstance(x, torch.Tensor) for x in example_inputs):
            raise InputSpecError("Session: example_inputs must be a non-empty tuple of torch "
                                 "tensors, e.g. (torch.randn(1, 3, 224, 224),).")
        if eval_fn is not None and not callable(eval_fn):
            raise DataError("Session: eval_fn must be callable(runner) -> float.")
        self.pm = plugins or get_plugin_manager()
        self.example_inputs = example_inputs
        self.calibration_data = calibration_data
        self.train_data = train_data
        self.eval_fn = eval_fn
        self.device = device
        self.progress = progress
        if isinstance(model, ModelArtifact):
            self._history = [model]
            return
        if not isinstance(model, torch.nn.Module):
            raise FormatError(f"Session: model must be a torch.nn.Module or ModelArtifact, got "
                              f"{type(model).__name__}.")
        inputs = spec_inputs(example_inputs, input_names, dynamic_batch)
        outputs, kind = _probe_outputs(model, example_inputs, dynamic_batch)
        self._history = [ModelArtifact(
            "torch", model, inputs, outputs,
            (Step("original", "source", config={"class": type(model).__qualname__}),),
            {"output_kind": kind})]

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
                       eval_fn=self.eval_fn, device=self.device, original=self.original,
                       history=self.history, log=log, show_progress=self.progress,
                       runner_factory=self._make_runner)

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
        return self._run(inst, art, lambda ctx: inst.apply(art, ctx))

    def export(self, target: str = "onnx", **config: Any) -> ModelArtifact:
        """Export the current artifact to format ``target`` through the registered exporters.

        ``config`` goes to the last exporter of the chain.
        """
        chain = self.pm.export_path(self.current.format, target)
        if not chain:
            raise FormatError(f"export: the current artifact is already {target!r}.")
        for i, info in enumerate(chain):
            inst = info.cls(**(config if i == len(chain) - 1 else {}))
            info.cls.ensure_available()
            art = self.current
            self._run(inst, art, lambda ctx, inst=inst, art=art: inst.export(art, ctx))
        return self.current

    def _run(self, inst: Component, art: ModelArtifact,
             fn: Callable[[Context], ModelArtifact]) -> ModelArtifact:
        ctx = self.context()
        elapsed = timed()
        out = fn(ctx)
        if not isinstance(out, ModelArtifact) or len(out.lineage) != len(art.lineage) + 1:
            raise ModeloptError(f"{inst.kind} {inst.name!r} broke the contract: it must return a "
                                "new ModelArtifact with exactly one more lineage step.")
        plugin, version = component_origin(self.pm, type(inst))
        last = out.lineage[-1]
        step = attrs.evolve(last, plugin=plugin, version=version, duration_s=round(elapsed(), 4),
                            notes=tuple(last.notes) + tuple(n for n in ctx.notes
                                                            if n not in last.notes))
        out = attrs.evolve(out, lineage=out.lineage[:-1] + (step,))
        self._history.append(out)
        return out

    # ---- running and measuring ------------------------------------------------------------

    def runner(self, backend: str = "torch", artifact: ModelArtifact | None = None,
               **options: Any) -> Runner:
        """A callable running ``artifact`` (default: current) on ``backend``: torch tensors
        in, torch tensors out, shaped like the original model's outputs."""
        return self._make_runner(artifact or self.current, backend, **options)

    def _make_runner(self, artifact: ModelArtifact, backend: str, **options: Any) -> Runner:
        info = self.pm.get("backend", backend)
        cls = info.cls
        if artifact.format not in cls.accepts:
            raise FormatError(f"backend {backend!r} runs {list(cls.accepts)} artifacts, not "
                              f"{artifact.format!r} ({artifact.name}). Export first, or pick a "
                              "backend for that format.")
        inst = cls(**options)
        cls.ensure_available()
        return inst.load(artifact, self.context())

    def compare(self, backends: Sequence[str] = ("torch",),
                profilers: Sequence[str] = DEFAULT_PROFILERS,
                artifacts: Sequence[ModelArtifact] | None = None,
                backend_options: dict[str, dict[str, Any]] | None = None,
                profiler_options: dict[str, dict[str, Any]] | None = None) -> Report:
        """Profile every artifact (default: the whole history) on every backend that runs its
        format; returns a :class:`Report` whose first row is the baseline."""
        backend_options = backend_options or {}
        profiler_options = profiler_options or {}
        profs = [self.pm.get("profiler", p).cls(**profiler_options.get(p, {}))
                 for p in profilers]
        for b in backends:
            self.pm.get("backend", b)
        rows = []
        arts = list(artifacts) if artifacts is not None else self.history
        for idx, art in enumerate(arts):
            for b in backends:
                bcls = self.pm.get("backend", b).cls
                if art.format not in bcls.accepts:
                    continue
                ok, why = bcls.availability()
                row: dict[str, Any] = {"step": _label(idx, art), "format": art.format,
                                       "backend": b}
                if not ok:
                    row["error"] = f"unavailable: {why}"
                    rows.append(row)
                    continue
                ctx = self.context()
                with self._make_runner(art, b, **backend_options.get(b, {})) as runner:
                    for prof in profs:
                        try:
                            row.update(prof.profile(runner, art, ctx))
                        except ModeloptError as e:
                            row.setdefault("error", f"{prof.name}: {e}")
                rows.append(row)
        return Report(rows)


def _label(idx: int, art: ModelArtifact) -> str:
    return "original" if idx == 0 else f"{idx}:{art.name}"


def _probe_outputs(model: Any, inputs: tuple[Any, ...],
                   dynamic_batch: bool) -> tuple[tuple[TensorSpec, ...], str]:
    """Run a copy of the model once to learn its output specs and structure."""
    import torch

    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        try:
            out = probe(*inputs)
        except Exception as e:
            raise InputSpecError(f"Session: the model failed on example_inputs "
                                 f"{[tuple(x.shape) for x in inputs]}: {e}") from e
    if isinstance(out, torch.Tensor):
        return (TensorSpec.from_tensor("output", out, dynamic_batch),), "tensor"
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        return tuple(TensorSpec.from_tensor(f"output_{i}", o, dynamic_batch)
                     for i, o in enumerate(out)), "tuple"
    raise FormatError("Session: the model must return a tensor or a tuple/list of tensors; got "
                      f"{type(out).__name__}. Wrap it so forward() returns tensors.")
