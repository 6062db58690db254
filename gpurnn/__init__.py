"""gpurnn: fast recurrent networks (Elman, Jordan, LSTM, GRU) with exact BPTT.

`import gpurnn` needs only NumPy; `gpurnn.nn` (torch modules) imports torch
when first used.
"""
import importlib

from .backends import available_backends, backend_status

__version__ = "0.1.0"
__all__ = ["available_backends", "backend_status", "functional", "nn", "info", "__version__"]


def __getattr__(name):
    if name in ("nn", "functional", "training", "diagnostics"):
        return importlib.import_module(f".{name}", __name__)
    if name == "info":
        from .info import info
        return info
    raise AttributeError(f"module 'gpurnn' has no attribute {name!r}")
