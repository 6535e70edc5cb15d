"""Model zoo under a second transformers version (issue 24 item 1): the MiniLM cells
(all-MiniLM-L6-v2, real weights: OpenVINO FP32 export against torch, OpenVINO INT8 with NNCF's
transformer scheme, ONNX export) run in a subprocess whose ``PYTHONPATH`` puts an overlay of
transformers 5.5 (optimum-intel's pin) and the tokenizers/huggingface_hub/kernels it pins ahead
of the installed packages; torch, OpenVINO and the rest are the installed ones.

The overlay is made by ``.ci/run`` (``pip install --target .venv/overlays/transformers-5.5
--no-deps ...``); the test skips only when that directory is absent.

Measured here (transformers 5.5.4, OpenVINO 2026.4, NNCF 3.4, 2 CPU cores): TorchScript
tracing of the BERT fails on 5.5 (its mask code takes the traced sequence length, a 0-dim
tensor, for a deprecated ``cache_position`` and indexes it), so the export converts the
torch.export program (``openvino_route`` ``torch.export``): max abs error vs torch 2e-7;
INT8 36 FakeQuantize ops (as on 5.25 through TorchScript; the ONNX route gives 48), cosine
min 0.9900 / mean 0.9958; ONNX max abs error 1.3e-7. The subprocess takes about 35 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / ".venv" / "overlays" / "transformers-5.5"
CELLS = Path(__file__).resolve().with_name("minilm_cells.py")
MODEL = "all-MiniLM-L6-v2 (transformers 5.5)"


@pytest.fixture(scope="module")
def cells() -> dict[str, Any]:
    if not OVERLAY.is_dir():
        pytest.skip(f"no transformers 5.5 overlay at {OVERLAY} (.ci/run makes it: pip install "
                    "--target .venv/overlays/transformers-5.5 --no-deps transformers==5.5.*)")
    pytest.importorskip("openvino")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(OVERLAY)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        NNCF_CI="1")
    proc = subprocess.run([sys.executable, str(CELLS)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MINILM_CELLS ")]
    assert proc.returncode == 0 and lines, (
        f"the MiniLM cells failed under the overlay (rc {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    out = json.loads(lines[-1][len("MINILM_CELLS "):])
    assert out["transformers"].startswith("5.5."), out["transformers"]
    assert out["transformers_file"].startswith(str(OVERLAY)), out["transformers_file"]
    assert out["model_untouched"]
    return out


@pytest.mark.zoo(model=MODEL, cell="OpenVINO")
def test_openvino_export_matches_torch_without_the_onnx_detour(cells, record_property):
    record_property("zoo", f"transformers {cells['transformers']}, route "
                           f"{cells['openvino_route']}, max abs error "
                           f"{cells['openvino_fp32_max_abs']:.2g}")
    # TorchScript tracing fails on 5.5: the torch.export route, noted; never ONNX
    assert cells["openvino_route"] in ("torchscript", "torch.export"), cells
    if cells["openvino_route"] == "torch.export":
        assert any("TorchScript tracing failed" in n for n in cells["openvino_notes"])
    assert cells["openvino_fp32_max_abs"] <= 1e-4, cells


@pytest.mark.zoo(model=MODEL, cell="INT8 OpenVINO")
def test_openvino_int8_transformer_scheme_keeps_the_embedding(cells, record_property):
    record_property("zoo", f"{cells['openvino_int8_fake_quantize']} FakeQuantize, cosine min "
                           f"{cells['openvino_int8_cos_min']:.4f}")
    assert cells["openvino_int8_fake_quantize"] > 0
    # the ONNX route's graph takes 48 here; the direct route's 36 (as on transformers 5.25)
    assert cells["openvino_int8_fake_quantize"] <= 40, cells
    # as on transformers 5.25 (test_zoo_minilm): 0.98 or more over these 8 short sentences
    # (measured 0.9898 with the transformer scheme's 'mixed' preset, 0.9900 'performance')
    assert cells["openvino_int8_cos_min"] >= 0.98, cells


@pytest.mark.zoo(model=MODEL, cell="ONNX")
def test_onnx_export_matches_torch(cells, record_property):
    record_property("zoo", f"max abs error {cells['onnx_max_abs']:.2g}")
    assert cells["onnx_max_abs"] <= 1e-4, cells
