"""Finding LSTMs in state dicts and inferring their configs from shapes."""

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
    with pytest.raises(ValueError, match=r"no LSTM at prefix 'gru'; available prefixes: 'decoder.'"):
        detect.select(specs, "gru")
    with pytest.raises(ValueError, match="no LSTM or LSTMCell parameters found"):
        detect.select([])
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
    ("layers2.pt", _reshape("weight_hh_l0", (22, 5)), "weight_hh_l0: first dimension 22 is not a positive multiple of 4"),
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
    assert [(p, type(r).__name__) for p, _, r in found] == [("decoder.", "ValueError"), ("encoder.", "LSTMSpec")]


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
