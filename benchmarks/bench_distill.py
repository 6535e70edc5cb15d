"""Issue 6 benchmark: recovering accuracy after compression by distillation vs fine-tuning.

The demo SmallCNN is trained on digits to convergence (the teacher). Through the Session it is
compressed (``prune.structured`` ratio 0.5 and, when registered, ``arch.depthwise_separable``),
then recovered for the same number of epochs with the same loop, optimizer, LR schedule and
seed by: ``distill.logits`` (Hinton KD from the original), ``distill.features`` (feature + logit
KD with adapters), KD with mixup inputs labelled by the teacher ("function matching") and
plain fine-tuning (``distill.logits`` with ``alpha=0``: hard-label cross-entropy only, the
teacher unused), with and without mixup. Accuracies are means over seeds on the held-out
split; KD - fine-tune is compared per seed (paired t-test). The pruned student is recovered
under three budgets (all of the training split for 8 epochs; 25% and 10% of it for 20
epochs), since the gap depends on how much recovery data there is.

    python benchmarks/bench_distill.py [--quick] [--seeds N]
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

KD = {"alpha": 0.9, "temperature": 4.0}
METHODS = {
    "fine-tune (CE only)": ("distill.logits", {"alpha": 0.0}),
    "fine-tune + mixup": ("distill.logits", {"alpha": 0.0, "mixup": 1.0}),
    "KD (distill.logits)": ("distill.logits", KD),
    "KD + mixup (function matching)": ("distill.logits", dict(KD, mixup=1.0)),
    "features+KD (distill.features)": ("distill.features", {"kd_weight": 1.0,
                                                            "feature_weight": 0.5}),
}
# Recovery budgets for the pruned student: (fraction of the training split, epochs). Every
# method in a cell gets the same data, epochs, optimizer, schedule and seeds.
BUDGETS = [(1.0, 8), (0.25, 20), (0.1, 20)]
PAIRS = [("KD (distill.logits)", "fine-tune (CE only)"),
         ("KD + mixup (function matching)", "fine-tune (CE only)"),
         ("KD + mixup (function matching)", "fine-tune + mixup")]


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean and sd of the per-seed differences a - b, and the two-sided paired t-test p
    (NaN without scipy: ``pip install modelopt-core[bench]``)."""
    try:
        from scipy.stats import ttest_rel
    except ImportError:
        ttest_rel = None

    d = [x - y for x, y in zip(a, b)]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    p = (float(ttest_rel(a, b).pvalue) if ttest_rel is not None and len(d) > 1 and sd > 0
         else float("nan"))
    return {"mean": round(statistics.mean(d), 3), "sd": round(sd, 3), "p": round(p, 4)}


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
    ap.add_argument("--quick", action="store_true", help="2 seeds, few epochs (smoke run)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default 5)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    budgets = [(f, max(1, e // 4)) for f, e in BUDGETS] if args.quick else BUDGETS
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
    rows, per_seed, speed = [], {}, None

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
        per_seed[(recipe, method, n_epochs, frac)] = accs
        mean = statistics.mean(accs)
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
        cells = budgets if recipe == "prune.structured" else budgets[:1]
        for frac, n_epochs in cells:
            for method in METHODS:
                if method.startswith("features") and frac != 1.0:
                    continue
                run(recipe, rkw, method, n_epochs, frac)
    comparisons = {}
    for recipe, _ in recipes:
        for frac, n_epochs in (budgets if recipe == "prune.structured" else budgets[:1]):
            for a, b in PAIRS:
                key = f"{recipe}, {frac:g} of train, {n_epochs} ep: {a} - {b}"
                comparisons[key] = paired(per_seed[(recipe, a, n_epochs, frac)],
                                          per_seed[(recipe, b, n_epochs, frac)])
    full, full_ep = budgets[0]
    kd = statistics.mean(per_seed[("prune.structured", "KD (distill.logits)", full_ep, full)])
    wins = {k: v for k, v in comparisons.items() if v["mean"] > 0 and v["p"] < 0.05}
    losses = {k: v for k, v in comparisons.items() if v["mean"] < 0 and v["p"] < 0.05}
    bars = {"pruned_kd_within_1pt_of_teacher": teacher_acc - kd <= 1.0,
            "kd_beats_finetune_significantly_in": sorted(wins),
            "kd_loses_to_finetune_significantly_in": sorted(losses)}
    notes = [f"teacher SmallCNN(width=32) {sum(p.numel() for p in teacher.parameters())} params:"
             f" {teacher_acc:.2f}% on the held-out digits split (450 images; 1 image = 0.22 pt)",
             f"recovery budgets (fraction of the 1347-image training split, epochs): {budgets}; "
             f"adam lr 3e-3 cosine, wd 1e-4; seeds {seeds}; every method in a cell gets the "
             "same data, epochs, schedule and seeds",
             f"fine-tune = distill.logits with alpha=0 (hard-label CE, teacher unused); KD = "
             f"T={KD['temperature']}, alpha={KD['alpha']}; mixup = Beta(1, 1) input mixing "
             "(KD: the teacher labels the mixed inputs; fine-tune: mixed labels)",
             "paired differences per seed (points; mean, sd, two-sided paired t-test p):"]
    notes += [f"  {k}: {v['mean']:+.2f} (sd {v['sd']:.2f}, p={v['p']:.3g})"
              for k, v in comparisons.items()]
    notes += [f"bars: {bars}", "machine shared with other agents: train_s is noisy"]
    if speed is not None:
        for r in speed.rows:
            notes.append(f"{r['step']}: latency p50 {r.get('latency_p50_ms', float('nan')):.3f} ms,"
                         f" size {r.get('size_mb', r.get('size_bytes', '?'))}, "
                         f"accuracy {r.get('accuracy', float('nan')):.2f}%")
    write_results("distill", {"teacher_accuracy": teacher_acc, "budgets": budgets,
                              "seeds": seeds, "bars": bars, "comparisons": comparisons,
                              "speed": speed.rows if speed is not None else None},
                  rows, ["recipe", "train_fraction", "method", "epochs", "accuracy", "accuracy_sd",
                         "delta_vs_teacher", "per_seed", "train_s", "params"],
                  "Distillation vs fine-tuning after compression (demo CNN, digits)", notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
