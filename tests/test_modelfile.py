"""Our model file: round trip for every kind, interoperability with safetensors, atomic writes,
bad files, files written before the other kinds existed."""

import base64
import json
import os
import re
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from file_helpers import MANIFEST, check_against_ref, engine, lstm_cases, path, ref
from lstm_infer import detect, modelfile, readers
from lstm_infer.errors import FormatError


def _weights(name="proj.pt", prefix=""):
    sd = readers.read_tensors(path(name))
    cfg = dict(detect.infer_config(sd, prefix)[1], batch_first=False, dropout=0.0)
    return cfg, detect.lstm_state_dict(sd, prefix)


@pytest.fixture
def model_bytes(tmp_path):
    cfg, sd = _weights()
    f = tmp_path / "m.lstm"
    modelfile.write_model(f, sd, cfg)
    return f.read_bytes()


def _split(data):
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, body, raw=None):
    h = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def test_round_trip_and_layout(tmp_path):
    cfg, sd = _weights()
    f = tmp_path / "m.lstm"
    modelfile.write_model(f, sd, dict(cfg, batch_first=True))
    kind, got_cfg, got = modelfile.read_model(f)
    assert kind == "LSTM"
    assert got_cfg == dict(cfg, batch_first=True)
    assert list(got) == list(sd)  # torch's order
    for k in sd:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], sd[k])
    data = f.read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    assert (8 + n) % 8 == 0 and data[8:9] == b"{"
    assert os.listdir(tmp_path) == ["m.lstm"]


def test_readable_by_safetensors_library(tmp_path):
    cfg, sd = _weights("encdec.pt", "decoder")
    f = tmp_path / "m.safetensors"
    modelfile.write_model(f, sd, cfg)
    loaded = safetensors.numpy.load_file(str(f))
    assert sorted(loaded) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(loaded[k], sd[k])
    with safetensors.safe_open(str(f), "np") as fh:
        meta = fh.metadata()
    assert meta["format"] == "lstm_infer" and meta["format_version"] == "1" and meta["kind"] == "LSTM"
    assert json.loads(meta["config"]) == cfg


def test_written_from_other_dtypes(tmp_path):
    cfg, sd = _weights("fp64.pt")
    modelfile.write_model(tmp_path / "m", sd, cfg)
    _, _, got = modelfile.read_model(tmp_path / "m")
    for k in sd:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], sd[k].astype(np.float32))


class _Failure(Exception):
    pass


@pytest.mark.parametrize("where", ["replace", "fsync", "write"])
def test_atomic_write_leaves_nothing_behind(tmp_path, monkeypatch, where):
    cfg, sd = _weights()
    target = tmp_path / "m.lstm"
    target.write_bytes(b"previous contents")

    def boom(*a, **k):
        raise _Failure(where)

    if where == "write":  # fail after the header has been written: a partial temp file exists
        real_fdopen = os.fdopen

        class FailingFile:
            def __init__(self, fh):
                self.fh, self.writes = fh, 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, b):
                self.writes += 1
                if self.writes == 3:
                    raise _Failure("write")
                return self.fh.write(b)

        monkeypatch.setattr(os, "fdopen", lambda *a, **k: FailingFile(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(os, where, boom)
    with pytest.raises(_Failure):
        modelfile.write_model(target, sd, cfg)
    assert target.read_bytes() == b"previous contents"
    assert os.listdir(tmp_path) == ["m.lstm"]


def test_invalid_model_never_creates_file(tmp_path):
    cfg, sd = _weights()
    sd = dict(sd, weight_hh_l0=np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="weight_hh_l0"):
        modelfile.write_model(tmp_path / "m.lstm", sd, cfg)
    with pytest.raises(ValueError, match="config says hidden_size=9"):
        modelfile.write_model(tmp_path / "m.lstm", _weights()[1], dict(cfg, hidden_size=9))
    assert os.listdir(tmp_path) == []


def test_truncated_at_every_byte(model_bytes, tmp_path):
    n = len(model_bytes)
    for cut in range(n):
        with pytest.raises(FormatError):
            modelfile.read_model(data=model_bytes[:cut], name="cut.lstm")
    # through the file path too, for every byte of the header
    (hlen,) = struct.unpack_from("<Q", model_bytes)
    f = tmp_path / "cut.lstm"
    for cut in range(0, 8 + hlen + 1):
        f.write_bytes(model_bytes[:cut])
        with pytest.raises(FormatError):
            modelfile.read_model(f)


@pytest.mark.parametrize("n", [2**64 - 1, 2**63, 1 << 40, modelfile.MAX_HEADER_BYTES + 1])
def test_absurd_header_sizes_refused_before_reading(n, tmp_path, model_bytes):
    f = tmp_path / "huge.lstm"
    f.write_bytes(struct.pack("<Q", n) + model_bytes[8:])
    with pytest.raises(FormatError, match="exceeds the limit"):
        modelfile.read_model(f)
    with pytest.raises(FormatError, match="exceeds the limit"):
        modelfile.read_model(data=f.read_bytes())


def _edit_entry(key, **change):
    def edit(h):
        h[key] = dict(h[key], **change)
    return edit


def _edit_meta(**change):
    def edit(h):
        h["__metadata__"] = {k: v for k, v in dict(h["__metadata__"], **change).items() if v is not None}
    return edit


def _edit_config(**change):
    def edit(h):
        cfg = json.loads(h["__metadata__"]["config"])
        cfg.update(change)
        h["__metadata__"]["config"] = json.dumps({k: v for k, v in cfg.items() if v != "DROP"})
    return edit


def _rename(old, new):
    def edit(h):
        h[new] = h.pop(old)
    return edit


BAD_HEADERS = [
    ("offset past end", _edit_entry("weight_hr_l1_reverse", data_offsets=[5480, 10**9]), "outside the"),
    ("negative offset", _edit_entry("weight_ih_l0", data_offsets=[-4, 380]), "outside the"),
    ("overlap", _edit_entry("weight_hh_l0", data_offsets=[0, 96]), "overlaps|needs"),
    ("shape vs span", _edit_entry("weight_ih_l0", shape=[32, 5]), "needs 640 bytes"),
    ("dtype F16", _edit_entry("weight_ih_l0", dtype="F16", shape=[32, 8]), "dtype F16"),
    ("unknown dtype", _edit_entry("weight_ih_l0", dtype="F8_E4M3"), "unsupported dtype"),
    ("extra field", _edit_entry("weight_ih_l0", extra=1), "exactly dtype"),
    ("renamed tensor", _rename("weight_hh_l0", "weight_hh_l7"), "missing"),
    ("foreign tensor", _rename("bias_hh_l0", "fc.bias"), "bias_hh_l0: missing"),
    ("no metadata", _edit_meta(format=None, kind=None, config=None, format_version=None), "not an lstm_infer model"),
    ("other format", _edit_meta(format="other"), "not an lstm_infer model"),
    ("future version", _edit_meta(format_version="3"), "unsupported format_version '3'"),
    ("kind", _edit_meta(kind="Transformer"), "unsupported model kind 'Transformer'"),
    ("no kind", _edit_meta(kind=None), "unsupported model kind None"),
    ("kind GRU, LSTM config", _edit_meta(kind="GRU"), r"config keys wrong for GRU \(missing \[\], unexpected \['proj_size'\]\)"),
    ("kind LSTMCell, LSTM config", _edit_meta(kind="LSTMCell"), "config keys wrong for LSTMCell"),
    ("config not json", _edit_meta(config="{input_size: 4"), "config is not valid JSON"),
    ("config not object", _edit_meta(config="[1, 2]"), "config is a list"),
    ("config missing key", _edit_config(proj_size="DROP"), r"config keys wrong for LSTM \(missing \['proj_size'\]"),
    ("config nonlinearity", _edit_config(nonlinearity="tanh"), r"unexpected \['nonlinearity'\]"),
    ("config extra key", _edit_config(gate_order="ifgo"), r"unexpected \['gate_order'\]"),
    ("config bool as int", _edit_config(bias=1), "bias must be true or false"),
    ("config int as bool", _edit_config(num_layers=True), "num_layers must be a non-negative integer"),
    ("config float size", _edit_config(hidden_size=8.0), "hidden_size must be a non-negative integer"),
    ("config zero hidden", _edit_config(hidden_size=0, proj_size=0), "at least 1"),
    ("config proj >= hidden", _edit_config(proj_size=8), "proj_size 8 must be below hidden_size 8"),
    ("config dropout", _edit_config(dropout=2), "dropout must be a number"),
    ("config disagrees", _edit_config(num_layers=3), "config says num_layers=3 but the tensor shapes give 2"),
    ("config disagrees bidir", _edit_config(bidirectional=False), "bidirectional=False"),
    ("metadata not strings", _edit_meta(format_version=1), "strings to strings"),
]


@pytest.mark.parametrize("label, edit, message", BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_hand_edited_headers(model_bytes, label, edit, message):
    header, body = _split(model_bytes)
    assert header["weight_hr_l1_reverse"]["data_offsets"][1] == len(body) == 5504
    edit(header)
    with pytest.raises(FormatError, match=message) as info:
        modelfile.read_model(data=_join(header, body), name="edited.lstm")
    assert str(info.value).startswith("edited.lstm: ")


def test_duplicate_names(model_bytes):
    header, body = _split(model_bytes)
    raw = json.dumps(header).encode()
    entry = json.dumps(header["bias_ih_l0"]).encode()
    dup = raw[:-1] + b', "bias_ih_l0": ' + entry + b"}"
    with pytest.raises(FormatError, match="duplicate name 'bias_ih_l0'"):
        modelfile.read_model(data=_join(None, body, dup), name="dup.lstm")
    cfg = header["__metadata__"]["config"]
    header["__metadata__"]["config"] = cfg[:-1] + ', "hidden_size": 8}'
    with pytest.raises(FormatError, match="duplicate name 'hidden_size'"):
        modelfile.read_model(data=_join(header, body), name="dup.lstm")


def test_trailing_and_missing_bytes(model_bytes):
    with pytest.raises(FormatError, match="4 bytes after the last tensor"):
        modelfile.read_model(data=model_bytes + b"\0" * 4)
    header, body = _split(model_bytes)
    with pytest.raises(FormatError, match="outside the"):
        modelfile.read_model(data=_join(header, body[:-4]))


def test_not_a_model_file():
    with pytest.raises(FormatError, match="not an lstm_infer model file"):
        modelfile.read_model(data=open(path("uni.safetensors"), "rb").read())


# ----------------------------------------------- with the engine (model.py)

@pytest.mark.parametrize("name, prefix, info", lstm_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_loaded_model_matches_torch_outputs(name, prefix, info, tmp_path):
    """write_model/read_model with the engine: what li.load does, spelled out (model.py and
    modelfile.py do not import each other)."""
    model = engine()
    sd = readers.read_tensors(path(name))
    m = model.LSTM.from_state_dict(sd, prefix=prefix)
    f = tmp_path / "m.lstm"
    modelfile.write_model(f, m.state_dict(), m.config, "LSTM")
    kind, cfg, weights = modelfile.read_model(f)
    assert kind == "LSTM" and cfg == m.config
    loaded = model.LSTM(**cfg)
    loaded.load_state_dict(weights, strict=True)

    def forward(x, hx, lengths):
        out, (h, c) = loaded(x, hx=hx, lengths=lengths)
        return out, h, c

    check_against_ref(forward, ref(info["ref"]))
    assert MANIFEST[name]["lstms"][prefix]["config"] == {k: loaded.config[k] for k in info["config"]}


# ------------------------------------------- property: any config, any reader

from hypothesis import given, settings, strategies as st  # noqa: E402


_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "LSTMCell": 4, "GRUCell": 3, "RNNCell": 1}


def _torch_shapes(cfg, kind="LSTM"):
    """Parameter names and shapes of nn.<kind> (as in torch's docs), written out independently of detect."""
    G, H = _GATES[kind], cfg["hidden_size"]
    if kind.endswith("Cell"):
        out = {"weight_ih": (G * H, cfg["input_size"]), "weight_hh": (G * H, H)}
        if cfg["bias"]:
            out["bias_ih"] = out["bias_hh"] = (G * H,)
        return out
    P, D = cfg.get("proj_size", 0), 2 if cfg["bidirectional"] else 1
    out = {}
    for layer in range(cfg["num_layers"]):
        for sfx in ("", "_reverse")[:D]:
            s = f"_l{layer}{sfx}"
            out["weight_ih" + s] = (G * H, cfg["input_size"] if layer == 0 else D * (P or H))
            out["weight_hh" + s] = (G * H, P or H)
            if cfg["bias"]:
                out["bias_ih" + s] = out["bias_hh" + s] = (G * H,)
            if P:
                out["weight_hr" + s] = (P, H)
    return out


_layer = {"input_size": st.integers(1, 9), "hidden_size": st.integers(2, 9), "num_layers": st.integers(1, 3),
          "bias": st.booleans(), "bidirectional": st.booleans(), "batch_first": st.booleans(),
          "dropout": st.sampled_from([0.0, 0.5])}
_cell = {"input_size": st.integers(1, 9), "hidden_size": st.integers(1, 9), "bias": st.booleans()}
_nonlin = {"nonlinearity": st.sampled_from(["tanh", "relu"])}
_configs = st.one_of(
    st.tuples(st.just("LSTM"), st.fixed_dictionaries(dict(_layer, proj_size=st.integers(0, 8)))
              .filter(lambda c: c["proj_size"] < c["hidden_size"])),
    st.tuples(st.just("GRU"), st.fixed_dictionaries(_layer)),
    st.tuples(st.just("RNN"), st.fixed_dictionaries(dict(_layer, **_nonlin))),
    st.tuples(st.sampled_from(["LSTMCell", "GRUCell"]), st.fixed_dictionaries(_cell)),
    st.tuples(st.just("RNNCell"), st.fixed_dictionaries(dict(_cell, **_nonlin))),
)


@settings(max_examples=60, deadline=None)
@given(_configs, st.integers(0, 2**32 - 1))
def test_any_config_round_trips_and_opens_in_safetensors(tmp_path_factory, kind_cfg, seed):
    kind, cfg = kind_cfg
    rng = np.random.default_rng(seed)
    sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in _torch_shapes(cfg, kind).items()}
    f = tmp_path_factory.mktemp("prop") / "m.lstm"
    modelfile.write_model(f, sd, cfg, kind)
    got_kind, got_cfg, got = modelfile.read_model(f)
    assert got_kind == kind and got_cfg == cfg
    assert list(got) == list(sd)  # torch's order
    theirs = safetensors.numpy.load_file(str(f))
    for k, v in sd.items():
        assert got[k].tobytes() == v.tobytes() == theirs[k].tobytes()
    with safetensors.safe_open(str(f), "np") as fh:
        meta = fh.metadata()
    assert meta["kind"] == kind and json.loads(meta["config"]) == cfg and meta["format_version"] == "1"


def test_pickle_and_copies_like_torch_modules():
    """pickle, copy.copy and copy.deepcopy work (as for torch's modules) and
    give models with their own weights and the same configuration."""
    import copy
    import pickle

    import lstm_infer as li

    cfg, sd = _weights()  # projections, from a real torch.save file
    m = li.LSTM(**dict(cfg, batch_first=True))
    m.load_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((2, 5, cfg["input_size"])).astype(np.float32)
    want = m(x)
    for other in (pickle.loads(pickle.dumps(m)), copy.copy(m), copy.deepcopy(m)):
        assert type(other) is li.LSTM and other.config == m.config
        got = other(x)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1][0], want[1][0])
        np.testing.assert_array_equal(got[1][1], want[1][1])
    # a copy's weights are its own: loading new ones into it leaves m alone
    twin = copy.deepcopy(m)
    twin.load_state_dict({k: v * 0.5 for k, v in sd.items()})
    np.testing.assert_array_equal(m(x)[0], want[0])
    assert not np.array_equal(twin(x)[0], want[0])


# ------------------------------------------- every kind, from real torch modules

TORCH_MODULES = [
    ("GRU", dict(input_size=5, hidden_size=4, num_layers=2, bidirectional=True)),
    ("GRU", dict(input_size=3, hidden_size=6, bias=False)),
    ("RNN", dict(input_size=5, hidden_size=4, nonlinearity="relu", num_layers=3)),
    ("RNN", dict(input_size=5, hidden_size=4, nonlinearity="tanh", bias=False, bidirectional=True)),
    ("LSTM", dict(input_size=5, hidden_size=6, proj_size=2, num_layers=2)),
    ("LSTMCell", dict(input_size=5, hidden_size=4)),
    ("GRUCell", dict(input_size=5, hidden_size=4, bias=False)),
    ("RNNCell", dict(input_size=5, hidden_size=4, nonlinearity="relu")),
]


def _torch_module(kind, kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = getattr(torch.nn, kind)(**kw)
    full = detect.constructor_config(kind, {k: v for k, v in kw.items()})
    return m, full, {k: v.numpy() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("kind, kw", TORCH_MODULES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(TORCH_MODULES)])
def test_every_kind_round_trips(kind, kw, tmp_path):
    m, cfg, sd = _torch_module(kind, kw)
    f = tmp_path / "m.lstm"
    modelfile.write_model(f, sd, cfg, kind)
    got_kind, got_cfg, got = modelfile.read_model(f)
    assert got_kind == kind and got_cfg == cfg and set(got_cfg) == modelfile.CONFIG_KEYS_BY_KIND[kind]
    assert list(got) == list(m.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(got[k], v.numpy())
    with safetensors.safe_open(str(f), "np") as fh:
        meta = fh.metadata()
    assert meta["kind"] == kind and json.loads(meta["config"]) == cfg
    # the header's config rebuilds the torch module, and torch takes the tensors back
    torch = pytest.importorskip("torch")
    twin = getattr(torch.nn, kind)(**got_cfg)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in got.items()}, strict=True)


def test_layer_defaults_filled_in_cells_take_none(tmp_path):
    _, cfg, sd = _torch_module("GRU", dict(input_size=3, hidden_size=2))
    cfg = {k: v for k, v in cfg.items() if k not in ("batch_first", "dropout")}
    modelfile.write_model(tmp_path / "g", sd, cfg, "GRU")
    assert modelfile.read_model(tmp_path / "g")[1] == dict(cfg, batch_first=False, dropout=0.0)
    _, cfg, sd = _torch_module("GRUCell", dict(input_size=3, hidden_size=2))
    with pytest.raises(FormatError, match=r"config keys wrong for GRUCell \(unexpected \['batch_first'\]"):
        modelfile.write_model(tmp_path / "c", sd, dict(cfg, batch_first=False), "GRUCell")


def test_write_refuses_what_does_not_fit(tmp_path):
    _, lstm_cfg, lstm_sd = _torch_module("LSTM", dict(input_size=5, hidden_size=4))
    _, rnn_cfg, rnn_sd = _torch_module("RNN", dict(input_size=5, hidden_size=4))
    _, cell_cfg, cell_sd = _torch_module("RNNCell", dict(input_size=5, hidden_size=4))
    f = tmp_path / "m.lstm"
    for sd, cfg, kind, message in [
        (lstm_sd, lstm_cfg, "Transformer", "unsupported model kind 'Transformer'"),
        (lstm_sd, lstm_cfg, "GRU", r"config keys wrong for GRU \(unexpected \['proj_size'\]"),
        (lstm_sd, {k: v for k, v in lstm_cfg.items() if k != "proj_size"}, "GRU",
         "the header says kind 'GRU' but the tensors are those of an nn.LSTM"),
        (rnn_sd, {k: v for k, v in rnn_cfg.items() if k != "nonlinearity"}, "RNN",
         r"config keys wrong for RNN \(missing \['nonlinearity'\]"),
        (rnn_sd, dict(rnn_cfg, nonlinearity="sigmoid"), "RNN", "nonlinearity must be \"tanh\" or \"relu\""),
        (rnn_sd, dict(rnn_cfg, hidden_size=5), "RNN", "config says hidden_size=5 but the tensor shapes give 4"),
        (rnn_sd, dict(rnn_cfg, num_layers=1.0), "RNN", "config num_layers must be an integer, got 1.0"),
        (rnn_sd, dict(rnn_cfg, bias=1), "RNN", "config bias must be true or false, got 1"),
        (cell_sd, cell_cfg, "RNN", r"config keys wrong for RNN \(missing \['bidirectional', 'num_layers'\]"),
        (cell_sd, dict(input_size=5, hidden_size=4, bias=True, nonlinearity="tanh"), "GRUCell",
         r"config keys wrong for GRUCell \(unexpected \['nonlinearity'\]"),
        (cell_sd, dict(input_size=5, hidden_size=4, bias=True), "GRUCell",
         "the header says kind 'GRUCell' but the tensors are those of an nn.RNNCell"),
        (dict(cell_sd, **{"fc.weight": np.zeros((2, 4))}), cell_cfg, "RNNCell", r"unexpected tensors \['fc.weight'\]"),
        ({**{f"a.{k}": v for k, v in cell_sd.items()}}, cell_cfg, "RNNCell", "tensors do not form one nn.RNNCell"),
    ]:
        with pytest.raises(FormatError) as info:
            modelfile.write_model(f, sd, cfg, kind)
        assert str(info.value).startswith(f"{f}: "), str(info.value)
        assert re.search(message, str(info.value)), (message, str(info.value))
        assert os.listdir(tmp_path) == []


@pytest.fixture
def rnn_bytes(tmp_path):
    _, cfg, sd = _torch_module("RNN", dict(input_size=3, hidden_size=2, nonlinearity="relu", num_layers=2))
    f = tmp_path / "r.lstm"
    modelfile.write_model(f, sd, cfg, "RNN")
    return f.read_bytes()


RNN_BAD_HEADERS = [
    ("nonlinearity sigmoid", _edit_config(nonlinearity="sigmoid"), "nonlinearity must be \"tanh\" or \"relu\", got 'sigmoid'"),
    ("nonlinearity missing", _edit_config(nonlinearity="DROP"), r"missing \['nonlinearity'\]"),
    ("nonlinearity not str", _edit_config(nonlinearity=1), "nonlinearity must be"),
    ("kind GRU", _edit_meta(kind="GRU"), r"unexpected \['nonlinearity'\]"),
    ("kind GRU, GRU config", lambda h: (_edit_meta(kind="GRU")(h), _edit_config(nonlinearity="DROP")(h)),
     "the header says kind 'GRU' but the tensors are those of an nn.RNN"),
    ("kind LSTM", _edit_meta(kind="LSTM"), "config keys wrong for LSTM"),
    ("kind RNNCell", _edit_meta(kind="RNNCell"), "config keys wrong for RNNCell"),
    ("config disagrees", _edit_config(num_layers=1), "config says num_layers=1 but the tensor shapes give 2"),
]


@pytest.mark.parametrize("label, edit, message", RNN_BAD_HEADERS, ids=[b[0] for b in RNN_BAD_HEADERS])
def test_hand_edited_rnn_headers(rnn_bytes, label, edit, message):
    header, body = _split(rnn_bytes)
    assert json.loads(header["__metadata__"]["config"])["nonlinearity"] == "relu"
    edit(header)
    with pytest.raises(FormatError, match=message) as info:
        modelfile.read_model(data=_join(header, body), name="edited.lstm")
    assert str(info.value).startswith("edited.lstm: ")


# A model file written by the code of commit 14b3002 (format_version 1, before the other
# kinds): LSTM(2, 1, batch_first=True), tensors from np.random.default_rng(12).
V1_FILE = base64.b64decode(
    "AAIAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJmb3JtYXQiOiJsc3RtX2luZmVyIiwiZm9ybWF0X3ZlcnNpb24iOiIxIiwia2luZCI6IkxT"
    "VE0iLCJjb25maWciOiJ7XCJiYXRjaF9maXJzdFwiOiB0cnVlLCBcImJpYXNcIjogdHJ1ZSwgXCJiaWRpcmVjdGlvbmFsXCI6IGZhbHNl"
    "LCBcImRyb3BvdXRcIjogMC4wLCBcImhpZGRlbl9zaXplXCI6IDEsIFwiaW5wdXRfc2l6ZVwiOiAyLCBcIm51bV9sYXllcnNcIjogMSwg"
    "XCJwcm9qX3NpemVcIjogMH0ifSwid2VpZ2h0X2loX2wwIjp7ImR0eXBlIjoiRjMyIiwic2hhcGUiOls0LDJdLCJkYXRhX29mZnNldHMi"
    "OlswLDMyXX0sIndlaWdodF9oaF9sMCI6eyJkdHlwZSI6IkYzMiIsInNoYXBlIjpbNCwxXSwiZGF0YV9vZmZzZXRzIjpbMzIsNDhdfSwi"
    "Ymlhc19paF9sMCI6eyJkdHlwZSI6IkYzMiIsInNoYXBlIjpbNF0sImRhdGFfb2Zmc2V0cyI6WzQ4LDY0XX0sImJpYXNfaGhfbDAiOnsi"
    "ZHR5cGUiOiJGMzIiLCJzaGFwZSI6WzRdLCJkYXRhX29mZnNldHMiOls2NCw4MF19fSAgIC6z37sG6IU/vdg9PzdVOT8PNM8/u0+avyeA"
    "IL9+C6m/Wa3cvfqufz8OzLO8/uP9PhGU9L/9lxY+by1ov/Y/4z+LCGM/kQhzP1P5bL2L5Bw/")


def test_version_1_files_from_before_the_other_kinds_still_read(tmp_path):
    f = tmp_path / "old.lstm"
    f.write_bytes(V1_FILE)
    kind, cfg, sd = modelfile.read_model(f)
    assert kind == "LSTM"
    assert cfg == dict(input_size=2, hidden_size=1, num_layers=1, bias=True, batch_first=True, dropout=0.0,
                       bidirectional=False, proj_size=0)
    assert list(sd) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert b"".join(v.tobytes() for v in sd.values()) == V1_FILE[-80:]
    # and what we write for the same model today is byte for byte what that version wrote
    modelfile.write_model(tmp_path / "new.lstm", sd, cfg)
    assert (tmp_path / "new.lstm").read_bytes() == V1_FILE


def test_modelfile_and_detect_do_not_import_the_model_classes():
    import ast

    import lstm_infer

    root = os.path.dirname(lstm_infer.__file__)
    for name in ("modelfile.py", "detect.py"):
        tree = ast.parse(open(os.path.join(root, name)).read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add(("." * node.level) + (node.module or ""))
                imported.update(("." * node.level) + a.name for a in node.names if not node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert not imported & {".model", "lstm_infer.model", "._core", "lstm_infer._core"}, (name, imported)


def test_the_plain_modules_know_the_core_limits():
    from lstm_infer import _core, detect
    assert detect.CORE_LIMITS == {"input_size": _core.MAX_FEATURES, "hidden_size": _core.MAX_FEATURES,
                                  "num_layers": _core.MAX_LAYERS}


# ------------------- li.load / model.save for every kind: needs the lead's new classes

def _family():
    import lstm_infer as li

    if not hasattr(li, "GRU"):
        pytest.skip("needs the recurrent-family classes (li.GRU, li.RNN, the cells) and li.load on "
                    "read_model's (kind, config, state_dict); not in this branch yet")
    return li


@pytest.mark.parametrize("kind, kw", TORCH_MODULES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(TORCH_MODULES)])
def test_li_load_returns_the_class_of_the_kind(kind, kw, tmp_path):  # NEEDS li.GRU etc.
    li = _family()
    _, cfg, sd = _torch_module(kind, kw)
    f = tmp_path / "m.lstm"
    modelfile.write_model(f, sd, cfg, kind)
    m = li.load(f)
    assert type(m) is getattr(li, kind) and m.kind == kind and m.config == cfg
    got = m.state_dict()
    assert list(got) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k])
    # save writes the kind and the config; load gives the same back
    g = tmp_path / "again.lstm"
    m.save(g)
    assert modelfile.read_model(g)[:2] == (kind, cfg)
    assert type(li.load(g)) is type(m)
