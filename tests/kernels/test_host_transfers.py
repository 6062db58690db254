"""No blocking host<->device copy or synchronisation in a repeated layer call (Triton backend, run here by
the interpreter): every call of torch's copying or synchronising functions from gpurnn's own
code (gpurnn/, kernels/) is counted during a second call of the same shape. torch.tensor counts
where it is given a device (the layer's handle is a host tensor by design); Tensor methods
count on the tensors that live on the GPU there (data and int32 sizes), not on a
PackedSequence's int64 batch_sizes, which torch keeps on the host; .numpy() is the host side of
the zero-copy conversion (CUDA tensors go through DLPack), so it is not counted."""
import sys
from pathlib import Path

import pytest
import torch

import gpurnn.nn as gnn

OURS = (str(Path(gnn.__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2] / "kernels"))
COPYING = {torch: ["tensor", "as_tensor"], torch.Tensor: ["item", "tolist", "cpu", "to", "__int__", "__float__",
                                                          "__bool__"]}


def _copies(owner, name, args, kwargs):
    if owner is torch:   # made from host data: a copy where it lands on a device
        return kwargs.get("device") is not None
    t = args[0]
    if not (t.is_floating_point() or t.dtype == torch.int32):
        return False
    return name != "to" or "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args[1:])


@pytest.fixture
def count_transfers(monkeypatch):
    calls = []
    for owner, names in COPYING.items():
        for name in names:
            original = getattr(owner, name)

            def counted(*args, _original=original, _owner=owner, _name=name, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(OURS) and _copies(_owner, _name, args, kwargs):
                    calls.append(f"{_name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
                return _original(*args, **kwargs)
            monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("kind,kw,offsets", [("LSTM", {}, 0), ("GRU", {"num_layers": 2}, 0),
                                              ("RNN", {"bidirectional": True}, 2)])
def test_a_repeated_layer_call_copies_nothing(kind, kw, offsets, count_transfers):
    from gpurnn.kernels import common

    m = getattr(gnn, kind)(8, 16, backend="triton", **kw)
    x = torch.randn(5, 3, 8, requires_grad=True)
    for _ in range(2):   # the first call fills the caches (sizes, direction offsets on the device)
        count_transfers.clear()
        made = common._offsets_tensor.cache_info().misses
        y, _ = m(x)
        y.sum().backward()
    assert count_transfers == []
    # a bidirectional launch passes direction 1's address offsets as a device tensor, made once per
    # distinct offsets (common._offsets_tensor): at most one per forward and backward launch, which
    # on CUDA is an asynchronous copy from pinned memory (the host does not wait)
    assert common._offsets_tensor.cache_info().misses - made <= offsets


def test_packed_outputs_are_zeroed_without_a_launch_per_step(count_transfers):
    from torch.nn.utils.rnn import pack_padded_sequence
    m = gnn.GRU(8, 16, backend="triton")
    x = pack_padded_sequence(torch.randn(6, 3, 8), [6, 4, 1])
    for _ in range(2):
        count_transfers.clear()
        m(x)
    assert count_transfers == []
