"""`lstm-infer run`, `convert` and `verify` on hostile or unlucky input: every failure a
one-line error and a non-zero exit, never a traceback, a hang or a partly written output.
SIGTERM/SIGHUP clean up like Ctrl-C; paths that are not UTF-8 print; a closed stdout pipe
is a quiet end."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

import lstm_infer as li
from lstm_infer import cli, runner
from lstm_infer.cli import main
from test_runner import make, sequences as runner_sequences

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def sequences(n, I=8, lo=1, hi=30, seed=1):
    return runner_sequences(n, I, lo, hi, seed)


@pytest.fixture
def data(tmp_path):
    m = make()
    m.save(tmp_path / "m.lstm")
    seqs = sequences(12)
    (tmp_path / "npy").mkdir()
    for i, s in enumerate(seqs):
        np.save(tmp_path / "npy" / f"s{i:03d}.npy", s)
    np.savez(tmp_path / "r.npz", data=np.concatenate(seqs), lengths=[len(s) for s in seqs])
    with open(tmp_path / "r.jsonl", "w") as f:
        f.writelines(json.dumps(s.tolist()) + "\n" for s in seqs)
    return m, seqs, tmp_path


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.startswith("lstm-infer: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)
    return err


def hidden(d):
    return [p for p in os.listdir(d) if p.startswith(".")]


def npy_with_shape(path, shape, dtype="<f4", data=b""):
    """A .npy whose header declares ``shape``, followed by ``data`` only."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": dtype, "fortran_order": False, "shape": shape})
        fh.write(data)


def npz_with_members(path, members):
    """A zip of raw member bytes, as np.savez lays it out."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)


def npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ------------------------------------------------ 1. SIGTERM / SIGHUP / Ctrl-C

# The CLI in a fresh interpreter, sending itself ``sig`` from inside the step named by
# ``where`` (runner's spill write or a directory output's file, or atomic_writer's fsync):
# a deterministic "signal mid-run" without timing.
DRIVER = """
import os, signal, sys
import numpy as np
from lstm_infer import fileio, runner
from lstm_infer.cli import main
sig, where, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def hit():
    os.kill(os.getpid(), sig)
if where == "add":
    for cls in (runner._RaggedWriter, runner._NpyDirWriter):
        def add(self, key, out, _old=cls.add):
            _old(self, key, out)
            hit()
        cls.add = add
else:
    real = os.fsync
    def fsync(fd):
        real(fd)
        hit()
    os.fsync = fsync
sys.exit(main(argv))
"""


def drive(sig, where, *argv, cwd):
    return subprocess.run([sys.executable, "-c", DRIVER, str(int(sig)), where, *map(str, argv)], env=ENV,
                          capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
@pytest.mark.parametrize("job", ["run-npz", "run-dir", "convert"])
def test_terminating_signals_leave_nothing(data, signame, job):
    m, seqs, tmp = data
    sig = getattr(signal, signame)
    if job == "convert":
        argv = ["convert", tmp / "m.lstm", "-o", tmp / "c.lstm"]
        where = "fsync"
    else:
        argv = ["run", tmp / "m.lstm", tmp / ("r.npz" if job == "run-npz" else "npy"), "-o",
                tmp / ("o.npz" if job == "run-npz" else "odir"), "--batch-tokens", "20"]
        where = "add"
    before = sorted(os.listdir(tmp))
    r = drive(sig, where, *argv, cwd=tmp)
    assert r.returncode == 128 + sig, (r.returncode, r.stderr)
    what = "interrupted" if sig == signal.SIGINT else f"terminated by {signame}"
    assert r.stderr == f"lstm-infer: {what}; nothing written\n"
    assert r.stdout == ""
    assert sorted(os.listdir(tmp)) == before


def test_ignored_sighup_stays_ignored_and_library_installs_no_handlers(data):
    """nohup: an ignored SIGHUP must not stop the run; importing the library changes no handler."""
    m, seqs, tmp = data
    code = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN)\n" + DRIVER)
    r = subprocess.run([sys.executable, "-c", code, str(int(signal.SIGHUP)), "add", "run", str(tmp / "m.lstm"),
                        str(tmp / "r.npz"), "-o", str(tmp / "o.npz")], env=ENV, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("wrote "), r.stderr
    code = ("import signal, lstm_infer, lstm_infer.cli, lstm_infer.runner, lstm_infer.dask\n"
            "assert all(signal.getsignal(s) is signal.SIG_DFL for s in (signal.SIGTERM, signal.SIGHUP))\n"
            "from lstm_infer.cli import main\n"
            "main(['run', '/nonexistent.lstm', 'x.npz', '-o', 'y.npz'])\n"
            "assert all(signal.getsignal(s) is signal.SIG_DFL for s in (signal.SIGTERM, signal.SIGHUP))")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_ctrl_c_in_convert_is_one_line(data, monkeypatch, capsys):
    m, seqs, tmp = data
    before = sorted(os.listdir(tmp))

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    assert main(["convert", str(tmp / "m.lstm"), "-o", str(tmp / "c.lstm")]) == 130
    assert capsys.readouterr().err == "lstm-infer: interrupted; nothing written\n"
    assert sorted(os.listdir(tmp)) == before


# ------------------------------------------------ 2. tracebacks become one-line errors

def test_run_refuses_cells_and_sequentials_without_recurrent_layer(data, capsys):
    m, seqs, tmp = data
    li.LSTMCell(8, 4).save(tmp / "cell.lstm")
    li.Sequential(li.Linear(8, 4), li.ReLU()).save(tmp / "lin.lstm")
    assert main(["run", str(tmp / "cell.lstm"), str(tmp / "r.npz"), "-o", str(tmp / "o.npz")]) == 2
    one_line_error(capsys, f"{tmp / 'cell.lstm'}: holds an LSTMCell", "recurrent layer")
    assert main(["run", str(tmp / "lin.lstm"), str(tmp / "r.npz"), "-o", str(tmp / "o.npz")]) == 2
    one_line_error(capsys, f"{tmp / 'lin.lstm'}: holds a Sequential", "without a recurrent layer")
    assert not (tmp / "o.npz").exists() and not hidden(tmp)


def test_deeply_nested_jsonl_line_is_a_bad_record(data, capsys):
    m, seqs, tmp = data
    bad = tmp / "deep.jsonl"
    good = json.dumps(seqs[0].tolist())
    bad.write_text(good + "\n" + "[" * 100000 + "]" * 100000 + "\n" + good + "\n")
    assert main(["run", str(tmp / "m.lstm"), str(bad), "-o", str(tmp / "o.npz")]) == 2
    one_line_error(capsys, f"{bad}:2: ", "nested too deeply")
    assert main(["run", str(tmp / "m.lstm"), str(bad), "-o", str(tmp / "o.npz"), "--skip-bad"]) == 0
    z = np.load(tmp / "o.npz")
    assert z["names"].tolist() == [f"{bad}:1", f"{bad}:3"]
    assert len(z["skipped"]) == 1 and "nested too deeply" in z["skipped"][0]


def test_absurd_npy_header_is_refused_before_allocating(data, capsys):
    m, seqs, tmp = data
    huge = tmp / "huge.npy"
    npy_with_shape(huge, (10 ** 13, 8))
    assert main(["run", str(tmp / "m.lstm"), str(huge), "-o", str(tmp / "o.npz")]) == 2
    one_line_error(capsys, f"{huge}: ", "declares shape (10000000000000, 8)")
    assert main(["run", str(tmp / "m.lstm"), str(huge), str(tmp / "npy" / "s000.npy"), "-o", str(tmp / "o.npz"),
                 "--skip-bad"]) == 0
    assert np.load(tmp / "o.npz")["lengths"].tolist() == [len(seqs[0])]
    neg = tmp / "neg.npy"
    npy_with_shape(neg, (-5, 8))
    assert main(["run", str(tmp / "m.lstm"), str(neg), "-o", str(tmp / "o2.npz")]) == 2
    one_line_error(capsys, f"{neg}: ", "negative")


@pytest.mark.parametrize("member", ["lengths.npy", "data.npy"])
def test_absurd_header_inside_a_ragged_npz_is_refused(data, capsys, member):
    m, seqs, tmp = data
    p = tmp / "huge.npz"
    if member == "lengths.npy":
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(hdr, {"descr": "<i8", "fortran_order": False, "shape": (10 ** 12,)})
        members = {"data.npy": npy_bytes(np.zeros((3, 8), np.float32)), "lengths.npy": hdr.getvalue()}
    else:
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": True,
                                                   "shape": (10 ** 11, 8)})
        members = {"data.npy": hdr.getvalue(), "lengths.npy": npy_bytes(np.array([10 ** 11]))}
    npz_with_members(p, members)
    assert main(["run", str(tmp / "m.lstm"), str(p), "-o", str(tmp / "o.npz")]) == 2
    one_line_error(capsys, f"{p}: member '{member}': the header declares shape")


def test_huge_batch_tokens_pads_within_the_data(tmp_path, capsys):
    """One long sequence among many short ones: a budget of 10**11 steps must not pad every
    short one to the long one's length (119 GiB here)."""
    m = make(I=16, H=8)
    m.save(tmp_path / "m.lstm")
    rng = np.random.default_rng(0)
    lengths = np.array([100000] + [1] * 20000)
    np.savez(tmp_path / "r.npz", data=rng.standard_normal((int(lengths.sum()), 16)).astype(np.float32),
             lengths=lengths)
    assert main(["run", str(tmp_path / "m.lstm"), str(tmp_path / "r.npz"), "-o", str(tmp_path / "big.npz"),
                 "--batch-tokens", str(10 ** 11)]) == 0
    assert "2 batches" in capsys.readouterr().out  # the long one (with one short), then the short ones
    runner.run(m, [tmp_path / "r.npz"], tmp_path / "ref.npz")
    a, b = np.load(tmp_path / "big.npz"), np.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(a["lengths"], b["lengths"])
    np.testing.assert_allclose(a["data"], b["data"], rtol=1e-5, atol=1e-6)  # other batches, other threads


def test_verify_takes_npy_inputs_and_refuses_absurd_headers(tmp_path, capsys):
    m = make(I=3, H=4)
    m.save(tmp_path / "m.lstm")
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "y.npz", y=m(x)[0])
    np.save(tmp_path / "y.npy", m(x)[0])
    for y in ("y.npz", "y.npy"):
        assert main(["verify", str(tmp_path / "m.lstm"), "--inputs", str(tmp_path / "x.npy"),
                     "--outputs", str(tmp_path / y)]) == 0
        assert "PASS" in capsys.readouterr().out
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12, 2, 3)})
    npz_with_members(tmp_path / "xh.npz", {"x.npy": hdr.getvalue()})
    npy_with_shape(tmp_path / "xh.npy", (10 ** 12, 2, 3))
    for bad in ("xh.npz", "xh.npy"):
        assert main(["verify", str(tmp_path / "m.lstm"), "--inputs", str(tmp_path / bad),
                     "--outputs", str(tmp_path / "y.npz")]) == 2
        one_line_error(capsys, f"{tmp_path / bad}: ", "declares shape (1000000000000, 2, 3)")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    assert main(["verify", str(tmp_path / "m.lstm"), "--inputs", str(tmp_path / "junk.npz"),
                 "--outputs", str(tmp_path / "y.npz")]) == 2
    one_line_error(capsys, f"{tmp_path / 'junk.npz'}: not a readable .npz")


# ------------------------------------------------ 3. paths that are not UTF-8

def test_undecodable_paths_print_under_a_utf8_locale(data):
    m, seqs, tmp = data
    env = dict(ENV, LC_ALL="C.UTF-8", PYTHONIOENCODING="utf-8")
    d = os.fsencode(tmp)
    for argv, out in ((["run", os.path.join(d, b"m.lstm"), os.path.join(d, b"r.npz")], b"o\xff.npz"),
                      (["run", os.path.join(d, b"m.lstm"), os.path.join(d, b"npy")], b"od\xff"),
                      (["convert", os.path.join(d, b"m.lstm")], b"c\xff.lstm")):
        target = os.path.join(d, out)
        r = subprocess.run([sys.executable, "-m", "lstm_infer", *argv, "-o", target], env=env,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"wrote " + target + b": ") and r.stderr == b""
        assert os.path.exists(target)
    missing = os.path.join(d, b"no\xfe.jsonl")
    r = subprocess.run([sys.executable, "-m", "lstm_infer", "run", os.path.join(d, b"m.lstm"), missing, "-o",
                        os.path.join(d, b"x.npz")], env=env, capture_output=True, timeout=60)
    assert r.returncode == 2 and r.stderr == b"lstm-infer: error: " + missing + b": No such file or directory\n"


# ------------------------------------------------ 4. into an existing directory: all or nothing

def _old_dir(tmp, n, every=1):
    out = tmp / "odir"
    out.mkdir()
    for i in range(0, n, every):
        (out / f"s{i:03d}.npy").write_bytes(b"old %d" % i)
    return out, {p: (out / p).read_bytes() for p in os.listdir(out)}


def test_directory_output_checks_every_target_first(data, capsys):
    m, seqs, tmp = data
    out, old = _old_dir(tmp, len(seqs))
    (out / "s007.npy").unlink()
    (out / "s007.npy").mkdir()  # named like a target file
    del old["s007.npy"]
    assert main(["run", str(tmp / "m.lstm"), str(tmp / "npy"), "-o", str(out)]) == 2
    one_line_error(capsys, f"{out / 's007.npy'}: is a directory")
    assert {p: (out / p).read_bytes() for p in os.listdir(out) if p != "s007.npy"} == old
    assert not hidden(out) and not hidden(tmp)


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_directory_output_failing_mid_way_keeps_the_old_contents(data, monkeypatch, capsys, links):
    m, seqs, tmp = data
    out, old = _old_dir(tmp, len(seqs), every=2)  # half the targets exist, half are new
    real, calls = os.replace, []
    if not links:  # a file system without them: the old files are moved aside instead
        def no_link(*a, **kw):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)

    def replace(src, dst, **kw):
        calls.append(dst)
        if len(calls) == 6:
            raise OSError(errno.ENOSPC, "No space left on device", src)
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["run", str(tmp / "m.lstm"), str(tmp / "npy"), "-o", str(out)]) == 2
    one_line_error(capsys, f"{out / 's005.npy'}: No space left on device")
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == old
    assert not hidden(out) and not hidden(tmp)
    monkeypatch.setattr(os, "replace", real)
    assert main(["run", str(tmp / "m.lstm"), str(tmp / "npy"), "-o", str(out)]) == 0
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(np.load(out / f"s{i:03d}.npy"), m(s)[0])


# ------------------------------------------------ 5. FIFOs

def _unblock(fifo):
    """Lets a reader stuck opening ``fifo`` go on (what a hung test leaves behind)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_dask_model_path_on_a_fifo_is_refused(tmp_path):
    from lstm_infer import dask as ldask
    from lstm_infer.errors import NotRegularFileError

    fifo = str(tmp_path / "m.lstm")
    os.mkfifo(fifo)
    box = {}

    def job():
        try:
            ldask._Model(None, fifo, True)
        except BaseException as exc:
            box["e"] = exc

    t = threading.Thread(target=job, daemon=True)
    t.start()
    t.join(10)
    hung = t.is_alive()
    if hung:
        _unblock(fifo)
        t.join(5)
    assert not hung, "reading the model hung on a FIFO"
    assert isinstance(box.get("e"), NotRegularFileError) and "FIFO" in str(box["e"])


@pytest.mark.parametrize("which", ["inputs", "outputs"])
def test_verify_refuses_fifo_inputs(tmp_path, which):
    make(I=3, H=4).save(tmp_path / "m.lstm")
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 1, 3), np.float32))
    np.savez(tmp_path / "y.npz", y=np.zeros((2, 1, 4), np.float32))
    fifo = str(tmp_path / "f.npz")
    os.mkfifo(fifo)
    files = {"inputs": str(tmp_path / "x.npz"), "outputs": str(tmp_path / "y.npz"), which: fifo}
    try:
        r = subprocess.run([sys.executable, "-m", "lstm_infer", "verify", str(tmp_path / "m.lstm"),
                            "--inputs", files["inputs"], "--outputs", files["outputs"]],
                           env=ENV, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("verify hung on a FIFO")
    assert r.returncode == 2 and r.stderr == f"lstm-infer: error: {fifo}: is a FIFO, not a regular file; " \
                                             f"refusing to read it\n"


@pytest.mark.parametrize("name", ["f.npy", "f.npz"])
def test_run_refuses_fifo_inputs_up_front(data, capsys, name):
    m, seqs, tmp = data
    fifo = tmp / name
    os.mkfifo(fifo)
    assert main(["run", str(tmp / "m.lstm"), str(fifo), "-o", str(tmp / "o.npz")]) == 2
    one_line_error(capsys, f"{fifo}: is a FIFO")


# ------------------------------------------------ 6. long non-ASCII names

@pytest.mark.parametrize("kind", ["npz", "dir"])
def test_output_names_up_to_name_max_bytes(data, kind):
    m, seqs, tmp = data
    name = "数" * 80 + (".npz" if kind == "npz" else "")  # 244 bytes, 84 characters
    assert len(name.encode()) <= 255
    src = tmp / ("r.npz" if kind == "npz" else "npy")
    assert main(["run", str(tmp / "m.lstm"), str(src), "-o", str(tmp / name)]) == 0
    assert os.path.exists(tmp / name) and not hidden(tmp)


# ------------------------------------------------ 7. the output checked before the run

def _no_engine(monkeypatch):
    def engine(*a, **kw):
        raise AssertionError("computed before the output was checked")
        yield

    monkeypatch.setattr(runner, "_engine", engine)


def test_run_checks_the_output_before_computing(data, monkeypatch, capsys):
    m, seqs, tmp = data
    fifo = tmp / "f.npz"
    os.mkfifo(fifo)
    (tmp / "ro.npz").write_bytes(b"x")
    os.chmod(tmp / "ro.npz", 0o444)
    _no_engine(monkeypatch)
    assert main(["run", str(tmp / "m.lstm"), str(tmp / "r.npz"), "-o", str(fifo)]) == 2
    one_line_error(capsys, f"{fifo}: is a FIFO")
    missing = tmp / "nodir" / "o.npz"
    assert main(["run", str(tmp / "m.lstm"), str(tmp / "r.npz"), "-o", str(missing)]) == 2
    err = one_line_error(capsys, f"{missing}: No such file or directory")
    assert ".spill" not in err
    assert main(["run", str(tmp / "m.lstm"), str(tmp / "npy"), "-o", str(tmp / "nodir" / "sub")]) == 2
    one_line_error(capsys, f"{tmp / 'nodir' / 'sub'}: No such file or directory")
    if os.geteuid() != 0:  # root may write anything
        assert main(["run", str(tmp / "m.lstm"), str(tmp / "r.npz"), "-o", str(tmp / "ro.npz")]) == 2
        one_line_error(capsys, "not writable")
    assert not hidden(tmp)


def test_run_write_errors_name_the_output_not_the_spill(data, monkeypatch, capsys):
    m, seqs, tmp = data
    real = runner._RaggedWriter.add

    class Full:
        """The spill file on a full disk."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, buf):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def add(self, key, out):
        if not isinstance(self.spill, Full):
            self.spill = Full(self.spill)
        real(self, key, out)

    monkeypatch.setattr(runner._RaggedWriter, "add", add)
    out = tmp / "o.npz"
    assert main(["run", str(tmp / "m.lstm"), str(tmp / "r.npz"), "-o", str(out)]) == 2
    one_line_error(capsys, f"{out}: No space left on device")
    assert not hidden(tmp) and not out.exists()


# ------------------------------------------------ 8. a corrupt member of a ragged .npz

@pytest.mark.parametrize("member, raw, message", [
    ("lengths.npy", b"garbage garbage garbage", "the magic string is not correct"),
    ("data.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz4'}", "not a readable .npy header"),
])
def test_corrupt_npz_member_names_file_and_member(data, capsys, member, raw, message):
    m, seqs, tmp = data
    members = {"data.npy": npy_bytes(np.concatenate(seqs)), "lengths.npy": npy_bytes(np.array([len(s) for s in seqs]))}
    members[member] = raw
    p = tmp / "bad.npz"
    npz_with_members(p, members)
    assert main(["run", str(tmp / "m.lstm"), str(p), "-o", str(tmp / "o.npz")]) == 2
    one_line_error(capsys, f"{p}: member '{member}': ", message)


def test_crc_error_in_npz_member_is_named(data, capsys):
    m, seqs, tmp = data
    p = tmp / "crc.npz"
    np.savez(p, data=np.concatenate(seqs), lengths=[len(s) for s in seqs])
    raw = bytearray(p.read_bytes())
    at = raw.index(b"\x93NUMPY") + 200  # inside data.npy's values, a stored member
    raw[at] ^= 0xFF
    p.write_bytes(bytes(raw))
    assert main(["run", str(tmp / "m.lstm"), str(p), "-o", str(tmp / "o.npz")]) == 2
    one_line_error(capsys, f"{p}: member 'data.npy': ", "CRC")


# ------------------------------------------------ 10. verify's comparison

def test_compare_treats_matching_nan_as_agreement():
    a = np.array([1.0, np.nan, np.inf, -np.inf, 2.0], np.float32)
    assert cli._compare(a, a.copy())[:2] == (0.0, 0.0)
    for ours, ref in (([np.nan], [1.0]), ([1.0], [np.nan]), ([np.inf], [-np.inf]), ([np.inf], [1.0])):
        err, mean, _ = cli._compare(np.array(ours, np.float32), np.array(ref, np.float32))
        assert err == np.inf and mean == np.inf
    err, mean, scaled = cli._compare(np.array([1.5, 2.0, np.nan]), np.array([1.0, 4.0, np.nan]))
    assert (err, scaled) == (2.0, 0.5)  # max abs err over max |ref| (NaN left out)


def test_verify_a_nan_weight_passes_where_torch_agrees(tmp_path, capsys):
    pytest.importorskip("torch")
    m = make(I=3, H=4)
    sd = m.state_dict()
    sd["weight_hh_l0"][0, 0] = np.nan
    m.load_state_dict(sd)
    m.save(tmp_path / "nan.lstm")
    assert main(["verify", str(tmp_path / "nan.lstm")]) == 0
    out = capsys.readouterr().out
    table = out.split("\n", 1)[1]  # the first line names the file (nan.lstm)
    assert "PASS" in out and " inf" not in table and "nan" not in table
    assert "err/max|ref|" in out and "max rel err" not in out


def test_verify_saved_nan_against_a_number_fails(tmp_path, capsys):
    m = make(I=3, H=4)
    m.save(tmp_path / "m.lstm")
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    y = m(x)[0].copy()
    np.savez(tmp_path / "x.npz", x=x)
    np.savez(tmp_path / "y.npz", y=y)
    assert main(["verify", str(tmp_path / "m.lstm"), "--inputs", str(tmp_path / "x.npz"),
                 "--outputs", str(tmp_path / "y.npz")]) == 0
    out = capsys.readouterr().out
    assert "max abs err / max |ref|" in out and "rel err" not in out
    y[2, 1, 3] = np.nan
    np.savez(tmp_path / "y.npz", y=y)
    assert main(["verify", str(tmp_path / "m.lstm"), "--inputs", str(tmp_path / "x.npz"),
                 "--outputs", str(tmp_path / "y.npz")]) == 1
    assert "FAIL: max abs error inf" in capsys.readouterr().out


# ------------------------------------------------ 11. pipes, Ctrl-C, "-o -"

@pytest.mark.parametrize("cmd", ["convert", "run"])
def test_closed_stdout_pipe_is_a_quiet_end(data, cmd):
    m, seqs, tmp = data
    out = tmp / ("c.lstm" if cmd == "convert" else "o.npz")
    argv = ["convert", tmp / "m.lstm"] if cmd == "convert" else ["run", tmp / "m.lstm", tmp / "r.npz"]
    r, w = os.pipe()
    os.close(r)  # the reader (head -1) is gone before we print
    try:
        p = subprocess.run([sys.executable, "-m", "lstm_infer", *map(str, argv), "-o", str(out)], env=ENV,
                           stdout=w, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(w)
    assert p.returncode == 128 + signal.SIGPIPE and p.stderr == b""
    assert out.exists()


def test_dash_output_is_refused(data, monkeypatch, capsys):
    m, seqs, tmp = data
    monkeypatch.chdir(tmp)
    for argv in (["run", "m.lstm", "npy", "-o", "-"], ["run", "m.lstm", "r.npz", "-o", "-"],
                 ["convert", "m.lstm", "-o", "-"]):
        assert main(argv) == 2
        one_line_error(capsys, "-o -: cannot write to standard output")
    assert not os.path.exists(tmp / "-")
