"""The search on a Ray cluster: a real local 2-node cluster (``ray.cluster_utils.Cluster``, one
CPU each, shared by the module's tests), ``modelopt optimize --ray ADDRESS`` as a user runs it
(a subprocess), ``Session.optimize(executor="ray")`` with a real PostgreSQL study, a worker
killed mid-trial, and the typed errors of a cluster or a database that is not there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[serve-ray]'")
optuna = pytest.importorskip("optuna", reason="pip install -e '.[search]'")

from search_ray_helpers import free_port, local_cluster, notes, optimize, write_recipe

import modelopt_core as mo
from modelopt_demo.models import SmallCNN


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as c:
        yield c


@pytest.fixture
def recipe(tmp_path):
    return write_recipe(tmp_path)


def _nodes(rows):
    return {r["node"] for r in rows if r.get("node")}


def test_cli_search_runs_trials_on_both_nodes(cluster, recipe, tmp_path):
    out = tmp_path / "out"
    p = optimize(recipe, "--ray", cluster.address, "--out", str(out), "--trials", "4")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout)
    rows = json.loads((out / "trials.json").read_text())["trials"]
    ran = [r for r in rows if "duplicate_of" not in r]
    assert len(ran) == 4
    ids = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
    assert {n.rpartition("/")[2] for n in _nodes(rows)} == ids  # each node ran trials
    # the study in the out folder (every node is on this machine): no trial run twice
    study = optuna.load_study(study_name="modelopt-torch-latency",
                              storage=f"sqlite:///{out}/study.db")
    assert len({t.user_attrs["owner"]["trial_id"] for t in study.trials
                if "owner" in t.user_attrs}) == sum("owner" in t.user_attrs
                                                    for t in study.trials)
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == res["best"]["trial"]
    assert "confirmed_p50_ms" in best["row"]  # re-timed side by side, here
    art = mo.load_artifact(out / "best", model=SmallCNN(width=8))
    assert art.format == "torch"
    said = notes(out)
    assert "Ray cluster" in said and "not compared with each other" in said


def test_session_optimize_on_ray_with_postgres(cluster, postgres_url, tmp_path, digits):
    """The Python API ships the session's pieces (a closure eval_fn included) to the workers;
    the study lives in PostgreSQL."""
    from modelopt_demo.data import accuracy_fn

    torch.manual_seed(0)
    model = SmallCNN(width=8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = mo.Session(model, (torch.randn(1, 1, 8, 8),), calibration_data=digits.calibration[:4],
                   eval_fn=accuracy_fn(digits.test[:4]), progress=False)
    res = s.optimize(target="torch", max_accuracy_drop=100.0, budget_trials=4, threads=1,
                     executor="ray", ray_address=cluster.address, storage=postgres_url,
                     study_name="api", out_dir=tmp_path / "out",
                     space={"prune": ["none", "prune.structured"],
                            "precision": ["none", "quantize.dynamic"]},
                     profiler_options={"latency": {"min_time_s": 0.05, "warmup": 1}})
    study = optuna.load_study(study_name="api", storage=postgres_url)
    done = [t for t in study.trials if t.state.is_finished()]
    assert sum("duplicate_of" not in t.user_attrs["row"] for t in done) == 4
    assert len({t.user_attrs["ray"]["node_id"] for t in done}) == 2
    assert res.best is not None and res.best_row["trial"] in {t.number for t in done}
    assert (tmp_path / "out" / "best").is_dir()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_contenders_are_ranked_per_node():
    """Trials timed on different nodes are not ranked against each other: the fastest few of
    each node are re-timed side by side at the end."""
    from modelopt_search.confirm import CONFIRM_TOP, contenders

    def row(trial, node, ms):
        return {"trial": trial, "backend": "onnxruntime", "objective": ms, "accuracy": 90.0,
                "state": "complete", "feasible": True, "node": node}

    fast = [row(i, "a/1", 1.0 + i) for i in range(CONFIRM_TOP + 2)]
    slow = [row(10 + i, "b/2", 5.0 + i) for i in range(CONFIRM_TOP + 2)]  # a slower machine
    got = [r["trial"] for r in contenders(fast + slow)]
    assert got == list(range(CONFIRM_TOP)) + [10 + i for i in range(CONFIRM_TOP)]


def test_storage_passwords_are_masked():
    from modelopt_search.study import masked

    assert masked("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert masked("sqlite:///out/study.db") == "sqlite:///out/study.db"


def test_bad_cluster_address_is_a_typed_error(recipe, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    p = optimize(recipe, "--ray", address, "--out", str(tmp_path / "out"), timeout=120)
    assert p.returncode != 0
    assert address in p.stderr and "Ray cluster" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_sqlite_study_refused_when_a_node_is_another_machine(cluster, recipe, tmp_path):
    """A node whose host is not this one (a raylet in its own UTS namespace: another hostname,
    as a second machine has) cannot share the out folder's SQLite study: a typed error asks
    for a PostgreSQL URL. Last in the module: the extra node is stopped at the end."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-u", "true"], check=False, capture_output=True).returncode != 0:
        pytest.skip("needs unshare -u (root, or a user namespace) to give a node another "
                    "hostname")
    alive = sum(n["Alive"] for n in ray.nodes())
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    start = (f"hostname modelopt-other-host && exec {ray_cli} start "
             f"--address={cluster.address} --num-cpus=1 --block")
    node = subprocess.Popen(["unshare", "-u", "sh", "-c", start], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while sum(n["Alive"] for n in ray.nodes()) <= alive:
            assert time.monotonic() < deadline and node.poll() is None, "the node did not join"
            time.sleep(0.5)
        p = optimize(recipe, "--ray", cluster.address, "--out", str(tmp_path / "out"))
        assert p.returncode != 0
        assert "modelopt-other-host" in p.stderr and "--storage postgresql://" in p.stderr, \
            p.stderr[-2000:]
        assert "Traceback" not in p.stderr
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
