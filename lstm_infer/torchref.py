"""PyTorch's answer for a whole model: the pipeline of an lstm_infer.Sequential built
from torch.nn modules with the same weights, run as a torch user would run it.

Imported only by ``lstm-infer verify`` and by tests: it imports torch, which the
runtime never does.

    ref = TorchPipeline(torch, model)        # model: an lstm_infer.Sequential
    y = ref(x, lengths)                       # NumPy in, NumPy out, our layouts

The torch side of each step:
  Embedding, Linear, LayerNorm, activations, Dropout   the torch.nn module (eval mode)
  LSTM / GRU / RNN    ``pack_padded_sequence(x, lengths, batch_first, enforce_sorted=False)``
                      -> module -> ``pad_packed_sequence(total_length=T)``
  readouts            steps: the padded output; last: ``out[lengths - 1, b]``; final:
                      ``h_n[-1]`` or ``cat(h_n[-2], h_n[-1], dim=1)``; mean, max: over
                      each sequence's valid steps
After ``steps`` (or a pipeline ending with recurrent layers), positions past each
length are set to 0, as lstm_infer documents. Lengths must be at least 1: torch
refuses to pack an empty sequence.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["TorchPipeline", "RECURRENT"]

RECURRENT = ("LSTM", "GRU", "RNN")


def _torch_module(torch, module):
    """The torch.nn module of one of our layers (not a readout), weights loaded, eval()."""
    kind, cfg = module.kind, dict(module.config)
    if kind == "LayerNorm":
        cfg["normalized_shape"] = tuple(cfg["normalized_shape"])
    with warnings.catch_warnings():  # torch warns about dropout with one layer; inert in eval()
        warnings.simplefilter("ignore")
        net = getattr(torch.nn, kind)(**cfg)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in module.state_dict().items()}, strict=True)
    return net.eval()


def _readout(torch, mode, out, h_n, lengths, batch_first):
    """(B, F) from the last recurrent layer's padded output (T, B, F) (batch_first:
    (B, T, F)) and its h_n (L*D, B, H), as torch users write these reductions."""
    if mode == "final":
        width = out.shape[-1]
        return h_n[-1] if h_n.shape[-1] == width else torch.cat([h_n[-2], h_n[-1]], dim=1)
    seq = out if batch_first else out.transpose(0, 1)  # (B, T, F)
    B, T = seq.shape[0], seq.shape[1]
    if mode == "last":
        return seq[torch.arange(B), lengths - 1]
    valid = (torch.arange(T)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
    if mode == "mean":
        return (seq * valid).sum(dim=1) / lengths[:, None].to(seq.dtype)
    return seq.masked_fill(~valid, float("-inf")).amax(dim=1)


class TorchPipeline:
    """A Sequential's pipeline in torch: ``ref(x, lengths)`` takes what the Sequential
    takes (token ids or floats, in its layout; lengths (B,) >= 1 or None) and returns
    NumPy float32 in its layout."""

    def __init__(self, torch, model):
        self.torch = torch
        self.batch_first = model.batch_first
        self.steps = []  # (name, kind, torch module or readout mode)
        for name, m in model.layers:
            if m.kind == "Readout":
                self.steps.append((name, m.kind, m.mode))
            else:
                self.steps.append((name, m.kind, _torch_module(torch, m)))

    def __call__(self, x, lengths=None):
        torch, bf = self.torch, self.batch_first
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        t = torch.from_numpy(np.ascontiguousarray(x))
        T, B = (t.shape[1], t.shape[0]) if bf else (t.shape[0], t.shape[1])
        lens = torch.full((B,), T, dtype=torch.int64) if lengths is None else \
            torch.from_numpy(np.asarray(lengths, np.int64))
        per_step, h_n = False, None
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
            for _, kind, step in self.steps:
                if kind in RECURRENT:
                    packed = pack_padded_sequence(t, lens, batch_first=bf, enforce_sorted=False)
                    out, state = step(packed)
                    t, _ = pad_packed_sequence(out, batch_first=bf, total_length=T)
                    h_n = state[0] if kind == "LSTM" else state
                    per_step = True
                elif kind == "Readout":
                    if step != "steps":
                        t = _readout(torch, step, t, h_n, lens, bf)
                        per_step = False
                else:
                    t = step(t)
            y = t.float().numpy().copy()
        if per_step:
            pad = np.arange(T)[:, None] >= lens.numpy()[None, :]  # (T, B)
            y[pad.T if bf else pad] = 0.0
        return y
