"""gpurnn.nn's cell modules on the Triton backend (the interpreter here), against torch.nn's."""
import re

import pytest
import torch

import gpurnn.nn as gnn


@pytest.mark.parametrize("backend", ["numpy", "triton"])
@pytest.mark.parametrize("name", ["RNNCell", "GRUCell"])
def test_an_unbatched_input_with_a_batched_state_runs_as_in_torch(name, backend):
    """torch's step broadcasts a 1-D input against a (B, H) hx (RNNCell: values; GRUCell: a size error). With B == H
    the Triton backend once returned memory it never wrote."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(1, 2, dtype=torch.float64)
    ours = getattr(gnn, name)(1, 2, dtype=torch.float64, backend=backend)
    ours.load_state_dict(ref.state_dict())
    x, hx = torch.randn(1, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    try:
        want = ref(x, hx)
    except RuntimeError as error:
        with pytest.raises(RuntimeError, match=re.escape(str(error))):
            ours(x, hx)
        return
    torch.testing.assert_close(ours(x, hx), want)


def test_an_lstm_cells_unbatched_input_with_a_batched_state_is_an_error():
    """torch's own LSTM step crashes the process on it."""
    cell = gnn.LSTMCell(1, 2, backend="triton")
    with pytest.raises(RuntimeError, match="hx.0. to be 1D"):
        cell(torch.randn(1), (torch.randn(2, 2), torch.randn(2, 2)))
