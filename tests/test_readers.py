"""read_tensors over every format; weights read without torch reproduce torch's outputs."""

import io
import json
import re
import struct
import zipfile

import numpy as np
import pytest
import safetensors.numpy

from file_helpers import MANIFEST, check_against_ref, files, lstm_cases, np_lstm, path, ref
import lstm_infer as li
from lstm_infer import detect, readers
from lstm_infer.errors import FormatError


@pytest.mark.parametrize("name", files())
def test_sniff(name):
    assert readers.sniff(open(path(name), "rb").read()) == MANIFEST[name]["format"]


@pytest.mark.parametrize("name, prefix, info", lstm_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_weights_reproduce_torch_outputs(name, prefix, info):
    """Config from detect equals torch's; the weights give torch's outputs (NumPy equations)."""
    sd = readers.read_tensors(path(name))
    kind, cfg = detect.infer_config(sd, prefix)
    assert cfg == info["config"]
    assert kind == info.get("kind", "LSTM")
    weights = detect.lstm_state_dict(sd, prefix)
    check_against_ref(lambda x, hx, lengths: np_lstm(weights, cfg, x, hx, lengths), ref(info["ref"]))


def test_reference_detects_wrong_weights():
    """The check above can fail: a tiny weight change is caught."""
    sd = detect.lstm_state_dict(readers.read_tensors(path("uni.pt")))
    sd["weight_hh_l0"] = sd["weight_hh_l0"].copy()
    sd["weight_hh_l0"][3, 2] += 1e-3
    cfg = MANIFEST["uni.pt"]["lstms"][""]["config"]
    with pytest.raises(AssertionError):
        check_against_ref(lambda x, hx, lengths: np_lstm(sd, cfg, x, hx, lengths), ref("uni.ref.npz"))


@pytest.mark.parametrize("stem", ["uni", "proj"])
def test_all_formats_agree(stem):
    base = readers.read_tensors(path(stem + ".pt"))
    for other in (stem + "_legacy.pt", stem + ".safetensors", stem + ".npz"):
        got = readers.read_tensors(path(other))
        assert sorted(got) == sorted(base)
        for k in base:
            np.testing.assert_array_equal(got[k], base[k])


def test_safetensors_dtypes_against_library(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i64": np.arange(-3, 3, dtype=np.int64),
        "i32": np.arange(4, dtype=np.int32).reshape(2, 2),
        "i16": np.array([-2, 7], np.int16),
        "i8": np.array([-1, 1], np.int8),
        "u8": np.array([0, 255], np.uint8),
        "bool": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(2.5, np.float32),
    }
    f = tmp_path / "t.safetensors"
    safetensors.numpy.save_file(arrays, str(f), metadata={"who": "test"})
    got = readers.read_tensors(f)
    assert sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
    _, meta = readers.parse_safetensors(f.read_bytes())
    assert meta == {"who": "test"}


def test_safetensors_bf16_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    t = torch.randn(4, 5).to(torch.bfloat16)
    f = tmp_path / "b.safetensors"
    safetensors.torch.save_file({"w": t}, str(f))
    stored = {}
    np.testing.assert_array_equal(readers.read_tensors(f, source_dtypes=stored)["w"], t.float().numpy())
    assert stored == {"w": "bfloat16"}


def _st(header, data=b""):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F16", "shape": [2], "data_offsets": [8, 12]}}


SAFETENSORS_BAD = [
    (b"\x05\x00\x00", "too short"),
    (struct.pack("<Q", 1 << 40) + b"{}", "exceeds the limit"),
    (struct.pack("<Q", 100) + b"{}", "runs past the end"),
    (_st(b"{not json"), "not valid UTF-8 JSON"),
    (_st(b'{"a": \xff}'), "not valid UTF-8 JSON"),
    (_st(b"[" * 100000), "not valid"),
    (_st([1, 2]), "not an object"),
    (_st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
         b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4), "duplicate"),
    (_st({"a": {"dtype": "F32", "shape": [1]}}), "exactly dtype"),
    (_st({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unsupported dtype"),
    (_st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
    (_st({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
    (_st({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4), "outside"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "outside"),
    (_st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "needs 8 bytes"),
    (_st({"a": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 4]}}, b"\0" * 4), "needs"),
    (_st(dict(GOOD, b=dict(GOOD["b"], data_offsets=[6, 10])), b"\0" * 12), "overlaps"),
    (_st(dict(GOOD, b=dict(GOOD["b"], data_offsets=[10, 14])), b"\0" * 14), "gap of 2"),
    (_st(GOOD, b"\0" * 16), "4 bytes after the last tensor"),
    (_st({"__metadata__": {"k": 1}}), "strings to strings"),
]


@pytest.mark.parametrize("blob, message", SAFETENSORS_BAD, ids=[m for _, m in SAFETENSORS_BAD])
def test_safetensors_bad_files(blob, message):
    assert readers.read_tensors(_st(GOOD, b"\0" * 12))["b"].dtype == np.float16
    with pytest.raises(FormatError, match=message) as info:
        readers.parse_safetensors(blob, "bad.safetensors")
    assert str(info.value).startswith("bad.safetensors: ")
    with pytest.raises(FormatError):  # through the sniffing entry point too
        readers.read_tensors(blob, "bad.safetensors")


def test_npz_variants(tmp_path):
    a = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    b = np.arange(5, dtype=">f8")
    for save in (np.savez, np.savez_compressed):
        f = tmp_path / "x.npz"
        save(f, a=a, b=b)
        got = readers.read_tensors(f)
        np.testing.assert_array_equal(got["a"], a)
        assert got["b"].dtype == np.float64 and got["b"].dtype.isnative
        np.testing.assert_array_equal(got["b"], b)


def _npz(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return buf.getvalue()


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("members, message", [
    ({"a.npy": _npy(np.zeros(3))[:-8]}, "needs 24 bytes"),
    ({"a.npy": _npy(np.zeros(3)) + b"\0"}, "needs 24 bytes"),
    ({"a.npy": b"\x93NUMPY\x01\x00" + b"\x10\x00" + b"{'descr': 1}    "}, "bad .npy header"),
    ({"a.npy": b"not numpy at all"}, "bad .npy header"),
    ({"a.npy": _npy(np.zeros(2)), "b.txt": b"x"}, "not a .npy"),
    ({"a.npy": _npy(np.zeros(2, dtype=[("x", "<f4")]))}, "not a plain numeric"),
])
def test_npz_bad_files(members, message):
    with pytest.raises(FormatError, match=message):
        readers.read_tensors(_npz(members), "bad.npz")


@pytest.mark.parametrize("obj, keys", [
    ({"model": {"w": 1}, "state_dict": {"a.w": np.zeros(1)}, "epoch": 1}, ["a.w"]),
    ({"model": {"enc": {"w": np.zeros(1)}}, "epoch": 1}, ["enc.w"]),
    ({"net": {"w": np.zeros(1)}, "ema": {"w": np.zeros(1)}}, ["w"]),
    ({"weights": {"w": np.zeros(1)}, "epoch": 2}, ["w"]),
    ({"enc": {"w": np.zeros(1)}, "dec": {"w": np.zeros(1)}, "step": 1}, ["dec.w", "enc.w"]),
    ({"w": np.zeros(1), 3: np.zeros(1)}, ["3", "w"]),
])
def test_find_state_dict(obj, keys):
    assert sorted(readers.find_state_dict(obj)) == keys


def test_find_state_dict_errors():
    with pytest.raises(FormatError, match="not a mapping"):
        readers.find_state_dict([np.zeros(1)], "f.pt")
    cycle = {}
    cycle["self"] = cycle  # pickles can build cycles
    with pytest.raises(FormatError, match="f.pt: mappings nested too deep"):
        readers.find_state_dict({"a": cycle, "epoch": 1}, "f.pt")
    with pytest.raises(FormatError, match="no tensors found"):
        readers.find_state_dict({"epoch": 3}, "f.pt")


def test_checkpoint_with_prefixed_state_dict():
    sd = readers.read_tensors(path("checkpoint_state_dict.pt"))
    assert all(k.startswith("rnn.") for k in sd)
    (spec,) = detect.find_lstms(sd)
    assert spec.prefix == "rnn."


def test_unknown_and_missing_files(tmp_path):
    with pytest.raises(FormatError, match="unrecognised format"):
        readers.read_tensors(b"just some text", "notes.txt")
    with pytest.raises(FileNotFoundError):
        readers.read_tensors(tmp_path / "missing.pt")


# -------------------------------------------------- property: vs safetensors

from hypothesis import given, settings, strategies as st  # noqa: E402

_DTYPES = ["<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "<u2", "<u4", "<u8", "?"]
_arrays = st.dictionaries(
    st.text("abcdefgh._0123456789", min_size=1, max_size=12),
    st.tuples(st.sampled_from(_DTYPES), st.lists(st.integers(0, 4), max_size=3), st.integers(0, 2**32 - 1)),
    min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(_arrays)
def test_safetensors_files_from_library_read_back(spec):
    arrays = {}
    for name, (dtype, shape, seed) in spec.items():
        raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize,
                                                   dtype=np.uint8)
        arr = raw.view(dtype).reshape(shape)
        if dtype == "?":
            arr = np.asarray(arr.view(np.uint8) % 2 == 1)
        arrays[name] = arr
    blob = safetensors.numpy.save(arrays)
    got = readers.read_tensors(blob, "prop.safetensors")
    assert sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert got[k].tobytes() == v.tobytes()  # bit-exact, NaN payloads included


# ------------------------------------- one rule: a FormatError naming the file

def _npy_raw(descr, shape, body=b""):
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}".encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


@pytest.mark.parametrize("arr", [
    np.array(["ab", "c"]),                                  # <U2
    np.array([b"abc"]),                                     # |S3
    np.array(["2020-01-01"], dtype="datetime64[D]"),
    np.array([3], dtype="timedelta64[s]"),
    np.zeros(2, dtype="V4"),
], ids=lambda a: a.dtype.str)
def test_npz_non_numeric_dtypes_refused(arr):
    """Before: <U2, |S3, datetime and timedelta arrays were read as weights."""
    with pytest.raises(FormatError, match=rf"^bad.npz\[a.npy\]: dtype {re.escape(arr.dtype.str)} is not a plain "
                                          r"numeric type") as info:
        readers.read_tensors(_npz({"a.npy": _npy(arr)}), "bad.npz")
    assert type(info.value) is FormatError


@pytest.mark.parametrize("label, blob", [
    ("npz |V0", _npz({"a.npy": _npy_raw("|V0", (3,))})),
    ("npz 65 dims", _npz({"a.npy": _npy_raw("<f4", (1,) * 65, b"\0" * 4)})),
    ("npz shape overflow", _npz({"a.npy": _npy_raw("<f4", (2**62, 4, 0))})),
    ("npz dimension past intp", _npz({"a.npy": _npy_raw("<f4", (2**63, 0))})),
    ("safetensors 65 dims", _st({"a": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}, b"\0" * 4)),
    ("safetensors shape overflow", _st({"a": {"dtype": "F32", "shape": [2**62, 4, 0], "data_offsets": [0, 0]}})),
    ("safetensors bf16 overflow", _st({"a": {"dtype": "BF16", "shape": [2**62, 0], "data_offsets": [0, 0]}})),
], ids=lambda v: v if isinstance(v, str) else "")
def test_impossible_shapes_name_the_file(label, blob):
    """Before: a bare ValueError from NumPy ('maximum supported dimension', 'itemsize
    cannot be zero', 'array is too big') without the file's name."""
    with pytest.raises(FormatError) as info:
        readers.read_tensors(blob, "bad.file")
    assert str(info.value).startswith("bad.file"), str(info.value)


@pytest.mark.parametrize("size, stride", [((1,) * 65, (0,) * 65), ((2**62, 4, 0), (0, 0, 0)),
                                          ((2**63, 0), (1, 1))])
def test_impossible_tensor_shapes_name_the_file(size, stride):
    from file_helpers import dict_ops, program, tensor_ops, torch_zip

    data = torch_zip(program(dict_ops([("w", tensor_ops("0", 4, 0, size, stride))])), {"0": b"\0" * 16})
    with pytest.raises(FormatError, match=r"^bad.pt: tensor has "):
        readers.read_tensors(data, "bad.pt")


def test_unpickler_objects_errors_name_the_file():
    """Before: errors raised while rebuilding tensors ('tensor size is not a tuple of
    ints: ...') lacked the file name."""
    from file_helpers import call, dict_ops, frag, glob, program, torch_zip

    bad_size = call(glob("torch._utils", "_rebuild_tensor_v2"),
                    b"(" + frag("storage") + glob("torch", "FloatStorage") + frag("0") + frag("cpu") + frag(2) + b"tQ",
                    frag(0), frag("oops"), frag((1,)))
    not_storage = call(glob("torch._utils", "_rebuild_tensor_v2"), frag(5), frag(0), frag((2,)), frag((1,)))
    bad_param = call(glob("torch._utils", "_rebuild_parameter"), frag(3))
    for body, want in ((bad_size, "tensor size is not a tuple of ints: 'oops'"),
                       (not_storage, "tensor storage is a int, not a storage"),
                       (bad_param, "parameter data is a int, not a tensor")):
        with pytest.raises(FormatError, match=re.escape(f"named.pt: {want}")):
            readers.read_tensors(torch_zip(program(dict_ops([("w", body)])), {"0": b"\0" * 8}), "named.pt")


# ------------------------------------------- say what a file is, when it is not ours

@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory):
    """Real TorchScript and ONNX files, written by torch."""
    import warnings

    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("foreign")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit and the TorchScript-based ONNX exporter are deprecated
        torch.jit.save(torch.jit.script(torch.nn.LSTM(3, 4)), d / "scripted.pt")
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 3), torch.zeros(1, 2)), d / "traced.pt")
        torch.onnx.export(torch.nn.Linear(2, 3), (torch.zeros(1, 2),), str(d / "linear.onnx"), dynamo=False)
    return {"scripted": d / "scripted.pt", "traced": d / "traced.pt", "onnx": d / "linear.onnx"}


@pytest.mark.parametrize("which, kind, message", [
    ("scripted", "torchscript", "a TorchScript archive (torch.jit.save), not a state-dict file"),
    ("traced", "torchscript", "a TorchScript archive (torch.jit.save), not a state-dict file"),
    ("onnx", "onnx", "an ONNX model, not a state-dict file"),
], ids=["scripted", "traced", "onnx"])
def test_torchscript_and_onnx_named(foreign_files, which, kind, message):
    """Before: 'refusing to load global __torch__...' and 'unrecognised format'."""
    f = foreign_files[which]
    assert readers.sniff(f.read_bytes()) == kind
    for read in (readers.read_tensors, readers.read_object):
        with pytest.raises(FormatError) as info:
            read(f)
        assert str(info.value).startswith(f"{f}: {message}")
        assert type(info.value) is FormatError  # not an UnsafeFileError: nothing hostile about it
    if kind == "torchscript":
        from lstm_infer import torchfile

        with pytest.raises(FormatError, match=re.escape(message)):
            torchfile.load(f)


def test_onnx_sniff_is_specific():
    assert readers.sniff(b"\x08\x07\x12\x07pytorch") == "onnx"
    for other in (b"\x08\x07\x00", b"\x08\x80\x12", b"\x09\x07\x12", b"\x08"):
        assert readers.sniff(other) == "unknown"


# ---------------------------------------- the model-file loader on other files

@pytest.mark.parametrize("which, what", [("scripted", "a TorchScript archive (torch.jit.save)"),
                                         ("onnx", "an ONNX model")])
def test_model_loader_names_torchscript_and_onnx(foreign_files, which, what):
    from lstm_infer import modelfile

    f = foreign_files[which]
    with pytest.raises(FormatError, match=re.escape(f"{f}: {what}, not a state-dict file and not an lstm_infer "
                                                    f"model file; torch.save the module's state_dict()")):
        li.load(f)


@pytest.mark.parametrize("name, what", [
    ("uni.pt", "a torch.save file"), ("uni_legacy.pt", "a torch.save file (legacy format)"),
    ("uni.npz", "an .npz archive"), ("checkpoint.pt", "a torch.save file"),
])
def test_model_loader_says_what_a_weight_file_is(name, what):
    """Before: li.load('model.pt') said 'header length 578712552184433488 exceeds the limit'."""
    from lstm_infer import modelfile

    for load in (modelfile.read_model, li.load):
        with pytest.raises(FormatError) as info:
            load(path(name))
        assert str(info.value) == (f"{path(name)}: {what}, not an lstm_infer model file; convert it with "
                                   f"'lstm-infer convert {path(name)} -o MODEL.lstm'")
    with pytest.raises(FormatError, match="no __metadata__ format='lstm_infer'.*lstm-infer convert"):
        modelfile.read_model(path("uni.safetensors"))


def test_model_loader_on_pickles_and_other_files():
    import pickle

    from lstm_infer import modelfile

    with pytest.raises(FormatError, match=r"^p.pkl: a plain pickle, not an lstm_infer model file"):
        modelfile.read_model(data=pickle.dumps({"w": [1.0] * 4}), name="p.pkl")
    with pytest.raises(FormatError, match=r"^n.txt: in an unrecognised format, not an lstm_infer model file"):
        modelfile.read_model(data=b"just some notes\n", name="n.txt")
    with pytest.raises(FormatError, match=r"^s.lstm: file is 5 bytes, too short"):
        modelfile.read_model(data=b"short", name="s.lstm")
