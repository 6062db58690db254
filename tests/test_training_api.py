"""The training tools' API at its edges: gradient tensors to clip, arguments checked at the call, torch.func."""
import collections
import warnings

import numpy as np
import pytest
import torch

import gpurnn.nn as gnn
from gpurnn.training import (clip_grad_norm_, detach_state, sequence_loss, sequence_loss_backward,
                             sequence_loss_forward, split_chunks, truncated_bptt)


def test_gradient_tensors_are_clipped_themselves():
    """As NumPy arrays are: torch's clip_grad_norm_ reads their .grad (None), and nothing was clipped."""
    for wrap in (list, lambda gs: dict(enumerate(gs))):
        grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.0])]
        arrays = [g.numpy().copy() for g in grads]
        total = clip_grad_norm_(wrap(grads), 1.0)
        assert float(total) == float(clip_grad_norm_(wrap(arrays), 1.0)) == 5.0
        for g, a in zip(grads, arrays):
            np.testing.assert_allclose(g.numpy(), a, rtol=1e-6)
        assert float(torch.linalg.vector_norm(torch.cat(grads))) == pytest.approx(1.0, rel=1e-5)


def test_parameters_are_clipped_as_torch_does():
    params = [torch.nn.Parameter(torch.ones(3)) for _ in range(2)]
    twins = [torch.nn.Parameter(torch.ones(3)) for _ in range(2)]
    for p, q in zip(params, twins):
        p.grad, q.grad = torch.full((3,), 2.0), torch.full((3,), 2.0)
    assert clip_grad_norm_(params, 1.0) == torch.nn.utils.clip_grad_norm_(twins, 1.0)
    for p, q in zip(params, twins):
        assert torch.equal(p.grad, q.grad) and torch.equal(p, q)


def test_parameters_and_gradient_tensors_do_not_mix():
    param, grad = torch.nn.Parameter(torch.ones(3)), torch.ones(3)
    with pytest.raises(TypeError, match=r"grads\[1\]: expected a parameter"):
        clip_grad_norm_([param, grad], 1.0)
    with pytest.raises(TypeError, match=r"grads\[1\]: .*got a parameter"):
        clip_grad_norm_([grad, param], 1.0)
    assert torch.equal(grad, torch.ones(3))


@pytest.mark.parametrize("args, kwargs, error, words", [
    ((0, torch.zeros(4)), {}, ValueError, "k: expected an integer >= 1, got 0"),
    ((True, torch.zeros(4)), {}, TypeError, "k: expected an integer, got True"),
    ((2.5, torch.zeros(4)), {}, TypeError, "k: expected an integer, got 2.5"),
    ((2, torch.zeros(4)), {"dim": 1}, ValueError, "dim: expected a dimension of sequences[0] (shape (4,)), got 1"),
    ((2, torch.zeros(())), {}, ValueError, "dim: expected a dimension of sequences[0] (shape ()), got 0"),
])
def test_split_chunks_checks_its_arguments_at_the_call(args, kwargs, error, words):
    with pytest.raises(error) as info:
        split_chunks(*args, **kwargs)   # not iterated: a generator once checked only at the first chunk
    assert str(info.value) == words


def test_split_chunks_takes_a_0d_integer_tensor():
    assert [c[0].tolist() for c in split_chunks(torch.tensor(2), torch.arange(5))] == [[0, 1], [2, 3], [4]]


def test_truncated_bptt_checks_max_norm_before_any_backward():
    model = torch.nn.RNN(2, 3)
    with pytest.raises(TypeError, match="max_norm"):
        truncated_bptt(model, [(torch.randn(4, 1, 2), None)], lambda y, t: y.sum(), max_norm="1")
    assert all(p.grad is None for p in model.parameters())


def test_truncated_bptt_grad_norm_is_a_tensor_without_trainable_parameters():
    model = torch.nn.RNN(2, 3).requires_grad_(False)
    x = torch.randn(4, 1, 2, requires_grad=True)
    (result,) = truncated_bptt(model, [(x, None)], lambda y, t: y.sum(), max_norm=1.0)
    assert isinstance(result.grad_norm, torch.Tensor) and float(result.grad_norm) == 0.0


def test_sequence_loss_under_torch_func():
    torch.manual_seed(0)
    h, weight = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    targets = torch.randint(0, 7, (5, 3))
    got = torch.func.grad(lambda a: sequence_loss(a, weight, None, targets))(h)
    h.requires_grad_()
    logits = (h @ weight.T).reshape(-1, 7)
    (want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, targets.reshape(-1), reduction="sum"), h)
    torch.testing.assert_close(got, want)
    per_row = torch.func.vmap(lambda a, y: sequence_loss(a, weight, None, y))(h.detach(), targets)
    assert per_row.shape == (5,)


def test_gradients_taken_with_create_graph_are_clipped_themselves():
    """They require grad but are no leaves: torch's clip_grad_norm_ read their .grad (None) and clipped nothing."""
    w = torch.randn(3, requires_grad=True)
    (grad,) = torch.autograd.grad((w * w).sum() * 10, w, create_graph=True)
    total = clip_grad_norm_([grad], 1.0)
    assert float(total) > 1 and float(grad.norm()) == pytest.approx(1.0, rel=1e-5)


def test_clipping_a_create_graph_gradient_records_nothing():
    """As torch's clip (under no_grad): the norm has no graph, and a backward through the scaled gradient still
    works (the recorded in-place scaling made it "modified by an inplace operation")."""
    results = []
    for clip in (clip_grad_norm_, _clipped_by_hand):
        w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        (grad,) = torch.autograd.grad((w ** 3).sum(), w, create_graph=True)
        total = clip([grad], 0.5)
        grad.sum().backward()
        assert total.grad_fn is None
        results.append((total, grad, w.grad))
    torch.testing.assert_close(results[0], results[1])


def _clipped_by_hand(grads, max_norm):
    with torch.no_grad():
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        for g in grads:
            g.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


@pytest.mark.parametrize("grads, error, words", [
    ([torch.ones(2, dtype=torch.long)], TypeError, r"grads\[0\]: expected a floating"),
    ([torch.ones(2), torch.ones(2, dtype=torch.int32)], TypeError, r"grads\[1\]: expected a floating"),
    ([np.float64(5.0)], ValueError, r"grads\[0\]: expected a writable array .*got a NumPy scalar \(float64\)"),
    ([np.ma.masked_array(np.ones(2))], TypeError, r"grads\[0\]: expected a NumPy or CuPy array, got MaskedArray"),
    ([np.ones(2), np.ma.masked_array(np.ones(2))], TypeError, r"grads\[1\]: expected a numpy array like grads\[0\]"),
])
def test_clipping_names_a_gradient_it_cannot_scale(grads, error, words):
    with pytest.raises(error, match=words):
        clip_grad_norm_(grads, 1.0)


def test_a_negative_order_norm_of_zeros_is_silent_as_in_torch():
    """The norm of order -1 of an array holding a zero is 0: NumPy warned of its division by zero."""
    arrays, tensors = [np.array([0.0, 2.0]), np.array([1.0])], [torch.tensor([0.0, 2.0]), torch.tensor([1.0])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(clip_grad_norm_(arrays, 1.0, norm_type=-1)) == float(clip_grad_norm_(tensors, 1.0, norm_type=-1))


def test_detach_state_keeps_the_state_s_container():
    State = collections.namedtuple("State", "h c")
    h = torch.ones(2, requires_grad=True) * 2
    for state in (State(h, h), (h, [h, None]), [h]):
        cut = detach_state(state)
        assert type(cut) is type(state) and all(t is None or not t.requires_grad for t in _leaves(cut))
    with pytest.raises(TypeError, match="state: expected a tensor, a tuple or list of tensors, or None, got dict"):
        detach_state({"h": h})


def _leaves(state):
    return [t for s in state for t in (_leaves(s) if isinstance(s, (tuple, list)) else [s])]


def test_clipping_non_finite_numpy_gradients_is_silent_as_in_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads = [np.array([np.inf, 1.0]), np.array([2.0], np.float16)]   # scaled by 0: inf * 0 is NaN
        params = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g.copy())
        total, want = clip_grad_norm_(grads, 1.0), torch.nn.utils.clip_grad_norm_(params, 1.0)
    assert total == want == np.inf
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(g, p.grad.numpy())


@pytest.mark.parametrize("call, error, words", [
    (lambda h, w, y: sequence_loss_forward(torch.from_numpy(h), w, None, y), TypeError,
     "h: expected a NumPy or CuPy array, got Tensor (sequence_loss takes tensors)"),
    (lambda h, w, y: sequence_loss_forward(h.tolist(), w, None, y), TypeError,
     "h: expected a NumPy or CuPy array, got list"),
    (lambda h, w, y: sequence_loss_forward(h, np.ma.masked_array(w), None, y), TypeError,
     "weight: expected a numpy array like h, got MaskedArray"),
    (lambda h, w, y: sequence_loss_backward(None), TypeError,
     "saved: expected what sequence_loss_forward returned second, got NoneType"),
    (lambda h, w, y: sequence_loss_backward(sequence_loss_forward(h, w, None, y)[1], np.ones(2)), ValueError,
     "dloss: expected a scalar or a 0-d array, got shape (2,)"),
    (lambda h, w, y: sequence_loss_backward(sequence_loss_forward(h, w, None, y)[1], "1"), TypeError,
     "dloss: expected a number, got '1'"),
], ids=["tensor", "list", "masked", "saved", "dloss-shape", "dloss-str"])
def test_sequence_loss_arrays_name_a_bad_argument(call, error, words):
    rng = np.random.default_rng(0)
    h, w, y = rng.standard_normal((3, 2, 4)), rng.standard_normal((5, 4)), rng.integers(0, 5, (3, 2))
    with pytest.raises(error) as info:
        call(h, w, y)
    assert str(info.value) == words


@pytest.mark.parametrize("kwargs, words", [
    ({"model": None}, "model: expected a callable, got NoneType"),
    ({"loss_fn": 3}, "loss_fn: expected a callable, got int"),
    ({"optimizer": "sgd"}, "optimizer: expected a torch.optim.Optimizer (step, zero_grad) or None, got str"),
    ({"model": lambda x, s: (x, s), "max_norm": 1.0},
     "model: expected a torch module (max_norm clips its parameters' gradients), got function"),
])
def test_truncated_bptt_checks_its_callables_at_the_call(kwargs, words):
    """At the call, not at the first chunk: by then that chunk's backward has filled .grad."""
    args = dict(model=gnn.GRU(3, 4), chunks=[(torch.zeros(2, 1, 3), None)], loss_fn=lambda y, t: y.sum())
    args.update(kwargs)
    with pytest.raises(TypeError) as info:
        truncated_bptt(args.pop("model"), args.pop("chunks"), args.pop("loss_fn"), **args)
    assert str(info.value) == words
