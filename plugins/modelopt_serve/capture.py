"""Traffic capture for calibration: a bounded, uniform sample of real request inputs on disk.

``Capture(folder, rate, max_samples, input_names)`` is fed every request's decoded inputs
(:meth:`Capture.offer`; batch dim first, each row one sample). Each sample is eligible with
probability ``rate``; the eligible ones go through reservoir sampling (Vitter's Algorithm R),
so at any time the folder holds a uniform sample of at most ``max_samples`` of everything
offered, however long the server runs. A background thread writes them as
``folder/shard-<content hash>.npz`` files holding only the arrays named by the input names
(``modelopt optimize --calibration folder`` reads the folder as it is; ``--calibration-from
folder`` reads it through the manifest, :mod:`modelopt_core.captured`), each written to a
temporary name and renamed, then ``folder/capture.json`` (written the same way) lists the
live shards, their samples' capture times and the counters. A shard whose samples the
reservoir has replaced is rewritten without them (a new hash) before the old file goes.

Restart: a ``Capture`` on a folder that holds a ``capture.json`` continues its reservoir (the
samples seen and kept so far, the same input names); files not in the manifest (left by a
crash between a shard's rename and the manifest's) are deleted. A crash loses at most the
samples kept since the last flush (``flush_s`` seconds or ``shard_size`` samples); a clean
:meth:`Capture.close` loses nothing. Outputs are never stored.

Never in the way of a request: :meth:`offer` copies the rows it keeps and returns (no disk
I/O on the caller's thread), never raises (a bad request is skipped, logged once), and a disk
error in the writer is logged once on the ``modelopt.serve`` logger and turns capture off (the
folder keeps its last consistent state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelopt_core.captured import FORMAT, MANIFEST, read_manifest
from modelopt_core.errors import ConfigError

__all__ = ["Capture"]

log = logging.getLogger("modelopt.serve")

#: the lock file of a folder being captured into (one writer at a time)
LOCK = ".capture.lock"


class Capture:
    """A restartable reservoir sample of request inputs in ``folder`` (see the module doc).

    ``rate``: the probability that a sample is eligible (0 < rate <= 1); ``max_samples``: the
    reservoir's size; ``input_names``: the model's inputs, in the order :meth:`offer` gets
    them; ``seed``: makes the sampling repeatable (None: from the OS); ``shard_size``: samples
    per new shard; ``flush_s``: the longest a kept sample waits in memory.
    """

    def __init__(self, folder: str | Path, rate: float, max_samples: int,
                 input_names: Sequence[str], seed: int | None = None,
                 shard_size: int = 256, flush_s: float = 10.0) -> None:
        if not 0 < rate <= 1:
            raise ConfigError(f"capture rate must be in (0, 1], got {rate}.")
        if max_samples < 1:
            raise ConfigError(f"capture max_samples must be >= 1, got {max_samples}.")
        if not input_names or len(set(input_names)) != len(input_names):
            raise ConfigError(f"capture input_names must be distinct names, got "
                              f"{list(input_names)}.")
        self.folder = Path(folder)
        self.rate, self.max_samples = float(rate), int(max_samples)
        self.input_names = [str(n) for n in input_names]
        self.seed, self.shard_size, self.flush_s = seed, max(1, shard_size), flush_s
        self.seen = self.eligible = self.next_id = 0
        self.error: str | None = None  # set when capture turned itself off
        self._lock = threading.Lock()  # the reservoir's state; held briefly, never for I/O
        self._flushing = threading.Lock()
        self._counted = (-1, -1, -1)  # (seen, eligible, next_id) in the manifest on disk
        self._wake = threading.Event()
        self._closed = False
        self._logged: set[str] = set()
        self._slots: list[int] = []  # the reservoir: live sample ids
        self._pending: dict[int, tuple[tuple[Any, ...], float]] = {}  # kept, not yet on disk
        self._shards: dict[str, dict[str, Any]] = {}  # file -> {"ids", "times"}
        self._where: dict[int, str] = {}  # id on disk -> its shard
        self._dead: set[int] = set()  # replaced ids still in a file on disk
        self._meta: dict[str, Any] = {"dtypes": None, "shapes": None}
        self.started = time.time()
        self._rng = _stream(seed, 0)
        fresh = not (self.folder / LOCK).exists()
        self._lockfile = _lock(self.folder)
        try:
            self._restore()
        except BaseException:
            self._lockfile.close()
            if fresh:  # leave a folder that is not ours as it was
                (self.folder / LOCK).unlink(missing_ok=True)
            raise
        self._writer = threading.Thread(target=self._run, name="modelopt-capture", daemon=True)
        self._writer.start()

    # -- the request path ------------------------------------------------------------------
    def offer(self, inputs: Sequence[Any]) -> None:
        """Consider each row (sample) of one request's inputs (arrays or CPU tensors, in
        ``input_names`` order, batch dim first). Never raises; never touches the disk."""
        if self.error is not None or self._closed:
            return
        try:
            arrays = [_numpy(a) for a in inputs]
            if len(arrays) != len(self.input_names):
                raise ValueError(f"{len(arrays)} input(s), capture expects "
                                 f"{len(self.input_names)} {self.input_names}")
            rows = arrays[0].shape[0] if arrays[0].ndim else 0
            if any(a.ndim == 0 or a.shape[0] != rows for a in arrays):
                raise ValueError("inputs without a common batch dim "
                                 f"{[tuple(a.shape) for a in arrays]}")
            now = time.time()
            with self._lock:
                for r in range(rows):
                    self._offer_row(arrays, r, now)
                full = len(self._pending) >= self.shard_size
            if full:
                self._wake.set()
        except Exception as e:  # noqa: BLE001 - capture must never fail a request
            self._log_once("capture_skipped", f"{type(e).__name__}: {e}")

    def _offer_row(self, arrays: list[Any], r: int, now: float) -> None:
        """Algorithm R over the eligible samples (lock held)."""
        self.seen += 1
        rng = self._rng
        if self.rate < 1 and rng.random() >= self.rate:
            return
        self.eligible += 1
        if len(self._slots) < self.max_samples:
            slot = len(self._slots)
            self._slots.append(-1)
        else:
            slot = rng.randrange(self.eligible)
            if slot >= self.max_samples:
                return
            self._evict(self._slots[slot])
        new = self.next_id
        self.next_id += 1
        self._slots[slot] = new
        self._pending[new] = (tuple(a[r].copy() for a in arrays), round(now, 3))

    def _evict(self, old: int) -> None:
        if self._pending.pop(old, None) is None:  # on disk (or being written): drop it there
            self._dead.add(old)

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if self._closed:
                break
            self.flush()

    def flush(self) -> None:
        """Write the kept samples and rewrite the shards that lost samples, then the manifest
        (on the writer thread, or by :meth:`close`). A disk error turns capture off."""
        with self._flushing:  # one flush at a time (the writer's, a caller's, close's)
            if self.error is None:
                self._flush()

    def _flush(self) -> None:
        with self._lock:
            batch = dict(self._pending)
            self._pending.clear()
            gone = set(self._dead)
            small = [f for f, s in self._shards.items() if len(s["ids"]) < self.shard_size // 4]
            dirty = sorted({self._where[i] for i in gone} | (set(small) if batch else set()))
            # the reservoir as of now: these counters with the kept samples now on disk or in
            # the batch, whatever arrives while it is written (a crash loses later traffic,
            # never the consistency of what is on disk)
            counted = (self.seen, self.eligible, self.next_id)
        if not batch and not dirty and self._counted == counted:
            return
        try:
            self._write(batch, gone, dirty, counted)
        except Exception as e:  # noqa: BLE001 - OSError mostly; capture stops, serving goes on
            self.error = f"{type(e).__name__}: {e}"
            self._log_once("capture_failed", self.error, level=logging.ERROR)

    def _write(self, batch: dict[int, tuple[tuple[Any, ...], float]], gone: set[int],
               dirty: list[str], counted: tuple[int, int, int]) -> None:
        """Shards of the live rows of ``dirty`` plus ``batch``; then the manifest; then the old
        files go."""
        rows: list[tuple[int, tuple[Any, ...], float]] = []
        for f in dirty:
            shard = self._shards[f]
            arrays = _load_shard(self.folder / f, self.input_names)
            rows += [(i, tuple(a[k] for a in arrays), t)
                     for k, (i, t) in enumerate(zip(shard["ids"], shard["times"]))
                     if i not in gone]
        rows += [(i, sample, t) for i, (sample, t) in batch.items()]
        groups: dict[Any, list[tuple[int, tuple[Any, ...], float]]] = {}
        for row in rows:  # one shape (and dtype) per shard: the reader concatenates them
            groups.setdefault(tuple((a.shape, a.dtype.str) for a in row[1]), []).append(row)
        made: dict[str, dict[str, Any]] = {}
        for group in groups.values():
            for at in range(0, len(group), self.shard_size):
                part = group[at:at + self.shard_size]
                name = self._write_shard([r[1] for r in part], [r[0] for r in part])
                made[name] = {"ids": [r[0] for r in part], "times": [r[2] for r in part]}
                self._note_meta(part[0][1])
        with self._lock:
            for f in dirty:
                for i in self._shards.pop(f)["ids"]:
                    self._where.pop(i, None)
            for name, s in made.items():
                self._shards[name] = s
                self._where.update(dict.fromkeys(s["ids"], name))
            self._dead -= gone  # replaced while being written: in _dead, gone next time
            manifest = self._manifest(counted)
        _write_json(self.folder / MANIFEST, manifest)
        self._counted = counted
        for f in dirty:
            if f not in made:
                (self.folder / f).unlink(missing_ok=True)

    def _write_shard(self, samples: list[tuple[Any, ...]], ids: list[int]) -> str:
        """``shard-<hash>.npz``, written to a temporary name and renamed. The hash is of the
        arrays and of the samples' capture numbers: two shards of equal requests (a health
        probe's) are still two files."""
        import numpy as np

        arrays = {n: np.stack([s[j] for s in samples]) for j, n in enumerate(self.input_names)}
        h = hashlib.sha256(json.dumps(ids).encode())
        for n, a in arrays.items():
            h.update(f"{n}|{a.dtype.str}|{a.shape}|".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        name = f"shard-{h.hexdigest()[:24]}.npz"
        target = self.folder / name
        if target.exists():
            return name
        tmp = self.folder / f".{name}.{os.getpid()}.{threading.get_ident()}.part"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return name

    def _note_meta(self, sample: tuple[Any, ...]) -> None:
        if self._meta["dtypes"] is None:
            self._meta = {"dtypes": {n: a.dtype.str for n, a in zip(self.input_names, sample)},
                          "shapes": {n: list(a.shape) for n, a in zip(self.input_names, sample)}}

    def _manifest(self, counted: tuple[int, int, int]) -> dict[str, Any]:
        """What ``capture.json`` says (lock held)."""
        shards = [{"file": f, "count": len(s["ids"]), "first": min(s["times"]),
                   "last": max(s["times"]), "ids": s["ids"], "times": s["times"]}
                  for f, s in self._shards.items()]
        return {"format": FORMAT, "input_names": self.input_names, **self._meta,
                "rate": self.rate, "max_samples": self.max_samples, "seed": self.seed,
                "seen": counted[0], "eligible": counted[1], "next_id": counted[2],
                "kept": sum(s["count"] for s in shards), "started": self.started,
                "updated": time.time(), "outputs": False, "shards": shards}

    # -- start, stop -----------------------------------------------------------------------
    def _restore(self) -> None:
        """Continue the reservoir of a folder that holds a manifest (else start one: a new or
        empty folder only); delete a crash's leftovers (files the manifest does not list)."""
        m = read_manifest(self.folder, "--capture", must_exist=False)
        if m is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            data = sorted(f.name for f in self.folder.iterdir() if f.suffix in (".npz", ".npy"))
            if data:
                raise ConfigError(
                    f"capture {self.folder}: not a capture folder (no {MANIFEST}) and it holds "
                    f"data files {data[:3]}; capture into a new or empty folder.")
            _write_json(self.folder / MANIFEST, self._manifest((0, 0, 0)))
            return
        if m["input_names"] != self.input_names:
            raise ConfigError(
                f"capture {self.folder}: the folder holds samples of inputs "
                f"{m['input_names']}, this model takes {self.input_names}; capture into "
                "another folder (or delete this one).")
        self.seen, self.eligible = m["seen"], m["eligible"]
        self.next_id, self.started = m["next_id"], m["started"]
        if m.get("dtypes"):
            self._meta = {"dtypes": m["dtypes"], "shapes": m["shapes"]}
        for s in m["shards"]:
            if not (self.folder / s["file"]).is_file():  # deleted by hand: its samples go
                self._log_once("capture_shard_missing", f"{s['file']} is gone")
                continue
            self._shards[s["file"]] = {"ids": list(s["ids"]), "times": list(s["times"])}
            self._where.update(dict.fromkeys(s["ids"], s["file"]))
        self._slots = [i for s in self._shards.values() for i in s["ids"]]
        self._rng = _stream(self.seed, self.seen)
        for f in self.folder.iterdir():
            stray = f.name.startswith("shard-") and f.name not in self._shards or (
                f.name.startswith((".shard-", f".{MANIFEST}.")))
            if stray and f.is_file():
                f.unlink(missing_ok=True)
        while len(self._slots) > self.max_samples:  # a smaller max_samples than before
            self._evict(self._slots.pop(self._rng.randrange(len(self._slots))))

    def stats(self) -> dict[str, Any]:
        """The counters (for logs and metrics)."""
        with self._lock:
            return {"seen": self.seen, "eligible": self.eligible, "kept": len(self._slots),
                    "pending": len(self._pending), "error": self.error}

    def close(self) -> None:
        """Stop the writer and write everything kept (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._writer.join()
        try:
            self.flush()
        finally:
            self._lockfile.close()  # another server may capture into the folder now

    def _log_once(self, event: str, error: str, level: int = logging.WARNING) -> None:
        if event not in self._logged:
            self._logged.add(event)
            log.log(level, json.dumps({"event": event, "folder": str(self.folder),
                                       "error": error[:300]}))


def _lock(folder: Path) -> Any:
    """``folder/.capture.lock``, locked for this Capture (released on close or when the
    process dies): two servers capturing into one folder would overwrite each other's
    manifest."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK, "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ConfigError(f"capture {folder}: another server (or Capture) is capturing into "
                          "this folder; give each server its own folder (for example "
                          "DIR/replica-1, DIR/replica-2).") from None
    return f


def _stream(seed: int | None, seen: int) -> random.Random:
    """The sampling stream: with a seed, repeatable from each restart point."""
    return random.Random(None if seed is None else f"{seed}:{seen}")


def _numpy(a: Any) -> Any:
    import numpy as np

    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _load_shard(path: Path, names: list[str]) -> list[Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return [z[n] for n in names]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import modelopt_core as mo

    mo.write_text_atomic(path, json.dumps(data, separators=(",", ":")))
