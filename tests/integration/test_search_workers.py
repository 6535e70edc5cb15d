"""Two worker processes share one Optuna study (one SQLite file, as several machines share an
RDB URL): each runs its trials, the study ends with the sum, none lost or duplicated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import torch
from helpers import digits_recipe_module

import modelopt_core as mo
from modelopt_demo.models import SmallCNN

HELPER = digits_recipe_module()


def test_two_workers_share_one_study(tmp_path):
    torch.manual_seed(0)
    torch.save(SmallCNN(width=8).state_dict(), tmp_path / "w.pt")  # accuracy is not the point
    (tmp_path / "worker_helper.py").write_text(HELPER)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'''
model = "worker_helper:model"
model_kwargs = {{path = "{tmp_path / 'w.pt'}"}}
example_inputs = [[1, 1, 8, 8]]
data = "worker_helper:data"
[search]
target = "torch"
max_accuracy_drop = 100.0
threads = 1
profiler_options = {{latency = {{min_time_s = 0.05, warmup = 1}}}}
[search.space]
prune = ["none", "prune.structured"]
precision = ["none", "quantize.bf16", "quantize.dynamic"]
[search.space.params."prune.structured"]
ratio = [0.25, 0.5]
''')
    out = tmp_path / "shared"
    storage = f"sqlite:///{out}/study.db"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "modelopt_core", "-q", "optimize", str(recipe), "--out",
           str(out), "--storage", storage, "--study-name", "shared", "--json"]
    workers = [subprocess.Popen(cmd + ["--trials", str(n)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in (3, 2)]
    results = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, results):
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.get_trials()]
    assert sorted(numbers) == list(range(len(numbers)))  # none lost or doubled
    # finished ones (a recipe queued by a step-by-step rule may still wait for a next run)
    trials = [t for t in study.get_trials() if t.state.is_finished()]
    # complete, or pruned for a no-op step (bn_gamma scores of this untrained net all tie)
    assert all(t.state.name == "COMPLETE" or t.user_attrs["row"].get("no_op")
               for t in trials)
    # 3 + 2 recipes run (a recipe drawn again is not re-run, and not counted)
    assert sum("duplicate_of" not in t.user_attrs["row"] for t in trials) == 5
    pids = {t.user_attrs["worker"] for t in trials}
    assert len(pids) == 2  # both workers ran trials
    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert sorted(r["trial"] for r in rows) == sorted(t.number for t in trials)
    best = json.loads((out / "best.json").read_text())
    # the last worker to finish re-timed its fastest candidates and best/ side by side
    feasible = {r["trial"]: r for r in rows if r["feasible"]}
    assert best["trial"] in feasible and "confirmed_p50_ms" in best["row"]
    assert mo.load_artifact(out / "best", model=SmallCNN(width=8)).format == "torch"
