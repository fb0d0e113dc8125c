#!/usr/bin/env python3
"""Benchmark of streaming (model.stream()): the cost of one step, on 1 thread.

For LSTM and GRU, input 64, hidden 64/128/256, batch 1 and 64, each timed
engine does one step per call and carries the state to the next call:

  li        st(x), x (input,) at batch 1 or (64, input) at batch 64, called in
            a plain Python loop as a user calls it
  li-C      the bare C call of that step in a C loop (no Python, no binding,
            the state carried through two buffers as st(x) carries it): the
            floor st(x) is measured against; overhead = li - li-C
  ort       ONNX Runtime running an nn.LSTM/nn.GRU exported with
            torch.onnx.export(dynamo=False) for one step, state fed in and
            read back each call
  torch     nn.LSTMCell / nn.GRUCell, everything in one torch.inference_mode() block
  sgemm     (batch 64 rows) NumPy float32 1024^3 matmul under threadpoolctl's
            1-thread BLAS limit: the rate a batch-64 step is compared with
  blas step (batch 64 rows) the same BLAS on the step's bare matrix product,
            [x | h] (64, input + H) @ [W_ih | W_hh]^T (input + H, gates * H):
            the step's flops with no activations, a ceiling for small K

A second table times the module call of one step with the state passed by the
caller, batched m(x (1, 1, input), hx (L, 1, H)) against unbatched
m(x (1, input), hx (L, H)), which must cost no more. A third shows why short
stream calls keep the GIL (lstm_infer._core.HOLD_GIL_FLOPS): an LSTM 64->64
step with the GIL held and with it released, alone and with another thread
running Python meanwhile.

Every engine is timed the same way: a sample is the mean time per call of a
run of back-to-back calls lasting >= 2 ms (the run's length fixed once per
engine); engines take turns round by round (--rounds, rotated order), each
taking samples for --min-time/--rounds seconds per round. Reported: the
median sample (or with --stat min the fastest, steadier when other programs
load the machine), and for the overhead its range over the rounds (each
round's li median minus its li-C median). Before timing, every engine's first
20 steps are checked against torch's nn module.

    python tools/bench_stream.py               # the full table (a few minutes)
    python tools/bench_stream.py --quick       # a smoke run
    python tools/bench_stream.py --stat min    # fastest samples instead of medians
"""
import argparse
import functools
import gc
import io
import math
import statistics
import sys
import threading
import time
import warnings

import numpy as np

INPUT = 64
SEED = 1234


class Timer:
    """The samples of one engine. run(n) makes n back-to-back calls and returns
    the seconds per call."""
    SAMPLE_SECONDS = 2e-3

    def __init__(self, run):
        self.run, self.n, self.rounds = run, 1, []

    def calibrate(self, warmup):
        per = self.run(1)
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            per = min(per, self.run(max(1, int(self.SAMPLE_SECONDS / 10 / max(per, 1e-9)))))
        self.n = max(1, min(1_000_000, int(self.SAMPLE_SECONDS / max(per, 1e-9))))

    def sample_round(self, seconds, min_samples=3):
        run, n, out = self.run, self.n, []
        gc.collect()
        gc.disable()
        try:
            t_end = time.perf_counter() + seconds
            while len(out) < min_samples or time.perf_counter() < t_end:
                out.append(run(n))
        finally:
            gc.enable()
        self.rounds.append(out)

    def samples(self):
        return [x for r in self.rounds for x in r]

    def stat(self, which, samples=None):
        samples = self.samples() if samples is None else samples
        if not samples:
            return math.nan
        return min(samples) if which == "min" else statistics.median(samples)


def run_rounds(timers, args):
    """Calibrates every timer, then samples them round by round, order rotated."""
    for t in timers.values():
        t.calibrate(0.05 * args.min_time)
    names = list(timers)
    for rnd in range(args.rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(0.01)
            timers[name].sample_round(args.min_time / args.rounds)


def calls(step, arg):
    """run(n) for step(arg), called the way a user's loop calls it."""
    def run(n):
        t = time.perf_counter()
        for _ in range(n):
            step(arg)
        return (time.perf_counter() - t) / n
    return run


def step_flops(kind, H, B):
    G = 4 if kind == "lstm" else 3
    return 2.0 * G * H * (INPUT + H) * B


def make_engines(kind, H, B, torch, ort, li):
    """name -> (run(n) for its Timer, fn(xs) -> outputs of len(xs) steps for the
    check or None); the torch module's outputs over xs; the stream timed."""
    torch.manual_seed(SEED)
    mod = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(INPUT, H).eval()
    sd = {k: v.detach().numpy().copy() for k, v in mod.state_dict().items()}
    rng = np.random.default_rng(SEED)
    x1 = rng.standard_normal((B, INPUT), dtype=np.float32)
    engines = {}

    # lstm_infer stream, and its bare C step
    m = (li.LSTM if kind == "lstm" else li.GRU).from_state_dict(sd)
    st = m.stream(batch_size=B)

    def li_check(xs):
        s = m.stream(batch_size=B)
        return np.stack([s(x[0] if B == 1 else x) for x in xs])
    engines["li"] = (calls(st, x1[0] if B == 1 else x1), li_check)
    engines["li-C"] = (lambda n: st._time_c_step(x1, n), None)

    # torch cell under inference_mode (main() runs everything inside one block)
    cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(INPUT, H).eval()
    cell.load_state_dict({k[:-3]: torch.from_numpy(v) for k, v in sd.items()})
    tx = torch.from_numpy(x1)
    zeros = torch.zeros(B, H)

    def torch_run(n):
        h, c = zeros, zeros
        t = time.perf_counter()
        if kind == "lstm":
            for _ in range(n):
                h, c = cell(tx, (h, c))
        else:
            for _ in range(n):
                h = cell(tx, h)
        return (time.perf_counter() - t) / n

    def torch_check(xs):
        with torch.inference_mode():
            h, c, out = zeros, zeros, []
            for x in xs:
                if kind == "lstm":
                    h, c = cell(torch.from_numpy(x), (h, c))
                else:
                    h = cell(torch.from_numpy(x), h)
                out.append(h.numpy().copy())
        return np.stack(out)
    engines["torch"] = (torch_run, torch_check)

    # ONNX Runtime, one step with state inputs
    if ort is not None:
        buf = io.BytesIO()
        h0 = torch.zeros(1, B, H)
        example = (torch.zeros(1, B, INPUT), (h0, h0) if kind == "lstm" else h0)
        names = ["X", "h0", "c0"] if kind == "lstm" else ["X", "h0"]
        outs = ["Y", "hn", "cn"] if kind == "lstm" else ["Y", "hn"]
        torch.onnx.export(mod, example, buf, input_names=names, output_names=outs,
                          dynamo=False, opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        state_names = names[1:]

        zero_state = {name: np.zeros((1, B, H), np.float32) for name in state_names}

        def ort_run(n):
            feeds = dict(zero_state, X=x1[None])
            t = time.perf_counter()
            for _ in range(n):
                r = sess.run(None, feeds)
                feeds.update(zip(state_names, r[1:]))
            return (time.perf_counter() - t) / n

        def ort_check(xs):
            feeds, out = dict(zero_state), []
            for x in xs:
                feeds["X"] = x[None]
                r = sess.run(None, feeds)
                feeds.update(zip(state_names, r[1:]))
                out.append(r[0][0])
            return np.stack(out)
        engines["ort"] = (ort_run, ort_check)

    # the reference: the torch module over the whole sequence
    def ref(xs):
        with torch.inference_mode():
            return mod(torch.from_numpy(xs))[0].numpy()
    return engines, ref


def sgemm_run():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    return calls(functools.partial(np.matmul, a), b)


def blas_step_run(kind, H, B):
    """The BLAS call of the step's bare matrix product at batch B (same flops)."""
    rng = np.random.default_rng(0)
    G = 4 if kind == "lstm" else 3
    a = rng.standard_normal((B, INPUT + H), dtype=np.float32)
    b = rng.standard_normal((INPUT + H, G * H), dtype=np.float32)
    return calls(functools.partial(np.matmul, a), b)


def time_case(kind, H, B, mods, args, sgemm):
    torch, ort, li = mods
    engines, ref = make_engines(kind, H, B, torch, ort, li)
    # check every engine on 20 steps against the torch module
    xs = np.random.default_rng(SEED + 1).standard_normal((20, B, INPUT), dtype=np.float32)
    want = ref(xs)
    diffs = {}
    for name, (_, check) in engines.items():
        if check is not None:
            got = check(xs).reshape(want.shape)
            diffs[name] = float(np.abs(got - want).max())
    timers = {name: Timer(run) for name, (run, _) in engines.items()}
    if B > 1 and sgemm is not None:
        timers["sgemm"] = Timer(sgemm)
        timers["blas-step"] = Timer(blas_step_run(kind, H, B))
    run_rounds(timers, args)
    res = {name: t.stat(args.stat) for name, t in timers.items()}
    li_t, c_t = timers["li"], timers["li-C"]
    res["overhead-range"] = [li_t.stat(args.stat, a) - c_t.stat(args.stat, b)
                             for a, b in zip(li_t.rounds, c_t.rounds)]
    return res, diffs


def time_module_calls(kind, H, li, args):
    """One-step module calls, batched and unbatched, interleaved round by round."""
    rng = np.random.default_rng(SEED)
    m = (li.LSTM if kind == "lstm" else li.GRU)(INPUT, H)
    x2 = rng.standard_normal((1, INPUT), dtype=np.float32)
    x3 = x2[:, None, :].copy()
    h2 = np.zeros((1, H), np.float32)
    h3 = h2[:, None, :].copy()
    hx2, hx3 = ((h2, h2), (h3, h3)) if kind == "lstm" else (h2, h3)
    y2, y3 = m(x2, hx2)[0], m(x3, hx3)[0]
    assert np.array_equal(y2, y3[:, 0]), "unbatched and batched calls differ"

    def module_calls(x, hx):
        def run(n):
            t = time.perf_counter()
            for _ in range(n):
                m(x, hx)
            return (time.perf_counter() - t) / n
        return run
    timers = {"batched": Timer(module_calls(x3, hx3)), "unbatched": Timer(module_calls(x2, hx2))}
    run_rounds(timers, args)
    return {name: t.stat(args.stat) for name, t in timers.items()}


def time_gil(li, args):
    """An LSTM 64->64 batch-1 step (~2 us) with the GIL held and released around
    C: alone (Timer samples), and with another thread running a Python loop
    (mean over --min-time/2 seconds per path, in alternating rounds; the other
    thread's loop rate alongside)."""
    from lstm_infer import _core
    st = li.LSTM(INPUT, 64).stream()
    x = np.random.default_rng(SEED).standard_normal(INPUT, dtype=np.float32)
    paths = {"held": float("inf"), "released": 0.0}

    def on_path(value, run):
        def r(n):
            before = _core._hold_gil_flops(value)
            try:
                return run(n)
            finally:
                _core._hold_gil_flops(before)
        return r
    timers = {name: Timer(on_path(v, calls(st, x))) for name, v in paths.items()}
    run_rounds(timers, args)
    alone = {name: t.stat(args.stat) for name, t in timers.items()}

    spins, stop = [0], threading.Event()

    def other():
        while not stop.is_set():
            spins[0] += 1
    busy = {name: [0.0, 0, 0] for name in paths}  # seconds, steps, other thread's loops
    t = threading.Thread(target=other)
    t.start()
    try:
        for rnd in range(2 * args.rounds):
            name = list(paths)[rnd % 2]
            before = _core._hold_gil_flops(paths[name])
            try:
                s0, t0, n = spins[0], time.perf_counter(), 0
                t_end = t0 + args.min_time / 2 / args.rounds
                while time.perf_counter() < t_end:
                    for _ in range(100):
                        st(x)
                    n += 100
                acc = busy[name]
                acc[0] += time.perf_counter() - t0
                acc[1] += n
                acc[2] += spins[0] - s0
            finally:
                _core._hold_gil_flops(before)
    finally:
        stop.set()
        t.join()
    return alone, {name: (sec / n, loops / sec) for name, (sec, n, loops) in busy.items()}


def fmt_us(s):
    return f"{s * 1e6:.2f}" if s < 1e-4 else f"{s * 1e6:.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short timings, fewer cases")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per engine per case, over all rounds (default 3, quick 0.4)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="the sample reported: the median (default) or the fastest")
    args = p.parse_args(argv)
    args.min_time = args.min_time or (0.4 if args.quick else 3.0)
    args.rounds = args.rounds or (2 if args.quick else 5)

    import torch
    import lstm_infer as li
    warnings.filterwarnings("ignore", module="torch")  # the legacy exporter's notes
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print("note: onnxruntime is not installed; its column is empty")
    torch.set_num_threads(1)
    li.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=1, user_api="blas")
    except ImportError:
        limiter = None
        print("note: threadpoolctl is missing: the SGEMM column is not limited to 1 thread")

    stat = "fastest samples" if args.stat == "min" else "medians"
    print(f"lstm_infer {li.__version__} ({li.get_isa()}), torch {torch.__version__}, "
          f"onnxruntime {ort.__version__ if ort else '-'}, numpy {np.__version__}; 1 thread; "
          f"input {INPUT}; times are {stat} per step, in microseconds")
    print()
    header = ("| cell | H | B | li st(x) | li C step | overhead | overhead range | torch cell | "
              "ORT step | torch/li | ORT/li | li GFLOP/s | SGEMM GFLOP/s | li/SGEMM | "
              "BLAS step/SGEMM | li/BLAS step | max diff |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    hs = (128,) if args.quick else (64, 128, 256)
    sgemm = sgemm_run()
    bad = False
    for kind in ("lstm", "gru"):
        for H in hs:
            for B in (1, 64):
                with torch.inference_mode():
                    res, diffs = time_case(kind, H, B, (torch, ort, li), args, sgemm)
                li_t, c_t = res["li"], res["li-C"]
                flops = step_flops(kind, H, B)
                lo, hi = min(res["overhead-range"]), max(res["overhead-range"])
                cells = [kind.upper(), str(H), str(B), fmt_us(li_t), fmt_us(c_t),
                         f"{(li_t - c_t) * 1e6:+.2f}", f"{lo * 1e6:+.2f} .. {hi * 1e6:+.2f}",
                         fmt_us(res["torch"]), fmt_us(res["ort"]) if "ort" in res else "-",
                         f"{res['torch'] / li_t:.1f}x",
                         f"{res['ort'] / li_t:.1f}x" if "ort" in res else "-",
                         f"{flops / li_t / 1e9:.1f}"]
                if "sgemm" in res:
                    rate = 2 * 1024 ** 3 / res["sgemm"] / 1e9
                    cells += [f"{rate:.1f}", f"{flops / li_t / 1e9 / rate:.0%}",
                              f"{res['sgemm'] / res['blas-step'] * flops / 2 / 1024 ** 3:.0%}",
                              f"{res['blas-step'] / li_t:.0%}"]
                else:
                    cells += ["-", "-", "-", "-"]
                worst = max(diffs.values())
                bad |= worst > 1e-4
                cells.append(f"{worst:.1e}")
                print("| " + " | ".join(cells) + " |", flush=True)
    print()
    print("| cell | H | m(x (1,1,I), hx) batched | m(x (1,I), hx) unbatched | unbatched/batched |")
    print("|---|---|---|---|---|")
    for kind in ("lstm", "gru"):
        res = time_module_calls(kind, 128, li, args)
        print(f"| {kind.upper()} | 128 | {fmt_us(res['batched'])} | {fmt_us(res['unbatched'])} | "
              f"{res['unbatched'] / res['batched']:.2f} |", flush=True)
    print()
    alone, busy = time_gil(li, args)
    print("| LSTM 64->64, B 1 | st(x) alone | st(x), another thread running Python (mean) | "
          "that thread's loops/s |")
    print("|---|---|---|---|")
    for name in ("held", "released"):
        print(f"| GIL {name} | {fmt_us(alone[name])} | {fmt_us(busy[name][0])} | "
              f"{busy[name][1] / 1e6:.2f} M |", flush=True)
    if limiter is not None:
        limiter.restore_original_limits()
    print()
    print(f"overhead = li st(x) - li C step: what Python (the loop and the call) and the binding "
          f"add to a step ({stat}); range: over the {args.rounds} rounds, each round's li minus its "
          f"li-C.")
    print("torch/li, ORT/li: how many times slower than st(x) the other engine's step is.")
    print("li/SGEMM: the batch-64 step's rate against NumPy's 1-thread 1024^3 SGEMM.")
    print("BLAS step/SGEMM: the same BLAS on the step's bare matrix product (no activations) "
          "against its 1024^3 rate; li/BLAS step: our whole step's rate against that product's.")
    print("GIL: stream calls under lstm_infer._core.HOLD_GIL_FLOPS keep it (this step does); "
          "the table forces each path.")
    if bad:
        print("ERROR: an engine disagreed with torch by more than 1e-4")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
