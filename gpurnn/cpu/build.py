"""Finds, or builds, caches and loads, the compiled LSTM and GRU steps (step.c) for the numpy backend.

The NumPy LSTM loop is bound by the per-call cost of a dozen ufuncs a step, not by
arithmetic; one C pass over the gates does the same work in a fraction of the time
(profiling/results/cpu/engine_vs_torch.md). step.c is plain C with no library calls.

Where it comes from, in order:
1. prebuilt: setup.py compiles it into the package (gpurnn/cpu/_step*.so, .pyd on Windows)
   when the wheel is built, so installing from a wheel needs no compiler;
2. built here at first use (Linux, a C compiler) where the install had none, into
   GPURNN_CACHE_DIR (default ~/.cache/gpurnn; where that cannot be written, into a temporary
   directory for this process only), named by a hash of the source and the compiler command;
3. else the NumPy loop, which gives the same results to float32 rounding.
GPURNN_CPU_KERNEL=0 runs the NumPy loop, =build skips the prebuilt library (tests, benchmarks).
`status()` says which runs. Both builds use the same flags: one copy of the loops per vector
width (AVX-512, AVX2, baseline x86-64), picked when the library loads.
"""
import ctypes
import functools
import hashlib
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..checks import check_choice

SOURCE = Path(__file__).with_name("step.c")
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared",
         "-Wl,-z,defs"]   # an undefined symbol fails the build, not the load
LIBS = ["-lm"]   # fmaf, where a CPU has no FMA instruction (step.c)
CHOICES = ("1", "0", "build")   # GPURNN_CPU_KERNEL: prebuilt else build, off, build only


def cache_root():
    """gpurnn's cache directory: GPURNN_CACHE_DIR, else $XDG_CACHE_HOME/gpurnn or ~/.cache/gpurnn (RuntimeError: no
    home directory)."""
    return Path(os.environ.get("GPURNN_CACHE_DIR") or
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpurnn")


def _cache_dir():
    """(cache_root(), False), or (a new temporary directory, True) where that cannot be written."""
    try:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=root).close()
        return root, False
    except (OSError, RuntimeError):   # RuntimeError: no home directory
        return Path(tempfile.mkdtemp(prefix="gpurnn-")), True


def _compiler_error(err):
    """The compiler's or linker's first line that says what went wrong (collect2's line only says
    that the link failed)."""
    lines = [line for line in (err.stderr or "").splitlines() if line.strip() and "collect2" not in line]
    said = [line for line in lines if any(w in line for w in ("error", "cannot", "undefined"))]
    return (said or lines or [str(err)])[0].strip()


def _build(directory):
    """Path of the compiled library in directory (built now if not there yet); raises OSError or
    subprocess.CalledProcessError."""
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    if cc[0] is None:
        raise OSError("no C compiler found (set CC, or install gcc)")
    # a cache shared between machines (a cluster's home directory) keeps one library per kind of machine
    machine = " ".join([platform.machine(), *platform.libc_ver()])
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(cc + FLAGS + LIBS).encode(),
                                     machine.encode()])).hexdigest()[:16]
    target = directory / f"cpu_step-{key}.so"   # the name predates the gpurnn/cpu package
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".so")
        os.close(fd)
        try:
            subprocess.run([*cc, *FLAGS, str(SOURCE), "-o", tmp, *LIBS], check=True, capture_output=True,
                           text=True, timeout=120)
            os.replace(tmp, target)   # atomic: processes building at once each install a whole file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def prebuilt():
    """Path of the step compiled with the package (setup.py), or None."""
    spec = importlib.util.find_spec(f"{__package__}._step")
    return spec.origin if spec is not None and spec.origin else None


def _open(path):
    lib = ctypes.CDLL(str(path))   # stays mapped after its file is removed
    ptr, long = ctypes.c_void_p, ctypes.c_long
    lib.lstm_forward_step.argtypes = [ptr, ptr, ptr, long, ptr, long, long]
    lib.lstm_backward_step.argtypes = [ptr, ptr, ptr, ptr, ptr, long, long]
    lib.gru_forward_step.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, long, long, long]
    lib.gru_backward_step.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, long, long, long]
    lib.tanh_array.argtypes = lib.sigmoid_of_negated_array.argtypes = [ptr, ptr, long]
    for name in ("lstm_forward_step", "lstm_backward_step", "gru_forward_step", "gru_backward_step", "tanh_array",
                 "sigmoid_of_negated_array"):
        getattr(lib, name).restype = None
    lib.step_source_hash.restype = ctypes.c_char_p
    return lib


def source_hash():
    """The hash setup.py builds the prebuilt library with (step_source_hash in step.c; setup.py
    computes it the same way, as it cannot import the package it builds)."""
    return "h" + hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


@functools.cache
def _load():
    """(library, where it came from) or (None, why the NumPy loop runs)."""
    choice = os.environ.get("GPURNN_CPU_KERNEL") or "1"
    check_choice("GPURNN_CPU_KERNEL", choice, CHOICES)
    if choice == "0":
        return None, "disabled by GPURNN_CPU_KERNEL=0"
    path = prebuilt() if choice == "1" else None
    if path is not None:
        try:
            lib = _open(path)
        except (OSError, AttributeError) as err:
            return None, f"loading the prebuilt {Path(path).name} failed: {err}"
        if lib.step_source_hash().decode() == source_hash():
            return lib, "prebuilt with the package"
        # step.c changed since the install (an editable checkout): build the current one instead
    if platform.system() != "Linux":
        return None, (f"{'stale' if path else 'not'} prebuilt in this install, and built at first use only on "
                      f"Linux (this is {platform.system()})")
    directory, temporary = _cache_dir()
    try:
        lib = _open(_build(directory))
    except subprocess.CalledProcessError as err:
        return None, f"compiling {SOURCE.name} failed: {_compiler_error(err)}"
    except subprocess.TimeoutExpired as err:
        return None, f"compiling {SOURCE.name} failed: {err}"
    except (OSError, AttributeError) as err:   # AttributeError: a library without our functions
        return None, f"building or loading {SOURCE.name} failed: {err}"
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return lib, "built here at first use"


def library():
    """The loaded step library, or None where there is none or it is disabled."""
    return _load()[0]


def status():
    """None when the compiled step is in use, else why the NumPy loop runs instead."""
    lib, said = _load()
    return None if lib is not None else said


def describe():
    """Which LSTM and GRU steps run on the CPU, in words (for `gpurnn info` and benchmark headers)."""
    lib, said = _load()
    return f"compiled (gpurnn/cpu/step.c, {said})" if lib is not None else f"the NumPy loop ({said})"
