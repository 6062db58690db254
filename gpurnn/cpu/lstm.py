"""The LSTM time loop for float32 NumPy data: BLAS GEMMs, and each step's pointwise work in
one call to step.c (see build.py for how it is built, and when the NumPy loop runs).

Counterparts: gpurnn/cells/lstm.py (the LSTM's maths; its make() picks this loop) and
kernels/lstm.py (the GPU kernels). The NumPy loop (cells/lstm.py's LSTMLoop) keeps its per-step arrays feature-major because ufuncs
are slow on strided gate blocks; C is not, so here everything is row-major, one row per
batch row, which suits the GEMMs around the loop: the input projection is one 2-D GEMM,
h_t goes straight into the rows [x_t | 1 | h_{t-1}] that the weight GEMM reads, and dL/da
is already in rows (no transpose between the loop and the weight gradients).

    A[t]   (B, 4H)  pre-activations (o | f | i | g); after step t the coefficients of dL/da,
                    after back_step t dL/da itself (as in LSTMLoop)
    KF[t]  (B, 2H)  K = o*(1 - tanh(c_t)^2) and F = f
    xh[t]  (B, I+1+P)  [x_t | 1 | h_{t-1}] (I+P without biases); h = its last P columns, h_0..h_T
    M[t]   (B, H)   o*tanh(c_t) when W_hr projects it (P = proj_size), for dW_hr
    c      (B, H)   the cell state, carried
In inference (for_backward=False) KF and, with W_hr, m are one scratch each.
"""
import numpy as np

from .. import cells
from ..cells.base import Cell, every_step

GateOrder = cells.get("lstm").GateOrder


def _address(a):
    return a.__array_interface__["data"][0]


def _step_addresses(a):
    """The address of each a[t]; made once, as computing one costs as much as a kernel call."""
    base, stride = _address(a), a.strides[0]
    return [base + t * stride for t in range(a.shape[0])]


class CompiledLSTMLoop(GateOrder, Cell):
    """c_t = f*c + i*g; h_t = o*tanh(c_t), projected by W_hr if given (same maths as cells/lstm.py's LSTM)."""

    def __init__(self, xp, w, lib, for_backward=True):
        super().__init__(xp, w, for_backward)
        self.lib = lib

    def begin_forward(self, x, state0, alloc):
        w, H = self.w, self.H
        T, B = x.shape[:2]
        h0, c0 = state0
        P = h0.shape[-1]
        self.begin_inputs(x, P, alloc)
        self.w_ih1_t = self.gemm_weight(self.w_ih1.T, T * B, contiguous=True)
        self.w_hh_t = self.gemm_weight(self.w_hh_scaled.T, B, contiguous=True)
        self.w_hr_t = None if w["w_hr"] is None else self.gemm_weight(w["w_hr"].T, B)
        self.h = self.xh[:, :, -P:]
        self.h[0] = h0
        self.seq = [self.h]                        # the engine holds h for rows past their length
        self.c0 = c0.copy()                        # rewind() reads it again, after the caller's may have changed
        self.c = np.empty((B, H), x.dtype)
        self.A = alloc((T, B, 4 * H), x.dtype)
        if w["w_hr"] is None:                      # m = o*tanh(c) is h itself
            self.M, self.m = None, self.h[1:]
        elif self.for_backward:                    # W_hr projects m into h; M keeps it for dW_hr
            self.M = self.m = alloc((T, B, H), x.dtype)
        else:                                      # inference: m in one scratch
            self.M, self.m = None, every_step(np.empty((B, H), x.dtype), T)
        # The kernel writes K and F in inference too (see step.c), then into one scratch.
        self.KF = alloc((T, B, 2 * H), x.dtype) if self.for_backward else every_step(np.empty((B, 2 * H), x.dtype), T)
        self.a_addresses, self.m_addresses = _step_addresses(self.A), _step_addresses(self.m)
        self.kf_addresses = _step_addresses(self.KF)
        self.c_address, self.ldm = _address(self.c), self.m.strides[1] // self.m.itemsize
        self.rewind()

    def rewind(self):
        """The input projection in A and c = c0, where the time loop starts (see cells/base.py's Cell.spent)."""
        T, B, G = self.A.shape
        self.mm(self.x1.reshape(T * B, self.x1.shape[-1]), self.w_ih1_t, out=self.A.reshape(T * B, G))
        self.c[...] = self.c0
        self.spent = False

    def step(self, t, n):
        self.mm(self.h[t, :n], self.w_hh_t, out=self.A[t, :n], add=True)
        self.lib.lstm_forward_step(self.a_addresses[t], self.c_address, self.m_addresses[t], self.ldm,
                                   self.kf_addresses[t], self.H, n)
        if self.w_hr_t is not None:
            self.mm(self.m[t, :n], self.w_hr_t, out=self.h[t + 1, :n])

    def outputs(self):
        return self.h[1:]

    def final(self):
        return (self.h[-1], self.c)

    def begin_backward(self, dy, dstate, alloc):
        self.begin_gradients(dy, alloc)
        self.dh, self.dc = dstate                  # C-ordered copies (engine), carried in place
        self.dy_addresses = _step_addresses(dy)
        self.dh_address, self.dc_address = _address(self.dh), _address(self.dc)
        B = self.dh.shape[0]
        self.w_hh_back = self.gemm_weight(self.w_hh_p, B)
        self.w_hr = None if self.w["w_hr"] is None else self.gemm_weight(self.w["w_hr"], B)

    def back_step(self, t, n):
        dh = self.dh[:n]
        if self.dh_seq is None:                    # dL/dm = dh + dy[t]
            grads = (self.dh_address, self.dy_addresses[t])
        else:                                      # dL/dm = (dh + dy[t]) W_hr
            dh += self.dy[t, :n]
            self.dh_seq[t, :n] = dh
            dm = np.ascontiguousarray(self.mm(dh, self.w_hr))
            grads = (_address(dm), None)
        self.lib.lstm_backward_step(self.a_addresses[t], self.kf_addresses[t], self.dc_address, *grads,
                                    self.H, n)
        if n < self.A.shape[1]:
            self.A[t, n:] = 0                      # rows past their length: no gradient
        self.mm(self.A[t, :n], self.w_hh_back, out=dh)

    def finish_backward(self):
        dx, grads = self.weight_grads(self.A, lambda: self.M)
        return dx, (self.dh, self.dc), grads
