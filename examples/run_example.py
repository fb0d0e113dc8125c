#!/usr/bin/env python3
"""Runs a converted model on a ragged batch with NumPy only.

    lstm-infer convert examples/tagger.pt -o tagger.lstm --prefix encoder --batch-first
    python examples/run_example.py tagger.lstm
"""
import sys
import time

import numpy as np

import lstm_infer as li

model = li.load(sys.argv[1] if len(sys.argv) > 1 else "tagger.lstm")
print("loaded", model, "| kernels:", li.get_isa(), "| threads:", li.get_num_threads())

rng = np.random.default_rng(0)
B, T = 32, 50
lengths = rng.integers(1, T + 1, B)
x = rng.standard_normal((B, T, model.input_size) if model.batch_first
                        else (T, B, model.input_size)).astype(np.float32)
output, (h_n, c_n) = model(x, lengths=lengths)
print("output", output.shape, "h_n", h_n.shape, "c_n", c_n.shape)

calls, start = 0, time.perf_counter()
while time.perf_counter() - start < 1.0:
    model(x, lengths=lengths)
    calls += 1
elapsed = time.perf_counter() - start
print(f"{calls * B / elapsed:,.0f} sequences/s ({int(lengths.sum())} valid steps per batch of {B})")
