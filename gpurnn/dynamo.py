"""Lets torch.compile trace gpurnn's modules.

Dynamo refuses to trace any torch.nn.RNN/GRU/LSTM instance, subclasses included, unless
torch._dynamo.config.allow_rnn is set (its module wrapper checks isinstance). gpurnn's
modules are such subclasses, and their layers are custom ops that trace cleanly, so
gpurnn.nn sets the flag: at once if torch._dynamo is loaded, else the moment it loads (an
import hook, so that importing gpurnn does not import dynamo, which takes seconds). The flag
also lets torch.compile trace torch.nn's own RNN modules (their aten ops) in the same process.
"""
import importlib.abc
import importlib.util
import sys

CONFIG = "torch._dynamo.config"


class _SetWhenLoaded(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != CONFIG:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)   # the usual finders, without this one
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.allow_rnn = True
        spec.loader.exec_module = exec_module
        return spec


def allow_rnn():
    """Set torch._dynamo.config.allow_rnn now, or when torch._dynamo.config is first imported."""
    if CONFIG in sys.modules:
        sys.modules[CONFIG].allow_rnn = True
    elif not any(isinstance(f, _SetWhenLoaded) for f in sys.meta_path):
        sys.meta_path.insert(0, _SetWhenLoaded())
