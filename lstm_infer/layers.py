"""The layers around the recurrent ones, as torch.nn has them, on NumPy arrays:
Embedding, Linear, LayerNorm, ReLU, Tanh, Sigmoid, Softmax, LogSoftmax, Dropout,
and Readout (how a Sequential turns per-step outputs into one vector per sequence).

Each has torch's constructor, eval-mode semantics, state_dict / load_state_dict
under torch's key names, and a call on NumPy arrays (or torch tensors) returning
float32 arrays. The work is vectorised NumPy: no Python loop over tokens or steps.
"""
import numbers

import numpy as np

from . import _core, detect
from .pipeline import ARGS
from .model import _as_bool, _as_int, _check_mapping, _float_array, _to_numpy

__all__ = ["Embedding", "Linear", "LayerNorm", "ReLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax",
           "Dropout", "Readout", "READOUTS", "LAYERS"]

# steps: every step; last: the output at each sequence's last valid step; final: the
# last recurrent layer's final hidden state, directions concatenated; mean, max: over
# each sequence's valid steps
READOUTS = ("steps", "last", "final", "mean", "max")


class _Module:
    """What every layer here shares: kind, config, weights as attributes under
    torch's key names (weight, bias; None where absent, as in torch)."""

    kind = None
    _args = ()  # the constructor arguments, in torch's order

    def _expected_shapes(self):
        return {}

    @property
    def config(self):
        """The constructor arguments, as recorded in model files."""
        return {k: getattr(self, k) for k in self._args}

    def __repr__(self):
        return f"{self.kind}(" + ", ".join(f"{k}={v!r}" for k, v in self.config.items()) + ")"

    def state_dict(self):
        """The weights as float32 NumPy arrays under torch's key names (copies)."""
        return {k: getattr(self, k).copy() for k in self._expected_shapes()}

    def load_state_dict(self, state_dict, strict=True):
        """Loads weights from a mapping of torch's key names to array-likes; as
        torch: strict=True refuses missing and unexpected keys (KeyError), a wrong
        shape is a ValueError naming the key. Returns (missing, unexpected)."""
        missing, unexpected, switch = self._staged_load(state_dict, strict)
        switch()
        return missing, unexpected

    def _staged_load(self, state_dict, strict=True, label=""):
        """load_state_dict's checks and copies; returns (missing, unexpected,
        switch), where switch() installs them and cannot fail. label: what errors
        put before a key."""
        _check_mapping(state_dict, "load_state_dict")
        shapes = self._expected_shapes()
        missing = [k for k in shapes if k not in state_dict]
        unexpected = [str(k) for k in state_dict.keys() if k not in shapes]
        if strict and (missing or unexpected):
            parts = ([f"missing keys: {', '.join(missing)}"] if missing else []) + \
                    ([f"unexpected keys: {', '.join(unexpected)}"] if unexpected else [])
            raise KeyError(f"state_dict does not match {self!r}: " + "; ".join(parts))
        new = {}
        for key, shape in shapes.items():
            if key in state_dict:
                arr = _float_array(state_dict[key], f"state_dict[{label + key!r}]")
                if arr.shape != shape:
                    raise ValueError(f"state_dict[{label + key!r}] has shape {tuple(arr.shape)}, expected "
                                     f"{shape} for {self!r}")
                new[key] = np.array(arr, dtype=np.float32, order="C")  # our own copy
        return missing, unexpected, lambda: self.__dict__.update(new)

    def _init_weights(self, fill):
        """Every weight from fill(key, shape)."""
        for key, shape in self._expected_shapes().items():
            setattr(self, key, fill(key, shape))

    def forward(self, *args, **kwargs):
        return self(*args, **kwargs)


class Embedding(_Module):
    """torch.nn.Embedding: ids (any shape, any integer dtype) -> (*ids.shape, embedding_dim).

    An id outside [0, num_embeddings) raises IndexError naming it. padding_idx
    (negative counts from the end, as in torch) only matters to training in torch
    (its row starts at zero and gets no gradient): a loaded row is used as stored.
    """

    kind = "Embedding"
    _args = ARGS[kind]

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None):
        self.num_embeddings = _as_int(num_embeddings, "num_embeddings", 1)
        self.embedding_dim = _as_int(embedding_dim, "embedding_dim", 1)
        if padding_idx is not None:
            padding_idx = _as_int(padding_idx, "padding_idx", -self.num_embeddings)
            if padding_idx >= self.num_embeddings:
                raise ValueError(f"padding_idx must be within num_embeddings, got {padding_idx}")
            padding_idx %= self.num_embeddings  # torch stores it non-negative
        self.padding_idx = padding_idx
        rng = np.random.default_rng()  # torch's default initialisation: N(0, 1)
        self._init_weights(lambda key, shape: rng.standard_normal(shape).astype(np.float32))
        if padding_idx is not None:
            self.weight[padding_idx] = 0.0

    def _expected_shapes(self):
        return detect.other_shapes(self.kind, self.config)

    def __call__(self, input):
        return np.take(self.weight, check_ids(input, self.num_embeddings), axis=0)

    def __repr__(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad})"


def check_ids(value, num_embeddings, what="input"):
    """value as an integer array of token ids in [0, num_embeddings): TypeError for
    another dtype, IndexError naming the first id out of range."""
    ids = _to_numpy(value, what)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer token ids (the model starts with an Embedding), "
                        f"got dtype {ids.dtype}")
    if ids.size:
        lo, hi = ids.min(), ids.max()
        if lo < 0 or hi >= num_embeddings:
            bad = lo if lo < 0 else hi
            raise IndexError(f"token id {int(bad)} is out of range for an Embedding of "
                             f"{num_embeddings} entries (ids must lie in [0, {num_embeddings}))")
    return ids


def _width(x, want, layer):
    if x.ndim == 0 or x.shape[-1] != want:
        raise ValueError(f"input has shape {x.shape}; {layer!r} takes (..., {want})")


def _frozen(arr):
    """arr as a read-only float32 array of our own (arr itself when it is one already)."""
    if isinstance(arr, np.ndarray) and arr.dtype == np.float32 and not arr.flags.writeable and arr.base is None:
        return arr
    out = np.array(arr, dtype=np.float32)
    out.flags.writeable = False
    return out


class Linear(_Module):
    """torch.nn.Linear: (..., in_features) -> (..., out_features), y = x W^T + b."""

    kind = "Linear"

    def __init__(self, in_features, out_features, bias=True):
        self.in_features = _as_int(in_features, "in_features", 1)
        self.out_features = _as_int(out_features, "out_features", 1)
        self.bias = None
        k = 1.0 / np.sqrt(self.in_features)  # torch's default initialisation range
        rng = np.random.default_rng()
        shapes = detect.other_shapes(self.kind, dict(in_features=self.in_features,
                                                     out_features=self.out_features,
                                                     bias=_as_bool(bias, "bias", ints=True)))
        for key, shape in shapes.items():
            setattr(self, key, rng.uniform(-k, k, shape).astype(np.float32))

    @property
    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    def _expected_shapes(self):
        return detect.other_shapes(self.kind, self.config)

    def _dense(self):
        """The C layer of the current weight and bias (rebuilt when either is
        replaced; change weights by assigning arrays or with load_state_dict).
        The C layer holds a copy, so the arrays it was built from become read-only
        copies of their own: an in-place edit raises instead of being ignored."""
        weight, bias = self.__dict__["weight"], self.__dict__["bias"]  # one pair, read once
        cached = self.__dict__.get("_dense_cache")
        if cached is None or cached[0] is not weight or cached[1] is not bias:
            weight, bias = _frozen(weight), None if bias is None else _frozen(bias)
            cached = (weight, bias, _core.Dense(weight, bias))
            self.__dict__.update(weight=weight, bias=bias, _dense_cache=cached)
        return cached[2]

    def __getstate__(self):  # pickle and copy: the C layer is rebuilt on first use
        return {k: v for k, v in self.__dict__.items() if k != "_dense_cache"}

    def __call__(self, input):
        x = _float_array(input, "input")
        _width(x, self.in_features, self)
        # every leading axis as rows of one C call, whose rows are computed one by
        # one: a row's result does not depend on the rows around it (NumPy's BLAS
        # may round a row differently in a larger product), so batching, bucketing
        # and stream chunks change no bit
        rows = x.reshape(-1, self.in_features)
        if rows.ndim != 2 or not rows.flags.c_contiguous:
            rows = np.ascontiguousarray(rows)
        return self._dense().forward(rows).reshape(x.shape[:-1] + (self.out_features,))

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")


class LayerNorm(_Module):
    """torch.nn.LayerNorm over the last len(normalized_shape) axes:
    y = (x - mean) / sqrt(var + eps) * weight + bias (var biased, as torch)."""

    kind = "LayerNorm"

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        try:
            shape = tuple(_as_int(n, "normalized_shape", 1) for n in normalized_shape)
        except TypeError:
            raise TypeError(f"normalized_shape must be an int or a sequence of ints, "
                            f"got {normalized_shape!r}") from None
        if not shape:
            raise ValueError("normalized_shape must not be empty")
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps >= 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.normalized_shape = shape
        self.eps = float(eps)
        self.elementwise_affine = _as_bool(elementwise_affine, "elementwise_affine", ints=True)
        # the argument: without elementwise_affine there is no tensor
        self._bias = _as_bool(bias, "bias", ints=True)
        self.weight = self.bias = None
        for key, shape_ in self._expected_shapes().items():  # torch's start: ones and zeros
            setattr(self, key, (np.ones if key == "weight" else np.zeros)(shape_, np.float32))

    @property
    def config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self._bias}

    def _expected_shapes(self):
        return detect.other_shapes(self.kind, self.config)

    def __call__(self, input):
        x = _float_array(input, "input")
        n = len(self.normalized_shape)
        if x.shape[x.ndim - n:] != self.normalized_shape or x.ndim < n:
            raise ValueError(f"input has shape {x.shape}; {self!r} takes (..., "
                             f"{', '.join(map(str, self.normalized_shape))})")
        axes = tuple(range(x.ndim - n, x.ndim))
        # in float64: a float32 mean of a row of one value is a few ulp off it, and that
        # error over sqrt(eps) gave up to |weight| where torch gives the bias exactly
        weight, bias = self.weight, self.bias  # one pair, read once (another thread may reload)
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=axes, keepdims=True)
        d = x64 - mean
        var = np.mean(d * d, axis=axes, keepdims=True)
        y = d / np.sqrt(var + np.float64(np.float32(self.eps)))
        if weight is not None:
            y *= weight
        if bias is not None:
            y += bias
        return y.astype(np.float32, copy=False)

    def __repr__(self):
        extra = "" if self.elementwise_affine else ", elementwise_affine=False"
        extra += ", bias=False" if self.elementwise_affine and self.bias is None else ""
        return f"LayerNorm({self.normalized_shape}, eps={self.eps}{extra})"


class _Pointwise(_Module):
    """A layer without weights applied to every element (or along dim)."""

    def __call__(self, input):
        return self._apply(_float_array(input, "input"))


class ReLU(_Pointwise):
    """torch.nn.ReLU: max(x, 0) (NaN stays NaN). inplace is accepted, as torch's, and
    has no effect: the result is a new array."""

    kind = "ReLU"

    def __init__(self, inplace=False):
        pass

    def _apply(self, x):
        return np.maximum(x, np.float32(0))


class Tanh(_Pointwise):
    """torch.nn.Tanh."""

    kind = "Tanh"

    def _apply(self, x):
        return np.tanh(x)


class Sigmoid(_Pointwise):
    """torch.nn.Sigmoid: 1 / (1 + exp(-x)), without overflow for large |x|."""

    kind = "Sigmoid"

    def _apply(self, x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32, copy=False)


class _AlongDim(_Pointwise):
    _args = ("dim",)  # ARGS["Softmax"] and ARGS["LogSoftmax"]

    def __init__(self, dim=-1):
        if dim is None:
            raise ValueError(f"{self.kind} needs dim (torch's implicit choice is deprecated); "
                             f"the features are dim=-1")
        self.dim = _as_int(dim, "dim", -(1 << 30))

    def _axis(self, x):
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"{self!r}: dim {self.dim} is out of range for input of shape {x.shape}")
        return self.dim

    def _shifted(self, x):
        # x - max along dim: exp cannot overflow (torch's stable form)
        return x - x.max(axis=self._axis(x), keepdims=True)


class Softmax(_AlongDim):
    """torch.nn.Softmax(dim=-1): exp(x) / sum(exp(x)) along dim, computed stably."""

    kind = "Softmax"

    def _apply(self, x):
        e = np.exp(self._shifted(x))
        return e / e.sum(axis=self.dim, keepdims=True)


class LogSoftmax(_AlongDim):
    """torch.nn.LogSoftmax(dim=-1): x - logsumexp(x) along dim, computed stably."""

    kind = "LogSoftmax"

    def _apply(self, x):
        s = self._shifted(x)
        return s - np.log(np.exp(s).sum(axis=self.dim, keepdims=True))


class Dropout(_Pointwise):
    """torch.nn.Dropout in eval mode: the identity (p is kept for the record; inplace
    is accepted, as torch's)."""

    kind = "Dropout"
    _args = ARGS[kind]

    def __init__(self, p=0.5, inplace=False):
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        self.p = float(p)

    def _apply(self, x):
        return x


class Readout(_Module):
    """Where a Sequential turns the per-step outputs of its recurrent layers into what
    the next layers see, with each sequence's length respected (see READOUTS):
    "steps" keeps every step (later layers act on each step; positions past a
    length are 0 in the result), "last" takes the output at each sequence's last
    valid step, "final" the last recurrent layer's final hidden state (torch's
    h_n[-1], or cat(h_n[-2], h_n[-1]) when bidirectional), "mean" and "max" reduce
    over the valid steps. A sequence of length 0 gives zeros (h_0, zeros, from "final").
    """

    kind = "Readout"
    _args = ARGS[kind]

    def __init__(self, mode):
        if mode not in READOUTS:
            raise ValueError(f"unknown readout {mode!r}; readouts: {', '.join(READOUTS)}")
        self.mode = mode

    def __call__(self, output, state=None, lengths=None, batch_first=False):
        """output: the last recurrent layer's (T, B, F) ((B, T, F) with batch_first)
        output, zero past each length; state its h_n (LSTM: (h_n, c_n)); lengths (B,)
        int64 or None (every sequence T long). Returns (B, F), or output for "steps"."""
        if self.mode == "steps":
            return output
        if self.mode == "final":
            h_n = state[0] if isinstance(state, tuple) else state
            width = output.shape[-1]
            if h_n.shape[-1] == width:  # one direction
                return h_n[-1].copy()
            return np.concatenate((h_n[-2], h_n[-1]), axis=-1)
        t_axis = 1 if batch_first else 0
        T, B = output.shape[t_axis], output.shape[1 - t_axis]
        if self.mode == "last":
            last = np.full(B, T - 1) if lengths is None else np.maximum(lengths - 1, 0)
            b = np.arange(B)
            y = output[b, last] if batch_first else output[last, b]
            if lengths is not None:
                y[lengths == 0] = 0.0  # a length-0 sequence has no last step
            return y
        if self.mode == "mean":
            # the recurrent layers write 0 past each length: the sum is over valid steps.
            # cumsum adds step after step whatever the layout (sum pairs them up along a
            # contiguous axis, so a sequence alone and in a batch got different bits)
            total = np.cumsum(output, axis=t_axis, dtype=np.float32)[(slice(None),) * t_axis + (-1,)] \
                if T else output.sum(axis=t_axis)
            if lengths is None:
                return total / np.float32(T)
            return total / np.maximum(lengths, 1).astype(np.float32)[:, None]
        # max
        if lengths is None:
            return output.max(axis=t_axis)
        pad = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
        masked = output.copy()
        masked[pad.T if batch_first else pad] = -np.inf
        y = masked.max(axis=t_axis)
        y[lengths == 0] = 0.0
        return y

    def __repr__(self):
        return f"Readout({self.mode!r})"


# every layer class here by the kind a model file records
LAYERS = {cls.kind: cls for cls in (Embedding, Linear, LayerNorm, ReLU, Tanh, Sigmoid, Softmax,
                                    LogSoftmax, Dropout, Readout)}
