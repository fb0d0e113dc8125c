"""Instructions of one forward call on aarch64, NEON vs scalar, counted under qemu-user.

Builds tools/edge_forward.c (bench.py's "edge" case: T 200, B 1, I 64, H 128, one
layer; LSTM and GRU; weights float32, float16 and int8) with the core for aarch64,
runs it under qemu-aarch64 with
`-d in_asm,exec,nochain` (every translated block's instructions once, then a line
per block executed, no chaining so none is missed) and sums the instructions
executed. One forward call is the difference between 3 calls and 1 call, so the
start-up and the model's creation drop out. These are guest instruction counts,
not time: they say nothing of latency, issue width or memory.

    python tools/aarch64_insns.py            # needs aarch64-linux-gnu-gcc and qemu-aarch64
    python tools/aarch64_insns.py --scalar-reduced   # also the scalar reference on float16
                                                     # and int8 weights (over 20 minutes)
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ["model.c", "forward.c", "status.c", "pool.c", "dispatch.c", "kernels_scalar.c",
        "kernels_neon.c"]
SYSROOT = "/usr/aarch64-linux-gnu"
BLOCK = re.compile(r"^0x([0-9a-f]+):\s")
TRACE = re.compile(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/")


def build(out):
    cmd = ["aarch64-linux-gnu-gcc", "-O2", "-std=gnu11", "-pthread", "-I", os.path.join(ROOT, "src"),
           os.path.join(ROOT, "tools", "edge_forward.c")]
    cmd += [os.path.join(ROOT, "src", f) for f in CORE] + ["-o", out, "-lm"]
    subprocess.run(cmd, check=True)


def count(exe, isa, cell, weights, runs):
    """Guest instructions executed by `exe cell runs weights` with LSTM_INFER_ISA=isa."""
    env = dict(os.environ, LSTM_INFER_ISA=isa)
    proc = subprocess.Popen(["qemu-aarch64", "-L", SYSROOT, "-d", "in_asm,exec,nochain",
                             "-D", "/dev/stderr", exe, cell, str(runs), weights],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    size, start, total = {}, None, 0
    for line in proc.stderr:
        m = TRACE.match(line)
        if m:
            total += size[int(m.group(1), 16)]
            continue
        m = BLOCK.match(line)
        if m:  # a block being translated: its first address, then one line an instruction
            pc = int(m.group(1), 16)
            if start is None or pc != last + 4:
                start = pc
                size[start] = 0
            size[start] += 1
            last = pc
        elif not line.strip() or line.startswith("IN:") or line.startswith("---"):
            start = None
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"{exe} {cell} {runs} {weights} failed under qemu")
    if not out.startswith(isa + " "):
        raise SystemExit(f"asked for {isa}, the driver ran {out.split()[0]}")
    return total


def main():
    # the scalar reference on reduced weights runs ~460 M instructions a call, which take
    # qemu's tracing most of half an hour: counted only when asked
    scalar_reduced = "--scalar-reduced" in sys.argv[1:]
    missing = [t for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        sys.exit("needs " + " and ".join(missing))
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "edge_forward")
        build(exe)
        print("one forward call of the edge case (T 200, B 1, I 64, H 128, 1 layer, 1 thread),")
        print("aarch64 guest instructions counted under qemu-user (not a timing):")
        print("(ratio: scalar / neon on the same weights; vs f32: neon on these weights / neon on f32)")
        print(f"{'cell':5} {'weights':7} {'scalar':>12} {'neon':>12} {'ratio':>6} {'vs f32':>6}")
        for cell in ("lstm", "gru"):
            neon_f32 = None
            for weights in ("f32", "f16", "i8"):
                isas = ("scalar", "neon") if weights == "f32" or scalar_reduced else ("neon",)
                per = {isa: (count(exe, isa, cell, weights, 3) - count(exe, isa, cell, weights, 1)) // 2
                       for isa in isas}
                neon_f32 = neon_f32 or per["neon"]
                scalar = f"{per['scalar']:12,d}" if "scalar" in per else f"{'-':>12}"
                ratio = f"{per['scalar'] / per['neon']:6.2f}" if "scalar" in per else f"{'-':>6}"
                print(f"{cell:5} {weights:7} {scalar} {per['neon']:12,d} {ratio} "
                      f"{per['neon'] / neon_f32:6.2f}")


if __name__ == "__main__":
    main()
