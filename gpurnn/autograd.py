"""The autograd side of the torch modules: one layer (one or both directions) as the custom
ops gpurnn::layer and gpurnn::layer_backward over the engine, and run_layers/run_layer, which
the modules of gpurnn.nn compose into stacks.

Custom ops (torch.library) with fake implementations let torch.compile(fullgraph=True) trace
through a layer without a graph break (torch.export records torch's own ops: recorded_for_torch);
their autograd registration serves eager autograd. Under torch.func transforms and forward-mode
AD, which custom ops do not support in torch 2.13, the layer runs as torch_loop's plain torch loop
instead (slower, exact).

The engine keeps what backward needs (its tape, engine.Saved) in NumPy/CuPy buffers that no
tensor can carry: the forward op files it under a key and returns the key as a small tensor,
the handle, which autograd saves for backward like any tensor; the tape is dropped when the
handle is freed. The handle lives on x's device, so a saved-tensor hook that moves saved tensors
off the GPU (torch.autograd.graph.save_on_cpu) or drops them (checkpointing) frees the tape too.
Where the tape is gone (a hook or a compiled graph copied the handle), backward reruns the engine's
forward first. Double backward (create_graph) reruns the layer in torch ops (torch_loop.py) instead,
so that the gradient is itself a graph.
"""
import itertools
import weakref

import numpy as np
import torch
from torch._subclasses.fake_tensor import is_fake

from . import backends, cells, checks, dynamo, engine, torch_loop
from .cpu import layer as cpu_layer, op_route, timed
from .arrays import device_scope, tensor_to_xp, xp_to_tensor
from .recording import recorded_for_torch, transformed
from .slots import (DIRS, N_IN, N_OUT, OPTIONS, SLOT, SLOTS, STATES, groups, options_string, pack,
                    pack_outputs, parse_options, unpack, unpack_outputs)

_TAPES = {}                 # handle value -> [engine.Saved of each direction]
_KEYS = itertools.count()
def _native(cell, tensors, n_state, n_dirs, backend):
    """Whether the engine takes the tensors themselves (the fused kernels: bfloat16 stays bfloat16 and
    the GEMMs run in torch, arrays.TorchArrays), else NumPy/CuPy views of them (the xp loop)."""
    return all(engine.fused(backend, dict(zip(cells.WEIGHT_NAMES[cell], g[n_state:])))
               for g in groups(tensors, n_dirs))


def _engine_forward(x, tensors, teacher, cell, n_state, reverses, batch_sizes, backend, options, for_backward):
    """[engine.Saved of each direction] (a cpu.op_route.TorchTape where torch's op ran the layer), [y, *state_T of
    each direction] as tensors."""
    opts = parse_options(options)
    route = opts.pop("layer", "")
    if route.startswith("auto:"):   # torch.compile's graph: the CPU layer's route is taken here (op_route)
        run_engine = lambda xs, ds, bs: _engine_layers(cell, xs, ds, backend, bs, opts, torch.is_grad_enabled())  # noqa
        routed = op_route.forward(cell, x, tensors, n_state, reverses, batch_sizes, opts, for_backward, run_engine,
                                  route[5:])
        if routed is not None:
            return routed
        if batch_sizes is None:   # (the engine runs it: torch's op, which warns as torch.nn's, did not)
            cpu_layer.warn_as_torch(x, cell == "lstm" and tensors[n_state + 4] is not None)
    native = _native(cell, tensors, n_state, len(reverses), backend)
    # autocast off: the engine's GEMMs through torch must keep the dtype; NumPy's floating-point warnings off,
    # as torch's ops give none (inf and NaN propagate as in torch.nn)
    with device_scope(x.device), torch.autocast(x.device.type, enabled=False), np.errstate(all="ignore"):
        to_xp = lambda t: None if t is None else tensor_to_xp(t, native)
        directions = [(tuple(map(to_xp, g[:n_state])), dict(zip(cells.WEIGHT_NAMES[cell], map(to_xp, g[n_state:]))),
                       reverse == "r") for g, reverse in zip(groups(tensors, len(reverses)), reverses)]
        results = engine.forward_directions(cell, to_xp(x), directions, batch_sizes=batch_sizes, backend=backend,
                                            for_backward=for_backward, teacher=to_xp(teacher), **opts)
        outs = [xp_to_tensor(a) for y, state, _ in results for a in (y, *state)]
    return [saved for _, _, saved in results], outs


@torch.library.custom_op("gpurnn::layer", mutates_args=(), schema=(
        f"(Tensor x, {SLOTS}, {OPTIONS}, bool for_backward) -> ({', '.join(['Tensor'] * (N_OUT + 1))})"))
def layer_op(x, *args):
    """(y, *state_T of each direction in N_OUT slots, handle): see run_layers."""
    slots, (teacher, cell, n_state, reverses, batch_sizes, backend, options, for_backward) = args[:N_IN], args[N_IN:]
    saved, outs = _engine_forward(x, unpack(slots, cell, n_state, len(reverses)), teacher, cell, n_state, reverses,
                                  batch_sizes, backend, options, for_backward)
    key = next(_KEYS)
    handle = torch.full((), key, dtype=torch.int64, device=x.device)   # a fill: no copy from the host
    handle.gpurnn_key = key   # read back without a device read, as long as this very tensor reaches backward
    if for_backward:
        _TAPES[key] = saved
        weakref.finalize(handle, _TAPES.pop, key, None)
    return (*pack_outputs(outs, x, n_state), handle)


@layer_op.register_fake
def _(x, *args):
    slots, (_, cell, n_state, reverses) = args[:N_IN], args[N_IN:N_IN + 4]
    outs = []
    # y_t has the size of the first state for every cell (h; Jordan's s and y are both O wide)
    for g in groups(unpack(slots, cell, n_state, len(reverses)), len(reverses)):
        outs += [x.new_empty(x.shape[:2] + g[0].shape[-1:])] + [s.new_empty(s.shape) for s in g[:n_state]]
    return (*pack_outputs(outs, x, n_state), x.new_empty((), dtype=torch.int64))


def _key(handle):
    """The key of the handle's tape: the attribute set where it was made; a copy (a saved-tensor hook's, a
    compiled graph's) holds it only as its value, which on a GPU is read back with a synchronisation."""
    key = getattr(handle, "gpurnn_key", None)
    return int(handle) if key is None else key


@torch.library.custom_op("gpurnn::layer_backward", mutates_args=(), schema=(
        f"(Tensor handle, {', '.join(f'Tensor? g{i}' for i in range(N_OUT))}, Tensor x, {SLOTS}, {OPTIONS}) -> "
        f"({', '.join(['Tensor'] * (1 + N_IN))})"))
def layer_backward_op(handle, *args):
    """(dx, then the gradient of each slot): an empty tensor where a slot is unused or a buffer."""
    grads, x, slots = args[:N_OUT], args[N_OUT], args[N_OUT + 1:N_OUT + 1 + N_IN]
    teacher, cell, n_state, reverses, batch_sizes, backend, options = args[N_OUT + 1 + N_IN:]
    options, need_dx, need_weights = _wanted(options)
    tensors = unpack(slots, cell, n_state, len(reverses))
    saved = _TAPES.get(_key(handle))
    if saved is None:   # a compiled graph copied the handle, or the tape is gone: rerun the forward
        saved, _ = _engine_forward(x, tensors, teacher, cell, n_state, reverses, batch_sizes, backend, options, True)
    grads, k = unpack_outputs(grads, n_state, len(reverses)), 1 + n_state
    if isinstance(saved, op_route.TorchTape):
        return saved.backward(grads, x, cell, n_state, len(reverses), need_dx, need_weights)
    to_xp = lambda t: None if t is None else tensor_to_xp(t.contiguous(), saved[0].fused)
    no_grad = cells.no_grad(cell)
    with device_scope(x.device), torch.autocast(x.device.type, enabled=False), np.errstate(all="ignore"):
        results = engine.backward_directions([(s, to_xp(grads[i * k]), tuple(map(to_xp, grads[i * k + 1:(i + 1) * k])))
                                              for i, s in enumerate(saved)], need_dx, need_weights)
        dxs, out = [x.new_empty(0) if dx is None else xp_to_tensor(dx) for dx, _, _ in results], []
        for (_, dstate0, grads_d), g in zip(results, groups(tensors, len(reverses))):
            out += [xp_to_tensor(d) for d in dstate0]
            out += [xp_to_tensor(grads_d[name]) if w is not None and name not in no_grad and need_weights else None
                    for name, w in zip(cells.WEIGHT_NAMES[cell], g[n_state:])]
    dx = dxs[0] if len(dxs) == 1 else dxs[0] + dxs[1]   # every direction reads x
    return (dx, *[x.new_empty(0) if t is None else t for t in pack(out, cell, n_state, len(reverses))])


def _wanted(options):
    """The layer's options without _backward's marks "dx=none" and "weights=none" (no gradient needs them: the
    tape skips their GEMMs), and whether dx and the weights' gradients are wanted."""
    opts = parse_options(options)
    dx, weights = opts.pop("dx", None) != "none", opts.pop("weights", None) != "none"
    return options_string(opts), dx, weights


@layer_backward_op.register_fake
def _(handle, *args):
    x, slots, cell, options = args[N_OUT], args[N_OUT + 1:N_OUT + 1 + N_IN], args[N_OUT + 2 + N_IN], args[-1]
    _, need_dx, need_weights = _wanted(options)
    no_grad = ([False] * STATES + [name in cells.no_grad(cell) or not need_weights for name in cells.WEIGHT_NAMES[cell]]
               + [False] * SLOT)[:SLOT]
    dx = x.new_empty(x.shape if need_dx else 0)
    return (dx, *[x.new_empty(0) if t is None or no_grad[i % SLOT] else t.new_empty(t.shape)
                  for i, t in enumerate(slots)])


def _setup_context(ctx, inputs, output):
    x, slots, (teacher, cell, n_state, reverses, batch_sizes, backend, options, _) = \
        inputs[0], inputs[1:1 + N_IN], inputs[1 + N_IN:]
    # What torch.nn's ops save is saved (torch's version counter then rejects the same in-place changes before
    # backward; saved-tensor hooks see them): the initial states; for its GRU, RNN and packed or projected LSTM, w_ih
    # where x needs a gradient (for dx), x where w_ih needs one (here also under saved-tensor hooks: through them a
    # checkpoint frees x, a copying hook keeps it as it was), no bias. The rest is kept here for the paths that rerun
    # the layer (double backward, a lost tape), which check that it has not changed. Under
    # torch.autograd.graph.allow_mutation_on_saved_tensors all are saved (autograd then keeps a copy of one changed in
    # place, an optimizer step before backward, which the rerun needs), as oneDNN's LSTM (saves_y) saves all.
    inputs = [x, *slots]
    names = ["x", *([None] * STATES + list(cells.WEIGHT_NAMES[cell]) + [None] * SLOT)[:SLOT] * DIRS]
    saves_y = saves_output(x, cell, batch_sizes, "w_hr" in names and inputs[names.index("w_hr")] is not None)
    keep_all = torch.autograd.graph._allow_mutation_on_saved_tensors_enabled or saves_y
    w_ih_grad = any(t is not None and t.requires_grad for t, n in zip(inputs, names) if n == "w_ih")
    x_unread = not w_ih_grad and not timed.saved_tensor_hooks()
    unread = () if keep_all else cells.BIASES + ("w_ih",) * (not x.requires_grad) + ("x",) * x_unread
    ctx.saved_at = [i for i, (t, n) in enumerate(zip(inputs, names)) if t is not None and n not in unread]
    ys = [output[d * (1 + STATES)] for d in range(len(reverses))] if saves_y else []
    read = [inputs[i] for i in ctx.saved_at]
    ctx.save_for_backward(output[-1], *read, *ys)
    # what the tape reads (see _backward), as the tensors that own the memory (x may be a view the module made; a
    # view shares its base's version)
    ctx.read = [(_reference(t if t._base is None else t._base), _version(t)) for t in read]
    ctx.unsaved = {i: (t, _version(t)) for i, t in enumerate(inputs) if t is not None and i not in ctx.saved_at}
    ctx.args = (teacher, cell, n_state, reverses, batch_sizes, backend, options)
    ctx.key = getattr(output[-1], "gpurnn_key", None)   # the tape this forward made
    ctx.set_materialize_grads(False)   # an unused output's gradient is None (see _unreached)


def _version(t):
    """t's version counter; None for an inference tensor, which has none (autograd refuses to save it)."""
    return None if t.is_inference() else t._version


def _reference(t):
    """A weak reference (saved-tensor hooks may offload x), but to a parameter: one stops torch.utils.swap_tensors
    (module.double() under torch.__future__.set_swap_module_params_on_conversion) while the graph lives."""
    return (lambda: t) if isinstance(t, torch.nn.Parameter) else weakref.ref(t)


def saves_output(x, cell, batch_sizes, projected):
    """Whether torch.nn's op for this layer saves its output y for backward (then changing y in place is its error
    too): oneDNN's CPU LSTM (float32, bfloat16 where it runs it; not projected, nor packed unless all lengths equal
    where this torch runs those on it)."""
    return (cell == "lstm" and x.device.type == "cpu" and x.numel() > 0 and not projected
            and torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
            and (x.dtype == torch.float32
                 or x.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())
            and (batch_sizes is None or len(set(batch_sizes)) == 1 and cpu_layer.onednn_runs_equal_lengths()))


def _inputs(ctx):
    """(handle, [x, the N_IN slots]) for backward: autograd's saved tensors, unpacked once (a saved-tensor hook may
    allow one unpack: a checkpoint's, an offloading store's), and the tensors kept outside them."""
    handle, *saved = ctx.saved_tensors   # raises if x, a weight or a saved y was changed in place since forward
    inputs = [None] * (1 + N_IN)
    for i, t in zip(ctx.saved_at, saved):
        inputs[i] = t
    for i, (t, _) in ctx.unsaved.items():
        inputs[i] = t
    return handle, inputs


def _check_unsaved(ctx):
    """Before the layer reruns: the tensors kept outside autograd's saved tensors must not have changed since
    forward."""
    for t, version in ctx.unsaved.values():
        if version is not None and t._version != version:   # (None: an inference tensor)
            raise RuntimeError("one of the variables needed for gradient computation has been modified by "
                               f"an inplace operation: a tensor of shape {tuple(t.shape)} is at version "
                               f"{t._version}; expected version {version} instead (double backward, or a "
                               "backward whose saved state was copied by a saved-tensor hook)")


def _check_unchanged(tensors):
    """Refuses these tensors, which backward would read changed in place since forward (see _drop_stale_tape)."""
    if tensors:
        raise RuntimeError("one of the variables needed for gradient computation has been modified by an inplace "
                           f"operation: a tensor of shape {tuple(tensors[0].shape)} is at version "
                           f"{tensors[0]._version}, changed since forward (a saved-tensor hook handed it back as "
                           "changed, where gpurnn's saved state holds it as it was)")


def _drop_stale_tape(ctx, key, traced, read):
    """For the tensors backward reads (`read`, unpacked) changed in place since forward (a hook or mode bypassed
    autograd's check). The tape reads x and the weights through zero-copy views (the initial states are copied):
    where unpacking gave a copy of the original (allow_mutation_on_saved_tensors), it is dropped and the layer reruns
    on the copies. Where it gave the changed tensor itself (save_on_cpu on CPU tensors), a changed weight leaves the
    tape standing, as torch.nn's op keeps its workspace; a changed input (torch.nn's weight gradient reads it changed,
    the tape may hold it as it was) and a rerun that would read a change are refused. A checkpoint's recomputation
    made its tape (another key) from the changes."""
    live_changed = []
    for i, t, (ref, version) in zip(ctx.saved_at, read, ctx.read):   # (i: 0 for x, 1 + its slot for the others)
        live = ref()
        if live is not None and live._version != version:
            if t.untyped_storage().data_ptr() == live.untyped_storage().data_ptr():   # not a copy
                live_changed.append((i, live))
            elif i == 0 or (i - 1) % SLOT >= STATES:   # (not an initial state)
                _TAPES.pop(key, None)
    rerun = not traced and key not in _TAPES
    if rerun:
        _check_unsaved(ctx)
    _check_unchanged([live for i, live in live_changed if rerun or i == 0 and key == ctx.key])


def _backward(ctx, *grads):
    handle, inputs = _inputs(ctx)
    x, slots = inputs[0], inputs[1:]
    if torch.is_grad_enabled():     # create_graph: the gradient must itself be differentiable
        _check_unsaved(ctx)
        found = _differentiable_backward(ctx, x, slots, grads[:-1])
    else:
        traced = torch.compiler.is_compiling() or is_fake(handle)   # a traced backward has no tape to find
        key = None if traced else _key(handle)
        _drop_stale_tape(ctx, key, traced, [inputs[i] for i in ctx.saved_at])
        # as torch's ops: no dx, no weight gradients (a frozen layer) where no gradient needs them
        needs = ctx.needs_input_grad
        marks = {"dx": "none"} if not needs[0] else {}
        if not any(needs[1 + i] for i in range(N_IN) if i % SLOT >= STATES):
            marks["weights"] = "none"
        args = (*ctx.args[:-1], options_string({**parse_options(ctx.args[-1]), **marks})) if marks else ctx.args
        found = torch.ops.gpurnn.layer_backward(handle, *grads[:-1], x, *slots, *args)
        found = [None if t is None or g.numel() == 0 and t.numel() else g for t, g in zip(inputs, found)]
    for i in _unreached(x, ctx, grads):
        found[i] = None
    return (*found, *[None] * (len(ctx.args) + 1))


def _unreached(x, ctx, grads):
    """Inputs whose gradient torch.nn leaves None because no used output depends on them: an LSTM
    projection W_hr at T = 1 reaches only y and h_T (c_1 does not depend on h_1)."""
    if ctx.args[1] != "lstm" or x.shape[0] != 1:
        return []
    w_hr = STATES + cells.WEIGHT_NAMES["lstm"].index("w_hr")
    return [1 + d * SLOT + w_hr for d in range(len(ctx.args[3]))
            if grads[d * (1 + STATES)] is None and grads[d * (1 + STATES) + 1] is None]


def _differentiable_backward(ctx, x, slots, grads):
    """The same gradients as a graph: torch.autograd.grad, with create_graph, of the layer rerun
    in torch ops on the inputs themselves."""
    teacher, cell, n_state, reverses, batch_sizes, _, options = ctx.args
    tensors = unpack(slots, cell, n_state, len(reverses))
    outs = []
    for g, reverse in zip(groups(tensors, len(reverses)), reverses):
        outs += torch_loop.layer(cell, x, g[:n_state], g[n_state:], reverse=reverse == "r",
                                 batch_sizes=batch_sizes, teacher=teacher, **parse_options(options))
    pairs = [(o, g) for o, g in zip(outs, unpack_outputs(grads, n_state, len(reverses)))
             if g is not None and o.requires_grad]   # (not: no graph, as a Jordan state under a fixed teacher)
    inputs = [x, *slots]
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    if not pairs or not wanted:
        return [None] * len(inputs)
    found = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    out = [None] * len(inputs)
    for i, g in zip(wanted, found):
        out[i] = g
    return out


layer_op.register_autograd(_backward, setup_context=_setup_context)


dynamo.loaded_before_use(layer_op)
dynamo.loaded_before_use(layer_backward_op)


def run_layers(cell, x, directions, *, backend="auto", batch_sizes=None, **opts):
    """x (T, B, I) tensor and [(state0, weights, reverse)] -> [(y, *state_T)] of each direction,
    differentiable. A bidirectional layer's directions go in one call: under "triton" one kernel
    launch runs both.

    bfloat16 data stays bfloat16 on the Triton kernels (which take the tensors themselves); the
    xp loops (NumPy, CuPy, and an LSTM projection) carry it in float32 buffers (NumPy and CuPy have none).
    """
    name = backends.resolve(backend, x.is_cuda)
    tensors = [t for state0, weights, _ in directions for t in (*state0, *weights)]
    compiling = torch.compiler.is_compiling()
    names = cells.WEIGHT_NAMES[cell]
    data = [opts.get("teacher")] + [weights[names.index(n)] for _, weights, _ in directions for n in cells.no_grad(cell)]
    if (recorded_for_torch(x) or transformed()
            or torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in data)):
        # Under torch.func (grad, jacrev, vmap, ...) and forward-mode AD: torch 2.13's custom ops support neither, so
        # the layer runs as the plain torch loop, which both understand; so does a program recorded for TorchScript,
        # torch.export or ONNX, and a Jordan teacher or decay that requires grad (the engine has no gradient for them).
        return _torch_loop_layers(cell, x, directions, batch_sizes, opts)
    projected = cell == "lstm" and directions[0][1][4] is not None
    if name == "numpy" and batch_sizes is None and not compiling:
        cpu_layer.warn_as_torch(x, projected)
    dtype = x.dtype
    for_backward = (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in [x, *tensors])
                    and (compiling or not torch.is_inference_mode_enabled()))   # (records nothing; dynamo cannot ask)
    upcast = torch.bfloat16 in (x.dtype, *(t.dtype for t in tensors if t is not None)) and not _native(
        cell, tensors, len(directions[0][0]), len(directions), name)

    def float32_layers(xs, ds, bs):   # (bfloat16 through the xp loops: results rounded back)
        up = lambda t: None if t is None else t.float()   # noqa: E731
        teacher = {} if opts.get("teacher") is None else {"teacher": opts["teacher"].float()}
        outs = run_layers(cell, xs.float(), [([up(s) for s in state0], [up(w) for w in weights], reverse)
                                             for state0, weights, reverse in ds],
                          backend=name, batch_sizes=bs, **dict(opts, **teacher))
        outs = [tuple(t.to(dtype) for t in out) for out in outs]   # saved as torch.nn's op saves them, not the copies
        return torch_loop.saved_as_torch(outs, cell, ds, saves_output(xs, cell, bs, projected), xs)
    if name == "numpy" and x.shape[0] == 1 and not compiling and dtype != torch.float16 and not upcast:
        # One step (autoregressive generation, a decoder stepped by hand): the engine's fixed cost per call
        # (custom op dispatch, array views, buffers, its tape) is several times the step itself, and torch's
        # fused op's too, so it runs as the torch loop, with gradient or without: the same bits either way, as
        # torch.nn gives (profiling/results/cpu/single_step_intel_xeon.md).
        if for_backward:   # as torch's op, which saves every input (the loop's gradients need fewer)
            checks.check_savable([x, *tensors])
        outs = _torch_loop_layers(cell, x, directions, batch_sizes, opts)
        saves = for_backward and saves_output(x, cell, batch_sizes, projected)   # (as the engine's forward)
        return torch_loop.saved_as_torch(outs, cell, directions, True, x) if saves else outs
    # the engine (bfloat16: in float32) or torch's fused op (bfloat16: oneDNN's, on a CPU with bfloat16 instructions
    # half float32's time on an AMD EPYC), timed per layer shape
    run_engine = float32_layers if upcast else (
        lambda xs, ds, bs: _engine_layers(cell, xs, ds, name, bs, opts, torch.is_grad_enabled()))
    if (name == "numpy" and x.shape[0] > 1 and not compiling and cpu_layer.applies(cell, x, directions, opts)
            and cpu_layer.route(cell, x, directions, opts, for_backward, run_engine, batch_sizes) == "torch"):
        return cpu_layer.torch_layers(cell, x, directions, opts, batch_sizes)
    return float32_layers(x, directions, batch_sizes) if upcast else _engine_layers(
        cell, x, directions, name, batch_sizes, opts, for_backward)


def _engine_layers(cell, x, directions, name, batch_sizes, opts, for_backward):
    """run_layers on the engine: the custom op gpurnn::layer."""
    tensors = [t for state0, weights, _ in directions for t in (*state0, *weights)]
    if name == "numpy":   # torch's or NumPy's BLAS, timed per layer shape (gpurnn/cpu/gemm.py); compiled, the
        # layer's route is taken in the op (cpu/op_route.py)
        opts = dict(opts, gemm="auto", layer=op_route.mark(x, directions) if torch.compiler.is_compiling() else None)
    teacher = opts.pop("teacher", None)
    n_state, n_dirs = len(directions[0][0]), len(directions)
    packed = torch.ops.gpurnn.layer(x, *pack(tensors, cell, n_state, n_dirs), teacher, cell, n_state,
                                    "".join("r" if r else "f" for _, _, r in directions), batch_sizes, name,
                                    options_string(opts), for_backward)
    flat, k = unpack_outputs(packed[:-1], n_state, n_dirs), 1 + n_state
    return [tuple(flat[i * k:(i + 1) * k]) for i in range(n_dirs)]


def _torch_loop_layers(cell, x, directions, batch_sizes, opts):
    """[(y, *state_T)] of each direction as the plain torch loop (torch_loop.py)."""
    return [torch_loop.layer(cell, x, state0, weights, reverse=reverse, batch_sizes=batch_sizes, **opts)
            for state0, weights, reverse in directions]


def run_layer(cell, x, state0, weights, *, backend="auto", batch_sizes=None, reverse=False, **opts):
    """x (T, B, I) tensor -> (y, *state_T), differentiable: run_layers for one direction."""
    return run_layers(cell, x, [(state0, weights, reverse)], backend=backend, batch_sizes=batch_sizes,
                      **opts)[0]
