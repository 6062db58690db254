"""Reuse of the engine's large NumPy buffers across calls.

A fresh multi-megabyte allocation is memory the C library maps anew and the kernel
faults in one 4 KB page at a time on first touch; on the benchmark machine that cost
up to 5 ms of an 8 ms LSTM forward (a 4 MB projection GEMM taking 8 ms instead of 1
every other call). The engine takes each sequence's (T, ...) buffers from a pool and
gives them back when the cell holding them (and its tape, engine.Saved) is freed, as
torch's caching allocator does for CUDA memory. CuPy has its own pool: CuPy arrays are
not pooled. `clear()` lets the idle ones go.
"""
import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

MIN_BYTES = 1 << 18          # smaller buffers come from the C library's own free lists
MAX_POOLED_BYTES = 1 << 28   # idle beyond this, the least recently returned buffers are let go


class BufferPool:
    def __init__(self, max_bytes=MAX_POOLED_BYTES):
        self.max_bytes = max_bytes
        self.idle = OrderedDict()   # (shape, dtype) -> [array], least recently given back first
        self.idle_bytes = 0
        self.returned = []          # lists given back, not yet sorted into idle
        self.lock = threading.Lock()

    def take(self, shape, dtype, zero):
        """An array of this shape and dtype, filled with zeros if `zero`, else uninitialised."""
        key = (tuple(shape), np.dtype(dtype))
        with self.lock:
            self._sort_returned()
            stack = self.idle.get(key)
            a = stack.pop() if stack else None
            if a is not None:
                self.idle_bytes -= a.nbytes
                if not stack:
                    del self.idle[key]
        if a is None:
            return (np.zeros if zero else np.empty)(key[0], key[1])
        if zero:
            a.fill(0)
        return a

    def give(self, arrays):
        """Take back arrays nothing else references any more. Only appends (atomic): it runs
        from garbage collection, which may interrupt take() on this very thread."""
        self.returned.append(arrays)

    def clear(self):
        with self.lock:
            self.returned.clear()
            self.idle.clear()
            self.idle_bytes = 0

    def _sort_returned(self):
        while self.returned:
            for a in self.returned.pop():
                key = (a.shape, a.dtype)
                self.idle.setdefault(key, []).append(a)
                self.idle.move_to_end(key)
                self.idle_bytes += a.nbytes
        while self.idle_bytes > self.max_bytes:
            key, stack = next(iter(self.idle.items()))
            self.idle_bytes -= stack.pop(0).nbytes
            if not stack:
                del self.idle[key]


POOL = BufferPool()


def clear():
    """Let every idle buffer go (buffers in use return to the pool as usual)."""
    POOL.clear()


def _reset_in_child():
    """A forked child may inherit the lock held; it starts with an empty pool."""
    global POOL
    POOL = BufferPool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


class Allocations:
    """The alloc(shape, dtype) a cell makes its buffers with, for one forward or backward call.

    Large NumPy buffers come from POOL and go back to it when `owner` (the cell, which holds
    every view of them) is garbage collected, or at `release()`. Nothing the engine returns
    to its caller may be a view of them (it returns copies).
    """

    def __init__(self, xp, zero):
        self.xp, self.zero = xp, zero
        self.taken = []

    def __call__(self, shape, dtype):
        if self.xp is not np or np.dtype(dtype).itemsize * int(np.prod(shape)) < MIN_BYTES:
            return (self.xp.zeros if self.zero else self.xp.empty)(shape, dtype)
        a = POOL.take(shape, dtype, self.zero)
        self.taken.append(a)
        return a

    def give_back(self, arrays):
        """Give these buffers back now, before the others (nothing may use them any more); arrays not from the pool
        are left to the garbage collector."""
        back = [a for a in self.taken if any(a is b for b in arrays)]
        if back:
            self.taken = [a for a in self.taken if not any(a is b for b in back)]
            POOL.give(back)

    def bind(self, owner):
        weakref.finalize(owner, self.release)

    def release(self):
        """Give the buffers back now (once): nothing may use them any more."""
        taken, self.taken = self.taken, []
        if taken:
            POOL.give(taken)
