"""Our model file: a safetensors file any safetensors reader can open.

Layout: 8-byte little-endian header length N, N bytes of JSON (padded with
spaces so the data starts 8-byte aligned), then the float32 little-endian
tensors back to back under torch's ``nn.LSTM`` key names. The header's
``__metadata__`` holds::

    {"format": "lstm_infer", "format_version": "1", "kind": "LSTM",
     "config": "<JSON of input_size, hidden_size, num_layers, bias, batch_first,
                 dropout, bidirectional, proj_size>"}

Written and read with NumPy only; loading checks every size and offset against
the file before touching tensor data.
"""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import numpy as np

from . import detect, fileio, readers
from .errors import FormatError
from .readers import _no_duplicates, parse_safetensors

__all__ = ["save_model", "load_model", "write_model", "read_model", "FORMAT", "FORMAT_VERSION"]

FORMAT = "lstm_infer"
FORMAT_VERSION = "1"
KIND = "LSTM"
# A model's header lists a few dozen tensors; anything near this is not ours.
MAX_HEADER_BYTES = 1 << 20
_INT_KEYS = ("input_size", "hidden_size", "num_layers", "proj_size")
_BOOL_KEYS = ("bias", "batch_first", "bidirectional")
CONFIG_KEYS = frozenset(_INT_KEYS + _BOOL_KEYS + ("dropout",))


def _check_config(cfg, src):
    if not isinstance(cfg, dict):
        raise FormatError(f"{src}: config is a {type(cfg).__name__}, not an object")
    missing, extra = CONFIG_KEYS - set(cfg), set(cfg) - CONFIG_KEYS
    if missing or extra:
        raise FormatError(f"{src}: config keys wrong (missing {sorted(missing)}, unexpected {sorted(extra)})")
    for k in _INT_KEYS:
        if type(cfg[k]) is not int or cfg[k] < 0:
            raise FormatError(f"{src}: config {k} must be a non-negative integer, got {cfg[k]!r}")
    for k in _BOOL_KEYS:
        if type(cfg[k]) is not bool:
            raise FormatError(f"{src}: config {k} must be true or false, got {cfg[k]!r}")
    if type(cfg["dropout"]) not in (int, float) or not 0 <= cfg["dropout"] <= 1:
        raise FormatError(f"{src}: config dropout must be a number in [0, 1], got {cfg['dropout']!r}")
    if cfg["hidden_size"] < 1 or cfg["num_layers"] < 1:
        raise FormatError(f"{src}: config hidden_size and num_layers must be at least 1")
    if cfg["proj_size"] >= cfg["hidden_size"]:
        raise FormatError(f"{src}: config proj_size {cfg['proj_size']} must be below hidden_size {cfg['hidden_size']}")


def _check_shapes(shapes, cfg, src):
    """shapes: name -> shape tuple. They must be exactly the tensors of ``cfg``."""
    sd = {k: SimpleNamespace(shape=s) for k, s in shapes.items()}
    try:
        specs = detect.find_lstms(sd)
    except ValueError as exc:
        raise FormatError(f"{src}: {exc}") from None
    if len(specs) != 1 or specs[0].prefix != "" or specs[0].kind != "LSTM":
        raise FormatError(f"{src}: tensors do not form one nn.LSTM (names: {sorted(shapes)[:8]})")
    spec = specs[0]
    extra = set(shapes) - set(spec.keys)
    if extra:
        raise FormatError(f"{src}: unexpected tensors {sorted(extra)}")
    for k, v in spec.config.items():
        if cfg[k] != v:
            raise FormatError(f"{src}: config says {k}={cfg[k]!r} but the tensor shapes give {v!r}")
    return spec.keys


def write_model(path, state_dict, config) -> None:
    """Write ``state_dict`` (torch key names -> arrays) with ``config`` atomically to ``path``
    (str, bytes or os.PathLike; see :func:`lstm_infer.fileio.atomic_writer`)."""
    path = fileio.display_name(path)
    cfg = {k: config.get(k, d) for k, d in (("batch_first", False), ("dropout", 0.0))}
    cfg.update({k: config[k] for k in CONFIG_KEYS if k in config})
    cfg = {k: (bool(v) if k in _BOOL_KEYS else int(v) if k in _INT_KEYS else float(v)) for k, v in cfg.items()}
    _check_config(cfg, path)
    arrays = {k: np.ascontiguousarray(v, dtype="<f4") for k, v in state_dict.items()}
    keys = _check_shapes({k: a.shape for k, a in arrays.items()}, cfg, path)

    header = {"__metadata__": {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": KIND,
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


def save_model(model, path) -> None:
    """Save an :class:`lstm_infer.LSTM` to ``path`` (atomic: temp file + rename)."""
    write_model(path, model.state_dict(), model.config)


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
    """Validate a model file and return ``(config, state_dict)`` without building a model.

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
    if meta.get("kind") != KIND:
        raise FormatError(f"{src}: unsupported model kind {meta.get('kind')!r}")
    try:
        cfg = json.loads(meta.get("config", ""), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{src}: config is not valid JSON ({exc})") from None
    _check_config(cfg, src)
    for k, (_, dtype, _, _, _) in entries.items():
        if dtype != "F32":
            raise FormatError(f"{src}: tensor {k!r} has dtype {dtype}, model files hold F32 only")
    _check_shapes({k: e[2] for k, e in entries.items()}, cfg, src)
    sd = {k: np.frombuffer(data, dtype="<f4", count=(e - b) // 4, offset=b).reshape(shape).astype(np.float32)
          for k, (_, _, shape, b, e) in entries.items()}
    return cfg, sd


def load_model(path=None, name: str | None = None, *, data=None):
    """Load a model file written by :func:`save_model` as an :class:`lstm_infer.LSTM`
    (arguments as for :func:`read_model`)."""
    cfg, sd = read_model(path, name, data=data)
    from .model import LSTM  # late: model.py imports this module lazily too

    model = LSTM(**cfg)
    model.load_state_dict(sd, strict=True)
    return model
