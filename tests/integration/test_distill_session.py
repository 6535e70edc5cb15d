"""Distillation through the Session: recovery after pruning, teachers by name, detectors."""

from __future__ import annotations

import hashlib

import pytest
import torch

import modelopt_core as mo
from modelopt_core.training import TrainConfig, fit
from modelopt_demo.data import accuracy_fn, load_digits_data, predict_accuracy
from modelopt_demo.models import SmallCNN, YoloStyle
from modelopt_distill import register_teacher


def digest(module):
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode() + v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def digits():
    return load_digits_data(batch_size=64)


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    m = SmallCNN(width=8)
    fit(m, digits.train, config=TrainConfig(epochs=4, lr=3e-3))
    return m.eval()


def session(teacher, digits, **kw):
    return mo.Session(teacher, (digits.example,), train_data=digits.train,
                      eval_fn=accuracy_fn(digits.test), progress=False, **kw)


@pytest.fixture(scope="module")
def pruned(teacher, digits):
    s = session(teacher, digits)
    s.apply("prune.structured", ratio=0.5, round_to=None)
    return s


def test_logits_kd_recovers_pruned_model_and_touches_nothing(pruned, teacher, digits):
    s = pruned
    h_orig, h_pruned = digest(s.original.model), digest(s.current.model)
    acc_pruned = predict_accuracy(s.current.model.eval(), digits.test)
    n = len(s.history)
    art = s.apply("distill.logits", epochs=2, lr=3e-3, temperature=4.0, alpha=0.9)
    acc = predict_accuracy(art.model, digits.test)
    assert acc > acc_pruned + 10
    assert digest(s.original.model) == h_orig and digest(s.history[1].model) == h_pruned
    assert s.original.model is teacher
    assert len(s.history) == n + 1 and len(art.lineage) == len(s.history[-2].lineage) + 1
    step = art.lineage[-1]
    assert step.component == "distill.logits" and step.config["temperature"] == 4.0
    assert step.plugin == "distill"
    assert [h["epoch"] for h in art.metadata["train_history"]] == [1, 2]
    assert "metric" in art.metadata["train_history"][-1]
    assert art.model.features[0][0].out_channels == s.history[1].model.features[0][0].out_channels


def test_logits_kd_with_mixup_trains_and_records_it(teacher, digits):
    s = session(teacher, digits)
    s.apply("prune.structured", ratio=0.5, round_to=None)
    before = predict_accuracy(s.current.model.eval(), digits.test)
    art = s.apply("distill.logits", epochs=2, lr=3e-3, mixup=0.4, eval_each_epoch=False)
    assert predict_accuracy(art.model, digits.test) > before + 10
    assert art.lineage[-1].config["mixup"] == 0.4 and "mixup=0.4" in art.lineage[-1].notes[1]


def test_teacher_by_history_index_equals_original(teacher, digits):
    s = session(teacher, digits)
    s.apply("prune.structured", ratio=0.5, round_to=None)
    a = s.apply("distill.logits", epochs=1, teacher="original", eval_each_epoch=False, seed=1)
    s._history.pop()  # rerun the same step from the same start with the teacher named by index
    b = s.apply("distill.logits", epochs=1, teacher="history:0", eval_each_epoch=False, seed=1)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_features_distill_with_adapters_on_pruned_student(pruned, digits):
    s = pruned
    art = s.apply("distill.features", epochs=2, lr=3e-3, teacher="history:0", kd_weight=1.0,
                  weights=None, max_pairs=3)
    notes = " | ".join(art.lineage[-1].notes)
    assert "1x1 conv 4->8" in notes  # pruned student (4 ch) mapped onto the teacher (8 ch)
    assert predict_accuracy(art.model, digits.test) > 80
    assert not any("adapter" in k for k in art.model.state_dict())  # adapters are dropped


def test_self_ema_returns_a_deepcopied_ema_of_the_pruned_model(teacher, digits):
    s = session(teacher, digits)  # its own: the module's `pruned` session is shared
    src = s.apply("prune.structured", ratio=0.5, round_to=None)
    acc_src = predict_accuracy(src.model.eval(), digits.test)
    h = digest(src.model)
    art = s.apply("distill.self_ema", epochs=2, decay=0.9)
    assert digest(src.model) == h
    # a deepcopy keeps the pruned shapes; re-instantiating SmallCNN would not
    shapes = {k: v.shape for k, v in src.model.state_dict().items()}
    assert {k: v.shape for k, v in art.model.state_dict().items()} == shapes
    assert art.model is not src.model
    assert all(p.requires_grad for p in art.model.parameters())
    assert "EMA decay 0.9" in art.lineage[-1].notes[0]
    assert predict_accuracy(art.model, digits.test) > acc_src + 10  # it trained


class Interrupt(Exception):
    pass


class DiesAfterEpochs(list):
    """Training batches whose reader 'dies' when epoch k + 1 starts (after k checkpoints)."""

    def __init__(self, batches, k):
        super().__init__(batches)
        self.reads, self.limit = 0, k * len(batches)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.limit:
            raise Interrupt
        return super().__getitem__(i)


def test_self_ema_resume_restores_the_ema_teacher_bit_identically(pruned, digits, tmp_path):
    s = pruned
    n = len(s.history)
    kw = dict(epochs=3, decay=0.9, seed=2, eval_each_epoch=False)
    full = s.apply("distill.self_ema", **kw).model.state_dict()
    s._history.pop()
    ckpt = str(tmp_path / "ema")
    s.train_data = DiesAfterEpochs(digits.train, 1)
    with pytest.raises(Exception) as info:
        s.apply("distill.self_ema", checkpoint_dir=ckpt, **kw)
    assert isinstance(info.value, Interrupt) or isinstance(info.value.__cause__, Interrupt)
    assert len(s.history) == n
    s.train_data = digits.train
    art = s.apply("distill.self_ema", checkpoint_dir=ckpt, resume=True, **kw)
    s._history.pop()
    assert "resumed after epoch 1" in " ".join(art.lineage[-1].notes)
    got = art.model.state_dict()  # the returned model is the EMA: it must match exactly
    assert all(torch.equal(full[k], got[k]) for k in full)


def test_registered_teacher_and_yolo_features_with_several_outputs():
    torch.manual_seed(0)
    big, small = YoloStyle(width=16), YoloStyle(width=8)
    data = [(torch.randn(2, 3, 64, 64), None) for _ in range(2)]
    register_teacher("yolo-big", big)
    h_big, h_small = digest(big), digest(small)
    s = mo.Session(small, (data[0][0][:1],), train_data=data, progress=False)
    art = s.apply("distill.features", teacher="registered:yolo-big", epochs=1, max_pairs=4,
                  weights=(1.0, 1.0, 2.0, 2.0))
    notes = art.lineage[-1].notes
    pairs = [n for n in notes if n.startswith("pair ")]
    assert len(pairs) == 4
    assert {"head8", "head16", "head32"} <= {p.split()[1] for p in pairs}
    assert any("1x1 conv" in p for p in pairs)
    assert any("not class labels" in n for n in notes)
    assert digest(big) == h_big and digest(small) == h_small
    assert digest(art.model) != h_small
    outs = art.model(data[0][0])
    assert [tuple(o.shape) for o in outs] == [tuple(o.shape) for o in big(data[0][0])]


def test_spatial_adapter_pairs_layers_of_different_resolution():
    torch.manual_seed(0)
    t, st = YoloStyle(width=8), YoloStyle(width=8)
    data = [(torch.randn(2, 3, 64, 64), None)]
    register_teacher("yolo-t", t)
    s = mo.Session(st, (data[0][0][:1],), train_data=data, progress=False)
    art = s.apply("distill.features", teacher="registered:yolo-t", epochs=1,
                  pairs=(("d3", "d2"), ("head32", "head16")), eval_each_epoch=False)
    notes = " ".join(art.lineage[-1].notes)
    assert "1x1 conv 64->32, resize [4, 4]->[8, 8]" in notes
    assert "resize [2, 2]->[4, 4]" in notes


def test_onnx_artifact_can_teach(teacher, digits):
    pytest.importorskip("onnxruntime")
    s = session(teacher, digits)
    onnx_teacher = s.export("onnx")
    register_teacher("onnx-digits", onnx_teacher)
    torch.manual_seed(1)
    student = mo.Session(SmallCNN(width=4), (digits.example,), train_data=digits.train[:6],
                         progress=False)
    art = student.apply("distill.logits", teacher="registered:onnx-digits", epochs=1)
    assert art.metadata["train_history"][0]["steps"] == 6
