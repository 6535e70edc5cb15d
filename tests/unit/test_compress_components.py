"""compress.weight_sharing, compress.low_rank and arch.depthwise_separable."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn

import modelopt_core as mo
from modelopt_demo.models import DepthwiseNet, SmallCNN, YoloStyle
from modelopt_prune.depthwise import make_separable
from modelopt_prune.low_rank import factorize
from modelopt_prune.weight_sharing import (SharedConv, SharedLinear, kmeans_1d, pack_indices,
                                           unpack_indices)


def state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def session(model, x, **kw):
    return mo.Session(model, (x,), progress=False, **kw)


@pytest.mark.parametrize("k", [2, 16, 17, 256])
def test_pack_unpack_roundtrip(k):
    labels = torch.randint(0, k, (1001,))
    packed = pack_indices(labels, k)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (501 if k <= 16 else 1001)
    assert torch.equal(unpack_indices(packed, 1001, k), labels)


def test_kmeans_recovers_clusters():
    centers = torch.tensor([-1.0, 0.0, 2.0])
    x = centers[torch.randint(0, 3, (3000,))] + 0.01 * torch.randn(3000)
    c, labels = kmeans_1d(x, 3)
    torch.testing.assert_close(c, centers, atol=0.01, rtol=0)
    assert float((c[labels] - x).abs().max()) < 0.06


def test_weight_sharing_is_smaller_on_disk_and_close(tmp_path):
    torch.manual_seed(0)
    m = SmallCNN().eval()
    x = torch.randn(4, 1, 8, 8)
    before = state_hash(m)
    s = session(m, x)
    a = s.apply("compress.weight_sharing", n_clusters=16)
    assert state_hash(m) == before
    shared = [mod for mod in a.model.modules() if isinstance(mod, (SharedConv, SharedLinear))]
    assert len(shared) == 6
    for mod in shared:
        assert mod.indices.dtype == torch.uint8 and len(torch.unique(mod.weight)) <= 16
    a.save(tmp_path / "ws")
    s.original.save(tmp_path / "fp32")
    size = os.path.getsize(tmp_path / "ws" / "weights.safetensors")
    assert size * 5 < os.path.getsize(tmp_path / "fp32" / "weights.safetensors")
    with torch.no_grad():
        ref, got = m(x), a.model(x)
    assert float((ref - got).norm() / ref.norm()) < 0.1


def test_weight_sharing_centroid_finetune_changes_only_codebooks():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(3)]
    s = session(m, data[0][0][:2], train_data=data)
    a = s.apply("compress.weight_sharing", n_clusters=8)
    b = session(m, data[0][0][:2], train_data=data).apply(
        "compress.weight_sharing", n_clusters=8, finetune_epochs=1, lr=1e-2)
    changed = [k for k, v in b.model.state_dict().items()
               if not torch.equal(v, a.model.state_dict()[k])]
    assert changed and all(k.endswith("codebook") or "running" in k or "num_batches" in k
                           for k in changed)


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1), dict(padding=2, dilation=2),
                                dict(groups=4, padding=1, bias=True),
                                dict(stride=(2, 1), padding=(0, 1), bias=True)])
def test_low_rank_conv_full_rank_is_exact(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, **kw)
    g = conv.groups
    full = min(12 // g, 8 // g * 9)
    x = torch.randn(2, 8, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(factorize(conv, full)(x), conv(x), atol=1e-4, rtol=1e-4)


def test_low_rank_linear_and_session_skips_layers_without_saving():
    torch.manual_seed(0)
    lin = nn.Linear(20, 30)
    x = torch.randn(3, 20)
    with torch.no_grad():
        torch.testing.assert_close(factorize(lin, 20)(x), lin(x), atol=1e-4, rtol=1e-4)
    m = SmallCNN().eval()
    s = session(m, torch.randn(2, 1, 8, 8))
    a = s.apply("compress.low_rank", param_reduction=0.5)
    assert a.metadata["params"] < sum(p.numel() for p in m.parameters())
    c = session(m, torch.randn(2, 1, 8, 8)).apply("compress.low_rank", rank=9)
    assert any("left alone" in n and "features.0.0" in n for n in c.lineage[-1].notes)
    assert isinstance(c.model.features[0][0], nn.Conv2d)  # 9 * (32 + 9) >= 32 * 9: no saving
    fac = a.model.get_submodule("classifier.1")
    assert isinstance(fac, nn.Sequential)
    assert sum(p.numel() for p in fac.parameters()) <= 0.5 * 512 * 64 + 64 + 1
    n0 = sum(p.numel() for p in m.parameters())
    for cfg in (dict(rank=2), dict(energy=0.5)):
        b = session(m, torch.randn(2, 1, 8, 8)).apply("compress.low_rank", **cfg)
        assert b.metadata["params"] < n0


def test_depthwise_separable_exact_on_separable_conv_and_reports_macs():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True)
    d, p = torch.randn(6, 1, 3, 3), torch.randn(10, 6, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(p * d.permute(1, 0, 2, 3))  # W[o,i] = P[o,i] * D[i]
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        for block in ("separable", "inverted_residual"):
            torch.testing.assert_close(make_separable(conv, block)(x), conv(x), atol=1e-4,
                                       rtol=1e-4)
        same = nn.Conv2d(6, 6, 3, padding=1)
        sep, inv = make_separable(same, "separable"), make_separable(same, "inverted_residual")
        assert inv.residual
        delta = nn.Conv2d(6, 6, 3, padding=1)  # the block's branch approximates W - I
        delta.weight.copy_(same.weight)
        delta.bias.copy_(same.bias)
        delta.weight[torch.arange(6), torch.arange(6), 1, 1] -= 1
        torch.testing.assert_close(inv(x), x + make_separable(delta, "separable")(x),
                                   atol=1e-4, rtol=1e-4)
        assert sep[0].groups == 6 and sep[1].kernel_size == (1, 1)
    m = YoloStyle().eval()
    a = session(m, torch.randn(1, 3, 64, 64)).apply("arch.depthwise_separable")
    assert a.metadata["macs"] < a.metadata["macs_before"] / 3
    assert any(n.startswith("MACs") for n in a.lineage[-1].notes)


def test_depthwise_separable_noop_on_depthwise_net():
    a = session(DepthwiseNet().eval(), torch.randn(1, 3, 32, 32)).apply(
        "arch.depthwise_separable")
    assert "no-op" in a.lineage[-1].notes[0] and len(a.lineage) == 2
