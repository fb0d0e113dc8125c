"""tools/ceilings.c, the measured bounds the README quotes for the batch-1 cases: it builds
with `make ceilings`, runs, and prints a bound and our time for every case, weight type
and thread count; a "lower bound" that the library beat by far would be a wrong model."""
import os
import platform
import re
import subprocess

import pytest

from clib_helpers import ROOT, build_dir, have_toolchain
from isa_helpers import available_isas

pytestmark = [
    pytest.mark.skipif(not have_toolchain(), reason="needs make and a C compiler"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only"),
]

ROW = re.compile(r"^  (edge|wide)\s+(float32|float16|int8 \(as built.*?\)|int8, any .*?\))\s+([12])\s+([\d.]+)\s+([\d.]+|-)\s+(.*)$")


@pytest.fixture(scope="module")
def ceilings():
    if "avx2" not in available_isas():  # the avx2 kernel set needs AVX2, FMA and F16C, as the tool does
        pytest.skip("needs AVX2, FMA and F16C")
    d = build_dir()
    proc = subprocess.run(["make", "-C", ROOT, f"BUILD={d}", "ceilings"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return os.path.join(d, "ceilings")


def test_prints_a_bound_and_our_time_for_every_case(ceilings):
    proc = subprocess.run([ceilings, "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [ROW.match(line) for line in proc.stdout.splitlines()]
    rows = [m.groups() for m in rows if m]
    # 2 cases x (3 weight types of the library + 1 hypothetical design) x 2 thread counts
    assert len(rows) == 16, proc.stdout
    bounds = {}
    for case, weights, threads, bound, ours, share in rows:
        bound = float(bound)
        assert bound > 0
        bounds[case, weights, threads] = bound
        if ours == "-":
            assert weights.startswith("int8, any")
            continue
        ours = float(ours)
        # ours can come near the bound, not beat it by far (the model would be wrong)
        assert bound / ours < 2.0, (case, weights, threads, bound, ours)
        assert re.match(r"\d+% \[\d+-\d+\]$", share), share
    for (case, weights, threads), bound in bounds.items():
        if threads == "2":  # half the work a thread, plus one hop a step
            assert bound < bounds[case, weights, "1"], (case, weights)
    for line in ("FMA peak", "A cache line between two threads", "Read bandwidth per thread"):
        assert line in proc.stdout
    # two threads at once: each at most about the one-thread peak, so together at most about 2x
    pair = re.search(r"the FMA peak of each of two threads at once.*?together\s+([\d.]+)x one thread", proc.stdout,
                     re.S)
    assert pair, proc.stdout
    assert 0.5 < float(pair.group(1)) < 2.3, pair.group(0)


def test_refuses_a_bad_round_count(ceilings):
    for arg in ("0", "100", "x", "5x", ""):
        proc = subprocess.run([ceilings, arg], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "usage" in proc.stderr, arg
