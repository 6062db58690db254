"""gpurnn.nn's cell modules on the Triton backend (the interpreter here), against torch.nn's."""
import re

import pytest
import torch

import gpurnn.nn as gnn


@pytest.mark.parametrize("backend", ["numpy", "triton"])
@pytest.mark.parametrize("name", ["RNNCell", "GRUCell", "LSTMCell-c"])
def test_an_unbatched_input_with_a_batched_state_runs_as_in_torch(name, backend):
    """torch's step broadcasts a 1-D input against a (B, H) state: an RNNCell and an LSTMCell whose c is batched
    give values, a GRUCell a size error. With B == H the Triton backend once returned memory it never wrote."""
    torch.manual_seed(0)
    kind = name.split("-")[0]
    ref = getattr(torch.nn, kind)(1, 2, dtype=torch.float64)
    ours = getattr(gnn, kind)(1, 2, dtype=torch.float64, backend=backend)
    ours.load_state_dict(ref.state_dict())
    x, state = torch.randn(1, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    hx = (torch.randn(2, dtype=torch.float64), state) if kind == "LSTMCell" else state
    if kind == "GRUCell":
        for m in (ref, ours):
            with pytest.raises(RuntimeError, match=re.escape("The size of tensor a (6) must match the size of "
                                                             "tensor b (2) at non-singleton dimension 2")):
                m(x, hx)
    else:
        torch.testing.assert_close(ours(x, hx), ref(x, hx))


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_an_lstm_cells_unbatched_input_with_a_batched_h_is_an_error(backend):
    """torch's own LSTM step crashes the process on it."""
    cell = gnn.LSTMCell(1, 2, backend=backend)
    with pytest.raises(RuntimeError, match="hx.0. to be 1D"):
        cell(torch.randn(1), (torch.randn(2, 2), torch.randn(2, 2)))
