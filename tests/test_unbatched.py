"""Unbatched calls, m(x (T, I), hx (L*D, out)): torch's layout, on the same fast
path as batched calls (issue 14), so they give exactly the batched results."""
import numpy as np
import pytest

import lstm_infer as li

KINDS = [(li.LSTM, {}), (li.GRU, {}), (li.RNN, {"nonlinearity": "relu"}), (li.LSTM, {"proj_size": 5})]


def _state(m, rng, batch):
    D = 2 if m.bidirectional else 1
    out = getattr(m, "proj_size", 0) or m.hidden_size
    lead = (m.num_layers * D,) + ((1,) if batch else ())
    h = rng.standard_normal(lead + (out,), dtype=np.float32)
    if isinstance(m, li.LSTM):
        return h, rng.standard_normal(lead + (m.hidden_size,), dtype=np.float32)
    return h


@pytest.mark.parametrize("cls,kw", KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched_equals_batched_exactly(cls, kw, batch_first, with_hx):
    rng = np.random.default_rng(3)
    m = cls(6, 9, num_layers=2, bidirectional=True, batch_first=batch_first, **kw)
    m.load_state_dict({k: rng.standard_normal(v.shape, dtype=np.float32) * 0.4
                       for k, v in m.state_dict().items()})
    x = rng.standard_normal((5, 6), dtype=np.float32)
    hx2 = _state(m, np.random.default_rng(4), batch=False) if with_hx else None
    hx3 = _state(m, np.random.default_rng(4), batch=True) if with_hx else None
    xb = x[None] if batch_first else x[:, None]  # batch_first applies to batched input only
    y, s = m(x, hx2)
    yb, sb = m(xb, hx3)
    yb = yb[0] if batch_first else yb[:, 0]
    assert y.shape == yb.shape and np.array_equal(y, yb)
    for got, want in zip(s if isinstance(s, tuple) else (s,), sb if isinstance(sb, tuple) else (sb,)):
        assert got.shape == want[:, 0].shape and np.array_equal(got, want[:, 0])
        assert got.flags.c_contiguous and got.flags.writeable and got.flags.owndata
    assert y.flags.c_contiguous and y.flags.writeable and y.flags.owndata


def test_unbatched_strided_input_and_converted_state():
    """Non-contiguous time steps and a float64 state take the general path: same numbers."""
    rng = np.random.default_rng(5)
    m = li.GRU(4, 7)
    x = rng.standard_normal((6, 8), dtype=np.float32)[:, ::2]
    h = rng.standard_normal((1, 7))
    y, hn = m(x, h)
    y2, hn2 = m(np.ascontiguousarray(x), h.astype(np.float32))
    assert np.array_equal(y, y2) and np.array_equal(hn, hn2)


def test_unbatched_state_of_batched_shape_is_refused():
    m = li.LSTM(4, 7)
    x = np.zeros((3, 4), np.float32)
    bad = np.zeros((1, 1, 7), np.float32)
    with pytest.raises(ValueError, match="h_0"):
        m(x, (bad, bad))
