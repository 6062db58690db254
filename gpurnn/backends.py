"""Which backend runs a call, and why another one cannot.

numpy: the xp loop on the CPU.  cupy: the xp loop on a CUDA GPU.
triton: the fused kernels (CUDA GPU, or the CPU under TRITON_INTERPRET=1).
auto: triton if usable, else cupy, for GPU data; numpy for CPU data.
GPURNN_BACKEND overrides auto.
"""
import importlib.util
import os

from .checks import check_choice

BACKENDS = ("numpy", "cupy", "triton")
CHOICES = ("auto",) + BACKENDS
FP32_PRECISIONS = ("ieee", "tf32x3", "tf32")


def fp32_precision():
    """GPURNN_FP32_PRECISION, default "ieee": how float32 data is multiplied on the GPU, by the
    kernels' tl.dot and by the torch GEMMs around them. "tf32x3" (three TF32 tensor-core products,
    ~fp32 accurate) and "tf32" (10-bit mantissa, what cuDNN uses under torch's allow_tf32) are opt-in."""
    value = os.environ.get("GPURNN_FP32_PRECISION") or "ieee"
    check_choice("GPURNN_FP32_PRECISION", value, FP32_PRECISIONS)
    return value


def interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def _cuda_reason():
    """None when a CUDA device is visible to torch or CuPy, else why not."""
    try:
        import torch
        if torch.cuda.is_available():
            return None
    except ImportError:
        pass
    from .arrays import cupy_or_none
    cp = cupy_or_none()
    try:
        if cp is not None and cp.cuda.is_available():
            return None
    except Exception as err:  # a broken CUDA driver install reports itself here
        return f"CUDA is not usable: {err}"
    return "no CUDA GPU is visible"


def _kernels_reason():
    if importlib.util.find_spec("gpurnn.kernels") is None:
        return "the gpurnn.kernels package is missing from this install"
    return None


def backend_status():
    """{backend: None if usable here, else the reason it is not}."""
    status = {"numpy": None}
    cuda = _cuda_reason()
    if importlib.util.find_spec("cupy") is None:
        status["cupy"] = "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    else:
        status["cupy"] = cuda
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
        status["triton"] = "Triton and torch are needed (pip install 'gpurnn[gpu]')"
    else:
        no_gpu = cuda and f"{cuda} (without one, the kernels run only under TRITON_INTERPRET=1, for tests)"
        # On a GPU the array glue around the kernels is CuPy, so it must be usable too.
        status["triton"] = _kernels_reason() or (None if interpreting() else no_gpu or status["cupy"])
    return status


def available_backends():
    """Names of the backends usable on this machine, fastest first."""
    status = backend_status()
    return [name for name in ("triton", "cupy", "numpy") if status[name] is None]


# os.environ, its own store, and the settings read on every call as that store spells them: made once, as a
# dict that never changes, since torch.compile guards on what it reads here (a key added on first use made the
# compiled caller's guard fail on its next call, and recompiled it)
_ENVIRON, _ENV_STORE = os.environ, os.environ._data
_ENV_KEYS = {name: _ENVIRON.encodekey(name) for name in ("GPURNN_BACKEND", "GPURNN_CPU_LAYER", "GPURNN_GEMM")}


def env(name, default):
    """os.environ.get(name) or default (set but empty is unset), read from os.environ's own store in 0.1 us for the
    settings read on every call (the backend, the CPU layer's and the GEMM's routes): os.environ.get encodes the key
    and decodes the value (0.5 us), several us of a small call's overhead. Writes to os.environ (monkeypatch.setenv,
    mock.patch.dict) go through to that store; a replaced os.environ, and any other name, are read as usual."""
    key = _ENV_KEYS.get(name)
    if key is None or os.environ is not _ENVIRON:
        return os.environ.get(name) or default
    raw = _ENV_STORE.get(key)
    return _ENVIRON.decodevalue(raw) if raw else default   # set but empty: unset, as shells treat it


def runs_numpy(backend, on_gpu):
    """Whether `resolve` gives "numpy" (the CPU engine) for these arguments; without its errors."""
    if backend == "auto":
        backend = env("GPURNN_BACKEND", "auto")
    return not on_gpu and backend in ("auto", "numpy")


def resolve(backend, on_gpu):
    """The backend that runs data living on the GPU (on_gpu) or on the CPU."""
    check_choice("backend", backend, CHOICES)
    if backend == "auto":
        backend = os.environ.get("GPURNN_BACKEND") or "auto"   # (os.environ: dynamo traces this read)
        check_choice("GPURNN_BACKEND", backend, CHOICES)
    if backend in ("auto", "numpy") and not on_gpu:
        return "numpy"   # the common CPU case, without probing for CUDA on every layer call
    status = backend_status()
    if backend == "auto":
        for name in ("triton", "cupy"):
            if status[name] is None:
                return name
        raise RuntimeError(f"backend='auto': data is on a CUDA device but neither GPU backend is usable: "
                           f"triton: {status['triton']}; cupy: {status['cupy']}")
    if status[backend] is not None:
        raise RuntimeError(f"backend={backend!r} is not usable here: {status[backend]}")
    where = "cuda" if on_gpu else "cpu"
    if backend == "numpy" and on_gpu:
        raise ValueError("backend='numpy' runs on the CPU: expected data on device cpu, got cuda")
    if backend == "cupy" and not on_gpu:
        raise ValueError(f"backend='cupy' runs on a CUDA GPU: expected data on device cuda, got {where}")
    if backend == "triton" and not on_gpu and not interpreting():
        raise ValueError("backend='triton' expects data on a CUDA device (or TRITON_INTERPRET=1 on the CPU), got cpu")
    return backend


# torch.compiler.assume_constant_result(resolve) without importing dynamo: under torch.compile it runs in plain
# Python, not traced (tracing its probes for CuPy failed, "Import failure", where CuPy is not installed)
resolve._dynamo_marked_constant = True
