"""gpurnn.nn.RNNCell, LSTMCell and GRUCell: torch.nn's cell modules (same API, state_dict,
checks and messages) whose step runs the gpurnn engine, as a sequence of length 1; where the CPU engine
would run it, torch's own step op (common.torch_steps_here: a whole torch.nn call where well formed)."""
import torch
from torch.nn.utils import parametrize

from .. import backends
from ..autograd import run_layer
from ..recording import recorded_for_torch, transformed
from ..cells import NONLINEARITIES
from ..checks import check_choice
from .common import (TORCH_NAMES, NotATensor, autocast, autocast_dtype, autocast_enabled, autocast_inside,
                     autocast_mixed, beyond_engine, check_tensor, forward_named_as_its_class, fx_call, lstm_pair,
                     mixed_dtypes, overridden, parametrized, torch_nn_steps, torch_steps_here, TRACED_ROOT)
from .rnn import _EngineForward

# dtypes as torch's matmul errors name them: (addmm's scalar type, mm's C++ type)
_DTYPE_NAMES = {torch.float64: ("Double", "double"), torch.float32: ("Float", "float"),
                torch.float16: ("Half", "c10::Half"), torch.bfloat16: ("BFloat16", "c10::BFloat16"),
                torch.complex64: ("ComplexFloat", "c10::complex<float>"),
                torch.complex128: ("ComplexDouble", "c10::complex<double>"), torch.int64: ("Long", "long int"),
                torch.int32: ("Int", "int"), torch.int16: ("Short", "short int"), torch.int8: ("Char", "signed char"),
                torch.uint8: ("Byte", "unsigned char"), torch.bool: ("Bool", "bool")}


def _rows(t):
    """Whether t is a tensor that iterates as rows (torch.nn iterates an LSTMCell's hx)."""
    return isinstance(t, torch.Tensor) and t.dim() > 0


class _CellForward:
    """forward() shared by RNNCell, LSTMCell and GRUCell: torch.nn's checks and messages, then one
    step of the engine (a sequence of length 1) or torch's step op (see the module's docstring)."""

    _cell = None
    backend = "auto"   # (also for one whose attributes came from torch.nn's module: a __class__ or __dict__ swap)

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        check_choice("backend", backend, backends.CHOICES)
        self.backend = backend

    __prepare_scriptable__ = _EngineForward.__prepare_scriptable__

    def forward(self, input, hx=None):
        traced = fx_call(self, input, hx)
        if traced is TRACED_ROOT:   # as torch.nn's: fx traces into its forward, and fails on its control flow
            return super().forward(input, hx)
        if traced is not None:
            return traced
        if not parametrized(self):
            return self._step(input, hx)
        with parametrize.cached():   # each weight evaluated once per call, as by torch.nn (the checks read them too)
            return self._step(input, hx)

    def _step(self, input, hx):
        given, is_lstm, kind = hx, self._cell == "lstm", TORCH_NAMES[self._cell] + "Cell"
        if isinstance(input, torch.Tensor) and (self._torch_nn_step(input, hx) or autocast_inside(kind, input.device)
                                                or recorded_for_torch(input) or transformed()):
            return super().forward(input, hx)   # torch.nn's own step (see each condition; the common one first)
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        if (overridden(input, hx, *weights) or beyond_engine(input, weights) or autocast_mixed(kind, input, weights)
                or mixed_dtypes(weights)):
            return super().forward(input, hx)
        check_tensor("input", input, "dim")
        if input.dim() not in (1, 2):
            raise ValueError(f"{kind}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            # as torch.nn: an LSTMCell's hx item by item (the rows of a bare tensor), all before the pair is taken
            items = (hx if isinstance(hx, (tuple, list)) or _rows(hx) else []) if is_lstm else [hx]
            for idx, h in enumerate(items):
                check_tensor("hx", h, "dim")
                if h.dim() not in (1, 2):
                    what = f"hx[{idx}]" if is_lstm else "hidden"
                    raise ValueError(f"{kind}: Expected {what} to be 1D or 2D, got {h.dim()}D instead")
            try:
                hx = lstm_pair(hx, "lstm_cell", input.dim() == 1) if is_lstm else [hx]
            except TypeError as err:
                return self._as_torch_nn(input, given, err)
        if self._cell == "elman" and self.nonlinearity not in NONLINEARITIES:   # torch.nn checks it only here
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            zeros = x.new_zeros(x.size(0), self.hidden_size)
            hx = [zeros, zeros] if is_lstm else [zeros]
        else:
            hx = [h if batched else h.unsqueeze(0) for h in hx]
        if not self._check_step_args(x, hx):
            return super().forward(input, given)
        # an unbatched input with a batched hx that passes those checks (B == H): torch's steps broadcast them (as
        # here, below), but its LSTM step crashes the process on a batched h; the engine would read unwritten memory
        broadcast = any(h.dim() == 3 for h in hx)
        if is_lstm and hx[0].dim() == 3:
            raise RuntimeError(f"{kind}: Expected hx[0] to be 1D for a 1D input, got 2D instead")
        weights += [None] if is_lstm else []
        dtype = autocast_dtype(kind, x.device)
        x, hx, weights = autocast(x, dtype), [autocast(h, dtype) for h in hx], [autocast(w, dtype) for w in weights]
        # torch's own step: empty (its shapes and strides), an LSTM's c of another dtype than h (torch promotes the
        # step's results to it), broadcast, or where `torch_steps_here` (the CPU engine)
        if (x.numel() == 0 or any(h.numel() == 0 for h in hx) or hx[-1].dtype != hx[0].dtype or broadcast
                or torch_steps_here(x, self.backend)):
            state = self._torch_step(x, hx, weights[:4])
        else:
            opts = {"nonlinearity": self.nonlinearity} if self._cell == "elman" else {}
            _, *state = run_layer(self._cell, x.unsqueeze(0).contiguous(), hx, weights, backend=self.backend, **opts)
        state = [s if batched else s.squeeze(0) for s in state]
        return tuple(state) if is_lstm else state[0]

    def _as_torch_nn(self, input, hx, err):
        """An LSTMCell's hx that is no pair of tensors: what torch.nn does, its result or gpurnn's error (err, which
        names hx) followed by torch.nn's words, in an error of torch's type too."""
        try:
            return super().forward(input, hx)
        except Exception as torch_err:
            raise (NotATensor if isinstance(torch_err, AttributeError) else type(err))(
                f"{err}; torch.nn: {torch_err}") from None

    def _torch_nn_step(self, input, hx):
        """`torch_nn_steps` for a cell: hx None, a tensor, or an LSTMCell's (h, c) tuple."""
        if input.dim() not in (1, 2) or self._cell == "lstm" and hx is not None and not (
                isinstance(hx, tuple) and len(hx) == 2 and (input.dim() == 2 or getattr(hx[0], "ndim", 1) == 1)):
            return False   # (an unbatched input with a batched h: torch.nn's LSTM step crashes; _step raises)
        states = () if hx is None else hx if self._cell == "lstm" else (hx,)
        return torch_nn_steps(self, input, states, "weight_ih")

    def _torch_step(self, x, hx, weights):
        if self._cell == "lstm":
            return list(torch.lstm_cell(x, tuple(hx), *weights))
        if self._cell == "gru":
            return [torch.gru_cell(x, hx[0], *weights)]
        step = torch.rnn_tanh_cell if self.nonlinearity == "tanh" else torch.rnn_relu_cell
        return [step(x, hx[0], *weights)]

    def _check_step_args(self, x, hx):
        """What torch's step functions (_VF.*_cell) check, with their messages; False where the devices differ: torch's
        words then depend on them, and on the meta device some steps run, so torch.nn's own step answers."""
        if x.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected {self.input_size}")
        for i, h in enumerate(hx):
            if x.size(0) != h.size(0):
                raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}")
        if any(t.device != x.device for t in hx + [self.weight_ih]):
            return False
        # torch's RNN step and its CPU LSTM step multiply hx first, its GRU step and CUDA LSTM step the input; an
        # LSTM's c meets no weight (torch promotes to its dtype)
        for t in (x, hx[0]) if self._cell == "gru" or self._cell == "lstm" and x.is_cuda else (hx[0], x):
            if t.dtype != self.weight_ih.dtype and not autocast_enabled(t.device):
                got, want = (_DTYPE_NAMES.get(d, (str(d),) * 2) for d in (t.dtype, self.weight_ih.dtype))
                if self.bias:   # torch's step runs addmm with a bias, mm without
                    raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {got[0]} and {want[0]}")
                raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {got[1]} != {want[1]}")
        return True


# The cells spell out torch.nn's constructor signatures (plus `backend`), which tools read:
# torch.nn.utils.skip_init needs a `device` parameter, configuration tools name the arguments.

@forward_named_as_its_class
class RNNCell(_CellForward, torch.nn.RNNCell):
    """torch.nn.RNNCell on the gpurnn engine; extra argument `backend`."""

    _cell = "elman"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, bias, nonlinearity, device, dtype, backend=backend)


@forward_named_as_its_class
class LSTMCell(_CellForward, torch.nn.LSTMCell):
    """torch.nn.LSTMCell on the gpurnn engine; extra argument `backend`."""

    _cell = "lstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype, backend=backend)


@forward_named_as_its_class
class GRUCell(_CellForward, torch.nn.GRUCell):
    """torch.nn.GRUCell on the gpurnn engine; extra argument `backend`."""

    _cell = "gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype, backend=backend)
