"""Issue 13 benchmark: automatic optimization (``Session.optimize``) against hand-written
pipelines, measured side by side in one run.

(a) Digits CNN (the demo's model, trained as the demo trains it), accuracy budget 1 point,
    20 trials, one search over OpenVINO and ONNX Runtime (``--targets``): the found
    recipe's latency on its runtime vs the hand-written demo pipeline (prune 30% -> KD ->
    ONNX -> optimize -> INT8, on ONNX Runtime and converted to OpenVINO) and every technique
    alone on each target runtime (FP32 export, prune only, KD only, INT8 only, BF16/FP16 only).
    Every candidate is timed by the same timer, round-robin (``common.interleaved_p50``), with
    the same thread count; accuracy on the held-out digits. Bar: the found recipe is no slower
    than the best candidate within the budget, and is itself within the budget.
(b) ResNet-18-shaped model (BatchNorm fitted to image-like data), batch 8, metric: top-1
    agreement (%) with torch eager FP32 on held-out images; search OpenVINO for latency within
    1 point of agreement, bounded by ``--time-budget-s`` (default 900 s). Bar: >= 10x faster
    than torch eager FP32.

    python benchmarks/bench_search.py [--quick] [--threads 2] [--time-budget-s 900]

``--quick``: 3 trials on the digits part only (a smoke run, not for quoting).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import agreement, interleaved_p50, write_results
from modelopt_search.space import describe_recipe

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn, image_batches
from modelopt_demo.demo import PIPELINE, train_demo_model

#: backend, format and the thread option per target
RUNTIME = {"openvino": ("openvino", "inference_num_threads"),
           "onnxruntime": ("onnxruntime", "intra_op_num_threads")}


def _recipe_text(res: Any) -> str:
    """The found recipe in one line (options at their defaults left out)."""
    if not res.best_recipe:
        return "nothing within budget"
    return describe_recipe(res.best_recipe, mo.get_plugin_manager())


def _finished(res: Any) -> int:
    return sum(t.state.is_finished() for t in res.study.trials)


def _confirmation(res: Any, part: str) -> list[str]:
    """The search's own side-by-side re-timing of its top candidates, as a note."""
    return [f"{part}: search {n}" for n in res.report.notes.get("search", [])
            if "side by side" in n]


def _apply(s: mo.Session, steps: list[tuple[str, str, dict[str, Any]]]) -> mo.ModelArtifact:
    for method, name, cfg in steps:
        getattr(s, method)(name, **cfg)
    return s.current


def digits_candidates(model: Any, data: Any, target: str) -> dict[str, tuple[Any, str, dict]]:
    """name -> (artifact, backend, backend options) of the hand-written pipelines."""
    fmt = "onnx" if target == "onnxruntime" else "openvino"

    def fresh() -> mo.Session:
        return mo.Session(model, (data.example,), calibration_data=data.calibration,
                          train_data=data.train, eval_fn=accuracy_fn(data.test),
                          progress=False)

    prune = ("apply", "prune.structured", {"ratio": 0.3, "importance": "l1"})
    kd = ("apply", "distill.logits", {"epochs": 3, "lr": 3e-3})
    quant = (("apply", "openvino.quantize", {}) if target == "openvino" else
             ("apply", "onnx.quantize_static", {"per_channel": True}))
    be = RUNTIME[target][0]
    out = {"torch eager FP32 (original)": (fresh().original, "torch", {}),
           f"{target} FP32 (export only)": (_apply(fresh(), [("export", fmt, {})]), be, {}),
           f"{target} prune 30% only": (_apply(fresh(), [prune, ("export", fmt, {})]), be, {}),
           f"{target} KD only": (_apply(fresh(), [kd, ("export", fmt, {})]), be, {}),
           f"{target} INT8 only": (_apply(fresh(), [("export", fmt, {}), quant]), be, {})}
    if target == "openvino":
        out["openvino BF16 only"] = (out[f"{target} FP32 (export only)"][0], be,
                                     {"inference_precision": "bf16"})
    else:
        out["onnxruntime FP16 only"] = (_apply(fresh(), [("export", "onnx", {}),
                                                         ("apply", "onnx.convert_fp16", {})]),
                                        be, {})
    demo = fresh()
    demo_art = _apply(demo, PIPELINE)
    out["demo pipeline (onnxruntime)"] = (demo_art, "onnxruntime", {})
    if target == "openvino":
        out["demo pipeline (converted to openvino)"] = (_apply(demo, [("export", "openvino",
                                                                       {})]), "openvino", {})
    return out


def digits_part(args: argparse.Namespace, targets: list[str], model: Any, data: Any,
                out_dir: Path) -> tuple[list[dict], list[str], dict[str, bool]]:
    s = mo.Session(model, (data.example,), calibration_data=data.calibration,
                   train_data=data.train, eval_fn=accuracy_fn(data.test), progress=False)
    t0 = time.perf_counter()
    res = s.optimize(target=targets, objective="latency", max_accuracy_drop=1.0,
                     budget_trials=args.trials, out_dir=out_dir / "digits",
                     threads=args.threads)
    search_s = time.perf_counter() - t0
    cands: dict[str, tuple[Any, str, dict]] = {}
    for target in targets:
        cands.update(digits_candidates(model, data, target))
    if res.best is not None:  # as found: its runtime options, thread count included
        be, opts = res.best_recipe["backend"], dict(res.best_recipe["backend_options"])
        cands["FOUND by optimize"] = (res.best, be, opts)
        key = RUNTIME[be][1]
        if opts.get(key) not in (None, args.threads):  # the same recipe at every thread
            cands[f"found recipe at {args.threads} threads"] = (res.best, be,
                                                                {**opts, key: args.threads})
    runners = {}
    for name, (art, backend, opts) in cands.items():
        key = RUNTIME.get(backend, (None, "num_threads"))[1]
        runners[name] = s.runner(backend, artifact=art, **{key: args.threads, **opts})
    x = data.example
    # tens of microseconds a call: many calls per candidate, three repeats, their median
    reps = [interleaved_p50({k: (lambda r=r: r(x)) for k, r in runners.items()},
                            rounds=20 * args.rounds, block=20) for _ in range(args.repeats)]
    p50 = {k: sorted(rep[k] for rep in reps)[len(reps) // 2] for k in runners}
    base_acc = accuracy_fn(data.test)(runners["torch eager FP32 (original)"])
    rows = []
    for name, r in runners.items():
        acc = accuracy_fn(data.test)(r)
        rows.append({"part": "digits", "candidate": name, "backend": cands[name][1],
                     "p50_ms": p50[name],
                     "accuracy": acc, "accuracy_drop": base_acc - acc,
                     "within_budget": base_acc - acc <= 1.0,
                     "speedup_vs_eager": p50["torch eager FP32 (original)"] / p50[name]})
        r.close()
    others = [r for r in rows if r["within_budget"] and r["candidate"] not in (
        "FOUND by optimize", f"found recipe at {args.threads} threads")]
    found = next((r for r in rows if r["candidate"] == "FOUND by optimize"), None)
    best_other = min(others, key=lambda r: r["p50_ms"])
    bars = {"digits: found recipe within budget": bool(found and found["within_budget"]),
            (f"digits: found <= best hand-written/single technique "
             f"({best_other['candidate']})"): bool(found and found["p50_ms"]
                                                 <= best_other["p50_ms"])}
    found_recipe = _recipe_text(res)
    notes = [f"digits ({'/'.join(targets)}): {_finished(res)} trials in {search_s:.0f} s; "
             f"found: {found_recipe}"] + _confirmation(res, "digits")
    return rows, notes, bars


def resnet_part(args: argparse.Namespace, out_dir: Path) -> tuple[list, list, dict]:
    from bench_core import calibrated_resnet

    model = calibrated_resnet(image_batches(8, seed=1))
    calib = image_batches(8, seed=2)
    evals = image_batches(args.evals * 2, seed=3)  # 256 images: 1 pt = 2.56 images
    train = image_batches(16, seed=4)
    with torch.no_grad():
        ref = [model(e) for e in evals]
        train_data = [(x, model(x).argmax(1)) for x in train]  # FP32 labels: KD recovery

    def agree(runner: Any) -> float:
        return agreement(ref, [runner(e) for e in evals])["top1_agreement_pct"]

    s = mo.Session(model, (evals[0],), calibration_data=calib, train_data=train_data,
                   eval_fn=agree, progress=False)
    t0 = time.perf_counter()
    res = s.optimize(target="openvino", objective="latency", max_accuracy_drop=1.0,
                     budget_trials=args.resnet_trials, time_budget_s=args.time_budget_s,
                     out_dir=out_dir / "resnet18-openvino", threads=args.threads,
                     space={"params": {"prune.structured": {"ratio": [0.1, 0.2, 0.3]}},
                            "fixed": {"prune.structured": {"round_to": 8}}})
    search_s = time.perf_counter() - t0
    rows, bars = [], {}
    if res.best is not None:
        opts = {"inference_num_threads": args.threads, **res.best_recipe["backend_options"]}
        runners = {"torch eager FP32": s.runner("torch", num_threads=args.threads),
                   "FOUND by optimize": s.runner("openvino", artifact=res.best, **opts)}
        x = evals[0]
        p50 = interleaved_p50({k: (lambda r=r: r(x)) for k, r in runners.items()},
                              rounds=args.rounds)
        for name, r in runners.items():
            rows.append({"part": "resnet18 b8", "candidate": name,
                         "backend": "torch" if name.startswith("torch") else "openvino",
                         "p50_ms": p50[name], "accuracy": agree(r),
                         "speedup_vs_eager": p50["torch eager FP32"] / p50[name]})
            r.close()
        rows[-1]["accuracy_drop"] = 100.0 - rows[-1]["accuracy"]
        rows[-1]["within_budget"] = rows[-1]["accuracy_drop"] <= 1.0
    found = rows[-1] if rows else None
    bars["resnet18: found >= 10x faster than torch eager FP32 within 1 pt agreement"] = bool(
        found and found["within_budget"] and found["speedup_vs_eager"] >= 10)
    notes = [f"resnet18: {_finished(res)} trials in {search_s:.0f} s (budget "
             f"{args.time_budget_s:.0f} s); found: "
             f"{_recipe_text(res)}"]
    return rows, notes + _confirmation(res, "resnet18"), bars


PART_MARK = "PART-JSON "


def _run_part(name: str, out_dir: Path) -> tuple[list, list, dict]:
    """One part in a fresh process (this script, ``--part``) with this run's arguments: the
    two parts share no runtime state (thread pools, loaded libraries, allocator)."""
    argv = [a for a in sys.argv[1:] if a != "--skip-resnet"]
    if "--out" not in argv:
        argv += ["--out", str(out_dir)]
    proc = subprocess.run([sys.executable, __file__, *argv, "--part", name],
                          stdout=subprocess.PIPE, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(PART_MARK)), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"bench_search: part {name!r} failed (exit {proc.returncode})")
    return tuple(json.loads(line[len(PART_MARK):]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 trials, digits only (smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--targets", nargs="+", default=["openvino", "onnxruntime"],
                    choices=sorted(RUNTIME), help="runtimes the digits search may pick")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--time-budget-s", type=float, default=900.0,
                    help="wall-clock bound of the ResNet search")
    ap.add_argument("--resnet-trials", type=int, default=200)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--part", choices=["digits", "resnet"],
                    help="run one part here and print its rows as JSON (the full run starts "
                         "each part in a process of its own this way)")
    ap.add_argument("--out", help="keep the studies here (default: a temp folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.trials, args.skip_resnet = 3, True
    args.rounds = 6 if args.quick else 30
    args.repeats = 1 if args.quick else 3
    args.evals = 16
    tmp = tempfile.TemporaryDirectory()
    out_dir = Path(args.out or tmp.name)
    if args.part:  # one part, in this process
        if args.part == "digits":
            model, data = train_demo_model(epochs=3 if args.quick else 8, progress=False)
            part = digits_part(args, args.targets, model, data, out_dir)
        else:
            part = resnet_part(args, out_dir)
        print(PART_MARK + json.dumps(part, default=float))
        return
    rows, notes, bars = [], [], {}
    for name in ["digits"] + ([] if args.skip_resnet else ["resnet"]):
        r, n, b = _run_part(name, out_dir)
        rows, notes, bars = rows + r, notes + n, bars | b
    notes = [f"{args.threads} threads for every runtime; latencies: digits batch 1, "
             f"{20 * args.rounds} calls per candidate in interleaved blocks of 20, median of "
             f"{args.repeats} repeats; resnet batch 8, {args.rounds} interleaved calls; one "
             "timer for all"] + notes
    notes += [f"bar: {k} -> {'MET' if ok else 'NOT MET'}" for k, ok in bars.items()]
    write_results("search", {"benchmark": "search", "quick": args.quick, "bars": bars,
                             "trials": args.trials}, rows,
                  ["part", "candidate", "backend", "p50_ms", "speedup_vs_eager", "accuracy",
                   "accuracy_drop", "within_budget"],
                  "Automatic optimization vs hand-written pipelines", notes)
    tmp.cleanup()


if __name__ == "__main__":
    main()
