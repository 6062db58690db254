"""Elman kernels under TRITON_INTERPRET=1: against the engine's xp loop and torch.nn.RNN."""
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gpurnn.nn as gnn
from kernel_cases import (TOL, TOL_HALF, assert_all_close, assert_bitwise_equal, launches,  # noqa: F401
                          forced_split_k, make_case, nan_empty, packed_sizes, run, split_hidden,
                          with_io_dtype)
from torch_parity import assert_same, outputs_and_grads

# (T, B, H): the awkward sizes: B=1, 3, 17 (not a multiple of 16), H not a power of two,
# B=65 (five batch tiles of 16)
SIZES = {"T1-B1-H16": (1, 1, 16), "T2-B3-H48": (2, 3, 48), "T63-B17-H100": (63, 17, 100),
         "T5-B65-H16": (5, 65, 16)}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("size", SIZES)
def test_matches_engine_fp32(size, nonlinearity, nan_empty):
    T, B, H = SIZES[size]
    case = make_case("elman", T, B, H)
    assert_all_close(run(case, "triton", nonlinearity=nonlinearity),
                     run(case, "numpy", nonlinearity=nonlinearity), **TOL[np.float32])


@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_packed_and_reverse(packed, reverse, nan_empty):
    T, B, H = 9, 6, 20
    case = make_case("elman", T, B, H, seed=1)
    sizes = packed_sizes(T, B) if packed else None
    assert_all_close(run(case, "triton", batch_sizes=sizes, reverse=reverse),
                     run(case, "numpy", batch_sizes=sizes, reverse=reverse), **TOL[np.float32])


def test_float64_matches_to_ulps():
    case = make_case("elman", 7, 3, 48, dtype=np.float64)
    assert_all_close(run(case, "triton", batch_sizes=packed_sizes(7, 3)),
                     run(case, "numpy", batch_sizes=packed_sizes(7, 3)), **TOL[np.float64])


def test_float16_data_fp32_dot(monkeypatch):
    """fp16 data in fp16 buffers with an fp32 tl.dot (W widened on chip): only the storage rounds."""
    case = make_case("elman", 8, 3, 48, dtype=np.float16)
    ref = run(case, "numpy")
    with_io_dtype(monkeypatch, "elman", None)
    assert_all_close(run(case, "triton"), ref, **TOL_HALF)


def test_float16_dot(monkeypatch):
    """W on chip in fp16 and h rounded to fp16 for tl.dot, fp32 accumulation and carries."""
    case = make_case("elman", 8, 3, 48, dtype=np.float16)
    ref = run(case, "numpy")
    with_io_dtype(monkeypatch, "elman", "float16")
    assert_all_close(run(case, "triton"), ref, **TOL_HALF)


@pytest.mark.parametrize("io_dtype", [None, "float16"], ids=["fp32-dot", "fp16-dot"])
@pytest.mark.parametrize("nk", [1, 4])
def test_split_k_forward_matches_engine(nk, io_dtype, forced_split_k, monkeypatch, nan_empty):
    """The forward's dot, K = HP = 128, in nk chunks summed across warps (common.kdot)."""
    dtype = np.float32 if io_dtype is None else np.float16
    case = make_case("elman", 5, 17, 100, dtype=dtype, seed=4)
    ref = run(case, "numpy")
    with_io_dtype(monkeypatch, "elman", io_dtype)
    nks = forced_split_k(nk)
    assert_all_close(run(case, "triton"), ref, **(TOL_HALF if io_dtype else TOL[np.float32]))
    assert nks and set(nks) == {nk}


@pytest.mark.parametrize("T, B, H", [(2, 3, 48), (8, 17, 100)], ids=["T2-B3-H48", "T8-B17-H100"])
def test_split_hidden_matches_engine(T, B, H, split_hidden, launches, nan_empty):
    """Slices of 16 units (P = 3 or 7 programs per batch tile), one launch per step under the interpreter."""
    case = make_case("elman", T, B, H, seed=2)
    sizes = packed_sizes(T, B)
    assert_all_close(run(case, "triton", batch_sizes=sizes), run(case, "numpy", batch_sizes=sizes),
                     **TOL[np.float32])
    assert launches.count("_fwd_kernel") == T and launches.count("_bwd_kernel") == T + 1


def test_deterministic():
    case = make_case("elman", 20, 17, 48, seed=3)
    assert_bitwise_equal(run(case, "triton"), run(case, "triton"))


def test_launches_do_not_grow_with_T(launches):
    counts = []
    for T in (8, 64):
        launches.clear()
        run(make_case("elman", T, 3, 16), "triton")
        counts.append((launches.count("_fwd_kernel"), launches.count("_bwd_kernel")))
    assert counts == [(1, 1), (1, 1)]


def _torch_pair(**options):
    torch.manual_seed(0)
    ref = torch.nn.RNN(5, 20, **options)
    mine = gnn.RNN(5, 20, backend="triton", **options)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


@pytest.mark.parametrize("options", [{}, {"nonlinearity": "relu"}, {"num_layers": 2, "bidirectional": True}],
                         ids=["tanh", "relu", "2-layers-bidirectional"])
def test_module_matches_torch(options):
    ref, mine = _torch_pair(**options)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, 5, generator=g)
    h = torch.randn(ref.num_layers * (2 if ref.bidirectional else 1), 3, 20, generator=g)
    assert_same(outputs_and_grads(ref, x, h), outputs_and_grads(mine, x, h), torch.float32)


def test_module_packed_matches_torch():
    ref, mine = _torch_pair(bidirectional=True)
    g = torch.Generator().manual_seed(2)
    x = pack_padded_sequence(torch.randn(6, 4, 5, generator=g), torch.tensor([2, 6, 1, 4]),
                             enforce_sorted=False)
    h = torch.randn(2, 4, 20, generator=g)
    assert_same(outputs_and_grads(ref, x, h), outputs_and_grads(mine, x, h), torch.float32)


def test_relu_nan_as_torch(nan_empty):
    """A NaN pre-activation: relu keeps the NaN (torch.relu) and its backward passes the gradient (torch's
    threshold_backward zeroes it only where the output is <= 0), in the kernel as in the NumPy loop."""
    case = make_case("elman", 3, 2, 16)
    case["x"][0, 0, :] = np.nan
    got, ref = run(case, "triton", nonlinearity="relu"), run(case, "numpy", nonlinearity="relu")
    assert np.isnan(ref["y"][:, 0]).all() and np.isfinite(ref["d_b_hh"]).all()
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=key)
