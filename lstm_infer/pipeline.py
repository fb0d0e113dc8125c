"""Pipelines: the text that names a whole model's layers, read against a state dict.

    "embedding > lstm > final > fc > softmax"

Each word, separated by ``>``, is one of
  - a module name: a state-dict prefix ("lstm" for keys "lstm.weight_ih_l0", ...;
    nested ones too, "encoder.rnn"), whose kind (Embedding, Linear, LayerNorm, LSTM,
    GRU, RNN) is detected from its tensors. ``name:Kind`` forces a kind where the
    tensors are ambiguous: a lone 2-D ``weight`` is an Embedding or a bias-free
    Linear. Without ``:Kind`` it is read as an Embedding when it comes first (unless
    only a Linear chains with the next layer) and as a Linear anywhere else, since an
    Embedding takes token ids and so can only come first;
  - an activation or dropout keyword: relu, tanh, sigmoid, softmax, logsoftmax
    (softmax and logsoftmax act on the last axis, dim=-1), dropout (inert);
  - a readout (see lstm_infer.layers.READOUTS): steps, last, final, mean, max.
A name that is both a prefix of the state dict and a keyword is the prefix.

Rules, each refused with a ValueError naming the layers: the widths chain (each
layer takes what the one before gives); an Embedding comes first; a readout follows
a recurrent layer (dropout may stand between) and there is at most one after the
last recurrent layer; a recurrent layer may follow another directly or after
``steps`` (then per-step layers may stand between them), never after another
readout; a layer other than dropout does not follow a recurrent layer without a
readout. A pipeline may end with recurrent layers: the result is then per step.

Functions (plain data in and out; no model classes, so lstm_infer.modelfile uses
them too):

    parse(text) -> [(word, kind or None)]
    resolve(state_dict, text, nonlinearity=None, eps=None) -> [(Layer, {torch key: array})]
        the layers a pipeline names, with each module's tensors under its own torch
        key names (prefix stripped); checked with check_layers. Tensors of the state
        dict that no layer uses are named in a LeftOutWarning.
    check_layers(layers) -> Chain
        layers: [Layer(name, kind, config)]; Chain(in_width, out_width, readout):
        in_width None for token ids, ANY when no layer fixes it; readout the mode
        after the last recurrent layer or None.
    check_names(names)       names usable as state-dict prefixes, unique, none inside another
    owner(key, names)        the name that is a dotted prefix of key, or None
    text(layers) -> str      the normalized pipeline text of layers
    list_modules(state_dict) -> [Found(name, kind, config, keys, alternatives, error)]
        every recognised module (Embedding, Linear, LayerNorm, LSTM, GRU, RNN and the
        cells) in file order; error is the ValueError of a broken group (then config
        is None); name is the prefix without its dot ("" at the top level).
    unrecognised(state_dict, found=None) -> [key]   tensors of no recognised module
    suggest(state_dict, found=None) -> str or None  a pipeline whose widths chain
    left_out(found, suggestion) -> [name]           the modules a suggestion leaves out
    describe(kind, config) -> str                    "LSTM(16, 32, bidirectional=True)",
                                                     "Linear(in_features=64, ...)"
    in_width(kind, config), out_width(kind, config, width)
        the width a layer takes (None: token ids; ANY: any) and gives
    check_config(kind, config)  ValueError unless config is exactly kind's arguments
                                (kinds of ARGS: all but the recurrent ones)
"""

from __future__ import annotations

import numbers
import re
import warnings
from collections import namedtuple

from . import detect

__all__ = ["Layer", "Chain", "Found", "ANY", "KEYWORDS", "READOUTS", "RECURRENT_KINDS", "LeftOutWarning",
           "LAYER_NORM_NOTE", "parse", "resolve", "check_layers", "check_names", "owner", "text", "list_modules",
           "unrecognised", "suggest", "left_out", "describe", "in_width", "out_width", "MAX_LAYERS", "ARGS",
           "KINDS", "check_config"]

# layers.READOUTS, repeated here so that this module needs no model classes
READOUTS = ("steps", "last", "final", "mean", "max")
KEYWORDS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax",
            "logsoftmax": "LogSoftmax", "log_softmax": "LogSoftmax", "dropout": "Dropout"}
RECURRENT_KINDS = detect.LAYER_KINDS
POINTWISE_KINDS = ("ReLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "Dropout")
# what ``name:Kind`` may force, by lower-case name
_FORCIBLE = {k.lower(): k for k in detect.OTHER_KINDS + RECURRENT_KINDS}
# A model file's pipeline is bounded: nothing real has this many layers.
MAX_LAYERS = 1000
ANY = "any"  # the width before a layer that fixes it (a model of pointwise layers only)

# alternatives: other kinds the layer's tensors fit (a lone 2-D weight), for messages
Layer = namedtuple("Layer", "name kind config alternatives", defaults=((),))
# the constructor arguments of every kind besides the recurrent ones (detect.SIGNATURES)
ARGS = {**{k: tuple(v) for k, v in detect.OTHER_SIGNATURES.items()},
        "ReLU": (), "Tanh": (), "Sigmoid": (), "Softmax": ("dim",), "LogSoftmax": ("dim",),
        "Dropout": ("p",), "Readout": ("mode",)}
KINDS = RECURRENT_KINDS + tuple(ARGS)
Chain = namedtuple("Chain", "in_width out_width readout")
Found = namedtuple("Found", "name kind config keys alternatives error")

# What a state dict cannot tell about a 1-D weight (and bias), for messages
LAYER_NORM_NOTE = ("a state dict stores neither a LayerNorm's eps nor that the module is a LayerNorm "
                   "(nn.RMSNorm, PReLU, GroupNorm and BatchNorm without running statistics hold the same "
                   "tensors): it is read as a LayerNorm with eps=1e-05, torch's default")


class LeftOutWarning(UserWarning):
    """Tensors of a state dict that no layer of a pipeline uses: the model runs without
    them (torch's strict load_state_dict would call them unexpected keys)."""


# ------------------------------------------------------------------ widths

def in_width(kind, config):
    """The width a layer takes: None for token ids, ANY for pointwise layers."""
    if kind == "Embedding":
        return None
    if kind == "Linear":
        return config["in_features"]
    if kind == "LayerNorm":
        return config["normalized_shape"][-1]
    if kind in RECURRENT_KINDS:
        return config["input_size"]
    return ANY


def out_width(kind, config, width):
    """The width a layer gives for input of ``width`` (a Readout: the width it reads)."""
    if kind == "Embedding":
        return config["embedding_dim"]
    if kind == "Linear":
        return config["out_features"]
    if kind in RECURRENT_KINDS:
        return (2 if config["bidirectional"] else 1) * (config.get("proj_size") or config["hidden_size"])
    return width


def describe(kind, config):
    """The layer as torch prints its constructor call."""
    if kind == "Embedding":
        pad = "" if config.get("padding_idx") is None else f", padding_idx={config['padding_idx']}"
        return f"Embedding({config['num_embeddings']}, {config['embedding_dim']}{pad})"
    if kind == "Readout":
        return f"Readout({config['mode']!r})"
    if kind in detect.SIGNATURES:  # the recurrent modules as lstm_infer and torch print them
        sig = detect.SIGNATURES[kind]
        extra = "".join(f", {k}={v!r}" for k, v in config.items()
                        if k in sig and k not in ("input_size", "hidden_size", "dropout", "batch_first")
                        and v != sig[k])
        return f"{kind}({config['input_size']}, {config['hidden_size']}{extra})"
    shown = {k: v for k, v in config.items() if k not in ("dropout", "batch_first")}
    return f"{kind}(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def _takes(layer):
    w = in_width(layer.kind, layer.config)
    return "token ids" if w is None else f"{w} features"


def _gives(width):
    return "token ids" if width is None else f"{width} features"


# ------------------------------------------------------------------ rules

def check_layers(layers) -> Chain:
    """Checks the pipeline rules (module docstring) for [Layer]; ValueError naming the
    layers that break one."""
    layers = list(layers)
    if not layers:
        raise ValueError("the pipeline is empty")
    if len(layers) > MAX_LAYERS:
        raise ValueError(f"the pipeline has {len(layers)} layers, more than {MAX_LAYERS}")
    check_names([layer.name for layer in layers])
    width = in_width(layers[0].kind, layers[0].config)
    # the width the pipeline takes: pointwise layers first take what the next layer does
    first = next((w for w in (in_width(layer.kind, layer.config) for layer in layers) if w != ANY), ANY)
    giver = None           # the last layer that set the width
    prev = None            # the last layer other than dropout
    last_rec = None        # the last recurrent layer
    readout = None         # the readout after last_rec
    reduced = None         # a readout other than steps, once seen
    for i, layer in enumerate(layers):
        kind = layer.kind
        if kind == "Embedding" and i:
            raise ValueError(f"{layer.name!r} is an Embedding: it takes token ids, so it must come first "
                             f"(here it follows {layers[i - 1].name!r})"
                             + _alt_hint(layer))
        if kind == "Readout":
            mode = layer.config["mode"]
            if last_rec is None:
                raise ValueError(f"readout {mode!r} needs a recurrent layer (LSTM, GRU, RNN) before it")
            if readout is not None or reduced is not None:
                raise ValueError(f"two readouts after {last_rec.name!r}: {(readout or reduced).config['mode']!r} "
                                 f"and {mode!r}; keep one")
            if prev.kind not in RECURRENT_KINDS:
                raise ValueError(f"readout {mode!r} must follow the recurrent layer {last_rec.name!r} directly "
                                 f"(here it follows {prev.name!r})")
            readout = layer
            if mode != "steps":
                reduced = layer
            prev = layer
            continue
        if kind in RECURRENT_KINDS:
            if reduced is not None:
                raise ValueError(f"recurrent layer {layer.name!r} after the readout "
                                 f"{reduced.config['mode']!r}, which leaves one vector per sequence: "
                                 f"recurrent layers take sequences (use 'steps' between recurrent layers, "
                                 f"or none)")
            readout = None
            last_rec = layer
        elif kind != "Dropout" and prev is not None and prev.kind in RECURRENT_KINDS:
            raise ValueError(f"{layer.name!r} follows the recurrent layer {prev.name!r} without a readout: "
                             f"put one of {', '.join(READOUTS)} between them")
        if kind == "LayerNorm" and len(layer.config["normalized_shape"]) != 1:
            raise ValueError(f"{layer.name!r} ({describe(kind, layer.config)}) normalizes over several axes; "
                             f"in a pipeline a LayerNorm normalizes the features (one axis)")
        need = in_width(kind, layer.config)
        if need != ANY and width != ANY and need != width:
            raise ValueError(f"the shapes do not chain: {giver.name!r} ({describe(giver.kind, giver.config)}) "
                             f"gives {_gives(width)}, {layer.name!r} ({describe(kind, layer.config)}) takes "
                             f"{_takes(layer)}" + _alt_hint(giver) + _alt_hint(layer))
        width = out_width(kind, layer.config, need if width == ANY else width)
        if need != ANY:
            giver = layer
        if kind != "Dropout":
            prev = layer
    mode = None if readout is None else readout.config["mode"]
    return Chain(first, width, mode)


def _alt_hint(layer):
    """For a layer whose tensors also fit another kind: how to choose it."""
    return "".join(f" ({layer.name!r} was read as {detect.article(layer.kind)} {layer.kind}; its tensors "
                   f"also fit {detect.article(other)} {other}: write '{layer.name}:{other}' to choose it)"
                   for other in layer.alternatives)


_NAME_RE = re.compile(r"^[^\s>:.]+(?:\.[^\s>:.]+)*$")


def check_names(names):
    """Names must be usable as state-dict prefixes: non-empty, without spaces, control
    characters, '>' or ':', no empty dotted part, unique, and none a dotted prefix of
    another (which would own the other's tensors)."""
    seen = set()
    for name in names:
        if not isinstance(name, str) or not _NAME_RE.match(name) or not name.isprintable():
            raise ValueError(f"layer name {name!r} is not usable: names are non-empty strings without "
                             f"spaces, control characters, '>' or ':' (dots separate nested module names)")
        if name in seen:
            raise ValueError(f"layer name {name!r} is used twice")
        seen.add(name)
    for other in names:
        parts = other.split(".")
        for n in range(1, len(parts)):
            name = ".".join(parts[:n])
            if name in seen:
                raise ValueError(f"layer name {name!r} is a prefix of {other!r}: the tensors of "
                                 f"{other!r} would be read as {name!r}'s")


def _is_int(v, lo, hi=None):
    return type(v) is int and v >= lo and (hi is None or v <= hi)


def _is_number(v):
    return type(v) in (int, float) and v == v and abs(v) != float("inf")


def check_config(kind, config):
    """ValueError unless config holds exactly the constructor arguments of kind (one of
    ARGS, not a recurrent kind) with JSON values of the right types and ranges."""
    if kind not in ARGS:
        raise ValueError(f"unknown layer kind {kind!r} (known: {', '.join(KINDS)})")
    if not isinstance(config, dict) or set(config) != set(ARGS[kind]):
        got = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{kind} config must have exactly {list(ARGS[kind])}, got {got}")
    c = config
    if kind == "Embedding":
        ok = _is_int(c["num_embeddings"], 1) and _is_int(c["embedding_dim"], 1) and (
            c["padding_idx"] is None or _is_int(c["padding_idx"], 0, c["num_embeddings"] - 1))
    elif kind == "Linear":
        ok = _is_int(c["in_features"], 1) and _is_int(c["out_features"], 1) and type(c["bias"]) is bool
    elif kind == "LayerNorm":
        shape = c["normalized_shape"]
        ok = (isinstance(shape, list) and 1 <= len(shape) <= 32 and all(_is_int(n, 1) for n in shape)
              and _is_number(c["eps"]) and c["eps"] >= 0 and type(c["elementwise_affine"]) is bool
              and type(c["bias"]) is bool)
    elif kind in ("Softmax", "LogSoftmax"):
        ok = _is_int(c["dim"], -32, 31)
    elif kind == "Dropout":
        ok = _is_number(c["p"]) and 0 <= c["p"] <= 1
    elif kind == "Readout":
        ok = c["mode"] in READOUTS
    else:
        ok = True
    if not ok:
        raise ValueError(f"{kind} config has a value of the wrong type or range: {config!r}")


def owner(key, names):
    """The name among ``names`` (a set or dict) that is a dotted prefix of ``key`` (the
    layer whose tensor it is), or None. check_names makes it unique."""
    if not isinstance(key, str):
        return None
    parts = key.split(".")
    return next((n for n in (".".join(parts[:i]) for i in range(1, len(parts))) if n in names), None)


def _keyword(kind, config):
    if kind == "Readout":
        return config["mode"]
    return kind.lower() if kind in POINTWISE_KINDS else None


def text(layers):
    """The pipeline text for layers: names for layers with tensors, keywords for the rest."""
    return " > ".join(_keyword(layer.kind, layer.config) or layer.name for layer in layers)


# ------------------------------------------------------------------ parsing

def parse(pipeline):
    """[(word, forced kind or None)] of a pipeline text; ValueError for an empty word
    or an unknown forced kind."""
    if not isinstance(pipeline, str):
        raise TypeError(f"the pipeline must be a str like 'embedding > lstm > final > fc', "
                        f"got {type(pipeline).__name__}")
    words = [w.strip() for w in pipeline.split(">")]
    if len(words) > MAX_LAYERS:
        raise ValueError(f"the pipeline has {len(words)} layers, more than {MAX_LAYERS}")
    out = []
    for i, word in enumerate(words):
        if not word:
            raise ValueError(f"pipeline {pipeline!r}: step {i + 1} is empty (steps are separated by '>')")
        name, sep, kind = word.partition(":")
        name, kind = name.strip(), kind.strip()
        if sep:
            if kind.lower() not in _FORCIBLE:
                raise ValueError(f"pipeline {pipeline!r}: unknown kind {kind!r} in {word!r} (kinds: "
                                 f"{', '.join(_FORCIBLE.values())})")
            kind = _FORCIBLE[kind.lower()]
        out.append((name, kind or None))
    return out


# ------------------------------------------------------------------ state dicts

def _specs(sd):
    """Every recognised module's (prefix, kind, ModuleSpec or ValueError)."""
    return detect.scan(sd) + detect.scan_other(sd)


def list_modules(sd, found=None):
    """Every recognised module in file order (by its first key) as [Found]."""
    order = {k: i for i, k in enumerate(sd)}
    rows = []
    for prefix, kind, res in (found if found is not None else _specs(sd)):
        name = prefix[:-1] if prefix.endswith(".") else prefix
        if isinstance(res, ValueError):
            keys = [k for k in sd if isinstance(k, str) and k.startswith(prefix)
                    and "." not in k[len(prefix):]]
            rows.append((min((order[k] for k in keys), default=len(order)),
                         Found(name, kind, None, keys, (), res)))
        else:
            rows.append((min(order[k] for k in res.keys),
                         Found(name, res.kind, dict(res.config), list(res.keys), res.alternatives, None)))
    rows.sort(key=lambda r: r[0])
    return [r[1] for r in rows]


def unrecognised(sd, found=None):
    """The keys of sd that belong to no valid recognised module, in file order."""
    found = list_modules(sd) if found is None else found
    used = {k for f in found if f.error is None for k in f.keys}
    return [k for k in sd if k not in used]


def suggest(sd, found=None):
    """A pipeline whose widths chain, from the modules in file order, or None: an
    Embedding first if the file starts with one (a bias-free Linear where only that
    chains with the next module), the recurrent layers that chain, 'steps' between
    recurrent layers that other layers separate and 'final' after the last of them (a
    classifier's readout; a tagger wants 'steps'), then the Linear and LayerNorm
    layers that chain. A module inside a container that holds tensors lstm_infer does
    not recognise (an attention's out_proj) is never suggested. Activations cannot be
    seen in a state dict: add them by hand."""
    found = list_modules(sd) if found is None else found
    stray = set(unrecognised(sd, found))
    mods = [f for f in found if f.error is None and f.name and f.kind not in detect.CELL_KINDS
            and not _beside_stray(f.name, stray)]
    words, width, pending, final = [], ANY, False, False
    for i, f in enumerate(mods):
        kind, config = f.kind, f.config
        if kind == "Embedding" and (words or _linear_first(f, mods[i + 1:])):
            # an Embedding comes first: elsewhere, or where only a Linear chains, a bias-free Linear
            spec = detect.as_kind(detect.ModuleSpec(f.name + ".", kind, config, f.keys, (),
                                                    f.alternatives), "Linear")
            kind, config = "Linear", spec.config
        if kind in RECURRENT_KINDS and final:
            continue
        need = in_width(kind, config)
        if need is None and words or need not in (None, ANY) and width != ANY and need != width:
            continue
        if kind not in RECURRENT_KINDS and pending:
            final = not any(m.kind in RECURRENT_KINDS for m in mods[i + 1:])
            words.append("final" if final else "steps")
            pending = False
        words.append(f.name + (f":{kind}" if kind != f.kind else ""))
        pending = pending or kind in RECURRENT_KINDS
        width = out_width(kind, config, width)
    return " > ".join(words) or None


def _beside_stray(name, stray):
    """Whether the container of module ``name`` (its prefix up to the last dot) holds
    tensors of no recognised module."""
    parent = name.rpartition(".")[0]
    return bool(parent) and any(k.startswith(parent + ".") for k in stray if isinstance(k, str))


def _linear_first(f, rest):
    """Whether a first lone 2-D weight is a bias-free Linear: only that chains with the
    next module that fixes its input width (as _default_kind decides in a pipeline)."""
    for m in rest:
        if m.error is None and m.name and not m.alternatives and m.kind not in detect.CELL_KINDS:
            return _only_linear_chains(f.config, m)
    return False


def _only_linear_chains(config, nxt):
    """Whether a lone 2-D weight (``config`` as an Embedding's) chains with the module
    ``nxt`` (anything with .kind and .config) only when read as a bias-free Linear."""
    need = in_width(nxt.kind, nxt.config)
    return need == config["num_embeddings"] and need != config["embedding_dim"]


def left_out(found, suggestion):
    """The names of the recognised modules a suggested pipeline leaves out."""
    named = {word for word, _ in parse(suggestion)} if suggestion else set()
    return [f.name for f in found if f.error is None and f.name and f.name not in named]


def _available(sd, specs):
    mods = [f"{p[:-1]!r} ({describe(r.kind, r.config)})" if p else
            f"{describe(r.kind, r.config)} at the top level (keys without a prefix: build it with "
            f"lstm_infer.{r.kind}.from_state_dict)" for p, _, r in specs if not isinstance(r, ValueError)]
    return ("the state dict holds " + (", ".join(mods) if mods else "no module lstm_infer recognises")
            + f"; keywords: {', '.join(k for k in KEYWORDS if k != 'log_softmax')}; "
            f"readouts: {', '.join(READOUTS)}")


def _module_at(sd, specs, name):
    """The ModuleSpec a pipeline word names, or None when no key lies under it."""
    prefix = name + "."
    hits = [(p, r) for p, _, r in specs if p == prefix]
    if not hits:
        hits = [(p, r) for p, _, r in specs if p.startswith(prefix)]
        if len(hits) > 1:
            inner = ", ".join(f"{p[:-1]!r}" for p, _ in hits)
            raise ValueError(f"{name!r} holds several modules: {inner}; name one of them")
    if not hits:
        if any(isinstance(k, str) and k.startswith(prefix) for k in sd):
            keys = [k for k in sd if isinstance(k, str) and k.startswith(prefix)]
            raise ValueError(f"{name!r} holds no module lstm_infer recognises (Embedding, Linear, "
                             f"LayerNorm, LSTM, GRU, RNN): {detect.describe_tensors(sd, keys)}")
        return None
    if len(hits) > 1:  # a recurrent layer and a weight/bias group under one prefix
        raise ValueError(f"{name!r} holds tensors of more than one module: "
                         + detect.describe_tensors(sd, [k for k in sd if isinstance(k, str)
                                                        and k.startswith(prefix)]))
    p, res = hits[0]
    if isinstance(res, ValueError):
        raise ValueError(f"{name!r}: {res}")
    # a tensor under the name that the module does not use (a learned initial state,
    # an attention beside the recurrent layer) would be dropped without a word
    own = set(res.keys)
    extra = [k for k in sd if isinstance(k, str) and k.startswith(prefix) and k not in own]
    if extra:
        where = "" if p == prefix else f" at {p[:-1]!r}"
        raise ValueError(f"{name!r} holds tensors that its {describe(res.kind, res.config)}{where} does "
                         f"not use: {detect.describe_tensors(sd, extra)}; lstm_infer would run without them. "
                         f"If the model does not use them either, drop them from the state dict")
    return res


def resolve(sd, pipeline, nonlinearity=None, eps=None):
    """[(Layer, weights)] for the pipeline over the state dict sd (names -> arrays, or
    anything with .shape): weights are the module's tensors under its own torch key
    names. nonlinearity: "tanh" or "relu" for every RNN layer, or {name: value}
    (a state dict does not record it; default "tanh", torch's). eps: the same for
    the LayerNorm layers' eps (default 1e-05, torch's). Tensors that no layer uses
    (a learned initial state, a scale, an attention's) are named in a
    LeftOutWarning: the model runs without them."""
    words = parse(pipeline)
    if eps is not None:
        eps = {k: _eps(v) for k, v in eps.items()} if isinstance(eps, dict) else _eps(eps)
    specs = _specs(sd)
    picked = []  # (name, spec or None, forced kind, keyword kind)
    for name, forced in words:
        spec = _module_at(sd, specs, name)
        if spec is None:
            key = name.lower()
            if forced:
                raise ValueError(f"no module {name!r} in the state dict ({name}:{forced}); "
                                 + _available(sd, specs))
            if key in KEYWORDS:
                picked.append((key, None, None, KEYWORDS[key]))
            elif key in READOUTS:
                picked.append((key, None, None, "Readout"))
            else:
                raise ValueError(f"no module {name!r} in the state dict and no keyword of that name; "
                                 + _available(sd, specs))
            continue
        if spec.kind in detect.CELL_KINDS:
            raise ValueError(f"{name!r} is an nn.{spec.kind}, which takes one step at a time; a pipeline takes "
                             f"the layers that run whole sequences (LSTM, GRU, RNN)")
        picked.append((spec.prefix[:-1], spec, forced, None))
    layers = []
    used, taken = set(), set()
    for i, (name, spec, forced, keyword) in enumerate(picked):
        if spec is None:
            unique, n = name, 2
            while unique in used:
                unique, n = f"{name}_{n}", n + 1
            used.add(unique)
            config = {"mode": name} if keyword == "Readout" else \
                {"dim": -1} if keyword in ("Softmax", "LogSoftmax") else {"p": 0.0} if keyword == "Dropout" else {}
            layers.append((Layer(unique, keyword, config), {}))
            continue
        used.add(name)
        kind = forced or _default_kind(spec, i, picked)
        if kind != spec.kind:
            if kind not in spec.alternatives:
                raise ValueError(f"{name!r} holds {detect.article(spec.kind)} {spec.kind} "
                                 f"({describe(spec.kind, spec.config)}), not {detect.article(kind)} {kind}")
            spec = detect.as_kind(spec, kind)
        config = dict(spec.config)
        if kind in RECURRENT_KINDS:
            config = spec.full_config(**_nonlinearity_for(kind, name, nonlinearity))
            config.pop("batch_first")  # the Sequential's, set by the caller
        elif kind == "LayerNorm" and eps is not None:
            config["eps"] = eps if not isinstance(eps, dict) else eps.get(name, config["eps"])
        taken.update(spec.keys)
        # only first can a lone 2-D weight be either kind: an Embedding comes first
        alternatives = () if forced or i else spec.alternatives
        layers.append((Layer(name, kind, config, alternatives), detect.module_state_dict(sd, spec)))
    check_layers([layer for layer, _ in layers])
    _applies("nonlinearity", nonlinearity, "RNN", layers)
    _applies("eps", eps, "LayerNorm", layers)
    left = [k for k in sd if k not in taken]
    if left:
        them, n = ("it", "1 tensor of the state dict is") if len(left) == 1 else \
            ("them", f"{len(left)} tensors of the state dict are")
        warnings.warn(f"{n} in no layer of the pipeline: {detect.describe_tensors(sd, left)}; the model runs "
                      f"without {them}, so if the torch model uses {them} (a learned initial state, a scale, "
                      f"an attention) the results differ", LeftOutWarning, stacklevel=3)
    return layers


def _applies(option, value, kind, layers):
    """ValueError unless the option (a value for every layer of ``kind``, or {name:
    value}) has layers of that kind to set."""
    names = [layer.name for layer, _ in layers if layer.kind == kind]
    if value is not None and not names:
        raise ValueError(f"{option} applies to {kind} layers; the pipeline has none")
    if isinstance(value, dict) and set(value) - set(names):
        raise ValueError(f"{option} names {sorted(set(value) - set(names))}, which are not {kind} layers of "
                         f"the pipeline (its {kind} layers: {names})")


def _eps(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0 (a LayerNorm's epsilon), got {value!r}")
    return float(value)


def _nonlinearity_for(kind, name, nonlinearity):
    if nonlinearity is None or kind != "RNN":
        return {}
    if isinstance(nonlinearity, str):
        return {"nonlinearity": nonlinearity}
    return {"nonlinearity": nonlinearity[name]} if name in nonlinearity else {}


def _default_kind(spec, i, picked):
    """An unambiguous spec's kind; for a lone 2-D weight, Embedding when it comes first
    unless only a Linear chains with what follows, else Linear (see the docstring)."""
    if not spec.alternatives:
        return spec.kind
    if i:
        return "Linear"
    nxt = picked[1][1] if len(picked) > 1 else None
    if nxt is not None and not nxt.alternatives and _only_linear_chains(spec.config, nxt):
        return "Linear"
    return "Embedding"
