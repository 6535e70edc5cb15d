"""Real entry-point discovery in a fresh interpreter: installed (dist-info) plugins that are
broken or clash with a built-in, seen through ``modelopt plugins --json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BUILTIN = {"torch", "onnx", "onnxruntime", "tensorrt", "profilers"}


def install_fake(site: Path, dist: str, module: str, source: str) -> None:
    """Write ``module.py`` and a dist-info for ``dist`` declaring it as a modelopt_core plugin."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[modelopt_core]\n{module} = {module}\n")


def modelopt(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-m", "modelopt_core.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site-broken")
    install_fake(site, "modelopt-broken", "modelopt_broken",
                 "raise ImportError('modelopt_broken needs libfoo 3, found 2')\n")
    install_fake(site, "modelopt-extra", "modelopt_extra",
                 "import modelopt_core as mo\n\n"
                 "class Noop(mo.Profiler):\n"
                 "    '''Counts nothing.'''\n"
                 "    name = 'extra.noop'\n\n"
                 "    def profile(self, runner, artifact, ctx):\n"
                 "        return {'noop': 0}\n\n"
                 "@mo.hookimpl\n"
                 "def register_profilers(register):\n"
                 "    register(Noop)\n")
    return site


def test_broken_plugin_listed_as_failed_others_load(broken_site):
    done = modelopt(broken_site, "plugins", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    [failed] = data["failed"]
    assert failed["name"] == "modelopt_broken" and failed["distribution"] == "modelopt-broken"
    assert "libfoo 3" in failed["error"]
    assert BUILTIN <= set(data["plugins"])
    extra = data["plugins"]["modelopt_extra"]
    assert (extra["distribution"], extra["version"]) == ("modelopt-extra", "1.2.3")
    assert [c["name"] for c in extra["components"]] == ["extra.noop"]
    assert "modelopt_broken" in done.stderr  # also reported on stderr
    text = modelopt(broken_site, "plugins")
    assert text.returncode == 0 and "FAILED modelopt_broken (modelopt-broken)" in text.stdout


def test_two_distributions_one_name_is_an_error_naming_both(tmp_path):
    """A third-party component claiming a built-in name is reported (naming both
    distributions), the built-in is kept, and every other plugin still loads."""
    install_fake(tmp_path, "modelopt-dup", "modelopt_dup",
                 "import modelopt_core as mo\n\n"
                 "class Dup(mo.Optimizer):\n"
                 "    '''Claims a built-in name.'''\n"
                 "    name = 'onnx.optimize'\n\n"
                 "@mo.hookimpl\n"
                 "def register_optimizers(register):\n"
                 "    register(Dup)\n")
    done = modelopt(tmp_path, "plugins", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    [failed] = data["failed"]
    assert (failed["name"], failed["distribution"]) == ("modelopt_dup", "modelopt-dup")
    err = failed["error"]
    assert "DuplicateComponentError" in err and "'onnx.optimize'" in err
    assert "modelopt-core" in err and "modelopt-dup" in err
    assert BUILTIN <= set(data["plugins"])  # nothing after the clash was dropped
    onnx_names = [c["name"] for c in data["plugins"]["onnx"]["components"]]
    assert "onnx.optimize" in onnx_names  # the built-in is the one kept
    assert "DuplicateComponentError" in done.stderr
    text = modelopt(tmp_path, "plugins")
    assert text.returncode == 0 and "FAILED modelopt_dup (modelopt-dup)" in text.stdout
