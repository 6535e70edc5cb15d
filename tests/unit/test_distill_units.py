"""Unit tests of the distillation building blocks: KD loss, adapters, layer choice, EMA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import modelopt_core as mo
from modelopt_demo.models import SmallCNN, YoloStyle
from modelopt_distill import (EMA, FeatureAdapter, auto_layers, kd_loss, mix_inputs,
                              probe_layers)


def test_kd_loss_is_t2_scaled_kl_plus_weighted_ce():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    T, alpha = 3.0, 0.7
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    expected = alpha * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, t, y, T, alpha), expected, atol=1e-6)
    assert torch.allclose(kd_loss(s, t, y, T, 0.0), F.cross_entropy(s, y), atol=1e-6)
    assert torch.allclose(kd_loss(s, t, None, T, 0.5), kl, atol=1e-6)  # unlabelled: soft only


def test_kd_loss_gradient_flows_to_student_only():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2, 0]), 2.0, 0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kd_loss_dense_outputs_use_dim_1_as_classes():
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    y = torch.randint(0, 4, (2, 3, 3))
    assert kd_loss(s, t, y, 2.0, 0.5).dim() == 0


def test_mix_inputs_is_a_convex_mix_with_a_permutation_of_the_batch():
    x, ids = torch.randn(8, 3), torch.arange(8)
    torch.manual_seed(3)
    (mixed, other), lam, perm = mix_inputs((x, ids), 0.4)
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    assert other is ids  # integer inputs (ids, masks) are never blended
    torch.manual_seed(3)
    (again, _), lam2, perm2 = mix_inputs((x, ids), 0.4)  # the global RNG makes it reproducible
    assert lam2 == lam and torch.equal(perm2, perm) and torch.equal(again, mixed)


@pytest.mark.parametrize("s_shape,t_shape,kind", [
    ((2, 8, 4, 4), (2, 16, 4, 4), "1x1 conv 8->16"),
    ((2, 8, 4, 4), (2, 8, 8, 8), "resize [4, 4]->[8, 8]"),
    ((2, 8, 8, 8), (2, 4, 2, 2), "1x1 conv 8->4, resize [8, 8]->[2, 2]"),
    ((2, 10, 6), (2, 12, 9), "linear 6->9, resize [10]->[12]"),
    ((2, 6), (2, 3), "linear 6->3"),
    ((2, 6, 5, 5), (2, 6, 5, 5), "identity"),
])
def test_adapter_maps_student_onto_teacher_shape(s_shape, t_shape, kind):
    ad = FeatureAdapter(s_shape, t_shape, "s.layer", "t.layer")
    assert ad.kind == kind
    assert tuple(ad(torch.randn(*s_shape)).shape) == t_shape
    assert isinstance(ad.proj, nn.Conv2d) == ("1x1 conv" in kind)


def test_adapter_refuses_rank_mismatch_naming_both_layers():
    with pytest.raises(mo.ConfigError, match=r"'classifier'.*'features'"):
        FeatureAdapter((2, 10), (2, 64, 2, 2), "classifier", "features")


def test_probe_and_auto_layers_on_the_demo_cnn():
    layers, outs = probe_layers(SmallCNN(width=4), (torch.randn(2, 1, 8, 8),))
    names = [n for n, _ in layers]
    assert names.index("features.1") < names.index("features.4") < names.index("features")
    assert "features.0.2" not in names  # the inplace ReLU's tensor belongs to its block
    assert outs == {"classifier"}
    assert auto_layers(layers, outs, 3) == ["features.1", "features.4", "features"]


def test_auto_layers_on_a_detector_keep_the_heads_and_repeated_calls():
    m = YoloStyle(width=4)
    layers, outs = probe_layers(m, (torch.randn(1, 3, 64, 64),))
    names = [n for n, _ in layers]
    assert "up" in names and "up#1" in names  # one module called twice
    assert outs == {"head8", "head16", "head32"}
    pick = auto_layers(layers, outs, 5)
    assert len(pick) == 5 and {"head8", "head16", "head32"} <= set(pick)
    assert m.training  # probing restores the modes


def test_ema_is_a_deepcopy_and_averages():
    torch.manual_seed(0)
    m = SmallCNN(width=4)
    m.features[0][0] = nn.Conv2d(1, 3, 3, padding=1, bias=False)  # an edited architecture
    m.features[0][1] = nn.BatchNorm2d(3)
    m.features[1][0] = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    ema = EMA(m, decay=0.5)
    assert ema.module is not m and ema.module.features[0][0].out_channels == 3
    before = copy.deepcopy(ema.module.state_dict())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)  # warm-up decay: min(0.5, 1/10) = 0.1
    w_new = ema.module.state_dict()["classifier.1.weight"]
    expected = 0.1 * before["classifier.1.weight"] + 0.9 * m.state_dict()["classifier.1.weight"]
    assert torch.allclose(w_new, expected, atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_feature_pairs_skip_layers_that_run_only_in_eval_mode():
    """A detector's head decodes boxes only in eval mode (Ultralytics' DFL conv): automatic
    pairs used to pick that layer, which the student in training never runs (ConfigError on
    the first batch); pairs now come from layers that run in training, and naming an
    eval-only layer says so."""
    import torch
    from torch import nn

    import modelopt_core as mo

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1))
            self.decode = nn.Conv2d(8, 4, 1)  # eval-only post-processing

        def forward(self, x):
            f = self.body(x)
            return f if self.training else self.decode(f)

    torch.manual_seed(0)
    model = Head().eval()
    x = torch.randn(4, 3, 8, 8)
    data = [(x, torch.zeros(4))]

    def task_loss(out, targets):
        return out.pow(2).mean()

    s = mo.Session(model, (x,), train_data=data, task_loss=task_loss, progress=False)
    art = s.apply("distill.features", epochs=1, lr=1e-3)
    assert not any("decode" in n for n in art.lineage[-1].notes if n.startswith("pair"))
    with pytest.raises(mo.ConfigError, match="runs only in eval mode"):
        s.apply("distill.features", epochs=1, pairs=(("decode", "decode"),))
