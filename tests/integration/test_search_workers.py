"""Two worker processes share one Optuna study (one SQLite file, as several machines share an
RDB URL): each runs its trials, the study ends with the sum, none lost or duplicated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import torch

from modelopt_demo.models import SmallCNN

HELPER = '''
import torch
from modelopt_demo.data import accuracy_fn, load_digits_data
from modelopt_demo.models import SmallCNN

def model(path):
    m = SmallCNN(width=8)
    m.load_state_dict(torch.load(path))
    return m.eval()

def data():
    torch.set_num_threads(1)
    d = load_digits_data()
    return {"calibration_data": d.calibration[:4], "eval_fn": accuracy_fn(d.test[:4])}
'''


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
prune = ["none"]
precision = ["none", "quantize.bf16"]
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
    trials = study.get_trials()
    assert len(trials) == 5 and sorted(t.number for t in trials) == list(range(5))
    assert all(t.state.name == "COMPLETE" for t in trials)
    pids = {t.user_attrs["worker"] for t in trials}
    assert len(pids) == 2  # both workers ran trials
    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert sorted(r["trial"] for r in rows) == list(range(5))
    best = json.loads((out / "best.json").read_text())
    assert best["row"]["objective"] == min(r["objective"] for r in rows if r["feasible"])
