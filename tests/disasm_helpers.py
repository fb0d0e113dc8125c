"""Loops in objdump's disassembly, for the tests that read the kernels' machine code
(tests/test_kernel_code.py on x86, tests/test_aarch64.py on aarch64)."""
import re


def backward_loops(disassembly, branch, max_len=None):
    """(function, instructions) for every loop closed by a backward branch: `branch` is a
    regex whose group 1 is the branch's target address (hex), matched at the start of an
    instruction's text; loops longer than max_len instructions are left out."""
    funcs, name = {}, None
    for line in disassembly.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            name = m.group(1)
            funcs[name] = []
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if m and name:
            funcs[name].append((int(m.group(1), 16), m.group(2)))
    for fname, ins in funcs.items():
        for addr, text in ins:
            m = re.match(branch, text)
            if not m or int(m.group(1), 16) >= addr:
                continue
            target = int(m.group(1), 16)
            body = [t for a, t in ins if target <= a <= addr]
            if max_len is None or len(body) <= max_len:
                yield fname, body
