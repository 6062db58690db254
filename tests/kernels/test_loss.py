"""The fused sequence-loss Triton kernel (interpreter) against torch's cross-entropy, and
its ahead-of-time compilation for sm_80/sm_90 (bf16 is checked by compiling only: the
interpreter's bf16 tl.dot is not meaningful)."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gpurnn.kernels import loss as kernel
from gpurnn.training import sequence_loss

# float64 accumulates in float64 (same sums, another order); float32 with IEEE dots
# over H <= 70 terms and a logsumexp over V <= 300 terms: a few ulps.
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}

CASES = {   # (N rows, H, V, bias, ignored rows); tiles (rows x columns x H): f32 64x128x16, f64 32x64x32
    "N1_H5_V3": (1, 5, 3, True, False),
    "N70_H37_V300_padded": (70, 37, 300, True, True),     # partial row, column and H tiles
    "N17_H70_V129_no_bias": (17, 70, 129, False, True),  # V one past a tile, H 3-5 slices
    "N128_H32_V128_exact_tiles": (128, 32, 128, True, False),
}


def inputs(N, H, V, bias, ignored, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=dtype)
    w = torch.randn(V, H, generator=g, dtype=dtype) / math.sqrt(H)
    b = torch.randn(V, generator=g, dtype=dtype) if bias else None
    y = torch.randint(0, V, (N,), generator=g)
    if ignored:
        y[::5] = -100
    return h, w, b, y


def reference(h, w, b, y, row_grad):
    """Per-row losses and the gradients of sum_n row_grad_n * loss_n, by torch autograd."""
    leaves = [t.clone().requires_grad_() for t in (h, w) + ((b,) if b is not None else ())]
    logits = leaves[0] @ leaves[1].T + (leaves[2] if b is not None else 0)
    per_row = F.cross_entropy(logits, y, reduction="none")
    grads = torch.autograd.grad((per_row * row_grad).sum(), leaves)
    return per_row.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_kernel_rows_and_gradients_match_cross_entropy(case, dtype):
    h, w, b, y = inputs(*CASES[case], dtype)
    row_grad = torch.rand(len(y), dtype=dtype) * (y != -100)
    ref_rows, ref_grads = reference(h, w, b, y, row_grad)
    rows, lse = kernel.forward(h, w, b, y, -100)
    torch.testing.assert_close(rows, ref_rows, **TOL[dtype])
    logits = h @ w.T + (b if b is not None else 0)
    torch.testing.assert_close(lse, torch.logsumexp(logits, 1), **TOL[dtype])
    grads = [g for g in kernel.backward(h, w, b, y, lse, row_grad) if g is not None]
    for name, mine, theirs in zip(["dh", "dweight", "dbias"], grads, ref_grads):
        torch.testing.assert_close(mine, theirs, **TOL[dtype], msg=lambda m: f"{name}: {m}")


def test_kernel_streams_a_50k_vocabulary():
    """V = 50,257 (GPT-2's) in 393 column tiles; a program holds one (64, 128) logit tile."""
    h, w, b, y = inputs(3, 16, 50_257, True, False, torch.float32)
    row_grad = torch.ones(3)
    ref_rows, ref_grads = reference(h.double(), w.double(), b.double(), y, row_grad.double())
    rows, lse = kernel.forward(h, w, b, y, -100)
    torch.testing.assert_close(rows, ref_rows.float(), **TOL[torch.float32])
    for mine, theirs in zip(kernel.backward(h, w, b, y, lse, row_grad), ref_grads):
        torch.testing.assert_close(mine, theirs.float(), **TOL[torch.float32])


def test_backward_is_bitwise_deterministic_across_chunks(monkeypatch):
    """Two runs give the same bits; chunks of rows (here 64 rows of logits a chunk, 3 chunks
    with a partial one) give the gradients of one whole pass."""
    h, w, b, y = inputs(150, 24, 200, True, True, torch.float32)
    row_grad = torch.rand(150) * (y != -100)
    _, lse = kernel.forward(h, w, b, y, -100)
    whole = kernel.backward(h, w, b, y, lse, row_grad)
    monkeypatch.setattr(kernel, "CHUNK_BYTES", 64 * 200 * 4)
    first, second = kernel.backward(h, w, b, y, lse, row_grad), kernel.backward(h, w, b, y, lse, row_grad)
    for a, c, d in zip(whole, first, second):
        assert torch.equal(c, d)
        torch.testing.assert_close(c, a, **TOL[torch.float32])
    _, ref_grads = reference(h.double(), w.double(), b.double(), y, row_grad.double())
    for mine, theirs in zip(first, ref_grads):
        torch.testing.assert_close(mine, theirs.float(), **TOL[torch.float32])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_torch_front_end_on_triton_equals_numpy_engine_and_torch(reduction, monkeypatch):
    """sequence_loss(backend="triton") on (T, B, H): loss and autograd gradients, from the kernels (a loop variable
    once overwrote the backend's name, and the NumPy engine ran instead)."""
    calls = []
    for name in ("forward", "backward"):
        run = getattr(kernel, name)
        monkeypatch.setattr(kernel, name, lambda *a, run=run, name=name: calls.append(name) or run(*a))
    g = torch.Generator().manual_seed(5)
    T, B, H, V = 6, 3, 9, 40
    h = torch.randn(T, B, H, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (T, B), generator=g)
    y[-2:, 0] = -100
    ref = F.cross_entropy((h @ w.T + b).reshape(-1, V), y.reshape(-1), reduction=reduction)
    results = {}
    for backend in ("triton", "numpy"):
        loss = sequence_loss(h, w, b, y, reduction=reduction, backend=backend)
        results[backend] = (loss,) + torch.autograd.grad(2 * loss, (h, w, b))
    assert calls == ["forward", "backward"]
    ref_all = (ref,) + torch.autograd.grad(2 * ref, (h, w, b))
    for backend, got in results.items():
        for name, mine, theirs in zip(["loss", "dh", "dweight", "dbias"], got, ref_all):
            torch.testing.assert_close(mine, theirs, **TOL[torch.float64], msg=lambda m: f"{backend} {name}: {m}")


def test_a_gradient_penalty_through_the_triton_loss_is_cross_entropys():
    g = torch.Generator().manual_seed(6)
    h = torch.randn(4, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (4, 2), generator=g)
    penalised = []
    for loss_of in (lambda: sequence_loss(h, w, None, y, backend="triton"),
                    lambda: F.cross_entropy((h @ w.T).reshape(-1, 7), y.reshape(-1), reduction="sum")):
        loss = loss_of()
        grad, = torch.autograd.grad(loss, h, create_graph=True)
        penalised.append(torch.autograd.grad(loss + grad.pow(2).sum(), w)[0])
    torch.testing.assert_close(penalised[0], penalised[1], **TOL[torch.float64])


def test_the_triton_loss_with_no_targets_or_no_hidden_units_is_cross_entropys():
    """mean over no targets: a NaN loss with zero gradients (the backward divided 0 by 0); H = 0: the bias alone."""
    g = torch.Generator().manual_seed(7)
    h = torch.randn(3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    sequence_loss(h, w, None, torch.full((3, 2), -100), reduction="mean", backend="triton").backward()
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))
    b = torch.randn(5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (3, 2), generator=g)
    torch.testing.assert_close(sequence_loss(h[..., :0], w[:, :0], b, y, backend="triton"),
                               F.cross_entropy(b.expand(6, 5), y.reshape(-1), reduction="sum"))


def test_triton_front_end_checks_its_boundary():
    h, w = torch.zeros(4, 2, 5), torch.zeros(7, 5)
    with pytest.raises(ValueError, match=r"targets: expected values in \[0, 7\) or ignore_index=-100, got 9"):
        sequence_loss(h, w, None, torch.full((4, 2), 9), backend="triton")
    with pytest.raises(TypeError, match=r"weight: expected dtype torch.float32 \(the dtype of h\), got torch.float64"):
        sequence_loss(h, w.double(), None, torch.zeros(4, 2, dtype=torch.long), backend="triton")


SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}   # bytes of shared memory per block
COMPILE_CASES = [(name, dtype, cap) for name in ("loss_fwd", "loss_dlogits")
                 for dtype, cap in (("float32", 90), ("bfloat16", 90), ("float64", 80))]
COMPILE_SCRIPT = """
import sys
from gpurnn.kernels import loss
for name, dtype, cap in {cases!r}:
    k = loss.compile_ahead(name, dtype, cap)
    print(name, dtype, cap, k.metadata.shared, "atom." in k.asm["ptx"], flush=True)
"""


def test_kernels_compile_ahead_within_shared_memory():
    """Real compiles (TRITON_INTERPRET unset in a child process): a kernel over the chip's
    shared memory would fail at launch, so that counts as a failure here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT.format(cases=COMPILE_CASES)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")[:-1]
    assert len(lines) == len(COMPILE_CASES)
    for line, (name, dtype, cap) in zip(lines, COMPILE_CASES):
        got_name, got_dtype, got_cap, shared, atomics = line.split()
        assert (got_name, got_dtype, int(got_cap)) == (name, dtype, cap)
        assert int(shared) <= SHARED_LIMIT[cap], line
        assert atomics == "False", line   # no atomic instruction: deterministic sums
