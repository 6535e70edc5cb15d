"""The end of a latency search re-times its contenders as they will be deployed (issue 24):
at the batch the trials were timed at (the latency profiler's ``batch_size``), and with the
fastest feasible recipe of every target among them, on the real runtimes."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import trained_digits_cnn
from modelopt_search.optimize import contenders

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn

FAST = {"fixed": {"export.onnx": {"exporter": "torchscript"}}}

#: the batch sizes the recorded model ran, in order (a global: the torch backend runs a copy)
SEEN: list[int] = []


class _Recorded(torch.nn.Module):
    """The digits CNN, noting the batch size of every call in SEEN."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SEEN.append(int(x.shape[0]))
        return self.m(x)


@pytest.fixture(scope="module")
def digits():
    return trained_digits_cnn()


def _session(m, d):
    return mo.Session(m, (d.example,), calibration_data=d.calibration[:4],
                      eval_fn=accuracy_fn(d.test), progress=False)


def test_the_confirmation_times_at_the_batch_the_trials_were_timed_at(digits, tmp_path):
    m, d = digits
    assert d.example.shape[0] == 1
    s = _session(_Recorded(m).eval(), d)
    SEEN.clear()
    res = s.optimize(target="torch", budget_trials=1, out_dir=tmp_path, threads=2,
                     space={"prune": ["none"], "precision": ["none"]},
                     profiler_options={"latency": {"batch_size": 5}})
    assert res.best_row is not None and "confirmed_p50_ms" in res.best_row
    # the confirmation is the last thing that runs the model: at least 20 timed calls of
    # the best, and every one at batch 5 (not the example's batch of 1)
    tail = SEEN[-20:]
    assert len(tail) == 20 and set(tail) == {5}, SEEN[-40:]
    assert 1 not in SEEN[SEEN.index(5):]  # nothing after the first timing ran at batch 1
    assert any("re-timed side by side at the end (p50 ms at batch 5" in n
               for n in res.report.notes["search"])


def test_the_fastest_feasible_recipe_of_every_target_is_re_timed(digits, tmp_path):
    m, d = digits
    s = _session(m, d)
    res = s.optimize(target=["openvino", "onnxruntime"], budget_trials=4, out_dir=tmp_path,
                     threads=1, space={**FAST, "prune": ["none"], "precision": ["none"]},
                     profiler_options={"latency": {"batch_size": 8}})
    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    confirmed = {r["trial"]: r["confirmed_p50_ms"] for r in rows if "confirmed_p50_ms" in r}
    feasible = [r for r in rows if r.get("feasible") and "duplicate_of" not in r]
    assert {r["backend"] for r in feasible} == {"openvino", "onnxruntime"}
    for backend in ("openvino", "onnxruntime"):  # each target's fastest feasible one
        fastest = min((r for r in feasible if r["backend"] == backend),
                      key=lambda r: (r["objective"], r["trial"]))
        assert fastest["trial"] in confirmed, (backend, confirmed)
    assert set(confirmed) == {r["trial"] for r in contenders(rows)}
    # the best is the fastest side by side, on its own runtime with its thread count
    assert res.best_row["trial"] == min(confirmed, key=confirmed.get)
    assert res.best_recipe["backend"] == res.best_row["backend"]
    assert json.loads((tmp_path / "best.json").read_text())["recipe"] == res.best_recipe
