"""The C library built with the top-level Makefile, once per test process, for the
tests that use it from C or through ctypes (test_c_library, test_loader_agreement,
test_c_example)."""
import atexit
import ctypes
import os
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BUILD = {}


def have_toolchain():
    return shutil.which("make") is not None and shutil.which(os.environ.get("CC", "cc")) is not None


def build_dir():
    """A temp dir holding `make all example` of this source tree (built on first use)."""
    if "dir" not in _BUILD:
        d = tempfile.mkdtemp(prefix="lstm_infer_c_")
        atexit.register(shutil.rmtree, d, True)
        proc = subprocess.run(["make", "-j2", "-C", ROOT, f"BUILD={d}", "all", "example"], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"make failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        _BUILD["dir"] = d
    return _BUILD["dir"]


class Library:
    """liblstm_infer.so through ctypes: the loader's status for a file's bytes."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.lstm_model_load_buffer.argtypes = [ctypes.c_char_p, ctypes.c_size_t,
                                                    ctypes.POINTER(ctypes.c_void_p)]
        self.lib.lstm_model_free.argtypes = [ctypes.c_void_p]
        self.lib.lstm_status_string.restype = ctypes.c_char_p

    def load_status(self, data: bytes) -> int:
        model = ctypes.c_void_p()
        status = self.lib.lstm_model_load_buffer(bytes(data), len(data), ctypes.byref(model))
        assert (status == 0) == bool(model.value)
        self.lib.lstm_model_free(model)
        return status

    def status_string(self, status: int) -> str:
        return self.lib.lstm_status_string(status).decode()


def library():
    if "lib" not in _BUILD:
        _BUILD["lib"] = Library(os.path.join(build_dir(), "liblstm_infer.so"))
    return _BUILD["lib"]
