"""Built-in modelopt plugin: ONNX Runtime backend."""
