"""Jordan network (gpurnn.nn.JordanRNN) recurrence and BPTT kernels.

CPU counterpart: gpurnn/cells/jordan.py (the maths and the buffers these kernels run on).

# gx:  (T, B, H)    W_ih x_t + b_h (the engine's GEMM)
# hid: (T, B, H)    h_t = phi(gx_t + W_sh s_t) (active rows)
# y:   (T, B, O)    y_t = g(W_ho h_t + b_o), g in identity/tanh/sigmoid/softmax (active rows)
# s:   (T+1, B, O)  s[0] = state0; s[t+1] = decay*s[t] + (y_t or teacher_t) (rows past their length hold)
# w_sh: (H, O)   w_ho: (O, H)   b_o, decay: (O,)   teacher: (T, B, O) or absent   sizes: (T,) int32
# dy: (T, B, O)   da: (T, B, O) grad of W_ho h_t + b_o   dz: (T, B, H) grad of W_sh s_t + gx_t
# ds: (B, O)      carried gradient: ds_{T+1} on entry, ds_1 (= d state0) on exit
# ws: (2, B, 1, P, OP) each hidden slice's share of y_t's pre-activation (forward) or of ds (backward)

Two GEMMs per step, with a reduction over H between them: a program owns a
batch tile and a slice of S hidden units, holding W_sh[slice, :]^T (OP, S) and
W_ho[:, slice]^T (S, OP) on chip. It computes its h slice from the full s_t
and its share of W_ho h_t; the O-wide part (summing the P shares in slice
order, the output activation and the state update) is computed redundantly by
every program of the batch tile (O is small), so each holds the full s (or ds)
carry and only slice 0 stores it. Each step thus needs one barrier, between
the shares and their sum: like the other cells' backward, the kernels iterate
t = 0..T (forward) / T-1..-1 (backward), each iteration finishing the previous
step's sum, so the stepwise mode's launch boundary is that barrier.
Layout, modes and precision: see kernels/common.py.
"""
from dataclasses import replace

import triton
import triton.language as tl

from . import common as cm

OUTPUT_ACTIVATION_KIND = {"identity": 0, "tanh": 1, "sigmoid": 2, "softmax": 3}


@triton.jit
def _output_activation(a, o_ok, ACT: tl.constexpr, DOT: tl.constexpr):
    """g(a) over the O columns of a (BB, OP) tile; zero in the padding columns."""
    if ACT == 1:
        a = cm.tanh(a, DOT)
    elif ACT == 2:
        a = cm.sigmoid(a, DOT)
    elif ACT == 3:
        a = tl.where(o_ok[None, :], a, float("-inf"))
        a = tl.exp(a - tl.max(a, axis=1)[:, None])
        a = a / tl.sum(a, axis=1)[:, None]
    return tl.where(o_ok[None, :], a, 0.0)


@triton.jit
def _fwd_hidden(t, b_s, b_wsh, b_who, p_gx, p_hid, p_sizes, rows, j0, B, H, nonlin,
                S: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """h_t of the slice = phi(gx_t + W_sh s_t) (stored for active rows); returns its share h_t W_ho^T (BB, OP)."""
    active = rows < tl.load(p_sizes + t)
    cols = j0 + tl.arange(0, S)
    col_ok = cols < H
    step = t.to(tl.int64) * B * H
    b_z = tl.dot(b_s.to(DOT), b_wsh, input_precision=PREC, out_dtype=ACC)
    b_z += cm.load_rows(p_gx + step, rows, cols, H, active, col_ok, ACC)
    ok = active[:, None] & col_ok[None, :]
    b_h = tl.where(ok, cm.activation(b_z, nonlin, DOT), 0.0)
    tl.store(p_hid + step + rows[:, None] * H + cols[None, :], b_h, mask=ok)
    return tl.dot(b_h.to(DOT), b_who, input_precision=PREC, out_dtype=ACC)


@triton.jit
def _fwd_output(t, b_s, b_pre, b_bo, b_decay, p_y, p_s, p_teacher, p_sizes, rows, B, O, writer,
                OP: tl.constexpr, ACT: tl.constexpr, HAS_TEACHER: tl.constexpr, ACC: tl.constexpr,
                DOT: tl.constexpr):
    """Finish step t: y_t = g(b_pre + b_o), s_{t+1} = decay s_t + (y_t or teacher_t); returns s_{t+1}."""
    active = rows < tl.load(p_sizes + t)
    ocols = tl.arange(0, OP)
    o_ok = ocols < O
    step = t.to(tl.int64) * B * O
    off = rows[:, None] * O + ocols[None, :]
    ok = active[:, None] & o_ok[None, :]
    b_y = _output_activation(b_pre + b_bo[None, :], o_ok, ACT, DOT)
    tl.store(p_y + step + off, b_y, mask=ok & writer)
    if HAS_TEACHER:   # teacher forcing: the state takes the target, and no gradient flows back into y
        b_y = tl.load(p_teacher + step + off, mask=ok, other=0.0).to(ACC)
    b_s = tl.where(active[:, None], b_decay[None, :] * b_s + b_y, b_s)
    tl.store(p_s + step + B * O + off, b_s, mask=(rows < B)[:, None] & o_ok[None, :] & writer)
    return b_s


@triton.jit
def _load_w(p_wsh, p_who, j0, H, O, OP: tl.constexpr, S: tl.constexpr, DOT: tl.constexpr):
    """The slice's W_sh[j0:j0+S, :]^T (OP, S) and W_ho[:, j0:j0+S]^T (S, OP), zero padded."""
    o = tl.arange(0, OP)
    j = j0 + tl.arange(0, S)
    ok = (o < O)[:, None] & (j < H)[None, :]
    b_wsh = tl.load(p_wsh + j[None, :] * O + o[:, None], mask=ok, other=0.0).to(DOT)
    b_who = tl.load(p_who + o[None, :] * H + j[:, None], mask=tl.trans(ok), other=0.0).to(DOT)
    return b_wsh, b_who


@triton.jit(do_not_specialize=["T", "t_start", "n_steps", "tile0"])
def _fwd_kernel(p_gx, p_hid, p_y, p_s, p_teacher, p_wsh, p_who, p_bo, p_decay, p_ws, p_sizes, p_bar,
                T, t_start, n_steps, B, H, O, nonlin, tile0,
                BB: tl.constexpr, OP: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
                SINGLE: tl.constexpr, SYNC: tl.constexpr, ACT: tl.constexpr, HAS_TEACHER: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Iterations t = t_start, t_start+1, ...: finish step t-1 (t >= 1) from the summed shares, then
    step t's hidden slice and its share (t < T); T+1 iterations in all."""
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    rows = (tile0 + pid_b) * BB + tl.arange(0, BB)
    j0 = pid_s * S
    ocols = tl.arange(0, OP)
    o_ok = ocols < O
    writer = pid_s == 0   # every slice computes the O-wide part; one stores it
    b_wsh, b_who = _load_w(p_wsh, p_who, j0, H, O, OP, S, DOT)   # on chip for all steps
    b_bo = tl.load(p_bo + ocols, mask=o_ok, other=0.0).to(ACC)
    b_decay = tl.load(p_decay + ocols, mask=o_ok, other=0.0).to(ACC)
    # s_{t_start-1} when the window starts by finishing step t_start-1, else s_0
    first = tl.maximum(t_start - 1, 0)
    b_s = cm.load_rows(p_s + first.to(tl.int64) * B * O, rows, ocols, O, rows < B, o_ok, ACC)
    b_pre = tl.zeros((BB, OP), ACC)
    for i in range(n_steps):
        t = t_start + i
        if t >= 1:
            if not SINGLE:
                b_pre = cm.sum_partials(p_ws, t - 1, rows, ocols, B, OP, 1, P, OP, ACC)
            b_s = _fwd_output(t - 1, b_s, b_pre, b_bo, b_decay, p_y, p_s, p_teacher, p_sizes, rows, B, O,
                              writer, OP, ACT, HAS_TEACHER, ACC, DOT)
        if t < T:
            b_pre = _fwd_hidden(t, b_s, b_wsh, b_who, p_gx, p_hid, p_sizes, rows, j0, B, H, nonlin,
                                S, ACC, DOT, PREC)
            if not SINGLE:
                cm.store_partial(p_ws, b_pre, 0, t, pid_s, rows, B, OP, 1, P, OP)
        if SYNC:
            cm.grid_barrier(p_bar + tile0 + pid_b, (i + 1) * P)


@triton.jit
def _bwd_output(t, b_ds, p_dy, p_y, p_da, p_sizes, rows, B, O, writer,
                OP: tl.constexpr, ACT: tl.constexpr, HAS_TEACHER: tl.constexpr, ACC: tl.constexpr):
    """da_t = g'(.)^T (dy_t + ds_{t+1}) (ds only without teacher forcing); zero for rows past their length."""
    active = rows < tl.load(p_sizes + t)
    ocols = tl.arange(0, OP)
    o_ok = ocols < O
    step = t.to(tl.int64) * B * O
    off = rows[:, None] * O + ocols[None, :]
    ok = active[:, None] & o_ok[None, :]
    b_da = tl.load(p_dy + step + off, mask=ok, other=0.0).to(ACC)
    if not HAS_TEACHER:   # y_t feeds s_{t+1}
        b_da += tl.where(ok, b_ds, 0.0)
    b_y = tl.load(p_y + step + off, mask=ok, other=0.0).to(ACC)
    if ACT == 1:
        b_da *= 1.0 - b_y * b_y
    elif ACT == 2:
        b_da *= b_y * (1.0 - b_y)
    elif ACT == 3:   # softmax Jacobian-vector product: y * (da - <da, y>)
        b_da = (b_da - tl.sum(b_da * b_y, axis=1)[:, None]) * b_y
    tl.store(p_da + step + off, b_da, mask=(rows < B)[:, None] & o_ok[None, :] & writer)
    return b_da


@triton.jit(do_not_specialize=["T", "t_start", "n_steps", "tile0"])
def _bwd_kernel(p_dy, p_y, p_hid, p_da, p_dz, p_ds_in, p_ds_out, p_wsh, p_who, p_decay, p_ws, p_sizes, p_bar,
                T, t_start, n_steps, B, H, O, nonlin, tile0,
                BB: tl.constexpr, OP: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
                SINGLE: tl.constexpr, SYNC: tl.constexpr, ACT: tl.constexpr, HAS_TEACHER: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Iterations t = t_start, t_start-1, ...: finish ds_{t+1} = decay ds + dz_{t+1} W_sh (summed shares,
    t+1 < T), then step t (t >= 0): da_t, the slice's dz_t and its share dz_t W_sh; T+1 iterations in all.

    Every program reads the ds carry at its start and slice 0 writes it at its end, so stepwise
    launches read one buffer and write another (a program may start after slice 0 has finished).
    """
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    rows = (tile0 + pid_b) * BB + tl.arange(0, BB)
    j0 = pid_s * S
    cols = j0 + tl.arange(0, S)
    col_ok = cols < H
    ocols = tl.arange(0, OP)
    o_ok = ocols < O
    writer = pid_s == 0
    b_wsh, b_who = _load_w(p_wsh, p_who, j0, H, O, OP, S, DOT)   # on chip for all steps
    b_decay = tl.load(p_decay + ocols, mask=o_ok, other=0.0).to(ACC)
    b_ds = cm.load_rows(p_ds_in, rows, ocols, O, rows < B, o_ok, ACC)
    b_prod = tl.zeros((BB, OP), ACC)
    for i in range(n_steps):
        t = t_start - i
        if t + 1 < T:   # rows active at t+1 take their new ds; the others pass ds through
            if not SINGLE:
                b_prod = cm.sum_partials(p_ws, t + 1, rows, ocols, B, OP, 1, P, OP, ACC)
            b_ds = tl.where((rows < tl.load(p_sizes + t + 1))[:, None], b_decay[None, :] * b_ds + b_prod, b_ds)
        if t >= 0:
            b_da = _bwd_output(t, b_ds, p_dy, p_y, p_da, p_sizes, rows, B, O, writer, OP, ACT, HAS_TEACHER, ACC)
            active = rows < tl.load(p_sizes + t)
            step = t.to(tl.int64) * B * H
            ok = active[:, None] & col_ok[None, :]
            b_h = cm.load_rows(p_hid + step, rows, cols, H, active, col_ok, ACC)
            # both dot operands pinned (cm.pin): unpinned, fp16 H=128 spilled 64 B (sm_80)
            b_dz = tl.dot(cm.pin(b_da).to(DOT), tl.trans(b_who), input_precision=PREC, out_dtype=ACC)
            b_dz = tl.where(ok, cm.times_activation_grad(b_dz, b_h, nonlin), 0.0)
            tl.store(p_dz + step + rows[:, None] * H + cols[None, :], b_dz,
                     mask=(rows < B)[:, None] & col_ok[None, :])
            b_prod = tl.dot(cm.pin(b_dz).to(DOT), tl.trans(b_wsh), input_precision=PREC, out_dtype=ACC)
            if not SINGLE:
                cm.store_partial(p_ws, b_prod, 0, t, pid_s, rows, B, OP, 1, P, OP)
        if SYNC:
            cm.grid_barrier(p_bar + tile0 + pid_b, (i + 1) * P)
    tl.store(p_ds_out + rows[:, None] * O + ocols[None, :], b_ds,
             mask=(rows < B)[:, None] & o_ok[None, :] & writer)


def _padded(n):
    return max(16, triton.next_power_of_2(n))


# A program holds at most half of cm.W_BUDGET_BYTES of W on every GPU (not the device's cm.w_budget:
# its thresholds were measured at this one): both W tiles are dot operands every step, and ptxas -v
# spills (up to ~30 KB in fp32) at the full budget, none at half. compile_targets ignores arch.
W_SHARE = 2


def _unit_bytes(H, O, elem_bytes):
    """W bytes per hidden unit of a slice (a W_sh row and a W_ho column: 2*OP elements), times W_SHARE,
    in the units cm.tile_config counts per unit (HP*GP*elem with GP = 1), so that
    cm.tile_config(H, B, 1, _unit_bytes(...)) sizes Jordan's slices."""
    # candidate for common.py: tile_config/choose_config taking the W bytes per hidden unit directly
    return W_SHARE * 2 * _padded(O) * elem_bytes / _padded(H)


def _config(H, O, B, elem_bytes, direction, device=None):
    """The shared tile config (cm.choose_config; cm.tile_config without a device) for Jordan's slices.

    Its warps and NK are redone here: tile_config would read the fractional _unit_bytes as a
    dtype, and the forward's two dots are not split (no kdot). The warp rule is the shared one for
    the real W dtype, with the (BB, OP) carry of shares in the place of the other cells' (BB, HP).
    """
    unit = _unit_bytes(H, O, elem_bytes)
    cfg = (cm.tile_config(H, B, 1, unit, direction) if device is None
           else cm.choose_config(H, B, 1, unit, device, direction, budget=cm.W_BUDGET_BYTES))
    warps = cm.warps_for(_padded(O), elem_bytes, direction)
    if direction == "fwd" and not cm.tensor_cores(elem_bytes):
        # fp32 forward, compiled as it runs (aligned buffers; B, H and O specialised): 16 warps
        # (128 registers) spilled ~900 B at every H; 8 warps (255 registers) none, except whole-H
        # at H=64 (2.5 KB; 16 warps: 5.8 KB, 4 warps: 9.6 KB; compile_check.md).
        warps = 8
    return replace(cfg, num_warps=warps, nk=1)


def _consts(cfg, O, act, teacher, acc, dot, prec):
    return dict(BB=cfg.BB, OP=_padded(O), S=cfg.S, P=cfg.P, SINGLE=cfg.mode == "single",
                SYNC=cfg.mode == "split", ACT=OUTPUT_ACTIVATION_KIND[act], HAS_TEACHER=teacher,
                ACC=acc, DOT=dot, PREC=prec, **cfg.options())


def _setup(c, io_dtype, direction):
    T, B, H = c.hid.shape
    O = c.y.shape[-1]
    s = cm.as_tensor(c.s)
    acc = cm.acc_dtype(s)
    dot = cm.dot_dtype(io_dtype, acc)
    cfg = _config(H, O, B, cm.w_elem_bytes(dot), direction, s.device)
    consts = _consts(cfg, O, c.output_activation, c.teacher is not None, acc, dot, cm.dot_precision(dot))
    return T, B, H, O, s, cfg, consts, cm.NONLINEARITY_KIND[c.nonlinearity]


def _workspace(cfg, B, OP, like):
    """(2, B, 1, P, OP) shares for split/stepwise (common.store_partial with S = OP); a dummy in single mode."""
    return like.new_empty((2, B, 1, cfg.P, OP) if cfg.mode != "single" else (1,))


def forward(cs, sizes_list, io_dtype=None):
    """c.step(t, sizes[t]) for t = 0..T-1 plus the engine's state hold, fused, for the one cell of
    cs (a Jordan layer has one direction) (gpurnn.cells.kernels)."""
    (c,), (sizes,) = cs, sizes_list
    T, B, H, O, s, cfg, consts, nonlin = _setup(c, io_dtype, "fwd")
    if T == 0:
        return
    t = cm.as_tensor
    w_sh, w_ho = t(c.w["w_sh"]).contiguous(), t(c.w["w_ho"]).contiguous()
    b_o = s.new_zeros(O) if c.w["b_o"] is None else t(c.w["b_o"]).contiguous()
    decay = t(c.w["decay"]).contiguous()
    teacher = s if c.teacher is None else t(c.teacher)   # unread without teacher forcing
    sz, bar, ws = cm.sizes_tensor(sizes, s), cm.barrier_counters(cfg, B, s), _workspace(cfg, B, consts["OP"], s)
    # T+1 iterations t = 0 .. T (see _fwd_kernel)
    cm.run_windows(cfg, T + 1, lambda t0, n: cm.launch_tiles(
        _fwd_kernel, cfg, B, t(c.gx), t(c.hid), t(c.y), s, teacher, w_sh, w_ho, b_o, decay, ws, sz, bar,
        T, t0, n, B, H, O, nonlin, **consts))


def backward(cs, sizes_list, io_dtype=None):
    """c.back_step(t, sizes[t]) for t = T-1..0, fused, for the one cell of cs; leaves d state0 in c.ds."""
    (c,), (sizes,) = cs, sizes_list
    T, B, H, O, s, cfg, consts, nonlin = _setup(c, io_dtype, "bwd")
    if T == 0:
        return
    t = cm.as_tensor
    w_sh, w_ho = t(c.w["w_sh"]).contiguous(), t(c.w["w_ho"]).contiguous()
    decay = t(c.w["decay"]).contiguous()
    ds = t(c.ds)
    carry = [ds, ds.clone()] if cfg.mode == "stepwise" else [ds, ds]
    sz, bar, ws = cm.sizes_tensor(sizes, s), cm.barrier_counters(cfg, B, s), _workspace(cfg, B, consts["OP"], s)

    def window(t0, n):   # T+1 iterations t = T-1 .. -1 (see _bwd_kernel); stepwise launch k reads carry[k % 2]
        k = T - t0
        cm.launch_tiles(_bwd_kernel, cfg, B, t(c.dy), t(c.y), t(c.hid), t(c.da), t(c.dz), carry[k % 2],
                  carry[(k + 1) % 2], w_sh, w_ho, decay, ws, sz, bar, T, t0 - 1, n, B, H, O, nonlin, **consts)

    cm.run_windows(cfg, T + 1, window, reverse=True)
    if carry[(T + 1) % 2] is not ds:
        ds.copy_(carry[(T + 1) % 2])


def compile_targets(hidden_size, dtype, arch=None, output_size=None):
    """(name, jit_fn, signature, constexprs) for the configs the launchers use at this size and dtype.

    Output size O = min(H, 64) unless given; the softmax output activation (the
    only one with row reductions; the others differ in one pointwise line) and
    free running (teacher forcing only swaps a load for y in the state update).
    """
    O = output_size or min(hidden_size, 64)
    ptr = cm.buffer_ptr(dtype)
    acc, dot, prec = cm.dtype_constexprs(dtype)
    consts = {d: _consts(_config(hidden_size, O, cm.BB, cm.w_elem_bytes(dot), d), O, "softmax", False,
                         acc, dot, prec) for d in ("fwd", "bwd")}
    common = dict(p_ws=ptr, p_sizes="*i32", p_bar="*i32", T="i32", t_start="i32", n_steps="i32", tile0="i32",
                  B="i32", H="i32", O="i32", nonlin="i32")
    fwd_sig = dict(p_gx=ptr, p_hid=ptr, p_y=ptr, p_s=ptr, p_teacher=ptr, p_wsh=ptr, p_who=ptr, p_bo=ptr,
                   p_decay=ptr, **common)
    bwd_sig = dict(p_dy=ptr, p_y=ptr, p_hid=ptr, p_da=ptr, p_dz=ptr, p_ds_in=ptr, p_ds_out=ptr, p_wsh=ptr,
                   p_who=ptr, p_decay=ptr, **common)
    # signature order must follow the kernel's argument order
    fwd_sig = {k: fwd_sig[k] for k in _fwd_kernel.arg_names if k in fwd_sig}
    bwd_sig = {k: bwd_sig[k] for k in _bwd_kernel.arg_names if k in bwd_sig}
    return [("jordan_fwd", _fwd_kernel, fwd_sig, consts["fwd"]),
            ("jordan_bwd", _bwd_kernel, bwd_sig, consts["bwd"])]
