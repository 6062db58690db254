"""The LSTM on xp arrays: c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t) (times W_hr with proj_size).

Counterparts: kernels/lstm.py (the fused GPU kernels, which read LSTM's row-major buffers
below) and gpurnn/cpu/ (the float32 NumPy loop with its pointwise step compiled from C,
CompiledLSTMLoop; make() picks it where it builds). Here: those buffers, GateOrder (what
the xp loop and the compiled loop share) and LSTMLoop, the feature-major xp loop.

The fused kernels read row-major (T, B, 4H) buffers (LSTM). A NumPy loop
over those pays for strided gate slices: a ufunc on a (B, H) column block of a
(B, 4H) array runs 2-4x slower than on a contiguous block. Here every per-step
array is stored transposed, (features, B), so each gate is a contiguous row block
of one (4H, B) GEMM output.

Torch's gate order (i | f | g | o) is permuted to (o | f | i | g): the three sigmoid
gates are one block (negated in the weights, so that sigmoid(a) = 1/(1 + e^-a), accurate relative
to its value at both ends as torch's, is one exp, an add and a reciprocal), and the three gates whose
gradient is dc times a coefficient, (f | i | g), are another.

On this CPU the loop is bound by per-call overhead and by memory traffic to buffers
that outgrow the caches, not by arithmetic. So each forward step, while its values are
in cache, also turns them into what backward needs, and backward is five calls and a GEMM:

    A[t]   (4H, B)  pre-activations; after step t the coefficients of dL/da:
                    (tanh(c)*o' | c_{t-1}*f' | g*i' | i*(1-g^2)), with s' = s*(1-s);
                    after back_step t, dL/da itself
    KF[t]  (2H, B)  K = o*(1-tanh(c_t)^2), the path from dh_t into dc_t, and
                    F = f_t, the path from dc_t into dc_{t-1}
    hT[t]  (P, B)   h_{t-1} at index t (hT[0] = h0)
    M[t]   (H, B)   o*tanh(c_t) when h is projected by W_hr (P = proj_size), for dW_hr
    c      (H, B)   the cell state, carried (backward needs no c, only the products above)

A forward run without backward (for_backward=False) skips KF and the coefficients.
The input projection (bias included, as a column of ones) is one batched GEMM
straight into A, and each step accumulates W_hh h into it. The weight gradients are
GEMMs over all T*B rows, on dA transposed back to rows, then put back in torch's gate order;
dW_ih, db and dW_hh are one GEMM, on rows [x_t | 1 | h_{t-1}] (xh).

For float32 NumPy data, gpurnn/cpu/lstm.py's CompiledLSTMLoop does each step's pointwise
work in one call to a small C function (gpurnn/cpu/step.c) instead, on row-major buffers;
this NumPy loop is its fallback, and runs float64 and CuPy.
"""
import functools

import numpy as np

from ..arrays import transposed_copy
from .base import Cell, FeatureMajorCell, add_bias, bias_grads, row_blocks, sigmoid_of_negated_

WEIGHT_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
GATES = 4   # blocks of rows in the input and recurrent weights


def make(xp, w, opts, fused):
    """The cell for one call: the kernels' row-major buffers, the compiled loop for float32 NumPy
    data where the C step builds (gpurnn/cpu), else the feature-major xp loop."""
    if fused:
        return LSTM(xp, w)
    for_backward = opts.get("for_backward", True)
    if xp is np and w["w_hh"].dtype == np.float32:
        from ..cpu import build, lstm   # imported on use: gpurnn.cpu builds on gpurnn.cells
        lib = build.library()
        if lib is not None:
            return lstm.CompiledLSTMLoop(xp, w, lib, for_backward)
    return LSTMLoop(xp, w, for_backward)


class LSTM(Cell):
    """Gates (i | f | g | o); c_t = f*c + i*g; h_t = o*tanh(c_t).

    The row-major buffers the fused kernels (kernels/lstm.py) run on; they have no
    step rule here. The xp loop and proj_size (W_hr) run LSTMLoop below.
    """

    def __init__(self, xp, w):
        super().__init__(xp, w)
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

    def begin_backward(self, dy, dstate, alloc):
        T, B = self.gates.shape[:2]
        self.dy = dy
        self.dh, self.dc = dstate
        self.dgates = alloc((T, B, 4 * self.H), self.gates.dtype)

    def finish_backward(self):
        d, w = self.dgates, self.w
        grads = {"w_ih": self.outer(d, self.x), "w_hh": self.outer(d, self.h[:-1]),
                 **bias_grads(d, w["b_ih"] is not None), "w_hr": None} if self.need_weights else {}
        return self.input_grad(d, w["w_ih"]), (self.dh, self.dc), grads


def _first_columns(views, n):
    """views cut to their first n columns (the active batch rows of a packed step)."""
    return [v[..., :n] for v in views]


GATE_SOURCES = (3, 1, 0, 2)   # torch's gate blocks (i f g o) in the order (o f i g)
TORCH_ORDER = tuple(GATE_SOURCES.index(g) for g in range(4))   # and back


class GateOrder:
    """The gates permuted from torch's (i f g o) to (o f i g), the sigmoid rows of the weights
    negated (exactly), and rows [x_t | 1 | h_{t-1}] (xh) for the projection and the weight GEMM:
    what the NumPy loop here and gpurnn/cpu/lstm.CompiledLSTMLoop share."""

    def __init__(self, xp, w, for_backward=True):
        super().__init__(xp, w)
        H = w["w_hh"].shape[0] // 4
        self.H, self.for_backward = H, for_backward
        self.scale = xp.ones((4 * H, 1), w["w_hh"].dtype)
        self.scale[:3 * H] = -1

    def begin_inputs(self, x, P, alloc):
        """w_ih1 = [W_ih | b] and w_hh_scaled, gate-permuted and the sigmoid rows negated; xh (T+1, B, I+1+P) with
        x and the column of ones filled in (no bias: no ones column); x1, its [x_t | 1] part."""
        w = self.w
        T, B, I = x.shape
        self.x, self.alloc = x, alloc
        has_bias = w["b_ih"] is not None
        w_ih = self.permuted(w["w_ih"], alloc, columns=I + has_bias, scaled=True)
        self.w_hh_scaled = self.permuted(w["w_hh"], alloc, scaled=True)
        if has_bias:
            w_ih[:, I] = row_blocks(self.xp, w["b_ih"] + w["b_hh"], GATE_SOURCES) * self.scale[:, 0]
        # The input projection reads [x_t | 1] (the bias as a column of ones), and one GEMM
        # with dL/da gives [dW_ih | db | dW_hh].
        self.xh = alloc((T + 1, B, I + has_bias + P), x.dtype)
        self.xh[:T, :, :I] = x
        if has_bias:
            self.xh[:, :, I] = 1
        self.x1, self.w_ih1 = self.xh[:T, :, :I + has_bias], w_ih

    def begin_gradients(self, dy, alloc):
        """What both loops' begin_backward start with."""
        self.dy, self.alloc = dy, alloc
        self.spent = True                          # back_step t writes dL/da over the coefficients in A[t]
        self.dh_seq = None if self.w["w_hr"] is None else alloc(dy.shape, dy.dtype)   # for dW_hr
        self.w_hh_p = self.permuted(self.w["w_hh"], alloc)

    def permuted(self, w, alloc, columns=None, scaled=False):
        """w's rows in the gate order (o f i g), sigmoid rows negated if `scaled`, in a buffer from alloc (a
        weight is megabytes at large H: fresh memory each call costs page faults, buffers.py) with `columns`
        columns (more than w's: left for the caller to fill)."""
        out = alloc((w.shape[0], columns or w.shape[1]), w.dtype)
        rows = row_blocks(self.xp, w, GATE_SOURCES, out[:, :w.shape[1]])
        if scaled:
            rows *= self.scale
        return out

    def weight_grads(self, d, m_rows):
        """dL/da (T, B, 4H) and m = o*tanh(c) (T, B, H), both in rows, gates (o f i g) -> (dx, grads).
        The h columns of xh must hold h_0..h_{T-1} by now."""
        grads = self._weight_grads(d, m_rows) if self.need_weights else {}
        return self.input_grad(d, self.permuted(self.w["w_ih"], self.alloc)), grads

    def _weight_grads(self, d, m_rows):
        w, I = self.w, self.x.shape[-1]
        # [dW_ih | db | dW_hh], gates (o f i g), in a pooled buffer: the gradients are copies of its blocks
        dw = self.outer(d, self.xh[:-1], out=self.alloc((d.shape[-1], self.xh.shape[-1]), d.dtype))

        def torch_order(a):
            return row_blocks(self.xp, a, TORCH_ORDER)
        grads = {"w_ih": torch_order(dw[:, :I]), "w_hh": torch_order(dw[:, self.x1.shape[-1]:]), "w_hr": None,
                 "b_ih": None, "b_hh": None}
        if w["b_ih"] is not None:   # separate arrays: see base.bias_grads
            grads["b_ih"], grads["b_hh"] = torch_order(dw[:, I]), torch_order(dw[:, I])
        if self.dh_seq is not None:
            grads["w_hr"] = self.outer(self.dh_seq, m_rows())
        return grads


class LSTMLoop(GateOrder, FeatureMajorCell):
    """c_t = f*c + i*g; h_t = o*tanh(c_t), projected by W_hr if given (same maths as LSTM)."""

    def begin_forward(self, x, state0, alloc):
        w, xp, H = self.w, self.xp, self.H
        T, B = x.shape[:2]
        h0, c0 = state0
        self.begin_inputs(x, h0.shape[-1], alloc)
        self.A = alloc((T, 4 * H, B), x.dtype)
        self.hT = alloc((T + 1, h0.shape[-1], B), x.dtype)
        self.hT[0] = h0.T
        self.c0 = c0.T.copy()   # rewind() reads it again, after the caller's array may have changed
        self.c = xp.empty((H, B), x.dtype)
        self.w_hh_step = self.gemm_weight(self.w_hh_scaled, B)
        self.z = xp.empty((3 * H, B), x.dtype)   # m | f*c_{t-1} | i*g, aligned with (o | f | i)
        self.tc = xp.empty((H, B), x.dtype)
        self.q = xp.zeros((2 * H, B), x.dtype)   # m*tanh(c) | 0: (o | f) - q gives (K | F) in one call
        self.seq = [self.hT.transpose(0, 2, 1)]   # the engine holds h for rows past their length
        self.M = None
        if w["w_hr"] is not None and self.for_backward:
            self.M = alloc((T, H, B), x.dtype)
        # Per-step views made in one pass: views made inside the loop cost about 4 us a step.
        gates = self.A.reshape(T, 4, H, B)
        per_step = [self.A, self.A[:, :3 * H], *(gates[:, k] for k in range(4)), self.hT[:-1], self.hT[1:]]
        if self.for_backward:
            self.KF = alloc((T, 2 * H, B), x.dtype)
            per_step.append(self.KF)
        self.step_views = list(zip(*per_step))
        self.rewind()

    def rewind(self):
        """The input projection in A and c = c0, where the time loop starts (see base.Cell.spent)."""
        self.mm(self.w_ih1, self.x1.transpose(0, 2, 1), out=self.A)
        self.c[...] = self.c0
        self.spent = False

    def step(self, t, n):
        xp, H, z = self.xp, self.H, self.z
        views = self.step_views[t]
        c, tc, q = self.c, self.tc, self.q
        if n < self.c.shape[1]:
            views, (c, tc, z, q) = _first_columns(views, n), _first_columns((c, tc, z, q), n)
        a, s, o, f, i, g, h_prev, h = views[:8]
        fc, ig = z[H:2 * H], z[2 * H:]
        # m = o*tanh(c) goes straight into h in inference; the coefficient pass needs it in z,
        # next to f*c and i*g, and W_hr projects it
        projected = self.w["w_hr"] is not None
        m = z[:H] if projected or self.for_backward else h
        self.mm(self.w_hh_step, h_prev, out=a, add=True)
        sigmoid_of_negated_(xp, s)
        xp.tanh(g, out=g)
        xp.multiply(i, g, out=ig)
        xp.multiply(f, c, out=fc)
        xp.add(fc, ig, out=c)
        xp.tanh(c, out=tc)
        xp.multiply(o, tc, out=m)
        if projected:
            self.mm(self.w["w_hr"], m, out=h)
            if self.M is not None:
                xp.copyto(self.M[t, :, :n], m)
        elif self.for_backward:
            xp.copyto(h, m)
        if not self.for_backward:
            return
        xp.multiply(m, tc, out=q[:H])              # K = o*(1 - tanh(c)^2) = o - m*tanh(c); F = f
        xp.subtract(a[:2 * H], q, out=views[8])
        g *= ig                                    # i*(1 - g^2) = i - i*g*g
        xp.subtract(i, g, out=g)
        xp.subtract(1, s, out=s)                   # (m, f*c_{t-1}, i*g) * (1 - (o, f, i)); not z - z*s, which is
        s *= z                                     # NaN where c_{t-1} is inf (torch.nn's gradient: inf)

    @functools.cached_property
    def h_rows(self):
        """(T+1, B, P) h_0..h_T in rows (outputs, dW_hh): the h columns of xh."""
        return transposed_copy(self.hT, out=self.xh[:, :, -self.hT.shape[1]:])

    def final(self):
        return (self.h_rows[-1], self.xp.ascontiguousarray(self.c.T))

    def begin_backward(self, dy, dstate, alloc):
        xp, H = self.xp, self.H
        T, _, B = self.A.shape
        self.begin_gradients(dy, alloc)
        # dh is carried in rows (B, P): its GEMM, dA[t]^T W_hh, is faster that way round (the
        # transpose is a GEMM flag), and dy[t] adds to it without a transpose. dhT is its
        # (P, B) copy for the gate arithmetic.
        self.dh = dstate[0]
        self.dhT = xp.empty(self.dh.shape[::-1], dy.dtype)
        self.dc = xp.ascontiguousarray(dstate[1].T)   # carried (H, B)
        self.tmp = xp.empty((H, B), dy.dtype)
        self.back_views = list(zip(self.A, self.KF[:, :H], self.KF[:, H:]))
        self.w_hh_back = self.gemm_weight(self.w_hh_p, B)

    def back_step(self, t, n):
        xp, H = self.xp, self.H
        views = self.back_views[t]
        dhT, dc, tmp = self.dhT, self.dc, self.tmp
        if n < dc.shape[1]:
            views, (dhT, dc, tmp) = _first_columns(views, n), _first_columns((dhT, dc, tmp), n)
            self.A[t, :, n:] = 0                   # rows past their length: no gradient
        d, k, f = views
        dh = self.dh[:n]
        dh += self.dy[t, :n]
        xp.copyto(dhT, dh.T)
        if self.dh_seq is None:
            dm = dhT
        else:
            self.dh_seq[t, :n] = dh
            dm = self.mm(self.w["w_hr"].T, dhT)
        xp.multiply(k, dm, out=tmp)
        dc += tmp
        d[:H] *= dm
        d_fig = d[H:].reshape(3, H, d.shape[-1])
        xp.multiply(d_fig, dc, out=d_fig)
        dc *= f                                    # through f into c_{t-1}
        self.mm(d.T, self.w_hh_back, out=dh)

    def finish_backward(self):
        self.h_rows                                # fills the h columns of xh, which the weight GEMM reads
        dx, grads = self.weight_grads(self.swap_last_axes(self.A), lambda: self.swap_last_axes(self.M))
        return dx, (self.dh, self.xp.ascontiguousarray(self.dc.T)), grads
