"""Reduced-precision weights (weights="float16" / "int8"): accuracy against
float32 PyTorch for every kind and layout, the rounding rules against NumPy,
the scalar and AVX2 kernels against each other, and the Python API (the
weights attribute, state_dict, load_state_dict, pickle, reduced_state_dict).

Accuracy bounds: float16 stores weights with a relative error of 2^-11 and
computes in float32; int8 rounds each weight to 1/254 of its row's largest and
h to 1/65534 of its largest per step. On torch's default initialisation the
errors measured are ~2e-4 (float16) and ~4e-3 (int8: the RNNs; the LSTMs and
GRUs 7e-4) at most, so the bounds below leave a factor of about 2 to 5."""
import copy
import importlib.util
import os
import pickle

import numpy as np
import pytest

import lstm_infer as li
from isa_helpers import available_isas
from lstm_infer import _core, readers

torch = pytest.importorskip("torch")
from torch_ref import torch_forward, torch_forward_h  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
BOUND = {"float16": 1e-3, "int8": 1e-2}
ISAS = available_isas()

# kind, constructor arguments, torch class arguments
LAYOUTS = [
    ("LSTM", dict(input_size=20, hidden_size=40)),
    ("LSTM", dict(input_size=20, hidden_size=40, num_layers=2, bidirectional=True)),
    ("LSTM", dict(input_size=12, hidden_size=36, num_layers=2, proj_size=10, bidirectional=True)),
    ("LSTM", dict(input_size=20, hidden_size=40, bias=False, batch_first=True)),
    ("GRU", dict(input_size=20, hidden_size=40, num_layers=2, bidirectional=True)),
    ("GRU", dict(input_size=7, hidden_size=17, bias=False)),
    ("RNN", dict(input_size=20, hidden_size=40, num_layers=2, bidirectional=True)),
    ("RNN", dict(input_size=20, hidden_size=33, nonlinearity="relu")),
]


@pytest.fixture(params=ISAS)
def isa(request):
    li.set_isa(request.param)
    yield request.param
    li.set_isa("auto")


def _torch_module(kind, args, seed=0):
    torch.manual_seed(seed)
    return getattr(torch.nn, kind)(**args).eval()


def _reference(tm, x, lengths, hx=None):
    if isinstance(tm, torch.nn.LSTM):
        out, h_n, c_n = torch_forward(torch, tm, x, lengths, hx)
        return out, (h_n, c_n)
    return torch_forward_h(torch, tm, x, lengths, hx)


def _inputs(args, T=11, B=5, seed=1):
    rng = np.random.default_rng(seed)
    shape = (B, T, args["input_size"]) if args.get("batch_first") else (T, B, args["input_size"])
    x = rng.standard_normal(shape).astype(np.float32)
    lengths = np.array([T, 1, 0, T - 3, 6][:B], np.int64)
    return x, lengths


def _max_err(got, want):
    if isinstance(want, tuple):
        return max(_max_err(g, w) for g, w in zip(got, want))
    return float(np.max(np.abs(got - want)))


@pytest.mark.parametrize("weights", ["float16", "int8"])
@pytest.mark.parametrize("kind,args", LAYOUTS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}{v}" for k, v in v.items() if k != "input_size"))
def test_against_float32_torch(kind, args, weights, isa):
    tm = _torch_module(kind, args)
    extra = {k: args[k] for k in ("batch_first", "nonlinearity") if k in args}
    m = getattr(li, kind).from_state_dict(tm.state_dict(), weights=weights, **extra)
    assert m.weights == weights
    x, lengths = _inputs(args)
    out, state = m(x, lengths=lengths)
    want_out, want_state = _reference(tm, x, lengths)
    assert _max_err(out, want_out) <= BOUND[weights]
    assert _max_err(state, want_state) <= BOUND[weights]
    # past each length: zeros exactly, as for float32
    B = x.shape[0] if args.get("batch_first") else x.shape[1]
    for b in range(B):
        pad = out[b, lengths[b]:] if args.get("batch_first") else out[lengths[b]:, b]
        assert not pad.any()


@pytest.mark.parametrize("kind,args", LAYOUTS[:3] + LAYOUTS[4:5] + LAYOUTS[6:7])
def test_float16_is_float32_on_the_rounded_weights(kind, args, isa):
    """float16 computes in float32 on the rounded weights: the same bits as a
    float32 model built from its state_dict, and torch on those within 1e-5."""
    tm = _torch_module(kind, args)
    m16 = getattr(li, kind).from_state_dict(tm.state_dict(), weights="float16")
    sd = m16.state_dict()
    for key, v in tm.state_dict().items():
        want = v.numpy().astype(np.float16).astype(np.float32) if v.ndim == 2 else v.numpy()
        assert np.array_equal(sd[key], want), key
    m32 = getattr(li, kind).from_state_dict(sd)
    x, lengths = _inputs(args)
    out16, _ = m16(x, lengths=lengths)
    out32, _ = m32(x, lengths=lengths)
    assert np.array_equal(out16, out32)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    assert _max_err(out16, _reference(tm, x, lengths)[0]) <= 1e-5


@pytest.mark.skipif(len(ISAS) < 2, reason="one kernel set on this CPU")
@pytest.mark.parametrize("weights", ["float16", "int8"])
@pytest.mark.parametrize("kind,args", LAYOUTS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}{v}" for k, v in v.items() if k != "input_size"))
def test_kernel_sets_agree(kind, args, weights):
    """Every SIMD kernel set this CPU has against the scalar reference. float16:
    float32's parity bound. int8: the int32 sums are exact on every set, but h
    differs between them by float32 rounding of the activations (~1e-7), which
    can move a quantized h by one step; 2e-3 bounds what that does after 11 steps."""
    tm = _torch_module(kind, args)
    extra = {k: args[k] for k in ("batch_first", "nonlinearity") if k in args}
    m = getattr(li, kind).from_state_dict(tm.state_dict(), weights=weights, **extra)
    x, lengths = _inputs(args)
    results = {}
    try:
        for name in ISAS:
            li.set_isa(name)
            results[name] = m(x, lengths=lengths)
    finally:
        li.set_isa("auto")
    bound = 1e-5 if weights == "float16" else 2e-3
    for name in ISAS[1:]:
        assert _max_err(results["scalar"][0], results[name][0]) <= bound, name
        assert _max_err(results["scalar"][1], results[name][1]) <= bound, name


@pytest.mark.parametrize("weights", ["float16", "int8"])
def test_a_sequence_alone_gets_the_bits_it_gets_in_a_batch(weights, isa):
    tm = _torch_module("LSTM", dict(input_size=20, hidden_size=40, num_layers=2))
    m = li.LSTM.from_state_dict(tm.state_dict(), weights=weights)
    x, lengths = _inputs({"input_size": 20}, T=9, B=4)
    lengths = np.array([9, 4, 9, 1])
    out, _ = m(x, lengths=lengths)
    for b in range(4):
        alone, _ = m(x[:lengths[b], b:b + 1])
        assert np.array_equal(alone[:, 0], out[:lengths[b], b])


# ---------------------------------------------------------------- trained weights

def _example_signal(frames, seed):
    """The signal the detector was trained on (examples/stream_detector.py's generator)."""
    spec = importlib.util.spec_from_file_location("stream_detector",
                                                  os.path.join(EXAMPLES, "stream_detector.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_signal(frames, np.random.default_rng(seed))[0]


def test_trained_detector_accuracy(isa):
    """examples/detector.pt, a GRU trained by tools/make_stream_detector.py, on
    3000 frames of its own kind of signal against float32 torch, within the
    issue's bounds. Measured: float16 max 9.0e-4 (mean 6e-5); int8 max 9.4e-3
    (mean 7.4e-4), of which weight_hh's int8 rounding alone, in a float32
    model, gives 9.1e-3 (with h in int8 rather than int16 it was 1.2e-2)."""
    sd = readers.read_tensors(os.path.join(EXAMPLES, "detector.pt"))
    tm = torch.nn.GRU(16, 24).eval()
    tm.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in sd.items() if k.startswith("gru.")})
    x = _example_signal(3000, seed=0)[:, None, :]
    want = _reference(tm, x, None)[0]
    for weights, bound in (("float16", 2e-3), ("int8", 1e-2)):
        m = li.GRU.from_state_dict(sd, prefix="gru", weights=weights)
        assert _max_err(m(x)[0], want) <= bound, weights


def test_trained_classifier_accuracy(isa):
    """The README's examples/classifier.pt (Embedding -> bidirectional LSTM),
    its LSTM on the embedded sentences of tests/data/classifier_ref.npz, output
    and h_n against float32 torch within the issue's bounds. Measured: float16
    max 7e-4; int8 max 7.7e-3 (c_n 9.9e-3; with h in int8, output 7.3e-3)."""
    sd = readers.read_tensors(os.path.join(EXAMPLES, "classifier.pt"))
    z = np.load(os.path.join(HERE, "data", "classifier_ref.npz"))
    x, lengths = sd["embedding.weight"][z["x"]].astype(np.float32), z["lengths"]
    tm = torch.nn.LSTM(24, 32, bidirectional=True).eval()
    tm.load_state_dict({k[5:]: torch.from_numpy(v) for k, v in sd.items() if k.startswith("lstm.")})
    want, (want_h, _) = _reference(tm, x, lengths)
    for weights, bound in (("float16", 2e-3), ("int8", 1e-2)):
        out, (h_n, _) = li.LSTM.from_state_dict(sd, prefix="lstm", weights=weights)(x, lengths=lengths)
        assert _max_err((out, h_n), (want, want_h)) <= bound, weights


# ---------------------------------------------------------------- rounding rules

def test_float16_rounding_is_numpys():
    """Nearest, ties to even, subnormals, the top of the range, Inf and NaN: as
    NumPy's float32 -> float16 conversion."""
    rng = np.random.default_rng(3)
    vals = np.concatenate([
        rng.standard_normal(4000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 5, 4000),
        np.array([0.0, -0.0, 65504.0, 65519.99, -65519.99, 6.1e-5, 6.0e-8, 2.9e-8, 3.0e-8,
                  1e-10, np.inf, -np.inf, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11], np.float32),
        (np.arange(-2048, 2048, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0 ** -24),
    ]).astype(np.float32).reshape(1, -1)
    q, scales = _core.reduce_weight(_core.WEIGHTS_F16, vals)
    assert scales is None and q.dtype == np.float16
    assert np.array_equal(q.view(np.uint16), vals.astype(np.float16).view(np.uint16))
    nan, _ = _core.reduce_weight(_core.WEIGHTS_F16, np.array([[np.nan]], np.float32))
    assert np.isnan(nan[0, 0])
    with pytest.raises(ValueError, match="float16 range"):
        _core.reduce_weight(_core.WEIGHTS_F16, np.array([[1.0, 65520.0]], np.float32))


def test_int8_quantization_is_the_documented_one():
    """scale = max|row| / 127, q = round-half-even(w * (127 / max|row|)) in
    float32; a row below 2^-100 is zero."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((50, 33)).astype(np.float32) * np.float32(0.3)
    w[3] = 0.0
    w[4, :] = 1e-39  # below 2^-100
    w[7] = 0.0
    w[7, :2] = 1e-36  # below 2^-100 too: 127 / max|row| would overflow float32
    w[5, 7] = -5.0
    w[6] = (np.arange(33, dtype=np.float32) - 16) / np.float32(127 / 0.5)  # ties at .5
    q, scales = _core.reduce_weight(_core.WEIGHTS_I8, w)
    amax = np.max(np.abs(w), axis=1)
    tiny = amax < np.float32(2.0 ** -100)
    inv = np.where(tiny, np.float32(0), np.float32(127) / np.where(tiny, 1, amax)).astype(np.float32)
    want_q = np.rint(w * inv[:, None]).astype(np.int8)
    want_s = np.where(tiny, np.float32(0), amax / np.float32(127)).astype(np.float32)
    assert q.dtype == np.int8 and np.array_equal(q, want_q)
    assert np.array_equal(scales, want_s)
    assert q.min() >= -127 and q[5, 7] == -127
    assert not q[3].any() and not q[4].any() and not q[7].any()
    with pytest.raises(ValueError, match="NaN or Inf"):
        _core.reduce_weight(_core.WEIGHTS_I8, np.array([[1.0, np.inf]], np.float32))


# ---------------------------------------------------------------- Python API

@pytest.mark.parametrize("weights", ["float16", "int8"])
def test_api(weights, tmp_path):
    m = li.LSTM(8, 16, num_layers=2, proj_size=4, weights=weights)
    assert m.weights == weights and f"weights={weights!r}" in repr(m)
    assert "weights" not in m.config  # the config stays torch's constructor arguments
    x = np.random.default_rng(0).standard_normal((5, 3, 8)).astype(np.float32)
    out = m(x)[0]
    sd = m.state_dict()
    assert all(v.dtype == np.float32 for v in sd.values())
    # the stored form round-trips bit for bit, and so do pickle and copy
    red = m.reduced_state_dict()
    want_dtype = np.float16 if weights == "float16" else np.int8
    assert red["weight_hh_l0"].dtype == want_dtype and red["bias_ih_l0"].dtype == np.float32
    # int8 stores weight_hh as int8 with row scales, the other matrices as float16
    assert red["weight_ih_l1"].dtype == red["weight_hr_l1"].dtype == np.float16
    assert ("weight_hh_l1_scale" in red) == (weights == "int8")
    assert "weight_hr_l1_scale" not in red
    again = li.LSTM.from_reduced_state_dict(m.config, red, weights)
    for other in (again, pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert other.weights == weights
        assert np.array_equal(other(x)[0], out)
        r2 = other.reduced_state_dict()
        assert all(np.array_equal(r2[k], red[k]) for k in red)
    # loading float32 tensors keeps the storage; weights= changes it
    m.load_state_dict(sd)
    assert m.weights == weights
    if weights == "float16":  # float16 -> float32 -> float16 is the identity
        assert np.array_equal(m(x)[0], out)
    else:  # a scale may move by an ulp: reduced_state_dict is what round-trips exactly
        assert _max_err(m(x)[0], out) <= 1e-3
    m.load_state_dict(sd, weights="float32")
    assert m.weights == "float32" and np.array_equal(m.state_dict()["weight_ih_l0"], sd["weight_ih_l0"])
    # a partial load changes the storage of the weights it does not give, too
    m.load_state_dict({"weight_ih_l0": sd["weight_ih_l0"]}, strict=False, weights=weights)
    assert m.weights == weights and m.reduced_state_dict()["weight_hh_l1"].dtype == want_dtype
    m.save(str(tmp_path / "m.lstm"))  # the file keeps the stored weights (tests/test_reduced_files.py)
    assert np.array_equal(li.load(str(tmp_path / "m.lstm"))(x)[0], m(x)[0])


def test_api_errors():
    with pytest.raises(ValueError, match="weights must be one of"):
        li.GRU(4, 8, weights="bfloat16")
    with pytest.raises(ValueError, match="weights must be one of"):
        li.LSTM.from_state_dict(li.LSTM(4, 8).state_dict(), weights="int4")
    sd = li.RNN(4, 8).state_dict()
    sd["weight_hh_l0"][2, 3] = 1e6
    with pytest.raises(ValueError, match=r"weight_hh_l0.*float16 range"):
        li.RNN.from_state_dict(sd, weights="float16")
    sd["weight_hh_l0"][2, 3] = np.nan
    with pytest.raises(ValueError, match=r"weight_hh_l0.*NaN or Inf"):
        li.RNN.from_state_dict(sd, weights="int8")
    m = li.RNN(4, 8)
    with pytest.raises(ValueError):  # a failed load leaves the model as it was
        m.load_state_dict(sd, weights="int8")
    assert m.weights == "float32" and not np.isnan(m.state_dict()["weight_hh_l0"]).any()
    with pytest.raises(ValueError, match="configuration"):  # int8 caps the state width
        li.GRU(2, _core.MAX_I8_STATE + 1, weights="int8")
    with pytest.raises(KeyError, match="expected keys"):
        li.LSTM.from_reduced_state_dict({"input_size": 4, "hidden_size": 8},
                                        li.LSTM(4, 8, weights="int8").state_dict(), "int8")
    red = li.LSTM(4, 8, weights="int8").reduced_state_dict()
    config = {"input_size": 4, "hidden_size": 8}
    for key, value, match in (
            ("weight_hh_l0", red["weight_hh_l0"].astype(np.float32), r"\['weight_hh_l0'\] must be int8"),
            ("weight_ih_l0", red["weight_ih_l0"][:, :3], r"\['weight_ih_l0'\] has shape \(32, 3\), expected"),
            ("bias_ih_l0", None, r"\['bias_ih_l0'\] must be float32"),
            ("weight_hh_l0_scale", red["weight_hh_l0_scale"][:5], r"\['weight_hh_l0_scale'\] must be floats of shape")):
        with pytest.raises(ValueError, match=match):  # the key named, not an index
            li.LSTM.from_reduced_state_dict(config, dict(red, **{key: value}), "int8")


def test_from_reduced_state_dict_keeps_its_own_copies():
    """Changing the caller's arrays afterwards changes neither what the model computes
    nor what it reports, saves or pickles."""
    m = li.LSTM(4, 8, weights="int8")
    red = m.reduced_state_dict()
    m2 = li.LSTM.from_reduced_state_dict({"input_size": 4, "hidden_size": 8}, red, "int8")
    x = np.random.default_rng(5).standard_normal((3, 2, 4)).astype(np.float32)
    want, sd = m2(x)[0], m2.state_dict()
    for v in red.values():
        v[...] = 0
    np.testing.assert_array_equal(m2(x)[0], want)
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m2))(x)[0], want)


@pytest.mark.parametrize("weights", ["float16", "int8"])
def test_cells_and_streams(weights):
    tc = _torch_module("LSTMCell", dict(input_size=6, hidden_size=10))
    cell = li.LSTMCell.from_state_dict(tc.state_dict(), weights=weights)
    assert cell.weights == weights
    x = np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32)
    with torch.no_grad():
        h, c = tc(torch.from_numpy(x))
    got = cell(x)
    assert _max_err(got, (h.numpy(), c.numpy())) <= BOUND[weights]
    m = li.GRU(6, 10, weights=weights)
    st = m.stream()
    xs = np.random.default_rng(3).standard_normal((7, 6)).astype(np.float32)
    steps = np.stack([st(v) for v in xs])
    assert np.array_equal(steps, m(xs[:, None])[0][:, 0])
