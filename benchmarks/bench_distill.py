"""Issue 6 benchmark: recovering accuracy after compression by distillation vs fine-tuning.

The demo SmallCNN is trained on digits to convergence (the teacher). Through the Session it is
compressed (``prune.structured`` ratio 0.5 and, when registered, ``arch.depthwise_separable``),
then recovered for the same number of epochs with the same loop, optimizer, LR schedule and
seed by: ``distill.logits`` (Hinton KD from the original), ``distill.features`` (feature + logit
KD with adapters) and plain fine-tuning (``distill.logits`` with ``alpha=0``: hard-label
cross-entropy only, the teacher unused). Accuracies are means over seeds on the held-out split;
latency/size ratios are vs the teacher on torch eager FP32, measured side by side. A grid
over recovery budgets (train fraction x epochs) compares KD with fine-tuning for the pruned
student, since the gap depends on the budget.

    python benchmarks/bench_distill.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402

import modelopt_core as mo  # noqa: E402
from modelopt_core.training import TrainConfig, fit  # noqa: E402
from modelopt_demo.data import accuracy_fn, load_digits_data, predict_accuracy  # noqa: E402
from modelopt_demo.models import SmallCNN  # noqa: E402

METHODS = {
    "KD (distill.logits)": ("distill.logits", {"alpha": 0.9, "temperature": 4.0}),
    "features+KD (distill.features)": ("distill.features", {"kd_weight": 1.0,
                                                            "feature_weight": 0.5}),
    "fine-tune (CE only)": ("distill.logits", {"alpha": 0.0}),
}


def train_teacher(data, epochs: int) -> torch.nn.Module:
    """The demo CNN trained to convergence with the shared loop."""
    torch.manual_seed(0)
    m = SmallCNN()
    fit(m, data.train, config=TrainConfig(epochs=epochs, lr=3e-3, weight_decay=1e-4),
        eval_fn=lambda mod: predict_accuracy(mod, data.test))
    return m.eval()


def session(teacher, data) -> mo.Session:
    return mo.Session(teacher, (data.example,), train_data=data.train,
                      eval_fn=accuracy_fn(data.test), progress=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, few epochs (smoke run)")
    ap.add_argument("--epochs", type=int, default=None, help="recovery epochs (default 8)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    epochs = args.epochs or (3 if args.quick else 8)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    data = load_digits_data(batch_size=64)
    t0 = time.perf_counter()
    teacher = train_teacher(data, 6 if args.quick else 20)
    teacher_acc = predict_accuracy(teacher, data.test)
    print(f"teacher: {teacher_acc:.2f}% ({time.perf_counter() - t0:.0f}s)")
    pm = mo.get_plugin_manager()
    recipes = [("prune.structured", {"ratio": 0.5})]
    try:
        pm.get("optimizer", "arch.depthwise_separable")
        recipes.append(("arch.depthwise_separable", {}))
    except mo.UnknownComponentError:
        pass
    rows, summary, speed = [], {}, None

    def run(recipe, rkw, method, n_epochs, frac):
        nonlocal speed
        name, kw = METHODS[method]
        accs, secs = [], []
        for seed in seeds:
            s = session(teacher, data)
            s.train_data = data.train[:max(1, round(len(data.train) * frac))]
            s.apply(recipe, **rkw)
            t1 = time.perf_counter()
            s.apply(name, epochs=n_epochs, lr=3e-3, weight_decay=1e-4, seed=seed,
                    eval_each_epoch=False, **kw)
            secs.append(time.perf_counter() - t1)
            accs.append(predict_accuracy(s.runner("torch"), data.test))
            if speed is None and recipe == "prune.structured" and method.startswith("KD"):
                speed = s.compare(profilers=["latency", "size", "accuracy"])
        mean = statistics.mean(accs)
        summary[(recipe, method, n_epochs, frac)] = mean
        rows.append({"recipe": recipe, "train_fraction": frac, "method": method,
                     "epochs": n_epochs, "accuracy": mean,
                     "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "per_seed": [round(a, 2) for a in accs],
                     "delta_vs_teacher": mean - teacher_acc, "train_s": statistics.mean(secs)})
        print(rows[-1], flush=True)

    for recipe, rkw in recipes:
        s = session(teacher, data)
        compressed = s.apply(recipe, **rkw)
        base_acc = predict_accuracy(s.runner("torch"), data.test)
        rows.append({"recipe": recipe, "train_fraction": 1.0, "method": "(none: compressed)",
                     "epochs": 0, "accuracy": base_acc, "delta_vs_teacher": base_acc - teacher_acc,
                     "params": sum(p.numel() for p in compressed.model.parameters())})
        for method in METHODS:
            run(recipe, rkw, method, epochs, 1.0)
    grid = [(f, e) for f in (1.0, 0.25) for e in ((1, 3) if args.quick else (2, 4, 8))
            if (f, e) != (1.0, epochs)]
    for frac, n_epochs in grid:
        for method in ("KD (distill.logits)", "fine-tune (CE only)"):
            run("prune.structured", {"ratio": 0.5}, method, n_epochs, frac)
    cells = sorted({(e, f) for (r, m, e, f) in summary if r == "prune.structured"})
    wins = {f"{f:g} data, {e} ep": round(summary[("prune.structured", "KD (distill.logits)", e, f)]
                                         - summary[("prune.structured", "fine-tune (CE only)",
                                                    e, f)], 2)
            for e, f in cells}
    kd = summary[("prune.structured", "KD (distill.logits)", epochs, 1.0)]
    ft = summary[("prune.structured", "fine-tune (CE only)", epochs, 1.0)]
    bars = {"pruned_kd_within_1pt_of_teacher": teacher_acc - kd <= 1.0,
            "kd_beats_finetune_equal_epochs": kd > ft,
            "kd_minus_finetune_by_budget": wins}
    notes = [f"teacher SmallCNN(width=32) {sum(p.numel() for p in teacher.parameters())} params:"
             f" {teacher_acc:.2f}% on the held-out digits split (450 images; 1 image = 0.22 pt)",
             f"recovery: {epochs} epochs, adam lr 3e-3 cosine, wd 1e-4; seeds {seeds}; "
             "fine-tune = the same loop with alpha=0 (hard-label CE only)",
             f"bars: {bars}",
             "kd_minus_finetune_by_budget: KD accuracy minus fine-tuning accuracy (points) per "
             "(train fraction, epochs) cell, same seeds", "machine shared with other agents: train_s is noisy"]
    if speed is not None:
        for r in speed.rows:
            notes.append(f"{r['step']}: latency p50 {r.get('latency_p50_ms', float('nan')):.3f} ms,"
                         f" size {r.get('size_mb', r.get('size_bytes', '?'))}, "
                         f"accuracy {r.get('accuracy', float('nan')):.2f}%")
    write_results("distill", {"teacher_accuracy": teacher_acc, "epochs": epochs,
                              "seeds": seeds, "bars": bars,
                              "speed": speed.rows if speed is not None else None},
                  rows, ["recipe", "train_fraction", "method", "epochs", "accuracy", "accuracy_sd",
                         "delta_vs_teacher", "per_seed", "train_s", "params"],
                  "Distillation vs fine-tuning after compression (demo CNN, digits)", notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
