"""Shared by the Ray search tests (tests/integration/test_search_ray*.py): a local 2-node Ray
cluster, a small digits search recipe and the ``modelopt optimize`` command as a user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers import digits_recipe_module

HELPER = digits_recipe_module()

SEARCH = '''
[search]
target = "torch"
max_accuracy_drop = 100.0
threads = 1
profiler_options = {latency = {min_time_s = 0.05, warmup = 1}}
[search.space]
prune = ["none", "prune.structured"]
precision = ["none", "quantize.bf16", "quantize.dynamic"]
[search.space.params."prune.structured"]
ratio = [0.25, 0.5]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    """A local Ray cluster of two nodes of one CPU each (two raylets on this machine), this
    process connected to it as a driver."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                       "include_dashboard": False})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)  # this process: a driver too
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


SLOW_EVAL = '''
_data = data

def data():
    import time
    d = _data()
    fn = d["eval_fn"]

    def eval_fn(*args, **kwargs):  # slowed: each trial runs long enough to be caught running
        time.sleep({seconds})
        return fn(*args, **kwargs)

    d["eval_fn"] = eval_fn
    return d
'''


def write_recipe(tmp_path: Path, eval_sleep_s: float = 0.0) -> Path:
    """The search recipe (an untrained SmallCNN(width=8) on digits, torch target, 1 thread);
    ``eval_sleep_s``: its eval_fn sleeps that long first (a trial lasts at least that)."""
    import torch

    from modelopt_demo.models import SmallCNN

    torch.manual_seed(0)
    torch.save(SmallCNN(width=8).state_dict(), tmp_path / "w.pt")  # accuracy is not the point
    (tmp_path / "worker_helper.py").write_text(
        HELPER + (SLOW_EVAL.format(seconds=eval_sleep_s) if eval_sleep_s else ""))
    r = tmp_path / "r.toml"
    r.write_text(f'''
model = "worker_helper:model"
model_kwargs = {{path = "{tmp_path / 'w.pt'}"}}
example_inputs = [[1, 1, 8, 8]]
data = "worker_helper:data"
''' + SEARCH)
    return r


def optimize(recipe: Path, *args: str, timeout: float = 240) -> Any:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "modelopt_core", "-q", "optimize",
                           str(recipe), "--json", *args], cwd=recipe.parent, env=env,
                          check=False, capture_output=True, text=True, timeout=timeout)


def notes(out: Path) -> str:
    notes = json.loads((out / "report.json").read_text())["notes"]
    return " ".join(n for group in notes.values() for n in group)
