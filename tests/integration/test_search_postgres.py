"""The search's study in a real PostgreSQL server (``tests/pg_fixture.py``): two ``modelopt
optimize`` processes share one study (as two machines would), and a database that refuses
is a typed error that names it, password masked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

optuna = pytest.importorskip("optuna", reason="pip install -e '.[search]'")

from helpers import digits_recipe_module

import modelopt_core as mo
from modelopt_demo.models import SmallCNN

HELPER = digits_recipe_module()


@pytest.fixture
def recipe(tmp_path):
    torch.manual_seed(0)
    torch.save(SmallCNN(width=8).state_dict(), tmp_path / "w.pt")  # accuracy is not the point
    (tmp_path / "worker_helper.py").write_text(HELPER)
    r = tmp_path / "r.toml"
    r.write_text(f'''
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
    return r


def _cmd(recipe, *args):
    return [sys.executable, "-m", "modelopt_core", "-q", "optimize", str(recipe), "--json",
            *args]


def test_two_processes_share_one_postgres_study(recipe, postgres_url, tmp_path):
    out = tmp_path / "shared"  # one output folder: the last to finish confirms and saves
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(_cmd(recipe, "--out", str(out), "--storage", postgres_url,
                                     "--study-name", "pg", "--trials", str(n)),
                                cwd=recipe.parent, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for n in (3, 2)]
    results = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, results):
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    numbers = [t.number for t in study.get_trials()]
    assert sorted(numbers) == list(range(len(numbers)))  # none lost or doubled
    trials = [t for t in study.get_trials() if t.state.is_finished()]
    assert all(t.state.name == "COMPLETE" or t.user_attrs["row"].get("no_op")
               for t in trials)
    # 3 + 2 recipes run, each by one process (a claimed trial is never run twice)
    ran = [t for t in trials if "duplicate_of" not in t.user_attrs["row"]]
    assert len(ran) == 5
    assert all(t.user_attrs["owner"]["trial_id"] == t._trial_id for t in ran)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert sorted(r["trial"] for r in rows) == sorted(t.number for t in trials)
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] in {r["trial"] for r in rows if r["feasible"]}
    assert "confirmed_p50_ms" in best["row"]  # one best, re-timed side by side
    assert mo.load_artifact(out / "best", model=SmallCNN(width=8)).format == "torch"


def test_refusing_postgres_is_a_typed_error(recipe, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql+psycopg2://user:s3cret@127.0.0.1:{port}/modelopt"
    p = subprocess.run(_cmd(recipe, "--storage", url, "--out", str(tmp_path / "out")),
                       check=False, cwd=recipe.parent, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0
    assert f"127.0.0.1:{port}" in p.stderr and "cannot open storage" in p.stderr, \
        p.stderr[-2000:]
    assert "s3cret" not in p.stderr and "***" in p.stderr
    assert "Traceback" not in p.stderr
