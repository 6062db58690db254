"""gpurnn.arrays: the helpers that let the fused path's glue run on NumPy, CuPy and torch alike."""
import numpy as np
import pytest
import torch

from gpurnn import arrays


@pytest.mark.parametrize("precision, inside", [("ieee", False), ("tf32x3", False), ("tf32", True)])
@pytest.mark.parametrize("outside", [False, True])
def test_gemm_precision_follows_the_option_not_torch(precision, inside, outside, monkeypatch):
    monkeypatch.setenv("GPURNN_FP32_PRECISION", precision)
    flags = torch.backends.cuda.matmul
    before, flags.allow_tf32 = flags.allow_tf32, outside
    try:
        with arrays.gemm_precision():
            assert flags.allow_tf32 is inside
        assert flags.allow_tf32 is outside
    finally:
        flags.allow_tf32 = before


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
    a = make(base)[:, :, ::2] if make is np.asarray else make(base)[:, :, 0::2]
    got = arrays.astype(a, a.dtype, reverse=reverse)
    want = base[:, :, ::2][::-1] if reverse else base[:, :, ::2]
    np.testing.assert_array_equal(np.asarray(got), want)
    assert (got.flags.c_contiguous if make is np.asarray else got.is_contiguous())
    got[...] = -1   # a copy: the source is untouched
    np.testing.assert_array_equal(np.asarray(a), base[:, :, ::2])


@pytest.mark.parametrize("dtype, fused, want", [
    (np.float16, False, "float32"), (np.float16, True, "float16"), (np.float64, False, "float64"),
    (torch.bfloat16, True, "bfloat16"), (torch.bfloat16, False, "float32"), (torch.float32, True, "float32")])
def test_compute_dtype(dtype, fused, want):
    got = arrays.compute_dtype(dtype, fused)
    assert arrays.dtype_name(got) == want
    assert isinstance(got, torch.dtype) == isinstance(dtype, torch.dtype)
