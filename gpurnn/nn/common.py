"""What the torch modules share: torch.nn's names for the cells, autocast as torch.nn's modules
get it, tensor checks, and the packed-sequence index."""
import types

import torch

from .. import backends
from ..checks import check_same_dtype

TORCH_NAMES = {"elman": "RNN", "lstm": "LSTM", "gru": "GRU"}   # as torch.nn's messages name them


TRACED_ROOT = object()   # fx_call's answer for the traced root: the caller runs torch.nn's forward (a TraceError)


def fx_call(module, input, hx):
    """Under torch.fx.symbolic_trace: the module as one call_module node, as fx records torch.nn's own modules
    (it traces into modules from elsewhere, and the engine cannot run on proxies); else None."""
    proxy = input if isinstance(input, torch.fx.Proxy) else hx if isinstance(hx, torch.fx.Proxy) else None
    if proxy is None:   # (the common case: no generator, 0.3 us of every single step)
        return None
    path = proxy.tracer.path_of_module(module)
    if not path:   # the traced root itself: fx traces its forward, which is to be torch.nn's (see TRACED_ROOT)
        return TRACED_ROOT
    return proxy.tracer.create_proxy("call_module", path, (input, hx), {})


_STEP_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def torch_steps_here(x, backend):
    """Whether a single step (a cell, a layer at T=1) on x goes to torch's own step op: floating-point data for the
    CPU engine, outside torch.compile, torch.func and forward-mode AD (which run the layer as before). There the
    engine's fixed cost per call is several times a step, and torch's step op gives torch.nn's bits
    (profiling/results/cpu/single_step_intel_xeon.md), where the engine would carry a half-precision step in
    float32. Dynamo is asked first: traced, backends.env's read of os.environ's store would make torch.compile
    guard on every variable, and recompile when any is set."""
    return (x.dtype in _STEP_DTYPES and not torch.compiler.is_compiling()
            and backends.runs_numpy(backend, x.is_cuda) and torch._C._functorch.peek_interpreter_stack() is None
            and torch.autograd.forward_ad._current_level < 0)


def parametrized(module):
    """parametrize.is_parametrized(module) without its attribute miss through nn.Module.__getattr__, which cost
    about 1 us of every single step (a parametrization's ModuleDict is always a registered submodule)."""
    found = module._modules.get("parametrizations")
    return isinstance(found, torch.nn.ModuleDict) and len(found) > 0


def torch_nn_steps(module, x, states, weight):
    """Whether module's own torch.nn forward runs this single step: a well-formed one (states: the hidden state's
    tensors, all of x's dtype and device, as is the parameter `weight`) that `torch_steps_here`; gpurnn's checks
    plus the step took 1.4-2.9x torch.nn's time on an Intel Xeon. Anything else goes through gpurnn's checks,
    whose messages name the argument. Not for a parametrized module: reading its weight here would evaluate the
    parametrization once more than torch.nn does (a random one, as weight dropout, would draw other weights).
    Written for speed (it runs before every single step): a loop, not a generator, and the weight read from
    _parameters where it is one, without nn.Module.__getattr__'s miss (0.4 us)."""
    if parametrized(module):
        return False
    dtype, device = x.dtype, x.device
    for h in states:
        if not isinstance(h, torch.Tensor) or h.dtype != dtype or h.device != device:
            return False
    w = module._parameters.get(weight)
    return ((w if w is not None else getattr(module, weight)).dtype == dtype
            and torch_steps_here(x, module.backend))


def beyond_engine(data, weights):
    """Whether a call has data or weights the engine does not take, so that the module runs torch.nn's own forward:
    complex numbers (torch.nn's modules run them on the CPU; the engine is real, its gradients would be silently
    wrong), sparse, nested or quantized tensors (torch's errors, or its results). After `overridden`:
    ExpandedWeight cannot answer is_complex."""
    return any(isinstance(t, torch.Tensor) and (t.is_complex() or t.layout != torch.strided or t.is_quantized)
               for t in (data, *weights))


_DISABLED = torch._C._disabled_torch_function_impl   # what Parameter and FakeTensor have: no override


def overridden(*args):
    """Whether an argument or weight overrides torch's functions (__torch_function__: a wrapper, a tensor
    subclass such as ExpandedWeight for per-sample gradients): the module then runs torch.nn's own forward,
    so that the override sees the ops torch.nn calls. Tuples (an LSTM's hx) count by their items."""
    if torch.compiler.is_compiling():   # dynamo traces the engine's custom op (its tensors override)
        return False
    flat = [a for arg in args for a in (arg if isinstance(arg, (tuple, list)) else (arg,)) if a is not None]
    # the arguments' own types only: torch.overrides.has_torch_function is also true under any torch function
    # mode, and torch.set_default_device or `with torch.device(...)` installs one
    return any(type(a) is not torch.Tensor and getattr(type(a), "__torch_function__", _DISABLED) is not _DISABLED
               for a in flat)


class NotATensor(TypeError, AttributeError):
    """A non-tensor where a tensor goes: torch.nn fails on it with an AttributeError (`'list' object has no
    attribute 'dim'`); gpurnn's TypeError names the argument: this is both, and its message ends with torch.nn's
    (`touched`: the tensor attribute torch.nn reads first there), which tests written for torch.nn look for."""

    @classmethod
    def about(cls, name, expected, obj, touched=None):
        missing = touched and _missing(obj, touched)
        words = f" ({missing}, in torch.nn's words)" if missing else ""
        # (args: the message alone, so that it pickles)
        return cls(f"{name}: expected {expected}, got {type(obj).__name__}{words}")


def _missing(obj, attribute):
    """Python's message for obj.attribute missing (it names a C type with its module: 'numpy.ndarray'), or None
    where obj has one (torch.nn then fails further on)."""
    try:
        getattr(obj, attribute)
    except AttributeError as err:
        return str(err)
    return None


def check_tensor(name, t, touched=None):
    if not isinstance(t, torch.Tensor):
        raise NotATensor.about(name, "a torch.Tensor", t, touched)


class RuntimeValueError(ValueError, RuntimeError):
    """Bad input where torch.nn raises a RuntimeError (tensors on different devices: with its words, which
    torch's own tests match; a weight of the wrong shape: from its matmul); also a ValueError, as gpurnn's
    other checks of bad input."""


class RuntimeTypeError(TypeError, RuntimeError):
    """An argument of the wrong type where torch.nn raises a RuntimeError (a hidden state whose dtype differs
    from the input's: from its matmul; an LSTM hx that is not two tensors: "lstm expects two hidden
    states"); gpurnn's checks raise a TypeError that names the argument: this is both."""


class IndexTypeError(TypeError, IndexError):
    """An LSTM hx of fewer than two tensors where torch.nn reads hx[0] and hx[1]: torch fails with an IndexError;
    gpurnn's TypeError names hx: this is both."""


def lstm_pair(hx, op, indexed, rebuilt=None, torch_nn=None):
    """An LSTM's hx as [h_0, c_0], as torch.nn takes it. indexed: torch.nn reads hx[0] and hx[1] here (tensor
    input to the LSTM, unbatched input to the cell), so a bare tensor of two or more rows is the pair, and
    fewer than two is an IndexError; rebuilt (default: indexed): torch.nn then passes only those two on (unbatched
    input), so a longer tuple serves too; elsewhere torch's op `op` needs exactly two tensors. torch_nn: runs
    torch.nn's forward, whose error's words follow gpurnn's."""
    rebuilt = indexed if rebuilt is None else rebuilt
    if isinstance(hx, (tuple, list)) and (len(hx) == 2 or rebuilt and len(hx) > 2):
        return [hx[0], hx[1]]
    is_tensor = isinstance(hx, torch.Tensor)
    if indexed and is_tensor and hx.dim() and len(hx) >= 2:
        return [hx[0], hx[1]]
    count = f" of {len(hx)}" if isinstance(hx, (tuple, list)) or (is_tensor and hx.dim()) else ""
    short = indexed and (is_tensor or (isinstance(hx, (tuple, list)) and len(hx) < 2))
    message = f"{op} expects two hidden states; hx: expected a tuple (h_0, c_0) of two tensors, got a " \
              f"{type(hx).__name__}{count}"
    if torch_nn is not None:
        try:
            torch_nn()
        except Exception as torch_err:
            message += f"; torch.nn: {torch_err}"
    raise (IndexTypeError if short else RuntimeTypeError)(message)


def check_tensor_like(name, t, x):
    """t a tensor of x's dtype."""
    check_tensor(name, t)
    try:
        check_same_dtype(name, t.dtype, "input", x.dtype)
    except TypeError as err:
        raise RuntimeTypeError(str(err)) from None


def check_hidden_device(t, x, packed):
    """A hidden state tensor t on x's device, in torch.nn's words (its packed op words it otherwise)."""
    if t.device != x.device and packed:
        raise RuntimeValueError(f"Tensor on device {x.device} is not on the expected device {t.device}!")
    if t.device != x.device:
        raise RuntimeValueError(f"Input and hidden tensors are not at the same device, found input tensor at "
                                f"{x.device} and hidden tensor at {t.device}")


def check_input(module, x, batch_sizes):
    """torch.nn's check_input. Its LSTM checks no packed input: its op's input GEMM refuses data of another dtype
    or width (or, of another width with sequences of equal lengths, reads past it). There an error of both types
    (ValueError, RuntimeError): the check's words, then the GEMM's."""
    try:
        module.check_input(x, batch_sizes)
    except (ValueError, RuntimeError) as err:
        if module.mode != "LSTM" or batch_sizes is None:
            raise
        w = module._flat_weights
        try:   # (refused before any arithmetic)
            torch.nn.functional.linear(x, w[0], w[2] if module.bias else None)
        except RuntimeError as torch_err:
            raise RuntimeValueError(f"{err}; torch.nn: {torch_err}") from None
        raise


def check_parameter_device(x, weight):
    """torch.nn's check that the input is on the parameters' device, with its words."""
    if x.device != weight.device:
        raise RuntimeValueError(f"Input and parameter tensors are not at the same device, found input tensor at "
                                f"{x.device} and parameter tensor at {weight.device}")


# The modules whose aten ops autocast to the lower precision, as torch.nn's do: on the CPU
# rnn_tanh, rnn_relu, lstm and rnn_*_cell; on CUDA every RNN op (_cudnn_rnn and the *_cell ops).
AUTOCAST = {"cpu": ("RNN", "LSTM", "RNNCell"),
            "cuda": ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")}


def autocast_enabled(device):
    """Whether autocast is on for `device` (a device without autocast, as meta, has it off). Dynamo before
    torch 2.13 cannot trace is_autocast_available (a graph break), so under torch.compile only meta is ruled out."""
    if device.type in ("cpu", "cuda"):   # the common case, without the lookups below
        available = True
    elif torch.compiler.is_compiling():
        available = device.type != "meta"
    else:
        available = torch.amp.is_autocast_available(device.type)
    return available and torch.is_autocast_enabled(device.type)


def autocast_dtype(kind, device):
    """The dtype autocast gives torch.nn's `kind` module on `device` now, or None."""
    if kind in AUTOCAST.get(device.type, ()) and autocast_enabled(device):
        return torch.get_autocast_dtype(device.type)
    return None


def autocast_inside(kind, device, proj=False, packed=False):
    """Whether torch.nn's `kind` module runs a mixed precision of its own under autocast on `device` now, which
    the engine has no mode for: where autocast does not cast the op (GRU and the LSTM/GRU cells on the CPU),
    torch still runs the GEMMs inside it in the autocast dtype and returns the state in hx's dtype; the CPU LSTM
    with projections returns c_n unrounded, in c_0's dtype, and on a packed input returns float32 throughout.
    The modules then run torch.nn's own forward."""
    if not autocast_enabled(device):
        return False
    return kind not in AUTOCAST.get(device.type, ()) or ((proj or packed) and kind == "LSTM" and device.type == "cpu")


def mixed_dtypes(weights):
    """Whether the weights (None for an absent one) are of more than one dtype: changed after construction. torch's
    ops raise on them; the engine would cast, so the modules run torch.nn's own forward."""
    return len({w.dtype for w in weights if w is not None}) > 1


def autocast_mixed(kind, x, weights):
    """Whether autocast would cast some of a call's tensors and leave float64 ones as they are (it never casts
    float64): torch's GEMM refuses that mix, so the module runs torch.nn's own forward, which raises as it does."""
    if not isinstance(x, torch.Tensor) or autocast_dtype(kind, x.device) is None:   # (a non-tensor: named later)
        return False
    wide = [t.dtype == torch.float64 for t in (x, *weights) if t is not None and t.is_floating_point()]
    return any(wide) and not all(wide)


def autocast(t, dtype):
    """t cast as autocast casts an op's inputs: floating tensors other than float64."""
    if t is None or dtype is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def forward_named_as_its_class(cls):
    """Gives cls its own copy of the forward it inherits, which Python's call errors name as torch.nn's own do
    ("GRU.forward() got an unexpected keyword argument 'h0'", not "_EngineForward.forward() ..."), with torch.nn's
    annotations (its cells' forward has them: inspect.signature, type checkers and tools that read them) and
    docstring."""
    f, twin = cls.forward, getattr(torch.nn, cls.__name__).forward
    code = f.__code__.replace(co_qualname=f"{cls.__name__}.forward") if hasattr(f.__code__, "co_qualname") else \
        f.__code__   # (Python 3.10 names the function only)
    forward = types.FunctionType(code, f.__globals__, "forward", f.__defaults__, f.__closure__)
    forward.__kwdefaults__, forward.__doc__, forward.__module__ = f.__kwdefaults__, twin.__doc__, f.__module__
    forward.__qualname__ = f"{cls.__name__}.forward"
    forward.__annotations__ = dict(twin.__annotations__)
    cls.forward = forward
    return cls
