"""Run a torch.nn twin and a gpurnn module on the same data; collect every output and gradient."""
import torch
from torch.nn.utils.rnn import PackedSequence

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10),   # same arithmetic, different summation order
       torch.float32: dict(atol=1e-5, rtol=1e-5)}     # ~100 ulps of fp32 after T steps of BPTT


def _leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


def outputs_and_grads(module, inp, hx):
    """Forward, then backward of a fixed random projection of every output; returns named tensors."""
    module.zero_grad()
    packed = isinstance(inp, PackedSequence)
    x = inp if packed else _leaf(inp)
    if packed:
        x = PackedSequence(_leaf(inp.data), inp.batch_sizes, inp.sorted_indices, inp.unsorted_indices)
    h = tuple(_leaf(t) for t in hx) if isinstance(hx, tuple) else _leaf(hx)
    y, hn = module(x, h)
    y_data = y.data if packed else y
    finals = list(hn) if isinstance(hn, tuple) else [hn]
    gen = torch.Generator().manual_seed(1)
    # drawn in float64 whatever the dtype, so that modules of different dtypes get the same projection
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum()
               for t in [y_data] + finals)
    loss.backward()
    got = {"output": y_data, **{f"final{i}": f for i, f in enumerate(finals)},
           "d_input": (x.data if packed else x).grad}
    for i, t in enumerate(h if isinstance(h, tuple) else (h,)):
        if t is not None:
            got[f"d_hx{i}"] = t.grad
    got.update({f"d_{name}": p.grad for name, p in module.named_parameters()})
    return got


def assert_same(ref, mine, dtype):
    assert ref.keys() == mine.keys()
    for key in ref:
        assert ref[key] is not None and mine[key] is not None, key
        torch.testing.assert_close(mine[key], ref[key], **TOL[dtype], msg=lambda m: f"{key}: {m}")
