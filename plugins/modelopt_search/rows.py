"""A search's trial rows (see :func:`.study.trial_rows`) ranked: the feasible ones, the best, the
Pareto front; the best and the trials tied with it marked (the ``best`` column) and said in one
line; and the atomic JSON writes of its output files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _feasible(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Complete, feasible rows with ``key`` and accuracy; a repeat of an earlier trial's
    recipe (``duplicate_of``) is that trial's copy, not a candidate of its own."""
    return [r for r in rows if r.get("state") == "complete" and r.get("feasible")
            and "duplicate_of" not in r
            and isinstance(r.get(key), (int, float)) and isinstance(r.get("accuracy"),
                                                                       (int, float))]


def ranked_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The feasible trials, lowest objective ``key`` first (ties: higher accuracy)."""
    return sorted(_feasible(rows, key), key=lambda r: (r[key], -r["accuracy"], r["trial"]))


def best_row(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The feasible trial with the lowest objective ``key`` (ties: higher accuracy)."""
    ranked = ranked_rows(rows, key)
    return ranked[0] if ranked else None


def pareto_rows(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Feasible trials not dominated on (accuracy up, every key in ``keys`` down)."""
    ok = [r for r in _feasible(rows, keys[0]) if all(isinstance(r.get(k), (int, float))
                                                      for k in keys)]

    def vec(r: dict[str, Any]) -> tuple[float, ...]:
        return (-r["accuracy"], *(r[k] for k in keys))

    front = [r for r in ok if not any(
        all(a <= b for a, b in zip(vec(o), vec(r))) and vec(o) != vec(r) for o in ok)]
    return sorted(front, key=lambda r: vec(r)[1])


def tie_text(ratio: float, lo: float, hi: float) -> str:
    """How a trial within noise of the best is marked: its p50 over the best's, 95% CI."""
    return f"tie within noise (p50 ratio {ratio:.3f}, 95% CI {lo:.3f}-{hi:.3f})"


def mark_best(rows: list[dict[str, Any]], best: int | None,
              ties: dict[int, tuple[float, float, float]], final: bool) -> None:
    """The ``best`` column: ``"best"`` on trial ``best`` at the end (``final``: it is the
    final artifact), ``"best so far"`` while the search runs, and on each trial of ``ties``
    (trial -> p50 ratio to the best's with its 95% CI: within noise) :func:`tie_text`."""
    for r in rows:
        r.pop("best", None)
        if r.get("trial") == best:
            r["best"] = "best" if final else "best so far"
        elif final and r.get("trial") in ties:
            r["best"] = tie_text(*ties[r["trial"]])


def summary_line(rows: list[dict[str, Any]], unit: str = "") -> str:
    """One line naming the best trial (marked by :func:`mark_best`), how it was ranked, and
    every trial tied with it within noise, or that no trial met the accuracy budget."""
    best = next((r for r in rows if r.get("best") in ("best", "best so far")), None)
    if best is None:
        return "No trial met the accuracy budget yet."
    final = best["best"] == "best"
    how = f"{best.get('objective', 0):.4g} {unit}".rstrip()
    if isinstance(best.get("confirmed_p50_ms"), (int, float)):
        how = f"p50 {best['confirmed_p50_ms']:.4g} ms re-timed side by side at the end"
    elif unit == "ms":
        how += " (its own trial's timing)"
    line = (f"{'Best' if final else 'Best so far'}: trial {best['trial']} on "
            f"{best.get('backend', '?')}, {how}" + ("; final-artifact/ holds it" if final else ""))
    ties = [r for r in rows if str(r.get("best", "")).startswith("tie within noise")]
    if ties:  # "tie within noise with trial 2 (p50 ratio 1.02, 95% CI 0.99-1.07) and ..."
        line += "; tie within noise with " + " and ".join(
            f"trial {r['trial']} ({r['best'].partition('(')[2]}" for r in ties) + \
            ": as fast as it here"
    hits = sum(r.get("cache_hits") or 0 for r in rows)
    if hits:  # steps loaded from the step cache instead of recomputed
        line += f". Step cache: {hits} step(s) loaded, not recomputed"
    return line + "."


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    from modelopt_core import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str))
