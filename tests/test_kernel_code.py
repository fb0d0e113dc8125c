"""The built extension's SIMD inner loops keep their accumulators in registers.

GCC decides per call site whether an array of __m256 accumulators lives in
registers; twice a small change elsewhere (Python's -fwrapv build flag, then a
new caller) made it store every accumulator to the stack on each iteration,
which halved the speed of every case with no change in any result. This reads
the machine code of the extension that the tests import and checks each
multiply-add inner loop for stack traffic.
"""
import platform
import shutil
import subprocess

import pytest

from lstm_infer import _core

from disasm_helpers import backward_loops

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _loops(path):
    """(function, instructions) for every backward-jump loop of at most 128 instructions
    (a microkernel's k loop, unrolled four times, has about 90)."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                          text=True, check=True).stdout
    return backward_loops(text, r"j\w+\s+([0-9a-f]+)\b", max_len=128)


def _multiply_adds(instruction):
    """A float (vfmadd), int16-pair (vpdpwssd, the avx512 set's batched int8 step) or byte-quad
    (vpdpbusd, its one-row int8 step) multiply-add."""
    return "vfmadd" in instruction or "vpdpwssd" in instruction or "vpdpbusd" in instruction


@pytest.mark.skipif(not X86 or shutil.which("objdump") is None,
                    reason="needs x86-64 and objdump")
def test_fma_inner_loops_do_not_touch_the_stack():
    # (the smallest shapes, 1x1 and the one-row tails, have two multiply-adds a loop)
    loops = [(f, body) for f, body in _loops(_core.__file__)
             if sum(_multiply_adds(t) for t in body) >= 2]
    # the register-blocked microkernels (6x1 also on packed rows), the one-row step of every
    # cell kind and the one-row gemm have such a loop
    names = {f.split(".")[0] for f, _ in loops}
    shapes = {f"block_{mr}x{ns}" for mr, ns in
              [(6, 1), (5, 1), (4, 1), (3, 2), (3, 1), (2, 2), (2, 1), (1, 4), (1, 3), (1, 2), (1, 1)]}
    steps = {f"cell_row_{kind}" for kind in ("lstm", "gru", "rnn_tanh", "rnn_relu")} | {"gemm_row_avx2"}
    shapes.add("block_6x1_packed")  # 6x1 on packed rows
    # the avx512 set: every shape of up to 6 rows and 4 strips, 6 rows also on packed rows
    shapes |= {f"block512_{mr}x{ns}" for mr in range(1, 7) for ns in range(1, 5)}
    shapes |= {f"block512_6x{ns}_packed" for ns in range(1, 5)}
    # and its batched int8 step (vpdpwssd): up to 6 rows and 2 strips
    shapes |= {f"block_i8_{mr}x{ns}" for mr in range(1, 7) for ns in (1, 2)}
    # and its one-row int8 sums (vpdpbusd): 1 to 8 strips
    shapes |= {f"row_strips_i8_{ns}" for ns in range(1, 9)}
    assert shapes | steps <= names, sorted(names)
    spilling = [(f, [t for t in body if "(%rsp)" in t or "(%rbp)" in t])
                for f, body in loops
                if any("(%rsp)" in t or "(%rbp)" in t for t in body)
                and sum(_multiply_adds(t) for t in body) * 3 >= len(body)]
    assert not spilling, f"SIMD inner loops spill to the stack: {spilling}"
