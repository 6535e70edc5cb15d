"""The stage process of backend ``torch.pipeline``: one rank of a gloo process group that
builds its stage with ``torch.distributed.pipelining`` and runs it under a GPipe schedule.

Imports torch only (no modelopt), so a spawned process starts fast. Messages on its inbox:

- ``("run", key, args)``: run one batch. ``key`` is the input signature (per input: the
  microbatch shape and dtype); the first time a key is seen every rank traces its own copy of
  the model at that microbatch shape (``pipeline(..., split_spec)``: the stage graphs are
  shape-specialized) and keeps ``build_stage(rank)`` under a ``ScheduleGPipe``. ``args`` are
  the input tensors on rank 0 and ``None`` elsewhere. The last rank answers ``("out", y)``.
- ``("stop",)``: leave the process group and exit.

Answers on the shared outbox: ``("ready", rank)`` once the group is up, ``("out", y)``,
``("error", rank, phase, text)`` (phase ``"split"``: the model could not be split as asked;
``"run"``: anything else) after which the process exits.
"""

from __future__ import annotations

import copy
import os
import traceback
from collections import OrderedDict
from typing import Any

#: shape-specialized schedules kept per process (the oldest is dropped beyond this)
MAX_SCHEDULES = 8


class SplitMismatch(RuntimeError):
    """The split points gave another number of stages than asked."""


def _build(model: Any, key: tuple, split_points: tuple[str, ...], stages: int,
           microbatches: int, rank: int) -> Any:
    import torch
    from torch.distributed.pipelining import ScheduleGPipe, SplitPoint, pipeline

    example = tuple(torch.zeros(shape, dtype=getattr(torch, dtype)) for shape, dtype in key)
    spec = {name: SplitPoint.BEGINNING for name in split_points}
    # pipeline() wraps the split modules' forward in place: trace a private copy every time
    pipe = pipeline(copy.deepcopy(model), example, split_spec=spec or None)
    if pipe.num_stages != stages:
        raise SplitMismatch(f"split points {list(split_points)} give {pipe.num_stages} stages, "
                            f"not {stages} (a split module runs more than once, or not at "
                            "the top of forward's sequence)")
    stage = pipe.build_stage(rank, torch.device("cpu"))
    return ScheduleGPipe(stage, microbatches)


def _serve(model: Any, rank: int, stages: int, split_points: tuple[str, ...],
           microbatches: int, inbox: Any, outbox: Any) -> None:
    import torch

    schedules: OrderedDict[tuple, Any] = OrderedDict()
    while True:
        msg = inbox.get()
        if msg[0] == "stop":
            return
        _, key, args = msg
        phase = "split"
        try:
            if key not in schedules:
                schedules[key] = _build(model, key, split_points, stages, microbatches, rank)
                while len(schedules) > MAX_SCHEDULES:
                    schedules.popitem(last=False)
            schedules.move_to_end(key)
            phase = "run"
            with torch.no_grad():
                out = schedules[key].step(*args) if rank == 0 else schedules[key].step()
        except Exception as e:  # noqa: BLE001 - reported to the caller, then this rank stops
            if isinstance(e, SplitMismatch) or "capture your model" in str(e):
                phase = "split"
            text = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
            outbox.put(("error", rank, phase, text))
            return
        if rank == stages - 1:
            outbox.put(("out", out))


def main(rank: int, stages: int, port: int, threads: int, model: Any,
         split_points: tuple[str, ...], microbatches: int, inbox: Any, outbox: Any) -> None:
    """Entry point of stage process ``rank`` (``torch.multiprocessing`` spawn target)."""
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=stages)
    except Exception as e:  # noqa: BLE001 - reported to the caller
        outbox.put(("error", rank, "start", f"{type(e).__name__}: {e}"))
        return
    try:
        outbox.put(("ready", rank))
        _serve(model.eval(), rank, stages, split_points, microbatches, inbox, outbox)
    finally:
        dist.destroy_process_group()
