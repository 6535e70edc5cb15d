"""Built-in modelopt plugin: TensorRT engine export and runtime (NVIDIA GPUs)."""
