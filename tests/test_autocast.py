"""Under torch.autocast the modules give the dtypes torch.nn's give, and the values of the cast
computation (CPU: bfloat16 and float16 data are computed in float32 and rounded on return)."""
import pytest
import torch

import gpurnn.nn as gnn

KINDS = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")


def _outputs(r):
    return [t for part in (r if isinstance(r, tuple) else (r,)) for t in (part if isinstance(part, tuple) else (part,))]


@pytest.mark.parametrize("kind", KINDS)
def test_output_dtypes_match_torch_under_cpu_autocast(kind):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 5)
    mine = getattr(gnn, kind)(4, 5, backend="numpy")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4) if "Cell" in kind else torch.randn(3, 2, 4)
    with torch.autocast("cpu", torch.bfloat16):
        want, got = _outputs(ref(x)), _outputs(mine(x))
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want):   # bf16 keeps 8 bits: both round the same float32-accumulated values
        torch.testing.assert_close(a.float(), b.float(), atol=0.02, rtol=0.02)
    assert got[0].dtype == (torch.bfloat16 if kind in gnn.AUTOCAST["cpu"] else torch.float32)


def test_jordan_and_gradients_work_under_autocast():
    m = gnn.JordanRNN(4, 5, 3, backend="numpy")
    x = torch.randn(3, 2, 4, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        y, s = m(x)
        lstm_y, _ = gnn.LSTM(4, 5, backend="numpy")(x)
    assert y.dtype == torch.float32 and lstm_y.dtype == torch.bfloat16
    (y.sum() + lstm_y.float().sum()).backward()
    assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0
