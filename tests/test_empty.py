"""Empty batches as torch.nn handles them: outputs of size 0, zero weight gradients; T = 0 raises."""
import numpy as np
import pytest
import torch

import gpurnn.functional as F
import gpurnn.nn as gnn
from kernel_cases import make_case

NAMES = {"elman": "rnn", "lstm": "lstm", "gru": "gru", "jordan": "jordan"}   # the plain-array API's names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kw", [{}, {"bidirectional": True, "num_layers": 2}, {"batch_first": True}],
                         ids=["plain", "bidir2", "batch_first"])
@pytest.mark.parametrize("steps", [3, 1])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_empty_batch_like_torch(kind, steps, kw, dtype):
    """Also the outputs' strides (an empty tensor's are free: torch's are contiguous), at T=1 too, where a step
    runs as the torch loop (LSTM) or torch.nn's own call."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 5, dtype=dtype, **kw)
    mine = getattr(gnn, kind)(4, 5, dtype=dtype, backend="numpy", **kw)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(0, steps, 4, dtype=dtype) if kw.get("batch_first") else torch.randn(steps, 0, 4, dtype=dtype)
    outs = []
    for m in (ref, mine):
        y, h = m(x)
        (y.sum() + sum(t.sum() for t in (h if isinstance(h, tuple) else (h,)))).backward()
        outs.append((y, h, [p.grad for p in m.parameters()]))
    (y_ref, h_ref, g_ref), (y, h, g) = outs
    assert (y.shape, y.stride(), y.dtype) == (y_ref.shape, y_ref.stride(), y_ref.dtype)
    for a, b in zip(h if isinstance(h, tuple) else (h,), h_ref if isinstance(h_ref, tuple) else (h_ref,)):
        assert (a.shape, a.stride()) == (b.shape, b.stride())
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", ["elman", "lstm", "gru", "jordan"])
def test_empty_batch_in_the_plain_array_api(cell, dtype):
    case = make_case(cell, 4, 0, 5, dtype=dtype, O=3)
    y, state, tape = F.forward(NAMES[cell], case["x"], case["weights"], case["state0"])
    assert y.shape[:2] == (4, 0) and all(s.shape[0] == 0 for s in state)
    dx, dstate0, grads = F.backward(tape, np.zeros_like(y))
    assert dx.shape == case["x"].shape
    assert all(g is None or not g.any() for g in grads.values())


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru", "jordan"])
def test_empty_sequence_in_the_plain_array_api_raises_as_torch(cell):
    case = make_case(cell, 1, 2, 5, O=3)
    x = case["x"][:0]
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        F.forward(NAMES[cell], x, case["weights"], case["state0"])


def test_empty_jordan_sequence_raises_as_torch():
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        gnn.JordanRNN(4, 5, 3)(torch.randn(0, 2, 4))
