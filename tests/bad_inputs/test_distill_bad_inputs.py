"""Bad input to the distillation optimizers: unmatched shapes, missing layers, empty data,
NaN losses, bad teacher names. Every failure leaves the session and the models untouched."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

import modelopt_core as mo
from modelopt_demo.models import SmallCNN
from modelopt_distill import register_teacher


def digest(module):
    return hashlib.sha256(b"".join(v.detach().numpy().tobytes()
                                   for v in module.state_dict().values())).hexdigest()


def data(n=3, classes=10):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, classes, (8,), generator=g))
            for _ in range(n)]


def session(model=None, train=None):
    torch.manual_seed(0)
    model = model or SmallCNN(width=4)
    return mo.Session(model, (torch.randn(1, 1, 8, 8),),
                      train_data=data() if train is None else train, progress=False)


def test_logit_shapes_that_cannot_match_name_the_outputs():
    register_teacher("five-classes", SmallCNN(num_classes=5, width=4))
    s = session()
    h = digest(s.original.model)
    # checked on the example inputs (batch 1) before any training batch is drawn
    with pytest.raises(mo.FormatError, match=r"teacher output 0 .*\(1, 5\).*student output 0 "
                                              r".*\(1, 10\)"):
        s.apply("distill.logits", teacher="registered:five-classes", epochs=1)
    assert len(s.history) == 1 and digest(s.original.model) == h


def test_feature_layers_of_different_rank_name_both_layers():
    s = session()
    with pytest.raises(mo.ConfigError, match=r"student layer 'classifier'.*teacher layer "
                                              r"'features'"):
        s.apply("distill.features", pairs=(("classifier", "features"),), epochs=1)


def test_unknown_feature_layer_lists_the_layers():
    s = session()
    with pytest.raises(mo.ConfigError, match=r"student layer 'featurs\.1'.*did you mean"):
        s.apply("distill.features", pairs=(("featurs.1", "features.1"),), epochs=1)


def test_one_weight_per_pair():
    s = session()
    with pytest.raises(mo.ConfigError, match="one weight per pair"):
        s.apply("distill.features", pairs=(("features.1", "features.1"),), weights=(1.0, 2.0))


@pytest.mark.parametrize("name", ["distill.logits", "distill.features", "distill.self_ema"])
def test_empty_training_set_is_a_data_error(name):
    s = session(train=[])
    with pytest.raises(mo.DataError, match="empty"):
        s.apply(name, epochs=1)
    assert len(s.history) == 1


def test_missing_training_data_is_a_data_error():
    s = mo.Session(SmallCNN(width=4), (torch.randn(1, 1, 8, 8),), progress=False)
    with pytest.raises(mo.DataError, match="train_data"):
        s.apply("distill.logits")


@pytest.mark.parametrize("name", ["distill.logits", "distill.self_ema"])
def test_nan_loss_stops_with_the_step_and_keeps_everything(name):
    bad = data(4)
    # finite but overflowing (NaN in the data itself is refused up front, as a DataError)
    bad[2] = (torch.full((8, 1, 8, 8), 3e38), bad[2][1])
    s = session(train=bad)
    h = digest(s.original.model)
    with pytest.raises(mo.TrainingError, match=r"epoch 1, step 3"):
        s.apply(name, epochs=2, shuffle=False)
    assert len(s.history) == 1 and digest(s.original.model) == h


@pytest.mark.parametrize("teacher,match", [("bogus", "use 'original'"),
                                           ("history:7", "history has 1"),
                                           ("history:x", "does not name"),
                                           ("registered:nobody", "no teacher registered")])
def test_bad_teacher_names(teacher, match):
    s = session()
    with pytest.raises(mo.ConfigError, match=match):
        s.apply("distill.logits", teacher=teacher, epochs=1)


@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"alpha": 1.5}, {"epochs": 0},
                                {"tempreature": 2.0}, {"teacher": 3}])
def test_bad_config_values(kw):
    with pytest.raises(mo.ConfigError):
        session().apply("distill.logits", **kw)


def test_features_refuse_a_teacher_that_is_not_torch():
    s = session()
    art = s.original.evolve(step=mo.Step("fake", "export"), format="onnx", model=b"x")
    register_teacher("not-torch", art)
    with pytest.raises(mo.FormatError, match="needs a torch teacher"):
        s.apply("distill.features", teacher="registered:not-torch", epochs=1)


def test_no_feature_layers_to_pair_automatically():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    s = session(model=mlp)
    with pytest.raises(mo.ConfigError, match="no feature layers"):
        s.apply("distill.features", epochs=1)
