"""The compiled LSTM step for the numpy backend (cpu_step.c), built on first use.

The NumPy LSTM loop is bound by the per-call cost of a dozen ufuncs a step, not by
arithmetic; one C pass over the gates does the same work in a fraction of the time
(profiling/results/cpu/engine_vs_torch.md). It needs a C compiler and glibc's vector maths
library (libmvec, x86-64 Linux): without them, or with GPURNN_CPU_KERNEL=0, the LSTM runs
the NumPy loop, which gives the same results to float32 rounding. `status()` says which.

The library is compiled once per machine into GPURNN_CACHE_DIR (default
~/.cache/gpurnn) with -march=native: the file name hashes the source, the flags and the
CPU's feature flags, so a cache shared between different machines never runs code built
for another CPU.
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

SOURCE = Path(__file__).with_name("cpu_step.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared"]
LIBS = ["-lmvec", "-lm"]


def _cpu_identity():
    """The CPU's feature flags (Linux), else what platform knows of it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor() + platform.machine()


def _cache_dir():
    root = os.environ.get("GPURNN_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                      Path.home() / ".cache") / "gpurnn"
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root)
        probe.close()
        return Path(root)
    except OSError:
        return Path(tempfile.mkdtemp(prefix="gpurnn-"))


def _build():
    """Path of the compiled library (built now if not cached); raises OSError or
    subprocess.CalledProcessError with the compiler's message."""
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    if cc[0] is None:
        raise OSError("no C compiler found (set CC, or install gcc)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(cc + FLAGS + LIBS).encode(),
                                     _cpu_identity().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"cpu_step-{key}.so"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
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
    try:
        lib = ctypes.CDLL(str(_build()))
    except subprocess.CalledProcessError as err:
        last_line = (err.stderr or "").strip().splitlines()[-1:]
        return None, f"compiling {SOURCE.name} failed: {last_line[0] if last_line else err}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"building {SOURCE.name} failed: {err}"
    ptr, long = ctypes.c_void_p, ctypes.c_long
    lib.lstm_forward_step.argtypes = [ptr, ptr, ptr, ptr, long, long, long]
    lib.lstm_backward_step.argtypes = [ptr, ptr, ptr, ptr, ptr, long, long, long, long, long]
    lib.lstm_forward_step.restype = lib.lstm_backward_step.restype = None
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
    return "compiled (gpurnn/cpu_step.c)" if why is None else f"the NumPy loop ({why})"
