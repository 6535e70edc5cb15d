"""``Session.optimize``: an Optuna search over recipes, each measured on the real runtime.

A trial draws a recipe (see :mod:`.space`), runs it on a fresh child Session built on the
user's original artifact (never mutated), rejects it early when a stage nothing can recover
from already misses the accuracy budget, then measures accuracy (the session's ``eval_fn``)
and the objective (latency, size or energy) with the registered profilers on the target
backend. After every trial ``trials.json``, the report and (when it improved) the best
artifact ``best/`` are written to ``out_dir``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs

import modelopt_core as mo

from .errors import SearchError
from .space import (
    TARGETS,
    describe_recipe,
    sample_recipe,
    starting_recipes,
    target_spaces,
)
from .study import best_row, open_study, pareto_rows, trial_rows, worker_id, write_json

__all__ = ["OBJECTIVES", "SearchResult", "optimize"]

#: objective -> (profiler, metric keys it may report, first found wins)
OBJECTIVES = {"latency": ("latency", ("latency_p50_ms",)),
              "size": ("size", ("size_mb",)),
              "energy": ("energy", ("joules_per_inference",))}

REPORT_COLUMNS = ["step", "state", "backend", "accuracy", "accuracy_delta", "latency_p50_ms",
                  "speedup", "size_mb", "size_ratio", "objective", "feasible", "pareto",
                  "recipe"]


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
                 profiler_options: dict[str, dict[str, Any]]) -> None:
        self.s, self.target, self.objective, self.max_drop = session, target, objective, max_drop
        self.space, self.out = space, out
        self.runtime_options = runtime_options
        self.profiler_options = profiler_options
        self.baseline: dict[str, Any] = {}
        self.environment = _environment()  # the machine: described once, in every report
        self.artifacts: dict[int, mo.ModelArtifact] = {}

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
                options: dict[str, Any]) -> dict[str, Any]:
        rep = s.compare(backends=[backend], profilers=self.profilers(), artifacts=[art],
                        backend_options={backend: options},
                        profiler_options=self.profiler_options)
        row = dict(rep.rows[0])
        if row.get("error") and "accuracy" not in row:
            raise mo.StepError(f"optimize: measuring on {backend!r} failed: {row['error']}")
        return row

    def torch_accuracy(self, s: mo.Session) -> float:
        with s.runner("torch") as r:
            return float(s.eval_fn(r))

    def __call__(self, trial: Any) -> tuple[float, float]:
        import optuna

        trial.set_user_attr("worker", worker_id())
        recipe = sample_recipe(trial, self.target, self.space, self.s.pm,
                               self.runtime_options, max_drop=self.max_drop)
        trial.set_user_attr("recipe", recipe)
        base_acc = self.baseline["accuracy"]
        row: dict[str, Any] = {"step": f"trial {trial.number}", "recipe": describe_recipe(recipe),
                               "backend": recipe["backend"]}
        trial.set_user_attr("row", row)  # a trial that fails still shows its recipe
        s = self.child()
        steps = recipe["steps"]
        for i, st in enumerate(steps):
            st = dict(st)
            try:
                if "export" in st:
                    s.export(st.pop("export"), **st)
                else:
                    s.apply(st.pop("apply"), **st)
            except mo.ModeloptError as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                trial.set_user_attr("row", row)
                raise
            lossy = s.current.format == "torch" and "apply" in steps[i]
            recoverable = any(x.get("apply", "").startswith(("distill.", "prune.finetune"))
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
        row.update(self.measure(s, art, recipe["backend"], recipe["backend_options"]))
        row["step"] = f"trial {trial.number}"
        row["lineage"] = [st.component for st in art.lineage]
        value = self.metric(row)
        drop = base_acc - row["accuracy"]
        row.update(objective=value, accuracy_drop=round(drop, 6),
                   feasible=bool(drop <= self.max_drop + 1e-9))
        trial.set_constraint("accuracy_drop", float(drop - self.max_drop - 1e-9))  # <= 0: ok
        trial.set_user_attr("row", _plain(row))
        self.artifacts = {trial.number: art}  # only the newest is kept in memory
        return float(row["accuracy"]), value

    # ---- after each trial ---------------------------------------------------------------

    def after(self, study: Any, trial: Any) -> None:
        import fcntl

        with open(self.out / ".search.lock", "a") as lock:  # workers on this host take turns
            fcntl.flock(lock, fcntl.LOCK_EX)
            rows = trial_rows(study)
            best = best_row(rows, "objective")
            if best is not None and best["trial"] in self.artifacts:
                self.artifacts[best["trial"]].save(self.out / "best", overwrite=True)
                write_json(self.out / "best.json", {
                    "trial": best["trial"], "row": best,
                    "recipe": _recipe_of(study, best["trial"])})
            self.write(study, rows)

    def write(self, study: Any, rows: list[dict[str, Any]]) -> mo.Report:
        keys = ("objective", "size_mb") if self.objective != "size" else ("objective",)
        front = {r["trial"] for r in pareto_rows(rows, keys)}
        for r in rows:
            r["pareto"] = r["trial"] in front
        write_json(self.out / "trials.json", {
            "study": study.study_name, "target": self.target, "objective": self.objective,
            "max_accuracy_drop": self.max_drop, "baseline": self.baseline, "trials": rows})
        report = mo.Report([self.baseline] + rows,
                           title=f"modelopt optimize: {'/'.join(self.target)}, "
                                 f"{self.objective}, "
                                 f"accuracy drop <= {self.max_drop:g}",
                           environment=self.environment)
        cols = [c for c in REPORT_COLUMNS if c in report.all_columns]
        report.to_markdown(self.out / "report.md", columns=cols)
        report.to_json(self.out / "report.json")
        try:
            report.to_html(self.out / "report.html", title=report.title)
        except Exception as e:  # the HTML page is a view: never lose a trial over it
            (self.out / "report.html.error").write_text(f"{type(e).__name__}: {e}\n")
        return report


def _why(row: dict[str, Any]) -> str:
    said = {k: v for k, v in row.items() if k == "error" or k.startswith("energy")}
    return f"{said}" if said else "it reported nothing for it"


def _environment() -> dict[str, Any]:
    from modelopt_core.environment import describe_environment

    return describe_environment()


def _plain(v: Any) -> Any:
    import json

    return json.loads(json.dumps(v, default=str))


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
    if budget_trials is None and time_budget_s is None:
        raise SearchError("optimize: give budget_trials and/or time_budget_s, or the search "
                          "never ends.")
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or max_accuracy_drop < 0:
        raise SearchError(f"optimize: max_accuracy_drop must be a number >= 0, got "
                          f"{max_accuracy_drop!r}.")
    targets = [target] if isinstance(target, str) else list(target)
    if not targets or len(set(targets)) != len(targets):
        raise SearchError(f"optimize: target must name one runtime or list distinct ones, "
                          f"got {target!r}.")
    for t in targets:
        if t not in TARGETS:
            raise SearchError(f"optimize: unknown target {t!r}; pick from {sorted(TARGETS)}.")
    full = target_spaces(targets, space, session.pm, session.train_data is not None)
    tname = "+".join(targets)
    out = Path(out_dir or f"modelopt-search-{tname}-{objective}")
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{out.resolve()}/study.db"
    name = study_name or f"modelopt-{tname}-{objective}"
    ro = dict(runtime_options or {})
    rt = {}
    for t in targets:  # runtime_options: flat (one target) or keyed by target
        rt[t] = dict(ro.get(t, {}) if set(ro) <= set(TARGETS) and ro else ro)
        if threads is not None and TARGETS[t][2]:
            rt[t][TARGETS[t][2]] = threads
    popts = {"latency": {"min_time_s": 0.2, "warmup": 5}, **(profiler_options or {})}
    search = _Search(session, targets, objective, float(max_accuracy_drop), full, out, rt,
                     popts)
    study = open_study(storage, name, seed, ["maximize", "minimize"])
    if "baseline" not in study.user_attrs:
        base = search.measure(session, session.original, "torch",
                              {TARGETS["torch"][2]: threads} if threads else {})
        base["step"] = "original (torch fp32)"
        search.metric(base)  # fails fast when the objective cannot be measured here
        study.set_user_attr("baseline", _plain(base))
        if not study.trials:
            for params in starting_recipes(full, session.pm, targets):
                study.enqueue_trial(params, skip_if_exists=True)
    search.baseline = dict(study.user_attrs["baseline"])
    t0 = time.perf_counter()
    study.optimize(search, n_trials=budget_trials, timeout=time_budget_s,
                   catch=(mo.ModeloptError,), callbacks=[search.after], gc_after_trial=True)
    rows = trial_rows(study)
    report = search.write(study, rows)
    best = best_row(rows, "objective")
    keys = ("objective", "size_mb") if objective != "size" else ("objective",)
    art = None
    if best is not None:
        art = search.artifacts.get(best["trial"])  # found by this process: in memory
        if art is None and (out / "best").exists():  # another worker's (or an earlier run's)
            skeleton = session.original.model if session.original.format == "torch" else None
            art = mo.load_artifact(out / "best", model=skeleton, plugins=session.pm)
    session_log = f"{len(rows)} trials in the study, {time.perf_counter() - t0:.0f} s here"
    report.notes.setdefault("search", []).append(session_log)
    return SearchResult(best=art, best_recipe=_recipe_of(study, best["trial"]) if best else None,
                        best_row=best, pareto=pareto_rows(rows, keys), report=report,
                        study=study, out_dir=out)
