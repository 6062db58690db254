"""Second-order gradients (a gradient penalty, create_graph=True) equal torch.nn's, and
torch.autograd.gradgradcheck (finite differences in float64) through the engine's Function."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gpurnn.nn as gnn
from jordan_reference import jordan_reference
from test_gradcheck import CASES, RUNS, rand
from gpurnn.nn import run_layer

T, B, I, H = 5, 3, 4, 6
MODULES = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}), "lstm": ("LSTM", {}),
           "lstm_proj": ("LSTM", {"proj_size": 3}), "gru": ("GRU", {})}
VARIANTS = {"plain": {}, "bidirectional_2layers": {"bidirectional": True, "num_layers": 2}, "packed": {}}


def _penalised_grads(module, x, lengths):
    """dL/dparams of L = sum(y^2) + |dy_sum/dx|^2: needs the gradient of a gradient."""
    x = x.detach().clone().requires_grad_(True)
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    y, _ = module(inp)
    y = y if lengths is None else y.data
    (dx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    loss = (y * y).sum() + (dx * dx).sum()
    return torch.autograd.grad(loss, list(module.parameters()) + [x])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", MODULES)
def test_gradient_penalty_matches_torch(name, variant):
    kind, kw = MODULES[name]
    kw = {**kw, **VARIANTS[variant]}
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(I, H, dtype=torch.float64, **kw)
    mine = getattr(gnn, kind)(I, H, dtype=torch.float64, backend="numpy", **kw)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4]) if variant == "packed" else None
    for r, m in zip(_penalised_grads(ref, x, lengths), _penalised_grads(mine, x, lengths)):
        assert m.abs().sum() > 0
        torch.testing.assert_close(m, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("act", ("identity", "tanh", "sigmoid", "softmax"))
def test_jordan_gradient_penalty_matches_a_plain_torch_loop(act):
    torch.manual_seed(0)
    m = gnn.JordanRNN(I, H, 3, output_activation=act, decay=torch.tensor([0.0, 0.5, 1.0]),
                      dtype=torch.float64, backend="numpy")
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    params = [m.weight_ih, m.weight_sh, m.bias_h, m.weight_ho, m.bias_o]

    def grads(run):
        y = run()
        (dx,) = torch.autograd.grad((y * torch.arange(3.0, dtype=y.dtype)).sum(), x, create_graph=True)
        return torch.autograd.grad((y * y).sum() + (dx * dx).sum(), params + [x])

    s0 = torch.zeros(B, 3, dtype=torch.float64)
    ref = grads(lambda: jordan_reference(x, s0, *params, m.decay, output_activation=act)[0])
    for r, g in zip(ref, grads(lambda: m(x)[0])):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case,reverse", RUNS, ids=[f"{c}-{'reverse' if r else 'forward'}" for c, r in RUNS])
def test_gradgradcheck(case, reverse):
    cell, state_sizes, weight_shapes, opts = CASES[case]
    Tg, Bg, Ig = 3, 2, 3
    x = rand(Tg, Bg, Ig)
    states = [rand(Bg, s) for s in state_sizes]
    weights = [None if s is None else rand(*((s[0], Ig) if k == 0 else s)) for k, s in enumerate(weight_shapes)]
    if cell == "jordan":
        weights.append(torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64))
        if "teacher" in opts:
            opts = dict(opts, teacher=opts["teacher"][:Tg, :Bg])
    n_state = len(states)
    args = [x, *states, *[w for w in weights if w is not None and w.requires_grad]]

    def f(x, *rest):
        st, ws = list(rest[:n_state]), iter(rest[n_state:])
        full = [w if w is None or not w.requires_grad else next(ws) for w in weights]
        return run_layer(cell, x, st, full, backend="numpy", reverse=reverse, **opts)

    assert torch.autograd.gradgradcheck(f, args)


def test_a_changed_bias_after_forward_still_gets_its_gradient():
    """torch.nn computes it (backward does not read the bias); so does gpurnn."""
    for kind in ("RNN", "GRU", "LSTM"):
        torch.manual_seed(0)
        ref = getattr(torch.nn, kind)(I, H, dtype=torch.float64)
        mine = getattr(gnn, kind)(I, H, dtype=torch.float64, backend="numpy")
        mine.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I, dtype=torch.float64)
        for m in (ref, mine):
            y, _ = m(x)
            with torch.no_grad():
                m.bias_hh_l0.add_(1.0)
            y.sum().backward()
        torch.testing.assert_close(mine.bias_hh_l0.grad, ref.bias_hh_l0.grad, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(mine.weight_hh_l0.grad, ref.weight_hh_l0.grad, atol=1e-10, rtol=1e-10)


def test_a_changed_weight_after_forward_is_rejected_as_torch_does():
    m = gnn.LSTM(I, H, dtype=torch.float64, backend="numpy")
    y, _ = m(torch.randn(T, B, I, dtype=torch.float64))
    with torch.no_grad():
        m.weight_hh_l0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_none_gradients_where_torch_gives_none():
    """A 2-layer projected LSTM at T = 1 with a loss on c_n alone: W_hr of the last layer is
    unreached, so its .grad stays None, as in torch.nn (optimizers treat None and 0 differently)."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2, dtype=torch.float64)
    mine = gnn.LSTM(3, 4, num_layers=2, proj_size=2, dtype=torch.float64, backend="numpy")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    for m in (ref, mine):
        _, (h, c) = m(x)
        c[1].sum().backward()
    for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=1e-12)
    assert mine.weight_hr_l1.grad is None


def test_a_lost_tape_reruns_the_forward_or_refuses_a_changed_bias(monkeypatch):
    """A saved-tensor hook that copies (offloading to the host) loses the engine's tape: backward
    reruns the forward, with the gradients of torch.nn; a bias changed in place meanwhile is
    refused instead of giving other gradients."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")   # (the suite's default; the engine's tape is tested)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, dtype=torch.float64)
    mine = gnn.LSTM(I, H, dtype=torch.float64, backend="numpy")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    copy = dict(pack_hook=lambda t: t.clone(), unpack_hook=lambda t: t)
    for m in (ref, mine):
        with torch.autograd.graph.saved_tensors_hooks(**copy):
            y, _ = m(x)
        y.pow(2).sum().backward()
    torch.testing.assert_close(mine.weight_hh_l0.grad, ref.weight_hh_l0.grad, atol=1e-12, rtol=1e-12)
    with torch.autograd.graph.saved_tensors_hooks(**copy):
        y, _ = mine(x)
    with torch.no_grad():
        mine.bias_hh_l0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_backward_finds_the_tape_without_reading_the_handle(monkeypatch):
    """The handle (on x's device, so that an offloading hook frees the tape) carries its key as an attribute:
    backward finds the tape without reading the handle's value (on a GPU, a synchronisation) and reruns
    nothing, even when that value no longer names the tape."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    import gpurnn.autograd as ga
    torch.manual_seed(0)
    ref = torch.nn.GRU(I, H, dtype=torch.float64)
    mine = gnn.GRU(I, H, dtype=torch.float64, backend="numpy")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    forwards = []
    engine_forward = ga._engine_forward
    monkeypatch.setattr(ga, "_engine_forward", lambda *a: forwards.append(1) or engine_forward(*a))
    y, _ = mine(x)
    handle = y.grad_fn.saved_tensors[0]
    assert handle.dtype == torch.int64 and handle.device == x.device and ga._TAPES.get(handle.gpurnn_key)
    handle.data.fill_(-1)            # a value no tape has, behind autograd's version check
    y.sum().backward()
    assert len(forwards) == 1
    ref(x)[0].sum().backward()
    torch.testing.assert_close(mine.weight_hh_l0.grad, ref.weight_hh_l0.grad, atol=1e-12, rtol=1e-12)


def test_the_input_is_freed_after_backward_as_with_torch_nn():
    import gc
    import weakref
    m = gnn.GRU(I, H, backend="numpy")
    x = torch.randn(T, B, I).requires_grad_()
    hidden = torch.tanh(x)            # an intermediate the layer reads
    alive = weakref.ref(hidden)
    y, _ = m(hidden)
    loss = y.sum()
    del hidden
    loss.backward()
    gc.collect()
    assert alive() is None   # loss (and its graph) still alive
