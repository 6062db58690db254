"""The CPU GEMM route under the torch front end: torch's matmul or NumPy's BLAS, chosen by timing.

The engine's GEMMs on NumPy arrays can run through torch (MKL, in torch's thread pool, on
zero-copy views: arrays.torch_matmul) or through NumPy's OpenBLAS (arrays.xp_matmul). Which
is faster depends on the CPU: on an AMD EPYC torch's MKL ran the (4096, 64) @ (64, 512)
projection in 3.2 ms and OpenBLAS in 1.9 ms; on an Intel Xeon they trade places. So the first
GEMM of each shape class (shapes with every dimension rounded up to a power of two, dtype,
accumulate or not) runs both routes a few times and the faster median is kept for the process.
Each timed call is followed by a small threaded torch operation: OpenBLAS workers spin after a
call and slow torch's own pool (why torch_matmul exists), so that cost counts where it lands.

GPURNN_GEMM=torch|numpy forces a route ("auto", the default, times them). Both routes give the
same results to float32 rounding (tests/cpu/test_gemm_route.py).
"""
import os
import statistics
import threading
import time

import numpy as np

from ..arrays import torch_matmul, xp_matmul

ROUTES = {"torch": torch_matmul, "numpy": xp_matmul}
REPEATS = 5
_chosen = {}     # shape class -> (route, {route: median seconds})
_lock = threading.Lock()


def forced():
    """The route GPURNN_GEMM forces, or None for "auto"."""
    value = os.environ.get("GPURNN_GEMM", "auto")
    if value != "auto" and value not in ROUTES:
        raise ValueError(f"GPURNN_GEMM: expected 'auto' or one of {tuple(ROUTES)}, got {value!r}")
    return None if value == "auto" else value


def _pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(a, b, out, add):
    return (tuple(_pow2(d) for d in a.shape), tuple(_pow2(d) for d in b.shape), a.dtype.str, out is None, add)


def _probe():
    """A threaded torch operation (above torch's parallel grain): where spinning BLAS workers cost."""
    import torch

    x = torch.empty(1 << 16)
    return lambda: torch.tanh(x, out=x)


def time_routes(a, b, out=None, add=False, repeats=REPEATS):
    """{route: median seconds} of a @ b (into out, accumulating with add) through each route,
    on scratch arrays of the same shapes, each call followed by the probe."""
    rng = np.random.default_rng(0)
    a_, b_ = (rng.standard_normal(x.shape).astype(x.dtype) for x in (a, b))
    out_ = None if out is None else np.zeros(out.shape, out.dtype)
    probe = _probe()
    times = {}
    for name, fn in ROUTES.items():
        fn(a_, b_, out=out_, add=add)   # warm up: thread pools, first-touch pages
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(a_, b_, out=out_, add=add)
            probe()
            runs.append(time.perf_counter() - t0)
        times[name] = statistics.median(runs)
    return times


def route(a, b, out=None, add=False):
    """The route for this GEMM: forced, or the faster by timing, once per shape class."""
    name = forced()
    if name is not None:
        return name
    key = shape_class(a, b, out, add)
    if key not in _chosen:
        with _lock:
            if key not in _chosen:
                times = time_routes(a, b, out, add)
                _chosen[key] = (min(times, key=times.get), times)
    return _chosen[key][0]


def matmul(a, b, out=None, add=False):
    """a @ b (into out; add=True accumulates) on NumPy arrays through the chosen route."""
    return ROUTES[route(a, b, out, add)](a, b, out=out, add=add)


def chosen():
    """{shape class: (route, {route: median seconds})} decided so far in this process."""
    return dict(_chosen)


def describe():
    """One line for `python -m gpurnn info` and benchmark headers."""
    name = forced()
    if name is not None:
        return f"{name} (forced by GPURNN_GEMM)"
    if not _chosen:
        return "auto: torch or NumPy's BLAS per GEMM shape, whichever times faster on first use"
    counts = {}
    for r, _ in _chosen.values():
        counts[r] = counts.get(r, 0) + 1
    split = ", ".join(f"{r} for {n}" for r, n in sorted(counts.items()))
    return f"auto, timed on first use per GEMM shape: {split} of {len(_chosen)} shape classes so far"


def report(shapes=(((32, 128), (128, 512)), ((4096, 64), (64, 512)))):
    """Timings of both routes on representative float32 shapes (a step, a projection), as lines."""
    lines = []
    for sa, sb in shapes:
        a, b = np.zeros(sa, np.float32), np.zeros(sb, np.float32)
        times = time_routes(a, b, out=np.zeros((sa[0], sb[1]), np.float32))
        best = min(times, key=times.get)
        lines.append(f"{sa} @ {sb}: " + ", ".join(f"{r} {t * 1e6:.0f} us" for r, t in times.items())
                     + f" -> {best}")
    return lines
