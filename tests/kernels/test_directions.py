"""A bidirectional layer's two directions in one kernel launch (grid axis 2, common.direction_plan),
under TRITON_INTERPRET=1: the same numbers as two separate runs, one launch for both."""
from dataclasses import replace

import numpy as np
import pytest

from gpurnn import engine
from gpurnn.kernels import common as cm
from kernel_cases import launches, make_case, packed_sizes, split_hidden  # noqa: F401


def _pair(cell, packed, backend):
    """forward_directions + backward_directions of a forward and a reverse direction; every result."""
    T, B = 5, 19
    fwd, rev = make_case(cell, T, B, 40, seed=1), make_case(cell, T, B, 40, seed=2)
    sizes = packed_sizes(T, B) if packed else None
    runs = engine.forward_directions(cell, fwd["x"], [(fwd["state0"], fwd["weights"], False),
                                                      (rev["state0"], rev["weights"], True)],
                                     batch_sizes=sizes, backend=backend)
    grads = engine.backward_directions([(saved, case["dy"], case["dstate"])
                                        for (_, _, saved), case in zip(runs, (fwd, rev))])
    out = []
    for (y, state, _), (dx, dstate0, g) in zip(runs, grads):
        out += [y, *state, dx, *dstate0, *[v for v in g.values() if v is not None]]
    return out


def _separate(cell, packed, backend):
    """The same two directions through engine.forward/backward, one at a time."""
    T, B = 5, 19
    fwd, rev = make_case(cell, T, B, 40, seed=1), make_case(cell, T, B, 40, seed=2)
    sizes = packed_sizes(T, B) if packed else None
    out = []
    for case, reverse in ((fwd, False), (rev, True)):
        y, state, saved = engine.forward(cell, fwd["x"], case["state0"], case["weights"], batch_sizes=sizes,
                                         reverse=reverse, backend=backend)
        dx, dstate0, g = engine.backward(saved, case["dy"], case["dstate"])
        out += [y, *state, dx, *dstate0, *[v for v in g.values() if v is not None]]
    return out


@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_both_directions_in_one_launch(cell, packed, launches):
    pair = _pair(cell, packed, "triton")
    assert (launches.count("_fwd_kernel"), launches.count("_bwd_kernel")) == (1, 1)
    for a, b in zip(pair, _separate(cell, packed, "triton")):   # bitwise: each program is the same
        np.testing.assert_array_equal(a, b)
    for a, b in zip(pair, _separate(cell, packed, "numpy")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_split_arithmetic_pairs_step_by_step(split_hidden, launches):
    """Slices of 16 units: stepwise under the interpreter, one launch per step for both directions."""
    pair = _pair("lstm", True, "triton")
    assert (launches.count("_fwd_kernel"), launches.count("_bwd_kernel")) == (5, 6)
    for a, b in zip(pair, _separate("lstm", True, "numpy")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_split_mode_or_misalignment_launches_each_direction_alone():
    """A grid barrier needs all of a launch resident (unless both directions' grids fit the SMs);
    Triton specialises pointers on 16-byte alignment, so direction 1 must match direction 0's."""
    import torch

    cfg = replace(cm.tile_config(768, 16, 4, 2), mode="split")
    buffers = [[torch.zeros(64), torch.zeros(64, dtype=torch.int32)] for _ in range(2)]
    plan = cm.direction_plan(cfg, buffers)
    assert [len(lists) for lists, _ in plan] == [1, 1]
    assert all(offsets.tolist() == [0, 0] for _, offsets in plan)
    shared = cm.direction_plan(replace(cfg, dirs_fit=True), buffers)   # both grids fit the SMs: one launch
    assert [len(lists) for lists, _ in shared] == [2]
    single = cm.direction_plan(replace(cfg, mode="single"), buffers)
    (lists, offsets), = single
    assert len(lists) == 2
    assert [b.data_ptr() for b in buffers[1]] == [a.data_ptr() + 16 * o for a, o in zip(buffers[0], offsets.tolist())]
    misaligned = [buffers[0], [torch.zeros(5)[1:], buffers[1][1]]]   # 4 bytes off
    assert [len(lists) for lists, _ in cm.direction_plan(replace(cfg, mode="single"), misaligned)] == [1, 1]
