"""The search's reports and rows: ``trials.json`` and report.md/.json/.html, the notes the end
of a search adds, the Pareto front it is reported with, and the table's columns."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import modelopt_core as mo

from .rows import pareto_rows, write_json

if TYPE_CHECKING:
    from .budget import _Budget
    from .trials import _Search


REPORT_COLUMNS = ["step", "state", "backend", "accuracy", "accuracy_delta", "latency_p50_ms",
                  "confirmed_p50_ms", "confirmed_threads", "speedup", "size_mb", "size_ratio",
                  "objective", "feasible", "pareto",
                  "recipe", "skipped"]


def write_report(search: _Search, study: Any, rows: list[dict[str, Any]],
                 notes: list[str] | None = None) -> mo.Report:
    """trials.json (every trial, repeats included) and report.md/.json/.html (the recipes
    run: a repeat's row is its first draw's measurement again) with ``notes``."""
    keys = ("objective", "size_mb") if search.objective != "size" else ("objective",)
    for r in rows:
        if r["trial"] in search.confirmed:
            ms, n = search.confirmed[r["trial"]]
            r["confirmed_p50_ms"] = round(ms, 6)
            if n is not None:
                r["confirmed_threads"] = n
    front = {r["trial"] for r in pareto_front(rows, keys)}
    for r in rows:
        r["pareto"] = r["trial"] in front
    write_json(search.out / "trials.json", {
        "study": study.study_name, "target": search.target, "objective": search.objective,
        "max_accuracy_drop": search.max_drop, "baseline": search.baseline, "trials": rows})
    listed = [r for r in rows if "duplicate_of" not in r]
    notes = list(notes or [])
    if len(listed) < len(rows):
        notes.append(f"{len(rows) - len(listed)} later draws of recipes already measured "
                     f"are not listed (trials.json has them, with duplicate_of)")
    report = mo.Report([search.baseline] + listed,
                       title=f"modelopt optimize: {'/'.join(search.target)}, "
                             f"{search.objective}, "
                             f"accuracy drop <= {search.max_drop:g}",
                       environment=search.environment,
                       notes={"search": notes} if notes else None, plugins=search.s.pm)
    cols = report_columns(report, search.s.pm)
    report.to_markdown(search.out / "report.md", columns=cols)
    report.to_json(search.out / "report.json")
    try:
        report.to_html(search.out / "report.html", title=report.title)
    except Exception as e:  # noqa: BLE001 (the HTML page is a view: never lose a trial over it)
        (search.out / "report.html.error").write_text(f"{type(e).__name__}: {e}\n")
    return report


def end_notes(search: _Search, budget: _Budget, rows: list[dict[str, Any]],
              best: dict[str, Any] | None, t0: float, time_budget_s: float | None,
              confirm_note: str | None) -> list[str]:
    """The notes of the final report: the trials run and the time taken, why the search
    stopped, the trials not run, the targets skipped and the end's side-by-side re-timing."""
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
    notes += search.lost + search.dropped + sorted(set(search.dead_targets.values()))
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
    return notes


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


def _plain(v: Any) -> Any:
    import json

    return json.loads(json.dumps(v, default=str))

