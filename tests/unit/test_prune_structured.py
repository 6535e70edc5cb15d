"""prune.unstructured / prune.global / prune.structured / prune.slimming / prune.iterative."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

import modelopt_core as mo
from modelopt_demo.models import DepthwiseNet, ResNet18, SmallCNN, YoloStyle


def state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def outs(model, x):
    with torch.no_grad():
        o = model.eval()(x)
    return o if isinstance(o, tuple) else (o,)


def session(model, x, **kw):
    return mo.Session(model, (x,), progress=False, **kw)


@pytest.fixture(scope="module")
def digits_small():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 1, 8, 8, generator=g)
    ys = torch.randint(0, 10, (64,), generator=g)
    return [(xs[i:i + 16], ys[i:i + 16]) for i in range(0, 64, 16)]


@pytest.mark.parametrize("name", ["prune.unstructured", "prune.global"])
def test_magnitude_pruning_is_permanent_and_leaves_input_alone(name):
    torch.manual_seed(0)
    m = SmallCNN().eval()
    before = state_hash(m)
    a = session(m, torch.randn(2, 1, 8, 8)).apply(name, amount=0.4)
    assert state_hash(m) == before
    sd = a.model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in sd)
    for mod in a.model.modules():
        assert not mod._forward_pre_hooks and not mod._forward_hooks
    ws = [mod.weight for mod in a.model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert zeros == round(0.4 * total) or name == "prune.unstructured"
    assert abs(a.metadata["sparsity"] - 0.4) < 0.01
    assert set(a.metadata["layer_sparsity"]) == {n for n, mod in a.model.named_modules()
                                                 if isinstance(mod, (nn.Conv2d, nn.Linear))}


def test_global_pruning_is_uneven_across_layers():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    with torch.no_grad():
        m.features[0][0].weight.mul_(100)  # a layer of large weights keeps them
    a = session(m, torch.randn(2, 1, 8, 8)).apply("prune.global", amount=0.5)
    assert a.metadata["layer_sparsity"]["features.0.0"] == 0.0


@pytest.mark.parametrize("model_cls,shape", [
    (SmallCNN, (2, 1, 8, 8)), (ResNet18, (1, 3, 64, 64)), (YoloStyle, (1, 3, 64, 64)),
    (DepthwiseNet, (2, 3, 32, 32))])
def test_structured_removes_channels_and_keeps_outputs(model_cls, shape):
    torch.manual_seed(0)
    m = model_cls().eval()
    x = torch.randn(*shape)
    before = state_hash(m)
    a = session(m, x).apply("prune.structured", ratio=0.5)
    assert state_hash(m) == before
    ref, got = outs(m, x), outs(a.model, x)
    assert [o.shape for o in ref] == [o.shape for o in got]
    assert a.metadata["macs"] * 3 < a.metadata["macs_before"]
    assert a.metadata["params"] < a.metadata["params_before"] / 2.5
    heads = {"SmallCNN": ["classifier.3"], "ResNet18": ["fc"], "DepthwiseNet": ["head.2"],
             "YoloStyle": ["head8", "head16", "head32"]}[model_cls.__name__]
    for h in heads:
        assert a.model.get_submodule(h).weight.shape[0] == m.get_submodule(h).weight.shape[0]
    for mod in a.model.modules():
        if isinstance(mod, nn.Conv2d) and not any(mod is a.model.get_submodule(h)
                                                  for h in heads):
            assert mod.out_channels % 8 == 0


def test_structured_ignored_layers_and_importances(digits_small):
    torch.manual_seed(0)
    m = SmallCNN().eval()
    x = torch.randn(2, 1, 8, 8)
    s = session(m, x, train_data=digits_small)
    a = s.apply("prune.structured", ratio=0.5, ignored_layers=("features.0.0",))
    assert a.model.features[0][0].out_channels == 32
    with torch.no_grad():  # trained-looking BN scales (fresh ones are all 1: a tie)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.1, 1.0)
    for imp in ("l2", "bn_gamma", "taylor"):
        s = session(m, x, train_data=digits_small)
        b = s.apply("prune.structured", ratio=0.5, importance=imp, scope="global")
        assert outs(b.model, x)[0].shape == (2, 10)
        assert b.metadata["macs"] < b.metadata["macs_before"]


def test_structured_target_speedup_measures_latency():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    s = session(m, torch.randn(16, 1, 8, 8))
    a = s.apply("prune.structured", target_speedup=1.2, speedup_step=0.5, max_ratio=0.5,
                latency_iterations=2)
    assert a.metadata["measured_speedup"] > 0
    assert a.metadata["pruning_ratio"] == pytest.approx(0.5)
    assert any("target_speedup" in n for n in a.lineage[-1].notes)
    assert len(a.lineage) == 2


@pytest.mark.parametrize("model_cls,shape", [(SmallCNN, (2, 1, 8, 8)),
                                             (DepthwiseNet, (2, 3, 32, 32)),
                                             (YoloStyle, (1, 3, 64, 64))])
def test_pruned_model_saves_and_loads_into_original_class(tmp_path, model_cls, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    a = session(model_cls().eval(), x).apply("prune.structured", ratio=0.5)
    a.save(tmp_path / "a")
    b = mo.load_artifact(tmp_path / "a", model=model_cls())
    for p, q in zip(outs(a.model, x), outs(b.model, x)):
        torch.testing.assert_close(p, q)


def test_slimming_and_iterative_train_and_prune(digits_small):
    torch.manual_seed(0)
    m = SmallCNN().eval()
    before = state_hash(m)
    x = digits_small[0][0][:2]
    calls = []

    def ev(fn):
        calls.append(1)
        return 50.0

    s = session(m, x, train_data=digits_small, eval_fn=ev)
    a = s.apply("prune.slimming", ratio=0.5, epochs=1, sparsity=1e-3, finetune_epochs=1)
    assert a.metadata["macs"] < a.metadata["macs_before"]
    b = s.apply("prune.iterative", ratio=0.5, rounds=2, epochs_per_round=1, distill=True)
    assert len(b.metadata["iterative_history"]) == 2 and len(calls) == 2
    assert b.metadata["macs"] < b.metadata["macs_before"] / 2.5
    assert outs(b.model, x)[0].shape == (2, 10)
    assert state_hash(m) == before
    assert [st.component for st in b.lineage] == ["original", "prune.slimming",
                                                  "prune.iterative"]


def test_structured_target_speedup_on_onnxruntime():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    s = session(m, torch.randn(8, 1, 8, 8))
    a = s.apply("prune.structured", target_speedup=50.0, backend="onnxruntime",
                speedup_step=0.4, max_ratio=0.8, latency_iterations=3)
    assert a.metadata["speedup_backend"] == "onnxruntime"
    assert a.metadata["pruning_ratio"] == pytest.approx(0.8)  # 50x is out of reach: max_ratio
    assert any("not reached" in n for n in a.lineage[-1].notes)
    assert a.model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_iterative_round_that_prunes_nothing_is_warned():
    """After a 50% structured prune each round's 11% share rounds back to 16/32 channels
    with round_to=8: the round must say so instead of passing for pruning."""
    torch.manual_seed(0)
    train = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    s = mo.Session(SmallCNN(width=16).eval(), (torch.randn(1, 1, 8, 8),), train_data=train,
                   progress=False)
    s.apply("prune.structured", ratio=0.5)
    art = s.apply("prune.iterative", ratio=0.3, rounds=3, epochs_per_round=0)
    assert any("removed no channel" in n for n in art.lineage[-1].notes)


def test_output_layers_found_through_activations_and_passed_through_features():
    """A head that also returns its input feature maps (Ultralytics >= 8.4 returns them as
    'feats' beside the decoded boxes): the convs producing those maps keep their channels,
    found by walking back from each output through the activation and norm; before, only a
    layer whose own output tensor was returned counted, and pruning changed the maps' shapes
    (NumericalError on a trained YOLOv8n)."""
    import torch
    from torch import nn

    import modelopt_core as mo
    from modelopt_prune.common import output_layer_names

    class PassThrough(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                                      nn.SiLU())
            self.neck = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32),
                                      nn.SiLU())
            self.head = nn.Conv2d(32, 5, 1)

        def forward(self, x):
            feat = self.neck(self.stem(x))
            return self.head(feat).flatten(2).sigmoid(), {"feats": [feat]}

    torch.manual_seed(0)
    model = PassThrough().eval()
    for bn in (model.stem[1], model.neck[1]):
        bn.weight.data.uniform_(0.1, 1.0)
    x = torch.randn(2, 3, 16, 16)
    assert output_layer_names(model, (x,)) == ["head", "neck.0"]
    s = mo.Session(model, (x,), progress=False)
    art = s.apply("prune.structured", ratio=0.5)
    with s.runner("torch") as r:
        boxes, extra = r(x)
    assert boxes.shape == (2, 5, 256) and extra["feats"][0].shape == (2, 32, 16, 16)
    assert art.model.module.stem[0].out_channels < 16  # the rest was pruned
