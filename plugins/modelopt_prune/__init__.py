"""Built-in modelopt plugin: structural compression.

Pruning (unstructured, global, structured via Torch-Pruning, network slimming, iterative),
k-means weight sharing, SVD low-rank factorization and depthwise-separable replacement.
Heavy imports (torch_pruning, sklearn) happen inside the functions that need them.
"""
