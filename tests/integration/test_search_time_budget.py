"""Session.optimize under a time budget, on the real runtimes (issue 24 item 6): the whole
call ends within 5% of ``time_budget_s`` (plus a small fixed allowance, below), cheap
candidates run first, and an expensive one (accuracy control) that cannot fit its share of
the budget is not started, with the reason recorded."""

from __future__ import annotations

import json
import time

import pytest
from helpers import trained_digits_cnn
from modelopt_search.space import native_bf16

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn

#: the fixed start-up allowance on top of time_budget_s * 1.05: checking the arguments,
#: opening the study and the plugins before the clock's first reading, and Python's
#: clean-up of the trial artifacts after the last one
ALLOWANCE_S = 2.0

FAST = {"fixed": {"export.onnx": {"exporter": "torchscript"}},
        "params": {"distill.logits": {"epochs": {"ints": [1, 1]}}}}


@pytest.fixture(scope="module")
def digits():
    return trained_digits_cnn()


def _session(m, d, eval_s: float = 0.0):
    acc = accuracy_fn(d.test)

    def slow(runner):  # an eval_fn that costs what a real validation set does
        time.sleep(eval_s)
        return acc(runner)

    return mo.Session(m, (d.example,), calibration_data=d.calibration[:4],
                      train_data=d.train[:6], eval_fn=slow if eval_s else acc,
                      progress=False)


def test_the_whole_search_ends_within_the_time_budget(digits, tmp_path):
    m, d = digits
    s = _session(m, d, eval_s=0.3)
    budget = 25.0
    t = time.perf_counter()
    res = s.optimize(target="onnxruntime", budget_trials=None, time_budget_s=budget,
                     out_dir=tmp_path, threads=1, space=FAST)
    took = time.perf_counter() - t
    assert took <= 1.05 * budget + ALLOWANCE_S, took
    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert sum(r["state"] == "complete" for r in rows) >= 2  # it did use the time
    assert res.best_row is not None and res.best_row["feasible"]
    assert any("time budget 25 s" in n for n in res.report.notes["search"])


def test_cheap_candidates_first_and_an_expensive_one_that_cannot_fit_is_skipped(digits,
                                                                               tmp_path):
    m, d = digits
    s = _session(m, d, eval_s=1.5)  # accuracy control: ~10 evaluations, over 40% of 45 s
    budget = 45.0
    t = time.perf_counter()
    res = s.optimize(target="openvino", budget_trials=None, time_budget_s=budget,
                     out_dir=tmp_path, threads=1,
                     space={"prune": ["none"], "precision": ["none", "openvino.quantize"]})
    took = time.perf_counter() - t
    assert took <= 1.05 * budget + ALLOWANCE_S, took
    trials = sorted(res.study.trials, key=lambda tr: tr.number)
    params = [tr.params for tr in trials]
    # the enqueued cheap rungs ran first: the plain export (f32, then bf16 where the CPU
    # has it natively), then INT8 with its defaults
    assert params[0]["precision"] == "none"
    assert params[0]["runtime.inference_precision"] == "f32"
    if native_bf16():
        assert params[1]["precision"] == "none"
        assert params[1]["runtime.inference_precision"] == "bf16"
    fallback = [i for i, p in enumerate(params) if p.get("openvino.quantize.float_fallback")]
    int8 = [i for i, p in enumerate(params) if p["precision"] == "openvino.quantize"
            and p.get("openvino.quantize.float_fallback") is False]
    assert int8 and fallback and int8[0] < fallback[0]
    # no accuracy-controlled trial ran: each was skipped, the reason on its row
    for i in fallback:
        row = trials[i].user_attrs["row"]
        assert "skipped" in row and "estimated" in row["skipped"], row
        assert "latency_p50_ms" not in row and trials[i].state.name == "PRUNED"
    first = trials[fallback[0]].user_attrs["row"]["skipped"]
    assert "accuracy_control" in first or "left in the time budget" in first
    assert any("not run for the time budget" in n for n in res.report.notes["search"])
