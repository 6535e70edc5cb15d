"""The `modelopt` command: plugin listing (text and JSON) and the offline demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys

from modelopt_core.cli import main


def test_plugins_json_lists_builtin_components(capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {c["name"]: c for p in data["plugins"].values() for c in p["components"]}
    for name in ("onnx", "onnx.optimize", "onnx.quantize_static", "onnx.quantize_dynamic",
                 "torch", "torch.compile", "onnxruntime", "tensorrt", "latency", "throughput",
                 "memory", "size", "accuracy"):
        assert name in names, name
    assert names["onnxruntime"]["available"] is True
    assert names["onnx"]["formats"] == "torch->onnx"
    assert data["failed"] == []


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
    assert (out / "final-artifact" / "manifest.json").is_file()
