"""RecipeStep (pipelines as data) and the step cache's key: unit and property tests."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import modelopt_core as mo
from modelopt_core.fingerprint import Unfingerprintable, artifact_hash, data_fingerprint
from modelopt_core.step_cache import key_of

_names = st.text("abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3), max_leaves=8)
_steps = st.builds(mo.RecipeStep, st.sampled_from(["apply", "export"]), _names,
                   st.dictionaries(st.text(min_size=1, max_size=8).filter(
                       lambda k: k not in ("apply", "export", "verb")), _json, max_size=4))


@given(_steps)
@settings(max_examples=200, deadline=None)
def test_recipe_step_round_trips_through_json_and_the_recipe_spelling(step):
    assert mo.RecipeStep.from_data(json.loads(json.dumps(step.to_data()))) == step
    assert mo.RecipeStep.from_data(json.loads(json.dumps(step.to_recipe()))) == step
    again = mo.RecipeStep.from_data(step.to_data())
    assert hash(again) == hash(step) and len({step, again}) == 1  # hashable, by value


def test_recipe_step_reads_both_spellings_and_refuses_bad_ones():
    a = mo.RecipeStep.from_data({"apply": "onnx.quantize_static", "per_channel": True})
    b = mo.RecipeStep.from_data({"verb": "apply", "name": "onnx.quantize_static",
                                 "config": {"per_channel": True}})
    assert a == b and a.to_recipe() == {"apply": "onnx.quantize_static", "per_channel": True}
    with pytest.raises(mo.ConfigError, match="step 3 needs exactly one of 'apply'"):
        mo.RecipeStep.from_data({"apply": "x", "export": "onnx"}, "step 3")
    with pytest.raises(mo.ConfigError, match="verb must be one of"):
        mo.RecipeStep("train", "x")
    with pytest.raises(mo.ConfigError, match="plain JSON values"):
        mo.RecipeStep("apply", "x", {"fn": object()})


@given(st.dictionaries(_names, _json, min_size=1, max_size=6), st.data())
@settings(max_examples=200, deadline=None)
def test_cache_key_changes_with_any_part_and_not_with_order(parts, data):
    key = key_of(parts)
    assert key == key_of(dict(reversed(list(parts.items()))))  # order: same key
    name = data.draw(st.sampled_from(sorted(parts)))
    changed = {**parts, name: [parts[name], "changed"]}
    assert key_of(changed) != key


def _session(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 10))
    return mo.Session(model, (torch.randn(1, 1, 8, 8),), progress=False, **kw)


def _key(s, name="prune.structured", **config):
    inst = s.pm.get("optimizer", name).cls(**config)
    return mo.StepCache("unused").key(s, inst, s.current, s.context())


def test_cache_key_differs_by_config_input_data_and_version():
    s = _session()
    key, parts = _key(s, ratio=0.3)
    assert _key(s, ratio=0.3)[0] == key  # deterministic
    assert _key(s, ratio=0.4)[0] != key  # config
    assert _key(_session(seed=1), ratio=0.3)[0] != key  # input artifact
    calib = [torch.randn(1, 1, 8, 8) for _ in range(2)]
    assert _key(_session(calibration_data=calib), ratio=0.3)[0] != key  # data it may read
    # the component's plugin and version are parts of the key
    assert parts["component"]["version"] == s.pm.get("optimizer", "prune.structured").version
    bumped = {**parts, "component": {**parts["component"], "version": "99"}}
    assert key_of(bumped) != key
    assert parts["input"] == artifact_hash(s.current)


def test_data_fingerprint_sees_closure_data_and_refuses_one_shot_iterators():
    def acc(batches):
        return lambda runner: sum(len(b) for b in batches)

    x = [torch.zeros(2), torch.ones(2)]
    assert data_fingerprint(acc(x)) == data_fingerprint(acc([t.clone() for t in x]))
    assert data_fingerprint(acc(x)) != data_fingerprint(acc(x[:1]))
    with pytest.raises(Unfingerprintable, match="one-shot iterator"):
        data_fingerprint(iter(x), "calibration_data")


def test_a_step_on_data_that_cannot_be_fingerprinted_is_computed_not_cached(tmp_path):
    s = _session(train_data=iter([]), step_cache=tmp_path)
    s.apply("prune.structured", ratio=0.3)
    st_ = s.step_cache.stats()
    assert st_["hits"] == 0 and st_["computed"] == 1 and st_["stored"] == 0
    assert "one-shot iterator" in st_["uncached"][0]
    assert not any(tmp_path.iterdir())
