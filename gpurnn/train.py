"""`python -m gpurnn train`: Elman vs LSTM vs GRU on generated tasks, or a char LM on a text file.

Default run: the `year` task (find the year in a sentence) and the `recall`
task (remember a symbol across a long lag) for each cell, then a summary table.
Checkpoints hold a torch.nn.RNN/LSTM/GRU state dict (see `load_rnn`).
Under torchrun (WORLD_SIZE > 1) each process trains on its own batches and
DistributedDataParallel averages the gradients:
    torchrun --standalone --nproc_per_node=2 -m gpurnn train
(gloo on CPUs, nccl with one GPU per process; only rank 0 prints and saves).
"""
import ctypes
import math
import os
import time
from pathlib import Path

import numpy as np

from . import backends
from .arguments import (SEED, UsageError, check_fits, check_out_folder, csv, integer_at_least, must_fit, non_negative,
                        positive, positive_finite, positive_float, read_text_file, resolve_backend, torch_device)
from .tasks import IGNORE, CharText, RecallTask, YearTask

CELLS = {"elman": "RNN", "lstm": "LSTM", "gru": "GRU"}
GATES = {"elman": 1, "gru": 3, "lstm": 4}
TASKS = ("year", "recall")
# steps per (task, cell) in a default run; --quick divides them
DEFAULT_STEPS = {"year": 1200, "recall": 600, "text": 1000}
DEFAULT_LAG, DEFAULT_BPTT, EMBED = 50, 100, 32
FORGET_BIAS = 4.0   # LSTM forget gate open at the start: sigmoid(4)^50 ~ 0.4 of the memory
                    # survives the recall lag, sigmoid(0)^50 ~ 1e-15 (Gers et al. 2000;
                    # Jozefowicz et al. 2015 use 1). Measured here on recall (lag 50, 600 steps):
                    # torch's init (0) and 1 stay at chance; 3 solved 1 of 3 seeds (74% and 10% on
                    # the others, a plateau that float rounding decides); 4 and 5 solved seeds 0-3.


def limit_cpu_threads(n):
    """torch and NumPy's OpenBLAS to n threads: the engine's per-step GEMMs are small, and
    BLAS threads spinning against each other (or other processes) cost 10-25x here."""
    import torch

    torch.set_num_threads(n)
    for line in open("/proc/self/maps") if os.path.exists("/proc/self/maps") else []:
        path = line.split()[-1]
        if "openblas" in path and ".so" in path:
            lib = ctypes.CDLL(path)
            for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                           "openblas_set_num_threads64_", "openblas_set_num_threads"):
                if hasattr(lib, symbol):
                    getattr(lib, symbol)(n)
                    return


def _model_class():
    import torch

    from . import nn as gnn
    from .training import sequence_loss

    class CharRNN(torch.nn.Module):
        """Embedding -> one recurrent layer (gpurnn.nn) -> linear head over the classes."""

        def __init__(self, cell, n_tokens, n_classes, hidden, embed=EMBED, backend="auto"):
            super().__init__()
            self.cell = cell
            self.embed = torch.nn.Embedding(n_tokens, embed)
            self.rnn = getattr(gnn, CELLS[cell])(embed, hidden, backend=backend)
            self.head = torch.nn.Linear(hidden, n_classes)
            if cell == "lstm":
                with torch.no_grad():
                    self.rnn.bias_hh_l0[hidden:2 * hidden] += FORGET_BIAS

        def forward(self, tokens, state=None):
            return self.rnn(self.embed(tokens), state)

        def loss(self, h, targets, backend="auto"):
            return sequence_loss(h, self.head.weight, self.head.bias, targets, reduction="mean",
                                 backend=backend)

    return CharRNN


def _new_model(cell, n_tokens, n_classes, args, device):
    """A CharRNN on device; weights that do not fit are a usage error naming --hidden, not an allocator traceback."""
    h = args.hidden
    size = GATES[cell] * h * (EMBED + h + 2) + n_tokens * EMBED + n_classes * (h + 1)
    with must_fit(("--hidden",), (h,), f"weights fit in memory on {device}",
                  f"{size:.3g} float32 values, {4 * size / 2 ** 30:.3g} GiB"):
        return _model_class()(cell, n_tokens, n_classes, args.hidden, backend=args.backend).to(device)


def rnn_config(model):
    """Constructor arguments of the torch.nn twin of model.rnn."""
    rnn = model.rnn
    return {"input_size": rnn.input_size, "hidden_size": rnn.hidden_size, "num_layers": rnn.num_layers,
            "bias": rnn.bias, "batch_first": rnn.batch_first}


def save_checkpoint(path, model, task, vocab, metrics):
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"torch_class": CELLS[model.cell], "rnn_config": rnn_config(model),
                "rnn": {k: v.detach().cpu() for k, v in model.rnn.state_dict().items()},
                "embed": model.embed.weight.detach().cpu(),
                "head_weight": model.head.weight.detach().cpu(), "head_bias": model.head.bias.detach().cpu(),
                "task": task, "vocab": vocab, "metrics": metrics}, path)
    return path


def load_rnn(path):
    """(torch.nn.RNN/LSTM/GRU with the trained weights, the whole checkpoint dict)."""
    import torch

    ckpt = torch.load(path, map_location="cpu")
    rnn = getattr(torch.nn, ckpt["torch_class"])(**ckpt["rnn_config"])
    rnn.load_state_dict(ckpt["rnn"])
    return rnn, ckpt


def evaluate(model, inputs, targets, backend):
    """(exact-match accuracy over sequences, mean loss per answer step)."""
    import torch

    with torch.no_grad():
        h, _ = model(inputs)
        loss = float(model.loss(h, targets, backend))
        pred = model.head(h).argmax(-1)
    due = targets != IGNORE
    wrong = (due & (pred != targets)).any(0)
    return 100.0 * (1 - wrong.float().mean().item()), loss


def _distributed():
    """(rank, world size), starting the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _wrap(model, world, device):
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _progress(total, desc, rank, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled or rank != 0,
                dynamic_ncols=True, leave=True)


def make_optimizer(model, args, steps):
    """Adam at args.lr, held until the last quarter of the steps, then down linearly to a tenth
    (an early decay slows the escape from the loss plateau; a late one settles the weights)."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    factor = lambda step: min(1.0, max(0.1, (steps - step) / (0.25 * steps)))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_task(task, cell, args, device, rank=0, world=1):
    """Train one cell on one generated task; returns a summary row."""
    import torch

    from .training import clip_grad_norm_

    torch.manual_seed(args.seed)
    n_tokens = len(task.vocab) if task.vocab else task.n_classes
    model = _new_model(cell, n_tokens, task.n_classes, args, device)
    net = _wrap(model, world, device)
    steps = args.steps or DEFAULT_STEPS[task.name] // (10 if args.quick else 1)
    optimizer, schedule = make_optimizer(model, args, steps)
    as_tensor = lambda a: torch.from_numpy(a).to(device)
    start, avg = time.perf_counter(), None
    bar = _progress(steps, f"{task.name:6s} {cell:5s}", rank, args.progress)
    for step in range(steps):
        inputs, targets = (as_tensor(a) for a in task.batch(args.batch))
        h, _ = net(inputs)
        loss = model.loss(h, targets, args.backend)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        schedule.step()
        value = loss.item()
        avg = value if avg is None else 0.95 * avg + 0.05 * value
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{avg:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    eval_task = type(task)(**({"lag": task.lag, "symbols": task.symbols} if task.name == "recall" else {}),
                           seed=10_000 + args.seed)   # held-out data from another seed
    accuracy, eval_loss = evaluate(model, *(as_tensor(a) for a in eval_task.batch(_eval_batch(args))), args.backend)
    row = {"task": task.name if task.name != "recall" else f"recall (lag {task.lag})", "cell": cell,
           "accuracy": accuracy, "loss": eval_loss, "seconds": seconds, "steps": steps}
    if rank == 0 and args.out:
        row["checkpoint"] = str(save_checkpoint(Path(args.out) / f"{task.name}_{cell}.pt", model, task.name,
                                                task.vocab, {k: row[k] for k in ("accuracy", "loss", "steps")}))
    return row


def sample(model, text, length, device, temperature=0.8, seed=0, prime="\n"):
    """Generate `length` characters from the char LM, starting after `prime`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    prime = "".join(c for c in prime if c in text.index) or text.vocab[0]
    state, out = None, []
    token = torch.tensor([[text.index[c]] for c in prime], device=device)   # (len, 1)
    with torch.no_grad():
        for _ in range(length):
            h, state = model(token, state)
            probs = torch.softmax(model.head(h[-1, 0]) / temperature, -1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=gen))
            out.append(text.vocab[nxt])
            token = torch.tensor([[nxt]], device=device)
    return "".join(out)


def train_text(text, cell, args, device, rank=0, world=1):
    """Character language model on a CharText with truncated BPTT over contiguous streams."""
    import torch

    from .training import truncated_bptt

    torch.manual_seed(args.seed)
    model = _new_model(cell, text.n_classes, text.n_classes, args, device)
    net = _wrap(model, world, device)
    k = args.bptt or DEFAULT_BPTT
    steps = args.steps or DEFAULT_STEPS["text"] // (10 if args.quick else 1)
    optimizer, schedule = make_optimizer(model, args, steps)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)

    def stream():
        while True:   # passes over the text; the state carries across chunks and passes
            for x, y in text.chunks(k, args.batch, part=rank, parts=world):
                yield as_tensor(x), as_tensor(y)

    def forward(m, x, state, target):
        return net(x, state)

    loss_fn = lambda h, y: model.loss(h, y, args.backend)
    start, avg = time.perf_counter(), None
    bar = _progress(steps, f"text   {cell:5s}", rank, args.progress)
    for step, result in zip(range(steps), truncated_bptt(model, stream(), loss_fn, optimizer=optimizer,
                                                        max_norm=args.clip, forward=forward)):
        schedule.step()
        value = result.loss.item()
        avg = value if avg is None else 0.95 * avg + 0.05 * value
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{avg:.3f}", bpc=f"{avg / math.log(2):.2f}")
    bar.close()
    seconds = time.perf_counter() - start
    # validation: next-character accuracy and loss over the held-out tail, state carried
    state, correct, total, loss_sum = None, 0, 0, 0.0
    batch = max(1, min(args.batch, (len(text.valid_ids) - 1) // 2))
    with torch.no_grad():
        for x, y in text.chunks(k, batch, valid=True):
            x, y = as_tensor(x), as_tensor(y)
            h, state = model(x, state)
            loss_sum += float(model.loss(h, y, args.backend)) * y.numel()
            correct += int((model.head(h).argmax(-1) == y).sum())
            total += y.numel()
    row = {"task": f"text ({Path(args.text).name})", "cell": cell, "accuracy": 100.0 * correct / max(total, 1),
           "loss": loss_sum / max(total, 1), "seconds": seconds, "steps": steps}
    if rank == 0 and args.out:
        row["checkpoint"] = str(save_checkpoint(Path(args.out) / f"text_{cell}.pt", model, "text",
                                                text.vocab, {k: row[k] for k in ("accuracy", "loss", "steps")}))
    if rank == 0 and args.sample:
        print(f"--- sample ({args.sample} characters, temperature 0.8) ---")
        print(sample(model, text, args.sample, device, seed=args.seed))
        print("---")
    return row


def summary_table(rows):
    """Markdown table: one row per task and cell."""
    lines = ["| task | cell | accuracy % | loss | time s |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['cell']} | {r['accuracy']:.1f} | {r['loss']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--tasks", type=csv("tasks", TASKS), default=None,
                        help="generated tasks to run (default: year,recall)")
    parser.add_argument("--cells", type=csv("cells", tuple(CELLS)), default=None,
                        help="cells to compare (default: elman,lstm,gru; with --text: lstm)")
    parser.add_argument("--text", metavar="FILE", help="train a character language model on this text file instead")
    parser.add_argument("--sample", type=non_negative, default=0, metavar="N",
                        help="with --text: print N generated characters")
    parser.add_argument("--hidden", type=positive, default=64)
    parser.add_argument("--batch", type=positive, default=32)
    parser.add_argument("--steps", type=positive, default=None,
                        help=f"training steps per task and cell (default: {DEFAULT_STEPS})")
    parser.add_argument("--lr", type=positive_finite, default=1e-2)
    parser.add_argument("--clip", type=positive_float, default=5.0, help="max global gradient norm (inf: none)")
    parser.add_argument("--lag", type=positive, default=None,
                        help=f"recall task: steps between symbol and query (default: {DEFAULT_LAG})")
    parser.add_argument("--bptt", type=positive, default=None,
                        help=f"--text: truncated BPTT chunk length (default: {DEFAULT_BPTT})")
    parser.add_argument("--eval-batch", type=positive, default=1000)
    parser.add_argument("--backend", default="auto", choices=backends.CHOICES)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=integer_at_least(1, os.cpu_count() or 1, " (this machine's CPUs)"),
                        default=1,
                        help="CPU threads for torch and BLAS (small recurrent GEMMs run best on 1)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: a tenth of the steps (tests, CI)")
    parser.add_argument("--out", default="checkpoints", help="checkpoint folder ('' to save none)")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _char_text(args, world):
    """The --text file as a CharText, checked up front: long enough, and for --batch streams in each of the
    `world` processes' parts."""
    try:
        chars = CharText(read_text_file("--text", args.text))
        CharText.streams(chars.train_ids[:len(chars.train_ids) // world], args.batch)
    except ValueError as e:
        raise UsageError(f"--text {args.text!r}: {e}".replace(": batch:", ": --batch:")) from None
    return chars


def _eval_batch(args):
    return min(args.eval_batch, 200) if args.quick else args.eval_batch


def _check_sizes(args, device, cells):
    """Weights and (T, B, H) hidden states, lower bounds of what a run holds, that cannot fit the device."""
    h = args.hidden
    check_fits(("--hidden",), (h,), "weights", 4 * max(GATES[c] for c in cells) * h * (EMBED + h + 2), device)
    steps = [("--bptt", args.bptt or DEFAULT_BPTT)] if args.text else \
        [("--lag", args.lag or DEFAULT_LAG)] if "recall" in (args.tasks or TASKS) else []
    for batch in [("--batch", args.batch)] + ([] if args.text else [("--eval-batch", _eval_batch(args))]):
        options, values = zip(*steps, batch, ("--hidden", h))
        check_fits(options, values, "hidden states", (values[0] if steps else 1) * batch[1] * (16 + 4 * h), device)


def run(args):
    """Every check before any work or file (raising UsageError), then the runs and the summary table."""
    # an option of the other mode would be silently ignored
    if args.sample and not args.text:
        raise UsageError("--sample: generates from the character model of --text FILE; give --text too")
    if args.bptt and not args.text:
        raise UsageError("--bptt: sets the chunk length of the character model of --text FILE; give --text too")
    if args.text and (args.tasks or args.lag):
        raise UsageError(f"{'--tasks' if args.tasks else '--lag'}: an option of the generated tasks, which --text "
                         f"replaces; give one or the other")
    if args.lag and "recall" not in (args.tasks or TASKS):
        raise UsageError(f"--lag: sets the lag of the recall task, not in --tasks {','.join(args.tasks)}")
    check_out_folder("--out", args.out)
    rank, world = _distributed()
    text = _char_text(args, world) if args.text else None
    limit_cpu_threads(args.threads)
    device = torch_device("--device", args.device, rank)
    backend = resolve_backend(args.backend, device.type == "cuda")
    if rank == 0:
        print(f"gpurnn train: backend {backend} on {device}, {world} process(es), "
              f"{args.threads} CPU thread(s)", flush=True)
    cells = args.cells or (["lstm"] if args.text else list(CELLS))
    _check_sizes(args, device, cells)
    total = time.perf_counter()
    rows = []
    if args.text:
        rows = [train_text(text, cell, args, device, rank, world) for cell in cells]
    else:
        for name in args.tasks or TASKS:
            for cell in cells:
                task = YearTask(seed=args.seed + rank) if name == "year" else \
                    RecallTask(lag=args.lag or DEFAULT_LAG, seed=args.seed + rank)
                rows.append(train_task(task, cell, args, device, rank, world))
    if rank == 0:
        print()
        print(summary_table(rows))
        print(f"\ntotal {time.perf_counter() - total:.1f} s; checkpoints in {args.out or '(none)'} "
              f"(torch.nn.{'/'.join(CELLS[c] for c in cells)}: gpurnn.train.load_rnn(path))")
    return rows
