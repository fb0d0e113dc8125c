/*
 * kernels_avx2.c - AVX2 + FMA kernels (8 floats a vector, 16 registers).
 * Built with -mavx2 -mfma; only called after the CPU reported both.
 *
 * One register-blocked microkernel serves both kernels: MR rows x NV vectors
 * of a 64-column panel, accumulating over K with broadcast-FMA. The shape is
 * picked from the rows left so that 8 to 12 independent accumulators hide the
 * FMA latency: 6x16 for full blocks, 3x32 / 2x32 / 1x64 for the remainders
 * (a streaming step with batch 1 is the 1x64 case).
 */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "kernels_avx2.c must be compiled with -mavx2 -mfma"
#endif

#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define INLINE static inline __attribute__((always_inline))
#define MR_MAX 6
#define ROW_BLOCK 96 /* rows of A kept hot in L2 while panels stream past */

// ---------------------------------------------------------------- activations

// exp(x): Cody-Waite range reduction, degree-5 polynomial, ~1 ulp on [-87, 88]
INLINE __m256 exp_avx2(__m256 x) {
    // max/min return their second operand when either is NaN: x goes second so NaN survives
    x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

INLINE __m256 sigmoid_avx2(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// tanh: odd polynomial near 0 (keeps relative accuracy), 1 - 2/(1+exp(2|x|)) elsewhere
INLINE __m256 tanh_avx2(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 ax = _mm256_andnot_ps(sign, x);
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 e = exp_avx2(_mm256_add_ps(ax, ax));
    __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, e)));
    big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
    // NaN compares false, so NaN takes the "big" path, which propagates it
    const __m256 is_small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm256_blendv_ps(big, small, is_small);
}

// ---------------------------------------------------------------- microkernel

// out[r][col0 .. col0+8NV] = init[r] (or bias, or 0) + sum_k a[r][k] * bp[k][col0 ..]
INLINE void block(const int MR, const int NV, int64_t K, const float *const *a, const float *bp,
                  int col0, const float *const *init, const float *bias, float *const *out) {
    __m256 acc[MR_MAX][8];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = init ? _mm256_loadu_ps(init[r] + col0 + 8 * v)
                      : bias ? _mm256_loadu_ps(bias + col0 + 8 * v)
                             : _mm256_setzero_ps();
    const float *bk = bp + col0;
    for (int64_t k = 0; k < K; k++, bk += LSTM_PANEL) {
        __m256 bv[8];
        for (int v = 0; v < NV; v++) bv[v] = _mm256_loadu_ps(bk + 8 * v);
        for (int r = 0; r < MR; r++) {
            const __m256 x = _mm256_broadcast_ss(a[r] + k);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(x, bv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(out[r] + col0 + 8 * v, acc[r][v]);
}

// a whole 64-column panel for mr rows, in the block shape that suits mr
INLINE void panel_shape(const int MR, const int NV, int64_t K, const float *const *a,
                        const float *bp, const float *const *init, const float *bias,
                        float *const *out) {
    for (int col0 = 0; col0 < LSTM_PANEL; col0 += 8 * NV) block(MR, NV, K, a, bp, col0, init, bias, out);
}

static void panel(int mr, int64_t K, const float *const *a, const float *bp,
                  const float *const *init, const float *bias, float *const *out) {
    switch (mr) {
    case 6: panel_shape(6, 2, K, a, bp, init, bias, out); break;
    case 5: panel_shape(5, 2, K, a, bp, init, bias, out); break;
    case 4: panel_shape(4, 2, K, a, bp, init, bias, out); break;
    case 3: panel_shape(3, 4, K, a, bp, init, bias, out); break;
    case 2: panel_shape(2, 4, K, a, bp, init, bias, out); break;
    default: panel_shape(1, 8, K, a, bp, init, bias, out); break;
    }
}

// ---------------------------------------------------------------- kernels

static void gemm_avx2(int64_t m, int64_t K, lstm_rows a, const float *b, const float *bias,
                      int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    float tmp[MR_MAX][LSTM_PANEL];
    const float *ar[MR_MAX];
    float *cr[MR_MAX], *tr[MR_MAX];
    for (int r = 0; r < MR_MAX; r++) tr[r] = tmp[r];
    for (int64_t rb = 0; rb < m; rb += ROW_BLOCK) {
        const int64_t rb_end = rb + ROW_BLOCK < m ? rb + ROW_BLOCK : m;
        for (int64_t p = p0; p < p1; p++) {
            const float *bp = b + p * K * LSTM_PANEL;
            const float *bias_p = bias ? bias + p * LSTM_PANEL : NULL;
            const int64_t width = ncols - p * LSTM_PANEL;
            for (int64_t r0 = rb; r0 < rb_end; r0 += MR_MAX) {
                const int mr = (int)(rb_end - r0 < MR_MAX ? rb_end - r0 : MR_MAX);
                for (int r = 0; r < mr; r++) {
                    ar[r] = lstm_row(a, r0 + r);
                    cr[r] = lstm_row(c, r0 + r) + p * LSTM_PANEL;
                }
                if (width >= LSTM_PANEL) {
                    panel(mr, K, ar, bp, NULL, bias_p, cr);
                } else { // last panel of a matrix whose width is not a multiple of 64
                    panel(mr, K, ar, bp, NULL, bias_p, tr);
                    for (int r = 0; r < mr; r++) memcpy(cr[r], tmp[r], (size_t)width * sizeof(float));
                }
            }
        }
    }
}

static void cell_avx2(int64_t m, int64_t K, lstm_rows a, const float *w_hh, lstm_rows g,
                      float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {
    float tmp[MR_MAX][LSTM_PANEL];
    float hbuf[LSTM_TILE];
    const float *ar[MR_MAX], *gr[MR_MAX];
    float *tr[MR_MAX];
    for (int r = 0; r < MR_MAX; r++) tr[r] = tmp[r];
    for (int64_t t = t0; t < t1; t++) {
        const float *wp = w_hh + t * K * LSTM_PANEL;
        const int64_t unit0 = t * LSTM_TILE;
        const int64_t units = H - unit0 < LSTM_TILE ? H - unit0 : LSTM_TILE;
        for (int64_t r0 = 0; r0 < m; r0 += MR_MAX) {
            const int mr = (int)(m - r0 < MR_MAX ? m - r0 : MR_MAX);
            for (int r = 0; r < mr; r++) {
                ar[r] = lstm_row(a, r0 + r);
                gr[r] = lstm_row(g, r0 + r) + t * LSTM_PANEL;
            }
            panel(mr, K, ar, wp, gr, NULL, tr);
            for (int r = 0; r < mr; r++) {
                float *cr = c + (r0 + r) * ldc + unit0;
                float *hr = lstm_row(h, r0 + r) + unit0;
                for (int half = 0; half < LSTM_TILE; half += 8) {
                    const float *q = tmp[r] + half;
                    const __m256 ig = sigmoid_avx2(_mm256_loadu_ps(q));
                    const __m256 fg = sigmoid_avx2(_mm256_loadu_ps(q + LSTM_TILE));
                    const __m256 gg = tanh_avx2(_mm256_loadu_ps(q + 2 * LSTM_TILE));
                    const __m256 og = sigmoid_avx2(_mm256_loadu_ps(q + 3 * LSTM_TILE));
                    const __m256 cn = _mm256_fmadd_ps(fg, _mm256_loadu_ps(cr + half), _mm256_mul_ps(ig, gg));
                    _mm256_storeu_ps(cr + half, cn);
                    _mm256_storeu_ps(hbuf + half, _mm256_mul_ps(og, tanh_avx2(cn)));
                }
                memcpy(hr, hbuf, (size_t)units * sizeof(float));
            }
        }
    }
}

const lstm_kernels lstm_kernels_avx2 = {"avx2", gemm_avx2, cell_avx2};
