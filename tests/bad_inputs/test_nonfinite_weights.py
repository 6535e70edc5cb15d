"""NaN/Inf weights (issue 10, item 7): a NumericalError naming the layer, in the compression
components and in the ONNX export numerics check (which used to pass NaN as "error 0")."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import state_hash
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from torch import nn

import modelopt_core as mo
from modelopt_demo.models import SmallCNN
from modelopt_onnx.common import check_against, max_errors

X = torch.randn(2, 1, 8, 8)


def _broken(bad: float = float("nan")) -> nn.Module:
    torch.manual_seed(0)
    m = SmallCNN(width=4).eval()
    with torch.no_grad():
        m.features[1][0].weight[0, 0, 1, 1] = bad
    return m


# ---- first_nonfinite ----------------------------------------------------------------------

def test_first_nonfinite_names_layer_and_tensor():
    m = SmallCNN(width=4)
    assert mo.first_nonfinite(m) is None
    with torch.no_grad():
        m.classifier[3].bias[1] = float("inf")
    assert mo.first_nonfinite(m) == ("classifier.3", "bias")
    m.features[0][1].running_var[0] = float("nan")  # a buffer: found after the parameters
    assert mo.first_nonfinite(m) == ("classifier.3", "bias")
    with torch.no_grad():
        m.classifier[3].bias.zero_()
    assert mo.first_nonfinite(m) == ("features.0.1", "running_var")


def test_first_nonfinite_on_the_root_module_and_integer_buffers():
    lin = nn.Linear(2, 2)
    lin.register_buffer("steps", torch.tensor([3]))
    assert mo.first_nonfinite(lin) is None
    with torch.no_grad():
        lin.weight[0, 0] = float("-inf")
    assert mo.first_nonfinite(lin) == ("", "weight")


# ---- compression components ----------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name,kw", [("prune.unstructured", {}), ("prune.global", {}),
                                     ("compress.low_rank", {"rank": 2}),
                                     ("compress.low_rank", {"energy": 0.9}),
                                     ("prune.structured", {}),
                                     ("arch.depthwise_separable", {}),
                                     ("compress.weight_sharing", {})])
def test_nonfinite_weight_names_the_layer(name, kw, bad):
    m = _broken(bad)
    before = state_hash(m)
    s = mo.Session(m, (X,), progress=False)
    with pytest.raises(mo.NumericalError, match=rf"{name}: layer 'features\.1\.0' has NaN/Inf "
                                                r"in its weight \(1 of \d+ values\)"):
        s.apply(name, **kw)
    assert len(s.history) == 1 and state_hash(m) == before


def test_nonfinite_weight_in_an_ignored_layer_is_still_refused():
    s = mo.Session(_broken(), (X,), progress=False)
    with pytest.raises(mo.NumericalError, match=r"features\.1\.0"):
        s.apply("prune.unstructured", ignored_layers=("features.1.0",))


# ---- the ONNX export numerics check ------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_export_of_a_nan_model_names_the_layer_instead_of_error_zero(bad):
    m = _broken(bad)
    s = mo.Session(m, (X,), progress=False)
    with pytest.raises(mo.NumericalError, match=r"torch model itself produces NaN/Inf: layer "
                                                r"'features\.1\.0' has NaN/Inf in its weight"):
        s.export("onnx")
    assert len(s.history) == 1


class _LogOf(nn.Module):
    """Finite weights, but NaN outputs for inputs below the shift."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return torch.log(self.lin(x) - 100.0)


def test_export_of_a_model_computing_nan_is_refused():
    s = mo.Session(_LogOf().eval(), (torch.randn(2, 4),), progress=False)
    with pytest.raises(mo.NumericalError, match=r"source model itself produces NaN/Inf"):
        s.export("onnx")
    assert len(s.history) == 1


def _identity_graph(n: int = 3) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_check_against_names_the_source_layer_when_given_a_torch_model():
    ref = [np.array([[1.0, np.nan, 2.0]], dtype=np.float32)]
    src = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with torch.no_grad():
        src[1].weight[0, 0] = float("nan")
    with pytest.raises(mo.NumericalError, match=r"where: .*output 0.*Layer '1' has NaN/Inf "
                                                r"in its weight"):
        check_against("where", ref, _identity_graph(), [torch.ones(1, 3)], 1e-3, 1e-4,
                      source=src)


def test_check_against_refuses_nan_in_the_onnx_output_only():
    x = torch.tensor([[1.0, float("nan"), 2.0]])
    ref = [np.array([[1.0, 5.0, 2.0]], dtype=np.float32)]
    with pytest.raises(mo.ExportError, match=r"output 0 of the ONNX model holds NaN/Inf "
                                             r"\(1 of 3 values\) where the reference is finite"):
        check_against("onnx", ref, _identity_graph(), [x], 1e-3, 1e-4)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 30), data=st.data(), side=st.sampled_from(["ref", "got"]),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_max_errors_never_reports_a_nonfinite_mismatch_as_small(n, data, side, bad):
    rng = np.random.default_rng(n)
    ref = rng.standard_normal(n).astype(np.float32)
    got = ref.copy()
    i = data.draw(st.integers(0, n - 1))
    (ref if side == "ref" else got)[i] = bad
    abs_err, rel_err = max_errors([ref], [got])
    assert abs_err == np.inf and rel_err == np.inf


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_max_errors_is_exact_on_finite_outputs(n, seed):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(n)
    got = ref + rng.uniform(-1e-3, 1e-3, n)
    abs_err, _ = max_errors([ref], [got])
    assert abs_err == pytest.approx(float(np.max(np.abs(ref - got))))
