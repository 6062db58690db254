"""The GRU time loop for float32 NumPy data: cells/gru.py's GRULoop (its layout, GEMMs and weight gradients),
with each step's pointwise work in one call to step.c instead of 10-11 ufunc calls forward and 14 backward
(see build.py for how it is built, and when the NumPy loop runs)."""
import numpy as np

from .. import cells
from .lstm import _address, _step_addresses

GRULoop = cells.get("gru").GRULoop


class CompiledGRULoop(GRULoop):
    def __init__(self, xp, w, lib, for_backward=True):
        super().__init__(xp, w, for_backward)
        self.lib = lib

    def begin_forward(self, x, state0, alloc):
        super().begin_forward(x, state0, alloc)
        B = x.shape[1]
        b_hn = np.zeros(self.H, x.dtype) if self.b_hn is None else self.b_hn[:, 0]
        self.b_hn_c = np.ascontiguousarray(b_hn)   # kept: the kernel reads its address
        self.b_hn_at = _address(self.b_hn_c)
        self.g_at, self.gx_at = _step_addresses(self.G), _step_addresses(self.GX)
        self.n_at, self.h_at = _step_addresses(self.N), _step_addresses(self.hT)
        self.ld = B

    def step(self, t, n):
        self.mm(self.w_hh_step, self.hT[t, :, :n], out=self.G[t, :, :n])
        self.lib.gru_forward_step(self.g_at[t], self.gx_at[t], self.b_hn_at, self.n_at[t], self.h_at[t],
                                  self.h_at[t + 1], self.H, n, self.ld)

    def end_forward(self):
        self.gx_at = None   # (GX goes back to the pool: a step reading it would fail, not read reused memory)
        return super().end_forward()

    def begin_backward(self, dy, dstate, alloc):
        super().begin_backward(dy, dstate, alloc)
        self.dy_at, self.d_at = _step_addresses(self.dyT), _step_addresses(self.D)
        self.dh_at, self.keep_at = _address(self.dh), _address(self.keep)

    def back_step(self, t, n):
        self.lib.gru_backward_step(self.dh_at, self.dy_at[t], self.g_at[t], self.n_at[t], self.h_at[t],
                                   self.d_at[t], self.keep_at, self.H, n, self.ld)
        keep = self.keep[:, :n]
        self.mm(self.w_hh_t, self.D[t, :3 * self.H, :n], out=keep, add=True)
        self.xp.copyto(self.dh[:, :n], keep)
