"""Recovery of a search on a Ray cluster (a real local 2-node cluster, shared by the module's
tests): a worker killed mid-trial (its trial failed, re-queued and run by its replacement) and
a driver killed mid-search (the same command resumes the study)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import modelopt_core as mo
from modelopt_demo.models import SmallCNN

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[serve-ray]'")
optuna = pytest.importorskip("optuna", reason="pip install -e '.[search]'")

from search_ray_helpers import local_cluster, notes, optimize, write_recipe


#: these two race Ray's own clean-up on a loaded 2-core machine and fail there at times (seen in
#: a fresh-clone CI and in 1 of 3 local runs): a killed driver's workers may outlive it for a
#: while (still holding their node's one CPU and a RUNNING trial no recovery may take from a
#: live owner), and a dead node's trial must be caught running between 0.2 s polls. They run
#: on every suite and report XPASS/XFAIL; making them deterministic is an open item (issue 27).
RACES_RAY_CLEANUP = pytest.mark.xfail(strict=False, reason="races Ray's clean-up of a killed "
                                      "driver's workers / a removed node on a loaded machine")


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as c:
        yield c


@pytest.fixture
def recipe(tmp_path):
    return write_recipe(tmp_path)


def test_killed_worker_trial_is_rerun(cluster, recipe, tmp_path):
    """A worker killed mid-trial: its trial is failed and re-queued, a new worker runs the
    rest of its share; the search still ends with every trial of the budget run, the killed
    recipe first among the rest of that worker's share."""
    out = tmp_path / "out"
    out.mkdir()
    storage = f"sqlite:///{out}/study.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "modelopt_core", "-q", "optimize", str(recipe),
                          "--json", "--ray", cluster.address, "--out", str(out), "--trials",
                          "4"], cwd=recipe.parent, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    victim = None  # (trial number, its Ray worker's pid), read from the study file as is
    deadline = time.monotonic() + 120
    while victim is None and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        got = _running_ray_trial(out / "study.db")
        if got is not None:
            os.kill(got[1], signal.SIGKILL)
            # killed mid-trial, unless the trial ended just before (then: the next one)
            if _state(out / "study.db", got[0]) in ("RUNNING", "FAIL"):
                victim = got
    _, err = p.communicate(timeout=240)
    assert victim is not None, "no trial was seen running"
    assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="modelopt-torch-latency", storage=storage)
    killed = study.trials[victim[0]]
    assert killed.state == optuna.trial.TrialState.FAIL
    again = [t for t in study.trials if t.user_attrs.get("requeued_from") == victim[0]]
    assert len(again) == 1 and again[0].state.is_finished()
    # the same recipe (a trial killed before its first draw: as it was queued)
    assert again[0].params == (killed.params or killed.system_attrs["fixed_params"])
    ran = [t for t in study.trials if t.state.is_finished() and t.number != victim[0]
           and "duplicate_of" not in t.user_attrs.get("row", {})]
    assert len(ran) == 4
    said = notes(out)
    assert "died" in said and "re-queued" in said


def _state(db, number):
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return con.execute("SELECT state FROM trials WHERE number = ?", (number,)).fetchone()[0]


def _running_ray_trials(db):
    """[(number, Ray worker pid)] of the trials running on Ray workers, read-only."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            got = con.execute(
                "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'ray'"
            ).fetchall()
    except sqlite3.Error:  # the tables are not created yet, or locked
        return []
    return [(n, json.loads(v)["pid"]) for n, v in got]


def _running_ray_trial(db):
    got = _running_ray_trials(db)
    return got[0] if got else None


@RACES_RAY_CLEANUP
def test_resume_after_killed_driver(cluster, recipe, tmp_path):
    """The driver killed mid-search (its workers go with it): the same command again resumes
    the study; the trial that was running is failed, re-queued and run."""
    out = tmp_path / "out"
    args = ["--ray", cluster.address, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "modelopt_core", "-q", "optimize", str(recipe),
                          "--json", *args, "--trials", "20"], cwd=recipe.parent, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got = None
    deadline = time.monotonic() + 120
    while got is None and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # killed once a trial is complete (best/ saved) and one runs
        if (out / "best.json").exists():
            got = _running_ray_trial(out / "study.db")
    p.kill()
    p.wait()
    assert got is not None, "no trial was seen running"
    deadline = time.monotonic() + 60  # Ray stops the dead driver's workers
    while any(_alive(pid) for _, pid in _running_ray_trials(out / "study.db")) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _state(out / "study.db", got[0])
    res = optimize(recipe, *args, "--trials", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="modelopt-torch-latency",
                              storage=f"sqlite:///{out}/study.db")
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    if left == "RUNNING":  # killed mid-trial: recovered by the resumed search
        assert study.trials[got[0]].state == optuna.trial.TrialState.FAIL
        again = [t for t in study.trials if t.user_attrs.get("requeued_from") == got[0]]
        assert len(again) == 1 and again[0].state.is_finished()
    best = json.loads(res.stdout)["best"]
    assert best is not None
    # best/ holds the best of both runs: the killed run's workers saved theirs as they went
    assert json.loads((out / "best.json").read_text())["trial"] == best["trial"]
    assert best["trial"] in {t.number for t in study.trials if t.state.name == "COMPLETE"}
    assert mo.load_artifact(out / "best", model=SmallCNN(width=8)).format == "torch"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@RACES_RAY_CLEANUP
def test_dead_node_trial_is_rerun(cluster, recipe, tmp_path):
    """A whole node removed mid-trial (its raylet and workers gone): the trial that ran there
    is failed and re-queued, and the rest of that worker's share runs on the node left. Last
    in the module: the cluster keeps one node afterwards."""
    out = tmp_path / "out"
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"]
                and n.get("Resources", {}).get("node:__internal_head__"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "modelopt_core", "-q", "optimize", str(recipe),
                          "--json", "--ray", cluster.address, "--out", str(out), "--trials",
                          "4"], cwd=recipe.parent, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    victim = frozen = None
    deadline = time.monotonic() + 120
    try:
        while victim is None and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            for number, pid, node_id in _running_ray_nodes(out / "study.db"):
                if node_id == head:
                    continue
                # frozen first, so the trial cannot end while the node goes down
                os.kill(pid, signal.SIGSTOP)
                frozen = pid
                if _state(out / "study.db", number) != "RUNNING":  # it ended just before
                    os.kill(pid, signal.SIGCONT)
                    frozen = None
                    break
                cluster.remove_node(next(n for n in cluster.worker_nodes
                                         if n.node_id == node_id), allow_graceful=False)
                os.kill(pid, signal.SIGKILL)  # the node's processes are gone with it
                frozen, victim = None, number
                break
        _, err = p.communicate(timeout=300)
    finally:
        if frozen is not None:  # an error before the node went: not left stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGKILL)
    assert victim is not None, "no trial was seen running on the second node"
    assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="modelopt-torch-latency",
                              storage=f"sqlite:///{out}/study.db")
    assert study.trials[victim].state == optuna.trial.TrialState.FAIL
    again = [t for t in study.trials if t.user_attrs.get("requeued_from") == victim]
    assert len(again) == 1 and again[0].state.is_finished()
    assert again[0].user_attrs["ray"]["node_id"] == head  # rerun on the node left
    ran = [t for t in study.trials if t.state.is_finished() and t.number != victim
           and "duplicate_of" not in t.user_attrs.get("row", {})]
    assert len(ran) == 4
    assert "died" in notes(out)


def _running_ray_nodes(db):
    """[(number, worker pid, Ray node id)] of the trials running on Ray workers, read-only."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            got = con.execute(
                "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'ray'"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [(n, json.loads(v)["pid"], json.loads(v)["node_id"]) for n, v in got]
