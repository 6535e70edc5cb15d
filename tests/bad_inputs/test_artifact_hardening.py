"""Artifact persistence under abuse: saves that must not delete what is not theirs, crashes
(kill -9) and concurrent saves mid-swap, unlisted files, malformed manifests and structure
records, and failing writes (ENOSPC, read-only, library errors). Issue 10, items 1-5."""

from __future__ import annotations

import copy
import errno
import json
import os
import signal
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import modelopt_core as mo
from modelopt_core import artifact as artifact_mod
from modelopt_core import folder as folder_mod
from modelopt_core import persist
from modelopt_core.artifact import sha256_file
from modelopt_core.structure import rebuild_structure


def linear_art(bias: float = 0.0) -> mo.ModelArtifact:
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 2).eval()
    with torch.no_grad():
        m.bias.fill_(bias)
    return mo.ModelArtifact("torch", m, (mo.TensorSpec("x", ("batch", 4)),),
                            lineage=(mo.Step("original", "source"),))


def onnx_art() -> mo.ModelArtifact:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                          [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return mo.ModelArtifact("onnx", m, (mo.TensorSpec("x", ("batch", 4)),),
                            lineage=(mo.Step("original", "source"),))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def bias_of(path: Path) -> float:
    return float(mo.load_artifact(path, model=torch.nn.Linear(4, 2)).model.bias[0].detach())


def rewrite_manifest(folder: Path, change) -> None:
    mp = folder / "manifest.json"
    m = json.loads(mp.read_text())
    change(m)
    mp.write_text(json.dumps(m))


# ---- item 1: save never deletes what is not an artifact -------------------------------------

def test_save_onto_non_artifact_folder_refuses_and_keeps_every_file(tmp_path):
    user = tmp_path / "project"
    (user / "src").mkdir(parents=True)
    (user / "notes.txt").write_text("my notes")
    (user / "src" / "main.py").write_text("print(1)")
    before = snapshot(user)
    for kw in ({}, {"overwrite": True}, {"overwrite": False}):
        with pytest.raises(mo.ArtifactError, match="not a modelopt artifact.*refusing"):
            linear_art().save(user, **kw)
    assert snapshot(user) == before
    assert leftovers(tmp_path) == []


def test_folder_with_foreign_manifest_json_is_not_an_artifact(tmp_path):
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text(json.dumps({"name": "my app", "icons": []}))
    before = snapshot(web)
    with pytest.raises(mo.ArtifactError, match="not a modelopt manifest"):
        linear_art().save(web)
    assert snapshot(web) == before


def test_artifact_with_a_user_file_added_is_not_replaced(tmp_path):
    path = linear_art().save(tmp_path / "a")
    (path / "README.md").write_text("results: ...")
    before = snapshot(path)
    with pytest.raises(mo.ArtifactError, match="does not list.*README.md"):
        linear_art(1.0).save(path)
    assert snapshot(path) == before


@pytest.mark.parametrize("where", [".", "..", "CWD_ABS"])
def test_save_onto_working_folder_or_parent_never_deletes(tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    linear_art().save(work)  # the cwd even is an artifact: still refused
    monkeypatch.chdir(work)
    before, parent_before = snapshot(work), snapshot(tmp_path)
    target = str(work) if where == "CWD_ABS" else where
    with pytest.raises(mo.ArtifactError, match="working folder"):
        linear_art(1.0).save(target)
    assert snapshot(work) == before and snapshot(tmp_path) == parent_before


def test_save_onto_a_file_is_a_typed_error(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"precious")
    with pytest.raises(mo.ArtifactError, match="not a folder"):
        linear_art().save(f)
    assert f.read_bytes() == b"precious"


def test_overwrite_flag_and_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bias_of(linear_art(1.0).save(empty, overwrite=False)) == 1.0
    before = snapshot(empty)
    with pytest.raises(mo.ArtifactError, match="overwrite=False"):
        linear_art(2.0).save(empty, overwrite=False)
    assert snapshot(empty) == before
    assert bias_of(linear_art(2.0).save(empty)) == 2.0  # overwrite=True is the default
    assert leftovers(tmp_path) == []


# ---- item 2: crashes and concurrent saves ----------------------------------------------------

def in_child(fn, timeout: float = 30.0) -> int:
    """Run ``fn`` in a forked child; its exit code (-9 when it killed itself)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
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


def kill9_after_replace(n: int):
    """Make the n-th os.replace of this process (in the child) its last act: kill -9."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(1)
        real(src, dst)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
    return replace


@pytest.mark.parametrize("crash, survivor", [("writing", 1.0), ("between_renames", 1.0),
                                             ("after_swap", 2.0)])
def test_kill9_during_save_leaves_path_loadable_and_next_save_cleans(tmp_path, crash, survivor):
    path = linear_art(1.0).save(tmp_path / "a")

    def child():
        if crash == "writing":
            def die(art, folder, **kw):
                (folder / "weights.safetensors").write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
            artifact_mod._write_model = die
        else:
            os.replace = kill9_after_replace(1 if crash == "between_renames" else 2)
        linear_art(2.0).save(path)

    assert in_child(child) == -signal.SIGKILL
    assert leftovers(tmp_path)  # the crash left its temp folders behind
    assert bias_of(path) == survivor  # recovered (rolled back) on load if needed
    linear_art(3.0).save(path)
    assert bias_of(path) == 3.0
    assert leftovers(tmp_path) == []  # the next save removed what the crash left


def test_crash_between_renames_recovered_by_next_save(tmp_path):
    path = linear_art(1.0).save(tmp_path / "a")

    def child():
        os.replace = kill9_after_replace(1)
        linear_art(2.0).save(path)

    assert in_child(child) == -signal.SIGKILL
    assert not path.exists()  # the crash window: nothing at the path...
    with pytest.raises(mo.ArtifactError, match="overwrite=False"):
        linear_art(3.0).save(path, overwrite=False)  # ...but the old artifact is restored first
    assert bias_of(path) == 1.0


def test_cleanup_touches_only_this_paths_leftovers(tmp_path):
    linear_art().save(tmp_path / "a")
    mine = [tmp_path / ".a.tmp-abcd1234", tmp_path / ".a.old-zz_9y8x7"]
    others = [tmp_path / ".a.tmp-x.tmp-abcd1234", tmp_path / ".b.old-abcd1234",
              tmp_path / ".ab.tmp-abcd1234"]
    for d in mine + others:
        d.mkdir()
        (d / "f").write_text("x")
    linear_art(1.0).save(tmp_path / "a")
    assert not any(d.exists() for d in mine)
    assert all((d / "f").exists() for d in others)


def test_live_save_blocks_cleanup_and_a_second_save_times_out_typed(tmp_path, monkeypatch):
    path = linear_art(1.0).save(tmp_path / "a")
    monkeypatch.setattr(persist, "LOCK_TIMEOUT_S", 0.2)
    with persist.locked(path.resolve()):  # another save holds the path
        live = persist.new_temp(path.resolve())
        with pytest.raises(mo.ArtifactError, match="another process"):
            linear_art(2.0).save(path)
        assert live.is_dir()  # a live save's temp folder is never cleaned
    live.rmdir()
    assert bias_of(path) == 1.0 and leftovers(tmp_path) == []


def test_concurrent_saves_from_two_processes(tmp_path):
    path = tmp_path / "a"

    def saver(bias: float):
        def run():
            real = os.replace

            def slow_replace(src, dst):  # widen the window between the swap's two renames
                real(src, dst)
                time.sleep(0.02)
            os.replace = slow_replace
            time.sleep(max(0.0, start - time.time()))  # both start together
            for _ in range(6):
                linear_art(bias).save(path)
        return run

    pids, start = [], time.time() + 0.3
    for b in (1.0, 2.0):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                saver(b)()
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    assert codes == [0, 0]  # no raw error, no lost race
    assert bias_of(path) in (1.0, 2.0)
    assert leftovers(tmp_path) == []


# ---- item 3: every file is verified ----------------------------------------------------------

@pytest.mark.parametrize("extra", ["notes.txt", "sub/evil.bin", "model.onnx.data", "emptydir/"])
def test_unlisted_file_in_artifact_is_refused(tmp_path, extra):
    path = onnx_art().save(tmp_path / "a")
    target = path / extra
    if extra.endswith("/"):
        target.mkdir()
    else:
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"\x00" * 16)
    with pytest.raises(mo.ArtifactError, match="not listed in manifest.json"):
        mo.load_artifact(path)


def test_unlisted_onnx_external_data_is_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((32, 16), np.float32), "W")  # > 1 KiB: goes external
    art = onnx_art()
    m = art.model
    m.graph.initializer[0].CopyFrom(w)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 32
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 16
    path = art.save(tmp_path / "b", external_data_threshold=0)
    assert (path / "model.onnx.data").is_file()
    mo.load_artifact(path)
    rewrite_manifest(path, lambda d: d["files"].pop("model.onnx.data"))
    with pytest.raises(mo.ArtifactError, match=r"model\.onnx\.data.*not listed"):
        mo.load_artifact(path)


# ---- item 4: malformed manifests, structure records, weight files ----------------------------

def _set(path, value):
    def change(m):
        *head, last = path
        d = m
        for k in head:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return change


BAD_MANIFESTS = [
    (("files",), [1, 2], "field files"),
    (("files", "weights.safetensors", "sha256"), 7, "sha256"),
    (("files", "weights.safetensors", "bytes"), -5, "bytes"),
    (("files", "weights.safetensors"), KeyError, r"weights\.safetensors.*not listed"),
    (("inputs",), {"x": 1}, "field inputs"),
    (("inputs", 0, "shape"), [-1, 4], r"inputs\[0\]\.shape\[0\]"),
    (("inputs", 0, "shape"), [10**6, 10**6, 10**6], r"inputs\[0\]\.shape.*elements"),
    (("inputs", 0, "shape"), [True, 4], r"inputs\[0\]\.shape\[0\]"),
    (("inputs", 0, "name"), KeyError, r"inputs\[0\].*'name'"),
    (("outputs",), "y", "field outputs"),
    (("lineage", 0, "component"), KeyError, r"lineage\[0\].*'component'"),
    (("lineage", 0, "config"), [], r"lineage\[0\]\.config"),
    (("lineage", 0, "restore"), "x", r"lineage\[0\]\.restore"),
    (("lineage", 0, "duration_s"), -1, r"lineage\[0\]\.duration_s"),
    (("lineage", 0, "notes"), [3], r"lineage\[0\]\.notes\[0\]"),
    (("lineage", 0), "step", r"lineage\[0\]"),
    (("io",), [], "field io"),
    (("metadata",), 3, "field metadata"),
    (("modelopt_manifest",), "1", "modelopt_manifest"),
    (("modelopt_manifest",), KeyError, "modelopt_manifest"),
    (("format",), KeyError, "field format"),
    (("format",), 5, "field format"),
]


@pytest.mark.parametrize("where, value, field", BAD_MANIFESTS)
def test_malformed_manifest_names_file_and_field(tmp_path, where, value, field):
    path = linear_art().save(tmp_path / "a")
    rewrite_manifest(path, _set(where, value))
    with pytest.raises(mo.ArtifactError, match=field) as e:
        mo.load_artifact(path, model=torch.nn.Linear(4, 2))
    assert "manifest.json" in str(e.value)


@pytest.mark.parametrize("text", ["", "[1, 2]", "{not json", "[" * 100_000 + "]" * 100_000])
def test_manifest_that_is_not_an_object(tmp_path, text):
    path = linear_art().save(tmp_path / "a")
    (path / "manifest.json").write_text(text)
    with pytest.raises(mo.ArtifactError, match=r"manifest\.json"):
        mo.load_artifact(path, model=torch.nn.Linear(4, 2))


def test_newer_manifest_with_unknown_step_fields_loads_with_a_note(tmp_path):
    path = linear_art(1.0).save(tmp_path / "a")

    def newer(m):
        m["modelopt_manifest"] = 7
        m["some_future_key"] = {"x": 1}
        m["lineage"][0]["future_field"] = [1, 2]
        m["inputs"][0]["layout"] = "NC"
    rewrite_manifest(path, newer)
    back = mo.load_artifact(path, model=torch.nn.Linear(4, 2))
    assert float(back.model.bias[0].detach()) == 1.0
    assert "future_field" in " ".join(back.lineage[0].notes)
    assert "newer" in " ".join(back.lineage[-1].notes)


def test_incompatible_manifest_says_which_version_is_needed(tmp_path):
    path = linear_art().save(tmp_path / "a")
    rewrite_manifest(path, lambda m: m.update(modelopt_manifest=3, min_reader_version=3,
                                              modelopt_version="9.1.0"))
    with pytest.raises(mo.ArtifactError, match=r"upgrade modelopt.*9\.1\.0"):
        mo.load_artifact(path, model=torch.nn.Linear(4, 2))


def factored() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(saved model whose Linear was replaced by a rank-3 pair, skeleton of the original)."""
    torch.manual_seed(0)
    saved = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False),
                                                    torch.nn.Linear(3, 2)))
    return saved.eval(), torch.nn.Sequential(torch.nn.Linear(4, 2))


def save_factored(tmp_path: Path) -> Path:
    saved, _ = factored()
    return mo.ModelArtifact("torch", saved, (mo.TensorSpec("x", ("batch", 4)),)).save(
        tmp_path / "f")


def rewrite_structure(folder: Path, text: str) -> None:
    (folder / "torch_model.json").write_text(text)
    rewrite_manifest(folder, lambda m: m["files"]["torch_model.json"].update(
        sha256=sha256_file(folder / "torch_model.json")))


def test_factored_model_round_trips(tmp_path):
    path = save_factored(tmp_path)
    saved, skeleton = factored()
    back = mo.load_artifact(path, model=skeleton)
    x = torch.randn(5, 4)
    torch.testing.assert_close(back.model(x), saved(x), rtol=0, atol=0)


@pytest.mark.parametrize("change, field", [
    (lambda s: s["0.0"]["args"].update(in_features=10**9), r"structure\['0\.0'\].*saved weights"),
    (lambda s: s["0.0"]["args"].update(in_features=2**40), r"in_features.*not a valid"),
    (lambda s: s["0.0"]["args"].update(out_features=-3), r"out_features.*not a valid"),
    (lambda s: s["0.0"]["args"].update(in_features="4"), r"in_features.*not a valid"),
    (lambda s: s["0.0"]["args"].update(evil=1), r"unknown argument 'evil'"),
    (lambda s: s["0.0"]["args"].pop("in_features"), r"missing \['in_features'\]"),
    (lambda s: s["0.0"].update(bias="yes"), r"bias"),
    (lambda s: s["0.0"].update(type=["Linear"]), r"cannot be rebuilt"),
    (lambda s: s["0.0"].update(extra=1), r"unknown key"),
    (lambda s: s.update({"0..x": {"type": "ReLU", "args": {}}}), r"not a module path"),
    (lambda s: s.update({"0.1": 5}), r"expected an object"),
])
def test_malformed_structure_record_is_typed_and_allocates_nothing(tmp_path, change, field):
    path = save_factored(tmp_path)
    meta = json.loads((path / "torch_model.json").read_text())
    change(meta["structure"])
    rewrite_structure(path, json.dumps(meta))
    with pytest.raises(mo.ArtifactError, match=rf"torch_model\.json.*{field}"):
        mo.load_artifact(path, model=factored()[1])


@pytest.mark.parametrize("text", ["{oops", "[]", '{"class": 3}', '{"structure": [1]}'])
def test_structure_file_that_is_not_a_record(tmp_path, text):
    path = save_factored(tmp_path)
    rewrite_structure(path, text)
    with pytest.raises(mo.ArtifactError, match=r"torch_model\.json"):
        mo.load_artifact(path, model=factored()[1])


def test_rebuild_without_saved_shapes_is_capped():
    with pytest.raises(mo.ArtifactError, match="larger than"):
        rebuild_structure(torch.nn.Sequential(torch.nn.Identity()),
                          {"0": {"type": "Linear", "args": {"in_features": 2**20,
                                                            "out_features": 2**20}}})


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"PK\x03\x04" + bytes(200), "corrupt or truncated"),
    (None, r"entry 'epoch' is a int"),
])
def test_bad_pt_files_are_typed(tmp_path, content, match):
    p = tmp_path / "w.pt"
    if content is None:
        torch.save({"weight": torch.zeros(2, 4), "epoch": 3}, p)
    else:
        p.write_bytes(content)
    with pytest.raises(mo.ArtifactError, match=match):
        mo.load_artifact(p, model=torch.nn.Linear(4, 2))


# hypothesis: any mutation of a manifest is a clean load or an ArtifactError, nothing else
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                  st.floats(allow_nan=True), st.text(max_size=4))
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=3)
                     | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=5)


def _paths(d, prefix=()):
    yield prefix
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


@pytest.fixture(scope="module")
def fuzz_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return {"torch": linear_art().save(root / "t"), "onnx": onnx_art().save(root / "o")}


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["torch", "onnx"]), pick=st.integers(0, 10**6),
       op=st.sampled_from(["replace", "delete", "add"]), value=_json, key=st.text(max_size=6))
def test_fuzzed_manifest_gives_only_artifact_errors(fuzz_folders, kind, pick, op, value, key):
    folder = fuzz_folders[kind]
    mp = folder / "manifest.json"
    base = json.loads(mp.read_text())
    m = copy.deepcopy(base)
    paths = list(_paths(m))
    path = paths[pick % len(paths)]
    if op == "replace" and not path:
        m = value
    elif path:
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = value
        elif isinstance(parent, dict):
            parent[key] = value
    try:
        mp.write_text(json.dumps(m))
        art = mo.load_artifact(folder, model=torch.nn.Linear(4, 2))
        assert isinstance(art, mo.ModelArtifact)
    except mo.ArtifactError:
        pass
    finally:
        mp.write_text(json.dumps(base))


@pytest.fixture(scope="module")
def factored_folder(tmp_path_factory):
    return save_factored(tmp_path_factory.mktemp("fuzz_structure"))


@settings(max_examples=80, deadline=None)
@given(pick=st.integers(0, 10**6), op=st.sampled_from(["replace", "delete"]), value=_json)
def test_fuzzed_structure_record_gives_only_artifact_errors(factored_folder, pick, op, value):
    meta_path = factored_folder / "torch_model.json"
    base = meta_path.read_text()
    d = json.loads(base)
    paths = [p for p in _paths(d) if p]
    path = paths[pick % len(paths)]
    parent = d
    for k in path[:-1]:
        parent = parent[k]
    if op == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    try:
        rewrite_structure(factored_folder, json.dumps(d))
        mo.load_artifact(factored_folder, model=factored()[1])
    except mo.ArtifactError:
        pass
    finally:
        rewrite_structure(factored_folder, base)


# ---- item 5: failing writes are typed and lose nothing ---------------------------------------

def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["safetensors", "manifest", "fsync", "onnx"])
def test_enospc_is_typed_and_keeps_the_previous_artifact(tmp_path, monkeypatch, where):
    art = onnx_art() if where == "onnx" else linear_art(1.0)
    path = art.save(tmp_path / "a")
    before = snapshot(path)
    target = {"safetensors": ("safetensors.torch.save_file", None),
              "manifest": (folder_mod, "write_json"),
              "fsync": (persist.os, "fsync"),
              "onnx": ("onnx.save_model", None)}[where]
    if target[1] is None:
        monkeypatch.setattr(target[0], _enospc)
    else:
        monkeypatch.setattr(target[0], target[1], _enospc)
    new = onnx_art() if where == "onnx" else linear_art(2.0)
    with pytest.raises(mo.ArtifactError, match=r"errno 28 ENOSPC.*Nothing was lost") as e:
        new.save(path)
    assert e.value.errno == errno.ENOSPC and str(path) in str(e.value)
    monkeypatch.undo()
    assert snapshot(path) == before and leftovers(tmp_path) == []


def test_library_error_while_writing_is_typed(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    path = linear_art(1.0).save(tmp_path / "a")

    def broken(*a, **k):
        raise SafetensorError("Error while serializing")
    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(mo.ArtifactError, match="SafetensorError.*nothing was lost"):
        linear_art(2.0).save(path)
    monkeypatch.undo()
    assert bias_of(path) == 1.0 and leftovers(tmp_path) == []


def test_read_only_folder_is_typed(tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes: simulate EROFS on folder creation
    and on the lock file, the first writes a save makes."""
    path = linear_art(1.0).save(tmp_path / "a")
    before = snapshot(path)
    real_open, real_mkdir = os.open, os.mkdir

    def ro_open(p, flags, *a, **k):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(p))
        return real_open(p, flags, *a, **k)

    def ro_mkdir(p, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(p))

    for name, fake in (("open", ro_open), ("mkdir", ro_mkdir)):
        monkeypatch.setattr(persist.os, name, fake)
        with pytest.raises(mo.ArtifactError, match="errno 30 EROFS") as e:
            linear_art(2.0).save(path)
        assert e.value.errno == errno.EROFS
        monkeypatch.setattr(persist.os, name, real_open if name == "open" else real_mkdir)
    assert snapshot(path) == before and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions (see the "
                    "monkeypatched read-only test above)")
def test_read_only_folder_chmod(tmp_path):
    path = linear_art(1.0).save(tmp_path / "a")
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(mo.ArtifactError, match="errno 13"):
            linear_art(2.0).save(path)
    finally:
        tmp_path.chmod(0o755)
    assert bias_of(path) == 1.0
