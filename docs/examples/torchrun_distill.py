"""Distillation through the Session, data-parallel over the processes torchrun starts.

    torchrun --nproc-per-node 2 docs/examples/torchrun_distill.py --out out/torchrun
    python docs/examples/torchrun_distill.py --out out/one        # the same, one process
    torchrun --nnodes 2 --node-rank R --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29500 docs/examples/torchrun_distill.py --out /shared/out

Nothing below is distributed code: the Session's training step (``distill.logits``) joins
torchrun's process group by itself (gloo on CPU, nccl on CUDA), each process trains on its
share of the batches (DistributedDataParallel on Lightning Fabric), every process ends with the
same model and history, and ``art.save`` writes on rank 0 alone (the others wait for it).
The global batch is ``--global-batch`` whatever the number of processes: each draws
``global_batch / WORLD_SIZE`` samples per step. ``<out>/rank<r>.json`` records what each
process saw (accuracy, history, whether the saved artifact reloads to the same outputs).

An example script, not part of any package: it uses the demo's data and model
(``modelopt_demo``). Run as a script, it finds the repository's packages by itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]  # the repository root (modelopt_core, modelopt_demo)
if (_ROOT / "modelopt_core").is_dir() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def main(argv: list[str] | None = None) -> int:
    """Run one process of the example; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the artifact and per-rank records")
    ap.add_argument("--epochs", type=int, default=5, help="distillation epochs")
    ap.add_argument("--global-batch", type=int, default=64, help="samples per optimizer step")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    args = ap.parse_args(argv)

    import torch

    import modelopt_core as mo
    from modelopt_core.training import TrainConfig, fit
    from modelopt_demo.data import accuracy_fn, load_digits_data, predict_accuracy
    from modelopt_demo.models import SmallCNN

    torch.set_num_threads(1)  # every process computes the same way (and 2 share 2 cores)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    per_process = args.global_batch // world
    digits = load_digits_data(batch_size=per_process)
    train = [b for b in digits.train if len(b[1]) == per_process]  # whole batches only
    train = train[:len(train) // world * world]  # whole global steps

    # the teacher: trained in each process alone, the same way (same seed, same data)
    torch.manual_seed(0)
    teacher = SmallCNN(width=8)
    joined = [(torch.cat([x for x, _ in train[i:i + world]]),
               torch.cat([y for _, y in train[i:i + world]])) for i in range(0, len(train), world)]
    fit(teacher, joined, config=TrainConfig(epochs=args.teacher_epochs, lr=3e-3,
                                            strategy="single"))
    teacher.eval()

    s = mo.Session(teacher, (digits.example,), train_data=train,
                   eval_fn=accuracy_fn(digits.test), progress=False)
    s.apply("prune.structured", ratio=0.5, round_to=None)
    t0 = time.perf_counter()
    art = s.apply("distill.logits", epochs=args.epochs, lr=3e-3, temperature=4.0, alpha=0.9)
    train_s = time.perf_counter() - t0
    out = Path(args.out)
    saved = art.save(out / "distilled")  # rank 0 writes; every rank gets the path
    shell = copy.deepcopy(art.model)  # the pruned architecture, its weights zeroed:
    for t in shell.state_dict().values():  # every tensor that matches must come from the file
        t.zero_()
    back = mo.load_artifact(saved, model=shell)
    x = torch.cat([b[0] for b in digits.test])
    with torch.no_grad():
        same = bool(torch.equal(back.model.eval()(x), art.model.eval()(x)))
    record = {"rank": rank, "world_size": world, "train_s": round(train_s, 2),
              "accuracy": predict_accuracy(art.model, digits.test),
              "history": art.metadata["train_history"], "reloads_identically": same,
              "weights_sha": _digest(art.model), "step_s": art.lineage[-1].duration_s}
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("rank", "world_size", "accuracy", "train_s",
                                             "reloads_identically")}))
    return 0


def _digest(model: object) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():  # type: ignore[attr-defined]
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
