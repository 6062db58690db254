"""The profiling suite: bench.py end to end on the CPU, its loop baseline, and the floor kernel.

bench.py runs as users run it (a subprocess) at a tiny size; the checks are on
what it wrote: CSV, markdown and PNGs exist, and every ratio is the row's time
over the baseline's time of the same configuration in the same run.
"""
import csv
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROFILING = ROOT / "profiling"
sys.path.insert(0, str(PROFILING))

import providers  # noqa: E402  (profiling/ is not a package)

TINY = ["--device", "cpu", "--cells", "rnn,jordan", "--batch", "2", "--steps", "2,3", "--hidden", "4",
        "--repeats", "3", "--settle-s", "0", "--no-progress", "--name", "tiny"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(PROFILING / "bench.py"), *TINY, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(out / "tiny.csv") as f:
        rows = list(csv.DictReader(f))
    return out, rows


def test_writes_csv_markdown_and_plots(tiny_run):
    out, rows = tiny_run
    # 2 cells x 2 T x 2 modes x (gpurnn-numpy, torch.nn, loop)
    assert len(rows) == 24
    assert (out / "tiny.md").read_text().count("| rnn | float32 | 2 |") == 4
    for png in ("tiny_fwd_speedup.png", "tiny_fwdbwd_speedup.png",
                "tiny_fwd_time_vs_T.png", "tiny_fwdbwd_time_vs_T.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert not (out / "tiny_fwd_time_vs_H.png").exists()   # only one H: nothing to plot


def test_every_ratio_is_time_over_the_baseline_of_the_same_run(tiny_run):
    _, rows = tiny_run
    assert len({r["run_id"] for r in rows}) == 1
    key = lambda r: (r["cell"], r["mode"], r["dtype"], r["batch"], r["steps"], r["hidden"], r["input"])
    base = {key(r): r for r in rows if r["provider"] == r["baseline"]}
    ratios = 0
    for r in rows:
        assert r["baseline"] == ("loop" if r["cell"] == "jordan" else "torch.nn")
        if r["status"] != "ok":
            assert r["cell"] == "jordan" and r["provider"] == "torch.nn" and r["ratio"] == ""
            continue
        b = base[key(r)]
        assert float(r["ratio"]) == float(r["median_ms"]) / float(b["median_ms"])
        assert float(r["q20_ms"]) <= float(r["median_ms"]) <= float(r["q80_ms"])
        assert float(r["per_step_us"]) == pytest.approx(float(r["median_ms"]) * 1e3 / int(r["steps"]), rel=1e-12)
        ratios += 1
    assert ratios == 20


def test_outputs_agree_with_the_baseline(tiny_run):
    _, rows = tiny_run
    for r in rows:
        if r["mode"] == "fwd" and r["status"] == "ok":
            assert float(r["max_abs_diff"]) < 1e-5, r   # float32, 3 steps of size-4 cells


def test_markdown_ratios_match_the_csv(tiny_run):
    out, rows = tiny_run
    md = (out / "tiny.md").read_text()
    for r in rows:
        if r["ratio"]:
            assert f"{float(r['ratio']):.3f}" in md


def test_engine_vs_torch_preset_is_issue_2s_table():
    bench = __import__("bench")
    args = bench.parse_args(["--preset", "engine-vs-torch"])
    assert (args.device, args.cells, args.batch, args.steps, args.hidden, args.input) == \
        ("cpu", ("rnn", "lstm", "gru"), (32,), (128,), (128,), 64)
    assert (args.providers, args.modes, args.name) == (("gpurnn-numpy", "torch.nn"), ("fwdbwd",), "engine_vs_torch")
    assert bench.parse_args(["--preset", "engine-vs-torch", "--steps", "16"]).steps == (16,)


@pytest.mark.parametrize("cell", ["rnncell", "lstmcell", "grucell"])
def test_cell_modules_run_one_step_on_torch_nn_and_gpurnn(cell):
    cfg = providers.Config(cell, 3, 1, 6, 4, 6, "float64", "cpu")
    runs = {p: providers.build(p, cfg) for p in ("torch.nn", "gpurnn-numpy")}
    outs = {p: r.fwd() for p, r in runs.items()}
    assert outs["torch.nn"].shape == (1, 3, 6)
    torch.testing.assert_close(outs["gpurnn-numpy"], outs["torch.nn"], rtol=1e-12, atol=1e-12)
    runs["gpurnn-numpy"].fwdbwd()
    assert runs["gpurnn-numpy"].x.grad.shape == (1, 3, 4)
    assert providers.unavailable("loop", cfg) and providers.unavailable("torch.nn", dataclasses.replace(cfg, steps=2))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_loop_baseline_equals_torch_nn(cell):
    """The plain loop (and so torch.compile of it) computes what torch.nn computes: float64."""
    cfg = providers.Config(cell, 3, 5, 7, 4, 7, "float64", "cpu")
    m = providers.reference_module(cfg)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    y_loop = providers.loop_forward(cell, m, x, providers.STEPS[cell])
    g_loop = torch.autograd.grad(y_loop.square().sum(), [x, *m.parameters()])
    y_ref = m(x)[0]
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(y_loop, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_loop, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_jordan_loop_equals_gpurnn_numpy():
    """Jordan has no torch.nn twin: the loop is its baseline, checked against the engine."""
    cfg = providers.Config("jordan", 3, 6, 5, 4, 2, "float64", "cpu")
    m = providers.reference_module(cfg)
    m.backend = "numpy"
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    y_loop = providers.loop_forward("jordan", m, x, providers.STEPS["jordan"])
    g_loop = torch.autograd.grad(y_loop.square().sum(), [x, *m.parameters()])
    y_ref = m(x)[0]
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(y_loop, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_loop, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grid_sync", [False, True], ids=["local", "grid"])
def test_floor_kernel_does_its_loads_and_stores(grid_sync):
    """Interpreter run (one program for the grid barrier: the interpreter runs programs in turn)."""
    floor = __import__("floor")
    T, B, H, G = 4, 3 if grid_sync else 19, 40, 4
    x = torch.randn(T, B, G * H)
    h = torch.full((T + 1, B, H), math.nan)
    h[0] = torch.randn(B, H)
    count = torch.zeros(1, dtype=torch.int32)
    floor.launch(x, h, count, grid_sync, n_sms=1)
    expected = h[0] + torch.cumsum(x.view(T, B, G, H).sum(2), 0)
    torch.testing.assert_close(h[1:], expected, rtol=1e-6, atol=1e-5)
    assert int(count) == (T if grid_sync else 0)


def test_floor_kernel_compiles_for_sm90_and_sm80():
    """Ahead-of-time compile without a GPU (outside the interpreter, hence a subprocess)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(PROFILING / "floor.py"), "--compile"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" ok") == 8, done.stdout


def test_a_compile_over_the_limit_is_recorded_and_not_retried(tmp_path):
    args = ["--device", "cpu", "--cells", "gru", "--batch", "2", "--steps", "2,3", "--hidden", "4",
            "--providers", "compile", "--compile-limit-s", "0.05", "--repeats", "3", "--settle-s", "0",
            "--no-progress", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, str(PROFILING / "bench.py"), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "bench.csv") as f:
        status = [(r["steps"], r["mode"], r["status"]) for r in csv.DictReader(f) if r["provider"] == "compile"]
    assert status == [("2", "fwd", "timeout"), ("2", "fwdbwd", "skipped"),
                      ("3", "fwd", "skipped"), ("3", "fwdbwd", "skipped")]
