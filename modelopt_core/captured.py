"""Captured production traffic as optimization data: ``modelopt optimize ... --calibration-from
DIR [--eval-from DIR]``.

``DIR`` is what ``modelopt serve --capture DIR`` writes (``modelopt_serve.capture``): shards
``shard-<hash>.npz`` of request inputs, one array per model input named by the input (so
``--calibration DIR`` reads the folder too), and ``capture.json``, the manifest: the live
shards with each sample's capture time, the sampling counters and the input names. Reading
through the manifest takes only the shards it lists (never a half-written or replaced one)
and knows when each sample arrived, so the report can say which traffic the result was
calibrated and measured on.

Calibration and evaluation never share a sample: when both flags name the same folder, its
samples are shuffled (seed 0) and a quarter (at least one batch) is held out to measure
agreement with the current production model (the recipe's or ``--model``'s: top-1 agreement
for a classifier, else cosine similarity), the rest calibrates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from .artifact import TensorSpec
from .errors import DataError

__all__ = ["FORMAT", "MANIFEST", "Captured", "read_captured", "read_manifest"]

#: the manifest's file name in a capture folder
MANIFEST = "capture.json"
#: its ``format`` field
FORMAT = "modelopt-capture/1"

_KEYS = {"input_names": list, "seen": int, "eligible": int, "next_id": int, "shards": list,
         "started": (int, float)}


def read_manifest(folder: str | Path, field: str = "--calibration-from",
                  must_exist: bool = True) -> dict[str, Any] | None:
    """The checked ``capture.json`` of ``folder``; None when there is none and not
    ``must_exist``. :class:`DataError` naming the folder for anything else."""
    p = Path(folder)
    m = p / MANIFEST
    if not m.is_file():
        if must_exist:
            what = "no such folder" if not p.exists() else (
                "not a folder" if not p.is_dir() else f"not a capture folder (no {MANIFEST})")
            raise DataError(f"{field} {p}: {what}; give the folder a server captured into "
                            f"(`modelopt serve MODEL --capture {p}`), or pass plain NumPy data "
                            "with --calibration.")
        return None
    try:
        data = json.loads(m.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{field} {m}: unreadable ({type(e).__name__}: {str(e)[:200]}); "
                        "the capture folder is damaged: capture into a new folder.") from e
    bad = [k for k, t in _KEYS.items() if not isinstance(data, dict)
           or not isinstance(data.get(k), t) or isinstance(data.get(k), bool)]
    if bad or data.get("format") != FORMAT:
        raise DataError(f"{field} {m}: not a {FORMAT} manifest (bad or missing "
                        f"{bad or ['format']}); capture into a new folder.")
    for s in data["shards"]:
        ok = (isinstance(s, dict) and isinstance(s.get("file"), str)
              and Path(s["file"]).name == s["file"] and s["file"].startswith("shard-")
              and isinstance(s.get("ids"), list) and isinstance(s.get("times"), list)
              and len(s["ids"]) == len(s["times"]))
        if not ok:
            raise DataError(f"{field} {m}: a damaged shard entry {str(s)[:120]}; capture into "
                            "a new folder.")
    return data


@attrs.define
class Captured:
    """The samples of a capture folder: ``arrays`` (input name -> array, samples first, in
    the model's input order) and ``times`` (each sample's capture time, Unix seconds)."""

    folder: Path
    arrays: dict[str, Any]
    times: Any

    @property
    def count(self) -> int:
        return int(self.times.shape[0])

    def take(self, index: Any) -> Captured:
        """The samples at ``index`` (in that order)."""
        return Captured(self.folder, {n: a[index] for n, a in self.arrays.items()},
                        self.times[index])

    def split(self, held: int, seed: int = 0) -> tuple[Captured, Captured]:
        """(the rest, ``held`` samples), disjoint, drawn in a shuffled order."""
        import numpy as np

        order = np.random.default_rng(seed).permutation(self.count)
        return self.take(np.sort(order[held:])), self.take(np.sort(order[:held]))

    def describe(self) -> str:
        """``N captured samples from DIR (first - last UTC)``."""
        return (f"{self.count} captured sample(s) from {self.folder} "
                f"({span(self.times)})")


def span(times: Any) -> str:
    """The time range of capture times, in UTC."""
    import datetime as dt

    def at(t: float) -> str:
        return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S")

    if len(times) == 0:
        return "no samples"
    return f"captured {at(times.min())} to {at(times.max())} UTC"


def read_captured(folder: str | Path, specs: tuple[TensorSpec, ...] | None,
                  field: str = "--calibration-from") -> Captured:
    """Every sample the manifest of ``folder`` lists, checked against the model's input
    ``specs`` (as ``--calibration`` data is, :mod:`.samples`)."""
    import numpy as np

    from .samples import _checked, _read_npz

    p = Path(folder)
    m = read_manifest(p, field)
    assert m is not None
    if specs is not None and [s.name for s in specs] != m["input_names"]:
        raise DataError(f"{field} {p}: captured inputs {m['input_names']}, the model takes "
                        f"{[s.name for s in specs]}: this folder was captured from another "
                        "model; capture the traffic of the model you optimize.")
    if not m["shards"]:
        raise DataError(f"{field} {p}: the capture holds no samples yet ({m['seen']} seen, "
                        f"rate {m.get('rate')}); send traffic to the server, or raise "
                        "--capture-rate, and try again once it has flushed (about 10 s).")
    parts: dict[str, list[Any]] = {}
    times: list[float] = []
    for s in m["shards"]:
        f = p / s["file"]
        if not f.is_file():
            raise DataError(f"{field} {f}: listed in {MANIFEST} but missing; the capture "
                            "folder was changed by hand: capture into a new folder.")
        got = _read_npz(f, specs, field, False)[0] if specs is not None else _named(f, m, field)
        for name, a in got.items():
            a = _checked(f, name, a, next((x for x in specs or () if x.name == name), None),
                         field)
            if a.shape[0] != len(s["ids"]):
                raise DataError(f"{field} {f}: {a.shape[0]} sample(s), {MANIFEST} says "
                                f"{len(s['ids'])}; capture into a new folder.")
            parts.setdefault(name, []).append(a)
        times += s["times"]
    try:
        arrays = {n: np.concatenate(v) for n, v in parts.items()}
    except ValueError as e:
        raise DataError(f"{field} {p}: the captured samples differ in shape ({e}); a model "
                        "with variable-sized inputs cannot be calibrated from them as they "
                        "are.") from e
    return Captured(p, arrays, np.asarray(times, dtype=np.float64))


def _named(f: Path, m: dict[str, Any], field: str) -> dict[str, Any]:
    """A shard's arrays in the manifest's input order (a model without specs)."""
    from .samples import _load

    got = _load(f, field)
    missing = [n for n in m["input_names"] if n not in got]
    if missing:
        raise DataError(f"{field} {f}: no array {missing[0]!r}; capture into a new folder.")
    return {n: got[n] for n in m["input_names"]}
