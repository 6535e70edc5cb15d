"""How :meth:`Session.compare <modelopt_core.Session.compare>` measures: every artifact on
every backend that runs its format, with every profiler, into one :class:`Report`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .artifact import ModelArtifact
from .environment import describe_environment
from .errors import ModeloptError
from .report import Report

__all__ = ["compare_artifacts"]

log = logging.getLogger("modelopt")


def compare_artifacts(s: Any, backends: Sequence[str], profilers: Sequence[str],
                      artifacts: Sequence[ModelArtifact] | None,
                      backend_options: dict[str, dict[str, Any]] | None,
                      profiler_options: dict[str, dict[str, Any]] | None) -> Report:
    """Profile ``artifacts`` (default: the session ``s``'s history) on every backend that
    runs its format; the first row is the baseline (see :meth:`Session.compare`)."""
    backend_options = backend_options or {}
    profiler_options = profiler_options or {}
    profs = [s.pm.get("profiler", p).cls(**profiler_options.get(p, {}))
             for p in profilers]
    rows = []
    measured: dict[str, list[str]] = {}
    arts = list(artifacts) if artifacts is not None else s.history
    pairs = [(idx, art, b) for idx, art in enumerate(arts) for b in backends
             if art.format in s.pm.get("backend", b).cls.accepts]
    for idx, art, b in s.context().progress(pairs, len(pairs), "measuring"):
        bcls = s.pm.get("backend", b).cls
        ok, why = bcls.availability()
        row: dict[str, Any] = {"step": _label(idx, art), "format": art.format,
                               "backend": b}
        note = _row_note(art)
        if note:
            row["note"] = note
        if not ok:
            row["error"] = f"unavailable: {why}"
            rows.append(row)
            continue
        ctx = s.context()
        with s._make_runner(art, b, **backend_options.get(b, {})) as runner:
            for prof in profs:
                try:
                    row.update(prof.profile(runner, art, ctx))
                except ModeloptError as e:
                    row.setdefault("error", f"{prof.name}: {e}")
        rows.append(row)
        if ctx.notes:  # what the measurement itself warned about (noise...)
            measured[f"{row['step']} on {b}"] = list(ctx.notes)
    notes = {_label(i, a): list(a.lineage[-1].notes) for i, a in enumerate(arts)
             if a.lineage and a.lineage[-1].notes}
    notes.update(measured)
    unused = [b for b in backends if not any(p[2] == b for p in pairs)]
    if unused:
        msg = (f"backend(s) {unused} run no artifact of this comparison (formats "
               f"{sorted({a.format for a in arts})}): no rows for them")
        log.warning(msg)
        notes["compare"] = [msg]
    return Report(rows, environment=describe_environment(s.pm), notes=notes,
                  plugins=s.pm)


def _row_note(art: ModelArtifact) -> str:
    """What a reader must know to read a row right: simulated precision, steps that did
    nothing."""
    if art.lineage and any("no-op" in n for n in art.lineage[-1].notes):
        return "no-op: the step changed nothing"
    if art.format == "torch" and art.props.simulated:
        return (f"simulated {art.props.simulated.upper()} (fake-quant in float; export for "
                "real speed)")
    return ""


def _label(idx: int, art: ModelArtifact) -> str:
    return "original" if idx == 0 else f"{idx}:{art.name}"
