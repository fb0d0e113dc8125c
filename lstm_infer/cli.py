"""``lstm-infer`` command line: inspect weight files, convert them, verify against PyTorch.

Handles every recurrent module of ``torch.nn``: LSTM, GRU, RNN, LSTMCell, GRUCell,
RNNCell, and whole models (``--pipeline``: Embedding, Linear, LayerNorm, activations,
readouts around the recurrent layers; see lstm_infer.pipeline). Exit codes: 0 success,
1 verification above tolerance, 2 user error (bad file, bad option), 3 torch not
installed for ``verify``; 128 + N when stopped by signal N (130 Ctrl-C, 143 SIGTERM,
129 SIGHUP: nothing half-written is left) and 141 when stdout's reader goes away
(``| head``). Torch is imported only by ``verify`` (and lstm_infer.torchref).

Reduced weights: ``convert --weights float16|int8`` stores the recurrent layers'
weights reduced (see lstm_infer.LSTM); ``verify`` of such a model (or ``verify FILE
--weights ...``, which reduces in memory) compares it with torch on the float32
weights (for a reduced model file, the dequantized ones it holds: the float32
originals are not in it; ``convert --verify`` uses the source file's), reports max
and mean absolute error per output, and passes below the storage's tolerance
(``TOLERANCES``) unless ``--tol`` is given.

``verify --inputs X.npz --outputs Y.npz`` compares with outputs saved from the user's
own torch model (a .npy file holds ``x`` or ``y`` alone): X.npz holds ``x``, the padded
batch in the model's layout (token ids (T, B), or floats (T, B, features); (B, T, ...)
for a batch_first model) and optionally
``lengths`` (B,) integers (default: every sequence T long); Y.npz holds ``y``, what
the torch model returned: (B, out) for a model whose readout gives one vector per
sequence, else per step (T, B, out) ((B, T, out) batch_first; for a bare LSTM/GRU/RNN
its ``output``). Per-step positions past a sequence's length are not compared.
"""

from __future__ import annotations

import argparse
import codecs
import io
import shlex
import sys
import warnings
import zipfile
from typing import NamedTuple

import numpy as np

from . import detect, modelfile, pipeline, readers, runner

PROG = "lstm-infer"
EXIT_MISMATCH, EXIT_USAGE, EXIT_NO_TORCH = 1, 2, 3
# verify's default max abs error by weight storage: float32 parity; the reduced
# storages' accuracy targets (issue 17: float16 <= 2e-3, int8 <= 1e-2 on trained weights)
TOLERANCES = {"float32": 1e-5, "float16": 2e-3, "int8": 1e-2}
# How many unrecognised tensors inspect names before "... and N more".
OTHER_TENSORS_SHOWN = 8


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


_model_file_kind = modelfile.file_kind  # the kind our model file records, None for other files


def _is_model_file(data: bytes) -> bool:
    return _model_file_kind(data) is not None


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
    weights: str = "float32"  # the storage in the file ("float16"/"int8": a reduced model file)
    stored: dict = None       # the arrays as the file stores them (reduced model files)

    def module(self, weights=None):
        """Our module of these weights: as the file stores them, or with storage ``weights``."""
        import lstm_infer
        from .model import build

        weights = weights or self.weights
        if weights == self.weights != "float32":
            return build(self.kind, self.config, self.stored, weights)
        model = getattr(lstm_infer, self.kind)(**self.config)  # (by name: tests stand in for a class)
        if weights == "float32":
            model.load_state_dict(self.state_dict, strict=True)
        else:
            model.load_state_dict(self.state_dict, strict=True, weights=weights)
        return model


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


def load_weights(path, prefix=None, nonlinearity=None, batch_first=False, data=None) -> Weights:
    """The module at ``prefix`` in any supported file (or our model file), with the options
    applied (``data``: the file's contents when read already)."""
    data = _read(path) if data is None else data
    if _is_model_file(data):
        kind, cfg, stored, weights = modelfile.read_stored(data, path)
        if prefix:
            raise UserError(f"{path} is an lstm_infer model file; it holds one {kind}, --prefix does not apply")
        if nonlinearity is not None:
            raise UserError(f"{path} is an lstm_infer model file: its nonlinearity is recorded, "
                            f"--nonlinearity does not apply")
        cfg = dict(cfg, **_option_checks(kind, f"{path} (lstm_infer model file)", None, batch_first))
        return Weights(kind, cfg, modelfile.dequantize(stored), f"{path} (lstm_infer model file)", (),
                       weights, stored)
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

def _where(name):
    """A module's place in a state dict as inspect prints it."""
    return repr(name + ".") if name else "(top level)"


def _storage_desc(tensors):
    """How a model file stores its tensors: "float32", or e.g. "int8 x4 (with row scales),
    float16 x8, float32 x8" for reduced weights."""
    counts = {}
    for k, v in tensors.items():
        if not k.endswith(modelfile.SCALE_SUFFIX):
            counts[v.dtype.name] = counts.get(v.dtype.name, 0) + 1
    if list(counts) == ["float32"]:
        return "float32"
    return ", ".join(f"{d} x{n}" + (" (with float32 row scales)" if d == "int8" else "")
                     for d, n in sorted(counts.items(), key=lambda kv: kv[0] != "int8"))


def _recurrent_desc(m):
    """A recurrent layer as inspect prints it: its config, and weights= when reduced."""
    extra = f", weights={m.weights!r}" if m.weights != "float32" else ""
    return f"{m.kind}({_fmt_config(m.config, m.kind)}{extra})"


def _inspect_model_file(path, data):
    kind, cfg, tensors, weights = modelfile.read_stored(data, path)
    version = readers.parse_safetensors(data)[1]["format_version"]
    n = sum(v.size for k, v in tensors.items() if not k.endswith(modelfile.SCALE_SUFFIX))
    print(f"{path}: lstm_infer model file (format_version {version})")
    if kind != "Sequential":
        extra = f", weights={weights!r}" if weights != "float32" else ""
        print(f"  {kind}({_fmt_config(cfg, kind)}{extra})")
    else:
        from .sequential import Sequential

        model = Sequential.from_config(cfg, tensors)
        print(f"  Sequential, batch_first={model.batch_first}: {model.pipeline}")
        width = max(len(name) for name, _ in model.layers)
        for name, m in model.layers:
            desc = pipeline.describe(m.kind, m.config)
            if m.kind in pipeline.RECURRENT_KINDS:
                desc = _recurrent_desc(m)
            print(f"    {name:<{width}}  {desc}")
        print(f"  input: {_input_desc(model)}; output: {_output_desc(model)}")
    print(f"  {len(tensors)} tensors, {n} parameters, {_storage_desc(tensors)}")
    return 0


def _input_desc(model):
    layout = "(B, T)" if model.batch_first else "(T, B)"
    if model.takes_ids:
        return f"token ids {layout}, each in [0, {model.layers[0][1].num_embeddings})"
    width = model.in_features if model.in_features is not None else "features"
    layout = "(B, T, " if model.batch_first else "(T, B, "
    return f"floats {layout}{width}) with lengths (B,), or a list of (T_i, {width}) sequences"


def _output_desc(model):
    width = model.out_features if model.out_features is not None else "features"
    if model.readout in (None, "steps"):
        layout = "(B, T, " if model.batch_first else "(T, B, "
        return f"per step {layout}{width}), 0 past each length"
    return f"one vector per sequence (B, {width}) (readout {model.readout!r})"


def cmd_inspect(args) -> int:
    data = _read(args.file)
    if _is_model_file(data):
        return _inspect_model_file(args.file, data)
    fmt = readers.sniff(data)
    stored = {}
    tensors = readers.read_tensors(data, args.file, stored)
    found = pipeline.list_modules(tensors)
    recurrent = sum(1 for f in found if f.kind not in detect.OTHER_KINDS)
    print(f"{args.file}: {fmt}, {len(tensors)} tensors, {recurrent} recurrent module(s) found, "
          f"{len(found)} module(s) in all (in file order):")
    for f in found:
        if f.error is not None:
            print(f"  {_where(f.name)} {f.kind}: INVALID: {f.error}")
            continue
        n = sum(int(np.prod(tensors[k].shape)) for k in f.keys)
        dtypes = sorted({stored[k] for k in f.keys})
        desc = (pipeline.describe(f.kind, f.config) if f.kind in detect.OTHER_KINDS
                else f"{f.kind}({_fmt_config(f.config, f.kind)})")
        print(f"  {_where(f.name)} {desc}")
        print(f"      {len(f.keys)} tensor{'s' if len(f.keys) != 1 else ''}, {n} parameters, dtype {', '.join(dtypes)}")
        if "nonlinearity" in f.config and f.kind in ("RNN", "RNNCell"):
            print(f"      {_assumed_note(f.kind)}")
        if f.kind == "LayerNorm":
            print(f"      {pipeline.LAYER_NORM_NOTE}; with another eps, convert with --eps")
        for other in f.alternatives:
            print(f"      its tensors also fit nn.{other}: write '{f.name}:{other}' in --pipeline to choose it")
        stray = [k for k in tensors if isinstance(k, str) and f.name and k.startswith(f.name + ".")
                 and k not in set(f.keys)]
        if stray:
            print(f"      beside it under '{f.name}': {detect.describe_tensors(tensors, stray, OTHER_TENSORS_SHOWN)}; "
                  f"a pipeline naming '{f.name}' is refused until these are dropped from the state dict "
                  f"(lstm_infer would run without them)")
    rest = pipeline.unrecognised(tensors, found)
    if rest:
        print(f"  {len(rest)} other tensor(s), not part of a recognised module: "
              + detect.describe_tensors(tensors, rest, OTHER_TENSORS_SHOWN))
    suggestion = pipeline.suggest(tensors, found)
    if suggestion and len(pipeline.parse(suggestion)) > 1:
        print(f"suggested pipeline (the widths chain; activations such as softmax are not in a state dict, "
              f"add them; the readout is a guess: 'final' for a classifier, 'steps' for a tagger):")
        print(f"  {PROG} convert {shlex.quote(args.file)} -o model.lstm --pipeline {shlex.quote(suggestion)}")
        out = pipeline.left_out(found, suggestion)
        if out:
            print(f"  it leaves out {', '.join(repr(n) for n in out)} (in file order their widths do not "
                  f"chain, or they sit beside tensors lstm_infer does not run): name them in the pipeline "
                  f"where the model uses them")
    return 0


# ------------------------------------------------------------------ convert

def cmd_convert(args) -> int:
    if args.pipeline is not None:
        return _convert_pipeline(args)
    if args.eps is not None:
        raise UserError("--eps sets the LayerNorm layers of a whole model: it goes with --pipeline")
    _no_stdout(args.output, "a model file name")
    data = _read(args.file)
    if _model_file_kind(data) == "Sequential":
        return _convert_sequential_file(args, data)
    w = load_weights(args.file, args.prefix, args.nonlinearity, args.batch_first, data)
    del data
    weights = args.weights or w.weights  # a reduced model file stays reduced unless told
    if weights == "float32":
        modelfile.write_model(args.output, w.state_dict, w.config, w.kind)
    else:
        w.module(weights).save(args.output)
    args.wrote = True
    extra = f" with {weights} weights" if weights != "float32" else ""
    print(f"wrote {args.output}: {w.kind}({_fmt_config(w.config, w.kind)}){extra} from {w.desc}")
    if "nonlinearity" in w.assumed:
        print(f"note: {_assumed_note(w.kind)}")
    if args.verify:  # the written model against torch on the source's float32 weights
        return _verify_module(load_weights(args.output).module(), w, _tol(args.tol, weights), args.seed,
                              desc=args.output)
    return 0


def _convert_pipeline(args) -> int:
    """A whole model: the pipeline's layers over the file's state dict, in one model file."""
    from .sequential import Sequential, read_state_dict

    if args.prefix:
        raise UserError("--prefix selects one module; with --pipeline name the modules in the pipeline "
                        "(e.g. --pipeline \"encoder.embedding > encoder.lstm > final > fc\")")
    _no_stdout(args.output, "a model file name")
    tensors = read_state_dict(_read(args.file), args.file)
    weights = args.weights or "float32"
    try:
        with warnings.catch_warnings(record=True) as left_out:
            warnings.simplefilter("always", pipeline.LeftOutWarning)
            model = Sequential.from_state_dict(tensors, args.pipeline, batch_first=args.batch_first,
                                               nonlinearity=args.nonlinearity, eps=args.eps)
        reduced = _with_weights(model, weights)
    except (ValueError, KeyError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise UserError(f"{args.file}: {msg}") from None
    reduced.save(args.output)
    args.wrote = True
    print(f"wrote {args.output}: Sequential({model.pipeline}) from {args.file}")
    for name, m in reduced.layers:
        print(f"  {name}: {m!r}")
    rnns = [name for name, m in model.layers if m.kind == "RNN"]
    if rnns and args.nonlinearity is None:
        print(f"note: {', '.join(rnns)}: {_assumed_note('RNN')}")
    norms = [name for name, m in model.layers if m.kind == "LayerNorm"]
    if norms and args.eps is None:
        print(f"note: {', '.join(norms)}: {pipeline.LAYER_NORM_NOTE}; if it was built with another eps, "
              f"use --eps")
    for w in left_out:
        print(f"note: {w.message}")
    if args.verify:  # the written model against torch on the source's float32 weights
        return _verify_sequential(args.output, _load_model(args.output, None, None), _tol(args.tol, weights),
                                  args.seed, reference=model)
    return 0


def _convert_sequential_file(args, data) -> int:
    """A whole model's file written again, its recurrent layers' storage changed where
    --weights asks."""
    model = _load_model(args.file, args.prefix, args.nonlinearity, data)
    if args.batch_first and not model.batch_first:
        raise UserError(f"{args.file} is a whole model recorded with batch_first=False; --batch-first applies "
                        f"when converting from a state dict (with --pipeline)")
    stored = _storage_of(model)
    out = _with_storage(model, args.weights)
    out.save(args.output)
    args.wrote = True
    storage = _storage_of(out)
    extra = f" with {storage} weights" if storage != stored else ""
    print(f"wrote {args.output}: Sequential({out.pipeline}){extra} from {args.file} (lstm_infer model file)")
    if args.verify:  # against torch on the weights the file holds (float32 from the reduced ones)
        note = _reduced_note(args.file, stored) if stored != "float32" else None
        return _verify_sequential(args.output, _load_model(args.output, None, None), _tol(args.tol, storage),
                                  args.seed, reference=model, note=note)
    return 0


def _with_weights(model, weights):
    """The Sequential ``model`` with its recurrent layers' weights stored as ``weights``
    (the model itself when that changes nothing)."""
    from .sequential import Sequential

    rec = [m for m in model if m.kind in pipeline.RECURRENT_KINDS]
    if all(m.weights == weights for m in rec):
        return model
    layers = {}
    for name, m in model.layers:
        if m.kind in pipeline.RECURRENT_KINDS:
            other = type(m)(**m.config)
            other.load_state_dict(m.state_dict(), weights=weights)
            m = other
        layers[name] = m
    return Sequential(layers)


def _tol(tol, weights):
    """verify's tolerance: --tol, else the target of the weight storage checked."""
    return TOLERANCES[weights] if tol is None else tol


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


def _load_model(path, prefix, nonlinearity, data=None):
    """The model in our model file at ``path`` (any kind; ``data``: its contents when read
    already), options checked as load_weights does."""
    data = _read(path) if data is None else data
    if not _is_model_file(data):
        raise UserError(f"{path} is not an lstm_infer model file; --inputs/--outputs compare a converted "
                        f"model (lstm-infer convert it first)")
    kind, cfg, tensors, weights = modelfile.read_stored(data, path)
    if prefix:
        raise UserError(f"{path} is an lstm_infer model file; it holds one {kind}, --prefix does not apply")
    if nonlinearity is not None:
        raise UserError(f"{path} is an lstm_infer model file: its nonlinearity is recorded, "
                        f"--nonlinearity does not apply")
    if kind == "Sequential":
        from .sequential import Sequential
        return Sequential.from_config(cfg, tensors)
    from .model import build
    if kind in detect.CELL_KINDS:
        raise UserError(f"{path} holds {detect.article(kind)} {kind}; --inputs/--outputs compare sequence "
                        f"models (a Sequential, LSTM, GRU or RNN)")
    return build(kind, cfg, tensors, weights)


def _charge_zip_directory(name, data):
    """UserError when zipfile would build more for the archive's directory than a load of
    this size may (see torchfile.ZIP_ENTRY_COST)."""
    from .torchfile import charge_zip_directory

    try:
        charge_zip_directory(data, name)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _npz_arrays(path, keys, required):
    """The arrays ``keys`` (``required`` among them) of the .npz ``path``; a .npy file
    holds the first key's array alone. Only a regular file is read (a FIFO would hang
    np.load), and each header's declared size is checked before anything is allocated."""
    from . import fileio

    name = fileio.display_name(path)
    data = fileio.read_file(path)
    try:
        if data[:6] == b"\x93NUMPY":
            return {keys[0]: _npy_array(io.BytesIO(data), len(data))}
        _charge_zip_directory(name, data)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            files = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            missing = [k for k in required if k not in files]
            if missing:
                raise UserError(f"{name}: no array {missing[0]!r} (it holds {', '.join(files) or 'nothing'}); "
                                f"see lstm-infer verify --help for the convention")
            out = {}
            for k in keys:
                if k in files:
                    with zf.open(files[k]) as fh:
                        out[k] = _npy_array(fh, runner._member_size(zf.getinfo(files[k])), k)
            return out
    except runner._MEMBER_ERRORS as exc:
        raise UserError(f"{name}: not a readable .npz or .npy ({exc})") from None


def _npy_array(fh, available, key=None):
    """The array of the .npy at ``fh``, refused when its header declares more than ``available`` bytes."""
    where = f"array {key!r}: " if key else ""
    shape, fortran, dtype = runner._npy_header(fh)
    try:
        runner._check_declared(shape, dtype, available)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None
    fh.seek(0)
    return np.lib.format.read_array(fh, allow_pickle=False)


def _compare(a, b):
    """(max abs err, mean abs err, max abs err / max |ref|) of ours ``a`` against the
    reference ``b`` (same shape). NaN where the reference has NaN (and the same
    infinities) agree, as in numpy's assert_allclose(equal_nan=True); NaN against a
    number is an infinite error."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
    diff[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    diff[np.isnan(diff)] = np.inf
    err = float(np.max(diff)) if a.size else 0.0
    mean = float(np.mean(diff)) if a.size else 0.0
    finite = np.abs(b[np.isfinite(b)])
    scale = float(np.max(finite)) if finite.size else 0.0
    return err, mean, err / max(scale, float(np.finfo(np.float32).tiny))


class _Report:
    """verify's table: one row per case and output, then per output the max and mean
    absolute error over all cases; the worst max decides."""

    def __init__(self, labels):
        self.labels = labels
        self.totals = {}  # output -> [max, sum of abs errors, count]
        label = f"{'tensor':<7} " if labels else ""
        print(f"  {'case':<12} {label}{'max abs err':>12} {'mean abs err':>12} {'err/max|ref|':>12}")

    def row(self, case, label, a, b):
        a = np.asarray(a)
        head = f"{label:<7} " if self.labels else ""
        if a.shape != b.shape:
            print(f"  {case:<12} {head}shape {a.shape} != torch {b.shape}")
            err, mean = np.inf, np.inf
        else:
            err, mean, rel = _compare(a, b)
            print(f"  {case:<12} {head}{err:12.3e} {mean:12.3e} {rel:12.3e}")
        t = self.totals.setdefault(label or "output", [0.0, 0.0, 0])
        t[0], t[1], t[2] = max(t[0], err), t[1] + mean * max(a.size, 1), t[2] + max(a.size, 1)

    def verdict(self, tol):
        for label, (err, total, count) in self.totals.items():
            print(f"  {label}: max abs err {err:.3e}, mean abs err {total / count:.3e} over all cases")
        return _verdict(max(t[0] for t in self.totals.values()), tol)


def _verdict(worst, tol):
    """Prints PASS or FAIL; the exit code."""
    ok = worst <= tol
    print(f"{'PASS' if ok else 'FAIL'}: max abs error {worst:.3e} {'<=' if ok else '>'} {tol:g}")
    return 0 if ok else EXIT_MISMATCH


def _storage_of(model):
    """The weight storage verify checks: the module's, or for a Sequential the least
    precise of its recurrent layers' (float32 when it has none)."""
    modules = list(model) if hasattr(model, "layers") else [model]
    found = [m.weights for m in modules if m.kind in detect.KINDS]
    return max(found, key=list(TOLERANCES).index, default="float32")


def _with_storage(model, weights):
    """``model`` (a module or a Sequential) with its recurrent weights stored as ``weights``."""
    if weights is None:
        return model
    if hasattr(model, "layers"):
        return _with_weights(model, weights)
    other = type(model)(**model.config)
    other.load_state_dict(model.state_dict(), weights=weights)
    return other


def _reduced_note(path, weights):
    return (f"{path} stores {weights} weights and not the float32 originals: torch runs on the dequantized "
            f"weights, so this shows the engine's error without the rounding of the weights; verify the "
            f"float32 source with --weights {weights} for the whole error")


def _verify_saved(path, inputs, outputs, tol, prefix, nonlinearity, weights=None) -> int:
    """Our model on the user's saved inputs against the outputs they saved from torch."""
    model = _with_storage(_load_model(path, prefix, nonlinearity), weights)
    tol = _tol(tol, _storage_of(model))
    xs = _npz_arrays(inputs, ("x", "lengths"), ("x",))
    y_ref = np.asarray(_npz_arrays(outputs, ("y",), ("y",))["y"], np.float32)
    x, lengths = xs["x"], xs.get("lengths")
    try:
        y = model(x, lengths=lengths)
    except (ValueError, TypeError, IndexError) as exc:
        raise UserError(f"{inputs}: the model does not take these inputs: {exc}") from None
    per_step = True
    if isinstance(y, tuple):  # a bare recurrent layer: (output, state)
        y = y[0]
    else:
        per_step = model.readout in (None, "steps") and model.layers and any(
            m.kind in pipeline.RECURRENT_KINDS for _, m in model.layers)
    if y.shape != y_ref.shape:
        raise UserError(f"{outputs}: 'y' has shape {y_ref.shape}, but the model gives {y.shape} for these inputs "
                        f"(see lstm-infer verify --help for the convention)")
    bf = getattr(model, "batch_first", False)
    if per_step and lengths is not None and y.ndim == 3:
        T = y.shape[1] if bf else y.shape[0]
        valid = np.arange(T)[:, None] < np.asarray(lengths)[None, :]  # (T, B)
        mask = valid.T if bf else valid
        y, y_ref = y[mask], y_ref[mask]
    err, mean, rel = _compare(y, y_ref)
    storage = _storage_of(model)
    print(f"verify {path}" + (f" ({storage} weights)" if storage != "float32" else "")
          + f" on {inputs} against the outputs in {outputs}, tolerance {tol:g}")
    print(f"  {y.size} values compared: max abs err {err:.3e}, mean abs err {mean:.3e}, "
          f"max abs err / max |ref| {rel:.3e}")
    return _verdict(err, tol)


def _sequential_cases(model, rng):
    """(name, x, lengths): an equal and a ragged batch (lengths 1 and T among them) in the
    model's layout, token ids over the whole vocabulary for an Embedding-first model."""
    T, B = 9, 5
    lengths = np.array([T, 1, 4, T - 1, 2], dtype=np.int64)
    has_rec = any(m.kind in pipeline.RECURRENT_KINDS for _, m in model.layers)
    shape = (B, T) if model.batch_first else (T, B)
    for name, lens in (("equal", None), ("ragged", lengths)) if has_rec else (("batch", None),):
        if model.takes_ids:
            x = rng.integers(0, model.layers[0][1].num_embeddings, shape).astype(np.int64)
        else:
            x = rng.standard_normal(shape + (model.in_features or 4,)).astype(np.float32)
        yield name, x, lens


def _import_torch():
    try:
        import torch
    except ImportError:
        print(f"{PROG}: verify needs PyTorch, which is not installed (pip install torch); nothing was compared",
              file=sys.stderr)
        return None
    return torch


def _verify_sequential(path, model, tol, seed, reference=None, note=None) -> int:
    """The Sequential ``model`` against the same pipeline of torch.nn modules holding the
    float32 weights of ``reference`` (another Sequential; default: ``model``'s own)."""
    torch = _import_torch()
    if torch is None:
        return EXIT_NO_TORCH
    from .torchref import TorchPipeline

    storage = _storage_of(model)
    ref = TorchPipeline(torch, model if reference is None else reference)
    with_weights = f" with {storage} weights" if storage != "float32" else ""
    print(f"verify {path}: Sequential({model.pipeline}){with_weights} against the same pipeline of torch.nn "
          f"modules on float32 weights (torch {torch.__version__}; recurrent layers on pack_padded_sequence), "
          f"tolerance {tol:g}")
    if note:
        print(f"  note: {note}")
    report = _Report(False)
    rng = np.random.default_rng(seed)
    for name, x, lengths in _sequential_cases(model, rng):
        report.row(name, "", model(x, lengths=lengths), ref(x, lengths))
    return report.verdict(tol)


def _verify_module(ours, ref, tol, seed, desc=None, note=None) -> int:
    """Our module ``ours`` against torch.nn.<kind> holding ``ref``'s float32 weights (a Weights)."""
    torch = _import_torch()
    if torch is None:
        return EXIT_NO_TORCH
    kind, cfg = ref.kind, ref.config
    with warnings.catch_warnings():  # torch warns about dropout with one layer; it is inert in eval()
        warnings.simplefilter("ignore")
        net = getattr(torch.nn, kind)(**cfg).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in ref.state_dict.items()}, strict=True)

    storage = getattr(ours, "weights", "float32")
    with_weights = f" with {storage} weights" if storage != "float32" else ""
    source = f" on the float32 weights of {ref.desc}" if desc else ""
    print(f"verify {desc or ref.desc}: {kind}({_fmt_config(cfg, kind)}){with_weights} against torch.nn.{kind} "
          f"(torch {torch.__version__}){source}, tolerance {tol:g}")
    if note:
        print(f"  note: {note}")
    if "nonlinearity" in ref.assumed:
        print(f"  note: {_assumed_note(kind)}")
    report = _Report(True)
    rng = np.random.default_rng(seed)
    for name, x, lengths, hx in _cases(kind, cfg, rng):
        if kind in detect.CELL_KINDS:
            mine = _flat(kind, ours(x, hx=hx))
        else:
            mine = _flat(kind, ours(x, hx=hx, lengths=lengths))
        want = _torch_forward(torch, kind, net, x, lengths, hx, cfg.get("batch_first", False))
        for label, a, b in zip(_OUTPUTS[kind], mine, want):
            report.row(name, label, a, b)
    return report.verdict(tol)


def _verify(path, prefix, tol, seed, nonlinearity=None, inputs=None, outputs=None, weights=None) -> int:
    if (inputs is None) != (outputs is None):
        raise UserError("--inputs and --outputs go together: the inputs you gave your torch model and "
                        "what it returned")
    if inputs is not None:
        return _verify_saved(path, inputs, outputs, tol, prefix, nonlinearity, weights)
    data = _read(path)
    if _model_file_kind(data) == "Sequential":
        model = _load_model(path, prefix, nonlinearity, data)
        stored = _storage_of(model)
        ours = _with_storage(model, weights)
        note = _reduced_note(path, stored) if stored != "float32" else None
        return _verify_sequential(path, ours, _tol(tol, _storage_of(ours)), seed, reference=model, note=note)
    w = load_weights(path, prefix, nonlinearity)
    import lstm_infer

    if not hasattr(lstm_infer, w.kind):
        raise UserError(f"this lstm_infer ({lstm_infer.__version__}) has no {w.kind} class to verify")
    ours = w.module(weights)
    note = _reduced_note(path, w.weights) if w.weights != "float32" else None
    return _verify_module(ours, w, _tol(tol, weights or w.weights), seed, note=note)


def cmd_verify(args) -> int:
    return _verify(args.file, args.prefix, args.tol, args.seed, args.nonlinearity, args.inputs, args.outputs,
                   args.weights)


# ---------------------------------------------------------------------- run

def cmd_run(args) -> int:
    """Batch inference over a dataset (lstm_infer.runner); Ctrl-C, SIGTERM or SIGHUP leave
    nothing behind (see main)."""
    from . import runner, set_num_threads

    _no_stdout(args.output, "a .npz file or a directory")
    if args.threads is not None:
        set_num_threads(args.threads)
    progress = not args.no_progress and sys.stderr.isatty()
    stats = runner.run(args.model, args.inputs, args.output, batch_tokens=args.batch_tokens,
                       progress=progress, skip_bad=args.skip_bad)
    args.wrote = True
    print(f"wrote {args.output}: {stats.summary()}")
    return 0


def _no_stdout(output, what):
    """'-' for standard output is not supported: refused rather than made a file or directory named '-'."""
    if output == "-":
        raise UserError(f"-o -: cannot write to standard output; give {what} (./- for a file named '-')")


# --------------------------------------------------------------------- main

def _parser():
    from . import __version__

    p = argparse.ArgumentParser(prog=PROG, description="Inspect, convert and verify weight files of PyTorch "
                                "recurrent modules (LSTM, GRU, RNN and their cells) and whole models (Embedding "
                                "-> recurrent layers -> readout -> head; torch.save zip/legacy, safetensors, npz) "
                                "without PyTorch, and run models over datasets.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="list the modules in a file in file order (recurrent layers and cells, "
                       "Embedding, Linear, LayerNorm) with configs, parameter counts and dtypes, the other "
                       "tensors, and a suggested --pipeline; or describe a converted model file")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(func=cmd_inspect)

    def common(s):
        s.add_argument("--prefix", help="which module, by key prefix (e.g. 'encoder'); needed when there are several")
        s.add_argument("--nonlinearity", choices=detect.NONLINEARITIES,
                       help="for RNN/RNNCell: the nonlinearity, which a state dict does not store (default tanh)")

    def verify_opts(s):
        s.add_argument("--tol", "--atol", dest="tol", type=float, default=None,
                       help="max abs error allowed (default: by weight storage, " +
                       ", ".join(f"{k} {v:g}" for k, v in TOLERANCES.items()) + ")")
        s.add_argument("--seed", type=int, default=0, help="random seed for the test inputs (default 0)")

    def weights_opt(s, help):
        s.add_argument("--weights", choices=list(TOLERANCES), help=help)

    s = sub.add_parser("convert", help="write an lstm_infer model file")
    s.add_argument("file", metavar="FILE")
    s.add_argument("-o", "--output", required=True, metavar="OUT")
    common(s)
    s.add_argument("--pipeline", metavar="TEXT", help="a whole model: module names and keywords joined by '>', "
                   "e.g. \"embedding > lstm > final > fc > softmax\" (keywords: relu, tanh, sigmoid, softmax, "
                   "logsoftmax, dropout; readouts: steps, last, final, mean, max; name:Kind forces a kind); "
                   "see lstm-infer inspect FILE for a suggestion")
    s.add_argument("--eps", type=float, default=None, help="with --pipeline: the LayerNorm layers' eps, which a "
                   "state dict does not store (default 1e-05, torch's)")
    s.add_argument("--batch-first", action="store_true", help="store batch_first=True in the model (layers and "
                   "pipelines: input (B, T, ...))")
    weights_opt(s, "how the recurrent layers store their weights (default float32): float16 or int8 are "
                "smaller and faster at batch 1, at a small loss of accuracy (see lstm_infer.LSTM)")
    s.add_argument("--verify", action="store_true", help="then compare the written model with torch on the "
                   "source's float32 weights")
    verify_opts(s)
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("verify", help="compare our engine with the matching torch.nn module (or a whole model's "
                       "pipeline of torch.nn modules) on the same weights and random ragged inputs, or with "
                       "outputs saved from your own torch model (--inputs/--outputs)",
                       description="Compare our engine with torch: by default the matching torch.nn module "
                       "(or, for a whole model, the same pipeline of torch.nn modules on pack_padded_sequence) "
                       "on random equal and ragged batches (lengths 1 and T among them). --inputs X.npz: 'x' the "
                       "padded batch in the "
                       "model's layout (token ids (T, B) or floats (T, B, F); (B, T, ...) if batch_first), "
                       "optional 'lengths' (B,). --outputs Y.npz: 'y' what your torch model returned "
                       "((B, out) for one vector per sequence, else (T, B, out) per step; steps past a length "
                       "are not compared).")
    s.add_argument("file", metavar="FILE_OR_OUT")
    common(s)
    verify_opts(s)
    s.add_argument("--inputs", metavar="X.npz", help="inputs you gave your torch model: x [, lengths] "
                   "(or a .npy holding x alone)")
    s.add_argument("--outputs", metavar="Y.npz", help="what your torch model returned for them: y "
                   "(or a .npy holding y alone)")
    weights_opt(s, "check the model with its recurrent weights stored this way (reduced in memory from the "
                "file's float32 weights); default: as the file stores them")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("run", help="run a model over a dataset (.npy files, ragged .npz, .jsonl) into a ragged "
                       ".npz (or a directory of .npy), bucketing sequences by length")
    s.add_argument("model", metavar="MODEL")
    s.add_argument("inputs", metavar="INPUT", nargs="+", help=".npy files (or a directory or glob of them), "
                   "ragged .npz (data, lengths), .jsonl (one list of feature rows per line)")
    s.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="a .npz file (data, lengths, names, skipped), or a directory mirroring .npy inputs")
    s.add_argument("--batch-tokens", type=int, default=runner.DEFAULT_BATCH_TOKENS, metavar="N",
                   help=f"padded time steps per batch (default {runner.DEFAULT_BATCH_TOKENS})")
    s.add_argument("--threads", type=int, metavar="N", help="engine threads (default: all usable cores)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (none without a terminal anyway)")
    s.add_argument("--skip-bad", action="store_true", help="skip bad records (listed in the summary and in "
                   "the output's 'skipped' array) instead of stopping")
    s.set_defaults(func=cmd_run)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised by main's handler: a KeyboardInterrupt, so every cleanup
    path that handles Ctrl-C (temp files, spills, atomic writes) handles it too."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    import signal

    for sig in _STOP_SIGNALS:  # a second signal must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def _stop_signals():
    import signal

    return tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


_STOP_SIGNALS = _stop_signals()


def _install_handlers():
    """SIGTERM/SIGHUP raise Terminated (left alone when ignored, as under nohup); returns
    the old handlers. Only the command line does this, never the library."""
    import signal

    old = {}
    for sig in _STOP_SIGNALS:
        try:
            if signal.getsignal(sig) == signal.SIG_DFL:
                old[sig] = signal.signal(sig, _terminate)
        except ValueError:  # not the main thread: signals cannot be handled here
            break
    return old


def _path_errors(exc):
    """Encode errors of our output: a path's undecodable bytes (surrogate escapes) are
    written as the bytes they were, anything else the stream cannot encode escaped."""
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start:exc.end]
        if all(0xDC80 <= ord(c) <= 0xDCFF for c in bad):
            return bytes(ord(c) - 0xDC00 for c in bad), exc.end
    return codecs.backslashreplace_errors(exc)


def _robust_output():
    """stdout/stderr print any path (a file name that is not UTF-8 must not fail after the
    file was written); returns what to restore."""
    codecs.register_error("lstm_infer.paths", _path_errors)
    old = []
    for stream in (sys.stdout, sys.stderr):
        try:
            old.append((stream, stream.errors))
            stream.reconfigure(errors="lstm_infer.paths")
        except (AttributeError, ValueError, TypeError):
            old.pop()
    return old


def _interrupted(args, exc):
    """The one line for Ctrl-C, SIGTERM or SIGHUP; the exit status 128 + the signal's number."""
    import signal

    signum = getattr(exc, "signum", signal.SIGINT)
    what = "interrupted" if signum == signal.SIGINT else f"terminated by {signal.Signals(signum).name}"
    if getattr(args, "command", None) in ("run", "convert") and not getattr(args, "wrote", False):
        what += "; nothing written"
    print(f"{PROG}: {what}", file=sys.stderr)
    return 128 + signum


def _stdout_closed():
    """stdout's reader went away (``... | head -1``): the usual quiet end, as if killed by
    SIGPIPE; what was written stays written. Later flushes go to /dev/null."""
    import os
    import signal

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):
        pass
    return 128 + getattr(signal, "SIGPIPE", 13)


def main(argv=None) -> int:
    import signal

    restore = _robust_output()
    handlers = _install_handlers()
    args = None
    try:
        args = _parser().parse_args(argv)
        args.wrote = False
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM/SIGHUP through _terminate
        return _interrupted(args, exc)
    except BrokenPipeError as exc:
        if exc.filename is None:  # our stdout, not a file
            return _stdout_closed()
        _error(f"{exc.filename}: {exc.strerror or exc}")
    except (UserError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        _error(msg)
    except OSError as exc:
        _error(f"{exc.filename or ''}: {exc.strerror or exc}")
    except MemoryError as exc:  # the last resort: each reader checks sizes first
        _error(f"out of memory{f' ({exc})' if str(exc) else ''}")
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        for stream, errors in restore:
            try:
                stream.reconfigure(errors=errors)
            except (ValueError, OSError):
                pass
    return EXIT_USAGE


def _error(msg):
    try:
        print(f"{PROG}: error: {msg}", file=sys.stderr)
    except OSError:  # stderr gone too
        pass


if __name__ == "__main__":
    sys.exit(main())
