"""Built-in modelopt plugin: structural compression.

Pruning (unstructured, global, structured via Torch-Pruning, network slimming, iterative),
k-means weight sharing, SVD low-rank factorization and depthwise-separable replacement.
Heavy imports (torch, torch_pruning) happen inside the functions that need them; the
``nn.Module`` classes live in :mod:`modelopt_prune.layers`, imported on use.
"""
