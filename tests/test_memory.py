"""Resident memory stays flat: 100,000 small forward calls and 1,000 model
create/load/free cycles, RSS (from /proc/self/statm) measured after a
warm-up and at the end. The leak checker for the C core itself is the
LeakSanitizer run of tests/c (make asan, driven by test_c_core.py)."""
import gc
import os

import numpy as np
import pytest

import lstm_infer as li
from reference import random_state_dict

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="needs /proc/self/statm (Linux)")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
LIMIT_MB = 4.0


def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


def test_many_small_calls_do_not_grow_rss():
    rng = np.random.default_rng(3)
    cfg = dict(input_size=8, hidden_size=16, bidirectional=True)
    m = li.LSTM(**cfg)
    m.load_state_dict(random_state_dict(rng, **cfg))
    x = rng.uniform(-1, 1, (3, 2, 8)).astype(np.float32)
    hx = (np.zeros((2, 2, 16), np.float32), np.ones((2, 2, 16), np.float32))
    lens = np.array([3, 1])
    calls = 0
    for _ in range(5000):  # warm-up: allocator pools, caches
        m(x, hx, lens)
        calls += 1
    gc.collect()
    before = rss_mb()
    for i in range(95000):
        if i % 3 == 0:
            m(x)
        elif i % 3 == 1:
            m(x, hx, lens)
        else:
            m(x[:, 0])  # unbatched
        calls += 1
    gc.collect()
    growth = rss_mb() - before
    print(f"{calls} calls: RSS growth {growth:.2f} MB")
    assert calls == 100_000
    assert growth < LIMIT_MB, f"RSS grew by {growth:.2f} MB over {calls} calls"


def test_create_load_free_cycles_do_not_grow_rss():
    rng = np.random.default_rng(4)
    cfg = dict(input_size=8, hidden_size=16, num_layers=2, proj_size=4)
    sd = random_state_dict(rng, **cfg)
    x = rng.uniform(-1, 1, (3, 2, 8)).astype(np.float32)

    def cycle():
        m = li.LSTM(**cfg)
        m.load_state_dict(sd)
        m(x)
        m2 = li.LSTM.from_state_dict(sd)
        del m, m2

    for _ in range(100):
        cycle()
    gc.collect()
    before = rss_mb()
    for _ in range(1000):
        cycle()
    gc.collect()
    growth = rss_mb() - before
    print(f"1000 create/load/free cycles: RSS growth {growth:.2f} MB")
    assert growth < LIMIT_MB, f"RSS grew by {growth:.2f} MB over 1000 cycles"


def test_loading_holds_one_model_not_two(tmp_path):
    """li.load and from_state_dict build the C core once, from the file's weights (a
    module made first with random weights and a core of its own had a load peak at ~6x
    the file; now ~4x: the bytes read, the arrays, our copy and the core)."""
    import subprocess
    import sys
    path = tmp_path / "m.lstm"
    li.LSTM(1024, 1024, num_layers=4).save(str(path))
    size_mb = os.path.getsize(path) / 2**20
    # VmHWM, the peak of this process's own memory (ru_maxrss may carry its parent's peak)
    code = ("import sys, lstm_infer as li\n"
            "def kb(field):\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(field))\n"
            "base = kb('VmHWM:')\n"
            "m = li.load(sys.argv[1])\n"
            "print((kb('VmHWM:') - base) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    peak = float(out.stdout)
    print(f"file {size_mb:.0f} MB, load peak {peak:.0f} MB ({peak / size_mb:.1f}x)")
    assert peak < 5 * size_mb, f"loading a {size_mb:.0f} MB file peaked at {peak:.0f} MB"
