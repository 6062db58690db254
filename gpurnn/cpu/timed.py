"""What the CPU's two timed route choices share (gemm.py: torch's or NumPy's BLAS; layer.py: the
engine or torch's fused op): shape classes rounded to powers of two, a per-process cache of each
class's decision (the faster route by timing, made under a lock; torch's route where torch's deterministic
algorithms are on; kept for later processes where its timing ran in quiet: stored.py), and its one-line description.

A decision is made once, unless its timing ran while the process's threads waited for a CPU (other processes busy: a
DataLoader's workers starting, a build): such a load slows the routes unequally (torch's two-thread ops far more
than one-thread OpenBLAS), and a decision made under a passing one pinned an LSTM (H=768) to a route that then
took 4.4-5x torch.nn's time on an AMD EPYC. It is timed again on a later call, RETIME_AFTER seconds on, up to
RETIMES times, each timing replacing the last (a class's calls differ in shape, up to 2x: the times of two timings
may be of different shapes)."""
import contextlib
import contextvars
import glob
import os
import sys
import threading
import time

from . import stored

_lock = threading.RLock()   # re-entered: timing a layer route makes the layer's GEMM route decision


def _new_lock_in_child():
    """A forked child gets a fresh lock: the thread that held the parent's (timing a route) does not exist there."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


RETIMES = 2
RETIME_AFTER = 30.0   # seconds from a timing under load to the next (a passing load has passed)
# seconds the process's threads waited for a CPU while runnable, a second of timing, over which the timing ran under
# load (a 2-core AMD EPYC: 0.01 alone, 1.0 with two other busy processes)
CONTENDED = 0.25


class Decisions(dict):
    """A route choice's cache: {shape class: (route, {route: seconds})}, and the classes whose last timing ran under
    load (retimes: {shape class: (timings so far, when the last ended)}); kind ("layer", "gemm") names its decisions
    kept between processes, of the given routes (stored.py; None: none kept). A class missing here is read from them
    (by `due` and `get`)."""

    def __init__(self, kind=None, routes=()):
        super().__init__()
        self.kind, self.routes = kind, tuple(routes)
        self.retimes = {}
        self.unkept = set()   # classes looked for in vain (once: a look costs 45 us; a call under a mode asks each)

    def _load(self, key):
        if key not in self and self.kind is not None and key not in self.unkept:
            kept = stored.load(self.kind, key, self.routes)
            if kept is None:
                self.unkept.add(key)
            else:
                self[key] = kept

    def get(self, key, default=None):
        self._load(key)
        return super().get(key, default)

    def due(self, key):
        """Whether key's route is to be timed now: never timed (in this process, nor kept from another), or last timed
        under load long enough ago, where a timing may run again (_may_retime; a checkpoint's forward must keep the
        route its recomputation will take)."""
        self._load(key)
        if key not in self:
            return True
        count, ended = self.retimes.get(key, (RETIMES + 1, 0.0))
        return count <= RETIMES and time.monotonic() - ended >= RETIME_AFTER and _may_retime()


def saved_tensor_hooks():
    """Whether saved-tensor hooks are on (a checkpoint's forward, an offloading store)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch._C._autograd._top_saved_tensors_default_hooks(False) is not None


_retiming = contextvars.ContextVar("gpurnn_retiming", default=None)   # inside `unseen`: whether its caller may


def _may_retime():
    """Where the timing was asked for (`unseen`'s own hooks do not count): no saved-tensor hooks on, and nothing
    that would see the timing's runs or be disturbed by them (a profiler, a torch function or dispatch mode,
    anomaly mode)."""
    inherited = _retiming.get()
    if inherited is not None:
        return inherited
    torch = sys.modules.get("torch")
    return torch is None or not (saved_tensor_hooks() or torch.autograd.profiler._is_profiler_enabled
                                 or torch._C._is_torch_function_mode_enabled() or torch.is_anomaly_enabled()
                                 or torch.utils._python_dispatch.is_in_torch_dispatch_mode())


def timing():
    """Whether a timing's runs (`unseen`) are running."""
    return _retiming.get() is not None


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


def _waited():
    """Seconds the process's threads have waited for a CPU while runnable (Linux's schedstat; elsewhere 0: every
    timing taken as made in quiet)."""
    total = 0
    for path in glob.glob("/proc/self/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            pass   # (a thread that ended meanwhile)
    return total / 1e9


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
    # a re-timing does not make other threads wait for it (seconds at large shapes): they take the cached route
    if cache.due(key) and _lock.acquire(blocking=key not in cache):
        try:
            if cache.due(key):
                waited, start = _waited(), time.monotonic()
                times = time_routes()
                ended = time.monotonic()
                best = min(times, key=times.get)
                if prefer in times and times[prefer] <= times[best] * (1 + margin):
                    best = prefer
                cache[key] = (best, times)
                count = cache.retimes.pop(key, (0, 0.0))[0] + 1
                if _waited() - waited > CONTENDED * (ended - start):
                    cache.retimes[key] = (count, ended)
                elif cache.kind is not None:   # (made in quiet: kept for the next processes)
                    stored.save(cache.kind, key, best, times, cache.routes)
        finally:
            _lock.release()
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
