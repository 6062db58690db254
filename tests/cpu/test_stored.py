"""gpurnn/cpu/stored.py: route decisions made in quiet are kept between processes, for the setting they were made in."""
import json
import logging
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

from gpurnn.cpu import stored, timed


@pytest.fixture
def kept(tmp_path, monkeypatch):
    """Decisions kept under tmp_path (in routes/)."""
    monkeypatch.setenv("GPURNN_ROUTE_CACHE", "1")
    monkeypatch.setenv("GPURNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(stored, "_files", {})
    monkeypatch.setattr(stored, "_said", [])
    return tmp_path / "routes"


def _timer(answer):
    calls = []

    def time_routes():
        calls.append(1)
        return dict(answer)
    return time_routes, calls


def _new_process():
    """A new process's view: nothing read yet."""
    stored._files.clear()
    return timed.Decisions("layer", ("engine", "torch"))


def _agreed(key, time_routes):
    """key decided in AGREED processes in a row, by time_routes: taken untimed from then on."""
    for _ in range(stored.AGREED):
        timed.decide(_new_process(), key, time_routes)


def test_a_decision_two_processes_made_in_quiet_is_read_by_the_next_untimed(kept):
    time_routes, calls = _timer({"engine": 2.0, "torch": 1.0})
    assert timed.decide(_new_process(), ("gru", 64), time_routes) == "torch"
    assert _new_process().due(("gru", 64))   # one timing's noise is not kept for every process
    assert timed.decide(_new_process(), ("gru", 64), time_routes) == "torch" and len(calls) == 2
    later = _new_process()
    assert not later.due(("gru", 64)) and later[("gru", 64)] == ("torch", {"engine": 2.0, "torch": 1.0})
    assert timed.decide(later, ("gru", 64), time_routes) == "torch" and len(calls) == 2
    assert timed.Decisions("gemm", ("engine", "torch")).due(("gru", 64))   # each kind its own decisions


def test_processes_that_disagree_start_the_count_again(kept):
    torch_wins, engine_wins = _timer({"engine": 2.0, "torch": 1.0})[0], _timer({"engine": 1.0, "torch": 2.0})[0]
    for time_routes in (torch_wins, engine_wins):
        timed.decide(_new_process(), "k", time_routes)
    assert _new_process().due("k")
    timed.decide(_new_process(), "k", engine_wins)
    assert _new_process().get("k")[0] == "engine"


def test_a_decision_timed_under_load_is_not_kept(kept, monkeypatch):
    waited = iter([0.0, 10.0])   # before and after the timing: it waited for a CPU the whole time
    monkeypatch.setattr(timed, "_waited", lambda: next(waited))
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    timed.decide(_new_process(), "k", time_routes)
    assert _new_process().due("k") and not kept.exists()


def test_another_setting_times_again(kept):
    _agreed("k", _timer({"engine": 1.0, "torch": 2.0})[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)   # torch's op runs on another thread count: its time may differ
    try:
        assert _new_process().due("k")
    finally:
        torch.set_num_threads(threads)
    assert not _new_process().due("k")


def test_an_old_decision_is_timed_again(kept, monkeypatch):
    _agreed("k", _timer({"engine": 1.0, "torch": 2.0})[0])
    monkeypatch.setattr(stored, "MAX_AGE", -1.0)
    assert _new_process().due("k")


_NOT_OURS = ["{not json", "[1, 2]", '{"layer": []}', "[" * 100000 + "]" * 100000]
_NOW = time.time()   # (an entry of a known route and times made now would be read)
_NOT_DECISIONS = [["torch", {"torch": 1.0}, "yesterday", 2], ["torch", 5, _NOW, 2], ["torch", {"torch": 1.0}, 1e12, 2],
                  ["garbage", {"garbage": 1.0}, _NOW, 2], [None, {"torch": 1.0}, _NOW, 2], "torch",
                  ["torch", {"torch": "fast"}, _NOW, 2], ["torch", {"torch": True}, _NOW, 2],
                  ["torch", {"torch": 1.0}, _NOW], ["torch", {"torch": 1.0}, _NOW, 2.0]]


@pytest.mark.parametrize("content", _NOT_OURS + [{"layer": {"'k'": entry}} for entry in _NOT_DECISIONS],
                         ids=[f"file{i}" for i in range(len(_NOT_OURS))] + [f"entry{i}" for i, _ in
                                                                              enumerate(_NOT_DECISIONS)])
def test_what_is_no_decision_is_timed_again_and_written_over(kept, content):
    """A file or an entry not of ours (an unknown route, times or age of another type, a time in the future): timed."""
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    timed.decide(_new_process(), "other", time_routes)
    [path] = kept.iterdir()
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    cache = _new_process()
    assert cache.get("k") is None and cache.due("k")
    assert timed.decide(cache, "k", time_routes) == "engine" and len(calls) == 2
    assert stored._read(path)["layer"]["'k'"][0] == "engine"


def test_an_unknown_route_here_is_timed_again(kept):
    """A GEMM route this torch lacks (oneDNN's) is no decision here."""
    time_routes, calls = _timer({"engine": 1.0, "onednn": 0.5})
    for _ in range(stored.AGREED):
        stored._files.clear()
        timed.decide(timed.Decisions("gemm", ("engine", "onednn")), "k", time_routes)
    stored._files.clear()
    assert not timed.Decisions("gemm", ("engine", "onednn")).due("k") and timed.Decisions("gemm", ("engine",)).due("k")


def test_files_no_process_wrote_for_a_week_are_removed(kept):
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    timed.decide(_new_process(), "k", time_routes)
    old = kept / "routes-0123.json"
    old.write_text("{}")
    os.utime(old, (time.time() - stored.MAX_AGE - 60,) * 2)
    timed.decide(_new_process(), "k2", time_routes)
    assert len(list(kept.iterdir())) == 1 and not old.exists()


def test_gpurnn_route_cache_0_keeps_and_reads_none(kept, monkeypatch):
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    _agreed("k", time_routes)
    monkeypatch.setenv("GPURNN_ROUTE_CACHE", "0")
    assert stored.directory() is None and _new_process().due("k")
    timed.decide(_new_process(), "k2", time_routes)
    assert len(calls) == 3 and "'k2'" not in next(kept.iterdir()).read_text()
    monkeypatch.setenv("GPURNN_ROUTE_CACHE", "no")
    with pytest.raises(ValueError, match=r"GPURNN_ROUTE_CACHE: expected one of \('1', '0'\), got 'no'"):
        _new_process().due("k")


def test_an_unwritable_directory_is_logged_once_and_decides_as_before(kept, monkeypatch, caplog):
    """Logged, not warned: a warnings filter of "error" would fail the caller's forward."""
    blocker = kept.parent / "a file"
    blocker.write_text("")
    monkeypatch.setenv("GPURNN_CACHE_DIR", str(blocker))   # its routes/ cannot be made under a file
    time_routes, calls = _timer({"engine": 1.0, "torch": 2.0})
    cache = _new_process()
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="gpurnn"):
        warnings.simplefilter("error")
        assert timed.decide(cache, "k", time_routes) == "engine"
        timed.decide(cache, "k2", time_routes)
    said = [r.getMessage() for r in caplog.records]
    assert len(calls) == 2 and len(said) == 1 and "not kept in" in said[0] and "GPURNN_ROUTE_CACHE=0" in said[0]
    assert os.listdir(kept.parent) == ["a file"]


_PROGRAM = """
import torch, gpurnn.nn as gnn
from gpurnn.cpu import layer, timed
timed._waited = lambda: 0.0   # every timing taken as made in quiet (as tests/conftest.py does): kept
timings = []
layer._time = lambda *a: timings.append(1) or {"engine": 1.0, "torch": 2.0}   # the same decision in every process
torch.manual_seed(0)
m = gnn.GRU(8, 16, num_layers=2)
m(torch.randn(40, 4, 8))[0].sum().backward()
print(len(timings), sorted(route for route, _ in layer.chosen().values()))
"""


def test_a_third_process_takes_the_routes_two_agreed_on_untimed(tmp_path):
    env = dict(os.environ, GPURNN_CACHE_DIR=str(tmp_path), GPURNN_ROUTE_CACHE="1", GPURNN_CPU_LAYER="auto")
    runs = [subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True)
            for _ in range(1 + stored.AGREED)]
    assert [run.stdout for run in runs] == ["2 ['engine', 'engine']\n"] * stored.AGREED + ["0 ['engine', 'engine']\n"]


def test_a_class_looked_for_in_vain_is_not_looked_for_again(kept, monkeypatch):
    """A call where no timing may run (under a torch function mode: `with torch.device(...)`) asks every time."""
    looks = []
    load = stored.load
    monkeypatch.setattr(stored, "load", lambda *args: looks.append(args) or load(*args))
    cache = _new_process()
    assert [cache.get("k"), cache.due("k"), cache.get("k")] == [None, True, None] and len(looks) == 1


def test_variables_set_to_their_default_or_not_timing_ones_keep_the_same_setting(kept, monkeypatch):
    first = stored._path()
    for name, value in (("GPURNN_ROUTE_CACHE", "1"), ("GPURNN_ROUTE_CACHE", ""), ("GPURNN_CPU_LAYER", "auto"),
                        ("GPURNN_GEMM", "auto"), ("GPURNN_GEMM", "")):
        monkeypatch.setenv(name, value)
        assert stored._path() == first, name
    monkeypatch.setenv("GPURNN_GEMM", "numpy")   # the engine's time changes with its GEMMs
    assert stored._path() != first


def test_without_a_home_directory_none_are_kept(monkeypatch, tmp_path):
    monkeypatch.delenv("GPURNN_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(stored.os.path, "expanduser", lambda path: path)   # as where HOME and passwd have none
    monkeypatch.chdir(tmp_path)
    assert stored.directory() is None   # (not ./~/.cache)


def test_files_are_readable_by_others_and_a_killed_writers_temporary_file_goes_after_an_hour(kept):
    _agreed("k", _timer({"engine": 1.0, "torch": 2.0})[0])
    [path] = kept.iterdir()
    assert path.stat().st_mode & 0o777 == 0o644
    left = kept / "routes-abc.tmp"
    left.write_text("{")
    os.utime(left, (time.time() - stored.LEFT_BEHIND - 60,) * 2)
    timed.decide(_new_process(), "k2", _timer({"engine": 1.0, "torch": 2.0})[0])
    assert sorted(kept.iterdir()) == [path]
