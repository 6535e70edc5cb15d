"""LiteRT (TensorFlow Lite) target: the ``tflite`` format, the ``tflite`` exporter (torch ->
.tflite with litert-torch; FP32, FP16 weights, full-integer INT8 calibrated on the session's
data, dynamic-range INT8) and the ``tflite`` backend (ai-edge-litert's Interpreter, XNNPACK).

Install with ``pip install 'modelopt-core[tflite]'``. Nothing heavy is imported until a
component is used.
"""
