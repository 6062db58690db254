"""Saved-tensor hooks that allow one unpack only (non-reentrant checkpointing, offloading stores that hand each
tensor back once), around the engine's layers: backward as torch.nn's."""
import functools

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

import gpurnn.nn as gnn


def _popping_store():
    """An offloading store that keeps a copy of each saved tensor and hands it back once."""
    store = {}

    def pack(t):
        store[len(store)] = t.detach().clone()
        return len(store) - 1
    return saved_tensors_hooks(pack, store.pop)


def _run(lib, name, how):
    torch.manual_seed(0)
    m = getattr(lib, name)(3, 4, num_layers=2)
    x = torch.randn(6, 2, 3, requires_grad=True)
    if how == "checkpoint, then a weight changed in place":   # the recomputation reads the changed weight
        y = checkpoint(lambda x: m(x)[0], x, use_reentrant=False)
        with torch.no_grad():
            m.weight_hh_l0.mul_(0.5)
    elif how == "selective checkpoint, everything saved":
        policy = functools.partial(create_selective_checkpoint_contexts, lambda *a, **k: CheckpointPolicy.MUST_SAVE)
        y = checkpoint(lambda x: m(x)[0], x, use_reentrant=False, context_fn=policy)
    else:
        with _popping_store():
            y = m(x)[0]
    y.sum().backward()
    return [x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("how", ["checkpoint, then a weight changed in place", "selective checkpoint, everything saved",
                                 "a store that hands each tensor back once"])
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_backward_unpacks_the_saved_tensors_once(name, how, monkeypatch):
    """The engine's tape was gone (the handle copied, a weight changed): backward reran the layer and unpacked
    the saved tensors a second time, which those hooks refuse (CheckpointError, KeyError)."""
    if name == "GRU" and how.startswith("selective"):
        pytest.skip("torch.nn's GRU fails there: 'Tensor cached during selective activation checkpoint has been "
                    "mutated' (its CPU op changes a saved tensor in place)")
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    for got, want in zip(_run(gnn, name, how), _run(torch.nn, name, how)):
        torch.testing.assert_close(got, want)
