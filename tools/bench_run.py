#!/usr/bin/env python3
"""Batch-inference throughput (sequences/s) on a synthetic nlp-like dataset.

10,000 sequences of uniform random lengths 5..200 through an LSTM(128, 256, num_layers=2,
bidirectional=True), the same weights everywhere; outputs are computed in full (each
sequence's per-step output) and dropped. Engines:

  naive-pad  lstm_infer, fixed batches of 32 in input order, padded to the batch maximum,
          no lengths: the padding is computed (a loop that pads and does not pack)
  naive   the same with lengths (correct results; our core then skips the padding)
  predict li.predict_iter (length bucketing under --batch-tokens), all threads
  dask    2 Dask worker processes x 1 thread (LocalCluster); the dataset in 2 x 4 shards,
          each task runs li.predict_iter on its shard with the worker's cached model
          (lstm_infer.dask.worker_model); shards are generated on the workers (no transfer)
  torch   torch.nn.LSTM, fixed batches of 32, pack_padded_sequence(enforce_sorted=False)
          -> LSTM -> pad_packed_sequence; torch.set_num_threads = --threads

Engines are interleaved round by round; medians over rounds and ratios are printed.

    python tools/bench_run.py                  # 10,000 sequences, 3 rounds
    python tools/bench_run.py --n 1000 --rounds 1 --engines naive,predict
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lstm_infer as li  # noqa: E402

I, H, L, BIDIR = 128, 256, 2, True
SHARDS_PER_WORKER = 4


def lengths_for(n, seed):
    return np.random.default_rng(seed).integers(5, 201, n)


def make_seqs(lengths, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(t), I), dtype=np.float32) for t in lengths]


def run_naive(model, seqs, batch=32, use_lengths=True):
    n = 0
    for j in range(0, len(seqs), batch):
        part = seqs[j:j + batch]
        lens = np.array([len(s) for s in part])
        x = np.zeros((lens.max(), len(part), I), np.float32)
        for b, s in enumerate(part):
            x[:len(s), b] = s
        out = model(x, lengths=lens if use_lengths else None)[0]
        outs = [out[:lens[b], b].copy() for b in range(len(part))]
        n += len(outs)
    return n


def run_predict(model, seqs, batch_tokens):
    return sum(1 for _ in li.predict_iter(model, seqs, batch_tokens=batch_tokens))


def _dask_shard(model_path, lengths, seed, batch_tokens):
    from lstm_infer import runner
    from lstm_infer.dask import worker_model
    model = worker_model(model_path)  # shared path (same machine)
    seqs = make_seqs(lengths, seed)
    return sum(1 for _ in runner.predict_iter(model, seqs, batch_tokens=batch_tokens))


def run_dask(client, model_path, shards, batch_tokens):
    futures = [client.submit(_dask_shard, model_path, lens, seed, batch_tokens, pure=False)
               for lens, seed in shards]
    return sum(client.gather(futures))


def run_torch(torch, net, tseqs, batch=32):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
    n = 0
    with torch.no_grad():
        for j in range(0, len(tseqs), batch):
            part = tseqs[j:j + batch]
            lens = torch.tensor([len(s) for s in part])
            x = pad_sequence(part)
            out, _ = net(pack_padded_sequence(x, lens, enforce_sorted=False))
            out, _ = pad_packed_sequence(out)
            outs = [out[:lens[b], b].clone() for b in range(len(part))]
            n += len(outs)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch-tokens", type=int, default=li.runner.DEFAULT_BATCH_TOKENS)
    ap.add_argument("--engines", default="naive-pad,naive,predict,dask,torch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    engines = args.engines.split(",")

    li.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model = li.LSTM(I, H, num_layers=L, bidirectional=BIDIR)
    sd = {k: (rng.standard_normal(v.shape) * 0.06).astype(np.float32) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    lengths = lengths_for(args.n, args.seed + 1)
    tokens = int(lengths.sum())
    seqs = make_seqs(lengths, args.seed + 2)
    tmp = tempfile.mkdtemp(prefix="bench_run_")
    model_path = os.path.join(tmp, "m.lstm")
    model.save(model_path)

    runners = {}
    if "naive-pad" in engines:
        runners["naive-pad"] = lambda: run_naive(model, seqs, use_lengths=False)
    if "naive" in engines:
        runners["naive"] = lambda: run_naive(model, seqs)
    if "predict" in engines:
        runners["predict"] = lambda: run_predict(model, seqs, args.batch_tokens)
    cluster = client = None
    if "dask" in engines:
        import distributed
        os.environ["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=40)
        client = distributed.Client(cluster)
        k = 2 * SHARDS_PER_WORKER
        shards = [(part, args.seed + 100 + i) for i, part in enumerate(np.array_split(lengths, k))]
        client.gather([client.submit(_dask_shard, model_path, [5], 0, 64, pure=False) for _ in range(4)])
        runners["dask"] = lambda: run_dask(client, model_path, shards, args.batch_tokens)
    if "torch" in engines:
        import torch
        torch.set_num_threads(args.threads)
        net = torch.nn.LSTM(I, H, num_layers=L, bidirectional=BIDIR).eval()
        net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        tseqs = [torch.from_numpy(s) for s in seqs]
        runners["torch"] = lambda: run_torch(torch, net, tseqs)
        # same results as ours on a few sequences
        with torch.no_grad():
            for s in seqs[:3]:
                ref = net(torch.from_numpy(s)[:, None])[0][:, 0].numpy()
                assert np.abs(ref - model(s)[0]).max() < 1e-4

    times = {e: [] for e in runners}
    for r in range(args.rounds):
        for e, fn in runners.items():
            t0 = time.perf_counter()
            n = fn()
            dt = time.perf_counter() - t0
            assert n == args.n, (e, n)
            times[e].append(dt)
            print(f"round {r + 1}: {e:8s} {dt:8.2f} s  {args.n / dt:8.1f} seq/s", file=sys.stderr, flush=True)
    if client is not None:
        client.close()
        cluster.close()

    print(f"Machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} usable CPUs; "
          f"lstm_infer {li.__version__} ({li.get_isa()}), threads {args.threads}")
    print(f"Dataset: {args.n} sequences, lengths 5-200 ({tokens} tokens), LSTM(I={I}, H={H}, L={L}, "
          f"bidirectional); batch_tokens {args.batch_tokens}; median of {args.rounds} round(s)\n")
    med = {e: statistics.median(v) for e, v in times.items()}
    base = {b: med[b] for b in ("naive-pad", "naive", "torch") if b in med}
    head = "| engine | seconds | seq/s | tokens/s |" + "".join(f" vs {b} |" for b in base)
    print(head)
    print("|" + "---|" * (4 + len(base)))
    for e, t in med.items():
        print(f"| {e} | {t:.2f} | {args.n / t:,.0f} | {tokens / t:,.0f} |"
              + "".join(f" {base[b] / t:.2f}x |" for b in base))


if __name__ == "__main__":
    main()
