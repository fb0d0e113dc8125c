"""Limits of the file readers against hostile and unusual files: zip records
compressed other than torch writes them or yielding more than they declare, pickles
and safetensors headers that build far more than their size, duplicate zip
records and zip directories of very many entries, hostile values that used to
escape as bare TypeError/ValueError, and torch.save archives whose root folder is
named 'code'.

Cases that could exhaust memory run in a subprocess under an address-space limit
(as in test_file_safety), so a regression fails as a test rather than eating the
machine.
"""

import io
import json
import pickle
import resource
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
import zlib

import numpy as np
import pytest

from file_helpers import dict_ops, frag, legacy_file, program, tensor_ops, torch_zip, zip_raw
from lstm_infer import fileio, readers, torchfile
from lstm_infer.errors import FormatError, TooLargeError

AS_LIMIT = 3 << 29  # 1.5 GiB of address space


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


# Run in the subprocess: the error a reader call ends in, as [type, message, seconds].
_OUTCOME = """
    import json, time
    def outcome(fn, *args, **kwargs):
        t = time.time()
        try:
            fn(*args, **kwargs)
            return ["no error", "", time.time() - t]
        except BaseException as exc:
            return [type(exc).__name__, str(exc), time.time() - t]
"""


def _isolated(code, cwd, timeout=60):
    """Run ``code`` in a fresh interpreter under the address-space limit (``outcome``
    defined); its last stdout line parsed as JSON."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(_OUTCOME) + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=timeout, cwd=cwd, preexec_fn=_limit_memory)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _state_dict_pickle(numel=2):
    return program(dict_ops([("w", tensor_ops("0", numel, 0, (numel,), (1,)))]))


def _deflated_zeros(total, block=1 << 24):
    """A raw DEFLATE stream of ``total`` zero bytes (a multiple of ``block``), made in
    well under a second: after a full flush every block compresses to the same bytes."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = co.compress(b"\0" * block) + co.flush(zlib.Z_FULL_FLUSH)
    return one * (total // block) + co.flush()


def _torch_zip_with(record, method, size, crc=None, pkl=None):
    """A torch zip whose data/0 record is ``record`` stored with zip ``method``, declaring ``size``."""
    pkl = pkl or _state_dict_pickle()
    crc = zlib.crc32(b"\0" * size) if crc is None else crc
    return zip_raw([("archive/data.pkl", pkl, 0, zlib.crc32(pkl), len(pkl)),
                    ("archive/data/0", record, method, crc, size)])


# ------------------------------------------------- zip records: method and size

@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_records_refused(method):
    """Before: zipfile inflated them without any limit (a 2.6 KB bzip2 record lying
    about its size took 6 GB) and the file loaded. torch reads stored and DEFLATE only."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("archive/data.pkl", _state_dict_pickle())
        zf.writestr("archive/data/0", np.zeros(2, np.float32).tobytes())
    name = "bzip2" if method == zipfile.ZIP_BZIP2 else "LZMA"
    with pytest.raises(FormatError, match=rf"^m\.pt: record 'archive/data.pkl' is compressed with {name} "
                                          rf"\(zip method {method}\); only stored and DEFLATE"):
        torchfile.load(buf.getvalue(), "m.pt")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("a.npy", b"\x93NUMPY")
    with pytest.raises(FormatError, match=rf"^m\.npz: record 'a.npy' is compressed with {name}"):
        readers.read_object(buf.getvalue(), "m.npz")


def test_record_yielding_more_than_it_declares_refused():
    """Before: zipfile inflated the whole record (up to 2 GiB at once) and cut it
    silently at the declared 8 bytes; the file loaded."""
    data = _torch_zip_with(_deflated_zeros(1 << 24), zipfile.ZIP_DEFLATED, 8)
    with pytest.raises(FormatError, match=r"^m\.pt: record 'archive/data/0' holds more than the 8 bytes it declares"):
        torchfile.load(data, "m.pt")
    stored = _torch_zip_with(b"\0" * 64, zipfile.ZIP_STORED, 8)  # a stored record's sizes disagreeing
    with pytest.raises(FormatError, match="holds more than the 8 bytes it declares"):
        torchfile.load(stored, "m.pt")
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (2,)})
    npz = zip_raw([("a.npy", _deflated_zeros(1 << 24), 8, 0, len(head.getvalue()) + 8)])
    with pytest.raises(FormatError, match=r"^m\.npz: record 'a.npy' holds more than the \d+ bytes it declares"):
        readers.read_object(npz, "m.npz")


def test_record_lying_by_gigabytes_refused_at_once(tmp_path):
    """4 GiB of zeros in a 4 MB record declaring 8 bytes: refused within its first
    chunk, under a 1.5 GiB address-space limit (before: out of memory)."""
    f = tmp_path / "lie.pt"
    f.write_bytes(_torch_zip_with(_deflated_zeros(4 << 30), zipfile.ZIP_DEFLATED, 8))
    kind, msg, seconds = _isolated(f"""
        from lstm_infer import readers
        print(json.dumps(outcome(readers.read_tensors, {str(f)!r})))
    """, tmp_path)
    assert kind == "FormatError" and msg == f"{f}: record 'archive/data/0' holds more than the 8 bytes it " \
                                            f"declares; refusing it as corrupt or hostile", (kind, msg)
    assert seconds < 5


def test_honest_compressed_records_still_load_and_bad_ones_are_named():
    arr = np.arange(1000, dtype=np.float32)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:  # torch never compresses; others may
        zf.writestr("archive/data.pkl", _state_dict_pickle(1000))
        zf.writestr("archive/data/0", arr.tobytes())
    np.testing.assert_array_equal(torchfile.load(buf.getvalue())["w"], arr)
    buf = io.BytesIO()
    np.savez_compressed(buf, a=arr, b=arr.reshape(10, 100).T)
    got = readers.read_object(buf.getvalue())
    np.testing.assert_array_equal(got["b"], arr.reshape(10, 100).T)
    # a record holding less than it declares, or failing its CRC
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw = comp.compress(arr.tobytes()) + comp.flush()
    with pytest.raises(FormatError, match=r"^m\.pt: record 'archive/data/0' is truncated: 4,000 of the 4,001"):
        torchfile.load(_torch_zip_with(raw, zipfile.ZIP_DEFLATED, 4001, crc=0), "m.pt")
    with pytest.raises(FormatError, match=r"^m\.pt: record 'archive/data/0' fails its CRC-32 check"):
        torchfile.load(_torch_zip_with(raw, zipfile.ZIP_DEFLATED, 4000, crc=1, pkl=_state_dict_pickle(1000)), "m.pt")


# --------------------------------------------------------- pickles in the budget

def _dict_bomb_zip(n):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + b"}" * n + b".")
    return buf.getvalue()


def test_pickle_objects_are_charged_to_the_budget():
    """One-byte EMPTY_DICT opcodes build ~70 bytes each: before, only the pickle's
    own bytes were charged, and the pickle was unpickled whatever it built."""
    data = _dict_bomb_zip(1_000_000)  # 1 KB deflated
    with pytest.raises(TooLargeError, match=r"^b\.pt: unpickling record 'archive/data.pkl' needs [\d,]+ bytes, "
                                            r"which would bring this load to [\d,]+ bytes, past its budget of "
                                            r"33,554,432 bytes"):
        torchfile.load(data, "b.pt", budget=32 << 20)
    legacy = b"".join(pickle.dumps(x, protocol=2) for x in (torchfile.LEGACY_MAGIC, torchfile.LEGACY_PROTOCOL, {}))
    legacy += b"\x80\x02" + b"]" * 1_000_000 + b"." + pickle.dumps([], protocol=2)
    with pytest.raises(TooLargeError, match=r"^b\.pt: unpickling the file's pickles needs"):
        torchfile.load(legacy, "b.pt", budget=32 << 20)
    with pytest.raises(TooLargeError, match=r"^b\.pt: unpickling record"):  # readers share the budget
        readers.read_tensors(data, "b.pt", budget=32 << 20)


def test_pickle_bomb_refused_in_bounded_time_and_memory(tmp_path):
    """The audit's 30 KB file of 30 million EMPTY_DICT opcodes, with the default budget
    under a 1.5 GiB address-space limit (before: out of memory after minutes)."""
    f = tmp_path / "bomb.pt"
    f.write_bytes(_dict_bomb_zip(30_000_000))
    kind, msg, seconds = _isolated(f"""
        from lstm_infer import torchfile
        print(json.dumps(outcome(torchfile.load, {str(f)!r})))
    """, tmp_path)
    assert kind == "TooLargeError" and msg.startswith(f"{f}: unpickling record 'archive/data.pkl' needs"), (kind, msg)
    assert "past its budget of 268,435,456 bytes" in msg
    assert seconds < 30  # ~3 s: the prescan stops at the budget (~4 million opcodes)


def test_real_state_dict_of_many_tensors_within_the_budget_factor(tmp_path):
    """torch.save files of 2000 small tensors, both formats: pickle is most of such
    a file, and it still loads within 4x its size (no floor)."""
    torch = pytest.importorskip("torch")
    sd = {f"layers.{i}.weight": torch.randn(3, 2) for i in range(2000)}
    for legacy in (False, True):
        f = tmp_path / f"many{legacy}.pt"
        torch.save(sd, f, _use_new_zipfile_serialization=not legacy)
        size = f.stat().st_size
        got = readers.read_tensors(f, budget=fileio.BUDGET_FACTOR * size)
        assert len(got) == 2000
        np.testing.assert_array_equal(got["layers.1999.weight"], sd["layers.1999.weight"].numpy())


# --------------------------------------------------------- TorchScript detection

@pytest.mark.parametrize("name", ["code.pt", "code.pth", "code"])
def test_torch_save_to_a_file_named_code_loads(tmp_path, name):
    """torch names the archive's root folder after the file: code.pt holds code/data.pkl,
    which was taken for TorchScript's code/ folder."""
    torch = pytest.importorskip("torch")
    sd = torch.nn.LSTM(3, 4).state_dict()
    f = tmp_path / name
    torch.save(sd, f)
    assert zipfile.ZipFile(f).namelist()[0] == "code/data.pkl"
    assert readers.sniff(f.read_bytes()) == "torch-zip"
    got = readers.read_tensors(f)
    assert sorted(got) == sorted(sd)
    np.testing.assert_array_equal(got["weight_ih_l0"], sd["weight_ih_l0"].numpy())


def test_torchscript_named_code_still_refused(tmp_path):
    torch = pytest.importorskip("torch")
    f = tmp_path / "code.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(torch.nn.LSTM(3, 4)), f)
    assert "code/code/" in " ".join(zipfile.ZipFile(f).namelist())
    assert readers.sniff(f.read_bytes()) == "torchscript"
    for reader in (readers.read_tensors, torchfile.load):
        with pytest.raises(FormatError, match=f"^{f}: a TorchScript archive"):
            reader(f)


# ------------------------------------------------------------ duplicate records

def _empty_entries_zip(n, trail=0):
    """A zip of one local record and a central directory of ``n`` empty entries
    (~51 bytes each): what a crafted directory costs zipfile per byte at most.
    ``trail`` bytes after the end record (zipfile looks for it up to 64 KiB + 22
    bytes from the end)."""
    cd = bytearray()
    for i in range(n):
        name = b"%x" % i
        cd += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0,
                          0) + name
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"x"
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), len(cd), len(local), 0)
    return local + bytes(cd) + end + b"\0" * trail


@pytest.mark.parametrize("trail", [0, 1 << 16])
def test_zip_directory_of_a_million_entries_refused_at_once(tmp_path, trail):
    """The audit's 48 MB directory of a million empty entries: zipfile's objects for it
    took 22 s and 690 MB (14x the file); its cost is now charged before it is parsed,
    by every reader and by the CLI, wherever zipfile would find the end record."""
    f = tmp_path / "many.pt"
    f.write_bytes(_empty_entries_zip(1_000_000, trail))
    results = _isolated(f"""
        import lstm_infer as li
        from lstm_infer import readers, torchfile
        print(json.dumps([outcome(fn, {str(f)!r}) for fn in
                          (torchfile.load, readers.read_tensors, li.read_state_dict)]))
    """, tmp_path)
    for kind, msg, seconds in results:
        assert kind == "TooLargeError", (kind, msg)
        assert msg.startswith(f"{f}: the zip directory of 1,000,000 entries needs "), msg
        assert seconds < 2
    model = tmp_path / "m.lstm"
    from lstm_infer import LSTM
    LSTM(3, 2).save(str(model))
    npz = tmp_path / "many.npz"
    f.rename(npz)  # the dataset runner and verify's --inputs read .npz files themselves
    for argv in (["inspect", str(npz)], ["run", str(model), str(npz), "-o", str(tmp_path / "out.npz")],
                 ["verify", str(model), "--inputs", str(npz), "--outputs", str(npz)]):
        res = subprocess.run([sys.executable, "-m", "lstm_infer"] + argv, capture_output=True, text=True,
                             timeout=60, preexec_fn=_limit_memory)
        assert res.returncode != 0 and "the zip directory of 1,000,000 entries" in res.stderr, (argv, res.stderr)
        assert "Traceback" not in res.stderr


def test_zip_directory_count_is_what_zipfile_parses():
    """The entries counted before parsing are zipfile's own: torch.save archives, a
    zip64 end record (more than 65,535 entries), a comment, data in front; a signature
    inside a name only counts one more."""
    def both(data):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return len(zf.namelist()), torchfile.zip_directory(data)[0]
    b = io.BytesIO()
    np.savez(b, **{f"a{i}": np.zeros(1, np.float32) for i in range(70_000)})
    assert b.getvalue()[-98:-94] == b"PK\x06\x06"  # the zip64 end record, before its locator
    assert both(b.getvalue()) == (70_000, 70_000)
    got = readers.read_tensors(b.getvalue())  # and such an archive still loads
    assert len(got) == 70_000
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as zf:
        zf.writestr("a", b"x")
        zf.writestr("PK\x01\x02b", b"PK\x01\x02" * 50)
        zf.comment = b"c" * 1000
    assert both(b.getvalue()) == (2, 3)
    assert both(b"junk" * 100 + b.getvalue()) == (2, 3)
    assert torchfile.zip_directory(b"PK\x03\x04 not a zip") == (0, 0)
    # from an open file too (the dataset runner's way), read in chunks
    for data in (b.getvalue(), _empty_entries_zip(300_000, 1 << 16), _empty_entries_zip(5)):
        assert torchfile.zip_directory(io.BytesIO(data)) == torchfile.zip_directory(data)


def test_duplicate_zip_records_refused():
    """Before: torch.load read the first 'archive/data/0', we read the last."""
    data = torch_zip(_state_dict_pickle(), {"0": np.arange(2, dtype=np.float32).tobytes()})
    buf = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate name
        with zipfile.ZipFile(buf, "a") as zf:
            zf.writestr("archive/data/0", np.full(2, 9, np.float32).tobytes())
    with pytest.raises(FormatError, match=r"^d\.pt: zip archive holds more than one record named "
                                          r"'archive/data/0'; refusing it"):
        torchfile.load(buf.getvalue(), "d.pt")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as zf:
            for value in (1, 2):
                zf.writestr("a.npy", _npy(np.full(2, value, np.float32)))
    with pytest.raises(FormatError, match=r"^d\.npz: zip archive holds more than one record named 'a.npy'"):
        readers.read_object(buf.getvalue(), "d.npz")


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ---------------------------------------------- hostile values, clean errors

def _legacy_with_key_list(keys_pickle):
    """A legacy file whose storage-key list pickle is ``keys_pickle``."""
    main = program(dict_ops([("w", tensor_ops("k", 3, 0, (3,), (1,), legacy=True))]))
    good = legacy_file(main, [("k", 3, b"\0" * 12)])
    head = good[:good.index(main) + len(main)]
    return head + keys_pickle


@pytest.mark.parametrize("keys", [[[]], [{}], [3]])
def test_storage_keys_that_are_not_strings(keys):
    """Before: [[]] and [{}] escaped as a bare TypeError (unhashable type)."""
    with pytest.raises(FormatError) as info:
        torchfile.load(_legacy_with_key_list(pickle.dumps(keys, protocol=2)), "k.pt")
    assert str(info.value) == f"k.pt: storage key {keys[0]!r} in the storage key list is not a string"


BIG = 10 ** 5000  # str() refuses ints past 4300 digits


@pytest.mark.parametrize("numel, offset, size, stride, message", [
    (24, -BIG, (2,), (1,), "negative tensor size, stride or offset: size=(2,) stride=(1,) offset=<negative int of "
                           "16,610 bits>"),
    (24, 0, (BIG,), (1,), "tensor has shape (<int of 16,610 bits>,) is too large to represent"),
    (24, 0, (2,), (BIG,), "tensor (size=(2,), stride=(<int of 16,610 bits>,), offset=0) reads element <int of "
                          "16,610 bits> of a storage with 24 elements of float32"),
    (BIG, 0, (2,), (1,), "storage '0' is truncated: record has 96 bytes, <int of 16,610 bits> x float32 needs "
                         "<int of 16,612 bits>"),
], ids=["offset", "size", "stride", "numel"])
def test_huge_integers_in_tensor_geometry(numel, offset, size, stride, message):
    """Before: formatting the message itself failed (int -> str digit limit): a bare ValueError."""
    data = torch_zip(program(dict_ops([("w", tensor_ops("0", numel, offset, size, stride))])),
                     {"0": np.zeros(24, np.float32).tobytes()})
    with pytest.raises(FormatError) as info:
        readers.read_tensors(data, "g.pt")
    assert str(info.value) == f"g.pt: {message}"


def test_huge_integer_as_a_state_dict_key():
    body = b"}(" + frag(BIG) + tensor_ops("0", 2, 0, (2,), (1,)) + b"u"
    data = torch_zip(program(body), {"0": np.zeros(2, np.float32).tobytes()})
    with pytest.raises(FormatError) as info:
        readers.read_tensors(data, "k.pt")
    assert str(info.value) == "k.pt: key <int of 16,610 bits> cannot be written as a name"
    body = b"}(" + frag(BIG) + frag(1) + b"u"  # no tensors: the message lists the keys
    with pytest.raises(FormatError, match=r"^k\.pt: no tensors found \(top-level keys: <int of 16,610 bits>\)$"):
        readers.read_tensors(torch_zip(program(body), {}), "k.pt")
    assert list(readers.find_state_dict({0: np.zeros(1), "b": np.ones(1)})) == ["0", "b"]  # ints still named


# ------------------------------------------------------ safetensors JSON headers

def _list_header_file(n):
    """A safetensors file whose header is one entry holding ``n`` empty lists."""
    hdr = b'{"x":[' + b"[]," * (n - 1) + b"[]]}"
    return struct.pack("<Q", len(hdr)) + hdr


def test_safetensors_header_charged_before_parsing():
    """Before: json.loads built ~28x the header (a list of empty lists) before any check."""
    data = _list_header_file(200_000)  # 600 KB: ~17 MB parsed
    with pytest.raises(TooLargeError, match=r"^s\.safetensors: parsing the 600,007-byte header \(400,002 values "
                                            r"at most\) needs [\d,]+ bytes, .* past its budget of 8,388,608 bytes"):
        readers.read_object(data, "s.safetensors", budget=8 << 20)
    with pytest.raises(TooLargeError, match=r"^s\.safetensors: parsing the 9,000,007-byte header"):
        readers.parse_safetensors(_list_header_file(3_000_000), "s.safetensors")  # default: the file's budget


def test_safetensors_header_bomb_refused_by_every_reader(tmp_path):
    """A 90 MB header (within the 100 MiB limit) of empty lists would build ~2.5 GB;
    under a 1.5 GiB address-space limit the readers refuse it at once (li.read_state_dict
    parses it twice: first asking whether it is one of our model files)."""
    f = tmp_path / "s.safetensors"
    f.write_bytes(_list_header_file(30_000_000))
    results = _isolated(f"""
        import lstm_infer as li
        from lstm_infer import readers
        print(json.dumps([outcome(fn, {str(f)!r}) for fn in (readers.read_tensors, li.read_state_dict)]))
    """, tmp_path)
    for kind, msg, seconds in results:
        assert kind == "TooLargeError" and msg.startswith(f"{f}: parsing the 90,000,007-byte header"), (kind, msg)
        assert seconds < 5


def test_real_safetensors_headers_still_load():
    """What the charge costs real files: a header of 2000 tiny tensors (parsing it takes
    ~8x its size) loads under the default budget, 64-element ones within 4x the file."""
    for numel in (6, 64):
        names = [f"layers.{i}.weight" for i in range(2000)]
        header = {n: {"dtype": "F32", "shape": [numel], "data_offsets": [4 * numel * i, 4 * numel * (i + 1)]}
                  for i, n in enumerate(names)}
        header["__metadata__"] = {"format": "pt"}
        hdr = json.dumps(header).encode()
        data = struct.pack("<Q", len(hdr)) + hdr + np.arange(2000 * numel, dtype=np.float32).tobytes()
        budget = None if numel == 6 else fileio.BUDGET_FACTOR * len(data)
        got = readers.read_tensors(data, budget=budget)
        np.testing.assert_array_equal(got["layers.1999.weight"], np.arange(1999 * numel, 2000 * numel))
