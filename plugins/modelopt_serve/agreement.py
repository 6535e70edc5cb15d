"""How close a shadow's outputs are to the primary's, request by request: :class:`Agreement`.

For each compared request: top-1 agreement per row when the first output is class scores
(``(rows, classes)``, classes > 1), the cosine similarity per row of the first output (for
embeddings; any output flattened per row), and the largest absolute difference over every
output. Outputs whose shapes differ count as ``mismatched``. Cheap enough for a batcher's
thread (numpy on the answers already in memory); thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Agreement", "top1"]


def _flat_numpy(result: Any) -> list[Any]:
    import numpy as np

    from modelopt_core import flatten_outputs

    flat, _ = flatten_outputs(result, "served output")
    return [np.asarray(t.detach().cpu().float().numpy() if hasattr(t, "detach") else t,
                       dtype=np.float64) for t in flat]


def top1(result: Any) -> tuple[int, ...] | None:
    """The top-1 class of each row when the first output is class scores, else None (on the
    request path: only the first output's shape is looked at, nothing is copied)."""
    from modelopt_core import flatten_outputs

    try:
        first = flatten_outputs(result, "served output")[0][0]
    except Exception:  # noqa: BLE001 - not tensors: no classes
        return None
    if first.dim() != 2 or first.shape[1] < 2:
        return None
    return tuple(int(i) for i in first.argmax(dim=1).tolist())


class Agreement:
    """Running agreement of one shadow with the primary (see the module doc), plus how many
    copies it ``dropped`` (queue full, not ready) or ``failed`` (its run raised)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {"compared": 0, "dropped": 0, "failed": 0, "mismatched": 0}
        self.rows = self.top1_rows = self.top1_same = 0
        self.cos_sum, self.cos_min = 0.0, None
        self.max_abs = 0.0

    def note(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] += 1

    def add(self, primary: Any, shadow: Any) -> None:
        """Compare one request's answers."""
        import numpy as np

        a, b = _flat_numpy(primary), _flat_numpy(shadow)
        if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
            self.note("mismatched")
            return
        rows = a[0].shape[0] if a[0].ndim else 1
        fa, fb = a[0].reshape(rows, -1), b[0].reshape(rows, -1)
        na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
        both = (na > 0) & (nb > 0)
        cos = np.where(both, (fa * fb).sum(axis=1) / np.where(both, na * nb, 1.0),
                       np.where((na == 0) & (nb == 0), 1.0, 0.0))
        diff = max((float(np.max(np.abs(x - y))) for x, y in zip(a, b) if x.size), default=0.0)
        classes = a[0].ndim == 2 and a[0].shape[1] > 1
        same = int((a[0].argmax(axis=1) == b[0].argmax(axis=1)).sum()) if classes else 0
        with self._lock:
            self.counts["compared"] += 1
            self.rows += rows
            if classes:
                self.top1_rows += rows
                self.top1_same += same
            self.cos_sum += float(cos.sum())
            low = float(cos.min())
            self.cos_min = low if self.cos_min is None else min(self.cos_min, low)
            self.max_abs = max(self.max_abs, diff)

    def summary(self) -> dict[str, Any]:
        """Plain data for ``GET /variants``."""
        with self._lock:
            return {**self.counts, "rows": self.rows,
                    "top1_agreement": (self.top1_same / self.top1_rows
                                       if self.top1_rows else None),
                    "cosine_mean": self.cos_sum / self.rows if self.rows else None,
                    "cosine_min": self.cos_min,
                    "max_abs_error": self.max_abs if self.rows else None}

    @staticmethod
    def families(agreements: Mapping[str, Agreement], counter: Any, gauge: Any
                 ) -> Iterator[Any]:
        """``shadow_requests_total{variant,outcome}`` and the agreement gauges of the
        variants that saw shadow traffic."""
        from .metrics import PREFIX

        reqs = counter(f"{PREFIX}_shadow_requests", "copies of the primary's requests a "
                       "shadow got, by outcome", labels=["variant", "outcome"])
        gauges = {k: gauge(f"{PREFIX}_shadow_{k}", doc, labels=["variant"]) for k, doc in (
            ("top1_agreement", "share of rows whose top-1 class equals the primary's"),
            ("cosine_mean", "mean cosine similarity of the first output's rows"),
            ("max_abs_error", "largest absolute difference from the primary's outputs"))}
        for name, ag in agreements.items():
            s = ag.summary()
            if not any(s[k] for k in ("compared", "dropped", "failed", "mismatched")):
                continue
            for outcome in ("compared", "dropped", "failed", "mismatched"):
                reqs.add_metric([name, outcome], s[outcome])
            for k, g in gauges.items():
                if s[k] is not None:
                    g.add_metric([name], s[k])
        yield reqs
        yield from gauges.values()
