"""Optimizer ``onnx.optimize``: onnxoptimizer graph passes (BN folding, bias fusion, dead code),
then constant folding with onnxscript's optimizer (onnxoptimizer's BN fusion leaves the folded
weights as a constant subgraph), shape inference, the ONNX checker and a numerics check
against the input graph."""

from __future__ import annotations

from typing import Any

import modelopt_core as mo

from .common import check_against, check_inputs_for, run_onnx

#: fusions and eliminations that never change numerics beyond float rounding
DEFAULT_PASSES = (
    "eliminate_deadend", "eliminate_identity", "eliminate_nop_dropout", "eliminate_nop_cast",
    "eliminate_nop_pad", "eliminate_nop_transpose", "eliminate_nop_reshape",
    "eliminate_unused_initializer", "eliminate_duplicate_initializer",
    "extract_constant_to_initializer", "fuse_bn_into_conv", "fuse_add_bias_into_conv",
    "fuse_pad_into_conv", "fuse_consecutive_transposes", "fuse_transpose_into_gemm",
    "fuse_matmul_add_bias_into_gemm", "fuse_consecutive_squeezes",
    "fuse_consecutive_unsqueezes", "eliminate_common_subexpression",
)


def _passes_ok(inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        return
    import onnxoptimizer

    known = set(onnxoptimizer.get_available_passes())
    bad = [p for p in value if p not in known]
    if bad:
        raise mo.ConfigError(f"onnx.optimize: unknown pass(es) {bad}; available: "
                             f"{', '.join(sorted(known))}.")


@mo.config
class OnnxOptimizeConfig:
    passes: tuple[str, ...] | None = mo.field(None, validator=_passes_ok,
                                              help="onnxoptimizer passes (default: a safe list)")
    fixed_point: bool = mo.field(True, help="repeat the passes until the graph stops changing")
    fold_constants: bool = mo.field(True, help="fold constant subgraphs (onnxscript optimizer)")
    check_numerics: bool = mo.field(True, help="compare outputs with the input graph")
    rtol: float = mo.field(1e-3, validator=mo.in_range(0, 1), help="relative tolerance")
    atol: float = mo.field(1e-4, validator=mo.in_range(0, 1e3), help="absolute tolerance")


class OnnxOptimize(mo.Optimizer):
    """Graph-level cleanup with onnxoptimizer: fold BatchNorm into Conv, fuse biases, prune."""

    name = "onnx.optimize"
    stage = "graph"
    lossy = False  # the same function, a faster graph
    accepts = ("onnx",)
    Config = OnnxOptimizeConfig
    requires = ("onnx", "onnxoptimizer")
    install_hint = "pip install onnxoptimizer"

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import onnx
        import onnxoptimizer

        cfg = self.config
        passes = list(cfg.passes if cfg.passes is not None else DEFAULT_PASSES)
        src = onnx.ModelProto()
        src.CopyFrom(artifact.model)
        before = len(src.graph.node)
        try:
            out = onnxoptimizer.optimize(src, passes, fixed_point=cfg.fixed_point)
            if cfg.fold_constants:
                import onnxscript.optimizer

                out = onnxscript.optimizer.optimize(out)
            out = onnx.shape_inference.infer_shapes(out)
            onnx.checker.check_model(out)
        except Exception as e:
            raise mo.ExportError(f"onnx.optimize: onnxoptimizer failed with passes {passes}: "
                                 f"{e}. Drop the failing pass via passes=(...).") from e
        notes = [f"nodes {before} -> {len(out.graph.node)}"]
        meta: dict[str, Any] = {}
        if cfg.check_numerics:
            xs = check_inputs_for(artifact, ctx)
            errs = check_against("onnx.optimize", run_onnx(artifact.model, xs), out, xs,
                                 cfg.rtol, cfg.atol)
            notes.append(f"max abs error vs input graph {errs['max_abs_error']:.3g}")
        return artifact.evolve(step=self.step(notes=notes), model=out, metadata=meta)
