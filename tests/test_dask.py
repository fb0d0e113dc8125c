"""lstm_infer.dask on a LocalCluster of 2 worker processes x 1 thread: the same outputs as
the one-machine run, the model loaded once per worker, a killed worker loses nothing."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
dask_bag = pytest.importorskip("dask.bag")

import lstm_infer as li  # noqa: E402
from lstm_infer import runner  # noqa: E402
from lstm_infer.dask import predict_bag, predict_files  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client():
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + old if old else "")  # workers import this checkout
    try:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=40)
        c = distributed.Client(cluster)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    assert set(c.run(lambda: __import__("lstm_infer").__file__).values()) == \
        {os.path.join(ROOT, "lstm_infer", "__init__.py")}
    yield c
    c.close()
    cluster.close()


def make_model(path, I=8, H=16, seed=0, **kw):
    rng = np.random.default_rng(seed)
    m = li.LSTM(I, H, **kw)
    m.load_state_dict({k: (rng.standard_normal(v.shape) * 0.3).astype(np.float32)
                       for k, v in m.state_dict().items()})
    m.save(path)
    return m


def write_dataset(d, files, per_file, I=8, lo=1, hi=60, seed=1):
    """files of each format: .npy, ragged .npz, .jsonl; returns (paths, sequences per path)."""
    rng = np.random.default_rng(seed)
    paths, seqs = [], {}
    d.mkdir(exist_ok=True)
    for f in range(files):
        ss = [rng.standard_normal((int(t), I)).astype(np.float32) for t in rng.integers(lo, hi, per_file)]
        kind = ("npz", "jsonl", "npy")[f % 3]
        p = str(d / f"f{f:02d}.{kind}")
        if kind == "npz":
            np.savez(p, data=np.concatenate(ss), lengths=[len(s) for s in ss])
        elif kind == "jsonl":
            with open(p, "w") as fh:
                fh.writelines(json.dumps(s.tolist()) + "\n" for s in ss)
        else:
            ss = ss[:1]
            np.save(p, ss[0])
        paths.append(p)
        seqs[p] = ss
    return paths, seqs


def reference(model_path, paths, out_dir):
    """What the one-machine run writes for each file alone."""
    os.makedirs(out_dir, exist_ok=True)
    for p in paths:
        name = runner.output_name_for(p)
        runner.run(model_path, [p], out_dir if name.endswith(".npy") else os.path.join(out_dir, name))


def same_files(a, b):
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for n in names:
        with open(os.path.join(a, n), "rb") as fa, open(os.path.join(b, n), "rb") as fb:
            assert fa.read() == fb.read(), n


def test_predict_files_equals_one_machine_run(client, tmp_path):
    m = make_model(tmp_path / "m.lstm", num_layers=2, bidirectional=True)
    paths, seqs = write_dataset(tmp_path / "in", 9, 40)
    loads_before = client.run(lambda: __import__("lstm_infer.dask").dask._LOADS)
    out = predict_files(client, tmp_path / "m.lstm", paths, tmp_path / "out", batch_tokens=500)
    assert out == [str(tmp_path / "out" / runner.output_name_for(p)) for p in paths]
    reference(tmp_path / "m.lstm", paths, tmp_path / "ref")
    same_files(tmp_path / "out", tmp_path / "ref")  # byte for byte
    z = np.load(tmp_path / "out" / "f00.npz")
    s = seqs[paths[0]]
    np.testing.assert_array_equal(z["data"][: len(s[0])], m(s[0])[0])
    # idempotent: a second run rewrites the same bytes
    predict_files(client, tmp_path / "m.lstm", paths, tmp_path / "out", batch_tokens=500)
    same_files(tmp_path / "out", tmp_path / "ref")
    # the model was loaded once per worker (not per task), engine threads = nthreads
    loads = client.run(lambda: __import__("lstm_infer.dask").dask._LOADS)
    assert all(loads[w] - loads_before[w] <= 1 for w in loads)
    assert set(client.run(li.get_num_threads).values()) == {1}


@pytest.mark.parametrize("ship", [True, False])
def test_predict_bag_in_input_order(client, tmp_path, ship):
    m = make_model(tmp_path / "m.lstm", seed=4, proj_size=5)
    rng = np.random.default_rng(7)
    seqs = [rng.standard_normal((int(t), 8)).astype(np.float32) for t in rng.integers(1, 40, 101)]
    bag = dask_bag.from_sequence(seqs, npartitions=7)
    got = predict_bag(client, tmp_path / "m.lstm", bag, batch_tokens=200, ship_model=ship)
    want = li.predict(m, seqs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("bad", [[7], [2, 7], [9]])
def test_predict_bag_names_a_bad_record_by_its_place_in_the_bag(client, tmp_path, bad):
    """Not by its place in its partition (10 records in 3 partitions: 7 is the second of the last)."""
    make_model(tmp_path / "m.lstm")
    seqs = [np.ones((3, 8), np.float32)] * 10
    for i in bad:
        seqs[i] = np.ones((3, 5), np.float32)
    with pytest.raises(runner.BadRecordError, match=rf"^sequence {bad[0]}: wrong shape \(3, 5\)") as info:
        predict_bag(client, tmp_path / "m.lstm", dask_bag.from_sequence(seqs, npartitions=3))
    assert info.value.index == bad[0]


def test_shipped_model_needs_no_shared_path(client, tmp_path):
    """The workers never open the model's path when it is shipped: rename it away on them."""
    m = make_model(tmp_path / "m.lstm", seed=5)
    seqs = [np.ones((3, 8), np.float32)]
    moved = str(tmp_path / "elsewhere.lstm")
    from lstm_infer import dask as ld
    real = ld._Model.__init__

    def init(self, client, model_path, ship):
        real(self, client, model_path, ship)
        os.rename(self.path, moved)  # after reading on the client, before any task runs

    ld._Model.__init__ = init
    try:
        got = predict_bag(client, tmp_path / "m.lstm", dask_bag.from_sequence(seqs, npartitions=1))
    finally:
        ld._Model.__init__ = real
    np.testing.assert_array_equal(got[0], m(seqs[0])[0])


def test_worker_killed_mid_run_loses_nothing(client, tmp_path):
    make_model(tmp_path / "m.lstm", I=32, H=256, seed=2)
    paths, _ = write_dataset(tmp_path / "in", 12, 60, I=32, lo=100, hi=140)
    reference(tmp_path / "m.lstm", paths, tmp_path / "ref")
    pids = client.run(os.getpid)
    out = tmp_path / "out"
    box = {}

    def job():
        try:
            box["out"] = predict_files(client, tmp_path / "m.lstm", paths, out, batch_tokens=4096)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=job)
    t.start()
    deadline = time.time() + 30
    while not (out.is_dir() and any(not n.startswith(".") for n in os.listdir(out))):
        assert time.time() < deadline
        time.sleep(0.01)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    at_kill = len([n for n in os.listdir(out) if not n.startswith(".")])
    assert at_kill < len(paths)  # killed mid-run
    t.join(60)
    assert not t.is_alive() and "error" not in box, box.get("error")
    assert len(box["out"]) == len(paths)
    # (a SIGKILLed task cannot remove its hidden temp file: only names starting with "." may remain)
    done = sorted(n for n in os.listdir(out) if not n.startswith("."))
    assert done == sorted(os.listdir(tmp_path / "ref"))
    for n in done:
        assert (out / n).read_bytes() == (tmp_path / "ref" / n).read_bytes(), n
    # the killed worker was replaced by its nanny
    client.wait_for_workers(2, timeout=30)
    assert victim not in client.run(os.getpid).values()
