"""Per-step cost of the recurrence kernels, read from their compiled SASS: no GPU needed.

For each cell (LSTM, GRU, Elman), direction, hidden size, batch, dtype and
architecture, the launcher's config is chosen as on the GPU (H100: sm_90 with 132
SMs; A100: sm_80 with 108), the kernel is compiled exactly as it runs (compile_check.build:
16-byte aligned pointers, B and H specialised), disassembled with nvdisasm, and the time
loop (the kernel's outermost loop) is read. Per program and per step it reports:

  mma_per_step       tensor-core MMA instructions, in m16n8k16 equivalents (HMMA.16816: 1,
                     HMMA.1688: 1/2, HGMMA m64nNk16 per warpgroup: N/2), summed over the warps;
  mma_min_per_step   the MMAs the program's real tile needs: M = its batch rows, N = its
                     real units x gates, K = H (forward; the backward swaps N and K), each
                     rounded up to the MMA shape; 0 where the dot runs without tensor cores
                     (fp32 in IEEE, the default);
  smem_read/write    shared-memory bytes (LDS: width x 32 lanes; LDSM: 128 B per 8x8 matrix);
  global load/store  streaming bytes (LDG/STG/LDGSTS: width x 32 lanes), per program;
  kernel             triton, or gluon for a cell's Gluon variant where common.gluon_fits (opt-in
                     on the GPU with GPURNN_GLUON=1): each gets its own row;
  w_tile_bytes       the W a program holds (the issue's bound on shared memory read a step);
  exchange           bytes read or written for other programs (lines in load_exchange,
                     store_partial, sum_partials), separate from streaming data; the grid
                     total is per program x programs. The forward's h is read from the
                     states each program stores as its output (counted there, as a store), so
                     only its reads are exchange. The barrier's counter is not counted.

Counts are static: every instruction of the loop body once (both sides of a branch), a
nested loop times its trip count (sum_partials: P; the barrier's spin: one poll), every
lane of every warp (masked lanes included: an upper bound on the bytes moved).

    python profiling/static_cost.py [--json FILE] [--out FILE] [--cells lstm ...] [--hidden 768 ...]
"""
import argparse
import ast
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import triton

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compile_check   # noqa: E402  (profiling/ is not a package)
from gpurnn.kernels import common as cm   # noqa: E402

CELLS = ("lstm", "gru", "elman")
HIDDEN = (128, 256, 768, 1024)
BATCH = (16, 64)
DTYPES = ("bfloat16", "float32")
SMS = cm.ARCH_SMS   # the SM counts the launcher sees: H100 SXM (sm_90) and A100 (sm_80)
DEFAULT_OUT = HERE / "results" / "static_cost.md"
KEYS = ("cell", "direction", "H", "B", "dtype", "arch", "mode", "kernel", "programs", "sms", "warps", "regs",
        "spill_bytes", "smem_bytes", "w_tile_bytes", "mma_per_step", "mma_min_per_step", "smem_read_bytes_per_step",
        "global_load_bytes_per_step", "global_store_bytes_per_step", "exchange_bytes_per_step")
# functions (kernels/common.py) whose memory traffic is the exchange between programs
EXCHANGE = {"load_exchange", "store_partial", "sum_partials"}
SYNC = {"grid_barrier", "arrive", "wait", "trap"}   # the barrier: synchronisation, counted nowhere
LANES = 32

# ----------------------------------------------------------------------------- SASS reading

_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_FILE = re.compile(r'//## File "([^"]+)", line (\d+)')
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def parse_sass(text):
    """[(address, opcode, operands, (file, line) or None)] and {label: address} of an nvdisasm -c -g listing."""
    instrs, labels, pending, where = [], {}, [], None
    for line in text.splitlines():
        m = _FILE.search(line)
        if m:
            where = (m.group(1), int(m.group(2)))
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                labels[name] = addr
            pending = []
            instrs.append((addr, m.group(2), m.group(3), where))
    return instrs, labels


def loops(instrs, labels):
    """[(first, last)] address ranges of the loops: a branch back to a label at or before it."""
    out = []
    for addr, op, args, _ in instrs:
        m = _TARGET.search(args)
        if op.startswith("BRA") and m and labels.get(m.group(1), addr + 1) < addr:
            out.append((labels[m.group(1)], addr))
    return out


@functools.lru_cache(maxsize=None)
def _functions(path):
    """[(first line, last line, name)] of every function in a source file."""
    tree = ast.parse(Path(path).read_text())
    return [(n.lineno, n.end_lineno, n.name) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]


def local_source(path):
    """The file a line-info path names, in this checkout, or None. Triton caches compiled kernels by their
    source, not its path, so a kernel compiled before in another checkout (a CI clone) names that checkout's
    kernels/ and triton/ files: the same sources, found here by their path below those folders."""
    if os.path.exists(path):
        return path
    for marker, root in (("/kernels/", os.path.dirname(cm.__file__)), ("/triton/", os.path.dirname(triton.__file__))):
        if marker in path:
            local = os.path.join(root, path.rsplit(marker, 1)[1])
            if os.path.exists(local):
                return local
    return None


def function_at(where):
    """The innermost function around a (file, line), or None."""
    path = where and local_source(where[0])
    if path is None:
        return None
    inside = [(last - first, name) for first, last, name in _functions(path) if first <= where[1] <= last]
    return min(inside)[1] if inside else None


def _width(op, default=4):
    """Bytes per lane of a load or store opcode (LDG.E.128 -> 16, STS.U16 -> 2)."""
    for suffix, n in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in op:
            return n
    return default


def _mma_units(op):
    """m16n8k16 equivalents of one warp's (or, for HGMMA, one warpgroup's) MMA instruction."""
    if op.startswith("HMMA.16816"):
        return 1.0
    if op.startswith("HMMA.1688"):
        return 0.5
    m = re.match(r"HGMMA\.64x(\d+)x16", op)
    return int(m.group(1)) / 2 if m else 0.0


def time_loop_cost(sass, warps, P, blocks=1):
    """Per-program, per-step counts of a kernel's time loop (its outermost loop) from its SASS; `blocks`: the
    trips of the loop over a tile's row blocks (Config.rb)."""
    instrs, labels = parse_sass(sass)
    found = [lp for lp in loops(instrs, labels) if lp[1] > lp[0]]
    if not found:
        raise ValueError("no loop in the SASS: expected the kernel's time loop")
    first, last = max(found, key=lambda lp: lp[1] - lp[0])
    body = [i for i in instrs if first <= i[0] <= last]
    trips = {}
    for lo, hi in found:   # nested loops: sum_partials runs P times, the barrier's spin polls once, row blocks
        if (lo, hi) == (first, last) or not first <= lo <= hi <= last:
            continue
        names = {function_at(i[3]) for i in body if lo <= i[0] <= hi} - {None}
        trip = (P if "sum_partials" in names else 1 if names & SYNC else
                blocks if blocks > 1 and names & {"h_dot_w", "share_dh", "row_block"} else None)
        if trip is None:
            raise ValueError(f"nested loop at {lo:#x}-{hi:#x} in {sorted(names)}: unknown trip count")
        trips[(lo, hi)] = trip
    c = dict(instr=0.0, mma=0.0, smem_read=0.0, smem_write=0.0, load=0.0, store=0.0,
             exchange=0.0, branch_loops=len(trips))
    for addr, op, args, where in body:
        n = math.prod(t for (lo, hi), t in trips.items() if lo <= addr <= hi)
        name = function_at(where)
        lanes = n * warps * LANES
        c["instr"] += n * warps
        c["mma"] += n * _mma_units(op) * (warps / 4 if op.startswith("HGMMA") else warps)
        if name in SYNC:
            continue
        if op.startswith("LDSM"):
            m = re.search(r"\.M?T?88\.(\d)", op)
            c["smem_read"] += n * warps * 128 * (int(m.group(1)) if m else 1)
        elif op.startswith("LDS"):
            c["smem_read"] += lanes * _width(op)
        elif op.startswith("STS"):
            c["smem_write"] += lanes * _width(op)
        elif op.startswith(("LDG", "LDGSTS", "STG")):
            key = "exchange" if name in EXCHANGE else "store" if op.startswith("STG") else "load"
            if op.startswith("LDGSTS"):
                c["smem_write"] += lanes * _width(op)
            c[key] += lanes * _width(op)
    return c


def disassemble(cubin):
    """nvdisasm -c -g of a cubin (Triton's own nvdisasm), as text."""
    from triton.backends.nvidia.compiler import get_ptxas

    nvdisasm = Path(get_ptxas(90).path).with_name("nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(nvdisasm), "-c", "-g", f.name], capture_output=True, text=True,
                              check=True).stdout

# ----------------------------------------------------------------------------- configs


def kernel_module(cell):
    import importlib

    return importlib.import_module(f"gpurnn.kernels.{cell}")


def w_tile_bytes(cfg, G, H, dtype):
    """Bytes of the W a program holds: its units' G gate rows over the dot's K (the real H split in parts,
    or HP), in the dtype W is held in."""
    K = cfg.k1 + cfg.k2 if cfg.mode != "single" else cfg.HP
    return K * G * min(cfg.S, H) * cm.w_elem_bytes(cm.dtype_constexprs(dtype)[1])


def mma_min(cfg, G, H, B, direction):
    """m16n8k16 MMAs a program's real tile needs per step (M rows, N and K rounded to the MMA shape)."""
    units = min(cfg.S, H)
    m, n, k = min(cfg.BB, B), units * G, H
    if direction == "bwd":
        n, k = k, n
    return math.ceil(m / 16) * math.ceil(n / 8) * math.ceil(k / 16)


def compile_job(job):
    """Compile one (cell, direction, H, dtype, arch, mode, batch rows, slice) kernel as its launcher runs it
    and read its time loop."""
    cell, direction, H, dtype, arch, mode, BB, S, kernel = job
    name = f"{cell}_{direction}" + ("_gluon" if kernel == "gluon" else "")
    name += "_stepwise" if mode == "stepwise" else ""
    _, fn, signature, consts = next(t for t in kernel_module(cell).compile_targets(H, dtype, arch)
                                    if t[0] == name and (t[3]["BB"], t[3]["S"]) == (BB, S))
    k, regs, spill = compile_check.build(fn, signature, consts, arch, dict(B=16, H=H, nonlin=0))
    cost = time_loop_cost(disassemble(k.asm["cubin"]), consts["num_warps"], consts["P"], consts["BB"] // consts["RB"])
    return job, dict(cost, regs=regs, spill=spill, smem=k.metadata.shared, warps=consts["num_warps"])


def plan(cell, direction, H, B, dtype, arch):
    """The launcher's config for these sizes on a GPU with SMS[arch] SMs (kernels/common.choose_config)."""
    mod = kernel_module(cell)
    _, dot, _ = cm.dtype_constexprs(dtype)
    cfg = cm.device_tile(H, B, mod.GP, cm.w_elem_bytes(dot), direction, SMS[arch], cm.SHARED_BYTES[arch])
    return cm.place(cfg, B, SMS[arch]), mod.G


def kernels(cell, direction, cfg, dtype):
    """The kernels a launcher may run for this config: Triton's, and the Gluon one where the cell has one
    and it fits (kernels/gluon.py; opt-in with GPURNN_GLUON=1)."""
    mod = kernel_module(cell)
    elem_bytes = cm.w_elem_bytes(cm.dtype_constexprs(dtype)[1])
    fits = getattr(mod, "GLUON", None) is not None and cm.gluon_fits(cfg, direction, elem_bytes, mod.GP)
    return ("triton", "gluon") if fits else ("triton",)


def rows(cells, hidden, batch, dtypes, archs, jobs):
    """One report row per config and kernel, with the launch plan and the compiled kernel's per-step counts."""
    wanted = [(c, d, H, B, dt, a) for c in cells for d in ("fwd", "bwd") for H in hidden for B in batch
              for dt in dtypes for a in archs]
    plans = {w: plan(*w) for w in wanted}
    wanted = [(*w, k) for w in wanted for k in kernels(w[0], w[1], plans[w][0], w[4])]
    plans = {w: plans[w[:-1]] for w in wanted}
    key = {w: (*w[:3], *w[4:6], plans[w][0].mode, plans[w][0].BB, plans[w][0].S, w[6]) for w in wanted}
    todo = sorted(set(key.values()))
    with ProcessPoolExecutor(jobs) as pool:
        costs = dict(pool.map(compile_job, todo))
    out = []
    for w in wanted:
        c, d, H, B, dt, a, kernel = w
        cfg, G = plans[w]
        cost = costs[key[w]]
        tiles = -(-B // cfg.BB)
        per_launch = min(tiles, cfg.tiles or tiles)
        programs = per_launch * cfg.P
        tensor = cost["mma"] > 0
        out.append(dict(
            cell=c, direction=d, H=H, B=B, dtype=dt, arch=f"sm_{a}", mode=cfg.mode, kernel=kernel,
            programs=programs, sms=SMS[a], warps=cost["warps"], regs=cost["regs"], spill_bytes=cost["spill"],
            smem_bytes=cost["smem"], w_tile_bytes=w_tile_bytes(cfg, G, H, dt), mma_per_step=round(cost["mma"]),
            mma_min_per_step=mma_min(cfg, G, H, B, d) if tensor else 0,
            smem_read_bytes_per_step=round(cost["smem_read"]),
            global_load_bytes_per_step=round(cost["load"]), global_store_bytes_per_step=round(cost["store"]),
            exchange_bytes_per_step=round(cost["exchange"] * programs),
            # the table's extra columns (not in --json)
            tile=f"{cfg.BB}x{cfg.S}" + (f" in {cfg.rb}-row dots" if cfg.rb else ""),
            launches=-(-tiles // per_launch), smem_write=round(cost["smem_write"]),
            exchange_per_program=round(cost["exchange"]), instr_per_step=round(cost["instr"])))
    return out


def write_table(table, path, title):
    cols = ["cell", "direction", "H", "B", "dtype", "arch", "mode", "kernel", "tile", "launches", "programs", "sms",
            "warps", "regs", "spill_bytes", "smem_bytes", "w_tile_bytes", "instr_per_step", "mma_per_step",
            "mma_min_per_step", "smem_read_bytes_per_step", "smem_write", "global_load_bytes_per_step",
            "global_store_bytes_per_step", "exchange_per_program", "exchange_bytes_per_step"]
    short = dict(instr_per_step="instr", mma_per_step="mma", mma_min_per_step="mma min",
                 smem_read_bytes_per_step="smem read B", smem_write="smem write B",
                 global_load_bytes_per_step="global load B", global_store_bytes_per_step="global store B",
                 exchange_per_program="exchange B / program", exchange_bytes_per_step="exchange B (grid)",
                 spill_bytes="spill B", smem_bytes="smem B", w_tile_bytes="W tile B")
    lines = [f"# {title}", "",
             "Generated by `python profiling/static_cost.py` from the SASS of each kernel compiled as it "
             "runs (no GPU). Per program and per step of the time loop unless marked grid; "
             "instr = warp instructions; mma in m16n8k16 equivalents; bytes count every lane "
             "(masked lanes included). tile: batch rows x hidden units per program (wide fp32 tiles run their "
             "dots in blocks of rows). launches: sequential launches per layer pass (batch-tile groups; "
             "stepwise mode also launches once per step). See the script's docstring.", "",
             "| " + " | ".join(short.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=CELLS, choices=CELLS)
    parser.add_argument("--hidden", type=int, nargs="+", default=HIDDEN)
    parser.add_argument("--batch", type=int, nargs="+", default=BATCH)
    parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
    parser.add_argument("--archs", type=int, nargs="+", default=tuple(SMS), choices=tuple(SMS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--title", default="Per-step cost of the recurrence kernels (static, from SASS)")
    parser.add_argument("--json", type=Path, help="also write the rows as a JSON list (keys: KEYS)")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)   # compile for real, even when called from the tests
    t0 = time.perf_counter()
    table = rows(args.cells, args.hidden, args.batch, args.dtypes, args.archs, args.jobs)
    write_table(table, args.out, args.title)
    if args.json:
        args.json.write_text(json.dumps([{k: r[k] for k in KEYS} for r in table], indent=1) + "\n")
    print(f"{len(table)} rows: {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
