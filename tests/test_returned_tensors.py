"""What the modules return is as independent as torch.nn's: h_n (and c_n) are tensors of their own, not views (the
truncated-BPTT idiom `h.detach_()` refuses a view) and not the output's memory at T=1 (an in-place edit of the state,
such as zeroing the rows of finished episodes, then changed the output already returned, and its gradients)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gpurnn.nn as gnn

KINDS = ["RNN", "GRU", "LSTM"]


def _twins(kind, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(3, 4, **kw)
    ours = getattr(gnn, kind)(3, 4, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _states(hidden):
    return hidden if isinstance(hidden, tuple) else (hidden,)


@pytest.mark.parametrize("route", ["engine", "auto"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_truncated_bptt_detaches_the_state_in_place(kind, steps, packed, route, monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    x = torch.randn(4 * steps, 2, 3)
    results = []
    for module in _twins(kind):
        hidden, outs = None, []
        for i in range(0, x.shape[0], steps):
            chunk = pack_padded_sequence(x[i:i + steps], [steps, 1]) if packed else x[i:i + steps]
            out, hidden = module(chunk, hidden)
            (out.data if packed else out).sum().backward()
            for h in _states(hidden):
                assert not h._is_view()
                h.detach_()
            outs.append(out.data if packed else out)
        results.append([*outs, *(p.grad for p in module.parameters())])
    torch.testing.assert_close(results[1], results[0])


@pytest.mark.parametrize("kind", KINDS)
def test_zeroing_the_state_after_one_step_leaves_the_output_and_its_gradients(kind, monkeypatch):
    """Rows of finished episodes set to 0 in h_n (and c_n) after a one-step call, as in reinforcement learning."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "auto")
    x, done = torch.randn(1, 5, 3), torch.tensor([True, False, True, False, False])
    results = []
    for module in _twins(kind):
        out, hidden = module(x)
        for h in _states(hidden):
            h[:, done] = 0.0
        (out.square().sum() + _states(hidden)[0].sum()).backward()
        results.append([out, *_states(hidden), *(p.grad for p in module.parameters())])
    torch.testing.assert_close(results[1], results[0])


@pytest.mark.parametrize("route", ["engine", "auto"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_first_output_is_laid_out_as_torch_nn_s(kind, steps, batched, route, monkeypatch):
    """torch.nn's batch_first RNN and GRU return a tensor of their own in (T, B, H) memory order (out.detach_() works),
    its LSTM a transposed view (which refuses it)."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", route)
    x = torch.randn(2, steps, 3) if batched else torch.randn(steps, 3)
    ref, ours = _twins(kind, batch_first=True, bidirectional=True)
    layouts = [(out._is_view(), out.stride(), out.is_contiguous()) for out in (ref(x)[0], ours(x)[0])]
    assert layouts[1] == layouts[0]
