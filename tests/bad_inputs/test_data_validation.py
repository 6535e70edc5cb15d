"""Calibration and training data are validated up front (issue 10, item 6): every malformed
batch is a DataError naming the field, the batch index and what to do; nothing is lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import state_hash
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modelopt_core as mo
from modelopt_core.artifact import TensorSpec
from modelopt_core.data import check_batch
from modelopt_core.training import TrainConfig, fit
from modelopt_demo.models import SmallCNN

X = torch.randn(2, 1, 8, 8)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(width=4).eval()


def _calib(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 1, 8, 8, generator=g) for _ in range(n)]


def _train(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))
            for _ in range(n)]


def _refused(s: mo.Session, model: nn.Module, before: str, match: str, name: str,
             **kw) -> str:
    with pytest.raises(mo.DataError, match=match) as ei:
        s.apply(name, **kw)
    assert len(s.history) == 1 and state_hash(model) == before
    return str(ei.value)


# ---- calibration_data ---------------------------------------------------------------------

@pytest.mark.parametrize("bad,match", [
    (torch.randn(4, 3, 8, 8), r"dim 1 is 3, expected 1"),        # wrong channels
    (torch.randn(1, 8, 8), r"rank 3 .* rank 4.*unsqueeze"),       # no batch dimension
    (torch.randn(4, 1, 8, 8, dtype=torch.float64), r"dtype float64 .* float32"),
    (torch.randn(4, 1, 8, 9), r"dim 3 is 9, expected 8"),
    ("not a tensor", r"expected a torch.Tensor, got str"),
    ((torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)), r"holds 2 input\(s\).*takes 1"),
])
@pytest.mark.parametrize("name", ["quantize.static", "quantize.auto"])
def test_malformed_calibration_batch_names_field_and_index(bad, match, name):
    m = _model()
    before = state_hash(m)
    data = _calib(2) + [bad]
    s = mo.Session(m, (X,), calibration_data=data, progress=False)
    msg = _refused(s, m, before, match, name)
    assert f"{name}: calibration_data batch 2" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_calibration_batch_names_batch_and_position(bad):
    m = _model()
    data = _calib(3)
    data[1] = data[1].clone()
    data[1][2, 0, 5, 6] = bad
    s = mo.Session(m, (X,), calibration_data=data, progress=False)
    msg = _refused(s, m, state_hash(m), r"calibration_data batch 1, input 'input' holds NaN/Inf",
                   "quantize.static")
    assert "(2, 0, 5, 6)" in msg and "nan_to_num" in msg


@pytest.mark.parametrize("data,match", [(5, "must be an iterable"),
                                        ("calib.npy", "must be an iterable"),
                                        ({"input": X}, "yields its keys"),
                                        (torch.randn(4, 1, 8, 8), "single samples")])
def test_unusable_calibration_container_is_a_data_error(data, match):
    m = _model()
    s = mo.Session(m, (X,), calibration_data=data, progress=False)
    msg = _refused(s, m, state_hash(m), match, "quantize.static")
    assert "calibration_data" in msg


def test_numpy_calibration_items_are_converted_with_a_note():
    m = _model()
    data = [t.numpy() for t in _calib(2)]
    s = mo.Session(m, (X,), calibration_data=data, progress=False)
    art = s.apply("quantize.static")
    notes = [n for n in art.lineage[-1].notes if "numpy" in n]
    assert len(notes) == 1 and "calibration_data" in notes[0]


def test_float64_numpy_calibration_items_say_how_to_cast():
    m = _model()
    data = [np.random.default_rng(0).standard_normal((4, 1, 8, 8))]  # float64, numpy's default
    s = mo.Session(m, (X,), calibration_data=data, progress=False)
    msg = _refused(s, m, state_hash(m), r"calibration_data batch 0", "quantize.static")
    assert "float64" in msg and "astype(numpy.float32)" in msg


# ---- the ONNX calibration path -----------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_session_art():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return mo.Session(m, (torch.randn(2, 6),), progress=False).export("onnx")


@pytest.mark.parametrize("value", [0.0, 2.5])
def test_constant_data_is_refused_on_the_onnx_path_like_the_torch_path(onnx_session_art, value):
    s = mo.Session(onnx_session_art, (torch.randn(2, 6),),
                   calibration_data=[torch.full((4, 6), value)] * 3, progress=False)
    with pytest.raises(mo.DataError, match=r"onnx.quantize_static: calibration_data is constant"):
        s.apply("onnx.quantize_static")
    assert len(s.history) == 1


@pytest.mark.parametrize("bad,match", [(torch.randn(4, 5), r"dim 1 is 5, expected 6"),
                                       (torch.full((4, 6), float("nan")), "NaN/Inf")])
def test_malformed_batch_on_the_onnx_path_names_the_batch(onnx_session_art, bad, match):
    s = mo.Session(onnx_session_art, (torch.randn(2, 6),),
                   calibration_data=[torch.randn(4, 6), bad], progress=False)
    with pytest.raises(mo.DataError, match=r"calibration_data batch 1") as ei:
        s.apply("onnx.quantize_static")
    assert len(s.history) == 1
    assert ei.match(match)


def test_export_never_draws_from_a_one_shot_calibration_iterator():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    batches = [torch.randn(4, 6) for _ in range(2)]
    drawn = []

    def gen():
        for b in batches:
            drawn.append(b)
            yield b

    s = mo.Session(m, (torch.randn(2, 6),), calibration_data=gen(), progress=False)
    art = s.export("onnx")
    assert drawn == []
    assert any("one-shot" in n and "example inputs" in n for n in art.lineage[-1].notes)
    s.apply("onnx.quantize_static", calibration_batches=2)
    assert len(drawn) == 2  # both batches were left for the calibration


def test_export_check_validates_the_calibration_batch_it_uses():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 3)).eval()
    s = mo.Session(m, (torch.randn(2, 6),), calibration_data=[torch.randn(4, 7)],
                   progress=False)
    with pytest.raises(mo.DataError, match=r"calibration_data batch 0.*dim 1 is 7, expected 6"):
        s.export("onnx")
    assert len(s.history) == 1


# ---- train_data ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad,match", [
    ((torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)), r"dim 1 is 3, expected 1"),
    ((torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long)), "NaN/Inf"),
    ((torch.randn(4, 1, 8, 8).double(), torch.zeros(4, dtype=torch.long)), "dtype float64"),
    (torch.randn(4, 1, 8, 8), r"not an \(inputs, targets\) pair"),
])
@pytest.mark.parametrize("name,kw", [("distill.logits", {"epochs": 1}),
                                     ("prune.iterative", {"rounds": 1})])
def test_malformed_train_batch_names_field_and_index(bad, match, name, kw):
    m = _model()
    data = _train(2) + [bad]
    s = mo.Session(m, (X,), train_data=data, progress=False)
    msg = _refused(s, m, state_hash(m), match, name, **kw)
    assert "train_data batch 2" in msg


def test_non_iterable_train_data_is_a_data_error():
    m = _model()
    s = mo.Session(m, (X,), train_data=42, progress=False)
    _refused(s, m, state_hash(m), r"train_data must be an iterable", "distill.logits", epochs=1)


def test_reused_train_generator_gets_the_one_shot_hint():
    m = _model()
    s = mo.Session(m, (X,), train_data=(b for b in _train(2)), progress=False)
    s.apply("distill.logits", epochs=1)
    with pytest.raises(mo.DataError, match="train_data is a one-shot iterator, already used up "
                                           "by an earlier step.*pass a list or a DataLoader"):
        s.apply("distill.logits", epochs=1)
    assert len(s.history) == 2


class _Loader:
    """A re-iterable, lazily produced dataset (like a DataLoader) that counts draws."""

    def __init__(self, batches):
        self.batches, self.drawn = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.drawn += 1
            yield b


def test_fit_checks_lazily_drawn_batches_and_restores_the_epoch_start_weights():
    m = _model().train()
    data = _train(4)
    data[2] = (data[2][0].clone(), data[2][1])
    data[2][0][0, 0, 0, 0] = float("inf")
    loader = _Loader(data)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    ctx = mo.Context(show_progress=False,
                     original=mo.ModelArtifact(format="torch", model=m,
                                               inputs=(TensorSpec("input", ("batch", 1, 8, 8)),)))
    with pytest.raises(mo.DataError, match=r"fit: train_data batch 2, input 'input' holds "
                                           r"NaN/Inf.*restored") as ei:
        fit(m, loader, config=TrainConfig(epochs=2), ctx=ctx)
    assert "epoch 1" in str(ei.value)
    assert all(torch.equal(v, start[k]) for k, v in m.state_dict().items())


def test_fit_checks_in_memory_data_before_any_step():
    m = _model().train()
    before = state_hash(m)
    data = _train(3) + [(np.zeros((4, 1, 8, 8), dtype=object), torch.zeros(4))]
    with pytest.raises(mo.DataError, match=r"fit: train_data batch 3.*dtype object"):
        fit(m, data, config=TrainConfig(epochs=1))
    assert state_hash(m) == before


def test_checked_train_lists_are_kept_unless_items_needed_converting():
    from modelopt_core.data import prepare_train_data

    specs = (TensorSpec("input", ("batch", 1, 8, 8)),)
    data = _train(2)
    assert prepare_train_data(data, specs, "t") is data  # lazy list subclasses keep working
    dicts = [{"inputs": x, "targets": y} for x, y in data]
    pairs = prepare_train_data(dicts, specs, "t")
    assert [(xs[0], y) for xs, y in pairs] == [(x, y) for x, y in data]


def test_fit_converts_numpy_train_items():
    m = _model().train()
    data = [(x.numpy(), y.numpy()) for x, y in _train(2)]
    res = fit(m, data, config=TrainConfig(epochs=1), ctx=mo.Context(show_progress=False))
    assert res.steps == 2


# ---- properties of the shared check ------------------------------------------------------

_dims = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))


@settings(max_examples=40, deadline=None)
@given(dims=_dims, seed=st.integers(0, 2**16))
def test_any_finite_batch_with_the_right_shape_passes(dims, seed):
    b, c, h, w = dims
    specs = (TensorSpec("x", ("batch", c, "height", w)),)
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)) * 1e30
    out = check_batch(x, specs, "calibration_data", 0, "t")
    assert len(out) == 1 and out[0] is x


@settings(max_examples=40, deadline=None)
@given(dims=_dims, n=st.integers(1, 4), data=st.data(),
       bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_one_nonfinite_value_anywhere_is_refused_with_its_batch_and_position(dims, n, data, bad):
    b, c, h, w = dims
    specs = (TensorSpec("x", ("batch", c, h, w)),)
    batches = [torch.randn(b, c, h, w) for _ in range(n)]
    k = data.draw(st.integers(0, n - 1), label="batch")
    pos = tuple(data.draw(st.integers(0, d - 1)) for d in (b, c, h, w))
    batches[k][pos] = bad
    ctx = mo.Context(calibration_data=batches,
                     original=mo.ModelArtifact(format="torch", model=None, inputs=specs))
    with pytest.raises(mo.DataError) as ei:
        ctx.calibration_batches("t")
    assert f"t: calibration_data batch {k}, input 'x' holds NaN/Inf" in str(ei.value)
    assert f"first at index {pos}" in str(ei.value)


@settings(max_examples=30, deadline=None)
@given(dims=_dims, dim=st.integers(1, 3), delta=st.integers(1, 3))
def test_any_wrong_fixed_dim_is_refused_and_named(dims, dim, delta):
    b, c, h, w = dims
    specs = (TensorSpec("x", ("batch", c, h, w)),)
    shape = [b, c, h, w]
    shape[dim] += delta
    with pytest.raises(mo.DataError, match=rf"train_data batch 7, input 'x'.*dim {dim} is "
                                           rf"{shape[dim]}, expected {(c, h, w)[dim - 1]}"):
        check_batch(torch.randn(*shape), specs, "train_data", 7, "t")


@pytest.mark.parametrize("name, options", [
    ("distill.logits", {"epochs": 1}),
    ("quantize.qat", {"epochs": 1, "calibration_batches": 2}),  # calibrates from train_data
])
def test_a_one_shot_train_generator_is_trained_on_whole(name, options):
    """Checks and calibration that look at the first batches must not eat them: every batch
    of a one-shot generator reaches the training loop."""
    m = _model()
    s = mo.Session(m, (X,), train_data=(b for b in _train(5)), progress=False)
    art = s.apply(name, **options)
    assert art.metadata["train_history"][0]["steps"] == 5
