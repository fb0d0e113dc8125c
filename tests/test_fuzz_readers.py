"""Bounded mutation fuzzing of every reader, seeded from real files.

Each iteration mutates a real file (bit flips, byte overwrites with boundary
values, truncation, insertion, deletion, chunk duplication) and reads it back.
The only acceptable outcomes are a result or a ``FormatError`` (or its
subclasses ``UnsafeFileError``, ``TooLargeError``) whose message starts with the
file's name; any other exception (a bare ``ValueError`` included), or a read
taking longer than a second, fails. Zip-based formats are also fuzzed *inside* the
archive (member contents mutated, archive rebuilt with valid CRCs) so the
pickle and .npy parsers are reached, not just the zip checksum.
"""

import io
import json
import os
import random
import tempfile
import struct
import time
import zipfile

import numpy as np
import pytest

from file_helpers import path, rezip
from lstm_infer import detect, modelfile, readers
from lstm_infer.errors import FormatError

# per format and per mode; deterministic seeds. Raise it for a longer local run.
ITERATIONS = int(os.environ.get("LSTM_INFER_FUZZ_ITERATIONS", "300"))
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]
INTERESTING_64 = [0, 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1) if b else 0
        if op == 0 and b:  # flip a bit
            i = min(pos, len(b) - 1)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # boundary byte
            b[min(pos, len(b) - 1)] = rng.choice(INTERESTING)
        elif op == 2:  # truncate
            del b[pos:]
        elif op == 3:  # insert random bytes
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4:  # delete a range
            del b[pos:pos + rng.randint(1, 32)]
        elif op == 5 and b:  # duplicate a chunk
            chunk = b[pos:pos + rng.randint(1, 64)]
            b[pos:pos] = chunk
        elif op == 6 and len(b) >= 8:  # boundary 64-bit integer (sizes, offsets, header lengths)
            i = min(pos, len(b) - 8)
            b[i:i + 8] = struct.pack("<Q", rng.choice(INTERESTING_64))
    return bytes(b)


def _model_file():
    sd = readers.read_tensors(path("proj.pt"))
    cfg = dict(detect.infer_config(sd)[1], batch_first=False, dropout=0.0)
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "m.lstm")
        modelfile.write_model(f, detect.lstm_state_dict(sd), cfg)
        with open(f, "rb") as fh:
            return fh.read()


def _npz_compressed():
    buf = io.BytesIO()
    np.savez_compressed(buf, **readers.read_tensors(path("uni.pt")))
    return buf.getvalue()


SEEDS = {
    "torch-zip": (lambda: open(path("encdec.pt"), "rb").read(), readers.read_tensors),
    "torch-legacy": (lambda: open(path("encdec_legacy.pt"), "rb").read(), readers.read_tensors),
    "checkpoint-legacy": (lambda: open(path("checkpoint_legacy.pt"), "rb").read(), readers.read_tensors),
    "safetensors": (lambda: open(path("proj.safetensors"), "rb").read(), readers.read_tensors),
    "npz": (lambda: open(path("uni.npz"), "rb").read(), readers.read_tensors),
    "npz-compressed": (_npz_compressed, readers.read_tensors),
    "model-file": (_model_file, lambda data, name: modelfile.read_model(data=data, name=name)),
}


def _check(reader, data, label):
    start = time.perf_counter()
    try:
        reader(data, "fuzz")
    except FormatError as exc:  # the one error a malformed file may raise, naming the file
        if not (str(exc).startswith("fuzz: ") or str(exc).startswith("fuzz[")):
            pytest.fail(f"{label}: message does not start with the file name: {exc}")
    except Exception as exc:  # noqa: BLE001 - this is what the test looks for
        pytest.fail(f"{label}: {type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{label}: took {elapsed:.2f}s"


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_mutated_files(fmt):
    make, reader = SEEDS[fmt]
    seed = make()
    reader(seed, "seed")  # the seed itself is valid
    rng = random.Random(f"raw-{fmt}")
    for i in range(ITERATIONS):
        _check(reader, _mutate(seed, rng), f"{fmt} iteration {i}")


@pytest.mark.parametrize("fmt, suffix", [("torch-zip", "data.pkl"), ("npz", ".npy"), ("npz-compressed", ".npy")])
def test_mutated_members_inside_valid_zip(fmt, suffix):
    make, reader = SEEDS[fmt]
    seed = make()
    names = [n for n in zipfile.ZipFile(io.BytesIO(seed)).namelist() if n.endswith(suffix)]
    rng = random.Random(f"member-{fmt}")
    zf = zipfile.ZipFile(io.BytesIO(seed))
    for i in range(ITERATIONS):
        name = rng.choice(names)
        _check(reader, rezip(seed, {name: _mutate(zf.read(name), rng)}), f"{fmt}:{name} iteration {i}")


def test_mutated_safetensors_headers():
    """Mutate only the JSON header text, keeping the length field consistent."""
    for fmt in ("safetensors", "model-file"):
        make, reader = SEEDS[fmt]
        seed = make()
        (n,) = struct.unpack_from("<Q", seed)
        header, body = seed[8:8 + n], seed[8 + n:]
        rng = random.Random(f"header-{fmt}")
        for i in range(ITERATIONS):
            h = _mutate(header, rng)
            _check(reader, struct.pack("<Q", len(h)) + h + body, f"{fmt} header iteration {i}")


# ------------------------------------------- geometry: shapes, dtypes, sizes

_DIMS = [0, 1, 2, 3, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
_DESCRS = ["<f4", ">f8", "<f2", "|b1", "<i8", "|u1", "<c8", "<f16", "<U2", "|S3", "|V0", "|V4",
           "<M8[s]", "<m8[D]", "|O", "[('x', '<f4')]"]


def _shape(rng):
    ndim = rng.choice([0, 1, 2, 3, 64, 65, 70])
    return tuple(rng.choice(_DIMS) if rng.random() < 0.3 else rng.randrange(4) for _ in range(ndim))


def _body(nbytes, rng):
    return bytes(rng.randrange(256) for _ in range(nbytes)) if nbytes <= 256 else b"\0" * rng.randrange(64)


def _npy(descr, shape, body):
    header = f"{{'descr': {descr if descr.startswith('[') else repr(descr)}, 'fortran_order': False, " \
             f"'shape': {shape!r}, }}"
    header = header.encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def _size(shape, itemsize):
    n = itemsize
    for s in shape:
        n *= s
    return n


def test_npy_headers_with_any_dtype_and_shape():
    """Every dtype that is not a plain number is refused, and no shape (huge, > 64
    dimensions, overflowing) gets past as anything but a FormatError naming the file."""
    rng = random.Random("npy-geometry")
    for i in range(ITERATIONS):
        descr, shape = rng.choice(_DESCRS), _shape(rng)
        try:
            itemsize = np.dtype(eval(descr) if descr.startswith("[") else descr).itemsize  # noqa: S307 - our list
        except TypeError:
            itemsize = 8
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("w.npy", _npy(descr, shape, _body(_size(shape, itemsize), rng)))
        label = f"iteration {i}: {descr} {shape}"
        _check(readers.read_tensors, buf.getvalue(), label)
        try:
            arr = readers.read_tensors(buf.getvalue(), "fuzz")["w"]
        except FormatError:
            continue
        assert arr.dtype.kind in "biufc" and arr.dtype.itemsize > 0, label
        assert arr.shape == shape, label


def test_safetensors_headers_with_any_shape():
    rng = random.Random("safetensors-geometry")
    for i in range(ITERATIONS):
        dtype, shape = rng.choice(sorted(readers.SAFETENSORS_DTYPES)), _shape(rng)
        nbytes = _size(shape, np.dtype(readers.SAFETENSORS_DTYPES[dtype]).itemsize)
        body = _body(nbytes, rng)
        header = json.dumps({"w": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, len(body)]}}).encode()
        _check(readers.read_tensors, struct.pack("<Q", len(header)) + header + body, f"iteration {i}: {shape}")


def test_torch_tensors_with_any_size_and_stride():
    from file_helpers import dict_ops, program, tensor_ops, torch_zip

    rng = random.Random("torch-geometry")
    for i in range(ITERATIONS):
        size = _shape(rng)
        stride = tuple(rng.choice(_DIMS) if rng.random() < 0.3 else rng.randrange(4) for _ in size)
        st = rng.choice(["FloatStorage", "BFloat16Storage", "ByteStorage", "DoubleStorage"])
        pkl = program(dict_ops([("w", tensor_ops("0", 16, rng.choice([0, 3, 2**63]), size, stride, st))]))
        _check(readers.read_tensors, torch_zip(pkl, {"0": b"\0" * 128}), f"iteration {i}: {size} {stride}")
