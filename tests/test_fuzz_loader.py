"""The model-file loader under libFuzzer with ASan and UBSan (`make fuzz`), for a
bounded time from the committed seed corpus (tests/fuzz/corpus): no crash, leak,
over-read or undefined behaviour may turn up. Skipped where clang cannot link
libFuzzer (Debian: apt-get install clang libclang-rt-14-dev)."""
import os
import re
import shutil
import subprocess

import pytest

from clib_helpers import ROOT

FUZZ_SECONDS = int(os.environ.get("LSTM_INFER_FUZZ_SECONDS", "25"))


def _libfuzzer_works(tmp_path):
    if shutil.which("clang") is None or shutil.which("make") is None:
        return False
    src = tmp_path / "probe.c"
    src.write_text("#include <stddef.h>\n#include <stdint.h>\n"
                   "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
    proc = subprocess.run(["clang", "-fsanitize=fuzzer,address,undefined", str(src), "-o", str(tmp_path / "probe")],
                          capture_output=True)
    return proc.returncode == 0


def test_fuzz_loader(tmp_path):
    if not _libfuzzer_works(tmp_path):
        pytest.skip("clang with libFuzzer is not available (apt-get install clang libclang-rt-14-dev)")
    proc = subprocess.run(["make", "-C", ROOT, f"BUILD={tmp_path}", "fuzz", f"FUZZ_SECONDS={FUZZ_SECONDS}"],
                          capture_output=True, text=True, timeout=600 + FUZZ_SECONDS)
    report = proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]
    assert proc.returncode == 0, f"the fuzzer found a problem:\n{report}"
    runs = re.search(r"Done (\d+) runs", proc.stderr)
    assert runs and int(runs.group(1)) > 1000, report
    assert not [f for f in os.listdir(tmp_path) if f.startswith(("crash-", "leak-", "oom-", "timeout-"))]
