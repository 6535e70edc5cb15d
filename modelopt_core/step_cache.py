"""The step cache: a step already computed (in this process, or by another worker sharing the
folder) is loaded, not recomputed. ``Session(..., step_cache=DIR)``; the search keeps one in
its output folder (``step-cache/``), so trials sharing a prefix (the same pruning and
recovery, another precision or target) and a second search over the same recipe reuse it.

**The key** of a step is a SHA-256 over: the content hash of its input artifact and of every
artifact of the session's history before it (the original is the distillation teacher and the
accuracy reference), the step (component kind, name, its whole config with defaults), the
component (its class, plugin and version, and modelopt's version), and a fingerprint of
everything the step could consume (:mod:`modelopt_core.fingerprint`): ``calibration_data``,
``train_data``, ``eval_fn``, ``task_loss``, the device, and the example inputs' shapes and
dtypes. Every step is given the session's whole data (its ``needs`` list what it requires,
not what it may read), so all of it is in the key. The example inputs' values are not: they
only trace the model (a recipe's are random numbers), so a result traced on other values is
as valid as a recomputation's.

**Not cached** (said once per reason in :attr:`StepCache.uncached`, and in the step's notes):
a step whose data cannot be fingerprinted faithfully (a one-shot iterator, an object of
unknown shape; see :mod:`.fingerprint`: give it a ``modelopt_fingerprint`` string attribute
or ``Session(data_fingerprint=...)``), and a step whose result cannot be saved or reloaded.
A cached step that draws random numbers (a shuffling loader, dropout) returns the result of
the draw that computed it: as valid as a recomputation's, not bit-equal to it.

**An entry** is ``<dir>/<key[:2]>/<key>/`` holding ``artifact/`` (a saved artifact, its
files SHA-256-checked on load) and ``entry.json`` (the key's parts, the artifact's file hashes
and content hash). It is written to a temp folder in ``<dir>`` and renamed into place, so two
processes can share one folder (the first rename wins; the other's result is dropped). An
entry that fails to load or to verify is noted, moved aside and recomputed, never trusted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import attrs

from .fingerprint import (
    Unfingerprintable,
    artifact_hash,
    data_fingerprint,
    remember_hash,
)

__all__ = ["StepCache"]

log = logging.getLogger("modelopt")

#: bump when the key or the entry layout changes
CACHE_VERSION = 1
_DATA = ("calibration_data", "train_data", "eval_fn", "task_loss")


def key_of(parts: dict[str, Any]) -> str:
    """The key of a step from its parts (plain data): a SHA-256 of their canonical JSON."""
    return data_fingerprint(json.dumps(parts, sort_keys=True, default=repr))


class StepCache:
    """A folder of computed steps (see the module doc). ``hits``, ``stored``, ``computed``
    count this process's lookups; ``uncached`` and ``corrupt`` say what was not cached or
    not trusted, and why."""

    def __init__(self, folder: str | os.PathLike[str], data_fingerprint: str | None = None
                 ) -> None:
        self.folder = Path(folder)
        self.data_fingerprint = data_fingerprint
        self.hits = 0
        self.computed = 0
        self.stored = 0
        self.uncached: list[str] = []
        self.corrupt: list[str] = []

    def stats(self) -> dict[str, Any]:
        """The counts and notes, as plain data."""
        return {"folder": str(self.folder), "hits": self.hits, "computed": self.computed,
                "stored": self.stored, "uncached": list(self.uncached),
                "corrupt": list(self.corrupt)}

    # ---- the key -------------------------------------------------------------------------

    def key(self, session: Any, inst: Any, art: Any, ctx: Any) -> tuple[str, dict[str, Any]]:
        """(the key, its parts) of running component ``inst`` on ``art`` with ``ctx``;
        :class:`Unfingerprintable` when a part cannot be fingerprinted."""
        from ._version import __version__
        from .config import config_to_data
        from .plugins import component_origin

        cls = type(inst)
        plugin, version = component_origin(session.pm, cls)
        data = {"device": ctx.device}
        if self.data_fingerprint is not None:
            data["declared"] = self.data_fingerprint
        for name in _DATA:
            data[name] = data_fingerprint(getattr(ctx, name), name)
        # example inputs fix shapes and dtypes (a recipe's are random values)
        data["example_inputs"] = [[str(x.dtype), list(x.shape)] for x in ctx.example_inputs]
        parts = {
            "cache": CACHE_VERSION, "input": artifact_hash(art),
            "history": [artifact_hash(a) for a in ctx.history],
            "step": {"kind": inst.kind, "name": inst.name,
                     "config": json.loads(json.dumps(config_to_data(inst.config),
                                                     default=repr))},
            "component": {"class": f"{cls.__module__}.{cls.__qualname__}", "plugin": plugin,
                          "version": version, "modelopt": __version__},
            "data": data,
        }
        return key_of(parts), parts

    # ---- one step ------------------------------------------------------------------------

    def run(self, session: Any, inst: Any, art: Any, ctx: Any, fn: Any) -> Any:
        """The output of ``fn(ctx)`` (component ``inst`` on ``art``): loaded from the
        cache when computed before, else computed and stored."""
        try:
            key, parts = self.key(session, inst, art, ctx)
        except Exception as e:  # noqa: BLE001 - what cannot be keyed is computed, not cached
            said = str(e) if isinstance(e, Unfingerprintable) else f"{type(e).__name__}: {e}"
            why = f"{inst.kind} {inst.name!r} not cached: {said[:300]}"
            if why not in self.uncached:
                self.uncached.append(why)
                log.info("step cache: %s", why)
            self.computed += 1
            return fn(ctx)
        hit = self._load(key, session, art)
        if hit is not None:
            self.hits += 1
            return hit
        out = fn(ctx)
        self.computed += 1
        self._store(key, parts, out, inst, session.pm)
        return out

    def _entry(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def _load(self, key: str, session: Any, art: Any) -> Any:
        """The entry ``key`` as the step's output on ``art`` (its lineage: ``art``'s and the
        step's, noted as a cache hit), or None when there is none or it fails to verify."""
        from .artifact import load_artifact

        entry = self._entry(key)
        if not entry.exists():
            return None
        try:
            record = json.loads((entry / "entry.json").read_text())
            root = session.original
            loaded = load_artifact(entry / "artifact", plugins=session.pm,
                                   model=root.model if root.format == "torch" else None)
            manifest = json.loads((entry / "artifact" / "manifest.json").read_text())
            files = {k: v["sha256"] for k, v in manifest["files"].items()}
            if record.get("key") != key or record.get("files") != files:
                raise ValueError("its files are not the ones the entry recorded")
        except Exception as e:  # noqa: BLE001 - any damage: not trusted, recomputed
            self._discard(entry, f"{type(e).__name__}: {str(e)[:200]}")
            return None
        step = loaded.lineage[-2]
        note = f"step cache hit: {key[:16]} (computed earlier, loaded from {self.folder})"
        step = attrs.evolve(step, notes=tuple(step.notes) + (note,))
        lineage = art.lineage + (step,)
        meta = {**loaded.metadata, "step_cache": {"hit": True, "key": key,
                                                  "content": record["content"],
                                                  "lineage": len(lineage)}}
        out = attrs.evolve(loaded, lineage=lineage, metadata=meta, path=None)
        remember_hash(out, record["content"])
        return out

    def _discard(self, entry: Path, why: str) -> None:
        """Move a damaged entry aside (then delete it): the next store replaces it."""
        said = f"{entry.name[:16]}: {why}; recomputed"
        self.corrupt.append(said)
        log.warning("step cache: entry %s", said)
        trash = entry.parent / f".trash-{uuid.uuid4().hex}"
        try:
            entry.rename(trash)
        except OSError:
            return  # another worker moved it first
        shutil.rmtree(trash, ignore_errors=True)

    def _store(self, key: str, parts: dict[str, Any], out: Any, inst: Any, pm: Any) -> None:
        """Save ``out`` as entry ``key`` (temp folder, then one rename)."""
        entry = self._entry(key)
        if entry.exists():
            return
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}"
        try:
            content = artifact_hash(out)
            out.save(tmp / "artifact", plugins=pm)
            manifest = json.loads((tmp / "artifact" / "manifest.json").read_text())
            record = {"key": key, "parts": parts, "content": content,
                      "files": {k: v["sha256"] for k, v in manifest["files"].items()}}
            (tmp / "entry.json").write_text(json.dumps(record, indent=1, default=str))
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, entry)
            self.stored += 1
        except (Unfingerprintable, OSError, ValueError) as e:
            if not entry.exists():
                why = f"{inst.kind} {inst.name!r} not stored: {type(e).__name__}: {e}"
                if why not in self.uncached:
                    self.uncached.append(why)
                    log.info("step cache: %s", why)
        except Exception as e:  # noqa: BLE001 - a format that cannot save it: not cached
            why = f"{inst.kind} {inst.name!r} not stored: {type(e).__name__}: {str(e)[:200]}"
            if why not in self.uncached:
                self.uncached.append(why)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
