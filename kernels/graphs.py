"""The stepwise path as a CUDA graph.

A split layer whose P slices exceed the SM count runs one launch per step (common.run_windows,
"stepwise"): T Triton launches from Python, each costing more host time than a step takes on the
GPU. Here a layer call's launches are first recorded (common.launch appends them instead of
launching); the first call with a given set of arguments launches them as before, and from the
second on they are captured once as a CUDA graph and replayed: one host call for all T steps.

A graph replays exactly the arguments it was captured with (buffer addresses included), so the
key is every argument of every launch, tensors by device, address, dtype, shape and strides: a
call replays a graph only where launching would have done the same. Layers called in a loop with
the same shapes usually meet the same buffers again (the caching allocator, sizes and offsets
cached per value); other calls just launch. GPURNN_CUDA_GRAPHS=0 turns graphs off.
"""
import collections
import os
import threading
import warnings

MAX_GRAPHS = 16   # captured graphs kept per process (least recently used dropped)
MAX_SEEN = 64     # argument sets launched once and remembered, waiting for a second call

_local = threading.local()
_lock = threading.Lock()
_graphs = collections.OrderedDict()   # key -> captured torch.cuda.CUDAGraph
_seen = collections.OrderedDict()     # keys launched once, captured if they come again
_failed = []                          # a capture that failed: graphs are off for the process


def usable(calls):
    """Whether recorded launches run through a graph: more than one, on a CUDA device, not inside a
    caller's own capture (its launches then belong to that graph)."""
    device = _device(calls)
    if len(calls) < 2 or device is None or device.type != "cuda":
        return False
    if os.environ.get("GPURNN_CUDA_GRAPHS", "1") == "0" or _failed:
        return False
    import torch

    return not torch.cuda.is_current_stream_capturing()


def recording():
    """The list common.launch appends to while a step sequence is recorded; None otherwise."""
    return getattr(_local, "calls", None)


def record(fn):
    """The launches fn makes through common.launch, as (kernel, grid, args, kwargs), none launched."""
    _local.calls = []
    try:
        fn()
        return _local.calls
    finally:
        _local.calls = None


def run(calls):
    """Run recorded launches: directly the first time their arguments are seen (or where no graph
    is `usable`), then as a graph captured on the second time and replayed from then on."""
    if not usable(calls):
        for call in calls:
            _launch(*call)
        return
    key = tuple((kernel, grid, tuple(map(_arg, args)), tuple(sorted((k, _arg(v)) for k, v in kwargs.items())))
                for kernel, grid, args, kwargs in calls)
    with _lock:
        graph = _graphs.get(key)
        if graph is not None:
            _graphs.move_to_end(key)
        elif not _seen.pop(key, False):   # first time: launch, and remember the key
            _keep(_seen, key, True, MAX_SEEN)
            graph = False
    if graph is None:   # second time: capture
        graph = _capture(calls)
        if graph is not False:
            with _lock:
                _keep(_graphs, key, graph, MAX_GRAPHS)
    if graph is False:
        for call in calls:
            _launch(*call)
    else:
        graph.replay()


def clear():
    """Drop every captured graph, every remembered key and a failed capture."""
    with _lock:
        _graphs.clear()
        _seen.clear()
        _failed.clear()


def _device(calls):
    """The device of the first launch's first tensor argument (None: no launch or no tensor)."""
    return next((a.device for _, _, args, _ in calls[:1] for a in args if hasattr(a, "data_ptr")), None)


def _arg(a):
    if hasattr(a, "data_ptr"):
        return ("tensor", str(a.device), a.data_ptr(), a.dtype, tuple(a.shape), tuple(a.stride()))
    return a


def _keep(cache, key, value, most):
    cache[key] = value
    while len(cache) > most:
        cache.popitem(last=False)


def _launch(kernel, grid, args, kwargs):
    kernel[grid](*args, **kwargs)


def _capture(calls):
    """The launches captured as a CUDA graph on a side stream (capture runs nothing; the kernels
    were compiled by the first, direct run). False where capture fails: a warning, and graphs are
    off for the rest of the process (the launches then run one by one, as without graphs)."""
    import torch

    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(torch.cuda.Stream(_device(calls))):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                for call in calls:
                    _launch(*call)
            finally:
                graph.capture_end()
    except RuntimeError as err:
        _failed.append(err)
        warnings.warn(f"gpurnn: capturing a stepwise layer's {len(calls)} launches as a CUDA graph failed "
                      f"({err}); they run one launch per step from now on (GPURNN_CUDA_GRAPHS=0 skips the "
                      f"attempt)", RuntimeWarning, stacklevel=2)
        return False
    return graph
