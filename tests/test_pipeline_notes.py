"""What a state dict cannot show about a whole model, said rather than guessed in
silence: tensors that no layer of a pipeline uses (a learned initial state, a scale,
an attention) are named in a LeftOutWarning and by convert; a LayerNorm's eps (and that
a 1-D weight is a LayerNorm's at all) is noted and can be set (eps=, --eps); inspect's
suggested pipeline puts 'steps' between recurrent layers, reads a first lone 2-D weight
as a bias-free Linear where only that chains, skips an attention's out_proj and names
the modules it leaves out. Also what the CLI and the constructors used to take without
a word: a whole model's file converted without --pipeline, --nonlinearity over a
recorded one, configs no loader opens, control characters in layer names, and flags
such as batch_first="False" (truthy, so the axes swapped)."""

import re
import warnings

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import cli, pipeline
from lstm_infer.pipeline import LeftOutWarning

# partial pipelines are made on purpose here; pytest.warns still sees the warnings it checks
pytestmark = pytest.mark.filterwarnings("ignore::lstm_infer.pipeline.LeftOutWarning")
RNG = np.random.default_rng(3)


def _t(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.3


def _lstm(prefix, i, h):
    return {f"{prefix}.weight_ih_l0": _t(4 * h, i), f"{prefix}.weight_hh_l0": _t(4 * h, h),
            f"{prefix}.bias_ih_l0": _t(4 * h), f"{prefix}.bias_hh_l0": _t(4 * h)}


def _gru(prefix, i, h):
    return {f"{prefix}.weight_ih_l0": _t(3 * h, i), f"{prefix}.weight_hh_l0": _t(3 * h, h),
            f"{prefix}.bias_ih_l0": _t(3 * h), f"{prefix}.bias_hh_l0": _t(3 * h)}


def _classifier(**extra):
    sd = {"emb.weight": _t(10, 8), **_lstm("lstm", 8, 12), "ln.weight": 1 + _t(12), "ln.bias": _t(12),
          "fc.weight": _t(3, 12), "fc.bias": _t(3)}
    sd.update(extra)
    return sd


PIPE = "emb > lstm > final > ln > fc"
IDS = np.array([[1, 2], [3, 4], [5, 0]], np.int64)


def test_tensors_no_layer_uses_are_named():
    sd = _classifier(h0=_t(12), temperature=_t(1))
    with pytest.warns(LeftOutWarning, match=r"2 tensors of the state dict are in no layer of the pipeline: "
                                            r"h0 \(12,\), temperature \(1,\); the model runs without them"):
        li.Sequential.from_state_dict(sd, PIPE)
    with pytest.warns(LeftOutWarning, match=r"^2 tensors of the state dict are in no layer .*: fc.weight "
                                            r"\(3, 12\), fc.bias \(3,\)"):  # a pipeline that stops early
        li.Sequential.from_state_dict(_classifier(), "emb > lstm > final > ln")
    with pytest.warns(LeftOutWarning, match=r"^1 tensor of the state dict is in no layer .*: h0 \(12,\); the "
                                            r"model runs without it, so if the torch model uses it"):
        li.Sequential.from_state_dict(_classifier(h0=_t(12)), PIPE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pipeline using every tensor warns nothing
        li.Sequential.from_state_dict(_classifier(), PIPE)


def test_an_attention_beside_the_recurrent_layer_is_named():
    sd = _classifier(**{"attn.in_proj_weight": _t(36, 12), "attn.in_proj_bias": _t(36),
                        "attn.out_proj.weight": _t(12, 12), "attn.out_proj.bias": _t(12)})
    with pytest.warns(LeftOutWarning, match=r"attn.in_proj_weight \(36, 12\), attn.in_proj_bias \(36,\)"):
        li.Sequential.from_state_dict(sd, "emb > lstm > final > attn.out_proj > ln > fc")
    found = pipeline.list_modules(sd)
    suggestion = pipeline.suggest(sd, found)
    assert "attn" not in suggestion  # its out_proj alone is not the attention
    assert pipeline.left_out(found, suggestion) == ["attn.out_proj"]


def _layer_norm(x, w, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


@pytest.mark.parametrize("eps", [1e-6, {"ln": 1e-3}, np.float32(1e-12)])
def test_layer_norm_eps_is_set_by_the_caller(eps):
    sd = _classifier()
    model = li.Sequential.from_state_dict(sd, "emb > lstm > final > ln", eps=eps)
    want_eps = float(eps["ln"] if isinstance(eps, dict) else eps)
    assert model["ln"].eps == want_eps
    default = li.Sequential.from_state_dict(sd, "emb > lstm > final > ln")
    assert default["ln"].eps == 1e-5
    # the readout before the norm, then the norm with the caller's eps
    before = li.Sequential.from_state_dict(sd, "emb > lstm > final", eps=None)(IDS)
    want = _layer_norm(before, sd["ln.weight"], sd["ln.bias"], want_eps)
    np.testing.assert_allclose(model(IDS), want, atol=2e-6)


@pytest.mark.parametrize("eps, message", [
    (-1.0, "eps must be a finite number >= 0"), (float("inf"), "eps must be a finite number >= 0"),
    ("1e-6", "eps must be a finite number >= 0"), (True, "eps must be a finite number >= 0"),
    ({"fc": 1e-6}, r"eps names \['fc'\], which are not LayerNorm layers of the pipeline"),
])
def test_bad_eps_refused(eps, message):
    with pytest.raises(ValueError, match=message):
        li.Sequential.from_state_dict(_classifier(), PIPE, eps=eps)
    with pytest.raises(ValueError, match="eps applies to LayerNorm layers; the pipeline has none"):
        li.Sequential.from_state_dict(_classifier(), "emb > lstm > final > fc", eps=1e-6)


def test_cli_notes_and_eps(tmp_path, capsys):
    f = tmp_path / "m.npz"
    np.savez(f, **_classifier(h0=_t(12)))
    out = tmp_path / "m.lstm"
    assert cli.main(["convert", str(f), "-o", str(out), "--pipeline", PIPE]) == 0
    text = capsys.readouterr().out
    assert "note: ln: a state dict stores neither a LayerNorm's eps nor that the module is a LayerNorm" in text
    assert "use --eps" in text
    assert "note: 1 tensor of the state dict is in no layer of the pipeline: h0 (12,)" in text
    assert cli.main(["convert", str(f), "-o", str(out), "--pipeline", PIPE, "--eps", "1e-6"]) == 0
    text = capsys.readouterr().out
    assert "use --eps" not in text and "eps=1e-06" in text
    assert li.load(str(out))["ln"].eps == 1e-6
    assert cli.main(["inspect", str(f)]) == 0
    text = capsys.readouterr().out
    assert "'ln.' LayerNorm" in text and "RMSNorm, PReLU, GroupNorm and BatchNorm" in text
    assert cli.main(["convert", str(f), "-o", str(out), "--pipeline", PIPE, "--eps", "-1"]) == cli.EXIT_USAGE
    assert "eps must be a finite number >= 0" in capsys.readouterr().err
    lone = tmp_path / "lstm.npz"
    np.savez(lone, **_lstm("lstm", 8, 12))
    assert cli.main(["convert", str(lone), "-o", str(out), "--eps", "1e-6"]) == cli.EXIT_USAGE
    assert "--eps sets the LayerNorm layers of a whole model: it goes with --pipeline" in capsys.readouterr().err


def test_suggestion_puts_steps_between_recurrent_layers():
    """lstm, a Linear, a GRU and a head in file order: all of them, not 'lstm > final > mid'."""
    sd = {**_lstm("lstm", 4, 6), "mid.weight": _t(5, 6), "mid.bias": _t(5), **_gru("gru", 5, 7),
          "fc.weight": _t(2, 7), "fc.bias": _t(2)}
    suggestion = pipeline.suggest(sd)
    assert suggestion == "lstm > steps > mid > gru > final > fc"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = li.Sequential.from_state_dict(sd, suggestion)
    assert model(_t(3, 2, 4)).shape == (2, 2)


def test_suggestion_reads_a_first_lone_weight_as_the_linear_that_chains():
    """Float input through a bias-free Linear(4, 6): read as a Linear, as a pipeline reads it."""
    sd = {"inp.weight": _t(6, 4), **_lstm("lstm", 6, 5), "fc.weight": _t(2, 5), "fc.bias": _t(2)}
    suggestion = pipeline.suggest(sd)
    assert suggestion == "inp:Linear > lstm > final > fc"
    model = li.Sequential.from_state_dict(sd, suggestion)
    assert model(_t(3, 2, 4)).shape == (2, 2)
    # an Embedding whose width is the LSTM's input stays an Embedding
    sd = {"emb.weight": _t(9, 6), **_lstm("lstm", 6, 5), "fc.weight": _t(2, 5), "fc.bias": _t(2)}
    assert pipeline.suggest(sd) == "emb > lstm > final > fc"


def test_inspect_names_what_the_suggestion_leaves_out(tmp_path, capsys):
    sd = {**_lstm("lstm", 8, 12), "emb.weight": _t(10, 8), "fc.weight": _t(3, 12), "fc.bias": _t(3)}
    f = tmp_path / "m.npz"
    np.savez(f, **sd)
    assert cli.main(["inspect", str(f)]) == 0
    text = capsys.readouterr().out
    assert "--pipeline 'lstm > final > fc'" in text
    assert "it leaves out 'emb'" in text


# ------------------------------------------------- model files through the CLI

def test_convert_of_a_whole_model_file_copies_or_reduces_it(tmp_path, capsys):
    """convert without --pipeline on a Sequential file: a copy, with --weights its
    recurrent layers' storage changed (it said 'error: Sequential', or a traceback)."""
    src = tmp_path / "seq.lstm"
    model = li.Sequential.from_state_dict(_classifier(), PIPE)
    model.save(str(src))
    want = model(IDS)
    assert cli.main(["convert", str(src), "-o", str(tmp_path / "copy.lstm")]) == 0
    assert "wrote" in capsys.readouterr().out
    np.testing.assert_array_equal(li.load(str(tmp_path / "copy.lstm"))(IDS), want)
    assert cli.main(["convert", str(src), "-o", str(tmp_path / "i8.lstm"), "--weights", "int8"]) == 0
    assert "with int8 weights" in capsys.readouterr().out
    reduced = li.load(str(tmp_path / "i8.lstm"))
    assert reduced["lstm"].weights == "int8"
    np.testing.assert_allclose(reduced(IDS), want, atol=1e-2)
    for extra, message in ((["--batch-first"], "recorded with batch_first=False"),
                           (["--nonlinearity", "relu"], "its nonlinearity is recorded")):
        assert cli.main(["convert", str(src), "-o", str(tmp_path / "x.lstm")] + extra) == cli.EXIT_USAGE
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.lstm").exists()


def test_a_model_files_recorded_nonlinearity_is_not_overridden(tmp_path, capsys):
    rnn = tmp_path / "rnn.lstm"
    li.RNN(3, 4).save(str(rnn))
    for argv in (["convert", str(rnn), "-o", str(tmp_path / "relu.lstm"), "--nonlinearity", "relu"],
                 ["verify", str(rnn), "--nonlinearity", "relu"]):
        assert cli.main(argv) == cli.EXIT_USAGE
        assert "its nonlinearity is recorded, --nonlinearity does not apply" in capsys.readouterr().err
    assert not (tmp_path / "relu.lstm").exists()


@pytest.mark.parametrize("cfg, message", [
    (dict(num_layers=1025), "num_layers = 1025 is too large (at most 1024)"),
    (dict(input_size=0), "input_size, hidden_size and num_layers must be at least 1"),
])
def test_write_model_refuses_what_no_loader_opens(tmp_path, cfg, message):
    config = dict(input_size=2, hidden_size=1, num_layers=1, bias=False, batch_first=False, dropout=0.0,
                  bidirectional=False)
    config.update(cfg)
    sd = {}
    for layer in range(config["num_layers"]):
        sd[f"weight_ih_l{layer}"] = np.zeros((3, config["input_size"] if layer == 0 else 1), np.float32)
        sd[f"weight_hh_l{layer}"] = np.zeros((3, 1), np.float32)
    out = tmp_path / "m.lstm"
    with pytest.raises(ValueError, match=re.escape(message)):
        li.modelfile.write_model(str(out), sd, config, "GRU")
    assert not out.exists()


def test_layer_names_with_control_characters_refused():
    with pytest.raises(ValueError, match="control characters"):
        li.Sequential({"enc\x1b[2J": li.LSTM(3, 4), "final": li.Readout("final")})


@pytest.mark.parametrize("kw, error", [
    (dict(batch_first="False"), "batch_first must be True or False, got 'False'"),
    (dict(batch_first=None), "batch_first must be True or False, got None"),
    (dict(batch_first=1), "batch_first must be True or False, got 1"),  # torch refuses ints here too
    (dict(bias="False"), "bias must be True or False, got 'False'"),
    (dict(bidirectional="no"), "bidirectional must be True or False, got 'no'"),
])
def test_flags_that_are_not_bools_refused(kw, error):
    """bool('False') is True: such a flag used to be taken silently (batch_first='False'
    swapped the time and batch axes)."""
    for cls in (li.LSTM, li.GRU, li.RNN):
        with pytest.raises(TypeError, match=error):
            cls(4, 3, **kw)
    with pytest.raises(TypeError, match=error.split(" got")[0]):
        li.LSTM.from_state_dict(li.LSTM(4, 3).state_dict(), **kw)


def test_flags_torch_takes_as_ints_still_taken():
    assert li.LSTM(4, 3, bidirectional=1).bidirectional is True
    assert li.LSTMCell(4, 3, bias=0).bias is False
    assert li.Linear(4, 3, bias=np.True_).bias is not None
    with pytest.raises(ValueError, match="dropout must be a number in"):
        li.LSTM(4, 3, dropout=True)


def test_a_square_first_weight_read_as_an_embedding_says_how_to_read_it_as_a_linear():
    sd = {"inp.weight": _t(6, 6), **_lstm("lstm", 6, 5), "fc.weight": _t(2, 5), "fc.bias": _t(2)}
    model = li.Sequential.from_state_dict(sd, "inp > lstm > final > fc")
    with pytest.raises(TypeError, match="if 'inp' is a bias-free Linear, write 'inp:Linear' in the pipeline"):
        model(_t(3, 2, 6))
    assert li.Sequential.from_state_dict(sd, "inp:Linear > lstm > final > fc")(_t(3, 2, 6)).shape == (2, 2)
