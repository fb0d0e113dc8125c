"""Reduced weights (float16 / int8) in model files: save() and lstm_infer.load give
back the same stored arrays and the same output bits for every kind and layout and
for whole models; the torch.save fixtures converted with `lstm-infer convert
--weights` stay within the storage's tolerance of the float32 outputs torch wrote
(no torch needed); the CLI's convert / inspect / verify with --weights; and
hostile reduced files refused with FormatError naming the tensor, before any
array is made. The C loader's side is in test_loader_agreement.py and
tests/c/test_loader.c; lstm_run's in test_c_example.py."""
import json
import os
import pickle

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import cli, modelfile
from lstm_infer.errors import FormatError

from file_helpers import join_model_file, split_model_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
STORAGES = ("float16", "int8")

# kind, constructor arguments: every layout float32 supports
LAYOUTS = [
    ("LSTM", dict(input_size=6, hidden_size=9)),
    ("LSTM", dict(input_size=6, hidden_size=9, num_layers=3, bidirectional=True, proj_size=4)),
    ("LSTM", dict(input_size=5, hidden_size=7, num_layers=2, bias=False, batch_first=True)),
    ("GRU", dict(input_size=6, hidden_size=9, num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(input_size=3, hidden_size=5, bias=False)),
    ("RNN", dict(input_size=6, hidden_size=9, num_layers=2, bidirectional=True)),
    ("RNN", dict(input_size=4, hidden_size=8, nonlinearity="relu", batch_first=True)),
    ("LSTMCell", dict(input_size=5, hidden_size=7)),
    ("GRUCell", dict(input_size=5, hidden_size=7, bias=False)),
    ("RNNCell", dict(input_size=5, hidden_size=7, nonlinearity="relu")),
]
LAYOUT_IDS = [f"{k}-" + "-".join(f"{a}{v}" for a, v in args.items() if a != "input_size") for k, args in LAYOUTS]




def _flat(result):
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _flat(r)]
    return [result]


def _call(m, kind, args, rng):
    """m's outputs on a ragged batch with an initial state (cells: a batch with hx)."""
    I, H = args["input_size"], args["hidden_size"]
    if kind.endswith("Cell"):
        x, h = rng.standard_normal((4, I)).astype(np.float32), rng.standard_normal((4, H)).astype(np.float32)
        return _flat(m(x, (h, h * 0.5) if kind == "LSTMCell" else h))
    T, B = 7, 4
    x = rng.standard_normal((B, T, I) if args.get("batch_first") else (T, B, I)).astype(np.float32)
    slots = args.get("num_layers", 1) * (2 if args.get("bidirectional") else 1)
    h0 = rng.standard_normal((slots, B, args.get("proj_size") or H)).astype(np.float32)
    hx = (h0, rng.standard_normal((slots, B, H)).astype(np.float32)) if kind == "LSTM" else h0
    return _flat(m(x, hx, lengths=np.array([T, 1, 0, 4])))


def _same_stored(a, b):
    ra, rb = a.reduced_state_dict(), b.reduced_state_dict()
    assert list(ra) == list(rb)
    for k in ra:
        assert ra[k].dtype == rb[k].dtype and np.array_equal(ra[k], rb[k], equal_nan=True), k


# ---------------------------------------------------------------- round trip

@pytest.mark.parametrize("weights", STORAGES)
@pytest.mark.parametrize("kind,args", LAYOUTS, ids=LAYOUT_IDS)
def test_round_trip_is_bit_identical(tmp_path, kind, args, weights):
    m = getattr(li, kind)(**args, weights=weights)
    path = tmp_path / "m.lstm"
    m.save(path)
    back = li.load(str(path))
    assert type(back) is type(m) and back.weights == weights and back.config == m.config
    _same_stored(m, back)
    for got, want in zip(_call(back, kind, args, np.random.default_rng(1)), _call(m, kind, args,
                                                                                  np.random.default_rng(1))):
        assert np.array_equal(got, want)
    # what the file says: format_version 2 and the storage; each tensor in the core's dtype
    header, _ = split_model_file(path.read_bytes())
    meta = header.pop("__metadata__")
    assert meta["format_version"] == "2" and meta["weights"] == weights
    stored = m.reduced_state_dict()
    assert set(header) == set(stored)
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8"}
    assert all(header[k]["dtype"] == codes[v.dtype] for k, v in stored.items())
    # read_model gives what the model computes with (float32), read_stored the stored arrays
    kind2, cfg, sd = modelfile.read_model(path)
    assert kind2 == kind and all(np.array_equal(sd[k], v) for k, v in m.state_dict().items())
    assert set(sd) == set(m.state_dict())


@pytest.mark.parametrize("weights", STORAGES)
def test_shipped_bytes_load_as_stored(tmp_path, weights):
    """lstm_infer.dask ships a model file's bytes to its workers: they build the same model."""
    from lstm_infer import dask as li_dask
    m = li.RNN(4, 6, num_layers=2, weights=weights)
    m.save(tmp_path / "m.lstm")
    back = li_dask._from_bytes((tmp_path / "m.lstm").read_bytes(), "m.lstm")
    assert back.weights == weights
    _same_stored(m, back)


def test_float32_files_stay_version_1(tmp_path):
    """An older reader reads what it always read: float32 models keep format_version 1
    and no "weights"; only reduced ones say 2, which it refuses as a newer format."""
    m = li.GRU(3, 4)
    m.save(tmp_path / "f.lstm")
    meta = split_model_file((tmp_path / "f.lstm").read_bytes())[0]["__metadata__"]
    assert meta["format_version"] == "1" and "weights" not in meta
    m.load_state_dict(m.state_dict(), weights="int8")
    m.save(tmp_path / "q.lstm")
    assert split_model_file((tmp_path / "q.lstm").read_bytes())[0]["__metadata__"]["format_version"] == "2"


def test_pickle_and_sequential_keep_the_stored_weights(tmp_path):
    pt = os.path.join(FIX, "seq", "tagger.pt")
    meta = json.loads(str(np.load(pt[:-3] + ".npz")["meta"]))
    z = np.load(pt[:-3] + ".npz")
    kw = dict(batch_first=meta["batch_first"], nonlinearity=meta["nonlinearity"])
    rec = [name for name, m in li.Sequential.from_state_dict(pt, meta["pipeline"], **kw).layers
           if m.kind in ("LSTM", "GRU", "RNN")]
    for weights in ("int8", "float16", {rec[0]: "int8"}):
        model = li.Sequential.from_state_dict(pt, meta["pipeline"], weights=weights, **kw)
        want_storage = weights if isinstance(weights, str) else "int8"
        assert model[rec[0]].weights == want_storage
        assert model.config["layers"][[n for n, _ in model.layers].index(rec[0])]["weights"] == want_storage
        y = model(z["x"], lengths=z["lengths"])
        model.save(tmp_path / "s.lstm")
        for back in (li.load(str(tmp_path / "s.lstm")), pickle.loads(pickle.dumps(model))):
            assert [m.weights for m in back if m.kind in ("LSTM", "GRU", "RNN")] == \
                [m.weights for m in model if m.kind in ("LSTM", "GRU", "RNN")]
            assert np.array_equal(back(z["x"], lengths=z["lengths"]), y)
        # float32 torch's outputs within the storage's tolerance
        assert np.max(np.abs(y - z["output"])) <= cli.TOLERANCES[want_storage]
    # read_state_dict of a reduced file: the float32 values the model computes with
    sd = li.read_state_dict(str(tmp_path / "s.lstm"))
    assert all(v.dtype == np.float32 for v in sd.values()) and sd.keys() == model.state_dict().keys()
    assert all(np.array_equal(sd[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="not recurrent layers"):
        li.Sequential.from_state_dict(pt, meta["pipeline"], weights={"nope": "int8"}, **kw)


# ------------------------------------------------ fixtures converted with the CLI

FIXTURES = ["uni_equal", "bi_ragged_hx", "bi_proj_bf_ragged", "stack3_bi_proj", "stack2_nobias_bf",
            "family/gru_bi_ragged_hx", "family/gru_stack3_bi_nobias_bf", "family/rnn_relu_stack3_bi_ragged_hx",
            "family/rnn_tanh_stack2_nobias_bf", "family/lstmcell_hx", "family/grucell_nobias_unbatched_hx",
            "family/rnncell_tanh_hx"]


def _convert(name, out, weights, *extra):
    cfg = json.loads(str(np.load(os.path.join(FIX, name + ".npz"))["config"]))
    argv = ["convert", os.path.join(FIX, name + ".pt"), "-o", str(out), "--weights", weights, *extra]
    if cfg.get("nonlinearity"):
        argv += ["--nonlinearity", cfg["nonlinearity"]]
    if cfg.get("batch_first"):
        argv.append("--batch-first")
    assert cli.main(argv) == 0
    return cfg


@pytest.mark.parametrize("weights", STORAGES)
@pytest.mark.parametrize("name", FIXTURES)
def test_converted_fixtures_within_tolerance_of_float32_torch(tmp_path, name, weights):
    _convert(name, tmp_path / "m.lstm", weights)
    m = li.load(str(tmp_path / "m.lstm"))
    assert m.weights == weights
    z = np.load(os.path.join(FIX, name + ".npz"))
    if m.kind.endswith("Cell"):
        hx = None if "h_0" not in z.files else ((z["h_0"], z["c_0"]) if m.kind == "LSTMCell" else z["h_0"])
        got = _flat(m(z["x"], hx))
        want = [z["h_1"]] + ([z["c_1"]] if m.kind == "LSTMCell" else [])
    else:
        hx = None if "h_0" not in z.files else ((z["h_0"], z["c_0"]) if m.kind == "LSTM" else z["h_0"])
        got = _flat(m(z["x"], hx, lengths=z["lengths"] if "lengths" in z.files else None))
        want = [z["output"], z["h_n"]] + ([z["c_n"]] if m.kind == "LSTM" else [])
    errors = [float(np.max(np.abs(g - w))) for g, w in zip(got, want)]
    assert max(errors) <= cli.TOLERANCES[weights], errors
    # and the reduction is real: not float32's parity everywhere
    assert max(errors) > 1e-7


# ------------------------------------------------------------------------ CLI

def test_cli_convert_inspect(tmp_path, capsys):
    out = tmp_path / "m.lstm"
    _convert("stack3_bi_proj", out, "int8")
    text = capsys.readouterr().out
    assert "with int8 weights" in text
    assert cli.main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "format_version 2" in text and "weights='int8'" in text
    counts = {}  # the storage the C core chose for each array, as inspect counts it
    for k, v in li.load(str(out)).reduced_state_dict().items():
        if not k.endswith("_scale"):
            counts[v.dtype.name] = counts.get(v.dtype.name, 0) + 1
    assert f"int8 x{counts.pop('int8')} (with float32 row scales)" in text
    assert all(f"{d} x{n}" in text for d, n in counts.items())
    # a reduced model file converted again keeps its stored weights unless --weights says otherwise
    again = tmp_path / "again.lstm"
    assert cli.main(["convert", str(out), "-o", str(again)]) == 0
    _same_stored(li.load(str(out)), li.load(str(again)))
    assert cli.main(["convert", str(out), "-o", str(again), "--weights", "float32"]) == 0
    assert li.load(str(again)).weights == "float32"
    _convert("family/lstmcell_hx", out, "float16")
    capsys.readouterr()
    assert cli.main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "LSTMCell(input_size=5, hidden_size=7, bias=True, weights='float16')" in text
    assert "float16 x2, float32 x2" in text
    # --pipeline models with reduced recurrent layers
    pt = os.path.join(FIX, "seq", "classifier.pt")
    meta = json.loads(str(np.load(pt[:-3] + ".npz")["meta"]))
    argv = ["convert", pt, "-o", str(out), "--pipeline", meta["pipeline"], "--weights", "float16"]
    assert cli.main(argv + (["--batch-first"] if meta["batch_first"] else [])) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(out)]) == 0
    assert "weights='float16'" in capsys.readouterr().out
    assert all(m.weights == "float16" for m in li.load(str(out)) if m.kind in ("LSTM", "GRU", "RNN"))


def test_cli_verify_reports_the_storage(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "m.lstm"
    _convert("bi_proj_bf_ragged", out, "int8", "--verify")
    text = capsys.readouterr().out
    assert "with int8 weights against torch.nn.LSTM" in text and "tolerance 0.01" in text
    assert "mean abs err" in text
    for output in ("output", "h_n", "c_n"):
        assert f"  {output}: max abs err " in text
    assert text.splitlines()[-1].startswith("PASS: max abs error")
    # verify a float32 source as float16 (reduced in memory); --atol overrides the 2e-3 default
    src = os.path.join(FIX, "family", "gru_bi_ragged_hx.pt")
    assert cli.main(["verify", src, "--weights", "float16"]) == 0
    text = capsys.readouterr().out
    assert "with float16 weights" in text and "tolerance 0.002" in text
    assert cli.main(["verify", src, "--weights", "float16", "--atol", "1e-9"]) == cli.EXIT_MISMATCH
    assert "FAIL: max abs error" in capsys.readouterr().out
    # a reduced file alone: the note says the originals are not in it
    assert cli.main(["verify", str(out)]) == 0
    assert "not the float32 originals" in capsys.readouterr().out
    # a whole model
    pt = os.path.join(FIX, "seq", "scorer.pt")
    meta = json.loads(str(np.load(pt[:-3] + ".npz")["meta"]))
    argv = ["convert", pt, "-o", str(out), "--pipeline", meta["pipeline"], "--weights", "int8", "--verify"]
    assert cli.main(argv + (["--batch-first"] if meta["batch_first"] else [])) == 0
    text = capsys.readouterr().out
    assert "with int8 weights against the same pipeline" in text and "tolerance 0.01" in text
    assert text.splitlines()[-1].startswith("PASS")


# --------------------------------------------------------------- hostile files

@pytest.fixture
def int8_bytes(tmp_path):
    m = li.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, weights="int8")
    m.save(tmp_path / "q.lstm")
    return (tmp_path / "q.lstm").read_bytes()


def _int8_key(header):
    return next(k for k, e in header.items() if k != "__metadata__" and e["dtype"] == "I8")


def _meta(**kv):
    def edit(h):
        h["__metadata__"].update(kv)
    return edit


def _retype(dtype):
    """The first int8 array declared as another dtype (shape kept, bytes as many as it needs)."""
    def edit(h):
        e = h[_int8_key(h)]
        e["dtype"] = dtype
        return e
    return edit


def _reshape_scale(h):
    k = _int8_key(h) + "_scale"
    b, e = h[k]["data_offsets"]
    h[k]["shape"] = [h[k]["shape"][0] // 2, 2]


HOSTILE = [
    ("weights in version 1", _meta(format_version="1"), r'"weights" needs format_version "2"'),
    ("unknown weights", _meta(weights="int4"), r"unknown weights 'int4'"),
    ("newer version", _meta(format_version="3"), r"unsupported format_version '3'"),
    ("float32 with int8 tensors", _meta(weights="float32"), r"has dtype (I8|F16); a model of float32 weights"),
    ("storage swapped", _meta(weights="float16"), r"tensor '\w+' has dtype I8; float16 weights store it as F16"),
    ("scale reshaped", _reshape_scale, r"tensor '\w+_scale' has shape \[\d+, 2\]"),
    ("scale renamed", lambda h: h.__setitem__("bias_ih_l0_scale", h.pop(_int8_key(h) + "_scale")),
     r"unexpected tensor 'bias_ih_l0_scale'"),
    ("weights on a Sequential", _meta(kind="Sequential"), r"Sequential"),
]


@pytest.mark.parametrize("label,edit,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_headers(int8_bytes, label, edit, message):
    header, body = split_model_file(int8_bytes)
    edit(header)
    with pytest.raises(FormatError, match=message) as info:
        modelfile.read_model(data=join_model_file(header, body), name="hostile.lstm")
    assert str(info.value).startswith("hostile.lstm: ")


def _rewritten(data, fn):
    """data with its arrays changed by fn(arrays) and laid out anew (any shapes, dtypes)."""
    header, body = split_model_file(data)
    meta = header.pop("__metadata__")
    codes = {"F32": "<f4", "F16": "<f2", "I8": "i1"}
    arrays = {k: np.frombuffer(body[e["data_offsets"][0]:e["data_offsets"][1]], codes[e["dtype"]])
              .reshape(e["shape"]).copy() for k, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"])}
    fn(arrays)
    out, pos, raw = {"__metadata__": meta}, 0, b""
    names = {v: k for k, v in codes.items()}
    for k, a in arrays.items():
        b = a.tobytes()
        out[k] = {"dtype": names[a.dtype.str if a.dtype.str != "|i1" else "i1"], "shape": list(a.shape),
                  "data_offsets": [pos, pos + len(b)]}
        pos, raw = pos + len(b), raw + b
    return join_model_file(out, raw)


def test_hostile_arrays(int8_bytes):
    key = _int8_key(split_model_file(int8_bytes)[0])
    cases = [
        (lambda a: a.__setitem__(key + "_scale", a[key + "_scale"][:-1]), rf"'{key}_scale' has shape \[\d+\], but"),
        (lambda a: a.pop(key + "_scale"), rf"'{key}_scale' is missing: the int8 weights '{key}' need"),
        (lambda a: a.__setitem__(key + "_scale", a[key + "_scale"].astype("<f2")), rf"'{key}_scale' has dtype F16"),
        (lambda a: a.__setitem__(key, a[key].astype("<f4")), rf"'{key}' has dtype F32; int8 weights store it as I8"),
        (lambda a: a[key].__setitem__((0, 0), -128), rf"'{key}' holds -128"),
        (lambda a: a[key + "_scale"].__setitem__(0, -1.0), rf"'{key}_scale' holds a negative, NaN or infinite"),
        (lambda a: a[key + "_scale"].__setitem__(0, np.inf), rf"'{key}_scale' holds a negative, NaN or infinite"),
    ]
    for fn, message in cases:
        with pytest.raises(FormatError, match=message):
            li.load(bytearray(_rewritten(int8_bytes, fn)))
    # a negative zero scale is a zero scale, as the C core takes it
    li.load(bytearray(_rewritten(int8_bytes, lambda a: a[key + "_scale"].__setitem__(0, -0.0))))


def test_declarations_are_checked_before_any_array_is_made(int8_bytes, monkeypatch):
    header, body = split_model_file(int8_bytes)
    _meta(weights="float16")(header)  # the int8 arrays' dtype no longer matches the storage
    bad = join_model_file(header, body)
    made = []
    real = np.frombuffer
    monkeypatch.setattr(modelfile.np, "frombuffer", lambda *a, **k: made.append(a) or real(*a, **k))
    with pytest.raises(FormatError, match="has dtype I8"):
        modelfile.read_stored(data=bad, name="x.lstm")
    assert made == []
    modelfile.read_stored(data=int8_bytes, name="x.lstm")
    assert made  # (the patch does see the arrays a valid file makes)


def test_write_model_checks_the_stored_arrays(tmp_path):
    m = li.GRU(3, 4, weights="int8")
    red = m.reduced_state_dict()
    key = next(k for k, v in red.items() if v.dtype == np.int8)
    cases = [
        (dict(red, **{key: red[key].astype(np.float32)}), "int8", rf"'{key}' is float32; int8 weights store it"),
        ({k: v for k, v in red.items() if k != key + "_scale"}, "int8", rf"'{key}_scale' is missing"),
        (dict(red, **{key + "_scale": red[key + "_scale"][:-1]}), "int8", rf"'{key}_scale' has shape"),
        (red, "float16", rf"'{key}' is int8; float16 weights store it"),
        (m.state_dict(), "int8", r"is missing|is float32"),
        (red, "bfloat16", r"unknown weights 'bfloat16'"),
    ]
    for sd, weights, message in cases:
        with pytest.raises(FormatError, match=message):
            modelfile.write_model(tmp_path / "w.lstm", sd, m.config, "GRU", weights)
        assert not os.path.exists(tmp_path / "w.lstm")
