"""Runs the C core's own tests (tests/c): the -O2 build, the ASan+UBSan+LSan build and
the TSan build, of test_core.c and of test_pool.c.

The C tests check every kernel and the full forward pass against naive C
references and the error statuses, and the thread pool alone (jobs, resizes,
fork); here we only make sure CI runs them, including under the sanitizers.
"""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
C_DIR = os.path.join(HERE, "c")


def _have(tool):
    return shutil.which(tool) is not None


@pytest.mark.skipif(not _have("make") or not (_have("gcc") or _have("cc")),
                    reason="needs make and a C compiler")
@pytest.mark.parametrize("target", ["test", "asan", "tsan", "kernels", "kernels-asan", "kernels-tsan",
                                    "pool", "pool-asan", "pool-tsan"])
def test_c_core(target):
    env = dict(os.environ)
    env.pop("LSTM_INFER_ISA", None)
    env.pop("LSTM_INFER_NUM_THREADS", None)
    proc = subprocess.run(["make", "-C", C_DIR, target], capture_output=True, text=True,
                          env=env, timeout=900)
    report = proc.stdout[-4000:] + "\n" + proc.stderr[-8000:]
    assert proc.returncode == 0, f"make {target} failed:\n{report}"
    assert "OK:" in proc.stdout and "0 failures" in proc.stdout, report
