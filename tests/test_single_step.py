"""Single steps without gradient (autoregressive generation) run as the torch loop: same
results as torch.nn and as the engine."""
import pytest
import torch

import gpurnn.nn as gnn

MODULES = {"rnn_relu": ("RNN", {"nonlinearity": "relu"}), "lstm_proj_bidir": ("LSTM", {"proj_size": 3, "bidirectional": True}),
           "gru_2layers": ("GRU", {"num_layers": 2}), "lstm": ("LSTM", {})}


@pytest.mark.parametrize("name", MODULES)
def test_one_step_without_grad_matches_torch_and_the_engine(name):
    kind, kw = MODULES[name]
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 5, dtype=torch.float64, **kw)
    mine = getattr(gnn, kind)(4, 5, dtype=torch.float64, backend="numpy", **kw)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        want, got = ref(x), mine(x)
    engine = mine(x.requires_grad_(True))   # with autograd: the engine
    for a, b, c in zip(*(torch.utils._pytree.tree_leaves(r) for r in (want, got, engine))):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(c.detach(), a, atol=1e-12, rtol=1e-12)
