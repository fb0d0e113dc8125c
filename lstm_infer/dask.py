"""The batch job of ``lstm-infer run`` on a Dask distributed cluster.

    import distributed
    from lstm_infer.dask import predict_files, predict_bag
    client = distributed.Client("tcp://scheduler:8786")   # or distributed.Client(LocalCluster())
    predict_files(client, "model.lstm", ["data/*.jsonl"], "out/")   # one output per input file
    outputs = predict_bag(client, "model.lstm", bag)               # a dask.bag of sequences

Needs the ``dask`` extra (``pip install "lstm_infer[dask]"``). The model file is read on
the client and shipped to every worker once (``ship_model=True``, the default; with
``ship_model=False`` the workers read it from the same path on a shared file system).
``predict_files`` reads its inputs and writes its outputs at the paths given, so those
must be on a file system the workers share; ``predict_bag`` gets its data from the bag.

- Each worker process loads the model once (cached by the file's SHA-256 when shipped, by
  path, mtime and size when read from a shared path, so a changed file is reloaded) and
  sets ``li.set_num_threads`` to the worker's ``nthreads``.
- ``predict_files`` writes, for each input file, exactly what ``lstm-infer run INPUT -o
  OUTPUT_DIR/NAME`` writes for that file alone (same code): ``NAME`` is the input's base
  name for a ``.npy`` input and ``STEM.npz`` otherwise. Each output is written atomically,
  so a task that Dask reruns after a worker died rewrites the same bytes (idempotent).
- ``predict_bag`` runs each partition through :func:`lstm_infer.predict` and returns the
  outputs in input order.
"""

from __future__ import annotations

import hashlib
import os
import threading

from . import runner

__all__ = ["predict_files", "predict_bag"]

_CACHE = {}
_LOCK = threading.Lock()
_CACHE_SIZE = 4  # models kept per worker process
_LOADS = 0  # models loaded in this process (tests check: once per worker)


def _model_key(path):
    st = os.stat(path)
    return os.path.abspath(os.fsdecode(path)), st.st_mtime_ns, st.st_size


def _worker_threads():
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return None
    n = getattr(worker, "nthreads", None)
    if n is None:
        n = getattr(getattr(worker, "state", None), "nthreads", None)
    return n


def _from_bytes(data, name):
    from .modelfile import read_stored
    from .sequential import build_model
    return build_model(*read_stored(name=name, data=data))  # reduced weights as stored


def worker_model(model_path, digest=None, data=None):
    """This process's model, loaded on first use: from ``data`` (the file's bytes, cached
    by their SHA-256 ``digest``) when shipped, else from ``model_path``. Engine threads are
    set to the Dask worker's nthreads."""
    global _LOADS
    key = ("sha256", digest) if digest is not None else _model_key(model_path)
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            from . import load, set_num_threads
            model = load(model_path) if digest is None else _from_bytes(data, model_path)
            for old in [k for k in _CACHE if k[0] == key[0] and k[0] != "sha256"]:  # a replaced file
                del _CACHE[old]
            _CACHE[key] = model
            while len(_CACHE) > _CACHE_SIZE:  # the oldest goes
                del _CACHE[next(iter(_CACHE))]
            _LOADS += 1
            n = _worker_threads()
            if n:
                set_num_threads(n)
    return model


class _Model:
    """What tasks get: the path, and when shipped the digest and the scattered bytes."""

    def __init__(self, client, model_path, ship):
        self.path = os.path.abspath(os.fsdecode(os.fspath(model_path)))
        self.digest = self.data = None
        if ship:
            from .fileio import read_file
            data = read_file(self.path)  # refuses a FIFO or device instead of waiting on it
            self.digest = hashlib.sha256(data).hexdigest()
            self.data = client.scatter(data, broadcast=True, hash=False)

    def args(self):
        return self.path, self.digest, self.data


def _run_file(model_path, digest, data, src, output_dir, batch_tokens, skip_bad):
    model = worker_model(model_path, digest, data)
    name = runner.output_name_for(src)
    target = output_dir if name.endswith(".npy") else os.path.join(output_dir, name)
    stats = runner.run(model, [src], target, batch_tokens=batch_tokens, skip_bad=skip_bad)
    return os.path.join(output_dir, name), stats.sequences, stats.tokens, list(stats.skipped)


def predict_files(client, model_path, inputs, output_dir, batch_tokens=runner.DEFAULT_BATCH_TOKENS,
                  skip_bad=False, ship_model=True):
    """One task per input file (``.npy``, ragged ``.npz``, ``.jsonl``; directories and globs
    expanded as by ``lstm-infer run``), each writing its output into ``output_dir``.
    Returns the output paths in input order. A bad record fails its task (and this call)
    unless ``skip_bad``."""
    paths = runner.expand_inputs(inputs)
    names = [runner.output_name_for(p) for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"inputs would write the same output names {dup[:5]} in {output_dir}")
    output_dir = os.fsdecode(os.fspath(output_dir))
    os.makedirs(output_dir, exist_ok=True)
    path, digest, data = _Model(client, model_path, ship_model).args()
    futures = [client.submit(_run_file, path, digest, data, p, output_dir, batch_tokens, skip_bad, pure=False)
               for p in paths]
    return [r[0] for r in client.gather(futures)]


class _BadRecord:
    """Stands in for a partition's outputs when one of its records is bad: a partition
    knows only its own positions, the client turns ``index`` into the dataset's."""

    def __init__(self, index, reason):
        self.index, self.reason = index, reason


def _predict_partition(part, model_path, digest, data, batch_tokens):
    try:
        return runner.predict(worker_model(model_path, digest, data), list(part), batch_tokens=batch_tokens)
    except runner.BadRecordError as exc:
        if exc.index is None:
            raise
        return [_BadRecord(exc.index, exc.reason)]


def predict_bag(client, model_path, bag, batch_tokens=runner.DEFAULT_BATCH_TOKENS, ship_model=True):
    """The model's output for every sequence of the dask.bag ``bag``, as a list in input order.
    A bad record raises BadRecordError naming its position in the whole bag."""
    model = _Model(client, model_path, ship_model)
    outputs = bag.map_partitions(_predict_partition, *model.args(), batch_tokens)
    results = list(client.gather(client.compute(outputs)))
    for pos, y in enumerate(results):
        # the partitions before a bad one gave one output per record: pos is where it starts
        if isinstance(y, _BadRecord):
            raise runner.BadRecordError(f"sequence {pos + y.index}", y.reason, pos + y.index)
    return results
