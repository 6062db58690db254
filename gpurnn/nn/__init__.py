"""Drop-in torch modules: gpurnn.nn.RNN/LSTM/GRU and RNNCell/LSTMCell/GRUCell are torch.nn's
(subclasses: same constructor, parameters, initialisation, state_dict, checks and messages)
whose forward runs the gpurnn engine; JordanRNN is gpurnn's own.

    rnn.py     RNN, LSTM, GRU           cell.py   RNNCell, LSTMCell, GRUCell
    jordan.py  JordanRNN                common.py what they share (autocast, checks)
    convert.py to_torch_nn: torch.nn's modules in their place, on the same parameters
The layer itself, as a custom op with autograd, is gpurnn/autograd.py.
"""
import torch

if tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) < (2, 8):
    # (pyproject asks for it, but the NumPy-only install does not: torch 2.7 lacks a private autograd hook used here)
    raise ImportError(f"gpurnn.nn needs torch >= 2.8, found torch {torch.__version__}")

from .. import dynamo
from ..autograd import run_layer, run_layers  # noqa: F401  (part of the API)
from .cell import GRUCell, LSTMCell, RNNCell
from .convert import to_torch_nn  # noqa: F401  (part of the API)
from .common import AUTOCAST  # noqa: F401  (which modules autocast, per device)
from .jordan import JordanRNN
from .rnn import GRU, LSTM, RNN

MODULES = (RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell, JordanRNN)
for _m in MODULES:
    _m.__module__ = __name__   # pickles name gpurnn.nn.LSTM, wherever the class is defined

# torch.load(weights_only=True), torch's default, unpickles only allowed classes: a whole saved
# gpurnn model loads wherever gpurnn.nn has been imported.
torch.serialization.add_safe_globals(list(MODULES))
dynamo.allow_rnn((RNN, LSTM, GRU))   # torch.compile traces these, not torch.nn's own (see gpurnn/dynamo.py)
