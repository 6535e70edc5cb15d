"""Backend ``torch.pipeline`` (issue 27 item 6): a ResNet-18-shaped model split into 2 stages
with torch.distributed.pipelining, one CPU process each in a gloo group, gives the unsplit
model's outputs; the model is untouched; bad configs are typed errors naming the field; the
stage processes are gone after ``close()``."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from helpers import state_hash

import modelopt_core as mo
from modelopt_demo.models import ResNet18

pytestmark = pytest.mark.skipif(
    not mo.get_plugin_manager().get("backend", "torch.pipeline").cls.availability()[0],
    reason="torch.distributed with gloo is not available here")

#: the done-when bound of issue 27
MAX_ABS_ERROR = 1e-5


def _stage_pids() -> set[int]:
    """Live stage processes of this test process (the module's runner's among them)."""
    return {p.pid for p in multiprocessing.active_children()
            if p.name.startswith("modelopt-stage")}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ResNet18(num_classes=10).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def session(model):
    return mo.Session(model, (torch.randn(1, 3, 32, 32),), progress=False)


@pytest.fixture(scope="module")
def runner(session):
    r = session.runner("torch.pipeline", stages=2, microbatches=2)
    yield r
    r.close()


def test_two_stage_split_equals_the_unsplit_model(model, session, runner):
    before = state_hash(model)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
    got = runner(x)
    err = (got - want).abs().max().item()
    print(f"torch.pipeline 2 stages, 2 microbatches, batch 4: max abs error {err:.3g}")
    assert got.shape == want.shape and err <= MAX_ABS_ERROR
    # another batch size (a new microbatch shape is traced again) and a second call
    x8 = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want8 = model(x8)
    assert (runner(x8) - want8).abs().max().item() <= MAX_ABS_ERROR
    assert (runner(x) - want).abs().max().item() <= MAX_ABS_ERROR
    # the artifact's model is untouched: weights, eval mode, no split wrapper on a forward
    assert state_hash(model) == before
    assert not any(m.training for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())
    assert len(runner.processes) == 2 and all(p.is_alive() for p in runner.processes)


def test_balanced_default_split_and_explicit_split_points(model, session):
    from modelopt_pipeline.backend import balanced_split

    assert balanced_split(model, 2) == ("layer4",)  # ~2.8M params before it, ~8.4M from it
    assert balanced_split(model, 3) == ("layer4", "avgpool")  # avgpool has no parameters
    x, before = torch.randn(2, 3, 32, 32), _stage_pids()
    with session.runner("torch.pipeline", split_points=("layer3",)) as r:
        assert r.split_points == ("layer3",)
        with torch.no_grad():
            assert (r(x) - model(x)).abs().max().item() <= MAX_ABS_ERROR
        procs = list(r.processes)
    assert not any(p.is_alive() for p in procs) and _stage_pids() <= before


@pytest.mark.parametrize("options, field", [
    ({"stages": 20}, "stages"),
    ({"split_points": ("layer9",)}, "split_points"),
    ({"split_points": ("layer2", "layer3")}, "split_points"),  # 3 stages' worth for 2
])
def test_bad_config_is_a_config_error_naming_the_field(session, options, field):
    before = _stage_pids()
    with pytest.raises(mo.ConfigError, match=f"'{field}'"):
        session.runner("torch.pipeline", **options)
    assert _stage_pids() <= before  # refused before any process started


def test_batch_not_divisible_by_microbatches_names_the_field(runner):
    with pytest.raises(mo.InputSpecError, match="'microbatches'"):
        runner(torch.randn(3, 3, 32, 32))
    assert runner(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # still usable


def test_a_split_point_that_runs_twice_is_refused_and_the_processes_stop(session):
    # layer1.0.relu runs twice in its block: pipeline() makes 3 stages of it, not 2
    before = _stage_pids()
    r = session.runner("torch.pipeline", split_points=("layer1.0.relu",))
    procs = list(r.processes)
    with pytest.raises(mo.ConfigError, match="'split_points'.*3 stages"):
        r(torch.randn(2, 3, 32, 32))
    with pytest.raises(mo.BackendUnavailableError, match="load a new runner"):
        r(torch.randn(2, 3, 32, 32))
    r.close()
    assert not any(p.is_alive() for p in procs) and _stage_pids() <= before


def test_close_stops_every_stage_process(runner):
    procs = list(runner.processes)
    runner.close()
    assert not any(p.is_alive() for p in procs) and not _stage_pids()
    with pytest.raises(mo.RunnerClosedError):
        runner(torch.randn(2, 3, 32, 32))
