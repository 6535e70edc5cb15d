"""A/B comparison of two saved artifacts: is B really faster or smaller than A?

Both artifacts run the same inputs (built from A's input specs, symbolic dims set to 1) in
interleaved blocks (A B B A A B ...), so drift of the machine's load or clock hits both sides
alike. The latency verdict rests on a bootstrap 95% confidence interval of the ratio of the
medians (B / A): each side's per-call times are resampled independently; an interval that
contains 1 means "no significant difference" (:mod:`modelopt_core.stats`, which a server's
live ``GET /variants`` verdict uses too). ``modelopt compare A B`` is the command line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import modelopt_core as mo
from modelopt_core.cli import add_model_options, model_options
from modelopt_core.recipe import build_model
from modelopt_core.stats import bootstrap_ratio_ci, latency_verdict

__all__ = ["bootstrap_ratio_ci", "compare_artifacts", "interleaved_times", "run_compare",
           "setup_compare"]


def _load(path: str | Path, which: str, pm: Any, model: Any = None) -> mo.ModelArtifact:
    p = Path(path)
    if not p.exists():
        raise mo.ArtifactError(f"compare: artifact {which} {str(p)!r} does not exist; pass an "
                               "artifact folder written by ModelArtifact.save() (or a bare "
                               ".onnx file).")
    try:
        return mo.load_artifact(p, model=model, plugins=pm)
    except mo.ArtifactError as e:
        msg = str(e) if str(p) in str(e) else f"{p}: {e}"
        if model is None and "weights only" in msg:
            msg += (" From the command line name the architecture with --model "
                    "package.module:Class [--model-kwargs JSON]; from Python pass "
                    "model_a=/model_b= to compare_artifacts.")
        raise type(e)(f"compare: artifact {which}: {msg}") from None


def _backend(art: mo.ModelArtifact, name: str | None, which: str, pm: Any,
             options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The configured backend and options artifact ``which`` runs with: ``name`` when given,
    else the runtime the artifact carries (a search's best: its backend and options), else its
    format's reference backend; ``options`` override the artifact's own."""
    try:
        name, opts = pm.runtime_for(art, name, options)
        return pm.backend_for(art, name, opts), opts  # typed: format, config, availability
    except (mo.FormatError, mo.BackendUnavailableError, mo.ConfigError,
            mo.UnknownComponentError) as e:
        raise type(e)(f"compare: artifact {which} ({art.path}): {e}") from e


def _inputs(specs: tuple[mo.TensorSpec, ...], seed: int) -> tuple[Any, ...]:
    """One input tuple matching ``specs``: symbolic dims 1; floats standard normal (seeded),
    integers and booleans zero."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for s in specs:
        shape = tuple(1 if isinstance(d, str) else int(d) for d in s.shape)
        dtype = getattr(torch, s.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise mo.InputSpecError(f"compare: input {s.name!r} has dtype {s.dtype!r}, which "
                                    "torch does not know.")
        out.append(torch.randn(shape, generator=g).to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype))
    return tuple(out)


def _size_bytes(art: mo.ModelArtifact) -> int:
    p = Path(art.path or "")
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.name != "manifest.json")


def _timed(runner: Any, xs: tuple[Any, ...], count: int, out: list[float]) -> None:
    for _ in range(count):
        t0 = time.perf_counter()
        runner(*xs)
        runner.synchronize()
        out.append(time.perf_counter() - t0)


def interleaved_times(runners: list[Any], xs: tuple[Any, ...], *, runs: int, warmup: int,
                      block: int, pause_s: float = 0.0) -> list[list[float]]:
    """Per-call wall times (seconds) of every runner on ``xs``: ``warmup`` untimed calls
    each, then ``runs`` timed calls each in blocks of ``block``, the order of the runners
    rotating every round (A B C, B C A, ...) so drift of the machine's load or clock hits
    all of them alike. ``pause_s`` > 0: a pause and one untimed call before each block, so
    the previous runner's spinning threads (ONNX Runtime's) are idle again and do not bill
    the next one, as between a server's spaced requests."""
    for r in runners:
        _timed(r, xs, warmup, [])
    times: list[list[float]] = [[] for _ in runners]
    n, k = len(runners), 0
    while min(len(t) for t in times) < runs:
        for j in range(n):
            side = (k + j) % n
            if pause_s > 0:
                time.sleep(pause_s)
                _timed(runners[side], xs, 1, [])
            _timed(runners[side], xs, min(block, runs - len(times[side])), times[side])
        k += 1
    return times


def compare_artifacts(path_a: str | Path, path_b: str | Path, *, backend_a: str | None = None,
                      backend_b: str | None = None, runs: int = 300, warmup: int = 20,
                      block: int = 10, bootstrap: int = 2000, seed: int = 0,
                      model_a: Any = None, model_b: Any = None, plugins: Any = None,
                      backend_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure the latency of artifacts A and B side by side and their size on disk.

    ``runs`` timed calls per side, in interleaved blocks of ``block`` calls. Each side runs
    on the runtime it carries (``props.runtime`` with its options: a search's ``best/`` is
    measured as the search measured it), else on its format's reference backend;
    ``backend_a`` overrides A's, ``backend_b`` B's (default: ``backend_a`` when given);
    ``backend_options`` override both sides' options. Returns plain data: per side path, format, backend, p50/p95 ms, size MB; the
    latency ratio B/A of the medians with its bootstrap 95% CI and verdict ("B faster", "B
    slower" or "no significant difference"); the size ratio B/A and verdict. ``model_a`` /
    ``model_b``: module skeletons for torch (weights-only) artifacts, as for
    :func:`~modelopt_core.load_artifact`."""
    import numpy as np

    from modelopt_core import describe_environment

    if runs < 2 or block < 1 or warmup < 0 or bootstrap < 100:
        raise mo.ConfigError("compare: needs runs >= 2, block >= 1, warmup >= 0 and "
                             "bootstrap >= 100.")
    pm = plugins or mo.get_plugin_manager()
    arts = [_load(path_a, "A", pm, model_a), _load(path_b, "B", pm, model_b)]
    sa, sb = arts[0].inputs, arts[1].inputs
    if [s.dtype for s in sa] != [s.dtype for s in sb] or [len(s.shape) for s in sa] != \
            [len(s.shape) for s in sb]:
        raise mo.InputSpecError(
            f"compare: A ({path_a}) and B ({path_b}) take different inputs: "
            f"{[s.to_data() for s in sa]} vs {[s.to_data() for s in sb]}.")
    xs = _inputs(sa, seed)
    chosen = [_backend(arts[0], backend_a, "A", pm, backend_options),
              _backend(arts[1], backend_b or backend_a, "B", pm, backend_options)]
    classes = [type(b) for b, _ in chosen]
    ctx = mo.Context(example_inputs=xs, plugins=pm, show_progress=False)
    runners = [b.load(art, ctx) for (b, _), art in zip(chosen, arts)]
    try:  # A B, B A, A B...
        times = interleaved_times(runners, xs, runs=runs, warmup=warmup, block=block)
    finally:
        for r in runners:
            r.close()
    ms = [np.asarray(t) * 1e3 for t in times]
    latency = latency_verdict(ms[0], ms[1], n=bootstrap, seed=seed)  # as GET /variants
    sizes = [_size_bytes(a) for a in arts]
    size_ratio = sizes[1] / sizes[0] if sizes[0] else None
    size_verdict = ("same size" if sizes[0] == sizes[1] else
                    "B smaller" if sizes[1] < sizes[0] else "B larger")
    sides = {}
    for key, art, cls, t, size in zip("ab", arts, classes, ms, sizes):
        sides[key] = {"path": str(art.path), "format": art.format, "backend": cls.name,
                      "backend_options": chosen["ab".index(key)][1],
                      "latency_p50_ms": float(np.median(t)),
                      "latency_p95_ms": float(np.quantile(t, 0.95)), "latency_n": int(t.size),
                      "size_mb": size / 2**20, "size_bytes": size}
    return {**sides,
            "latency": latency,
            "size": {"ratio_b_over_a": size_ratio, "verdict": size_verdict},
            "inputs": {s.name: list(x.shape) for s, x in zip(sa, xs)},
            "runs": runs, "block": block, "bootstrap": bootstrap, "seed": seed,
            "environment": describe_environment(pm)}


def _opts(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "(defaults)"


def verdict_line(res: dict[str, Any]) -> str:
    """One sentence: what the latency comparison means."""
    lat = res["latency"]
    r, (lo, hi) = lat["ratio_b_over_a"], lat["ci95"]
    ci = f"p50 ratio B/A {r:.3f}, 95% CI {lo:.3f} to {hi:.3f}"
    if lat["verdict"] == "B faster":
        return f"verdict: B is faster: {1 / r:.2f}x the speed of A ({ci})."
    if lat["verdict"] == "B slower":
        return f"verdict: B is slower: {r:.2f}x the latency of A ({ci})."
    return f"verdict: no significant latency difference ({ci}: contains 1)."


def setup_compare(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``modelopt compare``."""
    parser.add_argument("a", help="artifact A (folder from ModelArtifact.save, or a .onnx file)")
    parser.add_argument("b", help="artifact B")
    parser.add_argument("--backend", default=None,
                        help="backend for A (and B unless --backend-b); default: the preferred "
                             "available backend of the artifact's format")
    parser.add_argument("--backend-b", default=None, help="backend for B")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a backend config option for both sides (repeatable), overriding "
                             "the options an artifact carries; values parse as JSON when "
                             "they can")
    parser.add_argument("--runs", type=int, default=300, help="timed calls per artifact")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per artifact")
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs and bootstrap")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_options(parser)  # for torch-format A and/or B


def run_compare(args: argparse.Namespace) -> int:
    """Run ``modelopt compare``; prints a table and a verdict line (or JSON)."""
    model = build_model(*model_options(args), where="compare")
    res = compare_artifacts(args.a, args.b, backend_a=args.backend, backend_b=args.backend_b,
                            runs=args.runs, warmup=args.warmup, seed=args.seed,
                            model_a=model, model_b=model,
                            backend_options=mo.parse_options(args.backend_option))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    rows = [("", "A", "B", "B/A"),
            ("artifact", res["a"]["path"], res["b"]["path"], ""),
            ("backend", res["a"]["backend"], res["b"]["backend"], ""),
            ("options", _opts(res["a"]["backend_options"]), _opts(res["b"]["backend_options"]),
             ""),
            ("p50 ms", f"{res['a']['latency_p50_ms']:.3f}", f"{res['b']['latency_p50_ms']:.3f}",
             f"{res['latency']['ratio_b_over_a']:.3f}"),
            ("p95 ms", f"{res['a']['latency_p95_ms']:.3f}", f"{res['b']['latency_p95_ms']:.3f}",
             ""),
            ("size MB", f"{res['a']['size_mb']:.3f}", f"{res['b']['size_mb']:.3f}",
             "" if res["size"]["ratio_b_over_a"] is None
             else f"{res['size']['ratio_b_over_a']:.3f}")]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    print(verdict_line(res) + f" Size: {res['size']['verdict']}.")
    return 0
