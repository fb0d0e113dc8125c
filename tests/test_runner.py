"""li.predict / li.predict_iter and `lstm-infer run`: bucketing changes no result,
memory bounded by the budget, every input format, bad records, Ctrl-C."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import runner
from lstm_infer.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(cls=li.LSTM, I=8, H=16, seed=0, **kw):
    rng = np.random.default_rng(seed)
    m = cls(I, H, **kw)
    m.load_state_dict({k: (rng.standard_normal(v.shape) * 0.3).astype(np.float32)
                       for k, v in m.state_dict().items()})
    return m


def sequences(n, I=8, lo=1, hi=60, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(t), I)).astype(np.float32) for t in rng.integers(lo, hi, n)]


@pytest.fixture
def one_thread():
    old = li.get_num_threads()
    li.set_num_threads(1)
    yield
    li.set_num_threads(old)


# ------------------------------------------------------------------ predict

@pytest.mark.parametrize("cls,kw", [(li.LSTM, dict(num_layers=2, bidirectional=True)),
                                    (li.LSTM, dict(proj_size=5, batch_first=True)),
                                    (li.GRU, dict(bidirectional=True)),
                                    (li.RNN, dict(num_layers=2, nonlinearity="relu"))])
@pytest.mark.parametrize("budget", [1, 57, 400, 10**7])
def test_predict_bit_identical_to_single_calls(one_thread, cls, kw, budget):
    m = make(cls, **kw)
    seqs = sequences(41)
    seqs.insert(5, np.zeros((0, 8), np.float32))  # an empty sequence: empty output
    out = li.predict(m, seqs, batch_tokens=budget)
    assert len(out) == len(seqs)
    for s, y in zip(seqs, out):
        if len(s) == 0:
            assert y.shape == (0, m.num_directions * m.out_size)
            continue
        ref = m(s[None] if m.batch_first else s[:, None])[0]
        ref = ref[0] if m.batch_first else ref[:, 0]
        assert y.dtype == np.float32 and y.shape == ref.shape
        assert np.array_equal(y, ref)


def test_rnn_core_batch_vs_single(one_thread):
    """A lone sequence (the one-row step) rounds like the same sequence in a batch."""
    m = make(li.RNN)
    s = sequences(2)
    assert np.array_equal(m(s)[0][0], m(s[0])[0])


def test_predict_accepts_path_and_iter_yields_each_index_once(tmp_path):
    m = make(num_layers=2)
    m.save(tmp_path / "m.lstm")
    seqs = sequences(30)
    got = dict(li.predict_iter(str(tmp_path / "m.lstm"), iter(seqs), batch_tokens=100))
    assert sorted(got) == list(range(30))
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(got[i], m(s)[0], rtol=0, atol=1e-6)


def test_batches_respect_budget():
    lengths = [5, 200, 7, 7, 50, 1, 300, 20] * 5
    batches = list(runner._batches(lengths, 256))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        top = max(lengths[i] for i in b)
        assert top * len(b) <= 256 or len(b) == 1


def test_generator_is_streamed_within_the_window():
    m = make()
    consumed = []

    def gen():
        for i, s in enumerate(sequences(400, lo=10, hi=11)):  # 10 steps each
            consumed.append(i)
            yield s

    it = li.predict_iter(m, gen(), batch_tokens=100)
    next(it)
    # window = WINDOW_FACTOR * 100 steps = 40 sequences of 10 steps
    assert len(consumed) == runner.WINDOW_FACTOR * 10
    assert len(list(it)) == 399


def test_token_ids_and_bad_shapes_are_refused():
    m = make()
    with pytest.raises(ValueError, match="token ids.*Embedding"):
        li.predict(m, [np.arange(5)])
    with pytest.raises(ValueError, match=r"sequence 1: wrong shape \(4, 3\)"):
        li.predict(m, [np.zeros((2, 8)), np.zeros((4, 3))])
    with pytest.raises(TypeError, match="recurrent layer"):
        li.predict(li.LSTMCell(8, 4), [np.zeros((2, 8))])


def test_memory_bounded_by_budget_not_dataset():
    I, H, budget = 32, 32, 2048
    m = make(I=I, H=H, bidirectional=True)
    n = 2000  # ~100 steps each: 200k steps, ~100 x the budget; inputs alone 25 MB

    def gen():
        rng = np.random.default_rng(0)
        for t in rng.integers(50, 150, n):
            yield rng.standard_normal((int(t), I)).astype(np.float32)

    tracemalloc.start()
    try:
        total = 0
        for _, y in li.predict_iter(m, gen(), batch_tokens=budget):
            total += y.nbytes
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # one window of inputs, one padded batch in and out, the outputs copied out: ~2.5 MB
    bound = 4 << 20
    assert total > 10 * bound  # the dataset's outputs alone dwarf the bound
    assert peak < bound, (peak, bound)


# ------------------------------------------------------------------ run (CLI)

@pytest.fixture
def dataset(tmp_path):
    m = make(num_layers=2, bidirectional=True)
    m.save(tmp_path / "m.lstm")
    seqs = sequences(50)
    d = tmp_path / "npy"
    d.mkdir()
    for i, s in enumerate(seqs):
        np.save(d / f"s{i:03d}.npy", s)
    np.savez(tmp_path / "r.npz", data=np.concatenate(seqs), lengths=[len(s) for s in seqs])
    with open(tmp_path / "r.jsonl", "w") as f:
        for s in seqs:
            f.write(json.dumps(s.tolist()) + "\n")
    return m, seqs, tmp_path


def run_cli(*argv):
    return main(["run", *map(str, argv)])


def check_ragged(path, m, seqs, names):
    z = np.load(path)
    assert set(z.files) == {"data", "lengths", "names", "skipped"}
    assert z["lengths"].tolist() == [len(s) for s in seqs]
    assert z["names"].tolist() == names
    pos = 0
    for s in seqs:
        np.testing.assert_array_equal(z["data"][pos:pos + len(s)], m(s)[0])
        pos += len(s)
    return z


@pytest.mark.parametrize("fmt", ["npy-dir", "npy-glob", "npz", "jsonl"])
def test_run_each_format_equals_direct_calls(dataset, fmt, capsys):
    m, seqs, tmp = dataset
    out = tmp / "out.npz"
    src = {"npy-dir": tmp / "npy", "npy-glob": tmp / "npy" / "s0*.npy", "npz": tmp / "r.npz",
           "jsonl": tmp / "r.jsonl"}[fmt]
    assert run_cli(tmp / "m.lstm", src, "-o", out, "--batch-tokens", "300", "--threads", "1") == 0
    if fmt.startswith("npy"):
        names = sorted(glob.glob(str(tmp / "npy" / "*.npy")))
    elif fmt == "npz":
        names = [f"{src}[{i}]" for i in range(50)]
    else:
        names = [f"{src}:{i + 1}" for i in range(50)]
    z = check_ragged(out, m, seqs, names)
    assert z["skipped"].tolist() == []
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}: 50 sequences, {sum(map(len, seqs))} tokens in")
    assert "seq/s" in line and "tokens/s" in line and "padding" in line
    assert sorted(os.listdir(tmp)) == ["m.lstm", "npy", "out.npz", "r.jsonl", "r.npz"]


def test_run_mirrors_npy_into_a_directory(dataset):
    m, seqs, tmp = dataset
    for existing in (False, True):
        out = tmp / "outdir"
        if existing:
            out.mkdir(exist_ok=True)
            (out / "keep.txt").write_text("x")
        assert run_cli(tmp / "m.lstm", tmp / "npy", "-o", out) == 0
        want = (["keep.txt"] if existing else []) + [f"s{i:03d}.npy" for i in range(50)]
        assert sorted(os.listdir(out)) == want
        for i, s in enumerate(seqs):
            np.testing.assert_array_equal(np.load(out / f"s{i:03d}.npy"), m(s)[0])
        if not existing:
            import shutil
            shutil.rmtree(out)
    assert not [p for p in os.listdir(tmp) if p.startswith(".")]


def test_run_bad_records(dataset, capsys):
    m, seqs, tmp = dataset
    bad = tmp / "bad.jsonl"
    good = seqs[0].tolist()
    bad.write_text("\n".join([json.dumps(good), "", json.dumps([[1.0, 2.0]]), '[["a", "b"]]',
                              "{not json", json.dumps(good)]) + "\n")
    out = tmp / "o.npz"
    assert run_cli(tmp / "m.lstm", bad, "-o", out) == 2
    assert f"{bad}:2: empty line" in capsys.readouterr().err
    assert not out.exists()
    assert run_cli(tmp / "m.lstm", bad, "-o", out, "--skip-bad") == 0
    summary = capsys.readouterr().out
    assert "skipped 4 bad record(s)" in summary and f"{bad}:3: wrong shape (1, 2)" in summary
    z = check_ragged(out, m, [seqs[0], seqs[0]], [f"{bad}:1", f"{bad}:6"])
    sk = z["skipped"].tolist()
    assert len(sk) == 4 and sk[0] == f"{bad}:2: empty line" and "non-numeric" in sk[2] and "JSON" in sk[3]
    # a .npy of the wrong width among good ones
    np.save(tmp / "npy" / "zz.npy", np.zeros((3, 5), np.float32))
    assert run_cli(tmp / "m.lstm", tmp / "npy", "-o", out) == 2
    assert "zz.npy: wrong shape (3, 5)" in capsys.readouterr().err


def test_run_streams_a_large_npz_within_the_budget(tmp_path):
    I, H, budget = 32, 32, 1024
    m = make(I=I, H=H)
    rng = np.random.default_rng(3)
    lengths = rng.integers(20, 80, 4000)
    data = rng.standard_normal((int(lengths.sum()), I)).astype(np.float32)  # 25 MB, 200 x budget
    np.savez(tmp_path / "big.npz", data=data, lengths=lengths)
    del data
    tracemalloc.start()
    try:
        runner.run(m, [tmp_path / "big.npz"], tmp_path / "out.npz", batch_tokens=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # the dataset is 25 MB in, 25 MB out
    z = np.load(tmp_path / "out.npz")
    src = np.load(tmp_path / "big.npz")
    assert z["data"].shape == (lengths.sum(), H)
    off = np.concatenate([[0], np.cumsum(lengths)])
    for i in (0, 1234, 3999):
        np.testing.assert_array_equal(z["data"][off[i]:off[i + 1]],
                                      m(src["data"][off[i]:off[i + 1]])[0])


@pytest.mark.parametrize("sig,status,message", [
    (signal.SIGINT, 130, b"lstm-infer: interrupted; nothing written\n"),
    (signal.SIGTERM, 143, b"lstm-infer: terminated by SIGTERM; nothing written\n")])
def test_run_stopped_by_a_signal_leaves_nothing(tmp_path, sig, status, message):
    """A signal from outside while the engine computes (SIGTERM: what `timeout` and
    process managers send)."""
    m = make(I=64, H=256, num_layers=2, bidirectional=True)
    m.save(tmp_path / "m.lstm")
    rng = np.random.default_rng(0)
    lengths = np.full(400, 500)
    np.savez(tmp_path / "r.npz", data=rng.standard_normal((int(lengths.sum()), 64)).astype(np.float32),
             lengths=lengths)
    before = sorted(os.listdir(tmp_path))
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "lstm_infer", "run", str(tmp_path / "m.lstm"),
                          str(tmp_path / "r.npz"), "-o", str(tmp_path / "out.npz"), "--batch-tokens", "2000"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.time() + 30
    while not any(f.endswith(".spill") for f in os.listdir(tmp_path)):  # the run has started
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode == status, err
    assert err == message
    assert sorted(os.listdir(tmp_path)) == before


def test_run_is_quiet_without_a_terminal(dataset):
    m, seqs, tmp = dataset
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "lstm_infer", "run", str(tmp / "m.lstm"), str(tmp / "r.npz"),
                        "-o", str(tmp / "o.npz")], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.count("\n") == 1


def test_run_shows_progress_on_a_terminal(dataset):
    pytest.importorskip("tqdm")
    import pty
    m, seqs, tmp = dataset
    import fcntl
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, PYTHONPATH=ROOT)
    argv = [sys.executable, "-m", "lstm_infer", "run", str(tmp / "m.lstm"), str(tmp / "r.npz"), "-o", str(tmp / "o.npz")]
    for extra, shown in (([], True), (["--no-progress"], False)):
        p = subprocess.Popen(argv + extra, env=env, stdout=subprocess.PIPE, stderr=slave)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        os.write(slave, b"END\n")
        err = b""
        while not err.endswith(b"END\r\n"):
            err += os.read(master, 65536)
        assert (b"seq/s" in err and b"tokens/s" in err and b"50/50" in err) == shown, err
    os.close(master)
    os.close(slave)
