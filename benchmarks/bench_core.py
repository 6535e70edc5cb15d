"""Issue 3 benchmark: ResNet-18-shaped model, batch 8, 224x224, in one process.

Rows: torch eager FP32, torch channels_last, ONNX Runtime FP32, the Session's ONNX Runtime
static INT8 (export -> onnx.optimize -> onnx.quantize_static), and, for reference, a hand-written
ONNX Runtime static-QDQ script. Latencies are timed round-robin; ratios are vs torch eager FP32.
Agreement is top-1 agreement and max relative error vs torch FP32 on the same held-out inputs.

    python benchmarks/bench_core.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import agreement, interleaved_p50, write_results  # noqa: E402

import modelopt_core as mo  # noqa: E402
from modelopt_demo.data import image_batches  # noqa: E402
from modelopt_demo.models import ResNet18  # noqa: E402


def calibrated_resnet(batches: list[torch.Tensor]) -> torch.nn.Module:
    """A ResNet-18 whose BatchNorm statistics are fitted to the data (like a trained net's),
    so activations have realistic ranges for calibration and agreement."""
    torch.manual_seed(0)
    m = ResNet18()
    m.train()
    with torch.no_grad():
        for x in batches:
            m(x)
    return m.eval()


def hand_written_ort_int8(onnx_model, calib, threads: int):
    """The reference: ORT pre-processing + quantize_static by hand, done carefully: QDQ,
    per-channel int8 weights, uint8 activations (the u8s8 kernels VNNI runs fastest)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x.numpy()} for x in calib])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        onnx.save_model(onnx_model, f"{d}/m.onnx")
        quant_pre_process(f"{d}/m.onnx", f"{d}/p.onnx")
        quantize_static(f"{d}/p.onnx", f"{d}/q.onnx", Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(f"{d}/q.onnx", so, providers=["CPUExecutionProvider"])
        sess.quantized_proto = onnx.load(f"{d}/q.onnx")  # for graph comparisons
        return sess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and eval batches")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rounds, n_eval = (5, 4) if args.quick else (20, 16)
    bn_data = image_batches(8, seed=1)
    calib = image_batches(16, seed=2)
    evals = image_batches(n_eval, seed=3)
    model = calibrated_resnet(bn_data)
    x = evals[0]

    s = mo.Session(model, (x,), calibration_data=calib, progress=False)
    t0 = time.perf_counter()
    onnx_fp32 = s.export("onnx")
    s.apply("onnx.optimize")
    int8 = s.apply("onnx.quantize_static", per_channel=True, calibrate_method="minmax")
    pipeline_s = time.perf_counter() - t0
    ort_opts = {"intra_op_num_threads": args.threads}
    runners = {
        "torch eager FP32": s.runner("torch", s.original),
        "torch channels_last": s.runner("torch", s.original, channels_last=True),
        "onnxruntime FP32": s.runner("onnxruntime", onnx_fp32, **ort_opts),
        "Session onnxruntime INT8": s.runner("onnxruntime", int8, **ort_opts),
    }
    hand = hand_written_ort_int8(onnx_fp32.model, calib, args.threads)
    xn = x.numpy()
    fns = {k: (lambda r=r: r(x)) for k, r in runners.items()}
    fns["hand-written ORT INT8 (reference)"] = lambda: hand.run(None, {"input": xn})
    lat = interleaved_p50(fns, rounds=rounds)

    ref = [runners["torch eager FP32"](e) for e in evals]
    sizes = {"torch eager FP32": s.original, "torch channels_last": s.original,
             "onnxruntime FP32": onnx_fp32, "Session onnxruntime INT8": int8}
    from modelopt_profilers.profilers import SizeProfiler

    rows = []
    for name in fns:
        if name in runners:
            got = [runners[name](e) for e in evals]
            size = SizeProfiler().profile(runners[name], sizes[name], s.context())["size_mb"]
        else:
            got = [torch.from_numpy(hand.run(None, {"input": e.numpy()})[0]) for e in evals]
            size = None
        rows.append({"config": name, "p50_ms": lat[name],
                     "speedup_vs_eager": lat["torch eager FP32"] / lat[name], "size_mb": size,
                     **agreement(ref, got)})
    bar = rows[3]
    notes = [f"batch 8, 224x224, {args.threads} threads, {rounds} interleaved rounds, "
             f"agreement over {n_eval * 8} held-out images",
             f"Session pipeline (export + optimize + calibrate/quantize) took {pipeline_s:.1f} s",
             f"bar: Session INT8 >= 5x eager and top-1 agreement >= 99%: "
             f"{bar['speedup_vs_eager']:.2f}x, {bar['top1_agreement_pct']:.1f}% -> "
             f"{'MET' if bar['speedup_vs_eager'] >= 5 and bar['top1_agreement_pct'] >= 99 else 'NOT MET'}"]
    write_results("core", {"benchmark": "core", "quick": args.quick}, rows,
                  ["config", "p50_ms", "speedup_vs_eager", "size_mb", "top1_agreement_pct",
                   "max_rel_error"], "ResNet-18-shaped, batch 8, CPU", notes)


if __name__ == "__main__":
    main()
