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


@pytest.mark.parametrize("sizes", [None, [19, 19, 17, 9, 3, 1]], ids=["padded", "packed"])
@pytest.mark.parametrize("loop", ["compiled", "numpy"])
def test_inference_keeps_one_steps_gates_with_the_same_outputs(compiled, monkeypatch, loop, sizes):
    """Without a backward to follow, the loop keeps one step's gate buffers (G, N), not T of them (an inference
    call's peak at B=16 T=64 H=768 on an AMD EPYC: 42.3 MB, then 29.0; torch.nn's 16.2): outputs bit for bit."""
    if loop == "numpy":
        monkeypatch.setattr(build, "library", lambda: None)
    rng = np.random.default_rng(3)
    w = weights(rng, True)
    x = rng.standard_normal((T, 19, I)).astype(np.float32)
    state0 = (rng.standard_normal((19, H)).astype(np.float32),)
    y, state, tape = F.forward("gru", x, w, state0, batch_sizes=sizes)
    y_inf, state_inf, tape_inf = F.forward("gru", x, w, state0, batch_sizes=sizes, for_backward=False)
    assert type(tape_inf.cell) is (CompiledGRULoop if loop == "compiled" else GRULoop)
    assert tape_inf.cell.G.strides[0] == tape_inf.cell.N.strides[0] == 0 and tape.cell.G.strides[0] != 0
    np.testing.assert_array_equal(y_inf, y)
    np.testing.assert_array_equal(state_inf[0], state[0])
