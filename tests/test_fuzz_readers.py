"""Bounded mutation fuzzing of every reader, seeded from real files.

Each iteration mutates a real file (bit flips, byte overwrites with boundary
values, truncation, insertion, deletion, chunk duplication) and reads it back.
The only acceptable outcomes are a result or a ``ValueError`` (our
``FormatError`` / ``UnsafeFileError``); any other exception, or a read taking
longer than a second, fails. Zip-based formats are also fuzzed *inside* the
archive (member contents mutated, archive rebuilt with valid CRCs) so the
pickle and .npy parsers are reached, not just the zip checksum.
"""

import io
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
    "model-file": (_model_file, modelfile.read_model),
}


def _check(reader, data, label):
    start = time.perf_counter()
    try:
        reader(data, "fuzz")
    except ValueError:
        pass
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
