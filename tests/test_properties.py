"""Property-based tests (hypothesis) of the engine against tests/reference.py.

Over random configurations and ragged lengths, for every instruction set the
CPU supports:
  * the output equals a slow float64 NumPy LSTM written from the equations;
  * it equals running each sequence alone (batch of one, its own length);
  * a unidirectional forward over the whole sequence equals the same sequence
    fed in chunks with (h_n, c_n) carried over (also with ragged lengths,
    where a chunk past a sequence's end has length 0 and must keep the state).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstm_infer as li
from isa_helpers import available_isas
from reference import random_state_dict, reference

ATOL = 1e-5
RTOL = 1e-5


ISAS = available_isas()
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _restore_isa():
    yield
    li.set_isa("auto")


@st.composite
def cases(draw, unidirectional=False):
    cfg = {
        "input_size": draw(st.integers(1, 20)),
        "hidden_size": draw(st.integers(1, 40)),
        "num_layers": draw(st.integers(1, 3)),
        "bias": draw(st.booleans()),
        "bidirectional": False if unidirectional else draw(st.booleans()),
    }
    cfg["proj_size"] = draw(st.integers(0, cfg["hidden_size"] - 1)) if draw(st.booleans()) else 0
    T = draw(st.integers(1, 12))
    B = draw(st.integers(1, 6))
    lengths = draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    with_hx = draw(st.booleans())
    batch_first = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return cfg, T, B, lengths, with_hx, batch_first, seed


def _build(cfg, T, B, with_hx, seed):
    rng = np.random.default_rng(seed)
    sd = random_state_dict(rng, **cfg)
    m = li.LSTM(**cfg)
    m.load_state_dict(sd)
    x = rng.uniform(-1.5, 1.5, (T, B, cfg["input_size"])).astype(np.float32)
    hx = None
    if with_hx:
        S = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
        hx = (rng.uniform(-1, 1, (S, B, cfg["proj_size"] or cfg["hidden_size"])).astype(np.float32),
              rng.uniform(-1, 1, (S, B, cfg["hidden_size"])).astype(np.float32))
    return sd, m, x, hx


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=cases())
def test_matches_numpy_reference(isa, case):
    cfg, T, B, lengths, with_hx, batch_first, seed = case
    li.set_isa(isa)
    sd, m, x, hx = _build(cfg, T, B, with_hx, seed)
    lens = None if lengths is None else np.array(lengths, dtype=np.int64)
    want_out, (want_h, want_c) = reference(sd, cfg, x, hx, lens)
    if batch_first:
        bf = li.LSTM(batch_first=True, **cfg)
        bf.load_state_dict(sd)
        out, (h, c) = bf(np.ascontiguousarray(x.transpose(1, 0, 2)), hx, lens)
        out = out.transpose(1, 0, 2)
    else:
        out, (h, c) = m(x, hx, lens)
    assert out.dtype == h.dtype == c.dtype == np.float32
    assert out.shape == want_out.shape and h.shape == want_h.shape and c.shape == want_c.shape
    _close(out, want_out, "output")
    _close(h, want_h, "h_n")
    _close(c, want_c, "c_n")
    if lens is not None:  # exactly zero past each length
        for b, n in enumerate(lengths):
            assert not out[n:, b].any()


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=cases())
def test_batch_equals_each_sequence_alone(isa, case):
    cfg, T, B, lengths, with_hx, _, seed = case
    li.set_isa(isa)
    _, m, x, hx = _build(cfg, T, B, with_hx, seed)
    lengths = [T] * B if lengths is None else lengths
    out, (h, c) = m(x, hx, np.array(lengths))
    for b, n in enumerate(lengths):
        hx_b = None if hx is None else (hx[0][:, b:b + 1], hx[1][:, b:b + 1])
        if n == 0:
            want_h = np.zeros_like(h[:, b:b + 1]) if hx is None else hx_b[0]
            want_c = np.zeros_like(c[:, b:b + 1]) if hx is None else hx_b[1]
            np.testing.assert_array_equal(h[:, b:b + 1], want_h)
            np.testing.assert_array_equal(c[:, b:b + 1], want_c)
            assert not out[:, b].any()
            continue
        o1, (h1, c1) = m(x[:n, b:b + 1], hx_b)
        _close(out[:n, b:b + 1], o1, f"output of sequence {b}")
        _close(h[:, b:b + 1], h1, f"h_n of sequence {b}")
        _close(c[:, b:b + 1], c1, f"c_n of sequence {b}")


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=cases(unidirectional=True), cuts=st.lists(st.integers(1, 11), max_size=4))
def test_whole_equals_chunks_with_state_carried(isa, case, cuts):
    cfg, T, B, lengths, with_hx, _, seed = case
    li.set_isa(isa)
    _, m, x, hx = _build(cfg, T, B, with_hx, seed)
    lens = None if lengths is None else np.array(lengths, dtype=np.int64)
    out, (h, c) = m(x, hx, lens)
    bounds = sorted({0, T, *[k for k in cuts if k < T]})
    state = hx
    pieces = []
    for t0, t1 in zip(bounds, bounds[1:]):
        chunk_lens = None if lens is None else np.clip(lens - t0, 0, t1 - t0)
        o, state = m(x[t0:t1], state, chunk_lens)
        pieces.append(o)
    _close(np.concatenate(pieces), out, "chunked output")
    _close(state[0], h, "chunked h_n")
    _close(state[1], c, "chunked c_n")
