"""torch.nn's own modules in place of gpurnn's, on the same parameters: for tools that match torch.nn's types
exactly (torch.ao.quantization.quantize_dynamic, a legacy torch.jit.ScriptModule, TorchScript) and for a model
to ship where gpurnn is not installed."""
import copy
import functools
import types
import weakref

import torch


def _ours(cls):
    return cls.__module__.startswith("gpurnn.")


def torch_twin(module):
    """torch.nn's module of gpurnn `module`'s class (RNN ... GRUCell) holding the same parameters, buffers and
    settings (not copies), or None for a module that has no twin (JordanRNN, torch's own)."""
    cls = type(module)
    if not any(_ours(c) for c in cls.__mro__) or not any(c.__module__ == "torch.nn.modules.rnn" for c in cls.__mro__):
        return None
    cls = _rebased(cls)
    twin = cls.__new__(cls)
    twin.__dict__ = dict(module.__dict__)
    return twin


_REBASED = weakref.WeakKeyDictionary()   # one copy of a class for every module of it (parametrized: one a module)


def _rebased(cls):
    """cls over torch.nn's classes in place of gpurnn's: torch.nn's for gpurnn's own; cls itself where none of its
    ancestors is gpurnn's; else a copy of cls (a user's subclass, a parametrized module's class) over its bases
    rebased, whose methods' zero-argument super() means the copy (super(Cls, self) cannot: the twin is no Cls). The
    copies leave out __init_subclass__, which made for the user's classes (a registry, a required keyword) would run
    again for each copy (a mixin's, which is not copied, runs)."""
    if _ours(cls):
        return next(c for c in cls.__mro__ if c.__module__ == "torch.nn.modules.rnn")
    if not any(_ours(c) for c in cls.__mro__):
        return cls
    if cls in _REBASED:
        return _REBASED[cls]
    members = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__", "__init_subclass__")}
    copied = _REBASED[cls] = type(cls)(cls.__name__, tuple(_rebased(b) for b in cls.__bases__), members)
    for name, member in members.items():
        rebound = _rebound(member, cls, copied)
        if rebound is not member:
            setattr(copied, name, rebound)
            if hasattr(rebound, "__set_name__"):   # (functools.cached_property; type() called it on the original)
                rebound.__set_name__(copied, name)
    return copied


def _rebound(member, old, new, within=()):
    """A class member with the `__class__` of its functions' super() calls moved from class old to new, also inside
    the functions a decorator's wrapper closes over (torch.no_grad(), functools.wraps). within: the functions being
    rebuilt, around this one (a closure may hold itself)."""
    if isinstance(member, (staticmethod, classmethod)):
        func = _rebound(member.__func__, old, new)
        return member if func is member.__func__ else type(member)(func)
    if isinstance(member, property):
        parts = [_rebound(f, old, new) for f in (member.fget, member.fset, member.fdel)]
        same = parts == [member.fget, member.fset, member.fdel]
        return member if same else type(member)(*parts, member.__doc__)
    if isinstance(member, functools.cached_property):
        func = _rebound(member.func, old, new)
        return member if func is member.func else functools.cached_property(func)
    if not isinstance(member, types.FunctionType) or not member.__closure__ or any(member is f for f in within):
        return member
    cells = []
    for name, cell in zip(member.__code__.co_freevars, member.__closure__):
        try:
            value = cell.cell_contents
        except ValueError:   # an empty cell
            cells.append(cell)
            continue
        rebound = new if name == "__class__" and value is old else _rebound(value, old, new, (*within, member))
        cells.append(cell if rebound is value else types.CellType(rebound))
    if all(a is b for a, b in zip(cells, member.__closure__)):
        return member
    func = types.FunctionType(member.__code__, member.__globals__, member.__name__, member.__defaults__, tuple(cells))
    func.__kwdefaults__, func.__qualname__, func.__doc__ = member.__kwdefaults__, member.__qualname__, member.__doc__
    func.__dict__.update(member.__dict__)
    func.__annotations__ = member.__annotations__
    return func


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
