"""GEMMs through oneDNN, one of gemm.py's routes: torch's inner-product op for CPU Linear layers
(torch.ops.mkldnn._linear_pointwise, what torch.compile's CPU backend calls for frozen weights), with the
weights of the steps' GEMMs packed once per layer call into oneDNN's blocked layout (_reorder_linear_weight).

Why: on a 2-core AMD EPYC, torch's MKL took 761 us for a B=16, H=768 LSTM step's (16, 768) @ (768, 3072) and
OpenBLAS on one thread 903 us; oneDNN with the packed weight took 177 us (483 us unpacked). The (1024, 768) @
(768, 3072) input projection: MKL 77 ms, OpenBLAS on two threads 21 ms, oneDNN 11 ms. oneDNN runs in torch's
thread pool, so it does not fight it as OpenBLAS's spinning workers do (gemm.py). At small shapes a call's
overhead (about 13 us) loses to the other routes: gemm.py's timing picks per layer shape.

Private torch ops, float32 only: the route exists where they do (available()), and gemm.py offers it only
for float32 layers.
"""
import numpy as np

from .. import buffers

CALL_BYTES = 1 << 21
BLOCK_BYTES = 1 << 18   # columns of a transposed operand copied at a time (_k_contiguous)


def _ops():
    import torch

    return torch.ops.mkldnn


def available():
    """Whether torch is installed and has oneDNN and the two ops (a CPU build without them, another version)."""
    try:
        import torch
    except ImportError:   # a NumPy-only install (`python -m gpurnn info` runs without torch)
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return all(callable(getattr(_ops(), name)) for name in ("_linear_pointwise", "_reorder_linear_weight"))
    except (AttributeError, RuntimeError):
        return False


def enabled():
    """Whether torch's oneDNN is switched on (torch.backends.mkldnn.enabled, which a user may switch off)."""
    import torch

    return torch.backends.mkldnn.enabled


class Packed:
    """A float32 weight matrix that every step multiplies by, for matmul below: a @ packed (on the right,
    rows in a) or packed @ b (on the left, feature-major steps). oneDNN's copy in its blocked layout is
    made at the first product, for the side it is used on, and kept for the layer call's other steps."""

    def __init__(self, matrix, rows):
        self.matrix, self.rows, self._packed = matrix, rows, {}

    def linear_weight(self, left):
        """The (N, K) weight of the linear product: the matrix on the left, its transpose on the right."""
        if left not in self._packed:
            import torch

            w = torch.from_numpy(self.matrix)
            self._packed[left] = _ops()._reorder_linear_weight(w if left else w.T, self.rows)
        return self._packed[left]


def _linear(a, w):
    """a (M, K) @ w^T (w (N, K)) through oneDNN; a copied to K-contiguous rows first, where its rows are not
    (a weight gradient's dA^T): oneDNN's own handling of a transposed input was 2-3x slower on the EPYC."""
    if a.stride(-1) == 1 or 4 * a.numel() < buffers.MIN_BYTES:
        return _ops()._linear_pointwise(a.contiguous(), w, None, "none", [], "")
    copy = buffers.POOL.take(tuple(a.shape), np.float32, zero=False)
    try:
        return _ops()._linear_pointwise(_k_contiguous(a, copy), w, None, "none", [], "")
    finally:
        buffers.POOL.give([copy])


def _k_contiguous(a, out):
    """a (M, K) copied into out (a NumPy array of its shape) in blocks of columns that fit a core's L2 cache: a
    weight gradient's dA^T is a transposed (T*B, M) matrix, whose copy all at once reads a cache line for every
    element (768 x 4096 floats, a GRU's at B=32 T=128 H=256: 9.5-12 ms on an AMD EPYC; in blocks, 3.1-3.6 ms)."""
    import torch

    target = torch.from_numpy(out)
    block = max(16, BLOCK_BYTES // (4 * a.shape[0]))
    for k in range(0, a.shape[1], block):
        target[:, k:k + block].copy_(a[:, k:k + block])
    return target


def _result_shape(a, b):
    a, b = (x.matrix if isinstance(x, Packed) else x for x in (a, b))
    return b.shape[:-2] + (a.shape[0], b.shape[-1]) if b.ndim == 3 else a.shape[:-1] + (b.shape[-1],)


def matmul(a, b, out=None, add=False):
    """a @ b as arrays.xp_matmul on float32 NumPy arrays: 2-D @ 2-D, or 2-D @ 3-D (a broadcast over b's
    first axis), either side a Packed; add=True accumulates into out.

    oneDNN makes rows (x @ W^T): a @ b is that with x = a, or (b^T a^T)^T with x = b^T, written transposed
    (a Packed or a 3-D operand on the right). Its results are fresh tensors, copied into out: at most
    CALL_BYTES of them a call, as fresh multi-megabyte memory costs page faults every call (buffers.py).
    """
    import torch

    if out is None:
        out, add = np.empty(_result_shape(a, b), np.float32), False
    if out.size == 0 or (a.matrix if isinstance(a, Packed) else a).shape[-1] == 0:   # B = 0, or sums of nothing
        if not add:
            out[...] = 0
        return out
    target = torch.from_numpy(out)
    if isinstance(a, Packed) or not isinstance(b, Packed) and b.ndim == 3:
        w = a.linear_weight(True) if isinstance(a, Packed) else torch.from_numpy(a)
        rows, target = torch.from_numpy(b).transpose(-1, -2), target.transpose(-1, -2)
    else:
        w = b.linear_weight(False) if isinstance(b, Packed) else torch.from_numpy(b).T
        rows = torch.from_numpy(a)
    rows, target = (t if t.dim() == 3 else t.unsqueeze(0) for t in (rows, target))
    L, M, K = rows.shape
    per_call = max(1, CALL_BYTES // (4 * w.shape[0]))   # rows of the result a call
    group = max(1, per_call // M)                        # of its leading axis, where M rows are fewer
    for l0 in range(0, L, group):
        for r0 in range(0, M, per_call):
            x = rows[l0:l0 + group, r0:r0 + per_call]
            y = _linear(x.reshape(-1, K), w).view(x.shape[:2] + (w.shape[0],))
            part = target[l0:l0 + group, r0:r0 + per_call]
            if add:
                part += y
            else:
                part.copy_(y)
    return out


pack = matmul.pack = Packed   # cells/base.py's gemm_weight finds it on matmul
