"""gpurnn/cpu/gemm.py: the GEMM route the torch front end takes on the CPU (torch's, NumPy's BLAS or oneDNN)."""
import os
import signal
import threading

import numpy as np
import pytest
import torch

import gpurnn.nn as gnn
from gpurnn.cpu import build, gemm, timed

KINDS = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


@pytest.fixture
def fresh_routes(monkeypatch):
    """No route chosen yet, and every timing recorded: {shape class: route}."""
    monkeypatch.setattr(gemm, "_chosen", timed.Decisions())
    timings = []
    real = gemm.time_routes

    def counted(B, I, K, N, dtype, feature_major=False, for_backward=True, repeats=gemm.REPEATS):
        timings.append(gemm.shape_class(B, I, K, N, dtype, feature_major, for_backward))
        return real(B, I, K, N, dtype, feature_major, for_backward, repeats=1)
    monkeypatch.setattr(gemm, "time_routes", counted)
    return timings


def _run(kind, seed=0):
    torch.manual_seed(seed)
    ref = KINDS[kind](16, 32, num_layers=2, bidirectional=True)
    ours = getattr(gnn, kind)(16, 32, num_layers=2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(12, 5, 16)
    out = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        y.square().sum().backward()
        out.append([y.detach(), xi.grad] + [p.grad for p in m.parameters()])
    return out


@pytest.mark.parametrize("route", ["auto", *gemm.ROUTES])
@pytest.mark.parametrize("kind", KINDS)
def test_every_route_matches_torch(kind, route, monkeypatch, fresh_routes):
    monkeypatch.setenv("GPURNN_GEMM", route)
    ref, got = _run(kind)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_a_forced_route_is_the_only_one_called(monkeypatch, fresh_routes):
    calls = {name: 0 for name in gemm.ROUTES}
    for name, fn in list(gemm.ROUTES.items()):
        def counted(*args, _fn=fn, _name=name, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)
        counted.pack = getattr(fn, "pack", None)   # (oneDNN's packs its step weights)
        monkeypatch.setitem(gemm.ROUTES, name, counted)
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")   # (the GEMM route is an engine layer's)
    for forced in gemm.ROUTES:
        monkeypatch.setenv("GPURNN_GEMM", forced)
        calls.update(dict.fromkeys(calls, 0))
        for kind in ("LSTM", "GRU"):   # rows and feature-major
            _run(kind)
        assert calls[forced] > 0 and sum(calls.values()) == calls[forced] and fresh_routes == []


def test_the_choice_is_timed_once_per_shape_class_and_deterministic(monkeypatch, fresh_routes):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")   # (the GEMM route is an engine layer's)
    monkeypatch.setenv("GPURNN_GEMM", "auto")
    first = _run("GRU")[1]
    timed = list(fresh_routes)
    assert timed and len(set(timed)) == len(timed)        # each shape class timed once
    assert set(gemm.chosen()) == set(timed)
    assert all(route in gemm.ROUTES for route, _ in gemm.chosen().values())
    second = _run("GRU")[1]
    assert fresh_routes == timed                           # the second call reuses every choice
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_the_faster_route_is_chosen_for_every_gemm_of_the_layer(monkeypatch):
    monkeypatch.setenv("GPURNN_GEMM", "auto")
    monkeypatch.setattr(gemm, "_chosen", timed.Decisions())
    monkeypatch.setattr(gemm, "time_routes", lambda *a, **k: {"torch": 2.0, "numpy": 1.0})
    x = np.ones((5, 4, 3), np.float32)
    w = {"w_ih": np.ones((8, 3), np.float32), "w_hh": np.ones((8, 2), np.float32), "b_ih": None}
    assert gemm.matmul_for(x, w) is gemm.one_thread_matmul
    assert list(gemm.chosen()) == [(4, 4, 2, 8, "<f4", False, True)]   # B, I, K (from w_hh), N, layout, backward
    assert "numpy" in gemm.describe()


@pytest.mark.parametrize("feature_major", [False, True], ids=["rows", "feature_major"])
def test_the_replica_times_every_route(feature_major):
    times = gemm.time_routes(4, 3, 2, 8, np.float32, feature_major, repeats=1)
    assert set(times) == set(gemm.ROUTES) and all(t > 0 for t in times.values())


@pytest.mark.parametrize("feature_major", [False, True], ids=["rows", "feature_major"])
def test_a_layer_with_a_backward_is_timed_on_its_backwards_gemms_too(feature_major, monkeypatch, fresh_routes):
    """A route can win the forward's GEMMs and lose the backward's (oneDNN on weight gradients): a layer whose
    backward follows is its own shape class, timed on the steps' dh GEMMs, the weight gradient and dx as well."""
    shapes = []

    def recording(a, b, out=None, add=False):
        shapes.append((np.shape(a), np.shape(b)))
        return gemm.torch_matmul(np.asarray(a), np.asarray(b), out=out, add=add)
    monkeypatch.setattr(gemm, "ROUTES", {"torch": recording})
    gemm.time_routes(4, 3, 2, 8, np.float32, feature_major, for_backward=False, repeats=1)
    forward_only = list(shapes)
    shapes.clear()
    gemm.time_routes(4, 3, 2, 8, np.float32, feature_major, for_backward=True, repeats=1)
    rows, per_run = gemm.STEPS * 4, len(forward_only) // 2   # (a warm-up and one timed run)
    assert shapes[:per_run] == forward_only[:per_run]
    assert ((8, rows), (rows, 3 + 2)) in shapes and ((rows, 8), (8, 3)) in shapes   # dW = dA^T [x | h], dx
    assert len(shapes) == 2 * (per_run + gemm.STEPS + 2)   # + the steps' dh GEMMs, dW, dx
    key = gemm.shape_class(4, 3, 2, 8, np.float32, feature_major, True)
    assert key != gemm.shape_class(4, 3, 2, 8, np.float32, feature_major, False)


def test_each_cell_is_timed_in_the_layout_of_its_step_gemms(monkeypatch, fresh_routes):
    """The GRU's loops multiply W @ h^T, the compiled LSTM loop h @ W^T: each is timed in its own layout."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    monkeypatch.setenv("GPURNN_GEMM", "auto")
    _run("GRU")
    assert fresh_routes and all(key[5] is True for key in fresh_routes)
    fresh_routes.clear()
    monkeypatch.setattr(gemm, "_chosen", timed.Decisions())   # (with the NumPy LSTM loop, its class is the GRU's)
    _run("LSTM")   # (the NumPy loop, feature-major, where the C step does not build)
    assert fresh_routes and all(key[5] is (build.library() is None) for key in fresh_routes)


def test_bad_route_names_the_variable(monkeypatch):
    monkeypatch.setenv("GPURNN_GEMM", "mkl")
    with pytest.raises(ValueError, match=r"GPURNN_GEMM: expected 'auto' or one of .*got 'mkl'"):
        gemm.forced()


def test_deterministic_algorithms_fix_the_route_to_torch(monkeypatch, fresh_routes):
    """A timed choice may differ between processes: under torch.use_deterministic_algorithms, torch's, untimed."""
    monkeypatch.setenv("GPURNN_GEMM", "auto")
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert gemm.route(32, 64, 128, 512, np.float32) == "torch"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert fresh_routes == []


def _openblas_thread_count():
    """A function reading OpenBLAS's thread count (set, then set back), or skip."""
    setter = gemm._ONE_THREAD["set"]
    if setter is None:
        pytest.skip("NumPy's BLAS has no openblas_set_num_threads_local (OpenBLAS < 0.3.27 or another BLAS)")

    def current():
        n = setter(1)
        setter(n)
        return n
    return current


def test_the_numpy_route_runs_openblas_on_the_calling_thread_alone(monkeypatch):
    """Its workers, spinning after each call, fought torch's pool (a GRU's fwd+bwd 3.4x slower); the count is
    restored after the call, and a call inside another (threads) leaves the switch to the outer one."""
    current = _openblas_thread_count()
    before, seen = current(), []

    def matmul(a, b, out=None, add=False):
        seen.append(current())
        if len(seen) == 1:
            gemm.one_thread_matmul(a, b)   # another call while this one runs
            seen.append(current())
        return a @ b
    monkeypatch.setattr(gemm, "xp_matmul", matmul)
    a = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(gemm.one_thread_matmul(a, a.T), a @ a.T)
    assert seen == [1, 1, 1] and current() == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_layer_on_the_numpy_route_switches_openblas_once_per_loop(kind, monkeypatch):
    """The switch cost about 1.3 us a GEMM (two calls into OpenBLAS), several per step: the engine now holds it
    around each direction's loop, forward and backward; the projection outside the loop switches on its own."""
    current = _openblas_thread_count()
    before, calls = current(), []
    real = gemm._ONE_THREAD["set"]
    monkeypatch.setitem(gemm._ONE_THREAD, "set", lambda n: calls.append(n) or real(n))
    monkeypatch.setenv("GPURNN_GEMM", "numpy")
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    want, got = _run(kind)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    # 2 calls a switch; 2 layers, each: forward's two projections and loop, backward's loop (224 when per GEMM)
    assert len(calls) <= 2 * 2 * 4 and current() == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_children_forked_while_a_thread_runs_gemms_run_theirs_with_the_parents_thread_count():
    """DataLoader workers forked while another thread was inside a NumPy-route GEMM hung on the switch's lock,
    or kept OpenBLAS on one thread for life (forked between the count's change and the switch's)."""
    current = _openblas_thread_count()
    a, before, stop = np.ones((2, 2)), current(), threading.Event()
    busy = threading.Thread(target=lambda: [gemm.one_thread_matmul(a, a) for _ in iter(stop.is_set, True)])
    busy.start()
    counts = []
    try:
        for _ in range(200):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                signal.alarm(20)   # a hang fails the test instead of stalling the suite
                gemm.one_thread_matmul(a, a)
                os.write(write, bytes([current()]))
                os._exit(0)
            os.close(write)
            counts.append(os.read(read, 1))
            os.close(read)
            os.waitpid(pid, 0)
    finally:
        stop.set()
        busy.join()
    assert counts == [bytes([before])] * 200 and current() == before


def test_the_replica_runs_on_the_calls_shapes_not_its_class_bounds(monkeypatch):
    """A bidirectional LSTM's second layer (B=16, H=768) took 3.1 s timed at I=2048 for its 1536 (AMD EPYC)."""
    monkeypatch.setenv("GPURNN_GEMM", "auto")
    monkeypatch.setattr(gemm, "_chosen", timed.Decisions())
    shapes = []
    monkeypatch.setattr(gemm, "time_routes", lambda *args, **kw: shapes.append(args[:4]) or {"torch": 1.0})
    w = {"w_ih": np.ones((6, 3), np.float32), "w_hh": np.ones((6, 2), np.float32)}
    gemm.matmul_for(np.ones((5, 3, 3), np.float32), w)
    gemm.matmul_for(np.ones((5, 0, 3), np.float32), w)   # an empty batch: B=1's class, timed at B=1
    assert shapes == [(3, 3, 2, 6), (1, 3, 2, 6)] and [key[:4] for key in gemm.chosen()] == [(4, 4, 2, 8),
                                                                                          (1, 4, 2, 8)]



@pytest.mark.parametrize("big", [False, True])
def test_a_big_layers_replica_runs_half_the_steps(big, monkeypatch):
    """Over BIG_STEP multiply-adds a step, half of STEPS: their times far above the noise."""
    monkeypatch.setattr(gemm, "BIG_STEP", 4 * (3 + 2) * 8 - big)   # B x (I + K) x N
    step_gemms = []

    def recording(a, b, out=None, add=False):
        step_gemms.append(np.shape(a) == (4, 2))   # (B, K) @ (K, N): one a step
        return gemm.torch_matmul(np.asarray(a), np.asarray(b), out=out, add=add)
    monkeypatch.setattr(gemm, "ROUTES", {"torch": recording})
    gemm.time_routes(4, 3, 2, 8, np.float32, for_backward=False, repeats=1)
    assert sum(step_gemms) == 2 * gemm.STEPS // (2 if big else 1)   # a warm-up and one timed run


def test_the_feature_major_replica_takes_the_grus_step_blocks_as_its_loop_holds_them(monkeypatch):
    """oneDNN copies an operand whose rows are not contiguous (onednn._linear), so the replica's backward steps must
    hand the route the GRU loop's (3H, B) gradient blocks as they are. They were transposed rows: the replica skipped
    the layer's copies and called oneDNN a tie where the layer took 1.2x NumPy's time (B=32 T=128 H=256, AMD EPYC)."""
    seen = []

    def recording(a, b, out=None, add=False):
        if add:   # the feature-major backward steps: dh^T += W_hh^T @ D_t
            seen[-1].add((a.flags.c_contiguous, b.flags.c_contiguous, b.flags.f_contiguous))
        return np.matmul(a, b, out=out) if not add else np.add(out, a @ b, out=out)

    monkeypatch.setattr(gemm, "ROUTES", {"recording": recording})
    monkeypatch.setattr(gemm, "_chosen", timed.Decisions())
    monkeypatch.setenv("GPURNN_GEMM", "recording")
    seen.append(set())
    m = gnn.GRU(6, 8)
    m(torch.randn(5, 3, 6, requires_grad=True))[0].sum().backward()
    seen.append(set())
    gemm.time_routes(3, 6, 8, 24, np.float32, feature_major=True, repeats=1)
    layer, replica = seen
    assert layer and replica == layer
