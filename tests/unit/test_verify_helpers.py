"""What every exporter's numerics check needs besides the rule (issue 25, move 7), public in
the core: ``mo.tile_batch``, ``mo.check_inputs_for``, ``mo.reference_outputs`` (in process,
or on a backend reached through the registry) and ``mo.max_errors``; and
``Format.runtime_source``, how a plugin reaches another format's in-memory model as a
runtime opens it without importing that plugin."""

from __future__ import annotations

import types
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import modelopt_core as mo

# ---- tile_batch ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows,batch", [(1, 2), (3, 2), (2, 5), (4, 4)])
def test_tile_batch_repeats_or_cuts_to_exactly_batch_rows(rows, batch):
    x = torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3)
    y = mo.tile_batch(x, batch)
    assert y.shape == (batch, 3) and y.is_contiguous()
    for i in range(batch):
        torch.testing.assert_close(y[i], x[i % rows])


def test_tile_batch_leaves_a_0_dim_tensor_as_it_is():
    x = torch.tensor(3.0)
    assert mo.tile_batch(x, 4) is x


# ---- max_errors ---------------------------------------------------------------------------

def test_max_errors_absolute_and_relative_to_the_reference_scale():
    ref = [np.array([1.0, -4.0]), np.array([[0.5]])]
    got = [np.array([1.1, -4.0]), np.array([[0.5]])]
    abs_err, rel_err = mo.max_errors(ref, got)
    assert abs_err == pytest.approx(0.1)
    assert rel_err == pytest.approx(0.1 / 4.0)


def test_max_errors_is_inf_on_a_shape_mismatch_or_one_sided_nan():
    assert mo.max_errors([np.zeros(3)], [np.zeros(4)]) == (np.inf, np.inf)
    assert mo.max_errors([np.zeros(3)], [np.array([0.0, np.nan, 0.0])]) == (np.inf, np.inf)
    same_nan = np.array([1.0, np.nan])
    assert mo.max_errors([same_nan], [same_nan.copy()]) == (0.0, 0.0)


# ---- check_inputs_for ---------------------------------------------------------------------

def _torch_artifact(model: nn.Module) -> mo.ModelArtifact:
    return mo.ModelArtifact("torch", model, (mo.TensorSpec("x", ("batch", 4)),))


def test_check_inputs_are_the_example_inputs_tiled_without_calibration_data():
    art = _torch_artifact(nn.Linear(4, 2))
    x = torch.randn(1, 4)
    ctx = mo.Context(example_inputs=(x,), original=art, show_progress=False)
    (got,) = mo.check_inputs_for(art, ctx)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got, x.repeat(2, 1))
    assert mo.check_inputs_for(art, ctx, batch=3)[0].shape == (3, 4)


def test_check_inputs_are_the_first_calibration_batch_targets_dropped():
    art = _torch_artifact(nn.Linear(4, 2))
    first = torch.randn(5, 4)
    data = [(first, torch.zeros(5, dtype=torch.long)), (torch.randn(5, 4), torch.zeros(5))]
    ctx = mo.Context(example_inputs=(torch.randn(1, 4),), calibration_data=data,
                     original=art, show_progress=False)
    (got,) = mo.check_inputs_for(art, ctx)
    assert got is first or torch.equal(got, first)


def test_a_one_shot_calibration_iterator_is_never_drawn_from():
    art = _torch_artifact(nn.Linear(4, 2))
    batches = iter([torch.randn(5, 4)])
    ctx = mo.Context(example_inputs=(torch.randn(1, 4),), calibration_data=batches,
                     original=art, show_progress=False)
    (got,) = mo.check_inputs_for(art, ctx, who="my exporter")
    assert got.shape == (2, 4)
    assert next(batches).shape == (5, 4)  # still there for the calibration
    assert any("my exporter: calibration_data is a one-shot iterator" in n for n in ctx.notes)


def test_a_torch_model_with_nan_weights_is_refused_up_front():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    art = _torch_artifact(model)
    ctx = mo.Context(example_inputs=(torch.randn(1, 4),), show_progress=False)
    with pytest.raises(mo.NumericalError, match=r"exp: the torch model itself produces "
                                                 r"NaN/Inf: layer '1' has NaN/Inf in its bias"):
        mo.check_inputs_for(art, ctx, who="exp")


# ---- reference_outputs --------------------------------------------------------------------

def test_reference_outputs_of_a_torch_model_run_in_process_on_a_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()
    x = torch.randn(2, 4)
    (ref,) = mo.reference_outputs(_torch_artifact(model), (x,))
    assert isinstance(ref, np.ndarray) and ref.dtype == np.float32
    np.testing.assert_allclose(ref, model[0](x).detach().numpy(), rtol=1e-6)  # eval: no dropout
    assert model.training  # the user's module untouched


def test_reference_outputs_in_the_artifacts_compute_dtype():
    model = nn.Linear(4, 3).to(torch.float16)
    art = mo.ModelArtifact("torch", model, (mo.TensorSpec("x", ("batch", 4)),),
                           props=mo.ArtifactProps(compute_dtype="float16"))
    x = torch.randn(2, 4)
    (ref,) = mo.reference_outputs(art, (x,))
    assert ref.dtype == np.float32
    np.testing.assert_allclose(ref, model(x.half()).float().detach().numpy())


def test_reference_outputs_of_a_model_that_is_not_callable_need_a_backend():
    art = mo.ModelArtifact("fake", b"\x00blob")
    with pytest.raises(mo.FormatError, match=r"name the backend"):
        mo.reference_outputs(art, (torch.ones(1, 2),))


class _DoublingRunner(mo.Runner):
    def _run(self, inputs):
        return [x * 2 for x in inputs]


class _FakeBackend(mo.Backend):
    """Runs 'fake' artifacts: doubles its input."""

    name = "fake-rt"
    accepts = ("fake",)
    loaded: ClassVar[list] = []

    def load(self, artifact, ctx):
        _FakeBackend.loaded.append(ctx)
        return _DoublingRunner(artifact)


def _registry_with_fake_backend() -> mo.PluginManager:
    mod = types.ModuleType("fake_rt_plugin")

    def register_backends(register):
        register(_FakeBackend)

    mod.register_backends = mo.hookimpl(register_backends)
    pm = mo.PluginManager(load_entry_points=False)
    pm.register_plugin(mod, name="fake_rt_plugin")
    return pm


def test_reference_outputs_on_a_backend_reached_through_the_registry():
    pm = _registry_with_fake_backend()
    art = mo.ModelArtifact("fake", b"\x00blob", (mo.TensorSpec("x", ("batch", 2)),))
    ctx = mo.Context(plugins=pm, show_progress=False)
    _FakeBackend.loaded.clear()
    (ref,) = mo.reference_outputs(art, (torch.tensor([[1.0, 2.0]]),), ctx, backend="fake-rt")
    assert isinstance(ref, np.ndarray)
    np.testing.assert_array_equal(ref, [[2.0, 4.0]])
    assert _FakeBackend.loaded == [ctx]  # the caller's context goes to the backend


def test_reference_outputs_refuse_a_backend_that_does_not_run_the_format():
    pm = _registry_with_fake_backend()
    art = mo.ModelArtifact("other", b"\x00blob")
    with pytest.raises(mo.FormatError, match=r"backend 'fake-rt' runs \['fake'\] artifacts"):
        mo.reference_outputs(art, (torch.ones(1, 2),), mo.Context(plugins=pm),
                             backend="fake-rt")


# ---- Format.runtime_source ----------------------------------------------------------------

def test_a_format_provides_no_runtime_source_by_default():
    class Blob(mo.Format):
        """Opaque blobs."""

        name = "blob"

    with pytest.raises(mo.FormatError, match=r"format 'blob' does not provide a runtime "
                                             r"source"):
        Blob().runtime_source(b"\x00")


def test_the_onnx_format_hands_its_model_over_through_the_registry():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    fmt = mo.get_plugin_manager().get("format", "onnx").cls()
    with fmt.runtime_source(proto) as src:
        assert src == proto.SerializeToString()
    assert onnx.load_from_string(src).graph.node[0].op_type == "Identity"


def test_the_onnx_plugins_old_names_are_the_core_functions():
    common = pytest.importorskip("modelopt_onnx.common")
    assert common.max_errors is mo.max_errors
    assert common.check_inputs_for is mo.check_inputs_for
    assert common.tile_batch is mo.tile_batch
