#!/usr/bin/env python3
"""Trains the small text classifier that the README's first command converts and
runs, with real torch, for a few seconds, and writes

    examples/classifier.pt          torch.save of a checkpoint {"model": state_dict, "epoch": n}
    examples/classifier_vocab.json  the vocabulary (token id = position), labels, pipeline
    tests/data/classifier_ref.npz   torch's own outputs on a ragged batch, in the convention of
                                    ``lstm-infer verify --inputs/--outputs``: x (T, B) token ids,
                                    lengths (B,) (1 and T among them), y (B, 2) probabilities

The model: ``Embedding(V, 24, padding_idx=0) -> LSTM(24, 32, bidirectional) ->
final hidden state (h_n[-2], h_n[-1] concatenated) -> Linear(64, 2) -> Softmax``,
state-dict names ``embedding.*``, ``lstm.*``, ``fc.*``; the pipeline that rebuilds
it is ``embedding > lstm > final > fc > softmax``.

The task (a toy review sentiment): sentences of one to three clauses such as
"the plot was not very good but the acting was brilliant"; the label is the
polarity of the last clause, flipped by "not"/"never". Order and negation
matter, so a bag of words cannot solve it.

    python tools/make_classifier_example.py [SECONDS]     # default 8 s of training
"""
import json
import os
import sys
import time

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "examples", "classifier.pt")
VOCAB_OUT = os.path.join(ROOT, "examples", "classifier_vocab.json")
REF_OUT = os.path.join(ROOT, "tests", "data", "classifier_ref.npz")
PIPELINE = "embedding > lstm > final > fc > softmax"
LABELS = ["negative", "positive"]

NOUNS = ["movie", "film", "plot", "acting", "story", "music", "ending", "cast", "dialogue"]
POSITIVE = ["good", "great", "fun", "excellent", "lovely", "brilliant", "moving"]
NEGATIVE = ["bad", "boring", "awful", "dull", "poor", "terrible", "silly"]
INTENSIFIERS = ["very", "really", "quite", "so"]
NEGATIONS = ["not", "never"]
VERBS = ["was", "is", "felt", "seemed"]
FILLERS = ["i", "think", "honestly", "overall", "and"]
# 0 pads (padding_idx=0), 1 stands for words not in the vocabulary
VOCAB = (["<pad>", "<unk>", "the", "but"] + NOUNS + POSITIVE + NEGATIVE + INTENSIFIERS + NEGATIONS
         + VERBS + FILLERS)
IDS = {w: i for i, w in enumerate(VOCAB)}


def clause(rng):
    """(words, polarity 0/1) of one clause."""
    positive = rng.random() < 0.5
    words = ["the", NOUNS[rng.integers(len(NOUNS))], VERBS[rng.integers(len(VERBS))]]
    negated = rng.random() < 0.4
    if negated:
        words.append(NEGATIONS[rng.integers(len(NEGATIONS))])
    if rng.random() < 0.4:
        words.append(INTENSIFIERS[rng.integers(len(INTENSIFIERS))])
    pool = POSITIVE if positive else NEGATIVE
    words.append(pool[rng.integers(len(pool))])
    return words, int(positive != negated)


def sentence(rng):
    """(words, label): one to three clauses joined by "but"; the last one decides."""
    words = []
    if rng.random() < 0.3:
        words += ["i", "think"] if rng.random() < 0.5 else [FILLERS[rng.integers(2, len(FILLERS) - 1)]]
    label = 0
    for k in range(int(rng.integers(1, 4))):
        if k:
            words.append("but")
        w, label = clause(rng)
        words += w
    return words, label


def encode(words):
    return [IDS.get(w, IDS["<unk>"]) for w in words]


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(len(VOCAB), 24, padding_idx=0)
        self.lstm = torch.nn.LSTM(24, 32, bidirectional=True)
        self.fc = torch.nn.Linear(64, len(LABELS))
        self.softmax = torch.nn.Softmax(dim=-1)

    def logits(self, ids, lengths):
        """ids (T, B) int64 padded with 0; lengths (B,)."""
        packed = pack_padded_sequence(self.embedding(ids), lengths, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.fc(torch.cat([h_n[-2], h_n[-1]], dim=1))

    def forward(self, ids, lengths):
        return self.softmax(self.logits(ids, lengths))


def batch(rng, n):
    sents = [sentence(rng) for _ in range(n)]
    lengths = [len(w) for w, _ in sents]
    ids = np.zeros((max(lengths), n), np.int64)
    for b, (w, _) in enumerate(sents):
        ids[:len(w), b] = encode(w)
    return (torch.from_numpy(ids), torch.tensor(lengths),
            torch.tensor([y for _, y in sents]), [" ".join(w) for w, _ in sents])


def main(seconds=8.0):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        ids, lengths, y, _ = batch(rng, 64)
        loss = loss_fn(model.logits(ids, lengths), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    model.eval()
    ids, lengths, y, _ = batch(np.random.default_rng(1), 2000)
    with torch.inference_mode():
        pred = model(ids, lengths).argmax(1)
    print(f"held-out accuracy {float((pred == y).float().mean()):.3f} after {step} steps")
    ids, lengths, _, _ = batch(np.random.default_rng(2), 16)
    lengths[0], lengths[1] = 1, ids.shape[0]  # a one-token sentence and a full-length one
    ids[1:, 0] = 0
    with torch.inference_mode():
        probs = model(ids, lengths).numpy()
    torch.save({"model": model.state_dict(), "epoch": step}, OUT)
    with open(VOCAB_OUT, "w") as fh:
        json.dump({"pipeline": PIPELINE, "labels": LABELS, "vocab": VOCAB}, fh, indent=1)
        fh.write("\n")
    np.savez(REF_OUT, x=ids.numpy(), lengths=lengths.numpy(), y=probs)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes), {VOCAB_OUT} and {REF_OUT}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 8.0)
