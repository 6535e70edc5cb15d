"""Issue 28 benchmark: the production loop closed. Serve the FP32 digits CNN (ONNX) with
``modelopt serve --capture``, send it traffic from a shifted distribution (x -> a*x + b in
the model's standardized units: a sensor that is brighter / higher-contrast than the training
data), stop it, then ``modelopt optimize --calibration-from`` the capture (``--eval-from``
the same folder: agreement with the FP32 production model on held-out captured samples).
Compare its INT8 artifact with the INT8 that ``modelopt optimize --calibration`` makes from
the original calibration data (the training distribution): top-1 agreement with FP32 on
fresh samples of the shifted distribution (never sent, never captured), and on the original
distribution. The unshifted row is the control (traffic = the original distribution).

    python benchmarks/bench_production_loop.py [--quick]

Both searches are the same: ONNX Runtime, objective size (INT8 is smaller, so no timing
decides which trial is kept), 2 trials (the plain export, then static INT8 with its
defaults), accuracy budget 20 points (the benchmark measures agreement itself).
``--quick``: one shift (a smoke run, written under results/quick/).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results

import modelopt_core as mo

SEARCH = ["--target", "onnxruntime", "--objective", "size", "--trials", "2",
          "--max-accuracy-drop", "20", "--no-progress"]
SHIFTS = [(1.0, 0.0), (3.0, 1.0), (2.0, 3.0)]  # (scale, shift); the first is the control


def _cli(*args: str, timeout: float = 600) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "modelopt_core", *args], check=False,
                       capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"modelopt {args[0]} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout


def _model(tmp: Path) -> tuple[mo.ModelArtifact, Any]:
    """The FP32 production artifact (SmallCNN width 8, 3 epochs on digits, ONNX) and data."""
    from modelopt_core.training import TrainConfig, fit
    from modelopt_demo.data import load_digits_data
    from modelopt_demo.models import SmallCNN

    d = load_digits_data()
    torch.manual_seed(0)
    m = SmallCNN(width=8)
    fit(m, d.train, config=TrainConfig(epochs=3, lr=3e-3, seed=0),
        ctx=mo.Context(show_progress=False))
    s = mo.Session(m.eval(), (d.example,), progress=False)
    s.export("onnx", exporter="torchscript").save(tmp / "fp32")
    return mo.load_artifact(tmp / "fp32"), d


def _serve_and_capture(tmp: Path, cap: Path, traffic: torch.Tensor) -> dict[str, Any]:
    """``modelopt serve fp32 --capture cap`` answering ``traffic`` in requests of 1-8 rows;
    the capture's manifest once the server has stopped."""
    import httpx

    from modelopt_core.captured import MANIFEST

    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, "-m", "modelopt_core", "serve", str(tmp / "fp32"),
                             "--port", str(port), "--capture", str(cap), "--capture-rate",
                             "0.5", "--capture-max", "300"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        at, i = 0, 0
        with httpx.Client(timeout=30) as client:
            while at < len(traffic):
                x = traffic[at:at + 1 + i % 8]
                at, i = at + len(x), i + 1
                buf = io.BytesIO()
                np.savez(buf, input=x.numpy())
                r = client.post(f"{url}/predict", content=buf.getvalue(),
                                headers={"content-type": "application/x-npz"})
                r.raise_for_status()
    finally:
        proc.terminate()  # SIGTERM: a clean stop flushes the capture
        proc.wait(timeout=60)
    return json.loads((cap / MANIFEST).read_text())


def _agreement(path: Path, fp32: mo.ModelArtifact, x: torch.Tensor) -> float:
    with mo.load_runner(mo.load_artifact(path)) as r, mo.load_runner(fp32) as ref:
        return 100.0 * float((r(x).argmax(1) == ref(x).argmax(1)).float().mean())


def _best_recipe(out: str) -> str:
    found = re.search(r"^best: trial \d+: (.*)$", out, re.MULTILINE)
    return found[1] if found else "(no feasible trial)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        fp32, d = _model(tmp)
        train = torch.cat([b[0] for b in d.train])
        test = torch.cat([b[0] for b in d.test])
        np.savez(tmp / "orig.npz", input=train[:256].numpy())
        orig = _cli("optimize", "--model", str(tmp / "fp32"), "--calibration",
                    str(tmp / "orig.npz"), "--out", str(tmp / "orig-int8"), *SEARCH)
        for scale, shift in SHIFTS[-1:] if a.quick else SHIFTS:
            cap = tmp / f"capture-{scale}-{shift}"
            m = _serve_and_capture(tmp, cap, test * scale + shift)
            out = _cli("optimize", "--model", str(tmp / "fp32"), "--calibration-from",
                       str(cap), "--eval-from", str(cap), "--out", str(tmp / cap.name), *SEARCH)
            fresh = train[256:] * scale + shift  # the traffic's distribution, never sent
            said = re.search(r"^accuracy: (.*)$", out, re.MULTILINE)
            for name, folder, text, cal in (
                    ("INT8 calibrated on the original data", "orig-int8", orig,
                     "256 original samples"),
                    ("INT8 calibrated on captured traffic", cap.name, out,
                     f"{m['kept']} captured of {m['seen']} requests' rows (rate 0.5, max 300)")):
                rows.append({
                    "traffic": f"{scale:g}x + {shift:g}" + (" (control)" if (scale, shift)
                                                            == (1.0, 0.0) else ""),
                    "candidate": name, "calibration": cal, "recipe": _best_recipe(text),
                    "agreement_shifted_pct": _agreement(tmp / folder / "best", fp32, fresh),
                    "agreement_original_pct": _agreement(tmp / folder / "best", fp32, test),
                    "fresh_samples": len(fresh)})
            rows[-1]["search_metric"] = said[1] if said else ""
    notes = [
        ("agreement: top-1 agreement (%) with the FP32 production artifact on ONNX Runtime; "
         "shifted: fresh samples of the traffic's distribution (digits train split minus the "
         "256 original calibration samples, transformed), never sent to the server; "
         "original: the untransformed digits test split"),
        ("traffic: the digits test split (450 samples) transformed, sent to `modelopt serve "
         "--capture DIR --capture-rate 0.5 --capture-max 300` in requests of 1 to 8 rows"),
        "both candidates come from the same search (`modelopt optimize --model fp32 "
        + " ".join(SEARCH) + "`), one with `--calibration orig.npz`, one with "
        "`--calibration-from DIR --eval-from DIR` (a quarter of the capture held out to "
        "measure agreement, the rest calibrates)",
        "reproduce: `python benchmarks/bench_production_loop.py`",
    ]
    write_results("production-loop", {"quick": a.quick, "shifts": SHIFTS}, rows,
                  ["traffic", "candidate", "calibration", "recipe", "agreement_shifted_pct",
                   "agreement_original_pct", "fresh_samples"],
                  "Production loop: INT8 recalibrated on captured traffic vs on the original "
                  "data", notes)


if __name__ == "__main__":
    main()
