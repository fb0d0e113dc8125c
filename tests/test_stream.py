"""Streams (model.stream()): chunked streaming equals one call over the whole
sequence, bit for bit on one thread, for every cell kind and kernel set; idle
slots, reset, state, errors and concurrent-use detection."""
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import lstm_infer as li
from isa_helpers import available_isas

ISAS = available_isas()
KINDS = {
    "lstm": lambda **kw: li.LSTM(5, 7, **kw),
    "lstm-proj": lambda **kw: li.LSTM(5, 7, proj_size=3, **kw),
    "gru": lambda **kw: li.GRU(5, 7, **kw),
    "rnn-tanh": lambda **kw: li.RNN(5, 7, **kw),
    "rnn-relu": lambda **kw: li.RNN(5, 7, nonlinearity="relu", **kw),
}
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _one_thread():
    n = li.get_num_threads()
    li.set_num_threads(1)
    yield
    li.set_num_threads(n)
    li.set_isa("auto")


def whole(model, x, lengths=None):
    """output, (h, c) of one call over x (T, B, I); c None unless LSTM."""
    out, state = model(x, lengths=lengths)
    return (out, state) if isinstance(state, tuple) else (out, (state, None))


def stream_state(st):
    s = st.state
    return s if isinstance(s, tuple) else (s, None)


def assert_same_state(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    if a[1] is not None or b[1] is not None:
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("layers", [1, 2])
def test_steps_and_chunks_equal_whole(isa, kind, layers):
    li.set_isa(isa)
    rng = np.random.default_rng(0)
    m = KINDS[kind](num_layers=layers)
    T, B = 17, 3
    x = rng.standard_normal((T, B, 5), dtype=np.float32)
    out, state = whole(m, x)
    # one step at a time
    st = m.stream(batch_size=B)
    ys = np.stack([st(x[t]) for t in range(T)])
    np.testing.assert_array_equal(ys, out)
    assert_same_state(stream_state(st), state)
    # chunks
    st.reset()
    ys = np.concatenate([st(x[a:b]) for a, b in [(0, 4), (4, 5), (5, 16), (16, 17)]])
    np.testing.assert_array_equal(ys, out)
    assert_same_state(stream_state(st), state)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unbatched_steps_and_batch_first(isa, kind):
    li.set_isa(isa)
    rng = np.random.default_rng(1)
    m = KINDS[kind]()
    x = rng.standard_normal((9, 1, 5), dtype=np.float32)
    out, state = whole(m, x)
    st = m.stream()
    ys = [st(x[t, 0]) for t in range(9)]
    assert ys[0].shape == (m.out_size,)
    np.testing.assert_array_equal(np.stack(ys), out[:, 0])
    mb = KINDS[kind](batch_first=True)
    mb.load_state_dict(m.state_dict())
    sb = mb.stream(batch_size=1)
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    yb = np.concatenate([sb(xb[:, :4]), sb(xb[:, 4:])], axis=1)
    assert yb.shape == (1, 9, m.out_size)
    np.testing.assert_array_equal(yb, out.transpose(1, 0, 2))
    assert_same_state(stream_state(sb), state)


@pytest.mark.parametrize("kind", sorted(KINDS))
@SETTINGS
@given(data=hst.data())
def test_random_chunk_splits(kind, data):
    isa = data.draw(hst.sampled_from(ISAS))
    li.set_isa(isa)
    T = data.draw(hst.integers(1, 30))
    B = data.draw(hst.integers(1, 5))
    layers = data.draw(hst.integers(1, 3))
    seed = data.draw(hst.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    m = KINDS[kind](num_layers=layers)
    x = rng.standard_normal((T, B, 5), dtype=np.float32)
    out, state = whole(m, x)
    cuts = sorted(data.draw(hst.lists(hst.integers(0, T), max_size=6)))
    bounds = [0] + cuts + [T]
    st = m.stream(batch_size=B)
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a == 1 and data.draw(hst.booleans()):
            parts.append(st(x[a])[None])         # a one-step call
        else:
            parts.append(st(x[a:b]))             # a chunk (possibly empty)
    np.testing.assert_array_equal(np.concatenate(parts), out)
    assert_same_state(stream_state(st), state)


@pytest.mark.parametrize("kind", sorted(KINDS))
@SETTINGS
@given(data=hst.data())
def test_ragged_streams_equal_each_sequence_alone(kind, data):
    """Slots that step at different times (lengths per chunk) each get what
    their own sequence gives alone; outputs of idle steps are 0."""
    isa = data.draw(hst.sampled_from(ISAS))
    li.set_isa(isa)
    same = np.testing.assert_array_equal
    B = data.draw(hst.integers(1, 4))
    chunks = data.draw(hst.integers(1, 5))
    seed = data.draw(hst.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    m = KINDS[kind](num_layers=data.draw(hst.integers(1, 2)))
    st = m.stream(batch_size=B)
    fed = [[] for _ in range(B)]
    for _ in range(chunks):
        T = int(rng.integers(1, 6))
        lens = rng.integers(0, T + 1, size=B)
        x = rng.standard_normal((T, B, 5), dtype=np.float32)
        y = st(x, lengths=lens)
        for b in range(B):
            assert not y[lens[b]:, b].any()
            fed[b].append((x[:lens[b], b], y[:lens[b], b]))
    h, c = stream_state(st)
    for b in range(B):
        xs = np.concatenate([f[0] for f in fed[b]])
        ys = np.concatenate([f[1] for f in fed[b]])
        if len(xs) == 0:
            assert not h[:, b].any()
            continue
        out, (h1, c1) = whole(m, xs[:, None, :])
        same(ys, out[:, 0])
        same(h[:, b], h1[:, 0])
        if c is not None:
            same(c[:, b], c1[:, 0])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_idle_slots_keep_state_bit_for_bit(kind):
    rng = np.random.default_rng(2)
    m = KINDS[kind](num_layers=2)
    st = m.stream(batch_size=4)
    st(rng.standard_normal((3, 4, 5), dtype=np.float32))
    # NaN payloads and -0.0 survive an idle step too
    h, c = stream_state(st)
    h[0, 1, 0], h[1, 1, 1] = np.nan, -0.0
    st.state = h if c is None else (h, c)
    before = stream_state(st)
    for lens in ([0, 0, 1, 1], [1, 0, 0, 1]):
        y = st(rng.standard_normal((4, 5), dtype=np.float32), lengths=lens)
        assert not y[np.array(lens) == 0].any()
    y = st(rng.standard_normal((6, 4, 5), dtype=np.float32), lengths=[2, 0, 6, 3])
    assert not y[:, 1].any() and not y[2:, 0].any()
    after = stream_state(st)
    for a, b in zip(before, after):
        if a is None:
            continue
        assert a[:, 1].tobytes() == b[:, 1].tobytes()       # bit for bit, NaN included
        assert a[:, 0].tobytes() != b[:, 0].tobytes()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reset_one_slot_and_all(kind):
    rng = np.random.default_rng(3)
    m = KINDS[kind](num_layers=2)
    st = m.stream(batch_size=3)
    st(rng.standard_normal((4, 3, 5), dtype=np.float32))
    before = stream_state(st)
    st.reset(1)
    after = stream_state(st)
    for a, b in zip(before, after):
        if a is None:
            continue
        assert not b[:, 1].any()
        assert a[:, [0, 2]].tobytes() == b[:, [0, 2]].tobytes()
        assert a[:, 1].any()
    # a reset slot starts a new sequence: as if its state were zeros
    x = rng.standard_normal((5, 3, 5), dtype=np.float32)
    y = st(x)
    out, _ = m(x, after if after[1] is not None else after[0])
    np.testing.assert_array_equal(y, out)
    st.reset()
    for s in stream_state(st):
        if s is not None:
            assert not s.any()
    with pytest.raises(IndexError):
        st.reset(3)
    with pytest.raises(IndexError):
        st.reset(-1)
    with pytest.raises(TypeError):
        st.reset(1.0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_state_round_trips(kind):
    rng = np.random.default_rng(4)
    m = KINDS[kind](num_layers=2)
    st = m.stream(batch_size=2)
    st(rng.standard_normal((3, 2, 5), dtype=np.float32))
    saved = st.state
    x = rng.standard_normal((4, 2, 5), dtype=np.float32)
    y1 = st(x)
    s1 = stream_state(st)
    # the state is a copy: changing it changes nothing
    if isinstance(saved, tuple):
        assert saved[0].shape == (2, 2, m.out_size) and saved[1].shape == (2, 2, 7)
        copy = (saved[0].copy(), saved[1].copy())
        st.state[0][...] = 5
    else:
        assert saved.shape == (2, 2, 7)
        copy = saved.copy()
        st.state[...] = 5
    assert_same_state(stream_state(st), s1)
    other = m.stream(batch_size=2)
    other.state = copy
    np.testing.assert_array_equal(other(x), y1)
    assert_same_state(stream_state(other), s1)
    # float64 and lists are accepted and converted
    other.state = tuple(a.astype(np.float64).tolist() for a in copy) \
        if isinstance(copy, tuple) else copy.astype(np.float64)
    np.testing.assert_array_equal(other(x), y1)
    # equals passing the state as hx
    out, _ = m(x, copy)
    np.testing.assert_array_equal(out, y1)


def test_reload_weights_takes_effect():
    m = li.GRU(5, 7)
    st = m.stream()
    x = np.ones(5, np.float32)
    sd = {k: np.zeros_like(v) for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    np.testing.assert_array_equal(st(x), np.zeros(7, np.float32))


def test_input_forms_and_dtypes():
    m = li.LSTM(5, 7)
    st = m.stream(batch_size=2)
    x = np.random.default_rng(5).standard_normal((2, 5))
    ref = m.stream(batch_size=2)(x.astype(np.float32))
    np.testing.assert_array_equal(st(x), ref)                # float64
    st.reset()
    np.testing.assert_array_equal(st(x.tolist()), ref)       # list
    st.reset()
    np.testing.assert_array_equal(st(np.asfortranarray(x.astype(np.float32))), ref)
    st.reset()
    big = np.zeros((2, 10), np.float32)
    big[:, ::2] = x
    np.testing.assert_array_equal(st(big[:, ::2]), ref)      # strided
    st.reset()
    np.testing.assert_array_equal(st(x.astype(">f4")), ref)  # big-endian
    assert st(np.zeros((0, 2, 5), np.float32)).shape == (0, 2, 7)  # an empty chunk


def test_errors():
    m = li.LSTM(5, 7, num_layers=2)
    st = m.stream(batch_size=2)
    with pytest.raises(ValueError, match="input_size"):
        st(np.zeros((2, 4), np.float32))                 # wrong width
    with pytest.raises(ValueError, match="input_size"):
        st(np.zeros((3, 2, 6), np.float32))
    with pytest.raises(ValueError, match="batch_size 2"):
        st(np.zeros((3, 5), np.float32))                 # wrong batch
    with pytest.raises(ValueError, match="batch_size 2"):
        st(np.zeros(5, np.float32))                      # unbatched needs batch_size 1
    with pytest.raises(ValueError, match="batch"):
        st(np.zeros((4, 3, 5), np.float32))
    with pytest.raises(ValueError):
        st(np.zeros((1, 1, 2, 5), np.float32))
    with pytest.raises(ValueError):
        st(np.float32(1))
    with pytest.raises(TypeError):
        st(np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        st(np.zeros((2, 5), np.float32), lengths=[2, 0])  # a step takes 0 or 1
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        st(np.zeros((3, 2, 5), np.float32), lengths=[4, 0])
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        st(np.zeros((3, 2, 5), np.float32), lengths=[-1, 0])
    with pytest.raises(ValueError, match="2 entries"):
        st(np.zeros((3, 2, 5), np.float32), lengths=[1, 1, 1])
    with pytest.raises(TypeError, match="integers"):
        st(np.zeros((3, 2, 5), np.float32), lengths=[1.0, 1.0])
    before = stream_state(st)
    with pytest.raises(ValueError, match=r"\(2, 2, 7\)"):
        st.state = (np.zeros((2, 1, 7)), np.zeros((2, 2, 7)))
    with pytest.raises(ValueError, match=r"\(2, 2, 7\)"):
        st.state = (np.zeros((2, 2, 7)), np.zeros((1, 2, 7)))
    with pytest.raises(TypeError):
        st.state = np.zeros((2, 2, 7))                   # an LSTM needs (h, c)
    with pytest.raises(TypeError):
        li.GRU(5, 7).stream().state = (np.zeros((1, 1, 7)), np.zeros((1, 1, 7)))
    with pytest.raises(ValueError):
        li.GRU(5, 7).stream().state = np.zeros((1, 7))
    assert_same_state(stream_state(st), before)          # failed calls changed nothing
    for bi in (li.LSTM(5, 7, bidirectional=True), li.GRU(5, 7, bidirectional=True),
               li.RNN(5, 7, bidirectional=True)):
        with pytest.raises(ValueError, match="bidirectional.*cannot stream"):
            bi.stream()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            m.stream(batch_size=bad)
    with pytest.raises(TypeError):
        m.stream(batch_size=1.5)
    assert not hasattr(li.LSTMCell(5, 7), "stream")  # cells step already
    import pickle
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(st)


def test_concurrent_use_is_detected():
    """A second thread using a stream while a call runs gets RuntimeError; the
    running call is unaffected."""
    m = li.LSTM(64, 256, num_layers=2)
    st = m.stream(batch_size=8)
    x = np.random.default_rng(6).standard_normal((4000, 8, 64), dtype=np.float32)
    ref = m(x)[0]
    errors, results = [], []
    started = threading.Event()

    def long_call():
        started.set()
        while not results:
            try:  # the main thread's read may hold the stream first: then start again
                st.reset()
                results.append(st(x))
            except RuntimeError:
                pass

    t = threading.Thread(target=long_call)
    t.start()
    started.wait()
    while t.is_alive():
        # only a read until the long call is seen to hold the stream (else a step
        # of ours could come first and change the state it starts from)
        ops = (lambda: st(x[0]), lambda: st.state, lambda: st.reset(0), st.reset,
               lambda: setattr(st, "state", (np.zeros((2, 8, 256)),) * 2)) if errors else (lambda: st.state,)
        for op in ops:
            try:
                op()
            except RuntimeError as e:
                errors.append(str(e))
    t.join()
    assert errors, "the long call ended before any concurrent use was tried"
    assert all("in use by another thread" in e for e in errors)
    np.testing.assert_array_equal(results[0], ref)


def test_many_streams_one_model_many_threads():
    m = li.GRU(16, 32, num_layers=2)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((50, 1, 16), dtype=np.float32) for _ in range(8)]
    refs = [m(x)[0] for x in xs]
    got = [None] * 8

    def run(i):
        st = m.stream()
        got[i] = np.stack([st(xs[i][t, 0]) for t in range(50)])

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, r in zip(got, refs):
        np.testing.assert_array_equal(g, r[:, 0])


def test_stream_detector_example_runs():
    """examples/stream_detector.py on 3 s of signal, from its bundled torch.save file."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, os.path.join(root, "examples", "stream_detector.py"),
                          "3"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "burst START" in res.stdout and "burst END" in res.stdout
    assert "chunked streaming == one call over the whole signal: yes" in res.stdout
