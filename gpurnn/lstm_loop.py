"""The LSTM step rule for the xp time loop, in feature-major layout.

The fused kernels read row-major (T, B, 4H) buffers (cells.LSTM). A NumPy loop
over those pays for strided gate slices: a ufunc on a (B, H) column block of a
(B, 4H) array runs 2-4x slower than on a contiguous block. Here every per-step
array is stored transposed, (features, B), so each gate is a contiguous row block
of one (4H, B) GEMM output:

    A[t]   (4H, B)  pre-activations, activated in place; gate rows (i | f | o | g)
    Z[t+1] (3H, B)  i*g | f*c_{t-1} | m = o*tanh(c_t): the products the forward forms anyway;
                    with (i | f | o) they give every backward coefficient in few passes
    C[t]   (H, B)   c_{t-1} at index t (C[0] = c0); TC[t] = tanh(c_t)
    hT[t]  (P, B)   h_{t-1} at index t (hT[0] = h0): Z's m block, or W_hr m with proj_size P

Torch's gate order (i | f | g | o) is permuted to (i | f | o | g) so the three
sigmoid gates are one block, and their 0.5 pre-scale (sigmoid(a) = 0.5*tanh(a/2)
+ 0.5) is folded into the weights: one tanh activates all four gates. The input
projection (bias included, as a column of ones) is one batched GEMM straight into
A, and each step accumulates W_hh h into it. The weight gradients are GEMMs over
all T*B rows, on dA transposed back to rows, then put back in torch's gate order.
"""
import numpy as np

from .cells import FeatureMajorCell


class LSTMLoop(FeatureMajorCell):
    """c_t = f*c + i*g; h_t = o*tanh(c_t), projected by W_hr if given (same maths as cells.LSTM)."""

    def __init__(self, xp, w, matmul):
        super().__init__(xp, w, matmul)
        H = w["w_hh"].shape[0] // 4
        self.H = H
        perm = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]   # torch (i f g o) -> (i f o g)
        self.perm, self.unperm = xp.asarray(perm), xp.asarray(np.argsort(perm))
        self.scale = xp.ones((4 * H, 1), w["w_hh"].dtype)
        self.scale[:3 * H] = 0.5

    def begin_forward(self, x, state0, alloc):
        w, xp, H, perm = self.w, self.xp, self.H, self.perm
        T, B = x.shape[:2]
        self.x, self.alloc = x, alloc
        w_ih = w["w_ih"][perm] * self.scale
        self.w_hh_scaled = w["w_hh"][perm] * self.scale
        self.A = alloc((T, 4 * H, B), x.dtype)
        if w["b_ih"] is not None:
            bias = (w["b_ih"] + w["b_hh"])[perm] * self.scale[:, 0]
            w_ih = xp.concatenate([w_ih, bias[:, None]], axis=1)
            x = self.with_ones_column(x)
        self.x1 = x
        self.mm(w_ih, x.transpose(0, 2, 1), out=self.A)
        h0, c0 = state0
        self.Z = alloc((T + 1, 3 * H, B), x.dtype)
        self.C = alloc((T + 1, H, B), x.dtype)
        self.TC = alloc((T, H, B), x.dtype)
        if w["w_hr"] is None:
            self.hT = self.Z[:, 2 * H:]
        else:
            self.hT = alloc((T + 1, h0.shape[-1], B), x.dtype)
        self.hT[0], self.C[0] = h0.T, c0.T
        self.seq = [self.hT.transpose(0, 2, 1), self.C.transpose(0, 2, 1)]   # (T+1, B, ·) views

    def step(self, t, n):
        xp, H = self.xp, self.H
        a = self.A[t, :, :n]
        self.mm(self.w_hh_scaled, self.hT[t, :, :n], out=a, add=True)
        xp.tanh(a, out=a)
        s = a[:3 * H]
        s *= 0.5
        s += 0.5
        i, f, o, g = a.reshape(4, H, -1)
        ig, fc, m = self.Z[t + 1, :, :n].reshape(3, H, -1)
        c, tc = self.C[t + 1, :, :n], self.TC[t, :, :n]
        xp.multiply(i, g, out=ig)
        xp.multiply(f, self.C[t, :, :n], out=fc)
        xp.add(fc, ig, out=c)
        xp.tanh(c, out=tc)
        xp.multiply(o, tc, out=m)
        if self.w["w_hr"] is not None:
            self.mm(self.w["w_hr"], m, out=self.hT[t + 1, :, :n])

    def final(self):
        return (self.h_rows[-1], self.xp.ascontiguousarray(self.C[-1].T))

    def begin_backward(self, dy, dstate, alloc):
        xp, H = self.xp, self.H
        T, _, B = self.A.shape
        self.dy, self.alloc = dy, alloc
        # dh is carried in rows (B, P): its GEMM, dA[t]^T W_hh, is faster that way round (the
        # transpose is a GEMM flag), and dy[t] adds to it without a transpose. dhT is its
        # (P, B) copy for the gate arithmetic.
        self.dh = dstate[0]
        self.dhT = xp.empty(self.dh.shape[::-1], dy.dtype)
        self.dc = xp.ascontiguousarray(dstate[1].T)   # carried (H, B)
        self.k = xp.empty((H, B), dy.dtype)
        self.dA = alloc((T, 4 * H, B), dy.dtype)
        self.dh_seq = None if self.w["w_hr"] is None else alloc(dy.shape, dy.dtype)   # for dW_hr
        self.w_hh_p = self.w["w_hh"][self.perm]

    def back_step(self, t, n):
        xp, H = self.xp, self.H
        dh, dhT, dc, k = self.dh[:n], self.dhT[:, :n], self.dc[:, :n], self.k[:, :n]
        dh += self.dy[t, :n]
        xp.copyto(dhT, dh.T)
        if self.dh_seq is None:
            dm = dhT
        else:
            self.dh_seq[t, :n] = dh
            dm = self.mm(self.w["w_hr"].T, dhT)
        a, z = self.A[t, :, :n], self.Z[t + 1, :, :n]
        i, f, o, g = a.reshape(4, H, -1)
        ig, m = z[:H], z[2 * H:]
        xp.multiply(m, self.TC[t, :, :n], out=k)  # o * tanh'(c) = o - m*tanh(c)
        xp.subtract(o, k, out=k)
        k *= dm
        dc += k
        d = self.dA[t, :, :n]
        d_ifo, d_g = d[:3 * H], d[3 * H:]
        xp.multiply(z, a[:3 * H], out=d_ifo)      # (i*g, f*c_{t-1}, m) * (1 - (i, f, o)): ...
        xp.subtract(z, d_ifo, out=d_ifo)          # ... g*i', c_{t-1}*f', tanh(c)*o'
        xp.multiply(ig, g, out=d_g)               # i*g' = i - i*g*g
        xp.subtract(i, d_g, out=d_g)
        d_if = d[:2 * H].reshape(2, H, -1)
        d_if *= dc
        d[2 * H:3 * H] *= dm
        d_g *= dc
        dc *= f                                    # through f into c_{t-1}
        self.mm(d.T, self.w_hh_p, out=dh)

    def finish_backward(self):
        w, unperm = self.w, self.unperm
        I = self.x.shape[-1]
        d = self.swap_last_axes(self.dA)           # (T, B, 4H), gates (i f o g)
        dw_x1 = self.outer(d, self.x1)[unperm]     # [dW_ih | db]
        grads = {"w_ih": dw_x1[:, :I].copy(), "w_hh": self.outer(d, self.h_rows[:-1])[unperm], "w_hr": None,
                 "b_ih": None, "b_hh": None}
        if w["b_ih"] is not None:   # separate arrays: see cells.bias_grads
            grads["b_ih"], grads["b_hh"] = dw_x1[:, I].copy(), dw_x1[:, I].copy()
        if self.dh_seq is not None:
            grads["w_hr"] = self.outer(self.dh_seq, self.swap_last_axes(self.Z[1:, 2 * self.H:]))
        dx = self.rows_matmul(d, w["w_ih"][self.perm])
        return dx, (self.dh, self.xp.ascontiguousarray(self.dc.T)), grads
