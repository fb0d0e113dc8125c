"""Whole models (issue 13): what is refused, and how. Pipelines whose shapes do not
chain, unknown prefixes, misplaced readouts, ambiguous tensors, bad token ids and
dtypes, and hostile or damaged Sequential model files. No torch needed."""
import json
import os
import struct
from collections import OrderedDict

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import modelfile, pipeline
from lstm_infer.errors import FormatError

from file_helpers import join_model_file, split_model_file

# pipelines over part of a state dict are made on purpose here (see test_pipeline_notes)
pytestmark = pytest.mark.filterwarnings("ignore::lstm_infer.pipeline.LeftOutWarning")

RNG = np.random.default_rng(0)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _prefixed(prefix, module):
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _sd():
    """A state dict as a text classifier's, plus a few modules to get wrong."""
    sd = {"embedding.weight": _w(10, 4)}
    sd.update(_prefixed("lstm", li.LSTM(4, 3)))
    sd.update({"fc.weight": _w(2, 3), "fc.bias": _w(2)})
    sd.update({"big.weight": _w(2, 5), "big.bias": _w(2)})      # a Linear taking 5 features
    sd.update({"proj.weight": _w(3, 4)})                        # Embedding or bias-free Linear
    sd.update({"norm.weight": _w(3), "norm.bias": _w(3)})        # LayerNorm(3)
    sd.update(_prefixed("gru", li.GRU(3, 3)))
    sd.update(_prefixed("cell", li.LSTMCell(4, 3)))
    sd.update({"bn.weight": _w(3), "bn.bias": _w(3), "bn.running_mean": _w(3), "bn.running_var": _w(3),
               "bn.num_batches_tracked": np.array(5)})
    sd.update(_prefixed("enc.a", li.GRU(4, 3)))
    sd.update(_prefixed("enc.b", li.GRU(3, 3)))
    return sd


def _refused(text, match, **kw):
    with pytest.raises(ValueError, match=match) as info:
        li.Sequential.from_state_dict(_sd(), text, **kw)
    return str(info.value)


def test_good_pipeline_builds():
    m = li.Sequential.from_state_dict(_sd(), "embedding > lstm > final > norm > fc > softmax")
    assert m.pipeline == "embedding > lstm > final > norm > fc > softmax"
    assert m(np.array([[1, 2], [3, 4]]), lengths=[2, 1]).shape == (2, 2)


def test_shapes_do_not_chain_names_both_layers():
    msg = _refused("embedding > lstm > final > big", "do not chain")
    assert "'lstm'" in msg and "'big'" in msg and "3 features" in msg and "5 features" in msg
    msg = _refused("embedding > gru > final", "do not chain")  # gru takes 3, embedding gives 4
    assert "'embedding'" in msg and "'gru'" in msg and "4 features" in msg


def test_unknown_prefix_lists_what_the_file_has():
    msg = _refused("embedding > lsmt > final > fc", "no module 'lsmt'")
    for what in ("'embedding' (Embedding(10, 4))", "'lstm' (LSTM(", "'fc' (Linear(", "'norm' (LayerNorm(",
                 "relu", "final"):
        assert what in msg
    _refused("embedding > lstm:LSTM > final > fcc:Linear", "no module 'fcc'")


@pytest.mark.parametrize("text,match", [
    ("embedding > lstm > final > last > fc", "two readouts"),
    ("embedding > lstm > final > gru > final", "after the readout 'final'"),
    ("embedding > final > lstm", "needs a recurrent layer"),
    ("fc > relu", None),  # fine: no recurrent layer at all
    ("lstm > relu > final", "without a readout"),
    ("embedding > lstm > fc", "without a readout: put one of steps, last, final, mean, max"),
    ("lstm > final > embedding:Embedding", "must come first"),
    ("lstm > final > embedding", r"'lstm' \(LSTM\(4, 3\)\) gives 3 features, 'embedding' .*Linear.* takes 4 features$"),
    ("embedding > lstm > dropout > relu > final", "without a readout"),
    ("embedding > > lstm", "step 2 is empty"),
    ("embedding > lstm:Conv > final", "unknown kind 'Conv'"),
    ("embedding > cell > final", "LSTMCell, which takes one step"),
    ("embedding > enc > final", "'enc' holds several modules: 'enc.a', 'enc.b'"),
    ("embedding > bn", "'bn' holds no module lstm_infer recognises.*running_mean"),
    ("embedding > lstm:GRU > final", "'lstm' holds an LSTM .*not a GRU"),
    ("fc:Embedding > relu", "'fc' holds a Linear"),
])
def test_refused_pipelines(text, match):
    if match is None:
        li.Sequential.from_state_dict(_sd(), text)
    else:
        _refused(text, match)


def test_steps_between_recurrent_layers_and_dropout_before_readout():
    m = li.Sequential.from_state_dict(_sd(), "embedding > lstm > steps > norm > gru > dropout > mean > fc")
    assert m.readout == "mean" and m.out_features == 2
    m = li.Sequential.from_state_dict(_sd(), "embedding > lstm > gru")  # per-step result
    assert m.readout is None
    assert m(np.array([[1], [2]])).shape == (2, 1, 3)


def test_lone_weight_is_embedding_first_and_linear_elsewhere():
    m = li.Sequential.from_state_dict(_sd(), "proj > lstm > final")  # proj: Embedding(3, 4)
    assert m["proj"].kind == "Embedding" and m.takes_ids
    m = li.Sequential.from_state_dict(_sd(), "lstm > final > fc > relu")
    assert m["fc"].kind == "Linear"
    sd = _sd()
    sd["head.weight"] = _w(5, 3)  # bias-free Linear(3, 5) after the readout
    m = li.Sequential.from_state_dict(sd, "embedding > lstm > last > head")
    assert m["head"].kind == "Linear" and m["head"].bias is None and m.out_features == 5
    # first, where only a Linear chains with what follows (norm takes 3 = proj's rows)
    m = li.Sequential.from_state_dict(_sd(), "proj > norm")
    assert m["proj"].kind == "Linear" and not m.takes_ids
    m = li.Sequential.from_state_dict(_sd(), "proj:Linear > relu")
    assert m["proj"].kind == "Linear"


def test_ambiguity_message_suggests_name_kind():
    assert li.Sequential.from_state_dict(_sd(), "proj > gru > final")["proj"].kind == "Linear"  # gru takes 3
    msg = _refused("proj > big", "do not chain")  # big takes 5: neither kind chains
    assert "'proj' was read as an Embedding" in msg and "write 'proj:Linear'" in msg
    sd = _sd()
    sd["head.weight"] = _w(3, 4)  # not first: a Linear(4, 3), which cannot take the lstm's 3
    with pytest.raises(ValueError, match="takes 4 features$"):
        li.Sequential.from_state_dict(sd, "embedding > lstm > final > head")


def test_nonlinearity_option():
    sd = _prefixed("rnn", li.RNN(3, 4))
    sd.update({"fc.weight": _w(2, 4), "fc.bias": _w(2)})
    assert li.Sequential.from_state_dict(sd, "rnn > final > fc")["rnn"].nonlinearity == "tanh"
    assert li.Sequential.from_state_dict(sd, "rnn > final > fc", nonlinearity="relu")["rnn"].nonlinearity == "relu"
    m = li.Sequential.from_state_dict(sd, "rnn > final > fc", nonlinearity={"rnn": "relu"})
    assert m["rnn"].nonlinearity == "relu"
    with pytest.raises(ValueError, match="nonlinearity"):
        li.Sequential.from_state_dict(sd, "rnn > final > fc", nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"names \['fc'\], which are not RNN layers"):
        li.Sequential.from_state_dict(sd, "rnn > final > fc", nonlinearity={"fc": "relu"})
    with pytest.raises(ValueError, match="applies to RNN layers; the pipeline has none"):
        li.Sequential.from_state_dict(_sd(), "lstm > final", nonlinearity="relu")


def test_top_level_module_is_named_in_the_message():
    with pytest.raises(ValueError, match=r"GRU\(3, 4\) at the top level .*lstm_infer.GRU.from_state_dict"):
        li.Sequential.from_state_dict(li.GRU(3, 4).state_dict(), "gru > final")


def test_not_a_state_dict():
    with pytest.raises(TypeError, match="pipeline must be a str"):
        li.Sequential.from_state_dict(_sd(), ["embedding", "lstm"])
    with pytest.raises(TypeError, match="mapping"):
        li.Sequential.from_state_dict(42, "lstm > final")
    with pytest.raises(TypeError, match="batch_first"):
        li.Sequential.from_state_dict(_sd(), "lstm > final", batch_first="yes")


# ------------------------------------------------------------ calls

@pytest.fixture(scope="module")
def classifier():
    return li.Sequential.from_state_dict(_sd(), "embedding > lstm > final > fc > softmax")


@pytest.mark.parametrize("bad", [10, -1, 1 << 40])
def test_bad_ids_name_the_id_and_the_vocabulary(classifier, bad):
    ids = np.array([[1, 2], [bad, 3]], np.int64)
    with pytest.raises(IndexError, match=f"token id {bad} is out of range .* 10 entries"):
        classifier(ids, lengths=[2, 2])
    with pytest.raises(IndexError, match=f"token id {bad}"):
        li.Embedding(10, 2)(np.array([bad]))


def test_ids_of_unsigned_type_out_of_range(classifier):
    with pytest.raises(IndexError, match="token id 255 is out of range"):
        classifier(np.array([[255]], np.uint8))


@pytest.mark.parametrize("x", [np.zeros((3, 2), np.float32), np.zeros((3, 2), bool), [[0.5, 1.0]]])
def test_ids_must_be_integers(classifier, x):
    with pytest.raises(TypeError, match="integer token ids: the model starts with the Embedding 'embedding'"):
        classifier(x)


def test_floats_model_refuses_ints():
    m = li.Sequential(li.LSTM(3, 2), "last")
    with pytest.raises(TypeError, match="floating-point"):
        m(np.zeros((4, 1, 3), np.int64))


@pytest.mark.parametrize("x,lengths,match", [
    (np.zeros((2, 3, 4), np.int64), None, "token ids must be 2-D"),
    (np.zeros((3, 2), np.int64), [4, 1], "lengths must lie in"),
    (np.zeros((3, 2), np.int64), [1, 1, 1], "1-D array of 2 entries"),
    (np.zeros((3,), np.int64), [3], "lengths needs batched input"),
    ([np.zeros(2, np.int64), np.zeros((2, 2), np.int64)], None, r"input\[1\] must have shape"),
    ([], None, "empty list"),
    ([np.zeros(0, np.int64)], None, "every sequence in the list is empty"),
])
def test_bad_calls(classifier, x, lengths, match):
    with pytest.raises(ValueError, match=match):
        classifier(x, lengths=lengths)


def test_wrong_feature_count_names_the_layer():
    m = li.Sequential(OrderedDict(enc=li.GRU(3, 2), last="last"))
    with pytest.raises(ValueError, match="layer 'enc'.*3"):
        m(np.zeros((4, 1, 5), np.float32))


def test_by_hand_construction_errors():
    with pytest.raises(ValueError, match=r"'0' \(LSTM\(2, 3\)\) gives 3 features, '2' .*takes 4"):
        li.Sequential(li.LSTM(2, 3), "final", li.Linear(4, 1))
    with pytest.raises(ValueError, match="disagree on batch_first"):
        li.Sequential(li.LSTM(2, 3), li.LSTM(3, 3, batch_first=True))
    with pytest.raises(TypeError, match="cell takes one step"):
        li.Sequential(li.LSTMCell(2, 3))
    with pytest.raises(TypeError, match="not an lstm_infer layer"):
        li.Sequential(li.LSTM(2, 3), object())
    with pytest.raises(ValueError, match="unknown layer keyword 'gelu'"):
        li.Sequential(li.LSTM(2, 3), "gelu")
    with pytest.raises(ValueError, match="is a prefix of"):
        li.Sequential(OrderedDict({"a": li.LSTM(2, 3), "a.b": li.GRU(3, 3)}))
    with pytest.raises(ValueError, match="not usable"):
        li.Sequential(OrderedDict({"a b": li.LSTM(2, 3)}))
    with pytest.raises(ValueError, match="normalizes over several axes"):
        li.Sequential(li.LayerNorm((2, 3)))
    with pytest.raises(ValueError, match="normalizes over several axes"):
        li.Sequential(li.LSTM(2, 3), "steps", li.LayerNorm((2, 3)))
    with pytest.raises(ValueError, match="lengths applies to models with a recurrent layer"):
        li.Sequential(li.Linear(2, 3))(np.zeros((1, 2)), lengths=[1])


def test_load_state_dict_strict():
    m = li.Sequential(OrderedDict(lstm=li.LSTM(2, 3), final="final", fc=li.Linear(3, 1)))
    sd = m.state_dict()
    with pytest.raises(KeyError, match="missing keys: fc.bias"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "fc.bias"})
    with pytest.raises(KeyError, match="unexpected keys: extra.weight"):
        m.load_state_dict(dict(sd, **{"extra.weight": np.zeros(1)}))
    before = m.state_dict()
    changed = {k: v + 1 for k, v in sd.items()}
    changed["fc.weight"] = np.zeros((1, 4))
    with pytest.raises(ValueError, match=r"state_dict\['fc.weight'\] has shape \(1, 4\), expected \(1, 3\)"):
        m.load_state_dict(changed)
    for k, v in m.state_dict().items():  # nothing changed, not even the layers before fc
        np.testing.assert_array_equal(v, before[k])
    missing, unexpected = m.load_state_dict({"fc.bias": np.ones(1)}, strict=False)
    assert "fc.weight" in missing and unexpected == [] and m["fc"].bias[0] == 1


# ------------------------------------------------------------ model files

def _good_file(tmp_path):
    m = li.Sequential.from_state_dict(_sd(), "embedding > lstm > final > norm > fc > softmax")
    f = tmp_path / "m.lstm"
    m.save(f)
    return f.read_bytes()




def _with_config(data, change):
    header, body = split_model_file(data)
    cfg = json.loads(header["__metadata__"]["config"])
    change(cfg)
    header["__metadata__"]["config"] = json.dumps(cfg)
    return join_model_file(header, body)


def test_file_layout(tmp_path):
    data = _good_file(tmp_path)
    header, _ = split_model_file(data)
    meta = header["__metadata__"]
    assert meta["format_version"] == "1" and meta["kind"] == "Sequential"  # older readers refuse by kind
    cfg = json.loads(meta["config"])
    assert [e["name"] for e in cfg["layers"]] == ["embedding", "lstm", "final", "norm", "fc", "softmax"]
    assert cfg["layers"][1]["config"]["batch_first"] is False
    assert list(k for k in header if k != "__metadata__")[:2] == ["embedding.weight", "lstm.weight_ih_l0"]
    import safetensors.numpy  # any safetensors reader opens it
    assert set(safetensors.numpy.load(data)) == set(k for k in header if k != "__metadata__")


def test_truncated_files_are_refused(tmp_path):
    data = _good_file(tmp_path)
    for cut in sorted({0, 4, 8, 9, 100, len(data) // 2, len(data) - 4, len(data) - 1}):
        with pytest.raises(FormatError):
            modelfile.read_model(data=data[:cut], name="cut.lstm")


@pytest.mark.parametrize("change,match", [
    (lambda c: c.pop("batch_first"), "exactly batch_first and layers"),
    (lambda c: c.update(layers={}), "must be a list"),
    (lambda c: c.update(layers=[]), "must be a list of 1 to"),
    (lambda c: c["layers"].append({"name": "x", "kind": "Conv1d", "config": {}}), "unsupported layer kind 'Conv1d'"),
    (lambda c: c["layers"][0].update(extra=1), "exactly name, kind and config"),
    (lambda c: c["layers"][4]["config"].update(in_features="3"), "wrong type or range"),
    (lambda c: c["layers"][4]["config"].update(in_features=4), "do not chain|shape"),
    (lambda c: c["layers"][1]["config"].update(batch_first=True), "differs from the model's"),
    (lambda c: c["layers"][1]["config"].pop("dropout"), "config keys wrong for LSTM"),
    (lambda c: c["layers"][2]["config"].update(mode="first"), "wrong type or range"),
    (lambda c: c["layers"][5].update(name="fc"), "used twice"),
    (lambda c: c["layers"].insert(0, c["layers"].pop(3)), "not valid"),
    (lambda c: c["layers"][0]["config"].update(padding_idx=10), "wrong type or range"),
    (lambda c: c["layers"][0]["config"].update(num_embeddings=11), "shape"),
    (lambda c: c["layers"][3]["config"].update(normalized_shape=[1] * 100), "wrong type or range"),
    (lambda c: c["layers"].extend([{"name": f"r{i}", "kind": "ReLU", "config": {}} for i in range(1000)]),
     "1 to 1000"),
])
def test_bad_config_is_refused(tmp_path, change, match):
    data = _with_config(_good_file(tmp_path), change)
    with pytest.raises(FormatError, match=match):
        modelfile.read_model(data=data, name="bad.lstm")


def _rewrite(data, edit):
    """Rebuild the file after edit(tensors) changes the {name: array} it holds."""
    header, body = split_model_file(data)
    meta = header.pop("__metadata__")
    arrays = {k: np.frombuffer(body[v["data_offsets"][0]:v["data_offsets"][1]], "<f4").reshape(v["shape"])
              for k, v in header.items()}
    edit(arrays)
    out, pos, blob = {"__metadata__": meta}, 0, b""
    for k, a in arrays.items():
        b = np.ascontiguousarray(a, "<f4").tobytes()
        out[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        blob += b
    return join_model_file(out, blob)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop("fc.bias"), "'fc.bias' is missing"),
    (lambda t: t.pop("embedding.weight"), "'embedding.weight' is missing"),
    (lambda t: t.pop("lstm.weight_hh_l0"), "layer 'lstm'.*weight_hh_l0"),
    (lambda t: t.update({"fc.extra": np.zeros(2, np.float32)}), "unexpected tensors.*fc.extra"),
    (lambda t: t.update({"stray.weight": np.zeros(2, np.float32)}), "belong to no layer.*stray.weight"),
    (lambda t: t.update({"final.weight": np.zeros(2, np.float32)}), "unexpected tensors.*final.weight"),
    (lambda t: t.update({"fc.weight": np.zeros((2, 4), np.float32)}), "'fc.weight' has shape"),
    (lambda t: t.update({"norm.bias": np.zeros(4, np.float32)}), "'norm.bias' has shape"),
    (lambda t: t.update({"lstm.weight_ih_l0": np.zeros((12, 5), np.float32)}), "layer 'lstm'"),
])
def test_bad_tensors_are_refused(tmp_path, edit, match):
    data = _rewrite(_good_file(tmp_path), edit)
    with pytest.raises(FormatError, match=match):
        modelfile.read_model(data=data, name="bad.lstm")


def test_rewrite_helper_keeps_a_good_file(tmp_path):
    data = _rewrite(_good_file(tmp_path), lambda t: None)
    kind, cfg, sd = modelfile.read_model(data=data, name="same.lstm")
    assert kind == "Sequential" and len(sd) == 3 + 4 + 2


def test_wrong_dtype_is_refused(tmp_path):
    header, body = split_model_file(_good_file(tmp_path))
    e = header["fc.bias"]
    header["fc.bias"] = dict(e, dtype="I32")
    with pytest.raises(FormatError, match="dtype I32"):
        modelfile.read_model(data=join_model_file(header, body), name="bad.lstm")


def test_write_refuses_before_creating(tmp_path):
    m = li.Sequential.from_state_dict(_sd(), "embedding > lstm > final > fc")
    sd = m.state_dict()
    sd.pop("fc.bias")
    with pytest.raises(FormatError, match="missing"):
        modelfile.write_model(tmp_path / "x.lstm", sd, m.config, "Sequential")
    with pytest.raises(FormatError, match="not a Sequential's config"):
        modelfile.write_model(tmp_path / "x.lstm", m.state_dict(), {"layers": 3}, "Sequential")
    assert list(tmp_path.iterdir()) == []


def test_single_module_files_still_read(tmp_path):
    lstm = li.LSTM(3, 4, bidirectional=True)
    lstm.save(tmp_path / "one.lstm")
    kind, cfg, sd = modelfile.read_model(tmp_path / "one.lstm")
    assert kind == "LSTM" and isinstance(li.load(tmp_path / "one.lstm"), li.LSTM)


def test_list_modules_reports_broken_groups():
    sd = _sd()
    sd["fc.bias"] = _w(3)  # does not fit fc.weight (2, 3)
    found = {f.name: f for f in pipeline.list_modules(sd)}
    assert found["fc"].error is not None and "fc.bias" in str(found["fc"].error)
    assert "fc.weight" in pipeline.unrecognised(sd)
    assert "bn.running_mean" in pipeline.unrecognised(sd)
    assert [f.name for f in pipeline.list_modules(sd)][:3] == ["embedding", "lstm", "fc"]  # file order
    with pytest.raises(ValueError, match="'fc': fc.bias"):
        li.Sequential.from_state_dict(sd, "embedding > lstm > final > fc")


_ODD_VALUES = [None, True, False, 0, -1, 1, 3, 4, 2 ** 63, 1.5, float("nan"), "", "x", "LSTM", "Linear",
               "final", [], [3], [[1]], {}, {"a": 1}]


def _mutate(obj, rng):
    """obj with one value somewhere inside replaced by an odd one (or a key dropped)."""
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        k = list(obj)[rng.integers(len(obj))]
        if rng.random() < 0.15:
            return {kk: v for kk, v in obj.items() if kk != k}
        return dict(obj, **{k: _mutate(obj[k], rng)})
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        i = int(rng.integers(len(obj)))
        return obj[:i] + [_mutate(obj[i], rng)] + obj[i + 1:]
    return _ODD_VALUES[rng.integers(len(_ODD_VALUES))]


def test_fuzzed_configs_give_format_errors(tmp_path):
    """Hostile configs: every damaged one is refused with a FormatError (or, where the
    damage is harmless, read); never another exception."""
    data = _good_file(tmp_path)
    header, body = split_model_file(data)
    cfg = json.loads(header["__metadata__"]["config"])
    rng = np.random.default_rng(13)
    refused = 0
    for _ in range(400):
        bad = _mutate(cfg, rng)
        h = dict(header, __metadata__=dict(header["__metadata__"], config=json.dumps(bad)))
        try:
            kind, got, sd = modelfile.read_model(data=join_model_file(h, body), name="fuzz.lstm")
        except FormatError:
            refused += 1
            continue
        li.Sequential.from_config(got, sd)  # what reads must build
    assert refused > 300


def test_fuzzed_bytes_give_format_errors(tmp_path):
    data = bytearray(_good_file(tmp_path))
    (n,) = struct.unpack_from("<Q", data)
    rng = np.random.default_rng(14)
    for _ in range(300):
        bad = bytearray(data)
        for pos in rng.integers(8, 8 + n, 3):
            bad[pos] = int(rng.integers(32, 127))
        try:
            kind, cfg, sd = modelfile.read_model(data=bytes(bad), name="fuzz.lstm")
        except FormatError:
            continue
        li.Sequential.from_config(cfg, sd)  # what reads must build


def test_detect_other_kinds():
    from lstm_infer import detect
    sd = {"emb.weight": _w(7, 3), "fc.weight": _w(2, 3), "fc.bias": _w(2), "ln.weight": _w(3),
          "ln2.weight": _w(3), "ln2.bias": _w(3), "conv.weight": _w(4, 3, 2), "conv.bias": _w(4),
          "bn.weight": _w(3), "bn.bias": _w(3), "bn.running_mean": _w(3), "bad.weight": _w(2, 3),
          "bad.bias": _w(3), "lstm.weight_ih_l0": _w(8, 3)}
    found = {p: (k, r) for p, k, r in detect.scan_other(sd)}
    assert set(found) == {"emb.", "fc.", "ln.", "ln2.", "bad."}  # not conv (3-D), bn (running stats), lstm
    assert found["emb."][1].config == dict(num_embeddings=7, embedding_dim=3, padding_idx=None)
    assert found["emb."][1].alternatives == ("Linear",)
    assert detect.as_kind(found["emb."][1], "Linear").config == dict(in_features=3, out_features=7, bias=False)
    assert found["fc."][1].config == dict(in_features=3, out_features=2, bias=True)
    assert found["ln."][1].config == dict(normalized_shape=[3], eps=1e-5, elementwise_affine=True, bias=False)
    assert found["ln2."][1].assumed == ("eps",)
    assert found["bad."][0] == "Linear" and "bad.bias: expected shape (2,)" in str(found["bad."][1])
    with pytest.raises(ValueError, match="cannot be a LayerNorm"):
        detect.as_kind(found["fc."][1], "LayerNorm")


def test_tensors_the_named_module_does_not_use_are_refused():
    """A learned initial state beside an LSTM's weights, or an attention beside the
    recurrent layer inside the named module, would be dropped without a word."""
    sd = _prefixed("lstm", li.LSTM(3, 4))
    sd.update({"lstm.h0": _w(1, 1, 4), "lstm.c0": _w(1, 1, 4), "fc.weight": _w(2, 4), "fc.bias": _w(2)})
    with pytest.raises(ValueError, match=r"'lstm' holds tensors that its LSTM\(3, 4\) does not use: "
                                         r"lstm.h0 \(1, 1, 4\), lstm.c0"):
        li.Sequential.from_state_dict(sd, "lstm > final > fc")
    sd = _prefixed("enc.rnn", li.GRU(4, 3))
    sd.update({"enc.attn.in_proj_weight": _w(9, 3), "enc.attn.in_proj_bias": _w(9)})
    with pytest.raises(ValueError, match=r"'enc' holds tensors that its GRU\(4, 3\) at 'enc.rnn' does not use: "
                                         r"enc.attn.in_proj_weight"):
        li.Sequential.from_state_dict(sd, "enc > final")
    li.Sequential.from_state_dict(sd, "enc.rnn > final")  # naming the layer itself is fine


def test_bad_tensors_name_their_layer():
    sd = _prefixed("enc", li.GRU(4, 3))
    sd.update(_prefixed("dec", li.GRU(3, 3)))
    sd["dec.weight_hh_l0"] = sd["dec.weight_hh_l0"].copy()
    sd["dec.weight_hh_l0"][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"state_dict\['dec.weight_hh_l0'\]: a weight is NaN or Inf"):
        li.Sequential.from_state_dict(sd, "enc > steps > dec", weights="int8")
    sd["dec.weight_hh_l0"] = np.zeros(sd["dec.weight_hh_l0"].shape, np.int32)
    with pytest.raises(TypeError, match=r"state_dict\['dec.weight_hh_l0'\] must have a floating-point dtype"):
        li.Sequential.from_state_dict(sd, "enc > steps > dec")


def test_read_state_dict_of_a_bytes_path_says_bytes_are_contents(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, w=_w(2, 3))
    assert set(li.read_state_dict(str(path))) == {"w"}
    with pytest.raises(FormatError, match="bytes are read as the file's contents; .* pass its path as a str"):
        li.read_state_dict(os.fsencode(path))
