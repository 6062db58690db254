"""The compiled CPU step: the only place in gpurnn that knows about a C compiler.

    step.c     the LSTM's and the GRU's per-step pointwise work (forward and backward), in C
    build.py   builds step.c on first use, caches and loads it (library(), status(), describe())
    lstm.py    CompiledLSTMLoop, the float32 NumPy LSTM loop that calls it
    gru.py     CompiledGRULoop, the same for the GRU

Also here, the CPU's timed routes (timed.py): gemm.py (an engine layer's GEMMs through torch, NumPy's BLAS or
onednn.py) and layer.py (a layer through the engine or torch's fused op).

Counterparts: gpurnn/cells/lstm.py and gru.py (the cells' xp maths, the NumPy loops these replace and
fall back to, and make(), which picks them) and kernels/ (the GPU kernels).
"""
from .build import describe, library, status  # noqa: F401
