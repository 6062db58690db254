"""Test-wide setup: Triton kernels run on the CPU through the interpreter.

TRITON_INTERPRET must be set before triton.jit decorates a kernel, so it is
set here, before any test module imports gpurnn.kernels.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
