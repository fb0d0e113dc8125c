"""The command line on whole models (issue 13): inspect lists every module and suggests a
pipeline, convert --pipeline writes one Sequential file in a process that cannot import
torch, the result matches the torch model's own forward, verify (random ragged inputs,
or the user's saved inputs and outputs), errors, and the README's first command."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import cli, modelfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
CLASSIFIER_PIPELINE = "embedding > lstm > final > fc > softmax"


def no_torch_main(jobs):
    """Runs cli.main on each argv in a fresh interpreter where torch cannot be imported:
    [(exit code, stdout, stderr)]."""
    code = ("import sys, io, json, contextlib; sys.modules['torch'] = None\n"
            "from lstm_infer.cli import main\nres = []\n"
            f"for argv in {jobs!r}:\n"
            "    out, err = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "        rc = main(argv)\n"
            "    res.append((rc, out.getvalue(), err.getvalue()))\n"
            "print(json.dumps(res))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ torch models

def torch_models(torch):
    """name -> (nn.Module with forward(x, lengths) as its author wrote it, pipeline, batch_first,
    takes ids, how it is saved)."""
    nn = torch.nn
    pack, unpack = nn.utils.rnn.pack_padded_sequence, nn.utils.rnn.pad_packed_sequence

    class Classifier(nn.Module):  # Embedding(padding_idx) -> bi-LSTM(2 layers) -> final -> Linear -> Softmax
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(50, 12, padding_idx=0)
            self.lstm = nn.LSTM(12, 10, num_layers=2, bidirectional=True)
            self.fc = nn.Linear(20, 4)

        def forward(self, ids, lengths):
            _, (h, _) = self.lstm(pack(self.embedding(ids), lengths, enforce_sorted=False))
            return torch.softmax(self.fc(torch.cat([h[-2], h[-1]], dim=1)), dim=-1)

    class Regressor(nn.Module):  # LSTM -> steps -> Linear, batch_first
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(6, 9, batch_first=True)
            self.head = nn.Linear(9, 2)

        def forward(self, x, lengths):
            out, _ = self.rnn(pack(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = unpack(out, batch_first=True, total_length=x.shape[1])
            return self.head(out)

    class Scorer(nn.Module):  # GRU -> last -> Linear -> Sigmoid
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(5, 7, num_layers=2)
            self.out = nn.Linear(7, 1)

        def forward(self, x, lengths):
            y, _ = unpack(self.gru(pack(x, lengths, enforce_sorted=False))[0], total_length=x.shape[0])
            last = y[lengths - 1, torch.arange(x.shape[1])]
            return torch.sigmoid(self.out(last))

    class Pooled(nn.Module):  # Embedding -> LSTM(proj) -> mean -> LayerNorm -> Linear
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.enc = nn.LSTM(8, 12, proj_size=5)
            self.norm = nn.LayerNorm(5)
            self.cls = nn.Linear(5, 3)

        def forward(self, ids, lengths):
            y, _ = unpack(self.enc(pack(self.emb(ids), lengths, enforce_sorted=False))[0], total_length=ids.shape[0])
            return self.cls(self.norm(y.sum(0) / lengths[:, None]))

    class Tagger(nn.Module):  # Embedding -> bi-GRU -> steps -> Linear -> LogSoftmax
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(40, 6)
            self.encoder = nn.GRU(6, 8, bidirectional=True)
            self.tags = nn.Linear(16, 5)

        def forward(self, ids, lengths):
            y, _ = unpack(self.encoder(pack(self.embedding(ids), lengths, enforce_sorted=False))[0],
                          total_length=ids.shape[0])
            return torch.log_softmax(self.tags(y), dim=-1)

    torch.manual_seed(0)
    return {
        "classifier": (Classifier(), CLASSIFIER_PIPELINE, False, True, "checkpoint"),
        "regressor": (Regressor(), "rnn > steps > head", True, False, "state_dict"),
        "scorer": (Scorer(), "gru > last > out > sigmoid", False, False, "legacy"),
        "pooled": (Pooled(), "emb > enc > mean > norm > cls", False, True, "state_dict"),
        "tagger": (Tagger(), "embedding > encoder > steps > tags > logsoftmax", False, True, "checkpoint"),
    }


def ragged_batch(rng, net, batch_first, takes_ids, T=11, B=6):
    lengths = np.array([T, 1, 5, T - 1, 3, 2], np.int64)[:B]
    shape = (B, T) if batch_first else (T, B)
    if takes_ids:
        vocab = next(m for m in net.modules() if hasattr(m, "num_embeddings")).num_embeddings
        x = rng.integers(0, vocab, shape).astype(np.int64)
    else:
        width = next(m for m in net.modules() if hasattr(m, "input_size")).input_size
        x = rng.standard_normal(shape + (width,)).astype(np.float32)
    return x, lengths


@pytest.fixture(scope="module")
def whole_models(tmp_path_factory):
    """Each pattern saved by real torch.save and converted by `lstm-infer convert --pipeline` in a
    process that cannot import torch: name -> (torch module, converted file, batch_first, takes ids)."""
    torch = pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("whole")
    jobs, out = [], {}
    for name, (net, text, bf, ids, how) in torch_models(torch).items():
        src, dst = str(tmp / f"{name}.pt"), str(tmp / f"{name}.lstm")
        sd = net.state_dict()
        if how == "checkpoint":
            torch.save({"model": sd, "epoch": 7, "optimizer": {"lr": 0.1}}, src)
        else:
            torch.save(sd, src, _use_new_zipfile_serialization=how != "legacy")
        jobs.append(["convert", src, "-o", dst, "--pipeline", text] + (["--batch-first"] if bf else []))
        out[name] = (net.eval(), dst, bf, ids)
    for (rc, stdout, stderr), argv in zip(no_torch_main(jobs), jobs):
        assert rc == 0 and stderr == "", (argv, stderr)
        assert stdout.startswith(f"wrote {argv[3]}: Sequential(")
    return out


def test_converted_whole_models_match_torch_forward(whole_models):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for name, (net, path, bf, ids) in whole_models.items():
        model = li.load(path)
        assert isinstance(model, li.Sequential) and model.batch_first == bf
        for _ in range(3):
            x, lengths = ragged_batch(rng, net, bf, ids)
            with torch.inference_mode():
                ref = net(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
            got = model(x, lengths=lengths)
            if model.readout == "steps":  # torch's head also ran on the padding; we give 0 there
                T = x.shape[1] if bf else x.shape[0]
                valid = np.arange(T)[:, None] < lengths[None, :]
                mask = valid.T if bf else valid
                assert np.all(got[~mask] == 0), name
                got, ref = got[mask], ref[mask]
            assert got.shape == ref.shape, name
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=name)


def test_verify_whole_models_pass(whole_models, capsys):
    pytest.importorskip("torch")
    for name, (_, path, _, _) in whole_models.items():
        assert cli.main(["verify", path]) == 0, name
        out = capsys.readouterr().out
        assert "against the same pipeline of torch.nn modules" in out
        assert re.search(r"^  ragged +\d\.\d+e[-+]\d+", out, re.M), out
        assert out.splitlines()[-1].startswith("PASS: max abs error")


def test_verify_reports_a_mismatch(whole_models, capsys, monkeypatch):
    """A torch side that differs (here: a shifted reference) fails with exit code 1."""
    pytest.importorskip("torch")
    from lstm_infer import torchref

    call = torchref.TorchPipeline.__call__
    monkeypatch.setattr(torchref.TorchPipeline, "__call__", lambda self, x, lengths=None: call(self, x, lengths) + 1e-3)
    assert cli.main(["verify", whole_models["scorer"][1]]) == cli.EXIT_MISMATCH
    assert capsys.readouterr().out.splitlines()[-1].startswith("FAIL: max abs error 1.000e-03 > 1e-05")


# ------------------------------------------------------------------ verify --inputs/--outputs

def test_verify_saved_outputs_of_the_bundled_classifier_without_torch(tmp_path):
    """The committed reference (torch's own outputs, written by tools/make_classifier_example.py)
    proves the converted example without torch; a changed output fails; bad files are user errors."""
    out = str(tmp_path / "c.lstm")
    ref = os.path.join(DATA, "classifier_ref.npz")
    z = dict(np.load(ref))
    bad = str(tmp_path / "bad.npz")
    z_bad = dict(z, y=z["y"] + np.float32(1e-3))
    np.savez(bad, **z_bad)
    no_y = str(tmp_path / "no_y.npz")
    np.savez(no_y, x=z["x"])
    wrong = str(tmp_path / "wrong.npz")
    np.savez(wrong, y=z["y"][:3])
    jobs = [["convert", os.path.join(ROOT, "examples", "classifier.pt"), "-o", out, "--pipeline", CLASSIFIER_PIPELINE],
            ["verify", out, "--inputs", ref, "--outputs", ref],
            ["verify", out, "--inputs", ref, "--outputs", bad],
            ["verify", out, "--inputs", ref, "--outputs", no_y],
            ["verify", out, "--inputs", ref, "--outputs", wrong],
            ["verify", out, "--inputs", ref]]
    res = no_torch_main(jobs)
    assert [r[0] for r in res] == [0, 0, 1, 2, 2, 2], res
    assert f"  {z['y'].size} values compared: max abs err" in res[1][1] and "PASS" in res[1][1]
    assert res[2][1].splitlines()[-1].startswith("FAIL: max abs error 1.000e-03")
    assert res[3][2] == f"lstm-infer: error: {no_y}: no array 'y' (it holds x); see lstm-infer verify --help for the convention\n"
    assert f"'y' has shape (3, 2), but the model gives {z['y'].shape}" in res[4][2]
    assert "--inputs and --outputs go together" in res[5][2]


def test_verify_saved_per_step_outputs_ignores_padding(whole_models, tmp_path):
    """Per-step outputs: positions past a length (where torch's head ran on padding) are not compared."""
    torch = pytest.importorskip("torch")
    net, path, bf, ids = whole_models["regressor"]
    x, lengths = ragged_batch(np.random.default_rng(3), net, bf, ids)
    with torch.inference_mode():
        y = net(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    assert np.any(y[1, 1:] != 0)  # the head's bias past the length
    np.savez(tmp_path / "x.npz", x=x, lengths=lengths)
    np.savez(tmp_path / "y.npz", y=y)
    assert cli.main(["verify", path, "--inputs", str(tmp_path / "x.npz"), "--outputs", str(tmp_path / "y.npz")]) == 0
    y[0, 3] += 1e-3  # a valid position
    np.savez(tmp_path / "y.npz", y=y)
    assert cli.main(["verify", path, "--inputs", str(tmp_path / "x.npz"),
                     "--outputs", str(tmp_path / "y.npz")]) == cli.EXIT_MISMATCH


def test_verify_saved_outputs_of_a_bare_lstm(tmp_path, capsys):
    """The same convention for a converted single layer: y is its per-step output."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.LSTM(4, 6).eval()
    torch.save(net.state_dict(), tmp_path / "l.pt")
    assert cli.main(["convert", str(tmp_path / "l.pt"), "-o", str(tmp_path / "l.lstm")]) == 0
    x = np.random.default_rng(0).standard_normal((7, 3, 4)).astype(np.float32)
    with torch.inference_mode():
        y = net(torch.from_numpy(x))[0].numpy()
    np.savez(tmp_path / "io.npz", x=x, y=y)
    io = str(tmp_path / "io.npz")
    assert cli.main(["verify", str(tmp_path / "l.lstm"), "--inputs", io, "--outputs", io]) == 0
    assert "PASS" in capsys.readouterr().out


# ------------------------------------------------------------------ inspect

def test_inspect_notes_tensors_beside_a_module_that_a_pipeline_would_refuse(tmp_path, capsys):
    """A learned initial state saved beside an LSTM's weights: inspect says that a pipeline
    naming the LSTM is refused until it is dropped, and convert refuses it by name."""
    sd = {f"lstm.{k}": v for k, v in li.LSTM(4, 5).state_dict().items()}
    sd.update({"lstm.h0": np.zeros((1, 1, 5), np.float32), "fc.weight": np.zeros((2, 5), np.float32),
               "fc.bias": np.zeros(2, np.float32)})
    src = tmp_path / "m.npz"
    np.savez(src, **sd)
    assert cli.main(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert ("      beside it under 'lstm': lstm.h0 (1, 1, 5); a pipeline naming 'lstm' is refused until "
            "these are dropped from the state dict") in out
    assert cli.main(["convert", str(src), "-o", str(tmp_path / "m.lstm"), "--pipeline", "lstm > final > fc"]) == 2
    assert "'lstm' holds tensors that its LSTM(4, 5) does not use: lstm.h0 (1, 1, 5)" in capsys.readouterr().err
    assert not (tmp_path / "m.lstm").exists()


def test_inspect_lists_modules_in_file_order_and_its_suggestion_converts(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.ModuleDict({"tok": nn.Embedding(20, 8), "rnn": nn.GRU(8, 6, bidirectional=True),
                         "proj": nn.Linear(12, 4), "norm": nn.LayerNorm(4), "cls": nn.Linear(4, 3)})
    sd = dict(net.state_dict())
    sd["pos_table"] = torch.zeros(3, 4, 5)  # a tensor of no module lstm_infer knows
    src = tmp_path / "m.pt"
    torch.save(sd, src)
    assert cli.main(["inspect", str(src)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{src}: torch-zip, {len(sd)} tensors, 1 recurrent module(s) found, 5 module(s) in all (in file order):"
    heads = [line for line in lines if line.startswith("  '")]
    assert heads == ["  'tok.' Embedding(20, 8)",
                     "  'rnn.' GRU(input_size=8, hidden_size=6, num_layers=1, bias=True, bidirectional=True)",
                     "  'proj.' Linear(in_features=12, out_features=4, bias=True)",
                     "  'norm.' LayerNorm(normalized_shape=[4], eps=1e-05, elementwise_affine=True, bias=True)",
                     "  'cls.' Linear(in_features=4, out_features=3, bias=True)"]
    assert lines[lines.index(heads[0]) + 1] == "      1 tensor, 160 parameters, dtype float32"
    assert "  1 other tensor(s), not part of a recognised module: pos_table (3, 4, 5)" in lines
    cmd = lines[-1].strip()
    assert cmd.startswith("lstm-infer convert ") and "--pipeline" in cmd
    argv = shlex.split(cmd)[1:]
    text = argv[argv.index("--pipeline") + 1]
    assert text == "tok > rnn > final > proj > norm > cls"
    argv[argv.index("-o") + 1] = str(tmp_path / "m.lstm")
    assert cli.main(argv) == 0
    capsys.readouterr()
    model = li.load(tmp_path / "m.lstm")
    assert model.pipeline == text
    assert cli.main(["inspect", str(tmp_path / "m.lstm")]) == 0
    out = capsys.readouterr().out
    assert f"  Sequential, batch_first=False: {text}\n" in out
    assert "    rnn    GRU(input_size=8, hidden_size=6, num_layers=1, bias=True, batch_first=False, " \
           "bidirectional=True)\n" in out
    assert "  input: token ids (T, B), each in [0, 20); output: one vector per sequence (B, 3) (readout 'final')" in out


# ------------------------------------------------------------------ convert errors

def test_convert_errors_name_the_layers_and_leave_nothing(tmp_path):
    src = os.path.join(ROOT, "examples", "classifier.pt")
    out = str(tmp_path / "o.lstm")
    cases = [
        ("embedding > lstm > final > softmax > embedding", "'embedding' is used twice"),
        ("embedding > fc > lstm", "the shapes do not chain: 'embedding' (Embedding(42, 24)) gives 24 features, "
                                  "'fc' (Linear(in_features=64, out_features=2, bias=True)) takes 64 features"),
        ("embedding > lstm > fc", "'fc' follows the recurrent layer 'lstm' without a readout"),
        ("embedding > lstm > final > head", "no module 'head' in the state dict and no keyword of that name"),
        ("embedding > > lstm", "step 2 is empty"),
    ]
    jobs = [["convert", src, "-o", out, "--pipeline", text] for text, _ in cases]
    jobs.append(["convert", src, "-o", out, "--pipeline", "lstm > final > fc", "--prefix", "lstm"])
    res = no_torch_main(jobs)
    for (rc, stdout, stderr), (text, want) in zip(res, cases):
        assert rc == 2 and stdout == "", (text, stdout)
        assert stderr.startswith(f"lstm-infer: error: {src}: ") and want in stderr, (text, stderr)
        assert stderr.count("\n") == 1
    assert res[-1][0] == 2 and "--prefix selects one module; with --pipeline name the modules" in res[-1][2]
    assert not os.listdir(tmp_path)


def test_convert_without_pipeline_keeps_converting_one_module(tmp_path):
    """A file with an embedding and a head around one LSTM: without --pipeline, the LSTM alone (as before)."""
    out = str(tmp_path / "o.lstm")
    assert cli.main(["convert", os.path.join(ROOT, "examples", "classifier.pt"), "-o", out]) == 0
    kind, cfg, _ = modelfile.read_model(out)
    assert kind == "LSTM" and cfg["bidirectional"] and cfg["input_size"] == 24


# ------------------------------------------------------------------ README

def test_readme_first_command_converts_and_runs_the_bundled_classifier(tmp_path):
    """The README's first command (after `pip install .`) prints the classifier's predictions."""
    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    first = re.search(r"```sh\n(pip install \. && .*)\n```", readme).group(1)
    assert "examples/classifier.pt" in first and "--pipeline" in first
    exe = shlex.quote(sys.executable)
    cmd = first[len("pip install . && "):].replace("python examples/", f"{exe} examples/")
    cmd = cmd.replace("lstm-infer ", f"{exe} -m lstm_infer ")
    env = dict(os.environ, PYTHONPATH=ROOT)
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    preds = [line.split() for line in res.stdout.splitlines() if line.strip().startswith(("positive", "negative"))]
    labels = {" ".join(p[2:]): p[0] for p in preds}
    assert labels == {"the movie was great": "positive",
                      "the plot was not good": "negative",
                      "the acting was dull but the music was brilliant": "positive",
                      "i think the story was very moving but the ending was awful": "negative",
                      "honestly the film was never boring": "positive",
                      "the cast seemed quite silly but the dialogue was not bad": "positive"}, res.stdout


def test_convert_pipeline_with_verify(tmp_path, capsys):
    pytest.importorskip("torch")
    out = str(tmp_path / "c.lstm")
    argv = ["convert", os.path.join(ROOT, "examples", "classifier.pt"), "-o", out, "--pipeline",
            "embedding > lstm > last > fc > logsoftmax", "--batch-first", "--verify"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"wrote {out}: Sequential(embedding > lstm > last > fc > logsoftmax) from ")
    assert "  lstm: LSTM(24, 32, batch_first=True, bidirectional=True)\n" in text
    assert text.splitlines()[-1].startswith("PASS: max abs error")
