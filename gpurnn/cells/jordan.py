"""Jordan RNN on xp arrays: output units feed self-connected state units. One layout serves
the xp loop and the kernels (kernels/jordan.py).

    x (T, B, I)   hid (T, B, H)   y (T, B, O)   s (T+1, B, O) s_1..s_{T+1}   decay (O,)
"""
import functools

from ..checks import check_choice
from .base import (NONLINEARITIES, OUTPUT_ACTIVATIONS, Cell, phi_, phi_grad_from_output, sigmoid_, sum_rows,
                   times_phi_grad)

WEIGHT_NAMES = ("w_ih", "w_sh", "b_h", "w_ho", "b_o", "decay")
GATES = 1   # blocks of rows in the input and recurrent weights
NO_GRAD = ("decay",)   # a buffer, not a parameter


def make(xp, w, opts, fused):
    """The cell for one call: the same class runs the xp loop and feeds the kernels."""
    return Jordan(xp, w, opts.get("nonlinearity", "tanh"), opts.get("output_activation", "identity"),
                  opts.get("teacher"))


class Jordan(Cell):
    """h_t = phi(W_ih x_t + W_sh s_t + b_h); y_t = g(W_ho h_t + b_o); s_{t+1} = decay*s_t + y_t.

    With teacher forcing, teacher_t replaces y_t in the state update and no
    gradient flows from the state into y_t.
    """

    def __init__(self, xp, w, nonlinearity="tanh", output_activation="identity", teacher=None):
        super().__init__(xp, w)
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)   # phi_ takes anything else for relu
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        self.nonlinearity, self.output_activation, self.teacher = nonlinearity, output_activation, teacher

    def begin_forward(self, x, state0, alloc):
        w = self.w
        T, B = x.shape[:2]
        H, O = w["w_ih"].shape[0], w["w_ho"].shape[0]
        self.x = x
        self.gx = self.project(x, w["w_ih"], w["b_h"])
        self.hid = alloc((T, B, H), x.dtype)
        self.y = alloc((T, B, O), x.dtype)
        self.s = alloc((T + 1, B, O), x.dtype)
        self.s[0] = state0[0]
        self.seq = [self.s]
        self.w_sh_t, self.w_ho_t = (self.gemm_weight(w[k].T, B) for k in ("w_sh", "w_ho"))

    def step(self, t, n):
        xp, w = self.xp, self.w
        h = self.hid[t, :n]
        self.mm(self.s[t, :n], self.w_sh_t, out=h)
        h += self.gx[t, :n]
        phi_(xp, h, self.nonlinearity)
        y = self.y[t, :n]
        self.mm(h, self.w_ho_t, out=y)
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
        y = self.y
        self.dy = dy
        self.ds = dstate[0]
        self.da = alloc(y.shape, y.dtype)
        self.dz = alloc(self.hid.shape, y.dtype)
        self.w_ho, self.w_sh = (self.gemm_weight(self.w[k], y.shape[1]) for k in ("w_ho", "w_sh"))

    # What the xp loop's back_step reads; the kernels derive it in the step instead.
    @functools.cached_property
    def phi_grad(self):
        return phi_grad_from_output(self.xp, self.hid, self.nonlinearity)

    @functools.cached_property
    def act_grad(self):
        y = self.y
        if self.output_activation == "tanh":
            return 1 - y * y
        if self.output_activation == "sigmoid":
            return y * (1 - y)
        return None

    @functools.cached_property
    def tmp(self):
        return self.xp.empty(self.ds.shape, self.y.dtype)

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
        self.mm(da, self.w_ho, out=dz)
        times_phi_grad(self.xp, dz, self.phi_grad[t, :n], dz)
        ds *= w["decay"]
        ds += self.mm(dz, self.w_sh, out=self.tmp[:n])

    def finish_backward(self):
        dz, da, w = self.dz, self.da, self.w
        grads = {"w_ih": self.outer(dz, self.x), "w_sh": self.outer(dz, self.s[:-1]),
                 "b_h": sum_rows(dz) if w["b_h"] is not None else None,
                 "w_ho": self.outer(da, self.hid),
                 "b_o": sum_rows(da) if w["b_o"] is not None else None} if self.need_weights else {}
        return self.input_grad(dz, w["w_ih"]), (self.ds,), grads
