"""torch.save files (zip and legacy) read without torch."""

import subprocess
import sys

import numpy as np
import pytest

from file_helpers import (DATA, call, dict_ops, files, frag, glob, legacy_file, member, path, program, rezip,
                          tensor_ops, torch_zip)
from lstm_infer import torchfile
from lstm_infer.errors import FormatError

TORCH_FILES = files("torch-zip") + files("torch-legacy")


def _flat(obj, prefix=""):
    """Every array leaf of nested dicts/lists, by dotted path."""
    out = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        if isinstance(v, (dict, list, tuple)):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("name", TORCH_FILES)
def test_values_equal_torch_load(name):
    torch = pytest.importorskip("torch")
    want = _flat(torch.load(path(name), weights_only=True))
    got = _flat(torchfile.load(path(name)))
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        if isinstance(w, torch.Tensor):
            ref = w.float().numpy() if w.dtype == torch.bfloat16 else w.numpy()
            assert isinstance(got[k], np.ndarray) and got[k].flags.c_contiguous, k
            assert got[k].dtype == ref.dtype and got[k].shape == ref.shape, k
            np.testing.assert_array_equal(got[k], ref, err_msg=k)
        else:
            assert got[k] == w and type(got[k]) is type(w), k


@pytest.mark.parametrize("stem", sorted({f[:-3] for f in files("torch-zip") if f[:-3] + "_legacy.pt" in files()}))
def test_zip_and_legacy_agree(stem):
    a, b = _flat(torchfile.load(path(stem + ".pt"))), _flat(torchfile.load(path(stem + "_legacy.pt")))
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k]


def test_checkpoint_structure_is_returned_whole():
    obj = torchfile.load(path("checkpoint.pt"))
    assert obj["epoch"] == 3 and obj["best_loss"] == 0.25 and obj["notes"] == ["a", ("tuple", 1)]
    assert obj["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert all(isinstance(v, np.ndarray) for v in obj["model"].values())


def test_bfloat16_widened_and_fp16_fp64_kept():
    assert {v.dtype for v in torchfile.load(path("bf16.pt")).values()} == {np.dtype(np.float32)}
    assert {v.dtype for v in torchfile.load(path("fp16.pt")).values()} == {np.dtype(np.float16)}
    assert {v.dtype for v in torchfile.load(path("fp64_legacy.pt")).values()} == {np.dtype(np.float64)}


def test_noncontiguous_shared_storage_fixture_is_really_shared():
    # The fixture must exercise what it claims: one storage, strided views at offsets.
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(open(path("noncontig.pt"), "rb").read())).namelist()
    assert len([n for n in names if "/data/" in n]) == 1
    obj = torchfile.load(path("noncontig.pt"))
    assert all(v.flags.c_contiguous for v in obj.values())
    # Views of one storage come back as independent arrays.
    obj["weight_ih_l0"][...] = 0
    assert np.any(obj["weight_hh_l0"] != 0)
    assert np.any(torchfile.load(path("noncontig.pt"))["weight_ih_l0"] != 0)


def test_hand_made_strided_views_and_offsets():
    base = np.arange(24, dtype=np.float32)
    body = dict_ops([
        ("t", tensor_ops("0", 24, 2, (3, 4), (1, 5))),      # transposed-like, offset 2
        ("s", tensor_ops("0", 24, 23, (1,), (1,))),         # last element
        ("e", tensor_ops("0", 24, 24, (0, 3), (3, 1))),     # empty at the very end
        ("b", tensor_ops("0", 24, 4, (2, 3), (0, 1))),      # stride-0 broadcast
        ("d", tensor_ops("1", 3, 0, (3,), (1,), "DoubleStorage")),
    ])
    data = torch_zip(program(body), {"0": base.tobytes(), "1": np.array([1.5, 2, 3]).tobytes()})
    out = torchfile.load(data)
    np.testing.assert_array_equal(out["t"], np.lib.stride_tricks.as_strided(base[2:], (3, 4), (4, 20)))
    assert out["s"].tolist() == [23.0] and out["e"].shape == (0, 3)
    np.testing.assert_array_equal(out["b"], [[4, 5, 6], [4, 5, 6]])
    assert out["d"].dtype == np.float64 and out["d"].tolist() == [1.5, 2, 3]


def test_big_endian_archive():
    data = open(path("uni.pt"), "rb").read()
    want = torchfile.load(data)
    zf_names = __import__("zipfile").ZipFile(__import__("io").BytesIO(data)).namelist()
    repl = {}
    for n in zf_names:
        if "/data/" in n:
            raw = member(data, n)[1]
            repl[n] = np.frombuffer(raw, "<f4").astype(">f4").tobytes()
        elif n.endswith("byteorder"):
            repl[n] = b"big"
    got = torchfile.load(rezip(data, repl))
    for k in want:
        assert got[k].dtype == np.float32 and got[k].dtype.isnative
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("case, message", [
    ((24, 0, (5, 5), (5, 1)), "reads element 24"),
    ((24, 20, (2, 3), (3, 1)), "reads element 25"),
    ((24, -1, (2,), (1,)), "negative"),
    ((24, 0, (2, -3), (3, 1)), "negative"),
    ((24, 0, (2, 3), (3,)), "2 sizes but 1 strides"),
    ((48, 0, (4,), (1,)), "truncated"),
])
def test_bad_tensor_geometry(case, message):
    numel, offset, size, stride = case
    data = torch_zip(program(dict_ops([("w", tensor_ops("0", numel, offset, size, stride))])),
                     {"0": np.zeros(24, np.float32).tobytes()})
    with pytest.raises(FormatError, match=message):
        torchfile.load(data, "bad.pt")


def test_huge_broadcast_refused():
    data = torch_zip(program(dict_ops([("w", tensor_ops("0", 1, 0, (1 << 20, 1 << 20), (0, 0)))])),
                     {"0": b"\0\0\0\0"})
    with pytest.raises(FormatError, match="implausibly large"):
        torchfile.load(data)


@pytest.mark.parametrize("replace, message", [
    ({"archive/data/0": None}, "no record"),
    ({"archive/byteorder": b"middle"}, "byteorder"),
    ({"archive/data.pkl": b"\x80\x02}q\x00(X\x01\x00\x00\x00a"}, "corrupt pickle"),
    ({"archive/data.pkl": b"garbage"}, "corrupt pickle"),
])
def test_broken_archives(replace, message):
    good = torch_zip(program(dict_ops([("w", tensor_ops("0", 2, 0, (2,), (1,)))])), {"0": b"\0" * 8})
    assert torchfile.load(good)["w"].tolist() == [0, 0]
    with pytest.raises(FormatError, match=message):
        torchfile.load(rezip(good, replace), "x.pt")


def test_malformed_persistent_ids():
    for pid in (frag("storage"), b"(" + frag("module") + b"tQ", b"(" + frag("storage") + frag(1) + b"tQ",
                b"(" + frag("storage") + frag("FloatStorage") + frag("0") + frag("cpu") + frag(2) + b"tQ"):
        data = torch_zip(program(dict_ops([("w", call(glob("torch._utils", "_rebuild_tensor_v2"), pid,
                                                      frag(0), frag((2,)), frag((1,))))])), {"0": b"\0" * 8})
        with pytest.raises(FormatError):
            torchfile.load(data)


def test_legacy_hand_made_and_truncations():
    body = dict_ops([("w", tensor_ops("k", 3, 0, (3,), (1,), legacy=True))])
    raw = np.array([1, 2, 3], np.float32).tobytes()
    good = legacy_file(program(body), [("k", 3, raw)])
    assert torchfile.load(good)["w"].tolist() == [1, 2, 3]
    errors = 0
    for cut in range(len(good)):
        with pytest.raises(FormatError):
            torchfile.load(good[:cut], "cut.pt")
        errors += 1
    assert errors == len(good)
    with pytest.raises(FormatError, match="holds 2 elements"):
        torchfile.load(legacy_file(program(body), [("k", 2, raw[:8])]))
    with pytest.raises(FormatError, match="never referenced"):
        torchfile.load(legacy_file(program(body), [("zz", 3, raw)]))
    with pytest.raises(FormatError, match="no data"):
        torchfile.load(legacy_file(program(body), []))


def test_legacy_real_file_truncated_everywhere():
    data = open(path("uni_legacy.pt"), "rb").read()
    for cut in range(0, len(data), 7):
        with pytest.raises(FormatError):
            torchfile.load(data[:cut])


def test_storage_views_in_old_legacy_files():
    # Pre-1.0 files could point a tensor at a slice of a larger storage.
    view_pid = (b"(" + frag("storage") + glob("torch", "FloatStorage") + frag("root") + frag("cpu") + frag(6)
                + frag(("v", 2, 3)) + b"tQ")
    body = dict_ops([("w", call(glob("torch._utils", "_rebuild_tensor_v2"), view_pid, frag(1), frag((2,)),
                                frag((1,)), frag(False), call(glob("collections", "OrderedDict"))))])
    data = legacy_file(program(body), [("root", 6, np.arange(6, dtype=np.float32).tobytes())])
    assert torchfile.load(data)["w"].tolist() == [3.0, 4.0]


def test_not_a_torch_file():
    with pytest.raises(FormatError, match="not a torch.save file"):
        torchfile.load(b"hello world")
    with pytest.raises(FormatError, match="single 'data.pkl'"):
        torchfile.load(rezip(torch_zip(b"x", {}), {"archive/data.pkl": None}))


def test_no_torch_import():
    code = ("import sys; from lstm_infer import torchfile; import glob; "
            f"[torchfile.load(f) for f in glob.glob({DATA!r} + '/*.pt')]; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_dtypes_without_typed_storage_and_0d(tmp_path):
    """uint16/32/64 are saved as UntypedStorage + _rebuild_tensor_v3; 0-d tensors stay arrays;
    float8 is refused clearly."""
    torch = pytest.importorskip("torch")
    f = tmp_path / "u.pt"
    values = {str(dt): torch.arange(5).to(dt)[1::2] for dt in (torch.uint16, torch.uint32, torch.uint64)}
    values["param"] = torch.nn.Parameter(torch.ones(2))
    values.update(bf16_0d=torch.tensor(1.5, dtype=torch.bfloat16), bool_0d=torch.tensor(True),
                  f16_0d=torch.tensor(2.5, dtype=torch.float16))
    values["size"] = torch.Size([2, 3])
    torch.save(values, f)
    got = torchfile.load(f)
    for k, v in values.items():
        if isinstance(v, torch.Tensor):
            want = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
            assert isinstance(got[k], np.ndarray) and got[k].dtype == want.dtype and got[k].shape == want.shape
            np.testing.assert_array_equal(got[k], want)
    assert got["size"] == (2, 3)
    torch.save({"w": torch.ones(3).to(torch.float8_e4m3fn)}, f)
    with pytest.raises(FormatError, match="tensor dtype torch.float8_e4m3fn is not supported"):
        torchfile.load(f)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_protocols(protocol, zip_format, tmp_path):
    torch = pytest.importorskip("torch")
    sd = torch.nn.LSTM(2, 3, bidirectional=True).state_dict()
    f = tmp_path / "p.pt"
    torch.save(sd, f, _use_new_zipfile_serialization=zip_format, pickle_protocol=protocol)
    got = torchfile.load(f)
    assert list(got) == list(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v.numpy())
