"""The one script to run on a CUDA machine (nothing to install there), done in under 8 minutes.

1. every fused kernel and dtype through gpurnn.nn (backend="triton") against
   torch.nn on the GPU (cuDNN) and against the engine (backend cupy or numpy):
   error of each relative to a float64 torch.nn run of the same weights;
   the split-hidden path (grid barrier) and its stepwise fallback forced at a
   small H, and in groups of one batch tile per launch; determinism; kernel
   launches independent of T;
   each check in its own process with a time limit, so that a hang (a grid barrier that
   never opens) costs one check and is reported as HANG; a 30-second smoke test first;
2. the headline benchmark (LSTM B=16 T=1024 H=768 bf16, H=128/256 at B=16/64) right after
   the smoke test, the other checks, then `bench.py --quick` with what time is left;
3. writes profiling/results/<gpu name>/gpu_check.{md,csv} (under --out) and
   prints a short table last.

    PYTHONPATH=$PWD python3 profiling/gpu_check.py --out $OUT
"""
import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEVICE = "cuda"                # --dry-run: "cpu" under TRITON_INTERPRET=1, to test this script
BUDGET_S = 470                 # the whole script, leaving margin under 8 minutes
# A kernel passes when its error (vs float64) is at most FACTOR x cuDNN's error at the same dtype,
# or under the floor: a few ulps of the dtype times the growth of rounding over T steps of BPTT.
FACTOR = 4.0
FLOOR = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KINDS = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}), "lstm": ("LSTM", {}),
         "lstm_proj": ("LSTM", {"proj_size": 24}), "gru": ("GRU", {}), "jordan": ("JordanRNN", {})}
KERNEL_OF = {"rnn_tanh": "elman", "rnn_relu": "elman", "lstm": "lstm", "lstm_proj": "lstm", "gru": "gru",
             "jordan": "jordan"}


def device_name():
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu-interpreter"


def gpu_slug():
    return re.sub(r"[^A-Za-z0-9]+", "_", device_name()).strip("_")


@contextlib.contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_modules(kind, H, dtype, engine_backend, I=16, **options):
    """(float64 torch reference, same-dtype torch/cuDNN or None, gpurnn triton, gpurnn engine)."""
    import gpurnn.nn as gnn

    name, kw = KINDS[kind]
    torch.manual_seed(0)
    if kind == "jordan":
        ref64 = gnn.JordanRNN(I, H, 7, backend="numpy", dtype=torch.float64)
        ref64_dev = "cpu"
        at = None
    else:
        ref64 = getattr(torch.nn, name)(I, H, dtype=torch.float64, device=DEVICE, **kw, **options)
        ref64_dev = DEVICE
        at = getattr(torch.nn, name)(I, H, dtype=dtype, device=DEVICE, **kw, **options)
        at.load_state_dict(ref64.state_dict())
    args = (I, H, 7) if kind == "jordan" else (I, H)
    mine = getattr(gnn, name)(*args, dtype=dtype, device=DEVICE, backend="triton", **kw, **options)
    mine.load_state_dict(ref64.state_dict())
    eng_dev = DEVICE if engine_backend == "cupy" else "cpu"
    eng_dtype = torch.float32 if dtype == torch.bfloat16 and eng_dev == "cpu" else dtype
    eng = getattr(gnn, name)(*args, dtype=eng_dtype, device=eng_dev, backend=engine_backend, **kw, **options)
    eng.load_state_dict(ref64.state_dict())
    return (ref64, ref64_dev), at, mine, eng


def outputs_and_grads(module, x, device, dtype, lengths=None):
    """Forward and backward of a fixed random projection of every output, as float64 CPU tensors.
    lengths: run x as a PackedSequence of these lengths (unsorted)."""
    module.zero_grad()
    x = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)   # never share x.grad
    if lengths is None:
        y, hn = module(x)
    else:
        y, hn = module(torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
        y = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[0])[0]
    finals = list(hn) if isinstance(hn, tuple) else [hn]
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)).sum()
               for t in [y] + finals)
    loss.backward()
    got = {"y": y, "dx": x.grad, **{f"final{i}": f for i, f in enumerate(finals)}}
    got.update({f"d_{n}": p.grad for n, p in module.named_parameters()})
    return {k: v.detach().double().cpu() for k, v in got.items()}


def rel_err(got, ref):
    """Largest error over all outputs and gradients, each relative to its array's largest entry."""
    return max(float((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)) for k in ref)


def parity(kind, dtype_name, T, B, H, engine_backend, env_vars=None, lengths=None, **options):
    dtype = DTYPES[dtype_name]
    with env(**(env_vars or {})):
        (ref64, dev64), at, mine, eng = make_modules(kind, H, dtype, engine_backend, **options)
        x = torch.randn(T, B, ref64.input_size if kind != "jordan" else 16, generator=torch.Generator().manual_seed(2))
        ref = outputs_and_grads(ref64, x, dev64, torch.float64, lengths)
        ours = outputs_and_grads(mine, x, DEVICE, dtype, lengths)
        try:   # a broken engine (the CuPy loop) fails the check but must not hide the kernels' error
            engine = outputs_and_grads(eng, x, next(eng.parameters()).device, next(eng.parameters()).dtype, lengths)
            e_eng, engine_note = rel_err(engine, ref), ""
        except Exception as err:
            e_eng, engine_note = float("nan"), f"; engine FAILED: {type(err).__name__}: {str(err)[:120]}"
        try:   # torch.nn may lack this dtype on this GPU; the engine's error is the yardstick then
            cudnn = outputs_and_grads(at, x, DEVICE, dtype, lengths) if at is not None else None
        except RuntimeError:
            cudnn = None
    e_ours = rel_err(ours, ref)
    e_ref = rel_err(cudnn, ref) if cudnn is not None else e_eng
    limit = max(FACTOR * e_ref, FLOOR[dtype]) if e_ref == e_ref else FLOOR[dtype]   # e_ref nan: no yardstick
    if e_eng > limit:   # the engine (the CuPy loop on a GPU) is a backend too
        engine_note = "; engine over the limit"
    ok = e_ours <= limit and not engine_note
    return ok, f"err {e_ours:.1e} (torch {e_ref:.1e}, engine {e_eng:.1e}, limit {limit:.1e}){engine_note}"


def repeated_runs(m, x, n):
    """n forward+backward runs of module m on x: [output and every parameter's gradient] of each."""
    runs = []
    for _ in range(n):
        m.zero_grad()
        y, _ = m(x)
        y.square().sum().backward()
        runs.append([y.detach().clone()] + [p.grad.clone() for p in m.parameters()])
    return runs


def determinism():
    import gpurnn.nn as gnn

    torch.manual_seed(0)
    m = gnn.LSTM(32, 256, device=DEVICE, backend="triton")
    runs = repeated_runs(m, torch.randn(64, 16, 32, device=DEVICE), 2)
    ok = all(torch.equal(a, b) for a, b in zip(*runs))
    return ok, "two runs bitwise equal" if ok else "runs differ"


def offloaded_tape():
    """Under torch.autograd.graph.save_on_cpu the layer's tape leaves the GPU with the saved tensors (its handle
    is copied to the host, which frees the tape; backward reruns the forward): far less GPU memory held after
    the forward, and bitwise the same gradients."""
    import contextlib

    import gpurnn.nn as gnn

    gpu = DEVICE == "cuda"   # --dry-run: the gradients only (save_on_cpu keeps CPU tensors where they are)
    torch.manual_seed(0)
    m = gnn.LSTM(32, 256 if gpu else 32, device=DEVICE, backend="triton")
    x = torch.randn(256 if gpu else 8, 16, 32, device=DEVICE)
    allocated = torch.cuda.memory_allocated if gpu else lambda: 0

    def held_and_grads(hooks):
        base = allocated()
        with hooks:
            y, _ = m(x)
        held = allocated() - base
        m.zero_grad()
        y.square().sum().backward()
        return held, [p.grad.clone() for p in m.parameters()]

    (plain, grads), (offloaded, off_grads) = (held_and_grads(contextlib.nullcontext()),
                                              held_and_grads(torch.autograd.graph.save_on_cpu()))
    ok = (offloaded < plain / 2 or not gpu) and all(torch.equal(a, b) for a, b in zip(grads, off_grads))
    return ok, f"GPU memory held after forward: {plain / 2**20:.1f} MiB, {offloaded / 2**20:.1f} under save_on_cpu"


def stepwise_graphs():
    """The stepwise path three times with the same input: launched, then captured and replayed as a
    CUDA graph, then replayed (kernels/graphs.py); every run bitwise equal, and a graph captured."""
    import gpurnn.nn as gnn
    from gpurnn.kernels import graphs

    graphs.clear()
    with env(GPURNN_SLICE=16, GPURNN_STEPWISE=1):
        torch.manual_seed(0)
        m = gnn.LSTM(16, 48, device=DEVICE, backend="triton")
        runs = repeated_runs(m, torch.randn(33, 5, 16, device=DEVICE), 3)
    equal = all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))
    captured = len(graphs._graphs)
    # --dry-run: the interpreter launches each step, no graph
    return equal and (captured > 0 or DEVICE != "cuda"), f"runs bitwise equal: {equal}; graphs captured: {captured}"


def launch_counts():
    import gpurnn.nn as gnn

    with launched_kernels() as names:
        counts = []
        m = gnn.LSTM(16, 64, device=DEVICE, backend="triton")
        for T in (8, 64):
            names.clear()
            y, _ = m(torch.randn(T, 4, 16, device=DEVICE))
            y.sum().backward()
            counts.append(len(names))
    return counts[0] == counts[1], f"launches at T=8: {counts[0]}, T=64: {counts[1]}"


@contextlib.contextmanager
def launched_kernels():
    """The names of the kernels launched inside the block (common.launch), as a list filled in as they run."""
    from gpurnn.kernels import common

    names, real = [], common.launch
    common.launch = lambda kernel, grid, *a, **k: (names.append(kernel.fn.__name__), real(kernel, grid, *a, **k))
    try:
        yield names
    finally:
        common.launch = real


def gluon_parity(T, B, H, engine_backend, env_vars=None, expect=("_bwd_gluon", "_fwd_gluon"), **options):
    """parity of the LSTM in bf16 with GPURNN_GLUON=1 (kernels/gluon.py), which must have launched the
    Gluon kernels `expect`: otherwise the Triton ones ran and the check would prove nothing."""
    with launched_kernels() as names:
        ok, note = parity("lstm", "bfloat16", T, B, H, engine_backend, dict(env_vars or {}, GPURNN_GLUON=1),
                          **options)
    ran = sorted({n for n in names if n.endswith("_gluon")})
    if DEVICE == "cuda" and ran != sorted(expect):   # --dry-run: no Gluon off the GPU
        return False, f"Gluon kernels launched: {ran or 'none'}, expected {sorted(expect)}; {note}"
    return ok, f"{note}; launched {', '.join(ran) or 'no Gluon kernel'}"


def gluon_determinism():
    """Two runs of the Gluon kernels (headline tile) bitwise equal."""
    import gpurnn.nn as gnn

    with env(GPURNN_GLUON=1):
        torch.manual_seed(0)
        m = gnn.LSTM(32, 768, device=DEVICE, backend="triton", dtype=torch.bfloat16)
        x = torch.randn(64, 16, 32, device=DEVICE, dtype=torch.bfloat16)
        runs = repeated_runs(m, x, 2)
    ok = all(torch.equal(a, b) for a, b in zip(*runs))
    return ok, "two runs bitwise equal" if ok else "runs differ"


def gluon_checks(engine_backend):
    """The Gluon kernels (opt-in, GPURNN_GLUON=1; never run before a GPU) against float64 torch.nn: the
    headline tile, the K tail (H=300: 256 + 128) with B=17 and both directions in one launch, packed,
    stepwise (no barrier), 32-row forward tiles (B=64), and determinism."""
    return [
        ("gluon lstm bfloat16 T=64 B=16 H=768", lambda: gluon_parity(64, 16, 768, engine_backend)),
        ("gluon lstm bfloat16 T=33 B=17 H=300 bidir", lambda: gluon_parity(33, 17, 300, engine_backend,
                                                                            bidirectional=True)),
        ("gluon lstm bfloat16 T=33 B=5 H=300 packed bidir",
         lambda: gluon_parity(33, 5, 300, engine_backend, lengths=[33, 20, 33, 7, 1], bidirectional=True)),
        ("gluon lstm bfloat16 T=33 B=17 H=300 stepwise",
         lambda: gluon_parity(33, 17, 300, engine_backend, {"GPURNN_STEPWISE": 1})),
        # the 32-row backward stays Triton's (common.gluon_fits)
        ("gluon lstm bfloat16 T=64 B=64 H=768 (32-row forward)",
         lambda: gluon_parity(64, 64, 768, engine_backend, expect=("_fwd_gluon",))),
        ("gluon determinism lstm bfloat16 H=768", gluon_determinism),
    ]


def check_list(engine_backend):
    """(name, callable) for every check, cheapest first so a slow compile cannot starve the rest;
    the grouped launches and packed sequences last, after the headline-size parity."""
    out = []
    for kind in KINDS:
        for dt in DTYPES:
            opts = {} if kind == "jordan" else {"num_layers": 2, "bidirectional": True}
            out.append((f"{kind} {dt} T=33 B=5 H=48" + (" 2-layer bidir" if opts else ""),
                        lambda k=kind, d=dt, o=opts: parity(k, d, 33, 5, 48, engine_backend, **o)))
    for kind in ("rnn_tanh", "lstm", "gru"):   # bidirectional: split launches the directions apart,
        out.append((f"{kind} float32 split H=100 bidir (grid barrier)",   # stepwise shares each launch
                    lambda k=kind: parity(k, "float32", 33, 17, 100, engine_backend, {"GPURNN_SLICE": 16},
                                          bidirectional=True)))
        out.append((f"{kind} float32 stepwise H=100 bidir",
                    lambda k=kind: parity(k, "float32", 33, 17, 100, engine_backend,
                                          {"GPURNN_SLICE": 16, "GPURNN_STEPWISE": 1}, bidirectional=True)))
    out.append(("determinism lstm H=256", determinism))
    out.append(("save_on_cpu frees the tape", offloaded_tape))
    out.append(("stepwise as a CUDA graph, replayed", stepwise_graphs))
    out.append(("launches independent of T", launch_counts))
    for dt in ("bfloat16", "float32"):
        out.append((f"lstm {dt} T=64 B=16 H=768", lambda d=dt: parity("lstm", d, 64, 16, 768, engine_backend)))
    for dt in ("bfloat16", "float32"):   # bf16: 2 x 48 programs of 32 rows; fp32: 96 of 64 rows in 32-row dots
        out.append((f"lstm {dt} T=64 B=64 H=768, one launch (common.device_tiles)",
                    lambda d=dt: parity("lstm", d, 64, 64, 768, engine_backend)))
    out.append(("gru float32 T=64 B=64 H=1024, 64 rows in 16-row dots, one launch",
                lambda: parity("gru", "float32", 64, 64, 1024, engine_backend)))
    out.append(("lstm bfloat16 T=64 B=64 H=1024, 32 rows x 16 units, one launch",
                lambda: parity("lstm", "bfloat16", 64, 64, 1024, engine_backend)))
    out += gluon_checks(engine_backend)
    for kind in ("rnn_tanh", "lstm", "gru"):
        out.append((f"{kind} float32 split H=100 B=35, one batch tile per launch",
                    lambda k=kind: parity(k, "float32", 33, 35, 100, engine_backend,
                                          {"GPURNN_SLICE": 16, "GPURNN_TILES": 1})))
    for kind in ("rnn_tanh", "lstm", "lstm_proj", "gru"):   # packed: the kernels' and the engine's masking
        out.append((f"{kind} float32 T=33 B=5 H=48 packed bidir",
                    lambda k=kind: parity(k, "float32", 33, 5, 48, engine_backend, lengths=[33, 20, 33, 7, 1],
                                          bidirectional=True)))
    return out


SMOKE = "lstm float32 T=33 B=5 H=48 2-layer bidir"   # first, alone: does anything run at all?
SMOKE_S, CHECK_S = 30, 60                            # time limits of one check's process


def run_one(name, engine_backend):
    """Run the check `name` in this process; prints its result as the last line (status, note)."""
    fn = dict(check_list(engine_backend))[name]
    kind = name.split()[0]
    if kind in KERNEL_OF and importlib.util.find_spec(f"gpurnn.kernels.{KERNEL_OF[kind]}") is None:
        status, note = "SKIP", f"no kernels/{KERNEL_OF[kind]}.py"
    else:
        try:
            ok, note = fn()
            status = "ok" if ok else "FAIL"
        except Exception as err:   # reported, not raised: the parent reads the last line
            status, note = "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    print(json.dumps([status, note]), flush=True)


def isolated(cmd, timeout):
    """(status, note) of a check run as `cmd` in its own process: a hang (a grid barrier that
    never opens) costs this one check its time limit and is reported as HANG."""
    try:
        out = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return "HANG", f"no result after {timeout:.0f} s; process killed"
    lines = out.stdout.strip().splitlines()
    try:
        return tuple(json.loads(lines[-1]))
    except (IndexError, ValueError):
        err = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return "FAIL", f"exit {out.returncode}: {err[:160]}"


class Report:
    """The results so far, rewritten to OUT/<gpu name>/gpu_check.{csv,md} after each one, so that what ran is
    on disk (and comes back) even if the run is killed before its end."""

    def __init__(self, out_dir):
        self.out_dir, self.rows = out_dir, []

    def add(self, name, status, note, seconds=0.0):
        self.rows.append((name, status, note, seconds))
        lines = io.StringIO()
        csv.writer(lines).writerows([("check", "status", "note", "seconds")] + self.rows)
        for file, text in (("gpu_check.csv", lines.getvalue()),
                           ("gpu_check.md", f"# gpu_check on {device_name()}\n\n{self.table()}\n")):
            tmp = self.out_dir / (file + ".tmp")   # written whole, then renamed: a kill leaves the last full one
            tmp.write_text(text)
            tmp.replace(self.out_dir / file)

    def table(self):
        return "\n".join(["| check | status | note |", "|---|---|---|"] +
                         [f"| {n} | {s} | {note} |" for n, s, note, _ in self.rows])


def run_checks(names, deadline, engine_backend, dry_run, report):
    for name in names:
        left = deadline - time.perf_counter()
        if left < 5:
            report.add(name, "SKIP", "out of time")
            continue
        limit = min(left, SMOKE_S if name == SMOKE else CHECK_S) * (20 if dry_run else 1)   # interpreter: slow
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--engine", engine_backend]
        t0 = time.perf_counter()
        status, note = isolated(cmd + (["--dry-run"] if dry_run else []), limit)
        report.add(name, status, note, time.perf_counter() - t0)
        print(f"{status:4s} {name}: {note} ({report.rows[-1][3]:.1f} s)", flush=True)


def run_bench(args_list, timeout):
    bench = HERE / "bench.py"
    if not bench.exists():
        return "SKIP", "profiling/bench.py not found"
    if timeout < 30:
        return "SKIP", "out of time"
    try:
        out = subprocess.run([sys.executable, str(bench), *args_list, "--no-progress"], timeout=timeout,
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    except subprocess.TimeoutExpired:
        return "FAIL", f"timed out after {timeout:.0f} s"
    tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return ("ok" if out.returncode == 0 else "FAIL"), f"exit {out.returncode}; " + (tail[-1] if tail else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "results", help="results go to OUT/<gpu name>/")
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="the checks on the CPU under TRITON_INTERPRET=1 (slow; tests this script), no bench")
    p.add_argument("--one", help=argparse.SUPPRESS)      # one check, in the process the parent started
    p.add_argument("--engine", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global DEVICE
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            p.error("--dry-run needs TRITON_INTERPRET=1 set before Python starts")
        DEVICE, args.no_bench = "cpu", True
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; nothing to check")
        return 2
    # torch lets cuDNN use TF32 for fp32 RNNs by default; the fp32 yardstick must be real fp32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.one:
        run_one(args.one, args.engine)
        return 0
    start = time.perf_counter()
    out_dir = args.out / gpu_slug()
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_backend = "cupy" if DEVICE == "cuda" and importlib.util.find_spec("cupy") else "numpy"
    print(f"gpu_check on {device_name()} (torch {torch.__version__}); engine: {engine_backend}",
          flush=True)
    # Order: a smoke test, the headline benchmark, then every other check (each in its own
    # process with a time limit), then the quick sweep with what time is left.
    report = Report(out_dir)
    run_checks([SMOKE], start + SMOKE_S + 5, engine_backend, args.dry_run, report)
    if not args.no_bench:
        headline = ["--device", "cuda", "--cells", "lstm", "--dtype", "bfloat16", "--batch", "16,64",
                    "--steps", "1024", "--hidden", "128,256,768", "--name", "headline", "--out", str(out_dir),
                    # torch.compile of the loop would take most of the time limit here
                    "--providers", "gpurnn-triton,gpurnn-cupy,torch.nn,loop,floor,floor-grid"]
        report.add("bench headline (lstm bf16 T=1024)", *run_bench(headline, 150))
        # 4 warps issue 22% fewer instructions a step than 8 at H=768 (profiling/static_cost.py) but
        # hide less latency: which is faster only a GPU can say
        with env(GPURNN_WARPS=4):
            report.add("bench headline, 4 warps (lstm bf16 H=768)", *run_bench(
                ["--device", "cuda", "--cells", "lstm", "--dtype", "bfloat16", "--batch", "16", "--steps", "1024",
                 "--hidden", "768", "--name", "headline-warps4", "--out", str(out_dir),
                 "--providers", "gpurnn-triton,torch.nn"], 60))
        # the Gluon kernels (kernels/gluon.py: W in registers, no staging) against Triton's, same run
        with env(GPURNN_GLUON=1):
            report.add("bench headline, Gluon kernels (lstm bf16 H=768)", *run_bench(
                ["--device", "cuda", "--cells", "lstm", "--dtype", "bfloat16", "--batch", "16,64", "--steps", "1024",
                 "--hidden", "768", "--name", "headline-gluon", "--out", str(out_dir),
                 "--providers", "gpurnn-triton,torch.nn"], 60))
        # single steps (T=1 layers, the cell modules): on the CPU they run torch's step op (nn.common.torch_steps_here)
        # because the engine's fixed cost per call is several times a step; whether the GPU should too, this says
        report.add("bench single steps (B=1 H=128)", *run_bench(
            ["--device", "cuda", "--cells", "rnn,lstm,gru,rnncell,lstmcell,grucell", "--batch", "1", "--steps", "1",
             "--hidden", "128", "--input", "128", "--name", "single-step", "--out", str(out_dir),
             "--providers", "gpurnn-triton,torch.nn", "--budget-s", "20"], 45))
    others = [name for name, _ in check_list(engine_backend) if name != SMOKE]
    deadline = start + (BUDGET_S - 60 if not args.no_bench else BUDGET_S * (20 if args.dry_run else 1))
    run_checks(others, deadline, engine_backend, args.dry_run, report)
    if not args.no_bench:
        left = BUDGET_S - (time.perf_counter() - start)
        report.add("bench --quick", *run_bench(["--quick", "--device", "cuda", "--out", str(out_dir)], left))
    failed = sum(s in ("FAIL", "HANG") for _, s, _, _ in report.rows)
    print("\n" + report.table())
    print(f"gpu_check: {len(report.rows)} checks, {failed} failed, {time.perf_counter() - start:.0f} s; "
          f"results in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
