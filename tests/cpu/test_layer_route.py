"""gpurnn/cpu/layer.py: a CPU layer under the torch front end runs on the engine or as torch's fused op."""
import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gpurnn.nn as gnn
from gpurnn import autograd
from gpurnn.cpu import layer, timed

CASES = {"rnn-relu": ("RNN", dict(nonlinearity="relu")), "lstm-proj": ("LSTM", dict(proj_size=5)),
         "lstm": ("LSTM", {}), "gru-nobias": ("GRU", dict(bias=False))}


@pytest.fixture
def fresh(monkeypatch):
    """No route chosen yet; every timing recorded."""
    monkeypatch.setattr(layer, "_chosen", timed.Decisions())
    monkeypatch.setattr(layer, "_last_forward", {})
    monkeypatch.setattr(layer, "_last_checkpointed", {})
    timings = []
    real = layer._time

    def counted(runs, x, directions, for_backward, batch_sizes):
        timings.extend([for_backward] * len(runs))   # one entry per route timed
        return real(runs, x, directions, for_backward, batch_sizes)
    monkeypatch.setattr(layer, "_time", counted)
    monkeypatch.setattr(layer, "REPEATS", 1)
    return timings


def _pair(kind, kw, dtype=torch.float32):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(6, 8, num_layers=2, bidirectional=True, **kw).to(dtype)
    ours = getattr(gnn, kind)(6, 8, num_layers=2, bidirectional=True, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _outputs(m, x):
    xi = x.clone().requires_grad_()
    y, _ = m(xi)
    y.square().sum().backward()
    return [y.detach(), xi.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("route", ["auto", "engine", "torch"])
@pytest.mark.parametrize("case", CASES)
def test_every_route_matches_torch(case, route, monkeypatch, fresh):
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    ref, ours = _pair(*CASES[case], dtype=torch.float64)
    x = torch.randn(7, 3, 6, dtype=torch.float64)
    for r, g in zip(_outputs(ref, x), _outputs(ours, x)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_forced_routes_run_only_their_route(monkeypatch, fresh):
    calls = {"engine": 0, "torch": 0}
    real_engine, real_torch = autograd._engine_layers, layer.torch_layers

    def engine(*a, **k):
        calls["engine"] += 1
        return real_engine(*a, **k)

    def fused(*a, **k):
        calls["torch"] += 1
        return real_torch(*a, **k)
    monkeypatch.setattr(autograd, "_engine_layers", engine)
    monkeypatch.setattr(layer, "torch_layers", fused)
    _, ours = _pair("GRU", {})
    x = torch.randn(5, 2, 6)
    nn_calls = _torch_nn_forwards(monkeypatch, "GRU")
    for route in ("engine", "torch"):
        monkeypatch.setenv("GPURNN_CPU_LAYER", route)
        calls.update(engine=0, torch=0)
        _outputs(ours, x)
        assert fresh == [] and calls == ({"engine": 2, "torch": 0} if route == "engine" else {"engine": 0, "torch": 0})
    assert nn_calls == ["gpurnn.nn"]   # torch's op for every layer: torch.nn's forward runs the stack


def test_choice_is_timed_once_per_shape_class(monkeypatch, fresh):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    _, ours = _pair("LSTM", {})
    x = torch.randn(5, 2, 6)
    _outputs(ours, x)
    assert fresh == [True, True] * 2                 # two layer classes (I=6, I=16), both routes each
    assert all(r in ("engine", "torch") for r, _ in layer.chosen().values()) and len(layer.chosen()) == 2
    _outputs(ours, x)
    with torch.no_grad():
        ours(x)                                      # no backward follows: its own class
    assert fresh == [True, True] * 2 + [False, False] * 2
    assert "lstm" in layer.describe()


def test_a_frozen_layer_is_a_class_of_its_own_timed_as_it_runs(monkeypatch, fresh):
    """Weights that need no gradient: both routes' backward skips their GEMMs (torch's LSTM op then took half the
    engine's time on an AMD EPYC), so the class is another one, timed on weights that need none either."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    _, ours = _pair("GRU", {})
    x = torch.randn(5, 2, 6, requires_grad=True)
    weights_grad = []
    real = layer.torch_layers

    def recorded(cell, xs, directions, *args):
        weights_grad.extend(w.requires_grad for _, weights, _ in directions for w in weights if w is not None)
        return real(cell, xs, directions, *args)
    monkeypatch.setattr(layer, "torch_layers", recorded)
    ours(x)[0].sum().backward()
    assert weights_grad and all(weights_grad) and len(layer.chosen()) == 2
    ours.requires_grad_(False)
    weights_grad.clear()
    ours(x)[0].sum().backward()
    assert weights_grad and not any(weights_grad) and len(layer.chosen()) == 4
    assert "fwd+bwd (no weights)" in layer.describe()


def test_a_projected_lstm_is_a_class_of_its_own(monkeypatch, fresh):
    """LSTM(6, 8, proj_size=5) is not LSTM(6, 5): its cell is 8 wide (keyed on h's width alone, an LSTM(64, 768,
    proj_size=128) took LSTM(64, 128)'s route: torch.nn's time against 0.74x in its own class, on an AMD EPYC)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    x = torch.randn(5, 2, 6)
    for module in (gnn.LSTM(6, 8, proj_size=5), gnn.LSTM(6, 5)):
        _outputs(module, x)
    assert len(layer.chosen()) == 2 and "H=5/8 fwd" in layer.describe() and "H=5 fwd" in layer.describe()


def test_where_torch_op_does_not_apply_the_engine_runs(monkeypatch, fresh):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "torch")
    monkeypatch.setattr(layer, "torch_layers", lambda *a, **k: pytest.fail("torch's op ran"))
    _, ours = _pair("LSTM", {})
    gnn.JordanRNN(6, 8, 4)(torch.randn(5, 3, 6))                      # Jordan
    ours.half()(torch.randn(5, 3, 6).half())                           # float16


@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("case", CASES)
def test_packed_input_on_each_route_layer_by_layer_matches_torch(case, route, monkeypatch, fresh):
    """torch's packed op per layer (the stack layer by layer, as where some layer's route is the engine's)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    monkeypatch.setattr(layer, "stack_on_torch", lambda *args: False)
    ran = []
    real = layer.torch_layers
    monkeypatch.setattr(layer, "torch_layers", lambda *a: ran.append(a[-1]) or real(*a))
    ref, ours = _pair(*CASES[case], dtype=torch.float64)
    lengths = [7, 4, 4, 1]
    x = torch.randn(7, 4, 6, dtype=torch.float64)
    h0 = torch.randn(4, 4, 5 if case == "lstm-proj" else 8, dtype=torch.float64)
    state = (h0, torch.randn(4, 4, 8, dtype=torch.float64)) if "lstm" in case else h0
    outs = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        y, h = m(pack_padded_sequence(xi, lengths, enforce_sorted=False), state)
        (y.data.square().sum() + sum(t.sum() for t in (h if isinstance(h, tuple) else (h,)))).backward()
        outs.append([y.data, xi.grad] + [p.grad for p in m.parameters()])
    for g, r in zip(outs[1], outs[0]):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    assert ran == ([[4, 3, 3, 3, 1, 1, 1]] * 2 if route == "torch" else [])   # two layers, their batch sizes


def test_double_backward_through_torch_route(monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "torch")
    ref, ours = _pair("RNN", {}, dtype=torch.float64)
    x = torch.randn(4, 2, 6, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        g, = torch.autograd.grad(m(xi)[0].sum(), xi, create_graph=True)
        grads.append(torch.autograd.grad(g.square().sum(), list(m.parameters())))
    for r, o in zip(*grads):
        torch.testing.assert_close(o, r)


def test_bad_route_names_the_variable(monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "onednn")
    with pytest.raises(ValueError, match=r"GPURNN_CPU_LAYER: expected 'auto', 'engine' or 'torch', got 'onednn'"):
        layer.forced()


def test_timing_is_invisible_to_the_callers_saved_tensor_hooks(monkeypatch, fresh):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    _, ours = _pair("GRU", {})
    x = torch.randn(5, 2, 6, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.shape) or t, lambda t: t):
        ours(x)[0].sum().backward()
    assert fresh                                       # the routes were timed inside the hooks' context
    again = []                                         # the same routes, now without timing, layer by layer
    monkeypatch.setattr(layer, "stack_on_torch", lambda *args: False)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: again.append(t.shape) or t, lambda t: t):
        ours(x)[0].sum().backward()
    assert len(fresh) == 4 and packed == again        # what the call itself saves, nothing of the timing


def test_no_timing_inside_a_backward(monkeypatch, fresh):
    """A checkpointed layer recomputes inside backward: no nested timing backward there."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    _, ours = _pair("LSTM", {})
    x = torch.randn(5, 2, 6, requires_grad=True)
    checkpoint(lambda t: ours(t)[0], x, use_reentrant=True).sum().backward()
    assert fresh == [False, False] * 2                 # timed in the no-grad forward only
    assert x.grad is not None


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.mark.parametrize("case", CASES)
def test_deterministic_algorithms_fix_the_route_to_torch_nns_op(case, monkeypatch, fresh, deterministic):
    """A timed choice may differ from one process to the next (and the routes round differently): under
    torch.use_deterministic_algorithms the layer takes torch's op, untimed, and gives torch.nn's results bitwise."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    ref, ours = _pair(*CASES[case])
    x = torch.randn(7, 3, 6)
    for r, g in zip(_outputs(ref, x), _outputs(ours, x)):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    assert fresh == []


def test_anomaly_mode_takes_torchs_op_untimed(monkeypatch, fresh):
    """torch.nn's forward of input holding NaN runs under detect_anomaly; a timing (a backward on copies) would
    raise inside forward, and the mode is process-wide: no timing, torch's op."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    ref, ours = _pair("LSTM", {})
    x = torch.randn(7, 3, 6)
    x[2, 1, 0] = float("nan")
    with torch.autograd.detect_anomaly():
        got, want = ours(x)[0], ref(x)[0]
    assert fresh == [] and torch.equal(got.isnan(), want.isnan())


class _Calls(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("observer", ["function mode", "profiler"])
def test_no_timing_where_a_profiler_or_torch_function_mode_would_see_it(observer, monkeypatch, fresh):
    """The timing (a forward and a backward inside the caller's forward) showed in the profile and in the mode's
    calls; there the layer takes the route already chosen, else torch's op."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    _, ours = _pair("GRU", {})
    x = torch.randn(5, 2, 6)
    mode = _Calls() if observer == "function mode" else torch.profiler.profile()
    with mode:
        ours(x)
    assert fresh == [] and layer.chosen() == {}
    if observer == "function mode":
        assert "backward" not in mode.names
    ours(x)
    key, (chosen, *_) = next(iter(layer.chosen().items()))
    monkeypatch.setattr(layer, "_last_forward", {})
    monkeypatch.setattr(layer, "_last_checkpointed", {})
    with _Calls():
        ours(x)
    layers = [r for k, r in layer._last_forward.items() if k[0] != "stack"]   # (none: the stack ran as torch.nn's)
    assert len(fresh) == 4 and (layers[0] == chosen if layers else chosen == "torch")


def _torch_nn_forwards(monkeypatch, kind):
    """Counts the calls of torch.nn's own forward of `kind` (gpurnn's module calls it where the stack runs there)."""
    calls = []
    real = getattr(torch.nn, kind).forward

    def counted(self, *args, **kwargs):
        calls.append(type(self).__module__)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(getattr(torch.nn, kind), "forward", counted)
    return calls


def _torch_wins(monkeypatch):
    """Timings in which torch's op is the faster."""
    monkeypatch.setattr(layer, "_time", lambda *args: {"engine": 1.0, "torch": 0.0})


@pytest.mark.parametrize("engine_s, want", [(0.97, "torch"), (0.90, "engine"), (1.10, "torch")])
def test_a_near_tie_goes_to_torchs_op(engine_s, want, monkeypatch, fresh):
    """Within 5% of the engine's time, torch's op: torch.nn's own results, one op for a stack all on it."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    monkeypatch.setattr(layer, "_time", lambda *args: {"engine": engine_s, "torch": 1.0})
    gnn.GRU(3, 4)(torch.randn(5, 2, 3))
    assert [route for route, _ in layer.chosen().values()] == [want]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_a_stack_whose_layers_all_take_torchs_op_runs_as_torch_nns_forward(kind, packed, monkeypatch, fresh):
    """Once every layer's route is torch's op, the module runs torch.nn's forward: one op for the stack, without
    gpurnn's checks and layer-by-layer calls (50-170 us a call on the Xeon), torch.nn's results and RNG bitwise."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    _torch_wins(monkeypatch)
    ref, ours = _pair(kind, {})
    ref.dropout = ours.dropout = 0.3
    x = torch.randn(7, 3, 6)

    def outputs(m):
        xi = x.clone().requires_grad_()
        y, _ = m(pack_padded_sequence(xi, [7, 5, 2]) if packed else xi)
        (y.data if packed else y).square().sum().backward()
        return [y.data if packed else y, xi.grad] + [p.grad for p in m.parameters()]
    outputs(ours)   # timed: both layer classes go to torch's op
    ours.zero_grad()
    calls = _torch_nn_forwards(monkeypatch, kind)
    torch.manual_seed(1)
    want = outputs(ref)
    torch.manual_seed(1)
    got = outputs(ours)
    assert calls == ["torch.nn.modules.rnn", "gpurnn.nn"]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("switch", ["engine to torch", "torch to engine", "deterministic"])
@pytest.mark.parametrize("packed", [False, True])
def test_a_checkpoint_recomputes_on_its_forwards_route_after_a_switch(switch, packed, monkeypatch, fresh):
    """GPURNN_CPU_LAYER changed, or torch.use_deterministic_algorithms switched on, between a checkpointed forward and
    its backward: the recomputation takes the forward's routes. A forced route once went first, and torch's
    checkpoint refused the other route's saved tensors (CheckpointError)."""
    from torch.utils.checkpoint import checkpoint

    first, second = ("engine", "torch") if switch != "torch to engine" else ("torch", "engine")
    ref, ours = _pair("GRU", {})
    grads = []
    for m in (ours, ref):
        def run(x):
            y = m(pack_padded_sequence(x, [5, 4, 2, 1]) if packed else x)[0]
            return (y.data if packed else y).square().sum()
        x = torch.randn(5, 4, 6, requires_grad=True, generator=torch.Generator().manual_seed(0))
        monkeypatch.setenv("GPURNN_CPU_LAYER", first)
        loss = checkpoint(run, x, use_reentrant=False)
        with monkeypatch.context() as switched:
            switched.setenv("GPURNN_CPU_LAYER", "auto" if switch == "deterministic" else second)
            switched.setattr(layer.timed, "deterministic", lambda: switch == "deterministic")
            loss.backward()
        grads.append([x.grad] + [p.grad for p in m.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("packed", [False, True])
def test_checkpoints_recompute_the_stack_as_its_forward_ran_from_the_first_call(packed, monkeypatch, fresh):
    """A non-reentrant checkpoint recomputes inside backward and must save what the forward saved. Two checkpoints
    of one module, the process's first calls: the first timed its layers on the way (layer by layer), the second ran
    torch.nn's forward, and the first's recomputation, the routes decided by then, ran torch.nn's forward
    (CheckpointError). The stack's routes are now timed before its first call runs."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    _torch_wins(monkeypatch)
    ref, ours = _pair("GRU", {})
    xs = [torch.randn(5, 4, 6, requires_grad=True) for _ in range(2)]
    calls = _torch_nn_forwards(monkeypatch, "GRU")
    grads = []
    for m in (ours, ref):
        def run(x):
            y = m(pack_padded_sequence(x, [5, 4, 2, 1]) if packed else x)[0]
            return (y.data if packed else y).square().sum()
        sum(checkpoint(run, x, use_reentrant=False) for x in xs).backward()
        grads.append([x.grad for x in xs] + [p.grad for p in m.parameters()])
        for x in xs:
            x.grad = None
    assert calls.count("gpurnn.nn") == 4 and len(layer.chosen()) == 2   # 2 forwards, 2 recomputations; 2 classes
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w)


def test_timing_a_stack_before_its_first_call_leaves_the_rng_as_it_was(monkeypatch, fresh):
    """The routes are timed on random data before the first call (stack_on_torch): drawn from a forked RNG, so that
    the call's dropout masks and what is drawn after are torch.nn's."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    _torch_wins(monkeypatch)
    outs = []
    for m in _pair("GRU", dict(dropout=0.5))[::-1]:
        torch.manual_seed(1)
        outs.append((m(torch.randn(5, 3, 6))[0], torch.rand(1)))
    assert layer.chosen()
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_longer_calls_routes_are_compared_at_the_horizon_from_two_timed_lengths(monkeypatch):
    """Fixed costs differ between the routes: the one faster at TIME_STEPS steps may be slower for a longer call
    (an Elman layer's forward+backward at B=4 H=64 on an AMD EPYC: the engine 1.2 ms against 0.9 at 32 steps, 1.6
    against 4.3 at 128). Longer calls are a class of their own, timed at two lengths and extrapolated."""
    clock = [0.0]
    monkeypatch.setattr(layer.time, "perf_counter", lambda: clock[0])
    costs = {"engine": (1.0, 0.01), "torch": (0.2, 0.03)}   # fixed, per step (a made-up clock)

    def run_for(name):
        def run(xs, directions, batch_sizes):
            clock[0] += costs[name][0] + costs[name][1] * xs.shape[0]
            return [(xs,)]
        return run
    runs = {name: run_for(name) for name in costs}
    directions = [([torch.zeros(2, 4)], [torch.zeros(4, 3)], False)]
    at = {T: layer._time(runs, torch.zeros(T, 2, 3), directions, False, None) for T in (20, 100)}
    assert at[20] == pytest.approx({"engine": 1.2, "torch": 0.8})   # every step of a short call, timed
    horizon = layer.HORIZON
    assert at[100] == pytest.approx({"engine": 1.0 + 0.01 * horizon, "torch": 0.2 + 0.03 * horizon})
    classes = {T: layer.layer_class("elman", "tanh", T, 4, 3, (4,), 1, True, True, True, torch.float32, False)
               for T in (20, 32, 33, 100, 5000)}
    assert classes[20] == classes[32] and classes[33] == classes[100] == classes[5000] != classes[32]


@pytest.mark.parametrize("torch_costs, rounds", [((0.1, 0.01), 2), ((0.6, 0.06), layer.REPEATS)])
def test_a_clear_loser_ends_the_timing_after_two_rounds(torch_costs, rounds, monkeypatch):
    """Over LOSER times another route's time at both lengths in the first two timed rounds: no more rounds (a
    bidirectional LSTM's round at B=16 H=768 took 0.4 s a route on an AMD EPYC); a closer race runs them all."""
    clock, calls = [0.0], []
    monkeypatch.setattr(layer.time, "perf_counter", lambda: clock[0])
    costs = {"engine": (1.0, 0.1), "torch": torch_costs}   # fixed, per step (a made-up clock)

    def run_for(name):
        def run(xs, directions, batch_sizes):
            calls.append(name)
            clock[0] += costs[name][0] + costs[name][1] * xs.shape[0]
            return [(xs,)]
        return run
    runs = {name: run_for(name) for name in costs}
    directions = [([torch.zeros(2, 4)], [torch.zeros(4, 3)], False)]
    times = layer._time(runs, torch.zeros(100, 2, 3), directions, False, None)
    assert len(calls) == 2 * 2 * (1 + rounds)   # routes x lengths x (warm-up + timed rounds)
    assert times == pytest.approx({name: fixed + per_step * layer.HORIZON for name, (fixed, per_step) in costs.items()})


@pytest.mark.parametrize("route", ["auto", "engine", "torch"])
def test_bfloat16_runs_as_torchs_bfloat16_op_or_in_float32(route, monkeypatch, fresh):
    """bfloat16 layers are timed too: torch's op (oneDNN's bfloat16, half float32's time on an AMD EPYC with
    avx512_bf16) gives torch.nn's own bits; the engine computes in float32 and rounds its results."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    ref, ours = _pair("LSTM", {}, dtype=torch.bfloat16)
    ref32 = copy.deepcopy(ref).float()
    x = torch.randn(7, 3, 6).bfloat16()
    got = _outputs(ours, x)
    assert [t.dtype for t in got] == [torch.bfloat16] * len(got)
    routes = {r for key, (r, _) in layer.chosen().items() if key[10] == str(torch.bfloat16)}
    if route == "auto":
        # two bfloat16 layer classes and, inside the first timing of their float32 route, its float32 classes
        assert len(fresh) == 2 * 4 and routes
    if routes == {"torch"} or route == "torch":
        for g, r in zip(got, _outputs(ref, x)):
            assert torch.equal(g, r)
    elif route == "engine":
        for g, r in zip(got, _outputs(ref32, x.float())):
            torch.testing.assert_close(g.float(), r, rtol=2e-2, atol=2e-2)
