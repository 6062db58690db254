"""Sequence forward and exact BPTT for one layer and one direction, on xp arrays.

    forward(cell, x, state0, weights, ...) -> (y, state_T, saved)
    backward(saved, dy, dstate_T)          -> (dx, dstate0, weight grads)

x: (T, B, I); state0: tuple of (B, ·) arrays, one per carried state of the cell;
weights: dict of arrays named as in `cells.WEIGHT_NAMES[cell]`, absent biases as None.
The fused kernels keep float16/bfloat16 data in its dtype in memory (x, the projection, outputs
and everything saved for backward) and carry and accumulate in float32 on chip; the xp loop
computes and carries float16 in float32 and casts back on return. The fused path also takes
torch tensors (arrays.TorchArrays): the torch front end's way to keep bfloat16 and GEMM in torch.

Steps 1 and 4 of the data flow (input projection, weight gradients) are GEMMs
over all T*B rows inside the cells; this module runs the time loop (step 2
forward, step 3 reverse) with packed-sequence masking and direction.
"""
import contextlib
import functools
import threading
from dataclasses import dataclass, field

import numpy as np

from . import cells
from .arrays import astype, compute_dtype, dtype_name, get_xp, is_tensor, torch_matmul, xp_matmul
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
    # one backward at a time: each rewinds and reuses the cell (threads may run backward through one graph)
    lock: object = field(default_factory=threading.Lock)


@functools.lru_cache(maxsize=64)
def _padding(xp, sizes, B, device):
    """(T, B) bool: rows past their length at each step; on the current device (named in the key),
    made once per sizes (one host-to-device copy, not one zeroing launch per step)."""
    return xp.asarray(np.arange(B)[None, :] >= np.asarray(sizes)[:, None])


def _cast(a, dtype):
    return a if a is None else astype(a, dtype, copy=False)


def fused(backend, weights):
    """Whether the Triton kernels run a layer: a projection (w_hr) runs the xp loop."""
    return backend == "triton" and weights.get("w_hr") is None


def step_loop(c, sizes):
    """The forward time loop on xp arrays: c.step for every t; rows past their length hold their state."""
    B = c.x.shape[1]
    with np.errstate(over="ignore"):   # silent, as torch: e^-a of a sigmoid far below 0 is inf (sigmoid 0, rightly)
        for t, n in enumerate(sizes):
            c.step(t, n)
            if n < B:
                for seq in c.seq:
                    seq[t + 1, n:] = seq[t, n:]


def back_loop(c, sizes):
    """The BPTT loop on xp arrays, t = T-1 .. 0."""
    for t in range(len(sizes) - 1, -1, -1):
        c.back_step(t, sizes[t])


def forward(cell, x, state0, weights, *, batch_sizes=None, reverse=False, backend="numpy", gemm="xp", **opts):
    """Run the recurrence over x; returns (y (T, B, ·), final state tuple, saved).

    batch_sizes: active rows per step (non-increasing, as in a PackedSequence);
    rows past their length hold their state and output zeros.
    reverse: process t = T-1 .. 0 (the backward direction of a bidirectional layer).
    backend: "numpy" or "cupy" run the xp loop (the xp follows the arrays); "triton" the fused kernels
    (a projection, w_hr: the xp loop).
    gemm: "xp" (NumPy's or CuPy's matmul), "torch" (torch's, on zero-copy views of NumPy
    arrays: callers inside torch keep one BLAS thread pool in the process) or "auto" (NumPy
    data: whichever of the two times faster for the layer's shape on this machine,
    gpurnn/cpu/gemm.py).
    opts: the cell's own options, passed to its module's make() (gpurnn.cells): nonlinearity,
    output_activation, teacher; for_backward=False: no backward will follow, so a loop may skip
    what only backward needs.
    """
    return forward_directions(cell, x, [(state0, weights, reverse)], batch_sizes=batch_sizes,
                              backend=backend, gemm=gemm, **opts)[0]


def forward_directions(cell, x, directions, *, batch_sizes=None, backend="numpy", gemm="xp", **opts):
    """`forward` for each (state0, weights, reverse) of `directions` over the same x, as a list.
    The fused kernels run a bidirectional layer's two directions in one launch."""
    started = [_start_forward(cell, x, state0, weights, reverse, batch_sizes, backend, gemm, opts)
               for state0, weights, reverse in directions]
    started_cells = [c for c, _ in started]
    io_dtype = dtype_name(x.dtype)   # the kernels hold W and round h for the dot in it
    if started[0][1].fused:
        cells.kernels(cell).forward(started_cells, [run.sizes for _, run in started], io_dtype=io_dtype)
    else:
        with _one_blas_thread([c.mm for c in started_cells]):
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


def _matmul(gemm, x, w, feature_major, for_backward):
    """The GEMM function for a gemm option (see forward), for a layer on x with weights w whose cell keeps its
    steps feature-major (W @ h^T) or in rows (h @ W^T), with or without a backward to follow."""
    if gemm not in ("xp", "torch", "auto"):
        raise ValueError(f"gemm: expected 'xp', 'torch' or 'auto', got {gemm!r}")
    if gemm == "torch" and not is_tensor(x):
        return torch_matmul
    if gemm == "auto" and isinstance(x, np.ndarray):
        from .cpu import gemm as route   # gpurnn.cpu builds on the engine's arrays, not the other way
        return route.matmul_for(x, w, feature_major, for_backward)
    return xp_matmul


def _start_forward(cell, x, state0, weights, reverse, batch_sizes, backend, gemm, opts):
    xp = get_xp(x)
    run_fused = fused(backend, weights)
    if is_tensor(x) and not run_fused:
        raise TypeError("the xp loop runs on NumPy or CuPy arrays, got torch tensors (arrays.tensor_to_xp)")
    cdt = compute_dtype(x.dtype, run_fused)
    T, B = x.shape[:2]
    w = {k: _cast(v, cdt) for k, v in weights.items()}
    if opts.get("teacher") is not None:
        opts = dict(opts, teacher=astype(opts["teacher"], cdt, copy=False, reverse=reverse))
    sizes = [B] * T if batch_sizes is None else [int(n) for n in batch_sizes]
    sizes = sizes[::-1] if reverse else sizes
    c = cells.get(cell).make(xp, w, opts, run_fused)
    for_backward = opts.get("for_backward", True)
    c.mm = _matmul(gemm, x, w, c.feature_major, for_backward)   # (the GEMMs' layout is the cell's)
    # With packed rows, buffers start zeroed: rows past their length are never written by a
    # step, and the weight GEMMs multiply them by zero gradients (0 * garbage may be NaN).
    alloc = Allocations(xp, zero=batch_sizes is not None)
    c.begin_forward(astype(x, cdt, copy=False, reverse=reverse), tuple(astype(s, cdt, copy=False) for s in state0), alloc)
    return c, _Run(x.dtype, sizes, batch_sizes, reverse, run_fused, alloc, [s.shape for s in state0], for_backward)


def _finish_forward(name, c, run, io_dtype):
    dtype = run.dtype
    y = c.outputs()
    if run.batch_sizes is not None:   # rows past their length output zeros
        mask = _padding(c.xp, tuple(run.sizes), y.shape[1], str(getattr(y, "device", "cpu")))
        y = c.xp.where(mask[:, :, None], 0, y)
    saved = Saved(c, name, dtype, run.sizes if run.batch_sizes is not None else None, run.reverse, run.state_shapes,
                  run.fused, io_dtype, run.for_backward)
    run.alloc.give_back(c.end_forward())
    run.alloc.bind(c)   # the buffers go back to the pool with the cell; only copies are returned
    # a copy (y from `where` is one already)
    return astype(y, dtype, copy=run.batch_sizes is None, reverse=run.reverse), tuple(astype(s, dtype) for s in c.final()), saved


def backward(saved, dy, dstate):
    """Reverse-time BPTT; dy and entries of dstate may be None (zero gradient).

    Returns (dx (T, B, I), dstate0 tuple, dict of weight grads; None for absent biases).
    """
    return backward_directions([(saved, dy, dstate)])[0]


def backward_directions(directions, need_dx=True, need_weights=True):
    """`backward` for each (saved, dy, dstate) of `directions` (from one forward_directions), as a list;
    need_dx=False: dx is None (its GEMM skipped); need_weights=False: no weight gradients (an empty dict)."""
    with contextlib.ExitStack() as held:
        for saved, _, _ in directions:   # always in this order: no deadlock between two such backwards
            held.enter_context(saved.lock)
            saved.cell.need_dx, saved.cell.need_weights = need_dx, need_weights
        with _one_blas_thread([saved.cell.mm for saved, _, _ in directions]):
            return _backward_directions(directions)


def _one_blas_thread(matmuls):
    """For a layer whose GEMMs take NumPy's route under the torch front end (cpu/gemm.py): OpenBLAS on the calling
    thread alone for the whole loop, one switch, not one per GEMM (about 1.3 us each on the Xeon)."""
    if all(m in (xp_matmul, torch_matmul) for m in matmuls):
        return contextlib.nullcontext()
    from .cpu import gemm as route
    return route.one_thread() if route.one_thread_matmul in matmuls else contextlib.nullcontext()


def _backward_directions(directions):
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
    dy = xp.zeros(y_shape, cdt) if dy is None else astype(dy, cdt, copy=False, reverse=reverse)
    dstate = tuple(xp.zeros(shape, cdt) if d is None else astype(d, cdt)   # a copy: carried in place
                   for d, shape in zip(dstate, saved.state_shapes))
    if saved.backward_buffers is not None:   # a second backward (retain_graph) replaces them
        saved.backward_buffers.release()
    alloc = Allocations(xp, zero=sizes is not None)   # zero gradient for rows past their length
    if sizes is not None:
        c.padding = _padding(xp, tuple(sizes), B, str(getattr(c.x, "device", "cpu")))
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
    dx = None if dx is None else astype(dx, saved.dtype, reverse=saved.reverse)
    grads = {k: _cast(v, saved.dtype) for k, v in grads.items()}
    return dx, tuple(astype(d, saved.dtype) for d in dstate0), grads
