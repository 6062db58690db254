"""gpurnn.nn.to_torch_nn: torch.nn's modules in place of gpurnn's, on the same parameters, for tools that match
torch.nn's types exactly (quantize_dynamic) and for shipping a model without gpurnn."""
import functools

import pytest
import torch

import gpurnn.nn as gnn


class _Model(torch.nn.Module):
    def __init__(self, nn):
        super().__init__()
        self.layers = torch.nn.ModuleList([nn.LSTM(3, 6, num_layers=2, bidirectional=True), nn.GRU(12, 5)])
        self.head = torch.nn.Sequential(nn.RNNCell(5, 4, nonlinearity="relu"), torch.nn.Linear(4, 2))
        self.jordan = gnn.JordanRNN(3, 4, 2)

    def forward(self, x):
        y = self.layers[1](self.layers[0](x)[0])[0]
        return self.head(y[-1]), self.jordan(x)[0]


def _models():
    torch.manual_seed(0)
    ref, mine = _Model(torch.nn), _Model(gnn)
    ref.load_state_dict(mine.state_dict())
    return ref, mine


def test_every_twin_becomes_torch_nns_module_and_the_original_stays():
    ref, mine = _models()
    converted = gnn.to_torch_nn(mine)
    assert [type(m) for m in converted.modules()] == [type(m) for m in ref.modules()]
    assert type(converted.jordan) is gnn.JordanRNN and type(mine.layers[0]) is gnn.LSTM   # a copy by default
    assert converted.layers[0].weight_ih_l0 is not mine.layers[0].weight_ih_l0
    x = torch.randn(5, 2, 3)
    got, want = converted(x), ref(x)
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)   # torch.nn's own forward, same weights
    torch.testing.assert_close(got[1], mine(x)[1], atol=0, rtol=0)


def test_in_place_keeps_the_parameters_and_a_lone_module_converts():
    _, mine = _models()
    weight = mine.layers[1].weight_hh_l0
    assert gnn.to_torch_nn(mine, inplace=True) is mine
    assert type(mine.layers[1]) is torch.nn.GRU and mine.layers[1].weight_hh_l0 is weight
    cell = gnn.LSTMCell(3, 4)
    twin = gnn.to_torch_nn(cell, inplace=True)
    assert type(twin) is torch.nn.LSTMCell and twin.weight_ih is cell.weight_ih
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got dict"):
        gnn.to_torch_nn({})


def test_quantize_dynamic_of_a_converted_model_is_torch_nns():
    """quantize_dynamic matches module types exactly: it leaves gpurnn's modules in float, converted ones not."""
    ref, mine = _models()
    spec = {torch.nn.LSTM, torch.nn.GRU, torch.nn.RNNCell, torch.nn.Linear}
    quantize = lambda m: torch.ao.quantization.quantize_dynamic(m.eval(), spec, dtype=torch.qint8)
    q_ref, q_mine = quantize(ref), quantize(gnn.to_torch_nn(mine))
    assert [type(m) for m in q_mine.modules()] == [type(m) for m in q_ref.modules()]
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(q_mine(x)[0], q_ref(x)[0], atol=0, rtol=0)


def test_a_shared_module_stays_shared_and_a_parametrized_one_converts():
    """model.modules() lists a shared module once: every place that holds it gets the same twin. A parametrized
    module's class (ParametrizedGRU) is a subclass made by torch: its twin keeps the parametrization."""
    lstm, gru = gnn.LSTM(3, 4), gnn.GRU(3, 4)
    torch.nn.utils.parametrizations.weight_norm(gru, "weight_hh_l0")
    model = gnn.to_torch_nn(torch.nn.ModuleDict({"a": torch.nn.Sequential(lstm, lstm), "b": lstm, "c": gru}))
    assert model["a"][0] is model["a"][1] is model["b"] and type(model["b"]) is torch.nn.LSTM
    assert isinstance(model["c"], torch.nn.GRU) and type(model["c"]).__name__ == "ParametrizedGRU"
    assert torch.nn.utils.parametrize.type_before_parametrizations(model["c"]) is torch.nn.GRU
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(model["c"](x)[0], gru(x)[0])


_SUBCLASSES = []


class _Scaled(torch.nn.Module):   # a mixin, not an RNN
    def scale(self):
        return 2.0


def _layer_norm_lstm(base):
    class LNLSTM(_Scaled, base):
        def __init_subclass__(cls, **kwargs):   # (a registry, which the copies must not enter)
            super().__init_subclass__(**kwargs)
            _SUBCLASSES.append(cls.__name__)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.norm = torch.nn.LayerNorm(self.hidden_size)

        @torch.no_grad()   # a decorator's wrapper: the super() call is in the function it wraps
        def forward(self, x, hx=None):
            y, state = super().forward(x, hx)
            return self.norm(y) * self.scale(), state

    class Deeper(LNLSTM):
        @property
        def width(self):
            return super().scale() * self.hidden_size

        @functools.cached_property
        def depth(self):
            return super().scale() * self.num_layers

    return Deeper


def test_a_users_subclass_converts_with_its_super_calls_on_torch_nns_class():
    """The user's classes are rebuilt over torch.nn's: their methods' super() reaches torch.nn's, and no gpurnn class
    is left in the twin's ancestry; a subclass shared by modules shares its twin class."""
    torch.manual_seed(0)
    ref, mine = _layer_norm_lstm(torch.nn.LSTM)(3, 4), _layer_norm_lstm(gnn.LSTM)(3, 4)
    mine.load_state_dict(ref.state_dict())
    torch.nn.utils.parametrizations.weight_norm(mine, "weight_hh_l0")
    torch.nn.utils.parametrizations.weight_norm(ref, "weight_hh_l0")
    registered = list(_SUBCLASSES)
    model = gnn.to_torch_nn(torch.nn.Sequential(mine, _layer_norm_lstm(gnn.LSTM)(3, 4)))
    assert _SUBCLASSES == registered + ["Deeper"]   # the second module's, made above
    twin = model[0]
    assert not [c for c in type(twin).__mro__ if c.__module__.startswith("gpurnn")]
    assert [c.__name__ for c in type(twin).__mro__[:4]] == ["ParametrizedDeeper", "Deeper", "LNLSTM", "_Scaled"]
    assert type(twin).__mro__[4] is torch.nn.LSTM and twin.width == 8 and twin.depth == 2
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(twin(x)[0], ref(x)[0], atol=0, rtol=0)
    assert type(gnn.to_torch_nn(mine)) is type(twin)
