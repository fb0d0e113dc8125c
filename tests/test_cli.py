"""The lstm-infer command line: inspect, convert (without torch), verify, user errors."""

import json
import os
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


def test_converted_without_torch_match_torch_outputs(converted):
    """The weights in each converted file reproduce torch's outputs (NumPy equations)."""
    for out, name, prefix, info in converted:
        cfg, sd = modelfile.read_model(out)
        assert {k: cfg[k] for k in info["config"]} == info["config"], name
        assert cfg["batch_first"] is False
        check_against_ref(lambda x, hx, lengths: np_lstm(sd, cfg, x, hx, lengths), ref(info["ref"]))


def test_converted_without_torch_run_by_engine(converted):
    """The same files loaded by li.load's code path and run by our engine."""
    engine()
    for out, name, prefix, info in converted:
        m = modelfile.load_model(out)

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
    assert modelfile.read_model(out)[0]["batch_first"] is True


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
            line = f"  {where} {kind}(" + ", ".join(f"{k}={cfg[k]}" for k in
                                                      ("input_size", "hidden_size", "num_layers", "bias",
                                                       "bidirectional", "proj_size")) + ")"
            assert line in text.splitlines(), (name, text)
            assert f"{params} parameters, dtype {info.get('dtype', 'torch.float32')[len('torch.'):]}" in text


def test_inspect_reports_other_tensors_and_broken_lstms(capsys, tmp_path):
    assert cli.main(["inspect", path("encdec.pt")]) == 0
    assert "7 other tensor(s) not part of an LSTM" in capsys.readouterr().out
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
    (lambda t: ["convert", path("encdec.pt"), "-o", str(t / "o.lstm")], "found 2 LSTMs: 'decoder.' (LSTM), 'encoder.' (LSTM); choose one by prefix"),
    (lambda t: ["convert", path("encdec.pt"), "-o", str(t / "o.lstm"), "--prefix", "gru"], "no LSTM at prefix 'gru'"),
    (lambda t: ["convert", str(_evil(t)), "-o", str(t / "o.lstm")], "refusing to load global 'posix.system'"),
    (lambda t: ["convert", path("uni.pt"), "-o", str(t / "no" / "dir" / "o.lstm")], "No such file or directory"),
    (lambda t: ["verify", path("ref_missing.pt")], "No such file or directory"),
    (lambda t: ["convert", path("uni.ref.npz"), "-o", str(t / "o.lstm")], "no LSTM or LSTMCell parameters found"),
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


@pytest.mark.parametrize("name, prefix", [("proj.pt", ""), ("encdec_legacy.pt", "decoder"),
                                          ("cell.pt", ""), ("bf16.pt", "")])
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
