#!/usr/bin/env python3
"""Writes tests/fixtures/: small nn.LSTM models saved by real torch.save, with
inputs and PyTorch's own outputs, so the parity tests run where torch is absent.

    python tools/make_fixtures.py      # needs torch==2.13.0

Each case is <name>.pt (the state_dict) and <name>.npz (config, x, lengths,
h_0, c_0 and torch's output, h_n, c_n). Also examples/tagger.pt, the model
the README runs.
"""
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from torch_ref import torch_forward  # noqa: E402

# name: (config, T, B, lengths or None, with hx)
CASES = {
    "uni_equal": (dict(input_size=37, hidden_size=50), 7, 3, None, False),
    "bi_ragged_hx": (dict(input_size=37, hidden_size=50, bidirectional=True), 9, 5,
                     [9, 1, 0, 4, 9], True),
    "stack3_bi_proj": (dict(input_size=13, hidden_size=20, num_layers=3, bidirectional=True,
                            proj_size=7), 8, 4, [8, 3, 1, 6], True),
    "stack2_nobias_bf": (dict(input_size=5, hidden_size=33, num_layers=2, bias=False,
                              batch_first=True), 6, 1, [6], False),
    "bi_proj_bf_ragged": (dict(input_size=37, hidden_size=50, num_layers=2, bidirectional=True,
                               proj_size=17, batch_first=True), 10, 7, [10, 2, 5, 0, 7, 1, 10],
                          False),
}


def make(name, cfg, T, B, lengths, hx, seed):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(**cfg).eval()
    rng = np.random.default_rng(seed)
    bf = cfg.get("batch_first", False)
    x = rng.standard_normal((B, T, cfg["input_size"]) if bf else (T, B, cfg["input_size"]),
                            dtype=np.float32)
    D = 2 if cfg.get("bidirectional") else 1
    slots = cfg.get("num_layers", 1) * D
    state = None
    if hx:
        state = (rng.standard_normal((slots, B, cfg.get("proj_size") or cfg["hidden_size"]),
                                     dtype=np.float32),
                 rng.standard_normal((slots, B, cfg["hidden_size"]), dtype=np.float32))
    out, h_n, c_n = torch_forward(torch, lstm, x, lengths, state)
    torch.save(lstm.state_dict(), os.path.join(ROOT, "tests", "fixtures", name + ".pt"))
    arrays = dict(x=x, output=out, h_n=h_n, c_n=c_n, config=np.array(json.dumps(cfg)))
    if lengths is not None:
        arrays["lengths"] = np.array(lengths, np.int64)
    if state is not None:
        arrays["h_0"], arrays["c_0"] = state
    np.savez(os.path.join(ROOT, "tests", "fixtures", name + ".npz"), **arrays)


def main():
    os.makedirs(os.path.join(ROOT, "tests", "fixtures"), exist_ok=True)
    for seed, (name, (cfg, T, B, lengths, hx)) in enumerate(CASES.items()):
        make(name, cfg, T, B, lengths, hx, seed)
    # the bundled example: a 2-layer bidirectional tagger's LSTM, as a full checkpoint
    torch.manual_seed(123)
    lstm = torch.nn.LSTM(40, 64, num_layers=2, bidirectional=True, batch_first=True)
    torch.save({"model": {"encoder." + k: v for k, v in lstm.state_dict().items()}, "epoch": 12},
               os.path.join(ROOT, "examples", "tagger.pt"))
    print("wrote", len(CASES), "fixtures and examples/tagger.pt")


if __name__ == "__main__":
    main()
