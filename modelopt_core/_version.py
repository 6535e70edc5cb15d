"""The version of modelopt-core (one place; ``modelopt_core.__version__`` re-exports it)."""

__version__ = "0.1.0"
