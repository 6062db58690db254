"""Gradient flow over time lags: how much step t still affects the loss at the last step.

`gradient_flow(model, x)` returns ||dL_T/dh_t|| for every step t, read from one
backward pass: the model is stepped one time step per call with the state
carried (not detached), each step's state tensor keeps its .grad, and a single
backward from L_T fills them all. (The output sequence's .grad would not do:
L_T reads only the last output, so dL/dy_t is 0 for t < T; the influence of
h_t flows through the state into later steps.)

`python -m gpurnn gradflow --out FILE.png` plots it for a tanh RNN at several
spectral radii of W_hh and for LSTM and GRU, and prints the fitted rate per step.
"""
import math

import numpy as np

from .arguments import SEED, check_fits, check_out_file, must_fit, positive, resolve_backend
from .checks import as_real

RADII = (0.5, 0.9, 1.0, 1.1, 1.5)


def _hidden(state):
    """The hidden part of a state: h of (h, c) for an LSTM, the tensor itself otherwise."""
    return state[0] if isinstance(state, tuple) else state


def _top_layer(h):
    """h_t of the last layer: torch RNN states are (layers, B, H); JordanRNN's is (B, O)."""
    return h[-1] if h.dim() == 3 else h


def _default_loss(h_last, seed=0):
    """L_T = u . h_T for a fixed random unit direction u per row (no preferred unit)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(h_last.shape, generator=gen, dtype=h_last.dtype).to(h_last.device)
    return (u * h_last).sum() / math.sqrt(h_last.shape[-1])


def gradient_flow(model, x, state=None, loss_fn=None):
    """norms[t] = ||dL_T/dh_t|| (Frobenius over batch and units) for t = 0..T-1.

    model: a torch.nn.RNN/LSTM/GRU (torch's or gpurnn.nn's) or JordanRNN, called as
    model(x_t, state) -> (y, state); not bidirectional. x: (T, B, I) (or (B, T, I)
    with batch_first). h_t is the hidden state after step t (all layers); L_T =
    loss_fn(h of the top layer after the last step), a fixed random projection by default.
    Returns a NumPy array of T norms, taken from a single backward pass.
    """
    import torch

    if not callable(model):
        raise TypeError(f"model: expected a recurrent torch module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable or None, got {type(loss_fn).__name__}")
    if getattr(model, "bidirectional", False):
        raise ValueError("model: expected a unidirectional model (the backward direction "
                         "has no last step), got bidirectional=True")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a 3-D tensor (T, B, I), got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x: expected a 3-D tensor (T, B, I), got shape {tuple(x.shape)}")
    time_dim = 1 if getattr(model, "batch_first", False) else 0
    if x.shape[time_dim] == 0:
        raise ValueError(f"x: expected at least one step, got shape {tuple(x.shape)}")
    if torch.is_inference_mode_enabled():   # (enable_grad does not leave it: nothing would be recorded)
        raise RuntimeError("gradient_flow: expected a call outside torch.inference_mode() (it takes gradients), "
                           "got one inside")
    loss_fn = loss_fn or _default_loss
    x = x.detach().clone().requires_grad_()   # every h_t then has a gradient, also in a frozen model (the clone:
                                              # an inference-mode x cannot require grad)
    hidden = []
    with torch.enable_grad():
        for t in range(x.shape[time_dim]):
            _, state = model(x.narrow(time_dim, t, 1), state)
            hidden.append(_hidden(state))
        # autograd.grad, not backward: the parameters' .grad (a training step's) stay as they are
        grads = torch.autograd.grad(loss_fn(_top_layer(hidden[-1])), hidden, allow_unused=True)
    # the norm in float64: squaring float32 gradients below ~1e-19 would underflow to 0
    return np.array([float(g.double().norm()) if g is not None else 0.0 for g in grads])


def fit_rate(norms):
    """Per-step factor r with ||dL_T/dh_{T-lag}|| ~ C r^lag, by least squares on the log.

    r < 1: the gradient vanishes with the lag; r > 1: it explodes. Zero or
    non-finite norms (underflow, overflow) are left out of the fit.
    """
    try:
        norms = np.asarray(norms, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"norms: expected a 1-D sequence of numbers, got {type(norms).__name__}") from None
    if norms.ndim != 1:
        raise ValueError(f"norms: expected a 1-D sequence of norms (one per step), got shape {norms.shape}")
    lags = np.arange(len(norms))[::-1]
    ok = np.isfinite(norms) & (norms > 0)
    if ok.sum() < 2:
        return float("nan")
    slope = np.polyfit(lags[ok], np.log(norms[ok]), 1)[0]
    return float(np.exp(slope))


def scale_spectral_radius_(weight, radius):
    """Scale a square weight in place so its largest |eigenvalue| is `radius`."""
    import torch

    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a square 2-D tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"weight: expected a square 2-D tensor, got shape {tuple(weight.shape)}")
    as_real("radius", radius)
    with torch.no_grad():
        largest = torch.linalg.eigvals(weight.double()).abs().max().item()
        if not 0 < largest < float("inf"):
            raise ValueError(f"weight: expected a finite, nonzero spectral radius to scale, got {largest}")
        weight *= radius / largest
    return weight


def demo_models(hidden, inputs, radii=RADII, backend="auto", seed=0):
    """{label: model}: tanh RNNs with W_hh ~ N(0, 1) scaled to each spectral radius; LSTM and
    GRU at torch's init; LSTM with the forget-gate bias the train command uses."""
    import torch

    from . import nn as gnn

    models = {}
    for r in radii:
        torch.manual_seed(seed)
        rnn = gnn.RNN(inputs, hidden, backend=backend)
        with torch.no_grad():
            rnn.weight_hh_l0.normal_()
        scale_spectral_radius_(rnn.weight_hh_l0, r)
        models[f"tanh RNN, radius {r:g}"] = rnn
    for name in ("LSTM", "GRU"):
        torch.manual_seed(seed)
        models[f"{name} (torch init)"] = getattr(gnn, name)(inputs, hidden, backend=backend)
    # the init `python -m gpurnn train` gives its LSTMs: the forget gate open at the start
    from .train import FORGET_BIAS
    torch.manual_seed(seed)
    lstm = gnn.LSTM(inputs, hidden, backend=backend)
    with torch.no_grad():
        lstm.bias_hh_l0[hidden:2 * hidden] += FORGET_BIAS
    models[f"LSTM (forget bias {FORGET_BIAS:g})"] = lstm
    return models


def plot(curves, rates, path, title):
    """Log-scale plot of ||dL_T/dh_t|| against the lag T - t, one line per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for label, norms in curves.items():
        lags = np.arange(len(norms))[::-1]
        shown = np.where(norms > 0, norms, np.nan)
        style = "-" if "RNN" in label else "--" if "torch init" in label else ":"
        ax.semilogy(lags, shown, style, label=f"{label}  (x{rates[label]:.3g}/step)")
    ax.set_xlabel("lag T - t (steps back from the loss)")
    ax.set_ylabel("||dL_T / dh_t||")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def add_arguments(parser):
    from . import backends

    parser.add_argument("--out", default="gradflow.png", help="where to write the plot (PNG)")
    parser.add_argument("--steps", type=positive, default=100, help="sequence length T")
    parser.add_argument("--hidden", type=positive, default=64, help="hidden units")
    parser.add_argument("--inputs", type=positive, default=8, help="input features (x ~ N(0, 1))")
    parser.add_argument("--batch", type=positive, default=16, help="sequences averaged in the norm")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--backend", default="auto", choices=backends.CHOICES)


def run(args):
    import torch

    resolve_backend(args.backend, False)   # the models run on the CPU
    check_out_file("--out", args.out, ".png")   # checked first: the plot is written after all the computation
    cpu, h = torch.device("cpu"), args.hidden
    weights = 4 * 16 * h * (args.inputs + h + 2)   # float32: 5 tanh RNNs, 2 LSTMs and a GRU (16 gates)
    sizes = (("--hidden", "--inputs"), (h, args.inputs)) if args.inputs > h else (("--hidden",), (h,))
    check_fits(*sizes, "weights", weights, cpu)
    check_fits(("--steps", "--batch"), (args.steps, args.batch), "inputs and hidden states",
               4 * args.steps * args.batch * (args.inputs + h), cpu)
    with must_fit(*sizes, "weights fit in memory on cpu", f"{weights / 2 ** 30:.3g} GiB as float32"):
        models = demo_models(h, args.inputs, backend=args.backend, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.steps, args.batch, args.inputs, generator=gen)
    curves, rates = {}, {}
    print(f"||dL_T/dh_t|| over T = {args.steps} steps, H = {args.hidden}, B = {args.batch}; "
          f"fitted factor per step (r < 1 vanishes, r > 1 explodes):")
    for label, model in models.items():
        norms = gradient_flow(model, x)
        curves[label], rates[label] = norms, fit_rate(norms)
        ratio = norms[0] / norms[-1] if norms[-1] > 0 else float("nan")
        print(f"  {label:24s} x{rates[label]:.4f} per step   ||dL/dh_1|| / ||dL/dh_T|| = {ratio:.3g}")
    plot(curves, rates, args.out, f"Gradient flow: tanh RNN by spectral radius of W_hh, LSTM, GRU (H={args.hidden})")
    print(f"plot: {args.out}")
