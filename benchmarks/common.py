"""Shared helpers for the benchmarks: timing side by side, agreement metrics, result files."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def p50_ms(fn: Callable[[], Any], warmup: int = 3, iters: int = 15) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def interleaved_p50(fns: dict[str, Callable[[], Any]], rounds: int = 15,
                    warmup: int = 3, block: int = 3, pause_s: float = 0.05) -> dict[str, float]:
    """p50 of each candidate, timed in short blocks round-robin so machine noise hits all of
    them alike; a pause between blocks lets spinning runtime threads (ORT) go idle so they do
    not bill the next candidate. The order rotates every round, so no candidate always runs
    right after the same other one (a fixed order would bill any after-effect of one
    candidate, such as cache or frequency state, to the same next one every round)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(max(1, rounds // block)):
        for k, f in items[r % len(items):] + items[:r % len(items)]:
            time.sleep(pause_s)
            f()  # re-warm caches after the other candidates ran
            for _ in range(block):
                t0 = time.perf_counter()
                f()
                ts[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in ts.items()}


def block_rounds(fns: dict[str, Callable[[], Any]], rounds: int = 20, block_ms: float = 40.0,
                 warmup: int = 3, pause_s: float = 0.05, seed: int = 0) -> dict[str, list[float]]:
    """Per-call ms of every candidate in each of ``rounds`` rounds: ``{name: [ms per round]}``.

    Each round times every candidate once, as a block of back-to-back calls sized to about
    ``block_ms`` (at least 2 calls; the same count every round) divided by its call count, so
    a short call (1-2 ms) is not timed alone right after the pause, where timer granularity,
    a just-woken core and the runtime's sleeping threads bill it more than a long one. Between
    blocks: a pause (spinning runtime threads go idle and do not bill the next candidate) and
    one untimed call. The order is shuffled every round (seeded by ``seed``): a fixed or merely
    rotating order has each candidate follow the same other one, which bills that one's
    after-effects (caches, frequency) to it every round; on YOLOv8n IRs (1.4 ms a call) two
    A/A copies read 1.02x and 1.04x in rotation, 0.98x and 0.99x shuffled. Ratios are then
    taken inside a round (:func:`paired_block_ratios`): neighbours in time share the machine's
    state."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    calls: dict[str, int] = {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        f()
        f()
        one = (time.perf_counter() - t0) / 2
        calls[k] = max(2, int(round(block_ms / 1e3 / max(one, 1e-6))))
    out: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    rng = random.Random(seed)
    for _ in range(max(1, rounds)):
        for k, f in rng.sample(items, len(items)):
            time.sleep(pause_s)
            f()
            n = calls[k]
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            out[k].append(1e3 * (time.perf_counter() - t0) / n)
    return out


def paired_block_ratios(fns: dict[str, Callable[[], Any]], baselines: list[str],
                        repeats: int = 3, **kw: Any) -> dict[str, dict[str, list[float]]]:
    """``{baseline: {candidate: sorted per-repeat speedups}, "p50_ms": {candidate: sorted
    per-repeat p50 ms}}`` (the shape of ``bench_runtimes.paired_ratios``): each repeat runs
    :func:`block_rounds` (``kw`` goes to it) and its speedup of a candidate over a baseline is
    the median over rounds of baseline_ms / candidate_ms taken inside the same round."""
    reps = [block_rounds(fns, seed=i, **kw) for i in range(repeats)]
    out: dict[str, dict[str, list[float]]] = {
        b: {k: sorted(float(np.median(np.asarray(r[b]) / np.asarray(r[k]))) for r in reps)
            for k in fns} for b in baselines}
    out["p50_ms"] = {k: sorted(float(np.median(r[k])) for r in reps) for k in fns}
    return out


def repeated_ratios(fns: dict[str, Callable[[], Any]], baseline: str, repeats: int = 3,
                    **kw: Any) -> tuple[dict[str, list[float]], list[float]]:
    """Speedups of every candidate over ``baseline``, measured head to head ``repeats`` times
    with :func:`interleaved_p50` (``kw`` goes to it): ``({name: sorted ratios}, sorted
    baseline p50s in ms)``. Quote the median and the range: one repeat can be hit by a
    transient slowdown of a shared machine."""
    reps = [interleaved_p50(fns, **kw) for _ in range(repeats)]
    ratios = {k: sorted(rep[baseline] / rep[k] for rep in reps) for k in fns}
    return ratios, sorted(rep[baseline] for rep in reps)


def span(ratios: list[float]) -> str:
    """``median (min-max)`` of sorted ratios, e.g. ``5.05x (4.83-5.07x)``."""
    return f"{ratios[len(ratios) // 2]:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}x)"


def agreement(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict[str, float]:
    """Top-1 agreement (%) and max relative error of ``got`` logits vs ``ref`` logits."""
    r = torch.cat([x.float() for x in ref])
    g = torch.cat([x.float() for x in got])
    top1 = 100.0 * float((r.argmax(1) == g.argmax(1)).float().mean())
    rel = float((r - g).abs().max() / r.abs().max().clamp_min(1e-12))
    return {"top1_agreement_pct": top1, "max_rel_error": rel}


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the same record every Report carries)."""
    from modelopt_core.environment import describe_environment

    return describe_environment()


def machine_line(env: dict[str, Any]) -> str:
    """The line at the top of every results table: the machine class (CPU model, cores and
    threads, AVX-512 VNNI/BF16, AMX...), load and library versions, the same line a Report
    starts with. A figure is only comparable with figures from the same class of machine."""
    from modelopt_core.tables import environment_line

    return "Measured on: " + environment_line(env)


def write_results(name: str, payload: dict[str, Any], table: list[dict[str, Any]],
                  columns: list[str], title: str, notes: list[str] = ()) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (the machine's line first: see
    :func:`machine_line`); a ``--quick`` smoke run
    (``payload["quick"]``) writes under ``results/quick/`` (not kept in git), so it never
    replaces the figures of a full run."""
    folder = RESULTS / "quick" if payload.get("quick") else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, rows=table, machine=machine())
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    lines = [f"# {title}", "", machine_line(payload["machine"]), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    lines += [""] + [f"- {n}" for n in notes]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
