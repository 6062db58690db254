"""argparse types for the commands' options: a bad value is argparse's one-line error naming the option;
and the checks that need more than the value (files, the environment), raising UsageError."""
import argparse
import contextlib
import math
import os
import tempfile
from pathlib import Path


def csv(kind, choices):
    def parse(value):
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, "
                                             f"got {value!r}")
        return items
    parse.__name__ = kind
    return parse


def integer_at_least(low, high=None, why=""):
    def parse(value):
        n = int(value)
        if n < low or high is not None and n > high:
            bound = f">= {low}" if high is None else f"in [{low}, {high}]{why}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        if n >= 2 ** 63:   # no tensor's size (torch's int64): an overflow deep inside torch
            raise argparse.ArgumentTypeError(f"expected an integer < 2**63, got {value}")
        return n
    parse.__name__ = "int"   # argparse's word for a value that is no integer at all
    return parse


positive, non_negative = integer_at_least(1), integer_at_least(0)
SEED = integer_at_least(0, 2 ** 32 - 1)   # NumPy's seeds (torch's go to 2^64 - 1)


def positive_float(value):
    """A float > 0, inf included (a clip norm of 0 zeroes every gradient, a negative one flips their sign)."""
    x = float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return x


def positive_finite(value):
    """A float > 0 and finite (a learning rate of inf makes every weight NaN)."""
    x = positive_float(value)
    if x == math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return x


class UsageError(Exception):
    """A bad value that only shows after parsing (a file's contents, a device, the environment): main() reports it
    as argparse's usage error, exit 2, like a value that failed to parse."""


def _cannot_write(folder):
    """Why no file can be made in the existing `folder`, or None: a real try (os.access says yes to root in /proc)."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        return f"cannot write in {folder}: {e.strerror}"
    return None


def check_out_folder(option, path):
    """A folder that can be made and written; made only when there is a file to save (a failed run leaves none)."""
    if not path:
        return
    folder = Path(os.path.abspath(path))
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    why = f"{existing} is not a folder" if not existing.is_dir() else _cannot_write(existing)
    if why:
        raise UsageError(f"{option}: expected a folder for the checkpoints, got {path!r} ({why})")


def check_out_file(option, path, suffix):
    """A `suffix` file in an existing, writable folder: checked before the work whose result it holds."""
    file = Path(os.path.abspath(path))
    if not path or path.endswith(os.sep) or file.suffix.lower() != suffix or file.is_dir():
        raise UsageError(f"{option}: expected a {suffix} file name, got {path!r}")
    if not file.parent.is_dir():
        raise UsageError(f"{option}: expected a file in an existing folder, got {path!r} (no folder {file.parent})")
    why = _cannot_write(file.parent) or (file.exists() and not os.access(file, os.W_OK) and f"cannot write {file}")
    if why:
        raise UsageError(f"{option}: expected a file that can be written, got {path!r} ({why})")


def read_text_file(option, path):
    """The file's text, strictly UTF-8 (errors="replace" trained on the replacement character, silently)."""
    file = Path(path)
    why = "no such file" if not file.exists() else "a directory" if file.is_dir() else \
        "not a regular file" if not file.is_file() else None
    if why is None:
        try:
            data = file.read_bytes()
            why = "empty" if not data else None
        except OSError as e:
            why = e.strerror
    if why:
        raise UsageError(f"{option}: expected a readable text file, got {path!r} ({why})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{option}: expected UTF-8 text, got {path!r} (byte {data[e.start]:#04x} at offset "
                         f"{e.start}: {e.reason})") from None
    # a byte order mark is no character of the text; universal newlines as Path.read_text gave them
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _too_big(options, values, what, sizes):
    listed = lambda items: " and ".join([", ".join(map(str, items[:-1])), str(items[-1])] if items[1:] else
                                        map(str, items))
    return UsageError(f"{listed(options)}: expected {'a size' if len(options) == 1 else 'sizes'} whose {what}, "
                      f"got {listed(values)} ({sizes})")


@contextlib.contextmanager
def must_fit(options, values, what, sizes):
    """A failed allocation inside (MemoryError, or torch's RuntimeError on the CPU or CUDA) as a usage error naming
    the options that set its size, not an allocator's traceback; what: what must fit where, sizes: how big it is."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not (isinstance(e, MemoryError) or "memory" in str(e).lower()):
            raise
        raise _too_big(options, values, what, sizes) from None


def memory_of(device):
    """The bytes of memory on a torch device: a CUDA GPU's, else this machine's (None where unknown)."""
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):   # (Windows has no sysconf)
        return None


def check_fits(options, values, what, n_bytes, device):
    """Options whose sizes make `what` (n_bytes, a lower bound of it) more than the device's memory: a usage error
    before any work (an allocator's traceback came, for the evaluation batch after the whole training)."""
    total = memory_of(device)
    if total is not None and n_bytes > total:
        raise _too_big(options, values, f"{what} fit in memory on {device}",
                       f"{n_bytes / 2 ** 30:.3g} GiB at least, of {total / 2 ** 30:.3g} GiB")


def torch_device(option, value, rank=0):
    """The torch device `value` names (auto: process `rank`'s GPU if there is one, else the CPU)."""
    import torch

    if value == "auto":
        return torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else \
            torch.device("cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"{option}: expected auto, cpu, cuda or cuda:N, got {value!r}")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise UsageError(f"{option} {value}: this machine has {count} CUDA device(s)")
    return device


def resolve_backend(backend, on_gpu):
    """backends.resolve, a failure a UsageError naming --backend, or GPURNN_BACKEND where auto took its value."""
    from . import backends

    try:
        return backends.resolve(backend, on_gpu)
    except (ValueError, RuntimeError) as e:
        env = (os.environ.get("GPURNN_BACKEND") or "auto") if backend == "auto" else "auto"
        source = f"--backend {backend}" if env == "auto" else f"GPURNN_BACKEND={env} (--backend auto)"
        raise UsageError(str(e) if str(e).startswith("GPURNN_BACKEND:") else f"{source}: {e}") from None
