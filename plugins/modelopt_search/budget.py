"""The search's time: the time budget's constants, the per-trial clock :class:`_Clock` (how
long a step or a trial will likely take, and whether a trial may start) that the trial runner
inherits, :class:`_Budget` (when the study stops) and :func:`_run_trials` (the study's loop,
surviving trials another worker finished)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import modelopt_core as mo

from .errors import SearchError

if TYPE_CHECKING:
    from .trials import _Search

#: with a time budget: the share of ``time_budget_s`` that expensive trials (accuracy
#: control, training; see :func:`.space.recipe_costs`) may use together
EXPENSIVE_SHARE = 0.4
#: with a time budget: the share of it kept for the end's confirmation (at most 2 *
#: CONFIRM_S) and the final report
END_SHARE = 0.2
#: seconds kept for writing the final report (after the confirmation)
WRITE_S = 0.5
#: a step never run here yet is estimated as this many times the longest measurement so far
#: (the baseline's at first: an export or a post-training quantization costs about one)
UNSEEN_STEP = 2.0
#: an accuracy-controlled precision step never run here yet: the same step without accuracy
#: control (or UNSEEN_STEP) plus this many measurements (NNCF evaluates the original, the
#: quantized model, ranks layers on a subset and re-evaluates after each revert)
ACCURACY_CONTROL_EVALS = 10
#: a training step never run here yet: this many measurements per epoch
TRAIN_EPOCH = 3.0


class _Clock:
    """The time budget of a search's trials (see :meth:`set_budget`), and the durations of
    the steps measured here, which estimate the next trials'."""

    def __init__(self) -> None:
        # the time budget (see set_budget): the search's start and the time by which the
        # last trial must end (the end's reserve kept); None: no time budget
        self.t0 = time.perf_counter()
        self.time_s: float | None = None
        self.deadline: float | None = None
        self.step_s: dict[str, list[float]] = {}  # step key -> durations measured here
        self.expensive_s = 0.0  # time spent on expensive trials here

    def set_budget(self, t0: float, time_s: float | None, reserve_s: float) -> None:
        self.t0, self.time_s = t0, time_s
        self.deadline = None if time_s is None else t0 + time_s - reserve_s

    def left(self) -> float:
        """Seconds left before the trials' deadline (inf without a time budget)."""
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()

    def record(self, key: str, seconds: float) -> None:
        self.step_s.setdefault(key, []).append(seconds)

    def step_estimate(self, key: str) -> float:
        """Seconds a step takes: the longest measured here, else a conservative guess from
        the longest measurement (see UNSEEN_STEP, ACCURACY_CONTROL_EVALS, TRAIN_EPOCH)."""
        if key in self.step_s:
            return max(self.step_s[key])
        measure = max(self.step_s.get("measure", [1.0]))
        if key.endswith("+accuracy_control"):
            return self.step_estimate(key[:-len("+accuracy_control")]) + \
                ACCURACY_CONTROL_EVALS * measure
        if "@epochs=" in key:
            name, _, n = key.rpartition("@epochs=")
            per_epoch = [max(v) / max(1, int(k.rpartition("=")[2]))
                         for k, v in self.step_s.items() if k.startswith(name + "@epochs=")]
            return (max(per_epoch) if per_epoch else TRAIN_EPOCH * measure) * max(1, int(n))
        return UNSEEN_STEP * measure

    def estimate(self, recipe: dict[str, Any]) -> float:
        """Seconds the trial of ``recipe`` will likely take: its steps and the measurement."""
        return sum(self.step_estimate(_step_key(st)) for st in recipe["steps"]) + \
            self.step_estimate("measure")

    def refusal(self, recipe: dict[str, Any], costs: tuple[str, ...],
                est: float) -> str | None:
        """Why a trial of ``recipe`` is not started under the time budget, or ``None``."""
        if self.deadline is None or self.time_s is None:
            return None
        left = self.left()
        if est > left:
            return f"estimated {est:.1f} s, {max(left, 0):.1f} s left in the time budget"
        cap = EXPENSIVE_SHARE * self.time_s
        if costs and self.expensive_s + est > cap:
            return (f"{'+'.join(costs)}: estimated {est:.1f} s; expensive trials may use "
                    f"{EXPENSIVE_SHARE:.0%} of the time budget ({cap:.0f} s), "
                    f"{self.expensive_s:.1f} s used")
        return None


class _Budget:
    """Stops the study after ``trials`` trials of this process that ran a recipe (a recipe
    drawn again costs nothing and does not count), or when the sampler has drawn only
    recipes already measured ``max(10, trials)`` times in a row (the space is spent);
    ``trials=None``: only the time budget stops it. With ``time_s``, it also stops before a
    trial that would likely overrun: when the time left (of ``time_s`` from ``t0``, less
    ``reserve_s`` for the end's confirmation) is under the median duration of the recipes run
    so far (Optuna's own timeout only stops *starting* trials once the time is spent)."""

    def __init__(self, trials: int | None, time_s: float | None = None,
                 t0: float | None = None, reserve_s: float = 0.0) -> None:
        self.trials, self.ran, self.repeats = trials, 0, 0
        self.time_s, self.t0, self.reserve_s = time_s, t0, reserve_s
        self.durations: list[float] = []
        self.stopped_early: str | None = None

    def __call__(self, study: Any, trial: Any) -> None:
        import statistics

        row = trial.user_attrs.get("row") or {}
        if "duplicate_of" in row or ("skipped" in row and "latency_p50_ms" not in row
                                     and "accuracy" not in row):
            self.repeats += 1  # a repeat, or a trial not run (no time for it): cost nothing
        else:
            self.ran, self.repeats = self.ran + 1, 0
            if trial.datetime_start and trial.datetime_complete:
                self.durations.append(
                    (trial.datetime_complete - trial.datetime_start).total_seconds())
        if self.trials is not None and (self.ran >= self.trials
                                        or self.repeats >= max(10, self.trials)):
            study.stop()
        if self.time_s is not None and self.durations:
            left = self.time_s - (time.perf_counter() - self.t0) - self.reserve_s
            typical = statistics.median(self.durations)
            if left < typical:
                self.stopped_early = (f"stopped {max(left, 0):.0f} s before the time budget: "
                                      f"a recipe takes {typical:.0f} s (median here)")
                study.stop()


#: a full garbage collection after a trial only when it costs at most this share of the time
#: since the last one (a young-generation collection after every trial)
GC_SHARE = 0.1


class _Collector:
    """After each trial: the garbage of its models and runtimes collected, a full collection
    at most GC_SHARE of the time (with torch and a runtime loaded one takes ~0.2 s, as long
    as a whole small trial: Optuna's ``gc_after_trial`` ran one every trial)."""

    def __init__(self) -> None:
        self.last, self.cost = time.perf_counter(), 0.0

    def __call__(self, study: Any, trial: Any) -> None:
        import gc

        t = time.perf_counter()
        if self.cost <= GC_SHARE * (t - self.last):
            gc.collect()
            self.last = time.perf_counter()
            self.cost = self.last - t
        else:
            gc.collect(1)


#: a worker gives up after this many of its trials were finished by another worker
MAX_LOST_TRIALS = 3


def _run_trials(study: Any, search: _Search, budget: _Budget, time_budget_s: float | None,
                t0: float) -> None:
    """``study.optimize`` until the budget stops it. When another worker finished a trial this
    process was running (it judged it stale: Optuna's heartbeat on another machine), that trial
    is lost and noted in the report, and the search goes on; repeatedly: SearchError."""
    import logging

    import optuna

    while True:
        left = None if time_budget_s is None else time_budget_s - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            return
        try:
            study.optimize(search, n_trials=None, timeout=left, catch=(mo.ModeloptError,),
                           callbacks=[search.after, budget, _Collector()])
            return
        except optuna.exceptions.UpdateFinishedTrialError as e:
            search.lost.append(f"a trial of worker {os.getpid()} was finished by another "
                               f"worker while it ran ({e}); it was not counted")
            logging.getLogger("modelopt_search.optimize").warning("optimize: %s", search.lost[-1])
            if len(search.lost) >= MAX_LOST_TRIALS:
                raise SearchError(
                    f"optimize: other workers finished {len(search.lost)} trials of this "
                    f"worker (pid {os.getpid()}) while they ran, judging them stale; check "
                    "that every worker's clock is right and that none is suspended for "
                    "minutes, then run again.") from e



def _step_key(st: dict[str, Any]) -> str:
    """The key a step's duration is kept under: ``export <format>``, or the component's
    name, with ``+accuracy_control`` (its ``max_accuracy_drop`` set) and ``@epochs=N``."""
    if "export" in st:
        return f"export {st['export']}"
    key = st["apply"]
    if st.get("max_accuracy_drop") is not None:
        key += "+accuracy_control"
    if isinstance(st.get("epochs"), int):
        key += f"@epochs={st['epochs']}"
    return key

