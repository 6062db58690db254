"""gpurnn/cpu/stored.py: route decisions made in quiet are kept between processes, for the setting they were made in."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from gpurnn.cpu import stored, timed


@pytest.fixture
def kept(tmp_path, monkeypatch):
    """Decisions kept in tmp_path; `fresh()`: a new process's view (nothing read yet)."""
    monkeypatch.setenv("GPURNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(stored, "_files", {})
    monkeypatch.setattr(stored, "_warned", [])
    return tmp_path


def _timer(answer):
    calls = []

    def time_routes():
        calls.append(1)
        return dict(answer)
    return time_routes, calls


def _new_process():
    stored._files.clear()
    return timed.Decisions("layer")


def test_a_decision_made_in_quiet_is_read_by_the_next_process_untimed(kept):
    time_routes, calls = _timer({"engine": 2.0, "torch": 1.0})
    assert timed.decide(_new_process(), ("gru", 64), time_routes) == "torch"
    later = _new_process()
    assert not later.due(("gru", 64)) and later[("gru", 64)] == ("torch", {"engine": 2.0, "torch": 1.0})
    assert timed.decide(later, ("gru", 64), time_routes) == "torch" and len(calls) == 1
    assert timed.Decisions("gemm").due(("gru", 64))   # each kind its own decisions


def test_a_decision_timed_under_load_is_not_kept(kept, monkeypatch):
    waited = iter([0.0, 10.0])   # before and after the timing: it waited for a CPU the whole time
    monkeypatch.setattr(timed, "_waited", lambda: next(waited))
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    timed.decide(_new_process(), "k", time_routes)
    assert _new_process().due("k") and not any(kept.iterdir())


def test_another_setting_times_again(kept):
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    timed.decide(_new_process(), "k", time_routes)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)   # torch's op runs on another thread count: its time may differ
    try:
        assert _new_process().due("k")
    finally:
        torch.set_num_threads(threads)
    assert not _new_process().due("k")


def test_an_old_decision_is_timed_again(kept, monkeypatch):
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    timed.decide(_new_process(), "k", time_routes)
    monkeypatch.setattr(stored, "MAX_AGE", -1.0)
    assert _new_process().due("k")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"layer": {"\'k\'": ["engine"]}}'])
def test_a_file_not_of_ours_is_timed_again_and_written_over(kept, content):
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    timed.decide(_new_process(), "other", time_routes)
    [path] = kept.iterdir()
    path.write_text(content)
    cache = _new_process()
    assert cache.due("k")
    timed.decide(cache, "k", time_routes)
    assert len(calls) == 2 and "'k'" in json.loads(path.read_text())["layer"]


@pytest.mark.parametrize("value", ["", "0"])
def test_an_empty_or_zero_directory_keeps_nothing(tmp_path, monkeypatch, value):
    monkeypatch.setenv("GPURNN_CACHE_DIR", value)
    assert stored.directory() is None
    monkeypatch.chdir(tmp_path)
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    timed.decide(_new_process(), "k", time_routes)
    assert _new_process().due("k") and not any(tmp_path.iterdir())


def test_an_unwritable_directory_warns_once_and_decides_as_before(kept, monkeypatch):
    blocker = kept / "a file"
    blocker.write_text("")
    monkeypatch.setenv("GPURNN_CACHE_DIR", str(blocker / "routes"))   # under a file: no directory can be made
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    cache = _new_process()
    with pytest.warns(RuntimeWarning, match="route decisions not kept in .*GPURNN_CACHE_DIR"):
        assert timed.decide(cache, "k", time_routes) == "engine"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timed.decide(cache, "k2", time_routes)
    assert len(calls) == 2 and os.listdir(kept) == ["a file"]


_PROGRAM = """
import torch, gpurnn.nn as gnn
from gpurnn.cpu import layer, timed
timed._waited = lambda: 0.0   # every timing taken as made in quiet (as tests/conftest.py does): kept
timings = []
timed_layer = layer._time
layer._time = lambda *a: timings.append(1) or timed_layer(*a)
torch.manual_seed(0)
m = gnn.GRU(8, 16, num_layers=2)
m(torch.randn(40, 4, 8))[0].sum().backward()
print(len(timings), sorted(route for route, _ in layer.chosen().values()))
"""


def test_a_second_process_takes_the_first_ones_routes_untimed(tmp_path):
    env = dict(os.environ, GPURNN_CACHE_DIR=str(tmp_path), GPURNN_CPU_LAYER="auto")
    runs = [subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    first, second = (run.stdout.split(" ", 1) for run in runs)
    assert first[0] == "2" and second[0] == "0" and second[1] == first[1]
