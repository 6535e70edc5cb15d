"""The accuracy gate: "set an acceptable accuracy-drop threshold" and check it after every step.

With ``Session(max_accuracy_drop=..., eval_fn=...)`` every step's artifact is evaluated on a
backend that runs its format (``torch`` for torch, ``onnxruntime`` for ONNX, else the first
available backend that takes the format) and compared with the original. A step that drops
more than the budget stays in the history for inspection, marked rejected (its lineage step
says so, ``metadata["accuracy_gate"]`` holds the figures) and, with ``on_budget="raise"``
(the default), raises :class:`AccuracyBudgetError`; ``Session.discard()`` drops it. With
``on_budget="warn"`` the step is kept and the drop recorded as a warning.
"""

from __future__ import annotations

from typing import Any

import attrs

from .artifact import ModelArtifact
from .errors import AccuracyBudgetError, ConfigError, DataError

__all__ = ["AccuracyGate", "PREFERRED_BACKEND"]

#: the backend the gate measures a format on, when registered and available
PREFERRED_BACKEND = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino",
                     "tflite": "tflite"}


@attrs.define
class AccuracyGate:
    """Budget (points of ``eval_fn``, higher is better) and what a miss does."""

    max_drop: float
    on_budget: str = "raise"
    baseline: float | None = None

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
        if self.baseline is None:
            self.baseline = self._evaluate(session, session.original)
        value = self._evaluate(session, art)
        drop = self.baseline - value
        figures = {"baseline": self.baseline, "value": value, "drop": drop,
                   "budget": self.max_drop, "rejected": False}
        if drop <= self.max_drop:
            return attrs.evolve(art, metadata={**art.metadata, "accuracy_gate": figures})
        msg = (f"accuracy gate: step {art.name!r} drops eval_fn by {drop:.3g} points "
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
            raise AccuracyBudgetError(
                f"accuracy gate: step {art.name!r} drops eval_fn by {g['drop']:.3g} points "
                f"({g['baseline']:.4g} -> {g['value']:.4g}), over max_accuracy_drop="
                f"{g['budget']:g}. The step stays in session.history for inspection, marked "
                "rejected; call session.discard() to drop it, or raise the budget.")

    @staticmethod
    def _evaluate(session: Any, art: ModelArtifact) -> float:
        backend = _backend_for(session, art)
        with session._make_runner(art, backend) as runner:
            value = session.eval_fn(runner)
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise DataError(f"accuracy gate: eval_fn returned {value!r}, not a number.") from e


def _backend_for(session: Any, art: ModelArtifact) -> str:
    names = [PREFERRED_BACKEND.get(art.format)] + [i.name for i in
                                                   session.pm.components("backend")]
    for name in names:
        if name is None:
            continue
        try:
            cls = session.pm.get("backend", name).cls
        except Exception:
            continue
        if art.format in cls.accepts and cls.availability()[0]:
            return name
    raise DataError(f"accuracy gate: no available backend runs {art.format!r} artifacts, so "
                    f"step {art.name!r} cannot be evaluated; drop max_accuracy_drop or install "
                    "a runtime for that format.")
