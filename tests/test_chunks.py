"""Two chunks with the state carried equal one run over the whole sequence, for every cell."""
import pytest
import torch

import gpurnn.nn as gnn


def make(cell):
    torch.manual_seed(0)
    kw = dict(dtype=torch.float64, backend="numpy")
    return {"rnn": lambda: gnn.RNN(3, 5, num_layers=2, **kw),
            "lstm": lambda: gnn.LSTM(3, 5, num_layers=2, proj_size=2, **kw),
            "gru": lambda: gnn.GRU(3, 5, num_layers=2, **kw),
            "jordan": lambda: gnn.JordanRNN(3, 5, 4, output_activation="softmax", decay=0.7, **kw)}[cell]()


@pytest.mark.parametrize("split", [1, 4, 9])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "jordan"])
def test_two_chunks_equal_one_run(cell, split):
    m = make(cell)
    x = torch.randn(10, 2, 3, dtype=torch.float64, requires_grad=True)
    y_full, state_full = m(x)
    (y_full.sum() * 1.0).backward()
    grads_full = [p.grad.clone() for p in m.parameters()] + [x.grad.clone()]
    m.zero_grad()
    x.grad = None
    y1, state = m(x[:split])
    y2, state = m(x[split:], state)   # the state keeps its graph: gradients flow across the boundary
    torch.testing.assert_close(torch.cat([y1, y2]), y_full, atol=1e-13, rtol=0)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    state_full if isinstance(state_full, tuple) else (state_full,)):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)
    (torch.cat([y1, y2]).sum() * 1.0).backward()
    for a, b in zip([p.grad for p in m.parameters()] + [x.grad], grads_full):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
