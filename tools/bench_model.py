#!/usr/bin/env python3
"""A whole text classifier end to end: lstm_infer's Sequential against PyTorch and
ONNX Runtime, and the share of our call spent outside the recurrent layers.

The model (the nlp case of tools/bench.py with an embedding and a head):
``Embedding(10000, 128, padding_idx=0) -> LSTM(128, 256, num_layers=2,
bidirectional=True) -> final (h_n[-2], h_n[-1] concatenated) -> Linear(512, 5)
-> Softmax``, weights from a seeded torch model saved with torch.save and read
back by ``li.read_state_dict``. Input: a batch of B=32 token-id sequences, lengths
uniform in [T/4, T] with one of length T (T=60), zero-padded, time-first.

Engines (same weights, inputs and thread count, one process):

  lstm_infer  ``model(ids, lengths=lengths)`` of ``li.Sequential.from_state_dict(sd,
              "embedding > lstm > final > fc > softmax")``
  lstm-only   the model's LSTM layer alone on the embedded batch, same lengths: what
              the recurrent layers cost; ``1 - lstm-only / lstm_infer`` is the share of
              our call spent outside them (embedding gather, readout, head, checks)
  torch       under ``torch.inference_mode()``: embedding -> ``pack_padded_sequence(
              enforce_sorted=False)`` -> nn.LSTM -> cat(h_n[-2], h_n[-1]) -> fc -> softmax
  onnxruntime the same torch model on the padded batch exported by ``torch.onnx.export``
              (TorchScript exporter, opset 17: Gather, one LSTM op per layer, Concat,
              Gemm, Softmax), with a graph input ``lengths`` (int32) wired into every
              LSTM op's ``sequence_lens``, so ONNX Runtime runs each sequence to its own
              length and Y_h is each sequence's own final state. (A model that calls
              pack_padded_sequence does not export: the exporter cannot trace
              PackedSequence; the padded model with sequence_lens is the same network.)

Before timing, each engine's output is compared with torch's (tolerance 1e-5 for
ours, 1e-4 for ONNX Runtime). Timing: per thread count, ``--rounds`` interleaved
rounds (engines in rotated order) of at least ``--min-time / rounds`` seconds each;
the median per call over all samples and the ratios come from this one run.

    python tools/bench_model.py                      # threads 1 and 2
    python tools/bench_model.py --quick --threads 1  # smoke run
"""

import argparse
import io
import math
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)

import lstm_infer as li  # noqa: E402
from bench import Timer, cpu_model, usable_cpus, wire_sequence_lens  # noqa: E402

V, E, H, L, C = 10000, 128, 256, 2, 5
T, B = 60, 32
PIPELINE = "embedding > lstm > final > fc > softmax"
SEED = 1234
TOLERANCE = {"lstm_infer": 1e-5, "onnxruntime": 1e-4}
ENGINES = ["lstm_infer", "lstm-only", "torch", "onnxruntime"]


def make_torch_model(torch):
    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, E, padding_idx=0)
            self.lstm = torch.nn.LSTM(E, H, L, bidirectional=True)
            self.fc = torch.nn.Linear(2 * H, C)
            self.softmax = torch.nn.Softmax(dim=-1)

        def forward(self, ids, lengths=None):
            """ids (T, B) int64; with lengths the packed call, else the padded one."""
            x = self.embedding(ids)
            if lengths is not None:
                x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            _, (h_n, _) = self.lstm(x)
            return self.softmax(self.fc(torch.cat([h_n[-2], h_n[-1]], dim=1)))

    torch.manual_seed(SEED)
    return Classifier().eval()


def make_batch():
    rng = np.random.default_rng(SEED + 1)
    lengths = rng.integers(T // 4, T + 1, B).astype(np.int64)
    lengths[rng.integers(B)] = T
    ids = rng.integers(1, V, (T, B)).astype(np.int64)
    ids[np.arange(T)[:, None] >= lengths[None, :]] = 0
    return ids, lengths


def export_onnx(torch, net, ids):
    """The padded model as ONNX bytes, every LSTM op given the graph input ``lengths``."""
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(net, (torch.from_numpy(ids),), buf, dynamo=False, input_names=["ids"],
                          output_names=["probs"], opset_version=17,
                          dynamic_axes={"ids": {0: "T", 1: "B"}, "probs": {0: "B"}})
    model = onnx.load_from_string(buf.getvalue())
    lstms = [n for n in model.graph.node if n.op_type == "LSTM"]
    if len(lstms) != L:
        raise RuntimeError(f"torch.onnx.export made {len(lstms)} LSTM ops, not {L}")
    wire_sequence_lens(model, lstms, "lengths", ["B"])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build(threads, torch, ort, onnx_bytes, model, net, ids, lengths):
    """name -> a function running one call (the batch fixed)."""
    li.set_num_threads(threads)
    fns = {"lstm_infer": lambda: model(ids, lengths=lengths)}
    layers = dict(model.layers)
    lstm = layers["lstm"]
    emb = np.ascontiguousarray(layers["embedding"](ids))
    fns["lstm-only"] = lambda: lstm(emb, lengths=lengths)
    torch.set_num_threads(threads)
    tids, tlens = torch.from_numpy(ids), torch.from_numpy(lengths)

    def run_torch():
        with torch.inference_mode():
            return net(tids, tlens)
    fns["torch"] = run_torch
    if ort is not None and onnx_bytes is not None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        feeds = {"ids": ids, "lengths": lengths.astype(np.int32)}
        fns["onnxruntime"] = lambda: sess.run(None, feeds)[0]
    return fns


def check(fns):
    """Max abs difference of each engine's probabilities from torch's; exits on a
    disagreement."""
    out = {}
    for name in ("torch", "lstm_infer", "onnxruntime"):
        if name in fns:
            res = fns[name]()
            out[name] = res.numpy() if hasattr(res, "numpy") else np.asarray(res)
    diffs = {}
    for name, y in out.items():
        diffs[name] = float(np.max(np.abs(y - out["torch"])))
        if name != "torch" and diffs[name] > TOLERANCE[name]:
            raise SystemExit(f"ERROR: {name} disagrees with torch: max abs diff {diffs[name]:.2e}")
    return diffs


def time_engines(fns, args):
    timers = {name: Timer(fn) for name, fn in fns.items()}
    for timer in timers.values():
        timer.calibrate(0.1 * args.min_time)
    names = list(timers)
    per_round = args.min_time / args.rounds
    min_samples = max(1, math.ceil(args.min_calls / args.rounds))
    for rnd in range(args.rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(args.settle)
            timers[name].sample(per_round, min_samples)
    return {name: (t.median(), t.spread()) for name, t in timers.items()}


def fmt(s):
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} µs"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default=",".join(str(n) for n in sorted({1, usable_cpus()})),
                    help="comma-separated thread counts (default 1 and all usable CPUs)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per engine and thread count")
    ap.add_argument("--min-calls", type=int, default=10)
    ap.add_argument("--settle", type=float, default=0.05, help="pause before each engine's turn (s)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.3 s per engine, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.min_time, args.rounds, args.min_calls = 0.3, 1, 1
    wanted = set(args.engines.split(","))
    unknown = wanted - set(ENGINES)
    if unknown:
        ap.error(f"unknown engines {sorted(unknown)} (known: {', '.join(ENGINES)})")

    try:
        import torch
        torch.set_num_interop_threads(1)
    except ImportError:
        raise SystemExit("bench_model needs torch (the weights come from a torch model)")
    ort = None
    if "onnxruntime" in wanted:
        try:
            import onnxruntime as ort
            ort.set_default_logger_severity(3)
        except ImportError as exc:
            print(f"note: skipping onnxruntime: {exc}")

    net = make_torch_model(torch)
    ids, lengths = make_batch()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "classifier.pt")
        torch.save(net.state_dict(), path)
        model = li.Sequential.from_state_dict(li.read_state_dict(path), PIPELINE)
    onnx_bytes = None
    if ort is not None:
        try:
            onnx_bytes = export_onnx(torch, net, ids)
        except Exception as exc:  # noqa: BLE001 - reported, the other engines still run
            print(f"note: onnxruntime not run: the export failed: {type(exc).__name__}: {exc}")

    print(f"Machine: {cpu_model()}, {usable_cpus()} usable CPUs, {platform.system()} {platform.machine()}; "
          f"Python {platform.python_version()}")
    print(f"Versions: lstm_infer {li.__version__} (kernels: {li.get_isa()}), torch {torch.__version__}"
          + (f", onnxruntime {ort.__version__}" if ort is not None else "") + f", numpy {np.__version__}")
    print(f"Model: {PIPELINE}: Embedding({V}, {E}, padding_idx=0), LSTM({E}, {H}, num_layers={L}, "
          f"bidirectional=True), Linear({2 * H}, {C}); batch B={B}, T<={T} ragged "
          f"({int(lengths.sum())} tokens), time-first token ids")
    print(f"Timing: {args.rounds} interleaved round(s), >= {args.min_time:g} s and >= {args.min_calls} "
          f"calls per engine; median per call\n")

    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        fns = build(threads, torch, ort, onnx_bytes, model, net, ids, lengths)
        diffs = check(fns)  # against torch even when it is not timed
        fns = {k: v for k, v in fns.items() if k in wanted or k == "lstm_infer"}
        rows.append((threads, time_engines(fns, args), diffs))

    names = [n for n in ENGINES if any(n in r[1] for r in rows)]
    print("| threads | " + " | ".join(names) + " | vs torch | vs ORT | outside recurrent layers |")
    print("|---:|" + "---:|" * (len(names) + 3))
    for threads, med, _ in rows:
        ours = med["lstm_infer"][0]
        cells = [fmt(med[n][0]) + ("" if math.isnan(med[n][1]) else f" ±{100 * med[n][1]:.0f}%")
                 if n in med else "-" for n in names]
        vs = [f"{med[n][0] / ours:.2f}×" if n in med else "-" for n in ("torch", "onnxruntime")]
        share = f"{100 * (1 - med['lstm-only'][0] / ours):.1f}%" if "lstm-only" in med else "-"
        print(f"| {threads} | " + " | ".join(cells) + " | " + " | ".join(vs) + f" | {share} |")
    print("\nvs torch / vs ORT: their median time over ours (> 1: we are faster). Outside the "
          "recurrent layers: 1 - (LSTM layer alone) / (whole model), target <= 10%.")
    diffs = rows[-1][2]
    print("Agreement with torch (max abs difference of the probabilities): "
          + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items() if n != "torch"))


if __name__ == "__main__":
    main()
