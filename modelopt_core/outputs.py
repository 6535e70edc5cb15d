"""The output folder every command writes (``modelopt demo``, ``modelopt run``, ``modelopt
optimize``): ``report.md``, ``report.json``, ``report.html`` and the final artifact in
``final-artifact/`` (the search adds its study, trials and ``best/``, which
``final-artifact`` links to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["FINAL", "REPORTS", "link_folder", "write_outputs"]

#: the folder of the final artifact, in every command's output folder
FINAL = "final-artifact"
#: the report files, in every command's output folder
REPORTS = ("report.md", "report.json", "report.html")


def write_outputs(report: Any, final: Any, out: Path, say: Any = print,
                  command: str = "run") -> list[str]:
    """``out/report.md``, ``report.json``, ``report.html`` (when plotly is missing: a line on
    stderr instead, naming ``modelopt COMMAND``) and artifact ``final`` (None: none) in
    ``out/final-artifact/``; ``say`` gets the line listing them. Returns the names written."""
    import sys

    from .report_html import ReportDependencyError

    out.mkdir(parents=True, exist_ok=True)
    report.to_markdown(out / "report.md")
    report.to_json(out / "report.json")
    written = ["report.md", "report.json"]
    try:
        report.to_html(out / "report.html")
        written.append("report.html")
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
