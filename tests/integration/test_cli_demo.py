"""The `modelopt` command: plugin listing (text and JSON) and the offline demo end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from modelopt_core.cli import main


def test_plugins_json_lists_builtin_components(capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {c["name"]: c for p in data["plugins"].values() for c in p["components"]
             if c["kind"] != "format"}
    formats = {c["name"] for p in data["plugins"].values() for c in p["components"]
               if c["kind"] == "format"}
    assert {"torch", "onnx", "tensorrt"} <= formats
    for name in ("onnx", "onnx.optimize", "onnx.quantize_static", "onnx.quantize_dynamic",
                 "torch", "torch.compile", "onnxruntime", "tensorrt", "latency", "throughput",
                 "memory", "size", "accuracy"):
        assert name in names, name
    assert names["onnxruntime"]["available"] is True
    assert names["onnx"]["accepts"] == ["torch"] and names["onnx"]["produces"] == "onnx"
    assert names["onnxruntime"]["accepts"] == ["onnx"] and names["onnxruntime"]["produces"] is None
    for c in names.values():  # one shape for every kind: scripts need no special cases
        assert isinstance(c["accepts"], list) and isinstance(c["reason"], str)
        assert isinstance(c["available"], bool) and isinstance(c["description"], str)
    assert data["failed"] == []


def test_version_and_module_entry_point():
    from modelopt_core import __version__

    for cmd in (["-m", "modelopt_core", "--version"], ["-m", "modelopt_core.cli", "--version"]):
        out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip() == f"modelopt {__version__}"


def test_every_command_has_help_with_examples(capsys):
    import pytest

    for cmd in ("plugins", "describe", "demo", "run"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text and f"modelopt {cmd}" in text


def test_describe_lists_options_with_help(capsys):
    assert main(["describe", "onnx.quantize_static"]) == 0
    text = capsys.readouterr().out
    assert "per_channel: bool = True" in text and "per-output-channel weight scales" in text
    assert main(["describe", "latency", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    opts = {o["name"]: o for o in data[0]["options"]}
    assert opts["min_time_s"]["help"] and data[0]["kind"] == "profiler"
    assert main(["describe", "onnx.quantise_static"]) == 1
    assert "did you mean 'onnx.quantize_static'" in capsys.readouterr().err


def test_plugins_lists_plugin_commands_and_services(capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"plugins", "failed", "devices"} <= set(data)  # the existing keys stay
    commands = {c["name"]: c for c in data["commands"]}
    assert {"demo", "optimize", "compare", "serve", "bench-serve"} <= set(commands)
    assert commands["serve"]["plugin"] == "serve"
    assert commands["serve"]["distribution"] == "modelopt-core"
    assert "HTTP" in commands["serve"]["help"]
    assert not {"plugins", "describe", "run"} & set(commands)  # the core's own are not listed
    services = {c["name"]: c for c in data["services"]}
    assert services["search"]["plugin"] == "search" and services["search"]["help"]
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "commands (modelopt COMMAND --help):" in text and "services:" in text
    assert re.search(r"^  serve +serve \(modelopt-core\) +serve a saved artifact", text, re.M)
    assert re.search(r"^  search +search \(modelopt-core\) +recipe search", text, re.M)


def test_describe_a_command_says_whose_and_shows_its_help(capsys):
    assert main(["describe", "serve"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("command `modelopt serve`: a command of plugin 'serve' "
                           "(modelopt-core)")
    assert "usage: modelopt serve" in text and "--max-batch-size" in text
    assert "examples:" in text  # the whole --help text, epilog included
    assert main(["describe", "serve", "--json"]) == 0
    [d] = json.loads(capsys.readouterr().out)
    assert d["kind"] == "command" and d["plugin"] == "serve" and "--workers" in d["help"]
    assert main(["describe", "run"]) == 0  # the core's own commands too
    assert "a command of modelopt itself" in capsys.readouterr().out
    assert main(["describe", "serv"]) == 1
    assert "did you mean 'serve'" in capsys.readouterr().err


def test_errors_are_one_line_unless_verbose(tmp_path, capsys):
    bad = tmp_path / "r.toml"
    bad.write_text('model = "modelopt_demo.models:SmallCNN"\nexample_inputs = [[1, 1, 8, 8]]\n'
                   '[[steps]]\napply = "onnx.quantize_static"\n')
    assert main(["run", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "add an export step" in err
    assert main(["run", str(bad), "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_plugins_text_through_console_script():
    out = subprocess.run([sys.executable, "-m", "modelopt_core.cli", "plugins"],
                         capture_output=True, text=True, check=True).stdout
    assert "onnx.quantize_static" in out and "onnxruntime" in out


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "onnx.quantize_static" in text
    steps = [r["step"] for r in json.loads((out / "report.json").read_text())["rows"]]
    assert [st.split(":", 1)[-1] for st in steps] == [
        "original", "prune.structured", "distill.logits", "onnx", "onnx.optimize",
        "onnx.quantize_static"]
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    assert rows[0]["step"] == "original" and rows[0]["backend"] == "torch"
    last = rows[-1]
    assert last["step"].endswith("onnx.quantize_static") and last["backend"] == "onnxruntime"
    for key in ("accuracy", "latency_p50_ms", "latency_p95_ms", "throughput_per_s", "size_mb"):
        assert key in last, key
    assert last["accuracy"] > 80.0 and last["accuracy_delta"] > -2.0
    assert last["size_ratio"] > 1.5
    assert (out / "report.md").read_text().startswith("### modelopt demo")
    html = (out / "report.html").read_text()
    assert 'id="pareto-latency"' in html and "onnx.quantize_static" in html
    assert (out / "final-artifact" / "manifest.json").is_file()
