"""The runtime side of the contract: backends (outputs, refusal, the Runner protocol,
threads) and their declared traits."""

from __future__ import annotations

from typing import Any

import modelopt_core as mo

from .contract import (
    TOLERANCE,
    _check_untouched,
    _close,
    _fail,
    _load,
    _on_models,
    _require,
    _resolve,
    _skip_unavailable,
    _source,
    _who,
    check_config,
    fingerprint,
)

__all__ = ["check_backend", "check_backend_runner", "check_backend_thread_safe",
           "check_backend_traits"]

def check_backend_traits(name_or_cls: Any, pm: Any = None) -> None:
    """thread_option is a field of its Config, releases_gil a bool, it accepts the formats it
    is the reference evaluator of, and no other backend is the reference for one of them."""
    cls, pm = _resolve("backend", name_or_cls, pm)
    who = _who(cls)
    if cls.thread_option is not None:
        _require(cls.thread_option in mo.config_fields(cls.Config), who,
                 "thread_option names a field of its Config", repr(cls.thread_option))
    _require(isinstance(cls.releases_gil, bool), who, "declares releases_gil as a bool")
    _require(set(cls.reference_for) <= set(cls.accepts), who,
             "is the reference only for formats it accepts",
             f"reference_for={cls.reference_for}, accepts={cls.accepts}")
    for fmt in cls.reference_for:
        others = [i.name for i in pm.components("backend")
                  if i.name != cls.name and fmt in i.cls.reference_for]
        _require(not others, who, "one reference backend per format",
                 f"{fmt!r} has several reference backends: {[cls.name, *others]}")


def _backend_format(cls: type) -> str:
    return next((f for f in ("torch", "onnx") if f in cls.accepts), cls.accepts[0])


def check_backend(name_or_cls: Any, pm: Any = None) -> None:
    """Traits, config, outputs equal to the torch original's (two batch sizes), the artifact
    untouched, other formats refused with a FormatError naming it, the Runner protocol."""
    cls, pm = _resolve("backend", name_or_cls, pm)
    check_backend_traits(cls, pm)
    check_config(cls, pm)
    _skip_unavailable(cls)
    who = _who(cls)

    def run(w: Any) -> None:
        s, art = _source(w, pm, _backend_format(cls))
        before = fingerprint(art, pm)
        with s.runner("torch", s.original) as ref:
            expected = ref(w.x)
        with _load(s, cls, art) as r:
            got, got_again = r(w.x), r(w.x[:3])
            _close(who, "matches the torch original", got, expected, **TOLERANCE)
            _close(who, "matches the torch original (batch 3)", got_again, expected[:3],
                   **TOLERANCE)
            _check_runner_protocol(who, r, art, w.x)
        _check_untouched(who, w, art, before, pm)
        other = "onnx" if "onnx" not in cls.accepts else "torch"
        if other not in cls.accepts and s.pm is pm and cls.name in {
                i.name for i in pm.components("backend")}:
            wrong = s.original if other == "torch" else _source(w, pm, "onnx")[1]
            try:
                s.runner(cls.name, wrong).close()
            except mo.FormatError as e:
                _require(cls.name in str(e), who, "a refused format's error names it", str(e))
            else:
                _fail(who, f"refuses {other!r} artifacts with a FormatError")

    _on_models(who, run)


def _check_runner_protocol(who: str, r: Any, art: Any, xs: Any) -> None:
    import torch

    x, x2 = xs[:4], xs[4:9]
    rule, close = "keeps the Runner protocol", {"rtol": 1e-5, "atol": 1e-5}
    want, want2 = r(x), r(x2)
    flat = r.run_flat([x])
    _require(isinstance(flat, list) and all(isinstance(t, torch.Tensor) for t in flat), who,
             rule, "run_flat returns a list of tensors")
    _close(who, f"{rule}: run_flat(x) == flatten(runner(x))", flat, r.flatten(want), **close)
    _close(who, f"{rule}: unflatten(run_flat(x)) == runner(x)", r.unflatten(flat), want, **close)
    _require(type(r.unflatten(flat)) is type(want), who, rule, "unflatten's type differs")
    many = r.run_many([(x,), x2])
    _require(isinstance(many, list) and len(many) == 2, who, rule,
             "run_many returns one output per item")
    _close(who, f"{rule}: run_many", many, [want, want2], **close)
    _close(who, f"{rule}: run_many by name", r.run_many([{art.inputs[0].name: x}]), [want],
           **close)
    _require(r.run_many([]) == [], who, rule, "run_many([]) is []")
    try:
        r.run_flat([x, x])
    except mo.InputSpecError:
        pass
    else:
        _fail(who, rule, "one input too many is not an InputSpecError")


def check_backend_runner(name_or_cls: Any, pm: Any = None) -> None:
    """The Runner protocol: run_flat / flatten / unflatten / run_many agree with the call,
    a closed runner raises RunnerClosedError."""
    cls, pm = _resolve("backend", name_or_cls, pm)
    _skip_unavailable(cls)
    who = _who(cls)

    def run(w: Any) -> None:
        s, art = _source(w, pm, _backend_format(cls))
        with _load(s, cls, art) as r:
            _check_runner_protocol(who, r, art, w.x)
        for call in (lambda: r.run_flat([w.x[:4]]), lambda: r.run_many([(w.x[:4],)])):
            try:
                call()
            except mo.RunnerClosedError:
                continue
            _fail(who, "keeps the Runner protocol", "a closed runner still runs")

    _on_models(who, run)


def check_backend_thread_safe(name_or_cls: Any, pm: Any = None, *, threads: int = 4,
                              calls: int = 12) -> None:
    """One runner shared by ``threads`` threads (released together), threads x calls calls
    on distinct inputs of batch 1..8: each answer equals the sequential answer for its input
    and nothing raises (a runtime's 'request is busy' breaks the contract)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    cls, pm = _resolve("backend", name_or_cls, pm)
    _skip_unavailable(cls)
    who = _who(cls)

    def run(w: Any) -> None:
        s, art = _source(w, pm, _backend_format(cls))
        g = torch.Generator().manual_seed(1)
        xs = [torch.randn(1 + i % 8, *w.example.shape[1:], generator=g)
              for i in range(threads * calls)]
        with _load(s, cls, art) as r:
            expected = [r(x) for x in xs]
            barrier = threading.Barrier(threads)

            def worker(k: int) -> list[tuple[int, Any]]:
                barrier.wait()
                return [(i, r(xs[i])) for i in range(k, len(xs), threads)]

            with ThreadPoolExecutor(threads) as pool:
                try:
                    results = [p for part in pool.map(worker, range(threads)) for p in part]
                except Exception as e:  # noqa: BLE001 - any error under threads is the finding
                    _fail(who, "is safe to share between threads", f"{type(e).__name__}: {e}")
        _require(sorted(i for i, _ in results) == list(range(len(xs))), who,
                 "is safe to share between threads", "calls were lost")
        for i, got in results:
            _close(who, f"is safe to share between threads (call {i}, batch {xs[i].shape[0]})",
                   got, expected[i], rtol=1e-5, atol=1e-5)

    _on_models(who, run)
