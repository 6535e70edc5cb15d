"""The search's trial runner :class:`_Search`: what Optuna calls for each trial (draw a recipe,
run it on a fresh child Session built on the original artifact, reject it early when a stage
nothing recovers from already misses the accuracy budget, measure it on the target backend),
and what follows each trial (the best saved, the reports written, follow-up recipes queued).
Its time budget is :class:`.budget._Clock`'s."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import modelopt_core as mo

from .budget import _Clock, _step_key
from .confirm import CONFIRM_TOP, contenders
from .errors import SearchError
from .recipes import optimizer_cls
from .report import _plain, _recipe_of, write_report
from .space import (
    describe_recipe,
    escalated_params,
    recipe_costs,
    repaired_params,
    sample_recipe,
)
from .study import claim_trial, ranked_rows, trial_rows, write_json

if TYPE_CHECKING:
    from pathlib import Path

#: objective -> (profiler, metric keys it may report, first found wins)
OBJECTIVES = {"latency": ("latency", ("latency_p50_ms",)),
              "size": ("size", ("size_mb",)),
              "energy": ("energy", ("joules_per_inference",))}


class _Search(_Clock):
    def __init__(self, session: mo.Session, target: list[str], objective: str, max_drop: float,
                 space: dict[str, Any], out: Path, runtime_options: dict[str, Any],
                 profiler_options: dict[str, dict[str, Any]], threads: int | None,
                 extra_profilers: list[str] | None = None) -> None:
        self.s, self.target, self.objective, self.max_drop = session, target, objective, max_drop
        self.space, self.out = space, out
        self.runtime_options = runtime_options
        self.profiler_options = profiler_options
        self.threads = threads
        #: profilers of installed plugins every trial runs too (their columns in the tables);
        #: one that raises is dropped for the rest of the search, with a note
        self.extra_profilers = list(extra_profilers or [])
        self.dropped: list[str] = []  # what was dropped on the way (a broken profiler), why
        self.html_at = float("-inf")  # when report.html was last written (see write_report)
        self.best_recipe: dict[str, Any] | None = None  # the confirmed best's (its threads)
        self.baseline: dict[str, Any] = {}
        self.environment = _environment(session.pm)  # the machine: once, in every report
        self.artifacts: dict[int, mo.ModelArtifact] = {}  # the contenders found here
        self.confirmed: dict[int, tuple[float, int | None]] = {}  # the end: trial ->
        # (side-by-side p50 ms, at its fastest thread count)
        self.ties: dict[int, tuple[float, float, float]] = {}  # the end: trial -> (p50 ratio
        # to the best's, 95% CI) of each confirmed trial within noise of the best
        self.lost: list[str] = []  # trials of this process another worker finished
        #: target -> why: targets the original model cannot be exported to (later trials of
        #: them are skipped at once)
        self.dead_targets: dict[str, str] = {}
        super().__init__()  # the time budget: see _Clock
        self.skipped: list[str] = []  # trials not run, with why
        #: what the final report says first: the accuracy metric, the steps left out
        self.notes: list[str] = []
        self.stop_reason: str | None = None
        self.step_cache: mo.StepCache | None = None
        self.use_cache()

    # ---- one trial -------------------------------------------------------------------

    def use_cache(self, step_cache: Any = None) -> None:
        """The step cache trials share (see :class:`modelopt_core.StepCache`): ``step_cache``
        (a folder or a StepCache; False: none), else the session's, else ``step-cache/`` in
        the search's folder (a resumed or second search reuses it)."""
        if step_cache is False or step_cache == "off":
            self.step_cache = None
        elif isinstance(step_cache, mo.StepCache):
            self.step_cache = step_cache
        elif step_cache is not None:
            self.step_cache = mo.StepCache(step_cache)
        else:
            self.step_cache = self.s.step_cache or mo.StepCache(self.out / "step-cache")

    def child(self) -> mo.Session:
        """A trial's session: the original, the search session's data and the shared step
        cache, no accuracy gate (the search holds the budget itself), quiet."""
        child = self.s.fork(self.s.original, progress=False, accuracy_gate=False)
        child.step_cache = self.step_cache
        return child

    def profilers(self) -> list[str]:
        names = ["accuracy", "latency", "size"]
        if self.objective == "energy":
            names.append("energy")
        return names + self.extra_profilers

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
        try:
            rep = s.compare(backends=[backend], profilers=self.profilers(), artifacts=[art],
                            backend_options={backend: options}, profiler_options=popts)
        except Exception as e:  # a plugin's profiler that breaks: measured without it
            if not self.extra_profilers or isinstance(e, mo.ModeloptError):
                raise
            self.dropped.append(f"profiler(s) {self.extra_profilers} dropped from the search: "
                                f"{type(e).__name__}: {str(e)[:200]}")
            self.extra_profilers = []
            return self.measure(s, art, backend, options, short)
        row = dict(rep.rows[0])
        if row.get("error") and "accuracy" not in row:
            raise mo.StepError(f"optimize: measuring on {backend!r} failed: {row['error']}")
        return row

    def torch_accuracy(self, s: mo.Session) -> float:
        """The eval_fn of the session's current artifact on its format's reference backend
        (torch for a torch step)."""
        with s.runner() as r:
            return float(s.eval_fn(r))

    def __call__(self, trial: Any) -> tuple[float, float]:
        import optuna

        claim_trial(trial)  # first: from now on no other worker takes it for a dead one's
        recipe = sample_recipe(trial, self.target, self.space, self.s.pm,
                               self.runtime_options, max_drop=self.max_drop,
                               source=self.s.original.format)
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
        hits = self.step_cache.hits if self.step_cache is not None else 0
        try:  # the one planner: configs, formats, data, availability, before any step
            s.plan(steps, where="trial step").raise_unavailable(f"trial {trial.number}")
        except mo.ModeloptError as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            trial.set_user_attr("row", row)
            raise
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
            before = s.current
            t = time.perf_counter()
            try:
                s.run([mo.RecipeStep.from_data(st)])
            except mo.ModeloptError as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                trial.set_user_attr("row", row)
                if i == 0 and "export" in steps[0]:  # the original itself does not export
                    self.dead_targets[recipe.get("target", "")] = (
                        f"target {recipe.get('target')!r} skipped: the original model does not "
                        f"export to it (trial {trial.number}: {row['error'][:160]})")
                raise
            if not _cache_hit(s.current):  # a load is not what the step costs
                self.record(key, time.perf_counter() - t)
            if self.step_cache is not None:  # steps loaded, not recomputed
                row["cache_hits"] = self.step_cache.hits - hits
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
        """``best/`` (the artifact, carrying the runtime it was measured on: backend and
        options, so a runner, `modelopt compare` or `serve` of it runs it the same way) and
        ``best.json`` (its row and recipe)."""
        recipe = recipe or _recipe_of(study, row["trial"])
        art = self.artifacts[row["trial"]]
        if recipe:
            art = art.with_runtime(recipe["backend"], recipe.get("backend_options"))
            self.artifacts[row["trial"]] = art
        art.save(self.out / "best", overwrite=True, plugins=self.s.pm)
        write_json(self.out / "best.json", {"trial": row["trial"], "row": row, "recipe": recipe})

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

    def write(self, study: Any, rows: list[dict[str, Any]],
              notes: list[str] | None = None) -> mo.Report:
        """trials.json and the reports, with ``notes``: see :func:`.report.write_report`."""
        return write_report(self, study, rows, notes)


def _stage(name: str | None, pm: Any) -> str | None:
    """The declared ``stage`` of optimizer ``name`` (None for an export step or an unknown
    name)."""
    cls = optimizer_cls(name, pm)
    return None if cls is None else cls.stage



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



def _cache_hit(art: mo.ModelArtifact) -> bool:
    """Whether ``art`` was loaded from the step cache (see :class:`modelopt_core.StepCache`)."""
    return bool((art.metadata.get("step_cache") or {}).get("lineage") == len(art.lineage))


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


def _environment(pm: Any) -> dict[str, Any]:
    from modelopt_core import describe_environment

    return describe_environment(pm)


