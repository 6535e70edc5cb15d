"""Session.optimize / modelopt optimize on a tiny digits CNN, on the real runtimes: the best
artifact, the report, resuming a study, and resuming after kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import digits_recipe_module, trained_digits_cnn

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn
from modelopt_demo.models import SmallCNN

ROOT = Path(__file__).resolve().parents[2]

#: a small, fast space: TorchScript ONNX export (the dynamo exporter takes seconds)
FAST = {"fixed": {"export.onnx": {"exporter": "torchscript"}},
        "params": {"distill.logits": {"epochs": {"ints": [1, 1]}}}}

HELPER = digits_recipe_module(eval_rows=None, train_rows=6)


@pytest.fixture(scope="module")
def digits():
    return trained_digits_cnn()


def _session(m, d):
    return mo.Session(m, (d.example,), calibration_data=d.calibration[:4],
                      train_data=d.train[:6], eval_fn=accuracy_fn(d.test), progress=False)


def test_optimize_finds_a_feasible_faster_artifact_and_resumes(digits, tmp_path):
    m, d = digits
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = _session(m, d)
    out = tmp_path / "search"
    res = s.optimize(target="onnxruntime", budget_trials=3, out_dir=out, threads=1,
                     space={**FAST, "prune": ["none"]})
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # untouched
    assert len(s.history) == 1
    assert res.best_row is not None and res.best_row["feasible"]
    assert res.best_row["accuracy_drop"] <= 1.0
    assert res.best_row["backend"] == "onnxruntime"
    assert res.best.format == "onnx"
    # best/ is the best feasible trial's artifact and runs on its runtime
    assert json.loads((out / "best.json").read_text())["trial"] == res.best_row["trial"]
    saved = mo.load_artifact(out / "best")
    with s.runner("onnxruntime", artifact=saved) as r:
        assert abs(accuracy_fn(d.test)(r) - res.best_row["accuracy"]) < 1e-6
    assert res.best_recipe["steps"][0]["export"] == "onnx"
    assert res.pareto and res.best_row["trial"] in {p["trial"] for p in res.pareto}
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 3 and {t["state"] for t in trials} <= {"complete", "pruned"}
    md = (out / "report.md").read_text()
    assert "original (torch fp32)" in md and "export onnx" in md
    assert (out / "report.html").stat().st_size > 0
    _assert_best_marked(out, res.best_row["trial"])
    # the feasible candidates were re-timed side by side; the fastest of them is the best
    confirmed = {t["trial"]: t["confirmed_p50_ms"] for t in trials if "confirmed_p50_ms" in t}
    assert len(confirmed) >= 2 and res.best_row["trial"] == min(confirmed, key=confirmed.get)
    assert res.best_row["confirmed_p50_ms"] == pytest.approx(confirmed[res.best_row["trial"]])
    assert any("re-timed side by side" in n for n in res.report.notes["search"])
    assert "re-timed side by side" in (out / "report.md").read_text()  # on disk too
    assert res.best_row["confirmed_threads"] == 1  # threads=1: the only count tried
    assert json.loads((out / "best.json").read_text())["recipe"] == res.best_recipe
    assert res.best_recipe["backend_options"]["intra_op_num_threads"] == 1
    # a second call on the same out_dir continues the same study
    res2 = s.optimize(target="onnxruntime", budget_trials=1, out_dir=out, threads=1,
                      space={**FAST, "prune": ["none"]})
    ran = [t for t in res2.study.trials if "duplicate_of" not in t.user_attrs["row"]]
    assert len(ran) == 4  # one more recipe run (repeats drawn on the way are not re-run)
    assert len(json.loads((out / "trials.json").read_text())["trials"]) == \
        len(res2.study.trials)


def _assert_best_marked(out, best):
    """Issue 26 items 3 and 8, as a user reads the output: report.md's best column marks the
    best trial alone (the others: blank, or a tie within noise with its CI), it is on the
    Pareto front, the line under the table names it (and any tie); report.html stars the same
    row and is small, plotly.js beside it."""
    md = (out / "report.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    marked = {r["step"]: r["best"] for r in rows if r["best"]}
    assert marked.pop(f"trial {best}") == "best", md
    assert all(re.fullmatch(r"tie within noise \(p50 ratio \d\.\d{3}, 95% CI "
                            r"\d\.\d{3}-\d\.\d{3}\)", v) for v in marked.values()), marked
    assert next(r for r in rows if r["step"] == f"trial {best}")["pareto"] == "True"
    summary = md.split(lines[-1])[1].strip().splitlines()[0]
    assert summary.startswith(f"**Best: trial {best} on ") and "final-artifact/" in summary
    for step in marked:  # a tie is said in the summary line too
        assert "tie within noise with " in summary and f"{step} (p50 ratio" in summary
    page = (out / "report.html").read_text()
    starred = re.search(r'<tr class="[^"]*best[^"]*"><td class="text"><span class="star"'
                        r'[^>]*>★</span> ([^<]*)</td>', page)
    assert starred and starred.group(1) == f"trial {best}"
    assert len(page.encode()) < 300_000 and len(list(out.glob("plotly-*.min.js"))) == 1
    assert 'id="trial-history"' in page


def _prune_only(params):
    """A space of structured pruning alone (no recovery, no precision step) with these params."""
    return {"prune": ["prune.structured"], "recovery": ["none"], "precision": ["none"],
            "fixed": FAST["fixed"], "params": {"prune.structured": params}}


def test_early_rejection_prunes_trials_that_miss_the_budget(digits, tmp_path):
    m, d = digits
    s = _session(m, d)
    res = s.optimize(target="onnxruntime", budget_trials=2, out_dir=tmp_path, threads=1,
                     max_accuracy_drop=0.0,
                     space=_prune_only({"ratio": [0.6]}))
    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["pruned", "pruned"]
    assert all(r["pruned_at"] == "prune.structured" for r in rows)  # before the export
    assert all("export onnx" in r["recipe"] and "latency_p50_ms" not in r for r in rows)
    assert res.best is None and res.best_row is None


def test_a_feasible_pruned_recipe_is_followed_by_a_more_aggressive_one(digits, tmp_path):
    m, d = digits
    s = _session(m, d)
    res = s.optimize(target="onnxruntime", budget_trials=3, out_dir=tmp_path, threads=1,
                     max_accuracy_drop=100.0,
                     space=_prune_only({"ratio": {"floats": [0.1, 0.5], "step": 0.1}}))
    ratios = [t.params["prune.structured.ratio"] for t in res.study.trials
              if t.state.is_finished()]
    assert ratios == [0.3, 0.4, 0.5]  # the ladder's 30%, then one step up while it holds


def test_a_precision_step_that_misses_the_budget_is_retried_with_other_options(digits,
                                                                               tmp_path):
    m, d = digits
    acc = accuracy_fn(d.test)

    def strict(runner):  # every ONNX Runtime run "misses" the budget: the variants follow
        return acc(runner) - (50.0 if type(runner).__name__ == "OrtRunner" else 0.0)

    s = mo.Session(m, (d.example,), calibration_data=d.calibration[:4], eval_fn=strict,
                   progress=False)
    # the cheap rung "INT8 with the first/last layers in float" comes second where the
    # component searches float_ends (it is enqueued with the defaults, not a repair)
    ends = "float_ends" in mo.search_space(s.pm.get("optimizer", "onnx.quantize_static").cls)
    res = s.optimize(target="onnxruntime", budget_trials=5 if ends else 4, out_dir=tmp_path,
                     threads=1, space={"prune": ["none"], "precision": ["onnx.quantize_static"],
                                       "graph": ["none"], "fixed": FAST["fixed"]})
    if ends:
        assert res.study.trials[1].params["onnx.quantize_static.float_ends"] is True
    trials = [t for t in res.study.trials
              if t.params.get("onnx.quantize_static.float_ends") is not True][:4]
    first = trials[0].params
    assert first["onnx.quantize_static.calibrate_method"] == "minmax"  # the defaults
    changed = [{k: v for k, v in t.params.items() if first[k] != v} for t in trials[1:]]
    assert changed == [{"onnx.quantize_static.per_channel": False},
                       {"onnx.quantize_static.calibrate_method": "entropy"},
                       {"onnx.quantize_static.calibrate_method": "percentile"}]
    assert res.best is None


def test_a_recipe_drawn_again_reuses_its_measurement(digits, tmp_path):
    m, d = digits
    s = _session(m, d)
    res = s.optimize(target="onnxruntime", budget_trials=2, out_dir=tmp_path, threads=1,
                     space={"prune": ["none"], "precision": ["none"], "graph": ["none"],
                            "runtime": {"graph_optimization_level": {"choice": ["all"]}},
                            "fixed": FAST["fixed"]})
    first, *again = res.study.trials
    # one recipe in the space: every later draw repeats it, none is re-run or counted, and
    # after max(10, budget_trials) repeats in a row the spent space stops the search
    assert len(again) == 10
    for t in again:
        assert t.user_attrs["row"]["duplicate_of"] == 0
        assert t.values == first.values and t.user_attrs["recipe"] == first.user_attrs["recipe"]
    assert res.best_row["trial"] == 0  # the measured one, not its copies
    assert [p["trial"] for p in res.pareto] == [0]  # copies are no candidates of their own
    # the report lists the recipe once and says how many repeats it left out
    assert [r.get("trial") for r in res.report.rows] == [None, 0]
    assert "10 later draws of recipes already measured are not listed" in \
        (tmp_path / "report.md").read_text()
    assert len(json.loads((tmp_path / "trials.json").read_text())["trials"]) == 11


def test_a_step_that_changes_nothing_is_rejected(digits, tmp_path):
    m, d = digits
    s = _session(m, d)
    # width-8 layers, 10% pruned, rounded to 16 channels: no channel goes
    res = s.optimize(target="onnxruntime", budget_trials=1, out_dir=tmp_path, threads=1,
                     space={"prune": ["prune.structured"], "recovery": ["none"],
                            "precision": ["none"],
                            "fixed": {**FAST["fixed"], "prune.structured": {"round_to": 16}},
                            "params": {"prune.structured": {"ratio": [0.1]}}})
    (t,) = res.study.trials
    assert t.state.name == "PRUNED" and t.user_attrs["row"]["no_op"] == "prune.structured"
    assert res.best is None


def test_bad_arguments_fail_before_any_trial(digits, tmp_path):
    m, d = digits
    s = _session(m, d)
    with pytest.raises(mo.ConfigError, match="objective"):
        s.optimize(objective="speed", out_dir=tmp_path)
    with pytest.raises(mo.ConfigError, match="unknown target"):
        s.optimize(target="tpu", out_dir=tmp_path)
    with pytest.raises(mo.ConfigError, match="eval_fn"):
        mo.Session(m, (d.example,)).optimize(out_dir=tmp_path)


def test_energy_objective_says_why_it_cannot_run_here(digits, tmp_path):
    """Where neither RAPL nor NVML is readable (VMs), the search stops before any trial with
    the profiler's reason; it never optimizes a made-up figure."""
    m, d = digits
    s = _session(m, d)
    row = s.compare(profilers=["energy"]).rows[0]
    if row.get("joules_per_inference") is not None:
        pytest.skip("energy counters are readable here")
    with pytest.raises(mo.ConfigError, match="joules_per_inference.*energy_unavailable"):
        s.optimize(objective="energy", out_dir=tmp_path, budget_trials=1)
    assert not (tmp_path / "trials.json").exists()


def _recipe(tmp_path: Path, model, trials: int, extra: str = "") -> Path:
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    (tmp_path / "search_helper.py").write_text(HELPER)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'''
model = "search_helper:model"
model_kwargs = {{path = "{weights}"}}
example_inputs = [[1, 1, 8, 8]]
data = "search_helper:data"
[search]
target = "torch"
trials = {trials}
threads = 1
{extra}
''')
    return recipe


def test_cli_optimize(digits, tmp_path, capsys):
    from modelopt_core.cli import main

    recipe = _recipe(tmp_path, digits[0], 2, '[search.space]\nprune = ["none"]\n')
    assert main(["optimize", str(recipe), "--out", str(tmp_path / "o"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best"]["feasible"] and out["best_recipe"]["backend"] == "torch"
    assert mo.load_artifact(tmp_path / "o" / "best", model=SmallCNN(width=8)).format == "torch"
    # the readable form: the report table, the best recipe, and the files that were written
    assert main(["optimize", str(recipe), "--out", str(tmp_path / "o"), "--trials", "1"]) == 0
    text = capsys.readouterr().out
    assert "| trial 0 |" in text and "\nbest: trial " in text
    assert "\n**Best: trial " in text  # the summary line under the terminal table
    script = next((tmp_path / "o").glob("plotly-*.min.js")).name  # report.html's, beside it
    assert text.rstrip().endswith(f"wrote {tmp_path / 'o'}/: study.db, trials.json, report.md, "
                                  f"report.json, report.html, {script}, best/, "
                                  "final-artifact/")
    assert main(["optimize", str(tmp_path / "missing.toml")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_shipped_search_recipe_runs(tmp_path, capsys):
    """docs/recipes/digits-search.toml as a user runs it (one trial instead of 20)."""
    from modelopt_core.cli import main

    recipe = Path(__file__).resolve().parents[2] / "docs" / "recipes" / "digits-search.toml"
    assert main(["optimize", str(recipe), "--trials", "1", "--out", str(tmp_path / "o"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from modelopt_search.space import targets

    assert out["best_recipe"]["backend"] in targets()  # target "all": any runtime here
    assert (tmp_path / "o" / "report.html").is_file() and (tmp_path / "o" / "study.db").is_file()


@pytest.mark.slow
def test_kill_9_mid_search_then_resume(digits, tmp_path):
    """kill -9 after >= 1 finished trial; a restart fails the stale trial, re-queues it and
    goes on; best/ still loads and is the best so far."""
    recipe = _recipe(tmp_path, digits[0], 50, '[search.space]\nrecovery = ["distill.logits"]\n'
                     'params = {"distill.logits" = {epochs = {ints = [2, 2]}}}\n')
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "modelopt_core", "-q", "optimize", str(recipe), "--out",
           str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and p.poll() is None:
        try:
            done = len(json.loads((out / "trials.json").read_text())["trials"])
        except (OSError, ValueError):
            done = 0
        if done >= 1 and (out / "best.json").exists():
            break
        time.sleep(0.05)
    assert done >= 1, p.stderr.read().decode()[-2000:] if p.poll() is not None else "slow"
    import optuna

    def trials():
        return optuna.load_study(study_name=None, storage=f"sqlite:///{out}/study.db"
                                 ).get_trials(deepcopy=False)

    def states():
        return [t.state.name for t in trials()]

    def mid_trial():
        try:
            return any(t.state.name == "RUNNING" and "worker" in t.user_attrs and t.params
                       for t in trials())
        except Exception:  # noqa: BLE001 - the study is locked by a write the stop froze
            return False

    while time.monotonic() < deadline:  # the next trial has drawn its recipe: kill it mid-trial
        if mid_trial():
            os.kill(p.pid, signal.SIGSTOP)  # frozen: the trial cannot finish between the
            if mid_trial():                 # look and the kill (a fast trial used to)
                break
            os.kill(p.pid, signal.SIGCONT)
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    running = states().count("RUNNING")  # the trial the kill interrupted
    assert running == 1
    best_before = json.loads((out / "best.json").read_text())
    assert mo.load_artifact(out / "best", model=SmallCNN(width=8)).format == "torch"
    r = subprocess.run(cmd[:-2] + ["--trials", "1", "--out", str(out), "--json"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((out / "trials.json").read_text())["trials"]
    finished = [x for x in rows if x["state"] in ("complete", "pruned")]
    assert len(finished) >= done + 1  # grew from where it was
    after = states()
    assert "RUNNING" not in after and after.count("FAIL") == running, after  # stale: failed
    assert len([x for x in after if x != "WAITING"]) == len(finished) + running
    requeued = [t for t in optuna.load_study(study_name=None, storage=f"sqlite:///{out}/"
                                             "study.db").get_trials()
                if "requeued_from" in t.user_attrs]  # ... and its recipe queued again
    assert len(requeued) == 1 and requeued[0].state.name in ("WAITING", "COMPLETE", "PRUNED")
    best = json.loads((out / "best.json").read_text())
    feasible = [x for x in rows if x["state"] == "complete" and x["feasible"]]
    assert best["row"]["objective"] == min(x["objective"] for x in feasible)
    assert best["row"]["objective"] <= best_before["row"]["objective"]
    assert mo.load_artifact(out / "best", model=SmallCNN(width=8)).format == "torch"
