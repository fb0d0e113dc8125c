"""The user-facing LSTM: torch.nn.LSTM's signature and semantics on NumPy arrays.

All checking and conversion happens here, in plain Python, so that errors are
clear exceptions; the numbers are computed by the C core (lstm_infer._core)
with the GIL released.
"""
import numbers
import operator

import numpy as np

from . import _core

_FLOAT_KINDS = "f"


def _to_numpy(value, what):
    """An array-like (NumPy array, torch tensor, list) as a NumPy array, without torch."""
    if value is None:
        raise TypeError(f"{what} must be an array, got None")
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{what} must be an array of numbers: {e}") from None
    return arr


def _float_array(value, what):
    if type(value) is np.ndarray and value.dtype == np.float32:
        return value  # the common case, kept cheap for streaming calls
    arr = _to_numpy(value, what)
    if arr.dtype.kind not in _FLOAT_KINDS:
        raise TypeError(f"{what} must have a floating-point dtype (float16/32/64), "
                        f"got {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _as_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _rebuild(cls, config, weights):
    """An LSTM from what LSTM.__reduce__ gives (for pickle and copy)."""
    model = cls(**config)
    model.load_state_dict(weights)
    return model


class LSTM(_core.Module):
    """torch.nn.LSTM for inference, on NumPy arrays.

    LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
         dropout=0.0, bidirectional=False, proj_size=0)

    Weights start random like torch's (uniform in +-1/sqrt(hidden_size)); load
    trained ones with load_state_dict or build with LSTM.from_state_dict.
    dropout is accepted and ignored, as in torch's eval() mode.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0):
        self.input_size = _as_int(input_size, "input_size", 1)
        self.hidden_size = _as_int(hidden_size, "hidden_size", 1)
        self.num_layers = _as_int(num_layers, "num_layers", 1)
        self.proj_size = _as_int(proj_size, "proj_size", 0)
        if self.num_layers > 1024:
            raise ValueError(f"num_layers = {self.num_layers} is too large (at most 1024)")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size ({self.proj_size}) must be smaller than "
                             f"hidden_size ({self.hidden_size})")
        if not isinstance(dropout, numbers.Real) or not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        for name, v in (("input_size", self.input_size), ("hidden_size", self.hidden_size)):
            if v > (1 << 24):
                raise ValueError(f"{name} = {v} is too large (at most {1 << 24})")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        rng = np.random.default_rng()
        k = 1.0 / np.sqrt(self.hidden_size)
        self._weights = {name: rng.uniform(-k, k, shape).astype(np.float32)
                         for name, shape in self._expected_shapes().items()}
        self._build()

    # ------------------------------------------------------------ config
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def out_size(self):
        """Width of h: proj_size when set, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.bias,
                "batch_first": self.batch_first, "dropout": self.dropout,
                "bidirectional": self.bidirectional, "proj_size": self.proj_size}

    def __repr__(self):
        extra = "".join(f", {k}={v}" for k, v in self.config.items()
                        if k not in ("input_size", "hidden_size")
                        and v != LSTM.__init__.__defaults__[
                            ["num_layers", "bias", "batch_first", "dropout", "bidirectional",
                             "proj_size"].index(k)])
        return f"LSTM({self.input_size}, {self.hidden_size}{extra})"

    def _expected_shapes(self):
        """torch's state_dict keys in torch's order, with their shapes."""
        H, out, D = self.hidden_size, self.out_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            fan_in = self.input_size if layer == 0 else D * out
            for suffix in ("", "_reverse")[:D]:
                s = f"_l{layer}{suffix}"
                shapes["weight_ih" + s] = (4 * H, fan_in)
                shapes["weight_hh" + s] = (4 * H, out)
                if self.bias:
                    shapes["bias_ih" + s] = (4 * H,)
                    shapes["bias_hh" + s] = (4 * H,)
                if self.proj_size:
                    shapes["weight_hr" + s] = (self.proj_size, H)
        return shapes

    def _build(self):
        self._core = _core.Core(self.input_size, self.hidden_size, self.num_layers, self.bias,
                                self.bidirectional, self.proj_size, list(self._weights.values()))

    # ------------------------------------------------------------ weights
    def state_dict(self):
        """The weights as float32 NumPy arrays under torch's key names (copies)."""
        return {k: v.copy() for k, v in self._weights.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Loads weights from a mapping of torch's key names to array-likes.

        strict=True (like torch): missing or unexpected keys raise KeyError.
        A wrong shape raises ValueError naming the key. Returns (missing, unexpected).
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        shapes = self._expected_shapes()
        missing = [k for k in shapes if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in shapes]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(map(str, unexpected)))
            raise KeyError("state_dict does not match " + repr(self) + ": " + "; ".join(parts))
        new = dict(self._weights)
        for key, shape in shapes.items():
            if key not in state_dict:
                continue
            arr = _float_array(state_dict[key], f"state_dict[{key!r}]")
            if arr.shape != shape:
                raise ValueError(f"state_dict[{key!r}] has shape {tuple(arr.shape)}, "
                                 f"expected {shape} for {self!r}")
            new[key] = np.array(arr, dtype=np.float32, order="C")  # our own copy
        self._weights = new
        self._build()
        return missing, unexpected

    def __reduce__(self):
        # pickle, copy and deepcopy (which torch's modules support): the
        # configuration and the weights; the C model is built anew from them
        return _rebuild, (type(self), self.config, self._weights)

    @classmethod
    def from_state_dict(cls, state_dict, prefix="", batch_first=False):
        """Builds an LSTM whose config is inferred from the shapes in state_dict.

        prefix selects one LSTM when the dict holds several ("encoder." for
        keys like "encoder.weight_ih_l0"); nn.LSTMCell keys load as one layer.
        """
        from . import detect
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        _, cfg = detect.infer_config(state_dict, prefix)
        weights = detect.lstm_state_dict(state_dict, prefix)
        model = cls(batch_first=batch_first, **cfg)
        model.load_state_dict(weights, strict=True)
        return model

    def save(self, path):
        """Writes this model to one self-describing file (see lstm_infer.load)."""
        from .modelfile import save_model
        save_model(self, path)

    # ------------------------------------------------------------ forward
    # __call__ (in _core.Module, documented there) takes the common call to C
    # directly and hands every other one to _call

    def _call(self, input, hx=None, lengths=None):
        """The general path of __call__: converts and checks, then runs."""
        if isinstance(input, (list, tuple)):
            return self._call_list(input, hx, lengths)
        x = _float_array(input, "input")
        if x.ndim == 2:
            if lengths is not None:
                raise ValueError("lengths needs batched input (3-D); input is unbatched 2-D")
            h0c0 = self._check_hx(hx, 1, unbatched=True)
            out, (h, c) = self._run(x[:, None, :], None, h0c0, batch_first=False)
            return out[:, 0, :], (h[:, 0, :], c[:, 0, :])
        if x.ndim != 3:
            raise ValueError(f"input must be 3-D (seq, batch, feature) or 2-D unbatched "
                             f"(seq, feature), got shape {x.shape}")
        B = x.shape[0] if self.batch_first else x.shape[1]
        return self._run(x, lengths, self._check_hx(hx, B), batch_first=self.batch_first)

    def _call_list(self, seqs, hx, lengths):
        if lengths is not None:
            raise ValueError("lengths must not be given with a list of sequences "
                             "(each array's own length is used)")
        if len(seqs) == 0:
            raise ValueError("input is an empty list of sequences")
        arrays = [_float_array(s, f"input[{i}]") for i, s in enumerate(seqs)]
        for i, a in enumerate(arrays):
            if a.ndim != 2 or a.shape[1] != self.input_size:
                raise ValueError(f"input[{i}] must have shape (length, {self.input_size}), "
                                 f"got {a.shape}")
        lens = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        T = int(lens.max())
        if T == 0:
            raise ValueError("every sequence in the list is empty")
        x = np.zeros((T, len(arrays), self.input_size), np.float32)
        for b, a in enumerate(arrays):
            x[: a.shape[0], b] = a
        out, state = self._run(x, lens, self._check_hx(hx, len(arrays)), batch_first=False)
        return [out[: lens[b], b].copy() for b in range(len(arrays))], state

    def _check_hx(self, hx, B, unbatched=False):
        if hx is None:
            return None, None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h_0, c_0)")
        core = self._core
        slots = core.num_layers * core.directions
        h_0 = self._check_state(hx[0], "h_0", slots, B, core.out_size, unbatched)
        c_0 = self._check_state(hx[1], "c_0", slots, B, core.hidden_size, unbatched)
        return h_0, c_0

    @staticmethod
    def _check_state(value, name, slots, B, width, unbatched):
        arr = _float_array(value, name)
        want = (slots, width) if unbatched else (slots, B, width)
        if arr.shape != want:
            what = "proj_size or hidden_size" if name == "h_0" else "hidden_size"
            batch = "" if unbatched else "batch, "
            raise ValueError(f"{name} must have shape {want} (num_layers*num_directions, "
                             f"{batch}{what}), got {arr.shape}")
        if unbatched:
            arr = arr[:, None, :]
        return np.ascontiguousarray(arr)

    def _check_lengths(self, lengths, T, B):
        arr = _to_numpy(lengths, "lengths")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
        if arr.ndim != 1 or arr.shape[0] != B:
            raise ValueError(f"lengths must be a 1-D array of {B} entries (one per sequence), "
                             f"got shape {arr.shape}")
        if B and (arr.min() < 0 or arr.max() > T):
            bad = int(arr[(arr < 0) | (arr > T)][0])
            raise ValueError(f"lengths must lie in [0, {T}] (the sequence length), got {bad}")
        return np.ascontiguousarray(arr, dtype=np.int64)

    def _run(self, x, lengths, h0c0, batch_first):
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, expected input_size = "
                             f"{self.input_size}")
        if batch_first:
            x = x.transpose(1, 0, 2)
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise ValueError("input has sequence length 0; it must be at least 1")
        if B == 0:
            raise ValueError("input has batch size 0; it must be at least 1")
        # the C core takes any strides in multiples of 4 bytes with a contiguous feature axis
        strides = x.strides
        if (strides[2] != 4 and x.shape[2] > 1) or strides[0] % 4 or strides[1] % 4:
            x = np.ascontiguousarray(x)
        lens = None if lengths is None else self._check_lengths(lengths, T, B)
        core = self._core  # one snapshot, so a concurrent load_state_dict cannot mix models
        if batch_first:
            output = np.empty((B, T, core.directions * core.out_size), np.float32)
            out_view = output.transpose(1, 0, 2)
        else:
            output = out_view = np.empty((T, B, core.directions * core.out_size), np.float32)
        slots = core.num_layers * core.directions
        h_n = np.empty((slots, B, core.out_size), np.float32)
        c_n = np.empty((slots, B, core.hidden_size), np.float32)
        core.forward(x, lens, h0c0[0], h0c0[1], out_view, h_n, c_n)
        return output, (h_n, c_n)

    forward = _core.Module.__call__
