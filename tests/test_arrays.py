"""gpurnn.arrays: the helpers that let the fused path's glue run on NumPy, CuPy and torch alike."""
import numpy as np
import pytest
import torch

from gpurnn import arrays


@pytest.mark.parametrize("precision, inside", [("ieee", False), ("tf32x3", False), ("tf32", True)])
@pytest.mark.parametrize("outside", [False, True])
def test_gemm_precision_follows_the_option_not_torch(precision, inside, outside, monkeypatch):
    monkeypatch.setenv("GPURNN_FP32_PRECISION", precision)
    flags, name, on, off = arrays._tf32_flag()
    before = getattr(flags, name)
    setattr(flags, name, on if outside else off)
    try:
        with arrays.gemm_precision():
            with arrays.gemm_precision():   # nested: one switch
                assert getattr(flags, name) == (on if inside else off)
            assert getattr(flags, name) == (on if inside else off)
        assert getattr(flags, name) == (on if outside else off)
    finally:
        setattr(flags, name, before)


def test_gemm_precision_rejects_an_unknown_option(monkeypatch):
    monkeypatch.setenv("GPURNN_FP32_PRECISION", "fast")
    with pytest.raises(ValueError, match="GPURNN_FP32_PRECISION: expected one of .*'fast'"):
        with arrays.gemm_precision():
            pass


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_sum_rows_of_half_data_accumulates_in_float32(make):
    a = make(np.ones((3000, 2, 3), np.float16))   # 6000 per column: fp16 accumulation stops at 2048
    got = arrays.sum_rows(a)
    assert arrays.dtype_name(got.dtype) == "float32"
    assert np.asarray(got).tolist() == [6000.0] * 3


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
@pytest.mark.parametrize("reverse", [False, True])
def test_astype_copies_contiguous_and_reverses_time(make, reverse):
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for view in (lambda b: b[:, :, ::2], lambda b: b.swapaxes(0, 1)):   # strided, and dense but permuted
        a = view(make(base))
        want = view(base)[::-1] if reverse else view(base)
        for copy in (True, False):
            got = arrays.astype(a, a.dtype, copy=copy, reverse=reverse)
            np.testing.assert_array_equal(np.asarray(got), want)
            assert (got.flags.c_contiguous if make is np.asarray else got.is_contiguous())
        got[...] = -1   # a copy: the source is untouched
        np.testing.assert_array_equal(np.asarray(a), view(base))


@pytest.mark.parametrize("dtype, fused, want", [
    (np.float16, False, "float32"), (np.float16, True, "float16"), (np.float64, False, "float64"),
    (torch.bfloat16, True, "bfloat16"), (torch.bfloat16, False, "float32"), (torch.float32, True, "float32")])
def test_compute_dtype(dtype, fused, want):
    got = arrays.compute_dtype(dtype, fused)
    assert arrays.dtype_name(got) == want
    assert isinstance(got, torch.dtype) == isinstance(dtype, torch.dtype)
