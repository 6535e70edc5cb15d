"""A search's trial rows (see :func:`.study.trial_rows`) ranked: the feasible ones, the best, the
Pareto front; and the atomic JSON writes of its output files."""

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


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    from modelopt_core import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str))
