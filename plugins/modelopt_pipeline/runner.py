"""The caller's side of backend ``torch.pipeline``: starts one stage process per pipeline stage
(``torch.multiprocessing`` spawn, a gloo group on 127.0.0.1), feeds every batch to rank 0 and
returns what the last rank answers; :meth:`close` stops the processes."""

from __future__ import annotations

import pickle
import queue
import socket
import time
from collections.abc import Sequence
from typing import Any

import modelopt_core as mo

#: seconds the stage processes may take to start and join their group
START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PipelineRunner(mo.Runner):
    """A model split into stages, one process each (see the backend). Calls run one at a
    time (the base class serializes them): every batch goes through the whole pipeline."""

    def __init__(self, artifact: mo.ModelArtifact, model: Any, *, stages: int,
                 split_points: tuple[str, ...], microbatches: int, threads: int) -> None:
        super().__init__(artifact, "cpu")
        self.stages, self.split_points, self.microbatches = stages, split_points, microbatches
        self.processes: list[Any] = []
        self._broken = ""
        self._start(model, threads)

    # ---- processes ----------------------------------------------------------------------

    def _start(self, model: Any, threads: int) -> None:
        import torch.multiprocessing as mp

        from . import worker

        ctx = mp.get_context("spawn")
        self._inboxes = [ctx.Queue() for _ in range(self.stages)]
        self._outbox = ctx.Queue()
        port = free_port()
        try:
            for rank in range(self.stages):
                p = ctx.Process(target=worker.main, daemon=True, name=f"modelopt-stage-{rank}",
                                args=(rank, self.stages, port, threads, model,
                                      self.split_points, self.microbatches,
                                      self._inboxes[rank], self._outbox))
                p.start()  # pickles the model here: an unpicklable one raises now
                self.processes.append(p)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            self._stop()
            raise mo.FormatError(
                f"backend 'torch.pipeline': cannot send the model of {self.artifact.name!r} "
                f"to its stage processes ({type(e).__name__}: {e}); its classes must be "
                "importable by name (defined at the top level of a module), as for any "
                "torch.multiprocessing worker.") from None
        ready = 0
        while ready < self.stages:
            msg = self._receive(START_TIMEOUT_S, "start")
            ready += msg[0] == "ready"

    def _receive(self, timeout: float | None, what: str) -> tuple:
        """The next message of the outbox; a stage's error or death raises (and stops the
        others: a pipeline missing a rank cannot go on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                msg = self._outbox.get(timeout=0.5)
            except queue.Empty:
                dead = [p.name for p in self.processes if not p.is_alive()]
                late = deadline is not None and time.monotonic() > deadline
                if dead or late:
                    why = (f"stage process(es) {dead} exited" if dead
                           else f"no answer in {timeout:.0f} s")
                    self._fail(mo.BackendUnavailableError(
                        f"backend 'torch.pipeline' ({what}): {why}."))
                continue
            if msg[0] == "error":
                _, rank, phase, text = msg
                err: Exception = (mo.ConfigError(
                    f"backend 'torch.pipeline': config key 'split_points': the model cannot "
                    f"be split as asked (stage {rank}): {text}") if phase == "split" else
                    mo.BackendUnavailableError(
                        f"backend 'torch.pipeline' ({what}): stage {rank} failed: {text}"))
                self._fail(err)
            return msg

    def _fail(self, err: Exception) -> None:
        self._broken = str(err).splitlines()[0]
        self._stop()
        raise err

    def _stop(self) -> None:
        for p, box in zip(self.processes, self._inboxes):
            if p.is_alive():
                box.put(("stop",))
        for p in self.processes:
            p.join(timeout=10)
            if p.is_alive():  # stuck in a collective with a dead peer
                p.kill()
                p.join(timeout=10)
        self.processes = []

    # ---- calls --------------------------------------------------------------------------

    def _run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        if self._broken:
            raise mo.BackendUnavailableError(
                f"backend 'torch.pipeline': the stage processes stopped after an error "
                f"({self._broken}); load a new runner.")
        batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 0
        if not batch or batch % self.microbatches:
            raise mo.InputSpecError(
                f"backend 'torch.pipeline': batch {batch} is not divisible by config key "
                f"'microbatches' ({self.microbatches}); use a batch that is a multiple of it "
                "or set microbatches to a divisor of the batch.")
        mb = batch // self.microbatches
        key = tuple(((mb, *x.shape[1:]), str(x.dtype).replace("torch.", "")) for x in inputs)
        # private copies: sending a tensor moves its storage to shared memory
        args = tuple(x.detach().clone() for x in inputs)
        for rank, box in enumerate(self._inboxes):
            box.put(("run", key, args if rank == 0 else None))
        out = self._receive(None, "run")[1]
        return [t.clone() for t in self.flatten(out)]

    def _release(self) -> None:
        self._stop()
