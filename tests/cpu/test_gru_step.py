"""The compiled GRU step (gpurnn/cpu/step.c) against the NumPy loop it replaces.

Its parity with torch.nn in float32 is in test_nn_parity (every float32 GRU there runs it); the build,
its cache and its fallbacks are the LSTM's (test_lstm_step.py).
"""
import numpy as np
import pytest

import gpurnn.functional as F
from gpurnn import cells
from gpurnn.cpu import build
from gpurnn.cpu.gru import CompiledGRULoop

from .test_lstm_step import arrays_of, assert_compiled_matches_the_numpy_loop

GRULoop = cells.get("gru").GRULoop
T, I, H = 6, 5, 13


@pytest.fixture
def compiled():
    if build.library() is None:
        pytest.skip(f"compiled step unavailable: {build.status()}")


def weights(rng, bias):
    w = {"w_ih": rng.standard_normal((3 * H, I)), "w_hh": rng.standard_normal((3 * H, H)),
         "b_ih": rng.standard_normal(3 * H), "b_hh": rng.standard_normal(3 * H)}
    return {k: None if k.startswith("b") and not bias else (v / 2).astype(np.float32) for k, v in w.items()}


# B=1: the step's loop over a contiguous column; B=19: its loop over columns (vector lanes and a remainder)
@pytest.mark.parametrize("B, sizes", [(1, None), (19, None), (19, [19, 19, 17, 9, 3, 1])], ids=["B1", "B19", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("with_dy", [True, False], ids=["dy", "no-dy"])
def test_compiled_step_matches_the_numpy_loop(compiled, monkeypatch, B, sizes, reverse, bias, with_dy):
    """Forward, backward and a second backward (retain_graph) agree to float32 rounding."""
    rng = np.random.default_rng(1)
    w = weights(rng, bias)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state0 = (rng.standard_normal((B, H)).astype(np.float32),)
    dy = rng.standard_normal((T, B, H)).astype(np.float32) if with_dy else None
    dstate = (rng.standard_normal((B, H)).astype(np.float32),)

    def run():
        y, state, tape = F.forward("gru", x, w, state0, batch_sizes=sizes, reverse=reverse)
        return type(tape.cell), arrays_of([y, state, F.backward(tape, dy, dstate), F.backward(tape, dy, dstate)])

    assert_compiled_matches_the_numpy_loop(run, monkeypatch, CompiledGRULoop, GRULoop)


def test_float64_runs_the_numpy_loop(compiled):
    rng = np.random.default_rng(2)
    w = {k: None if v is None else v.astype(np.float64) for k, v in weights(rng, True).items()}
    _, _, tape = F.forward("gru", rng.standard_normal((T, 2, I)), w)
    assert type(tape.cell) is GRULoop
