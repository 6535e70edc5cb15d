"""Files a user brings to the no-code entry (``modelopt optimize --model m.onnx --calibration
calib.npz``): an ONNX classifier built by hand with ``onnx.helper`` (not exported by modelopt:
real initializers, a named batch dim ``N``, no torch involved), its calibration data and
labelled evaluation data written by numpy, a ``torch.export`` program, a model factory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the hand-built classifier's input: 3x8x8 images, any batch
INPUT, SHAPE, CLASSES = "pixels", (3, 8, 8), 10


def hand_built_onnx(path: Path, batch: int | str = "N", weights_as_inputs: bool = False) -> Path:
    """Conv 3x3 -> Relu -> Reshape -> MatMul -> Add: a 10-class classifier, opset 17.
    ``weights_as_inputs``: list the initializers as graph inputs too (old exporters did)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
              "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
              "w2": rng.standard_normal((8 * 8 * 8, CLASSES)).astype(np.float32) * 0.05,
              "b2": rng.standard_normal(CLASSES).astype(np.float32) * 0.1,
              "shape": np.array([-1, 8 * 8 * 8], dtype=np.int64)}
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    nodes = [helper.make_node("Conv", [INPUT, "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "w2"], ["m"]),
             helper.make_node("Add", ["m", "b2"], ["logits"])]
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *SHAPE])]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                 list(a.shape)) for n, a in arrays.items()]
    g = helper.make_graph(nodes, "hand_built", inputs,
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                         [batch, CLASSES])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="a user's hand")
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def samples(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def onnx_labels(model: Path, x: np.ndarray) -> np.ndarray:
    """The classes the model itself gives ``x`` (ONNX Runtime): labels it scores 100% on."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return s.run(None, {INPUT: x})[0].argmax(1).astype(np.int64)


FACTORY = '''
import torch


class Net(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.fc = torch.nn.Linear(width * 8 * 8, 10)

    def forward(self, pixels):
        return self.fc(torch.relu(self.conv(pixels)).flatten(1))


def build(width=8):
    torch.manual_seed(0)
    return Net(width).eval()
'''


def factory_module(folder: Path, name: str = "user_models") -> str:
    """A module ``name`` in ``folder`` with ``build(width)``; returns ``name:build``."""
    (folder / f"{name}.py").write_text(FACTORY)
    return f"{name}:build"


def exported_program(path: Path) -> Path:
    """A ``torch.export`` program of the factory's Net (width 4, dynamic batch)."""
    import torch

    ns: dict = {}
    exec(FACTORY, ns)  # noqa: S102 (the test's own source)
    m = ns["build"](4)
    ep = torch.export.export(m, (torch.randn(4, *SHAPE),),
                             dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(path))
    return path
