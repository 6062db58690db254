"""`python -m gpurnn train`: the summary table, checkpoints that torch.nn loads (and that
reproduce the reported accuracy in plain torch), the progress bar, --text/--sample, and
the headline claim: LSTM >= 95% on the year task with the default settings."""
import argparse
import re

import pytest
import torch

from gpurnn import train as train_command
from gpurnn.__main__ import main
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
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["train"] + argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text, batch, message", [
    ("too short", 32, "text: expected at least 100 characters, got 9"),
    ("a long enough line. " * 10, 500, "--batch: expected at most 94 streams for this text, got 500"),
])
def test_text_that_cannot_train_is_named_before_training(tmp_path, text, batch, message):
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(SystemExit, match=re.escape(f"--text {str(path)!r}: {message}")):
        main(["train", "--text", str(path), "--batch", str(batch)])


@pytest.mark.parametrize("argv, message", [
    (["--backend", "foo"], "--backend: expected one of ('auto', 'numpy', 'cupy', 'triton'), got 'foo'"),
    (["--out", "/no/such/folder/g.png"], "--out: expected a file in an existing folder, got '/no/such/folder/g.png'"),
    (["--out", "g.xyz"], "--out: expected a .png file name, got 'g.xyz'"),   # the plot failed after the work
    (["--out", ""], "--out: expected a .png file name, got ''"),   # wrote ./.png
])
def test_gradflow_names_bad_arguments_before_computing(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["gradflow", "--steps", "3", "--hidden", "4"] + argv)


@pytest.mark.parametrize("argv, message", [
    (["--device", "foo"], "--device: expected auto, cpu, cuda or cuda:N, got 'foo'"),
    (["--device", "meta"], "--device: expected auto, cpu, cuda or cuda:N, got 'meta'"),
    (["--device", f"cuda:{torch.cuda.device_count()}"], "CUDA device(s)"),
    (["--backend", "cupy", "--device", "cpu"], "--backend cupy: backend='cupy' is not usable here"),
])
def test_a_device_or_backend_that_cannot_run_is_named_before_training(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["train", "--quick"] + argv)


def test_a_checkpoint_folder_that_cannot_be_made_is_named_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=re.escape(f"--out: expected a folder for the checkpoints, got "
                                                   f"{str(tmp_path / 'file')!r}")):
        main(["train", "--quick", "--out", str(tmp_path / "file")])


def test_missing_text_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"--text: expected a readable text file, got '.*nothing.txt'"):
        main(["train", "--text", str(tmp_path / "nothing.txt")])


def test_lstm_reaches_95_percent_on_year_with_default_settings(tmp_path):
    """The README's claim, with the default steps, batch, hidden size and learning rate."""
    (row,) = train(["--tasks", "year", "--cells", "lstm", "--no-progress", "--out", str(tmp_path)])
    assert row["steps"] == DEFAULT_STEPS["year"]
    assert row["accuracy"] >= 95.0, row
    assert torch_accuracy(tmp_path / "year_lstm.pt", YearTask(seed=10_000), 1000) >= 95.0
