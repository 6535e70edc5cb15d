"""docs/model-zoo.md is generated (``python -m tools.zoo_doc``) from the zoo tests' results:
the renderer on a small results file (its real output file, read back), and the committed page
against the ``zoo`` marks the test files carry (collected in a subprocess, as a run would)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # ``tools`` is repository tooling, not an installed package

from tools import zoo_doc


def _rec(nodeid, model, cell, outcome, **kw):
    return {"nodeid": nodeid, "model": model, "cell": cell, "outcome": outcome,
            "details": kw.pop("details", []), "refusals": kw.pop("refusals", []),
            "duration": kw.pop("duration", 1.0), **kw}


RESULTS = {
    "generated": "2026-01-02T03:04:05+00:00",
    "command": "pytest -q tests/integration/test_zoo_a.py",
    "wall_s": 42.0, "exitstatus": 1, "xdist_workers": 2,
    "environment": {"cpu": "Test CPU 9000", "cores": 4, "cores_usable": 2,
                    "cpu_flags": ["avx2"], "platform": "Linux-test", "python": "3.11.7",
                    "versions": {"torch": "2.13.0+cpu", "openvino": "2026.4.1",
                                 "onnxruntime": "1.32.0", "ultralytics": "8.4.0",
                                 "nncf": "3.4.0"}},
    "collect_skipped": [{"nodeid": "tests/integration/test_zoo_x.py",
                         "reason": "could not import 'xyz'"}],
    "results": [
        _rec("t.py::test_exp[yolo11n-onnx]", "yolo11n.yaml", "onnx", "passed"),
        _rec("t.py::test_exp[yolov8n-onnx]", "yolov8n", "ONNX", "passed",
             details=["max err 0.001"]),
        _rec("t.py::test_exp[yolov8n-ov]", "yolov8n", "OpenVINO", "failed",
             message="AssertionError: boxes | differ by 3 px", duration=2.5),
        _rec("t.py::test_cm[yolov8n]", "yolov8n", "Core ML (convert)", "passed",
             refusals=["ExportError: no Core ML op for X"]),
        _rec("t.py::test_int8[yolov8n-a]", "yolov8n", "INT8 ORT", "passed",
             details=["float tail; score err 0.004, box 0.9 px"]),
        _rec("t.py::test_int8[yolov8n-b]", "yolov8n", "int8-ort", "passed",
             details=["a much longer figure that cannot stay inside the table's cell"]),
        _rec("t.py::test_tfl[lite0]", "efficientnet-lite0", "TFLite", "skipped",
             reason="litert_torch is not installed"),
        _rec("t.py::test_new[mine]", "my-new-model", "a new cell", "passed"),
    ],
}


def test_renderer_writes_the_table_from_a_results_file(tmp_path):
    src = tmp_path / "results.json"
    src.write_text(json.dumps(RESULTS))
    out = tmp_path / "docs" / "model-zoo.md"
    assert zoo_doc.main(["--results", str(src), "--out", str(out)]) == 1  # a test failed
    text = out.read_text()

    # the header: when, how, the machine, the libraries, what was not collected
    assert text.startswith("# Model zoo\n")
    assert "Generated 2026-01-02T03:04:05+00:00 by `python -m tools.zoo_doc`" in text
    assert "`pytest -q tests/integration/test_zoo_a.py` under pytest-xdist (2 workers)" in text
    assert "8 zoo tests, 6 passed, 1 failed, 1 skipped, 42 s in all" in text
    assert "Machine: Test CPU 9000, 2 cores (avx2); Linux-test; Python 3.11.7." in text
    assert ("Libraries: torch 2.13.0+cpu, transformers (not installed), openvino 2026.4.1, "
            "onnxruntime 1.32.0, ultralytics 8.4.0; also nncf 3.4.0.") in text
    assert "Not collected: `tests/integration/test_zoo_x.py` (could not import 'xyz')." in text
    # the prose kept from the hand-written page
    assert "What each mark means:" in text and "Installing the zoo's models:" in text

    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["model", "weights", *zoo_doc.COLUMNS, "a new cell", "test time"]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip().strip("|").split(" | ")]
            for r in table[2:]}
    # template order first (YOLOv8n before YOLO11n), unknown models after, by their key
    assert list(rows) == ["Ultralytics YOLOv8n (`yolov8n.yaml`)",
                          "Ultralytics YOLO11n (`yolo11n.yaml`)", "EfficientNet-Lite0",
                          "my-new-model"]
    col = {name: i for i, name in enumerate(header)}
    v8 = rows["Ultralytics YOLOv8n (`yolov8n.yaml`)"]
    assert v8[col["weights"]] == "untrained"
    assert v8[col["ONNX"]] == "✓ (max err 0.001)"
    assert v8[col["OpenVINO"]] == "✗ [^1]"
    assert v8[col["Core ML (convert)"]] == "refused: ExportError: no Core ML op for X"
    assert v8[col["INT8 ORT"]] == "✓ [^2]"  # two tests, details too long for the cell
    assert v8[col["TFLite"]] == v8[col["serve"]] == ""  # no test: empty
    assert v8[col["test time"]] == "6.5 s"
    assert rows["Ultralytics YOLO11n (`yolo11n.yaml`)"][col["ONNX"]] == "✓"
    assert rows["EfficientNet-Lite0"][col["TFLite"]] == "skipped: litert_torch is not installed"
    assert rows["my-new-model"][col["a new cell"]] == "✓"
    assert "[^1]: `test_exp[yolov8n-ov]` failed: AssertionError: boxes \\| differ by 3 px" in text
    assert ("[^2]: float tail; score err 0.004, box 0.9 px; a much longer figure that cannot "
            "stay inside the table's cell") in text

    # what the page shows reads back as the (model, cell) pairs of the results
    assert zoo_doc.parse_doc_cells(text) == {
        ("yolov8n", "ONNX"), ("yolo11n", "ONNX"), ("yolov8n", "OpenVINO"),
        ("yolov8n", "Core ML (convert)"), ("yolov8n", "INT8 ORT"),
        ("efficientnet-lite0", "TFLite"), ("my-new-model", "a new cell")}


def test_the_committed_page_shows_only_cells_that_marked_tests_exist_for(tmp_path):
    """Every non-empty cell of docs/model-zoo.md is a (model, cell) some test in
    tests/integration/test_zoo_*.py carries a zoo mark for (collected, not run)."""
    doc = zoo_doc.parse_doc_cells(zoo_doc.DOC.read_text())
    assert doc, "docs/model-zoo.md shows no cell"
    files = sorted(str(p) for p in (ROOT / "tests" / "integration").glob("test_zoo_*.py"))
    out = tmp_path / "collected.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist",
         "-p", "no:cacheprovider", *files], cwd=ROOT, capture_output=True, text=True,
        timeout=300, check=False, env=dict(os.environ, **{zoo_doc.ENV: str(out)}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    if data["collect_skipped"]:
        pytest.skip(f"zoo modules not collected here: {data['collect_skipped']}")
    marked = {(zoo_doc.canonical_model(c["model"]), zoo_doc.canonical_cell(c["cell"]))
              for c in data["collected"]}
    assert doc - marked == set(), "cells in docs/model-zoo.md with no marked test"
