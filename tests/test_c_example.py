"""examples/c/lstm_run from C: a real torch.save file converted with the CLI, run by the
C program on .npy input (ragged lengths, batch_first, unbatched input, cells), must
match the Python API and PyTorch itself (<= 1e-5)."""
import json
import os
import subprocess

import numpy as np
import pytest

import lstm_infer
from lstm_infer import cli

from clib_helpers import ROOT, build_dir, have_toolchain

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not have_toolchain(), reason="needs make and a C compiler")
from torch_ref import torch_cell, torch_forward, torch_forward_h  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures")
TOL = 1e-5
# fixture, and whether to run it on unbatched input (the first sequence alone)
CASES = [("bi_proj_bf_ragged", False), ("stack3_bi_proj", False), ("stack3_bi_proj", True),
         ("family/gru_bi_ragged_hx", False), ("family/rnn_relu_stack3_bi_ragged_hx", False),
         ("family/rnn_tanh_stack2_nobias_bf", False), ("family/gru_uni_equal", True),
         ("family/lstmcell_hx", False), ("family/grucell_nobias_unbatched_hx", False),
         ("family/rnncell_relu_nobias_unbatched", False)]


def torch_outputs(kind, config, state_dict, x, lengths):
    """What torch returns, by the names lstm_run writes."""
    net = getattr(torch.nn, kind)(**config).eval()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    if kind.endswith("Cell"):
        res = torch_cell(torch, net, x)
        return dict(zip(("h_1", "c_1"), res if isinstance(res, tuple) else (res,)))
    unbatched = x.ndim == 2
    if unbatched:  # torch's unbatched call is a batch of one
        x = x[None] if config.get("batch_first") else x[:, None]
    if kind == "LSTM":
        out = dict(zip(("output", "h_n", "c_n"), torch_forward(torch, net, x, lengths)))
    else:
        out = dict(zip(("output", "h_n"), torch_forward_h(torch, net, x, lengths)))
    if unbatched:
        out = {k: v[0] if (k == "output" and config.get("batch_first")) else v[:, 0] if k == "output"
               else v[:, 0] for k, v in out.items()}
    return out


def python_outputs(kind, model, x, lengths):
    if kind.endswith("Cell"):
        res = model(x)
        return dict(zip(("h_1", "c_1"), res if isinstance(res, tuple) else (res,)))
    output, state = model(x, lengths=lengths) if lengths is not None else model(x)
    states = state if isinstance(state, tuple) else (state,)
    return dict(zip(("output", "h_n", "c_n"), (output,) + states))


def run_example(tmp_path, x, lengths):
    """lstm_run on tmp_path/model.lstm with x (and lengths): its outputs land in tmp_path."""
    np.save(tmp_path / "x.npy", x)
    cmd = [os.path.join(build_dir(), "lstm_run"), str(tmp_path / "model.lstm"), str(tmp_path / "x.npy"),
           str(tmp_path)]
    if lengths is not None:
        np.save(tmp_path / "lengths.npy", lengths.astype(np.int64))
        cmd.append(str(tmp_path / "lengths.npy"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name,unbatched", CASES)
def test_example_matches_python_and_torch(tmp_path, name, unbatched):
    pt = os.path.join(FIX, name + ".pt")
    ref = np.load(os.path.join(FIX, name + ".npz"))
    cfg = json.loads(str(ref["config"]))
    kind = cfg.pop("kind", "LSTM")
    argv = ["convert", pt, "-o", str(tmp_path / "model.lstm")]
    if cfg.get("nonlinearity"):
        argv += ["--nonlinearity", cfg["nonlinearity"]]
    if cfg.get("batch_first"):
        argv.append("--batch-first")
    assert cli.main(argv) == 0

    x = ref["x"]
    lengths = ref["lengths"] if "lengths" in ref and not unbatched else None
    if unbatched:
        x = np.ascontiguousarray(x[0] if cfg.get("batch_first") else x[:, 0])
    run_example(tmp_path, x, lengths)

    model = lstm_infer.load(str(tmp_path / "model.lstm"))
    want_py = python_outputs(kind, model, x, lengths)
    sd = torch.load(pt, weights_only=True)
    want_torch = torch_outputs(kind, dict(model.config) if hasattr(model, "config") else cfg, sd, x, lengths)
    assert set(want_py) == set(want_torch)
    for key in want_py:
        got = np.load(tmp_path / f"{key}.npy")
        assert got.dtype == np.float32 and got.shape == want_torch[key].shape, (key, got.shape)
        np.testing.assert_allclose(got, want_py[key], rtol=0, atol=TOL, err_msg=key)
        np.testing.assert_allclose(got, want_torch[key], rtol=0, atol=TOL, err_msg=key)


@pytest.mark.parametrize("weights", ["float16", "int8"])
@pytest.mark.parametrize("name", ["stack3_bi_proj", "family/gru_bi_ragged_hx", "family/rnn_tanh_stack2_nobias_bf",
                                  "family/lstmcell_hx"])
def test_example_runs_reduced_files(tmp_path, name, weights):
    """A file converted with --weights: lstm_run agrees with the Python API on it (the
    same stored weights, the same kernels), and with float32 torch within the storage's
    tolerance."""
    pt = os.path.join(FIX, name + ".pt")
    ref = np.load(os.path.join(FIX, name + ".npz"))
    cfg = json.loads(str(ref["config"]))
    kind = cfg.pop("kind", "LSTM")
    argv = ["convert", pt, "-o", str(tmp_path / "model.lstm"), "--weights", weights]
    if cfg.get("batch_first"):
        argv.append("--batch-first")
    assert cli.main(argv) == 0
    x, lengths = ref["x"], ref["lengths"] if "lengths" in ref else None
    run_example(tmp_path, x, lengths)
    model = lstm_infer.load(str(tmp_path / "model.lstm"))
    assert model.weights == weights
    want_py = python_outputs(kind, model, x, lengths)
    want_torch = torch_outputs(kind, dict(model.config), torch.load(pt, weights_only=True), x, lengths)
    for key in want_py:
        got = np.load(tmp_path / f"{key}.npy")
        assert np.array_equal(got, want_py[key]), key
        np.testing.assert_allclose(got, want_torch[key], rtol=0, atol=cli.TOLERANCES[weights], err_msg=key)


def test_example_refuses_bad_input(tmp_path):
    model = os.path.join(ROOT, "tests", "fuzz", "corpus", "valid-lstm")  # LSTM, input_size 3
    run = os.path.join(build_dir(), "lstm_run")
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 4), np.float32))
    proc = subprocess.run([run, model, str(tmp_path / "x.npy"), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "expected shape" in proc.stderr
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 3), np.float64))
    proc = subprocess.run([run, model, str(tmp_path / "x.npy"), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "float32" in proc.stderr
    proc = subprocess.run([run, os.path.join(ROOT, "tests", "fuzz", "corpus", "bad-truncated"),
                           str(tmp_path / "x.npy"), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "not a valid lstm_infer model file" in proc.stderr
    assert not os.path.exists(tmp_path / "output.npy")
