"""modelopt's quantization plugin: static PTQ, QAT, dynamic INT8, FP16/BF16, sensitivity
analysis and accuracy-aware mixed precision (``quantize.*``, ``onnx.convert_fp16``)."""

from __future__ import annotations

__version__ = "0.1.0"
