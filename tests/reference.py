"""A slow NumPy LSTM reference for the engine tests, written from the equations.

The recurrence itself is file_helpers.np_lstm (float64; gates i, f, g, o;
c = f*c + i*g; h = o*tanh(c); h = W_hr h with proj_size; packed-sequence
lengths: each sequence on its own, the reverse direction starting at the
sequence's own end, outputs past a length 0, h_n/c_n the last valid state, a
length of 0 leaving h_0/c_0 unchanged). This module adds what the property,
bad-input and concurrency tests need around it: random torch-named state
dicts, batch_first and unbatched layouts.
"""
import numpy as np

from file_helpers import np_lstm

__all__ = ["np_lstm", "state_dict_shapes", "random_state_dict", "reference"]


def state_dict_shapes(input_size, hidden_size, num_layers=1, bias=True, bidirectional=False,
                      proj_size=0):
    """torch.nn.LSTM's state_dict key names and shapes, in torch's order."""
    D = 2 if bidirectional else 1
    out = proj_size or hidden_size
    shapes = {}
    for layer in range(num_layers):
        fan_in = input_size if layer == 0 else D * out
        for sfx in ("", "_reverse")[:D]:
            s = f"_l{layer}{sfx}"
            shapes["weight_ih" + s] = (4 * hidden_size, fan_in)
            shapes["weight_hh" + s] = (4 * hidden_size, out)
            if bias:
                shapes["bias_ih" + s] = (4 * hidden_size,)
                shapes["bias_hh" + s] = (4 * hidden_size,)
            if proj_size:
                shapes["weight_hr" + s] = (proj_size, hidden_size)
    return shapes


def random_state_dict(rng, scale=None, **cfg):
    """float32 weights under torch's names, uniform in +-scale (default 1.5/sqrt(H))."""
    scale = 1.5 / np.sqrt(cfg["hidden_size"]) if scale is None else scale
    return {k: rng.uniform(-scale, scale, shape).astype(np.float32)
            for k, shape in state_dict_shapes(**cfg).items()}


def reference(sd, cfg, x, hx=None, lengths=None, batch_first=False):
    """(output, (h_n, c_n)) in float64 for a (T, B, I) input, or (B, T, I) with
    batch_first, or unbatched (T, I). cfg: input_size, hidden_size, num_layers,
    bias, bidirectional, proj_size."""
    x = np.asarray(x, dtype=np.float64)
    full = {"num_layers": 1, "bias": True, "bidirectional": False, "proj_size": 0, **cfg}
    if x.ndim == 2:
        hx3 = None if hx is None else (np.asarray(hx[0])[:, None], np.asarray(hx[1])[:, None])
        out, h, c = np_lstm(sd, full, x[:, None, :], hx3, None)
        return out[:, 0], (h[:, 0], c[:, 0])
    if batch_first:
        x = x.transpose(1, 0, 2)
    out, h, c = np_lstm(sd, full, x, hx, lengths)
    if batch_first:
        out = out.transpose(1, 0, 2)
    return out, (h, c)
