"""Bad input through the public Python API: a clear exception (type and message)
for each row of the table, and the model still gives the same correct result
afterwards. Plus inputs that must work (read-only, non-contiguous, Fortran
order, negative strides, float64/float16, ...) and non-finite values, which
must propagate like torch's (compared with torch when installed, else with
tests/reference.py).
"""
import numpy as np
import pytest

import lstm_infer as li
from reference import random_state_dict, reference

CFG = dict(input_size=5, hidden_size=8, num_layers=2, bias=True, bidirectional=True, proj_size=3)
T, B, I, H, P, S = 4, 3, 5, 8, 3, 4
RNG = np.random.default_rng(1234)
SD = random_state_dict(RNG, **CFG)
X = RNG.uniform(-1, 1, (T, B, I)).astype(np.float32)
HX = (RNG.uniform(-1, 1, (S, B, P)).astype(np.float32),
      RNG.uniform(-1, 1, (S, B, H)).astype(np.float32))
LENS = np.array([4, 2, 1], dtype=np.int64)
REF_OUT, (REF_H, REF_C) = reference(SD, CFG, X, HX, LENS)


def _model():
    m = li.LSTM(**CFG)
    m.load_state_dict(SD)
    return m


M = _model()
BASE = M(X, HX, LENS)
_BASE_BY_ISA = {li.get_isa(): BASE}


def _assert_still_works(m):
    isa = li.get_isa()
    if isa not in _BASE_BY_ISA:  # first call under this ISA: the reference check below decides
        _BASE_BY_ISA[isa] = M(X, HX, LENS)
    base = _BASE_BY_ISA[isa]
    out, (h, c) = m(X, HX, LENS)
    np.testing.assert_array_equal(out, base[0])
    np.testing.assert_array_equal(h, base[1][0])
    np.testing.assert_array_equal(c, base[1][1])
    np.testing.assert_allclose(out, REF_OUT, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h, REF_H, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(c, REF_C, atol=1e-5, rtol=1e-5)


def _sd(**changes):
    """SD with keys replaced (value None: key removed)."""
    d = dict(SD)
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


def _hx(h=None, c=None):
    return (HX[0] if h is None else h, HX[1] if c is None else c)


def _big_view(shape):
    return np.broadcast_to(np.float32(0.5), shape)


SIZE_ERR = (MemoryError, ValueError, OverflowError)
SIZE_MSG = r"(?i)allocate|too large|overflow|memory"

# (id, call(m), exception type(s), message regex)
BAD = [
    # ---- constructor
    ("ctor input_size 0", lambda m: li.LSTM(0, 8), ValueError, "input_size must be >= 1"),
    ("ctor hidden_size 0", lambda m: li.LSTM(5, 0), ValueError, "hidden_size must be >= 1"),
    ("ctor hidden_size negative", lambda m: li.LSTM(5, -4), ValueError, "hidden_size"),
    ("ctor num_layers 0", lambda m: li.LSTM(5, 8, num_layers=0), ValueError, "num_layers"),
    ("ctor proj_size negative", lambda m: li.LSTM(5, 8, proj_size=-1), ValueError, "proj_size"),
    ("ctor proj_size == hidden", lambda m: li.LSTM(5, 8, proj_size=8), ValueError,
     r"proj_size \(8\) must be smaller"),
    ("ctor proj_size > hidden", lambda m: li.LSTM(5, 8, proj_size=9), ValueError, "proj_size"),
    ("ctor hidden 2**40", lambda m: li.LSTM(5, 2**40), ValueError, "hidden_size .* too large"),
    ("ctor input 2**40", lambda m: li.LSTM(2**40, 5), ValueError, "input_size .* too large"),
    ("ctor hidden float", lambda m: li.LSTM(5, 8.0), TypeError, "hidden_size must be an int"),
    ("ctor input str", lambda m: li.LSTM("5", 8), TypeError, "input_size must be an int"),
    ("ctor hidden bool", lambda m: li.LSTM(5, True), TypeError, "hidden_size must be an int"),
    ("ctor num_layers None", lambda m: li.LSTM(5, 8, num_layers=None), TypeError, "num_layers"),
    ("ctor dropout 2", lambda m: li.LSTM(5, 8, dropout=2), ValueError, "dropout"),
    ("ctor dropout negative", lambda m: li.LSTM(5, 8, dropout=-0.1), ValueError, "dropout"),
    ("ctor dropout str", lambda m: li.LSTM(5, 8, dropout="x"), ValueError, "dropout"),
    ("ctor dropout nan", lambda m: li.LSTM(5, 8, dropout=float("nan")), ValueError, "dropout"),
    # ---- input: type, dtype, rank, sizes
    ("input None", lambda m: m(None), TypeError, "input must be an array, got None"),
    ("input str", lambda m: m("hello"), TypeError, "floating-point dtype"),
    ("input object array", lambda m: m(np.full((T, B, I), object())), TypeError,
     "floating-point dtype"),
    ("input complex", lambda m: m(X.astype(np.complex64)), TypeError, "complex64"),
    ("input int32", lambda m: m(X.astype(np.int32)), TypeError, "int32"),
    ("input bool", lambda m: m(X > 0), TypeError, "bool"),
    ("input datetime", lambda m: m(np.zeros((T, B, I), "M8[s]")), TypeError,
     "floating-point dtype"),
    ("input structured", lambda m: m(np.zeros((T, B, I), [("a", "f4")])), TypeError,
     "floating-point dtype"),
    ("input 0-d", lambda m: m(np.float32(1)), ValueError, r"must be 3-D .* got shape \(\)"),
    ("input 1-d", lambda m: m(np.zeros(I, np.float32)), ValueError, "must be 3-D"),
    ("input 4-d", lambda m: m(np.zeros((1, T, B, I), np.float32)), ValueError, "must be 3-D"),
    ("input wrong features", lambda m: m(np.zeros((T, B, I + 1), np.float32)), ValueError,
     "6 features, expected input_size = 5"),
    ("input unbatched wrong features", lambda m: m(np.zeros((T, I - 1), np.float32)), ValueError,
     "4 features"),
    ("input empty batch", lambda m: m(np.zeros((T, 0, I), np.float32)), ValueError,
     "batch size 0"),
    ("input empty batch + lengths", lambda m: m(np.zeros((T, 0, I), np.float32),
                                                lengths=np.zeros(0, np.int64)),
     ValueError, "batch size 0"),
    ("input T=0", lambda m: m(np.zeros((0, B, I), np.float32)), ValueError,
     "sequence length 0"),
    ("input unbatched T=0", lambda m: m(np.zeros((0, I), np.float32)), ValueError,
     "sequence length 0"),
    ("input huge batch view", lambda m: m(_big_view((1, 2**40, I))), SIZE_ERR, SIZE_MSG),
    ("input huge T view", lambda m: m(_big_view((2**40, 1, I))), SIZE_ERR, SIZE_MSG),
    ("input huge T*B view", lambda m: m(_big_view((2**31, 2**31, I))), SIZE_ERR, SIZE_MSG),
    ("input huge feature view", lambda m: m(_big_view((1, 1, 2**40))), ValueError,
     "features, expected input_size"),
    ("input empty list", lambda m: m([]), ValueError, "empty list"),
    ("input list wrong features", lambda m: m([np.zeros((3, I + 2), np.float32)]), ValueError,
     r"input\[0\] must have shape"),
    ("input list all empty", lambda m: m([np.zeros((0, I), np.float32)]), ValueError,
     "every sequence in the list is empty"),
    ("input list + lengths", lambda m: m([X[:, 0]], lengths=[T]), ValueError,
     "lengths must not be given"),
    ("input list of str", lambda m: m(["abc"]), TypeError, "floating-point dtype"),
    # ---- lengths
    ("lengths negative", lambda m: m(X, lengths=[4, -1, 2]), ValueError,
     r"lengths must lie in \[0, 4\].*-1"),
    ("lengths > T", lambda m: m(X, lengths=[4, 5, 2]), ValueError, r"lie in \[0, 4\].*5"),
    ("lengths too few", lambda m: m(X, lengths=[4, 2]), ValueError, "1-D array of 3 entries"),
    ("lengths too many", lambda m: m(X, lengths=[4, 2, 1, 1]), ValueError, "3 entries"),
    ("lengths float", lambda m: m(X, lengths=np.array([4.0, 2.0, 1.0])), TypeError,
     "lengths must be integers"),
    ("lengths 2-D", lambda m: m(X, lengths=LENS[None, :]), ValueError, r"shape \(1, 3\)"),
    ("lengths scalar", lambda m: m(X, lengths=4), ValueError, "1-D array"),
    ("lengths str", lambda m: m(X, lengths="abc"), TypeError, "lengths must be integers"),
    ("lengths bool", lambda m: m(X, lengths=np.array([True, True, False])), TypeError,
     "lengths must be integers"),
    ("lengths with None", lambda m: m(X, lengths=[4, None, 1]), TypeError,
     "lengths must be integers"),
    ("lengths uint64 max", lambda m: m(X, lengths=np.array([2**64 - 1, 1, 1], np.uint64)),
     ValueError, "lengths must lie in"),
    ("lengths int64 min", lambda m: m(X, lengths=np.array([-2**63, 1, 1], np.int64)),
     ValueError, "lengths must lie in"),
    ("lengths with unbatched input", lambda m: m(X[:, 0], lengths=[T]), ValueError,
     "lengths needs batched input"),
    # ---- hx
    ("hx array not tuple", lambda m: m(X, HX[0]), TypeError, r"hx must be a tuple"),
    ("hx 3-tuple", lambda m: m(X, (HX[0], HX[1], HX[1])), TypeError, "hx must be a tuple"),
    ("hx 1-tuple", lambda m: m(X, (HX[0],)), TypeError, "hx must be a tuple"),
    ("hx dict", lambda m: m(X, {"h": HX[0], "c": HX[1]}), TypeError, "hx must be a tuple"),
    ("hx str", lambda m: m(X, "hc"), TypeError, "hx must be a tuple"),
    ("hx c_0 None", lambda m: m(X, (HX[0], None)), TypeError, "c_0 must be an array, got None"),
    ("hx h_0 None", lambda m: m(X, (None, HX[1])), TypeError, "h_0 must be an array, got None"),
    ("hx h_0 wrong batch", lambda m: m(X, _hx(h=np.zeros((S, B + 1, P), np.float32))),
     ValueError, r"h_0 must have shape \(4, 3, 3\)"),
    ("hx c_0 wrong width", lambda m: m(X, _hx(c=np.zeros((S, B, P), np.float32))),
     ValueError, r"c_0 must have shape \(4, 3, 8\)"),
    ("hx h_0 wrong slots", lambda m: m(X, _hx(h=np.zeros((S - 1, B, P), np.float32))),
     ValueError, "h_0 must have shape"),
    ("hx 2-D for batched input", lambda m: m(X, _hx(h=np.zeros((S, P), np.float32))),
     ValueError, "h_0 must have shape"),
    ("hx swapped", lambda m: m(X, (HX[1], HX[0])), ValueError, "h_0 must have shape"),
    ("hx int dtype", lambda m: m(X, _hx(h=HX[0].astype(np.int32))), TypeError,
     "h_0 must have a floating-point dtype"),
    ("hx complex c_0", lambda m: m(X, _hx(c=HX[1].astype(np.complex128))), TypeError,
     "c_0 must have a floating-point dtype"),
    ("hx None inside", lambda m: m(X, (None, None)), TypeError, "h_0"),
    ("hx object array", lambda m: m(X, _hx(h=np.full((S, B, P), object()))), TypeError, "h_0"),
    # ---- state dicts
    ("load_state_dict list", lambda m: m.load_state_dict([1, 2]), TypeError,
     "state_dict must be a mapping"),
    ("load_state_dict None", lambda m: m.load_state_dict(None), TypeError,
     "state_dict must be a mapping"),
    ("load missing key", lambda m: m.load_state_dict(_sd(bias_hh_l1=None)), KeyError,
     "missing keys: bias_hh_l1"),
    ("load unexpected key", lambda m: m.load_state_dict(_sd(weight_ih_l2=SD["weight_ih_l1"])),
     KeyError, "unexpected keys: weight_ih_l2"),
    ("load prefixed names", lambda m: m.load_state_dict({"lstm." + k: v for k, v in SD.items()}),
     KeyError, "missing keys"),
    ("load non-str key", lambda m: m.load_state_dict({**SD, 7: SD["bias_ih_l0"]}), KeyError,
     "unexpected keys: 7"),
    ("load transposed weight", lambda m: m.load_state_dict(_sd(weight_ih_l0=SD["weight_ih_l0"].T)),
     ValueError, r"state_dict\['weight_ih_l0'\] has shape \(5, 32\), expected \(32, 5\)"),
    ("load 1-D weight", lambda m: m.load_state_dict(_sd(weight_hr_l0=SD["weight_hr_l0"].ravel())),
     ValueError, r"weight_hr_l0'\] has shape \(24,\)"),
    ("load bias too long", lambda m: m.load_state_dict(_sd(bias_ih_l1_reverse=np.zeros(33, np.float32))),
     ValueError, "bias_ih_l1_reverse"),
    ("load str value", lambda m: m.load_state_dict(_sd(weight_hh_l0="abc")), TypeError,
     "floating-point dtype"),
    ("load object value", lambda m: m.load_state_dict(_sd(weight_hh_l0=np.array([None] * 3))),
     TypeError, "floating-point dtype"),
    ("load int value", lambda m: m.load_state_dict(_sd(weight_hh_l0=SD["weight_hh_l0"].astype(int))),
     TypeError, "floating-point dtype"),
    ("load non-strict wrong shape", lambda m: m.load_state_dict({"weight_ih_l0": np.zeros(3)},
                                                                 strict=False),
     ValueError, "has shape"),
    ("from_state_dict empty", lambda m: li.LSTM.from_state_dict({}), ValueError,
     "no LSTM or LSTMCell parameters"),
    ("from_state_dict junk keys", lambda m: li.LSTM.from_state_dict({"foo": np.zeros(3)}),
     ValueError, "no LSTM or LSTMCell parameters"),
    ("from_state_dict missing layer", lambda m: li.LSTM.from_state_dict(
        {k: v for k, v in SD.items() if not k.endswith("_l1")}), ValueError, "_l1"),
    ("from_state_dict wrong hh shape", lambda m: li.LSTM.from_state_dict(
        _sd(weight_hh_l0=np.zeros((32, 4), np.float32))), ValueError, "weight_hh_l0"),
    ("from_state_dict rows not 4H", lambda m: li.LSTM.from_state_dict(
        {"weight_ih_l0": np.zeros((7, 3)), "weight_hh_l0": np.zeros((7, 2))}), ValueError,
     "not a positive multiple of 4"),
    ("from_state_dict str values", lambda m: li.LSTM.from_state_dict({k: "x" for k in SD}),
     (ValueError, TypeError), "weight_"),
    ("from_state_dict None", lambda m: li.LSTM.from_state_dict(None), TypeError, None),
    # ---- global settings
    ("set_num_threads 0", lambda m: li.set_num_threads(0), ValueError, "must be >= 1"),
    ("set_num_threads -1", lambda m: li.set_num_threads(-1), ValueError, "must be >= 1"),
    ("set_num_threads str", lambda m: li.set_num_threads("2"), TypeError, "integer"),
    ("set_num_threads None", lambda m: li.set_num_threads(None), TypeError, None),
    ("set_num_threads 2**40", lambda m: li.set_num_threads(2**40), (ValueError, OverflowError),
     "too large"),
    ("set_num_threads 257", lambda m: li.set_num_threads(257), ValueError,
     r"too large \(at most 256\)"),
    ("set_isa unknown", lambda m: li.set_isa("neon"), ValueError, "unknown or unsupported"),
    ("set_isa empty", lambda m: li.set_isa(""), ValueError, "unknown or unsupported"),
    ("set_isa None", lambda m: li.set_isa(None), ValueError, "unknown or unsupported"),
    ("set_isa int", lambda m: li.set_isa(3), ValueError, "unknown or unsupported"),
    # ---- once mishandled (hang, silent truncation, wrong exception); fixed in 91c3d5a
    ("ctor num_layers 1025", lambda m: li.LSTM(5, 8, num_layers=1025), ValueError,
     r"num_layers = 1025 is too large \(at most 1024\)"),
    ("ctor num_layers 2**31", lambda m: li.LSTM(5, 8, num_layers=2**31), ValueError,
     "num_layers .* too large"),
    ("set_num_threads float", lambda m: li.set_num_threads(2.5), TypeError,
     "must be an integer"),
    ("set_isa embedded NUL", lambda m: li.set_isa("scalar\0junk"), ValueError,
     "unknown or unsupported"),
    ("from_state_dict prefix not str", lambda m: li.LSTM.from_state_dict(SD, prefix=3),
     TypeError, "prefix must be a str"),
]



def test_table_size():
    assert len({row[0] for row in BAD}) == len(BAD) >= 45


@pytest.fixture(autouse=True)
def _restore_globals():
    threads, isa = li.get_num_threads(), li.get_isa()
    yield
    li.set_num_threads(threads)
    li.set_isa("auto")


@pytest.mark.parametrize("name, call, exc, msg", BAD, ids=[r[0] for r in BAD])
def test_bad_input(name, call, exc, msg):
    m = _model()
    with pytest.raises(exc, match=msg):
        call(m)
    _assert_still_works(m)  # the model the call was made on
    _assert_still_works(M)  # and a model shared by every row


# ------------------------------------------------------------------ must work

def _noncontig(a):
    fill = np.nan if a.dtype.kind == "f" else -7
    big = np.full(tuple(2 * n for n in a.shape), fill, a.dtype)
    big[tuple(slice(None, None, 2) for _ in a.shape)] = a
    return big[tuple(slice(None, None, 2) for _ in a.shape)]


def _negstride(a):
    return np.ascontiguousarray(a[::-1, :, ::-1])[::-1, :, ::-1]


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _unaligned(a):
    buf = bytearray(a.nbytes + 1)
    out = np.ndarray(a.shape, a.dtype, buffer=buf, offset=1)
    out[...] = a
    return out


GOOD = [
    ("read-only", lambda: (_readonly(X), (_readonly(HX[0]), _readonly(HX[1])), _readonly(LENS)), True),
    ("non-contiguous", lambda: (_noncontig(X), (_noncontig(HX[0]), _noncontig(HX[1])),
                                _noncontig(LENS[:, None])[:, 0]), True),
    ("fortran order", lambda: (np.asfortranarray(X), (np.asfortranarray(HX[0]),
                                                      np.asfortranarray(HX[1])), LENS), True),
    ("negative strides", lambda: (_negstride(X), (_negstride(HX[0]), _negstride(HX[1])),
                                  LENS[::-1].copy()[::-1]), True),
    ("float64", lambda: (X.astype(np.float64), (HX[0].astype(np.float64),
                                                HX[1].astype(np.float64)), LENS), True),
    ("big-endian", lambda: (X.astype(">f4"), (HX[0].astype(">f4"), HX[1].astype(">f4")),
                            LENS.astype(">i8")), True),
    ("unaligned", lambda: (_unaligned(X), (_unaligned(HX[0]), _unaligned(HX[1])), LENS), True),
    ("nested-list hx, int32 lengths", lambda: (X, [HX[0].tolist(), HX[1].tolist()],
                                               LENS.astype(np.int32)), True),
    ("memoryview input", lambda: (memoryview(X), HX, LENS), True),
    ("uint8 lengths, list hx", lambda: (X, [HX[0], HX[1]], LENS.astype(np.uint8)), True),
    ("python list lengths", lambda: (X, HX, [4, 2, 1]), True),
    ("float16", lambda: (X.astype(np.float16), (HX[0].astype(np.float16),
                                                HX[1].astype(np.float16)), LENS), False),
]


@pytest.mark.parametrize("name, make, exact", GOOD, ids=[g[0] for g in GOOD])
def test_must_work(name, make, exact):
    x, hx, lengths = make()
    out, (h, c) = M(x, hx, lengths)
    if exact:  # the same float32 numbers: bit-identical to the plain call
        np.testing.assert_array_equal(out, BASE[0])
        np.testing.assert_array_equal(h, BASE[1][0])
        np.testing.assert_array_equal(c, BASE[1][1])
    xs = np.asarray(x, np.float32)
    hs = tuple(np.asarray(v, np.float32) for v in hx)
    want_out, (want_h, want_c) = reference(SD, CFG, xs, hs, np.asarray(lengths))
    np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h, want_h, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(c, want_c, atol=1e-5, rtol=1e-5)
    _assert_still_works(M)


def test_batch_first_views_must_work():
    m = li.LSTM(batch_first=True, **CFG)
    m.load_state_dict(SD)
    xb = X.transpose(1, 0, 2)  # a non-contiguous (B, T, I) view
    for x in (xb, np.ascontiguousarray(xb), np.asfortranarray(xb), _negstride(xb)):
        out, (h, c) = m(x, HX, LENS)
        np.testing.assert_array_equal(out.transpose(1, 0, 2), BASE[0])
        np.testing.assert_array_equal(h, BASE[1][0])
        np.testing.assert_array_equal(c, BASE[1][1])


def test_fast_and_general_call_paths_agree():
    # a float32 array without lengths goes straight to C (_core.Module.__call__);
    # with lengths, the call takes the general path (LSTM._call)
    x = np.ascontiguousarray(X)
    fast = M(x, HX)
    general = M(x, HX, np.full(X.shape[1], X.shape[0]))
    via_forward = M.forward(x, HX)
    for got in (general, via_forward):
        np.testing.assert_array_equal(got[0], fast[0])
        np.testing.assert_array_equal(got[1][0], fast[1][0])
        np.testing.assert_array_equal(got[1][1], fast[1][1])
    # batch_first set after construction is honoured by the fast path too
    m = li.LSTM(**CFG)
    m.load_state_dict(SD)
    m.batch_first = True
    out, _ = m(np.ascontiguousarray(x.transpose(1, 0, 2)))
    np.testing.assert_array_equal(out.transpose(1, 0, 2), M(x)[0])
    assert "torch.nn.LSTM" in li.LSTM.__call__.__doc__


# ------------------------------------------------------------------ non-finite values

def _nonfinite_input():
    x = X.copy()
    x[1, 0, 2] = np.nan
    x[0, 1, 0] = np.inf
    x[2, 2, 4] = -np.inf  # past length 1 of sequence 2: padding, must be ignored
    x[0, 2, 1] = 1e30     # huge but finite
    return x


def _isa_params():
    # avx2 once swallowed NaN: exp_avx2 clamped with _mm256_max_ps(x, lo) (fixed in 91c3d5a)
    params = ["scalar"]
    try:
        li.set_isa("avx2")
        params.append("avx2")
    except ValueError:
        pass
    li.set_isa("auto")
    return params


@pytest.mark.parametrize("isa", _isa_params())
def test_nonfinite_propagate_like_torch(isa):
    torch = pytest.importorskip("torch")
    li.set_isa(isa)
    x = _nonfinite_input()
    ref = torch.nn.LSTM(**CFG)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in SD.items()})
    ref.eval()
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(LENS), enforce_sorted=False)
    with torch.no_grad():
        po, (th, tc) = ref(packed, (torch.from_numpy(HX[0]), torch.from_numpy(HX[1])))
    to, _ = torch.nn.utils.rnn.pad_packed_sequence(po, total_length=T)
    out, (h, c) = M(x, HX, LENS)
    for got, want, what in ((out, to, "output"), (h, th, "h_n"), (c, tc, "c_n")):
        want = want.numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what + " NaN mask")
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=what)
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=what)
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], atol=1e-5, rtol=1e-5, err_msg=what)
    assert np.isnan(out[:, 0]).any()          # the NaN sequence is poisoned, like torch
    assert np.isfinite(out[:, 2]).all()       # -inf in the padding never leaks in
    _assert_still_works(M)


@pytest.mark.parametrize("isa", _isa_params())
def test_nonfinite_against_reference(isa):
    li.set_isa(isa)
    x = _nonfinite_input()
    with np.errstate(all="ignore"):
        want_out, (want_h, want_c) = reference(SD, CFG, x, HX, LENS)
    out, (h, c) = M(x, HX, LENS)
    for got, want in ((out, want_out), (h, want_h), (c, want_c)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], atol=1e-5, rtol=1e-5)
    # all-NaN weights load (as in torch) and give NaN, not a crash
    m = _model()
    m.load_state_dict(_sd(weight_hh_l0=np.full_like(SD["weight_hh_l0"], np.nan)))
    o2, _ = m(X, HX, LENS)
    assert np.isnan(o2[0, 0]).all() and not o2[LENS[2]:, 2].any()


def test_set_isa_refuses_unknown_and_absent_sets():
    from isa_helpers import available_isas
    have = available_isas()
    try:
        with pytest.raises(ValueError, match="choose 'auto', 'avx512', 'avx2', 'neon' or 'scalar'"):
            li.set_isa("avx1024")
        for name in {"avx512", "avx2", "neon"} - set(have):
            with pytest.raises(ValueError, match="this CPU lacks it"):
                li.set_isa(name)
        li.set_isa("auto")
        assert li.get_isa() == have[-1]  # the widest set this CPU has (available_isas: narrow to wide)
    finally:
        li.set_isa("auto")
