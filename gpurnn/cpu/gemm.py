"""The CPU GEMM route under the torch front end: torch's matmul, NumPy's BLAS or oneDNN, chosen by timing.

The engine's GEMMs on NumPy arrays can run through torch (MKL, in torch's thread pool, on
zero-copy views: arrays.torch_matmul), through NumPy's OpenBLAS (arrays.xp_matmul), or, float32 only,
through oneDNN with each weight that the steps multiply by packed once a layer call (onednn.py). Which
is faster depends on the CPU and the shape: on an AMD EPYC torch's MKL ran the (4096, 64) @ (64, 512)
projection in 3.2 ms and OpenBLAS in 1.9 ms, and a B=16 H=768 LSTM step's GEMM took MKL 761 us,
oneDNN 177 us; on an Intel Xeon torch is the faster for the per-step shapes at H=128; at small shapes
oneDNN's per-call overhead (about 13 us) loses. So the first layer call of each shape class (batch, input and
gate widths rounded up to powers of two, the recurrent width, dtype, layout, whether a backward follows) times a
small replica of the layer's GEMMs through each route, a projection, sixteen steps and their backward, and keeps
the faster for every GEMM of that layer class in the process.

One route for all of a layer's GEMMs, not one per GEMM: mixing them lets OpenBLAS workers,
which spin after each call, fight torch's thread pool. Choosing per GEMM shape in isolation
picked NumPy for two of fourteen shapes on a Xeon and made the LSTM's forward+backward twice
as slow (profiling/results/cpu/engine_vs_torch_xeon*.md). For the same reason the NumPy route
runs OpenBLAS on the calling thread alone: even within one route, the few GEMMs large enough for
its workers (a GRU's input projection and weight gradients at B=32 H=32) left them spinning
against torch's pool, which autograd's own ops wake: that GRU's forward+backward took 6.1 ms
instead of 1.8 ms on the Xeon, and a packed GRU, which always runs on the engine, 4x torch.nn's. The engine holds
that switch around a layer's loop (one_thread), so that it costs two calls into OpenBLAS a loop, not a GEMM.

GPURNN_GEMM=torch|numpy|onednn forces a route ("auto", the default, times them; torch's route under
torch.use_deterministic_algorithms; onednn forced on a layer of another dtype than float32 takes torch's).
The routes give the same results to float32 rounding (tests/cpu/test_gemm_route.py, test_onednn.py).
"""
import contextlib
import ctypes
import glob
import os
import statistics
import threading
import time

import numpy as np

from .. import backends
from ..arrays import torch_matmul, xp_matmul
from ..cells.base import gemm_weight
from . import onednn, timed


def _openblas_threads_setter():
    """NumPy's OpenBLAS's openblas_set_num_threads_local (OpenBLAS >= 0.3.27, in NumPy's wheels: numpy.libs,
    numpy/.dylibs), or None (an older OpenBLAS, another BLAS: its threads are left as they are)."""
    numpy_dir = os.path.dirname(np.__file__)
    for path in sorted(glob.glob(os.path.join(numpy_dir + ".libs", "*openblas*")) +
                       glob.glob(os.path.join(numpy_dir, ".dylibs", "*openblas*"))):
        try:
            return getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
        except OSError:
            continue
    return None


_ONE_THREAD = {"lock": threading.Lock(), "inside": 0, "before": None, "set": _openblas_threads_setter()}


@contextlib.contextmanager
def one_thread():
    """OpenBLAS on the calling thread alone while the block runs (see the module's docstring). In NumPy's wheels the
    setting is process-wide (other threads' NumPy GEMMs run on one thread meanwhile): concurrent blocks share one
    switch, made by the first in and undone by the last out."""
    switch = _ONE_THREAD
    if switch["set"] is None:
        yield
        return
    with switch["lock"]:
        if switch["inside"] == 0:
            switch["before"] = switch["set"](1)
        switch["inside"] += 1
    try:
        yield
    finally:
        with switch["lock"]:
            switch["inside"] -= 1
            if switch["inside"] == 0:
                switch["set"](switch["before"])


def one_thread_matmul(*args, **kwargs):
    """xp_matmul with OpenBLAS on the calling thread alone; inside a block of one_thread() (the engine holds one
    around a layer's loop) without a switch of its own. (Read without the lock: where another thread's block ends
    meanwhile, this GEMM may run on OpenBLAS's threads: slower, and its last bits may differ, as OpenBLAS's sums
    depend on its thread count for some shapes (two threads running layers: 3 of 12 calls differed by <= 5e-8).)"""
    if _ONE_THREAD["inside"]:
        return xp_matmul(*args, **kwargs)
    with one_thread():
        return xp_matmul(*args, **kwargs)


def _new_switch_in_child():
    """A forked child gets a fresh switch, the count as before: a parent's thread inside a call does not exist
    there. (A fork waits for the switch's lock, so that `inside` and the count agree.)"""
    if _ONE_THREAD["inside"]:
        _ONE_THREAD["set"](_ONE_THREAD["before"])
    _ONE_THREAD.update(lock=threading.Lock(), inside=0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=lambda: _ONE_THREAD["lock"].acquire(),
                        after_in_parent=lambda: _ONE_THREAD["lock"].release(), after_in_child=_new_switch_in_child)

ROUTES = {"torch": torch_matmul, "numpy": one_thread_matmul}
if onednn.available():
    ROUTES["onednn"] = onednn.matmul
FLOAT32_ONLY = ("onednn",)   # a layer of another dtype takes torch's route where one of these is forced
REPEATS = 3
STEPS = 16   # steps of the timed replica (a projection over STEPS steps, then STEPS step GEMMs)
# multiply-adds a step (B x (I + K) x N) over which the replica runs half the steps, their times far above the noise:
# the same routes won at B=16 H=768 on an AMD EPYC, timed in 0.4-0.9 s a layer class instead of 0.7-1.3
BIG_STEP = 3e7
_chosen = timed.Decisions("gemm", ROUTES)     # layer shape class -> (route, {route: median seconds})


def forced():
    """The route GPURNN_GEMM forces, or None for "auto"."""
    value = backends.env("GPURNN_GEMM", "auto")
    if value == "onednn" and value not in ROUTES:
        raise ValueError("GPURNN_GEMM: 'onednn' needs torch's oneDNN linear ops (torch.ops.mkldnn._linear_pointwise, "
                         "_reorder_linear_weight), which this torch lacks; expected 'auto' or one of "
                         f"{tuple(ROUTES)}")
    if value != "auto" and value not in ROUTES:
        raise ValueError(f"GPURNN_GEMM: expected 'auto' or one of {tuple(ROUTES)}, got {value!r}")
    return None if value == "auto" else value


def shape_class(B, I, K, N, dtype, feature_major=False, for_backward=True):
    """A layer's GEMMs: batch B, input width I, recurrent width K, gate width N (= gates x hidden), their
    layout: feature-major (the GRU's loops, W @ h^T) or in rows, and whether a backward's GEMMs follow. Timed in
    rows, a GRU (H=128, B=1 or 32) took torch's route where NumPy's took 0.84-0.91x the layer's time on an AMD
    EPYC."""
    return (timed.pow2(B), timed.pow2(I), timed.pow2(K), timed.pow2(N), np.dtype(dtype).str, feature_major,
            for_backward)


def time_routes(B, I, K, N, dtype, feature_major=False, for_backward=True, repeats=REPEATS):
    """{route: median seconds} of the layer replica through each route: in rows (STEPS*B, I) @ (I, N), then
    STEPS x (B, K) @ (K, N) accumulated into the gate rows; feature-major STEPS x (N, I) @ (I, B) in one call,
    then STEPS x (N, K) @ (K, B). For a backward, then the steps' (B, N) @ (N, K) (feature-major (K, N) @ (N, B)),
    the weight gradient (N, STEPS*B) @ (STEPS*B, I+K) and dx, (STEPS*B, N) @ (N, I): a route's speed on one
    form does not carry over to the others (the weight gradient's transposed rows cost oneDNN a copy). STEPS: half
    of it where a step is big (BIG_STEP). Every product writes into memory made once: a fresh result's page faults
    cost what the C library's state of the moment makes them, not what the route does (a GRU's replica at B=16
    H=768 on an AMD EPYC: oneDNN's 11 ms timed 17-114 ms with fresh results, and lost to torch's 20 in half the
    processes, whose forward+backward then took 1.6x the time)."""
    steps = STEPS // 2 if B * (I + K) * N > BIG_STEP else STEPS
    rng = np.random.default_rng(0)
    w_ih, w_hh = (rng.standard_normal(s).astype(dtype) / 8 for s in ((N, I), (N, K)))
    rows, xh = rng.standard_normal((steps * B, N)).astype(dtype), rng.standard_normal((steps * B, I + K)).astype(dtype)
    dh = np.zeros((B, K), dtype)
    dw, dx = np.empty((N, I + K), dtype), np.empty((steps * B, I), dtype)

    def backward(fn):
        if feature_major:   # each step's (N, B) gradient block as the GRU's loop holds it (oneDNN copies it to rows)
            w_back, dhT = gemm_weight(fn, np, w_hh.T, B, contiguous=True), np.zeros((K, B), dtype)
            for t in range(steps):
                fn(w_back, d_steps[t], out=dhT, add=True)
        else:
            w_back = gemm_weight(fn, np, w_hh, B, contiguous=True)
            for t in range(steps):
                fn(rows[t * B:(t + 1) * B], w_back, out=dh)
        fn(rows.T, xh, out=dw)
        fn(rows, w_ih, out=dx)
    if feature_major:
        x, h = rng.standard_normal((steps, I, B)).astype(dtype), rng.standard_normal((K, B)).astype(dtype)
        d_steps = rng.standard_normal((steps, N, B)).astype(dtype)
        gates = np.empty((steps, N, B), dtype)

        def replica(fn):
            fn(w_ih, x, out=gates)
            w_step = gemm_weight(fn, np, w_hh, B, contiguous=True)   # C-contiguous already
            for t in range(steps):
                fn(w_step, h, out=gates[t])
            if for_backward:
                backward(fn)
    else:
        x, h = rng.standard_normal((steps * B, I)).astype(dtype), rng.standard_normal((B, K)).astype(dtype)
        gates = np.empty((steps * B, N), dtype)

        def replica(fn):   # the LSTM's (cpu/lstm.py)
            fn(x, gemm_weight(fn, np, w_ih.T, steps * B, contiguous=True), out=gates)
            w_step = gemm_weight(fn, np, w_hh.T, B, contiguous=True)
            for t in range(steps):
                fn(h, w_step, out=gates[t * B:(t + 1) * B], add=True)
            if for_backward:
                backward(fn)
    times = {}
    for name, fn in ROUTES.items():
        if name in FLOAT32_ONLY and np.dtype(dtype) != np.float32 or name == "onednn" and not onednn.enabled():
            continue
        replica(fn)   # warm up: thread pools, first-touch pages
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            replica(fn)
            runs.append(time.perf_counter() - t0)
        times[name] = statistics.median(runs)
    return times


def route(B, I, K, N, dtype, feature_major=False, for_backward=True):
    """The route for a layer's GEMMs: forced, or the faster by timing, once per shape class; torch's where
    torch's oneDNN is switched off (torch.backends.mkldnn.enabled) and the route is oneDNN's."""
    name = forced()
    if name is not None:
        name = "torch" if name in FLOAT32_ONLY and np.dtype(dtype) != np.float32 else name
    elif timed.deterministic():
        name = "torch"
    else:
        key = shape_class(B, I, K, N, dtype, feature_major, for_backward)
        # timed on this call's shapes, not the class's bounds: a bidirectional LSTM's second layer (B=16, H=768) took
        # 3.1 s timed at I=2048 for its 1536 on an AMD EPYC
        name = timed.decide(_chosen, key, lambda: time_routes(*(max(1, n) for n in (B, I, K, N)), dtype,
                                                              feature_major, for_backward))
    return "torch" if name == "onednn" and not onednn.enabled() else name


def matmul_for(x, w, feature_major=False, for_backward=True):
    """The GEMM function (one of ROUTES) for a layer on NumPy input x (T, B, I) with weights w (w_ih (N, I), and
    its recurrent weight (N, K)), whose cell keeps its steps feature-major or in rows, with or without a
    backward to follow."""
    N, I = w["w_ih"].shape
    K = next((v.shape[1] for k, v in w.items() if k != "w_ih" and v is not None and v.ndim == 2
              and v.shape[0] == N), I)
    # (the weights' dtype, the one the GEMMs run in: a float16 layer's are float32 copies)
    return ROUTES[route(x.shape[1], I, K, N, w["w_ih"].dtype, feature_major, for_backward)]


def chosen():
    """{shape class (shape_class()): (route, {route: median seconds})} decided so far in this process."""
    return dict(_chosen)


def describe():
    """One line for `python -m gpurnn info` and benchmark headers."""
    return timed.describe(
        _chosen, forced(), "GPURNN_GEMM",
        f"auto: {', '.join(ROUTES)} per layer shape, whichever times faster on first use",
        "auto, timed per layer shape (B, I, K, N)",
        lambda key, route, times: f"{key[:4]} {route} ({', '.join(f'{r} {t * 1e3:.2f} ms' for r, t in times.items())})")


def report(shapes=((32, 64, 128, 512), (32, 128, 128, 384))):
    """Every route timed on representative float32 layers (an LSTM's and a GRU's GEMMs at B=32, H=128, with their
    backward, in rows), as lines."""
    lines = []
    for B, I, K, N in shapes:
        times = time_routes(B, I, K, N, np.float32)
        lines.append(f"B={B} I={I} K={K} N={N}: " + ", ".join(f"{r} {t * 1e3:.2f} ms" for r, t in times.items())
                     + f" -> {min(times, key=times.get)}")
    return lines
