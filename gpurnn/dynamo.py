"""Lets torch.compile trace gpurnn's modules, and only them.

Dynamo refuses to wrap any torch.nn.RNN/GRU/LSTM instance, subclasses included, unless
torch._dynamo.config.allow_rnn is set (VariableBuilder.wrap_module checks isinstance). gpurnn's
modules are such subclasses, and their layers are custom ops that trace cleanly. torch.nn's own
modules do not: with the flag set, a compiled torch.nn.GRU in training mode skipped its dropout
between layers, and a compiled torch.nn.LSTM's backward failed on the CPU (torch 2.13). So the
flag is not set for the process: wrap_module runs with it only while it wraps one of gpurnn's
modules, and torch.nn's keep dynamo's graph break (they run eagerly, correctly). The wrapper goes
in when torch._dynamo.variables.builder loads (an import hook, so that importing gpurnn does not
import dynamo, which takes seconds). A torch whose dynamo has no VariableBuilder.wrap_module
gets the flag for the whole process, as the only way left to compile gpurnn's modules.

Also: `loaded_before_use`, which keeps a process's first layer call from importing dynamo.
"""
import contextlib
import importlib.abc
import importlib.util
import sys

BUILDER = "torch._dynamo.variables.builder"
_types = ()   # gpurnn's torch.nn.RNNBase subclasses


def _admit(builder):
    """Wrap builder.VariableBuilder.wrap_module so that it admits _types (once)."""
    cls = getattr(builder, "VariableBuilder", None)
    wrap = getattr(cls, "wrap_module", None)
    config = builder.config
    if wrap is None:
        config.allow_rnn = True
        return
    if getattr(wrap, "admits_gpurnn", False):
        return

    def wrap_module(self, value):
        if isinstance(value, _types) and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return wrap(self, value)
        return wrap(self, value)
    wrap_module.admits_gpurnn = True
    cls.wrap_module = wrap_module


class _AdmitWhenLoaded(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != BUILDER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)   # the usual finders, without this one
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _admit(module)
        spec.loader.exec_module = exec_module
        return spec


def allow_rnn(types):
    """Let dynamo wrap instances of `types` (torch.nn.RNNBase subclasses) now, or when its builder loads."""
    global _types
    _types = tuple(types)
    if BUILDER in sys.modules:
        _admit(sys.modules[BUILDER])
    elif not any(isinstance(f, _AdmitWhenLoaded) for f in sys.meta_path):
        sys.meta_path.insert(0, _AdmitWhenLoaded())


def loaded_before_use(op):
    """torch runs a custom op's kernel under torch._dynamo.disable, made on the first call, which imports
    torch._dynamo: 1.1-1.5 s of a process's first layer call on an AMD EPYC (torch.nn's first takes 6 ms). Until
    something else imports dynamo (torch.compile does), no compiled frame can be running and the wrapper has
    nothing to disable: the kernel runs as it is; once dynamo is loaded, torch's wrapper takes over. (torch's
    private structure, as in torch 2.11-2.13: where it differs, nothing changes.)"""
    for wrapper in getattr(op, "_backend_fns", {}).values():
        kernel = getattr(wrapper, "__wrapped__", None)
        if kernel is None or hasattr(kernel, "__dynamo_disable"):
            continue

        def until_loaded(*args, kernel=kernel, wrapper=wrapper, **kwargs):
            if "torch._dynamo" not in sys.modules:
                return kernel(*args, **kwargs)
            kernel.__dict__.pop("__dynamo_disable", None)   # torch's wrapper makes its own now
            return wrapper(*args, **kwargs)
        kernel.__dynamo_disable = until_loaded


def eager_backward():
    """A context whose backward passes run eagerly, out of any compiled-autograd context the caller is in (the route
    timing's own backward passes would each be captured and compiled as a backward graph of the caller's). Without
    dynamo loaded, none can be active."""
    module = sys.modules.get("torch._dynamo.compiled_autograd")
    disable = getattr(module, "_disable", None)
    return contextlib.nullcontext() if disable is None else disable()
