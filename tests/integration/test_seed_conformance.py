"""Seed conformance (issue 15): tests per item of the spec that came out partial or broken
when exercised through the public API (items 1-8; test names start with their item).

TensorRT (item 2) is exercised with a fake ``tensorrt`` module (no GPU, no TensorRT on the test
machine): it records what the build asked for (flags, profile shapes, calibrator batches read
back from the buffers' memory, the calibration cache) and behaves like TensorRT where it
matters (a calibrator whose cache reads back is not asked for batches). A real engine test
runs only where an NVIDIA GPU and ``tensorrt`` are present.
"""

from __future__ import annotations

import copy
import ctypes
import importlib.util
import json
import sys
import types

import pytest
import torch
from torch import nn

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn
from modelopt_demo.models import SmallCNN


@pytest.fixture(scope="module")
def trained(digits):
    from modelopt_core.training import TrainConfig, fit

    torch.manual_seed(0)
    m = SmallCNN(width=8)
    fit(m, digits.train, config=TrainConfig(epochs=3, lr=3e-3),
        ctx=mo.Context(show_progress=False))
    return m.eval()


def test_item1_plugins_lists_the_device_limits(capsys):
    from modelopt_core.cli import main

    assert main(["plugins"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("devices: cpu")
    if not torch.cuda.is_available():
        assert "device='cuda' is unavailable here" in line


def test_item1_gpu_options_and_typed_errors_without_cuda():
    s = mo.Session(torch.nn.Linear(4, 2), (torch.randn(1, 4),), progress=False)
    if not torch.cuda.is_available():
        for backend in ("torch", "torch.compile"):
            with pytest.raises(mo.BackendUnavailableError, match="not compiled with CUDA"):
                s.runner(backend, device="cuda")
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with s.runner("torch", cudnn_benchmark=True, deterministic=True) as r:
        r(torch.randn(2, 4))
    # process-wide settings apply only while a call runs
    assert (torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled()) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_item1_gpu_options_take_effect_on_cuda():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.benchmark,
                         torch.are_deterministic_algorithms_enabled()))
            return x * 2

    s = mo.Session(Probe(), (torch.randn(1, 4),), progress=False)
    with s.runner("torch", device="cuda", cudnn_benchmark=True, deterministic=True,
                  autocast="float16") as r:
        assert r(torch.randn(2, 4)).dtype == torch.float32
    assert seen[-1] == (True, True)


def test_item3_onnxruntime_memory_options():
    s = mo.Session(torch.nn.Linear(4, 2), (torch.randn(1, 4),), progress=False)
    s.export("onnx")
    with s.runner("onnxruntime", enable_mem_pattern=False, enable_cpu_mem_arena=False) as r:
        so = r.session.get_session_options()
        assert (so.enable_mem_pattern, so.enable_cpu_mem_arena) == (False, False)
        r(torch.randn(3, 4))
    with s.runner("onnxruntime") as r:
        so = r.session.get_session_options()
        assert (so.enable_mem_pattern, so.enable_cpu_mem_arena) == (True, True)


def test_item4_throughput_min_time_and_latency_on_real_inputs(trained, digits):
    """The bar: throughput with min_time_s=2 runs >= 2 s and reports calls and seconds."""
    s = mo.Session(trained, (digits.example,), calibration_data=digits.calibration[:4],
                   progress=False)
    rep = s.compare(profilers=["latency", "throughput"], profiler_options={
        "throughput": {"min_time_s": 2.0}, "latency": {"inputs": "calibration",
                                                       "min_time_s": 0.2}})
    row = rep.rows[0]
    assert row["throughput_duration_s"] >= 2.0 and row["throughput_calls"] > 10
    assert row["latency_min_ms"] <= row["latency_p50_ms"] <= row["latency_max_ms"]


def test_item6_calibration_pairs_and_half_inputs(trained, digits):
    pairs = [(x, torch.zeros(len(x), dtype=torch.long)) for x in digits.calibration[:3]]
    s = mo.Session(trained, (digits.example,), calibration_data=pairs, progress=False)
    art = s.apply("quantize.static")
    assert sum("targets are dropped" in n for n in art.lineage[-1].notes) == 1
    s.export("onnx")
    s.apply("onnx.quantize_static")
    h = mo.Session(trained, (digits.example,), progress=False)
    h.apply("quantize.fp16")
    x = digits.test[0][0][:4]
    with h.runner("torch") as r:
        assert torch.equal(r(x.half()), r(x))  # half inputs as well as float32


def test_item8_accuracy_gate_rejects_keeps_and_warns(trained, digits):
    ev = accuracy_fn(digits.test)
    s = mo.Session(trained, (digits.example,), train_data=digits.train, eval_fn=ev,
                   max_accuracy_drop=3.0, progress=False)
    kept = s.apply("prune.unstructured", amount=0.1)
    assert kept.metadata["accuracy_gate"]["rejected"] is False
    with pytest.raises(mo.AccuracyBudgetError, match="prune.structured.*over "
                                                     "max_accuracy_drop=3"):
        s.apply("prune.structured", ratio=0.8)
    assert s.current.metadata["accuracy_gate"]["rejected"] is True  # kept for inspection
    assert any(n.startswith("REJECTED") for n in s.current.lineage[-1].notes)
    with pytest.raises(mo.AccuracyBudgetError, match="discard"):
        s.apply("prune.unstructured", amount=0.1)
    s.discard()
    assert s.current is kept
    w = mo.Session(trained, (digits.example,), eval_fn=ev, max_accuracy_drop=1.0,
                   on_budget="warn", progress=False)
    art = w.apply("prune.structured", ratio=0.8)
    assert any("over the budget" in n for n in art.lineage[-1].notes)
    with pytest.raises(mo.DataError, match="needs eval_fn"):
        mo.Session(trained, (digits.example,), max_accuracy_drop=1.0)
    with pytest.raises(mo.ConfigError, match="on_budget"):
        mo.Session(trained, (digits.example,), eval_fn=ev, max_accuracy_drop=1.0,
                   on_budget="ignore")


# ---- item 2: TensorRT, with a fake tensorrt module ----------------------------------------


def _fake_tensorrt(fast_fp16: bool = True, fast_int8: bool = True) -> types.ModuleType:
    """A stand-in for the parts of ``tensorrt`` (10.x) the exporter uses; ``trt.log`` records
    what the build asked for."""
    import onnx

    trt = types.ModuleType("tensorrt")
    log: dict = {"builds": []}
    trt.log = log

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            self.level = level

    class _Flag:
        def __init__(self, name):
            self.name = name

        def __repr__(self):
            return f"BuilderFlag.{self.name}"

    trt.BuilderFlag = types.SimpleNamespace(INT8=_Flag("INT8"), FP16=_Flag("FP16"))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse(self, data):
            g = onnx.load_from_string(data).graph
            inits = {i.name for i in g.initializer}
            for vi in g.input:
                if vi.name in inits:
                    continue
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                             for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(vi.name, dims))
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.profiles = [], []
            self.int8_calibrator, self.calibration_profile = None, None

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, flag):
            self.flags.append(flag.name)

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_calibration_profile(self, p):
            self.calibration_profile = p

    class Builder:
        platform_has_fast_fp16 = fast_fp16
        platform_has_fast_int8 = fast_int8

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec = {"flags": list(config.flags),
                   "profiles": [p.shapes for p in config.profiles], "batches": [],
                   "read_cache": None, "batch_size": None}
            calib = config.int8_calibrator
            if "INT8" in config.flags and calib is not None:
                cal_shapes = config.calibration_profile.shapes
                cached = calib.read_calibration_cache()
                rec["read_cache"] = cached
                if cached is None:  # like TensorRT: calibrate only without a cache
                    rec["batch_size"] = calib.get_batch_size()
                    names = [t.name for t in network.inputs]
                    while (ptrs := calib.get_batch(names)) is not None:
                        got = []
                        for name, ptr in zip(names, ptrs):
                            shape = cal_shapes[name][1]
                            n = 1
                            for d in shape:
                                n *= d
                            buf = (ctypes.c_float * n).from_address(ptr)
                            got.append(torch.frombuffer(bytearray(buf), dtype=torch.float32)
                                       .reshape(shape).clone())
                        rec["batches"].append(got)
                    calib.write_calibration_cache(
                        b"TRT-fake-EntropyCalibration2\n" + str(len(rec["batches"])).encode())
            log["builds"].append(rec)
            return json.dumps({"flags": rec["flags"]}).encode()

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt


class _PoolNet(nn.Module):
    """Conv -> ReLU -> global pool -> Linear: any height/width (a second symbolic dim)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a fake tensorrt; mark the components available; calibrate from CPU memory."""
    from modelopt_tensorrt import engine

    def install(**kw):
        trt = _fake_tensorrt(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    for cls in (engine.TrtExporter, engine.TrtBackend):
        monkeypatch.setattr(cls, "availability", classmethod(lambda c: (True, "")))
    monkeypatch.setattr(engine, "CALIBRATION_DEVICE", "cpu", raising=False)
    return install


def _calib_session(**kw):
    torch.manual_seed(0)
    calib = [torch.randn(4, 3, 16, 16) for _ in range(3)] + [torch.randn(2, 3, 16, 16)]
    s = mo.Session(_PoolNet().eval(), (torch.randn(1, 3, 16, 16),), calibration_data=calib,
                   dynamic_axes={"input": {2: "height", 3: "width"}}, progress=False, **kw)
    return s, calib


def test_item2_tensorrt_int8_calibration_fp16_profiles_and_cache(fake_trt, tmp_path):
    trt = fake_trt(fast_fp16=True)
    s, calib = _calib_session()
    onnx_art = s.export("onnx")
    art = s.export("tensorrt", int8=True, fp16=True, calibration_batches=8,
                   min_batch=1, opt_batch=4, max_batch=16,
                   profile_min={"height": 8, "width": 8},
                   profile_max={"height": 64, "width": 32})
    build = trt.log["builds"][-1]
    assert sorted(build["flags"]) == ["FP16", "INT8"]
    # one profile over every symbolic dim: batch from *_batch, height/width from the options
    # with opt defaulting to the example inputs' size (16)
    assert build["profiles"] == [{"input": ((1, 3, 8, 8), (4, 3, 16, 16), (16, 3, 64, 32))}]
    assert art.metadata["tensorrt"]["profile"]["input"] == {
        "min": [1, 3, 8, 8], "opt": [4, 3, 16, 16], "max": [16, 3, 64, 32]}
    # the calibrator fed exactly the session's calibration batches (read back from memory);
    # the ragged last batch (2 samples) is skipped and said so
    assert build["batch_size"] == 4 and len(build["batches"]) == 3
    for got, want in zip(build["batches"], calib):
        assert torch.equal(got[0], want)
    assert any("3 of 4 calibration batches" in n for n in art.lineage[-1].notes)
    assert art.metadata["tensorrt"]["int8"] == "calibrated"
    assert art.metadata["tensorrt"]["precisions"] == ["fp32", "fp16", "int8"]
    # the cache TensorRT wrote is in the artifact, saved as a listed, hashed file
    cache = b"TRT-fake-EntropyCalibration2\n3"
    assert isinstance(art.model, bytes) and art.model.calibration_cache == cache
    art.save(tmp_path / "engine")
    assert (tmp_path / "engine" / "calibration.cache").read_bytes() == cache
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.bin", "calibration.cache"}
    back = mo.load_artifact(tmp_path / "engine")
    assert back.format == "tensorrt" and back.model == art.model
    assert back.model.calibration_cache == cache

    # a second build reads the cache back and draws no batch: needs no calibration data
    s2 = mo.Session(onnx_art, (torch.randn(1, 3, 16, 16),), progress=False)
    for source in (str(tmp_path / "engine"), str(tmp_path / "engine" / "calibration.cache")):
        again = s2.export("tensorrt", int8=True, calibration_cache=source)
        rebuilt = trt.log["builds"][-1]
        assert rebuilt["read_cache"] == cache and rebuilt["batches"] == []
        assert "INT8" in rebuilt["flags"] and again.model.calibration_cache == cache
        s2.discard()
    from modelopt_tensorrt.engine import TrtExporter

    ctx = s.context()  # history: torch, onnx, tensorrt
    third = TrtExporter(int8=True, calibration_cache="history:2").export(onnx_art, ctx)
    assert trt.log["builds"][-1]["read_cache"] == cache and third.model.calibration_cache == cache
    # no calibration data and no cache: a typed error, nothing built
    with pytest.raises(mo.DataError, match="calibration_data"):
        s2.export("tensorrt", int8=True)


def test_item2_tensorrt_fp16_only_where_fast_and_profile_errors(fake_trt):
    trt = fake_trt(fast_fp16=False)
    s, _ = _calib_session()
    s.export("onnx")
    art = s.export("tensorrt", fp16=True)
    build = trt.log["builds"][-1]
    assert build["flags"] == [] and build["read_cache"] is None
    assert any("fp16=True ignored" in n and "platform_has_fast_fp16" in n
               for n in art.lineage[-1].notes)
    assert art.metadata["tensorrt"]["precisions"] == ["fp32"]
    # defaults: batch 1/8/32, other symbolic dims fixed at the example inputs' size
    assert build["profiles"] == [{"input": ((1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))}]
    assert art.model.calibration_cache is None
    s.discard()
    with pytest.raises(mo.ConfigError, match="not symbolic dims.*batch.*height"):
        s.export("tensorrt", profile_max={"depth": 4})
    with pytest.raises(mo.ConfigError, match="height.*min <= opt <= max"):
        s.export("tensorrt", profile_min={"height": 32})  # above the example's 16 (opt)
    assert [a.format for a in s.history] == ["torch", "onnx"]


def test_item2_tensorrt_runner_refuses_inputs_outside_the_profile():
    from modelopt_tensorrt.engine import check_profile

    p = {"min": [1, 3, 8, 8], "opt": [4, 3, 16, 16], "max": [16, 3, 64, 32]}
    check_profile(p, "input", (16, 3, 64, 8))
    with pytest.raises(mo.InputSpecError, match="dim 3 is 33.*profile \\[8, 32\\]"):
        check_profile(p, "input", (2, 3, 16, 33))


def _trt_here() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(not _trt_here(), reason="needs an NVIDIA GPU and tensorrt")
def test_item2_tensorrt_real_engines_match_torch(trained_cnn, digits, tmp_path):
    """FP32 / FP16 / INT8-calibrated engines against torch on real digits, and a rebuild from
    the saved calibration cache."""
    s = mo.Session(trained_cnn, (digits.example,), calibration_data=digits.calibration[:8],
                   progress=False)
    onnx_art = s.export("onnx")
    x = digits.test[0][0]
    ref = s.runner("torch", s.original)(x)
    fp32 = s.export("tensorrt", max_batch=64)
    torch.testing.assert_close(s.runner("tensorrt")(x).cpu(), ref, rtol=1e-2, atol=1e-2)
    s.discard()
    s.export("tensorrt", fp16=True, max_batch=64)
    torch.testing.assert_close(s.runner("tensorrt")(x).cpu(), ref, rtol=5e-2, atol=5e-2)
    s.discard()
    int8 = s.export("tensorrt", int8=True, max_batch=64)
    assert int8.model.calibration_cache and fp32.model.calibration_cache is None
    got = s.runner("tensorrt")(x).cpu()
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    int8.save(tmp_path / "int8")
    s2 = mo.Session(onnx_art, (digits.example,), progress=False)
    again = s2.export("tensorrt", int8=True, max_batch=64, calibration_cache=str(tmp_path / "int8"))
    assert again.model.calibration_cache == int8.model.calibration_cache
    got2 = s2.runner("tensorrt")(x).cpu()
    assert (got2.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


# ---- item 5: sparsity kept through training -------------------------------------------------


def _zeros(model) -> dict[str, int]:
    """Zero count per Conv/Linear weight (QAT wraps layers: ``x.layer.weight`` -> ``x.weight``)."""
    return {n.replace(".layer.weight", ".weight"): int((p == 0).sum())
            for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}


def _sizes(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters()
            if n.endswith("weight") and p.dim() > 1}


@pytest.fixture(scope="module")
def sparse_world(digits):
    torch.manual_seed(0)
    model = SmallCNN(width=8).eval()
    return model, digits


def _session(world):
    model, digits = world
    return mo.Session(model, (digits.example,), train_data=digits.train[:6],
                      calibration_data=digits.calibration[:2], progress=False)


@pytest.mark.parametrize("name, cfg", [
    ("distill.logits", {"epochs": 2, "lr": 1e-2}),
    ("distill.features", {"epochs": 1, "lr": 1e-2}),
    ("distill.self_ema", {"epochs": 1, "lr": 1e-2}),
    ("quantize.qat", {"epochs": 2, "lr": 1e-2}),
])
def test_item5_training_after_unstructured_pruning_keeps_every_zero(sparse_world, name, cfg):
    s = _session(sparse_world)
    pruned = s.apply("prune.unstructured", amount=0.3)
    before = _zeros(pruned.model)
    sizes = _sizes(pruned.model)
    assert before == {k: round(0.3 * n) for k, n in sizes.items()}
    trained = s.apply(name, **cfg)
    assert _zeros(trained.model) == before  # exactly the same zeros per layer
    changed = any(not torch.equal(a, b) for a, b in zip(pruned.model.state_dict().values(),
                                                         trained.model.state_dict().values()))
    assert changed or name == "quantize.qat"  # it really trained
    assert any("fixed through training" in n for n in trained.lineage[-1].notes)
    # the training step records the sparse tensors itself, so later training keeps them too
    assert trained.lineage[-1].restore["sparse_params"]


def test_item5_global_prune_then_two_distillations_keep_the_zeros(sparse_world):
    s = _session(sparse_world)
    pruned = s.apply("prune.global", amount=0.4)
    before = _zeros(pruned.model)
    assert sum(before.values()) == round(0.4 * sum(_sizes(pruned.model).values()))
    s.apply("distill.logits", epochs=1, lr=1e-2)
    s.apply("distill.self_ema", epochs=1, lr=1e-2, keep="student")
    assert _zeros(s.current.model) == before


def test_item5_iterative_unstructured_03_two_epochs_keeps_exactly_round_03n_zeros(sparse_world):
    """The bar: prune.iterative, unstructured at 0.3, then 2 fine-tune epochs."""
    s = _session(sparse_world)
    art = s.apply("prune.iterative", method="unstructured", ratio=0.3, rounds=1,
                  epochs_per_round=2, lr=1e-2)
    sizes = _sizes(art.model)
    assert _zeros(art.model) == {k: round(0.3 * n) for k, n in sizes.items()}
    assert not torch.equal(art.model.classifier[1].weight, s.original.model.classifier[1].weight
                           * (art.model.classifier[1].weight != 0))  # fine-tuning ran
    # gradual: two rounds reach the same exact count
    s2 = _session(sparse_world)
    two = s2.apply("prune.iterative", method="unstructured", ratio=0.3, rounds=2,
                   epochs_per_round=1, lr=1e-2)
    assert _zeros(two.model) == {k: round(0.3 * n) for k, n in sizes.items()}
    assert two.metadata["iterative_history"][0]["sparsity"] < 0.3
    # and a later distillation keeps them
    s2.apply("distill.logits", epochs=1, lr=1e-2)
    assert _zeros(s2.current.model) == _zeros(two.model)


def test_item5_structured_iterative_finetune_keeps_earlier_zeros(sparse_world, monkeypatch):
    """prune.unstructured, then structured prune.iterative: its fine-tune keeps the zeros of
    the channels that survive (counted just before and after the fine-tune)."""
    import modelopt_prune.iterative as it

    counts = []
    real = it.finetune

    def spy(model, *a, **kw):
        z0 = _zeros(model)
        res = real(model, *a, **kw)
        counts.append((z0, _zeros(model)))
        return res

    monkeypatch.setattr(it, "finetune", spy)
    s = _session(sparse_world)
    s.apply("prune.unstructured", amount=0.3)
    s.apply("prune.iterative", ratio=0.25, rounds=1, epochs_per_round=2, round_to=None, lr=1e-2)
    assert len(counts) == 1 and sum(counts[0][0].values()) > 0
    assert counts[0][0] == counts[0][1]


def test_item5_fit_masks_are_exact_under_adam_momentum_and_decay():
    from modelopt_core.training import TrainConfig, fit, zero_masks

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        m[0].weight[:, :3] = 0
    masks, missing = zero_masks(m, ["0.weight", "5.weight"])
    assert list(masks) == ["0.weight"] and missing == ["5.weight"]
    data = [(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(4)]
    fit(m, data, config=TrainConfig(epochs=3, lr=0.1, optimizer="adamw", weight_decay=0.1),
        ctx=mo.Context(show_progress=False), masks=masks)
    assert int((m[0].weight == 0).sum()) == 24 and bool((m[0].weight[:, 3:] != 0).all())
    with pytest.raises(mo.ConfigError, match="does not have"):
        fit(m, data, config=TrainConfig(epochs=1), ctx=mo.Context(show_progress=False),
            masks={"nope.weight": masks["0.weight"]})


# ---- item 7: MobileNetV2 inverted residual and MobileYOLO separable blocks ------------------

#: outputs are O(10); the blocks compute the separable approximation up to float rounding
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _separable_conv(cin, cout, stride=1, seed=0):
    """A conv whose weight is exactly separable (W[o, i] = P[o, i] D[i]) with a bias."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=True)
    d, p = torch.randn(cin, 1, 3, 3), torch.randn(cout, cin, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(p * d.permute(1, 0, 2, 3))
    return conv.eval()


@pytest.mark.parametrize("ratio", [4, 6])
def test_item7_inverted_residual_has_bn_relu6_and_matches_at_init(ratio):
    from modelopt_prune.depthwise import make_separable

    conv = _separable_conv(6, 10, stride=2)
    blk = make_separable(conv, "inverted_residual", expand_ratio=ratio, in_bound=8.0)
    kinds = [type(m).__name__ for m in blk.children()]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU6", "Conv2d", "BatchNorm2d", "ReLU6",
                     "Conv2d", "BatchNorm2d"]
    assert blk.expand.out_channels == ratio * 6 and blk.dw.groups == ratio * 6
    for bn in (blk.bn1, blk.bn2, blk.bn3):  # exactly the identity in eval
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        z = torch.randn(3, bn.num_features, 5, 5) * 100
        assert torch.equal(bn(z), z)
    x = torch.randn(2, 6, 9, 9).clamp(-8, 8)  # within the bound: ReLU6 acts as the identity
    with torch.no_grad():
        torch.testing.assert_close(blk(x), conv(x), **TOL)
        # beyond the bound ReLU6 saturates, as documented
        assert not torch.allclose(blk(x * 4), conv(x * 4), **TOL)
    with pytest.raises(mo.ConfigError, match="expand_ratio"):
        make_separable(conv, "inverted_residual", expand_ratio=2)


def test_item7_separable_bn_relu_block_matches_at_init():
    from modelopt_prune.depthwise import make_separable

    conv = _separable_conv(6, 10)
    blk = make_separable(conv, "separable", mid_bn_relu=True, in_bound=8.0)
    assert [type(m).__name__ for m in blk] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert blk[0].groups == 6 and blk[3].kernel_size == (1, 1)
    x = torch.randn(2, 6, 9, 9).clamp(-8, 8)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), conv(x), **TOL)


class _SeparableRef(nn.Module):
    """What a replaced conv computes at initialisation without any BN/ReLU: the separable
    approximation of W, or x + that of (W - I) for a residual block."""

    def __init__(self, conv, residual):
        from modelopt_prune.depthwise import make_separable

        super().__init__()
        delta = copy.deepcopy(conv)
        if residual:
            with torch.no_grad():
                c, k = conv.in_channels, conv.kernel_size
                delta.weight[torch.arange(c), torch.arange(c), k[0] // 2, k[1] // 2] -= 1
        self.sep, self.residual = make_separable(delta, "separable"), residual

    def forward(self, x):
        return x + self.sep(x) if self.residual else self.sep(x)


@pytest.mark.parametrize("cfg", [{"block": "inverted_residual", "expand_ratio": 6},
                                 {"block": "separable", "mid_bn_relu": True}])
def test_item7_arch_step_blocks_match_separable_init_and_reload(digits, tmp_path, cfg):
    from modelopt_prune.low_rank import set_module

    torch.manual_seed(0)
    model = SmallCNN(width=8).eval()
    s = mo.Session(model, (digits.example,), calibration_data=digits.calibration[:2],
                   progress=False)
    art = s.apply("arch.depthwise_separable", min_in_channels=1, **cfg)
    ref = copy.deepcopy(model)
    replaced = [n for n, m in model.named_modules()
                if isinstance(m, nn.Conv2d) and min(m.kernel_size) >= 3]
    blocks = art.lineage[-1].restore["inverted_residual"]
    assert sorted(blocks) == sorted(replaced) or cfg["block"] == "separable"
    for name in replaced:
        residual = blocks.get(name, {}).get("residual", False)
        set_module(ref, name, _SeparableRef(model.get_submodule(name), residual))
    x = digits.test[0][0][:64]
    with torch.no_grad():  # the added BN / ReLU(6) change nothing on real inputs at init
        torch.testing.assert_close(art.model(x), ref.eval()(x), **TOL)
    mods = {type(m).__name__ for m in art.model.modules()}
    assert {"BatchNorm2d", "ReLU6" if cfg["block"] == "inverted_residual" else "ReLU"} <= mods
    art.save(tmp_path / "a")
    back = mo.load_artifact(tmp_path / "a", model=SmallCNN(width=8))
    torch.testing.assert_close(s.runner("torch", back)(x), s.runner("torch", art)(x),
                               rtol=0, atol=0)
