"""Array-module (xp) choice and zero-copy conversion between torch, NumPy and CuPy."""
import contextlib
import functools
import sys

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
    """numpy for NumPy arrays, cupy for CuPy arrays."""
    if isinstance(array, np.ndarray):
        return np
    cp = cupy_or_none()
    if cp is not None and isinstance(array, cp.ndarray):
        return cp
    raise TypeError(f"expected a numpy.ndarray or cupy.ndarray, got {type(array).__name__}")


def compute_dtype(dtype):
    """float16 is stored as given but computed and carried in float32."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def tensor_to_xp(tensor):
    """A CPU torch tensor as a NumPy array, a CUDA one as a CuPy array; no copy."""
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError("CUDA tensors need CuPy for the numpy-API engine: pip install cupy-cuda12x")
    return cp.from_dlpack(tensor)


def xp_to_tensor(array):
    """The inverse of tensor_to_xp; no copy."""
    import torch

    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    return torch.from_dlpack(array)


def transposed_copy(a, out=None):
    """(T, F, B) -> (T, B, F), contiguous (into out if given). Through torch's copy
    (multi-threaded, about twice NumPy's speed) when torch is already loaded, as it is
    under the torch front end."""
    xp = get_xp(a)
    if out is None:
        out = xp.empty((a.shape[0], a.shape[2], a.shape[1]), a.dtype)
    if xp is np and "torch" in sys.modules:
        import torch

        torch.from_numpy(out).copy_(torch.from_numpy(a).transpose(1, 2))
    else:
        out[...] = a.transpose(0, 2, 1)
    return out


def xp_matmul(a, b, out=None, add=False):
    """a @ b with NumPy's or CuPy's matmul; add=True accumulates into out."""
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
    so the engine's buffers, CuPy's kernels, Triton's launches and torch agree on both."""
    if device.type != "cuda":
        yield
        return
    import cupy as cp
    import torch

    stream = torch.cuda.current_stream(device)
    with torch.cuda.device(device), cp.cuda.Device(device.index), \
            cp.cuda.ExternalStream(stream.cuda_stream, device.index):
        yield


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
