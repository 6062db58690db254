"""Fused Triton kernels (installed as gpurnn.kernels), one module per cell."""
