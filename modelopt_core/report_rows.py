"""Reading a lineage report's rows: which step made things worse than its input (slower or
larger, beyond noise), and the best measured row within an accuracy budget.

A *lineage* report is what ``Session.compare`` makes of a session's history: its steps are
labelled ``original``, ``1:<name>``, ``2:<name>``... in history order, each artifact made from
the one before it, one row per (artifact, backend). The rows of other reports (a search's
trials, rows written by hand with other labels) are no lineage: no step has an input there,
so nothing is flagged.

A step's *input* is the nearest earlier step with a measured row: its row on the same backend
when it has one (an INT8 step on ONNX Runtime against the FP32 ONNX step on ONNX Runtime),
else its fastest row (an export: the ONNX step on ONNX Runtime against the torch step it was
exported from, on torch); the flag names the input, and its backend when that differs.

*Beyond noise*: a step is slower when its p50 is more than :data:`REL_LATENCY` (5%) above its
input's **and** the two medians' ~95% intervals do not overlap (McGill's notches, p50 ±
1.57 IQR/√n, from the latency profiler's ``latency_iqr_ms`` and ``latency_n``; rows without
them are judged by the 5% alone). When the profiler flagged either row noisy
(``latency_noisy``: the machine was busy while it was timed; its measurement note says so),
the difference must also exceed the larger of the two interquartile ranges: a median from a
busy window moves by that much.
Sizes on disk are exact: a step is larger when it has more than :data:`REL_SIZE` (1%) more
bytes than its input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .errors import ConfigError, DataError

__all__ = ["REL_LATENCY", "REL_SIZE", "Choice", "best_row", "flag_regressions",
           "regression_summary", "step_index"]

#: a step is slower than its input only beyond this fraction of the input's p50 (and outside
#: both medians' notches)
REL_LATENCY = 0.05
#: a step is larger than its input beyond this fraction of the input's size on disk
REL_SIZE = 0.01
#: McGill et al.'s notch: p50 ± 1.57 IQR/√n; two medians whose notches do not overlap differ
#: at roughly the 95% level
NOTCH = 1.57
#: the objectives :func:`best_row` knows by a short name
OBJECTIVES = {"latency": "latency_p50_ms", "size": "size_mb", "throughput": "throughput_per_s",
              "accuracy": "accuracy"}
_BETTER = {"latency_p50_ms": "lower", "size_mb": "lower", "throughput_per_s": "higher",
           "accuracy": "higher"}
_LINEAGE_KEYS = ("regression", "regression_input")

Cell = Callable[[str, Any], str]


def step_index(label: Any) -> int | None:
    """The place in the session's history of a lineage row's step: 0 for ``original``, ``N``
    for ``N:<name>``; None for any other label."""
    if label == "original":
        return 0
    m = re.fullmatch(r"(\d+):.+", label) if isinstance(label, str) else None
    return int(m[1]) if m else None


def _groups(rows: list[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]] | None:
    """The rows by step, ``(history index, rows)`` in order; None when the rows are not a
    lineage (a label that is no step, or steps out of order)."""
    out: list[tuple[int, list[dict[str, Any]]]] = []
    for r in rows:
        i = step_index(r.get("step"))
        if i is None:
            return None
        if out and out[-1][0] == i:
            out[-1][1].append(r)
        elif out and out[-1][0] > i:
            return None
        else:
            out.append((i, [r]))
    return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and v > 0


def _input_row(groups: list[tuple[int, list[dict[str, Any]]]], at: int, backend: Any,
               key: str) -> dict[str, Any] | None:
    """The input's row for metric ``key`` of the step at ``groups[at]`` on ``backend``."""
    for _, rows in reversed(groups[:at]):
        have = [r for r in rows if _num(r.get(key)) and not r.get("error")]
        if have:
            same = [r for r in have if r.get("backend") == backend]
            return same[0] if same else min(have, key=lambda r: r[key])
    return None


def _notch(r: dict[str, Any]) -> float:
    iqr, n = r.get("latency_iqr_ms"), r.get("latency_n")
    if isinstance(iqr, (int, float)) and isinstance(n, int) and n > 0:
        return NOTCH * float(iqr) / math.sqrt(n)
    return 0.0


def _iqr(r: dict[str, Any]) -> float:
    v = r.get("latency_iqr_ms")
    return float(v) if isinstance(v, (int, float)) else 0.0


def slower(row: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether ``row``'s p50 is above ``than``'s beyond noise (see the module's text): over
    :data:`REL_LATENCY` and outside both medians' notches; when either row was timed on a
    busy machine (``latency_noisy``), also by more than the larger interquartile range."""
    a, b = row.get("latency_p50_ms"), than.get("latency_p50_ms")
    if not (_num(a) and _num(b)) or a <= b * (1 + REL_LATENCY):
        return False
    if (row.get("latency_noisy") or than.get("latency_noisy")) \
            and a - b <= max(_iqr(row), _iqr(than)):
        return False
    return a - b > _notch(row) + _notch(than)


def _name(inp: dict[str, Any], backend: Any) -> str:
    same = inp.get("backend") == backend
    return str(inp.get("step")) + ("" if same else f" on {inp.get('backend')}")


def _pair(cell: Cell, col: str, a: float, b: float) -> str:
    """``"a vs b"`` in the column's format, with more digits when that format shows both
    alike (a tiny model's 0.001 vs 0.001 MB)."""
    x, y = cell(col, a), cell(col, b)
    return f"{x} vs {y}" if x != y else f"{a:.3g} vs {b:.3g}"


def flag_regressions(rows: list[dict[str, Any]], cell: Cell) -> None:
    """Mark, in place, each row of a lineage that is slower or larger than its input beyond
    noise: ``regression`` (what and by how much: ``"slower (p50 0.066 vs 0.046 ms)"``,
    ``"larger (0.41 vs 0.28 MB)"``) and ``regression_input`` (the input's step, with its
    backend when that differs). Earlier marks are dropped first; rows that are no lineage
    get none."""
    for r in rows:
        for k in _LINEAGE_KEYS:
            r.pop(k, None)
    groups = _groups(rows)
    if groups is None:
        return
    for at, (_, step_rows) in enumerate(groups):
        for r in step_rows:
            if r.get("error"):
                continue
            said, inputs = [], []
            inp = _input_row(groups, at, r.get("backend"), "latency_p50_ms")
            if inp is not None and slower(r, inp):
                said.append("slower (p50 " + _pair(cell, "latency_p50_ms", r["latency_p50_ms"],
                                                   inp["latency_p50_ms"]) + " ms)")
                inputs.append(_name(inp, r.get("backend")))
            inp = _input_row(groups, at, r.get("backend"), "size_mb")
            if inp is not None and _num(r.get("size_mb")) \
                    and r["size_mb"] > inp["size_mb"] * (1 + REL_SIZE):
                said.append("larger (" + _pair(cell, "size_mb", r["size_mb"], inp["size_mb"])
                            + " MB)")
                inputs.append(str(inp.get("step")))
            if said:
                r["regression"] = ", ".join(said)
                r["regression_input"] = " / ".join(dict.fromkeys(inputs))


def regression_summary(rows: list[dict[str, Any]]) -> str | None:
    """One line naming every step that made things worse than its input (the rows
    :func:`flag_regressions` marked), or None when none did."""
    flagged = [r for r in rows if r.get("regression")]
    if not flagged:
        return None
    steps = len({r.get("step") for r in flagged})
    what = "; ".join(f"{r.get('step')} on {r.get('backend')} is {r['regression']} than its "
                     f"input {r.get('regression_input')}" for r in flagged)
    return (f"{steps} step{'s' if steps != 1 else ''} made things worse than "
            f"{'their' if steps != 1 else 'its'} input (beyond noise): {what}")


class Choice(NamedTuple):
    """The row :func:`best_row` chose: ``index`` into the report's rows, the row itself, its
    ``step`` and ``backend``, ``history_index`` (the artifact's place in the session's history,
    ``session.history[history_index]``, for a lineage report; else None) and ``reason``, one
    line for the user saying why."""

    index: int
    row: dict[str, Any]
    step: str
    backend: str
    history_index: int | None
    reason: str


def _objective(objective: str, specs: Any) -> tuple[str, bool]:
    """(column, lower is better) of an objective: a short name or a column whose declaration
    says which way is better."""
    col = OBJECTIVES.get(objective, objective)
    better = _BETTER.get(col) or getattr((specs or {}).get(col), "better", None)
    if better not in ("higher", "lower"):
        raise ConfigError(f"best: objective {objective!r} is no column with a better "
                          f"direction; use one of {sorted(OBJECTIVES)} or a column a profiler "
                          "declares with better='lower'/'higher'.")
    return col, better == "lower"


def _eligible(rows: list[dict[str, Any]], col: str, max_drop: float | None,
              backends: Sequence[str] | None) -> tuple[list[int], list[int]]:
    """Indices of the rows that may be chosen, and of the measured rows the budget left
    out."""
    if max_drop is not None and (not isinstance(max_drop, (int, float)) or max_drop < 0
                                 or isinstance(max_drop, bool)):
        raise ConfigError(f"best: max_accuracy_drop must be a number >= 0, got {max_drop!r}.")
    base = rows[0].get("accuracy") if rows else None
    if max_drop is not None and not isinstance(base, (int, float)):
        raise DataError("best: an accuracy budget needs the baseline row's accuracy (the "
                        "'accuracy' profiler with the session's eval_fn).")
    measured = [i for i, r in enumerate(rows) if not r.get("error")
                and isinstance(r.get(col), (int, float)) and not isinstance(r.get(col), bool)
                and (backends is None or r.get("backend") in backends)]
    if max_drop is None:
        return measured, []
    ok = [i for i in measured if isinstance(rows[i].get("accuracy"), (int, float))
          and rows[i]["accuracy"] >= base - max_drop - 1e-9]
    return ok, [i for i in measured if i not in ok]


_WORDS = {"latency_p50_ms": "fastest", "size_mb": "smallest",
          "throughput_per_s": "highest-throughput", "accuracy": "most accurate"}
_SAY = {"latency_p50_ms": "p50 {} ms", "size_mb": "{} MB", "throughput_per_s": "{} samples/s",
        "accuracy": "accuracy {}"}


def best_row(rows: list[dict[str, Any]], objective: str = "latency",
             max_accuracy_drop: float | None = None, *, backends: Sequence[str] | None = None,
             specs: Any = None, cell: Cell | None = None) -> Choice | None:
    """The best measured row for ``objective`` (``"latency"``: lowest p50, ``"size"``,
    ``"throughput"``, ``"accuracy"``, or a column a profiler declares with ``better``) among
    the rows without an error, on ``backends`` (default: all), whose accuracy is within
    ``max_accuracy_drop`` points of the baseline row's (None: no budget). For latency, rows
    within noise of the fastest (not :func:`slower` than it) are a tie, settled by the
    smaller size on disk; the reason names them. None when no row qualifies (the baseline
    always does when it is measured). ConfigError for an unknown objective or a negative
    budget; DataError when no row has the objective's column, or a budget is given and the
    baseline has no accuracy."""
    if not rows:
        return None
    cell = cell or (lambda c, v: f"{v:g}" if isinstance(v, float) else str(v))
    col, lower = _objective(objective, specs)
    if not any(col in r for r in rows):
        raise DataError(f"best: no row has {col!r}; measure it (the profiler that returns it) "
                        "or pick another objective.")
    idx, over = _eligible(rows, col, max_accuracy_drop, backends)
    if not idx:
        return None
    first = (min if lower else max)(idx, key=lambda i: rows[i][col])
    tied = [i for i in idx if i != first and col == "latency_p50_ms"
            and not slower(rows[i], rows[first])]
    pick = min([first, *tied], key=lambda i: (_size(rows[i]), rows[i][col]))
    r = rows[pick]
    word = f"{_WORDS.get(col, 'best ' + col)} measured row" if pick == first else \
        "smallest of the measured rows tied for fastest"
    why = [word
           + ("" if max_accuracy_drop is None else
              f" within the accuracy budget (at most {max_accuracy_drop:g} below the "
              f"baseline's {cell('accuracy', rows[0]['accuracy'])})")
           + ": " + _SAY.get(col, col + " {}").format(cell(col, r[col]))
           + (f", {cell('size_mb', r['size_mb'])} MB" if tied and _num(r.get("size_mb"))
              else "")]
    if isinstance(r.get("accuracy"), (int, float)) and col != "accuracy":
        why.append(f"accuracy {cell('accuracy', r['accuracy'])}"
                   + (f" ({_delta(cell, r)})" if _delta(cell, r) else ""))
    if over:
        why.append("over the budget: " + ", ".join(
            f"{rows[i].get('step')} on {rows[i].get('backend')}"
            + (f" ({_delta(cell, rows[i])})" if _delta(cell, rows[i]) else "")
            for i in over[:3]) + (f" and {len(over) - 3} more" if len(over) > 3 else ""))
    if tied:
        why.append("tied within noise: " + ", ".join(_said(cell, rows[i])
                                                      for i in [first, *tied] if i != pick))
    return Choice(pick, dict(r), str(r.get("step")), str(r.get("backend")),
                  step_index(r.get("step")) if _groups(rows) is not None else None,
                  "; ".join(why))


def _size(r: dict[str, Any]) -> float:
    return float(r["size_mb"]) if _num(r.get("size_mb")) else math.inf


def _delta(cell: Cell, r: dict[str, Any]) -> str:
    v = r.get("accuracy_delta")
    return cell("accuracy_delta", v) if isinstance(v, (int, float)) else ""


def _said(cell: Cell, r: dict[str, Any]) -> str:
    """A tied row: its step, backend, p50 and size."""
    size = f", {cell('size_mb', r['size_mb'])} MB" if _num(r.get("size_mb")) else ""
    return (f"{r.get('step')} on {r.get('backend')} (p50 "
            f"{cell('latency_p50_ms', r['latency_p50_ms'])} ms{size})")
