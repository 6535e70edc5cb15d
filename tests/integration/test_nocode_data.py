"""The no-code entry's model and data (issue 26 item 9), without a search: a bare ONNX file
the project did not export declares its own specs; ``--calibration`` (.npz, a folder of
.npy samples or batches, a folder of .npz) and ``--eval`` (eval.npz with labels, labels.npy)
become batches and a metric; every malformed file is a typed DataError naming the file and
the array at fault."""

from __future__ import annotations

import numpy as np
import pytest
from nocode_files import (CLASSES, INPUT, SHAPE, exported_program, factory_module,
                          hand_built_onnx, onnx_labels, samples)

import modelopt_core as mo
from modelopt_core.nocode import nocode_session
from modelopt_core.samples import read_samples


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return hand_built_onnx(tmp_path_factory.mktemp("nocode") / "m.onnx")


def test_a_bare_onnx_file_declares_its_specs(tmp_path):
    art = mo.load_artifact(hand_built_onnx(tmp_path / "a.onnx"))
    assert art.inputs == (mo.TensorSpec(INPUT, ("batch", *SHAPE), "float32"),)
    assert art.outputs == (mo.TensorSpec("logits", ("batch", CLASSES), "float32"),)
    # weights listed as graph inputs (old exporters) are not inputs; a fixed batch stays
    old = mo.load_artifact(hand_built_onnx(tmp_path / "b.onnx", batch=1,
                                           weights_as_inputs=True))
    assert [s.name for s in old.inputs] == [INPUT]
    assert old.inputs[0].shape == (1, *SHAPE)


def test_calibration_npz_becomes_batches_and_agreement(onnx_file, tmp_path):
    np.savez(tmp_path / "c.npz", samples(30))  # one input: its array may be unnamed
    s = nocode_session(str(onnx_file), str(tmp_path / "c.npz"))
    assert s.original.format == "onnx" and s.original.inputs[0].name == INPUT
    # 30 samples -> batches of 8 (the last of 6); the last quarter (1 batch) held back
    assert [int(b[0].shape[0]) for b in s.calibration_data] == [8, 8, 8]
    assert tuple(s.example_inputs[0].shape) == (8, *SHAPE)
    assert s.eval_fn(s.runner()) == 100.0  # the original agrees with itself
    assert "top-1 agreement with the original model (%) on 6 held-out" in s.eval_fn.metric


def test_eval_npz_gives_top1_on_its_labels(onnx_file, tmp_path):
    x = samples(20, seed=3)
    y = onnx_labels(onnx_file, x)
    y[:5] = (y[:5] + 1) % CLASSES  # 5 of 20 wrong: 75%
    np.savez(tmp_path / "c.npz", pixels=samples(16))
    np.savez(tmp_path / "e.npz", pixels=x, labels=y)
    s = nocode_session(str(onnx_file), str(tmp_path / "c.npz"), str(tmp_path / "e.npz"),
                       batch_size=4)
    assert len(s.calibration_data) == 4  # nothing held back: eval.npz is held out
    assert s.eval_fn(s.runner()) == pytest.approx(75.0)
    assert s.eval_fn.metric.startswith("top-1 accuracy (%) on 20 labelled samples")


def test_labels_npy_hold_out_the_last_calibration_batches(onnx_file, tmp_path):
    x = samples(32)
    np.savez(tmp_path / "c.npz", pixels=x)
    np.save(tmp_path / "y.npy", onnx_labels(onnx_file, x))
    s = nocode_session(str(onnx_file), str(tmp_path / "c.npz"), str(tmp_path / "y.npy"))
    assert len(s.calibration_data) == 3  # 4 batches of 8, the last held out
    assert s.eval_fn(s.runner()) == 100.0
    assert "8 labelled samples" in s.eval_fn.metric and "y.npy" in s.eval_fn.metric


def test_folders_of_npy_samples_or_batches_and_of_npz(onnx_file, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    for i, row in enumerate(samples(12)):  # one sample per file (no batch dim)
        np.save(one / f"{i:03d}.npy", row)
    x, _ = read_samples(one, mo.load_artifact(onnx_file).inputs)
    assert x[INPUT].shape == (12, *SHAPE)
    np.testing.assert_array_equal(x[INPUT][3], samples(12)[3])  # in name order
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    np.save(stacks / "a.npy", samples(5))
    np.save(stacks / "b.npy", samples(7).astype(np.float64))  # cast to the model's float32
    x, _ = read_samples(stacks, mo.load_artifact(onnx_file).inputs)
    assert x[INPUT].shape == (12, *SHAPE) and x[INPUT].dtype == np.float32
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "a.npz", pixels=samples(9))
    np.savez(npz / "b.npz", pixels=samples(9))
    s = nocode_session(str(onnx_file), str(npz))
    assert sum(int(b[0].shape[0]) for b in s.calibration_data) + \
        s.eval_fn.agreement.rows == 18


def test_a_pt2_program_and_a_factory_are_torch_originals(tmp_path, monkeypatch):
    np.savez(tmp_path / "c.npz", pixels=samples(24))
    s = nocode_session(str(exported_program(tmp_path / "m.pt2")), str(tmp_path / "c.npz"))
    assert s.original.format == "torch"
    assert s.original.inputs == (mo.TensorSpec(INPUT, ("batch", *SHAPE), "float32"),)
    assert s.eval_fn(s.runner()) == 100.0
    monkeypatch.chdir(tmp_path)  # the working directory is importable
    ref = factory_module(tmp_path)
    s = nocode_session(ref, "c.npz", kwargs={"width": 4})
    assert s.original.format == "torch" and s.original.inputs[0].name == INPUT
    assert sum(p.numel() for p in s.original.model.parameters()) == 4 * 27 + 4 + 256 * 10 + 10
    assert s.eval_fn(s.runner()) == 100.0


def _bad(tmp_path, name, **arrays):
    np.savez(tmp_path / name, **arrays)
    return str(tmp_path / name)


@pytest.mark.parametrize("case, match", [
    ("missing", r"--calibration .*nope\.npz: no such file"),
    ("name", r"c\.npz: arrays \['pictures', 'x'\] do not name the model's inputs \['pixels'\]"),
    ("one_name", r"c\.npz: arrays \['x'\] do not name the model's inputs \['pixels'\]: "
                 r"unknown \['x'\], missing \['pixels'\]. Save one array per input under "
                 r"its name: np.savez\(path, pixels=x\)"),
    ("dtype", r"c\.npz: array 'pixels': dtype int64, but the model's input takes float32"),
    ("rank", r"array 'pixels': shape \(16, 3, 8\) has rank 3"),
    ("dim", r"array 'pixels': shape \(16, 3, 9, 8\) does not fit .*\(dim 2 is 9"),
    ("nan", r"array 'pixels': 1 NaN/Inf value"),
    ("empty", r"array 'pixels' holds no samples"),
    ("few", r"1 batch of 8 sample\(s\).* at least 16 samples"),
    ("npy", r"expected a \.npz file or a folder"),
])
def test_malformed_calibration_is_a_data_error_naming_the_file(onnx_file, tmp_path, case,
                                                               match):
    x = samples(16)
    path = {
        "missing": lambda: str(tmp_path / "nope.npz"),
        "name": lambda: _bad(tmp_path, "c.npz", pictures=x, x=x),
        "one_name": lambda: _bad(tmp_path, "c.npz", x=x),
        "dtype": lambda: _bad(tmp_path, "c.npz", pixels=x.astype(np.int64)),
        "rank": lambda: _bad(tmp_path, "c.npz", pixels=x[:, :, :, 0]),
        "dim": lambda: _bad(tmp_path, "c.npz", pixels=np.zeros((16, 3, 9, 8), np.float32)),
        "nan": lambda: _bad(tmp_path, "c.npz", pixels=np.where(
            np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32)),
        "empty": lambda: _bad(tmp_path, "c.npz", pixels=x[:0]),
        "few": lambda: _bad(tmp_path, "c.npz", pixels=x[:8]),
        "npy": lambda: (np.save(tmp_path / "c.npy", x), str(tmp_path / "c.npy"))[1],
    }[case]()
    with pytest.raises(mo.DataError, match=match):
        nocode_session(str(onnx_file), path)


def test_a_bad_file_in_a_folder_is_named(onnx_file, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "000.npy", samples(1)[0])
    np.save(folder / "001.npy", np.zeros((3, 8, 8), np.int32))
    with pytest.raises(mo.DataError, match=r"calib/001\.npy: array 'pixels': dtype int32"):
        nocode_session(str(onnx_file), str(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(mo.DataError, match="holds no .npy or .npz files"):
        nocode_session(str(onnx_file), str(empty))


@pytest.mark.parametrize("case, match", [
    ("short", r"y\.npy: expected one label per sample, shape \(32,\), got \(31,\)"),
    ("float", r"y\.npy: labels must be integer class indices, got dtype float64"),
    ("eval_short", r"e\.npz: 'labels': expected one label per sample, shape \(10,\), got "
                   r"\(9,\)"),
    ("eval_none", r"e\.npz: no 'labels' array"),
])
def test_bad_labels_are_a_data_error_naming_the_file(onnx_file, tmp_path, case, match):
    np.savez(tmp_path / "c.npz", pixels=samples(32))
    x = samples(10)
    ev = {"short": lambda: np.save(tmp_path / "y.npy", np.zeros(31, np.int64)),
          "float": lambda: np.save(tmp_path / "y.npy", np.zeros(32)),
          "eval_short": lambda: np.savez(tmp_path / "e.npz", pixels=x,
                                         labels=np.zeros(9, np.int64)),
          "eval_none": lambda: np.savez(tmp_path / "e.npz", pixels=x)}
    ev[case]()
    path = tmp_path / ("y.npy" if case in ("short", "float") else "e.npz")
    with pytest.raises(mo.DataError, match=match):
        nocode_session(str(onnx_file), str(tmp_path / "c.npz"), str(path))


def test_bad_model_references_are_typed_errors(tmp_path):
    np.savez(tmp_path / "c.npz", pixels=samples(16))
    c = str(tmp_path / "c.npz")
    with pytest.raises(mo.ConfigError, match=r"--model .*nope\.onnx: no such file"):
        nocode_session(str(tmp_path / "nope.onnx"), c)
    with pytest.raises(mo.ConfigError, match=r"expected a \.onnx or \.pt2 file"):
        nocode_session("model.h5", c)
    with pytest.raises(mo.ConfigError, match="cannot import --model 'no_such_pkg.mod:f'"):
        nocode_session("no_such_pkg.mod:f", c)
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(mo.ArtifactError, match=r"junk\.pt2: not a readable torch\.export"):
        nocode_session(str(tmp_path / "junk.pt2"), c)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(mo.ArtifactError, match=r"junk\.onnx: not a readable ONNX model"):
        nocode_session(str(tmp_path / "junk.onnx"), c)


def test_a_fixed_batch_is_the_batch_size(tmp_path):
    import torch

    ns: dict = {}
    from nocode_files import FACTORY

    exec(FACTORY, ns)  # noqa: S102 (the test's own source)
    ep = torch.export.export(ns["build"](4), (torch.randn(4, *SHAPE),))  # batch fixed at 4
    torch.export.save(ep, str(tmp_path / "fixed.pt2"))
    np.savez(tmp_path / "c.npz", pixels=samples(18))
    s = nocode_session(str(tmp_path / "fixed.pt2"), str(tmp_path / "c.npz"))
    assert s.original.inputs[0].shape == (4, *SHAPE)  # not made dynamic
    # 18 samples: 4 batches of 4 (the last 2 samples cannot make one), 1 held back
    assert [int(b[0].shape[0]) for b in s.calibration_data] == [4, 4, 4]
    with pytest.raises(mo.ConfigError, match="--batch-size 8: the model takes a fixed batch "
                                             "of 4"):
        nocode_session(str(tmp_path / "fixed.pt2"), str(tmp_path / "c.npz"), batch_size=8)
    np.savez(tmp_path / "e.npz", pixels=samples(3), labels=np.zeros(3, np.int64))
    with pytest.raises(mo.DataError, match=r"e\.npz: 3 labelled sample\(s\), fewer than one "
                                           "batch"):
        nocode_session(str(tmp_path / "fixed.pt2"), str(tmp_path / "c.npz"),
                       str(tmp_path / "e.npz"))
