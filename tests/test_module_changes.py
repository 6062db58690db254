"""Modules changed by their user after construction, as torch.nn's are: a weight set to None, parametrizations
(evaluated once per call, as torch.nn does: a random or stateful one would otherwise draw other weights),
construction on the meta device."""
import pytest
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

import gpurnn.nn as gnn


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bias", ["bias_ih_l0", "bias_hh_l0"])
@pytest.mark.parametrize("steps", [1, 5])
def test_a_bias_set_to_none_raises_as_torch_nn(kind, bias, steps):
    """The engine once ran without that bias, or without both (LSTM, GRU), or crashed inside."""
    x = torch.randn(steps, 2, 3)
    errors = []
    for module in (getattr(torch.nn, kind)(3, 4), getattr(gnn, kind)(3, 4)):
        setattr(module, bias, None)
        with pytest.raises(TypeError) as info:
            module(x)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


class Counted(torch.nn.Module):
    """A parametrization that counts its evaluations."""
    calls = 0

    def forward(self, w):
        Counted.calls += 1
        return w


def _twins(kind, *args):
    ours = getattr(gnn, kind)(*args, dtype=torch.float64)
    theirs = getattr(torch.nn, kind)(*args, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU"])
def test_a_parametrized_weight_is_evaluated_once_per_call(kind):
    counts = []
    for module in _twins(kind, 3, 5):
        parametrize.register_parametrization(module, "weight_ih" if "Cell" in kind else "weight_ih_l0", Counted())
        Counted.calls = 0
        module(torch.randn(4, 3, dtype=torch.float64))
        counts.append(Counted.calls)
    assert counts[0] == counts[1]   # (torch.nn's cells: once; its RNN/LSTM/GRU: twice, checks and _flat_weights)


def test_jordan_evaluates_a_parametrized_weight_once_per_call():
    module = gnn.JordanRNN(3, 5, 2)
    parametrize.register_parametrization(module, "weight_ih", Counted())
    Counted.calls = 0
    module(torch.randn(4, 2, 3))
    assert Counted.calls == 1


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_with_spectral_norm_train_as_torch_nn(kind):
    """Each evaluation in training mode runs a power iteration: extra ones moved its vectors away from torch.nn's."""
    x = torch.randn(4, 3, dtype=torch.float64)
    modules = _twins(kind, 3, 5)
    for module in modules:
        torch.manual_seed(1)
        spectral_norm(module, "weight_ih")
    for _ in range(3):
        outs = [module(x) for module in modules]
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    u = [module.parametrizations.weight_ih[0]._u for module in modules]
    torch.testing.assert_close(u[0], u[1], rtol=0, atol=0)


def test_jordan_builds_on_the_meta_device():
    for make in (lambda: gnn.JordanRNN(3, 5, 2, device="meta"),
                 lambda: torch.nn.utils.skip_init(gnn.JordanRNN, 3, 5, 2)):
        module = make()
        assert module.weight_ih.shape == (5, 3)
    with torch.device("meta"):
        assert gnn.JordanRNN(3, 5, 2).decay.is_meta
    with pytest.raises(ValueError, match="decay"):   # still checked where there are values
        gnn.JordanRNN(3, 5, 2, decay=1.5)


def test_jordan_repr_names_what_differs_from_the_defaults():
    assert repr(gnn.JordanRNN(2, 3, 4)) == "JordanRNN(2, 3, 4, nonlinearity='tanh', output_activation='identity')"
    module = gnn.JordanRNN(2, 3, 2, decay=[0.25, 0.75], bias=False, batch_first=True)
    assert repr(module).endswith("decay=per unit, 0.25 to 0.75, bias=False, batch_first=True)")
    assert repr(gnn.JordanRNN(2, 3, 2, decay=0.25)).endswith(", decay=0.25)")
    assert repr(gnn.JordanRNN(2, 3, 2, decay=-0.0)).endswith(", decay=0)")   # not "-0"


@pytest.mark.parametrize("attribute, value", [("bidirectional", 1), ("bidirectional", None), ("num_layers", True)])
def test_attributes_of_another_type_raise_as_torch_nn(attribute, value):
    """torch's op refuses a bidirectional or num_layers of another type than bool and int; the engine once ran
    with their truth value."""
    x = torch.randn(5, 2, 3)
    errors = []
    for module in (torch.nn.GRU(3, 4), gnn.GRU(3, 4)):
        setattr(module, attribute, value)
        with pytest.raises(TypeError) as info:
            module(x)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_meta_module_runs_backward_as_torch_nn(kind):
    """With the engine route forced (as the suite does: tests/conftest.py), meta tensors once reached the engine's
    custom op, whose backward cannot read a meta handle."""
    for module in (getattr(torch.nn, kind)(3, 4, device="meta"), getattr(gnn, kind)(3, 4, device="meta")):
        x = torch.randn(5, 2, 3, device="meta", requires_grad=True)
        module(x)[0].sum().backward()
        assert x.grad.shape == x.shape and x.grad.is_meta


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_a_module_converts_by_swapping_while_an_output_lives(kind, monkeypatch):
    """torch.__future__'s swap of parameters on conversion (torch.utils.swap_tensors) refuses a tensor with a weak
    reference: one kept by the engine's graph made module.double() fail until the output was freed."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")
    x, modules = torch.randn(5, 2, 3), (getattr(torch.nn, kind)(3, 4), getattr(gnn, kind)(3, 4))
    modules[1].load_state_dict(modules[0].state_dict())
    monkeypatch.setattr(torch.__future__, "get_swap_module_params_on_conversion", lambda: True)
    outputs = []
    for module in modules:
        out, _ = module(x)
        out.sum().backward()
        module.double()   # `out` still alive
        outputs.append((out, module(x.double())[0]))
    torch.testing.assert_close(outputs[1], outputs[0])
