#!/usr/bin/env python3
"""Runs the bundled sentiment classifier, a whole model (Embedding -> bidirectional
LSTM -> final hidden state -> Linear -> Softmax), with NumPy only.

    lstm-infer convert examples/classifier.pt -o classifier.lstm --pipeline "embedding > lstm > final > fc > softmax"
    python examples/classify.py classifier.lstm ["your sentence" ...]

The model was trained by tools/make_classifier_example.py on toy reviews whose
last clause decides ("the plot was dull but the acting was not bad" is positive).
"""
import json
import os
import sys

import numpy as np

import lstm_infer as li

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCES = [
    "the movie was great",
    "the plot was not good",
    "the acting was dull but the music was brilliant",
    "i think the story was very moving but the ending was awful",
    "honestly the film was never boring",
    "the cast seemed quite silly but the dialogue was not bad",
]

with open(os.path.join(HERE, "classifier_vocab.json")) as fh:
    meta = json.load(fh)
ids = {w: i for i, w in enumerate(meta["vocab"])}
model = li.load(sys.argv[1] if len(sys.argv) > 1 else "classifier.lstm")
print("loaded", model)

sentences = sys.argv[2:] or SENTENCES
tokens = [[ids.get(w, ids["<unk>"]) for w in s.lower().split()] for s in sentences]
lengths = np.array([len(t) for t in tokens])
batch = np.zeros((lengths.max(), len(tokens)), np.int64)  # (T, B), 0 pads
for b, t in enumerate(tokens):
    batch[:len(t), b] = t
probs = model(batch, lengths=lengths)                     # (B, 2): one row per sentence
for s, p in zip(sentences, probs):
    k = int(p.argmax())
    print(f"{meta['labels'][k]:>8} {p[k]:.3f}  {s}")
