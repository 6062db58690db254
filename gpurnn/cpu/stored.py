"""Route decisions kept between processes (timed.py), so that a program's first call of a layer shape does not time
its routes again in every run: a 2-layer bidirectional LSTM's first forward+backward at B=16 T=64 H=768 spent 8-10 s
timing on an AMD EPYC, where torch.nn's first call took 1.9 s.

A decision whose timing ran in quiet (timed.decide) is written to a JSON file in GPURNN_CACHE_DIR (default
$XDG_CACHE_HOME/gpurnn, else ~/.cache/gpurnn; "" or "0": nothing kept), one file for each setting it holds for: the
CPU model, the CPUs the process may run on, torch's thread count and oneDNN switch, the thread and BLAS variables
of the environment, GPURNN_GEMM, the versions of Python, gpurnn, torch and NumPy, and gpurnn's source files (an
edit times again). A decision older than MAX_AGE seconds is timed again. Writes replace the file whole (os.replace),
so a reader never sees half of one; two processes writing at once may lose one's decision, which is then timed
again.
"""
import contextlib
import glob
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import warnings

MAX_AGE = 7 * 24 * 3600.0
ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
               "OPENBLAS_L2_SIZE", "GPURNN_GEMM")
_files = {}        # path -> {kind: {repr(key): [route, {route: seconds}, unix time]}} as read, and written since
_fixed = []        # the parts of the setting that cannot change while the process runs, once read
_warned = []


def directory():
    """Where decisions are kept, or None (GPURNN_CACHE_DIR "" or "0")."""
    value = os.environ.get("GPURNN_CACHE_DIR")
    if value is None:
        return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "gpurnn")
    return None if value in ("", "0") else value


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _setting():
    """What a decision holds for (see the module's docstring), as a JSON-able dict."""
    if not _fixed:
        import numpy
        from .. import __version__
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sources = max((os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(package, "**", "*.py"), recursive=True)),
                      default=0)
        _fixed.append({"cpu": _cpu_model(), "machine": platform.machine(), "python": platform.python_version(),
                       "gpurnn": __version__, "sources": sources, "numpy": numpy.__version__})
    torch = sys.modules.get("torch")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(_fixed[0], cpus=cpus, env=[os.environ.get(name) for name in ENVIRONMENT],
                torch=None if torch is None else [torch.__version__, torch.get_num_threads(),
                                                  torch._C._get_mkldnn_enabled()])


def _path():
    where = directory()
    if where is None:
        return None
    digest = hashlib.sha256(json.dumps(_setting(), sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(where, f"routes-{digest}.json")


def _read(path):
    try:
        with open(path) as f:
            content = json.load(f)
        return content if isinstance(content, dict) else {}
    except (OSError, ValueError):
        return {}   # none yet, or not ours to read: timed again, and written over


def load(kind, key):
    """(route, {route: seconds}) kept for key of this kind ("layer", "gemm") in this setting, or None."""
    path = _path()
    if path is None:
        return None
    if path not in _files:
        _files[path] = _read(path)
    entry = _files[path].get(kind, {}).get(repr(key))
    if not (isinstance(entry, list) and len(entry) == 3) or time.time() - entry[2] > MAX_AGE:
        return None
    return entry[0], dict(entry[1])


def save(kind, key, route, times):
    """Keeps a decision made in quiet for the next processes of this setting."""
    path = _path()
    if path is None:
        return
    content = _read(path)   # as other processes left it
    content.setdefault(kind, {})[repr(key)] = [route, times, time.time()]
    _files[path] = content
    temporary = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(handle, "w") as f:
            json.dump(content, f)
        os.replace(temporary, path)
    except OSError as err:
        with contextlib.suppress(OSError, TypeError):
            os.unlink(temporary)
        if not _warned:
            _warned.append(err)
            warnings.warn(f"gpurnn: route decisions not kept in {os.path.dirname(path)} ({err}); set "
                          "GPURNN_CACHE_DIR to a writable directory, or to '' to keep none", RuntimeWarning,
                          stacklevel=2)
