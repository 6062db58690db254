"""Elman (vanilla) RNN on xp arrays: h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), phi in
{tanh, relu}. One layout serves the xp loop and the kernels (kernels/elman.py).

    x (T, B, I)   gx (T, B, H) W_ih x + biases   h (T+1, B, H) h_0..h_T   dz (T, B, H) dL/d pre-activation
"""
import functools

from ..checks import check_choice
from .base import NONLINEARITIES, Cell, bias_grads, add_bias, phi_, phi_grad_from_output, times_phi_grad

WEIGHT_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh")
GATES = 1   # blocks of rows in the input and recurrent weights


def make(xp, w, opts, fused):
    """The cell for one call: the same class runs the xp loop and feeds the kernels."""
    return Elman(xp, w, opts.get("nonlinearity", "tanh"))


class Elman(Cell):
    """h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    def __init__(self, xp, w, nonlinearity="tanh"):
        super().__init__(xp, w)
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)   # phi_ takes anything else for relu
        self.nonlinearity = nonlinearity

    def begin_forward(self, x, state0, alloc):
        w = self.w
        T, B = x.shape[:2]
        self.x = x
        self.gx = self.project(x, w["w_ih"], add_bias(w["b_ih"], w["b_hh"]))
        self.h = alloc((T + 1,) + state0[0].shape, x.dtype)
        self.h[0] = state0[0]
        self.seq = [self.h]
        self.w_hh_t = self.gemm_weight(w["w_hh"].T, B)

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
        self.dz = alloc(self.gx.shape, self.x.dtype)
        self.dh = dstate[0]
        self.w_hh = self.gemm_weight(self.w["w_hh"], self.dh.shape[0])

    @functools.cached_property
    def phi_grad(self):
        """phi' at every step, for the xp loop's back_step (the kernels derive it from h)."""
        return phi_grad_from_output(self.xp, self.h[1:], self.nonlinearity)

    def back_step(self, t, n):
        dh = self.dh[:n]
        dh += self.dy[t, :n]
        times_phi_grad(self.xp, dh, self.phi_grad[t, :n], self.dz[t, :n])
        self.mm(self.dz[t, :n], self.w_hh, out=dh)

    def finish_backward(self):
        dz, w = self.dz, self.w
        grads = {"w_ih": self.outer(dz, self.x), "w_hh": self.outer(dz, self.h[:-1]),
                 **bias_grads(dz, w["b_ih"] is not None)} if self.need_weights else {}
        return self.input_grad(dz, w["w_ih"]), (self.dh,), grads
