"""Backend choice: auto never fails for lack of a GPU; an explicit unusable backend says why."""
import importlib
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

import gpurnn
from gpurnn import backends
from gpurnn import functional as F


def test_numpy_always_available():
    assert "numpy" in gpurnn.available_backends()
    assert gpurnn.backend_status()["numpy"] is None


def test_auto_on_cpu_data_is_numpy(monkeypatch):
    monkeypatch.delenv("GPURNN_BACKEND", raising=False)
    assert backends.resolve("auto", on_gpu=False) == "numpy"


def test_env_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("GPURNN_BACKEND", "numpy")
    assert backends.resolve("auto", on_gpu=False) == "numpy"
    monkeypatch.setenv("GPURNN_BACKEND", "fpga")
    with pytest.raises(ValueError, match="GPURNN_BACKEND.*fpga"):
        backends.resolve("auto", on_gpu=False)


def test_a_setting_set_but_empty_is_unset(monkeypatch):
    for name in ("GPURNN_BACKEND", "GPURNN_CPU_LAYER", "GPURNN_GEMM", "GPURNN_FP32_PRECISION"):
        monkeypatch.setenv(name, "")
    assert backends.resolve("auto", on_gpu=False) == "numpy" and backends.env("GPURNN_CPU_LAYER", "auto") == "auto"
    assert backends.fp32_precision() == "ieee"
    F.forward("rnn", np.zeros((2, 1, 3)), {"w_ih": np.zeros((4, 3)), "w_hh": np.zeros((4, 4))})


def test_runs_numpy_reads_the_environment_of_every_call(monkeypatch):
    """backends.env reads os.environ's store directly (for speed): every way of changing it is seen."""
    monkeypatch.delenv("GPURNN_BACKEND", raising=False)
    assert backends.runs_numpy("auto", on_gpu=False)
    monkeypatch.setenv("GPURNN_BACKEND", "triton")
    assert not backends.runs_numpy("auto", on_gpu=False)
    assert backends.runs_numpy("numpy", on_gpu=False)   # an explicit backend is not overridden
    with mock.patch.dict(os.environ, {"GPURNN_BACKEND": "numpy"}):
        assert backends.runs_numpy("auto", on_gpu=False)
    assert not backends.runs_numpy("auto", on_gpu=False)
    monkeypatch.setenv("GPURNN_BACKEND", "n\u00fcmpy")   # decoded as os.environ decodes it
    assert backends.env("GPURNN_BACKEND", "auto") == "n\u00fcmpy" and backends.env("GPURNN_NOT_SET", None) is None
    monkeypatch.setattr(os, "environ", {"GPURNN_BACKEND": "numpy"})   # os.environ replaced by a plain dict
    assert backends.runs_numpy("auto", on_gpu=False)
    assert not backends.runs_numpy("auto", on_gpu=True)


def test_unusable_backend_reports_reason(monkeypatch):
    monkeypatch.setattr(backends, "_cuda_reason", lambda: "no CUDA GPU is visible")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status = backends.backend_status()
    assert status["triton"] is not None
    with pytest.raises(RuntimeError, match="triton.*not usable here"):
        backends.resolve("triton", on_gpu=False)
    with pytest.raises(ValueError, match="numpy.*cpu.*cuda"):
        backends.resolve("numpy", on_gpu=True)


def test_functional_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend.*'gpu'"):
        gpurnn.functional.forward("rnn", np.zeros((2, 1, 3)),
                                  {"w_ih": np.zeros((4, 3)), "w_hh": np.zeros((4, 4))}, backend="gpu")


@pytest.mark.parametrize("value, says", [("numpy", "GPURNN_BACKEND='numpy'\n"),
                                         ("gpu", "GPURNN_BACKEND='gpu': not one of ('auto', 'numpy', 'cupy', "
                                                 "'triton'), so every layer call with backend='auto' raises")])
def test_info_says_what_gpurnn_backend_sets(value, says, monkeypatch):
    monkeypatch.setenv("GPURNN_BACKEND", value)
    assert says in importlib.import_module("gpurnn.info").info() + "\n"


def test_info_command_and_import_without_side_effects():
    out = subprocess.run([sys.executable, "-m", "gpurnn", "info"], capture_output=True, text=True, check=True)
    assert "backends:" in out.stdout and "numpy   usable" in out.stdout
    assert "LSTM and GRU steps on the CPU (float32): " in out.stdout
    # importing gpurnn must not import torch, triton or cupy (no GPU work at import time)
    code = "import sys, gpurnn; print(sorted(m for m in ('torch', 'triton', 'cupy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
