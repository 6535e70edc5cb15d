"""NNCF glue of ``openvino.quantize`` / ``openvino.compress_weights``: the calibration
dataset (batches checked against the model's inputs and regrouped for a fixed batch size),
ignored scopes, the advanced quantization parameters, quiet NNCF calls whose validation errors
become ConfigError, and accuracy control (``nncf.quantize_with_accuracy_control`` measured
with the session's ``eval_fn`` on an ``openvino`` runner of each candidate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import modelopt_core as mo


def _ignored_scope(names: Sequence[str], types: Sequence[str], patterns: Sequence[str]) -> Any:
    """An ``nncf.IgnoredScope`` of op names, types and name patterns, validated by NNCF (an
    entry that matches no op is an error); None when all three are empty."""
    import nncf

    if not (names or types or patterns):
        return None
    return nncf.IgnoredScope(names=list(names), types=list(types), patterns=list(patterns),
                             validate=True)


def _checked_batches(who: str, artifact: mo.ModelArtifact, ctx: mo.Context, n: int,
                     notes: list[str]) -> list[Any]:
    """Up to ``n`` of the session's calibration batches, each with a tensor per model input,
    fitted to a fixed-batch model (:func:`_fit_batches`). DataError for a short batch."""
    batches = ctx.calibration_batches(who, n)
    n_in = len(artifact.model.inputs)
    for i, b in enumerate(batches):
        if len(b) < n_in:
            raise mo.DataError(f"{who}: calibration batch {i} has {len(b)} tensor(s) "
                               f"but the model takes {n_in}.")
    return _fit_batches(artifact.model, batches, notes)


def _fit_batches(model: Any, batches: list[Any], notes: list[str]) -> list[Any]:
    """Calibration batches regrouped into the batch size of a fixed-batch model (an IR
    exported with ``dynamic_batch=False``), whatever size they came in: the rows of all
    batches, in order, in chunks of that size (the last chunk padded with rows from the
    start). The other dims were checked against the model's inputs when the session handed
    the batches out (``ctx.calibration_batches``)."""
    import torch

    shapes = [p.get_partial_shape() for p in model.inputs]
    if not shapes or not all(ps.rank.is_static and ps.rank.get_length() > 0 and ps[0].is_static
                             for ps in shapes):
        return batches
    size = shapes[0][0].get_length()
    n_in = len(shapes)
    if any(ps[0].get_length() != size for ps in shapes) or \
            all(x.shape[0] == size for b in batches for x in b[:n_in]):
        return batches
    rows = [torch.cat([b[j] for b in batches]) for j in range(n_in)]
    total = rows[0].shape[0]
    pad = -total % size
    if pad:
        rows = [torch.cat([r, r[torch.arange(pad) % total]]) for r in rows]
    out = [tuple(r[k:k + size] for r in rows) for k in range(0, total + pad, size)]
    notes.append(f"the model's batch is fixed at {size}: {total} calibration rows regrouped "
                 f"into {len(out)} batch(es) of {size}" + (f" ({pad} padded)" if pad else ""))
    return out


def _nncf_call(who: str, fn: Any, *args: Any, log: list[str] | None = None,
               **kwargs: Any) -> Any:
    """Call an NNCF entry point quietly (its INFO messages appended to ``log`` when given);
    its validation errors (an ignored scope naming no layer, an unsupported option) become
    ConfigError naming the step."""
    import nncf

    from .common import quiet

    try:
        with quiet(log):
            return fn(*args, **kwargs)
    except nncf.ValidationError as e:
        raise mo.ConfigError(f"{who}: {str(e).strip()[:600]}") from e


def _transform(n_inputs: int) -> Any:
    """NNCF dataset transform: an input tuple of torch tensors -> numpy arrays in order."""
    def transform(item: tuple[Any, ...]) -> list[Any]:
        from .common import to_numpy

        return [to_numpy(x) for x in item[:n_inputs]]

    return transform


def _advanced_parameters(cfg: Any, notes: list[str]) -> Any:
    """NNCF's ``AdvancedQuantizationParameters`` for the overflow fix and SmoothQuant alpha
    of ``cfg`` (a ``QuantizeConfig``), each noted; None when both are NNCF's defaults."""
    adv: dict[str, Any] = {}
    if cfg.overflow_fix != "first_layer":
        from nncf.quantization.advanced_parameters import OverflowFix

        adv["overflow_fix"] = getattr(OverflowFix, cfg.overflow_fix.upper())
        notes.append(f"overflow fix {cfg.overflow_fix!r}" + (
            " (full 8-bit weights: for CPUs with VNNI/AMX; older CPUs may saturate)"
            if cfg.overflow_fix == "disable" else ""))
    if cfg.smooth_quant_alpha is not None:
        from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

        adv["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(
            matmul=cfg.smooth_quant_alpha)
        notes.append("SmoothQuant " + ("off" if cfg.smooth_quant_alpha < 0 else
                                       f"alpha {cfg.smooth_quant_alpha:g} for MatMuls"))
    if adv:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        return AdvancedQuantizationParameters(**adv)
    return None


def _accuracy_control(who: str, cfg: Any, artifact: mo.ModelArtifact, ctx: mo.Context,
                      model: Any, dataset: Any, n_batches: int, kwargs: dict[str, Any],
                      advanced: Any, notes: list[str]) -> tuple[Any, dict[str, Any]]:
    """``nncf.quantize_with_accuracy_control`` of ``model`` within ``cfg.max_accuracy_drop``
    of the session's ``eval_fn`` (``kwargs``: the ``nncf.quantize`` options; ``advanced``:
    :func:`_advanced_parameters`). Returns the quantized model and the
    ``openvino_accuracy_control`` record (float and final metric, evaluations, reverted ops,
    whether the budget was met); warns when it was not, and notes the outcome."""
    import nncf

    if advanced is not None:
        kwargs["advanced_quantization_parameters"] = advanced
    if ctx.eval_fn is None:
        raise mo.DataError(f"{who}: max_accuracy_drop needs the session's eval_fn "
                           "(Session(..., eval_fn=...)); none was given.")
    ctx.status(f"{who}: quantizing with accuracy control (eval_fn, max drop "
               f"{cfg.max_accuracy_drop} {cfg.drop_type})...")
    validate, scores = _validation_fn(artifact, ctx.eval_fn, n_batches)
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    log: list[str] = []
    out = _nncf_call(
        who, nncf.quantize_with_accuracy_control, model, dataset, dataset,
        validate, max_drop=cfg.max_accuracy_drop,
        drop_type=getattr(nncf.DropType, cfg.drop_type.upper()),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=cfg.max_num_iterations),
        log=log, **kwargs)
    reverted = _reverted(log)
    base = scores[0] if scores else float(_evaluate(artifact, artifact.model,
                                                    ctx.eval_fn))
    final = _evaluate(artifact, out, ctx.eval_fn)  # the model NNCF returned
    drop = base - final if cfg.drop_type == "absolute" else \
        (base - final) / max(abs(base), 1e-12)
    met = drop <= cfg.max_accuracy_drop + 1e-9
    if not met:
        ctx.warn(f"{who}: accuracy control could not keep the eval_fn drop "
                 f"within {cfg.max_accuracy_drop} ({cfg.drop_type}): {base:.4g} -> "
                 f"{final:.4g} after reverting {len(reverted)} op(s) to float")
    notes.append(f"accuracy control: eval_fn {base:.4g} (float) -> {final:.4g} "
                 f"({len(scores)} NNCF evaluation(s)); {len(reverted)} op(s) reverted "
                 "to float" + (f": {reverted[:8]}" if reverted else ""))
    return out, {"float": base, "final": final, "evaluations": len(scores),
                 "reverted": reverted, "budget_met": met}


def _reverted(log: Sequence[str]) -> list[str]:
    """Op names NNCF's accuracy control reports as reverted to float (from its log)."""
    out: list[str] = []
    for msg in log:
        if msg.startswith("Reverted"):
            out += [n.strip() for n in msg.splitlines()[1:] if n.strip()]
    return list(dict.fromkeys(out))


def _evaluate(artifact: mo.ModelArtifact, model: Any, eval_fn: Any) -> float:
    """``eval_fn`` on an ``openvino`` runner (CPU, f32) of ``model`` with ``artifact``'s IO."""
    from .backend import OpenVinoRunner
    from .common import compile_f32

    with OpenVinoRunner(artifact, compile_f32(model)) as runner:
        return float(eval_fn(runner))


def _validation_fn(artifact: mo.ModelArtifact, eval_fn: Any, n_items: int
                   ) -> tuple[Any, list[float]]:
    """The NNCF ``validation_fn`` built from the session's ``eval_fn(runner)``, and the list
    of scores it produced (float model first).

    NNCF calls it on the whole validation dataset to measure a candidate; it first probes it
    on one item to learn whether it yields per-item metrics. ``eval_fn`` measures on its own
    data, so a per-item call would be meaningless: it raises, and NNCF then ranks layers by
    how much each one moves the model's outputs on the (calibration) items instead."""
    from .backend import OpenVinoRunner

    scores: list[float] = []

    def validate(compiled: Any, data: Any) -> tuple[float, None]:
        items = list(data)
        if len(items) < n_items:
            raise ValueError("eval_fn measures the whole evaluation set, not single items")
        runner = OpenVinoRunner(artifact, compiled)
        try:
            score = float(eval_fn(runner))
        finally:
            runner.close()
        scores.append(score)
        return score, None

    return validate, scores
