"""Shared pieces of the fused recurrent kernels: activations, tile loads, the
grid barrier, configuration choice and launching.

How a cell module (kernels/<cell>.py) is laid out
-------------------------------------------------
A comment block naming every tensor by role and shape, then

    @triton.jit _fwd_step(...)   one forward step for one (batch tile, hidden slice)
    @triton.jit _fwd_kernel(...) loops `_fwd_step` over a window of steps
    @triton.jit _bwd_* / _bwd_kernel(...)   the same for reverse time
    forward(c, sizes, io_dtype=None)    launcher: the engine's contract (engine._kernels)
    backward(c, sizes, io_dtype=None)
    compile_targets(hidden_size, dtype) -> [(name, jit_fn, signature, constexprs)]
        the configs its launchers pick on a GPU (`compile_configs`), built with
        `target` (constexprs also carry num_warps); signature maps every
        non-constexpr argument to a Triton type ('*fp32', 'i32').

Grid and modes. Programs form a grid (batch tiles of BB rows) x (P hidden
slices of S units; S*P >= H). Every kernel takes a window of steps
(t_start, n_steps) as runtime arguments (do_not_specialize: a new T never
recompiles), so one kernel serves three modes (`Config.mode`):

  "single"  P == 1: the whole hidden state of a batch tile lives in one
            program; W_hh stays in registers and the carry never leaves the
            chip; one launch runs all T steps.  Default whenever W fits.
  "split"   P > 1, one launch; every program holds its W slice for all T
            steps, reads the full h_t of its batch tile from global memory
            and `grid_barrier`s after each step.  GPU only (all programs must
            be resident: grid <= SM count; a spin would hang the interpreter).
  "stepwise" P > 1, one launch per step (n_steps=1): the same kernel and
            step body; the launch boundary is the barrier.  The fallback when
            the split grid does not fit, and the path that tests the split
            arithmetic under TRITON_INTERPRET=1 (GPURNN_SLICE forces it).

Tiles. H is padded to HP = next power of two (>= 16) and masked. Gates get a
gate dimension: a forward W tile is (HP, S*GP) with column s*GP + g holding
row g*H + j0 + s of W_hh (GP = gates padded to a power of two), so one
tl.dot gives all gates of the slice, `tl.reshape` to (BB, S, GP) and `gate`
picks one. A backward W tile is (HP*GP, S) with row k*GP + g holding
W_hh[g*H + k, j0 + s], matched by full gate-gradient rows loaded with
`load_gate_rows` in the same k*GP + g order.

Precision. Carries and accumulation in ACC (float32; float64 for float64
buffers). fp32 data: tl.dot in IEEE fp32 (TF32 only with GPURNN_TF32=1).
fp16/bf16 data (`io_dtype`): W is held on chip in that dtype and h is
rounded to it before each tl.dot (accumulating in fp32), as cuDNN does;
this halves the registers W needs. Buffers stay in the engine's compute
dtype (float32 for fp16/bf16).
"""
import os
from dataclasses import dataclass

import numpy as np
import triton
import triton.language as tl

# ----------------------------------------------------------------------------- device code


@triton.jit
def sigmoid(x):
    # 1/(1+e^-x) saturates correctly at both ends (e^-x = inf gives 0).
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # Odd extension of a form that never overflows: e = exp(-2|x|) <= 1.
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -y, y)


@triton.jit
def activation(x, KIND: tl.constexpr):
    """KIND 0: tanh, 1: relu (cells.NONLINEARITIES order)."""
    if KIND == 0:
        return tanh(x)
    else:
        return tl.maximum(x, 0.0)


@triton.jit
def activation_grad_from_output(y, KIND: tl.constexpr):
    """phi'(z) through y = phi(z)."""
    if KIND == 0:
        return 1.0 - y * y
    else:
        return tl.where(y > 0, 1.0, 0.0)


@triton.jit
def gate(a3, k: tl.constexpr):
    """Gate k of a (BB, S, GP) tile as (BB, S); the GP axis is per thread, so the sum is register-only."""
    g = tl.arange(0, a3.shape[2])[None, None, :]
    return tl.sum(tl.where(g == k, a3, 0.0), axis=2)


@triton.jit
def load_rows(p, rows, cols, stride, row_ok, col_ok, ACC: tl.constexpr):
    """(len(rows), len(cols)) tile of a row-major matrix, zero where masked, in ACC."""
    mask = row_ok[:, None] & col_ok[None, :]
    return tl.load(p + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def load_w_fwd(p_w, H, K, j0, HP: tl.constexpr, S: tl.constexpr, GP: tl.constexpr,
               G: tl.constexpr, DOT: tl.constexpr):
    """(HP, S*GP) tile: [k, s*GP + g] = W[g*H + j0 + s, k] of a (G*H, K) weight, zero padded."""
    k = tl.arange(0, HP)
    col = tl.arange(0, S * GP)
    s, g = col // GP, col % GP
    j = j0 + s
    ok = (k[:, None] < K) & ((j < H) & (g < G))[None, :]
    p = p_w + (g * H + j)[None, :] * K + k[:, None]
    return tl.load(p, mask=ok, other=0.0).to(DOT)


@triton.jit
def load_w_bwd(p_w, H, K, j0, HP: tl.constexpr, S: tl.constexpr, GP: tl.constexpr,
               G: tl.constexpr, DOT: tl.constexpr):
    """(HP*GP, S) tile: [k*GP + g, s] = W[g*H + k, j0 + s] of a (G*H, K) weight, zero padded."""
    row = tl.arange(0, HP * GP)
    k, g = row // GP, row % GP
    j = j0 + tl.arange(0, S)
    ok = ((k < H) & (g < G))[:, None] & (j < K)[None, :]
    p = p_w + (g * H + k)[:, None] * K + j[None, :]
    return tl.load(p, mask=ok, other=0.0).to(DOT)


@triton.jit
def gate_offsets(H, j0, S: tl.constexpr, GP: tl.constexpr, G: tl.constexpr):
    """(S, GP) column offsets g*H + j0 + s into a (.., G*H) gate row, and their mask."""
    s = tl.arange(0, S)[:, None]
    g = tl.arange(0, GP)[None, :]
    return g * H + j0 + s, ((j0 + s) < H) & (g < G)


@triton.jit
def load_gate_rows(p, rows, row_ok, stride, H, HP: tl.constexpr, GP: tl.constexpr,
                   G: tl.constexpr, ACC: tl.constexpr):
    """(BB, HP*GP) tile of gate rows in the backward W tile's order: [b, k*GP + g] = p[b, g*H + k]."""
    col = tl.arange(0, HP * GP)
    k, g = col // GP, col % GP
    ok = row_ok[:, None] & ((k < H) & (g < G))[None, :]
    return tl.load(p + rows[:, None] * stride + (g * H + k)[None, :], mask=ok, other=0.0,
                   cache_modifier=".cg").to(ACC)


@triton.jit
def grid_barrier(p_bar, target):
    """Wait until `target` arrivals are counted at p_bar (one counter per batch tile).

    Every program adds 1 per step and waits for step*P; the counter only grows,
    so it needs no reset within a launch. GPU only: the interpreter runs
    programs one after another and would spin forever.
    """
    tl.debug_barrier()   # this program's stores come before its arrival
    tl.atomic_add(p_bar, 1, sem="release", scope="gpu")
    while tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


# ----------------------------------------------------------------------------- host code

NONLINEARITY_KIND = {"tanh": 0, "relu": 1}
W_BUDGET_BYTES = 64 * 1024   # W held per program; beyond this, split the hidden dimension
MIN_BB, MAX_BB = 16, 64      # tl.dot needs every dim >= 16


def interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def as_tensor(a):
    """A NumPy array (interpreter) or CuPy array / torch tensor (GPU) as a torch tensor, no copy."""
    import torch

    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def sizes_tensor(sizes, like):
    import torch

    return torch.tensor(list(sizes), dtype=torch.int32, device=like.device)


def acc_dtype(buffer):
    import torch

    return tl.float64 if buffer.dtype == torch.float64 else tl.float32


_DOT = {"float16": tl.float16, "bfloat16": tl.bfloat16}


def dot_dtype(io_dtype, acc):
    """The dtype W is held in and tl.dot reads: the input dtype for fp16/bf16, else ACC."""
    name = None if io_dtype is None else str(io_dtype).replace("torch.", "")
    return _DOT.get(name, acc)


def dot_precision(dot):
    if dot == tl.float32 and os.environ.get("GPURNN_TF32") == "1":
        return "tf32"
    return "ieee"


def sm_count(device):
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count


@dataclass(frozen=True)
class Config:
    BB: int          # batch rows per program
    HP: int          # padded hidden size (K of the forward dot)
    S: int           # hidden units per program
    P: int           # programs along the hidden dimension
    num_warps: int
    mode: str        # "single", "split" or "stepwise"

    def grid(self, B):
        return (triton.cdiv(B, self.BB), self.P)


def tile_config(H, B, GP, elem_bytes):
    """Tile sizes for a cell with GP (padded) gates and W held in elem_bytes per element.

    The slice S halves until the W a program holds fits W_BUDGET_BYTES.
    GPURNN_SLICE=<S> forces a slice width (tests run the split path at small H).
    The mode is "single" or "split"; choose_config may demote "split" to "stepwise".
    """
    HP = max(16, triton.next_power_of_2(H))
    BB = min(MAX_BB, max(MIN_BB, triton.next_power_of_2(B)))
    forced = os.environ.get("GPURNN_SLICE")
    if forced:
        S = min(HP, max(16, triton.next_power_of_2(int(forced))))
    else:
        S = HP
        while S > 16 and HP * GP * S * elem_bytes > W_BUDGET_BYTES:
            S //= 2
    P = triton.cdiv(H, S)
    num_warps = 4 if HP * GP * S * elem_bytes <= 32 * 1024 else 8
    return Config(BB, HP, S, P, num_warps, "single" if P == 1 else "split")


def choose_config(H, B, GP, elem_bytes, device):
    """tile_config, with "split" only where every program can be resident (a CUDA device, grid <= SMs)."""
    cfg = tile_config(H, B, GP, elem_bytes)
    if cfg.mode == "split" and (device.type != "cuda" or interpreting()
                                or triton.cdiv(B, cfg.BB) * cfg.P > sm_count(device)):
        cfg = Config(cfg.BB, cfg.HP, cfg.S, cfg.P, cfg.num_warps, "stepwise")
    return cfg


def launch(kernel, grid, *args, **kwargs):
    """Every kernel launch goes through here, so tests can count launches."""
    kernel[grid](*args, **kwargs)


def run_windows(cfg, T, launch_window, reverse=False):
    """Call launch_window(t_start, n_steps) once for the whole sequence, or once per step (stepwise)."""
    if cfg.mode != "stepwise":
        launch_window(T - 1 if reverse else 0, T)
        return
    for i in range(T):
        launch_window(T - 1 - i if reverse else i, 1)


def barrier_counters(cfg, B, like):
    """One zeroed arrival counter per batch tile for grid_barrier (unused outside split mode)."""
    import torch

    return torch.zeros(triton.cdiv(B, cfg.BB), dtype=torch.int32, device=like.device)


def w_elem_bytes(dot):
    return {tl.float16: 2, tl.bfloat16: 2, tl.float32: 4, tl.float64: 8}[dot]


def loop_forward(c, sizes):
    """The engine's xp time loop (the fallback for configurations without a kernel)."""
    B = c.x.shape[1]
    for t, n in enumerate(sizes):
        c.step(t, n)
        if n < B:
            for seq in c.seq:
                seq[t + 1, n:] = seq[t, n:]


def loop_backward(c, sizes):
    for t in range(len(sizes) - 1, -1, -1):
        c.back_step(t, sizes[t])


COMPILE_BATCHES = (16, 64)


def compile_configs(hidden_size, dtype, GP):
    """The distinct tile configs a launcher picks on a GPU at the benchmark batch sizes."""
    elem = 2 if dtype in _DOT else 4
    out = []
    for B in COMPILE_BATCHES:
        cfg = tile_config(hidden_size, B, GP, elem)
        if cfg not in out:
            out.append(cfg)
    return out


def target(name, fn, signature, constexprs, cfg):
    """One compile_targets entry; constexprs carries the launch option num_warps (compile_check pops it)."""
    return name, fn, signature, dict(constexprs, num_warps=cfg.num_warps)


def dtype_constexprs(dtype):
    """(ACC, DOT, precision) for a data dtype name, as the launchers pick them."""
    dot = _DOT.get(dtype, tl.float32)
    return tl.float32, dot, "ieee"


def buffer_ptr(dtype):
    """Pointer type of the engine's buffers for a data dtype (fp16/bf16 compute in fp32)."""
    return "*fp64" if dtype == "float64" else "*fp32"

