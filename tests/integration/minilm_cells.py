"""The MiniLM zoo cells (all-MiniLM-L6-v2, real weights) as one script that prints its figures
as one JSON line: run under another transformers version by
tests/integration/test_zoo_transformers_versions.py (``PYTHONPATH=<overlay> python
minilm_cells.py [--onnx-int8]``); not collected by pytest (no ``test_`` prefix).

Cells: the OpenVINO export (default route, numerics checked) against torch; the OpenVINO INT8
of NNCF's transformer scheme (cosine with the FP32 embedding); the ONNX export against torch.
``--onnx-int8`` also measures the same INT8 on the OpenVINO model made through ONNX (the
route ``onnx_fallback`` takes), for the FakeQuantize comparison.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zoo_models import MINILM_SENTENCES  # noqa: E402

SENTENCES = MINILM_SENTENCES


def run(onnx_int8: bool = False) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore")
    import torch
    import transformers
    from helpers import state_hash
    from zoo_models import minilm

    import modelopt_core as mo

    out: dict[str, Any] = {"transformers": transformers.__version__,
                           "transformers_file": transformers.__file__}
    t0 = time.perf_counter()
    model, tok = minilm()
    enc = tok(SENTENCES, padding="max_length", max_length=32, truncation=True,
              return_tensors="pt")
    x = (enc["input_ids"], enc["attention_mask"])
    before = state_hash(model)
    with torch.no_grad():
        ref = model(*x)
    calib = [tuple(t[i:i + 2] for t in x) for i in range(0, len(SENTENCES), 2)]
    example = tuple(t[:1] for t in x)
    out["load_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    s = mo.Session(model, example, calibration_data=calib, progress=False)
    art = s.export("openvino")
    out["openvino_route"] = art.metadata.get("openvino_route")
    out["openvino_notes"] = list(art.lineage[-1].notes)
    with s.runner("openvino") as r:
        out["openvino_fp32_max_abs"] = float((r(*x) - ref).abs().max())
    out["openvino_fp32_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    art = s.apply("openvino.quantize", model_type="transformer")
    out["openvino_int8_fake_quantize"] = art.metadata["openvino_fake_quantize"]
    with s.runner("openvino") as r:
        cos = torch.nn.functional.cosine_similarity(r(*x), ref)
    out["openvino_int8_cos_min"] = float(cos.min())
    out["openvino_int8_cos_mean"] = float(cos.mean())
    out["openvino_int8_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    s2 = mo.Session(model, example, calibration_data=calib, progress=False)
    art = s2.export("onnx")
    out["onnx_exporter_used"] = art.metadata.get("onnx_exporter_used")
    with s2.runner("onnxruntime") as r:
        out["onnx_max_abs"] = float((r(*x) - ref).abs().max())
    out["onnx_s"] = round(time.perf_counter() - t0, 2)
    if onnx_int8:  # openvino.from_onnx, then the same INT8: the onnx_fallback route's count
        t0 = time.perf_counter()
        s2.export("openvino")
        art = s2.apply("openvino.quantize", model_type="transformer")
        out["onnx_route_int8_fake_quantize"] = art.metadata["openvino_fake_quantize"]
        with s2.runner("openvino") as r:
            cos = torch.nn.functional.cosine_similarity(r(*x), ref)
        out["onnx_route_int8_cos_min"] = float(cos.min())
        out["onnx_route_int8_s"] = round(time.perf_counter() - t0, 2)
    out["model_untouched"] = state_hash(model) == before
    return out


if __name__ == "__main__":
    print("MINILM_CELLS " + json.dumps(run(onnx_int8="--onnx-int8" in sys.argv)))
