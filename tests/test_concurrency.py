"""Threads, forked processes and grad modes, as torch.nn handles them: backward through one graph from several
threads (torch supports it on the CPU), a fork while a route is being timed, inference mode with grad enabled
inside, and checkpoint recomputations under modes the forward did not run in."""
import contextlib
import os
import threading

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

import gpurnn.nn as gnn
from gpurnn.cpu import layer, timed


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
def test_threads_backward_through_one_graph(kind):
    """Each backward rewinds the forward's cell: two at once once gave gradients off by up to 260 (the suite runs
    the engine: tests/conftest.py)."""
    torch.manual_seed(0)
    module = getattr(gnn, kind)(8, 32, dtype=torch.float64)
    x = torch.randn(24, 8, 8, dtype=torch.float64, requires_grad=True)
    y, _ = module(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum()
    inputs = [x, *module.parameters()]
    serial = torch.autograd.grad(loss, inputs, retain_graph=True)
    results = [None] * 4

    def work(i):
        results[i] = torch.autograd.grad(loss, inputs, retain_graph=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for grads in results:
        torch.testing.assert_close(grads, serial, rtol=0, atol=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_can_time_routes_while_the_parent_was_timing():
    """The timing lock, held by a thread of the parent at the fork, once hung the child's first call."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with timed._lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if timed._lock.acquire(timeout=10) else 1)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("kind", ["RNN", "GRU"])
def test_inference_mode_with_grad_enabled_inside(monkeypatch, kind):
    """Grad mode reads True there but nothing is recorded: the first call's route timing once ran a backward."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    monkeypatch.setattr(layer, "_chosen", timed.Decisions())
    x = torch.randn(12, 3, 5, requires_grad=True)
    for module in (getattr(torch.nn, kind)(5, 7), getattr(gnn, kind)(5, 7)):
        with torch.inference_mode(), torch.enable_grad():
            y, _ = module(x)
        assert y.is_inference() and not y.requires_grad


@contextlib.contextmanager
def _deterministic():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


MODES = {"anomaly": torch.autograd.detect_anomaly, "flop counter": lambda: FlopCounterMode(display=False),
         "deterministic": _deterministic}


@pytest.mark.parametrize("side", ["forward", "backward", "both"])
@pytest.mark.parametrize("mode", MODES)
def test_a_checkpoint_recomputes_on_the_route_its_forward_took(monkeypatch, mode, side):
    """These modes take torch's op or the cached route. Switched on for the forward alone, or the backward alone, the
    recomputation once took another route than its forward, which saves other tensors: torch's checkpoint refused
    that (CheckpointError). It now takes the forward's."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    monkeypatch.setattr(layer, "_chosen", timed.Decisions())
    monkeypatch.setattr(layer, "_last_forward", {})
    monkeypatch.setattr(layer, "_last_checkpointed", {})
    monkeypatch.setattr(layer, "_time", lambda *args: {"engine": 0.0, "torch": 1.0})   # the engine times faster
    module = gnn.LSTM(6, 16)
    x = torch.randn(20, 4, 6, requires_grad=True)
    module(x)[0].sum().backward()   # times (here: chooses) the engine for this shape
    assert "engine" in [route for route, _ in layer.chosen().values()]
    expected, x.grad = x.grad, None
    with MODES[mode]() if side != "backward" else contextlib.nullcontext():
        y = checkpoint(lambda a: module(a)[0], x, use_reentrant=False)
    with MODES[mode]() if side == "forward" else contextlib.nullcontext():
        gnn.LSTM(6, 16)(x)   # another layer of this shape in between, in another mode than the checkpoint's forward
    with MODES[mode]() if side != "forward" else contextlib.nullcontext():
        y.sum().backward()
    torch.testing.assert_close(x.grad, expected)
