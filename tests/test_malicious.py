"""Pickles that would run code under plain ``pickle`` are refused and run nothing;
pickles that would crash or exhaust the reader are refused cleanly."""

import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

from file_helpers import call, dict_ops, frag, glob, legacy_file, path, program, rezip, member, tensor_ops, torch_zip
from lstm_infer import readers, torchfile
from lstm_infer.errors import UnsafeFileError

PY = sys.executable


def _payloads(sentinel):
    """name -> (global the loader must name, data.pkl body opcodes that create ``sentinel``)."""
    s = str(sentinel)
    touch_code = f"open({s!r}, 'w').close()"
    return {
        "os.system": ("posix.system", call(glob("posix", "system"), frag(f"touch '{s}'"))),
        "os.system-alias": ("os.system", call(glob("os", "system"), frag(f"touch '{s}'"))),
        "builtins.eval": ("builtins.eval", call(glob("builtins", "eval"), frag(touch_code))),
        "builtins.exec": ("builtins.exec", call(glob("builtins", "exec"), frag(touch_code))),
        "subprocess.Popen": ("subprocess.Popen",
                             call(glob("subprocess", "Popen"), frag([PY, "-c", touch_code]))),
        # protocol 4 STACK_GLOBAL: module and name come from the stack
        "stack-global": ("builtins.exec", frag("builtins") + frag("exec") + b"\x93" + frag((touch_code,)) + b"R"),
        # protocol 0 INST opcode: instantiate a class by name with arguments
        "inst": ("builtins.exec", b"(" + frag(touch_code) + b"ibuiltins\nexec\n"),
        # __reduce__ via copyreg: _reconstructor(cls, base, state) -> base.__new__(cls, state)
        "copyreg": ("copyreg._reconstructor",
                    call(glob("copyreg", "_reconstructor"), glob("subprocess", "Popen"), glob("builtins", "object"),
                         frag(None))),
        # torch's own helper that unpickles nested bytes with plain pickle
        "torch._load_from_bytes": ("torch.storage._load_from_bytes",
                                   call(glob("torch.storage", "_load_from_bytes"),
                                        frag(pickle.dumps(None)))),
        # the dangerous call hidden inside an allowed one
        "nested-in-ordereddict": ("builtins.eval",
                                  call(glob("collections", "OrderedDict"),
                                       call(glob("builtins", "eval"), frag(f"[(0, {touch_code})]")))),
        # as the storage type of an otherwise valid tensor
        "storage-type": ("builtins.exec",
                         call(glob("torch._utils", "_rebuild_tensor_v2"),
                              b"(" + frag("storage") + call(glob("builtins", "exec"), frag(touch_code)) + frag("0")
                              + frag("cpu") + frag(1) + b"tQ", frag(0), frag((1,)), frag((1,)))),
        "unknown-global": ("mypkg.helpers.Thing", call(glob("mypkg.helpers", "Thing"))),
        "getattr": ("builtins.getattr", call(glob("builtins", "getattr"), glob("os", "path"), frag("join"))),
        "numpy-loads": ("numpy.core.multiarray._reconstruct",
                        call(glob("numpy.core.multiarray", "_reconstruct"), frag(1))),
    }


LIVE = ("os.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "stack-global", "inst")


def _wait_for(p, seconds=3.0):
    end = time.time() + seconds
    while time.time() < end and not p.exists():
        time.sleep(0.02)
    return p.exists()


@pytest.mark.parametrize("name", LIVE)
def test_payloads_are_live_under_plain_pickle(name, tmp_path):
    """The payloads really run code when loaded naively: the refusals below mean something."""
    sentinel = tmp_path / "ran"
    _, body = _payloads(sentinel)[name]
    try:
        pickle.loads(program(body))
    except Exception:  # noqa: BLE001 - only the side effect matters
        pass
    assert _wait_for(sentinel)


def _embedded(body):
    """The payload as a value inside an otherwise valid state dict."""
    return program(dict_ops([("weight", tensor_ops("0", 2, 0, (2,), (1,))), ("evil", body)]))


@pytest.mark.parametrize("name", sorted(_payloads("x")))
@pytest.mark.parametrize("layout", ["zip", "zip-embedded", "legacy"])
def test_refused_and_nothing_ran(name, layout, tmp_path):
    sentinel = tmp_path / "ran"
    qualname, body = _payloads(sentinel)[name]
    if layout == "zip":
        data = torch_zip(program(body), {})
    elif layout == "zip-embedded":
        data = torch_zip(_embedded(body), {"0": b"\0" * 8})
    else:
        data = legacy_file(program(body), [])
    f = tmp_path / "evil.pt"
    f.write_bytes(data)
    for load in (torchfile.load, readers.read_tensors):
        with pytest.raises(UnsafeFileError) as info:
            load(f)
        msg = str(info.value)
        assert f"'{qualname}'" in msg and str(f) in msg and "nothing was executed" in msg
        assert isinstance(info.value, ValueError)
    time.sleep(0.05)  # a spawned process would have had time to create it
    assert not sentinel.exists()


def test_evil_pickle_inside_real_torch_file(tmp_path):
    """A real torch.save archive whose data.pkl had a payload spliced in after the fact."""
    sentinel = tmp_path / "ran"
    data = open(path("uni.pt"), "rb").read()
    name, pkl = member(data, "data.pkl")
    _, body = _payloads(sentinel)["os.system"]
    evil = rezip(data, {name: b"\x80\x02" + body + b"0" + pkl[2:]})  # run payload, POP, then the real pickle
    assert not sentinel.exists()
    with pytest.raises(UnsafeFileError, match="posix.system"):
        readers.read_tensors(evil, "spliced.pt")
    assert not sentinel.exists()


def test_plain_pickle_file_is_refused_without_unpickling(tmp_path):
    sentinel = tmp_path / "ran"
    data = program(_payloads(sentinel)["builtins.exec"][1])
    with pytest.raises(ValueError, match="plain pickle"):
        readers.read_tensors(data, "model.pkl")
    assert not sentinel.exists()


def test_npz_object_arrays_refused(tmp_path):
    sentinel = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch '{sentinel}'",))

    f = tmp_path / "evil.npz"
    np.savez(f, w=np.array([Evil()], dtype=object))
    with pytest.raises(ValueError, match="object arrays are refused"):
        readers.read_tensors(f)
    assert not sentinel.exists()


# BUILD (the opcode behind __setstate__) applied to objects the loader hands out:
# the dtype markers and rebuild functions are shared by every load in the process.
POISON = {
    "dtype marker state": glob("torch", "FloatStorage") + frag({"np_code": "O"}) + b"b",
    "dtype marker slots": glob("torch", "FloatStorage") + frag((None, {"np_code": "O", "itemsize": 1})) + b"b",
    "rebuild defaults": glob("torch._utils", "_rebuild_tensor_v2") + frag((None, {"__defaults__": (0, (1,), (1,))})) + b"b",
    "OrderedDict class": glob("collections", "OrderedDict") + frag((None, {"__getitem__": 1})) + b"b",
    "tensor object": tensor_ops("0", 2, 0, (2,), (1,)) + frag((None, {"size": "abc"})) + b"b",
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_build_cannot_rewrite_loader_objects(name):
    good = torch_zip(program(dict_ops([("w", tensor_ops("0", 2, 0, (2,), (1,)))])), {"0": b"\0\0\x80?\0\0\0@"})
    assert torchfile.load(good)["w"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        torchfile.load(torch_zip(program(POISON[name]), {"0": b"\0" * 8}))
    out = torchfile.load(good)["w"]  # the next load is unaffected
    assert out.dtype == np.float32 and out.tolist() == [1.0, 2.0]


def test_huge_memo_index_refused_quickly():
    # LONG_BINPUT 2**32-1: plain pickle would grow its memo table to tens of GB
    body = dict_ops([]) + b"r\xff\xff\xff\xff"
    start = time.perf_counter()
    with pytest.raises(ValueError, match="memo index 4294967295"):
        torchfile.load(torch_zip(program(body), {}))
    assert time.perf_counter() - start < 0.5


# ------------------------------------------------------------- deep nesting
# Only allowed opcodes, yet hashing a dict key of tuples nested ~10**6 deep
# overflowed the C stack (SIGSEGV), and 2*10**4..10**5 levels raised an uncaught
# RecursionError. Run in a subprocess: a crash must fail the test, not pytest.

def _deep_tuple(n):
    return b")" + b"\x85" * n  # EMPTY_TUPLE, then TUPLE1 n times: ((((),),),)


def _nested(where, n):
    if where == "dict key":
        return dict_ops([]) + _deep_tuple(n) + frag(1) + b"s"
    if where == "OrderedDict key":
        return call(glob("collections", "OrderedDict"), b"]" + b"(" + _deep_tuple(n) + frag(1) + b"t" + b"a")
    if where == "frozenset":
        return b"\x80\x04(" + _deep_tuple(n) + b"\x91"
    if where == "torch.Size key":
        return dict_ops([]) + call(glob("torch", "Size"), b"(" + _deep_tuple(n) + b"l") + frag(1) + b"s"
    if where == "value":
        return dict_ops([("w", tensor_ops("0", 2, 0, (2,), (1,))), ("deep", _deep_tuple(n))])
    if where == "list value":
        return dict_ops([("deep", b"]" * n + b"a" * (n - 1))])
    raise AssertionError(where)


NESTING = ["dict key", "OrderedDict key", "frozenset", "torch.Size key", "value", "list value"]


@pytest.mark.parametrize("depth", [20_000, 100_000, 1_000_000])
def test_deep_nesting_refused_cleanly(tmp_path, depth):
    files = {}
    for where in NESTING:
        f = tmp_path / f"{where.replace(' ', '_')}.pt"
        f.write_bytes(torch_zip(program(_nested(where, depth)), {"0": b"\0" * 8}))
        files[where] = str(f)
        legacy = tmp_path / f"{where.replace(' ', '_')}_legacy.pt"
        legacy.write_bytes(legacy_file(program(_nested(where, depth)), []))
        files[where + " (legacy)"] = str(legacy)
    code = ("import json\nfrom lstm_infer import readers\nout = {}\n"
            f"for where, f in {files!r}.items():\n"
            "    try:\n        readers.read_tensors(f)\n        out[where] = 'loaded'\n"
            "    except BaseException as exc:\n        out[where] = f'{type(exc).__name__}: {exc}'\n"
            "print(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, f"reader process died (signal {-res.returncode})" if res.returncode < 0 else res.stderr
    for where, outcome in json.loads(res.stdout).items():
        assert outcome.startswith(f"FormatError: {files[where]}: pickle nests objects more than "
                                  f"{torchfile.MAX_NESTING} levels deep"), (where, outcome)


def test_deep_nesting_cli_one_line(tmp_path):
    f = tmp_path / "deep.pt"
    f.write_bytes(torch_zip(program(_nested("dict key", 1_000_000)), {}))
    res = subprocess.run([sys.executable, "-m", "lstm_infer", "inspect", str(f)], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, (res.returncode, res.stderr[-500:])
    assert "nests objects more than" in res.stderr


def test_nesting_just_within_the_limit_loads():
    """The limit is on depth, not on legitimate structure: a tuple key as deep as
    allowed still loads, and real checkpoints nest far less."""
    n = torchfile.MAX_NESTING - 1
    obj = torchfile.load(torch_zip(program(_nested("dict key", n)), {}))
    (key,) = obj
    depth = 0
    while key:
        (key,) = key
        depth += 1
    assert depth == n
    with pytest.raises(ValueError, match="nests objects more than"):
        torchfile.load(torch_zip(program(_nested("dict key", n + 2)), {}))


def test_real_nested_checkpoint_loads(tmp_path):
    torch = pytest.importorskip("torch")
    obj = {"w": torch.ones(2)}
    for i in range(60):  # a config nested 60 dicts deep, beside the weights
        obj = {"level": i, "inner": obj, "t": (1, (2, (3,)))}
    f = tmp_path / "nested.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "config": obj}, f)
    got = torchfile.load(f)["config"]
    for _ in range(60):
        got = got["inner"]
    assert got["w"].tolist() == [1.0, 1.0]
