"""torch.compile(fullgraph=True) through gpurnn's modules (the layer is a custom op with a fake
implementation), against eager; torch.func transforms against torch.nn. (torch.export: test_graph_export.)"""
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call, grad, jacrev, vmap
from torch.fx.experimental.proxy_tensor import make_fx

import gpurnn.nn as gnn
from gpurnn.recording import recorded_for_torch

CASES = {"lstm": ("LSTM", {}), "gru_bidirectional": ("GRU", {"bidirectional": True}),
         "rnn_2layers": ("RNN", {"num_layers": 2}), "lstm_proj": ("LSTM", {"proj_size": 2})}


def _grads(m, x):
    x = x.detach().clone().requires_grad_(True)
    m.zero_grad()
    y, h = m(x)
    hs = h if isinstance(h, tuple) else (h,)
    (y.sum() + sum((t * t).sum() for t in hs)).backward()
    return [y, *hs, x.grad] + [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("case", CASES)
def test_compile_fullgraph_equals_eager(case):
    kind, kw = CASES[case]
    torch.manual_seed(0)
    m = getattr(gnn, kind)(3, 4, dtype=torch.float64, backend="numpy", **kw)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m)(x)
    assert explained.graph_break_count == 0
    assert "gpurnn.layer" in explained.graphs[0].code   # the engine's op, not an unrolled torch loop
    compiled = torch.compile(m, fullgraph=True)
    for a, b in zip(_grads(m, x), _grads(compiled, x)):   # the compiled graph sums in its own order
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


# A fresh process: the engine's first call imported torch._dynamo (torch wraps a custom op's kernel in
# dynamo.disable on first use), 1.1-1.5 s of it on an AMD EPYC. Dynamo loaded later still wraps it.
_FIRST_CALL = """
import sys, torch
import gpurnn.nn as gnn
from gpurnn import autograd
module, x = gnn.GRU(4, 8, backend="numpy"), torch.randn(5, 2, 4, requires_grad=True)
y = module(x)[0]
y.sum().backward()
assert "torch._dynamo" not in sys.modules, "the first call imported torch._dynamo"
import torch._dynamo
grad, x.grad = x.grad, None
module(x)[0].sum().backward()
torch.testing.assert_close(x.grad, grad, rtol=0, atol=0)
for op in (autograd.layer_op, autograd.layer_backward_op):
    kernel = op._backend_fns[None].__wrapped__
    assert getattr(kernel, "__dynamo_disable").__name__ != "until_loaded", "dynamo's wrapper was not made"
compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
torch.testing.assert_close(compiled(x)[0], y)
"""


def test_the_first_call_leaves_dynamo_unloaded_and_dynamo_wraps_the_op_once_loaded():
    env = {**os.environ, "GPURNN_CPU_LAYER": "engine"}
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# A fresh process, so that nothing was read before the first compiled call: reading a setting once added a key
# that torch.compile's guard had seen missing (a recompile on the next call), and a traced read of os.environ's
# store guarded on every variable (a recompile whenever any was set).
_NO_RECOMPILE = """
import os, torch, torch._dynamo
import gpurnn.nn as gnn
torch._dynamo.config.error_on_recompile = True
cases = [(gnn.LSTM(3, 4, num_layers=2), torch.randn(5, 2, 3)), (gnn.GRU(3, 4), torch.randn(1, 2, 3)),
         (gnn.LSTMCell(3, 4), torch.randn(2, 3)), (gnn.RNNCell(3, 4), torch.randn(2, 3))]
for n, (module, x) in enumerate(cases):
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    x.requires_grad_()
    for i in range(3):
        os.environ[f"GPURNN_TEST_UNRELATED_{n}_{i}"] = "1"
        out = compiled(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
"""


@pytest.mark.parametrize("route", ["auto", "engine"])
def test_calls_after_the_first_and_unrelated_variables_do_not_recompile(route):
    env = {**os.environ, "GPURNN_CPU_LAYER": route}
    done = subprocess.run([sys.executable, "-c", _NO_RECOMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_torch_nns_own_modules_keep_dynamos_graph_break():
    """gpurnn.nn lets dynamo wrap its own modules only: with torch._dynamo.config.allow_rnn set for the process, a
    compiled torch.nn.GRU in training skipped its dropout between layers and torch.nn.LSTM's backward failed."""
    assert not torch._dynamo.config.allow_rnn
    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 4, num_layers=2, dropout=0.5).train()
    x = torch.randn(5, 2, 4)
    torch._dynamo.reset()
    torch.manual_seed(1)
    compiled = torch.compile(ref, backend="aot_eager")(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(compiled, ref(x)[0], atol=0, rtol=0)   # dropout draws as eager does
    torch.compile(torch.nn.LSTM(4, 4))(x)[0].sum().backward()


def test_compile_needs_no_autocast_availability_query(monkeypatch):
    """Dynamo before torch 2.13 cannot trace torch.amp.is_autocast_available: calling it under torch.compile broke
    the graph (fullgraph failed on torch 2.11). Here it raises when called, as an untraceable call would."""
    def untraceable(device_type):
        raise RuntimeError("is_autocast_available called")
    m = gnn.GRU(3, 4, backend="numpy")
    x = torch.randn(5, 2, 3)
    eager = m(x)[0]
    monkeypatch.setattr(torch.amp, "is_autocast_available", untraceable)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x)[0], eager)


def test_the_export_check_reads_torch_exports_flag(monkeypatch):
    """torch 2.11's dynamo folds torch.compiler.is_exporting() to True under every torch.compile (torch.compile
    then recorded torch.nn's ops there): recorded_for_torch reads torch.export's flag instead of calling it."""
    def folded():
        raise RuntimeError("is_exporting called")
    x = torch.randn(2)
    fake = FakeTensorMode().from_tensor(x)
    monkeypatch.setattr(torch.compiler, "is_exporting", folded)
    assert not recorded_for_torch(x)
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True)   # as torch.export sets it
    assert not recorded_for_torch(x)   # a real tensor: another thread exports
    assert recorded_for_torch(fake)


@pytest.mark.parametrize("name", ["GRU", "GRUCell"])
def test_compile_on_the_meta_device_gives_torch_nns_shapes(name):
    """Meta has no autocast (torch.is_autocast_enabled("meta") raises), also under torch.compile."""
    ref, mine = (getattr(nn, name)(3, 4, device="meta") for nn in (torch.nn, gnn))
    x = torch.randn(5, 2, 3, device="meta") if name == "GRU" else torch.randn(2, 3, device="meta")
    torch._dynamo.reset()
    got, want = torch.compile(mine, backend="eager")(x), ref(x)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert a.shape == b.shape and a.device.type == "meta"


@pytest.mark.parametrize("make,shape", [(lambda: gnn.LSTMCell(3, 4, dtype=torch.float64, backend="numpy"), (2, 3)),
                                        (lambda: gnn.JordanRNN(3, 4, 2, dtype=torch.float64, backend="numpy"), (5, 2, 3))],
                         ids=["lstm_cell", "jordan"])
def test_compile_cells_and_jordan(make, shape):
    torch.manual_seed(0)
    m, x = make(), torch.randn(shape, dtype=torch.float64)
    torch._dynamo.reset()
    for a, b in zip(m(x), torch.compile(m, fullgraph=True)(x)):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


def test_a_new_length_does_not_recompile(monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")   # eager as compiled, bit for bit (the suite's default)
    m = gnn.GRU(3, 4, backend="numpy")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    compiled = torch.compile(m, backend=backend, fullgraph=True, dynamic=True)
    for T in (5, 6, 7, 9):
        x = torch.randn(T, 2, 3)
        torch.testing.assert_close(compiled(x)[0], m(x)[0], atol=0, rtol=0)
    assert len(graphs) == 1 and "gpurnn.layer" in graphs[0].code


class _Scriptable(torch.nn.Module):
    def __init__(self, nn):
        super().__init__()
        self.rnn = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(8, 4)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.cell(y[:, -1], h[0]) + c.sum()


def test_torchscript_scripts_torch_nns_module_on_the_same_parameters(tmp_path):
    """TorchScript cannot run the engine: the scripted model is torch.nn's, on our parameters."""
    torch.manual_seed(0)
    ref, mine = _Scriptable(torch.nn), _Scriptable(gnn)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 3)
    weight = mine.rnn.weight_ih_l0
    with pytest.warns(UserWarning, match="scripted as torch.nn.LSTM"):
        scripted = torch.jit.script(mine)
    torch.testing.assert_close(scripted(x), torch.jit.script(ref)(x), atol=0, rtol=0)
    scripted(x).sum().backward()
    ref(x).sum().backward()
    torch.testing.assert_close(mine.rnn.weight_hh_l1_reverse.grad, ref.rnn.weight_hh_l1_reverse.grad)
    # torch.jit.script puts the scriptable module into the parent: torch.nn's, on the same parameters
    assert type(mine.rnn) is torch.nn.LSTM and mine.rnn.weight_ih_l0 is weight
    scripted.save(tmp_path / "scripted.pt")
    torch.testing.assert_close(torch.jit.load(tmp_path / "scripted.pt")(x), ref(x))


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_torch_func_grad_and_jacrev_match_torch_nn_and_vmap_runs(kind):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(3, 4, dtype=torch.float64)
    mine = getattr(gnn, kind)(3, 4, dtype=torch.float64, backend="numpy")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def loss(m):
        return lambda params, x: functional_call(m, params, (x,))[0].pow(2).sum()

    g_ref = grad(loss(ref))(dict(ref.named_parameters()), x)
    g = grad(loss(mine))(dict(mine.named_parameters()), x)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(jacrev(lambda x: mine(x)[0])(x), jacrev(lambda x: ref(x)[0])(x),
                               atol=1e-12, rtol=1e-12)
    xs = torch.randn(4, 5, 2, 3, dtype=torch.float64)   # torch.nn's modules have no vmap rule
    torch.testing.assert_close(vmap(lambda x: mine(x)[0])(xs), torch.stack([ref(x)[0] for x in xs]),
                               atol=1e-12, rtol=1e-12)


_LEAVING = {"grad": lambda loss, p, x: grad(loss)(p, x),
            "vmap-grad": lambda loss, p, x: vmap(grad(loss), in_dims=(None, 1))(p, x[:, :, None]),
            "make_fx": lambda loss, p, x: make_fx(loss, tracing_mode="fake")(p, x)}


@pytest.mark.parametrize("transform", list(_LEAVING))
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_a_module_called_after_a_transform_or_a_fake_trace_runs_as_torch_nn(kind, transform, monkeypatch):
    """functional_call inside torch.func.grad (or a fake trace) leaves the transform's wrapped (or fake) weights in the
    module's _flat_weights (torch.nn's forward refreshes them at its start): the route timing of the next plain call
    ran on them, "Cannot access data pointer of Tensor that doesn't have storage", and so did every later call."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    torch.manual_seed(0)
    ref, mine = getattr(torch.nn, kind)(3, 4), getattr(gnn, kind)(3, 4)
    mine.load_state_dict(ref.state_dict())
    loss = lambda p, x: functional_call(mine, p, (x,))[0].sum()   # noqa: E731
    _LEAVING[transform](loss, {k: v.detach() for k, v in mine.named_parameters()}, torch.randn(2, 5, 3))
    x = torch.randn(9, 3, 3)   # (a shape of its own: its route is timed)
    outs = []
    for m in (ref, mine):
        y, _ = m(x)
        y.sum().backward()
        outs.append([y] + [p.grad for p in m.parameters()])
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want)


def _jvp(m):
    return lambda x: torch.func.jvp(lambda z: m(z)[0], (x,), (torch.ones_like(x),))[1]


def _forward_ad(m):
    import torch.autograd.forward_ad as fwAD

    def tangent(x):
        with fwAD.dual_level():
            return fwAD.unpack_dual(m(fwAD.make_dual(x, torch.ones_like(x)))[0]).tangent
    return tangent


@pytest.mark.parametrize("transform", [lambda m: grad(lambda x: m(x)[0].sum()), _jvp, _forward_ad],
                         ids=["grad", "jvp", "forward_ad"])
@pytest.mark.parametrize("kind", ["GRU", "GRUCell"])
def test_compiled_transforms_match_torch_nn(kind, transform):
    """Dynamo traces a transform's body with the transform active: the engine's custom op met its wrapped
    tensors there (grad failed, jvp gave a zero tangent); the layer runs as the torch loop instead."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(3, 4, dtype=torch.float64)
    mine = getattr(gnn, kind)(3, 4, dtype=torch.float64, backend="numpy")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    if kind == "GRUCell":
        x = x[0]
        ref, mine = (lambda m: lambda x: (m(x),))(ref), (lambda m: lambda x: (m(x),))(mine)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(transform(mine), backend="eager")(x), transform(ref)(x),
                               atol=1e-12, rtol=1e-12)


def test_forward_mode_ad_matches_torch_nn():
    import torch.autograd.forward_ad as fwAD
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 4, dtype=torch.float64)
    mine = gnn.GRU(3, 4, dtype=torch.float64, backend="numpy")
    mine.load_state_dict(ref.state_dict())
    x, tangent = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    with fwAD.dual_level():
        outs = [fwAD.unpack_dual(m(fwAD.make_dual(x, tangent))[0]).tangent for m in (ref, mine)]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-12, rtol=1e-12)


def test_a_packed_input_is_left_to_eager_python_as_torch_nns():
    """Traced, each new set of batch sizes compiled the frames after their int() again (up to the recompile limit)."""
    from torch._dynamo.utils import counters
    from torch.nn.utils.rnn import pack_padded_sequence

    torch._dynamo.reset()
    counters.clear()
    module = gnn.LSTM(3, 4)
    compiled = torch.compile(module, backend="eager")
    for lengths in ([5, 5, 2], [5, 3, 1], [5, 4, 4], [5, 2, 2]):
        packed = pack_padded_sequence(torch.randn(5, 3, 3), lengths)
        torch.testing.assert_close(compiled(packed)[0].data, module(packed)[0].data)
    assert counters["stats"].get("unique_graphs", 0) == 0


@pytest.mark.parametrize("kind, kw", [("GRU", {}), ("LSTM", {"proj_size": 2})])
def test_dropout_between_layers_survives_compile_where_torch_nns_forward_runs(kind, kw):
    """Under CPU autocast these run torch.nn's own forward, whose trace loses the dropout between layers (torch's
    RNN decomposition): every training call gave the eval output."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = getattr(gnn, kind)(3, 8, num_layers=3, dropout=0.9, **kw).train()
    compiled = torch.compile(module, backend="aot_eager")
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [compiled(x)[0] for _ in range(2)]
        evaluated = module.eval()(x)[0]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], evaluated)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_compiled_dropout_between_layers_draws_torch_nns_masks(kind):
    """As torch.nn's module, the layers run eagerly (a graph break) in training with dropout: traced, Inductor drew
    the masks with its own generator, so a seeded run took another trajectory than torch.nn's."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 6, num_layers=2, dropout=0.5)
    mine = getattr(gnn, kind)(4, 6, num_layers=2, dropout=0.5)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4)
    results = []
    for module in (ref, torch.compile(mine)):
        torch.manual_seed(123)
        results.append((module(x)[0], torch.get_rng_state()))
    torch.testing.assert_close(results[1], results[0])


@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen"])
@pytest.mark.parametrize("kind, kw", [("LSTM", {"num_layers": 2}), ("GRU", {"bidirectional": True}),
                                      ("RNN", {"nonlinearity": "relu", "bias": False}),
                                      ("LSTM", {"proj_size": 3, "bidirectional": True})])
def test_compiled_layers_take_torchs_op_where_its_route_is_torchs(kind, kw, frozen, monkeypatch):
    """The op takes the CPU layer's route itself (cpu/op_route.py): on torch's, a compiled layer gives torch.nn's bits
    forward and backward (the engine's would differ in rounding), x needing no gradient, or no weight needing one."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "torch")
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 5, **kw).double()
    mine = getattr(gnn, kind)(4, 5, **kw).double()
    mine.load_state_dict(ref.state_dict())
    for m in (ref, mine):
        m.requires_grad_(not frozen)
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=frozen)
    torch._dynamo.reset()   # (each module compiles the forward anew: the tests before may reach the limit)
    compiled = torch.compile(mine, backend="aot_eager", fullgraph=True)
    outs = [m(x) for m in (ref, compiled)]
    flat = [[out[0], *(out[1] if isinstance(out[1], tuple) else [out[1]])] for out in outs]
    for a, b in zip(*flat):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    wrt = [x] if frozen else None
    grads = [torch.autograd.grad(sum(t.square().sum() for t in f), wrt or list(m.parameters()))
             for f, m in zip(flat, (ref, mine))]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], ref(x)[0], rtol=0, atol=0)


def test_a_compiled_lstm_output_changed_in_place_leaves_torchs_route_gradients_right(monkeypatch):
    """oneDNN's LSTM saves y for backward: the compiled op returns another tensor, so that y.mul_ cannot reach it."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "torch")
    torch.manual_seed(0)
    ref, mine = torch.nn.LSTM(4, 5), gnn.LSTM(4, 5)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4)
    want = torch.autograd.grad(2 * ref(x)[0].sum(), list(ref.parameters()))
    torch._dynamo.reset()
    y = torch.compile(mine, backend="aot_eager", fullgraph=True)(x)[0]
    y.mul_(2)
    for a, b in zip(torch.autograd.grad(y.sum(), list(mine.parameters())), want):
        torch.testing.assert_close(a, b)


def test_the_op_times_the_route_of_the_traced_call(monkeypatch):
    """The op's kernel sees no tensor that needs a gradient: the traced call's flags reach the route's shape class
    (a second layer's input, made inside the graph, needs one there as in eager calls)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    from gpurnn.cpu import layer
    classes = []
    real = layer.route
    monkeypatch.setattr(layer, "route", lambda cell, x, ds, opts, fb, *a: classes.append(
        layer.shape_class(cell, x, ds, opts, fb)[7:10]) or real(cell, x, ds, opts, fb, *a))
    m = gnn.GRU(3, 4, num_layers=2)
    torch._dynamo.reset()
    torch.compile(m, backend="aot_eager", fullgraph=True)(torch.randn(5, 2, 3))[0].sum().backward()
    assert classes == [(True, False, False), (True, True, False)]   # (for backward, dx wanted, frozen)


def test_the_route_timing_under_compiled_autograd_is_not_captured(monkeypatch):
    """The route's timing runs its own backward passes: under compiled autograd they run eagerly, so that the
    caller's backward is the only one captured, as for torch.nn's module."""
    from torch._dynamo import compiled_autograd
    from torch._dynamo.utils import counters

    from gpurnn.cpu import layer, timed
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    monkeypatch.setattr(layer, "_chosen", timed.Decisions())
    captures = []
    for module in (torch.nn.GRU(5, 7), gnn.GRU(5, 7)):
        torch._dynamo.reset()
        counters.clear()
        with compiled_autograd._enable(torch.compile(backend="eager")):
            module(torch.randn(6, 3, 5, requires_grad=True))[0].sum().backward()
        captures.append(counters["compiled_autograd"]["captures"])
    assert layer._chosen and captures[1] == captures[0] == 1
