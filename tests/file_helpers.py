"""Shared helpers for the file-format tests: fixture paths, a NumPy LSTM written
from the equations (to check that weights read from a file reproduce torch's own
outputs without our engine), and a tiny pickle assembler for hand-made files."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data")
with open(os.path.join(DATA, "manifest.json")) as _fh:
    MANIFEST = json.load(_fh)


def path(name):
    return os.path.join(DATA, name)


def ref(name):
    with np.load(path(name)) as z:
        return {k: z[k] for k in z.files}


def files(fmt=None):
    return sorted(f for f, e in MANIFEST.items() if fmt is None or e["format"] == fmt)


def lstm_cases():
    """(file, prefix, entry) for every LSTM in every fixture file."""
    return [(f, p, info) for f in files() for p, info in sorted(MANIFEST[f]["lstms"].items())]


# ------------------------------------------------------- reference LSTM

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm(sd, cfg, x, hx=None, lengths=None):
    """torch.nn.LSTM semantics (seq-first, packed-sequence lengths) in float64."""
    T, B, _ = x.shape
    D = 2 if cfg["bidirectional"] else 1
    H, P = cfg["hidden_size"], cfg["proj_size"]
    out_size = P or H
    lengths = [T] * B if lengths is None else [int(v) for v in lengths]
    layer_in = x.astype(np.float64)
    h_n = np.zeros((cfg["num_layers"] * D, B, out_size))
    c_n = np.zeros((cfg["num_layers"] * D, B, H))
    for layer in range(cfg["num_layers"]):
        outs = np.zeros((T, B, D * out_size))
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih = sd["weight_ih" + sfx].astype(np.float64)
            w_hh = sd["weight_hh" + sfx].astype(np.float64)
            b = sd["bias_ih" + sfx].astype(np.float64) + sd["bias_hh" + sfx] if cfg["bias"] else 0.0
            w_hr = sd["weight_hr" + sfx].astype(np.float64) if P else None
            idx = layer * D + d
            for bi in range(B):
                h = np.zeros(out_size) if hx is None else hx[0][idx, bi].astype(np.float64)
                c = np.zeros(H) if hx is None else hx[1][idx, bi].astype(np.float64)
                steps = range(lengths[bi]) if d == 0 else reversed(range(lengths[bi]))
                for t in steps:
                    g = w_ih @ layer_in[t, bi] + w_hh @ h + b
                    i, f, gg, o = np.split(g, 4)
                    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
                    h = _sigmoid(o) * np.tanh(c)
                    if w_hr is not None:
                        h = w_hr @ h
                    outs[t, bi, d * out_size:(d + 1) * out_size] = h
                h_n[idx, bi], c_n[idx, bi] = h, c
        layer_in = outs
    return layer_in, h_n, c_n


def check_against_ref(forward, reference, atol=1e-5):
    """forward(x, hx, lengths) -> (out, h_n, c_n); compare both cases of a .ref.npz."""
    r = reference
    got = forward(r["x"], None, None)
    for a, k in zip(got, ("out", "h_n", "c_n")):
        np.testing.assert_allclose(a, r[k], rtol=0, atol=atol, err_msg=k)
    got = forward(r["x"], (r["h0"], r["c0"]), r["lengths"])
    for a, k in zip(got, ("ragged_out", "ragged_h_n", "ragged_c_n")):
        np.testing.assert_allclose(a, r[k], rtol=0, atol=atol, err_msg=k)


# ---------------------------------------------------- pickle assembler

def frag(obj):
    """Opcodes that push ``obj`` (a plain value) onto the unpickler's stack."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def glob(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def call(func_ops, *arg_ops):
    """Opcodes for func(*args): arguments given as opcode strings."""
    return func_ops + b"(" + b"".join(arg_ops) + b"tR"


def storage_pid(key, numel, storage_type="FloatStorage", legacy=False):
    fields = frag("storage") + glob("torch", storage_type) + frag(key) + frag("cpu") + frag(numel)
    if legacy:
        fields += frag(None)
    return b"(" + fields + b"tQ"


def tensor_ops(key, numel, offset, size, stride, storage_type="FloatStorage", legacy=False):
    return call(glob("torch._utils", "_rebuild_tensor_v2"), storage_pid(key, numel, storage_type, legacy),
                frag(offset), frag(tuple(size)), frag(tuple(stride)), frag(False),
                call(glob("collections", "OrderedDict")))


def dict_ops(items):
    """items: list of (key, value opcodes) -> opcodes for a dict."""
    return b"}(" + b"".join(frag(k) + v for k, v in items) + b"u"


def program(body):
    return b"\x80\x02" + body + b"."


def torch_zip(pkl, records, byteorder=b"little", root="archive"):
    """A torch.save-style zip archive with the given data.pkl and data/<key> records."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", pkl)
        if byteorder is not None:
            zf.writestr(f"{root}/byteorder", byteorder)
        for key, raw in records.items():
            zf.writestr(f"{root}/data/{key}", raw)
        zf.writestr(f"{root}/version", b"3\n")
    return buf.getvalue()


def legacy_file(main_pkl, keys_and_data):
    """A legacy torch.save stream: magic, protocol, sys_info, main pickle, keys, storages."""
    out = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    out += main_pkl + pickle.dumps([k for k, _, _ in keys_and_data], protocol=2)
    for _, numel, raw in keys_and_data:
        out += numel.to_bytes(8, "little") + raw
    return out


def rezip(data, replace):
    """Copy a zip archive, replacing members by name (``replace``: name -> bytes or None to drop)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for info in src.infolist():
            if info.filename in replace:
                if replace[info.filename] is not None:
                    zf.writestr(info.filename, replace[info.filename])
            else:
                zf.writestr(info.filename, src.read(info))
    return buf.getvalue()


def member(data, suffix):
    zf = zipfile.ZipFile(io.BytesIO(data))
    (name,) = [n for n in zf.namelist() if n.endswith(suffix)]
    return name, zf.read(name)


def engine():
    """lstm_infer.model, or a skip while it has not been written. Once the file exists
    an import failure (say, an unbuilt extension) is an error, not a skip."""
    import importlib
    import pytest

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lstm_infer", "model.py")
    if not os.path.exists(here):
        pytest.skip("lstm_infer/model.py (the engine) does not exist yet")
    return importlib.import_module("lstm_infer.model")


# ------------------------------------------------------- hostile archives

def zip_raw(members):
    """A zip archive from (name, stored bytes, method, crc, size) tuples, written by
    hand so that already-deflated data can be reused (method 8 = DEFLATE, 0 = stored)."""
    import struct

    out, central = bytearray(), bytearray()
    for name, raw, method, crc, size in members:
        fname = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(raw), size, len(fname), 0)
        out += fname + raw
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(raw), size,
                               len(fname), 0, 0, 0, 0, 0, offset) + fname
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + end)


_ZEROS = {}


def deflated_zeros(size):
    """(raw DEFLATE stream, crc32) of ``size`` zero bytes; cached (100 MiB takes ~1 s)."""
    import zlib

    if size not in _ZEROS:
        comp, crc, chunk = zlib.compressobj(6, zlib.DEFLATED, -15), 0, b"\0" * (1 << 22)
        parts, left = [], size
        while left:
            piece = chunk[:min(left, len(chunk))]
            parts.append(comp.compress(piece))
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
        parts.append(comp.flush())
        _ZEROS[size] = (b"".join(parts), crc)
    return _ZEROS[size]


def deflate_bomb_torch(members=2, each=130 << 20):
    """A torch.save-style zip whose ``members`` float storages are DEFLATE members of
    ``each`` zero bytes: a few hundred KB that inflate to members x each bytes and
    then as many bytes again of arrays. torch itself never compresses members."""
    import zlib

    numel = each // 4
    pkl = program(dict_ops([(f"w{i}", tensor_ops(str(i), numel, 0, (numel,), (1,))) for i in range(members)]))
    raw, crc = deflated_zeros(each)
    entries = [("archive/data.pkl", pkl, 0, zlib.crc32(pkl), len(pkl))]
    entries += [(f"archive/data/{i}", raw, 8, crc, each) for i in range(members)]
    return zip_raw(entries)


def deflate_bomb_npz(members=2, each=130 << 20):
    """An .npz of ``members`` float32 arrays of zeros, DEFLATE-compressed as
    np.savez_compressed writes them: legitimate in form, hostile in size."""
    import zlib

    numel = each // 4
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (numel,)})
    head = buf.getvalue()
    key = ("npz", numel)
    if key not in _ZEROS:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        parts, crc = [comp.compress(head)], zlib.crc32(head)
        chunk, left = b"\0" * (1 << 22), numel * 4
        while left:
            piece = chunk[:min(left, len(chunk))]
            parts.append(comp.compress(piece))
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
        parts.append(comp.flush())
        _ZEROS[key] = (b"".join(parts), crc)
    raw, crc = _ZEROS[key]
    return zip_raw([(f"a{i}.npy", raw, 8, crc, len(head) + numel * 4) for i in range(members)])


def split_model_file(data):
    """A model file's bytes -> (its JSON header, the bytes after it)."""
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_model_file(header, body):
    """The bytes of a model file of this header (re-encoded) and body."""
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body
