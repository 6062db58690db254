"""Test-wide setup: Triton kernels run on the CPU through the interpreter.

TRITON_INTERPRET must be set before triton.jit decorates a kernel, so it is
set here, before any test module imports gpurnn.kernels.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# The CPU torch front end times gpurnn's engine against torch's fused op per layer shape and may
# take either (gpurnn/cpu/layer.py). The suite tests the engine unless a test asks for the choice
# (tests/cpu/test_layer_route.py).
os.environ.setdefault("GPURNN_CPU_LAYER", "engine")
# Route decisions are not kept between processes (gpurnn/cpu/stored.py): each test run times its own, and a test's
# subprocess does not read the last run's (tests/cpu/test_stored.py keeps them where it tests that)
os.environ["GPURNN_ROUTE_CACHE"] = "0"

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _timings_in_quiet(monkeypatch):
    """Every route timing taken as made in quiet (no thread waited for a CPU), so that a busy test machine does not
    make a test's decisions due for timing again (tests/cpu/test_timed.py simulates the load it tests)."""
    from gpurnn.cpu import timed
    monkeypatch.setattr(timed, "_waited", lambda: 0.0)
