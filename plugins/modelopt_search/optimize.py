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

The work is shared among this package's modules: :mod:`.trials` (the trial runner),
:mod:`.budget` (the time budget), :mod:`.confirm` (the end's side-by-side re-timing) and
:mod:`.report` (the reports); this module holds the entry point and re-exports their names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs

import modelopt_core as mo
from modelopt_core.outputs import FINAL, link_folder

from .budget import (  # noqa: F401 (re-exported: importable from here as before)
    ACCURACY_CONTROL_EVALS,
    END_SHARE,
    EXPENSIVE_SHARE,
    MAX_LOST_TRIALS,
    TRAIN_EPOCH,
    UNSEEN_STEP,
    WRITE_S,
    _Budget,
    _run_trials,
    _step_key,
)
from .confirm import (  # noqa: F401 (re-exported)
    CONFIRM_PAUSE_S,
    CONFIRM_S,
    CONFIRM_TOP,
    MIN_CONFIRM_S,
    SCREEN_RATIO,
    SCREEN_RUNS,
    _block,
    _NoTime,
    _thread_counts,
    _tiled,
    confirm,
    contenders,
)
from .errors import SearchError
from .report import (  # noqa: F401 (re-exported)
    REPORT_COLUMNS,
    _plain,
    _recipe_of,
    end_notes,
    pareto_front,
    report_columns,
)
from .space import check_target, starting_recipes, target_spaces, thread_option_of
from .space import targets as registry_targets
from .study import best_row, open_study, storage_error, storage_errors, trial_rows
from .trials import (  # noqa: F401 (re-exported)
    OBJECTIVES,
    _environment,
    _same_recipe,
    _Search,
    _stage,
    _unchanged,
    _why,
)

__all__ = ["OBJECTIVES", "SearchResult", "optimize"]


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


def optimize(session: mo.Session, target: str | list[str] = "onnxruntime",
             objective: str = "latency",
             max_accuracy_drop: float = 1.0, budget_trials: int | None = 20,
             time_budget_s: float | None = None, space: dict[str, Any] | None = None,
             storage: str | None = None, study_name: str | None = None,
             out_dir: str | Path | None = None, seed: int = 0,
             runtime_options: dict[str, Any] | None = None,
             profiler_options: dict[str, dict[str, Any]] | None = None,
             threads: int | None = None, profilers: list[str] | None = None,
             step_cache: Any = None,
             executor: str = "local", ray_address: str | None = None,
             ray_workers: int | None = None) -> SearchResult:
    """Search recipes for ``target`` minimizing ``objective`` within ``max_accuracy_drop``
    points of ``eval_fn``; see :meth:`modelopt_core.Session.optimize`. ``executor="ray"``:
    the trials run on the Ray cluster at ``ray_address`` (None: ``RAY_ADDRESS``, a cluster
    ``ray start`` runs here, else a new local one), ``ray_workers`` worker slots (default:
    the nodes' CPUs / ``threads``); see :mod:`.ray_search`. ``profilers``: the
    profilers every trial runs besides the search's own (accuracy, latency, size); None:
    every available profiler an installed plugin outside modelopt-core registers, so its
    columns reach the tables. ``step_cache``: the folder of the steps trials share (see
    :class:`modelopt_core.StepCache`; False: none); default: the session's, else
    ``out_dir/step-cache``."""

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
    source = session.original.format  # torch; an ONNX file's original is onnx
    if target == "all":  # every runtime available here that takes the original
        target = sorted(registry_targets(session.pm, source))
    targets = [target] if isinstance(target, str) else list(target)
    if not targets or len(set(targets)) != len(targets):
        raise SearchError(f"optimize: target must name one runtime or list distinct ones, "
                          f"got {target!r}.")
    for t in targets:
        check_target(t, session.pm, source)
    said: list[str] = []
    full = target_spaces(targets, space, session.pm, session.train_data is not None, source,
                         said)
    tname = "+".join(targets)
    out = Path(out_dir or f"modelopt-search-{tname}-{objective}")
    out.mkdir(parents=True, exist_ok=True)
    cluster = _cluster(executor, ray_address)
    storage = storage or f"sqlite:///{out.resolve()}/study.db"
    try:
        return _optimize(session, cluster, ray_workers, targets, objective, max_accuracy_drop,
                         budget_trials, time_budget_s, full, said, out, storage, study_name,
                         seed, runtime_options, profiler_options, threads, profilers,
                         step_cache, t0)
    finally:
        if cluster is not None:
            cluster.close()


def _cluster(executor: str, address: str | None) -> Any:
    """The Ray cluster the trials run on (``executor="ray"``), or None (this process)."""
    if executor not in ("local", "ray"):
        raise SearchError(f"optimize: executor must be 'local' or 'ray', got {executor!r}.")
    if executor == "local":
        if address is not None:
            raise SearchError("optimize: ray_address needs executor='ray'.")
        return None
    from .ray_cluster import connect

    return connect(address)


def _optimize(session: mo.Session, cluster: Any, ray_workers: int | None,
              targets: list[str], objective: str, max_accuracy_drop: float,
              budget_trials: int | None, time_budget_s: float | None, full: dict[str, Any],
              said: list[str], out: Path, storage: str, study_name: str | None, seed: int,
              runtime_options: dict[str, Any] | None,
              profiler_options: dict[str, dict[str, Any]] | None, threads: int | None,
              profilers: list[str] | None, step_cache: Any, t0: float) -> SearchResult:
    """:func:`optimize` once its arguments are checked; ``cluster``: the Ray cluster the
    trials run on (None: this process)."""
    here = True  # every worker runs on this machine
    if cluster is not None:
        from .ray_cluster import check_storage

        here = check_storage(cluster, storage, out)
    source = session.original.format
    tname = "+".join(targets)
    name = study_name or f"modelopt-{tname}-{objective}"
    ro = dict(runtime_options or {})
    rt = {}
    for t in targets:  # runtime_options: flat (one target) or keyed by target
        rt[t] = dict(ro.get(t, {}) if set(ro) <= set(registry_targets(session.pm, source))
                     and ro else ro)
        key = thread_option_of(t, session.pm)
        if threads is not None and key:
            rt[t][key] = threads
    popts = {"latency": {"min_time_s": 0.2, "warmup": 5}, **(profiler_options or {})}
    search = _Search(session, targets, objective, float(max_accuracy_drop), full, out, rt,
                     popts, threads, extra_profilers(session.pm, profilers))
    search.notes = _metric_note(session) + said
    search.use_cache(step_cache)
    study = open_study(storage, name, seed, ["maximize", "minimize"])
    on = None
    if cluster is not None:
        from .ray_search import RayTrials

        cache = getattr(search, "step_cache", None)
        on = RayTrials(cluster, search, study, {
            "storage": storage, "study_name": name, "seed": seed, "targets": targets,
            "objective": objective, "max_drop": float(max_accuracy_drop), "space": full,
            "runtime_options": rt, "profiler_options": popts, "threads": threads,
            "extra_profilers": search.extra_profilers,
            "step_cache": str(cache.folder) if here and cache is not None else None,
            "out": str(out.resolve()) if here else None},
            ray_workers)
    try:
        return _search(session, search, study, full, targets, objective, budget_trials,
                       time_budget_s, threads, t0, on)
    except storage_errors() as e:  # the storage failed mid-search (a damaged file...)
        raise storage_error(storage, e) from e


def _metric_note(session: mo.Session) -> list[str]:
    """What the accuracy column measures, when the session's ``eval_fn`` says (its
    ``metric`` attribute: the no-code entry's top-1 accuracy or agreement)."""
    metric = getattr(session.eval_fn, "metric", None)
    return [f"accuracy: {metric}"] if isinstance(metric, str) and metric else []


def extra_profilers(pm: Any, names: list[str] | None) -> list[str]:
    """The profilers a trial runs besides the search's own: ``names`` (each must be
    registered and available here), or None: every available one from an installed plugin
    outside modelopt-core (a third-party metric shows in the search's tables too)."""
    own = {"accuracy", "latency", "size", "energy"}
    if names is None:
        return [i.name for i in pm.components("profiler") if i.name not in own
                and i.distribution != mo.CORE_DISTRIBUTION and i.cls.availability()[0]]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise SearchError(f"optimize: profilers must be a list of profiler names, got "
                          f"{names!r}.")
    for n in names:
        pm.get("profiler", n).cls.ensure_available()  # unknown: the close names; typed
    return [n for n in names if n not in own]


def _search(session: mo.Session, search: _Search, study: Any, full: dict[str, Any],
            targets: list[str], objective: str, budget_trials: int | None,
            time_budget_s: float | None, threads: int | None, t0: float,
            on: Any = None) -> SearchResult:
    """The search itself, on the opened study (see :func:`optimize`); ``t0``: when the
    call began (the time budget counts from there); ``on``: the
    :class:`.ray_search.RayTrials` that run the trials on a Ray cluster (None: here)."""
    out = search.out
    # the end's reserve: the confirmation (latency) and the final report
    reserve = WRITE_S + (2 * CONFIRM_S if objective == "latency" else 0.0)
    if time_budget_s is not None:
        reserve = min(reserve, END_SHARE * time_budget_s)
    search.set_budget(t0, time_budget_s, reserve)
    if "baseline" not in study.user_attrs:
        t = time.perf_counter()
        orig = session.original  # measured on its format's reference backend
        ref = session.pm.runtime_for(orig)[0]
        key = thread_option_of(ref, session.pm)
        base = search.measure(session, orig, ref, {key: threads} if threads and key else {})
        base["step"] = "original (torch fp32)" if orig.format == "torch" else \
            f"original ({orig.format} on {ref})"
        search.metric(base)  # fails fast when the objective cannot be measured here
        study.set_user_attr("baseline", _plain(base))
        study.set_user_attr("baseline_s", time.perf_counter() - t)
        if not study.trials:
            for params in starting_recipes(full, session.pm, targets):
                study.enqueue_trial(params, skip_if_exists=True)
    search.baseline = dict(study.user_attrs["baseline"])
    # the first estimate of a measurement: the baseline's (a resumed study: as stored)
    search.record("measure", float(study.user_attrs.get("baseline_s", 1.0)))
    budget = _SpokenBudget(search, budget_trials, time_budget_s, t0, reserve_s=reserve)
    if on is not None:  # on the cluster's workers; their contenders' artifacts come back
        on.run(budget, None if time_budget_s is None else time_budget_s - reserve, t0)
        on.save_best()
    else:
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
            winner = confirm(search, study, rows, saved, time_s=time_s)
        except _NoTime as e:
            confirm_note = str(e)
    with search.lock():  # the newest rows: other workers may have finished trials meanwhile
        rows = trial_rows(study)
        if best is not None:
            best = next(r for r in rows if r["trial"] == (winner or best)["trial"])
        notes = search.notes + end_notes(search, budget, rows, best, t0, time_budget_s,
                                         confirm_note)
        # (the confirmed figures go on the rows here)
        report = search.write(study, rows, notes)
        if (out / "best").is_dir():  # the final artifact, named as every command names it
            link_folder(out, FINAL, "best")
    keys = ("objective", "size_mb") if objective != "size" else ("objective",)
    art = search.artifacts.get(best["trial"]) if best is not None else None
    recipe = search.best_recipe or (_recipe_of(study, best["trial"]) if best else None)
    if art is not None and recipe:  # the best runs as it was measured (runner, serve...)
        art = art.with_runtime(recipe["backend"], recipe.get("backend_options"))
    return SearchResult(best=art, best_recipe=recipe,
                        best_row=best, pareto=pareto_front(rows, keys), report=report,
                        study=study, out_dir=out)


#: the unit of each objective in the per-trial lines
_UNITS = {"latency": "ms", "size": "MB", "energy": "J"}


class _SpokenBudget(_Budget):
    """The budget, saying one line per finished trial on ``modelopt.progress`` (shown by the
    ``modelopt`` command, ``--no-progress`` or not): the trial, its recipe and outcome, the
    best so far, elapsed time and ETA."""

    def __init__(self, search: _Search, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.search = search

    def __call__(self, study: Any, trial: Any) -> None:
        import logging
        import statistics

        from modelopt_core.training import PROGRESS_LOG, clock

        super().__call__(study, trial)
        log = logging.getLogger(PROGRESS_LOG)
        if not log.isEnabledFor(logging.INFO):
            return
        row = trial.user_attrs.get("row") or {}
        count = f"{self.ran}/{self.trials}" if self.trials is not None else str(self.ran)
        best = best_row(trial_rows(study), "objective")
        unit = _UNITS.get(self.search.objective, "")
        said = "" if best is None else \
            f"; best: trial {best['trial']} ({best['objective']:.4g} {unit})"
        elapsed = time.perf_counter() - self.search.t0
        eta = None
        if self.trials is not None and self.durations:
            eta = statistics.mean(self.durations) * max(self.trials - self.ran, 0)
        if self.time_s is not None:
            left = max(self.time_s - elapsed, 0.0)
            eta = left if eta is None else min(eta, left)
        log.info("trial %d [%s]: %s: %s%s; elapsed %s, ETA %s", trial.number, count,
                 row.get("recipe", "?"), _outcome(trial, row, unit), said, clock(elapsed),
                 "?" if eta is None else clock(eta))


def _outcome(trial: Any, row: dict[str, Any], unit: str) -> str:
    """What became of a trial, in a few words (see :class:`_SpokenBudget`)."""
    if "duplicate_of" in row:
        return f"the recipe of trial {row['duplicate_of']} again (not re-run)"
    if row.get("skipped"):
        return f"skipped ({row['skipped']})"
    if row.get("no_op"):
        return f"pruned ({row['no_op']} left the model unchanged)"
    if row.get("pruned_at"):
        return f"pruned ({row['pruned_at']} drops accuracy to {row.get('accuracy', 0):.4g})"
    if row.get("error") or trial.state.name == "FAIL":
        return f"failed ({str(row.get('error', 'see the report'))[:160]})"
    if not isinstance(row.get("objective"), (int, float)):
        return trial.state.name.lower()
    return (f"accuracy {row['accuracy']:.4g} (drop {row['accuracy_drop']:.3g}), "
            f"{row['objective']:.4g} {unit}, {'feasible' if row['feasible'] else 'infeasible'}")
