"""Under torch.autocast the modules give the dtypes torch.nn's give, and the values of the cast
computation (CPU: bfloat16 and float16 data are computed in float32 and rounded on return). Where torch.nn
mixes precisions inside one op (GRU, LSTMCell, GRUCell, and the projected or packed LSTM on the CPU), they give
torch.nn's own results."""
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


# (module, its arguments, input dtype, hx dtype or None): torch runs the GEMMs inside these ops in bfloat16 and
# returns the state in hx's dtype (a projected LSTM: c_n unrounded in c_0's dtype)
_MIXED = [("GRU", {}, torch.bfloat16, torch.float32), ("GRU", {}, torch.float32, torch.bfloat16),
          ("GRU", {}, torch.float32, None), ("LSTMCell", {}, torch.float32, None),
          ("LSTMCell", {}, torch.bfloat16, torch.float32), ("GRUCell", {}, torch.float32, torch.bfloat16),
          ("LSTM", {"proj_size": 3}, torch.float32, None), ("LSTM", {"proj_size": 3}, torch.bfloat16, torch.float32)]


@pytest.mark.parametrize("kind, kwargs, x_dtype, hx_dtype", _MIXED, ids=[f"{c[0]}{len(c[1])}-{i}" for i, c in
                                                                         enumerate(_MIXED)])
def test_mixed_precision_inside_the_op_is_torchs(kind, kwargs, x_dtype, hx_dtype):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 5, **kwargs)
    mine = getattr(gnn, kind)(4, 5, **kwargs)
    mine.load_state_dict(ref.state_dict())
    cell = "Cell" in kind
    x = torch.randn(*((2, 4) if cell else (3, 2, 4)), dtype=x_dtype)
    hx = None
    if hx_dtype is not None:
        h = torch.randn(*((2,) if cell else (1, 2)), kwargs.get("proj_size", 5), dtype=hx_dtype)
        c = torch.randn(*h.shape[:-1], 5, dtype=hx_dtype)
        hx = (h, c) if "LSTM" in kind else h
    results = []
    for m in (ref, mine):
        with torch.autocast("cpu", torch.bfloat16):
            out = _outputs(m(x, hx))
        sum(t.float().sum() for t in out).backward()
        results.append(out + [m.weight_hh_l0.grad if not cell else m.weight_hh.grad])
    for got, want in zip(*results[::-1]):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_packed_lstm_is_torchs_float32_under_cpu_autocast(monkeypatch):
    """torch.nn's packed CPU LSTM returns float32 under autocast (it came back in bfloat16)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    torch.manual_seed(0)
    ref, mine = torch.nn.LSTM(4, 5, bidirectional=True), gnn.LSTM(4, 5, bidirectional=True)
    mine.load_state_dict(ref.state_dict())
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(3, 2, 4), [3, 2])
    with torch.autocast("cpu", torch.bfloat16):
        want, got = ref(x), mine(x)
    for a, b in zip([got[0].data, *got[1]], [want[0].data, *want[1]]):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind, module_dtype, x_dtype", [("RNN", torch.float64, torch.float32),
                                                         ("LSTM", torch.float32, torch.float64),
                                                         ("RNNCell", torch.float64, torch.float32)])
def test_float64_beside_cast_tensors_is_torchs_error_under_autocast(kind, module_dtype, x_dtype, monkeypatch):
    """Autocast never casts float64: a float64 module with float32 data (or the reverse) meets a bfloat16 GEMM
    operand in torch.nn, which raises; the engine ran."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    x = torch.randn(*((2, 4) if "Cell" in kind else (3, 2, 4)), dtype=x_dtype)
    messages = []
    for nn in (torch.nn, gnn):
        with torch.autocast("cpu", torch.bfloat16), pytest.raises(RuntimeError) as err:
            getattr(nn, kind)(4, 5, dtype=module_dtype)(x)
        messages.append(str(err.value))
    assert messages[1] == messages[0]
