"""Streams of whole models (Sequential.stream(), issue 14 on issue 13's models): chunked
streaming equals one call over the whole sequence bit for bit on one thread (every
layer computes each row on its own, a Linear too) for every kernel set; the whole call equals the torch model's own forward; idle slots, reset,
state, errors and concurrent-use detection as for the layers' streams."""

import pickle
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hst

import lstm_infer as li
from stream_helpers import one_thread  # noqa: F401 (autouse: each test on one C thread)
from stream_helpers import (ISAS, assert_concurrent_use_detected, assert_forked_child_passes, hypothesis_settings,
                            stream_each_in_a_thread, stream_random_split)

# pipelines over part of a state dict are made on purpose here (see test_pipeline_notes)
pytestmark = pytest.mark.filterwarnings("ignore::lstm_infer.pipeline.LeftOutWarning")

SETTINGS = hypothesis_settings(30)


def _weights(shapes, seed):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in shapes.items()}


def _lstm(prefix, I, H, layers=1, proj=0):
    out = {}
    for k in range(layers):
        fan_in = I if k == 0 else (proj or H)
        out.update({f"{prefix}.weight_ih_l{k}": (4 * H, fan_in), f"{prefix}.weight_hh_l{k}": (4 * H, proj or H),
                    f"{prefix}.bias_ih_l{k}": (4 * H,), f"{prefix}.bias_hh_l{k}": (4 * H,)})
        if proj:
            out[f"{prefix}.weight_hr_l{k}"] = (proj, H)
    return out


def _gru(prefix, I, H):
    return {f"{prefix}.weight_ih_l0": (3 * H, I), f"{prefix}.weight_hh_l0": (3 * H, H),
            f"{prefix}.bias_ih_l0": (3 * H,), f"{prefix}.bias_hh_l0": (3 * H,)}


# name -> (state-dict shapes, pipeline, takes ids)
MODELS = {
    # Embedding -> LSTM(2 layers), per step
    "embedded": ({"emb.weight": (30, 6), **_lstm("lstm", 6, 8, layers=2)}, "emb > lstm", True),
    # LSTM(proj) -> steps -> GRU
    "recurrent": ({**_lstm("a", 5, 6, proj=3), **_gru("b", 3, 5)}, "a > steps > b", False),
    # a streaming tagger: Embedding -> LSTM(2 layers) -> steps -> Linear -> LogSoftmax
    "tagger": ({"emb.weight": (30, 6), **_lstm("lstm", 6, 8, layers=2), "fc.weight": (4, 8), "fc.bias": (4,)},
               "emb > lstm > steps > fc > logsoftmax", True),
    # a frame model: Linear -> ReLU -> GRU -> steps -> LayerNorm -> Linear -> Sigmoid
    "frames": ({"inp.weight": (7, 5), "inp.bias": (7,), **_gru("gru", 7, 9), "norm.weight": (9,),
                "norm.bias": (9,), "out.weight": (1, 9), "out.bias": (1,)},
               "inp > relu > gru > steps > norm > out > sigmoid", False),
    # two recurrent layers with per-step layers between them, ending recurrent (no readout)
    "stacked": ({**_lstm("a", 5, 6, proj=3), "mid.weight": (4, 3), "mid.bias": (4,), **_gru("b", 4, 5)},
                "a > steps > mid > tanh > b", False),
}


def build(name, batch_first=False, seed=0):
    shapes, text, _ = MODELS[name]
    return li.Sequential.from_state_dict(_weights(shapes, seed), text, batch_first=batch_first)


def inputs(name, shape, rng):
    """Token ids or floats for the model, shape (T, B) (+ features)."""
    model = build(name)
    if model.takes_ids:
        return rng.integers(0, 30, shape)
    return rng.standard_normal(shape + (model.in_features,)).astype(np.float32)


def torch_forward(torch, name, x, lengths):
    """The model's pipeline written as a torch user writes it, on x (T, B[, F]) time-first."""
    nn = torch.nn
    shapes = MODELS[name][0]
    sd = {k: torch.from_numpy(v) for k, v in _weights(shapes, 0).items()}
    pack = nn.utils.rnn.pack_padded_sequence
    unpack = nn.utils.rnn.pad_packed_sequence
    lens = torch.from_numpy(lengths)
    T = x.shape[0]

    def load(module, prefix):
        module.load_state_dict({k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")})
        return module.eval()

    def rnn(module, t):
        return unpack(module(pack(t, lens, enforce_sorted=False))[0], total_length=T)[0]

    t = torch.from_numpy(x)
    with torch.inference_mode():
        if name == "embedded":
            y = rnn(load(nn.LSTM(6, 8, 2), "lstm"), load(nn.Embedding(30, 6), "emb")(t))
        elif name == "recurrent":
            y = rnn(load(nn.GRU(3, 5), "b"), rnn(load(nn.LSTM(5, 6, proj_size=3), "a"), t))
        elif name == "tagger":
            y = load(nn.Linear(8, 4), "fc")(rnn(load(nn.LSTM(6, 8, 2), "lstm"), load(nn.Embedding(30, 6), "emb")(t)))
            y = torch.log_softmax(y, -1)
        elif name == "frames":
            h = rnn(load(nn.GRU(7, 9), "gru"), torch.relu(load(nn.Linear(5, 7), "inp")(t)))
            y = torch.sigmoid(load(nn.Linear(9, 1), "out")(load(nn.LayerNorm(9), "norm")(h)))
        else:
            h = rnn(load(nn.LSTM(5, 6, proj_size=3), "a"), t)
            y = rnn(load(nn.GRU(4, 5), "b"), torch.tanh(load(nn.Linear(3, 4), "mid")(h)))
    y = y.numpy().copy()
    y[np.arange(T)[:, None] >= lengths[None, :]] = 0  # what lstm_infer gives past a length
    return y


def same(name, got, want):
    """Bit for bit, whatever the model."""
    np.testing.assert_array_equal(got, want)


def flat_state(st):
    """Every array of st.state, in order."""
    out = []
    for s in st.state:
        out.extend(s if isinstance(s, tuple) else (s,))
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_whole_call_matches_torch(name):
    """The reference of the streaming tests: the whole call equals torch's own forward."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = inputs(name, (12, 4), rng)
    lengths = np.array([12, 1, 7, 3])
    got = build(name)(x, lengths=lengths)
    np.testing.assert_allclose(got, torch_forward(torch, name, x, lengths), rtol=0, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_steps_and_chunks_equal_whole(isa, name):
    li.set_isa(isa)
    rng = np.random.default_rng(0)
    m = build(name)
    T, B = 15, 3
    x = inputs(name, (T, B), rng)
    whole = m(x)
    st = m.stream(batch_size=B)
    ys = np.stack([st(x[t]) for t in range(T)])
    same(name, ys, whole)
    state_steps = flat_state(st)
    st.reset()
    ys = np.concatenate([st(x[a:b]) for a, b in [(0, 4), (4, 5), (5, 14), (14, 15)]])
    same(name, ys, whole)
    for a, b in zip(flat_state(st), state_steps):
        same(name, a, b)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unbatched_steps_and_batch_first(name):
    rng = np.random.default_rng(2)
    m, mb = build(name), build(name, batch_first=True)
    x = inputs(name, (9, 1), rng)
    whole = m(x)
    st = m.stream()
    ys = [st(x[t, 0]) for t in range(9)]
    assert ys[0].shape == (m.out_features,)
    same(name, np.stack(ys), whole[:, 0])
    xb = np.ascontiguousarray(np.swapaxes(x, 0, 1))
    sb = mb.stream(batch_size=1)
    yb = np.concatenate([sb(xb[:, :4]), sb(xb[:, 4:])], axis=1)
    assert yb.shape == (1, 9, m.out_features)
    same(name, yb, np.swapaxes(whole, 0, 1))
    sb.reset()
    same(name, np.stack([sb(xb[:, t]) for t in range(9)], axis=1), yb)


@pytest.mark.parametrize("name", sorted(MODELS))
@SETTINGS
@given(data=hst.data())
def test_random_chunk_splits(name, data):
    li.set_isa(data.draw(hst.sampled_from(ISAS)))
    T, B = data.draw(hst.integers(1, 25)), data.draw(hst.integers(1, 4))
    rng = np.random.default_rng(data.draw(hst.integers(0, 2**31)))
    m = build(name)
    x = inputs(name, (T, B), rng)
    same(name, stream_random_split(m.stream(batch_size=B), x, data), m(x))


@pytest.mark.parametrize("name", sorted(MODELS))
@SETTINGS
@given(data=hst.data())
def test_ragged_streams_equal_each_sequence_alone(name, data):
    """Slots stepping at different times each get what their own sequence gives alone;
    the outputs of idle steps are 0 (also after a head with a bias)."""
    li.set_isa(data.draw(hst.sampled_from(ISAS)))
    B, chunks = data.draw(hst.integers(1, 4)), data.draw(hst.integers(1, 5))
    rng = np.random.default_rng(data.draw(hst.integers(0, 2**31)))
    m = build(name)
    st = m.stream(batch_size=B)
    fed = [[] for _ in range(B)]
    for _ in range(chunks):
        T = int(rng.integers(1, 6))
        lens = rng.integers(0, T + 1, size=B)
        x = inputs(name, (T, B), rng)
        y = st(x, lengths=lens)
        for b in range(B):
            assert not y[lens[b]:, b].any()
            fed[b].append((x[:lens[b], b], y[:lens[b], b]))
    for b in range(B):
        xs = np.concatenate([f[0] for f in fed[b]])
        if len(xs) == 0:
            assert not any(s[:, b].any() for s in flat_state(st))
            continue
        same(name, np.concatenate([f[1] for f in fed[b]]), m([xs])[0])


def test_idle_slots_keep_state_and_reset_touches_one_slot():
    rng = np.random.default_rng(3)
    m = build("stacked")
    st = m.stream(batch_size=3)
    st(inputs("stacked", (4, 3), rng))
    before = flat_state(st)
    y = st(inputs("stacked", (5, 3), rng), lengths=[5, 0, 2])
    assert not y[:, 1].any() and not y[2:, 2].any()
    after = flat_state(st)
    assert len(after) == 3  # (h, c) of the LSTM, h of the GRU
    for a, b in zip(before, after):
        assert a[:, 1].tobytes() == b[:, 1].tobytes()  # the idle slot, bit for bit
        assert a[:, 0].tobytes() != b[:, 0].tobytes()
    st.reset(0)
    for a, b in zip(after, flat_state(st)):
        assert not b[:, 0].any() and a[:, 0].any()
        assert a[:, 1:].tobytes() == b[:, 1:].tobytes()
    # a reset slot starts a new sequence
    x = inputs("stacked", (6, 3), rng)
    same("stacked", st(x)[:, 0], m([x[:, 0]])[0])
    st.reset()
    assert not any(s.any() for s in flat_state(st))
    for bad, err in ((3, IndexError), (-1, IndexError), (1.0, TypeError)):
        with pytest.raises(err):
            st.reset(bad)


def test_state_round_trips_and_is_all_or_nothing():
    rng = np.random.default_rng(4)
    m = build("stacked")
    st = m.stream(batch_size=2)
    st(inputs("stacked", (3, 2), rng))
    saved = st.state
    assert isinstance(saved, tuple) and len(saved) == 2
    assert saved[0][0].shape == (1, 2, 3) and saved[0][1].shape == (1, 2, 6) and saved[1].shape == (1, 2, 5)
    x = inputs("stacked", (4, 2), rng)
    y1 = st(x)
    other = m.stream(batch_size=2)
    other.state = saved
    np.testing.assert_array_equal(other(x), y1)
    before = flat_state(other)
    with pytest.raises(ValueError, match=r"state of layer 'b': .*\(1, 2, 5\)"):
        other.state = (saved[0], np.zeros((1, 3, 5)))
    with pytest.raises(TypeError, match=r"tuple of 2 state\(s\), one per recurrent layer \('a', 'b'\)"):
        other.state = saved[1]
    for a, b in zip(flat_state(other), before):  # nothing changed, not even layer 'a'
        np.testing.assert_array_equal(a, b)


def test_errors():
    m = build("tagger")
    st = m.stream(batch_size=2)
    with pytest.raises(IndexError, match="token id 30 is out of range"):
        st(np.array([1, 30]))
    with pytest.raises(TypeError, match="integer token ids"):
        st(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="batch_size 2"):
        st(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="one unbatched step, but this stream has batch_size 2"):
        st(np.int64(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        st(np.array([1, 2]), lengths=[2, 0])
    with pytest.raises(ValueError, match="2 entries"):
        st(np.zeros((3, 2), np.int64), lengths=[1, 1, 1])
    assert not any(s.any() for s in flat_state(st))  # failed calls changed nothing
    f = build("frames").stream()
    with pytest.raises(ValueError, match="takes"):
        f(np.zeros(4, np.float32))  # wrong width
    assert f(np.zeros((0, 1, 5), np.float32)).shape == (0, 1, 1)  # an empty chunk
    sd = li.read_state_dict("examples/classifier.pt")
    with pytest.raises(ValueError, match="layer 'lstm' .* is bidirectional and cannot stream"):
        li.Sequential.from_state_dict(sd, "embedding > lstm > steps > fc").stream()
    uni = build("tagger")
    for text, match in (("emb > lstm > final > fc", r"readout 'final' \('final'\) turns each whole sequence"),
                        ("emb > lstm > mean", "readout 'mean'")):
        shapes = MODELS["tagger"][0]
        with pytest.raises(ValueError, match=match):
            li.Sequential.from_state_dict(_weights(shapes, 0), text).stream()
    with pytest.raises(ValueError, match="has no recurrent layer"):
        li.Sequential(li.Linear(3, 2), li.ReLU()).stream()
    with pytest.raises(ValueError, match="batch_size"):
        uni.stream(batch_size=0)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(st)


def test_concurrent_use_is_detected():
    """A second thread using a whole-model stream while a call runs gets RuntimeError."""
    m = build("frames")
    x = np.random.default_rng(6).standard_normal((20000, 8, 5)).astype(np.float32)
    assert_concurrent_use_detected(m.stream(batch_size=8), x, m(x))


def test_many_streams_one_model_many_threads():
    m = build("embedded")
    rng = np.random.default_rng(7)
    xs = [rng.integers(0, 30, 40) for _ in range(8)]
    for got, x in zip(stream_each_in_a_thread(m, xs), xs):
        np.testing.assert_array_equal(got, m([x])[0])


@pytest.mark.parametrize("fail_in", ["LayerNorm", "GRU"])
def test_a_call_failing_in_any_layer_leaves_every_state_as_it_was(monkeypatch, fail_in):
    """Ctrl-C (or any error) landing in a layer after a recurrent layer has stepped:
    every recurrent layer's state is as before the call, whether one or two of them."""
    rng = np.random.default_rng(8)
    name = "frames" if fail_in == "LayerNorm" else "recurrent"  # one recurrent layer, then others; two
    m = build(name)
    st = m.stream(batch_size=3)
    st(inputs(name, (2, 3), rng))
    before = flat_state(st)
    x = inputs(name, (5, 3), rng)
    want = m.stream(batch_size=3)
    want.state = st.state
    want = want(x)
    calls = []

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    def second_interrupted(self, *args, **kwargs):  # the first layer's stream steps, the second's is hit
        calls.append(self)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return li.stream.Stream._call(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        if fail_in == "LayerNorm":
            patch.setattr(li.LayerNorm, "__call__", interrupted)
        else:
            patch.setattr(li.stream.Stream, "__call__", second_interrupted)
        with pytest.raises(KeyboardInterrupt):
            st(x)
    assert fail_in == "LayerNorm" or len(calls) == 2
    for a, b in zip(flat_state(st), before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(st(x), want)  # and it goes on as if the call never happened


@pytest.mark.parametrize("model", [
    "li.Sequential(li.LSTM(64, 64), li.Readout('steps'), li.GRU(64, 512))",
    "li.Sequential(li.LSTM(64, 64), li.Readout('steps'), li.Linear(64, 8192), li.LogSoftmax(dim=-1))"])
def test_a_fork_after_a_layer_stepped_gives_the_child_the_state_before_the_call(model):
    """fork while another thread's call has stepped the first recurrent layer and runs
    a later layer: the child's copy of the stream has every layer's state from before
    that call (not the first layer's new state beside the others' old ones)."""
    code = textwrap.dedent("""
        import os, threading, numpy as np, lstm_infer as li
        li.set_num_threads(1)
        m = MODEL
        st = m.stream(batch_size=8)
        x = np.random.default_rng(0).standard_normal((400, 8, 64), dtype=np.float32)
        st(x[:2])
        def flat(state):
            return [a for s in state for a in (s if isinstance(s, tuple) else (s,))]
        before = flat(st.state)
        first = st._streams[0]
        mark = first._mark()
        t = threading.Thread(target=st, args=(x,))
        t.start()
        while t.is_alive() and first._mark() == mark:  # until the first layer has stepped
            pass
        if not t.is_alive():
            print("missed"); raise SystemExit(0)
        pid = os.fork()
        if pid == 0:
            same = all(np.array_equal(a, b) for a, b in zip(flat(st.state), before))
            os._exit(0 if same else 3)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        t.join()
        print("child", status)
    """).replace("MODEL", model)
    assert_forked_child_passes(code)


def test_load_state_dict_is_all_or_nothing():
    """A bad tensor in a later layer (wrong dtype; NaN where int8 cannot hold it) leaves
    every layer as it was, and the error names the key as the caller wrote it."""
    rng = np.random.default_rng(9)
    x = inputs("frames", (4, 2), rng)
    sd = _weights(MODELS["frames"][0], 0)
    for storage, bad_key, bad, match in (
            ("float32", "out.weight", np.zeros((1, 9), np.int64),
             r"state_dict\['out.weight'\] must have a floating-point dtype"),
            ("int8", "gru.weight_hh_l0", np.full((27, 9), np.nan, np.float32),
             r"state_dict\['gru.weight_hh_l0'\]: a weight is NaN or Inf")):
        m = li.Sequential.from_state_dict(sd, MODELS["frames"][1], weights=storage)
        want = m(x)
        new = {k: np.zeros_like(v) for k, v in sd.items()}  # every layer would change ...
        new[bad_key] = bad                                # ... but the last one cannot
        with pytest.raises((TypeError, ValueError), match=match):
            m.load_state_dict(new)
        np.testing.assert_array_equal(m(x), want)
        for k, v in m.state_dict().items():
            if storage == "float32":
                np.testing.assert_array_equal(v, sd[k])
