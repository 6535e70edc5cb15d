"""Bad configs and degenerate models for the compression components."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelopt_core as mo
from modelopt_demo.models import SmallCNN

X = torch.randn(2, 1, 8, 8)


def session(model=None, **kw):
    return mo.Session(model if model is not None else SmallCNN().eval(), (X,), progress=False,
                      **kw)


@pytest.mark.parametrize("name,key", [("prune.unstructured", "amount"),
                                      ("prune.global", "amount"),
                                      ("prune.structured", "ratio"),
                                      ("prune.slimming", "ratio"),
                                      ("prune.iterative", "ratio")])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), True, "0.5", None])
def test_bad_amounts_are_config_errors(name, key, value):
    s = session(train_data=[(X, torch.tensor([0, 1]))])
    with pytest.raises(mo.ConfigError, match=key):
        s.apply(name, **{key: value})
    assert len(s.history) == 1


class OnlyActivations(nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2


@pytest.mark.parametrize("name", ["prune.unstructured", "prune.global", "prune.structured",
                                  "compress.weight_sharing", "arch.depthwise_separable"])
def test_no_prunable_layers_gives_an_explicit_noop_step(name, caplog):
    s = session(OnlyActivations())
    a = s.apply(name)
    assert len(a.lineage) == 2 and a.lineage[-1].component == name
    assert any("no-op" in n for n in a.lineage[-1].notes)
    assert "no-op" in caplog.text
    assert torch.equal(a.model(X), s.original.model(X))


def test_low_rank_needs_exactly_one_rank_rule_and_noop_without_layers():
    with pytest.raises(mo.ConfigError, match="exactly one"):
        session().apply("compress.low_rank")
    with pytest.raises(mo.ConfigError, match="exactly one"):
        session().apply("compress.low_rank", rank=2, energy=0.9)
    with pytest.raises(mo.ConfigError):
        session().apply("compress.low_rank", energy=1.5)
    a = session(OnlyActivations()).apply("compress.low_rank", rank=2)
    assert any("no-op" in n for n in a.lineage[-1].notes)


def test_unknown_ignored_layer_and_missing_data():
    with pytest.raises(mo.ConfigError, match="featurs.0.0"):
        session().apply("prune.structured", ignored_layers=("featurs.0.0",))
    with pytest.raises(mo.DataError, match="train_data"):
        session().apply("prune.structured", importance="taylor")
    with pytest.raises(mo.DataError, match="train_data"):
        session().apply("prune.slimming")
    with pytest.raises(mo.DataError, match="train_data"):
        session().apply("compress.weight_sharing", finetune_epochs=1)
    with pytest.raises(mo.ConfigError):
        session().apply("compress.weight_sharing", n_clusters=1)
    with pytest.raises(mo.ConfigError):
        session().apply("prune.structured", target_speedup=1.0)
    with pytest.raises(mo.ConfigError):
        session().apply("prune.structured", importance="random")
