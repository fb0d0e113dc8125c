"""li.predict / li.predict_iter, `lstm-infer run` and lstm_infer.dask on whole models
(issue 13 in issue 15's runner): each output is the model's output for that sequence alone
(one vector per sequence for readouts other than steps), checked against direct calls,
torch's own forward of the bundled classifier and its committed reference outputs."""

import glob
import json
import os
import sys

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import runner
from lstm_infer.cli import main

# pipelines over part of a state dict are made on purpose here (see test_pipeline_notes)
pytestmark = pytest.mark.filterwarnings("ignore::lstm_infer.pipeline.LeftOutWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFIER = os.path.join(ROOT, "examples", "classifier.pt")
CLASSIFIER_PIPELINE = "embedding > lstm > final > fc > softmax"
VOCAB = 42  # the bundled classifier's


@pytest.fixture(autouse=True)
def one_thread():
    old = li.get_num_threads()
    li.set_num_threads(1)
    yield
    li.set_num_threads(old)


def classifier(pipeline=CLASSIFIER_PIPELINE, batch_first=False):
    """The bundled classifier's weights under a pipeline (other readouts and heads too)."""
    return li.Sequential.from_state_dict(CLASSIFIER, pipeline, batch_first=batch_first)


def float_model(pipeline, batch_first=False, seed=0):
    """GRU(5, 7, 2 layers) -> readout -> Linear(7, 3) [-> ...] with random weights."""
    rng = np.random.default_rng(seed)
    sd = {f"gru.{k}": (rng.standard_normal(s) * 0.4).astype(np.float32)
          for k, s in {"weight_ih_l0": (21, 5), "weight_hh_l0": (21, 7), "bias_ih_l0": (21,), "bias_hh_l0": (21,),
                       "weight_ih_l1": (21, 7), "weight_hh_l1": (21, 7), "bias_ih_l1": (21,),
                       "bias_hh_l1": (21,)}.items()}
    sd["head.weight"] = rng.standard_normal((3, 7)).astype(np.float32)
    sd["head.bias"] = rng.standard_normal(3).astype(np.float32)
    return li.Sequential.from_state_dict(sd, pipeline, batch_first=batch_first)


def id_sequences(n, lo=1, hi=40, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, int(t)) for t in rng.integers(lo, hi, n)]


def float_sequences(n, lo=1, hi=40, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(t), 5)).astype(np.float32) for t in rng.integers(lo, hi, n)]


def alone(model, s):
    """The model's output for one sequence by itself (a length-0 one: a batch of one
    sequence of length 0)."""
    if len(s):
        return model([s])[0]
    x = np.zeros((1, 1) + s.shape[1:], s.dtype)
    return model(x, lengths=[0])[0]


# (model factory, sequence factory): every layer computes each row on its own (a Linear
# too: lstm_dense), so bucketing changes no bit
CASES = {
    "classifier": (classifier, id_sequences),
    "final-alone": (lambda: classifier("embedding > lstm > final"), id_sequences),
    "steps-alone": (lambda: classifier("embedding > lstm"), id_sequences),
    "tagger": (lambda: classifier("embedding > lstm > steps > fc > logsoftmax"), id_sequences),
    "tagger-bf": (lambda: classifier("embedding > lstm > steps > fc", batch_first=True), id_sequences),
    "last": (lambda: float_model("gru > last > head > sigmoid"), float_sequences),
    "mean": (lambda: float_model("gru > mean", batch_first=True), float_sequences),
    "max": (lambda: float_model("gru > max > head"), float_sequences),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("budget", [1, 57, 10**7])
def test_predict_equals_one_sequence_calls(case, budget):
    make_model, make_seqs = CASES[case]
    m = make_model()
    seqs = make_seqs(37)
    seqs.insert(4, seqs[0][:0])  # an empty sequence
    out = li.predict(m, seqs, batch_tokens=budget)
    assert len(out) == len(seqs)
    per_step = m.readout in (None, "steps")
    for s, y in zip(seqs, out):
        assert y.dtype == np.float32
        if per_step:
            assert y.shape == (len(s), m.out_features)
            if not len(s):
                continue
        else:
            assert y.shape == (m.out_features,)
        np.testing.assert_array_equal(y, alone(m, s))


def test_predict_matches_torch_on_the_bundled_classifier():
    """predict's per-sequence probabilities equal torch's forward of the trained model."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        from make_classifier_example import Classifier
    finally:
        sys.path.pop(0)
    net = Classifier()
    net.load_state_dict(torch.load(CLASSIFIER, weights_only=True)["model"])
    net.eval()
    seqs = id_sequences(50, lo=1, hi=25, seed=5)
    out = li.predict(classifier(), seqs, batch_tokens=100)
    for s, y in zip(seqs, out):
        with torch.inference_mode():
            ref = net(torch.from_numpy(s)[:, None], torch.tensor([len(s)]))[0].numpy()
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)


def test_run_matches_the_committed_torch_reference(tmp_path):
    """Without torch: the committed outputs of the trained classifier (tests/data/classifier_ref.npz,
    written by torch) through `lstm-infer run` on a .jsonl of its sentences."""
    z = np.load(os.path.join(ROOT, "tests", "data", "classifier_ref.npz"))
    x, lengths, y = z["x"], z["lengths"], z["y"]
    src = tmp_path / "s.jsonl"
    src.write_text("".join(json.dumps(x[:n, b].tolist()) + "\n" for b, n in enumerate(lengths)))
    m = tmp_path / "c.lstm"
    classifier().save(m)
    assert main(["run", str(m), str(src), "-o", str(tmp_path / "o.npz"), "--batch-tokens", "40"]) == 0
    out = np.load(tmp_path / "o.npz")
    assert out["data"].shape == y.shape and out["lengths"].tolist() == [1] * len(y)
    np.testing.assert_allclose(out["data"], y, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ run (CLI)

@pytest.fixture
def ids_dataset(tmp_path):
    seqs = id_sequences(30)
    d = tmp_path / "npy"
    d.mkdir()
    for i, s in enumerate(seqs):
        np.save(d / f"s{i:03d}.npy", s.astype(np.int32))
    np.savez(tmp_path / "r.npz", data=np.concatenate(seqs), lengths=[len(s) for s in seqs])
    with open(tmp_path / "r.jsonl", "w") as f:
        f.writelines(json.dumps(s.tolist()) + "\n" for s in seqs)
    return seqs, tmp_path


@pytest.mark.parametrize("pipeline", [CLASSIFIER_PIPELINE, "embedding > lstm > steps > fc"])
@pytest.mark.parametrize("fmt", ["npy-dir", "npz", "jsonl"])
def test_run_writes_the_model_output_per_sequence(ids_dataset, pipeline, fmt, capsys):
    seqs, tmp = ids_dataset
    m = classifier(pipeline)
    m.save(tmp / "m.lstm")
    src = {"npy-dir": tmp / "npy", "npz": tmp / "r.npz", "jsonl": tmp / "r.jsonl"}[fmt]
    out = tmp / "out.npz"
    assert main(["run", str(tmp / "m.lstm"), str(src), "-o", str(out), "--batch-tokens", "90"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: 30 sequences, {sum(map(len, seqs))} tokens in")
    z = np.load(out)
    assert set(z.files) == {"data", "lengths", "names", "skipped"}
    vector = m.readout == "final"
    assert z["lengths"].tolist() == ([1] * 30 if vector else [len(s) for s in seqs])
    if fmt == "npy-dir":
        assert z["names"].tolist() == sorted(glob.glob(str(tmp / "npy" / "*.npy")))
    pos = 0
    for s, n in zip(seqs, z["lengths"]):
        got = z["data"][pos:pos + n]
        pos += n
        np.testing.assert_array_equal(got[0] if vector else got, alone(m, s))
    if fmt == "npy-dir":  # mirrored: one (out_features,) vector per input
        assert main(["run", str(tmp / "m.lstm"), str(src), "-o", str(tmp / "mirror")]) == 0
        for i, s in enumerate(seqs):
            y = np.load(tmp / "mirror" / f"s{i:03d}.npy")
            assert y.shape == ((2,) if vector else (len(s), 2))
            np.testing.assert_array_equal(y, alone(m, s))


def test_run_bad_token_records(ids_dataset, capsys):
    seqs, tmp = ids_dataset
    classifier().save(tmp / "m.lstm")
    bad = tmp / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(seqs[0].tolist()), json.dumps([1, VOCAB]), json.dumps([1.5, 2.0]),
                              json.dumps([[1, 2]]), json.dumps([-1]), json.dumps(seqs[1].tolist())]) + "\n")
    out = tmp / "o.npz"
    assert main(["run", str(tmp / "m.lstm"), str(bad), "-o", str(out)]) == 2
    assert capsys.readouterr().err == (f"lstm-infer: error: {bad}:2: token id {VOCAB} is out of range for the "
                                       f"Embedding of {VOCAB} entries\n")
    assert not out.exists()
    assert main(["run", str(tmp / "m.lstm"), str(bad), "-o", str(out), "--skip-bad"]) == 0
    assert "skipped 4 bad record(s)" in capsys.readouterr().out
    z = np.load(out)
    assert z["names"].tolist() == [f"{bad}:1", f"{bad}:6"]
    skipped = z["skipped"].tolist()
    assert "integer token ids, got dtype float64" in skipped[1] and "got shape (1, 2)" in skipped[2]
    assert skipped[3] == f"{bad}:5: token id -1 is out of range for the Embedding of {VOCAB} entries"
    np.testing.assert_array_equal(z["data"], np.stack([alone(classifier(), seqs[i]) for i in (0, 1)]))


def test_predict_refuses_a_model_without_recurrent_layers():
    sd = {"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.zeros(2, np.float32)}
    with pytest.raises(TypeError, match="recurrent layer"):
        li.predict(li.Sequential.from_state_dict(sd, "fc > relu"), [np.zeros((2, 3), np.float32)])


def test_float_model_refuses_token_ids():
    with pytest.raises(ValueError, match=r"sequence 0: is a sequence of 3 token ids, but the model's first "
                                         r"layer \(GRU\) takes float features of width 5"):
        li.predict(float_model("gru > last"), [np.arange(3)])


# ------------------------------------------------------------------ Dask

def test_dask_runs_a_sequential_like_the_one_machine_run(ids_dataset):
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("dask.bag")
    import dask.bag

    from lstm_infer.dask import predict_bag, predict_files

    seqs, tmp = ids_dataset
    classifier().save(tmp / "m.lstm")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + old if old else "")  # workers import this checkout
    try:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=40)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    with cluster, distributed.Client(cluster) as client:
        outs = predict_files(client, str(tmp / "m.lstm"), [str(tmp / "r.jsonl")], tmp / "d")
        bag = predict_bag(client, str(tmp / "m.lstm"), dask.bag.from_sequence(seqs, npartitions=3))
    runner.run(str(tmp / "m.lstm"), [str(tmp / "r.jsonl")], str(tmp / "one.npz"))
    with open(outs[0], "rb") as a, open(tmp / "one.npz", "rb") as b:
        assert a.read() == b.read()  # exactly what `lstm-infer run` writes for that file
    local = li.predict(str(tmp / "m.lstm"), seqs)
    assert len(bag) == len(seqs)
    for y, ref in zip(bag, local):
        assert y.shape == (2,)
        np.testing.assert_array_equal(y, ref)
