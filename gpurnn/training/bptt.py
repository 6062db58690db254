"""Truncated BPTT over long sequences or endless streams, k steps at a time."""
from collections import namedtuple

from ..checks import as_integer, as_real

ChunkResult = namedtuple("ChunkResult", "loss grad_norm state")


def detach_state(state):
    """The state with its history cut: a tensor, a tuple (LSTM; a namedtuple too) or list of them, or None."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        parts = [detach_state(s) for s in state]
        return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)
    if not hasattr(state, "detach"):
        raise TypeError(f"state: expected a tensor, a tuple or list of tensors, or None, got {type(state).__name__}")
    return state.detach()


def split_chunks(k, *sequences, dim=0):
    """An iterator of tuples of k-step slices (the last one may be shorter) of the given sequences (tensors) along
    dim; the arguments are checked at the call, not at the first chunk."""
    k, dim = as_integer("k", k), as_integer("dim", dim)
    if k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k}")
    if not sequences:
        raise TypeError("sequences: expected at least one tensor to split, got none")
    for i, s in enumerate(sequences):
        if not hasattr(s, "narrow"):
            raise TypeError(f"sequences[{i}]: expected a torch.Tensor, got {type(s).__name__}")
        if not -s.dim() <= dim < s.dim():
            raise ValueError(f"dim: expected a dimension of sequences[{i}] (shape {tuple(s.shape)}), got {dim}")
    T = sequences[0].shape[dim]
    for s in sequences[1:]:
        if s.shape[dim] != T:
            raise ValueError(f"sequences: expected the same length {T} along dim {dim}, got {s.shape[dim]}")
    return (tuple(s.narrow(dim, t0, min(k, T - t0)) for s in sequences) for t0 in range(0, T, k))


def _default_forward(model, x, state, target):
    return model(x, state)


def truncated_bptt(model, chunks, loss_fn, *, state=None, optimizer=None, max_norm=None,
                   forward=_default_forward):
    """Run a recurrent model over a long sequence or an endless stream, k steps at a time.

    chunks: iterable of (x, target) pairs, e.g. split_chunks(k, x, targets) or a
    generator reading a stream. For each chunk: y, state = forward(model, x, state,
    target) (default model(x, state): torch.nn.RNN/LSTM/GRU, gpurnn.nn's and
    JordanRNN all take their state second); loss = loss_fn(y, target);
    loss.backward(); then clip the gradients of model.parameters() to max_norm (if
    given; a head outside the model, such as loss_fn's weights, is neither clipped nor
    counted in the norm) and, with an optimizer, step and zero them.
    The state is carried to the next chunk detached, so each chunk's graph is
    freed after its backward and memory does not grow with the stream.
    Without an optimizer the gradients accumulate over the chunks: with one chunk
    of all T steps and no max_norm they are exactly full BPTT.
    Yields ChunkResult(loss (detached), grad_norm (None unless max_norm), state).
    """
    try:
        chunks = iter(chunks)
    except TypeError:
        raise TypeError(f"chunks: expected an iterable of (x, target) pairs, got {type(chunks).__name__}") from None
    # (checked here, not when the first chunk runs: by then its backward has filled .grad)
    callables = [("loss_fn", loss_fn), ("forward", forward)] + [("model", model)] * (forward is _default_forward)
    for name, f in callables:
        if not callable(f):
            raise TypeError(f"{name}: expected a callable, got {type(f).__name__}")
    if optimizer is not None and not (callable(getattr(optimizer, "step", None))
                                      and callable(getattr(optimizer, "zero_grad", None))):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer (step, zero_grad) or None, "
                        f"got {type(optimizer).__name__}")
    if max_norm is not None:
        as_real("max_norm", max_norm)
        if not callable(getattr(model, "parameters", None)):
            raise TypeError(f"model: expected a torch module (max_norm clips its parameters' gradients), "
                            f"got {type(model).__name__}")
    return _truncated_bptt(model, chunks, loss_fn, state, optimizer, max_norm, forward)


def _truncated_bptt(model, chunks, loss_fn, state, optimizer, max_norm, forward):
    import torch

    params = None
    for i, chunk in enumerate(chunks):
        if not (isinstance(chunk, (tuple, list)) and len(chunk) == 2):
            got = f"a {type(chunk).__name__}" + (f" of {len(chunk)}" if isinstance(chunk, (tuple, list)) else "")
            raise ValueError(f"chunks: expected (x, target) pairs, got {got} at chunk {i}")
        x, target = chunk
        y, state = forward(model, x, state, target)
        loss = loss_fn(y, target)
        loss.backward()
        grad_norm = None
        if max_norm is not None:   # (torch's: a tensor, 0 where no parameter requires grad)
            params = params or [p for p in model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state = detach_state(state)
        yield ChunkResult(loss.detach(), grad_norm, state)
