"""Accuracy that notices and recovers (issue 24, item 5): the accuracy gate without labels
(agreement with the float model on held-back calibration batches), and the Session trying an
optimizer's recoveries, cheapest first, when its result misses the budget.

The recovery loop is exercised twice: with a small optimizer of this file whose config sets
how much it damages the weights (so each recovery's outcome is known in advance), through the
real Session, gate and torch backend; and with the real ``openvino.quantize`` on
EfficientNet-Lite0's real weights in tests/integration/test_zoo_efficientnet.py."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from helpers import state_hash

import modelopt_core as mo
from modelopt_core.gate import Agreement


def _classifier(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10)).eval()


def _batches(n: int, rows: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 16, generator=g) for _ in range(n)]


class Noisy(mo.Optimizer):
    """Adds seeded Gaussian noise of relative size ``noise`` to every weight: a lossy step
    whose damage its config sets. Its recoveries lower the noise."""

    name = "test.noisy"

    @mo.config
    class Config:
        noise: float = mo.field(1.0)
        broken: bool = mo.field(False)

    def recoveries(self, budget):
        return [("a tenth of the noise, broken", {"noise": 0.1, "broken": True}),
                ("half the noise", {"noise": 0.5}),
                ("no noise", {"noise": 0.0}),
                ("never reached", {"noise": 0.0, "broken": True})]

    def apply(self, artifact, ctx):
        if self.config.broken:
            raise mo.NumericalError("test.noisy: broken on purpose")
        model = copy.deepcopy(artifact.model)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * p.std() * self.config.noise)
        return artifact.evolve(step=self.step(notes=[f"noise {self.config.noise}"]),
                               model=model)


def _pm() -> mo.PluginManager:
    pm = mo.PluginManager()
    mod = types.ModuleType("recovery_test_plugin")
    mod.register_optimizers = mo.hookimpl(lambda register: register(Noisy))
    pm.register_plugin(mod, name="recovery-test", distribution="tests", version="1")
    return pm


def test_agreement_is_top1_for_a_classifier_and_cosine_otherwise():
    model = _classifier()
    batches = [(b,) for b in _batches(3)]
    agree = Agreement(batches, lambda: model)
    assert agree(model) == 1.0 and agree.kind == "top-1 agreement" and agree.rows == 48
    other = _classifier(seed=5)
    with torch.no_grad():
        want = torch.cat([(other(b[0]).argmax(1) == model(b[0]).argmax(1)) for b in batches])
    assert agree(other) == pytest.approx(float(want.float().mean()))
    assert agree(other) < 0.6  # another random classifier mostly disagrees

    features = torch.nn.Sequential(torch.nn.Linear(16, 4)).eval()  # [N, 4]: still top-1
    assert Agreement(batches, lambda: features)(features) == 1.0
    embed = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Unflatten(1, (2, 4))).eval()
    cos = Agreement(batches, lambda: embed)
    assert cos(embed) == pytest.approx(1.0) and cos.kind == "cosine similarity"
    scaled = torch.nn.Sequential(copy.deepcopy(embed), torch.nn.Identity()).eval()
    with torch.no_grad():
        scaled[0][0].weight.mul_(3.0)
        scaled[0][0].bias.mul_(3.0)
    assert cos(scaled) == pytest.approx(1.0, abs=1e-5)  # cosine ignores the scale


def test_gate_without_labels_holds_back_calibration_and_recovers():
    model = _classifier()
    before = state_hash(model)
    calib = _batches(8)
    s = mo.Session(model, (calib[0][:1],), calibration_data=calib, max_accuracy_drop=0.05,
                   plugins=_pm(), progress=False)
    assert len(s.holdout_batches) == 2 and len(s.calibration_data) == 6
    art = s.apply("test.noisy")
    rec = art.metadata["accuracy_recovery"]
    assert rec["chosen"] == "no noise" and rec["budget_met"] is True
    tried = [t["recovery"] for t in rec["tried"]]
    assert tried == ["as configured", "a tenth of the noise, broken", "half the noise",
                     "no noise"]  # cheapest first, stopped at the first within the budget
    assert "NumericalError" in rec["tried"][1]["error"]
    assert rec["tried"][0]["drop"] > 0.05 and rec["tried"][3]["drop"] == 0.0
    assert art.lineage[-1].config["noise"] == 0.0  # the lineage records what ran
    gate = art.metadata["accuracy_gate"]
    assert gate["met"] and gate["value"] == 1.0
    assert "top-1 agreement with the float model (32 held-back calibration rows)" in \
        gate["metric"]
    assert any("chose 'no noise'" in n for n in art.lineage[-1].notes)
    assert len(s.history) == 2  # the misses are not kept
    assert state_hash(model) == before


def test_no_recovery_meets_the_budget_raises_naming_what_was_tried():
    class Stubborn(Noisy):
        name = "test.stubborn"

        def recoveries(self, budget):
            return [("still noisy", {"noise": 0.9})]

    pm = _pm()
    mod = types.ModuleType("stubborn_plugin")
    mod.register_optimizers = mo.hookimpl(lambda register: register(Stubborn))
    pm.register_plugin(mod, name="stubborn", distribution="tests", version="1")
    calib = _batches(4)
    s = mo.Session(_classifier(), (calib[0][:1],), calibration_data=calib,
                   max_accuracy_drop=0.01, plugins=pm, progress=False)
    with pytest.raises(mo.AccuracyBudgetError, match=r"Recoveries tried.*'still noisy'"):
        s.apply("test.stubborn")
    assert s.current.metadata["accuracy_gate"]["rejected"] is True
    assert s.current.metadata["accuracy_recovery"]["budget_met"] is False
    s.discard()
    off = mo.Session(_classifier(), (calib[0][:1],), calibration_data=calib,
                     max_accuracy_drop=0.01, plugins=pm, progress=False, recover=False)
    with pytest.raises(mo.AccuracyBudgetError):
        off.apply("test.noisy")
    assert "accuracy_recovery" not in off.current.metadata  # recover=False tries nothing


def test_gate_without_labels_needs_two_calibration_batches():
    calib = _batches(1)
    with pytest.raises(mo.DataError, match="at least 2 batches"):
        mo.Session(_classifier(), (calib[0][:1],), calibration_data=calib,
                   max_accuracy_drop=0.1)
    with pytest.raises(mo.DataError, match="or calibration_data"):
        mo.Session(_classifier(), (calib[0][:1],), max_accuracy_drop=0.1)
