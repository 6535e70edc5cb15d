"""The output folder every command writes (``modelopt demo``, ``modelopt run``, ``modelopt
optimize``): ``report.md``, ``report.json``, ``report.html`` and the final artifact in
``final-artifact/`` (the search adds its study, trials and ``best/``, which
``final-artifact`` links to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["FINAL", "FINAL_MAX_DROP", "REPORTS", "check_final", "choose_final", "link_folder",
           "write_outputs"]

#: the folder of the final artifact, in every command's output folder
FINAL = "final-artifact"
#: the report files, in every command's output folder
REPORTS = ("report.md", "report.json", "report.html")
#: the accuracy budget the final artifact is chosen within by default: points of eval_fn
#: (e.g. top-1 %) below the original's
FINAL_MAX_DROP = 1.0


def check_final(final: Any, max_drop: Any, where: str, plugins: Any = None) -> None:
    """:class:`ConfigError` naming ``where`` unless ``final`` is ``"last"``, an objective
    :meth:`Report.best <modelopt_core.Report.best>` knows (``latency``, ``size``,
    ``throughput``, ``accuracy``, or a column a profiler declares with ``better``) and
    ``max_drop`` a number >= 0."""
    from .errors import ConfigError
    from .report import declared_columns
    from .report_rows import OBJECTIVES

    known = {"last", *OBJECTIVES, *OBJECTIVES.values()} | {
        name for name, c in declared_columns(plugins).items()
        if getattr(c, "better", None) in ("lower", "higher")}
    if not isinstance(final, str) or final not in known:
        raise ConfigError(f"{where}: final must be one of {sorted(known)} (the objective the "
                          f"final artifact is the best measured row by; 'last': the last "
                          f"step), got {final!r}.")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise ConfigError(f"{where}: max_accuracy_drop must be a number >= 0 (points of "
                          f"accuracy below the original's), got {max_drop!r}.")


def choose_final(session: Any, report: Any, final: str = "latency",
                 max_drop: float = FINAL_MAX_DROP, say: Any = print,
                 backend_options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The final artifact of a ``Session.compare`` ``report``: the best measured row by
    ``final`` within ``max_drop`` points of the original's accuracy
    (:meth:`Report.best <modelopt_core.Report.best>`), carrying the backend (and its
    ``backend_options``) it was measured on; the last step when ``final`` is ``"last"``, when
    no accuracy was measured or no row is within the budget. Says which and why (``say``, and
    a ``final`` note in the report). Returns (artifact, the HTML page's marks for it)."""
    from .errors import DataError

    choice, why = None, None
    last = f"the last step, {report.rows[-1].get('step') if report.rows else 'original'}"
    if final == "last":
        why = f"{last} (final = 'last')"
    elif not report.rows or not isinstance(report.rows[0].get("accuracy"), (int, float)):
        why = (f"{last}: no accuracy was measured, so no row can be held to the accuracy "
               "budget (add the 'accuracy' profiler and eval_fn)")
    else:
        try:
            choice = report.best(final, max_drop)
        except DataError as e:
            why = f"{last}: {e}"
    if choice is None or choice.history_index is None:
        why = why or f"{last}: no row was measured within the accuracy budget (drop <= " \
            f"{max_drop:g})"
        art, view = session.current, {}
    else:
        opts = (backend_options or {}).get(choice.backend)
        art = session.history[choice.history_index].with_runtime(choice.backend, opts)
        why = f"{choice.step} on {choice.backend}: the {choice.reason}" + _not_last(report,
                                                                               choice)
        view = {"best": choice.index, "best_label": "final", "accuracy_budget": max_drop}
    report.notes.setdefault("final", []).append(f"final artifact: {why}")
    say(f"final artifact: {why}")
    return art, view


def _not_last(report: Any, choice: Any) -> str:
    """"; the last step, STEP on BACKEND, is not it (p50 ...)" when the choice is not the
    report's last row, else ""."""
    last = report.rows[-1]
    if last.get("step") == choice.step:
        return ""
    p50 = last.get("latency_p50_ms")
    return (f"; the last step, {last.get('step')} on {last.get('backend')}, is not it"
            + (f" (p50 {report.cell('latency_p50_ms', p50)} ms)"
               if isinstance(p50, (int, float)) else ""))


def write_outputs(report: Any, final: Any, out: Path, say: Any = print,
                  command: str = "run", **view: Any) -> list[str]:
    """``out/report.md``, ``report.json``, ``report.html`` (``view``: its marks, see
    :meth:`Report.to_html <modelopt_core.Report.to_html>`; when plotly is missing: a line on
    stderr instead, naming ``modelopt COMMAND``) and artifact ``final`` (None: none) in
    ``out/final-artifact/``; ``say`` gets the line listing them. Returns the names written."""
    import sys

    from .report_html import ReportDependencyError

    out.mkdir(parents=True, exist_ok=True)
    report.to_markdown(out / "report.md")
    report.to_json(out / "report.json")
    written = ["report.md", "report.json"]
    try:
        report.to_html(out / "report.html", **view)
        written.append("report.html")
        written += sorted(f.name for f in out.glob("plotly-*.min.js"))  # the page's script
    except ReportDependencyError as e:  # plotly missing: the other reports still stand
        print(f"modelopt {command}: no report.html: {e}", file=sys.stderr)
    if final is not None:
        final.save(out / FINAL)
        written.append(FINAL + "/")
    say(f"wrote {out}/: {', '.join(written)}")
    return written


def link_folder(out: Path, name: str, target: str) -> bool:
    """``out/name`` as a relative link to the folder ``out/target`` (e.g. an old output name
    kept working). An old run's real folder of that name that holds an artifact is replaced;
    anything else there is left alone, as on a file system without links. True when the link
    is there."""
    import shutil

    link = out / name
    if link.is_symlink():
        link.unlink()
    elif (link / "manifest.json").is_file():
        shutil.rmtree(link)
    elif link.exists():
        return False
    try:
        link.symlink_to(target, target_is_directory=True)
    except OSError:
        return False
    return True
