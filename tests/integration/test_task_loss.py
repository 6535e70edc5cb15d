"""``Session(task_loss=...)``: the task's own training loss reaches every training step.

A detector, a regressor or a multi-output model has no class-label target; the Session's
``task_loss(outputs, targets)`` replaces cross-entropy in pruning fine-tunes and is the task term
of feature distillation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelopt_core as mo


class TwoHeads(nn.Module):
    """Conv-BN trunk, two outputs (a box-like regression and a score map)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.a(h), self.b(h)


def _data(n: int = 4):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 1, 8, 8, generator=g) for _ in range(n)]
    return [(x, x.mean(dim=(1, 2, 3))) for x in xs]  # float target: one number per image


def _loss(calls):
    def task_loss(outputs, targets):
        calls.append((type(outputs).__name__, tuple(targets.shape)))
        a, b = outputs
        return (a.mean(dim=(1, 2, 3)) - targets).pow(2).mean() + 0.0 * b.sum()
    return task_loss


def test_task_loss_drives_pruning_finetune_and_feature_kd():
    torch.manual_seed(0)
    model = TwoHeads().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls: list = []
    s = mo.Session(model, (torch.randn(1, 1, 8, 8),), train_data=_data(), task_loss=_loss(calls),
                   progress=False)
    s.apply("prune.slimming", ratio=0.25, epochs=1, sparsity=1e-4, finetune_epochs=1)
    n_slim = len(calls)
    assert n_slim >= 8 and calls[0] == ("tuple", (8,))  # all outputs and the raw targets
    s.apply("distill.features", epochs=1, lr=1e-3)
    assert len(calls) >= n_slim + 4
    # without task_loss, float targets are not class labels: feature KD warns and skips the term
    s2 = mo.Session(model, (torch.randn(1, 1, 8, 8),), train_data=_data(), progress=False)
    s2.apply("distill.features", epochs=1, lr=1e-3)
    assert any("not class labels" in n for n in s2.current.lineage[-1].notes)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_task_loss_must_be_callable():
    with pytest.raises(mo.DataError, match="task_loss"):
        mo.Session(TwoHeads(), (torch.randn(1, 1, 8, 8),), task_loss="mse")
