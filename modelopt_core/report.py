"""Report: the comparison table of a session's artifacts, as Markdown, JSON or rich text.

The first row is the baseline; ratios (``speedup``, ``size_ratio``, ``accuracy_delta``) are
computed against it, so figures measured side by side in one run compare fairly.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["Report"]

#: preferred column order; other metrics follow alphabetically
COLUMNS = ("step", "format", "backend", "accuracy", "accuracy_delta", "latency_p50_ms",
           "latency_p95_ms", "speedup", "throughput_per_s", "size_mb", "size_ratio",
           "params", "sparsity", "peak_memory_mb")


class Report:
    """A table of measurement rows (dicts); the first row is the baseline."""

    def __init__(self, rows: list[dict[str, Any]], title: str = "modelopt comparison") -> None:
        self.title = title
        self.rows = [dict(r) for r in rows]
        self._add_ratios()

    def _add_ratios(self) -> None:
        if not self.rows:
            return
        base = self.rows[0]
        for r in self.rows:
            if _num(base.get("latency_p50_ms")) and _num(r.get("latency_p50_ms")):
                r["speedup"] = round(base["latency_p50_ms"] / r["latency_p50_ms"], 3)
            if _num(base.get("size_mb")) and _num(r.get("size_mb")):
                r["size_ratio"] = round(base["size_mb"] / r["size_mb"], 3)
            if _num(base.get("accuracy"), zero_ok=True) and _num(r.get("accuracy"), zero_ok=True):
                r["accuracy_delta"] = round(r["accuracy"] - base["accuracy"], 6)

    @property
    def all_columns(self) -> list[str]:
        """Every scalar column present in any row: the preferred ones first."""
        present = {k for r in self.rows for k, v in r.items()
                   if v is None or isinstance(v, (str, int, float, bool))}
        first = [c for c in COLUMNS if c in present]
        return first + sorted(present - set(first) - {"error"}) + \
            (["error"] if "error" in present else [])

    @property
    def columns(self) -> list[str]:
        """The headline columns present (the table's default); JSON keeps every metric."""
        return [c for c in self.all_columns if c in COLUMNS or c == "error"]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: title, columns, rows."""
        return {"title": self.title, "columns": self.all_columns, "rows": self.rows}

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            _atomic_write(Path(path), text)
        return text

    def to_markdown(self, path: str | os.PathLike[str] | None = None,
                    columns: list[str] | None = None) -> str:
        """A Markdown table; written atomically to ``path`` when given."""
        cols = columns or self.columns
        lines = [f"### {self.title}", "", "| " + " | ".join(cols) + " |",
                 "|" + "|".join("---" for _ in cols) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
        text = "\n".join(lines) + "\n"
        if path is not None:
            _atomic_write(Path(path), text)
        return text

    def print(self, columns: list[str] | None = None) -> None:
        """Print the table to the terminal (rich when installed)."""
        import sys

        cols = columns or self.columns
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            Console = None  # noqa: N806
        if Console is None or not sys.stdout.isatty():
            print(self.to_markdown(columns=cols))
            return
        t = Table(title=self.title)
        for c in cols:
            t.add_column(c, justify="left" if c in ("step", "format", "backend", "error")
                         else "right")
        for r in self.rows:
            t.add_row(*(_fmt(r.get(c)) for c in cols))
        Console(width=max(Console().width, 40 + 12 * len(cols))).print(t)

    def __str__(self) -> str:
        return self.to_markdown()


def _num(v: Any, zero_ok: bool = False) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (zero_ok or v > 0)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v).replace("|", "\\|")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
