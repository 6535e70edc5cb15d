"""Checkpoint and resume of the shared training loop: safe formats, bit-identical resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from modelopt_core.training import TrainConfig, fit, load_checkpoint_weights


class Interrupt(Exception):
    pass


def data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(5)]


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 3))


@pytest.mark.parametrize("opt,precision,k", [("adam", "fp32", 2), ("sgd", "bf16", 1),
                                             ("adamw", "fp32", 3)])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, opt, precision, k):
    cfg = dict(epochs=4, optimizer=opt, precision=precision, seed=3, grad_clip=1.0,
               warmup_steps=2)
    full = model()
    fit(full, data(), config=TrainConfig(**cfg))

    def crash(epoch, m):
        if epoch == k:  # the process dies right after epoch k's checkpoint
            raise Interrupt

    ckpt = str(tmp_path / "ckpt")
    part = model()
    with pytest.raises(Interrupt):
        fit(part, data(), config=TrainConfig(checkpoint_dir=ckpt, **cfg), on_epoch_start=crash)
    resumed = model()  # a fresh process: fresh model, same seed
    res = fit(resumed, data(), config=TrainConfig(checkpoint_dir=ckpt, resume=True, **cfg))
    assert res.resumed_from == k
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_checkpoint_files_are_safetensors_and_json_only(tmp_path):
    ckpt = tmp_path / "c"
    fit(model(), data(), config=TrainConfig(epochs=1, checkpoint_dir=str(ckpt)))
    files = sorted(p.name for p in (ckpt / "last").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((ckpt / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 5
    for f in ("model.safetensors", "optimizer.safetensors"):
        assert not (ckpt / "last" / f).read_bytes().startswith(b"\x80")  # no pickle
    m = load_checkpoint_weights(ckpt, model())
    assert isinstance(m, nn.Module)
    assert not list(tmp_path.glob("c/.last.tmp-*"))


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    res = fit(model(), data(), config=TrainConfig(epochs=1, checkpoint_dir=str(tmp_path / "n"),
                                                  resume=True))
    assert res.resumed_from is None and res.steps == 5


def test_resume_with_changed_config_warns(tmp_path, caplog):
    ckpt = str(tmp_path / "c")
    fit(model(), data(), config=TrainConfig(epochs=1, checkpoint_dir=ckpt))
    with caplog.at_level(logging.WARNING, logger="modelopt.training"):
        fit(model(), data(), config=TrainConfig(epochs=2, lr=0.1, checkpoint_dir=ckpt,
                                                resume=True))
    assert "lr" in caplog.text


def test_extra_params_are_checkpointed(tmp_path):
    ckpt = str(tmp_path / "c")
    m = model()
    scale = nn.Parameter(torch.ones(()))

    def loss_fn(net, inputs, y):
        return nn.functional.cross_entropy(net(*inputs) * scale, y)

    fit(m, data(), config=TrainConfig(epochs=1, checkpoint_dir=ckpt), loss_fn=loss_fn,
        params=list(m.parameters()) + [scale])
    fresh = nn.Parameter(torch.ones(()))
    m2 = model()
    fit(m2, data(), config=TrainConfig(epochs=1, checkpoint_dir=ckpt, resume=True),
        loss_fn=loss_fn, params=list(m2.parameters()) + [fresh])
    assert torch.equal(fresh.detach(), scale.detach())


class StepCounter:
    """Training state outside the optimiser (like an EMA teacher): counts loss evaluations."""

    def __init__(self):
        self.count = torch.zeros((), dtype=torch.int64)

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, d):
        self.count.copy_(d["count"])


def test_extra_state_is_checkpointed_restored_and_rolled_back_on_nan(tmp_path):
    ckpt = str(tmp_path / "c")
    counter = StepCounter()

    def loss(m, inputs, y):
        counter.count += 1
        out = nn.functional.cross_entropy(m(*inputs), y)
        return out * float("nan") if int(counter.count) == 8 else out  # epoch 2, 3rd step

    from modelopt_core.errors import TrainingError
    with pytest.raises(TrainingError, match="epoch 2"):
        fit(model(), data(), config=TrainConfig(epochs=3, checkpoint_dir=ckpt), loss_fn=loss,
            extra_state=counter)
    assert int(counter.count) == 5  # rolled back to the start of epoch 2, with the weights
    resumed = StepCounter()
    fit(model(), data(), config=TrainConfig(epochs=2, checkpoint_dir=ckpt, resume=True),
        extra_state=resumed)
    assert int(resumed.count) == 5  # epoch 1's checkpoint carried it (the default loss ran)
    with pytest.raises(Exception, match="no extra training state"):
        fit(model(), data(), config=TrainConfig(epochs=1, checkpoint_dir=str(tmp_path / "d")))
        fit(model(), data(), config=TrainConfig(epochs=2, checkpoint_dir=str(tmp_path / "d"),
                                                resume=True), extra_state=StepCounter())
