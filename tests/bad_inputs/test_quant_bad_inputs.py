"""Bad inputs to the quantization components: clear typed errors, nothing lost."""

from __future__ import annotations

import pytest
import torch
from helpers import state_hash
from torch import nn

import modelopt_core as mo
from modelopt_demo.models import SmallCNN


def _model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(width=8).eval()


X = torch.randn(2, 1, 8, 8)


@pytest.mark.parametrize("name", ["quantize.static", "quantize.auto"])
def test_empty_calibration_data_is_a_data_error(name):
    m = _model()
    before = state_hash(m)
    s = mo.Session(m, (X,), calibration_data=[], progress=False)
    with pytest.raises(mo.DataError, match="empty"):
        s.apply(name)
    assert state_hash(m) == before and len(s.history) == 1


@pytest.mark.parametrize("value", [0.0, 3.5])
def test_constant_calibration_data_is_a_data_error_never_a_bad_scale(value):
    m = _model()
    before = state_hash(m)
    s = mo.Session(m, (X,), calibration_data=[torch.full((4, 1, 8, 8), value)] * 3,
                   progress=False)
    with pytest.raises(mo.DataError, match="constant"):
        s.apply("quantize.static")
    assert state_hash(m) == before and len(s.history) == 1


def test_degenerate_activation_range_names_the_layer():
    """Varied inputs, but a layer whose activations are all zero: no zero scale, an error."""
    m = _model()
    with torch.no_grad():
        m.features[0][1].weight.zero_()
        m.features[0][1].bias.fill_(-1.0)  # ReLU output is 0 everywhere
    s = mo.Session(m, (X,), calibration_data=[torch.randn(4, 1, 8, 8)], progress=False)
    with pytest.raises(mo.DataError, match="features_0_2|input of"):
        s.apply("quantize.static")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weight_names_the_layer(bad):
    m = _model()
    with torch.no_grad():
        m.features[1][0].weight[0, 0, 0, 0] = bad
    before = state_hash(m)
    for name in ("quantize.static", "quantize.bf16", "quantize.dynamic"):
        s = mo.Session(m, (X,), calibration_data=[torch.randn(4, 1, 8, 8)], progress=False)
        with pytest.raises(mo.NumericalError, match=r"features\.1\.0"):
            s.apply(name)
    assert state_hash(m) == before


def test_nan_activation_names_the_layer():
    m = _model()
    before = state_hash(m)
    calib = torch.randn(4, 1, 8, 8)
    # finite inputs that overflow inside the model (NaN inputs are a DataError up front)
    g = torch.Generator().manual_seed(0)
    calib[0] = 3e38 * torch.sign(torch.randn(1, 8, 8, generator=g))
    s = mo.Session(m, (X,), calibration_data=[calib], progress=False)
    with pytest.raises(mo.NumericalError, match=r"features_0_2.*features\.1\.0"):
        s.apply("quantize.static")
    assert state_hash(m) == before


class NothingToQuantize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).mean(dim=(2, 3))


@pytest.mark.parametrize("name", ["quantize.static", "quantize.dynamic", "quantize.auto"])
def test_nothing_to_quantize_is_an_explicit_noop_with_a_warning(name):
    s = mo.Session(NothingToQuantize(), (X,), calibration_data=[torch.randn(4, 1, 8, 8)],
                   progress=False)
    out = s.apply(name)
    assert len(out.lineage) == 2 and out.metadata["noop"] is True
    assert any("no-op" in n for n in out.lineage[-1].notes)
    assert torch.equal(out.model(X), NothingToQuantize()(X))


def test_qat_without_train_data_is_a_data_error():
    s = mo.Session(_model(), (X,), calibration_data=[torch.randn(4, 1, 8, 8)], progress=False)
    with pytest.raises(mo.DataError, match="train_data"):
        s.apply("quantize.qat")


@pytest.mark.parametrize("kw", [dict(observer="kl"), dict(percentile=101.0),
                                dict(activation_dtype="int4"), dict(per_chanel=True)])
def test_bad_config_lists_valid_choices(kw):
    s = mo.Session(_model(), (X,), calibration_data=[torch.randn(4, 1, 8, 8)], progress=False)
    with pytest.raises(mo.ConfigError):
        s.apply("quantize.static", **kw)

