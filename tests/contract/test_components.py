"""One contract for every registered component, discovered at collection time.

Optimizers and exporters: they run with only the session data they declare in ``needs``,
never mutate their input (model state, module flags, ONNX bytes,
lineage, metadata), return a new artifact with exactly one more lineage step whose config is
the component's config as plain data, and the result runs. Backends: load the right formats,
their runner matches the torch original within tolerance, refuse other formats. Profilers:
return flat, finite metrics, each declared in ``columns``, without touching the artifact.
Every component's config round-trips through JSON. Unavailable components (TensorRT on a CPU
machine) skip with the reason.

Training components get tiny budgets: any ``epochs``-like field is set to at most 1, ``steps``
to 2, and ``*_batches``/``iterations``-like fields to at most 2 (found generically from the
config's attrs fields), so a new plugin is picked up and stays fast without editing this file.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from helpers import onnx_bytes, state_hash

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn
from modelopt_demo.models import SmallCNN

PM = mo.get_plugin_manager()
OPTIMIZERS = [i.name for i in PM.components("optimizer")]
EXPORTERS = [i.name for i in PM.components("exporter")]
BACKENDS = [i.name for i in PM.components("backend")]
PROFILERS = [i.name for i in PM.components("profiler")]
ALL = [(i.kind, i.name) for i in PM.components()]
#: per-backend tolerance vs the torch original (FP32 backends; reduced-precision options off)
TOLERANCE = {"default": dict(rtol=1e-3, atol=1e-4)}
#: components whose default config is deliberately incomplete (the user must choose): the
#: smallest valid choice. Everything else runs on its defaults plus ``small_overrides``.
REQUIRED = {"compress.low_rank": {"energy": 0.9}}


def small_overrides(cls: type) -> dict:
    """Config overrides that keep a component's run tiny (generic over field names)."""
    fields = mo.config_fields(cls.Config)
    defaults = {n: a.default for n, a in fields.items()}
    out = dict(REQUIRED.get(cls.name, {}))
    for n, d in defaults.items():
        if isinstance(d, bool) or not isinstance(d, int | type(None)):
            continue
        if n == "steps":
            out[n] = 2
        elif "epoch" in n and isinstance(d, int) and d > 1:
            out[n] = 1
        elif n == "rounds" and isinstance(d, int) and d > 1:
            out[n] = 1
        elif (n.endswith("batches") or n in ("iterations", "warmup")) and isinstance(d, int) \
                and d > 2:
            out[n] = 2
    # keep only overrides the config accepts (a field may forbid small values)
    try:
        mo.build_config(cls.Config, out, cls.name)
    except mo.ConfigError:
        out = dict(REQUIRED.get(cls.name, {}))
    return out


@pytest.fixture(scope="module")
def world(digits):
    """A briefly trained SmallCNN, its Session inputs, and its ONNX export (built once)."""
    from modelopt_core.training import TrainConfig, fit

    torch.manual_seed(0)
    model = SmallCNN(width=8)
    fit(model, digits.train[:8], config=TrainConfig(epochs=1, lr=3e-3),
        ctx=mo.Context(show_progress=False))
    model.eval()
    kw = dict(calibration_data=digits.calibration[:2], train_data=digits.train[:3],
              eval_fn=accuracy_fn(digits.test[:1]), progress=False)
    s = mo.Session(model, (digits.example,), **kw)
    onnx_art = s.export("onnx")
    return {"model": model, "kw": kw, "example": digits.example, "onnx": onnx_art,
            "hash": state_hash(model), "x": digits.test[0][0][:16]}


def source_session(world, fmt: str) -> mo.Session:
    """A session whose current artifact is in format ``fmt`` (skips when none can be made)."""
    s = mo.Session(world["model"], (world["example"],), **world["kw"])
    if fmt == "torch":
        return s
    if fmt == "onnx":
        s._history.append(world["onnx"])  # reuse the module's export instead of exporting again
        return s
    try:
        chain = PM.export_path("torch", fmt)
    except mo.NoExportPathError as e:
        pytest.skip(str(e))
    for info in chain:
        ok, why = info.cls.availability()
        if not ok:
            pytest.skip(f"cannot make a {fmt!r} artifact: exporter {info.name!r}: {why}")
    s.export(fmt)
    return s


def fingerprint(art: mo.ModelArtifact):
    """Everything a component could mutate in an artifact."""
    if isinstance(art.model, torch.nn.Module):
        mods = [(n, type(m).__name__, m.training) for n, m in art.model.named_modules()]
        model = (state_hash(art.model), mods)
    elif hasattr(art.model, "SerializeToString"):
        model = onnx_bytes(art.model)
    elif isinstance(art.model, bytes | bytearray):
        model = bytes(art.model)
    else:  # any other format (an openvino.Model...): the files its Format plugin writes
        model = saved_files(art)
    return model, art.lineage, json.dumps(art.metadata, sort_keys=True, default=repr), art.inputs


def saved_files(art: mo.ModelArtifact) -> dict[str, str]:
    """{file: SHA-256} of what the Format registered for ``art.format`` writes for it."""
    from modelopt_core.artifact import format_for

    with tempfile.TemporaryDirectory() as d:
        files = format_for(art.format, PM, art.model).save(art, Path(d))
        return {f: hashlib.sha256((Path(d) / f).read_bytes()).hexdigest() for f in sorted(files)}


def check_new_artifact(src: mo.ModelArtifact, out: mo.ModelArtifact, name: str, inst) -> None:
    assert isinstance(out, mo.ModelArtifact), f"{name} returned {type(out).__name__}"
    assert out is not src and out.model is not src.model
    assert len(out.lineage) == len(src.lineage) + 1, "exactly one new lineage step"
    assert out.lineage[:-1] == src.lineage
    step = out.lineage[-1]
    assert step.component == name
    assert json.loads(json.dumps(step.config)) == mo.config_to_data(inst.config)


def check_runs(s: mo.Session, out: mo.ModelArtifact, x: torch.Tensor) -> None:
    """The new artifact runs on a backend for its format and keeps the output shape."""
    for b in dict.fromkeys(("torch", "onnxruntime", "tensorrt", *BACKENDS)):
        cls = PM.get("backend", b).cls
        if out.format in cls.accepts and cls.availability()[0]:
            with s.runner(b, out) as r, s.runner("torch", s.original) as ref:
                y, y0 = r(x), ref(x)
            assert y.shape == y0.shape and torch.isfinite(y).all()
            return


def _skip_unavailable(cls: type) -> None:
    ok, why = cls.availability()
    if not ok:
        pytest.skip(f"{cls.kind} {cls.name!r} unavailable here: {why}")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_contract(name, world):
    cls = PM.get("optimizer", name).cls
    _skip_unavailable(cls)
    s = source_session(world, cls.accepts[0])
    src = s.current
    before = fingerprint(src)
    inst = cls(**small_overrides(cls))
    ctx = s.context()
    for data in ("calibration_data", "train_data", "eval_fn"):
        if data not in cls.needs:  # what Session.apply checks up front must be complete
            setattr(ctx, data, None)
    out = inst.apply(src, ctx)
    assert fingerprint(src) == before, f"{name} mutated its input artifact"
    assert state_hash(world["model"]) == world["hash"], f"{name} mutated the user's model"
    check_new_artifact(src, out, name, inst)
    check_runs(s, out, world["x"])


@pytest.mark.parametrize("name", EXPORTERS)
def test_exporter_contract(name, world):
    cls = PM.get("exporter", name).cls
    _skip_unavailable(cls)
    s = source_session(world, cls.source)
    src = s.current
    before = fingerprint(src)
    inst = cls(**small_overrides(cls))
    out = inst.export(src, s.context())
    assert fingerprint(src) == before, f"{name} mutated its input artifact"
    assert state_hash(world["model"]) == world["hash"]
    check_new_artifact(src, out, name, inst)
    assert out.format == cls.target
    check_runs(s, out, world["x"])


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_contract(name, world):
    cls = PM.get("backend", name).cls
    _skip_unavailable(cls)
    fmt = next((f for f in ("torch", "onnx") if f in cls.accepts), cls.accepts[0])
    s = source_session(world, fmt)
    art = s.current
    before = fingerprint(art)
    x = world["x"]
    with s.runner("torch", s.original) as ref:
        expected = ref(x)
    with s.runner(name, art) as r:
        got = r(x)
        got_again = r(x[:3])
    tol = TOLERANCE.get(name, TOLERANCE["default"])
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(got_again, expected[:3], **tol)
    assert fingerprint(art) == before
    assert state_hash(world["model"]) == world["hash"]
    other = "onnx" if "onnx" not in cls.accepts else "torch"
    if other not in cls.accepts:
        with pytest.raises(mo.FormatError, match=name):
            s.runner(name, world["onnx"] if other == "onnx" else s.original)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_declares_its_stage(name):
    """Search composes recipes and decides what recovers from the declared stage (issue 25)."""
    cls = PM.get("optimizer", name).cls
    assert cls.stage in ("structure", "recover", "graph", "precision"), (name, cls.stage)
    assert isinstance(cls.lossy, bool)
    if cls.stage == "recover":
        assert cls.lossy and "train_data" in cls.needs, name


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_traits_are_declared_consistently(name):
    """What serving, search and the gate read off a backend class (issue 25): the thread option
    is a field of its Config, the formats it is the reference evaluator of are formats it
    accepts, and at most one backend is the reference for a format."""
    cls = PM.get("backend", name).cls
    if cls.thread_option is not None:
        assert cls.thread_option in mo.config_fields(cls.Config), (name, cls.thread_option)
    assert isinstance(cls.releases_gil, bool)
    assert set(cls.reference_for) <= set(cls.accepts), (name, cls.reference_for, cls.accepts)
    for fmt in cls.reference_for:
        others = [b for b in BACKENDS if b != name
                  and fmt in PM.get("backend", b).cls.reference_for]
        assert not others, f"{fmt!r} has several reference backends: {[name, *others]}"


@pytest.mark.parametrize("name", PROFILERS)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_profiler_contract(name, backend, world):
    cls = PM.get("profiler", name).cls
    _skip_unavailable(cls)
    s = source_session(world, "torch" if backend == "torch" else "onnx")
    art = s.current
    before = fingerprint(art)
    with s.runner(backend, art) as r:
        metrics = cls(**small_overrides(cls)).profile(r, art, s.context())
    assert isinstance(metrics, dict)
    for k, v in metrics.items():
        assert isinstance(k, str)
        assert _plain_metric(v), f"{name}: {k}={v!r} is not plain, finite data"
    json.dumps(metrics, allow_nan=False)
    # every key is declared (Profiler.columns), so the reports know its header and format
    undeclared = sorted(set(metrics) - {c.name for c in cls.columns})
    assert not undeclared, f"{name}: returns {undeclared} but does not declare them in " \
        "`columns` (mo.Column)"
    assert fingerprint(art) == before
    assert state_hash(world["model"]) == world["hash"]


def _plain_metric(v) -> bool:
    """None, text, a finite number, or a list/dict of those (kept in the JSON report)."""
    if v is None or isinstance(v, str | bool):
        return True
    if isinstance(v, int | float):
        return math.isfinite(v)
    if isinstance(v, list | tuple):
        return all(_plain_metric(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain_metric(x) for k, x in v.items())
    return False


@pytest.mark.parametrize("kind, name", ALL, ids=[f"{k}:{n}" for k, n in ALL])
def test_config_round_trips_through_plain_data(kind, name):
    cls = PM.get(kind, name).cls
    assert name and cls.describe(), f"{kind} {name!r} needs a name and a docstring"
    for values in (REQUIRED.get(name, {}), small_overrides(cls)):
        cfg = cls(**values).config
        data = json.loads(json.dumps(mo.config_to_data(cfg)))
        assert mo.build_config(cls.Config, data, name) == cfg
    with pytest.raises(mo.ConfigError, match="Valid keys"):
        cls(definitely_not_an_option=1)


def test_contract_checks_catch_violations():
    """The checks above are not vacuous: in-place edits, flag flips and missing steps fail."""

    class Bad(mo.Optimizer):
        """Mutates its input and skips the lineage step."""

        name = "bad.inplace"

        def apply(self, artifact, ctx):
            artifact.model[0].weight.data.add_(1.0)
            return mo.ModelArtifact("torch", artifact.model, artifact.inputs,
                                    lineage=artifact.lineage)

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).eval()
    src = mo.ModelArtifact("torch", model, lineage=(mo.Step("original", "source"),))
    before = fingerprint(src)
    model.train()  # flipping a training flag is a mutation too
    assert fingerprint(src) != before
    model.eval()
    inst = Bad()
    out = inst.apply(src, mo.Context(show_progress=False))
    assert fingerprint(src) != before
    with pytest.raises(AssertionError):
        check_new_artifact(src, out, "bad.inplace", inst)


#: the thread-safety contract: threads x calls each, on distinct inputs (batches 1..8)
THREADS, CALLS = 4, 12


def _artifact_for(world, fmt: str) -> tuple[mo.Session, mo.ModelArtifact]:
    """A session and its artifact in ``fmt``, exported once per test process."""
    made = world.setdefault("made", {})
    if fmt not in made:
        made[fmt] = source_session(world, fmt).current
    s = mo.Session(world["model"], (world["example"],), **world["kw"])
    if fmt != "torch":
        s._history.append(made[fmt])
    return s, made[fmt]


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_is_thread_safe(name, world):
    """One runner shared by THREADS threads (released together by a barrier), THREADS x CALLS
    calls on distinct inputs of varying batch: each answer equals the sequential answer for its
    input, and nothing raises (a runtime's 'request is busy' is a contract violation)."""
    from concurrent.futures import ThreadPoolExecutor

    cls = PM.get("backend", name).cls
    _skip_unavailable(cls)
    fmt = next((f for f in ("torch", "onnx") if f in cls.accepts), cls.accepts[0])
    s, art = _artifact_for(world, fmt)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1 + i % 8, *world["example"].shape[1:], generator=g)
          for i in range(THREADS * CALLS)]
    with s.runner(name, art) as r:
        expected = [r(x) for x in xs]  # sequential: one call at a time
        barrier = threading.Barrier(THREADS)

        def worker(k: int) -> list[tuple[int, torch.Tensor]]:
            barrier.wait()
            return [(i, r(xs[i])) for i in range(k, len(xs), THREADS)]

        with ThreadPoolExecutor(THREADS) as pool:
            results = [p for part in pool.map(worker, range(THREADS)) for p in part]
    assert sorted(i for i, _ in results) == list(range(len(xs)))
    for i, got in results:
        torch.testing.assert_close(got, expected[i], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, i=i: f"{name}: call {i} (batch "
                                                      f"{xs[i].shape[0]}) under threads: {m}")


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_runner_protocol(name, world):
    """The public Runner protocol's stages agree with the call: ``run_flat(x)`` is
    ``flatten(runner(x))``, ``unflatten(run_flat(x))`` is ``runner(x)``, and ``run_many`` (the
    sequential default or a runtime's own, e.g. OpenVINO's async queue) gives each item's
    ``runner(item)`` in order, whatever form the item takes (tensor, tuple, dict by name)."""
    cls = PM.get("backend", name).cls
    _skip_unavailable(cls)
    fmt = next((f for f in ("torch", "onnx") if f in cls.accepts), cls.accepts[0])
    s, art = _artifact_for(world, fmt)
    x, x2 = world["x"][:4], world["x"][4:9]
    close = {"rtol": 1e-5, "atol": 1e-5}
    with s.runner(name, art) as r:
        want, want2 = r(x), r(x2)
        flat = r.run_flat([x])
        assert isinstance(flat, list) and all(isinstance(t, torch.Tensor) for t in flat)
        torch.testing.assert_close(flat, r.flatten(want), **close)
        torch.testing.assert_close(r.unflatten(flat), want, **close)
        assert type(r.unflatten(flat)) is type(want)
        many = r.run_many([(x,), x2])
        assert isinstance(many, list) and len(many) == 2
        torch.testing.assert_close(many, [want, want2], **close)
        named = r.run_many([{art.inputs[0].name: x}])
        torch.testing.assert_close(named, [want], **close)
        assert r.run_many([]) == []
        with pytest.raises(mo.InputSpecError):
            r.run_flat([x, x])  # one input too many: checked before the runtime sees it
    with pytest.raises(mo.RunnerClosedError):
        r.run_flat([x])
    with pytest.raises(mo.RunnerClosedError):
        r.run_many([(x,)])
