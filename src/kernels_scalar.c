/*
 * kernels_scalar.c - portable reference kernels. Every SIMD kernel is tested
 * against these; they are also the fallback on CPUs without AVX2.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"

static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// acc[64] += a (K) @ one packed panel: strip by strip, each K rows of 16
static void strips(int64_t K, const float *a, const float *panel, float *acc) {
    for (int s = 0; s < 4; s++) {
        const float *w = panel + s * K * LSTM_TILE;
        float *out = acc + s * LSTM_TILE;
        for (int64_t k = 0; k < K; k++, w += LSTM_TILE)
            for (int j = 0; j < LSTM_TILE; j++) out[j] += a[k] * w[j];
    }
}

// c rows (m, cols in panels [p0,p1)) = bias + a (m, K) @ b (K, panels)
static void gemm_scalar(int64_t m, int64_t K, lstm_rows a, const float *b, const float *bias,
                        int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    float acc[LSTM_PANEL];
    for (int64_t r = 0; r < m; r++) {
        const float *ar = lstm_row(a, r);
        float *cr = lstm_row(c, r);
        for (int64_t p = p0; p < p1; p++) {
            const float *bp = b + p * K * LSTM_PANEL;
            for (int j = 0; j < LSTM_PANEL; j++) acc[j] = bias ? bias[p * LSTM_PANEL + j] : 0.0f;
            strips(K, ar, bp, acc);
            int64_t n = ncols - p * LSTM_PANEL;
            if (n > LSTM_PANEL) n = LSTM_PANEL;
            memcpy(cr + p * LSTM_PANEL, acc, (size_t)n * sizeof(float));
        }
    }
}

// one LSTM step for rows < m, tiles [t0,t1): gates = g + a @ w_hh, then the cell update
static void cell_scalar(int64_t m, int64_t K, lstm_rows a, const float *w_hh, lstm_rows g,
                        float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {
    float acc[LSTM_PANEL];
    for (int64_t r = 0; r < m; r++) {
        const float *ar = lstm_row(a, r);
        const float *gr = lstm_row(g, r);
        float *cr = c + r * ldc;
        float *hr = lstm_row(h, r);
        for (int64_t t = t0; t < t1; t++) {
            const float *wp = w_hh + t * K * LSTM_PANEL;
            memcpy(acc, gr + t * LSTM_PANEL, sizeof(acc));
            strips(K, ar, wp, acc);
            for (int u = 0; u < LSTM_TILE; u++) {
                const int64_t unit = t * LSTM_TILE + u;
                const float i = sigmoid(acc[u]);
                const float f = sigmoid(acc[LSTM_TILE + u]);
                const float gg = tanhf(acc[2 * LSTM_TILE + u]);
                const float o = sigmoid(acc[3 * LSTM_TILE + u]);
                const float cn = f * cr[unit] + i * gg;
                cr[unit] = cn;
                if (unit < H) hr[unit] = o * tanhf(cn);
            }
        }
    }
}

const lstm_kernels lstm_kernels_scalar = {"scalar", gemm_scalar, cell_scalar};
