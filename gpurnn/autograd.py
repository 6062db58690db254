"""The autograd side of the torch modules: one layer (one or both directions) as a
torch.autograd.Function over the engine, and run_layers/run_layer, which the modules in
nn.py compose into stacks. Double backward reruns the layer in torch ops (torch_loop.py).
"""
import torch

from . import backends, cells, engine, torch_loop
from .arrays import device_scope, tensor_to_xp, xp_to_tensor


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
        # autocast off: the engine's GEMMs through torch (arrays.torch_matmul) must keep the dtype
        with device_scope(x.device), torch.autocast(x.device.type, enabled=False):
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
        with device_scope(ctx.device), torch.autocast(ctx.device.type, enabled=False):
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
