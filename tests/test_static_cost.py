"""profiling/static_cost.py: the SASS reader on a hand-written listing, and real compiles (no GPU)."""
import inspect
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "profiling"))
import static_cost  # noqa: E402
from gpurnn.kernels import common as cm  # noqa: E402
from kernel_cases import run_uninterpreted  # noqa: E402


def _line_in(jit_fn, text="def "):
    """The (file, line) of the first line of a @triton.jit function of kernels/common.py containing text."""
    lines, first = inspect.getsourcelines(jit_fn.fn)
    return inspect.getsourcefile(jit_fn.fn), first + next(i for i, line in enumerate(lines) if text in line)


def _listing(body_where, nested_where):
    """An nvdisasm -c -g style listing: setup, a time loop with a nested loop, exit."""
    f_body, l_body = body_where
    f_nest, l_nest = nested_where
    f_ex, l_ex = _line_in(cm.load_exchange, "return")
    return f"""
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
.L_x_5:
	//## File "{f_body}", line {l_body}
        /*0020*/                   HMMA.16816.F32.BF16 R8, R4, R6, RZ ;
        /*0030*/                   HMMA.1688.F32.TF32 R8, R4, R6, R8 ;
        /*0040*/                   LDSM.16.M88.4 R12, [R2+UR6] ;
        /*0050*/                   LDS.64 R14, [R3] ;
        /*0060*/                   STS.128 [R3], R4 ;
        /*0070*/               @P1 LDG.E.U16 R16, desc[UR4][R18.64] ;
        /*0080*/                   STG.E desc[UR4][R18.64], R16 ;
	//## File "{f_ex}", line {l_ex}
        /*0090*/                   LDG.E.128.STRONG.GPU R20, desc[UR4][R22.64] ;
.L_x_6:
	//## File "{f_nest}", line {l_nest}
        /*00a0*/                   LDG.E.64.STRONG.GPU R24, desc[UR4][R26.64] ;
        /*00b0*/              @!P2 BRA `(.L_x_6) ;
	//## File "{f_body}", line {l_body}
        /*00c0*/               @P4 BRA `(.L_x_5) ;
        /*00d0*/                   EXIT ;
.L_x_7:
        /*00e0*/                   BRA `(.L_x_7);
"""


def test_reads_the_time_loop_with_a_partial_sum_loop_run_P_times():
    body = _line_in(cm.kdot)
    cost = static_cost.time_loop_cost(_listing(body, _line_in(cm.sum_partials, "acc +=")), warps=8, P=3)
    lanes = 8 * 32
    assert cost["mma"] == 8 * 1.5                                  # 16816 + 1688 on each of 8 warps
    assert cost["smem_read"] == 8 * 512 + lanes * 8                # LDSM x4 + LDS.64
    assert cost["smem_write"] == lanes * 16
    assert cost["load"] == lanes * 2                               # the one streaming load in the loop
    assert cost["store"] == lanes * 4
    assert cost["exchange"] == lanes * 16 + 3 * lanes * 8          # load_exchange + P x sum_partials
    assert cost["instr"] == 8 * (9 + 3 * 2)                       # 9 in the loop, 2 in the nested one


def test_barrier_spin_counts_one_poll_and_no_bytes():
    cost = static_cost.time_loop_cost(_listing(_line_in(cm.kdot), _line_in(cm.wait, "while")), warps=4, P=7)
    assert cost["exchange"] == 4 * 32 * 16      # only load_exchange: the counter poll is not traffic
    assert cost["instr"] == 4 * (9 + 2)


def test_row_block_loop_runs_once_per_block():
    """The loop over a wide fp32 tile's row blocks (Config.rb) runs BB / RB times a step."""
    cost = static_cost.time_loop_cost(_listing(_line_in(cm.kdot), _line_in(cm.h_dot_w, "out3 = tl.where")),
                                      warps=4, P=2, blocks=4)
    assert cost["load"] == 4 * 32 * 2 + 4 * 4 * 32 * 8   # the body's load, and the nested one 4 times
    assert cost["instr"] == 4 * (9 + 4 * 2)


def test_a_nested_loop_of_unknown_trip_count_is_an_error():
    with pytest.raises(ValueError, match="unknown trip count"):
        static_cost.time_loop_cost(_listing(_line_in(cm.kdot), _line_in(cm.kdot)), warps=4, P=2)


def test_no_loop_is_an_error():
    with pytest.raises(ValueError, match="no loop"):
        static_cost.time_loop_cost("        /*0000*/                   EXIT ;\n", warps=4, P=1)


def test_mma_minimum_uses_real_sizes():
    cfg = cm.Config(BB=16, HP=1024, S=8, P=96, num_warps=8, mode="split")
    assert static_cost.mma_min(cfg, 4, 768, 16, "fwd") == 1 * 4 * 48     # N = 8 units x 4 gates, K = 768
    assert static_cost.mma_min(cfg, 4, 768, 16, "bwd") == 1 * 96 * 2     # N = 768, K = 32


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sc")
    args = ["--cells", "lstm", "--hidden", "128", "768", "--batch", "16", "--dtypes", "bfloat16",
            "--archs", "90", "--out", "t.md", "--json", "t.json"]
    out = run_uninterpreted(f"import sys, static_cost as s; sys.exit(s.main({args!r}))", tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads((tmp / "t.json").read_text()), (tmp / "t.md").read_text()


def test_report_rows_from_real_compiles(report):
    rows, table = report
    assert len(rows) == 6                                  # 2 H x fwd/bwd, and H=768's split tile in Gluon
    assert all(tuple(r) == static_cost.KEYS for r in rows)
    gluon = {r["direction"]: r for r in rows if r["kernel"] == "gluon"}
    rows = [r for r in rows if r["kernel"] == "triton"]
    by = {(r["H"], r["direction"]): r for r in rows}
    for r in rows:
        assert r["arch"] == "sm_90" and r["sms"] == 132 and r["regs"] > 0
        assert r["mma_per_step"] >= r["mma_min_per_step"] > 0
        assert r["global_store_bytes_per_step"] > 0
        # a single-mode program keeps its whole state on chip: nothing to exchange, one program per tile
        assert (r["mode"] == "single") == (r["exchange_bytes_per_step"] == 0) == (r["programs"] == 1)
    split = by[(768, "fwd")]
    assert split["mode"] == "split" and split["programs"] > 1
    # every program reads the real h of its batch tile in bf16 (the bound), and stores nothing
    # for the others beyond its output
    assert split["exchange_bytes_per_step"] == split["programs"] * 16 * 768 * 2
    assert table.count("| lstm |") == 6
    # the Gluon kernels at the headline tile: every MMA once, no spill, W in registers (the forward's
    # shared memory holds only its K-chunk sums), less shared memory read a step than the W tile
    assert set(gluon) == {"fwd", "bwd"}
    for d, r in gluon.items():
        triton = by[(768, d)]
        assert (r["H"], r["mode"], r["programs"]) == (768, "split", triton["programs"])
        assert r["mma_per_step"] == r["mma_min_per_step"] and r["spill_bytes"] == 0
        assert r["smem_read_bytes_per_step"] <= r["w_tile_bytes"] == 768 * 8 * 4 * 2
        assert r["smem_read_bytes_per_step"] < triton["smem_read_bytes_per_step"]
        assert r["exchange_bytes_per_step"] == triton["exchange_bytes_per_step"]
    assert gluon["fwd"]["smem_bytes"] < gluon["fwd"]["w_tile_bytes"]


def test_line_info_from_another_checkout_is_read_in_this_one():
    """Triton's cache keys kernels by source, so a cubin compiled in a CI clone names the clone's files."""
    path, line = _line_in(cm.kdot)
    elsewhere = "/no/such/clone/kernels/" + Path(path).name
    assert static_cost.local_source(elsewhere) == path
    assert static_cost.function_at((elsewhere, line)) == static_cost.function_at((path, line)) == "kdot"
    assert static_cost.function_at(("/no/such/file.py", line)) is None
