"""Traffic capture (modelopt_serve.capture): thread safety under concurrent requests and a
busy writer, crash safety with a real SIGKILL mid-write, a disk error that turns capture off
without failing a request, bad requests skipped, and the typed errors of a folder that is not
a capture of this model (at server start and for --calibration-from)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from modelopt_serve.capture import Capture

from modelopt_core.artifact import TensorSpec
from modelopt_core.captured import MANIFEST, read_captured
from modelopt_core.errors import ConfigError, DataError
from modelopt_core.samples import read_samples


def _rows(start: int, n: int) -> list[np.ndarray]:
    return [np.arange(start, start + n, dtype=np.int64)[:, None].repeat(4, 1)]


def _check_folder(folder: Path) -> dict:
    """The folder as a reader finds it: a parseable manifest whose shards all exist and load
    in full, every shard-*.npz complete, and no data file but those."""
    m = json.loads((folder / MANIFEST).read_text())
    for f in folder.glob("shard-*.npz"):
        with np.load(f) as z:  # a partial file would fail here (zip directory at the end)
            assert z.files == ["x"] and z["x"].ndim == 2 and z["x"].shape[0] > 0
    assert all((folder / s["file"]).is_file() for s in m["shards"])
    return m


def test_concurrent_offers_while_the_writer_flushes(tmp_path):
    """8 request threads offer distinct samples while the writer flushes every millisecond:
    every sample is counted once, the reservoir is full and holds distinct offered samples."""
    c = Capture(tmp_path, 1.0, 50, ["x"], seed=3, shard_size=8, flush_s=0.001)
    threads, per, rows = 8, 150, 3

    def client(k: int) -> None:
        for j in range(per):
            c.offer(_rows((k * per + j) * rows, rows))
            c.stats()

    ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    c.close()
    total = threads * per * rows
    assert c.error is None and c.stats()["seen"] == total
    m = _check_folder(tmp_path)
    got = read_captured(tmp_path, None).arrays["x"][:, 0]
    assert m["seen"] == m["eligible"] == total and m["kept"] == 50
    assert len(set(got.tolist())) == 50 and got.max() < total
    assert {f.name for f in tmp_path.glob("shard-*.npz")} == {s["file"] for s in m["shards"]}


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from modelopt_serve.capture import Capture
    c = Capture(sys.argv[1], 1.0, 600, ["x"], shard_size=150, flush_s=0.02)
    print("started", flush=True)
    rng = np.random.default_rng(c.seen)
    while True:  # a heavy stream: a full reservoir rewrites shards on every flush
        c.offer([rng.random((16, 4096), np.float32)])
""")


def _seen(folder: Path) -> int:
    try:
        return json.loads((folder / MANIFEST).read_text())["seen"]
    except (OSError, ValueError):
        return 0


def test_sigkill_mid_write_leaves_no_partial_shard(tmp_path):
    """A capturing process is killed (SIGKILL) while it writes a shard, five times on the same
    folder: every visible shard-*.npz is complete, the manifest lists only existing shards,
    the plain --calibration reader reads the folder, and the next start continues the counts
    and removes the leftovers."""
    folder = tmp_path / "cap"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    seen_before, mid_write = 0, 0
    for _ in range(5):
        p = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert p.stdout.readline().strip() == b"started"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _seen(folder) <= seen_before:
            time.sleep(0.01)  # the run has written a manifest of its own
        while time.monotonic() < deadline:  # then kill it while a temporary shard exists
            if any(n.endswith(".part") for n in os.listdir(folder)):
                mid_write += 1
                break
        p.send_signal(signal.SIGKILL)
        p.wait()
        m = _check_folder(folder)
        assert m["seen"] > seen_before
        assert m["kept"] == min(600, m["eligible"])  # a consistent reservoir, nothing lost
        if m["shards"]:
            arrays, _ = read_samples(folder, (TensorSpec("x", ("batch", 4096), "float32"),))
            assert arrays["x"].shape[0] >= m["kept"]  # stale complete files, never partial
        c = Capture(folder, 1.0, 600, ["x"], shard_size=150, flush_s=60)  # a restart
        assert c.seen == m["seen"]
        assert {f.name for f in folder.glob("shard-*.npz")} == {s["file"] for s in m["shards"]}
        assert not [n for n in os.listdir(folder) if n.endswith(".part")]
        c.close()
        seen_before = m["seen"]
    assert mid_write >= 1  # at least one kill landed during a shard's write


def test_disk_error_turns_capture_off_once(tmp_path, caplog):
    folder = tmp_path / "cap"
    c = Capture(folder, 1.0, 100, ["x"], shard_size=4, flush_s=60)
    c.offer(_rows(0, 4))
    c.flush()
    shutil.rmtree(folder)  # the disk goes away under the server
    with caplog.at_level(logging.WARNING, logger="modelopt.serve"):
        c.offer(_rows(4, 4))
        c.flush()
        for k in range(3):  # requests go on: no raise, nothing more logged
            c.offer(_rows(8 + 4 * k, 4))
            c.flush()
        c.close()
    failed = [r for r in caplog.records if "capture_failed" in r.getMessage()]
    assert len(failed) == 1 and "FileNotFoundError" in failed[0].getMessage()
    assert c.error is not None and c.stats()["error"] == c.error


def test_bad_requests_are_skipped_not_raised(tmp_path, caplog):
    import torch

    c = Capture(tmp_path, 1.0, 100, ["a", "b"], shard_size=100, flush_s=60)
    with caplog.at_level(logging.WARNING, logger="modelopt.serve"):
        c.offer([np.zeros((2, 3))])  # one input of two
        c.offer([np.zeros((2, 3)), np.zeros((3, 3))])  # batch dims differ
        c.offer([np.float32(1), np.float32(2)])  # no batch dim
        c.offer([torch.ones(2, 3), torch.zeros(2, dtype=torch.int64)])  # good: tensors too
    c.close()
    assert len([r for r in caplog.records if "capture_skipped" in r.getMessage()]) == 1
    got = read_captured(tmp_path, None)
    assert got.count == 2 and list(got.arrays) == ["a", "b"]
    assert got.arrays["a"].dtype == np.float32 and got.arrays["b"].dtype == np.int64


def test_outputs_never_stored(tmp_path):
    c = Capture(tmp_path, 1.0, 10, ["x"], flush_s=60)
    c.offer(_rows(0, 5))
    c.close()
    m = json.loads((tmp_path / MANIFEST).read_text())
    assert m["outputs"] is False
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("shard-")) \
        == [".capture.lock", MANIFEST]
    for s in m["shards"]:
        with np.load(tmp_path / s["file"]) as z:
            assert z.files == ["x"]


def test_start_refuses_foreign_folders(tmp_path):
    with pytest.raises(ConfigError, match="rate"):
        Capture(tmp_path / "a", 0.0, 10, ["x"])
    with pytest.raises(ConfigError, match="max_samples"):
        Capture(tmp_path / "a", 0.5, 0, ["x"])
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "calib.npy", np.zeros((2, 4)))
    with pytest.raises(ConfigError, match="not a capture folder") as e:
        Capture(data, 0.5, 10, ["x"])
    assert str(data) in str(e.value)
    assert [f.name for f in data.iterdir()] == ["calib.npy"]  # the folder is untouched
    Capture(tmp_path / "cap", 1.0, 10, ["x"]).close()
    with pytest.raises(ConfigError, match=r"inputs \['x'\].*takes \['y'\]"):
        Capture(tmp_path / "cap", 1.0, 10, ["y"])
    first = Capture(tmp_path / "cap", 1.0, 10, ["x"])  # one writer per folder
    with pytest.raises(ConfigError, match="another server .* is capturing into"):
        Capture(tmp_path / "cap", 1.0, 10, ["x"])
    first.close()
    Capture(tmp_path / "cap", 1.0, 10, ["x"]).close()  # free again once closed


def test_calibration_from_typed_errors(tmp_path):
    spec = (TensorSpec("x", ("batch", 4), "float32"),)
    with pytest.raises(DataError, match="no such folder"):
        read_captured(tmp_path / "nope", spec)
    with pytest.raises(DataError, match="not a capture folder"):
        read_captured(tmp_path, spec)
    cap = tmp_path / "cap"
    Capture(cap, 1.0, 10, ["x"]).close()
    with pytest.raises(DataError, match="holds no samples yet") as e:
        read_captured(cap, spec)
    assert str(cap) in str(e.value)
    c = Capture(cap, 1.0, 10, ["x"])
    c.offer([np.zeros((3, 5), np.float32)])  # 5 features: another model's traffic
    c.close()
    with pytest.raises(DataError, match=r"shape \(3, 5\) does not fit"):
        read_captured(cap, spec)
    with pytest.raises(DataError, match="captured from another model"):
        read_captured(cap, (TensorSpec("image", ("batch", 5), "float32"),))
    (cap / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        read_captured(cap, spec)


def test_one_capture_for_both_purposes_is_split_never_shared(tmp_path):
    """``--calibration-from DIR --eval-from DIR``: a quarter held out (at least one batch),
    the rest calibrates, no sample in both; the metric says how many and when."""
    import torch

    import modelopt_core as mo
    from modelopt_core.captured import use_captured

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    s = mo.Session(model, (torch.randn(2, 4),), progress=False)
    c = Capture(tmp_path, 1.0, 100, ["input"], seed=0, flush_s=60)
    c.offer([np.arange(240, dtype=np.float32).reshape(60, 4)])
    c.close()
    use_captured(s, tmp_path, tmp_path)
    cal = torch.cat([b[0] for b in s.calibration_data])
    held = torch.cat([b[0] for b in s.eval_fn.fn.agreement.batches])
    assert len(cal) == 45 and len(held) == 15
    rows = {tuple(r.tolist()) for r in cal}
    assert not rows & {tuple(r.tolist()) for r in held}
    assert len(rows | {tuple(r.tolist()) for r in held}) == 60
    assert s.eval_fn(s.runner()) == 100.0  # the production model agrees with itself
    metric = s.eval_fn.metric
    assert metric.startswith("top-1 agreement with the production model (%) on 15 captured")
    assert f"calibrated on 45 captured sample(s) from {tmp_path}" in metric
    assert isinstance(s.eval_fn.modelopt_fingerprint, str)  # the step cache can key on it
    import cloudpickle  # search workers on Ray get the eval_fn pickled

    again = cloudpickle.loads(cloudpickle.dumps(s.eval_fn))
    assert again(s.runner()) == 100.0 and again.metric == metric
