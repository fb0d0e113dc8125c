#!/usr/bin/env python3
"""Benchmark of streaming (model.stream()): the cost of one step, on 1 thread.

For LSTM and GRU, input 64, hidden 64/128/256, batch 1 and 64, each timed
engine does one step per call and carries the state to the next call:

  li        st(x), x (input,) at batch 1 or (64, input) at batch 64
  li-C      the bare C call of that step (no Python, no binding): the floor
            st(x) is measured against (its overhead = li - li-C)
  ort       ONNX Runtime running an nn.LSTM/nn.GRU exported with
            torch.onnx.export(dynamo=False) for one step, state fed in and
            read back each call
  torch     nn.LSTMCell / nn.GRUCell, everything in one torch.inference_mode() block
  sgemm     (batch 64 rows) NumPy float32 1024^3 matmul under threadpoolctl's
            1-thread BLAS limit: the rate a batch-64 step is compared with

A second table times the module call of one step with the state passed by the
caller, batched m(x (1, 1, input), hx (L, 1, H)) against unbatched
m(x (1, input), hx (L, H)), which must cost no more.

Engines are timed round by round (--rounds, rotated order): each round gives
every engine --min-time/--rounds seconds; a sample is the mean of a batch of
back-to-back calls lasting >= 2 ms; the result is the median sample. Before
timing, every engine's first 20 steps are checked against torch's nn module.

    python tools/bench_stream.py               # the full table (about 2 minutes)
    python tools/bench_stream.py --quick       # a smoke run
"""
import argparse
import functools
import gc
import io
import math
import statistics
import sys
import time
import warnings

import numpy as np

INPUT = 64
SEED = 1234


class Timer:
    BATCH_SECONDS = 2e-3

    def __init__(self, fn):
        self.fn, self.batch, self.samples = fn, 1, []

    def calibrate(self, warmup):
        t = time.perf_counter()
        self.fn()
        dt = time.perf_counter() - t
        self.batch = max(1, min(100_000, int(self.BATCH_SECONDS / max(dt, 1e-9))))
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            self.fn()

    def sample(self, seconds, min_samples=3):
        fn, batch, out = self.fn, self.batch, []
        gc.collect()
        gc.disable()
        try:
            t_end = time.perf_counter() + seconds
            while len(out) < min_samples or time.perf_counter() < t_end:
                t = time.perf_counter()
                for _ in range(batch):
                    fn()
                out.append((time.perf_counter() - t) / batch)
        finally:
            gc.enable()
        self.samples += out

    def median(self):
        return statistics.median(self.samples) if self.samples else math.nan


def step_flops(kind, H, B):
    G = 4 if kind == "lstm" else 3
    return 2.0 * G * H * (INPUT + H) * B


def make_engines(kind, H, B, torch, ort, li):
    """name -> (zero-arg step fn, fn(xs) -> outputs of len(xs) steps for the check)."""
    torch.manual_seed(SEED)
    mod = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(INPUT, H).eval()
    sd = {k: v.detach().numpy().copy() for k, v in mod.state_dict().items()}
    rng = np.random.default_rng(SEED)
    x1 = rng.standard_normal((B, INPUT), dtype=np.float32)
    engines = {}

    # lstm_infer stream
    m = (li.LSTM if kind == "lstm" else li.GRU).from_state_dict(sd)
    st = m.stream(batch_size=B)
    xs_li = x1[0] if B == 1 else x1

    def li_check(xs):
        s = m.stream(batch_size=B)
        return np.stack([s(x[0] if B == 1 else x) for x in xs])
    engines["li"] = (functools.partial(st, xs_li), li_check)

    engines["li-C"] = (None, None)  # the bare C step: timed by time_case

    # torch cell under inference_mode
    cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(INPUT, H).eval()
    cell.load_state_dict({k[:-3]: torch.from_numpy(v) for k, v in sd.items()})
    tx = torch.from_numpy(x1)
    state = {"h": torch.zeros(B, H), "c": torch.zeros(B, H)}

    # (main() runs everything inside one torch.inference_mode() block)
    if kind == "lstm":
        def torch_step():
            state["h"], state["c"] = cell(tx, (state["h"], state["c"]))
            return state["h"]
    else:
        def torch_step():
            state["h"] = cell(tx, state["h"])
            return state["h"]

    def torch_check(xs):
        with torch.inference_mode():
            h, c, out = torch.zeros(B, H), torch.zeros(B, H), []
            for x in xs:
                if kind == "lstm":
                    h, c = cell(torch.from_numpy(x), (h, c))
                else:
                    h = cell(torch.from_numpy(x), h)
                out.append(h.numpy().copy())
        return np.stack(out)
    engines["torch"] = (torch_step, torch_check)

    # ONNX Runtime, one step with state inputs
    if ort is not None:
        buf = io.BytesIO()
        h0 = torch.zeros(1, B, H)
        args = (torch.zeros(1, B, INPUT), (h0, h0) if kind == "lstm" else h0)
        names = ["X", "h0", "c0"] if kind == "lstm" else ["X", "h0"]
        outs = ["Y", "hn", "cn"] if kind == "lstm" else ["Y", "hn"]
        torch.onnx.export(mod, args, buf, input_names=names, output_names=outs,
                          dynamo=False, opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        feeds = {"X": x1[None], "h0": np.zeros((1, B, H), np.float32)}
        if kind == "lstm":
            feeds["c0"] = np.zeros((1, B, H), np.float32)

        def ort_step():
            r = sess.run(None, feeds)
            feeds["h0"] = r[1]
            if kind == "lstm":
                feeds["c0"] = r[2]
            return r[0]

        def ort_check(xs):
            f = {k: np.zeros_like(v) for k, v in feeds.items()}
            out = []
            for x in xs:
                f["X"] = x[None]
                r = sess.run(None, f)
                f["h0"] = r[1]
                if kind == "lstm":
                    f["c0"] = r[2]
                out.append(r[0][0])
            return np.stack(out)
        engines["ort"] = (ort_step, ort_check)

    # the reference: the torch module over the whole sequence
    def ref(xs):
        with torch.inference_mode():
            return mod(torch.from_numpy(xs))[0].numpy()
    return engines, ref, st, x1


def sgemm_fn():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    return lambda: a @ b


def time_case(kind, H, B, mods, args, sgemm):
    torch, ort, li = mods
    engines, ref, st, x1 = make_engines(kind, H, B, torch, ort, li)
    # check every engine on 20 steps against the torch module
    xs = np.random.default_rng(SEED + 1).standard_normal((20, B, INPUT), dtype=np.float32)
    want = ref(xs)
    diffs = {}
    for name, (_, check) in engines.items():
        if check is not None:
            got = check(xs).reshape(want.shape)
            diffs[name] = float(np.abs(got - want).max())
    timers = {name: Timer(fn) for name, (fn, _) in engines.items() if fn is not None}
    c_samples = []

    def c_step():  # a sample of the bare C step: one 2 ms run of the C loop
        n = max(1, int(Timer.BATCH_SECONDS / max(c_samples[-1] if c_samples else 1e-5, 1e-9)))
        c_samples.append(st._time_c_step(x1, n))

    if B > 1 and sgemm is not None:
        timers["sgemm"] = Timer(sgemm)
    for t in timers.values():
        t.calibrate(0.05 * args.min_time)
    names = list(timers) + ["li-C"]
    for rnd in range(args.rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(0.01)
            if name == "li-C":
                t_end = time.perf_counter() + args.min_time / args.rounds
                while time.perf_counter() < t_end or len(c_samples) < 3:
                    c_step()
            else:
                timers[name].sample(args.min_time / args.rounds)
    res = {name: t.median() for name, t in timers.items()}
    res["li-C"] = statistics.median(c_samples[1:] or c_samples)
    res["li-best"], res["li-C-best"] = min(timers["li"].samples), min(c_samples)
    return res, diffs


def time_module_calls(kind, H, li, args):
    """Medians of one-step module calls, batched and unbatched, interleaved round by round."""
    rng = np.random.default_rng(SEED)
    m = (li.LSTM if kind == "lstm" else li.GRU)(INPUT, H)
    x2 = rng.standard_normal((1, INPUT), dtype=np.float32)
    x3 = x2[:, None, :].copy()
    h2 = np.zeros((1, H), np.float32)
    h3 = h2[:, None, :].copy()
    hx2, hx3 = ((h2, h2), (h3, h3)) if kind == "lstm" else (h2, h3)
    y2, y3 = m(x2, hx2)[0], m(x3, hx3)[0]
    assert np.array_equal(y2, y3[:, 0]), "unbatched and batched calls differ"
    timers = {"batched": Timer(lambda: m(x3, hx3)), "unbatched": Timer(lambda: m(x2, hx2))}
    for t in timers.values():
        t.calibrate(0.05 * args.min_time)
    for rnd in range(args.rounds):
        for name in (list(timers) if rnd % 2 else list(timers)[::-1]):
            time.sleep(0.01)
            timers[name].sample(args.min_time / args.rounds / 2)
    return {name: t.median() for name, t in timers.items()}


def fmt_us(s):
    return f"{s * 1e6:.2f}" if s < 1e-4 else f"{s * 1e6:.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short timings, fewer cases")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per engine per case, over all rounds (default 3, quick 0.4)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
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

    print(f"lstm_infer {li.__version__} ({li.get_isa()}), torch {torch.__version__}, "
          f"onnxruntime {ort.__version__ if ort else '-'}, numpy {np.__version__}; 1 thread; "
          f"input {INPUT}; times are medians per step, in microseconds")
    print()
    header = ("| cell | H | B | li st(x) | li C step | overhead | overhead (best) | torch cell | "
              "ORT step | "
              "torch/li | ORT/li | li GFLOP/s | SGEMM GFLOP/s | li/SGEMM | max diff |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    hs = (128,) if args.quick else (64, 128, 256)
    sgemm = sgemm_fn()
    bad = False
    for kind in ("lstm", "gru"):
        for H in hs:
            for B in (1, 64):
                with torch.inference_mode():
                    res, diffs = time_case(kind, H, B, (torch, ort, li), args, sgemm)
                li_t, c_t = res["li"], res["li-C"]
                flops = step_flops(kind, H, B)
                cells = [kind.upper(), str(H), str(B), fmt_us(li_t), fmt_us(c_t),
                         f"{(li_t - c_t) * 1e6:+.2f}",
                         f"{(res['li-best'] - res['li-C-best']) * 1e6:+.2f}", fmt_us(res["torch"]),
                         fmt_us(res["ort"]) if "ort" in res else "-",
                         f"{res['torch'] / li_t:.1f}x",
                         f"{res['ort'] / li_t:.1f}x" if "ort" in res else "-",
                         f"{flops / li_t / 1e9:.1f}"]
                if "sgemm" in res:
                    rate = 2 * 1024 ** 3 / res["sgemm"] / 1e9
                    cells += [f"{rate:.1f}", f"{flops / li_t / 1e9 / rate:.0%}"]
                else:
                    cells += ["-", "-"]
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
    if limiter is not None:
        limiter.restore_original_limits()
    print()
    print("overhead = li st(x) - li C step: what Python and the binding add to a step "
          "(medians; 'best': fastest samples, less disturbed by other load on the machine).")
    print("torch/li, ORT/li: how many times slower than st(x) the other engine's step is.")
    print("li/SGEMM: the batch-64 step's rate against NumPy's 1-thread 1024^3 SGEMM.")
    if bad:
        print("ERROR: an engine disagreed with torch by more than 1e-4")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
