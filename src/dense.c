/*
 * dense.c - the dense layer (torch.nn.Linear) on the recurrent layers' gemm
 * kernels. Its weights are packed like a projection (panels of 4 strips),
 * and every row of a call is computed on its own, so a row's result does
 * not depend on how many rows the call has: a sequence gets the same bits
 * alone as in any batch, which BLAS's small-matrix paths do not promise.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lstm_infer.h"
#include "model.h"

struct lstm_dense {
    int64_t in, out, panels;
    float *w;    // panels of (in rows x LSTM_PANEL), zero past out
    float *bias; // panels * LSTM_PANEL, zero past out (all zero without a bias)
};

lstm_status lstm_dense_create(int64_t in_features, int64_t out_features, const float *weight,
                              const float *bias, lstm_dense **out) {
    if (!out) return LSTM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!weight || in_features < 1 || out_features < 1 || in_features > LSTM_MAX_FEATURES ||
        out_features > LSTM_MAX_FEATURES)
        return LSTM_ERR_INVALID_ARGUMENT;
    const int64_t panels = (out_features + LSTM_PANEL - 1) / LSTM_PANEL;
    int64_t cols, wsize;
    if (!lstm_mul_ok(panels, LSTM_PANEL, &cols) || !lstm_mul_ok(cols, in_features, &wsize))
        return LSTM_ERR_SIZE_OVERFLOW;
    lstm_dense *d = calloc(1, sizeof(*d));
    if (!d) return LSTM_ERR_OUT_OF_MEMORY;
    d->in = in_features;
    d->out = out_features;
    d->panels = panels;
    d->w = aligned_alloc(LSTM_ALIGN, (size_t)wsize * sizeof(float));
    d->bias = aligned_alloc(LSTM_ALIGN, (size_t)cols * sizeof(float));
    if (!d->w || !d->bias) {
        lstm_dense_free(d);
        return LSTM_ERR_OUT_OF_MEMORY;
    }
    for (int64_t col = 0; col < cols; col++) {
        for (int64_t k = 0; k < in_features; k++)
            d->w[lstm_packed_at(in_features, 4, k, col)] =
                col < out_features ? weight[col * in_features + k] : 0.0f;
        d->bias[col] = bias && col < out_features ? bias[col] : 0.0f;
    }
    *out = d;
    return LSTM_OK;
}

lstm_status lstm_dense_forward(const lstm_dense *d, int64_t rows, const float *x, int64_t x_stride,
                               float *y, int64_t y_stride) {
    if (!d || rows < 0 || x_stride < d->in || y_stride < d->out) return LSTM_ERR_INVALID_ARGUMENT;
    if (rows == 0) return LSTM_OK;
    if (!x || !y) return LSTM_ERR_INVALID_ARGUMENT;
    const lstm_rows a = {(float *)x, x_stride, NULL}, c = {y, y_stride, NULL};
    lstm_active_kernels()->gemm(rows, d->in, a, NULL, d->w, 4, d->bias, 0, d->panels, d->out, c);
    return LSTM_OK;
}

void lstm_dense_free(lstm_dense *d) {
    if (!d) return;
    free(d->w);
    free(d->bias);
    free(d);
}
