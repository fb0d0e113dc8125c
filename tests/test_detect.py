"""Finding torch.nn's recurrent modules (LSTM, GRU, RNN and their cells) in state dicts and
inferring their configs from shapes."""

import itertools

import numpy as np
import pytest

from file_helpers import path
from lstm_infer import detect, readers


def _sd(name):
    return readers.read_tensors(path(name))


MATRIX = [dict(num_layers=n, bidirectional=bi, bias=b, proj_size=p)
          for n, bi, b, p in itertools.product((1, 3), (False, True), (True, False), (0, 2))]


@pytest.mark.parametrize("kw", MATRIX, ids=lambda kw: "-".join(f"{k}{int(v)}" for k, v in kw.items()))
def test_config_matches_torch_module(kw):
    torch = pytest.importorskip("torch")
    m = torch.nn.LSTM(7, 5, **kw)
    sd = {f"net.rnn.{k}": v for k, v in m.state_dict().items()}
    (spec,) = detect.find_lstms(sd)
    assert spec.prefix == "net.rnn." and spec.kind == "LSTM"
    assert spec.config == dict(input_size=7, hidden_size=5, **kw)
    assert spec.keys == list(sd)  # torch's own order
    assert list(detect.lstm_state_dict(sd, spec)) == list(m.state_dict())


def test_lstmcell_gru_rnn_modules():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = torch.nn.LSTMCell(3, 4)
            self.nobias = torch.nn.LSTMCell(3, 4, bias=False)
            self.gru, self.grucell = torch.nn.GRU(3, 4, num_layers=2), torch.nn.GRUCell(3, 4)
            self.rnn, self.rnncell = torch.nn.RNN(3, 4), torch.nn.RNNCell(3, 4)
            self.lin = torch.nn.Linear(3, 4)

    specs = detect.find_lstms(Net().state_dict())
    assert [(s.prefix, s.kind, s.config["bias"]) for s in specs] == [("cell.", "LSTMCell", True),
                                                                      ("nobias.", "LSTMCell", False)]
    sd = detect.lstm_state_dict(Net().state_dict(), "cell")
    assert sorted(sd) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    # torch agrees that the renamed cell weights form a one-layer LSTM
    torch.nn.LSTM(3, 4).load_state_dict(sd, strict=True)


def test_several_lstms_and_select():
    sd = _sd("encdec.pt")
    specs = detect.find_lstms(sd)
    assert [s.prefix for s in specs] == ["decoder.", "encoder."]
    assert detect.select(specs, "encoder").prefix == "encoder."
    assert detect.select(specs, "decoder.").config["proj_size"] == 2
    with pytest.raises(ValueError, match=r"found 2 LSTMs: 'decoder.' \(LSTM\), 'encoder.' \(LSTM\)"):
        detect.select(specs)
    with pytest.raises(ValueError, match=r"no recurrent module at prefix 'gru'; available prefixes: 'decoder.'"):
        detect.select(specs, "gru")
    with pytest.raises(ValueError, match=r"no LSTM or LSTMCell at prefix 'gru'; available prefixes: 'decoder.'"):
        detect.select(specs, "gru", ("LSTM", "LSTMCell"))
    with pytest.raises(ValueError, match="no recurrent module found"):
        detect.select([])
    # the file also holds a GRU: the generic search finds all three, the LSTM view only the LSTMs
    assert [(s.prefix, s.kind) for s in detect.find_modules(sd)] == [("decoder.", "LSTM"), ("encoder.", "LSTM"),
                                                                      ("gru.", "GRU")]
    with pytest.raises(ValueError, match=r"found 3 recurrent modules: 'decoder.' \(LSTM\), 'encoder.' \(LSTM\), "
                                         r"'gru.' \(GRU\); choose one by prefix"):
        detect.find_one(sd)
    with pytest.raises(ValueError, match=r"no LSTM or LSTMCell at prefix 'gru'; available prefixes: 'decoder.' "
                                         r"\(LSTM\), 'encoder.' \(LSTM\)"):
        detect.infer_config(sd, "gru")
    with pytest.raises(ValueError, match="found 2 LSTMs"):
        detect.infer_config(sd)
    assert detect.infer_config(sd, "encoder")[1]["bidirectional"] is True


def test_single_nested_lstm_is_chosen_without_prefix():
    sd = _sd("checkpoint_state_dict.pt")
    kind, cfg = detect.infer_config(sd)
    assert kind == "LSTM" and cfg["bidirectional"]
    assert sorted(detect.lstm_state_dict(sd)) == sorted(k[len("rnn."):] for k in sd)


def _broken(name, edit):
    sd = dict(_sd(name))
    edit(sd)
    return sd


def _reshape(key, shape):
    return lambda sd: sd.__setitem__(key, np.zeros(shape, np.float32))


def _drop(key):
    return lambda sd: sd.pop(key)


# (fixture, edit, exact text the error must contain)
BROKEN = [
    ("layers2.pt", _drop("weight_ih_l0"), "weight_ih_l0: missing (layers must run 0..1)"),
    ("layers2.pt", _drop("weight_hh_l1"), "weight_hh_l1: missing (layers must run 0..1)"),
    ("layers2.pt", _reshape("weight_ih_l2", (20, 5)), "weight_hh_l2: missing"),
    ("layers2.pt", _reshape("bias_ih_l4", (20,)), "bias_ih_l4: layer 4 has no weight_ih_l4"),
    ("bi.pt", _drop("weight_hh_l0_reverse"), "weight_hh_l0_reverse: missing (layers must run 0..0, both directions)"),
    ("layers2.pt", _reshape("weight_ih_l1", (20, 4)), "weight_ih_l1: expected shape (20, 5) (4*hidden_size, hidden_size), got (20, 4)"),
    ("proj.pt", _reshape("weight_ih_l1_reverse", (32, 3)), "weight_ih_l1_reverse: expected shape (32, 6) (4*hidden_size, 2*proj_size), got (32, 3)"),
    ("layers2.pt", _reshape("weight_hh_l1", (20, 4)), "weight_hh_l1: expected shape (20, 5) (4*hidden_size, hidden_size), got (20, 4)"),
    ("layers2.pt", _reshape("weight_hh_l0", (22, 5)), "weight_hh_l0: shape (22, 5) fits no recurrent layer: the first "
     "dimension 22 is not a positive multiple of 4 (nn.LSTM: 4*hidden_size), nor 3*5 (nn.GRU: 3*hidden_size, "
     "hidden_size) or 5 (nn.RNN: hidden_size, hidden_size)"),
    ("layers2.pt", _reshape("weight_hh_l0", (24, 5)), "weight_hh_l0: shape (24, 5) fits no recurrent layer: the first "
     "dimension 24 is not 4*5"),
    ("layers2.pt", _reshape("weight_hh_l0", (20, 5, 1)), "weight_hh_l0: expected a 2-D shape"),
    ("layers2.pt", _reshape("weight_ih_l0", (20,)), "weight_ih_l0: expected a 2-D shape (4*hidden_size, input_size), got (20,)"),
    ("layers2.pt", _reshape("bias_hh_l1", (21,)), "bias_hh_l1: expected shape (20,) (4*hidden_size), got (21,)"),
    ("layers2.pt", _drop("bias_ih_l1"), "bias_ih_l1: missing (other layers have biases)"),
    ("proj.pt", _drop("weight_hr_l1"), "weight_hr_l1: missing (other layers have weight_hr)"),
    ("proj.pt", _drop("weight_hr_l0"), "weight_hr_l0: missing (other layers have weight_hr)"),
    ("proj.pt", _reshape("weight_hr_l0", (8, 8)), "weight_hr_l0: expected shape (proj_size, 8) with 0 < proj_size < hidden_size=8, got (8, 8)"),
    ("proj.pt", _reshape("weight_hr_l1", (2, 8)), "weight_hr_l1: expected shape (3, 8) (proj_size, hidden_size), got (2, 8)"),
    ("cell.pt", _drop("weight_hh"), "weight_hh: missing (found bias_hh, bias_ih, weight_ih)"),
    ("cell.pt", _drop("bias_hh"), "bias_hh: missing (the other bias is present)"),
    ("cell.pt", _reshape("weight_ih", (20, 4)), "weight_ih: expected shape (24, 4) (4*hidden_size, input_size), got (20, 4)"),
    ("cell.pt", _reshape("bias_ih", (6,)), "bias_ih: expected shape (24,) (4*hidden_size), got (6,)"),
]


@pytest.mark.parametrize("name, edit, message", BROKEN, ids=[m.split(":")[0] + "-" + str(i) for i, (_, _, m) in enumerate(BROKEN)])
def test_inconsistent_state_dicts_say_what_is_wrong(name, edit, message):
    sd = _broken(name, edit)
    with pytest.raises(ValueError) as info:
        detect.find_lstms(sd)
    assert message in str(info.value)
    with pytest.raises(ValueError) as info:
        detect.infer_config(sd)
    assert message in str(info.value)


def test_broken_group_elsewhere_does_not_block_the_chosen_one():
    sd = _broken("encdec.pt", _reshape("decoder.weight_hh_l1", (20, 3)))
    with pytest.raises(ValueError, match="decoder.weight_hh_l1"):
        detect.find_lstms(sd)
    assert detect.infer_config(sd, "encoder")[1]["hidden_size"] == 6
    with pytest.raises(ValueError, match="decoder.weight_hh_l1: expected shape"):
        detect.infer_config(sd, "decoder")
    found = detect.scan(sd)
    assert [(p, k, type(r).__name__) for p, k, r in found] == [("decoder.", "LSTM", "ValueError"),
                                                                ("encoder.", "LSTM", "ModuleSpec"),
                                                                ("gru.", "GRU", "ModuleSpec")]


def test_shapes_only_objects_and_no_values_touched():
    class Shape:
        def __init__(self, *shape):
            self.shape = shape

    sd = {"weight_ih_l0": Shape(8, 3), "weight_hh_l0": Shape(8, 2)}
    assert detect.infer_config(sd) == ("LSTM", dict(input_size=3, hidden_size=2, num_layers=1, bias=False,
                                                    bidirectional=False, proj_size=0))
    assert detect.lstm_state_dict(sd)["weight_ih_l0"] is sd["weight_ih_l0"]


def test_nothing_found():
    with pytest.raises(ValueError, match="no LSTM or LSTMCell parameters found"):
        detect.infer_config({"fc.weight": np.zeros((2, 2))})
    assert detect.find_lstms({"fc.weight": np.zeros((2, 2)), 3: np.zeros(1)}) == []


# ------------------------------------------------- GRU, RNN and the cells

def _torch():
    return pytest.importorskip("torch")


LAYER_MATRIX = [(kind, nl, dict(num_layers=n, bidirectional=bi, bias=b))
                for kind, nl in (("GRU", None), ("RNN", "tanh"), ("RNN", "relu"))
                for n, bi, b in itertools.product((1, 3), (False, True), (True, False))]


@pytest.mark.parametrize("kind, nonlinearity, kw", LAYER_MATRIX,
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}{int(x)}" for k, x in v.items())
                         if isinstance(v, dict) else str(v))
def test_gru_rnn_config_matches_torch_module(kind, nonlinearity, kw):
    torch = _torch()
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    m = getattr(torch.nn, kind)(7, 5, **kw, **extra)
    sd = {f"net.rnn.{k}": v for k, v in m.state_dict().items()}
    (spec,) = detect.find_modules(sd)
    assert spec.prefix == "net.rnn." and spec.kind == kind
    want = dict(input_size=7, hidden_size=5, **kw)
    if kind == "RNN":
        want["nonlinearity"] = "tanh"  # not in the state dict: assumed, even for the relu module
        assert spec.assumed == ("nonlinearity",)
    else:
        assert spec.assumed == ()
    assert spec.config == want
    assert spec.keys == list(sd) and spec.names == list(m.state_dict())
    assert list(detect.module_state_dict(sd, spec)) == list(m.state_dict())
    full = spec.full_config(**extra)
    assert full == dict(want, batch_first=False, dropout=0.0, **extra)
    assert list(full) == list(detect.SIGNATURES[kind])  # torch's argument order
    # torch accepts exactly these arguments and these tensors
    twin = getattr(torch.nn, kind)(**full)
    twin.load_state_dict(detect.module_state_dict(sd, spec), strict=True)
    if kind == "RNN":
        assert twin.nonlinearity == m.nonlinearity == nonlinearity
    assert detect.find_lstms(sd) == []  # the nn.LSTM view does not see it


CELL_MATRIX = [(kind, nl, bias) for kind, nl in (("LSTMCell", None), ("GRUCell", None), ("RNNCell", "tanh"),
                                                 ("RNNCell", "relu")) for bias in (True, False)]


@pytest.mark.parametrize("kind, nonlinearity, bias", CELL_MATRIX)
def test_cell_config_matches_torch_module(kind, nonlinearity, bias):
    torch = _torch()
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    m = getattr(torch.nn, kind)(6, 4, bias=bias, **extra)
    sd = {f"dec.{k}": v for k, v in m.state_dict().items()}
    (spec,) = detect.find_modules(sd)
    assert (spec.prefix, spec.kind) == ("dec.", kind)
    want = dict(input_size=6, hidden_size=4, bias=bias)
    if kind == "RNNCell":
        want["nonlinearity"] = "tanh"
    assert spec.config == want and spec.assumed == (("nonlinearity",) if kind == "RNNCell" else ())
    got = detect.module_state_dict(sd, "dec")
    assert list(got) == list(m.state_dict())  # torch's own names: no '_l0'
    assert all(got[k] is sd["dec." + k] for k in got)
    full = spec.full_config(**extra)
    assert full == dict(want, **extra) and list(full) == list(detect.SIGNATURES[kind])
    getattr(torch.nn, kind)(**full).load_state_dict(detect.module_state_dict(sd, spec), strict=True)


def _zoo(torch):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(100, 3)
            self.lstm = torch.nn.LSTM(3, 4, proj_size=2)
            self.gru = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
            self.rnn = torch.nn.RNN(3, 4, nonlinearity="relu", bias=False)
            self.lstmcell, self.grucell, self.rnncell = (torch.nn.LSTMCell(3, 4), torch.nn.GRUCell(3, 4),
                                                         torch.nn.RNNCell(3, 4))
            self.fc = torch.nn.Linear(4, 10)

    return Net().state_dict()


def test_every_recurrent_kind_in_one_model():
    sd = _zoo(_torch())
    specs = detect.find_modules(sd)
    assert [(s.prefix, s.kind) for s in specs] == [("gru.", "GRU"), ("grucell.", "GRUCell"), ("lstm.", "LSTM"),
                                                   ("lstmcell.", "LSTMCell"), ("rnn.", "RNN"),
                                                   ("rnncell.", "RNNCell")]
    assert [s.kind for s in detect.find_modules(sd, ("GRU", "RNNCell"))] == ["GRU", "RNNCell"]
    assert [s.kind for s in detect.find_lstms(sd)] == ["LSTM", "LSTMCell"]
    assert detect.find_one(sd, "rnn").config == dict(input_size=3, hidden_size=4, num_layers=1,
                                                     nonlinearity="tanh", bias=False, bidirectional=False)
    assert detect.find_one(sd, "gru.").config["bidirectional"] is True
    used = {k for s in specs for k in s.keys}
    assert sorted(set(sd) - used) == ["embedding.weight", "fc.bias", "fc.weight"]
    with pytest.raises(ValueError, match=r"found 6 recurrent modules: 'gru.' \(GRU\), 'grucell.' \(GRUCell\)"):
        detect.find_one(sd)
    with pytest.raises(ValueError, match=r"no recurrent module at prefix 'decoder'; available prefixes: 'gru.' "
                                         r"\(GRU\), 'grucell.' \(GRUCell\), 'lstm.' \(LSTM\)"):
        detect.find_one(sd, "decoder")


def test_embedding_gru_linear_checkpoint():
    torch = _torch()
    net = torch.nn.ModuleDict({"embedding": torch.nn.Embedding(1000, 64), "gru": torch.nn.GRU(64, 128),
                               "fc": torch.nn.Linear(128, 10)})
    sd = net.state_dict()
    spec = detect.find_one(sd)  # the only recurrent module, no prefix needed
    assert (spec.prefix, spec.kind) == ("gru.", "GRU")
    assert spec.config == dict(input_size=64, hidden_size=128, num_layers=1, bias=True, bidirectional=False)
    # the nn.LSTM view says what there is instead of "nothing found"
    with pytest.raises(ValueError, match=r"no LSTM or LSTMCell found; the state dict holds 'gru.' "
                                         r"GRU\(input_size=64, hidden_size=128, num_layers=1, bias=True, "
                                         r"bidirectional=False\)"):
        detect.infer_config(sd)
    with pytest.raises(ValueError, match=r"'gru.' is a GRU, not an LSTM or LSTMCell"):
        detect.lstm_state_dict(sd, spec)
    other = [k for k in sd if k not in spec.keys]
    assert detect.describe_tensors(sd, other) == "embedding.weight (1000, 64), fc.weight (10, 128), fc.bias (10,)"
    assert detect.describe_tensors(sd, limit=2) == "embedding.weight (1000, 64), gru.weight_ih_l0 (384, 64), ... and 5 more"


def _mod_sd(kind, *args, **kw):
    torch = _torch()
    return {k: v.numpy() for k, v in getattr(torch.nn, kind)(*args, **kw).state_dict().items()}


def _edited(sd, key, value):
    sd = dict(sd)
    if value is None:
        sd.pop(key)
    else:
        sd[key] = np.zeros(value, np.float32)
    return sd


# (kind, args, kwargs, key, new shape or None to drop, scan's kind, exact text the error must contain)
BROKEN_FAMILY = [
    ("GRU", (5, 4), dict(num_layers=2), "weight_ih_l1", (12, 5), "GRU",
     "weight_ih_l1: expected shape (12, 4) (3*hidden_size, hidden_size), got (12, 5)"),
    ("GRU", (5, 4), dict(bidirectional=True, num_layers=2), "weight_ih_l1_reverse", (12, 4), "GRU",
     "weight_ih_l1_reverse: expected shape (12, 8) (3*hidden_size, 2*hidden_size), got (12, 4)"),
    ("GRU", (5, 4), {}, "bias_hh_l0", (16,), "GRU", "bias_hh_l0: expected shape (12,) (3*hidden_size), got (16,)"),
    ("GRU", (5, 4), dict(num_layers=2), "bias_ih_l1", None, "GRU", "bias_ih_l1: missing (other layers have biases)"),
    ("RNN", (5, 4), dict(num_layers=2), "weight_hh_l1", (4, 5), "RNN",
     "weight_hh_l1: expected shape (4, 4) (hidden_size, hidden_size), got (4, 5)"),
    ("RNN", (5, 4), {}, "weight_ih_l0", (4, 5, 1), "RNN",
     "weight_ih_l0: expected a 2-D shape (hidden_size, input_size), got (4, 5, 1)"),
    ("RNN", (5, 4), {}, "weight_hh_l0", (5, 4), "LSTM/GRU/RNN", "weight_hh_l0: shape (5, 4) fits no recurrent layer"),
    ("GRUCell", (5, 4), {}, "weight_ih", (16, 5), "GRUCell",
     "weight_ih: expected shape (12, 5) (3*hidden_size, input_size), got (16, 5)"),
    ("GRUCell", (5, 4), {}, "bias_ih", None, "GRUCell", "bias_ih: missing (the other bias is present)"),
    ("RNNCell", (5, 4), {}, "bias_hh", (5,), "RNNCell", "bias_hh: expected shape (4,) (hidden_size), got (5,)"),
    ("RNNCell", (5, 4), {}, "weight_hh", (8, 4), "LSTMCell/GRUCell/RNNCell",
     "weight_hh: shape (8, 4) fits no recurrent cell: the first dimension 8 is not 4*4 (nn.LSTMCell"),
    ("RNNCell", (5, 4), {}, "weight_hh", (4, 0), "LSTMCell/GRUCell/RNNCell", "weight_hh: hidden_size is 0"),
    ("GRUCell", (5, 4), {}, "weight_ih", None, "GRUCell",
     "weight_ih: missing (found bias_hh, bias_ih, weight_hh)"),
]


@pytest.mark.parametrize("kind, args, kw, key, shape, scan_kind, message", BROKEN_FAMILY,
                         ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BROKEN_FAMILY)])
def test_inconsistent_gru_rnn_cells_say_what_is_wrong(kind, args, kw, key, shape, scan_kind, message):
    sd = _edited(_mod_sd(kind, *args, **kw), key, shape)
    with pytest.raises(ValueError) as info:
        detect.find_modules(sd)
    assert message in str(info.value)
    with pytest.raises(ValueError) as info:
        detect.find_one(sd)
    assert message in str(info.value)
    ((prefix, got_kind, res),) = detect.scan(sd)
    assert prefix == "" and got_kind == scan_kind and isinstance(res, ValueError)


def test_overrides_apply_only_where_a_state_dict_is_silent():
    sd = _zoo(_torch())
    rnn, lstm, cell, rnncell = (detect.find_one(sd, p) for p in ("rnn", "lstm", "lstmcell", "rnncell"))
    assert rnn.full_config(nonlinearity="relu", batch_first=True, dropout=0.5)["nonlinearity"] == "relu"
    assert rnncell.full_config(nonlinearity="relu") == dict(input_size=3, hidden_size=4, bias=True,
                                                            nonlinearity="relu")
    assert lstm.full_config(hidden_size=4)["hidden_size"] == 4  # agreeing with the shapes is fine
    for spec, kw, message in [
        (lstm, dict(nonlinearity="relu"), "nonlinearity applies to RNN and RNNCell only, not to LSTM"),
        (detect.find_one(sd, "gru"), dict(nonlinearity="tanh"), "nonlinearity applies to RNN and RNNCell only, not to GRU"),
        (cell, dict(batch_first=True), "batch_first applies to the layers (LSTM, GRU, RNN) only; LSTMCell takes"),
        (rnncell, dict(dropout=0.1), "RNNCell has no argument 'dropout'"),
        (lstm, dict(hidden_size=5), "hidden_size=5 disagrees with the tensor shapes, which give hidden_size=4"),
        (rnn, dict(bidirectional=True), "bidirectional=True disagrees with the tensor shapes"),
        (rnn, dict(nonlinearity="sigmoid"), "nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"),
        (rnn, dict(batch_first=1), "batch_first must be True or False"),
    ]:
        with pytest.raises(ValueError) as info:
            spec.full_config(**kw)
        assert message in str(info.value), (kw, str(info.value))
    with pytest.raises(ValueError, match="unknown kind 'Transformer'"):
        detect.constructor_config("Transformer", {})
    with pytest.raises(ValueError, match="GRU needs input_size"):
        detect.constructor_config("GRU", {"hidden_size": 3})


def test_shapes_only_objects_for_every_kind():
    class Shape:
        def __init__(self, *shape):
            self.shape = shape

    H, I = 3, 2
    cases = {"LSTM": 4, "GRU": 3, "RNN": 1}
    for kind, g in cases.items():
        sd = {"weight_ih_l0": Shape(g * H, I), "weight_hh_l0": Shape(g * H, H)}
        (spec,) = detect.find_modules(sd)
        assert spec.kind == kind and spec.config["bias"] is False and spec.config["input_size"] == I
        sd = {"weight_ih": Shape(g * H, I), "weight_hh": Shape(g * H, H), "bias_ih": Shape(g * H),
              "bias_hh": Shape(g * H)}
        (spec,) = detect.find_modules(sd)
        assert spec.kind == kind + "Cell" and spec.config["bias"] is True
        assert detect.module_state_dict(sd, spec)["weight_hh"] is sd["weight_hh"]


def test_biases_alone_are_not_a_cell():
    sd = {"norm.bias_ih": np.zeros(3), "norm.bias_hh": np.zeros(3)}
    assert detect.scan(sd) == [] and detect.find_modules(sd) == []
    with pytest.raises(ValueError, match=r"the state dict holds 2 tensors: norm.bias_ih \(3,\), norm.bias_hh \(3,\)"):
        detect.find_one(sd)
