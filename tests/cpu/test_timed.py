"""gpurnn/cpu/timed.py: a route timed while the process waited for a CPU is timed again later."""
import types

import pytest
import torch

import gpurnn.nn as gnn
from gpurnn.cpu import layer, timed


@pytest.fixture
def machine(monkeypatch):
    """A made-up clock and count of seconds waited for a CPU; `load`: seconds waited a second of timing."""
    state = {"now": 1000.0, "waited": 0.0, "load": 0}
    monkeypatch.setattr(timed, "time", types.SimpleNamespace(monotonic=lambda: state["now"]))
    monkeypatch.setattr(timed, "_waited", lambda: state["waited"])

    def run(seconds):   # a timing that takes `seconds` under the current load
        state["now"] += seconds
        state["waited"] += state["load"] * seconds
    state["run"] = run
    return state


def _timer(machine, results):
    """time_routes for decide: each call takes 1 s and answers the next of results, recorded in `calls`."""
    calls = []

    def time_routes():
        machine["run"](1.0)
        calls.append(machine["load"])
        return results[len(calls) - 1]
    return time_routes, calls


def _due_again(machine):
    """A decision ("a") timed under load, due again now; its next timing answers "b"."""
    cache = timed.Decisions()
    time_routes, calls = _timer(machine, [{"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 0.5}])
    machine["load"] = 4 * timed.CONTENDED
    timed.decide(cache, "k", time_routes)
    machine["now"] += timed.RETIME_AFTER
    machine["load"] = 0
    return cache, time_routes, calls


def _layer_timings(monkeypatch, machine, answers):
    """The layer route's timings (auto) answer `answers` in turn, each taking 1 s of the made-up clock."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    monkeypatch.setattr(layer, "_chosen", timed.Decisions())
    monkeypatch.setattr(layer, "_last_forward", {})
    monkeypatch.setattr(layer, "_last_checkpointed", {})
    answers = iter(answers)

    def fake_time(*args):
        machine["run"](1.0)
        return next(answers)
    monkeypatch.setattr(layer, "_time", fake_time)


def test_a_decision_timed_in_quiet_is_final(machine):
    cache = timed.Decisions()
    time_routes, calls = _timer(machine, [{"a": 1.0, "b": 2.0}])
    machine["load"] = timed.CONTENDED / 2
    assert timed.decide(cache, "k", time_routes) == "a"
    machine["now"] += 10 * timed.RETIME_AFTER
    assert timed.decide(cache, "k", time_routes) == "a" and len(calls) == 1 and not cache.due("k")


def test_a_decision_timed_under_load_is_timed_again_later(machine):
    """Under load, torch's two-thread op slowed far more than one-thread OpenBLAS (an AMD EPYC): the load's
    winner is timed again once RETIME_AFTER has passed, the new times replacing the old."""
    cache = timed.Decisions()
    loaded, quiet = {"torch": 3.0, "engine": 2.0}, {"torch": 1.0, "engine": 2.5}
    time_routes, calls = _timer(machine, [loaded, quiet])
    machine["load"] = 4 * timed.CONTENDED
    assert timed.decide(cache, "k", time_routes, "torch", 0.05) == "engine" and cache.due("k") is False
    machine["now"] += timed.RETIME_AFTER / 2
    assert timed.decide(cache, "k", time_routes, "torch", 0.05) == "engine" and len(calls) == 1   # not yet
    machine["now"] += timed.RETIME_AFTER
    machine["load"] = 0
    assert timed.decide(cache, "k", time_routes, "torch", 0.05) == "torch" and len(calls) == 2
    assert cache["k"] == ("torch", quiet) and not cache.retimes
    machine["now"] += 10 * timed.RETIME_AFTER
    assert not cache.due("k")


def test_a_lasting_load_is_timed_again_at_most_retimes_times(machine):
    cache = timed.Decisions()
    time_routes, calls = _timer(machine, [{"a": 2.0 - n / 10, "b": 1.0 + n / 10} for n in range(10)])
    machine["load"] = 4 * timed.CONTENDED
    for _ in range(6):
        timed.decide(cache, "k", time_routes)
        machine["now"] += 2 * timed.RETIME_AFTER
    assert len(calls) == 1 + timed.RETIMES and not cache.due("k")
    assert cache["k"][1] == {"a": 2.0 - timed.RETIMES / 10, "b": 1.0 + timed.RETIMES / 10}


def test_a_module_timed_under_load_takes_the_quiet_winner_later(monkeypatch, machine):
    """Through the torch module: a stack whose layers all took the engine under load runs on torch's op, as one
    torch.nn forward, once a quiet timing finds it faster; its outputs are torch.nn's."""
    _layer_timings(monkeypatch, machine, [{"engine": 1.0, "torch": 3.0}] * 2 + [{"engine": 1.0, "torch": 0.1}] * 2)
    torch.manual_seed(0)
    ref = torch.nn.GRU(5, 7, num_layers=2)
    ours = gnn.GRU(5, 7, num_layers=2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 5)
    machine["load"] = 4 * timed.CONTENDED
    ours(x)
    assert sorted(route for route, _ in layer.chosen().values()) == ["engine", "engine"]
    machine["load"] = 0
    machine["now"] += timed.RETIME_AFTER
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=0, atol=0)   # torch.nn's own forward: the same bits
    assert sorted(route for route, _ in layer.chosen().values()) == ["torch", "torch"]


def test_no_timing_again_where_saved_tensor_hooks_are_on(machine):
    """A checkpoint's forward (its saved-tensor hooks on) is repeated in backward on the route its layers' last
    forward took: a route changed by a re-timing in another call between them would save other tensors."""
    from torch.utils.checkpoint import checkpoint

    cache, time_routes, calls = _due_again(machine)
    x = torch.ones(2, requires_grad=True)
    checkpoint(lambda t: t * len(timed.decide(cache, "k", time_routes)), x, use_reentrant=False).sum().backward()
    assert len(calls) == 1 and cache.due("k")
    assert timed.decide(cache, "k", time_routes) == "b" and len(calls) == 2


def test_a_stack_on_torchs_op_timed_under_load_is_timed_again_once_later(monkeypatch, machine):
    """A stack all on torch's op runs torch.nn's forward, where no layer asks for its route: the stack's timing
    (inside its own saved-tensor hooks) makes the re-timing, once when due (it once ran, timing nothing, every call)."""
    _layer_timings(monkeypatch, machine, [{"engine": 3.0, "torch": 1.0}] * 2 + [{"engine": 0.1, "torch": 1.0}] * 2)
    stacks = []
    real = gnn.GRU._time_routes
    monkeypatch.setattr(gnn.GRU, "_time_routes", lambda *args: stacks.append(1) or real(*args))
    ours = gnn.GRU(5, 7, num_layers=2)
    x = torch.randn(6, 3, 5)
    machine["load"] = 4 * timed.CONTENDED
    ours(x)
    machine["load"] = 0
    for _ in range(3):
        ours(x)
        machine["now"] += timed.RETIME_AFTER / 4
    assert len(stacks) == 1 and sorted(route for route, _ in layer.chosen().values()) == ["torch", "torch"]
    machine["now"] += timed.RETIME_AFTER
    for _ in range(3):
        ours(x)
    assert len(stacks) == 2 and sorted(route for route, _ in layer.chosen().values()) == ["engine", "engine"]


def test_a_checkpoint_recomputes_on_its_route_though_an_unchecked_call_was_timed_again_meanwhile(monkeypatch,
                                                                                                 machine):
    """An unchecked call of the module between a checkpointed forward and its backward, timed again onto the other
    route: the recomputation takes the checkpointed forward's route (the last forward's: CheckpointError)."""
    from torch.utils.checkpoint import checkpoint

    _layer_timings(monkeypatch, machine, [{"engine": 1.0, "torch": 3.0}, {"engine": 1.0, "torch": 0.1}])
    torch.manual_seed(0)
    ref, ours = torch.nn.LSTM(4, 8), gnn.LSTM(4, 8)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4, requires_grad=True)
    machine["load"] = 4 * timed.CONTENDED
    ours(x)
    machine["load"] = 0
    machine["now"] += timed.RETIME_AFTER
    grads = []
    for m in (ours, ref):
        a = checkpoint(lambda t: m(t)[0], x, use_reentrant=False)
        (a.sum() + m(x)[0].sum()).backward()
        grads.append([x.grad] + [p.grad for p in m.parameters()])
        x.grad = None
    assert [route for route, _ in layer.chosen().values()] == ["torch"]   # timed again by the unchecked call
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("observer", ["profiler", "anomaly", "flop counter"])
def test_no_timing_again_where_it_would_be_seen(observer, machine):
    """A profiler, anomaly mode or a dispatch mode would see (or be disturbed by) the timing's runs: a decision due
    again waits for a call outside them (a GEMM route's re-timing added 74 aten::mm events to a user's trace)."""
    from torch.utils.flop_counter import FlopCounterMode

    cache, time_routes, calls = _due_again(machine)
    modes = {"profiler": torch.profiler.profile, "anomaly": torch.autograd.detect_anomaly,
             "flop counter": lambda: FlopCounterMode(display=False)}
    with modes[observer]():
        assert timed.decide(cache, "k", time_routes) == "a" and len(calls) == 1
    assert timed.decide(cache, "k", time_routes) == "b" and len(calls) == 2


def test_a_thread_takes_the_cached_route_while_another_times_it_again(machine):
    """A re-timing (seconds at large shapes) does not hold up other threads' calls of the class: they take the
    cached route meanwhile; a class never timed waits for its timing."""
    import threading

    cache, time_routes, calls = _due_again(machine)
    held, release = threading.Event(), threading.Event()

    def timing_elsewhere():
        with timed._lock:
            held.set()
            release.wait(10)
    other = threading.Thread(target=timing_elsewhere)
    other.start()
    held.wait(10)
    try:
        assert timed.decide(cache, "k", time_routes) == "a" and len(calls) == 1 and cache.due("k")
    finally:
        release.set()
        other.join()
    assert timed.decide(cache, "k", time_routes) == "b" and len(calls) == 2
