/*
 * lstm_infer.h - CPU inference for PyTorch-compatible recurrent networks, in
 * plain C11 with POSIX threads.
 *
 * The semantics are those of torch.nn.LSTM, nn.GRU and nn.RNN (tanh or relu)
 * in eval mode: stacked layers, bidirectional, optional biases, optional
 * projection (proj_size, LSTM only), and variable-length batches that behave
 * like pack_padded_sequence(..., enforce_sorted=False) -> module ->
 * pad_packed_sequence. The cells (nn.LSTMCell, ...) are one-layer modules
 * run for one step.
 *
 * Usage:
 *
 *     lstm_config cfg = {.input_size = 40, .hidden_size = 128, .num_layers = 2,
 *                        .bias = 1, .bidirectional = 1, .cell = LSTM_CELL_LSTM};
 *     lstm_model *m;
 *     if (lstm_model_create(&cfg, weights, n_weights, &m) != LSTM_OK) ...
 *     lstm_forward_args a = {.seq_len = T, .batch = B, .input = x,
 *                            .input_stride_t = B * 40, .input_stride_b = 40,
 *                            .lengths = lens, .output = y,
 *                            .output_stride_t = B * 256, .output_stride_b = 256,
 *                            .h_n = hn, .c_n = cn};
 *     lstm_status s = lstm_model_forward(m, &a, NULL, 0);  // library allocates scratch
 *     lstm_model_free(m);
 *
 * or, from a model file written by `lstm-infer convert`:
 *
 *     if (lstm_model_load("model.lstm", &m) != LSTM_OK) ...
 *     const lstm_config *c = lstm_model_config(m);             // its shapes
 *
 * Threading: a model is read-only after lstm_model_create, so any number of
 * threads may call lstm_model_forward on it at once, each with its own outputs
 * and workspace. The library's own worker threads serve one call at a time;
 * a call that finds them busy runs on the calling thread alone.
 */
#ifndef LSTM_INFER_H
#define LSTM_INFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the public API: the shared library is built with -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define LSTM_API __attribute__((visibility("default")))
#else
#define LSTM_API
#endif

typedef enum {
    LSTM_OK = 0,
    LSTM_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a negative size, a bad length, ... */
    LSTM_ERR_OUT_OF_MEMORY = 2,
    LSTM_ERR_SIZE_OVERFLOW = 3,    /* sizes whose product does not fit in memory */
    LSTM_ERR_WORKSPACE_TOO_SMALL = 4,
    LSTM_ERR_UNKNOWN_ISA = 5,
    LSTM_ERR_INTERRUPTED = 6,      /* the interrupt callback asked the call to stop */
    LSTM_ERR_IO = 7,               /* a model file could not be opened or read (see errno) */
    LSTM_ERR_BAD_FILE = 8,         /* not a valid lstm_infer model file */
    LSTM_ERR_UNSUPPORTED = 9       /* a valid model file of a kind or version this library does not read */
} lstm_status;

/* Limits of lstm_config and lstm_set_num_threads. */
#define LSTM_MAX_FEATURES (1 << 24) /* input_size, hidden_size */
#define LSTM_MAX_LAYERS 1024
#define LSTM_MAX_THREADS 256

/* The recurrent cell of every layer. */
typedef enum {
    LSTM_CELL_LSTM = 0,     /* 4 gates i, f, g, o (torch.nn.LSTM) */
    LSTM_CELL_GRU = 1,      /* 3 gates r, z, n (torch.nn.GRU) */
    LSTM_CELL_RNN_TANH = 2, /* 1 gate, h = tanh(...) (torch.nn.RNN) */
    LSTM_CELL_RNN_RELU = 3  /* 1 gate, h = relu(...) */
} lstm_cell_kind;

/*
 * How the model stores its weight matrices (weight_ih, weight_hh, weight_hr;
 * biases stay float32). Reduced weights are opt-in: fewer bytes to stream
 * per step, at a small loss of accuracy.
 *   F16: IEEE half, rounded to nearest even; the arithmetic is float32 on the
 *        converted values, so the model computes exactly what a float32 model
 *        built from the rounded weights computes.
 *   I8:  weight_hh as int8 in [-127, 127] with a float32 scale per output
 *        row (symmetric): w[r][k] ~ scale[r] * q[r][k] with m = max_k |w[r][k]|,
 *        scale[r] = m / 127, q = round-half-even(w * (127 / m)) (a row with m
 *        below 2^-100 is zero). The recurrent sums h @ W_hh^T quantize h per
 *        step and per sequence the same way but to int16, qmax = min(32767,
 *        INT32_MAX / (127 * Kq)) in place of 127, Kq = the state width rounded
 *        up to 4 (a row of h with NaN or Inf makes its sums NaN), and add the
 *        int16 x int8 products exactly in int32. (h in int8 cost the trained
 *        example GRU as much error as weight_hh in int8: 1.2e-2 against 9e-3.)
 *        weight_ih and weight_hr are stored as F16: the input projection runs
 *        over all steps at once, bound by arithmetic rather than bytes, and
 *        int8 there doubled the error of a trained GRU (2.3e-2 against 1e-2).
 *        The state width (proj_size or hidden_size) is at most LSTM_MAX_I8_STATE.
 * lstm_weight_storage tells the storage of each weight array.
 */
typedef enum {
    LSTM_WEIGHTS_F32 = 0,
    LSTM_WEIGHTS_F16 = 1,
    LSTM_WEIGHTS_I8 = 2
} lstm_weight_type;

#define LSTM_MAX_I8_STATE 16384

/* A short English description of a status; never NULL, static storage. */
LSTM_API const char *lstm_status_string(lstm_status status);

typedef struct {
    int32_t input_size;    /* features per input step, in [1, LSTM_MAX_FEATURES] */
    int32_t hidden_size;   /* H, in [1, LSTM_MAX_FEATURES] */
    int32_t num_layers;    /* L, in [1, LSTM_MAX_LAYERS] */
    int32_t bias;          /* 0 or 1: bias_ih/bias_hh present */
    int32_t bidirectional; /* 0 or 1; D = 1 + bidirectional */
    int32_t proj_size;     /* P, 0 for none, else 0 < P < H (LSTM only) */
    int32_t cell;          /* lstm_cell_kind; 0 (LSTM) when left zero */
    int32_t weights;       /* lstm_weight_type; 0 (float32) when left zero */
} lstm_config;

typedef struct lstm_model lstm_model;

/*
 * The number of weight arrays lstm_model_create expects for cfg, 0 if cfg is
 * invalid. With G gates (4 LSTM, 3 GRU, 1 RNN), per layer k, per direction
 * d (forward first), in this order:
 *   weight_ih  (G*H, in_k)  in_0 = input_size, in_k = D * out
 *   weight_hh  (G*H, out)   out = P if proj_size else H
 *   bias_ih    (G*H)        only when cfg->bias
 *   bias_hh    (G*H)        only when cfg->bias
 *   weight_hr  (P, H)       only when cfg->proj_size
 * This is the order of the torch module's state_dict, gates in torch's order.
 */
LSTM_API size_t lstm_weight_count(const lstm_config *cfg);

/* The shape of weight array `index` (as above): shape[1] is 0 for a bias. */
LSTM_API lstm_status lstm_weight_shape(const lstm_config *cfg, size_t index, int64_t shape[2]);

/* How the model stores weight array `index` (an lstm_weight_type: F32 for the
 * biases), or -1 when cfg or index is invalid. */
LSTM_API int32_t lstm_weight_storage(const lstm_config *cfg, size_t index);

/*
 * Builds a model: checks cfg, copies and repacks the row-major float32
 * weights (the caller keeps ownership of them), reducing the matrices when
 * cfg->weights asks for it (see lstm_reduce_weight). On success *out must be
 * freed with lstm_model_free.
 */
LSTM_API lstm_status lstm_model_create(const lstm_config *cfg, const float *const *weights,
                                       size_t n_weights, lstm_model **out);

/*
 * Reduces one row-major (rows, cols) float32 weight matrix to the storage
 * `type` (LSTM_WEIGHTS_F16 or _I8, see lstm_weight_storage) exactly as
 * lstm_model_create does:
 * F16: dst receives rows*cols half-precision bit patterns (uint16_t);
 * I8: dst receives rows*cols int8_t and scales the rows float32 scales.
 * Returns LSTM_ERR_INVALID_ARGUMENT for a value the type cannot hold (F16: a
 * finite value beyond the half range; I8: NaN or Inf).
 */
LSTM_API lstm_status lstm_reduce_weight(int32_t type, const float *src, int64_t rows, int64_t cols,
                                        void *dst, float *scales);

/*
 * lstm_model_create for cfg->weights F16 or I8 from weights already reduced
 * (by lstm_reduce_weight, or read back from a file): the result is bit for
 * bit the model lstm_model_create builds from the float32 originals. Each
 * array weights[i] is in its lstm_weight_storage: uint16_t (F16), int8_t in
 * [-127, 127] (I8, with scales[i] its shape[0] finite non-negative float32
 * scales) or float (the biases); scales[i] is read for I8 arrays only
 * (scales may be NULL for an F16 model).
 */
LSTM_API lstm_status lstm_model_create_reduced(const lstm_config *cfg, const void *const *weights,
                                               const float *const *scales, size_t n_weights,
                                               lstm_model **out);
LSTM_API void lstm_model_free(lstm_model *model);
LSTM_API const lstm_config *lstm_model_config(const lstm_model *model);

/*
 * Reads a model file written by `lstm-infer convert` or lstm_infer's save()
 * (kinds LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell; float32 weights, or
 * float16/int8 as `convert --weights` stores them, built as by
 * lstm_model_create_reduced) and builds its model; on success *out must be
 * freed with lstm_model_free. Every header field, offset,
 * size and dtype is checked against the file first: a malformed file gives
 * LSTM_ERR_BAD_FILE, a valid file of another kind or a newer format version
 * LSTM_ERR_UNSUPPORTED, an unreadable path LSTM_ERR_IO (errno says why; only
 * regular files are read). Memory and work grow with the file's size only.
 * lstm_model_load_buffer reads the file's bytes from data (any alignment; the
 * caller keeps them).
 */
LSTM_API lstm_status lstm_model_load(const char *path, lstm_model **out);
LSTM_API lstm_status lstm_model_load_buffer(const void *data, size_t size, lstm_model **out);

/*
 * What a model file records beyond lstm_config. A cell (LSTMCell, GRUCell,
 * RNNCell) is a one-layer model run for one step: input (B, input_size) is a
 * call with seq_len 1. batch_first is the layers' torch argument: lstm_model_forward
 * takes any layout through its strides, e.g. for (B, T, I) input
 * input_stride_t = I and input_stride_b = T*I.
 */
typedef struct {
    char kind[16];         /* "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell" or "RNNCell" */
    int32_t is_cell;       /* 1 for the cells */
    int32_t batch_first;   /* 0 or 1 (always 0 for the cells) */
} lstm_file_info;

/* As above, also filling *info (which may be NULL) on success. */
LSTM_API lstm_status lstm_model_load_info(const char *path, lstm_model **out, lstm_file_info *info);
LSTM_API lstm_status lstm_model_load_buffer_info(const void *data, size_t size, lstm_model **out,
                                                 lstm_file_info *info);

/*
 * One forward call. Shapes use T = seq_len, B = batch, D, H, out as above.
 * Strides are in floats; the feature axis of input and output is contiguous.
 * c_0 and c_n belong to the LSTM cell and must be NULL for the others.
 * Every array is read or written during the call only, and must not change
 * during it (lengths included).
 */
typedef struct {
    int64_t seq_len, batch;
    const float *input;      /* (T, B, input_size) at input + t*stride_t + b*stride_b */
    int64_t input_stride_t, input_stride_b;
    const int64_t *lengths;  /* B entries in [0, T], any order; NULL means all T */
    const float *h_0;        /* (L*D, B, out) contiguous, or NULL for zeros */
    const float *c_0;        /* (L*D, B, H) contiguous, or NULL for zeros */
    float *output;           /* (T, B, D*out); steps past a length are set to 0 */
    int64_t output_stride_t, output_stride_b;
    float *h_n;              /* (L*D, B, out) contiguous, or NULL */
    float *c_n;              /* (L*D, B, H) contiguous, or NULL */
    /* Optional: called on the calling thread between layers and every few
     * milliseconds of work; a non-zero return stops the call, which then
     * returns LSTM_ERR_INTERRUPTED with the outputs unspecified. */
    int (*interrupt)(void *ctx);
    void *interrupt_ctx;
} lstm_forward_args;

/*
 * Bytes of scratch lstm_model_forward needs for seq_len x batch with these
 * lengths (NULL: all seq_len; the scratch grows with the valid steps, not
 * with seq_len x batch), on the kernels in use (lstm_set_isa; a float16 or
 * int8 model may widen its weights into the scratch for a long or batched
 * call). Returns LSTM_ERR_INVALID_ARGUMENT for a length
 * outside [0, seq_len] and LSTM_ERR_SIZE_OVERFLOW when the size cannot be
 * represented.
 */
LSTM_API lstm_status lstm_workspace_size(const lstm_model *model, int64_t seq_len,
                                         int64_t batch, const int64_t *lengths, size_t *bytes);

/*
 * Runs the model. workspace may be NULL (then the library provides scratch: the
 * model keeps the last such block for the next call, so repeated calls touch
 * no fresh memory; a call that needs less than a quarter of a kept block of
 * more than 1 MiB frees it and keeps its own instead; lstm_model_free and
 * lstm_model_release_memory release it) or at least lstm_workspace_size
 * bytes owned by this call.
 * A sequence of length 0 gets zeros in output and h_0/c_0 as its final state.
 * NaN and Inf in the input propagate as they do in PyTorch.
 */
LSTM_API lstm_status lstm_model_forward(const lstm_model *model, const lstm_forward_args *args,
                                        void *workspace, size_t workspace_size);

/* Frees the scratch block the model keeps between calls (safe during calls). */
LSTM_API void lstm_model_release_memory(lstm_model *model);

/*
 * A dense layer, y = x W^T + b (torch.nn.Linear), on the same kernels: the
 * heads of whole models. weight is row-major (out_features, in_features),
 * bias (out_features) or NULL; both are copied. Each row of a forward call
 * is computed alone, so its result does not depend on how many rows the
 * call has. x rows are x_stride floats apart, y rows y_stride; the calling
 * thread does the work. A dense layer is read-only after creation.
 */
typedef struct lstm_dense lstm_dense;
LSTM_API lstm_status lstm_dense_create(int64_t in_features, int64_t out_features,
                                       const float *weight, const float *bias, lstm_dense **out);
LSTM_API lstm_status lstm_dense_forward(const lstm_dense *dense, int64_t rows, const float *x,
                                        int64_t x_stride, float *y, int64_t y_stride);
LSTM_API void lstm_dense_free(lstm_dense *dense);

/*
 * Worker threads for all models (default: LSTM_INFER_NUM_THREADS, else the
 * usable cores), n in [1, LSTM_MAX_THREADS]. After fork() the child starts
 * with a fresh pool of the same size. lstm_get_num_threads never waits for
 * a running call. While the CPUs are crowded (calls whose threads spent over
 * a quarter of their time off their CPUs, two in a row), calls run on the
 * caller's thread for 0.1 s, doubled while it lasts, up to 10 s; the
 * environment variable LSTM_INFER_DYNAMIC=0 keeps them on their threads.
 */
LSTM_API void lstm_set_num_threads(int n);
LSTM_API int lstm_get_num_threads(void);

/*
 * SIMD kernels: "avx512" (x86-64 with AVX-512 F/VL/BW/DQ), "avx2" (x86-64
 * with AVX2+FMA+F16C), the best of them chosen from the CPU at first use;
 * "neon" (aarch64, which always has it) or "scalar" (the portable
 * reference, anywhere), overridable with the LSTM_INFER_ISA environment
 * variable; "auto" (lstm_set_isa only) is the best this CPU has. lstm_set_isa
 * changes it at run time (for tests); it must not race with a forward call.
 */
LSTM_API const char *lstm_get_isa(void);
LSTM_API lstm_status lstm_set_isa(const char *name);

#ifdef __cplusplus
}
#endif
#endif /* LSTM_INFER_H */
