"""Result cache: content-hashed keys, LRU bounded by entries and bytes, optional TTL.

A key hashes the artifact fingerprint and, for every input, its dtype, shape and raw bytes
(xxhash's XXH3-128 when installed, else BLAKE2b from the standard library), so a result is
only ever returned for byte-identical inputs to the same model (see
:func:`modelopt_serve.fingerprint.artifact_fingerprint`). Stored outputs are detached clones;
``get`` returns fresh clones, so a caller changing its result in place cannot corrupt the cache.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .errors import ServeError

__all__ = ["ResultCache", "hasher"]


def hasher() -> Any:
    """A fresh 128-bit hash object: xxhash XXH3-128 when available, else BLAKE2b-128."""
    try:
        import xxhash
    except ImportError:
        return hashlib.blake2b(digest_size=16)
    return xxhash.xxh3_128()


def _tensor_bytes(x: Any) -> Any:
    """A contiguous byte view of a CPU tensor (any dtype, bfloat16 included)."""
    import torch

    x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    x = x.contiguous()
    if x.numel() == 0:
        return b""
    return x.reshape(-1).view(torch.uint8).numpy()


def _nbytes(outputs: Sequence[Any]) -> int:
    return sum(int(t.numel()) * t.element_size() for t in outputs)


class ResultCache:
    """Thread-safe LRU cache of model results, bounded by ``max_entries`` and ``max_bytes``
    (sum of the stored tensors' bytes), with an optional time-to-live ``ttl_s``.

    Values are flat lists (or tuples) of tensors: the per-request outputs of a runner's
    ``_run``. A result larger than ``max_bytes`` on its own is not stored.
    """

    def __init__(self, max_entries: int = 1024, max_bytes: int = 256 * 2**20,
                 ttl_s: float | None = None) -> None:
        if int(max_entries) < 1 or int(max_bytes) < 1:
            raise ServeError(f"ResultCache: max_entries ({max_entries}) and max_bytes "
                             f"({max_bytes}) must be >= 1.")
        if ttl_s is not None and not ttl_s > 0:
            raise ServeError(f"ResultCache: ttl_s must be > 0 seconds or None, got {ttl_s!r}.")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self.ttl_s = ttl_s
        self._data: OrderedDict[str, tuple[list[Any], int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    @staticmethod
    def key(fingerprint: str, inputs: Sequence[Any]) -> str:
        """The content key of ``inputs`` (torch tensors) for the model ``fingerprint``."""
        h = hasher()
        h.update(fingerprint.encode())
        for x in inputs:
            h.update(f"|{x.dtype!s}{tuple(x.shape)}|".encode())
            h.update(_tensor_bytes(x))
        return h.hexdigest()

    def get(self, key: str) -> list[Any] | None:
        """Clones of the stored outputs for ``key`` (counted as a hit), or None (a miss)."""
        with self._lock:
            item = self._data.get(key)
            if item is not None and self.ttl_s is not None and \
                    time.monotonic() - item[2] > self.ttl_s:
                self._drop(key)
                item = None
            if item is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            outs = item[0]
        return [t.clone() for t in outs]

    def put(self, key: str, outputs: Sequence[Any]) -> None:
        """Store detached clones of ``outputs`` under ``key``, evicting least recently used
        entries until both bounds hold."""
        stored = [t.detach().clone() for t in outputs]
        size = _nbytes(stored)
        with self._lock:
            if key in self._data:
                self._drop(key)
            if size > self.max_bytes:  # too big to keep: only the stale entry goes
                return
            self._data[key] = (stored, size, time.monotonic())
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                oldest = next(iter(self._data))
                self._drop(oldest)
                self._evictions += 1

    def _drop(self, key: str) -> None:
        _, size, _ = self._data.pop(key)
        self._bytes -= size

    def stats(self) -> dict[str, int]:
        """Counters: ``hits``, ``misses``, ``entries``, ``bytes``, ``evictions``."""
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "entries": len(self._data),
                    "bytes": self._bytes, "evictions": self._evictions}

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)
