#!/usr/bin/env python3
"""A streaming burst detector: a small GRU, trained with torch
(tools/make_stream_detector.py) and bundled as examples/detector.pt, runs over
a long noisy signal one 2 ms frame at a time with model.stream(), NumPy only,
and prints its decisions as they come.

    python examples/stream_detector.py [seconds of signal, default 30]

The file is read without torch (lstm_infer's safe torch.save reader); the
readout (an nn.Linear(24, 1)) is one dot product in NumPy.
"""
import os
import sys
import time

import numpy as np

import lstm_infer as li
from lstm_infer.readers import read_tensors

FRAME, RATE = 16, 8000           # 16 samples at 8 kHz: a 2 ms frame
ON, OFF = 3, 10                  # frames above / below threshold to switch state
HERE = os.path.dirname(os.path.abspath(__file__))


def make_signal(frames, rng):
    """Gaussian noise with tone bursts of 40-400 ms; (frames, FRAME), (frames,) labels.
    (The generator the detector was trained on, copied from tools/make_stream_detector.py.)"""
    n = frames * FRAME
    x = rng.standard_normal(n).astype(np.float32)
    label = np.zeros(n, np.float32)
    t = int(rng.integers(0, 200 * FRAME))
    while t < n:
        length = int(rng.integers(20, 200)) * FRAME
        freq = rng.uniform(300, 2000)
        amp = rng.uniform(0.8, 2.5)
        end = min(n, t + length)
        k = np.arange(end - t)
        x[t:end] += amp * np.sin(2 * np.pi * freq * k / RATE + rng.uniform(0, 2 * np.pi))
        label[t:end] = 1
        t = end + int(rng.integers(50, 600)) * FRAME
    return x.reshape(frames, FRAME), label.reshape(frames, FRAME).max(axis=1)


def events(on):
    """(start, end) frame pairs of the runs of True in a 0/1 sequence."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def main(seconds=30.0):
    li.set_num_threads(1)
    sd = read_tensors(os.path.join(HERE, "detector.pt"))
    gru = li.GRU.from_state_dict(sd, prefix="gru.")
    w, b = sd["head.weight"][0], float(sd["head.bias"][0])
    print(f"detector: {gru} + linear readout, {li.get_isa()} kernels")

    frames = int(seconds * RATE / FRAME)
    signal, truth = make_signal(frames, np.random.default_rng(2026))

    st = gru.stream()                       # batch_size 1: x is one (16,) frame
    active, run, start = False, 0, 0
    found, step_time = [], 0.0
    decisions = np.zeros(frames, bool)
    for i in range(frames):                 # frames arrive one by one
        t0 = time.perf_counter()
        h = st(signal[i])                   # the GRU's state is carried by the stream
        logit = float(h @ w) + b
        step_time += time.perf_counter() - t0
        above = logit > 0
        run = run + 1 if above != active else 0
        if not active and run >= ON:        # a few frames of evidence before switching
            active, run, start = True, 0, i - ON + 1
            print(f"{i * FRAME / RATE:8.3f} s  burst START (from "
                  f"{start * FRAME / RATE:.3f} s)", flush=True)
        elif active and run >= OFF:
            active, run = False, 0
            end = i - OFF + 1
            found.append((start, end))
            print(f"{i * FRAME / RATE:8.3f} s  burst END   "
                  f"({(end - start) * FRAME / RATE * 1e3:.0f} ms long)", flush=True)
        decisions[i] = active
    if active:
        found.append((start, frames))

    true = events(truth > 0)
    hit = sum(any(s < e2 and s2 < e for s2, e2 in found) for s, e in true)
    false = sum(not any(s < e2 and s2 < e for s2, e2 in true) for s, e in found)
    print(f"\n{frames} frames ({seconds:g} s of signal): {len(true)} true bursts, "
          f"{hit} detected, {false} false alarms; frame accuracy "
          f"{np.mean(decisions == (truth > 0)):.3f}")
    print(f"{step_time / frames * 1e6:.1f} us per frame (stream step + readout), "
          f"{frames * FRAME / RATE / step_time:,.0f}x faster than real time")

    # the stream gave exactly what one call over the whole signal gives
    whole, _ = gru(signal[:, None, :])
    st.reset()
    chunked = np.concatenate([st(signal[a:a + 1000, None, :]) for a in range(0, frames, 1000)])
    assert np.array_equal(whole, chunked), "streaming differs from the whole-signal call"
    print("chunked streaming == one call over the whole signal: yes")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
