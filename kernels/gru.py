"""GRU (torch.nn.GRU) recurrence and BPTT kernels, gates (r | z | n) as a gate dimension.

CPU counterpart: gpurnn/cells/gru.py (the maths and the buffers these kernels run on).

# gx:    (T, B, 3H)   input projection: r and z with both biases, n with b_in only (the engine's GEMM)
# gates: (T, B, 3H)   activated r, z, n (written for active rows)
# hn:    (T, B, H)    W_hn h_{t-1} + b_hn, the part r multiplies (active rows)
# h:     (T+1, B, H)  h[0] = state0; h[t+1] written at step t (rows past their length hold h[t])
# w_hh:  (3H, H)      b_hn: (H,) (zeros without bias)   sizes: (T,) int32 active rows per step
# dy: (T, B, H)   dgh: (T, B, 3H) grads of W_hh h + b_hh   dnew: (T, B, H) grad of the input part of n_pre
# dh: (B, H)      carried gradient: dh_T on entry, dh_0 (= d state0) on exit
# ws: (2, B, P, P, S) each slice's share of dh_{t-1} (split/stepwise backward, see common.py)

The W tile has a 4th, all-zero gate column (GP = 4: tl.reshape needs a power
of two), so a program holds 4/3 of the W it needs. Layout, modes and precision: see kernels/common.py.
"""
import triton
import triton.language as tl

from . import common as cm

G, GP = 3, 4


@triton.jit
def _fwd_stream(t, ok, p_gx, p_sizes, rows, j0, B, H, S: tl.constexpr, ACC: tl.constexpr):
    """Step t's streaming inputs (active rows, gx (BB, S, 4)), loaded a step ahead: before the barrier wait."""
    n = tl.load(p_sizes + t, mask=ok, other=0)
    p_gx3, m3 = cm.gate_tile(p_gx + 3 * t.to(tl.int64) * B * H, rows, rows < n, H, j0, S, 4, 3)
    return n, tl.load(p_gx3, mask=m3, other=0.0).to(ACC)


@triton.jit
def _fwd_step(t, n, b_gx, b_h, b_w, b_bhn, p_gates, p_hn, p_h, p_bar, rows, j0, B, H,
              K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr,
              NK: tl.constexpr, RB: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Step t for one (batch tile, hidden slice): b_h (BB, S) is h_t of the slice, returns h_{t+1}; arrives
    at the barrier once h_{t+1} is stored, then stores what only backward reads."""
    active = rows < n
    cols = j0 + tl.arange(0, S)
    ok2 = (rows < B)[:, None] & (cols < H)[None, :]
    step = t.to(tl.int64) * B * H
    # W_hh h for all gates of the slice: (BB, S, 4), gate 3 is zero padding
    b_hw = cm.h_dot_w(b_h, b_w, p_h, t, rows, B, H, K1, K2, SINGLE, NK, RB, PREC, ACC, DOT)
    b_a = tl.reshape(b_hw, (rows.shape[0], S, 4))
    b_pre = b_a + b_gx   # r and z pre-activations (gates 0, 1)
    r, z = cm.sigmoid(cm.gate(b_pre, 0), DOT), cm.sigmoid(cm.gate(b_pre, 1), DOT)
    hn = cm.gate(b_a, 2) + b_bhn[None, :]
    new = cm.tanh(cm.gate(b_gx, 2) + r * hn, DOT)
    b_h = tl.where(active[:, None], (b_h - new) * z + new, b_h)
    cm.publish(p_h, p_bar, t, b_h, rows, cols, B, H, SYNC)
    off2 = rows[:, None] * H + cols[None, :]
    g = tl.arange(0, 4)[None, None, :]
    p_g3, m3 = cm.gate_tile(p_gates + 3 * step, rows, active, H, j0, S, 4, 3)
    tl.store(p_g3, tl.where(g == 0, r[:, :, None], tl.where(g == 1, z[:, :, None], new[:, :, None])), mask=m3)
    tl.store(p_hn + step + off2, hn, mask=ok2 & active[:, None])
    return b_h


@triton.jit(do_not_specialize=["t_start", "n_steps", "tile0"])
def _fwd_kernel(p_gx, p_gates, p_hn, p_h, p_w, p_bhn, p_sizes, p_bar, p_doff, t_start, n_steps, B, H, tile0,
                BB: tl.constexpr, RB: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr,
                P: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr, DIRS: tl.constexpr, NK: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    if DIRS > 1:   # both directions of a layer in this launch (cm.direction_plan)
        p_gx = cm.for_direction(p_gx, p_doff, 0)
        p_gates = cm.for_direction(p_gates, p_doff, 1)
        p_hn = cm.for_direction(p_hn, p_doff, 2)
        p_h = cm.for_direction(p_h, p_doff, 3)
        p_w = cm.for_direction(p_w, p_doff, 4)
        p_bhn = cm.for_direction(p_bhn, p_doff, 5)
        p_sizes = cm.for_direction(p_sizes, p_doff, 6)
        p_bar = cm.for_direction(p_bar, p_doff, 7)
    rows = (tile0 + pid_b) * BB + tl.arange(0, BB)
    j0 = pid_s * S
    cols = j0 + tl.arange(0, S)
    p_bar += tile0 + pid_b
    b_w = cm.load_w_fwd(p_w, H, H, j0, K1, K2, S, 4, 3, DOT)   # (K, S*4) in K parts, on chip for all steps
    b_bhn = tl.load(p_bhn + cols, mask=cols < H, other=0.0).to(ACC)
    b_h = cm.load_rows(p_h + t_start.to(tl.int64) * B * H, rows, cols, H, rows < B, cols < H, ACC)
    n, b_gx = _fwd_stream(t_start, t_start >= 0, p_gx, p_sizes, rows, j0, B, H, S, ACC)
    for i in range(n_steps):
        b_h = _fwd_step(t_start + i, n, b_gx, b_h, b_w, b_bhn, p_gates, p_hn, p_h, p_bar,
                        rows, j0, B, H, K1, K2, S, SINGLE, SYNC, NK, RB, ACC, DOT, PREC)
        n, b_gx = _fwd_stream(t_start + i + 1, i + 1 < n_steps, p_gx, p_sizes, rows, j0, B, H, S, ACC)
        if SYNC:
            cm.wait(p_bar, (i + 1) * P)


@triton.jit
def _bwd_point(t, b_dh, p_dy, p_gates, p_hn, p_h, p_dgh, p_dnew, p_sizes, rows, j0, B, H,
               S: tl.constexpr, ACC: tl.constexpr):
    """Step t's pointwise part: returns (dh_t, dh_t * z_t, dgh_t (BB, S, 4)); rows past their length
    get zero gradients (written) and keep dh. The coefficients come from what the forward saved:
    d n_pre/d h_t = (1-z)(1-n^2), d z_pre/d h_t = (h_{t-1} - n) z(1-z), d r_pre/d n_pre = hn r(1-r)."""
    n = tl.load(p_sizes + t)
    active = rows < n
    cols = j0 + tl.arange(0, S)
    ok2 = active[:, None] & (cols < H)[None, :]
    step = t.to(tl.int64) * B * H
    off2 = rows[:, None] * H + cols[None, :]
    b_dh += tl.load(p_dy + step + off2, mask=ok2, other=0.0).to(ACC)
    p_g3, m3 = cm.gate_tile(p_gates + 3 * step, rows, active, H, j0, S, 4, 3)
    b_g = tl.load(p_g3, mask=m3, other=0.0).to(ACC)   # r, z, n
    r, z, new = cm.gate(b_g, 0), cm.gate(b_g, 1), cm.gate(b_g, 2)
    hn = tl.load(p_hn + step + off2, mask=ok2, other=0.0).to(ACC)
    h_prev = tl.load(p_h + step + off2, mask=ok2, other=0.0).to(ACC)
    dnew = tl.where(ok2, b_dh * (1 - z) * (1 - new * new), 0.0)   # rows past their length: zero
    k_r = hn * r * (1 - r)
    k_z = (h_prev - new) * z * (1 - z)
    # d(W_hh h + b_hh) per gate: r <- dnew * k_r, z <- dh * k_z, n <- dnew * r
    g = tl.arange(0, 4)[None, None, :]
    coef = tl.where(g == 0, k_r[:, :, None], tl.where(g == 1, k_z[:, :, None], r[:, :, None]))
    b_d = tl.where(g == 1, b_dh[:, :, None], dnew[:, :, None]) * coef
    b_d = tl.where(m3, b_d, 0.0)
    p_d3, valid3 = cm.gate_tile(p_dgh + 3 * step, rows, rows < B, H, j0, S, 4, 3)
    tl.store(p_d3, b_d, mask=valid3)
    tl.store(p_dnew + step + off2, dnew, mask=(rows < B)[:, None] & (cols < H)[None, :])
    return b_dh, b_dh * z, b_d


@triton.jit(do_not_specialize=["T", "t_start", "n_steps", "tile0"])
def _bwd_kernel(p_dy, p_gates, p_hn, p_h, p_dgh, p_dnew, p_dh, p_w, p_ws, p_sizes, p_bar, p_doff,
                T, t_start, n_steps, B, H, tile0,
                BB: tl.constexpr, RB: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr,
                P: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr, DIRS: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Iterations t = t_start, t_start-1, ...: carry in dh_t = dgh_{t+1} W_hh (summed shares) +
    dh_{t+1} z_{t+1} (t+1 < T), then step t (t >= 0) and its share of dgh_t W_hh
    (see elman._bwd_kernel; T+1 iterations in all). Unlike the other cells, the step's loads and
    stores stay before its dot: held across the dot and the barrier (loaded a step ahead, stored
    after the arrival), they spilled 16-340 B at H >= 512 (compile_check).
    """
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    if DIRS > 1:   # both directions of a layer in this launch (cm.direction_plan)
        p_dy = cm.for_direction(p_dy, p_doff, 0)
        p_gates = cm.for_direction(p_gates, p_doff, 1)
        p_hn = cm.for_direction(p_hn, p_doff, 2)
        p_h = cm.for_direction(p_h, p_doff, 3)
        p_dgh = cm.for_direction(p_dgh, p_doff, 4)
        p_dnew = cm.for_direction(p_dnew, p_doff, 5)
        p_dh = cm.for_direction(p_dh, p_doff, 6)
        p_w = cm.for_direction(p_w, p_doff, 7)
        p_ws = cm.for_direction(p_ws, p_doff, 8)
        p_sizes = cm.for_direction(p_sizes, p_doff, 9)
        p_bar = cm.for_direction(p_bar, p_doff, 10)
    rows = (tile0 + pid_b) * BB + tl.arange(0, BB)
    j0 = pid_s * S
    cols = j0 + tl.arange(0, S)
    b_w = cm.load_w_fwd(p_w, H, H, j0, K1, K2, S, 4, 3, DOT)   # (K, S*4) parts: the slice's gate rows^T, on chip
    ok2 = (rows < B)[:, None] & (cols < H)[None, :]
    off2 = rows[:, None] * H + cols[None, :]
    b_dh = tl.load(p_dh + off2, mask=ok2, other=0.0).to(ACC)
    # dh_{t+1} z_{t+1} of the step before this window (stepwise: the previous launch ran it)
    b_keep = tl.zeros((BB, S), ACC)
    if t_start + 1 < T:
        p_z = p_gates + (t_start + 1).to(tl.int64) * B * 3 * H + H
        b_keep = b_dh * tl.load(p_z + rows[:, None] * 3 * H + cols[None, :],
                                mask=(rows < tl.load(p_sizes + t_start + 1))[:, None] & (cols < H)[None, :],
                                other=0.0).to(ACC)
    b_prod = tl.zeros((BB, K1), ACC)
    for i in range(n_steps):
        t = t_start - i
        if t + 1 < T:   # rows active at t+1 take their new dh; the others pass dh through
            b_new = cm.next_step_product(b_prod, p_ws, t, rows, cols, B, H, P, S, SINGLE, ACC)
            b_dh = tl.where((rows < tl.load(p_sizes + t + 1))[:, None], b_new + b_keep, b_dh)
        if t >= 0:
            b_dh, b_keep, b_d = _bwd_point(t, b_dh, p_dy, p_gates, p_hn, p_h, p_dgh, p_dnew,
                                           p_sizes, rows, j0, B, H, S, ACC)
            # (BB, S, 4) -> (BB, S*4): column s*4 + g, the W tile's column order
            b_d2 = tl.reshape(b_d, (BB, S * 4))
            b_op = cm.pin(b_d2).to(DOT)
            b_prod = cm.share_dh(p_ws, b_op, b_w, t, pid_s, rows, B, H, P, S, K2, SINGLE, RB, PREC, ACC)
        if SYNC:
            cm.grid_barrier(p_bar + tile0 + pid_b, (i + 1) * P)
    tl.store(p_dh + off2, b_dh, mask=ok2)


def _setup(c, io_dtype, direction):
    T, B, h, cfg, consts = cm.setup(c, c.H, GP, io_dtype, direction)
    return T, B, c.H, h, cfg, consts


def forward(cs, sizes_list, io_dtype=None):
    """c.step(t, sizes[t]) for t = 0..T-1 plus the engine's state hold, fused, for each cell of cs
    (a layer's directions, one launch for both: cm.direction_plan) (gpurnn.cells.kernels)."""
    T, B, H, h, cfg, consts = _setup(cs[0], io_dtype, "fwd")
    if T == 0:
        return
    t = cm.as_tensor
    plan = cm.direction_plan(cfg, [[t(c.gx), t(c.gates), t(c.hn), t(c.h),
                                     t(c.w["w_hh"]).contiguous(),
                                     h.new_zeros(H) if c.b_hn is None else t(c.b_hn).contiguous(),
                                     cm.sizes_tensor(sizes, h), cm.barrier_counters(cfg, B, h)]
                                    for c, sizes in zip(cs, sizes_list)])
    cm.run_windows(cfg, T, lambda t0, n: cm.launch_directions(_fwd_kernel, cfg, B, plan, t0, n, B, H, **consts))


def backward(cs, sizes_list, io_dtype=None):
    """c.back_step(t, sizes[t]) for t = T-1..0, fused, for each cell of cs; leaves d state0 in c.dh."""
    T, B, H, h, cfg, consts = _setup(cs[0], io_dtype, "bwd")
    if T == 0:
        return
    t = cm.as_tensor
    plan = cm.direction_plan(cfg, [[t(c.dy), t(c.gates), t(c.hn), t(c.h), t(c.dgh), t(c.dnew),
                                     t(c.dh), t(c.w["w_hh"]).contiguous(), cm.partials_workspace(cfg, B, h),
                                     cm.sizes_tensor(sizes, h), cm.barrier_counters(cfg, B, h)]
                                    for c, sizes in zip(cs, sizes_list)])
    # T+1 iterations t = T-1 .. -1 (see _bwd_kernel)
    cm.run_windows(cfg, T + 1, lambda t0, n: cm.launch_directions(
        _bwd_kernel, cfg, B, plan, T, t0 - 1, n, B, H, **consts), reverse=True)


def compile_targets(hidden_size, dtype, arch=None):
    """(name, jit_fn, signature, constexprs) for every config the launchers use at this size and dtype."""
    ptr = cm.buffer_ptr(dtype)
    acc, dot, prec = cm.dtype_constexprs(dtype)
    sigs = dict(fwd=dict(p_gx=ptr, p_gates=ptr, p_hn=ptr, p_h=ptr, p_w=ptr, p_bhn=ptr, p_sizes="*i32",
                         p_bar="*i32", p_doff="*i64", t_start="i32", n_steps="i32", tile0="i32", B="i32", H="i32"),
                bwd=dict(p_dy=ptr, p_gates=ptr, p_hn=ptr, p_h=ptr, p_dgh=ptr, p_dnew=ptr,
                         p_dh=ptr, p_w=ptr, p_ws=ptr, p_sizes="*i32", p_bar="*i32", p_doff="*i64", T="i32",
                         t_start="i32", n_steps="i32", tile0="i32", B="i32", H="i32"))
    kernels = dict(fwd=_fwd_kernel, bwd=_bwd_kernel)
    return [t for d in ("fwd", "bwd") for cfg in cm.compile_configs(hidden_size, dtype, GP, d, arch)
            for t in cm.direction_targets(f"gru_{d}", kernels[d], sigs[d],
                                          cm.kernel_consts(cfg, d, acc, dot, prec), cfg)]
