"""The C core on aarch64: cross-built with gcc-aarch64-linux-gnu and run under qemu-user.

tests/c/aarch64.mk builds the C tests for aarch64 (through tests/c/Makefile) and runs
them under qemu-aarch64, the kernel, reduced-weight and forward tests once with the scalar
kernels and once with the NEON ones (LSTM_INFER_ISA), at -O2 and under ASan+UBSan. The same checks
as on x86: every kernel against naive C, the activations' accuracy on dense grids, the
forward pass of every cell kind against a naive double-precision reference, the dense
layer, the model-file loader, the pool (without its fork tests, which qemu-user cannot
run).

A last test reads the NEON microkernels' machine code (float32 and float16 shapes, the
int8 step's loop): their multiply-add loops keep the accumulators in registers (GCC spills an accumulator array it cannot keep to the
stack on every iteration, which costs half the speed and changes no result).
"""
import os
import re
import shutil
import subprocess

import pytest

from disasm_helpers import backward_loops

HERE = os.path.dirname(os.path.abspath(__file__))
C_DIR = os.path.join(HERE, "c")
SRC = os.path.join(os.path.dirname(HERE), "src")
CC = "aarch64-linux-gnu-gcc"
SYSROOT = "/usr/aarch64-linux-gnu"


def _missing(*tools):
    return [t for t in tools if shutil.which(t) is None]


def _skip_without(*tools):
    missing = _missing(*tools)
    if missing:
        pytest.skip("needs " + ", ".join(missing) + " (Debian: gcc-aarch64-linux-gnu, "
                    "libc6-dev-arm64-cross, qemu-user)")
    if "qemu-aarch64" in tools and not os.path.isdir(os.path.join(SYSROOT, "lib")):
        pytest.skip(f"needs the aarch64 C library in {SYSROOT} (Debian: libc6-dev-arm64-cross)")


@pytest.mark.parametrize("target", ["test", "asan"])
def test_c_tests_under_qemu(target):
    _skip_without("make", CC, "qemu-aarch64")
    env = dict(os.environ)
    env.pop("LSTM_INFER_ISA", None)
    env.pop("LSTM_INFER_NUM_THREADS", None)
    proc = subprocess.run(["make", "-C", C_DIR, "-f", "aarch64.mk", target], capture_output=True,
                          text=True, env=env, timeout=2400)
    report = proc.stdout[-4000:] + "\n" + proc.stderr[-8000:]
    assert proc.returncode == 0, f"make -f aarch64.mk {target} failed:\n{report}"
    summaries = re.findall(r"^(OK|FAILED): .*$", proc.stdout, re.M)
    # test_kernels, test_reduced and test_core with each ISA (asan: neon only), test_loader,
    # test_pool
    isas = ("scalar", "neon") if target == "test" else ("neon",)
    assert summaries == ["OK"] * (3 * len(isas) + 2), report
    assert re.search(r"^test_dense: \d+ checks, 0 failures$", proc.stdout, re.M), report
    for isa in isas:
        assert proc.stdout.count(f"(ISAs: {isa})") == 3, report


def _loops(disassembly):
    """(function, instructions) for every backward branch's loop."""
    return backward_loops(disassembly, r"(?:b\.\w+|b|cbn?z|tbn?z)\s+(?:\w+, )*(?:#0x[0-9a-f]+, )?([0-9a-f]+) <")


def test_neon_microkernels_keep_accumulators_in_registers(tmp_path):
    _skip_without(CC, "aarch64-linux-gnu-objdump")
    obj = tmp_path / "kernels_neon.o"
    subprocess.run([CC, "-O2", "-std=gnu11", "-I", SRC, "-c", os.path.join(SRC, "kernels_neon.c"),
                    "-o", str(obj)], check=True)
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(obj)],
                          capture_output=True, text=True, check=True).stdout
    # the k loop of a shape: four k a pass, each multiply-add taking lane 3 of a's vector once
    inner = {}
    for f, body in _loops(text):
        if f.startswith("block_") and any("fmla" in t and ".s[3]" in t for t in body):
            if f not in inner or len(body) < len(inner[f]):
                inner[f] = body
    shapes = {f"block_{r}x{s}" for r, s in [(4, 1), (3, 1), (2, 2), (2, 1), (1, 4), (1, 3), (1, 2), (1, 1)]}
    # the shapes on half weights (float16), for fewer rows than a full group
    shapes |= {f"block_{r}x{s}_h" for r, s in [(3, 1), (2, 2), (2, 1), (1, 4), (1, 3), (1, 2), (1, 1)]}
    assert set(inner) == shapes, sorted(inner)
    # the int8 step's k loop (widening multiply-adds by lane) of each kind
    for f, body in _loops(text):
        if f.startswith("cell_i8_") and any(t.startswith("smlal") for t in body):
            f = f.split(".")[0]
            if f not in inner or len(body) < len(inner[f]):
                inner[f] = body
    assert {f for f in inner if f.startswith("cell_i8_")} == {
        f"cell_i8_{k}" for k in ("lstm", "gru", "rnn_tanh", "rnn_relu")}, sorted(inner)
    spilling = {f: [t for t in body if "[sp" in t or "[x29" in t] for f, body in inner.items()}
    assert not any(spilling.values()), spilling
