"""YOLOv8n trained on the project's digits-on-canvas set: accuracy and speed of our pipeline
against Ultralytics' own OpenVINO exports (issue 24, "YOLO done properly").

What runs, in one process:
1. The data: digits-on-canvas images (``modelopt_demo.detection``, offline) written as a
   YOLO-format dataset (PNG + label files + data.yaml).
2. Ultralytics trains ``YOLO("yolov8n.yaml")`` from scratch on it (its own trainer; cached in
   ``--out``). This is "the user's trained model".
3. Ultralytics' own exports of it: ``export(format="openvino")`` and
   ``export(format="openvino", int8=True, data=...)`` (NNCF with its head kept in float).
4. Ours, through the Session as a user calls it: ``export("openvino")`` +
   ``openvino.quantize`` (default float tail); and pruned 30% (``prune.structured``) +
   feature distillation from the unpruned model with the detector's own loss
   (``distill.features``, ``Session(task_loss=...)`` = Ultralytics' ``v8DetectionLoss``) +
   ``openvino.quantize``.
5. mAP@0.5 and mAP@0.5:0.95 of every variant by Ultralytics' own validator
   (``YOLO(path).val``) on the same validation split: our IRs are saved into a folder with
   the metadata.yaml of Ultralytics' FP32 export, so the same code loads and scores them.
6. Speed: every IR compiled the same way (``openvino.Core().compile_model(..., "CPU",
   LATENCY)``) and timed side by side (``common.paired_block_ratios``: rounds of ~40 ms
   blocks, ratios paired inside each round, 3 repeats, median and range), and
   ours also through our own runner (``s.runner("openvino")``).

torchvision: PyPI's build does not import beside this torch, and Ultralytics imports it in
its validator only to pick an NMS: a stand-in module whose ``ops.nms`` is Ultralytics' own
``TorchNMS.nms`` is installed in this process (nothing else of torchvision runs).

Run: ``NNCF_CI=1 python benchmarks/bench_zoo_yolo.py --out /tmp/yolo-bench`` (about 40 min on
2 cores: training dominates; ``--epochs``/``--kd-epochs`` shorten it, ``--quick`` is a smoke
run whose figures go under results/quick/).
"""

from __future__ import annotations

import argparse
import copy
import importlib.machinery
import json
import os
import shutil
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

os.environ.setdefault("NNCF_CI", "1")

from common import paired_block_ratios, span, write_results  # noqa: E402

#: Ultralytics' INT8 IR compiled twice: the A/A control row (the harness's noise floor)
AA = "Ultralytics OpenVINO INT8, compiled again (A/A control)"
#: ours calibrated on Ultralytics' calibration images (accuracy only)
VALCAL = "ours OpenVINO INT8, calibrated on Ultralytics' calibration images (val split)"

import modelopt_core as mo  # noqa: E402


def torchvision_nms_standin() -> None:
    """A ``torchvision`` module whose only content is ``ops.nms`` = Ultralytics' TorchNMS."""
    if "torchvision" in sys.modules:
        return
    from ultralytics.utils.nms import TorchNMS

    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.0.0"
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    ops = types.ModuleType("torchvision.ops")
    ops.__spec__ = importlib.machinery.ModuleSpec("torchvision.ops", None)
    ops.nms = TorchNMS.nms
    tv.ops = ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops


def write_dataset(root: Path, n_train: int, n_val: int, size: int) -> tuple[Path, Any]:
    """Digits-on-canvas as a YOLO dataset under ``root``; returns (data.yaml, the splits)."""
    import cv2

    from modelopt_demo.detection.dataset import MEAN, STD, load_detection_data

    data = load_detection_data(n_train=n_train, n_val=n_val, n_test=10, size=size, seed=0)
    yaml = root / "data.yaml"
    if yaml.exists():
        return yaml, data
    for name, split in (("train", data.train), ("val", data.val)):
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        (root / "labels" / name).mkdir(parents=True, exist_ok=True)
        imgs = ((split.images[:, 0] * STD + MEAN).clamp(0, 1) * 255).round().byte().numpy()
        for i, img in enumerate(imgs):
            cv2.imwrite(str(root / "images" / name / f"{i:05d}.png"),
                        np.repeat(img[..., None], 3, 2))
            lines = [f"{c} {(b[0] + b[2]) / 2 / size:.6f} {(b[1] + b[3]) / 2 / size:.6f} "
                     f"{(b[2] - b[0]) / size:.6f} {(b[3] - b[1]) / size:.6f}"
                     for b, c in zip(split.boxes[i].tolist(), split.labels[i].tolist())]
            (root / "labels" / name / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
                    + "".join(f"  {i}: '{i}'\n" for i in range(10)))
    return yaml, data


def yolo_batches(split: Any, size: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images [B, 3, S, S] in 0..1 as Ultralytics feeds them, targets [M, 6] =
    (image index in batch, class, cx, cy, w, h) normalized) from a detection split."""
    from modelopt_demo.detection.dataset import MEAN, STD

    imgs = ((split.images * STD + MEAN).clamp(0, 1) * 255).round() / 255
    imgs = imgs.expand(-1, 3, -1, -1).contiguous()
    out = []
    for k in range(0, len(imgs) - batch + 1, batch):
        rows = []
        for j in range(batch):
            b = split.boxes[k + j]
            c = split.labels[k + j].float()
            xywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                                b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1) / size
            rows.append(torch.cat([torch.full((len(b), 1), float(j)), c[:, None], xywh], 1))
        out.append((imgs[k:k + batch], torch.cat(rows)))
    return out


def detection_loss(model: Any) -> Any:
    """``task_loss(outputs, targets)``: Ultralytics' ``v8DetectionLoss`` (box + cls + DFL, its
    default gains) per image, from the training-mode outputs and [M, 6] targets."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.loss import v8DetectionLoss

    probe = copy.deepcopy(model)
    probe.args = get_cfg()
    crit = v8DetectionLoss(probe)

    def task_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]}
        if isinstance(outputs, dict):
            preds = outputs
        elif isinstance(outputs, (tuple, list)) and len(outputs) == 2 and \
                isinstance(outputs[1], dict):
            preds = outputs[1]  # eval mode: (decoded, raw)
        else:  # the Session's flat view of the training-mode dict: boxes, scores, *feats
            preds = {"boxes": outputs[0], "scores": outputs[1], "feats": list(outputs[2:])}
        n = preds["boxes"].shape[0]
        loss, _ = crit(preds, batch)
        return loss.sum() / n

    return task_loss


def val(ul: Any, path: Path | str, yaml: Path, imgsz: int) -> dict[str, float]:
    """mAP by Ultralytics' own validator."""
    m = ul.YOLO(str(path), task="detect")
    r = m.val(data=str(yaml), imgsz=imgsz, batch=1, device="cpu", plots=False,
              verbose=False, workers=0, save_json=False)
    return {"mAP50": round(100 * float(r.box.map50), 2),
            "mAP50-95": round(100 * float(r.box.map), 2)}


def save_ir(model: Any, folder: Path, metadata_from: Path) -> Path:
    """Our OpenVINO model saved as an Ultralytics-loadable folder (IR + its metadata.yaml)."""
    import openvino as ov

    folder = folder.with_name(folder.name + "_openvino_model")  # how Ultralytics spots an IR
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    shutil.copy(metadata_from / "metadata.yaml", folder / "metadata.yaml")
    return folder


def train_base(ul: Any, yaml: Path, out: Path, epochs: int, imgsz: int) -> Path:
    best = out / "runs" / "base" / "weights" / "best.pt"
    if best.exists():
        return best
    torch.manual_seed(0)
    m = ul.YOLO("yolov8n.yaml")
    m.train(data=str(yaml), epochs=epochs, imgsz=imgsz, batch=32, device="cpu", workers=0,
            amp=False, plots=False, project=str(out / "runs"), name="base", exist_ok=True,
            verbose=False, seed=0, mosaic=0.0, fliplr=0.0, hsv_h=0, hsv_s=0, hsv_v=0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/modelopt-bench-yolo"))
    ap.add_argument("--weights", type=Path, help="trained best.pt (skip training)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--kd-epochs", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.kd_epochs, args.repeats = min(args.epochs, 2), 1, 1
        args.n_train, args.n_val = 256, 64
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from zoo_models import import_ultralytics

    ul = import_ultralytics()
    torchvision_nms_standin()
    import openvino as ov

    out, size = args.out, args.imgsz
    out.mkdir(parents=True, exist_ok=True)
    yaml, data = write_dataset(out / "canvas", args.n_train, args.n_val, size)
    t0 = time.perf_counter()
    cached = args.weights is None and (out / "runs" / "base" / "weights" / "best.pt").exists()
    best = args.weights or train_base(ul, yaml, out, args.epochs, size)
    train_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    acc: dict[str, dict[str, float]] = {"torch FP32 (trained)": val(ul, best, yaml, size)}

    # Ultralytics' own exports of the trained model
    ufp32 = Path(ul.YOLO(str(best)).export(format="openvino", imgsz=size, verbose=False))
    uint8 = Path(ul.YOLO(str(best)).export(format="openvino", imgsz=size, int8=True,
                                           data=str(yaml), verbose=False))
    acc["Ultralytics OpenVINO FP32"] = val(ul, ufp32, yaml, size)
    acc["Ultralytics OpenVINO INT8"] = val(ul, uint8, yaml, size)

    # ours, through the Session
    model = ul.YOLO(str(best)).model.float().eval()
    train = yolo_batches(data.train, size, 32)
    # 300 calibration images, as many as Ultralytics' INT8 export takes (NNCF's default
    # subset; it draws them from the dataset's val split, the images mAP is scored on: ours
    # come from the train split)
    calib = list(torch.cat([x for x, _ in train[:10]])[:300].split(8))
    example = (calib[0][:1],)
    # deployed as Ultralytics' export is: the decoded output only (its Detect also returns
    # the raw maps, as 'feats'), batch fixed at 1
    deploy = {"outputs": ["output_0"]}
    s = mo.Session(model, example, calibration_data=calib, progress=False, **deploy)
    s.export("openvino", dynamic_batch=False)
    fp32_art = s.current
    s.apply("openvino.quantize")
    ours = s.current
    d = mo.Session(model, example, calibration_data=calib, progress=False, **deploy)
    d.export("openvino")
    d.apply("openvino.quantize")
    dyn = d.current
    acc["ours OpenVINO FP32"] = val(ul, save_ir(fp32_art.model, out / "ours_fp32", ufp32),
                                    yaml, size)
    acc["ours OpenVINO INT8"] = val(ul, save_ir(ours.model, out / "ours_int8", ufp32), yaml,
                                    size)
    # a controlled comparison: ours calibrated on the very images Ultralytics' export takes
    # (its val split; accuracy only, the graph is the one timed above)
    vcal = list(torch.cat([x for x, _ in yolo_batches(data.val, size, 20)])[:300].split(8))
    sv = mo.Session(model, example, calibration_data=vcal, progress=False, **deploy)
    sv.export("openvino", dynamic_batch=False)
    sv.apply("openvino.quantize")
    acc[VALCAL] = val(ul, save_ir(sv.current.model, out / "ours_int8_valcal", ufp32), yaml, size)

    t1 = time.perf_counter()
    sp = mo.Session(model, example, calibration_data=calib, train_data=train,
                    task_loss=detection_loss(model), progress=False, **deploy)
    sp.apply("prune.structured", ratio=args.ratio)
    pruned = sp.current
    sp.apply("distill.features", epochs=args.kd_epochs, lr=1e-3)
    kd = sp.current
    kd_s = time.perf_counter() - t1
    sp.export("openvino", dynamic_batch=False)
    sp.apply("openvino.quantize")
    pint8 = sp.current
    for name, art in (("ours pruned (no recovery), OpenVINO FP32", pruned),
                      ("ours pruned + KD, OpenVINO FP32", kd)):
        e = mo.Session(art, example, progress=False)
        e.export("openvino", dynamic_batch=False)
        slug = name.split(",")[0].replace(" + ", "_").replace(" ", "_").strip("_()")
        acc[name] = val(ul, save_ir(e.current.model, out / f"{slug}_fp32", ufp32), yaml, size)
    acc[f"ours pruned {args.ratio:.0%} + KD, OpenVINO INT8"] = val(
        ul, save_ir(pint8.model, out / "ours_pruned_kd_int8", ufp32), yaml, size)

    # speed: every IR compiled alike, batch 1, interleaved
    core = ov.Core()
    x = calib[0][:1].numpy()
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}

    def compiled(path: Path) -> Any:
        xml = path if path.suffix == ".xml" else next(path.glob("*.xml"))
        c = core.compile_model(core.read_model(str(xml)), "CPU", cfg)
        return lambda: c(x)

    def compiled_graph(path: Path) -> Counter:
        """What the CPU plugin runs: (layer type, runtime precision, output shape) counted."""
        xml = path if path.suffix == ".xml" else next(path.glob("*.xml"))
        c = core.compile_model(core.read_model(str(xml)), "CPU", cfg)
        return Counter((op.get_rt_info()["layerType"].astype(str),
                        op.get_rt_info()["runtimePrecision"].astype(str),
                        str(op.get_output_partial_shape(0)) if op.get_output_size() else "")
                       for op in c.get_runtime_model().get_ops()
                       if op.get_rt_info()["layerType"].astype(str) != "Const")

    save_ir(dyn.model, out / "ours_int8_dynamic", ufp32)
    ir = {k: out / f"{k}_openvino_model" for k in ("ours_fp32", "ours_int8",
                                                   "ours_pruned_kd_int8", "ours_int8_dynamic")}
    fns = {"Ultralytics OpenVINO FP32": compiled(ufp32),
           "Ultralytics OpenVINO INT8": compiled(uint8),
           AA: compiled(uint8),
           "ours OpenVINO FP32": compiled(ir["ours_fp32"]),
           "ours OpenVINO INT8": compiled(ir["ours_int8"]),
           f"ours pruned {args.ratio:.0%} + KD, OpenVINO INT8": compiled(
               ir["ours_pruned_kd_int8"]),
           "ours OpenVINO INT8, dynamic batch (diagnostic)": compiled(
               ir["ours_int8_dynamic"])}
    ours_graph, ul_graph = compiled_graph(ir["ours_int8"]), compiled_graph(uint8)
    same_graph = ours_graph == ul_graph
    graph_note = ("ours INT8 and Ultralytics' INT8 compile to the same CPU graph (every "
                  "layer's type, runtime precision and output shape, constants aside): "
                  f"{'yes' if same_graph else 'no'} ({sum(ours_graph.values())} vs "
                  f"{sum(ul_graph.values())} layers"
                  + ("" if same_graph else
                     f"; only ours: {dict(ours_graph - ul_graph)}; only Ultralytics': "
                     f"{dict(ul_graph - ours_graph)}") + ")")
    runners = [s.runner("openvino"), sp.runner("openvino")]
    xt = calib[0][:1]
    fns["ours OpenVINO INT8 (our runner)"] = lambda: runners[0](xt)
    fns[f"ours pruned {args.ratio:.0%} + KD, OpenVINO INT8 (our runner)"] = \
        lambda: runners[1](xt)
    timed = paired_block_ratios(fns, ["Ultralytics OpenVINO INT8"], repeats=args.repeats,
                                rounds=30, block_ms=40.0)
    ratios = timed["Ultralytics OpenVINO INT8"]
    base_ms = timed["p50_ms"]["Ultralytics OpenVINO INT8"]
    for r in runners:
        r.close()
    params = {"unpruned": sum(p.numel() for p in model.parameters()),
              "pruned": sum(p.numel() for p in pruned.model.parameters())}
    for name in list(acc) + [k for k in fns if k not in acc]:
        row = {"variant": name, **acc.get(name.replace(" (our runner)", ""), {})}
        if name in ratios:
            row["speed vs Ultralytics INT8"] = span(ratios[name])
        rows.append(row)
    fp32 = acc["torch FP32 (trained)"]["mAP50"]
    notes = [
        f"YOLOv8n trained from scratch by Ultralytics on {args.n_train} digits-on-canvas images "
        f"({size} px, {args.epochs} epochs, batch 32, no mosaic/flip/HSV augmentation; "
        + ("weights given with --weights, trained beforehand with these settings"
           if args.weights else "trained by an earlier run into --out and reused"
           if cached else f"{train_s:.0f} s incl. its validation")
        + f"); mAP on {args.n_val} validation canvases by Ultralytics' own validator "
        "(batch 1).",
        f"Pruning: prune.structured ratio {args.ratio} (C2f split convs untied, Detect head "
        f"kept): parameters {params['unpruned'] / 1e6:.2f}M -> {params['pruned'] / 1e6:.2f}M; "
        f"recovery: distill.features {args.kd_epochs} epochs from the unpruned model with "
        f"Ultralytics' v8DetectionLoss as task_loss ({kd_s:.0f} s incl. pruning).",
        "Ours as deployed: Session(outputs=['output_0']) (the decoded boxes only, as "
        "Ultralytics' export returns; its Detect also returns the raw maps) and "
        "export('openvino', dynamic_batch=False) (batch 1, as Ultralytics' export); the "
        "dynamic-batch row shows what the symbolic batch costs at this size.",
        f"Speed: batch 1, {size} px, OpenVINO CPU, LATENCY hint and f32 precision for every "
        "IR; 30 rounds, each timing every candidate as a ~40 ms block of back-to-back calls "
        "(order shuffled every round), ratio taken inside each round, median over rounds, "
        f"{args.repeats} repeats: median (min-max); ratio > 1 = faster than Ultralytics' INT8 "
        f"({base_ms[len(base_ms) // 2]:.2f} ms median).",
        graph_note,
        "INT8 calibration: ours on 300 train-split images; Ultralytics' int8=True export on "
        "the dataset's val split (its 300 images, the ones mAP is scored on here), as its "
        f"exporter does; '{VALCAL}' is ours calibrated on those same images (accuracy only: "
        "the same graph as 'ours OpenVINO INT8').",
        f"'{AA}' is Ultralytics' INT8 IR compiled a second time and timed as one more "
        "candidate: its spread is the noise floor of these ratios on this machine; the "
        "candidates' order is shuffled every round (common.paired_block_ratios).",
        f"Bars (issue 24): pruned + KD + INT8 within 1.5 pt mAP@0.5 of FP32 ({fp32}); "
        "unpruned INT8 >= 1.0x Ultralytics' INT8 at no worse mAP.",
    ]
    write_results("zoo_yolo", {"quick": args.quick, "args": {k: str(v) for k, v in
                                                             vars(args).items()},
                               "accuracy": acc, "ratios": ratios, "base_ms": base_ms},
                  rows, ["variant", "mAP50", "mAP50-95", "speed vs Ultralytics INT8"],
                  "YOLOv8n on digits-on-canvas: ours vs Ultralytics' OpenVINO exports", notes)
    print(json.dumps({"accuracy": acc}, indent=1))


if __name__ == "__main__":
    main()
