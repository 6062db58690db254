"""The plain-array API: NumPy in, NumPy out, against torch.nn and the Jordan reference loop."""
import numpy as np
import pytest
import torch

import gpurnn.functional as F
from jordan_reference import jordan_reference

T, B, I, H = 5, 3, 4, 6
TWINS = {"rnn": lambda: torch.nn.RNN(I, H, dtype=torch.float64),
         "lstm": lambda: torch.nn.LSTM(I, H, proj_size=2, dtype=torch.float64),
         "gru": lambda: torch.nn.GRU(I, H, dtype=torch.float64)}


def np_weights(ref):
    names = {"weight_ih_l0": "w_ih", "weight_hh_l0": "w_hh", "bias_ih_l0": "b_ih", "bias_hh_l0": "b_hh",
             "weight_hr_l0": "w_hr"}
    return {names[n]: p.detach().numpy() for n, p in ref.named_parameters()}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", TWINS)
def test_forward_backward_match_torch(cell, reverse):
    torch.manual_seed(0)
    ref = TWINS[cell]()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y_ref, state_ref = ref(x.flip(0) if reverse else x)
    y_ref = y_ref.flip(0) if reverse else y_ref
    state_ref = state_ref if isinstance(state_ref, tuple) else (state_ref,)
    dy = torch.randn_like(y_ref)
    ((y_ref * dy).sum() + sum(s.sum() for s in state_ref)).backward()

    y, state, tape = F.forward(cell, x.detach().numpy(), np_weights(ref), reverse=reverse)
    dx, dstate0, grads = F.backward(tape, dy.numpy(), tuple(np.ones_like(s) for s in state))
    np.testing.assert_allclose(y, y_ref.detach().numpy(), atol=1e-12)
    for s, s_ref in zip(state, state_ref):
        np.testing.assert_allclose(s, s_ref[0].detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dx, x.grad.numpy(), atol=1e-12)
    ref_grads = {k: p.grad.numpy() for k, p in zip(np_weights(ref), ref.parameters())}
    for name, g in grads.items():
        if name in ref_grads:
            np.testing.assert_allclose(g, ref_grads[name], atol=1e-12, err_msg=name)
        else:
            assert g is None, name


def test_variable_lengths_match_separate_runs():
    """batch_sizes [3,3,2,1,1]: each row equals running its own prefix alone."""
    rng = np.random.default_rng(0)
    w = {"w_ih": rng.standard_normal((3 * H, I)), "w_hh": rng.standard_normal((3 * H, H)) * 0.3,
         "b_ih": rng.standard_normal(3 * H), "b_hh": rng.standard_normal(3 * H)}
    x = rng.standard_normal((T, B, I))
    sizes, lengths = [3, 3, 2, 1, 1], [5, 3, 2]
    for reverse in (False, True):
        y, (h,), _ = F.forward("gru", x, w, batch_sizes=sizes, reverse=reverse)
        for b, L in enumerate(lengths):
            y_b, (h_b,), _ = F.forward("gru", x[:L, b:b + 1], w, reverse=reverse)
            np.testing.assert_allclose(y[:L, b], y_b[:, 0], atol=1e-12)
            np.testing.assert_allclose(h[b], h_b[0], atol=1e-12)
            assert np.all(y[L:, b] == 0)


@pytest.mark.parametrize("act", ["identity", "softmax"])
def test_jordan_matches_reference_loop(act):
    rng = np.random.default_rng(1)
    O = 3
    w = {"w_ih": rng.standard_normal((H, I)), "w_sh": rng.standard_normal((H, O)), "b_h": rng.standard_normal(H),
         "w_ho": rng.standard_normal((O, H)), "b_o": rng.standard_normal(O), "decay": np.array([0.1, 0.5, 0.9])}
    x, teacher = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, O))
    y, (s,), _ = F.forward("jordan", x, w, output_activation=act, teacher=teacher)
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    y_ref, s_ref = jordan_reference(torch.from_numpy(x), torch.zeros(B, O, dtype=torch.float64), t["w_ih"],
                                    t["w_sh"], t["b_h"], t["w_ho"], t["b_o"], t["decay"],
                                    output_activation=act, teacher=torch.from_numpy(teacher))
    np.testing.assert_allclose(y, y_ref.numpy(), atol=1e-12)
    np.testing.assert_allclose(s, s_ref.numpy(), atol=1e-12)


def test_float16_computes_in_float32():
    rng = np.random.default_rng(2)
    w = {"w_ih": rng.standard_normal((4 * H, I)), "w_hh": rng.standard_normal((4 * H, H))}
    x = rng.standard_normal((T, B, I))
    w16 = {k: v.astype(np.float16) for k, v in w.items()}
    y16, (h16, c16), tape = F.forward("lstm", x.astype(np.float16), w16)
    w32 = {k: v.astype(np.float32) for k, v in w16.items()}   # same rounded inputs
    y32, _, tape32 = F.forward("lstm", x.astype(np.float16).astype(np.float32), w32)
    assert y16.dtype == h16.dtype == c16.dtype == np.float16
    np.testing.assert_array_equal(y16, y32.astype(np.float16))   # only the final rounding differs
    dx16, _, g16 = F.backward(tape, np.ones_like(y16))
    dx32, _, g32 = F.backward(tape32, np.ones_like(y32))
    assert dx16.dtype == g16["w_hh"].dtype == np.float16
    np.testing.assert_array_equal(g16["w_hh"], g32["w_hh"].astype(np.float16))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])   # f32: the compiled step
@pytest.mark.parametrize("proj", [False, True], ids=["plain", "proj"])
@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
def test_inference_forward_matches_training_forward(packed, proj, dtype):
    """for_backward=False skips the LSTM loop's backward data but not one output value; backward then raises."""
    ref = torch.nn.LSTM(I, H, proj_size=2 if proj else 0, dtype=torch.float64)
    w = {k: v.astype(dtype) for k, v in np_weights(ref).items()}
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(dtype)
    sizes = [3, 3, 2, 1, 1] if packed else None
    y, state, _ = F.forward("lstm", x, w, batch_sizes=sizes)
    y_inf, state_inf, tape = F.forward("lstm", x, w, batch_sizes=sizes, for_backward=False)
    np.testing.assert_array_equal(y_inf, y)
    for s, s_inf in zip(state, state_inf):
        np.testing.assert_array_equal(s_inf, s)
    with pytest.raises(RuntimeError, match="for_backward=False"):
        F.backward(tape, np.ones_like(y))


def test_module_under_no_grad_matches_torch():
    """torch.no_grad runs the inference loop; outputs still match torch.nn."""
    import gpurnn.nn as gnn

    ref = torch.nn.LSTM(I, H, num_layers=2, dtype=torch.float64)
    mod = gnn.LSTM(I, H, num_layers=2, dtype=torch.float64, backend="numpy")
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        (y, (h, c)), (y_ref, (h_ref, c_ref)) = mod(x), ref(x)
    for a, b in ((y, y_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_backward_after_an_inference_forward_raises_for_every_cell(cell):
    w = np_weights(TWINS[cell]())
    y, _, tape = F.forward(cell, np.ones((T, B, I)), w, for_backward=False)
    with pytest.raises(RuntimeError, match="for_backward=False"):
        F.backward(tape, np.ones_like(y))


def test_a_second_backward_does_not_read_c0_again():
    """The second backward reruns the LSTM forward loop; it starts from the c0 of the forward
    even if the caller has since changed that array (B=1: c0.T is contiguous, no copy by itself)."""
    ref = torch.nn.LSTM(I, H, dtype=torch.float64)
    rng = np.random.default_rng(2)
    x, h0, c0 = rng.standard_normal((T, 1, I)), rng.standard_normal((1, H)), rng.standard_normal((1, H))
    y, _, tape = F.forward("lstm", x, np_weights(ref), (h0, c0))
    first = F.backward(tape, np.ones_like(y))[2]
    c0 += 1
    second = F.backward(tape, np.ones_like(y))[2]
    for name in first:
        if first[name] is not None:
            np.testing.assert_array_equal(second[name], first[name], err_msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_gate_far_below_0_gives_no_numpy_warning(cell, recwarn):
    """The gates' sigmoid is 1/(1 + e^-a): e^-a overflows to inf there, and the gate is 0 as in torch, silently."""
    gates = 4 if cell == "lstm" else 3
    x = np.full((2, 1, 1), 1e3)   # float64: the NumPy loops (float32 LSTMs run step.c)
    weights = {"w_ih": np.full((gates * 2, 1), -1.0), "w_hh": np.zeros((gates * 2, 2))}
    y, _, _ = F.forward(cell, x, weights)
    assert np.isfinite(y).all() and not recwarn.list


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_inf_in_padded_rows_or_weights_gives_no_numpy_warning(cell, recwarn):
    """As under the torch front end: NumPy's "invalid value encountered" warned where every result was right."""
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3))
    x[2:, 1] = np.inf   # past the second sequence's length
    weights = {"w_ih": rng.standard_normal((gates * 5, 3)), "w_hh": rng.standard_normal((gates * 5, 5))}
    y, _, tape = F.forward(cell, x, weights, batch_sizes=[2, 2, 1, 1])
    dx, _, _ = F.backward(tape, np.ones_like(y))
    assert np.isfinite(y).all() and np.isfinite(dx).all() and not recwarn.list
    F.backward(F.forward(cell, x, {**weights, "w_hh": np.full_like(weights["w_hh"], np.inf)})[2], np.ones_like(y))
    assert not recwarn.list


@pytest.mark.parametrize("layout", ["flipped", "read-only"])
def test_a_gru_backward_takes_dy_in_any_numpy_layout(layout, recwarn):
    """Copied through torch (loaded here): a negative stride NumPy calls contiguous (along a length-1 axis) raised
    torch's "negative strides are not currently supported", and read-only memory its non-writable warning."""
    rng = np.random.default_rng(0)
    weights = {"w_ih": rng.standard_normal((6, 2)), "w_hh": rng.standard_normal((6, 2))}
    _, _, tape = F.forward("gru", rng.standard_normal((4, 1, 2)), weights)
    dy = rng.standard_normal((4, 1, 2))
    want = F.backward(tape, dy.copy())
    if layout == "flipped":
        dy = np.flip(dy, axis=1)   # (the same values: the axis has length 1)
    else:
        dy.flags.writeable = False
    got = F.backward(tape, dy)
    np.testing.assert_array_equal(got[0], want[0])
    for name, grad in want[2].items():
        np.testing.assert_array_equal(got[2][name], grad, err_msg=name)
    assert not recwarn.list
