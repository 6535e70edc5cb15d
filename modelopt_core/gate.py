"""The accuracy gate: "set an acceptable accuracy-drop threshold" and check it after every step.

With ``Session(max_accuracy_drop=..., eval_fn=...)`` every step's artifact is evaluated on a
backend that runs its format (``torch`` for torch, ``onnxruntime`` for ONNX, else the first
available backend that takes the format) and compared with the original. A step that drops
more than the budget stays in the history for inspection, marked rejected (its lineage step
says so, ``metadata["accuracy_gate"]`` holds the figures) and, with ``on_budget="raise"``
(the default), raises :class:`AccuracyBudgetError`; ``Session.discard()`` drops it. With
``on_budget="warn"`` the step is kept and the drop recorded as a warning.

Without ``eval_fn`` (no labels), ``Session(max_accuracy_drop=..., calibration_data=...)``
measures :class:`Agreement` instead: how far the step's outputs agree with the float
model's on calibration batches held back from calibration (a quarter of them, at least
one): top-1 agreement for a classifier's ``[N, classes]`` output, else the mean cosine
similarity of each row's outputs. The original scores 1.0; ``max_accuracy_drop=0.1`` then
means "at least 90% top-1 agreement" (or cosine 0.9).

When an optimizer's result misses the budget, :meth:`Session.apply` says so and tries the
optimizer's own recoveries (:meth:`~modelopt_core.interfaces.Optimizer.recoveries`: better
calibration, layers kept in float, accuracy control...), cheapest first, and keeps the first
that meets the budget; ``metadata["accuracy_recovery"]`` and the step's notes say what was
tried and what was chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .artifact import ModelArtifact
from .errors import AccuracyBudgetError, ConfigError, DataError, ModeloptError

log = logging.getLogger("modelopt")

__all__ = ["AccuracyGate", "Agreement"]


@attrs.define
class AccuracyGate:
    """Budget (points of ``eval_fn``, higher is better) and what a miss does."""

    max_drop: float
    on_budget: str = "raise"
    baseline: float | None = None
    #: what measures a step: ``callable(runner) -> float`` (None: the session's ``eval_fn``)
    eval_fn: Callable[[Any], float] | None = None
    #: what the figures are, for messages and reports
    metric: str = "eval_fn"

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) \
                or self.max_drop < 0:
            raise ConfigError(f"Session: max_accuracy_drop must be a number >= 0 (points of "
                              f"eval_fn), got {self.max_drop!r}.")
        if self.on_budget not in ("raise", "warn"):
            raise ConfigError(f"Session: on_budget must be 'raise' or 'warn', got "
                              f"{self.on_budget!r}.")

    def check(self, session: Any, art: ModelArtifact) -> ModelArtifact:
        """Evaluate ``art``; return it annotated with the gate's figures (and rejected when
        the budget is missed and ``on_budget='raise'``, after which this raises)."""
        agreement = isinstance(self.eval_fn, Agreement)
        if self.baseline is None:  # the original agrees with itself: 1.0, not measured
            self.baseline = 1.0 if agreement else self._evaluate(session, session.original)[0]
        value, backend = self._evaluate(session, art)
        if agreement:  # its kind is known once the reference outputs are
            self.metric = (f"{self.eval_fn.kind} with the float model "
                           f"({self.eval_fn.rows} held-back calibration rows)")
        drop = self.baseline - value
        figures = {"metric": self.metric, "backend": backend, "baseline": self.baseline,
                   "value": value,
                   "drop": drop, "budget": self.max_drop, "met": drop <= self.max_drop,
                   "rejected": False}
        if drop <= self.max_drop:
            return attrs.evolve(art, metadata={**art.metadata, "accuracy_gate": figures})
        msg = (f"accuracy gate: step {art.name!r} drops {self.metric} by {drop:.3g} points "
               f"({self.baseline:.4g} -> {value:.4g}), over the budget of {self.max_drop:g}")
        step = art.lineage[-1]
        if self.on_budget == "warn":
            return attrs.evolve(art, metadata={**art.metadata, "accuracy_gate": figures},
                                lineage=art.lineage[:-1] + (attrs.evolve(
                                    step, notes=step.notes + (msg,)),))
        figures["rejected"] = True
        return attrs.evolve(art, metadata={**art.metadata, "accuracy_gate": figures},
                            lineage=art.lineage[:-1] + (attrs.evolve(
                                step, notes=step.notes + (f"REJECTED: {msg}",)),))

    def raise_for(self, art: ModelArtifact) -> None:
        """Raise :class:`AccuracyBudgetError` when ``art`` was rejected."""
        g = art.metadata.get("accuracy_gate") or {}
        if g.get("rejected"):
            tried = (art.metadata.get("accuracy_recovery") or {}).get("tried") or []
            also = (f" Recoveries tried, none within the budget: "
                    f"{[t['recovery'] for t in tried[1:]]}." if len(tried) > 1 else "")
            raise AccuracyBudgetError(
                f"accuracy gate: step {art.name!r} drops {g.get('metric', 'eval_fn')} by "
                f"{g['drop']:.3g} points ({g['baseline']:.4g} -> {g['value']:.4g}), over "
                f"max_accuracy_drop={g['budget']:g}.{also} The step stays in session.history "
                "for inspection, marked rejected; call session.discard() to drop it, or raise "
                "the budget.")

    def _evaluate(self, session: Any, art: ModelArtifact) -> tuple[float, str]:
        """(the metric of ``art``, the backend it was measured on)."""
        backend = _backend_for(session, art)
        fn = self.eval_fn or session.eval_fn
        with session._make_runner(art, backend) as runner:
            value = fn(runner)
        try:
            return float(value), backend
        except (TypeError, ValueError) as e:
            raise DataError(f"accuracy gate: eval_fn returned {value!r}, not a number.") from e


def _backend_for(session: Any, art: ModelArtifact) -> str:
    """The evaluator of ``art``: its format's reference backend (``PluginManager.
    reference_backend``); DataError when no available backend runs the format."""
    name = session.pm.reference_backend(art.format)
    if name is None:
        raise DataError(f"accuracy gate: no available backend runs {art.format!r} artifacts, "
                        f"so step {art.name!r} cannot be evaluated; drop max_accuracy_drop or "
                        "install a runtime for that format.")
    return name


class Agreement:
    """``eval_fn`` without labels: agreement of a model's outputs with the reference (float)
    model's on fixed batches, in [0, 1] (the reference scores 1.0).

    Top-1 agreement when the reference's first output is ``[N, classes]`` (classes > 1), else
    the mean over rows of the cosine similarity of the row's outputs (every floating output
    with the batch's rows, flattened). Called with a runner (``run_flat``) or a torch module.
    """

    def __init__(self, batches: Sequence[tuple[Any, ...]],
                 reference: Callable[[], Any]) -> None:
        self.batches = [tuple(b) for b in batches]
        self._reference = reference  # () -> runner of the reference model
        self._ref: list[list[Any]] | None = None
        self.kind = "agreement"

    @property
    def rows(self) -> int:
        return sum(int(b[0].shape[0]) for b in self.batches)

    def _outputs(self, model: Any) -> list[list[Any]]:
        import torch

        from .io import flatten_outputs

        out = []
        with torch.no_grad():
            for b in self.batches:
                if hasattr(model, "run_flat"):
                    out.append([t.detach().float() for t in model.run_flat(list(b))])
                else:
                    out.append([t.detach().float() for t in flatten_outputs(model(*b))[0]])
        return out

    def reference_outputs(self) -> list[list[Any]]:
        if self._ref is None:
            runner = self._reference()
            try:
                self._ref = self._outputs(runner)
            finally:
                close = getattr(runner, "close", None)
                if close is not None:
                    close()
            first = self._ref[0][0] if self._ref and self._ref[0] else None
            self.kind = ("top-1 agreement" if first is not None and first.dim() == 2
                         and first.shape[1] > 1 else "cosine similarity")
        return self._ref

    def __call__(self, model: Any) -> float:
        import torch

        ref = self.reference_outputs()
        got = self._outputs(model)
        if self.kind == "top-1 agreement":
            same = torch.cat([(g[0].argmax(1) == r[0].argmax(1)) for g, r in zip(got, ref)])
            return float(same.float().mean())
        sims = []
        for g, r in zip(got, ref):
            n = r[0].shape[0]
            pairs = [(a, b) for a, b in zip(g, r) if b.dim() and b.shape[0] == n
                     and a.shape == b.shape]
            a = torch.cat([x.reshape(n, -1) for x, _ in pairs], 1)
            b = torch.cat([y.reshape(n, -1) for _, y in pairs], 1)
            sims.append(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12))
        return float(torch.cat(sims).mean())


def recover(session: Any, cls: Any, inst: Any, config: Mapping[str, Any],
            art: ModelArtifact) -> ModelArtifact:
    """The session's newest artifact (``inst`` applied to ``art``) missed the accuracy
    budget: try ``inst``'s recoveries on ``art`` (cheapest first); keep the first within the
    budget, else the best tried. Replaces the newest artifact in the session's history."""
    assert session.gate is not None
    first = session._history.pop()
    g = first.metadata["accuracy_gate"]
    options = [(label, dict(over)) for label, over in
               inst.recoveries(session.gate.max_drop)  # type: ignore[attr-defined]
               if any(getattr(inst.config, k, object()) != v for k, v in over.items())]
    tried: list[dict[str, Any]] = [
        {"recovery": "as configured", "config": {}, "value": g["value"],
         "drop": g["drop"], "seconds": first.lineage[-1].duration_s}]
    if not options:
        session._history.append(first)
        return first
    log.warning(f"{inst.name}: {g['metric']} dropped by {g['drop']:.3g} ({g['baseline']:.4g}"
                f" -> {g['value']:.4g}), over the budget of {g['budget']:g}; trying "
                f"{len(options)} recover(ies): {[o[0] for o in options]}")
    best, chosen = first, None
    for label, over in options:
        try:
            cand = cls(**{**config, **over})
        except ModeloptError as e:
            tried.append({"recovery": label, "config": over, "error": str(e)[:300]})
            continue
        session.context().status(f"{inst.name}: recovery {label!r}...")
        try:
            out = session._run(cand, art, lambda ctx, c=cand: c.apply(art, ctx),
                            raise_budget=False, eval_fn=session.gate.eval_fn)
        except ModeloptError as e:
            tried.append({"recovery": label, "config": over,
                          "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        session._history.pop()
        go = out.metadata["accuracy_gate"]
        tried.append({"recovery": label, "config": over, "value": go["value"],
                      "drop": go["drop"], "seconds": out.lineage[-1].duration_s})
        if go["met"]:
            best, chosen = out, label
            break
        if go["value"] > best.metadata["accuracy_gate"]["value"]:
            best = out
    gb = best.metadata["accuracy_gate"]
    msg = (f"accuracy recovery: as configured, {g['metric']} dropped {g['drop']:.3g} "
           f"(budget {g['budget']:g}); " + (
               f"chose {chosen!r} (drop {gb['drop']:.3g})" if chosen else
               f"no recovery met the budget (best: drop {gb['drop']:.3g}); tried "
               f"{[t['recovery'] for t in tried[1:]]}"))
    log.warning(f"{inst.name}: {msg}")
    step = best.lineage[-1]
    best = attrs.evolve(
        best, lineage=best.lineage[:-1] + (attrs.evolve(step, notes=step.notes + (msg,)),),
        metadata={**best.metadata, "accuracy_recovery": {
            "chosen": chosen, "tried": tried, "budget_met": chosen is not None}})
    session._history.append(best)
    return best
