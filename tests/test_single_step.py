"""Single steps (T=1: autoregressive generation, a decoder stepped by hand) run as the torch loop, with
gradient or without: the same bits either way, as torch.nn gives, and torch.nn's results and gradients."""
import pytest
import torch

import gpurnn.nn as gnn

MODULES = {"rnn_relu": ("RNN", {"nonlinearity": "relu"}), "lstm_proj_bidir": ("LSTM", {"proj_size": 3, "bidirectional": True}),
           "gru_2layers": ("GRU", {"num_layers": 2}), "lstm": ("LSTM", {})}
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", TOL, ids=["f32", "f64"])
@pytest.mark.parametrize("name", MODULES)
def test_one_step_matches_torch_with_and_without_grad(name, dtype):
    kind, kw = MODULES[name]
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 5, dtype=dtype, **kw)
    mine = getattr(gnn, kind)(4, 5, dtype=dtype, backend="numpy", **kw)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 4, dtype=dtype)
    with torch.no_grad():
        want, got = ref(x), mine(x)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    graded, ref_graded = mine(xs[0]), ref(xs[1])
    leaves = torch.utils._pytree.tree_leaves
    for a, b, c in zip(leaves(want), leaves(got), leaves(graded)):
        torch.testing.assert_close(b, a, atol=TOL[dtype], rtol=TOL[dtype])
        assert torch.equal(c.detach(), b)   # autograd on or off: the same bits
    for out in (graded, ref_graded):
        sum((t * t).sum() for t in leaves(out)).backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=TOL[dtype], rtol=TOL[dtype])
    for (n, p), q in zip(mine.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=TOL[dtype], rtol=TOL[dtype], msg=n)


def test_an_elman_or_gru_step_is_torch_nn_s_own_call(monkeypatch):
    """One step of an RNN or GRU on the CPU runs torch.nn's forward (faster than gpurnn's front end there); longer
    inputs and an LSTM's step run gpurnn's layers (on the engine's route: torch's route runs torch.nn's forward)."""
    from gpurnn.autograd import run_layers
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    from gpurnn.nn import rnn
    calls = []
    monkeypatch.setattr(rnn, "run_layers", lambda *a, **k: calls.append(a[0]) or run_layers(*a, **k))
    for module, x in ((gnn.GRU(4, 5), torch.randn(1, 3, 4)), (gnn.RNN(4, 5, batch_first=True), torch.randn(3, 1, 4)),
                      (gnn.RNN(4, 5), torch.randn(1, 4))):
        module(x)
    assert calls == []
    gnn.GRU(4, 5)(torch.randn(2, 3, 4))
    gnn.LSTM(4, 5)(torch.randn(1, 3, 4))
    assert calls == ["gru", "lstm"]


@pytest.mark.parametrize("name, shape", [("GRUCell", (3, 4)), ("LSTMCell", (3, 4)), ("RNN", (1, 3, 4)), ("GRU", (1, 3, 4))])
def test_a_random_parametrization_is_drawn_as_often_as_by_torch_nn(name, shape):
    """Weight dropout as a parametrization: each read of the weight draws anew, so a step must read it as often as
    torch.nn does to use the same weights."""
    import torch.nn.utils.parametrize as parametrize

    class Drop(torch.nn.Module):
        def forward(self, w):
            return torch.nn.functional.dropout(w, 0.5, training=True)

    ref, mine = getattr(torch.nn, name)(4, 5), getattr(gnn, name)(4, 5)
    mine.load_state_dict(ref.state_dict())
    for m in (ref, mine):
        parametrize.register_parametrization(m, "weight_ih" if "Cell" in name else "weight_ih_l0", Drop())
    x = torch.randn(shape)
    outs = []
    for m in (ref, mine):
        torch.manual_seed(1)
        outs.append(torch.utils._pytree.tree_leaves(m(x)))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a)
