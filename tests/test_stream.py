"""Streams (model.stream()): chunked streaming equals one call over the whole
sequence, bit for bit on one thread, for every cell kind and kernel set; idle
slots, reset, state, errors and concurrent-use detection."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hst

import lstm_infer as li
from lstm_infer import _core
from stream_helpers import one_thread  # noqa: F401 (autouse: each test on one C thread)
from stream_helpers import (ISAS, assert_concurrent_use_detected, assert_forked_child_passes, hypothesis_settings,
                            stream_each_in_a_thread, stream_random_split)

KINDS = {
    "lstm": lambda **kw: li.LSTM(5, 7, **kw),
    "lstm-proj": lambda **kw: li.LSTM(5, 7, proj_size=3, **kw),
    "gru": lambda **kw: li.GRU(5, 7, **kw),
    "rnn-tanh": lambda **kw: li.RNN(5, 7, **kw),
    "rnn-relu": lambda **kw: li.RNN(5, 7, nonlinearity="relu", **kw),
}
SETTINGS = hypothesis_settings(40)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["held", "released"])
def gil(request):
    """Every call of the test with the GIL held throughout, or released around C
    (short calls hold it, long ones release it: _core.HOLD_GIL_FLOPS)."""
    before = _core._hold_gil_flops(float("inf") if request.param == "held" else 0.0)
    yield request.param
    _core._hold_gil_flops(before)


def whole(model, x, lengths=None):
    """output, (h, c) of one call over x (T, B, I); c None unless LSTM."""
    out, state = model(x, lengths=lengths)
    return (out, state) if isinstance(state, tuple) else (out, (state, None))


def stream_state(st):
    s = st.state
    return s if isinstance(s, tuple) else (s, None)


def stepped_stream(kind, batch_size, seed):
    """rng, a 2-layer model of kind, and a stream of it that has taken 3 steps."""
    rng = np.random.default_rng(seed)
    m = KINDS[kind](num_layers=2)
    st = m.stream(batch_size=batch_size)
    st(rng.standard_normal((3, batch_size, 5), dtype=np.float32))
    return rng, m, st


def assert_same_state(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    if a[1] is not None or b[1] is not None:
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("layers", [1, 2])
def test_steps_and_chunks_equal_whole(isa, kind, layers, gil):
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
    st = m.stream(batch_size=B)
    np.testing.assert_array_equal(stream_random_split(st, x, data), out)
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
    rng, m, st = stepped_stream(kind, 4, 2)
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
    rng, m, st = stepped_stream(kind, 3, 3)
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
    rng, m, st = stepped_stream(kind, 2, 4)
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


@pytest.mark.parametrize("weights", ["float16", "int8"])
def test_reload_to_reduced_weights_mid_stream(weights):
    """A reload that changes how the weights are stored (and the scratch a step
    needs) takes effect at the next step; the state carries over."""
    rng = np.random.default_rng(8)
    m = li.LSTM(5, 7, num_layers=2)
    st = m.stream(batch_size=2)
    st(rng.standard_normal((3, 2, 5), dtype=np.float32))
    state = st.state
    m.load_state_dict(m.state_dict(), weights=weights)
    x = rng.standard_normal((2, 5), dtype=np.float32)
    out, _ = m(x[None], state)
    np.testing.assert_array_equal(st(x), out[0])
    np.testing.assert_array_equal(st(x[None]), m(x[None], m(x[None], state)[1])[0])


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
    for zero_d in (np.array(1.0, np.float32), np.array(3, np.int64), np.zeros(())):
        with pytest.raises((TypeError, ValueError)):  # a 0-d array (this crashed the one-step path)
            li.LSTM(5, 7).stream()(zero_d)
    with pytest.raises(ValueError, match="batch_size = 2147483648 is too large"):
        m.stream(batch_size=2**31)
    with pytest.raises(ValueError, match="too large"):
        m.stream(batch_size=2**63)
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
    x = np.random.default_rng(6).standard_normal((4000, 8, 64), dtype=np.float32)
    assert_concurrent_use_detected(m.stream(batch_size=8), x, m(x)[0])


def test_short_calls_hold_the_gil_long_ones_release_it():
    assert li.LSTM(64, 128).stream()._holds_gil          # ~7 us a step
    assert not li.LSTM(64, 128).stream(batch_size=8)._holds_gil
    assert not li.GRU(64, 512).stream()._holds_gil


def test_other_threads_run_during_a_long_step():
    """One step of a big model releases the GIL: a Python thread keeps running
    through the middle of the call."""
    m = li.LSTM(512, 1024)
    st = m.stream(batch_size=256)  # one step: 3.2 GFLOP
    x = np.ones((256, 512), np.float32)
    stamps, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=ticker)
    t.start()
    try:
        while len(stamps) < 100:  # the ticker runs
            time.sleep(0.001)
        t0 = time.perf_counter()
        st(x)
        t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    quarter = (t1 - t0) / 4
    inside = [s for s in stamps if t0 + quarter < s < t1 - quarter]
    assert len(inside) > 10, f"{len(inside)} ticks in the middle of a {t1 - t0:.3f} s step"


@pytest.mark.parametrize("model", [
    "li.LSTM(64, 256, num_layers=2)",
    "li.Sequential(li.LSTM(64, 256, num_layers=2), li.Readout('steps'), li.Linear(256, 3))"])
def test_a_call_running_at_fork_does_not_hold_the_childs_stream(model):
    """fork while another thread is inside a long stream call: in the child that
    thread and its call are gone; the child's copy of the stream is free and
    has the state from before the call."""
    code = textwrap.dedent("""
        import os, threading, numpy as np, lstm_infer as li
        li.set_num_threads(1)
        m = MODEL
        st = m.stream(batch_size=8)
        x = np.random.default_rng(0).standard_normal((1000, 8, 64), dtype=np.float32)
        y = m(x[:1])
        want = (y if isinstance(m, li.Sequential) else y[0])[0]  # one step from zeros
        t = threading.Thread(target=st, args=(x,))
        t.start()
        inside = False
        while t.is_alive() and not inside:  # until the call holds the stream
            try:
                st.state
            except RuntimeError:
                inside = True
        if not inside:
            print("missed"); raise SystemExit(0)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if np.array_equal(st(x[0]), want) else 3)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        t.join()
        print("child", status)
    """).replace("MODEL", model)
    assert_forked_child_passes(code)


def test_many_streams_one_model_many_threads():
    m = li.GRU(16, 32, num_layers=2)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((50, 1, 16), dtype=np.float32) for _ in range(8)]
    got = stream_each_in_a_thread(m, [x[:, 0] for x in xs])
    for g, x in zip(got, xs):
        np.testing.assert_array_equal(g, m(x)[0][:, 0])


def test_stream_detector_example_runs():
    """examples/stream_detector.py on 3 s of signal, from its bundled torch.save file."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "stream_detector.py"),
                          "3"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "burst START" in res.stdout and "burst END" in res.stdout
    assert "chunked streaming == one call over the whole signal: yes" in res.stdout
