"""torch's own module tests for RNN/LSTM/GRU and their cells (common_modules.module_db: the
same samples, error inputs and checks torch runs on torch.nn), run on gpurnn's classes."""
import pytest
import torch
from torch.testing._internal.common_modules import module_db

import gpurnn.nn as gnn

INFOS = [mi for mi in module_db if mi.module_cls.__name__ in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")
         and mi.module_cls.__module__.startswith("torch.nn")]
# Relative to each tensor's largest entry: module_db's inputs reach |9|, and a float32 sum rounds
# relative to its largest term (~100 ulps after the steps of BPTT, as in torch_parity.TOL).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _samples(mi, dtype, training):
    return mi.module_inputs_func(mi, device="cpu", dtype=dtype, requires_grad=True, training=training)


def _twins(mi, sample, dtype, training):
    c = sample.constructor_input
    torch.manual_seed(0)
    ref = mi.module_cls(*c.args, **c.kwargs).to(dtype).train(training)
    mine = getattr(gnn, mi.module_cls.__name__)(*c.args, backend="numpy", **c.kwargs).to(dtype).train(training)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _leaves(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _detached(args):
    return torch.utils._pytree.tree_map(lambda t: t.detach().clone().requires_grad_(t.requires_grad)
                                        if isinstance(t, torch.Tensor) else t, args)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("mi", INFOS, ids=[mi.name for mi in INFOS])
def test_forward_and_backward_match_torch(mi, dtype, training):
    for sample in _samples(mi, dtype, training):
        ref, mine = _twins(mi, sample, dtype, training)
        if training and getattr(ref, "dropout", 0) > 0:
            continue   # torch's dropout masks come from its own kernel's random stream
        outs = []
        for m in (ref, mine):
            args = _detached(sample.forward_input.args)
            out = _leaves(m(*args, **sample.forward_input.kwargs))
            sum((o * (i + 1)).sum() for i, o in enumerate(out)).backward()
            outs.append(out + [a.grad for a in _leaves(args) if a.requires_grad] + [p.grad for p in m.parameters()])
        assert len(outs[0]) == len(outs[1])
        for a, b in zip(*outs):
            scale = max(1.0, float(a.detach().abs().max())) if a.numel() else 1.0
            torch.testing.assert_close(b, a, atol=TOL[dtype] * scale, rtol=TOL[dtype])


@pytest.mark.parametrize("mi", INFOS, ids=[mi.name for mi in INFOS])
def test_gradcheck_and_gradgradcheck_with_batched_grads(mi):
    for sample in _samples(mi, torch.float64, training=False):
        _, mine = _twins(mi, sample, torch.float64, training=False)
        args = _detached(sample.forward_input.args)
        flat, spec = torch.utils._pytree.tree_flatten(args)
        tensors = [a for a in flat if isinstance(a, torch.Tensor) and a.requires_grad]
        params = list(mine.parameters())

        def fn(*inputs):
            it = iter(inputs[:len(tensors)])
            call_args = torch.utils._pytree.tree_unflatten(
                [next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in flat], spec)
            given = dict(zip([n for n, _ in mine.named_parameters()], inputs[len(tensors):]))
            return tuple(_leaves(torch.func.functional_call(mine, given, tuple(call_args), sample.forward_input.kwargs)))

        # fast_mode: finite differences along random directions (the full Jacobians of the 2-layer
        # bidirectional samples take minutes); test_gradcheck.py checks every entry, first order
        assert torch.autograd.gradcheck(fn, (*tensors, *params), check_batched_grad=True, fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (*tensors, *params), check_batched_grad=True, fast_mode=True)


@pytest.mark.parametrize("mi", [mi for mi in INFOS if mi.module_error_inputs_func], ids=lambda mi: mi.name)
def test_error_inputs_raise_as_torch(mi):
    errors = mi.module_error_inputs_func(mi, device="cpu", dtype=torch.float64, requires_grad=False, training=False)
    for err in errors:
        c, f = err.module_error_input.constructor_input, err.module_error_input.forward_input
        with pytest.raises(err.error_type, match=err.error_regex):
            m = getattr(gnn, mi.module_cls.__name__)(*c.args, backend="numpy", **c.kwargs).to(torch.float64)
            m(*f.args, **f.kwargs)
