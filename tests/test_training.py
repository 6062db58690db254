"""Sequence loss, gradient clipping and truncated BPTT against torch computed independently.

Run as a script for the long-stream memory figure (each length in its own process):
    python tests/test_training.py 1000000
"""
import math
import re
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpurnn.nn as gnn
from gpurnn import training
from gpurnn.training import (clip_grad_norm_, sequence_loss, sequence_loss_backward, sequence_loss_forward,
                             split_chunks, truncated_bptt)

# float64: same arithmetic as torch up to summation order; float32: a few ulps of
# the logsumexp over V terms and of the (rows x V) gradient GEMMs.
TOL = {torch.float64: dict(rtol=1e-11, atol=1e-11), torch.float32: dict(rtol=2e-5, atol=2e-5)}


# ---------------------------------------------------------------- sequence loss

LOSS_CASES = {   # (T, B, H, V, bias, ignored rows)
    "T1_B1_H5_V3": (1, 1, 5, 3, True, False),
    "T7_B3_H17_V11": (7, 3, 17, 11, True, False),
    "T63_B2_H8_V300_padded": (63, 2, 8, 300, True, True),
    "T5_B4_H6_V9_no_bias": (5, 4, 6, 9, False, True),
}


def loss_inputs(T, B, H, V, bias, ignored, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(T, B, H, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g, dtype=dtype) / math.sqrt(H)).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    y = torch.randint(0, V, (T, B), generator=g)
    if ignored:   # padding at the end of the second sequence, as a padded batch would have
        y[T // 2:, -1] = -100
    return h, w, b, y


def torch_reference(h, w, b, y, reduction):
    """torch's cross-entropy over all steps: the definition of the sequence loss."""
    logits = h @ w.T + (0 if b is None else b)
    return F.cross_entropy(logits.reshape(-1, w.shape[0]), y.reshape(-1), reduction=reduction)


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(LOSS_CASES), ids=list(LOSS_CASES))
def test_sequence_loss_matches_cross_entropy_summed_over_time(case, dtype, reduction):
    h, w, b, y = loss_inputs(*LOSS_CASES[case], dtype)
    ref = torch_reference(h, w, b, y, reduction)
    got = sequence_loss(h, w, b, y, reduction=reduction, backend="numpy")
    assert got.dtype == dtype and got.shape == ()
    torch.testing.assert_close(got, ref, **TOL[dtype])
    for name, mine, theirs in zip(["dh", "dweight", "dbias"], grads_of(got, (h, w, b)), grads_of(ref, (h, w, b))):
        torch.testing.assert_close(mine, theirs, **TOL[dtype], msg=lambda m: f"{name}: {m}")


def test_sequence_loss_in_row_chunks_equals_one_chunk(monkeypatch):
    """A 50k vocabulary is processed a few rows at a time; force many chunks on a small case."""
    h, w, b, y = loss_inputs(9, 3, 7, 50, True, True, torch.float64)
    monkeypatch.setattr(training.loss, "_LOGITS_PER_CHUNK", 120)   # 2 rows of 50 logits per chunk
    got = sequence_loss(h, w, b, y, backend="numpy")
    ref = torch_reference(h, w, b, y, "sum")
    torch.testing.assert_close(got, ref, **TOL[torch.float64])
    for mine, theirs in zip(grads_of(got, (h, w, b)), grads_of(ref, (h, w, b))):
        torch.testing.assert_close(mine, theirs, **TOL[torch.float64])


def test_functional_path_scales_gradient_by_dloss():
    h, w, b, y = loss_inputs(4, 2, 5, 7, True, True, torch.float64)
    loss, saved = sequence_loss_forward(h.detach().numpy(), w.detach().numpy(), b.detach().numpy(),
                                        y.numpy(), reduction="mean")
    assert isinstance(loss, np.ndarray) and loss.shape == ()
    dh, dw, db = sequence_loss_backward(saved, 2.5)
    ref = torch_reference(h, w, b, y, "mean")
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-12)
    for mine, theirs in zip((dh, dw, db), grads_of(2.5 * ref, (h, w, b))):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-11, atol=1e-12)


def test_sequence_loss_bfloat16_runs_in_float32():
    h, w, b, y = loss_inputs(3, 2, 4, 6, True, False, torch.float32)
    got = sequence_loss(h.bfloat16(), w.bfloat16(), b.bfloat16(), y, backend="numpy")
    ref = torch_reference(h.bfloat16().float(), w.bfloat16().float(), b.bfloat16().float(), y, "sum")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=0)   # bf16 has 8 mantissa bits


def test_sequence_loss_backward_follows_torchs_graph_rules():
    """As for torch's own ops: backward twice with retain_graph adds the gradients again, a second backward
    without it is torch's error, gradcheck and gradgradcheck pass, and a gradient penalty (create_graph) is
    cross_entropy's (it was silently left out: the gradient came back cut off from the graph)."""
    h, w, b, y = loss_inputs(3, 2, 4, 6, True, True, torch.float64)
    loss = sequence_loss(h, w, b, y, backend="numpy")
    loss.backward(retain_graph=True)
    first = h.grad.clone()
    loss.backward()
    torch.testing.assert_close(h.grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
    assert torch.autograd.gradcheck(lambda *a: sequence_loss(*a, y, backend="numpy"), (h, w, b))
    assert torch.autograd.gradgradcheck(lambda *a: sequence_loss(*a, y, backend="numpy", reduction="mean"),
                                        (h, w, b))
    penalised = []
    for loss_of in (lambda: sequence_loss(h, w, b, y, backend="numpy"),
                    lambda: F.cross_entropy((h @ w.T + b).flatten(0, 1), y.flatten(), reduction="sum")):
        w.grad = None
        loss = loss_of()
        grad, = torch.autograd.grad(loss, h, create_graph=True)
        (loss + grad.pow(2).sum()).backward()
        penalised.append(w.grad)
    torch.testing.assert_close(penalised[0], penalised[1])


@pytest.mark.parametrize("changed", ["h", "weight"])
def test_sequence_loss_refuses_backward_after_an_input_changed_in_place(changed):
    """Its inputs are saved as torch's ops save theirs (the backward read the changed values)."""
    h, w, b, y = loss_inputs(3, 2, 4, 6, True, True, torch.float64)
    loss = sequence_loss(h, w, b, y, backend="numpy")
    with torch.no_grad():
        (h if changed == "h" else w).mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_sequence_loss_with_no_hidden_units_is_the_bias_alone():
    h, w, b, y = loss_inputs(3, 2, 0, 6, True, True, torch.float64)
    want = F.cross_entropy(b.expand(6, 6), y.flatten(), reduction="sum")
    torch.testing.assert_close(sequence_loss(h, w, b, y, backend="numpy"), want)


@pytest.mark.parametrize("change, error, words", [
    (dict(y=torch.zeros(4, 2)), TypeError, ["targets", "integer", "float32"]),
    (dict(y=torch.zeros(4, 3, dtype=torch.long)), ValueError, ["targets", "(4, 2)", "(4, 3)"]),
    (dict(y=torch.full((4, 2), 7)), ValueError, ["targets", "[0, 7)", "got 7"]),
    (dict(w=torch.zeros(7, 6)), ValueError, ["weight", "(V, 5)", "(7, 6)"]),
    (dict(w=torch.zeros(7, 5, dtype=torch.float64)), TypeError, ["weight", "float32", "float64"]),
    (dict(b=torch.zeros(6)), ValueError, ["bias", "(7,)", "(6,)"]),
    (dict(reduction="max"), ValueError, ["reduction", "'sum'", "'max'"]),
    (dict(y=None), TypeError, ["targets", "torch.Tensor", "NoneType"]),
    (dict(ignore_index=None), TypeError, ["ignore_index", "integer", "None"]),
    (dict(ignore_index=2.5), TypeError, ["ignore_index", "integer", "2.5"]),
    (dict(ignore_index=2 ** 70), ValueError, ["ignore_index", "int64", str(2 ** 70)]),
    (dict(h=torch.zeros(4, 2, 5, device="meta")), ValueError, ["h", "CPU", "meta"]),
])
def test_sequence_loss_rejects_bad_input_naming_it(change, error, words):
    args = dict(h=torch.zeros(4, 2, 5), w=torch.zeros(7, 5), b=torch.zeros(7),
                y=torch.zeros(4, 2, dtype=torch.long), reduction="sum", ignore_index=-100)
    args.update(change)
    with pytest.raises(error) as info:
        sequence_loss(args["h"], args["w"], args["b"], args["y"], reduction=args["reduction"],
                      ignore_index=args["ignore_index"], backend="numpy")
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name", ["weight", "targets"])
def test_sequence_loss_forward_names_an_argument_that_is_not_an_array(name):
    args = dict(h=np.zeros((4, 2, 5), np.float32), weight=np.zeros((7, 5), np.float32), bias=None,
                targets=np.zeros((4, 2), np.int64))
    args[name] = args[name].tolist()
    with pytest.raises(TypeError, match=f"{name}: expected a numpy array like h, got list"):
        sequence_loss_forward(**args)


# ---------------------------------------------------------------- clipping

@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, math.inf, 0, -math.inf, -1.0, math.nan, "inf"],
                         ids=["l2", "l1", "l3.5", "inf", "l0", "-inf", "l-1", "nan", "inf-string"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "leaves"])
def test_clip_functional_path_equals_torch(norm_type, max_norm):
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in [(4, 3), (7,), (2, 2, 5)]]
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in grads]
    for p, t in zip(params, grads):
        p.grad = t.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    arrays = {f"w{i}": t.numpy().copy() for i, t in enumerate(grads)}
    arrays["absent_bias"] = None
    norm = clip_grad_norm_(arrays, max_norm, norm_type)
    np.testing.assert_allclose(norm, ref_norm.item(), rtol=1e-12)   # nan == nan here
    for i, p in enumerate(params):
        np.testing.assert_allclose(arrays[f"w{i}"], p.grad.numpy(), rtol=1e-12, atol=0)


def test_clip_hands_torch_parameters_to_torch():
    import copy
    model = torch.nn.Linear(4, 3)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1, foreach=False)
    norm = clip_grad_norm_(model.parameters(), torch.tensor(0.1), foreach=False)   # torch's arguments too
    assert isinstance(norm, torch.Tensor) and norm.item() == ref_norm.item() > 0.1
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("args,exc,words", [
    (([np.ones(3, np.int64)], 1.0), TypeError, "grads[0]: expected a floating dtype"),
    (([np.ones(3)], 1.0, "fro"), TypeError, "norm_type: expected a number or inf, got 'fro'"),
    (([np.ones(3)], None), TypeError, "max_norm: expected a number, got None"),
    (([np.ones(3)], "1"), TypeError, "max_norm: expected a number, got '1'"),
    (([1.0, 2.0], 1.0), TypeError, "grads[0]: expected a NumPy or CuPy array, got float"),
    (([[1.0, 2.0]], 1.0), TypeError, "grads[0]: expected a NumPy or CuPy array, got list"),
    ((3.0, 1.0), TypeError, "grads: expected an array, or a list or dict of arrays, got float"),
    (([np.ones(3), torch.ones(3)], 1.0), TypeError, "grads[1]: expected a NumPy or CuPy array, got Tensor"),
    (([torch.ones(3), np.ones(3)], 1.0), TypeError, "grads[1]: expected a tensor like grads[0], got ndarray"),
], ids=["int", "fro", "max_norm-None", "max_norm-str", "floats", "nested-list", "scalar", "numpy-torch",
        "torch-numpy"])
def test_clip_rejects_bad_arguments(args, exc, words):
    with pytest.raises(exc, match=re.escape(words)):
        clip_grad_norm_(*args)


def test_clip_scales_nothing_when_one_array_is_read_only():
    a, b = np.full(3, 10.0), np.full(3, 10.0)
    b.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[1\]: expected a writable array"):
        clip_grad_norm_([a, b], 1.0)
    assert (a == 10.0).all()


@pytest.mark.parametrize("chunks,exc,words", [(None, TypeError, "chunks: expected an iterable of (x, target) pairs"),
                                              ([(1, 2, 3)], ValueError, "got a tuple of 3 at chunk 0")],
                         ids=["None", "3-tuples"])
def test_truncated_bptt_rejects_bad_chunks(chunks, exc, words):
    with pytest.raises(exc, match=re.escape(words)):
        list(truncated_bptt(torch.nn.RNN(2, 3), chunks, lambda y, t: y.sum()))


# ---------------------------------------------------------------- truncated BPTT

T, B, IN, HID, V = 10, 3, 4, 6, 5


def twins(name):
    """A gpurnn module and its torch.nn twin with the same weights (float64), and a head."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(IN, HID, dtype=torch.float64)
    mine = getattr(gnn, name)(IN, HID, dtype=torch.float64, backend="numpy")
    mine.load_state_dict(ref.state_dict())
    return mine, ref, torch.nn.Linear(HID, V, dtype=torch.float64)


def sequence_data(seed=4, out=V):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, IN, generator=g, dtype=torch.float64), torch.randint(0, out, (T, B), generator=g)


def reference_truncated_grads(ref, head, x, y, k):
    """torch.nn over k-step chunks, the state detached at each boundary, by hand."""
    ref.zero_grad(), head.zero_grad()
    state, losses, outs = None, [], []
    for t0 in range(0, T, k):
        out, state = ref(x[t0:t0 + k], state)
        loss = F.cross_entropy(head(out).reshape(-1, V), y[t0:t0 + k].reshape(-1), reduction="sum")
        loss.backward()
        losses.append(loss.detach())
        outs.append(out.detach())
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    return torch.stack(losses), torch.cat(outs), [p.grad.clone() for p in [*ref.parameters(), *head.parameters()]]


def run_helper(model, head, x, y, k):
    model.zero_grad(), head.zero_grad()
    outs = []

    def loss_fn(out, target):
        outs.append(out.detach())
        return sequence_loss(out, head.weight, head.bias, target, backend="numpy")

    results = list(truncated_bptt(model, split_chunks(k, x, y), loss_fn))
    losses = torch.stack([r.loss for r in results])
    return losses, torch.cat(outs), [p.grad.clone() for p in [*model.parameters(), *head.parameters()]], results


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("k", [T, 4, 1], ids=["k=T_full_bptt", "k=4_uneven_chunks", "k=1"])
def test_truncated_bptt_equals_torch_with_detached_chunks(name, k):
    mine, ref, head = twins(name)
    x, y = sequence_data()
    ref_losses, ref_out, ref_grads = reference_truncated_grads(ref, head, x, y, k)
    losses, out, grads, results = run_helper(mine, head, x, y, k)
    assert len(results) == math.ceil(T / k)
    torch.testing.assert_close(losses, ref_losses, **TOL[torch.float64])
    torch.testing.assert_close(out, ref_out, **TOL[torch.float64])
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g, r, **TOL[torch.float64], msg=lambda m: f"parameter {i}: {m}")
    # the carried state is the full sequence's final state, cut from its history
    _, full_state = ref(x)
    final = results[-1].state
    for s, r in zip(final if isinstance(final, tuple) else (final,),
                    full_state if isinstance(full_state, tuple) else (full_state,)):
        assert s.grad_fn is None
        torch.testing.assert_close(s, r, **TOL[torch.float64])


def test_truncation_changes_the_gradient():
    """k < T must cut gradient paths: otherwise the helper would be full BPTT in disguise."""
    mine, ref, head = twins("RNN")
    x, y = sequence_data()
    full = run_helper(mine, head, x, y, T)[2]
    cut = run_helper(mine, head, x, y, 4)[2]
    assert (full[1] - cut[1]).abs().max() > 1e-3   # weight_hh


def jordan_pair(teacher_forced=False):
    torch.manual_seed(0)
    kw = dict(output_activation="softmax", decay=0.3, dtype=torch.float64, backend="numpy")
    return gnn.JordanRNN(IN, HID, V, **kw), gnn.JordanRNN(IN, HID, V, **kw)


@pytest.mark.parametrize("teacher_forced", [False, True], ids=["free", "teacher_forced"])
@pytest.mark.parametrize("k", [T, 3], ids=["k=T", "k=3"])
def test_truncated_bptt_for_jordan(k, teacher_forced):
    """Jordan's state is s (the fed-back outputs); teacher forcing passes the target chunk in."""
    mine, ref = jordan_pair()
    ref.load_state_dict(mine.state_dict())
    x, y = sequence_data()
    teacher = F.one_hot(y, V).double()
    nll = lambda out, target: -(out.clamp_min(1e-300).log() * F.one_hot(target, V)).sum()
    forward = (lambda m, xc, s, tgt: m(xc, s, teacher=F.one_hot(tgt, V).double())) if teacher_forced \
        else (lambda m, xc, s, tgt: m(xc, s))
    results = list(truncated_bptt(mine, split_chunks(k, x, y), nll, forward=forward))
    # reference: the whole sequence in one call when k = T, else chunk by chunk by hand
    state, ref_losses = None, []
    for t0 in range(0, T, k):
        out, state = ref(x[t0:t0 + k], state, teacher=teacher[t0:t0 + k] if teacher_forced else None)
        loss = nll(out, y[t0:t0 + k])
        loss.backward()
        ref_losses.append(loss.detach())
        state = state.detach()
    torch.testing.assert_close(torch.stack([r.loss for r in results]), torch.stack(ref_losses))
    torch.testing.assert_close(results[-1].state, state)
    for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL[torch.float64], msg=lambda m: f"{name}: {m}")
    if k < T:   # chunked outputs continue the sequence: the final state equals one whole-sequence run
        _, whole = ref(x, teacher=teacher if teacher_forced else None)
        torch.testing.assert_close(results[-1].state, whole.detach())


def test_truncated_bptt_with_optimizer_clips_and_steps():
    mine, ref, head = twins("LSTM")
    mine_head = torch.nn.Linear(HID, V, dtype=torch.float64)
    mine_head.load_state_dict(head.state_dict())
    x, y = sequence_data()
    params = [*mine.parameters(), *mine_head.parameters()]
    model = torch.nn.ModuleDict({"rnn": mine, "head": mine_head})
    opt = torch.optim.SGD(params, lr=0.1)
    loss_fn = lambda out, target: sequence_loss(out, mine_head.weight, mine_head.bias, target, backend="numpy")
    results = list(truncated_bptt(model, split_chunks(5, x, y), loss_fn, optimizer=opt, max_norm=0.5,
                                  forward=lambda m, xc, s, tgt: m["rnn"](xc, s)))
    ref_params = [*ref.parameters(), *head.parameters()]
    ref_opt = torch.optim.SGD(ref_params, lr=0.1)
    state = None
    for (xc, yc), result in zip(split_chunks(5, x, y), results):
        out, state = ref(xc, state)
        F.cross_entropy(head(out).reshape(-1, V), yc.reshape(-1), reduction="sum").backward()
        norm = torch.nn.utils.clip_grad_norm_(ref_params, 0.5)
        ref_opt.step()
        ref_opt.zero_grad()
        state = tuple(s.detach() for s in state)
        torch.testing.assert_close(result.grad_norm, norm, **TOL[torch.float64])
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, **TOL[torch.float64])
    assert all(p.grad is None for p in params)


def test_split_chunks_checks_its_arguments():
    with pytest.raises(ValueError, match=r"k: expected an integer >= 1, got 0"):
        next(split_chunks(0, torch.zeros(3)))
    with pytest.raises(ValueError, match=r"expected the same length 3 along dim 0, got 2"):
        next(split_chunks(2, torch.zeros(3), torch.zeros(2)))
    assert [c[0].tolist() for c in split_chunks(np.int64(2), torch.arange(3))] == [[0, 1], [2]]
    with pytest.raises(TypeError, match=r"sequences: expected at least one tensor to split, got none"):
        next(split_chunks(2))
    with pytest.raises(TypeError, match=r"sequences\[0\]: expected a torch.Tensor, got ndarray"):
        next(split_chunks(2, np.zeros(3)))


# ---------------------------------------------------------------- flat memory over a stream

STREAM_H, STREAM_IN, STREAM_K = 64, 8, 100


def random_stream(chunks, k, seed=1):
    """An endless-stream stand-in: (x, target) chunks of k steps at B=1, made on the fly."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(chunks):
        yield torch.randn(k, 1, STREAM_IN, generator=gen), torch.randn(k, 1, STREAM_H, generator=gen)


def run_stream(model, optimizer, steps, state=None, k=STREAM_K):
    mse = lambda out, target: ((out - target) ** 2).mean()
    for result in truncated_bptt(model, random_stream(steps // k, k), mse, state=state,
                                 optimizer=optimizer, max_norm=1.0):
        state = result.state
    return state


def stream_model(name="LSTM"):
    torch.manual_seed(0)
    model = getattr(gnn, name)(STREAM_IN, STREAM_H, backend="numpy")
    return model, torch.optim.SGD(model.parameters(), lr=1e-3)


def traced_peak(model, optimizer, steps, state, k=STREAM_K):
    tracemalloc.reset_peak()
    state = run_stream(model, optimizer, steps, state, k)
    return tracemalloc.get_traced_memory()[1], state


@pytest.mark.parametrize("name", ["RNN", "LSTM"])
def test_memory_stays_flat_as_the_stream_grows(name, monkeypatch):
    """Peak traced memory (NumPy buffers included) over 12,000 steps is that of 2,000 steps."""
    monkeypatch.setenv("GPURNN_CPU_LAYER", "engine")   # (torch's op allocates nothing tracemalloc sees)
    model, optimizer = stream_model(name)
    k = 1000   # big chunks: one leaked chunk (0.5 MB RNN, 2 MB LSTM) dwarfs per-call noise
    state = run_stream(model, optimizer, 2 * k, None, k)   # warm caches and free lists untraced
    tracemalloc.start()
    try:
        short, state = traced_peak(model, optimizer, 2 * k, state, k)
        long, state = traced_peak(model, optimizer, 12 * k, state, k)
    finally:
        tracemalloc.stop()
    # Python's free lists still fill a little (tens of KB); keeping even one of the
    # ten extra chunks alive would add a quarter of `short` or more.
    assert long < short * 1.05, (short, long)


def stream_report(steps):
    """Print time, traced peak and ru_maxrss for one stream length (run in its own process)."""
    torch.set_num_threads(1)
    model, optimizer = stream_model()
    tracemalloc.start()
    start = time.perf_counter()
    peak, _ = traced_peak(model, optimizer, steps, None)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"LSTM H={STREAM_H} B=1 k={STREAM_K}: {steps:>9,d} steps  {seconds:6.1f} s (traced)  "
          f"traced peak {peak / 2**20:5.2f} MiB  ru_maxrss {rss:6.1f} MiB", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 2:
        stream_report(int(sys.argv[1]))
    else:
        for n in (10_000, 100_000, 1_000_000):
            subprocess.run([sys.executable, __file__, str(n)], check=True)
