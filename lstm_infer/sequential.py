"""Whole models: Sequential chains an Embedding, recurrent layers, a readout and a
head into one object, one file, one call.

    model = li.Sequential.from_state_dict(sd, "embedding > lstm > final > fc > softmax")
    probs = model(ids, lengths=lengths)        # ids (T, B) ints; probs (B, classes)
    model.save("classifier.lstm"); li.load("classifier.lstm")

The recurrent layers are lstm_infer's LSTM, GRU and RNN (the C core); everything
else is vectorised NumPy (lstm_infer.layers). Pipelines and their rules are in
lstm_infer.pipeline.
"""
import os
import threading
import weakref
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np

from . import fileio, layers as _layers, modelfile, pipeline as _pipeline, readers
from .model import (MODULES, _check_mapping, _float_array, _Layer, _to_numpy, _weight_type, _weights_set_later,
                    build)

__all__ = ["Sequential", "read_state_dict"]

_RECURRENT = _pipeline.RECURRENT_KINDS
_RERAISED = (ValueError, TypeError, IndexError)  # re-raised naming the layer


def read_state_dict(path, name=None):
    """{name: array} from any file the converter reads (torch.save zip or legacy
    file, full checkpoint, safetensors, .npz, an lstm_infer model file), without
    torch: floating-point tensors as float32, integer ones as they are stored (an
    lstm_infer model file with reduced weights: the float32 values its model computes
    with). ``path``: a path, or the file's contents as for readers.read_tensors."""
    if isinstance(path, (str, os.PathLike)):
        name = name or fileio.display_name(path)
        path = memoryview(fileio.read_file(path))
    if modelfile.file_kind(path) is not None:
        return modelfile.read_model(path, name)[2]
    try:
        sd = readers.read_tensors(path, name)
    except ValueError as exc:  # a bytes path (os.listdir(b".")) reads as contents: say so
        if isinstance(path, bytes) and len(path) < 4096 and b"\0" not in path and os.path.exists(path):
            raise type(exc)(f"{exc} (bytes are read as the file's contents; {path!r} names a file: "
                            f"pass its path as a str, e.g. os.fsdecode(path))") from None
        raise
    return {k: v.astype(np.float32) if v.dtype.kind == "f" and v.dtype != np.float32 else v
            for k, v in sd.items()}


def _arrays(obj, depth=0):
    """A loaded checkpoint with its tensors as NumPy arrays (nested mappings kept)."""
    if depth > 50:
        raise ValueError("state dict: mappings nested too deep")
    out = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            out[k] = _arrays(v, depth + 1)
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            out[k] = _to_numpy(v, f"state_dict[{k!r}]")
        else:
            out[k] = v
    return out


def _state_dict_of(obj):
    """A state dict from what from_state_dict was given: a mapping of names to
    tensors, a full checkpoint ({"model": state_dict, "epoch": ...}) or a path."""
    if isinstance(obj, (str, os.PathLike)):
        return read_state_dict(obj)
    _check_mapping(obj, "from_state_dict")
    return readers.find_state_dict(_arrays(obj), "state_dict")


def _keyword_module(word):
    key = word.lower()
    if key in _layers.READOUTS:
        return _layers.Readout(key)
    kind = _pipeline.KEYWORDS.get(key)
    if kind is None:
        raise ValueError(f"unknown layer keyword {word!r}; keywords: {', '.join(_pipeline.KEYWORDS)}; "
                         f"readouts: {', '.join(_layers.READOUTS)}")
    return _layers.LAYERS[kind]() if kind != "Dropout" else _layers.Dropout(0.0)


class _Consistency:
    """One Sequential's weights as its calls, copies and saves see them: each holds
    this shared while it reads the layers, load_state_dict alone while it switches
    them, so nothing meets one layer's old weights beside another's new ones.

    A thread can come back in while it holds it: a signal handler runs in the
    main thread between any two bytecodes, and inside a long layer call too. A
    shared hold it takes then goes ahead even past a waiting reload (which waits
    for the outer hold); a reload under its own shared hold, or a hold under its
    own reload, raises RuntimeError, where waiting would wait for itself. The
    lock is reentrant for the same reason."""

    def __init__(self):
        self._cond = threading.Condition(threading.RLock())
        self._readers = {}  # thread ident -> shared holds
        self._writer = None  # the reloading thread's ident

    @contextmanager
    def reading(self):
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                raise RuntimeError(
                    "this model is being reloaded (load_state_dict) by this same thread, "
                    "which cannot call, copy or save it until that returns (is this a "
                    "signal handler?)")
            if me not in self._readers:
                while self._writer is not None:
                    self._cond.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                left = self._readers[me] - 1
                if left:
                    self._readers[me] = left
                else:
                    # wake a waiting reload before the entry goes: a signal handler that
                    # calls the model between the two still counts as nested and goes
                    # ahead, where after them it would wait for a reload nobody wakes
                    if len(self._readers) == 1:
                        self._cond.notify_all()
                    del self._readers[me]

    @contextmanager
    def writing(self):
        me = threading.get_ident()
        with self._cond:
            if me in self._readers or self._writer == me:
                raise RuntimeError(
                    "load_state_dict was called while this same thread is inside a call, "
                    "copy, save or reload of this model (is this a signal handler?): it "
                    "would wait for itself")
            while self._writer is not None:
                self._cond.wait()
            self._writer = me  # calls that start from here wait
            try:
                while self._readers:
                    self._cond.wait()
            except BaseException:
                self._writer = None
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._cond.notify_all()


def _switch_all(switches):
    """Runs every switch (each installs one layer's new weights and may run again),
    even past an exception a signal handler raises meanwhile (Ctrl-C, or a handler's
    own call of the model being reloaded): that exception is raised after the last
    switch, so no call sees one layer's new weights beside another's old ones."""
    pending, i, again = None, 0, None
    while i < len(switches):
        try:
            while i < len(switches):
                switches[i]()
                i += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised below, once all are in
            pending = pending or exc
            if again == i:  # raised twice: no longer a stray signal, so go on past it
                i, again = i + 1, None
            else:  # it may have stopped halfway: run it again
                again = i
    if pending is not None:
        raise pending


# A child forked while another thread held one of these: that thread is gone, so its
# hold must not block the child's copy of the model forever.
_SEQUENTIALS = weakref.WeakSet()


def _fresh_consistency():
    for model in list(_SEQUENTIALS):
        model._consistent = _Consistency()


os.register_at_fork(after_in_child=_fresh_consistency)


class Sequential:
    """A chain of layers run one after the other, as torch.nn.Sequential, where the
    recurrent layers get the sequences' lengths and a readout turns their per-step
    outputs into what the next layers take.

    Sequential(layer, ...) names the layers "0", "1", ... like torch;
    Sequential(OrderedDict(name=layer, ...)) names them. A layer is an lstm_infer
    LSTM, GRU or RNN, a layer of lstm_infer.layers (Embedding, Linear, LayerNorm,
    ReLU, Tanh, Sigmoid, Softmax, LogSoftmax, Dropout, Readout) or a keyword string
    ("relu", "softmax", "final", ...; see lstm_infer.pipeline). The recurrent
    layers must agree on batch_first; the widths must chain (ValueError otherwise).

    y = model(x, lengths=None)
      x: token ids (any integer dtype) of shape (T, B), (B, T) with batch_first, or
         (T,) unbatched, when the model starts with an Embedding; else floats
         (T, B, F), (B, T, F) or (T, F). Or a list of sequences ((T_i,) ids or
         (T_i, F) floats; lengths then come from them).
      lengths: optional (B,) ints in [0, T], as for li.LSTM.
      y: float32. After a readout other than steps: (B, out) ((out,) unbatched);
         per step otherwise: (T, B, out) / (B, T, out), 0 past each length. For a
         list input, per-step results are a list of (T_i, out) arrays, others one
         (B, out) array (like li.LSTM's output list and batched state).

    Attributes: layers [(name, module)], readout (mode after the last recurrent
    layer or None), batch_first, pipeline (normalized text), in_features (None for
    token ids or when no layer fixes it), out_features, takes_ids.
    Also: state_dict / load_state_dict under torch's names ("lstm.weight_ih_l0"),
    from_state_dict, save (li.load reads it back), stream, pickling.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            items = list(layers[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(layers)]
        modules = []
        for name, m in items:
            if isinstance(m, str):
                m = _keyword_module(m)
            if not isinstance(m, (_layers._Module, _Layer)):
                kind = str(getattr(m, "kind", ""))
                what = (f"an {kind}: a cell takes one step; use LSTM, GRU or RNN" if kind.endswith("Cell")
                        else f"a {type(m).__name__}")
                raise TypeError(f"layer {name!r} is {what}, not an lstm_infer layer (LSTM, GRU, RNN or "
                                f"one of lstm_infer.layers)")
            modules.append((name, m))
        flags = {m.batch_first for _, m in modules if m.kind in _RECURRENT}
        if len(flags) > 1:
            raise ValueError("the recurrent layers disagree on batch_first: build them all with the same")
        self._layers = modules
        self.batch_first = flags.pop() if flags else False
        self._chain = _pipeline.check_layers(self._pipeline_layers())
        self._first_rec = next((m for _, m in modules if m.kind in _RECURRENT), None)
        self._consistent = _Consistency()
        _SEQUENTIALS.add(self)
        after = [m.kind for _, m in modules[self._last_rec_index() + 1:]] if self._first_rec else []
        # a per-step result gets its padding zeroed again when a layer may have changed it
        self._remask = any(k not in ("Readout", "Dropout") for k in after)

    # ------------------------------------------------------------ description
    def _pipeline_layers(self):
        return [_pipeline.Layer(name, m.kind, m.config) for name, m in self._layers]

    def _last_rec_index(self):
        return max(i for i, (_, m) in enumerate(self._layers) if m.kind in _RECURRENT)

    @property
    def layers(self):
        """[(name, module)] in order (a copy of the list; the modules themselves)."""
        return list(self._layers)

    @property
    def readout(self):
        return self._chain.readout

    @property
    def pipeline(self):
        return _pipeline.text(self._pipeline_layers())

    @property
    def in_features(self):
        w = self._chain.in_width
        return None if w == _pipeline.ANY else w

    @property
    def out_features(self):
        w = self._chain.out_width
        return None if w == _pipeline.ANY else w

    @property
    def takes_ids(self):
        """True when the model starts with an Embedding (its input is token ids)."""
        return self._layers[0][1].kind == "Embedding"

    @property
    def config(self):
        """What a model file records: batch_first and each layer's name, kind and
        constructor arguments, and "weights" for a recurrent layer with reduced ones."""
        entries = []
        for name, m in self._layers:
            entries.append({"name": name, "kind": m.kind, "config": m.config})
            if getattr(m, "weights", "float32") != "float32":
                entries[-1]["weights"] = m.weights
        return {"batch_first": self.batch_first, "layers": entries}

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return (m for _, m in self._layers)

    def __getitem__(self, key):
        """A layer by position or by name; a slice gives a Sequential of those layers (as torch)."""
        if isinstance(key, slice):
            return type(self)(dict(self._layers[key]))
        if isinstance(key, str):
            for name, m in self._layers:
                if name == key:
                    return m
            raise KeyError(f"no layer named {key!r}; layers: {', '.join(n for n, _ in self._layers)}")
        return self._layers[key][1]

    def __repr__(self):
        lines = "".join(f"  ({name}): {m!r}\n" for name, m in self._layers)
        return f"Sequential(\n{lines})"  # torch's form; batch_first shows in the recurrent layers

    # ------------------------------------------------------------ weights
    def state_dict(self):
        """Every layer's weights under torch's names, "<layer name>.<key>" (copies);
        float32, also for recurrent layers with reduced weights (what they compute with)."""
        with self._consistent.reading():
            return {f"{name}.{k}": v for name, m in self._layers for k, v in m.state_dict().items()}

    def reduced_state_dict(self):
        """Every layer's weights as stored, "<layer name>.<key>" (copies): the recurrent
        layers' reduced_state_dict(), the other layers' state_dict(). from_config(config,
        reduced_state_dict()) rebuilds the model bit for bit."""
        with self._consistent.reading():
            return {f"{name}.{k}": v for name, m in self._layers
                    for k, v in (m.reduced_state_dict() if m.kind in _RECURRENT else m.state_dict()).items()}

    def load_state_dict(self, state_dict, strict=True):
        """Loads every layer's weights from "<layer name>.<key>" entries; as torch:
        strict=True refuses missing and unexpected keys. Returns (missing, unexpected)."""
        _check_mapping(state_dict, "load_state_dict")
        owned = {name: {} for name, _ in self._layers}
        unexpected = []
        for key in state_dict.keys():
            name = _pipeline.owner(key, owned)
            if name is None:
                unexpected.append(str(key))
            else:
                owned[name][key[len(name) + 1:]] = state_dict[key]
        missing = [f"{name}.{k}" for name, m in self._layers for k in m._expected_shapes()
                   if k not in owned[name]]
        unexpected += [f"{name}.{k}" for name, m in self._layers for k in owned[name]
                       if k not in m._expected_shapes()]
        if strict and (missing or unexpected):
            parts = ([f"missing keys: {', '.join(missing)}"] if missing else []) + \
                    ([f"unexpected keys: {', '.join(unexpected)}"] if unexpected else [])
            raise KeyError("state_dict does not match the Sequential: " + "; ".join(parts))
        switches = []  # every layer's weights checked, converted and built before any layer changes
        for name, m in self._layers:
            mine = {k: v for k, v in owned[name].items() if k in m._expected_shapes()}
            if mine:
                switches.append(m._staged_load(mine, strict=False, label=name + ".")[2])
        with self._consistent.writing():
            _switch_all(switches)
        return missing, unexpected

    @classmethod
    def from_state_dict(cls, state_dict, pipeline, batch_first=False, nonlinearity=None, weights="float32",
                        eps=None):
        """The model a pipeline text names over a state dict (see lstm_infer.pipeline).

        state_dict: a mapping of names to tensors (NumPy or torch), a full checkpoint
        ({"model": state_dict, "epoch": ...}), or the path of any file the converter
        reads. batch_first: the layout of the input and of per-step outputs.
        nonlinearity: "relu" or "tanh" for every RNN layer, or {name: value}; a state
        dict does not record it (default "tanh", torch's). weights: the storage of the
        recurrent layers ("float32", "float16" or "int8"; see lstm_infer.LSTM), for
        all of them or {name: value} (others float32). eps: the LayerNorm layers' eps,
        for all of them or {name: value}; a state dict does not record it either
        (default 1e-05, torch's), nor that a 1-D weight (and bias) is a LayerNorm's.
        Tensors of the state dict that no layer uses are named in a
        lstm_infer.pipeline.LeftOutWarning: the model runs without them."""
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first must be True or False, got {batch_first!r}")
        sd = _state_dict_of(state_dict)
        resolved = _pipeline.resolve(sd, pipeline, nonlinearity, eps)
        storage = _storage_by_layer(weights, [layer.name for layer, _ in resolved if layer.kind in _RECURRENT])
        built = []
        for layer, tensors in resolved:
            label = layer.name + "."  # errors name the keys as the state dict has them
            if layer.kind in _RECURRENT:
                with _weights_set_later():
                    m = MODULES[layer.kind](**layer.config, batch_first=batch_first)
                m._staged_load(tensors, True, storage[layer.name], label)[2]()
            else:
                m = _layers.LAYERS[layer.kind](**layer.config)
                m._staged_load(tensors, True, label)[2]()
            built.append((layer.name, m))
        return cls(dict(built))

    @classmethod
    def from_config(cls, config, state_dict):
        """The model a model file's (config, tensors) describe (see modelfile.read_stored):
        the tensors as stored, reduced for a recurrent layer whose entry has "weights"."""
        owned = {e["name"]: {} for e in config["layers"]}
        for key in state_dict.keys():
            name = _pipeline.owner(key, owned)
            if name is None:
                raise KeyError(f"state_dict does not match the Sequential: unexpected key {key!r}")
            owned[name][key[len(name) + 1:]] = state_dict[key]
        built = []
        for entry in config["layers"]:
            name, kind = entry["name"], entry["kind"]
            if kind in _RECURRENT:
                m = build(kind, entry["config"], owned[name], entry.get("weights", "float32"))
            else:
                m = _layers.LAYERS[kind](**entry["config"])
                m.load_state_dict(owned[name], strict=True)
            built.append((name, m))
        return cls(dict(built))

    def save(self, path):
        """Writes the whole model to one self-describing file (see lstm_infer.load), the
        recurrent layers' weights as they store them."""
        modelfile.write_model(path, self.reduced_state_dict(), self.config, "Sequential")

    def release_memory(self):
        """Frees the scratch memory the recurrent layers keep between calls."""
        for m in self:
            if m.kind in _RECURRENT:
                m.release_memory()

    def __reduce__(self):
        return _rebuild, (self.config, self.reduced_state_dict())

    def stream(self, batch_size=1):
        """A stream over batch_size live sequences (see lstm_infer.stream)."""
        from .stream import sequential_stream
        return sequential_stream(self, batch_size)

    # ------------------------------------------------------------ forward
    def forward(self, input, lengths=None):
        return self(input, lengths)

    def __call__(self, input, lengths=None):
        if isinstance(input, (list, tuple)):
            return self._call_list(input, lengths)
        x = self._input(input, "input")
        if self._first_rec is None:
            if lengths is not None:
                raise ValueError("lengths applies to models with a recurrent layer; this one has none")
            return self._run(x, None)
        seq_ndim = 2 if self.takes_ids else 3
        if x.ndim == seq_ndim - 1:  # unbatched
            if lengths is not None:
                raise ValueError(f"lengths needs batched input ({seq_ndim}-D); input is unbatched "
                                 f"{seq_ndim - 1}-D")
            axis = 0 if self.batch_first else 1
            y = self._run(np.expand_dims(x, axis), None)
            return y[0] if self._chain.readout not in (None, "steps") else np.take(y, 0, axis=axis)
        if x.ndim != seq_ndim:
            layout = ("(batch, seq)" if self.batch_first else "(seq, batch)") if self.takes_ids else \
                ("(batch, seq, feature)" if self.batch_first else "(seq, batch, feature)")
            what = "token ids" if self.takes_ids else "input"
            raise ValueError(f"{what} must be {seq_ndim}-D {layout} or {seq_ndim - 1}-D unbatched, "
                             f"got shape {x.shape}")
        return self._run(x, lengths)

    def _input(self, value, what):
        if self.takes_ids:
            arr = _to_numpy(value, what)
            if arr.dtype.kind not in "iu":
                first = self._layers[0][0]
                raise TypeError(f"{what} must hold integer token ids: the model starts with the Embedding "
                                f"{first!r}; got dtype {arr.dtype} (if {first!r} is a bias-free Linear, "
                                f"write '{first}:Linear' in the pipeline)")
            return arr
        return _float_array(value, what)

    def _run(self, x, lengths):
        bf = self.batch_first
        lens = None
        if lengths is not None:
            T, B = (x.shape[1], x.shape[0]) if bf else (x.shape[0], x.shape[1])
            lens = self._first_rec._check_lengths(lengths, T, B, x.shape)
        state = None
        with self._consistent.reading():  # every layer's weights from one load
            for name, m in self._layers:
                try:
                    if m.kind in _RECURRENT:
                        x, state = m(x, lengths=lens)
                    elif m.kind == "Readout":
                        x = m(x, state, lens, bf)
                    else:
                        x = m(x)
                except _RERAISED as exc:
                    if type(exc) not in _RERAISED:
                        raise
                    raise type(exc)(f"layer {name!r} ({m!r}): {exc}") from None
        if self._remask and lens is not None and self._chain.readout in (None, "steps"):
            T = x.shape[1] if bf else x.shape[0]
            pad = np.arange(T)[:, None] >= lens[None, :]  # (T, B)
            x[pad.T if bf else pad] = 0.0
        return x

    def _call_list(self, seqs, lengths):
        if lengths is not None:
            raise ValueError("lengths must not be given with a list of sequences "
                             "(each sequence's own length is used)")
        if self._first_rec is None:
            raise ValueError("a list of sequences needs a model with a recurrent layer")
        if len(seqs) == 0:
            raise ValueError("input is an empty list of sequences")
        arrays = [self._input(s, f"input[{i}]") for i, s in enumerate(seqs)]
        want = 1 if self.takes_ids else 2
        for i, a in enumerate(arrays):
            if a.ndim != want or a.shape[1:] != arrays[0].shape[1:]:
                shape = "(length,)" if want == 1 else f"(length, {arrays[0].shape[-1]})"
                raise ValueError(f"input[{i}] must have shape {shape} like input[0], got {a.shape}")
        lens = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        T, B = int(lens.max()), len(arrays)
        if T == 0:
            raise ValueError("every sequence in the list is empty")
        if self.takes_ids:
            emb = self._layers[0][1]
            for i, a in enumerate(arrays):  # in range, so int64 holds them whatever their dtypes
                _layers.check_ids(a, emb.num_embeddings, f"input[{i}]")
            x = np.full((T, B), emb.padding_idx or 0, dtype=np.int64)  # padded steps are not read
        else:
            x = np.zeros((T, B, arrays[0].shape[1]), np.float32)
        for b, a in enumerate(arrays):
            x[: a.shape[0], b] = a
        if self.batch_first:
            x = x.swapaxes(0, 1)
        y = self._run(x, lens)
        if self._chain.readout not in (None, "steps"):
            return y
        if self.batch_first:
            return [y[b, : lens[b]].copy() for b in range(B)]
        return [y[: lens[b], b].copy() for b in range(B)]


def _rebuild(config, state_dict):
    return Sequential.from_config(config, state_dict)


def build_model(kind, config, tensors, weights):
    """The model a model file describes (modelfile.read_stored's result): a Sequential,
    or a module of its kind with its weights as stored."""
    if kind == "Sequential":
        return Sequential.from_config(config, tensors)
    return build(kind, config, tensors, weights)


def _storage_by_layer(weights, names):
    """{recurrent layer name: storage} from from_state_dict's weights argument."""
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"weights names {unknown}, which are not recurrent layers of the pipeline "
                             f"(those are {names})")
        return {n: _weight_type(weights.get(n, "float32")) for n in names}
    return {n: _weight_type(weights) for n in names}
