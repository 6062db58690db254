"""gradient_flow against autograd computed independently, the fitted rate, and the command."""
import numpy as np
import pytest
import torch

import gpurnn.nn as gnn
from gpurnn.__main__ import main
from gpurnn.diagnostics import _default_loss, fit_rate, gradient_flow, scale_spectral_radius_
from gpurnn.train import FORGET_BIAS

T, B, IN, HID = 7, 3, 4, 5


def twins(name, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(IN, HID, dtype=torch.float64, **kw)
    mine = getattr(gnn, name)(IN, HID, dtype=torch.float64, backend="numpy", **kw)
    mine.load_state_dict(ref.state_dict())
    return mine, ref


def independent_norms(ref, x):
    """dL_T/dh_t as the gradient w.r.t. the *initial* state of a fresh torch.nn run over
    x[t+1:], started from the (detached) state after step t; c_t, if any, held fixed."""
    with torch.no_grad():
        states = [ref(x[:t + 1])[1] for t in range(T)]
    norms = []
    for t, state in enumerate(states):
        h = (state[0] if isinstance(state, tuple) else state).clone().requires_grad_()
        start = (h, state[1]) if isinstance(state, tuple) else h
        if t == T - 1:
            last = h
        else:
            final = ref(x[t + 1:], start)[1]
            last = final[0] if isinstance(final, tuple) else final
        (grad,) = torch.autograd.grad(_default_loss(last[-1]), h)
        norms.append(float(grad.norm()))
    return np.array(norms)


@pytest.mark.parametrize("name, kw", [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}),
                                      ("GRU", {}), ("GRU", {"num_layers": 2}), ("LSTM", {"batch_first": True})],
                         ids=["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_two_layers", "lstm_batch_first"])
def test_gradient_flow_equals_independent_autograd(name, kw):
    mine, ref = twins(name, **kw)
    x = torch.randn(T, B, IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = gradient_flow(mine, x.transpose(0, 1) if kw.get("batch_first") else x)
    if kw.get("batch_first"):
        ref.batch_first = False   # the reference runs time-major on the same weights
    expected = independent_norms(ref, x)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert got.shape == (T,) and np.all(got > 0)


def test_gradient_flow_leaves_parameter_gradients_alone_and_runs_on_a_frozen_model():
    """It ran loss.backward(): called between a training step's backward and its optimizer step, it added into
    the parameters' .grad; a frozen model (or no_grad) failed in retain_grad."""
    mine, _ = twins("GRU")
    x = torch.randn(T, B, IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = gradient_flow(mine, x)
    for p in mine.parameters():
        p.grad = torch.ones_like(p)
    np.testing.assert_array_equal(gradient_flow(mine, x), expected)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in mine.parameters())
    mine.requires_grad_(False)
    with torch.no_grad():
        np.testing.assert_allclose(gradient_flow(mine, x), expected, rtol=1e-12)


def test_gradient_flow_of_jordan_state():
    """Jordan's carried state is s; the reference restarts the same module from s_t."""
    torch.manual_seed(0)
    model = gnn.JordanRNN(IN, HID, 3, decay=0.4, dtype=torch.float64, backend="numpy")
    x = torch.randn(T, B, IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = gradient_flow(model, x)
    expected = []
    for t in range(T):
        with torch.no_grad():
            s = model(x[:t + 1])[1]
        s = s.clone().requires_grad_()
        last = s if t == T - 1 else model(x[t + 1:], s)[1]
        expected.append(float(torch.autograd.grad(_default_loss(last), s)[0].norm()))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5])
def test_linear_regime_rate_is_the_spectral_radius(radius):
    """No input and h = 0: tanh' = 1, so dL_T/dh_t = (W_hh^T)^(T-t) u. With W_hh = r Q
    (Q orthogonal) every norm is exactly r^(T-t) |u|, and the fitted factor is r."""
    torch.manual_seed(0)
    rnn = gnn.RNN(IN, 16, bias=False, dtype=torch.float64, backend="numpy")
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    with torch.no_grad():
        rnn.weight_ih_l0.zero_()
        rnn.weight_hh_l0.copy_(q)
    scale_spectral_radius_(rnn.weight_hh_l0, radius)
    assert torch.linalg.eigvals(rnn.weight_hh_l0).abs().max().item() == pytest.approx(radius, rel=1e-12)
    norms = gradient_flow(rnn, torch.zeros(30, 2, IN, dtype=torch.float64))
    np.testing.assert_allclose(norms[:-1] / norms[1:], radius, rtol=1e-12)
    assert fit_rate(norms) == pytest.approx(radius, rel=1e-12)


def test_fit_rate_skips_underflow():
    norms = 3.0 * 0.7 ** np.arange(40)[::-1]
    norms[:5] = 0.0   # the longest lags underflowed
    assert fit_rate(norms) == pytest.approx(0.7, rel=1e-12)


def test_fit_rate_takes_a_list_and_names_a_table():
    assert fit_rate(list(3.0 * 0.7 ** np.arange(10)[::-1])) == pytest.approx(0.7, rel=1e-12)
    with pytest.raises(ValueError, match=r"norms: expected a 1-D sequence .*got shape \(2, 5\)"):
        fit_rate(np.ones((2, 5)))


def test_gradient_flow_inside_inference_mode_says_so():
    """enable_grad does not leave inference mode: autograd then said that a tensor "does not require grad"."""
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        gradient_flow(gnn.GRU(IN, HID), torch.zeros(T, B, IN))


def test_gradient_flow_rejects_bidirectional():
    with pytest.raises(ValueError, match="expected a unidirectional model"):
        gradient_flow(gnn.GRU(IN, HID, bidirectional=True), torch.zeros(T, B, IN))


def test_gradflow_command_writes_png_and_prints_rates(tmp_path, capsys):
    out = tmp_path / "flow.png"
    main(["gradflow", "--out", str(out), "--steps", "25", "--hidden", "12", "--batch", "4"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    labels = [row.split(" x")[0].strip() for row in rows]
    assert labels == [f"tanh RNN, radius {r}" for r in ("0.5", "0.9", "1", "1.1", "1.5")] + \
        ["LSTM (torch init)", "GRU (torch init)", f"LSTM (forget bias {FORGET_BIAS:g})"]
    rates = [float(row.split(" x")[1].split()[0]) for row in rows]
    # the demo's tanh RNN at radius 0.5 is near-linear: its gradient shrinks at about 0.5 per step
    assert 0.3 < rates[0] < 0.6 and all(0 < r < 10 for r in rates)


def test_gradient_flow_needs_a_step():
    with pytest.raises(ValueError, match=r"x: expected at least one step, got shape \(0, 2, 3\)"):
        gradient_flow(gnn.GRU(3, 4), torch.zeros(0, 2, 3))


@pytest.mark.parametrize("model, x, error, words", [
    ("not a model", torch.zeros(T, B, IN), TypeError, "model: expected a recurrent torch module, got str"),
    (None, np.zeros((T, B, IN)), TypeError, "x: expected a 3-D tensor (T, B, I), got ndarray"),
    (None, torch.zeros(T, IN), ValueError, f"x: expected a 3-D tensor (T, B, I), got shape ({T}, {IN})"),
])
def test_gradient_flow_names_a_bad_argument(model, x, error, words):
    with pytest.raises(error) as info:
        gradient_flow(gnn.GRU(IN, HID) if model is None else model, x)
    assert str(info.value) == words


@pytest.mark.parametrize("weight, error, words", [
    (torch.zeros(3, 3), ValueError, "weight: expected a finite, nonzero spectral radius to scale, got 0.0"),
    (torch.zeros(3, 2), ValueError, "weight: expected a square 2-D tensor, got shape (3, 2)"),
    (np.eye(3), TypeError, "weight: expected a square 2-D tensor, got ndarray"),
])
def test_scale_spectral_radius_names_a_weight_it_cannot_scale(weight, error, words):
    with pytest.raises(error) as info:
        scale_spectral_radius_(weight, 1.0)
    assert str(info.value) == words


def test_gradient_flow_and_fit_rate_name_a_bad_argument():
    with pytest.raises(TypeError, match="loss_fn: expected a callable or None, got int"):
        gradient_flow(gnn.GRU(IN, HID), torch.zeros(T, B, IN), loss_fn=3)
    with pytest.raises(TypeError, match="norms: expected a 1-D sequence of numbers, got str"):
        fit_rate("abc")
