"""The GRU on xp arrays: n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h_t = (1-z)*n + z*h_{t-1}.

Counterparts: kernels/gru.py (the fused GPU kernels, which read GRU's row-major buffers
below). Here: those buffers, and GRULoop, the xp time loop in feature-major layout (see
lstm.py for why):

    GX[t] (3H, B)  W_ih x_t + biases, gate rows (r | z | n) as torch: r, z take b_ih + b_hh,
                   n only b_in (b_hn stays inside r*(...))
    G[t]  (3H, B)  W_hh h_{t-1}, gate rows (n | r | z): hn = W_hn h + b_hn, then r, z activated
    N[t]  (H, B)   n_t;  hT[t] (H, B) h_{t-1} at index t (hT[0] = h0)
    D[t]  (4H, B)  gradients of (hn | r_pre | z_pre | the input part of n_pre)

GX goes back to the buffer pool when the forward loop ends (end_forward); in inference (for_backward=False) G and N
are one step's scratch (NumPy).

W_hh's rows are permuted to (n | r | z) so that the sigmoid gates are one block of G
and both gradient GEMM operands are contiguous row ranges of D: D[:, :3H] pairs with
W_hh's rows, D[:, H:] with W_ih's (torch's order). The r, z rows of both weights are negated
(exactly), so that sigmoid(a) = 1/(1 + e^-a), accurate relative to its value at both ends as
torch's, is one exp, an add and a reciprocal over both gates.
"""
import numpy as np

from .base import Cell, FeatureMajorCell, add_bias, every_step, row_blocks, sigmoid_of_negated_, sum_rows

WEIGHT_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh")
GATES = 3   # blocks of rows in the input and recurrent weights
GATE_SOURCES, TORCH_ORDER = (2, 0, 1), (1, 2, 0)   # GRULoop's W_hh rows (n r z) from torch's (r z n), and back


def make(xp, w, opts, fused):
    """The cell for one call: the kernels' row-major buffers, the loop with a compiled step for float32 NumPy
    data where the C step builds (gpurnn/cpu), else the feature-major xp loop."""
    if fused:
        return GRU(xp, w)
    if xp is np and w["w_hh"].dtype == np.float32:
        from ..cpu import build, gru   # imported on use: gpurnn.cpu builds on gpurnn.cells
        lib = build.library()
        if lib is not None:
            return gru.CompiledGRULoop(xp, w, lib, opts.get("for_backward", True))
    return GRULoop(xp, w, opts.get("for_backward", True))


class GRU(Cell):
    """Gates (r | z | n); n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); h = (1-z)*n + z*h_prev.

    The row-major buffers the fused kernels (kernels/gru.py) run on; they have no
    step rule here. The xp loop runs GRULoop below.
    """

    def __init__(self, xp, w):
        super().__init__(xp, w)
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
                 "b_hh": sum_rows(dgh) if has_bias else None} if self.need_weights else {}
        return self.input_grad(dgx, w["w_ih"]), (self.dh,), grads


class GRULoop(FeatureMajorCell):
    """n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); h = (1-z)*n + z*h_prev (same maths as GRU)."""

    def __init__(self, xp, w, for_backward=True):
        super().__init__(xp, w)
        H = w["w_hh"].shape[0] // 3
        self.H, self.for_backward = H, for_backward
        self.scale = xp.ones((3 * H, 1), w["w_hh"].dtype)
        self.scale[:2 * H] = -1                # torch order (r z n)

    def begin_forward(self, x, state0, alloc):
        w, xp, H = self.w, self.xp, self.H
        T, B = x.shape[:2]
        self.x, self.alloc = x, alloc
        I, has_bias = x.shape[-1], w["b_ih"] is not None
        w_ih = xp.empty((3 * H, I + has_bias), x.dtype)   # (for the projection alone: not held by the tape)
        xp.multiply(w["w_ih"], self.scale, out=w_ih[:, :I])
        # (kept for the steps, in a pooled buffer: megabytes at large H, whose fresh memory costs page faults)
        self.w_hh_scaled = row_blocks(xp, w["w_hh"], GATE_SOURCES, alloc((3 * H, H), x.dtype))
        xp.negative(self.w_hh_scaled[H:], out=self.w_hh_scaled[H:])   # (rows r z: see the top)
        self.b_hn = None
        if has_bias:
            bias = w["b_ih"] + xp.concatenate([w["b_hh"][:2 * H], xp.zeros(H, x.dtype)])
            w_ih[:, I] = bias * self.scale[:, 0]
            x = self.with_ones_column(x)
            self.b_hn = w["b_hh"][2 * H:, None]
        self.x1 = x
        self.GX = self.mm(w_ih, x.transpose(0, 2, 1), out=alloc((T, 3 * H, B), x.dtype))
        if self.for_backward or xp is not np:
            self.G, self.N = alloc((T, 3 * H, B), x.dtype), alloc((T, H, B), x.dtype)
        else:   # inference: one step's scratch, reused (as the LSTM's)
            self.G, self.N = every_step(np.empty((3 * H, B), x.dtype), T), every_step(np.empty((H, B), x.dtype), T)
        self.hT = alloc((T + 1, H, B), x.dtype)
        self.hT[0] = state0[0].T
        self.w_hh_step = self.gemm_weight(self.w_hh_scaled, B)
        self.seq = [self.hT.transpose(0, 2, 1)]   # (T+1, B, H) view

    def step(self, t, n):
        xp, H = self.xp, self.H
        g = self.G[t, :, :n]
        self.mm(self.w_hh_step, self.hT[t, :, :n], out=g)
        hn, r, z = g.reshape(3, H, n)
        gx = self.GX[t, :, :n]
        rz = g[H:]
        rz += gx[:2 * H]
        sigmoid_of_negated_(xp, rz)
        if self.b_hn is not None:
            hn += self.b_hn
        new = self.N[t, :, :n]
        xp.multiply(r, hn, out=new)
        new += gx[2 * H:]
        xp.tanh(new, out=new)
        h = self.hT[t + 1, :, :n]
        xp.subtract(self.hT[t, :, :n], new, out=h)
        h *= z
        h += new

    def final(self):
        return (self.h_rows[-1],)

    def end_forward(self):
        gx, self.GX = self.GX, None   # (backward reads G, N and hT: GX was a third of the tape at I = H)
        return (gx,)

    def begin_backward(self, dy, dstate, alloc):
        xp, H = self.xp, self.H
        T, _, B = self.G.shape
        self.alloc = alloc
        self.dyT = self.swap_last_axes(dy)
        self.dh = xp.ascontiguousarray(dstate[0].T)   # carried (H, B)
        self.D = alloc((T, 4 * H, B), dy.dtype)
        self.keep = xp.empty((H, B), dy.dtype)
        self.diff = xp.empty((H, B), dy.dtype)
        w_hh = row_blocks(xp, self.w["w_hh"], GATE_SOURCES, alloc(self.w["w_hh"].shape, self.w["w_hh"].dtype))
        self.w_hh_t = self.gemm_weight(w_hh.T, B, contiguous=True)

    def back_step(self, t, n):
        xp, H = self.xp, self.H
        dh, keep, diff = self.dh[:, :n], self.keep[:, :n], self.diff[:, :n]
        dh += self.dyT[t, :, :n]
        hn, r, z = self.G[t, :, :n].reshape(3, H, n)
        new, h_prev = self.N[t, :, :n], self.hT[t, :, :n]
        d = self.D[t, :, :n]
        d_hn, d_r, d_z, d_new = d.reshape(4, H, n)
        xp.multiply(dh, z, out=keep)               # dh_prev = z*dh + W_hh^T (...)
        xp.subtract(dh, keep, out=diff)            # (1-z)*dh
        xp.multiply(new, new, out=d_new)           # d_new = (1-z)*dh*(1-n^2)
        xp.subtract(1, d_new, out=d_new)
        d_new *= diff
        xp.multiply(d_new, r, out=d_hn)            # d hn = r * d_new
        s, ds = self.G[t, H:, :n], d[H:3 * H]
        xp.multiply(s, s, out=ds)                  # sigmoid' = s - s^2 for r, z
        xp.subtract(s, ds, out=ds)
        d_r *= hn                                  # d r_pre = d_new * hn * r'
        d_r *= d_new
        xp.subtract(h_prev, new, out=diff)         # d z_pre = dh * (h_prev - n) * z'
        d_z *= diff
        d_z *= dh
        self.mm(self.w_hh_t, d[:3 * H], out=keep, add=True)
        xp.copyto(dh, keep)

    def finish_backward(self):
        d = self.swap_last_axes(self.D)            # (T, B, 4H): hn, r, z | r, z, n
        d_hh, d_ih = d[..., :3 * self.H], d[..., self.H:]
        grads = self._weight_grads(d_hh, d_ih) if self.need_weights else {}
        return self.input_grad(d_ih, self.w["w_ih"]), (self.xp.ascontiguousarray(self.dh.T),), grads

    def _weight_grads(self, d_hh, d_ih):
        w, H, xp = self.w, self.H, self.xp
        I = self.x.shape[-1]
        # [dW_ih | db_ih] (torch's gate order) and dW_hh (n r z) in pooled buffers: the gradients are copies
        dw_x1 = self.outer(d_ih, self.x1, out=self.alloc((3 * H, self.x1.shape[-1]), d_ih.dtype))
        dw_hh = self.outer(d_hh, self.h_rows[:-1], out=self.alloc((3 * H, H), d_hh.dtype))
        grads = {"w_ih": dw_x1[:, :I].copy(), "w_hh": row_blocks(xp, dw_hh, TORCH_ORDER),
                 "b_ih": None, "b_hh": None}
        if w["b_ih"] is not None:
            grads["b_ih"] = dw_x1[:, I].copy()
            grads["b_hh"] = row_blocks(xp, d_hh.reshape(-1, 3 * H).sum(axis=0), TORCH_ORDER)
        return grads
