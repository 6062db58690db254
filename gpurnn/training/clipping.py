"""Clipping gradients by their global norm, with torch's convention."""
import numpy as np

from ..arrays import array_module, check_array
from ..checks import as_real, check_floating


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale gradients in place so their global norm is at most max_norm; return the norm.

    torch's convention (torch.nn.utils.clip_grad_norm_): total = norm of the
    per-array norms; every array is multiplied by min(1, max_norm / (total + 1e-6)).
    norm_type as torch.linalg.vector_norm's ord: any real number (0 counts nonzeros) or
    +-inf. grads: torch parameters (tensors that require grad or hold a .grad; handed to
    torch.nn.utils.clip_grad_norm_, which scales their .grad), gradient tensors themselves (as
    torch.autograd.grad returns them: no .grad, not requiring grad), or NumPy/CuPy arrays; one,
    a list or a dict of them (None entries are skipped). Returns the total norm before clipping (a tensor, or an xp scalar).
    Nothing is scaled when an argument is wrong. foreach: torch's, for tensors.
    """
    try:
        arrays = list(grads.values()) if isinstance(grads, dict) else [grads] if hasattr(grads, "shape") else list(grads)
    except TypeError:
        raise TypeError(f"grads: expected an array, or a list or dict of arrays, got {type(grads).__name__}") from None
    arrays = [a for a in arrays if a is not None]
    as_real("max_norm", max_norm)   # checked; a tensor goes to torch as it is (float() would sync a GPU)
    norm_type = float(norm_type) if isinstance(norm_type, str) and norm_type in ("inf", "-inf") else \
        as_real("norm_type", norm_type, "a number or inf")
    is_torch = [type(a).__module__.startswith("torch") for a in arrays]
    if arrays and is_torch[0]:
        import torch
        if not all(is_torch):
            i = is_torch.index(False)
            raise TypeError(f"grads[{i}]: expected a tensor like grads[0], got {type(arrays[i]).__name__}")
        # (a gradient taken with create_graph=True requires grad too, but is no leaf: it has no .grad)
        holders = [isinstance(a, torch.nn.Parameter) or a.is_leaf and (a.requires_grad or a.grad is not None)
                   for a in arrays]
        if all(holders):
            return torch.nn.utils.clip_grad_norm_(arrays, max_norm, norm_type, error_if_nonfinite, foreach)
        if any(holders):   # torch would read the others' .grad (None): they would silently stay as they are
            i = holders.index(not holders[0])
            want, got = ("a parameter (its .grad is scaled)", "a tensor that neither requires grad nor has a .grad")
            raise TypeError(f"grads[{i}]: expected {want} like grads[0], got {got}" if holders[0] else
                            f"grads[{i}]: expected {got} (a gradient, scaled itself) like grads[0], got a parameter")
        for i, a in enumerate(arrays):
            check_floating(f"grads[{i}]", a.dtype, a.is_floating_point() or a.is_complex())
        # torch's total norm (get_total_norm, which torch < 2.6 lacks): the norm of the per-tensor norms. Not
        # recorded, as torch's (a gradient taken with create_graph=True stays differentiable after its scaling).
        with torch.no_grad():
            norms = [torch.linalg.vector_norm(a, norm_type).to(arrays[0].device) for a in arrays]
            total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
            if error_if_nonfinite and not bool(torch.isfinite(total)):
                raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} is non-finite "
                                   f"({float(total)})")
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)   # torch's clip_grads_with_norm_
            for a in arrays:
                a.mul_(coef.to(a.device))
        return total
    for i, a in enumerate(arrays):
        if not (hasattr(a, "dtype") and hasattr(a, "shape")) or is_torch[i]:
            raise TypeError(f"grads[{i}]: expected a NumPy or CuPy array, got {type(a).__name__}")
        check_floating(f"grads[{i}]", a.dtype, np.issubdtype(a.dtype, np.floating))
        if not getattr(getattr(a, "flags", None), "writeable", True):   # CuPy arrays have no such flag
            got = f"a NumPy scalar ({type(a).__name__})" if isinstance(a, np.generic) else "a read-only one"
            raise ValueError(f"grads[{i}]: expected a writable array (it is scaled in place), got {got}")
        if i == 0:
            xp = array_module("grads[0]", a, "")   # (tensors took the torch path above)
        check_array(f"grads[{i}]", a, xp, "grads[0]")
    if not arrays:
        return np.zeros((), np.float32)
    max_norm = float(max_norm)
    wide = [a.astype(np.promote_types(a.dtype, np.float32), copy=False) for a in arrays]  # fp16 sums overflow
    with np.errstate(all="ignore"):   # non-finite gradients give a non-finite scale silently, as torch's
        total = _vector_norm(xp, xp.stack([_vector_norm(xp, a, norm_type) for a in wide]), norm_type)
        if error_if_nonfinite and not bool(xp.isfinite(total)):
            raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} is non-finite "
                               f"({float(total)})")
        coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
        for a in arrays:
            a *= coef.astype(a.dtype)
    return total


def _vector_norm(xp, a, p):
    """torch.linalg.vector_norm(a, p) for any real p or +-inf."""
    a = xp.abs(a.ravel())
    if p == np.inf:
        return a.max()
    if p == -np.inf:
        return a.min()
    if p == 0:
        return (a != 0).sum().astype(a.dtype)
    with np.errstate(divide="ignore"):   # a zero to a negative power is inf (the norm 0), silently as in torch
        return (a ** p).sum() ** (1 / p)
