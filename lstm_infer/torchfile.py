"""Read files written by ``torch.save`` without importing torch.

Two layouts are understood:

* zip (the default since PyTorch 1.6): ``<dir>/data.pkl`` plus one raw record per
  storage under ``<dir>/data/<key>`` and an optional ``<dir>/byteorder``;
* legacy (``_use_new_zipfile_serialization=False``): a magic-number pickle, the
  protocol version, a sys-info dict, the main pickle, a pickled list of storage
  keys, then per storage an 8-byte little-endian element count and the raw bytes.

Pickles are read by :class:`_SafeUnpickler`, which resolves only an allow-list of
globals (ordered dicts, tensor-rebuild functions, storage types, dtypes). Any
other global raises :class:`~lstm_infer.errors.UnsafeFileError` before anything
is called. Tensors come back as NumPy arrays (bfloat16 widened to float32),
always as fresh C-contiguous copies.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import warnings
import zipfile

import numpy as np

from .errors import FormatError, UnsafeFileError

__all__ = ["load", "is_legacy", "read_zip_member", "to_native", "FormatError", "UnsafeFileError"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# Largest tensor we materialise beyond its storage size (stride-0 broadcasts).
_MAX_EXPANDED_BYTES = 1 << 26


class _Sealed:
    """Objects handed to the unpickler. The BUILD opcode calls ``__setstate__`` if it
    exists; refusing there stops a pickle from rewriting our objects (the dtype
    markers are shared by every load in the process)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise FormatError(f"pickle tries to set the state of a {type(self).__name__.strip('_')} object")


class _DType(_Sealed):
    """A torch dtype or storage type as seen by the unpickler (never callable)."""

    __slots__ = ("name", "np_code", "itemsize")

    def __init__(self, name, np_code, itemsize):
        self.name, self.np_code, self.itemsize = name, np_code, itemsize

    def __repr__(self):
        return f"torch.{self.name}"


# torch dtype name -> (storage class name, NumPy code with '<' standing for "file byte order", itemsize)
_DTYPES = {
    "float32": ("FloatStorage", "<f4", 4),
    "float64": ("DoubleStorage", "<f8", 8),
    "float16": ("HalfStorage", "<f2", 2),
    "bfloat16": ("BFloat16Storage", "<u2", 2),  # widened to float32 on materialisation
    "int64": ("LongStorage", "<i8", 8),
    "int32": ("IntStorage", "<i4", 4),
    "int16": ("ShortStorage", "<i2", 2),
    "int8": ("CharStorage", "i1", 1),
    "uint8": ("ByteStorage", "u1", 1),
    "bool": ("BoolStorage", "u1", 1),  # turned into np.bool_ by != 0
    "complex64": ("ComplexFloatStorage", "<c8", 8),
    "complex128": ("ComplexDoubleStorage", "<c16", 16),
    # no typed storage class: saved as UntypedStorage + _rebuild_tensor_v3(dtype)
    "uint16": ("", "<u2", 2),
    "uint32": ("", "<u4", 4),
    "uint64": ("", "<u8", 8),
}
# dtypes torch may name that NumPy cannot hold: reported clearly when a tensor uses them
_UNSUPPORTED = {"float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
                "float8_e8m0fnu": 1, "complex32": 4, "qint8": 1, "quint8": 1, "qint32": 4}
_DTYPE_BY_NAME = {n: _DType(n, c, s) for n, (_, c, s) in _DTYPES.items()}
_DTYPE_BY_NAME.update({n: _DType(n, None, s) for n, s in _UNSUPPORTED.items()})
_STORAGE_TYPES = {st: _DTYPE_BY_NAME[n] for n, (st, _, _) in _DTYPES.items() if st}
_STORAGE_TYPES["UntypedStorage"] = _DTYPE_BY_NAME["uint8"]
_DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64",
                  "int": "int32", "short": "int16"}


class _Storage(_Sealed):
    """Raw bytes of one storage; ``data`` is filled in when the bytes are known."""

    __slots__ = ("key", "dtype", "numel", "data", "base", "base_offset")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data = None  # bytes-like of at least numel * itemsize
        self.base = None  # legacy view: parent storage and element offset
        self.base_offset = 0

    def raw(self, src):
        if self.base is not None:
            start = self.base_offset * self.dtype.itemsize
            buf = self.base.raw(src)
            if start + self.numel * self.dtype.itemsize > len(buf):
                raise FormatError(f"{src}: storage view {self.key!r} runs past its base storage")
            return buf[start:start + self.numel * self.dtype.itemsize]
        if self.data is None:
            raise FormatError(f"{src}: storage {self.key!r} has no data")
        return self.data


class _Tensor(_Sealed):
    """A tensor waiting to be materialised once all storages are read."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype=None):
        if not isinstance(storage, _Storage):
            raise FormatError(f"tensor storage is a {type(storage).__name__}, not a storage")
        for name, v in (("size", size), ("stride", stride)):
            if not isinstance(v, (tuple, list)) or not all(type(x) is int for x in v):
                raise FormatError(f"tensor {name} is not a tuple of ints: {v!r}")
        if type(offset) is not int:
            raise FormatError(f"tensor storage offset is not an int: {offset!r}")
        if dtype is not None and not isinstance(dtype, _DType):
            raise FormatError(f"tensor dtype is not a torch dtype: {dtype!r}")
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.dtype = dtype or storage.dtype

    def materialise(self, src, byteorder):
        dt = self.dtype
        if dt.np_code is None:
            raise FormatError(f"{src}: tensor dtype torch.{dt.name} is not supported")
        size, stride, offset = self.size, self.stride, self.offset
        if len(size) != len(stride):
            raise FormatError(f"{src}: tensor has {len(size)} sizes but {len(stride)} strides")
        if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise FormatError(f"{src}: negative tensor size, stride or offset: size={size} stride={stride} offset={offset}")
        raw = self.storage.raw(src)
        count = len(raw) // dt.itemsize
        stride = tuple(st if n > 1 else 0 for n, st in zip(size, stride))  # unused strides may be anything
        numel = 1
        for s in size:
            numel *= s
        if numel:
            last = offset + sum((n - 1) * st for n, st in zip(size, stride))
            if last >= count:
                raise FormatError(f"{src}: tensor (size={size}, stride={stride}, offset={offset}) reads element {last} "
                                  f"of a storage with {count} elements of {dt.name}")
            if numel * dt.itemsize > max(len(raw), _MAX_EXPANDED_BYTES):
                raise FormatError(f"{src}: tensor of size {size} is implausibly large for its storage")
        code = dt.np_code if byteorder == "little" else dt.np_code.replace("<", ">")
        flat = np.frombuffer(raw, dtype=code, count=count)
        if numel:
            view = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=size, strides=[st * dt.itemsize for st in stride], writeable=False)
        else:
            view = np.zeros(size, dtype=code)
        return to_native(view, dt.name)


def to_native(view, name):
    """A fresh C-contiguous native-endian array from a raw view; ``name`` is the torch
    dtype name: bfloat16 (stored as uint16) widens exactly to float32, bool bytes
    become np.bool_. Always an ndarray, also for 0-d views."""
    if name == "bfloat16":
        return np.asarray(view.astype(np.uint32) << 16).view(np.float32)
    if name == "bool":
        return np.asarray(view != 0)
    return np.array(view, dtype=view.dtype.newbyteorder("="), order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_ignored):
    return _Tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, _Tensor):
        raise FormatError(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


class _Call(_Sealed):
    """A rebuild function as the unpickler sees it: callable, but its attributes
    (``__defaults__`` of a plain function, say) cannot be set by BUILD."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


_TORCH_UTILS = {
    "_rebuild_tensor": _Call(_rebuild_tensor),
    "_rebuild_tensor_v2": _Call(_rebuild_tensor),
    "_rebuild_tensor_v3": _Call(_rebuild_tensor_v3),
    "_rebuild_parameter": _Call(_rebuild_parameter),
    "_rebuild_parameter_with_state": _Call(_rebuild_parameter),
}


def _allowed_global(module, name):
    """The object for an allowed global, or None."""
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "torch._utils":
        return _TORCH_UTILS.get(name)
    if module == "torch":
        if name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if name in _DTYPE_BY_NAME or name in _DTYPE_ALIASES:
            return _DTYPE_BY_NAME[_DTYPE_ALIASES.get(name, name)]
        if name == "Size":  # torch.Size pickles as Size((…,)); a tuple is equivalent here
            return tuple
    if module == "torch.storage" and name == "UntypedStorage":
        return _STORAGE_TYPES["UntypedStorage"]
    return None


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and rebuilds storages."""

    def __init__(self, file, src, storage_for):
        super().__init__(file)
        self._src = src
        self._storage_for = storage_for  # (pid tuple) -> _Storage

    def find_class(self, module, name):
        obj = _allowed_global(module, name)
        if obj is None:
            raise UnsafeFileError(f"{self._src}: refusing to load global '{module}.{name}' "
                                  f"(not on the allow-list of tensor-rebuilding objects; nothing was executed)")
        return obj

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise FormatError(f"{self._src}: malformed persistent id {pid!r}")
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise FormatError(f"{self._src}: unsupported persistent id kind {kind!r}")
        return self._storage_for(pid[1:])


_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _prescan(fileobj, src):
    """Walk the opcodes without executing anything. A memo index far beyond the
    number of opcodes (which the pickler never writes) would make the C unpickler
    grow its memo table to gigabytes, so such files are refused up front."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickletools warns on bad escapes in STRING opcodes
        for n, (op, arg, pos) in enumerate(pickletools.genops(fileobj)):
            if op.name in _MEMO_PUTS and not 0 <= int(arg) <= n:
                raise FormatError(f"{src}: corrupt pickle (memo index {arg} at byte {pos})")


def _unpickle(fileobj, src, storage_for=None):
    def no_storages(_):
        raise FormatError(f"{src}: unexpected storage reference")

    try:
        start = fileobj.tell()
        _prescan(fileobj, src)
        fileobj.seek(start)
        return _SafeUnpickler(fileobj, src, storage_for or no_storages).load()
    except FormatError:
        raise
    except Exception as exc:  # any failure inside the pickle machinery means a corrupt file
        raise FormatError(f"{src}: corrupt pickle ({type(exc).__name__}: {exc})") from exc


def _check_storage_args(src, storage_type, key, numel):
    if not isinstance(storage_type, _DType):
        raise FormatError(f"{src}: storage type is not a torch storage class: {storage_type!r}")
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise FormatError(f"{src}: malformed storage reference (key={key!r}, numel={numel!r})")
    return key


def _materialise(obj, src, byteorder, dtype_log=None):
    """Replace every _Tensor in a nested structure by a NumPy array (in place for lists/dicts).
    ``dtype_log``, if given, receives id(array) -> torch dtype name as stored."""
    done = {}

    def walk(o):
        if isinstance(o, _Tensor):
            if id(o) not in done:
                done[id(o)] = arr = o.materialise(src, byteorder)
                if dtype_log is not None:
                    dtype_log[id(arr)] = o.dtype.name
            return done[id(o)]
        if isinstance(o, (dict, list)):
            if id(o) in done:
                return o
            done[id(o)] = o
            items = o.items() if isinstance(o, dict) else enumerate(o)
            for k, v in list(items):
                o[k] = walk(v)
            return o
        if isinstance(o, tuple):
            if id(o) not in done:
                done[id(o)] = o  # guards against cycles through the tuple
                done[id(o)] = tuple(walk(v) for v in o)
            return done[id(o)]
        if isinstance(o, _Storage):
            raise FormatError(f"{src}: bare storage objects are not supported")
        return o

    try:
        return walk(obj)
    except RecursionError as exc:
        raise FormatError(f"{src}: object nesting too deep") from exc
    except (OverflowError, TypeError) as exc:  # absurd sizes numpy cannot represent
        raise FormatError(f"{src}: bad tensor geometry ({exc})") from exc


# ---------------------------------------------------------------- zip format

def _find_data_pkl(names):
    hits = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1
            and (n == "data.pkl" or n.endswith("/data.pkl"))]
    return hits[0] if len(hits) == 1 else None


def read_zip_member(zf, name, src, limit_total):
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise FormatError(f"{src}: archive has no record {name!r}") from None
    # A compressed member's declared size is bounded by deflate's ~1032:1 ratio and the file size.
    if info.file_size > limit_total * 1032 + 1024 or (
            info.compress_type == zipfile.ZIP_STORED and info.file_size > limit_total):
        raise FormatError(f"{src}: record {name!r} claims {info.file_size} bytes, more than the file can hold")
    try:
        return zf.read(info)
    except Exception as exc:  # noqa: BLE001 - zipfile/zlib raise many unrelated types
        raise FormatError(f"{src}: cannot read record {name!r} ({type(exc).__name__}: {exc})") from exc


def _load_zip(data: bytes, src: str, dtype_log=None):
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{src}: not a readable zip archive ({type(exc).__name__}: {exc})") from exc
    with zf:
        pkl = _find_data_pkl(names)
        if pkl is None:
            raise FormatError(f"{src}: zip archive has no single 'data.pkl'; not a torch.save file")
        root = pkl[: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = read_zip_member(zf, root + "byteorder", src, len(data)).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise FormatError(f"{src}: unknown byteorder record {byteorder!r}")
        storages = {}

        def storage_for(args):
            if len(args) != 4:
                raise FormatError(f"{src}: storage reference has {len(args)} fields, expected 4")
            storage_type, key, _location, numel = args
            key = _check_storage_args(src, storage_type, key, numel)
            if key not in storages:
                st = _Storage(key, storage_type, numel)
                raw = read_zip_member(zf, f"{root}data/{key}", src, len(data))
                need = numel * storage_type.itemsize
                if len(raw) < need:
                    raise FormatError(f"{src}: storage {key!r} is truncated: record has {len(raw)} bytes, "
                                      f"{numel} x {storage_type.name} needs {need}")
                st.data = memoryview(raw)[:need]
                storages[key] = st
            return storages[key]

        obj = _unpickle(io.BytesIO(read_zip_member(zf, pkl, src, len(data))), src, storage_for)
    return _materialise(obj, src, byteorder, dtype_log)


# ------------------------------------------------------------- legacy format

def is_legacy(data: bytes) -> bool:
    """True if ``data`` opens with the legacy magic-number pickle (any protocol)."""
    if data[:1] != b"\x80":
        return False
    try:  # the restricted unpickler is safe on anything; the first pickle is just an int
        return _unpickle(io.BytesIO(data[:64]), "<sniff>") == LEGACY_MAGIC
    except FormatError:
        return False


def _load_legacy(data: bytes, src: str, dtype_log=None):
    f = io.BytesIO(data)
    magic = _unpickle(f, src)
    if magic != LEGACY_MAGIC:
        raise FormatError(f"{src}: not a torch.save file (bad magic number)")
    proto = _unpickle(f, src)
    if proto != LEGACY_PROTOCOL:
        raise FormatError(f"{src}: unsupported legacy protocol version {proto!r}")
    sys_info = _unpickle(f, src)
    if not isinstance(sys_info, dict):
        raise FormatError(f"{src}: malformed sys_info record")
    storages = {}

    def storage_for(args):
        if len(args) != 5:
            raise FormatError(f"{src}: storage reference has {len(args)} fields, expected 5")
        storage_type, key, _location, numel, view = args
        key = _check_storage_args(src, storage_type, key, numel)
        if key not in storages:
            storages[key] = _Storage(key, storage_type, numel)
        root = storages[key]
        if view is None:
            return root
        # Pre-1.0 files: (view_key, element offset, element count) into the root storage.
        if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int for v in view[1:])):
            raise FormatError(f"{src}: malformed storage view {view!r}")
        vkey, voff, vsize = view
        if voff < 0 or vsize < 0 or voff + vsize > numel:
            raise FormatError(f"{src}: storage view {vkey!r} (offset {voff}, size {vsize}) outside a storage of {numel}")
        sv = _Storage(vkey, storage_type, vsize)
        sv.base, sv.base_offset = root, voff
        return sv

    obj = _unpickle(f, src, storage_for)
    keys = _unpickle(f, src)
    if not isinstance(keys, list):
        raise FormatError(f"{src}: storage key list is a {type(keys).__name__}, not a list")
    pos = f.tell()
    for key in keys:
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        st = storages.get(key)
        if st is None:
            raise FormatError(f"{src}: storage key {key!r} was never referenced")
        if pos + 8 > len(data):
            raise FormatError(f"{src}: truncated before storage {key!r}")
        (count,) = struct.unpack_from("<q", data, pos)
        pos += 8
        if count != st.numel:
            raise FormatError(f"{src}: storage {key!r} holds {count} elements, the pickle says {st.numel}")
        nbytes = count * st.dtype.itemsize
        if pos + nbytes > len(data):
            raise FormatError(f"{src}: storage {key!r} is truncated: needs {nbytes} bytes, "
                              f"{len(data) - pos} left in the file")
        st.data = memoryview(data)[pos:pos + nbytes]
        pos += nbytes
    return _materialise(obj, src, "little", dtype_log)  # legacy data is always written little-endian


# ------------------------------------------------------------------- public

def load(path_or_bytes, name: str | None = None, dtype_log: dict | None = None):
    """Load a ``torch.save`` file (zip or legacy) and return the saved object with
    every tensor replaced by a NumPy array. Raises :class:`FormatError` (a
    ``ValueError``) for anything malformed and :class:`UnsafeFileError` for a
    pickle that asks for a global outside the allow-list. ``dtype_log``, if given,
    is filled with id(array) -> torch dtype name as stored (e.g. 'bfloat16')."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, src = bytes(path_or_bytes), name or "<bytes>"
    else:
        src = name or os.fspath(path_or_bytes)
        with open(path_or_bytes, "rb") as fh:
            data = fh.read()
    if data[:4] == b"PK\x03\x04":
        return _load_zip(data, src, dtype_log)
    if is_legacy(data):
        return _load_legacy(data, src, dtype_log)
    raise FormatError(f"{src}: not a torch.save file")
