"""profiling/gpu_check.py's isolation of checks (no GPU needed): a hang costs one check."""
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "profiling"))
import gpu_check  # noqa: E402


def test_a_hanging_check_is_killed_and_reported():
    status, note = gpu_check.isolated([sys.executable, "-c", "import time; time.sleep(60)"], timeout=2)
    assert status == "HANG" and "2 s" in note


def test_a_check_result_is_read_from_its_last_line():
    code = "print('compiling...'); print('[\"ok\", \"max err 1e-7\"]')"
    assert gpu_check.isolated([sys.executable, "-c", code], timeout=30) == ("ok", "max err 1e-7")


def test_a_crashing_check_reports_its_error():
    status, note = gpu_check.isolated([sys.executable, "-c", "raise SystemExit('segfault-like death')"], timeout=30)
    assert status == "FAIL" and "segfault-like death" in note


def test_every_check_has_a_unique_name_and_the_smoke_test_is_one():
    names = [name for name, _ in gpu_check.check_list("cupy")]
    assert len(names) == len(set(names)) and gpu_check.SMOKE in names


def test_the_report_is_on_disk_after_every_result(tmp_path, monkeypatch):
    """A run killed at the device's time limit still leaves what ran."""
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    report = gpu_check.Report(tmp_path)
    report.add("smoke", "ok", "max err 1e-7", 1.5)
    assert "| smoke | ok | max err 1e-7 |" in (tmp_path / "gpu_check.md").read_text()
    report.add("split", "HANG", "no result after 60 s")
    with open(tmp_path / "gpu_check.csv", newline="") as f:
        assert list(csv.reader(f))[1:] == [["smoke", "ok", "max err 1e-7", "1.5"],
                                           ["split", "HANG", "no result after 60 s", "0.0"]]
