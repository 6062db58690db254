"""The engine's buffer pool (gpurnn/buffers.py): buffers go back when the tape is freed and are
reused, and nothing the engine returned ever shares memory with them."""
import gc

import numpy as np
import pytest

from gpurnn import buffers, engine
from kernel_cases import make_case, packed_sizes

# Big enough that every (T, ...) buffer is pooled (buffers.MIN_BYTES).
T, B, H, I = 64, 32, 64, 8


@pytest.fixture
def pool(monkeypatch):
    fresh = buffers.BufferPool()
    monkeypatch.setattr(buffers, "POOL", fresh)
    return fresh


def _in_pool(pool):
    """Every buffer the pool holds, idle or given back."""
    return [a for stack in [*pool.idle.values(), *pool.returned] for a in stack]


def _held_by(tape):
    return [v for v in vars(tape.cell).values() if isinstance(v, np.ndarray)]


def _call(case, cell, batch_sizes=None):
    y, state, tape = engine.forward(cell, case["x"], case["state0"], case["weights"], batch_sizes=batch_sizes)
    dx, dstate0, grads = engine.backward(tape, case["dy"], case["dstate"])
    return tape, [y, *state, dx, *dstate0, *[g for g in grads.values() if g is not None]]


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru", "jordan"])
def test_buffers_come_back_and_returned_arrays_never_alias_them(cell, pool):
    case = make_case(cell, T, B, H, dtype=np.float64, I=I, O=5 if cell == "jordan" else None)
    tape, first = _call(case, cell)
    kept = [a.copy() for a in first]
    assert not any(np.may_share_memory(a, b) for a in _in_pool(pool) for b in _held_by(tape))   # (GRU: GX is back)
    del tape
    gc.collect()
    assert pool.returned                       # the tape's buffers are back ...
    pooled = [a for stack in pool.returned for a in stack]
    tape2, second = _call(dict(case, x=case["x"] * 2), cell)
    assert any(any(b is a for a in pooled) for b in tape2.cell.__dict__.values())   # ... and reused
    for a, b in zip(first, kept):              # the first call's results did not move
        np.testing.assert_array_equal(a, b)
        assert not any(np.shares_memory(a, p) for p in pooled)


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru", "jordan"])
def test_a_reused_buffer_is_zeroed_for_packed_rows(cell, pool):
    """Packed runs rely on zeroed buffers: a run that filled them with NaN must not leak into one."""
    case = make_case(cell, T, B, H, dtype=np.float64, I=I, O=5 if cell == "jordan" else None)
    sizes = packed_sizes(T, B)
    reference = _call(case, cell, sizes)[1]
    nan_case = dict(case, x=np.full_like(case["x"], np.nan))
    _call(nan_case, cell)                      # its tape dies at once: the buffers go back with NaN
    gc.collect()
    assert pool.returned
    for got, want in zip(_call(case, cell, sizes)[1], reference):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_second_backward_gives_the_first_ones_buffers_back(cell, pool):
    """backward twice on one tape (retain_graph): same gradients, the first backward's buffers
    go back at the second instead of piling up until the tape dies."""
    case = make_case(cell, T, B, H, dtype=np.float64, I=I)
    _, _, tape = engine.forward(cell, case["x"], case["state0"], case["weights"])
    first = engine.backward(tape, case["dy"], case["dstate"])
    first_buffers = list(tape.backward_buffers.taken)
    assert first_buffers and not any(a is b for a in _in_pool(pool) for b in first_buffers)
    second = engine.backward(tape, case["dy"], case["dstate"])
    for a, b in zip([first[0], *first[1], *first[2].values()], [second[0], *second[1], *second[2].values()]):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    reused = [b for b in tape.backward_buffers.taken if any(b is a for a in first_buffers)]
    assert reused                              # the second backward took the first one's buffers


def test_the_grus_projection_goes_back_after_forward_and_its_reuse_leaves_the_tape_right(pool):
    """GX (W_ih x_t + biases) is read by the forward loop alone: it goes back to the pool at the forward's end (a
    third of the tape at I = H), and a second forward that takes it leaves the first one's gradients as they were."""
    case = make_case("gru", T, B, H, dtype=np.float64, I=I)
    want = _call(case, "gru")[1]
    gc.collect()
    pool.clear()
    _, _, tape = engine.forward("gru", case["x"], case["state0"], case["weights"])
    early = _in_pool(pool)
    assert [a.shape for a in early] == [(T, 3 * H, B)]
    before = early[0].copy()
    _, _, tape2 = engine.forward("gru", case["x"] * 2, case["state0"], case["weights"])
    assert not np.array_equal(early[0], before)   # the second forward's projection went there
    dx, dstate0, grads = engine.backward(tape, case["dy"], case["dstate"])
    for got, expected in zip([dx, *dstate0, *[g for g in grads.values() if g is not None]], want[2:]):
        np.testing.assert_array_equal(got, expected)


def test_clear_lets_idle_buffers_go(pool):
    case = make_case("lstm", T, B, H, dtype=np.float64, I=I)
    _call(case, "lstm")
    gc.collect()
    buffers.POOL.take((1,), np.float64, False)   # sorts what came back into the idle lists
    assert pool.idle_bytes > 0
    buffers.clear()
    assert pool.idle_bytes == 0 and not pool.idle
