"""The cells as step rules on xp (NumPy or CuPy) arrays.

Each cell owns the buffers of one layer and one direction for one sequence.
The engine (engine.py) calls, in processing order:

    begin_forward(x, state0, alloc); step(t, n) for t in 0..T-1; outputs(); final()
    begin_backward(dy, dstate, alloc); back_step(t, n) for t in T-1..0; finish_backward()

or, for the fused kernels, the kernel launchers instead of step/back_step. LSTM and
GRU here are only the kernels' row-major buffers: their xp loops are
lstm_loop.LSTMLoop and gru_loop.GRULoop, in a feature-major layout, and for float32
NumPy data the LSTM's is lstm_compiled.CompiledLSTMLoop (row-major, a C step).

`alloc(shape, dtype)` makes the (T, ...) buffers (buffers.Allocations: reused NumPy
memory), zero-filled when rows are masked.

`n` is the number of active batch rows at step t (packed sequences: rows are
sorted by length, so the active rows are always a prefix). A step touches only
rows [:n]; the engine holds the state of rows [n:] (forward) and the carried
gradient of those rows passes through untouched (backward).

Shapes: x (T, B, I); gate pre-activations (T, B, G*H) with torch's gate order.
Everything here runs in the compute dtype (float32 for float16 inputs).
"""
import functools

import numpy as np

from .arrays import transposed_copy

NONLINEARITIES = ("tanh", "relu")
OUTPUT_ACTIVATIONS = ("identity", "tanh", "sigmoid", "softmax")


class Cell:
    """What every cell shares: the array module, the weights and the GEMM routine.

    matmul(a, b, out=None, add=False) is arrays.xp_matmul, or torch's on NumPy views when the caller
    runs under torch (one BLAS thread pool per process; see arrays.torch_matmul).
    """

    # True once a backward has overwritten data of its forward (the LSTM loops): before
    # another backward (retain_graph) the engine calls rewind() and runs the forward loop again.
    spent = False

    def __init__(self, xp, w, matmul):
        self.xp, self.w, self.mm = xp, w, matmul

    def outer(self, a, b):
        """sum over all (t, b) rows of a^T b: a (T, B, M), b (T, B, K) -> (M, K), one GEMM."""
        return self.mm(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]))

    def rows_matmul(self, a, w):
        """a @ w for all T*B rows as one 2-D GEMM (a 3-D matmul would run T small ones)."""
        return self.mm(a.reshape(-1, a.shape[-1]), w).reshape(a.shape[0], a.shape[1], w.shape[-1])

    def project(self, x, w, bias):
        """x @ w^T + bias for all T*B rows at once: (T, B, I) -> (T, B, rows of w)."""
        out = self.rows_matmul(x, w.T)
        if bias is not None:
            out += bias
        return out


class FeatureMajorCell(Cell):
    """Base of the xp-loop cells that store each step transposed, (features, B), so that gate
    blocks are contiguous (lstm_loop.LSTMLoop, gru_loop.GRULoop); hT (T+1, P, B) holds h_0..h_T.
    begin_forward and begin_backward keep their `alloc` as self.alloc."""

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


def sum_rows(a):
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def bias_grads(dz, has_bias):
    """b_ih and b_hh get the same gradient, as separate arrays: torch may keep a returned
    gradient as .grad without copying and accumulate into it in place later."""
    if not has_bias:
        return {"b_ih": None, "b_hh": None}
    db = sum_rows(dz)
    return {"b_ih": db, "b_hh": db.copy()}


def sigmoid_(xp, a):
    """In-place logistic sigmoid via tanh (stable for any sign, one transcendental)."""
    a *= 0.5
    xp.tanh(a, out=a)
    a *= 0.5
    a += 0.5


def phi_(xp, a, nonlinearity):
    if nonlinearity == "tanh":
        xp.tanh(a, out=a)
    else:
        xp.maximum(a, 0, out=a)


def phi_grad_from_output(xp, h, nonlinearity):
    """phi'(z) expressed through h = phi(z), for all steps at once."""
    if nonlinearity == "tanh":
        return 1 - h * h
    return (h > 0).astype(h.dtype)


def add_bias(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class Elman(Cell):
    """h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    def __init__(self, xp, w, matmul, nonlinearity="tanh"):
        super().__init__(xp, w, matmul)
        self.nonlinearity = nonlinearity

    def begin_forward(self, x, state0, alloc):
        w, xp = self.w, self.xp
        T, B = x.shape[:2]
        self.x = x
        self.gx = self.project(x, w["w_ih"], add_bias(w["b_ih"], w["b_hh"]))
        self.h = alloc((T + 1,) + state0[0].shape, x.dtype)
        self.h[0] = state0[0]
        self.seq = [self.h]
        self.w_hh_t = w["w_hh"].T

    def step(self, t, n):
        h_new = self.h[t + 1, :n]
        self.mm(self.h[t, :n], self.w_hh_t, out=h_new)
        h_new += self.gx[t, :n]
        phi_(self.xp, h_new, self.nonlinearity)

    def outputs(self):
        return self.h[1:]

    def final(self):
        return (self.h[-1],)

    def begin_backward(self, dy, dstate, alloc):
        self.dy = dy
        self.phi_grad = phi_grad_from_output(self.xp, self.h[1:], self.nonlinearity)
        self.dz = alloc(self.gx.shape, self.x.dtype)
        self.dh = dstate[0]

    def back_step(self, t, n):
        dh = self.dh[:n]
        dh += self.dy[t, :n]
        self.xp.multiply(dh, self.phi_grad[t, :n], out=self.dz[t, :n])
        self.mm(self.dz[t, :n], self.w["w_hh"], out=dh)

    def finish_backward(self):
        dz, w = self.dz, self.w
        grads = {"w_ih": self.outer(dz, self.x), "w_hh": self.outer(dz, self.h[:-1]),
                 **bias_grads(dz, w["b_ih"] is not None)}
        return self.rows_matmul(dz, w["w_ih"]), (self.dh,), grads


class LSTM(Cell):
    """Gates (i | f | g | o); c_t = f*c + i*g; h_t = o*tanh(c_t).

    The row-major buffers the fused kernels (kernels/lstm.py) run on; they have no
    step rule here. The xp loop and proj_size (W_hr) run lstm_loop.LSTMLoop.
    """

    def __init__(self, xp, w, matmul):
        super().__init__(xp, w, matmul)
        self.H = w["w_hh"].shape[0] // 4

    def begin_forward(self, x, state0, alloc):
        w, H = self.w, self.H
        T, B = x.shape[:2]
        self.x = x
        self.gx = self.project(x, w["w_ih"], add_bias(w["b_ih"], w["b_hh"]))
        self.gates = alloc((T, B, 4 * H), x.dtype)   # activated i, f, g, o
        self.h = alloc((T + 1,) + state0[0].shape, x.dtype)
        self.c = alloc((T + 1, B, H), x.dtype)
        self.tanh_c = alloc((T, B, H), x.dtype)
        self.h[0], self.c[0] = state0

    def outputs(self):
        return self.h[1:]

    def final(self):
        return (self.h[-1], self.c[-1])

    @functools.cached_property
    def coef(self):
        """(T, B, 4, H) d pre-activation / d(dc | dc | dc | dh) for all steps:
        i: g*i(1-i), f: c_prev*f(1-f), g: i*(1-g^2), o: tanh(c)*o(1-o)."""
        a, H = self.gates, self.H
        T, B = a.shape[:2]
        out = 1 - a
        out *= a                                   # sigmoid' for i, f, o
        g = a[..., 2 * H:3 * H]
        out[..., 2 * H:3 * H] = 1 - g * g          # tanh' for g
        for k, factor in enumerate((g, self.c[:-1], a[..., :H], self.tanh_c)):
            out[..., k * H:(k + 1) * H] *= factor
        return out.reshape(T, B, 4, H)

    @functools.cached_property
    def o_dtanh(self):
        """(T, B, H) o * tanh'(c_t) for all steps: dc += dh * this."""
        return self.gates[..., 3 * self.H:] * (1 - self.tanh_c * self.tanh_c)

    def begin_backward(self, dy, dstate, alloc):
        T, B = self.gates.shape[:2]
        self.dy = dy
        self.dh, self.dc = dstate
        self.dgates = alloc((T, B, 4 * self.H), self.gates.dtype)

    def finish_backward(self):
        d, w = self.dgates, self.w
        grads = {"w_ih": self.outer(d, self.x), "w_hh": self.outer(d, self.h[:-1]),
                 **bias_grads(d, w["b_ih"] is not None), "w_hr": None}
        return self.rows_matmul(d, w["w_ih"]), (self.dh, self.dc), grads


class GRU(Cell):
    """Gates (r | z | n); n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); h = (1-z)*n + z*h_prev.

    The row-major buffers the fused kernels (kernels/gru.py) run on; they have no
    step rule here. The xp loop runs gru_loop.GRULoop.
    """

    def __init__(self, xp, w, matmul):
        super().__init__(xp, w, matmul)
        self.H = w["w_hh"].shape[0] // 3

    def begin_forward(self, x, state0, alloc):
        w, xp, H = self.w, self.xp, self.H
        T, B = x.shape[:2]
        self.x = x
        # r and z take both biases up front; b_hn must stay inside r*(...).
        bias = add_bias(w["b_ih"], None if w["b_hh"] is None else
                        xp.concatenate([w["b_hh"][:2 * H], xp.zeros(H, x.dtype)]))
        self.gx = self.project(x, w["w_ih"], bias)
        self.gates = alloc((T, B, 3 * H), x.dtype)   # activated r, z, n
        self.hn = alloc((T, B, H), x.dtype)          # W_hn h + b_hn
        self.h = alloc((T + 1, B, H), x.dtype)
        self.h[0] = state0[0]
        self.b_hn = None if w["b_hh"] is None else w["b_hh"][2 * H:]

    def outputs(self):
        return self.h[1:]

    def final(self):
        return (self.h[-1],)

    def begin_backward(self, dy, dstate, alloc):
        H, g = self.H, self.gates
        T, B = g.shape[:2]
        r, z, new = g[..., :H], g[..., H:2 * H], g[..., 2 * H:]
        self.k_new = (1 - z) * (1 - new * new)           # d n_pre / d h_t
        self.k_z = (self.h[:-1] - new) * z * (1 - z)     # d z_pre / d h_t
        self.k_r = self.hn * r * (1 - r)                 # d r_pre / d n_pre
        self.dy = dy
        self.dh = dstate[0]
        self.dgh = alloc((T, B, 3 * H), g.dtype)         # grads of W_hh h + b_hh
        self.dnew = alloc((T, B, H), g.dtype)            # grad of the input part of n_pre

    def finish_backward(self):
        H, w, dgh = self.H, self.w, self.dgh
        dgx = self.xp.concatenate([dgh[..., :2 * H], self.dnew], axis=-1)
        has_bias = w["b_ih"] is not None
        grads = {"w_ih": self.outer(dgx, self.x), "w_hh": self.outer(dgh, self.h[:-1]),
                 "b_ih": sum_rows(dgx) if has_bias else None,
                 "b_hh": sum_rows(dgh) if has_bias else None}
        return self.rows_matmul(dgx, w["w_ih"]), (self.dh,), grads


class Jordan(Cell):
    """h_t = phi(W_ih x_t + W_sh s_t + b_h); y_t = g(W_ho h_t + b_o); s_{t+1} = decay*s_t + y_t.

    With teacher forcing, teacher_t replaces y_t in the state update and no
    gradient flows from the state into y_t.
    """

    def __init__(self, xp, w, matmul, nonlinearity="tanh", output_activation="identity", teacher=None):
        super().__init__(xp, w, matmul)
        self.nonlinearity, self.output_activation, self.teacher = nonlinearity, output_activation, teacher

    def begin_forward(self, x, state0, alloc):
        w, xp = self.w, self.xp
        T, B = x.shape[:2]
        H, O = w["w_ih"].shape[0], w["w_ho"].shape[0]
        self.x = x
        self.gx = self.project(x, w["w_ih"], w["b_h"])
        self.hid = alloc((T, B, H), x.dtype)
        self.y = alloc((T, B, O), x.dtype)
        self.s = alloc((T + 1, B, O), x.dtype)
        self.s[0] = state0[0]
        self.seq = [self.s]

    def step(self, t, n):
        xp, w = self.xp, self.w
        h = self.hid[t, :n]
        self.mm(self.s[t, :n], w["w_sh"].T, out=h)
        h += self.gx[t, :n]
        phi_(xp, h, self.nonlinearity)
        y = self.y[t, :n]
        self.mm(h, w["w_ho"].T, out=y)
        if w["b_o"] is not None:
            y += w["b_o"]
        self._output_activation_(y)
        s_new = self.s[t + 1, :n]
        xp.multiply(self.s[t, :n], w["decay"], out=s_new)
        s_new += y if self.teacher is None else self.teacher[t, :n]

    def _output_activation_(self, y):
        xp, act = self.xp, self.output_activation
        if act == "tanh":
            xp.tanh(y, out=y)
        elif act == "sigmoid":
            sigmoid_(xp, y)
        elif act == "softmax":
            y -= y.max(axis=-1, keepdims=True)
            xp.exp(y, out=y)
            y /= y.sum(axis=-1, keepdims=True)

    def outputs(self):
        return self.y

    def final(self):
        return (self.s[-1],)

    def begin_backward(self, dy, dstate, alloc):
        xp, y, act = self.xp, self.y, self.output_activation
        self.dy = dy
        self.ds = dstate[0]
        self.phi_grad = phi_grad_from_output(xp, self.hid, self.nonlinearity)
        self.act_grad = {"tanh": lambda: 1 - y * y, "sigmoid": lambda: y * (1 - y)}.get(act, lambda: None)()
        self.da = alloc(y.shape, y.dtype)
        self.dz = alloc(self.hid.shape, y.dtype)
        self.tmp = xp.empty(self.ds.shape, y.dtype)

    def back_step(self, t, n):
        xp, w = self.xp, self.w
        da, ds = self.da[t, :n], self.ds[:n]
        if self.teacher is None:
            xp.add(self.dy[t, :n], ds, out=da)   # y_t feeds s_{t+1}
        else:
            da[...] = self.dy[t, :n]
        if self.act_grad is not None:
            da *= self.act_grad[t, :n]
        elif self.output_activation == "softmax":
            y = self.y[t, :n]
            da -= (da * y).sum(axis=-1, keepdims=True)
            da *= y
        dz = self.dz[t, :n]
        self.mm(da, w["w_ho"], out=dz)
        dz *= self.phi_grad[t, :n]
        ds *= w["decay"]
        ds += self.mm(dz, w["w_sh"], out=self.tmp[:n])

    def finish_backward(self):
        dz, da, w = self.dz, self.da, self.w
        grads = {"w_ih": self.outer(dz, self.x), "w_sh": self.outer(dz, self.s[:-1]),
                 "b_h": sum_rows(dz) if w["b_h"] is not None else None,
                 "w_ho": self.outer(da, self.hid),
                 "b_o": sum_rows(da) if w["b_o"] is not None else None}
        return self.rows_matmul(dz, w["w_ih"]), (self.ds,), grads
