"""The CPU route of a whole layer under the torch front end: gpurnn's engine or torch's fused op.

torch's own RNN/LSTM/GRU ops fuse each step's GEMM with its pointwise work on the CPU
(oneDNN's LSTM, for one); the engine runs one GEMM call and one pointwise call per step
from Python. Which is faster depends on the cell and the machine (Intel Xeon, B=32 T=128
H=128: the engine's GRU took 0.72x torch's time, its LSTM 1.5x). So the first call of each
layer shape class (cell, T up to TIME_STEPS or longer, B, I rounded up to powers of two, H, directions,
whether a backward follows and wants dx, dtype, packed or not) times both on copies of its first TIME_STEPS
steps, forward and, where a backward follows, backward, and keeps the faster for the process and later ones
(stored.py) (torch's op unless it takes over 1.05 times the engine's: `route`). Where every layer of a module's
call has its route fixed to torch's op, the module runs torch.nn's own forward (`stack_on_torch`).
torch's op computes torch.nn's own function, so both routes give the same results to float
rounding.

Where torch's op applies: Elman (tanh, relu), LSTM (projection included) and GRU; float32, float64 and
bfloat16 (whose engine route computes in float32); one direction or a (forward, reverse) pair; padded or packed
input (torch's packed op on the packed rows); all biases present or all absent. Jordan, float16 and the rest stay
on the engine. GPURNN_CPU_LAYER=engine|torch
forces a route ("auto", the default, times them; torch's op under torch.use_deterministic_algorithms).
"""
import dis
import functools
import statistics
import time

import torch
from torch._subclasses import fake_tensor
from torch.utils import _python_dispatch as python_dispatch

from .. import backends, dynamo
from ..arrays import packed_index
from . import timed
_OPS = {"lstm": torch._VF.lstm, "gru": torch._VF.gru}
REPEATS = 3
CHEAP = 0.01   # seconds: a timing round under this takes 3 * REPEATS samples (short runs are the noisiest)
LOSER = 2.0   # a route over this many times slower than another in the first two timed rounds is timed no further
TIME_STEPS = 32   # the timing runs on the first steps only, so that it stays cheap
HORIZON = 128     # longer calls (one class): the routes' times predicted at this length decide (_time)
TIE = 0.05   # torch's op wins a timing within this fraction of the engine's
_chosen = timed.Decisions("layer", ("engine", "torch"))   # layer shape class -> (route, {route: median seconds})
_warned = set()   # (dtype, grad mode, oneDNN on) where torch's op was asked for its projection warning (warn_as_torch)
_last_forward = {}   # (layer shape class, weights' address) -> the route its last forward outside a backward took
_last_checkpointed = {}   # the same for forwards under the caller's saved-tensor hooks (see _remember)
LAST_FORWARDS = 1024


def forced():
    """The route GPURNN_CPU_LAYER forces, or None for "auto"."""
    value = backends.env("GPURNN_CPU_LAYER", "auto")
    if value not in ("auto", "engine", "torch"):
        raise ValueError(f"GPURNN_CPU_LAYER: expected 'auto', 'engine' or 'torch', got {value!r}")
    return None if value == "auto" else value


def applies(cell, x, directions, opts):
    """Whether torch's fused op computes this layer (padded or packed)."""
    if cell not in ("elman", "lstm", "gru") or opts.get("teacher") is not None:
        return False
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16) or x.shape[0] == 0 or x.shape[1] == 0:
        return False
    if [r for _, _, r in directions] not in ([False], [False, True]):
        return False
    biases = [w is None for _, weights, _ in directions for w in weights[2:4]]
    tensors = [t for state0, weights, _ in directions for t in (*state0, *weights) if t is not None]
    return len(set(biases)) == 1 and all(t.dtype == x.dtype and t.device == x.device for t in tensors)


def torch_layers(cell, x, directions, opts, batch_sizes=None):
    """[(y, *state_T)] of each direction through torch's fused op (see `applies`); with batch_sizes, on x packed
    (x and y padded, as the engine's: y zero past each sequence's end)."""
    n_dirs = len(directions)
    params = []
    for _, weights, _ in directions:
        w_ih, w_hh, b_ih, b_hh = weights[:4]
        params += [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
        if cell == "lstm" and weights[4] is not None:
            params.append(weights[4])
    has_biases = directions[0][1][2] is not None
    # one direction: a view of the caller's state, whose in-place change before backward torch's op then
    # rejects, as in torch.nn (a stack would copy it)
    states = [torch.stack([state0[k] for state0, _, _ in directions]) if n_dirs == 2 else directions[0][0][k][None]
              for k in range(len(directions[0][0]))]
    args = (has_biases, 1, 0.0, torch.is_grad_enabled(), n_dirs == 2) + ((False,) if batch_sizes is None else ())
    data = x
    if batch_sizes is not None:   # torch's packed op: (data, batch_sizes, hx, params, ...)
        rows = packed_index(batch_sizes, x.shape[1])
        data = (x.reshape(-1, x.shape[-1]).index_select(0, rows), torch.tensor(batch_sizes, dtype=torch.int64))
    data = data if isinstance(data, tuple) else (data,)
    if cell == "lstm":
        y, h, c = _lstm_from_torch_nns_line()(*data, tuple(states), params, *args)
        finals = [(h[d], c[d]) for d in range(n_dirs)]
    else:
        op = _OPS.get(cell) or (torch._VF.rnn_tanh if opts.get("nonlinearity", "tanh") == "tanh"
                                else torch._VF.rnn_relu)
        y, h = op(*data, states[0], params, *args)
        finals = [(h[d],) for d in range(n_dirs)]
    if batch_sizes is not None:
        y = y.new_zeros(x.shape[0] * x.shape[1], y.shape[-1]).index_copy(0, rows, y).view(*x.shape[:2], -1)
    ys = y.chunk(n_dirs, dim=-1) if n_dirs > 1 else [y]   # not a view of y alone: the caller may write into it
    return [(ys[d], *finals[d]) for d in range(n_dirs)]


def warn_as_torch(x, projected):
    """The warning torch's CPU LSTM op gives once a process for a projected layer that oneDNN would otherwise run
    ("LSTM with projections is not supported with oneDNN"), for a layer that torch's op does not run: given by torch's
    op itself, on one element of x's dtype in the same grad mode, so that its conditions and its once are torch's."""
    key = (x.dtype, torch.is_grad_enabled(), torch._C._get_mkldnn_enabled())
    if not projected or key in _warned or x.device.type != "cpu" or x.numel() == 0:
        return
    _warned.add(key)
    zeros = lambda *shape: torch.zeros(shape, dtype=x.dtype, device="cpu")   # noqa: E731
    with python_dispatch._disable_current_modes():   # unseen by the caller's modes (a flop counter; a compiled
        # call's first run is under torch's custom-op analysis mode)
        _lstm_from_torch_nns_line()(zeros(1, 1, 1), (zeros(1, 1, 1), zeros(1, 1, 2)),
                                    [zeros(8, 1), zeros(8, 1), zeros(1, 2)], False, 1, 0.0, False, False, False)


@functools.cache
def onednn_runs_equal_lengths():
    """Whether torch's CPU LSTM op runs a float32 packed input whose lengths are all equal as a padded one, through
    oneDNN (torch 2.13 does, 2.11 does not; asked where oneDNN is on): then its output is a view of the padded one,
    and it saves y (autograd's saves_output). Probed once, on one element."""
    zeros = lambda *shape: torch.zeros(shape, dtype=torch.float32, device="cpu")   # noqa: E731
    with python_dispatch._disable_current_modes(), torch.no_grad(), torch.autocast("cpu", enabled=False):
        y = _OPS["lstm"](zeros(2, 1), torch.tensor([1, 1], device="cpu"), (zeros(1, 1, 1), zeros(1, 1, 1)),
                         [zeros(4, 1), zeros(4, 1), zeros(4), zeros(4)], True, 1, 0.0, False, False)[0]
    return y._is_view()


# dynamo runs it, eagerly, and keeps its answer: torch.compiler.assume_constant_result's mark (torch 2.8-2.14), set
# here as the decorator would import dynamo, which the first call leaves unloaded (dynamo.py)
onednn_runs_equal_lengths._dynamo_marked_constant = True


@functools.cache
def _lstm_from_torch_nns_line():
    """torch's LSTM op, called from the file and line where torch.nn's LSTM.forward calls it (its padded input's call;
    from its bytecode, no source needed), with rnn.py's globals: a warning of the op (a projected LSTM's, see
    warn_as_torch) then comes from there, as torch.nn's does, for filters by module (warnings.filterwarnings, pytest's
    -W) and its once-per-location registry. Where the line is not found, the op itself."""
    rnn = torch.nn.modules.rnn
    lines = [getattr(i, "positions", None) for i in dis.get_instructions(torch.nn.LSTM.forward) if i.argval == "lstm"]
    if not lines or lines[0] is None or lines[0].lineno is None:
        return _OPS["lstm"]
    made = {}
    exec(compile("\n" * (lines[0].lineno - 1) + "def lstm(*args): return _VF.lstm(*args)\n", rnn.__file__, "exec"),
         vars(rnn), made)   # (the function is made in `made`: nothing is added to rnn.py's module)
    return made["lstm"]


def shape_class(cell, x, directions, opts, for_backward, packed=False):
    weights_grad = any(w is not None and w.requires_grad for _, weights, _ in directions for w in weights)
    return layer_class(cell, opts.get("nonlinearity", "tanh"), *x.shape, tuple(s.shape[-1] for s in directions[0][0]),
                       len(directions), for_backward, x.requires_grad, weights_grad, x.dtype, packed)


def layer_class(cell, nonlinearity, T, B, I, widths, n_dirs, for_backward, x_requires_grad, weights_grad, dtype,
                packed):
    """A layer's shape class (widths: its states', h's then an LSTM's c (wider where h is projected: an LSTM(64, 768,
    proj_size=128) took torch.nn's time in LSTM(64, 128)'s class, 0.74x in its own, on an AMD EPYC); T and B: a
    packed input's padded ones). Its backward's work:
    whether dx is wanted, and whether any weight's gradient is (not: a frozen layer, whose backward skips their
    GEMMs in both routes; torch's LSTM op then took half the engine's time on an AMD EPYC)."""
    steps = min(timed.pow2(T), 2 * TIME_STEPS)   # 2 * TIME_STEPS: longer than TIME_STEPS
    return (cell, nonlinearity, steps, timed.pow2(B), timed.pow2(I), tuple(widths), n_dirs, for_backward,
            for_backward and x_requires_grad, for_backward and not weights_grad, str(dtype)) + (
        ("packed",) if packed else ())


def stack_on_torch(classes, owner, time_them):
    """Whether every layer of a stack (their shape classes) has its route fixed to torch's op (forced, deterministic
    or timed), so that torch.nn's own forward may run the whole stack in one op. A checkpoint's recomputation, inside
    a backward, must save what its forward saved: there the answer is the last forward's of these classes by this
    owner (the module's id), whatever modes either side ran under; and classes not timed yet are timed before a
    forward runs (time_them(): the stack on random data of the call's shapes), not on its way (layer by layer)."""
    last, in_backward = ("stack", tuple(classes), owner), torch._C._current_graph_task_id() != -1
    remembered = _remembered(last) if in_backward else None
    if remembered is not None:
        return remembered
    name = forced() or ("torch" if timed.deterministic() else None)
    if name is None and not in_backward and any(_chosen.due(k) for k in classes) and _may_time():
        time_them()
    whole = all((name or _chosen.get(key, ("engine",))[0]) == "torch" for key in classes)
    if not in_backward:
        _remember(last, whole)
    return whole


def _time(runs, x, directions, for_backward, batch_sizes):
    """{route: median seconds} of each runs[route](x, directions, batch_sizes) (and a backward of its outputs' sum)
    on detached copies of the first TIME_STEPS steps (x's needing a gradient where the caller's does: both routes
    skip dx otherwise); for x longer (the class of longer calls), the time each would take at
    HORIZON steps, extrapolated from its times at TIME_STEPS / 4 and TIME_STEPS steps: the routes' fixed costs
    differ (an Elman layer's forward+backward at B=4 H=64 on an AMD EPYC: 1.2 ms on the engine against 0.9 on
    torch's op at 32 steps, 1.6 against 4.3 at 128). The routes take turns, so that a passing load weighs on both
    alike (timed one after the other, a packed LSTM's torch op once timed 1.8 ms for 1.1 on an AMD EPYC, and lost).
    Identity saved-tensor hooks shadow the caller's (which must not see these copies: offloading, counting); the
    backward passes run eagerly under compiled autograd (dynamo.eager_backward)."""
    def copy(t):
        return None if t is None else t.detach().clone().requires_grad_(for_backward and t.requires_grad)
    lengths = (TIME_STEPS // 4, TIME_STEPS) if x.shape[0] > TIME_STEPS else (TIME_STEPS,)
    dirs = [([copy(s) for s in state0], [copy(w) for w in weights], r) for state0, weights, r in directions]
    inputs = {n: (copy(x[:n]), None if batch_sizes is None else batch_sizes[:n]) for n in lengths}
    samples = {(name, n): [] for name in runs for n in lengths}
    rounds, k = REPEATS, 0
    with timed.unseen(), dynamo.eager_backward():
        while k <= rounds:   # the first round warms up
            start = time.perf_counter()
            for name, run in list(runs.items())[::1 if k % 2 else -1]:   # each route first in every other round
                for n, (xs, bs) in inputs.items():
                    t0 = time.perf_counter()
                    with torch.set_grad_enabled(for_backward):
                        outs = run(xs, dirs, bs)
                        if for_backward:
                            sum(o.sum() for out in outs for o in out).backward()
                    if k:
                        samples[name, n].append(time.perf_counter() - t0)
            if k == 0 and time.perf_counter() - start < CHEAP:   # short runs: more samples against the noise
                rounds = 3 * REPEATS
            if k == 2 and rounds == REPEATS and _clear_loser(samples, runs, lengths):   # (not the noisiest)
                break
            k += 1
    times = {key: statistics.median(t) for key, t in samples.items()}
    if len(lengths) == 1:
        return {name: times[name, lengths[0]] for name in runs}
    short, long = lengths
    predicted = {}
    for name in runs:
        per_step = (times[name, long] - times[name, short]) / (long - short)
        if per_step <= 0:   # lost in the noise (a short call): every step counted as costing the same
            per_step = times[name, long] / long
        predicted[name] = times[name, long] + per_step * (HORIZON - long)
    return predicted


def _clear_loser(samples, runs, lengths):
    """Whether a route took over LOSER times another's time in every sample so far, at every length: no more rounds
    (a bidirectional LSTM's at B=16 H=768 took 0.4 s a round and route on an AMD EPYC). (Not from one round: a
    passing stall once made a GEMM route's one sample 4x its usual time on that EPYC.)"""
    so_far = {name: [t for n in lengths for t in samples[name, n]] for name in runs}
    return any(all(a > LOSER * b for a, b in zip(so_far[slow], so_far[fast])) for slow in runs for fast in runs)


def _may_time():
    """Whether a timing may run now: unseen, and outside a profiler and a torch function mode (see _forward_route)."""
    return _timing_unseen() and not (torch._C._is_torch_function_mode_enabled()
                                     or torch.autograd.profiler._is_profiler_enabled)


def _timing_unseen():
    """Whether the engine and timing runs here would stay unseen: not under a dispatch mode (a flop
    counter, fake tensors, a tracer), not where saved-tensor hooks are disabled (the timing installs its own), not
    in anomaly mode (a NaN in the caller's data would fail the timing's backward inside forward; the mode is
    process-wide, so it cannot be switched off for the timing alone)."""
    return not (python_dispatch.is_in_torch_dispatch_mode() or torch.is_anomaly_enabled()
                or not torch._C._autograd._saved_tensors_hooks_is_enabled())


def route(cell, x, directions, opts, for_backward, run_engine, batch_sizes=None):
    """"torch" or "engine" for this layer (x padded; batch_sizes: packed): forced, or the faster by timing once per
    shape class. run_engine(x, directions, batch_sizes) runs the layer on the engine."""
    if x.is_meta or fake_tensor.is_fake(x):
        return "torch"   # symbolic shapes: what torch.nn runs (the engine has no backward for them)
    key = shape_class(cell, x, directions, opts, for_backward, batch_sizes is not None)
    last = (key, directions[0][1][0].data_ptr())   # this layer's last forward: its shape and its weights' memory
    if torch._C._current_graph_task_id() != -1:
        # inside a backward (a checkpoint's recomputation): the route this layer's last forward took, whatever modes
        # either side ran under (a recomputation must save what its forward saved); else the forced or timed one,
        # else torch's op (no timing backward nested in this one)
        return _remembered(last) or forced() or _chosen.get(key, ("torch",))[0]
    name = forced() or _forward_route(key, cell, x, directions, opts, for_backward, run_engine, batch_sizes)
    _remember(last, name)
    return name


def _remember(last, route):
    """A forward's route, for a checkpoint's recomputation in backward: the last forward's, and the last under the
    caller's saved-tensor hooks (a checkpoint's forward; not a timing's own), which an unchecked call's forward
    between it and its backward, on a route timed again, does not overwrite (CheckpointError)."""
    if len(_last_forward) >= LAST_FORWARDS:   # (new weights every call: a parametrization)
        _last_forward.clear()
        _last_checkpointed.clear()
    _last_forward[last] = route
    if timed.saved_tensor_hooks() and not timed.timing():
        _last_checkpointed[last] = route


def _remembered(last):
    return _last_checkpointed.get(last, _last_forward.get(last))


def _forward_route(key, cell, x, directions, opts, for_backward, run_engine, batch_sizes):
    if timed.deterministic():
        return "torch"   # torch.nn's own op: the same results in every process
    if torch.is_anomaly_enabled() and key in _chosen:
        return _chosen[key][0]   # as the same call outside the mode
    if not _timing_unseen():
        return "torch"   # what torch.nn would run, and what the caller's mode, tracer or hooks expect to see
    if torch._C._is_torch_function_mode_enabled() or torch.autograd.profiler._is_profiler_enabled:
        # a profiler or a torch function mode would see the timing's runs (a backward inside forward): no timing
        return _chosen.get(key, ("torch",))[0]
    runs = {"engine": run_engine, "torch": lambda xs, ds, bs: torch_layers(cell, xs, ds, opts, bs)}
    # near a tie, torch's op: torch.nn's own results, and a stack all on it runs as one op (stack_on_torch); the
    # first steps timed are not the whole call (a packed LSTM's timed tie took 1.2x torch.nn's time on an AMD EPYC)
    return timed.decide(_chosen, key, lambda: _time(runs, x, directions, for_backward, batch_sizes), "torch", TIE)


def _steps(key):
    return f"T~{key[2]}" if key[2] <= TIME_STEPS else f"T>{TIME_STEPS} (times at {HORIZON})"


def _work(key):
    for_backward, dx, frozen = key[7:10]
    skipped = [what for what, skip in (("dx", not dx), ("weights", frozen)) if skip]
    return (f"fwd+bwd (no {', '.join(skipped)})" if skipped else "fwd+bwd") if for_backward else "fwd"


def chosen():
    return dict(_chosen)


def describe():
    """One line for benchmark headers."""
    return timed.describe(
        _chosen, forced(), "GPURNN_CPU_LAYER",
        "auto: the engine or torch's fused op per layer shape, whichever times faster on first use",
        "auto, timed per layer shape",
        lambda key, r, times: f"{key[0]}{' packed' * (key[-1] == 'packed')} {_steps(key)} B~{key[3]} "
                              f"H={'/'.join(map(str, sorted(set(key[5]))))} "
                              f"{_work(key)}: {r} "
                              f"({', '.join(f'{k} {t * 1e3:.1f} ms' for k, t in times.items())})")

