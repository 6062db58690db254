"""Bad input raises at the boundary with a message naming the argument, expected and actual."""
import numpy as np
import pytest
import torch

import gpurnn.functional as F
import gpurnn.nn as gnn

X = torch.randn(6, 2, 4)


def raises(exc, *words):
    """pytest.raises that also checks the message names each word."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.ctx.__exit__(*a)
            for w in words:
                assert w in str(self.info.value), f"{w!r} not in {self.info.value!r}"
            return out
    return Check()


@pytest.mark.parametrize("cls", [gnn.RNN, gnn.LSTM, gnn.GRU])
def test_module_input_errors(cls):
    m = cls(4, 5)
    with raises(RuntimeError, "input_size", "Expected 4, got 3"):
        m(torch.randn(6, 2, 3))
    with raises(ValueError, "Expected input to be 2D or 3D", "got 4D"):   # torch.nn's words
        m(torch.randn(6, 2, 4, 1))
    with pytest.raises(ValueError) as want:   # torch.nn's words, which change between torch versions
        getattr(torch.nn, cls.__name__)(4, 5)(torch.ones(6, 2, 4, dtype=torch.long))
    with raises(ValueError, str(want.value), "torch.int64", "torch.float32"):
        m(torch.ones(6, 2, 4, dtype=torch.long))
    with raises(ValueError, "type", "torch.float64", "torch.float32"):   # (torch 2.8 says "type", 2.13 "dtype")
        m(X.double())
    with raises(ValueError, "input", "device", "meta"):
        m(torch.empty(6, 2, 4, device="meta"))
    h = torch.zeros(1, 3, 5)
    with raises(RuntimeError, "(1, 2, 5)", "[1, 3, 5]"):   # torch.nn's words
        m(X, (h, h) if cls is gnn.LSTM else h)
    h = torch.zeros(1, 2, 5, dtype=torch.float64)
    with raises(TypeError, "torch.float32", "torch.float64"):
        m(X, (h, h) if cls is gnn.LSTM else h)


def test_lstm_cell_state_shape():
    m = gnn.LSTM(4, 5)
    with raises(RuntimeError, "hidden[1]", "(1, 2, 5)", "[1, 2, 6]"):   # torch.nn's words
        m(X, (torch.zeros(1, 2, 5), torch.zeros(1, 2, 6)))


@pytest.mark.parametrize("make,words", [
    (lambda: gnn.RNN(4, 5, nonlinearity="sigmoid"), ("nonlinearity", "sigmoid")),
    (lambda: gnn.RNN(4, 0), ("hidden_size",)),
    (lambda: gnn.LSTM(4, 5, dropout=1.5), ("dropout",)),
    (lambda: gnn.LSTM(4, 5, proj_size=5), ("proj_size",)),
    (lambda: gnn.GRU(4, 5, backend="tpu"), ("backend", "tpu", "numpy")),
    (lambda: gnn.JordanRNN(4, 5, 3, decay=1.5), ("decay", "[0, 1]", "1.5")),
    (lambda: gnn.JordanRNN(4, 5, 3, decay=-0.1), ("decay", "[0, 1]")),
    (lambda: gnn.JordanRNN(4, 0, 3), ("hidden_size", ">= 1", "0")),
    (lambda: gnn.JordanRNN(4, 5, 3, nonlinearity="gelu"), ("nonlinearity", "gelu")),
    (lambda: gnn.JordanRNN(4, 5, 3, output_activation="relu"), ("output_activation", "softmax", "relu")),
])
def test_constructor_errors(make, words):
    with raises(ValueError, *words):
        make()


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32])
def test_jordan_takes_a_floating_dtype(dtype):
    with raises(TypeError, "dtype", "floating", "bfloat16", str(dtype)):   # (bfloat16 was not listed)
        gnn.JordanRNN(4, 5, 3, dtype=dtype)


def test_jordan_forward_errors():
    m = gnn.JordanRNN(4, 5, 3)
    with raises(ValueError, "x", "4 input features", "got 2"):
        m(torch.randn(6, 2, 2))
    with raises(ValueError, "x", "1-D"):
        m(torch.randn(6))
    with raises(ValueError, "s0", "(2, 3)", "(2, 4)"):
        m(X, s0=torch.zeros(2, 4))
    with raises(ValueError, "teacher", "(6, 2, 3)", "(5, 2, 3)"):
        m(X, teacher=torch.zeros(5, 2, 3))
    with raises(TypeError, "x", "floating"):
        m(torch.ones(6, 2, 4, dtype=torch.int32))
    with raises(TypeError, "x", "torch.float32", "torch.float64"):
        m(X.double())
    with raises(TypeError, "s0", "torch.float32", "torch.float64"):
        m(X, s0=torch.zeros(2, 3, dtype=torch.float64))
    m.nonlinearity = "gelu"   # set after construction: the engine once ran relu for anything but tanh
    with raises(ValueError, "nonlinearity", "'gelu'"):
        m(X)
    m.nonlinearity, m.output_activation = "tanh", "relu"
    with raises(ValueError, "output_activation", "'relu'"):
        m(X)


def test_explicit_unavailable_backend_says_why():
    m = gnn.GRU(4, 5, backend="cupy")
    with pytest.raises((RuntimeError, ValueError), match="cupy"):
        m(X)


def lstm_weights(H=5, I=4, dtype=np.float64):
    rng = np.random.default_rng(0)
    return {"w_ih": rng.standard_normal((4 * H, I)).astype(dtype),
            "w_hh": rng.standard_normal((4 * H, H)).astype(dtype)}


def test_functional_errors():
    x = np.zeros((6, 2, 4))
    w = lstm_weights()
    with raises(ValueError, "cell", "elman"):
        F.forward("elman", x, w)
    with raises(ValueError, "x", "3-D", "2-D"):
        F.forward("lstm", x[0], w)
    with raises(ValueError, "x", "4 input features", "(6, 2, 3)"):
        F.forward("lstm", np.zeros((6, 2, 3)), w)
    with raises(TypeError, "x", "floating", "int64"):
        F.forward("lstm", np.zeros((6, 2, 4), dtype=np.int64), w)
    with raises(TypeError, "x", "floating", str(np.dtype(np.longdouble))):   # no BLAS GEMM for it
        F.forward("lstm", np.zeros((6, 2, 4), dtype=np.longdouble), w)
    with raises(TypeError, "weights['w_hh']", "float64", "float32"):
        F.forward("lstm", x, dict(w, w_hh=w["w_hh"].astype(np.float32)))
    with raises(ValueError, "weights['b_ih']", "(20,)", "(19,)"):
        F.forward("lstm", x, dict(w, b_ih=np.zeros(19), b_hh=np.zeros(20)))
    for given in ("b_ih", "b_hh"):   # the cells add both biases or neither: one alone was dropped or crashed
        with raises(ValueError, "weights", "both 'b_ih' and 'b_hh'", repr(given)):
            F.forward("lstm", x, dict(w, **{given: np.zeros(20)}))
    with raises(ValueError, "x", "input feature", "(6, 2, 0)"):
        F.forward("rnn", np.zeros((6, 2, 0)), {"w_ih": np.zeros((5, 0)), "w_hh": np.zeros((5, 5))})
    with raises(ValueError, "nonlinearity", "'relu'", "'gru'"):   # once silently ignored
        F.forward("gru", x, {"w_ih": np.zeros((15, 4)), "w_hh": np.zeros((15, 5))}, nonlinearity="relu")
    with raises(ValueError, "output_activation", "'sigmoid'", "'lstm'"):
        F.forward("lstm", x, w, output_activation="sigmoid")
    with raises(ValueError, "weights", "w_xx"):
        F.forward("lstm", x, dict(w, w_xx=np.zeros(1)))
    with raises(ValueError, "weights", "missing", "w_hh"):
        F.forward("lstm", x, {"w_ih": w["w_ih"]})
    with raises(ValueError, "weights", "missing", "w_hh", "cell 'rnn'"):   # as the caller named it, not 'elman'
        F.forward("rnn", x, {"w_ih": np.zeros((5, 4))})
    with raises(ValueError, "c0", "(2, 5)", "(2, 6)"):
        F.forward("lstm", x, w, (np.zeros((2, 5)), np.zeros((2, 6))))
    with raises(ValueError, "state0", "2 arrays", "got 1"):
        F.forward("lstm", x, w, (np.zeros((2, 5)),))
    with raises(ValueError, "batch_sizes", "non-increasing"):
        F.forward("lstm", x, w, batch_sizes=[2, 1, 2, 1, 1, 1])
    with raises(ValueError, "nonlinearity", "swish"):
        F.forward("rnn", x, {"w_ih": np.zeros((5, 4)), "w_hh": np.zeros((5, 5))}, nonlinearity="swish")
    with raises(ValueError, "backend", "gpu"):
        F.forward("lstm", x, w, backend="gpu")
    with raises(ValueError, "teacher", "jordan", "cell 'rnn'"):
        F.forward("rnn", x, {"w_ih": np.zeros((5, 4)), "w_hh": np.zeros((5, 5))}, teacher=np.zeros((6, 2, 5)))
    jw = {"w_ih": np.zeros((5, 4)), "w_sh": np.zeros((5, 3)), "w_ho": np.zeros((3, 5)), "decay": np.full(3, 2.0)}
    with raises(ValueError, "decay", "[0, 1]", "2.0"):
        F.forward("jordan", x, jw)
    with raises(ValueError, "decay", "[0, 1]"):
        F.forward("jordan", x, dict(jw, decay=np.array([0.5, np.nan, 0.5])))
    with raises(TypeError, "h0", "numpy array", "list"):
        F.forward("lstm", x, w, ([[0.0] * 5] * 2, np.zeros((2, 5))))
    with raises(ValueError, "output_activation", "relu"):
        F.forward("jordan", x, dict(jw, decay=np.zeros(3)), output_activation="relu")
    with raises(ValueError, "weights['w_ih']", "2-D", "0-D"):   # (an IndexError)
        F.forward("rnn", x, {"w_ih": np.array(1.0), "w_hh": np.zeros((5, 5))})
    with raises(ValueError, "weights['w_hr']", "2-D", "0-D"):
        F.forward("lstm", x, dict(w, w_hr=np.array(1.0)))
    with raises(ValueError, "weights['w_hr']", "(5, 5)", "(4, 5)"):   # w_hh (20, 5) was named
        F.forward("lstm", x, dict(w, w_hr=np.zeros((4, 5))))
    with raises(TypeError, "weights['w_ih']", "numpy array", "matrix"):   # NumPy's "shape too large to be a matrix"
        F.forward("lstm", x, dict(w, w_ih=np.asmatrix(w["w_ih"])))
    with raises(TypeError, "x", "byte order", ">f8"):   # "expected a floating dtype (... float64), got >f8"
        F.forward("lstm", x.astype(">f8"), w)
    with raises(TypeError, "reverse", "True or False", "'no'"):   # ran reversed
        F.forward("lstm", x, w, reverse="no")
    with raises(ValueError, "weights", "unknown", "0", "'zz'"):   # "'<' not supported between 'str' and 'int'"
        F.forward("lstm", x, {**w, "zz": np.zeros(1), 0: np.zeros(1)})
    y, state, tape = F.forward("lstm", x, w)
    with raises(ValueError, "dy", "(6, 2, 5)", "(6, 2, 4)"):
        F.backward(tape, np.zeros((6, 2, 4)))
    with raises(ValueError, "dstate", "2 arrays", "got 1"):
        F.backward(tape, None, (np.zeros((2, 5)),))


@pytest.mark.parametrize("x,words", [([[[0.0] * 4] * 2] * 6, ("x", "array", "list")), (None, ("x", "array", "NoneType")),
                                     (np.array(1.0), ("x", "3-D", "0-D")), (np.float64(1.0), ("x", "array", "float64")),
                                     (torch.zeros(6, 2, 4), ("x", "NumPy or CuPy array", "Tensor"))],
                         ids=["list", "None", "0-d", "scalar", "tensor"])
def test_functional_x_that_is_not_an_array(x, words):
    with raises((TypeError, ValueError), *words):
        F.forward("lstm", x, lstm_weights())


def test_functional_weights_and_gradients_that_are_not_arrays():
    x, w = np.zeros((6, 2, 4)), lstm_weights()
    for bad in (list(w.values()), None):
        with raises(TypeError, "weights", "dict", type(bad).__name__):
            F.forward("lstm", x, bad)
    with raises(TypeError, "weights['w_hh']", "numpy array", "list"):
        F.forward("lstm", x, dict(w, w_hh=w["w_hh"].tolist()))
    with raises(ValueError, "weights['w_hh']", "(0, 0)"):
        F.forward("rnn", x, {"w_ih": np.zeros((0, 4)), "w_hh": np.zeros((0, 0))})
    y, state, tape = F.forward("lstm", x, w)
    with raises(TypeError, "tape", "forward returned", "tuple"):
        F.backward((y, state), y)
    with raises(TypeError, "dy", "numpy array", "list"):
        F.backward(tape, y.tolist())
    with raises(TypeError, "dstate[0]", "numpy array", "list"):
        F.backward(tape, None, (state[0].tolist(), None))
    with raises(TypeError, "dy", "float64", "float32"):
        F.backward(tape, y.astype(np.float32))
    with raises(TypeError, "dstate[1]", "float64", "float32"):
        F.backward(tape, None, (None, state[1].astype(np.float32)))


@pytest.mark.parametrize("sizes", [[2.0, 2.0, 1.5, 1, 1, 1], "222111", [2, 2, 1, 1, 1, 0], [[2, 2, 1, 1, 1, 1]]],
                         ids=["floats", "string", "zero", "2-d"])
def test_functional_batch_sizes_of_the_wrong_kind(sizes):
    with raises((TypeError, ValueError), "batch_sizes"):
        F.forward("lstm", np.zeros((6, 2, 4)), lstm_weights(), batch_sizes=sizes)


def test_jordan_module_arguments_of_the_wrong_kind():
    with raises(ValueError, "decay", "(3,)", "(2,)"):
        gnn.JordanRNN(4, 5, 3, decay=torch.tensor([0.5, 0.5]))
    with raises(TypeError, "decay", "NoneType"):
        gnn.JordanRNN(4, 5, 3, decay=None)
    with raises(TypeError, "decay", "[0.5, None, 0.5]"):   # torch's "must be real number, not NoneType"
        gnn.JordanRNN(4, 5, 3, decay=[0.5, None, 0.5])
    with raises(TypeError, "input_size", "integer", "3"):   # a ValueError, where torch.nn's modules raise TypeError
        gnn.JordanRNN(np.int64(3), 5, 3)
    m = gnn.JordanRNN(4, 5, 3)
    with raises(TypeError, "x", "torch.Tensor", "ndarray"):
        m(np.zeros((6, 2, 4), dtype=np.float32))
    with raises(TypeError, "teacher", "torch.Tensor", "ndarray"):
        m(torch.zeros(6, 2, 4), teacher=np.zeros((6, 2, 3), dtype=np.float32))


@pytest.mark.parametrize("kind,name,shape,want", [("LSTM", "weight_hh_l0", (20, 6), (20, 5)),
                                                  ("GRU", "bias_ih_l1", (14,), (15,)),
                                                  ("RNN", "weight_ih_l1_reverse", (5, 5), (5, 10))])
def test_a_replaced_parameter_of_the_wrong_shape_is_named(kind, name, shape, want):
    m = getattr(gnn, kind)(4, 5, num_layers=2, bidirectional=True)
    setattr(m, name, torch.nn.Parameter(torch.randn(shape)))
    with raises(ValueError, name, f"expected shape {want}", f"got {shape}"):
        m(torch.randn(3, 2, 4))


def test_masked_arrays_are_refused_not_read_without_their_mask():
    """A masked array's mask would be ignored by every computation here (or break NumPy's broadcasting)."""
    x, w = np.zeros((6, 2, 4)), lstm_weights()
    with raises(TypeError, "x", "MaskedArray"):
        F.forward("lstm", np.ma.masked_array(x), w)
    with raises(TypeError, "weights['w_hh']", "MaskedArray"):
        F.forward("lstm", x, dict(w, w_hh=np.ma.masked_array(w["w_hh"], mask=True)))


def test_a_state_of_the_wrong_kind_and_a_recurrent_weight_without_columns_are_named():
    x, w = np.zeros((6, 2, 4)), lstm_weights()
    with raises(TypeError, "state0: expected a tuple of 2 arrays (h0, c0), got dict"):
        F.forward("lstm", x, w, {"h0": np.zeros((2, 5)), "c0": np.zeros((2, 5))})
    _, _, tape = F.forward("lstm", x, w)
    with raises(TypeError, "dstate: expected a tuple of 2 arrays like the final state, got int"):
        F.backward(tape, None, 0)
    with raises(ValueError, "weights['w_hh']", "at least one column", "(20, 0)"):
        F.forward("lstm", x, dict(w, w_hh=np.zeros((20, 0))))
