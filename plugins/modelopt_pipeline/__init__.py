"""Built-in modelopt plugin: backend ``torch.pipeline`` (a torch model split into pipeline
stages, one process each, with torch.distributed.pipelining)."""
