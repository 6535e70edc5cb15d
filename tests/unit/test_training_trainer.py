"""The Trainer behind fit: callbacks and their order, KeepZeros, the Checkpointer round trip,
the strategy choice, and the global-step order of sharded, shuffled batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelopt_core as mo
from modelopt_core.checkpoint import Checkpointer
from modelopt_core.sparsity import KeepZeros, zero_masks
from modelopt_core.train_parts import epoch_batches
from modelopt_core.trainer import Callback, EarlyStopping, Trainer
from modelopt_core.training import TrainConfig, fit


def data(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append("start")

    def on_epoch_start(self, trainer, epoch):
        self.calls.append(f"epoch{epoch}")

    def on_step_end(self, trainer):
        self.calls.append(f"step{trainer.state['step']}")

    def on_epoch_end(self, trainer, record):
        self.calls.append(f"end{record['epoch']}:{trainer.improved}")

    def on_train_end(self, trainer):
        self.calls.append("stop")


def test_trainer_calls_callbacks_in_loop_order():
    rec = Recorder()
    res = Trainer(model(), TrainConfig(epochs=2, lr=1e-2), callbacks=[rec]).fit(data(2))
    assert rec.calls == ["start", "epoch0", "step1", "step2", "end1:True",
                         "epoch1", "step3", "step4", "end2:True", "stop"]
    assert res.steps == 4 and [h["epoch"] for h in res.history] == [1, 2]


def test_fit_extra_callbacks_run_and_can_stop_training():
    class StopAfterOne(Callback):
        def on_epoch_end(self, trainer, record):
            trainer.should_stop = True

    res = fit(model(), data(), config=TrainConfig(epochs=5), callbacks=[StopAfterOne()])
    assert res.stopped and len(res.history) == 1


def test_early_stopping_callback_counts_epochs_without_improvement():
    scores = iter([1.0, 0.5, 0.4, 0.3, 2.0])
    res = Trainer(model(), TrainConfig(epochs=5), eval_fn=lambda m: next(scores),
                  callbacks=[EarlyStopping(2)]).fit(data(1))
    assert res.stopped and [h["metric"] for h in res.history] == [1.0, 0.5, 0.4]


def test_keep_zeros_holds_exact_zeros_through_adamw_with_weight_decay():
    m = model()
    with torch.no_grad():
        m[0].weight[:, ::2] = 0
    masks, missing = zero_masks(m, ["0.weight", "9.weight"])
    assert missing == ["9.weight"] and int((~masks["0.weight"]).sum()) == 36
    fit(m, data(), config=TrainConfig(epochs=3, optimizer="adamw", weight_decay=0.1, lr=1e-2),
        callbacks=[KeepZeros(masks)])
    assert torch.equal(m[0].weight[:, ::2], torch.zeros(12, 3))
    assert bool((m[0].weight[:, 1::2] != 0).all())


def test_keep_zeros_names_bad_masks_with_a_typed_error():
    with pytest.raises(mo.ConfigError, match="nope"):
        fit(model(), data(1), config=TrainConfig(epochs=1),
            callbacks=[KeepZeros({"nope": torch.ones(3, dtype=torch.bool)})])
    with pytest.raises(mo.ConfigError, match="shape"):
        fit(model(), data(1), config=TrainConfig(epochs=1),
            callbacks=[KeepZeros({"0.weight": torch.ones(3, dtype=torch.bool)})])


def test_checkpointer_round_trip_restores_model_optimizer_and_counters(tmp_path):
    m = model()
    res = fit(m, data(), config=TrainConfig(epochs=2, checkpoint_dir=str(tmp_path)))
    fresh = model(seed=1)
    opt = torch.optim.Adam(fresh.parameters())
    ck = Checkpointer(tmp_path, TrainConfig(epochs=2, checkpoint_dir=str(tmp_path)))
    assert ck.exists()
    state, scaler = ck.load(fresh, [], opt)
    assert scaler is None and state["epoch"] == 2 and state["step"] == 8
    assert state["history"] == res.history
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(),
                                                  fresh.state_dict().values()))
    assert int(opt.state_dict()["state"][0]["step"]) == 8


def test_resume_after_early_stop_state_is_kept(tmp_path):
    """best/bad counters travel in the checkpoint: a resumed run stops where it would have."""
    scores = [3.0, 2.0, 1.0, 0.5, 0.4]
    cfg = dict(epochs=5, early_stopping_patience=2, checkpoint_dir=str(tmp_path))
    it = iter(scores)
    full = fit(model(), data(1), config=TrainConfig(**cfg), eval_fn=lambda m: next(it))
    assert full.stopped and len(full.history) == 3
    it2 = iter(scores[3:])
    again = fit(model(), data(1), config=TrainConfig(resume=True, **cfg),
                eval_fn=lambda m: next(it2))
    assert again.resumed_from == 3 and again.stopped and len(again.history) == 4


def test_strategy_ddp_without_processes_is_a_typed_error():
    with pytest.raises(mo.ConfigError, match="torchrun"):
        fit(model(), data(1), config=TrainConfig(epochs=1, strategy="ddp"))


def test_sharded_shuffled_global_steps_match_one_process_on_joined_batches():
    """2 processes on batches b0..b7 see, step by step, what one process sees on the batches
    joined 2 by 2: the order is drawn over global steps, the same on both ranks."""
    cfg = TrainConfig(seed=7)
    items = list(range(8))
    joined = [(2 * k, 2 * k + 1) for k in range(4)]
    for epoch in range(3):
        one = [b for _, b in epoch_batches(joined, cfg, epoch, 1, 0, 4)]
        r0 = [b for _, b in epoch_batches(items, cfg, epoch, 2, 0, 4)]
        r1 = [b for _, b in epoch_batches(items, cfg, epoch, 2, 1, 4)]
        assert list(zip(r0, r1)) == one


def test_kd_loss_is_one_public_function():
    from modelopt_core import training
    import modelopt_distill

    assert mo.kd_loss is training.kd_loss is modelopt_distill.kd_loss


def _save_on_two_ranks(rank, folder):
    """One process of a 2-process gloo group: save an artifact twice (the second save fails on
    rank 0), record what each save returned."""
    import json
    from pathlib import Path

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=2)
    try:
        art = mo.Session(model(), (torch.randn(1, 6),), progress=False).current
        got = {"ok": str(art.save(Path(folder) / "art"))}
        blocker = Path(folder) / "blocker"
        if rank == 0:
            blocker.write_text("a file, not an artifact folder")  # rank 0's save fails
        try:
            art.save(blocker)
        except mo.ArtifactError as e:
            got["error"] = str(e)
        (Path(folder) / f"r{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_artifact_save_in_a_group_rank0_writes_others_wait_and_share_failure(tmp_path):
    import json

    import torch.multiprocessing as tmp

    tmp.spawn(_save_on_two_ranks, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1))
    assert r0["ok"] == r1["ok"] and (tmp_path / "art" / "manifest.json").exists()
    # rank 0's own error; rank 1 is told that rank 0 failed, and wrote nothing
    assert "blocker" in r0["error"] and "rank 0" in r1["error"]
    assert "wrote nothing" in r1["error"] and (tmp_path / "blocker").is_file()
