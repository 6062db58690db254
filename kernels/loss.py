"""Fused sequence loss: -log softmax(W h_n + b)[y_n] per row, never holding all logits.

# h: (N, H)   w: (V, H)   b: (V,)   y: (N,) int64   lse, loss, grad: (N,) accumulation dtype
# dl: (chunk rows, V) accumulation dtype   dh: (N, H), dw: (V, H), db: (V,) in the data's dtype

N = T*B rows (every step of every sequence). The vocabulary is streamed in
BLOCK_V columns: the forward keeps a running max and sum per row (online
logsumexp) and picks the target logit on the way, so it never holds more than a
tile of logits (a 50k vocabulary costs N*4 bytes of extra memory, not N*V).
The backward takes the rows in chunks of at most CHUNK_BYTES of logits: a kernel
recomputes each (BLOCK_N, BLOCK_V) logit tile of the chunk and stores
dlogit = grad_n * (softmax - onehot), then GEMMs give the chunk's dh = dlogit W and add
dlogit^T h into dW, and a sum over rows gives db. No atomics: every sum has one order,
so two runs give the same bits. Offsets are int64 (N*H or V*H may pass 2^31).
"""
import contextlib

import torch
import triton
import triton.language as tl

from .common import dot_precision

NUM_WARPS = 8
CHUNK_BYTES = 64 << 20   # dlogits of one backward chunk
# (BLOCK_N, BLOCK_V, BLOCK_H), checked with ptxas for sm_80/sm_90 (no spills, shared memory
# under sm_80's 163 KB): float32 takes 16-wide H slices, since IEEE fp32 dots (the default)
# run on FMA units and a 32-wide slice spills in the backward; float64 halves the tiles.
_BLOCKS = {torch.float64: (32, 64, 32), torch.float32: (64, 128, 16)}
_DEFAULT_BLOCKS = (64, 128, 32)   # float16, bfloat16
_ACC = {torch.float64: tl.float64}   # everything else accumulates in float32


@triton.jit
def _logit_tile(p_h, p_w, p_b, rows, cols, H, row_ok, col_ok,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                BLOCK_H: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_N, BLOCK_V) logits h[rows] @ w[cols]^T + b[cols]; padded columns are -inf."""
    b_acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=ACC)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        b_h = tl.load(p_h + rows.to(tl.int64)[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                      other=0.0)
        b_wt = tl.load(p_w + cols.to(tl.int64)[None, :] * H + ks[:, None], mask=k_ok[:, None] & col_ok[None, :],
                       other=0.0)
        b_acc = tl.dot(b_h, b_wt, b_acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        b_acc += tl.load(p_b + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    return tl.where(col_ok[None, :], b_acc, float("-inf"))


@triton.jit
def _loss_fwd(p_h, p_w, p_b, p_y, p_loss, p_lse, N, V, H, ignore_index,
              HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
              BLOCK_H: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    b_y = tl.load(p_y + rows, mask=row_ok, other=ignore_index)
    b_max = tl.full((BLOCK_N,), float("-inf"), ACC)
    b_sum = tl.zeros((BLOCK_N,), ACC)
    b_target = tl.zeros((BLOCK_N,), ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        b_logit = _logit_tile(p_h, p_w, p_b, rows, cols, H, row_ok, cols < V,
                              HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, ACC, PRECISION)
        new_max = tl.maximum(b_max, tl.max(b_logit, axis=1))
        b_sum = b_sum * tl.exp(b_max - new_max) + tl.sum(tl.exp(b_logit - new_max[:, None]), axis=1)
        b_max = new_max
        b_target += tl.sum(tl.where(cols[None, :] == b_y[:, None], b_logit, 0.0), axis=1)
    b_lse = b_max + tl.log(b_sum)
    tl.store(p_lse + rows, b_lse, mask=row_ok)
    tl.store(p_loss + rows, tl.where(b_y != ignore_index, b_lse - b_target, 0.0), mask=row_ok)


@triton.jit
def _loss_dlogits(p_h, p_w, p_b, p_y, p_lse, p_grad, p_dl, N, V, H,
                  HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                  BLOCK_H: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """dl (N, V) = grad_n * (softmax(logits) - onehot(y_n)) for N rows (one chunk)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok, col_ok = rows < N, cols < V
    b_logit = _logit_tile(p_h, p_w, p_b, rows, cols, H, row_ok, col_ok,
                          HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, ACC, PRECISION)
    b_lse = tl.load(p_lse + rows, mask=row_ok, other=0.0)
    b_y = tl.load(p_y + rows, mask=row_ok, other=-1)
    b_grad = tl.load(p_grad + rows, mask=row_ok, other=0.0)   # 0 for ignored rows
    b_dlogit = tl.exp(b_logit - b_lse[:, None]) - tl.where(cols[None, :] == b_y[:, None], 1.0, 0.0)
    tl.store(p_dl + rows.to(tl.int64)[:, None] * V + cols[None, :], b_dlogit * b_grad[:, None],
             mask=row_ok[:, None] & col_ok[None, :])


def _precision(dtype, precision):
    """input_precision of the dots: only float32 operands have a choice; by default the
    project-wide GPURNN_FP32_PRECISION ("ieee" unless set)."""
    if dtype != torch.float32:
        return "ieee"
    return precision or dot_precision(tl.float32)


def _meta(dtype, has_bias, precision):
    """Constexpr arguments of both kernels for inputs of this dtype."""
    block_n, block_v, block_h = _BLOCKS.get(dtype, _DEFAULT_BLOCKS)
    return dict(HAS_BIAS=has_bias, BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h,
                ACC=_ACC.get(dtype, tl.float32), PRECISION=_precision(dtype, precision))


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def forward(h, weight, bias, targets, ignore_index=-100, precision=None):
    """Per-row losses and logsumexps, both (N,) in the accumulation dtype.

    h (N, H), weight (V, H), bias (V,) or None: same dtype and device (made contiguous here);
    targets (N,) int64. Rows whose target is ignore_index get loss 0.
    """
    h, weight, targets = h.contiguous(), weight.contiguous(), targets.contiguous()
    bias = None if bias is None else bias.contiguous()
    N, H = h.shape
    V = weight.shape[0]
    meta = _meta(h.dtype, bias is not None, precision)
    loss = torch.empty(N, dtype=_acc_dtype(h.dtype), device=h.device)
    lse = torch.empty_like(loss)
    with _on_device(h):
        _loss_fwd[(triton.cdiv(N, meta["BLOCK_N"]),)](
            h, weight, weight if bias is None else bias, targets, loss, lse, N, V, H, ignore_index,
            num_warps=NUM_WARPS, **meta)
    return loss, lse


def _on_device(t):
    """Triton launches on torch's current CUDA device and stream: make them t's (under torchrun, ranks >= 1 hold
    their tensors on another device than the current one), so the launches and the GEMMs share one stream."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def backward(h, weight, bias, targets, lse, grad, precision=None):
    """(dh, dweight, dbias or None) for per-row loss gradients grad (N,), 0 on ignored rows.

    Chunks of rows: the dlogits kernel, then dh = dl W, dW += dl^T h and db += sum(dl) as
    GEMMs and sums in the data's dtype (accumulating in float32, float64 for float64 data).
    """
    h, weight, targets = h.contiguous(), weight.contiguous(), targets.contiguous()
    bias = None if bias is None else bias.contiguous()
    N, H = h.shape
    V = weight.shape[0]
    meta = _meta(h.dtype, bias is not None, precision)
    acc_dtype = _acc_dtype(h.dtype)
    grad = grad.to(acc_dtype).contiguous()
    dh = torch.empty(N, H, dtype=h.dtype, device=h.device)
    dw = torch.zeros(V, H, dtype=acc_dtype, device=h.device)
    db = torch.zeros(V, dtype=acc_dtype, device=h.device) if bias is not None else None
    rows = max(meta["BLOCK_N"], CHUNK_BYTES // (V * grad.element_size()) // meta["BLOCK_N"] * meta["BLOCK_N"])
    dl = torch.empty(min(rows, N), V, dtype=acc_dtype, device=h.device)
    with _on_device(h):
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            chunk = dl[:r1 - r0]
            _loss_dlogits[(triton.cdiv(r1 - r0, meta["BLOCK_N"]), triton.cdiv(V, meta["BLOCK_V"]))](
                h[r0:r1], weight, weight if bias is None else bias, targets[r0:r1], lse[r0:r1], grad[r0:r1], chunk,
                r1 - r0, V, H, num_warps=NUM_WARPS, **meta)
            chunk_io = chunk.to(h.dtype)
            torch.mm(chunk_io, weight, out=dh[r0:r1])
            dw += (chunk_io.T @ h[r0:r1]).to(acc_dtype)
            if db is not None:
                db += chunk.sum(0)
    return dh, dw.to(weight.dtype), None if db is None else db.to(bias.dtype)


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def compile_targets(hidden_size, dtype, arch=None):
    """(name, jit_fn, signature, constexprs) of both kernels for profiling/compile_check.py.

    dtype: a torch dtype or its name ("float32"); the tiles do not depend on hidden_size.
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    dt, acc = _TRITON_TYPES[dtype], _TRITON_TYPES[_acc_dtype(dtype)]
    types = {"p_h": f"*{dt}", "p_w": f"*{dt}", "p_b": f"*{dt}", "p_y": "*i64", "N": "i32", "V": "i32",
             "H": "i32", "ignore_index": "i64"}
    meta = _meta(dtype, True, None)   # what the launchers run
    out = []
    for name, fn in (("loss_fwd", _loss_fwd), ("loss_dlogits", _loss_dlogits)):
        signature = {a: types.get(a, f"*{acc}") for a in fn.arg_names if a not in meta}
        out.append((name, fn, signature, dict(meta, num_warps=NUM_WARPS)))
    return out


def compile_ahead(name, dtype, capability):
    """triton.compile one kernel ("loss_fwd" or "loss_dlogits") for sm_<capability>, no GPU needed.

    Needs TRITON_INTERPRET unset (interpreted functions do not compile).
    """
    from triton.backends.compiler import GPUTarget

    _, fn, signature, constexprs = next(t for t in compile_targets(0, dtype) if t[0] == name)
    constexprs = dict(constexprs)
    num_warps = constexprs.pop("num_warps")
    source = triton.compiler.ASTSource(fn, dict(signature, **{k: "constexpr" for k in constexprs}), constexprs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
