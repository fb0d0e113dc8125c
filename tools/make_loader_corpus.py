#!/usr/bin/env python3
"""Writes tests/fuzz/corpus/: small model files for the C loader's tests and the
fuzzer's seed corpus, named by what the C loader must answer:

  valid-*        model files of every kind (written by lstm_infer's own writer,
                 which tests/test_modelfile.py checks against torch), float32 and
                 reduced (float16, int8: format_version 2)
  bad-*          malformed files: LSTM_ERR_BAD_FILE
  unsupported-*  well-formed files of another kind (a Sequential from a torch.save
                 fixture) or format version: LSTM_ERR_UNSUPPORTED

    python tools/make_loader_corpus.py

The weights are seeded random numbers; the files stay small so the fuzzer
mutates them quickly.
"""
import json
import os
import struct

import numpy as np

from lstm_infer import Sequential, detect
from lstm_infer.model import MODULES
from lstm_infer.modelfile import write_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")

# name: (kind, config)
VALID = {
    "lstm": ("LSTM", dict(input_size=3, hidden_size=4)),
    "lstm-bi-proj-stack2": ("LSTM", dict(input_size=2, hidden_size=3, num_layers=2, bidirectional=True,
                                         proj_size=2)),
    "lstm-nobias-bf": ("LSTM", dict(input_size=2, hidden_size=2, bias=False, batch_first=True)),
    "gru-bi": ("GRU", dict(input_size=3, hidden_size=2, bidirectional=True)),
    "gru-stack2-nobias": ("GRU", dict(input_size=2, hidden_size=3, num_layers=2, bias=False)),
    "rnn-tanh-stack2": ("RNN", dict(input_size=3, hidden_size=2, num_layers=2)),
    "rnn-relu-bi-bf": ("RNN", dict(input_size=2, hidden_size=3, nonlinearity="relu", bidirectional=True,
                                   batch_first=True)),
    "lstmcell": ("LSTMCell", dict(input_size=3, hidden_size=2)),
    "grucell-nobias": ("GRUCell", dict(input_size=2, hidden_size=3, bias=False)),
    "rnncell-relu": ("RNNCell", dict(input_size=2, hidden_size=2, nonlinearity="relu")),
}
# reduced weights: name: (kind, config, weights)
REDUCED = {
    "lstm-bi-proj-stack2-int8": ("LSTM", dict(input_size=2, hidden_size=3, num_layers=2, bidirectional=True,
                                              proj_size=2), "int8"),
    "gru-nobias-bf-float16": ("GRU", dict(input_size=3, hidden_size=2, bias=False, batch_first=True), "float16"),
    "rnn-relu-bi-int8": ("RNN", dict(input_size=2, hidden_size=3, nonlinearity="relu", bidirectional=True), "int8"),
    "lstmcell-float16": ("LSTMCell", dict(input_size=3, hidden_size=2), "float16"),
    "grucell-int8": ("GRUCell", dict(input_size=2, hidden_size=3), "int8"),
}


def state_dict(kind, config, rng):
    """Random weights with the names and shapes torch gives ``kind(**config)``."""
    full = detect.constructor_config(kind, config)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind.replace("Cell", "")]
    H, I = full["hidden_size"], full["input_size"]
    if kind.endswith("Cell"):
        names = [("weight_ih", (gates * H, I)), ("weight_hh", (gates * H, H))]
        if full["bias"]:
            names += [("bias_ih", (gates * H,)), ("bias_hh", (gates * H,))]
    else:
        P = full.get("proj_size", 0)
        out, D = P or H, 2 if full["bidirectional"] else 1
        names = []
        for layer in range(full["num_layers"]):
            for sfx in ("", "_reverse")[:D]:
                n = f"_l{layer}{sfx}"
                names += [("weight_ih" + n, (gates * H, I if layer == 0 else D * out)),
                          ("weight_hh" + n, (gates * H, out))]
                if full["bias"]:
                    names += [("bias_ih" + n, (gates * H,)), ("bias_hh" + n, (gates * H,))]
                if P:
                    names.append(("weight_hr" + n, (P, H)))
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in names}


def split(data):
    n = struct.unpack_from("<Q", data)[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header, tensors):
    blob = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(blob)) + blob + tensors


def edit(data, fn):
    header, tensors = split(data)
    fn(header)
    return join(header, tensors)


def arrays_of(data):
    """(metadata, {name: array}) of a model file, the arrays in file order."""
    header, tensors = split(data)
    meta = header.pop("__metadata__")
    codes = {"F32": "<f4", "F16": "<f2", "I8": "i1"}
    out = {}
    for k, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        b, end = e["data_offsets"]
        out[k] = np.frombuffer(tensors[b:end], codes[e["dtype"]]).reshape(e["shape"])
    return meta, out


def rewrite(data, fn):
    """A model file with its arrays changed by fn(arrays) (any shapes and dtypes), laid out anew."""
    meta, arrays = arrays_of(data)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    fn(arrays)
    header, pos, body = {"__metadata__": meta}, 0, b""
    names = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("i1"): "I8"}
    for k, a in arrays.items():
        raw = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
        header[k] = {"dtype": names[a.dtype.newbyteorder("<")], "shape": list(a.shape),
                     "data_offsets": [pos, pos + len(raw)]}
        pos, body = pos + len(raw), body + raw
    return join(header, body)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    rng = np.random.default_rng(0)
    valid = {}
    for name, (kind, config) in VALID.items():
        path = os.path.join(OUT, "valid-" + name)
        write_model(path, state_dict(kind, config, rng), detect.constructor_config(kind, config), kind=kind)
        with open(path, "rb") as fh:
            valid[name] = fh.read()
    for name, (kind, config, weights) in REDUCED.items():
        model = MODULES[kind](**config, weights=weights)
        model.load_state_dict(state_dict(kind, config, rng))
        path = os.path.join(OUT, "valid-" + name)
        model.save(path)
        with open(path, "rb") as fh:
            valid[name] = fh.read()
    base = valid["lstm"]
    int8 = valid["lstm-bi-proj-stack2-int8"]
    meta = lambda k, v: lambda h: h["__metadata__"].__setitem__(k, v)  # noqa: E731
    cfg = lambda k, v: lambda h: h["__metadata__"].__setitem__(  # noqa: E731
        "config", json.dumps({**json.loads(h["__metadata__"]["config"]), k: v}))
    bad = {
        "truncated": base[:len(base) - 3],
        "header-past-end": struct.pack("<Q", len(base)) + base[8:],
        "trailing-bytes": base + b"\0\0\0\0",
        "not-json": base[:8] + b"{" + b"x" * (struct.unpack_from("<Q", base)[0] - 1) + split(base)[1],
        "dtype-f16": edit(base, lambda h: h["weight_ih_l0"].__setitem__("dtype", "F16")),
        "shape-mismatch": edit(base, lambda h: h["weight_ih_l0"].__setitem__("shape", [4, 12])),
        "offsets-overlap": edit(base, lambda h: h["weight_hh_l0"].__setitem__(
            "data_offsets", h["weight_ih_l0"]["data_offsets"])),
        "no-metadata": edit(base, lambda h: h.pop("__metadata__")),
        "config-bad-key": edit(base, cfg("hidden", 4)),
        "config-bool-int": edit(base, cfg("num_layers", True)),
        "config-dropout-2": edit(base, cfg("dropout", 2.0)),
        "missing-tensor": edit(valid["gru-bi"], lambda h: h.pop("bias_hh_l0_reverse")),
        "kind-mismatch": edit(valid["gru-bi"], meta("kind", "LSTM")),
        "duplicate-name": base.replace(b'"dtype":"F32","shape":[16,3]', b'"dtype":"F32","dtype":"F32","shape":[16,3]', 1),
        # reduced weights
        "int8-scale-short": rewrite(int8, lambda a: a.__setitem__("weight_hh_l0_scale", a["weight_hh_l0_scale"][:-1])),
        "int8-scale-missing": rewrite(int8, lambda a: a.pop("weight_hh_l1_reverse_scale")),
        "int8-scale-f16": rewrite(int8, lambda a: a.__setitem__("weight_hh_l0_scale",
                                                                a["weight_hh_l0_scale"].astype("<f2"))),
        "int8-scale-negative": rewrite(int8, lambda a: a["weight_hh_l0_scale"].__setitem__(0, -1.0)),
        "int8-scale-nan": rewrite(int8, lambda a: a["weight_hh_l0_scale"].__setitem__(1, np.nan)),
        "int8-minus-128": rewrite(int8, lambda a: a["weight_hh_l1"].__setitem__((0, 0), -128)),
        "int8-as-f32": rewrite(int8, lambda a: a.__setitem__("weight_hh_l0", a["weight_hh_l0"].astype("<f4"))),
        "int8-scale-on-bias": rewrite(int8, lambda a: a.__setitem__("bias_ih_l0_scale", np.ones(12, "<f4"))),
        "f16-as-f32": rewrite(valid["lstmcell-float16"],
                              lambda a: a.__setitem__("weight_ih", a["weight_ih"].astype("<f4"))),
        "f16-in-version-1": edit(valid["lstmcell-float16"], meta("format_version", "1")),
        "weights-unknown": edit(valid["lstmcell-float16"], meta("weights", "int4")),
        "weights-float32-f16-tensors": edit(valid["lstmcell-float16"], meta("weights", "float32")),
    }
    # a whole model (kind Sequential, which the C loader does not read) from a torch.save fixture
    pt = os.path.join(ROOT, "tests", "fixtures", "seq", "scorer.pt")
    seq = json.loads(str(np.load(pt[:-3] + ".npz")["meta"]))
    path = os.path.join(OUT, "unsupported-sequential-scorer")
    Sequential.from_state_dict(pt, seq["pipeline"], batch_first=seq["batch_first"],
                               nonlinearity=seq["nonlinearity"]).save(path)
    unsupported = {
        "kind-sequential": edit(base, meta("kind", "Sequential")),
        "format-version-3": edit(base, meta("format_version", "3")),
        "format-version-3-int8": edit(int8, meta("format_version", "3")),
    }
    # fix the header length of the one edited by hand
    h = bad["duplicate-name"]
    bad["duplicate-name"] = struct.pack("<Q", struct.unpack_from("<Q", h)[0] + 14) + h[8:]
    for prefix, group in (("bad-", bad), ("unsupported-", unsupported)):
        for name, data in group.items():
            with open(os.path.join(OUT, prefix + name), "wb") as fh:
                fh.write(data)


if __name__ == "__main__":
    main()
