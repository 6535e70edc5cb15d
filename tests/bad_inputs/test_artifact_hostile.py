"""Artifact folders under abuse, issue 23: manifest file entries the file system refuses (a name
far too long, a symlink loop) are ArtifactErrors naming the entry (item 11), and what saves
killed with SIGKILL left beside an artifact is removed by the next load, never a live save's
temp folder (item 13)."""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch

import modelopt_core as mo
from modelopt_core import artifact as artifact_mod
from modelopt_core import persist

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork, SIGKILL, flock: POSIX")


def linear_art(bias: float = 0.0) -> mo.ModelArtifact:
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 2).eval()
    with torch.no_grad():
        m.bias.fill_(bias)
    return mo.ModelArtifact("torch", m, (mo.TensorSpec("x", ("batch", 4)),),
                            lineage=(mo.Step("original", "source"),))


def bias_of(path: Path) -> float:
    return float(mo.load_artifact(path, model=torch.nn.Linear(4, 2)).model.bias[0].detach())


def dot_entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def add_entry(path: Path, name: str) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    (path / "manifest.json").write_text(json.dumps(m))


# ---- item 11: entries the file system refuses -------------------------------------------------

def test_a_5000_character_file_name_is_an_artifact_error(tmp_path):
    path = linear_art().save(tmp_path / "a")
    name = "w" * 4990 + ".safetensors"
    add_entry(path, name)
    with pytest.raises(mo.ArtifactError) as e:  # was a raw OSError (ENAMETOOLONG)
        mo.load_artifact(path, model=torch.nn.Linear(4, 2))
    msg = str(e.value)
    assert str(path / "manifest.json") in msg and "file entry 'wwww" in msg
    assert f"({len(name)} characters)" in msg and "longer than this file system allows" in msg
    assert "re-save the artifact" in msg and len(msg) < 1000  # named, not dumped


def test_a_component_over_name_max_in_a_sub_folder(tmp_path):
    path = linear_art().save(tmp_path / "a")
    add_entry(path, "sub/" + "x" * 300)
    with pytest.raises(mo.ArtifactError, match="sub/xxx"):  # (its folder is missing)
        mo.load_artifact(path, model=torch.nn.Linear(4, 2))


def test_an_entry_through_a_symlink_loop_is_typed(tmp_path):
    path = linear_art().save(tmp_path / "a")
    os.symlink("loop", path / "loop")
    add_entry(path, "loop/x.bin")
    with pytest.raises(mo.ArtifactError, match="loop"):
        mo.load_artifact(path, model=torch.nn.Linear(4, 2))


def test_a_load_path_far_too_long_is_typed(tmp_path):
    with pytest.raises(mo.ArtifactError, match="cannot be accessed .*ENAMETOOLONG"):
        mo.load_artifact(tmp_path / ("p" * 5000), model=torch.nn.Linear(4, 2))


# ---- item 13: leftovers of killed saves ------------------------------------------------------

def fork(fn) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            fn()
        except BaseException:  # noqa: BLE001 (reported by the exit code)
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def wait(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("child process hung")
        time.sleep(0.01)


@pytest.mark.parametrize("crash", ["writing", "before_swap"])
def test_load_removes_what_a_killed_save_left(tmp_path, crash):
    """A save killed with SIGKILL (while writing the files, or with the new artifact complete
    just before the swap) leaves ``.a.tmp-*`` and ``.a.lock``; the next load removes them and
    loads the artifact that was there."""
    path = linear_art(1.0).save(tmp_path / "a")

    def child():
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        if crash == "writing":
            real = artifact_mod._write_model

            def write_then_die(art, folder, **kw):
                real(art, folder, **kw)
                die()
            artifact_mod._write_model = write_then_die
        else:
            persist.swap_in = die
        linear_art(2.0).save(path)

    assert wait(fork(child)) == -signal.SIGKILL
    left = dot_entries(tmp_path)
    assert [n for n in left if n.startswith(".a.tmp-")] and ".a.lock" in left, left
    assert bias_of(path) == 1.0
    assert dot_entries(tmp_path) == []  # the load removed them


def test_load_keeps_a_live_saves_temp_folder_and_other_names(tmp_path):
    """While another process is saving ``a`` (its temp folder half written), loading ``a``
    keeps that folder; once the saver is killed, the next load removes it. Folders of other
    names, or not of the exact temp pattern, are never touched."""
    path = linear_art(1.0).save(tmp_path / "a")
    others = [tmp_path / ".b.tmp-abcd1234", tmp_path / ".a.tmp-abc", tmp_path / ".ab.tmp-abcd1234",
              tmp_path / ".a.tmp-abcd1234.x"]
    for d in others:
        d.mkdir()
        (d / "f").write_text("x")
    marker = tmp_path / "saving"

    def child():
        def hold(folder):  # the files are written; the save holds here, lock taken
            marker.write_text("1")
            time.sleep(60)
        persist.fsync_files = hold
        linear_art(2.0).save(path)

    pid = fork(child)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the saver never started"
            time.sleep(0.01)
        live = [n for n in dot_entries(tmp_path) if n.startswith(".a.tmp-") and len(n) == 15]
        assert len(live) == 1
        assert bias_of(path) == 1.0  # loads the artifact in place...
        assert (tmp_path / live[0]).is_dir()  # ...and leaves the live save's folder alone
    finally:
        os.kill(pid, signal.SIGKILL)
        assert wait(pid) == -signal.SIGKILL
    assert bias_of(path) == 1.0
    assert not (tmp_path / live[0]).exists()  # its writer is gone: removed
    assert all((d / "f").exists() for d in others)


def test_load_of_a_missing_artifact_still_restores_it(tmp_path):
    """A save killed between the swap's two renames leaves no artifact at the path: the load
    restores the previous one (not cleaned away) and removes the rest."""
    path = linear_art(1.0).save(tmp_path / "a")

    def child():
        real = os.replace

        def replace(src, dst):
            real(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        linear_art(2.0).save(path)

    assert wait(fork(child)) == -signal.SIGKILL
    assert not path.exists()
    assert bias_of(path) == 1.0
    assert dot_entries(tmp_path) == []
