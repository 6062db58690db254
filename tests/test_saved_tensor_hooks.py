"""Saved-tensor hooks that allow one unpack only (non-reentrant checkpointing, offloading stores that hand each
tensor back once), around the engine's layers: backward as torch.nn's."""
import contextlib
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


def _changed_after_forward(lib, name, changed, kwargs, hooks):
    """Gradients (or the error) of a layer whose input or weight is changed in place between forward and backward."""
    torch.manual_seed(0)
    m = getattr(lib, name)(3, 4, **kwargs)
    x = torch.randn(6, 2, 3, requires_grad=True)
    x_in = x * 1   # changed in place below; x stays a leaf
    with hooks():
        y = m(x_in)[0] if hooks is torch.autograd.graph.save_on_cpu else checkpoint(
            lambda x: m(x)[0], x_in, use_reentrant=False)
    with torch.no_grad():
        (x_in if changed == "input" else getattr(m, changed)).mul_(1.5)
    y.square().sum().backward()
    return [x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True}])
@pytest.mark.parametrize("changed", ["weight_ih_l0", "weight_hh_l0"])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_a_weight_changed_under_a_hook_that_hands_back_the_changed_tensor_gets_torch_nns_gradients(
        name, changed, kwargs, monkeypatch):
    """save_on_cpu hands CPU tensors back as they are, so autograd's version check does not run: torch.nn's op
    differentiates with its workspace from forward. The engine reran the layer on the changed weight (every
    gradient off, by up to 2.3 for an LSTM)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    for got, want in zip(*(_changed_after_forward(lib, name, changed, kwargs, torch.autograd.graph.save_on_cpu)
                           for lib in (gnn, torch.nn))):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_an_input_changed_under_a_hook_that_hands_back_the_changed_tensor_is_refused(name, monkeypatch):
    """There torch.nn's weight gradient reads the changed input, and the engine's tape may hold it as it was: a
    known difference in the refusing direction, as autograd refuses the change without hooks."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _changed_after_forward(gnn, name, "input", {}, torch.autograd.graph.save_on_cpu)


@pytest.mark.parametrize("changed", ["weight_ih_l0", "weight_hh_l0"])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_a_checkpoint_recomputes_from_the_changed_tensors_as_torch_nn(name, changed, monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    for got, want in zip(*(_changed_after_forward(lib, name, changed, {}, contextlib.nullcontext)
                           for lib in (gnn, torch.nn))):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kwargs", [{}, {"bidirectional": True}, {"num_layers": 2}])
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_an_initial_state_changed_where_autograd_keeps_a_copy_gets_the_gradients_of_the_call(name, kwargs,
                                                                                              monkeypatch):
    """allow_mutation_on_saved_tensors copied the first of a layer's views of h0 (the first direction's, the first
    layer's) and handed the others back changed: backward refused them (before: reran on them, wrong gradients;
    torch.nn's own RNN and GRU give other gradients there). The engine copies the initial state in forward, so a
    changed h0 needs no rerun: the gradients of the call as it was made."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")   # (the engine's tape is tested)
    grads = []
    for mutate in (False, True):
        torch.manual_seed(0)
        m = getattr(gnn, name)(4, 5, **kwargs)
        h = torch.randn(m.num_layers * (1 + m.bidirectional), 3, 5, requires_grad=True)
        with torch.autograd.graph.allow_mutation_on_saved_tensors():
            y = m(torch.randn(6, 3, 4), (h, h * 1) if name == "LSTM" else h)[0]
            if mutate:
                with torch.no_grad():
                    h.mul_(1.5)
            y.square().sum().backward()
        grads.append([h.grad] + [p.grad for p in m.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
