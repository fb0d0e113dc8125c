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
import copy
import io
import itertools
import pickle
import pickletools
import reprlib
import struct
import warnings
import zipfile
import zlib

import numpy as np

from . import fileio
from .errors import FormatError, UnsafeFileError

__all__ = ["load", "is_legacy", "open_zip", "read_zip_member", "to_native", "check_shape", "FormatError",
           "UnsafeFileError", "MAX_NESTING", "ZIP_ENTRY_COST", "zip_directory", "zip_directory_cost",
           "charge_zip_directory"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# Largest tensor we materialise beyond its storage size (stride-0 broadcasts). The
# whole load is bounded as well, by its budget (see lstm_infer.fileio).
_MAX_EXPANDED_BYTES = 1 << 26
# Deepest object nesting a pickle may build (a torch state dict needs ~6 levels; a
# checkpoint a few more per nested dict). Deeper objects are refused before
# unpickling: hashing a dict key of tuples nested ~10**6 deep overflows the C stack.
MAX_NESTING = 200
_MAX_NDIM = 64  # NumPy's limit
_MAX_INTP = 2**63 - 1


class _Malformed(Exception):
    """Raised by the objects the unpickler builds; reported as a FormatError naming the file."""


def check_shape(shape, itemsize):
    """Why NumPy could not hold an array of ``shape`` (a tuple of non-negative ints)
    and ``itemsize``, or None: more than 64 dimensions, or more bytes than an
    address can count (NumPy multiplies the non-zero sizes, even for empty arrays)."""
    if len(shape) > _MAX_NDIM:
        return f"{len(shape)} dimensions (NumPy allows {_MAX_NDIM})"
    total = itemsize
    for s in shape:
        total *= s or 1
    if total > _MAX_INTP:
        return f"shape {_short(tuple(shape))} is too large to represent"
    return None


class _Sealed:
    """Objects handed to the unpickler. The BUILD opcode calls ``__setstate__`` if it
    exists; refusing there stops a pickle from rewriting our objects (the dtype
    markers are shared by every load in the process)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _Malformed(f"pickle tries to set the state of a {type(self).__name__.strip('_')} object")


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
            raise _Malformed(f"tensor storage is a {type(storage).__name__}, not a storage")
        for name, v in (("size", size), ("stride", stride)):
            if not isinstance(v, (tuple, list)) or not all(type(x) is int for x in v):
                raise _Malformed(f"tensor {name} is not a tuple of ints: {_short(v)}")
        if type(offset) is not int:
            raise _Malformed(f"tensor storage offset is not an int: {_short(offset)}")
        if dtype is not None and not isinstance(dtype, _DType):
            raise _Malformed(f"tensor dtype is not a torch dtype: {_short(dtype)}")
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.dtype = dtype or storage.dtype

    def materialise(self, src, byteorder, budget=None):
        dt = self.dtype
        if dt.np_code is None:
            raise FormatError(f"{src}: tensor dtype torch.{dt.name} is not supported")
        size, stride, offset = self.size, self.stride, self.offset
        if len(size) != len(stride):
            raise FormatError(f"{src}: tensor has {len(size)} sizes but {len(stride)} strides")
        if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise FormatError(f"{src}: negative tensor size, stride or offset: size={_short(size)} "
                              f"stride={_short(stride)} offset={_short(offset)}")
        out_itemsize = 4 if dt.name == "bfloat16" else dt.itemsize  # widened on the way out
        problem = check_shape(size, out_itemsize)
        if problem:
            raise FormatError(f"{src}: tensor has {problem}")
        raw = self.storage.raw(src)
        count = len(raw) // dt.itemsize
        stride = tuple(st if n > 1 else 0 for n, st in zip(size, stride))  # unused strides may be anything
        numel = 1
        for s in size:
            numel *= s
        if numel:
            last = offset + sum((n - 1) * st for n, st in zip(size, stride))
            if last >= count:
                raise FormatError(f"{src}: tensor (size={_short(size)}, stride={_short(stride)}, "
                                  f"offset={_short(offset)}) reads element {_short(last)} of a storage with "
                                  f"{count} elements of {dt.name}")
            if numel * dt.itemsize > max(len(raw), _MAX_EXPANDED_BYTES):
                raise FormatError(f"{src}: tensor of size {size} is implausibly large for its storage")
        if budget is not None:
            budget.charge(numel * out_itemsize, f"tensor of size {size} ({dt.name})")
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
        out = np.asarray(view.astype(np.uint32))
        out <<= 16  # in place: no second temporary of the widened size
        return out.view(np.float32)
    if name == "bool":
        return np.asarray(view != 0)
    return np.array(view, dtype=view.dtype.newbyteorder("="), order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_ignored):
    return _Tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, _Tensor):
        raise _Malformed(f"parameter data is a {type(data).__name__}, not a tensor")
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
            raise FormatError(f"{self._src}: malformed persistent id {_short(pid)}")
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise FormatError(f"{self._src}: unsupported persistent id kind {_short(kind)}")
        return self._storage_for(pid[1:])


_MARK = object()
# How the prescan simulates each opcode: (action, count, pushes, cost, item cost).
# Generic opcodes pop ``count`` items (MARK_POP: everything down to the mark, then
# ``count`` more) and push ``pushes`` new objects one level deeper than the deepest
# item popped.
(_LEAF, _LEAF_DATA, _LEAF_NEW, _GENERIC, _MARK_POP, _PUT, _MEMOIZE, _GET, _PUSH_MARK, _DUP, _POP, _IN_PLACE,
 _IN_PLACE_MARK, _NOTHING) = range(14)

# What unpickling builds, in bytes, charged to the load's budget by the prescan (a
# few KB of deflated EMPTY_DICT opcodes unpickle to gigabytes, ~70 bytes per byte):
# the deepest stack, the memo, and the objects the opcodes make (CPython's sizes, or
# those of the prescan's own record of them, freed before unpickling, if larger; plus
# ``item cost`` per item put in a container) beyond _FREE_FACTOR x the pickle's size.
# A torch.save state dict's pickle builds 9-13x its size (~0.9 KB per tensor); the
# allowance keeps files that are mostly pickle (many small tensors, legacy format)
# within the budget's 4x their size, as they were before pickles were charged.
_FREE_FACTOR = 4
_SLOT_COST = 8  # a stack slot (the unpickler's and the prescan's)
_MEMO_COST = 16  # a memo slot (the unpickler's table doubles as it grows)
_SIMULATED_COST = 64  # the prescan's record of an object that may hold others


def _simulation_table():
    special = {"PUT": _PUT, "BINPUT": _PUT, "LONG_BINPUT": _PUT, "MEMOIZE": _MEMOIZE, "GET": _GET,
               "BINGET": _GET, "LONG_BINGET": _GET, "MARK": _PUSH_MARK, "DUP": _DUP, "POP": _POP}
    # opcodes that add the items above them (down to a mark, or a fixed number) to
    # the container below them, which stays on the stack
    in_place = {"APPEND": 1, "SETITEM": 2, "BUILD": 1, "APPENDS": None, "SETITEMS": None, "ADDITEMS": None}
    # leaves pushing an object that CPython shares (None, bools, ints below 256, the empty
    # tuple) or one that exists already (globals, extensions): only their stack slot
    shared = {"NONE", "NEWTRUE", "NEWFALSE", "BININT1", "EMPTY_TUPLE", "GLOBAL", "EXT1", "EXT2", "EXT4"}
    # leaves whose size grows with their argument (added to the cost): strings, bytes, long ints
    data = {"STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
            "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "LONG", "LONG1", "LONG4"}
    # costs other than the defaults below: a dict entry, a set, a rebuilt object, a storage
    costs = {"EMPTY_SET": 216, "FROZENSET": 216, "REDUCE": 96, "NEWOBJ": 96, "NEWOBJ_EX": 96, "OBJ": 96,
             "INST": 96, "PERSID": 80, "BINPERSID": 80}
    item_costs = {"SETITEM": 40, "SETITEMS": 40, "DICT": 40, "ADDITEMS": 32, "FROZENSET": 32, "BUILD": 40}
    table = {}
    for op in pickletools.opcodes:
        before, after = op.stack_before, len(op.stack_after)
        item = item_costs.get(op.name, 8)
        if op.name in special:
            table[op] = (special[op.name], 0, 0, 0, 0)
        elif op.name in in_place:
            count = in_place[op.name]
            table[op] = (_IN_PLACE, count, 0, 0, item) if count else (_IN_PLACE_MARK, 0, 0, 0, item)
        elif pickletools.markobject in before:
            cost = costs.get(op.name, _SIMULATED_COST) if after else 0
            table[op] = (_MARK_POP, before.index(pickletools.markobject), after, cost, item if after else 0)
        elif not before and not after:
            table[op] = (_NOTHING, 0, 0, 0, 0)
        elif not before:
            assert after == 1, op.name
            if op.name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
                table[op] = (_LEAF_NEW, 0, 1, costs.get(op.name, _SIMULATED_COST), 0)
            elif op.name in shared:
                table[op] = (_LEAF, 0, 1, 0, 0)
            else:  # numbers, strings, a storage: 24-80 bytes, plus their contents
                table[op] = (_LEAF_DATA if op.name in data else _LEAF, 0, 1, costs.get(op.name, 32), 0)
        else:
            table[op] = (_GENERIC, len(before), after, costs.get(op.name, _SIMULATED_COST) if after else 0, 0)
    return table


_SIMULATION = _simulation_table()


class _Repr(reprlib.Repr):
    def repr_int(self, x, level):
        # str() refuses ints past 4300 digits (ValueError), and a message needs no such digits
        if x.bit_length() > 256:
            return f"<{'negative ' if x < 0 else ''}int of {x.bit_length():,} bits>"
        return super().repr_int(x, level)


_REPR = _Repr()
_REPR.maxlevel, _REPR.maxother, _REPR.maxstring = 3, 60, 60


def _short(obj):
    """A bounded repr of a value from a pickle, for messages."""
    try:
        return _REPR.repr(obj)
    except Exception:  # noqa: BLE001 - a message must not fail
        return f"<{type(obj).__name__}>"


def _prescan(fileobj, src, budget=None, what="unpickling"):
    """Walk the opcodes without executing anything, simulating the unpickler's stack
    with each object's nesting depth. Refused up front:

    * a memo index far beyond the number of opcodes (which the pickler never
      writes): the C unpickler would grow its memo table to gigabytes;
    * objects nested more than MAX_NESTING deep: hashing a deep tuple (as a dict
      key) recurses in C without a limit and overflows the stack, and every
      recursive walk over the result (ours, repr) would fail;
    * a pickle building more than ``budget`` (a fileio.Budget) allows, charged as
      the opcodes are met (see _FREE_FACTOR; ``what`` names the pickle in the
      message): a few kilobytes of deflated EMPTY_DICT opcodes would otherwise
      unpickle to gigabytes.

    A depth is tracked per object (a one-byte bytearray shared by the stack and the
    memo: mutable, holds any depth up to MAX_NESTING, and unlike a list is not
    tracked by the garbage collector, whose passes over millions of cells tripled
    the scan's time), so items added to a container later through the memo count too.
    Tuples and frozensets, the only hashable containers, are immutable: their depth
    is exact when they are built, which is what makes hashing safe. Leaves that
    hold no objects share one depth cell: only a malformed pickle adds items to
    one, which can only raise the shared depth (an over-estimate, never under)."""
    stack, memo = [], []
    filled = 0  # memo entries set (where MEMOIZE stores)
    leaf = bytearray(1)
    start = fileobj.tell()
    objects, memo_bytes, high = 0, 0, 0  # bytes of objects and memo; the deepest stack seen
    allowance = float("inf") if budget is None else budget.limit - budget.used
    pos = 0

    def check(end):
        """Charge what was built up to byte ``end`` if it is past the allowance (raises)."""
        cost = _SLOT_COST * high + memo_bytes + max(0, objects - _FREE_FACTOR * (end - start))
        if cost > allowance:
            budget.charge(cost, what)

    def underflow():
        return FormatError(f"{src}: corrupt pickle (stack underflow at byte {pos})")

    def pop_to_mark():
        items = []
        while stack and stack[-1] is not _MARK:
            items.append(stack.pop())
        if not stack:
            raise FormatError(f"{src}: corrupt pickle (no mark at byte {pos})")
        stack.pop()
        return items

    def pop(count):
        if len(stack) < count or any(x is _MARK for x in stack[len(stack) - count:]):
            raise underflow()
        items = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        return items

    def too_deep():
        return FormatError(f"{src}: pickle nests objects more than {MAX_NESTING} levels deep "
                           f"(at byte {pos}); refusing it")

    table = _SIMULATION
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickletools warns on bad escapes in STRING opcodes
        for n, (op, arg, pos) in enumerate(pickletools.genops(fileobj)):
            action, count, pushes, price, item_price = table[op]
            objects += price
            if not n & 255:  # now and then, to keep the loop fast: the stack (peaks in between
                high = max(high, len(stack))  # missed by at most 512 slots), the budget
                check(pos)
            if action == _LEAF:
                stack.append(leaf)
                continue
            if action == _LEAF_DATA:
                stack.append(leaf)
                objects += arg.bit_length() >> 3 if type(arg) is int else len(arg)
                continue
            if action == _LEAF_NEW:
                stack.append(bytearray(1))
                continue
            if action == _NOTHING:
                continue
            if action == _PUT or action == _MEMOIZE:
                idx = int(arg) if action == _PUT else filled
                if not 0 <= idx <= n:
                    raise FormatError(f"{src}: corrupt pickle (memo index {arg} at byte {pos})")
                if not stack or stack[-1] is _MARK:
                    raise underflow()
                if idx >= len(memo):
                    memo_bytes += _MEMO_COST * (idx + 1 - len(memo))
                    check(pos)
                    memo.extend(itertools.repeat(None, idx + 1 - len(memo)))
                if memo[idx] is None:
                    filled += 1
                memo[idx] = stack[-1]
            elif action == _GET:
                # a missing entry is the unpickler's error to report
                stack.append(memo[arg] if 0 <= arg < len(memo) and memo[arg] is not None else leaf)
            elif action == _PUSH_MARK:
                stack.append(_MARK)
            elif action == _DUP:
                stack += pop(1) * 2
            elif action == _POP:
                if not stack:
                    raise underflow()
                stack.pop()  # the C unpickler's POP also removes a mark
            else:
                if action == _GENERIC or action == _IN_PLACE:
                    items = pop(count)
                else:  # _MARK_POP, _IN_PLACE_MARK
                    items = pop_to_mark() + pop(count)
                objects += item_price * len(items)
                if len(items) > 64:  # else left to the periodic check
                    check(pos)
                if not pushes and action in (_GENERIC, _MARK_POP):
                    continue  # nothing made of the items (STOP, POP_MARK)
                depth = 1 + max([x[0] for x in items]) if items else 0
                if depth > MAX_NESTING:
                    raise too_deep()
                if action == _IN_PLACE or action == _IN_PLACE_MARK:
                    if not stack or stack[-1] is _MARK:
                        raise underflow()
                    container = stack[-1]
                    if depth > container[0]:
                        container[0] = depth
                else:
                    stack.extend(bytearray((depth,)) for _ in range(pushes))
    if budget is not None:
        budget.charge(_SLOT_COST * high + memo_bytes + max(0, objects - _FREE_FACTOR * (fileobj.tell() - start)),
                      what)


def _unpickle(fileobj, src, storage_for=None, budget=None, what="unpickling"):
    """The object pickled in ``fileobj``, after a prescan (see _prescan) charging
    ``budget`` for what it builds."""
    def no_storages(_):
        raise FormatError(f"{src}: unexpected storage reference")

    try:
        start = fileobj.tell()
        _prescan(fileobj, src, budget, what)
        fileobj.seek(start)
        return _SafeUnpickler(fileobj, src, storage_for or no_storages).load()
    except FormatError:
        raise
    except _Malformed as exc:
        raise FormatError(f"{src}: {exc}") from None
    except Exception as exc:  # any failure inside the pickle machinery means a corrupt file
        raise FormatError(f"{src}: corrupt pickle ({type(exc).__name__}: {_short_text(exc)})") from exc


def _short_text(exc, limit=200):
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_storage_args(src, storage_type, key, numel):
    if not isinstance(storage_type, _DType):
        raise FormatError(f"{src}: storage type is not a torch storage class: {_short(storage_type)}")
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise FormatError(f"{src}: malformed storage reference (key={_short(key)}, numel={_short(numel)})")
    return key


def _materialise(obj, src, byteorder, dtype_log=None, budget=None):
    """Replace every _Tensor in a nested structure by a NumPy array (in place for lists/dicts).
    ``dtype_log``, if given, receives id(array) -> torch dtype name as stored; ``budget``
    (a fileio.Budget) is charged for every array made."""
    done = {}

    def walk(o):
        if isinstance(o, _Tensor):
            if id(o) not in done:
                done[id(o)] = arr = o.materialise(src, byteorder, budget)
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


def is_torchscript(names) -> bool:
    """True if zip member ``names`` are those of a ``torch.jit.save`` archive: its
    compiled code (``code/``) and constants beside data.pkl. Only the folder holding
    data.pkl counts: torch names an archive's root folder after the file, so
    ``torch.save(sd, "code.pt")`` writes ``code/data.pkl``."""
    pkl = _find_data_pkl(names)
    if pkl is not None:
        root = pkl[: -len("data.pkl")]
        return any(n.startswith(root + "code/") or n == root + "constants.pkl" for n in names)
    # no single data.pkl (as in TorchScript archives before PyTorch 1.4): any top folder
    return any(n.endswith("constants.pkl") and n.count("/") <= 1 or "/code/" in n or n.startswith("code/")
               for n in names)


# What zipfile builds for each central directory entry (a ZipInfo, its name and
# fields: ~650 bytes measured), charged to the load's budget before it parses them,
# past a free 4x the directory's own bytes (as the budget allows 4x the file; torch's
# directories are ~90 bytes an entry): a crafted 48 MB directory of a million empty
# entries took 22 s and 690 MB.
ZIP_ENTRY_COST = 640


def _directory_span(tail: bytes, base: int):
    """``(start, end)`` offsets of the central directory of a zip whose last bytes are
    ``tail`` (starting at offset ``base``), found as zipfile finds it: the end record
    at the very end or, past a comment, in the last 64 KiB + 22 bytes, then the zip64
    end record just before it if its locator is there. None without an end record."""
    end = len(tail) - 22
    if end < 0:
        return None
    if tail[end:end + 4] != b"PK\x05\x06" or tail[end + 20:end + 22] != b"\0\0":
        end = tail.rfind(b"PK\x05\x06", max(0, len(tail) - 22 - (1 << 16)))
        if end < 0 or end + 22 > len(tail):
            return None
    size, location = int.from_bytes(tail[end + 12:end + 16], "little"), end
    z64 = end - 20 - 56  # the zip64 end record, if its locator sits just before
    if z64 >= 0 and tail[end - 20:end - 16] == b"PK\x06\x07" and tail[z64:z64 + 4] == b"PK\x06\x06":
        size, location = int.from_bytes(tail[z64 + 40:z64 + 48], "little"), z64
    return max(0, base + location - size), base + location


_TAIL = (1 << 16) + 22 + 76  # what _directory_span may look at: a comment, the end records


def zip_directory(data) -> tuple[int, int]:
    """``(entries, nbytes)``: at most how many entries zipfile finds in the central
    directory of the zip archive ``data`` (bytes, or a binary file open for reading,
    whose position this leaves anywhere), and the directory's size: the entry
    signatures in the span zipfile parses. (0, 0) without an end record (zipfile
    refuses such data)."""
    sig = b"PK\x01\x02"
    if isinstance(data, (bytes, bytearray)):
        span = _directory_span(data, 0)
        return (0, 0) if span is None else (data.count(sig, *span), span[1] - span[0])
    size = data.seek(0, 2)
    data.seek(max(0, size - _TAIL))
    span = _directory_span(data.read(), max(0, size - _TAIL))
    if span is None:
        return 0, 0
    entries, pos, carry = 0, span[0], b""
    data.seek(pos)
    while pos < span[1]:  # in chunks, a signature split between two counted once
        chunk = carry + data.read(min(1 << 20, span[1] - pos))
        if len(chunk) == len(carry):
            break
        pos += len(chunk) - len(carry)
        entries += chunk.count(sig)
        carry = chunk[-3:]  # too short to hold a signature: none is counted twice
    return entries, span[1] - span[0]


def zip_directory_cost(data) -> tuple[int, int]:
    """``(entries, bytes charged)`` for parsing the directory of the zip archive ``data``
    (as for :func:`zip_directory`)."""
    entries, nbytes = zip_directory(data)
    return entries, max(0, entries * ZIP_ENTRY_COST - fileio.BUDGET_FACTOR * nbytes)


def charge_zip_directory(data, src, budget=None):
    """Charges parsing the directory of the zip archive ``data`` (bytes or an open file)
    to ``budget`` (a fileio.Budget; default: one of the file's own), before zipfile
    parses it: TooLargeError past it."""
    entries, cost = zip_directory_cost(data)
    if budget is None:
        budget = fileio.Budget(src, len(data) if isinstance(data, (bytes, bytearray)) else data.seek(0, 2))
    budget.charge(cost, f"the zip directory of {entries:,} entries")


def open_zip(data, src, budget=None):
    """``(ZipFile, member names)`` of the zip archive ``data``, its directory charged to
    ``budget`` (a fileio.Budget; default: one of the file's own) before it is parsed.
    Archives naming a member twice are refused: readers disagree on which copy counts
    (torch's reads one, Python's zipfile another)."""
    charge_zip_directory(data, src, budget)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{src}: not a readable zip archive ({type(exc).__name__}: {exc})") from exc
    if len(set(names)) != len(names):
        seen = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        zf.close()
        raise FormatError(f"{src}: zip archive holds more than one record named {_short(dup)}; refusing it "
                          f"(readers disagree on which copy counts)")
    return zf, names


# Zip compression methods torch's reader (miniz) handles, and names of others for messages
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_OTHER_METHODS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 9: "Deflate64", 93: "Zstandard"}
_READ_CHUNK = 1 << 20


def read_zip_member(zf, name, src, budget):
    """The bytes (a bytearray) of member ``name``, charged to ``budget`` (a
    fileio.Budget: its ``file_size`` also bounds what the member may claim). Only
    stored and DEFLATE members are read, as torch does; a member is read in chunks
    and refused as soon as it yields more bytes than it declares."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise FormatError(f"{src}: archive has no record {_short(name)}") from None
    if info.compress_type not in _ZIP_METHODS:
        method = _OTHER_METHODS.get(info.compress_type, "an unknown method")
        raise FormatError(f"{src}: record {_short(name)} is compressed with {method} "
                          f"(zip method {info.compress_type}); only stored and DEFLATE records are read, "
                          f"as by torch.load")
    # A compressed member's declared size is bounded by deflate's ~1032:1 ratio and the file size.
    limit_total = budget.file_size
    if info.file_size > limit_total * 1032 + 1024 or (
            info.compress_type == zipfile.ZIP_STORED and info.file_size > limit_total):
        raise FormatError(f"{src}: record {_short(name)} claims {info.file_size} bytes, more than the file can hold")
    # Every member read counts, stored ones too: entries of a crafted central
    # directory may all point at the same bytes.
    what = f"record {_short(name)}" + ("" if info.compress_type == zipfile.ZIP_STORED else " (inflated)")
    budget.charge(info.file_size, what)
    size = info.file_size
    out = bytearray(size)
    # zipfile.read() would inflate up to 2 GiB at once and cut the result silently at
    # the declared size: read in chunks, letting one byte more than declared through
    # to see a member that lies. Its CRC is checked here, after the size.
    probe = copy.copy(info)
    probe.file_size, probe.CRC = size + 1, None
    got, crc = 0, 0
    try:
        with zf.open(probe) as fh:
            while True:
                chunk = fh.read(min(_READ_CHUNK, size + 1 - got))
                if not chunk:
                    break
                if got + len(chunk) > size:
                    raise FormatError(f"{src}: record {_short(name)} holds more than the {size:,} bytes it declares; "
                                      f"refusing it as corrupt or hostile")
                out[got:got + len(chunk)] = chunk
                crc = zlib.crc32(chunk, crc)
                got += len(chunk)
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/zlib raise many unrelated types
        raise FormatError(f"{src}: cannot read record {_short(name)} "
                          f"({type(exc).__name__}: {_short_text(exc)})") from exc
    if got != size:
        raise FormatError(f"{src}: record {_short(name)} is truncated: {got:,} of the {size:,} bytes it declares")
    if crc != info.CRC:
        raise FormatError(f"{src}: record {_short(name)} fails its CRC-32 check (corrupt)")
    return out


def _load_zip(data: bytes, src: str, dtype_log, budget):
    zf, names = open_zip(data, src, budget)
    with zf:
        if is_torchscript(names):
            raise FormatError(f"{src}: {TORCHSCRIPT_MESSAGE}")
        pkl = _find_data_pkl(names)
        if pkl is None:
            raise FormatError(f"{src}: zip archive has no single 'data.pkl'; not a torch.save file")
        root = pkl[: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = read_zip_member(zf, root + "byteorder", src, budget).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise FormatError(f"{src}: unknown byteorder record {_short(byteorder)}")
        storages = {}

        def storage_for(args):
            if len(args) != 4:
                raise FormatError(f"{src}: storage reference has {len(args)} fields, expected 4")
            storage_type, key, _location, numel = args
            key = _check_storage_args(src, storage_type, key, numel)
            if key not in storages:
                st = _Storage(key, storage_type, numel)
                raw = read_zip_member(zf, f"{root}data/{key}", src, budget)
                need = numel * storage_type.itemsize
                if len(raw) < need:
                    raise FormatError(f"{src}: storage {_short(key)} is truncated: record has {len(raw)} bytes, "
                                      f"{_short(numel)} x {storage_type.name} needs {_short(need)}")
                st.data = memoryview(raw)[:need]
                storages[key] = st
            return storages[key]

        obj = _unpickle(io.BytesIO(read_zip_member(zf, pkl, src, budget)), src, storage_for, budget,
                        f"unpickling record {pkl!r}")
    return _materialise(obj, src, byteorder, dtype_log, budget)


# ------------------------------------------------------------- legacy format

def is_legacy(data: bytes) -> bool:
    """True if ``data`` opens with the legacy magic-number pickle (any protocol)."""
    if data[:1] != b"\x80":
        return False
    try:  # the restricted unpickler is safe on anything; the first pickle is just an int
        return _unpickle(io.BytesIO(data[:64]), "<sniff>") == LEGACY_MAGIC
    except FormatError:
        return False


def _load_legacy(data: bytes, src: str, dtype_log, budget):
    f = io.BytesIO(data)
    what = "unpickling the file's pickles"
    magic = _unpickle(f, src, None, budget, what)
    if magic != LEGACY_MAGIC:
        raise FormatError(f"{src}: not a torch.save file (bad magic number)")
    proto = _unpickle(f, src, None, budget, what)
    if proto != LEGACY_PROTOCOL:
        raise FormatError(f"{src}: unsupported legacy protocol version {_short(proto)}")
    sys_info = _unpickle(f, src, None, budget, what)
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
            raise FormatError(f"{src}: malformed storage view {_short(view)}")
        vkey, voff, vsize = view
        if voff < 0 or vsize < 0 or voff + vsize > numel:
            raise FormatError(f"{src}: storage view {_short(vkey)} (offset {_short(voff)}, size {_short(vsize)}) "
                              f"outside a storage of {_short(numel)}")
        sv = _Storage(vkey, storage_type, vsize)
        sv.base, sv.base_offset = root, voff
        return sv

    obj = _unpickle(f, src, storage_for, budget, what)
    keys = _unpickle(f, src, None, budget, what)
    if not isinstance(keys, list):
        raise FormatError(f"{src}: storage key list is a {type(keys).__name__}, not a list")
    pos = f.tell()
    for key in keys:
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if not isinstance(key, str):  # torch writes strings; a list here would not even hash
            raise FormatError(f"{src}: storage key {_short(key)} in the storage key list is not a string")
        st = storages.get(key)
        if st is None:
            raise FormatError(f"{src}: storage key {_short(key)} was never referenced")
        if pos + 8 > len(data):
            raise FormatError(f"{src}: truncated before storage {_short(key)}")
        (count,) = struct.unpack_from("<q", data, pos)
        pos += 8
        if count != st.numel:
            raise FormatError(f"{src}: storage {_short(key)} holds {count} elements, "
                              f"the pickle says {_short(st.numel)}")
        nbytes = count * st.dtype.itemsize
        if pos + nbytes > len(data):
            raise FormatError(f"{src}: storage {_short(key)} is truncated: needs {nbytes} bytes, "
                              f"{len(data) - pos} left in the file")
        st.data = memoryview(data)[pos:pos + nbytes]
        pos += nbytes
    return _materialise(obj, src, "little", dtype_log, budget)  # legacy data is always written little-endian


# ------------------------------------------------------------------- public

TORCHSCRIPT_MESSAGE = ("a TorchScript archive (torch.jit.save), not a state-dict file: it holds compiled code, "
                       "whose objects are not unpickled here; load it with torch.jit.load and torch.save its "
                       "state_dict() instead")


@fileio.reports_out_of_memory
def load(path_or_bytes, name: str | None = None, dtype_log: dict | None = None, *, budget: int | None = None):
    """Load a ``torch.save`` file (zip or legacy) and return the saved object with
    every tensor replaced by a NumPy array.

    ``path_or_bytes``: a path (str or os.PathLike; only regular files are read) or
    the file's contents (bytes, bytearray, memoryview).

    Raises :class:`FormatError` (a ``ValueError``) for anything malformed,
    :class:`UnsafeFileError` for a pickle that asks for a global outside the
    allow-list, and :class:`~lstm_infer.errors.TooLargeError` past the load's
    ``budget`` of bytes (default ``fileio.load_budget(file size)``).
    ``dtype_log``, if given, is filled with id(array) -> torch dtype name as stored
    (e.g. 'bfloat16')."""
    if fileio.is_path(path_or_bytes) and not isinstance(path_or_bytes, bytes):
        src = name or fileio.display_name(path_or_bytes)

        def check_magic(fh, _size):  # say "not a torch.save file" before reading a large file
            if fh.read(1) not in (b"P", b"\x80"):
                raise FormatError(f"{src}: not a torch.save file")

        data = fileio.read_file(path_or_bytes, check=check_magic)
    else:
        data, src = fileio.as_bytes(path_or_bytes), name or "<bytes>"
    budget = fileio.Budget(src, len(data), budget)
    if data[:4] == b"PK\x03\x04":
        return _load_zip(data, src, dtype_log, budget)
    if is_legacy(data):
        return _load_legacy(data, src, dtype_log, budget)
    raise FormatError(f"{src}: not a torch.save file")
