"""The search's targets, read from the registry (a runtime joins with no edit here), and what
this CPU offers them (:func:`native_bf16`)."""

from __future__ import annotations

from typing import Any

import modelopt_core as mo

from .errors import SearchError


def targets(pm: Any = None, source: str = "torch") -> dict[str, tuple[str, str]]:
    """The search's targets, built from the registry: target (the backend's name) ->
    (artifact format, backend), for every registered backend that is the reference evaluator
    of a format (``Backend.reference_for``) and is available here, whose format a chain of
    available exporters reaches from the original's format ``source`` (torch; an ONNX
    original reaches ONNX Runtime as it is, OpenVINO through its ONNX reader...). A
    third-party runtime (exporter + format + backend) joins with no edit here; the runtime
    option that sets its thread count is its backend's ``thread_option`` trait
    (:func:`thread_option_of`)."""
    pm = pm or mo.get_plugin_manager()
    out: dict[str, tuple[str, str]] = {}
    for info in pm.components("backend"):
        cls = info.cls
        if not cls.reference_for or not cls.availability()[0]:
            continue
        fmt = cls.reference_for[0]
        try:
            chain = pm.export_path(source, fmt)
        except mo.ModeloptError:
            continue
        if all(e.cls.availability()[0] for e in chain):
            out[info.name] = (fmt, info.name)
    return out


def unavailable_targets(pm: Any = None, source: str = "torch") -> dict[str, str]:
    """Registered runtimes that are not targets here, and why (for error messages)."""
    pm = pm or mo.get_plugin_manager()
    have = targets(pm, source)
    out = {}
    for info in pm.components("backend"):
        if info.cls.reference_for and info.name not in have:
            ok, why = info.cls.availability()
            out[info.name] = why if not ok else f"no available exporter chain from {source}"
    return out


def check_target(target: str, pm: Any = None, source: str = "torch") -> tuple[str, str]:
    """``target``'s (format, backend), or :class:`SearchError` listing the targets here (for
    an original of format ``source``)."""
    have = targets(pm, source)
    if target not in have:
        gone = unavailable_targets(pm, source)
        why = f" ({target}: {gone[target]})" if target in gone else ""
        raise SearchError(f"optimize: unknown target {target!r}{why}; pick one of "
                          f"{sorted(have)}" + (f" (not available here: {', '.join(sorted(gone))})"
                                               if gone else "") + ".")
    return have[target]


def thread_option_of(target: str, pm: Any = None) -> str | None:
    """The runtime option that sets ``target``'s thread count: its backend's declared
    ``thread_option`` (None when the target is unknown or its backend declares none)."""
    pm = pm or mo.get_plugin_manager()
    try:
        return pm.get("backend", target).cls.thread_option
    except mo.ModeloptError:
        return None


def native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX): OpenVINO's
    ``inference_precision="bf16"`` is then a cheap, often fast candidate (elsewhere it is
    emulated or ignored, and not worth a trial of its own)."""
    return bool(set(mo.cpu_flags()) & {"avx512_bf16", "amx_bf16"})


def reachable(accepts: tuple[str, ...], source: str, pm: Any) -> bool:
    """Whether a component taking ``accepts`` formats can run in a recipe that starts from an
    original of format ``source``: some format it takes is ``source`` or an export away."""
    for fmt in accepts:
        try:
            pm.export_path(source, fmt)
            return True
        except mo.ModeloptError:
            continue
    return False


def unreachable_steps(space: dict[str, Any], pm: Any, source: str
                      ) -> tuple[dict[str, Any], list[str]]:
    """``space`` without the stage components an original of format ``source`` cannot reach
    (pruning and distillation run on torch models: an ONNX original cannot get there), and
    one note per stage saying what was left out and why."""
    out, notes = dict(space), []
    for stage in ("prune", "recovery", "graph", "precision"):
        gone = []
        for name in out[stage]:
            if name == "none":
                continue
            try:
                accepts = pm.get("optimizer", name).cls.accepts
            except mo.ModeloptError:
                continue  # check_space names it
            if not reachable(accepts, source, pm):
                gone.append((name, accepts))
        if gone:
            out[stage] = [n for n in out[stage] if n not in {g[0] for g in gone}] or ["none"]
            takes = sorted({f for _, a in gone for f in a})
            notes.append(f"{', '.join(g[0] for g in gone)} left out of the search's {stage} "
                         f"stage: {'it runs' if len(gone) == 1 else 'they run'} on "
                         f"{'/'.join(takes)} models, and no exporter leads there from the "
                         f"original's format ({source})")
    return out, notes
