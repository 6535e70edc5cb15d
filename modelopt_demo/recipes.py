"""Data factories for recipes (``data = "modelopt_demo.recipes:digits_data"``)."""

from __future__ import annotations

from typing import Any

from .data import accuracy_fn, load_digits_data


def digits_data() -> dict[str, Any]:
    """Calibration, training and evaluation data for the digits models."""
    d = load_digits_data()
    return {"calibration_data": d.calibration, "train_data": d.train,
            "eval_fn": accuracy_fn(d.test)}
