"""gpurnn.nn.JordanRNN: output units feed self-connected state units (no torch.nn twin)."""
import contextlib
import math
import numbers

import numpy as np
import torch
from torch.nn.utils import parametrize

from .. import backends
from ..autograd import run_layer
from ..cells import NONLINEARITIES, OUTPUT_ACTIVATIONS
from ..checks import (check_choice, check_floating, check_same_device, check_same_dtype, check_shape, check_steps,
                      check_unit_interval)
from .common import autocast_enabled, check_tensor, parametrized


WEIGHT_NAMES = ("weight_ih", "weight_sh", "bias_h", "weight_ho", "bias_o", "decay")


def _check_like_x(name, t, x, shape):
    """t a tensor of x's dtype and device, of this shape."""
    check_tensor(name, t)
    check_same_dtype(name, t.dtype, "x", x.dtype)
    check_same_device(name, t.device, "x", x.device)
    check_shape(name, t.shape, shape)


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
            if not isinstance(value, int) or isinstance(value, bool):   # (a TypeError, as torch.nn's modules give)
                raise TypeError(f"{name}: expected an integer >= 1, got {value!r}")
            if value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        check_choice("backend", backend, backends.CHOICES)
        if dtype is not None:
            check_floating("dtype", dtype, isinstance(dtype, torch.dtype) and dtype.is_floating_point)
        kw = {"device": device, "dtype": dtype}
        if not isinstance(decay, (numbers.Real, list, tuple, np.ndarray, torch.Tensor)) or isinstance(decay, bool):
            raise TypeError(f"decay: expected a number or a tensor of {output_size} values, got {type(decay).__name__}")
        try:
            decay = torch.as_tensor(decay, device=device, dtype=dtype or torch.get_default_dtype())   # 1 is a float
        except (TypeError, ValueError, RuntimeError) as e:   # a list holding None, ragged lists
            raise TypeError(f"decay: expected a number or a tensor of {output_size} values, got {decay!r} ({e})") \
                from None
        if decay.dim() > 1 or decay.numel() not in (1, output_size):
            raise ValueError(f"decay: expected a number or shape ({output_size},) (output_size), "
                             f"got shape {tuple(decay.shape)}")
        decay = decay.detach().expand(output_size).clone()   # a buffer: no autograd history (deepcopy needs that)
        if not decay.is_meta:   # (on the meta device there are no values to check)
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A loaded decay is checked as the constructor's is: outside [0, 1] the state grows without bound
        (forward does not check it: that would read the buffer back from the device every call)."""
        decay = state_dict.get(prefix + "decay")
        if isinstance(decay, torch.Tensor) and decay.numel() and not decay.is_meta:
            check_unit_interval(f"state_dict[{prefix + 'decay'!r}]", float(decay.min()), float(decay.max()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            torch.nn.init.uniform_(p, -bound, bound)

    def extra_repr(self):
        """As torch.nn's modules': the sizes, then what differs from the defaults."""
        parts = [f"{self.input_size}, {self.hidden_size}, {self.output_size}",
                 f"nonlinearity={self.nonlinearity!r}", f"output_activation={self.output_activation!r}"]
        if not self.decay.is_meta:
            low, high = float(self.decay.min()) + 0.0, float(self.decay.max()) + 0.0   # (-0.0 + 0.0: "0", not "-0")
            parts += [] if low == high == 0.5 else [f"decay={low:g}" if low == high else
                                                    f"decay=per unit, {low:g} to {high:g}"]
        parts += [] if self.bias_h is not None else ["bias=False"]
        parts += ["batch_first=True"] if self.batch_first else []
        return ", ".join(parts)

    def forward(self, x, s0=None, teacher=None):
        if not parametrized(self):
            return self._run(x, s0, teacher)
        with parametrize.cached():   # each weight evaluated once per call (the checks read weight_ih too)
            return self._run(x, s0, teacher)

    def _run(self, x, s0, teacher):
        check_tensor("x", x)
        if x.dim() not in (2, 3):
            raise ValueError(f"x: expected a 2-D (unbatched) or 3-D tensor, got {x.dim()}-D "
                             f"with shape {tuple(x.shape)}")
        check_floating("x", x.dtype, x.is_floating_point())
        check_same_dtype("x", x.dtype, "the module's parameters", self.weight_ih.dtype)
        check_same_device("x", x.device, "the module's parameters", self.weight_ih.device)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected {self.input_size} input features (last dim), got {x.shape[-1]}")
        if teacher is not None:
            _check_like_x("teacher", teacher, x, tuple(x.shape[:-1]) + (self.output_size,))
        batched = x.dim() == 3
        time_dim = 1 if (self.batch_first and batched) else 0
        if not batched:
            x = x.unsqueeze(1)
            teacher = None if teacher is None else teacher.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
            teacher = None if teacher is None else teacher.transpose(0, 1)
        T, B = x.shape[:2]
        check_steps(T)
        if s0 is None:
            s0 = x.new_zeros(B, self.output_size)
        else:
            _check_like_x("s0", s0, x, (B, self.output_size) if batched else (self.output_size,))
            s0 = s0 if batched else s0.unsqueeze(0)
        teacher = None if teacher is None else teacher.contiguous()
        weights = [self.weight_ih, self.weight_sh, self.bias_h, self.weight_ho, self.bias_o, self.decay]
        H, O = self.hidden_size, self.output_size   # as they are now (functional_call, an assigned Parameter)
        for name, w, shape in zip(WEIGHT_NAMES, weights, ((H, self.input_size), (H, O), (H,), (O, H), (O,), (O,))):
            if w is not None:
                _check_like_x(name, w, x, shape)
        # in the dtype of x and the weights under autocast too, at every length (the engine and the kernels have no
        # mixed precision; one step, run as torch ops, once followed autocast)
        with torch.autocast(x.device.type, enabled=False) if autocast_enabled(x.device) else contextlib.nullcontext():
            y, s_next = run_layer("jordan", x.contiguous(), [s0], weights, backend=self.backend,
                                  nonlinearity=self.nonlinearity, output_activation=self.output_activation,
                                  teacher=teacher)
        if not batched:
            return y.squeeze(1), s_next.squeeze(0)
        return (y.transpose(0, 1) if time_dim == 1 else y), s_next
