"""The four component interfaces (Optimizer, Exporter, Backend + Runner, Profiler) and Context.

A component is a class with ``name: ClassVar[str]``, a ``Config`` attrs class (see
:mod:`modelopt_core.config`) and the formats it accepts. Plugins register classes; the
session builds an instance per use from validated config kwargs.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .artifact import ModelArtifact, Step, TensorSpec
from .config import build_config, config, config_to_data
from .errors import (ArtifactError, BackendUnavailableError, DataError, FormatError,
                     InputSpecError, RunnerClosedError)
from .data import as_input_tuple  # noqa: F401 (public here too: mo.as_input_tuple)
from .io import flatten_outputs, order_inputs, unflatten_outputs

if TYPE_CHECKING:  # for annotations only: plugins imports this module
    from .plugins import PluginManager

__all__ = ["Component", "Optimizer", "Exporter", "Backend", "Runner", "Profiler", "Format",
           "Context", "EmptyConfig", "Column"]


@config
class EmptyConfig:
    """A component with no options."""


class Component:
    """Base of every component. Subclasses set ``name`` and, if they have options, ``Config``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    #: importable modules this component needs; missing ones make it unavailable
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        if config is None:
            config = build_config(self.Config, kwargs, f"{self.kind} {self.name!r}")
        elif kwargs:
            raise TypeError("pass either a Config instance or keyword options, not both")
        self.config = config

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(available, reason): missing optional dependencies or hardware make it unavailable.

        A dotted entry of ``requires`` (``"tensorrt.plugins"``) is missing when any of its
        parent packages is; a package that is installed but fails to import makes the
        component unavailable too, with the error as the reason. Never raises."""
        import sys

        missing, broken = [], []
        for mod in cls.requires:
            parts = str(mod).split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                try:  # find_spec imports the parents of a dotted name
                    found = importlib.util.find_spec(name) is not None
                except ModuleNotFoundError:
                    found = False
                except ValueError as e:  # imported without a __spec__, or not a module name
                    if name not in sys.modules:
                        broken.append(f"{name} ({type(e).__name__}: {str(e)[:160]})")
                        break
                    found = True
                except ImportError as e:
                    broken.append(f"{name} ({type(e).__name__}: {str(e)[:160]})")
                    break
                except Exception as e:  # a parent package whose import raises
                    broken.append(f"{name} (import failed: {type(e).__name__}: {str(e)[:160]})")
                    break
                if not found:
                    missing.append(mod if name == mod else f"{mod} (no package {name!r})")
                    break
        if missing or broken:
            hint = f" Install with: {cls.install_hint}" if cls.install_hint else ""
            why = []
            if missing:
                why.append(f"missing module(s) {', '.join(missing)}")
            if broken:
                why.append(f"module(s) that fail to import: {', '.join(broken)}")
            return False, "; ".join(why) + f".{hint}"
        return True, ""

    @classmethod
    def ensure_available(cls) -> None:
        """Raise :class:`BackendUnavailableError` with the reason when unavailable."""
        ok, why = cls.availability()
        if not ok:
            raise BackendUnavailableError(f"{cls.kind} {cls.name!r} is unavailable here: {why}")

    @classmethod
    def describe(cls) -> str:
        """First line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def step(self, kind: str | None = None, notes: Sequence[str] = (),
             restore: Mapping[str, Any] | None = None) -> Step:
        """The lineage Step this component adds (the session fills plugin, version, duration).

        ``restore`` is this step's own restore record (plain JSON data, saved in the
        manifest): what :meth:`Optimizer.rebuild` needs to re-create the step's structure
        when the artifact is loaded, e.g. ``{"shared_layers": {...}}``."""
        import json

        restore = dict(restore or {})
        try:
            json.dumps(restore, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{self.kind} {self.name!r}: the restore record must be plain JSON "
                            f"data (dicts, lists, str, int, float, bool, None): {e}") from e
        return Step(self.name, kind or self.kind, config=config_to_data(self.config),
                    notes=tuple(notes), restore=restore)


class Optimizer(Component):
    """Turns an artifact into a better one of the same or another format."""

    kind: ClassVar[str] = "optimizer"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    #: session data the optimizer needs: "calibration_data", "train_data", "eval_fn"
    needs: ClassVar[tuple[str, ...]] = ()
    #: where it sits in a recipe (what search composes and reads, instead of name tables):
    #: "structure" (pruning, factorization: changes the architecture), "recover" (trains
    #: accuracy back, e.g. distillation), "graph" (rewrites an exported graph), "precision"
    #: (quantization, lower float precision); None: undeclared
    stage: ClassVar[str | None] = None
    #: its result may answer differently from its input (False: the same function, e.g. a
    #: graph optimizer)
    lossy: ClassVar[bool] = True

    def apply(self, artifact: ModelArtifact, ctx: Context) -> ModelArtifact:
        """Return a new artifact (never mutate ``artifact`` or its model)."""
        raise NotImplementedError

    def recoveries(self, budget: float | None) -> Sequence[tuple[str, Mapping[str, Any]]]:
        """What to try, cheapest first, when this step's result misses the session's
        accuracy budget (``budget``: ``max_accuracy_drop`` in the gate's units): pairs of
        (what it does, config changes applied over this step's config). The session runs
        each in turn on the same input and keeps the first within the budget (see
        :mod:`modelopt_core.gate`). Default: none (a lossless step, or nothing to try)."""
        return ()

    def rebuild(self, model: Any, example_inputs: tuple[Any, ...],
                metadata: Mapping[str, Any], restore: Mapping[str, Any] | None = None) -> Any:
        """Re-create, without data, the module structure :meth:`apply` produced, starting from
        ``model`` (a private copy of the architecture being loaded), so that saved weights load
        into it. :func:`~modelopt_core.load_artifact` calls it, in lineage order, for steps
        whose result is not a tree of standard ``torch.nn`` layers (torch.fx graphs, own
        quantizer modules), on an instance built from the step's saved config.

        ``restore`` is this step's own restore record: what :meth:`apply` passed as
        ``self.step(..., restore={...})`` (plain JSON data from the manifest; ``{}`` when the
        step saved none, e.g. an artifact saved by an older version). Read per-step facts
        from it, never from ``metadata`` (the saved artifact's metadata, shared by every step:
        a later step of the same kind overwrites its keys); fall back to ``metadata`` only for
        old artifacts. Implementations written before ``restore`` existed (three parameters)
        are still called, without it.

        Returning ``None`` (the default) means the step changes nothing that needs replaying:
        shapes and dtypes are restored from the weights, replaced standard layers from the
        saved structure record. A step that puts modules of its own into the model must
        implement this, or the artifact cannot be reloaded into the user's class (loading
        fails with an :class:`ArtifactError` naming the step).
        """
        return None


class Exporter(Component):
    """Converts an artifact from ``source`` format to ``target`` format."""

    kind: ClassVar[str] = "exporter"
    source: ClassVar[str] = "torch"
    target: ClassVar[str] = ""

    def export(self, artifact: ModelArtifact, ctx: Context) -> ModelArtifact:
        """Return a new artifact in ``target`` format."""
        raise NotImplementedError


#: serializes the lazy creation of a runner's call gate (see ``Runner._gate``)
_GATE_INIT = threading.Lock()


class Runner:
    """A loaded model: ``runner(*inputs)`` takes torch tensors and returns torch tensors
    structured like the original model's outputs (a tensor, a tuple, a dict or a
    ``ModelOutput``). Inputs go positionally, by name (``runner(input_ids=...)``) or as one
    dict, whatever the model's own convention. Subclasses implement :meth:`_run`, which takes
    the flat inputs in the artifact's input order and returns the flat output tensors.

    Every runner may be shared between threads (``ThreadPoolExecutor(4).map(runner, xs)``):
    each call's answer is the one that input gets alone. A runner class whose :meth:`_run` is
    safe to call from several threads at once (the runtime call is re-entrant, or it keeps a
    pool of per-call states such as infer requests or interpreters) sets ``thread_safe =
    True``; for every other class (the default, so a new plugin is never wrong by omission)
    the base class runs one :meth:`_run` at a time under a lock. :meth:`close` waits for the
    calls in flight before it releases the runtime; a call that starts after it raises
    :class:`RunnerClosedError`.
    """

    #: True when ``_run`` may run in several threads at once (else the base class serializes)
    thread_safe: ClassVar[bool] = False
    closed: bool = False

    def __init__(self, artifact: ModelArtifact, device: str = "cpu") -> None:
        self.artifact = artifact
        self.device = device
        self.closed = False
        self._init_gate()

    def _init_gate(self) -> None:
        self._calls = threading.Condition()  # guards closed / the count of calls in flight
        self._in_flight = 0
        self._serial = None if self.thread_safe else threading.Lock()

    def _gate(self) -> threading.Condition:
        """The calls' condition (made here for a subclass whose ``__init__`` skipped the
        base class's)."""
        try:
            return self._calls
        except AttributeError:
            with _GATE_INIT:
                if "_calls" not in vars(self):
                    self._init_gate()
            return self._calls

    # The protocol, in stages: ``runner(*x) == runner.unflatten(runner.run_flat(flat_x))``.
    # ``run_flat`` is the checked, thread-safe kernel over :meth:`_run` (the subclass hook);
    # ``flatten`` / ``unflatten`` convert between the model's own output structure and the
    # flat tensors; ``run_many`` runs several calls (sequential here, overlapped where the
    # runtime can: OpenVINO's async queue).

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        return self.unflatten(self.run_flat(self._ordered(inputs, named)))

    def _ordered(self, inputs: Sequence[Any], named: Mapping[str, Any]) -> Sequence[Any]:
        if named or (len(inputs) == 1 and isinstance(inputs[0], Mapping)):  # by name
            return order_inputs(inputs, named, [s.name for s in self.artifact.inputs],
                                f"runner for {self.artifact.name!r}")
        return inputs

    def flatten(self, out: Any) -> list[Any]:
        """The flat output tensors of a structured output (what :meth:`run_flat` returns for
        the call that gave ``out``), in the artifact's output order."""
        return list(flatten_outputs(out, f"output of runner for {self.artifact.name!r}")[0])

    def unflatten(self, flat: Sequence[Any]) -> Any:
        """Flat output tensors rebuilt into the model's own output structure (a tensor, a
        tuple, a dict or a ``ModelOutput``), as ``runner(...)`` returns it."""
        tree = self.artifact.io.get("outputs")
        if tree is None and self.artifact.metadata.get("output_kind") == "tuple":
            return tuple(flat)  # artifacts saved before the io record
        return unflatten_outputs(flat, tree)

    def run_many(self, batches: Iterable[Any]) -> list[Any]:
        """Run every item of ``batches`` (each an input tuple, a single tensor, or a dict of
        named inputs, as ``runner(...)`` takes) and return the outputs in order, each
        structured like ``runner(item)``'s. Sequential here; a runtime that can keep several
        calls in flight overrides it (the answers stay the same)."""
        return [self.unflatten(self.run_flat(self.call_inputs(item))) for item in batches]

    def call_inputs(self, item: Any) -> Sequence[Any]:
        """One :meth:`run_many` item (an input tuple, a tensor or a dict of named inputs) as
        flat inputs in the artifact's input order."""
        if isinstance(item, Mapping):
            return self._ordered((item,), {})
        if isinstance(item, (tuple, list)):
            return self._ordered(tuple(item), {})
        return (item,)

    def run_flat(self, inputs: Sequence[Any]) -> list[Any]:
        """Run flat inputs (torch tensors in the artifact's input order; checked against its
        input specs) and return the flat output tensors. Safe from several threads (see the
        class docstring); what serving and profilers call instead of :meth:`_run`."""
        self._enter()
        try:
            self.check_inputs(inputs)
            if self._serial is None:
                return list(self._run(inputs))
            with self._serial:
                return list(self._run(inputs))
        finally:
            self._leave()

    def _enter(self) -> None:
        """Count a call in flight (RunnerClosedError once closed)."""
        with self._gate():
            if self.closed:
                raise RunnerClosedError(f"runner for {self.artifact.name!r} was closed; load a "
                                        "new one with session.runner(...).")
            self._in_flight += 1

    def _leave(self) -> None:
        with self._calls:
            self._in_flight -= 1
            if not self._in_flight:
                self._calls.notify_all()

    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """Raise :class:`InputSpecError` if inputs do not match the artifact's input specs."""
        import torch

        specs = self.artifact.inputs
        if not specs:
            return
        if len(inputs) != len(specs):
            raise InputSpecError(f"runner for {self.artifact.name!r}: expected {len(specs)} "
                                 f"input(s) {[s.name for s in specs]}, got {len(inputs)}.")
        sizes: dict[str, tuple[str, int]] = {}  # symbolic dim -> (first input, its size)
        for x, spec in zip(inputs, specs):
            if not isinstance(x, torch.Tensor):
                raise InputSpecError(f"input {spec.name!r}: expected a torch.Tensor, got "
                                     f"{type(x).__name__}.")
            if not spec.matches(tuple(x.shape)):
                raise InputSpecError(f"input {spec.name!r}: shape {tuple(x.shape)} does not match "
                                     f"{list(spec.shape)} (symbolic dims may vary).")
            got = str(x.dtype).replace("torch.", "")
            # a reduced-precision model also takes its own dtype (cast at the runner boundary)
            if got != spec.dtype and not (got == self.artifact.props.compute_dtype
                                          and spec.dtype.startswith("float")):
                raise InputSpecError(f"input {spec.name!r}: dtype {x.dtype} but the model takes "
                                     f"{spec.dtype}; cast the input (x.to(torch.{spec.dtype})).")
            for d, sym in zip(x.shape, spec.shape):
                first = sizes.setdefault(sym, (spec.name, d)) if isinstance(sym, str) else None
                if first is not None and first[1] != d:
                    raise InputSpecError(
                        f"input {spec.name!r}: dim {sym!r} is {d}, but {first[1]} in input "
                        f"{first[0]!r}; inputs that share a dim name must agree on its size.")

    def _run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (GPU backends override)."""

    def close(self) -> None:
        """Free resources held by the runner (idempotent); calling it afterwards raises
        :class:`RunnerClosedError`. Calls already running in other threads finish first.
        Subclasses free their resources in :meth:`_release`."""
        with self._gate():
            if self.closed:
                return
            self.closed = True
            self._calls.wait_for(lambda: not self._in_flight)
        self._release()

    def _release(self) -> None:
        """Free the runtime's resources (sessions, engines, module copies)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Backend(Component):
    """Loads an artifact into a :class:`Runner` on some runtime.

    Traits the other rooms read from the class (instead of tables of names): serving's thread
    split and replica mode (``thread_option``, ``releases_gil``), the accuracy gate's choice of
    evaluator (``reference_for``). A third-party backend declares them and joins as the
    built-ins do."""

    kind: ClassVar[str] = "backend"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    #: the ``Config`` field that sets the runtime's CPU thread count (serving splits the cores
    #: between replicas through it; the search times thread counts through it); None: none
    thread_option: ClassVar[str | None] = None
    #: inference releases the GIL: serving runs replicas as threads of one process (else as
    #: processes)
    releases_gil: ClassVar[bool] = False
    #: formats this backend is the default evaluator of (the accuracy gate measures an
    #: artifact of such a format on it); a subset of ``accepts``
    reference_for: ClassVar[tuple[str, ...]] = ()

    def load(self, artifact: ModelArtifact, ctx: Context) -> Runner:
        """Return a runner for ``artifact`` (never mutating its model)."""
        raise NotImplementedError


@attrs.define(frozen=True)
class Column:
    """One metric a :class:`Profiler` returns, as the reports show it (Markdown, terminal,
    HTML; JSON keeps every key as it is).

    ``header`` is the short table header, unit included (``"p50 ms"``; default: the name and
    the unit); ``format`` a ``str.format`` template (``"{:.3f}"``) or a callable value -> text
    for numbers (None: the default, fixed decimals); ``better`` says which way is better
    ("higher", "lower", or None for neither). ``table=False`` keeps a detail (a count, a
    duration, a per-layer dict) out of the default table; ``order`` places the column: lower
    first (the report's own step/format/backend come first and the note last; the built-in
    metrics use 10-99, so the default puts a plugin's metric after them)."""

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    header: str = ""
    unit: str = ""
    format: str | Callable[[Any], str] | None = attrs.field(default=None)
    better: str | None = attrs.field(
        default=None, validator=attrs.validators.in_(("higher", "lower", None)))
    table: bool = True
    order: int = 500

    @format.validator
    def _check_format(self, attribute: Any, value: Any) -> None:
        if isinstance(value, str) and "{" not in value:
            raise ValueError(f"column {self.name!r}: format {value!r} is not a str.format "
                             "template such as '{:.3f}' (or give a callable: value -> text).")
        if value is not None and not isinstance(value, str) and not callable(value):
            raise TypeError(f"column {self.name!r}: format must be a template, a callable or "
                            "None.")

    @property
    def title(self) -> str:
        """The header shown: ``header``, else the name with the unit."""
        return self.header or (f"{self.name} ({self.unit})" if self.unit else self.name)


class Profiler(Component):
    """Measures a runner/artifact; returns a flat dict of metric name -> value.

    ``columns`` declares every key :meth:`profile` may return (:class:`Column`: header, unit,
    format, which way is better), so the reports show a plugin's metric with its header and
    format. Two registered profilers declaring one column name is an error naming both."""

    kind: ClassVar[str] = "profiler"
    columns: ClassVar[tuple[Column, ...]] = ()

    def profile(self, runner: Runner, artifact: ModelArtifact, ctx: Context) -> dict[str, Any]:
        """Return metrics, e.g. ``{"latency_p50_ms": 1.2}``."""
        raise NotImplementedError


class Format(Component):
    """How models of one format live in an artifact folder (the ``format`` of a
    :class:`ModelArtifact`): written into a folder, read back from it. Register with the
    ``register_formats`` hook; :meth:`ModelArtifact.save` and :func:`load_artifact` dispatch
    on the artifact's format, so a plugin can add a format (one file or many, e.g. OpenVINO's
    ``.xml`` + ``.bin``, a Core ML ``.mlpackage`` folder) the core has never heard of. The core
    keeps the manifest, hashes, the crash-safe swap and the check that every file is listed.
    """

    kind: ClassVar[str] = "format"
    #: the file every artifact of this format holds (checked at load; "" for none)
    primary: ClassVar[str] = ""
    #: bare files (not artifact folders) this format reads in :meth:`load_file`, by suffix
    suffixes: ClassVar[tuple[str, ...]] = ()

    def save(self, artifact: ModelArtifact, folder: Path, **options: Any) -> list[str]:
        """Write ``artifact.model`` into the empty ``folder``; return the written files,
        relative to it (``/``-separated; a sub-folder's files one by one). ``options`` are the
        keyword options of ``ModelArtifact.save`` meant for this format; refuse unknown ones
        with :class:`ConfigError`."""
        raise NotImplementedError

    def load(self, folder: Path, saved: ModelArtifact, model: Any,
             plugins: PluginManager | None) -> Any:
        """Read the in-memory model back from a verified artifact ``folder``. ``saved`` is the
        artifact as the manifest describes it (``model`` is None): specs, lineage, metadata,
        io. ``model`` is what the user passed to :func:`load_artifact` (a skeleton for
        weights-only formats, else None); ``plugins`` the registry to resolve lineage steps
        with. Never run code from the folder."""
        raise NotImplementedError

    def load_file(self, path: Path, model: Any, plugins: PluginManager | None) -> Any:
        """Read a bare file with one of :attr:`suffixes` (not an artifact folder)."""
        raise ArtifactError(f"{path}: format {self.name!r} cannot load bare files.")

    def runtime_source(self, model: Any) -> AbstractContextManager[bytes | str]:
        """The in-memory ``model`` as a runtime opens it, for backends and exporters that
        hand it to another runtime (reach the format through the registry:
        ``pm.get("format", name).cls().runtime_source(model)``): a context manager yielding
        its serialized bytes, or the path of a temporary file deleted on exit (e.g. an ONNX
        model over protobuf's 2 GiB limit, with its external data). :class:`FormatError`
        when the format provides none (the default)."""
        raise FormatError(f"format {self.name!r} does not provide a runtime source (its "
                          "models cannot be handed to another runtime as bytes or a file).")


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
        the chain. The session's history is not touched."""
        from .plugins import get_plugin_manager

        pm = self.plugins or get_plugin_manager()
        chain = pm.export_path(artifact.format, target)
        for i, info in enumerate(chain):
            inst = info.cls(**(config if i == len(chain) - 1 else {}))
            info.cls.ensure_available()
            artifact = inst.export(artifact, self)
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


def spec_inputs(example_inputs: Sequence[Any], names: Sequence[str] | None = None,
                dynamic_batch: bool = True) -> tuple[TensorSpec, ...]:
    """TensorSpecs for example inputs (names default to ``input``, ``input_1``...)."""
    names = list(names or [])
    specs = []
    for i, t in enumerate(example_inputs):
        n = names[i] if i < len(names) else ("input" if i == 0 else f"input_{i}")
        specs.append(TensorSpec.from_tensor(n, t, dynamic_batch))
    return tuple(specs)


def timed() -> Callable[[], float]:
    """Start a wall-clock timer; call the result for elapsed seconds."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
