"""Write the small weight-file fixtures in tests/data/ with real PyTorch.

    python tools/make_file_fixtures.py [OUT_DIR]

For every case it writes the weight file(s) exactly as PyTorch / safetensors /
NumPy save them, plus ``<case>[.<prefix>].ref.npz`` with a fixed input and
torch's own outputs, so the converter can be checked where torch is absent.
``manifest.json`` lists each file with its format, the LSTM prefixes in it and
each LSTM's config as torch reports it.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import safetensors.torch
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

T, B = 6, 3
LENGTHS = [6, 1, 4]  # includes 1 and T, unsorted


def _config(lstm: torch.nn.LSTM) -> dict:
    return dict(input_size=lstm.input_size, hidden_size=lstm.hidden_size, num_layers=lstm.num_layers,
                bias=lstm.bias, bidirectional=lstm.bidirectional, proj_size=lstm.proj_size)


@torch.no_grad()
def _lstm_refs(lstm: torch.nn.LSTM, seed: int) -> dict:
    """Outputs of a float32 nn.LSTM on a fixed input: full length without hx, ragged with hx."""
    g = torch.Generator().manual_seed(seed)
    d = 2 if lstm.bidirectional else 1
    out_size = lstm.proj_size or lstm.hidden_size
    x = torch.randn(T, B, lstm.input_size, generator=g)
    h0 = torch.randn(lstm.num_layers * d, B, out_size, generator=g)
    c0 = torch.randn(lstm.num_layers * d, B, lstm.hidden_size, generator=g)
    lengths = torch.tensor(LENGTHS)
    out, (hn, cn) = lstm(x)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    pout, (rhn, rcn) = lstm(packed, (h0, c0))
    rout, _ = pad_packed_sequence(pout, total_length=T)
    return {"x": x, "h0": h0, "c0": c0, "lengths": lengths, "out": out, "h_n": hn, "c_n": cn,
            "ragged_out": rout, "ragged_h_n": rhn, "ragged_c_n": rcn}


@torch.no_grad()
def _cell_refs(cell: torch.nn.LSTMCell, seed: int) -> dict:
    """Same inputs and outputs as _lstm_refs, computed with the cell step by step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, cell.input_size, generator=g)
    h0 = torch.randn(1, B, cell.hidden_size, generator=g)
    c0 = torch.randn(1, B, cell.hidden_size, generator=g)
    res = {"x": x, "h0": h0, "c0": c0, "lengths": torch.tensor(LENGTHS)}
    for tag, hx, lengths in (("", None, [T] * B), ("ragged_", (h0, c0), LENGTHS)):
        out = torch.zeros(T, B, cell.hidden_size)
        hn, cn = torch.zeros(1, B, cell.hidden_size), torch.zeros(1, B, cell.hidden_size)
        for b in range(B):
            h = hx[0][0, b:b + 1] if hx else torch.zeros(1, cell.hidden_size)
            c = hx[1][0, b:b + 1] if hx else torch.zeros(1, cell.hidden_size)
            for t in range(lengths[b]):
                h, c = cell(x[t, b:b + 1], (h, c))
                out[t, b] = h[0]
            hn[0, b], cn[0, b] = h[0], c[0]
        res.update({f"{tag}out": out, f"{tag}h_n": hn, f"{tag}c_n": cn})
    return res


def _save_npz(path, tensors):
    np.savez(path, **{k: v.detach().numpy() for k, v in tensors.items()})


def _float32_copy(lstm: torch.nn.LSTM) -> torch.nn.LSTM:
    """The float32 model our engine is meant to match for low/high-precision weights."""
    ref = torch.nn.LSTM(**_config(lstm))
    ref.load_state_dict({k: v.float() for k, v in lstm.state_dict().items()})
    return ref


def _noncontiguous_state_dict(lstm: torch.nn.LSTM) -> dict:
    """The same values, stored as transposed / strided views sharing one storage."""
    sd = lstm.state_dict()
    total = sum(v.numel() for v in sd.values())
    pool = torch.zeros(2 * total + 7)
    out, pos = {}, 3  # non-zero storage offsets
    for k, v in sd.items():
        if v.dim() == 2:  # keep the transpose of a (cols, rows) block: strides (1, rows)
            block = pool[pos:pos + v.numel()].view(v.shape[1], v.shape[0])
            block.copy_(v.t())
            out[k] = block.t()
        else:  # every other element: stride 2
            view = pool[pos:pos + 2 * v.numel()][::2]
            view.copy_(v)
            out[k] = view
        pos += 2 * v.numel()
    assert not any(t.is_contiguous() for t in out.values() if t.dim() == 2)
    return out


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    manifest = {}
    torch.manual_seed(1234)

    def add(file, fmt, lstms, kind="LSTM"):
        manifest[file] = {"format": fmt, "kind": kind, "lstms": lstms}

    def save_torch(obj, stem):
        torch.save(obj, os.path.join(out_dir, f"{stem}.pt"))
        torch.save(obj, os.path.join(out_dir, f"{stem}_legacy.pt"), _use_new_zipfile_serialization=False)

    variants = {
        "uni": dict(input_size=5, hidden_size=7),
        "bi": dict(input_size=5, hidden_size=6, bidirectional=True),
        "layers2": dict(input_size=4, hidden_size=5, num_layers=2),
        "nobias": dict(input_size=5, hidden_size=6, num_layers=2, bias=False),
        "proj": dict(input_size=4, hidden_size=8, num_layers=2, bidirectional=True, proj_size=3),
    }
    for seed, (name, kw) in enumerate(variants.items()):
        lstm = torch.nn.LSTM(**kw).eval()
        save_torch(lstm.state_dict(), name)
        _save_npz(os.path.join(out_dir, f"{name}.ref.npz"), _lstm_refs(lstm, seed))
        entry = {"": {"config": _config(lstm), "ref": f"{name}.ref.npz"}}
        add(f"{name}.pt", "torch-zip", entry)
        add(f"{name}_legacy.pt", "torch-legacy", entry)
        if name in ("uni", "proj"):
            sd = {k: v.contiguous() for k, v in lstm.state_dict().items()}
            safetensors.torch.save_file(sd, os.path.join(out_dir, f"{name}.safetensors"))
            add(f"{name}.safetensors", "safetensors", entry)
            _save_npz(os.path.join(out_dir, f"{name}.npz"), sd)
            add(f"{name}.npz", "npz", entry)

    # A training checkpoint wrapping the state dict (plus optimizer state with tensors).
    lstm = torch.nn.LSTM(3, 5, bidirectional=True).eval()
    opt = torch.optim.Adam(lstm.parameters())
    lstm(torch.randn(4, 2, 3))[0].sum().backward()
    opt.step()
    ckpt = {"model": lstm.state_dict(), "epoch": 3, "optimizer": opt.state_dict(), "best_loss": 0.25,
            "notes": ["a", ("tuple", 1)]}
    save_torch(ckpt, "checkpoint")
    _save_npz(os.path.join(out_dir, "checkpoint.ref.npz"), _lstm_refs(lstm, 10))
    entry = {"": {"config": _config(lstm), "ref": "checkpoint.ref.npz"}}
    add("checkpoint.pt", "torch-zip", entry)
    add("checkpoint_legacy.pt", "torch-legacy", entry)
    torch.save({"state_dict": {f"rnn.{k}": v for k, v in lstm.state_dict().items()}},
               os.path.join(out_dir, "checkpoint_state_dict.pt"))
    add("checkpoint_state_dict.pt", "torch-zip", {"rnn.": {"config": _config(lstm), "ref": "checkpoint.ref.npz"}})

    # nn.LSTMCell
    cell = torch.nn.LSTMCell(4, 6)
    save_torch(cell.state_dict(), "cell")
    _save_npz(os.path.join(out_dir, "cell.ref.npz"), _cell_refs(cell, 11))
    cfg = dict(input_size=4, hidden_size=6, num_layers=1, bias=True, bidirectional=False, proj_size=0)
    entry = {"": {"config": cfg, "ref": "cell.ref.npz", "kind": "LSTMCell"}}
    add("cell.pt", "torch-zip", entry)
    add("cell_legacy.pt", "torch-legacy", entry)

    # Two LSTMs (and a GRU that must be ignored) in one module.
    class EncDec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.encoder = torch.nn.LSTM(4, 6, bidirectional=True)
            self.decoder = torch.nn.LSTM(12, 5, num_layers=2, proj_size=2)
            self.gru = torch.nn.GRU(4, 4)
            self.head = torch.nn.Linear(2, 10)

    net = EncDec().eval()
    save_torch(net.state_dict(), "encdec")
    entry = {}
    for i, prefix in enumerate(("encoder", "decoder")):
        sub = getattr(net, prefix)
        _save_npz(os.path.join(out_dir, f"encdec.{prefix}.ref.npz"), _lstm_refs(sub, 20 + i))
        entry[prefix + "."] = {"config": _config(sub), "ref": f"encdec.{prefix}.ref.npz"}
    add("encdec.pt", "torch-zip", entry)
    add("encdec_legacy.pt", "torch-legacy", entry)

    # Half, bfloat16 and double weights: the reference is the float32 model with the same values.
    for i, (name, dtype) in enumerate((("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp64", torch.float64))):
        lstm = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=(name != "fp64")).to(dtype).eval()
        save_torch(lstm.state_dict(), name)
        _save_npz(os.path.join(out_dir, f"{name}.ref.npz"), _lstm_refs(_float32_copy(lstm), 30 + i))
        entry = {"": {"config": _config(lstm), "ref": f"{name}.ref.npz", "dtype": str(dtype)}}
        add(f"{name}.pt", "torch-zip", entry)
        add(f"{name}_legacy.pt", "torch-legacy", entry)

    # Non-contiguous views with storage offsets, all sharing one storage.
    lstm = torch.nn.LSTM(3, 4, bidirectional=True).eval()
    save_torch(_noncontiguous_state_dict(lstm), "noncontig")
    _save_npz(os.path.join(out_dir, "noncontig.ref.npz"), _lstm_refs(lstm, 40))
    entry = {"": {"config": _config(lstm), "ref": "noncontig.ref.npz"}}
    add("noncontig.pt", "torch-zip", entry)
    add("noncontig_legacy.pt", "torch-legacy", entry)

    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"wrote {len(os.listdir(out_dir))} files, {total} bytes, to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
