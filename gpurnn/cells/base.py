"""What every cell shares: the cell protocol, the GEMM helpers and the activations.

One module per cell holds everything about that cell on xp (NumPy or CuPy) arrays:
elman.py, jordan.py, lstm.py, gru.py; their GPU counterparts are kernels/<cell>.py, and
the LSTM's and the GRU's compiled CPU steps are gpurnn/cpu/. gpurnn/cells/__init__.py maps a cell name
to its module; each module's make(...) picks the variant that runs a call.

A cell owns the buffers of one layer and one direction for one sequence.
The engine (engine.py) calls, in processing order:

    begin_forward(x, state0, alloc); step(t, n) for t in 0..T-1; outputs(); final()
    begin_backward(dy, dstate, alloc); back_step(t, n) for t in T-1..0; finish_backward()

or, for the fused kernels, the kernel launchers instead of step/back_step. The LSTM
and GRU have two layouts: row-major buffers for the kernels (no step rule), and
feature-major xp loops (FeatureMajorCell below); the float32 NumPy LSTM runs
gpurnn/cpu/lstm.py's compiled loop.

`alloc(shape, dtype)` makes the (T, ...) buffers (buffers.Allocations: reused NumPy
memory), zero-filled when rows are masked.

`n` is the number of active batch rows at step t (packed sequences: rows are
sorted by length, so the active rows are always a prefix). A step touches only
rows [:n]; the engine holds the state of rows [n:] (forward) and the carried
gradient of those rows passes through untouched (backward).

Shapes: x (T, B, I); gate pre-activations (T, B, G*H) with torch's gate order.
Everything here runs in the compute dtype (arrays.compute_dtype): the xp loops in float32
for float16 data; the kernels' buffers in the data's dtype, float16 and bfloat16 included,
on NumPy or CuPy arrays or torch tensors (arrays.TorchArrays).
"""
import functools

import numpy as np

from ..arrays import astype, sum_rows, transposed_copy

NONLINEARITIES = ("tanh", "relu")
OUTPUT_ACTIVATIONS = ("identity", "tanh", "sigmoid", "softmax")


def gemm_weight(mm, xp, w, rows, contiguous=False):
    """w as the GEMM function mm takes it where it uses w again and again (the steps', the input projection's;
    rows: how many the other side has): packed once for the layer call where mm packs weights (cpu/onednn.py),
    else w itself (a C-contiguous copy if asked)."""
    pack = getattr(mm, "pack", None)
    if pack is not None:
        return pack(w, rows)
    return xp.ascontiguousarray(w) if contiguous else w


class Cell:
    """What every cell shares: the array module, the weights and the GEMM routine.

    matmul(a, b, out=None, add=False) is arrays.xp_matmul, or torch's on NumPy views when the caller
    runs under torch (one BLAS thread pool per process; see arrays.torch_matmul).
    """

    # True once a backward has overwritten data of its forward (the LSTM loops): before
    # another backward (retain_graph) the engine calls rewind() and runs the forward loop again.
    spent = False

    def __init__(self, xp, w):
        self.xp, self.w = xp, w

    def end_forward(self):
        """The buffers only the forward loop read, dropped by the cell once it has run: they go back to the pool
        then, not with the tape (engine._finish_forward)."""
        return ()

    mm = None   # the GEMM function, in the layout of this cell's GEMMs: the engine sets it after make()

    # (T, B) bool, rows past their length at each step, for the backward of a packed input (the engine sets it)
    padding = None
    need_dx = True   # False: no gradient needs dx, which backward then skips (the engine sets it)
    need_weights = True   # False: no weight needs a gradient (a frozen layer): finish_backward skips their GEMMs
    feature_major = False   # the layout of the step GEMMs (W @ h^T or h @ W^T), for the CPU's GEMM route

    def gemm_weight(self, w, rows, contiguous=False):
        """w as this cell's GEMMs that use it again and again take it (module function gemm_weight)."""
        return gemm_weight(self.mm, self.xp, w, rows, contiguous)

    def outer(self, a, b, out=None):
        """sum over all (t, b) rows of a^T b: a (T, B, M), b (T, B, K) -> (M, K) (into out), one GEMM. Rows past their
        length have a = 0 but hold their state in b; b's are zeroed, as torch.nn skips those rows: an inf
        state (relu of an inf input) would otherwise make 0 * inf a NaN in the sum."""
        if self.padding is not None:
            b = self.xp.where(self.padding[:, :, None], 0, b)
        return self.mm(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]), out=out)

    def rows_matmul(self, a, w):
        """a @ w for all T*B rows as one 2-D GEMM (a 3-D matmul would run T small ones)."""
        return self.mm(a.reshape(-1, a.shape[-1]), w).reshape(a.shape[0], a.shape[1], w.shape[-1])

    def input_grad(self, d, w_ih):
        """dx = d @ W_ih for all rows (d: the gradient of the input projection), or None where not need_dx."""
        return self.rows_matmul(d, w_ih) if self.need_dx else None

    def project(self, x, w, bias):
        """x @ w^T + bias for all T*B rows at once: (T, B, I) -> (T, B, rows of w)."""
        out = self.rows_matmul(x, w.T)
        if bias is not None:
            out += bias
        return out


class FeatureMajorCell(Cell):
    """Base of the xp-loop cells that store each step transposed, (features, B), so that gate
    blocks are contiguous (lstm.LSTMLoop, gru.GRULoop); hT (T+1, P, B) holds h_0..h_T.
    begin_forward and begin_backward keep their `alloc` as self.alloc."""

    feature_major = True

    def swap_last_axes(self, a):
        """(T, F, B) <-> (T, B, F), into a buffer of self.alloc."""
        return transposed_copy(a, out=self.alloc((a.shape[0], a.shape[2], a.shape[1]), a.dtype))

    def with_ones_column(self, x):
        """(T, B, I) -> (T, B, I+1), last column 1: a GEMM with [W | b] adds the bias, and the
        weight-gradient GEMM with it gives [dW | db]."""
        x1 = self.alloc(x.shape[:2] + (x.shape[2] + 1,), x.dtype)
        x1[..., :-1] = x
        x1[..., -1] = 1
        return x1

    @functools.cached_property
    def h_rows(self):
        """(T+1, B, P) h_0..h_T, row-major: the outputs and the W_hh gradient's operand."""
        return self.swap_last_axes(self.hT)

    def outputs(self):
        return self.h_rows[1:]


def every_step(a, T):
    """NumPy array a as every step's (T, ...) array: a writable view, all T steps the same memory (a loop's scratch
    where no backward reads its steps)."""
    return np.lib.stride_tricks.as_strided(a, (T,) + a.shape, (0,) + a.strides, writeable=True)


def row_blocks(xp, a, order, out=None):
    """a's rows as len(order) equal blocks, block k of the result a's block order[k] (a gate permutation), into out (a
    pooled buffer: a weight's copy is megabytes, whose fresh memory costs page faults, buffers.py) or a new array."""
    size = a.shape[0] // len(order)
    out = xp.empty(a.shape, a.dtype) if out is None else out
    for k, block in enumerate(order):
        out[k * size:(k + 1) * size] = a[block * size:(block + 1) * size]
    return out


def bias_grads(dz, has_bias):
    """b_ih and b_hh get the same gradient, as separate arrays: torch may keep a returned
    gradient as .grad without copying and accumulate into it in place later."""
    if not has_bias:
        return {"b_ih": None, "b_hh": None}
    db = sum_rows(dz)
    return {"b_ih": db, "b_hh": astype(db, db.dtype)}


def sigmoid_(xp, a):
    """In-place logistic sigmoid, 1 / (1 + exp(-a)) as torch's: accurate relative to its value for very negative a
    (0.5*tanh(a/2) + 0.5 is 0 below about -17 in float32, where a log loss then has a NaN gradient). exp(88+) is inf
    in float32, the sigmoid then 0, rightly: engine.step_loop keeps that overflow silent."""
    xp.negative(a, out=a)
    sigmoid_of_negated_(xp, a)


def sigmoid_of_negated_(xp, a):
    """In place: a holds -x (the LSTM and GRU gates' rows are negated in the weights), and gets sigmoid(x)."""
    xp.exp(a, out=a)
    a += 1
    xp.reciprocal(a, out=a)


def phi_(xp, a, nonlinearity):
    if nonlinearity == "tanh":
        xp.tanh(a, out=a)
    else:
        xp.maximum(a, 0, out=a)


def phi_grad_from_output(xp, h, nonlinearity):
    """phi'(z) expressed through h = phi(z), for all steps at once, for `times_phi_grad`: relu's as the mask
    of its dead units (h <= 0; a NaN unit passes the gradient, as in torch's threshold_backward)."""
    if nonlinearity == "tanh":
        return 1 - h * h
    return h <= 0


def times_phi_grad(xp, d, phi_grad, out):
    """out = d * phi'(z) (out may be d). relu's is a select, as torch's: a dead unit passes no gradient, an
    inf or NaN one included (a product with 0 would make it NaN)."""
    if phi_grad.dtype != bool:
        return xp.multiply(d, phi_grad, out=out)
    if out is not d:
        out[...] = d
    xp.copyto(out, 0, where=phi_grad)
    return out


def add_bias(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b
