"""Behaviours where gpurnn.nn once differed from torch.nn (found by a differential probe), each against torch.nn."""
import contextlib
import copy
import gc
import pickle
import warnings
import weakref

import pytest
import torch

import gpurnn.nn as gnn


def _pair(name, *args, **kwargs):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(*args, **kwargs)
    mine = getattr(gnn, name)(*args, **kwargs)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_output_can_be_written_in_place(name, batch_first, route, monkeypatch):
    """torch.nn's one-direction output is not a view of a multi-output op: `y += 1` works, and so does
    backward through it (torch's LSTM refuses at backward, so the LSTM is left out)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    x = torch.randn(5, 2, 3)
    grads = []
    for m in _pair(name, 3, 4, batch_first=batch_first):
        m.zero_grad()
        y, _ = m(x)
        y += 1
        torch.relu_(y)
        y.sum().backward()
        grads.append(m.weight_hh_l0.grad)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("name", ["RNN", "LSTM"])   # the modules torch autocasts on the CPU
def test_autocast_carries_the_state_from_step_to_step(name):
    """Truncated BPTT under autocast: the state returned in bf16 goes back in with an fp32 input."""
    results = []
    for m in _pair(name, 3, 4):
        torch.manual_seed(1)
        h = None
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, h = m(torch.randn(5, 2, 3), h)
        results.append((y.dtype, y.float()))
    assert results[1][0] == results[0][0] == torch.bfloat16
    torch.testing.assert_close(results[1][1], results[0][1], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("input_size, hidden_size, batch", [(10, 0, 3), (0, 4, 3), (3, 4, 0)],
                         ids=["no-hidden", "no-input", "no-batch"])
@pytest.mark.parametrize("name", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cells_with_an_empty_dimension(name, input_size, hidden_size, batch):
    """torch's own test_RNN_cell_forward_zero_hidden_size, and more: shapes, strides, and gradients."""
    x = torch.randn(batch, input_size, requires_grad=True)
    outs = []
    for m in _pair(name, input_size, hidden_size):
        out = m(x)
        out = out if isinstance(out, tuple) else (out,)
        outs.append([(tuple(o.shape), o.stride()) for o in out])
        sum(o.sum() for o in out).backward()
    assert outs[1] == outs[0]


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_hidden_state_on_another_device_raises_torchs_error(name):
    h = torch.zeros(1, 2, 4, device="meta")
    h = (h, h) if name == "LSTM" else h
    for m in _pair(name, 3, 4):
        with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device, found input "
                                               "tensor at cpu and hidden tensor at meta"):
            m(torch.randn(5, 2, 3), h)
        with pytest.raises(RuntimeError, match="^Tensor on device cpu is not on the expected device meta!$"):
            m(torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]), h)


def test_parameters_on_another_device_raise_torchs_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cls in (torch.nn.LSTM, gnn.LSTM):
            with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device, found "
                                                   "input tensor at cpu and parameter tensor at meta"):
                cls(3, 4, device="meta")(torch.randn(5, 2, 3))


def _outcome(call):
    """What a call gives: its exception's type and message, or its first output's device, shape, dtype and strides."""
    try:
        out = call()
    except Exception as err:   # the test compares what each module raised
        return type(err), str(err)
    out = out[0] if isinstance(out, tuple) else out
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return out.device, out.shape, out.dtype, out.stride()


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False])
def test_a_cells_hidden_state_on_another_device_gets_what_torch_nn_gives(name, bias):
    """torch's words depend on the cell and its bias (and without a bias, RNNCell runs on the meta device)."""
    h = torch.zeros(2, 4, device="meta")
    ref, mine = _pair(name, 3, 4, bias=bias)
    hx = (h, h) if name == "LSTMCell" else h
    want, got = (_outcome(lambda: m(torch.randn(2, 3), hx)) for m in (ref, mine))
    if isinstance(got[0], type):   # a subclass of torch's type is torch's type
        assert issubclass(got[0], want[0]) and got[1] == want[1]
    else:
        assert got == want


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_an_empty_sequence_with_a_hidden_state_elsewhere_is_torchs_device_error(name):
    """torch's op checks the devices before the length."""
    h = torch.zeros(1, 2, 4, device="meta")
    for m in _pair(name, 3, 4):
        with pytest.raises(RuntimeError, match="^Input and hidden tensors are not at the same device"):
            m(torch.randn(0, 2, 3), (h, h) if name == "LSTM" else h)


@pytest.mark.parametrize("case", ["width", "int64", "float64"])
@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"proj_size": 2}])
def test_a_packed_lstm_inputs_dtype_or_width_is_refused_in_both_types_with_torch_nns_words(case, kwargs):
    """torch.nn's LSTM checks no packed input: its op's GEMM refuses it. gpurnn's check names the input, its error
    is a ValueError and torch's RuntimeError, and ends with torch.nn's words."""
    x = {"width": torch.randn(5, 2, 4), "int64": torch.ones(5, 2, 3, dtype=torch.int64),
         "float64": torch.randn(5, 2, 3, dtype=torch.float64)}[case]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3])
    ref, mine = _pair("LSTM", 3, 4, **kwargs)
    with pytest.raises(RuntimeError) as torch_err:
        ref(packed)
    with pytest.raises(ValueError) as err:
        mine(packed)
    assert isinstance(err.value, RuntimeError) and str(err.value).endswith(f"; torch.nn: {torch_err.value}")
    with pytest.raises((ValueError, RuntimeError)) as words:   # torch.nn's check of a padded input: its words
        ref.check_input(packed.data, packed.batch_sizes)      # (they change between torch versions)
    assert str(err.value).startswith(f"{words.value}; torch.nn: ")
    assert ("input_size" if case == "width" else str(x.dtype)) in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU"])
def test_a_half_precision_single_step_gives_torch_nns_bits_and_strides(name, dtype, monkeypatch):
    """torch's step op, where the engine would carry the step in float32; an hx transposed in memory gives the
    output torch.nn's strides (its GRUCell's follow hx)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    cell = name.endswith("Cell")
    ref, mine = (m.to(dtype) for m in _pair(name, 8, 5))
    x = torch.randn(*([] if cell else [1]), 2, 8, dtype=dtype, requires_grad=True)
    h = torch.randn(5, 2, dtype=dtype).t()
    h = h if cell else h.unsqueeze(0)
    outs = [m(x, (h, h) if name.startswith("LSTM") else h) for m in (ref, mine)]
    outs = [out[0] if isinstance(out, tuple) else out for out in outs]
    grads = [torch.autograd.grad(out.float().square().sum(), x)[0] for out in outs]
    assert outs[1].stride() == outs[0].stride()
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


@pytest.mark.parametrize("route", ["engine", "auto"])
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_hidden_state_of_another_dtype_is_torch_nns_runtime_error(name, route, monkeypatch):
    """torch raises its matmul's RuntimeError; gpurnn's TypeError names the argument, is a RuntimeError too, and
    ends with torch.nn's message (which torch's own tests match)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    h = torch.zeros(1, 2, 4)
    hx = (h, h.double()) if name == "LSTM" else h
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    ref, mine = (m.double() for m in _pair(name, 3, 4))
    with pytest.raises(RuntimeError) as want:
        ref(x, hx)
    with pytest.raises(RuntimeError, match=f"{'h_0' if name == 'LSTM' else 'hx'}: expected dtype torch.float64 "
                                           r"\(the dtype of input\), got torch.float32; torch.nn: ") as got:
        mine(x, hx)
    assert isinstance(got.value, TypeError) and str(got.value).endswith(str(want.value))


@pytest.mark.parametrize("route", ["engine", "auto"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_a_float64_lstms_float32_cell_state_is_promoted_as_by_torch_nn(packed, route, monkeypatch):
    """torch.nn's CPU LSTM op promotes a c_0 of another dtype than the input: a float64 call runs with it."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3])) if packed else x
    hx = (torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 2, 4))
    (y0, (h0, c0)), (y1, (h1, c1)) = (m.double()(x, hx) for m in _pair("LSTM", 3, 4))
    for a, b in ((y0.data if packed else y0, y1.data if packed else y1), (h0, h1), (c0, c1)):
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("route", ["engine", "torch", "auto"])
@pytest.mark.parametrize("hx_shapes", [((1, 2, 4), (2, 2, 4)), ((1, 0, 4), (1, 2, 4))], ids=["layers", "batch"])
def test_a_packed_lstms_hidden_state_of_other_shapes_is_refused(hx_shapes, route, monkeypatch):
    """torch.nn's LSTM does not check a packed input's hidden state: its op runs on extra layer rows, or crashes
    the process (a bidirectional one). gpurnn checks it on every route, as torch.nn does a tensor input's."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    m = gnn.LSTM(3, 4)
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 5]))
    for _ in range(2):   # the auto route's second call: its route timed
        with pytest.raises(RuntimeError, match=r"Expected hidden\[[01]\] size \(1, 2, 4\), got \["):
            m(x, tuple(torch.randn(s) for s in hx_shapes))


def test_rnn_keeps_the_nonlinearity_it_was_built_with():
    """torch.nn.RNN dispatches on `mode`, set by its constructor: changing `nonlinearity` later changes nothing."""
    x = torch.randn(5, 2, 3)
    outs = []
    for m in _pair("RNN", 3, 4, nonlinearity="tanh"):
        m.nonlinearity = "relu"
        outs.append(m(x)[0])
    torch.testing.assert_close(outs[1], outs[0])


@pytest.mark.parametrize("when", ["built", "set later"])
def test_a_cell_with_an_unknown_nonlinearity_raises_torchs_error_at_forward(when):
    """torch.nn.RNNCell takes any nonlinearity when built and refuses it at forward; the engine once ran relu."""
    for m in _pair("RNNCell", 3, 4, **({"nonlinearity": "gelu"} if when == "built" else {})):
        m.nonlinearity = "gelu"
        with pytest.raises(RuntimeError, match="^Unknown nonlinearity: gelu$"):
            m(torch.randn(2, 3))


@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_packed_input_with_a_2d_hidden_state_names_the_expected_size(name):
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    for m in _pair(name, 3, 4):
        with pytest.raises(RuntimeError, match=r"^Expected hidden size \(1, 2, 4\), got \[2, 4\]$"):
            m(x, torch.zeros(2, 4))


@pytest.mark.parametrize("hx_batch, raises", [(5, None), (2, "out of DATA bounds")], ids=["larger", "smaller"])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_an_unsorted_packed_inputs_hx_rows_are_selected_before_the_checks(name, hx_batch, raises):
    """torch.nn picks a packed input's rows of hx (sorted_indices) first: a larger hx runs on those rows,
    a smaller one fails in that selection."""
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(4, 3, 3), [2, 4, 3], enforce_sorted=False)
    h = torch.randn(1, hx_batch, 4)
    hx = (h, h + 1) if name == "LSTM" else h
    results = []
    for m in _pair(name, 3, 4):
        if raises:
            with pytest.raises(RuntimeError, match=raises):
                m(x, hx)
        else:
            y, hidden = m(x, hx)
            results.append((y.data, hidden))
    for got, want in zip(*results[::-1]):
        torch.testing.assert_close(got, want)


_PACKED_LSTM_HX = [(False, lambda h: (h, h + 1, h), None), (False, lambda h: torch.stack([h, h + 1]), None),
                   (False, lambda h: (h,), IndexError), (True, lambda h: (h, h + 1, h), RuntimeError),
                   (True, lambda h: torch.stack([h, h + 1]), TypeError)]


@pytest.mark.parametrize("enforce_sorted, hx_of, raises", _PACKED_LSTM_HX,
                         ids=["unsorted-3-tuple", "unsorted-stacked", "unsorted-1-tuple", "sorted-3-tuple",
                              "sorted-stacked"])
def test_a_packed_lstm_input_reads_hx_as_torch_nn_does(enforce_sorted, hx_of, raises):
    """To select an unsorted packed input's rows torch.nn reads hx[0] and hx[1] and passes only those on; a sorted
    one's hx goes to its op as it is, which takes exactly two tensors."""
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(4, 3, 3), [4, 3, 2] if enforce_sorted else [2, 4, 3],
                                                enforce_sorted=enforce_sorted)
    h = torch.linspace(-1, 1, 12).view(1, 3, 4)
    results = []
    for m in _pair("LSTM", 3, 4):
        if raises:
            with pytest.raises(raises):
                m(x, hx_of(h))
        else:
            y, hidden = m(x, hx_of(h))
            results.append((y.data, hidden))
    for got, want in zip(*results[::-1]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidir"])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_dropout_on_packed_input_draws_torchs_masks(name, bidirectional):
    """torch.nn applies dropout between layers to the packed rows: the same seed, the same outputs and
    gradients (and the same random numbers drawn after)."""
    x = torch.randn(5, 3, 3)
    results = []
    for m in _pair(name, 3, 4, num_layers=3, dropout=0.5, bidirectional=bidirectional):
        torch.manual_seed(1)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False)
        y, _ = m(packed)
        y.data.sum().backward()
        results.append((y.data, m.weight_ih_l0.grad, torch.rand(1)))
    for got, want in zip(*results[::-1]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name, hx_of", [("LSTM", lambda h: (h, h, h)), ("LSTMCell", lambda h: (h, h, h))],
                         ids=["LSTM", "LSTMCell"])
def test_three_hidden_states_raise_torchs_runtime_error(name, hx_of):
    x, h = (torch.randn(5, 2, 3), torch.zeros(1, 2, 4)) if name == "LSTM" else (torch.randn(2, 3), torch.zeros(2, 4))
    op = "lstm" if name == "LSTM" else "lstm_cell"
    for m in _pair(name, 3, 4):
        with pytest.raises(RuntimeError, match=f"{op} expects two hidden states"):
            m(x, hx_of(h))


# (module, input shape, hx, what torch.nn raises or that it runs): where torch.nn reads hx[0] and hx[1] (an LSTM's
# tensor input, a cell's unbatched one), one tensor is an IndexError and a bare tensor is indexed as the pair (which
# the LSTM's op then refuses)
_SHORT_HX = [
    ("LSTM", (5, 2, 3), lambda: (torch.zeros(1, 2, 4),), IndexError),
    ("LSTM", (5, 3), lambda: (torch.zeros(1, 4),), IndexError),
    ("LSTM", (5, 2, 3), lambda: torch.zeros(1, 2, 4), IndexError),
    ("LSTM", (5, 2, 3), lambda: torch.zeros(2, 2, 4), "hx and cx should also be 3-D but got \\(2-D, 2-D\\)"),
    ("LSTM", (5, 2, 3), lambda: torch.zeros(2, 1, 2, 4), TypeError),
    ("LSTMCell", (3,), lambda: (torch.zeros(4),), IndexError),
    ("LSTMCell", (3,), lambda: torch.zeros(4), "Expected hx\\[0\\] to be 1D or 2D, got 0D"),
    ("LSTMCell", (3,), lambda: torch.zeros(2, 4), None),
    ("LSTMCell", (2, 3), lambda: torch.zeros(2, 2, 4), TypeError),
    # unbatched input: torch.nn passes only hx[0] and hx[1] on, so a longer tuple and a stacked tensor run
    ("LSTM", (5, 3), lambda: torch.linspace(-1, 1, 8).view(2, 1, 4), None),
    ("LSTM", (5, 3), lambda: (torch.full((1, 4), 0.5), torch.full((1, 4), -0.5), torch.ones(1, 4)), None),
    ("LSTMCell", (3,), lambda: (torch.full((4,), 0.5), torch.full((4,), -0.5), torch.ones(4)), None),
]


@pytest.mark.parametrize("name, shape, hx_of, raises", _SHORT_HX, ids=[f"{c[0]}-{i}" for i, c in enumerate(_SHORT_HX)])
def test_an_lstm_hx_that_is_not_a_pair_is_read_as_torch_reads_it(name, shape, hx_of, raises, monkeypatch):
    x = torch.randn(*shape)
    results = []
    for m in _pair(name, 3, 4):
        if raises is None:
            results.append(m(x, hx_of()))
        elif isinstance(raises, str):
            with pytest.raises(RuntimeError if name == "LSTM" else ValueError, match=raises):
                m(x, hx_of())
        else:
            with pytest.raises(raises):
                m(x, hx_of())
    for got, want in zip(*results[::-1]):
        torch.testing.assert_close(got, want)
    if raises in (IndexError, TypeError):
        with pytest.raises(raises) as torch_nn:
            getattr(torch.nn, name)(3, 4)(x, hx_of())
        for patched in (False, True):   # patched: torch.nn's name bound to gpurnn's class (a drop-in by patching; it
            # was taken for torch.nn's, which recursed until Python's limit)
            if patched:
                monkeypatch.setattr(torch.nn, name, getattr(gnn, name))
            with pytest.raises(TypeError, match="hx: expected a tuple") as ours:   # gpurnn's error names hx
                getattr(gnn, name)(3, 4)(x, hx_of())
            assert str(ours.value).endswith(f"; torch.nn: {torch_nn.value}")   # then torch.nn's words


@pytest.mark.parametrize("where", ["input", "hx"])
@pytest.mark.parametrize("name", ["RNN", "GRU", "GRUCell"])
def test_a_list_instead_of_a_tensor_is_torchs_attribute_error(name, where):
    """torch.nn fails on `.dim()` of a list (AttributeError); gpurnn's error names the argument, is one too,
    and says torch.nn's words."""
    x, h = (torch.randn(2, 3), torch.zeros(2, 4)) if "Cell" in name else (torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    args = (x.tolist(), None) if where == "input" else (x, h.tolist())
    for m in _pair(name, 3, 4):
        with pytest.raises(AttributeError, match="'list' object has no attribute 'dim'"):
            m(*args)
    with pytest.raises(TypeError, match=f"{where}: expected a") as raised:
        getattr(gnn, name)(3, 4)(*args)
    again = pickle.loads(pickle.dumps(raised.value))   # as torch's, it crosses processes (DataLoader workers)
    assert type(again) is type(raised.value) and str(again) == str(raised.value)


class _Stack(torch.nn.Module):
    def __init__(self, nn):
        super().__init__()
        self.rnn, self.cell = nn.LSTM(3, 4, batch_first=True), nn.GRUCell(4, 4)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.cell(y[:, -1], h[0]) + c.sum()


def test_fx_symbolic_trace_records_the_modules_as_torch_nns():
    """fx keeps torch.nn's modules as call_module nodes (their forward is not traced); gpurnn's are the same."""
    torch.manual_seed(0)
    ref, mine = _Stack(torch.nn), _Stack(gnn)
    mine.load_state_dict(ref.state_dict())
    graphs = [torch.fx.symbolic_trace(m) for m in (ref, mine)]
    ops = [[(n.op, str(n.target)) for n in g.graph.nodes] for g in graphs]
    assert ops[1] == ops[0] and ("call_module", "rnn") in ops[1] and ("call_module", "cell") in ops[1]
    assert isinstance(graphs[1].rnn, gnn.LSTM)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(graphs[1](x), ref(x))


@pytest.mark.parametrize("name, args", [("RNN", (3, 4)), ("LSTM", (3, 4)), ("GRUCell", (3, 4))])
def test_fx_symbolic_trace_of_the_module_itself_fails_as_torch_nns(name, args):
    """fx traces the root module's forward: torch.nn's fails on its control flow with a TraceError; so does gpurnn's
    (it had failed with an AttributeError naming an attribute '')."""
    messages = []
    for parametrized in (False, True):   # (a parametrization swaps the class for one of torch.nn.utils')
        for m in _pair(name, *args):
            if parametrized:
                torch.nn.utils.parametrize.register_parametrization(m, "weight_hh" + "_l0" * (name != "GRUCell"),
                                                                    torch.nn.Identity())
            with pytest.raises(torch.fx.proxy.TraceError) as err:
                torch.fx.symbolic_trace(m)
            messages.append(str(err.value))
    assert messages[1] == messages[0] and messages[3] == messages[2]


def test_functional_call_with_parameters_of_another_dtype_runs_as_torch_nn():
    """torch.nn refreshes _flat_weights at every call, and its input check reads them (meta-learning)."""
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    outs = [torch.func.functional_call(m, {k: v.double() for k, v in m.named_parameters()}, (x,))[0]
            for m in _pair("GRU", 3, 4)]
    torch.testing.assert_close(outs[1], outs[0])


class _Counted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, w):
        self.calls += 1
        return w * 1.5


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_parametrized_weights_are_evaluated_as_often_as_in_torch_nn(name):
    """A parametrization with state (spectral_norm's power iteration) must see the calls torch.nn makes."""
    counts, outs = [], []
    for m in _pair(name, 3, 4, num_layers=2):
        hooks = {n: _Counted() for n in ("weight_ih_l0", "weight_hh_l1")}
        for n, p in hooks.items():
            torch.nn.utils.parametrize.register_parametrization(m, n, p)
        outs.append(m(torch.ones(5, 2, 3))[0])
        counts.append({n: p.calls for n, p in hooks.items()})
    assert counts[1] == counts[0]
    torch.testing.assert_close(outs[1], outs[0])


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_meta_tensors_give_torch_nns_shapes(name):
    shape = (2, 3) if "Cell" in name else (5, 2, 3)
    results = []
    for m in (getattr(torch.nn, name)(3, 4, device="meta"), getattr(gnn, name)(3, 4, device="meta")):
        out = m(torch.randn(*shape, device="meta", requires_grad=True))
        results.append([t.shape for t in torch.utils._pytree.tree_leaves(out)])
    assert results[1] == results[0]


# Unusual hidden sizes, one per test, so that no other test has timed the CPU route of the layer shape already.
def _fresh_gru_pair(hidden):
    return _pair("GRU", 5, hidden)


def test_no_route_timing_where_saved_tensor_hooks_are_disabled(monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    x = torch.randn(9, 3, 5, requires_grad=True)
    outs = []
    for m in _fresh_gru_pair(11):
        with torch.autograd.graph.disable_saved_tensors_hooks("no saved-tensor hooks here"):
            outs.append(m(x)[0])
    torch.testing.assert_close(outs[1], outs[0])


def test_a_flop_counter_sees_what_it_sees_of_torch_nn(monkeypatch):
    """The first call of a layer shape times the routes: under a dispatch mode it must not (the mode would count
    the timing runs); it runs torch's op, as torch.nn does."""
    from torch.utils.flop_counter import FlopCounterMode
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    x = torch.randn(9, 3, 5, requires_grad=True)
    flops = []
    for m in _fresh_gru_pair(13):
        with FlopCounterMode(display=False) as counter:
            m(x)[0].sum().backward()
        flops.append(counter.get_total_flops())
    assert flops[1] == flops[0] > 0


def test_fake_tensor_mode_runs_as_torch_nn(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    shapes = []
    for m in _fresh_gru_pair(15):
        with FakeTensorMode(allow_non_fake_inputs=True):
            shapes.append(m(torch.randn(9, 3, 5))[0].shape)
    assert shapes[1] == shapes[0] == (9, 3, 15)


def test_a_weight_of_the_wrong_shape_is_torchs_runtime_error():
    x = torch.randn(5, 2, 3)
    for m in _pair("GRU", 3, 4):
        m.weight_hh_l0 = torch.nn.Parameter(torch.randn(12, 5))
        with pytest.raises(RuntimeError):
            m(x)
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected shape \(12, 4\), got \(12, 5\)"):
        m(x)


@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_an_initial_state_changed_in_place_before_backward_is_torchs_error(name, route, monkeypatch):
    """torch.nn's ops save h0 (and c0): changing it in place after forward fails at backward."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    for m in _pair(name, 3, 4):
        states = [torch.zeros(1, 2, 4) for _ in range(2 if name == "LSTM" else 1)]
        y, _ = m(torch.randn(5, 2, 3), tuple(states) if name == "LSTM" else states[0])
        states[-1].add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def _set_data(name, dtype):
    return lambda m: setattr(getattr(m, name), "data", getattr(m, name).data.to(dtype))


_CHANGED_AFTER_BUILD = {"weight_hh double": _set_data("weight_hh_l0", torch.float64),
                        "bias bfloat16": _set_data("bias_ih_l1", torch.bfloat16),
                        "dropout -0.5": lambda m: setattr(m, "dropout", -0.5),
                        "dropout 1.5": lambda m: setattr(m, "dropout", 1.5),
                        "bias False": lambda m: setattr(m, "bias", False),
                        "num_layers 1": lambda m: setattr(m, "num_layers", 1),
                        "bidirectional": lambda m: setattr(m, "bidirectional", True),
                        "mode GRU": lambda m: setattr(m, "mode", "GRU"),   # the engine ran an RNN as tanh
                        "mode RNN_RELU": lambda m: setattr(m, "mode", "RNN_RELU")}


@pytest.mark.parametrize("change", _CHANGED_AFTER_BUILD)
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_attributes_changed_after_construction_behave_as_in_torch_nn(name, change, monkeypatch):
    """The engine read the weights by name and cast them to the input's dtype: it ran where torch.nn raises."""
    if name == "LSTM" and change == "bias False":
        pytest.skip("torch.nn's LSTM then runs on weights it misreads: its output is not reproducible")
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    x = torch.randn(5, 2, 3)
    outcomes = []
    for m in _pair(name, 3, 4, num_layers=2):
        _CHANGED_AFTER_BUILD[change](m)
        try:
            outcomes.append(m(x)[0])
        except Exception as e:   # compared below: the same type and message as torch.nn's
            outcomes.append((type(e), str(e)))
    if isinstance(outcomes[0], tuple):
        assert outcomes[1] == outcomes[0]
    else:
        torch.testing.assert_close(outcomes[1], outcomes[0])


@pytest.mark.parametrize("inference", ["input", "h0"])
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_an_inference_tensor_in_a_call_that_needs_grad_is_torchs_error(name, inference, monkeypatch):
    """An inference tensor has no version counter: reading it raised "Inference tensors do not track version
    counter" where torch.nn says that it cannot be saved for backward (and how to work around it)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    with torch.inference_mode():
        x, h = torch.randn(5, 2, 3), torch.zeros(1, 2, 4)
    if inference == "input":
        h = h.clone()
    else:
        x = x.clone()
    for m in _pair(name, 3, 4):
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
            m(x, (h, h) if name == "LSTM" else h)


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_a_module_built_in_inference_mode_needs_grad_as_torch_nn_s(name, steps, monkeypatch):
    """Its weights are inference tensors that require grad: torch.nn's LSTM op refuses to save them beside the
    (normal) zero state it makes, its one-step RNN and GRU run; the LSTM's one-step torch loop, whose gradients need
    no weight there, ran."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    with torch.inference_mode():
        pair = _pair(name, 3, 4)
    x = torch.randn(steps, 2, 3)
    outcomes = []
    for m in pair:
        try:
            outcomes.append(m(x)[0])
        except RuntimeError as e:   # compared below: torch.nn's message
            outcomes.append(str(e))
    if isinstance(outcomes[0], str):
        assert outcomes[1] == outcomes[0]
    else:
        torch.testing.assert_close(outcomes[1], outcomes[0])


@pytest.mark.parametrize("changed", ["weight_hh", "input", "bias_ih", "every parameter"])
@pytest.mark.parametrize("name, shape", [("RNN", (5, 2, 3)), ("RNN", (5, 3)), ("LSTM", (5, 2, 3)), ("GRU", (5, 2, 3)),
                                         ("RNNCell", (2, 3)), ("RNNCell", (3,)), ("GRUCell", (2, 3))])
def test_inputs_changed_in_place_where_autograd_keeps_a_copy_get_the_gradients_of_the_call(name, shape, changed):
    """Under torch.autograd.graph.allow_mutation_on_saved_tensors, autograd keeps a copy of a saved tensor changed
    in place before backward (an optimizer step, say), and backward differentiates the call as it was made (the
    engine's tape reads the changed memory: the layer is rerun on the copies). Unbatched input: the module's view."""
    def grads(mutate):
        torch.manual_seed(0)
        m = getattr(gnn, name)(3, 4)
        x = torch.randn(shape, requires_grad=True)
        with torch.autograd.graph.allow_mutation_on_saved_tensors():
            out = m(x)
            loss = (out[0] if isinstance(out, tuple) else out).square().sum()
            if mutate:
                changes = ([x] if changed == "input" else list(m.parameters()) if changed == "every parameter"
                           else [getattr(m, changed + ("" if "Cell" in name else "_l0"))])
                with torch.no_grad():
                    for t in changes:
                        t.mul_(3)
            loss.backward()
        return [x.grad] + [p.grad for p in m.parameters()]

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_complex_modules_run_as_torch_nns(name):
    """torch.nn runs complex modules on the CPU (the engine is real: its gradients were silently wrong)."""
    outs = []
    for m in _pair(name, 3, 4, dtype=torch.complex64):
        torch.manual_seed(1)
        x = torch.randn(*([5] if "Cell" not in name else []), 2, 3, dtype=torch.complex64, requires_grad=True)
        h = torch.randn(*([1] if "Cell" not in name else []), 2, 4, dtype=torch.complex64, requires_grad=True)
        out = m(x, (h, h) if "LSTM" in name else h)
        y = out[0] if isinstance(out, tuple) else out
        y.abs().sum().backward()
        outs.append([y, x.grad, h.grad] + [p.grad for p in m.parameters()])
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


_OUTPUT_IN_PLACE = [("LSTM", {}), ("LSTM", {"num_layers": 2, "batch_first": True}), ("LSTM", {"bidirectional": True}),
                    ("LSTM", {"proj_size": 2}), ("LSTM", {"dtype": torch.float64}), ("LSTM", {"packed": True}),
                    ("LSTM", {"packed": "equal lengths"}), ("GRU", {"packed": "equal lengths"}),
                    ("GRU", {}), ("RNN", {"num_layers": 2})]


@pytest.mark.parametrize("changed", ["output", "bias", "weight", "input"])
@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("steps", [5, 1])
@pytest.mark.parametrize("name, kwargs", _OUTPUT_IN_PLACE, ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k in
                                                                 _OUTPUT_IN_PLACE])
def test_an_output_or_bias_changed_in_place_before_backward_fails_where_torch_nn_fails(name, kwargs, steps, route,
                                                                                       changed, monkeypatch):
    """oneDNN's CPU LSTM saves its output y and its biases (float32, neither packed nor projected): changing one in
    place before backward is an error there; elsewhere, and for the RNN and GRU, it runs. One step too (gpurnn's
    torch loop runs an LSTM's: it ran where torch.nn fails), and for its weights and input (the loop saved neither
    where the input needs no gradient: a packed input's rows are the module's copy)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    kwargs = dict(kwargs)
    packed, dtype = kwargs.pop("packed", False), kwargs.get("dtype", torch.float32)
    x = torch.randn(steps, 2, 3, dtype=dtype, requires_grad=changed in ("output", "bias"))   # (else data, as a batch's)
    outcomes = []
    for m in _pair(name, 3, 4, **kwargs):
        lengths = [steps, steps if packed == "equal lengths" else 1]   # (all equal: torch.nn's LSTM saves y)
        y, _ = m(torch.nn.utils.rnn.pack_padded_sequence(x, lengths) if packed else x)
        y = y.data if packed else y
        with torch.no_grad():
            {"output": y, "bias": m.bias_ih_l0, "weight": m.weight_ih_l0, "input": x}[changed].add_(1)
        try:
            y.sum().backward()
            outcomes.append("runs")
        except RuntimeError as err:
            assert "modified by an inplace operation" in str(err)
            outcomes.append("raises")
    assert outcomes[1] == outcomes[0]


_FROZEN = [("RNN", {}), ("RNN", {"num_layers": 2, "bidirectional": True}), ("GRU", {}), ("GRU", {"bidirectional": True}),
           ("LSTM", {}), ("LSTM", {"dtype": torch.float64}), ("LSTM", {"proj_size": 2, "num_layers": 2})]


@pytest.mark.parametrize("hook", [None, "copying"])
@pytest.mark.parametrize("frozen", ["weight_ih", "every weight"])
@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("name, kwargs", _FROZEN, ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k in _FROZEN])
def test_an_input_changed_in_place_before_backward_of_a_frozen_layer_runs_where_torch_nns_does(name, kwargs, route,
                                                                                               frozen, hook, monkeypatch):
    """torch's GRU, RNN and float64 or projected LSTM save x only where weight_ih needs a gradient: with it frozen, x
    changed in place before backward runs there (x's gradient needs weight_ih alone), and ran into the version check
    on the engine, which saved x always; oneDNN's float32 LSTM saves every input: an error in both. Under a hook that
    saves copies (an offloading store: the engine's record of the forward is lost, and the layer reruns) x goes
    through the hook as it was."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    dtype = kwargs.get("dtype", torch.float32)
    hooks = (torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t) if hook
             else contextlib.nullcontext())
    results, data = [], torch.randn(5, 2, 3, dtype=dtype)
    for m in _pair(name, 3, 4, **kwargs):
        for n, p in m.named_parameters():
            p.requires_grad_(not n.startswith("weight_ih" if frozen == "weight_ih" else "weight"))
        x = data.clone().requires_grad_()
        x_in = x * 1   # changed in place below; x stays a leaf
        with hooks:
            y, _ = m(x_in)
        with torch.no_grad():
            x_in.mul_(1.5)
        try:
            y.square().sum().backward()
            results.append([x.grad] + [p.grad for p in m.parameters()])
        except RuntimeError as err:
            assert "modified by an inplace operation" in str(err)
            results.append("raises")
    if results[0] == "raises":
        assert name == "LSTM" and dtype == torch.float32 and "proj_size" not in kwargs and not hook
        assert results[1] == "raises"
    else:
        for got, want in zip(results[1], results[0]):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_a_checkpoint_frees_a_frozen_layers_input_as_torch_nn(name, monkeypatch):
    """Under saved-tensor hooks x goes through them, so a checkpoint frees an intermediate input after forward (kept
    outside them, it stayed alive until backward)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    alive = []
    for m in _pair(name, 3, 4):
        m.weight_ih_l0.requires_grad_(False)
        refs = []

        def run(inp):
            x = inp.tanh()   # an intermediate, the layer's input
            refs.append(weakref.ref(x))
            return m(x)[0]
        y = torch.utils.checkpoint.checkpoint(run, torch.randn(5, 2, 3, requires_grad=True), use_reentrant=False)
        gc.collect()
        alive.append(refs[0]() is not None)
        y.sum().backward()
    assert alive == [False, False]


@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("steps", [4, 1])
@pytest.mark.parametrize("name, kwargs", [("LSTM", {}), ("LSTM", {"bidirectional": True}), ("LSTM", {"proj_size": 2}),
                                          ("LSTM", {"dtype": torch.float64}), ("GRU", {}), ("RNN", {})])
def test_an_equal_length_packed_output_is_a_view_where_torch_nns_is(name, kwargs, steps, route, monkeypatch):
    """torch.nn's packed output is a view of its op's padded output where oneDNN's LSTM runs it (float32, not
    projected, all lengths equal): detach_() of its data then fails; elsewhere it is a tensor of its own."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    x = torch.randn(steps, 3, 3, dtype=kwargs.get("dtype", torch.float32))
    views = []
    for m in _pair(name, 3, 4, **kwargs):
        data = m(torch.nn.utils.rnn.pack_padded_sequence(x, [steps] * 3))[0].data
        views.append(data._is_view())
        if not data._is_view():
            data.detach_()
    assert views[1] == views[0]


def test_the_first_equal_length_packed_lstm_warns_nothing_as_torch_nns():
    """Its call asks torch's op once whether oneDNN runs it (cpu/layer.onednn_runs_equal_lengths): in a fresh process,
    under warnings as errors, as torch.nn (forcing oneDNN on for that question warned about TF32)."""
    import subprocess
    import sys

    code = ("import warnings, torch, gpurnn.nn as gnn\nwarnings.simplefilter('error')\n"
            "x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(3, 2, 3), [3, 3])\n"
            "torch.nn.LSTM(3, 4)(x)\ngnn.LSTM(3, 4)(x)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_backward_computes_dx_only_where_a_gradient_needs_it(name, monkeypatch):
    """As torch's ops: the first layer of a stack on a constant input skips its dx GEMM; the second needs its dx."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    from gpurnn.cells.base import Cell
    asked, input_grad = [], Cell.input_grad
    monkeypatch.setattr(Cell, "input_grad", lambda self, d, w: asked.append(self.need_dx) or input_grad(self, d, w))
    m = getattr(gnn, name)(3, 4, num_layers=2, backend="numpy")
    for x in (torch.randn(5, 2, 3), torch.randn(5, 2, 3, requires_grad=True)):
        m(x)[0].sum().backward()
    assert asked == [True, False, True, True]   # (backward runs the last layer first)


@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("name", ["RNN", "RNNCell"])
def test_relu_passes_the_gradient_where_its_output_is_nan(name, route, monkeypatch):
    """torch's relu backward zeroes the gradient where the output is <= 0, so a NaN output passes it."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    x = torch.tensor([[float("nan"), 1.0], [0.5, -1.0]])
    x = x if "Cell" in name else x[:, None]
    grads = []
    for m in _pair(name, 2, 3, nonlinearity="relu"):
        out = m(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        grads.append([p.grad for p in m.parameters()])
    for got, want in zip(*grads[::-1]):
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_inf_state_in_a_sequence_that_has_ended_leaves_the_weight_gradient_finite(dtype, monkeypatch):
    """Rows past their length hold their state, with no gradient: 0 * inf made dW_hh NaN where torch.nn, which
    skips those rows, gives a finite gradient (relu of an inf input is an inf state)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    x = torch.randn(3, 2, 2, dtype=dtype)
    x[0, 1] = float("inf")   # the second sequence, of length 1
    grads = []
    for m in _pair("RNN", 2, 3, nonlinearity="relu", dtype=dtype):
        y, _ = m(torch.nn.utils.rnn.pack_padded_sequence(x, [3, 1]))
        y.data.sum().backward()
        grads.append(m.weight_hh_l0.grad)
    assert grads[0].isfinite().all()
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_inf_cell_state_gives_torchs_inf_gradient_not_nan(dtype, monkeypatch):
    """d/df of f * c_{t-1} is c_{t-1} f (1 - f): computed as fc - f fc, an inf c_{t-1} made it NaN."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    x0 = torch.randn(3, 2, 2, dtype=dtype)
    grads = []
    for m in _pair("LSTM", 2, 3, dtype=dtype):
        c0 = torch.zeros(1, 2, 3, dtype=dtype)
        c0[0, 0, 0] = float("inf")
        x = x0.clone().requires_grad_(True)
        y, (_, c) = m(x, (torch.zeros(1, 2, 3, dtype=dtype), c0))
        (y.sum() + c.sum()).backward()
        grads.append(x.grad[-1, 0])   # the last step of the inf row: earlier ones are NaN in torch.nn too
    assert grads[0].isinf().all()
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM", "RNNCell"])
def test_inf_input_gives_no_numpy_warning(name, monkeypatch):
    """torch's ops warn of nothing on inf and NaN; the engine's NumPy calls must not either."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    monkeypatch.setenv("GPURNN_GEMM", "numpy")
    x = torch.full((3, 2) if "Cell" in name else (3, 2, 2), float("inf"))
    m = getattr(gnn, name)(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()


def test_the_hidden_state_device_is_checked_before_the_parameters_as_in_torch():
    x, h = torch.randn(5, 2, 3, device="meta"), torch.zeros(1, 2, 4)
    for m in _pair("GRU", 3, 4):
        with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
            m(x, h)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.complex64, torch.int8])
def test_a_cells_input_dtype_error_has_torchs_words(dtype, bias):
    """torch's step runs addmm with biases and mm without: their messages name dtypes differently."""
    messages = []
    for m in _pair("GRUCell", 3, 4, bias=bias):
        with pytest.raises(RuntimeError) as err:
            m(torch.ones(2, 3, dtype=dtype))
        messages.append(str(err.value))
    assert messages[1] == messages[0]


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_a_single_packed_step_with_a_permuted_h0_returns_a_contiguous_state(name):
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(1, 2, 3), [1, 1])
    h0 = torch.randn(3, 2, 1).permute(2, 1, 0)
    for m in _pair(name, 3, 3):
        h = m(x, (h0, h0) if name == "LSTM" else h0)[1]
        assert (h[0] if name == "LSTM" else h).is_contiguous()


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_an_lstm_cells_c_of_another_dtype_is_promoted_as_in_torch(dtype, batched, monkeypatch):
    """torch's lstm_cell multiplies c by f without a dtype check: (h, c) come back in the promoted dtype."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    shape = (2, 4) if batched else (4,)
    x, h, c = torch.randn(*shape[:-1], 3), torch.randn(shape), torch.randn(shape).to(dtype)
    outs = [m(x, (h, c)) for m in _pair("LSTMCell", 3, 4)]
    for got, want in zip(outs[1], outs[0]):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_an_empty_batch_gives_torchs_strides(name, route, monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    x = torch.randn(4, 0, 2)
    strides = []
    for m in _pair(name, 2, 3):
        y, h = m(x)
        strides.append([t.stride() for t in (y, *(h if isinstance(h, tuple) else (h,)))])
    assert strides[1] == strides[0]


class _Wrapper:
    """An object that is not a tensor but overrides torch's functions (as in torch's test_overrides)."""

    def __init__(self, t):
        self.t = t

    def __getattr__(self, name):
        return getattr(self.t, name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda a: a.t if isinstance(a, _Wrapper) else type(a)(map(unwrap, a)) if isinstance(a, (list, tuple)) else a
        return func(*unwrap(args), **(kwargs or {}))


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRUCell"])
def test_an_input_overriding_torch_functions_runs_as_in_torch_nn(name):
    x = torch.randn(5, 2, 3) if "Cell" not in name else torch.randn(2, 3)
    outs = [m(_Wrapper(x)) for m in _pair(name, 3, 4)]
    for got, want in zip(torch.utils._pytree.tree_leaves(outs[1]), torch.utils._pytree.tree_leaves(outs[0])):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_per_sample_gradients_through_expanded_weights_match_torch_nn(name):
    from torch.nn.utils._per_sample_grad import call_for_per_sample_grads
    x = torch.randn(4, 5, 2, dtype=torch.float64)   # (torch's float32 LSTM runs oneDNN, which ExpandedWeight lacks)
    grads = []
    for m in _pair(name, 2, 3, batch_first=True, dtype=torch.float64):
        call_for_per_sample_grads(m, batch_size=4, loss_reduction="sum")(x)[0].sum().backward()
        grads.append([p.grad_sample for p in m.parameters()])
    for got, want in zip(*grads[::-1]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("route", ["engine", "auto"])
@pytest.mark.parametrize("name", ["RNNCell", "LSTM"])
def test_aot_autograd_of_functional_call_matches_torch_nn(name, route, dynamic, monkeypatch):
    """functorch's aot_function traces forward and backward on fake tensors (torch's TestEagerFusionModuleInfo):
    no route timing, and the backward finds no tape on a fake handle."""
    from functorch.compile import aot_function, nop
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    x = torch.randn(5 if "Cell" in name else (3, 2), requires_grad=True)
    results = []
    for m in _pair(name, *((5, 10) if "Cell" in name else (2, 3, 2))):
        m(x)[0].sum().backward()   # an eager call first: the auto route times and keeps its choice
        f = aot_function(lambda p, x: torch.func.functional_call(m, p, (x,))[0], nop, dynamic=dynamic)
        params = dict(m.named_parameters())
        out = f(params, x)
        results.append([out, *torch.autograd.grad(out.sum(), list(params.values()))])
    for got, want in zip(*results[::-1]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_a_default_device_context_still_runs_the_engine(name, monkeypatch):
    """`with torch.device(...)` and torch.set_default_device install a torch function mode: it overrides
    nothing of the arguments, so the module must not fall back to torch.nn's forward (the layers and the cells
    share that check, `overridden`; on the CPU a cell's step is torch's anyway)."""
    import gpurnn.nn.rnn as rnn_module
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")   # (torch's op for every layer: torch.nn's forward runs)
    calls = []
    original = rnn_module.run_layers
    monkeypatch.setattr(rnn_module, "run_layers", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(5, 2, 3)
    m = getattr(gnn, name)(3, 4)
    with torch.device("cpu"):
        m(x)
    assert calls


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_a_hand_made_packed_sequence_with_other_row_counts_is_read_as_torch_reads_it(name):
    """Data rows beyond the sum of batch_sizes are not read (torch's op runs, and so do these); fewer rows are
    torch's RuntimeError (gpurnn's said IndexError from an index_copy)."""
    ref, ours = _pair(name, 2, 3)
    batch_sizes = torch.tensor([3, 1, 1, 1, 1])
    data = torch.randn(9, 2)
    results = []
    for m in (ref, ours):
        x = data.clone().requires_grad_()
        y, _ = m(torch.nn.utils.rnn.PackedSequence(x, batch_sizes))
        y.data.sum().backward()
        results.append([y.data, x.grad])
    torch.testing.assert_close(results[1], results[0])
    for m in (ref, ours):
        with pytest.raises(RuntimeError):
            m(torch.nn.utils.rnn.PackedSequence(data[:5], batch_sizes))


@pytest.mark.parametrize("name, shape", [("RNN", (5, 2, 3)), ("LSTM", (5, 2, 3)), ("GRU", (5, 2, 3)),
                                         ("RNNCell", (2, 3)), ("LSTMCell", (2, 3)), ("GRUCell", (2, 3))])
def test_a_module_whose_attributes_came_from_torch_nn_runs(name, shape):
    """A torch.nn module given gpurnn's class (or its __dict__ to one made by __new__, as an old pickle does) has
    no `backend` attribute: an AttributeError."""
    ref = getattr(torch.nn, name)(3, 4)
    mine = copy.deepcopy(ref)
    mine.__class__ = getattr(gnn, name)
    x = torch.randn(shape)
    torch.testing.assert_close(mine(x), ref(x))


@pytest.mark.filterwarnings("ignore:.*quantiz")
@pytest.mark.parametrize("layout", ["sparse", "quantized"])
@pytest.mark.parametrize("name, shape", [("RNN", (5, 2, 3)), ("LSTM", (5, 2, 3)), ("GRU", (5, 2, 3)),
                                         ("RNNCell", (2, 3)), ("GRUCell", (2, 3))])
def test_sparse_or_quantized_input_runs_as_in_torch_nn(name, shape, layout):
    """The engine said "unsupported memory format option Contiguous", or raised a ValueError where torch.nn's is a
    NotImplementedError (its cells take a sparse input)."""
    x = torch.randn(shape)
    x = x.to_sparse() if layout == "sparse" else torch.quantize_per_tensor(x, 0.1, 0, torch.qint8)
    outcomes = []
    for m in _pair(name, 3, 4):
        try:
            outcomes.append(m(x))
        except (RuntimeError, NotImplementedError) as e:   # compared below: torch.nn's type and first line
            outcomes.append((type(e), str(e).split("\n")[0]))
    if isinstance(outcomes[0], tuple) and isinstance(outcomes[0][0], type):
        assert outcomes[1] == outcomes[0]
    else:
        torch.testing.assert_close(outcomes[1], outcomes[0])


@pytest.mark.parametrize("name, shape", [("RNN", (5, 2, 3)), ("LSTM", (5, 2, 3)), ("GRU", (5, 2, 3)),
                                         ("RNNCell", (2, 3)), ("LSTMCell", (2, 3)), ("GRUCell", (2, 3))])
def test_a_call_with_a_wrong_argument_names_the_module_s_forward(name, shape):
    """Python's error named the shared forward: "_EngineForward.forward() got an unexpected keyword argument"."""
    errors = []
    for m in _pair(name, 3, 4):
        for call in (lambda: m(torch.randn(shape), h0=None), lambda: m(torch.randn(shape), None, None)):
            with pytest.raises(TypeError) as info:
                call()
            errors.append(str(info.value))
    assert errors[2:] == errors[:2]


@pytest.mark.parametrize("hx", ["tensor", "int", "str", "short tuple"])
@pytest.mark.parametrize("batched", [True, False])
def test_an_lstm_cells_hx_that_is_no_pair_raises_torchs_type_with_its_words(hx, batched):
    h = torch.randn(3, 5) if batched else torch.randn(5)
    hx = {"tensor": h, "int": 5, "str": "ab", "short tuple": (h,)}[hx]
    x = torch.randn(3, 4) if batched else torch.randn(4)
    ref, mine = _pair("LSTMCell", 4, 5)
    with pytest.raises(Exception) as torch_err:
        ref(x, hx)
    with pytest.raises(type(torch_err.value)) as err:
        mine(x, hx)
    if not batched and hx is h:   # a tensor's rows are the pair here, as torch.nn reads them: torch's own check
        assert str(err.value) == str(torch_err.value)
        return
    assert isinstance(err.value, TypeError) and "hx: expected a tuple (h_0, c_0)" in str(err.value)
    assert str(err.value).endswith(f"; torch.nn: {torch_err.value}")


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_a_trace_warns_as_torch_nns(name):
    """gpurnn's single-step check read the traced sizes, and warned twice more than torch.nn."""
    seen = []
    for m in _pair(name, 4, 6, batch_first=True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.jit.trace(m, (torch.randn(3, 5, 4),))
        seen.append(sorted((str(w.message), w.filename) for w in caught if w.category is torch.jit.TracerWarning))
    assert seen[1] == seen[0]


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_forward_has_torch_nns_signature_and_doc(name):
    import inspect
    ours, theirs = getattr(gnn, name).forward, getattr(torch.nn, name).forward
    assert inspect.signature(ours) == inspect.signature(theirs)
    assert ours.__doc__ == theirs.__doc__   # (help(), IDEs; torch 2.13's RNN has "Runs the forward pass.")


_PROJ_WARNINGS = """
import sys, warnings, torch, gpurnn.nn as gnn
nn = torch.nn if sys.argv[1] == "torch.nn" else gnn
warnings.simplefilter("always")
for dtype, T in ((torch.float64, 3), (torch.float32, 1), (torch.float32, 3), (torch.float32, 5)):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = nn.LSTM(3, 5, proj_size=2, dtype=dtype)
        if sys.argv[1] == "compiled":
            module = torch.compile(module, backend="aot_eager", dynamic=False)
        module(torch.randn(T, 2, 3, dtype=dtype))
    print([(str(w.message), w.filename, w.lineno) for w in caught if "oneDNN" in str(w.message)])
"""


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch's warning is about oneDNN")
@pytest.mark.parametrize("route", ["engine", "auto", "torch"])
def test_a_projected_lstm_warns_as_torch_nns_does(route):
    """torch's CPU LSTM op says once a process that oneDNN has no projections (float32 here, not float64): so does
    gpurnn's LSTM wherever its layer runs, the engine and the torch loop of a single step included, compiled too; from
    torch.nn's line that calls the op, which filters by module (pytest's -W, warnings.filterwarnings) match."""
    import os
    import subprocess
    import sys

    def run(which):
        env = dict(os.environ, GPURNN_CPU_LAYER=route)
        return subprocess.run([sys.executable, "-c", _PROJ_WARNINGS, which], env=env, capture_output=True,
                              text=True, check=True).stdout
    want = run("torch.nn")
    assert "oneDNN" in want and run("gpurnn") == want and run("compiled") == want


_BF16_CHANGED = ["input", "h_0", "c_0", "weight_ih_l0", "weight_hh_l0", "weight_hr_l0", "bias_ih_l0", "output"]


@pytest.mark.parametrize("route", ["engine", "torch"])
@pytest.mark.parametrize("changed", _BF16_CHANGED)
@pytest.mark.parametrize("name, kwargs", _OUTPUT_IN_PLACE[:4] + [("LSTM", {"packed": True}),
                                                                 ("LSTM", {"packed": "equal lengths"}),
                                                                 ("GRU", {}), ("RNN", {"bidirectional": True})],
                         ids=lambda v: v if isinstance(v, str) else '-'.join(v) or 'plain')
def test_bfloat16_inputs_changed_in_place_before_backward_fail_where_torch_nns_do(name, kwargs, changed, route,
                                                                                  monkeypatch):
    """torch.nn's bfloat16 ops save x, the initial states and the weights (oneDNN's LSTM y and the biases too, as in
    float32): the engine's route computes on float32 copies, whose versions did not see the change (it ran)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    kwargs = dict(kwargs, dtype=torch.bfloat16)
    packed = kwargs.pop("packed", False)
    if changed == "c_0" and name != "LSTM" or changed == "weight_hr_l0" and "proj_size" not in kwargs:
        pytest.skip("no such tensor")
    outcomes = []
    for m in _pair(name, 3, 4, **kwargs):
        torch.manual_seed(1)
        x = torch.randn(*((2, 5) if m.batch_first else (5, 2)), 3, dtype=torch.bfloat16, requires_grad=True) * 1
        shape = (m.num_layers * (1 + m.bidirectional), 2)
        hx = [torch.randn(*shape, m.proj_size or 4, dtype=torch.bfloat16, requires_grad=True) * 1]
        hx += [torch.randn(*shape, 4, dtype=torch.bfloat16, requires_grad=True) * 1] * (name == "LSTM")
        lengths = [5, 5 if packed == "equal lengths" else 2]
        y, _ = m(torch.nn.utils.rnn.pack_padded_sequence(x, lengths) if packed else x, tuple(hx) if name == "LSTM"
                 else hx[0])
        y = y.data if packed else y
        tensors = {"input": x, "h_0": hx[0], "c_0": hx[-1], "output": y}
        with torch.no_grad():
            (tensors[changed] if changed in tensors else getattr(m, changed)).add_(1)
        try:
            y.float().sum().backward()
            outcomes.append("runs")
        except RuntimeError as err:   # (torch's bfloat16 GRU is a loop of ops: its error may name an unbind's view)
            assert "inplace" in str(err)
            outcomes.append("raises")
    assert outcomes[1] == outcomes[0]
