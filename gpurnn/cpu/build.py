"""Builds, caches and loads the compiled LSTM step (step.c) for the numpy backend, on first use.

The NumPy LSTM loop is bound by the per-call cost of a dozen ufuncs a step, not by
arithmetic; one C pass over the gates does the same work in a fraction of the time
(profiling/results/cpu/engine_vs_torch.md). It needs a C compiler and glibc's vector maths
library (libmvec, x86-64 Linux): without them, or with GPURNN_CPU_KERNEL=0, the LSTM runs
the NumPy loop, which gives the same results to float32 rounding. `status()` says which.

The library is compiled once per machine into GPURNN_CACHE_DIR (default
~/.cache/gpurnn; where that cannot be written, into a temporary directory for this process
only) with -march=native: the file name hashes the source, the compiler command, the CPU's
feature flags and the C library's version, so a cache shared between machines never runs
code built for another.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("step.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared",
         "-Wl,-z,defs"]   # a symbol libmvec lacks fails the build, not the load
LIBS = ["-lmvec", "-lm"]


def _machine_identity():
    """What code built with -march=native depends on: the CPU's feature flags and the C library."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        cpu = platform.processor() + platform.machine()
    return cpu + " ".join(platform.libc_ver())


def _cache_dir():
    """(GPURNN_CACHE_DIR or ~/.cache/gpurnn, False), or (a new temporary directory, True)
    where that cannot be written."""
    try:
        root = Path(os.environ.get("GPURNN_CACHE_DIR") or
                    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpurnn")
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
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(cc + FLAGS + LIBS).encode(),
                                     _machine_identity().encode()])).hexdigest()[:16]
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


@functools.cache
def _load():
    """(library, None) or (None, why it is not usable)."""
    if os.environ.get("GPURNN_CPU_KERNEL", "1") == "0":
        return None, "disabled by GPURNN_CPU_KERNEL=0"
    if platform.system() != "Linux":
        return None, f"needs glibc's libmvec (Linux), this is {platform.system()}"
    directory, temporary = _cache_dir()
    try:
        path = _build(directory)
        lib = ctypes.CDLL(str(path))   # stays mapped after its file is removed
        ptr, long = ctypes.c_void_p, ctypes.c_long
        lib.lstm_forward_step.argtypes = [ptr, ptr, ptr, long, ptr, long, long]
        lib.lstm_backward_step.argtypes = [ptr, ptr, ptr, ptr, ptr, long, long]
        lib.lstm_forward_step.restype = lib.lstm_backward_step.restype = None
    except subprocess.CalledProcessError as err:
        return None, f"compiling {SOURCE.name} failed: {_compiler_error(err)}"
    except subprocess.TimeoutExpired as err:
        return None, f"compiling {SOURCE.name} failed: {err}"
    except (OSError, AttributeError) as err:   # AttributeError: a library without our functions
        return None, f"building or loading {SOURCE.name} failed: {err}"
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return lib, None


def library():
    """The loaded cpu_step library, or None where it cannot be built or is disabled."""
    return _load()[0]


def status():
    """None when the compiled step is in use, else why the NumPy loop runs instead."""
    return _load()[1]


def describe():
    """Which LSTM step runs on the CPU, in words (for `gpurnn info` and benchmark headers)."""
    why = status()
    return "compiled (gpurnn/cpu/step.c)" if why is None else f"the NumPy loop ({why})"
