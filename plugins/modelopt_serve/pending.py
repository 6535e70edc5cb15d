"""The batcher's bounded request queue: admission (backpressure), batch forming by bucket,
max batch size and max delay, and expiry of requests that waited past their timeout."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from .batching import bucket_of
from .errors import BatcherClosedError, QueueFullError

__all__ = ["PendingQueue", "Request"]


class Request:
    """One submitted request: its flat inputs, rows, future, arrival time, bucket, cache key."""

    __slots__ = ("bucket", "future", "inputs", "key", "rows", "t")

    def __init__(self, inputs: Sequence[Any], rows: int, key: str | None) -> None:
        self.inputs, self.rows, self.key = inputs, rows, key
        self.future: Future = Future()
        self.t = time.monotonic()
        self.bucket = bucket_of(inputs)


class PendingQueue:
    """FIFO of :class:`Request` with at most ``max_queue`` entries. :meth:`take` forms the
    next batch: the oldest request's bucket, up to ``cap`` rows, waiting at most ``delay_s``
    after the oldest arrived, and (``idle_s``) no longer than ``idle_s`` after the newest
    arrived: a quiet queue means no more requests are coming soon; one caller forms at a time
    (the others wait their turn). Requests older than ``timeout_s`` are handed to ``expired``
    instead of being run."""

    def __init__(self, max_queue: int, cap: int, delay_s: float, timeout_s: float | None,
                 expired: Callable[[list[Request]], None], name: str,
                 idle_s: float | None = None) -> None:
        self.max_queue, self.cap, self.delay_s, self.timeout_s = max_queue, cap, delay_s, timeout_s
        self.idle_s = idle_s
        self._expired, self._name = expired, name
        self._q: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._form = threading.Lock()
        self.closed = False

    def __len__(self) -> int:
        return len(self._q)

    def put(self, req: Request) -> None:
        """Queue ``req``; :class:`QueueFullError` / :class:`BatcherClosedError` at once."""
        with self._cond:
            if self.closed:
                raise BatcherClosedError(f"batcher for {self._name!r} is closed.")
            if len(self._q) >= self.max_queue:
                raise QueueFullError(
                    f"batcher for {self._name!r}: the queue is full ({self.max_queue} requests "
                    "waiting); retry later, add replicas or raise max_queue.", self.max_queue)
            self._q.append(req)
            self._cond.notify()

    def take(self) -> list[Request] | None:
        """The next batch (removed from the queue), or None once closed and empty."""
        expired: list[Request] = []
        try:
            with self._form, self._cond:
                while True:
                    if self.timeout_s is not None:
                        expired += self._expire_locked()
                        if expired and not self._q:
                            return []  # fail the expired ones now (finally), not at the next take
                    if self._q:
                        chosen, rows = self._gather(self._q[0].bucket)
                        now = time.monotonic()
                        wait = self._q[0].t + self.delay_s - now
                        if self.idle_s is not None:
                            wait = min(wait, self._q[-1].t + self.idle_s - now)
                        if rows >= self.cap or wait <= 0 or self.closed:
                            self._remove(chosen)
                            return chosen
                        self._cond.wait(wait)
                    elif self.closed:
                        return None
                    else:
                        self._cond.wait(None if self.timeout_s is None else self.timeout_s / 2)
        finally:
            if expired:
                self._expired(expired)

    def _gather(self, bucket: tuple[Any, ...]) -> tuple[list[Request], int]:
        chosen: list[Request] = []
        rows = 0
        for r in self._q:
            if r.bucket != bucket:
                continue
            if chosen and rows + r.rows > self.cap:
                break
            chosen.append(r)
            rows += r.rows
            if rows >= self.cap:
                break
        return chosen, rows

    def _remove(self, chosen: list[Request]) -> None:
        for r in chosen:
            if self._q[0] is r:
                self._q.popleft()
            else:
                self._q.remove(r)

    def _expire_locked(self) -> list[Request]:
        limit = time.monotonic() - self.timeout_s  # type: ignore[operator]
        if not self._q or self._q[0].t > limit:
            return []
        old = [r for r in self._q if r.t <= limit]
        self._remove(old)
        return old

    def sweep_forever(self) -> None:
        """Expire timed-out requests while every worker is busy (a thread's target); returns
        once closed and empty."""
        interval = min(0.05, self.timeout_s / 4)  # type: ignore[operator]
        while True:
            with self._cond:
                if self.closed and not self._q:
                    return
                expired = self._expire_locked()
            if expired:
                self._expired(expired)
            time.sleep(interval)

    def close(self, drain: bool) -> list[Request]:
        """Refuse new requests; wake the workers. Returns the dropped requests (all queued
        ones when not ``drain``)."""
        with self._cond:
            self.closed = True
            dropped = [] if drain else list(self._q)
            if not drain:
                self._q.clear()
            self._cond.notify_all()
        return dropped
