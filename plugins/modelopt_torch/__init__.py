"""Built-in modelopt plugin: PyTorch runtimes (eager and torch.compile)."""
