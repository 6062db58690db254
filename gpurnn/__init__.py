"""gpurnn: fast recurrent networks (Elman, Jordan, LSTM, GRU) with exact BPTT.

`import gpurnn` needs only NumPy; `gpurnn.nn` (torch modules) imports torch
when first used.
"""
import importlib
import importlib.util
import pathlib
import sys


def _checkout_kernels():
    """Run from a checkout (PYTHONPATH=the repo root, nothing installed: the GPU check does so), kernels/ sits
    beside gpurnn/, where installs map it to gpurnn.kernels (pyproject's package-dir). Load that one under the
    name, also where another checkout is installed in editable mode; only beside this project's pyproject.toml,
    never an unrelated `kernels` beside an install."""
    root = pathlib.Path(__file__).resolve().parent.parent
    init, project = root / "kernels" / "__init__.py", root / "pyproject.toml"
    if not init.is_file() or not project.is_file() or 'name = "gpurnn"' not in project.read_text():
        return
    name = f"{__name__}.kernels"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    sys.modules[name] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    globals()["kernels"] = module   # as the import system sets a submodule on its parent


_checkout_kernels()

from .backends import available_backends, backend_status  # noqa: E402  (after the kernels are importable)

__version__ = "0.1.0"
__all__ = ["available_backends", "backend_status", "functional", "nn", "info", "__version__"]


def __getattr__(name):
    if name in ("nn", "functional", "training", "diagnostics"):
        return importlib.import_module(f".{name}", __name__)
    if name == "info":
        from .info import info
        return info
    raise AttributeError(f"module 'gpurnn' has no attribute {name!r}")
