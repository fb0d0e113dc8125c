#!/usr/bin/env python3
"""Writes tests/fixtures/seq/: whole models of issue 13's patterns (tests/seq_torch.py)
saved by real torch.save, with a ragged input batch and PyTorch's own outputs, so
that tests/test_sequential_parity.py proves parity where torch is absent.

    python tools/make_seq_fixtures.py      # needs torch==2.13.0

Each case is <name>.pt and <name>.npz. The .pt is the model's state_dict(), or a
full checkpoint, or the legacy (pre-zip) torch.save format, as CASES says. The
.npz holds
  meta     JSON: "model" (the class in tests/seq_torch.py), "pipeline",
           "batch_first", "nonlinearity" (or null)
  x        the padded input: int64 token ids or float32, zero past each length
  lengths  int64, including 1 and T (and 0 where the case says so: torch cannot
           pack it, see seq_torch.expected)
  output   torch's output (per-step results are 0 past each length)
"""
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "seq")
sys.path.insert(0, os.path.join(ROOT, "tests"))
import seq_torch  # noqa: E402

T = 6
# name: (model class, how the weights are saved, lengths)
CASES = {
    "classifier": ("Classifier", "state_dict", [6, 1, 3, 0, 6]),
    "regressor": ("Regressor", "state_dict", [6, 2, 1, 0]),
    "scorer": ("Scorer", "checkpoint", [1, 6, 4, 0, 2]),
    "pooler": ("Pooler", "checkpoint", [3, 6, 0, 1]),
    "tagger": ("Tagger", "legacy", [6, 1, 0, 4, 2]),
    "relu_max": ("ReluMax", "state_dict", [6, 1, 4]),
}


def build(name, cls):
    torch.manual_seed(sum(map(ord, name)))
    model = cls().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):  # torch starts at 1 and 0: make them matter
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def main():
    os.makedirs(OUT, exist_ok=True)
    for i, (name, (cls_name, how, lengths)) in enumerate(CASES.items()):
        cls = seq_torch.MODELS[cls_name]
        model = build(name, cls)
        sd = model.state_dict()
        pt = os.path.join(OUT, name + ".pt")
        if how == "checkpoint":
            key = "model" if i % 2 else "model_state_dict"
            torch.save({key: sd, "epoch": 3, "best_loss": 0.25}, pt)
        elif how == "legacy":
            torch.save(sd, pt, _use_new_zipfile_serialization=False)
        else:
            torch.save(sd, pt)
        x = seq_torch.make_input(cls, model, T, lengths, seed=i)
        meta = dict(model=cls_name, pipeline=cls.PIPELINE, batch_first=cls.BATCH_FIRST,
                    nonlinearity=getattr(cls, "NONLINEARITY", None))
        np.savez(os.path.join(OUT, name + ".npz"), meta=np.array(json.dumps(meta)),
                 x=seq_torch.save_inputs(x), lengths=np.array(lengths, np.int64),
                 output=seq_torch.expected(cls, model, x, lengths).astype(np.float32))
        print(f"wrote {name}: {cls_name} ({how}), lengths {lengths}")


if __name__ == "__main__":
    main()
