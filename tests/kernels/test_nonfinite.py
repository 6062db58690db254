"""Non-finite values through the Triton kernels under TRITON_INTERPRET=1, against torch.nn (the engine's:
tests/test_nonfinite.py)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from test_nonfinite import _twins, dead_relu_case, gate_far_below_case


def test_a_dead_relu_unit_passes_no_inf_gradient():
    dead_relu_case("triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_gate_far_below_0_keeps_its_relative_accuracy(kind, dtype):
    """The LSTM kernels' sigmoid was 0.5*tanh(a/2) + 0.5, 0 below about -17 in float32 (the GRU's: 1/(1 + e^-a))."""
    gate_far_below_case(kind, dtype, "triton")


def test_an_inf_in_h0_stays_in_its_unit_with_padded_hidden_sizes():
    """Single-slice Triton kernels pad H to a power of two: inf times W's zero padding was NaN in the padding,
    which the next step's dot spread to every unit of the row."""
    for H in (5, 20):
        modules = _twins("RNN", 3, H, backend="triton")
        x = torch.randn(4, 2, 3, dtype=torch.float64)
        h0 = torch.zeros(1, 2, H, dtype=torch.float64)
        h0[0, 0, 0] = float("inf")
        with torch.no_grad():
            theirs, ours = (m(x, h0)[0] for m in modules)
        assert not theirs.isnan().any()
        torch.testing.assert_close(ours, theirs)


def test_a_held_lstm_row_keeps_its_cell_gradient():
    """Rows past their length hold dc: the Triton backward once added 0 * inf into it (NaN in every unit)."""
    modules = _twins("LSTM", 4, 16, bidirectional=True, backend="triton")
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    h0 = torch.randn(2, 2, 16, dtype=torch.float64)
    c0 = torch.randn(2, 2, 16, dtype=torch.float64)
    c0[:, 1, 0] = float("inf")   # the length-1 row
    grads = []
    for m in modules:
        c = c0.clone().requires_grad_()
        y, _ = m(pack_padded_sequence(x, [3, 1]), (h0, c))
        y.data.sum().backward()
        grads.append(c.grad)
    torch.testing.assert_close(grads[1], grads[0], equal_nan=True)
