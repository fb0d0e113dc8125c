"""A slow NumPy LSTM reference for the engine tests, written from the equations.

The recurrence itself is file_helpers.np_lstm (float64; gates i, f, g, o;
c = f*c + i*g; h = o*tanh(c); h = W_hr h with proj_size; packed-sequence
lengths: each sequence on its own, the reverse direction starting at the
sequence's own end, outputs past a length 0, h_n/c_n the last valid state, a
length of 0 leaving h_0/c_0 unchanged). This module adds what the property,
bad-input and concurrency tests need around it: random torch-named state
dicts, batch_first and unbatched layouts. The second half is the same for
the rest of torch.nn's recurrent family (GRU, RNN and the three cells): see
np_recurrent and the Ref* classes.
"""
import numpy as np

from file_helpers import np_lstm

__all__ = ["np_lstm", "state_dict_shapes", "random_state_dict", "reference",
           "family_state_dict_shapes", "random_family_state_dict", "cell_step", "np_recurrent",
           "REF_CLASSES"]


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


# ------------------------------------------------ the rest of the recurrent family
#
# torch.nn.GRU / nn.RNN and the three cells, from torch's documented equations,
# in float64, vectorised over the batch (fast enough for the live matrices):
#   GRU  (gates r, z, n): r = s(W_ir x + b_ir + W_hr h + b_hr)
#                         z = s(W_iz x + b_iz + W_hz h + b_hz)
#                         n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
#                         h' = (1 - z) * n + z * h
#   RNN:                  h' = tanh or relu(W_ih x + b_ih + W_hh h + b_hh)
#   LSTM (i, f, g, o), no projection: as np_lstm.
# Lengths follow pack_padded_sequence(enforce_sorted=False) like np_lstm, and a
# length of 0 gives zeros in the output and h_0 (c_0) as the final state.
#
# The Ref* classes wrap these in the API the issue gives lstm_infer's classes
# (from_state_dict / load_state_dict / state_dict / __call__), so the family
# parity tests can run their whole harness on them while lstm_infer lacks the
# classes, and on both afterwards.

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
CELL_MODULE = {"LSTMCell": "LSTM", "GRUCell": "GRU", "RNNCell": "RNN"}
NONLINEARITIES = ("tanh", "relu")


def family_state_dict_shapes(kind, input_size, hidden_size, num_layers=1, bias=True,
                             bidirectional=False, **_ignored):
    """The state_dict key names and shapes of torch.nn.<kind>, in torch's order.

    kind: LSTM, GRU, RNN, LSTMCell, GRUCell or RNNCell. Other constructor
    arguments (batch_first, nonlinearity, dropout) do not change the keys.
    """
    if kind == "LSTM":
        return state_dict_shapes(input_size, hidden_size, num_layers, bias, bidirectional)
    if kind in CELL_MODULE:
        G = GATES[CELL_MODULE[kind]] * hidden_size
        shapes = {"weight_ih": (G, input_size), "weight_hh": (G, hidden_size)}
        if bias:
            shapes["bias_ih"] = (G,)
            shapes["bias_hh"] = (G,)
        return shapes
    G, D = GATES[kind] * hidden_size, 2 if bidirectional else 1
    shapes = {}
    for layer in range(num_layers):
        fan_in = input_size if layer == 0 else D * hidden_size
        for sfx in ("", "_reverse")[:D]:
            s = f"_l{layer}{sfx}"
            shapes["weight_ih" + s] = (G, fan_in)
            shapes["weight_hh" + s] = (G, hidden_size)
            if bias:
                shapes["bias_ih" + s] = (G,)
                shapes["bias_hh" + s] = (G,)
    return shapes


def random_family_state_dict(kind, rng, scale=None, **cfg):
    """float32 weights of torch.nn.<kind> under torch's names, uniform in +-scale
    (default 1.5/sqrt(H))."""
    scale = 1.5 / np.sqrt(cfg["hidden_size"]) if scale is None else scale
    return {k: rng.uniform(-scale, scale, shape).astype(np.float32)
            for k, shape in family_state_dict_shapes(kind, **cfg).items()}


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def cell_step(cell, w_ih, w_hh, b_ih, b_hh, x, h, c=None, nonlinearity="tanh"):
    """One step of `cell` (LSTM, GRU or RNN) for rows x (B, I), h (B, H) and, for
    the LSTM, c (B, H). Returns h' (and c' for the LSTM). float64 in, float64 out."""
    gi = x @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    if cell == "LSTM":
        i, f, g, o = np.split(gi + gh, 4, axis=-1)
        c = _sig(f) * c + _sig(i) * np.tanh(g)
        return _sig(o) * np.tanh(c), c
    if cell == "GRU":
        i_r, i_z, i_n = np.split(gi, 3, axis=-1)
        h_r, h_z, h_n = np.split(gh, 3, axis=-1)
        r, z = _sig(i_r + h_r), _sig(i_z + h_z)
        n = np.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * h
    a = gi + gh
    if nonlinearity == "tanh":
        return np.tanh(a)
    if nonlinearity == "relu":
        return np.maximum(a, 0.0)
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}")


def _params(sd, sfx, G, H, bias):
    w_ih = np.asarray(sd["weight_ih" + sfx], np.float64)
    w_hh = np.asarray(sd["weight_hh" + sfx], np.float64)
    if bias:
        return (w_ih, w_hh, np.asarray(sd["bias_ih" + sfx], np.float64),
                np.asarray(sd["bias_hh" + sfx], np.float64))
    return w_ih, w_hh, np.zeros(G * H), np.zeros(G * H)


def np_recurrent(cell, sd, cfg, x, hx=None, lengths=None, nonlinearity="tanh"):
    """torch.nn.LSTM (no proj) / GRU / RNN on a seq-first (T, B, I) input, float64.

    cfg: input_size, hidden_size, num_layers, bias, bidirectional. hx: h_0, or
    (h_0, c_0) for the LSTM, shaped (L*D, B, H). Returns (output, h_n) or, for
    the LSTM, (output, h_n, c_n).
    """
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    H, L = cfg["hidden_size"], cfg.get("num_layers", 1)
    D, bias, G = 2 if cfg.get("bidirectional") else 1, cfg.get("bias", True), GATES[cell]
    lengths = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    lstm = cell == "LSTM"
    if hx is None:
        h0, c0 = np.zeros((L * D, B, H)), np.zeros((L * D, B, H))
    elif lstm:
        h0, c0 = np.asarray(hx[0], np.float64), np.asarray(hx[1], np.float64)
    else:
        h0, c0 = np.asarray(hx, np.float64), None
    h_n = h0.copy()
    c_n = c0.copy() if lstm else None
    layer_in = x
    for layer in range(L):
        out = np.zeros((T, B, D * H))
        for d in range(D):
            idx = layer * D + d
            p = _params(sd, f"_l{layer}" + ("_reverse" if d else ""), G, H, bias)
            h = h0[idx].copy()
            c = c0[idx].copy() if lstm else None
            for k in range(T):
                rows = np.flatnonzero(k < lengths)   # step k of each sequence still running
                if not len(rows):
                    break
                t = k if d == 0 else lengths[rows] - 1 - k  # reverse: from each own end
                t = np.broadcast_to(t, rows.shape)
                if lstm:
                    hn, cn = cell_step(cell, *p, layer_in[t, rows], h[rows], c[rows])
                    c[rows] = cn
                else:
                    hn = cell_step(cell, *p, layer_in[t, rows], h[rows],
                                   nonlinearity=nonlinearity)
                h[rows] = hn
                out[t, rows, d * H:(d + 1) * H] = hn
            h_n[idx] = h
            if lstm:
                c_n[idx] = c
        layer_in = out
    return (layer_in, h_n, c_n) if lstm else (layer_in, h_n)


def _to_np(value):
    if hasattr(value, "detach"):   # a torch tensor, maybe with requires_grad
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class _Ref:
    """What the Ref* classes share: weights under torch's names, strict loading,
    config from the shapes."""
    kind = None

    def _shapes(self):
        return family_state_dict_shapes(self.kind, **self.config)

    def _init_weights(self):
        rng = np.random.default_rng(0)
        k = 1.0 / np.sqrt(self.hidden_size)
        self._weights = {n: rng.uniform(-k, k, s).astype(np.float32)
                         for n, s in self._shapes().items()}

    def state_dict(self):
        return {k: v.copy() for k, v in self._weights.items()}

    def load_state_dict(self, state_dict, strict=True):
        shapes = self._shapes()
        missing = [k for k in shapes if k not in state_dict]
        unexpected = [k for k in state_dict if k not in shapes]
        if strict and (missing or unexpected):
            raise KeyError(f"missing keys {missing}, unexpected keys {unexpected}")
        new = dict(self._weights)
        for k, shape in shapes.items():
            if k in state_dict:
                a = np.array(_to_np(state_dict[k]), np.float32)
                if a.shape != shape:
                    raise ValueError(f"{k}: shape {a.shape}, expected {shape}")
                new[k] = a
        self._weights = new
        return missing, unexpected

    @classmethod
    def _config_from_shapes(cls, sd):
        cell = cls.kind in CELL_MODULE
        G = GATES[CELL_MODULE.get(cls.kind, cls.kind)]
        sfx = "" if cell else "_l0"
        if "weight_hh" + sfx not in sd:
            raise KeyError(f"no weight_hh{sfx} in the state dict")
        rows, H = sd["weight_hh" + sfx].shape
        if rows != G * H:
            raise ValueError(f"weight_hh{sfx} has {rows} rows: not a {cls.kind} of hidden "
                             f"size {H} ({G} gates)")
        cfg = {"input_size": int(sd["weight_ih" + sfx].shape[1]), "hidden_size": int(H),
               "bias": "bias_ih" + sfx in sd}
        if not cell:
            cfg["num_layers"] = sum(1 for k in sd if k.startswith("weight_ih_l")
                                    and not k.endswith("_reverse"))
            cfg["bidirectional"] = "weight_ih_l0_reverse" in sd
        return cfg

    @classmethod
    def from_state_dict(cls, state_dict, prefix="", **overrides):
        if prefix and not prefix.endswith("."):
            prefix += "."
        sd = {k[len(prefix):]: _to_np(v) for k, v in state_dict.items()
              if k.startswith(prefix)}
        m = cls(**cls._config_from_shapes(sd), **overrides)
        m.load_state_dict(sd, strict=True)
        return m


class _RefModule(_Ref):
    cell = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False):
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), dropout
        self.bidirectional = bool(bidirectional)
        self.nonlinearity = "tanh"
        self._init_weights()

    @property
    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.bias,
                "batch_first": self.batch_first, "dropout": self.dropout,
                "bidirectional": self.bidirectional}

    def __call__(self, x, hx=None, lengths=None):
        lstm = self.cell == "LSTM"
        if isinstance(x, (list, tuple)):   # like pack_sequence
            seqs = [np.asarray(_to_np(s), np.float64) for s in x]
            lens = np.array([len(s) for s in seqs], np.int64)
            pad = np.zeros((lens.max(), len(seqs), self.input_size))
            for b, s in enumerate(seqs):
                pad[:len(s), b] = s
            res = self._run(pad, hx, lens)
            return ([res[0][:n, b].astype(np.float32) for b, n in enumerate(lens)],) + res[1:]
        x = np.asarray(_to_np(x), np.float64)
        if x.ndim == 2:   # unbatched (T, I); hx (L*D, H)
            if hx is not None:
                hx = tuple(_to_np(a)[:, None] for a in hx) if lstm else _to_np(hx)[:, None]
            res = self._run(x[:, None], hx, None)
            return (res[0][:, 0],) + tuple(_squeeze_state(r) for r in res[1:])
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        res = self._run(x, hx, lengths)
        out = res[0].transpose(1, 0, 2) if self.batch_first else res[0]
        return (np.ascontiguousarray(out),) + res[1:]

    def _run(self, x, hx, lengths):
        cfg = self.config
        if self.cell == "LSTM":
            hx = None if hx is None else tuple(_to_np(a) for a in hx)
            out, h, c = np_recurrent("LSTM", self._weights, cfg, x, hx, lengths)
            return out.astype(np.float32), (h.astype(np.float32), c.astype(np.float32))
        hx = None if hx is None else _to_np(hx)
        out, h = np_recurrent(self.cell, self._weights, cfg, x, hx, lengths,
                              nonlinearity=self.nonlinearity)
        return out.astype(np.float32), h.astype(np.float32)


def _squeeze_state(state):
    if isinstance(state, tuple):
        return tuple(s[:, 0] for s in state)
    return state[:, 0]


class RefLSTM(_RefModule):
    """nn.LSTM without proj_size: enough for the cell-versus-layer tests."""
    kind = cell = "LSTM"


class RefGRU(_RefModule):
    kind = cell = "GRU"


class RefRNN(_RefModule):
    kind = cell = "RNN"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)
        self.nonlinearity = nonlinearity

    @property
    def config(self):
        return dict(super().config, nonlinearity=self.nonlinearity)


class _RefCell(_Ref):
    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh"):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        self.nonlinearity = nonlinearity
        self._init_weights()

    @property
    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "bias": self.bias}

    def __call__(self, x, hx=None):
        cell = CELL_MODULE[self.kind]
        x = np.asarray(_to_np(x), np.float64)
        unbatched = x.ndim == 1
        x2 = x[None] if unbatched else x
        shape = (x2.shape[0], self.hidden_size)

        def state(a):   # given as torch does: (B, H), or (H,) when unbatched
            if a is None:
                return np.zeros(shape)
            return np.asarray(_to_np(a), np.float64).reshape(shape)
        p = _params(self._weights, "", GATES[cell], self.hidden_size, self.bias)
        if cell == "LSTM":
            h, c = (state(None), state(None)) if hx is None else (state(hx[0]), state(hx[1]))
            h, c = cell_step(cell, *p, x2, h, c)
            h, c = h.astype(np.float32), c.astype(np.float32)
            return (h[0], c[0]) if unbatched else (h, c)
        h = state(hx)
        h = cell_step(cell, *p, x2, h, nonlinearity=self.nonlinearity).astype(np.float32)
        return h[0] if unbatched else h


class RefLSTMCell(_RefCell):
    kind = "LSTMCell"

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias)


class RefGRUCell(_RefCell):
    kind = "GRUCell"

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias)


class RefRNNCell(_RefCell):
    kind = "RNNCell"

    @property
    def config(self):
        return dict(super().config, nonlinearity=self.nonlinearity)


REF_CLASSES = {"LSTM": RefLSTM, "GRU": RefGRU, "RNN": RefRNN, "LSTMCell": RefLSTMCell,
               "GRUCell": RefGRUCell, "RNNCell": RefRNNCell}
