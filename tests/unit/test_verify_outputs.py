"""The one output-verification rule every exporter uses (``mo.check_outputs``): an exact
conversion is never rejected for the float rounding its output's scale carries, a broken one
is, and the message names the output and the figure that failed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelopt_onnx.common import check_against

import modelopt_core as mo


def _detector_output(seed: int = 0) -> np.ndarray:
    """(1, 6, 400) like a YOLO head: 4 decoded box rows in 0..640 px, 2 class-score rows."""
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 640, (1, 4, 400))
    boxes[0, 0, :5] = [0.5, 1.0, 2.0, 3.0, 4.0]  # coordinates near the image edge
    scores = rng.uniform(0, 1, (1, 2, 400))
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def test_float_rounding_at_the_outputs_scale_passes():
    """0.01 px on every coordinate (what an exact FP32 export of a detector carries) passed
    the old elementwise rule only for coordinates over ~10 px: near-0 ones failed."""
    ref = _detector_output()
    got = ref.copy()
    got[0, :4] += 0.01
    errs = mo.check_outputs("onnx", [ref], [got], rtol=1e-3, atol=1e-4)
    assert errs["max_abs_error"] == pytest.approx(0.01, rel=1e-3)
    assert not np.allclose(got, ref, rtol=1e-3, atol=1e-4)  # the rule it replaces failed


def test_a_broken_score_in_a_wide_output_fails_and_the_message_names_the_figure():
    ref = _detector_output()
    got = ref.copy()
    got[0, 5, 7] += 0.2  # one class score off by 0.2 (the boxes beside it reach 640)
    with pytest.raises(mo.ExportError) as ei:
        mo.check_outputs("onnx", [ref], [got], rtol=1e-3, atol=1e-4, names=["output0"],
                         runtime="ONNX model")
    msg = str(ei.value)
    assert "onnx: output 0 'output0' of the ONNX model differs" in msg
    assert "1 of 2400 values are outside it" in msg
    assert "off by 0.2" in msg and "x its allowance" in msg
    assert "largest magnitude" in msg


def test_quantized_rule_is_relative_to_the_largest_magnitude():
    ref = np.array([[10.0, 0.1]])
    got = np.array([[10.0, 0.6]])  # 0.5 off: 5% of the output's largest magnitude
    mo.check_outputs("tflite", [ref], [got], rtol=0.1, atol=0.0, scale_floor=1.0)
    with pytest.raises(mo.ExportError):
        mo.check_outputs("tflite", [ref], [got], rtol=0.01, atol=0.0, scale_floor=1.0)


def test_shape_count_and_nonfinite_failures_are_typed():
    ref = [np.ones((2, 3))]
    with pytest.raises(mo.ExportError, match=r"returns 2 output\(s\), the reference 1"):
        mo.check_outputs("x", ref, [np.ones((2, 3))] * 2, rtol=0, atol=0)
    with pytest.raises(mo.ExportError, match=r"output 0 of the converted model has shape "
                                             r"\(2, 4\) where the reference has \(2, 3\)"):
        mo.check_outputs("x", ref, [np.ones((2, 4))], rtol=0, atol=0)
    mo.check_outputs("x", ref, [np.ones(6)], rtol=0, atol=0)  # same data, flattened (Core ML)
    with pytest.raises(mo.ExportError, match="holds NaN/Inf"):
        mo.check_outputs("x", ref, [np.array([[1, 1, np.inf]] * 2)], rtol=0, atol=0)
    with pytest.raises(mo.NumericalError, match="source model itself produces NaN/Inf"):
        mo.check_outputs("x", [np.array([np.nan])], [np.array([np.nan])], rtol=0, atol=0)


def test_onnx_check_against_uses_the_rule():
    import torch
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6, 400])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 6, 400])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ref = _detector_output()
    exact = ref.copy()
    exact[0, :4] += 0.01
    check_against("onnx", [ref], proto, [torch.from_numpy(exact)], 1e-3, 1e-4)
    broken = ref.copy()
    broken[0, 4, 3] = 0.9 if broken[0, 4, 3] < 0.5 else 0.1
    with pytest.raises(mo.ExportError, match="output 0 of the ONNX model differs"):
        check_against("onnx", [ref], proto, [torch.from_numpy(broken)], 1e-3, 1e-4)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       scale=st.floats(1e-3, 1e4), seed=st.integers(0, 2**16))
def test_identical_outputs_always_pass_and_far_ones_always_fail(shape, scale, seed):
    rng = np.random.default_rng(seed)
    ref = (rng.standard_normal(shape) * scale).astype(np.float32)
    errs = mo.check_outputs("p", [ref], [ref.copy()], rtol=1e-3, atol=1e-4)
    assert errs["max_abs_error"] == 0.0
    far = ref.copy()
    k = int(rng.integers(ref.size))
    far.flat[k] += 1e-4 + 2e-3 * max(abs(float(ref.flat[k])), float(np.abs(ref).max())) + 1e-3
    with pytest.raises(mo.ExportError, match="outside it"):
        mo.check_outputs("p", [ref], [far], rtol=1e-3, atol=1e-4)
