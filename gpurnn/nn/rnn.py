"""gpurnn.nn.RNN, LSTM and GRU: torch.nn.RNN/LSTM/GRU (same constructor, parameters,
initialisation, state_dict, checks and messages) whose forward runs the gpurnn engine, a
layer at a time (autograd.run_layers: one kernel launch for both directions under "triton");
layers, dropout and packing are composed here with ordinary torch ops."""
import numbers
import warnings

import torch
from torch.nn.utils.rnn import PackedSequence

from .. import backends, cells
from ..arrays import packed_index
from ..autograd import run_layers, saves_output
from ..recording import recorded_for_torch, transformed, without_storage
from ..cpu import layer as cpu_layer
from ..checks import check_choice, check_floating, check_steps
from .common import (TORCH_NAMES, NotATensor, RuntimeTypeError, RuntimeValueError, autocast, autocast_dtype,
                     autocast_enabled, autocast_inside, autocast_mixed, beyond_engine, check_hidden_device, check_input,
                     check_parameter_device, check_tensor, check_tensor_like, forward_named_as_its_class, fx_call,
                     lstm_pair, mixed_dtypes, overridden, torch_nn_steps, TRACED_ROOT)
from .convert import torch_twin


def _eagerly(function, *args):
    """function(*args) outside dynamo's graph (only called while dynamo traces: wrapped then, since
    torch.compiler.disable imports dynamo, which importing gpurnn.nn must not)."""
    return torch.compiler.disable(function)(*args)


class _EngineForward:
    """forward() shared by RNN, LSTM and GRU; mirrors torch.nn.RNNBase's semantics."""

    _cell = None
    backend = "auto"   # (also for one whose attributes came from torch.nn's module: a __class__ or __dict__ swap)

    def _init_backend(self, backend):
        check_choice("backend", backend, backends.CHOICES)
        self.backend = backend

    def flatten_parameters(self):
        """A no-op: gpurnn reads the parameters where they are."""

    def __prepare_scriptable__(self):
        """torch.jit.script compiles torch.nn's own module in this one's place, on the same parameters:
        TorchScript cannot run the engine (torch.compile does). torch puts what this returns
        into the parent module too, hence the warning."""
        twin = torch_twin(self)
        warnings.warn(f"torch.jit.script: gpurnn.nn.{type(self).__name__} is scripted as torch.nn."
                      f"{type(twin).__name__} on the same parameters, and torch replaces it by that module in its "
                      f"parent too (TorchScript cannot run gpurnn's engine; torch.compile can; "
                      f"gpurnn.nn.to_torch_nn converts a model)", stacklevel=2)
        return twin

    def _opts(self):
        return {}

    def forward(self, input, hx=None):
        traced = fx_call(self, input, hx)
        if traced is TRACED_ROOT:   # as torch.nn's: fx traces into its forward, and fails on its control flow
            return super().forward(input, hx)
        if traced is not None:
            return traced
        is_lstm = self._cell == "lstm"
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if ((packed or self.training and self.dropout and self.num_layers != 1) and torch.compiler.is_compiling()
                and not recorded_for_torch(data)):
            # eager (a graph break, as torch.nn's module gets): traced, the batch sizes would specialise (and
            # recompile) each graph after the one their int() breaks, and the dropout between layers would be
            # Inductor's masks (not torch.nn's for the same seed), or none in torch.nn's forward (torch 2.13's RNN
            # decomposition loses it)
            return _eagerly(self.forward, input, hx)
        kind = TORCH_NAMES[self._cell]
        # (torch.nn's forward reads the weights itself; a trace first: its sizes compared warn as torch.nn's do not)
        if isinstance(data, torch.Tensor) and (recorded_for_torch(data) or self._torch_single_step(input, hx)
                                               or autocast_inside(kind, data.device, self.proj_size, packed)):
            return super().forward(input, hx)
        if self._all_layers_on_torch(input, hx):
            return super().forward(input, hx)
        # as torch.nn: the weights as they are now (parametrizations, torch.func.functional_call), evaluated
        # once per call, and the checks read these
        self._update_flat_weights()
        if (overridden(data, hx, self._flat_weights) or beyond_engine(data, self._flat_weights)
                or self._changed_since_built() or autocast_mixed(kind, data, self._flat_weights)):
            return super().forward(input, hx)
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        given, (x, batch_sizes, sorted_idx, unsorted_idx, batched, hx) = hx, self._checked_inputs(input, hx)
        for h in hx or ():   # torch's op checks the devices (the state's, the parameters'), then the length and dtypes
            check_hidden_device(h, x, packed)
        check_parameter_device(x, self._flat_weights[0])
        if packed:
            batch, steps = int(batch_sizes[0]), len(batch_sizes)
            index = packed_index(batch_sizes, batch).to(x.device)
            x = x.new_zeros(steps * batch, x.shape[-1]).index_copy(0, index, x).view(steps, batch, -1)
            batch_sizes = [int(n) for n in batch_sizes]
        else:
            x = x.transpose(0, 1) if self.batch_first else x
            batch = x.shape[1]
            check_steps(x.shape[0])
        check_floating("input", x.dtype, x.is_floating_point())
        # autocast casts input and hidden state alike before they are compared (a carried state may be
        # in the autocast dtype already)
        dtype = autocast_dtype(kind, x.device)
        x = autocast(x, dtype).contiguous()
        layers_dirs = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            hx = [x.new_zeros(layers_dirs, batch, out_size)]
            if is_lstm:
                hx.append(x.new_zeros(layers_dirs, batch, self.hidden_size))
        else:
            hx = [autocast(h, dtype) for h in hx]
            try:
                for name, h in zip(["h_0", "c_0"] if is_lstm else ["hx"], hx):
                    check_tensor_like(name, h, x)
            except RuntimeTypeError as err:
                return self._as_torch_nn(input, given, err)

        y, finals = self._run_stack(x, hx, batch_sizes, dtype, index if packed else None)
        # stacked, one layer too: as torch's, a tensor of its own, contiguous (not a view, which h_n.detach_() refuses,
        # nor the output's memory at T=1)
        finals = [torch.stack(f) for f in finals]
        if unsorted_idx is not None:
            finals = [f.index_select(1, unsorted_idx) for f in finals]
        hidden = tuple(finals) if is_lstm else finals[0]
        if packed:
            out = y.reshape(-1, y.shape[-1])   # a view where torch.nn's op saves y (lengths all equal: its padded path)
            out = out if saves_output(y, self._cell, batch_sizes, self.proj_size > 0) else out.index_select(0, index)
            return PackedSequence(out, input.batch_sizes, sorted_idx, unsorted_idx), hidden
        if self.batch_first:
            # as torch.nn's: an RNN's or GRU's output is a tensor of its own (a clone keeps the strides), an LSTM's a view
            y = y.transpose(0, 1) if is_lstm else y.transpose(0, 1).clone()
        if not batched:
            y = y.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return y, hidden

    def _as_torch_nn(self, input, hx, err):
        """A hidden state of another dtype than the input: what torch.nn does, which depends on the op its forward
        reaches (its CPU op promotes a float64 LSTM's float32 c_0; elsewhere its matmul or oneDNN refuses, each
        in its own words): its result, or gpurnn's error naming the argument followed by torch.nn's."""
        try:
            return super().forward(input, hx)
        except RuntimeError as torch_err:
            raise RuntimeTypeError(f"{err}; torch.nn: {torch_err}") from None

    def _changed_since_built(self):
        """Whether attributes or weights were changed after construction in a way the engine has no reading of:
        weights of more than one dtype, a weight set to None, an RNN's mode set to another cell's, a dropout outside
        [0, 1], a num_layers or bidirectional of another type than int and bool (torch's op refuses them), or a number
        of weights that num_layers, bidirectional, bias and proj_size no longer give. torch.nn's own forward then
        raises (or runs) as it does."""
        dropout = self.dropout
        per_direction = 2 + 2 * bool(self.bias) + (self._cell == "lstm" and self.proj_size > 0)
        return (mixed_dtypes(self._flat_weights) or any(w is None for w in self._flat_weights)
                or self._cell == "elman" and self.mode not in ("RNN_TANH", "RNN_RELU")
                or type(self.num_layers) is not int or type(self.bidirectional) is not bool
                or not (isinstance(dropout, numbers.Real) and 0 <= dropout <= 1)
                or len(self._flat_weights) != self.num_layers * (1 + bool(self.bidirectional)) * per_direction)

    def _torch_single_step(self, input, hx):
        """`torch_nn_steps` for one step (T=1) of an Elman or GRU layer (about half the time of gpurnn's checks and
        the torch loop). An LSTM's float32/float64 step stays gpurnn's torch loop (autograd.run_layers), faster than
        torch.nn's; a half-precision one is torch.nn's, whose bits the loop's float32 state would not give."""
        if (isinstance(input, PackedSequence) or input.dim() not in (2, 3)
                or self._cell == "lstm" and input.dtype in (torch.float32, torch.float64)):
            return False
        steps = input.shape[1 if self.batch_first and input.dim() == 3 else 0]
        if self._cell == "lstm" and hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            return False   # (gpurnn's checks name what is wrong with it)
        states = () if hx is None else hx if self._cell == "lstm" else (hx,)
        return steps == 1 and torch_nn_steps(self, input, states, "weight_ih_l0")

    def _all_layers_on_torch(self, input, hx):
        """Whether every layer of this call on the CPU would run as torch's fused op, its route fixed already
        (cpu/layer.py): torch.nn's own forward then runs the call, in one op (gpurnn's checks and layer-by-layer
        calls cost 50-170 us a call on the Xeon: 1.1-3x torch.nn's no-grad forward at B=1; this check, 20-50 us)."""
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if (not isinstance(data, torch.Tensor) or data.dim() not in ((2,) if packed else (2, 3))
                or data.device.type != "cpu" or data.dtype not in (torch.float32, torch.float64, torch.bfloat16)
                or not self._flat_weights or type(self.num_layers) is not int or self.num_layers < 1
                or type(self.bidirectional) is not bool):
            return False   # (odd attributes: the path below answers them as torch.nn does)
        sizes = None
        if packed:   # (a hand-made batch size below 1: torch's op runs, gpurnn's path refuses it)
            sizes = input.batch_sizes
            T, B = len(sizes), int(sizes[0]) if len(sizes) and int(sizes[-1]) >= 1 else 0
        else:
            T = input.shape[1 if self.batch_first and input.dim() == 3 else 0]
            B = input.shape[0 if self.batch_first else 1] if input.dim() == 3 else 1
        states = list(hx) if self._cell == "lstm" and isinstance(hx, (tuple, list)) else [hx]
        weights = self._flat_weights   # as last refreshed: a stale list costs speed at worst (torch.nn's forward runs)
        if not self._weights_fit(weights, data.shape[-1]):
            return False   # (torch's CPU LSTM runs with a weight of the wrong shape; gpurnn's path names it)
        if (T < 2 or B == 0 or data.shape[-1] == 0 or torch.compiler.is_compiling()
                or not backends.runs_numpy(self.backend, False)   # (read outside dynamo: see torch_steps_here)
                or weights[0].dtype != data.dtype or weights[0].device.type != "cpu"
                or transformed() or autocast_enabled(data.device)
                or hx is not None and not self._states_fit(states, data, packed, B)):
            return False
        grad = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        dirs, per_layer = 1 + self.bidirectional, len(weights) // self.num_layers
        x_grad, h_grad, classes = data.requires_grad, hx is not None and any(h.requires_grad for h in states), []
        nonlinearity = "relu" if self._cell == "elman" and self.mode == "RNN_RELU" else "tanh"
        for layer in range(self.num_layers):
            weights_grad = any(w.requires_grad for w in weights[layer * per_layer:(layer + 1) * per_layer])
            for_backward = grad and (x_grad or h_grad or weights_grad)
            width = data.shape[-1] if layer == 0 else (self.proj_size or self.hidden_size) * dirs
            classes.append(cpu_layer.layer_class(self._cell, nonlinearity, T, B, width, self._state_widths(), dirs,
                                                 for_backward, x_grad, weights_grad, data.dtype, packed))
            x_grad = for_backward
        time_them = lambda: self._time_routes(data, None if hx is None else states, sizes, T, B)   # noqa: E731
        return cpu_layer.stack_on_torch(classes, id(self), time_them)

    def _state_widths(self):
        return [self.proj_size or self.hidden_size] + [self.hidden_size] * (self._cell == "lstm")

    def _states_fit(self, states, data, packed, B):
        """Whether a given hidden state is tensors of the data's dtype and of the shapes torch.nn checks for. Its
        LSTM does not check a packed input's: its op then runs on extra layer rows, or crashes the process."""
        rows = self.num_layers * (1 + self.bidirectional)
        batch = (B,) if packed or data.dim() == 3 else ()
        return len(states) == 1 + (self._cell == "lstm") and all(
            type(h) in (torch.Tensor, torch.nn.Parameter) and h.dtype == data.dtype and h.shape == (rows, *batch, w)
            for h, w in zip(states, self._state_widths()))

    def _time_routes(self, data, states, batch_sizes, T, B):
        """Times every layer's route (cpu/layer.py) on random data of this call's shapes (up to TIME_STEPS + 1 steps),
        grad mode and requires_grad flags, unseen: the RNG and the caller's saved-tensor hooks are left as they were."""
        if any(map(without_storage, self._flat_weights)):   # left by a torch.func transform or a fake trace
            self._update_flat_weights()
        steps, h_grad = min(T, cpu_layer.TIME_STEPS + 1), states is not None and any(h.requires_grad for h in states)
        hx = [torch.zeros(self.num_layers * (1 + self.bidirectional), B, w, dtype=data.dtype, requires_grad=h_grad)
              for w in self._state_widths()]
        with torch.random.fork_rng(devices=[]), cpu_layer.timed.unseen():
            x = torch.randn(steps, B, data.shape[-1], dtype=data.dtype).requires_grad_(data.requires_grad)
            self._run_stack(x, hx, None if batch_sizes is None else [int(n) for n in batch_sizes[:steps]])

    def _weights_fit(self, weights, input_size):
        """Whether the weights have torch.nn's shapes for this input width (remembered for the last shapes seen)."""
        key = (input_size, self.hidden_size, self.proj_size, self.num_layers, self.bidirectional,
               *(getattr(w, "shape", None) for w in weights))
        last = self.__dict__.get("_gpurnn_fit")
        if last is None or last[0] != key:
            want = {}
            for layer in range(self.num_layers):
                for d in range(1 + self.bidirectional):
                    want.update(zip(self._weight_names(layer, "_reverse" if d else ""),
                                    self._weight_shapes(layer, input_size)))
            fits = len(weights) == len(self._flat_weights_names) and all(
                w is not None and w.shape == want.get(n) for n, w in zip(self._flat_weights_names, weights))
            last = self.__dict__["_gpurnn_fit"] = (key, fits)
        return last[1]

    def _checked_inputs(self, input, hx):
        """torch.nn's checks, with its exception types and messages, in its order:
        (x, batch_sizes, sorted_idx, unsorted_idx, batched, [h_0(, c_0)] or None)."""
        is_lstm, packed = self._cell == "lstm", isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes, sorted_idx, unsorted_idx = input
            if len(batch_sizes) and int(batch_sizes.min()) < 1:
                raise ValueError(f"batch_sizes: expected every entry >= 1, got {batch_sizes.tolist()}")
            rows = int(batch_sizes.sum())
            if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] != rows:   # a hand-made PackedSequence
                if x.shape[0] < rows:
                    raise RuntimeValueError(f"input: expected a PackedSequence's data to have the {rows} rows its "
                                            f"batch_sizes add up to, got {x.shape[0]}")
                x = x[:rows]   # as torch's op, which reads no further
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise NotATensor.about("input", "a tensor or a PackedSequence", input, "dim")
            if input.dim() not in (2, 3):
                tensor = " tensor" if self._cell == "elman" else ""
                raise ValueError(f"{TORCH_NAMES[self._cell]}: Expected input to be 2D or 3D, got "
                                 f"{input.dim()}D{tensor} instead")
            x, batch_sizes, sorted_idx, unsorted_idx = input, None, None, None
            batched = input.dim() == 3
            if not batched:
                x = input.unsqueeze(0 if self.batch_first else 1)
        if hx is not None:
            given = hx
            if packed and sorted_idx is None and not is_lstm:   # (torch.nn checks it before hx; its LSTM, never)
                check_input(self, x, batch_sizes)
            # torch.nn reads an LSTM's hx[0] and hx[1] for a tensor input's dimension check and to select an unsorted
            # packed input's rows; it passes only those two on for an unbatched or unsorted packed input, else the
            # whole hx to its op, which refuses anything but two tensors after check_forward_args
            reads_pair = not packed or sorted_idx is not None
            passes_pair = sorted_idx is not None if packed else not batched
            torch_words = lambda: super(_EngineForward, self).forward(input, given)   # noqa: E731 (not torch.nn.LSTM)
            hx = lstm_pair(hx, "lstm", reads_pair, passes_pair or not packed, torch_words) if is_lstm else [hx]
            # the attribute torch.nn reads first: a packed input's hx is permuted (index_select) or sized
            touched = "dim" if not packed else "size" if sorted_idx is None else "index_select"
            for h in hx:
                check_tensor("hx", h, touched)
            want = 3 if batched else 2
            # as torch.nn, only a tensor input's hx is checked for its number of dimensions here; a packed
            # input's goes to check_forward_args (its message names the expected size)
            if not packed and any(h.dim() != want for h in hx):
                kind = "batched 3-D" if batched else "unbatched 2-D"
                if is_lstm:
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                       f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx[0].dim()}-D tensor")
            if not batched:
                hx = [h.unsqueeze(1) for h in hx]
            if sorted_idx is not None:   # a packed input's rows, in its order; torch.nn selects them before checking
                hx = [h.index_select(1, sorted_idx) for h in hx]
            check_input(self, x, batch_sizes)
            self.check_forward_args(x, tuple(hx) if is_lstm else hx[0], batch_sizes)
            if is_lstm and not passes_pair:
                lstm_pair(given, "lstm", indexed=False, torch_nn=torch_words)
        else:
            check_input(self, x, batch_sizes)
        return x, batch_sizes, sorted_idx, unsorted_idx, batched, hx

    def _run_stack(self, x, hx, batch_sizes, autocast_dtype=None, packed_rows=None):
        """The layers on x (T, B, ·) padded; packed_rows: the padded rows a packed input has (packed_index)."""
        dirs = 2 if self.bidirectional else 1
        finals = [[] for _ in hx]
        flat = dict(zip(self._flat_weights_names, self._flat_weights))
        for layer in range(self.num_layers):
            directions = []
            for d in range(dirs):
                k = layer * dirs + d
                names = self._weight_names(layer, "_reverse" if d else "")
                weights = [flat.get(n) for n in names]
                for name, w, shape in zip(names, weights, self._weight_shapes(layer, x.shape[-1])):
                    if w is not None and w.shape != shape:
                        raise RuntimeValueError(f"{name}: expected shape {shape}, got {tuple(w.shape)}")
                if autocast_dtype is not None:
                    weights = [autocast(w, autocast_dtype) for w in weights]
                directions.append(([h[k] for h in hx], weights, bool(d)))
            outs = []
            for y, *state in run_layers(self._cell, x, directions, backend=self.backend,
                                        batch_sizes=batch_sizes, **self._opts()):
                outs.append(y)
                for f, s in zip(finals, state):
                    f.append(s)
            x = torch.cat(outs, -1) if dirs == 2 else outs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = self._dropout(x, packed_rows)
        return x, finals

    def _dropout(self, x, rows):
        """torch.nn's dropout between layers; for a packed input on its packed rows only, as torch.nn
        does, so that the same seed draws the same masks."""
        if rows is None:
            return torch.nn.functional.dropout(x, self.dropout, training=True)
        flat = x.reshape(-1, x.shape[-1])
        kept = torch.nn.functional.dropout(flat.index_select(0, rows), self.dropout, training=True)
        return torch.zeros_like(flat).index_copy(0, rows, kept).view_as(x)

    def _weight_shapes(self, layer, input_size):
        """The shapes _weight_names' parameters must have (torch.nn's layout)."""
        G = cells.get(self._cell).GATES * self.hidden_size
        P = self.proj_size or self.hidden_size
        inputs = input_size if layer == 0 else P * (2 if self.bidirectional else 1)
        return [(G, inputs), (G, P), (G,), (G,), (P, self.hidden_size)]

    def _weight_names(self, layer, suffix):
        names = [f"{kind}_l{layer}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return names + ([f"weight_hr_l{layer}{suffix}"] if self._cell == "lstm" else [])


@forward_named_as_its_class
class RNN(_EngineForward, torch.nn.RNN):
    """torch.nn.RNN (Elman, tanh or relu) on the gpurnn engine; extra argument `backend`."""

    _cell = "elman"

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)

    def _opts(self):
        # torch.nn.RNN dispatches on the mode its constructor set, not on `nonlinearity` changed later
        return {"nonlinearity": "relu" if self.mode == "RNN_RELU" else "tanh"}


@forward_named_as_its_class
class LSTM(_EngineForward, torch.nn.LSTM):
    """torch.nn.LSTM (with proj_size) on the gpurnn engine; extra argument `backend`."""

    _cell = "lstm"

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)


@forward_named_as_its_class
class GRU(_EngineForward, torch.nn.GRU):
    """torch.nn.GRU on the gpurnn engine; extra argument `backend`."""

    _cell = "gru"

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)
