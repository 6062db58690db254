"""Shared helpers for the fused-kernel tests (tests/test_kernels_*.py).

A case is one layer, one direction on NumPy data; `run` puts it through the
engine with a backend ("numpy": the xp loop, the reference; "triton": the
kernels under TRITON_INTERPRET=1) and returns every output and gradient by name.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpurnn import engine

# Kernels vs the xp loop on the same data. Both compute in the compute dtype;
# they differ in the tanh formula and the summation order of the dot, so
# float64 agrees to a few ulps times T, float32 to ~100 ulps after T steps of BPTT.
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12),
       np.float32: dict(rtol=1e-5, atol=1e-5)}
# float16 data: the kernels keep every buffer in fp16 (the projection, saved activations and
# their gradients are rounded to 2^-11 relative when stored) and, with io_dtype="float16", hold W
# in fp16 and round h before each tl.dot; the xp loop computes fp16 data in fp32 and rounds only
# on return. Each pre-activation is then off by ~2^-11 * (|gx| + sum|w h|) ~ 5e-4 and the
# contractive recurrence does not amplify it; the weight gradients sum T*B products of rounded
# factors (atol is relative to the largest entry). 1e-2 leaves headroom while a wrong gate,
# mask or step is an O(1) error.
TOL_HALF = dict(rtol=1e-2, atol=1e-2)


def weight_shapes(cell, I, H, proj=0, O=None):
    """Shapes of cells.WEIGHT_NAMES[cell] (None for an absent weight)."""
    G = {"elman": 1, "lstm": 4, "gru": 3, "jordan": 1}[cell]
    if cell == "jordan":
        return {"w_ih": (H, I), "w_sh": (H, O), "b_h": (H,), "w_ho": (O, H), "b_o": (O,), "decay": (O,)}
    shapes = {"w_ih": (G * H, I), "w_hh": (G * H, proj or H), "b_ih": (G * H,), "b_hh": (G * H,)}
    if cell == "lstm":
        shapes["w_hr"] = (proj, H) if proj else None
    return shapes


def state_shapes(cell, B, H, proj=0, O=None):
    if cell == "lstm":
        return [(B, proj or H), (B, H)]
    return [(B, O if cell == "jordan" else H)]


def make_case(cell, T, B, H, dtype=np.float32, I=5, proj=0, O=None, seed=0):
    """Random data at torch's init scale (uniform +-1/sqrt(H): a contractive recurrence)."""
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(H)
    weights = {}
    for name, shape in weight_shapes(cell, I, H, proj, O).items():
        if shape is None:
            weights[name] = None
        elif name == "decay":
            weights[name] = rng.uniform(0, 1, shape).astype(dtype)
        else:
            weights[name] = rng.uniform(-bound, bound, shape).astype(dtype)
    states = state_shapes(cell, B, H, proj, O)
    out_size = O if cell == "jordan" else (proj or H)
    return dict(cell=cell,
                x=rng.standard_normal((T, B, I)).astype(dtype),
                state0=tuple(rng.standard_normal(s).astype(dtype) for s in states),
                weights=weights,
                dy=rng.standard_normal((T, B, out_size)).astype(dtype),
                dstate=tuple(rng.standard_normal(s).astype(dtype) for s in states))


def packed_sizes(T, B):
    """Non-increasing active rows per step: lengths spread from T down to 1 (a PackedSequence)."""
    lengths = [max(1, T - (T * i) // B) for i in range(B)]
    return [sum(1 for n in lengths if n > t) for t in range(T)]


def run(case, backend, batch_sizes=None, reverse=False, **opts):
    """Engine forward + backward; every output and gradient by name."""
    y, state, saved = engine.forward(case["cell"], case["x"], case["state0"], case["weights"],
                                     batch_sizes=batch_sizes, reverse=reverse, backend=backend, **opts)
    dx, dstate0, grads = engine.backward(saved, case["dy"], case["dstate"])
    got = {"y": y, "dx": dx}
    got.update({f"final{i}": s for i, s in enumerate(state)})
    got.update({f"dstate0_{i}": d for i, d in enumerate(dstate0)})
    got.update({f"d_{k}": v for k, v in grads.items() if v is not None})
    return got


def assert_all_close(got, ref, rtol, atol):
    """Elementwise rtol, and atol relative to the array's largest entry: gradients are sums over
    T*B rows, so an entry where those rows cancel carries the rounding of its largest terms."""
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key].dtype == ref[key].dtype, key
        r = ref[key].astype(np.float64)
        scale = max(1.0, float(np.abs(r).max(initial=0)))
        np.testing.assert_allclose(got[key].astype(np.float64), r, rtol=rtol, atol=atol * scale, err_msg=key)


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def with_io_dtype(monkeypatch, cell, io_dtype):
    """The engine's kernel calls get io_dtype (None: fp32 tl.dot; "float16": the fp16 tl.dot path),
    whatever the engine itself passes."""
    mod = importlib.import_module(f"gpurnn.kernels.{cell}")
    for name in ("forward", "backward"):
        def call(c, sizes, _real=getattr(mod, name), **_ignored):
            return _real(c, sizes, io_dtype=io_dtype)
        monkeypatch.setattr(mod, name, call)


@pytest.fixture
def launches(monkeypatch):
    """List of kernel names launched while the test runs (every launch goes through common.launch)."""
    from gpurnn.kernels import common

    names = []
    real = common.launch

    def counted(kernel, grid, *args, **kwargs):
        names.append(kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__)
        real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(common, "launch", counted)
    return names


@pytest.fixture
def launch_kwargs(monkeypatch):
    """{kernel name: the keyword arguments (constexprs, launch options) of its last launch}."""
    from gpurnn.kernels import common

    seen = {}
    real = common.launch

    def recorded(kernel, grid, *args, **kwargs):
        seen[kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__] = kwargs
        real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(common, "launch", recorded)
    return seen


@pytest.fixture
def nan_empty(monkeypatch):
    """np.empty returns NaN-filled float arrays, so an element a kernel should write but skips shows up."""
    real = np.empty

    def empty(shape, dtype=float, *args, **kwargs):
        a = real(shape, dtype, *args, **kwargs)
        if a.dtype.kind == "f":
            a.fill(np.nan)
        return a

    monkeypatch.setattr(np, "empty", empty)


@pytest.fixture
def forced_split_k(monkeypatch):
    """force(nk): the forward kernels split their dot's K in nk chunks (common.kdot) whatever
    common.split_k picks; returns the list of NK values the forward launches got."""
    from gpurnn.kernels import common

    seen = []
    real = common.launch

    def recorded(kernel, grid, *args, **kwargs):
        if "NK" in kwargs:
            seen.append(kwargs["NK"])
        real(kernel, grid, *args, **kwargs)

    def force(nk):
        monkeypatch.setattr(common, "split_k", lambda HP, elem_bytes, direction: nk if direction == "fwd" else 1)
        monkeypatch.setattr(common, "launch", recorded)
        return seen

    return force


@pytest.fixture
def split_hidden(monkeypatch):
    """Force hidden slices of 16 units: H > 16 runs the split arithmetic, stepwise under the interpreter."""
    monkeypatch.setenv("GPURNN_SLICE", "16")


def run_uninterpreted(code, tmp_path, **env_vars):
    """Run Python code in a subprocess without TRITON_INTERPRET (ptxas needs a real compile)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_vars)
    root = Path(__file__).resolve().parents[1]   # (the checkout's gpurnn, also where it is not installed)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "profiling"), str(root)])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
