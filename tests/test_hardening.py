"""What other threads, odd arrays, big ragged batches and Ctrl-C can do to a call.

Each scenario that could crash the interpreter runs in a child process, so a
crash is a failed test rather than a dead test run.
"""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(code, timeout=120):
    """Runs code in a fresh interpreter; returns (exit code, stdout, stderr)."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT)
    return res.returncode, res.stdout, res.stderr


# ----------------------------------------------------------------- use after free

def test_reloading_weights_during_calls_on_both_paths():
    """load_state_dict replaces (and frees) the C model; calls running at that
    moment on the fast path (float32, no lengths) and the general path keep
    their own reference and return one model's exact result."""
    rc, out, err = run_child("""
        import threading, time, numpy as np, lstm_infer as li
        li.set_num_threads(2)
        rng = np.random.default_rng(0)
        m = li.LSTM(64, 96, num_layers=2)
        sds = [m.state_dict(), li.LSTM(64, 96, num_layers=2).state_dict()]
        x = rng.standard_normal((30, 8, 64)).astype(np.float32)
        lengths = np.array([30, 3, 17, 30, 1, 9, 30, 12])
        refs = []
        for sd in sds:
            m.load_state_dict(sd)
            refs.append((m(x)[0], m(x, lengths=lengths)[0]))
        stop = time.monotonic() + 2.0
        bad = []
        def caller(ragged):
            n = 0
            while time.monotonic() < stop:
                y = m(x, lengths=lengths)[0] if ragged else m(x)[0]
                if not any(np.array_equal(y, r[ragged]) for r in refs):
                    bad.append(ragged)
                n += 1
        threads = [threading.Thread(target=caller, args=(r,)) for r in (0, 1, 0, 1)]
        for t in threads:
            t.start()
        reloads = 0
        while time.monotonic() < stop:
            m.load_state_dict(sds[reloads % 2])
            reloads += 1
        for t in threads:
            t.join()
        print("reloads", reloads, "bad", len(bad))
    """)
    assert rc == 0, err[-3000:]
    assert "bad 0" in out, out
    assert int(out.split()[1]) > 50, out


# ----------------------------------------------------------------- byte order and alignment

def _unaligned(a):
    """A copy of float32 array a whose data sits one byte off alignment."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = buf[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned
    return u


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_big_endian_and_unaligned_arrays_are_read_by_value(kind):
    rng = np.random.default_rng(1)
    m = getattr(li, kind)(5, 7, num_layers=2)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    h = rng.standard_normal((2, 3, 7)).astype(np.float32)
    c = rng.standard_normal((2, 3, 7)).astype(np.float32)
    hx = (h, c) if kind == "LSTM" else h
    want = m(x, hx)
    lengths = np.array([6, 2, 4])
    want_ragged = m(x, hx, lengths=lengths)

    def same(a, b):
        if isinstance(a, tuple):
            return all(same(p, q) for p, q in zip(a, b))
        return np.array_equal(a, b)

    for conv in (lambda a: a.astype(">f4"), _unaligned):
        hx2 = (conv(h), conv(c)) if kind == "LSTM" else conv(h)
        assert same(m(conv(x)), m(x))  # the fast path
        assert same(m(conv(x), hx2), want)
        assert same(m(conv(x), hx2, lengths=lengths.astype(">i8")), want_ragged)
        assert same(m(list(conv(x).transpose(1, 0, 2))), m(list(x.transpose(1, 0, 2))))


def test_cells_read_big_endian_and_unaligned_arrays_by_value():
    rng = np.random.default_rng(2)
    cell = li.GRUCell(5, 7)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    h = rng.standard_normal((3, 7)).astype(np.float32)
    want = cell(x, h)
    for conv in (lambda a: a.astype(">f4"), _unaligned):
        np.testing.assert_array_equal(cell(conv(x), conv(h)), want)


def test_c_buffers_refuse_swapped_or_unaligned_arrays():
    """The binding itself (not only model.py) refuses what C cannot read in place."""
    m = li.LSTM(4, 3)
    core = m._core
    x = np.zeros((2, 1, 4), np.float32)
    out = np.zeros((2, 1, 3), np.float32)
    h = np.zeros((1, 1, 3), np.float32)
    for bad in (x.astype(">f4"), _unaligned(x)):
        with pytest.raises(ValueError, match="input buffer"):
            core.forward(bad, None, None, None, out, h, h.copy())
    with pytest.raises(ValueError, match="h_0 buffer"):
        core.forward(x, None, h.astype(">f4"), None, out, h, h.copy())
    with pytest.raises(ValueError, match="lengths buffer"):
        core.forward(x, np.array([2], ">i8"), None, None, out, h, h.copy())


# ----------------------------------------------------------------- lengths changed meanwhile

def test_lengths_changed_by_another_thread_during_calls():
    """lengths is copied once and only the copy is checked and used: a thread
    writing absurd values into the caller's array meanwhile causes a clean
    error or a correct result, never a crash or an out-of-bounds write."""
    rc, out, err = run_child("""
        import threading, time, numpy as np, lstm_infer as li
        rng = np.random.default_rng(0)
        m = li.GRU(16, 32)
        x = rng.standard_normal((40, 64, 16)).astype(np.float32)
        good = np.full(64, 40, np.int64); good[::3] = 5
        want = m(x, lengths=good.copy())[0]
        lengths = good.copy()
        stop = time.monotonic() + 1.5
        def flipper():
            while time.monotonic() < stop:
                lengths[::2] = 10**12
                lengths[::2] = -7
                lengths[:] = good
        t = threading.Thread(target=flipper); t.start()
        ok = errors = wrong = 0
        while time.monotonic() < stop:
            try:
                y = m(x, lengths=lengths)[0]
            except ValueError:
                errors += 1
                continue
            if np.array_equal(y, want): ok += 1
            else: wrong += 1   # lengths that were valid but different at the copy
        t.join()
        print("ok", ok, "errors", errors, "wrong", wrong)
    """)
    assert rc == 0, err[-3000:]
    assert "errors" in out, out


# ----------------------------------------------------------------- private constructor

@pytest.mark.parametrize("weights", [
    [np.zeros(1, np.float32)] * 4,
    [np.zeros((16384, 4096), np.float32)[:1]] * 4,
    [np.zeros((16384, 4096), np.float32)] * 2 + [np.zeros(1, np.float32)] * 2,
])
def test_private_core_constructor_checks_every_weight_shape(weights):
    """Four 1-element arrays for a 4096-wide model used to segfault."""
    rc, out, err = run_child(f"""
        import numpy as np
        from lstm_infer import _core
        w = {[(a.shape, ) for a in weights]!r}
        arrays = [np.zeros(s, np.float32) for (s,) in w]
        try:
            _core.Core(_core.CELL_LSTM, 4096, 4096, 1, True, False, 0, arrays)
        except ValueError as e:
            print("refused:", e)
    """)
    assert rc == 0, err[-3000:]
    assert "refused: weight array" in out, out


def test_private_core_constructor_refuses_bad_kinds_and_configs():
    w = [np.zeros((12, 4), np.float32), np.zeros((12, 3), np.float32)]
    with pytest.raises(ValueError):
        _core.Core(99, 4, 3, 1, False, False, 0, w)
    with pytest.raises(ValueError):  # a projection is for the LSTM only
        _core.Core(_core.CELL_GRU, 4, 3, 1, False, False, 2, w)
    _core.Core(_core.CELL_GRU, 4, 4, 1, False, False, 0,
               [np.zeros((12, 4), np.float32), np.zeros((12, 4), np.float32)])


# ----------------------------------------------------------------- scratch memory

def test_scratch_grows_with_valid_steps_not_with_padding():
    """One 4,000-step sequence and 499 one-step ones: the scratch is sized by the
    4,499 valid steps, not by 4,000 x 500 (which needed ~2.6 GB and failed
    under a 2 GiB address-space limit)."""
    rc, out, err = run_child("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        import numpy as np, lstm_infer as li
        li.set_num_threads(1)
        m = li.LSTM(8, 64)
        x = np.zeros((4000, 500, 8), np.float32)
        lengths = np.ones(500, np.int64); lengths[0] = 4000
        y, (h, c) = m(x, lengths=lengths)
        print("ok", y.shape)
    """)
    assert rc == 0, err[-3000:]
    assert "ok (4000, 500, 64)" in out


def test_kept_scratch_is_released_by_small_calls_and_release_memory():
    rc, out, err = run_child("""
        import numpy as np, lstm_infer as li
        def rss_mb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        li.set_num_threads(1)
        m = li.LSTM(64, 256, num_layers=2)
        small = np.zeros((2, 1, 64), np.float32)
        big = np.zeros((400, 256, 64), np.float32)
        m(small); base = rss_mb()
        m(big); del_ = None
        after_big = rss_mb()
        for _ in range(20): m(small)
        after_small = rss_mb()
        m(big); m.release_memory(); released = rss_mb()
        print(base, after_big, after_small, released)
    """)
    assert rc == 0, err[-3000:]
    base, after_big, after_small, released = map(float, out.split())
    assert after_big - base > 150, out  # the big call's scratch (two layers' outputs, ~210 MB) is kept ...
    assert after_small - base < 120, out  # ... until a much smaller call frees it
    assert released - base < 120, out


# ----------------------------------------------------------------- Ctrl-C

@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_interrupts_a_long_call_and_leaves_the_model_usable(threads):
    rc, out, err = run_child(f"""
        import os, signal, threading, time, numpy as np, lstm_infer as li
        li.set_num_threads({threads})
        m = li.LSTM(256, 256, num_layers=2, bidirectional=True)
        x = np.random.default_rng(0).standard_normal((600, 128, 256)).astype(np.float32)
        want = m(x[:3, :2])[0]
        t0 = time.perf_counter(); m(x[:60]); tenth = time.perf_counter() - t0
        for delay in (0.05, 0.4):
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
            t0 = time.perf_counter()
            try:
                m(x)
                print("not interrupted")
            except KeyboardInterrupt:
                print("interrupted after %.3f s of a %.1f s call" % (time.perf_counter() - t0, 10 * tenth))
            assert np.array_equal(m(x[:3, :2])[0], want)
        print("usable")
    """, timeout=300)
    assert rc == 0, err[-3000:]
    assert out.count("interrupted after") == 2 and "usable" in out, out
    for line in out.splitlines():
        if line.startswith("interrupted after"):
            assert float(line.split()[2]) < 1.0, out


@pytest.mark.parametrize("threads", [2, 3])
def test_a_polled_call_whose_panels_split_unevenly_equals_each_sequence_alone(threads):
    """A main-thread call polls for Ctrl-C, which runs a big input projection in chunks;
    with 17 column panels over 2 or 3 threads the threads once chose different chunks,
    packing rows over each other's (outputs off by up to 0.65, or a hang)."""
    rng = np.random.default_rng(3)
    m = li.LSTM(100, 272)
    lengths = rng.integers(40, 131, 24)
    x = rng.standard_normal((130, 24, 100)).astype(np.float32)
    li.set_num_threads(threads)
    try:
        y, (h, c) = m(x, lengths=lengths)
    finally:
        li.set_num_threads(1)
    for b in range(24):
        n = lengths[b]
        yb, (hb, cb) = m(x[:n, b:b + 1])
        np.testing.assert_array_equal(y[:n, b], yb[:, 0])
        np.testing.assert_array_equal(h[:, b], hb[:, 0])


# ----------------------------------------------------------------- messages

def test_from_state_dict_given_a_module_says_to_call_state_dict():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"state_dict\(\)"):
        li.LSTM.from_state_dict(torch.nn.LSTM(3, 4))
    with pytest.raises(TypeError, match=r"state_dict\(\)"):
        li.LSTM(3, 4).load_state_dict(torch.nn.LSTM(3, 4))


def test_batch_first_input_to_a_time_first_model_gets_a_hint():
    m = li.LSTM(3, 4)
    x = np.zeros((5, 9, 3), np.float32)  # (B, T, I) given to a (T, B, I) model
    with pytest.raises(ValueError, match="batch_first=True"):
        m(x, lengths=[9, 2, 3, 4, 5])


def test_from_state_dict_of_another_kind_names_the_class_to_use():
    sd = li.GRU(3, 4).state_dict()
    with pytest.raises(ValueError, match="GRU"):
        li.LSTM.from_state_dict(sd)
