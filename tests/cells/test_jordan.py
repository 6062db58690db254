"""JordanRNN against the plain torch loop of its equations, and its module conventions."""
import numpy as np
import pytest
import torch

import gpurnn.nn as gnn
from jordan_reference import jordan_reference

ACTS = ("identity", "tanh", "sigmoid", "softmax")


def make(output_activation="identity", nonlinearity="tanh", bias=True, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return gnn.JordanRNN(4, 6, 3, nonlinearity=nonlinearity, output_activation=output_activation,
                         decay=torch.tensor([0.0, 0.5, 1.0]), bias=bias, dtype=dtype, backend="numpy", **kw)


def params(m):
    return [m.weight_ih, m.weight_sh, m.bias_h, m.weight_ho, m.bias_o, m.decay]


@pytest.mark.parametrize("teacher", [False, True], ids=["free", "teacher"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_reference_loop(act, nonlinearity, bias, teacher, dtype):
    m = make(act, nonlinearity, bias, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, 4, generator=g, dtype=dtype, requires_grad=True)
    s0 = torch.randn(5, 3, generator=g, dtype=dtype, requires_grad=True)
    tf = torch.randn(7, 5, 3, generator=g, dtype=dtype) if teacher else None
    dy, ds = torch.randn(7, 5, 3, generator=g, dtype=dtype), torch.randn(5, 3, generator=g, dtype=dtype)
    results = []
    for fn in (lambda: m(x, s0, tf), lambda: jordan_reference(x, s0, *params(m), nonlinearity, act, tf)):
        m.zero_grad()
        x.grad = s0.grad = None
        y, s = fn()
        ((y * dy).sum() + (s * ds).sum()).backward()
        results.append([y, s, x.grad, s0.grad] + [p.grad for p in m.parameters()])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for mine, ref in zip(*results):
        torch.testing.assert_close(mine, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("teacher", [False, True], ids=["free", "teacher"])
def test_a_frozen_module_gives_the_input_and_state_gradients(teacher):
    """No weight needs a gradient: backward skips their GEMMs, and x and s0 get the reference loop's gradients."""
    m = make("softmax").requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    tf = torch.randn(7, 5, 3, generator=g, dtype=torch.float64) if teacher else None
    found = []
    for fn in (lambda: m(x, s0, tf), lambda: jordan_reference(x, s0, *params(m), "tanh", "softmax", tf)):
        y, s = fn()
        found.append(torch.autograd.grad((y * y).sum() + s.sum(), [x, s0]))
    assert all(p.grad is None for p in m.parameters())
    torch.testing.assert_close(found[0], found[1], atol=1e-10, rtol=1e-10)


def test_a_teacher_that_requires_grad_gets_its_gradient():
    """s_{t+1} = decay s_t + teacher_t: the gradient reaches the teacher (it was detached)."""
    m = make("tanh")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 5, 4, generator=g, dtype=torch.float64)
    tf = torch.randn(7, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    grads = []
    for fn in (lambda: m(x, teacher=tf), lambda: jordan_reference(x, torch.zeros(5, 3, dtype=torch.float64),
                                                                   *params(m), "tanh", "tanh", tf)):
        y, s = fn()
        grads.append(torch.autograd.grad(y.sum() + s.sum(), tf)[0])
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-10)


def test_a_gradient_penalty_under_a_fixed_teacher_is_the_reference_loops():
    """With a teacher that needs no grad, s_T depends on no parameter: double backward asked autograd for its graph
    ("element 1 of tensors does not require grad")."""
    m = make("tanh")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, 4, generator=g, dtype=torch.float64)
    tf = torch.randn(6, 5, 3, generator=g, dtype=torch.float64)
    penalties = []
    for fn in (lambda: m(x, teacher=tf), lambda: jordan_reference(x, torch.zeros(5, 3, dtype=torch.float64),
                                                                   *params(m), "tanh", "tanh", tf)):
        y, s = fn()
        grads = torch.autograd.grad(y.pow(2).sum() + s.sum(), list(m.parameters()), create_graph=True)
        penalties.append(torch.autograd.grad(sum(t.pow(2).sum() for t in grads), m.weight_ih)[0])
    torch.testing.assert_close(penalties[0], penalties[1], atol=1e-10, rtol=1e-10)


def test_batch_first_unbatched_and_defaults():
    m = make("tanh", batch_first=True)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    y, s = m(x)
    y_ref, s_ref = jordan_reference(x.transpose(0, 1), torch.zeros(2, 3, dtype=torch.float64), *params(m),
                                    output_activation="tanh")
    torch.testing.assert_close(y, y_ref.transpose(0, 1), atol=1e-12, rtol=0)
    torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=0)
    y1, s1 = m(x[0])
    torch.testing.assert_close(y1, y[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(s1, s[0], atol=1e-12, rtol=0)


def test_parameters_buffer_and_state_dict():
    m = make()
    assert [n for n, _ in m.named_parameters()] == ["weight_ih", "weight_sh", "bias_h", "weight_ho", "bias_o"]
    assert [n for n, _ in m.named_buffers()] == ["decay"]
    assert m.weight_ih.shape == (6, 4) and m.weight_sh.shape == (6, 3) and m.weight_ho.shape == (3, 6)
    other = gnn.JordanRNN(4, 6, 3, decay=0.9, dtype=torch.float64)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.decay, m.decay)
    assert gnn.JordanRNN(4, 6, 3).decay.tolist() == [0.5] * 3


def test_bfloat16_with_teacher_runs_in_float32():
    m = make("tanh", dtype=torch.float32)
    m16 = gnn.JordanRNN(4, 6, 3, output_activation="tanh", dtype=torch.bfloat16, backend="numpy")
    m16.load_state_dict(m.state_dict())
    x, teacher = torch.randn(5, 2, 4), torch.randn(5, 2, 3)
    y16, s16 = m16(x.bfloat16(), teacher=teacher.bfloat16())
    y, s = m(x.bfloat16().float(), teacher=teacher.bfloat16().float())
    assert y16.dtype == s16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y, atol=2e-2, rtol=2e-2)   # bf16 weights and output rounding


def test_in_place_change_before_backward_is_an_error():
    m = make()
    x = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)
    y, _ = m(x * 1.0)
    with torch.no_grad():
        m.weight_ih.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_an_integer_decay_is_a_float_buffer():
    a = gnn.JordanRNN(4, 6, 3, decay=1)
    assert a.decay.dtype == torch.get_default_dtype()
    b = gnn.JordanRNN(4, 6, 3, decay=0.5)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a.decay, torch.full((3,), 0.5))


def test_a_loaded_decay_outside_the_unit_interval_is_refused():
    """As the constructor refuses it: outside [0, 1] the state grows without bound (2: about 3e14 in 50 steps)."""
    model = torch.nn.Sequential(gnn.JordanRNN(4, 6, 3))
    state = model.state_dict()
    state["0.decay"] = torch.tensor([0.5, 2.0, 0.1])
    with pytest.raises(ValueError, match=r"state_dict\['0.decay'\]: expected values in \[0, 1\], got values in "
                                         r"\[0.1.*, 2.0\]"):
        model.load_state_dict(state)
    state["0.decay"] = torch.tensor([0.5, 1.0, 0.0])
    model.load_state_dict(state)
    assert torch.equal(model[0].decay, state["0.decay"])


def test_a_decay_given_with_autograd_history_becomes_a_plain_buffer():
    import copy

    model = gnn.JordanRNN(4, 6, 3, decay=torch.tensor(0.5, requires_grad=True) * 1)
    assert model.decay.grad_fn is None and not model.decay.requires_grad
    assert torch.equal(copy.deepcopy(model).decay, model.decay)   # deepcopy refuses non-leaf tensors


def test_a_decay_that_requires_grad_gets_its_gradient():
    """decay is a buffer; made to require grad (a learned leak), it got no gradient past one step (silently None)."""
    m = make("tanh")
    m.decay.requires_grad_()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    grads = []
    for fn in (lambda: m(x), lambda: jordan_reference(x, torch.zeros(2, 3, dtype=torch.float64), *params(m),
                                                      "tanh", "tanh")):
        y, s = fn()
        grads.append(torch.autograd.grad(y.sum() + s.sum(), m.decay)[0])
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-10)


F64 = torch.float64


@pytest.mark.parametrize("name,value,error,words", [
    ("weight_sh", torch.zeros(6, 4, dtype=F64), ValueError, r"weight_sh: expected shape \(6, 3\), got \(6, 4\)"),
    ("weight_ho", torch.zeros(6, 3, dtype=F64), ValueError, r"weight_ho: expected shape \(3, 6\), got \(6, 3\)"),
    ("decay", torch.zeros(4, dtype=F64), ValueError, r"decay: expected shape \(3,\), got \(4,\)"),
    ("bias_h", torch.zeros(1, dtype=F64), ValueError, r"bias_h: expected shape \(6,\), got \(1,\)"),
    ("weight_ho", torch.zeros(3, 6, dtype=torch.float32), TypeError, r"weight_ho: expected dtype torch.float64"),
    ("bias_o", torch.zeros(3, dtype=F64, device="meta"), ValueError, r"bias_o: expected device cpu"),
])
@pytest.mark.parametrize("steps", [1, 3])
def test_weights_of_another_shape_dtype_or_device_are_named(name, value, error, words, steps):
    """Through functional_call (or an assigned Parameter): the engine once failed deep inside NumPy, broadcast a
    bias or a decay, or cast a weight, and a one-step call raised torch's matmul error."""
    m = make()
    with pytest.raises(error, match=words):
        torch.func.functional_call(m, {name: value}, (torch.randn(steps, 2, 4, dtype=torch.float64),))


@pytest.mark.parametrize("name", ["s0", "teacher"])
def test_a_state_or_teacher_on_another_device_is_named(name):
    m = make()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    other = torch.zeros(3, 2, 3, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match=f"{name}: expected device cpu"):
        m(x, **{name: other[0] if name == "s0" else other})


@pytest.mark.parametrize("decay", [np.float32(0.25), np.array([0.5, 0.25, 1.0]), np.int64(1)])
def test_numpy_numbers_and_arrays_are_decays(decay):
    m = gnn.JordanRNN(4, 6, 3, decay=decay)
    torch.testing.assert_close(m.decay, torch.as_tensor(decay, dtype=torch.float32).expand(3))


def test_under_autocast_a_sequence_is_its_steps_chained():
    """In the module's dtype at every length (the engine has no mixed precision): one step, run as torch ops, once
    gave a bfloat16 output where a longer sequence gave float32."""
    m = make(dtype=torch.float32)
    x = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = m(x)
        steps, state = [], None
        for t in range(3):
            y_t, state = m(x[t:t + 1], state)
            steps.append(y_t)
    assert y.dtype == s.dtype == torch.float32
    torch.testing.assert_close(torch.cat(steps), y)
    torch.testing.assert_close(state, s)


@pytest.mark.parametrize("changed", ["input", "weight_ih", "weight_sh", "weight_ho", "bias_h", "bias_o"])
def test_a_bfloat16_layer_refuses_an_in_place_change_where_float32_does(changed):
    """bfloat16 runs on float32 copies: its originals are saved as the float32 engine saves the tensors it reads
    (not the biases), so the same in-place changes fail before backward (weight_ho ran, bias_o failed)."""
    outcomes = []
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        m = gnn.JordanRNN(4, 6, 3).to(dtype)
        x = torch.randn(5, 2, 4, dtype=dtype, requires_grad=True) * 1
        y, _ = m(x)
        with torch.no_grad():
            (x if changed == "input" else getattr(m, changed)).add_(1)
        try:
            y.float().sum().backward()
            outcomes.append("runs")
        except RuntimeError as err:
            assert "modified by an inplace operation" in str(err)
            outcomes.append("raises")
    assert outcomes[1] == outcomes[0]
