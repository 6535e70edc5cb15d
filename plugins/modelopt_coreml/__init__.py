"""Core ML target: the ``coreml`` format (an ``.mlpackage`` folder), the ``coreml`` exporter
(torch -> ML Program with coremltools, from ``torch.export``; FP16/FP32 compute precision,
optional INT8 or palettized weights) and the ``coreml`` backend (prediction: macOS only).

Install with ``pip install 'modelopt-core[coreml]'``. On Linux the exporter and the format
work (a saved package is validated: spec, MIL program, weights); prediction needs macOS.
"""
