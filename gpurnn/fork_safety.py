"""A fork that waits for the imports other threads have under way: a layer's first call imports modules (gpurnn's
on first use; torch._dynamo, from torch's dispatch of gpurnn's custom ops, for seconds), and a child forked from
another thread meanwhile would inherit such an import's module lock held and wait for it forever where it imports
the module."""
import _imp
import importlib
import os
import threading


def _imports_elsewhere():
    """The names of the modules other threads are importing now (their module locks, which CPython's import
    system keeps in _module_locks while an import holds or waits for one; their owner: the thread, 0 or None
    where free)."""
    me, bootstrap = threading.get_ident(), importlib._bootstrap
    locks = [(name, ref()) for name, ref in list(getattr(bootstrap, "_module_locks", {}).items())]
    return [name for name, lock in locks if getattr(lock, "owner", None) not in (None, 0, me)]


def _finish_imports():
    """Before a fork: wait for the imports other threads have under way, then hold the import lock until the fork
    (CPython takes it itself for the fork, re-entrantly), so that none starts meanwhile. _lock_unlock_module is
    CPython's wait for a module's import."""
    while True:
        _imp.acquire_lock()
        busy = _imports_elsewhere()
        if not busy:
            return
        _imp.release_lock()   # (those imports take it for each module they import)
        for name in busy:
            importlib._bootstrap._lock_unlock_module(name)


if hasattr(os, "register_at_fork"):   # the child inherits the import lock held (CPython reinitialises it so)
    os.register_at_fork(before=_finish_imports, after_in_parent=_imp.release_lock, after_in_child=_imp.release_lock)
