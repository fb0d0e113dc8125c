"""Find the recurrent modules of ``torch.nn`` in a state dict by key names and shapes.

Recognised: ``nn.LSTM`` (with projections), ``nn.GRU``, ``nn.RNN`` (keys
``weight_ih_l0`` ..., told apart by ``weight_hh_l0``: (4H, H), (3H, H), (H, H);
``weight_hr_l*`` marks an LSTM with projections) and ``nn.LSTMCell``,
``nn.GRUCell``, ``nn.RNNCell`` (keys ``weight_ih``, ``weight_hh``, ``bias_ih``,
``bias_hh``; W_hh (4H, H), (3H, H), (H, H)).

Only shapes are read, so values may be NumPy arrays, torch tensors or anything
with a ``.shape``.  Every inconsistency is reported as a ``ValueError`` naming the
key and the shape that is wrong.

Also recognised, for whole models (:func:`scan_other`): ``nn.Embedding``, ``nn.Linear``
and ``nn.LayerNorm``, a prefix whose own keys are exactly ``weight`` (and ``bias``).

A state dict does not record ``nn.RNN``'s nonlinearity: specs of RNN / RNNCell
say ``nonlinearity="tanh"`` and list it in ``spec.assumed``; callers override it
with :meth:`ModuleSpec.full_config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["ModuleSpec", "LSTMSpec", "KINDS", "LAYER_KINDS", "CELL_KINDS", "SIGNATURES", "NONLINEARITIES",
           "scan", "find_modules", "find_one", "module_state_dict", "constructor_config", "describe_tensors",
           "find_lstms", "infer_config", "lstm_state_dict", "select", "OTHER_KINDS", "OTHER_SIGNATURES",
           "scan_other", "other_shapes", "as_kind"]

LAYER_KINDS = ("LSTM", "GRU", "RNN")
CELL_KINDS = ("LSTMCell", "GRUCell", "RNNCell")
KINDS = LAYER_KINDS + CELL_KINDS
NONLINEARITIES = ("tanh", "relu")
_REQUIRED = object()

# Each class's constructor keyword arguments with their defaults, in torch's order.
SIGNATURES = {
    "LSTM": dict(input_size=_REQUIRED, hidden_size=_REQUIRED, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0),
    "GRU": dict(input_size=_REQUIRED, hidden_size=_REQUIRED, num_layers=1, bias=True, batch_first=False,
                dropout=0.0, bidirectional=False),
    "RNN": dict(input_size=_REQUIRED, hidden_size=_REQUIRED, num_layers=1, nonlinearity="tanh", bias=True,
                batch_first=False, dropout=0.0, bidirectional=False),
    "LSTMCell": dict(input_size=_REQUIRED, hidden_size=_REQUIRED, bias=True),
    "GRUCell": dict(input_size=_REQUIRED, hidden_size=_REQUIRED, bias=True),
    "RNNCell": dict(input_size=_REQUIRED, hidden_size=_REQUIRED, bias=True, nonlinearity="tanh"),
}
# The C core's limits on a config (LSTM_MAX_FEATURES, LSTM_MAX_LAYERS in lstm_infer.h),
# here for the modules that run without the extension (test_modelfile checks they agree).
CORE_LIMITS = {"input_size": 1 << 24, "hidden_size": 1 << 24, "num_layers": 1024}
# Arguments a state dict cannot tell (everything else comes from the shapes).
_FREE = {"LSTM": ("batch_first", "dropout"), "GRU": ("batch_first", "dropout"),
         "RNN": ("nonlinearity", "batch_first", "dropout"), "LSTMCell": (), "GRUCell": (), "RNNCell": ("nonlinearity",)}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "LSTMCell": 4, "GRUCell": 3, "RNNCell": 1}
_ROWS = {4: "4*hidden_size", 3: "3*hidden_size", 1: "hidden_size"}
_UNKNOWN_LAYER, _UNKNOWN_CELL = "LSTM/GRU/RNN", "LSTMCell/GRUCell/RNNCell"

_LAYER_RE = re.compile(
    r"^(?P<prefix>(?:.*\.)?)(?P<name>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    r"_l(?P<layer>0|[1-9][0-9]*)(?P<rev>_reverse)?\Z"  # torch's own spelling only: l0, not l00 or l٠
)
_CELL_RE = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<name>weight_ih|weight_hh|bias_ih|bias_hh)\Z")


@dataclass
class ModuleSpec:
    """One recurrent module found in a state dict.

    prefix:  key prefix including the trailing '.', '' for top level.
    kind:    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell" or "RNNCell" (the class name).
    config:  the constructor arguments the shapes determine (LSTM: input_size, hidden_size,
             num_layers, bias, bidirectional, proj_size; GRU: the same without proj_size;
             RNN: GRU's plus nonlinearity; cells: input_size, hidden_size, bias, and
             nonlinearity for RNNCell). batch_first and dropout are not in it.
    keys:    the state-dict keys (with prefix) that belong to it, in torch's order.
    assumed: config keys whose value is not in the state dict but assumed
             (("nonlinearity",) for RNN and RNNCell: "tanh", torch's default).
    alternatives: other kinds the same tensors fit (("Linear",) for a lone 2-D
             weight read as an Embedding, see :func:`as_kind`).
    """

    prefix: str
    kind: str
    config: dict
    keys: list = field(default_factory=list)
    assumed: tuple = ()
    alternatives: tuple = ()

    def full_config(self, **overrides) -> dict:
        """Every constructor argument of ``kind`` (see :func:`constructor_config`)."""
        return constructor_config(self.kind, self.config, **overrides)

    @property
    def names(self) -> list:
        """``keys`` without the prefix: the module's own torch key names."""
        return [k[len(self.prefix):] for k in self.keys]


LSTMSpec = ModuleSpec  # the name before GRU/RNN were recognised


def constructor_config(kind: str, config: Mapping, **overrides) -> dict:
    """The keyword arguments of ``getattr(lstm_infer, kind)``, in torch's order: ``config``
    (e.g. a spec's), then the defaults for what it lacks, then ``overrides``.

    Only arguments a state dict cannot tell may be overridden: ``batch_first`` and
    ``dropout`` for the layers, ``nonlinearity`` ("tanh" or "relu") for RNN/RNNCell.
    Anything else raises ``ValueError`` saying why.
    """
    if kind not in SIGNATURES:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    sig = SIGNATURES[kind]
    for k in config:
        if k not in sig:
            raise ValueError(f"{kind} has no argument {k!r} (its arguments: {', '.join(sig)})")
    for k, v in overrides.items():
        if k == "nonlinearity" and k not in sig:
            raise ValueError(f"nonlinearity applies to RNN and RNNCell only, not to {kind}")
        if k == "batch_first" and kind in CELL_KINDS:
            raise ValueError(f"batch_first applies to the layers (LSTM, GRU, RNN) only; {kind} takes "
                             f"input of shape (batch, input_size) or (input_size,)")
        if k not in sig:
            raise ValueError(f"{kind} has no argument {k!r} (its arguments: {', '.join(sig)})")
        if k not in _FREE[kind] and k in config and config[k] != v:
            raise ValueError(f"{k}={v!r} disagrees with the tensor shapes, which give {k}={config[k]!r}")
    out = {}
    for k, default in sig.items():
        v = overrides.get(k, config.get(k, default))
        if v is _REQUIRED:
            raise ValueError(f"{kind} needs {k}")
        out[k] = v
    if "nonlinearity" in out and out["nonlinearity"] not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {out['nonlinearity']!r}")
    if "batch_first" in out and not isinstance(out["batch_first"], bool):
        raise ValueError(f"batch_first must be True or False, got {out['batch_first']!r}")
    return out


# ------------------------------------------------------------------ shapes

def _shape(value: Any) -> tuple:
    shape = getattr(value, "shape", None)
    if shape is None:
        import numpy as np

        shape = np.shape(value)
    return tuple(int(s) for s in shape)


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _expect(key: str, got: tuple, want: tuple, why: str) -> None:
    if got != want:
        raise ValueError(f"{key}: expected shape {_fmt(want)} ({why}), got {_fmt(got)}")


def _kind_of(shape: tuple, kinds: tuple):
    """The kind whose W_hh has ``shape`` (gates*H, H), or None."""
    if len(shape) != 2 or shape[1] <= 0:
        return None
    for kind in kinds:
        if shape[0] == _GATES[kind] * shape[1]:
            return kind
    return None


def _fits_none(key: str, shape: tuple, cells: bool) -> ValueError:
    lstm, gru, rnn = ("nn.LSTMCell", "nn.GRUCell", "nn.RNNCell") if cells else ("nn.LSTM", "nn.GRU", "nn.RNN")
    rows, cols = shape
    if rows % 4 or rows == 0:
        why = f"the first dimension {rows} is not a positive multiple of 4 ({lstm}: 4*hidden_size)"
    else:
        why = f"the first dimension {rows} is not 4*{cols} ({lstm}: 4*hidden_size, hidden_size)"
    return ValueError(f"{key}: shape {_fmt(shape)} fits no recurrent {'cell' if cells else 'layer'}: {why}, "
                      f"nor 3*{cols} ({gru}: 3*hidden_size, hidden_size) or {cols} ({rnn}: hidden_size, hidden_size)")


def _layer_kind(prefix: str, items: dict, sd: Mapping):
    """The kind a layer group's weight_hh_l0 (or weight_hr) says, or None."""
    if any(n == "weight_hr" for (n, _, _) in items):
        return "LSTM"
    k = items.get(("weight_hh", 0, False))
    return None if k is None else _kind_of(_shape(sd[k]), LAYER_KINDS)


def _layer_group(prefix: str, items: dict, sd: Mapping) -> ModuleSpec:
    """items: (name, layer, reverse) -> full key."""
    layers = sorted({layer for (_, layer, _) in items})
    bidir = any(rev for (_, _, rev) in items)
    dirs = (False, True) if bidir else (False,)
    sfx = {False: "", True: "_reverse"}

    def key(name, layer, rev):
        return f"{prefix}{name}_l{layer}{sfx[rev]}"

    # weight_ih / weight_hh must exist for each layer and direction, layers 0..L-1.
    wih_layers = sorted({layer for (n, layer, _) in items if n == "weight_ih"})
    if not wih_layers:
        raise ValueError(f"{key('weight_ih', layers[0], False)}: missing (found other recurrent-layer keys "
                         f"under prefix {prefix!r}: {', '.join(sorted(items.values())[:4])})")
    num_layers = wih_layers[-1] + 1
    for layer in range(num_layers):
        for rev in dirs:
            for name in ("weight_ih", "weight_hh"):
                if (name, layer, rev) not in items:
                    raise ValueError(f"{key(name, layer, rev)}: missing (layers must run 0..{num_layers - 1}"
                                     + (", both directions" if bidir else "") + ")")
    for (name, layer, rev), k in items.items():
        if layer >= num_layers:
            raise ValueError(f"{k}: layer {layer} has no weight_ih_l{layer}{sfx[rev]}")

    k_hh0 = key("weight_hh", 0, False)
    w_hh0 = _shape(sd[k_hh0])
    has_hr = any(n == "weight_hr" for (n, _, _) in items)
    if len(w_hh0) != 2:
        raise ValueError(f"{k_hh0}: expected a 2-D shape (gates*hidden_size, hidden_size), got {_fmt(w_hh0)}")
    if has_hr:
        kind = "LSTM"
        if w_hh0[0] % 4 or w_hh0[0] == 0:
            raise ValueError(f"{k_hh0}: first dimension {w_hh0[0]} is not a positive multiple of 4 "
                             f"(4*hidden_size of an nn.LSTM with projections), shape {_fmt(w_hh0)}")
        hidden = w_hh0[0] // 4
    else:
        kind = _kind_of(w_hh0, LAYER_KINDS)
        if kind is None:
            raise _fits_none(k_hh0, w_hh0, cells=False)
        hidden = w_hh0[1]
    gates = _GATES[kind]
    rows, grows = gates * hidden, _ROWS[gates]

    proj = 0
    if has_hr:
        hr0 = _shape(sd[key("weight_hr", 0, False)]) if ("weight_hr", 0, False) in items else None
        if hr0 is None:
            raise ValueError(f"{key('weight_hr', 0, False)}: missing (other layers have weight_hr)")
        if len(hr0) != 2 or hr0[1] != hidden or not 0 < hr0[0] < hidden:
            raise ValueError(f"{key('weight_hr', 0, False)}: expected shape (proj_size, {hidden}) with "
                             f"0 < proj_size < hidden_size={hidden}, got {_fmt(hr0)}")
        proj = hr0[0]
    out = proj or hidden
    ndir = len(dirs)

    w_ih0 = _shape(sd[key("weight_ih", 0, False)])
    if len(w_ih0) != 2:
        raise ValueError(f"{key('weight_ih', 0, False)}: expected a 2-D shape ({grows}, input_size), got {_fmt(w_ih0)}")
    input_size = w_ih0[1]

    has_bias = any(n.startswith("bias") for (n, _, _) in items)
    keys = []
    for layer in range(num_layers):
        in_k = input_size if layer == 0 else ndir * out
        in_why = "input_size" if layer == 0 else (f"{ndir}*" if ndir > 1 else "") + ("proj_size" if proj else "hidden_size")
        for rev in dirs:
            want = [("weight_ih", (rows, in_k), f"{grows}, {in_why}"),
                    ("weight_hh", (rows, out), f"{grows}, " + ("proj_size" if proj else "hidden_size"))]
            if has_bias:
                want += [("bias_ih", (rows,), grows), ("bias_hh", (rows,), grows)]
            if proj:
                want.append(("weight_hr", (proj, hidden), "proj_size, hidden_size"))
            for name, shape, why in want:
                k = key(name, layer, rev)
                if (name, layer, rev) not in items:
                    raise ValueError(f"{k}: missing ("
                                     + ("other layers have biases" if name.startswith("bias") else "other layers have weight_hr")
                                     + ")")
                _expect(k, _shape(sd[k]), shape, why)
                keys.append(k)
    config = dict(input_size=input_size, hidden_size=hidden, num_layers=num_layers, bias=has_bias,
                  bidirectional=bidir)
    assumed = ()
    if kind == "LSTM":
        config["proj_size"] = proj
    elif kind == "RNN":
        config = dict(input_size=input_size, hidden_size=hidden, num_layers=num_layers, nonlinearity="tanh",
                      bias=has_bias, bidirectional=bidir)
        assumed = ("nonlinearity",)
    return ModuleSpec(prefix, kind, config, keys, assumed)


def _cell_group(prefix: str, names: dict, sd: Mapping):
    if "weight_ih" not in names and "weight_hh" not in names:
        return None  # biases alone are not a recurrent cell
    for name in ("weight_ih", "weight_hh"):
        if name not in names:
            raise ValueError(f"{prefix}{name}: missing (found {', '.join(sorted(names.values()))})")
    k_hh = names["weight_hh"]
    w_hh = _shape(sd[k_hh])
    if len(w_hh) != 2:
        raise ValueError(f"{k_hh}: expected a 2-D shape (gates*hidden_size, hidden_size), got {_fmt(w_hh)}")
    if w_hh[1] == 0:
        raise ValueError(f"{k_hh}: hidden_size is 0, shape {_fmt(w_hh)}")
    kind = _kind_of(w_hh, CELL_KINDS)
    if kind is None:
        raise _fits_none(k_hh, w_hh, cells=True)
    hidden = w_hh[1]
    grows = _ROWS[_GATES[kind]]
    rows = _GATES[kind] * hidden
    w_ih = _shape(sd[names["weight_ih"]])
    if len(w_ih) != 2:
        raise ValueError(f"{names['weight_ih']}: expected a 2-D shape ({grows}, input_size), got {_fmt(w_ih)}")
    _expect(names["weight_ih"], w_ih, (rows, w_ih[1]), f"{grows}, input_size")
    has_bias = "bias_ih" in names or "bias_hh" in names
    keys = [names["weight_ih"], names["weight_hh"]]
    if has_bias:
        for name in ("bias_ih", "bias_hh"):
            if name not in names:
                raise ValueError(f"{prefix}{name}: missing (the other bias is present)")
            _expect(names[name], _shape(sd[names[name]]), (rows,), grows)
            keys.append(names[name])
    config = dict(input_size=w_ih[1], hidden_size=hidden, bias=has_bias)
    assumed = ()
    if kind == "RNNCell":
        config["nonlinearity"] = "tanh"
        assumed = ("nonlinearity",)
    return ModuleSpec(prefix, kind, config, keys, assumed)


def _cell_kind(prefix: str, names: dict, sd: Mapping):
    k = names.get("weight_hh")
    return None if k is None else _kind_of(_shape(sd[k]), CELL_KINDS)


# ------------------------------------------------------------------ search

def scan(sd: Mapping) -> list:
    """``[(prefix, kind, ModuleSpec or the ValueError saying what is wrong)]`` for every
    group of recurrent-module keys, sorted by prefix; it never raises.

    For a broken group ``kind`` is what its ``weight_hh_l0`` / ``weight_hh`` shape
    says, or "LSTM/GRU/RNN" / "LSTMCell/GRUCell/RNNCell" when that shape fits none.
    """
    groups: dict = {}
    cells: dict = {}
    for k in sd:
        if not isinstance(k, str):
            continue
        m = _LAYER_RE.match(k)
        if m:
            groups.setdefault(m["prefix"], {})[(m["name"], int(m["layer"]), bool(m["rev"]))] = k
            continue
        m = _CELL_RE.match(k)
        if m:
            cells.setdefault(m["prefix"], {})[m["name"]] = k
    found = []
    for prefix, items in groups.items():
        res = _try(_layer_group, prefix, items, sd)
        kind = res.kind if isinstance(res, ModuleSpec) else _guess(_layer_kind, prefix, items, sd) or _UNKNOWN_LAYER
        found.append((prefix, kind, res))
    for prefix, names in cells.items():
        res = _try(_cell_group, prefix, names, sd)
        if res is None:
            continue
        kind = res.kind if isinstance(res, ModuleSpec) else _guess(_cell_kind, prefix, names, sd) or _UNKNOWN_CELL
        found.append((prefix, kind, res))
    found.sort(key=lambda f: (f[0], f[1]))
    return found


def _try(fn, prefix, items, sd):
    try:
        return fn(prefix, items, sd)
    except ValueError as exc:
        return exc


def _guess(fn, prefix, items, sd):
    try:
        return fn(prefix, items, sd)
    except ValueError:
        return None


def _kind_in(kind: str, kinds) -> bool:
    return kinds is None or any(k in kinds for k in kind.split("/"))


def find_modules(sd: Mapping, kinds=None) -> list:
    """Every recurrent module in ``sd`` (of ``kinds``, default all) as a list of
    :class:`ModuleSpec`, sorted by prefix. Raises ``ValueError`` for the first group
    of keys that is inconsistent (one whose kind is unclear counts as any kind)."""
    specs = []
    for _, kind, res in scan(sd):
        if not _kind_in(kind, kinds):
            continue
        if isinstance(res, ValueError):
            raise res
        specs.append(res)
    return specs


def find_lstms(sd: Mapping) -> list:
    """The LSTMs and LSTMCells of :func:`find_modules`; other kinds are skipped."""
    return find_modules(sd, ("LSTM", "LSTMCell"))


def _norm_prefix(prefix: str | None) -> str | None:
    if prefix is None or prefix == "":
        return prefix
    return prefix if prefix.endswith(".") else prefix + "."


def _describe(specs) -> str:
    return ", ".join(f"{s.prefix!r} ({s.kind})" for s in specs) or "none"


def _what(kinds) -> str:
    if kinds is None:
        return "recurrent module"
    kinds = list(kinds)
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]


def _plural(specs, kinds) -> str:
    found = {s.kind for s in specs}
    if len(found) == 1:
        return f"{found.pop()}s"
    return "recurrent modules" if kinds is None else f"{_what(kinds)} modules"


def select(specs: list, prefix: str | None = None, kinds=None) -> ModuleSpec:
    """The spec at ``prefix`` ('encoder' and 'encoder.' are the same).

    With ``prefix`` None or '': the top-level module if there is one, else the only
    module present. Raises ``ValueError`` listing the available prefixes otherwise.
    ``kinds`` only words the messages (the specs are already filtered).
    """
    want = _norm_prefix(prefix)
    if not specs:
        raise ValueError(f"no {_what(kinds)} found")
    if want:
        hits = [s for s in specs if s.prefix == want]
    else:
        hits = [s for s in specs if s.prefix == ""] or list(specs)
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"no {_what(kinds)} at prefix {prefix!r}; available prefixes: {_describe(specs)}")
    if want:
        raise ValueError(f"several modules match prefix {prefix!r}: {_describe(hits)}")
    raise ValueError(f"found {len(hits)} {_plural(hits, kinds)}: {_describe(hits)}; choose one by prefix")


def describe_tensors(sd: Mapping, keys=None, limit: int = 8) -> str:
    """'name (shape), ...' for ``keys`` (default all) in order, at most ``limit`` of them
    followed by '... and N more'."""
    keys = list(sd if keys is None else keys)
    parts = [f"{k} {_fmt(_shape(sd[k]))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"... and {len(keys) - limit} more")
    return ", ".join(parts)


def article(kind: str) -> str:
    """'a' or 'an' before a kind's name as spoken: an LSTM, an RNN, an Embedding, a GRU,
    a Linear."""
    return "an" if kind[:1] in "AEIOU" or kind.startswith(("LSTM", "RNN")) else "a"


def _config_text(spec: ModuleSpec) -> str:
    return f"{spec.kind}(" + ", ".join(f"{k}={v!r}" for k, v in spec.config.items()) + ")"


def _nothing_found(sd: Mapping, found: list, kinds) -> ValueError:
    others = [r for _, _, r in found if isinstance(r, ModuleSpec)]
    if kinds is not None and others:
        what = "; ".join(f"{s.prefix!r} {_config_text(s)}" if s.prefix else _config_text(s) for s in others)
        return ValueError(f"no {_what(kinds)} found; the state dict holds {what}")
    if found:  # only broken groups of other kinds
        return ValueError(f"no {_what(kinds)} found; " + "; ".join(str(r) for _, _, r in found))
    names = [k for k in sd if isinstance(k, str)]
    what = "LSTM, GRU, RNN or cell" if kinds is None else _what(kinds)
    return ValueError(f"no {what} parameters found: no keys like torch's 'weight_ih_l0', 'weight_hh_l0' (nn.LSTM, "
                      f"nn.GRU, nn.RNN) or 'weight_ih', 'weight_hh' (their cells); the state dict holds "
                      f"{len(names)} tensor{'' if len(names) == 1 else 's'}"
                      + (": " + describe_tensors(sd, names) if names else ""))


def find_one(sd: Mapping, prefix: str | None = None, kinds=None) -> ModuleSpec:
    """The module at ``prefix`` (as :func:`select`), among ``kinds`` (default all).

    A broken module elsewhere in ``sd`` is ignored; a broken one at ``prefix`` raises
    its ``ValueError``. When nothing is found the message names what ``sd`` holds.
    """
    every = scan(sd)
    found = [f for f in every if _kind_in(f[1], kinds)]
    if not found:
        raise _nothing_found(sd, every, kinds)
    want = _norm_prefix(prefix)
    if want:
        hits = [r for p, _, r in found if p == want]
    else:
        hits = [r for p, _, r in found if p == ""] or [r for _, _, r in found]
    if len(hits) == 1 and isinstance(hits[0], ValueError):
        raise hits[0]
    if len(hits) > 1:
        # Report every candidate, broken ones too, so the user can pick a prefix.
        specs = [r if not isinstance(r, ValueError) else ModuleSpec(p, k, {}, []) for p, k, r in found]
        return select(specs, prefix, kinds)
    return select([r for _, _, r in found if not isinstance(r, ValueError)], prefix, kinds)


def module_state_dict(sd: Mapping, spec: ModuleSpec | str | None = None) -> dict:
    """The spec's tensors under the module's own torch key names (prefix stripped), in
    torch's order. ``spec`` may also be a prefix (see :func:`find_one`)."""
    if not isinstance(spec, ModuleSpec):
        spec = find_one(sd, spec)
    n = len(spec.prefix)
    return {k[n:]: sd[k] for k in spec.keys}


# ------------------------------------------------- the nn.LSTM view (legacy)

_LSTM_KINDS = ("LSTM", "LSTMCell")


def infer_config(sd: Mapping, prefix: str | None = "") -> tuple:
    """(kind, config) of the LSTM or LSTMCell at ``prefix`` as an ``nn.LSTM`` config:
    an LSTMCell reads as a one-layer LSTM (input_size, hidden_size, num_layers=1, bias,
    bidirectional=False, proj_size=0). Other kinds are not considered; when there is
    no LSTM the message names what there is."""
    spec = find_one(sd, prefix, _LSTM_KINDS)
    if spec.kind == "LSTMCell":
        c = spec.config
        return spec.kind, dict(input_size=c["input_size"], hidden_size=c["hidden_size"], num_layers=1,
                               bias=c["bias"], bidirectional=False, proj_size=0)
    return spec.kind, dict(spec.config)


def lstm_state_dict(sd: Mapping, spec: ModuleSpec | str | None = "") -> dict:
    """The LSTM's / LSTMCell's tensors under torch ``nn.LSTM`` key names (prefix stripped,
    LSTMCell keys renamed to ``*_l0``). ``spec`` may also be a prefix string."""
    if not isinstance(spec, ModuleSpec):
        spec = find_one(sd, spec, _LSTM_KINDS)
    if spec.kind not in _LSTM_KINDS:
        raise ValueError(f"{spec.prefix!r} is {article(spec.kind)} {spec.kind}, not an LSTM or LSTMCell")
    out = module_state_dict(sd, spec)
    if spec.kind == "LSTMCell":
        out = {k + "_l0": v for k, v in out.items()}
    return out


# ------------------------------------------ the layers around them (issue 13)
# nn.Embedding, nn.Linear and nn.LayerNorm: a prefix whose own keys are exactly
# "weight" (and "bias"). A bias-free nn.Linear has the keys and shapes of an
# nn.Embedding; such a spec says kind "Embedding" with alternatives ("Linear",)
# (the pipeline decides by position, see lstm_infer.pipeline).

OTHER_KINDS = ("Embedding", "Linear", "LayerNorm")
# constructor arguments with their defaults, in torch's order (padding_idx and
# LayerNorm's eps are not in a state dict: specs list them in ``assumed``)
OTHER_SIGNATURES = {
    "Embedding": dict(num_embeddings=_REQUIRED, embedding_dim=_REQUIRED, padding_idx=None),
    "Linear": dict(in_features=_REQUIRED, out_features=_REQUIRED, bias=True),
    "LayerNorm": dict(normalized_shape=_REQUIRED, eps=1e-5, elementwise_affine=True, bias=True),
}
_PARAM_RE = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<name>[^.]+)\Z")


def other_shapes(kind: str, config: Mapping) -> dict:
    """The state-dict keys of an Embedding, Linear or LayerNorm with ``config``, in torch's
    order, with their shapes (LayerNorm's normalized_shape is a list of ints)."""
    if kind == "Embedding":
        return {"weight": (config["num_embeddings"], config["embedding_dim"])}
    if kind == "Linear":
        shapes = {"weight": (config["out_features"], config["in_features"])}
        if config["bias"]:
            shapes["bias"] = (config["out_features"],)
        return shapes
    if kind == "LayerNorm":
        if not config["elementwise_affine"]:
            return {}
        shape = tuple(config["normalized_shape"])
        return {"weight": shape, "bias": shape} if config["bias"] else {"weight": shape}
    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(OTHER_KINDS)}")


def as_kind(spec: ModuleSpec, kind: str) -> ModuleSpec:
    """An ambiguous spec (a lone 2-D weight) read as ``kind`` ("Embedding" or "Linear")."""
    if kind == spec.kind:
        return spec
    if kind not in spec.alternatives:
        raise ValueError(f"{spec.prefix or 'the top level'!r} holds {article(spec.kind)} {spec.kind}, "
                         f"its tensors cannot be {article(kind)} {kind}")
    if kind == "Linear":
        rows, cols = spec.config["num_embeddings"], spec.config["embedding_dim"]
        config, assumed = dict(in_features=cols, out_features=rows, bias=False), ()
    else:
        rows, cols = spec.config["out_features"], spec.config["in_features"]
        config, assumed = dict(num_embeddings=rows, embedding_dim=cols, padding_idx=None), ("padding_idx",)
    return ModuleSpec(spec.prefix, kind, config, list(spec.keys), assumed, (spec.kind,))


def _other_group(prefix: str, names: dict, sd: Mapping):
    """names: leaf -> key, every key directly under prefix. None when they are not
    one of OTHER_KINDS (e.g. BatchNorm's running_mean, a 3-D conv weight)."""
    if set(names) - {"weight", "bias"} or "weight" not in names:
        return None
    w = _shape(sd[names["weight"]])
    b = _shape(sd[names["bias"]]) if "bias" in names else None
    keys = [names["weight"]] + ([names["bias"]] if b is not None else [])
    if len(w) == 2:
        if b is None:
            return ModuleSpec(prefix, "Embedding", dict(num_embeddings=w[0], embedding_dim=w[1], padding_idx=None),
                              keys, ("padding_idx",), ("Linear",))
        _expect(names["bias"], b, (w[0],), "out_features of the nn.Linear whose weight is "
                f"{_fmt(w)}")
        return ModuleSpec(prefix, "Linear", dict(in_features=w[1], out_features=w[0], bias=True), keys)
    if len(w) == 1:
        if b is not None:
            _expect(names["bias"], b, w, "normalized_shape, like the nn.LayerNorm's weight")
        return ModuleSpec(prefix, "LayerNorm", dict(normalized_shape=list(w), eps=1e-5, elementwise_affine=True,
                                                   bias=b is not None), keys, ("eps",))
    return None


def scan_other(sd: Mapping) -> list:
    """Like :func:`scan` for nn.Embedding, nn.Linear and nn.LayerNorm: ``[(prefix, kind,
    ModuleSpec or ValueError)]`` sorted by prefix; never raises. Specs of a lone 2-D
    weight say kind "Embedding" and ``alternatives == ("Linear",)``."""
    groups: dict = {}
    for k in sd:
        if isinstance(k, str):
            m = _PARAM_RE.match(k)
            if m:
                groups.setdefault(m["prefix"], {})[m["name"]] = k
    found = []
    for prefix, names in groups.items():
        res = _try(_other_group, prefix, names, sd)
        if res is None:
            continue
        kind = res.kind if isinstance(res, ModuleSpec) else ("Linear" if "bias" in names else "LayerNorm")
        found.append((prefix, kind, res))
    found.sort(key=lambda f: (f[0], f[1]))
    return found
