"""gpurnn.nn.RNNCell/LSTMCell/GRUCell against torch.nn's: outputs, gradients, state_dict, errors."""
import inspect
import subprocess
import sys

import pytest
import torch

import gpurnn.nn as gnn

KINDS = ("RNNCell", "LSTMCell", "GRUCell")


def _pair(kind, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 5, dtype=torch.float64, **kw)
    mine = getattr(gnn, kind)(4, 5, dtype=torch.float64, backend="numpy", **kw)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _run(m, x, hx, steps=3):
    """A few steps fed back into the cell, then backward of every state."""
    x = x.detach().clone().requires_grad_(True)
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_(True) for h in hx)
    state, outs = (hx if hx is None or len(hx) == 2 else hx[0]), []
    for _ in range(steps):
        state = m(x, state)
        outs += list(state) if isinstance(state, tuple) else [state]
    sum((o * (i + 1)).sum() for i, o in enumerate(outs)).backward()
    grads = [x.grad] + ([] if hx is None else [h.grad for h in hx]) + [p.grad for p in m.parameters()]
    return outs, grads


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("kind", KINDS + ("RNNCell-relu",))
def test_matches_torch(kind, with_hx, batched):
    kw = {"nonlinearity": "relu"} if kind == "RNNCell-relu" else {}
    kind = kind.split("-")[0]
    ref, mine = _pair(kind, **kw)
    shape = (3,) if batched else ()
    x = torch.randn(*shape, 4, dtype=torch.float64)
    hx = None
    if with_hx:
        hx = tuple(torch.randn(*shape, 5, dtype=torch.float64) for _ in range(2 if kind == "LSTMCell" else 1))
    for a, b in zip(*(sum(_run(m, x, hx), []) for m in (ref, mine))):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_and_class(kind):
    ref, mine = _pair(kind)
    assert isinstance(mine, getattr(torch.nn, kind))
    assert ref.state_dict().keys() == mine.state_dict().keys()
    ref.load_state_dict(mine.state_dict())


def _states(kind, *shapes, dtype=torch.float32):
    t = [torch.zeros(s, dtype=dtype) for s in shapes]
    return tuple(t) if kind == "LSTMCell" else t[0]


ERRORS = {
    "input_size": lambda k: (torch.randn(2, 3), None),
    "input_3d": lambda k: (torch.randn(2, 4, 1), None),
    "hidden_3d": lambda k: (torch.randn(2, 4), _states(k, (2, 5, 1), (2, 5, 1))),
    "batch": lambda k: (torch.randn(2, 4), _states(k, (3, 5), (3, 5))),
    "hidden_size": lambda k: (torch.randn(2, 4), _states(k, (2, 6), (2, 6))),
    "cell_size": lambda k: (torch.randn(2, 4), _states(k, (2, 5), (2, 6))),
    "hidden_1d_for_batched": lambda k: (torch.randn(2, 4), _states(k, (5,), (5,))),
    "hidden_2d_for_unbatched": lambda k: (torch.randn(4), _states(k, (2, 5), (2, 5))),
    "dtype": lambda k: (torch.randn(2, 4, dtype=torch.float64), None),
    # torch's RNN and LSTM steps multiply hx first, its GRU step the input: the first one's dtype is named
    "input_and_hidden_dtypes": lambda k: (torch.randn(2, 4, dtype=torch.float64),
                                          _states(k, (2, 5), (2, 5), dtype=torch.float16)),
}


@pytest.mark.parametrize("case", ERRORS)
@pytest.mark.parametrize("kind", KINDS)
def test_same_error_as_torch(kind, case):
    if case == "cell_size" and kind != "LSTMCell":
        pytest.skip("only the LSTM has a cell state")
    errors = []
    for m in (getattr(torch.nn, kind)(4, 5), getattr(gnn, kind)(4, 5, backend="numpy")):
        with pytest.raises(Exception) as info:
            m(*ERRORS[case](kind))
        errors.append((type(info.value), str(info.value)))
    assert errors[1] == errors[0]


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_signature_is_torchs(kind):
    """torch.nn's parameters, in order, plus `backend`: torch.nn.utils.skip_init (which needs `device`) makes
    the same uninitialised module as for torch.nn's cell."""
    ours, theirs = getattr(gnn, kind), getattr(torch.nn, kind)
    params = inspect.signature(ours).parameters
    assert list(params)[:-1] == list(inspect.signature(theirs).parameters) and list(params)[-1] == "backend"
    defaults = [(p.default, p.annotation) for p in inspect.signature(theirs).parameters.values()]
    assert [(p.default, p.annotation) for p in params.values()][:-1] == defaults   # (read by CLI generators)
    assert inspect.signature(ours).return_annotation == inspect.signature(theirs).return_annotation
    made = torch.nn.utils.skip_init(ours, 3, 5, backend="numpy")
    ref = torch.nn.utils.skip_init(theirs, 3, 5)
    assert type(made) is ours and made.backend == "numpy"

    def described(m):
        return [(n, p.shape, p.dtype, p.device) for n, p in m.named_parameters()]
    assert described(made) == described(ref)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind):
    ref, mine = _pair(kind)
    x = torch.randn(0, 4, dtype=torch.float64)
    a, b = ref(x), mine(x)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert u.shape == v.shape == (0, 5)


SAVE_AND_LOAD = """
import sys, torch
import gpurnn.nn as gnn
path = sys.argv[1]
if sys.argv[2] == "save":
    torch.manual_seed(0)
    model = [gnn.LSTM(3, 4, num_layers=2), gnn.GRU(3, 4), gnn.RNN(3, 4), gnn.JordanRNN(3, 4, 2),
             gnn.LSTMCell(3, 4), gnn.GRUCell(3, 4), gnn.RNNCell(3, 4)]
    torch.save(model, path)   # whole modules, as torch.save(model) in PyTorch's examples
    torch.save([p.detach() for m in model for p in m.parameters()], path + ".params")
else:
    model = torch.load(path, weights_only=True)
    params, saved = [p for m in model for p in m.parameters()], torch.load(path + ".params", weights_only=True)
    assert len(params) == len(saved) == 33
    for p, q in zip(params, saved):
        assert torch.equal(p, q)
    y, _ = model[0](torch.randn(5, 2, 3))
    print(type(model[0]).__name__, tuple(y.shape))
"""


def test_a_saved_model_loads_with_weights_only_in_a_fresh_process(tmp_path):
    path = str(tmp_path / "model.pt")
    for step in ("save", "load"):
        out = subprocess.run([sys.executable, "-c", SAVE_AND_LOAD, path, step], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LSTM (5, 2, 4)"
