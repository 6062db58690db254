"""The CPU layer's route (layer.py: the engine or torch's fused op, timed per layer shape) taken inside the custom
op gpurnn::layer, for torch.compile. A compiled graph holds the op, not run_layers, which picks the route in eager
mode (there the op runs the engine only); so under torch.compile the op picks it, at every call, as run_layers
would. Traced, torch's op would be unrolled over the steps, one graph per length. Without this, a compiled layer
ran the engine at shapes where torch's op is faster: a small two-layer LSTM language model (T=20, B=4, H=64)
trained at 3.0 ms a step compiled against 1.1 eager (AMD EPYC).

On torch's route the op runs torch's fused op with autograd on, and the layer's tape keeps that graph, from which
gpurnn::layer_backward takes the gradients it is asked for."""
import torch

from .. import cells
from ..slots import groups, pack
from . import layer


class TorchTape:
    """A layer that torch's op ran inside gpurnn::layer: its leaves (x, then each direction's states and weights,
    None where absent) and its outputs (y, then the final states, of each direction)."""

    def __init__(self, leaves, outs):
        self.leaves, self.outs = leaves, outs

    def backward(self, grads, x, cell, n_state, n_dirs, need_dx, need_weights):
        """gpurnn::layer_backward's outputs: dx, then the N_IN slots' gradients (empty where none is wanted; zeros
        where one is but no gradient reached the outputs, as the engine gives). grads: one per output, or None."""
        per_direction = [True] * n_state + [need_weights and n not in cells.no_grad(cell)
                                            for n in cells.WEIGHT_NAMES[cell]]
        wanted = [need_dx] + per_direction * n_dirs
        asked = [t for t, w in zip(self.leaves, wanted) if w and t is not None]
        pairs = [(o, g) for o, g in zip(self.outs, grads) if g is not None]
        found = (torch.autograd.grad([o for o, _ in pairs], asked, [g for _, g in pairs], retain_graph=True,
                                     allow_unused=True, materialize_grads=True) if pairs and asked else
                 [torch.zeros_like(t) for t in asked])
        found = iter(_own(found, [*grads, x]))
        dx, *out = [next(found) if w and t is not None else None for t, w in zip(self.leaves, wanted)]
        return (x.new_empty(0) if dx is None else dx,
                *[x.new_empty(0) if t is None else t for t in pack(out, cell, n_state, n_dirs)])


def mark(x, directions):
    """The op's option that has it take the route: "auto:" and which of x ("x"), the initial states ("h") and the
    weights ("w") need a gradient in the traced call (the op's kernel sees none that does; the route's shape class
    and timing must)."""
    parts = (("x", [x]), ("h", [s for state0, _, _ in directions for s in state0]),
             ("w", [w for _, weights, _ in directions for w in weights]))
    return "auto:" + "".join(k for k, ts in parts if any(t is not None and t.requires_grad for t in ts))


def forward(cell, x, tensors, n_state, reverses, batch_sizes, opts, for_backward, run_engine, wanted):
    """(tape, outputs) of the layer on torch's op where its timed route is torch's (tape: a TorchTape, or None if
    not for_backward), else None: the engine runs it. run_engine(x, directions, batch_sizes): the layer on the
    engine, for the timing; wanted: `mark`'s letters."""
    # autograd, which a custom op's kernel runs without (its dispatch key excluded), for the timing's backward and
    # torch's op's graph
    with torch._C._SetExcludeDispatchKeyGuard(torch._C.DispatchKey.AutogradFunctionality, False):
        return _forward(cell, x, tensors, n_state, reverses, batch_sizes, opts, for_backward, run_engine, wanted)


def _forward(cell, x, tensors, n_state, reverses, batch_sizes, opts, for_backward, run_engine, wanted):
    def directions_of(ts):
        return [(tuple(g[:n_state]), list(g[n_state:]), r == "r") for g, r in zip(groups(ts, len(reverses)), reverses)]

    def as_traced(t, key):   # requires_grad as in the traced call
        return None if t is None else t.detach().requires_grad_(for_backward and key in wanted)
    per_direction = len(tensors) // len(reverses)
    directions = directions_of([as_traced(t, "h" if i % per_direction < n_state else "w")
                                for i, t in enumerate(tensors)])
    if not layer.applies(cell, x, directions, opts) or layer.route(
            cell, as_traced(x, "x"), directions, opts, for_backward, run_engine, batch_sizes) != "torch":
        return None
    if not for_backward:
        with torch.no_grad():
            return None, _own([t for out in layer.torch_layers(cell, x, directions, opts, batch_sizes) for t in out])
    leaves = [None if t is None else t.detach().requires_grad_() for t in [x, *tensors]]
    with torch.enable_grad():
        outs = [t for out in layer.torch_layers(cell, leaves[0], directions_of(leaves[1:]), opts, batch_sizes)
                for t in out]
    # torch's LSTM op (oneDNN's) saves y for its backward: the y returned is another tensor, so that an in-place
    # change of it cannot reach the tape's gradients unseen
    return TorchTape(leaves, outs), _own(outs, outs[::1 + n_state] if cell == "lstm" else ())


def _own(outs, inputs=()):
    """Outputs as a custom op returns them (its fake kernel says so): contiguous, none sharing memory with another or
    with an input (y is the directions' halves of one tensor, their final states rows of another; views, though not
    always marked as such in an op's kernel; a gradient may be one handed in)."""
    seen, own = {t.untyped_storage().data_ptr() for t in inputs if t is not None}, []
    for t in outs:
        memory, t = t.untyped_storage().data_ptr(), t.detach()
        own.append(t.clone(memory_format=torch.contiguous_format) if memory in seen or not t.is_contiguous() else t)
        seen.add(memory)
    return own
