"""torch.nn's own modules in place of gpurnn's, on the same parameters: for tools that match torch.nn's types
exactly (torch.ao.quantization.quantize_dynamic, a legacy torch.jit.ScriptModule, TorchScript) and for a model
to ship where gpurnn is not installed."""
import copy

import torch


def torch_twin(module):
    """torch.nn's module of gpurnn `module`'s class (RNN ... GRUCell) holding the same parameters, buffers and
    settings (not copies), or None for a module that has no twin (JordanRNN, torch's own)."""
    if not type(module).__module__.startswith("gpurnn."):
        return None
    base = next((c for c in type(module).__mro__ if c.__module__ == "torch.nn.modules.rnn"), None)
    if base is None:
        return None
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
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            twin = torch_twin(child)
            if twin is not None:
                setattr(parent, name, twin)
    return model
