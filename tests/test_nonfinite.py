"""Non-finite and saturated values through the engine (tests/conftest.py forces it on the CPU), against torch.nn:
the same NaN, inf and zero entries, not NaN from a product of 0 and inf, and relative accuracy where a sigmoid
output is tiny. (The Triton kernels: tests/kernels/test_nonfinite.py.)"""
import pytest
import torch

import gpurnn.nn as gnn


def _twins(kind, *args, backend="numpy", **kw):
    theirs = getattr(torch.nn, kind)(*args, dtype=torch.float64, **kw)
    ours = getattr(gnn, kind)(*args, dtype=torch.float64, backend=backend, **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _grads(module, x, *state):
    x = x.clone().requires_grad_()
    y, _ = module(x, *state)
    (y.data if hasattr(y, "batch_sizes") else y).sum().backward()
    return [x.grad, *(p.grad for p in module.parameters())]


def test_a_dead_relu_unit_passes_no_inf_gradient():
    dead_relu_case("numpy")


def dead_relu_case(backend):
    """h_1 = relu(-1) = 0 while dh_1 is inf (W_hh = 1e200): torch's gradient there is 0, a product with a 0/1
    mask made every weight gradient NaN."""
    modules = _twins("RNN", 1, 1, nonlinearity="relu", backend=backend)
    with torch.no_grad():
        modules[0].weight_ih_l0.fill_(1.0)
        modules[0].weight_hh_l0.fill_(1e200)
        modules[0].bias_ih_l0.zero_()
        modules[0].bias_hh_l0.zero_()
    modules[1].load_state_dict(modules[0].state_dict())
    x = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64).view(3, 1, 1)
    theirs, ours = (_grads(m, x) for m in modules)
    assert not any(g.isnan().any() for g in theirs)
    torch.testing.assert_close(ours, theirs)


def test_a_jordan_dead_relu_unit_passes_no_inf_gradient():
    """The same through JordanRNN, against its equations in torch ops: the output feeds back with weight 1e200."""
    torch.manual_seed(0)
    module = gnn.JordanRNN(1, 1, 1, nonlinearity="relu", decay=0.0, dtype=torch.float64)
    with torch.no_grad():
        for p, value in zip(module.parameters(), (1.0, 1e200, 0.0, 1.0, 0.0)):   # W_ih, W_sh, b_h, W_ho, b_o
            p.fill_(value)
    x = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64).view(3, 1, 1)

    def reference(x):
        s, ys = torch.zeros(1, 1, dtype=torch.float64), []
        for t in range(3):
            h = torch.relu(x[t] @ module.weight_ih.T + s @ module.weight_sh.T + module.bias_h)
            ys.append(h @ module.weight_ho.T + module.bias_o)
            s = ys[-1]
        return torch.stack(ys)

    grads = []
    for run in (reference, lambda x: module(x)[0]):
        xg = x.clone().requires_grad_()
        run(xg).sum().backward()
        grads.append(xg.grad)
    torch.testing.assert_close(grads[1], grads[0], equal_nan=True)
    assert grads[1][0].item() == 0.0   # the dead step


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jordan_sigmoid_output_is_accurate_when_tiny(dtype):
    """sigmoid(-25) is 1.4e-11: computed through tanh it was 0 in float32, and a log loss on it had a NaN gradient."""
    module = gnn.JordanRNN(2, 3, 2, output_activation="sigmoid", dtype=dtype)
    with torch.no_grad():
        module.bias_o.fill_(-25.0)
        module.weight_ho.mul_(1e-3)
    x = torch.randn(4, 1, 2, dtype=dtype)
    y, _ = module(x)
    with torch.no_grad():
        s, want = torch.zeros(1, 2, dtype=dtype), []
        for t in range(4):
            h = torch.tanh(x[t] @ module.weight_ih.T + s @ module.weight_sh.T + module.bias_h)
            want.append(torch.sigmoid(h @ module.weight_ho.T + module.bias_o))
            s = module.decay * s + want[-1]
    torch.testing.assert_close(y, torch.stack(want), rtol=1e-5, atol=0)


def test_bias_gradients_over_a_million_rows_keep_float32_accuracy():
    """The bias gradient sums T*B rows: one after another, its relative error was 2e-5 at a million (torch: 5e-8)."""
    torch.manual_seed(0)
    reference, ours = _twins("RNN", 2, 4)
    ours.float()
    x = torch.randn(2048, 512, 2, dtype=torch.float64)
    weight = torch.randn(2048, 512, 4, dtype=torch.float64) * 0.01 + 0.003   # an offset: the rows add up
    for module, dtype in ((reference, torch.float64), (ours, torch.float32)):
        (module(x.to(dtype))[0] * weight.to(dtype)).sum().backward()
    want = reference.bias_ih_l0.grad
    assert float((ours.bias_ih_l0.grad.double() - want).norm() / want.norm()) < 2e-6


@pytest.mark.parametrize("kind,dtype,loop", [("LSTM", torch.float32, "compiled"), ("LSTM", torch.float32, "numpy"),
                                             ("LSTM", torch.float64, "numpy"), ("GRU", torch.float32, "numpy"),
                                             ("GRU", torch.float64, "numpy")])
def test_a_gate_far_below_0_keeps_its_relative_accuracy(kind, dtype, loop, monkeypatch):
    """The forget and output gates (LSTM) or both gates (GRU) far below 0 (-20 in float32, -80 in float64; W_hh = 0)
    and a state that large: as torch's 1/(1 + e^-a), each gate is accurate relative to its tiny value, so h, c and
    the gradients match float64 torch.nn. (0.5*tanh(a/2) + 0.5, the loops' sigmoid before, rounded these gates to 0:
    errors as large as each tensor's largest entry.)"""
    monkeypatch.setenv("GPURNN_CPU_KERNEL", "1" if loop == "compiled" else "0")
    gate_far_below_case(kind, dtype, "numpy")


def gate_far_below_case(kind, dtype, backend):
    gate, state = (-20.0, 1e6) if dtype == torch.float32 else (-80.0, 1e36)
    torch.manual_seed(0)
    reference, ours = _twins(kind, 3, 4, backend=backend)
    # torch's gate order: LSTM (i f g o), GRU (r z n); the others at 0, so that no tanh argument is tiny too
    far_below = [1, 3] if kind == "LSTM" else [0, 1]
    with torch.no_grad():
        reference.weight_ih_l0.mul_(0.1)
        reference.weight_hh_l0.zero_()
        for bias in (reference.bias_ih_l0, reference.bias_hh_l0):
            bias.zero_()
            for k in far_below:
                bias[4 * k:4 * k + 4] = gate / 2
    ours.load_state_dict(reference.state_dict())
    ours.to(dtype)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    states = [torch.full((1, 5, 4), state, dtype=torch.float64) for _ in range(2 if kind == "LSTM" else 1)]
    results = []
    for module, dt in ((reference, torch.float64), (ours, dtype)):
        leaves = [t.to(dt).clone().requires_grad_() for t in (x, *states)]
        y, final = module(leaves[0], tuple(leaves[1:]) if kind == "LSTM" else leaves[1])
        finals = final if kind == "LSTM" else (final,)
        (y.sum() + sum(f.sum() for f in finals)).backward()
        results.append([t.double() for t in (y, *finals, *(t.grad for t in leaves[:1 + (kind == "LSTM")]))])
    for want, got in zip(*results):   # relative to each tensor's largest entry: gradients sum terms of both signs
        assert (got - want).abs().max() <= (1e-5 if dtype == torch.float32 else 1e-12) * want.abs().max()


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("loss_on", ["y", "h_n", "c_n"])
@pytest.mark.parametrize("dtype, mkldnn", [(torch.float32, True), (torch.float32, False), (torch.float64, True)])
@pytest.mark.parametrize("route", ["engine", "torch"])
def test_a_nan_input_gives_nan_gradients_where_torch_nns_lstm_does(route, dtype, mkldnn, loss_on, steps, monkeypatch):
    """oneDNN's LSTM (float32) reads every output's gradient, zeros for unused ones: with a NaN gate, a loss on c_n
    alone gives every gate's bias a NaN gradient. At one step gpurnn ran torch's loop, whose graph left h's branch
    (the output gate's) out: 0 there. torch's loop (float64, oneDNN off) gives 0 as well."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    grads = []
    for mod in (torch.nn, gnn):
        torch.manual_seed(0)
        m = mod.LSTM(3, 4, dtype=dtype)
        x = torch.randn(steps, 2, 3, dtype=dtype)
        x[0, 0, 1] = float("nan")
        x.requires_grad_()
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            y, (h, c) = m(x)
            {"y": y, "h_n": h, "c_n": c}[loss_on].sum().backward()
        grads.append([x.grad, *(p.grad for p in m.parameters())])
    for got, want in zip(*grads):
        assert torch.equal(got.isnan(), want.isnan())
