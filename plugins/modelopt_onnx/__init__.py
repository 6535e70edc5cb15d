"""Built-in modelopt plugin: ONNX export and ONNX-level optimizers."""
