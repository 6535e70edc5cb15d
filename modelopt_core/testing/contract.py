"""The rules every component keeps, as checks (public through :mod:`modelopt_core.testing`).

Optimizers and exporters run with only the session data they declare in ``needs``, never
mutate their input (model state, module flags, ONNX bytes, lineage, metadata), return a new
artifact with exactly one more lineage step whose config is the component's config as plain
data, and the result runs. Backends load their formats, match the torch original within
tolerance, refuse other formats, keep the Runner protocol and are safe to share between
threads. Profilers return flat, finite metrics, each declared in ``columns``, without touching
the artifact. Formats save what they list and load it back. Every config round-trips
through JSON. Training components get tiny budgets (:func:`small_overrides`).
"""

from __future__ import annotations

import json
import tempfile
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modelopt_core as mo

from .world import forget, world

__all__ = [
    "REQUIRED",
    "ContractViolation",
    "Unavailable",
    "check_config",
    "check_exporter",
    "check_optimizer",
    "check_optimizer_stage",
    "fingerprint",
    "small_overrides",
]

#: components whose default config deliberately needs a choice: the smallest valid one
REQUIRED: dict[str, dict[str, Any]] = {"compress.low_rank": {"energy": 0.9}}
#: tolerance of a backend's outputs vs the torch original (FP32, reduced precision off)
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}
STAGES = ("structure", "recover", "graph", "precision")


class ContractViolation(AssertionError):
    """A component breaks a rule of the contract (the message names both)."""


class Unavailable(unittest.SkipTest):
    """The component, or what its check needs, cannot run here (pytest: a skip)."""


def _fail(who: str, rule: str, detail: str = "") -> None:
    raise ContractViolation(f"{who}: {rule}" + (f": {detail}" if detail else ""))


def _require(ok: Any, who: str, rule: str, detail: str = "") -> None:
    if not ok:
        _fail(who, rule, detail)


def _resolve(kind: str, x: Any, pm: Any) -> tuple[type, Any]:
    pm = pm or mo.get_plugin_manager()
    if isinstance(x, str):
        return pm.get(kind, x).cls, pm
    from ..plugins import KINDS

    _require(isinstance(x, type) and issubclass(x, KINDS[kind]), repr(x),
             f"is a {KINDS[kind].__name__} subclass")
    return x, pm


def _who(cls: type) -> str:
    return f"{cls.kind} {cls.name!r}"


def _skip_unavailable(cls: type) -> None:
    ok, why = cls.availability()
    if not ok:
        raise Unavailable(f"{cls.kind} {cls.name!r} unavailable here: {why}")


def small_overrides(cls: type) -> dict[str, Any]:
    """Config overrides that keep a component's run tiny, found from its config's field names
    (``steps`` 2, ``*epoch*`` / ``rounds`` 1, ``*batches`` / ``iterations`` / ``warmup`` 2)."""
    out = dict(REQUIRED.get(cls.name, {}))
    for n, field in mo.config_fields(cls.Config).items():
        d = field.default
        if isinstance(d, bool) or not isinstance(d, int):
            continue
        if n == "steps":
            out[n] = 2
        elif ("epoch" in n or n == "rounds") and d > 1:
            out[n] = 1
        elif (n.endswith("batches") or n in ("iterations", "warmup")) and d > 2:
            out[n] = 2
    try:  # keep only overrides the config accepts (a field may forbid small values)
        mo.build_config(cls.Config, out, cls.name)
    except mo.ConfigError:
        out = dict(REQUIRED.get(cls.name, {}))
    return out


def fingerprint(art: Any, pm: Any = None) -> tuple:
    """Everything a component could mutate in an artifact: the model (state, module classes
    and training flags; ONNX bytes; raw bytes; else the files its Format writes), lineage,
    metadata and input specs."""
    from .world import state_hash

    model = art.model
    if hasattr(model, "named_modules") and hasattr(model, "state_dict"):
        mods = [(n, type(m).__name__, m.training) for n, m in model.named_modules()]
        fp: Any = (state_hash(model), mods)
    elif hasattr(model, "SerializeToString"):
        fp = model.SerializeToString(deterministic=True)
    elif isinstance(model, bytes | bytearray):
        fp = bytes(model)
    else:
        fp = _saved_files(art, pm or mo.get_plugin_manager())
    return fp, art.lineage, json.dumps(art.metadata, sort_keys=True, default=repr), art.inputs


def _saved_files(art: Any, pm: Any) -> dict[str, str]:
    import hashlib

    with tempfile.TemporaryDirectory() as d:
        files = pm.format_for(art.format, art.model).save(art, Path(d))
        return {f: hashlib.sha256((Path(d) / f).read_bytes()).hexdigest() for f in sorted(files)}


# ---- the worlds: sessions and artifacts of the check's own models ---------------------------

def _source(w: Any, pm: Any, fmt: str) -> tuple[Any, Any]:
    """A session of world ``w`` whose current artifact is in ``fmt`` (exported once, reused;
    :class:`Unavailable` when no available exporter chain leads there)."""
    s = w.session(pm)
    if fmt == "torch":
        return s, s.current
    made = w.made(pm)
    if fmt not in made:
        try:
            chain = pm.export_path("torch", fmt)
        except mo.NoExportPathError as e:
            raise Unavailable(str(e)) from None
        for info in chain:
            ok, why = info.cls.availability()
            if not ok:
                raise Unavailable(f"cannot make a {fmt!r} artifact: exporter {info.name!r}: "
                                  f"{why}")
        made[fmt] = s.export(fmt)
        return s, made[fmt]
    s._history.append(made[fmt])
    return s, made[fmt]


def _on_models(who: str, fn: Callable[[Any], Any]) -> Any:
    """``fn(world)`` on the tiny CNN, else (when a component refuses it with a typed
    FormatError / ExportError) on the MLP; refusing both breaks the contract."""
    refused = []
    for label in ("cnn", "mlp"):
        w = world(label)
        try:
            return fn(w)
        except (mo.FormatError, mo.ExportError) as e:
            refused.append(f"the tiny {label.upper()}: {type(e).__name__}: {e}")
        finally:
            if not w.intact():  # never reuse a world a component changed
                forget()
    _fail(who, "runs on one of the check's models", "; ".join(refused))


def _load(s: Any, cls: type, art: Any, **options: Any) -> Any:
    """A runner of ``art`` on backend ``cls`` (through the registry when it is registered)."""
    try:
        registered = s.pm.get("backend", cls.name).cls is cls
    except mo.UnknownComponentError:
        registered = False
    if registered:
        return s.runner(cls.name, art, **options)
    cls.ensure_available()
    return cls(**options).load(art, s.context())


def _close(who: str, rule: str, got: Any, want: Any, **tol: Any) -> None:
    import torch

    try:
        torch.testing.assert_close(got, want, **tol)
    except AssertionError as e:
        _fail(who, rule, str(e))


def _check_new_artifact(who: str, src: Any, out: Any, inst: Any) -> None:
    rule = "returns a new artifact with exactly one more lineage step"
    _require(isinstance(out, mo.ModelArtifact), who, rule, f"got {type(out).__name__}")
    _require(out is not src and out.model is not src.model, who, rule,
             "it returned its input (or its input's model)")
    _require(len(out.lineage) == len(src.lineage) + 1 and out.lineage[:-1] == src.lineage,
             who, rule, f"lineage {[s.component for s in src.lineage]} became "
             f"{[s.component for s in out.lineage]}")
    step = out.lineage[-1]
    _require(step.component == inst.name, who, "its step names it", repr(step.component))
    _require(json.loads(json.dumps(step.config)) == mo.config_to_data(inst.config), who,
             "its step records its config as plain data", repr(step.config))


def _check_untouched(who: str, w: Any, src: Any, before: tuple, pm: Any) -> None:
    _require(fingerprint(src, pm) == before, who, "never mutate the input",
             "it changed its input artifact (model, flags, lineage, metadata or inputs)")
    _require(w.intact(), who, "never mutate the input", "it changed the user's model")


def _check_runs(who: str, s: Any, out: Any, x: Any) -> None:
    """The new artifact runs on an available backend for its format, output shape kept."""
    import torch

    names = [i.name for i in s.pm.components("backend")]
    for b in dict.fromkeys(("torch", "onnxruntime", "tensorrt", *names)):
        if b not in names:
            continue
        cls = s.pm.get("backend", b).cls
        if out.format in cls.accepts and cls.availability()[0]:
            with s.runner(b, out) as r, s.runner("torch", s.original) as ref:
                y, y0 = r(x), ref(x)
            _require(y.shape == y0.shape and torch.isfinite(y).all(), who,
                     "its result runs, shaped like the original, finite",
                     f"on {b!r}: {tuple(y.shape)} vs {tuple(y0.shape)}")
            return


# ---- declarations ---------------------------------------------------------------------------

def check_config(name_or_cls: Any, pm: Any = None, *, kind: str | None = None) -> None:
    """A name and a docstring; the default and the small configs round-trip through JSON; an
    unknown option is a ConfigError listing the valid keys."""
    if isinstance(name_or_cls, str):
        pm = pm or mo.get_plugin_manager()
        kinds = [kind] if kind else [k for k in ("optimizer", "exporter", "backend",
                                                 "profiler", "format")
                                     if name_or_cls in {i.name for i in pm.components(k)}]
        cls, pm = _resolve(kinds[0] if kinds else "optimizer", name_or_cls, pm)
    else:
        cls = name_or_cls
    who = _who(cls)
    _require(cls.name and cls.describe(), who, "has a name and a docstring")
    for values in (REQUIRED.get(cls.name, {}), small_overrides(cls)):
        cfg = cls(**values).config
        data = json.loads(json.dumps(mo.config_to_data(cfg)))
        _require(mo.build_config(cls.Config, data, cls.name) == cfg, who,
                 "its config round-trips through plain data", repr(data))
    try:
        cls(definitely_not_an_option=1)
    except mo.ConfigError as e:
        _require("Valid keys" in str(e), who, "an unknown option lists the valid keys", str(e))
    else:
        _fail(who, "an unknown option is a ConfigError", "definitely_not_an_option=1 passed")


def check_optimizer_stage(name_or_cls: Any, pm: Any = None) -> None:
    """``stage`` is one of structure/recover/graph/precision, ``lossy`` a bool, and a
    recover step is lossy and needs train_data."""
    cls, pm = _resolve("optimizer", name_or_cls, pm)
    who = _who(cls)
    _require(cls.stage in STAGES, who, f"declares its stage (one of {STAGES})", repr(cls.stage))
    _require(isinstance(cls.lossy, bool), who, "declares lossy as a bool", repr(cls.lossy))
    if cls.stage == "recover":
        _require(cls.lossy and "train_data" in cls.needs, who,
                 "a 'recover' step is lossy and needs train_data")


# ---- behaviour --------------------------------------------------------------------------------

def check_optimizer(name_or_cls: Any, pm: Any = None, *, config: dict | None = None) -> None:
    """Declarations, config, and a run on the check's model (see the module docstring)."""
    cls, pm = _resolve("optimizer", name_or_cls, pm)
    check_optimizer_stage(cls, pm)
    check_config(cls, pm)
    _skip_unavailable(cls)
    who, values = _who(cls), small_overrides(cls) if config is None else dict(config)

    def run(w: Any) -> None:
        s, src = _source(w, pm, cls.accepts[0])
        before = fingerprint(src, pm)
        inst = cls(**values)
        ctx = s.context()
        for data in ("calibration_data", "train_data", "eval_fn"):
            if data not in cls.needs:  # what Session.apply checks up front must be complete
                setattr(ctx, data, None)
        out = inst.apply(src, ctx)
        _check_untouched(who, w, src, before, pm)
        _check_new_artifact(who, src, out, inst)
        _check_runs(who, s, out, w.x)

    _on_models(who, run)


def check_exporter(name_or_cls: Any, pm: Any = None, *, config: dict | None = None) -> None:
    """Config, and an export on the check's model: input untouched, one more step, the
    target format, the result runs."""
    cls, pm = _resolve("exporter", name_or_cls, pm)
    check_config(cls, pm)
    _skip_unavailable(cls)
    who, values = _who(cls), small_overrides(cls) if config is None else dict(config)

    def run(w: Any) -> None:
        s, src = _source(w, pm, cls.source)
        before = fingerprint(src, pm)
        inst = cls(**values)
        out = inst.export(src, s.context())
        _check_untouched(who, w, src, before, pm)
        _check_new_artifact(who, src, out, inst)
        _require(out.format == cls.target, who, f"makes its target format {cls.target!r}",
                 repr(out.format))
        _check_runs(who, s, out, w.x)

    _on_models(who, run)
