"""Parity with PyTorch: committed fixtures (real torch.save files and torch's
outputs; no torch needed) and, where torch is installed, a live matrix over
every nn.LSTM option. Every case runs on every kernel set this CPU has."""
import glob
import itertools
import json
import os
import zlib

import numpy as np
import pytest

import lstm_infer as li
from isa_helpers import available_isas
from lstm_infer import readers

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = sorted(glob.glob(os.path.join(HERE, "fixtures", "*.npz")))
TOL = 1e-5

ISAS = available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    li.set_isa(request.param)
    yield request.param
    li.set_isa("auto")


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    old = li.get_num_threads()
    li.set_num_threads(request.param)
    yield request.param
    li.set_num_threads(old)


def assert_close(got, want, what):
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= TOL, f"{what}: max abs error {err:.3g} > {TOL}"


def test_fixtures_exist():
    assert len(FIXTURES) >= 5


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: os.path.basename(p)[:-4])
def test_fixture_parity(fixture, isa, threads):
    ref = np.load(fixture)
    cfg = json.loads(str(ref["config"]))
    sd = readers.read_tensors(fixture[:-4] + ".pt")  # torch.save file, read without torch
    m = li.LSTM.from_state_dict(sd, batch_first=cfg.get("batch_first", False))
    for key in ("hidden_size", "num_layers", "proj_size"):
        if key in cfg:
            assert m.config[key] == cfg[key]
    hx = (ref["h_0"], ref["c_0"]) if "h_0" in ref else None
    lengths = ref["lengths"] if "lengths" in ref else None
    out, (h_n, c_n) = m(ref["x"], hx, lengths=lengths)
    assert out.dtype == np.float32 and out.shape == ref["output"].shape
    assert_close(out, ref["output"], "output")
    assert_close(h_n, ref["h_n"], "h_n")
    assert_close(c_n, ref["c_n"], "c_n")


# ---------------------------------------------------------------- live torch matrix

MATRIX = list(itertools.product([1, 2, 3], [False, True], [True, False], [0, 7],
                                [False, True], [False, True], ["equal", "ragged"]))


@pytest.mark.parametrize("layers,bi,bias,proj,batch_first,with_hx,lengths_kind", MATRIX)
def test_torch_matrix(layers, bi, bias, proj, batch_first, with_hx, lengths_kind, isa):
    torch = pytest.importorskip("torch")
    from torch_ref import torch_forward
    seed = zlib.crc32(repr((layers, bi, bias, proj, batch_first, with_hx, lengths_kind)).encode())
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    I, H, T = 37, 50, 11
    B = 1 if (layers + proj) % 3 == 0 else 5  # batch 1 and odd batches
    t = torch.nn.LSTM(I, H, layers, bias=bias, batch_first=batch_first, bidirectional=bi,
                      proj_size=proj).eval()
    m = li.LSTM.from_state_dict(t.state_dict(), batch_first=batch_first)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I), dtype=np.float32)
    D, out_w = (2 if bi else 1), (proj or H)
    hx = None
    if with_hx:
        hx = (rng.standard_normal((layers * D, B, out_w), dtype=np.float32),
              rng.standard_normal((layers * D, B, H), dtype=np.float32))
    lengths = None
    if lengths_kind == "ragged":
        lengths = np.array([T, 1, 0, 6, T][:B] if B > 1 else [4], np.int64)
    want = torch_forward(torch, t, x, lengths, hx)
    out, (h_n, c_n) = m(x, hx, lengths=lengths)
    for got, ref, what in zip((out, h_n, c_n), want, ("output", "h_n", "c_n")):
        assert got.shape == ref.shape, what
        assert_close(got, ref, what)


def test_unbatched_and_list_input_match_torch(isa):
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    t = torch.nn.LSTM(6, 10, 2, bidirectional=True, proj_size=4).eval()
    m = li.LSTM.from_state_dict(t.state_dict())
    x = torch.randn(7, 6)
    h0, c0 = torch.randn(4, 4), torch.randn(4, 10)
    with torch.no_grad():
        y, (h, c) = t(x, (h0, c0))
    out, (h_n, c_n) = m(x.numpy(), (h0.numpy(), c0.numpy()))
    assert out.shape == (7, 8) and h_n.shape == (4, 4) and c_n.shape == (4, 10)
    for got, ref in ((out, y), (h_n, h), (c_n, c)):
        assert_close(got, ref.numpy(), "unbatched")

    seqs = [torch.randn(n, 6) for n in (3, 7, 1)]
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
        y, (h, c) = t(packed)
        y, lens = torch.nn.utils.rnn.pad_packed_sequence(y)
    outs, (h_n, c_n) = m([s.numpy() for s in seqs])
    assert [o.shape for o in outs] == [(3, 8), (7, 8), (1, 8)]
    for b, o in enumerate(outs):
        assert_close(o, y[: lens[b], b].numpy(), f"list output {b}")
    assert_close(h_n, h.numpy(), "h_n")
    assert_close(c_n, c.numpy(), "c_n")


def test_state_dict_round_trip_and_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(4, 6, proj_size=2)  # tensors with requires_grad: must still load
    m = li.LSTM(4, 6, proj_size=2)
    m.load_state_dict(t.state_dict())
    sd = m.state_dict()
    assert list(sd) == list(t.state_dict())
    for k, v in t.state_dict().items():
        assert sd[k].dtype == np.float32 and np.array_equal(sd[k], v.detach().numpy())


def test_dropout_is_inert_like_eval():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    t = torch.nn.LSTM(3, 5, 2, dropout=0.5).eval()
    m = li.LSTM(3, 5, 2, dropout=0.5)
    m.load_state_dict(t.state_dict())
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        y, _ = t(x)
    assert_close(m(x.numpy())[0], y.numpy(), "output")
