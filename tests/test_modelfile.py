"""Our model file: round trip, interoperability with safetensors, atomic writes, bad files."""

import json
import os
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
    got_cfg, got = modelfile.read_model(f)
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
    _, got = modelfile.read_model(tmp_path / "m")
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
    ("future version", _edit_meta(format_version="2"), "unsupported format_version '2'"),
    ("kind", _edit_meta(kind="GRU"), "unsupported model kind 'GRU'"),
    ("config not json", _edit_meta(config="{input_size: 4"), "config is not valid JSON"),
    ("config not object", _edit_meta(config="[1, 2]"), "config is a list"),
    ("config missing key", _edit_config(proj_size="DROP"), r"missing \['proj_size'\]"),
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
    model = engine()
    sd = readers.read_tensors(path(name))
    m = model.LSTM.from_state_dict(sd, prefix=prefix)
    f = tmp_path / "m.lstm"
    m.save(f)
    loaded = modelfile.load_model(f)
    assert loaded.config == m.config

    def forward(x, hx, lengths):
        out, (h, c) = loaded(x, hx=hx, lengths=lengths)
        return out, h, c

    check_against_ref(forward, ref(info["ref"]))
    assert MANIFEST[name]["lstms"][prefix]["config"] == {k: loaded.config[k] for k in info["config"]}


# ------------------------------------------- property: any config, any reader

from hypothesis import given, settings, strategies as st  # noqa: E402


def _torch_shapes(cfg):
    """nn.LSTM parameter names and shapes (as in torch's LSTM docs)."""
    H, P, D = cfg["hidden_size"], cfg["proj_size"], 2 if cfg["bidirectional"] else 1
    out = {}
    for layer in range(cfg["num_layers"]):
        for sfx in ("", "_reverse")[:D]:
            s = f"_l{layer}{sfx}"
            out["weight_ih" + s] = (4 * H, cfg["input_size"] if layer == 0 else D * (P or H))
            out["weight_hh" + s] = (4 * H, P or H)
            if cfg["bias"]:
                out["bias_ih" + s] = out["bias_hh" + s] = (4 * H,)
            if P:
                out["weight_hr" + s] = (P, H)
    return out


_configs = st.fixed_dictionaries({
    "input_size": st.integers(1, 9), "hidden_size": st.integers(2, 9), "num_layers": st.integers(1, 3),
    "bias": st.booleans(), "bidirectional": st.booleans(), "batch_first": st.booleans(),
    "dropout": st.sampled_from([0.0, 0.5]), "proj_size": st.integers(0, 8),
}).filter(lambda c: c["proj_size"] < c["hidden_size"])


@settings(max_examples=40, deadline=None)
@given(_configs, st.integers(0, 2**32 - 1))
def test_any_config_round_trips_and_opens_in_safetensors(tmp_path_factory, cfg, seed):
    rng = np.random.default_rng(seed)
    sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in _torch_shapes(cfg).items()}
    f = tmp_path_factory.mktemp("prop") / "m.lstm"
    modelfile.write_model(f, sd, cfg)
    got_cfg, got = modelfile.read_model(f)
    assert got_cfg == cfg
    theirs = safetensors.numpy.load_file(str(f))
    for k, v in sd.items():
        assert got[k].tobytes() == v.tobytes() == theirs[k].tobytes()


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
