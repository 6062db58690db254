"""gpurnn/cpu/onednn.py: the oneDNN GEMM route (torch's inner-product op, packed step weights) against NumPy in
float64 and against torch.nn."""
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import gpurnn.nn as gnn
from gpurnn.cpu import gemm, onednn, timed
from tests.jordan_reference import jordan_reference

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN linear ops")

RNG = np.random.default_rng(0)


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _want(a, b):
    return np.matmul(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _forms():
    """(name, a, b): every form the cells call: rows x weight, weight x columns, batched projection, transposed
    rows (a weight gradient), packed weights on either side with fewer rows than packed for."""
    w = _f32(24, 40)
    x3 = _f32(5, 7, 24)
    return [
        ("rows @ w", _f32(9, 24), w),
        ("rows @ w^T view", _f32(9, 40), w.T),
        ("a^T @ b (weight gradient)", _f32(30, 24).T, _f32(30, 40)),
        # over buffers.MIN_BYTES: copied in blocks of columns (655, then 45), into a pooled buffer
        ("large a^T @ b (weight gradient)", _f32(700, 100).T, _f32(700, 8)),
        ("w @ columns", w.T, _f32(24, 6)),
        ("w @ 3-D (projection, feature-major)", w.T, x3.transpose(0, 2, 1)),
        ("rows @ packed", _f32(9, 24), onednn.pack(w, 9)),
        ("fewer rows @ packed", _f32(3, 24), onednn.pack(w, 9)),
        ("packed @ columns", onednn.pack(w.T, 6), _f32(24, 6)),
        ("packed @ strided columns", onednn.pack(w.T, 6), _f32(24, 9)[:, :4]),
    ]


@pytest.mark.parametrize("call_bytes", [onednn.CALL_BYTES, 64], ids=["one_call", "chunked"])
@pytest.mark.parametrize("name,a,b", _forms(), ids=[f[0] for f in _forms()])
def test_every_form_equals_numpy(name, a, b, call_bytes, monkeypatch):
    """Results to float32 rounding, with out=None, into out, and accumulated into out (add=True); chunked:
    a few result rows a oneDNN call, across the rows and the leading axis."""
    monkeypatch.setattr(onednn, "CALL_BYTES", call_bytes)
    plain = [m.matrix if isinstance(m, onednn.Packed) else m for m in (a, b)]
    want = _want(*plain)
    np.testing.assert_allclose(onednn.matmul(a, b), want, rtol=1e-5, atol=1e-4)
    out = _f32(*want.shape)
    start = out.astype(np.float64)
    assert onednn.matmul(a, b, out=out, add=True) is out
    np.testing.assert_allclose(out, start + want, rtol=1e-5, atol=1e-4)
    onednn.matmul(a, b, out=out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def test_a_packed_weight_is_packed_once_per_side(monkeypatch):
    calls = []
    real = onednn._ops()._reorder_linear_weight
    monkeypatch.setattr(onednn, "_ops", lambda: type("Ops", (), {
        "_reorder_linear_weight": staticmethod(lambda w, rows: calls.append(tuple(w.shape)) or real(w, rows)),
        "_linear_pointwise": torch.ops.mkldnn._linear_pointwise})())
    w = onednn.pack(_f32(24, 40), 8)
    for _ in range(3):
        onednn.matmul(_f32(8, 24), w)
    assert calls == [(40, 24)]


KINDS = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}
CASES = [("LSTM", {}), ("LSTM", {"proj_size": 5}), ("GRU", {"bidirectional": True}), ("RNN", {"nonlinearity": "relu"}),
         ("LSTM", {"num_layers": 2, "batch_first": True})]


def _forward_backward(m, inputs, packed):
    """Outputs, input gradients and weight gradients of sum(y^2); inputs: one (T, B, I) tensor, or the sequences
    of a packed batch."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = m(pack_sequence(leaves) if packed else leaves[0])[0]
    y = y.data if packed else y
    y.square().sum().backward()
    return [y.detach()] + [t.grad for t in leaves] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind,kwargs", CASES, ids=[f"{k}-{'-'.join(kw) or 'plain'}" for k, kw in CASES])
def test_layers_on_the_onednn_route_match_torch_nn(kind, kwargs, packed, monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    monkeypatch.setenv("GPURNN_GEMM", "onednn")
    torch.manual_seed(0)
    ref = KINDS[kind](6, 9, **kwargs)
    ours = getattr(gnn, kind)(6, 9, **kwargs)
    ours.load_state_dict(ref.state_dict())
    if packed:
        inputs = [torch.randn(n, 6) for n in (7, 5, 2)]
    else:
        inputs = [torch.randn(4, 7, 6) if kwargs.get("batch_first") else torch.randn(7, 4, 6)]
    want, got = (_forward_backward(m, inputs, packed) for m in (ref, ours))
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_a_jordan_layer_on_the_onednn_route_matches_the_reference(monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    monkeypatch.setenv("GPURNN_GEMM", "onednn")
    torch.manual_seed(0)
    m = gnn.JordanRNN(5, 8, 3)
    x = torch.randn(6, 4, 5, requires_grad=True)
    y, _ = m(x)
    y.square().sum().backward()
    got = [y.detach(), x.grad] + [p.grad for p in m.parameters()]
    x2 = x.detach().double().requires_grad_()
    params = [p.detach().double().requires_grad_() for p in m.parameters()]
    w_ih, w_sh, b_h, w_ho, b_o = params   # weight_ih, weight_sh, bias_h, weight_ho, bias_o
    y2, _ = jordan_reference(x2, torch.zeros(4, 3, dtype=torch.float64), w_ih, w_sh, b_h, w_ho, b_o, m.decay.double())
    y2.square().sum().backward()
    want = [y2.detach(), x2.grad] + [p.grad for p in params]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_an_empty_batch_on_the_onednn_route_matches_torch_nn(kind, monkeypatch):
    """An empty batch divided by zero rows a oneDNN call (B=0 shares B=1's timed class, where oneDNN wins)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    monkeypatch.setenv("GPURNN_GEMM", "onednn")
    ref = KINDS[kind](4, 5)
    ours = getattr(gnn, kind)(4, 5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 0, 4)
    want, got = (_forward_backward(m, [x], packed=False) for m in (ref, ours))
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("packed", [None, "left", "right"])
@pytest.mark.parametrize("a_shape,b_shape", [((0, 4), (4, 3)), ((2, 4), (4, 0)), ((2, 0), (0, 3))])
def test_empty_products(a_shape, b_shape, packed):
    a, b = np.ones(a_shape, np.float32), np.ones(b_shape, np.float32)
    want = a @ b
    if packed == "left":
        a = onednn.pack(a, b.shape[1])
    elif packed == "right":
        b = onednn.pack(b, a.shape[0])
    np.testing.assert_array_equal(onednn.matmul(a, b), want)
    out = np.full(want.shape, 7, np.float32)
    np.testing.assert_array_equal(onednn.matmul(a, b, out=out, add=True), 7 + want)


def test_switching_torchs_onednn_off_takes_torchs_route(monkeypatch):
    monkeypatch.setenv("GPURNN_GEMM", "onednn")
    with torch.backends.mkldnn.flags(enabled=False):   # (torch's own tests may have disabled setting the flag)
        assert gemm.route(4, 8, 8, 32, np.float32) == "torch"
        assert "onednn" not in gemm.time_routes(4, 3, 2, 8, np.float32, repeats=1)   # (nor timed)


def test_a_float16_layer_is_timed_in_float32_its_gemms_dtype(monkeypatch):
    """Its weights are float32 copies: timed as float16 it took 31 s (NumPy has no float16 BLAS), without oneDNN."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    monkeypatch.setenv("GPURNN_GEMM", "auto")
    monkeypatch.setattr(gemm, "_chosen", timed.Decisions())
    x = torch.randn(5, 4, 8, dtype=torch.float16)
    gnn.LSTM(8, 16).half()(x)[0].float().sum().backward()
    assert [key[4] for key in gemm.chosen()] == ["<f4"]


def test_without_torch_the_route_is_absent(monkeypatch):
    """`python -m gpurnn info` runs on a NumPy-only install, and imports gemm.py."""
    monkeypatch.setitem(__import__("sys").modules, "torch", None)   # import torch raises ImportError
    assert onednn.available() is False


def test_forcing_onednn_where_torch_lacks_it_says_why(monkeypatch):
    monkeypatch.setenv("GPURNN_GEMM", "onednn")
    monkeypatch.delitem(gemm.ROUTES, "onednn")
    with pytest.raises(ValueError, match="GPURNN_GEMM: 'onednn' needs torch's oneDNN linear ops"):
        gemm.forced()


def test_a_float64_layer_takes_torchs_route_where_onednn_is_forced(monkeypatch):
    """oneDNN has no float64 GEMM: forcing the route keeps float64 layers on torch's."""
    monkeypatch.setenv("GPURNN_GEMM", "onednn")
    assert gemm.route(4, 8, 8, 32, np.float64) == "torch"
    assert gemm.route(4, 8, 8, 32, np.float32) == "onednn"
    assert "onednn" not in gemm.time_routes(4, 3, 2, 8, np.float64, repeats=1)
