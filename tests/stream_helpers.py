"""What the stream tests share (tests/test_stream.py for the layers' streams,
tests/test_stream_sequential.py for whole models): the kernel sets, hypothesis
settings, a one-thread fixture, and the two thread scenarios every kind of
stream must pass."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as hst

import lstm_infer as li
from isa_helpers import available_isas

ISAS = available_isas()


def hypothesis_settings(max_examples):
    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def one_thread():
    """Each test on one C thread (bit-identical comparisons), the kernel set back
    to auto after it. Autouse in the modules that import it."""
    n = li.get_num_threads()
    li.set_num_threads(1)
    yield
    li.set_num_threads(n)
    li.set_isa("auto")


def stream_random_split(st, x, data):
    """x (T, ...) through st in chunks cut at places hypothesis draws (empty
    chunks too; a chunk of one step is sometimes a one-step call); the outputs
    of every call, concatenated."""
    T = len(x)
    bounds = [0] + sorted(data.draw(hst.lists(hst.integers(0, T), max_size=6))) + [T]
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a == 1 and data.draw(hst.booleans()):
            parts.append(st(x[a])[None])  # a one-step call
        else:
            parts.append(st(x[a:b]))      # a chunk (possibly empty)
    return np.concatenate(parts)


def assert_concurrent_use_detected(st, x, want):
    """Runs st(x), a chunk long enough to be seen running, in another thread
    from a zero state, while this thread tries the stream: reads only until one
    is refused (the call then holds the stream, so nothing of ours can come
    before it), then steps, resets and state changes too. Every refused try
    raises RuntimeError naming the cause; the long call gives `want`, the
    model's output for x from a zero state."""
    st.reset()
    zero = st.state
    errors, results = [], []
    started = threading.Event()

    def long_call():
        started.set()
        while not results:
            try:  # our read may hold the stream as the call starts: then start again
                results.append(st(x))
            except RuntimeError:
                pass

    t = threading.Thread(target=long_call)
    t.start()
    started.wait()
    while t.is_alive():
        ops = (lambda: st(x[0]), lambda: st.state, lambda: st.reset(0), st.reset,
               lambda: setattr(st, "state", zero)) if errors else (lambda: st.state,)
        for op in ops:
            try:
                op()
            except RuntimeError as e:
                errors.append(str(e))
    t.join()
    assert errors, "the long call ended before any concurrent use was tried"
    assert all("in use by another thread" in e for e in errors)
    np.testing.assert_array_equal(results[0], want)


def stream_each_in_a_thread(model, seqs):
    """seqs[i] streamed one step (item of its first axis) at a time through its
    own model.stream() in thread i, all threads at once; each stream's outputs
    stacked."""
    got = [None] * len(seqs)

    def run(i):
        st = model.stream()
        got[i] = np.stack([st(step) for step in seqs[i]])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def assert_forked_child_passes(code):
    """Runs a script that forks while another of its threads is in a stream call and
    prints "child <exit status>": that status must be 0 (the child's check held)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["child", "0"], res.stdout
