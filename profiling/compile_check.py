"""Compile every fused kernel ahead of time for sm_80 and sm_90, no GPU needed.

Every module in gpurnn.kernels with a `compile_targets(hidden_size, dtype, arch)`
lists the configurations its launchers use; each is compiled with
triton.compile for each hidden size, dtype and architecture. Registers and
spills come from ptxas -v, shared memory from the kernel's metadata, checked
against the chip's limit (a kernel over it would fail at launch: a failure).
Writes a markdown table; the last line printed is
`compiled N kernel configs for sm_80, sm_90: F failures, S with spills`;
exits non-zero on any failure.

    python profiling/compile_check.py [--hidden 64 128 ...] [--dtypes float32 ...] [--jobs 2]
"""
import argparse
import contextlib
import importlib
import io
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HIDDEN = (64, 128, 256, 300, 512, 768, 1024)   # 300: P not a power of two, K = 256 + 128
DTYPES = ("float32", "float16", "bfloat16")
ARCHS = (80, 90)

# the chips' shared memory per block (the kernels size W by it); a copy, so that tests can lower the check's
SHARED_LIMIT = dict(__import__("gpurnn.kernels.common", fromlist=["SHARED_BYTES"]).SHARED_BYTES)
# launch options that travel in a target's constexprs (kernels/common.target), passed to triton.compile
LAUNCH_OPTIONS = ("num_warps", "maxnreg", "num_stages", "launch_cooperative_grid")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compile_check.md"


def cell_modules():
    """The kernel modules that expose compile_targets (cells; other kernels are skipped)."""
    import gpurnn.kernels as pkg

    mods = [importlib.import_module(f"gpurnn.kernels.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    return [m for m in mods if hasattr(m, "compile_targets")]


def _ptxas_report(log):
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not regs:
        return None
    return int(regs[-1]), max(int(s) + int(l) for s, l in spills) if spills else 0


def _run_ptxas(ptx, arch):
    """ptxas -v on a PTX text (when Triton's cache skipped its own ptxas run)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}",
                              str(src), "-o", str(Path(d) / "k.o")], capture_output=True, text=True)
    return out.stderr + out.stdout


def runtime_attrs(fn, signature, ints):
    """What Triton's JIT specialises at a launch: every pointer is 16-byte aligned (every buffer the
    launchers pass is), and so is an integer argument whose value (ints: name -> value, e.g. B and H)
    is a multiple of 16, unless the kernel marks it do_not_specialize. Compiling with these attributes
    gives the variant that runs (vectorised loads), not the unaligned fallback."""
    params = {p.name: p for p in fn.params}
    aligned = [k for k, v in signature.items() if v.startswith("*") or
               (k in ints and not params[k].do_not_specialize and ints[k] % 16 == 0)]
    return {(params[k].num,): [["tt.divisibility", 16]] for k in aligned}


def build(fn, signature, constexprs, arch, ints):
    """triton.compile one kernel as its launcher runs it: (compiled kernel, registers, spill bytes).
    constexprs carry the launch options num_warps and maxnreg (common.target)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource

    triton.knobs.nvidia.dump_ptxas_log = True
    consts = dict(constexprs)
    options = {"num_warps": 4, **{k: consts.pop(k) for k in LAUNCH_OPTIONS if k in consts}}
    sig = dict(signature, **{k: "constexpr" for k in consts})
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        source = GluonASTSource if fn.is_gluon() else ASTSource
        k = triton.compile(source(fn, sig, consts, runtime_attrs(fn, signature, ints)),
                           target=GPUTarget("cuda", arch, 32), options=options)
    registers, spill = _ptxas_report(log.getvalue()) or _ptxas_report(_run_ptxas(k.asm["ptx"], arch))
    return k, registers, spill


def compile_one(job):
    """Compile one (module, index into its targets, H, dtype, arch); returns a result row."""
    mod_name, index, hidden, dtype, arch = job
    name, fn, signature, constexprs = importlib.import_module(mod_name).compile_targets(hidden, dtype, arch)[index]
    consts = dict(constexprs)
    config = " ".join([f"{k}={v}" for k, v in consts.items() if k in ("BB", "S", "P", "NK")]
                      + ([f"RB={consts['RB']}"] if consts.get("RB", consts.get("BB")) != consts.get("BB") else [])
                      + ([f"K={consts['K1']}+{consts['K2']}"] if consts.get("K2") else [])
                      + [f"{k.replace('num_', '')}={consts[k]}" for k in ("num_warps", "maxnreg") if k in consts]
                      + (["cooperative"] if consts.get("launch_cooperative_grid") else []))
    row = dict(kernel=name, hidden=hidden, dtype=dtype, arch=arch, config=config,
               registers=None, spill=None, shared=None, error=None)
    t0 = time.perf_counter()
    try:
        # B = one batch tile (a multiple of 16, as the headline shapes are); tanh (nonlin 0);
        # Jordan's output size as its compile_targets picks it
        ints = dict(B=consts.get("BB", 16), H=hidden, O=min(hidden, 64), nonlin=0)
        k, row["registers"], row["spill"] = build(fn, signature, consts, arch, ints)
        row["shared"] = k.metadata.shared
        if row["shared"] > SHARED_LIMIT[arch]:
            row["error"] = f"shared memory {row['shared']} B > {SHARED_LIMIT[arch]} B limit of sm_{arch}"
    except Exception as err:   # a compile error is a reported failure, not a crash of the check
        row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
    row["seconds"] = time.perf_counter() - t0
    return row


def jobs(hidden_sizes, dtypes, archs):
    out = []
    for mod in cell_modules():
        for hidden in hidden_sizes:
            for dtype in dtypes:
                for arch in archs:
                    out.extend((mod.__name__, index, hidden, dtype, arch)
                               for index in range(len(mod.compile_targets(hidden, dtype, arch))))
    return out


def write_table(rows, path):
    lines = ["# Ahead-of-time compile check", "",
             "Generated by `python profiling/compile_check.py` (no GPU: triton.compile for each target, "
             "ptxas -v for registers and spills; spill = spill store + load bytes). "
             f"Shared memory limits: sm_80 {SHARED_LIMIT[80]} B, sm_90 {SHARED_LIMIT[90]} B.", "",
             "| kernel | H | dtype | arch | config | registers | spill bytes | shared bytes | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = "FAIL: " + r["error"] if r["error"] else ("spills" if r["spill"] else "ok")
        lines.append(f"| {r['kernel']} | {r['hidden']} | {r['dtype']} | sm_{r['arch']} | {r['config']} | "
                     f"{r['registers']} | {r['spill']} | {r['shared']} | {status} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=HIDDEN)
    parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
    parser.add_argument("--archs", type=int, nargs="+", default=ARCHS, choices=ARCHS)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)   # compile for real, even when called from the tests
    todo = jobs(args.hidden, args.dtypes, args.archs)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(compile_one, todo))
    rows.sort(key=lambda r: (r["kernel"], r["hidden"], r["dtype"], r["arch"], r["config"]))
    write_table(rows, args.out)
    failures = [r for r in rows if r["error"]]
    spills = [r for r in rows if not r["error"] and r["spill"]]
    for r in failures:
        print(f"FAIL {r['kernel']} H={r['hidden']} {r['dtype']} sm_{r['arch']} {r['config']}: {r['error']}")
    print(f"table: {args.out} ({time.perf_counter() - t0:.0f} s)")
    archs = ", ".join(f"sm_{a}" for a in args.archs)
    print(f"compiled {len(rows)} kernel configs for {archs}: {len(failures)} failures, {len(spills)} with spills")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
