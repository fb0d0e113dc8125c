"""lstm_infer: fast CPU inference for PyTorch's recurrent networks, with NumPy only.

    import lstm_infer as li
    m = li.LSTM.from_state_dict(state_dict)       # or li.GRU, li.RNN, the cells, li.load(...)
    output, (h_n, c_n) = m(x, lengths=lengths)    # torch.nn.LSTM semantics

    # a whole model: Embedding -> recurrent layers -> readout -> head
    model = li.Sequential.from_state_dict(li.read_state_dict("model.pt"),
                                          "embedding > lstm > final > fc > softmax")
    probs = model(ids, lengths=lengths)           # ids (T, B) ints -> (B, classes)
"""
from ._core import get_isa, get_num_threads, set_isa, set_num_threads
from .model import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .layers import (Dropout, Embedding, LayerNorm, Linear, LogSoftmax, Readout, ReLU, Sigmoid,
                     Softmax, Tanh)
from .runner import predict, predict_iter
from .sequential import Sequential, read_state_dict

__version__ = "0.2.0"
__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "load", "set_num_threads",
           "get_num_threads", "get_isa", "set_isa", "predict", "predict_iter",
           "Sequential", "read_state_dict", "Embedding", "Linear", "LayerNorm", "ReLU", "Tanh",
           "Sigmoid", "Softmax", "LogSoftmax", "Dropout", "Readout"]


def load(path):
    """Reads a model file written by save() or `lstm-infer convert`; returns a
    module of the kind the file records (LSTM, GRU, RNN or a cell), or a Sequential,
    with the weights as the file stores them (float32, or reduced: float16 / int8)."""
    from .modelfile import read_stored
    from .sequential import build_model
    return build_model(*read_stored(path))
