"""Reduced precision: ``quantize.bf16`` / ``quantize.fp16`` for the torch runtime and
``onnx.convert_fp16`` for ONNX graphs.

The torch optimizers fold BatchNorm (so no low-precision statistics are needed), cast the
weights, optionally convert 4-D weights to channels_last (oneDNN's fast layout for bf16
convolutions on AVX512-BF16 / AMX CPUs), and set the artifact's ``props.compute_dtype`` so the
torch runner casts inputs to that dtype and outputs back to float32.

``onnx.convert_fp16`` rewrites float32 initializers, constants, casts and value types to
float16 with ONNX helpers only (no onnxconverter-common). With ``keep_io_types`` (default) the
graph keeps float32 inputs/outputs and converts at the boundary with Cast nodes. Ops that only
exist in float32 (``op_block_list``) run in float32 between Casts; Resize scales/roi stay
float32 as the spec requires.
"""

from __future__ import annotations

import copy
from typing import Any

import modelopt_core as mo

__all__ = ["HalfConfig", "BF16", "FP16", "OnnxFP16", "convert_fp16"]


@mo.config
class HalfConfig:
    """Options of ``quantize.bf16`` / ``quantize.fp16``."""

    channels_last: bool = mo.field(True, help="store 4-D weights channels_last (oneDNN)",
                                   search=mo.choice(True, False))
    fold_bn: bool = mo.field(True, help="fold BatchNorm into the preceding Conv/Linear first")


class _Half(mo.Optimizer):
    dtype = "bfloat16"
    accepts = ("torch",)
    Config = HalfConfig

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        from .prepare import _check_weights

        model = copy.deepcopy(artifact.model).eval()
        _check_weights(model)
        model, notes = self._convert(model)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return artifact.evolve(step=self.step(notes=notes), model=model, metadata={
            "quantization": self.dtype, "half_size_bytes": size},
            props={"compute_dtype": self.dtype})

    def rebuild(self, model: Any, example_inputs: tuple[Any, ...], metadata: Any,
                restore: Any = None) -> Any:
        """The same BatchNorm folding, cast and memory format (values from the weights, the
        rest from the step's config: no restore record is needed)."""
        return self._convert(model.eval())[0]

    def _convert(self, model: Any) -> tuple[Any, list[str]]:
        """Fold BN (when traceable), cast to the reduced dtype, optionally channels_last."""
        import torch
        from torch import fx

        from .graph import fold_bn

        cfg = self.config
        notes = []
        if cfg.fold_bn:
            try:
                gm = fx.symbolic_trace(model)
                n = fold_bn(gm)
                if n:
                    model = gm
                    notes.append(f"folded {n} BatchNorm layer(s)")
            except Exception as e:  # untraceable: keep BN (it runs in the reduced dtype)
                notes.append(f"BatchNorm not folded (torch.fx: {type(e).__name__})")
        model = model.to(getattr(torch, self.dtype))
        has_4d = any(p.dim() == 4 for p in model.parameters())
        if cfg.channels_last and has_4d:
            model = model.to(memory_format=torch.channels_last)
            notes.append("channels_last weights")
        notes.append(f"weights cast to {self.dtype}; the runner casts inputs to {self.dtype}")
        return model, notes


class BF16(_Half):
    """BFloat16 weights and compute on the torch runtime (AVX512-BF16/AMX CPUs, GPUs)."""

    name = "quantize.bf16"
    stage = "precision"
    dtype = "bfloat16"


class FP16(_Half):
    """Float16 weights and compute on the torch runtime (GPUs; slow on most CPUs)."""

    name = "quantize.fp16"
    stage = "precision"
    dtype = "float16"


@mo.config
class OnnxFP16Config:
    """Options of ``onnx.convert_fp16``."""

    keep_io_types: bool = mo.field(True, help="keep float32 graph inputs/outputs (Casts "
                                   "at the boundary)")
    op_block_list: tuple[str, ...] = mo.field(
        ("Range", "TopK", "NonMaxSuppression", "RoiAlign", "CumSum", "RandomNormal",
         "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"),
        help="op types kept in float32 (wrapped in Casts)")


class OnnxFP16(mo.Optimizer):
    """Convert an ONNX graph to float16 (optionally keeping float32 inputs/outputs)."""

    name = "onnx.convert_fp16"
    stage = "precision"
    accepts = ("onnx",)
    Config = OnnxFP16Config
    requires = ("onnx",)

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        model, n = convert_fp16(artifact.model, cfg.keep_io_types, cfg.op_block_list)
        note = (f"converted {n} float32 tensor(s) to float16; "
                f"{'float32' if cfg.keep_io_types else 'float16'} inputs/outputs")
        import attrs

        changes: dict[str, Any] = {}
        if not cfg.keep_io_types:  # the graph now takes and returns float16
            changes = {k: tuple(attrs.evolve(s, dtype="float16") if s.dtype == "float32" else s
                                for s in getattr(artifact, k)) for k in ("inputs", "outputs")}
        return artifact.evolve(step=self.step(notes=[note]), model=model,
                               metadata={"onnx_precision": "float16"}, **changes)


def convert_fp16(proto: Any, keep_io_types: bool = True,
                 block: tuple[str, ...] = ()) -> tuple[Any, int]:
    """A float16 copy of ONNX ``proto`` and the number of converted tensors."""
    import onnx
    from onnx import TensorProto

    m = copy.deepcopy(proto)
    g = m.graph
    count = _convert_initializers(g)
    count += _convert_nodes(g, block)
    for vi in g.value_info:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    _convert_io(g, keep_io_types)
    onnx.checker.check_model(m)
    return m, count


def _to_fp16(t: Any) -> Any:
    """A float16 copy of float32 TensorProto ``t`` (same name), clipped to float16's range."""
    import numpy as np
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t)
    return numpy_helper.from_array(np.clip(arr, -65504, 65504).astype(np.float16), t.name)


def _convert_initializers(g: Any) -> int:
    """Cast graph ``g``'s float32 initializers to float16 in place, except the scales/roi of
    Resize/Upsample (float32 by the spec); returns how many were converted."""
    from onnx import TensorProto

    keep32: set[str] = set()
    for node in g.node:
        if node.op_type in ("Resize", "Upsample"):
            keep32.update(node.input[1:])
    count = 0
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            init.CopyFrom(_to_fp16(init))
            count += 1
    return count


def _convert_nodes(g: Any, block: tuple[str, ...]) -> int:
    """Rewrite graph ``g``'s nodes in place: ops in ``block`` run in float32 between Casts,
    Casts to float32 cast to float16, float32 tensor attributes (Constant values) become
    float16; returns how many tensor attributes were converted."""
    import onnx
    from onnx import TensorProto, helper

    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    count = 0
    new_nodes = []
    for node in g.node:
        if node.op_type in block:  # run in float32 between casts
            for i, name in enumerate(node.input):
                if name:
                    c = f"{name}__to32_{node.name or id(node)}"
                    new_nodes.append(helper.make_node("Cast", [name], [c], to=F32))
                    node.input[i] = c
            outs = list(node.output)
            for i, name in enumerate(outs):
                node.output[i] = f"{name}__f32"
            new_nodes.append(node)
            for name in outs:
                new_nodes.append(helper.make_node("Cast", [f"{name}__f32"], [name], to=F16))
            continue
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == F32:
                    a.i = F16
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == F32:
                a.t.CopyFrom(_to_fp16(a.t))
                count += 1
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    return count


def _convert_io(g: Any, keep_io_types: bool) -> None:
    """Graph ``g``'s float32 inputs/outputs (initializers aside): with ``keep_io_types`` kept
    float32 with Casts at the boundary, otherwise retyped to float16."""
    from onnx import TensorProto, helper

    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    io_nodes_in, io_nodes_out = [], []
    for inp in g.input:
        if inp.type.tensor_type.elem_type != F32 or inp.name in {i.name for i in g.initializer}:
            continue
        if keep_io_types:
            casted = f"{inp.name}__fp16"
            _rename(g, inp.name, casted)
            io_nodes_in.append(helper.make_node("Cast", [inp.name], [casted], to=F16))
        else:
            inp.type.tensor_type.elem_type = F16
    for out in g.output:
        if out.type.tensor_type.elem_type != F32:
            continue
        if keep_io_types:
            inner = f"{out.name}__fp16"
            _rename(g, out.name, inner, outputs=True)
            io_nodes_out.append(helper.make_node("Cast", [inner], [out.name], to=F32))
        else:
            out.type.tensor_type.elem_type = F16
    nodes = io_nodes_in + list(g.node) + io_nodes_out
    del g.node[:]
    g.node.extend(nodes)


def _rename(g: Any, old: str, new: str, outputs: bool = False) -> None:
    """Point every node input (and, with ``outputs``, node output) named ``old`` at ``new``."""
    for node in g.node:
        fields = (node.input, node.output) if outputs else (node.input,)
        for names in fields:
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
