"""lstm_infer: fast CPU inference for PyTorch's recurrent networks, with NumPy only.

    import lstm_infer as li
    m = li.LSTM.from_state_dict(state_dict)       # or li.GRU, li.RNN, the cells, li.load(...)
    output, (h_n, c_n) = m(x, lengths=lengths)    # torch.nn.LSTM semantics
"""
from ._core import get_isa, get_num_threads, set_isa, set_num_threads
from .model import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .runner import predict, predict_iter

__version__ = "0.2.0"
__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "load", "set_num_threads",
           "get_num_threads", "get_isa", "set_isa", "predict", "predict_iter"]


def load(path):
    """Reads a model file written by save() or `lstm-infer convert`; returns a
    module of the kind the file records (LSTM, GRU, RNN or a cell)."""
    from .model import MODULES
    from .modelfile import read_model
    kind, config, state_dict = read_model(path)
    model = MODULES[kind](**config)
    model.load_state_dict(state_dict, strict=True)
    return model
