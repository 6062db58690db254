"""`python -m gpurnn demo`: one forward/backward per cell on the CPU, checked against torch.nn."""
import time

import torch

from . import backends
from . import nn as gnn
from .arguments import resolve_backend

SHAPE = dict(T=64, B=16, I=32, H=64)


def compare(name, ref, mine, x):
    """Max |difference| over outputs and all gradients, and the time of each forward+backward."""
    mine.load_state_dict(ref.state_dict())
    results = []
    for module in (ref, mine):
        xi = x.clone().requires_grad_(True)
        start = time.perf_counter()
        y, _ = module(xi)
        y.square().sum().backward()
        elapsed = time.perf_counter() - start
        results.append(([y, xi.grad] + [p.grad for p in module.parameters()], elapsed))
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(results[0][0], results[1][0]))
    return f"{name:5s} max |gpurnn - torch| = {diff:.1e}   torch {results[0][1] * 1e3:6.1f} ms   " \
           f"gpurnn {results[1][1] * 1e3:6.1f} ms"


def add_arguments(parser):
    parser.add_argument("--backend", default="auto", choices=backends.CHOICES)


def run(args):
    resolve_backend(args.backend, False)   # the demo's data is on the CPU
    T, B, I, H = SHAPE.values()
    print(f"forward + backward, float64, T={T} B={B} input={I} hidden={H}, backend={args.backend}")
    x = torch.randn(T, B, I, dtype=torch.float64)
    for name in ("RNN", "LSTM", "GRU"):
        torch.manual_seed(0)
        ref = getattr(torch.nn, name)(I, H, dtype=torch.float64)
        mine = getattr(gnn, name)(I, H, dtype=torch.float64, backend=args.backend)
        print(compare(name, ref, mine, x))
    jordan = gnn.JordanRNN(I, H, 8, output_activation="softmax", dtype=torch.float64, backend=args.backend)
    y, s_next = jordan(x)
    rows_sum_to_1 = bool(torch.allclose(y.sum(-1), torch.ones(1, dtype=y.dtype)))
    print(f"JordanRNN output {tuple(y.shape)}, rows sum to 1: {rows_sum_to_1}")
