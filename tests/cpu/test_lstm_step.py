"""The compiled LSTM step (gpurnn/cpu/step.c) against the NumPy loop it replaces, and its fallbacks.

Its parity with torch.nn in float32 is in test_nn_parity (every float32 LSTM there runs it).
"""
import os
import pathlib
import platform
import shutil
import tempfile

import numpy as np
import pytest
import torch

import gpurnn.functional as F
from gpurnn import cells
from gpurnn.cpu import build
from gpurnn.cpu.lstm import CompiledLSTMLoop

LSTMLoop = cells.get("lstm").LSTMLoop

# B=19, H=13: the kernels' vector loops (8 or 16 lanes) and their scalar remainders both run
T, B, I, H = 6, 19, 5, 13
HAVE_CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
CAN_BUILD = platform.system() == "Linux" and HAVE_CC


@pytest.fixture
def compiled():
    if build.library() is None:
        pytest.skip(f"compiled step unavailable: {build.status()}")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """The build at first use (not the prebuilt library) with an empty cache, the load redone under
    this test's environment."""
    monkeypatch.setenv("GPURNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPURNN_CPU_KERNEL", "build")
    build._load.cache_clear()
    yield
    monkeypatch.undo()
    build._load.cache_clear()


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


@pytest.mark.skipif(not CAN_BUILD, reason="needs Linux and a C compiler")
def test_the_compiled_step_builds_here(fresh_build):
    assert build.status() is None
    assert build.library() is not None
    assert build.describe() == "compiled (gpurnn/cpu/step.c, built here at first use)"


def test_this_install_has_the_step_prebuilt():
    """setup.py compiles it on install (`pip install -e .` here, CI included): no compiler at run time."""
    assert build.prebuilt() is not None, "gpurnn/cpu/_step was not built on install"
    assert build.describe() == "compiled (gpurnn/cpu/step.c, prebuilt with the package)"


def lib_tanh(lib, value):
    x, y = np.full(1, value, np.float32), np.empty(1, np.float32)
    lib.tanh_array(x.ctypes.data, y.ctypes.data, 1)
    return y[0]


@pytest.mark.parametrize("where", ["prebuilt", "build"])
def test_tanh_is_within_1_5_ulp(where, monkeypatch, fresh_build):
    """step.c's own tanh (no libm vector library) against float64, over [-12, 12] and tiny values."""
    if where == "prebuilt":
        monkeypatch.setenv("GPURNN_CPU_KERNEL", "1")
        build._load.cache_clear()
    elif not CAN_BUILD:
        pytest.skip("needs Linux and a C compiler")
    lib = build.library()
    assert lib is not None, build.status()
    tiny = np.geomspace(1e-30, 1, 20001, dtype=np.float32)
    x = np.concatenate([np.linspace(-12, 12, 400_001, dtype=np.float32), tiny, -tiny, [0, np.inf, -np.inf]])
    x = x.astype(np.float32)
    y = np.empty_like(x)
    lib.tanh_array(x.ctypes.data, y.ctypes.data, x.size)
    ref = np.tanh(x.astype(np.float64))
    ulps = np.abs(y - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.5, (x[ulps.argmax()], y[ulps.argmax()], ref[ulps.argmax()])
    assert y[x.size - 2:].tolist() == [1, -1] and np.signbit(lib_tanh(lib, np.float32(-0.0)))
    nan = np.full(19, np.nan, np.float32)   # vector loop and remainder
    lib.tanh_array(nan.ctypes.data, y.ctypes.data, nan.size)
    assert np.isnan(y[:nan.size]).all()


def test_the_gate_sigmoid_is_within_2_5_ulp_relative_to_its_value():
    """step.c's sigmoid (of the negated pre-activation the loop holds) against float64 over [-87, 88] (normal
    results): relative to the value, so far below 0 too (0.5*tanh(a/2) + 0.5, the build before, was off by 1e8 ulps
    there); torch's float32 sigmoid is as far off at its worst point (2.47 ulps)."""
    lib = build.library()
    assert lib is not None, build.status()
    special = np.repeat(np.array([np.inf, -np.inf, np.nan], np.float32), 19)   # vector loop and remainder
    x = np.concatenate([np.linspace(-87, 88, 400_001, dtype=np.float32), special]).astype(np.float32)
    negated, y = -x, np.empty_like(x)
    lib.sigmoid_of_negated_array(negated.ctypes.data, y.ctypes.data, x.size)
    n = x.size - special.size
    ref = 1 / (1 + np.exp(-x[:n].astype(np.float64)))
    ulps = np.abs(y[:n] - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 2.5, (x[ulps.argmax()], y[ulps.argmax()], ref[ulps.argmax()])
    assert (y[n:n + 19] == 1).all() and (y[n + 19:n + 38] == 0).all() and np.isnan(y[n + 38:]).all()


@pytest.mark.skipif(not CAN_BUILD, reason="needs Linux and a C compiler")
def test_a_stale_prebuilt_step_is_not_run(monkeypatch, fresh_build):
    """An install whose step.c changed since its library was built (an editable checkout) builds the
    current source instead of running the old code."""
    monkeypatch.setenv("GPURNN_CPU_KERNEL", "1")
    monkeypatch.setattr(build, "source_hash", lambda: "h-edited-since")
    build._load.cache_clear()
    assert build.describe() == "compiled (gpurnn/cpu/step.c, built here at first use)"


def test_a_bad_choice_is_an_error(monkeypatch, fresh_build):
    monkeypatch.setenv("GPURNN_CPU_KERNEL", "yes")
    with pytest.raises(ValueError, match=r"GPURNN_CPU_KERNEL: expected one of \('1', '0', 'build'\), got 'yes'"):
        build.library()


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("proj", [0, 3], ids=["plain", "proj"])
def test_compiled_step_matches_the_numpy_loop(compiled, monkeypatch, proj, packed, reverse):
    """Forward, backward and a second backward (retain_graph) agree to float32 rounding;
    the inference forward (for_backward=False) gives the training forward's bits."""
    rng = np.random.default_rng(1)
    _, w = make_lstm(proj)
    P = proj or H
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state0 = (rng.standard_normal((B, P)).astype(np.float32), rng.standard_normal((B, H)).astype(np.float32))
    dy = rng.standard_normal((T, B, P)).astype(np.float32)
    dstate = (rng.standard_normal((B, P)).astype(np.float32), rng.standard_normal((B, H)).astype(np.float32))
    sizes = [19, 19, 17, 9, 3, 1] if packed else None

    def run():
        y, state, tape = F.forward("lstm", x, w, state0, batch_sizes=sizes, reverse=reverse)
        y_inf, state_inf, _ = F.forward("lstm", x, w, state0, batch_sizes=sizes, reverse=reverse, for_backward=False)
        for a, b in zip(arrays_of([y, state]), arrays_of([y_inf, state_inf])):
            np.testing.assert_array_equal(a, b)
        return type(tape.cell), arrays_of([y, state, F.backward(tape, dy, dstate), F.backward(tape, dy, dstate)])

    assert_compiled_matches_the_numpy_loop(run, monkeypatch, CompiledLSTMLoop, LSTMLoop)


def assert_compiled_matches_the_numpy_loop(run, monkeypatch, compiled_loop, numpy_loop):
    """run() -> (the tape's cell type, its arrays) with the compiled step, then with the NumPy loop: the same
    arrays to float32 rounding (None where the other has None)."""
    loop, compiled_results = run()
    assert loop is compiled_loop
    monkeypatch.setattr(build, "library", lambda: None)
    loop, numpy_results = run()
    assert loop is numpy_loop
    assert len(compiled_results) == len(numpy_results)
    for i, (got, want) in enumerate(zip(compiled_results, numpy_results)):
        if want is None:
            assert got is None, i
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"array {i}")


def test_a_fortran_ordered_state_gradient_is_read_right(compiled):
    """The kernel reads the carried dh in C-ordered rows; backward must hand it those."""
    rng = np.random.default_rng(3)
    _, w = make_lstm()
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dstate = (rng.standard_normal((B, H)).astype(np.float32), rng.standard_normal((B, H)).astype(np.float32))
    _, _, tape = F.forward("lstm", x, w)
    want = F.backward(tape, None, dstate)
    got = F.backward(tape, None, tuple(np.asfortranarray(d) for d in dstate))
    for a, b in zip(arrays_of(got), arrays_of(want)):
        np.testing.assert_array_equal(a, b)


def test_disabled_by_environment_runs_the_numpy_loop(monkeypatch, fresh_build):
    monkeypatch.setenv("GPURNN_CPU_KERNEL", "0")
    assert build.library() is None
    assert "GPURNN_CPU_KERNEL=0" in build.status()
    _, _, tape = F.forward("lstm", np.ones((T, B, I), np.float32), make_lstm()[1])
    assert type(tape.cell) is LSTMLoop


@pytest.mark.skipif(platform.system() != "Linux", reason="elsewhere the build is not attempted")
def test_a_failing_compiler_is_reported_and_the_numpy_loop_runs(monkeypatch, fresh_build):
    monkeypatch.setenv("CC", "false")   # exits 1 without output, as a broken compiler would
    assert build.library() is None
    assert "compiling step.c failed" in build.status()
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    ref, w = make_lstm()
    y, _, tape = F.forward("lstm", x, w)
    assert type(tape.cell) is LSTMLoop
    np.testing.assert_allclose(y, ref(torch.from_numpy(x))[0].detach().numpy(), atol=1e-5)


@pytest.mark.skipif(not CAN_BUILD, reason="needs Linux and a C compiler")
def test_the_build_is_cached_per_source_and_flags(monkeypatch, fresh_build, tmp_path):
    assert build.library() is not None
    built = sorted(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("cpu_step-")   # no temporary files left
    stamp = built[0].stat().st_mtime_ns
    build._load.cache_clear()
    assert build.library() is not None
    assert sorted(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp   # found, not rebuilt
    monkeypatch.setattr(build, "FLAGS", build.FLAGS + ["-DGPURNN_OTHER_BUILD"])
    build._load.cache_clear()
    assert build.library() is not None
    assert len(list(tmp_path.iterdir())) == 2   # other flags: another library


@pytest.mark.skipif(not CAN_BUILD, reason="needs Linux and a C compiler")
def test_an_unwritable_cache_builds_for_this_process_only(monkeypatch, fresh_build, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("GPURNN_CACHE_DIR", str(blocked / "cache"))   # under a file: cannot be made
    before = set(pathlib.Path(tempfile.gettempdir()).glob("gpurnn-*"))
    assert build.library() is not None
    assert set(pathlib.Path(tempfile.gettempdir()).glob("gpurnn-*")) == before   # removed once loaded
