"""Boundary checks: each error names the argument, what was expected and what came."""
import numbers
import operator


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def check_shape(name, shape, expected):
    shape, expected = tuple(shape), tuple(expected)
    if shape != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {shape}")


def check_rank(name, shape, ranks):
    if len(shape) not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected a {want} array, got {len(shape)}-D with shape {tuple(shape)}")


def check_floating(name, dtype, is_floating):
    if not is_floating:
        torch_dtype = type(dtype).__module__ == "torch"   # (no torch import here: the NumPy API runs without it)
        kinds = "float16, bfloat16, float32, float64" if torch_dtype else "float16, float32, float64"
        raise TypeError(f"{name}: expected a floating dtype ({kinds}), got {dtype}")


def check_same_dtype(name, dtype, ref_name, ref_dtype):
    if dtype != ref_dtype:
        raise TypeError(f"{name}: expected dtype {ref_dtype} (the dtype of {ref_name}), got {dtype}")


def check_same_device(name, device, ref_name, ref_device):
    if device != ref_device:
        raise ValueError(f"{name}: expected device {ref_device} (the device of {ref_name}), got {device}")


def check_unit_interval(name, lo, hi):
    if not (0 <= lo and hi <= 1):
        raise ValueError(f"{name}: expected values in [0, 1], got values in [{lo}, {hi}]")


def check_steps(T):
    """A sequence needs a step, with torch.nn's exception and words."""
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")


def as_integer(name, value):
    """value as an int (a Python or NumPy integer, a 0-d integer tensor; not a bool)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {value!r}") from None


def as_real(name, value, words="a number"):
    """value as a float: a real number, or a 0-d array or tensor of one (torch takes those too)."""
    if isinstance(value, (bool, str)) or not (isinstance(value, numbers.Real) or getattr(value, "ndim", None) == 0):
        raise TypeError(f"{name}: expected {words}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected {words}, got {value!r}") from None


def check_savable(tensors):
    """torch's error where autograd would save an inference tensor (torch.nn's fused ops save every input); with
    inference tensors only, autograd records nothing. Its words are torch's own (they differ between versions):
    torch's autograd is asked to save the first of them."""
    inference = [t for t in tensors if t is not None and t.is_inference()]
    if inference and len(inference) < sum(t is not None for t in tensors):
        import torch

        t = inference[0]
        torch.zeros((), dtype=t.dtype, device=t.device, requires_grad=True) * t   # raises torch's error
        raise RuntimeError("Inference tensors cannot be saved for backward")   # (a torch that saved it)
