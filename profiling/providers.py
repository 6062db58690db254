"""What bench.py times: for one configuration, each provider's forward and forward+backward.

Providers (one layer, one direction, x: (T, B, I), zero initial state; the cell modules, `STEP_CELLS`,
take x[0] and run T=1 only, as gpurnn.nn's and torch.nn's modules):
  gpurnn-numpy   gpurnn.nn modules, backend="numpy" (CPU)
  gpurnn-cupy    gpurnn.nn modules, backend="cupy" (GPU)
  gpurnn-triton  gpurnn.nn modules, backend="triton" (GPU)
  gpurnn-compiled  gpurnn.nn modules, backend="numpy", under torch.compile(fullgraph=True) (CPU)
  torch.nn       torch.nn.RNN/LSTM/GRU (cuDNN on a GPU, torch's own kernels on the CPU)
  loop           the cell equations written plainly in PyTorch, one step per Python iteration;
                 the reference for Jordan, which has no torch.nn twin
  compile        the same loop with its step function compiled by torch.compile
  floor          profiling/floor.py: the persistent time loop with the arithmetic removed (GPU)
  floor-grid     the same with H split across programs and a grid barrier per step (GPU)

All providers of one configuration share the same weights (copied from one
seeded torch module), so their outputs can be compared as a sanity check.
"""
import importlib
from dataclasses import dataclass

import torch


def sibling(name):
    """A module of profiling/, whether this file runs as a script, a plain module or profiling.<name>."""
    return importlib.import_module(f"{__package__}.{name}" if __package__ else name)


CELLS = ("rnn", "lstm", "gru", "jordan")
STEP_CELLS = {"rnncell": "RNNCell", "lstmcell": "LSTMCell", "grucell": "GRUCell"}   # torch.nn's cell modules
MODULES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU", **STEP_CELLS}   # class names in torch.nn and gpurnn.nn
GATES = {"rnn": 1, "lstm": 4, "gru": 3, "jordan": 1, "rnncell": 1, "lstmcell": 4, "grucell": 3}
GPURNN = {"gpurnn-numpy": "numpy", "gpurnn-cupy": "cupy", "gpurnn-triton": "triton"}
PROVIDERS = {
    "cpu": ("gpurnn-numpy", "gpurnn-compiled", "torch.nn", "loop", "compile"),
    "cuda": ("gpurnn-triton", "gpurnn-cupy", "torch.nn", "loop", "compile", "floor", "floor-grid"),
}
DEFAULT_PROVIDERS = {"cpu": ("gpurnn-numpy", "torch.nn", "loop"), "cuda": PROVIDERS["cuda"]}
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Config:
    cell: str
    batch: int
    steps: int
    hidden: int
    input: int
    output: int     # Jordan's output (= state) size; unused by the other cells
    dtype: str
    device: str
    packed: bool = False   # a PackedSequence input (torch.nn and gpurnn only)


def baseline(cell):
    """The provider every other one is divided by: torch.nn where it has the cell."""
    return "loop" if cell == "jordan" else "torch.nn"


def unavailable(provider, cfg):
    """Why provider cannot run cfg here, or None."""
    if provider not in PROVIDERS[cfg.device]:
        return f"{provider} does not run on device {cfg.device}"
    if provider == "torch.nn" and cfg.cell == "jordan":
        return "torch.nn has no Jordan network"
    if cfg.packed and (cfg.cell not in ("rnn", "lstm", "gru") or provider not in ("torch.nn", *GPURNN)):
        return f"{provider} takes no packed input for {cfg.cell}"
    if cfg.cell in STEP_CELLS and (cfg.steps != 1 or provider not in ("torch.nn", *GPURNN)):
        return f"{cfg.cell} is a cell module: one step (T=1), torch.nn and gpurnn only"
    if provider in GPURNN:
        from gpurnn.backends import backend_status
        return backend_status()[GPURNN[provider]]
    return None


def estimated_bytes(cfg):
    """A generous bound on what the largest provider keeps for backward (fp32 compute)."""
    G, H = GATES[cfg.cell], cfg.hidden
    width = 6 * G * H + 2 * cfg.input + 2 * cfg.output
    return cfg.steps * cfg.batch * width * 4


# ---- the plain PyTorch cell loop: x @ W_ih^T + biases for all T at once, then one step per t ----

def _rnn_step(gx, h, w_hh):
    h = torch.tanh(torch.addmm(gx, h, w_hh.t()))
    return h, (h,)


def _lstm_step(gx, h, c, w_hh):
    i, f, g, o = torch.addmm(gx, h, w_hh.t()).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


def _gru_step(gx, h, w_hh, b_hh):
    xr, xz, xn = gx.chunk(3, 1)
    hr, hz, hn = torch.addmm(b_hh, h, w_hh.t()).chunk(3, 1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h = n + z * (h - n)
    return h, (h,)


def _jordan_step(gx, s, w_sh, w_ho, b_o, decay):
    h = torch.tanh(torch.addmm(gx, s, w_sh.t()))
    y = torch.addmm(b_o, h, w_ho.t())
    return y, (decay * s + y,)


STEPS = {"rnn": _rnn_step, "lstm": _lstm_step, "gru": _gru_step, "jordan": _jordan_step}


def loop_parts(cell, m):
    """(W_ih, bias folded into the projection, recurrent weights, state sizes) of module m."""
    if cell == "jordan":
        return m.weight_ih, m.bias_h, (m.weight_sh, m.weight_ho, m.bias_o, m.decay), (m.output_size,)
    w_ih, w_hh, b_ih, b_hh = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
    if cell == "gru":   # b_hn sits inside r*(...), so b_hh stays in the step
        return w_ih, b_ih, (w_hh, b_hh), (m.hidden_size,)
    sizes = (m.hidden_size, m.hidden_size) if cell == "lstm" else (m.hidden_size,)
    return w_ih, b_ih + b_hh, (w_hh,), sizes


def loop_forward(cell, m, x, step):
    """Outputs (T, B, ·) of the cell loop over x with module m's weights."""
    w_ih, bias, weights, sizes = loop_parts(cell, m)
    T, B = x.shape[:2]
    gx = torch.addmm(bias, x.reshape(T * B, -1), w_ih.t()).view(T, B, -1)
    state = tuple(x.new_zeros(B, n) for n in sizes)
    outs = []
    for t in range(T):
        y, state = step(gx[t], *state, *weights)
        outs.append(y)
    return torch.stack(outs)


def reference_module(cfg, seed=0):
    """The seeded module whose weights every provider of cfg uses (torch.nn's init)."""
    torch.manual_seed(seed)
    kw = {"device": cfg.device, "dtype": DTYPES[cfg.dtype]}
    if cfg.cell == "jordan":
        from gpurnn.nn import JordanRNN
        return JordanRNN(cfg.input, cfg.hidden, cfg.output, backend="auto", **kw)
    return getattr(torch.nn, MODULES[cfg.cell])(cfg.input, cfg.hidden, **kw)


def _gpurnn_module(cfg, ref, backend):
    import gpurnn.nn as gnn

    kw = {"device": cfg.device, "dtype": DTYPES[cfg.dtype], "backend": backend}
    if cfg.cell == "jordan":
        m = gnn.JordanRNN(cfg.input, cfg.hidden, cfg.output, **kw)
    else:
        m = getattr(gnn, MODULES[cfg.cell])(cfg.input, cfg.hidden, **kw)
    m.load_state_dict(ref.state_dict())
    return m


class Runner:
    """fwd() -> y without autograd; fwdbwd() runs forward and backward (dx and every weight grad)."""

    def __init__(self, fn, x, params, out_size):
        self.fn, self.x, self.params = fn, x, list(params)
        self.dy = torch.randn(x.shape[0], x.shape[1], out_size, device=x.device, dtype=x.dtype,
                              generator=torch.Generator(x.device).manual_seed(1))

    def fwd(self):
        with torch.no_grad():
            return self.fn(self.x)

    def fwdbwd(self):
        for p in self.params:
            p.grad = None
        self.x.grad = None
        self.fn(self.x).backward(self.dy)


def _output(cell, m, x):
    """A module's output sequence (T, B, H); a cell module's one step on x[0] as (1, B, H) (an LSTMCell's h)."""
    if cell not in STEP_CELLS:
        return m(x)[0]
    out = m(x[0])
    return (out[0] if isinstance(out, tuple) else out)[None]


_COMPILED = {}


def _compiled_step(cell):
    """torch.compile of the step, shared across configurations: shapes that differ
    (B, H, dtype) recompile once each, a new T reuses the compiled step."""
    import torch._dynamo.config as dynamo_config
    for name in ("recompile_limit", "cache_size_limit"):   # renamed across torch versions
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4096)
    if cell not in _COMPILED:
        _COMPILED[cell] = torch.compile(STEPS[cell], dynamic=False, fullgraph=True)
    return _COMPILED[cell]


class FloorRunner:
    """The floor kernel over this configuration's shapes; fwdbwd is two passes (forward, BPTT)."""

    def __init__(self, cfg, grid_sync):
        self.floor = sibling("floor")   # imports triton: only here, on a GPU
        kw = {"device": cfg.device, "dtype": DTYPES[cfg.dtype]}
        T, B, H = cfg.steps, cfg.batch, cfg.hidden
        self.x = torch.randn(T, B, GATES[cfg.cell] * H, **kw)
        self.h = torch.zeros(T + 1, B, H, **kw)
        self.count = torch.zeros(1, device=cfg.device, dtype=torch.int32)
        self.grid_sync = grid_sync
        self.n_sms = torch.cuda.get_device_properties(cfg.device).multi_processor_count
        if grid_sync and self.floor.plan(B, H, True, self.n_sms) is None:
            raise ValueError(f"floor-grid: {-(-B // self.floor.BLOCK_B)} batch tiles exceed "
                             f"the {self.n_sms} SMs that must hold every program at once")

    def fwd(self):
        self.floor.launch(self.x, self.h, self.count, self.grid_sync, self.n_sms)
        return None

    def fwdbwd(self):
        self.fwd()
        self.fwd()


def build(provider, cfg, seed=0):
    """A Runner (or FloorRunner) for provider on cfg; raises if the provider cannot run it."""
    reason = unavailable(provider, cfg)
    if reason is not None:
        raise RuntimeError(reason)
    if provider.startswith("floor"):
        return FloorRunner(cfg, grid_sync=provider == "floor-grid")
    ref = reference_module(cfg, seed)
    gen = torch.Generator(cfg.device).manual_seed(seed + 2)
    x = torch.randn(cfg.steps, cfg.batch, cfg.input, device=cfg.device, dtype=DTYPES[cfg.dtype],
                    generator=gen).requires_grad_(True)
    out_size = cfg.output if cfg.cell == "jordan" else cfg.hidden
    m = (_gpurnn_module(cfg, ref, GPURNN[provider]) if provider in GPURNN else ref if provider == "torch.nn"
         else torch.compile(_gpurnn_module(cfg, ref, "numpy"), fullgraph=True) if provider == "gpurnn-compiled"
         else None)
    if m is not None and cfg.packed:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        lengths = torch.randint(1, cfg.steps + 1, (cfg.batch,), generator=torch.Generator().manual_seed(seed + 3))
        lengths[0] = cfg.steps
        return Runner(lambda x: pad_packed_sequence(m(pack_padded_sequence(x, lengths, enforce_sorted=False))[0],
                                                    total_length=cfg.steps)[0], x, m.parameters(), out_size)
    if m is not None:
        return Runner(lambda x: _output(cfg.cell, m, x), x, m.parameters(), out_size)
    step = _compiled_step(cfg.cell) if provider == "compile" else STEPS[cfg.cell]
    return Runner(lambda x: loop_forward(cfg.cell, ref, x, step), x, ref.parameters(), out_size)
