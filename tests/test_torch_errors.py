"""Bad input to the modules raises what torch.nn raises: the same exception type and message."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gpurnn.nn as gnn

KINDS = ("RNN", "LSTM", "GRU")


def _states(kind, *shapes, dtype=torch.float32):
    t = [torch.zeros(s, dtype=dtype) for s in shapes]
    return tuple(t) if kind == "LSTM" else t[0]


# (name, module kwargs, lambda kind -> (input, hx))
CASES = {
    "input_size": ({}, lambda k: (torch.randn(6, 2, 3), None)),
    "input_4d": ({}, lambda k: (torch.randn(6, 2, 4, 1), None)),
    "input_1d": ({}, lambda k: (torch.randn(4), None)),
    "input_int": ({}, lambda k: (torch.ones(6, 2, 4, dtype=torch.long), None)),
    "input_float64": ({}, lambda k: (torch.randn(6, 2, 4, dtype=torch.float64), None)),
    "hidden_batch": ({}, lambda k: (torch.randn(6, 2, 4), _states(k, (1, 3, 5), (1, 3, 5)))),
    "hidden_size": ({}, lambda k: (torch.randn(6, 2, 4), _states(k, (1, 2, 6), (1, 2, 5)))),
    "cell_size": ({}, lambda k: (torch.randn(6, 2, 4), _states(k, (1, 2, 5), (1, 2, 6)))),
    "hidden_layers": ({"num_layers": 2}, lambda k: (torch.randn(6, 2, 4), _states(k, (1, 2, 5), (1, 2, 5)))),
    "hidden_2d_for_batched": ({}, lambda k: (torch.randn(6, 2, 4), _states(k, (2, 5), (2, 5)))),
    "hidden_3d_for_unbatched": ({}, lambda k: (torch.randn(6, 4), _states(k, (1, 1, 5), (1, 1, 5)))),
    "batch_first_hidden": ({"batch_first": True}, lambda k: (torch.randn(2, 6, 4), _states(k, (1, 6, 5), (1, 6, 5)))),
    "empty_sequence": ({}, lambda k: (torch.randn(0, 2, 4), None)),
    "empty_unbatched_sequence": ({}, lambda k: (torch.randn(0, 4), None)),
    "empty_sequence_batch_first": ({"batch_first": True}, lambda k: (torch.randn(2, 0, 4), None)),
    "packed_hidden_size": ({}, lambda k: (pack_padded_sequence(torch.randn(6, 2, 4), [6, 3]),
                                          _states(k, (1, 2, 7), (1, 2, 5)))),
    "packed_input_size": ({}, lambda k: (pack_padded_sequence(torch.randn(6, 2, 3), [6, 3]), None)),
}


def _error(module, inp, hx):
    with pytest.raises(Exception) as info:
        module(inp, hx)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_same_error_as_torch(kind, case):
    kw, make = CASES[case]
    if case == "cell_size" and kind != "LSTM":
        pytest.skip("only the LSTM has a cell state")
    if case.startswith("packed") and kind == "LSTM":
        pytest.skip("torch.nn.LSTM skips its checks for packed input (a raw matmul error); gpurnn's "
                    "LSTM runs them, with torch's RNN/GRU messages")
    torch.manual_seed(0)
    inp, hx = make(kind)
    want = _error(getattr(torch.nn, kind)(4, 5, **kw), inp, hx)
    assert _error(getattr(gnn, kind)(4, 5, backend="numpy", **kw), inp, hx) == want


@pytest.mark.parametrize("hx", [(torch.zeros(1, 2, 5),), torch.zeros(1, 2, 5), [torch.zeros(1, 2, 5)] * 3],
                         ids=["1-tuple", "tensor", "3-list"])
def test_lstm_hx_that_is_not_a_pair_names_hx(hx):
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\) of two tensors, got"):
        gnn.LSTM(4, 5)(torch.randn(6, 2, 4), hx)


def test_packed_batch_sizes_with_a_zero_are_rejected():
    packed = pack_padded_sequence(torch.randn(3, 2, 4), [3, 1])
    bad = type(packed)(packed.data, torch.tensor([2, 1, 0]), None, None)
    with pytest.raises(ValueError, match=r"batch_sizes: expected every entry >= 1, got \[2, 1, 0\]"):
        gnn.GRU(4, 5)(bad)


_X, _H = torch.randn(5, 2, 3), torch.zeros(1, 2, 4)
# (module name, args, kwargs, the call's arguments): faults where gpurnn's message names the argument and quotes torch's
QUOTED = {
    "lstm_cell_hx_of_one_element": ("LSTMCell", (3, 1), lambda: (torch.randn(3), torch.zeros(1))),
    "lstm_cell_c_none": ("LSTMCell", (3, 2), lambda: (torch.randn(3), (torch.zeros(2), None))),
    "ndarray_input": ("GRU", (3, 4), lambda: (_X.numpy(), None)),
    "tuple_hx_unsorted_packed": ("GRU", (3, 4), lambda: (pack_padded_sequence(_X, [5, 3], enforce_sorted=False), (_H,))),
    "tuple_hx_sorted_packed": ("GRU", (3, 4), lambda: (pack_padded_sequence(_X, [5, 3]), (_H,))),
    "lstm_three_states_and_int_input": ("LSTM", (3, 4), lambda: (_X.long(), (_H, _H, _H))),
    "lstm_three_states_wrong_c": ("LSTM", (3, 4), lambda: (_X, (_H, torch.zeros(1, 2, 5), _H))),
    # a sorted packed input is checked before its hx is touched
    "list_hx_sorted_packed_input_dtype": ("GRU", (3, 4), lambda: (pack_padded_sequence(_X.double(), [5, 3]), [_H])),
    "list_hx_sorted_packed_input_size": ("RNN", (2, 4), lambda: (pack_padded_sequence(_X, [5, 3]), [_H])),
}


@pytest.mark.parametrize("case", QUOTED)
def test_error_is_torchs_type_with_its_words(case):
    """The first fault torch.nn finds, in its words, as an instance of its exception type."""
    name, args, make = QUOTED[case]
    want_type, want = _error(getattr(torch.nn, name)(*args), *make())
    with pytest.raises(want_type) as info:
        getattr(gnn, name)(*args)(*make())
    assert want in str(info.value)
