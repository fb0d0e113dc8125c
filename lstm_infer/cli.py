"""``lstm-infer`` command line: inspect weight files, convert them, verify against PyTorch.

Handles every recurrent module of ``torch.nn``: LSTM, GRU, RNN, LSTMCell, GRUCell,
RNNCell. Exit codes: 0 success, 1 verification above tolerance, 2 user error (bad
file, bad option), 3 torch not installed for ``verify``. Torch is imported only by
``verify``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import NamedTuple

import numpy as np

from . import detect, modelfile, readers

PROG = "lstm-infer"
EXIT_MISMATCH, EXIT_USAGE, EXIT_NO_TORCH = 1, 2, 3
# How many unrecognised tensors inspect names before "... and N more".
OTHER_TENSORS_SHOWN = 8


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


class Weights(NamedTuple):
    kind: str           # class name: LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell
    config: dict        # exactly that class's constructor arguments
    state_dict: dict    # float32 arrays under the module's torch key names
    desc: str           # where they came from, for messages
    assumed: tuple      # config keys not in the file but assumed (nonlinearity of a state-dict RNN)


def _option_checks(kind, where, nonlinearity, batch_first):
    """The converter's options as constructor overrides; refuses those that do not apply to ``kind``."""
    overrides = {}
    if nonlinearity is not None:
        if kind not in ("RNN", "RNNCell"):
            raise UserError(f"--nonlinearity applies to RNN and RNNCell only; {where} is "
                            f"{detect.article(kind)} {kind}")
        overrides["nonlinearity"] = nonlinearity
    if batch_first:
        if kind in detect.CELL_KINDS:
            raise UserError(f"--batch-first applies to the layers (LSTM, GRU, RNN) only; {where} is "
                            f"{detect.article(kind)} {kind}, which takes input of shape (batch, input_size)")
        overrides["batch_first"] = True
    return overrides


def load_weights(path, prefix=None, nonlinearity=None, batch_first=False) -> Weights:
    """The module at ``prefix`` in any supported file (or our model file), with the options applied."""
    data = _read(path)
    if _is_model_file(data):
        kind, cfg, sd = modelfile.read_model(data, path)
        if prefix:
            raise UserError(f"{path} is an lstm_infer model file; it holds one {kind}, --prefix does not apply")
        cfg = dict(cfg, **_option_checks(kind, f"{path} (lstm_infer model file)", nonlinearity, batch_first))
        return Weights(kind, cfg, sd, f"{path} (lstm_infer model file)", ())
    tensors = readers.read_tensors(data, path)
    try:
        spec = detect.find_one(tensors, prefix)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    where = f"prefix {spec.prefix!r}" if spec.prefix else "top level"
    desc = f"{path} ({spec.kind} at {where})"
    overrides = _option_checks(spec.kind, f"the module at {where} of {path}", nonlinearity, batch_first)
    cfg = spec.full_config(**overrides)
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in detect.module_state_dict(tensors, spec).items()}
    return Weights(spec.kind, cfg, sd, desc, tuple(k for k in spec.assumed if k not in overrides))


def _fmt_config(cfg, kind="LSTM"):
    """The config as constructor arguments in torch's order; dropout (inert) left out."""
    order = [k for k in detect.SIGNATURES.get(kind, detect.SIGNATURES["LSTM"]) if k != "dropout"]
    return ", ".join(f"{k}={cfg[k]!r}" for k in order if k in cfg)


def _assumed_note(kind):
    return (f"nonlinearity is not stored in a state dict: assuming 'tanh' (torch's default); if the {kind} "
            f"was built with nonlinearity='relu', use --nonlinearity relu")


# ------------------------------------------------------------------ inspect

def cmd_inspect(args) -> int:
    data = _read(args.file)
    if _is_model_file(data):
        kind, cfg, sd = modelfile.read_model(data, args.file)
        n = sum(v.size for v in sd.values())
        print(f"{args.file}: lstm_infer model file (format_version {modelfile.FORMAT_VERSION})")
        print(f"  {kind}({_fmt_config(cfg, kind)})")
        print(f"  {len(sd)} tensors, {n} parameters, float32")
        return 0
    fmt = readers.sniff(data)
    stored = {}
    tensors = readers.read_tensors(data, args.file, stored)
    found = detect.scan(tensors)
    print(f"{args.file}: {fmt}, {len(tensors)} tensors, {len(found)} recurrent module(s) found")
    used = set()
    for prefix, kind, res in found:
        where = repr(prefix) if prefix else "(top level)"
        if isinstance(res, ValueError):
            print(f"  {where} {kind}: INVALID: {res}")
            continue
        used.update(res.keys)
        n = sum(int(np.prod(tensors[k].shape)) for k in res.keys)
        dtypes = sorted({stored[k] for k in res.keys})
        print(f"  {where} {res.kind}({_fmt_config(res.config, res.kind)})")
        print(f"      {len(res.keys)} tensors, {n} parameters, dtype {', '.join(dtypes)}")
        if "nonlinearity" in res.assumed:
            print(f"      {_assumed_note(res.kind)}")
    rest = [k for k in tensors if k not in used]
    if rest:
        print(f"  {len(rest)} other tensor(s), not part of a recognised module: "
              + detect.describe_tensors(tensors, rest, OTHER_TENSORS_SHOWN))
    return 0


# ------------------------------------------------------------------ convert

def cmd_convert(args) -> int:
    w = load_weights(args.file, args.prefix, args.nonlinearity, args.batch_first)
    modelfile.write_model(args.output, w.state_dict, w.config, w.kind)
    print(f"wrote {args.output}: {w.kind}({_fmt_config(w.config, w.kind)}) from {w.desc}")
    if "nonlinearity" in w.assumed:
        print(f"note: {_assumed_note(w.kind)}")
    if args.verify:
        return _verify(args.output, None, args.tol, args.seed)
    return 0


# ------------------------------------------------------------------- verify

_OUTPUTS = {"LSTM": ("output", "h_n", "c_n"), "GRU": ("output", "h_n"), "RNN": ("output", "h_n"),
            "LSTMCell": ("h1", "c1"), "GRUCell": ("h1",), "RNNCell": ("h1",)}


def _flat(kind, result):
    """A module's return value as a flat tuple in the order of ``_OUTPUTS[kind]``."""
    if kind == "LSTM":
        out, (h, c) = result
        return out, h, c
    if kind in ("GRU", "RNN"):
        out, h = result
        return out, h
    if kind == "LSTMCell":
        h, c = result
        return h, c
    return (result,)


def _torch_forward(torch, kind, net, x, lengths, hx, batch_first):
    """torch's result for one case: packed sequences when lengths are given (ragged)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.from_numpy(x)
    if hx is None:
        hxt = None
    elif isinstance(hx, tuple):
        hxt = tuple(torch.from_numpy(h) for h in hx)
    else:
        hxt = torch.from_numpy(hx)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
        if lengths is None:
            res = _flat(kind, net(xt, hxt))
        else:
            packed = pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=batch_first,
                                          enforce_sorted=False)
            res = _flat(kind, net(packed, hxt))
            total = x.shape[1] if batch_first else x.shape[0]
            out, _ = pad_packed_sequence(res[0], batch_first=batch_first, total_length=total)
            res = (out,) + res[1:]
    return tuple(t.numpy() for t in res)


def _cases(kind, cfg, rng):
    """(name, x, lengths, hx). Layers: equal and ragged batches (lengths 1 and T among them), with
    and without hx. Cells: batched and unbatched input, with and without hx."""
    H, I = cfg["hidden_size"], cfg["input_size"]
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    if kind in detect.CELL_KINDS:
        B = 5
        for name, shape, hshape in (("batched", (B, I), (B, H)), ("unbatched", (I,), (H,))):
            for with_hx in (False, True):
                hx = None
                if with_hx:
                    hx = (normal(*hshape), normal(*hshape)) if kind == "LSTMCell" else normal(*hshape)
                yield name + ("+hx" if with_hx else ""), normal(*shape), None, hx
        return
    T, B = 9, 5
    slots = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    out = cfg.get("proj_size") or H
    shape = (B, T, I) if cfg["batch_first"] else (T, B, I)
    lengths = np.array([T, 1, 4, T - 1, 2], dtype=np.int64)
    for name, ragged, with_hx in (("equal", False, False), ("equal+hx", False, True),
                                  ("ragged", True, False), ("ragged+hx", True, True)):
        x = normal(*shape)
        hx = None
        if with_hx:
            hx = (normal(slots, B, out), normal(slots, B, H)) if kind == "LSTM" else normal(slots, B, H)
        yield name, x, (lengths if ragged else None), hx


def _verify(path, prefix, tol, seed, nonlinearity=None) -> int:
    w = load_weights(path, prefix, nonlinearity)
    try:
        import torch
    except ImportError:
        print(f"{PROG}: verify needs PyTorch, which is not installed (pip install torch); nothing was compared",
              file=sys.stderr)
        return EXIT_NO_TORCH
    import lstm_infer

    kind, cfg = w.kind, w.config
    cls = getattr(lstm_infer, kind, None)
    if cls is None:
        raise UserError(f"this lstm_infer ({lstm_infer.__version__}) has no {kind} class to verify")
    ours = cls(**cfg)
    ours.load_state_dict(w.state_dict, strict=True)
    with warnings.catch_warnings():  # torch warns about dropout with one layer; it is inert in eval()
        warnings.simplefilter("ignore")
        net = getattr(torch.nn, kind)(**cfg).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in w.state_dict.items()}, strict=True)

    print(f"verify {w.desc}: {kind}({_fmt_config(cfg, kind)}) against torch.nn.{kind} "
          f"(torch {torch.__version__}), tolerance {tol:g}")
    if "nonlinearity" in w.assumed:
        print(f"  note: {_assumed_note(kind)}")
    print(f"  {'case':<12} {'tensor':<7} {'max abs err':>12} {'max rel err':>12}")
    worst = 0.0
    rng = np.random.default_rng(seed)
    for name, x, lengths, hx in _cases(kind, cfg, rng):
        if kind in detect.CELL_KINDS:
            mine = _flat(kind, ours(x, hx=hx))
        else:
            mine = _flat(kind, ours(x, hx=hx, lengths=lengths))
        ref = _torch_forward(torch, kind, net, x, lengths, hx, cfg.get("batch_first", False))
        for label, a, b in zip(_OUTPUTS[kind], mine, ref):
            a = np.asarray(a)
            if a.shape != b.shape:
                print(f"  {name:<12} {label:<7} shape {a.shape} != torch {b.shape}")
                worst = np.inf
                continue
            err = float(np.max(np.abs(a - b))) if a.size else 0.0
            rel = err / max(float(np.max(np.abs(b))) if b.size else 0.0, np.finfo(np.float32).tiny)
            worst = max(worst, err if np.isfinite(err) else np.inf)
            print(f"  {name:<12} {label:<7} {err:12.3e} {rel:12.3e}")
    ok = worst <= tol
    print(f"{'PASS' if ok else 'FAIL'}: max abs error {worst:.3e} {'<=' if ok else '>'} {tol:g}")
    return 0 if ok else EXIT_MISMATCH


def cmd_verify(args) -> int:
    return _verify(args.file, args.prefix, args.tol, args.seed, args.nonlinearity)


# ---------------------------------------------------------------------- run

def cmd_run(args) -> int:
    """Batch inference over a dataset (lstm_infer.runner); exit 130 on Ctrl-C, nothing left behind."""
    from . import runner, set_num_threads

    try:
        if args.threads is not None:
            set_num_threads(args.threads)
        progress = not args.no_progress and sys.stderr.isatty()
        stats = runner.run(args.model, args.inputs, args.output, batch_tokens=args.batch_tokens,
                           progress=progress, skip_bad=args.skip_bad)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    print(f"wrote {args.output}: {stats.summary()}")
    return 0


# --------------------------------------------------------------------- main

def _parser():
    from . import __version__

    p = argparse.ArgumentParser(prog=PROG, description="Inspect, convert and verify weight files of PyTorch "
                                "recurrent modules (LSTM, GRU, RNN and their cells; torch.save zip/legacy, "
                                "safetensors, npz) without PyTorch.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="list the recurrent modules in a file with kinds, configs, parameter "
                       "counts and dtypes, and the other tensors")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(func=cmd_inspect)

    def common(s):
        s.add_argument("--prefix", help="which module, by key prefix (e.g. 'encoder'); needed when there are several")
        s.add_argument("--nonlinearity", choices=detect.NONLINEARITIES,
                       help="for RNN/RNNCell: the nonlinearity, which a state dict does not store (default tanh)")

    def verify_opts(s):
        s.add_argument("--tol", type=float, default=1e-5, help="max abs error allowed (default 1e-5)")
        s.add_argument("--seed", type=int, default=0, help="random seed for the test inputs (default 0)")

    s = sub.add_parser("convert", help="write an lstm_infer model file")
    s.add_argument("file", metavar="FILE")
    s.add_argument("-o", "--output", required=True, metavar="OUT")
    common(s)
    s.add_argument("--batch-first", action="store_true", help="store batch_first=True in the model (layers only)")
    s.add_argument("--verify", action="store_true", help="then compare the written model with torch")
    verify_opts(s)
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("verify", help="compare our engine with the matching torch.nn module on the same weights")
    s.add_argument("file", metavar="FILE_OR_OUT")
    common(s)
    verify_opts(s)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("run", help="run a model over a dataset (.npy files, ragged .npz, .jsonl) into a ragged "
                       ".npz (or a directory of .npy), bucketing sequences by length")
    s.add_argument("model", metavar="MODEL")
    s.add_argument("inputs", metavar="INPUT", nargs="+", help=".npy files (or a directory or glob of them), "
                   "ragged .npz (data, lengths), .jsonl (one list of feature rows per line)")
    s.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="a .npz file (data, lengths, names, skipped), or a directory mirroring .npy inputs")
    s.add_argument("--batch-tokens", type=int, default=65536, metavar="N",
                   help="padded time steps per batch (default 65536)")
    s.add_argument("--threads", type=int, metavar="N", help="engine threads (default: all usable cores)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (none without a terminal anyway)")
    s.add_argument("--skip-bad", action="store_true", help="skip bad records (listed in the summary and in "
                   "the output's 'skipped' array) instead of stopping")
    s.set_defaults(func=cmd_run)
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
