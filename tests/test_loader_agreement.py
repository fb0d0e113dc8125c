"""The C loader (src/loader.c, through ctypes on the library `make` builds) and the
Python reader (lstm_infer.load) accept and refuse the same model files: every
model converted with the CLI from the torch.save fixtures (float32, and some
with --weights float16 / int8), the loader's seed corpus, and thousands of
seeded mutants of them (truncations, byte flips, and edits of the header's
JSON: shapes, offsets, dtypes, names, config values, metadata, spelling; for
reduced files also the row scales, the storage and the int8 values). The C side also answers LSTM_ERR_UNSUPPORTED exactly where
Python names an unsupported format_version or kind.
"""
import glob
import json
import os
import random
import re
import struct

import numpy as np
import pytest

import lstm_infer
from lstm_infer import cli, modelfile, readers
from lstm_infer.errors import FormatError

from clib_helpers import ROOT, have_toolchain, library

pytestmark = pytest.mark.skipif(not have_toolchain(), reason="needs make and a C compiler")

LSTM_OK, LSTM_ERR_BAD_FILE, LSTM_ERR_UNSUPPORTED = 0, 8, 9
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "*.pt"))
                  + glob.glob(os.path.join(ROOT, "tests", "fixtures", "family", "*.pt")))
# whole models (kind Sequential), which only the Python reader reads
SEQUENTIAL = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "seq", "*.pt")))[:2]
UNSUPPORTED = re.compile(r"unsupported (format_version|model kind) '")
# fixtures also converted with reduced weights
REDUCED = ["bi_proj_bf_ragged", "stack3_bi_proj", "family/gru_bi_ragged_hx", "family/rnn_relu_stack3_bi_ragged_hx",
           "family/lstmcell_hx", "family/grucell_nobias_unbatched_hx"]


def convert(pt, out, weights=None):
    """`lstm-infer convert` of a fixture, with the options its .npz config records."""
    cfg = json.loads(str(np.load(pt[:-3] + ".npz")["config"]))
    argv = ["convert", pt, "-o", out] + (["--weights", weights] if weights else [])
    if cfg.get("nonlinearity"):
        argv += ["--nonlinearity", cfg["nonlinearity"]]
    if cfg.get("batch_first"):
        argv.append("--batch-first")
    assert cli.main(argv) == 0
    with open(out, "rb") as fh:
        return fh.read()


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    files = {os.path.basename(pt): convert(pt, str(d / (os.path.basename(pt) + ".lstm"))) for pt in FIXTURES}
    for i, name in enumerate(REDUCED):
        weights = ("float16", "int8")[i % 2]
        pt = os.path.join(ROOT, "tests", "fixtures", name + ".pt")
        files[f"{weights}-{name}"] = convert(pt, str(d / f"{weights}-{os.path.basename(name)}.lstm"), weights)
    for pt in SEQUENTIAL:
        meta = json.loads(str(np.load(pt[:-3] + ".npz")["meta"]))
        model = lstm_infer.Sequential.from_state_dict(pt, meta["pipeline"], batch_first=meta["batch_first"],
                                                      nonlinearity=meta["nonlinearity"])
        out = str(d / (os.path.basename(pt) + ".lstm"))
        model.save(out)
        with open(out, "rb") as fh:
            files["sequential-" + os.path.basename(pt)] = fh.read()
    for path in sorted(glob.glob(os.path.join(CORPUS, "valid-*"))):
        with open(path, "rb") as fh:
            files[os.path.basename(path)] = fh.read()
    return files


def python_answer(data):
    """(accepted, unsupported) from lstm_infer.load; any other exception is a bug."""
    try:
        lstm_infer.load(bytearray(data))
        return True, False
    except (FormatError, ValueError, MemoryError) as exc:
        return False, bool(UNSUPPORTED.search(str(exc)))


def sequential_per_python(data):
    """Whether Python reads ``data`` as a well-formed safetensors file of our format and
    version that records kind "Sequential" (which the C loader does not read)."""
    try:
        readers.refuse_other_formats(data, "<bytes>", "a model file")
        _, meta = readers.parse_safetensors(data, "<bytes>", modelfile.MAX_HEADER_BYTES)
    except (FormatError, ValueError):
        return False
    return bool(meta) and meta.get("format") == modelfile.FORMAT and \
        meta.get("format_version") in modelfile.FORMAT_VERSIONS and meta.get("kind") == "Sequential"


def check_agree(data, what):
    status = library().load_status(data)
    accepted, unsupported = python_answer(data)
    if sequential_per_python(data):
        # Python checks the whole model; C reads that far and names the kind unsupported
        assert status == LSTM_ERR_UNSUPPORTED, f"{what}: a Sequential file gives C status {status}"
        return
    assert (status == LSTM_OK) == accepted, (
        f"{what}: C says {library().status_string(status)}, Python {'accepts' if accepted else 'refuses'}")
    if not accepted:
        assert (status == LSTM_ERR_UNSUPPORTED) == unsupported, f"{what}: C status {status}"
        assert status in (LSTM_ERR_BAD_FILE, LSTM_ERR_UNSUPPORTED), f"{what}: C status {status}"


# ------------------------------------------------------------------ mutations

def split(data):
    n = struct.unpack_from("<Q", data)[0]
    return data[8:8 + n], data[8 + n:]


def join(header: bytes, tensors: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + tensors


def edit_json(data, fn, rng, **dump):
    raw, tensors = split(data)
    header = json.loads(raw)
    fn(header, rng)
    return join(json.dumps(header, **dump).encode(), tensors)


WEIRD = [0, 1, 2, -1, -0.0, 0.5, 1.0, 1e300, float("nan"), 2 ** 64, True, False, None, "1", "tanh", "relu",
         "", [], [1], {}, 3, 7, 1024, 1 << 24, (1 << 24) + 1, 1025]
KINDS = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "Sequential", "lstm", ""]


def _tensor(header, rng):
    return rng.choice(sorted(k for k in header if k != "__metadata__"))


def _config_edit(fn):
    def edit(header, rng):
        meta = header["__metadata__"]
        cfg = json.loads(meta["config"])
        fn(cfg, rng)
        meta["config"] = json.dumps(cfg)
    return edit


def _set_dim(h, r):
    t = h[_tensor(h, r)]
    i = r.randrange(len(t["shape"]))
    t["shape"][i] = max(0, t["shape"][i] + r.choice([-1, 1, 2]))


def _swap_offsets(h, r):
    a, b = _tensor(h, r), _tensor(h, r)
    h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]


def _rename(h, r):
    k = _tensor(h, r)
    new = r.choice([k + "_reverse", k.replace("_l0", "_l1"), "a." + k, k.replace("weight", "bias"),
                    k.replace("_ih", "_hr"), k.upper(), k[:-1]])
    h[new] = h.pop(k)


def _meta_value(h, r):
    key = r.choice(["format", "format_version", "kind", "config", "extra", "weights"])
    h["__metadata__"][key] = r.choice({"format": ["lstm_infer", "safetensors", ""],
                                       "format_version": ["1", "2", "3", "0", "1.0", ""],
                                       "kind": KINDS, "config": ["{}", "[]", "", "{", "5"],
                                       "extra": ["x", 1, None],
                                       "weights": ["float16", "int8", "float32", "int4", "", 8]}[key])


def _scale(h, r):
    """A row-scale tensor (or, in a float32 file, any tensor) given another shape, dtype or name."""
    scales = sorted(k for k in h if k.endswith("_scale")) or [_tensor(h, r)]
    k = r.choice(scales)
    t = h[k]
    choice = r.randrange(4)
    if choice == 0:
        t["shape"] = [max(0, t["shape"][0] + r.choice([-1, 1]))] + t["shape"][1:]
    elif choice == 1:
        t["shape"] = t["shape"] + [1]
    elif choice == 2:
        h[k.replace("_scale", "") + r.choice(["_reverse_scale", "x_scale"]) if k.endswith("_scale")
          else k + "_scale"] = h.pop(k)
    else:
        h.pop(k)


HEADER_EDITS = [
    _set_dim,
    _swap_offsets,
    _rename,
    _meta_value,
    lambda h, r: h[_tensor(h, r)].__setitem__("dtype", r.choice(["F16", "BF16", "F64", "I32", "f32", "X", "I8",
                                                                 "F32", "U8"])),
    _scale,
    lambda h, r: h.pop(_tensor(h, r)),
    lambda h, r: h[_tensor(h, r)].pop(r.choice(["dtype", "shape", "data_offsets"])),
    lambda h, r: h[_tensor(h, r)].__setitem__("extra", 1),
    lambda h, r: h[_tensor(h, r)]["shape"].append(1),
    lambda h, r: h[_tensor(h, r)].__setitem__("shape", r.choice([[], [0], [1, 0], None, "4"])),
    lambda h, r: h[_tensor(h, r)]["data_offsets"].__setitem__(r.randrange(2), r.choice([0, -1, 4, 2 ** 64, 1.0])),
    lambda h, r: h.__setitem__("extra", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
    lambda h, r: h.pop("__metadata__"),
    lambda h, r: h.__setitem__("__metadata__", r.choice([None, {}, [], "x"])),
    _config_edit(lambda c, r: c.__setitem__(r.choice(sorted(c)), r.choice(WEIRD))),
    _config_edit(lambda c, r: c.pop(r.choice(sorted(c)))),
    _config_edit(lambda c, r: c.__setitem__(r.choice(["nonlinearity", "proj_size", "batch_first", "x"]),
                                            r.choice(WEIRD))),
    _config_edit(lambda c, r: c.__setitem__("dropout", r.choice([0, 1, 0.25, 1.0000000000000002, -0.0, 1e-400,
                                                                 True, "0", 2]))),
    lambda h, r: None,  # re-spelled only (below)
]


def mutants(data, rng, count):
    """(description, bytes) pairs: seeded mutants of one valid file."""
    raw, tensors = split(data)
    for i in range(count):
        op = rng.randrange(9)
        if op == 8:  # a value the C core refuses in reduced weights (-128, a bad scale), or a fine one
            spans = [(k, e) for k, e in json.loads(raw).items() if k != "__metadata__" and e["dtype"] != "F16"
                     and (e["dtype"] == "I8" or k.endswith("_scale")) and e["data_offsets"][1] > e["data_offsets"][0]]
            if not spans:
                continue
            k, e = rng.choice(spans)
            b = bytearray(data)
            start = 8 + len(raw) + e["data_offsets"][0]
            if e["dtype"] == "I8":
                at = start + rng.randrange(e["data_offsets"][1] - e["data_offsets"][0])
                b[at] = rng.choice([0x80, 0x81, 0x7F, 0x00])
            else:
                at = start + 4 * rng.randrange((e["data_offsets"][1] - e["data_offsets"][0]) // 4)
                b[at:at + 4] = struct.pack("<f", rng.choice([-1.0, -0.0, 0.0, float("nan"), float("inf"), 3e38]))
            yield f"value of {k} at {at} changed", bytes(b)
        elif op == 0:
            n = rng.randrange(len(data))
            yield f"truncated to {n}", data[:n]
        elif op == 1:
            at = rng.randrange(len(data) if rng.random() < 0.3 else 8 + len(raw))
            b = bytearray(data)
            b[at] = b[at] ^ (1 << rng.randrange(8)) if rng.random() < 0.7 else rng.randrange(256)
            yield f"byte {at} changed", bytes(b)
        elif op == 2:
            at = rng.randrange(len(raw))
            if rng.random() < 0.5:
                yield f"header byte {at} deleted", join(raw[:at] + raw[at + 1:], tensors)
            else:
                c = bytes([rng.choice(b' \t\n{}[],:"\\-0123456789.eEux\x00\x7f\xc3\xa9\xff')])
                yield f"header byte {c!r} inserted at {at}", join(raw[:at] + c + raw[at:], tensors)
        elif op == 3:
            yield "bytes appended", data + bytes(rng.randrange(1, 9))
        elif op == 4:  # numbers, names and whitespace spelled differently, same meaning (mostly)
            text = raw.decode()
            choice = rng.randrange(5)
            if choice == 0:
                text = text.replace('"F32"', '"F\\u0033\\u0032"', 1)
            elif choice == 1:
                text = re.sub(r"\[0,", "[-0,", text, 1)
            elif choice == 2:
                text = re.sub(r"(\d+)\]", lambda m: m.group(1) + ".0]", text, 1)
            elif choice == 3:
                text = text.replace(",", " ,\n\t", rng.randrange(1, 20))
            else:
                text = text.replace('"weight_hh', '"weight_\\u0068h', 1)
            yield f"respelled ({choice})", join(text.encode(), tensors)
        elif op == 5:  # a repeated key somewhere
            text = raw.decode()
            key = rng.choice(['"dtype":"F32"', '"kind":', '"format":'])
            at = text.find(key)
            if at >= 0:
                end = text.find(",", at)
                text = text[:end + 1] + text[at:end + 1] + text[end + 1:]
            yield f"repeated {key}", join(text.encode(), tensors)
        else:
            fn = rng.choice(HEADER_EDITS)
            try:
                out = edit_json(data, fn, rng, **rng.choice([{}, {"indent": 1}, {"ensure_ascii": True},
                                                             {"separators": (",", ":")}]))
            except (KeyError, IndexError, TypeError, AttributeError, ValueError):
                continue
            yield f"header edit {getattr(fn, '__name__', fn)}", out


# ------------------------------------------------------------------ tests

def test_every_valid_file_loads_in_both(valid_files):
    assert len(valid_files) >= 35
    assert sum(1 for d in valid_files.values() if b'"format_version":"2"' in d) >= 10  # reduced ones
    for name, data in valid_files.items():
        want = LSTM_ERR_UNSUPPORTED if name.startswith("sequential-") else LSTM_OK
        assert library().load_status(data) == want, name
        assert python_answer(data) == (True, False), name


def test_corpus_files_agree():
    for path in sorted(glob.glob(os.path.join(CORPUS, "*"))):
        with open(path, "rb") as fh:
            check_agree(fh.read(), os.path.basename(path))


def test_mutants_agree(valid_files):
    rng = random.Random(1234)
    counts = {"accepted": 0, "refused": 0}
    for name, data in sorted(valid_files.items()):
        for what, mutant in mutants(data, rng, 120):
            check_agree(mutant, f"{name}: {what}")
            counts["accepted" if library().load_status(mutant) == LSTM_OK else "refused"] += 1
    # the mutants must exercise both answers, not only the refusals
    assert counts["accepted"] > 200 and counts["refused"] > 2000, counts


def test_python_names_odd_layer_keys(valid_files):
    data = valid_files["valid-lstm"]
    """Layer keys torch never writes (zero-padded or non-ASCII layer numbers, a trailing
    newline): both readers refuse them as malformed."""
    for odd in ("weight_ih_l00", "weight_ih_l\u0660", "weight_ih_l0\n"):
        mutant = edit_json(data, lambda h, r: h.__setitem__(odd, h.pop("weight_ih_l0")), None)
        assert library().load_status(mutant) == LSTM_ERR_BAD_FILE, odd
        with pytest.raises(FormatError):
            lstm_infer.load(bytearray(mutant))


def test_header_size_limit_is_the_same(valid_files):
    """modelfile.MAX_HEADER_BYTES (1 MiB) and loader.c's: a header padded with spaces
    to exactly the limit loads in both, one byte more in neither."""
    from lstm_infer.modelfile import MAX_HEADER_BYTES
    raw, tensors = split(valid_files["valid-lstm"])
    at_limit = join(raw + b" " * (MAX_HEADER_BYTES - len(raw)), tensors)
    assert library().load_status(at_limit) == LSTM_OK and python_answer(at_limit) == (True, False)
    check_agree(join(raw + b" " * (MAX_HEADER_BYTES + 1 - len(raw)), tensors), "header past the limit")
    check_agree(join(raw + b" " * (MAX_HEADER_BYTES + 1 - len(raw)), tensors)[:MAX_HEADER_BYTES], "cut")
