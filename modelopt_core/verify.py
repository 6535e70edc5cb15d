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

What every exporter's check needs besides the rule: :func:`check_inputs_for` (the inputs a
check runs on: the first calibration batch, else the example inputs tiled by
:func:`tile_batch`), :func:`reference_outputs` (the source artifact's outputs on them, in
process for a torch model or on a registered backend for another format) and
:func:`max_errors` (the error figures alone, for components that record them without a
tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import ExportError, FormatError, NumericalError

if TYPE_CHECKING:
    from .artifact import ModelArtifact
    from .interfaces import Context

__all__ = ["DEFAULT_SCALE_FLOOR", "check_inputs_for", "check_outputs", "check_reference",
           "max_errors", "reference_outputs", "tile_batch"]

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


def max_errors(ref: Sequence[Any], got: Sequence[Any]) -> tuple[float, float]:
    """(max abs error, max error relative to the reference's max magnitude) over outputs.

    Positions where both hold the same non-finite value (NaN and NaN, or the same infinity)
    are left out; a shape mismatch, or NaN/Inf in one where the other differs, is ``inf``
    (NaN never hides as an error of 0). :func:`check_outputs` refuses NaN/Inf outright.
    """
    import numpy as np

    abs_err = rel_err = 0.0
    for r, g in zip(ref, got):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if r.shape != g.shape:
            return float("inf"), float("inf")
        fr, fg = np.isfinite(r), np.isfinite(g)
        if not (np.array_equal(fr, fg)
                and np.array_equal(r[~fr], g[~fg], equal_nan=True)):
            return float("inf"), float("inf")
        r, g = r[fr], g[fr]
        e = float(np.max(np.abs(r - g))) if r.size else 0.0
        abs_err = max(abs_err, e)
        rel_err = max(rel_err, e / max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-12))
    return abs_err, rel_err


def tile_batch(x: Any, batch: int) -> Any:
    """The tensor ``x`` repeated (or cut) along dim 0 to exactly ``batch`` rows (contiguous);
    a 0-dim tensor has no rows and is returned as it is."""
    if not x.dim():
        return x
    reps = -(-batch // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch].contiguous()


def check_inputs_for(artifact: ModelArtifact, ctx: Context, batch: int = 2,
                     who: str = "numerics check") -> tuple:
    """Inputs for numerics checks: the first calibration batch when there is one, else
    example inputs tiled to ``batch`` rows (so dynamic batch axes are exercised).

    A one-shot calibration iterator is never drawn from (that would silently drop a batch the
    calibration needs): example inputs are used, with a note. The calibration batch is
    validated like calibration data (:class:`~modelopt_core.DataError` naming it). A torch
    model with NaN/Inf weights is refused up front with a
    :class:`~modelopt_core.NumericalError` naming the first such layer: its outputs would be
    NaN/Inf and nothing could be checked.
    """
    from .data import check_batch, is_one_shot, split_targets
    from .numerics import first_nonfinite

    if artifact.format == "torch" and hasattr(artifact.model, "named_parameters"):
        found = first_nonfinite(artifact.model)
        if found is not None:
            raise NumericalError(
                f"{who}: the torch model itself produces NaN/Inf: layer "
                f"{found[0] or '<root>'!r} has NaN/Inf in its {found[1]}, so its outputs and "
                "any export of it cannot be checked. Fix or retrain the model (or reload a "
                "good checkpoint); check_numerics=False skips this check.")
    data = ctx.calibration_data
    if data is not None and is_one_shot(data):
        ctx.warn(f"{who}: calibration_data is a one-shot iterator; checked on the example "
                 "inputs instead, so that no calibration batch is used up (pass a list or a "
                 "DataLoader to check on real data).")
    elif data is not None:
        specs = ctx.original.inputs if ctx.original is not None else ()
        for item in data:
            item = split_targets(item, specs)[0]  # (inputs, targets) pairs
            return check_batch(item, specs, "calibration_data", 0, who, ctx.warn)
    return tuple(tile_batch(x, batch) for x in ctx.example_inputs)


def reference_outputs(artifact: ModelArtifact, inputs: Sequence[Any],
                      ctx: Context | None = None, *, backend: str | None = None) -> list[Any]:
    """The source artifact's outputs on ``inputs`` (torch tensors), as NumPy arrays, for
    numerics checks.

    Without ``backend`` the model is called in process (a torch module: a private copy in
    eval mode, under ``no_grad``, floating inputs cast to ``props.compute_dtype``; outputs as
    float32). With ``backend``, the name of a registered backend (``"onnxruntime"`` for an
    ONNX artifact), the artifact runs on that backend at its default config, looked up in
    ``ctx.plugins`` (else the process-wide registry): :class:`FormatError` when it does not
    run the artifact's format, :class:`~modelopt_core.BackendUnavailableError` when it is not
    installed here."""
    if backend is not None:
        return _backend_outputs(artifact, inputs, ctx, backend)
    import copy

    import torch

    if not callable(artifact.model):
        raise FormatError(f"reference outputs: the {artifact.format!r} model of "
                          f"{artifact.name!r} cannot be called in process; name the backend "
                          "that runs it (backend=...).")
    model = copy.deepcopy(artifact.model).eval()
    dtype = artifact.props.compute_dtype
    xs = [x.to(getattr(torch, dtype)) if dtype and x.is_floating_point() else x for x in inputs]
    with torch.no_grad():
        out = model(*xs)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    # float outputs as float32 (the converted model's precision); integer ones (indices,
    # counts) as they are
    return [o.float().numpy() if o.is_floating_point() else o.numpy() for o in outs]


def _backend_outputs(artifact: ModelArtifact, inputs: Sequence[Any], ctx: Context | None,
                     backend: str) -> list[Any]:
    """``artifact`` run once on registered backend ``backend``; NumPy outputs."""
    import torch

    from .interfaces import Context
    from .plugins import get_plugin_manager

    pm = (ctx.plugins if ctx is not None else None) or get_plugin_manager()
    inst = pm.backend_for(artifact, backend)
    with inst.load(artifact, ctx or Context(plugins=pm, show_progress=False)) as runner:
        outs = runner.run_flat(list(inputs))
    return [(o.float() if o.dtype == torch.bfloat16 else o).detach().cpu().numpy()
            if isinstance(o, torch.Tensor) else o for o in outs]


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
