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

The graph analysis behind the float layers (output tail, first / last weighted layer) is in
:mod:`.quantize_graph`, the NNCF glue (calibration dataset, ignored scopes, advanced
parameters, accuracy control) in :mod:`.quantize_nncf`; the graph analysis's public names
(``WEIGHTED``, ``output_tail``, ``weighted_ends``) are importable from here as before.
"""

from __future__ import annotations

from typing import Any, Literal

import modelopt_core as mo

from .quantize_graph import (  # noqa: F401 (re-exported: importable from here as before)
    WEIGHTED,
    _quantized_ops,
    output_tail,
    weighted_ends,
)
from .quantize_nncf import (
    _accuracy_control,
    _advanced_parameters,
    _checked_batches,
    _ignored_scope,
    _nncf_call,
    _transform,
)

_HINT = "pip install 'modelopt-core[openvino]'  (openvino and nncf)"


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

        cfg = self.config
        notes: list[str] = []
        batches = _checked_batches(self.name, artifact, ctx, cfg.calibration_batches, notes)
        dataset = nncf.Dataset(batches, _transform(len(artifact.model.inputs)))
        model = artifact.model.clone()  # NNCF works on its input; the artifact stays as is
        kwargs = self._quantize_kwargs(model, len(batches), notes)
        advanced = _advanced_parameters(cfg, notes)
        meta: dict[str, Any] = {}
        if cfg.max_accuracy_drop is not None:
            out, meta["openvino_accuracy_control"] = _accuracy_control(
                self.name, cfg, artifact, ctx, model, dataset, len(batches), kwargs, advanced,
                notes)
        else:
            ctx.status(f"{self.name}: calibrating on {len(batches)} batch(es) with NNCF...")
            out = _nncf_call(self.name, nncf.quantize, model, dataset,
                             advanced_parameters=advanced, **kwargs)
        meta.update(self._summarize(artifact.model, out, len(batches), ctx, notes))
        return artifact.evolve(step=self.step(notes=notes), model=out, metadata=meta)

    def _quantize_kwargs(self, model: Any, n_batches: int, notes: list[str]) -> dict[str, Any]:
        """The config's ``nncf.quantize`` options (``subset_size``: ``n_batches``), with an
        ignored scope of the layers kept in float: ``ignored_names`` / ``ignored_types`` /
        ``ignored_patterns``, the output tail and the first / last weighted layer (the last
        two noted)."""
        import nncf

        cfg = self.config
        kwargs: dict[str, Any] = dict(
            preset=getattr(nncf.QuantizationPreset, cfg.preset.upper()) if cfg.preset else None,
            target_device=getattr(nncf.TargetDevice, cfg.target_device),
            subset_size=n_batches, fast_bias_correction=cfg.fast_bias_correction,
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
        return kwargs

    def _summarize(self, before_model: Any, out: Any, n_batches: int, ctx: mo.Context,
                   notes: list[str]) -> dict[str, Any]:
        """What NNCF did (FakeQuantize ops inserted, quantized ops by type) as the first note
        and the metadata; warns when nothing was quantized."""
        from .common import op_counts

        cfg = self.config
        before, after = op_counts(before_model), op_counts(out)
        fq = after.get("FakeQuantize", 0) - before.get("FakeQuantize", 0)
        quantized = _quantized_ops(out)
        if fq <= 0:
            ctx.warn(f"{self.name}: NNCF inserted no FakeQuantize op (nothing quantizable, or "
                     "everything ignored / reverted); the model runs in float")
        notes.insert(0, f"{fq} FakeQuantize op(s) on {sum(quantized.values())} op(s) "
                        f"{dict(sorted(quantized.items()))}, calibrated on {n_batches} "
                        f"batch(es) (preset {cfg.preset or ('mixed' if cfg.model_type else 'performance')}"
                        f"{', transformer' if cfg.model_type else ''})")
        return {"quantized": "int8-nncf", "openvino_fake_quantize": fq,
                "openvino_quantized_ops": quantized}


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
