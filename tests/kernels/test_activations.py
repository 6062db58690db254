"""The Triton kernels' tanh is accurate relative to its value near 0, as torch's (under TRITON_INTERPRET=1):
(1 - e)/(1 + e) with e = exp(-2|x|) lost the digits of a small pre-activation (3% wrong at 1e-6, 0 below 3e-8)."""
import pytest
import torch

import gpurnn.nn as gnn

# pre-activations from 1e-12 to about 2, both signs: the polynomial below 0.625, the exp form above
A = torch.logspace(-12, 0.3, 64, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(32)


def _one_step(kind, gate_rows):
    """A one-layer module on the Triton backend whose step t=0 has pre-activation A in the rows `gate_rows` (the
    tanh's) and 0 elsewhere: x = A, W_ih = I in those rows, every other weight 0."""
    H = A.numel()
    module = getattr(gnn, kind)(H, H, backend="triton")
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        module.weight_ih_l0[gate_rows * H:(gate_rows + 1) * H] = torch.eye(H)
    return module(A.float().view(1, 1, H))[0].double().view(-1)


@pytest.mark.parametrize("kind, gate_rows, expected", [
    ("RNN", 0, torch.tanh(A)),                                  # h = tanh(a)
    ("GRU", 2, 0.5 * torch.tanh(A)),                            # z = 1/2, h0 = 0: h = tanh(a_n)/2
    ("LSTM", 2, 0.5 * torch.tanh(0.5 * torch.tanh(A))),         # i = o = 1/2, c0 = 0: h = tanh(tanh(a_g)/2)/2
])
def test_tanh_keeps_its_relative_accuracy_near_0(kind, gate_rows, expected):
    got = _one_step(kind, gate_rows)
    # float32 rounding of A itself, and a few ulp through each step of the cell
    torch.testing.assert_close(got, expected, rtol=8 * 2.0 ** -24, atol=0)
