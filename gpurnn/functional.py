"""The plain-array API for NumPy and CuPy users (no torch needed).

    y, state, tape = forward("lstm", x, {"w_ih": ..., "w_hh": ..., "b_ih": ..., "b_hh": ...})
    dx, dstate0, grads = backward(tape, dy, (dh_T, dc_T))

x: (T, B, I) in time-major order. Weights follow torch's names and shapes
(see WEIGHTS); optional ones may be left out. state0 defaults to zeros:
(h0,) for rnn and gru, (h0, c0) for lstm, (s0,) for jordan.
"""
import numpy as np

from . import backends, cells, engine
from .arrays import array_module, array_scope, check_array
from .checks import check_choice, check_floating, check_rank, check_same_dtype, check_shape, check_steps
from .cells import NONLINEARITIES, OUTPUT_ACTIVATIONS

CELLS = {"rnn": "elman", "lstm": "lstm", "gru": "gru", "jordan": "jordan"}
OPTIONAL = ("b_ih", "b_hh", "w_hr", "b_h", "b_o")


def _expected_shapes(cell, w, input_size):
    """Shapes every weight and state must have, derived from the recurrent weight."""
    if cell == "jordan":
        H, O = w["w_sh"].shape
        shapes = {"w_ih": (H, input_size), "w_sh": (H, O), "b_h": (H,), "w_ho": (O, H), "b_o": (O,),
                  "decay": (O,)}
        return shapes, [("s0", O)]
    G = cells.get(cell).GATES
    H = w["w_hh"].shape[0] // G
    P = w["w_hh"].shape[1] if w.get("w_hr") is not None else H   # (a w_hr of another shape is the one named)
    shapes = {"w_ih": (G * H, input_size), "w_hh": (G * H, P), "b_ih": (G * H,), "b_hh": (G * H,)}
    if cell == "lstm":
        shapes["w_hr"] = (P, H)
        return shapes, [("h0", P), ("c0", H)]
    return shapes, [("h0", H)]


def _check_batch_sizes(batch_sizes, T, B):
    sizes = np.asarray(batch_sizes) if not hasattr(batch_sizes, "get") else None   # None: a CuPy array
    if sizes is None or sizes.dtype.kind not in "iu" or sizes.ndim != 1:
        raise TypeError(f"batch_sizes: expected a 1-D sequence of integers, got {batch_sizes!r}")
    sizes = [int(n) for n in batch_sizes]
    if len(sizes) != T or (T and (sizes[0] != B or sizes[-1] < 1 or
                                  any(b > a for a, b in zip(sizes, sizes[1:])))):
        raise ValueError(f"batch_sizes: expected {T} non-increasing counts from {B} down to >= 1, got {sizes}")
    return sizes


def forward(cell, x, weights, state0=None, *, nonlinearity="tanh", output_activation="identity",
            teacher=None, batch_sizes=None, reverse=False, backend="auto", for_backward=True):
    """Run one layer over x; returns (y (T, B, ·), final state tuple, tape for backward).

    cell: "rnn" (Elman), "lstm", "gru" or "jordan". batch_sizes: active rows per
    step for variable lengths (rows sorted by length, longest first). reverse:
    process t = T-1..0. teacher (jordan): (T, B, O) values replacing y_t in the
    state update. for_backward=False: inference only, backward(tape) will raise
    (the LSTM loop then skips the work only backward needs). The tape refers to x and
    the weights without copying them: change them only after the last backward.
    """
    check_choice("cell", cell, tuple(CELLS))
    cell_name, cell = cell, CELLS[cell]   # messages name the cell as the caller did ("rnn", not the engine's "elman")
    xp = array_module("x", x, "gpurnn.nn's modules take tensors")
    check_rank("x", x.shape, (3,))
    if x.dtype.kind == "f" and not x.dtype.isnative:
        raise TypeError(f"x: expected floats in this machine's byte order, got {x.dtype.str} (byte-swapped; "
                        f"x.astype(x.dtype.newbyteorder('=')) converts)")
    check_floating("x", x.dtype, x.dtype in (np.float16, np.float32, np.float64))   # no longdouble in the GEMMs
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    if nonlinearity != "tanh" and cell not in ("elman", "jordan"):
        raise ValueError(f"nonlinearity: only the rnn and jordan cells take one, got {nonlinearity!r} "
                         f"for cell {cell_name!r}")
    if output_activation != "identity" and cell != "jordan":
        raise ValueError(f"output_activation: only the jordan cell takes one, got {output_activation!r} "
                         f"for cell {cell_name!r}")
    names = cells.WEIGHT_NAMES[cell]
    if not isinstance(weights, dict):
        raise TypeError(f"weights: expected a dict of arrays by name {names}, got {type(weights).__name__}")
    unknown = set(weights) - set(names)
    if unknown:
        raise ValueError(f"weights: expected keys among {names}, got unknown {sorted(unknown, key=repr)}")
    missing = [n for n in names if n not in OPTIONAL and weights.get(n) is None]
    if missing:
        raise ValueError(f"weights: missing required {missing} for cell {cell_name!r}")
    w = {n: weights.get(n) for n in names}
    if "b_ih" in w and (w["b_ih"] is None) != (w["b_hh"] is None):   # the cells add both biases or neither
        given = "b_ih" if w["b_hh"] is None else "b_hh"
        raise ValueError(f"weights: expected both 'b_ih' and 'b_hh' or neither, got only {given!r} "
                         "(give zeros for the other)")
    for name, a in w.items():
        if a is not None:
            check_array(f"weights[{name!r}]", a, xp, "x")
    T, B, I = x.shape
    check_steps(T)
    if I == 0:   # (torch.nn's modules refuse input_size 0 too)
        raise ValueError(f"x: expected at least 1 input feature (last dim), got shape {tuple(x.shape)}")
    recurrent = "w_sh" if cell == "jordan" else "w_hh"
    if w[recurrent].ndim != 2 or 0 in w[recurrent].shape or w[recurrent].shape[0] % cells.get(cell).GATES:
        raise ValueError(f"weights[{recurrent!r}]: expected a 2-D array with a nonzero multiple of "
                         f"{cells.get(cell).GATES} rows and at least one column, got shape {tuple(w[recurrent].shape)}")
    for name in ("w_ih", "w_hr"):   # (read for the expected shapes)
        if w.get(name) is not None:
            check_rank(f"weights[{name!r}]", w[name].shape, (2,))
    if w["w_ih"].shape[-1] != I:
        raise ValueError(f"x: expected {w['w_ih'].shape[-1]} input features (last dim), as "
                         f"weights['w_ih'] has shape {tuple(w['w_ih'].shape)}, got shape {tuple(x.shape)}")
    shapes, state_specs = _expected_shapes(cell, w, I)
    for name, a in w.items():
        if a is not None:
            check_same_dtype(f"weights[{name!r}]", a.dtype, "x", x.dtype)
            check_shape(f"weights[{name!r}]", a.shape, shapes[name])
    if cell == "jordan" and not bool(((w["decay"] >= 0) & (w["decay"] <= 1)).all()):   # NaN fails too
        raise ValueError(f"weights['decay']: expected values in [0, 1], got values in "
                         f"[{float(w['decay'].min())}, {float(w['decay'].max())}]")
    if state0 is None:
        state0 = tuple(xp.zeros((B, size), x.dtype) for _, size in state_specs)
    else:
        state0 = _states("state0", state0, len(state_specs), f"({', '.join(n for n, _ in state_specs)})")
        for s, (name, size) in zip(state0, state_specs):
            check_array(name, s, xp, "x")
            check_same_dtype(name, s.dtype, "x", x.dtype)
            check_shape(name, s.shape, (B, size))
    if teacher is not None:
        if cell != "jordan":
            raise ValueError(f"teacher: only the jordan cell takes teacher forcing, got cell {cell_name!r}")
        check_array("teacher", teacher, xp, "x")
        check_same_dtype("teacher", teacher.dtype, "x", x.dtype)
        check_shape("teacher", teacher.shape, (T, B, shapes["w_ho"][0]))
    if batch_sizes is not None:
        batch_sizes = _check_batch_sizes(batch_sizes, T, B)
    for flag, value in (("reverse", reverse), ("for_backward", for_backward)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{flag}: expected True or False, got {value!r}")
    name = backends.resolve(backend, on_gpu=xp is not np)
    opts = {"nonlinearity": nonlinearity, "for_backward": bool(for_backward)}
    if cell == "jordan":
        opts.update(output_activation=output_activation, teacher=teacher)
    # NumPy's floating-point warnings off, as under the torch front end: inf and NaN propagate as in torch.nn (which
    # warns of none), and padded rows may hold anything
    with array_scope(x), np.errstate(all="ignore"):
        return engine.forward(cell, x, state0, w, batch_sizes=batch_sizes, reverse=bool(reverse),
                              backend=name, **opts)


def _states(name, given, n, what):
    """A state argument as a tuple of n entries: a tuple or list of them, or (for one) the array itself."""
    if not isinstance(given, (tuple, list)):
        if n == 1:
            return (given,)
        raise TypeError(f"{name}: expected a tuple of {n} arrays {what}, got {type(given).__name__}")
    if len(given) != n:
        raise ValueError(f"{name}: expected a tuple of {n} arrays {what}, got {len(given)}")
    return tuple(given)


def backward(tape, dy=None, dstate=None):
    """Gradients of a forward call: dy (T, B, ·) and dstate (tuple like the final state), each optional.

    Returns (dx, dstate0 tuple, {weight name: grad}); absent biases get None; Jordan's decay
    is a fixed buffer and has no gradient.
    """
    if not isinstance(tape, engine.Saved):
        raise TypeError(f"tape: expected the tape gpurnn.functional.forward returned, got {type(tape).__name__}")
    n_state = len(tape.state_shapes)
    dstate = (None,) * n_state if dstate is None else _states("dstate", dstate, n_state, "like the final state")
    xp = tape.cell.xp
    for i, (d, shape) in enumerate(zip(dstate, tape.state_shapes)):
        if d is not None:
            check_array(f"dstate[{i}]", d, xp, "x")
            check_same_dtype(f"dstate[{i}]", d.dtype, "the forward's x", tape.dtype)
            check_shape(f"dstate[{i}]", d.shape, shape)
    if dy is not None:
        check_array("dy", dy, xp, "x")
        check_same_dtype("dy", dy.dtype, "the forward's x", tape.dtype)
        check_shape("dy", dy.shape, tape.cell.outputs().shape)
    with array_scope(tape.cell.x), np.errstate(all="ignore"):   # (as in forward)
        return engine.backward(tape, dy, dstate)
