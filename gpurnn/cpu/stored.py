"""Route decisions kept between processes (timed.py), so that a program's first call of a layer shape does not time
its routes again in every run: a 2-layer bidirectional LSTM's first forward+backward at B=16 T=64 H=768 spent 8-10 s
timing on an AMD EPYC (torch.nn's first call: 0.5-1.9 s; gpurnn's with the decisions kept: 0.55-0.65 s).

A decision whose timing ran in quiet (timed.decide) is written to a JSON file in routes/ of gpurnn's cache directory
(GPURNN_CACHE_DIR, else $XDG_CACHE_HOME/gpurnn or ~/.cache/gpurnn, where the compiled step is kept too;
GPURNN_ROUTE_CACHE=0: none kept nor read), one file for each setting it holds for: the CPU model, the CPUs the
process may run on, torch's thread count, oneDNN switch and float32 matmul precision, the environment's thread, BLAS,
oneDNN and ATen variables, GPURNN_GEMM and GPURNN_CPU_KERNEL, the versions of Python, gpurnn, torch and NumPy, and
gpurnn's files (an edit of one, or a rebuilt step, times again). A later process takes a decision untimed once AGREED
quiet timings in a row, in different processes, made it: one timing's noise would otherwise hold for every process
(on that EPYC a GRU's timing once called a near tie where the engine took 0.53x torch's time in a rerun). A decision
older than MAX_AGE seconds is timed again, and files older than that are removed. A file replaces the last whole
(os.replace), so a reader never sees half of one; two processes writing at once may lose one's decision, which is
then timed again. What cannot be read as a decision is timed again.
"""
import contextlib
import glob
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time

from .. import backends
from ..checks import check_choice
from . import build

MAX_AGE = 7 * 24 * 3600.0
AGREED = 2
PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "ONEDNN_", "DNNL_", "ATEN_")
SETTINGS = {"GPURNN_GEMM": "auto", "GPURNN_CPU_KERNEL": "1"}   # gpurnn's variables that change a route's time
LEFT_BEHIND = 3600.0   # seconds after which a temporary file is a killed writer's
_files = {}     # path -> {kind: {repr(key): [route, {route: seconds}, unix time, timings in a row that agreed]}}
_fixed = []     # the parts of the setting that do not change while the process runs, once read
_said = []      # the one warning of a directory that could not be written
log = logging.getLogger("gpurnn")


def directory():
    """Where decisions are kept, or None (GPURNN_ROUTE_CACHE=0, or no home directory to keep them in)."""
    switch = backends.env("GPURNN_ROUTE_CACHE", "1")
    check_choice("GPURNN_ROUTE_CACHE", switch, ("1", "0"))
    if switch == "0":
        return None
    try:
        return str(build.cache_root() / "routes")
    except RuntimeError:   # (no home directory)
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _setting():
    """What a decision holds for (see the module's docstring), as JSON: the part fixed while the process runs, read
    once, and the rest."""
    if not _fixed:
        import numpy
        from .. import __version__
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        files = sorted((p, os.stat(p).st_mtime_ns) for pattern in ("*.py", "*.c", "*.so")
                       for p in glob.glob(os.path.join(package, "**", pattern), recursive=True))
        _fixed.append(json.dumps([_cpu_model(), platform.machine(), platform.python_version(), __version__, files,
                                  numpy.__version__]))
    torch = sys.modules.get("torch")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIXES)) + [
        backends.env(name, default) for name, default in SETTINGS.items()]   # (set to the default: as unset)
    return _fixed[0] + json.dumps([cpus, env, None if torch is None else [
        torch.__version__, torch.get_num_threads(), torch._C._get_mkldnn_enabled(),
        torch.get_float32_matmul_precision()]])


def _path():
    where = directory()
    if where is None:
        return None
    return os.path.join(where, f"routes-{hashlib.sha256(_setting().encode()).hexdigest()[:20]}.json")


def _read(path):
    try:
        with open(path) as f:
            content = json.load(f)
    except Exception:   # none yet, or not a JSON file of ours (even one nested past Python's recursion limit)
        return {}
    return content if isinstance(content, dict) else {}


def _decision(entry, routes):
    """(route, times, agreed) of a file's entry, or None where it is not one of a known route, times, an age within
    MAX_AGE and a count."""
    if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[1], dict)):
        return None
    route, times, made, agreed = entry
    numbers = all(type(t) in (int, float) for t in (*times.values(), made)) and type(agreed) is int
    if route not in routes or not numbers or set(times) - set(routes) or not 0 <= time.time() - made <= MAX_AGE:
        return None
    return route, dict(times), agreed


def load(kind, key, routes):
    """(route, {route: seconds}) kept for key of this kind ("layer", "gemm") in this setting, or None; routes: the
    names a decision of this kind may take here (a file's others are not read)."""
    path = _path()
    if path is None:
        return None
    if path not in _files:
        _files[path] = _read(path)
    kind_entries = _files[path].get(kind)
    kept = _decision(kind_entries.get(repr(key)), routes) if isinstance(kind_entries, dict) else None
    return kept[:2] if kept is not None and kept[2] >= AGREED else None


def save(kind, key, route, times, routes):
    """Keeps a decision made in quiet for the next processes of this setting, with the count of timings in a row
    that made it (routes: as for load)."""
    path = _path()
    if path is None:
        return
    content = _read(path)   # as other processes left it
    if not isinstance(content.get(kind), dict):
        content[kind] = {}
    last = _decision(content[kind].get(repr(key)), routes)
    agreed = last[2] + 1 if last is not None and last[0] == route else 1
    content[kind][repr(key)] = [route, times, time.time(), agreed]
    _files[path] = content
    temporary = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix="routes-", suffix=".tmp")
        with os.fdopen(handle, "w") as f:
            json.dump(content, f)
        os.chmod(temporary, 0o644)   # (mkstemp's 0600 would keep a shared directory's other users out)
        os.replace(temporary, path)
        temporary = None
        _remove_old(os.path.dirname(path))
    except OSError as err:   # (logged, not warned: a warnings filter of "error" would fail the caller's call)
        if not _said:
            _said.append(err)
            log.warning("gpurnn: CPU route decisions not kept in %s (%s); set GPURNN_CACHE_DIR to a writable "
                        "directory, or GPURNN_ROUTE_CACHE=0", os.path.dirname(path), err)
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _remove_old(where):
    """Files of settings no process wrote to for MAX_AGE (another torch, an edit of gpurnn), and temporary files a
    killed process left (LEFT_BEHIND)."""
    for path in glob.glob(os.path.join(where, "routes-*")):
        with contextlib.suppress(OSError):
            if time.time() - os.stat(path).st_mtime > (LEFT_BEHIND if path.endswith(".tmp") else MAX_AGE):
                os.unlink(path)
