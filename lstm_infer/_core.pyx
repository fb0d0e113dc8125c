# cython: language_level=3
"""Thin binding to the C core: checks buffers, releases the GIL, calls C.

Argument validation with friendly messages lives in model.py; this layer only
guarantees that what reaches C has the right dtype, layout and sizes.
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

cimport numpy as cnp
import numpy as np

from lstm_infer._core cimport *

cnp.import_array()


cdef _check(lstm_status s, what):
    if s != LSTM_OK:
        msg = lstm_status_string(s).decode()
        if s == 2:
            raise MemoryError(f"{what}: {msg}")
        raise ValueError(f"{what}: {msg}")


cdef class Core:
    """An immutable C model built from float32 weights in torch state_dict order."""
    cdef lstm_model *model
    cdef readonly int input_size, hidden_size, num_layers, out_size, directions

    def __cinit__(self, int input_size, int hidden_size, int num_layers, bint bias,
                  bint bidirectional, int proj_size, list weights):
        cdef lstm_config cfg
        cfg.input_size = input_size
        cfg.hidden_size = hidden_size
        cfg.num_layers = num_layers
        cfg.bias = bias
        cfg.bidirectional = bidirectional
        cfg.proj_size = proj_size
        cdef size_t n = lstm_weight_count(&cfg)
        if n == 0:
            raise ValueError("invalid LSTM configuration")
        if <size_t>len(weights) != n:
            raise ValueError(f"expected {n} weight arrays, got {len(weights)}")
        arrays = [np.ascontiguousarray(w, dtype=np.float32) for w in weights]
        cdef const float **ptrs = <const float **>malloc(n * sizeof(float *))
        if ptrs == NULL:
            raise MemoryError()
        cdef cnp.ndarray a
        cdef lstm_status s
        try:
            for i in range(n):
                a = arrays[i]
                ptrs[i] = <const float *>cnp.PyArray_DATA(a)
            with nogil:
                s = lstm_model_create(&cfg, ptrs, n, &self.model)
        finally:
            free(ptrs)
        _check(s, "creating the model")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.directions = 2 if bidirectional else 1
        self.out_size = proj_size if proj_size else hidden_size

    def __dealloc__(self):
        if self.model != NULL:
            lstm_model_free(self.model)

    def forward(self, x, lengths, h_0, c_0, output, h_n, c_n):
        """x: float32 (T, B, I) with a contiguous last axis (any other strides);
        lengths: contiguous int64 (B,) or None; h_0/c_0: contiguous float32 or None;
        output: float32 (T, B, D*out) with a contiguous last axis; h_n/c_n: contiguous."""
        cdef cnp.ndarray xa = x, oa = output
        cdef cnp.ndarray hn = h_n, cn = c_n
        cdef lstm_forward_args args
        cdef int64_t T = xa.shape[0], B = xa.shape[1]
        if (xa.ndim != 3 or xa.dtype != np.float32 or xa.shape[2] != self.input_size
                or (xa.shape[2] > 1 and xa.strides[2] != 4)):
            raise ValueError("input buffer: bad shape, dtype or layout")
        if (oa.ndim != 3 or oa.dtype != np.float32 or oa.shape[0] != T or oa.shape[1] != B
                or oa.shape[2] != self.directions * self.out_size or oa.strides[2] != 4
                or not oa.flags.writeable):
            raise ValueError("output buffer: bad shape, dtype or layout")
        cdef int64_t slots = self.num_layers * self.directions
        for name, arr, width in (("h_n", hn, self.out_size), ("c_n", cn, self.hidden_size),
                                 ("h_0", h_0, self.out_size), ("c_0", c_0, self.hidden_size)):
            if arr is None:
                continue
            if (arr.dtype != np.float32 or not arr.flags.c_contiguous
                    or arr.shape != (slots, B, width)):
                raise ValueError(f"{name} buffer: bad shape, dtype or layout")
        cdef cnp.ndarray la
        args.lengths = NULL
        if lengths is not None:
            la = lengths
            if la.dtype != np.int64 or not la.flags.c_contiguous or la.shape[0] != B:
                raise ValueError("lengths buffer: bad shape, dtype or layout")
            args.lengths = <const int64_t *>cnp.PyArray_DATA(la)
        args.seq_len = T
        args.batch = B
        args.input = <const float *>cnp.PyArray_DATA(xa)
        args.input_stride_t = xa.strides[0] // 4
        args.input_stride_b = xa.strides[1] // 4
        args.h_0 = NULL if h_0 is None else <const float *>cnp.PyArray_DATA(<cnp.ndarray>h_0)
        args.c_0 = NULL if c_0 is None else <const float *>cnp.PyArray_DATA(<cnp.ndarray>c_0)
        args.output = <float *>cnp.PyArray_DATA(oa)
        args.output_stride_t = oa.strides[0] // 4
        args.output_stride_b = oa.strides[1] // 4
        args.h_n = <float *>cnp.PyArray_DATA(hn)
        args.c_n = <float *>cnp.PyArray_DATA(cn)
        cdef lstm_status s
        with nogil:
            s = lstm_model_forward(self.model, &args, NULL, 0)
        _check(s, "forward")


def set_num_threads(int n):
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    with nogil:
        lstm_set_num_threads(n)


def get_num_threads():
    return lstm_get_num_threads()


def get_isa():
    return lstm_get_isa().decode()


def set_isa(name):
    cdef bytes b = str(name).encode()
    if lstm_set_isa(b) != LSTM_OK:
        raise ValueError(f"unknown or unsupported instruction set {name!r} "
                         f"(choose 'auto', 'avx2' or 'scalar'; this CPU may lack avx2)")
