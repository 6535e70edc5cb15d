"""The third-party plugin under docs/examples/ installs as its own distribution, is discovered
through its ``modelopt_core`` entry point, and its components work through the Session."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import state_hash

import modelopt_core as mo
from modelopt_demo.models import SmallCNN

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "modelopt-example-plugin"


def _install(target: Path, tmp: Path) -> None:
    """``pip install --target`` a copy of the example (the build never writes into docs/);
    without pip, write the same dist-info (METADATA + entry_points.txt) by hand."""
    src = tmp / "src-copy"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(target), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return
    shutil.copytree(src / "src" / "modelopt_example", target / "modelopt_example")
    info = target / "modelopt_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelopt-example-plugin\n"
                                   "Version: 0.1.0\n")
    (info / "entry_points.txt").write_text("[modelopt_core]\nexample = modelopt_example.plugin\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example installed into a private folder put on sys.path; removed afterwards."""
    tmp = tmp_path_factory.mktemp("example-plugin")
    target = tmp / "site"
    _install(target, tmp)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    for mod in [m for m in sys.modules if m == "modelopt_example" or
                m.startswith("modelopt_example.")]:
        del sys.modules[mod]
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def model():
    """SmallCNN with non-trivial BatchNorm statistics (folding them must matter)."""
    torch.manual_seed(0)
    m = SmallCNN(width=8)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m.eval()


def test_discovered_through_entry_point(installed):
    assert any(ep.name == "example" for ep in
               importlib.metadata.entry_points(group="modelopt_core"))
    pm = mo.PluginManager(strict=True)
    opt = pm.get("optimizer", "example.fuse_bn")
    prof = pm.get("profiler", "example.flops")
    assert opt.distribution == "modelopt-example-plugin" and opt.version == "0.1.0"
    assert prof.plugin == "example"
    assert Path(sys.modules[opt.cls.__module__].__file__).is_relative_to(installed)
    summary = pm.summary()
    names = {c["name"] for c in summary["plugins"]["example"]["components"]}
    assert names == {"example.fuse_bn", "example.flops", "example.npz", "example.numpy"}
    pm.get("backend", "torch")  # the built-ins load beside it


def test_fuse_bn_through_session(installed, model, digits):
    pm = mo.PluginManager(strict=True)
    before = state_hash(model)
    s = mo.Session(model, (digits.example,), plugins=pm, progress=False)
    art = s.apply("example.fuse_bn")
    step = art.lineage[-1]
    assert (step.component, step.plugin, step.version) == ("example.fuse_bn", "example", "0.1.0")
    assert "folded 4 BatchNorm" in step.notes[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in art.model.modules())
    x = digits.test[0][0]
    with s.runner("torch", s.original) as ref, s.runner("torch") as fused:
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-4, atol=1e-5)
    assert state_hash(model) == before
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    report = s.compare(profilers=["example.flops", "size"])
    rows = report.to_dict()["rows"]
    assert rows[0]["macs"] > 0 and rows[1]["macs"] <= rows[0]["macs"]
    assert rows[1]["params"] < rows[0]["params"]
    # the plugin's own columns, with its headers and formats, in every table (issue 25)
    md = report.to_markdown()
    assert "GFLOPs" in md and "MACs" in md and f"{rows[0]['macs']:,}" in md
    import io

    buf = io.StringIO()
    report.print(file=buf)
    assert "MACs" in buf.getvalue()
    html = report.to_html()
    assert "MACs" in html and f"{rows[0]['macs']:,}" in html


def test_no_pairs_warns_and_keeps_model(installed):
    pm = mo.PluginManager(strict=True)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    s = mo.Session(mlp, (torch.randn(2, 4),), plugins=pm, progress=False)
    art = s.apply("example.fuse_bn")
    assert any("no Conv/Linear -> BatchNorm pair" in n for n in art.lineage[-1].notes)
    assert state_hash(art.model) == state_hash(mlp)


def _random_bn(bn: torch.nn.Module, g: torch.Generator) -> None:
    n = bn.num_features
    bn.running_mean.copy_(torch.randn(n, generator=g))
    bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
    if bn.affine:
        bn.weight.data.copy_(torch.randn(n, generator=g))
        bn.bias.data.copy_(torch.randn(n, generator=g))


def test_fold_is_exact_up_to_rounding_for_many_layer_shapes(installed):
    """Property: folding keeps outputs for conv 1d/2d/3d, groups, with/without bias and affine,
    and for Linear + BatchNorm1d."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from modelopt_example.fuse_bn import find_pairs, fold

    @settings(max_examples=25, deadline=None)
    @given(dim=st.sampled_from([0, 1, 2, 3]), groups=st.sampled_from([1, 2]),
           bias=st.booleans(), affine=st.booleans(), seed=st.integers(0, 2**16))
    def check(dim, groups, bias, affine, seed):
        g = torch.Generator().manual_seed(seed)
        if dim == 0:
            prod, bn = torch.nn.Linear(6, 4, bias=bias), torch.nn.BatchNorm1d(4, affine=affine)
            x = torch.randn(5, 6, generator=g)
        else:
            conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[dim - 1]
            prod = conv(4, 6, 3, padding=1, groups=groups, bias=bias)
            bn = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)[dim - 1](
                6, affine=affine)
            x = torch.randn(2, 4, *([5] * dim), generator=g)
        _random_bn(bn, g)
        net = torch.nn.Sequential(prod, bn, torch.nn.ReLU()).eval()
        with torch.no_grad():
            ref = net(x)
            pairs = find_pairs(net)
            assert pairs == [("0", "1")]
            fold(net, pairs)
            assert isinstance(net[1], torch.nn.Identity)
            torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-5)

    check()


def test_conv_output_used_twice_is_not_folded(installed):
    from modelopt_example.fuse_bn import find_pairs

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)
            self.conv2 = torch.nn.Conv2d(3, 3, 1)
            self.bn2 = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y + self.bn2(self.conv2(x))  # conv's raw output is needed too

    assert find_pairs(Branchy().eval()) == [("conv2", "bn2")]


def test_third_party_multi_file_format_end_to_end(installed, tmp_path):
    """A format the core has never heard of: exported, run, saved as several files (each
    listed and hashed in the manifest), reloaded through the plugin's Format, run again."""
    import json

    pm = mo.PluginManager(strict=True)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 10)).eval()
    s = mo.Session(mlp, (torch.randn(2, 1, 8, 8),), plugins=pm, progress=False)
    art = s.export("example.npz")
    assert art.format == "example.npz" and art.lineage[-1].plugin == "example"
    x = torch.randn(5, 1, 8, 8)
    with s.runner("example.numpy") as r:
        torch.testing.assert_close(r(x), mlp(x), rtol=1e-5, atol=1e-5)
    path = art.save(tmp_path / "npz", plugins=pm)
    files = json.loads((path / "manifest.json").read_text())["files"]
    assert set(files) == {"graph.json", "weights/1.weight.npy", "weights/1.bias.npy",
                          "weights/3.weight.npy", "weights/3.bias.npy"}
    back = mo.load_artifact(path, plugins=pm)
    assert back.format == "example.npz"
    with s.runner("example.numpy", artifact=back) as r:
        torch.testing.assert_close(r(x), mlp(x), rtol=1e-5, atol=1e-5)
    (path / "weights" / "3.bias.npy").write_bytes(b"tampered")  # the core still guards it
    with pytest.raises(mo.ArtifactError, match="SHA-256 mismatch"):
        mo.load_artifact(path, plugins=pm)
    rows = s.compare(backends=["torch", "example.numpy"], profilers=["size"]).rows
    assert [(r["format"], r["backend"]) for r in rows] == [("torch", "torch"),
                                                            ("example.npz", "example.numpy")]
    assert "error" not in rows[1] and rows[1]["size_bytes"] > 0


# ---- the open contract (issue 25): a runtime that is not ours joins search, serving, gate ----

def _mlp_and_data():
    """An MLP the example runtime can run, and labelled data it is trained on (the labels
    are its own argmax on the first half, so the FP32 accuracy is high but not trivial)."""
    g = torch.Generator().manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10)).eval()
    xs = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(6)]
    with torch.no_grad():
        test = [(x, mlp(x).argmax(1)) for x in xs]

    def accuracy(runner) -> float:
        hits = sum(int((runner(x).argmax(1) == y).sum()) for x, y in test)
        return 100.0 * hits / sum(len(y) for _, y in test)

    return mlp, xs, accuracy


def test_the_example_runtime_is_a_search_target_and_is_measured(installed, tmp_path):
    from modelopt_search.space import targets

    pm = mo.PluginManager(strict=True)
    assert targets(pm)["example.numpy"] == ("example.npz", "example.numpy")
    mlp, xs, accuracy = _mlp_and_data()
    s = mo.Session(mlp, (xs[0][:2],), calibration_data=xs[:2], eval_fn=accuracy, plugins=pm,
                   progress=False)
    res = s.optimize(target=["example.numpy", "onnxruntime"], budget_trials=4,
                     out_dir=tmp_path, threads=1, space={"prune": ["none"],
                                                        "precision": {"onnxruntime": ["none"],
                                                                      "example.numpy": ["none"]}})
    import json

    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    ours = [r for r in rows if r.get("backend") == "example.numpy" and r.get("state") ==
            "complete"]
    assert ours, rows
    assert all(r["latency_p50_ms"] > 0 and r["accuracy"] == 100.0 for r in ours)
    # its thread option came from its class: the trials ran it with num_threads=1
    assert any(r.get("backend_options", {}).get("num_threads") == 1 for r in ours) or \
        res.best_recipe["backend_options"].get("num_threads") in (None, 1)


def test_the_accuracy_gate_evaluates_the_example_format_on_its_runtime(installed):
    pm = mo.PluginManager(strict=True)
    mlp, xs, accuracy = _mlp_and_data()
    s = mo.Session(mlp, (xs[0][:2],), eval_fn=accuracy, max_accuracy_drop=0.5, plugins=pm,
                   progress=False)
    art = s.export("example.npz")
    gate = art.metadata["accuracy_gate"]
    assert gate["backend"] == "example.numpy" and gate["met"] and gate["value"] == 100.0


def test_serving_splits_the_cores_through_the_example_runtimes_thread_option(
        installed, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from modelopt_core import plugins as plugins_mod
    from modelopt_serve import codec
    from modelopt_serve.replicas import ReplicaPool
    from modelopt_serve.server import serve_in_thread

    pm = mo.PluginManager(strict=True)
    monkeypatch.setattr(plugins_mod, "_default", pm)  # what `modelopt serve` would discover
    mlp, xs, _ = _mlp_and_data()
    s = mo.Session(mlp, (xs[0][:2],), plugins=pm, progress=False)
    path = s.export("example.npz").save(tmp_path / "npz", plugins=pm)
    with ReplicaPool(path, backend="example.numpy", workers=2, cores=2) as pool:
        # from the class's traits: threads (NumPy releases the GIL), one BLAS thread each
        assert pool.mode == "thread" and pool.options["num_threads"] == 1
        assert not any("no thread option" in n for n in pool.notes)
    with serve_in_thread(path, backend="example.numpy", workers=2, cores=2) as url:
        x = xs[1][:3]
        r = httpx.post(f"{url}/predict", content=codec.encode_inputs({"input": x}),
                       headers={"content-type": codec.TENSORS})
        assert r.status_code == 200, r.text
        got = next(iter(codec.decode_outputs(r.content, codec.TENSORS).values()))
        torch.testing.assert_close(got, mlp(x), rtol=1e-5, atol=1e-5)


# ---- the public contract checks (modelopt_core.testing), as a plugin author runs them ------

@pytest.mark.parametrize("check, name", [
    ("check_optimizer", "example.fuse_bn"), ("check_profiler", "example.flops"),
    ("check_exporter", "example.npz"), ("check_format", "example.npz"),
    ("check_backend", "example.numpy"), ("check_backend_thread_safe", "example.numpy")])
def test_the_example_keeps_the_public_contract(installed, check, name):
    import modelopt_core.testing as mt

    getattr(mt, check)(name, mo.PluginManager(strict=True))


def test_the_one_command_checks_the_whole_example_plugin(installed):
    """``python -m modelopt_core.testing example`` runs every check on the plugin's
    components and exits 0; a plugin that registers nothing is an error (exit 2)."""
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(installed), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, "-m", "modelopt_core.testing", "example"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for kind, name in [("optimizer", "example.fuse_bn"), ("profiler", "example.flops"),
                       ("exporter", "example.npz"), ("format", "example.npz"),
                       ("backend", "example.numpy")]:
        assert f"PASS {kind} {name}" in done.stdout, done.stdout
    assert "example: 6 passed, 0 skipped, 0 failed" in done.stdout, done.stdout
    done = subprocess.run([sys.executable, "-m", "modelopt_core.testing", "no-such-plugin"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 2 and "no-such-plugin" in done.stdout, done.stdout


def test_the_public_checks_catch_a_broken_example_component(installed):
    """A copy of the example's optimizer that edits its input in place fails the check."""
    from modelopt_example.fuse_bn import FuseBatchNorm

    import modelopt_core.testing as mt

    class InPlace(FuseBatchNorm):
        """fuse_bn, but on the input's own model."""

        name = "example.fuse_bn_inplace"

        def apply(self, artifact, ctx):
            out = super().apply(artifact, ctx)
            next(artifact.model.parameters()).data.mul_(2.0)
            return out

    with pytest.raises(AssertionError, match="'example.fuse_bn_inplace': never mutate"):
        mt.check_optimizer(InPlace, mo.PluginManager(strict=True))
