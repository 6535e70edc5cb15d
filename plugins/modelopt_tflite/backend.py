"""Backend ``tflite``: runs ``tflite`` artifacts with ai-edge-litert's ``Interpreter`` (the
LiteRT successor of ``tf.lite.Interpreter``; XNNPACK is its default CPU delegate).

Torch tensors in, torch tensors out, in the artifact's input/output order (the flatbuffer's
``serving_default`` signature: ``args_<i>`` / ``output_<i>``). Quantized (INT8) model inputs
and outputs are quantized / dequantized at the boundary with the tensors' own scale and zero
point, so a full-integer model is called like the float one. A model with a symbolic batch dim
is resized to each call's batch; a fixed-batch model (what litert-torch 0.10 produces for most
models) runs any other batch as chunks of its own batch, the last one padded, unless
``split_batch=False``, where such a call raises :class:`~modelopt_core.InputSpecError`.

A LiteRT ``Interpreter`` is not thread-safe (its tensors are the call's state), so a runner
shared between threads keeps a pool of interpreters of the one flatbuffer: each call takes an
idle one (a new one when all are busy) and gives it back.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Sequence
from typing import Any

import modelopt_core as mo


@mo.config
class TfliteBackendConfig:
    """Options of the tflite backend."""

    num_threads: int | None = mo.field(
        None, validator=mo.positive,
        help="interpreter (and XNNPACK) threads (default: the CPUs this process may use)")
    xnnpack: bool = mo.field(True, help="use the XNNPACK delegate (LiteRT's default CPU "
                             "delegate); off: the reference builtin kernels only")
    split_batch: bool = mo.field(
        True, help="run a batch other than a fixed-batch model's own as chunks of its batch "
                   "(the last one padded); off: such inputs raise InputSpecError")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _order(details: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Signature tensors in positional order: ``args_2`` before ``args_10``."""
    def key(name: str) -> tuple[int, str]:
        m = re.search(r"(\d+)$", name)
        return (int(m.group(1)) if m else -1, name)

    return [dict(details[n], sig_name=n) for n in sorted(details, key=key)]


class TfliteProgram:
    """One flatbuffer in an ``ai_edge_litert`` Interpreter, run on NumPy arrays.

    ``run(arrays)`` takes float (or integer) arrays in signature order and returns float
    outputs: quantized I/O is converted, a dynamic batch resized, a fixed batch chunked.
    Not thread-safe (one Interpreter)."""

    def __init__(self, model: bytes, *, num_threads: int | None = None, xnnpack: bool = True,
                 split_batch: bool = True, where: str = "tflite") -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.where = where
        self.split_batch = split_batch
        self._args = (model, num_threads, xnnpack)
        kwargs: dict[str, Any] = {}
        if not xnnpack:
            kwargs["experimental_op_resolver_type"] = (
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            self.interpreter = Interpreter(model_content=bytes(model),
                                           num_threads=num_threads or _cpus(), **kwargs)
        except Exception as e:  # ValueError / RuntimeError from the C++ side
            raise mo.FormatError(f"{where}: the LiteRT interpreter cannot load the model: "
                                 f"{e}") from e
        self.interpreter.allocate_tensors()
        sigs = self.interpreter.get_signature_list()
        if sigs:
            key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
            runner = self.interpreter.get_signature_runner(key)
            self.inputs = _order(runner.get_input_details())
            self.outputs = _order(runner.get_output_details())
            del runner
        else:  # a flatbuffer without signatures: the interpreter's own order
            self.inputs = self.interpreter.get_input_details()
            self.outputs = self.interpreter.get_output_details()
        self._shapes = [tuple(int(d) for d in t["shape"]) for t in self.inputs]

    @property
    def fixed_batch(self) -> int | None:
        """The batch of a model whose first input dim is fixed (None when symbolic)."""
        if not self.inputs or len(self.inputs[0]["shape_signature"]) == 0:
            return None
        d = int(self.inputs[0]["shape_signature"][0])
        return None if d < 0 else d

    def run(self, arrays: Sequence[Any]) -> list[Any]:
        """Outputs (float32 NumPy arrays, integer outputs as their own dtype) for ``arrays``."""

        if len(arrays) != len(self.inputs):
            raise mo.InputSpecError(f"{self.where}: the model takes {len(self.inputs)} "
                                    f"input(s), got {len(arrays)}.")
        shapes = [tuple(a.shape) for a in arrays]
        dims = [t["shape_signature"] for t in self.inputs]
        if all(len(s) == len(d) and all(x < 0 or x == y for x, y in zip(d, s))
               for s, d in zip(shapes, dims)):
            return self._invoke(arrays, shapes)
        n = shapes[0][0] if shapes[0] else None
        fixed = self.fixed_batch
        if (fixed is not None and n is not None
                and all(len(s) == len(d) and s[0] == n and
                        all(x < 0 or x == y for x, y in zip(d[1:], s[1:]))
                        for s, d in zip(shapes, dims))
                and all(len(t["shape_signature"]) and int(t["shape_signature"][0]) == fixed
                        for t in self.outputs)):
            if not self.split_batch:
                raise mo.InputSpecError(
                    f"{self.where}: the model was converted with a fixed batch of {fixed} and "
                    f"got a batch of {n}; pass {fixed} rows, or load the backend with "
                    "split_batch=True to run other batches in chunks.")
            return self._chunked(arrays, n, fixed)
        want = [[int(x) if x >= 0 else "?" for x in d] for d in dims]
        raise mo.InputSpecError(f"{self.where}: input shapes {[list(s) for s in shapes]} do not "
                                f"fit the model's {want} ('?' is free).")

    def _chunked(self, arrays: Sequence[Any], n: int, b: int) -> list[Any]:
        import numpy as np

        parts: list[list[Any]] = []
        for start in range(0, n, b):
            chunk = [a[start:start + b] for a in arrays]
            rows = chunk[0].shape[0]
            if rows < b:  # pad with copies of the last row; their outputs are dropped
                chunk = [np.concatenate([c, np.repeat(c[-1:], b - rows, axis=0)]) for c in chunk]
            outs = self._invoke(chunk, [tuple(c.shape) for c in chunk])
            parts.append([o[:rows] for o in outs])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.outputs))]

    def _invoke(self, arrays: Sequence[Any], shapes: list[tuple[int, ...]]) -> list[Any]:
        import numpy as np

        it = self.interpreter
        if shapes != self._shapes:  # only models with symbolic dims get here with new shapes
            try:
                for t, s in zip(self.inputs, shapes):
                    it.resize_tensor_input(t["index"], list(s), strict=True)
                it.allocate_tensors()
            except Exception as e:
                raise mo.InputSpecError(f"{self.where}: the model cannot be resized to input "
                                        f"shapes {[list(s) for s in shapes]}: {e}") from e
            self._shapes = shapes
        for t, a in zip(self.inputs, arrays):
            it.set_tensor(t["index"], _to_model(np.asarray(a), t))
        it.invoke()
        return [_from_model(it.get_tensor(t["index"]), t) for t in self.outputs]

    def clone(self) -> TfliteProgram:
        """Another program (its own Interpreter) of the same flatbuffer and options."""
        model, num_threads, xnnpack = self._args
        return TfliteProgram(model, num_threads=num_threads, xnnpack=xnnpack,
                             split_batch=self.split_batch, where=self.where)

    def close(self) -> None:
        self.interpreter = None


def _qparams(t: dict[str, Any]) -> tuple[Any, Any] | None:
    q = t.get("quantization_parameters") or {}
    scales, zps = q.get("scales"), q.get("zero_points")
    if scales is None or len(scales) == 0:
        return None
    return scales, zps


def _to_model(a: Any, t: dict[str, Any]) -> Any:
    """``a`` in the dtype of model input ``t`` (quantized with its scale/zero point)."""
    import numpy as np

    dtype = np.dtype(t["dtype"])
    q = _qparams(t)
    if q is not None and np.issubdtype(dtype, np.integer) and np.issubdtype(a.dtype,
                                                                            np.floating):
        info = np.iinfo(dtype)
        scale, zp = q[0].astype(np.float32), q[1].astype(np.float32)
        return np.clip(np.round(a / scale) + zp, info.min, info.max).astype(dtype)
    return np.ascontiguousarray(a, dtype=dtype)


def _from_model(a: Any, t: dict[str, Any]) -> Any:
    """Model output ``a`` as float32 when it is quantized or floating."""
    import numpy as np

    q = _qparams(t)
    if q is not None and np.issubdtype(a.dtype, np.integer):
        return ((a.astype(np.float32) - q[1].astype(np.float32)) * q[0].astype(np.float32))
    if np.issubdtype(a.dtype, np.floating) and a.dtype != np.float32:
        return a.astype(np.float32)
    return a


class TfliteRunner(mo.Runner):
    """A :class:`TfliteProgram` behind the Runner interface; safe to share between threads
    (a pool of programs, one Interpreter per concurrent call)."""

    thread_safe = True

    def __init__(self, artifact: mo.ModelArtifact, program: TfliteProgram) -> None:
        super().__init__(artifact, "cpu")
        self.program = program
        #: idle programs (deque pops/appends are atomic); a busy pool grows by a clone
        self._idle: deque[TfliteProgram] = deque([program])

    def _run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        import torch

        arrays = [x.detach().cpu().float().numpy() if x.is_floating_point()
                  else x.detach().cpu().numpy() for x in inputs]
        try:
            program = self._idle.pop()
        except IndexError:  # every interpreter is busy in another thread
            program = self.program.clone()
        try:
            outs = program.run(arrays)
        finally:
            self._idle.append(program)
        specs = self.artifact.outputs
        res = []
        for i, o in enumerate(outs):
            t = torch.from_numpy(o)
            if i < len(specs) and not t.is_floating_point():  # int32 (no x64) -> int64 back
                t = t.to(getattr(torch, specs[i].dtype, t.dtype))
            res.append(t)
        return res

    def _release(self) -> None:
        for program in self._idle:
            program.close()
        self._idle.clear()
        self.program.close()
        self.program = None


class TfliteBackend(mo.Backend):
    """LiteRT / TensorFlow Lite inference (ai-edge-litert Interpreter, XNNPACK, threads)."""

    name = "tflite"
    accepts = ("tflite",)
    Config = TfliteBackendConfig
    thread_option = "num_threads"
    reference_for = ("tflite",)
    requires = ("ai_edge_litert",)
    install_hint = "pip install 'modelopt-core[tflite]' (ai-edge-litert)"

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        cfg = self.config
        program = TfliteProgram(artifact.model, num_threads=cfg.num_threads,
                                xnnpack=cfg.xnnpack, split_batch=cfg.split_batch,
                                where=f"tflite runner for {artifact.name!r}")
        if artifact.inputs and len(artifact.inputs) != len(program.inputs):
            raise mo.FormatError(f"tflite: {artifact.name!r} declares {len(artifact.inputs)} "
                                 f"input(s) but its flatbuffer takes {len(program.inputs)}.")
        return TfliteRunner(artifact, program)
