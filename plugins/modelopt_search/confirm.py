"""The end of a latency search: the fastest feasible candidates, and the fastest of every
target, re-timed side by side at the batch the trials were timed at (one trial's timing is
taken alone, on a noisy machine), each at the thread counts of :func:`_thread_counts`; the
fastest becomes the best (:func:`confirm`)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .report import _recipe_of
from .rows import ranked_rows
from .space import thread_option_of

if TYPE_CHECKING:
    from .trials import _Search

#: one run of the confirmation: (the trial's row, its recipe at one thread count, that count)
Run = tuple[dict[str, Any], dict[str, Any], "int | None"]

#: a latency search re-times this many of its fastest feasible candidates side by side at
#: the end (and the fastest of every target besides), and keeps their artifacts in memory
#: until then
CONFIRM_TOP = 4
#: the confirmation first times each run this many times (interleaved) and drops a thread
#: count of a trial slower than SCREEN_RATIO times that trial's fastest count
SCREEN_RUNS = 3
SCREEN_RATIO = 1.3
#: about how long (seconds) that side-by-side timing runs
CONFIRM_S = 6.0
#: pause before each timed block of the confirmation (spinning runtime threads go idle)
CONFIRM_PAUSE_S = 0.02
#: the least time (s) the end's side-by-side re-timing needs to run at all
MIN_CONFIRM_S = 1.0


class _NoTime(Exception):
    """The end's confirmation does not fit in what is left of the time budget."""


#: what :class:`_NoTime` says when the confirmation does not fit
TOO_LATE = ("no side-by-side re-timing at the end: {:.1f} s left of the time budget "
            "(the best is the fastest by its own trial's timing)")


def confirm(search: _Search, study: Any, rows: list[dict[str, Any]],
            saved: int | None = None,
            time_s: float | None = None) -> dict[str, Any] | None:
    """Re-time the contenders found by ``search`` (:func:`contenders`: the fastest feasible
    candidates and the fastest of every target) side by side at the trials' batch
    (:func:`timing_inputs`), in rotating interleaved blocks
    (:func:`.ab.interleaved_times`), each at every thread count of :func:`_thread_counts`
    (``threads`` halving down to 1, or the runtime's default and half the cores down to
    1: a small model often runs fastest on one) that a short first timing does not show
    slower than SCREEN_RATIO times the trial's fastest count, and make the fastest pair
    the best (``saved``: the trial in ``best/``, which competes too); ``search.ties`` gets
    each trial within noise of it (the bootstrap interval of the ratio of medians holds 1).
    Returns its row (``best.json`` and ``search.best_recipe`` get its thread count), or
    ``None`` when fewer than two runs are to compare. With ``time_s`` (what is left of
    the time budget) the timing is shortened to fit, and :class:`_NoTime` says so when
    not even a short one fits."""
    runs_of = _runs(search, study, rows, saved)
    if len(runs_of) < 2:
        return None
    runs_of, times = _time_runs(search, runs_of, time_s)
    return _pick_fastest(search, study, runs_of, times)


def _runs(search: _Search, study: Any, rows: list[dict[str, Any]],
          saved: int | None) -> list[Run]:
    """What the confirmation times: each contender (and ``saved``) at each thread count."""
    cands = [r for r in contenders(rows) if r["trial"] in search.artifacts]
    cands += [r for r in ranked_rows(rows, "objective")  # best/ competes
              if r["trial"] == saved and r["trial"] not in {c["trial"] for c in cands}]
    runs_of: list[Run] = []
    for r in cands:
        recipe = _recipe_of(study, r["trial"]) or {"backend": r["backend"],
                                                   "backend_options": {}}
        key = thread_option_of(recipe.get("target", search.target[0]), search.s.pm)
        counts = _thread_counts(search.threads) if key else [None]
        for n in counts:
            opts = dict(recipe.get("backend_options", {}))
            if n is not None:
                opts[key] = n
            runs_of.append((r, {**recipe, "backend_options": opts}, n))
    return runs_of


def _time_runs(search: _Search, runs_of: list[Run],
               time_s: float | None) -> tuple[list[Run], list[list[float]]]:
    """The runs a short first timing keeps (:func:`_screen`) and their interleaved timings
    (seconds per call), sized to what is left of ``time_s``; each runner closed after."""
    from .ab import interleaved_times

    xs = timing_inputs(search)
    runners = []
    start = time.perf_counter()
    if time_s is not None and time_s < MIN_CONFIRM_S:
        raise _NoTime(TOO_LATE.format(max(time_s, 0)))
    try:
        for r, recipe, _ in runs_of:
            runners.append(search.s.runner(recipe["backend"],
                                           artifact=search.artifacts[r["trial"]],
                                           **recipe["backend_options"]))
        keep, first = _screen(runners, runs_of, xs)
        runs_of = [runs_of[i] for i in keep]
        timed_runners = [runners[i] for i in keep]
        per_call = sum(first[i] for i in keep)
        length = CONFIRM_S
        if time_s is not None:  # what is left after building the runners
            length = min(length, time_s - (time.perf_counter() - start))
        # the pause lets a multi-threaded run's spinning threads go idle: at one thread
        # each there are none, and for a small model the pauses would be most of the time
        pause = CONFIRM_PAUSE_S if any(n is None or n > 1 for _, _, n in runs_of) else 0.0
        runs = _run_count(per_call, len(timed_runners), length, time_s is not None, pause)
        times = interleaved_times(timed_runners, xs, runs=runs, warmup=0, block=_block(runs),
                                  pause_s=pause)
    finally:
        for r in runners:
            r.close()
    return runs_of, times


def _screen(runners: list[Any], runs_of: list[Run],
            xs: tuple[Any, ...]) -> tuple[list[int], list[float]]:
    """A short first timing: a thread count far slower than the trial's fastest (one thread
    at a large batch) is not timed further. Returns the indices of the runs kept and every
    run's median seconds per call."""
    import statistics

    from .ab import interleaved_times

    first = [statistics.median(t) for t in interleaved_times(
        runners, xs, runs=SCREEN_RUNS, warmup=2, block=1)]
    fastest: dict[int, float] = {}
    for (r, _, _), t in zip(runs_of, first):
        fastest[r["trial"]] = min(t, fastest.get(r["trial"], t))
    keep = [i for i, ((r, _, _), t) in enumerate(zip(runs_of, first))
            if t <= SCREEN_RATIO * fastest[r["trial"]]]
    return keep, first


def _run_count(per_call: float, n_runners: int, length: float, budgeted: bool,
               pause_s: float = CONFIRM_PAUSE_S) -> int:
    """Timed calls per runner that fit in ``length`` seconds (20 to 300), for runners taking
    ``per_call`` seconds together per round; ``budgeted`` (under a time budget):
    :class:`_NoTime` when not even 20 fit."""

    def cost(runs: int) -> float:  # each block: a pause and an untimed call first
        blocks = -(-runs // _block(runs))
        return (runs + blocks) * per_call + blocks * n_runners * pause_s

    if budgeted and length < cost(20) + MIN_CONFIRM_S / 2:
        raise _NoTime(TOO_LATE.format(max(length, 0)))
    runs = max(20, min(300, int(length / max(per_call, 1e-6))))
    while runs > 20 and cost(runs) > length:
        runs = max(20, int(runs * 0.8))
    return runs


def _pick_fastest(search: _Search, study: Any, runs_of: list[Run],
                  times: list[list[float]]) -> dict[str, Any]:
    """The fastest run's row (saved as the best, at its thread count); ``search.confirmed``
    gets each trial's fastest count and ``search.ties`` the trials within noise of it."""
    import statistics

    from .ab import bootstrap_ratio_ci

    timed = sorted(((1e3 * statistics.median(t), r, recipe, n, t)
                    for t, (r, recipe, n) in zip(times, runs_of)),
                   key=lambda x: (x[0], x[1]["trial"]))
    search.confirmed, own = {}, {}
    for ms, r, _, n, t in timed:  # each trial's fastest count
        if r["trial"] not in search.confirmed:
            search.confirmed[r["trial"]], own[r["trial"]] = (ms, n), t
    ms, best, recipe, n, t_best = timed[0]
    search.ties = {}
    for trial, t in own.items():  # within noise of the best: a tie, said so
        if trial != best["trial"]:
            ratio, lo, hi = bootstrap_ratio_ci(t_best, t, n=1000)
            if lo <= 1.0:
                search.ties[trial] = (ratio, lo, hi)
    best.update(confirmed_p50_ms=ms, confirmed_threads=n)
    search.best_recipe = recipe
    with search.lock():
        search.save_best(study, best, recipe)
    return best


def timing_inputs(search: _Search) -> tuple[Any, ...]:
    """What the end's confirmation times: the example inputs tiled (or cut) to the
    latency profiler's ``batch_size`` where one is set, the batch the trials were timed
    at (the deployment's), else the example inputs as they are."""
    xs = tuple(search.s.example_inputs)
    n = (search.profiler_options.get("latency") or {}).get("batch_size")
    return tuple(_tiled(x, int(n)) for x in xs) if n else xs


def contenders(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials the end of a latency search re-times side by side: the CONFIRM_TOP fastest
    feasible ones by their own trial's timing, then the fastest feasible one of each backend
    not among them (one trial's timing is taken alone: a runtime a few percent behind by it
    may be ahead side by side). Trials timed on different Ray nodes (their ``node``) are
    ranked per node: timings of different machines are not compared with each other."""
    ranked = ranked_rows(rows, "objective")
    out: list[dict[str, Any]] = []
    for node in dict.fromkeys(r.get("node") for r in ranked):
        mine = [r for r in ranked if r.get("node") == node]
        top = mine[:CONFIRM_TOP]
        for r in mine[CONFIRM_TOP:]:
            if r.get("backend") not in {o.get("backend") for o in top}:
                top.append(r)
        out += top
    return sorted(out, key=ranked.index)


def _block(runs: int) -> int:
    """Timed calls per block of the end's confirmation, for ``runs`` calls per runner."""
    return max(1, min(20, runs // 10))


def _tiled(x: Any, n: int) -> Any:
    """A tensor's rows repeated (or cut) to ``n``, as the latency profiler's ``batch_size``
    tiles them; anything else as it is."""
    if not hasattr(x, "repeat") or getattr(x, "dim", lambda: 0)() == 0:
        return x
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n].contiguous()


def _thread_counts(threads: int | None, cores: int | None = None) -> list[int | None]:
    """The thread counts the confirmation tries: ``threads``, then halving down to 1; with no
    ``threads``, the runtime's own default (``None``), then half of ``cores`` (default: the
    cores this process may run on) halving down to 1."""
    out: list[int | None]
    if threads is None:
        if cores is None:
            try:
                cores = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cores = os.cpu_count() or 1
        out, n = [None], int(cores) // 2
    else:
        out, n = [], int(threads)
    while n >= 1:
        out.append(n)
        n //= 2
    return out
