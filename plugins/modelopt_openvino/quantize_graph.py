"""Graph analysis of an ``openvino.Model`` for ``openvino.quantize``: which ops carry the
learned weights (:data:`WEIGHTED`), the output tail after the last of them and the first and
last of them (the layers :class:`~.quantize.QuantizeConfig`'s ``float_tail`` / ``float_ends`` /
``float_last`` keep in float), and which ops ended up quantized (for the step's notes)."""

from __future__ import annotations

from typing import Any

#: OpenVINO ops that carry the model's learned weights: where the quantized body ends
WEIGHTED = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                      "GroupConvolutionBackpropData", "MatMul"})
#: ops a constant weight may pass through on its way to a weighted op (decompression, FQ)
_WEIGHT_PATH = frozenset({"Convert", "Reshape", "Multiply", "Subtract", "FakeQuantize",
                          "Unsqueeze", "Transpose"})


def _const_weight(op: Any, depth: int = 4) -> bool:
    """Whether input 1 of ``op`` comes from a Constant (through decompression ops)."""
    if op.get_input_size() < 2:
        return False
    src = op.input_value(1).get_node()
    for _ in range(depth):
        t = src.get_type_name()
        if t == "Constant":
            return True
        if t not in _WEIGHT_PATH:
            return False
        src = src.input_value(0).get_node()
    return False


def output_tail(model: Any) -> list[str]:
    """Friendly names of the ops of an ``openvino.Model`` from which no weighted op
    (:data:`WEIGHTED` with a constant weight) is reachable: the post-processing between the
    last layers and the outputs (a detector's box decoding, DFL, sigmoid and concat)."""
    ops = list(model.get_ordered_ops())
    feeds: dict[str, bool] = {}
    weighted = {o.get_friendly_name() for o in ops
                if o.get_type_name() in WEIGHTED and _const_weight(o)
                and not _after_softmax(o)}
    for op in reversed(ops):
        name = op.get_friendly_name()
        feeds[name] = any(t.get_node().get_friendly_name() in weighted
                          or feeds.get(t.get_node().get_friendly_name(), False)
                          for out in op.outputs() for t in out.get_target_inputs())
    def bias(op: Any) -> bool:  # a weighted op's bias Add belongs to it (NNCF fuses it)
        srcs = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        return op.get_type_name() == "Add" and any(
            x.get_friendly_name() in weighted for x in srcs) and any(
            x.get_type_name() == "Constant" for x in srcs)

    skip = {"Parameter", "Result", "Constant"}
    return [o.get_friendly_name() for o in ops
            if o.get_type_name() not in skip and o.get_friendly_name() not in weighted
            and not feeds[o.get_friendly_name()] and not bias(o)]


#: ops a tensor may pass through between a Softmax and the layer that reads it
_SHAPE_OPS = frozenset({"Reshape", "Transpose", "Convert", "Unsqueeze", "Squeeze",
                        "Concat"})


def _after_softmax(op: Any, depth: int = 4) -> bool:
    """Whether the data input of weighted ``op`` comes from a Softmax (through reshapes): a
    fixed projection of a distribution, part of the decoding (YOLOv8's DFL conv, whose
    weights are 0..15, turns the box-side softmax into pixel offsets), not a learned layer.
    INT8 there costs box precision (mAP@0.5:0.95), so it stays in the float tail."""
    src = op.input_value(0).get_node()
    for _ in range(depth):
        t = src.get_type_name()
        if t in ("Softmax", "SoftMax"):
            return True
        if t not in _SHAPE_OPS or src.get_input_size() == 0:
            return False
        src = src.input_value(0).get_node()
    return False


def weighted_ends(model: Any) -> list[str]:
    """Friendly names of the first and the last weighted op (:data:`WEIGHTED` with a constant
    weight) of an ``openvino.Model`` in topological order (one name when there is one)."""
    names = [o.get_friendly_name() for o in model.get_ordered_ops()
             if o.get_type_name() in WEIGHTED and _const_weight(o)]
    return list(dict.fromkeys(names[:1] + names[-1:]))


def _quantized_ops(model: Any) -> dict[str, int]:
    """{op type: count} of ops with a FakeQuantize (or a dequantized weight) on an input."""
    out: dict[str, int] = {}
    for op in model.get_ops():
        t = op.get_type_name()
        if t not in ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"):
            continue
        srcs = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        seen = set()
        for s in srcs:  # a FakeQuantize, possibly behind a Convert/Reshape/Transpose
            for _ in range(3):
                seen.add(s.get_type_name())
                if s.get_type_name() in ("FakeQuantize", "Constant", "Parameter") \
                        or s.get_input_size() == 0:
                    break
                s = s.input_value(0).get_node()
        if "FakeQuantize" in seen:
            out[t] = out.get(t, 0) + 1
    return out
