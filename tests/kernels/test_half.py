"""Half data on the fused path under TRITON_INTERPRET=1: every buffer stays in the data's dtype,
and the torch modules match torch.nn run in float64 on the same (rounded) weights and data.

bf16 here runs with an fp32 tl.dot (with_io_dtype(None): W widened on chip), so that what is
tested is the bf16 data path (tensors, torch GEMMs, bf16 buffers, loads and stores). bf16 parity
with the bf16 tl.dot is GPU-only: the interpreter's bf16 dot gives wrong results
(profiling/gpu_check.py runs it against cuDNN on the GPU).
"""
import json

import numpy as np
import pytest
import torch

import gpurnn.nn as gnn
from gpurnn import engine
from kernel_cases import make_case, packed_sizes, run_uninterpreted, with_io_dtype
from torch_parity import outputs_and_grads

CELLS = ["elman", "lstm", "gru", "jordan"]


def _arrays(cell_obj, T):
    """The cell's per-step buffers of data: arrays whose first axis is T or T+1 (not the bool padding mask)."""
    return {k: v for k, v in vars(cell_obj).items()
            if isinstance(v, np.ndarray) and v.ndim >= 2 and v.shape[0] in (T, T + 1) and v.dtype != bool}


@pytest.mark.parametrize("cell", CELLS)
def test_buffers_stay_half(cell):
    T = 6
    case = make_case(cell, T, 3, 24, dtype=np.float16, O=5 if cell == "jordan" else None)
    y, state, saved = engine.forward(cell, case["x"], case["state0"], case["weights"], backend="triton",
                                     batch_sizes=packed_sizes(T, 3))
    forward_buffers = _arrays(saved.cell, T)
    dx, dstate0, grads = engine.backward(saved, case["dy"], case["dstate"])
    buffers = _arrays(saved.cell, T)
    assert len(buffers) > len(forward_buffers) >= 3, sorted(buffers)
    assert {k: str(v.dtype) for k, v in buffers.items()} == {k: "float16" for k in buffers}
    for out in (y, dx, *state, *dstate0, *(g for g in grads.values() if g is not None)):
        assert out.dtype == np.float16


MODULES = {"elman": (gnn.RNN, torch.nn.RNN), "lstm": (gnn.LSTM, torch.nn.LSTM), "gru": (gnn.GRU, torch.nn.GRU)}
# Norm-relative error of each output and gradient against float64 on the same rounded inputs:
# every stored value is rounded to the unit roundoff u (fp16 2^-11, bf16 2^-8) and a step's
# pre-activation sums a few rounded terms, so errors are a few u and the contractive recurrence
# does not grow them (measured here: fp16 <= 7.0e-4, bf16 <= 1.8e-2). 8u: fp16 3.9e-3, bf16 3.1e-2;
# a wrong gate, mask or step is an O(1) error.
REL = {torch.float16: 8 * 2.0 ** -11, torch.bfloat16: 8 * 2.0 ** -8}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", list(MODULES))
def test_module_half_matches_float64(cell, dtype, monkeypatch):
    if dtype == torch.bfloat16:
        with_io_dtype(monkeypatch, cell, None)   # see the module docstring
    mine_cls, ref_cls = MODULES[cell]
    torch.manual_seed(0)
    mine = mine_cls(5, 24, num_layers=2, bidirectional=True, backend="triton").to(dtype)
    ref = ref_cls(5, 24, num_layers=2, bidirectional=True).double()
    ref.load_state_dict(mine.state_dict())   # the half weights, exactly
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, 5, generator=g).to(dtype)
    states = [torch.randn(4, 3, 24, generator=g).to(dtype) for _ in range(2 if cell == "lstm" else 1)]
    hx = tuple(states) if cell == "lstm" else states[0]
    got = outputs_and_grads(mine, x, hx)
    want = outputs_and_grads(ref, x.double(), tuple(s.double() for s in states) if cell == "lstm" else hx.double())
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == dtype, key
        err = (got[key].double() - want[key]).norm() / want[key].norm()
        assert err <= REL[dtype], f"{key}: relative error {err:.2e} > {REL[dtype]:.2e}"


def test_hardware_tanh_for_bf16_forward_only(tmp_path):
    """Compiled (not interpreted): the bf16 forward kernels take the hardware's tanh (tanh.approx.f32,
    one instruction, error below bf16's rounding); fp16 and fp32 keep the exact formula (ex2, div)."""
    code = """
import json, importlib, compile_check as cc
out = {}
for cell in ("elman", "lstm", "gru", "jordan"):
    mod = importlib.import_module("gpurnn.kernels." + cell)
    for dtype in ("bfloat16", "float16", "float32"):
        for name, fn, sig, consts in mod.compile_targets(64, dtype, 90):
            if name in (cell + "_fwd", cell + "_bwd"):
                k, _, _ = cc.build(fn, sig, consts, 90, dict(B=16, H=64, O=16, nonlin=0))
                out[name + " " + dtype] = k.asm["ptx"].count("tanh.approx.f32")
print(json.dumps(out))
"""
    out = run_uninterpreted(code, tmp_path)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(counts) == 24
    for key, n in counts.items():
        assert (n > 0) == key.endswith("_fwd bfloat16"), (key, n)
