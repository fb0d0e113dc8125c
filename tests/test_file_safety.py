"""Where files are read and written: only regular files are read, outputs are
replaced the way editors do it, and one load of a file has one memory budget.

Anything that could hang (a FIFO), read without end (/dev/zero) or exhaust memory
runs in a subprocess with a timeout and an address-space limit, so a failure shows
as a failed test instead of stopping pytest.
"""

import errno
import json
import os
import pathlib
import re
import resource
import stat
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from file_helpers import (deflate_bomb_npz, deflate_bomb_torch, dict_ops, files, legacy_file, path, program,
                          tensor_ops)
from lstm_infer import detect, fileio, modelfile, readers, torchfile
from lstm_infer.errors import FormatError, NotRegularFileError, TooLargeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AS_LIMIT = 3 << 29  # 1.5 GiB of address space


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _python(code, timeout=60, limit=True):
    """Run ``code`` in a fresh interpreter (address space limited): (rc, stdout, stderr)."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         cwd=ROOT, preexec_fn=_limit_memory if limit else None)
    return res.returncode, res.stdout, res.stderr


def _cli(*argv, timeout=60):
    """The CLI in a fresh interpreter under the address-space limit: (rc, stdout, stderr)."""
    code = f"import sys; from lstm_infer.cli import main; sys.exit(main({list(argv)!r}))"
    return _python(code, timeout)


def _one_line_error(rc, err, *needles):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lstm-infer: error: "), (rc, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _weights(name="proj.pt"):
    sd = readers.read_tensors(path(name))
    cfg = dict(detect.infer_config(sd)[1], batch_first=False, dropout=0.0)
    return cfg, detect.lstm_state_dict(sd)


def _tmp_leftovers(directory):
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


# ------------------------------------------------------- reading: only regular files

# Every reader of a path, as "module.function" run in a subprocess.
READERS = ["readers.read_tensors", "readers.read_object", "torchfile.load", "modelfile.read_model",
           "li.load"]


@pytest.fixture
def specials(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    link = tmp_path / "zero-link"
    link.symlink_to("/dev/zero")
    return {"fifo": str(fifo), "directory": str(folder), "/dev/zero": "/dev/zero", "link to /dev/zero": str(link)}


def test_every_reader_refuses_non_regular_files(specials):
    """Before: a FIFO blocked forever waiting for a writer, /dev/zero was read until memory ran out."""
    code = textwrap.dedent(f"""
        import json
        import lstm_infer as li
        from lstm_infer import modelfile, readers, torchfile
        out = []
        for label, p in {specials!r}.items():
            for reader in {READERS!r}:
                try:
                    eval(reader)(p)
                    out.append([label, reader, "no error", ""])
                except BaseException as exc:
                    out.append([label, reader, type(exc).__name__, str(exc)])
        print(json.dumps(out))
    """)
    rc, out, err = _python(code, timeout=30)
    assert rc == 0, err
    for label, reader, kind, msg in json.loads(out):
        want = "IsADirectoryError" if label == "directory" else "NotRegularFileError"
        assert kind == want, (label, reader, kind, msg)
        assert specials[label] in msg and ("directory" in msg if label == "directory" else
                                           "not a regular file" in msg), (label, reader, msg)


@pytest.mark.parametrize("label", ["fifo", "directory", "/dev/zero"])
@pytest.mark.parametrize("command", ["inspect", "convert", "verify"])
def test_cli_refuses_non_regular_inputs(specials, label, command, tmp_path):
    argv = [command, specials[label]] + (["-o", str(tmp_path / "out.lstm")] if command == "convert" else [])
    rc, _, err = _cli(*argv, timeout=30)
    _one_line_error(rc, err, specials[label])
    assert not (tmp_path / "out.lstm").exists()


def test_regular_files_read_whole_and_only_once(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(open(path("uni.pt"), "rb").read())
    assert fileio.read_file(f) == f.read_bytes()
    seen = []
    assert fileio.read_file(f, check=lambda fh, size: seen.append((fh.read(4), size))) == f.read_bytes()
    assert seen == [(b"PK\x03\x04", f.stat().st_size)]


# ------------------------------------------------------------ writing: like editors

def _write(target):
    cfg, sd = _weights()
    modelfile.write_model(target, sd, cfg)
    return cfg, sd


def test_output_fifo_refused_and_kept(tmp_path):
    """Before: the FIFO was replaced by a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError, match="is a FIFO, not a regular file; refusing to overwrite") as info:
        _write(fifo)
    assert info.value.filename == str(fifo) and info.value.errno == errno.EINVAL
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


def test_output_device_refused_and_kept(tmp_path):
    """Before: as root, ``-o /dev/null`` replaced the device node by a regular file.
    (Tested on a private node made with mknod, never on /dev/null itself.)"""
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root")
    with pytest.raises(NotRegularFileError, match="is a character device"):
        _write(dev)
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["null"]


def test_output_directory_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        _write(tmp_path / "d")
    with pytest.raises(IsADirectoryError):
        _write(str(tmp_path / "new") + "/")
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_symlink_written_through_and_kept(tmp_path):
    """Before: the link itself was replaced by a regular file; its target kept the old bytes."""
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "model.lstm"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "link.lstm"
    link.symlink_to(os.path.relpath(target, tmp_path))
    cfg, sd = _write(link)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, tmp_path)
    _, got_cfg, got = modelfile.read_model(target)
    assert got_cfg == cfg and all(np.array_equal(got[k], sd[k]) for k in sd)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.lstm", "real"] and os.listdir(real_dir) == ["model.lstm"]


def test_dangling_symlink_refused(tmp_path):
    link = tmp_path / "link.lstm"
    link.symlink_to(tmp_path / "missing" / "model.lstm")
    with pytest.raises(FileNotFoundError, match="dangling symbolic link"):
        _write(link)
    assert link.is_symlink() and os.listdir(tmp_path) == ["link.lstm"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_existing_file_keeps_its_mode(tmp_path, mode):
    """Before: a 0600 file came back 0644 (the temp file's umask default)."""
    f = tmp_path / "m.lstm"
    f.write_bytes(b"old")
    f.chmod(mode)
    _write(f)
    assert stat.S_IMODE(f.stat().st_mode) == mode
    assert modelfile.read_model(f)[1]["hidden_size"] == 8


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_new_file_gets_umask_default(tmp_path, umask):
    old = os.umask(umask)
    try:
        _write(tmp_path / "m.lstm")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.lstm").stat().st_mode) == 0o666 & ~umask


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_read_only_existing_file_refused(tmp_path):
    f = tmp_path / "m.lstm"
    f.write_bytes(b"old")
    f.chmod(0o444)
    with pytest.raises(PermissionError):
        _write(f)
    assert f.read_bytes() == b"old"


@pytest.mark.parametrize("length", [250, 254, 255])
def test_long_names(tmp_path, length):
    """Before: names of 250+ bytes failed (the temp name was 20 bytes longer)."""
    name = "m" * (length - 5) + ".lstm"
    _write(tmp_path / name)
    assert os.listdir(tmp_path) == [name]
    multi = "é" * ((length - 5) // 2) + ".lstm"  # two bytes a character: cut on bytes, not characters
    _write(tmp_path / multi)
    assert sorted(os.listdir(tmp_path)) == sorted([name, multi])


def test_too_long_name_names_the_file_and_leaves_nothing(tmp_path):
    name = "m" * 256
    with pytest.raises(OSError) as info:
        _write(tmp_path / name)
    assert info.value.errno == errno.ENAMETOOLONG and info.value.filename == str(tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    f = tmp_path / "m.lstm"
    f.write_bytes(b"previous")
    f.chmod(0o600)

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as info:
        _write(f)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(f)  # the user's name, not the temp's
    assert f.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.lstm"]


def test_paths_as_bytes_and_pathlike(tmp_path):
    """Before: save(b"...") raised TypeError and li.load(b"/path") parsed the path as file contents."""
    import lstm_infer as li
    from file_helpers import engine

    engine()
    cfg, sd = _weights()
    m = li.LSTM.from_state_dict(sd)
    target = tmp_path / "m.lstm"
    m.save(os.fsencode(target))
    for p in (os.fsencode(target), str(target), target, pathlib.PurePath(target)):
        assert li.load(p).config == m.config
        assert modelfile.read_model(p)[1] == m.config
    m.save(tmp_path / "p.lstm")
    assert li.load(str(tmp_path / "p.lstm")).config == m.config
    raw = target.read_bytes()
    assert modelfile.read_model(data=raw)[1] == m.config  # contents: explicitly
    assert modelfile.read_model(memoryview(raw))[1] == m.config  # or as a buffer open() refuses as a name
    assert modelfile.read_model(data=raw, name="x.lstm")[1] == m.config
    with pytest.raises(FileNotFoundError):
        li.load(b"/no/such/file.lstm")
    with pytest.raises(TypeError):
        li.load(3)
    with pytest.raises(TypeError):
        modelfile.read_model(target, data=raw)


def test_cli_output_fifo_and_symlink(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc, _, err = _cli("convert", path("uni.pt"), "-o", str(fifo))
    _one_line_error(rc, err, str(fifo), "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    (tmp_path / "real.lstm").write_bytes(b"")
    (tmp_path / "link.lstm").symlink_to("real.lstm")
    rc, _, err = _cli("convert", path("uni.pt"), "-o", str(tmp_path / "link.lstm"))
    assert rc == 0, err
    assert (tmp_path / "link.lstm").is_symlink()
    assert modelfile.read_model(tmp_path / "real.lstm")[1]["hidden_size"] == 7


# ---------------------------------------------------------- one budget per load

@pytest.fixture(scope="module")
def expand_bomb(tmp_path_factory):
    """A real torch.save file: 60 stride-0 views of one 1-element storage, each 64 MiB
    when materialised (each within the per-tensor cap; 3.75 GiB in all)."""
    torch = pytest.importorskip("torch")
    f = tmp_path_factory.mktemp("bomb") / "expand.pt"
    one = torch.zeros(1)
    torch.save({f"w{i}": one.expand(4096, 4096) for i in range(60)}, f)
    assert f.stat().st_size < 20000
    return f


def test_broadcast_views_share_one_budget(expand_bomb):
    """Before: 3.75 GiB were materialised from a 5 KB file (the 64 MiB cap was per tensor)."""
    with pytest.raises(TooLargeError, match="past its budget of 268,435,456 bytes") as info:
        readers.read_tensors(expand_bomb)
    assert str(info.value).startswith(f"{expand_bomb}: tensor of size (4096, 4096)")
    assert isinstance(info.value, FormatError) and isinstance(info.value, MemoryError)
    with pytest.raises(TooLargeError):
        torchfile.load(expand_bomb)


@pytest.mark.parametrize("make", [deflate_bomb_torch, deflate_bomb_npz], ids=["torch-zip", "npz"])
def test_deflate_members_share_one_budget(make):
    """Before: 270 KB inflated to 260 MiB of members and as much again of arrays
    (each member was within its own ~1032:1 allowance). Members and arrays count
    against one budget: the second member (torch) or the first array (npz) is refused."""
    data = make()
    assert len(data) < 300_000
    with pytest.raises(TooLargeError, match=r"needs 136,31[0-9,]+ bytes, which would bring this load to "
                                            r"27[0-9,]+ bytes, past its budget") as info:
        readers.read_tensors(data, "bomb")
    assert str(info.value).startswith("bomb: record 'archive/data/1' (inflated)" if make is deflate_bomb_torch
                                      else "bomb: array 'a0.npy'")
    small = make(2, 1 << 20)  # the same construction at a legitimate size loads
    assert all(v.shape == (1 << 18,) for v in readers.read_tensors(small).values())


def test_budget_argument():
    data = deflate_bomb_torch(2, 1 << 20)
    with pytest.raises(TooLargeError, match="budget of 1,000,000 bytes"):
        readers.read_tensors(data, "b.pt", budget=1_000_000)
    assert len(readers.read_tensors(data, budget=5 << 20)) == 2
    assert len(readers.read_object(data, budget=5 << 20)) == 2
    assert len(torchfile.load(data, budget=5 << 20)) == 2
    assert fileio.load_budget(1000) == 256 << 20 and fileio.load_budget(1 << 30) == 4 << 30


@pytest.mark.parametrize("name", files())
def test_real_files_need_less_than_the_budget_factor(name):
    """What the budget's factor rests on: a real file loads within FACTOR x its size (no floor)."""
    size = os.path.getsize(path(name))
    readers.read_object(path(name), budget=fileio.BUDGET_FACTOR * size)


def test_bfloat16_file_within_budget_factor(tmp_path):
    torch = pytest.importorskip("torch")
    f = tmp_path / "bf16.pt"
    torch.save({"w": torch.randn(512, 512).to(torch.bfloat16)}, f)
    size = f.stat().st_size
    assert readers.read_tensors(f, budget=3 * size)["w"].dtype == np.float32


# ------------------------------------------------- under a 1.5 GiB address space

def _sparse(f, head, nbytes, tail=b""):
    """``head``, a hole of ``nbytes`` zero bytes (no disk used), then ``tail``."""
    with open(f, "wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + nbytes)
        fh.seek(len(head) + nbytes)
        fh.write(tail)
    assert os.path.getsize(f) == len(head) + nbytes + len(tail)
    return f


def _safetensors_head(entries, metadata=None):
    header = dict(entries)
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    blob += b" " * (-(8 + len(blob)) % 8)
    return struct.pack("<Q", len(blob)) + blob


@pytest.fixture(scope="module")
def big_files(tmp_path_factory, expand_bomb):
    """Files whose loading needs more than the address-space limit allows."""
    d = tmp_path_factory.mktemp("big")
    out = {"expand bomb": str(expand_bomb)}
    (d / "deflate.pt").write_bytes(deflate_bomb_torch())
    out["deflate torch"] = str(d / "deflate.pt")
    (d / "deflate.npz").write_bytes(deflate_bomb_npz())
    out["deflate npz"] = str(d / "deflate.npz")
    n = 800 << 20  # read (800 MiB) + copied (800 MiB) + the interpreter > 1.5 GiB
    out["safetensors 800 MiB"] = str(_sparse(d / "big.safetensors", _safetensors_head(
        {"w": {"dtype": "F32", "shape": [n // 4], "data_offsets": [0, n]}}), n))
    h = 7000  # weight_hh of LSTM(1, 7000, bias=False): 4H x H float32 = 784 MB
    cfg = {"input_size": 1, "hidden_size": h, "num_layers": 1, "bias": False, "batch_first": False,
           "dropout": 0.0, "bidirectional": False, "proj_size": 0}
    ih, hh = 4 * h * 4, 4 * h * h * 4
    meta = {"format": "lstm_infer", "format_version": "1", "kind": "LSTM", "config": json.dumps(cfg, sort_keys=True)}
    out["model file 784 MB"] = str(_sparse(d / "big.lstm", _safetensors_head({
        "weight_ih_l0": {"dtype": "F32", "shape": [4 * h, 1], "data_offsets": [0, ih]},
        "weight_hh_l0": {"dtype": "F32", "shape": [4 * h, h], "data_offsets": [ih, ih + hh]}}, meta), ih + hh))
    # a legacy torch.save file of 1.6 GiB: more than the whole address space to read
    numel = (1600 << 20) // 4
    head = legacy_file(program(dict_ops([("w", tensor_ops("k", numel, 0, (numel,), (1,), legacy=True))])),
                       [("k", numel, b"")])  # everything but the storage's bytes
    out["legacy 1.6 GiB"] = str(_sparse(d / "big_legacy.pt", head, numel * 4))
    return out


def test_every_reader_fails_cleanly_under_memory_limit(big_files):
    """Each reader ends in a FormatError that is also a MemoryError (TooLargeError),
    naming the file: refused by its budget, or out of memory with a message. Before:
    MemoryError tracebacks, or 3.75 GiB requested from a 17 KB file."""
    readers_ = ["readers.read_tensors", "torchfile.load", "modelfile.read_model"]
    code = textwrap.dedent(f"""
        import json
        from lstm_infer import modelfile, readers, torchfile
        out = []
        for label, p in {big_files!r}.items():
            for reader in {readers_!r}:
                try:
                    eval(reader)(p)
                    out.append([label, reader, "no error", False, False, ""])
                except BaseException as exc:
                    out.append([label, reader, type(exc).__name__, isinstance(exc, ValueError),
                                isinstance(exc, MemoryError), str(exc)])
        print(json.dumps(out))
    """)
    rc, out, err = _python(code, timeout=120)
    assert rc == 0, err
    results = json.loads(out)
    assert len(results) == len(big_files) * len(readers_)
    budget, oom = "past its budget", "not enough memory|out of memory"
    not_ours = "not an lstm_infer model file"
    expected = {  # (label, reader) -> (exception, message); every other pair: budget or out of memory
        ("deflate npz", "torchfile.load"): ("FormatError", "not a torch.save file"),
        ("safetensors 800 MiB", "torchfile.load"): ("FormatError", "not a torch.save file"),
        ("model file 784 MB", "torchfile.load"): ("FormatError", "not a torch.save file"),
        ("expand bomb", "modelfile.read_model"): ("FormatError", "a torch.save file, " + not_ours),
        ("deflate torch", "modelfile.read_model"): ("FormatError", "a torch.save file, " + not_ours),
        ("deflate npz", "modelfile.read_model"): ("FormatError", "an .npz archive, " + not_ours),
        ("safetensors 800 MiB", "modelfile.read_model"): ("FormatError", not_ours),
        ("model file 784 MB", "modelfile.read_model"): ("TooLargeError", oom),
        ("legacy 1.6 GiB", "modelfile.read_model"): ("TooLargeError", oom),
        ("legacy 1.6 GiB", "torchfile.load"): ("TooLargeError", oom),
        ("safetensors 800 MiB", "readers.read_tensors"): ("TooLargeError", oom),
        ("model file 784 MB", "readers.read_tensors"): ("TooLargeError", oom),
        ("legacy 1.6 GiB", "readers.read_tensors"): ("TooLargeError", oom),
    }
    for label, reader, kind, is_value_error, is_memory_error, msg in results:
        want_kind, want_msg = expected.get((label, reader), ("TooLargeError", budget))
        assert kind == want_kind and re.search(want_msg, msg), (label, reader, kind, msg)
        assert msg.startswith(big_files[label] + ": "), (label, reader, msg)
        assert is_value_error and is_memory_error == (kind == "TooLargeError"), (label, reader, kind)


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_cli_fails_cleanly_under_memory_limit(big_files, command, tmp_path):
    """One line and exit code 2 (before: MemoryError tracebacks). convert reads as
    inspect does: three files cover its two paths (model file, weight file)."""
    labels = big_files if command == "inspect" else ["expand bomb", "model file 784 MB", "safetensors 800 MiB"]
    for label in labels:
        p = big_files[label]
        argv = [command, p] + (["-o", str(tmp_path / "out.lstm")] if command == "convert" else [])
        rc, _, err = _cli(*argv, timeout=120)
        _one_line_error(rc, err, p)
        assert "budget" in err or "memory" in err, (label, err)
    assert os.listdir(tmp_path) == []
