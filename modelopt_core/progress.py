"""How a long run says how it goes: a tqdm bar, or one log line per epoch (or search trial)
with the elapsed time and an ETA when no bar is shown."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["PROGRESS_LOG", "clock", "eta_text", "Progress"]

log = logging.getLogger("modelopt.training")

#: the logger of the lines that say how a long run is going when no progress bar does: one
#: per training epoch here (and one per search trial in modelopt_search). The ``modelopt``
#: command shows its INFO lines on stderr unless ``--quiet``; a program sees them when it
#: configures logging (e.g. ``logging.basicConfig(level=logging.INFO)``).
PROGRESS_LOG = "modelopt.progress"


def clock(seconds: float) -> str:
    """``seconds`` as ``m:ss`` (``h:mm:ss`` from an hour on), as progress lines show time."""
    s = max(0, round(seconds))
    h, m = divmod(s, 3600)
    return f"{h}:{m // 60:02d}:{m % 60:02d}" if h else f"{m // 60}:{m % 60:02d}"


def eta_text(elapsed_s: float, done: float, total: float) -> str:
    """``"elapsed 0:12, ETA 1:05"``: the time so far, and the time left at the pace of the
    ``done`` units of ``total`` finished so far (``ETA ?`` before the first)."""
    left = "?" if done <= 0 else clock(elapsed_s / done * max(total - done, 0))
    return f"elapsed {clock(elapsed_s)}, ETA {left}"


def _best_label(has_metric: bool, best: float) -> tuple[str, str]:
    """What ``best`` is (the loop keeps the metric, or minus the train loss without one):
    ``("best_metric", "97.5")`` or ``("best_loss", "0.1234")``."""
    return ("best_metric", f"{best:.4g}") if has_metric else ("best_loss", f"{-best:.4f}")


def _postfix(epoch: int, loss: float, best: float | None,
             has_metric: bool = False) -> dict[str, str]:
    d = {"ep": str(epoch + 1), "loss": f"{loss:.4f}"}
    if best is not None:
        key, value = _best_label(has_metric, best)
        d[key] = value
    return d


class Progress:
    """How training says how it goes: a tqdm bar (rank 0, when ``ctx`` shows progress:
    loss, and ``best_metric`` or ``best_loss``, elapsed and ETA), else one line per epoch on
    the :data:`PROGRESS_LOG` logger (loss, metric, the best so far, elapsed and ETA)."""

    def __init__(self, total: int, ctx: Any, rank: int, initial: int, has_metric: bool) -> None:
        self.total, self.initial, self.has_metric = total, initial, has_metric
        self.t0 = time.perf_counter()
        self.bar = None
        if rank == 0 and (ctx is None or getattr(ctx, "show_progress", True)):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", leave=False,
                            dynamic_ncols=True, disable=None if ctx is None else False)

    def step(self, epoch: int, loss: float, best: float | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(_postfix(epoch, loss, best, self.has_metric), refresh=False)

    def epoch_done(self, epochs: int, rec: dict[str, Any], state: dict[str, Any]) -> None:
        """Log epoch ``rec``; without a bar, say it on :data:`PROGRESS_LOG` too."""
        log.info("epoch %d/%d: %s", rec["epoch"], epochs, rec)
        if self.bar is not None and not getattr(self.bar, "disable", False):
            return
        text = f"train epoch {rec['epoch']}/{epochs}: loss {rec['train_loss']:.4f}"
        if "metric" in rec:
            text += f", metric {rec['metric']:.4g}"
        if state["best"] is not None:
            key, value = _best_label(self.has_metric, state["best"])
            text += f" ({key.replace('_', ' ')} {value})"
        done = state["step"] - self.initial
        text += "; " + eta_text(time.perf_counter() - self.t0, done, self.total - self.initial)
        logging.getLogger(PROGRESS_LOG).info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
