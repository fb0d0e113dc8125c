"""Our model file: a safetensors file any safetensors reader can open.

Layout: 8-byte little-endian header length N, N bytes of JSON (padded with
spaces so the data starts 8-byte aligned), then the little-endian tensors
(float32; see reduced weights below) back to back under the torch module's own
key names. The header's
``__metadata__`` holds::

    {"format": "lstm_infer", "format_version": "1", "kind": "<KIND>",
     "config": "<JSON of exactly KIND's constructor arguments>"}

KIND is the class name: "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell" or "RNNCell";
the config keys are that class's arguments (:data:`CONFIG_KEYS_BY_KIND`), e.g. for
LSTM input_size, hidden_size, num_layers, bias, batch_first, dropout,
bidirectional, proj_size, and for RNNCell input_size, hidden_size, bias,
nonlinearity ("tanh" or "relu"). Files of format_version "1" written before the
other kinds existed are all kind "LSTM" and read unchanged (the layout did not
change, so the version did not either; older readers refuse the new kinds by name).

Reduced weights (format_version "2"): a module built with weights="float16" or
"int8" is stored as it computes, so the loaded model gives the same bits. The
metadata then also holds ``"weights": "float16"`` or ``"int8"`` and each weight
array has the dtype the C core stores it in (lstm_weight_storage: F32 for the
biases, F16 or I8 for the matrices); an I8 array ``K`` of shape (rows, cols) comes
with its float32 row scales ``K_scale`` of shape (rows,) right after it (w ~
scale[:, None] * q, q in [-127, 127], scales finite and >= 0). Float32 models
are still written as format_version "1", which older readers read; they refuse a
"2" as a newer format instead of misreading it.

KIND "Sequential" (a whole model, lstm_infer.Sequential) has the config::

    {"batch_first": false,
     "layers": [{"name": "embedding", "kind": "Embedding",
                 "config": {"num_embeddings": 100, "embedding_dim": 16, "padding_idx": 0}},
                {"name": "lstm", "kind": "LSTM", "config": {<LSTM's arguments>}},
                {"name": "final", "kind": "Readout", "config": {"mode": "final"}},
                {"name": "fc", "kind": "Linear", "config": {...}}, ...]}

each layer's config exactly its constructor's arguments (lstm_infer.pipeline.ARGS;
the recurrent layers' batch_first equal to the model's; a recurrent layer with
reduced weights has ``"weights": "int8"`` (or "float16") in its entry, next to
its config, in format_version "2"), and the tensors under
torch's names "<layer name>.<key>" in layer order. The pipeline must pass
lstm_infer.pipeline.check_layers (names, widths, readouts).

Written and read with NumPy only; loading checks every size and offset against
the file before touching tensor data, and that the tensors are exactly those of
KIND with that config. This module does not import the model classes.
"""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import numpy as np

from . import detect, fileio, pipeline, readers
from .errors import FormatError
from .readers import _no_duplicates, parse_safetensors

__all__ = ["write_model", "read_model", "read_stored", "dequantize", "file_kind", "FORMAT", "FORMAT_VERSION",
           "FORMAT_VERSIONS", "KINDS", "CONFIG_KEYS_BY_KIND", "STORAGES", "SCALE_SUFFIX"]

FORMAT = "lstm_infer"
# "1": float32 weights; "2" adds reduced ones. A file gets the lowest version that holds it.
FORMAT_VERSIONS = ("1", "2")
FORMAT_VERSION = FORMAT_VERSIONS[-1]
_REDUCED_VERSION = "2"
# The weight storages (lstm_infer.model.WEIGHT_TYPES) and their dtypes in a file.
STORAGES = {"float32": "F32", "float16": "F16", "int8": "I8"}
SCALE_SUFFIX = "_scale"  # an int8 array's row scales: "<key>_scale"
_FLT_MAX = float(np.finfo(np.float32).max)
# storage_rule(kind, config, weights): the storage of each weight array in state_dict
# order, as the C core decides it (lstm_weight_storage). lstm_infer.model sets it:
# this module does not import the model classes or the C core.
storage_rule = None
KINDS = detect.KINDS + ("Sequential",)
# A model's header lists a few dozen tensors; anything near this is not ours.
MAX_HEADER_BYTES = 1 << 20
_INT_KEYS = ("input_size", "hidden_size", "num_layers", "proj_size")
_BOOL_KEYS = ("bias", "batch_first", "bidirectional")
# Each kind's config keys: exactly its constructor's arguments.
CONFIG_KEYS_BY_KIND = {kind: frozenset(detect.SIGNATURES[kind]) for kind in detect.KINDS}
CONFIG_KEYS_BY_KIND["Sequential"] = frozenset(("batch_first", "layers"))
CONFIG_KEYS = CONFIG_KEYS_BY_KIND["LSTM"]
# What write_model fills in when the config leaves it out (nothing that changes results).
_WRITE_DEFAULTS = {"batch_first": False, "dropout": 0.0}


def _check_kind(kind, src):
    if kind not in KINDS:
        raise FormatError(f"{src}: unsupported model kind {kind!r} (known: {', '.join(KINDS)})")


def _check_config(cfg, src, kind="LSTM", version="1"):
    if not isinstance(cfg, dict):
        raise FormatError(f"{src}: config is a {type(cfg).__name__}, not an object")
    if kind == "Sequential":
        _check_sequential(cfg, src, version)
        return
    want = CONFIG_KEYS_BY_KIND[kind]
    missing, extra = want - set(cfg), set(cfg) - want
    if missing or extra:
        raise FormatError(f"{src}: config keys wrong for {kind} (missing {sorted(missing)}, "
                          f"unexpected {sorted(extra)})")
    for k in _INT_KEYS:
        if k in cfg and (type(cfg[k]) is not int or cfg[k] < 0):
            raise FormatError(f"{src}: config {k} must be a non-negative integer, got {cfg[k]!r}")
    for k in _BOOL_KEYS:
        if k in cfg and type(cfg[k]) is not bool:
            raise FormatError(f"{src}: config {k} must be true or false, got {cfg[k]!r}")
    if "dropout" in cfg and (type(cfg["dropout"]) not in (int, float) or not 0 <= cfg["dropout"] <= 1):
        raise FormatError(f"{src}: config dropout must be a number in [0, 1], got {cfg['dropout']!r}")
    if "nonlinearity" in cfg and cfg["nonlinearity"] not in detect.NONLINEARITIES:
        raise FormatError(f"{src}: config nonlinearity must be \"tanh\" or \"relu\", got {cfg['nonlinearity']!r}")
    if cfg["input_size"] < 1 or cfg["hidden_size"] < 1 or cfg.get("num_layers", 1) < 1:
        raise FormatError(f"{src}: config input_size, hidden_size" + (" and num_layers" if "num_layers" in cfg
                                                                        else "") + " must be at least 1")
    # the C core's limits, which its loader checks too: a file past them is refused here
    # rather than written (and then opened by neither loader)
    for k, most in detect.CORE_LIMITS.items():
        if cfg.get(k, 0) > most:
            raise FormatError(f"{src}: config {k} = {cfg[k]} is too large (at most {most})")
    if cfg.get("proj_size", 0) >= cfg["hidden_size"]:
        raise FormatError(f"{src}: config proj_size {cfg['proj_size']} must be below hidden_size {cfg['hidden_size']}")


def _check_storage(weights, where, version):
    """A "weights" field (a storage name), allowed from format_version "2" on."""
    if version == "1":
        raise FormatError(f"{where}: \"weights\" needs format_version \"{_REDUCED_VERSION}\" "
                          f"(format_version \"1\" holds float32 weights only)")
    if not isinstance(weights, str) or weights not in STORAGES:
        raise FormatError(f"{where}: unknown weights {weights!r} (known: {', '.join(STORAGES)})")


def _check_sequential(cfg, src, version="1"):
    """A Sequential's config: see the module docstring."""
    if set(cfg) != CONFIG_KEYS_BY_KIND["Sequential"]:
        raise FormatError(f"{src}: a Sequential's config must have exactly batch_first and layers, "
                          f"got {sorted(cfg)}")
    if type(cfg["batch_first"]) is not bool:
        raise FormatError(f"{src}: config batch_first must be true or false, got {cfg['batch_first']!r}")
    entries = cfg["layers"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= pipeline.MAX_LAYERS:
        raise FormatError(f"{src}: config layers must be a list of 1 to {pipeline.MAX_LAYERS} layers")
    layers = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) - {"weights"} != {"name", "kind", "config"}:
            raise FormatError(f"{src}: layer {i} must be an object with exactly name, kind and config "
                              f"(and weights, for a recurrent layer)")
        name, kind, c = e["name"], e["kind"], e["config"]
        where = f"{src}: layer {i} ({name!r})" if isinstance(name, str) and len(name) < 200 else \
            f"{src}: layer {i}"
        if kind in detect.LAYER_KINDS:
            _check_config(c, where, kind)
            if c["batch_first"] != cfg["batch_first"]:
                raise FormatError(f"{where}: batch_first {c['batch_first']} differs from the model's")
            if "weights" in e:
                _check_storage(e["weights"], where, version)
        elif "weights" in e:
            raise FormatError(f"{where}: weights applies to the recurrent layers, not to {kind!r}")
        else:
            if not isinstance(kind, str) or kind not in pipeline.ARGS:
                raise FormatError(f"{where}: unsupported layer kind {kind!r} (known: "
                                  f"{', '.join(pipeline.KINDS)})")
            try:
                pipeline.check_config(kind, c)
            except ValueError as exc:
                raise FormatError(f"{where}: {exc}") from None
        layers.append(pipeline.Layer(name, kind, c))
    try:
        pipeline.check_layers(layers)
    except ValueError as exc:
        raise FormatError(f"{src}: the pipeline is not valid: {exc}") from None


def _sequential_keys(shapes, cfg, src):
    """The tensors of a Sequential, in the order written: exactly those of its layers,
    each with its storage (see _storage_by_key)."""
    owned = {e["name"]: {} for e in cfg["layers"]}
    stray = []
    for k, s in shapes.items():
        name = pipeline.owner(k, owned)
        if name is None:
            stray.append(k)
        else:
            owned[name][k[len(name) + 1:]] = s
    if stray:
        raise FormatError(f"{src}: tensors that belong to no layer: {sorted(stray)[:8]}")
    keys = {}
    for e in cfg["layers"]:
        prefix, kind, c = e["name"] + ".", e["kind"], e["config"]
        mine = owned[e["name"]]
        where = f"{src}: layer {e['name']!r}"
        if kind in detect.LAYER_KINDS:
            own = _check_shapes(mine, c, where, kind) if mine else []
            if not own:
                raise FormatError(f"{where}: the {kind}'s tensors are missing")
            keys.update((prefix + k, s) for k, s in _storage_by_key(own, c, where, kind,
                                                                   e.get("weights", "float32")).items())
        else:
            want = detect.other_shapes(kind, c) if kind in detect.OTHER_KINDS else {}
            for k, shape in want.items():
                if k not in mine:
                    raise FormatError(f"{where}: tensor {prefix + k!r} is missing")
                if tuple(mine[k]) != tuple(shape):
                    raise FormatError(f"{where}: tensor {prefix + k!r} has shape {list(mine[k])}, the "
                                      f"{kind} needs {list(shape)}")
            own = list(want)
            keys.update((prefix + k, "float32") for k in own)
        extra = set(mine) - set(own)
        if extra:
            raise FormatError(f"{where}: unexpected tensors {sorted(prefix + k for k in extra)[:8]}")
    return keys


def _storage_by_key(keys, cfg, src, kind, weights):
    """{key: storage} for a recurrent module's tensors (keys in state_dict order): how
    the C core stores each one with ``weights`` (lstm_infer.model.weight_storage)."""
    if weights == "float32":
        return dict.fromkeys(keys, "float32")
    if storage_rule is None:
        raise FormatError(f"{src}: reading {weights} weights needs lstm_infer.model (import lstm_infer)")
    try:
        return dict(zip(keys, storage_rule(kind, cfg, weights)))
    except ValueError as exc:
        raise FormatError(f"{src}: weights {weights!r} do not apply to this {kind} ({exc})") from None


def _check_tensors(shapes, cfg, src, kind, weights):
    """shapes: every tensor's name -> shape. Those not named "*_scale" must be exactly
    ``kind``'s with ``cfg``. Returns {weight key: storage} in the order written."""
    rest = {k: s for k, s in shapes.items() if not k.endswith(SCALE_SUFFIX)}
    if kind == "Sequential":
        return _sequential_keys(rest, cfg, src)
    return _storage_by_key(_check_shapes(rest, cfg, src, kind), cfg, src, kind, weights)


def _check_scales(shapes, storage, src):
    """The "*_scale" tensors are exactly one row-scale vector per int8 array."""
    scales = {k: s for k, s in shapes.items() if k.endswith(SCALE_SUFFIX)}
    want = {k + SCALE_SUFFIX: k for k, s in storage.items() if s == "int8"}
    for k in sorted(set(scales) - set(want)):
        raise FormatError(f"{src}: unexpected tensor {k!r} (row scales go with int8 weights only)")
    for k in sorted(set(want) - set(scales)):
        raise FormatError(f"{src}: tensor {k!r} is missing: the int8 weights {want[k]!r} need their row scales")
    for k, w in want.items():
        if tuple(scales[k]) != (shapes[w][0],):
            raise FormatError(f"{src}: tensor {k!r} has shape {list(scales[k])}, but {w!r} has "
                              f"{shapes[w][0]} rows: it needs [{shapes[w][0]}]")


def _check_values(name, dtype, array, src):
    """What the C core refuses in reduced weights: -128 in int8 (q is in [-127, 127]),
    a scale that is negative, NaN or infinite."""
    if dtype == "I8" and array.size and int(array.min()) == -128:
        raise FormatError(f"{src}: tensor {name!r} holds -128; int8 weights lie in [-127, 127]")
    if name.endswith(SCALE_SUFFIX) and array.size and not (array.min() >= 0 and array.max() <= _FLT_MAX):
        raise FormatError(f"{src}: tensor {name!r} holds a negative, NaN or infinite scale")


def _check_shapes(shapes, cfg, src, kind="LSTM"):
    """shapes: name -> shape tuple. They must be exactly the tensors of a ``kind`` with ``cfg``."""
    if kind == "Sequential":
        return _sequential_keys(shapes, cfg, src)
    sd = {k: SimpleNamespace(shape=s) for k, s in shapes.items()}
    try:
        specs = detect.find_modules(sd)
    except ValueError as exc:
        raise FormatError(f"{src}: {exc}") from None
    if len(specs) != 1 or specs[0].prefix != "":
        raise FormatError(f"{src}: tensors do not form one nn.{kind} (names: {sorted(shapes)[:8]})")
    spec = specs[0]
    if spec.kind != kind:
        raise FormatError(f"{src}: the header says kind {kind!r} but the tensors are those of "
                          f"{detect.article(spec.kind)} nn.{spec.kind}")
    extra = set(shapes) - set(spec.keys)
    if extra:
        raise FormatError(f"{src}: unexpected tensors {sorted(extra)}")
    for k, v in spec.config.items():
        if k not in spec.assumed and cfg[k] != v:
            raise FormatError(f"{src}: config says {k}={cfg[k]!r} but the tensor shapes give {v!r}")
    return spec.keys


def _coerce(k, v, src):
    """A config value from Python/NumPy types to the JSON type the file holds."""
    is_bool = isinstance(v, (bool, np.bool_))
    if k in _BOOL_KEYS:
        if not is_bool:
            raise FormatError(f"{src}: config {k} must be true or false, got {v!r}")
        return bool(v)
    if k in _INT_KEYS:
        if is_bool or not isinstance(v, (int, np.integer)):
            raise FormatError(f"{src}: config {k} must be an integer, got {v!r}")
        return int(v)
    if k == "dropout":
        if is_bool or not isinstance(v, (int, float, np.integer, np.floating)):
            raise FormatError(f"{src}: config dropout must be a number, got {v!r}")
        return float(v)
    return v


def _layer_config(config, kind, path):
    """A recurrent module's config as written: defaults filled in, JSON types, checked."""
    want = CONFIG_KEYS_BY_KIND[kind]
    extra = sorted(set(config) - want)
    if extra:
        raise FormatError(f"{path}: config keys wrong for {kind} (unexpected {extra}; {kind} takes {sorted(want)})")
    cfg = {k: d for k, d in _WRITE_DEFAULTS.items() if k in want}
    cfg.update(config)
    cfg = {k: _coerce(k, v, path) for k, v in cfg.items()}
    _check_config(cfg, path, kind)
    return cfg


def _sequential_config(config, path):
    """A Sequential's config as written: the recurrent layers' configs completed like
    single modules', everything in JSON types, checked as a reader will check it."""
    try:
        layers = [dict(e, config=_layer_config(e["config"], e["kind"], f"{path}: layer {e['name']!r}"))
                  if e["kind"] in detect.LAYER_KINDS else dict(e) for e in config["layers"]]
        for e in layers:  # float32 is what no "weights" means
            if e.get("weights", None) == "float32":
                del e["weights"]
        cfg = json.loads(json.dumps({"batch_first": config["batch_first"], "layers": layers}))
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{path}: not a Sequential's config ({type(exc).__name__}: {exc})") from None
    _check_config(cfg, path, "Sequential", _REDUCED_VERSION)
    return cfg


def _stored_array(state_dict, key, storage, path):
    """state_dict[key] as written: float32 (from any floats) for float32 storage, else
    exactly the dtype of the storage (a reduced array is never converted)."""
    code = readers.SAFETENSORS_DTYPES[STORAGES[storage]]
    if storage == "float32":
        return np.ascontiguousarray(state_dict[key], dtype=code)
    arr = np.asarray(state_dict[key])
    if arr.dtype != np.dtype(code).newbyteorder("="):
        raise FormatError(f"{path}: tensor {key!r} is {arr.dtype}; {storage} weights store it as "
                          f"{np.dtype(code).name}")
    return np.ascontiguousarray(arr, dtype=code)


def write_model(path, state_dict, config, kind="LSTM", weights="float32") -> None:
    """Write ``state_dict`` (the module's torch key names -> arrays) with ``config``
    (exactly ``kind``'s constructor arguments; batch_first and dropout default to
    False and 0.0 for the layers) atomically to ``path``. Everything is checked before
    the file is created: ``FormatError`` (a ``ValueError``) names what is wrong.

    ``weights``: the storage of a layer or cell ("float32", "float16", "int8"); for a
    reduced one ``state_dict`` is its ``reduced_state_dict()`` (arrays in the dtypes
    the C core stores, int8 row scales under "<key>_scale"), written as it is. A
    Sequential's recurrent layers say theirs in their config entries ("weights")."""
    path = fileio.display_name(path)
    _check_kind(kind, path)
    if kind == "Sequential":
        if weights != "float32":
            raise FormatError(f"{path}: a Sequential records the weights of each recurrent layer in its "
                              f"config entry, not in weights=")
        cfg = _sequential_config(config, path)
    else:
        _check_storage(weights, path, _REDUCED_VERSION)
        cfg = _layer_config(config, kind, path)
    shapes = {k: np.shape(v) for k, v in state_dict.items()}
    storage = _check_tensors(shapes, cfg, path, kind, weights)
    stored = {k: _stored_array(state_dict, k, s, path) for k, s in storage.items()}
    _check_scales(shapes, storage, path)
    arrays = {}
    for k, s in storage.items():
        arrays[k] = stored[k]
        if s == "int8":
            arrays[k + SCALE_SUFFIX] = _stored_array(state_dict, k + SCALE_SUFFIX, "float32", path)
    for k, a in arrays.items():
        _check_values(k, STORAGES.get(storage.get(k), "F32"), a, path)
    reduced = any(s != "float32" for s in storage.values())

    meta = {"format": FORMAT, "format_version": _REDUCED_VERSION if reduced else FORMAT_VERSIONS[0],
            "kind": kind, "config": json.dumps(cfg, sort_keys=True)}
    if weights != "float32":
        meta["weights"] = weights
    header = {"__metadata__": meta}
    pos = 0
    for k, a in arrays.items():
        header[k] = {"dtype": _DTYPE_CODES[a.dtype.str], "shape": list(a.shape),
                     "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % 8)  # the spec allows trailing spaces; keeps data 8-byte aligned

    with fileio.atomic_writer(path) as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for a in arrays.values():
            fh.write(a.tobytes())


_DTYPE_CODES = {np.dtype(c).str: name for name, c in readers.SAFETENSORS_DTYPES.items()
                if name in STORAGES.values()}


def _check_head(fh, size, src):
    """Refuse absurd header sizes before reading the rest of a file (only where the
    file looks like safetensors; anything else is named after the whole read)."""
    head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack_from("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise FormatError(f"{src}: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
        if 8 + n > size:
            raise FormatError(f"{src}: header length {n} runs past the end of the {size}-byte file")


def file_kind(data):
    """The kind our model file ``data`` (bytes-like) records, checked only as far as its
    metadata (read_model checks the rest), or None for any other file."""
    if readers.sniff(data) != "safetensors":
        return None
    try:
        _, meta = parse_safetensors(data)
    except ValueError:
        return None
    if not meta or meta.get("format") != FORMAT:
        return None
    return meta.get("kind", "")


def dequantize(tensors):
    """Stored arrays (as read_stored or reduced_state_dict give them) as the float32
    state dict the model computes with: float16 widened, int8 times its row scales."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(k + SCALE_SUFFIX)
        out[k] = v.astype(np.float32) if scale is None else v.astype(np.float32) * scale[:, None]
    return out


@fileio.reports_out_of_memory
def read_model(path=None, name: str | None = None, *, data=None):
    """Validate a model file and return ``(kind, config, state_dict)`` without building a model:
    kind is the class name, config exactly its constructor arguments, state_dict float32
    arrays under torch's key names (``getattr(lstm_infer, kind)(**config)`` then
    ``load_state_dict(state_dict)`` rebuilds the model). For reduced weights the
    arrays are the values the model computes with (see dequantize); read_stored
    gives them as stored.

    ``path``: str, bytes or os.PathLike, as for open(); the file's contents instead
    as ``data=`` (any bytes-like) or as a bytearray/memoryview in place of ``path``."""
    kind, cfg, tensors, _ = read_stored(path, name, data=data)
    return kind, cfg, dequantize(tensors)


@fileio.reports_out_of_memory
def read_stored(path=None, name: str | None = None, *, data=None):
    """As read_model, but ``(kind, config, tensors, weights)`` with the tensors as the
    file stores them (float32; float16 and int8 with "<key>_scale" row scales for
    reduced weights: what ``from_reduced_state_dict`` takes) and ``weights`` the
    storage: a name for a layer or cell, {layer name: name} of the recurrent layers
    for a Sequential (whose config entries say it too)."""
    data, src = fileio.contents(path, name, data, check=_check_head)
    readers.refuse_other_formats(data, src, "an lstm_infer model file")
    entries, meta = parse_safetensors(data, src, MAX_HEADER_BYTES)
    if not meta or meta.get("format") != FORMAT:
        raise FormatError(f"{src}: not an lstm_infer model file (no __metadata__ format={FORMAT!r}); "
                          f"convert it with 'lstm-infer convert'")
    version = meta.get("format_version")
    if version not in FORMAT_VERSIONS:
        raise FormatError(f"{src}: unsupported format_version {version!r} "
                          f"(this version reads {', '.join(map(repr, FORMAT_VERSIONS))})")
    kind = meta.get("kind")
    _check_kind(kind, src)
    try:
        cfg = json.loads(meta.get("config", ""), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{src}: config is not valid JSON ({exc})") from None
    _check_config(cfg, src, kind, version)
    weights = "float32"
    if "weights" in meta:
        if kind == "Sequential":
            raise FormatError(f"{src}: a Sequential records the weights of each recurrent layer in its "
                              f"config entry, not in the metadata")
        _check_storage(meta["weights"], src, version)
        weights = meta["weights"]
    # every dtype, shape and scale length is checked before any array is made; first
    # the dtypes no storage of this file has (all but F32 for a float32 model)
    declared = {e.get("weights", "float32") for e in cfg["layers"]} if kind == "Sequential" else {weights}
    allowed = {"F32"} if declared == {"float32"} else set(STORAGES.values())
    for k, (_, dtype, _, _, _) in entries.items():
        if dtype not in allowed:
            raise FormatError(f"{src}: tensor {k!r} has dtype {dtype}; a model of "
                              f"{' and '.join(sorted(declared))} weights holds {', '.join(sorted(allowed))} only")
    shapes = {k: e[2] for k, e in entries.items()}
    storage = _check_tensors(shapes, cfg, src, kind, weights)
    for k, s in storage.items():
        if entries[k][1] != STORAGES[s]:
            raise FormatError(f"{src}: tensor {k!r} has dtype {entries[k][1]}; {s} weights store it as {STORAGES[s]}")
    _check_scales(shapes, storage, src)
    for k, (_, dtype, _, _, _) in entries.items():
        if k not in storage and dtype != "F32":
            raise FormatError(f"{src}: tensor {k!r} has dtype {dtype}; row scales are F32")
    tensors = {}
    for k, (code, dtype, shape, b, e) in entries.items():
        view = np.frombuffer(data, dtype=code, count=(e - b) // np.dtype(code).itemsize, offset=b)
        _check_values(k, dtype, view, src)
        tensors[k] = view.reshape(shape).astype(np.dtype(code).newbyteorder("="))
    if kind == "Sequential":
        weights = {e["name"]: e.get("weights", "float32") for e in cfg["layers"]
                   if e["kind"] in detect.LAYER_KINDS}
    return kind, cfg, tensors, weights
