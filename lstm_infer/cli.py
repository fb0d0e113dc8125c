"""``lstm-infer`` command line: inspect weight files, convert them, verify against PyTorch.

Exit codes: 0 success, 1 verification above tolerance, 2 user error (bad file,
bad option), 3 torch not installed for ``verify``. Torch is imported only by
``verify``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from . import detect, modelfile, readers

PROG = "lstm-infer"
EXIT_MISMATCH, EXIT_USAGE, EXIT_NO_TORCH = 1, 2, 3


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


def _is_model_file(data: bytes) -> bool:
    if readers.sniff(data) != "safetensors":
        return False
    try:
        _, meta = readers.parse_safetensors(data)
    except ValueError:
        return False
    return bool(meta) and meta.get("format") == modelfile.FORMAT


def _read(path):
    """A file's contents, as a memoryview: the readers take it as contents (not as a
    path, which bytes are to modelfile.read_model). Only regular files are read."""
    from . import fileio

    return memoryview(fileio.read_file(path))


def load_weights(path, prefix=None):
    """(config, float32 state dict under torch names, description) from any supported file."""
    data = _read(path)
    if _is_model_file(data):
        if prefix:
            raise UserError(f"{path} is an lstm_infer model file; it holds one LSTM, --prefix does not apply")
        cfg, sd = modelfile.read_model(data, path)
        return cfg, sd, f"{path} (lstm_infer model file)"
    tensors = readers.read_tensors(data, path)
    try:
        spec = detect.find_one(tensors, prefix)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in detect.lstm_state_dict(tensors, spec).items()}
    cfg = dict(spec.config, batch_first=False, dropout=0.0)
    where = f"prefix {spec.prefix!r}" if spec.prefix else "top level"
    return cfg, sd, f"{path} ({spec.kind} at {where})"


def _fmt_config(cfg):
    keys = ("input_size", "hidden_size", "num_layers", "bias", "bidirectional", "proj_size", "batch_first")
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


# ------------------------------------------------------------------ inspect

def cmd_inspect(args) -> int:
    data = _read(args.file)
    if _is_model_file(data):
        cfg, sd = modelfile.read_model(data, args.file)
        n = sum(v.size for v in sd.values())
        print(f"{args.file}: lstm_infer model file (format_version {modelfile.FORMAT_VERSION})")
        print(f"  LSTM({_fmt_config(cfg)})")
        print(f"  {len(sd)} tensors, {n} parameters, float32")
        return 0
    kind = readers.sniff(data)
    stored = {}
    tensors = readers.read_tensors(data, args.file, stored)
    found = detect.scan(tensors)
    print(f"{args.file}: {kind}, {len(tensors)} tensors, {len(found)} LSTM(s) found")
    used = set()
    for prefix, kind_, res in found:
        where = repr(prefix) if prefix else "(top level)"
        if isinstance(res, ValueError):
            print(f"  {where} {kind_}: INVALID: {res}")
            continue
        used.update(res.keys)
        n = sum(int(np.prod(tensors[k].shape)) for k in res.keys)
        dtypes = sorted({stored[k] for k in res.keys})
        print(f"  {where} {res.kind}({_fmt_config(res.config)})")
        print(f"      {len(res.keys)} tensors, {n} parameters, dtype {', '.join(dtypes)}")
    rest = len(tensors) - len(used)
    if rest:
        print(f"  {rest} other tensor(s) not part of an LSTM")
    return 0


# ------------------------------------------------------------------ convert

def cmd_convert(args) -> int:
    cfg, sd, desc = load_weights(args.file, args.prefix)
    if args.batch_first:
        cfg["batch_first"] = True
    modelfile.write_model(args.output, sd, cfg)
    print(f"wrote {args.output}: LSTM({_fmt_config(cfg)}) from {desc}")
    if args.verify:
        return _verify(args.output, None, args.tol, args.seed)
    return 0


# ------------------------------------------------------------------- verify

def _torch_forward(torch, net, x, lengths, hx, batch_first):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.from_numpy(x)
    hxt = None if hx is None else tuple(torch.from_numpy(h) for h in hx)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
        if lengths is None:
            out, (h, c) = net(xt, hxt)
        else:
            packed = pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=batch_first,
                                          enforce_sorted=False)
            out, (h, c) = net(packed, hxt)
            total = x.shape[1] if batch_first else x.shape[0]
            out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=total)
    return out.numpy(), h.numpy(), c.numpy()


def _cases(cfg, rng):
    """(name, x, lengths, hx) covering equal and ragged batches (lengths 1 and T), with and without hx."""
    T, B = 9, 5
    d = 2 if cfg["bidirectional"] else 1
    out = cfg["proj_size"] or cfg["hidden_size"]
    shape = (B, T, cfg["input_size"]) if cfg["batch_first"] else (T, B, cfg["input_size"])
    lengths = np.array([T, 1, 4, T - 1, 2], dtype=np.int64)
    for name, ragged, with_hx in (("equal", False, False), ("equal+hx", False, True),
                                  ("ragged", True, False), ("ragged+hx", True, True)):
        x = rng.standard_normal(shape).astype(np.float32)
        hx = None
        if with_hx:
            hx = (rng.standard_normal((cfg["num_layers"] * d, B, out)).astype(np.float32),
                  rng.standard_normal((cfg["num_layers"] * d, B, cfg["hidden_size"])).astype(np.float32))
        yield name, x, (lengths if ragged else None), hx


def _verify(path, prefix, tol, seed) -> int:
    cfg, sd, desc = load_weights(path, prefix)
    try:
        import torch
    except ImportError:
        print(f"{PROG}: verify needs PyTorch, which is not installed (pip install torch); nothing was compared",
              file=sys.stderr)
        return EXIT_NO_TORCH
    from .model import LSTM

    ours = LSTM(**cfg)
    ours.load_state_dict(sd, strict=True)
    net = torch.nn.LSTM(cfg["input_size"], cfg["hidden_size"], num_layers=cfg["num_layers"], bias=cfg["bias"],
                        batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"],
                        proj_size=cfg["proj_size"]).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)

    print(f"verify {desc}: LSTM({_fmt_config(cfg)}) against torch {torch.__version__}, tolerance {tol:g}")
    print(f"  {'case':<10} {'tensor':<7} {'max abs err':>12} {'max rel err':>12}")
    worst = 0.0
    rng = np.random.default_rng(seed)
    for name, x, lengths, hx in _cases(cfg, rng):
        mine = ours(x, hx=hx, lengths=lengths)
        mine = (mine[0], mine[1][0], mine[1][1])
        ref = _torch_forward(torch, net, x, lengths, hx, cfg["batch_first"])
        for label, a, b in zip(("output", "h_n", "c_n"), mine, ref):
            a = np.asarray(a)
            if a.shape != b.shape:
                print(f"  {name:<10} {label:<7} shape {a.shape} != torch {b.shape}")
                worst = np.inf
                continue
            err = float(np.max(np.abs(a - b))) if a.size else 0.0
            rel = err / max(float(np.max(np.abs(b))) if b.size else 0.0, np.finfo(np.float32).tiny)
            worst = max(worst, err if np.isfinite(err) else np.inf)
            print(f"  {name:<10} {label:<7} {err:12.3e} {rel:12.3e}")
    ok = worst <= tol
    print(f"{'PASS' if ok else 'FAIL'}: max abs error {worst:.3e} {'<=' if ok else '>'} {tol:g}")
    return 0 if ok else EXIT_MISMATCH


def cmd_verify(args) -> int:
    return _verify(args.file, args.prefix, args.tol, args.seed)


# --------------------------------------------------------------------- main

def _parser():
    p = argparse.ArgumentParser(prog=PROG, description="Inspect, convert and verify LSTM weight files "
                                "(torch.save zip/legacy, safetensors, npz) without PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="list the LSTMs in a file with configs, parameter counts and dtypes")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(func=cmd_inspect)

    def verify_opts(s):
        s.add_argument("--tol", type=float, default=1e-5, help="max abs error allowed (default 1e-5)")
        s.add_argument("--seed", type=int, default=0, help="random seed for the test inputs (default 0)")

    s = sub.add_parser("convert", help="write an lstm_infer model file")
    s.add_argument("file", metavar="FILE")
    s.add_argument("-o", "--output", required=True, metavar="OUT")
    s.add_argument("--prefix", help="which LSTM, by key prefix (e.g. 'encoder'); needed when there are several")
    s.add_argument("--batch-first", action="store_true", help="store batch_first=True in the model")
    s.add_argument("--verify", action="store_true", help="then compare the written model with torch")
    verify_opts(s)
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("verify", help="compare our engine with torch.nn.LSTM on the same weights")
    s.add_argument("file", metavar="FILE_OR_OUT")
    s.add_argument("--prefix", help="which LSTM, by key prefix")
    verify_opts(s)
    s.set_defaults(func=cmd_verify)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{PROG}: error: {msg}", file=sys.stderr)
    except OSError as exc:
        print(f"{PROG}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
