"""Drop-in torch modules: gpurnn.nn.RNN/LSTM/GRU are torch.nn.RNN/LSTM/GRU
(same constructor, parameters, initialisation, state_dict) whose forward runs
the gpurnn engine; JordanRNN is gpurnn's own.

The autograd Function is one layer, one or both directions (a bidirectional
layer's directions run together: one kernel launch for both under "triton");
layers, dropout and packing are composed here with ordinary torch ops.
"""
import math

import torch
from torch.nn.utils.rnn import PackedSequence

from . import backends, cells, engine, torch_loop
from .arrays import device_scope, tensor_to_xp, xp_to_tensor
from .checks import (check_choice, check_floating, check_same_device, check_same_dtype,
                     check_shape, check_unit_interval)
from .cells import NONLINEARITIES, OUTPUT_ACTIVATIONS


class _Layer(torch.autograd.Function):
    """One layer, one or both directions:
    (x, *(state0, weights) of each direction) -> (y, *state_T) of each direction."""

    @staticmethod
    def forward(ctx, spec, x, *tensors):
        cell, n_state, reverses, batch_sizes, backend, opts = spec
        per = len(tensors) // len(reverses)
        groups = [tensors[i * per:(i + 1) * per] for i in range(len(reverses))]
        # The engine's backward reads x and the weights through zero-copy views (not the initial
        # states or the biases, which forward copies): saving them lets torch's version counter
        # reject an in-place change before backward, as torch.nn does. Double backward reruns the
        # whole layer in torch ops (torch_loop), so it keeps every input, and their versions.
        names = ["x"] + [name for _ in groups for name in ("state",) * n_state + cells.WEIGHT_NAMES[cell]]
        ctx.save_for_backward(*[t for t, name in zip((x, *tensors), names)
                                if t is not None and name not in ("state", "b_ih", "b_hh", "b_h", "b_o")])
        ctx.inputs, ctx.spec = (x, *tensors), spec
        ctx.versions = [None if t is None else t._version for t in ctx.inputs]
        ctx.device = x.device
        with device_scope(x.device):
            to_xp = lambda t: None if t is None else tensor_to_xp(t)
            if opts.get("teacher") is not None:
                opts = dict(opts, teacher=tensor_to_xp(opts["teacher"]))
            directions = [(tuple(map(to_xp, g[:n_state])),
                           dict(zip(cells.WEIGHT_NAMES[cell], map(to_xp, g[n_state:]))),
                           reverse) for g, reverse in zip(groups, reverses)]
            results = engine.forward_directions(cell, tensor_to_xp(x), directions, batch_sizes=batch_sizes,
                                                backend=backend, for_backward=any(ctx.needs_input_grad), **opts)
            ctx.saved, ctx.cell, ctx.n_out = [saved for _, _, saved in results], cell, 1 + n_state
            ctx.has_weight = [[t is not None for t in g[n_state:]] for g in groups]
            return tuple(xp_to_tensor(a) for y, state, _ in results for a in (y, *state))

    @staticmethod
    def backward(ctx, *grads):
        ctx.saved_tensors   # raises if x or a weight was modified in place since forward
        if torch.is_grad_enabled():   # create_graph: the gradient must itself be differentiable
            return _Layer._differentiable_backward(ctx, grads)
        with device_scope(ctx.device):
            return _Layer._backward(ctx, grads)

    @staticmethod
    def _backward(ctx, grads):
        to_xp = lambda t: None if t is None else tensor_to_xp(t.contiguous())
        k = ctx.n_out
        results = engine.backward_directions([
            (saved, to_xp(grads[i * k]), tuple(map(to_xp, grads[i * k + 1:(i + 1) * k])))
            for i, saved in enumerate(ctx.saved)])
        dxs = [xp_to_tensor(dx) for dx, _, _ in results]
        out = [None, dxs[0] if len(dxs) == 1 else dxs[0] + dxs[1]]   # every direction reads x
        for (_, dstate0, grads_d), has_weight in zip(results, ctx.has_weight):
            out += [xp_to_tensor(d) for d in dstate0]
            out += [xp_to_tensor(grads_d[name]) if has and name not in cells.no_grad(ctx.cell) else None
                    for name, has in zip(cells.WEIGHT_NAMES[ctx.cell], has_weight)]
        return tuple(out)

    @staticmethod
    def _differentiable_backward(ctx, grads):
        """The same gradients as a graph: torch.autograd.grad, with create_graph, of the layer
        rerun in torch ops on the inputs themselves."""
        for t, version in zip(ctx.inputs, ctx.versions):
            if t is not None and t._version != version:
                raise RuntimeError("one of the variables needed for gradient computation has been modified "
                                   f"by an inplace operation: a tensor of shape {tuple(t.shape)} is at version "
                                   f"{t._version}; expected version {version} instead (double backward)")
        cell, n_state, reverses, batch_sizes, _, opts = ctx.spec
        x, *tensors = ctx.inputs
        per = len(tensors) // len(reverses)
        outs = []
        for i, reverse in enumerate(reverses):
            g = tensors[i * per:(i + 1) * per]
            outs += torch_loop.layer(cell, x, g[:n_state], g[n_state:], reverse=reverse,
                                     batch_sizes=batch_sizes, **opts)
        wanted = [i for i, t in enumerate(ctx.inputs) if t is not None and ctx.needs_input_grad[i + 1]]
        found = torch.autograd.grad(outs, [ctx.inputs[i] for i in wanted], grads, create_graph=True,
                                    allow_unused=True)
        out = [None] * (1 + len(ctx.inputs))
        for i, g in zip(wanted, found):
            out[i + 1] = g
        return tuple(out)


def run_layers(cell, x, directions, *, backend="auto", batch_sizes=None, **opts):
    """x (T, B, I) tensor and [(state0, weights, reverse)] -> [(y, *state_T)] of each direction,
    differentiable. A bidirectional layer's directions go in one call: under "triton" one kernel
    launch runs both.

    bfloat16 data is carried in float32 buffers (NumPy and CuPy have none); the Triton
    kernels still hold the weights in bfloat16 (io_dtype).
    """
    name = backends.resolve(backend, x.is_cuda)
    dtype = x.dtype
    if dtype == torch.bfloat16:
        up = lambda t: None if t is None else t.float()
        if name == "triton":
            opts = dict(opts, io_dtype="bfloat16")
        if opts.get("teacher") is not None:
            opts = dict(opts, teacher=opts["teacher"].float())
        outs = run_layers(cell, x.float(), [([up(s) for s in state0], [up(w) for w in weights], reverse)
                                            for state0, weights, reverse in directions],
                          backend=name, batch_sizes=batch_sizes, **opts)
        return [tuple(t.to(dtype) for t in out) for out in outs]
    if name == "numpy":
        opts = dict(opts, gemm="torch")   # see arrays.torch_matmul
    n_state = len(directions[0][0])
    spec = (cell, n_state, tuple(reverse for _, _, reverse in directions), batch_sizes, name, opts)
    flat = _Layer.apply(spec, x, *[t for state0, weights, _ in directions for t in (*state0, *weights)])
    k = 1 + n_state
    return [tuple(flat[i * k:(i + 1) * k]) for i in range(len(directions))]


def run_layer(cell, x, state0, weights, *, backend="auto", batch_sizes=None, reverse=False, **opts):
    """x (T, B, I) tensor -> (y, *state_T), differentiable: run_layers for one direction."""
    return run_layers(cell, x, [(state0, weights, reverse)], backend=backend, batch_sizes=batch_sizes,
                      **opts)[0]


def _packed_index(batch_sizes, batch):
    """Row index into a (T*B, ·) padded view for every row of a packed data tensor."""
    return torch.cat([t * batch + torch.arange(int(n)) for t, n in enumerate(batch_sizes)])


def _check_tensor_like(name, t, x):
    check_same_dtype(name, t.dtype, "input", x.dtype)
    check_same_device(name, t.device, "input", x.device)


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
        if packed:
            data, batch_sizes, sorted_idx, unsorted_idx = input
            check_floating("input", data.dtype, data.is_floating_point())
            self.check_input(data, batch_sizes)
            batch, steps = int(batch_sizes[0]), len(batch_sizes)
            index = _packed_index(batch_sizes, batch).to(data.device)
            x = data.new_zeros(steps * batch, data.shape[-1]).index_copy(0, index, data)
            x = x.view(steps, batch, -1)
            batch_sizes = [int(n) for n in batch_sizes]
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"input: expected a 2-D (unbatched) or 3-D tensor, got {input.dim()}-D "
                                 f"with shape {tuple(input.shape)}")
            check_floating("input", input.dtype, input.is_floating_point())
            batched = input.dim() == 3
            if not batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            self.check_input(input, None)
            x = input.transpose(0, 1) if self.batch_first else input
            batch, batch_sizes, sorted_idx, unsorted_idx = x.shape[1], None, None, None
        check_same_device("input", x.device, "the module's parameters", self.weight_ih_l0.device)
        x = x.contiguous()

        layers_dirs = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            hx = [x.new_zeros(layers_dirs, batch, out_size)]
            if is_lstm:
                hx.append(x.new_zeros(layers_dirs, batch, self.hidden_size))
        else:
            hx = list(hx) if is_lstm else [hx]
            names = ["h_0", "c_0"] if is_lstm else ["hx"]
            want_dim = 3 if packed or batched else 2
            for name, h in zip(names, hx):
                if h.dim() != want_dim:
                    raise RuntimeError(f"{name}: expected a {want_dim}-D tensor for "
                                       f"{'batched' if want_dim == 3 else 'unbatched'} input, got {h.dim()}-D")
                _check_tensor_like(name, h, x)
            if not packed and not batched:
                hx = [h.unsqueeze(1) for h in hx]
            sizes = [(layers_dirs, batch, out_size), (layers_dirs, batch, self.hidden_size)]
            for name, h, size in zip(names, hx, sizes):
                if tuple(h.shape) != size:
                    raise RuntimeError(f"{name}: expected hidden size {size}, got {tuple(h.shape)}")
            if sorted_idx is not None:
                hx = [h.index_select(1, sorted_idx) for h in hx]

        y, finals = self._run_stack(x, hx, batch_sizes)
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

    def _run_stack(self, x, hx, batch_sizes):
        dirs = 2 if self.bidirectional else 1
        finals = [[] for _ in hx]
        for layer in range(self.num_layers):
            directions = []
            for d in range(dirs):
                k = layer * dirs + d
                weights = [getattr(self, n) if hasattr(self, n) else None
                           for n in self._weight_names(layer, "_reverse" if d else "")]
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
        decay = torch.as_tensor(decay, **kw).expand(output_size).clone()
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
