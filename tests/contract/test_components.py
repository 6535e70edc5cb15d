"""One contract for every registered component, discovered at collection time.

The rules and the tiny models and data they run on live in the public, shipped module
:mod:`modelopt_core.testing` (a third-party plugin runs the same checks:
``python -m modelopt_core.testing <plugin>``); this file parametrizes them over the registry.
Optimizers and exporters: they run with only the session data they declare in ``needs``,
never mutate their input, return a new artifact with exactly one more lineage step whose
config is the component's config as plain data, and the result runs. Backends: load the right
formats, match the torch original within tolerance, refuse other formats, keep the Runner
protocol, and are safe to share between threads. Profilers: return flat, finite metrics, each
declared in ``columns``, without touching the artifact. Formats: save what they list and load
it back. Commands: set up their parser and print their help. Every component's config
round-trips through JSON. Unavailable components (TensorRT on a CPU machine) skip with the
reason (``modelopt_core.testing.Unavailable`` is a ``unittest.SkipTest``).
"""

from __future__ import annotations

import pytest
import torch

import modelopt_core as mo
import modelopt_core.testing as mt

PM = mo.get_plugin_manager()
OPTIMIZERS = [i.name for i in PM.components("optimizer")]
EXPORTERS = [i.name for i in PM.components("exporter")]
BACKENDS = [i.name for i in PM.components("backend")]
PROFILERS = [i.name for i in PM.components("profiler")]
FORMATS = [i.name for i in PM.components("format")]
COMMANDS = [c.name for c in PM.commands()]
ALL = [(i.kind, i.name) for i in PM.components()]


def check(fn, *args, **kw) -> None:
    """Run a public check; a component unavailable here skips with the check's reason."""
    try:
        fn(*args, **kw)
    except mt.Unavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_contract(name):
    check(mt.check_optimizer, name, PM)


@pytest.mark.parametrize("name", EXPORTERS)
def test_exporter_contract(name):
    check(mt.check_exporter, name, PM)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_contract(name):
    check(mt.check_backend, name, PM)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_declares_its_stage(name):
    """Search composes recipes and decides what recovers from the declared stage (issue 25)."""
    check(mt.check_optimizer_stage, name, PM)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_traits_are_declared_consistently(name):
    """What serving, search and the gate read off a backend class (issue 25)."""
    check(mt.check_backend_traits, name, PM)


@pytest.mark.parametrize("name", PROFILERS)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_profiler_contract(name, backend):
    check(mt.check_profiler, name, PM, backends=[backend])


@pytest.mark.parametrize("name", FORMATS)
def test_format_contract(name):
    check(mt.check_format, name, PM)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_contract(name):
    check(mt.check_command, name, PM)


@pytest.mark.parametrize("kind, name", ALL, ids=[f"{k}:{n}" for k, n in ALL])
def test_config_round_trips_through_plain_data(kind, name):
    check(mt.check_config, name, PM, kind=kind)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_is_thread_safe(name):
    check(mt.check_backend_thread_safe, name, PM)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_runner_protocol(name):
    check(mt.check_backend_runner, name, PM)


# ---- the checks are not vacuous: deliberately broken components fail them ------------------

class _InPlace(mo.Optimizer):
    """Mutates its input and skips the lineage step."""

    name, stage = "bad.inplace", "structure"

    def apply(self, artifact, ctx):
        lin = next(m for m in artifact.model.modules() if isinstance(m, torch.nn.Linear))
        lin.weight.data.add_(1.0)
        return mo.ModelArtifact("torch", artifact.model, artifact.inputs,
                                lineage=artifact.lineage)


class _FlagFlip(mo.Optimizer):
    """Copies the model but flips the input's training flag."""

    name, stage = "bad.flag_flip", "structure"

    def apply(self, artifact, ctx):
        import copy

        artifact.model.train()
        return artifact.evolve(step=self.step(), model=copy.deepcopy(artifact.model).eval())


class _NoStep(mo.Optimizer):
    """A copy without a lineage step."""

    name, stage = "bad.no_step", "structure"

    def apply(self, artifact, ctx):
        import copy

        return mo.ModelArtifact("torch", copy.deepcopy(artifact.model), artifact.inputs,
                                lineage=artifact.lineage)


class _Undeclared(mo.Profiler):
    """Returns a metric it does not declare."""

    name = "bad.undeclared"

    def profile(self, runner, artifact, ctx):
        return {"widgets": 1.0}


class _WrongRunner(mo.Runner):
    def _run(self, inputs):
        return [torch.zeros(inputs[0].shape[0], 10)]


class _Wrong(mo.Backend):
    """Answers zeros."""

    name = "bad.zeros"

    def load(self, artifact, ctx):
        return _WrongRunner(artifact)


@pytest.mark.parametrize("cls, rule", [
    (_InPlace, "never mutate the input"), (_FlagFlip, "never mutate the input"),
    (_NoStep, "exactly one more lineage step")])
def test_contract_checks_catch_violations(cls, rule):
    """In-place edits, flag flips and missing steps fail the public check, naming both the
    component and the rule; the check's own model is rebuilt afterwards."""
    with pytest.raises(AssertionError, match=rf"optimizer {cls.name!r}: .*{rule}"):
        mt.check_optimizer(cls, PM)
    mt.check_optimizer("quantize.dynamic", PM)  # the world it broke was dropped, not reused


def test_contract_checks_catch_broken_profilers_backends_and_configs():
    with pytest.raises(AssertionError, match=r"profiler 'bad.undeclared': declares every key"):
        mt.check_profiler(_Undeclared, PM, backends=["torch"])
    with pytest.raises(AssertionError, match=r"backend 'bad.zeros': matches the torch original"):
        mt.check_backend(_Wrong, PM)
    bad_stage = type("BadStage", (mo.Optimizer,), {"__doc__": "x", "name": "bad.stage",
                                                   "stage": "magic"})
    with pytest.raises(AssertionError, match=r"optimizer 'bad.stage': declares its stage"):
        mt.check_optimizer_stage(bad_stage, PM)
    nameless = type("Nameless", (mo.Profiler,), {"__doc__": None, "name": "bad.nameless"})
    with pytest.raises(AssertionError, match=r"has a name and a docstring"):
        mt.check_config(nameless, PM)


def test_unavailable_components_skip_with_the_reason():
    class Missing(mo.Backend):
        """Needs a module that is not installed."""

        name, requires = "bad.missing", ("definitely_not_a_module_xyz",)

    with pytest.raises(mt.Unavailable, match=r"backend 'bad.missing' unavailable here: "):
        mt.check_backend(Missing, PM)
