"""Labels from users: ``POST /feedback {"request_id": ..., "label": ...}`` -> per-variant
accuracy (:class:`FeedbackLog`).

Every ``/predict`` answer carries ``X-Request-Id``; the log remembers, for the newest
``max_entries`` request ids (an LRU: memory stays bounded however long the server runs), which
variant answered and each variant's top-1 class per row (the answering one, and the shadows'
once they ran). A label scores every variant that predicted that request, so a shadow's
accuracy on real labels is measured without it ever answering. A label is a class index (one
per row: an int for a one-row request, else a list).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import FeedbackError, UnknownRequestIdError

__all__ = ["FeedbackLog"]


class FeedbackLog:
    """The remembered requests and the per-variant tallies (see the module doc)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise FeedbackError(f"feedback_max={max_entries!r}; expected >= 1.")
        self.max_entries = int(max_entries)
        self._lock = threading.Lock()
        self._ids: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.labelled: collections.Counter[str] = collections.Counter()
        self.correct: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._ids)

    def remember(self, request_id: str, variant: str, preds: tuple[int, ...] | None) -> None:
        with self._lock:
            self._ids[request_id] = {"variant": variant, "preds": {variant: preds},
                                     "labelled": False}
            while len(self._ids) > self.max_entries:
                self._ids.popitem(last=False)

    def add_prediction(self, request_id: str, variant: str,
                       preds: tuple[int, ...] | None) -> None:
        """A shadow's top-1 for a remembered request (ignored once labelled or forgotten)."""
        with self._lock:
            rec = self._ids.get(request_id)
            if rec is not None and not rec["labelled"]:
                rec["preds"][variant] = preds

    def label(self, request_id: Any, label: Any) -> dict[str, Any]:
        """Score the request's predictions against ``label``; raises
        :class:`UnknownRequestIdError` (404) or :class:`FeedbackError` (422, 409)."""
        if not isinstance(request_id, str) or not request_id:
            raise FeedbackError('POST /feedback: expected {"request_id": "<the X-Request-Id '
                                'of a /predict answer>", "label": <class index>}.')
        labels = _labels(label)
        with self._lock:
            rec = self._ids.get(request_id)
            if rec is None:
                raise UnknownRequestIdError(
                    f"POST /feedback: request id {request_id!r} is unknown: this server never "
                    f"issued it, or it is older than the newest {self.max_entries} requests "
                    "it remembers (feedback_max).")
            if rec["labelled"]:
                raise FeedbackError(f"POST /feedback: request {request_id!r} has a label "
                                    "already; each request is labelled once.", 409)
            answered = rec["preds"].get(rec["variant"])
            if answered is None:
                raise FeedbackError(f"POST /feedback: the answer of variant {rec['variant']!r}"
                                    " is not class scores (rows x classes), so a class label "
                                    "cannot score it.")
            if len(labels) != len(answered):
                raise FeedbackError(f"POST /feedback: {len(labels)} label(s) for a request of "
                                    f"{len(answered)} row(s); send one class index per row.")
            rec["labelled"] = True
            scored = {}
            for variant, preds in rec["preds"].items():
                if preds is not None and len(preds) == len(labels):
                    hits = sum(int(p == y) for p, y in zip(preds, labels))
                    self.labelled[variant] += len(labels)
                    self.correct[variant] += hits
                    scored[variant] = hits / len(labels)
        return {"request_id": request_id, "variant": rec["variant"], "scored": scored}

    def accuracy(self, variant: str) -> dict[str, Any]:
        with self._lock:
            n, k = self.labelled[variant], self.correct[variant]
        return {"labelled_rows": n, "correct_rows": k, "accuracy": k / n if n else None}

    def families(self, variants: Sequence[str], counter: Any, gauge: Any) -> Iterator[Any]:
        """``feedback_total``, ``feedback_correct_total`` and ``feedback_accuracy`` by
        variant."""
        from .metrics import PREFIX

        total = counter(f"{PREFIX}_feedback", "rows labelled through POST /feedback that the "
                        "variant predicted", labels=["variant"])
        correct = counter(f"{PREFIX}_feedback_correct", "of those, rows it predicted right",
                          labels=["variant"])
        acc = gauge(f"{PREFIX}_feedback_accuracy", "feedback_correct_total / feedback_total",
                    labels=["variant"])
        for v in variants:
            a = self.accuracy(v)
            total.add_metric([v], a["labelled_rows"])
            correct.add_metric([v], a["correct_rows"])
            if a["accuracy"] is not None:
                acc.add_metric([v], a["accuracy"])
        yield from (total, correct, acc)


def _labels(label: Any) -> list[int]:
    items = label if isinstance(label, list) else [label]
    if not items or any(isinstance(y, bool) or not isinstance(y, int) for y in items):
        raise FeedbackError(f"POST /feedback: label {label!r} is not a class index (an int, "
                            "or a list of ints, one per row of the request).")
    return items
