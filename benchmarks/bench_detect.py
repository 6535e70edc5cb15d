"""Issue 14 benchmark: the detection workload end to end.

1. The YOLO-style detector (CSP backbone, FPN neck, 3 anchor-free heads) trained on the
   digits-detection canvases (detection loss + BN-gamma L1): mAP@0.5 and mAP@0.5:0.95 on the
   held-out test split. Bar: mAP@0.5 >= 0.9.
2. Slimmed 50% (``prune.slimming``) + feature KD from the original with adapters
   (``distill.features``, its task term being the detection loss the Session carries as
   ``task_loss``) + INT8 on OpenVINO (``openvino.quantize``) and on ONNX Runtime
   (``onnx.quantize_static``), all in one Session's lineage:
   latency at batch 1 against the FP32 eager detector, timed side by side in one run, and the
   mAP@0.5 drop. Bar: >= 4x faster with a drop <= 1.5 points (OpenVINO or ORT).
3. The Mobile variant (depthwise-separable blocks + SE attention) trained the same way,
   reported beside it (mAP, eager and OpenVINO latency).
4. Exports of the trained detector to ONNX, OpenVINO and TFLite: max abs error of the three
   raw head outputs against torch. Bar: <= 1e-3.

    python benchmarks/bench_detect.py [--quick] [--epochs N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import modelopt_core as mo

sys.path.insert(0, str(Path(__file__).parent))
from common import repeated_ratios, span, write_results

from modelopt_demo.detection import (
    MobileDetector,
    YoloDetector,
    evaluate,
    load_detection_data,
    train_detector,
)
from modelopt_demo.detection.pipeline import (
    ORT_PIPELINE,
    PIPELINE,
    detection_session,
    run_pipeline,
)

COLUMNS = ["model", "backend", "map50", "map", "map50_drop_pt", "latency_p50_ms", "speedup",
           "params", "bar", "pass"]


def heads_error(s, art, backend: str, model, xs) -> float:
    """Max abs error of the three heads of ``art`` on ``backend`` against torch ``model``."""
    err = 0.0
    with s.runner(backend, art) as r, torch.no_grad():
        for x in xs:
            for g, ref in zip(r(x), model(x)):
                err = max(err, float((torch.as_tensor(g) - ref).abs().max()))
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (< 2 min)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 30)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    if args.quick:
        size, n_train, n_test, width, epochs, kd = 32, 96, 24, 4, 1, 1
    else:
        size, n_train, n_test, width, epochs, kd = 64, 2000, 500, 8, 30, 20
    epochs = args.epochs or epochs
    data = load_detection_data(n_train=n_train, n_test=n_test, size=size)
    rows, notes, t0 = [], [], time.perf_counter()

    base = YoloDetector(width=width)
    train_detector(base, data, epochs=epochs, sparsity=1e-4)
    m0 = evaluate(base, data.test)
    print(f"trained YoloDetector: {m0} ({time.perf_counter() - t0:.0f} s)")
    mobile = MobileDetector(width=width)
    train_detector(mobile, data, epochs=epochs, sparsity=1e-4)
    mm = evaluate(mobile, data.test)

    steps = [(m, n, dict(c, epochs=kd) if n == "distill.features" else c)
             for m, n, c in PIPELINE[:2]]
    s = detection_session(base, data)
    # slim 50% -> feature KD from the original + the detection loss (the Session's task_loss)
    run_pipeline(s, steps)
    slim_art, kd_art = s.history[1], s.current
    run_pipeline(s, PIPELINE[2:])  # -> OpenVINO -> NNCF INT8
    ov_int8 = s.current
    s_ort = mo.Session(kd_art, (data.example,), calibration_data=data.train.inputs(1)[:64],
                       progress=False)
    run_pipeline(s_ort, ORT_PIPELINE[2:])  # the same KD model -> ONNX -> ORT static INT8
    ort_int8 = s_ort.current
    s_ov = s
    sm = detection_session(mobile, data)
    mobile_ov = sm.export("openvino")

    x = data.example
    runners = {"ov_int8": s_ov.runner("openvino", ov_int8),
               "ort_int8": s_ort.runner("onnxruntime", ort_int8),
               "mobile_ov": sm.runner("openvino", mobile_ov)}
    fns = {"fp32_eager": lambda: base(x), "mobile_eager": lambda: mobile(x),
           **{k: (lambda r=r: r(x)) for k, r in runners.items()}}
    with torch.no_grad():
        ratios, base_ms = repeated_ratios(fns, "fp32_eager", repeats=1 if args.quick else 3,
                                          rounds=6 if args.quick else 30)
    maps = {k: evaluate(r, data.test, batch_size=1) for k, r in runners.items()}
    maps["slim_eager"] = evaluate(slim_art.model, data.test)
    maps["kd_eager"] = evaluate(kd_art.model, data.test)
    nparams = {"base": sum(p.numel() for p in base.parameters()),
               "slim": sum(p.numel() for p in kd_art.model.parameters()),
               "mobile": sum(p.numel() for p in mobile.parameters())}

    def row(model, backend, m, key, params, bar=None, ok=None):
        r = ratios.get(key)
        return {"model": model, "backend": backend, "map50": 100 * m["map50"],
                "map": 100 * m["map"], "map50_drop_pt": 100 * (m0["map50"] - m["map50"]),
                "latency_p50_ms": base_ms[len(base_ms) // 2] / r[len(r) // 2] if r else None,
                "speedup": span(r) if r else None, "params": params, "bar": bar, "pass": ok}

    rows.append(row("YoloDetector FP32", "torch eager", m0, "fp32_eager", nparams["base"],
                    "mAP@0.5 >= 0.9", m0["map50"] >= 0.9))
    rows.append(row("slim 50% (1 epoch fine-tune)", "torch eager", maps["slim_eager"], None,
                    nparams["slim"]))
    rows.append(row("slim 50% + feature KD + det. loss", "torch eager", maps["kd_eager"], None,
                    nparams["slim"]))
    for key, label in (("ov_int8", "openvino"), ("ort_int8", "onnxruntime")):
        med = ratios[key][len(ratios[key]) // 2]
        drop = 100 * (m0["map50"] - maps[key]["map50"])
        rows.append(row("slim 50% + KD + INT8", label, maps[key], key, nparams["slim"],
                        ">= 4x, drop <= 1.5 pt", med >= 4.0 and drop <= 1.5))
    rows.append(row("MobileDetector (SE) FP32", "torch eager", mm, "mobile_eager",
                    nparams["mobile"]))
    rows.append(row("MobileDetector (SE) FP32", "openvino", maps["mobile_ov"], "mobile_ov",
                    nparams["mobile"]))
    for r in runners.values():
        r.close()

    xs = [data.test.images[i:i + 1] for i in range(min(8, len(data.test)))]
    se = detection_session(base, data)
    export_err = {}
    for target, backend in (("onnx", "onnxruntime"), ("openvino", "openvino"),
                            ("tflite", "tflite")):
        try:
            art = se.export(target)
            export_err[target] = heads_error(se, art, backend, base, xs)
        except Exception as e:  # noqa: BLE001 - report a missing runtime, keep the rest
            export_err[target] = None
            notes.append(f"export {target}: {type(e).__name__}: {e}")
        se.discard()
    for target, err in export_err.items():
        rows.append({"model": "YoloDetector FP32 export", "backend": target,
                     "bar": "heads max abs err <= 1e-3 (" + (f"{err:.2e}" if err is not None
                                                            else "n/a") + ")",
                     "pass": err is not None and err <= 1e-3})
    quick_note = " (--quick: smoke run, numbers mean nothing)" if args.quick else ""
    notes += [
        (f"{size}x{size} canvases, {n_train} train / {n_test} test (test digits held out), "
         f"width {width}, {epochs} training epochs (BN-gamma L1 1e-4), {kd} epochs of "
         "distill.features (feature KD with adapters + the detection loss as the Session's "
         "task_loss, lr 5e-3)"),
        ("speedup: p50 latency at batch 1 vs the FP32 eager detector, timed interleaved in "
         "one run; median (min-max) over repeats"),
        f"total {time.perf_counter() - t0:.0f} s{quick_note}"]
    write_results("detect",
                  {"epochs": epochs, "map_fp32": m0, "map_mobile": mm, "export_max_abs_err":
                   export_err, "quick": args.quick}, rows, COLUMNS,
                  "Detection: YOLO-style detector on digits, slim + KD + INT8, Mobile (SE)",
                  notes)


if __name__ == "__main__":
    main()
