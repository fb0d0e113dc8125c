"""Whole models (issue 13): li.Sequential of Embedding, recurrent layers, a readout
and a head, against PyTorch.

(a) committed fixtures (tools/make_seq_fixtures.py: real torch.save files of the
    models in tests/seq_torch.py and torch's own outputs) read, run, saved and
    loaded in a process where torch cannot be imported; (b) the same in this
    process, over the input forms (layouts, lists, unbatched, id dtypes); (c) with
    torch installed, live comparisons on fresh ragged batches, by-hand Sequentials
    loading torch's state dict, and every layer against its torch.nn twin.
"""
import glob
import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import modelfile, pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = sorted(glob.glob(os.path.join(HERE, "fixtures", "seq", "*.npz")))
NAMES = [os.path.basename(f)[:-4] for f in FIXTURES]
TOL = 1e-5


def _case(name):
    with np.load(os.path.join(HERE, "fixtures", "seq", name + ".npz")) as z:
        case = {k: z[k] for k in z.files}
    case["meta"] = json.loads(str(case["meta"]))
    return case


def _model(name, case=None, batch_first=None):
    meta = (case or _case(name))["meta"]
    bf = meta["batch_first"] if batch_first is None else batch_first
    return li.Sequential.from_state_dict(os.path.join(HERE, "fixtures", "seq", name + ".pt"),
                                         meta["pipeline"], batch_first=bf,
                                         nonlinearity=meta["nonlinearity"])


def test_fixtures_present():
    assert set(NAMES) >= {"classifier", "regressor", "scorer", "pooler", "tagger", "relu_max"}


# ------------------------------------------------------------ (a) without torch

def test_fixtures_without_torch(tmp_path):
    """Read the .pt files, run, save as model files and load them again, in a process
    where `import torch` fails; outputs match torch's within TOL."""
    code = (
        "import sys, glob, json, os; sys.modules['torch'] = None\n"
        "import numpy as np, lstm_infer as li\n"
        "res = {}\n"
        f"for f in sorted(glob.glob({os.path.join(HERE, 'fixtures', 'seq', '*.npz')!r})):\n"
        "    z = np.load(f); meta = json.loads(str(z['meta'])); name = os.path.basename(f)[:-4]\n"
        "    m = li.Sequential.from_state_dict(f[:-4] + '.pt', meta['pipeline'],\n"
        "        batch_first=meta['batch_first'], nonlinearity=meta['nonlinearity'])\n"
        f"    out = os.path.join({str(tmp_path)!r}, name + '.lstm')\n"
        "    m.save(out); m2 = li.load(out)\n"
        "    y, y2 = m(z['x'], lengths=z['lengths']), m2(z['x'], lengths=z['lengths'])\n"
        "    res[name] = [float(np.abs(y - z['output']).max()), float(np.abs(y2 - z['output']).max()),\n"
        "                 str(y.dtype), list(y.shape) == list(z['output'].shape), m2.pipeline, m.pipeline]\n"
        "print(json.dumps({'res': res, 'torch': sys.modules.get('torch', 0)}))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["torch"] is None, "torch was imported"
    assert sorted(report["res"]) == NAMES
    for name, (err, err_loaded, dtype, shape_ok, loaded_text, text) in report["res"].items():
        assert err <= TOL and err_loaded <= TOL, name
        assert dtype == "float32" and shape_ok, name
        assert loaded_text == text == _case(name)["meta"]["pipeline"], name


# ------------------------------------------------------------ (b) fixtures here

@pytest.mark.parametrize("name", NAMES)
def test_fixture_parity(name):
    case = _case(name)
    m = _model(name, case)
    y = m(case["x"], lengths=case["lengths"])
    assert y.dtype == np.float32 and y.shape == case["output"].shape
    np.testing.assert_allclose(y, case["output"], rtol=0, atol=TOL)
    assert m.readout == case["meta"]["pipeline"].split(" > ")[2 if m.takes_ids else 1]


@pytest.mark.parametrize("name", NAMES)
def test_other_layout(name):
    """The same weights built with the other batch_first take the transposed input
    and give the transposed per-step result (or the same vectors)."""
    case = _case(name)
    bf = case["meta"]["batch_first"]
    m = _model(name, case, batch_first=not bf)
    assert m.batch_first is (not bf)
    y = m(np.swapaxes(case["x"], 0, 1), lengths=case["lengths"])
    want = case["output"] if m.readout not in (None, "steps") else np.swapaxes(case["output"], 0, 1)
    np.testing.assert_allclose(y, want, rtol=0, atol=TOL)


def _sequences(case):
    bf = case["meta"]["batch_first"]
    x = case["x"] if bf else np.swapaxes(case["x"], 0, 1)  # (B, T, ...)
    return [x[b, :n] for b, n in enumerate(case["lengths"])]


def _rows(case):
    """torch's result for each sequence alone: (out,) or (T_b, out)."""
    out, lengths = case["output"], case["lengths"]
    if out.ndim == 2:
        return list(out)
    per = out if case["meta"]["batch_first"] else np.swapaxes(out, 0, 1)
    return [per[b, :n] for b, n in enumerate(lengths)]


@pytest.mark.parametrize("name", NAMES)
def test_list_of_sequences(name):
    case = _case(name)
    m = _model(name, case)
    got = m(_sequences(case))
    want = _rows(case)
    if m.readout in (None, "steps"):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=0, atol=TOL)
    else:  # one vector per sequence, stacked, as li.LSTM returns its state
        np.testing.assert_allclose(got, np.stack(want), rtol=0, atol=TOL)


@pytest.mark.parametrize("name", NAMES)
def test_unbatched(name):
    case = _case(name)
    m = _model(name, case)
    for seq, want in zip(_sequences(case), _rows(case)):
        if len(seq) == 0:
            continue
        got = m(seq)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
                                   np.uint64])
def test_id_dtypes(dtype):
    case = _case("classifier")
    m = _model("classifier", case)
    y = m(case["x"].astype(dtype), lengths=case["lengths"].astype(np.int32))
    np.testing.assert_allclose(y, case["output"], rtol=0, atol=TOL)


def test_equal_lengths_without_lengths():
    """lengths=None means every sequence is T long (the C fast path)."""
    case = _case("regressor")
    m = _model("regressor", case)
    T, B = case["x"].shape[:2]
    full = m(case["x"], lengths=np.full(B, T))
    np.testing.assert_array_equal(m(case["x"]), full)
    np.testing.assert_array_equal(m(case["x"].astype(np.float64)), full)


def test_steps_padding_is_zero():
    """After steps, later layers act on each valid step: a head with a bias still
    leaves 0 past each length."""
    case = _case("regressor")
    y = _model("regressor", case)(case["x"], lengths=case["lengths"])
    T = y.shape[0]
    pad = np.arange(T)[:, None] >= case["lengths"][None, :]
    assert np.all(y[pad] == 0) and np.all(y[~pad] != 0)


def test_save_load_pickle_round_trip(tmp_path):
    case = _case("tagger")
    m = _model("tagger", case)
    want = m(case["x"], lengths=case["lengths"])
    f = tmp_path / "tagger.lstm"
    m.save(f)
    for other in (li.load(f), li.load(str(f)), pickle.loads(pickle.dumps(m))):
        assert isinstance(other, li.Sequential)
        assert other.pipeline == m.pipeline and other.batch_first and other.readout == "steps"
        assert [n for n, _ in other.layers] == [n for n, _ in m.layers]
        np.testing.assert_array_equal(other(case["x"], lengths=case["lengths"]), want)
    kind, cfg, sd = modelfile.read_model(f)
    assert kind == "Sequential" and cfg == m.config
    assert list(sd) == list(m.state_dict())


def test_attributes():
    m = _model("classifier")
    assert m.pipeline == "embedding > lstm > final > dropout > fc > softmax"
    assert m.readout == "final" and m.batch_first is False and m.takes_ids
    assert m.in_features is None and m.out_features == 4
    names = [n for n, _ in m.layers]
    assert names == ["embedding", "lstm", "final", "dropout", "fc", "softmax"]
    assert isinstance(m["lstm"], li.LSTM) and m[0] is m["embedding"] and len(m) == 6
    assert isinstance(m["final"], li.Readout) and m["final"].mode == "final"
    assert m["lstm"].bidirectional and m["lstm"].num_layers == 2
    assert list(m.state_dict()) == ["embedding.weight"] + [f"lstm.{k}" for k in m["lstm"].state_dict()] + [
        "fc.weight", "fc.bias"]
    assert "Sequential(" in repr(m) and "(lstm): LSTM(8, 6" in repr(m)


def test_pipeline_inspection():
    sd = li.read_state_dict(os.path.join(HERE, "fixtures", "seq", "tagger.pt"))
    found = pipeline.list_modules(sd)
    assert [(f.name, f.kind) for f in found] == [("emb", "Embedding"), ("encoder.rnn", "LSTM"),
                                                 ("tags", "Embedding")]
    assert found[2].alternatives == ("Linear",)  # a lone 2-D weight: the pipeline decides
    assert pipeline.unrecognised(sd) == []
    text = pipeline.suggest(sd)
    assert text == "emb > encoder.rnn > final > tags:Linear"
    li.Sequential.from_state_dict(sd, text)  # its widths chain
    cls = li.read_state_dict(os.path.join(HERE, "fixtures", "seq", "classifier.pt"))
    assert pipeline.suggest(cls) == "embedding > lstm > final > fc"
    assert pipeline.describe("LSTM", found[1].config) == "LSTM(6, 5, bidirectional=True)"


@pytest.mark.parametrize("name", ["fp16.pt", "fp64.pt", "bf16_legacy.pt"])
def test_read_state_dict_gives_float32(name):
    sd = li.read_state_dict(os.path.join(HERE, "data", name))
    assert sd and all(v.dtype == np.float32 for v in sd.values())


def test_read_state_dict_dtypes():
    sd = li.read_state_dict(os.path.join(HERE, "fixtures", "seq", "scorer.pt"))  # a checkpoint
    assert set(sd) == {"gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0",
                       "score.weight", "score.bias"}
    assert all(v.dtype == np.float32 for v in sd.values())


# ------------------------------------------------------------ (c) live torch

torch = None


def _torch():
    global torch
    torch = pytest.importorskip("torch")
    sys.path.insert(0, HERE)
    import seq_torch
    return seq_torch


@pytest.mark.parametrize("cls_name", ["Classifier", "Regressor", "Scorer", "Pooler", "Tagger", "ReluMax"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_live_parity(cls_name, checkpoint, tmp_path):
    st = _torch()
    cls = st.MODELS[cls_name]
    torch.manual_seed(len(cls_name) + checkpoint)
    model = cls().eval()
    with torch.no_grad():
        for p in model.parameters():  # beyond torch's init: bigger weights, LayerNorm too
            p.add_(torch.randn_like(p) * 0.3)
    f = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(), "epoch": 1} if checkpoint else model.state_dict(), f)
    ours = li.Sequential.from_state_dict(li.read_state_dict(f), cls.PIPELINE, batch_first=cls.BATCH_FIRST,
                                         nonlinearity=getattr(cls, "NONLINEARITY", None))
    rng = np.random.default_rng(7)
    for T, B in ((1, 1), (9, 6), (13, 3)):
        lengths = rng.integers(1, T + 1, B)
        lengths[0], lengths[-1] = T, 1
        x = st.make_input(cls, model, T, lengths.tolist(), seed=int(T * 10 + B))
        want = st.expected(cls, model, x, lengths.tolist())
        got = ours(x.numpy(), lengths=lengths)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        got_t = ours(x, lengths=torch.as_tensor(lengths))  # torch tensors in
        np.testing.assert_allclose(got_t, want, rtol=0, atol=TOL)
    # torch's own tensors, as a state dict or a checkpoint, go in directly too
    direct = li.Sequential.from_state_dict({"model": model.state_dict()} if checkpoint else model.state_dict(),
                                           cls.PIPELINE, batch_first=cls.BATCH_FIRST,
                                           nonlinearity=getattr(cls, "NONLINEARITY", None))
    np.testing.assert_array_equal(direct(x.numpy(), lengths=lengths), got)
    # our state dict is torch's: the torch model takes it back, strictly
    model.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True)


def test_by_hand_sequential_loads_torch_state_dict():
    st = _torch()
    torch.manual_seed(3)
    tm = st.Classifier().eval()
    ours = li.Sequential(OrderedDict(
        embedding=li.Embedding(40, 8, padding_idx=0), lstm=li.LSTM(8, 6, num_layers=2, bidirectional=True),
        final="final", drop=li.Dropout(0.3), fc=li.Linear(12, 4), softmax=li.Softmax(dim=-1)))
    ours.load_state_dict(tm.state_dict())
    assert ours.pipeline == "embedding > lstm > final > dropout > fc > softmax"
    lengths = [5, 1, 3]
    x = st.make_input(st.Classifier, tm, 5, lengths, seed=1)
    np.testing.assert_allclose(ours(x.numpy(), lengths=lengths), st.expected(st.Classifier, tm, x, lengths),
                               rtol=0, atol=TOL)
    # positional: torch's names "0", "1", ...
    pos = li.Sequential(li.Embedding(40, 8), li.LSTM(8, 6, num_layers=2, bidirectional=True),
                        li.Readout("final"), li.Linear(12, 4))
    assert pos.pipeline == "0 > 1 > final > 3" and list(pos.state_dict())[0] == "0.weight"


def test_length_zero_rules():
    """A length-0 sequence: zeros from last, mean and max, h_0 (zeros) from final;
    the head still runs on them (e.g. a Linear gives its bias)."""
    lstm = li.LSTM(3, 4, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    lengths = np.array([5, 0])
    for mode in ("last", "final", "mean", "max"):
        m = li.Sequential(lstm, mode, li.Linear(8, 2))
        y = m(x, lengths=lengths)
        np.testing.assert_allclose(y[1], m[2].bias, rtol=0, atol=0)
    y = li.Sequential(lstm, "steps", li.Linear(8, 2))(x, lengths=lengths)
    assert np.all(y[:, 1] == 0)


@pytest.mark.parametrize("proj", [0, 2])
@pytest.mark.parametrize("bf", [False, True])
def test_readouts_against_torch_definitions(bf, proj):
    """Each readout as the issue defines it, from li.LSTM's own output and state."""
    rng = np.random.default_rng(1)
    lstm = li.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=bf, proj_size=proj)
    T, B = 6, 4
    x = rng.standard_normal((B, T, 3) if bf else (T, B, 3)).astype(np.float32)
    lengths = np.array([6, 1, 3, 2])
    out, (h_n, _) = lstm(x, lengths=lengths)
    per = out if bf else out.transpose(1, 0, 2)  # (B, T, F)
    want = {
        "last": np.stack([per[b, n - 1] for b, n in enumerate(lengths)]),
        "final": np.concatenate((h_n[-2], h_n[-1]), axis=1),
        "mean": np.stack([per[b, :n].mean(0) for b, n in enumerate(lengths)]),
        "max": np.stack([per[b, :n].max(0) for b, n in enumerate(lengths)]),
    }
    for mode, w in want.items():
        got = li.Sequential(lstm, mode)(x, lengths=lengths)
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(li.Sequential(lstm, "steps")(x, lengths=lengths), out)
    np.testing.assert_array_equal(li.Sequential(lstm)(x, lengths=lengths), out)
    uni = li.LSTM(3, 4, num_layers=2, batch_first=bf, proj_size=proj)  # final: h_n[-1]
    np.testing.assert_array_equal(li.Sequential(uni, "final")(x, lengths=lengths),
                                  uni(x, lengths=lengths)[1][0][-1])


def test_stacked_recurrent_layers():
    """lstm > gru chains per-step outputs directly; 'steps' between them, with
    per-step layers, works too."""
    rng = np.random.default_rng(2)
    a, b = li.LSTM(3, 5), li.GRU(5, 4)
    x = rng.standard_normal((6, 3, 3)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    h = a(x, lengths=lengths)[0]
    want = b(h, lengths=lengths)[1][-1]
    np.testing.assert_allclose(li.Sequential(a, b, "final")(x, lengths=lengths), want, rtol=0, atol=0)
    lin = li.Linear(5, 5)
    h2 = lin(h)
    want2 = b(h2, lengths=lengths)[1][-1]
    got2 = li.Sequential(a, "steps", lin, b, "final")(x, lengths=lengths)
    np.testing.assert_allclose(got2, want2, rtol=0, atol=1e-6)


# ------------------------------------------------------------ layers vs torch.nn

def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def test_embedding_vs_torch():
    _torch()
    te = torch.nn.Embedding(12, 5, padding_idx=-2)
    ours = li.Embedding(12, 5, padding_idx=-2)
    assert ours.padding_idx == te.padding_idx == 10
    assert np.all(ours.weight[10] == 0)  # torch's init too
    ours.load_state_dict(te.state_dict())
    ids = np.random.default_rng(0).integers(0, 12, (4, 3, 2))
    np.testing.assert_array_equal(ours(ids), te(_t(ids)).detach().numpy())
    assert ours(ids.astype(np.uint8)).dtype == np.float32
    assert repr(ours) == "Embedding(12, 5, padding_idx=10)"


@pytest.mark.parametrize("bias", [True, False])
def test_linear_vs_torch(bias):
    _torch()
    tl = torch.nn.Linear(6, 3, bias=bias)
    ours = li.Linear(6, 3, bias=bias)
    assert (ours.bias is None) == (not bias) and list(ours.state_dict()) == list(tl.state_dict())
    ours.load_state_dict(tl.state_dict())
    rng = np.random.default_rng(1)
    for shape in ((6,), (4, 6), (2, 5, 6), (0, 6)):
        x = rng.standard_normal(shape).astype(np.float32)
        got = ours(x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, tl(_t(x)).detach().numpy(), rtol=0, atol=1e-6)
    assert repr(ours) == repr(tl)


@pytest.mark.parametrize("shape,affine,bias", [((7,), True, True), ((7,), True, False), ((7,), False, True),
                                               ((3, 7), True, True)])
def test_layernorm_vs_torch(shape, affine, bias):
    _torch()
    tn = torch.nn.LayerNorm(shape, eps=1e-3, elementwise_affine=affine, bias=bias)
    with torch.no_grad():
        for p in tn.parameters():
            p.uniform_(-1, 1)
    ours = li.LayerNorm(shape, eps=1e-3, elementwise_affine=affine, bias=bias)
    assert list(ours.state_dict()) == list(tn.state_dict())
    ours.load_state_dict(tn.state_dict())
    x = (np.random.default_rng(2).standard_normal((4, 3, 7)) * 5 + 3).astype(np.float32)
    got = ours(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, tn(_t(x)).detach().numpy(), rtol=0, atol=1e-5)


def test_layernorm_of_rows_of_one_value_gives_the_bias_as_torch():
    """Variance 0: torch gives the bias exactly; a float32 mean a few ulp off the value,
    divided by sqrt(eps), once gave up to |weight| instead."""
    _torch()
    tn = torch.nn.LayerNorm(100)
    with torch.no_grad():
        for p in tn.parameters():
            p.uniform_(-1, 1)
    ours = li.LayerNorm(100)
    ours.load_state_dict(tn.state_dict())
    x = np.repeat(np.array([0.1, 1 / 3, 1234.567, -7.77e7, 0.0], np.float32)[:, None], 100, axis=1)
    want = tn(_t(x)).detach().numpy()
    np.testing.assert_array_equal(want, np.broadcast_to(tn.bias.detach().numpy(), want.shape))
    np.testing.assert_array_equal(ours(x), want)


def test_pointwise_vs_torch():
    _torch()
    x = np.array([[-1e4, -88.0, -3.0, -0.5, 0.0, 0.5, 3.0, 88.0, 1e4],
                  [1e30, 0.0, -1e30, 2.0, 1.0, -1.0, 5.0, 6.0, -7.0]], np.float32)
    pairs = [(li.ReLU(), torch.nn.ReLU()), (li.Tanh(), torch.nn.Tanh()), (li.Sigmoid(), torch.nn.Sigmoid()),
             (li.Dropout(0.5), torch.nn.Dropout(0.5).eval()), (li.ReLU(inplace=True), torch.nn.ReLU()),
             (li.Dropout(0.1, inplace=True), torch.nn.Dropout(0.1).eval())]
    for dim in (-1, 0, 1):
        pairs += [(li.Softmax(dim), torch.nn.Softmax(dim)), (li.LogSoftmax(dim=dim), torch.nn.LogSoftmax(dim))]
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # stable
        for ours, theirs in pairs:
            got = ours(x)
            assert got.dtype == np.float32 and got.shape == x.shape, ours
            np.testing.assert_allclose(got, theirs(_t(x)).numpy(), rtol=1e-6, atol=1e-6, err_msg=repr(ours))
    assert li.ReLU()(np.array([np.nan], np.float32))[0] != 0  # NaN stays NaN, as torch's


def test_list_ids_pack_whatever_their_dtypes():
    """A list of id arrays is padded into int64: a padding_idx past the arrays' own dtype
    (uint8 ids, padding_idx 500) or int64 beside uint64 arrays still equals each alone."""
    for pad, dt in ((500, np.uint8), (200, np.int8), (None, np.uint64)):
        m = li.Sequential(OrderedDict(emb=li.Embedding(1000, 4, padding_idx=pad), gru=li.GRU(4, 3), last="last"))
        seqs = [np.array([1, 2, 3], dt), np.array([4], np.int64)]
        np.testing.assert_array_equal(m(seqs), np.stack([m(s) for s in seqs]))
    m = li.Sequential(OrderedDict(emb=li.Embedding(10, 4), gru=li.GRU(4, 3), last="last"))
    with pytest.raises(IndexError, match="token id 18446744073709551615 is out of range"):
        m([np.array([1, 2], np.int64), np.array([2**64 - 1], np.uint64)])


def test_in_features_past_leading_pointwise_layers():
    """Pointwise layers first take what the first layer with a width takes."""
    assert li.Sequential(li.Dropout(0.1), li.LSTM(3, 5), "final", li.Linear(5, 2)).in_features == 3
    assert li.Sequential(li.ReLU(), li.Linear(3, 2)).in_features == 3
    m = li.Sequential(li.Dropout(0.1), li.LSTM(3, 5), "final", li.Linear(5, 2))
    with pytest.raises(li.runner.BadRecordError, match="sequence 1: wrong shape"):
        li.predict(m, [np.zeros((4, 3), np.float32), np.zeros((4, 7), np.float32)])


@pytest.mark.parametrize("bf", [False, True])
def test_mean_readout_same_bits_alone_and_in_a_batch(bf):
    """The mean sums step after step whatever the layout (numpy's sum pairs the steps up
    along a contiguous axis: a width-1 sequence alone once differed in its last bit)."""
    rng = np.random.default_rng(1)
    for H in (1, 2):
        m = li.Sequential(OrderedDict(rnn=li.GRU(3, H, batch_first=bf), mean="mean"))
        x = rng.standard_normal((3, 40, 3) if bf else (40, 3, 3)).astype(np.float32)
        y = m(x)
        for b in range(3):
            np.testing.assert_array_equal(m(x[b] if bf else x[:, b]), y[b])
    seqs = [rng.standard_normal((int(rng.integers(20, 60)), 3)).astype(np.float32) for _ in range(20)]
    m = li.Sequential(OrderedDict(rnn=li.GRU(3, 1), mean="mean"))
    for got, s in zip(li.predict(m, seqs), seqs):
        np.testing.assert_array_equal(got, m(s))


def test_slice_gives_a_sequential():
    m = li.Sequential(OrderedDict(emb=li.Embedding(10, 4), gru=li.GRU(4, 3), last="last", fc=li.Linear(3, 2)))
    head = m[:3]
    assert isinstance(head, li.Sequential) and [n for n, _ in head.layers] == ["emb", "gru", "last"]
    assert head[1] is m[1]
    ids = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(m[3](head(ids)), m(ids))
    with pytest.raises(ValueError, match="empty"):
        m[5:]
