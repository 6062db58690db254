"""gpurnn modules under DistributedDataParallel: 2 gloo processes on the CPU, each on half
the batch, give the gradients of one process on the whole batch; and `train` under torchrun."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import gpurnn.nn as gnn
from gpurnn.training import sequence_loss

T, B, IN, HID, V = 6, 4, 3, 5, 7
MODELS = ("RNN", "LSTM", "GRU", "JordanRNN")


class WithLoss(torch.nn.Module):
    """A recurrent layer, a linear head and the mean sequence loss, all inside forward
    (so DistributedDataParallel sees every parameter used)."""

    def __init__(self, name):
        super().__init__()
        torch.manual_seed(0)
        kw = dict(dtype=torch.float64, backend="numpy")
        self.rnn = gnn.JordanRNN(IN, HID, HID, decay=0.5, **kw) if name == "JordanRNN" else \
            getattr(gnn, name)(IN, HID, num_layers=2, **kw)
        self.head = torch.nn.Linear(HID, V, dtype=torch.float64)

    def forward(self, x, targets):
        y, _ = self.rnn(x)
        return sequence_loss(y, self.head.weight, self.head.bias, targets, reduction="mean", backend="numpy")


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(T, B, IN, generator=g, dtype=torch.float64), torch.randint(0, V, (T, B), generator=g)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _worker(rank, world, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    x, y = data()
    rows = slice(rank * B // world, (rank + 1) * B // world)   # this process's half of the batch
    result = {}
    for name in MODELS:
        model = DistributedDataParallel(WithLoss(name))
        model(x[:, rows], y[:, rows]).backward()
        result[name] = gradients(model.module)
    torch.save(result, os.path.join(folder, f"grads{rank}.pt"))
    dist.barrier()   # both ranks done with gloo before either tears it down (a race once aborted a rank in CI)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_grads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"grads{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", MODELS)
def test_ddp_gradients_equal_one_process_on_the_whole_batch(ddp_grads, name):
    model = WithLoss(name)
    model(*data()).backward()
    expected = gradients(model)
    assert set(expected) == set(ddp_grads[0][name])
    for rank in range(2):
        for param, grad in ddp_grads[rank][name].items():
            # float64; DDP averages two half-batch means: the order of summation differs only
            torch.testing.assert_close(grad, expected[param], rtol=1e-12, atol=1e-14,
                                       msg=lambda m: f"rank {rank} {param}: {m}")
    one_half = WithLoss(name)   # and the halves alone differ: the average is doing the work
    x, y = data()
    one_half(x[:, :B // 2], y[:, :B // 2]).backward()
    assert max((g - expected[p]).abs().max().item() for p, g in gradients(one_half).items()) > 1e-6


def test_train_command_under_torchrun(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "gpurnn", "train", "--tasks", "recall", "--cells", "gru", "--lag", "5",
                          "--steps", "30", "--no-progress", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es)" in out.stdout
    assert out.stdout.count("| recall (lag 5) | gru |") == 1   # only rank 0 reports
    assert (tmp_path / "recall_gru.pt").exists()
