"""Finding NaN/Inf in a model's weights, so an error can name the broken layer."""

from __future__ import annotations

from typing import Any

from .errors import NumericalError

__all__ = ["first_nonfinite", "check_finite_weights"]


def first_nonfinite(module: Any) -> tuple[str, str] | None:
    """``(layer_name, param_name)`` of the first floating parameter or buffer of ``module``
    holding NaN/Inf (in ``named_parameters`` then ``named_buffers`` order), else ``None``.

    ``layer_name`` is the qualified submodule name (``""`` for the module itself) and
    ``param_name`` the tensor's name within it (``"weight"``, ``"running_var"``).
    """
    found = _first(module)
    if found is None:
        return None
    layer, _, param = found[0].rpartition(".")
    return layer, param


def check_finite_weights(module: Any, who: str, doing: str = "optimizing") -> None:
    """Raise :class:`NumericalError` naming the first layer whose weights hold NaN/Inf."""
    import torch

    found = _first(module)
    if found is None:
        return
    name, t = found
    layer, _, param = name.rpartition(".")
    bad = int((~torch.isfinite(t)).sum())
    raise NumericalError(
        f"{who}: layer {layer or '<root>'!r} has NaN/Inf in its {param} ({bad} of {t.numel()} "
        f"values); the model itself is broken, so {doing} it would only spread them. Fix or "
        "retrain the model (e.g. reload a good checkpoint) first.")


def _first(module: Any) -> tuple[str, Any] | None:
    import torch

    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_quantized or not (t.is_floating_point() or t.is_complex()):
            continue
        if not bool(torch.isfinite(t).all()):
            return name, t
    return None
