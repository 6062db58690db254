"""The sequence loss: L = sum over steps (and rows) of -log softmax(W h_t + b)[y_t] (or the mean), on xp
arrays (`sequence_loss_forward/backward`) and as a differentiable torch function (`sequence_loss`) that runs the
NumPy/CuPy engine or the fused Triton kernel (kernels/loss.py)."""
import functools

import numpy as np

from .. import backends
from ..arrays import array_module, check_array, compute_dtype, get_xp, tensor_to_xp, xp_to_tensor
from ..checks import as_integer, as_real, check_choice, check_floating, check_same_device, check_same_dtype, check_shape

REDUCTIONS = ("sum", "mean")
_LOGITS_PER_CHUNK = 1 << 22   # the xp path holds at most this many logits at a time


# ---------------------------------------------------------------- sequence loss on xp arrays

def _check_loss_args(xp, h, weight, bias, targets, reduction):
    check_choice("reduction", reduction, REDUCTIONS)
    for name, a in (("weight", weight), ("bias", bias), ("targets", targets)):
        if a is not None or name != "bias":
            check_array(name, a, xp, "h")
    check_floating("h", h.dtype, xp.issubdtype(h.dtype, xp.floating))
    if h.ndim < 2:
        raise ValueError(f"h: expected shape (..., H) with at least 2 dims, got shape {tuple(h.shape)}")
    check_same_dtype("weight", weight.dtype, "h", h.dtype)
    if weight.ndim != 2 or weight.shape[1] != h.shape[-1]:
        raise ValueError(f"weight: expected shape (V, {h.shape[-1]}), got {tuple(weight.shape)}")
    if bias is not None:
        check_same_dtype("bias", bias.dtype, "h", h.dtype)
        check_shape("bias", bias.shape, weight.shape[:1])
    if not xp.issubdtype(targets.dtype, xp.integer):
        raise TypeError(f"targets: expected an integer dtype, got {targets.dtype}")
    check_shape("targets", targets.shape, h.shape[:-1])


def _ignore_index(value):
    """As torch: an integer that fits int64 (the targets' dtype)."""
    value = as_integer("ignore_index", value)
    if not -2 ** 63 <= value < 2 ** 63:
        raise ValueError(f"ignore_index: expected an integer in int64's range [-2**63, 2**63), got {value}")
    return value


def _check_target_range(targets, vocab, ignore_index):
    """Every target is a class index or ignore_index (one device sync on the GPU)."""
    bad = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
    if bool(bad.any()):
        value = targets[bad].ravel()[0]
        raise ValueError(f"targets: expected values in [0, {vocab}) or ignore_index={ignore_index}, "
                         f"got {int(value)}")


def _row_chunks(n_rows, vocab):
    step = max(1, _LOGITS_PER_CHUNK // max(vocab, 1))
    return [(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def _logits(h, weight, bias):
    out = h @ weight.T
    if bias is not None:
        out += bias
    return out


def sequence_loss_forward(h, weight, bias, targets, *, reduction="sum", ignore_index=-100):
    """L = sum_n -log softmax(weight @ h_n + bias)[targets_n] over all rows n (steps x batch).

    h: (..., H) float array (for a sequence: (T, B, H)); weight: (V, H); bias: (V,) or None;
    targets: (...) integers in [0, V), or ignore_index to skip a row (padding).
    reduction="mean" divides by the number of rows not ignored (torch's convention).
    Returns (loss as a 0-d array, saved for sequence_loss_backward). Rows are
    processed in chunks so at most ~4M logits exist at a time.
    """
    xp = array_module("h", h, "sequence_loss takes tensors")
    ignore_index = _ignore_index(ignore_index)
    _check_loss_args(xp, h, weight, bias, targets, reduction)
    _check_target_range(targets, weight.shape[0], ignore_index)
    y = targets.reshape(-1)
    valid = y != ignore_index
    # Only rows with a target cost logits: padded batches or answers due at a few steps
    # (sequence classification) skip the rest entirely.
    rows = None if bool(valid.all()) else xp.nonzero(valid)[0]
    yv = y if rows is None else y[rows]
    hv, w, b = _compute_arrays(h, weight, bias, rows)
    V, cdt = w.shape[0], hv.dtype
    lse = xp.empty(hv.shape[0], cdt)
    loss = xp.zeros((), cdt)
    for r0, r1 in _row_chunks(hv.shape[0], V):
        z = _logits(hv[r0:r1], w, b)
        top = z.max(axis=1)
        lse[r0:r1] = top + xp.log(xp.exp(z - top[:, None]).sum(axis=1))
        loss += (lse[r0:r1] - z[xp.arange(r1 - r0), yv[r0:r1]]).sum()
    count = hv.shape[0]
    if reduction == "mean":
        loss = loss / cdt.type(count) if count else loss * cdt.type("nan")   # torch: nan for no targets
    saved = (h, weight, bias, rows, yv, lse, count, reduction)
    return xp.asarray(loss, dtype=h.dtype), saved


def _compute_arrays(h, weight, bias, rows):
    """(h's rows with a target (n, H), weight, bias) in the compute dtype (float16 widened)."""
    cdt = compute_dtype(h.dtype)
    h2 = h.reshape(int(np.prod(h.shape[:-1])), h.shape[-1]).astype(cdt, copy=False)   # (H may be 0)
    return (h2 if rows is None else h2[rows], weight.astype(cdt, copy=False),
            None if bias is None else bias.astype(cdt, copy=False))


def sequence_loss_backward(saved, dloss=1.0):
    """(dh, dweight, dbias or None) of sequence_loss_forward, scaled by dloss (scalar or 0-d array)."""
    if not (isinstance(saved, tuple) and len(saved) == 8):
        raise TypeError(f"saved: expected what sequence_loss_forward returned second, got {type(saved).__name__}")
    h, weight, bias, rows, yv, lse, count, reduction = saved
    hv, w, b = _compute_arrays(h, weight, bias, rows)
    xp = get_xp(hv)
    if isinstance(dloss, xp.ndarray):   # (a CuPy array stays on the GPU: no sync to check its value)
        if dloss.shape != ():
            raise ValueError(f"dloss: expected a scalar or a 0-d array, got shape {tuple(dloss.shape)}")
    else:
        as_real("dloss", dloss)
    scale = xp.asarray(dloss, dtype=hv.dtype)
    if reduction == "mean" and count:
        scale = scale / hv.dtype.type(count)
    dhv = xp.empty_like(hv)
    dw = xp.zeros_like(w)
    db = None if b is None else xp.zeros_like(b)
    for r0, r1 in _row_chunks(hv.shape[0], w.shape[0]):
        p = _logits(hv[r0:r1], w, b)       # recomputed: only the per-row logsumexp was kept
        p -= lse[r0:r1, None]
        xp.exp(p, out=p)
        p[xp.arange(r1 - r0), yv[r0:r1]] -= 1
        p *= scale
        dhv[r0:r1] = p @ w
        dw += p.T @ hv[r0:r1]
        if db is not None:
            db += p.sum(axis=0)
    if rows is None:
        dh = dhv
    else:
        dh = xp.zeros((int(np.prod(h.shape[:-1])), h.shape[-1]), hv.dtype)
        dh[rows] = dhv
    return dh.reshape(h.shape).astype(h.dtype), dw.astype(h.dtype), None if db is None else db.astype(h.dtype)


# ---------------------------------------------------------------- torch front end

@functools.cache   # torch is imported, and the Function class built, on first use only
def _torch_function():
    import torch

    class SequenceLoss(torch.autograd.Function):
        """(h, weight, bias) -> loss; targets and options ride in `spec`. What backward reads is saved with
        save_for_backward, the inputs themselves included: torch frees it after backward unless the graph is
        retained, and refuses a backward after an input was changed in place, as for its own ops. A gradient
        taken with create_graph=True is that of torch's own ops on the saved inputs (`_torch_gradients`), so it
        can be differentiated again (gradient penalties)."""

        @staticmethod
        def forward(ctx, spec, h, weight, bias):
            targets, reduction, ignore_index, backend = spec
            ctx.spec = spec
            if backend == "triton":
                return _triton_forward(ctx, h, weight, bias, targets, reduction, ignore_index)
            to_xp = lambda t: None if t is None else tensor_to_xp(t)
            loss, saved = sequence_loss_forward(to_xp(h), to_xp(weight), to_xp(bias), to_xp(targets),
                                                reduction=reduction, ignore_index=ignore_index)
            ctx.rest = saved[-2:]   # (count, reduction) are not arrays
            ctx.save_for_backward(h, weight, bias, *(None if a is None else xp_to_tensor(a) for a in saved[3:-2]))
            return xp_to_tensor(loss)

        @staticmethod
        def backward(ctx, dloss):
            if torch.is_grad_enabled():   # create_graph=True
                return (None,) + _torch_gradients(ctx.saved_tensors[:3], ctx.spec, dloss)
            if ctx.spec[3] == "triton":
                return (None,) + _triton_backward(ctx, dloss)
            arrays = tuple(None if t is None else tensor_to_xp(t) for t in ctx.saved_tensors)
            grads = sequence_loss_backward(arrays + ctx.rest, tensor_to_xp(dloss))
            return (None,) + tuple(None if g is None else xp_to_tensor(g) for g in grads)

    return SequenceLoss


def _torch_loss(h, weight, bias, targets, reduction, ignore_index):
    """The loss in torch's own ops (cross_entropy of all the logits, float16 widened as on the engine), whose graph
    double backward and torch.func differentiate."""
    import torch

    wide = lambda t: t.float() if t is not None and t.dtype == torch.float16 else t
    logits = torch.nn.functional.linear(wide(h), wide(weight), wide(bias)).reshape(-1, weight.shape[0])
    return torch.nn.functional.cross_entropy(logits, targets.reshape(-1).long(), reduction=reduction,
                                             ignore_index=ignore_index)


def _torch_gradients(inputs, spec, dloss):
    """(dh, dweight, dbias) as a graph of torch's ops, for double backward."""
    import torch

    h, weight, bias = inputs
    targets, reduction, ignore_index, _ = spec
    loss = _torch_loss(h, weight, bias, targets, reduction, ignore_index)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(loss, wanted, dloss, create_graph=True))
    dh, dw, db = (next(grads).to(t.dtype) if t is not None and t.requires_grad else None for t in inputs)
    return None if dh is None else dh.reshape(targets.shape + h.shape[-1:]), dw, db


def _triton_forward(ctx, h, weight, bias, targets, reduction, ignore_index):
    from ..kernels import loss as kernel

    y = targets.reshape(-1).long()
    per_row, lse = kernel.forward(h.flatten(0, -2), weight, bias, y, ignore_index)   # (flatten: H may be 0)
    valid = y != ignore_index
    ctx.save_for_backward(h, weight, bias, y, lse, valid)   # h itself: a view made here has no graph to h
    loss = per_row.sum()
    if reduction == "mean":
        loss = loss / valid.sum()
    return loss.to(h.dtype)


def _triton_backward(ctx, dloss):
    from ..kernels import loss as kernel

    h, weight, bias, y, lse, valid = ctx.saved_tensors
    row_grad = valid.to(lse.dtype) * dloss.to(lse.dtype)
    if ctx.spec[1] == "mean":   # no targets at all: a NaN loss (torch's) with zero gradients (torch's too)
        row_grad = row_grad / valid.sum().clamp(min=1)
    dh, dw, db = kernel.backward(h.flatten(0, -2), weight, bias, y, lse, row_grad)
    return dh.reshape(h.shape), dw, db


def sequence_loss(h, weight, bias, targets, *, reduction="sum", ignore_index=-100, backend="auto"):
    """Differentiable sequence loss for torch tensors (same meaning as sequence_loss_forward).

    h: (T, B, H) (or any (..., H)); weight (V, H) and bias (V,) or None, e.g. an
    nn.Linear head's; targets: (T, B) long. Equals
    torch.nn.functional.cross_entropy(h @ weight.T + bias, targets, reduction=...)
    over all steps, without holding all logits (chunks of rows on NumPy/CuPy,
    streamed vocabulary tiles in the Triton kernel); a gradient taken with
    create_graph=True (a penalty) is cross_entropy's, which does hold them.
    """
    import torch

    for name, t in (("h", h), ("weight", weight), ("bias", bias), ("targets", targets)):
        if not isinstance(t, torch.Tensor) and (t is not None or name != "bias"):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if h.device.type not in ("cpu", "cuda"):
        raise ValueError(f"h: expected a tensor on the CPU or a CUDA GPU, got one on {h.device}")
    ignore_index = _ignore_index(ignore_index)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets: expected an integer dtype, got {targets.dtype}")
    name = backends.resolve(backend, h.is_cuda)
    check_choice("reduction", reduction, REDUCTIONS)
    from ..recording import transformed
    if transformed():   # torch.func and forward-mode AD: torch's ops support them, the autograd.Function does not
        return _torch_loss(h, weight, bias, targets, reduction, ignore_index).to(h.dtype)
    if name == "triton":
        # the xp path validates inside sequence_loss_forward; the kernel trusts its inputs
        check_floating("h", h.dtype, h.is_floating_point())
        if h.dim() < 2:
            raise ValueError(f"h: expected shape (..., H) with at least 2 dims, got shape {tuple(h.shape)}")
        check_same_dtype("weight", weight.dtype, "h", h.dtype)
        check_shape("weight", weight.shape, (weight.shape[0], h.shape[-1]))
        if bias is not None:
            check_same_dtype("bias", bias.dtype, "h", h.dtype)
            check_shape("bias", bias.shape, weight.shape[:1])
        check_shape("targets", targets.shape, h.shape[:-1])
        for arg, t in (("weight", weight), ("bias", bias), ("targets", targets)):   # (name: the backend)
            if t is not None:
                check_same_device(arg, t.device, "h", h.device)
        _check_target_range(targets, weight.shape[0], ignore_index)
    elif h.dtype == torch.bfloat16:   # NumPy and CuPy have no bfloat16
        up = lambda t: None if t is None else t.float()
        return sequence_loss(up(h), up(weight), up(bias), targets, reduction=reduction,
                             ignore_index=ignore_index, backend=name).to(h.dtype)
    contiguous = lambda t: None if t is None else t.contiguous()
    return _torch_function().apply((targets.contiguous(), reduction, ignore_index, name), contiguous(h),
                                   contiguous(weight), contiguous(bias))
