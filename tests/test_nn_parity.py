"""gpurnn.nn.RNN/LSTM/GRU against torch.nn: every output and every gradient, every option."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import gpurnn.nn as gnn
from gpurnn.cells import base
from torch_parity import TOL, assert_same, outputs_and_grads

CELLS = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
         "lstm": ("LSTM", {}), "lstm_proj": ("LSTM", {"proj_size": 3}), "gru": ("GRU", {})}
OPTIONS = {
    "plain": {},
    "two_layers": {"num_layers": 2},
    "bidirectional": {"bidirectional": True},
    "two_layers_bidirectional": {"num_layers": 2, "bidirectional": True},
    "batch_first": {"batch_first": True, "num_layers": 2},
    "no_bias": {"bias": False},
}
INPUTS = ("zero_h0", "given_h0", "packed", "unbatched")


def make_pair(cell, dtype, **options):
    name, kw = CELLS[cell]
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(5, 7, dtype=dtype, **kw, **options)
    mine = getattr(gnn, name)(5, 7, dtype=dtype, backend="numpy", **kw, **options)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def make_input(ref, kind, T=6, B=3):
    dtype = ref.weight_ih_l0.dtype
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, ref.input_size, generator=g, dtype=dtype)
    dirs = ref.num_layers * (2 if ref.bidirectional else 1)
    h = torch.randn(dirs, B, ref.proj_size or ref.hidden_size, generator=g, dtype=dtype)
    hx = (h, torch.randn(dirs, B, ref.hidden_size, generator=g, dtype=dtype)) if ref.mode == "LSTM" else h
    if kind == "zero_h0":
        hx = None
    if ref.batch_first:
        x = x.transpose(0, 1).contiguous()
    if kind == "packed":   # unequal lengths, shortest first: exercises the sorting permutation
        lengths = torch.tensor([max(1, T - 2 * i) for i in range(B)][::-1])
        x = pack_padded_sequence(x, lengths, batch_first=ref.batch_first, enforce_sorted=False)
    if kind == "unbatched":
        x = x[0] if ref.batch_first else x[:, 0]
        hx = tuple(t[:, 0] for t in hx) if isinstance(hx, tuple) else hx[:, 0]
    return x, hx


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch(cell, options, inputs, dtype):
    ref, mine = make_pair(cell, dtype, **OPTIONS[options])
    x, hx = make_input(ref, inputs)
    assert_same(outputs_and_grads(ref, x, hx), outputs_and_grads(mine, x, hx), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("frozen", ["all", "weight_ih"])
@pytest.mark.parametrize("inputs", ["given_h0", "packed"])
@pytest.mark.parametrize("cell", CELLS)
def test_a_frozen_layer_matches_torch_and_skips_the_weight_gradients(cell, inputs, frozen, dtype, monkeypatch):
    """Weights that need no gradient (requires_grad_(False)) get none, as from torch.nn; where no weight of a layer
    needs one, its backward skips their GEMMs (Cell.outer), as torch's ops skip theirs."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    ref, mine = make_pair(cell, dtype, num_layers=2, bidirectional=True)
    for module in (ref, mine):
        for name, p in module.named_parameters():
            p.requires_grad_(frozen != "all" and not name.startswith("weight_ih"))
    x, hx = make_input(ref, inputs)
    outer = base.Cell.outer
    calls = []
    monkeypatch.setattr(base.Cell, "outer", lambda self, a, b, **kw: calls.append(1) or outer(self, a, b, **kw))
    want, got = outputs_and_grads(ref, x, hx), outputs_and_grads(mine, x, hx)
    assert want.keys() == got.keys()
    for key in want:
        assert (got[key] is None) == (want[key] is None), key
        if want[key] is not None:
            torch.testing.assert_close(got[key], want[key], **TOL[dtype], msg=lambda m: f"{key}: {m}")
    assert (len(calls) == 0) == (frozen == "all")


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_one_in_training_matches_torch(cell):
    """p=1 is deterministic: the second layer sees zeros in both implementations."""
    ref, mine = make_pair(cell, torch.float64, num_layers=2, dropout=1.0)
    x, hx = make_input(ref, "given_h0")
    assert_same(outputs_and_grads(ref.train(), x, hx), outputs_and_grads(mine.train(), x, hx), torch.float64)


def test_dropout_only_in_training():
    ref, mine = make_pair("lstm", torch.float64, num_layers=2, dropout=0.5)
    x, hx = make_input(ref, "given_h0")
    assert_same(outputs_and_grads(ref.eval(), x, hx), outputs_and_grads(mine.eval(), x, hx), torch.float64)
    torch.manual_seed(3)
    y1, _ = mine.train()(x, hx)
    torch.manual_seed(3)
    y2, _ = mine(x, hx)
    y_eval, _ = mine.eval()(x, hx)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    assert not torch.allclose(y1, y_eval)


@settings(max_examples=30, deadline=None)
@given(cell=st.sampled_from(sorted(CELLS)), T=st.integers(1, 9), B=st.integers(1, 5),
       layers=st.integers(1, 3), bidirectional=st.booleans(), batch_first=st.booleans(),
       bias=st.booleans(), inputs=st.sampled_from(INPUTS))
def test_matches_torch_property(cell, T, B, layers, bidirectional, batch_first, bias, inputs):
    ref, mine = make_pair(cell, torch.float64, num_layers=layers, bidirectional=bidirectional,
                          batch_first=batch_first, bias=bias)
    x, hx = make_input(ref, inputs, T=T, B=B)
    assert_same(outputs_and_grads(ref, x, hx), outputs_and_grads(mine, x, hx), torch.float64)


def test_state_dict_round_trip_and_torch_api():
    ref, mine = make_pair("lstm_proj", torch.float32, num_layers=2, bidirectional=True)
    assert isinstance(mine, torch.nn.LSTM)
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [[tuple(w.shape) for w in ws] for ws in mine.all_weights] == \
           [[tuple(w.shape) for w in ws] for ws in ref.all_weights]
    back = torch.nn.LSTM(5, 7, proj_size=3, num_layers=2, bidirectional=True)
    back.load_state_dict(mine.state_dict())
    for (n, a), (_, b) in zip(back.named_parameters(), mine.named_parameters()):
        assert torch.equal(a, b), n
    mine.flatten_parameters()   # a no-op that must exist


def test_init_matches_torch_distribution():
    torch.manual_seed(5)
    ref = torch.nn.GRU(5, 64)
    torch.manual_seed(5)
    mine = gnn.GRU(5, 64)
    for (n, a), (_, b) in zip(ref.named_parameters(), mine.named_parameters()):
        assert torch.equal(a, b), n


def test_float16_runs_in_float32_and_bfloat16_is_cast():
    ref, mine = make_pair("gru", torch.float32)
    x, hx = make_input(ref, "given_h0")
    y32, h32 = mine(x, hx)
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 2e-2)):   # the input rounding dominates
        mine_lp = gnn.GRU(5, 7, dtype=dtype, backend="numpy")
        mine_lp.load_state_dict(ref.state_dict())
        y, h = mine_lp(x.to(dtype), hx.to(dtype))
        assert y.dtype == dtype and h.dtype == dtype
        torch.testing.assert_close(y.float(), y32, atol=tol, rtol=tol)
        y.float().sum().backward()
        assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in mine_lp.parameters())


def test_nan_propagates_like_torch():
    ref, mine = make_pair("lstm", torch.float64)
    x, hx = make_input(ref, "given_h0")
    x[2, 1, 0] = float("nan")
    y_ref, _ = ref(x, hx)
    y, _ = mine(x, hx)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    assert torch.isnan(y).any()
