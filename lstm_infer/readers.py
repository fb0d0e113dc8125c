"""Read weight files into ``{name: numpy array}`` with NumPy alone.

Formats are told apart by content, not by file name: ``torch.save`` zip and
legacy archives (see :mod:`lstm_infer.torchfile`), ``.npz`` archives and
safetensors files. TorchScript archives and ONNX models are recognised and
refused with a message saying what they are. Every problem with a file is a
:class:`~lstm_infer.errors.FormatError` (a ``ValueError``) whose message starts
with the file name; a load that would produce more bytes than its budget (see
:mod:`lstm_infer.fileio`) or runs out of memory is a ``TooLargeError``, which is
both a ``FormatError`` and a ``MemoryError``.

Sources are a path (str or os.PathLike; only regular files are read) or the
file's contents (bytes, bytearray, memoryview).
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from collections.abc import Mapping

import numpy as np

from . import fileio, torchfile
from .errors import FormatError, TooLargeError, UnsafeFileError

__all__ = ["read_tensors", "read_object", "parse_safetensors", "sniff", "describe", "find_state_dict",
           "FormatError", "UnsafeFileError", "TooLargeError", "SAFETENSORS_DTYPES", "MAX_HEADER_BYTES"]

# safetensors dtype code -> NumPy dtype (little-endian)
SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1",
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
# What json.loads builds per value or key (a small object and the slot holding it;
# a dict entry and the pair it came in), charged before parsing a header: within the
# size limit, a header of empty lists ("[],[],...") would build ~28x its size. Real
# headers build ~6x theirs.
_JSON_VALUE_COST = 64
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")


def _data_and_name(path_or_bytes, name):
    if fileio.is_path(path_or_bytes) and not isinstance(path_or_bytes, bytes):
        return fileio.read_file(path_or_bytes), name or fileio.display_name(path_or_bytes)
    return fileio.as_bytes(path_or_bytes), name or "<bytes>"


# ModelProto field tags (number << 3 | wire type) that may follow ir_version (field 1)
_ONNX_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}


def _looks_like_onnx(data) -> bool:
    """An ONNX ModelProto as every exporter writes it: field 1 (ir_version, a small
    varint) first, then another ModelProto field."""
    return len(data) >= 3 and data[0] == 0x08 and 1 <= data[1] < 0x80 and data[2] in _ONNX_TAGS


def sniff(data) -> str:
    """'torch-zip', 'torch-legacy', 'npz', 'safetensors', 'torchscript', 'onnx' or 'unknown'."""
    data = fileio.as_bytes(data)
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        if torchfile.zip_directory_cost(data)[1] > fileio.load_budget(len(data)):
            return "torch-zip"  # not parsed here: its reader refuses the directory by name
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = zf.namelist()
        except Exception:  # noqa: BLE001 - a broken zip is reported by the reader
            return "torch-zip"
        if torchfile.is_torchscript(names):
            return "torchscript"
        if any(n.endswith(".npy") for n in names) or not names:
            return "npz"
        return "torch-zip"
    if torchfile.is_legacy(data):
        return "torch-legacy"
    if len(data) >= 9 and data[8:9] == b"{":
        return "safetensors"
    if _looks_like_onnx(data):
        return "onnx"
    return "unknown"


_DESCRIPTIONS = {
    "torch-zip": "a torch.save file",
    "torch-legacy": "a torch.save file (legacy format)",
    "npz": "an .npz archive",
    "safetensors": "a safetensors file",
    "torchscript": "a TorchScript archive (torch.jit.save)",
    "onnx": "an ONNX model",
}


def describe(kind: str) -> str | None:
    """What a :func:`sniff` result is, for messages ('a torch.save file', ...); None for 'unknown'."""
    return _DESCRIPTIONS.get(kind)


def refuse_other_formats(data, src: str, wanted: str) -> None:
    """For readers of one safetensors-based format (``wanted``, e.g. 'an lstm_infer
    model file'): a FormatError saying what ``data`` is if it is another known format."""
    kind = sniff(data)
    if kind in ("torchscript", "onnx"):
        raise FormatError(f"{src}: {describe(kind)}, not a state-dict file and not {wanted}; torch.save "
                          f"the module's state_dict() and run 'lstm-infer convert' on that")
    if kind != "safetensors" and describe(kind):
        raise FormatError(f"{src}: {describe(kind)}, not {wanted}; convert it with "
                          f"'lstm-infer convert {src} -o MODEL.lstm'")
    if kind == "unknown" and len(data) >= 9:  # shorter: the safetensors parser says it is truncated
        what = "a plain pickle" if data[:1] == b"\x80" else "in an unrecognised format"
        raise FormatError(f"{src}: {what}, not {wanted} (a safetensors file with lstm_infer metadata)")


# --------------------------------------------------------------- safetensors

def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"duplicate name {k!r} in header")
        out[k] = v
    return out


def _is_int(v):
    return type(v) is int


def parse_safetensors(data: bytes, src: str = "<bytes>", max_header: int = MAX_HEADER_BYTES, *, budget=None):
    """Validate a safetensors buffer and return ``(tensors, metadata)``.

    ``tensors`` maps name -> (numpy dtype code, safetensors dtype, shape, begin, end)
    with offsets absolute in ``data``; nothing is copied. Checks: header length
    against the file and ``max_header``, what parsing the header would build against
    ``budget`` (a fileio.Budget; default: the file's own), UTF-8 JSON object without
    duplicate names, known dtypes, integer shapes, offsets in range, byte span ==
    shape x itemsize, and tensors tiling the data section in order without gaps or
    overlaps.
    """
    data = fileio.as_bytes(data)
    if len(data) < 8:
        raise FormatError(f"{src}: file is {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > max_header:
        raise FormatError(f"{src}: header length {n} exceeds the limit of {max_header} bytes")
    if 8 + n > len(data):
        raise FormatError(f"{src}: header length {n} runs past the end of the {len(data)}-byte file")
    # Every value or key but the outermost follows one of these (counted inside strings
    # too: an over-estimate); the text is copied (str), and again into the strings.
    values = sum(data.count(c, 8, 8 + n) for c in (b"[", b"{", b",", b":"))
    if budget is None:
        budget = fileio.Budget(src, len(data))
    budget.charge(2 * n + values * _JSON_VALUE_COST, f"parsing the {n:,}-byte header ({values:,} values at most)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except FormatError as exc:
        raise FormatError(f"{src}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{src}: header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{src}: header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise FormatError(f"{src}: __metadata__ must map strings to strings")
    start = 8 + n
    size = len(data) - start
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{src}: tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise FormatError(f"{src}: tensor {name!r}: unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise FormatError(f"{src}: tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)
                and 0 <= offs[0] <= offs[1] <= size):
            raise FormatError(f"{src}: tensor {name!r}: data_offsets {offs!r} outside the {size}-byte data section")
        code = SAFETENSORS_DTYPES[dtype]
        nbytes = np.dtype(code).itemsize
        for s in shape:
            nbytes *= s
        if nbytes != offs[1] - offs[0]:
            raise FormatError(f"{src}: tensor {name!r}: shape {shape} of {dtype} needs {nbytes} bytes, "
                              f"data_offsets span {offs[1] - offs[0]}")
        problem = torchfile.check_shape(shape, 4 if dtype == "BF16" else np.dtype(code).itemsize)
        if problem:
            raise FormatError(f"{src}: tensor {name!r}: {problem}")
        entries[name] = (code, dtype, tuple(shape), start + offs[0], start + offs[1])
    pos = start
    for name, (_, _, _, b, e) in sorted(entries.items(), key=lambda kv: (kv[1][3], kv[1][4])):
        if b != pos:
            what = "overlaps the previous tensor" if b < pos else f"leaves a gap of {b - pos} bytes before it"
            raise FormatError(f"{src}: tensor {name!r} at offset {b - start} {what}")
        pos = e
    if pos != len(data):
        raise FormatError(f"{src}: {len(data) - pos} bytes after the last tensor are not described by the header")
    return entries, metadata


_TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32",
                "U16": "uint16", "U8": "uint8", "BOOL": "bool"}


def _safetensors_arrays(data, src, dtype_log, budget):
    entries, _ = parse_safetensors(data, src, budget=budget)
    out = {}
    for name, (code, dtype, shape, b, e) in entries.items():
        budget.charge((e - b) * (2 if dtype == "BF16" else 1), f"tensor {name!r}")
        arr = np.frombuffer(data, dtype=code, count=(e - b) // np.dtype(code).itemsize, offset=b).reshape(shape)
        arr = torchfile.to_native(arr, _TORCH_NAMES[dtype])
        out[name] = arr
        if dtype_log is not None:
            dtype_log[id(arr)] = _TORCH_NAMES[dtype]
    return out


# ---------------------------------------------------------------------- npz

def _npz_arrays(data, src, budget):
    zf, names = torchfile.open_zip(data, src, budget)  # refuses duplicate names
    out = {}
    with zf:
        for name in names:
            if not name.endswith(".npy"):
                raise FormatError(f"{src}: npz member {name!r} is not a .npy array")
            raw = torchfile.read_zip_member(zf, name, src, budget)
            key = name[:-4]
            if key in out:
                raise FormatError(f"{src}: duplicate array name {key!r}")
            out[key] = _parse_npy(raw, f"{src}[{name}]", budget, name)
    return out


# NumPy kinds that are plain numbers: bool, signed and unsigned integers, floats, complex
_NUMERIC_KINDS = "biufc"
_NPY_HEADER_READ = 1 << 16  # more than any header NumPy reads (magic, length, 10,000-byte limit)


def _parse_npy(raw, src, budget, member):
    # The header comes from a prefix (NumPy refuses headers over 10,000 bytes):
    # BytesIO would copy a whole bytearray member.
    f = io.BytesIO(bytes(memoryview(raw)[:_NPY_HEADER_READ]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's header parser warns on bad escapes
            major, minor = np.lib.format.read_magic(f)
            if (major, minor) == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif (major, minor) in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise FormatError(f"{src}: unsupported .npy version {major}.{minor}")
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/SyntaxError/... on bad headers
        raise FormatError(f"{src}: bad .npy header ({type(exc).__name__}: {exc})") from exc
    if (dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None
            or dtype.subdtype is not None or dtype.itemsize == 0):
        raise FormatError(f"{src}: dtype {dtype.str} is not a plain numeric type "
                          f"(bool, integer, float or complex; object arrays are refused)")
    problem = torchfile.check_shape(shape, dtype.itemsize)
    if problem:
        raise FormatError(f"{src}: array has {problem}")
    count = 1
    for s in shape:
        count *= s
    body = len(raw) - f.tell()
    if count * dtype.itemsize != body:
        raise FormatError(f"{src}: shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, member holds {body}")
    budget.charge(body, f"array {member!r}")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=f.tell())
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return np.array(arr, dtype=dtype.newbyteorder("="), order="C")


# --------------------------------------------------------- state-dict finding

def _name(key, src):
    """A state-dict key as text (torch's are strings; an optimizer's state uses ints)."""
    try:
        return str(key)
    except ValueError:  # an int past the 4300 digits str() allows
        raise FormatError(f"{src}: key {torchfile._short(key)} cannot be written as a name") from None


def _flatten(obj, prefix, out, src, depth=0):
    """Add every array leaf of nested mappings to ``out``; return True if only arrays were found."""
    if depth > 50:
        raise FormatError(f"{src}: mappings nested too deep")
    pure = True
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[f"{prefix}{_name(k, src)}"] = v
        elif isinstance(v, Mapping):
            pure = _flatten(v, f"{prefix}{_name(k, src)}.", out, src, depth + 1) and pure
        else:
            pure = False
    return pure


def find_state_dict(obj, src="<object>"):
    """The state dict inside a loaded object, flattened to ``{dotted name: array}``.

    Order: the object itself if its values are all arrays; else the first of
    ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``network``, ``module``
    holding tensors; else the only nested mapping of tensors; else every array leaf.
    """
    if not isinstance(obj, Mapping):
        raise FormatError(f"{src}: file holds a {type(obj).__name__}, not a mapping of tensors")
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return {_name(k, src): v for k, v in obj.items()}
    for key in _STATE_DICT_KEYS:
        sub = obj.get(key)
        if isinstance(sub, Mapping):
            found = {}
            _flatten(sub, "", found, src)
            if found:
                return found
    pure = []
    for k, v in obj.items():
        if isinstance(v, Mapping):
            sub = {}
            if _flatten(v, "", sub, src) and sub:
                pure.append(sub)
    if len(pure) == 1:
        return pure[0]
    flat = {}
    _flatten(obj, "", flat, src)
    if not flat:
        keys = ", ".join(map(torchfile._short, list(obj)[:10]))
        raise FormatError(f"{src}: no tensors found (top-level keys: {keys})")
    return flat


# ------------------------------------------------------------------- public

_ONNX_MESSAGE = ("an ONNX model, not a state-dict file: its weights are graph initializers under "
                 "exporter-chosen names; torch.save the PyTorch module's state_dict() instead")


@fileio.reports_out_of_memory
def read_object(path_or_bytes, name: str | None = None, dtype_log: dict | None = None, *,
                budget: int | None = None):
    """Load a file as it was saved: a checkpoint comes back whole (tensors as arrays).
    ``dtype_log`` receives id(array) -> dtype name as stored, where that differs from NumPy's.
    ``budget``: bytes the load may produce (default ``fileio.load_budget(file size)``)."""
    data, src = _data_and_name(path_or_bytes, name)
    kind = sniff(data)
    if kind in ("torch-zip", "torch-legacy"):
        return torchfile.load(data, src, dtype_log, budget=budget)
    budget = fileio.Budget(src, len(data), budget)
    if kind == "npz":
        return _npz_arrays(data, src, budget)
    if kind == "safetensors":
        return _safetensors_arrays(data, src, dtype_log, budget)
    if kind == "torchscript":
        raise FormatError(f"{src}: {torchfile.TORCHSCRIPT_MESSAGE}")
    if kind == "onnx":
        raise FormatError(f"{src}: {_ONNX_MESSAGE}")
    if data[:1] == b"\x80":
        raise FormatError(f"{src}: a plain pickle, not a torch.save file; refusing to unpickle it")
    raise FormatError(f"{src}: unrecognised format (expected torch.save zip or legacy file, "
                      f"safetensors or .npz)")


@fileio.reports_out_of_memory
def read_tensors(path_or_bytes, name: str | None = None, source_dtypes: dict | None = None, *,
                 budget: int | None = None) -> dict:
    """``{name: numpy array}`` from a torch.save / safetensors / npz file.

    Checkpoints are searched for their state dict (see :func:`find_state_dict`);
    nested mappings are flattened with '.'-joined keys. bfloat16 becomes float32;
    ``source_dtypes``, if given, is filled with name -> dtype as stored in the file.
    ``budget`` as for :func:`read_object`.
    """
    data, src = _data_and_name(path_or_bytes, name)
    log = {}
    sd = find_state_dict(read_object(data, src, log, budget=budget), src)
    if source_dtypes is not None:
        source_dtypes.update({k: log.get(id(v), str(v.dtype)) for k, v in sd.items()})
    return sd
