"""The step runner and the step cache on real components: Session.plan/run/fork, a step
computed once and loaded after (in this process, by another process sharing the folder, by
a second search), a damaged entry recomputed, and a plan refusing what this machine lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import digits_recipe_module, trained_digits_cnn

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn

ROOT = Path(__file__).resolve().parents[2]
STEPS = [mo.RecipeStep("apply", "prune.structured", {"ratio": 0.3}),
         {"export": "onnx", "exporter": "torchscript"},
         {"apply": "onnx.quantize_static"}]

#: the same session in another process (the cache key sees the same model and data)
WORKER = '''
import sys, torch
import modelopt_core as mo
from modelopt_demo.models import SmallCNN
torch.manual_seed(0)
m = SmallCNN(width=8).eval()
g = torch.Generator().manual_seed(1)
calib = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(3)]
s = mo.Session(m, (calib[0],), calibration_data=calib, progress=False, step_cache=sys.argv[1])
s.run([{"apply": "prune.structured", "ratio": 0.3},
       {"export": "onnx", "exporter": "torchscript"}, {"apply": "onnx.quantize_static"}])
print(s.step_cache.stats()["stored"])
'''


def _session(cache):
    from modelopt_demo.models import SmallCNN

    torch.manual_seed(0)
    m = SmallCNN(width=8).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(3)]
    return mo.Session(m, (calib[0],), calibration_data=calib, progress=False, step_cache=cache)


def _entries(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/*/entry.json"))]


def test_a_step_computed_by_another_process_is_loaded_not_recomputed(tmp_path):
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", WORKER, str(cache)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "3" and len(_entries(cache)) == 3
    s = _session(cache)
    plan = s.plan(STEPS)
    assert plan.runnable and plan.formats == ("torch", "torch", "onnx", "onnx")
    assert plan.needs == ("calibration_data",)
    art = s.run(STEPS)
    assert s.step_cache.stats()["hits"] == 3 and s.step_cache.computed == 0
    assert [st.component for st in art.lineage] == ["original", "prune.structured", "onnx",
                                                    "onnx.quantize_static"]
    assert all(any("step cache hit" in n for n in st.notes) for st in art.lineage[1:])
    # the loaded result is the computed one: a fresh computation gives the same model
    fresh = _session(None)
    fresh.run(STEPS)
    assert fresh.current.model.SerializeToString() == art.model.SerializeToString()
    x = torch.randn(2, 1, 8, 8)
    with s.runner("onnxruntime") as r1, fresh.runner("onnxruntime") as r2:
        assert torch.equal(r1(x), r2(x))


def test_a_damaged_entry_is_recomputed_never_trusted(tmp_path):
    cache = tmp_path / "cache"
    first = _session(cache)
    first.run(STEPS[:2])
    onnx_entry = next(p.parent for p in cache.glob("*/*/entry.json")
                      if json.loads(p.read_text())["parts"]["step"]["name"] == "onnx")
    model = next((onnx_entry / "artifact").glob("*.onnx"))
    model.write_bytes(model.read_bytes()[:-7] + b"damaged")  # a torn or tampered file
    s = _session(cache)
    s.run(STEPS[:2])
    stats = s.step_cache.stats()
    assert stats["hits"] == 1 and stats["computed"] == 1 and len(stats["corrupt"]) == 1
    assert s.current.model.SerializeToString() == first.current.model.SerializeToString()
    again = _session(cache)  # the recomputed entry replaced the damaged one
    again.run(STEPS[:2])
    assert again.step_cache.stats()["hits"] == 2 and not again.step_cache.corrupt


def test_plan_and_run_refuse_a_step_this_machine_cannot_run(tmp_path):
    s = _session(None)
    ok, why = s.pm.get("exporter", "tensorrt").cls.availability()
    if ok:
        pytest.skip("TensorRT runs on this machine")
    steps = [{"apply": "prune.structured", "ratio": 0.3}, {"export": "tensorrt"}]
    plan = s.plan(steps)
    assert not plan.runnable and "exporter 'tensorrt'" in plan.unavailable[0]
    with pytest.raises(mo.BackendUnavailableError, match="nothing was run"):
        s.run(steps)
    assert len(s.history) == 1  # the prune before it did not run
    with pytest.raises(mo.ConfigError, match=r"step 1 \(apply 'onnx.optimize'\).*export step"):
        s.plan([{"apply": "onnx.optimize"}])


def test_fork_branches_the_history_and_shares_data_and_cache(tmp_path):
    s = _session(tmp_path)
    pruned = s.apply("prune.structured", ratio=0.3)
    s.export("onnx", exporter="torchscript")
    fork = s.fork(pruned)
    assert fork.history == s.history[:2] and fork.current is pruned
    assert fork.step_cache is s.step_cache and fork.calibration_data is s.calibration_data
    fork.apply("quantize.dynamic")
    assert len(s.history) == 3  # the parent is unchanged
    root = s.fork(s.current)
    assert root.original is s.original and len(root.history) == 3


FAST = {"prune": ["prune.structured"], "recovery": ["distill.logits"],
        "precision": ["none", "onnx.quantize_dynamic", "onnx.quantize_static"],
        "graph": ["none"],
        "fixed": {"export.onnx": {"exporter": "torchscript"},
                  # one prune + recovery prefix for every trial (precision differs)
                  "prune.structured": {"ratio": 0.3, "round_to": None, "importance": "l1",
                                       "scope": "local"},
                  "distill.logits": {"epochs": 1, "lr": 3e-3, "eval_each_epoch": False,
                                     "temperature": 4.0, "alpha": 0.5}}}


def _search(m, d, out, cache=None):
    s = mo.Session(m, (d.example,), calibration_data=d.calibration[:4], train_data=d.train[:6],
                   eval_fn=accuracy_fn(d.test), progress=False)
    return s.optimize(target="onnxruntime", budget_trials=3, out_dir=out, threads=1,
                      space=FAST, max_accuracy_drop=50.0, step_cache=cache,
                      profiler_options={"latency": {"min_time_s": 0.02, "warmup": 1}})


def test_trials_share_a_prefix_and_a_second_search_reuses_every_step(tmp_path):
    m, d = trained_digits_cnn()
    _search(m, d, tmp_path / "a")
    cache = tmp_path / "a" / "step-cache"
    made = [e["parts"]["step"]["name"] for e in _entries(cache)]
    # 3 trials, one prune + recovery prefix: computed once, then loaded by the others
    assert made.count("prune.structured") == 1 and made.count("distill.logits") == 1
    rows = json.loads((tmp_path / "a" / "trials.json").read_text())["trials"]
    ran = [r for r in rows if "lineage" in r and "duplicate_of" not in r]
    hits = sorted(r["cache_hits"] for r in ran)  # the first computes; the rest load >= 3
    assert len(ran) == 3 and hits[0] == 0 and all(h >= 3 for h in hits[1:])
    res = _search(m, d, tmp_path / "b", cache)  # a new study over the same recipe
    rows = json.loads((tmp_path / "b" / "trials.json").read_text())["trials"]
    ran = [r for r in rows if "lineage" in r and "duplicate_of" not in r]
    hits = sum(r["cache_hits"] for r in ran)
    assert hits == sum(len(r["lineage"]) - 1 for r in ran) and hits >= 9  # every step
    assert len(_entries(cache)) == len(made)  # nothing new computed
    md = (tmp_path / "b" / "report.md").read_text()
    assert f"Step cache: {hits} step(s) loaded" in md and "0 computed here" in md
    assert res.best is not None


HELPER = digits_recipe_module(eval_rows=None, train_rows=6, one_thread=False)


def test_cli_second_optimize_loads_its_steps_from_the_given_cache(tmp_path, capsys):
    from modelopt_core.cli import main

    m, _ = trained_digits_cnn()
    torch.save(m.state_dict(), tmp_path / "w.pt")
    (tmp_path / "cache_helper.py").write_text(HELPER)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'''
model = "cache_helper:model"
model_kwargs = {{path = "{tmp_path / 'w.pt'}"}}
example_inputs = [[1, 1, 8, 8]]
data = "cache_helper:data"
[search]
target = "torch"
trials = 1
threads = 1
max_accuracy_drop = 50.0
profiler_options = {{latency = {{min_time_s = 0.02, warmup = 1}}}}
[search.space]
prune = ["prune.structured"]
recovery = ["distill.logits"]
precision = ["none"]
[search.space.fixed]
"prune.structured" = {{ratio = 0.3, importance = "l1", scope = "local"}}
"distill.logits" = {{epochs = 1, temperature = 4.0, alpha = 0.5}}
''')
    assert main(["optimize", str(recipe), "--out", str(tmp_path / "o1")]) == 0
    assert "Step cache" not in capsys.readouterr().out  # all computed the first time
    assert main(["optimize", str(recipe), "--out", str(tmp_path / "o2"),
                 "--step-cache", str(tmp_path / "o1" / "step-cache")]) == 0
    text = capsys.readouterr().out
    assert "Step cache: 2 step(s) loaded, not recomputed." in text  # the terminal summary
    assert not (tmp_path / "o2" / "step-cache").exists()
