"""Built-in modelopt plugin: profilers (latency, throughput, memory, size, accuracy)."""
