"""Graphs that may run without gpurnn hold torch's own ops: torch.jit.trace (TorchScript, as libtorch loads it),
torch.export (AOTInductor, ExecuTorch, a process without gpurnn) and torch.onnx.export (both exporters; the graphs
run here in onnxruntime). gpurnn's torch.nn twins record torch.nn's
own forward, the Jordan network the torch loop; nothing recorded names a gpurnn op."""
import io
import subprocess
import sys
import threading
import warnings

import onnx
import onnxruntime
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gpurnn.nn as gnn


def _twins(name, *args, **kwargs):
    """(torch.nn's module, gpurnn's on the same parameters), or (None, gpurnn's) for the Jordan network."""
    torch.manual_seed(0)
    mine = getattr(gnn, name)(*args, **kwargs)
    if not hasattr(torch.nn, name):
        return None, mine
    ref = getattr(torch.nn, name)(*args, **kwargs)
    ref.load_state_dict(mine.state_dict())
    return ref, mine


def _leaves(out):
    return [t for o in out for t in _leaves(o)] if isinstance(out, (tuple, list)) else [out]


class _Model(torch.nn.Module):
    """A model as one deploys it: a stack, a cell on its last output, and a Jordan network."""

    def __init__(self, nn):
        super().__init__()
        self.rnn = nn.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=4)
        self.cell = nn.GRUCell(8, 5)
        self.jordan = gnn.JordanRNN(8, 5, 2)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.cell(y[:, -1], None) + c.sum(), self.jordan(y)[0]


_RECORDERS = {   # how a model is recorded and saved, and how a process without gpurnn loads it
    "trace": (lambda m, x, path: torch.jit.trace(m, (x,)).save(path), "torch.jit.load(sys.argv[1])"),
    "export": (lambda m, x, path: torch.export.save(torch.export.export(m, (x,)), path),
               "torch.export.load(sys.argv[1]).module()")}


@pytest.mark.parametrize("how", _RECORDERS)
def test_a_recorded_model_runs_where_gpurnn_is_not_imported(how, tmp_path):
    """torch.jit.trace (libtorch) and torch.export (AOTInductor, ExecuTorch) record programs to run elsewhere."""
    torch.manual_seed(0)
    ref, mine = _Model(torch.nn), _Model(gnn)
    ref.load_state_dict(mine.state_dict())
    x = torch.randn(2, 5, 3)
    record, load = _RECORDERS[how]
    record(mine, x, tmp_path / "model")
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch\n"
            f"out = {load}(torch.load(sys.argv[2]))\n"
            "assert not any(m.startswith('gpurnn') for m in sys.modules)\n"
            "torch.save(out, sys.argv[3])\n")
    subprocess.run([sys.executable, "-c", code, *(str(tmp_path / f) for f in ("model", "x.pt", "out.pt"))],
                   check=True)
    cell_out, jordan_y = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(cell_out, ref(x)[0], atol=0, rtol=0)   # torch.nn's forward, recorded
    torch.testing.assert_close(jordan_y, mine(x)[1])                   # the torch loop, against the engine


def _called(program):
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("name, args, kwargs, shape", [
    ("LSTM", (3, 4), {"num_layers": 2, "bidirectional": True, "proj_size": 2}, (5, 2, 3)),
    ("GRU", (3, 4), {"batch_first": True}, (2, 5, 3)),
    ("RNN", (3, 4), {"nonlinearity": "relu"}, (5, 3)),
    ("LSTMCell", (3, 4), {}, (2, 3)),
    ("GRUCell", (3, 4), {"bias": False}, (3,))])
def test_torch_export_records_torch_nns_program(name, args, kwargs, shape, strict):
    ref, mine = _twins(name, *args, **kwargs)
    x = torch.randn(shape)
    program = torch.export.export(mine, (x,), strict=strict)
    assert _called(program) == _called(torch.export.export(ref, (x,), strict=strict))
    for got, want in zip(_leaves(program.module()(x)), _leaves(ref(x))):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_a_trace_of_packed_input_follows_each_calls_batch_sizes(name):
    """torch's own test_jit export tests: pack, run, unpack, traced at one set of lengths and run at another."""
    class Packed(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, lengths):
            y, _ = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
            return pad_packed_sequence(y)[0]

    ref, mine = (Packed(m) for m in _twins(name, 3, 4))
    traced = torch.jit.trace(mine, (torch.randn(5, 3, 3), torch.tensor([5, 2, 4])))
    x, lengths = torch.randn(6, 4, 3), torch.tensor([6, 1, 3, 2])
    torch.testing.assert_close(traced(x, lengths), ref(x, lengths), atol=0, rtol=0)


_ONNX = [("RNN", (3, 4), {"nonlinearity": "relu", "num_layers": 2}, (5, 2, 3)),
         ("LSTM", (3, 4), {"bidirectional": True, "batch_first": True}, (2, 5, 3)),
         ("GRU", (3, 4), {"num_layers": 2, "bidirectional": True}, (5, 2, 3)),
         ("LSTM", (3, 4), {}, (5, 3)),
         ("RNNCell", (3, 4), {}, (2, 3)),
         ("LSTMCell", (3, 4), {}, (2, 3)),
         ("GRUCell", (3, 4), {}, (3,)),
         ("JordanRNN", (3, 4, 2), {"output_activation": "sigmoid"}, (5, 2, 3))]


def _onnx(module, x, dynamo):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=dynamo, verbose=False)
    return f.getvalue()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name, args, kwargs, shape", _ONNX, ids=[f"{c[0]}-{len(c[3])}d" for c in _ONNX])
def test_an_onnx_export_runs_in_onnxruntime(name, args, kwargs, shape, dynamo):
    ref, mine = _twins(name, *args, **kwargs)
    mine.eval()
    x = torch.randn(*shape)
    model = _onnx(mine, x, dynamo)
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    if ref is not None:   # the same ONNX ops as torch.nn's export (ONNX's LSTM, GRU, RNN where it has them)
        assert ops == {n.op_type for n in onnx.load_from_string(_onnx(ref.eval(), x, dynamo)).graph.node}
    session = onnxruntime.InferenceSession(model)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = _leaves(mine(x))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-5, rtol=1e-5)


_EXPORTERS = {"torch.export": (lambda m, x: torch.export.export(m, (x,)), torch.compiler.is_exporting),
              "onnx dynamo": (lambda m, x: _onnx(m, x, True), torch.onnx.is_in_onnx_export)}


@pytest.mark.parametrize("exporter", _EXPORTERS)
def test_an_export_in_another_thread_leaves_this_threads_modules_on_the_engine(exporter, monkeypatch):
    """The exporters' flags are process-wide: only the thread that exports records torch.nn's forward."""
    started, release = threading.Event(), threading.Event()

    class Blocking(torch.nn.Module):
        def forward(self, x):
            started.set()
            release.wait(60)
            return x * 2

    export, exporting = _EXPORTERS[exporter]
    thread = threading.Thread(target=export, args=(Blocking(), torch.randn(2)))
    thread.start()
    try:
        assert started.wait(60) and exporting()   # the other thread is inside its export
        calls = []
        monkeypatch.setattr(torch.nn.LSTM, "forward", lambda *args: calls.append(args))
        _, mine = _twins("LSTM", 3, 4)
        mine(torch.randn(5, 2, 3))
        assert calls == []
    finally:
        release.set()
        thread.join()
