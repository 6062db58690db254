"""Drop-in torch modules: gpurnn.nn.RNN/LSTM/GRU are torch.nn.RNN/LSTM/GRU
(same constructor, parameters, initialisation, state_dict) whose forward runs
the gpurnn engine; JordanRNN is gpurnn's own.

Each layer (one or both directions: one kernel launch for both under "triton") is
autograd.run_layers; layers, dropout and packing are composed here with ordinary torch ops.
"""
import math

import torch
from torch.nn.utils.rnn import PackedSequence

from . import backends
from .autograd import run_layer, run_layers  # noqa: F401  (run_layer: part of the API)
from .checks import (check_choice, check_floating, check_same_device, check_same_dtype,
                     check_shape, check_unit_interval)
from .cells import NONLINEARITIES, OUTPUT_ACTIVATIONS


def _packed_index(batch_sizes, batch):
    """Row index into a (T*B, ·) padded view for every row of a packed data tensor."""
    return torch.cat([t * batch + torch.arange(int(n)) for t, n in enumerate(batch_sizes)])


def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _check_tensor_like(name, t, x):
    _check_tensor(name, t)
    check_same_dtype(name, t.dtype, "input", x.dtype)
    check_same_device(name, t.device, "input", x.device)


TORCH_NAMES = {"elman": "RNN", "lstm": "LSTM", "gru": "GRU"}   # as torch.nn's messages name them

# The modules whose aten ops autocast to the lower precision, as torch.nn's do: on the CPU
# rnn_tanh, rnn_relu, lstm and rnn_*_cell; on CUDA every RNN op (_cudnn_rnn and the *_cell ops).
AUTOCAST = {"cpu": ("RNN", "LSTM", "RNNCell"),
            "cuda": ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")}


def _autocast_dtype(kind, device):
    """The dtype autocast gives torch.nn's `kind` module on `device` now, or None."""
    if kind in AUTOCAST.get(device.type, ()) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def _autocast(t, dtype):
    """t cast as autocast casts an op's inputs: floating tensors other than float64."""
    if t is None or dtype is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


class _EngineForward:
    """forward() shared by RNN, LSTM and GRU; mirrors torch.nn.RNNBase's semantics."""

    _cell = None

    def _init_backend(self, backend):
        check_choice("backend", backend, backends.CHOICES)
        self.backend = backend

    def flatten_parameters(self):
        """A no-op: gpurnn reads the parameters where they are."""

    def _opts(self):
        return {}

    def forward(self, input, hx=None):
        is_lstm = self._cell == "lstm"
        packed = isinstance(input, PackedSequence)
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        x, batch_sizes, sorted_idx, unsorted_idx, batched, hx = self._checked_inputs(input, hx)
        if packed:
            batch, steps = int(batch_sizes[0]), len(batch_sizes)
            index = _packed_index(batch_sizes, batch).to(x.device)
            x = x.new_zeros(steps * batch, x.shape[-1]).index_copy(0, index, x).view(steps, batch, -1)
            batch_sizes = [int(n) for n in batch_sizes]
        else:
            x = x.transpose(0, 1) if self.batch_first else x
            batch = x.shape[1]
            if x.shape[0] == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        check_floating("input", x.dtype, x.is_floating_point())
        check_same_device("input", x.device, "the module's parameters", self.weight_ih_l0.device)
        x = x.contiguous()
        layers_dirs = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            hx = [x.new_zeros(layers_dirs, batch, out_size)]
            if is_lstm:
                hx.append(x.new_zeros(layers_dirs, batch, self.hidden_size))
        else:
            for name, h in zip(["h_0", "c_0"] if is_lstm else ["hx"], hx):
                _check_tensor_like(name, h, x)
            if sorted_idx is not None:
                hx = [h.index_select(1, sorted_idx) for h in hx]

        dtype = _autocast_dtype(TORCH_NAMES[self._cell], x.device)
        x, hx = _autocast(x, dtype), [_autocast(h, dtype) for h in hx]
        y, finals = self._run_stack(x, hx, batch_sizes, dtype)
        finals = [torch.stack(f) for f in finals]
        if unsorted_idx is not None:
            finals = [f.index_select(1, unsorted_idx) for f in finals]
        hidden = tuple(finals) if is_lstm else finals[0]
        if packed:
            out = y.reshape(-1, y.shape[-1]).index_select(0, index)
            return PackedSequence(out, input.batch_sizes, sorted_idx, unsorted_idx), hidden
        if self.batch_first:
            y = y.transpose(0, 1)
        if not batched:
            y = y.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return y, hidden

    def _checked_inputs(self, input, hx):
        """torch.nn's checks, with its exception types and messages, in its order:
        (x, batch_sizes, sorted_idx, unsorted_idx, batched, [h_0(, c_0)] or None)."""
        is_lstm = self._cell == "lstm"
        if is_lstm and hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            got = f"a {type(hx).__name__}" + (f" of {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            raise TypeError(f"hx: expected a tuple (h_0, c_0) of two tensors, got {got}")
        if isinstance(input, PackedSequence):
            x, batch_sizes, sorted_idx, unsorted_idx = input
            if len(batch_sizes) and int(batch_sizes.min()) < 1:
                raise ValueError(f"batch_sizes: expected every entry >= 1, got {batch_sizes.tolist()}")
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input: expected a tensor or a PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                tensor = " tensor" if self._cell == "elman" else ""
                raise ValueError(f"{TORCH_NAMES[self._cell]}: Expected input to be 2D or 3D, got "
                                 f"{input.dim()}D{tensor} instead")
            x, batch_sizes, sorted_idx, unsorted_idx = input, None, None, None
            batched = input.dim() == 3
            if not batched:
                x = input.unsqueeze(0 if self.batch_first else 1)
        if hx is not None:
            hx = list(hx) if is_lstm else [hx]
            for h in hx:
                _check_tensor("hx", h)
            want = 3 if batched else 2
            if any(h.dim() != want for h in hx):
                kind = "batched 3-D" if batched else "unbatched 2-D"
                if is_lstm:
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                       f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx[0].dim()}-D tensor")
            if not batched:
                hx = [h.unsqueeze(1) for h in hx]
            self.check_forward_args(x, tuple(hx) if is_lstm else hx[0], batch_sizes)
        else:
            self.check_input(x, batch_sizes)
        return x, batch_sizes, sorted_idx, unsorted_idx, batched, hx

    def _run_stack(self, x, hx, batch_sizes, autocast_dtype=None):
        dirs = 2 if self.bidirectional else 1
        finals = [[] for _ in hx]
        for layer in range(self.num_layers):
            directions = []
            for d in range(dirs):
                k = layer * dirs + d
                names = self._weight_names(layer, "_reverse" if d else "")
                weights = [getattr(self, n) if hasattr(self, n) else None for n in names]
                for name, w, shape in zip(names, weights, self._weight_shapes(layer, x.shape[-1])):
                    if w is not None and tuple(w.shape) != shape:
                        raise ValueError(f"{name}: expected shape {shape}, got {tuple(w.shape)}")
                weights = [_autocast(w, autocast_dtype) for w in weights]
                directions.append(([h[k] for h in hx], weights, bool(d)))
            outs = []
            for y, *state in run_layers(self._cell, x, directions, backend=self.backend,
                                        batch_sizes=batch_sizes, **self._opts()):
                outs.append(y)
                for f, s in zip(finals, state):
                    f.append(s)
            x = torch.cat(outs, -1) if dirs == 2 else outs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = torch.nn.functional.dropout(x, self.dropout, training=True)
        return x, finals

    def _weight_shapes(self, layer, input_size):
        """The shapes _weight_names' parameters must have (torch.nn's layout)."""
        G = {"elman": 1, "lstm": 4, "gru": 3}[self._cell] * self.hidden_size
        P = self.proj_size or self.hidden_size
        inputs = input_size if layer == 0 else P * (2 if self.bidirectional else 1)
        return [(G, inputs), (G, P), (G,), (G,), (P, self.hidden_size)]

    def _weight_names(self, layer, suffix):
        names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}",
                 f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
        return names + ([f"weight_hr_l{layer}{suffix}"] if self._cell == "lstm" else [])


class RNN(_EngineForward, torch.nn.RNN):
    """torch.nn.RNN (Elman, tanh or relu) on the gpurnn engine; extra argument `backend`."""

    _cell = "elman"

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)

    def _opts(self):
        return {"nonlinearity": self.nonlinearity}


class LSTM(_EngineForward, torch.nn.LSTM):
    """torch.nn.LSTM (with proj_size) on the gpurnn engine; extra argument `backend`."""

    _cell = "lstm"

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)


class GRU(_EngineForward, torch.nn.GRU):
    """torch.nn.GRU on the gpurnn engine; extra argument `backend`."""

    _cell = "gru"

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)


_DTYPE_NAMES = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16"}


class _CellForward:
    """forward() shared by RNNCell, LSTMCell and GRUCell: torch.nn's checks and messages, then one
    step of the engine (a sequence of length 1)."""

    _cell = None

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        check_choice("backend", backend, backends.CHOICES)
        self.backend = backend

    def forward(self, input, hx=None):
        is_lstm, kind = self._cell == "lstm", TORCH_NAMES[self._cell] + "Cell"
        if input.dim() not in (1, 2):
            raise ValueError(f"{kind}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            if is_lstm and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"hx: expected a tuple (h_0, c_0) of two tensors, got a {type(hx).__name__}")
            for idx, h in enumerate(hx if is_lstm else [hx]):
                _check_tensor("hx", h)
                if h.dim() not in (1, 2):
                    what = f"hx[{idx}]" if is_lstm else "hidden"
                    raise ValueError(f"{kind}: Expected {what} to be 1D or 2D, got {h.dim()}D instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            zeros = x.new_zeros(x.size(0), self.hidden_size)
            hx = [zeros, zeros] if is_lstm else [zeros]
        else:
            hx = [h if batched else h.unsqueeze(0) for h in (hx if is_lstm else [hx])]
        self._check_step_args(x, hx)
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh] + ([None] if is_lstm else [])
        dtype = _autocast_dtype(kind, x.device)
        x, hx, weights = _autocast(x, dtype), [_autocast(h, dtype) for h in hx], [_autocast(w, dtype) for w in weights]
        opts = {"nonlinearity": self.nonlinearity} if self._cell == "elman" else {}
        _, *state = run_layer(self._cell, x.unsqueeze(0).contiguous(), hx, weights, backend=self.backend, **opts)
        state = [s if batched else s.squeeze(0) for s in state]
        return tuple(state) if is_lstm else state[0]

    def _check_step_args(self, x, hx):
        """What torch's step functions (_VF.*_cell) check, with their messages."""
        if x.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected {self.input_size}")
        for i, h in enumerate(hx):
            if x.size(0) != h.size(0):
                raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}")
        for t in [x] + hx:
            if t.dtype != self.weight_ih.dtype and not torch.is_autocast_enabled(t.device.type):
                raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got "
                                   f"{_DTYPE_NAMES.get(t.dtype, t.dtype)} and {_DTYPE_NAMES.get(self.weight_ih.dtype)}")
            check_same_device("input", t.device, "the module's parameters", self.weight_ih.device)


class RNNCell(_CellForward, torch.nn.RNNCell):
    """torch.nn.RNNCell on the gpurnn engine; extra argument `backend`."""

    _cell = "elman"


class LSTMCell(_CellForward, torch.nn.LSTMCell):
    """torch.nn.LSTMCell on the gpurnn engine; extra argument `backend`."""

    _cell = "lstm"


class GRUCell(_CellForward, torch.nn.GRUCell):
    """torch.nn.GRUCell on the gpurnn engine; extra argument `backend`."""

    _cell = "gru"


class JordanRNN(torch.nn.Module):
    """Jordan network: output units feed self-connected state units.

    h_t = phi(W_ih x_t + W_sh s_t + b_h),  y_t = g(W_ho h_t + b_o),
    s_{t+1} = decay * s_t + y_t  (teacher_t in place of y_t under teacher forcing).
    forward(x, s0=None, teacher=None) -> (y, s_next); s_next continues the sequence.
    """

    def __init__(self, input_size, hidden_size, output_size, nonlinearity="tanh",
                 output_activation="identity", decay=0.5, bias=True, batch_first=False,
                 backend="auto", device=None, dtype=None):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("output_size", output_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        check_choice("backend", backend, backends.CHOICES)
        kw = {"device": device, "dtype": dtype}
        if not isinstance(decay, (int, float, list, tuple, torch.Tensor)) or isinstance(decay, bool):
            raise TypeError(f"decay: expected a number or a tensor of {output_size} values, got {type(decay).__name__}")
        decay = torch.as_tensor(decay, **kw)
        if decay.dim() > 1 or decay.numel() not in (1, output_size):
            raise ValueError(f"decay: expected a number or shape ({output_size},) (output_size), "
                             f"got shape {tuple(decay.shape)}")
        decay = decay.expand(output_size).clone()
        check_unit_interval("decay", float(decay.min()), float(decay.max()))
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.nonlinearity, self.output_activation = nonlinearity, output_activation
        self.batch_first, self.backend = batch_first, backend
        P = torch.nn.Parameter
        self.weight_ih = P(torch.empty(hidden_size, input_size, **kw))
        self.weight_sh = P(torch.empty(hidden_size, output_size, **kw))
        self.bias_h = P(torch.empty(hidden_size, **kw)) if bias else None
        self.weight_ho = P(torch.empty(output_size, hidden_size, **kw))
        self.bias_o = P(torch.empty(output_size, **kw)) if bias else None
        self.register_buffer("decay", decay)
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            torch.nn.init.uniform_(p, -bound, bound)

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, {self.output_size}, "
                f"nonlinearity={self.nonlinearity!r}, output_activation={self.output_activation!r}")

    def forward(self, x, s0=None, teacher=None):
        _check_tensor("x", x)
        if x.dim() not in (2, 3):
            raise ValueError(f"x: expected a 2-D (unbatched) or 3-D tensor, got {x.dim()}-D "
                             f"with shape {tuple(x.shape)}")
        check_floating("x", x.dtype, x.is_floating_point())
        check_same_dtype("x", x.dtype, "the module's parameters", self.weight_ih.dtype)
        check_same_device("x", x.device, "the module's parameters", self.weight_ih.device)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected {self.input_size} input features (last dim), got {x.shape[-1]}")
        if teacher is not None:
            _check_tensor_like("teacher", teacher, x)
            check_shape("teacher", teacher.shape, tuple(x.shape[:-1]) + (self.output_size,))
            teacher = teacher.detach()
        batched = x.dim() == 3
        time_dim = 1 if (self.batch_first and batched) else 0
        if not batched:
            x = x.unsqueeze(1)
            teacher = None if teacher is None else teacher.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
            teacher = None if teacher is None else teacher.transpose(0, 1)
        T, B = x.shape[:2]
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")   # torch.nn's words
        if s0 is None:
            s0 = x.new_zeros(B, self.output_size)
        else:
            _check_tensor_like("s0", s0, x)
            check_shape("s0", s0.shape, (B, self.output_size) if batched else (self.output_size,))
            s0 = s0 if batched else s0.unsqueeze(0)
        teacher = None if teacher is None else teacher.contiguous()
        weights = [self.weight_ih, self.weight_sh, self.bias_h, self.weight_ho, self.bias_o, self.decay]
        y, s_next = run_layer("jordan", x.contiguous(), [s0], weights, backend=self.backend,
                              nonlinearity=self.nonlinearity,
                              output_activation=self.output_activation, teacher=teacher)
        if not batched:
            return y.squeeze(1), s_next.squeeze(0)
        return (y.transpose(0, 1) if time_dim == 1 else y), s_next


# torch.load(weights_only=True), torch's default, unpickles only allowed classes: a whole saved
# gpurnn model loads wherever gpurnn.nn has been imported.
torch.serialization.add_safe_globals([RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell, JordanRNN])
