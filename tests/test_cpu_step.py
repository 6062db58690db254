"""The compiled LSTM step (gpurnn/cpu_step.c) against the NumPy loop it replaces, and its fallbacks.

Its parity with torch.nn in float32 is in test_nn_parity (every float32 LSTM there runs it).
"""
import platform
import shutil

import numpy as np
import pytest
import torch

import gpurnn.functional as F
from gpurnn import cpu_step
from gpurnn.lstm_loop import CompiledLSTMLoop, LSTMLoop

T, B, I, H = 6, 4, 5, 8
HAVE_CC = shutil.which("cc") or shutil.which("gcc")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """cpu_step with an empty cache and the load redone under this test's environment."""
    monkeypatch.setenv("GPURNN_CACHE_DIR", str(tmp_path))
    cpu_step._load.cache_clear()
    yield
    monkeypatch.undo()
    cpu_step._load.cache_clear()


def make_lstm(proj=0):
    """A torch.nn.LSTM and its weights as the functional API names them."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, proj_size=proj)
    names = {"weight_ih_l0": "w_ih", "weight_hh_l0": "w_hh", "bias_ih_l0": "b_ih", "bias_hh_l0": "b_hh",
             "weight_hr_l0": "w_hr"}
    return ref, {names[n]: p.detach().numpy() for n, p in ref.named_parameters()}


def arrays_of(result):
    """Every array in nested tuples and dicts, in order (None for an absent gradient)."""
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in arrays_of(r)]
    if isinstance(result, dict):
        return [a for k in sorted(result) for a in arrays_of(result[k])]
    return [result]


@pytest.mark.skipif(platform.system() != "Linux" or not HAVE_CC, reason="needs Linux (libmvec) and a C compiler")
def test_the_compiled_step_builds_here():
    assert cpu_step.status() is None
    assert cpu_step.library() is not None


@pytest.mark.skipif(cpu_step.library() is None, reason=f"compiled step unavailable: {cpu_step.status()}")
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("proj", [0, 3], ids=["plain", "proj"])
def test_compiled_step_matches_the_numpy_loop(monkeypatch, proj, packed, reverse):
    """Forward, backward and a second backward (retain_graph) agree to float32 rounding."""
    rng = np.random.default_rng(1)
    _, w = make_lstm(proj)
    P = proj or H
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state0 = (rng.standard_normal((B, P)).astype(np.float32), rng.standard_normal((B, H)).astype(np.float32))
    dy = rng.standard_normal((T, B, P)).astype(np.float32)
    dstate = (rng.standard_normal((B, P)).astype(np.float32), rng.standard_normal((B, H)).astype(np.float32))
    sizes = [4, 4, 3, 2, 2, 1] if packed else None

    def run():
        y, state, tape = F.forward("lstm", x, w, state0, batch_sizes=sizes, reverse=reverse)
        return type(tape.cell), arrays_of([y, state, F.backward(tape, dy, dstate), F.backward(tape, dy, dstate)])

    loop, compiled = run()
    assert loop is CompiledLSTMLoop
    monkeypatch.setattr(cpu_step, "library", lambda: None)
    loop, numpy_loop = run()
    assert loop is LSTMLoop
    assert len(compiled) == len(numpy_loop)
    for i, (got, want) in enumerate(zip(compiled, numpy_loop)):
        if want is None:
            assert got is None, i
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"array {i}")


def test_disabled_by_environment_runs_the_numpy_loop(monkeypatch, fresh_build):
    monkeypatch.setenv("GPURNN_CPU_KERNEL", "0")
    assert cpu_step.library() is None
    assert "GPURNN_CPU_KERNEL=0" in cpu_step.status()
    _, _, tape = F.forward("lstm", np.ones((T, B, I), np.float32), make_lstm()[1])
    assert type(tape.cell) is LSTMLoop


@pytest.mark.skipif(platform.system() != "Linux", reason="elsewhere the build is not attempted")
def test_a_failing_compiler_is_reported_and_the_numpy_loop_runs(monkeypatch, fresh_build):
    monkeypatch.setenv("CC", "false")   # exits 1 without output, as a broken compiler would
    assert cpu_step.library() is None
    assert "compiling cpu_step.c failed" in cpu_step.status()
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    ref, w = make_lstm()
    y, _, tape = F.forward("lstm", x, w)
    assert type(tape.cell) is LSTMLoop
    np.testing.assert_allclose(y, ref(torch.from_numpy(x))[0].detach().numpy(), atol=1e-5)


@pytest.mark.skipif(platform.system() != "Linux" or not HAVE_CC, reason="needs Linux (libmvec) and a C compiler")
def test_the_build_is_cached_per_source_and_cpu(fresh_build, tmp_path):
    assert cpu_step.library() is not None
    built = sorted(tmp_path.glob("cpu_step-*.so"))
    assert len(built) == 1
    cpu_step._load.cache_clear()
    assert cpu_step.library() is not None
    assert sorted(tmp_path.iterdir()) == built   # found, not rebuilt; no temporary files left
