"""Array-module (xp) choice and zero-copy conversion between torch, NumPy and CuPy."""
import contextlib
import functools
import math
import sys
import threading

import numpy as np


@functools.cache
def cupy_or_none():
    """The cupy module if it imports, else None (importing cupy needs no GPU)."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def get_xp(array):
    """numpy for NumPy arrays, cupy for CuPy arrays, a TorchArrays for torch tensors (the fused
    path only: see TorchArrays)."""
    if isinstance(array, np.ndarray) and not isinstance(array, (np.matrix, np.ma.MaskedArray)):
        return np
    cp = cupy_or_none()
    if cp is not None and isinstance(array, cp.ndarray):
        return cp
    if is_tensor(array):
        return torch_arrays(array.device)
    raise TypeError(f"expected a numpy.ndarray, cupy.ndarray or torch.Tensor, got {type(array).__name__}")


def array_module(name, a, for_tensors):
    """get_xp(a) for the NumPy/CuPy APIs, naming argument `name` where a is none of their arrays (get_xp takes
    tensors for the torch front end's fused path, not for these APIs: for_tensors says what takes them)."""
    if is_tensor(a):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got Tensor ({for_tensors})")
    try:
        return get_xp(a)
    except TypeError:
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(a).__name__}") from None


def check_array(name, a, xp, like):
    """a must be a plain xp array (not np.matrix, whose * is a matrix product, nor a masked array, whose mask every
    computation here would ignore), as `like` is."""
    if not isinstance(a, xp.ndarray) or isinstance(a, (np.matrix, np.ma.MaskedArray)):
        raise TypeError(f"{name}: expected a {xp.__name__} array like {like}, got {type(a).__name__}")


def is_tensor(a):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def dtype_name(dtype):
    """'float16', 'bfloat16', 'float32', ... for a NumPy or torch dtype."""
    return str(dtype).removeprefix("torch.") if is_torch_dtype(dtype) else np.dtype(dtype).name


HALF = ("float16", "bfloat16")


def compute_dtype(dtype, fused=False):
    """The dtype the engine's buffers hold for data of this dtype: the data's own, except that
    the xp loop (not fused) computes and carries float16 in float32. The fused kernels keep
    half data half in memory and carry and accumulate in float32 on chip."""
    if dtype_name(dtype) in HALF and not fused:
        return float32_like(dtype)
    return dtype if is_torch_dtype(dtype) else np.dtype(dtype)


def is_torch_dtype(dtype):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(dtype, torch.dtype)


def float32_like(dtype):
    """float32 as the same library's dtype object as `dtype` (NumPy's or torch's)."""
    return sys.modules["torch"].float32 if is_torch_dtype(dtype) else np.dtype(np.float32)


def astype(a, dtype, copy=True, reverse=False):
    """a (reversed along its first axis if `reverse`) as a C-contiguous array of `dtype`, for NumPy and
    CuPy arrays and torch tensors; copy=False: a itself where it already is that."""
    if is_tensor(a):
        import torch

        if copy and not reverse:
            return torch.empty_like(a, dtype=dtype, memory_format=torch.contiguous_format).copy_(a)
        # flip copies, in a's strides; .to keeps them too: only .contiguous() makes C order
        return (a.flip(0) if reverse else a).to(dtype).contiguous()
    if reverse:   # ascontiguousarray keeps the negative stride of a length-1 axis: always copy
        return a[::-1].astype(dtype, order="C", copy=True)
    return a.astype(dtype, order="C", copy=copy)


def sum_rows(a):
    """(..., F) -> (F,): the sum over all leading axes, accumulated in float32 for half data
    (NumPy sums float16 in float16: 4096 + 1 is 4096). In blocks of about sqrt(rows) rows, then the blocks' sums:
    NumPy adds the rows of an axis-0 sum one after another, whose rounding error grows with their number
    (relative 2e-5 at a million float32 rows; torch's sums, 5e-8)."""
    dtype = float32_like(a.dtype) if dtype_name(a.dtype) in HALF else a.dtype
    rows = a.reshape(-1, a.shape[-1])
    block = max(1, math.isqrt(rows.shape[0]))
    whole = rows.shape[0] - rows.shape[0] % block
    blocks = rows[:whole].reshape(whole // block, block, rows.shape[1]).sum(axis=1, dtype=dtype)
    return blocks.sum(axis=0) + rows[whole:].sum(axis=0, dtype=dtype)


class TorchArrays:
    """The NumPy-API functions the fused path's glue calls (engine.py, the cells' kernel buffers,
    buffers.Allocations), on torch tensors of one device. The torch front end hands the Triton
    backend its tensors as they are: bfloat16 stays bfloat16 (NumPy and CuPy have none) and the
    GEMMs run in torch (cuBLASLt, float32 accumulation). The xp loops never see tensors."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        self.ndarray = torch.Tensor

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=dtype, device=self.device)

    def asarray(self, a):
        return self.torch.as_tensor(a, device=self.device)

    def where(self, condition, a, b):
        return self.torch.where(condition, a, b)

    def concatenate(self, arrays, axis=0):
        return self.torch.cat(arrays, dim=axis)

    @staticmethod
    def matmul(a, b, out=None):
        return sys.modules["torch"].matmul(a, b, out=out)


@functools.cache
def torch_arrays(device):
    """One TorchArrays per device (the engine caches per xp)."""
    return TorchArrays(device)


def tensor_to_xp(tensor, native=False):
    """A CPU torch tensor as a NumPy array, a CUDA one as a CuPy array; no copy.
    native: the tensor itself (detached), for the fused path (TorchArrays)."""
    tensor = tensor.detach()
    if native:
        return tensor
    if tensor.device.type == "cpu":
        return tensor.numpy()
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError("CUDA tensors need CuPy for the numpy-API engine: pip install cupy-cuda12x")
    return cp.from_dlpack(tensor)


def xp_to_tensor(array):
    """The inverse of tensor_to_xp; no copy."""
    import torch

    if isinstance(array, torch.Tensor):
        return array
    t = torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)
    if t.numel() == 0:   # an empty array's strides may be 0; torch's empty tensors have contiguous ones
        t = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    return t


def packed_index(batch_sizes, batch):
    """Row index into a (T*B, ·) padded view for every row of a packed data tensor (torch.nn's PackedSequence)."""
    import torch

    sizes = batch_sizes if isinstance(batch_sizes, torch.Tensor) else torch.tensor(list(batch_sizes), dtype=torch.int64)
    return (torch.arange(batch)[None, :] < sizes[:, None]).reshape(-1).nonzero().squeeze(1)   # in (t, b) order


def transposed_copy(a, out=None):
    """(T, F, B) -> (T, B, F), contiguous (into out if given). Through torch's copy
    (multi-threaded, about twice NumPy's speed) when torch is already loaded, as it is
    under the torch front end."""
    xp = get_xp(a)
    if out is None:
        out = xp.empty((a.shape[0], a.shape[2], a.shape[1]), a.dtype)
    # (torch takes no negative strides, which NumPy calls contiguous along a length-1 axis, and warns of read-only
    # memory: a caller's array, such as functional.backward's dy, may be either)
    if xp is np and "torch" in sys.modules and min(a.strides, default=0) >= 0 and a.flags.writeable:
        import torch

        torch.from_numpy(out).copy_(torch.from_numpy(a).transpose(1, 2))
    else:
        out[...] = a.transpose(0, 2, 1)
    return out


def xp_matmul(a, b, out=None, add=False):
    """a @ b with NumPy's, CuPy's or torch's matmul; add=True accumulates into out."""
    xp = get_xp(a)
    if add:
        out += xp.matmul(a, b)
        return out
    return xp.matmul(a, b, out=out)


def torch_matmul(a, b, out=None, add=False):
    """xp_matmul through torch's BLAS on zero-copy views of NumPy arrays.

    The torch front end uses it on the CPU: NumPy's OpenBLAS workers spin for a while
    after each call and slow torch's own thread pool down several times over when
    both run in one process; torch's GEMMs are also faster for the small per-step shapes,
    and add=True accumulates inside the GEMM (2-D only).
    """
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if out is None:
        return torch.matmul(ta, tb).numpy()
    if add:
        torch.from_numpy(out).addmm_(ta, tb)
    else:
        torch.matmul(ta, tb, out=torch.from_numpy(out))
    return out


@contextlib.contextmanager
def device_scope(device):
    """On a CUDA device: make it CuPy's current device and torch's current stream CuPy's,
    so the engine's buffers, CuPy's kernels, Triton's launches and torch agree on both; and
    torch's float32 GEMMs at the kernels' precision (gemm_precision)."""
    if device.type != "cuda":
        yield
        return
    import cupy as cp
    import torch

    stream = torch.cuda.current_stream(device)
    with torch.cuda.device(device), cp.cuda.Device(device.index), \
            cp.cuda.ExternalStream(stream.cuda_stream, device.index), gemm_precision():
        yield


_TF32 = {"lock": threading.Lock(), "scopes": 0, "before": None}


def _tf32_flag():
    """(name, value when on, value when off) of torch's CUDA float32 GEMM precision setting: torch
    >= 2.9's fp32_precision (reading the legacy allow_tf32 raises once the new API was used)."""
    import torch

    flags = torch.backends.cuda.matmul
    if hasattr(flags, "fp32_precision"):
        return flags, "fp32_precision", "tf32", "ieee"
    return flags, "allow_tf32", True, False


@contextlib.contextmanager
def gemm_precision():
    """torch's CUDA float32 GEMMs in TF32 exactly when GPURNN_FP32_PRECISION=tf32 (tf32x3 asks for
    ~fp32 accuracy), whatever the caller's setting outside. The setting is process-wide: nested and
    concurrent scopes (threads) share one switch, made by the first to enter and undone by the last
    to leave, and only where it differs."""
    from .backends import fp32_precision

    flags, name, on, off = _tf32_flag()
    want = on if fp32_precision() == "tf32" else off
    with _TF32["lock"]:
        if _TF32["scopes"] == 0:
            _TF32["before"] = getattr(flags, name)
            if _TF32["before"] != want:
                setattr(flags, name, want)
        _TF32["scopes"] += 1
    try:
        yield
    finally:
        with _TF32["lock"]:
            _TF32["scopes"] -= 1
            if _TF32["scopes"] == 0 and getattr(flags, name) != _TF32["before"]:
                setattr(flags, name, _TF32["before"])


@contextlib.contextmanager
def array_scope(array):
    """The plain-array API's counterpart of device_scope: for a CuPy array, its device becomes
    current, and torch's current stream (which the Triton launches use) is CuPy's current one,
    so a CuPy user's work runs where CuPy would run it. NumPy arrays: nothing to do."""
    if isinstance(array, np.ndarray):
        yield
        return
    import cupy as cp

    with cp.cuda.Device(array.device.id):
        try:
            import torch
        except ImportError:   # the cupy backend needs no torch
            yield
            return
        stream = torch.cuda.ExternalStream(cp.cuda.get_current_stream().ptr, device=array.device.id)
        with torch.cuda.device(array.device.id), torch.cuda.stream(stream):
            yield
