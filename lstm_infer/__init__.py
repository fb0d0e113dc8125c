"""lstm_infer: fast CPU inference for PyTorch-compatible LSTMs, with NumPy only.

    import lstm_infer as li
    m = li.LSTM.from_state_dict(state_dict)       # or li.load("model.lstm")
    output, (h_n, c_n) = m(x, lengths=lengths)    # torch.nn.LSTM semantics
"""
from ._core import get_isa, get_num_threads, set_isa, set_num_threads
from .model import LSTM

__version__ = "0.1.0"
__all__ = ["LSTM", "load", "set_num_threads", "get_num_threads", "get_isa", "set_isa"]


def load(path):
    """Reads a model file written by LSTM.save or `lstm-infer convert`."""
    from .modelfile import load_model
    return load_model(path)
