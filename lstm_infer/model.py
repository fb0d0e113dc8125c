"""The recurrent modules of torch.nn on NumPy arrays: LSTM, GRU, RNN and their cells.

Each class has torch's signature and eval-mode semantics. All checking and
conversion happens here, in plain Python, so that errors are clear
exceptions; the numbers are computed by the C core (lstm_infer._core) with
the GIL released. One C engine serves every kind: only the cell differs.
"""
import numbers
import threading
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np

from . import _core, modelfile

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "MODULES"]

_NONLINEARITIES = {"tanh": _core.CELL_RNN_TANH, "relu": _core.CELL_RNN_RELU}


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
    """value as float32 in native byte order and aligned: what C may read in place."""
    if type(value) is np.ndarray and value.dtype == np.float32 and value.flags.aligned:
        return value  # the common case (np.float32 is native order), kept cheap
    arr = _to_numpy(value, what)
    if arr.dtype.kind != "f":
        raise TypeError(f"{what} must have a floating-point dtype (float16/32/64), "
                        f"got {arr.dtype}")
    if arr.dtype == np.float32 and arr.flags.aligned:
        return arr
    return arr.astype(np.float32)  # a fresh native, aligned copy (big-endian input too)


def _as_int(value, name, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} = {value} is too large (at most {maximum})")
    return value


def _as_bool(value, name, ints=False):
    # bool("False") is True: a string here would silently flip the flag. torch refuses
    # a layer's batch_first and bias that are not bools; with ints, 0 and 1 pass too
    # (torch takes any value for bidirectional, a cell's bias and a Linear's).
    if isinstance(value, (bool, np.bool_)) or ints and isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def _nonlinearity(value):
    if value not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {value!r}")
    return value


# weights= names -> the C core's weight types
WEIGHT_TYPES = {"float32": _core.WEIGHTS_F32, "float16": _core.WEIGHTS_F16,
                "int8": _core.WEIGHTS_I8}


def _weight_type(value):
    if value not in WEIGHT_TYPES:
        raise ValueError(f"weights must be one of {', '.join(map(repr, WEIGHT_TYPES))}, "
                         f"got {value!r}")
    return value


def _core_args_of(kind, config):
    """The C core's shape arguments (cell, input_size, hidden_size, num_layers, bias,
    bidirectional, proj_size) of the module kind(**config)."""
    base = kind[:-4] if kind.endswith("Cell") else kind
    cell = {"LSTM": _core.CELL_LSTM, "GRU": _core.CELL_GRU}.get(base)
    if cell is None:
        cell = _NONLINEARITIES[config.get("nonlinearity", "tanh")]
    return (cell, config["input_size"], config["hidden_size"], config.get("num_layers", 1),
            config.get("bias", True), config.get("bidirectional", False), config.get("proj_size", 0))


_STORAGE_NAMES = {t: name for name, t in WEIGHT_TYPES.items()}


def weight_storage(kind, config, weights):
    """How the C core stores each weight array of kind(**config, weights=weights):
    "float32", "float16" or "int8" per array, in state_dict order
    (lstm_weight_storage). ValueError when the storage does not apply."""
    types = _core.weight_storage(*_core_args_of(kind, config), WEIGHT_TYPES[_weight_type(weights)])
    return [_STORAGE_NAMES[t] for t in types]


modelfile.storage_rule = weight_storage  # model files check reduced weights against it


def _as_stored(stored, copy):
    """The arrays of a module's _stored as reduced_state_dict names them: each weight,
    and each int8 scale under key + "_scale" (copies if copy)."""
    weights, scales, _ = stored
    out = {k: v.copy() if copy else v for k, v in weights.items()}
    out.update({k + "_scale": v.copy() if copy else v for k, v in scales.items()})
    return out


def _dequantized(stored):
    """float32 copies of the arrays of a module's _stored, as the C core computes with them."""
    weights, scales, _ = stored
    out = {}
    for k, v in weights.items():
        if k in scales:  # int8: q * scale, the float32 product the C core forms
            out[k] = v.astype(np.float32) * scales[k][:, None]
        else:
            out[k] = v.astype(np.float32)  # a copy; float16 -> float32 is exact
    return out


_UNSET = threading.local()  # .on: modules made now skip their random initial weights


@contextmanager
def _weights_set_later():
    """Modules constructed inside get no random initial weights and no C core: the
    caller installs the real ones at once, so a load holds one model's memory, not two."""
    _UNSET.on = True
    try:
        yield
    finally:
        _UNSET.on = False


def _rebuild(cls, config, weights, weight_type="float32", scales=None):
    """A module from what __reduce__ gives (for pickle and copy): the stored
    arrays, reduced ones as they are (no second rounding)."""
    with _weights_set_later():
        model = cls(**config)
    if weight_type == "float32":
        model.load_state_dict(weights)
    else:
        model._set_weights(dict(weights), dict(scales or {}), weight_type)
    return model


class _Weights:
    """What every module shares: weights under torch's key names, a C core built
    from them, state_dict / load_state_dict / from_state_dict / save / pickle.

    Weight storage (the `weights` attribute): "float32" (default, torch's
    numbers exactly), or opt-in "float16" / "int8", which store weight_ih,
    weight_hh and weight_hr reduced (biases stay float32) for fewer bytes per
    step -- much faster at batch 1 -- at a small loss of accuracy:
      "float16": the matrices rounded to half precision (nearest even), the
        arithmetic float32; the results are exactly those of a float32 model
        holding the rounded weights.
      "int8": weight_hh (what a step streams) as int8 in [-127, 127] with a
        float32 scale max|row| / 127 per output row (symmetric, like torch's
        and ONNX Runtime's dynamic quantization); each step quantizes h
        per sequence (dynamic) to int16 (max|h| / 32767; int8 there cost as
        much accuracy as weight_hh's rounding) and sums the products exactly.
        weight_ih and weight_hr are stored as float16: the input projection
        runs over all steps at once, where bytes do not bound it, and int8
        there doubled the error of a trained GRU. Needs proj_size (or
        hidden_size) <= 16384.
    state_dict() of a reduced model returns the dequantized float32 tensors
    (what the model computes with), so it loads into torch as usual.
    """

    kind = None          # the torch class name, also recorded in model files
    _gates = None        # 4 LSTM, 3 GRU, 1 RNN
    _accepts = ()        # detected kinds from_state_dict takes (besides kind)
    # (stored arrays, int8 scales, storage) of the current weights, replaced as one
    _stored = ({}, {}, "float32")
    _weights = property(lambda self: self._stored[0])
    _scales = property(lambda self: self._stored[1])
    weights = property(lambda self: self._stored[2],
                       doc='The weight storage: "float32", "float16" or "int8".')

    def _init_weights(self, weights="float32"):
        weight_type = _weight_type(weights)
        if getattr(_UNSET, "on", False):  # see _weights_set_later
            self._storage(weight_type)    # the configuration checked as the core checks it
            self._stored = ({}, {}, weight_type)
            return
        rng = np.random.default_rng()
        k = 1.0 / np.sqrt(self.hidden_size)  # torch's default initialisation range
        rand = {name: rng.uniform(-k, k, shape).astype(np.float32)
                for name, shape in self._expected_shapes().items()}
        self._set_weights(*self._reduce(rand, weight_type), weight_type)

    def _storage(self, weight_type):
        """Each weight array's storage type (the C core's choice) by key."""
        types = _core.weight_storage(*self._core_args(), WEIGHT_TYPES[weight_type])
        return dict(zip(self._expected_shapes(), types))

    def _core_args(self):
        return _core_args_of(self.kind, self.config)

    def _reduce(self, arrays, weight_type, label=""):
        """float32 arrays (some or all keys) -> (stored arrays, int8 scales by key)
        for weight_type: each reduced by the C core's own rounding to its storage.
        label: what errors put before a key (a Sequential's layer name and a dot)."""
        storage = self._storage(weight_type)
        stored, scales = {}, {}
        for key, arr in arrays.items():
            if storage[key] == _core.WEIGHTS_F32:
                stored[key] = arr
                continue
            try:
                stored[key], sc = _core.reduce_weight(storage[key], arr)
            except ValueError as e:
                raise ValueError(f"state_dict[{label + key!r}]: {e}") from None
            if sc is not None:
                scales[key] = sc
        return stored, scales

    def _set_weights(self, stored, scales, weight_type):
        """Builds the C core from stored arrays (in _expected_shapes' order), then
        switches to it: a failure leaves the module as it was."""
        self._staged_weights(stored, scales, weight_type)()

    def _staged_weights(self, stored, scales, weight_type):
        """Builds the C core from stored arrays; returns the switch to it, which
        cannot fail (a Sequential builds every layer's before it switches any)."""
        keys = list(self._expected_shapes())
        core = _core.Core(*self._core_args(), [stored[k] for k in keys], WEIGHT_TYPES[weight_type],
                          [scales.get(k) for k in keys] if scales else None)

        def switch():
            self._stored = (stored, scales, weight_type)  # one assignment: readers see one load's
            self._core = core
        return switch

    def reduced_state_dict(self):
        """The weights as the model stores them, under torch's key names (copies):
        float32, or for "float16" the matrices as float16, for "int8" weight_hh
        as int8 plus its float32 row scales under key + "_scale" (w ~
        scale[:, None] * q) and the other matrices as float16. Biases are float32.
        from_reduced_state_dict rebuilds the model from it bit for bit."""
        return _as_stored(self._stored, copy=True)  # read once: another thread may reload meanwhile

    @classmethod
    def from_reduced_state_dict(cls, config, reduced, weights):
        """The module of constructor arguments `config` with the stored weights
        `reduced` (as reduced_state_dict gives them) of storage `weights`."""
        weight_type = _weight_type(weights)
        with _weights_set_later():
            model = cls(**config)
        shapes = model._expected_shapes()
        int8 = [k for k, t in model._storage(weight_type).items() if t == _core.WEIGHTS_I8]
        want = set(shapes) | {k + "_scale" for k in int8}
        if set(reduced) != want:
            raise KeyError(f"reduced weights do not match {model!r} with weights="
                           f"{weight_type!r}: expected keys {sorted(want)}")
        # our own copies: the caller's arrays may change after this returns
        stored = {k: np.array(reduced[k]) for k in shapes}
        scales = {k: np.array(reduced[k + "_scale"]) for k in int8}
        storage = model._storage(weight_type)
        for k, shape in shapes.items():
            want = _core._STORAGE_DTYPES[storage[k]]  # the binding's own table
            if (stored[k].dtype != want if want != np.float32 else stored[k].dtype.kind != "f"):
                raise ValueError(f"reduced weights[{k!r}] must be {np.dtype(want).name} for weights="
                                 f"{weight_type!r}, got dtype {stored[k].dtype}")
            if stored[k].shape != shape:
                raise ValueError(f"reduced weights[{k!r}] has shape {stored[k].shape}, expected {shape}")
        for k in int8:
            sc = scales[k]
            if sc.dtype.kind != "f" or sc.shape != (shapes[k][0],):
                raise ValueError(f"reduced weights[{k + '_scale'!r}] must be floats of shape "
                                 f"{(shapes[k][0],)}, got dtype {sc.dtype}, shape {sc.shape}")
        model._set_weights(stored, scales, weight_type)
        return model

    def __repr__(self):
        defaults = self.__init__.__defaults__
        names = self.__init__.__code__.co_varnames[3:3 + len(defaults)]
        extra = "".join(f", {k}={getattr(self, k)!r}" for k, d in zip(names, defaults)
                        if getattr(self, k) != d)
        if self.weights != "float32":
            extra += f", weights={self.weights!r}"
        return f"{self.kind}({self.input_size}, {self.hidden_size}{extra})"

    def state_dict(self):
        """The weights as float32 NumPy arrays under torch's key names (copies);
        for reduced weights, the dequantized values the model computes with."""
        return _dequantized(self._stored)  # read once: another thread may reload meanwhile

    def load_state_dict(self, state_dict, strict=True, weights=None):
        """Loads weights from a mapping of torch's key names to array-likes.

        strict=True (like torch): missing or unexpected keys raise KeyError.
        A wrong shape raises ValueError naming the key. weights: the storage
        ("float32", "float16", "int8"; see the class docs), None to keep this
        module's; the given tensors are reduced to it (a weight the storage
        cannot hold raises ValueError naming the key). Returns (missing, unexpected).
        """
        missing, unexpected, switch = self._staged_load(state_dict, strict, weights)
        switch()
        return missing, unexpected

    def _staged_load(self, state_dict, strict=True, weights=None, label=""):
        """load_state_dict's checks and conversions and the new C core; returns
        (missing, unexpected, switch), where switch() installs them and cannot
        fail. label: what errors put before a key."""
        current = self._stored  # read once: another thread may reload meanwhile
        weight_type = current[2] if weights is None else _weight_type(weights)
        _check_mapping(state_dict, "load_state_dict")
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
        new = {}
        for key, shape in shapes.items():
            if key not in state_dict:
                continue
            arr = _float_array(state_dict[key], f"state_dict[{label + key!r}]")
            if arr.shape != shape:
                raise ValueError(f"state_dict[{label + key!r}] has shape {tuple(arr.shape)}, "
                                 f"expected {shape} for {self!r}")
            new[key] = np.array(arr, dtype=np.float32, order="C")  # our own copy
        if weight_type == current[2]:  # the weights not given stay as they are stored
            stored, scales = dict(current[0]), dict(current[1])
        else:  # ... or change storage with the rest
            stored, scales = self._reduce(_dequantized(current), weight_type, label)
        new_stored, new_scales = self._reduce(new, weight_type, label)
        stored.update(new_stored)
        scales.update(new_scales)
        return missing, unexpected, self._staged_weights(stored, scales, weight_type)

    def __reduce__(self):
        # pickle, copy and deepcopy (which torch's modules support): the
        # configuration and the weights as stored; the C model is built anew from them
        weights, scales, weight_type = self._stored  # read once: another thread may reload meanwhile
        if weight_type == "float32":
            return _rebuild, (type(self), self.config, weights)
        return _rebuild, (type(self), self.config, weights, weight_type, scales)

    @classmethod
    def from_state_dict(cls, state_dict, prefix="", **overrides):
        """Builds the module with its config inferred from the shapes in state_dict.

        prefix selects one module when the dict holds several ("encoder." for
        keys like "encoder.weight_ih_l0"). overrides set what shapes do not
        record: batch_first, dropout, and nonlinearity for RNN (default "tanh"),
        and weights ("float32", "float16" or "int8": the storage, see the class docs).
        """
        from . import detect
        _check_mapping(state_dict, "from_state_dict")
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        kinds = (cls.kind,) + cls._accepts
        try:
            spec = detect.find_one(state_dict, prefix, kinds=kinds)
        except ValueError as exc:
            try:  # another kind of module there: name the class that builds it
                other = detect.find_one(state_dict, prefix)
            except ValueError:
                raise exc from None
            where = f"prefix {other.prefix!r}" if other.prefix else "the top level"
            raise ValueError(f"the state dict holds an nn.{other.kind} at {where}, not an "
                             f"nn.{cls.kind}; build it with lstm_infer.{other.kind}"
                             f".from_state_dict") from None
        weights = detect.module_state_dict(state_dict, spec)
        if spec.kind.endswith("Cell") and not cls.kind.endswith("Cell"):
            weights = {k + "_l0": v for k, v in weights.items()}  # a cell is a one-layer module
        config = {k: v for k, v in spec.config.items() if k in cls._config_keys()}
        weight_type = _weight_type(overrides.pop("weights", "float32"))
        config.update(overrides)
        with _weights_set_later():
            model = cls(**config)
        model.load_state_dict(weights, strict=True, weights=weight_type)
        return model

    @classmethod
    def _config_keys(cls):
        code = cls.__init__.__code__
        return code.co_varnames[1:code.co_argcount]

    def save(self, path):
        """Writes this module to one self-describing file (see lstm_infer.load); a
        reduced model's file holds its weights as stored (reduced_state_dict), so
        the model loaded from it computes the same bits."""
        stored = self._stored  # read once: another thread may reload meanwhile
        modelfile.write_model(path, _as_stored(stored, copy=False), self.config, self.kind, stored[2])

    def release_memory(self):
        """Frees the scratch memory kept between calls (it is kept so that
        repeated calls touch no fresh pages; a call needing under a quarter of
        a kept block over 1 MiB also frees it)."""
        self._core.release_memory()


def _check_mapping(state_dict, what):
    if isinstance(state_dict, Mapping) or (hasattr(state_dict, "keys")
                                           and hasattr(state_dict, "__getitem__")):
        return
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        raise TypeError(f"{what}: state_dict must be a mapping of names to tensors, got a "
                        f"{type(state_dict).__name__} module: pass module.state_dict()")
    raise TypeError(f"{what}: state_dict must be a mapping of names to tensors, "
                    f"got {type(state_dict).__name__}")


class _Layer(_Weights, _core.Module):
    """A stack of recurrent layers over sequences: nn.LSTM, nn.GRU, nn.RNN."""

    def _init_layer(self, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                    bidirectional):
        self.input_size = _as_int(input_size, "input_size", 1, _core.MAX_FEATURES)
        self.hidden_size = _as_int(hidden_size, "hidden_size", 1, _core.MAX_FEATURES)
        self.num_layers = _as_int(num_layers, "num_layers", 1, _core.MAX_LAYERS)
        if (isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real)
                or not 0.0 <= float(dropout) <= 1.0):
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.bias = _as_bool(bias, "bias")
        self.batch_first = _as_bool(batch_first, "batch_first")
        self.dropout = float(dropout)
        self.bidirectional = _as_bool(bidirectional, "bidirectional", ints=True)

    # ------------------------------------------------------------ config
    proj_size = 0

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def out_size(self):
        """Width of h: proj_size when set, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def config(self):
        return {k: getattr(self, k) for k in self._config_keys()}

    def _expected_shapes(self):
        """torch's state_dict keys in torch's order, with their shapes."""
        GH, out, D = self._gates * self.hidden_size, self.out_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            fan_in = self.input_size if layer == 0 else D * out
            for suffix in ("", "_reverse")[:D]:
                s = f"_l{layer}{suffix}"
                shapes["weight_ih" + s] = (GH, fan_in)
                shapes["weight_hh" + s] = (GH, out)
                if self.bias:
                    shapes["bias_ih" + s] = (GH,)
                    shapes["bias_hh" + s] = (GH,)
                if self.proj_size:
                    shapes["weight_hr" + s] = (self.proj_size, self.hidden_size)
        return shapes

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
            state = self._check_hx(hx, 1, unbatched=True)
            out, h_n = self._run(x[:, None, :], None, state, batch_first=False)
            if isinstance(h_n, tuple):
                return out[:, 0, :], (h_n[0][:, 0, :], h_n[1][:, 0, :])
            return out[:, 0, :], h_n[:, 0, :]
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
        """(h_0, c_0) checked and converted; c_0 is None for GRU and RNN."""
        if hx is None:
            return None, None
        core = self._core
        slots = core.num_layers * core.directions
        if core.has_c:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be a tuple (h_0, c_0)")
            h_0 = _check_state(hx[0], "h_0", slots, B, core.out_size, unbatched,
                               "proj_size or hidden_size")
            c_0 = _check_state(hx[1], "c_0", slots, B, core.hidden_size, unbatched, "hidden_size")
            return h_0, c_0
        if isinstance(hx, (tuple, list)):
            raise TypeError(f"{self.kind} takes hx as one array h_0, not a "
                            f"{type(hx).__name__} (only the LSTM has a cell state)")
        return _check_state(hx, "h_0", slots, B, core.hidden_size, unbatched, "hidden_size"), None

    def _check_lengths(self, lengths, T, B, x_shape):
        arr = np.array(_to_numpy(lengths, "lengths"))  # our own copy: read once, used by C
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
        hint = ""
        if not self.batch_first and x_shape[0] != x_shape[1] and arr.ndim == 1 \
                and arr.shape[0] == x_shape[0]:
            hint = (f" (the input's first axis has {x_shape[0]} entries, like lengths: if it is "
                    f"batch-first, build the model with batch_first=True)")
        if arr.ndim != 1 or arr.shape[0] != B:
            raise ValueError(f"lengths must be a 1-D array of {B} entries (one per sequence), "
                             f"got shape {arr.shape}{hint}")
        if B and (arr.min() < 0 or arr.max() > T):
            bad = int(arr[(arr < 0) | (arr > T)][0])
            raise ValueError(f"lengths must lie in [0, {T}] (the sequence length), "
                             f"got {bad}{hint}")
        return np.ascontiguousarray(arr, dtype=np.int64)

    def _run(self, x, lengths, state, batch_first):
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, expected input_size = "
                             f"{self.input_size}")
        shape = x.shape
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
        lens = None if lengths is None else self._check_lengths(lengths, T, B, shape)
        core = self._core  # one reference for the whole call: a concurrent reload cannot free it
        if batch_first:
            output = np.empty((B, T, core.directions * core.out_size), np.float32)
            out_view = output.transpose(1, 0, 2)
        else:
            output = out_view = np.empty((T, B, core.directions * core.out_size), np.float32)
        slots = core.num_layers * core.directions
        h_n = np.empty((slots, B, core.out_size), np.float32)
        if not core.has_c:
            core.forward(x, lens, state[0], None, out_view, h_n, None)
            return output, h_n
        c_n = np.empty((slots, B, core.hidden_size), np.float32)
        core.forward(x, lens, state[0], state[1], out_view, h_n, c_n)
        return output, (h_n, c_n)

    forward = _core.Module.__call__

    def stream(self, batch_size=1):
        """A Stream over batch_size live sequences that carries the state
        between calls: st(x) steps it (see lstm_infer.stream.Stream).
        Uni-directional models only."""
        from .stream import Stream
        return Stream(self, batch_size)


def _check_state(value, name, slots, B, width, unbatched, what):
    arr = _float_array(value, name)
    want = (slots, width) if unbatched else (slots, B, width)
    if arr.shape != want:
        batch = "" if unbatched else "batch, "
        raise ValueError(f"{name} must have shape {want} (num_layers*num_directions, "
                         f"{batch}{what}), got {arr.shape}")
    if unbatched:
        arr = arr[:, None, :]
    return np.ascontiguousarray(arr)


class LSTM(_Layer):
    """torch.nn.LSTM for inference, on NumPy arrays.

    LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
         dropout=0.0, bidirectional=False, proj_size=0, *, weights="float32")
    output, (h_n, c_n) = lstm(x, hx=None, lengths=None)

    Weights start random like torch's (uniform in +-1/sqrt(hidden_size)); load
    trained ones with load_state_dict or build with LSTM.from_state_dict.
    dropout is accepted and ignored, as in torch's eval() mode. weights picks
    the storage: "float32", or "float16" / "int8" for speed at batch 1 (see
    the weights notes of lstm_infer.model._Weights).
    """

    kind = "LSTM"
    _gates = 4
    _accepts = ("LSTMCell",)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, weights="float32"):
        self._init_layer(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)
        self.proj_size = _as_int(proj_size, "proj_size", 0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size ({self.proj_size}) must be smaller than "
                             f"hidden_size ({self.hidden_size})")
        self._init_weights(weights)


class GRU(_Layer):
    """torch.nn.GRU for inference, on NumPy arrays.

    GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
        dropout=0.0, bidirectional=False, *, weights="float32")
    output, h_n = gru(x, hx=None, lengths=None)

    Gates r, z, n as torch computes them: n = tanh(W_in x + b_in + r * (W_hn h
    + b_hn)), h' = (1 - z) * n + z * h. Conventions as for LSTM.
    """

    kind = "GRU"
    _gates = 3
    _accepts = ("GRUCell",)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, weights="float32"):
        self._init_layer(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)
        self._init_weights(weights)


class RNN(_Layer):
    """torch.nn.RNN (Elman) for inference, on NumPy arrays.

    RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
        batch_first=False, dropout=0.0, bidirectional=False, *, weights="float32")
    output, h_n = rnn(x, hx=None, lengths=None)

    h' = tanh or relu(W_ih x + b_ih + W_hh h + b_hh). Conventions as for LSTM.
    """

    kind = "RNN"
    _gates = 1
    _accepts = ("RNNCell",)

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, weights="float32"):
        self._init_layer(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)
        self.nonlinearity = _nonlinearity(nonlinearity)
        self._init_weights(weights)


class _Cell(_Weights):
    """One step of a recurrent cell over a batch: nn.LSTMCell, nn.GRUCell, nn.RNNCell.
    It runs on the same engine as the layers (a one-layer module, one step)."""

    def _init_cell(self, input_size, hidden_size, bias):
        self.input_size = _as_int(input_size, "input_size", 1, _core.MAX_FEATURES)
        self.hidden_size = _as_int(hidden_size, "hidden_size", 1, _core.MAX_FEATURES)
        self.bias = _as_bool(bias, "bias", ints=True)

    @property
    def config(self):
        return {k: getattr(self, k) for k in self._config_keys()}

    def _expected_shapes(self):
        GH = self._gates * self.hidden_size
        shapes = {"weight_ih": (GH, self.input_size), "weight_hh": (GH, self.hidden_size)}
        if self.bias:
            shapes.update(bias_ih=(GH,), bias_hh=(GH,))
        return shapes

    def __call__(self, input, hx=None):
        """One step. input: (B, input_size) or unbatched (input_size,). hx: the
        state with torch's shapes, (B, hidden_size) or (hidden_size,) — for
        LSTMCell a tuple (h, c) — zeros when None. Returns h' (LSTMCell: (h', c'))."""
        core = self._core  # one reference for the whole call
        x = _float_array(input, "input")
        if x.ndim not in (1, 2):
            raise ValueError(f"input must be 2-D (batch, input_size) or 1-D unbatched "
                             f"(input_size,), got shape {x.shape}")
        unbatched = x.ndim == 1
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, expected input_size = "
                             f"{self.input_size}")
        x2 = x[None, :] if unbatched else x
        B = x2.shape[0]
        if B == 0:
            raise ValueError("input has batch size 0; it must be at least 1")
        if x2.strides[1] != 4 and self.input_size > 1 or x2.strides[0] % 4:
            x2 = np.ascontiguousarray(x2)
        h_0 = c_0 = None
        if hx is not None:
            if core.has_c:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError("hx must be a tuple (h, c)")
                h_0 = self._check_cell_state(hx[0], "h", B, unbatched)
                c_0 = self._check_cell_state(hx[1], "c", B, unbatched)
            else:
                if isinstance(hx, (tuple, list)):
                    raise TypeError(f"{self.kind} takes hx as one array h, not a "
                                    f"{type(hx).__name__}")
                h_0 = self._check_cell_state(hx, "h", B, unbatched)
        H = self.hidden_size
        output = np.empty((1, B, H), np.float32)
        h_n = np.empty((1, B, H), np.float32)
        c_n = np.empty((1, B, H), np.float32) if core.has_c else None
        core.forward(x2[None], None, h_0, c_0, output, h_n, c_n)
        h1 = h_n[0, 0] if unbatched else h_n[0]
        if not core.has_c:
            return h1
        return h1, (c_n[0, 0] if unbatched else c_n[0])

    forward = __call__

    def _check_cell_state(self, value, name, B, unbatched):
        arr = _float_array(value, name)
        want = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        if arr.shape != want:
            what = "(hidden_size,) for unbatched input" if unbatched else "(batch, hidden_size)"
            raise ValueError(f"{name} must have shape {want} {what}, got {arr.shape}")
        return np.ascontiguousarray(arr.reshape(1, B, self.hidden_size))


class LSTMCell(_Cell):
    """torch.nn.LSTMCell for inference: h1, c1 = cell(x, (h, c))."""

    kind = "LSTMCell"
    _gates = 4

    def __init__(self, input_size, hidden_size, bias=True, *, weights="float32"):
        self._init_cell(input_size, hidden_size, bias)
        self._init_weights(weights)


class GRUCell(_Cell):
    """torch.nn.GRUCell for inference: h1 = cell(x, h)."""

    kind = "GRUCell"
    _gates = 3

    def __init__(self, input_size, hidden_size, bias=True, *, weights="float32"):
        self._init_cell(input_size, hidden_size, bias)
        self._init_weights(weights)


class RNNCell(_Cell):
    """torch.nn.RNNCell for inference: h1 = cell(x, h); nonlinearity "tanh" or "relu"."""

    kind = "RNNCell"
    _gates = 1

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *,
                 weights="float32"):
        self._init_cell(input_size, hidden_size, bias)
        self.nonlinearity = _nonlinearity(nonlinearity)
        self._init_weights(weights)


# every module class by the kind a model file records
MODULES = {cls.kind: cls for cls in (LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell)}


def build(kind, config, tensors, weights="float32"):
    """The module kind(**config) with weights as stored: float32 tensors
    (load_state_dict), or a reduced_state_dict for weights "float16" / "int8"."""
    if weights == "float32":
        with _weights_set_later():
            model = MODULES[kind](**config)
        model.load_state_dict(tensors, strict=True)
        return model
    return MODULES[kind].from_reduced_state_dict(config, tensors, weights)
