"""One layer of each cell written in plain torch ops: the differentiable re-derivation that
gpurnn::layer's backward runs when its own result must be differentiated again (double backward:
create_graph=True, a gradient penalty, gradgradcheck).

The engine computes gradients on NumPy/CuPy arrays, which autograd cannot see; this loop
gives autograd the same function (the equations of DESIGN.md, torch's gate orders) so that
torch.autograd.grad of it, with create_graph=True, is the first derivative as a graph.
A step is torch's own cell function where it serves (torch.gru_cell, rnn_tanh_cell,
rnn_relu_cell: differentiable twice; vmap runs them through torch's slower per-example
fallback); the LSTM's and Jordan's are written out.
It also runs single steps without gradient, and the layer under torch.func transforms.

    x (T, B, I)   state0: (h,), (h, c) or (s,), each (B, ·)   weights: cells.WEIGHT_NAMES order
    returns (y (T, B, ·), *state_T), as the engine's forward does
"""
import torch

from . import cells


def _elman(x_t, state, w, opts):
    cell = torch.rnn_tanh_cell if opts.get("nonlinearity", "tanh") == "tanh" else torch.rnn_relu_cell
    h = cell(x_t, state[0], *w)
    return h, (h,)


def _lstm(x_t, state, w, opts):
    # written out: torch.lstm_cell takes no projection and has no vmap rule
    w_ih, w_hh, b_ih, b_hh, w_hr = w
    h, c = state
    i, f, g, o = (_linear(x_t, w_ih, b_ih) + _linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if w_hr is not None:
        h = h @ w_hr.T
    return h, (h, c)


def _gru(x_t, state, w, opts):
    h = torch.gru_cell(x_t, state[0], *w)   # b_hn inside r * (...), as DESIGN.md's GRU
    return h, (h,)


def _jordan(x_t, state, w, opts, teacher_t=None):
    w_ih, w_sh, b_h, w_ho, b_o, decay = w
    s = state[0]
    z = _linear(x_t, w_ih, b_h) + s @ w_sh.T
    h = torch.tanh(z) if opts.get("nonlinearity", "tanh") == "tanh" else torch.relu(z)
    y = _linear(h, w_ho, b_o)
    act = opts.get("output_activation", "identity")
    if act == "tanh":
        y = torch.tanh(y)
    elif act == "sigmoid":
        y = torch.sigmoid(y)
    elif act == "softmax":
        y = torch.softmax(y, dim=-1)
    return y, (decay * s + (y if teacher_t is None else teacher_t),)


STEPS = {"elman": _elman, "lstm": _lstm, "gru": _gru, "jordan": _jordan}


def _linear(a, w, b):
    return a @ w.T if b is None else torch.addmm(b, a, w.T)   # a is one step's (B, ·) rows


def layer(cell, x, state0, weights, *, reverse=False, batch_sizes=None, **opts):
    """(y, *state_T) of one direction; batch_sizes: active rows per step (rows past their
    length hold their state and output zeros), reverse: t = T-1 .. 0."""
    step = STEPS[cell]
    T, B = x.shape[:2]
    sizes = [B] * T if batch_sizes is None else [int(n) for n in batch_sizes]
    teacher = opts.pop("teacher", None)
    state, ys = tuple(state0), [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        n = sizes[t]
        extra = {} if teacher is None else {"teacher_t": teacher[t, :n]}
        if n == B:
            ys[t], state = step(x[t], state, weights, opts, **extra)
            continue
        y, new = step(x[t, :n], tuple(s[:n] for s in state), weights, opts, **extra)
        state = tuple(torch.cat([a, s[n:]]) for a, s in zip(new, state))
        ys[t] = torch.cat([y, y.new_zeros((B - n,) + y.shape[1:])])
    # stacked at T=1 too: as torch's, not a view (y.detach_() refuses one) nor the memory of h_n
    return (torch.stack(ys), *state)


class _SavedAsTorch(torch.autograd.Function):
    """A direction's outputs (y, *states) unchanged, as tensors of their own, with `kept` saved for backward (and y
    where keep_y), as torch.nn's op saves them: changing one in place before backward is then torch.nn's error too.
    One node for all: its backward gets zeros for the outputs no gradient reached and passes them on, as oneDNN's
    LSTM reads every output's gradient (a NaN gate then gives NaN gradients where a loss on c_n alone, at T=1, left
    h's branch out of torch's loop)."""

    @staticmethod
    def forward(ctx, keep_y, n_outs, *tensors):
        outs = tuple(t.clone() for t in tensors[:n_outs])
        ctx.save_for_backward(outs[0] if keep_y else None, *tensors[n_outs:])
        return outs

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors   # (autograd's check of their versions)
        return (None, None, *grads) + (None,) * (len(saved) - 1)


def saved_as_torch(outs, cell, directions, saves_y, x=None):
    """The layer's [(y, *states)] of each direction, with what torch.nn's op saves and the computation did not: where
    oneDNN's LSTM runs (saves_y), y (one direction) and the biases; with x given, x, the initial states and the other
    weights too (Jordan's as its float32 engine saves them): where the computation ran on copies (bfloat16 in float32)
    or through ops that save fewer (one step's loop: no weight where x needs no gradient). outs as they are where no
    gradient will be asked of them."""
    if not (torch.is_grad_enabled() and any(t.requires_grad for out in outs for t in out)):
        return outs
    result = []
    for d, (out, (state0, weights, _)) in enumerate(zip(outs, directions)):
        named = list(zip(cells.WEIGHT_NAMES[cell], weights))
        kept = [w for n, w in named if n in cells.BIASES] if saves_y else []
        if x is not None:   # (w_ih as the engine saves it: see autograd._setup_context)
            kept += [x] * (d == 0) + [*state0] + [w for n, w in named if n not in cells.BIASES
                                                  and (n != "w_ih" or saves_y or x.requires_grad)]
        kept = [t for t in kept if t is not None]
        result.append(_SavedAsTorch.apply(saves_y and len(directions) == 1, len(out), *out, *kept))
    return result
