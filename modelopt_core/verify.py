"""One output-verification rule for every exporter: does a converted model answer like its
source?

:func:`check_outputs` compares reference outputs (the source model's) with a converted model's,
output by output, and raises a typed error that names the output, the figure that failed and
the allowance it failed against. An element passes when

    |got - ref| <= atol + rtol * max(|ref|, scale_floor * max|ref of that output|)

so the allowance is relative to the element, but never smaller than a share of its own
output's scale: the float rounding an exact conversion accumulates grows with the output's
magnitude (a detector's decoded boxes in 0..640 px carry ~0.01 px of it on every coordinate,
also on those near 0), while a broken conversion is off by far more than that. Exporters of
quantized models pass ``scale_floor=1`` (the allowance relative to the output's largest
magnitude, the rule their tolerances are calibrated for).

NaN/Inf: in the reference they are a :class:`NumericalError` (the source model itself
produces them, so nothing can be verified); in the converted output only, an
:class:`ExportError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ExportError, NumericalError

__all__ = ["DEFAULT_SCALE_FLOOR", "check_outputs", "check_reference"]

#: share of an output's largest magnitude below which the relative allowance never falls
DEFAULT_SCALE_FLOOR = 0.1


def check_reference(who: str, ref: Sequence[Any], *, names: Sequence[str] = (),
                    source: Any = None) -> None:
    """:class:`NumericalError` when a reference output holds NaN/Inf: the source model itself
    produces them, so no conversion of it can be verified (call it before running the
    converted model; :func:`check_outputs` calls it too). ``source``, the torch module the
    reference came from, lets the message name its first layer with non-finite weights."""
    import numpy as np

    for i, r in enumerate(ref):
        fr = np.isfinite(_array(r))
        if not fr.all():
            raise NumericalError(
                f"{who}: the source model itself produces NaN/Inf ({_label(i, names)}, "
                f"{int((~fr).sum())} of {fr.size} values) on the check inputs, so its "
                f"conversion cannot be verified.{_nonfinite_layer(source)} Fix or retrain the "
                "model, or check the inputs for NaN/Inf.")


def _label(i: int, names: Sequence[str]) -> str:
    return f"output {i}" + (f" {names[i]!r}" if i < len(names) and names[i] else "")


def check_outputs(who: str, ref: Sequence[Any], got: Sequence[Any], *, rtol: float,
                  atol: float, names: Sequence[str] = (), runtime: str = "converted model",
                  scale_floor: float = DEFAULT_SCALE_FLOOR, hint: str = "",
                  source: Any = None) -> dict[str, float]:
    """Check every output of ``got`` against ``ref`` (NumPy arrays or tensors, same order);
    raise :class:`ExportError` / :class:`NumericalError` naming the output and the failing
    figure. Returns ``max_abs_error`` and ``max_rel_error`` (error over the output's largest
    magnitude) over all outputs. ``who`` starts every message (``"onnx"``), ``runtime``
    names the converted side (``"ONNX Runtime"``), ``hint`` is appended to a tolerance
    failure (what to try); ``source``, the torch module the reference came from, lets a
    NaN/Inf reference name its first layer with non-finite weights."""
    import numpy as np

    check_reference(who, ref, names=names, source=source)
    if len(ref) != len(got):
        raise ExportError(f"{who}: the {runtime} returns {len(got)} output(s), the reference "
                          f"{len(ref)}; the conversion lost or added outputs. Report the model.")
    worst_abs = worst_rel = 0.0
    for i, (r, g) in enumerate(zip(ref, got)):
        r = _array(r)
        g = _array(g)
        label = _label(i, names)
        if r.shape != g.shape:
            if r.size == g.size:  # a flattened / reshaped output (Core ML) holds the same data
                g = g.reshape(r.shape)
            else:
                raise ExportError(f"{who}: {label} of the {runtime} has shape "
                                  f"{tuple(g.shape)} where the reference has {tuple(r.shape)}; "
                                  "the conversion is broken. Report the model.")
        fg = np.isfinite(g)
        if not fg.all():
            raise ExportError(
                f"{who}: {label} of the {runtime} holds NaN/Inf ({int((~fg).sum())} of "
                f"{g.size} values) where the reference is finite; the converted graph is "
                "numerically broken. Try another exporter route, or report the model.")
        if not r.size:
            continue
        diff = np.abs(g - r)
        scale = float(np.max(np.abs(r)))
        allowed = atol + rtol * np.maximum(np.abs(r), scale_floor * scale)
        over = diff > allowed
        err = float(diff.max())
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / max(scale, 1e-12))
        if over.any():
            k = int(np.argmax(diff - allowed))  # the element furthest past its allowance
            d, a, v = float(diff.flat[k]), float(allowed.flat[k]), float(r.flat[k])
            raise ExportError(
                f"{who}: {label} of the {runtime} differs from the reference beyond the "
                f"tolerance: {int(over.sum())} of {r.size} values are outside it; the worst is "
                f"off by {d:.3g} at a reference value of {v:.3g}, {d / a:.3g}x its allowance "
                f"{a:.3g} (= atol {atol:g} + rtol {rtol:g} x max(|ref|, {scale_floor:g} x the "
                f"output's largest magnitude {scale:.3g})); largest error {err:.3g}. "
                + (hint or "Raise rtol/atol if this is expected for the model, or report it."))
    return {"max_abs_error": worst_abs, "max_rel_error": worst_rel}


def _nonfinite_layer(source: Any) -> str:
    """' Layer 'x' has NaN/Inf in its weight.' for a torch module ``source`` (else '')."""
    from .numerics import first_nonfinite

    if source is None or not hasattr(source, "named_parameters"):
        return ""
    found = first_nonfinite(source)
    if found is None:
        return " Its weights are all finite: the NaN/Inf comes from its computation."
    return f" Layer {found[0] or '<root>'!r} has NaN/Inf in its {found[1]}."


def _array(x: Any) -> Any:
    import numpy as np

    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)
