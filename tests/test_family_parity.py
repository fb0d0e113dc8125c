"""Parity of the rest of torch.nn's recurrent family with PyTorch 2.13: GRU, RNN
(tanh and relu), LSTMCell, GRUCell and RNNCell (issue 12).

(a) committed fixtures (real torch.save files and torch's outputs, in
    tests/fixtures/family/; no torch needed), (b) where torch is installed, a
    live matrix over every option like test_parity.py's LSTM one, (c) a cell
    stepped over a sequence equals the one-layer module, (d) state-dict round
    trips under torch's key names and the nonlinearity override.

Every test runs on each "implementation": lstm_infer on every kernel set this
CPU has, and the NumPy reference of tests/reference.py (float64, from torch's
equations). The reference runs the same harness, so the harness (and the
reference, against torch) is proven while lstm_infer lacks a class: those
lstm_infer cases skip, naming the missing class.
"""
import contextlib
import functools
import glob
import itertools
import json
import os
import zlib

import numpy as np
import pytest

import lstm_infer as li
import reference as ref
from isa_helpers import available_isas
from lstm_infer import readers

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = sorted(glob.glob(os.path.join(HERE, "fixtures", "family", "*.npz")))
TOL = 1e-5
FAMILY = ("GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")
MODULES = ("LSTM", "GRU", "RNN")
CELL_MODULE = ref.CELL_MODULE            # LSTMCell -> LSTM, GRUCell -> GRU, RNNCell -> RNN
MISSING = [k for k in FAMILY if not hasattr(li, k)]
ISAS = available_isas()


class Impl:
    """Where the classes under test come from: lstm_infer on one kernel set, or
    the NumPy reference (isa None)."""

    def __init__(self, isa=None):
        self.isa = isa
        self.thread_counts = (1,) if isa is None else (1, 2)

    def cls(self, kind):
        if self.isa is None:
            return ref.REF_CLASSES[kind]
        c = getattr(li, kind, None)
        if c is None:
            pytest.skip(f"lstm_infer has no {kind} yet (issue 12); missing: "
                        f"{', '.join(MISSING)}. The NumPy reference runs these tests meanwhile.")
        return c

    @contextlib.contextmanager
    def threads(self, n):
        if self.isa is None:
            yield
            return
        old = li.get_num_threads()
        li.set_num_threads(n)
        try:
            yield
        finally:
            li.set_num_threads(old)


@pytest.fixture(params=[None] + ISAS, ids=lambda p: "numpy-ref" if p is None else f"li-{p}")
def impl(request):
    if request.param is None:
        yield Impl()
        return
    li.set_isa(request.param)
    try:
        yield Impl(request.param)
    finally:
        li.set_isa("auto")


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread():
    """torch computes the expected values on one thread: on a loaded 2-CPU machine
    its two-thread calls on these small shapes take 10-40x longer. lstm_infer's
    own thread count is untouched."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def assert_close(got, want, what, tol=TOL):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol}"


def as_tuple(res):
    return res if isinstance(res, tuple) else (res,)


def nl_kw(kind, nl):
    return {"nonlinearity": nl} if kind in ("RNN", "RNNCell") and nl else {}


# ---------------------------------------------------------------- (a) fixtures

def _fixture(path):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    cfg = json.loads(str(arrays.pop("config")))
    return cfg.pop("kind"), cfg, arrays


def test_family_fixtures_exist():
    found = [_fixture(p)[:2] for p in FIXTURES]
    assert {kind for kind, _ in found} == set(FAMILY)
    assert {(kind, cfg.get("nonlinearity", "tanh")) for kind, cfg in found
            if kind in ("RNN", "RNNCell")} == {(k, n) for k in ("RNN", "RNNCell")
                                              for n in ("tanh", "relu")}
    saved = [readers.read_object(p[:-4] + ".pt") for p in FIXTURES]
    assert any(set(o) == {"model", "epoch"} for o in saved), "no full-checkpoint fixture"
    for p in FIXTURES:   # "a few KB each"
        assert os.path.getsize(p) < 16384 and os.path.getsize(p[:-4] + ".pt") < 16384, p


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: os.path.basename(p)[:-4])
def test_family_fixture_parity(fixture, impl):
    kind, cfg, z = _fixture(fixture)
    sd = readers.read_tensors(fixture[:-4] + ".pt")  # torch.save file, read without torch
    assert list(sd) == list(ref.family_state_dict_shapes(kind, **cfg)), "torch's key order"
    overrides = {"batch_first": cfg.get("batch_first", False)} if kind in MODULES else {}
    if "nonlinearity" in cfg:          # tanh fixtures leave it out: the default
        overrides["nonlinearity"] = cfg["nonlinearity"]
    m = impl.cls(kind).from_state_dict(sd, **overrides)
    for key, value in cfg.items():
        assert m.config[key] == value, key
    for n in impl.thread_counts:
        with impl.threads(n):
            if kind in CELL_MODULE:
                hx = z.get("h_0")
                if kind == "LSTMCell" and hx is not None:
                    hx = (hx, z["c_0"])
                got = as_tuple(m(z["x"], hx))
                want = (z["h_1"], z["c_1"]) if kind == "LSTMCell" else (z["h_1"],)
                names = ("h_1", "c_1")
            else:
                got = m(z["x"], z.get("h_0"), lengths=z.get("lengths"))
                want, names = (z["output"], z["h_n"]), ("output", "h_n")
            assert len(got) == len(want)
            for g, w, what in zip(got, want, names):
                assert isinstance(g, np.ndarray) and g.dtype == np.float32, what
                assert_close(g, w, f"{what} ({n} thread{'s' * (n > 1)})")


# ---------------------------------------------------------------- (b) live torch matrix

def torch_module(torch, kind, nl, I, H, layers, **kw):
    return getattr(torch.nn, kind)(I, H, layers, **nl_kw(kind, nl), **kw).eval()


MODULE_MATRIX = [(kind, nl) + rest
                 for kind, nl in (("GRU", None), ("RNN", "tanh"), ("RNN", "relu"))
                 for rest in itertools.product([1, 2, 3], [False, True], [True, False],
                                               [False, True], [False, True],
                                               ["equal", "ragged"])]


def _matrix_id(p):
    kind, nl, layers, bi, bias, bf, hx, lk = p
    return "-".join([kind + (f"_{nl}" if nl else ""), f"L{layers}", "bi" if bi else "uni",
                     "bias" if bias else "nobias", "bf" if bf else "sf",
                     "hx" if hx else "nohx", lk])


@functools.lru_cache(maxsize=None)
def module_case(kind, nl, layers, bi, bias, batch_first, with_hx, lengths_kind):
    """One matrix configuration: torch's weights (as NumPy), inputs and torch's
    answer; computed once and shared by every implementation."""
    import torch
    from torch_ref import torch_forward_h
    seed = zlib.crc32(repr((kind, nl, layers, bi, bias, batch_first, with_hx,
                            lengths_kind)).encode())
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    I, H, T = 37, 50, 11
    B = 1 if (layers + bi + bias) % 3 == 0 else 5   # batch 1 and odd batches
    D = 2 if bi else 1
    t = torch_module(torch, kind, nl, I, H, layers, bias=bias, batch_first=batch_first,
                     bidirectional=bi)
    sd = {k: v.numpy() for k, v in t.state_dict().items()}
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I), dtype=np.float32)
    h0 = rng.standard_normal((layers * D, B, H), dtype=np.float32) if with_hx else None
    if lengths_kind == "ragged":   # 0 and 1 and T; a batch of one: 1, 0 (all empty) or 4
        lengths = np.array([T, 1, 0, 6, T] if B > 1 else [[1], [0], [4]][layers - 1], np.int64)
    else:                          # equal: no lengths, or all T given explicitly
        lengths = None if (layers + batch_first) % 2 else np.full(B, T, np.int64)
    want = torch_forward_h(torch, t, x, lengths, h0)
    for a in [x, h0, lengths, *want, *sd.values()]:
        if a is not None:      # shared by the implementations: nobody may write them
            a.setflags(write=False)
    return sd, x, h0, lengths, want


@pytest.mark.parametrize("kind,nl,layers,bi,bias,batch_first,with_hx,lengths_kind",
                         MODULE_MATRIX, ids=[_matrix_id(p) for p in MODULE_MATRIX])
def test_module_torch_matrix(kind, nl, layers, bi, bias, batch_first, with_hx, lengths_kind,
                             impl):
    cls = impl.cls(kind)
    pytest.importorskip("torch")
    sd, x, h0, lengths, want = module_case(kind, nl, layers, bi, bias, batch_first, with_hx,
                                           lengths_kind)
    m = cls.from_state_dict(sd, batch_first=batch_first, **nl_kw(kind, nl))
    D, H = (2 if bi else 1), sd["weight_hh_l0"].shape[1]
    out, h_n = m(x, h0, lengths=lengths)
    for got, w, what in zip((out, h_n), want, ("output", "h_n")):
        assert got.dtype == np.float32, what
        assert_close(got, w, what)
    if lengths is not None:        # a length of 0, by the documented rule, exactly
        for b in np.flatnonzero(lengths == 0):
            assert not np.any(out[b] if batch_first else out[:, b]), "output of length 0"
            h_0b = np.zeros((layers * D, H), np.float32) if h0 is None else h0[:, b]
            assert np.array_equal(h_n[:, b], h_0b), "h_n of length 0 is not h_0"


@pytest.mark.parametrize("kind,nl", [("GRU", None), ("RNN", "tanh"), ("RNN", "relu")])
def test_module_unbatched_and_list_match_torch(kind, nl, impl):
    cls = impl.cls(kind)
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    t = torch_module(torch, kind, nl, 6, 10, 2, bidirectional=True)
    m = cls.from_state_dict(t.state_dict(), **nl_kw(kind, nl))
    x, h0 = torch.randn(7, 6), torch.randn(4, 10)
    for hx in (h0, None):
        with torch.no_grad():
            y, h = t(x, hx)
        out, h_n = m(x.numpy(), None if hx is None else hx.numpy())
        assert out.shape == (7, 20) and h_n.shape == (4, 10)
        assert_close(out, y.numpy(), "unbatched output")
        assert_close(h_n, h.numpy(), "unbatched h_n")

    seqs = [torch.randn(n, 6) for n in (3, 7, 1)]
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
        y, h = t(packed)
        y, lens = torch.nn.utils.rnn.pad_packed_sequence(y)
    outs, h_n = m([s.numpy() for s in seqs])
    assert [o.shape for o in outs] == [(3, 20), (7, 20), (1, 20)]
    for b, o in enumerate(outs):
        assert_close(o, y[: lens[b], b].numpy(), f"list output {b}")
    assert_close(h_n, h.numpy(), "list h_n")


CELL_KINDS = [("LSTMCell", None), ("GRUCell", None), ("RNNCell", "tanh"), ("RNNCell", "relu")]
CELL_MATRIX = [(kind, nl) + rest for kind, nl in CELL_KINDS
               for rest in itertools.product([True, False], ["batch5", "batch1", "unbatched"],
                                             [False, True])]


@pytest.mark.parametrize("kind,nl,bias,layout,with_hx", CELL_MATRIX)
def test_cell_torch_matrix(kind, nl, bias, layout, with_hx, impl):
    cls = impl.cls(kind)
    torch = pytest.importorskip("torch")
    from torch_ref import torch_cell
    seed = zlib.crc32(repr((kind, nl, bias, layout, with_hx)).encode())
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    I, H = 37, 50
    t = getattr(torch.nn, kind)(I, H, bias=bias, **nl_kw(kind, nl)).eval()
    m = cls.from_state_dict(t.state_dict(), **nl_kw(kind, nl))
    lead = {"batch5": (5,), "batch1": (1,), "unbatched": ()}[layout]
    x = rng.standard_normal(lead + (I,), dtype=np.float32)
    hx = None
    if with_hx:
        hx = tuple(rng.standard_normal(lead + (H,), dtype=np.float32)
                   for _ in range(2 if kind == "LSTMCell" else 1))
        hx = hx if kind == "LSTMCell" else hx[0]
    want = as_tuple(torch_cell(torch, t, x, hx))
    got = as_tuple(m(x, hx) if with_hx else m(x))
    assert len(got) == len(want)
    for g, w, what in zip(got, want, ("h_1", "c_1")):
        assert g.dtype == np.float32, what
        assert_close(g, w, what)


# ---------------------------------------------------------------- (c) cell steps = layer

STEP_MATRIX = [(kind, nl) + rest for kind, nl in CELL_KINDS
               for rest in itertools.product([True, False], ["batched", "ragged", "unbatched"],
                                             [False, True])]


@pytest.mark.parametrize("cell_kind,nl,bias,layout,with_hx", STEP_MATRIX)
def test_cell_steps_equal_layer(cell_kind, nl, bias, layout, with_hx, impl):
    """The cell called once per step, state carried by the caller, equals the
    one-layer module (same weights) over the whole sequence; in the ragged
    layout a sequence's state stops changing at its length."""
    kind = CELL_MODULE[cell_kind]
    cell_cls, layer_cls = impl.cls(cell_kind), impl.cls(kind)
    seed = zlib.crc32(repr((cell_kind, nl, bias, layout, with_hx)).encode())
    rng = np.random.default_rng(seed)
    I, H, T, B = 7, 20, 9, 4
    sd = ref.random_family_state_dict(cell_kind, rng, input_size=I, hidden_size=H, bias=bias)
    cell = cell_cls(I, H, bias=bias, **nl_kw(cell_kind, nl))
    cell.load_state_dict(sd)
    layer = layer_cls(I, H, bias=bias, **nl_kw(kind, nl))
    layer.load_state_dict({k + "_l0": v for k, v in sd.items()})
    lstm = kind == "LSTM"
    n_state = 2 if lstm else 1

    lead = () if layout == "unbatched" else (B,)
    x = rng.standard_normal((T,) + lead + (I,), dtype=np.float32)
    lengths = np.array([T, 1, 0, 5], np.int64) if layout == "ragged" else None
    state = [rng.standard_normal(lead + (H,), dtype=np.float32) if with_hx
             else np.zeros(lead + (H,), np.float32) for _ in range(n_state)]
    h0 = [s.copy() for s in state]
    outs = np.zeros((T,) + lead + (H,), np.float32)
    for step in range(T):
        if step == 0 and not with_hx:
            new = as_tuple(cell(x[step]))           # hx omitted: zeros
        else:
            new = as_tuple(cell(x[step], tuple(state) if lstm else state[0]))
        live = (np.ones(lead, bool) if lengths is None else step < lengths)[..., None]
        state = [np.where(live, n, s) for n, s in zip(new, state)]
        outs[step] = np.where(live, new[0], 0.0)

    hx = None
    if with_hx:
        hx = tuple(s[None] for s in h0) if lstm else h0[0][None]
    out, fin = layer(x, hx, lengths=lengths)
    fin = as_tuple(fin)
    assert_close(out, outs, "output vs cell outputs")
    for f, s, what in zip(fin, state, ("h_n", "c_n")):
        assert f.shape == (1,) + lead + (H,), what
        assert_close(f[0], s, f"{what} vs the cell's last state")


# ---------------------------------------------------------------- (d) state dicts

ROUND_TRIP = [("GRU", dict(num_layers=2, bidirectional=True)), ("GRU", dict(bias=False)),
              ("RNN", dict(num_layers=3, bidirectional=True)),
              ("RNN", dict(num_layers=2, bias=False)),
              ("LSTMCell", {}), ("GRUCell", dict(bias=False)), ("RNNCell", {})]
RT_IDS = [f"{k}-" + "-".join(f"{a}={b}" for a, b in c.items()) for k, c in ROUND_TRIP]


def _inputs(kind, rng, I, cfg):
    if kind in CELL_MODULE:
        return (rng.standard_normal((3, I), dtype=np.float32),)
    return (rng.standard_normal((5, 3, I), dtype=np.float32), None,
            np.array([5, 2, 0], np.int64))


@pytest.mark.parametrize("kind,cfg", ROUND_TRIP, ids=RT_IDS)
def test_state_dict_round_trip(kind, cfg, impl):
    rng = np.random.default_rng(zlib.crc32(repr((kind, cfg)).encode()))
    full = dict(input_size=6, hidden_size=10, **cfg)
    shapes = ref.family_state_dict_shapes(kind, **full)
    sd = ref.random_family_state_dict(kind, rng, **full)
    # inside a checkpoint-like dict, with neighbours sharing the prefix's start
    ckpt = {"encoder." + k: v for k, v in sd.items()}
    ckpt["encoder_norm.weight"] = rng.standard_normal(10).astype(np.float32)
    ckpt["decoder.weight"] = rng.standard_normal((4, 20)).astype(np.float32)
    cls = impl.cls(kind)
    m = cls.from_state_dict(ckpt, prefix="encoder.")
    expect = {"num_layers": 1, "bias": True, "bidirectional": False, **full}
    for key, value in expect.items():
        if key in m.config or key in ("input_size", "hidden_size", "bias"):
            assert m.config[key] == value, key
    got = m.state_dict()
    assert list(got) == list(shapes), "torch's key names, in torch's order"
    for k, v in got.items():
        assert v.dtype == np.float32 and np.array_equal(v, sd[k]), k
    got[next(iter(got))][...] = 0          # a copy: the model keeps its weights
    assert np.array_equal(m.state_dict()[next(iter(got))], sd[next(iter(got))])

    m2 = cls(**full)
    m2.load_state_dict(m.state_dict())
    args = _inputs(kind, rng, 6, full)
    for a, b in zip(as_tuple(m(*args)), as_tuple(m2(*args))):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    first = next(iter(shapes))
    with pytest.raises(KeyError):
        cls(**full).load_state_dict({k: v for k, v in sd.items() if k != first})
    with pytest.raises(KeyError):
        cls(**full).load_state_dict(dict(sd, weight_extra=sd[first]))
    with pytest.raises(ValueError):
        cls(**full).load_state_dict(dict(sd, **{first: sd[first][:, :-1]}))
    missing, unexpected = cls(**full).load_state_dict(
        {k: v for k, v in sd.items() if k != first}, strict=False)
    assert list(missing) == [first] and not list(unexpected)


@pytest.mark.parametrize("kind,cfg", ROUND_TRIP, ids=RT_IDS)
def test_torch_key_names_and_values(kind, cfg, impl):
    cls = impl.cls(kind)
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    t = getattr(torch.nn, kind)(6, 10, **cfg)
    sd = t.state_dict()
    assert list(sd) == list(ref.family_state_dict_shapes(kind, 6, 10, **cfg))
    m = cls.from_state_dict(sd)
    got = m.state_dict()
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert np.array_equal(got[k], v.numpy()), k
    params = dict(t.named_parameters())    # tensors with requires_grad load too
    assert list(cls.from_state_dict(params).state_dict()) == list(sd)


@pytest.mark.parametrize("kind", ["RNN", "RNNCell"])
def test_nonlinearity_override(kind, impl):
    rng = np.random.default_rng(11)
    full = dict(input_size=5, hidden_size=8)
    if kind == "RNN":
        full.update(num_layers=2, bidirectional=True)
    sd = ref.random_family_state_dict(kind, rng, scale=0.8, **full)
    cls = impl.cls(kind)
    default = cls.from_state_dict(sd)
    relu = cls.from_state_dict(sd, nonlinearity="relu")
    assert default.config.get("nonlinearity", "tanh") == "tanh"
    assert relu.config.get("nonlinearity", "relu") == "relu"
    assert list(relu.state_dict()) == list(sd)
    args = _inputs(kind, rng, 5, full)
    for m, nl in ((default, "tanh"), (relu, "relu")):
        want = as_tuple(ref.REF_CLASSES[kind].from_state_dict(sd, nonlinearity=nl)(*args))
        for g, w in zip(as_tuple(m(*args)), want):
            assert_close(g, w, nl)
    a, b = as_tuple(default(*args))[0], as_tuple(relu(*args))[0]
    assert np.max(np.abs(a - b)) > 0.1, "relu and tanh gave the same result"
    with pytest.raises(ValueError):
        cls.from_state_dict(sd, nonlinearity="sigmoid")


@pytest.mark.parametrize("kind,other", [("GRU", "RNN"), ("RNN", "GRU"), ("GRU", "LSTM"),
                                        ("GRUCell", "RNNCell"), ("RNNCell", "LSTMCell"),
                                        ("LSTMCell", "GRUCell")])
def test_from_state_dict_refuses_another_kind(kind, other, impl):
    rng = np.random.default_rng(2)
    sd = ref.random_family_state_dict(other, rng, input_size=5, hidden_size=8)
    with pytest.raises((ValueError, KeyError)):
        impl.cls(kind).from_state_dict(sd)
