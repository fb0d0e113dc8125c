/*
 * model.h - the model's layout, shared by model.c (creation, packing) and
 * forward.c (the forward pass). Internal to the library.
 */
#ifndef LSTM_MODEL_H
#define LSTM_MODEL_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "lstm_infer.h"

#define LSTM_ALIGN 64

/* The matrices hold float, half or int8 values as lstm_weight_storage says
 * (kernels.h); s_hh and colsum_hh go with an int8 w_hh (NULL otherwise). */
typedef struct {
    void *w_ih;      // D*tiles panels of (in rows x W): both directions' input weights
    float *bias;     // D*tiles*W: the input projection's bias, packed like a panel row
    void *w_hh[2];   // tiles panels of (out rows x W)
    float *b_hh[2];  // tiles*W: GRU only, b_hh (the other kinds fold it into bias)
    void *w_hr[2];   // ceil(P/64) panels of (H rows x 64), projection only
    float *s_hh[2];  // I8: a scale per packed column of w_hh
    int32_t *colsum_hh[2]; // I8: the sum of each packed column of w_hh (lstm_i8_colsums)
    int64_t in;      // input width: input_size for layer 0, else D*out
} layer_weights;

/* A library-owned scratch block: its size, then the workspace. */
typedef struct scratch {
    size_t size;
    max_align_t data[];
} scratch;

struct lstm_model {
    lstm_config cfg;
    int gates;            // G: 4 LSTM, 3 GRU, 1 RNN
    int64_t H, P, D, L;   // P = out = proj_size or H
    int64_t Hp, tiles;    // hidden padded to a multiple of 16, and Hp/16
    int64_t W;            // G*16: floats per panel row of a gate matrix
    int64_t proj_panels;  // ceil(P/64)
    layer_weights *layers;
    void *block;          // every packed weight in one allocation
    /* One spare scratch block (see forward.c), the only mutable part of a
     * model. Reusing it spares the page faults of fresh memory on every call,
     * which cost up to a fifth of a large 2-thread call. */
    _Atomic(scratch *) spare;
};

/* Checked arithmetic: every size is built with these, so overflow is an error. */
static inline int lstm_mul_ok(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_mul_overflow(a, b, out) && *out >= 0;
}
static inline int lstm_add_ok(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_add_overflow(a, b, out) && *out >= 0;
}

/* Bump allocator over one block; `size` counts bytes needed when base is NULL. */
typedef struct {
    char *base;
    int64_t size;
    int ok;
} lstm_arena;

static inline void *lstm_arena_take(lstm_arena *a, int64_t count, int64_t elem) {
    int64_t bytes, padded;
    if (!a->ok || !lstm_mul_ok(count, elem, &bytes) || !lstm_add_ok(bytes, LSTM_ALIGN - 1, &padded)) {
        a->ok = 0;
        return NULL;
    }
    padded &= ~(int64_t)(LSTM_ALIGN - 1);
    void *p = a->base ? a->base + a->size : NULL;
    if (!lstm_add_ok(a->size, padded, &a->size)) a->ok = 0;
    return p;
}

#endif /* LSTM_MODEL_H */
