"""Distributed training with the shared loop, launched by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 docs/examples/ddp_distill.py --out out/ddp --kd

Each process joins the group (gloo on CPU, nccl on CUDA), trains the demo CNN on its shard of
the digits batches with :func:`modelopt_core.training.fit` (which wraps the model in
DistributedDataParallel), optionally distilling from a teacher with :func:`modelopt_core.kd_loss`,
and writes its final weights to ``<out>/rank<r>.safetensors`` so the ranks can be compared.
Only rank 0 writes checkpoints.

An example script, not part of any package: it uses the demo's data and model
(``modelopt_demo``), which a plugin may not import. Run as a script, it finds the repository's
packages by itself when they are not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]  # the repository root (modelopt_core, modelopt_demo)
if (_ROOT / "modelopt_core").is_dir() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def main(argv: list[str] | None = None) -> int:
    """Run one rank of the example; returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for per-rank weights and history")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches", type=int, default=12, help="training batches to use")
    ap.add_argument("--width", type=int, default=8, help="SmallCNN width")
    ap.add_argument("--kd", action="store_true", help="distill from a (randomly set) teacher")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import save_file
    from torch import distributed as dist

    from modelopt_core import kd_loss
    from modelopt_core.training import TrainConfig, fit
    from modelopt_demo.data import load_digits_data
    from modelopt_demo.models import SmallCNN

    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    try:
        data = load_digits_data(batch_size=32).train[:args.batches]
        torch.manual_seed(rank)  # different inits on purpose: DDP must broadcast rank 0's
        model = SmallCNN(width=args.width)
        loss_fn = None
        if args.kd:
            torch.manual_seed(123)
            teacher = SmallCNN(width=args.width).eval().to(device)

            def loss_fn(net, inputs, targets):
                with torch.no_grad():
                    t = teacher(*inputs)
                return kd_loss(net(*inputs), t, targets, 4.0, 0.5)

        out = Path(args.out)
        cfg = TrainConfig(epochs=args.epochs, lr=3e-3, seed=0, device=device,
                          precision=args.precision, checkpoint_dir=str(out / "ckpt"))
        result = fit(model, data, config=cfg, loss_fn=loss_fn)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(out / f"rank{rank}.safetensors"))
        (out / f"rank{rank}.json").write_text(json.dumps(
            {"history": result.history, "world_size": dist.get_world_size()}))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
