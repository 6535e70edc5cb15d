"""The public Runner protocol on the base class: ``runner(*x)`` is
``unflatten(run_flat(flat x))``; ``flatten`` / ``unflatten`` convert a structured output (dicts,
tuples, a legacy artifact without the io record) and back; ``run_many`` runs items of every
form ``runner(...)`` takes, in order. The per-backend check is the contract test
``tests/contract/test_components.py::test_backend_runner_protocol``."""

from __future__ import annotations

import attrs
import pytest
import torch

import modelopt_core as mo


class DictNet(torch.nn.Module):
    def forward(self, image, mask):
        return {"logits": image.sum(1) * mask.sum(1), "aux": (image * 2, mask + 1)}


class Doubler(mo.Runner):
    """A runner whose flat outputs are its inputs doubled (no runtime needed)."""

    def __init__(self, artifact):
        super().__init__(artifact)
        self.calls = 0

    def _run(self, inputs):
        self.calls += 1
        return [x * 2 for x in inputs]


@pytest.fixture
def dict_runner():
    ex = {"image": torch.randn(2, 3), "mask": torch.ones(2, 3)}
    s = mo.Session(DictNet(), ex, progress=False)
    with s.runner("torch") as r:
        yield r, ex


def test_stages_compose_to_the_call(dict_runner):
    r, ex = dict_runner
    want = r(**ex)
    flat = r.run_flat([ex["image"], ex["mask"]])
    assert len(flat) == 3 and all(isinstance(t, torch.Tensor) for t in flat)
    for a, b in zip(flat, r.flatten(want)):
        assert torch.equal(a, b)
    back = r.unflatten(flat)
    assert list(back) == ["logits", "aux"] and isinstance(back["aux"], tuple)
    assert torch.equal(back["aux"][1], want["aux"][1])


def test_run_many_takes_every_input_form_in_order(dict_runner):
    r, ex = dict_runner
    ex2 = {k: v + 1 for k, v in ex.items()}
    many = r.run_many([ex, (ex2["image"], ex2["mask"]), [ex["image"], ex["mask"]]])
    assert len(many) == 3
    for got, x in zip(many, (ex, ex2, ex)):
        torch.testing.assert_close(got, r(**x), rtol=0, atol=0)
    with pytest.raises(mo.InputSpecError):
        r.run_many([{"image": ex["image"]}])  # missing 'mask'


def test_legacy_tuple_artifact_unflattens_in_one_place():
    art = mo.Session(torch.nn.Identity(), (torch.zeros(1, 3),), progress=False).current
    legacy = attrs.evolve(art, io={}, metadata={**art.metadata, "output_kind": "tuple"})
    r = Doubler(legacy)
    x = torch.ones(1, 3)
    out = r(x)
    assert isinstance(out, tuple) and len(out) == 1 and torch.equal(out[0], x * 2)
    assert isinstance(r.unflatten([x]), tuple)
    assert [torch.equal(t, x * 2) for t in r.flatten(out)] == [True]
    assert [o[0].sum().item() for o in r.run_many([x, (x + 1,)])] == [6.0, 12.0]
    plain = Doubler(attrs.evolve(art, io={}))  # no record, no output_kind: a lone tensor
    assert torch.equal(plain(x), x * 2)


def test_run_many_default_is_sequential_and_checked():
    art = mo.Session(torch.nn.Identity(), (torch.zeros(1, 3),), progress=False).current
    r = Doubler(art)
    xs = [torch.full((1, 3), float(i)) for i in range(5)]
    assert [o[0, 0].item() for o in r.run_many(xs)] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert r.calls == 5
    with pytest.raises(mo.InputSpecError):
        r.run_many([torch.zeros(1, 4)])
    r.close()
    with pytest.raises(mo.RunnerClosedError):
        r.run_many(xs)


def test_flatten_refuses_a_non_tensor_output():
    art = mo.Session(torch.nn.Identity(), (torch.zeros(1, 3),), progress=False).current
    with pytest.raises(mo.FormatError, match="not a tensor"):
        Doubler(art).flatten({"a": "text"})


def test_inputs_that_passed_skip_the_check_and_bad_ones_still_raise(dict_runner):
    r, ex = dict_runner
    r(**ex)
    r(**ex)  # the same types, shapes and dtypes: remembered
    assert len(r._inputs_passed) == 1
    for bad in ({"image": torch.randn(2, 4), "mask": ex["mask"]},  # a fixed dim differs
                {"image": ex["image"].double(), "mask": ex["mask"]},  # dtype
                {"image": torch.randn(3, 3), "mask": ex["mask"]},  # a shared dim disagrees
                {"image": ex["image"].numpy(), "mask": ex["mask"]}):  # not a tensor
        with pytest.raises(mo.InputSpecError):
            r.run_flat([bad["image"], bad["mask"]])
    assert len(r._inputs_passed) == 1  # nothing that failed was remembered
    r.run_flat([torch.randn(5, 3), torch.ones(5, 3)])  # another batch: checked, then kept
    assert len(r._inputs_passed) == 2
