"""Find ``nn.LSTM`` / ``nn.LSTMCell`` parameter groups in a state dict by key name.

Only shapes are read, so values may be NumPy arrays, torch tensors or anything
with a ``.shape``.  Every inconsistency is reported as a ``ValueError`` naming the
key and the shape that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["LSTMSpec", "scan", "find_lstms", "find_one", "infer_config", "lstm_state_dict", "select"]

_LAYER_RE = re.compile(
    r"^(?P<prefix>(?:.*\.)?)(?P<name>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    r"_l(?P<layer>\d+)(?P<rev>_reverse)?$"
)
_CELL_RE = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<name>weight_ih|weight_hh|bias_ih|bias_hh)$")
_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


@dataclass
class LSTMSpec:
    """One LSTM found in a state dict.

    prefix: key prefix including the trailing '.', '' for top level.
    kind:   "LSTM" or "LSTMCell" (a cell loads as a one-layer LSTM).
    config: input_size, hidden_size, num_layers, bias, bidirectional, proj_size.
    keys:   the state-dict keys (with prefix) that belong to it, in torch order.
    """

    prefix: str
    kind: str
    config: dict
    keys: list = field(default_factory=list)


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


def _looks_like_other_rnn(rows: int, cols: int) -> bool:
    # nn.GRU / nn.RNN share the key names; their W_hh is (3H, H) / (H, H).
    return cols > 0 and rows in (cols, 3 * cols)


class _Skip(Exception):
    """Group is a GRU/RNN, not an LSTM."""


def _lstm_group(prefix: str, items: dict, sd: Mapping) -> LSTMSpec:
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
        raise ValueError(f"{key('weight_ih', layers[0], False)}: missing (found other LSTM keys under prefix {prefix!r})")
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

    w_hh0 = _shape(sd[key("weight_hh", 0, False)])
    has_hr = any(n == "weight_hr" for (n, _, _) in items)
    if len(w_hh0) != 2:
        raise ValueError(f"{key('weight_hh', 0, False)}: expected a 2-D shape (4*hidden_size, hidden_size), got {_fmt(w_hh0)}")
    if not has_hr and _looks_like_other_rnn(*w_hh0):
        raise _Skip(prefix)
    if w_hh0[0] % 4 or w_hh0[0] == 0:
        raise ValueError(f"{key('weight_hh', 0, False)}: first dimension {w_hh0[0]} is not a positive multiple of 4 "
                         f"(4*hidden_size), shape {_fmt(w_hh0)}")
    hidden = w_hh0[0] // 4

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
        raise ValueError(f"{key('weight_ih', 0, False)}: expected a 2-D shape (4*hidden_size, input_size), got {_fmt(w_ih0)}")
    input_size = w_ih0[1]

    has_bias = any(n.startswith("bias") for (n, _, _) in items)
    keys = []
    for layer in range(num_layers):
        in_k = input_size if layer == 0 else ndir * out
        in_why = "input_size" if layer == 0 else (f"{ndir}*" if ndir > 1 else "") + ("proj_size" if proj else "hidden_size")
        for rev in dirs:
            want = [("weight_ih", (4 * hidden, in_k), f"4*hidden_size, {in_why}"),
                    ("weight_hh", (4 * hidden, out), "4*hidden_size, " + ("proj_size" if proj else "hidden_size"))]
            if has_bias:
                want += [("bias_ih", (4 * hidden,), "4*hidden_size"), ("bias_hh", (4 * hidden,), "4*hidden_size")]
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
                  bidirectional=bidir, proj_size=proj)
    return LSTMSpec(prefix, "LSTM", config, keys)


def _cell_group(prefix: str, names: dict, sd: Mapping) -> LSTMSpec:
    if "weight_ih" not in names and "weight_hh" not in names:
        raise _Skip(prefix)
    for name in ("weight_ih", "weight_hh"):
        if name not in names:
            raise ValueError(f"{prefix}{name}: missing (found {', '.join(sorted(names.values()))})")
    w_hh = _shape(sd[names["weight_hh"]])
    if len(w_hh) != 2:
        raise ValueError(f"{names['weight_hh']}: expected a 2-D shape (4*hidden_size, hidden_size), got {_fmt(w_hh)}")
    if _looks_like_other_rnn(*w_hh):
        raise _Skip(prefix)
    hidden = w_hh[1]
    _expect(names["weight_hh"], w_hh, (4 * hidden, hidden), "4*hidden_size, hidden_size")
    if hidden == 0:
        raise ValueError(f"{names['weight_hh']}: hidden_size is 0, shape {_fmt(w_hh)}")
    w_ih = _shape(sd[names["weight_ih"]])
    if len(w_ih) != 2:
        raise ValueError(f"{names['weight_ih']}: expected a 2-D shape (4*hidden_size, input_size), got {_fmt(w_ih)}")
    _expect(names["weight_ih"], w_ih, (4 * hidden, w_ih[1]), "4*hidden_size, input_size")
    has_bias = "bias_ih" in names or "bias_hh" in names
    keys = [names["weight_ih"], names["weight_hh"]]
    if has_bias:
        for name in ("bias_ih", "bias_hh"):
            if name not in names:
                raise ValueError(f"{prefix}{name}: missing (the other bias is present)")
            _expect(names[name], _shape(sd[names[name]]), (4 * hidden,), "4*hidden_size")
            keys.append(names[name])
    config = dict(input_size=w_ih[1], hidden_size=hidden, num_layers=1, bias=has_bias,
                  bidirectional=False, proj_size=0)
    return LSTMSpec(prefix, "LSTMCell", config, keys)


def scan(sd: Mapping) -> list:
    """[(prefix, kind, LSTMSpec or the ValueError describing what is wrong)] for every
    LSTM-like group, sorted by prefix; unlike :func:`find_lstms` it never raises."""
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
        found.append((prefix, "LSTM", _try(_lstm_group, prefix, items, sd)))
    for prefix, names in cells.items():
        found.append((prefix, "LSTMCell", _try(_cell_group, prefix, names, sd)))
    found = [f for f in found if f[2] is not None]
    found.sort(key=lambda f: (f[0], f[1]))
    return found


def _try(fn, prefix, items, sd):
    try:
        return fn(prefix, items, sd)
    except _Skip:
        return None
    except ValueError as exc:
        return exc


def find_lstms(sd: Mapping) -> list:
    """Every LSTM / LSTMCell in ``sd`` as a list of :class:`LSTMSpec`, sorted by prefix.

    GRU/RNN groups (same key names, other shapes) are skipped. Raises ``ValueError``
    for the first group whose keys look like an LSTM but are inconsistent.
    """
    specs = []
    for _, _, res in scan(sd):
        if isinstance(res, ValueError):
            raise res
        specs.append(res)
    return specs


def _norm_prefix(prefix: str | None) -> str | None:
    if prefix is None or prefix == "":
        return prefix
    return prefix if prefix.endswith(".") else prefix + "."


def _describe(specs) -> str:
    return ", ".join(f"{s.prefix!r} ({s.kind})" for s in specs) or "none"


def select(specs: list, prefix: str | None = None) -> LSTMSpec:
    """The spec at ``prefix`` ('encoder' and 'encoder.' are the same).

    With ``prefix`` None or '': the top-level LSTM if there is one, else the only
    LSTM present. Raises ``ValueError`` listing the available prefixes otherwise.
    """
    want = _norm_prefix(prefix)
    if not specs:
        raise ValueError("no LSTM or LSTMCell parameters found (looked for keys like "
                         "'weight_ih_l0', 'weight_hh_l0' or 'weight_ih', 'weight_hh')")
    if want:
        hits = [s for s in specs if s.prefix == want]
    else:
        hits = [s for s in specs if s.prefix == ""] or list(specs)
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"no LSTM at prefix {prefix!r}; available prefixes: {_describe(specs)}")
    if want:
        raise ValueError(f"several LSTMs match prefix {prefix!r}: {_describe(hits)}")
    raise ValueError(f"found {len(hits)} LSTMs: {_describe(hits)}; choose one by prefix")


def find_one(sd: Mapping, prefix: str | None = None) -> LSTMSpec:
    """The spec at ``prefix`` (as :func:`select`). A broken LSTM elsewhere in ``sd``
    is ignored; a broken one at ``prefix`` raises its ``ValueError``."""
    found = scan(sd)
    want = _norm_prefix(prefix)
    if want:
        hits = [r for p, _, r in found if p == want]
    else:
        hits = [r for p, _, r in found if p == ""] or [r for _, _, r in found]
    if len(hits) == 1 and isinstance(hits[0], ValueError):
        raise hits[0]
    if len(hits) > 1:
        # Report every candidate, broken ones too, so the user can pick a prefix.
        specs = [r if not isinstance(r, ValueError) else LSTMSpec(p, k, {}, []) for p, k, r in found]
        return select(specs, prefix)
    return select([r for _, _, r in found if not isinstance(r, ValueError)], prefix)


def infer_config(sd: Mapping, prefix: str | None = "") -> tuple:
    """(kind, config) of the LSTM at ``prefix`` (see :func:`select`)."""
    spec = find_one(sd, prefix)
    return spec.kind, dict(spec.config)


def lstm_state_dict(sd: Mapping, spec: LSTMSpec | str | None = "") -> dict:
    """The spec's tensors under torch ``nn.LSTM`` key names (prefix stripped,
    LSTMCell keys renamed to ``*_l0``). ``spec`` may also be a prefix string."""
    if not isinstance(spec, LSTMSpec):
        spec = find_one(sd, spec)
    n = len(spec.prefix)
    out = {}
    for k in spec.keys:
        name = k[n:]
        if spec.kind == "LSTMCell":
            name += "_l0"
        out[name] = sd[k]
    return out
