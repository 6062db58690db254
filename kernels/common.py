"""Shared pieces of the fused recurrent kernels: activations, tile loads, the
grid barrier, configuration choice and launching.

How a cell module (kernels/<cell>.py) is laid out
-------------------------------------------------
A comment block naming every tensor by role and shape, then

    @triton.jit _fwd_step(...)   one forward step for one (batch tile, hidden slice)
    @triton.jit _fwd_kernel(...) loops `_fwd_step` over a window of steps
    @triton.jit _bwd_* / _bwd_kernel(...)   the same for reverse time
    forward(cs, sizes_list, io_dtype=None)   launcher for a layer's cells (one per direction):
    backward(cs, sizes_list, io_dtype=None)  the engine's contract (gpurnn.cells.kernels)
    compile_targets(hidden_size, dtype, arch=None) -> [(name, jit_fn, signature, constexprs)]
        the configs its launchers pick on a GPU of that arch (`compile_configs`), built with
        `target` (constexprs also carry num_warps); signature maps every
        non-constexpr argument to a Triton type ('*fp32', 'i32').

Grid and modes. Programs form a grid (batch tiles of BB rows) x (P hidden
slices of S units; S*P >= H). Every kernel takes a window of steps
(t_start, n_steps) as runtime arguments (do_not_specialize: a new T never
recompiles), so one kernel serves three modes (`Config.mode`):

  "single"  P == 1: the whole hidden state of a batch tile lives in one
            program; W_hh stays on chip (the compiler keeps the forward's in
            shared memory, read every step, and the fp16/bf16 backward's W^T
            in registers) and the carry never leaves the chip; one launch
            runs all T steps.  Default whenever W fits.
  "split"   P > 1, one launch; every program holds its W slice for all T
            steps, reads the full h_t of its batch tile from the layer's
            states in L2 (`load_exchange`) and meets the others at a grid
            barrier after each step (`publish`/`arrive`, then `wait`).  GPU only (all programs must
            be resident: grid <= SM count; a spin would hang the interpreter).
            Where 16-row tiles x P exceed the SMs, tiles take 32 rows (and
            wider slices; fp32 also 64 rows, its dots in blocks of rows) if
            that brings the grid within them (`device_tiles`);
            a grid still larger runs in groups of batch tiles, one launch each
            (`Config.groups`; the kernels take the group's first tile, tile0).
  "stepwise" P > 1, one launch per step (n_steps=1): the same kernel and
            step body; the launch boundary is the barrier.  The fallback when
            the split grid does not fit, and the path that tests the split
            arithmetic under TRITON_INTERPRET=1 (GPURNN_SLICE forces it). Used
            only where P alone exceeds the SM count, or off the GPU.

Directions. A bidirectional layer's two directions share each launch: grid axis 2
picks the direction, and the kernel moves every buffer pointer by that direction's
offset (`for_direction`, `direction_plan`; the DIRS constexpr keeps one-direction
launches as they were). Split mode launches the directions one after the other unless
both grids fit the SMs together (`Config.dirs_fit`).

Tiles. H is padded to HP = next power of two (>= 16) and masked. Gates get a
gate dimension: a program's W tile is (HP, S*GP) with column s*GP + g holding
row g*H + j0 + s of W_hh (GP = gates padded to a power of two; `load_w_fwd`),
so one tl.dot gives all gates of the slice, `tl.reshape` to (BB, S, GP) and
`gate` picks one. S, warps and NK are chosen per direction (`tile_config(direction)`):
a program holds W_BUDGET_BYTES of W, or on a GPU up to what its shared memory allows
(`device_tile`, `w_budget`) where that makes the layer single mode or keeps P within the SMs.
In split/stepwise mode the hidden dimension of the dots (the forward's K, the backward's N)
is not padded to HP but runs in two power-of-two parts, HP/2 and a tail (`k_tail`: 768 = 512
+ 256), where that is shorter: W tile, h and the shares come as (part 1, part 2) tuples
(`load_w_fwd`, `load_exchange`, `kdot`, `share_dh`), so no MMA, load or exchange is spent on
padding (LSTM H=768 bf16: 192 MMAs a step, the tile's minimum, against 256 padded to 1024).

Backward across slices. A slice's gate gradients d (BB, S*GP) give its share
d @ tile^T of every unit's dh_{t-1}; in split/stepwise mode each
program stores its share (`share_dh`, `store_partial`: a (2, B, P, P, S) workspace, buffer
t % 2 so a fast program never overwrites what a slow one still reads) and,
after the barrier, sums the P shares of its own units in a fixed order
(`sum_partials`): deterministic, no atomics. In single mode the share is the
whole product and stays in registers.

Gluon. Triton keeps the forward's W in shared memory (read back every step) and stages h and
the K-chunk sums through it; kernels/gluon.py has the helpers of Gluon versions of a cell's
split/stepwise fp16/bf16 kernels (kernels/lstm_gluon.py, the cell module's GLUON) that hold W in
registers in the MMA's operand layout. Opt-in (GPURNN_GLUON=1, `gluon_applies`) and GPU only:
Gluon has no interpreter, so the Triton kernels above remain the reference the tests run; a
Triton without Gluon runs them only.

Registers (ptxas -v, profiling/results/compile_check.md, compiled with 16-byte aligned
pointers as Triton specialises them at launch). Three things keep the cell configs free
of spills (all but the fp32 backward with 16 warps at H=256-512, 8-116 B, the Jordan forward at
fp32 H=64, 2.5 KB, and 32-row configs of `device_tiles`: fp16/bf16 8-304 B, 360-632 B with 128 KB W
tiles, fp32 (and its 64-row configs) 8-132 B;
the measured thresholds below predate the aligned compiles):
  * `maxnreg`: a launch gets the register file of a whole SM (`Config.maxnreg`).
    Without it ptxas sometimes settles on 32-40 registers and spills (fp32
    Elman forward H=128: 32 registers, 12.6 KB; with the cap: 255, 4.8 KB,
    which kdot removes; fp32 Elman backward H=64 at 16 warps: 40, 16 B -> 68, 0).
  * `kdot`: the forward's K (HP, or its two parts) is split over warps in NK chunks, so no
    thread holds all of h for its columns (Config.nk).
  * `pin`: the backward's dot operand is cut off from the loop-carried dh (see pin).
`tile_config` picks S, warps and NK per direction; the thresholds are
measured, not modelled: rerun compile_check.py after changing a kernel.

Precision. Carries and accumulation in ACC (float32; float64 for float64
buffers). fp32 data: tl.dot in IEEE fp32 (TF32 only with GPURNN_FP32_PRECISION=tf32
or tf32x3, see dot_precision).
fp16/bf16 data (`io_dtype`): W is held on chip in that dtype and h is
rounded to it before each tl.dot (accumulating in fp32), as cuDNN does;
this halves the registers W needs. bf16 forwards take the hardware's tanh
(`HW_TANH`: one instruction instead of about fifteen, error below bf16's rounding). Every buffer in memory is in the data's dtype
too (gx, the saved activations, their gradients, what programs exchange): loads
widen to ACC, stores round. In the backward each slice's share of dh is rounded
to fp16/bf16 before the P shares are summed in fp32 (an fp16 share above 65504
would be inf), so split and single mode differ in the last bits.
"""
import functools
import os
from dataclasses import dataclass, replace

import numpy as np
import triton
import triton.language as tl

from gpurnn.backends import fp32_precision, interpreting

from . import graphs

# ----------------------------------------------------------------------------- device code


# The hardware's tanh (PTX tanh.approx.f32, one MUFU instruction, relative error ~2^-11) for bf16
# data, whose stored values round to 2^-8 anyway; the interpreter runs no PTX.
HW_TANH = tl.constexpr(not interpreting())


@triton.jit
def sigmoid(x, DOT: tl.constexpr = tl.float32):
    if HW_TANH and DOT == tl.bfloat16:
        return 0.5 * tanh(0.5 * x, DOT) + 0.5
    # 1/(1+e^-x) saturates correctly at both ends (e^-x = inf gives 0).
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def lstm_gates(a, is_g, DOT: tl.constexpr = tl.float32):
    """sigmoid(a) for the i, f, o gates and tanh(a) where is_g, one transcendental each: bf16 (HW_TANH) the
    hardware's tanh for all (sigmoid(a) = 0.5 tanh(a/2) + 0.5), else one exp, as in `sigmoid` and `tanh` (a sigmoid
    accurate relative to its value far below 0, as torch's; through tanh it was 0 below about -17)."""
    if HW_TANH and DOT == tl.bfloat16:
        scale = tl.where(is_g, 1.0, 0.5)
        return scale * tanh(scale * a, DOT) + tl.where(is_g, 0.0, 0.5)
    e = tl.exp(tl.where(is_g, -2.0 * tl.abs(a), -a))
    q = tl.where(is_g, 1.0 - e, 1.0) / (1.0 + e)
    q = tl.where(is_g & (a < 0), -q, q)
    if a.dtype == tl.float32:
        q = tl.where(is_g & (tl.abs(a) < 0.625), _tanh_near_0(a), q)
    return q


@triton.jit
def tanh(x, DOT: tl.constexpr = tl.float32):
    """tanh of float32/64 x; DOT (the dtype the data's dot runs in) bf16: the hardware's (HW_TANH)."""
    if HW_TANH and DOT == tl.bfloat16:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    # Odd extension of a form that never overflows: e = exp(-2|x|) <= 1.
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    y = tl.where(x < 0, -y, y)
    if x.dtype == tl.float32:   # (float64: 1 - e keeps ~1e-16 of absolute accuracy near 0)
        y = tl.where(tl.abs(x) < 0.625, _tanh_near_0(x), y)
    return y


@triton.jit
def _tanh_near_0(x):
    """float32 tanh on |x| < 0.625, where 1 - e loses the digits of x (a relative error of about 2^-24/|x|, all of it
    below |x| = 3e-8, where it gives 0): x + x u P(u), u = x^2, gpurnn/cpu/step.c's fit of tanh(x)/x - 1 (1.3 ulp)."""
    u = x * x
    q = -0.0056919857 * u + 0.0206262918
    q = q * u - 0.0537353188
    q = q * u + 0.1333138135
    q = q * u - 0.3333327921
    return x + x * (u * q)


@triton.jit
def activation(x, kind, DOT: tl.constexpr = tl.float32):
    """kind 0: tanh, 1: relu (NONLINEARITY_KIND); kind may be a runtime value (one compile serves both)."""
    return tl.where(kind == 0, tanh(x, DOT), tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL))


@triton.jit
def times_activation_grad(d, y, kind):
    """d * phi'(z) through y = phi(z). relu's is a select, as torch's threshold_backward: a dead unit passes no
    gradient, an inf or NaN one included (a product with 0 would make it NaN); a NaN unit passes it."""
    return tl.where(kind == 0, d * (1.0 - y * y), tl.where(y <= 0, 0.0, d))


@triton.jit
def gate(a3, k: tl.constexpr):
    """Gate k of a (BB, S, GP) tile as (BB, S); the GP axis is per thread, so the sum is register-only."""
    g = tl.arange(0, a3.shape[2])[None, None, :]
    return tl.sum(tl.where(g == k, a3, 0.0), axis=2)


@triton.jit
def split_gates(a3):
    """The four (BB, S) gates of a (BB, S, 4) tile, by tl.split (no reduction over the gate axis)."""
    a4 = tl.reshape(a3, (a3.shape[0], a3.shape[1], 2, 2))   # [.., x, y] = gate 2x + y
    even, odd = tl.split(a4)                                 # y = 0: gates 0, 2; y = 1: gates 1, 3
    g0, g2 = tl.split(even)
    g1, g3 = tl.split(odd)
    return g0, g1, g2, g3


@triton.jit
def pin(x):
    """x, unchanged (x + 0 over an axis of two), as the output of a reduction.

    Feed the backward's tl.dot operand through this. Otherwise Triton's layout
    pass redoes the operand's chain of elementwise ops -- back into the
    loop-carried dh and product -- in the dot-operand layout, where every warp
    holds the whole (BB, K) operand: two extra loop carries of K/2 registers per
    thread (fp16 Elman backward H=128: 255 registers and 512 B spilled; fp32
    H=64: 255 and 152 B). A reduction has no dot-operand form, so the chain
    stops here and the operand is converted once per step (-0.0 becomes +0.0).
    """
    x2 = tl.join(x, tl.zeros_like(x))
    return tl.sum(x2, axis=len(x2.shape) - 1)


@triton.jit
def kdot(a, b, NK: tl.constexpr, K2: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """a @ b with K in two parts (Config.k2) and each part split in NK chunks: a = (a1 (M, K1), a2 (M, K2)),
    b = (b1 (K1, N), b2 (K2, N)), the second parts unused where K2 == 0. The chunks of both parts are
    batched tl.dots (chunks on separate warps) into one accumulator, then summed over the chunks.

    A plain tl.dot splits N over the warps, so each warp holds all of a: at
    K=512 that is 128 registers per thread in fp16, and the fp32 FMA dot holds
    K values per output row and column it computes (fp32 Elman forward H=128:
    4.8 KB spilled even with maxnreg). Chunks put a K/NK slice of a on each warp
    group, at the price of NK partial sums through shared memory per step.
    The chunks compute (b^T a^T)^T: with N (S*4 = 32 at H=768) the MMA's M and M (BB = 16) its N,
    the LSTM forward at H=768 bf16 (then padded to K = 1024) issued 3424 warp instructions a step
    against 4160 for a b (profiling/static_cost.py), with the same MMAs. Both K parts share the
    accumulator, so the chunks are summed once (two sums: 4688 instructions a step, one: 3248).
    """
    if NK == 1:
        out = tl.dot(a[0], b[0], input_precision=PREC, out_dtype=ACC)
        if K2 > 0:
            out = tl.dot(a[1], b[1], acc=out, input_precision=PREC, out_dtype=ACC)
    else:
        TC: tl.constexpr = a[0].dtype.primitive_bitwidth == 16 or PREC != "ieee"   # tensor cores: see above
        lhs, rhs = _chunks(a[0], b[0], NK, TC)
        out = tl.dot(lhs, rhs, input_precision=PREC, out_dtype=ACC)
        if K2 > 0:
            lhs, rhs = _chunks(a[1], b[1], NK, TC)
            out = tl.dot(lhs, rhs, acc=out, input_precision=PREC, out_dtype=ACC)
        out = tl.sum(out, axis=0)
        if TC:
            out = tl.trans(out)
    return out


@triton.jit
def _chunks(a, b, NK: tl.constexpr, TC: tl.constexpr):
    """a (M, K) @ b (K, N) as the operands of a batched dot over NK chunks of K: (b3 (NK, N, K/NK),
    a3 (NK, K/NK, M)) on tensor cores (TC: its sum over chunks is (a b)^T), else (a3 (NK, M, K/NK), b3)."""
    M: tl.constexpr = a.shape[0]
    K: tl.constexpr = a.shape[1]
    N: tl.constexpr = b.shape[1]
    if TC:
        lhs = tl.permute(tl.reshape(b, (NK, K // NK, N)), (0, 2, 1))   # (NK, N, K/NK)
        rhs = tl.permute(tl.reshape(a, (M, NK, K // NK)), (1, 2, 0))   # (NK, K/NK, M)
    else:
        lhs = tl.permute(tl.reshape(a, (M, NK, K // NK)), (1, 0, 2))   # (NK, M, K/NK)
        rhs = tl.reshape(b, (NK, K // NK, N))
    return lhs, rhs


@triton.jit
def row_block(x, blk, RB: tl.constexpr):
    """Rows blk*RB .. blk*RB + RB - 1 of x (R, N): x as (R/RB, RB, N), summed over the blocks with all but
    block blk zeroed."""
    x3 = tl.reshape(x, (x.shape[0] // RB, RB, x.shape[1]))
    return tl.sum(tl.where((tl.arange(0, x.shape[0] // RB) == blk)[:, None, None], x3, 0), axis=0)


@triton.jit
def h_dot_w(b_h, b_w, p_h, t, rows, B, H, K1: tl.constexpr, K2: tl.constexpr, SINGLE: tl.constexpr,
            NK: tl.constexpr, RB: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
    """h_t W_tile of the batch tile (`full_h`, `kdot`), as dots of RB rows each (Config.rb): an fp32 FMA dot
    stages its (rows, K1) operand in shared memory beside W, so wide tiles run it in blocks of 32 or 16.
    The blocks are a loop, not unrolled: unrolled, Triton read W into registers once for all of them (the
    same value twice), and the 64-row LSTM forward spilled 6.6 KB at H=768 (ptxas, sm_90). A short last
    tile's empty blocks run too: skipping them (an if in the loop) spilled 0.3-8 KB."""
    BB: tl.constexpr = rows.shape[0]
    N: tl.constexpr = b_w[0].shape[1]
    if RB == BB:
        out = kdot(full_h(b_h, p_h, t, rows, B, H, K1, K2, SINGLE, DOT), b_w, NK, K2, PREC, ACC)
    else:
        tl.static_assert(not SINGLE, "row blocks: split and stepwise modes only (h read from the states)")
        out3 = tl.zeros((BB // RB, RB, N), ACC)
        first = tl.min(rows)   # the tile's rows are contiguous
        for blk in range(BB // RB):
            rows_b = first + blk * RB + tl.arange(0, RB)
            part = kdot(full_h(b_h, p_h, t, rows_b, B, H, K1, K2, SINGLE, DOT), b_w, NK, K2, PREC, ACC)
            out3 = tl.where((tl.arange(0, BB // RB) == blk)[:, None, None], part[None, :, :], out3)
        out = tl.reshape(out3, (BB, N))
    return out


@triton.jit
def load_rows(p, rows, cols, stride, row_ok, col_ok, ACC: tl.constexpr):
    """(len(rows), len(cols)) tile of a row-major matrix, zero where masked, in ACC."""
    mask = row_ok[:, None] & col_ok[None, :]
    return tl.load(p + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def load_exchange(p_h, t, rows, B, H, K1: tl.constexpr, K2: tl.constexpr, DOT: tl.constexpr):
    """h_t of a batch tile, written by every slice's program (split/stepwise), as the forward dot's K
    parts (`k_tail`: (BB, K1) and (BB, K2) at column K1; the first again where K2 == 0), in DOT, read
    from the layer's (T+1, B, H) states, which each program writes for its output anyway (`publish`;
    in the io dtype, to which h is rounded before the dot anyway): the exchange costs no store of its own.
    .cg reads from L2, where the other SMs' stores land."""
    p = p_h + t.to(tl.int64) * B * H + rows[:, None] * H
    k = tl.arange(0, K1)
    h1 = tl.load(p + k[None, :], mask=(rows < B)[:, None] & (k < H)[None, :], other=0.0,
                 cache_modifier=".cg").to(DOT)
    h2 = h1
    if K2 > 0:
        k2 = K1 + tl.arange(0, K2)
        h2 = tl.load(p + k2[None, :], mask=(rows < B)[:, None] & (k2 < H)[None, :], other=0.0,
                     cache_modifier=".cg").to(DOT)
    return h1, h2


@triton.jit
def full_h(b_h, p_h, t, rows, B, H, K1: tl.constexpr, K2: tl.constexpr, SINGLE: tl.constexpr, DOT: tl.constexpr):
    """h_t of the batch tile in the forward dot's K parts, in DOT: the program's own carry in single mode
    (one part, K = HP), else read from the states every slice's program wrote (`load_exchange`)."""
    if SINGLE:   # the padding columns zeroed: an inf in h makes them NaN (inf times W's zero padding), and the dot
        # would spread NaN * 0 to every unit
        b_dot = tl.where((tl.arange(0, K1) < H)[None, :], b_h, 0.0).to(DOT)
        b_full = (b_dot, b_dot)
    else:
        b_full = load_exchange(p_h, t, rows, B, H, K1, K2, DOT)
    return b_full


@triton.jit
def publish(p_h, p_bar, t, b_h, rows, cols, B, H, SYNC: tl.constexpr):
    """What the other programs wait for, first: this slice's h_{t+1} into the (T+1, B, H) states (the
    layer's output, which split/stepwise programs read h from: `load_exchange`), then the barrier
    arrival. The step's other stores follow it, outside the barrier's release."""
    tl.store(p_h + (t + 1).to(tl.int64) * B * H + rows[:, None] * H + cols[None, :], b_h,
             mask=(rows < B)[:, None] & (cols < H)[None, :])
    if SYNC:
        arrive(p_bar)


@triton.jit
def next_step_product(b_prod, p_ws, t, rows, cols, B, H, P: tl.constexpr, S: tl.constexpr,
                      SINGLE: tl.constexpr, ACC: tl.constexpr):
    """This slice's columns of d_{t+1} W_hh: the program's own product in single mode, else the
    slices' shares summed in a fixed order (deterministic, no atomics)."""
    if SINGLE:   # the padding columns zeroed, as in `full_h`: an inf gradient makes them NaN
        return tl.where((cols < H)[None, :], b_prod, 0.0)
    return sum_partials(p_ws, t + 1, rows, cols, B, H, P, P, S, ACC)


@triton.jit
def share_dh(p_ws, b_d, b_w, t, pid_s, rows, B, H, P: tl.constexpr, S: tl.constexpr, K2: tl.constexpr,
             SINGLE: tl.constexpr, RB: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """This slice's share b_d @ W_tile^T of dh_{t-1}, from its gate gradients b_d (BB, S*GP) in the dot dtype
    and its W tile in K parts (`load_w_fwd`): single mode returns the (BB, K1) product (all of dh), split and
    stepwise store each part's share (`store_partial`; what they return is not used), in blocks of RB rows
    (Config.rb: a 64-row fp32 share of (64, H) would not fit the registers)."""
    if RB < rows.shape[0]:   # a loop, as in h_dot_w (unrolled: 2.9 KB spilled, LSTM H=768, 64 rows)
        tl.static_assert(not SINGLE, "row blocks: split and stepwise modes only")
        first = tl.min(rows)   # the tile's rows are contiguous
        for blk in range(rows.shape[0] // RB):
            share_dh(p_ws, row_block(b_d, blk, RB), b_w, t, pid_s, first + blk * RB + tl.arange(0, RB), B, H, P, S,
                     K2, SINGLE, RB, PREC, ACC)
        return tl.zeros((rows.shape[0], b_w[0].shape[0]), ACC)
    b_prod = tl.dot(b_d, tl.trans(b_w[0]), input_precision=PREC, out_dtype=ACC)
    if not SINGLE:
        store_partial(p_ws, b_prod, 0, t, pid_s, rows, B, H, P, P, S)
        if K2 > 0:
            b_tail = tl.dot(b_d, tl.trans(b_w[1]), input_precision=PREC, out_dtype=ACC)
            store_partial(p_ws, b_tail, b_w[0].shape[0], t, pid_s, rows, B, H, P, P, S)
    return b_prod


@triton.jit
def load_w_fwd(p_w, H, K, j0, K1: tl.constexpr, K2: tl.constexpr, S: tl.constexpr, GP: tl.constexpr,
               G: tl.constexpr, DOT: tl.constexpr):
    """The W tile [k, s*GP + g] = W[g*H + j0 + s, k] of a (G*H, K) weight, zero padded, in the K parts of
    the dot (`k_tail`): rows k < K1 (K1, S*GP) and K1 <= k < K1 + K2 (K2, S*GP) (the first again where
    K2 == 0)."""
    col = tl.arange(0, S * GP)
    s, g = col // GP, col % GP
    j = j0 + s
    col_ok = ((j < H) & (g < G))[None, :]
    k = tl.arange(0, K1)
    w1 = tl.load(p_w + (g * H + j)[None, :] * K + k[:, None], mask=(k[:, None] < K) & col_ok, other=0.0).to(DOT)
    w2 = w1
    if K2 > 0:
        k2 = K1 + tl.arange(0, K2)
        w2 = tl.load(p_w + (g * H + j)[None, :] * K + k2[:, None], mask=(k2[:, None] < K) & col_ok,
                     other=0.0).to(DOT)
    return w1, w2


@triton.jit
def gate_offsets(H, j0, S: tl.constexpr, GP: tl.constexpr, G: tl.constexpr):
    """(S, GP) column offsets g*H + j0 + s into a (.., G*H) gate row, and their mask."""
    s = tl.arange(0, S)[:, None]
    g = tl.arange(0, GP)[None, :]
    return g * H + j0 + s, ((j0 + s) < H) & (g < G)


@triton.jit
def gate_tile(p, rows, row_ok, H, j0, S: tl.constexpr, GP: tl.constexpr, G: tl.constexpr):
    """Pointers and mask of a (BB, S, GP) tile of a (.., B, G*H) gate buffer at one step (gates >= G masked)."""
    off, ok = gate_offsets(H, j0, S, GP, G)
    return p + rows[:, None, None] * G * H + off[None, :, :], row_ok[:, None, None] & ok[None, :, :]


@triton.jit
def store_partial(p_ws, b_prod, k0, t, pid_s, rows, B, N, NS: tl.constexpr, P: tl.constexpr, S: tl.constexpr):
    """This slice's share of dh_{t-1} for columns k0 .. k0 + K (b_prod (BB, K)) into the (2, B, NS, P, S)
    workspace (in its dtype; NS slices of S columns), buffer t % 2: the N real columns only. Laid out so
    that the P shares of one slice's S columns are contiguous for the program that sums them (sum_partials)."""
    k = k0 + tl.arange(0, b_prod.shape[1])
    row = ((t % 2) * B + rows).to(tl.int64) * (NS * P * S)
    off = (k // S) * (P * S) + pid_s * S + k % S
    tl.store(p_ws + row[:, None] + off[None, :], b_prod, mask=(rows < B)[:, None] & (k < N)[None, :])


@triton.jit
def sum_partials(p_ws, t, rows, cols, B, N, NS: tl.constexpr, P: tl.constexpr, S: tl.constexpr,
                 ACC: tl.constexpr):
    """(BB, S) sum over the P slices' shares of step t, in a fixed order (deterministic); 0 past column N.
    This slice's P shares lie contiguous (store_partial): loaded up to 32 shares at a time."""
    # shares per load: up to 32, and at most 4096 values per load (Jordan's S is all O outputs)
    CAP: tl.constexpr = 4096 // (rows.shape[0] * S)
    PC: tl.constexpr = (32 if P >= 32 and CAP >= 32 else 16 if P >= 16 and CAP >= 16 else
                        8 if P >= 8 and CAP >= 8 else 4 if P >= 4 and CAP >= 4 else 2 if CAP >= 2 else 1)
    row = ((t % 2) * B + rows).to(tl.int64) * (NS * P * S)
    col = (cols // S) * (P * S) + cols % S
    ok = (rows < B)[:, None, None] & (cols < N)[None, None, :]
    acc = tl.zeros((rows.shape[0], S), ACC)
    for p0 in tl.static_range(0, P, PC):
        p = p0 + tl.arange(0, PC)
        share = tl.load(p_ws + row[:, None, None] + (p * S)[None, :, None] + col[None, None, :],
                        mask=ok & (p < P)[None, :, None], other=0.0, cache_modifier=".cg")
        acc += tl.sum(share.to(ACC), axis=1)
    return acc


@triton.jit
def for_direction(p, p_doff, k):
    """Buffer pointer p moved to this program's direction (program_id(2)): direction 1's buffer
    lies p_doff[k] 16-byte units from direction 0's (`direction_offsets`). In those units the
    compiler knows the moved pointer keeps p's 16-byte alignment, so loads stay vectorised."""
    U: tl.constexpr = 16 // (p.dtype.element_ty.primitive_bitwidth // 8)
    return p + tl.program_id(2).to(tl.int64) * (tl.load(p_doff + k) * U)


SPIN_LIMIT = tl.constexpr(1 << 26)   # polls of a barrier before it traps: tens of seconds, no real step


@triton.jit
def arrive(p_bar):
    """Count this program's arrival at its tile's barrier counter, releasing its stores so far to the grid.

    Call it right after the stores the other programs read (h, the partial shares): the release
    fence then waits for those only, and the program's other stores follow after it."""
    tl.debug_barrier()   # every warp's stores come before the arrival
    tl.atomic_add(p_bar, 1, sem="release", scope="gpu")


@triton.jit
def trap(x):
    """Abort the kernel: a CUDA error the caller sees at the next synchronisation. It is sticky: the
    process's CUDA context is lost (as after a device-side assert); better than a hang."""
    tl.inline_asm_elementwise("trap;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def wait(p_bar, target):
    """Wait until `target` arrivals are counted at p_bar (one counter per batch tile).

    Every program arrives once per step and waits for step*P; the counter only grows, so it
    needs no reset within a launch. The compare is wrap-safe (the int32 difference, not
    count < target: T*P may pass 2^31). The spin is bounded: a barrier that never opens (a grid
    that is not co-resident, whatever the cause) traps after SPIN_LIMIT polls instead of hanging.
    GPU only: the interpreter runs programs one after another and would spin.
    """
    count = tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu")
    polls = 0
    while ((count - target) < 0) & (polls < SPIN_LIMIT):
        count = tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu")
        polls += 1
    if (count - target) < 0:
        trap(count)
    tl.debug_barrier()


@triton.jit
def grid_barrier(p_bar, target):
    """arrive, then wait (for kernels whose stores all precede the barrier)."""
    arrive(p_bar)
    wait(p_bar, target)


# ----------------------------------------------------------------------------- host code

NONLINEARITY_KIND = {"tanh": 0, "relu": 1}
W_BUDGET_BYTES = 64 * 1024   # W held per program off the GPU (interpreter; see w_budget)
# Shared memory a cell kernel takes besides W: h's layout conversion for the dot and kdot's
# partial sums (up to (BB, HP) fp32 at HP=1024; compile_check checks the totals)
KERNEL_SHARED_BYTES = 64 * 1024
SHARED_BYTES = {80: 163 * 1024, 90: 227 * 1024}   # per block, opt-in: A100 and H100 (compile targets)
ARCH_SMS = {80: 108, 90: 132}                      # their SM counts (A100, H100 SXM)
NUM_WARPS = 8                # tensor-core dtypes; fp32: see warps_for
REGISTERS_PER_SM = 64 * 1024   # 32-bit registers, sm_80 and sm_90
# Batch rows per program: tl.dot's minimum. Per-step latency, not throughput, bounds a recurrence,
# so more programs with fewer rows each (up to the SM count) beat fewer, fuller ones.
BB = 16
# the largest W tile device_tiles gives 32 rows: LSTM/GRU H=1024 bf16 in 32 rows x 16 units (spilling, see device_tiles)
FP32_SHARE_BYTES = 64 * 1024   # the fp32 backward's share of dh per dot at most (fp32_wide_tiles)
WIDE_TILE_BYTES = 128 * 1024
# the most rows x gate columns (BB * S*GP) device_tiles gives a 32-row program: the forward's K-chunk
# accumulators are then 64 fp32 registers a thread at 8 warps (32 x 32 LSTM units spilled 2.5 KB
# forward, 32 x 64 units 2.7 KB backward)
WIDE_TILE_OUTPUTS = 2048


def as_tensor(a):
    """A NumPy array (interpreter) or CuPy array / torch tensor (GPU) as a torch tensor, no copy."""
    import torch

    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def sizes_tensor(sizes, like):
    """The active rows of each step as an int32 tensor on like's device: copied from the host
    once per distinct sizes and device, then reused (a host-to-device copy from pageable
    memory synchronises the stream). The kernels only read it."""
    return _sizes_tensor(tuple(int(n) for n in sizes), like.device)


@functools.lru_cache(maxsize=64)
def _sizes_tensor(sizes, device):
    import torch

    return torch.tensor(sizes, dtype=torch.int32, device=device)


def acc_dtype(buffer):
    import torch

    return tl.float64 if buffer.dtype == torch.float64 else tl.float32


_DOT = {"float16": tl.float16, "bfloat16": tl.bfloat16}


def dot_dtype(io_dtype, acc):
    """The dtype W is held in and tl.dot reads: the input dtype for fp16/bf16, else ACC."""
    name = None if io_dtype is None else str(io_dtype).replace("torch.", "")
    return _DOT.get(name, acc)


def dot_precision(dot):
    """tl.dot input_precision: gpurnn.backends.fp32_precision() for fp32 operands, else "ieee"."""
    return fp32_precision() if dot == tl.float32 else "ieee"


def device_limits(device):
    """(SM count, shared memory per block in bytes, opt-in) of a CUDA device, as Triton's driver reads them."""
    return _device_limits(device.index if device.index is not None else 0)


@functools.lru_cache(maxsize=None)
def _device_limits(index):
    props = triton.runtime.driver.active.utils.get_device_properties(index)
    return props["multiprocessor_count"], props["max_shared_mem"]


def w_budget(shared_bytes):
    """W bytes one program may hold on a chip with shared_bytes per block: the largest power of two
    (W tiles are powers of two) that leaves KERNEL_SHARED_BYTES for the kernel's own staging, and
    never less than W_BUDGET_BYTES. None (no GPU: the interpreter, compile targets without an
    arch): W_BUDGET_BYTES."""
    room = None if shared_bytes is None else shared_bytes - KERNEL_SHARED_BYTES
    if room is None or room < W_BUDGET_BYTES:   # small chips (64 KB on sm_75): the default, as before
        return W_BUDGET_BYTES
    return 1 << (room.bit_length() - 1)


@dataclass(frozen=True)
class Config:
    BB: int          # batch rows per program
    HP: int          # padded hidden size (K of the forward dot)
    S: int           # hidden units per program
    P: int           # programs along the hidden dimension
    num_warps: int
    mode: str        # "single", "split" or "stepwise"
    nk: int = 1      # chunks of the forward dot's K (kdot); 1 in the backward
    tiles: int = 0   # batch tiles per launch (0: all of them)
    dirs_fit: bool = False   # split mode: both directions' grids resident together (one launch)
    k2: int = 0      # the power-of-two tail of the hidden dimension after its first HP/2 (k_tail); 0: HP
    rb: int = 0      # rows per dot: BB runs as dots of rb rows (h_dot_w, share_dh; fp32 64-row tiles); 0: BB

    @property
    def k1(self):
        """The first part of the forward dot's K (and of the backward's N): HP, or HP/2 where a tail k2 follows."""
        return self.HP // 2 if self.k2 else self.HP

    def groups(self, B):
        """(grid, tile0) of each launch that together cover all batch tiles: one launch, or
        `tiles` tiles at a time (batch tiles are independent, so one group may run all its
        steps before the next starts)."""
        n = triton.cdiv(B, self.BB)
        per = self.tiles or n or 1   # B=0: no tiles, no launch
        return [((min(per, n - t0), self.P), t0) for t0 in range(0, n, per)]

    @property
    def maxnreg(self):
        """ptxas's register cap: the whole register file for one program. A persistent program runs
        alone on its SM, and without the cap ptxas may trade spills for occupancy we never use."""
        return min(255, REGISTERS_PER_SM // (32 * self.num_warps))

    def options(self):
        """Launch options (kernel[grid](..., **cfg.options()) and compile_check's compile options).

        num_stages=1: each step of the time loop depends on the last, so software pipelining
        gains nothing; it only multi-buffers the loop's loads in shared memory (the stepwise fp32
        LSTM forward at H=768 took 256 KB on sm_90, over the chip's 227 KB: a launch failure).
        """
        options = dict(num_warps=self.num_warps, maxnreg=self.maxnreg, num_stages=1)
        # a split grid's barrier needs every program resident: a cooperative launch fails at launch
        # (an error) where the grid cannot be, instead of hanging in the barrier
        return dict(options, launch_cooperative_grid=True) if self.mode == "split" else options


def tensor_cores(elem_bytes):
    """Whether tl.dot runs on tensor cores: fp16/bf16 W, or fp32 W with a TF32 precision opted in."""
    return elem_bytes <= 2 or (elem_bytes == 4 and dot_precision(tl.float32) != "ieee")


def warps_for(HP, elem_bytes, direction):
    """Warps per program (measured with ptxas -v, compile_check.md).

    Tensor cores (fp16/bf16, TF32): 8. fp32/fp64 (tl.dot in IEEE is an FMA loop, each
    thread reading its rows and columns of both operands): 16 halve each
    thread's share of the loop (8 spilled 250-420 B in the backward at H=256
    and 168 B in the LSTM forward at H=128), except the backward at HP > 512,
    whose (BB, HP) share of dh needs the 255 registers of 8 warps (16 spilled
    20-96 B), and the forward at HP <= 64 (16 spilled 352-432 B in the LSTM forward at H=64
    once it read its gates by tl.split; 8: none, and 28% fewer instructions a step).
    """
    forced = os.environ.get("GPURNN_WARPS")   # for timing alternatives on a GPU (gpu_check.py)
    if forced:
        if forced not in ("2", "4", "8", "16"):
            raise ValueError(f"GPURNN_WARPS: expected one of 2, 4, 8, 16, got {forced!r}")
        return int(forced)
    if tensor_cores(elem_bytes):
        return NUM_WARPS
    if direction == "fwd":
        return 8 if HP <= 64 else 16
    return 16 if HP <= 512 else 8


def split_k(HP, elem_bytes, direction):
    """Chunks of the forward dot's K (kdot): fp32 2 (1 spilled 1.5-4.8 KB at H=128); tensor cores
    1 up to HP=256, else one per warp (NUM_WARPS): with fewer chunks than warps, the batched dot's
    layout gave the spare warps the same MMAs again (profiling/static_cost.py: 512 MMAs a step where
    the tile needs 256 at H=1024, 1024 for 256 at H=512); each chunk >= 16 (tl.dot's minimum).

    The backward's dot has N = HP: chunking its K would hold NK (BB, HP) partial sums (spilled KBs)."""
    if direction == "bwd":
        return 1
    nk = (1 if HP <= 256 else warps_for(HP, elem_bytes, direction)) if tensor_cores(elem_bytes) else 2
    return max(1, min(nk, HP // 16))


def tile_config(H, B, GP, elem_bytes, direction="fwd", budget=W_BUDGET_BYTES):
    """Tile sizes for a cell with GP (padded) gates and W held in elem_bytes per element, for the
    forward ("fwd") or backward ("bwd") kernel (B does not change them: every program takes BB rows).

    The slice S halves until the W a program holds fits `budget` bytes (w_budget), in both
    directions: a smaller backward S would double P, and LSTM H=768 at B=16 would
    then exceed the SM count and fall back to stepwise.
    GPURNN_SLICE=<S> forces a slice width (tests run the split path at small H).
    The mode is "single" or "split"; choose_config may demote "split" to "stepwise".
    """
    if direction not in ("fwd", "bwd"):
        raise ValueError(f"direction: expected 'fwd' or 'bwd', got {direction!r}")
    HP = max(16, triton.next_power_of_2(H))
    s_min = max(1, 16 // GP)   # every dot dimension (S*GP included) >= 16
    forced = os.environ.get("GPURNN_SLICE")
    if forced:
        S = min(HP, max(s_min, triton.next_power_of_2(int(forced))))
    else:
        S = HP
        while S > s_min and HP * GP * S * elem_bytes > budget:
            S //= 2
    single, nk = S >= H, split_k(HP, elem_bytes, direction)
    rows, block = batch_rows()
    return Config(rows, HP, S, triton.cdiv(H, S), warps_for(HP, elem_bytes, direction),
                  "single" if single else "split", nk, k2=0 if single else k_tail(H, HP, nk),
                  rb=0 if single else block)


BATCH_ROWS = ("16", "32", "32/16", "64/16", "64/32")


def batch_rows():
    """(BB, rb): BB rows in dots of BB, or GPURNN_BATCH_ROWS=ROWS[/BLOCK], one of BATCH_ROWS: ROWS rows in dots
    of BLOCK (tests run device_tiles' wider tiles under the interpreter; single mode runs dots of ROWS)."""
    forced = os.environ.get("GPURNN_BATCH_ROWS")
    if not forced:
        return BB, 0
    if forced not in BATCH_ROWS:
        raise ValueError(f"GPURNN_BATCH_ROWS: expected one of {', '.join(BATCH_ROWS)}, got {forced!r}")
    rows, _, block = forced.partition("/")
    return int(rows), int(block or 0)


def k_tail(H, HP, nk):
    """The K tail of a split program's dot over the hidden units: the dot runs K = H as HP/2 plus a
    power of two, at least 16 per chunk of the nk (tl.dot's minimum), where that is less than HP, so
    padding to HP costs no MMAs, loads or exchange (768 = 512 + 256, 96 = 64 + 32); else 0 (K = HP).
    Single mode keeps K = HP: its h is one (BB, HP) carry, and Triton cannot slice a tensor."""
    tail = max(16 * nk, triton.next_power_of_2(max(1, H - HP // 2)))
    return tail if HP // 2 + tail < HP else 0


def choose_config(H, B, GP, elem_bytes, device, direction="fwd", budget=None):
    """tile_config, with "split" only where every program of a launch can be resident (a CUDA device).

    A split grid larger than the SM count runs in groups of batch tiles, one launch per group
    (Config.tiles); a slice count P above the SM count runs stepwise. GPURNN_STEPWISE=1 makes
    a split config run stepwise (gpu_check tests that fallback on the GPU); GPURNN_TILES=<n>
    caps the batch tiles per launch in every mode (tests run the grouped launches).
    budget: W bytes per program; default w_budget of the device's shared memory.
    """
    on_gpu = device.type == "cuda" and not interpreting()
    if on_gpu and budget is None:
        cfg = device_tile(H, B, GP, elem_bytes, direction, *device_limits(device))
    else:
        cfg = tile_config(H, B, GP, elem_bytes, direction, budget or W_BUDGET_BYTES)
    forced = int(os.environ.get("GPURNN_TILES", "0"))
    if forced:
        cfg = replace(cfg, tiles=forced)
    if cfg.mode != "split":
        return cfg
    if not on_gpu or os.environ.get("GPURNN_STEPWISE") == "1":
        return replace(cfg, mode="stepwise")
    return place(cfg, B, device_limits(device)[0])


def device_tile(H, B, GP, elem_bytes, direction, sms, shared_bytes):
    """tile_config for a GPU with `sms` SMs and `shared_bytes` of shared memory per block, for B rows:
    of `device_tiles` (16 rows, then 32 with the same slices, then 32 with slices twice as wide or, in fp32,
    64 rows) the first with the fewest launches one after the other (`place`'s groups of batch tiles)."""
    def launches(cfg):
        return triton.cdiv(triton.cdiv(B, cfg.BB), max(1, sms // cfg.P))

    return min(device_tiles(H, GP, elem_bytes, direction, sms, shared_bytes), key=launches)


def device_tiles(H, GP, elem_bytes, direction, sms, shared_bytes):
    """Every config `device_tile` may give a layer of this size on this chip, whatever its B.

    W_BUDGET_BYTES per program, unless the chip's budget (w_budget) makes the whole W fit one
    program (single mode: no exchange, no barrier) or brings P within the SM count (no stepwise
    fallback). Not for the tensor-core backward: it holds W^T in registers, and twice the tile
    spilled there (400 B at LSTM H=768 bf16 on sm_90, 16 rows; profiling/static_cost.py). The larger
    tile is not taken otherwise: it spilled in the fp32 forward at H=128 (1.5 KB).

    A split config whose P fits the SMs then has 32-row variants for batches whose 16-row tiles do
    not: with the same slices, and with slices twice as wide (half the P) where W stays within
    the budget, WIDE_TILE_BYTES and WIDE_TILE_OUTPUTS and P stays above 1 (at LSTM H=300 the K tail
    made a 32 x 32 tile fit 96 KB; its forward spilled 2.5 KB). Measured with ptxas (static_cost.py,
    LSTM bf16 sm_90): 32 rows x 16 units spill 0 / 112 B forward / backward at H=768 (a 96 KB tile),
    384 / 464 B at H=1024 (128 KB; GRU 520 / 632 B, the opt-in Gluon forward none); 64 rows spilled
    72 B to 1.5 KB, so 32 is the most. `device_tile` takes a wider tile only where it saves launches:
    LSTM H=768 bf16 on an H100 runs B=32 as 1 x 96 programs and B=64 as 2 x 48, each one launch
    (16-row tiles: 2 and 4 launches one after the other); LSTM/GRU H=1024 runs B=64 as 2 x 64
    programs of 32 x 16, one launch where 32 x 8 took 2 of 128 (whether its spills cost less than
    the second launch's T steps only a GPU can say; gpu_check runs it). The 128 KB tiles also serve
    larger batches: LSTM/GRU H=1024 at B=128-256 (32 x 16), Elman H=1024 from B=256 (32 x 64, 328-400 B).
    fp16/bf16 on chips with an A100's shared memory or more (the ones compile_check checks); fp32 (FMA
    dots) with the same slices only, in 32 and 64 rows (fp32_wide_tiles).
    """
    cfg = tile_config(H, BB, GP, elem_bytes, direction)
    if cfg.mode == "single":
        return [cfg]
    budget = w_budget(shared_bytes)
    if not (direction == "bwd" and tensor_cores(elem_bytes)):
        big = tile_config(H, BB, GP, elem_bytes, direction, budget)
        if big.mode == "single":
            return [big]
        cfg = big if cfg.P > sms else cfg
    if cfg.BB != BB or cfg.P > sms:
        return [cfg]   # (P > sms runs stepwise: every tile in each step's launch anyway)
    if elem_bytes == 4 and not tensor_cores(elem_bytes):
        return [cfg] + fp32_wide_tiles(cfg, GP, direction, shared_bytes)
    if elem_bytes != 2 or shared_bytes < min(SHARED_BYTES.values()):
        return [cfg]
    return [cfg] + [replace(cfg, BB=2 * BB, S=S, P=triton.cdiv(H, S)) for S in (cfg.S, 2 * cfg.S)
                    if S < H and (cfg.k1 + cfg.k2) * GP * S * elem_bytes <= WIDE_TILE_BYTES
                    and 2 * BB * S * GP <= WIDE_TILE_OUTPUTS
                    and cfg.HP * GP * S * elem_bytes <= budget]


def fp32_wide_tiles(cfg, GP, direction, shared_bytes):
    """The 32- and 64-row variants of an fp32 split config (FMA dots, IEEE) with the same slices, for HP >= 512.
    Their dots may take `rb` rows at a time (Config.rb; h_dot_w, share_dh), at no extra arithmetic (an FMA
    dot's work is rows x K x N however it is cut):
    - the forward stages its (rows, K1) operand in shared memory beside the W tile: blocks of 32 rows
      where that fits, else 16 (LSTM/GRU H=1024: 128 + 128 KB with 32, over sm_90's 227);
    - the backward holds its share of dh, (rows, K1), in registers: 32 rows in one dot where it has 8 warps
      (HP > 512, warps_for) and the share is within FP32_SHARE_BYTES, else in blocks of 16 (one 32-row
      dot at 16 warps' 128 registers spilled 0.4-1.4 KB at H=256-512); 64 rows in blocks of 16 (of 32:
      64 B spilled at H=768).
    ptxas (sm_90, LSTM/GRU/Elman at H=512, 768 and 1024): no spills, except 56 B in the GRU forward and 8 B
    in the LSTM's stepwise forward with 32 rows at H=768 (as before), and 16 B in the Elman backward with 64
    at H=1024; at H=300 (HP=512) 8-132 B. On an H100 every LSTM/GRU/Elman layer with H <= 1024 and B <= 64
    then runs one launch (before: fp32 LSTM/GRU at B=64 took 2 at H=272-768, 4 at H=1024)."""
    if cfg.HP < 512:
        return []
    w_tile = (cfg.k1 + cfg.k2) * GP * cfg.S * 4
    if direction == "fwd":
        block = next((b for b in (2 * BB, BB) if w_tile + b * cfg.k1 * 4 <= shared_bytes), None)
        blocks = {2 * BB: block, 4 * BB: block}
    else:
        whole = cfg.num_warps == 8 and 2 * BB * cfg.k1 * 4 <= FP32_SHARE_BYTES
        blocks = {2 * BB: 2 * BB if whole else BB, 4 * BB: BB}
    return [replace(cfg, BB=rows, rb=0 if b == rows else b) for rows, b in blocks.items() if b]


def gluon_enabled():
    """GPURNN_GLUON=1 asks for the Gluon kernels where they apply (default 0: not yet run on a GPU)."""
    value = os.environ.get("GPURNN_GLUON", "0")
    if value not in ("0", "1"):
        raise ValueError(f"GPURNN_GLUON: expected 0 or 1, got {value!r}")
    return value == "1"


def gluon_fits(cfg, direction, elem_bytes, GP):
    """Whether a cell's Gluon kernel (kernels/gluon.py) runs this config: split or stepwise, fp16/bf16 W
    (mma v2), batch tiles of whole MMAs, and where it spills nothing or little (compile_check.py,
    static_cost.py; sm_90):
      * forward: the K chunks one per warp (mma_layout), each at least 16 deep, and the chunks'
        accumulators (NK, BB, S*GP) at most 64 fp32 registers a thread (WIDE_TILE_OUTPUTS;
        32 rows x 32 units spilled 216-404 B at LSTM H=264-384);
      * backward: 16-row tiles of at most 64 gate columns (S*GP; LSTM H >= 257 at the default
        slices). With wider slices every warp reads the whole (BB, S*GP) gate-gradient operand, and
        at LSTM H=128-256 it issued 35-57% more instructions a step than Triton's kernel; with 32
        rows its per-element share addresses spilled 264-732 B (H=96-768)."""
    if cfg.mode == "single" or elem_bytes != 2 or cfg.BB % 16:
        return False
    if direction == "bwd":
        return cfg.BB == 16 and cfg.S * GP <= 64
    chunks = [cfg.k1] + ([cfg.k2] if cfg.k2 else [])
    return (cfg.nk == cfg.num_warps and all(k % cfg.nk == 0 and k // cfg.nk >= 16 for k in chunks)
            and cfg.BB * cfg.S * GP <= WIDE_TILE_OUTPUTS)


def gluon_applies(cfg, direction, elem_bytes, GP, device):
    """Whether a launcher runs a cell's Gluon kernel (kernels/gluon.py): asked for (`gluon_enabled`), on a
    CUDA device (Gluon has no interpreter), and the config `gluon_fits`."""
    return (gluon_enabled() and device.type == "cuda" and not interpreting()
            and gluon_fits(cfg, direction, elem_bytes, GP))


def place(cfg, B, sms):
    """A split config on a GPU with `sms` SMs: stepwise where its P slices alone exceed the SMs,
    else in groups of batch tiles small enough to be resident together (profiling/static_cost.py
    calls this with an H100's or A100's SM count)."""
    if cfg.mode != "split":
        return cfg
    if cfg.P > sms:
        return replace(cfg, mode="stepwise")
    programs = triton.cdiv(B, cfg.BB) * cfg.P
    if programs > sms:
        cfg = replace(cfg, tiles=min(cfg.tiles or sms, sms // cfg.P))
    return replace(cfg, dirs_fit=not cfg.tiles and 2 * programs <= sms)


def launch(kernel, grid, *args, **kwargs):
    """Every kernel launch goes through here, so tests can count launches (and graphs can record them)."""
    calls = graphs.recording()
    if calls is None:
        kernel[grid](*args, **kwargs)
    else:
        calls.append((kernel, grid, args, kwargs))


def launch_tiles(kernel, cfg, B, *args, directions=1, **kwargs):
    """Launch a cell kernel over every batch tile, in cfg's groups (the kernel's tile0 argument)."""
    for (tiles, P), tile0 in cfg.groups(B):
        launch(kernel, (tiles, P, directions), *args, tile0=tile0, **kwargs)


@functools.lru_cache(maxsize=None)
def _no_offsets(device, n):
    """Zeros for one-direction launches, made once per device (the kernel never reads them)."""
    import torch

    return torch.zeros(n, dtype=torch.int64, device=device)


def direction_offsets(buffers):
    """int64 tensor: for each buffer argument, the 16-byte units from direction 0's tensor to
    direction 1's (buffers: one list of tensors per direction, in kernel order)."""
    if len(buffers) == 1:
        return _no_offsets(buffers[0][0].device, len(buffers[0]))
    values = []
    for a, b in zip(*buffers):
        delta = b.data_ptr() - a.data_ptr()
        if a.dtype != b.dtype or delta % 16:
            raise ValueError(f"direction buffers: expected one dtype and addresses a multiple of 16 bytes "
                             f"apart, got {a.dtype} and {b.dtype}, {delta} bytes apart")
        values.append(delta // 16)
    device = buffers[0][0].device
    return _offsets_tensor(tuple(values), device, _stream_id(device))


def _stream_id(device):
    import torch

    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


@functools.lru_cache(maxsize=256)
def _offsets_tensor(values, device, stream):
    """The offsets on the device, made once per distinct values and stream (repeated calls reuse
    the same buffers, so the same offsets): a new one is copied from pinned memory without blocking
    the host, in the order of the stream that will read it (hence the stream in the key)."""
    import torch

    host = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def direction_plan(cfg, buffers):
    """[(buffer argument lists of the directions in one launch, their offsets)] for one or both
    directions of a layer (buffers: one list of tensor arguments per direction, in kernel order;
    the kernel moves them with `for_direction`). Both directions share each launch (grid axis 2),
    except in split mode where both grids do not fit the SMs together (cfg.dirs_fit: the grid
    barrier needs every program of a launch resident) and for tensors not a multiple of 16 bytes apart."""
    # The offsets count 16-byte units (for_direction), so direction 1's tensors must lie a
    # multiple of 16 bytes from direction 0's (engine buffers always do). The interpreter copies
    # CUDA arguments to the host: direction 1, reached by offset only, would not be copied.
    apart = len(buffers) > 1 and ((cfg.mode == "split" and not cfg.dirs_fit) or
                                  (interpreting() and buffers[0][0].is_cuda) or
                                  any((a.data_ptr() - b.data_ptr()) % 16 for a, b in zip(*buffers)))
    if apart:
        alone = direction_offsets(buffers[:1])
        return [([one], alone) for one in buffers]
    # every direction's list stays in the plan: the kernel reaches direction 1's tensors only
    # through the offsets, so nothing else may keep them (sizes, counters) alive
    return [(buffers, direction_offsets(buffers))]


def launch_directions(kernel, cfg, B, plan, *args, **kwargs):
    """launch_tiles for each entry of a direction_plan."""
    for buffers, offsets in plan:
        launch_tiles(kernel, cfg, B, *buffers[0], offsets, *args, directions=len(buffers), DIRS=len(buffers),
                     **kwargs)


def run_windows(cfg, T, launch_window, reverse=False):
    """Call launch_window(t_start, n_steps) once for the whole sequence, or once per step (stepwise:
    on a GPU recorded, then launched or replayed as a CUDA graph, kernels/graphs.py)."""
    if cfg.mode != "stepwise":
        launch_window(T - 1 if reverse else 0, T)
        return
    starts = [T - 1 - i if reverse else i for i in range(T)]
    if interpreting():
        for t in starts:
            launch_window(t, 1)
        return
    graphs.run(graphs.record(lambda: [launch_window(t, 1) for t in starts]))


def partials_workspace(cfg, B, like):
    """(2, B, P, P, S) shares of dh for split/stepwise backward (store_partial), in like's (the buffers') dtype; a dummy
    in single mode."""
    import torch

    shape = (2, B, cfg.P, cfg.P, cfg.S) if cfg.mode != "single" else (1,)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def barrier_counters(cfg, B, like):
    """One zeroed arrival counter per batch tile for grid_barrier (unused outside split mode)."""
    import torch

    return torch.zeros(triton.cdiv(B, cfg.BB), dtype=torch.int32, device=like.device)


def w_elem_bytes(dot):
    return {tl.float16: 2, tl.bfloat16: 2, tl.float32: 4, tl.float64: 8}[dot]


def setup(c, H, GP, io_dtype, direction):
    """What a cell's launcher needs: (T, B, h as a tensor, config, kernel constexprs and launch options)."""
    T, B = c.gx.shape[:2]
    h = as_tensor(c.h)
    acc = acc_dtype(h)
    dot = dot_dtype(io_dtype, acc)
    cfg = choose_config(H, B, GP, w_elem_bytes(dot), h.device, direction)
    consts = dict(kernel_consts(cfg, direction, acc, dot, dot_precision(dot)), **cfg.options())
    return T, B, h, cfg, consts


def compile_configs(hidden_size, dtype, GP, direction="fwd", arch=None):
    """The tile configs a launcher picks on a GPU of this arch (80, 90: ARCH_SMS, SHARED_BYTES; None:
    tile_config's default budget) for this size, dtype and direction, whatever B (device_tiles)."""
    acc, dot, _ = dtype_constexprs(dtype)
    if arch is None:
        return [tile_config(hidden_size, BB, GP, w_elem_bytes(dot), direction)]
    return device_tiles(hidden_size, GP, w_elem_bytes(dot), direction, ARCH_SMS[arch], SHARED_BYTES[arch])


def kernel_consts(cfg, direction, acc, dot, prec):
    """A cell kernel's constexprs for a config (the forward also takes NK, the chunks of its dot's K)."""
    consts = dict(BB=cfg.BB, RB=cfg.rb or cfg.BB, K1=cfg.k1, K2=cfg.k2, S=cfg.S, P=cfg.P,
                  SINGLE=cfg.mode == "single", SYNC=cfg.mode == "split", ACC=acc, DOT=dot, PREC=prec)
    return dict(consts, NK=cfg.nk) if direction == "fwd" else consts


def direction_targets(name, fn, signature, constexprs, cfg):
    """`target` for one direction per launch (DIRS=1) and for a layer's two directions sharing a
    launch (DIRS=2, named ..._2dirs; see direction_plan); a split config also as it runs stepwise
    (SYNC off, named ..._stepwise: a GPU with fewer SMs than P)."""
    both = [(name, 1), (f"{name}_2dirs", 2)]
    out = [target(n, fn, signature, dict(constexprs, DIRS=dirs), cfg) for n, dirs in both]
    if cfg.mode == "split":
        stepwise = replace(cfg, mode="stepwise")
        out.append(target(f"{name}_stepwise", fn, signature, dict(constexprs, DIRS=1, SYNC=False), stepwise))
    return out


def target(name, fn, signature, constexprs, cfg):
    """One compile_targets entry; constexprs carries the launch options num_warps and maxnreg
    (compile_check pops them)."""
    return name, fn, signature, dict(constexprs, **cfg.options())


def dtype_constexprs(dtype):
    """(ACC, DOT, precision) for a data dtype name, as the launchers pick them
    (acc_dtype and dot_dtype: float64 data accumulates and dots in float64)."""
    acc = tl.float64 if dtype == "float64" else tl.float32
    dot = dot_dtype(dtype, acc)
    return acc, dot, dot_precision(dot)


def buffer_ptr(dtype):
    """Pointer type of the engine's buffers (and the backward's shares) for a data dtype name: the
    data's own (gpurnn.arrays.compute_dtype with the kernels)."""
    return {"float16": "*fp16", "bfloat16": "*bf16", "float64": "*fp64"}.get(dtype, "*fp32")

