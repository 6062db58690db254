"""What the CPU's two timed route choices share (gemm.py: torch's or NumPy's BLAS; layer.py: the
engine or torch's fused op): shape classes rounded to powers of two, a per-process cache of each
class's decision (the faster route by timing, made under a lock; torch's route where torch's deterministic
algorithms are on), and its one-line description.

A decision is made once, unless its timing ran while the process waited for a CPU (other processes busy: a
DataLoader's workers starting, a build): such a load slows the routes unequally (torch's two-thread ops far more
than one-thread OpenBLAS), and a decision made under a passing one pinned an LSTM (H=768) to a route that then
took 4.4-5x torch.nn's time on an AMD EPYC. It is timed again on a later call, RETIME_AFTER seconds on, up to
RETIMES times, each route keeping its least time over the timings (a load only slows a route)."""
import contextlib
import contextvars
import os
import sys
import threading
import time

try:
    import resource
except ImportError:   # (Windows: no count of the waits; every timing is taken as made in quiet)
    resource = None

_lock = threading.RLock()   # re-entered: timing a layer route makes the layer's GEMM route decision


def _new_lock_in_child():
    """A forked child gets a fresh lock: the thread that held the parent's (timing a route) does not exist there."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


RETIMES = 2
RETIME_AFTER = 30.0   # seconds from a timing under load to the next (a passing load has passed)
# involuntary context switches a second of timing and CPU core, over which the process waited for a CPU (a 2-core
# AMD EPYC's route timings: 30-86 a second alone, 190-260 with two other busy processes; a short timing's few
# switches vary the most)
CONTENDED = 60
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Decisions(dict):
    """A route choice's cache: {shape class: (route, {route: seconds})}, and the classes whose last timing ran under
    load (retimes: {shape class: (timings so far, when the last ended)})."""

    def __init__(self):
        super().__init__()
        self.retimes = {}

    def due(self, key):
        """Whether key's route is to be timed now: never timed, or last timed under load long enough ago and not
        where saved-tensor hooks are on (a checkpoint's forward, which its recomputation in backward repeats on the
        route its layers' last forward took (layer.py): a route changed by another call in between would save other
        tensors, which torch's checkpoint refuses)."""
        if key not in self:
            return True
        count, ended = self.retimes.get(key, (RETIMES + 1, 0.0))
        return count <= RETIMES and time.monotonic() - ended >= RETIME_AFTER and _may_retime()


def _saved_tensor_hooks():
    torch = sys.modules.get("torch")
    return torch is not None and torch._C._autograd._top_saved_tensors_default_hooks(False) is not None


_retiming = contextvars.ContextVar("gpurnn_retiming", default=None)   # inside `unseen`: whether its caller may


def _may_retime():
    """No saved-tensor hooks on where the timing was asked for (`unseen`'s own do not count)."""
    inherited = _retiming.get()
    return not _saved_tensor_hooks() if inherited is None else inherited


@contextlib.contextmanager
def unseen():
    """Identity saved-tensor hooks around a timing's runs, which the caller's hooks must not see (offloading,
    counting); decisions due again inside are timed again where they would be outside."""
    import torch
    token = _retiming.set(_may_retime())
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            yield
    finally:
        _retiming.reset(token)


def _waits():
    """The process's involuntary context switches so far (its threads preempted while they could run)."""
    return 0 if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


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
    """The route cached for key in cache (a Decisions), else (or where due again) the fastest of time_routes()
    ({route: seconds}), or `prefer` where it is within `margin` (a fraction) of the fastest, cached with its times:
    cache[key] = (route, times)."""
    if cache.due(key):
        with _lock:
            if cache.due(key):
                waits, start = _waits(), time.monotonic()
                times = time_routes()
                ended = time.monotonic()
                if key in cache:
                    times = {r: min(t, cache[key][1].get(r, t)) for r, t in times.items()}
                best = min(times, key=times.get)
                if prefer in times and times[prefer] <= times[best] * (1 + margin):
                    best = prefer
                cache[key] = (best, times)
                count = cache.retimes.pop(key, (0, 0.0))[0] + 1
                if _waits() - waits > max(5, CONTENDED * CPUS * (ended - start)):
                    cache.retimes[key] = (count, ended)
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
