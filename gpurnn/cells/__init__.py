"""The cells, one module each: a cell name maps to the module that holds everything about it
on xp arrays (step rules, loops, gate order). The engine reaches a cell only through get().

Each module has WEIGHT_NAMES (torch's names, in the order the torch layer passes them), GATES,
NO_GRAD (weights that get no gradient; optional) and make(xp, w, opts, fused), which
returns the cell object for one call (see base.py for its protocol). Its fused kernels are
kernels/<name>.py, installed as gpurnn.kernels.<name>.
"""
import importlib

from . import elman, gru, jordan, lstm
from .base import NONLINEARITIES, OUTPUT_ACTIVATIONS  # noqa: F401  (re-exported for the public API)

MODULES = {"elman": elman, "lstm": lstm, "gru": gru, "jordan": jordan}
WEIGHT_NAMES = {name: m.WEIGHT_NAMES for name, m in MODULES.items()}
BIASES = ("b_ih", "b_hh", "b_h", "b_o")   # the cells' bias names (saved for backward as torch.nn's ops save them)


def get(name):
    """The module of cell `name`."""
    try:
        return MODULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"cell: expected one of {tuple(MODULES)}, got {name!r}") from None


def no_grad(name):
    """The weights of cell `name` that are buffers, not parameters."""
    return getattr(get(name), "NO_GRAD", ())


def kernels(name):
    """The fused-kernel module of cell `name`: kernels/<name>.py, installed as gpurnn.kernels.<name>.

    Its forward([c, ...], [sizes, ...]) does, for each cell c (a layer's directions), what
    c.step(t, sizes[t]) plus the engine's state hold does for t = 0..T-1, and its backward
    what c.back_step does for t = T-1..0, on the same buffers (c after begin_forward/begin_backward).
    """
    get(name)
    return importlib.import_module(f"gpurnn.kernels.{name}")
