"""Models and data defined in the project for the demo, tests and benchmarks (no hub downloads)."""
