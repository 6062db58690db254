"""`python -m gpurnn info`: versions, devices and which backends are usable here."""
import importlib.metadata
import os
import platform

from . import cpu
from .cpu import gemm, stored
from .backends import CHOICES, backend_status


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices():
    try:
        import torch
    except ImportError:
        return ["(torch not installed: CUDA devices not listed)"]
    if not torch.cuda.is_available():
        return ["cpu only (no CUDA GPU visible to torch)"]
    return [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]


def info():
    """The report as a string."""
    from . import __version__
    cupy = next((v for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy")
                 if (v := _version(d))), None)
    lines = [f"gpurnn {__version__}", f"python {platform.python_version()} on {platform.machine()}"]
    for name, version in (("numpy", _version("numpy")), ("torch", _version("torch")),
                          ("triton", _version("triton")), ("cupy", cupy)):
        lines.append(f"{name:8s}{version or 'not installed'}")
    lines.append("devices:")
    lines += [f"  {d}" for d in _devices()]
    lines.append("backends:")
    for name, reason in backend_status().items():
        lines.append(f"  {name:8s}{'usable' if reason is None else 'unavailable: ' + reason}")
    chosen = os.environ.get("GPURNN_BACKEND") or None   # (set but empty: unset)
    if chosen is not None:   # what backend="auto" means in this process
        ok = chosen in CHOICES
        lines.append(f"  GPURNN_BACKEND={chosen!r}" + ("" if ok else f": not one of {CHOICES}, so every "
                                                      "layer call with backend='auto' raises ValueError"))
    lines.append(f"LSTM and GRU steps on the CPU (float32): {cpu.describe()}")
    if _version("torch"):   # the routes are the torch front end's
        lines.append(f"GEMM route on the CPU (torch front end): {gemm.describe()}")
        lines += [f"  {line}" for line in gemm.report()]
        try:
            lines.append(f"CPU route decisions kept in: {stored.directory() or 'none'}")
        except ValueError as err:   # (a bad GPURNN_ROUTE_CACHE: one line, as a bad GPURNN_BACKEND above)
            lines.append(f"CPU route decisions: {err}")
    return "\n".join(lines)


def add_arguments(parser):
    pass


def run(args):
    print(info())
