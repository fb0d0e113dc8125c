# cython: language_level=3
"""Thin binding to the C core: checks buffers, releases the GIL, calls C.

Argument validation with friendly messages lives in model.py; this layer only
guarantees that what reaches C has the right dtype, byte order, alignment,
layout and sizes, whatever the caller passes.
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from cpython.pythread cimport PyThread_get_thread_ident

cimport numpy as cnp
import numbers
import threading

import numpy as np

from lstm_infer._core cimport *

cdef extern from "Python.h":
    # declared without an exception value: the error it sets is raised later, with the GIL
    int PyErr_CheckSignals() nogil

cnp.import_array()

# limits and cell kinds from the C header, not copies
MAX_FEATURES = LSTM_MAX_FEATURES
MAX_LAYERS = LSTM_MAX_LAYERS
MAX_THREADS = LSTM_MAX_THREADS
CELL_LSTM = LSTM_CELL_LSTM
CELL_GRU = LSTM_CELL_GRU
CELL_RNN_TANH = LSTM_CELL_RNN_TANH
CELL_RNN_RELU = LSTM_CELL_RNN_RELU
WEIGHTS_F32 = LSTM_WEIGHTS_F32
WEIGHTS_F16 = LSTM_WEIGHTS_F16
WEIGHTS_I8 = LSTM_WEIGHTS_I8
MAX_I8_STATE = LSTM_MAX_I8_STATE
# the dtype of each storage type (lstm_weight_storage)
_STORAGE_DTYPES = {LSTM_WEIGHTS_F32: np.float32, LSTM_WEIGHTS_F16: np.float16,
                   LSTM_WEIGHTS_I8: np.int8}

# signals are handled on the main thread only, so only its calls poll for them
cdef unsigned long _main_thread = threading.main_thread().ident


cdef int _poll_signals(void *ctx) noexcept nogil:
    """The C core's interrupt callback: runs Python's signal handlers (Ctrl-C
    raises KeyboardInterrupt there) and stops the call if one raised."""
    with gil:
        return PyErr_CheckSignals() < 0


cdef int _raise_pending() except -1:
    return -1  # the exception _poll_signals left set


cdef _check(lstm_status s, what):
    if s == LSTM_OK:
        return
    if s == LSTM_ERR_INTERRUPTED:
        _raise_pending()
    msg = lstm_status_string(s).decode()
    if s == LSTM_ERR_OUT_OF_MEMORY:
        raise MemoryError(f"{what}: {msg}")
    raise ValueError(f"{what}: {msg}")


cdef inline bint _c_ready(cnp.ndarray a):
    """float32, native byte order, aligned: what C may read in place."""
    return (cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_ISALIGNED(a))


cdef int _check_input(cnp.ndarray xa, int64_t B, int64_t width) except -1:
    """x: (T, B, width) for C (B < 0: any batch), feature axis contiguous."""
    if (cnp.PyArray_NDIM(xa) != 3 or not _c_ready(xa)
            or (B >= 0 and cnp.PyArray_DIMS(xa)[1] != B) or cnp.PyArray_DIMS(xa)[2] != width
            or (cnp.PyArray_DIMS(xa)[2] > 1 and cnp.PyArray_STRIDES(xa)[2] != 4)
            or cnp.PyArray_STRIDES(xa)[0] % 4 or cnp.PyArray_STRIDES(xa)[1] % 4):
        raise ValueError("input buffer: bad shape, dtype or layout")
    return 0


cdef int _check_output(cnp.ndarray oa, int64_t T, int64_t B, int64_t width) except -1:
    """output: writable (T, B, width) for C, feature axis contiguous."""
    if (cnp.PyArray_NDIM(oa) != 3 or not _c_ready(oa)
            or cnp.PyArray_DIMS(oa)[0] != T or cnp.PyArray_DIMS(oa)[1] != B
            or cnp.PyArray_DIMS(oa)[2] != width
            or cnp.PyArray_STRIDES(oa)[2] != 4 or cnp.PyArray_STRIDES(oa)[0] % 4
            or cnp.PyArray_STRIDES(oa)[1] % 4 or not cnp.PyArray_ISWRITEABLE(oa)):
        raise ValueError("output buffer: bad shape, dtype or layout")
    return 0


cdef inline void _set_buffers(lstm_forward_args *args, cnp.ndarray xa, cnp.ndarray oa):
    """The input and output of args from checked (T, B, width) arrays, or unbatched
    (T, width) ones as a batch of 1 (strides in floats)."""
    args.seq_len = cnp.PyArray_DIMS(xa)[0]
    args.input = <const float *>cnp.PyArray_DATA(xa)
    args.input_stride_t = cnp.PyArray_STRIDES(xa)[0] // 4
    args.output = <float *>cnp.PyArray_DATA(oa)
    args.output_stride_t = cnp.PyArray_STRIDES(oa)[0] // 4
    if cnp.PyArray_NDIM(xa) == 2:
        args.batch = 1
        args.input_stride_b = args.input_stride_t  # one sequence: never stepped over
        args.output_stride_b = args.output_stride_t
        return
    args.batch = cnp.PyArray_DIMS(xa)[1]
    args.input_stride_b = cnp.PyArray_STRIDES(xa)[1] // 4
    args.output_stride_b = cnp.PyArray_STRIDES(oa)[1] // 4


cdef const int64_t *_lengths_ptr(object lengths, int64_t B) except? NULL:
    """Pointer to a contiguous native int64 (B,) array; NULL for None."""
    if lengths is None:
        return NULL
    cdef cnp.ndarray la = lengths
    if (cnp.PyArray_TYPE(la) != cnp.NPY_INT64 or cnp.PyArray_NDIM(la) != 1
            or not cnp.PyArray_IS_C_CONTIGUOUS(la) or not cnp.PyArray_ISNOTSWAPPED(la)
            or not cnp.PyArray_ISALIGNED(la) or cnp.PyArray_DIMS(la)[0] != B):
        raise ValueError("lengths buffer: bad shape, dtype or layout")
    return <const int64_t *>cnp.PyArray_DATA(la)


cdef lstm_config _config(int cell, int input_size, int hidden_size, int num_layers, bint bias,
                        bint bidirectional, int proj_size, int wtype):
    cdef lstm_config cfg
    memset(&cfg, 0, sizeof(cfg))
    cfg.cell = cell
    cfg.input_size = input_size
    cfg.hidden_size = hidden_size
    cfg.num_layers = num_layers
    cfg.bias = bias
    cfg.bidirectional = bidirectional
    cfg.proj_size = proj_size
    cfg.weights = wtype
    return cfg


def weight_storage(int cell, int input_size, int hidden_size, int num_layers, bint bias,
                   bint bidirectional, int proj_size, int wtype):
    """The storage type (WEIGHTS_*) of each weight array in state_dict order."""
    cdef lstm_config cfg = _config(cell, input_size, hidden_size, num_layers, bias,
                                   bidirectional, proj_size, wtype)
    cdef size_t n = lstm_weight_count(&cfg)
    if n == 0:
        raise ValueError("invalid recurrent layer configuration")
    return [lstm_weight_storage(&cfg, i) for i in range(n)]


def reduce_weight(int wtype, w):
    """A float32 (rows, cols) weight matrix reduced as the C core stores it
    (WEIGHTS_F16 or WEIGHTS_I8): (float16 values, None) or (int8 values,
    float32 per-row scales). ValueError for a value the type cannot hold."""
    cdef cnp.ndarray a = np.array(w, dtype=np.float32, order="C")  # private, native, aligned
    if a.ndim != 2 or wtype not in (LSTM_WEIGHTS_F16, LSTM_WEIGHTS_I8):
        raise ValueError("reduce_weight takes a 2-D matrix and a reduced weight type")
    cdef cnp.ndarray q = np.empty((a.shape[0], a.shape[1]), _STORAGE_DTYPES[wtype])
    cdef cnp.ndarray sc = np.empty(a.shape[0], np.float32)
    cdef lstm_status s = lstm_reduce_weight(wtype, <const float *>cnp.PyArray_DATA(a), a.shape[0],
                                            a.shape[1], cnp.PyArray_DATA(q),
                                            <float *>cnp.PyArray_DATA(sc))
    if s != LSTM_OK:
        what = "beyond the float16 range (+-65504)" if wtype == LSTM_WEIGHTS_F16 else "NaN or Inf"
        raise ValueError(f"a weight is {what}: it cannot be stored as "
                         f"{np.dtype(_STORAGE_DTYPES[wtype]).name}")
    return q, (sc if wtype == LSTM_WEIGHTS_I8 else None)


cdef class Core:
    """An immutable C model built from weights in torch state_dict order: float32
    (wtype WEIGHTS_F32), or for WEIGHTS_F16 / WEIGHTS_I8 each array already in
    its weight_storage (float16; int8 with `scales[i]` its float32 row scales,
    see reduce_weight; float32 biases)."""
    cdef lstm_model *model
    cdef readonly int cell, input_size, hidden_size, num_layers, out_size, directions, wtype
    cdef readonly bint has_c

    def __cinit__(self, int cell, int input_size, int hidden_size, int num_layers, bint bias,
                  bint bidirectional, int proj_size, list weights, int wtype=LSTM_WEIGHTS_F32,
                  list scales=None):
        cdef lstm_config cfg = _config(cell, input_size, hidden_size, num_layers, bias,
                                       bidirectional, proj_size, wtype)
        cdef size_t n = lstm_weight_count(&cfg)
        if n == 0:
            raise ValueError("invalid recurrent layer configuration")
        if <size_t>len(weights) != n:
            raise ValueError(f"expected {n} weight arrays, got {len(weights)}")
        if wtype == LSTM_WEIGHTS_I8 and (scales is None or <size_t>len(scales) != n):
            raise ValueError(f"int8 weights need {n} scale entries")
        cdef int64_t shape[2]
        cdef int storage
        arrays, scale_arrays = [], []
        for i in range(n):
            lstm_weight_shape(&cfg, i, shape)
            storage = lstm_weight_storage(&cfg, i)
            want = (<object>shape[0], <object>shape[1]) if shape[1] else (<object>shape[0],)
            dtype = _STORAGE_DTYPES[storage]
            if storage != LSTM_WEIGHTS_F32 and np.asarray(weights[i]).dtype != dtype:
                raise ValueError(f"weight array {i} must be {np.dtype(dtype).name}")
            a = np.array(weights[i], dtype=dtype, order="C")  # private, native, aligned
            if a.shape != want:
                raise ValueError(f"weight array {i} has shape {a.shape}, expected {want}")
            arrays.append(a)
            if storage == LSTM_WEIGHTS_I8:
                sc = np.array(scales[i], dtype=np.float32, order="C")
                if sc.shape != (want[0],):
                    raise ValueError(f"scales of weight array {i} have shape {sc.shape}, "
                                     f"expected {(want[0],)}")
                scale_arrays.append(sc)
            else:
                scale_arrays.append(None)
        cdef const void **ptrs = <const void **>malloc(n * sizeof(void *))
        cdef const float **sptrs = <const float **>malloc(n * sizeof(float *))
        if ptrs == NULL or sptrs == NULL:
            free(ptrs)
            free(sptrs)
            raise MemoryError()
        cdef lstm_status s
        try:
            for i in range(n):
                ptrs[i] = cnp.PyArray_DATA(<cnp.ndarray>arrays[i])
                sptrs[i] = NULL
                if scale_arrays[i] is not None:
                    sptrs[i] = <const float *>cnp.PyArray_DATA(<cnp.ndarray>scale_arrays[i])
            with nogil:
                if wtype == LSTM_WEIGHTS_F32:
                    s = lstm_model_create(&cfg, <const float **>ptrs, n, &self.model)
                else:
                    s = lstm_model_create_reduced(&cfg, ptrs, sptrs, n, &self.model)
        finally:
            free(ptrs)
            free(sptrs)
        _check(s, "creating the model")
        self.wtype = wtype
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.directions = 2 if bidirectional else 1
        self.out_size = proj_size if proj_size else hidden_size
        self.has_c = cell == LSTM_CELL_LSTM

    def __dealloc__(self):
        if self.model != NULL:
            lstm_model_free(self.model)

    def release_memory(self):
        """Frees the scratch block kept between calls."""
        lstm_model_release_memory(self.model)

    def forward(self, x, lengths, h_0, c_0, output, h_n, c_n):
        """x: float32 (T, B, I) with a contiguous last axis (any other strides);
        lengths: a private contiguous int64 (B,) or None; h_0/c_0: contiguous
        float32 or None; output: float32 (T, B, D*out) with a contiguous last
        axis; h_n/c_n: contiguous (c_0/c_n None unless LSTM). Every array native
        and aligned."""
        cdef cnp.ndarray xa = x, oa = output
        cdef int64_t T, B, slots = self.num_layers * self.directions
        # C-level checks only: this runs on every call, streaming steps included
        _check_input(xa, -1, self.input_size)
        T = cnp.PyArray_DIMS(xa)[0]
        B = cnp.PyArray_DIMS(xa)[1]
        _check_output(oa, T, B, self.directions * self.out_size)
        if not self.has_c and (c_0 is not None or c_n is not None):
            raise ValueError("c_0/c_n buffers belong to the LSTM cell only")
        cdef lstm_forward_args args
        memset(&args, 0, sizeof(args))
        args.h_n = <float *>_state_ptr(h_n, slots, B, self.out_size, True, "h_n")
        if self.has_c:
            args.c_n = <float *>_state_ptr(c_n, slots, B, self.hidden_size, True, "c_n")
            args.c_0 = _state_ptr(c_0, slots, B, self.hidden_size, False, "c_0")
        args.h_0 = _state_ptr(h_0, slots, B, self.out_size, False, "h_0")
        args.lengths = _lengths_ptr(lengths, B)
        self._run(xa, oa, &args)

    cdef _run(self, cnp.ndarray xa, cnp.ndarray oa, lstm_forward_args *args):
        """Fills in the input and output of args (checked by the caller) and runs C."""
        _set_buffers(args, xa, oa)
        if PyThread_get_thread_ident() == _main_thread:
            args.interrupt = _poll_signals
        cdef lstm_status s
        with nogil:
            s = lstm_model_forward(self.model, args, NULL, 0)
        _check(s, "forward")

    cdef run_fast(self, x, h_0, c_0):
        """The common call (float32 (T, B, I) array, or unbatched (T, I), optional
        float32 C-contiguous h_0 (and c_0 for the LSTM) of the right shapes: (slots,
        B, width), or (slots, width) unbatched), checked and allocated here.
        Returns None when anything needs converting or a friendly error: the
        caller then takes the general path in model.py."""
        if type(x) is not np.ndarray:
            return None
        cdef cnp.ndarray xa = x
        cdef int nd = cnp.PyArray_NDIM(xa)
        if ((nd != 3 and nd != 2) or not _c_ready(xa)
                or cnp.PyArray_DIMS(xa)[nd - 1] != self.input_size
                or cnp.PyArray_STRIDES(xa)[nd - 1] != 4 or cnp.PyArray_STRIDES(xa)[0] % 4
                or cnp.PyArray_DIMS(xa)[0] == 0):
            return None
        if nd == 3 and (cnp.PyArray_STRIDES(xa)[1] % 4 or cnp.PyArray_DIMS(xa)[1] == 0):
            return None
        cdef cnp.npy_intp T = cnp.PyArray_DIMS(xa)[0], B = cnp.PyArray_DIMS(xa)[1] if nd == 3 else 1
        cdef cnp.npy_intp slots = self.num_layers * self.directions
        if not (_state_fits(h_0, nd, slots, B, self.out_size)
                and _state_fits(c_0, nd, slots, B, self.hidden_size)):
            return None
        # unbatched arrays are the batched ones without their batch axis
        cdef int wi = nd - 1  # the feature axis
        cdef cnp.npy_intp dims[3]
        dims[0] = T
        dims[1] = B
        dims[wi] = self.directions * self.out_size
        output = cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT, 0)
        dims[0] = slots
        dims[1] = B
        dims[wi] = self.out_size
        h_n = cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT, 0)
        # every buffer is now known to fit: straight to C, without forward's re-checks
        cdef lstm_forward_args args
        memset(&args, 0, sizeof(args))
        if h_0 is not None:
            args.h_0 = <const float *>cnp.PyArray_DATA(<cnp.ndarray>h_0)
        args.h_n = <float *>cnp.PyArray_DATA(<cnp.ndarray>h_n)
        if not self.has_c:
            self._run(xa, <cnp.ndarray>output, &args)
            return output, h_n
        dims[wi] = self.hidden_size
        c_n = cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT, 0)
        if c_0 is not None:
            args.c_0 = <const float *>cnp.PyArray_DATA(<cnp.ndarray>c_0)
        args.c_n = <float *>cnp.PyArray_DATA(<cnp.ndarray>c_n)
        self._run(xa, <cnp.ndarray>output, &args)
        return output, (h_n, c_n)


cdef bint _state_fits(object obj, int nd, cnp.npy_intp slots, cnp.npy_intp B,
                      cnp.npy_intp width):
    """obj is None or a C-contiguous float32 (slots, B, width), or (slots, width) for nd 2."""
    if obj is None:
        return True
    if type(obj) is not np.ndarray:
        return False
    cdef cnp.ndarray a = obj
    if not (_c_ready(a) and cnp.PyArray_NDIM(a) == nd and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_DIMS(a)[0] == slots and cnp.PyArray_DIMS(a)[nd - 1] == width):
        return False
    return nd == 2 or cnp.PyArray_DIMS(a)[1] == B

cdef const float *_state_ptr(object obj, int64_t slots, int64_t B, int64_t width,
                             bint writable, str name) except? NULL:
    """Pointer to a C-contiguous float32 (slots, B, width) array; NULL for None inputs."""
    if obj is None:
        if writable:
            raise ValueError(f"{name} buffer is required")
        return NULL
    cdef cnp.ndarray a = obj
    if (not _c_ready(a) or cnp.PyArray_NDIM(a) != 3
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_DIMS(a)[0] != slots
            or cnp.PyArray_DIMS(a)[1] != B or cnp.PyArray_DIMS(a)[2] != width
            or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        raise ValueError(f"{name} buffer: bad shape, dtype or layout")
    return <const float *>cnp.PyArray_DATA(a)


cdef class Dense:
    """An immutable C dense layer (torch.nn.Linear) from float32 weight (out, in)
    and bias (out,) or None: each row's result depends on that row alone."""
    cdef lstm_dense *dense
    cdef readonly int64_t in_features, out_features

    def __cinit__(self, weight, bias):
        cdef cnp.ndarray w = np.array(weight, dtype=np.float32, order="C")  # private copies
        cdef cnp.ndarray b = None if bias is None else np.array(bias, dtype=np.float32, order="C")
        if w.ndim != 2 or (b is not None and (b.ndim != 1 or b.shape[0] != w.shape[0])):
            raise ValueError("dense layer: weight must be (out, in) and bias (out,)")
        cdef lstm_status s
        cdef const float *bp = NULL
        if b is not None:
            bp = <const float *>cnp.PyArray_DATA(b)
        with nogil:
            s = lstm_dense_create(cnp.PyArray_DIMS(w)[1], cnp.PyArray_DIMS(w)[0],
                                  <const float *>cnp.PyArray_DATA(w), bp, &self.dense)
        _check(s, "creating the dense layer")
        self.in_features = cnp.PyArray_DIMS(w)[1]
        self.out_features = cnp.PyArray_DIMS(w)[0]

    def __dealloc__(self):
        if self.dense != NULL:
            lstm_dense_free(self.dense)

    def forward(self, x):
        """x: float32 (rows, in_features), native and aligned, last axis contiguous
        (checked by the caller); returns a new float32 (rows, out_features)."""
        cdef cnp.ndarray xa = x
        if (cnp.PyArray_NDIM(xa) != 2 or not _c_ready(xa) or cnp.PyArray_DIMS(xa)[1] != self.in_features
                or (self.in_features > 1 and cnp.PyArray_STRIDES(xa)[1] != 4)
                or cnp.PyArray_STRIDES(xa)[0] % 4 or cnp.PyArray_STRIDES(xa)[0] < 0):
            raise ValueError("dense input buffer: bad shape, dtype or layout")
        cdef int64_t rows = cnp.PyArray_DIMS(xa)[0]
        cdef int64_t x_stride = cnp.PyArray_STRIDES(xa)[0] // 4 if rows > 1 else self.in_features
        if x_stride < self.in_features:
            raise ValueError("dense input buffer: rows overlap")
        cdef cnp.npy_intp dims[2]
        dims[0] = rows
        dims[1] = self.out_features
        cdef cnp.ndarray y = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT, 0)
        cdef lstm_status s
        with nogil:
            s = lstm_dense_forward(self.dense, rows, <const float *>cnp.PyArray_DATA(xa), x_stride,
                                   <float *>cnp.PyArray_DATA(y), self.out_features)
        _check(s, "dense layer")
        return y


def set_num_threads(n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"number of threads must be an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if n > LSTM_MAX_THREADS:
        raise ValueError(f"number of threads {n} is too large (at most {LSTM_MAX_THREADS})")
    cdef int count = n
    with nogil:
        lstm_set_num_threads(count)


def get_num_threads():
    cdef int n
    with nogil:  # never wait on a C lock while holding the GIL
        n = lstm_get_num_threads()
    return n


def get_isa():
    """The kernel set in use: 'avx512', 'avx2', 'neon' or 'scalar' -- the best this
    CPU has, unless the LSTM_INFER_ISA environment variable or set_isa chose another."""
    return lstm_get_isa().decode()


def set_isa(name):
    """Uses the kernel set `name` ('auto': the best this CPU has); ValueError for a
    set this CPU lacks. Every set computes the same model (results agree within
    float32 rounding); tests and benchmarks use it to compare them. Not to be
    called while another thread runs a model."""
    if name not in ("auto", "avx512", "avx2", "neon", "scalar"):
        raise ValueError(f"unknown or unsupported instruction set {name!r} "
                         f"(choose 'auto', 'avx512', 'avx2', 'neon' or 'scalar')")
    cdef bytes b = name.encode()
    if lstm_set_isa(b) != LSTM_OK:
        raise ValueError(f"unknown or unsupported instruction set {name!r}: "
                         f"this CPU lacks it (it has {get_isa()!r})")


cdef class Module:
    """Base of the recurrent layers in model.py: what their common call needs,
    as C fields, and that call."""
    cdef public Core _core
    cdef public bint batch_first

    def __call__(self, input, hx=None, lengths=None):
        """Runs the layer exactly like torch.nn.LSTM, nn.GRU or nn.RNN in eval mode.

        input: (T, B, input_size), or (B, T, input_size) with batch_first, or
          unbatched (T, input_size), or a list of (T_i, input_size) arrays.
        hx: optional initial state of shape (num_layers*D, B, out) --
          batch-second even with batch_first; (num_layers*D, out) for
          unbatched input. For the LSTM a tuple (h_0, c_0), c_0 of width
          hidden_size.
        lengths: optional (B,) integers in [0, T]: like pack_padded_sequence(
          enforce_sorted=False) -> module -> pad_packed_sequence(total_length=T).
          Outputs past a length are 0; a length of 0 returns h_0 as its state.
        Returns output, h_n (LSTM: output, (h_n, c_n)) as float32 arrays
        (output is a list for list input).
        """
        # the common call, a float32 array with no lengths and an optional float32
        # state, goes straight to C; anything else, and every error, to _call.
        # core is a local reference: a concurrent load_state_dict cannot free it mid-call
        cdef Core core = self._core
        # (batch_first does not apply to unbatched (T, input_size) input, as in torch)
        if lengths is None and core is not None and (
                not self.batch_first or (type(input) is np.ndarray and (<cnp.ndarray>input).ndim == 2)):
            result = None
            if hx is None:
                result = core.run_fast(input, None, None)
            elif not core.has_c:
                result = core.run_fast(input, hx, None)
            elif type(hx) is tuple and len(<tuple>hx) == 2:
                h_0, c_0 = <tuple>hx
                if h_0 is not None and c_0 is not None:
                    result = core.run_fast(input, h_0, c_0)
            if result is not None:
                return result
        return self._call(input, hx, lengths)


# ---------------------------------------------------------------- streaming
import os
import time

STREAM_IN_USE = ("this stream is in use by another thread: a stream must not be shared between "
                 "threads (make one stream per thread with model.stream(); they may share the model)")

# A stream call of fewer flops than this runs with the GIL held; longer calls
# release it, so other threads run meanwhile. Releasing costs ~0.1 us when no
# other thread wants the GIL (~4% of a 64->64 LSTM step), and when another
# thread is running Python it hands that thread the GIL at every call, to be
# taken back only after a wait: the stream then shares the GIL unevenly, a 2 us
# step taking several times longer on average than with the GIL held, where
# both threads take turns by the switch interval (5 ms) as any two Python
# threads do (tools/bench_stream.py, GIL table). Held, a call delays other
# threads by its own length only: under 4e5 flops ~13 us with AVX2 (~30
# GFLOP/s at batch 1), ~120 us with the scalar kernels, well below the switch
# interval. It stays below the C core's threshold for using its thread pool
# (1.5e6 flops), so a call holding the GIL never waits for worker threads.
cdef double HOLD_GIL_FLOPS = 4e5


def _hold_gil_flops(value=None):
    """HOLD_GIL_FLOPS; set to value when given (a benchmark or test runs both
    paths with it). Returns the value before."""
    global HOLD_GIL_FLOPS
    before = HOLD_GIL_FLOPS
    if value is not None:
        HOLD_GIL_FLOPS = value
    return before

# The in-use mark of a stream holds the generation it was set in; a forked child
# starts a new generation, so a call that another thread of the parent was
# running at fork time (that thread does not exist in the child) does not leave
# the child's copy of the stream in use forever.
cdef unsigned int _generation = 1


def _new_generation():
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_new_generation)


cdef class InUse:
    """The mark of an object (a stream) that one thread at a time may use:
    `with mark:` around each use; a use from another thread meanwhile raises
    RuntimeError. It is checked and set with the GIL held, in C (no bytecode
    boundary between the check and the set), so it needs no lock."""
    cdef unsigned int _mark  # _generation while in use, else 0

    cdef inline bint busy(self):
        return self._mark == _generation

    cdef int enter(self) except -1:
        if self._mark == _generation:
            raise RuntimeError(STREAM_IN_USE)
        self._mark = _generation
        return 0

    cdef inline void exit(self):
        self._mark = 0

    def __enter__(self):
        self.enter()
        return self

    def __exit__(self, *exc):
        self.exit()
        return False


cdef class StreamBase:
    """Base of lstm_infer.stream.Stream: the carried state, the in-use mark and
    the one-step fast path. Every friendly check lives in stream.py.

    The state is double-buffered: a call reads h_0/c_0 from the current
    buffers and writes h_n/c_n into the other pair, which becomes current
    only when the call succeeded (an interrupted chunk leaves the state as it
    was). A slot with length 0 gets its h_0/c_0 copied to h_n/c_n by the C
    core, so it keeps its state bit for bit.

    A stream is used by one thread at a time (an InUse mark): a call that
    releases the GIL (a long one) sets the mark before and clears it after; a
    call that holds the GIL throughout (a short one) only checks it, as no
    other thread can run meanwhile."""
    cdef readonly Module model
    cdef readonly int batch_size
    cdef readonly bint batch_first
    cdef int _input_size, _out_size, _hidden_size, _slots
    cdef bint _has_c
    cdef int _cur               # which buffer pair holds the state: 0 or 1
    cdef cnp.ndarray _h0, _h1, _c0, _c1
    cdef float *_h[2]           # data of _h0, _h1 (fixed: the state is copied into them)
    cdef float *_c[2]           # data of _c0, _c1; NULL unless LSTM
    cdef InUse _in_use          # set while a call or state access runs
    cdef double _step_flops     # of one step of every slot
    cdef int _ws_wtype          # the weight type _ws was sized for (a reload may change it)
    cdef void *_ws              # this stream's scratch for one-step calls
    cdef size_t _ws_size

    def __cinit__(self, *args, **kwargs):
        self._in_use = InUse()

    def __dealloc__(self):
        free(self._ws)

    def _setup(self, Module model, int batch_size, double step_flops):
        """Buffers for batch_size slots of a checked uni-directional model whose
        step of every slot costs step_flops."""
        cdef Core core = model._core
        if core.directions != 1 or batch_size < 1:
            raise ValueError("a stream needs a uni-directional model and batch_size >= 1")
        self.model = model
        self.batch_size = batch_size
        self.batch_first = model.batch_first
        self._input_size = core.input_size
        self._out_size = core.out_size
        self._hidden_size = core.hidden_size
        self._slots = core.num_layers
        self._has_c = core.has_c
        self._step_flops = step_flops
        self._h0 = np.zeros((self._slots, batch_size, self._out_size), np.float32)
        self._h1 = np.zeros((self._slots, batch_size, self._out_size), np.float32)
        self._h[0] = <float *>cnp.PyArray_DATA(self._h0)
        self._h[1] = <float *>cnp.PyArray_DATA(self._h1)
        self._c[0] = self._c[1] = NULL
        if self._has_c:
            self._c0 = np.zeros((self._slots, batch_size, self._hidden_size), np.float32)
            self._c1 = np.zeros((self._slots, batch_size, self._hidden_size), np.float32)
            self._c[0] = <float *>cnp.PyArray_DATA(self._c0)
            self._c[1] = <float *>cnp.PyArray_DATA(self._c1)
        self._size_scratch(core)
        self._cur = 0

    cdef int _size_scratch(self, Core core) except -1:
        """Scratch for one step of core, whose shapes must be the stream's."""
        if (core.input_size != self._input_size or core.hidden_size != self._hidden_size
                or core.out_size != self._out_size or core.num_layers != self._slots
                or core.directions != 1 or core.has_c != self._has_c):
            raise ValueError("the model's shapes changed since this stream was made")
        cdef size_t need = 0
        _check(lstm_workspace_size(core.model, 1, self.batch_size, NULL, &need), "stream scratch")
        need += 64  # the core aligns the block itself
        cdef void *ws = malloc(need)
        if ws == NULL:
            raise MemoryError()
        free(self._ws)
        self._ws = ws
        self._ws_size = need
        self._ws_wtype = core.wtype
        return 0

    cdef int _go(self, lstm_forward_args *args) except -1:
        """Runs args (input, output and lengths filled in) on the current state;
        the state advances when the call succeeds. Nothing in here runs Python
        code before the C call (no allocation), so with the GIL held no other
        use of the stream can come between."""
        if self.model is None:
            raise TypeError("this stream was not set up: make streams with model.stream()")
        cdef Core core = self.model._core  # a concurrent weight reload cannot free it
        cdef lstm_status s
        cdef int cur = self._cur
        cdef void *ws = NULL
        cdef size_t ws_size = 0
        if self._in_use.busy():
            raise RuntimeError(STREAM_IN_USE)
        if core.wtype != self._ws_wtype:  # weights reloaded to another storage
            self._size_scratch(core)
        if args.seq_len == 1:
            ws = self._ws
            ws_size = self._ws_size
        args.h_0 = self._h[cur]
        args.h_n = self._h[1 - cur]
        args.c_0 = self._c[cur]
        args.c_n = self._c[1 - cur]
        if <double>args.seq_len * self._step_flops < HOLD_GIL_FLOPS:
            s = lstm_model_forward(core.model, args, ws, ws_size)
        else:
            if args.seq_len > 1 and PyThread_get_thread_ident() == _main_thread:
                args.interrupt = _poll_signals
            self._in_use.enter()
            with nogil:
                s = lstm_model_forward(core.model, args, ws, ws_size)
            self._in_use.exit()
        if s != LSTM_OK:
            _check(s, "stream")
        self._cur = 1 - cur
        return 0

    def __call__(self, x, lengths=None):
        """One step or a chunk of steps; see lstm_infer.stream.Stream."""
        # the common call, one step on a float32 array without lengths, is
        # handled here; anything else, and every error, goes to _call
        cdef cnp.ndarray xa, out
        cdef int nd
        cdef cnp.npy_intp dims[2]
        cdef cnp.npy_intp *shape
        cdef lstm_forward_args args
        if lengths is None and cnp.PyArray_CheckExact(x):
            xa = <cnp.ndarray>x
            nd = cnp.PyArray_NDIM(xa)
            shape = cnp.PyArray_DIMS(xa)
            if ((nd == 1 or nd == 2) and shape[nd - 1] == self._input_size and _c_ready(xa)
                    and (cnp.PyArray_STRIDES(xa)[nd - 1] == 4 or self._input_size == 1)
                    and (nd == 1 and self.batch_size == 1
                         or nd == 2 and shape[0] == self.batch_size
                         and cnp.PyArray_STRIDES(xa)[0] % 4 == 0)):
                dims[0] = self.batch_size
                dims[1] = self._out_size
                out = cnp.PyArray_EMPTY(nd, &dims[2 - nd], cnp.NPY_FLOAT, 0)  # (B, out) or (out,)
                memset(&args, 0, sizeof(args))
                args.seq_len = 1
                args.batch = self.batch_size
                args.input = <const float *>cnp.PyArray_DATA(xa)
                args.input_stride_b = (cnp.PyArray_STRIDES(xa)[0] // 4 if nd == 2
                                       else self._input_size)
                args.input_stride_t = args.input_stride_b * self.batch_size
                args.output = <float *>cnp.PyArray_DATA(out)
                args.output_stride_b = self._out_size
                args.output_stride_t = self._out_size * self.batch_size
                self._go(&args)
                return out
        return self._call(x, lengths)

    def _run_chunk(self, x, lengths, output):
        """x: float32 (T, B, I) with a contiguous last axis; lengths: private
        contiguous int64 (B,) or None; output: float32 (T, B, out) with a
        contiguous last axis. Every array native and aligned (checked here)."""
        cdef cnp.ndarray xa = x, oa = output
        cdef int64_t T, B = self.batch_size
        _check_input(xa, B, self._input_size)
        T = cnp.PyArray_DIMS(xa)[0]
        _check_output(oa, T, B, self._out_size)
        cdef lstm_forward_args args
        memset(&args, 0, sizeof(args))
        args.lengths = _lengths_ptr(lengths, B)
        _set_buffers(&args, xa, oa)
        self._go(&args)

    def _mark(self):
        """Which buffer pair holds the state now (see _rewind)."""
        return self._cur

    def _rewind(self, int mark):
        """The state as it was when _mark() gave mark, undoing one call made
        since (a call writes the other pair, so the old one is intact until the
        next): a whole model's stream undoes its layers' steps this way when a
        later layer fails, or in a child forked during its call."""
        self._cur = 1 if mark else 0

    @property
    def _holds_gil(self):
        """Whether a one-step call runs with the GIL held (see HOLD_GIL_FLOPS)."""
        return self._step_flops < HOLD_GIL_FLOPS

    # state access: NumPy may release the GIL while it copies, so these mark the
    # stream in use too
    def _reset_slot(self, int slot):
        """Zeros slot `slot` of the state, every slot when slot < 0."""
        with self._in_use:
            h = self._h0 if self._cur == 0 else self._h1
            c = (self._c0 if self._cur == 0 else self._c1) if self._has_c else None
            if slot < 0:
                h.fill(0)
                if c is not None:
                    c.fill(0)
            else:
                h[:, slot] = 0
                if c is not None:
                    c[:, slot] = 0

    def _get_state(self):
        """Copies of the current (h, c), c None unless LSTM."""
        with self._in_use:
            h = (self._h0 if self._cur == 0 else self._h1).copy()
            c = None
            if self._has_c:
                c = (self._c0 if self._cur == 0 else self._c1).copy()
            return h, c

    def _set_state(self, h, c):
        """Copies checked float32 arrays of the state's shapes into the state."""
        with self._in_use:
            (self._h0 if self._cur == 0 else self._h1)[...] = h
            if self._has_c:
                (self._c0 if self._cur == 0 else self._c1)[...] = c

    def _time_c_step(self, x, int64_t n):
        """Seconds per bare C call of one step on x (batch_size, input) float32
        C-contiguous, n calls in a row without the GIL, the state carried from
        call to call through two buffers as st(x) carries it (starting from a
        copy of this stream's state, which stays as it was): a benchmark's
        floor, what the C core costs without Python and the binding."""
        if self.model is None:
            raise TypeError("this stream was not set up: make streams with model.stream()")
        cdef cnp.ndarray xa = np.ascontiguousarray(x, dtype=np.float32).reshape(
            self.batch_size, self._input_size)
        cdef cnp.ndarray out = np.empty((self.batch_size, self._out_size), np.float32)
        h_now, c_now = self._get_state()
        cdef cnp.ndarray h = np.stack([h_now, h_now])
        cdef cnp.ndarray c = np.stack([c_now, c_now]) if self._has_c else None
        cdef float *hp = <float *>cnp.PyArray_DATA(h)
        cdef float *cp = <float *>cnp.PyArray_DATA(c) if self._has_c else NULL
        cdef int64_t h_size = h_now.size, c_size = c_now.size if self._has_c else 0
        cdef lstm_forward_args args
        memset(&args, 0, sizeof(args))
        args.seq_len = 1
        args.batch = self.batch_size
        args.input = <const float *>cnp.PyArray_DATA(xa)
        args.input_stride_b = self._input_size
        args.input_stride_t = self._input_size * self.batch_size
        args.output = <float *>cnp.PyArray_DATA(out)
        args.output_stride_b = self._out_size
        args.output_stride_t = self._out_size * self.batch_size
        cdef Core core = self.model._core
        if core.wtype != self._ws_wtype:
            self._size_scratch(core)
        cdef lstm_status s = LSTM_OK
        cdef int64_t i
        cdef int cur
        t0 = time.perf_counter()
        with nogil:
            for i in range(n):
                cur = i & 1
                args.h_0 = hp + cur * h_size
                args.h_n = hp + (1 - cur) * h_size
                if cp != NULL:
                    args.c_0 = cp + cur * c_size
                    args.c_n = cp + (1 - cur) * c_size
                s = lstm_model_forward(core.model, &args, self._ws, self._ws_size)
                if s != LSTM_OK:
                    break
        t1 = time.perf_counter()
        _check(s, "stream")
        return (t1 - t0) / n

