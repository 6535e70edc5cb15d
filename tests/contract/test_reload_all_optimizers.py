"""Every registered optimizer's result saves and reloads bit-exactly.

Parametrized over ``mo.get_plugin_manager().components("optimizer")`` at collection time, so
a new optimizer (built-in or installed plugin) is covered without editing this file. Each one
gets the session data it declares in ``needs`` (tiny digits batches), runs on a small CNN,
and its artifact is saved and loaded back: torch artifacts into a fresh instance of the
user's class (``load_artifact(path, model=SmallCNN(...))``), compared output for output
(``torch.equal`` through the torch runner) and tensor for tensor; ONNX-only optimizers run on
an export and compare ONNX Runtime outputs of the saved and reloaded model.

Budgets are generic (epoch-like fields 1, step/batch counts 2); ``OPTIONS`` holds the few
per-name choices that make a run cheaper or non-trivial, and is never needed for coverage.
"""

from __future__ import annotations

import pytest
import torch

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn
from modelopt_demo.models import SmallCNN

PM = mo.get_plugin_manager()
BACKENDS = [i.name for i in PM.components("backend")]
#: single-threaded runs, so that two loads of one model compute bit-identical outputs
DETERMINISTIC = {"onnxruntime": {"intra_op_num_threads": 1},
                 "openvino": {"inference_num_threads": 1}}
OPTIMIZERS = [i.name for i in PM.components("optimizer")]
#: per-name options: cheaper runs, or a run that really changes the model
OPTIONS: dict[str, dict] = {
    "compress.low_rank": {"energy": 0.9},                 # its default asks the user to choose
    "quantize.dynamic": {"keep_if_slower": False},       # really quantize (no timing no-op)
    "quantize.auto": {"measure_speed": False},
    "prune.structured": {"round_to": None},
    "prune.iterative": {"round_to": None, "rounds": 1},
    "prune.slimming": {"round_to": None},
}
WIDTH = 8


def budget(cls: type) -> dict:
    """Tiny training/calibration budgets found from the config's fields, plus ``OPTIONS``."""
    out: dict = {}
    for n, a in mo.config_fields(cls.Config).items():
        d = a.default
        if isinstance(d, bool) or not isinstance(d, int):
            continue
        if "epoch" in n and d > 1:
            out[n] = 1
        elif (n == "steps" or n.endswith("batches") or n in ("iterations", "rounds")) and d > 2:
            out[n] = 2
    out.update(OPTIONS.get(cls.name, {}))
    try:  # keep only what the config accepts (a field may forbid small values)
        mo.build_config(cls.Config, out, cls.name)
    except mo.ConfigError:
        out = dict(OPTIONS.get(cls.name, {}))
    return out


@pytest.fixture(scope="module")
def world(digits):
    """A SmallCNN with non-trivial BatchNorm statistics, and the data every need asks for."""
    torch.manual_seed(0)
    model = SmallCNN(width=WIDTH)
    model.train()
    with torch.no_grad():  # real running stats, so folding BatchNorm is not a no-op
        for x, _ in digits.train[:2]:
            model(x)
    model.eval()
    data = {"calibration_data": digits.calibration[:2], "train_data": digits.train[:2],
            "eval_fn": accuracy_fn(digits.test[:1])}
    onnx_art = mo.Session(model, (digits.example,), progress=False).export("onnx")
    return {"model": model, "data": data, "example": digits.example, "onnx": onnx_art,
            "x": digits.test[0][0][:8]}


def _session(world: dict, cls: type, fmt: str) -> mo.Session:
    """A session on the model (or on its ONNX export, made once) with what ``needs`` asks."""
    kw = {k: v for k, v in world["data"].items() if k in cls.needs}
    if fmt == "onnx":
        return mo.Session(world["onnx"], (world["example"],), progress=False, **kw)
    s = mo.Session(world["model"], (world["example"],), progress=False, **kw)
    if fmt != "torch":
        s.export(fmt)
    return s


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), f"{k} differs after reload"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_result_saves_and_reloads_bit_exactly(name, world, tmp_path):
    cls = PM.get("optimizer", name).cls
    ok, why = cls.availability()
    if not ok:
        pytest.skip(f"optimizer {name!r} unavailable here: {why}")
    fmt = cls.accepts[0] if "torch" not in cls.accepts else "torch"
    s = _session(world, cls, fmt)
    art = s.apply(name, **budget(cls))
    art.save(tmp_path / "a")
    x = world["x"]
    if art.format == "torch":
        back = mo.load_artifact(tmp_path / "a", model=SmallCNN(width=WIDTH))
        assert [(n, type(m).__name__) for n, m in back.model.named_modules()] == \
            [(n, type(m).__name__) for n, m in art.model.named_modules()]
        _assert_same_state(art.model, back.model)
        with s.runner("torch", art) as r1, s.runner("torch", back) as r2:
            y1, y2 = r1(x), r2(x)
        assert torch.equal(y1, y2), f"{name}: reloaded outputs differ " \
            f"(max abs {float((y1 - y2).abs().max()):.3g})"
    else:
        back = mo.load_artifact(tmp_path / "a")
        assert back.format == art.format
        if art.format == "onnx":
            assert back.model.SerializeToString(deterministic=True) == \
                art.model.SerializeToString(deterministic=True)
        else:  # the same files when saved again (any format)
            back.save(tmp_path / "b")
            assert {f: v["sha256"] for f, v in _manifest(tmp_path / "a")["files"].items()} == \
                {f: v["sha256"] for f, v in _manifest(tmp_path / "b")["files"].items()}
        backend = next(b for b in dict.fromkeys(("onnxruntime", *BACKENDS))
                       if art.format in PM.get("backend", b).cls.accepts
                       and PM.get("backend", b).cls.availability()[0])
        opts = DETERMINISTIC.get(backend, {})
        with s.runner(backend, art, **opts) as r1, s.runner(backend, back, **opts) as r2:
            y1, y2 = r1(x), r2(x)
        assert torch.equal(y1, y2), f"{name}: reloaded {art.format} outputs differ on {backend}"
    assert back.lineage[-2].component == name and back.lineage[-1].component == "load"
    assert back.lineage[-2].restore == art.lineage[-1].restore  # the record survives saving


def _manifest(path) -> dict:
    import json

    return json.loads((path / "manifest.json").read_text())
