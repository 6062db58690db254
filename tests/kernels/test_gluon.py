"""The Gluon kernels (kernels/gluon.py, lstm_gluon.py): where they apply, and that off the GPU the Triton
kernels run.

Gluon has no interpreter, so their numbers are checked on a GPU only (profiling/gpu_check.py,
`gluon_checks`); here they are compiled (tests/test_static_cost.py, profiling/compile_check.py).
"""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gpurnn.kernels import common as cm
from gpurnn.kernels import lstm
from kernel_cases import assert_bitwise_equal, launches, make_case, packed_sizes, run  # noqa: F401

CUDA = SimpleNamespace(type="cuda")
HEADLINE = cm.Config(BB=16, HP=1024, S=8, P=96, num_warps=8, mode="split", nk=8, k2=256)


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_headline_tile_fits_both_directions(direction):
    assert cm.gluon_fits(HEADLINE, direction, 2, lstm.GP)


@pytest.mark.parametrize("change, direction", [
    (dict(mode="single", P=1), "fwd"),       # no exchange: Triton's single-mode kernel
    (dict(nk=4), "fwd"),                     # the forward's K chunks must be one per warp
    (dict(BB=32), "bwd"),                    # 32-row backward spilled 264-732 B
    (dict(S=32, P=24), "bwd"),               # 128 gate columns: every warp reads them all
], ids=["single", "chunks-not-warps", "bwd-32-rows", "bwd-wide-slice"])
def test_configs_it_does_not_take(change, direction):
    from dataclasses import replace

    assert not cm.gluon_fits(replace(HEADLINE, **change), direction, 2, lstm.GP)


def test_not_for_fp32_or_fp64():
    assert not cm.gluon_fits(HEADLINE, "fwd", 4, lstm.GP) and not cm.gluon_fits(HEADLINE, "bwd", 8, lstm.GP)


def test_forward_k_chunks_below_16_do_not_fit():
    """K = 64 + 32 over 8 warps would give chunks of 8 and 4: below the MMA's k16."""
    assert not cm.gluon_fits(cm.Config(BB=16, HP=128, S=16, P=6, num_warps=8, mode="split", nk=8, k2=32), "fwd", 2, 4)


@pytest.mark.parametrize("value, expected", [(None, False), ("0", False), ("1", True)])
def test_opt_in_by_environment(value, expected, monkeypatch):
    if value is None:
        monkeypatch.delenv("GPURNN_GLUON", raising=False)
    else:
        monkeypatch.setenv("GPURNN_GLUON", value)
    assert cm.gluon_enabled() is expected


def test_bad_environment_value_is_an_error(monkeypatch):
    monkeypatch.setenv("GPURNN_GLUON", "yes")
    with pytest.raises(ValueError, match=r"GPURNN_GLUON: expected 0 or 1, got 'yes'"):
        cm.gluon_enabled()


def test_applies_only_on_a_gpu_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("GPURNN_GLUON", "1")
    monkeypatch.setattr(cm, "interpreting", lambda: False)
    assert cm.gluon_applies(HEADLINE, "fwd", 2, lstm.GP, CUDA)
    assert not cm.gluon_applies(HEADLINE, "fwd", 2, lstm.GP, SimpleNamespace(type="cpu"))
    monkeypatch.setattr(cm, "interpreting", lambda: True)
    assert not cm.gluon_applies(HEADLINE, "fwd", 2, lstm.GP, CUDA)
    monkeypatch.setenv("GPURNN_GLUON", "0")
    monkeypatch.setattr(cm, "interpreting", lambda: False)
    assert not cm.gluon_applies(HEADLINE, "fwd", 2, lstm.GP, CUDA)


def test_asked_for_under_the_interpreter_the_triton_kernels_run(monkeypatch, launches):
    """GPURNN_GLUON=1 off the GPU: the same Triton kernels and bitwise the same results as without it."""
    monkeypatch.setenv("GPURNN_SLICE", "16")
    case = make_case("lstm", 5, 17, 48, dtype=np.float16, seed=3)
    sizes = packed_sizes(5, 17)
    plain = run(case, "triton", batch_sizes=sizes)
    monkeypatch.setenv("GPURNN_GLUON", "1")
    assert_bitwise_equal(run(case, "triton", batch_sizes=sizes), plain)
    assert not [n for n in launches if n.endswith("_gluon")] and "_fwd_kernel" in launches


def test_compile_targets_list_the_gluon_kernels_where_they_fit():
    names = {t[0] for t in lstm.compile_targets(768, "bfloat16", 90)}
    assert {"lstm_fwd_gluon", "lstm_bwd_gluon", "lstm_fwd_gluon_2dirs", "lstm_fwd_gluon_stepwise"} <= names
    assert not any("gluon" in t[0] for t in lstm.compile_targets(768, "float32", 90))


def test_compiles_where_the_slices_are_not_a_power_of_two(tmp_path):
    """LSTM H=300 bf16 on sm_90: P = 19 slices (the backward sums its shares in masked chunks of 32) and
    the forward's K = 256 + 128; both Gluon kernels compile for it without spilling, and the forward's
    32 x 32 tile is left to Triton."""
    from kernel_cases import run_uninterpreted

    code = ("import compile_check\nfrom gpurnn.kernels import lstm\n"
            "for name, fn, sig, consts in lstm.compile_targets(300, 'bfloat16', 90):\n"
            "    if name in ('lstm_fwd_gluon', 'lstm_bwd_gluon'):\n"
            "        k, regs, spill = compile_check.build(fn, sig, consts, 90, dict(B=16, H=300))\n"
            "        print(name, consts['BB'], consts['S'], consts['P'], consts['K1'], consts['K2'], spill)\n")
    out = run_uninterpreted(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = sorted(tuple(line.split()) for line in out.stdout.splitlines())
    assert rows == [("lstm_bwd_gluon", "16", "16", "19", "256", "64", "0"),   # the backward's N: 256 + 64
                    ("lstm_fwd_gluon", "16", "16", "19", "256", "128", "0"),
                    ("lstm_fwd_gluon", "32", "16", "19", "256", "128", "0")]


def test_a_triton_without_gluon_runs_the_triton_kernels(tmp_path):
    """Where the Gluon API the kernels use cannot be imported (Tritons before 3.6 lack parts of it; here its
    mma_v2 module is hidden), the LSTM module still imports, lists no Gluon targets and runs its Triton
    kernels, even when asked for Gluon."""
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton.experimental.gluon.language.nvidia.ampere'] = None\n"
            "import numpy as np\nfrom gpurnn.kernels import lstm\nassert lstm.GLUON is None\n"
            "assert not any('gluon' in t[0] for t in lstm.compile_targets(768, 'bfloat16', 90))\n"
            "from kernel_cases import make_case, run\n"
            "out = run(make_case('lstm', 3, 4, 24, dtype=np.float16), 'triton')\n"
            "print(sorted(out))\n")
    tests, root = Path(__file__).parents[1:3]   # (root: the checkout's gpurnn, also where it is not installed)
    env = dict(os.environ, GPURNN_GLUON="1", GPURNN_SLICE="16", PYTHONPATH=os.pathsep.join([str(tests), str(root)]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "h" in out.stdout
