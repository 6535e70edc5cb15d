"""Several artifacts behind one server: :class:`VariantSet`.

The first artifact is the primary (A); each ``--variant NAME=PATH[:WEIGHT]`` adds one, with its
own :class:`~modelopt_serve.state.ServeState` (replica pool, cache, batcher, metrics view).
:class:`~modelopt_serve.routing.Router` picks who answers each request. A shadow variant
(``--shadow NAME``) answers no client: it gets a copy of every request the primary answered,
after the answer went out, through its own bounded queue (full: the copy is dropped), and its
outputs are compared with the primary's (:mod:`modelopt_serve.agreement`). ``GET /variants``
(:meth:`VariantSet.report`) gives each variant's latency, throughput, errors, agreement,
feedback accuracy and the verdict against the primary, from
:func:`modelopt_core.latency_verdict`, the statistic of ``modelopt compare``.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from modelopt_core.stats import latency_verdict, quantile_ci

from .agreement import Agreement, top1
from .errors import VariantConfigError, VariantSpecError
from .feedback import FeedbackLog
from .routing import Router

__all__ = ["MAX_WINDOW", "MIN_VERDICT", "VERDICT_SAMPLES", "VariantSet", "check_specs"]

log = logging.getLogger("modelopt.serve")

#: fewer answered requests per side than this: no verdict yet
MIN_VERDICT = 20
#: the newest answers per side the verdict uses by default (``GET /variants?window=N``: N)
VERDICT_SAMPLES = 1000
#: the most a ``window`` may ask for (each side's newest; bounds the bootstrap's cost)
MAX_WINDOW = 5000


def _spec_key(spec: Any) -> tuple[Any, ...]:
    return (spec.name, spec.dtype, tuple("?" if isinstance(d, str) else int(d)
                                         for d in spec.shape))


def check_specs(primary: Any, name: str, other: Any, where: str = "serve") -> None:
    """:class:`VariantSpecError` when ``other`` (variant ``name``) takes other inputs than
    ``primary`` (names, dtypes, fixed dims; symbolic dims match any symbolic dim)."""
    a, b = primary.artifact.inputs, other.artifact.inputs
    if [_spec_key(s) for s in a] != [_spec_key(s) for s in b]:
        raise VariantSpecError(
            f"{where}: variant {name!r} ({other.artifact.path}) takes other inputs than the "
            f"primary {primary.variant!r} ({primary.artifact.path}): "
            f"{[s.to_data() for s in b]} vs {[s.to_data() for s in a]}; every variant must "
            "accept the same requests (same input names, dtypes and fixed dims).")


class VariantSet:
    """The variants of one app (``states``: name -> ServeState, the primary first), their
    router, shadows, agreement and feedback; see the module doc."""

    def __init__(self, states: Mapping[str, Any], router: Router,
                 feedback_max: int = 100_000) -> None:
        self.states = dict(states)
        self.primary = next(iter(self.states))
        self.router = router
        self.agreement = {n: Agreement() for n in self.states}
        self.feedback = FeedbackLog(feedback_max)
        #: called with the new table after ``POST /variants`` changed it (Ray: shares it)
        self.on_change: Any = None
        #: per variant: (monotonic end, seconds) of batcher submit -> result, the newest
        self.model_times = {n: collections.deque(maxlen=MAX_WINDOW) for n in self.states}
        primary = self.states[self.primary]
        for n, st in self.states.items():
            if n != self.primary:
                check_specs(primary, n, st)

    @property
    def shadows(self) -> tuple[str, ...]:
        return self.router.table.shadows

    @property
    def live_states(self) -> list[Any]:
        """The states that answer clients (not the shadows)."""
        return [s for n, s in self.states.items() if n not in self.shadows]

    # ---- the request path ----------------------------------------------------------------

    def answered(self, name: str, request_id: str, result: Any, model_s: float) -> None:
        """Note a request ``name`` answered: its model time and (classifiers) its top-1 per
        row, for feedback."""
        self.model_times[name].append((time.monotonic(), model_s))
        self.feedback.remember(request_id, name, top1(result))

    def mirror(self, inputs: Sequence[Any], result: Any, request_id: str) -> None:
        """Give each shadow a copy of a request the primary answered; never raises, never
        waits (a full or closed shadow queue drops the copy)."""
        for name in self.shadows:
            agreement = self.agreement[name]
            st = self.states.get(name)
            try:
                if st is None or not st.ready:
                    agreement.note("dropped")
                    continue
                t0 = time.perf_counter()
                fut = st.batcher.submit(*inputs)
            except Exception:  # noqa: BLE001 - queue full, closed: the copy is dropped
                agreement.note("dropped")
                continue
            fut.add_done_callback(lambda f, n=name, t0=t0: self._compared(
                n, f, result, t0, request_id))

    def _compared(self, name: str, fut: Any, result: Any, t0: float, request_id: str) -> None:
        """A shadow's answer (in its batcher's thread): compared, never returned."""
        try:
            if fut.cancelled() or fut.exception() is not None:
                self.agreement[name].note("failed")
                return
            shadow = fut.result()
            self.model_times[name].append((time.monotonic(), time.perf_counter() - t0))
            self.agreement[name].add(result, shadow)
            self.feedback.add_prediction(request_id, name, top1(shadow))
        except Exception as e:  # noqa: BLE001 - a shadow never fails anything else
            self.agreement[name].note("failed")
            log.warning(json.dumps({"event": "shadow_compare_failed", "variant": name,
                                    "error": f"{type(e).__name__}: {e}"}))

    # ---- reporting -----------------------------------------------------------------------

    def report(self, window: int = VERDICT_SAMPLES) -> dict[str, Any]:
        """``GET /variants``: the split, and per variant its figures and verdict over its
        newest ``window`` answers."""
        if not MIN_VERDICT <= window <= MAX_WINDOW:
            raise VariantConfigError(f"GET /variants: window={window}; expected "
                                     f"{MIN_VERDICT}..{MAX_WINDOW} answers per variant.")
        t = self.router.table
        return {"primary": self.primary, "shadows": list(t.shadows),
                "weights": dict(t.weights), "version": t.version, "window": window,
                "variants": {n: self._one(n, st, window) for n, st in self.states.items()}}

    def _one(self, name: str, st: Any, window: int) -> dict[str, Any]:
        role = ("primary" if name == self.primary else
                "shadow" if name in self.shadows else "live")
        m = st.metrics
        recent = list(m.recent)[-window:]
        ok = [s * 1e3 for _, s, code in recent if code == 200]
        counts = dict(m.counts)
        total = sum(counts.values())
        out: dict[str, Any] = {
            "role": role, "weight": self.router.table.weights[name],
            "artifact": str(st.artifact.path), "backend": st.backend, "ready": st.ready,
            "requests": total, "status_counts": {str(k): v for k, v in sorted(counts.items())},
            "error_rate": (sum(v for k, v in counts.items() if k >= 500) / total
                           if total else None),
            "latency_ms": _latency(ok), "throughput_rps": _rate([e for e, _, _ in recent]),
            "feedback": self.feedback.accuracy(name)}
        if role == "shadow":
            out["agreement"] = self.agreement[name].summary()
            out["model_ms"] = _latency([s * 1e3 for _, s in
                                        list(self.model_times[name])[-window:]])
        if name != self.primary:
            out["vs_primary"] = self._verdict(name, role, window)
        return out

    def _verdict(self, name: str, role: str, window: int) -> dict[str, Any]:
        """B (this variant) against A (the primary), as ``modelopt compare`` says it: live
        variants on their request latency, shadows on their model time (submit to result;
        a shadow's requests skip the HTTP decode and encode); each side's newest ``window``
        answers, cut to the span of time both cover."""
        if role == "shadow":
            basis = "model time (batcher submit to result)"
            ta, tb = (list(self.model_times[n])[-window:] for n in (self.primary, name))
        else:
            basis = "request latency (200 answers)"
            ta, tb = (_ok(self.states[n].metrics.recent)[-window:]
                      for n in (self.primary, name))
        # the same stretch of time on both sides: a load that drifts hits both alike
        since = max(ta[0][0] if ta else 0.0, tb[0][0] if tb else 0.0)
        a, b = ([s for t, s in side if t >= since] for side in (ta, tb))
        out: dict[str, Any] = {"basis": basis, "n_a": len(a), "n_b": len(b)}
        if min(len(a), len(b)) < MIN_VERDICT:
            return {**out, "verdict": None, "reason": f"fewer than {MIN_VERDICT} answered "
                    "requests on a side so far"}
        return {**out, **latency_verdict(a, b)}

    def metric_families(self) -> Iterator[Any]:
        """The ``variant_weight``, shadow and feedback families for ``/metrics``."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from .metrics import PREFIX

        weight = GaugeMetricFamily(f"{PREFIX}_variant_weight", "the variant's share of live "
                                   "traffic, percent (0 for a shadow)", labels=["variant"])
        for n, w in self.router.table.weights.items():
            weight.add_metric([n], w)
        yield weight
        yield from Agreement.families(self.agreement, CounterMetricFamily, GaugeMetricFamily)
        yield from self.feedback.families(list(self.states), CounterMetricFamily,
                                          GaugeMetricFamily)


def _ok(recent: Any) -> list[tuple[float, float]]:
    """(end, seconds) of the 200 answers."""
    return [(t, s) for t, s, code in list(recent) if code == 200]


def _latency(ms: list[float]) -> dict[str, Any]:
    """n, and p50 / p99 each as [estimate, low, high] (95% order-statistic interval)."""
    out: dict[str, Any] = {"n": len(ms)}
    for key, q in (("p50", 0.5), ("p99", 0.99)):
        ci = quantile_ci(ms, q)
        out[key] = None if ci is None else [round(v, 4) for v in ci]
    return out


def _rate(ends: list[float]) -> float | None:
    """Requests per second over the span of the recent answers."""
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return None
    return round((len(ends) - 1) / (ends[-1] - ends[0]), 2)


def build_variants(primary: Any, extra: Mapping[str, Any], make_state: Any,
                   shadow: Sequence[str], seed: int | None, feedback_max: int) -> VariantSet:
    """The app's :class:`VariantSet`: ``primary`` (a ServeState), ``extra`` name -> the
    variant's artifact (path or artifact), ``(artifact, weight)`` or a dict with ``artifact``
    and optional ``weight``, ``backend``, ``model``, ``model_kwargs``, ``backend_options``;
    ``make_state(artifact, backend, overrides, name)`` builds a ServeState."""
    from .routing import check_name, initial_weights

    states, given = {primary.variant: primary}, {}
    for name, spec in extra.items():
        check_name(name, "variants")
        if name in states:
            raise VariantConfigError(f"variant name {name!r} is used twice (the primary is "
                                     f"{primary.variant!r}); give each variant its own name.")
        if isinstance(spec, tuple):
            spec = {"artifact": spec[0], "weight": spec[1]}
        elif not isinstance(spec, Mapping):
            spec = {"artifact": spec}
        spec = dict(spec)
        given[name] = spec.pop("weight", None)
        artifact, backend = spec.pop("artifact"), spec.pop("backend", None)
        states[name] = make_state(artifact, backend, spec, name)
    unknown = [s for s in shadow if s not in states or s == primary.variant]
    if unknown:
        raise VariantConfigError(f"--shadow {unknown}: a shadow must be one of the variants "
                                 f"{[n for n in states if n != primary.variant]}, not the "
                                 "primary.")
    weights = initial_weights(list(states), given, shadow)
    router = Router(list(states), weights, tuple(dict.fromkeys(shadow)), seed)
    return VariantSet(states, router, feedback_max)
