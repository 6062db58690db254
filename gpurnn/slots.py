"""The fixed signature of the custom ops gpurnn::layer and gpurnn::layer_backward (autograd.py): the tensors of
one or two directions in slots, and the layer's options as one string."""
from . import cells

# The ops take and return a fixed number of tensors (torch 2.13's custom-op autograd mishandles
# None inside a tensor list): per direction (2 at most) SLOT = 2 states + 6 weights, None where unused.
# `reverses` has a letter a direction: "f" runs forward in time, "r" in reverse.
DIRS, STATES, WEIGHTS = 2, 2, 6
SLOT = STATES + WEIGHTS
N_IN, N_OUT = DIRS * SLOT, DIRS * (1 + STATES)
OPTIONS = "Tensor? teacher, str cell, int n_state, str reverses, int[]? batch_sizes, str backend, str options"
SLOTS = ", ".join(f"Tensor? t{i}" for i in range(N_IN))


def groups(tensors, n_dirs):
    per = len(tensors) // n_dirs
    return [tensors[i * per:(i + 1) * per] for i in range(n_dirs)]


def pack(tensors, cell, n_state, n_dirs):
    """(*state0, *weights) of each direction -> the N_IN slots."""
    slots, n_w = [None] * N_IN, len(cells.WEIGHT_NAMES[cell])
    for d, g in enumerate(groups(tensors, n_dirs)):
        slots[d * SLOT:d * SLOT + n_state] = g[:n_state]
        slots[d * SLOT + STATES:d * SLOT + STATES + n_w] = g[n_state:]
    return slots


def unpack(slots, cell, n_state, n_dirs):
    """The inverse of pack."""
    n_w = len(cells.WEIGHT_NAMES[cell])
    return [t for d in range(n_dirs) for t in (*slots[d * SLOT:d * SLOT + n_state],
                                               *slots[d * SLOT + STATES:d * SLOT + STATES + n_w])]


def pack_outputs(outs, x, n_state):
    """[y, *state_T of each direction] -> N_OUT tensors, new empty ones where unused."""
    packed = []
    for d in range(DIRS):
        got = outs[d * (1 + n_state):(d + 1) * (1 + n_state)]
        packed += got + [x.new_empty(0) for _ in range(1 + STATES - len(got))]
    return packed


def unpack_outputs(packed, n_state, n_dirs):
    """The inverse of pack_outputs."""
    return [t for d in range(n_dirs) for t in packed[d * (1 + STATES):d * (1 + STATES) + 1 + n_state]]


def options_string(opts):
    """The layer's string options (nonlinearity, output_activation, gemm) as one string
    "key=value;...": custom ops take strings, and torch.compile traces this (not json)."""
    return ";".join(f"{k}={v}" for k, v in sorted(opts.items()) if v is not None)


def parse_options(options):
    return dict(item.split("=", 1) for item in options.split(";") if item)
