"""Unit tests of the shared training loop (modelopt_core.training.fit)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from modelopt_core.training import TrainConfig, _lr_factor, fit


def make_data(n_batches=6, bs=16, d=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, classes, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(bs, d, generator=g)
        out.append((x, (x @ w).argmax(1)))
    return out


def make_model(seed=0, d=8, classes=3, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(),
                                                                          nn.Linear(16, classes)]
    return nn.Sequential(*layers)


def accuracy(data):
    def fn(m):
        with torch.no_grad():
            return 100.0 * sum(int((m(x).argmax(1) == y).sum()) for x, y in data) / sum(
                len(y) for _, y in data)
    return fn


def test_fit_trains_in_place_and_records_history():
    data = make_data()
    m = make_model()
    before = accuracy(data)(m)
    res = fit(m, data, config=TrainConfig(epochs=6, lr=1e-2), eval_fn=accuracy(data))
    assert res.model is m
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5, 6]
    assert res.steps == 36
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.best_metric == max(h["metric"] for h in res.history)
    assert res.best_metric > before
    assert not res.stopped


def test_steps_override_epochs_and_stop_exactly():
    res = fit(make_model(), make_data(n_batches=4), config=TrainConfig(epochs=50, steps=10))
    assert res.steps == 10
    assert len(res.history) == 3  # 4 + 4 + 2 steps


@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["cosine", "none", "step", "linear"])
def test_optimizers_and_schedules_reduce_loss(opt, schedule):
    data = make_data()
    cfg = TrainConfig(epochs=4, optimizer=opt, schedule=schedule, lr=5e-2 if opt == "sgd" else 1e-2,
                      shuffle=False)
    res = fit(make_model(), data, config=cfg)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_lr_schedule_shapes():
    cfg = TrainConfig(schedule="cosine", warmup_steps=10)
    assert _lr_factor(cfg, 0, 110) == pytest.approx(0.1)
    assert _lr_factor(cfg, 9, 110) == pytest.approx(1.0)
    assert _lr_factor(cfg, 10, 110) == pytest.approx(1.0)
    assert _lr_factor(cfg, 60, 110) == pytest.approx(0.5)
    step = TrainConfig(schedule="step", step_gamma=0.5)
    assert [_lr_factor(step, s, 90) for s in (0, 31, 61)] == [1.0, 0.5, 0.25]
    assert _lr_factor(TrainConfig(schedule="none"), 77, 100) == 1.0


def test_grad_clip_bounds_the_update():
    data = [(torch.randn(8, 8) * 100, torch.zeros(8, dtype=torch.long))]
    m = make_model()
    w0 = m[0].weight.detach().clone()
    fit(m, data, config=TrainConfig(epochs=1, optimizer="sgd", momentum=0.0, lr=1.0,
                                    grad_clip=1e-3, schedule="none"))
    # an SGD step with clipped grads moves the weights by at most lr * max_norm
    assert (m[0].weight - w0).norm() <= 1e-3 + 1e-6


def test_bf16_autocast_trains():
    data = make_data()
    res = fit(make_model(), data, config=TrainConfig(epochs=3, lr=1e-2, precision="bf16"))
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert make_model()[0].weight.dtype == torch.float32


def test_fp16_on_cpu_falls_back_to_bf16_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="modelopt.training"):
        fit(make_model(), make_data(n_batches=1), config=TrainConfig(epochs=1, precision="fp16"))
    assert "bf16" in caplog.text


def test_early_stopping_stops_and_restore_best():
    scores = iter([50.0, 60.0, 55.0, 54.0, 53.0, 52.0, 51.0, 50.0])
    res = fit(make_model(), make_data(n_batches=2),
              config=TrainConfig(epochs=8, early_stopping_patience=2, restore_best=True),
              eval_fn=lambda m: next(scores))
    assert res.stopped
    assert len(res.history) == 4
    assert res.best_metric == 60.0


def test_restore_best_puts_back_best_epoch_weights():
    snaps = []

    def eval_fn(m):
        snaps.append({k: v.clone() for k, v in m.state_dict().items()})
        return [1.0, 3.0, 2.0][len(snaps) - 1]

    m = make_model()
    fit(m, make_data(n_batches=2), config=TrainConfig(epochs=3, restore_best=True),
        eval_fn=eval_fn)
    assert all(torch.equal(v, snaps[1][k]) for k, v in m.state_dict().items())


def test_eval_mode_during_eval_and_module_modes_restored():
    m = make_model(bn=True)
    seen = []

    def freeze_bn(epoch, model):
        if epoch == 1:
            model[1].eval()  # e.g. QAT freezing BN statistics late

    fit(m, make_data(n_batches=2), config=TrainConfig(epochs=3), on_epoch_start=freeze_bn,
        eval_fn=lambda mod: seen.append(mod.training) or 0.0)
    assert seen == [False, False, False]
    assert m.training and not m[1].training  # the frozen BN stayed frozen


def test_epoch_hooks_and_extra_params_are_trained():
    calls = []
    m = make_model()
    scale = nn.Parameter(torch.ones(()))

    def loss_fn(model, inputs, y):
        return nn.functional.cross_entropy(model(*inputs) * scale, y)

    fit(m, make_data(n_batches=2), config=TrainConfig(epochs=2), loss_fn=loss_fn,
        params=list(m.parameters()) + [scale],
        on_epoch_start=lambda e, mod: calls.append(("start", e)),
        on_epoch_end=lambda e, mod: calls.append(("end", e)))
    assert calls == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert float(scale.detach()) != 1.0


def test_same_seed_same_weights_different_seed_differs():
    def run(seed):
        m = make_model()
        model = nn.Sequential(m[0], nn.Dropout(0.5), *m[1:])
        fit(model, make_data(), config=TrainConfig(epochs=2, seed=seed))
        return model.state_dict()

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dict_batches_and_multi_input_models():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x, z):
            return self.a(x) + self.b(z)

    data = [{"inputs": (torch.randn(8, 4), torch.randn(8, 4)),
             "targets": torch.randint(0, 3, (8,))} for _ in range(3)]
    res = fit(Two(), data, config=TrainConfig(epochs=2))
    assert res.steps == 6


def test_fit_without_config_uses_a_fresh_default():
    import inspect

    assert inspect.signature(fit).parameters["config"].default is None  # no shared instance
    res = fit(make_model(), make_data(n_batches=1))
    assert len(res.history) == TrainConfig().epochs
