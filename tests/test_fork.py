"""The thread pool across fork(), and the pool's locks against the GIL.

Servers and multiprocessing fork after a model has run. A forked child has
only the forking thread: it must start with a fresh pool of the configured
size (no inherited workers, no lock held by a call that another parent thread
was running), really run on that many threads, and give the parent's results
bit for bit. Every child runs under a timeout, so a hang fails instead of
hanging CI.

Thread use is read from /proc/self/task: a call on 2 threads makes a thread
other than the caller's burn CPU time during the call.
"""
import hashlib
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback

import numpy as np
import pytest

import lstm_infer as li
from reference import random_state_dict

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="fork and /proc/self/task: Linux only")

# big enough for the engine to use 2 threads: ~6.7 GFLOP per call
CFG = dict(input_size=256, hidden_size=256, num_layers=2)
T, B = 50, 64
CHILD_TIMEOUT = 60.0  # s; a working child needs ~1-2 s
CALLS = 3             # per thread-use measurement: ~0.3 s of work per thread


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(5)
    m = li.LSTM(**CFG)
    m.load_state_dict(random_state_dict(rng, **CFG))
    x = rng.uniform(-1, 1, (T, B, CFG["input_size"])).astype(np.float32)
    saved = li.get_num_threads()
    li.set_num_threads(2)
    want = _digest(m(x))  # the parent has used its pool before any fork
    yield m, x, want
    li.set_num_threads(saved)


def _digest(result):
    out, (h, c) = result
    d = hashlib.sha256()
    for a in (out, h, c):
        d.update(np.ascontiguousarray(a).tobytes())
    return d.hexdigest()


def _cpu_ticks():
    """{thread id: utime + stime in clock ticks} for this process's threads."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks[int(tid)] = int(fields[11]) + int(fields[12])
    return ticks


def _calls_with_thread_use(m, x, calls=CALLS, most=4 * CALLS):
    """Runs the model `calls` times, and more (up to `most`) until threads other than
    the caller have done a tenth of its work: a call does not wait long for a worker,
    and on this busy 2-CPU machine a woken worker sometimes comes too late for several
    calls in a row. Returns the digests, the CPU ticks of the calling thread and of
    all others during the calls, and how many threads appeared."""
    me = threading.get_native_id()
    before = _cpu_ticks()
    digests = []
    while len(digests) < most:
        digests.append(_digest(m(x)))
        if len(digests) >= calls:
            after = _cpu_ticks()
            others = sum(t - before.get(tid, 0) for tid, t in after.items() if tid != me)
            own = after[me] - before[me]
            if li.get_num_threads() == 1 or others >= 0.1 * own:
                break
    return dict(digests=digests, own=own, others=others,
                new_threads=len(set(after) - set(before)), threads=li.get_num_threads())


def _check_thread_use(r, nthreads):
    """The calls ran on nthreads threads: workers appeared and did a share of the work."""
    assert r["threads"] == nthreads
    if nthreads > 1:
        assert r["others"] >= 0.1 * r["own"], (
            f"other threads used {r['others']} ticks while the caller used {r['own']}: "
            f"the calls ran on one thread although get_num_threads() = {r['threads']}")


def _in_child(fn, timeout=CHILD_TIMEOUT):
    """Runs fn() in a forked child; returns its JSON-able result. Fails on an exception
    or a crash in the child, or if the child is not done within timeout seconds."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(r)
            signal.alarm(int(timeout) + 5)  # the parent kills first; this is a backstop
            os.write(w, json.dumps(fn()).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"forked child still running after {timeout} s: hung")
            time.sleep(0.01)
        with os.fdopen(r, "rb") as f:
            r = None
            data = f.read()
    finally:
        if r is not None:
            os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: status {status}"
    return json.loads(data)


def test_fork_from_idle_parent(setup):
    m, x, want = setup

    def child():
        before = len(os.listdir("/proc/self/task"))
        r = _calls_with_thread_use(m, x)
        r["tasks_before"] = before
        return r

    r = _in_child(child)
    assert r["digests"] == [want] * len(r["digests"])
    _check_thread_use(r, 2)
    assert r["new_threads"] == 1, "the child's pool should have started its one worker"
    assert _digest(m(x)) == want  # the parent keeps working


def test_fork_child_changes_thread_count(setup):
    m, x, want = setup

    def child():
        runs = []
        for n in (3, 1, 2):
            li.set_num_threads(n)
            runs.append(_calls_with_thread_use(m, x, calls=2 if n != 1 else 1))
        return runs

    runs = _in_child(child)
    for n, r in zip((3, 1, 2), runs):
        assert r["digests"] == [want] * len(r["digests"]), f"{n} threads"
        assert r["threads"] == n
    _check_thread_use(runs[2], 2)
    assert li.get_num_threads() == 2  # the child's settings stay in the child
    assert _digest(m(x)) == want


def test_fork_while_another_thread_is_in_a_call(setup):
    """A child forked while another parent thread holds the pool must not inherit the
    held pool: it can resize, calls on 2 threads, and the parent's call finishes."""
    m, x, want = setup
    stop = threading.Event()
    started = threading.Event()
    results = []

    def caller():
        while not stop.is_set():
            started.set()
            results.append(_digest(m(x)))

    def child():
        li.set_num_threads(2)  # hung forever before: the held pool came along
        r = _calls_with_thread_use(m, x)
        li.set_num_threads(1)
        r["digest1"] = _digest(m(x))
        return r

    t = threading.Thread(target=caller)
    t.start()
    try:
        children = []
        for _ in range(3):
            started.wait()
            time.sleep(0.05)  # a call takes ~0.1-0.2 s and the loop is almost all call
            children.append(_in_child(child))
    finally:
        stop.set()
        t.join()
    for r in children:
        assert r["digests"] == [want] * len(r["digests"])
        assert r["digest1"] == want
        _check_thread_use(r, 2)
    assert results and all(d == want for d in results)
    r = _calls_with_thread_use(m, x)  # the parent still runs on its 2 threads
    assert r["digests"] == [want] * len(r["digests"])
    _check_thread_use(r, 2)


def test_fork_while_resizing(setup):
    """Forks while another thread resizes the pool: the child gets one of the sizes and a
    working pool of that size; prepare never waits for a call."""
    m, x, want = setup
    stop = threading.Event()
    count = [0]

    def resizer():
        n = 1
        while not stop.is_set():
            li.set_num_threads(n)
            n = 3 - n
            count[0] += 1

    def child():
        got = li.get_num_threads()
        d = _digest(m(x))
        return dict(got=got, digest=d)

    t = threading.Thread(target=resizer)
    t.start()
    try:
        kids = []
        for _ in range(5):
            time.sleep(0.01)
            kids.append(_in_child(child))
    finally:
        stop.set()
        t.join()
        li.set_num_threads(2)
    assert count[0] > 1
    for k in kids:
        assert k["got"] in (1, 2) and k["digest"] == want
    assert _digest(m(x)) == want


def test_grandchild(setup):
    m, x, want = setup

    def grandchild():
        return _calls_with_thread_use(m, x, calls=2)

    def child():
        first = _digest(m(x))
        return dict(first=first, grandchild=_in_child(grandchild))

    r = _in_child(child)
    assert r["first"] == want
    assert r["grandchild"]["digests"] == [want] * len(r["grandchild"]["digests"])
    _check_thread_use(r["grandchild"], 2)


# ------------------------------------------------------------------ multiprocessing

def _mp_task(args):
    m, x, nthreads = args
    if nthreads:
        li.set_num_threads(nthreads)
    return _calls_with_thread_use(m, x, calls=2)


def _warm_pool_on_import():
    """Preloaded into the forkserver (see test_multiprocessing): a server that ran a
    model before it forks its workers."""
    rng = np.random.default_rng(0)
    m = li.LSTM(**CFG)
    m.load_state_dict(random_state_dict(rng, **CFG))
    li.set_num_threads(2)
    m(rng.uniform(-1, 1, (T, B, CFG["input_size"])).astype(np.float32))


if os.environ.get("LSTM_INFER_TEST_WARM_POOL") == "1" and __name__ != "__main__":
    _warm_pool_on_import()


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing(setup, method, monkeypatch):
    m, x, want = setup
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    ctx = mp.get_context(method)
    if method == "forkserver":
        # the server imports this module, which then runs a model before forking workers
        # (the server ignores the parent's sys.path when it preloads: PYTHONPATH it is)
        here = os.path.dirname(os.path.abspath(__file__))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
            [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        monkeypatch.setenv("LSTM_INFER_TEST_WARM_POOL", "1")
        ctx.set_forkserver_preload([__name__])
    tasks = [(m, x, 0), (m, x, 2), (m, x, 0), (m, x, 2)]
    with ctx.Pool(2) as p:
        res = p.map_async(_mp_task, tasks, chunksize=1)
        runs = res.get(timeout=CHILD_TIMEOUT)
    for r in runs:
        assert r["digests"] == [want] * len(r["digests"])
    # both workers of the pool ran at once on this 2-CPU machine: judge all calls together
    total = dict(threads=2, own=sum(r["own"] for r in runs), others=sum(r["others"] for r in runs))
    assert all(r["threads"] == 2 for r in runs)
    _check_thread_use(total, 2)
    assert _digest(m(x)) == want  # the parent keeps working


# ------------------------------------------------------------------ GIL

def test_get_num_threads_never_blocks_python():
    """get_num_threads holds the GIL: it must not wait for the pool's locks while
    set_num_threads waits for a long call, or every Python thread stops."""
    rng = np.random.default_rng(9)
    cfg = dict(input_size=256, hidden_size=512, num_layers=2)
    m = li.LSTM(**cfg)
    m.load_state_dict(random_state_dict(rng, **cfg))
    x = rng.uniform(-1, 1, (100, 64, 256)).astype(np.float32)  # ~0.4-0.8 s per call
    saved = li.get_num_threads()
    li.set_num_threads(2)
    stop = threading.Event()
    gaps = [0.0]
    counts = dict(calls=0, sets=0, gets=0)

    def heartbeat():
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now

    def caller():
        while not stop.is_set():
            m(x)
            counts["calls"] += 1

    def setter():
        while not stop.is_set():
            li.set_num_threads(2)
            counts["sets"] += 1

    def getter():
        while not stop.is_set():
            assert li.get_num_threads() == 2
            counts["gets"] += 1
            time.sleep(0.0005)

    threads = [threading.Thread(target=f) for f in (caller, setter, getter)]
    hb = threading.Thread(target=heartbeat)
    hb.start()
    for t in threads:
        t.start()
    try:
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads + [hb]:
            t.join()
        li.set_num_threads(saved)
    assert gaps[0] < 0.2, f"Python stood still for {gaps[0]:.3f} s ({counts})"
    assert counts["calls"] >= 2 and counts["sets"] >= 1 and counts["gets"] > 100, counts
