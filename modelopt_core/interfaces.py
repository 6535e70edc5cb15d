"""The component interfaces (Optimizer, Exporter, Backend + Runner, Profiler, Format) and
Context.

A component is a class with ``name: ClassVar[str]``, a ``Config`` attrs class (see
:mod:`modelopt_core.config`) and the formats it accepts. Plugins register classes; the
session builds an instance per use from validated config kwargs. The base class, the runner
and the context live in :mod:`.component`, :mod:`.runner` and :mod:`.context`; this module
is where they are all reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .artifact import ModelArtifact, TensorSpec
from .component import Component, EmptyConfig
from .config import build_config
from .context import Context
from .data import as_input_tuple  # noqa: F401 (public here too: mo.as_input_tuple)
from .errors import ArtifactError, FormatError
from .runner import Runner

if TYPE_CHECKING:  # for annotations only: plugins imports this module
    from .plugins import PluginManager

__all__ = ["Component", "Optimizer", "Exporter", "Backend", "Runner", "Profiler", "Format",
           "BytesFormat", "Context", "EmptyConfig", "Column"]


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

    def file_specs(self, model: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(input specs, output specs) that a model read by :meth:`load_file` declares itself
        (an ONNX graph's inputs and outputs): a bare file has no manifest to hold them.
        ``((), ())`` (the default) when the format cannot tell."""
        return (), ()

    def runtime_source(self, model: Any) -> AbstractContextManager[bytes | str]:
        """The in-memory ``model`` as a runtime opens it, for backends and exporters that
        hand it to another runtime (reach the format through the registry:
        ``pm.get("format", name).cls().runtime_source(model)``): a context manager yielding
        its serialized bytes, or the path of a temporary file deleted on exit (e.g. an ONNX
        model over protobuf's 2 GiB limit, with its external data). :class:`FormatError`
        when the format provides none (the default)."""
        raise FormatError(f"format {self.name!r} does not provide a runtime source (its "
                          "models cannot be handed to another runtime as bytes or a file).")


class BytesFormat(Format):
    """Raw bytes in ``model.bin`` (engine blobs); the fallback for bytes models of a format no
    plugin registers. Subclass it, with a ``name``, to register one."""

    name = ""
    primary = "model.bin"

    def save(self, artifact: ModelArtifact, folder: Path, **options: Any) -> list[str]:
        build_config(EmptyConfig, options, f"format {artifact.format!r}")
        if not isinstance(artifact.model, (bytes, bytearray)):
            raise ArtifactError(
                f"cannot save an artifact of format {artifact.format!r} holding "
                f"{type(artifact.model).__name__}: no installed plugin saves that format.")
        (folder / self.primary).write_bytes(bytes(artifact.model))
        return [self.primary]

    def load(self, folder: Path, saved: ModelArtifact, model: Any,
             plugins: PluginManager | None) -> Any:
        return (folder / self.primary).read_bytes()



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
