"""Finite differences in float64 (torch.autograd.gradcheck) through the engine's autograd Function."""
import pytest
import torch

from gpurnn.nn import run_layer

torch.manual_seed(0)
T, B, I, H, P, O = 4, 3, 3, 5, 2, 3


def rand(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)


CASES = {
    "rnn_tanh": ("elman", [H], [(H, I), (H, H), (H,), (H,)], {"nonlinearity": "tanh"}),
    "rnn_relu": ("elman", [H], [(H, I), (H, H), (H,), (H,)], {"nonlinearity": "relu"}),
    "lstm": ("lstm", [H, H], [(4 * H, I), (4 * H, H), (4 * H,), (4 * H,), None], {}),
    "lstm_proj": ("lstm", [P, H], [(4 * H, I), (4 * H, P), (4 * H,), (4 * H,), (P, H)], {}),
    "gru": ("gru", [H], [(3 * H, I), (3 * H, H), (3 * H,), (3 * H,)], {}),
}
for act in ("identity", "tanh", "sigmoid", "softmax"):
    CASES[f"jordan_{act}"] = ("jordan", [O], [(H, I), (H, O), (H,), (O, H), (O,)], {"output_activation": act})
CASES["jordan_teacher"] = ("jordan", [O], [(H, I), (H, O), (H,), (O, H), (O,)],
                           {"output_activation": "tanh", "teacher": torch.randn(T, B, O, dtype=torch.float64)})


# Jordan networks run forward in time only.
RUNS = [(case, False) for case in CASES] + [(case, True) for case in CASES if not case.startswith("jordan")]


@pytest.mark.parametrize("case,reverse", RUNS, ids=[f"{c}-{'reverse' if r else 'forward'}" for c, r in RUNS])
def test_gradcheck(case, reverse):
    cell, state_sizes, weight_shapes, opts = CASES[case]
    x = rand(T, B, I)
    states = [rand(B, s) for s in state_sizes]
    weights = [None if s is None else rand(*s) for s in weight_shapes]
    if cell == "jordan":
        weights.append(torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64))   # decay: a buffer, no grad
    n_state = len(states)

    def fn(x, *rest):
        return run_layer(cell, x, list(rest[:n_state]), list(rest[n_state:]), backend="numpy",
                         reverse=reverse, **opts)

    assert torch.autograd.gradcheck(fn, (x, *states, *weights), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_packed_rows():
    """Rows past their length hold their state: the gradient passes through them unchanged."""
    x, h0 = rand(T, B, I), rand(B, H)
    weights = [rand(3 * H, I), rand(3 * H, H), rand(3 * H), rand(3 * H)]

    def fn(x, h0, *w):
        return run_layer("gru", x, [h0], list(w), backend="numpy", batch_sizes=[3, 3, 2, 1])

    assert torch.autograd.gradcheck(fn, (x, h0, *weights), eps=1e-6, atol=1e-7, rtol=1e-5)
