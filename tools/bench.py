#!/usr/bin/env python3
"""Benchmark lstm_infer against PyTorch, ONNX Runtime and OpenVINO, on LSTM
and GRU cases.

All engines run in this one process on the same weights and inputs, at the
same thread count.  Before anything is timed, every engine's result is checked
against PyTorch (the ground truth; lstm_infer stands in when torch is missing)
over the valid positions of output, h_n and (LSTM) c_n.  A disagreement is
printed, marked in the tables and makes the script exit with status 1.

    python tools/bench.py --markdown            # all cases, 1 and 2 threads
    python tools/bench.py --quick               # smoke run, under a minute
    python tools/bench.py --cases nlp,server --threads 1 --engines li,torch
    python tools/bench.py --quick --cases gru-edge --engines torch,ort,ov

See tools/README.md for what is measured and how.
"""

import argparse
import gc
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    T: int             # sequence length (max, when ragged)
    B: int             # batch size
    I: int             # input width
    H: int             # hidden width
    L: int             # stacked layers
    bidir: bool
    ragged: bool       # per-sequence lengths, uniform in [T//4, T], one of length T
    hx: bool = False   # pass an initial (h0, c0), or h0 for a GRU
    note: str = ""
    kind: str = "lstm"  # "lstm" (nn.LSTM) or "gru" (nn.GRU)

    @property
    def D(self):
        return 2 if self.bidir else 1

    @property
    def G(self):
        """Gates per hidden unit: i, f, g, o for the LSTM, r, z, n for the GRU."""
        return GATES[self.kind]

    @property
    def outputs(self):
        """The names of the results: output, h_n and, for the LSTM, c_n."""
        return ("output", "h_n", "c_n") if self.kind == "lstm" else ("output", "h_n")

    def shape(self):
        return (("" if self.kind == "lstm" else self.kind.upper() + " ")
                + f"T{self.T} B{self.B} I{self.I} H{self.H} L{self.L} "
                f"{'bi' if self.bidir else 'uni'}"
                f"{' ragged' if self.ragged else ''}{' hx' if self.hx else ''}")


GATES = {"lstm": 4, "gru": 3}
CASES = [
    Case("tiny",   20,   1,  16,  32, 1, False, False, note="call overhead"),
    Case("step",    1,   1, 128, 128, 1, False, False, hx=True,
         note="one streaming step per call"),
    Case("edge",  200,   1,  64, 128, 1, False, False),
    Case("wide",  100,   1, 512, 512, 2, False, False),
    Case("nlp",    60,  32, 128, 256, 2, True,  True),
    Case("server", 100, 64, 512, 512, 2, True,  True),
    Case("big",    50, 256, 256, 256, 1, False, True),
    Case("gru-edge", 200, 1, 64, 128, 1, False, False, kind="gru"),
    Case("gru-nlp",   60, 32, 128, 256, 2, True,  True, kind="gru"),
]
CASES_BY_NAME = {c.name: c for c in CASES}

ENGINES = ["lstm_infer", "torch", "onnxruntime", "openvino",
           "lstm_infer_f16", "lstm_infer_i8", "onnxruntime_i8"]
ENGINE_ALIASES = {"li": "lstm_infer", "pytorch": "torch", "ort": "onnxruntime",
                  "ov": "openvino", "li-f16": "lstm_infer_f16", "li-i8": "lstm_infer_i8",
                  "ort-i8": "onnxruntime_i8"}
OURS = "lstm_infer"
# Reduced-precision engines: our weights="float16" / "int8", and ONNX Runtime's
# int8 LSTM (quantize_dynamic -> DynamicQuantizeLSTM). They are not in the
# float32 speed-up; they get columns of their own.
REDUCED = {"lstm_infer_f16": "float16", "lstm_infer_i8": "int8", "onnxruntime_i8": "int8"}
# Max abs difference allowed against the reference (torch), per engine. The
# reduced ones are reported, not judged, up to what int8 can be expected to do
# (ORT's int8 measured 1.7e-1 on edge).
TOLERANCE = {"lstm_infer": 1e-5, "torch": 1e-5, "onnxruntime": 1e-4, "openvino": 1e-4,
             "lstm_infer_f16": 2e-3, "lstm_infer_i8": 5e-2, "onnxruntime_i8": 1.0}
SEED = 1234


# --------------------------------------------------------------------------
# Data: one torch-initialised state_dict and one input set per case
# --------------------------------------------------------------------------

@dataclass
class CaseData:
    sd: dict           # torch key -> float32 numpy array
    x: np.ndarray      # (T, B, I) float32
    hx: object         # LSTM: ((L*D, B, H), (L*D, B, H)); GRU: (L*D, B, H); or None
    lengths: np.ndarray  # (B,) int64, or None when all sequences are full
    valid_tokens: int


def make_case_data(case, torch):
    """Weights from a seeded torch nn.LSTM / nn.GRU (uniform +-1/sqrt(H)); inputs
    from numpy."""
    if torch is not None:
        torch.manual_seed(SEED)
        ref = torch_class(torch, case)(case.I, case.H, case.L, bidirectional=case.bidir)
        sd = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    else:  # same distribution, without torch
        rng = np.random.default_rng(SEED)
        bound = 1.0 / math.sqrt(case.H)
        sd = {}
        for layer in range(case.L):
            in_l = case.I if layer == 0 else case.D * case.H
            for sfx in ["", "_reverse"][:case.D]:
                for key, shape in [("weight_ih", (case.G * case.H, in_l)),
                                   ("weight_hh", (case.G * case.H, case.H)),
                                   ("bias_ih", (case.G * case.H,)),
                                   ("bias_hh", (case.G * case.H,))]:
                    sd[f"{key}_l{layer}{sfx}"] = rng.uniform(
                        -bound, bound, shape).astype(np.float32)

    rng = np.random.default_rng(SEED + 1)
    x = rng.standard_normal((case.T, case.B, case.I), dtype=np.float32)
    hx = None
    if case.hx:
        shape = (case.L * case.D, case.B, case.H)
        hx = tuple(0.5 * rng.standard_normal(shape, dtype=np.float32)
                   for _ in case.outputs[1:])
        hx = hx if case.kind == "lstm" else hx[0]
    lengths = None
    valid = case.T * case.B
    if case.ragged:
        lengths = rng.integers(case.T // 4, case.T + 1, size=case.B).astype(np.int64)
        lengths[rng.integers(case.B)] = case.T
        valid = int(lengths.sum())
    return CaseData(sd, x, hx, lengths, valid)


def case_flops(case, valid_tokens):
    """2*G*H*(in_l + H) flops per valid token, per layer and direction (G gates:
    4 for the LSTM, 3 for the GRU)."""
    per_token = 0
    for layer in range(case.L):
        in_l = case.I if layer == 0 else case.D * case.H
        per_token += case.D * 2 * case.G * case.H * (in_l + case.H)
    return per_token * valid_tokens


def torch_class(torch, case):
    return torch.nn.LSTM if case.kind == "lstm" else torch.nn.GRU


# --------------------------------------------------------------------------
# Engines.  Each make_* returns a zero-argument callable doing exactly one
# user-level call on prepared inputs and returning (output, h_n, c_n) for an
# LSTM case, (output, h_n) for a GRU case, where output is (T, B, D*H) and
# h_n, c_n are (L*D, B, H), in any array type np.asarray understands.
# --------------------------------------------------------------------------

def unsupported(name, mod, case):
    """Why engine `name` cannot run this case (it is then skipped, not failed),
    or "" when it can."""
    if name.startswith("lstm_infer") and case.kind == "gru" and not hasattr(mod, "GRU"):
        return "this lstm_infer has no GRU"
    if name == "onnxruntime_i8" and case.kind == "gru":
        return "ONNX Runtime has no int8 GRU (quantize_dynamic leaves GRU in float32)"
    if name in ("onnxruntime", "openvino", "onnxruntime_i8") and case.kind == "gru":
        try:
            import torch  # noqa: F401  (the GRU graph is torch.onnx.export's)
        except Exception as e:  # noqa: BLE001
            return f"the GRU graph needs torch.onnx.export ({type(e).__name__})"
    return ""


def make_lstm_infer(li, case, data, threads, weights="float32"):
    li.set_num_threads(threads)
    got = li.get_num_threads() if hasattr(li, "get_num_threads") else threads
    if got != threads:
        raise RuntimeError(f"li.set_num_threads({threads}) left {got} threads")
    x, hx, lengths = data.x, data.hx, data.lengths
    # only reduced weights pass weights=, so any lstm_infer runs the float32 rows
    kw = {} if weights == "float32" else {"weights": weights}
    if case.kind == "gru":
        m = li.GRU.from_state_dict(data.sd, **kw)

        def run():
            return m(x, hx=hx, lengths=lengths)
        return run
    m = li.LSTM.from_state_dict(data.sd, **kw)

    def run():
        out, (h, c) = m(x, hx=hx, lengths=lengths)
        return out, h, c
    return run


def make_torch(torch, case, data, threads):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.set_num_threads(threads)
    m = torch_class(torch, case)(case.I, case.H, case.L, bidirectional=case.bidir)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in data.sd.items()})
    m.eval()
    x = torch.from_numpy(data.x)
    hx = None
    if data.hx is not None:
        hx = (tuple(torch.from_numpy(a) for a in data.hx) if case.kind == "lstm"
              else torch.from_numpy(data.hx))
    T = case.T
    # (h, c) for the LSTM, h for the GRU: returned as a flat tuple
    flat = (lambda st: st) if case.kind == "lstm" else (lambda st: (st,))

    if data.lengths is None:
        def run():
            with torch.inference_mode():
                out, st = m(x, hx)
            return (out,) + flat(st)
    else:
        lengths = torch.from_numpy(data.lengths)

        def run():
            with torch.inference_mode():
                packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
                out, st = m(packed, hx)
                out, _ = pad_packed_sequence(out, total_length=T)
            return (out,) + flat(st)
    return run


# Torch packs the four gate blocks of weight_ih/weight_hh/biases as i, f, g, o;
# the ONNX LSTM op wants i, o, f, c (c == torch's g).
TORCH_TO_ONNX_GATES = [0, 3, 1, 2]


def _onnx_gates(w, H):
    blocks = w.reshape(4, H, *w.shape[1:])
    return blocks[TORCH_TO_ONNX_GATES].reshape(w.shape)


def build_onnx_model(case, data):
    """A stack of ONNX LSTM ops with the case's weights, serialized to bytes.

    Inputs: X (T, B, I); sequence_lens (B,) int32 when ragged; initial_h and
    initial_c (L*D, B, H) when the case has hx.  Outputs match torch:
    output (T, B, D*H), h_n and c_n (L*D, B, H).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    T, B, H, L, D = case.T, case.B, case.H, case.L, case.D
    f32 = TensorProto.FLOAT
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    inputs = [helper.make_tensor_value_info("X", f32, [T, B, case.I])]
    seq_lens = ""
    if data.lengths is not None:
        seq_lens = "sequence_lens"
        inputs.append(helper.make_tensor_value_info(seq_lens, TensorProto.INT32, [B]))
    if data.hx is not None:
        for name in ("initial_h", "initial_c"):
            inputs.append(helper.make_tensor_value_info(name, f32, [L * D, B, H]))
    const("y_shape", np.array([0, 0, D * H], dtype=np.int64))

    layer_in, h_outs, c_outs = "X", [], []
    for layer in range(L):
        sfx = ["", "_reverse"][:D]
        sd = data.sd
        W = np.stack([_onnx_gates(sd[f"weight_ih_l{layer}{s}"], H) for s in sfx])
        R = np.stack([_onnx_gates(sd[f"weight_hh_l{layer}{s}"], H) for s in sfx])
        Bias = np.stack([np.concatenate([_onnx_gates(sd[f"bias_ih_l{layer}{s}"], H),
                                         _onnx_gates(sd[f"bias_hh_l{layer}{s}"], H)])
                         for s in sfx])
        init_h = init_c = ""
        if data.hx is not None:  # this layer's slice [layer*D, (layer+1)*D)
            starts = const(f"start{layer}", np.array([layer * D], dtype=np.int64))
            ends = const(f"end{layer}", np.array([(layer + 1) * D], dtype=np.int64))
            init_h, init_c = f"h0_l{layer}", f"c0_l{layer}"
            nodes.append(helper.make_node("Slice", ["initial_h", starts, ends], [init_h]))
            nodes.append(helper.make_node("Slice", ["initial_c", starts, ends], [init_c]))
        y, h, c = f"Y_l{layer}", f"h_l{layer}", f"c_l{layer}"
        nodes.append(helper.make_node(
            "LSTM",
            [layer_in, const(f"W{layer}", W), const(f"R{layer}", R),
             const(f"B{layer}", Bias), seq_lens, init_h, init_c],
            [y, h, c],
            hidden_size=H, direction="bidirectional" if D == 2 else "forward"))
        # Y is (T, D, B, H); the next layer (and torch) want (T, B, D*H).
        yt = f"Yt_l{layer}"
        layer_out = "output" if layer == L - 1 else f"X_l{layer + 1}"
        nodes.append(helper.make_node("Transpose", [y], [yt], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [yt, "y_shape"], [layer_out]))
        layer_in = layer_out
        h_outs.append(h)
        c_outs.append(c)

    for name, parts in (("h_n", h_outs), ("c_n", c_outs)):
        if len(parts) == 1:
            nodes.append(helper.make_node("Identity", parts, [name]))
        else:
            nodes.append(helper.make_node("Concat", parts, [name], axis=0))

    outputs = [helper.make_tensor_value_info("output", f32, [T, B, D * H]),
               helper.make_tensor_value_info("h_n", f32, [L * D, B, H]),
               helper.make_tensor_value_info("c_n", f32, [L * D, B, H])]
    graph = helper.make_graph(nodes, f"lstm_{case.name}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="lstm_infer-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_onnx_gru(case, data):
    """The case's nn.GRU exported by torch.onnx.export (the TorchScript
    exporter: one ONNX GRU op per layer), serialized to bytes.

    Every GRU op must have linear_before_reset=1: torch's formula
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); ONNX's default (0) puts r
    inside the matrix product.  The export is of the padded call; for a
    ragged case a graph input sequence_lens (B,) int32 is wired into every GRU
    op (the LSTM graph does the same), so ONNX Runtime and OpenVINO run the
    per-sequence lengths themselves.  Inputs X (T, B, I) [, initial_h
    (L*D, B, H)] [, sequence_lens]; outputs output (T, B, D*H), h_n (L*D, B, H).
    """
    import io
    import warnings

    import onnx
    import torch
    from onnx import TensorProto, helper

    m = torch.nn.GRU(case.I, case.H, case.L, bidirectional=case.bidir)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in data.sd.items()})
    m.eval()
    args, names = (torch.from_numpy(data.x),), ["X"]
    if data.hx is not None:
        args += (torch.from_numpy(data.hx),)
        names.append("initial_h")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notes
        torch.onnx.export(m, args, buf, dynamo=False, input_names=names,
                          output_names=["output", "h_n"], opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    grus = [n for n in model.graph.node if n.op_type == "GRU"]
    if len(grus) != case.L:
        raise RuntimeError(f"torch.onnx.export made {len(grus)} GRU ops, not {case.L}")
    for node in grus:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("linear_before_reset", 0) != 1:
            raise RuntimeError(f"exported GRU op {node.name} has linear_before_reset="
                               f"{attrs.get('linear_before_reset', 0)}, not torch's 1")
    if data.lengths is not None:
        wire_sequence_lens(model, grus, "sequence_lens", [case.B])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def wire_sequence_lens(model, nodes, name, shape):
    """Adds an int32 graph input `name` and feeds it to each recurrent op's
    sequence_lens (its 5th input), which torch.onnx.export leaves empty."""
    from onnx import TensorProto, helper
    model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.INT32, shape))
    for node in nodes:
        ins = list(node.input) + [""] * (5 - len(node.input))
        if ins[4]:
            raise RuntimeError(f"exported {node.op_type} op {node.name} already has sequence_lens")
        ins[4] = name
        del node.input[:]
        node.input.extend(ins)


def _onnx_feeds(data):
    feeds = {"X": data.x}
    if data.lengths is not None:
        feeds["sequence_lens"] = data.lengths.astype(np.int32)
    if isinstance(data.hx, tuple):
        feeds["initial_h"], feeds["initial_c"] = data.hx
    elif data.hx is not None:
        feeds["initial_h"] = data.hx
    return feeds


def make_onnxruntime(ort, onnx_bytes, data, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    feeds = _onnx_feeds(data)

    def run():
        return sess.run(None, feeds)
    return run


def quantize_onnx_int8(onnx_bytes):
    """The float32 LSTM graph through onnxruntime.quantization.quantize_dynamic
    (int8 weights, activations quantized per call): LSTM becomes
    DynamicQuantizeLSTM."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "i8.onnx")
        with open(src, "wb") as f:
            f.write(onnx_bytes)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        model = onnx.load(dst)
    ops = {n.op_type for n in model.graph.node}
    if "DynamicQuantizeLSTM" not in ops:
        raise RuntimeError(f"quantize_dynamic made no DynamicQuantizeLSTM (ops: {sorted(ops)})")
    return model.SerializeToString()


OPENVINO_CONFIG = {
    "NUM_STREAMS": 1,                  # one request at a time, like the others
    "PERFORMANCE_HINT": "LATENCY",
    "INFERENCE_PRECISION_HINT": "f32",  # no bf16/f16 downcast on CPUs that have it
    "ENABLE_CPU_PINNING": False,       # don't pin threads the other engines share
}


def make_openvino(ov, onnx_bytes, case, data, threads):
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lstm.onnx")
        with open(path, "wb") as f:
            f.write(onnx_bytes)
        model = core.read_model(path)
    config = dict(OPENVINO_CONFIG, INFERENCE_NUM_THREADS=threads)
    supported = core.get_property("CPU", "SUPPORTED_PROPERTIES")
    config = {k: v for k, v in config.items() if k in supported}
    compiled = core.compile_model(model, "CPU", config)
    # Make sure the settings that matter for a fair comparison took effect.
    got = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    if got != threads:
        raise RuntimeError(f"OpenVINO runs {got} threads, not {threads}")
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    if "f32" not in precision and "float32" not in precision:
        raise RuntimeError(f"OpenVINO inference precision is {precision}, not f32")
    # Outputs by name (an output can carry several names once Identity is folded).
    names = [o.get_names() for o in compiled.outputs]
    order = [next(i for i, n in enumerate(names) if want in n)
             for want in case.outputs]
    request = compiled.create_infer_request()
    feeds = _onnx_feeds(data)

    def run():
        res = request.infer(feeds).to_tuple()
        return tuple(res[i] for i in order)
    return run


# --------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------

def as_numpy(result):
    """(output, h_n[, c_n]) of any engine as fresh float32 NumPy arrays."""
    return tuple(np.array(np.asarray(a), dtype=np.float32, copy=True) for a in result)


def max_abs_diff(result, ref, lengths):
    """Max abs difference over the valid positions of output, and over h_n
    (and c_n for an LSTM).

    inf when the number or shapes of results differ; NaN anywhere gives NaN
    (which fails every check).
    """
    if len(result) != len(ref) or any(a.shape != b.shape for a, b in zip(result, ref)):
        return math.inf
    out, r_out = result[0], ref[0]
    d = np.abs(out - r_out)
    if lengths is not None:
        valid = np.arange(out.shape[0])[:, None] < lengths[None, :]   # (T, B)
        d = d[valid]
    parts = [d.max(initial=0.0)] + [np.abs(a - b).max(initial=0.0)
                                    for a, b in zip(result[1:], ref[1:])]
    if any(math.isnan(p) for p in parts):
        return math.nan
    return float(max(parts))


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------

class Timer:
    """Collects per-call times of one engine's run() over several rounds.

    A sample is the mean time of `batch` back-to-back calls; cheap calls are
    batched so that a sample lasts >= BATCH_SECONDS and the clock's own cost
    and resolution don't matter.  The result is the median over all samples.
    """
    BATCH_SECONDS = 2e-3

    def __init__(self, fn):
        self.fn = fn
        self.batch = 1
        self.samples = []

    def calibrate(self, warmup_seconds, first_call=None):
        """Warm up and choose the batch size.  The first call (done by the
        caller for the check) is the first warm-up.  A call slower than a
        batch is kept as a sample: it was warm, and more would cost seconds.
        With first_call (its duration; --quick) a slow first call is taken as
        the warm-up and calibration call instead of making another one."""
        if first_call is not None and first_call >= max(warmup_seconds, self.BATCH_SECONDS):
            dt = first_call
        else:
            t = time.perf_counter()
            self.fn()
            dt = time.perf_counter() - t
        if dt >= self.BATCH_SECONDS:
            self.samples.append(dt)
        self.batch = max(1, min(100_000, int(self.BATCH_SECONDS / max(dt, 1e-9))))
        t_end = time.perf_counter() + warmup_seconds
        while time.perf_counter() < t_end and dt < warmup_seconds:
            self.fn()

    def sample(self, seconds, min_samples):
        fn, batch, samples = self.fn, self.batch, []
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            t_end = time.perf_counter() + seconds
            while len(samples) < min_samples or time.perf_counter() < t_end:
                t = time.perf_counter()
                for _ in range(batch):
                    fn()
                samples.append((time.perf_counter() - t) / batch)
        finally:
            if gc_was_enabled:
                gc.enable()
        self.samples += samples

    def median(self):
        return statistics.median(self.samples) if self.samples else math.nan

    def spread(self):
        """Half the interquartile range, relative to the median."""
        if len(self.samples) < 4:
            return math.nan
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / 2 / self.median()

    def calls(self):
        return len(self.samples) * self.batch


# --------------------------------------------------------------------------
# Machine: CPU model and the NumPy SGEMM ceiling
# --------------------------------------------------------------------------

# FMA units per core of x86 families we know: (vendor, family, first model, last model) ->
# pipes x width. Anything else prints "FMA pipes unknown" rather than a guess.
FMA_PIPES = [
    ("AuthenticAMD", 0x17, 0x00, 0x2f, "2×128-bit (Zen, Zen+: a 256-bit FMA takes both)"),
    ("AuthenticAMD", 0x17, 0x30, 0xff, "2×256-bit (Zen 2)"),
    ("AuthenticAMD", 0x19, 0x00, 0x0f, "2×256-bit (Zen 3)"),
    ("AuthenticAMD", 0x19, 0x20, 0x5f, "2×256-bit (Zen 3)"),
    ("AuthenticAMD", 0x19, 0x10, 0x1f, "2×256-bit (Zen 4; AVX-512 as two halves)"),
    ("AuthenticAMD", 0x19, 0x60, 0xaf, "2×256-bit (Zen 4; AVX-512 as two halves)"),
    ("AuthenticAMD", 0x1a, 0x00, 0xff, "2×512-bit (Zen 5; 2×256-bit on some mobile parts)"),
    ("GenuineIntel", 0x06, 0x3c, 0x3c, "2×256-bit (Haswell)"),
    ("GenuineIntel", 0x06, 0x3f, 0x3f, "2×256-bit (Haswell)"),
    ("GenuineIntel", 0x06, 0x45, 0x46, "2×256-bit (Haswell)"),
    ("GenuineIntel", 0x06, 0x3d, 0x3d, "2×256-bit (Broadwell)"),
    ("GenuineIntel", 0x06, 0x47, 0x47, "2×256-bit (Broadwell)"),
    ("GenuineIntel", 0x06, 0x4e, 0x4e, "2×256-bit (Skylake)"),
    ("GenuineIntel", 0x06, 0x5e, 0x5e, "2×256-bit (Skylake)"),
    ("GenuineIntel", 0x06, 0x8e, 0x8e, "2×256-bit (Kaby/Coffee Lake)"),
    ("GenuineIntel", 0x06, 0x9e, 0x9e, "2×256-bit (Kaby/Coffee Lake)"),
]


def cpu_model():
    """'model name [simd flags] (vendor, family/model, FMA pipes)' from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model, flags, fields = platform.machine(), set(), {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key in ("vendor_id", "cpu family", "model", "CPU implementer", "CPU part"):
            fields.setdefault(key, value.strip())
        elif not line.strip() and fields:
            break   # the first processor says it all
    simd = [f for f in ("avx512f", "avx2", "fma", "avx", "neon", "asimd") if f in flags]
    ident = ""
    if "vendor_id" in fields:
        vendor = fields["vendor_id"]
        try:
            fam, mod = int(fields.get("cpu family", "-1")), int(fields.get("model", "-1"))
        except ValueError:
            fam = mod = -1
        pipes = next((p for v, f, lo, hi, p in FMA_PIPES
                      if v == vendor and f == fam and lo <= mod <= hi), "unknown")
        ident = f" ({vendor}, family {fam} (0x{fam:x}) model {mod} (0x{mod:x}), FMA pipes {pipes})"
    elif "CPU implementer" in fields:
        ident = f" (implementer {fields['CPU implementer']}, part {fields.get('CPU part', '?')})"
    return f"{model} [{' '.join(simd) or 'no avx'}]{ident}"


def usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


SGEMM_N = 1024

_SGEMM_SNIPPET = """
import statistics, sys, time
import numpy as np

def sgemm(n, min_time):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = a @ b
    c = a @ b
    t_end, times = time.perf_counter() + min_time, []
    while len(times) < 5 or time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9

if __name__ == "__main__":
    print(sgemm(int(sys.argv[1]), float(sys.argv[2])))
"""


def sgemm_gflops(threads, min_time):
    """NumPy float32 SGEMM_N^3 matmul rate (GFLOP/s) with `threads` BLAS threads.

    In process under threadpoolctl's limit when it is installed; otherwise in
    a fresh interpreter whose BLAS thread count is fixed by environment
    variables before NumPy is imported (OpenBLAS, MKL, BLIS, OpenMP BLAS).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        scope = {}
        exec(_SGEMM_SNIPPET, scope)
        with threadpool_limits(limits=threads, user_api="blas"):
            return scope["sgemm"](SGEMM_N, min_time), "threadpoolctl"
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(threads)
    try:
        res = subprocess.run(
            [sys.executable, "-c", _SGEMM_SNIPPET, str(SGEMM_N), str(min_time)],
            env=env, capture_output=True, text=True, timeout=300, check=True)
        return float(res.stdout.strip()), "env vars, subprocess"
    except (subprocess.SubprocessError, ValueError) as e:
        print(f"note: SGEMM measurement failed with {threads} thread(s): {e}")
        return math.nan, "failed"


# --------------------------------------------------------------------------
# Our share of the SGEMM rate and our thread scaling, measured interleaved
# --------------------------------------------------------------------------

SHARE_SECONDS = 0.05   # per engine and round: min of many short calls


def min_time(fn, seconds, min_calls=3):
    """The fastest of back-to-back calls of fn over >= seconds and >= min_calls:
    on a shared machine the minimum is the call least disturbed by others."""
    best, t_end, n = math.inf, time.perf_counter() + seconds, 0
    while n < min_calls or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best


@dataclass
class Share:
    """Per-round ratios of one case: ours on 1 thread / SGEMM on 1 thread (rates),
    ours on 1 thread / ours on `threads` threads (times), and SGEMM on `threads`
    threads / SGEMM on 1 (rates): what the same BLAS gains from the extra
    threads in that round, a ceiling for a compute-bound call's scaling."""
    share: list
    scaling: list
    threads: int
    sgemm_scaling: list

    @staticmethod
    def fmt(values, percent):
        if not values:
            return "-"
        med, lo, hi = statistics.median(values), min(values), max(values)
        if percent:
            return f"{100 * med:.0f}% [{100 * lo:.0f}–{100 * hi:.0f}]"
        return f"{med:.2f}× [{lo:.2f}–{hi:.2f}]"


def measure_share(li, case, data, flops, rounds, threads, settle):
    """Each round times NumPy's SGEMM_N^2 SGEMM on 1 thread, our call on 1
    thread and on `threads`, then the SGEMM on `threads`, back to back (each
    the min of short calls over SHARE_SECONDS), so all four see the same
    machine; the ratios of each round are kept. The BLAS's extra threads spin
    on after their SGEMM (measured: a 2-thread edge call ran 0.8x as fast as
    one thread right after it), so that SGEMM comes last, `settle` seconds
    after our call, and the next round waits `settle` for them to sleep. None
    without threadpoolctl (NumPy's BLAS could not be held to 1 thread in this
    process)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    a = rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    b = rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    ours = {t: make_lstm_infer(li, case, data, t) for t in {1, threads}}
    share, scaling, sgemm_scaling = [], [], []
    try:
        for t in ours:  # warm: each thread count's pool and scratch
            li.set_num_threads(t)
            ours[t]()
        for _ in range(rounds):
            with threadpool_limits(limits=1, user_api="blas"):
                rate = 2 * SGEMM_N ** 3 / min_time(lambda: a @ b, SHARE_SECONDS)
            li.set_num_threads(1)
            one = min_time(ours[1], SHARE_SECONDS)
            share.append(flops / one / rate)
            if threads != 1:
                li.set_num_threads(threads)
                scaling.append(one / min_time(ours[threads], SHARE_SECONDS))
                time.sleep(settle)
                with threadpool_limits(limits=threads, user_api="blas"):
                    rate_n = 2 * SGEMM_N ** 3 / min_time(lambda: a @ b, SHARE_SECONDS)
                sgemm_scaling.append(rate_n / rate)
                time.sleep(settle)
    finally:
        li.set_num_threads(threads)
    return Share(share, scaling, threads, sgemm_scaling)


# --------------------------------------------------------------------------
# Engine loading
# --------------------------------------------------------------------------

SKIPPED = {}   # engine -> why it was not imported


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_engines(wanted):
    """name -> (module, version); missing engines are skipped with a note.

    lstm_infer is taken from this checkout when it has the package (an in-place
    build), else from wherever it is installed.
    """
    if os.path.isdir(os.path.join(REPO_ROOT, "lstm_infer")) and REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    found = {}
    for name in wanted:
        try:
            if name in REDUCED and name.startswith("lstm_infer"):
                import lstm_infer as mod
                if "weights" not in (mod.LSTM.__init__.__kwdefaults__ or {}):
                    raise ImportError("this lstm_infer has no reduced weights")
                version = "(as lstm_infer)"
            elif name == "onnxruntime_i8":
                import onnx  # noqa: F401
                import onnxruntime as mod
                import onnxruntime.quantization  # noqa: F401
                version = "(as onnxruntime)"
            elif name == "lstm_infer":
                import lstm_infer as mod
                missing = [a for a in ("LSTM", "set_num_threads") if not hasattr(mod, a)]
                if missing:   # e.g. a source tree whose extension is not built
                    raise ImportError(f"lstm_infer has no {', '.join(missing)} "
                                      f"(not built?)")
                version = str(getattr(mod, "__version__", "?"))
                where = os.path.abspath(mod.__file__ or ".")
                version += (" (this checkout)" if where.startswith(REPO_ROOT + os.sep)
                            else " (installed)")
                for attr in ("isa", "get_isa", "cpu_isa", "kernel_name"):
                    if callable(getattr(mod, attr, None)):
                        version += f" (kernels: {getattr(mod, attr)()})"
                        break
            elif name == "torch":
                import torch as mod
                mod.set_num_interop_threads(1)
                version = mod.__version__
            elif name == "onnxruntime":
                import onnx  # noqa: F401  (builds the model)
                import onnxruntime as mod
                mod.set_default_logger_severity(3)
                version = mod.__version__
            elif name == "openvino":
                import onnx  # noqa: F401
                import openvino as mod
                version = mod.__version__.split("-")[0]
            found[name] = (mod, version)
        except Exception as e:  # ImportError, or a broken install
            SKIPPED[name] = f"{type(e).__name__}: {e}"
            print(f"note: skipping {name}: {SKIPPED[name]}")
    return found


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

@dataclass
class Result:
    seconds: float = math.nan
    spread: float = math.nan
    calls: int = 0
    diff: float = math.nan     # max abs diff vs the reference engine
    ref: str = ""              # the reference engine's name
    ok: bool = True            # agrees with the reference within TOLERANCE
    error: str = ""            # failed to build or run
    skipped: str = ""          # cannot run this kind of case (not a failure)


def reference_engine(names):
    """The engine the others are checked against: torch, else ours, else the first."""
    return next((n for n in ("torch", OURS, *names) if n in names), None)


def tolerance(name, ref):
    """Against torch an engine's own tolerance; against another, the looser of both."""
    return TOLERANCE[name] if ref == "torch" else max(TOLERANCE[name], TOLERANCE[ref])


def make_engine(name, mod, case, data, onnx_bytes, threads):
    if name.startswith("lstm_infer"):
        return make_lstm_infer(mod, case, data, threads, REDUCED.get(name, "float32"))
    if name == "torch":
        return make_torch(mod, case, data, threads)
    if name == "onnxruntime":
        return make_onnxruntime(mod, onnx_bytes, data, threads)
    if name == "onnxruntime_i8":
        return make_onnxruntime(mod, quantize_onnx_int8(onnx_bytes), data, threads)
    return make_openvino(mod, onnx_bytes, case, data, threads)


def run_threads(case, engines, data, onnx_bytes, threads, args):
    """One case at one thread count: build, check, then time every engine.

    Each engine's first call gives the output that is checked against the
    reference engine's first call (torch when present) in this same row.  The
    timing is interleaved: `args.rounds` rounds, each giving every engine
    min_time / rounds seconds, in a rotated order, with a pause before each
    engine so that the previous engine's worker threads have gone to sleep.
    """
    row, fns, outs, first = {}, {}, {}, {}
    for name, (mod, _) in engines.items():
        r = row[name] = Result()
        r.skipped = unsupported(name, mod, case)
        if r.skipped:
            continue
        if onnx_bytes is None and name in ("onnxruntime", "openvino", "onnxruntime_i8"):
            r.ok, r.error = False, "no ONNX graph for this case"
            continue
        try:
            fns[name] = make_engine(name, mod, case, data, onnx_bytes, threads)
            t = time.perf_counter()
            result = fns[name]()                 # also the first warm-up call
            first[name] = time.perf_counter() - t
            outs[name] = as_numpy(result)
            del result
        except Exception as e:
            r.ok, r.error = False, f"{type(e).__name__}: {e}"
            fns.pop(name, None)
            print(f"ERROR: {case.name} t={threads}: {name} failed: {r.error}", flush=True)

    ref = reference_engine(outs)
    for name in outs:
        r = row[name]
        if name == ref:
            r.diff, r.ref = 0.0, name
            continue
        r.ref = ref
        r.diff = max_abs_diff(outs[name], outs[ref], data.lengths)
        tol = tolerance(name, ref)
        r.ok = r.diff <= tol
        if not r.ok:
            print(f"ERROR: {case.name} t={threads}: {name} disagrees with {ref}: "
                  f"max abs diff {r.diff:.2e} > {tol:g}", flush=True)
    del outs

    timers = {name: Timer(fn) for name, fn in fns.items()}
    del fns
    for name, timer in timers.items():
        time.sleep(args.settle)
        timer.calibrate(0.1 * args.min_time, first[name] if args.quick else None)
    names = list(timers)
    per_round = args.min_time / args.rounds
    min_samples = max(1, math.ceil(args.min_calls / args.rounds))
    for rnd in range(args.rounds):
        shift = rnd % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            time.sleep(args.settle)
            # Slow calls sampled while calibrating count towards the first round.
            done = timers[name].samples if rnd == 0 else []
            try:
                timers[name].sample(per_round - sum(done), min_samples - len(done))
            except Exception as e:
                row[name].ok, row[name].error = False, f"{type(e).__name__}: {e}"
                print(f"ERROR: {case.name} t={threads}: {name} failed while timed: "
                      f"{row[name].error}", flush=True)
                names.remove(name)
    for name, timer in timers.items():
        r = row[name]
        if not r.error:
            r.seconds, r.spread, r.calls = timer.median(), timer.spread(), timer.calls()
    del timers
    gc.collect()
    return row


def run_case(case, engines, args):
    """Times every engine on one case; returns ({threads: {engine: Result}}, flops,
    Share or None)."""
    torch = engines.get("torch", (None,))[0]
    data = make_case_data(case, torch)
    flops = case_flops(case, data.valid_tokens)
    onnx_bytes = None
    if any(n in engines and not unsupported(n, engines[n][0], case)
           for n in ("onnxruntime", "openvino", "onnxruntime_i8")):
        try:                                          # once per case
            onnx_bytes = (build_onnx_model(case, data) if case.kind == "lstm"
                          else export_onnx_gru(case, data))
        except Exception as e:  # noqa: BLE001 - reported as FAILED for both engines
            print(f"ERROR: {case.name}: building the ONNX graph failed: "
                  f"{type(e).__name__}: {e}", flush=True)
    results = {}
    for threads in args.thread_list:
        results[threads] = run_threads(case, engines, data, onnx_bytes, threads, args)
        print_text_row(case, threads, results[threads], flops)
    share = None
    li = engines.get(OURS, (None,))[0]
    if li is not None and args.share_rounds and not unsupported(OURS, li, case) \
            and all(row[OURS].ok for row in results.values()):
        share = measure_share(li, case, data, flops, args.share_rounds, max(args.thread_list),
                              args.settle)
        if share is None:
            print(f"{'':>8} note: no interleaved SGEMM share (threadpoolctl is missing)")
        else:
            print(f"{case.name:>8} ours vs 1-thread SGEMM, interleaved over {len(share.share)} "
                  f"rounds: {Share.fmt(share.share, True)}"
                  + (f"; {share.threads} threads vs 1: {Share.fmt(share.scaling, False)} "
                     f"(SGEMM {Share.fmt(share.sgemm_scaling, False)})"
                     if share.scaling else ""), flush=True)
    return results, flops, share


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

SHORT = {"lstm_infer": "lstm_infer", "torch": "torch", "onnxruntime": "ORT",
         "openvino": "OpenVINO", "lstm_infer_f16": "ours f16", "lstm_infer_i8": "ours int8",
         "onnxruntime_i8": "ORT int8"}


def speedup(row, ours_name=OURS):
    """(the speed-up of ours_name, fastest other float32 engine) among the
    engines that agree."""
    ours = row.get(ours_name)
    others = [(r.seconds, n) for n, r in row.items()
              if n != OURS and n not in REDUCED and r.ok and not math.isnan(r.seconds)]
    if ours is None or math.isnan(ours.seconds) or not others:
        return None
    best_s, best_n = min(others + ([(row[OURS].seconds, OURS)] if ours_name != OURS
                                   and OURS in row and row[OURS].ok
                                   and not math.isnan(row[OURS].seconds) else []))
    return best_s / ours.seconds, best_n


def ratio(row, a, b):
    """How many times faster engine a ran than engine b in this row, or None."""
    ra, rb = row.get(a), row.get(b)
    if ra is None or rb is None or ra.error or rb.error or ra.skipped or rb.skipped:
        return None
    if math.isnan(ra.seconds) or math.isnan(rb.seconds):
        return None
    return rb.seconds / ra.seconds


def reduced_columns(row):
    """The reduced-precision comparisons of one row: int8 vs the best float32
    engine (ours included), int8 vs ORT's int8, float16 vs our float32."""
    best = speedup(row, "lstm_infer_i8")
    cells = {"int8 vs best f32": "-" if best is None else f"{best[0]:.2f}× vs {SHORT[best[1]]}"}
    for label, a, b in (("int8 vs ORT int8", "lstm_infer_i8", "onnxruntime_i8"),
                        ("f16 vs ours f32", "lstm_infer_f16", OURS)):
        r = ratio(row, a, b)
        cells[label] = "-" if r is None else f"{r:.2f}×"
    return cells


def fmt_time(s):
    if math.isnan(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_cell(r, flops):
    if r.skipped:
        return "n/a"
    if r.error:
        return "FAILED"
    cell = f"{fmt_time(r.seconds)} ({flops / r.seconds / 1e9:.1f})"
    return cell if r.ok else cell + " !"


def fmt_speedup(row):
    s = speedup(row)
    if s is None:
        return "-"
    text = f"{s[0]:.2f}× vs {SHORT[s[1]]}"
    return text if row[OURS].ok else text + " !"


def print_text_row(case, threads, row, flops):
    cells = []
    for n, r in row.items():
        spread = "" if math.isnan(r.spread) else f" ±{100 * r.spread:.0f}%"
        cells.append(f"{SHORT[n]} {fmt_cell(r, flops) + spread:>24}")
    tail = f"  {fmt_speedup(row)}" if OURS in row and len(row) > 1 else ""
    if any(n in REDUCED for n in row):
        tail += "  " + "  ".join(f"{k}: {v}" for k, v in reduced_columns(row).items())
    print(f"{case.name:>8} t={threads}  {'  '.join(cells)}{tail}", flush=True)
    for n, r in row.items():
        if r.skipped:
            print(f"{'':>8} {SHORT[n]} not run: {r.skipped}", flush=True)


def fmt_diff(r):
    if r.skipped:
        return "n/a"
    if r.error:
        return "FAILED"
    text = f"{r.diff:.1e}"
    return text if r.ok else f"**{text} FAIL**"


def machine_lines(engines, sgemm, ncpu):
    lines = [f"Machine: {cpu_model()}, {ncpu} usable CPUs ({os.cpu_count()} online), "
             f"{platform.system()} {platform.machine()}; Python {platform.python_version()}",
             "Versions: " + ", ".join([f"{n} {v}" for n, (_, v) in engines.items()]
                                      + [f"numpy {np.__version__}"])]
    rates = ", ".join(f"{g:.1f} GFLOP/s on {t} thread{'s' * (t > 1)}"
                      for t, (g, _) in sorted(sgemm.items()))
    how = next(iter(sgemm.values()))[1]
    lines.append(f"SGEMM ceiling (NumPy {SGEMM_N}×{SGEMM_N} float32 matmul, "
                 f"BLAS threads set by {how}): {rates}")
    return lines


def print_markdown(all_results, engines, sgemm, ncpu, argv):
    names = list(engines)
    ours = OURS in names and len(names) > 1
    print()
    print("Command: `" + " ".join(["python tools/bench.py"]
                                  + [shlex.quote(a) for a in argv]) + "`")
    print()
    for line in machine_lines(engines, sgemm, ncpu):
        print(line + "  ")
    for name, why in SKIPPED.items():
        print(f"Skipped {name}: {why}  ")
    for case, (results, _, _) in all_results:
        for n, r in next(iter(results.values())).items():
            if r.skipped:
                print(f"Not run: {case.name} on {SHORT[n]}: {r.skipped}  ")
    print()
    ref = reference_engine(names)
    print("Median time per call (effective GFLOP/s over valid tokens). "
          f"`!` marks a result that disagrees with {ref}.")
    print()
    reduced = any(n in REDUCED for n in names)
    head = ["case", "shape", "threads"] + [SHORT[n] for n in names]
    if ours:
        head += ["speed-up", "ours vs SGEMM", "ours vs 1 thread"]
    if reduced:
        head += list(reduced_columns({}))
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for case, (results, flops, _) in all_results:
        one = results.get(1, {}).get(OURS)
        for threads, row in results.items():
            cells = [case.name, case.shape(), str(threads)]
            cells += [fmt_cell(row[n], flops) for n in names]
            if ours:
                r = row[OURS]
                cells.append(fmt_speedup(row))
                ceiling = sgemm.get(threads, (math.nan,))[0]
                frac = flops / r.seconds / 1e9 / ceiling
                cells.append("-" if math.isnan(frac) else f"{100 * frac:.0f}%")
                scale = "-"
                if threads != 1 and one is not None and not math.isnan(one.seconds):
                    scale = f"{one.seconds / r.seconds:.2f}×"
                cells.append(scale)
            if reduced:
                cells += list(reduced_columns(row).values())
            print("| " + " | ".join(cells) + " |")
    shares = [(case, share) for case, (_, _, share) in all_results if share is not None]
    if shares:
        print()
        print(f"Ours against NumPy's 1-thread {SGEMM_N}² SGEMM, interleaved: each of "
              f"{len(shares[0][1].share)} rounds times the SGEMM, our call on 1 thread and on "
              f"{shares[0][1].threads}, back to back (min of short calls each), and the SGEMM "
              f"on {shares[0][1].threads} threads, the most a compute-bound call gains from them "
              "that round; median of the per-round ratios [range].")
        print()
        n = shares[0][1].threads
        print(f"| case | shape | ours 1 thread / SGEMM 1 thread | "
              f"ours {n} threads / 1 thread | SGEMM {n} threads / 1 thread |")
        print("|---|---|---:|---:|---:|")
        for case, share in shares:
            print(f"| {case.name} | {case.shape()} | {Share.fmt(share.share, True)} | "
                  f"{Share.fmt(share.scaling, False)} | {Share.fmt(share.sgemm_scaling, False)} |")
    print()
    print(f"Agreement: max abs difference from {ref} over valid positions of output, "
          "h_n and (LSTM) c_n (worst over thread counts; tolerance "
          + ", ".join(f"{SHORT[n]} {tolerance(n, ref):g}" for n in names if n != ref) + ").")
    print()
    print("| case | " + " | ".join(SHORT[n] for n in names) + " |")
    print("|---|" + "|".join(["---:"] * len(names)) + "|")
    for case, (results, _, _) in all_results:
        cells = [case.name]
        for n in names:
            rs = [row[n] for row in results.values() if not row[n].skipped]
            if not rs:
                cells.append("n/a")
                continue
            failed = [r for r in rs if r.error]
            if failed:
                cells.append("FAILED")
                continue
            worst = max(rs, key=lambda r: (not r.ok, -math.inf if math.isnan(r.diff)
                                           else r.diff))
            cells.append("reference" if worst.ref == n else fmt_diff(worst))
        print("| " + " | ".join(cells) + " |")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(c.name for c in CASES),
                   help="comma-separated subset of: " + ", ".join(CASES_BY_NAME))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help="comma-separated subset of: " + ", ".join(ENGINES)
                   + " (aliases: li, pytorch, ort, ov)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timed calls per engine, case and thread count "
                        "(default 1.0, or 0.1 with --quick)")
    p.add_argument("--min-calls", type=int, default=None,
                   help="timed calls at least, for slow cases (default 3, 1 with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds over the engines (default 3, "
                        "1 with --quick)")
    p.add_argument("--settle", type=float, default=0.05,
                   help="pause in seconds before each engine's turn (default 0.05)")
    p.add_argument("--share-rounds", type=int, default=None,
                   help="interleaved rounds of SGEMM / ours on 1 thread / ours on the most "
                        "threads / SGEMM on the most threads, for our share of the SGEMM rate "
                        "and our scaling beside the SGEMM's "
                        "(default 9, 3 with --quick; 0 skips it)")
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    p.add_argument("--markdown", action="store_true",
                   help="also print README-ready tables, the command and the machine")
    args = p.parse_args(argv)
    if args.min_time is None:
        args.min_time = 0.1 if args.quick else 1.0
    if args.min_calls is None:
        args.min_calls = 1 if args.quick else 3
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.share_rounds is None:
        args.share_rounds = 3 if args.quick else 9
    if args.min_time < 0 or args.min_calls < 1 or args.rounds < 1 or args.settle < 0 \
            or args.share_rounds < 0:
        p.error("--min-time, --settle and --share-rounds must be >= 0, --min-calls and "
                "--rounds >= 1")
    try:
        args.case_list = [CASES_BY_NAME[n.strip()] for n in args.cases.split(",")
                          if n.strip()]
    except KeyError as e:
        p.error(f"unknown case {e}; choose from {', '.join(CASES_BY_NAME)}")
    try:
        args.thread_list = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        p.error(f"--threads wants integers, got {args.threads!r}")
    if not args.thread_list or min(args.thread_list) < 1:
        p.error("--threads wants positive integers")
    engines = [ENGINE_ALIASES.get(e.strip().lower(), e.strip().lower())
               for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        p.error(f"unknown engine(s) {unknown}; choose from {ENGINES}")
    args.engine_list = [e for e in ENGINES if e in engines]   # lstm_infer first
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    ncpu = usable_cpus()
    if max(args.thread_list) > ncpu:
        print(f"note: {max(args.thread_list)} threads on {ncpu} usable CPUs: "
              f"oversubscribed, timings will be poor")

    # The ceiling first, before any engine has started threads of its own.
    sgemm = {t: sgemm_gflops(t, max(0.2, args.min_time / 2))
             for t in sorted(set(args.thread_list) | {1, ncpu})}
    engines = import_engines(args.engine_list)
    if not engines:
        print("error: no engine available", file=sys.stderr)
        return 2

    for line in machine_lines(engines, sgemm, ncpu):
        print(line)
    if OURS not in engines:
        print(f"note: {OURS} missing: no speed-up is shown")
    ref = reference_engine(engines)
    if ref != "torch":
        print(f"note: torch missing: results are checked against {ref} instead")
    print("Cells: median time per call (effective GFLOP/s over valid tokens) "
          f"±half the interquartile range; '!' = disagrees with {ref}")

    all_results = []
    for case in args.case_list:
        print(f"-- {case.name}: {case.shape()}" + (f" ({case.note})" if case.note else ""),
              flush=True)
        all_results.append((case, run_case(case, engines, args)))

    if args.markdown:
        print_markdown(all_results, engines, sgemm, ncpu, argv)

    bad = [f"{case.name} t={t} {SHORT[n]}: "
           + (r.error or f"max abs diff {r.diff:.2e} vs {r.ref}")
           for case, (results, _, _) in all_results
           for t, row in results.items() for n, r in row.items() if not r.ok]
    print(f"\ntotal run time {time.perf_counter() - started:.0f} s")
    if bad:
        print(f"\nFAILED: {len(bad)} engine result(s) failed or disagree:")
        for line in bad:
            print("  " + line)
        return 1
    print("all engines agree with the reference within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
