"""The :class:`Runner`: a loaded model, called with torch tensors, shared safely between
threads; the public flat protocol (``run_flat``, ``flatten`` / ``unflatten``, ``run_many``)
serving and the profilers drive."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import InputSpecError, RunnerClosedError
from .io import flatten_outputs, order_inputs, unflatten_outputs

if TYPE_CHECKING:
    from .artifact import ModelArtifact

__all__ = ["Runner"]

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
        specs = self.artifact.inputs
        if not specs:
            return
        # the checks depend on each input's type, shape and dtype alone: a combination that
        # passed once passes again (a serving loop skips ~25 us a call); bad inputs still raise
        passed = self.__dict__.setdefault("_inputs_passed", set())
        key: Any = tuple((type(x), getattr(x, "shape", None), getattr(x, "dtype", None))
                         for x in inputs)
        try:
            if key in passed:
                return
        except TypeError:  # an unhashable shape: check every time
            key = None
        self._check_inputs(inputs, specs)
        if key is not None and len(passed) < 64:
            passed.add(key)

    def _check_inputs(self, inputs: Sequence[Any], specs: Sequence[Any]) -> None:
        import torch

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
