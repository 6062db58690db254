"""Batch tiles launched in groups (common.Config.groups, the kernels' tile0 argument).

On a GPU a split grid larger than the SM count runs one persistent launch per group
of batch tiles (common.choose_config). GPURNN_TILES=<n> caps the tiles per launch in
every mode, so the interpreter runs the same offsets here.
"""
from types import SimpleNamespace

import numpy as np
import pytest

from gpurnn.kernels import common as cm
from kernel_cases import (TOL, assert_all_close, forced_split_k, launches, make_case, nan_empty,  # noqa: F401
                          packed_sizes, run, split_hidden)

CELLS = {"elman": {}, "lstm": {}, "gru": {}, "jordan": {"O": 6}}


def test_32_row_tiles_keep_their_accumulators_within_the_registers():
    """LSTM bf16 H=300: K = 256 + 128 makes 32 rows x 32 units a 96 KB W tile (within WIDE_TILE_BYTES),
    but its forward spilled 2.5 KB (compile_check): 32 rows take twice the units only up to
    WIDE_TILE_OUTPUTS rows x gate columns."""
    tiles = cm.device_tiles(300, 4, 2, "fwd", 132, cm.SHARED_BYTES[90])
    assert [(c.BB, c.S) for c in tiles] == [(16, 16), (32, 16)]
    assert all(c.BB * c.S * 4 <= cm.WIDE_TILE_OUTPUTS for c in tiles)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("hidden", ["single", "split"])
def test_one_tile_per_launch_matches_engine(cell, hidden, monkeypatch, launches, nan_empty):
    """B=35: three tiles of 16 rows (the last one short), one launch each, packed and reversed."""
    monkeypatch.setenv("GPURNN_TILES", "1")
    if hidden == "split":
        monkeypatch.setenv("GPURNN_SLICE", "16")   # P = 3 slices, one launch per step
    T, B = 4, 35
    case = make_case(cell, T, B, 40, seed=5, **CELLS[cell])
    sizes = packed_sizes(T, B)
    got = run(case, "triton", batch_sizes=sizes, reverse=True)
    assert_all_close(got, run(case, "numpy", batch_sizes=sizes, reverse=True), **TOL[np.float32])
    windows = 1 if hidden == "single" else T + (cell == "jordan")
    assert launches.count("_fwd_kernel") == 3 * windows


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("hidden", ["single", "split"])
def test_an_empty_batch_launches_nothing(cell, hidden, monkeypatch, launches):
    """B=0: no batch tile, so no launch (Config.groups), and the engine's empty outputs and zero gradients."""
    if hidden == "split":
        monkeypatch.setenv("GPURNN_SLICE", "16")
    case = make_case(cell, 3, 0, 40, **CELLS[cell])
    assert_all_close(run(case, "triton"), run(case, "numpy"), **TOL[np.float32])
    assert launches.count("_fwd_kernel") == launches.count("_bwd_kernel") == 0


@pytest.mark.parametrize("T", [8, 64])
def test_grouped_launches_do_not_grow_with_T(T, monkeypatch, launches):
    monkeypatch.setenv("GPURNN_TILES", "2")
    run(make_case("lstm", T, 35, 16), "triton")     # 3 tiles: groups of 2 and 1
    assert (launches.count("_fwd_kernel"), launches.count("_bwd_kernel")) == (2, 2)


def _config_on_gpu(monkeypatch, H, B, sms, dtype_bytes=2):
    monkeypatch.setattr(cm, "interpreting", lambda: False)
    monkeypatch.setattr(cm, "device_limits", lambda device: (sms, cm.SHARED_BYTES[90]))
    return cm.choose_config(H, B, 4, dtype_bytes, SimpleNamespace(type="cuda"), "fwd")


def test_large_batch_runs_split_in_groups(monkeypatch):
    """LSTM bf16 H=1024 at B=128: 4 tiles of 32 rows x P slices exceed 132 SMs, and wider slices would
    take a W tile over WIDE_TILE_BYTES; P alone fits, so groups."""
    cfg = _config_on_gpu(monkeypatch, 1024, 128, 132)
    assert cfg.mode == "split" and (cfg.BB, cfg.S) == (32, 16) and cfg.P * 4 > 132
    assert cfg.tiles == 132 // cfg.P >= 1
    groups = cfg.groups(128)
    assert [t0 for _, t0 in groups] == list(range(0, 4, cfg.tiles))
    assert all(grid[0] * grid[1] <= 132 for grid, _ in groups)


@pytest.mark.parametrize("B, tile, P", [(32, (32, 8), 128), (64, (32, 16), 64)])
def test_h1024_batch_of_64_is_one_launch(B, tile, P, monkeypatch):
    """LSTM bf16 H=1024 on 132 SMs: B=32 as one tile of 32 rows x 8 units (128 programs); B=64 as 2 tiles
    of 32 rows x 16 units (a 128 KB W tile, 2 x 64 programs), one launch where 8 units took 2."""
    for direction in ("fwd", "bwd"):
        monkeypatch.setattr(cm, "interpreting", lambda: False)
        monkeypatch.setattr(cm, "device_limits", lambda device: (132, cm.SHARED_BYTES[90]))
        cfg = cm.choose_config(1024, B, 4, 2, SimpleNamespace(type="cuda"), direction)
        assert (cfg.mode, (cfg.BB, cfg.S), cfg.P, len(cfg.groups(B))) == ("split", tile, P, 1)


@pytest.mark.parametrize("B, tile, P, launches", [(16, (16, 8), 96, 1), (32, (32, 8), 96, 1), (64, (32, 16), 48, 1),
                                                (128, (32, 16), 48, 2)])
def test_32_row_tiles_make_the_batch_one_launch(B, tile, P, launches, monkeypatch):
    """LSTM bf16 H=768 on 132 SMs: 16-row tiles while they fit, then 32 rows, then also twice the units;
    B=128 fits in no config: the fewest launches (2; 32 rows x 8 units would take 4, 16 rows 8)."""
    cfg = _config_on_gpu(monkeypatch, 768, B, 132)
    assert (cfg.mode, (cfg.BB, cfg.S), cfg.P) == ("split", tile, P)
    assert len(cfg.groups(B)) == launches


@pytest.mark.parametrize("GP, H, B, tile, launches, blocks", [
    (4, 768, 64, (64, 8), 1, (32, 16)), (4, 1024, 64, (64, 8), 1, (16, 16)), (4, 1024, 32, (32, 8), 1, (16, 16)),
    (4, 768, 32, (32, 8), 1, (32, 32)), (1, 1024, 64, (32, 16), 1, (32, 16)), (1, 1024, 128, (64, 16), 1, (32, 16)),
    (4, 768, 16, (16, 8), 1, (16, 16)), (4, 512, 64, (32, 8), 1, (32, 16)), (4, 512, 128, (64, 8), 1, (32, 16))])
def test_fp32_takes_wide_tiles_where_their_dots_fit(GP, H, B, tile, launches, blocks, monkeypatch):
    """fp32 (FMA dots) on 132 SMs: 32 and 64 rows with the same slices (fp32_wide_tiles) make LSTM/GRU H=512-1024
    at B=64 one launch (before: 2, 2 and 4 at H=512, 768, 1024; H=512 at B=128: 4), the dots in blocks
    (forward, backward rows per dot: Config.rb) where a whole tile's operand would not fit, and in the
    backward's 16 warps at H=512 (one 32-row dot spilled there)."""
    monkeypatch.setattr(cm, "interpreting", lambda: False)
    monkeypatch.setattr(cm, "device_limits", lambda device: (132, cm.SHARED_BYTES[90]))
    for direction, block in zip(("fwd", "bwd"), blocks):
        cfg = cm.choose_config(H, B, GP, 4, SimpleNamespace(type="cuda"), direction)
        assert (cfg.mode, (cfg.BB, cfg.S), len(cfg.groups(B)), cfg.rb or cfg.BB) == ("split", tile, launches, block)
    assert all(c.BB == 16 for c in cm.device_tiles(256, GP, 4, "fwd", 132, cm.SHARED_BYTES[90]))   # not measured
    monkeypatch.setenv("GPURNN_FP32_PRECISION", "tf32")   # tensor cores: another layout, not measured
    assert all(c.BB == 16 for c in cm.device_tiles(H, GP, 4, "fwd", 132, cm.SHARED_BYTES[90]))


@pytest.mark.parametrize("elem_bytes", [2, 4])
def test_every_layer_up_to_h1024_and_b64_is_one_launch_on_an_h100(elem_bytes):
    """The issue's bar: LSTM, GRU and Elman, bf16 or fp32, H <= 1024 and B <= 64, on 132 SMs with sm_90's shared
    memory: one persistent launch per layer and direction, never one per step."""
    for GP in (1, 4):
        for H in [*range(8, 1025, 8), 100, 300]:
            for B in (1, 17, 32, 48, 64):
                for direction in ("fwd", "bwd"):
                    cfg = cm.place(cm.device_tile(H, B, GP, elem_bytes, direction, 132, cm.SHARED_BYTES[90]), B, 132)
                    assert cfg.mode != "stepwise" and len(cfg.groups(B)) == 1, (GP, H, B, direction, cfg)


def test_32_row_tiles_leave_stepwise_and_small_grids_alone(monkeypatch):
    stepwise = _config_on_gpu(monkeypatch, 768, 64, 40)              # P = 48 > 40 SMs: a launch per step
    assert (stepwise.mode, stepwise.BB) == ("stepwise", 16)
    assert _config_on_gpu(monkeypatch, 128, 64, 132).BB == 16        # single mode
    # the tensor-core backward at H=96 is split in 2 slices of 64 units: no twice the slice (P would be 1),
    # and no 32 rows (32 x 64 units x 4 gates is over WIDE_TILE_OUTPUTS; it spilled 2.7 KB)
    assert [(c.BB, c.P) for c in cm.device_tiles(96, 4, 2, "bwd", 132, cm.SHARED_BYTES[90])] == [(16, 2)]
    monkeypatch.setenv("GPURNN_BATCH_ROWS", "48")
    with pytest.raises(ValueError, match="GPURNN_BATCH_ROWS: expected one of 16, 32, 32/16, 64/16, 64/32, got '48'"):
        cm.tile_config(64, 16, 4, 2)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("hidden", ["single", "split"])
def test_32_row_tiles_match_engine(cell, hidden, monkeypatch, nan_empty):
    """device_tiles' 32-row tiles (GPURNN_BATCH_ROWS=32): B=35 as a full and a short tile, packed and
    reversed, one launch, and split in slices of 16 (the backward with a K tail: H=40 = 32 + 16)."""
    monkeypatch.setenv("GPURNN_BATCH_ROWS", "32")
    if hidden == "split":
        monkeypatch.setenv("GPURNN_SLICE", "16")
    T, B = 4, 35
    case = make_case(cell, T, B, 40, seed=9, **CELLS[cell])
    sizes = packed_sizes(T, B)
    got = run(case, "triton", batch_sizes=sizes, reverse=True)
    assert_all_close(got, run(case, "numpy", batch_sizes=sizes, reverse=True), **TOL[np.float32])
    assert cm.tile_config(40, B, 4, 4).BB == 32


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
@pytest.mark.parametrize("rows", ["64/16", "64/32", "32/16"])
def test_row_blocks_match_engine(cell, rows, monkeypatch, nan_empty):
    """Tiles whose dots run in blocks of rows (Config.rb; fp32 64-row tiles on a GPU): B=35 as one tile with
    a short and an empty block (64/16; 64/32: a short one), or two tiles (32/16), packed and reversed,
    split in slices of 32 with a K tail in both directions (H=96 = 64 + 32)."""
    monkeypatch.setenv("GPURNN_BATCH_ROWS", rows)
    monkeypatch.setenv("GPURNN_SLICE", "32")
    T, B = 4, 35
    case = make_case(cell, T, B, 96, seed=11)
    sizes = packed_sizes(T, B)
    got = run(case, "triton", batch_sizes=sizes, reverse=True)
    assert_all_close(got, run(case, "numpy", batch_sizes=sizes, reverse=True), **TOL[np.float32])
    for direction in ("fwd", "bwd"):
        cfg = cm.tile_config(96, B, 4, 4, direction)
        assert (cfg.BB, cfg.rb, cfg.k2 > 0) == (*map(int, rows.split("/")), True)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype, elem_bytes", [("bfloat16", 2), ("float32", 4)])
def test_compile_configs_hold_every_config_a_batch_gets(arch, dtype, elem_bytes):
    """compile_check compiles what runs: the config device_tile gives any B is in compile_configs."""
    for H in (384, 512, 640, 768, 1024):
        for GP in (1, 4):
            for direction in ("fwd", "bwd"):
                compiled = cm.compile_configs(H, dtype, GP, direction, arch)
                for B in (1, 16, 33, 64, 96, 128, 200, 1024):
                    assert cm.device_tile(H, B, GP, elem_bytes, direction, cm.ARCH_SMS[arch],
                                          cm.SHARED_BYTES[arch]) in compiled


def test_split_grid_that_fits_is_one_launch(monkeypatch):
    cfg = _config_on_gpu(monkeypatch, 768, 16, 132)
    assert cfg.mode == "split" and cfg.tiles == 0 and len(cfg.groups(16)) == 1
    assert not cfg.dirs_fit                                   # 2 x 96 programs > 132 SMs
    assert _config_on_gpu(monkeypatch, 768, 16, 192).dirs_fit   # both directions in one launch


def test_more_slices_than_sms_runs_stepwise(monkeypatch):
    cfg = _config_on_gpu(monkeypatch, 768, 16, 4)
    assert cfg.P > 4 and cfg.mode == "stepwise"


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
@pytest.mark.parametrize("io_dtype", [None, "float16"], ids=["fp32", "fp16-exchange"])
def test_h96_split_exchange_matches_engine(cell, io_dtype, monkeypatch, nan_empty):
    """H=96 (a multiple of 32, not a power of two) in slices of 32: P=3 programs exchange h and the
    backward's shares through buffers in the io dtype (fp16 here), over B=17 (a short second tile),
    packed and reversed."""
    from kernel_cases import TOL_HALF, with_io_dtype

    monkeypatch.setenv("GPURNN_SLICE", "32")
    with_io_dtype(monkeypatch, cell, io_dtype)
    T, B = 5, 17
    case = make_case(cell, T, B, 96, seed=6)
    sizes = packed_sizes(T, B)
    got = run(case, "triton", batch_sizes=sizes, reverse=True)
    tol = TOL_HALF if io_dtype else TOL[np.float32]
    assert_all_close(got, run(case, "numpy", batch_sizes=sizes, reverse=True), **tol)


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
@pytest.mark.parametrize("H, dtype", [(96, "float32"), (96, "float16"), (80, "float32"), (96, "float64")])
def test_k_tail_in_chunks_matches_engine(cell, H, dtype, monkeypatch, forced_split_k, nan_empty):
    """Split in slices of 32, the dots run K = 64 + 32 (no padding to 128), the forward's in two
    chunks per part (one accumulator for both parts), and match the engine; at H=80 the tail's
    last 16 rows are masked (64 + 32 > 80: W and h past H read as zeros)."""
    from kernel_cases import TOL_HALF, with_io_dtype

    monkeypatch.setenv("GPURNN_SLICE", "32")
    with_io_dtype(monkeypatch, cell, "float16" if dtype == "float16" else None)
    nks = forced_split_k(2)
    cfg = cm.tile_config(H, 17, 4, 4)
    assert (cfg.mode, cfg.k1, cfg.k2, cfg.nk) == ("split", 64, 32, 2)
    case = make_case(cell, 4, 17, H, seed=8, dtype=np.float64 if dtype == "float64" else np.float32)
    tol = TOL_HALF if dtype == "float16" else TOL[np.float64 if dtype == "float64" else np.float32]
    assert_all_close(run(case, "triton", reverse=True), run(case, "numpy", reverse=True), **tol)
    assert set(nks) == {2}


def test_k_tail_only_where_it_saves_padding():
    """K = HP/2 + a power-of-two tail of at least 16 per chunk, only where that is under HP."""
    assert [cm.k_tail(H, HP, 1) for H, HP in [(768, 1024), (96, 128), (40, 64), (100, 128), (1024, 1024)]] == \
        [256, 32, 16, 0, 0]
    assert cm.k_tail(768, 1024, 8) == 256 and cm.k_tail(520, 1024, 8) == 128 and cm.k_tail(80, 128, 2) == 32
    single = cm.tile_config(48, 16, 4, 2)            # 32 + 16 would do, but h is one (BB, HP) carry
    assert (single.mode, single.k2) == ("single", 0)


def test_w_budget_follows_the_chip_and_never_drops_below_the_default():
    assert cm.w_budget(None) == cm.W_BUDGET_BYTES
    assert cm.w_budget(cm.SHARED_BYTES[90]) == 128 * 1024       # 227 KB - 64 KB -> 128 KB
    assert cm.w_budget(cm.SHARED_BYTES[80]) == 64 * 1024        # 163 KB - 64 KB -> 64 KB
    assert cm.w_budget(64 * 1024) == cm.w_budget(48 * 1024) == cm.W_BUDGET_BYTES   # small chips (sm_75)


def test_forced_warps_set_the_dot_chunks_too(monkeypatch):
    """GPURNN_WARPS (gpu_check times 4 warps against 8): the forward's K chunks follow the warps, so no
    warp repeats another's MMAs (common.split_k)."""
    assert (cm.tile_config(768, 16, 4, 2).num_warps, cm.tile_config(768, 16, 4, 2).nk) == (8, 8)
    monkeypatch.setenv("GPURNN_WARPS", "4")
    cfg = cm.tile_config(768, 16, 4, 2)
    assert (cfg.num_warps, cfg.nk, cm.tile_config(768, 16, 4, 2, "bwd").num_warps) == (4, 4, 4)
    monkeypatch.setenv("GPURNN_WARPS", "3")
    with pytest.raises(ValueError, match="GPURNN_WARPS: expected one of 2, 4, 8, 16, got '3'"):
        cm.tile_config(768, 16, 4, 2)
