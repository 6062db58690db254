"""GRU kernels under TRITON_INTERPRET=1: against the engine's xp loop and torch.nn.GRU; ptxas spills."""
import json

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gpurnn.nn as gnn
from gpurnn.kernels import common as cm
from gpurnn.kernels import gru
from kernel_cases import (run_uninterpreted, TOL, TOL_HALF, assert_all_close, assert_bitwise_equal, launches,  # noqa: F401
                          forced_split_k, launch_kwargs, make_case, nan_empty, packed_sizes, run, split_hidden,
                          with_io_dtype)
from torch_parity import assert_same, outputs_and_grads

# (T, B, H): B=1, 3, 17 (not a multiple of 16: two batch tiles), H not a power of two.
# H=100 in fp32 exceeds one program's W budget: it runs split (stepwise under the interpreter,
# one launch per step, so it gets a short T to keep this file fast).
SIZES = {"T1-B1-H16": (1, 1, 16), "T2-B3-H100": (2, 3, 100), "T63-B17-H48": (63, 17, 48)}


@pytest.mark.parametrize("size", SIZES)
def test_matches_engine_fp32(size, nan_empty):
    T, B, H = SIZES[size]
    case = make_case("gru", T, B, H)
    assert_all_close(run(case, "triton"), run(case, "numpy"), **TOL[np.float32])


@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_packed_and_reverse(packed, reverse, nan_empty):
    T, B, H = 9, 6, 20
    case = make_case("gru", T, B, H, seed=1)
    sizes = packed_sizes(T, B) if packed else None
    assert_all_close(run(case, "triton", batch_sizes=sizes, reverse=reverse),
                     run(case, "numpy", batch_sizes=sizes, reverse=reverse), **TOL[np.float32])


def test_single_step_reverse(nan_empty):
    """T=1 reversed: a length-1 flipped axis keeps a negative stride unless the engine copies it."""
    case = make_case("gru", 1, 3, 20, seed=2)
    assert_all_close(run(case, "triton", reverse=True), run(case, "numpy", reverse=True), **TOL[np.float32])


def test_no_bias(nan_empty):
    case = make_case("gru", 5, 3, 20, seed=4)
    case["weights"].update(b_ih=None, b_hh=None)
    assert_all_close(run(case, "triton"), run(case, "numpy"), **TOL[np.float32])


def test_float64_matches_to_ulps():
    case = make_case("gru", 7, 3, 48, dtype=np.float64)
    assert_all_close(run(case, "triton", batch_sizes=packed_sizes(7, 3)),
                     run(case, "numpy", batch_sizes=packed_sizes(7, 3)), **TOL[np.float64])


def test_float16_data_fp32_dot(monkeypatch):
    """fp16 data in fp16 buffers with an fp32 tl.dot (W widened on chip): only the storage rounds."""
    case = make_case("gru", 8, 3, 48, dtype=np.float16)
    ref = run(case, "numpy")
    with_io_dtype(monkeypatch, "gru", None)
    assert_all_close(run(case, "triton"), ref, **TOL_HALF)


def test_float16_dot(monkeypatch):
    """W on chip in fp16 and h rounded to fp16 for tl.dot, fp32 accumulation and carries."""
    case = make_case("gru", 8, 3, 48, dtype=np.float16)
    ref = run(case, "numpy")
    with_io_dtype(monkeypatch, "gru", "float16")
    assert_all_close(run(case, "triton"), ref, **TOL_HALF)


@pytest.mark.parametrize("io_dtype", [None, "float16"], ids=["fp32", "fp16"])
@pytest.mark.parametrize("nk", [2, 4])
def test_split_k_forward_matches_engine(nk, io_dtype, forced_split_k, monkeypatch, nan_empty):
    """The forward's dot, K = HP = 64, in nk chunks summed across warps (common.kdot)."""
    dtype = np.float32 if io_dtype is None else np.float16
    case = make_case("gru", 5, 17, 48, dtype=dtype, seed=4)
    ref = run(case, "numpy")
    with_io_dtype(monkeypatch, "gru", io_dtype)
    nks = forced_split_k(nk)
    assert_all_close(run(case, "triton"), ref, **(TOL_HALF if io_dtype else TOL[np.float32]))
    assert nks and set(nks) == {nk}


def test_launch_options_are_the_shared_config(launch_kwargs):
    """Both launchers pass common.tile_config's launch options (one rule for every cell)."""
    seen = launch_kwargs
    run(make_case("gru", 2, 3, 20), "triton")
    for name, direction in (("_fwd_kernel", "fwd"), ("_bwd_kernel", "bwd")):
        cfg = cm.tile_config(20, 3, gru.GP, 4, direction)
        assert {k: seen[name][k] for k in (*cfg.options(), "S", "P")} == dict(
            cfg.options(), S=cfg.S, P=cfg.P), name


def test_no_spills_where_they_were(tmp_path):
    """ptxas -v (profiling/compile_check.compile_one) on sm_80, where the GRU's own warp rule without
    the register cap spilled: fp32 H=128 forward 32 B and backward 16 B, fp16 H=64 backward 24 B."""
    names = {}
    for H, dtype, kernel in ((128, "float32", "gru_fwd"), (128, "float32", "gru_bwd"), (64, "float16", "gru_bwd")):
        index = [t[0] for t in gru.compile_targets(H, dtype, 80)].index(kernel)
        names[(gru.__name__, index, H, dtype, 80)] = kernel
    code = f"import json, compile_check as cc; print(json.dumps([cc.compile_one(j) for j in {list(names)!r}]))"
    out = run_uninterpreted(code, tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["kernel"], r["hidden"], r["dtype"]) for r in rows] == [(k, j[2], j[3]) for j, k in names.items()]
    for r in rows:
        assert r["error"] is None and r["spill"] == 0 and "maxnreg=" in r["config"], r


@pytest.mark.parametrize("T, B, H", [(2, 3, 48), (5, 17, 40)], ids=["T2-B3-H48", "T5-B17-H40"])
def test_split_hidden_matches_engine(T, B, H, split_hidden, launches, nan_empty):
    """Slices of 16 units (P = 3 programs per batch tile), one launch per step under the interpreter;
    packed, so rows leave mid-window and the carried dh z term crosses launches."""
    case = make_case("gru", T, B, H, seed=2)
    sizes = packed_sizes(T, B)
    assert_all_close(run(case, "triton", batch_sizes=sizes), run(case, "numpy", batch_sizes=sizes),
                     **TOL[np.float32])
    assert launches.count("_fwd_kernel") == T and launches.count("_bwd_kernel") == T + 1


def test_deterministic():
    case = make_case("gru", 10, 17, 48, seed=3)
    assert_bitwise_equal(run(case, "triton"), run(case, "triton"))


def test_launches_do_not_grow_with_T(launches):
    counts = []
    for T in (8, 64):
        launches.clear()
        run(make_case("gru", T, 3, 16), "triton")
        counts.append((launches.count("_fwd_kernel"), launches.count("_bwd_kernel")))
    assert counts == [(1, 1), (1, 1)]


def _torch_pair(**options):
    torch.manual_seed(0)
    ref = torch.nn.GRU(5, 20, **options)
    mine = gnn.GRU(5, 20, backend="triton", **options)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _state(ref, B, g):
    L = ref.num_layers * (2 if ref.bidirectional else 1)
    return torch.randn(L, B, 20, generator=g)


@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True}],
                         ids=["plain", "2-layers-bidirectional"])
def test_module_matches_torch(options):
    ref, mine = _torch_pair(**options)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, 5, generator=g)
    hx = _state(ref, 3, g)
    assert_same(outputs_and_grads(ref, x, hx), outputs_and_grads(mine, x, hx), torch.float32)


def test_module_packed_matches_torch():
    ref, mine = _torch_pair(bidirectional=True)
    g = torch.Generator().manual_seed(2)
    x = pack_padded_sequence(torch.randn(6, 4, 5, generator=g), torch.tensor([2, 6, 1, 4]),
                             enforce_sorted=False)
    hx = _state(ref, 4, g)
    assert_same(outputs_and_grads(ref, x, hx), outputs_and_grads(mine, x, hx), torch.float32)


def test_compile_fullgraph_runs_the_triton_kernels():
    """Under TRITON_INTERPRET=1 (conftest) on the CPU: dynamo traced backends.resolve's probes for CuPy and failed
    ("Import failure") where CuPy is absent; resolve runs in plain Python now."""
    torch.manual_seed(0)
    m, x = gnn.GRU(3, 4, backend="triton"), torch.randn(5, 2, 3)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(m, backend="aot_eager", fullgraph=True)(x)[0], m(x)[0])
