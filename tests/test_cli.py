"""The lstm-infer command line: inspect, convert (without torch), verify, user errors; for every
recurrent module of torch.nn (LSTM, GRU, RNN and their cells)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from file_helpers import (MANIFEST, call, check_against_ref, engine, frag, glob, lstm_cases, np_lstm, path, program,
                          ref, torch_zip)
from lstm_infer import cli, modelfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv, extra_code=""):
    """The CLI in a fresh interpreter: (exit code, stdout, stderr)."""
    code = (f"import sys\n{extra_code}\nfrom lstm_infer.cli import main; rc = main({list(argv)!r}); "
            "sys.stdout.flush(); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    return res.returncode, res.stdout, res.stderr


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every LSTM of every fixture converted in one process that never imports torch."""
    tmp = tmp_path_factory.mktemp("converted")
    jobs = []
    for i, (name, prefix, info) in enumerate(lstm_cases()):
        out = str(tmp / f"m{i}.lstm")
        argv = ["convert", path(name), "-o", out] + (["--prefix", prefix] if prefix else [])
        jobs.append((argv, out, name, prefix, info))
    code = ("import sys, json; from lstm_infer.cli import main; "
            f"rcs = [main(a) for a in {[j[0] for j in jobs]!r}]; "
            "print(json.dumps({'rcs': rcs, 'torch': 'torch' in sys.modules}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report == {"rcs": [0] * len(jobs), "torch": False}
    return [j[1:] for j in jobs]


def _as_lstm(kind, cfg, sd):
    """An LSTMCell file's weights as the one-layer LSTM the fixtures' references were computed with."""
    if kind == "LSTM":
        return cfg, sd
    assert kind == "LSTMCell" and set(sd) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    return (dict(cfg, num_layers=1, bidirectional=False, proj_size=0, batch_first=False, dropout=0.0),
            {k + "_l0": v for k, v in sd.items()})


def test_converted_without_torch_match_torch_outputs(converted):
    """The weights in each converted file reproduce torch's outputs (NumPy equations)."""
    for out, name, prefix, info in converted:
        kind, cfg, sd = modelfile.read_model(out)
        assert kind == info.get("kind", "LSTM"), name
        if kind == "LSTMCell":
            assert cfg == {k: info["config"][k] for k in ("input_size", "hidden_size", "bias")}
        else:
            assert {k: cfg[k] for k in info["config"]} == info["config"], name
            assert cfg["batch_first"] is False
        cfg, sd = _as_lstm(kind, cfg, sd)
        check_against_ref(lambda x, hx, lengths: np_lstm(sd, cfg, x, hx, lengths), ref(info["ref"]))


def test_converted_without_torch_run_by_engine(converted):
    """The same files read back and run by our engine (LSTMCell files as the equivalent one-layer LSTM)."""
    model = engine()
    for out, name, prefix, info in converted:
        cfg, sd = _as_lstm(*modelfile.read_model(out))
        m = model.LSTM(**cfg)
        m.load_state_dict(sd, strict=True)

        def forward(x, hx, lengths):
            o, (h, c) = m(x, hx=hx, lengths=lengths)
            return o, h, c

        check_against_ref(forward, ref(info["ref"]))


def test_convert_batch_first_and_python_m(tmp_path):
    out = tmp_path / "m.lstm"
    res = subprocess.run([sys.executable, "-m", "lstm_infer", "convert", path("bi_legacy.pt"), "-o", str(out),
                          "--batch-first"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert f"wrote {out}" in res.stdout
    assert modelfile.read_model(out)[:2] == ("LSTM", dict(MANIFEST["bi_legacy.pt"]["lstms"][""]["config"],
                                                          batch_first=True, dropout=0.0))


def test_inspect_lists_every_lstm(capsys):
    torch = pytest.importorskip("torch")
    for name in ("encdec.pt", "cell_legacy.pt", "checkpoint.pt", "proj.safetensors", "uni.npz", "bf16.pt",
                 "bf16_legacy.pt", "fp16.pt", "fp64_legacy.pt"):
        assert cli.main(["inspect", path(name)]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"{path(name)}: {MANIFEST[name]['format']}")
        for prefix, info in MANIFEST[name]["lstms"].items():
            cfg = info["config"]
            params = sum(p.numel() for p in torch.nn.LSTM(**cfg).parameters())
            where = repr(prefix) if prefix else "(top level)"
            kind = info.get("kind", "LSTM")
            keys = (("input_size", "hidden_size", "bias") if kind == "LSTMCell" else
                    ("input_size", "hidden_size", "num_layers", "bias", "bidirectional", "proj_size"))
            line = f"  {where} {kind}(" + ", ".join(f"{k}={cfg[k]}" for k in keys) + ")"
            assert line in text.splitlines(), (name, text)
            assert f"{params} parameters, dtype {info.get('dtype', 'torch.float32')[len('torch.'):]}" in text


def test_inspect_reports_other_tensors_and_broken_lstms(capsys, tmp_path):
    assert cli.main(["inspect", path("encdec.pt")]) == 0
    out = capsys.readouterr().out
    assert "  'gru.' GRU(input_size=4, hidden_size=4, num_layers=1, bias=True, bidirectional=False)" in out
    # the embedding and the head are modules too (issue 13), listed in file order
    lines = out.splitlines()
    heads = [line for line in lines if line.startswith("  '")]
    assert [h.split()[0] for h in heads] == ["'embed.'", "'encoder.'", "'decoder.'", "'gru.'", "'head.'"], out
    assert "  'embed.' Embedding(10, 4)" in lines and \
        "  'head.' Linear(in_features=2, out_features=10, bias=True)" in lines, out
    assert "other tensor" not in out
    import safetensors.numpy

    from lstm_infer import readers

    sd = readers.read_tensors(path("encdec.pt"))
    sd["decoder.weight_hh_l1"] = np.zeros((20, 3), np.float32)
    f = tmp_path / "broken.safetensors"
    safetensors.numpy.save_file(sd, str(f))
    assert cli.main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    assert "'decoder.' LSTM: INVALID: decoder.weight_hh_l1: expected shape (20, 2)" in out


def test_inspect_model_file(capsys, tmp_path):
    out = tmp_path / "m.lstm"
    assert cli.main(["convert", path("proj.pt"), "-o", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lstm_infer model file (format_version 1)" in text and "proj_size=3" in text


def _evil(tmp_path):
    f = tmp_path / "evil.pt"
    f.write_bytes(torch_zip(program(call(glob("posix", "system"), frag(f"touch {tmp_path}/ran"))), {}))
    return f


USER_ERRORS = [
    (lambda t: ["inspect", str(t / "missing.pt")], "missing.pt: No such file or directory"),
    (lambda t: ["inspect", path("manifest.json")], "unrecognised format"),
    (lambda t: ["convert", path("encdec.pt"), "-o", str(t / "o.lstm")], "found 3 recurrent modules: 'decoder.' (LSTM), 'encoder.' (LSTM), 'gru.' (GRU); choose one by prefix"),
    (lambda t: ["convert", path("encdec.pt"), "-o", str(t / "o.lstm"), "--prefix", "dec"], "no recurrent module at prefix 'dec'; available prefixes: 'decoder.' (LSTM), 'encoder.' (LSTM), 'gru.' (GRU)"),
    (lambda t: ["convert", str(_evil(t)), "-o", str(t / "o.lstm")], "refusing to load global 'posix.system'"),
    (lambda t: ["convert", path("uni.pt"), "-o", str(t / "no" / "dir" / "o.lstm")], "No such file or directory"),
    (lambda t: ["verify", path("ref_missing.pt")], "No such file or directory"),
    (lambda t: ["convert", path("uni.ref.npz"), "-o", str(t / "o.lstm")], "no LSTM, GRU, RNN or cell parameters found: no keys like torch's 'weight_ih_l0'"),
    (lambda t: ["convert", path("encdec.pt"), "-o", str(t / "o.lstm"), "--prefix", "encoder", "--nonlinearity", "relu"],
     "--nonlinearity applies to RNN and RNNCell only; the module at prefix 'encoder.' of "),
    (lambda t: ["convert", path("cell.pt"), "-o", str(t / "o.lstm"), "--batch-first"],
     "--batch-first applies to the layers (LSTM, GRU, RNN) only; the module at top level of "),
]


@pytest.mark.parametrize("argv, message", USER_ERRORS, ids=[m[:30] for _, m in USER_ERRORS])
def test_user_errors_are_one_line(argv, message, tmp_path, capsys):
    assert cli.main(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("lstm-infer: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "o.lstm").exists() and not (tmp_path / "ran").exists()


def test_user_error_in_real_process_has_no_traceback(tmp_path):
    rc, out, err = run("convert", str(_evil(tmp_path)), "-o", str(tmp_path / "o.lstm"))
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    rc, _, err = run("convert", path("uni.pt"))
    assert rc == 2 and "-o/--output" in err and "Traceback" not in err
    model = tmp_path / "m.lstm"
    assert cli.main(["convert", path("uni.pt"), "-o", str(model)]) == 0
    rc, _, err = run("verify", str(model), "--prefix", "x")
    assert rc == 2 and "--prefix does not apply" in err


def test_verify_without_torch_exits_3(tmp_path):
    rc, out, err = run("verify", path("uni.pt"), extra_code="sys.modules['torch'] = None")
    assert rc == 3
    assert "verify needs PyTorch, which is not installed" in err and "Traceback" not in err


# --------------------------------------------------- with torch and engine

def _engine():
    pytest.importorskip("torch")
    return engine()


@pytest.mark.parametrize("name, prefix", [("proj.pt", ""), ("encdec_legacy.pt", "decoder"), ("bf16.pt", "")])
def test_verify_passes(name, prefix, capsys):
    _engine()
    argv = ["verify", path(name)] + (["--prefix", prefix] if prefix else [])
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for case in ("equal", "equal+hx", "ragged", "ragged+hx"):
        for t in ("output", "h_n", "c_n"):
            assert any(line.split()[:2] == [case, t] for line in out.splitlines()), (case, t, out)
    assert "PASS: max abs error" in out


def test_convert_with_verify_on_batch_first(tmp_path, capsys):
    _engine()
    out = tmp_path / "m.lstm"
    assert cli.main(["convert", path("layers2_legacy.pt"), "-o", str(out), "--batch-first", "--verify"]) == 0
    assert "batch_first=True" in capsys.readouterr().out


def test_verify_fails_above_tolerance(monkeypatch, capsys):
    model = _engine()
    real_call = model.LSTM.__call__

    def perturbed(self, *a, **k):
        out, (h, c) = real_call(self, *a, **k)
        return out + 1e-3, (h, c)

    monkeypatch.setattr(model.LSTM, "__call__", perturbed)
    assert cli.main(["verify", path("uni.pt"), "--tol", "1e-4"]) == 1
    assert "FAIL: max abs error 1.000e-03 > 0.0001" in capsys.readouterr().out


# ------------------------------------- GRU, RNN and the cells, saved by real torch.save

def _family():
    """lstm_infer with the recurrent-family classes, or a skip (they come from the lead's branch)."""
    import lstm_infer

    if not hasattr(lstm_infer, "GRU"):
        pytest.skip("needs li.GRU / li.RNN / the cells (the recurrent-family classes), not in this branch yet")
    return lstm_infer


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """name -> (file, {prefix: (kind, torch module)}) for files written by torch.save."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    tmp = tmp_path_factory.mktemp("family")
    torch.manual_seed(0)
    files = {}

    def save(name, obj, modules, **kw):
        f = tmp / name
        torch.save(obj, str(f), **kw)
        files[name] = (str(f), modules)

    gru = nn.GRU(5, 4, num_layers=2, bidirectional=True)
    save("gru.pt", gru.state_dict(), {"": ("GRU", gru)})
    rnn_relu = nn.RNN(5, 4, num_layers=2, nonlinearity="relu")
    save("rnn_relu_legacy.pt", rnn_relu.state_dict(), {"": ("RNN", rnn_relu)}, _use_new_zipfile_serialization=False)
    rnn_tanh = nn.RNN(5, 4, bias=False, bidirectional=True)
    save("rnn_tanh_nobias.pt", rnn_tanh.state_dict(), {"": ("RNN", rnn_tanh)})
    cells = nn.ModuleDict({"lstmcell": nn.LSTMCell(5, 4), "grucell": nn.GRUCell(5, 4, bias=False),
                           "rnncell": nn.RNNCell(5, 4, nonlinearity="relu")})
    save("cells.pt", {"model": cells.state_dict(), "epoch": 3},
         {f"{k}.": (type(m).__name__, m) for k, m in cells.items()})  # the reader unwraps "model"
    tagger = nn.ModuleDict({"embedding": nn.Embedding(1000, 64), "gru": nn.GRU(64, 128), "fc": nn.Linear(128, 10)})
    save("tagger.pt", tagger.state_dict(), {"gru.": ("GRU", tagger["gru"])})
    deep = nn.ModuleDict({"rnn": nn.RNN(3, 2), **{f"fc{i}": nn.Linear(2, 2) for i in range(6)}})
    save("deep.pt", deep.state_dict(), {"rnn.": ("RNN", deep["rnn"])})
    return files


def _config(torch_module, kind):
    """The constructor arguments of a torch module, read from the module (not from detect)."""
    m = torch_module
    if kind.endswith("Cell"):
        cfg = dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
        return dict(cfg, nonlinearity=m.nonlinearity) if kind == "RNNCell" else cfg
    cfg = dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers)
    if kind == "RNN":  # torch's argument order
        cfg["nonlinearity"] = m.nonlinearity
    cfg.update(bias=m.bias, batch_first=m.batch_first, dropout=float(m.dropout), bidirectional=m.bidirectional)
    if kind == "LSTM":
        cfg["proj_size"] = m.proj_size
    return cfg


def test_inspect_lists_every_kind(family, capsys):
    for name, (f, modules) in family.items():
        assert cli.main(["inspect", f]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[0].startswith(f"{f}: torch-") and f"{len(modules)} recurrent module(s) found" in lines[0], out
        for prefix, (kind, m) in modules.items():
            cfg = _config(m, kind)
            shown = {k: v for k, v in cfg.items() if k not in ("batch_first", "dropout")}
            if "nonlinearity" in shown:
                shown["nonlinearity"] = "tanh"  # what a state dict lets us know
            where = repr(prefix) if prefix else "(top level)"
            head = f"  {where} {kind}(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
            assert head in lines, (head, out)
            i = lines.index(head)
            params = sum(p.numel() for p in m.parameters())
            assert lines[i + 1] == f"      {len(m.state_dict())} tensors, {params} parameters, dtype float32"
            if kind in ("RNN", "RNNCell"):
                assert lines[i + 2] == (f"      nonlinearity is not stored in a state dict: assuming 'tanh' (torch's "
                                        f"default); if the {kind} was built with nonlinearity='relu', use "
                                        f"--nonlinearity relu"), out
    # the embedding and the heads are modules too (issue 13)
    assert cli.main(["inspect", family["tagger.pt"][0]]) == 0
    out = capsys.readouterr().out
    assert "  'embedding.' Embedding(1000, 64)\n" in out and \
        "  'fc.' Linear(in_features=128, out_features=10, bias=True)\n" in out and "other tensor" not in out
    assert cli.main(["inspect", family["deep.pt"][0]]) == 0
    out = capsys.readouterr().out
    assert all(f"  'fc{i}.' Linear(in_features=2, out_features=2, bias=True)\n" in out for i in range(6)), out


# (file, prefix, extra options, kind, config changes from the torch module's)
CONVERSIONS = [
    ("gru.pt", "", [], "GRU", {}),
    ("rnn_relu_legacy.pt", "", ["--nonlinearity", "relu"], "RNN", {}),
    ("rnn_relu_legacy.pt", "", [], "RNN", {"nonlinearity": "tanh"}),  # not stored: assumed, and said so
    ("rnn_tanh_nobias.pt", "", ["--batch-first"], "RNN", {"batch_first": True}),
    ("cells.pt", "lstmcell", [], "LSTMCell", {}),
    ("cells.pt", "grucell.", [], "GRUCell", {}),
    ("cells.pt", "rnncell", ["--nonlinearity", "relu"], "RNNCell", {}),
    ("tagger.pt", "", ["--batch-first"], "GRU", {"batch_first": True}),  # the only recurrent module: no prefix
    ("deep.pt", "", ["--nonlinearity", "tanh"], "RNN", {}),
]


@pytest.fixture(scope="module")
def family_converted(family, tmp_path_factory):
    """Every conversion above in one process where torch cannot be imported."""
    tmp = tmp_path_factory.mktemp("family_converted")
    jobs = []
    for i, (name, prefix, opts, kind, change) in enumerate(CONVERSIONS):
        out = str(tmp / f"m{i}.lstm")
        jobs.append(["convert", family[name][0], "-o", out] + (["--prefix", prefix] if prefix else []) + opts)
    code = ("import sys, io, json, contextlib; sys.modules['torch'] = None\n"
            "from lstm_infer.cli import main\n"
            "res = []\n"
            f"for a in {jobs!r}:\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        rc = main(a)\n"
            "    res.append((rc, buf.getvalue()))\n"
            "print(json.dumps({'res': res, 'torch': sys.modules.get('torch', 0)}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["torch"] is None, "torch was imported"  # still the blocking None: nothing imported it
    return [(job[3], rc_out) for job, rc_out in zip(jobs, report["res"])]


@pytest.mark.parametrize("i", range(len(CONVERSIONS)), ids=[f"{c[0]}-{c[3]}-{'_'.join(c[2]) or 'plain'}"
                                                          for c in CONVERSIONS])
def test_convert_every_kind_without_torch(family, family_converted, i):
    name, prefix, opts, kind, change = CONVERSIONS[i]
    out, (rc, stdout) = family_converted[i]
    assert rc == 0, stdout
    want_prefix = (prefix if not prefix or prefix.endswith(".") else prefix + ".") or next(iter(family[name][1]))
    want_kind, module = family[name][1][want_prefix]
    assert kind == want_kind
    cfg = dict(_config(module, kind), **change)
    got_kind, got_cfg, got = modelfile.read_model(out)
    assert (got_kind, got_cfg) == (kind, cfg)
    assert list(got) == list(module.state_dict())  # the module's own names, torch's order
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(got[k], v.numpy())
    assert stdout.startswith(f"wrote {out}: {kind}(")
    assumed = kind in ("RNN", "RNNCell") and "--nonlinearity" not in opts
    assert ("note: nonlinearity is not stored in a state dict: assuming 'tanh'" in stdout) == assumed, stdout


def test_converted_model_files_inspect_and_reconvert(family, tmp_path, capsys):
    f, _ = family["rnn_relu_legacy.pt"]
    a, b = tmp_path / "a.lstm", tmp_path / "b.lstm"
    assert cli.main(["convert", f, "-o", str(a), "--nonlinearity", "relu"]) == 0
    assert cli.main(["inspect", str(a)]) == 0
    out = capsys.readouterr().out
    assert ("  RNN(input_size=5, hidden_size=4, num_layers=2, nonlinearity='relu', bias=True, batch_first=False, "
            "bidirectional=False)\n") in out
    assert "not stored" not in out  # a model file records it
    assert cli.main(["convert", str(a), "-o", str(b), "--batch-first"]) == 0
    assert modelfile.read_model(b)[1] == dict(modelfile.read_model(a)[1], batch_first=True)
    assert cli.main(["convert", str(a), "-o", str(b), "--prefix", "x"]) == 2
    assert "it holds one RNN, --prefix does not apply" in capsys.readouterr().err


def _family_errors(family, t):
    gru, cells, tagger = family["gru.pt"][0], family["cells.pt"][0], family["tagger.pt"][0]
    o = str(t / "o.lstm")
    return [
        (["convert", cells, "-o", o], "found 3 recurrent modules: 'grucell.' (GRUCell), 'lstmcell.' "
                                      "(LSTMCell), 'rnncell.' (RNNCell); choose one by prefix"),
        (["convert", cells, "-o", o, "--prefix", "gru"],
         "no recurrent module at prefix 'gru'; available prefixes: 'grucell.' (GRUCell), "
         "'lstmcell.' (LSTMCell), 'rnncell.' (RNNCell)"),
        (["convert", gru, "-o", o, "--nonlinearity", "relu"],
         f"--nonlinearity applies to RNN and RNNCell only; the module at top level of {gru} is a GRU"),
        (["convert", cells, "-o", o, "--prefix", "lstmcell", "--nonlinearity", "tanh"],
         "--nonlinearity applies to RNN and RNNCell only; the module at prefix 'lstmcell.' of "),
        (["convert", cells, "-o", o, "--prefix", "rnncell", "--batch-first"],
         "--batch-first applies to the layers (LSTM, GRU, RNN) only; the module at prefix 'rnncell.' of "
         f"{cells} is an RNNCell, which takes input of shape (batch, input_size)"),
        (["convert", tagger, "-o", o, "--prefix", "fc"], "no recurrent module at prefix 'fc'; available prefixes: "
                                                         "'gru.' (GRU)"),
        (["verify", gru, "--nonlinearity", "relu"], "--nonlinearity applies to RNN and RNNCell only"),
    ]


def test_family_user_errors_are_one_line(family, tmp_path, capsys):
    for argv, message in _family_errors(family, tmp_path):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("lstm-infer: error: ") and err.count("\n") == 1, err
        assert message in err, (message, err)
        assert not (tmp_path / "o.lstm").exists()
    rc, _, err = run("convert", family["gru.pt"][0], "-o", str(tmp_path / "o.lstm"), "--nonlinearity", "sigmoid")
    assert rc == 2 and "invalid choice: 'sigmoid'" in err and not (tmp_path / "o.lstm").exists()


def test_broken_gru_shapes_are_named(family, tmp_path, capsys):
    import safetensors.numpy

    from lstm_infer import readers

    sd = readers.read_tensors(family["gru.pt"][0])
    sd["weight_hh_l1"] = np.zeros((12, 5), np.float32)
    f = tmp_path / "broken.safetensors"
    safetensors.numpy.save_file(sd, str(f))
    assert cli.main(["convert", str(f), "-o", str(tmp_path / "o.lstm")]) == 2
    err = capsys.readouterr().err
    assert err == (f"lstm-infer: error: {f}: weight_hh_l1: expected shape (12, 4) (3*hidden_size, hidden_size), "
                   "got (12, 5)\n")
    assert cli.main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    assert "  (top level) GRU: INVALID: weight_hh_l1: expected shape (12, 4)" in out
    assert "  16 other tensor(s), not part of a recognised module: bias_hh_l0 (12,), " in out
    sd["weight_hh_l0"] = np.zeros((7, 4), np.float32)
    safetensors.numpy.save_file(sd, str(f))
    assert cli.main(["convert", str(f), "-o", str(tmp_path / "o.lstm")]) == 2
    assert "weight_hh_l0: shape (7, 4) fits no recurrent layer" in capsys.readouterr().err
    assert not (tmp_path / "o.lstm").exists()


def test_version():
    import lstm_infer

    res = subprocess.run([sys.executable, "-m", "lstm_infer", "--version"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"lstm-infer {lstm_infer.__version__}\n", "")


def test_verify_names_a_missing_class(family, monkeypatch, capsys):
    pytest.importorskip("torch")
    import lstm_infer

    monkeypatch.delattr(lstm_infer, "GRU", raising=False)
    assert cli.main(["verify", family["gru.pt"][0]]) == 2
    assert f"this lstm_infer ({lstm_infer.__version__}) has no GRU class to verify" in capsys.readouterr().err


# ---------------------------------- verify for every kind: NEEDS the lead's li.GRU etc.

LAYER_CASES = ("equal", "equal+hx", "ragged", "ragged+hx")
CELL_CASES = ("batched", "batched+hx", "unbatched", "unbatched+hx")
TENSORS = {"LSTM": ("output", "h_n", "c_n"), "GRU": ("output", "h_n"), "RNN": ("output", "h_n"),
           "LSTMCell": ("h1", "c1"), "GRUCell": ("h1",), "RNNCell": ("h1",)}


def _verified(out, kind):
    lines = out.splitlines()
    for case in (CELL_CASES if kind.endswith("Cell") else LAYER_CASES):
        for t in TENSORS[kind]:
            assert any(line.split()[:2] == [case, t] for line in lines), (case, t, out)
    assert f"against torch.nn.{kind} " in lines[0]
    assert "PASS: max abs error" in out


# (file, prefix, options, kind)
VERIFY = [("gru.pt", "", [], "GRU"), ("rnn_relu_legacy.pt", "", ["--nonlinearity", "relu"], "RNN"),
          ("rnn_tanh_nobias.pt", "", [], "RNN"), ("cells.pt", "lstmcell", [], "LSTMCell"),
          ("cells.pt", "grucell", [], "GRUCell"), ("cells.pt", "rnncell", ["--nonlinearity", "relu"], "RNNCell"),
          ("tagger.pt", "gru", [], "GRU")]


@pytest.mark.parametrize("name, prefix, opts, kind", VERIFY, ids=[f"{v[0]}-{v[3]}" for v in VERIFY])
def test_verify_every_kind(family, name, prefix, opts, kind, capsys):  # NEEDS li.GRU etc.
    _family()
    argv = ["verify", family[name][0]] + (["--prefix", prefix] if prefix else []) + opts
    assert cli.main(argv) == 0, capsys.readouterr()
    _verified(capsys.readouterr().out, kind)


def test_verify_cell_fixture_and_convert_verify(family, tmp_path, capsys):  # NEEDS li.GRU etc.
    _family()
    assert cli.main(["verify", path("cell.pt")]) == 0
    _verified(capsys.readouterr().out, "LSTMCell")
    out = tmp_path / "g.lstm"
    assert cli.main(["convert", family["gru.pt"][0], "-o", str(out), "--batch-first", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "batch_first=True" in text
    _verified(text[text.index("verify "):], "GRU")


def test_verify_relu_rnn_as_tanh_fails_against_nothing_but_says_so(family, capsys):  # NEEDS li.GRU etc.
    """A state dict cannot say relu: verify compares like with like, and prints the assumption."""
    _family()
    assert cli.main(["verify", family["rnn_relu_legacy.pt"][0]]) == 0
    out = capsys.readouterr().out
    assert "note: nonlinearity is not stored in a state dict: assuming 'tanh'" in out
    assert "RNN(input_size=5, hidden_size=4, num_layers=2, nonlinearity='tanh'" in out


def test_verify_gru_fails_above_tolerance(family, monkeypatch, capsys):  # NEEDS li.GRU etc.
    li = _family()
    real_call = li.GRU.__call__

    def perturbed(self, *a, **k):
        out, h = real_call(self, *a, **k)
        return out, h + 1e-3

    monkeypatch.setattr(li.GRU, "__call__", perturbed)
    assert cli.main(["verify", family["gru.pt"][0], "--tol", "1e-4"]) == 1
    assert "FAIL: max abs error 1.000e-03 > 0.0001" in capsys.readouterr().out


# ---------- the verify harness itself, for every kind, with a stand-in for the engine's class

def _standin(kind):
    """A class with the API of li.<kind>, computed by torch one sequence at a time (no packing):
    an independent statement of the ragged semantics the harness compares against."""
    import torch

    cell = kind.endswith("Cell")

    class StandIn:
        def __init__(self, **cfg):
            self.batch_first = cfg.get("batch_first", False)
            args = {k: v for k, v in cfg.items() if k != "batch_first"}
            self.net = getattr(torch.nn, kind)(**args).eval()

        def load_state_dict(self, sd, strict=True):
            self.net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=strict)

        def __call__(self, x, hx=None, lengths=None):
            t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
            with torch.no_grad():
                if cell:
                    res = self.net(t(x), tuple(map(t, hx)) if kind == "LSTMCell" and hx is not None else t(hx))
                    return tuple(r.numpy() for r in res) if kind == "LSTMCell" else res.numpy()
                if self.batch_first:
                    x = x.transpose(1, 0, 2)
                T, B = x.shape[:2]
                lengths = [T] * B if lengths is None else lengths
                outs, hs, cs = [], [], []
                for b in range(B):
                    L = int(lengths[b])
                    h0 = None if hx is None else (tuple(t(h[:, b:b + 1]) for h in hx) if kind == "LSTM"
                                                  else t(hx[:, b:b + 1]))
                    out, h = self.net(t(x[:L, b:b + 1]), h0)
                    if kind == "LSTM":
                        h, c = h
                        cs.append(c.numpy())
                    outs.append(np.concatenate([out.numpy(), np.zeros((T - L,) + out.shape[1:], np.float32)]))
                    hs.append(h.numpy())
                out = np.concatenate(outs, axis=1)
                if self.batch_first:
                    out = out.transpose(1, 0, 2)
                h = np.concatenate(hs, axis=1)
                return (out, (h, np.concatenate(cs, axis=1))) if kind == "LSTM" else (out, h)

    return StandIn


@pytest.mark.parametrize("name, prefix, opts, kind", VERIFY + [("gru.pt", "", [], "GRU-batch-first")],
                         ids=[f"{v[0]}-{v[3]}" for v in VERIFY] + ["gru.pt-batch-first"])
def test_verify_harness_with_a_stand_in(family, tmp_path, monkeypatch, name, prefix, opts, kind, capsys):
    pytest.importorskip("torch")
    import lstm_infer

    batch_first = kind.endswith("-batch-first")
    kind = kind.split("-")[0]
    monkeypatch.setattr(lstm_infer, kind, _standin(kind), raising=False)
    src = family[name][0]
    if batch_first:  # through a converted model file that stores batch_first=True
        src = str(tmp_path / "bf.lstm")
        assert cli.main(["convert", family[name][0], "-o", src, "--batch-first"]) == 0
    argv = ["verify", src] + (["--prefix", prefix] if prefix else []) + opts
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    _verified(out[out.index("verify "):], kind)
    # and the harness notices a wrong answer
    real = lstm_infer.__dict__[kind].__call__

    def wrong(self, *a, **k):
        res = real(self, *a, **k)
        if isinstance(res, np.ndarray):
            return res + 1e-3
        first, rest = res  # (output, state) or LSTMCell's (h1, c1)
        return first + 1e-3, rest

    monkeypatch.setattr(lstm_infer.__dict__[kind], "__call__", wrong)
    assert cli.main(argv) == 1
    assert re.search(r"FAIL: max abs error 1\.00\de-03 > 1e-05", capsys.readouterr().out)
