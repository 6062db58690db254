"""`python -m gpurnn train`: the summary table, checkpoints that torch.nn loads (and that
reproduce the reported accuracy in plain torch), the progress bar, --text/--sample, bad
arguments of train, gradflow and demo as usage errors (exit 2, before any work or file), and
the headline claim: LSTM >= 95% on the year task with the default settings."""
import argparse
import os

import pytest
import torch

from gpurnn import train as train_command
from gpurnn.__main__ import main
from gpurnn.arguments import read_text_file
from gpurnn.tasks import IGNORE, RecallTask, YearTask
from gpurnn.train import DEFAULT_STEPS, load_rnn

TABLE_HEADER = "| task | cell | accuracy % | loss | time s |"


def table_rows(stdout):
    lines = stdout.splitlines()
    start = lines.index(TABLE_HEADER)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        task, cell, acc, loss, secs = (c.strip() for c in line.strip("|").split("|"))
        rows.append((task, cell, float(acc), float(loss), float(secs)))
    return rows


def train(argv):
    """The train command's rows (main() prints them; run() also returns them)."""
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return train_command.run(parser.parse_args(argv))


@pytest.fixture
def error_of(capsys):
    """error_of(argv): main(argv)'s one "error:" line, checked to be argparse's usage error (exit code 2,
    the command's usage line, no traceback); SystemExit(message) exited 1 with no usage line."""
    def error_of(argv):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(f"usage: python -m gpurnn {argv[0]} "), err
        assert "Traceback" not in err and err.splitlines()[-1].startswith(f"python -m gpurnn {argv[0]}: error: ")
        return err.splitlines()[-1].split(": error: ", 1)[1]
    return error_of


def torch_accuracy(path, task, n):
    """Exact-match accuracy of a checkpoint, recomputed with torch.nn only (no gpurnn engine)."""
    rnn, ckpt = load_rnn(path)
    inputs, targets = (torch.from_numpy(a) for a in task.batch(n))
    with torch.no_grad():
        h, _ = rnn(ckpt["embed"][inputs])
        pred = (h @ ckpt["head_weight"].T + ckpt["head_bias"]).argmax(-1)
    due = targets != IGNORE
    return 100.0 * (1 - (due & (pred != targets)).any(0).float().mean().item())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quick")
    return folder, train(["--quick", "--no-progress", "--out", str(folder)])


def test_quick_run_prints_a_row_per_task_and_cell(quick_run, capsys):
    folder, rows = quick_run
    assert [(r["task"], r["cell"]) for r in rows] == [
        (task, cell) for task in ("year", "recall (lag 50)") for cell in ("elman", "lstm", "gru")]
    for r in rows:
        assert 0 <= r["accuracy"] <= 100 and r["loss"] > 0 and r["seconds"] > 0
        assert r["steps"] == DEFAULT_STEPS["year" if r["task"] == "year" else "recall"] // 10


@pytest.mark.parametrize("cell, torch_class", [("elman", torch.nn.RNN), ("lstm", torch.nn.LSTM),
                                               ("gru", torch.nn.GRU)])
@pytest.mark.parametrize("task", ["year", "recall"])
def test_checkpoint_loads_into_torch_nn_and_reproduces_accuracy(quick_run, task, cell, torch_class):
    folder, rows = quick_run
    path = folder / f"{task}_{cell}.pt"
    rnn, ckpt = load_rnn(path)
    assert type(rnn) is torch_class
    fresh = torch_class(**ckpt["rnn_config"])
    fresh.load_state_dict(torch.load(path)["rnn"])   # plain torch.load (weights_only) also reads it
    # the run evaluated on 200 held-out sequences from seed 10,000 (--quick)
    eval_task = YearTask(seed=10_000) if task == "year" else RecallTask(lag=50, seed=10_000)
    reported = next(r for r in rows if r["task"].startswith(task) and r["cell"] == cell)["accuracy"]
    # float32 engine vs torch.nn may flip a near-tie argmax: allow one sequence of 200
    assert torch_accuracy(path, eval_task, 200) == pytest.approx(reported, abs=0.5 + 1e-9)


def test_summary_table_is_printed(tmp_path, capsys):
    main(["train", "--quick", "--tasks", "recall", "--cells", "gru,elman", "--lag", "8", "--no-progress",
          "--out", ""])
    rows = table_rows(capsys.readouterr().out)
    assert [(r[0], r[1]) for r in rows] == [("recall (lag 8)", "gru"), ("recall (lag 8)", "elman")]


def test_progress_bar_shows_loss_and_steps_per_second(capsys):
    main(["train", "--tasks", "recall", "--cells", "gru", "--steps", "25", "--lag", "4", "--out", ""])
    err = capsys.readouterr().err
    assert "recall gru" in err and "loss=" in err and "step/s" in err and "25/25" in err


def test_text_language_model_samples_and_saves(tmp_path, capsys):
    text = tmp_path / "poem.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 60)
    main(["train", "--text", str(text), "--sample", "80", "--quick", "--batch", "4", "--bptt", "20",
          "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    sample = out.split("--- sample (80 characters, temperature 0.8) ---\n")[1].split("\n---")[0]
    assert len(sample) == 80 and set(sample) <= set(text.read_text())
    (row,) = table_rows(out)
    assert row[:2] == ("text (poem.txt)", "lstm") and row[2] > 30   # a repeated sentence is easy
    rnn, ckpt = load_rnn(tmp_path / "text_lstm.pt")
    assert isinstance(rnn, torch.nn.LSTM) and ckpt["vocab"] == "".join(sorted(set(text.read_text())))


@pytest.mark.parametrize("argv, message", [
    (["--cells", "lstm,cnn"], "expected a comma-separated subset of elman,lstm,gru, got 'lstm,cnn'"),
    (["--hidden", "0"], "expected an integer >= 1, got 0"),
    (["--backend", "fortran"], "invalid choice: 'fortran'"),
    (["--clip", "0"], "--clip: expected a number > 0, got 0"),   # 0 zeroes the gradients
    (["--clip", "-1"], "--clip: expected a number > 0, got -1"),  # < 0 flips them
    (["--lr", "nan"], "--lr: expected a number > 0, got nan"),
    (["--sample", "-3"], "--sample: expected an integer >= 0, got -3"),
    (["--lr", "inf"], "--lr: expected a finite number > 0, got inf"),   # every weight NaN
    (["--seed", "-5"], "--seed: expected an integer in [0, 4294967295], got -5"),
    (["--threads", "100000"], "--threads: expected an integer in [1, "),   # thousands of threads crashed
])
def test_bad_arguments_are_named(argv, message, error_of):
    assert message in error_of(["train"] + argv)


@pytest.mark.parametrize("text, batch, message", [
    ("too short", 32, "text: expected at least 100 characters, got 9"),
    ("a long enough line. " * 10, 500, "--batch: expected at most 94 streams for this text, got 500"),
])
def test_text_that_cannot_train_is_named_before_training(tmp_path, text, batch, message, error_of):
    path = tmp_path / "t.txt"
    path.write_text(text)
    assert error_of(["train", "--text", str(path), "--batch", str(batch)]) == f"--text {str(path)!r}: {message}"


NOT_WRITABLE = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux): no file can be "
                                  "made there, also by root, whom os.access lets write anywhere")


@pytest.mark.parametrize("argv, env, message", [
    (["--backend", "foo"], {}, "argument --backend: invalid choice: 'foo'"),   # train's choices, listed in --help
    ([], {"GPURNN_BACKEND": "bogus"},   # "--GPURNN_BACKEND: ..."
     "GPURNN_BACKEND: expected one of ('auto', 'numpy', 'cupy', 'triton'), got 'bogus'"),
    (["--out", "/no/such/folder/g.png"], {},
     "--out: expected a file in an existing folder, got '/no/such/folder/g.png'"),
    (["--out", "g.xyz"], {}, "--out: expected a .png file name, got 'g.xyz'"),   # the plot failed after the work
    (["--out", ""], {}, "--out: expected a .png file name, got ''"),   # wrote ./.png
    (["--out", "adir.png/"], {}, "--out: expected a .png file name, got 'adir.png/'"),   # after the work: adir.png/.png
    pytest.param(["--out", "/proc/g.png"], {}, "--out: expected a file that can be written, got '/proc/g.png' "
                 "(cannot write in /proc: ", marks=NOT_WRITABLE),   # a traceback after the work
    (["--hidden", "100000000"], {}, "--hidden: expected a size whose weights fit in memory on cpu, got 100000000"),
    (["--inputs", "1000000000000"], {},   # named --hidden
     "--hidden and --inputs: expected sizes whose weights fit in memory on cpu, got 4 and 1000000000000"),
    (["--steps", "1000000000000"], {},   # an allocator's traceback
     "--steps and --batch: expected sizes whose inputs and hidden states fit in memory on cpu, got 1000000000000 and"),
])
def test_gradflow_names_bad_arguments_before_computing(argv, env, message, error_of, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert error_of(["gradflow", "--steps", "3", "--hidden", "4"] + argv).startswith(message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend, message", [
    ("gpu", "argument --backend: invalid choice: 'gpu'"),
    ("cupy", "--backend cupy: backend='cupy' "),   # not installed, or no CPU backend: a traceback in the demo
    ("triton", "--backend triton: backend='triton' "),   # on the CPU only under TRITON_INTERPRET=1
])
def test_demo_names_a_backend_that_cannot_run(backend, message, error_of, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert error_of(["demo", "--backend", backend]).startswith(message)


@pytest.mark.parametrize("argv, env, message", [
    (["--device", "foo"], {}, "--device: expected auto, cpu, cuda or cuda:N, got 'foo'"),
    (["--device", "meta"], {}, "--device: expected auto, cpu, cuda or cuda:N, got 'meta'"),
    (["--device", f"cuda:{torch.cuda.device_count()}"], {}, f"--device cuda:{torch.cuda.device_count()}: "
     f"this machine has {torch.cuda.device_count()} CUDA device(s)"),
    (["--backend", "cupy", "--device", "cpu"], {}, "--backend cupy: backend='cupy' "),
    (["--device", "cpu"], {"GPURNN_BACKEND": "bogus"},   # a traceback
     "GPURNN_BACKEND: expected one of ('auto', 'numpy', 'cupy', 'triton'), got 'bogus'"),
    (["--device", "cpu"], {"GPURNN_BACKEND": "cupy"},   # "--backend auto: ...", the variable unnamed
     "GPURNN_BACKEND=cupy (--backend auto): backend='cupy' "),
    (["--device", "cpu", "--cells", "elman", "--hidden", "100000000"], {},   # an allocator traceback
     "--hidden: expected a size whose weights fit in memory on cpu, got 100000000 ("),
    (["--device", "cpu", "--tasks", "recall", "--lag", "1000000000000"], {},   # NumPy's traceback
     "--lag, --batch and --hidden: expected sizes whose hidden states fit in memory on cpu, got 1000000000000, 32 and "
     "64 ("),
    (["--device", "cpu", "--tasks", "year", "--batch", "1000000000000"], {},
     "--batch and --hidden: expected sizes whose hidden states fit in memory on cpu, got 1000000000000 and 64 ("),
])
def test_a_device_backend_or_size_that_cannot_run_is_named_before_training(argv, env, message, error_of, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert error_of(["train", "--quick"] + argv).startswith(message)
    assert list(tmp_path.iterdir()) == []   # no ./checkpoints: it was made before these checks


@pytest.mark.parametrize("out, why", [
    ("file", "{tmp}/file is not a folder"), ("file/sub", "{tmp}/file is not a folder"),
    pytest.param("/proc/ck", "cannot write in /proc: ", marks=NOT_WRITABLE),
])
def test_a_checkpoint_folder_that_cannot_be_made_is_named_before_training(tmp_path, out, why, error_of,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    assert error_of(["train", "--quick", "--out", out]).startswith(
        f"--out: expected a folder for the checkpoints, got {out!r} ({why.format(tmp=tmp_path)}")


@pytest.mark.parametrize("name, content, why", [
    ("nothing.txt", None, "no such file"),
    ("adir", "dir", "a directory"),   # "no such file"
    ("/dev/null", None, "not a regular file"),
    ("empty.txt", b"", "empty"),
])
def test_a_text_file_that_cannot_be_read_is_named(tmp_path, name, content, why, error_of, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if content == "dir":
        (tmp_path / name).mkdir()
    elif content is not None:
        (tmp_path / name).write_bytes(content)
    assert error_of(["train", "--text", name]) == f"--text: expected a readable text file, got {name!r} ({why})"


def test_text_that_is_not_utf8_is_named_with_the_offset_of_its_first_bad_byte(tmp_path, error_of):
    """It was read with errors="replace": Latin-1 or binary trained silently on U+FFFD."""
    path = tmp_path / "latin1.txt"
    path.write_bytes("plain ascii, then café ".encode("latin-1") * 20)
    assert error_of(["train", "--text", str(path)]) == \
        f"--text: expected UTF-8 text, got {str(path)!r} (byte 0xe9 at offset 21: invalid continuation byte)"


def test_text_file_drops_a_byte_order_mark_and_reads_universal_newlines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    assert read_text_file("--text", str(path)) == "one\ntwo\nthree\n"


@pytest.mark.parametrize("argv, message", [
    (["--sample", "5"], "--sample: generates from the character model of --text FILE; give --text too"),
    (["--bptt", "5"], "--bptt: sets the chunk length of the character model of --text FILE; give --text too"),
    (["--text", "t.txt", "--tasks", "recall"], "--tasks: an option of the generated tasks, which --text replaces"),
    (["--text", "t.txt", "--lag", "5"], "--lag: an option of the generated tasks, which --text replaces"),
    (["--tasks", "year", "--lag", "5"], "--lag: sets the lag of the recall task, not in --tasks year"),
])
def test_options_of_the_other_mode_are_usage_errors_not_ignored(argv, message, error_of, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("a long enough line. " * 10)
    assert error_of(["train"] + argv).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_lstm_reaches_95_percent_on_year_with_default_settings(tmp_path):
    """The README's claim, with the default steps, batch, hidden size and learning rate."""
    (row,) = train(["--tasks", "year", "--cells", "lstm", "--no-progress", "--out", str(tmp_path)])
    assert row["steps"] == DEFAULT_STEPS["year"]
    assert row["accuracy"] >= 95.0, row
    assert torch_accuracy(tmp_path / "year_lstm.pt", YearTask(seed=10_000), 1000) >= 95.0


def test_an_evaluation_batch_that_cannot_fit_is_named_before_training(error_of, tmp_path, monkeypatch):
    """NumPy's allocator traceback came after the whole training (--quick caps the batch at 200: not here)."""
    monkeypatch.chdir(tmp_path)
    assert error_of(["train", "--device", "cpu", "--eval-batch", "1000000000000"]).startswith(
        "--lag, --eval-batch and --hidden: expected sizes whose hidden states fit in memory on cpu, got 50, ")
    assert list(tmp_path.iterdir()) == []
