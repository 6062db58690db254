"""Sequence forward and exact BPTT for one layer and one direction, on xp arrays.

    forward(cell, x, state0, weights, ...) -> (y, state_T, saved)
    backward(saved, dy, dstate_T)          -> (dx, dstate0, weight grads)

x: (T, B, I); state0: tuple of (B, ·) arrays, one per carried state of the cell;
weights: dict of arrays named as in `cells.WEIGHT_NAMES[cell]`, absent biases as None.
float16 data is computed and carried in float32 and cast back on return.

Steps 1 and 4 of the data flow (input projection, weight gradients) are GEMMs
over all T*B rows inside the cells; this module runs the time loop (step 2
forward, step 3 reverse) with packed-sequence masking and direction.
"""
import functools
from dataclasses import dataclass

import numpy as np

from . import cells
from .arrays import compute_dtype, get_xp, torch_matmul, xp_matmul
from .buffers import Allocations


@dataclass
class Saved:
    """What backward needs from forward: the cell with its buffers, and how it was run."""
    cell: object
    name: str         # the cell's name (gpurnn.cells)
    dtype: object
    sizes: list
    reverse: bool
    state_shapes: list
    fused: bool       # run by the Triton kernels (else the xp loop)
    io_dtype: str
    for_backward: bool
    backward_buffers: object = None   # the last backward's Allocations


@functools.lru_cache(maxsize=64)
def _padding(xp, sizes, B, device):
    """(T, B) bool: rows past their length at each step; on the current device (named in the key),
    made once per sizes (one host-to-device copy, not one zeroing launch per step)."""
    return xp.asarray(np.arange(B)[None, :] >= np.asarray(sizes)[:, None])


def _cast(a, dtype):
    return a if a is None or a.dtype == dtype else a.astype(dtype)


def _time_order(a, reverse):
    return a[::-1] if reverse else a


def _to_compute(xp, a, cdt, reverse):
    """Time-ordered, contiguous, compute-dtype copy or view of a (T, B, ·) array.

    A reversed array is always copied: ascontiguousarray keeps the negative stride of a
    length-1 axis, which torch.from_numpy (the kernels' zero-copy view) rejects.
    """
    if reverse:
        return a[::-1].astype(cdt, order="C", copy=True)
    return xp.ascontiguousarray(a, dtype=cdt)


def step_loop(c, sizes):
    """The forward time loop on xp arrays: c.step for every t; rows past their length hold their state."""
    B = c.x.shape[1]
    for t, n in enumerate(sizes):
        c.step(t, n)
        if n < B:
            for seq in c.seq:
                seq[t + 1, n:] = seq[t, n:]


def back_loop(c, sizes):
    """The BPTT loop on xp arrays, t = T-1 .. 0."""
    for t in range(len(sizes) - 1, -1, -1):
        c.back_step(t, sizes[t])


def forward(cell, x, state0, weights, *, batch_sizes=None, reverse=False, backend="numpy",
            io_dtype=None, gemm="xp", **opts):
    """Run the recurrence over x; returns (y (T, B, ·), final state tuple, saved).

    batch_sizes: active rows per step (non-increasing, as in a PackedSequence);
    rows past their length hold their state and output zeros.
    reverse: process t = T-1 .. 0 (the backward direction of a bidirectional layer).
    backend: "numpy" or "cupy" run the xp loop (the xp follows the arrays); "triton" the fused kernels
    (a projection, w_hr: the xp loop).
    io_dtype: the dtype the kernels hold weights in (default x's; "bfloat16" for bf16 data upcast
    to float32 by the caller, as NumPy and CuPy have no bfloat16).
    gemm: "xp" (NumPy's or CuPy's matmul), "torch" (torch's, on zero-copy views of NumPy
    arrays: callers inside torch keep one BLAS thread pool in the process) or "auto" (NumPy
    data: whichever of the two times faster for the layer's shape on this machine,
    gpurnn/cpu/gemm.py).
    opts: the cell's own options, passed to its module's make() (gpurnn.cells): nonlinearity,
    output_activation, teacher; for_backward=False: no backward will follow, so a loop may skip
    what only backward needs.
    """
    return forward_directions(cell, x, [(state0, weights, reverse)], batch_sizes=batch_sizes,
                              backend=backend, io_dtype=io_dtype, gemm=gemm, **opts)[0]


def forward_directions(cell, x, directions, *, batch_sizes=None, backend="numpy", io_dtype=None,
                       gemm="xp", **opts):
    """`forward` for each (state0, weights, reverse) of `directions` over the same x, as a list.
    The fused kernels run a bidirectional layer's two directions in one launch."""
    started = [_start_forward(cell, x, state0, weights, reverse, batch_sizes, backend, gemm, opts)
               for state0, weights, reverse in directions]
    started_cells = [c for c, _ in started]
    io_dtype = io_dtype or x.dtype.name
    if started[0][1].fused:
        cells.kernels(cell).forward(started_cells, [run.sizes for _, run in started], io_dtype=io_dtype)
    else:
        for c, run in started:
            step_loop(c, run.sizes)
    return [_finish_forward(cell, c, run, io_dtype) for c, run in started]


@dataclass
class _Run:
    """One direction's settings between _start_forward and _finish_forward."""
    dtype: object     # the input's (float16 data is computed in float32)
    sizes: list
    batch_sizes: object
    reverse: bool
    fused: bool
    alloc: Allocations
    state_shapes: list
    for_backward: bool


def _matmul(gemm, x, w):
    """The GEMM function for a gemm option (see forward), for a layer on x with weights w."""
    if gemm not in ("xp", "torch", "auto"):
        raise ValueError(f"gemm: expected 'xp', 'torch' or 'auto', got {gemm!r}")
    if gemm == "torch":
        return torch_matmul
    if gemm == "auto" and isinstance(x, np.ndarray):
        from .cpu import gemm as route   # gpurnn.cpu builds on the engine's arrays, not the other way
        return route.matmul_for(x, w)
    return xp_matmul


def _start_forward(cell, x, state0, weights, reverse, batch_sizes, backend, gemm, opts):
    xp = get_xp(x)
    cdt = compute_dtype(x.dtype)
    T, B = x.shape[:2]
    w = {k: _cast(v, cdt) for k, v in weights.items()}
    if opts.get("teacher") is not None:
        opts = dict(opts, teacher=_to_compute(xp, opts["teacher"], cdt, reverse))
    sizes = [B] * T if batch_sizes is None else [int(n) for n in batch_sizes]
    sizes = _time_order(sizes, reverse)
    fused = backend == "triton" and w.get("w_hr") is None   # a projection (w_hr): the xp loop
    c = cells.get(cell).make(xp, w, _matmul(gemm, x, w), opts, fused)
    # With packed rows, buffers start zeroed: rows past their length are never written by a
    # step, and the weight GEMMs multiply them by zero gradients (0 * garbage may be NaN).
    alloc = Allocations(xp, zero=batch_sizes is not None)
    c.begin_forward(_to_compute(xp, x, cdt, reverse), tuple(s.astype(cdt, copy=False) for s in state0), alloc)
    return c, _Run(x.dtype, sizes, batch_sizes, reverse, fused, alloc, [s.shape for s in state0],
                   opts.get("for_backward", True))


def _finish_forward(name, c, run, io_dtype):
    dtype = run.dtype
    y = c.outputs()
    if run.batch_sizes is not None:   # rows past their length output zeros
        mask = _padding(c.xp, tuple(run.sizes), y.shape[1], str(getattr(y, "device", "cpu")))
        y = c.xp.where(mask[:, :, None], 0, y).astype(y.dtype, copy=False)
    y = _time_order(y, run.reverse)
    saved = Saved(c, name, dtype, run.sizes if run.batch_sizes is not None else None, run.reverse, run.state_shapes,
                  run.fused, io_dtype, run.for_backward)
    run.alloc.bind(c)   # the buffers go back to the pool with the cell; only copies are returned
    return y.astype(dtype), tuple(s.astype(dtype) for s in c.final()), saved


def backward(saved, dy, dstate):
    """Reverse-time BPTT; dy and entries of dstate may be None (zero gradient).

    Returns (dx (T, B, I), dstate0 tuple, dict of weight grads; None for absent biases).
    """
    return backward_directions([(saved, dy, dstate)])[0]


def backward_directions(directions):
    """`backward` for each (saved, dy, dstate) of `directions` (from one forward_directions), as a list."""
    started = [_start_backward(*d) for d in directions]
    first = directions[0][0]
    if first.fused:
        cells.kernels(first.name).backward([c for c, _ in started], [sizes for _, sizes in started],
                                           io_dtype=first.io_dtype)
    else:
        for c, sizes in started:
            back_loop(c, sizes)
    return [_finish_backward(saved) for saved, _, _ in directions]


def _start_backward(saved, dy, dstate):
    c, reverse, sizes = saved.cell, saved.reverse, saved.sizes
    if not saved.for_backward:
        raise RuntimeError("backward: this forward ran with for_backward=False and kept no gradient data")
    xp = c.xp
    cdt = c.x.dtype
    T, B = c.x.shape[:2]
    y_shape = c.outputs().shape
    dy = xp.zeros(y_shape, cdt) if dy is None else _to_compute(xp, dy, cdt, reverse)
    dstate = tuple(xp.zeros(shape, cdt) if d is None else d.astype(cdt, order="C", copy=True)   # carried in place
                   for d, shape in zip(dstate, saved.state_shapes))
    if saved.backward_buffers is not None:   # a second backward (retain_graph) replaces them
        saved.backward_buffers.release()
    alloc = Allocations(xp, zero=sizes is not None)   # zero gradient for rows past their length
    sizes = [B] * T if sizes is None else sizes
    if c.spent:   # see cells/base.py's Cell.spent: each further backward costs a forward loop more
        c.rewind()
        step_loop(c, sizes)
    c.begin_backward(dy, dstate, alloc)
    alloc.bind(c)
    saved.backward_buffers = alloc
    return c, sizes


def _finish_backward(saved):
    dx, dstate0, grads = saved.cell.finish_backward()
    dx = _time_order(dx, saved.reverse).astype(saved.dtype)
    grads = {k: _cast(v, saved.dtype) for k, v in grads.items()}
    return dx, tuple(d.astype(saved.dtype) for d in dstate0), grads
