"""The search's reports and rows: ``trials.json`` and report.md/.json/.html, the notes the end
of a search adds, the Pareto front it is reported with, and the table's columns. The best trial
is marked in every table (the ``best`` column; a star on the HTML page), the trials tied with it
within noise say so, and one summary line under the table names both."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import modelopt_core as mo

from .rows import best_row, mark_best, pareto_rows, summary_line, write_json

if TYPE_CHECKING:
    from .budget import _Budget
    from .trials import _Search


REPORT_COLUMNS = ["step", "best", "state", "backend", "node", "accuracy", "accuracy_delta",
                  "latency_p50_ms", "latency_noisy", "confirmed_p50_ms", "confirmed_threads",
                  "speedup", "size_mb", "size_ratio",
                  "objective", "feasible", "pareto",
                  "recipe", "skipped"]


#: the search's own columns (the end's side-by-side re-timing), as the tables show them
SEARCH_COLUMNS = (
    mo.Column("confirmed_p50_ms", "side-by-side p50 ms", format="{:.4g}", better="lower",
              order=21),
    mo.Column("confirmed_threads", "threads", order=21),
)


def write_report(search: _Search, study: Any, rows: list[dict[str, Any]],
                 notes: list[str] | None = None) -> mo.Report:
    """trials.json (every trial, repeats included) and report.md/.json/.html (the recipes
    run: a repeat's row is its first draw's measurement again) with ``notes`` (given: the
    end of the search, whose best is final). The rows get the ``best`` marks
    (:func:`.rows.mark_best`) and ``pareto``."""
    final = notes is not None
    for r in rows:
        if r["trial"] in search.confirmed:
            ms, n = search.confirmed[r["trial"]]
            r["confirmed_p50_ms"] = round(ms, 6)
            if n is not None:
                r["confirmed_threads"] = n
    best = chosen_best(search, rows)
    mark_best(rows, best, search.ties, final)
    _mark_pareto(search, rows, best)
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
                       notes={"search": notes} if notes else None, plugins=search.s.pm,
                       columns=SEARCH_COLUMNS)
    cols = report_columns(report, search.s.pm)
    summary = summary_line(listed, UNITS.get(search.objective, ""))
    mo.write_text_atomic(search.out / "report.md",
                         with_summary(report.to_markdown(columns=cols), summary))
    report.to_json(search.out / "report.json")
    now = time.perf_counter()
    if final or now - search.html_at >= HTML_EVERY_S:
        _write_html(search, report, cols, listed, best, summary)
        search.html_at = now
    return report


#: while the trials run, report.html (its plots take ~0.1 s to build: a small trial's time)
#: is rewritten at most this often; trials.json, report.md and .json after every trial, and
#: all of them at the end
HTML_EVERY_S = 5.0


#: the unit of each objective
UNITS = {"latency": "ms", "size": "MB", "energy": "J"}
#: the trial history's axis title, by objective
HISTORY_TITLES = {"latency": "p50 ms (own timing)", "size": "size MB", "energy": "J/inference"}


def chosen_best(search: _Search, rows: list[dict[str, Any]]) -> int | None:
    """The best trial: the fastest of the end's side-by-side re-timing where it ran (what
    :func:`.confirm.confirm` saved), else the feasible trial of the lowest objective."""
    if search.confirmed:
        return min(search.confirmed, key=lambda n: (search.confirmed[n][0], n))
    row = best_row(rows, "objective")
    return None if row is None else row["trial"]


def _mark_pareto(search: _Search, rows: list[dict[str, Any]], best: int | None) -> None:
    """``pareto`` on every row; the best is on the front (ranked by the re-timing where a
    row has one), or its cell says which trials dominate it and why it is still the best."""
    keys = ("objective", "size_mb") if search.objective != "size" else ("objective",)
    front = pareto_front(rows, keys)
    on = {r["trial"] for r in front}
    for r in rows:
        r["pareto"] = r["trial"] in on
    mine = next((r for r in rows if r["trial"] == best), None)
    if mine is None or mine["pareto"]:
        return
    view = _as_ranked(rows)

    def vec(r: dict[str, Any]) -> tuple[Any, ...]:
        return (-r["accuracy"], *(r.get(k) for k in keys))

    me = vec(view[best])
    over = [r["trial"] for r in front
            if vec(view[r["trial"]]) != me and all(
                a is not None and b is not None and a <= b
                for a, b in zip(vec(view[r["trial"]]), me))]
    mine["pareto"] = (f"no: trial(s) {', '.join(map(str, over)) or '?'} dominate it by their "
                      "own trial's timing (not re-timed side by side); re-timed side by side "
                      "at the end, it was the fastest")


def with_summary(md: str, line: str) -> str:
    """The Markdown report with ``line`` (bold) right under its table."""
    lines = md.split("\n")
    end = max((i for i, s in enumerate(lines) if s.startswith("|")), default=len(lines) - 1)
    return "\n".join(lines[:end + 1] + ["", f"**{line}**"] + lines[end + 1:])


def _write_html(search: _Search, report: mo.Report, cols: list[str],
                listed: list[dict[str, Any]], best: int | None, summary: str) -> None:
    """report.html (plotly.js beside it): the best starred, the accuracy budget, the trial
    history; a failure is written to report.html.error (the page is a view: never lose a
    trial over it)."""
    at = next((1 + k for k, r in enumerate(listed) if r["trial"] == best), None)
    mine = listed[at - 1] if at is not None else {}
    axes = {"latency_p50_ms": ("latency", "p50 latency"), "size_mb": ("size", "size")}
    note = {x: f"the search ranks by {search.objective}, not by {what}"
            for x, (objective, what) in axes.items() if objective != search.objective}
    if "confirmed_p50_ms" in mine:
        note["latency_p50_ms"] = (
            f"it was chosen by the side-by-side re-timing at the end (p50 "
            f"{mine['confirmed_p50_ms']:.4g} ms), which ranks it ahead of the trials these "
            "single-trial timings put ahead of it")
    try:
        report.to_html(search.out / "report.html", title=report.title, columns=cols, best=at,
                       best_label=str(mine.get("best", "best")), best_note=note,
                       accuracy_budget=search.max_drop, summary=summary,
                       history={"x": "trial", "y": "objective", "ok": "feasible",
                                "title": HISTORY_TITLES.get(search.objective, "objective")})
    except Exception as e:  # noqa: BLE001
        (search.out / "report.html.error").write_text(f"{type(e).__name__}: {e}\n")
    else:
        (search.out / "report.html.error").unlink(missing_ok=True)


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
    notes += cache_notes(search.step_cache)
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


def cache_notes(cache: mo.StepCache | None) -> list[str]:
    """What the step cache did in this process: steps loaded (cache hits) and computed, what
    was not cached and why, damaged entries recomputed."""
    if cache is None:
        return []
    st = cache.stats()
    notes = [f"step cache {st['folder']}: {st['hits']} step(s) loaded (cache hits), "
             f"{st['computed']} computed here ({st['stored']} stored)"]
    if st["uncached"]:
        notes.append("not cached: " + "; ".join(st["uncached"][:4]))
    if st["corrupt"]:
        notes.append("step cache entries that failed to verify, recomputed: "
                     + "; ".join(st["corrupt"][:4]))
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
    front = pareto_rows(list(_as_ranked(rows).values()), keys)
    return [view[r["trial"]] for r in front]


def _as_ranked(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each row by trial, its objective the side-by-side re-timing where it has one."""
    return {r["trial"]: {**r, "objective": r["confirmed_p50_ms"]}
            if "confirmed_p50_ms" in r and r.get("objective") is not None else r
            for r in rows}


def _recipe_of(study: Any, number: int) -> dict[str, Any] | None:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t.user_attrs.get("recipe")
    return None


def _plain(v: Any) -> Any:
    import json

    return json.loads(json.dumps(v, default=str))

