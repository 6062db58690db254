"""A frozen layer (no weight needs a gradient) on the Triton backend (the interpreter here): its backward skips
the weight GEMMs, which the kernels' backward shares with the NumPy loop (Cell.finish_backward)."""
import pytest
import torch

import gpurnn.nn as gnn
from gpurnn.cells import base


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_a_frozen_layer_gives_torch_nns_input_and_state_gradients(kind, monkeypatch):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(5, 8, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = getattr(gnn, kind)(5, 8, num_layers=2, bidirectional=True, dtype=torch.float64, backend="triton")
    ours.load_state_dict(ref.state_dict())
    outer = base.Cell.outer
    calls = []
    monkeypatch.setattr(base.Cell, "outer", lambda self, a, b: calls.append(1) or outer(self, a, b))
    x = torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for m in (ref, ours):
        m.requires_grad_(False)
        y, _ = m(x, (h0, torch.zeros_like(h0)) if kind == "LSTM" else h0)
        grads.append(torch.autograd.grad(y.square().sum(), [x, h0]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-10)
    assert calls == []
