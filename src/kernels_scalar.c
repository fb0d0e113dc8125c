/*
 * kernels_scalar.c - portable reference kernels. Every SIMD kernel is tested
 * against these; they are also the fallback on CPUs without AVX2.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// acc[16 ns] += a (K) @ the ns strips at w, each K rows of 16
static void strips(int ns, int64_t K, const float *a, const float *w, float *acc) {
    for (int s = 0; s < ns; s++) {
        float *out = acc + s * LSTM_TILE;
        for (int64_t k = 0; k < K; k++, w += LSTM_TILE)
            for (int j = 0; j < LSTM_TILE; j++) out[j] += a[k] * w[j];
    }
}

// value (k, j) of strip s (K rows) of a packed matrix, dequantized
static float weight_at(lstm_wmat w, int64_t K, int64_t s, int64_t k, int j) {
    switch (w.type) {
    case LSTM_WEIGHTS_F16:
        return lstm_half_to_float(((const uint16_t *)w.w)[(s * K + k) * LSTM_TILE + j]);
    case LSTM_WEIGHTS_I8: {
        const int8_t *q = (const int8_t *)w.w + s * lstm_i8_k(K) * LSTM_TILE;
        return (float)q[k / 4 * 4 * LSTM_TILE + j * 4 + k % 4] * w.scale[s * LSTM_TILE + j];
    }
    default:
        return ((const float *)w.w)[(s * K + k) * LSTM_TILE + j];
    }
}

// acc[16 ns] += a (K) @ the ns strips of w from strip s0, dequantized, in k order like strips
static void strips_r(int ns, int64_t K, const float *a, lstm_wmat w, int64_t s0, float *acc) {
    for (int s = 0; s < ns; s++) {
        float *out = acc + s * LSTM_TILE;
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < LSTM_TILE; j++) out[j] += a[k] * weight_at(w, K, s0 + s, k, j);
    }
}

// a (K) quantized to qa (Kq, zero past K) in [-lstm_i8_state_max(Kq), ..]; returns the row's scale (kernels.h)
static float quantize_row(const float *a, int64_t K, int16_t *qa) {
    const int64_t Kq = lstm_i8_k(K);
    const int32_t qmax = lstm_i8_state_max(Kq);
    float amax = 0.0f, inv;
    int finite = 1;
    for (int64_t k = 0; k < K; k++) {
        const float v = fabsf(a[k]);
        if (!(v <= FLT_MAX)) finite = 0;
        else if (v > amax) amax = v;
    }
    const float sa = lstm_i8_row_scale(amax, finite, qmax, &inv);
    for (int64_t k = 0; k < Kq; k++) qa[k] = (int16_t)(k < K ? lstm_i8_quantize(a[k], inv, qmax) : 0);
    return sa;
}

// acc[16 ns] = fmaf(qa . column, sa * scale, acc) for the ns int8 strips of w from strip s0
static void strips_i8(int ns, int64_t K, const int16_t *qa, float sa, lstm_wmat w, int64_t s0,
                      float *acc) {
    const int64_t Kq = lstm_i8_k(K);
    for (int s = 0; s < ns; s++) {
        const int8_t *q = (const int8_t *)w.w + (s0 + s) * Kq * LSTM_TILE;
        for (int j = 0; j < LSTM_TILE; j++) {
            int32_t isum = 0; // exact: |isum| <= Kq * 127 * lstm_i8_state_max(Kq)
            for (int64_t k = 0; k < Kq; k++) isum += qa[k] * q[k / 4 * 4 * LSTM_TILE + j * 4 + k % 4];
            float *out = acc + s * LSTM_TILE + j;
            *out = fmaf((float)isum, sa * w.scale[(s0 + s) * LSTM_TILE + j], *out);
        }
    }
}

/*
 * c rows (m, cols in panels [p0,p1) of `gates` strips) = bias + a (m, K) @ b.
 * A packed matrix and its bias are their strips one after another whatever
 * the strips a panel, so this runs strip by strip.
 */
static void gemm_scalar_r(int64_t m, int64_t K, lstm_rows a, const float *ap, lstm_wmat b, int gates,
                          const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    (void)ap; // the reference reads a
    float acc[LSTM_TILE];
    for (int64_t r = 0; r < m; r++) {
        const float *ar = lstm_row(a, r);
        float *cr = lstm_row(c, r);
        for (int64_t s = p0 * gates; s < p1 * gates && s * LSTM_TILE < ncols; s++) {
            for (int j = 0; j < LSTM_TILE; j++) acc[j] = bias ? bias[s * LSTM_TILE + j] : 0.0f;
            if (b.type == LSTM_WEIGHTS_F32) strips(1, K, ar, (const float *)b.w + s * K * LSTM_TILE, acc);
            else strips_r(1, K, ar, b, s, acc);
            int64_t n = ncols - s * LSTM_TILE;
            if (n > LSTM_TILE) n = LSTM_TILE;
            memcpy(cr + s * LSTM_TILE, acc, (size_t)n * sizeof(float));
        }
    }
}

static void gemm_scalar(int64_t m, int64_t K, lstm_rows a, const float *ap, const float *b, int gates,
                        const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    gemm_scalar_r(m, K, a, ap, (lstm_wmat){.w = b, .type = LSTM_WEIGHTS_F32}, gates, bias, p0, p1, ncols, c);
}

/*
 * The new h of one unit from its sums q[16j] (gate j; q = g + a @ W_hh, for
 * the GRU q = b_hh + a @ W_hh and gi[16j] the input part), its c (LSTM,
 * updated in place) and its previous h (GRU).
 */
static float unit_update(int cell, const float *q, const float *gi, float *c, float h_prev) {
    switch (cell) {
    case LSTM_CELL_LSTM: {
        const float i = sigmoid(q[0]), f = sigmoid(q[LSTM_TILE]);
        const float g = tanhf(q[2 * LSTM_TILE]), o = sigmoid(q[3 * LSTM_TILE]);
        *c = f * *c + i * g;
        return o * tanhf(*c);
    }
    case LSTM_CELL_GRU: {
        const float r = sigmoid(gi[0] + q[0]), z = sigmoid(gi[LSTM_TILE] + q[LSTM_TILE]);
        const float n = tanhf(gi[2 * LSTM_TILE] + r * q[2 * LSTM_TILE]);
        return n + z * (h_prev - n); // torch's (1 - z) * n + z * h_prev, as torch computes it
    }
    case LSTM_CELL_RNN_RELU:
        return q[0] > 0.0f || isnan(q[0]) ? q[0] : 0.0f; // NaN stays NaN, as in torch
    default:
        return tanhf(q[0]);
    }
}

// one step of kind `cell` for rows < m, tiles [t0,t1): sums = (g or b_hh) + a @ w_hh, then the update
static void cell_scalar_r(int cell, int64_t m, int64_t K, lstm_rows a, lstm_wmat w,
                          const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                          int64_t t1, int64_t H, lstm_rows h) {
    const int gates = lstm_gates(cell), W = gates * LSTM_TILE, gru = cell == LSTM_CELL_GRU;
    float acc[LSTM_MAX_GATES * LSTM_TILE], sa = 0.0f;
    int16_t qa[LSTM_MAX_I8_STATE];
    for (int64_t r = 0; r < m; r++) {
        const float *ar = lstm_row(a, r);
        if (w.type == LSTM_WEIGHTS_I8) sa = quantize_row(ar, K, qa);
        const float *gr = lstm_row(g, r);
        float *hr = lstm_row(h, r);
        for (int64_t t = t0; t < t1; t++) {
            if (!gru) memcpy(acc, gr + t * W, (size_t)W * sizeof(float));
            else if (b_hh) memcpy(acc, b_hh + t * W, (size_t)W * sizeof(float));
            else memset(acc, 0, sizeof acc);
            if (w.type == LSTM_WEIGHTS_F32) strips(gates, K, ar, (const float *)w.w + t * K * W, acc);
            else if (w.type == LSTM_WEIGHTS_F16) strips_r(gates, K, ar, w, t * gates, acc);
            else strips_i8(gates, K, qa, sa, w, t * gates, acc);
            for (int u = 0; u < LSTM_TILE; u++) {
                const int64_t unit = t * LSTM_TILE + u;
                // the LSTM's c has whole tiles; the units past H are not a's or h's
                if (cell == LSTM_CELL_LSTM) {
                    const float hn = unit_update(cell, acc + u, NULL, c + r * ldc + unit, 0.0f);
                    if (unit < H) hr[unit] = hn;
                } else if (unit < H) {
                    hr[unit] = unit_update(cell, acc + u, gr + t * W + u, NULL, gru ? ar[unit] : 0.0f);
                }
            }
        }
    }
}

static void cell_scalar(int cell, int64_t m, int64_t K, lstm_rows a, const float *w_hh,
                        const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                        int64_t t1, int64_t H, lstm_rows h) {
    cell_scalar_r(cell, m, K, a, (lstm_wmat){.w = w_hh, .type = LSTM_WEIGHTS_F32}, b_hh, g, c, ldc, t0,
                  t1, H, h);
}

static void widen_scalar(int type, const void *src, void *dst, int64_t n) {
    if (type == LSTM_WEIGHTS_F16)
        for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = lstm_half_to_float(((const uint16_t *)src)[i]);
    else
        for (int64_t i = 0; i < n; i++) ((int16_t *)dst)[i] = ((const int8_t *)src)[i];
}

const lstm_kernels lstm_kernels_scalar = {"scalar", gemm_scalar, cell_scalar, gemm_scalar_r,
                                          cell_scalar_r, 0, NULL, widen_scalar, NULL};
