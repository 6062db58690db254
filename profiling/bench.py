"""Benchmark gpurnn against torch.nn (cuDNN on a GPU), a plain PyTorch cell loop and torch.compile.

Sweeps cell x dtype x B x T x H, forward and forward+backward, and writes into --out
(default profiling/results/<device name>/): NAME.csv (every measurement), NAME.md
(tables) and NAME_*.png (time vs T, vs H, vs B; speedup over the baseline).
Every ratio divides a time by the baseline's time for the same configuration,
measured in the same run: torch.nn for RNN/LSTM/GRU, the loop for Jordan.

    python profiling/bench.py --quick                        # small set, < 5 minutes
    python profiling/bench.py --device cuda --cells lstm --hidden 256,768 --steps 1024
    python profiling/bench.py --preset engine-vs-torch       # issue 2's CPU table
    python profiling/bench.py --preset single-step           # T=1 B=1 calls, without and with gradient (issue 14)

See profiling/README.md for what each column means.
"""
import argparse
import contextlib
import csv
import ctypes
import datetime
import gc
import itertools
import os
import platform
import re
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

# every benchmark times the CPU routes itself: a decision kept by an earlier process (gpurnn/cpu/stored.py) would make
# its route a past run's (the variable set: the caller's choice)
os.environ.setdefault("GPURNN_ROUTE_CACHE", "0")

import numpy as np
import torch

from gpurnn import buffers as gpurnn_buffers

if __package__:
    from . import plots, providers
else:
    import plots
    import providers

FULL = {"batch": (1, 16, 64, 256), "steps": (64, 1024, 8192), "hidden": (64, 256, 768, 2048)}
QUICK = {"cpu": {"batch": (16,), "steps": (32, 128), "hidden": (32, 128)},
         "cuda": {"batch": (64,), "steps": (64, 512), "hidden": (64, 256)}}
PRESETS = {
    # Issue 2: numpy backend vs torch's own CPU modules, forward+backward.
    "engine-vs-torch": {"device": "cpu", "cells": ("rnn", "lstm", "gru"), "batch": (32,), "steps": (128,),
                        "hidden": (128,), "input": 64, "dtype": ("float32",),
                        "providers": ("gpurnn-numpy", "torch.nn"), "modes": ("fwdbwd",),
                        "name": "engine_vs_torch", "repeats": 31, "budget_s": 120.0,
                        "required_ratio": 1.5, "target_ratio": 1.0},
    # Issue 14: one step (autoregressive generation; with autograd, a decoder stepped by hand), per-call overhead.
    "single-step": {"device": "cpu", "cells": ("rnn", "lstm", "gru", "rnncell", "lstmcell", "grucell"),
                    "batch": (1,), "steps": (1,),
                    "hidden": (128,), "input": 128, "dtype": ("float32",),
                    "providers": ("gpurnn-numpy", "torch.nn"), "modes": ("fwd", "fwdbwd"),
                    "name": "single_step", "repeats": 301, "budget_s": 60.0,
                    "required_ratio": 1.5, "target_ratio": 1.0},
    # gpurnn's modules under torch.compile (the layer's route taken in its custom op) against eager and torch.nn
    # (whose RNN modules torch.compile leaves to eager Python: a graph break), at small and medium shapes.
    "compiled": {"device": "cpu", "cells": ("rnn", "lstm", "gru"), "batch": (4, 32), "steps": (20, 128),
                 "hidden": (64,), "input": 32, "dtype": ("float32",),
                 "providers": ("gpurnn-compiled", "gpurnn-numpy", "torch.nn"), "modes": ("fwd", "fwdbwd"),
                 "name": "compiled", "repeats": 51, "budget_s": 60.0},
}
MODES = ("fwd", "fwdbwd")
COMPILING = ("compile", "gpurnn-compiled")   # providers whose first call of a shape runs torch.compile
BURST_S = 0.002   # a CPU sample times calls back to back for about this long (a call longer than it: one call)
COLUMNS = ("run_id", "device", "cell", "mode", "dtype", "batch", "steps", "hidden", "input", "output",
           "provider", "baseline", "status", "median_ms", "q20_ms", "q80_ms", "per_step_us", "peak_mem_mb",
           "ratio", "max_abs_diff", "samples", "note")


def _ints(text):
    return tuple(int(v) for v in text.split(","))


def _names(choices):
    def parse(text):
        names = tuple(text.split(","))
        for n in names:
            if n not in choices:
                raise argparse.ArgumentTypeError(f"expected names from {choices}, got {n!r}")
        return names
    return parse


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p.add_argument("--preset", choices=tuple(PRESETS), help="a fixed table (its values fill unset options)")
    p.add_argument("--quick", action="store_true", help="a small set that runs in under 5 minutes")
    p.add_argument("--cells", type=_names(providers.CELLS + tuple(providers.STEP_CELLS)), default=providers.CELLS)
    p.add_argument("--batch", type=_ints, help=f"B values (default {FULL['batch']})")
    p.add_argument("--steps", type=_ints, help=f"T values (default {FULL['steps']})")
    p.add_argument("--hidden", type=_ints, help=f"H values (default {FULL['hidden']})")
    p.add_argument("--input", type=int, default=0, help="input size I (default: I = H)")
    p.add_argument("--output", type=int, default=0, help="Jordan output size O (default: O = H)")
    p.add_argument("--dtype", type=_names(tuple(providers.DTYPES)), default=("float32",))
    p.add_argument("--providers", type=_names(providers.PROVIDERS["cpu"] + providers.PROVIDERS["cuda"]),
                   help="default: every provider of the device; the baseline is always added")
    p.add_argument("--modes", type=_names(MODES), default=MODES)
    p.add_argument("--packed", action="store_true", help="PackedSequence input (torch.nn and gpurnn only): lengths "
                   "uniform in 1..T, the first T, unsorted; outputs padded back")
    p.add_argument("--repeats", type=int, default=21, help="CPU: timed samples per provider (alternating)")
    p.add_argument("--budget-s", type=float, help="CPU: fewer repeats (>= 3) past this per config and mode "
                   "(default 30; 6 with --quick)")
    p.add_argument("--settle-s", type=float, default=1.0,
                   help="CPU: wait up to this for idle threads before each sample (0: no wait)")
    p.add_argument("--warmup-ms", type=float, default=25, help="GPU: do_bench warmup")
    p.add_argument("--rep-ms", type=float, default=100, help="GPU: do_bench measuring time")
    p.add_argument("--compile-limit-s", type=float, default=300, help="give up on a torch.compile after this")
    p.add_argument("--mem-limit-gb", type=float, help="skip configs estimated above this (default: 80%% of free)")
    p.add_argument("--required-ratio", type=float, help="mark gpurnn rows whose ratio is above this as failing")
    p.add_argument("--target-ratio", type=float, help="mark gpurnn rows whose ratio is at or below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="default profiling/results/<device name>/")
    p.add_argument("--name", default="bench", help="file stem of the CSV, markdown and PNGs")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv):
    p = parser()
    args = p.parse_args(argv)
    if args.preset:   # the preset's values replace the defaults; options given still win
        p.set_defaults(**PRESETS[args.preset])
        args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: expected a CUDA GPU visible to torch for 'cuda', got none (use --device cpu)")
    if args.budget_s is None:
        args.budget_s = 6.0 if args.quick else 30.0
    grid = QUICK[args.device] if args.quick else FULL
    for dim in ("batch", "steps", "hidden"):
        if getattr(args, dim) is None:
            setattr(args, dim, grid[dim])
    for dim in ("batch", "steps", "hidden", "input", "output", "repeats"):
        values = getattr(args, dim)
        if min(values if isinstance(values, tuple) else (values,)) < (0 if dim in ("input", "output") else 1):
            p.error(f"--{dim}: expected values >= {0 if dim in ('input', 'output') else 1}, got {values}")
    return args


def device_name(device):
    """The results folder name: 'cpu', or the GPU's name in lower case with dashes."""
    if device == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def device_description(device):
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, CUDA {torch.version.cuda}"
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


# ---- measuring -------------------------------------------------------------------------------

class CompileTimeout(Exception):
    pass


class TimeLimit:
    """Raise CompileTimeout after seconds (main thread on Unix; elsewhere no limit).

    `expired` tells afterwards, since torch.compile re-raises what interrupts it as its own error.
    """

    def __init__(self, seconds):
        usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        self.seconds = seconds if usable else None
        self.expired = False

    def _expire(self, signum, frame):
        self.expired = True
        raise CompileTimeout(f"torch.compile took longer than {self.seconds:g} s (--compile-limit-s)")

    def __enter__(self):
        if self.seconds is not None:
            self.old = signal.signal(signal.SIGALRM, self._expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.seconds is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} missing from /proc/self/status")


def peak_memory_mb(fn, device):
    """Peak memory one call adds: CUDA allocator peak (CuPy routed through it), else peak RSS delta."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        # Hand freed heap pages back first, so reused ones count again when touched; the same for
        # gpurnn's pool of idle buffers (they would otherwise be resident before the call).
        gpurnn_buffers.clear()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")    # resets the peak (VmHWM) to the current RSS
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) / 1024
    except OSError:
        fn()
        return float("nan")


def route_cupy_through_torch():
    """Let CuPy allocate from torch's caching allocator, so max_memory_allocated sees gpurnn's buffers."""
    from gpurnn.arrays import cupy_or_none
    cp = cupy_or_none()
    if cp is None:
        return

    def malloc(size, device_id):
        return torch.cuda.caching_allocator_alloc(size, device_id, torch.cuda.current_stream(device_id)) if size else 0

    def free(ptr, device_id):
        if ptr:
            torch.cuda.caching_allocator_delete(ptr)
    cp.cuda.set_allocator(cp.cuda.memory.PythonFunctionAllocator(malloc, free).malloc)


def settle(max_s, slice_s=0.005):
    """Wait until this process's threads are idle (< 10% of a core over a slice), at most max_s.

    NumPy's OpenBLAS workers spin ~0.1 s after a call and torch's OpenMP workers
    a few ms; measured here, a torch call made while OpenBLAS still spins took 2-5x
    longer. Waiting them out keeps one library's idle threads out of the other's time.
    """
    end = time.perf_counter() + max_s
    while time.perf_counter() < end:
        cpu = time.process_time()
        time.sleep(slice_s)
        if time.process_time() - cpu < 0.1 * slice_s:
            return


def time_cpu(fns, repeats, settle_s, calls=1):
    """{name: ms per call samples}; providers alternate in a rotating order.

    Each sample: settle, one untimed call (wakes this library's threads), `calls` timed
    calls back to back (their mean). So each library is timed in its own warm state, and
    slow drifts of the machine's load fall on all providers alike. Calls of tens of us
    need a burst: one call timed after the settle's sleep varied 2x from run to run on
    an AMD EPYC.
    """
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            settle(settle_s)
            fns[name]()
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            samples[name].append((time.perf_counter() - t0) / calls)
    return {name: np.array(s) * 1e3 for name, s in samples.items()}


def time_cuda(fn, warmup_ms, rep_ms):
    from triton.testing import do_bench
    return np.array(do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8]))


# ---- one run ---------------------------------------------------------------------------------

def configs(args):
    for cell, dtype, B, T, H in itertools.product(args.cells, args.dtype, args.batch, args.steps, args.hidden):
        yield providers.Config(cell, B, T, H, args.input or H, args.output or H, dtype, args.device, args.packed)


def provider_list(args, cell):
    chosen = args.providers or providers.DEFAULT_PROVIDERS[args.device]
    if args.quick and not args.providers:   # compiling would take most of a short run
        chosen = [p for p in chosen if p not in COMPILING]
    base = providers.baseline(cell)
    return [base] + [p for p in chosen if p != base]


def _failure(err):
    """(status, note) for a provider that raised: 'oom' or 'error', and the message on one line."""
    text = " ".join(str(err).split())
    oom = isinstance(err, MemoryError) or "out of memory" in text.lower()
    return ("oom" if oom else "error"), f"{type(err).__name__}: {text[:200]}"


def _skip_reason(p, cfg, args, disabled):
    reason = disabled.get(p) or providers.unavailable(p, cfg)
    need_gb = providers.estimated_bytes(cfg) / 2**30
    if reason is None and need_gb > args.mem_limit_gb:
        reason = f"estimated {need_gb:.1f} GiB > {args.mem_limit_gb:.1f} GiB (--mem-limit-gb)"
    return reason


def _record_failure(row, err, cfg):
    row["status"], row["note"] = _failure(err)
    if cfg.device == "cuda":
        torch.cuda.empty_cache()


def warm_up(p, fn, cfg, args, row, disabled):
    """First call (compiles; time-limited for torch.compile), then a call measuring peak memory.

    Returns a sample of the forward output (first 64 steps and the last) for the sanity diff,
    or None; sets row["status"] and leaves fn out of the timing if anything fails.
    """
    limit = TimeLimit(args.compile_limit_s if p in COMPILING else None)
    try:
        t0 = time.perf_counter()
        with limit:
            out = fn()
            if cfg.device == "cuda":
                torch.cuda.synchronize()
        if p in COMPILING:
            row["note"] = f"first call {time.perf_counter() - t0:.1f} s (compiles each new shape)"
        sample = None if out is None else torch.cat([out[:64], out[-1:]]).detach().double().cpu()
        row["peak_mem_mb"] = peak_memory_mb(fn, cfg.device)   # (its own collections and resets: about 0.1 s)
        t0 = time.perf_counter()
        fn()
        row["call_s"] = time.perf_counter() - t0   # a warm call: sizes the CPU repeats and bursts
        return sample
    except Exception as err:   # recorded in the table; the sweep goes on
        _record_failure(row, err, cfg)
        if limit.expired:   # torch.compile's state is not to be trusted after an interrupt
            row["status"], row["note"] = "timeout", f"torch.compile took over {args.compile_limit_s:g} s"
            disabled[p] = f"an earlier torch.compile took over {args.compile_limit_s:g} s"
        return None


def time_all(fns, rows, cfg, args):
    """Median and 20%/80% quantiles (ms) of each warm provider into its row."""
    if cfg.device == "cpu":
        calls = max(1, int(BURST_S / max(rows[p]["call_s"] for p in fns)))   # the same burst for every provider
        per_repeat = sum((1 + calls) * rows[p]["call_s"] + min(args.settle_s, 0.15) for p in fns)
        repeats = max(3, min(args.repeats, int(args.budget_s / per_repeat)))
        times = time_cpu(fns, repeats, args.settle_s, calls)
        stats = {p: (np.median(t), np.quantile(t, 0.2), np.quantile(t, 0.8), len(t)) for p, t in times.items()}
    else:
        stats = {}
        for p, fn in fns.items():
            try:
                stats[p] = tuple(time_cuda(fn, args.warmup_ms, args.rep_ms)) + (None,)
            except Exception as err:
                _record_failure(rows[p], err, cfg)
    for p, (med, q20, q80, n) in stats.items():
        rows[p].update(median_ms=float(med), q20_ms=float(q20), q80_ms=float(q80), samples=n,
                       per_step_us=float(med) * 1e3 / cfg.steps)


def measure_config(cfg, args, disabled, base_row):
    """Rows for every provider and mode of cfg; ratios against the baseline measured here."""
    names = provider_list(args, cfg.cell)
    rows = {(p, m): dict(base_row, provider=p, mode=m, status="ok", note="") for p in names for m in args.modes}
    runners = {}
    for p in names:
        reason = _skip_reason(p, cfg, args, disabled)
        if reason is None:
            try:
                runners[p] = providers.build(p, cfg, args.seed)
            except Exception as err:
                for m in args.modes:
                    _record_failure(rows[p, m], err, cfg)
        else:
            for m in args.modes:
                rows[p, m]["status"], rows[p, m]["note"] = "skipped", reason
    for m in args.modes:
        fns, outputs = {}, {}
        for p, runner in runners.items():
            row, fn = rows[p, m], getattr(runner, m)
            if p in disabled:
                row["status"], row["note"] = "skipped", disabled[p]
            if row["status"] == "ok":
                outputs[p] = warm_up(p, fn, cfg, args, row, disabled)
                if row["status"] == "ok":
                    fns[p] = fn
        time_all(fns, {p: rows[p, m] for p in fns}, cfg, args)
        base, base_out = rows[names[0], m], outputs.get(names[0])
        for p in names:
            row = rows[p, m]
            row.pop("call_s", None)
            if row.get("median_ms") is not None and base.get("median_ms") is not None:
                row["ratio"] = row["median_ms"] / base["median_ms"]
            if m == "fwd" and outputs.get(p) is not None and base_out is not None:
                row["max_abs_diff"] = float((outputs[p] - base_out).abs().max())
    return list(rows.values())


def run(args, on_config=None):
    """Measure everything args selects; returns the rows (dicts keyed by COLUMNS).

    on_config(rows so far) runs after each configuration (main writes the tables
    there, so a run cut short still leaves what it measured).
    """
    if args.device == "cuda":
        route_cupy_through_torch()
    if args.mem_limit_gb is None:
        if args.device == "cuda":
            free = torch.cuda.mem_get_info()[0]
        else:
            free = _available_ram_bytes()
        args.mem_limit_gb = 0.8 * free / 2**30
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    cfgs = list(configs(args))
    disabled, rows = {}, []
    from tqdm import tqdm
    for cfg in tqdm(cfgs, desc="bench", unit="config", disable=args.no_progress, file=sys.stderr):
        base_row = {"run_id": run_id, "device": device_name(cfg.device), "cell": cfg.cell, "dtype": cfg.dtype,
                    "batch": cfg.batch, "steps": cfg.steps, "hidden": cfg.hidden, "input": cfg.input,
                    "output": cfg.output if cfg.cell == "jordan" else None,
                    "baseline": providers.baseline(cfg.cell)}
        rows += measure_config(cfg, args, disabled, base_row)
        gc.collect()
        if on_config is not None:
            on_config(rows)
    return rows


def _available_ram_bytes():
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * 2**30   # when the OS does not say


# ---- writing ---------------------------------------------------------------------------------

def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k]
                        for k in COLUMNS})


def _cell_text(row):
    if row["status"] != "ok":
        return row["status"]
    return f"{row['median_ms']:.3g} [{row['q20_ms']:.3g}, {row['q80_ms']:.3g}]"


def markdown(rows, args, meta):
    lines = [f"# gpurnn benchmark: {meta['device']}", "",
             f"- date (UTC): {meta['date']}; run {rows[0]['run_id'] if rows else '-'}",
             f"- versions: {meta['versions']}",
             f"- machine load: {meta['load']}",
             f"- LSTM and GRU steps on the CPU (float32): {meta['cpu_step']}",
             f"- layer route on the CPU (torch front end): {meta['layer_route']}",
             f"- GEMM route on the CPU (torch front end, engine layers): {meta['gemm_route']}",
             f"- {meta['openblas_env']}",
             f"- input: {'packed (lengths uniform in 1..T, the first T; unsorted)' if args.packed else 'padded'}",
             f"- command: `{meta['command']}`",
             "- times in ms: median [20%, 80% quantile]; ratio = time / baseline time of the same "
             "configuration in this run (below 1: faster than the baseline)", ""]
    for mode in args.modes:
        mode_rows = [r for r in rows if r["mode"] == mode]
        names = list(dict.fromkeys(r["provider"] for r in mode_rows))
        title = {"fwd": "Forward (no autograd)", "fwdbwd": "Forward + backward"}[mode]
        lines += [f"## {title}", ""]
        head = ["cell", "dtype", "B", "T", "H", "I", "baseline"]
        for n in names:
            head += [f"{n} ms", f"{n} ratio"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        groups = {}
        for r in mode_rows:
            groups.setdefault((r["cell"], r["dtype"], r["batch"], r["steps"], r["hidden"], r["input"]), {})[r["provider"]] = r
        for key, by_provider in groups.items():
            cells = [str(v) for v in key] + [next(iter(by_provider.values()))["baseline"]]
            for n in names:
                r = by_provider.get(n)
                cells += ["", ""] if r is None else [_cell_text(r), "" if r.get("ratio") is None else f"{r['ratio']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += verdicts(mode_rows, args)
    notes = sorted({f"{r['provider']}: {r['status']}: {r['note']}" for r in rows if r["status"] != "ok"})
    if notes:
        lines += ["## Not measured", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Per-step latency (µs), peak memory (MB) and max |y - y_baseline| are in the CSV.", ""]
    return "\n".join(lines)


def verdicts(rows, args):
    """Lines judging gpurnn's ratios against --required-ratio / --target-ratio."""
    if args.required_ratio is None and args.target_ratio is None:
        return []
    out = []
    for r in rows:
        if not r["provider"].startswith("gpurnn") or r.get("ratio") is None:
            continue
        parts = []
        if args.required_ratio is not None:
            parts.append(f"required <= {args.required_ratio:g}: {'pass' if r['ratio'] <= args.required_ratio else 'FAIL'}")
        if args.target_ratio is not None:
            parts.append(f"target <= {args.target_ratio:g}: {'met' if r['ratio'] <= args.target_ratio else 'not met'}")
        out.append(f"- {r['cell']} B={r['batch']} T={r['steps']} H={r['hidden']}: {r['provider']} / "
                   f"{r['baseline']} = {r['ratio']:.3f}; " + "; ".join(parts))
    return out + [""]


def _load():
    return "{:.2f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else "?"


def metadata(args, argv, load_before):
    import gpurnn
    from gpurnn import cpu
    from gpurnn.cpu import gemm, layer
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"numpy {np.__version__}",
                f"gpurnn {getattr(gpurnn, '__version__', '?')}"]
    with contextlib.suppress(ImportError):
        import triton
        versions.append(f"triton {triton.__version__}")
    return {"device": device_description(args.device),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "versions": ", ".join(versions),
            "load": f"{load_before} at the start, {_load()} at the end (1-minute load average; "
                    f"{os.cpu_count()} cores: anything near or above that means the numbers are noisy)",
            "cpu_step": cpu.describe(),
            "gemm_route": gemm.describe(),
            "layer_route": layer.describe(),
            "openblas_env": "OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE " + (
                "unset" if not {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"} & set(os.environ) else
                "set: " + ", ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                                    if k in os.environ)),
            "command": "python profiling/bench.py " + " ".join(argv)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out = args.out or Path(__file__).resolve().parent / "results" / device_name(args.device)
    out.mkdir(parents=True, exist_ok=True)
    load_before = _load()

    def write_tables(rows):
        write_csv(rows, out / f"{args.name}.csv")
        (out / f"{args.name}.md").write_text(markdown(rows, args, metadata(args, argv, load_before)))
    rows = run(args, on_config=write_tables)
    written = plots.write_plots(rows, out, args.name)
    print(f"wrote {out / (args.name + '.csv')}, {out / (args.name + '.md')} and {len(written)} plots", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
