#!/usr/bin/env python3
"""Writes tests/fixtures/family/: small nn.GRU, nn.RNN (tanh and relu),
nn.LSTMCell, nn.GRUCell and nn.RNNCell models saved by real torch.save, with
inputs and PyTorch's own outputs, so the family parity tests run where torch
is absent.

    python tools/make_family_fixtures.py      # needs torch==2.13.0

Each case is <name>.pt (the module's state_dict(); for one case a checkpoint
{"model": state_dict, "epoch": 3}) and <name>.npz holding
  config  JSON: "kind" (the torch.nn class name) and the constructor arguments
          (nonlinearity for RNN / RNNCell, which the state dict does not record)
  modules x, output, h_n; lengths when ragged; h_0 when given
  cells   x ((B, I) or unbatched (I,)), h_1 (and c_1 for LSTMCell); h_0 (c_0)
          when given
A length of 0 cannot go through pack_padded_sequence: its expected values come
from the documented rule (zeros in output, h_n = h_0), see tests/torch_ref.py.
The files live in a subfolder because tests/test_parity.py reads every
tests/fixtures/*.npz as an nn.LSTM case.
"""
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "family")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from torch_ref import torch_cell, torch_forward_h  # noqa: E402

# name: (kind, constructor config, T, B, lengths or None, with hx, extra)
# For cells T is unused and B = 0 means an unbatched call.
MODULES = {
    "gru_uni_equal": ("GRU", dict(input_size=5, hidden_size=7), 6, 3, None, False),
    "gru_bi_ragged_hx": ("GRU", dict(input_size=5, hidden_size=7, bidirectional=True),
                         7, 5, [7, 1, 0, 3, 7], True),
    "gru_stack3_bi_nobias_bf": ("GRU", dict(input_size=3, hidden_size=6, num_layers=3,
                                            bias=False, batch_first=True, bidirectional=True),
                                5, 4, [5, 2, 1, 0], False),
    "gru_stack2_checkpoint": ("GRU", dict(input_size=4, hidden_size=6, num_layers=2,
                                          batch_first=True), 6, 3, [6, 1, 4], True),
    "rnn_tanh_bi_ragged_hx": ("RNN", dict(input_size=5, hidden_size=7, bidirectional=True),
                              7, 5, [7, 1, 0, 3, 7], True),
    "rnn_tanh_stack2_nobias_bf": ("RNN", dict(input_size=4, hidden_size=6, num_layers=2,
                                              bias=False, batch_first=True), 6, 2, None, False),
    "rnn_relu_stack3_bi_ragged_hx": ("RNN", dict(input_size=3, hidden_size=6, num_layers=3,
                                                 nonlinearity="relu", bidirectional=True),
                                     6, 4, [6, 1, 0, 4], True),
    "rnn_relu_uni_bf_equal": ("RNN", dict(input_size=5, hidden_size=7, nonlinearity="relu",
                                          batch_first=True), 5, 3, None, False),
}
CELLS = {
    "lstmcell_hx": ("LSTMCell", dict(input_size=5, hidden_size=7), 3, True),
    "lstmcell_nobias_unbatched": ("LSTMCell", dict(input_size=5, hidden_size=7, bias=False),
                                  0, False),
    "grucell_hx": ("GRUCell", dict(input_size=5, hidden_size=7), 3, True),
    "grucell_nobias_unbatched_hx": ("GRUCell", dict(input_size=5, hidden_size=7, bias=False),
                                    0, True),
    "rnncell_tanh_hx": ("RNNCell", dict(input_size=5, hidden_size=7), 3, True),
    "rnncell_relu_nobias_unbatched": ("RNNCell", dict(input_size=5, hidden_size=7, bias=False,
                                                      nonlinearity="relu"), 0, False),
}
CHECKPOINTS = {"gru_stack2_checkpoint"}


def save(name, kind, cfg, module, arrays):
    sd = module.state_dict()
    obj = {"model": sd, "epoch": 3} if name in CHECKPOINTS else sd
    torch.save(obj, os.path.join(OUT, name + ".pt"))
    arrays["config"] = np.array(json.dumps(dict(kind=kind, **cfg)))
    np.savez(os.path.join(OUT, name + ".npz"), **arrays)


def make_module(name, kind, cfg, T, B, lengths, hx, seed):
    torch.manual_seed(seed)
    module = getattr(torch.nn, kind)(**cfg).eval()
    rng = np.random.default_rng(seed)
    bf = cfg.get("batch_first", False)
    I, H = cfg["input_size"], cfg["hidden_size"]
    x = rng.standard_normal((B, T, I) if bf else (T, B, I), dtype=np.float32)
    slots = cfg.get("num_layers", 1) * (2 if cfg.get("bidirectional") else 1)
    h0 = rng.standard_normal((slots, B, H), dtype=np.float32) if hx else None
    out, h_n = torch_forward_h(torch, module, x, lengths, h0)
    arrays = dict(x=x, output=out, h_n=h_n)
    if lengths is not None:
        arrays["lengths"] = np.array(lengths, np.int64)
    if h0 is not None:
        arrays["h_0"] = h0
    save(name, kind, cfg, module, arrays)


def make_cell(name, kind, cfg, B, hx, seed):
    torch.manual_seed(seed)
    cell = getattr(torch.nn, kind)(**cfg).eval()
    rng = np.random.default_rng(seed)
    lead = (B,) if B else ()
    x = rng.standard_normal(lead + (cfg["input_size"],), dtype=np.float32)
    arrays = dict(x=x)
    state = None
    if hx:
        shape = lead + (cfg["hidden_size"],)
        if kind == "LSTMCell":
            state = (rng.standard_normal(shape, dtype=np.float32),
                     rng.standard_normal(shape, dtype=np.float32))
            arrays["h_0"], arrays["c_0"] = state
        else:
            state = arrays["h_0"] = rng.standard_normal(shape, dtype=np.float32)
    res = torch_cell(torch, cell, x, state)
    if kind == "LSTMCell":
        arrays["h_1"], arrays["c_1"] = res
    else:
        arrays["h_1"] = res
    save(name, kind, cfg, cell, arrays)


def main():
    os.makedirs(OUT, exist_ok=True)
    seed = 100
    for name, (kind, cfg, T, B, lengths, hx) in MODULES.items():
        make_module(name, kind, cfg, T, B, lengths, hx, seed)
        seed += 1
    for name, (kind, cfg, B, hx) in CELLS.items():
        make_cell(name, kind, cfg, B, hx, seed)
        seed += 1
    print("wrote", len(MODULES) + len(CELLS), "fixtures to", os.path.relpath(OUT, ROOT))


if __name__ == "__main__":
    main()
