"""torch.nn's own modules in place of gpurnn's, on the same parameters: for tools that match torch.nn's types
exactly (torch.ao.quantization.quantize_dynamic, a legacy torch.jit.ScriptModule, TorchScript) and for a model
to ship where gpurnn is not installed."""
import copy

import torch


def torch_twin(module):
    """torch.nn's module of gpurnn `module`'s class (RNN ... GRUCell) holding the same parameters, buffers and
    settings (not copies), or None for a module that has no twin (JordanRNN, torch's own)."""
    cls = type(module)
    ours = next((c for c in cls.__mro__ if c.__module__.startswith("gpurnn.")), None)
    base = next((c for c in cls.__mro__ if c.__module__ == "torch.nn.modules.rnn"), None)
    if ours is None or base is None:
        return None
    if cls is not ours:   # a parametrized module's class (ParametrizedLSTM) subclasses ours: rebase its members
        base = type(cls.__name__, (base,), {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
    twin = base.__new__(base)
    twin.__dict__ = dict(module.__dict__)
    return twin


def to_torch_nn(model, inplace=False):
    """`model` with each gpurnn RNN/LSTM/GRU and cell module replaced by torch.nn's on the same parameters (a deep
    copy of the model unless inplace), e.g. for `quantize_dynamic(to_torch_nn(model), {nn.LSTM, nn.Linear})`."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    twin = torch_twin(model)
    if twin is not None:
        return twin
    twins = {}   # one twin for a module held in several places, as the model shares it
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) not in twins:
                twins[id(child)] = torch_twin(child)
            if child is not None and twins[id(child)] is not None:
                setattr(parent, name, twins[id(child)])
    return model
