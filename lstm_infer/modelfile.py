"""Our model file: a safetensors file any safetensors reader can open.

Layout: 8-byte little-endian header length N, N bytes of JSON (padded with
spaces so the data starts 8-byte aligned), then the float32 little-endian
tensors back to back under the torch module's own key names. The header's
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

KIND "Sequential" (a whole model, lstm_infer.Sequential) has the config::

    {"batch_first": false,
     "layers": [{"name": "embedding", "kind": "Embedding",
                 "config": {"num_embeddings": 100, "embedding_dim": 16, "padding_idx": 0}},
                {"name": "lstm", "kind": "LSTM", "config": {<LSTM's arguments>}},
                {"name": "final", "kind": "Readout", "config": {"mode": "final"}},
                {"name": "fc", "kind": "Linear", "config": {...}}, ...]}

each layer's config exactly its constructor's arguments (lstm_infer.pipeline.ARGS;
the recurrent layers' batch_first equal to the model's), and the tensors under
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

__all__ = ["write_model", "read_model", "FORMAT", "FORMAT_VERSION", "KINDS", "CONFIG_KEYS_BY_KIND"]

FORMAT = "lstm_infer"
FORMAT_VERSION = "1"
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


def _check_config(cfg, src, kind="LSTM"):
    if not isinstance(cfg, dict):
        raise FormatError(f"{src}: config is a {type(cfg).__name__}, not an object")
    if kind == "Sequential":
        _check_sequential(cfg, src)
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
    if cfg["hidden_size"] < 1 or cfg.get("num_layers", 1) < 1:
        raise FormatError(f"{src}: config hidden_size" + (" and num_layers" if "num_layers" in cfg else "")
                          + " must be at least 1")
    if cfg.get("proj_size", 0) >= cfg["hidden_size"]:
        raise FormatError(f"{src}: config proj_size {cfg['proj_size']} must be below hidden_size {cfg['hidden_size']}")


def _check_sequential(cfg, src):
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
        if not isinstance(e, dict) or set(e) != {"name", "kind", "config"}:
            raise FormatError(f"{src}: layer {i} must be an object with exactly name, kind and config")
        name, kind, c = e["name"], e["kind"], e["config"]
        where = f"{src}: layer {i} ({name!r})" if isinstance(name, str) and len(name) < 200 else \
            f"{src}: layer {i}"
        if kind in detect.LAYER_KINDS:
            _check_config(c, where, kind)
            if c["batch_first"] != cfg["batch_first"]:
                raise FormatError(f"{where}: batch_first {c['batch_first']} differs from the model's")
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
    """The tensors of a Sequential, in the order written: exactly those of its layers."""
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
    keys = []
    for e in cfg["layers"]:
        prefix, kind, c = e["name"] + ".", e["kind"], e["config"]
        mine = owned[e["name"]]
        where = f"{src}: layer {e['name']!r}"
        if kind in detect.LAYER_KINDS:
            own = _check_shapes(mine, c, where, kind) if mine else []
            if not own:
                raise FormatError(f"{where}: the {kind}'s tensors are missing")
        else:
            want = detect.other_shapes(kind, c) if kind in detect.OTHER_KINDS else {}
            for k, shape in want.items():
                if k not in mine:
                    raise FormatError(f"{where}: tensor {prefix + k!r} is missing")
                if tuple(mine[k]) != tuple(shape):
                    raise FormatError(f"{where}: tensor {prefix + k!r} has shape {list(mine[k])}, the "
                                      f"{kind} needs {list(shape)}")
            own = list(want)
        extra = set(mine) - set(own)
        if extra:
            raise FormatError(f"{where}: unexpected tensors {sorted(prefix + k for k in extra)[:8]}")
        keys += [prefix + k for k in own]
    return keys


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
        cfg = json.loads(json.dumps({"batch_first": config["batch_first"], "layers": layers}))
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{path}: not a Sequential's config ({type(exc).__name__}: {exc})") from None
    _check_config(cfg, path, "Sequential")
    return cfg


def write_model(path, state_dict, config, kind="LSTM") -> None:
    """Write ``state_dict`` (the module's torch key names -> arrays, stored as float32) with
    ``config`` (exactly ``kind``'s constructor arguments; batch_first and dropout default to
    False and 0.0 for the layers) atomically to ``path``. Everything is checked before the
    file is created: ``FormatError`` (a ``ValueError``) names what is wrong."""
    path = fileio.display_name(path)
    _check_kind(kind, path)
    if kind == "Sequential":
        cfg = _sequential_config(config, path)
    else:
        cfg = _layer_config(config, kind, path)
    arrays = {k: np.ascontiguousarray(v, dtype="<f4") for k, v in state_dict.items()}
    keys = _check_shapes({k: a.shape for k, a in arrays.items()}, cfg, path, kind)

    header = {"__metadata__": {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                               "config": json.dumps(cfg, sort_keys=True)}}
    pos = 0
    for k in keys:
        header[k] = {"dtype": "F32", "shape": list(arrays[k].shape), "data_offsets": [pos, pos + arrays[k].nbytes]}
        pos += arrays[k].nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % 8)  # the spec allows trailing spaces; keeps data 8-byte aligned

    with fileio.atomic_writer(path) as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for k in keys:
            fh.write(arrays[k].tobytes())


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


@fileio.reports_out_of_memory
def read_model(path=None, name: str | None = None, *, data=None):
    """Validate a model file and return ``(kind, config, state_dict)`` without building a model:
    kind is the class name, config exactly its constructor arguments, state_dict float32
    arrays under torch's key names (``getattr(lstm_infer, kind)(**config)`` then
    ``load_state_dict(state_dict)`` rebuilds the model).

    ``path``: str, bytes or os.PathLike, as for open(); the file's contents instead
    as ``data=`` (any bytes-like) or as a bytearray/memoryview in place of ``path``."""
    data, src = fileio.contents(path, name, data, check=_check_head)
    readers.refuse_other_formats(data, src, "an lstm_infer model file")
    entries, meta = parse_safetensors(data, src, MAX_HEADER_BYTES)
    if not meta or meta.get("format") != FORMAT:
        raise FormatError(f"{src}: not an lstm_infer model file (no __metadata__ format={FORMAT!r}); "
                          f"convert it with 'lstm-infer convert'")
    if meta.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{src}: unsupported format_version {meta.get('format_version')!r} "
                          f"(this version reads {FORMAT_VERSION!r})")
    kind = meta.get("kind")
    _check_kind(kind, src)
    try:
        cfg = json.loads(meta.get("config", ""), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{src}: config is not valid JSON ({exc})") from None
    _check_config(cfg, src, kind)
    for k, (_, dtype, _, _, _) in entries.items():
        if dtype != "F32":
            raise FormatError(f"{src}: tensor {k!r} has dtype {dtype}, model files hold F32 only")
    _check_shapes({k: e[2] for k, e in entries.items()}, cfg, src, kind)
    sd = {k: np.frombuffer(data, dtype="<f4", count=(e - b) // 4, offset=b).reshape(shape).astype(np.float32)
          for k, (_, _, shape, b, e) in entries.items()}
    return kind, cfg, sd
