"""Search spaces declared as data on config fields, and the recipe space built from them."""

from __future__ import annotations

import json
from typing import Literal

import optuna
import pytest
from modelopt_search.errors import SearchError
from modelopt_search.space import (
    default_space,
    describe_recipe,
    escalated_params,
    merge_space,
    repaired_params,
    sample_recipe,
    native_bf16,
    starting_recipes,
)

import modelopt_core as mo


def test_field_search_is_stored_and_round_trips_as_plain_data():
    @mo.config
    class C:
        ratio: float = mo.field(0.3, help="r", validator=mo.in_range(0, 1),
                                search=mo.floats(0.1, 0.7, step=0.1))
        crit: str = mo.field("l1", search=mo.choice("l1", "l2"))
        n: int = mo.field(2, search=mo.ints(1, 8, log=True))
        plain: int = mo.field(1)

    space = mo.search_space(C)
    assert set(space) == {"ratio", "crit", "n"}
    assert mo.config_fields(C)["ratio"].metadata["search"] == mo.floats(0.1, 0.7, step=0.1)
    for sp in space.values():
        data = json.loads(json.dumps(sp.to_data()))
        assert mo.space_from_data(data) == sp
    assert mo.space_from_data(["a", "b"]) == mo.choice("a", "b")


def test_a_declared_value_that_fails_the_validator_is_a_config_error_at_import():
    with pytest.raises(mo.ConfigError, match="ratio.*1.5.*validator"):
        @mo.config
        class Bad:
            ratio: float = mo.field(0.3, validator=mo.in_range(0, 1),
                                    search=mo.floats(0.1, 1.5))
    with pytest.raises(mo.ConfigError, match="'l3'"):
        @mo.config
        class BadChoice:
            crit: Literal["l1", "l2"] = mo.field("l1", search=mo.choice("l1", "l3"))


@pytest.mark.parametrize("make", [lambda: mo.ints(5, 1), lambda: mo.floats(0, 1, log=True),
                                  lambda: mo.choice(), lambda: mo.choice((1, 2)),
                                  lambda: mo.choice("a", "a"), lambda: mo.floats(0, 1, step=0),
                                  lambda: mo.space_from_data({"ints": [1]}),
                                  lambda: mo.field(1, search=[1, 2])])
def test_bad_spaces_are_refused(make):
    with pytest.raises(mo.ConfigError):
        make()


def test_components_declare_their_spaces():
    pm = mo.get_plugin_manager()
    ps = mo.search_space(pm.get("optimizer", "prune.structured").cls)
    assert {"ratio", "importance"} <= set(ps)
    assert all(0 < v < 1 for v in ps["ratio"].candidates())
    assert "calibrate_method" in mo.search_space(pm.get("optimizer", "onnx.quantize_static").cls)
    assert "preset" in mo.search_space(pm.get("optimizer", "openvino.quantize").cls)
    assert {"temperature", "alpha"} <= set(mo.search_space(pm.get("optimizer",
                                                                  "distill.logits").cls))


@pytest.mark.parametrize("target", ["openvino", "onnxruntime", "torch"])
def test_every_sampled_recipe_is_a_valid_pipeline(target):
    """Recipes drawn by a real Optuna sampler build every component's config."""
    pm = mo.get_plugin_manager()
    space = default_space(target)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    for params in starting_recipes(space, pm):
        study.enqueue_trial(params)
    seen = set()
    for _ in range(12):
        trial = study.ask()
        recipe = sample_recipe(trial, target, space, pm, {"x": 1})
        study.tell(trial, [1.0, 1.0])
        assert recipe["backend_options"]["x"] == 1
        for st in recipe["steps"]:
            st = dict(st)
            if "apply" in st:
                pm.get("optimizer", st.pop("apply")).cls(**st)  # builds: no ConfigError
        exports = [s["export"] for s in recipe["steps"] if "export" in s]
        assert exports == ([] if target == "torch" else [{"onnxruntime": "onnx"}.get(target,
                                                                                   target)])
        seen.add(describe_recipe(recipe).split(" @ ")[0])
        json.dumps(recipe)  # plain data
    assert len(seen) > 3


def test_space_overrides_and_errors():
    s = merge_space("openvino", {"precision": ["none"],
                                 "params": {"prune.structured": {"ratio": [0.2, 0.4]}}})
    assert s["precision"] == ["none"]
    assert s["params"]["prune.structured"]["ratio"] == [0.2, 0.4]
    assert s["params"]["distill.logits"]["epochs"]  # defaults kept
    with pytest.raises(SearchError, match="unknown search-space key 'precisoin'"):
        merge_space("openvino", {"precisoin": []})
    with pytest.raises(SearchError, match="unknown target"):
        default_space("tensorrtx")


def test_starting_ladder_starts_with_the_plain_export_then_adds_steps():
    pm = mo.get_plugin_manager()
    ladder = starting_recipes(default_space("onnxruntime"), pm)
    plain = {k: v for k, v in ladder[0].items() if not k.startswith("runtime.")}
    assert plain == {"prune": "none", "precision": "none"}
    precisions = [p["precision"] for p in ladder if p["prune"] == "none"
                  and p.get("onnx.quantize_static.float_ends") is not True]
    assert precisions == ["none", "onnx.quantize_static", "onnx.quantize_dynamic"]
    pruned = [p for p in ladder if p["prune"] == "prune.structured"]
    # prune 30% + recovery alone, then with the first precision (and the graph optimizer)
    assert [(p["precision"], p["recovery"], p["prune.structured.ratio"]) for p in pruned] == [
        ("none", "distill.logits", 0.3), ("onnx.quantize_static", "distill.logits", 0.3)]
    assert pruned[1]["graph"] == "onnx.optimize" and "graph" not in pruned[0]
    # precision alone: defaults without, then with float fallback (where the component has it)
    ov_ladder = starting_recipes(default_space("openvino"), pm)
    plain = [p for p in ov_ladder if p["precision"] == "none" and p["prune"] == "none"]
    assert [p["runtime.inference_precision"] for p in plain] == \
        (["f32", "bf16"] if native_bf16() else ["f32"])  # bf16 only where it is native
    int8 = [p for p in ov_ladder if p["prune"] == "none" and p["precision"] != "none"
            and p.get("openvino.quantize.float_ends") is not True
            and p["runtime.inference_precision"] == "f32"]
    assert [p["openvino.quantize.float_fallback"] for p in int8] == [False, True]
    # cheap first: every expensive rung (float fallback, training) after every cheap one
    costly = [bool(p.get("openvino.quantize.float_fallback")) or p.get("recovery", "none")
              != "none" for p in ov_ladder]
    assert costly == sorted(costly) and costly[0] is False and costly[-1] is True
    if "float_ends" in mo.search_space(pm.get("optimizer", "openvino.quantize").cls):
        ends = [i for i, p in enumerate(ov_ladder) if p.get("openvino.quantize.float_ends")]
        assert ends and ends[0] < costly.index(True)
    # a space without "none" precision has no plain rung
    ov = starting_recipes(merge_space("openvino", {"precision": ["openvino.quantize"]}), pm)
    assert all(p["precision"] == "openvino.quantize" for p in ov)


def test_escalation_prunes_one_step_further_up_to_the_top_of_the_range():
    pm = mo.get_plugin_manager()
    space = default_space("onnxruntime")  # ratio: floats 0.1..0.6 step 0.1
    p = {"prune": "prune.structured", "prune.structured.ratio": 0.3, "precision": "none"}
    assert escalated_params(p, space, pm) == {**p, "prune.structured.ratio": 0.4}
    assert escalated_params({**p, "prune.structured.ratio": 0.6}, space, pm) is None
    assert escalated_params({"prune": "none", "precision": "none"}, space, pm) is None
    listed = merge_space("onnxruntime", {"params": {"prune.structured": {"ratio": [0.5, 0.2,
                                                                                0.35]}}})
    assert escalated_params({**p, "prune.structured.ratio": 0.2}, listed, pm)[
        "prune.structured.ratio"] == 0.35
    assert escalated_params({**p, "prune.structured.ratio": 0.5}, listed, pm) is None


def test_the_confirmation_tries_thread_counts_halving_down_to_one():
    from modelopt_search.optimize import _thread_counts

    # no thread count given: the runtime's default first, then half the cores down to 1
    assert _thread_counts(None, cores=2) == [None, 1]
    assert _thread_counts(None, cores=8) == [None, 4, 2, 1]
    assert _thread_counts(None, cores=1) == [None]
    assert _thread_counts(1) == [1]
    assert _thread_counts(2) == [2, 1]
    assert _thread_counts(8) == [8, 4, 2, 1]
    assert _thread_counts(6) == [6, 3, 1]


def test_a_precision_step_that_missed_the_budget_gets_one_option_changed_at_a_time():
    pm = mo.get_plugin_manager()
    space = default_space("openvino")
    p = {"prune": "none", "precision": "openvino.quantize",
         "openvino.quantize.preset": "performance", "openvino.quantize.calibration_batches": 300,
         "openvino.quantize.fast_bias_correction": True,
         "openvino.quantize.float_fallback": False, "runtime.inference_precision": "f32"}
    variants = repaired_params(p, space, pm)
    changed = [{k: v for k, v in q.items() if p[k] != v} for q in variants]
    assert changed == [{"openvino.quantize.preset": "mixed"},
                       {"openvino.quantize.calibration_batches": 32},
                       {"openvino.quantize.fast_bias_correction": False}]
    assert repaired_params({**p, "prune": "prune.structured"}, space, pm) == []  # pruned
    assert repaired_params({"prune": "none", "precision": "none"}, space, pm) == []
    multi = {**{k: v for k, v in p.items() if k != "precision"},
             "precision.openvino": "openvino.quantize", "target": "openvino"}
    assert len(repaired_params(multi, space, pm)) == 3


def test_described_recipes_leave_out_defaults_with_the_plugin_manager():
    pm = mo.get_plugin_manager()
    recipe = {"steps": [{"apply": "prune.structured", "ratio": 0.3, "importance": "l1"},
                        {"export": "onnx"}, {"apply": "onnx.optimize"}],
              "backend": "onnxruntime",
              "backend_options": {"intra_op_num_threads": 1, "graph_optimization_level": "all"}}
    full = describe_recipe(recipe)
    assert "importance=l1" in full and "graph_optimization_level=all" in full
    short = describe_recipe(recipe, pm)
    defaults = mo.config_fields(pm.get("optimizer", "prune.structured").cls.Config)
    assert defaults["importance"].default == "l1" and defaults["ratio"].default != 0.3
    assert short.startswith("prune.structured(ratio=0.3) > export onnx > onnx.optimize() @ ")
    assert "importance" not in short and "intra_op_num_threads=1" in short
