"""Small helpers shared by the test suite (import with ``from helpers import ...``)."""

from __future__ import annotations

from typing import Any

__all__ = ["digits_recipe_module", "onnx_bytes", "slow_rows", "state_hash", "tiny_mlp"]


def state_hash(model: Any) -> str:
    """SHA-256 over a module's state_dict (names, dtypes, shapes and raw bytes, sorted by name):
    two modules hash equal exactly when every parameter and buffer is bit-identical. The
    shipped contract checks' own (``modelopt_core.testing``), so tests and checks agree."""
    from modelopt_core.testing.world import state_hash as shipped

    return shipped(model)


def onnx_bytes(model: Any) -> bytes:
    """Deterministic serialization of an ``onnx.ModelProto`` (to compare before/after)."""
    return model.SerializeToString(deterministic=True)


def tiny_mlp(seed: int = 0) -> Any:
    """Linear(8, 16) -> ReLU -> Linear(16, 4), seeded, in eval mode: the serving tests' model."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4)).eval()


def slow_rows() -> Any:
    """A model whose call time is set by its rows while its inputs stay small (the serving
    crash tests' model): each (256,) input row is spread over 64 rows pushed through 32
    tanh(Linear(256)) layers, ~270 MFLOP a row. Seeded, eval mode."""
    import torch

    class SlowRows(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(256, 256)
            self.register_buffer("spread", torch.randn(64, 256) * 0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.unsqueeze(1) + self.spread
            for _ in range(32):
                h = torch.tanh(self.fc(h))
            return h.mean(1)

    return SlowRows().eval()


def trained_digits_cnn(epochs: int = 3) -> tuple[Any, Any]:
    """(SmallCNN(width=8) trained ``epochs`` on the digits set, eval mode; the digits data):
    the small real model the search tests optimize."""
    import torch

    import modelopt_core as mo
    from modelopt_core.training import TrainConfig, fit
    from modelopt_demo.data import load_digits_data
    from modelopt_demo.models import SmallCNN

    d = load_digits_data()
    torch.manual_seed(0)
    m = SmallCNN(width=8)
    fit(m, d.train, config=TrainConfig(epochs=epochs, lr=3e-3, seed=0),
        ctx=mo.Context(show_progress=False))
    return m.eval(), d


def terminal_text(report: Any) -> str:
    """What ``report.print()`` shows on a terminal (a tty: the rich table), colours removed."""
    import io
    import re

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    report.print(file=out)
    return re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())


def digits_recipe_module(*, eval_rows: int | None = 4, train_rows: int | None = None,
                         one_thread: bool = True, from_path: bool = True) -> str:
    """The text of a recipe's factory module for the search tests: ``model(path)`` (a
    SmallCNN(width=8) with the weights saved at ``path``; ``from_path=False``: ``model()``, a
    seeded one) and ``data()`` (4 digits calibration batches, ``eval_fn`` accuracy on the first
    ``eval_rows`` test batches (None: all), ``train_rows`` train batches when given;
    ``one_thread``: torch at 1 thread in the process that builds them)."""
    model = ("def model(path):\n    m = SmallCNN(width=8)\n"
             "    m.load_state_dict(torch.load(path))\n    return m.eval()\n") if from_path else (
        "def model():\n    torch.manual_seed(0)\n    return SmallCNN(width=8).eval()\n")
    test = "d.test" if eval_rows is None else f"d.test[:{eval_rows}]"
    train = "" if train_rows is None else f'"train_data": d.train[:{train_rows}], '
    return ("import torch\nfrom modelopt_demo.data import accuracy_fn, load_digits_data\n"
            "from modelopt_demo.models import SmallCNN\n\n" + model + "\ndef data():\n"
            + ("    torch.set_num_threads(1)\n" if one_thread else "")
            + "    d = load_digits_data()\n"
            + f'    return {{"calibration_data": d.calibration[:4], {train}"eval_fn": '
            f"accuracy_fn({test})}}\n")
