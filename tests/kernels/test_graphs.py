"""The stepwise path's CUDA graphs (kernels/graphs.py), with a fake kernel, fake CUDA tensors and a
fake graph: which launches run directly, which are captured, and when a graph is replayed.
The capture itself needs a GPU (profiling/gpu_check.py runs the stepwise path there)."""
from types import SimpleNamespace

import pytest
import torch

from gpurnn.kernels import common as cm
from gpurnn.kernels import graphs


class FakeKernel:
    def __init__(self):
        self.launched = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launched.append((grid, args, kwargs))


class FakeTensor:
    def __init__(self, address, device="cuda"):
        self.address, self.device = address, torch.device(device)
        self.dtype, self.shape = torch.float32, (4,)

    def data_ptr(self):
        return self.address

    def stride(self):
        return (1,)


class FakeGraph:
    def __init__(self, calls):
        self.calls, self.replays = calls, 0

    def replay(self):
        self.replays += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    """Graphs on, no caller capturing, captures recorded instead of made; returns the captures."""
    graphs.clear()
    monkeypatch.delenv("GPURNN_CUDA_GRAPHS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    captured = []

    def capture(calls):
        captured.append(FakeGraph(calls))
        return captured[-1]

    monkeypatch.setattr(graphs, "_capture", capture)
    yield captured
    graphs.clear()


def _steps(kernel, buffer, T=3, reverse=False):
    """A stepwise layer call as common.run_windows makes it: T launches of one step each."""
    cfg = SimpleNamespace(mode="stepwise")
    cm.run_windows(cfg, T, lambda t0, n: cm.launch(kernel, (2, 5, 1), buffer, t0, n, BB=16), reverse=reverse)


def test_first_call_launches_second_captures_then_replays(fake_cuda, monkeypatch):
    monkeypatch.setattr(cm, "interpreting", lambda: False)
    kernel, buffer = FakeKernel(), FakeTensor(4096)
    _steps(kernel, buffer, reverse=True)
    assert [args[1:] for _, args, _ in kernel.launched] == [(2, 1), (1, 1), (0, 1)] and not fake_cuda
    _steps(kernel, buffer, reverse=True)
    assert len(kernel.launched) == 3 and len(fake_cuda) == 1
    assert [c[2][1] for c in fake_cuda[0].calls] == [2, 1, 0] and fake_cuda[0].replays == 1
    _steps(kernel, buffer, reverse=True)
    assert len(kernel.launched) == 3 and len(fake_cuda) == 1 and fake_cuda[0].replays == 2


def test_other_arguments_launch_directly(fake_cuda, monkeypatch):
    """A buffer at another address, or another step count, is not the graph's call: it launches."""
    monkeypatch.setattr(cm, "interpreting", lambda: False)
    kernel = FakeKernel()
    for buffer, T in [(FakeTensor(4096), 3), (FakeTensor(4096), 3), (FakeTensor(8192), 3), (FakeTensor(4096), 4)]:
        _steps(kernel, buffer, T)
    assert len(kernel.launched) == 3 + 3 + 4 and len(fake_cuda) == 1 and fake_cuda[0].replays == 1


@pytest.mark.parametrize("why", ["env", "capturing", "cpu", "one step"])
def test_no_graph_where_it_does_not_apply(why, fake_cuda, monkeypatch):
    monkeypatch.setattr(cm, "interpreting", lambda: False)
    device, T = ("cpu" if why == "cpu" else "cuda"), (1 if why == "one step" else 3)
    if why == "env":
        monkeypatch.setenv("GPURNN_CUDA_GRAPHS", "0")
    if why == "capturing":   # a caller's own capture takes the launches as they are
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    kernel = FakeKernel()
    for _ in range(3):
        _steps(kernel, FakeTensor(4096, device), T)
    assert len(kernel.launched) == 3 * T and not fake_cuda


def test_interpreter_launches_each_step_unrecorded(fake_cuda, monkeypatch):
    monkeypatch.setattr(cm, "interpreting", lambda: True)
    kernel = FakeKernel()
    for _ in range(2):
        _steps(kernel, FakeTensor(4096))
    assert len(kernel.launched) == 6 and not fake_cuda and graphs.recording() is None


def test_a_failed_capture_warns_and_launches_from_then_on(monkeypatch):
    """A capture the driver refuses: a warning, the call still runs (launch by launch), and graphs stay
    off for the process."""
    import contextlib

    class RefusedGraph:
        def capture_begin(self, **kwargs):
            raise RuntimeError("operation not permitted when stream is capturing")

        def capture_end(self):
            pass

    graphs.clear()
    monkeypatch.delenv("GPURNN_CUDA_GRAPHS", raising=False)
    monkeypatch.setattr(cm, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", RefusedGraph)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: None)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    kernel, buffer = FakeKernel(), FakeTensor(4096)
    _steps(kernel, buffer)
    with pytest.warns(RuntimeWarning, match="capturing a stepwise layer's 3 launches as a CUDA graph failed"):
        _steps(kernel, buffer)
    _steps(kernel, buffer)
    assert len(kernel.launched) == 9
    graphs.clear()
