"""NNCF optimizers for OpenVINO artifacts:

- ``openvino.quantize``: post-training INT8 quantization (``nncf.quantize``) calibrated on
  the session's calibration batches: FakeQuantize ops on activations and weights that the
  CPU plugin executes with INT8 kernels. ``model_type="transformer"`` applies NNCF's
  transformer scheme (SmoothQuant, no quantization of the ops that hurt accuracy), ignored
  scopes keep named layers / op types / name patterns in float. With ``max_accuracy_drop``
  and the session's ``eval_fn``, ``nncf.quantize_with_accuracy_control`` reverts the most
  harmful quantizers to float until the metric is within the budget: the metric is the
  session's own ``eval_fn`` run on an ``openvino`` runner of each candidate; layers are
  ranked by how far their outputs move on the calibration batches.
- ``openvino.compress_weights``: data-free weight compression (``nncf.compress_weights``,
  INT8 or INT4 weights with dequantization at run time) for transformers / LLMs: the
  weights of MatMul/Gather (embeddings) shrink 4-8x, activations stay in float.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import modelopt_core as mo

_HINT = "pip install 'modelopt-core[openvino]'  (openvino and nncf)"


def _ignored_scope(names: Sequence[str], types: Sequence[str], patterns: Sequence[str]) -> Any:
    import nncf

    if not (names or types or patterns):
        return None
    return nncf.IgnoredScope(names=list(names), types=list(types), patterns=list(patterns),
                             validate=True)


#: OpenVINO ops that carry the model's learned weights: where the quantized body ends
WEIGHTED = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                      "GroupConvolutionBackpropData", "MatMul"})
#: ops a constant weight may pass through on its way to a weighted op (decompression, FQ)
_WEIGHT_PATH = frozenset({"Convert", "Reshape", "Multiply", "Subtract", "FakeQuantize",
                          "Unsqueeze", "Transpose"})


def _const_weight(op: Any, depth: int = 4) -> bool:
    """Whether input 1 of ``op`` comes from a Constant (through decompression ops)."""
    if op.get_input_size() < 2:
        return False
    src = op.input_value(1).get_node()
    for _ in range(depth):
        t = src.get_type_name()
        if t == "Constant":
            return True
        if t not in _WEIGHT_PATH:
            return False
        src = src.input_value(0).get_node()
    return False


def output_tail(model: Any) -> list[str]:
    """Friendly names of the ops of an ``openvino.Model`` from which no weighted op
    (:data:`WEIGHTED` with a constant weight) is reachable: the post-processing between the
    last layers and the outputs (a detector's box decoding, DFL, sigmoid and concat)."""
    ops = list(model.get_ordered_ops())
    feeds: dict[str, bool] = {}
    weighted = {o.get_friendly_name() for o in ops
                if o.get_type_name() in WEIGHTED and _const_weight(o)
                and not _after_softmax(o)}
    for op in reversed(ops):
        name = op.get_friendly_name()
        feeds[name] = any(t.get_node().get_friendly_name() in weighted
                          or feeds.get(t.get_node().get_friendly_name(), False)
                          for out in op.outputs() for t in out.get_target_inputs())
    def bias(op: Any) -> bool:  # a weighted op's bias Add belongs to it (NNCF fuses it)
        srcs = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        return op.get_type_name() == "Add" and any(
            x.get_friendly_name() in weighted for x in srcs) and any(
            x.get_type_name() == "Constant" for x in srcs)

    skip = {"Parameter", "Result", "Constant"}
    return [o.get_friendly_name() for o in ops
            if o.get_type_name() not in skip and o.get_friendly_name() not in weighted
            and not feeds[o.get_friendly_name()] and not bias(o)]


#: ops a tensor may pass through between a Softmax and the layer that reads it
_SHAPE_OPS = frozenset({"Reshape", "Transpose", "Convert", "Unsqueeze", "Squeeze",
                        "Concat"})


def _after_softmax(op: Any, depth: int = 4) -> bool:
    """Whether the data input of weighted ``op`` comes from a Softmax (through reshapes): a
    fixed projection of a distribution, part of the decoding (YOLOv8's DFL conv, whose
    weights are 0..15, turns the box-side softmax into pixel offsets), not a learned layer.
    INT8 there costs box precision (mAP@0.5:0.95), so it stays in the float tail."""
    src = op.input_value(0).get_node()
    for _ in range(depth):
        t = src.get_type_name()
        if t in ("Softmax", "SoftMax"):
            return True
        if t not in _SHAPE_OPS or src.get_input_size() == 0:
            return False
        src = src.input_value(0).get_node()
    return False


def weighted_ends(model: Any) -> list[str]:
    """Friendly names of the first and the last weighted op (:data:`WEIGHTED` with a constant
    weight) of an ``openvino.Model`` in topological order (one name when there is one)."""
    names = [o.get_friendly_name() for o in model.get_ordered_ops()
             if o.get_type_name() in WEIGHTED and _const_weight(o)]
    return list(dict.fromkeys(names[:1] + names[-1:]))


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


@mo.config
class QuantizeConfig:
    """Options of ``openvino.quantize``."""

    preset: Literal["performance", "mixed"] | None = mo.field(
        None, search=mo.choice("performance", "mixed"),
        help="'performance': symmetric activations and weights (fastest); 'mixed': "
             "asymmetric activations (better for non-ReLU models); unset: NNCF's default for "
             "the model type ('mixed' with model_type='transformer', as optimum-intel "
             "quantizes; 'performance' otherwise)")
    model_type: Literal["transformer"] | None = mo.field(
        None, help="'transformer': NNCF's scheme for transformers (SmoothQuant, keeps "
                   "accuracy-critical ops in float)")
    calibration_batches: int = mo.field(
        300, validator=mo.positive, search=mo.choice(32, 300), aliases=("subset_size",),
        help="at most this many calibration batches (NNCF's subset_size), as the other "
             "quantizers' calibration_batches")
    fast_bias_correction: bool = mo.field(True, search=mo.choice(True, False),
                                          help="fast bias correction (off: the slower, "
                                          "more accurate one)")
    ignored_names: tuple[str, ...] = mo.field((), help="OpenVINO op names kept in float")
    float_tail: bool = mo.field(
        True, help="keep the output tail in float: the ops after the last weighted layer "
                   "(Convolution/MatMul with constant weights) on every path to an output, "
                   "e.g. a detector's box decoding (as Ultralytics' own INT8 export does)",
        search=mo.choice(True, False))
    float_ends: bool = mo.field(
        False, help="keep the first and the last weighted layer (Convolution/MatMul with "
                    "constant weights) in float: the layers INT8 hurts most in many CNNs",
        search=mo.choice(False, True))
    float_last: bool = mo.field(
        False, help="keep the last weighted layer (a classifier's head) in float: nearly free "
                    "in speed, often a point of top-1 agreement",
        search=mo.choice(False, True))
    overflow_fix: Literal["first_layer", "enable", "disable"] = mo.field(
        "first_layer", help="NNCF's fix for INT8 saturation on CPUs without VNNI (halves the "
                            "weight range of the first layer ('first_layer', NNCF's default) "
                            "or of all layers); 'disable' keeps full 8-bit weights: right for "
                            "CPUs with AVX-512 VNNI or AMX, which do not saturate")
    smooth_quant_alpha: float | None = mo.field(
        None, validator=mo.in_range(-1, 1),
        help="SmoothQuant's alpha for MatMuls (model_type='transformer'; NNCF's default 0.95): "
             "how much of the activations' outlier range moves into the weights; -1 "
             "switches SmoothQuant off")
    ignored_types: tuple[str, ...] = mo.field((), help="op types kept in float "
                                              "(e.g. 'Multiply', 'MatMul')")
    ignored_patterns: tuple[str, ...] = mo.field((), help="regular expressions over op names "
                                                 "kept in float")
    target_device: Literal["ANY", "CPU", "GPU", "NPU", "CPU_SPR"] = mo.field(
        "ANY", help="hardware the quantization scheme is tuned for")
    max_accuracy_drop: float | None = mo.field(
        None, validator=mo.in_range(0, 1e6),
        help="with the session's eval_fn: nncf.quantize_with_accuracy_control keeps the "
             "eval_fn metric within this drop (in the metric's units), reverting layers to "
             "float")
    drop_type: Literal["absolute", "relative"] = mo.field(
        "absolute", help="max_accuracy_drop as an absolute or relative (fraction) drop")
    max_num_iterations: int = mo.field(30, validator=mo.positive,
                                       help="accuracy control: most layer groups reverted")


class OpenVinoQuantize(mo.Optimizer):
    """NNCF post-training INT8 quantization of an OpenVINO model (optional accuracy control)."""

    name = "openvino.quantize"
    stage = "precision"
    accepts = ("openvino",)
    needs = ("calibration_data",)
    Config = QuantizeConfig
    requires = ("openvino", "nncf")
    install_hint = _HINT

    def recoveries(self, budget: float | None) -> list[tuple[str, dict[str, Any]]]:
        """Cheapest first: better calibration (the full bias correction, full 8-bit weights
        where the CPU does not saturate) with the last layer in float, then with the first
        and last layers in float, then also asymmetric activations, then NNCF's accuracy
        control against the budget (minutes: it measures the model once per reverted layer
        group)."""
        flags = set(mo.cpu_flags())
        better: dict[str, Any] = {"fast_bias_correction": False}
        label = "full bias correction"
        if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            better["overflow_fix"] = "disable"
            label += ", full 8-bit weights (this CPU has VNNI)"
        # the last layer in float from the first try on, the first one next: on
        # EfficientNet-Lite0 (photo crops, 128 held-out, batch 8) the full bias correction
        # alone kept 89.8% top-1 agreement at 2.72x the FP32 speed; with the last layer in
        # float 90.6% at 2.79x; with the first and the last 94.5% at 2.41x
        last = {**better, "float_last": True}
        ends = {**better, "float_ends": True}
        out = [(label + ", last layer in float", last),
               (label + ", first and last layers in float", ends),
               (label + ", first and last layers in float, asymmetric activations",
                {**ends, "preset": "mixed"})]
        if budget is not None and self.config.max_accuracy_drop is None:
            out.append(("NNCF accuracy control (reverts the most harmful layers to float)",
                        {**ends, "max_accuracy_drop": budget}))
        return out

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import nncf

        from .common import op_counts

        cfg = self.config
        batches = ctx.calibration_batches(self.name, cfg.calibration_batches)
        n_in = len(artifact.model.inputs)
        for i, b in enumerate(batches):
            if len(b) < n_in:
                raise mo.DataError(f"{self.name}: calibration batch {i} has {len(b)} tensor(s) "
                                   f"but the model takes {n_in}.")
        notes: list[str] = []
        batches = _fit_batches(artifact.model, batches, notes)
        dataset = nncf.Dataset(batches, _transform(n_in))
        model = artifact.model.clone()  # NNCF works on its input; the artifact stays as is
        kwargs: dict[str, Any] = dict(
            preset=getattr(nncf.QuantizationPreset, cfg.preset.upper()) if cfg.preset else None,
            target_device=getattr(nncf.TargetDevice, cfg.target_device),
            subset_size=len(batches), fast_bias_correction=cfg.fast_bias_correction,
            model_type=nncf.ModelType.TRANSFORMER if cfg.model_type else None,
            ignored_scope=None)
        tail = output_tail(model) if cfg.float_tail else []
        ends = (weighted_ends(model) if cfg.float_ends else
                weighted_ends(model)[-1:] if cfg.float_last else [])
        names = list(dict.fromkeys([*cfg.ignored_names, *tail, *ends]))
        kwargs["ignored_scope"] = _ignored_scope(names, cfg.ignored_types, cfg.ignored_patterns)
        if tail:
            notes.append(f"output tail kept in float: {len(tail)} op(s) after the last "
                         "weighted layer (float_tail=False quantizes them)")
        if ends:
            notes.append(f"{'first and last' if cfg.float_ends else 'last'} weighted layer(s) "
                         f"kept in float ({'float_ends' if cfg.float_ends else 'float_last'}): "
                         f"{ends}")
        advanced = None
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

            advanced = AdvancedQuantizationParameters(**adv)
        meta: dict[str, Any] = {}
        if cfg.max_accuracy_drop is not None:
            if advanced is not None:
                kwargs["advanced_quantization_parameters"] = advanced
            if ctx.eval_fn is None:
                raise mo.DataError(f"{self.name}: max_accuracy_drop needs the session's eval_fn "
                                   "(Session(..., eval_fn=...)); none was given.")
            ctx.status(f"{self.name}: quantizing with accuracy control (eval_fn, max drop "
                       f"{cfg.max_accuracy_drop} {cfg.drop_type})...")
            validate, scores = _validation_fn(artifact, ctx.eval_fn, len(batches))
            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            log: list[str] = []
            out = _nncf_call(
                self.name, nncf.quantize_with_accuracy_control, model, dataset, dataset,
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
                ctx.warn(f"{self.name}: accuracy control could not keep the eval_fn drop "
                         f"within {cfg.max_accuracy_drop} ({cfg.drop_type}): {base:.4g} -> "
                         f"{final:.4g} after reverting {len(reverted)} op(s) to float")
            notes.append(f"accuracy control: eval_fn {base:.4g} (float) -> {final:.4g} "
                         f"({len(scores)} NNCF evaluation(s)); {len(reverted)} op(s) reverted "
                         "to float" + (f": {reverted[:8]}" if reverted else ""))
            meta["openvino_accuracy_control"] = {
                "float": base, "final": final, "evaluations": len(scores),
                "reverted": reverted, "budget_met": met}
        else:
            ctx.status(f"{self.name}: calibrating on {len(batches)} batch(es) with NNCF...")
            out = _nncf_call(self.name, nncf.quantize, model, dataset,
                             advanced_parameters=advanced, **kwargs)
        before, after = op_counts(artifact.model), op_counts(out)
        fq = after.get("FakeQuantize", 0) - before.get("FakeQuantize", 0)
        quantized = _quantized_ops(out)
        if fq <= 0:
            ctx.warn(f"{self.name}: NNCF inserted no FakeQuantize op (nothing quantizable, or "
                     "everything ignored / reverted); the model runs in float")
        notes.insert(0, f"{fq} FakeQuantize op(s) on {sum(quantized.values())} op(s) "
                        f"{dict(sorted(quantized.items()))}, calibrated on {len(batches)} "
                        f"batch(es) (preset {cfg.preset or ('mixed' if cfg.model_type else 'performance')}"
                        f"{', transformer' if cfg.model_type else ''})")
        meta.update({"quantized": "int8-nncf", "openvino_fake_quantize": fq,
                     "openvino_quantized_ops": quantized})
        return artifact.evolve(step=self.step(notes=notes), model=out, metadata=meta)


def _reverted(log: Sequence[str]) -> list[str]:
    """Op names NNCF's accuracy control reports as reverted to float (from its log)."""
    out: list[str] = []
    for msg in log:
        if msg.startswith("Reverted"):
            out += [n.strip() for n in msg.splitlines()[1:] if n.strip()]
    return list(dict.fromkeys(out))


def _quantized_ops(model: Any) -> dict[str, int]:
    """{op type: count} of ops with a FakeQuantize (or a dequantized weight) on an input."""
    out: dict[str, int] = {}
    for op in model.get_ops():
        t = op.get_type_name()
        if t not in ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"):
            continue
        srcs = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        seen = set()
        for s in srcs:  # a FakeQuantize, possibly behind a Convert/Reshape/Transpose
            for _ in range(3):
                seen.add(s.get_type_name())
                if s.get_type_name() in ("FakeQuantize", "Constant", "Parameter") \
                        or s.get_input_size() == 0:
                    break
                s = s.input_value(0).get_node()
        if "FakeQuantize" in seen:
            out[t] = out.get(t, 0) + 1
    return out


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


@mo.config
class CompressConfig:
    """Options of ``openvino.compress_weights``."""

    mode: Literal["int8_asym", "int8_sym", "int4_sym", "int4_asym"] = mo.field(
        "int8_asym", help="weight format: INT8 (per-channel) or INT4 (grouped)")
    ratio: float | None = mo.field(
        None, validator=mo.in_range(0, 1),
        help="INT4 modes: share of the weights in INT4, the rest INT8 (default 1.0)")
    group_size: int | None = mo.field(
        None, validator=mo.positive, help="INT4 modes: weights per scale group (default 128)")
    all_layers: bool | None = mo.field(
        None, help="INT4 modes: also the embeddings and the last layer in INT4")
    ignored_names: tuple[str, ...] = mo.field((), help="OpenVINO op names kept as they are")
    ignored_types: tuple[str, ...] = mo.field((), help="op types kept as they are")
    ignored_patterns: tuple[str, ...] = mo.field((), help="regular expressions over op names "
                                                 "kept as they are")


class OpenVinoCompressWeights(mo.Optimizer):
    """NNCF weight compression (INT8/INT4 weights, float activations) of an OpenVINO model."""

    name = "openvino.compress_weights"
    stage = "precision"
    accepts = ("openvino",)
    Config = CompressConfig
    requires = ("openvino", "nncf")
    install_hint = _HINT

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import nncf

        from .common import low_precision_weights

        cfg = self.config
        int4 = cfg.mode.startswith("int4")
        if not int4 and (cfg.ratio is not None or cfg.group_size is not None
                         or cfg.all_layers is not None):
            raise mo.ConfigError(f"{self.name}: ratio, group_size and all_layers apply to the "
                                 f"INT4 modes only; mode is {cfg.mode!r}.")
        before = low_precision_weights(artifact.model)
        ctx.status(f"{self.name}: compressing weights to {cfg.mode}...")
        out = _nncf_call(
            self.name, nncf.compress_weights, artifact.model.clone(),
            mode=getattr(nncf.CompressWeightsMode, cfg.mode.upper()),
            ratio=cfg.ratio, group_size=cfg.group_size, all_layers=cfg.all_layers,
            ignored_scope=_ignored_scope(cfg.ignored_names, cfg.ignored_types,
                                         cfg.ignored_patterns))
        n = low_precision_weights(out) - before
        if n <= 0:
            ctx.warn(f"{self.name}: no weight was compressed (the model has no MatMul / "
                     "embedding weights NNCF compresses); the model is unchanged")
        note = (f"{n} weight tensor(s) compressed to {cfg.mode}"
                + (f" (ratio {cfg.ratio if cfg.ratio is not None else 1.0}, group size "
                   f"{cfg.group_size or 128})" if int4 else ""))
        return artifact.evolve(step=self.step(notes=[note]), model=out,
                               metadata={"compressed_weights": cfg.mode,
                                         "openvino_compressed_weights": n})
