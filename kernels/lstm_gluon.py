"""The LSTM's split/stepwise fp16/bf16 kernels in Gluon (GPU only, opt-in GPURNN_GLUON=1): lstm.py's
_fwd_kernel and _bwd_kernel steps, with the same arguments and buffers (see lstm.py's comment block), W
held in registers in the MMA's operand layout for all steps. The launchers in lstm.py take them where
common.gluon_applies; the helpers and layouts are in kernels/gluon.py.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from . import common as cm
from . import gluon as gk


@gluon.jit
def _gluon_tiles(rows0, j0, B, H, BB: gl.constexpr, S: gl.constexpr, L3: gl.constexpr):
    """A program's (BB, S) state offsets rows*H + cols and mask, its (BB, S, 4) gate offsets
    (gate g of unit j of row b at b*4H + g*H + j) and mask, and the (BB, 1) rows and (1, 1, 4) gate index."""
    L2: gl.constexpr = gl.SliceLayout(2, L3)
    r2, c2 = gk.idx2(BB, S, L2)
    r2 = rows0 + r2
    c2 = j0 + c2
    ok2 = (r2 < B) & (c2 < H)
    g3 = gl.expand_dims(gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3))), 0), 1)
    off3 = gl.expand_dims(r2, 2) * 4 * H + g3 * H + gl.expand_dims(c2, 2)
    return r2 * H + c2, ok2, off3, gl.expand_dims(ok2, 2), r2, g3


@gluon.jit(do_not_specialize=["t_start", "n_steps", "tile0"])
def _fwd_gluon(p_gx, p_gates, p_h, p_c, p_tc, p_w, p_sizes, p_bar, p_doff, t_start, n_steps, B, H, tile0,
               BB: gl.constexpr, RB: gl.constexpr, K1: gl.constexpr, K2: gl.constexpr, S: gl.constexpr, P: gl.constexpr,
               SINGLE: gl.constexpr, SYNC: gl.constexpr, DIRS: gl.constexpr, NK: gl.constexpr,
               ACC: gl.constexpr, DOT: gl.constexpr, PREC: gl.constexpr):
    """_fwd_kernel (split/stepwise): h_t from the states straight into the MMA's A operand, the NK
    chunks' sums through one shared buffer, W in registers for all steps."""
    NW: gl.constexpr = gl.num_warps()
    mma: gl.constexpr = gk.mma_layout(NK)
    l_h: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    l_w: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    L4: gl.constexpr = gk.sum_layout(NK, BB, S, 4, NW)
    L3: gl.constexpr = gl.SliceLayout(0, L4)
    if DIRS > 1:   # both directions of a layer in this launch (cm.direction_plan)
        p_gx = cm.for_direction(p_gx, p_doff, 0)
        p_gates = cm.for_direction(p_gates, p_doff, 1)
        p_h = cm.for_direction(p_h, p_doff, 2)
        p_c = cm.for_direction(p_c, p_doff, 3)
        p_tc = cm.for_direction(p_tc, p_doff, 4)
        p_w = cm.for_direction(p_w, p_doff, 5)
        p_sizes = cm.for_direction(p_sizes, p_doff, 6)
        p_bar = cm.for_direction(p_bar, p_doff, 7)
    pid_b, pid_s = gl.program_id(0), gl.program_id(1)
    rows0 = (tile0 + pid_b) * BB
    j0 = pid_s * S
    p_bar += tile0 + pid_b
    w1 = gk.load_w(p_w, H, j0, 0, K1 // NK, NK, S, 4, 4, l_w).to(DOT)
    w2 = w1
    if K2 > 0:
        w2 = gk.load_w(p_w, H, j0, K1, K2 // NK, NK, S, 4, 4, l_w).to(DOT)
    red = gl.allocate_shared_memory(ACC, [NK, BB, S * 4], gl.SwizzledSharedLayout(1, 1, 1, order=[2, 1, 0]))
    off2, ok2, off3, ok3, r2, g3 = _gluon_tiles(rows0, j0, B, H, BB, S, L3)
    start = t_start.to(gl.int64) * B * H
    b_h = gl.load(p_h + start + off2, mask=ok2, other=0.0).to(ACC)
    b_c = gl.load(p_c + start + off2, mask=ok2, other=0.0).to(ACC)
    n = gl.load(p_sizes + t_start)
    b_gx = gl.load(p_gx + 4 * start + off3, mask=ok3 & (gl.expand_dims(r2, 2) < n), other=0.0).to(ACC)
    is_g = g3 == 2
    for i in range(n_steps):
        t = t_start + i
        step = t.to(gl.int64) * B * H
        acc = gl.zeros([NK, BB, S * 4], ACC, mma)
        acc = mma_v2(gk.load_exchange(p_h, t, rows0, B, H, 0, K1 // NK, NK, BB, l_h).to(DOT), w1, acc)
        if K2 > 0:
            acc = mma_v2(gk.load_exchange(p_h, t, rows0, B, H, K1, K2 // NK, NK, BB, l_h).to(DOT), w2, acc)
        red.store(acc)
        gl.thread_barrier()
        b_a = gl.sum(red.reshape([NK, BB, S, 4]).load(L4), axis=0) + b_gx
        b_a = cm.lstm_gates(b_a, is_g, DOT)   # one transcendental for all gates (as _fwd_step)
        c_new = gk.gate(b_a, 1) * b_c + gk.gate(b_a, 0) * gk.gate(b_a, 2)
        tc = cm.tanh(c_new, DOT)
        active = r2 < n
        b_c = gl.where(active, c_new, b_c)
        b_h = gl.where(active, gk.gate(b_a, 3) * tc, b_h)
        # what the other programs wait for first (common.publish), then the arrival, then the rest
        gl.store(p_h + step + B * H + off2, b_h, mask=ok2)
        if SYNC:
            cm.arrive(p_bar)
        gl.store(p_gates + 4 * step + off3, b_a, mask=ok3 & gl.expand_dims(active, 2))
        gl.store(p_tc + step + off2, tc, mask=ok2 & active)
        gl.store(p_c + step + B * H + off2, b_c, mask=ok2)
        # step t+1's streaming inputs before the wait
        n = gl.load(p_sizes + t + 1, mask=i + 1 < n_steps, other=0)
        b_gx = gl.load(p_gx + 4 * (step + B * H) + off3, mask=ok3 & (gl.expand_dims(r2, 2) < n),
                       other=0.0).to(ACC)
        if SYNC:
            cm.wait(p_bar, (i + 1) * P)
        else:
            gl.thread_barrier()   # every warp has read `red` before the next step writes it


@gluon.jit(do_not_specialize=["T", "t_start", "n_steps", "tile0"])
def _bwd_gluon(p_dy, p_gates, p_c, p_tc, p_dgates, p_dh, p_dc, p_w, p_ws, p_sizes, p_bar, p_doff,
               T, t_start, n_steps, B, H, tile0,
               BB: gl.constexpr, RB: gl.constexpr, K1: gl.constexpr, K2: gl.constexpr, S: gl.constexpr, P: gl.constexpr,
               SINGLE: gl.constexpr, SYNC: gl.constexpr, DIRS: gl.constexpr,
               ACC: gl.constexpr, DOT: gl.constexpr, PREC: gl.constexpr):
    """_bwd_kernel (split/stepwise): the gate gradients through shared memory into the MMA's A operand
    (every warp needs all of them), W^T in registers, the shares stored from the accumulator."""
    NW: gl.constexpr = gl.num_warps()
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, NW], instr_shape=[16, 8])
    l_d: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    l_w: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    L3: gl.constexpr = gl.SliceLayout(0, gk.sum_layout(2, BB, S, 4, NW))
    PC: gl.constexpr = gk.share_chunk(P)
    LS: gl.constexpr = gk.share_layout(BB, PC, S, NW)
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
    pid_b, pid_s = gl.program_id(0), gl.program_id(1)
    rows0 = (tile0 + pid_b) * BB
    j0 = pid_s * S
    p_bar += tile0 + pid_b
    w1 = gk.load_wt(p_w, H, j0, 0, K1, S, 4, 4, l_w).to(DOT)
    w2 = w1
    if K2 > 0:
        w2 = gk.load_wt(p_w, H, j0, K1, K2, S, 4, 4, l_w).to(DOT)
    d_smem = gl.allocate_shared_memory(DOT, [BB, S * 4], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))
    off2, ok2, off3, ok3, r2, g3 = _gluon_tiles(rows0, j0, B, H, BB, S, L3)
    b_dh = gl.load(p_dh + off2, mask=ok2, other=0.0).to(ACC)
    b_dc = gl.load(p_dc + off2, mask=ok2, other=0.0).to(ACC)
    n, b_dy, b_a, b_cp, b_tc = _bwd_gluon_stream(t_start, p_dy, p_gates, p_c, p_tc, p_sizes, off2, ok2, off3,
                                                 ok3, r2, B, H, ACC)
    for i in range(n_steps):
        t = t_start - i
        if t + 1 < T:   # rows active at t+1 take dgates_{t+1} W_hh; the others pass dh through
            b_new = gk.sum_partials(p_ws, t + 1, rows0, pid_s, B, H, BB, P, S, PC, LS)
            b_dh = gl.where(r2 < gl.load(p_sizes + t + 1), gl.convert_layout(b_new, b_dh.type.layout), b_dh)
        if t >= 0:
            g_i = gk.gate(b_a, 0)
            g_f = gk.gate(b_a, 1)
            g_g = gk.gate(b_a, 2)
            # coef (as _coef) = (g i' | c_{t-1} f' | i g' | tanh(c_t) o')
            slope = gl.where(g3 == 2, 1.0 - b_a * b_a, b_a * (1.0 - b_a))
            factor = gl.where(g3 == 0, gl.expand_dims(g_g, 2), gl.where(g3 == 1, gl.expand_dims(b_cp, 2),
                              gl.where(g3 == 2, gl.expand_dims(g_i, 2), gl.expand_dims(b_tc, 2))))
            b_dh += b_dy
            b_dc += b_dh * (gk.gate(b_a, 3) * (1.0 - b_tc * b_tc))   # as _coef's o tanh'(c_t)
            b_d = slope * factor * gl.where(g3 == 3, gl.expand_dims(b_dh, 2), gl.expand_dims(b_dc, 2))
            b_d = b_d.to(p_dgates.dtype.element_ty)   # rounded once: what is stored is what the dot reads
            b_dc = gl.where(r2 < n, b_dc * g_f, b_dc)   # inactive rows keep dc
            d_smem.reshape([BB, S, 4]).store(b_d)   # (BB, S, 4) -> (BB, S*4): the W^T tile's row order
            gl.thread_barrier()
            b_op = d_smem.load(l_d).to(DOT)
            gk.store_partial(p_ws, mma_v2(b_op, w1, gl.zeros([BB, K1], ACC, mma)), 0, t, pid_s, rows0, B, H, P, S)
            if K2 > 0:
                gk.store_partial(p_ws, mma_v2(b_op, w2, gl.zeros([BB, K2], ACC, mma)), K1, t, pid_s, rows0, B, H,
                                 P, S)
            if SYNC:
                cm.arrive(p_bar)
            gl.store(p_dgates + 4 * t.to(gl.int64) * B * H + off3, b_d, mask=ok3 & gl.expand_dims(r2 < n, 2))
        else:
            if SYNC:
                cm.arrive(p_bar)
        n, b_dy, b_a, b_cp, b_tc = _bwd_gluon_stream(t - 1, p_dy, p_gates, p_c, p_tc, p_sizes, off2, ok2, off3,
                                                     ok3, r2, B, H, ACC)
        if SYNC:
            cm.wait(p_bar, (i + 1) * P)
        else:
            gl.thread_barrier()   # every warp has read d_smem before the next step writes it
    gl.store(p_dh + off2, b_dh, mask=ok2)
    gl.store(p_dc + off2, b_dc, mask=ok2)


@gluon.jit
def _bwd_gluon_stream(t, p_dy, p_gates, p_c, p_tc, p_sizes, off2, ok2, off3, ok3, r2, B, H, ACC: gl.constexpr):
    """_bwd_stream in the Gluon kernel's layouts."""
    n = gl.load(p_sizes + t, mask=t >= 0, other=0)
    step = t.to(gl.int64) * B * H
    m2 = ok2 & (r2 < n)
    b_dy = gl.load(p_dy + step + off2, mask=m2, other=0.0).to(ACC)
    b_a = gl.load(p_gates + 4 * step + off3, mask=ok3 & gl.expand_dims(r2 < n, 2), other=0.0).to(ACC)
    b_cp = gl.load(p_c + step + off2, mask=m2, other=0.0).to(ACC)
    return n, b_dy, b_a, b_cp, gl.load(p_tc + step + off2, mask=m2, other=0.0).to(ACC)
