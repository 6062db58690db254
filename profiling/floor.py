"""The floor: a persistent Triton time loop with the arithmetic removed.

Each step does what a fused recurrent kernel must do no matter how clever its
math: load the step's gate pre-activations (G*H per row), read the previous
state, store the new state, and synchronise before the next step. There is no
matmul and no activation, so its per-step time is the floor that bench.py
shows every kernel against.

    x_proj: (T, B, G*H)   h: (T+1, B, H)   count: (1,) int32, the grid barrier
    h[t+1] = h[t] + sum_g x_proj[t, :, g*H:(g+1)*H]   (adds only, so nothing is optimised away)

Two variants:
  local  one program per batch tile walks all H columns; sync = a CTA barrier per step.
  grid   the H columns are split across programs (what a kernel does when W_hh does
         not fit one program); sync = a grid-wide barrier per step, so every program
         must be resident at once (at most one per SM here).

Forward+backward is two launches: BPTT walks the same loop in reverse with the
same traffic.

    python profiling/floor.py --compile    # compile both variants for sm_90 and sm_80 (no GPU needed)
"""
import argparse
import sys

import triton
import triton.language as tl

MAX_SPINS = tl.constexpr(1 << 22)   # ~0.1-1 s of polling: far beyond any real per-step wait
CHUNK = 256    # columns per register tile: BLOCK_B x CHUNK fp32 stays well within registers
BLOCK_B = 16


@triton.jit(do_not_specialize=["T"])
def floor_kernel(p_x, p_h, p_count, T, B, H: tl.constexpr, G: tl.constexpr, COLS: tl.constexpr,
                 CHUNK: tl.constexpr, BLOCK_B: tl.constexpr, GRID_SYNC: tl.constexpr):
    # p_x: (T, B, G*H)   p_h: (T+1, B, H)   p_count: (1,) int32, zero at launch
    pid_b, pid_h = tl.program_id(0), tl.program_id(1)
    n_programs = tl.num_programs(0) * tl.num_programs(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    p_x_t, p_h_t = p_x, p_h   # advanced per step: pointer sums stay 64-bit where T*B*G*H would not
    for t in range(T):
        for c in tl.static_range(0, COLS, CHUNK):
            cols = pid_h * COLS + c + tl.arange(0, CHUNK)
            mask = row_ok[:, None] & (cols < H)[None, :]
            b_h = tl.load(p_h_t + rows[:, None] * H + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            for g in tl.static_range(G):
                b_h += tl.load(p_x_t + rows[:, None] * (G * H) + g * H + cols[None, :],
                               mask=mask, other=0.0).to(tl.float32)
            tl.store(p_h_t + B * H + rows[:, None] * H + cols[None, :],
                     b_h.to(p_h.dtype.element_ty), mask=mask)
        p_x_t += B * (G * H)
        p_h_t += B * H
        tl.debug_barrier()   # the CTA-wide sync a kernel needs before it reads h_t back
        if GRID_SYNC:
            tl.atomic_add(p_count, 1, sem="release")
            target = (t + 1) * n_programs
            seen = tl.atomic_add(p_count, 0, sem="acquire")
            spins = 0
            while (seen < target) & (spins < MAX_SPINS):   # capped: a broken residency assumption ends, not hangs
                seen = tl.atomic_add(p_count, 0, sem="acquire")
                spins += 1


def _pow2_at_least(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def plan(B, H, grid_sync, n_sms=None):
    """Launch geometry: (grid, COLS, chunk), or None when the grid variant cannot be co-resident."""
    n_b = -(-B // BLOCK_B)
    if not grid_sync:
        chunk = min(_pow2_at_least(H), CHUNK)
        return (n_b, 1), -(-H // chunk) * chunk, chunk
    splits = (n_sms or 1) // n_b
    if splits < 1:
        return None
    cols = max(16, _pow2_at_least(-(-H // splits)))
    return (n_b, -(-H // cols)), cols, min(cols, CHUNK)


def launch(x_proj, h, count, grid_sync, n_sms=None):
    """One pass over T: x_proj (T, B, G*H), h (T+1, B, H) torch tensors; count zeroed here."""
    T, B, H = h.shape[0] - 1, h.shape[1], h.shape[2]
    geometry = plan(B, H, grid_sync, n_sms)
    if geometry is None:
        raise ValueError(f"grid floor: expected at most {n_sms} resident programs, "
                         f"got {-(-B // BLOCK_B)} batch tiles alone")
    grid, cols, chunk = geometry
    count.zero_()
    floor_kernel[grid](x_proj, h, count, T, B, H=H, G=x_proj.shape[2] // H, COLS=cols, CHUNK=chunk,
                       BLOCK_B=BLOCK_B, GRID_SYNC=grid_sync)


def compile_for(arch, grid_sync, H=768, G=4, dtype="fp32"):
    """Compile ahead of time for sm_<arch>; returns the compiled kernel (no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _, cols, chunk = plan(64, H, grid_sync, n_sms=132)
    signature = {"p_x": f"*{dtype}", "p_h": f"*{dtype}", "p_count": "*i32", "T": "i32", "B": "i32",
                 "H": "constexpr", "G": "constexpr", "COLS": "constexpr", "CHUNK": "constexpr",
                 "BLOCK_B": "constexpr", "GRID_SYNC": "constexpr"}
    constexprs = {"H": H, "G": G, "COLS": cols, "CHUNK": chunk, "BLOCK_B": BLOCK_B, "GRID_SYNC": grid_sync}
    return triton.compile(ASTSource(floor_kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32))


SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="compile both variants for sm_90 and sm_80")
    args = parser.parse_args(argv)
    if not args.compile:
        parser.print_help()
        return 0
    failed = 0
    for arch in (90, 80):
        for grid_sync in (False, True):
            for dtype in ("fp32", "bf16"):
                shared = compile_for(arch, grid_sync, dtype=dtype).metadata.shared
                ok = shared <= SHARED_LIMIT[arch]
                failed += not ok
                print(f"sm_{arch} {'grid' if grid_sync else 'local'} {dtype}: shared {shared} B "
                      f"{'ok' if ok else 'over the limit'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
