"""``Session.optimize``: an Optuna search over recipes, each measured on the real runtime.

A trial draws a recipe (see :mod:`.space`), runs it on a fresh child Session built on the
user's original artifact (never mutated), rejects it early when a stage nothing can recover
from already misses the accuracy budget, then measures accuracy (the session's ``eval_fn``)
and the objective (latency, size or energy) with the registered profilers on the target
backend. After every trial ``trials.json``, the report and (when it improved) the best
artifact ``best/`` are written to ``out_dir``; a feasible recipe that prunes and ranks among
the fastest is followed by the same recipe pruned one step further, a precision step alone
that misses the budget by its variants (one choice option changed at a time). At the end
of a latency search the fastest few feasible candidates, and the fastest of every target,
are re-timed side by side at the batch the trials were timed at (one trial's timing is taken
alone, on a noisy machine) and the fastest of them becomes the best.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

import modelopt_core as mo

from .errors import SearchError
from .space import (
    check_target,
    describe_recipe,
    escalated_params,
    recipe_costs,
    repaired_params,
    sample_recipe,
    starting_recipes,
    target_spaces,
    thread_option_of,
)
from .space import targets as registry_targets
from .study import (
    best_row,
    claim_trial,
    open_study,
    pareto_rows,
    ranked_rows,
    storage_error,
    storage_errors,
    trial_rows,
    write_json,
)

__all__ = ["OBJECTIVES", "SearchResult", "optimize"]

#: objective -> (profiler, metric keys it may report, first found wins)
OBJECTIVES = {"latency": ("latency", ("latency_p50_ms",)),
              "size": ("size", ("size_mb",)),
              "energy": ("energy", ("joules_per_inference",))}

REPORT_COLUMNS = ["step", "state", "backend", "accuracy", "accuracy_delta", "latency_p50_ms",
                  "confirmed_p50_ms", "confirmed_threads", "speedup", "size_mb", "size_ratio",
                  "objective", "feasible", "pareto",
                  "recipe", "skipped"]

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


@attrs.define
class SearchResult:
    """What a search found: the best feasible artifact and recipe, the Pareto front, the
    report of every trial, the Optuna study and the output folder."""

    best: mo.ModelArtifact | None
    best_recipe: dict[str, Any] | None
    best_row: dict[str, Any] | None
    pareto: list[dict[str, Any]]
    report: mo.Report
    study: Any
    out_dir: Path


class _Search:
    def __init__(self, session: mo.Session, target: list[str], objective: str, max_drop: float,
                 space: dict[str, Any], out: Path, runtime_options: dict[str, Any],
                 profiler_options: dict[str, dict[str, Any]], threads: int | None) -> None:
        self.s, self.target, self.objective, self.max_drop = session, target, objective, max_drop
        self.space, self.out = space, out
        self.runtime_options = runtime_options
        self.profiler_options = profiler_options
        self.threads = threads
        self.best_recipe: dict[str, Any] | None = None  # the confirmed best's (its threads)
        self.baseline: dict[str, Any] = {}
        self.environment = _environment()  # the machine: described once, in every report
        self.artifacts: dict[int, mo.ModelArtifact] = {}  # the contenders found here
        self.confirmed: dict[int, tuple[float, int | None]] = {}  # the end: trial ->
        # (side-by-side p50 ms, at its fastest thread count)
        self.ties: dict[int, tuple[float, float, float]] = {}  # the end: trial -> (p50 ratio
        # to the best's, 95% CI) of each confirmed trial within noise of the best
        self.lost: list[str] = []  # trials of this process another worker finished
        #: target -> why: targets the original model cannot be exported to (later trials of
        #: them are skipped at once)
        self.dead_targets: dict[str, str] = {}
        # the time budget (see set_budget): the search's start and the time by which the
        # last trial must end (the end's reserve kept); None: no time budget
        self.t0 = time.perf_counter()
        self.time_s: float | None = None
        self.deadline: float | None = None
        self.step_s: dict[str, list[float]] = {}  # step key -> durations measured here
        self.expensive_s = 0.0  # time spent on expensive trials here
        self.skipped: list[str] = []  # trials not run, with why
        self.stop_reason: str | None = None

    # ---- the time budget ---------------------------------------------------------------

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

    # ---- one trial -------------------------------------------------------------------

    def child(self) -> mo.Session:
        s = self.s
        return mo.Session(s.original, s.example_inputs, calibration_data=s.calibration_data,
                          train_data=s.train_data, eval_fn=s.eval_fn, task_loss=s.task_loss,
                          device=s.device,
                          plugins=s.pm, progress=False)

    def profilers(self) -> list[str]:
        names = ["accuracy", "latency", "size"]
        if self.objective == "energy":
            names.append("energy")
        return names

    def metric(self, row: dict[str, Any]) -> float:
        keys = OBJECTIVES[self.objective][1]
        for k in keys:
            if isinstance(row.get(k), (int, float)):
                return float(row[k])
        raise SearchError(f"optimize: objective {self.objective!r}: the "
                          f"{OBJECTIVES[self.objective][0]!r} profiler reported none of "
                          f"{list(keys)}: {_why(row)}")

    def measure(self, s: mo.Session, art: mo.ModelArtifact, backend: str,
                options: dict[str, Any], short: bool = False) -> dict[str, Any]:
        """The trial's figures; ``short`` (the deadline is near): the latency timed for a
        quarter of its usual time, with a single warm-up call."""
        popts = self.profiler_options
        if short and "latency" in popts:
            lat = dict(popts["latency"])
            lat["min_time_s"] = float(lat.get("min_time_s", 0.2)) / 4
            lat["warmup"] = 1
            popts = {**popts, "latency": lat}
        rep = s.compare(backends=[backend], profilers=self.profilers(), artifacts=[art],
                        backend_options={backend: options},
                        profiler_options=popts)
        row = dict(rep.rows[0])
        if row.get("error") and "accuracy" not in row:
            raise mo.StepError(f"optimize: measuring on {backend!r} failed: {row['error']}")
        return row

    def torch_accuracy(self, s: mo.Session) -> float:
        with s.runner("torch") as r:
            return float(s.eval_fn(r))

    def __call__(self, trial: Any) -> tuple[float, float]:
        import optuna

        claim_trial(trial)  # first: from now on no other worker takes it for a dead one's
        recipe = sample_recipe(trial, self.target, self.space, self.s.pm,
                               self.runtime_options, max_drop=self.max_drop)
        trial.set_user_attr("recipe", recipe)
        base_acc = self.baseline["accuracy"]
        row: dict[str, Any] = {"step": f"trial {trial.number}", "backend": recipe["backend"],
                               "recipe": describe_recipe(recipe, self.s.pm)}
        trial.set_user_attr("row", row)  # a trial that fails still shows its recipe
        earlier = _same_recipe(trial, recipe)
        if earlier is not None:  # the sampler drew a recipe already measured: reuse it
            row = {**earlier.user_attrs["row"], "step": f"trial {trial.number}",
                   "duplicate_of": earlier.number}
            trial.set_constraint("accuracy_drop", float(earlier.constraints["accuracy_drop"]))
            trial.set_user_attr("row", _plain(row))
            return float(earlier.values[0]), float(earlier.values[1])
        costs = recipe_costs(recipe, self.s.pm)
        est = self.estimate(recipe)
        row["estimated_s"] = round(est, 2)
        why = self.refusal(recipe, costs, est)
        if why is not None:  # not started: it would overrun the budget (or its share)
            row.update(skipped=why, feasible=False)
            trial.set_user_attr("row", row)
            self.skipped.append(f"trial {trial.number} ({row['recipe']}): {why}")
            if not costs:  # nothing cheaper is left to try in the time left
                self.stop_reason = f"stopped before the time budget: trial {trial.number} {why}"
                trial.study.stop()
            raise optuna.TrialPruned(why)
        started = time.perf_counter()
        try:
            return self.run(trial, recipe, row, base_acc)
        finally:
            if costs:
                self.expensive_s += time.perf_counter() - started

    def run(self, trial: Any, recipe: dict[str, Any], row: dict[str, Any],
            base_acc: float) -> tuple[float, float]:
        import optuna

        s = self.child()
        steps = recipe["steps"]
        dead = self.dead_targets.get(recipe.get("target", ""))
        if dead:  # its plain export failed: nothing of this model reaches that runtime
            row.update(skipped=dead, feasible=False)
            trial.set_user_attr("row", row)
            raise optuna.TrialPruned(dead)
        for i, st in enumerate(steps):
            key = _step_key(st)
            if self.step_estimate(key) > self.left():  # the deadline, between steps
                why = (f"out of time before {key}: estimated {self.step_estimate(key):.1f} s, "
                       f"{max(self.left(), 0):.1f} s left")
                row.update(skipped=why, feasible=False)
                trial.set_user_attr("row", row)
                self.skipped.append(f"trial {trial.number} ({row['recipe']}): {why}")
                self.stop_reason = f"stopped before the time budget: trial {trial.number} {why}"
                trial.study.stop()
                raise optuna.TrialPruned(why)
            st = dict(st)
            before = s.current
            t = time.perf_counter()
            try:
                if "export" in st:
                    s.export(st.pop("export"), **st)
                else:
                    s.apply(st.pop("apply"), **st)
            except mo.ModeloptError as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                trial.set_user_attr("row", row)
                if i == 0 and "export" in steps[0]:  # the original itself does not export
                    self.dead_targets[recipe.get("target", "")] = (
                        f"target {recipe.get('target')!r} skipped: the original model does not "
                        f"export to it (trial {trial.number}: {row['error'][:160]})")
                raise
            self.record(key, time.perf_counter() - t)
            if _unchanged(before, s.current):  # the recipe without this step is in the space
                row.update(no_op=steps[i]["apply"], feasible=False)
                trial.set_user_attr("row", row)
                raise optuna.TrialPruned(f"{steps[i]['apply']} left the model unchanged")
            lossy = s.current.format == "torch" and "apply" in steps[i]
            recoverable = any(_stage(x.get("apply"), s.pm) == "recover"
                              for x in steps[i + 1:])
            # early rejection: nothing later wins it back (the last step is measured anyway)
            if lossy and not recoverable and i < len(steps) - 1:
                acc = self.torch_accuracy(s)
                if base_acc - acc > self.max_drop:
                    row.update(accuracy=acc, pruned_at=steps[i]["apply"], feasible=False)
                    trial.set_user_attr("row", row)
                    raise optuna.TrialPruned(
                        f"{steps[i]['apply']} drops accuracy {base_acc - acc:.2f} points "
                        f"(> {self.max_drop})")
        art = s.current
        t = time.perf_counter()
        row.update(self.measure(s, art, recipe["backend"], recipe["backend_options"],
                                short=self.step_estimate("measure") > self.left()))
        self.record("measure", time.perf_counter() - t)
        row["step"] = f"trial {trial.number}"
        row["lineage"] = [st.component for st in art.lineage]
        value = self.metric(row)
        drop = base_acc - row["accuracy"]
        row.update(objective=value, accuracy_drop=round(drop, 6),
                   feasible=bool(drop <= self.max_drop + 1e-9))
        trial.set_constraint("accuracy_drop", float(drop - self.max_drop - 1e-9))  # <= 0: ok
        trial.set_user_attr("row", _plain(row))
        self.artifacts[trial.number] = art  # `after` keeps the contenders'
        return float(row["accuracy"]), value

    # ---- after each trial ---------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Workers on this host take turns writing ``out_dir``."""
        import fcntl

        with open(self.out / ".search.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def after(self, study: Any, trial: Any) -> None:
        with self.lock():
            rows = trial_rows(study)
            top = ranked_rows(rows, "objective")[:CONFIRM_TOP]
            kept = {r["trial"] for r in contenders(rows)}
            self.artifacts = {n: a for n, a in self.artifacts.items() if n in kept}
            if top and top[0]["trial"] == trial.number:  # a new best: saved now
                self.save_best(study, top[0])
            self.write(study, rows)
        # step by step: a competitive pruned recipe that held the budget is tried pruned
        # one step further; a precision step alone that missed it is tried with each of its
        # choice options changed in turn (each skipped when that recipe was already drawn)
        space = self.space[trial.params.get("target", self.target[0])]
        queue: list[dict[str, Any]] = []
        if trial.number in {r["trial"] for r in top}:
            queue = [p for p in [escalated_params(trial.params, space, self.s.pm)] if p]
        elif trial.state.name == "COMPLETE" and not (trial.user_attrs.get("row") or {}).get(
                "feasible", True):
            queue = repaired_params(trial.params, space, self.s.pm)
        for params in queue:
            study.enqueue_trial(params, skip_if_exists=True)

    def save_best(self, study: Any, row: dict[str, Any],
                  recipe: dict[str, Any] | None = None) -> None:
        self.artifacts[row["trial"]].save(self.out / "best", overwrite=True,
                                            plugins=self.s.pm)
        write_json(self.out / "best.json", {
            "trial": row["trial"], "row": row,
            "recipe": recipe or _recipe_of(study, row["trial"])})

    # ---- at the end ---------------------------------------------------------------------

    def load_saved_best(self, rows: list[dict[str, Any]]) -> int | None:
        """Put ``best/`` in memory when ``best.json`` names a feasible trial whose artifact
        is not (an earlier run's, or another worker's); returns that trial's number. Both are
        read under the lock: another worker replaces them together under it."""
        with self.lock():
            return self._load_saved_best(rows)

    def _load_saved_best(self, rows: list[dict[str, Any]]) -> int | None:
        import json

        try:
            saved = json.loads((self.out / "best.json").read_text())["trial"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not any(r["trial"] == saved for r in ranked_rows(rows, "objective")):
            return None
        if saved not in self.artifacts and (self.out / "best").exists():
            orig = self.s.original
            self.artifacts[saved] = mo.load_artifact(
                self.out / "best", model=orig.model if orig.format == "torch" else None,
                plugins=self.s.pm)
        return saved

    def timing_inputs(self) -> tuple[Any, ...]:
        """What the end's confirmation times: the example inputs tiled (or cut) to the
        latency profiler's ``batch_size`` where one is set, the batch the trials were timed
        at (the deployment's), else the example inputs as they are."""
        xs = tuple(self.s.example_inputs)
        n = (self.profiler_options.get("latency") or {}).get("batch_size")
        return tuple(_tiled(x, int(n)) for x in xs) if n else xs

    def confirm(self, study: Any, rows: list[dict[str, Any]],
                saved: int | None = None,
                time_s: float | None = None) -> dict[str, Any] | None:
        """Re-time the contenders found here (:func:`contenders`: the fastest feasible
        candidates and the fastest of every target) side by side at the trials' batch
        (:meth:`timing_inputs`), in rotating interleaved blocks
        (:func:`.ab.interleaved_times`), each at every thread count of :func:`_thread_counts`
        (``threads`` halving down to 1, or the runtime's default and half the cores down to
        1: a small model often runs fastest on one) that a short first timing does not show
        slower than SCREEN_RATIO times the trial's fastest count, and make the fastest pair
        the best (``saved``: the trial in ``best/``, which competes too); ``ties`` gets each
        trial within noise of it (the bootstrap interval of the ratio of medians holds 1).
        Returns its row (``best.json`` and ``best_recipe`` get its thread count), or
        ``None`` when fewer than two runs are to compare. With ``time_s`` (what is left of
        the time budget) the timing is shortened to fit, and :class:`_NoTime` says so when
        not even a short one fits."""
        import statistics

        from .ab import bootstrap_ratio_ci, interleaved_times

        cands = [r for r in contenders(rows) if r["trial"] in self.artifacts]
        cands += [r for r in ranked_rows(rows, "objective")  # best/ competes
                  if r["trial"] == saved and r["trial"] not in {c["trial"] for c in cands}]
        runs_of: list[tuple[dict[str, Any], dict[str, Any], int | None]] = []
        for r in cands:
            recipe = _recipe_of(study, r["trial"]) or {"backend": r["backend"],
                                                       "backend_options": {}}
            key = thread_option_of(recipe.get("target", self.target[0]), self.s.pm)
            counts = _thread_counts(self.threads) if key else [None]
            for n in counts:
                opts = dict(recipe.get("backend_options", {}))
                if n is not None:
                    opts[key] = n
                runs_of.append((r, {**recipe, "backend_options": opts}, n))
        if len(runs_of) < 2:
            return None
        xs = self.timing_inputs()
        runners = []
        start = time.perf_counter()
        too_late = ("no side-by-side re-timing at the end: {:.1f} s left of the time budget "
                    "(the best is the fastest by its own trial's timing)")
        if time_s is not None and time_s < MIN_CONFIRM_S:
            raise _NoTime(too_late.format(max(time_s, 0)))
        try:
            for r, recipe, _ in runs_of:
                runners.append(self.s.runner(recipe["backend"],
                                             artifact=self.artifacts[r["trial"]],
                                             **recipe["backend_options"]))
            # a short first timing: a thread count far slower than the trial's fastest
            # (one thread at a large batch) is not timed further
            first = [statistics.median(t) for t in interleaved_times(
                runners, xs, runs=SCREEN_RUNS, warmup=2, block=1)]
            fastest: dict[int, float] = {}
            for (r, _, _), t in zip(runs_of, first):
                fastest[r["trial"]] = min(t, fastest.get(r["trial"], t))
            keep = [i for i, ((r, _, _), t) in enumerate(zip(runs_of, first))
                    if t <= SCREEN_RATIO * fastest[r["trial"]]]
            runs_of = [runs_of[i] for i in keep]
            timed_runners = [runners[i] for i in keep]
            per_call = sum(first[i] for i in keep)

            def cost(runs: int) -> float:  # each block: a pause and an untimed call first
                blocks = -(-runs // _block(runs))
                return (runs + blocks) * per_call + blocks * len(timed_runners) * \
                    CONFIRM_PAUSE_S

            length = CONFIRM_S
            if time_s is not None:  # what is left after building the runners
                length = min(length, time_s - (time.perf_counter() - start))
                if length < cost(20) + MIN_CONFIRM_S / 2:
                    raise _NoTime(too_late.format(max(length, 0)))
            runs = max(20, min(300, int(length / max(per_call, 1e-6))))
            while runs > 20 and cost(runs) > length:
                runs = max(20, int(runs * 0.8))
            block = _block(runs)
            times = interleaved_times(timed_runners, xs, runs=runs, warmup=0, block=block,
                                      pause_s=CONFIRM_PAUSE_S)
        finally:
            for r in runners:
                r.close()
        timed = sorted(((1e3 * statistics.median(t), r, recipe, n, t)
                        for t, (r, recipe, n) in zip(times, runs_of)),
                       key=lambda x: (x[0], x[1]["trial"]))
        self.confirmed, own = {}, {}
        for ms, r, _, n, t in timed:  # each trial's fastest count
            if r["trial"] not in self.confirmed:
                self.confirmed[r["trial"]], own[r["trial"]] = (ms, n), t
        ms, best, recipe, n, t_best = timed[0]
        self.ties = {}
        for trial, t in own.items():  # within noise of the best: a tie, said so
            if trial != best["trial"]:
                ratio, lo, hi = bootstrap_ratio_ci(t_best, t, n=1000)
                if lo <= 1.0:
                    self.ties[trial] = (ratio, lo, hi)
        best.update(confirmed_p50_ms=ms, confirmed_threads=n)
        self.best_recipe = recipe
        with self.lock():
            self.save_best(study, best, recipe)
        return best

    def write(self, study: Any, rows: list[dict[str, Any]],
              notes: list[str] | None = None) -> mo.Report:
        """trials.json (every trial, repeats included) and report.md/.json/.html (the recipes
        run: a repeat's row is its first draw's measurement again) with ``notes``."""
        keys = ("objective", "size_mb") if self.objective != "size" else ("objective",)
        for r in rows:
            if r["trial"] in self.confirmed:
                ms, n = self.confirmed[r["trial"]]
                r["confirmed_p50_ms"] = round(ms, 6)
                if n is not None:
                    r["confirmed_threads"] = n
        front = {r["trial"] for r in pareto_front(rows, keys)}
        for r in rows:
            r["pareto"] = r["trial"] in front
        write_json(self.out / "trials.json", {
            "study": study.study_name, "target": self.target, "objective": self.objective,
            "max_accuracy_drop": self.max_drop, "baseline": self.baseline, "trials": rows})
        listed = [r for r in rows if "duplicate_of" not in r]
        notes = list(notes or [])
        if len(listed) < len(rows):
            notes.append(f"{len(rows) - len(listed)} later draws of recipes already measured "
                         f"are not listed (trials.json has them, with duplicate_of)")
        report = mo.Report([self.baseline] + listed,
                           title=f"modelopt optimize: {'/'.join(self.target)}, "
                                 f"{self.objective}, "
                                 f"accuracy drop <= {self.max_drop:g}",
                           environment=self.environment,
                           notes={"search": notes} if notes else None, plugins=self.s.pm)
        cols = report_columns(report, self.s.pm)
        report.to_markdown(self.out / "report.md", columns=cols)
        report.to_json(self.out / "report.json")
        try:
            report.to_html(self.out / "report.html", title=report.title)
        except Exception as e:  # noqa: BLE001 (the HTML page is a view: never lose a trial over it)
            (self.out / "report.html.error").write_text(f"{type(e).__name__}: {e}\n")
        return report


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


#: a worker gives up after this many of its trials were finished by another worker
MAX_LOST_TRIALS = 3


#: the least time (s) the end's side-by-side re-timing needs to run at all
MIN_CONFIRM_S = 1.0


class _NoTime(Exception):
    """The end's confirmation does not fit in what is left of the time budget."""


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
                           callbacks=[search.after, budget], gc_after_trial=True)
            return
        except optuna.exceptions.UpdateFinishedTrialError as e:
            search.lost.append(f"a trial of worker {os.getpid()} was finished by another "
                               f"worker while it ran ({e}); it was not counted")
            logging.getLogger(__name__).warning("optimize: %s", search.lost[-1])
            if len(search.lost) >= MAX_LOST_TRIALS:
                raise SearchError(
                    f"optimize: other workers finished {len(search.lost)} trials of this "
                    f"worker (pid {os.getpid()}) while they ran, judging them stale; check "
                    "that every worker's clock is right and that none is suspended for "
                    "minutes, then run again.") from e


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


def report_columns(report: mo.Report, pm: Any) -> list[str]:
    """The search tables' columns: :data:`REPORT_COLUMNS` that the rows have, and before
    ``objective`` every table column a third-party profiler declares (``Profiler.columns``,
    from a plugin outside modelopt-core) that the rows have: its metric shows in report.md and
    the terminal table as the built-ins do."""
    cols = [c for c in REPORT_COLUMNS if c in report.all_columns]
    extra = [c.name for info in pm.components("profiler")
             if info.distribution != mo.CORE_DISTRIBUTION for c in info.cls.columns
             if c.table and c.name in report.all_columns and c.name not in cols]
    at = cols.index("objective") if "objective" in cols else len(cols)
    return cols[:at] + extra + cols[at:]


def _stage(name: str | None, pm: Any) -> str | None:
    """The declared ``stage`` of optimizer ``name`` (None for an export step or an unknown
    name)."""
    if not name:
        return None
    try:
        return pm.get("optimizer", name).cls.stage
    except mo.ModeloptError:
        return None


def contenders(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials the end of a latency search re-times side by side: the CONFIRM_TOP fastest
    feasible ones by their own trial's timing, then the fastest feasible one of each backend
    not among them (one trial's timing is taken alone: a runtime a few percent behind by it
    may be ahead side by side)."""
    ranked = ranked_rows(rows, "objective")
    out = ranked[:CONFIRM_TOP]
    for r in ranked[CONFIRM_TOP:]:
        if r.get("backend") not in {o.get("backend") for o in out}:
            out.append(r)
    return out


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


def _same_recipe(trial: Any, recipe: dict[str, Any]) -> Any:
    """An earlier complete trial of the study that ran exactly ``recipe``, or ``None``."""
    import optuna

    recipe = _plain(recipe)  # as the storage holds it (tuples come back as lists)
    for t in trial.study.get_trials(deepcopy=False,
                                    states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("recipe") == recipe and "accuracy_drop" in (t.constraints or {}) \
                and "duplicate_of" not in t.user_attrs.get("row", {}):
            return t
    return None


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


def _unchanged(before: mo.ModelArtifact, after: mo.ModelArtifact) -> bool:
    """True when a step on a torch artifact left its weights and structure as they were
    (e.g. pruning whose importance scores all tied, so no channel went)."""
    import torch

    if before.format != "torch" or after.format != "torch":
        return False
    a, b = before.model.state_dict(), after.model.state_dict()
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])
        for k in a) and str(before.model) == str(after.model)


def _why(row: dict[str, Any]) -> str:
    said = {k: v for k, v in row.items() if k == "error" or k.startswith("energy")}
    return f"{said}" if said else "it reported nothing for it"


def _environment() -> dict[str, Any]:
    from modelopt_core import describe_environment

    return describe_environment()


def _plain(v: Any) -> Any:
    import json

    return json.loads(json.dumps(v, default=str))


def pareto_front(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The Pareto rows, ranking latency by the end-of-search side-by-side re-timing where a
    row has one (``confirmed_p50_ms``, what picked the best) and by its trial's own timing
    otherwise: the chosen best is then on the front it is reported with."""
    view = {r["trial"]: r for r in rows}
    front = pareto_rows([{**r, "objective": r["confirmed_p50_ms"]}
                         if "confirmed_p50_ms" in r and r.get("objective") is not None else r
                         for r in rows], keys)
    return [view[r["trial"]] for r in front]


def _recipe_of(study: Any, number: int) -> dict[str, Any] | None:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t.user_attrs.get("recipe")
    return None


def optimize(session: mo.Session, target: str | list[str] = "onnxruntime",
             objective: str = "latency",
             max_accuracy_drop: float = 1.0, budget_trials: int | None = 20,
             time_budget_s: float | None = None, space: dict[str, Any] | None = None,
             storage: str | None = None, study_name: str | None = None,
             out_dir: str | Path | None = None, seed: int = 0,
             runtime_options: dict[str, Any] | None = None,
             profiler_options: dict[str, dict[str, Any]] | None = None,
             threads: int | None = None) -> SearchResult:
    """Search recipes for ``target`` minimizing ``objective`` within ``max_accuracy_drop``
    points of ``eval_fn``; see :meth:`modelopt_core.Session.optimize`."""

    if session.eval_fn is None:
        raise SearchError("optimize: the session needs eval_fn (callable(runner) -> float, "
                          "higher is better) to hold the accuracy budget.")
    if objective not in OBJECTIVES:
        raise SearchError(f"optimize: objective must be one of {sorted(OBJECTIVES)}, got "
                          f"{objective!r}.")
    t0 = time.perf_counter()  # the time budget covers all of it, the baseline included
    if budget_trials is None and time_budget_s is None:
        raise SearchError("optimize: give budget_trials and/or time_budget_s, or the search "
                          "never ends.")
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or max_accuracy_drop < 0:
        raise SearchError(f"optimize: max_accuracy_drop must be a number >= 0, got "
                          f"{max_accuracy_drop!r}.")
    if target == "all":  # every runtime available here (the registry's targets)
        target = sorted(registry_targets(session.pm))
    targets = [target] if isinstance(target, str) else list(target)
    if not targets or len(set(targets)) != len(targets):
        raise SearchError(f"optimize: target must name one runtime or list distinct ones, "
                          f"got {target!r}.")
    for t in targets:
        check_target(t, session.pm)
    full = target_spaces(targets, space, session.pm, session.train_data is not None)
    tname = "+".join(targets)
    out = Path(out_dir or f"modelopt-search-{tname}-{objective}")
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{out.resolve()}/study.db"
    name = study_name or f"modelopt-{tname}-{objective}"
    ro = dict(runtime_options or {})
    rt = {}
    for t in targets:  # runtime_options: flat (one target) or keyed by target
        rt[t] = dict(ro.get(t, {}) if set(ro) <= set(registry_targets(session.pm)) and ro else ro)
        key = thread_option_of(t, session.pm)
        if threads is not None and key:
            rt[t][key] = threads
    popts = {"latency": {"min_time_s": 0.2, "warmup": 5}, **(profiler_options or {})}
    search = _Search(session, targets, objective, float(max_accuracy_drop), full, out, rt,
                     popts, threads)
    study = open_study(storage, name, seed, ["maximize", "minimize"])
    try:
        return _search(session, search, study, full, targets, objective, budget_trials,
                       time_budget_s, threads, t0)
    except storage_errors() as e:  # the storage failed mid-search (a damaged file...)
        raise storage_error(storage, e) from e


def _search(session: mo.Session, search: _Search, study: Any, full: dict[str, Any],
            targets: list[str], objective: str, budget_trials: int | None,
            time_budget_s: float | None, threads: int | None, t0: float) -> SearchResult:
    """The search itself, on the opened study (see :func:`optimize`); ``t0``: when the
    call began (the time budget counts from there)."""
    out = search.out
    # the end's reserve: the confirmation (latency) and the final report
    reserve = WRITE_S + (2 * CONFIRM_S if objective == "latency" else 0.0)
    if time_budget_s is not None:
        reserve = min(reserve, END_SHARE * time_budget_s)
    search.set_budget(t0, time_budget_s, reserve)
    if "baseline" not in study.user_attrs:
        t = time.perf_counter()
        base = search.measure(session, session.original, "torch",
                              {thread_option_of("torch", session.pm): threads}
                              if threads else {})
        base["step"] = "original (torch fp32)"
        search.metric(base)  # fails fast when the objective cannot be measured here
        study.set_user_attr("baseline", _plain(base))
        study.set_user_attr("baseline_s", time.perf_counter() - t)
        if not study.trials:
            for params in starting_recipes(full, session.pm, targets):
                study.enqueue_trial(params, skip_if_exists=True)
    search.baseline = dict(study.user_attrs["baseline"])
    # the first estimate of a measurement: the baseline's (a resumed study: as stored)
    search.record("measure", float(study.user_attrs.get("baseline_s", 1.0)))
    budget = _Budget(budget_trials, time_budget_s, t0, reserve_s=reserve)
    _run_trials(study, search, budget,
                None if time_budget_s is None else time_budget_s - reserve, t0)
    rows = trial_rows(study)
    best = best_row(rows, "objective")
    saved = search.load_saved_best(rows)  # an earlier run's or another worker's best/
    winner = None
    confirm_note = None
    if objective == "latency" and best is not None:
        time_s = None if time_budget_s is None else \
            t0 + time_budget_s - WRITE_S - time.perf_counter()
        try:
            winner = search.confirm(study, rows, saved, time_s=time_s)
        except _NoTime as e:
            confirm_note = str(e)
    with search.lock():  # the newest rows: other workers may have finished trials meanwhile
        rows = trial_rows(study)
        if best is not None:
            best = next(r for r in rows if r["trial"] == (winner or best)["trial"])
        notes = [f"{len(rows)} trials in the study, {time.perf_counter() - t0:.0f} s here"
                 + (f" (time budget {time_budget_s:g} s)" if time_budget_s else "")]
        if search.stop_reason:
            notes.append(search.stop_reason)
        elif budget.stopped_early:
            notes.append(budget.stopped_early)
        if search.skipped:
            notes.append(f"{len(search.skipped)} trials not run for the time budget: "
                         + "; ".join(search.skipped[:8])
                         + ("; ..." if len(search.skipped) > 8 else ""))
        if confirm_note:
            notes.append(confirm_note)
        notes += search.lost + sorted(set(search.dead_targets.values()))
        if search.confirmed and best is not None:
            batch = (search.profiler_options.get("latency") or {}).get("batch_size")
            notes.append(
                "re-timed side by side at the end (p50 ms"
                + (f" at batch {batch}" if batch else "")
                + " at each trial's fastest thread count): "
                + ", ".join(f"trial {n} {ms:.4g}"
                            + (f" ({k} thread{'s' if k != 1 else ''})" if k else "")
                            for n, (ms, k) in sorted(search.confirmed.items(),
                                                     key=lambda kv: kv[1][0]))
                + f"; best: trial {best['trial']}"
                + ("; within noise of it (a tie): " + ", ".join(
                    f"trial {n} (p50 ratio {r:.3f}, 95% CI {lo:.3f}-{hi:.3f})"
                    for n, (r, lo, hi) in search.ties.items()) if search.ties else ""))
        # (the confirmed figures go on the rows here)
        report = search.write(study, rows, notes)
    keys = ("objective", "size_mb") if objective != "size" else ("objective",)
    art = search.artifacts.get(best["trial"]) if best is not None else None
    recipe = search.best_recipe or (_recipe_of(study, best["trial"]) if best else None)
    return SearchResult(best=art, best_recipe=recipe,
                        best_row=best, pareto=pareto_front(rows, keys), report=report,
                        study=study, out_dir=out)
