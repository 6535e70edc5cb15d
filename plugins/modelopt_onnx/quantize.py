"""Optimizers ``onnx.quantize_static`` and ``onnx.quantize_dynamic``: ONNX Runtime's
quantization tooling (QDQ format, per-channel weights, MinMax/Entropy/Percentile/Distribution
calibration from the session's calibration data), after ORT's pre-processing (symbolic shape
inference + graph optimization)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Literal

import modelopt_core as mo

from .common import max_errors, quiet, run_onnx, workdir

_QTYPES = {"int8": "QInt8", "uint8": "QUInt8", "int16": "QInt16", "uint16": "QUInt16"}
_CALIB = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile",
          "distribution": "Distribution"}


def _source_path(model: Any, folder: Any, ctx: mo.Context, who: str, preprocess: bool) -> Any:
    """Write ``model`` for ORT's file-based tools, after ORT's quant_pre_process when asked
    (falls back to the raw model, with a warning, if pre-processing fails)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = folder / "in.onnx", folder / "pre.onnx"
    onnx.save_model(model, str(src))
    if not preprocess:
        return src
    # ORT's symbolic shape inference drops temp files into the working directory when it
    # gives up (dynamo-exported transformers): run it from the private folder, and retry
    # without it, since ONNX shape inference and ORT's graph optimization still apply
    first: Exception | None = None
    with quiet(), _cwd(folder):
        for skip_symbolic in (False, True):
            try:
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
                if first is not None:
                    ctx.warn(f"{who}: ORT's symbolic shape inference failed ({first}); "
                             "pre-processed without it")
                return dst
            except Exception as e:
                first = first or e
    ctx.warn(f"{who}: ORT pre-processing failed ({type(first).__name__}: {first}); quantizing "
             "the graph as is")
    return src


@contextlib.contextmanager
def _cwd(folder: Any) -> Iterator[None]:
    """Run with ``folder`` as the working directory (ORT tools write temp files there)."""
    prev = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(prev)


@mo.config
class StaticConfig:
    per_channel: bool = mo.field(True, help="per-output-channel weight scales",
                                 search=mo.choice(True, False))
    calibrate_method: Literal["minmax", "entropy", "percentile", "distribution"] = mo.field(
        "minmax", search=mo.choice("minmax", "entropy", "percentile"), help="activation range calibration ('distribution' is meant for float8 and "
                       "is poor for INT8)")
    percentile: float = mo.field(99.999, validator=mo.in_range(50, 100),
                                 help="percentile for calibrate_method='percentile'")
    quant_format: Literal["qdq", "qoperator"] = mo.field("qdq", help="QDQ pairs or QLinear ops")
    activation_type: Literal["uint8", "int8", "uint16", "int16"] = mo.field("uint8")
    weight_type: Literal["int8", "uint8"] = mo.field("int8")
    symmetric_activations: bool = mo.field(False, help="zero point 0 for activations",
                                           search=mo.choice(False, True))
    reduce_range: bool = mo.field(False, help="7-bit weights (for CPUs without VNNI)")
    op_types: tuple[str, ...] | None = mo.field(None, help="op types to quantize (default all)")
    nodes_to_exclude: tuple[str, ...] = mo.field((), help="node names kept in float")
    float_tail: bool = mo.field(
        True, help="keep the output tail in float: the ops after the last weighted layer "
                   "(Conv/Gemm/MatMul with constant weights) on every path to an output, "
                   "e.g. a detector's box decoding and its concat of boxes in pixels with "
                   "scores in 0..1, which one INT8 scale cannot hold",
        search=mo.choice(True, False))
    float_ends: bool = mo.field(
        False, help="keep the first and the last weighted layer (Conv/Gemm/MatMul with "
                    "constant weights) in float: the layers INT8 hurts most in many CNNs",
        search=mo.choice(False, True))
    calibration_batches: int = mo.field(32, validator=mo.positive,
                                        help="at most this many calibration batches")
    preprocess: bool = mo.field(True, help="run ORT's quant_pre_process first")


class OnnxQuantizeStatic(mo.Optimizer):
    """Static INT8 quantization with ONNX Runtime (QDQ, per-channel, calibrated)."""

    name = "onnx.quantize_static"
    stage = "precision"
    accepts = ("onnx",)
    needs = ("calibration_data",)
    Config = StaticConfig
    requires = ("onnx", "onnxruntime")
    install_hint = "pip install onnxruntime"

    def recoveries(self, budget: float | None) -> list[tuple[str, dict[str, Any]]]:
        """Cheapest first: percentile calibration (clips outliers), then also the first and
        last weighted layers in float, then entropy calibration with them."""
        return [("percentile calibration (99.999th)", {"calibrate_method": "percentile"}),
                ("percentile calibration, first and last layers in float",
                 {"calibrate_method": "percentile", "float_ends": True}),
                ("entropy calibration, first and last layers in float",
                 {"calibrate_method": "entropy", "float_ends": True})]

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import numpy as np
        import onnx
        from onnxruntime import quantization as q

        cfg = self.config
        batches = ctx.calibration_batches(self.name, cfg.calibration_batches)
        # constant float inputs are refused like quantize.static does (integer-only inputs,
        # such as token ids, are left to ORT)
        mo.data.check_not_constant(batches, self.name, require_float=False)
        names = [i.name for i in artifact.model.graph.input
                 if i.name not in {t.name for t in artifact.model.graph.initializer}]
        feeds = []
        for b in batches:
            if len(b) != len(names):
                raise mo.DataError(f"{self.name}: a calibration item has {len(b)} tensor(s) but "
                                   f"the model takes {len(names)} ({names}).")
            feeds.append({n: x.detach().cpu().numpy() for n, x in zip(names, b)})
        for f in feeds:
            for n, a in f.items():
                if not np.isfinite(a).all():
                    raise mo.NumericalError(f"{self.name}: calibration input {n!r} holds NaN/Inf.")
        notes = []
        if cfg.calibrate_method == "distribution":
            ctx.warn(f"{self.name}: calibrate_method='distribution' is ONNX Runtime's method "
                     "for float8 scales; with integer types it can lose most of the accuracy "
                     "(digits CNN: 29.6% vs 99.3% with minmax): prefer minmax, percentile or "
                     "entropy")  # lands in this step's lineage notes
        sizes = {len(next(iter(f.values()))) for f in feeds}
        if cfg.calibrate_method != "minmax" and len(sizes) > 1:
            feeds = _even_batches(feeds)  # ORT's histogram calibrators stack batches
            notes.append(f"calibration batches of uneven size regrouped into {len(feeds)} "
                         f"batches of {len(next(iter(feeds[0].values())))} (the last padded "
                         "with samples from the start) for the histogram calibrator")
        reader = _Reader(feeds, ctx)
        extra = {"ActivationSymmetric": cfg.symmetric_activations,
                 "CalibPercentile": cfg.percentile}
        with workdir() as d:
            src = _source_path(artifact.model, d, ctx, self.name, cfg.preprocess)
            dst = d / "q.onnx"
            exclude = list(cfg.nodes_to_exclude)
            if cfg.float_tail:
                tail = output_tail(onnx.load_model(str(src), load_external_data=False))
                exclude += [n for n in tail if n not in exclude]
                if tail:
                    notes.append(f"output tail kept in float: {len(tail)} node(s) after the "
                                 "last weighted layer (float_tail=False quantizes them)")
            if cfg.float_ends:
                ends = weighted_ends(onnx.load_model(str(src), load_external_data=False))
                exclude += [n for n in ends if n not in exclude]
                notes.append(f"first and last weighted layers kept in float (float_ends): "
                             f"{ends}")
            with quiet():
                q.quantize_static(
                    str(src), str(dst), reader,
                    quant_format=q.QuantFormat.QDQ if cfg.quant_format == "qdq"
                    else q.QuantFormat.QOperator,
                    op_types_to_quantize=list(cfg.op_types) if cfg.op_types else None,
                    per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                    activation_type=getattr(q.QuantType, _QTYPES[cfg.activation_type]),
                    weight_type=getattr(q.QuantType, _QTYPES[cfg.weight_type]),
                    nodes_to_exclude=exclude or None,
                    calibrate_method=getattr(q.CalibrationMethod, _CALIB[cfg.calibrate_method]),
                    extra_options=extra)
            out = onnx.load_model(str(dst))
        xs = batches[0]
        abs_err, rel_err = max_errors(run_onnx(artifact.model, xs), run_onnx(out, xs))
        notes.insert(0, f"{len(batches)} calibration batch(es); output error vs float on a "
                        f"calibration batch: max abs {abs_err:.3g}, relative {rel_err:.3g}")
        return artifact.evolve(step=self.step(notes=notes), model=out,
                               metadata={"quantized": "int8-static",
                                         "quant_max_rel_error": rel_err})


#: ops that carry the model's learned weights: where the quantized body ends
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv",
                      "QLinearMatMul", "MatMulInteger", "ConvInteger"})


#: ops a tensor may pass through between a Softmax and the layer that reads it
_SHAPE_OPS = frozenset({"Reshape", "Transpose", "Cast", "Unsqueeze", "Squeeze", "Concat"})


def output_tail(model: Any) -> list[str]:
    """Names of the nodes from which no weighted node (:data:`WEIGHTED`, with a constant
    weight) is reachable: the post-processing between the last layers and the outputs (a
    detector's box decoding, DFL, sigmoid and concat; a classifier's softmax). A weighted
    node reading a Softmax (through reshapes) counts as decoding, not as a layer: YOLOv8's
    DFL conv projects the box distributions with fixed weights 0..15. Nodes without a name
    are left out (ORT's exclusion goes by name)."""
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    producer = {o: n for n in graph.node for o in n.output}

    def after_softmax(node: Any, depth: int = 4) -> bool:
        # a fixed projection of a distribution (YOLOv8's DFL conv): decoding, kept in float
        src = producer.get(node.input[0]) if node.input else None
        for _ in range(depth):
            if src is None:
                return False
            if src.op_type == "Softmax":
                return True
            if src.op_type not in _SHAPE_OPS or not src.input:
                return False
            src = producer.get(src.input[0])
        return False

    def weighted(node: Any) -> bool:
        return node.op_type in WEIGHTED and any(i in consts for i in node.input[1:]) \
            and not after_softmax(node)

    feeds_weight: dict[int, bool] = {}  # id(node) -> a weighted node is reachable from it
    for node in reversed(graph.node):  # topological order: consumers come later
        feeds_weight[id(node)] = any(
            weighted(c) or feeds_weight.get(id(c), False)
            for o in node.output for c in consumers.get(o, ()))
    return [n.name for n in graph.node
            if n.name and not weighted(n) and not feeds_weight[id(n)]]


def weighted_ends(model: Any) -> list[str]:
    """Names of the first and the last weighted node (:data:`WEIGHTED` with a constant
    weight) of an ONNX graph in topological order."""
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    names = [n.name for n in graph.node if n.name and n.op_type in WEIGHTED
             and any(i in consts for i in n.input[1:])]
    return list(dict.fromkeys(names[:1] + names[-1:]))


def _even_batches(feeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same samples in batches of the first batch's size; the last batch is padded with
    samples from the start (a few repeated samples barely move a histogram; a ragged batch
    makes ORT's histogram calibrators fail)."""
    import numpy as np

    size = len(next(iter(feeds[0].values())))
    whole = {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
    total = len(next(iter(whole.values())))
    pad = -total % size
    if pad:
        whole = {n: np.concatenate([a, np.resize(a, (pad,) + a.shape[1:])])
                 for n, a in whole.items()}
    return [{n: a[i:i + size] for n, a in whole.items()} for i in range(0, total + pad, size)]


class _Reader:
    """ORT CalibrationDataReader over pre-built feeds (restartable); the first pass drives a
    progress bar."""

    def __init__(self, feeds: list[dict[str, Any]], ctx: mo.Context | None = None) -> None:
        self.feeds = feeds
        self.it = iter(ctx.progress(feeds, len(feeds), "calibrating") if ctx else feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.feeds)

    def __iter__(self):
        return iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.feeds = self.feeds[start_index:end_index]


@mo.config
class DynamicConfig:
    per_channel: bool = mo.field(True, help="per-output-channel weight scales",
                                 search=mo.choice(True, False))
    weight_type: Literal["int8", "uint8"] = mo.field("int8")
    reduce_range: bool = mo.field(False, help="7-bit weights (for CPUs without VNNI)")
    op_types: tuple[str, ...] = mo.field(("MatMul", "Gemm", "LSTM", "GRU", "Attention"),
                                         help="op types to quantize")
    nodes_to_exclude: tuple[str, ...] = mo.field((), help="node names kept in float")
    preprocess: bool = mo.field(True, help="run ORT's quant_pre_process first")


class OnnxQuantizeDynamic(mo.Optimizer):
    """Dynamic INT8 quantization with ONNX Runtime (weights INT8, activations at run time)."""

    name = "onnx.quantize_dynamic"
    stage = "precision"
    accepts = ("onnx",)
    Config = DynamicConfig
    requires = ("onnx", "onnxruntime")
    install_hint = "pip install onnxruntime"

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import onnx
        from onnxruntime import quantization as q

        cfg = self.config
        ops = {n.op_type for n in artifact.model.graph.node}
        if not ops & set(cfg.op_types):
            ctx.warn(f"{self.name}: the graph has no {list(cfg.op_types)} nodes; nothing to "
                     "quantize, the model is unchanged (no-op step)")
            return artifact.evolve(step=self.step(notes=["no-op: nothing to quantize"]))
        with workdir() as d:
            src = _source_path(artifact.model, d, ctx, self.name, cfg.preprocess)
            dst = d / "q.onnx"
            with quiet():
                q.quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(cfg.op_types),
                                   per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                                   weight_type=getattr(q.QuantType, _QTYPES[cfg.weight_type]),
                                   nodes_to_exclude=list(cfg.nodes_to_exclude) or None)
            out = onnx.load_model(str(dst))
        return artifact.evolve(step=self.step(), model=out,
                               metadata={"quantized": "int8-dynamic"})
