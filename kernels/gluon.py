"""Device helpers and layouts for Gluon (Triton's explicit-layout dialect) versions of the split/stepwise
fp16/bf16 kernels, where Triton's own layouts cost shared-memory traffic every step. Gluon kernels call
common.py's elementwise and barrier helpers (tanh, for_direction, arrive, wait) as they are; what is here
sets layouts.

What Triton 3.6 cannot be made to do, and Gluon can (profiling/static_cost.py, LSTM H=768 B=16 bf16 sm_90):
  * keep W in registers in the MMA's operand layout for all steps. Triton keeps the forward's W in
    shared memory and reads it back (ldmatrix, 48 KB a step); here W is a loop-invariant register
    operand (48 registers a thread at that tile) and the kernel's shared memory is 16 KB, not 64;
  * load h from the states straight into the MMA's operand layout (each warp its own K chunk),
    instead of staging it through shared memory (24 KB a step);
  * sum the K chunks of the warps through one (NK, BB, S*GP) fp32 buffer read once (16 KB), where
    Triton's reduction read 32 KB;
  * in the backward, store each program's shares from the MMA's accumulator layout, and sum the P
    shares of a slice mostly within a thread (Triton's layout changes read 84 KB a step).

Gluon has no interpreter: these kernels run only on a GPU (common.gluon_applies), and they are checked there by
profiling/gpu_check.py against torch and the Triton kernels. Off the GPU they are compiled
(compile_check.py, static_cost.py) but never run, so they stay opt-in (GPURNN_GLUON=1) until a
GPU run has shown them correct and faster.

Layouts, for BB batch rows, S units of GP gates, NK K chunks and NW warps:
  mma (forward)    NVMMA v2 over (NK, BB, S*GP): warp c computes chunk c of K, no warp repeats another;
  sum_layout       (NK, BB, S, GP): a unit's GP gates in one thread (gates by in-thread sums), the NK
                   chunks split over the lanes left once every (row, unit) has one;
  share_layout     (BB, PC, S): PC shares of a slice's S columns, summed within a thread and a warp.
"""
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl



@gluon.constexpr_function
def mma_layout(NK):
    """The forward's batched MMA: chunk c of K on warp c."""
    return gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NK, 1, 1], instr_shape=[1, 16, 8])


@gluon.constexpr_function
def sum_layout(NK, BB, S, GP, NW):
    """(NK, BB, S, GP) with a unit's gates in one thread: each (row, unit) pair on r lanes that split the NK
    chunks between them (r = 1 where the pairs outnumber the threads: then a thread holds several)."""
    r = max(1, min(NK, 32 * NW // (BB * S)))
    ts = min(S, 32 // r)
    tb = 32 // r // ts
    wb = min(NW, max(1, BB // tb))
    return gl.BlockedLayout([NK // r, 1, 1, GP], [r, tb, ts, 1], [1, wb, NW // wb, 1], [3, 2, 1, 0])


@gluon.constexpr_function
def share_layout(BB, PC, S, NW):
    """(BB, PC, S): a row's PC shares of S columns over the lanes of one warp (the sum over shares is
    within threads and a warp's shuffles); the S columns of a share in one thread (one vector load)."""
    tb = max(1, min(32, BB // NW))
    tp = 32 // tb
    return gl.BlockedLayout([1, max(1, PC // tp), S], [tb, tp, 1], [NW, 1, 1], [2, 1, 0])


@gluon.constexpr_function
def share_chunk(P):
    """Shares a load in sum_partials: up to 32, a power of two (a tensor's shape), masked past P."""
    return min(32, triton.next_power_of_2(P))


@gluon.jit
def idx3(n0: gl.constexpr, n1: gl.constexpr, n2: gl.constexpr, layout: gl.constexpr):
    """Index tensors (n0, 1, 1), (1, n1, 1), (1, 1, n2) of a 3-d layout, to broadcast together."""
    i0 = gl.arange(0, n0, layout=gl.SliceLayout(1, gl.SliceLayout(2, layout)))
    i1 = gl.arange(0, n1, layout=gl.SliceLayout(0, gl.SliceLayout(2, layout)))
    i2 = gl.arange(0, n2, layout=gl.SliceLayout(0, gl.SliceLayout(1, layout)))
    return (gl.expand_dims(gl.expand_dims(i0, 1), 2), gl.expand_dims(gl.expand_dims(i1, 0), 2),
            gl.expand_dims(gl.expand_dims(i2, 0), 1))


@gluon.jit
def idx2(n0: gl.constexpr, n1: gl.constexpr, layout: gl.constexpr):
    """Index tensors (n0, 1), (1, n1) of a 2-d layout."""
    return (gl.expand_dims(gl.arange(0, n0, layout=gl.SliceLayout(1, layout)), 1),
            gl.expand_dims(gl.arange(0, n1, layout=gl.SliceLayout(0, layout)), 0))


@gluon.jit
def gate(a3, k: gl.constexpr):
    """Gate k of a (BB, S, GP) tile whose gate axis is within each thread (sum_layout): register-only."""
    g = gl.arange(0, a3.shape[2], layout=gl.SliceLayout(0, gl.SliceLayout(1, a3.type.layout)))
    return gl.sum(gl.where(gl.expand_dims(gl.expand_dims(g, 0), 1) == k, a3, 0.0), axis=2)


@gluon.jit
def load_w(p_w, H, j0, k0, KC: gl.constexpr, NK: gl.constexpr, S: gl.constexpr, GP: gl.constexpr,
           G: gl.constexpr, layout: gl.constexpr):
    """The forward's W tile rows k0 .. k0 + NK*KC as NK chunks (NK, KC, S*GP) in `layout` (the MMA's B
    operand): [c, kk, s*GP + g] = W[g*H + j0 + s, k0 + c*KC + kk] of a (G*H, H) weight, zero padded."""
    c, kk, n = idx3(NK, KC, S * GP, layout)
    k = k0 + c * KC + kk
    j = j0 + n // GP
    g = n % GP
    return gl.load(p_w + (g * H + j) * H + k, mask=(k < H) & (j < H) & (g < G), other=0.0)


@gluon.jit
def load_wt(p_w, H, j0, k0, KC: gl.constexpr, S: gl.constexpr, GP: gl.constexpr, G: gl.constexpr,
            layout: gl.constexpr):
    """The backward's W^T tile (S*GP, KC) in `layout` (the MMA's B operand): [s*GP + g, kk] =
    W[g*H + j0 + s, k0 + kk]."""
    n, kk = idx2(S * GP, KC, layout)
    k = k0 + kk
    j = j0 + n // GP
    g = n % GP
    return gl.load(p_w + (g * H + j) * H + k, mask=(k < H) & (j < H) & (g < G), other=0.0)


@gluon.jit
def load_exchange(p_h, t, rows0, B, H, k0, KC: gl.constexpr, NK: gl.constexpr, BB: gl.constexpr,
                  layout: gl.constexpr):
    """common.load_exchange's columns k0 .. k0 + NK*KC of h_t as (NK, BB, KC) chunks, straight into
    `layout` (the MMA's A operand: no staging in shared memory)."""
    c, r, kk = idx3(NK, BB, KC, layout)
    k = k0 + c * KC + kk
    rows = rows0 + r
    return gl.load(p_h + t.to(gl.int64) * B * H + rows * H + k, mask=(rows < B) & (k < H), other=0.0,
                   cache_modifier=".cg")


@gluon.jit
def store_partial(p_ws, b_prod, k0, t, pid_s, rows0, B, N, P: gl.constexpr, S: gl.constexpr):
    """common.store_partial, from b_prod's own layout (the MMA's accumulator)."""
    layout: gl.constexpr = b_prod.type.layout
    r, k = idx2(b_prod.shape[0], b_prod.shape[1], layout)
    rows = rows0 + r
    k = k0 + k
    row = ((t % 2) * B + rows).to(gl.int64) * (P * P * S)
    gl.store(p_ws + row + (k // S) * (P * S) + pid_s * S + k % S, b_prod, mask=(rows < B) & (k < N))


@gluon.jit
def sum_partials(p_ws, t, rows0, pid_s, B, N, BB: gl.constexpr, P: gl.constexpr, S: gl.constexpr,
                 PC: gl.constexpr, layout: gl.constexpr):
    """common.sum_partials as (BB, S) in SliceLayout(1, layout) (share_layout), PC shares a load."""
    r, p, s = idx3(BB, PC, S, layout)
    rows = rows0 + r
    row = ((t % 2) * B + rows).to(gl.int64) * (P * P * S) + pid_s * (P * S)
    ok = (rows < B) & (pid_s * S + s < N)
    acc = gl.zeros([BB, S], gl.float32, gl.SliceLayout(1, layout))
    for p0 in gl.static_range(0, P, PC):
        share = gl.load(p_ws + row + (p0 + p) * S + s, mask=ok & (p0 + p < P), other=0.0, cache_modifier=".cg")
        acc += gl.sum(share.to(gl.float32), axis=1)
    return acc


# Triton 3.6's experimental Gluon API, which 3.8 changed (gl.thread_barrier renamed, and more): elsewhere lstm.py
# runs its Triton kernels. (Checked here, below the kernels: a line added above them moves the line info of their
# compiled code, which profiling/static_cost.py reads, and once moved a sizes load to sum_partials' line.)
if not hasattr(gl, "thread_barrier"):
    raise ImportError("gpurnn's Gluon kernels need Triton 3.6's Gluon API (gl.thread_barrier)")
