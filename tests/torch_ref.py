"""PyTorch's answer for a ragged batch, including lengths of 0 (which torch refuses):
those sequences are left out of the packed call and get zeros / h_0 / c_0, the
behaviour lstm_infer documents. Used by the live parity tests and by
tools/make_fixtures.py / tools/make_family_fixtures.py."""
import numpy as np


def _packed_forward(torch, module, x, lengths, states):
    """module: nn.LSTM, nn.GRU or nn.RNN; states: list of (slots, B, w) float32
    arrays (h_0 [, c_0]), never None. Returns (output, [final states])."""
    bf = module.batch_first
    T, B = (x.shape[1], x.shape[0]) if bf else (x.shape[0], x.shape[1])
    D = 2 if module.bidirectional else 1
    width = states[0].shape[-1]
    lengths = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    out = np.zeros((B, T, D * width) if bf else (T, B, D * width), np.float32)
    finals = [s.copy() for s in states]
    live = np.flatnonzero(lengths > 0)
    if len(live):
        xs = torch.from_numpy(np.ascontiguousarray(x[live] if bf else x[:, live]))
        given = tuple(torch.from_numpy(np.ascontiguousarray(s[:, live])) for s in states)
        with torch.no_grad():
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xs, torch.from_numpy(lengths[live]), batch_first=bf, enforce_sorted=False)
            y, got = module(packed, given if len(given) > 1 else given[0])
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=bf, total_length=T)
        if bf:
            out[live] = y.numpy()
        else:
            out[:, live] = y.numpy()
        got = got if isinstance(got, tuple) else (got,)
        for f, g in zip(finals, got):
            f[:, live] = g.numpy()
    return out, finals


def torch_forward(torch, lstm, x, lengths=None, hx=None):
    """lstm: torch.nn.LSTM; x: (T, B, I) or (B, T, I) with batch_first NumPy float32.
    Returns (output, h_n, c_n)."""
    B = x.shape[0] if lstm.batch_first else x.shape[1]
    slots = lstm.num_layers * (2 if lstm.bidirectional else 1)
    if hx is None:
        hx = (np.zeros((slots, B, lstm.proj_size or lstm.hidden_size), np.float32),
              np.zeros((slots, B, lstm.hidden_size), np.float32))
    out, (h_n, c_n) = _packed_forward(torch, lstm, x, lengths, list(hx))
    return out, h_n, c_n


def torch_forward_h(torch, module, x, lengths=None, h0=None):
    """module: torch.nn.GRU or torch.nn.RNN; x as for torch_forward; h0 (L*D, B, H)
    or None. Returns (output, h_n)."""
    B = x.shape[0] if module.batch_first else x.shape[1]
    slots = module.num_layers * (2 if module.bidirectional else 1)
    if h0 is None:
        h0 = np.zeros((slots, B, module.hidden_size), np.float32)
    out, (h_n,) = _packed_forward(torch, module, x, lengths, [h0])
    return out, h_n


def torch_cell(torch, cell, x, hx=None):
    """One call of a torch.nn.LSTMCell / GRUCell / RNNCell on NumPy inputs (batched
    (B, I) or unbatched (I,)); returns NumPy (h_1, c_1) for the LSTMCell, else h_1."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if hx is not None:
        hx = (tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in hx)
              if isinstance(hx, tuple) else torch.from_numpy(np.ascontiguousarray(hx)))
    with torch.no_grad():
        res = cell(t, hx)
    if isinstance(res, tuple):
        return tuple(r.numpy() for r in res)
    return res.numpy()
