"""LSTM (torch.nn.LSTM) recurrence and BPTT kernels, gates (i | f | g | o) as a gate dimension.

CPU counterparts: gpurnn/cells/lstm.py (the maths and the buffers these kernels run on) and gpurnn/cpu/.

# gx:    (T, B, 4H)   input projection with both biases (the engine's GEMM)
# gates: (T, B, 4H)   activated i, f, g, o (written for active rows)
# h, c:  (T+1, B, H)  [0] = state0; [t+1] written at step t (rows past their length hold)
# tanh_c: (T, B, H)   tanh(c_t) (active rows)
# w_hh:  (4H, H)      sizes: (T,) int32 active rows per step (a prefix)
# dy: (T, B, H)  dgates: (T, B, 4H)  dh, dc: (B, H) carried (dstate_T in, dstate_0 out)
# ws: (2, B, P, P, S) each slice's share of dh_{t-1} (split/stepwise backward, see common.py)

proj_size > 0 (W_hr) is not fused: the engine runs its xp loop for it.
Gluon variants of the split/stepwise fp16/bf16 kernels (W in registers): kernels/lstm_gluon.py.
Layout, modes and precision: see kernels/common.py.
"""
import triton
import triton.language as tl

from . import common as cm

try:   # the Gluon variants (opt-in, GPU only); a Triton without the Gluon API they use runs the kernels below
    from . import lstm_gluon as GLUON
except ImportError:
    GLUON = None

G, GP = 4, 4


@triton.jit
def _fwd_stream(t, ok, p_gx, p_sizes, rows, j0, B, H, S: tl.constexpr, ACC: tl.constexpr):
    """Step t's streaming inputs (active rows, gx (BB, S, 4)), loaded a step ahead: before the barrier wait."""
    n = tl.load(p_sizes + t, mask=ok, other=0)
    p_gx3, m3 = cm.gate_tile(p_gx + 4 * t.to(tl.int64) * B * H, rows, rows < n, H, j0, S, 4, 4)
    return n, tl.load(p_gx3, mask=m3, other=0.0).to(ACC)


@triton.jit
def _fwd_step(t, n, b_gx, b_h, b_c, b_w, p_gates, p_h, p_c, p_tc, p_bar, rows, j0, B, H,
              K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr,
              NK: tl.constexpr, RB: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Step t for one (batch tile, hidden slice): (h_t, c_t) of the slice -> (h_{t+1}, c_{t+1}); arrives at
    the barrier once h_{t+1} is stored, then stores what only backward reads."""
    active = rows < n
    cols = j0 + tl.arange(0, S)
    ok2 = (rows < B)[:, None] & (cols < H)[None, :]
    step = t.to(tl.int64) * B * H
    b_hw = cm.h_dot_w(b_h, b_w, p_h, t, rows, B, H, K1, K2, SINGLE, NK, RB, PREC, ACC, DOT)
    b_a = tl.reshape(b_hw, (rows.shape[0], S, 4)) + b_gx
    b_a = cm.lstm_gates(b_a, tl.arange(0, 4)[None, None, :] == 2, DOT)   # one transcendental for all gates
    g_i, g_f, g_g, g_o = cm.split_gates(b_a)
    c_new = g_f * b_c + g_i * g_g
    tc = cm.tanh(c_new, DOT)
    b_c = tl.where(active[:, None], c_new, b_c)
    b_h = tl.where(active[:, None], g_o * tc, b_h)
    cm.publish(p_h, p_bar, t, b_h, rows, cols, B, H, SYNC)
    off2 = rows[:, None] * H + cols[None, :]
    p_g3, m3 = cm.gate_tile(p_gates + 4 * step, rows, active, H, j0, S, 4, 4)
    tl.store(p_g3, b_a, mask=m3)
    tl.store(p_tc + step + off2, tc, mask=ok2 & active[:, None])
    tl.store(p_c + step + B * H + off2, b_c, mask=ok2)
    return b_h, b_c


@triton.jit(do_not_specialize=["t_start", "n_steps", "tile0"])
def _fwd_kernel(p_gx, p_gates, p_h, p_c, p_tc, p_w, p_sizes, p_bar, p_doff, t_start, n_steps, B, H, tile0,
                BB: tl.constexpr, RB: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr,
                P: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr, DIRS: tl.constexpr, NK: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    if DIRS > 1:   # both directions of a layer in this launch (cm.direction_plan)
        p_gx = cm.for_direction(p_gx, p_doff, 0)
        p_gates = cm.for_direction(p_gates, p_doff, 1)
        p_h = cm.for_direction(p_h, p_doff, 2)
        p_c = cm.for_direction(p_c, p_doff, 3)
        p_tc = cm.for_direction(p_tc, p_doff, 4)
        p_w = cm.for_direction(p_w, p_doff, 5)
        p_sizes = cm.for_direction(p_sizes, p_doff, 6)
        p_bar = cm.for_direction(p_bar, p_doff, 7)
    rows = (tile0 + pid_b) * BB + tl.arange(0, BB)
    j0 = pid_s * S
    cols = j0 + tl.arange(0, S)
    p_bar += tile0 + pid_b
    b_w = cm.load_w_fwd(p_w, H, H, j0, K1, K2, S, 4, 4, DOT)   # (K, S*4) in K parts, on chip for all steps
    start = t_start.to(tl.int64) * B * H
    b_h = cm.load_rows(p_h + start, rows, cols, H, rows < B, cols < H, ACC)
    b_c = cm.load_rows(p_c + start, rows, cols, H, rows < B, cols < H, ACC)
    n, b_gx = _fwd_stream(t_start, t_start >= 0, p_gx, p_sizes, rows, j0, B, H, S, ACC)
    for i in range(n_steps):
        b_h, b_c = _fwd_step(t_start + i, n, b_gx, b_h, b_c, b_w, p_gates, p_h, p_c, p_tc, p_bar,
                             rows, j0, B, H, K1, K2, S, SINGLE, SYNC, NK, RB, ACC, DOT, PREC)
        n, b_gx = _fwd_stream(t_start + i + 1, i + 1 < n_steps, p_gx, p_sizes, rows, j0, B, H, S, ACC)
        if SYNC:
            cm.wait(p_bar, (i + 1) * P)


@triton.jit
def _bwd_stream(t, p_dy, p_gates, p_c, p_tc, p_sizes, rows, j0, B, H, S: tl.constexpr, ACC: tl.constexpr):
    """Step t's streaming inputs, loaded a step ahead (none for t < 0): active rows, dy, and the
    forward's gates (i, f, g, o) (BB, S, 4), c_{t-1} and tanh(c_t), from which `_coef` derives
    what backward needs (per step, instead of passes over (T, B, 4H) arrays before the backward)."""
    n = tl.load(p_sizes + t, mask=t >= 0, other=0)
    active = rows < n
    cols = j0 + tl.arange(0, S)
    ok2 = active[:, None] & (cols < H)[None, :]
    step = t.to(tl.int64) * B * H
    off2 = rows[:, None] * H + cols[None, :]
    b_dy = tl.load(p_dy + step + off2, mask=ok2, other=0.0).to(ACC)
    p_g3, m3 = cm.gate_tile(p_gates + 4 * step, rows, active, H, j0, S, 4, 4)
    b_a = tl.load(p_g3, mask=m3, other=0.0).to(ACC)
    b_cp = tl.load(p_c + step + off2, mask=ok2, other=0.0).to(ACC)
    return n, b_dy, b_a, b_cp, tl.load(p_tc + step + off2, mask=ok2, other=0.0).to(ACC)


@triton.jit
def _coef(a, c_prev, tc):
    """(coef (BB, S, 4), o tanh'(c_t), f) from the gates a (i, f, g, o), c_{t-1} and tanh(c_t):
    coef = d pre-activation / d(dc | dc | dc | dh) = (g i' | c_{t-1} f' | i g' | tanh(c_t) o'),
    sigmoid' = s (1 - s), tanh' = 1 - g^2. Rows loaded as zeros (inactive) get coef 0 and f 0."""
    i, f, g, o = cm.split_gates(a)
    k = tl.arange(0, 4)[None, None, :]
    slope = tl.where(k == 2, 1.0 - a * a, a * (1.0 - a))
    factor = tl.where(k == 0, g[:, :, None], tl.where(k == 1, c_prev[:, :, None],
                                                       tl.where(k == 2, i[:, :, None], tc[:, :, None])))
    return slope * factor, o * (1.0 - tc * tc), f


@triton.jit(do_not_specialize=["T", "t_start", "n_steps", "tile0"])
def _bwd_kernel(p_dy, p_gates, p_c, p_tc, p_dgates, p_dh, p_dc, p_w, p_ws, p_sizes, p_bar, p_doff,
                T, t_start, n_steps, B, H, tile0,
                BB: tl.constexpr, RB: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr,
                P: tl.constexpr, SINGLE: tl.constexpr, SYNC: tl.constexpr, DIRS: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Iterations t = t_start, t_start-1, ...: carry in dh_t from step t+1's shares (t+1 < T), then step t
    (t >= 0) and its share of dh_{t-1} = dgates_t W_hh (see elman._bwd_kernel; T+1 iterations in all).
    """
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    if DIRS > 1:   # both directions of a layer in this launch (cm.direction_plan)
        p_dy = cm.for_direction(p_dy, p_doff, 0)
        p_gates = cm.for_direction(p_gates, p_doff, 1)
        p_c = cm.for_direction(p_c, p_doff, 2)
        p_tc = cm.for_direction(p_tc, p_doff, 3)
        p_dgates = cm.for_direction(p_dgates, p_doff, 4)
        p_dh = cm.for_direction(p_dh, p_doff, 5)
        p_dc = cm.for_direction(p_dc, p_doff, 6)
        p_w = cm.for_direction(p_w, p_doff, 7)
        p_ws = cm.for_direction(p_ws, p_doff, 8)
        p_sizes = cm.for_direction(p_sizes, p_doff, 9)
        p_bar = cm.for_direction(p_bar, p_doff, 10)
    rows = (tile0 + pid_b) * BB + tl.arange(0, BB)
    j0 = pid_s * S
    cols = j0 + tl.arange(0, S)
    p_bar += tile0 + pid_b
    b_w = cm.load_w_fwd(p_w, H, H, j0, K1, K2, S, 4, 4, DOT)   # (K, S*4) parts: the slice's gate rows^T, on chip
    ok2 = (rows < B)[:, None] & (cols < H)[None, :]
    off2 = rows[:, None] * H + cols[None, :]
    b_dh = tl.load(p_dh + off2, mask=ok2, other=0.0).to(ACC)
    b_dc = tl.load(p_dc + off2, mask=ok2, other=0.0).to(ACC)
    b_prod = tl.zeros((BB, K1), ACC)
    n, b_dy, b_a, b_cp, b_tc = _bwd_stream(t_start, p_dy, p_gates, p_c, p_tc, p_sizes, rows, j0, B, H, S, ACC)
    is_o = tl.arange(0, 4)[None, None, :] == 3
    for i in range(n_steps):
        t = t_start - i
        if t + 1 < T:   # rows active at t+1 take dgates_{t+1} W_hh; the others pass dh through
            b_new = cm.next_step_product(b_prod, p_ws, t, rows, cols, B, H, P, S, SINGLE, ACC)
            b_dh = tl.where((rows < tl.load(p_sizes + t + 1))[:, None], b_new, b_dh)
        if t >= 0:
            b_coef, b_odt, b_f = _coef(b_a, b_cp, b_tc)
            b_dh += b_dy
            active = (rows < n)[:, None]   # inactive rows keep dc (their zero coefficients times an inf dh: NaN)
            b_dc = tl.where(active, b_dc + b_dh * b_odt, b_dc)
            b_d = b_coef * tl.where(is_o, b_dh[:, :, None], b_dc[:, :, None])
            b_dc = tl.where(active, b_dc * b_f, b_dc)
            # (BB, S, 4) -> (BB, S*4): column s*4 + g, the W tile's column order
            b_d = b_d.to(p_dgates.dtype.element_ty)   # rounded once: what is stored is what the dot reads
            b_op = cm.pin(tl.reshape(b_d, (BB, S * 4))).to(DOT)
            b_prod = cm.share_dh(p_ws, b_op, b_w, t, pid_s, rows, B, H, P, S, K2, SINGLE, RB, PREC, ACC)
            if SYNC:
                cm.arrive(p_bar)
            p_d3, m3 = cm.gate_tile(p_dgates + 4 * t.to(tl.int64) * B * H, rows, rows < n, H, j0, S, 4, 4)
            tl.store(p_d3, b_d, mask=m3)
        else:
            if SYNC:
                cm.arrive(p_bar)
        n, b_dy, b_a, b_cp, b_tc = _bwd_stream(t - 1, p_dy, p_gates, p_c, p_tc, p_sizes, rows, j0, B, H, S, ACC)
        if SYNC:
            cm.wait(p_bar, (i + 1) * P)
    tl.store(p_dh + off2, b_dh, mask=ok2)
    tl.store(p_dc + off2, b_dc, mask=ok2)


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
    plan = cm.direction_plan(cfg, [[t(c.gx), t(c.gates), t(c.h), t(c.c), t(c.tanh_c),
                                     t(c.w["w_hh"]).contiguous(),
                                     cm.sizes_tensor(sizes, h), cm.barrier_counters(cfg, B, h)]
                                    for c, sizes in zip(cs, sizes_list)])
    gluon = GLUON and cm.gluon_applies(cfg, "fwd", cm.w_elem_bytes(consts["DOT"]), GP, h.device)
    kernel = GLUON._fwd_gluon if gluon else _fwd_kernel
    cm.run_windows(cfg, T, lambda t0, n: cm.launch_directions(kernel, cfg, B, plan, t0, n, B, H, **consts))


def backward(cs, sizes_list, io_dtype=None):
    """c.back_step(t, sizes[t]) for t = T-1..0, fused, for each cell of cs; leaves d state0 in c.dh, c.dc."""
    T, B, H, h, cfg, consts = _setup(cs[0], io_dtype, "bwd")
    if T == 0:
        return
    t = cm.as_tensor
    plan = cm.direction_plan(cfg, [[t(c.dy), t(c.gates), t(c.c), t(c.tanh_c), t(c.dgates), t(c.dh), t(c.dc),
                                     t(c.w["w_hh"]).contiguous(), cm.partials_workspace(cfg, B, h),
                                     cm.sizes_tensor(sizes, h), cm.barrier_counters(cfg, B, h)]
                                    for c, sizes in zip(cs, sizes_list)])
    # T+1 iterations t = T-1 .. -1 (see _bwd_kernel)
    gluon = GLUON and cm.gluon_applies(cfg, "bwd", cm.w_elem_bytes(consts["DOT"]), GP, h.device)
    kernel = GLUON._bwd_gluon if gluon else _bwd_kernel
    cm.run_windows(cfg, T + 1, lambda t0, n: cm.launch_directions(
        kernel, cfg, B, plan, T, t0 - 1, n, B, H, **consts), reverse=True)


def compile_targets(hidden_size, dtype, arch=None):
    """(name, jit_fn, signature, constexprs) for every config the launchers use at this size and dtype."""
    ptr = cm.buffer_ptr(dtype)
    acc, dot, prec = cm.dtype_constexprs(dtype)
    sigs = dict(fwd=dict(p_gx=ptr, p_gates=ptr, p_h=ptr, p_c=ptr, p_tc=ptr, p_w=ptr, p_sizes="*i32",
                         p_bar="*i32", p_doff="*i64", t_start="i32", n_steps="i32", tile0="i32", B="i32", H="i32"),
                bwd=dict(p_dy=ptr, p_gates=ptr, p_c=ptr, p_tc=ptr, p_dgates=ptr, p_dh=ptr, p_dc=ptr,
                         p_w=ptr, p_ws=ptr, p_sizes="*i32", p_bar="*i32", p_doff="*i64", T="i32", t_start="i32",
                         n_steps="i32", tile0="i32", B="i32", H="i32"))
    kernels = dict(fwd=_fwd_kernel, bwd=_bwd_kernel)
    out = []
    for d in ("fwd", "bwd"):
        for cfg in cm.compile_configs(hidden_size, dtype, GP, d, arch):
            consts = cm.kernel_consts(cfg, d, acc, dot, prec)
            out += cm.direction_targets(f"lstm_{d}", kernels[d], sigs[d], consts, cfg)
            if GLUON and cm.gluon_fits(cfg, d, cm.w_elem_bytes(dot), GP):
                gluon = getattr(GLUON, f"_{d}_gluon")
                out += cm.direction_targets(f"lstm_{d}_gluon", gluon, sigs[d], consts, cfg)
    return out
