"""What the CPU's two timed route choices share (gemm.py: torch's or NumPy's BLAS; layer.py: the
engine or torch's fused op): shape classes rounded to powers of two, a per-process cache of each
class's decision (the faster route by timing, made once under a lock; torch's route where torch's deterministic
algorithms are on), and its one-line description."""
import os
import sys
import threading

_lock = threading.RLock()   # re-entered: timing a layer route makes the layer's GEMM route decision


def _new_lock_in_child():
    """A forked child gets a fresh lock: the thread that held the parent's (timing a route) does not exist there."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def pow2(n):
    """The least power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def deterministic():
    """Whether torch.use_deterministic_algorithms is on: the routes are then fixed (torch's), not timed, since a
    timed choice may differ from one process to the next and the routes round differently. Under the torch front
    end only (a NumPy caller has not imported torch: nothing to honour)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.are_deterministic_algorithms_enabled()


def decide(cache, key, time_routes, prefer=None, margin=0.0):
    """The route cached for key, else the fastest of time_routes() ({route: seconds}), or `prefer` where it is
    within `margin` (a fraction) of the fastest, cached with its times: cache[key] = (route, times)."""
    if key not in cache:
        with _lock:
            if key not in cache:
                times = time_routes()
                best = min(times, key=times.get)
                if prefer in times and times[prefer] <= times[best] * (1 + margin):
                    best = prefer
                cache[key] = (best, times)
    return cache[key][0]


def describe(cache, forced, variable, untimed, label, entry):
    """One line: the route `variable` forces, what "auto" will do (`untimed`) before any decision,
    or `label` and entry(key, route, times) for each decision so far."""
    if forced is not None:
        return f"{forced} (forced by {variable})"
    if not cache:
        return untimed
    return f"{label}: " + "; ".join(entry(key, route, times)
                                    for key, (route, times) in sorted(cache.items()))
