"""The compiled CPU step: the only place in gpurnn that knows about a C compiler.

    step.c     the LSTM's per-step pointwise work (forward and backward), in C
    build.py   builds step.c on first use, caches and loads it (library(), status(), describe())
    lstm.py    CompiledLSTMLoop, the float32 NumPy LSTM loop that calls it

Counterparts: gpurnn/cells/lstm.py (the LSTM's xp maths, the NumPy loop this replaces and
falls back to, and make(), which picks it) and kernels/lstm.py (the GPU kernels).
"""
from .build import describe, library, status  # noqa: F401
