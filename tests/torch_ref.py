"""PyTorch's answer for a ragged batch, including lengths of 0 (which torch refuses):
those sequences are left out of the packed call and get zeros / h_0 / c_0, the
behaviour lstm_infer documents. Used by the live parity tests and by
tools/make_fixtures.py."""
import numpy as np


def torch_forward(torch, lstm, x, lengths=None, hx=None):
    """lstm: torch.nn.LSTM; x: (T, B, I) or (B, T, I) with batch_first NumPy float32."""
    bf = lstm.batch_first
    T, B = (x.shape[1], x.shape[0]) if bf else (x.shape[0], x.shape[1])
    D = 2 if lstm.bidirectional else 1
    out_w = lstm.proj_size or lstm.hidden_size
    lengths = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    slots = lstm.num_layers * D
    h0 = np.zeros((slots, B, out_w), np.float32) if hx is None else hx[0]
    c0 = np.zeros((slots, B, lstm.hidden_size), np.float32) if hx is None else hx[1]
    out = np.zeros((B, T, D * out_w) if bf else (T, B, D * out_w), np.float32)
    h_n, c_n = h0.copy(), c0.copy()
    live = np.flatnonzero(lengths > 0)
    if len(live):
        xs = torch.from_numpy(np.ascontiguousarray(x[live] if bf else x[:, live]))
        state = None if hx is None else (torch.from_numpy(np.ascontiguousarray(h0[:, live])),
                                         torch.from_numpy(np.ascontiguousarray(c0[:, live])))
        with torch.no_grad():
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xs, torch.from_numpy(lengths[live]), batch_first=bf, enforce_sorted=False)
            y, (h, c) = lstm(packed, state)
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=bf, total_length=T)
        if bf:
            out[live] = y.numpy()
        else:
            out[:, live] = y.numpy()
        h_n[:, live], c_n[:, live] = h.numpy(), c.numpy()
    return out, h_n, c_n
