"""Quantized, reduced-precision and weight-shared torch artifacts save and reload into the
user's class: the loader replays each step's structure (torch.fx graph, quantizers, BN folding,
dtype, shared layers) without data, then loads the saved scales, codebooks and weights; the
reloaded model computes exactly the same."""

from __future__ import annotations

import pytest
import torch

import modelopt_core as mo
from modelopt_demo.models import MLP, ResNet18, SmallCNN

STEPS = [("quantize.static", {"observer": "percentile"}),
         ("quantize.static", {"per_channel": False, "fold_bn": False}),
         ("quantize.qat", {"epochs": 1, "learnable_scales": True}),
         ("quantize.auto", {"max_accuracy_drop": 0.0, "measure_speed": False}),
         ("quantize.bf16", {}),
         ("quantize.fp16", {"channels_last": False}),
         ("compress.weight_sharing", {"n_clusters": 16}),
         ("compress.weight_sharing", {"n_clusters": 4, "finetune_epochs": 1})]


@pytest.fixture(scope="module")
def world(digits):
    torch.manual_seed(0)
    return SmallCNN(width=8).eval(), digits.test[0][0], digits


def session(world):
    model, x, d = world
    return mo.Session(model, (x[:1],), calibration_data=[b for b, _ in d.train[:4]],
                      train_data=d.train[:4], progress=False)


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
@pytest.mark.parametrize("name,kw", STEPS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(STEPS)])
def test_quantized_artifact_reloads_bit_exactly(world, tmp_path, name, kw, pruned):
    s = session(world)
    if pruned:
        s.apply("prune.structured", ratio=0.5, round_to=None)
    art = s.apply(name, **kw)
    art.save(tmp_path / "a")
    back = mo.load_artifact(tmp_path / "a", model=SmallCNN(width=8))
    same = mo.load_artifact(tmp_path / "a", model=art.model)  # the edited module as skeleton
    x = world[1]
    with s.runner("torch", art) as r1, s.runner("torch", back) as r2, \
            s.runner("torch", same) as r3:
        torch.testing.assert_close(r2(x), r1(x), rtol=0, atol=0)
        torch.testing.assert_close(r3(x), r1(x), rtol=0, atol=0)
    assert back.lineage[-2].component == name and back.lineage[-1].component == "load"
    sa, sb = art.model.state_dict(), back.model.state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype for k in sa)


def test_reloaded_int8_artifact_exports_to_the_same_onnx_numbers(world, tmp_path):
    s = session(world)
    s.apply("quantize.static")
    ref = s.export("onnx")
    s.history[-2].save(tmp_path / "q")
    back = mo.load_artifact(tmp_path / "q", model=SmallCNN(width=8))
    s2 = mo.Session(back, (world[1][:1],), progress=False)  # continue from the loaded one
    again = s2.export("onnx")
    x = world[1]
    with s.runner("onnxruntime", ref) as a, s2.runner("onnxruntime", again) as b:
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_reloading_into_another_architecture_names_the_step(world, tmp_path):
    s = session(world)
    s.apply("quantize.static").save(tmp_path / "q")
    with pytest.raises(mo.ArtifactError, match=r"rebuild lineage step 'quantize.static' on MLP"):
        mo.load_artifact(tmp_path / "q", model=MLP(64, 32, 10, 2))
    with pytest.raises(mo.ArtifactError, match="do not fit"):  # traces, but other layers
        mo.load_artifact(tmp_path / "q", model=ResNet18(num_classes=10, in_ch=1))
