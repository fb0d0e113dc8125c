"""One model called from 8 Python threads at once, each with its own ragged
batches: results bit-identical to serial calls, also while another thread
keeps changing li.set_num_threads. Sizes are big enough for the C pool's
worker threads to be used (and for calls that find the pool busy to run on
their own thread instead)."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import lstm_infer as li
from reference import random_state_dict

CFG = dict(input_size=40, hidden_size=128, num_layers=1, bias=True, bidirectional=True)
N_THREADS = 8
CALLS_PER_THREAD = 4
T, MAX_B = 50, 16


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(7)
    m = li.LSTM(**CFG)
    m.load_state_dict(random_state_dict(rng, **CFG))
    jobs = []
    for _ in range(N_THREADS * CALLS_PER_THREAD):
        B = int(rng.integers(8, MAX_B + 1))
        x = rng.uniform(-1, 1, (T, B, CFG["input_size"])).astype(np.float32)
        lengths = rng.integers(0, T + 1, B)
        lengths[0] = T
        hx = None
        if rng.random() < 0.5:
            hx = (rng.uniform(-1, 1, (2, B, 128)).astype(np.float32),
                  rng.uniform(-1, 1, (2, B, 128)).astype(np.float32))
        jobs.append((x, hx, lengths))
    saved = li.get_num_threads()
    li.set_num_threads(2)
    serial = [m(x, hx, lengths) for x, hx, lengths in jobs]
    yield m, jobs, serial
    li.set_num_threads(saved)


def _check_same(results, serial):
    for i, (got, want) in enumerate(zip(results, serial)):
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"job {i} output")
        np.testing.assert_array_equal(got[1][0], want[1][0], err_msg=f"job {i} h_n")
        np.testing.assert_array_equal(got[1][1], want[1][1], err_msg=f"job {i} c_n")


def _run_concurrently(m, jobs):
    start = threading.Barrier(N_THREADS)

    def worker(k):
        start.wait()  # all threads enter the engine together
        return [(i, m(*jobs[i])) for i in range(k, len(jobs), N_THREADS)]

    results = [None] * len(jobs)
    with ThreadPoolExecutor(N_THREADS) as ex:
        for part in ex.map(worker, range(N_THREADS)):
            for i, r in part:
                results[i] = r
    return results


def test_pool_is_used(setup):
    assert li.get_num_threads() == 2


def test_threads_bit_identical_to_serial(setup):
    m, jobs, serial = setup
    _check_same(_run_concurrently(m, jobs), serial)


def _run_while(m, jobs, action):
    """Runs the jobs concurrently while another thread repeats action(); returns the
    results and how many times action ran."""
    stop = threading.Event()
    count = [0]

    def loop():
        while not stop.is_set():
            action()
            count[0] += 1

    t = threading.Thread(target=loop)
    t.start()
    try:
        results = _run_concurrently(m, jobs)
    finally:
        stop.set()
        t.join()
    return results, count[0]


def test_threads_bit_identical_while_num_threads_changes(setup):
    m, jobs, serial = setup
    n = [1]

    def toggle():
        li.set_num_threads(n[0])
        n[0] = 3 - n[0]

    try:
        results, toggles = _run_while(m, jobs, toggle)
    finally:
        li.set_num_threads(2)
    assert toggles > 1
    _check_same(results, serial)


def test_single_thread_pool_matches(setup):
    m, jobs, serial = setup
    li.set_num_threads(1)
    try:
        _check_same([m(*j) for j in jobs[:4]], serial[:4])
    finally:
        li.set_num_threads(2)


def test_threads_bit_identical_while_weights_reload(setup):
    """load_state_dict swaps the core under running calls; each call uses one snapshot."""
    m, jobs, serial = setup
    sd = m.state_dict()
    results, reloads = _run_while(m, jobs, lambda: m.load_state_dict(sd))
    assert reloads > 1
    _check_same(results, serial)

def test_many_models_at_once():
    """Different models in different threads: each equals its own serial result."""
    rng = np.random.default_rng(11)
    models, inputs = [], []
    for k in range(N_THREADS):
        cfg = dict(input_size=int(rng.integers(1, 30)), hidden_size=int(rng.integers(16, 100)),
                   num_layers=int(rng.integers(1, 3)), bidirectional=bool(k % 2))
        m = li.LSTM(**cfg)
        m.load_state_dict(random_state_dict(rng, **cfg))
        x = rng.uniform(-1, 1, (30, 12, cfg["input_size"])).astype(np.float32)
        models.append(m)
        inputs.append((x, None, rng.integers(0, 31, 12)))
    serial = [m(*a) for m, a in zip(models, inputs)]
    start = threading.Barrier(N_THREADS)

    def worker(k):
        start.wait()
        return [models[k](*inputs[k]) for _ in range(3)]

    with ThreadPoolExecutor(N_THREADS) as ex:
        for k, runs in enumerate(ex.map(worker, range(N_THREADS))):
            _check_same(runs, [serial[k]] * 3)


def _two_loads_race(load_a, load_b, read, seconds=1.5, readers=3):
    """Readers call read() while another thread alternates load_a() and load_b();
    returns the readers' results."""
    stop = threading.Event()
    got = []

    def reloader():
        while not stop.is_set():
            load_a()
            load_b()

    def reader():
        while not stop.is_set():
            got.append(read())

    threads = [threading.Thread(target=reloader)] + [threading.Thread(target=reader) for _ in range(readers)]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    return got


def test_a_whole_model_reloaded_meanwhile_gives_one_loads_results():
    """Calls, stream chunks, copies and saves of a Sequential while another thread
    reloads it: each sees every layer from one load (the LSTM of one beside the
    Linear of the other came out ~1 call in 50)."""
    import copy
    from collections import OrderedDict
    rng = np.random.default_rng(0)
    m = li.Sequential(OrderedDict(lstm=li.LSTM(16, 64), last="last", fc=li.Linear(64, 8)))
    sd_a = m.state_dict()
    sd_b = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.5 for k, v in sd_a.items()}
    x = rng.standard_normal((20, 4, 16)).astype(np.float32)
    want = []
    for sd in (sd_a, sd_b):
        m.load_state_dict(sd)
        want.append(m(x))
    got = _two_loads_race(lambda: m.load_state_dict(sd_a), lambda: m.load_state_dict(sd_b), lambda: m(x))
    assert len(got) > 100
    assert all(np.array_equal(y, want[0]) or np.array_equal(y, want[1]) for y in got)
    got = _two_loads_race(lambda: m.load_state_dict(sd_a), lambda: m.load_state_dict(sd_b),
                          lambda: copy.deepcopy(m)(x), seconds=1.0)
    assert all(np.array_equal(y, want[0]) or np.array_equal(y, want[1]) for y in got)


def test_a_storage_switch_meanwhile_gives_one_loads_state_dict():
    """state_dict() and pickles of a module switched between float32 and int8 by another
    thread: one load's arrays with that load's scales (int8 codes without their scales
    came out before, off by up to 127)."""
    import pickle
    m = li.GRU(8, 32)
    sd = m.state_dict()
    want = [li.GRU.from_state_dict(sd, weights=w).state_dict() for w in ("float32", "int8")]
    got = _two_loads_race(lambda: m.load_state_dict(sd, weights="float32"),
                          lambda: m.load_state_dict(sd, weights="int8"), m.state_dict)
    assert len(got) > 100
    for g in got:
        assert any(all(np.array_equal(g[k], w[k]) for k in w) for w in want)
    got = _two_loads_race(lambda: m.load_state_dict(sd, weights="float32"),
                          lambda: m.load_state_dict(sd, weights="int8"),
                          lambda: pickle.loads(pickle.dumps(m)).weights, seconds=1.0)
    assert set(got) <= {"float32", "int8"} and got


def test_a_linear_refuses_in_place_edits_it_would_not_see():
    """Its C layer holds a copy of the weights: an in-place edit raises instead of
    being silently ignored; assigning a new array or load_state_dict is seen."""
    lin = li.Linear(3, 2)
    x = np.ones((1, 3), np.float32)
    lin(x)
    with pytest.raises(ValueError, match="read-only"):
        lin.weight[...] = 0.0
    lin.weight = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(lin(x), lin.bias[None, :])
    lin.load_state_dict({"weight": np.ones((2, 3), np.float32), "bias": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(lin(x), [[3.0, 3.0]])


def test_a_child_forked_during_a_whole_model_call_can_reload_it():
    """The thread inside the call does not exist in the child, so its shared hold on
    the model's weights must not make the child's load_state_dict wait forever."""
    import textwrap
    from stream_helpers import assert_forked_child_passes
    code = textwrap.dedent("""
        import os, threading, numpy as np, lstm_infer as li
        li.set_num_threads(1)
        m = li.Sequential(li.LSTM(64, 256, num_layers=2), li.Readout("last"), li.Linear(256, 3))
        x = np.random.default_rng(0).standard_normal((400, 16, 64), dtype=np.float32)
        sd = m.state_dict()
        want = m(x[:3, :2])
        t = threading.Thread(target=m, args=(x,))
        t.start()
        while t.is_alive() and not m._consistent._readers:  # until the call holds the weights
            pass
        if not t.is_alive():
            print("missed"); raise SystemExit(0)
        pid = os.fork()
        if pid == 0:
            import signal
            signal.alarm(20)  # a hang ends the child with SIGALRM, not the test run
            m.load_state_dict(sd)
            os._exit(0 if np.array_equal(m(x[:3, :2]), want) else 3)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        t.join()
        print("child", status)
    """)
    assert_forked_child_passes(code)


def test_a_signal_handler_reloading_a_whole_model_mid_call_raises_not_hangs():
    """A signal handler runs in the main thread inside a long call (the call polls for
    signals) or between its layers. Its load_state_dict of the same model would wait for
    the call that it interrupts: it raises RuntimeError instead, and so does the call."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import os, signal, threading, time, numpy as np, lstm_infer as li
        li.set_num_threads(1)
        m = li.Sequential(li.LSTM(64, 256, num_layers=2), li.Readout("last"), li.Linear(256, 3))
        sd = m.state_dict()
        x = np.random.default_rng(0).standard_normal((2000, 16, 64), dtype=np.float32)
        seen = []
        def handler(signum, frame):
            try:
                m.load_state_dict(sd)
                seen.append("loaded")
            except RuntimeError as e:
                seen.append(str(e))
                raise
        signal.signal(signal.SIGUSR1, handler)
        def kick():
            while not m._consistent._readers:
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGUSR1)
        threading.Thread(target=kick, daemon=True).start()
        try:
            m(x)
            print("no error", seen)
        except RuntimeError as e:
            print("raised:", e)
        m.load_state_dict(sd)  # and afterwards the model is free again
        print("after", m(x[:2, :2]).shape)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "raised: load_state_dict was called while this same thread" in r.stdout, r.stdout
    assert "after (2, 3)" in r.stdout


def test_consistency_holds_taken_again_by_the_same_thread():
    """The hold behind a whole model's calls and reloads, entered again by the thread
    that holds it (as a signal handler does): no wait for itself. Run in a thread of
    its own so that a regression fails here instead of hanging the run."""
    errors = []

    def body():
        try:
            _consistency_reentry()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "a hold taken again by its own thread waited for itself"
    if errors:
        raise errors[0]


def _consistency_reentry():
    from lstm_infer.sequential import _Consistency
    c = _Consistency()
    with c.reading():
        with pytest.raises(RuntimeError, match="would wait for itself"):
            with c.writing():
                pass
        # a reload waiting in another thread for this hold: a nested hold goes ahead
        started, done = threading.Event(), threading.Event()

        def reload():
            started.set()
            with c.writing():
                done.set()
        t = threading.Thread(target=reload)
        t.start()
        started.wait()
        while c._writer is None:
            pass
        with c.reading():  # would deadlock if it waited behind the reload
            assert not done.is_set()
        assert not done.is_set()
    t.join(10)
    assert done.is_set()
    with c.writing():
        with pytest.raises(RuntimeError, match="being reloaded"):
            with c.reading():
                pass
        with pytest.raises(RuntimeError, match="would wait for itself"):
            with c.writing():
                pass
    assert not c._readers and c._writer is None


def _reentry_at_every_line(action, with_writer):
    """For each line a thread runs inside _Consistency while it leaves a shared hold
    (with a reload waiting in another thread when with_writer), re-enter there as a
    signal handler would and run ``action(c)``: it must finish or raise RuntimeError,
    and the reload must then finish. Returns how many lines were tried."""
    import sys
    from lstm_infer import sequential
    tried = 0
    for target in range(200):
        c = sequential._Consistency()
        state = {"line": 0, "fired": False, "outcome": None}

        def tracer(frame, event, arg):
            if frame.f_code.co_filename != sequential.__file__ or frame.f_code.co_name not in ("reading", "writing"):
                return None

            def local(fr, ev, a):
                if ev == "line" and state["armed"] and not state["fired"]:
                    if state["line"] == target:
                        state["fired"] = True
                        try:
                            action(c)
                            state["outcome"] = "ran"
                        except RuntimeError:
                            state["outcome"] = "refused"
                    state["line"] += 1
                return local
            return local

        def scenario():
            state["armed"] = False
            sys.settrace(tracer)
            try:
                writer = None
                with c.reading():
                    if with_writer:
                        def reload():
                            with c.writing():
                                pass
                        writer = threading.Thread(target=reload, daemon=True)
                        writer.start()
                        while c._writer is None:
                            pass
                    state["armed"] = True  # the lines of leaving the hold from here
                state["armed"] = False
            finally:
                sys.settrace(None)
            state["writer"] = writer

        t = threading.Thread(target=scenario, daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), f"re-entry at line {target} of leaving a hold waited for itself"
        if not state["fired"]:
            return tried
        tried += 1
        assert state["outcome"] in ("ran", "refused")
        if state["writer"] is not None:
            state["writer"].join(10)
            assert not state["writer"].is_alive() and not c._readers
    return tried


def test_a_handler_calling_a_whole_model_while_its_call_ends_never_waits_for_itself():
    """The call's hold drops while a reload waits; a handler's call at any line of that
    (the audit's deadlock: between the hold's removal and the wake-up of the reload)."""
    def call(c):
        with c.reading():
            pass
    assert _reentry_at_every_line(call, with_writer=True) > 5
    assert _reentry_at_every_line(call, with_writer=False) > 5


def test_a_handler_reloading_a_whole_model_while_its_call_ends_finishes_or_raises():
    def reload(c):
        with c.writing():
            pass
    assert _reentry_at_every_line(reload, with_writer=False) > 5


def test_a_reload_interrupted_between_layers_still_switches_every_layer():
    """A signal handler's exception (Ctrl-C, or its own call of the model being
    reloaded) between two layers' switches: every layer still switches, then it raises."""
    from lstm_infer.sequential import _switch_all
    done = []
    switches = [lambda i=i: done.append(i) for i in range(4)]

    class Interrupt(BaseException):
        pass

    def interrupting():
        done.append("x")
        raise Interrupt()
    switches.insert(2, interrupting)
    with pytest.raises(Interrupt):
        _switch_all(switches)
    assert done == [0, 1, "x", "x", 2, 3]  # the one that raised ran again (it may have stopped halfway)
    once = []

    def once_interrupting():  # a signal's exception, once: that switch runs again, then the rest
        once.append("y")
        if once.count("y") == 1:
            raise Interrupt()
    done.clear()
    with pytest.raises(Interrupt):
        _switch_all([switches[0], once_interrupting, switches[1]])
    assert done == [0, 1] and once == ["y", "y"]
