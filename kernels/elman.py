"""Elman (torch.nn.RNN) recurrence and BPTT kernels: h_t = phi(gx_t + W_hh h_{t-1}).

CPU counterpart: gpurnn/cells/elman.py (the maths and the buffers these kernels run on).

# gx: (T, B, H)   input projection with both biases (the engine's GEMM)
# h:  (T+1, B, H) h[0] = state0; h[t+1] written at step t (rows past their length hold h[t])
# w_hh: (H, H)    sizes: (T,) int32 active rows per step (a prefix)
# dy: (T, B, H)   dz: (T, B, H) pre-activation gradient, written for active rows
# dh: (B, H)      carried gradient: dh_T on entry, dh_0 (= d state0) on exit
# ws: (2, B, P, P, S) each slice's share of dh_{t-1} (split/stepwise backward, see common.py)

Layout, modes and precision: see kernels/common.py.
"""
import triton
import triton.language as tl

from . import common as cm

G, GP = 1, 1


@triton.jit
def _fwd_stream(t, ok, p_gx, p_sizes, rows, cols, B, H, ACC: tl.constexpr):
    """Step t's streaming inputs (active rows, gx), loaded a step ahead: before the barrier wait."""
    n = tl.load(p_sizes + t, mask=ok, other=0)
    return n, cm.load_rows(p_gx + t.to(tl.int64) * B * H, rows, cols, H, rows < n, cols < H, ACC)


@triton.jit
def _fwd_step(t, n, b_gx, b_h, b_w, p_h, p_bar, rows, cols, B, H, nonlin,
              K1: tl.constexpr, K2: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr, NK: tl.constexpr,
              RB: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Step t for one (batch tile, hidden slice): b_h (BB, S) is h_t of the slice, returns h_{t+1};
    arrives at the barrier once h_{t+1} is stored."""
    active = rows < n
    b_z = cm.h_dot_w(b_h, b_w, p_h, t, rows, B, H, K1, K2, SINGLE, NK, RB, PREC, ACC, DOT) + b_gx
    b_h = tl.where(active[:, None], cm.activation(b_z, nonlin, DOT), b_h)
    cm.publish(p_h, p_bar, t, b_h, rows, cols, B, H, SYNC)
    return b_h


@triton.jit(do_not_specialize=["t_start", "n_steps", "tile0"])
def _fwd_kernel(p_gx, p_h, p_w, p_sizes, p_bar, p_doff, t_start, n_steps, B, H, nonlin, tile0,
                BB: tl.constexpr, RB: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr,
                P: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr, DIRS: tl.constexpr, NK: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    if DIRS > 1:   # both directions of a layer in this launch (cm.direction_plan)
        p_gx = cm.for_direction(p_gx, p_doff, 0)
        p_h = cm.for_direction(p_h, p_doff, 1)
        p_w = cm.for_direction(p_w, p_doff, 2)
        p_sizes = cm.for_direction(p_sizes, p_doff, 3)
        p_bar = cm.for_direction(p_bar, p_doff, 4)
    rows = (tile0 + pid_b) * BB + tl.arange(0, BB)
    j0 = pid_s * S
    cols = j0 + tl.arange(0, S)
    p_bar += tile0 + pid_b
    b_w = cm.load_w_fwd(p_w, H, H, j0, K1, K2, S, 1, 1, DOT)   # (K, S) in K parts, on chip for all steps
    b_h = cm.load_rows(p_h + t_start.to(tl.int64) * B * H, rows, cols, H, rows < B, cols < H, ACC)
    n, b_gx = _fwd_stream(t_start, t_start >= 0, p_gx, p_sizes, rows, cols, B, H, ACC)
    for i in range(n_steps):
        b_h = _fwd_step(t_start + i, n, b_gx, b_h, b_w, p_h, p_bar, rows, cols, B, H, nonlin,
                        K1, K2, SINGLE, SYNC, NK, RB, ACC, DOT, PREC)
        n, b_gx = _fwd_stream(t_start + i + 1, i + 1 < n_steps, p_gx, p_sizes, rows, cols, B, H, ACC)
        if SYNC:
            cm.wait(p_bar, (i + 1) * P)


@triton.jit
def _bwd_stream(t, p_dy, p_h, p_sizes, rows, cols, B, H, ACC: tl.constexpr):
    """Step t's streaming inputs (active rows, dy_t, y_t = h_{t+1}), loaded a step ahead; none for t < 0."""
    n = tl.load(p_sizes + t, mask=t >= 0, other=0)
    active, col_ok = rows < n, cols < H
    step = t.to(tl.int64) * B * H
    b_dy = cm.load_rows(p_dy + step, rows, cols, H, active, col_ok, ACC)
    return n, b_dy, cm.load_rows(p_h + step + B * H, rows, cols, H, active, col_ok, ACC)


@triton.jit(do_not_specialize=["T", "t_start", "n_steps", "tile0"])
def _bwd_kernel(p_dy, p_h, p_dz, p_dh, p_w, p_ws, p_sizes, p_bar, p_doff, T, t_start, n_steps, B, H, nonlin, tile0,
                BB: tl.constexpr, RB: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr,
                P: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr, DIRS: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Iterations t = t_start, t_start-1, ...: carry in dh_t from step t+1's shares (t+1 < T), then step t
    (t >= 0): dh_t += dy_t, dz_t = dh_t * phi'(z_t) for the active rows, and its share of
    dh_{t-1} = dz_t W_hh.

    The whole backward is t = T-1 .. -1 (T+1 iterations): the last one only
    sums dz_0's shares into dh_0. One barrier per iteration in split mode: arrive once the
    share is stored, wait after dz is stored and the next step's inputs are loaded.
    """
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    if DIRS > 1:   # both directions of a layer in this launch (cm.direction_plan)
        p_dy = cm.for_direction(p_dy, p_doff, 0)
        p_h = cm.for_direction(p_h, p_doff, 1)
        p_dz = cm.for_direction(p_dz, p_doff, 2)
        p_dh = cm.for_direction(p_dh, p_doff, 3)
        p_w = cm.for_direction(p_w, p_doff, 4)
        p_ws = cm.for_direction(p_ws, p_doff, 5)
        p_sizes = cm.for_direction(p_sizes, p_doff, 6)
        p_bar = cm.for_direction(p_bar, p_doff, 7)
    rows = (tile0 + pid_b) * BB + tl.arange(0, BB)
    j0 = pid_s * S
    cols = j0 + tl.arange(0, S)
    p_bar += tile0 + pid_b
    b_w = cm.load_w_fwd(p_w, H, H, j0, K1, K2, S, 1, 1, DOT)   # (K, S) parts: W_hh[slice, :]^T, on chip
    b_dh = cm.load_rows(p_dh, rows, cols, H, rows < B, cols < H, ACC)
    b_prod = tl.zeros((BB, K1), ACC)
    n, b_dy, b_y = _bwd_stream(t_start, p_dy, p_h, p_sizes, rows, cols, B, H, ACC)
    for i in range(n_steps):
        t = t_start - i
        if t + 1 < T:   # rows active at t+1 take dz_{t+1} W_hh; the others pass dh through
            b_new = cm.next_step_product(b_prod, p_ws, t, rows, cols, B, H, P, S, SINGLE, ACC)
            b_dh = tl.where((rows < tl.load(p_sizes + t + 1))[:, None], b_new, b_dh)
        if t >= 0:
            active = rows < n
            b_dh += b_dy
            b_dz = tl.where(active[:, None], cm.times_activation_grad(b_dh, b_y, nonlin), 0.0)
            b_op = cm.pin(b_dz).to(DOT)
            b_prod = cm.share_dh(p_ws, b_op, b_w, t, pid_s, rows, B, H, P, S, K2, SINGLE, RB, PREC, ACC)
            if SYNC:
                cm.arrive(p_bar)
            tl.store(p_dz + t.to(tl.int64) * B * H + rows[:, None] * H + cols[None, :], b_dz,
                     mask=active[:, None] & (cols < H)[None, :])
        else:
            if SYNC:
                cm.arrive(p_bar)
        n, b_dy, b_y = _bwd_stream(t - 1, p_dy, p_h, p_sizes, rows, cols, B, H, ACC)
        if SYNC:
            cm.wait(p_bar, (i + 1) * P)
    tl.store(p_dh + rows[:, None] * H + cols[None, :], b_dh, mask=(rows < B)[:, None] & (cols < H)[None, :])


def _setup(c, io_dtype, direction):
    H = c.gx.shape[2]
    T, B, h, cfg, consts = cm.setup(c, H, GP, io_dtype, direction)
    return T, B, H, h, cfg, consts, cm.NONLINEARITY_KIND[c.nonlinearity]


def forward(cs, sizes_list, io_dtype=None):
    """c.step(t, sizes[t]) for t = 0..T-1 plus the engine's state hold, fused, for each cell of cs
    (a layer's directions, one launch for both: cm.direction_plan) (gpurnn.cells.kernels)."""
    T, B, H, h, cfg, consts, nonlin = _setup(cs[0], io_dtype, "fwd")
    if T == 0:
        return
    t = cm.as_tensor
    plan = cm.direction_plan(cfg, [[t(c.gx), t(c.h),
                                     t(c.w["w_hh"]).contiguous(), cm.sizes_tensor(sizes, h),
                                     cm.barrier_counters(cfg, B, h)] for c, sizes in zip(cs, sizes_list)])
    cm.run_windows(cfg, T, lambda t0, n: cm.launch_directions(
        _fwd_kernel, cfg, B, plan, t0, n, B, H, nonlin, **consts))


def backward(cs, sizes_list, io_dtype=None):
    """c.back_step(t, sizes[t]) for t = T-1..0, fused, for each cell of cs; leaves d state0 in c.dh."""
    T, B, H, h, cfg, consts, nonlin = _setup(cs[0], io_dtype, "bwd")
    if T == 0:
        return
    t = cm.as_tensor
    plan = cm.direction_plan(cfg, [[t(c.dy), t(c.h), t(c.dz), t(c.dh), t(c.w["w_hh"]).contiguous(),
                                     cm.partials_workspace(cfg, B, h), cm.sizes_tensor(sizes, h),
                                     cm.barrier_counters(cfg, B, h)] for c, sizes in zip(cs, sizes_list)])
    # T+1 iterations t = T-1 .. -1 (see _bwd_kernel)
    cm.run_windows(cfg, T + 1, lambda t0, n: cm.launch_directions(
        _bwd_kernel, cfg, B, plan, T, t0 - 1, n, B, H, nonlin, **consts), reverse=True)


def compile_targets(hidden_size, dtype, arch=None):
    """(name, jit_fn, signature, constexprs) for every config the launchers use at this size and dtype."""
    ptr = cm.buffer_ptr(dtype)
    acc, dot, prec = cm.dtype_constexprs(dtype)
    sigs = dict(fwd=dict(p_gx=ptr, p_h=ptr, p_w=ptr, p_sizes="*i32", p_bar="*i32", p_doff="*i64",
                         t_start="i32", n_steps="i32", tile0="i32", B="i32", H="i32", nonlin="i32"),
                bwd=dict(p_dy=ptr, p_h=ptr, p_dz=ptr, p_dh=ptr, p_w=ptr, p_ws=ptr, p_sizes="*i32", p_bar="*i32",
                         p_doff="*i64", T="i32", t_start="i32", n_steps="i32", tile0="i32", B="i32", H="i32",
                         nonlin="i32"))
    kernels = dict(fwd=_fwd_kernel, bwd=_bwd_kernel)
    return [t for d in ("fwd", "bwd") for cfg in cm.compile_configs(hidden_size, dtype, GP, d, arch)
            for t in cm.direction_targets(f"elman_{d}", kernels[d], sigs[d],
                                          cm.kernel_consts(cfg, d, acc, dot, prec), cfg)]
