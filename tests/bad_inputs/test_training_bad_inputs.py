"""Bad input to the shared training loop: empty or malformed data, NaN loss, bad configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelopt_core as mo
from modelopt_core.training import TrainConfig, fit


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def batches(n=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("empty", [[], (), iter([])])
def test_empty_training_set_is_a_data_error(empty):
    with pytest.raises(mo.DataError, match="empty"):
        fit(model(), empty, config=TrainConfig(epochs=1))


def test_one_shot_iterator_for_several_epochs_is_refused():
    with pytest.raises(mo.DataError, match="one-shot"):
        fit(model(), iter(batches()), config=TrainConfig(epochs=2))


def test_item_that_is_not_a_pair_names_the_item():
    with pytest.raises(mo.DataError, match="item 0"):
        fit(model(), [torch.randn(8, 4)], config=TrainConfig(epochs=1))


def test_nan_loss_names_epoch_and_step_and_keeps_last_good_weights():
    m = model()
    data = batches(4)
    calls = {"n": 0}
    snap = {}

    def loss_fn(net, inputs, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(net(*inputs), y)
        if calls["n"] == 7:  # epoch 2, its 3rd step
            return loss * float("nan")
        return loss

    def remember(epoch, mod):
        snap[epoch] = {k: v.clone() for k, v in mod.state_dict().items()}

    with pytest.raises(mo.TrainingError, match=r"epoch 2, step 7") as ei:
        fit(m, data, config=TrainConfig(epochs=3, shuffle=False), loss_fn=loss_fn,
            on_epoch_end=remember)
    assert "restored" in str(ei.value)
    good = snap[0]  # the weights at the end of epoch 1 = start of epoch 2
    assert all(torch.equal(v, good[k]) for k, v in m.state_dict().items())
    assert all(torch.isfinite(v).all() for v in m.state_dict().values())


def test_non_scalar_loss_is_a_training_error():
    with pytest.raises(mo.TrainingError, match="scalar"):
        fit(model(), batches(1), config=TrainConfig(epochs=1),
            loss_fn=lambda net, x, y: net(*x))


def test_no_trainable_parameters():
    m = model().requires_grad_(False)
    with pytest.raises(mo.ConfigError, match="trainable"):
        fit(m, batches(1), config=TrainConfig(epochs=1))


@pytest.mark.parametrize("kw", [{"epochs": 0}, {"lr": -1.0}, {"optimizer": "lion"},
                                {"precision": "int8"}, {"grad_clip": 0.0}])
def test_bad_train_config_values(kw):
    with pytest.raises(mo.ConfigError):
        mo.build_config(TrainConfig, kw, "fit")


def test_one_shot_iterator_is_fine_for_a_single_epoch():
    res = fit(model(), iter(batches(3)), config=TrainConfig(epochs=1))
    assert res.steps == 3
