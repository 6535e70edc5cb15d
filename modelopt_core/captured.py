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

__all__ = ["FORMAT", "MANIFEST", "Captured", "CapturedEval", "apply_flags", "nocode_args",
           "read_captured", "read_manifest", "use_captured"]

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


class CapturedEval:
    """An ``eval_fn`` (``fn``) whose ``metric`` says what it measures and on which captured
    traffic the result was calibrated (the search prints it under the table and in its
    report's notes)."""

    def __init__(self, fn: Any, metric: Any, calibrated: str | None,
                 fingerprint: str | None = None) -> None:
        self.fn, self._metric, self.calibrated = fn, metric, calibrated
        if fingerprint is not None:  # what the step cache keys on (:mod:`.fingerprint`)
            self.modelopt_fingerprint = fingerprint

    @property
    def metric(self) -> str:
        m = self._metric() if callable(self._metric) else self._metric
        return m + (f"; calibrated on {self.calibrated}" if self.calibrated else "")

    def __call__(self, runner: Any) -> float:
        return float(self.fn(runner))


def use_captured(session: Any, calibration_from: str | Path | None,
                 eval_from: str | Path | None, batch_size: int | None = None) -> None:
    """Point ``session`` at captured traffic: ``calibration_from``'s samples become its
    calibration data; ``eval_from``'s, its ``eval_fn``: agreement with the session's original
    model (the production model) in percent. The same folder for both is split (a quarter,
    at least one batch, held out; never calibrated on). Without ``eval_from`` the session
    keeps its ``eval_fn`` (a recipe's labelled data), whose ``metric`` then also names the
    calibration samples."""
    from .gate import Agreement
    from .nocode import AgreementPercent
    from .samples import batch_samples

    specs = session.original.inputs or None
    fixed = specs[0].shape[0] if specs and specs[0].shape else None
    size = _batch(specs, batch_size)
    cal = read_captured(calibration_from, specs) if calibration_from else None
    ev = read_captured(eval_from, specs, "--eval-from") if eval_from else None
    if cal is not None and ev is not None and cal.folder.resolve() == ev.folder.resolve():
        _enough_to_split(cal, size)
        cal, ev = cal.split(max(size, cal.count // 4))
    for got, flag in ((cal, "--calibration-from"), (ev, "--eval-from")):
        if got is not None and got.count < size and isinstance(fixed, int):
            raise DataError(f"{flag} {got.folder}: {got.count} sample(s), fewer than the "
                            f"model's fixed batch of {size}; capture more traffic.")
    keep = not isinstance(fixed, int)
    if cal is not None:
        session.calibration_data = batch_samples(cal.arrays, size, keep_partial=keep)
    calibrated = cal.describe() if cal is not None else None
    if ev is not None:
        held = batch_samples(ev.arrays, size, keep_partial=keep)
        agree = AgreementPercent(Agreement(held, _Reference(session.original)))
        who = "a quarter of the capture held out from calibration" if cal is not None and \
            cal.folder.resolve() == ev.folder.resolve() else "captured traffic"

        def metric() -> str:
            agree.agreement.reference_outputs()  # its kind is known once the original ran
            return (f"{agree.agreement.kind} with the production model (%) on {ev.describe()}"
                    f": {who}, no labels")

        session.eval_fn = CapturedEval(agree, metric, calibrated,
                                       _agreement_fingerprint(ev, session.original))
    elif calibrated is not None and session.eval_fn is not None:
        fn = session.eval_fn
        session.eval_fn = CapturedEval(
            fn, getattr(fn, "metric", None) or "the recipe's eval_fn", calibrated)


class _Reference:
    """The production model's runner, on the runtime it carries (else its format's reference
    backend): a plain object, so the eval_fn pickles to search workers (``--ray``)."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self) -> Any:
        from .plugins import load_runner

        return load_runner(self.original)


def _batch(specs: tuple[TensorSpec, ...] | None, batch_size: int | None) -> int:
    """Samples per batch: the model's fixed batch, else ``--batch-size``, else 8."""
    from .nocode import DEFAULT_BATCH

    fixed = specs[0].shape[0] if specs and specs[0].shape else None
    return fixed if isinstance(fixed, int) else (batch_size or DEFAULT_BATCH)


def _enough_to_split(cal: Captured, size: int) -> None:
    if cal.count < 2 * size:
        raise DataError(
            f"--calibration-from {cal.folder}: {cal.count} captured sample(s); a quarter (at "
            f"least one batch of {size}) is held out to measure agreement and the rest "
            f"calibrates, so at least {2 * size} are needed (better {8 * size}): let the "
            "server capture longer (--capture-rate, --capture-max), or measure on labelled "
            "data (--eval) or another capture (--eval-from).")


def _agreement_fingerprint(ev: Captured, original: Any) -> str | None:
    """Agreement with ``original`` on ``ev``'s samples: the samples' bytes and what the
    original computes (None, uncached, when it cannot be hashed)."""
    import hashlib

    try:
        from .fingerprint import artifact_hash

        h = hashlib.sha256(f"captured-agreement:{artifact_hash(original)}".encode())
    except Exception:  # noqa: BLE001 - no faithful fingerprint: the step is not cached
        return None
    for name, a in ev.arrays.items():
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def nocode_args(args: Any) -> Any:
    """``args`` of ``modelopt optimize`` for the no-code session: ``--calibration-from DIR``
    stands in for ``--calibration`` (the shards read as they are, then :func:`apply_flags`
    splits them); :class:`ConfigError` for flags that contradict each other."""
    import argparse

    from .errors import ConfigError

    cal, ev = getattr(args, "calibration_from", None), getattr(args, "eval_from", None)
    if cal and getattr(args, "calibration", None):
        raise ConfigError(f"--calibration {args.calibration} and --calibration-from {cal}: "
                          "give one (the captured traffic, or your own data).")
    if ev and getattr(args, "eval_data", None):
        raise ConfigError(f"--eval {args.eval_data} and --eval-from {ev}: give one (labels, "
                          "or agreement with the production model on captured traffic).")
    if cal and getattr(args, "model", None) is not None:
        _precheck(cal, args)
        return argparse.Namespace(**{**vars(args), "calibration": cal})
    return args


def _precheck(folder: str, args: Any) -> None:
    """The errors of a capture folder that does not fit ``--model`` (:class:`DataError`
    naming the folder and the flag), before the no-code entry reads its shards as plain
    data: the manifest, samples, input names, shapes and dtypes."""
    from .cli_options import model_options
    from .nocode import load_original

    specs = None
    ref, kwargs = model_options(args)
    if ref is not None and (Path(ref).suffix in (".onnx", ".pt2") or Path(ref).is_dir()):
        specs = load_original(ref, kwargs).specs  # a callable's inputs come from the data
    got = read_captured(folder, specs)
    ev = getattr(args, "eval_from", None)
    if getattr(args, "eval_data", None) is None and (ev is None or Path(ev).resolve()
                                                     == Path(folder).resolve()):
        _enough_to_split(got, _batch(specs, getattr(args, "batch_size", None)))


def apply_flags(session: Any, args: Any) -> None:
    """``--calibration-from`` / ``--eval-from`` applied to the session (:func:`use_captured`);
    with ``--model`` and neither ``--eval`` nor ``--eval-from``, the calibration capture's
    held-out quarter measures agreement (there are no other data)."""
    cal, ev = getattr(args, "calibration_from", None), getattr(args, "eval_from", None)
    if not cal and not ev:
        return
    if cal and not ev and getattr(args, "model", None) is not None and \
            getattr(args, "eval_data", None) is None:
        ev = cal
    use_captured(session, cal, ev, getattr(args, "batch_size", None))
