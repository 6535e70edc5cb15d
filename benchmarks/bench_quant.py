"""Issue 4 benchmark: the quantization suite, in one process, through the Session API.

- ResNet-18-shaped model (batch 8, 224x224): torch eager FP32 (baseline), quantize.static with
  each observer -> onnx -> onnxruntime, the ORT static-QDQ route (export -> onnx.optimize ->
  onnx.quantize_static) for comparison, quantize.auto, quantize.bf16 on the torch runner and
  onnx.convert_fp16 on ONNX Runtime. Top-1 agreement and max relative error vs FP32 on
  held-out images.
- Demo CNN on digits (batch 64): FP32, PTQ per observer (ORT INT8), QAT, auto, bf16: test
  accuracy.
- Linear-heavy MLP and LSTM/GRU (batch 8): quantize.dynamic on the torch runner vs FP32, and
  ORT's dynamic quantization (onnx.quantize_dynamic) for comparison.

Latencies are p50 over round-robin blocks of calls (noise hits all rows alike, and ORT's
spinning worker threads do not bill one session's spin to the next); ratios vs torch eager FP32
of the same model, measured side by side in one process.

    python benchmarks/bench_quant.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import calibrated_resnet  # noqa: E402
from common import (agreement, interleaved_p50, repeated_ratios, span,  # noqa: E402
                    write_results)

import modelopt_core as mo  # noqa: E402
from modelopt_core.training import TrainConfig, fit  # noqa: E402
from modelopt_demo.data import (accuracy_fn, image_batches, load_digits_data,  # noqa: E402
                                predict_accuracy)
from modelopt_demo.models import MLP, LSTMClassifier, SmallCNN  # noqa: E402

OBSERVERS = ("minmax", "percentile", "mse", "entropy")
ORT = {"intra_op_num_threads": 2}
NOCHECK = {"check_numerics": False}


def size_mb(art: mo.ModelArtifact) -> float:
    """Deployed bytes: the ONNX file, or the torch weights (INT8 counted as 1 byte)."""
    if art.format == "onnx":
        return len(art.model.SerializeToString()) / 1e6
    md = art.metadata
    for k in ("int8_size_bytes", "half_size_bytes"):
        if k in md:
            return md[k] / 1e6
    return sum(t.numel() * t.element_size() for t in art.model.state_dict().values()) / 1e6


def fresh(model, x, **kw) -> mo.Session:
    return mo.Session(model, (x,), progress=False, **kw)


def time_rows(rows: list[dict[str, Any]], x: Any, rounds: int) -> None:
    """Fill p50_ms and speedup_vs_eager for rows holding a 'runner' (first row: eager)."""
    lat = interleaved_p50({r["config"]: (lambda r=r: r["runner"](x)) for r in rows},
                          rounds=3 * rounds, block=3)
    for r in rows:
        r["p50_ms"] = lat[r["config"]]
        r["speedup_vs_eager"] = lat[rows[0]["config"]] / lat[r["config"]]


def resnet(args, notes) -> list[dict[str, Any]]:
    calib = image_batches(args.calib, seed=2)
    evals = image_batches(args.evals, seed=3)
    model = calibrated_resnet(image_batches(8, seed=1))
    x = evals[0]
    base = fresh(model, x)
    rows = [{"config": "torch eager FP32", "runner": base.runner("torch"),
             "size_mb": size_mb(base.original)}]
    for obs in OBSERVERS:
        s = fresh(model, x, calibration_data=calib)
        t0 = time.perf_counter()
        q = s.apply("quantize.static", observer=obs, calibration_batches=args.calib)
        o = s.export("onnx", **NOCHECK)
        rows.append({"config": f"quantize.static[{obs}] -> onnxruntime INT8",
                     "runner": s.runner("onnxruntime", **ORT), "size_mb": size_mb(o),
                     "build_s": time.perf_counter() - t0, "_sim": s.runner("torch", q)})
    s = fresh(model, x, calibration_data=calib)
    t0 = time.perf_counter()
    s.export("onnx")
    s.apply("onnx.optimize")
    o = s.apply("onnx.quantize_static", per_channel=True, calibration_batches=args.calib)
    rows.append({"config": "ORT route: onnx.quantize_static INT8 (reference)",
                 "runner": s.runner("onnxruntime", **ORT), "size_mb": size_mb(o),
                 "build_s": time.perf_counter() - t0})
    s = fresh(model, x, calibration_data=calib)
    t0 = time.perf_counter()
    a = s.apply("quantize.auto", max_accuracy_drop=1.0, measure_speed=False,
                calibration_batches=args.calib)
    o = s.export("onnx", **NOCHECK)
    rows.append({"config": f"quantize.auto (<=1pt agreement drop; "
                           f"{len(a.metadata['float_layers'])} float layers) -> ORT",
                 "runner": s.runner("onnxruntime", **ORT), "size_mb": size_mb(o),
                 "build_s": time.perf_counter() - t0})
    s = fresh(model, x)
    b = s.apply("quantize.bf16")
    rows.append({"config": "quantize.bf16 (torch, channels_last)", "runner": s.runner("torch"),
                 "size_mb": size_mb(b)})
    compiled = s.runner("torch.compile")
    compiled(x)  # compile outside the timed region
    rows.append({"config": "quantize.bf16 (torch.compile backend, freezing)", "runner": compiled,
                 "size_mb": size_mb(b)})
    s = fresh(model, x)
    f32 = s.export("onnx")
    rows.append({"config": "onnxruntime FP32", "runner": s.runner("onnxruntime", **ORT),
                 "size_mb": size_mb(f32)})
    h = s.apply("onnx.convert_fp16")
    rows.append({"config": "onnx.convert_fp16 -> onnxruntime", "runner":
                 s.runner("onnxruntime", **ORT), "size_mb": size_mb(h)})
    time_rows(rows, x, args.rounds)
    with torch.no_grad():
        ref = [rows[0]["runner"](e) for e in evals]
        for r in rows:
            r.update(agreement(ref, [r["runner"](e) for e in evals]))
            if "_sim" in r:
                r["torch_sim_top1_agreement_pct"] = agreement(
                    ref, [r["_sim"](e) for e in evals])["top1_agreement_pct"]
    # The bars, measured head to head: only the candidates named by a bar, many more rounds,
    # in three repeats (the machine is shared; the spread across repeats is reported).
    names = {"eager": rows[0], "int8": rows[1], "ort_route": rows[5], "bf16": rows[7],
             "bf16_compile": rows[8]}
    ratio, eager_ms = repeated_ratios({k: (lambda r=r: r["runner"](x)) for k, r in names.items()},
                                      "eager", rounds=3 * args.bar_rounds, block=3)
    med = {k: v[1] for k, v in ratio.items()}
    spans = {k: span(v) for k, v in ratio.items()}
    agree = rows[1]["top1_agreement_pct"]
    args.bars = {"speedup_vs_eager_per_repeat": ratio, "int8_top1_agreement_pct": agree}
    int8_ok = med["int8"] >= 5 and agree >= 99
    notes.append(
        f"bar head-to-head ({args.bar_rounds} rounds of 3-call blocks per repeat, median of 3 "
        f"repeats): eager p50 {eager_ms[1]:.1f} ms")
    notes.append(
        f"ResNet bar (quantize.static -> onnx -> ORT >= 5x eager, agreement >= 99%): "
        f"{spans['int8']}, {agree:.1f}% -> {'MET' if int8_ok else 'NOT MET'} (ORT route in the "
        f"same run: {spans['ort_route']})")
    notes.append(f"bf16 bar (>= 2.5x eager): torch runner {spans['bf16']} -> "
                 f"{'MET' if med['bf16'] >= 2.5 else 'NOT MET'}; torch.compile runner (Inductor "
                 f"freezing) {spans['bf16_compile']} -> "
                 f"{'MET' if med['bf16_compile'] >= 2.5 else 'NOT MET'}")
    for r in rows:
        r["model"] = "ResNet-18 b8"
    return rows


def digits_rows(args, notes) -> list[dict[str, Any]]:
    d = load_digits_data()
    torch.manual_seed(0)
    model = SmallCNN()
    fit(model, d.train, config=TrainConfig(epochs=args.digits_epochs, lr=3e-3),
        ctx=mo.Context(show_progress=False))
    model.eval()
    x = d.test[0][0]
    kw = dict(calibration_data=d.calibration[:8], train_data=d.train,
              eval_fn=accuracy_fn(d.test))
    base = fresh(model, x, **kw)
    rows = [{"config": "torch eager FP32", "runner": base.runner("torch"),
             "size_mb": size_mb(base.original)}]
    for obs in OBSERVERS:
        s = fresh(model, x, **kw)
        s.apply("quantize.static", observer=obs)
        o = s.export("onnx", **NOCHECK)
        rows.append({"config": f"quantize.static[{obs}] -> ORT INT8",
                     "runner": s.runner("onnxruntime", **ORT), "size_mb": size_mb(o)})
    s = fresh(model, x, **kw)
    s.apply("quantize.qat", epochs=2, lr=5e-4)
    o = s.export("onnx", **NOCHECK)
    rows.append({"config": "quantize.qat (2 epochs) -> ORT INT8",
                 "runner": s.runner("onnxruntime", **ORT), "size_mb": size_mb(o)})
    s = fresh(model, x, **kw)
    a = s.apply("quantize.auto", max_accuracy_drop=0.2, measure_speed=False)
    o = s.export("onnx", **NOCHECK)
    rows.append({"config": f"quantize.auto (<=0.2pt; {len(a.metadata['float_layers'])} "
                           "float layers) -> ORT", "runner": s.runner("onnxruntime", **ORT),
                 "size_mb": size_mb(o)})
    s = fresh(model, x, **kw)
    b = s.apply("quantize.bf16")
    rows.append({"config": "quantize.bf16 (torch)", "runner": s.runner("torch"),
                 "size_mb": size_mb(b)})
    time_rows(rows, x, args.rounds)
    for r in rows:
        r["accuracy_pct"] = predict_accuracy(r["runner"], d.test)
        r["accuracy_drop"] = rows[0]["accuracy_pct"] - r["accuracy_pct"]
        r["model"] = "SmallCNN digits b64"
    ptq, qat = rows[1], rows[5]
    notes.append(f"digits bars: PTQ drop {ptq['accuracy_drop']:.2f} (<= 0.5: "
                 f"{'MET' if ptq['accuracy_drop'] <= 0.5 else 'NOT MET'}), QAT drop "
                 f"{qat['accuracy_drop']:.2f} (<= 0.2: "
                 f"{'MET' if qat['accuracy_drop'] <= 0.2 else 'NOT MET'})")
    return rows


def dynamic_rows(args, notes) -> list[dict[str, Any]]:
    out = []
    torch.manual_seed(0)
    for name, model, x in (("MLP 512-2048x3-512 b8", MLP().eval(), torch.randn(8, 512)),
                           ("LSTM 2x256 b8 T50", LSTMClassifier().eval(),
                            torch.randn(8, 50, 64)),
                           ("GRU 2x256 b8 T50", LSTMClassifier(cell="gru").eval(),
                            torch.randn(8, 50, 64))):
        base = fresh(model, x)
        rows = [{"config": "torch eager FP32", "runner": base.runner("torch"),
                 "size_mb": size_mb(base.original)}]
        s = fresh(model, x)
        q = s.apply("quantize.dynamic")
        rows.append({"config": f"quantize.dynamic (torch; INT8 layers "
                               f"{len(q.metadata['quantized_layers'])}, float "
                               f"{len(q.metadata['float_layers'])})",
                     "runner": s.runner("torch"), "size_mb": size_mb(q)})
        s = fresh(model, x)
        q = s.apply("quantize.dynamic", keep_if_slower=False)
        rows.append({"config": "quantize.dynamic keep_if_slower=False (torch)",
                     "runner": s.runner("torch"), "size_mb": size_mb(q)})
        s = fresh(model, x)
        s.export("onnx")
        rows.append({"config": "onnxruntime FP32", "runner": s.runner("onnxruntime", **ORT),
                     "size_mb": size_mb(s.current)})
        o = s.apply("onnx.quantize_dynamic")
        rows.append({"config": "ORT route: onnx.quantize_dynamic", "runner":
                     s.runner("onnxruntime", **ORT), "size_mb": size_mb(o)})
        time_rows(rows, x, args.rounds)
        ref = [rows[0]["runner"](x)]
        for r in rows:
            r["max_rel_error"] = agreement(ref, [r["runner"](x)])["max_rel_error"]
            r["model"] = name
        notes.append(f"{name}: quantize.dynamic {rows[1]['speedup_vs_eager']:.2f}x eager "
                     f"(forced INT8 {rows[2]['speedup_vs_eager']:.2f}x), ORT dynamic "
                     f"{rows[4]['speedup_vs_eager']:.2f}x")
        out += rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer rounds, batches and epochs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.rounds, args.calib, args.evals, args.digits_epochs, args.bar_rounds = (
        (3, 4, 4, 3, 3) if args.quick else (8, 16, 16, 6, 20))
    notes: list[str] = [f"{args.threads} threads, {args.rounds} rounds of 3-call blocks; ResNet "
                        f"agreement over {args.evals * 8} held-out images; machine shared "
                        "with other jobs (latency noise)"]
    t0 = time.perf_counter()
    rows = resnet(args, notes) + digits_rows(args, notes) + dynamic_rows(args, notes)
    notes.append(f"total benchmark time {time.perf_counter() - t0:.0f} s")
    for r in rows:
        r.pop("runner", None)
        r.pop("_sim", None)
    write_results("quant", {"benchmark": "quant", "quick": args.quick,
                           "bars": getattr(args, "bars", None)}, rows,
                  ["model", "config", "p50_ms", "speedup_vs_eager", "size_mb",
                   "top1_agreement_pct", "torch_sim_top1_agreement_pct", "accuracy_pct",
                   "accuracy_drop", "max_rel_error"],
                  "Quantization suite (CPU)", notes)


if __name__ == "__main__":
    main()
