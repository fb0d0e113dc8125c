#!/usr/bin/env python3
"""Trains the small burst detector that examples/stream_detector.py streams, with
real torch, for a few seconds, and writes examples/detector.pt (torch.save of
the state dict: gru.* of an nn.GRU(16, 24) and head.* of an nn.Linear(24, 1)).

The task: a signal of Gaussian noise sampled at 8 kHz, cut into frames of 16
samples (2 ms), with bursts of a tone (a few hundred Hz to 2 kHz, random
amplitude) lasting 40 to 400 ms. The detector sees one frame at a time and says
for each frame whether a burst is on.

    python tools/make_stream_detector.py            # writes examples/detector.pt

The signal generator is shared with the example (examples/stream_detector.py
imports nothing from here; it has its own copy of make_signal).
"""
import os
import sys
import time

import numpy as np
import torch

FRAME = 16
RATE = 8000
HIDDEN = 24
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "examples", "detector.pt")


def make_signal(frames, rng):
    """(frames, FRAME) float32 signal and (frames,) 0/1 labels: is a burst on."""
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


class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(FRAME, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, 1)

    def forward(self, x):
        return self.head(self.gru(x)[0])[..., 0]


def main(seconds=20.0):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    model = Detector()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = [make_signal(500, rng) for _ in range(16)]
        x = torch.from_numpy(np.stack([b[0] for b in batch], 1))    # (T, B, FRAME)
        y = torch.from_numpy(np.stack([b[1] for b in batch], 1))
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    model.eval()
    x, y = make_signal(5000, np.random.default_rng(1))
    with torch.inference_mode():
        pred = model(torch.from_numpy(x)[:, None])[:, 0].numpy() > 0
    print(f"held-out frame accuracy {np.mean(pred == (y > 0)):.3f} after {step} steps")
    torch.save(model.state_dict(), OUT)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
