"""Jordan kernels under TRITON_INTERPRET=1: against the engine's xp loop and the plain torch loop."""
import json

import numpy as np
import pytest
import torch

import gpurnn.nn as gnn
from gpurnn.kernels import common as cm
from gpurnn.kernels import jordan
from jordan_reference import jordan_reference
from kernel_cases import (run_uninterpreted, TOL, TOL_HALF, assert_all_close, assert_bitwise_equal, launches,  # noqa: F401
                          launch_kwargs, make_case, nan_empty, packed_sizes, run, split_hidden, with_io_dtype)
from torch_parity import TOL as TORCH_TOL

ACTS = ("identity", "tanh", "sigmoid", "softmax")
# (T, B, H, O): B=1, 3, 17 (not a multiple of 16: two batch tiles), H and O not powers of two
SIZES = {"T1-B1-H16-O3": (1, 1, 16, 3), "T2-B3-H100-O5": (2, 3, 100, 5), "T63-B17-H48-O10": (63, 17, 48, 10)}


def _teacher(T, B, O, seed=5):
    return np.random.default_rng(seed).standard_normal((T, B, O)).astype(np.float32)


@pytest.mark.parametrize("size", SIZES)
def test_matches_engine_fp32(size, nan_empty):
    T, B, H, O = SIZES[size]
    case = make_case("jordan", T, B, H, O=O)
    opts = dict(output_activation="tanh")
    assert_all_close(run(case, "triton", **opts), run(case, "numpy", **opts), **TOL[np.float32])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("act", ACTS)
def test_output_activations(act, nonlinearity, nan_empty):
    case = make_case("jordan", 9, 17, 20, O=7, seed=1)
    opts = dict(output_activation=act, nonlinearity=nonlinearity)
    assert_all_close(run(case, "triton", **opts), run(case, "numpy", **opts), **TOL[np.float32])


@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_teacher_forcing_packed_and_reverse(packed, reverse, nan_empty):
    """The state takes teacher_t, and no gradient flows from the state into y_t."""
    T, B, H, O = 9, 6, 20, 4
    case = make_case("jordan", T, B, H, O=O, seed=2)
    opts = dict(output_activation="sigmoid", teacher=_teacher(T, B, O),
                batch_sizes=packed_sizes(T, B) if packed else None, reverse=reverse)
    assert_all_close(run(case, "triton", **opts), run(case, "numpy", **opts), **TOL[np.float32])


def test_no_bias(nan_empty):
    case = make_case("jordan", 5, 3, 20, O=4, seed=4)
    case["weights"].update(b_h=None, b_o=None)
    opts = dict(output_activation="softmax")
    assert_all_close(run(case, "triton", **opts), run(case, "numpy", **opts), **TOL[np.float32])


def test_float64_matches_to_ulps():
    case = make_case("jordan", 7, 3, 48, O=6, dtype=np.float64)
    opts = dict(output_activation="softmax", batch_sizes=packed_sizes(7, 3))
    assert_all_close(run(case, "triton", **opts), run(case, "numpy", **opts), **TOL[np.float64])


def test_float16_data_fp32_dot(monkeypatch):
    """fp16 data in fp16 buffers with an fp32 tl.dot (W widened on chip): only the storage rounds."""
    case = make_case("jordan", 8, 3, 48, O=6, dtype=np.float16)
    opts = dict(output_activation="tanh")
    ref = run(case, "numpy", **opts)
    with_io_dtype(monkeypatch, "jordan", None)
    assert_all_close(run(case, "triton", **opts), ref, **TOL_HALF)


def test_float16_dot(monkeypatch):
    """W on chip in fp16 and s, h, da, dz rounded to fp16 for tl.dot, fp32 accumulation and carries."""
    case = make_case("jordan", 8, 3, 48, O=6, dtype=np.float16)
    opts = dict(output_activation="softmax")
    ref = run(case, "numpy", **opts)
    with_io_dtype(monkeypatch, "jordan", "float16")
    assert_all_close(run(case, "triton", **opts), ref, **TOL_HALF)


@pytest.mark.parametrize("T, teacher", [(2, False), (5, True)], ids=["T2", "T5-teacher"])
def test_split_hidden_matches_engine(T, teacher, split_hidden, launches, nan_empty):
    """Slices of 16 units (P = 3 programs per batch tile), one launch per iteration under the interpreter:
    the shares of W_ho h and of dz W_sh are summed across launches, the ds carry alternates buffers
    (an odd and an even number of backward launches)."""
    B, H, O = 17, 40, 5
    case = make_case("jordan", T, B, H, O=O, seed=3)
    opts = dict(output_activation="softmax", batch_sizes=packed_sizes(T, B),
                teacher=_teacher(T, B, O) if teacher else None)
    assert_all_close(run(case, "triton", **opts), run(case, "numpy", **opts), **TOL[np.float32])
    assert launches.count("_fwd_kernel") == T + 1 and launches.count("_bwd_kernel") == T + 1


def test_deterministic():
    case = make_case("jordan", 20, 17, 48, O=10, seed=3)
    opts = dict(output_activation="softmax")
    assert_bitwise_equal(run(case, "triton", **opts), run(case, "triton", **opts))


def test_launches_do_not_grow_with_T(launches):
    counts = []
    for T in (8, 64):
        launches.clear()
        run(make_case("jordan", T, 3, 16, O=4), "triton")
        counts.append((launches.count("_fwd_kernel"), launches.count("_bwd_kernel")))
    assert counts == [(1, 1), (1, 1)]


@pytest.mark.parametrize("dtype, elem_bytes", [(np.float32, 4), (np.float16, 2)], ids=["fp32", "fp16"])
def test_launch_options_are_the_shared_rule(dtype, elem_bytes, launch_kwargs, monkeypatch):
    """Warps from common.warps_for for the real W dtype (not the fractional bytes per unit that size
    the slices; H=1024 fp32 counts 1 byte per unit there, which would read as tensor cores), with
    the (BB, OP) share as its HP; the register cap of common.Config; slices as before."""
    seen = launch_kwargs
    H, O = 1024, 40   # OP = 64
    if dtype == np.float16:
        with_io_dtype(monkeypatch, "jordan", "float16")
    run(make_case("jordan", 1, 2, H, O=O, I=2, dtype=dtype), "triton")
    unit = jordan.W_SHARE * 2 * 64 * elem_bytes / H   # W bytes per hidden unit, in tile_config's units
    for name, direction in (("_fwd_kernel", "fwd"), ("_bwd_kernel", "bwd")):
        cfg = cm.tile_config(H, 2, 1, unit, direction)
        # except the fp32 forward: 8 warps (jordan._config)
        warps = 8 if direction == "fwd" and elem_bytes == 4 else cm.warps_for(64, elem_bytes, direction)
        assert {k: seen[name][k] for k in ("num_warps", "maxnreg", "S", "P")} == dict(
            num_warps=warps, maxnreg=min(255, 65536 // (32 * warps)), S=cfg.S, P=cfg.P), name


def test_backward_no_spills_where_they_were(tmp_path):
    """ptxas -v (profiling/compile_check.compile_one): fp16 H=128 backward on sm_80 spilled 64 B
    before both of its dot operands were pinned (common.pin)."""
    index = [t[0] for t in jordan.compile_targets(128, "float16")].index("jordan_bwd")
    job = (jordan.__name__, index, 128, "float16", 80)
    out = run_uninterpreted(f"import json, compile_check as cc; print(json.dumps(cc.compile_one({job!r})))",
                            tmp_path)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["kernel"] == "jordan_bwd" and row["error"] is None and row["spill"] == 0, row


def _module(act, **kw):
    torch.manual_seed(0)
    return gnn.JordanRNN(5, 20, 4, output_activation=act, decay=torch.tensor([0.0, 0.3, 0.7, 1.0]),
                         backend="triton", **kw)


def _grads(m, fn, x, s0):
    """fn() -> (y, s_next); backward of a fixed random projection; every output and gradient."""
    m.zero_grad()
    x.grad = s0.grad = None
    y, s = fn()
    g = torch.Generator().manual_seed(1)
    ((y * torch.randn(y.shape, generator=g)).sum() + (s * torch.randn(s.shape, generator=g)).sum()).backward()
    return [y, s, x.grad, s0.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("teacher", [False, True], ids=["free", "teacher"])
@pytest.mark.parametrize("act", ACTS)
def test_module_matches_torch_loop(act, teacher):
    m = _module(act)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, 5, generator=g, requires_grad=True)
    s0 = torch.randn(3, 4, generator=g, requires_grad=True)
    tf = torch.randn(7, 3, 4, generator=g) if teacher else None
    params = [m.weight_ih, m.weight_sh, m.bias_h, m.weight_ho, m.bias_o, m.decay]
    mine = _grads(m, lambda: m(x, s0, tf), x, s0)
    ref = _grads(m, lambda: jordan_reference(x, s0, *params, output_activation=act, teacher=tf), x, s0)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, **TORCH_TOL[torch.float32])


def test_module_chunks_chain():
    """Two chunks back to back, the state carried (and differentiated) across, equal the whole sequence."""
    m = _module("softmax")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 3, 5, generator=g, requires_grad=True)
    s0 = torch.randn(3, 4, generator=g, requires_grad=True)

    def chunked():
        y1, s1 = m(x[:4], s0)
        y2, s2 = m(x[4:], s1)
        return torch.cat([y1, y2]), s2

    whole = _grads(m, lambda: m(x, s0), x, s0)
    for a, b in zip(_grads(m, chunked, x, s0), whole):
        torch.testing.assert_close(a, b, **TORCH_TOL[torch.float32])
