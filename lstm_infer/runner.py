"""Batch inference over datasets: length bucketing under a token budget, streaming
inputs and outputs, progress. The engine behind :func:`lstm_infer.predict`,
:func:`lstm_infer.predict_iter`, ``lstm-infer run`` and :mod:`lstm_infer.dask`.

Bucketing
    Sequences are read into a *look-ahead window* until it holds
    ``WINDOW_FACTOR * batch_tokens`` time steps (or ``WINDOW_MAX_SEQUENCES``
    sequences), sorted by length (longest first, ties in input order) and cut into
    batches whose padded size ``max_len * batch`` stays within ``batch_tokens``; a
    sequence longer than the budget forms a batch of its own. Every sequence's output
    is bit-identical to calling the model on it alone (the core computes each sequence
    of a ragged batch independently), so bucketing changes no result.

Memory
    Bounded by the budget, not by the dataset: at most one window of inputs, one padded
    batch and its output are held (a generator is consumed one window at a time).
    ``lstm-infer run`` streams ragged ``.npz`` inputs record by record and spills outputs
    to a temp file next to OUTPUT, assembled into the ``.npz`` at the end.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import shutil
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import fileio, torchfile

__all__ = ["predict", "predict_iter", "run", "RunStats", "BadRecordError", "DEFAULT_BATCH_TOKENS",
           "WINDOW_FACTOR", "expand_inputs", "iter_records", "output_name_for"]

# Padded steps per batch. Measured (tools/bench_run.py, nlp-like data, Zen 3, 2 threads):
# 8-16k steps run 1.05x a fixed-32 loop, 64k steps 0.88x: a batch's outputs (~2 KB a
# step at width 512) then outgrow the caches and come from fresh pages every batch.
DEFAULT_BATCH_TOKENS = 16384
WINDOW_FACTOR = 4
WINDOW_MAX_SEQUENCES = 65536
# A batch's padded steps stay within this many times the steps of its window (see _run_window).
PAD_FACTOR = 2


class BadRecordError(ValueError):
    """A record that cannot be a sequence for the model (names file and record)."""

    def __init__(self, name, reason, index=None):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason
        self.index = index  # the sequence's position, for predict's inputs

    def __reduce__(self):  # pickled (from a Dask worker) with its fields
        return type(self), (self.name, self.reason, self.index)


@dataclass
class RunStats:
    sequences: int = 0
    tokens: int = 0          # valid time steps
    padded: int = 0          # time steps computed, padding included (sum of max_len * batch)
    batches: int = 0
    seconds: float = 0.0
    skipped: list = field(default_factory=list)   # "name: reason"

    @property
    def padding_fraction(self):
        return 1.0 - self.tokens / self.padded if self.padded else 0.0

    def summary(self):
        t = max(self.seconds, 1e-9)
        line = (f"{self.sequences} sequences, {self.tokens} tokens in {self.seconds:.2f} s: "
                f"{self.sequences / t:,.1f} seq/s, {self.tokens / t:,.0f} tokens/s, "
                f"{self.batches} batches, padding {100 * self.padding_fraction:.1f}%")
        if self.skipped:
            line += f"; skipped {len(self.skipped)} bad record(s): " + "; ".join(self.skipped)
        return line


# ------------------------------------------------------------------ model

def _as_model(model):
    # a model file holding the wrong kind of model is a bad value: a ValueError naming the
    # file (one line from the CLI); a wrong object passed in stays a TypeError
    path = fileio.display_name(model) if fileio.is_path(model) else None
    if path is not None:
        from . import load
        model = load(model)
    from .model import _Layer
    from .sequential import Sequential
    if isinstance(model, Sequential):
        if any(m.kind in _RECURRENT for m in model):
            return model
        what = f"a Sequential ({model.pipeline}) without a recurrent layer"
        hint = ": call it on the data directly"
    elif isinstance(model, _Layer):
        return model
    else:
        from .detect import article
        what, hint = f"{article(type(model).__name__)} {type(model).__name__}", ""
    need = "a recurrent layer (LSTM, GRU, RNN) or a Sequential with one"
    if path is not None:
        raise ValueError(f"{path}: holds {what}; running over sequences needs {need}{hint}")
    raise TypeError(f"predict needs {need} (or a path to one), not {what}{hint}")


_RECURRENT = ("LSTM", "GRU", "RNN")


def _per_sequence(model):
    """True when the model gives one vector per sequence (a Sequential whose readout is not steps)."""
    return getattr(model, "readout", None) not in (None, "steps")


def _out_width(model):
    """The width of each output row."""
    if hasattr(model, "out_features"):
        return model.out_features
    return model.num_directions * model.out_size


def _check_sequence(model, arr, name):
    """``arr`` as a (T, input_size) float32 array, or for a model that starts with an
    Embedding a (T,) array of token ids in range; or BadRecordError."""
    if not isinstance(arr, np.ndarray):
        try:
            arr = np.asarray(arr)
        except (ValueError, TypeError) as exc:
            raise BadRecordError(name, f"not an array ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise BadRecordError(name, f"non-numeric values (dtype {arr.dtype})")
    if getattr(model, "takes_ids", False):
        vocab = model.layers[0][1].num_embeddings
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            what = f"shape {arr.shape}" if arr.ndim != 1 else f"dtype {arr.dtype}"
            raise BadRecordError(name, f"the model starts with an Embedding: a sequence is a 1-D array of "
                                 f"integer token ids, got {what}")
        if arr.size and (arr.min() < 0 or arr.max() >= vocab):
            bad = int(arr.min() if arr.min() < 0 else arr.max())
            raise BadRecordError(name, f"token id {bad} is out of range for the Embedding of {vocab} entries")
        return arr.astype(np.int64, copy=False)
    width = model.in_features if hasattr(model, "in_features") else model.input_size
    if arr.ndim == 1 and arr.dtype.kind in "iu":
        first = model.layers[0][1].kind if hasattr(model, "layers") else model.kind
        raise BadRecordError(name, f"is a sequence of {arr.shape[0]} token ids, but the model's first layer "
                             f"({first}) takes float features of width {width}; token ids "
                             f"need a model that starts with an Embedding")
    if arr.ndim != 2 or (width is not None and arr.shape[1] != width):
        raise BadRecordError(name, f"wrong shape {arr.shape}: expected (length, {width})")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


# ------------------------------------------------------------------ bucketing

def _batches(lengths, batch_tokens):
    """Index lists (into ``lengths``): longest first, padded size within the budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch, top = [], 0
    for i in order:
        if batch and top * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        if not batch:
            top = lengths[i]
        batch.append(i)
    if batch:
        yield batch


def _run_window(model, window, batch_tokens, stats, progress):
    """Runs one window of (key, array); yields (key, output) batch by batch."""
    lengths = [a.shape[0] for _, a in window]
    width = _out_width(model)
    vector = _per_sequence(model)
    # A budget far above the data (--batch-tokens 10**12) would pad one long sequence's
    # length for every short one in the window: the padded block stays within
    # PAD_FACTOR x the window's own steps (and one sequence alone always fits).
    real = sum(max(n, 1) for n in lengths)
    batch_tokens = min(batch_tokens, max(DEFAULT_BATCH_TOKENS, PAD_FACTOR * real))
    for idx in _batches(lengths, batch_tokens):
        T = lengths[idx[0]]
        if T == 0 and not vector:  # only empty sequences left: nothing to compute
            for i in idx:
                yield window[i][0], np.zeros((0, width), np.float32)
            stats.sequences += len(idx)
            stats.batches += 1
            progress.update(len(idx), 0)
            continue
        B = len(idx)
        lens = np.array([lengths[i] for i in idx], np.int64)
        T = max(T, 1)  # empty sequences still have an output (h_0 through the head): one padded step
        sample = window[idx[0]][1]
        x = np.zeros((T, B) + sample.shape[1:], sample.dtype)  # token id 0 pads: never read
        for b, i in enumerate(idx):
            x[:lens[b], b] = window[i][1]
        if model.batch_first:
            x = x.swapaxes(0, 1)
        out = model(x, lengths=lens)
        if isinstance(out, tuple):  # a recurrent layer: (output, state)
            out = out[0]
        if vector:
            outs = [out[b].copy() for b in range(B)]
        elif model.batch_first:
            outs = [out[b, :lens[b]].copy() for b in range(B)]
        else:
            outs = [out[:lens[b], b].copy() for b in range(B)]
        del x, out
        n = int(lens.sum())
        stats.sequences += B
        stats.tokens += n
        stats.padded += T * B
        stats.batches += 1
        progress.update(B, n)
        for b, i in enumerate(idx):
            yield window[i][0], outs[b]
            outs[b] = None
        for i in idx:
            window[i] = None


def _engine(model, items, batch_tokens, stats, progress, window_tokens=None):
    """items: iterable of (key, (T, input_size) float32 array). Yields (key, output) as
    batches finish; reads ``window_tokens`` steps ahead (default WINDOW_FACTOR * batch_tokens)."""
    batch_tokens = int(batch_tokens)
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}")
    window_tokens = WINDOW_FACTOR * batch_tokens if window_tokens is None else int(window_tokens)
    window, held = [], 0
    for key, arr in items:
        window.append((key, arr))
        held += max(arr.shape[0], 1)
        if held >= window_tokens or len(window) >= WINDOW_MAX_SEQUENCES:
            yield from _run_window(model, window, batch_tokens, stats, progress)
            window, held = [], 0
    if window:
        yield from _run_window(model, window, batch_tokens, stats, progress)


# ------------------------------------------------------------------ progress

class _Progress:
    """A tqdm bar (sequences/s, tokens/s) when wanted and possible; otherwise nothing."""

    def __init__(self, enabled, total=None):
        self.bar, self.tokens, self.start = None, 0, time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="seq", dynamic_ncols=True, file=sys.stderr)

    def update(self, seqs, tokens):
        self.tokens += tokens
        if self.bar is not None:
            dt = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens / dt:,.0f} tokens/s", refresh=False)
            self.bar.update(seqs)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------ Python API

def predict_iter(model, sequences, batch_tokens=DEFAULT_BATCH_TOKENS, progress=False, *,
                 window_tokens=None, stats=None):
    """Yields ``(index, output)`` as batches finish (not in input order).

    ``model``: a recurrent layer, a Sequential with a recurrent layer, or a path to a
    model file. ``sequences``: any iterable of ``(T_i, input_size)`` float arrays, or of
    ``(T_i,)`` token ids for a model that starts with an Embedding; a generator is read
    one look-ahead window at a time (``window_tokens``, default ``WINDOW_FACTOR *
    batch_tokens`` steps). ``output`` is the model's output for that sequence alone: a
    layer's per-step output ``(T_i, D * out)``; a Sequential's ``(T_i, out_features)``
    with the readout ``steps`` (or none), else one vector ``(out_features,)``.
    ``progress=True`` shows a tqdm bar (if tqdm is installed). ``stats``: a RunStats
    to fill in."""
    model = _as_model(model)
    stats = RunStats() if stats is None else stats
    total = len(sequences) if hasattr(sequences, "__len__") else None
    items = ((i, _checked(model, s, i)) for i, s in enumerate(sequences))
    bar = _Progress(progress, total)
    start = time.perf_counter()
    try:
        yield from _engine(model, items, batch_tokens, stats, bar, window_tokens)
    finally:
        bar.close()
        stats.seconds = time.perf_counter() - start


def _checked(model, seq, i):
    try:
        return _check_sequence(model, seq, f"sequence {i}")
    except BadRecordError as exc:
        exc.index = i
        raise


def predict(model, sequences, batch_tokens=DEFAULT_BATCH_TOKENS, progress=False, **kwargs):
    """Per-sequence outputs of ``model`` as a list in input order (see predict_iter)."""
    results = {}
    for i, y in predict_iter(model, sequences, batch_tokens, progress, **kwargs):
        results[i] = y
    return [results[i] for i in range(len(results))]


# ------------------------------------------------------------------ inputs

INPUT_SUFFIXES = (".npy", ".npz", ".jsonl")


def expand_inputs(inputs):
    """Input paths as given, directories and globs expanded (sorted) to their .npy files."""
    paths = []
    for raw in inputs:
        p = fileio.display_name(raw)
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(glob.escape(p), "*.npy")))
            if not found:
                raise ValueError(f"{p}: directory holds no .npy files")
            paths.extend(found)
        elif not os.path.exists(p) and glob.has_magic(p):
            found = sorted(glob.glob(p))
            if not found:
                raise ValueError(f"{p}: no file matches")
            paths.extend(found)
        else:
            paths.append(p)
    for p in paths:
        if not p.endswith(INPUT_SUFFIXES):
            raise ValueError(f"{p}: unsupported input (expected .npy, .npz or .jsonl)")
        if not os.path.exists(p):
            raise FileNotFoundError(2, "No such file or directory", p)
        if not p.endswith(".jsonl"):  # np.load and zipfile would wait on a FIFO; .jsonl may stream from one
            fileio._require_regular(os.stat(p), p, "read")
    return paths


def _npy_header(fh):
    """(shape, fortran_order, dtype) from the .npy header at ``fh``; ValueError if malformed."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        return np.lib.format.read_array_header_2_0(fh)
    except (ValueError, EOFError, SyntaxError) as exc:
        raise ValueError(f"not a readable .npy header ({exc})") from None


def _check_declared(shape, dtype, available):
    """The bytes the header's ``shape`` and ``dtype`` declare; ValueError when more than the
    ``available`` bytes of the file (a corrupt header must not make us allocate terabytes)."""
    if any(n < 0 for n in shape):
        raise ValueError(f"the header declares a negative dimension {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > available:
        raise ValueError(f"the header declares shape {shape} of {dtype} ({nbytes:,} bytes), but the file "
                         f"holds {available:,} bytes")
    return nbytes


def _load_npy(path):
    """np.load of the .npy file ``path``, its declared size checked against the file's first."""
    with fileio.open_regular(path) as fh:
        shape, _, dtype = _npy_header(fh)
        _check_declared(shape, dtype, os.fstat(fh.fileno()).st_size)
        fh.seek(0)
        return np.load(fh, allow_pickle=False)


# DEFLATE expands at most ~1032:1: a member claiming more is corrupt
_DEFLATE_RATIO = 1032
# what a damaged member raises while read
_MEMBER_ERRORS = (ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


def _member_size(info):
    """The bytes a zip member can really hold, for checking its .npy header against."""
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return min(info.file_size, info.compress_size * _DEFLATE_RATIO + 1024)
    return info.file_size


@contextlib.contextmanager
def _reading(path, member):
    """Errors from reading ``member`` of the .npz ``path`` name both."""
    try:
        yield
    except _MEMBER_ERRORS as exc:
        raise ValueError(f"{path}: member {member!r}: {exc}") from None
    except MemoryError:
        raise ValueError(f"{path}: member {member!r}: out of memory reading it") from None


def _npz_lengths(zf, path):
    with _reading(path, "lengths.npy"), zf.open("lengths.npy") as fh:
        shape, _, dtype = _npy_header(fh)
        _check_declared(shape, dtype, _member_size(zf.getinfo("lengths.npy")))
    with _reading(path, "lengths.npy"), zf.open("lengths.npy") as fh:
        lengths = np.lib.format.read_array(fh, allow_pickle=False)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or (lengths.size and lengths.min() < 0):
        raise ValueError(f"{path}: 'lengths' must be a 1-D array of non-negative integers")
    return lengths


def _open_npz(path):
    fh = fileio.open_regular(path)
    try:
        torchfile.charge_zip_directory(fh, fileio.display_name(path))
        fh.seek(0)
        return zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        fh.close()
        raise ValueError(f"{path}: not a readable .npz ({exc})") from None
    except BaseException:
        fh.close()
        raise


def _iter_npz(path):
    """(name, array) per record of a ragged .npz, read record by record from the zip."""
    zf = _open_npz(path)
    with zf, zf.fp:
        members = set(zf.namelist())
        if not {"data.npy", "lengths.npy"} <= members:
            raise ValueError(f"{path}: a ragged .npz needs arrays 'data' and 'lengths'")
        lengths = _npz_lengths(zf, path)
        with _reading(path, "data.npy"):
            fh = zf.open("data.npy")
        with fh:
            with _reading(path, "data.npy"):
                shape, fortran, dtype = _npy_header(fh)
            if len(shape) not in (1, 2) or dtype.hasobject:
                raise ValueError(f"{path}: 'data' must be a 1-D or 2-D numeric array, got {shape} {dtype}")
            total = sum(lengths.tolist())  # Python ints: a sum that wraps around must not match
            if total != shape[0]:
                raise ValueError(f"{path}: 'lengths' sum to {total}, but 'data' has {shape[0]} rows")
            with _reading(path, "data.npy"):
                _check_declared(shape, dtype, _member_size(zf.getinfo("data.npy")))
            if fortran and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
                with _reading(path, "data.npy"), zf.open("data.npy") as whole:
                    data = np.asfortranarray(np.lib.format.read_array(whole, allow_pickle=False))
                pos = 0
                for i, n in enumerate(lengths.tolist()):
                    yield f"{path}[{i}]", np.ascontiguousarray(data[pos:pos + n])
                    pos += n
                return
            row = shape[1] if len(shape) == 2 else 1
            for i, n in enumerate(lengths.tolist()):
                nbytes = n * row * dtype.itemsize
                with _reading(path, "data.npy"):
                    buf = fh.read(nbytes)
                if len(buf) != nbytes:
                    raise ValueError(f"{path}: 'data' is truncated")
                arr = np.frombuffer(buf, dtype).reshape((n,) + tuple(shape[1:]))
                yield f"{path}[{i}]", arr


def _parse_jsonl_record(line):
    text = line.strip()
    if not text:
        raise ValueError("empty line")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc.args[0]})") from None
    except RecursionError:  # a bad record like any other, not a crash
        raise ValueError("lists nested too deeply (a sequence is a list of feature rows)") from None
    if not isinstance(obj, list):
        raise ValueError(f"expected a list of feature rows (or of token ids), got {type(obj).__name__}")
    try:
        arr = np.array(obj)
    except ValueError:
        raise ValueError("rows of different widths") from None
    except RecursionError:
        raise ValueError("lists nested too deeply (a sequence is a list of feature rows)") from None
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError("non-numeric values")
    if arr.size == 0:
        raise ValueError("empty sequence")
    return arr


def _iter_jsonl(path):
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            name = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
                yield name, _parse_jsonl_record(line)
            except (ValueError, UnicodeDecodeError) as exc:
                reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
                yield name, BadRecordError(name, reason)


def iter_records(paths):
    """(name, array or BadRecordError) for every record of the input files, in order."""
    for p in paths:
        if p.endswith(".npy"):
            try:
                arr = _load_npy(p)
            except (ValueError, OSError, EOFError) as exc:
                yield p, BadRecordError(p, f"not a readable .npy ({exc})")
                continue
            yield p, arr
        elif p.endswith(".npz"):
            yield from _iter_npz(p)
        else:
            yield from _iter_jsonl(p)


def _count_records(paths):
    """The number of records when cheap to know (file count, npz lengths), else None."""
    n = 0
    for p in paths:
        if p.endswith(".npy"):
            n += 1
        elif p.endswith(".npz"):
            try:
                with _open_npz(p) as zf, zf.fp:
                    n += int(_npz_lengths(zf, p).shape[0])
            except Exception:  # _iter_npz reports it
                return None
        else:
            return None
    return n


# ------------------------------------------------------------------ outputs

def _temp_path(directory, base, suffix):
    return fileio.temp_path(directory, base, suffix)  # within NAME_MAX in bytes, not characters


@contextlib.contextmanager
def _naming(name):
    """OSErrors inside name the user's path ``name``, not our hidden temp files."""
    try:
        yield
    except OSError as exc:
        named = fileio._named(exc, name)
        if named is exc:
            raise
        raise named from None


def _member(name):
    """A zip entry with a fixed time stamp: the same outputs give the same bytes."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


class _RaggedWriter:
    """Outputs spilled to a temp file as they come, assembled into a ragged .npz
    (``data``, ``lengths``, ``names``, ``skipped``) in input order at the end. A model
    that gives one vector per sequence writes one row each: ``data`` (N, out) and every
    length 1."""

    def __init__(self, path, width):
        self.path, self.width = path, width
        directory, base = os.path.split(os.path.abspath(path))
        self.spill_path = _temp_path(directory, base, ".spill")
        with _naming(path):
            self.spill = open(self.spill_path, "x+b")
        self.where = {}  # key -> (offset, rows)
        self.end = 0

    def add(self, key, out):
        rows = out.shape[0] if out.ndim == 2 else 1  # one vector per sequence: one row
        buf = np.ascontiguousarray(out, np.float32).tobytes()
        with _naming(self.path):  # e.g. ENOSPC
            self.spill.write(buf)
        self.where[key] = (self.end, rows)
        self.end += len(buf)

    def finish(self, names, skipped):
        self.spill.flush()
        fd = self.spill.fileno()
        n = len(names)
        lengths = np.array([self.where[k][1] for k in range(n)], np.int64)
        rows = int(lengths.sum())
        with fileio.atomic_writer(self.path) as fh:
            with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                with zf.open(_member("data.npy"), "w", force_zip64=True) as member:
                    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                              "fortran_order": False, "shape": (rows, self.width)}
                    np.lib.format.write_array_header_1_0(member, header)
                    for k in range(n):
                        off, t = self.where[k]
                        size = t * self.width * 4
                        while size:
                            chunk = os.pread(fd, min(size, 1 << 24), off)
                            member.write(chunk)
                            off += len(chunk)
                            size -= len(chunk)
                for key, value in (("lengths", lengths), ("names", np.array(names, dtype=str)),
                                   ("skipped", np.array(skipped, dtype=str))):
                    with zf.open(_member(key + ".npy"), "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, value, allow_pickle=False)

    def abort(self):
        pass

    def close(self):
        self.spill.close()
        try:
            os.unlink(self.spill_path)
        except OSError:
            pass


def output_name_for(path):
    """The file name ``run`` writes into an output directory for one input file."""
    base = os.path.basename(path)
    return base if base.endswith(".npy") else os.path.splitext(base)[0] + ".npz"


class _NpyDirWriter:
    """One .npy per .npy input, mirrored by base name into a directory; written into a
    hidden temp directory and moved in at the end, so an interrupted run leaves nothing.
    Into an existing directory: every target is checked before the run, and a failure
    while moving the files in puts the old ones back (all or nothing)."""

    def __init__(self, outdir, names):
        self.outdir = outdir
        self.tmp = None
        bases = [os.path.basename(p) for p in names]
        dup = {b for b in bases if bases.count(b) > 1} if len(set(bases)) != len(bases) else set()
        if dup:
            raise ValueError(f"inputs share base names {sorted(dup)[:5]}; cannot mirror them into one directory")
        self.bases = bases
        self.created = not os.path.isdir(outdir)
        if self.created:
            if os.path.lexists(outdir):
                raise FileNotFoundError(errno.ENOENT, "is a dangling symbolic link; refusing to write through it",
                                        outdir)
            parent = os.path.dirname(os.path.abspath(outdir))
            if not os.path.isdir(parent):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", outdir)
        else:
            parent = outdir
            for base in bases:
                self._check_target(os.path.join(outdir, base))
        with _naming(outdir):
            tmp = _temp_path(parent, os.path.basename(os.path.abspath(outdir)), ".tmpdir")
            os.mkdir(tmp)
        self.tmp = tmp
        self.key_to_base = {}

    @staticmethod
    def _check_target(target):
        """What atomic_writer refuses: a directory, FIFO or device, a dangling link, a read-only file."""
        if os.path.lexists(target):
            try:
                fileio._write_target(target, target)
            except OSError as exc:
                raise fileio._named(exc, target) from None

    def add(self, key, out):
        base = self.key_to_base[key]
        with _naming(os.path.join(self.outdir, base)):
            with open(os.path.join(self.tmp, base), "xb") as fh:
                np.save(fh, out)

    def finish(self, names, skipped):
        if self.created:
            with _naming(self.outdir):
                os.rename(self.tmp, self.outdir)
            self.tmp = None
            return
        written = sorted(os.listdir(self.tmp))
        for base in written:  # again: the directory may have changed during the run
            self._check_target(os.path.join(self.outdir, base))
        backup = os.path.join(self.tmp, ".old")  # no .npy base can be ".old"
        with _naming(self.outdir):
            os.mkdir(backup)
        done = []  # [target, its old file's backup or None, replaced yet]
        try:
            for base in written:
                target = os.path.join(self.outdir, base)
                entry = [target, None, False]
                done.append(entry)
                if os.path.lexists(target):
                    entry[1] = os.path.join(backup, base)
                    with _naming(target):
                        try:  # a hard link keeps the target in place until it is replaced
                            os.link(target, entry[1], follow_symlinks=False)
                        except OSError:  # no hard links here: move it aside
                            os.rename(target, entry[1])
                with _naming(target):
                    os.replace(os.path.join(self.tmp, base), target)
                entry[2] = True
        except BaseException as exc:
            lost = self._roll_back(done)
            if lost:
                msg = (f"the update failed ({str(exc) or type(exc).__name__}) and the old contents of "
                       f"{len(lost)} file(s) could not be put back: {', '.join(lost[:5])}")
                if isinstance(exc, Exception):
                    raise OSError(errno.EIO, msg, self.outdir) from exc
                print(f"{self.outdir}: {msg}", file=sys.stderr)
            raise

    @staticmethod
    def _roll_back(done):
        """Puts the old files back (newest first); the targets that could not be restored."""
        lost = []
        for target, old, replaced in reversed(done):
            try:
                if old is not None:
                    if os.path.lexists(old):
                        os.replace(old, target)
                elif replaced:
                    os.unlink(target)
            except OSError:
                lost.append(target)
        return lost

    def close(self):
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------ run

def run(model, inputs, output, batch_tokens=DEFAULT_BATCH_TOKENS, progress=False, skip_bad=False,
        window_tokens=None):
    """What ``lstm-infer run`` does: every record of ``inputs`` through ``model`` into
    ``output`` (a ragged .npz, or a directory mirroring .npy inputs). Returns RunStats.
    A bad record raises BadRecordError unless ``skip_bad``."""
    model = _as_model(model)
    paths = expand_inputs(inputs)
    out = fileio.display_name(output)
    to_dir = not out.endswith(".npz")
    if to_dir and not all(p.endswith(".npy") for p in paths):
        raise ValueError(f"{out}: output must be a .npz file (a directory output needs .npy inputs)")
    if to_dir and os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(20, "exists and is not a directory (give a .npz file name or a directory)", out)
    if not to_dir and os.path.isdir(out):
        raise IsADirectoryError(21, "is a directory; a .npz output must be a file", out)
    if not to_dir:
        fileio.check_target(out)  # before the run, not after it (a FIFO, a missing directory, ...)
    stats = RunStats()
    names = []
    width = _out_width(model)
    writer = None
    bar = _Progress(progress, _count_records(paths))
    start = time.perf_counter()

    def items():
        for name, rec in iter_records(paths):
            try:
                if isinstance(rec, BadRecordError):
                    raise rec
                arr = _check_sequence(model, rec, name)
            except BadRecordError as exc:
                if not skip_bad:
                    raise
                stats.skipped.append(str(exc))
                continue
            key = len(names)
            names.append(name)
            if to_dir:
                writer.key_to_base[key] = os.path.basename(name)
            yield key, arr

    try:
        writer = _NpyDirWriter(out, paths) if to_dir else _RaggedWriter(out, width)
        for key, y in _engine(model, items(), batch_tokens, stats, bar, window_tokens):
            writer.add(key, y)
        bar.close()
        writer.finish(names, stats.skipped)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        stats.seconds = time.perf_counter() - start
    return stats
