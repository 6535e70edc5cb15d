"""Two CPU processes (gloo) launched with torchrun run the shared loop under
DistributedDataParallel and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "ddp_distill.py"


def test_two_process_ddp_ranks_end_identical(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPT), "--out", str(out), "--epochs", "2", "--kd"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = load_file(str(out / "rank0.safetensors"))
    w1 = load_file(str(out / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    different = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert not different, f"ranks disagree on {different}"
    h0 = json.loads((out / "rank0.json").read_text())
    h1 = json.loads((out / "rank1.json").read_text())
    assert h0["world_size"] == 2
    # each rank did half of the 12 batches per epoch, and both saw the same averaged loss
    assert [h["steps"] for h in h0["history"]] == [6, 12]
    assert [h["train_loss"] for h in h0["history"]] == [h["train_loss"] for h in h1["history"]]
    assert h0["history"][-1]["train_loss"] < h0["history"][0]["train_loss"]
    # only rank 0 wrote the checkpoint, and it holds the final weights
    ck = load_file(str(out / "ckpt" / "last" / "model.safetensors"))
    assert all(torch.equal(ck[k], w0[k]) for k in w0)
