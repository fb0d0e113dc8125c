/*
 * kernels_avx2.c - AVX2 + FMA kernels (8 floats a vector, 16 registers).
 * Built with -mavx2 -mfma; only called after the CPU reported both.
 *
 * One register-blocked microkernel serves both kernels: MR rows x NS strips
 * (16 columns, two vectors each) accumulated over a K-block of KC with
 * broadcast-FMA. Full groups of 6 rows run 6x1 (12 accumulators) strip by
 * strip, so a K-block of one strip (16 KB) stays in L1 while every row group
 * passes over it; the 1 to 5 rows left run 3x2 / 2x2 / 1x4 shapes so that
 * 8 to 12 independent accumulators still hide the FMA latency (a streaming
 * step with batch 1 is the 1x4 case: all four gates of a tile at once).
 */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "kernels_avx2.c must be compiled with -mavx2 -mfma"
#endif

#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define INLINE static inline __attribute__((always_inline))
#define MR_MAX 6
#define KC 256        /* K-block: 6 rows of A and one strip's block fit in L1 */
#define ROW_BLOCK 96  /* gemm rows of A kept hot in L2 while panels stream past */
#define CELL_ROWS 48  /* cell rows whose gate pre-activations wait in a stack tile */

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

/*
 * block_MRxNS: out[r][16s .. 16s+16] for rows r < MR and strips s < NS, over
 * one K-block:
 *   (init ? init[r] : bias ? bias : 0)[16s ..] + sum_k a[r][k] * strip s row k
 * a[r] and bs already point at the block's first k; strips are sstride apart.
 * One function per shape, each with an accumulator array of exactly its size:
 * GCC keeps such arrays in registers, but spills a larger shared one to the
 * stack on every iteration when it inlines it into a big caller.
 */
#define DEFINE_BLOCK(MR, NS)                                                                  \
    static __attribute__((noinline)) void block_##MR##x##NS(                                 \
        int64_t kc, const float *const *a, const float *bs, int64_t sstride,                \
        const float *const *init, const float *bias, float *const *out) {                   \
        __m256 acc[MR][2 * NS];                                                               \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < 2 * NS; v++)                                                  \
                acc[r][v] = init ? _mm256_loadu_ps(init[r] + 8 * v)                           \
                          : bias ? _mm256_loadu_ps(bias + 8 * v)                              \
                                 : _mm256_setzero_ps();                                       \
        for (int64_t k = 0; k < kc; k++) {                                                    \
            __m256 bv[2 * NS];                                                                \
            for (int v = 0; v < 2 * NS; v++)                                                  \
                bv[v] = _mm256_loadu_ps(bs + (v / 2) * sstride + k * LSTM_TILE + 8 * (v % 2)); \
            for (int r = 0; r < MR; r++) {                                                    \
                const __m256 x = _mm256_broadcast_ss(a[r] + k);                               \
                for (int v = 0; v < 2 * NS; v++) acc[r][v] = _mm256_fmadd_ps(x, bv[v], acc[r][v]); \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < 2 * NS; v++) _mm256_storeu_ps(out[r] + 8 * v, acc[r][v]);     \
    }

DEFINE_BLOCK(6, 1)
DEFINE_BLOCK(5, 1)
DEFINE_BLOCK(4, 1)
DEFINE_BLOCK(3, 2)
DEFINE_BLOCK(2, 2)
DEFINE_BLOCK(1, 4)

// fewer than 6 rows: every strip of the panel, in the shape that suits mr
static void block_tail(int mr, int64_t kc, const float *const *a, const float *bs, int64_t sstride,
                       const float *const *init, const float *bias, float *const *out) {
    const float *in[MR_MAX];
    float *o[MR_MAX];
    const int ns = mr >= 4 ? 1 : mr == 1 ? 4 : 2;
    for (int s = 0; s < 4; s += ns) {
        for (int r = 0; r < mr; r++) {
            in[r] = init ? init[r] + s * LSTM_TILE : NULL;
            o[r] = out[r] + s * LSTM_TILE;
        }
        const float *const *ip = init ? in : NULL;
        const float *b = bias ? bias + s * LSTM_TILE : NULL, *w = bs + s * sstride;
        switch (mr) {
        case 5: block_5x1(kc, a, w, sstride, ip, b, o); break;
        case 4: block_4x1(kc, a, w, sstride, ip, b, o); break;
        case 3: block_3x2(kc, a, w, sstride, ip, b, o); break;
        case 2: block_2x2(kc, a, w, sstride, ip, b, o); break;
        default: block_1x4(kc, a, w, sstride, ip, b, o); break;
        }
    }
}

/*
 * out[r][0 .. 64] = (init rows, or bias, or 0) + a[r] (K) @ packed panel bp,
 * for rows r < m. The panel goes strip by strip and K-block by K-block over
 * every full group of 6 rows; a later K-block accumulates onto out.
 */
static void panel_rows(int64_t m, int64_t K, lstm_rows a, const float *bp, const lstm_rows *init,
                       const float *bias, lstm_rows out) {
    const float *ar[MR_MAX], *ir[MR_MAX];
    float *orow[MR_MAX];
    const int64_t full = m / MR_MAX * MR_MAX, sstride = K * LSTM_TILE;
    for (int s = 0; s < 4; s++)
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            const float *bs = bp + s * sstride + k0 * LSTM_TILE;
            for (int64_t r0 = 0; r0 < full; r0 += MR_MAX) {
                for (int r = 0; r < MR_MAX; r++) {
                    ar[r] = lstm_row(a, r0 + r) + k0;
                    orow[r] = lstm_row(out, r0 + r) + s * LSTM_TILE;
                    ir[r] = k0 ? orow[r] : init ? lstm_row(*init, r0 + r) + s * LSTM_TILE : NULL;
                }
                block_6x1(kc, ar, bs, 0, k0 || init ? ir : NULL,
                          k0 ? NULL : bias ? bias + s * LSTM_TILE : NULL, orow);
            }
        }
    const int mr = (int)(m - full);
    if (!mr) return;
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = K - k0 < KC ? K - k0 : KC;
        for (int r = 0; r < mr; r++) {
            ar[r] = lstm_row(a, full + r) + k0;
            orow[r] = lstm_row(out, full + r);
            ir[r] = k0 ? orow[r] : init ? lstm_row(*init, full + r) : NULL;
        }
        block_tail(mr, kc, ar, bp + k0 * LSTM_TILE, sstride, k0 || init ? ir : NULL,
                   k0 ? NULL : bias, orow);
    }
}

// ---------------------------------------------------------------- kernels

static void gemm_avx2(int64_t m, int64_t K, lstm_rows a, const float *b, const float *bias,
                      int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    float tmp[MR_MAX][LSTM_PANEL];
    for (int64_t rb = 0; rb < m; rb += ROW_BLOCK) {
        const int64_t rows = m - rb < ROW_BLOCK ? m - rb : ROW_BLOCK;
        const lstm_rows ab = lstm_rows_from(a, rb);
        for (int64_t p = p0; p < p1; p++) {
            const float *bp = b + p * K * LSTM_PANEL;
            const float *bias_p = bias ? bias + p * LSTM_PANEL : NULL;
            const int64_t width = ncols - p * LSTM_PANEL;
            lstm_rows cb = lstm_rows_from(c, rb);
            cb.base += p * LSTM_PANEL;
            if (width >= LSTM_PANEL) {
                panel_rows(rows, K, ab, bp, NULL, bias_p, cb);
                continue;
            }
            // last panel of a matrix whose width is not a multiple of 64: via a stack tile
            for (int64_t r0 = 0; r0 < rows; r0 += MR_MAX) {
                const int64_t mr = rows - r0 < MR_MAX ? rows - r0 : MR_MAX;
                panel_rows(mr, K, lstm_rows_from(ab, r0), bp, NULL, bias_p,
                           (lstm_rows){tmp[0], LSTM_PANEL, NULL});
                for (int64_t r = 0; r < mr; r++)
                    memcpy(lstm_row(cb, r0 + r), tmp[r], (size_t)width * sizeof(float));
            }
        }
    }
}

// the cell update of 8 units from their four gate pre-activations; h goes to hout
INLINE __m256 cell_update(__m256 i, __m256 f, __m256 g, __m256 o, float *c) {
    const __m256 cn = _mm256_fmadd_ps(sigmoid_avx2(f), _mm256_loadu_ps(c),
                                      _mm256_mul_ps(sigmoid_avx2(i), tanh_avx2(g)));
    _mm256_storeu_ps(c, cn);
    return _mm256_mul_ps(sigmoid_avx2(o), tanh_avx2(cn));
}

// one row (a streaming step, or the last live sequence): gates stay in registers
static __attribute__((noinline)) void cell_row(int64_t K, const float *a, const float *w_hh, const float *g, float *c,
                     int64_t t0, int64_t t1, int64_t H, float *h) {
    const int64_t sstride = K * LSTM_TILE;
    for (int64_t t = t0; t < t1; t++) {
        const float *wp = w_hh + t * K * LSTM_PANEL, *gt = g + t * LSTM_PANEL;
        __m256 acc[8];
        for (int v = 0; v < 8; v++) acc[v] = _mm256_loadu_ps(gt + 8 * v);
        for (int64_t k = 0; k < K; k++, wp += LSTM_TILE) {
            const __m256 x = _mm256_broadcast_ss(a + k);
            for (int v = 0; v < 8; v++)
                acc[v] = _mm256_fmadd_ps(x, _mm256_loadu_ps(wp + (v / 2) * sstride + 8 * (v % 2)), acc[v]);
        }
        const int64_t unit0 = t * LSTM_TILE;
        float *ct = c + unit0;
        const __m256 h0 = cell_update(acc[0], acc[2], acc[4], acc[6], ct);
        const __m256 h1 = cell_update(acc[1], acc[3], acc[5], acc[7], ct + 8);
        if (H - unit0 >= LSTM_TILE) {
            _mm256_storeu_ps(h + unit0, h0);
            _mm256_storeu_ps(h + unit0 + 8, h1);
        } else {
            float hbuf[LSTM_TILE];
            _mm256_storeu_ps(hbuf, h0);
            _mm256_storeu_ps(hbuf + 8, h1);
            memcpy(h + unit0, hbuf, (size_t)(H - unit0) * sizeof(float));
        }
    }
}

static void cell_avx2(int64_t m, int64_t K, lstm_rows a, const float *w_hh, lstm_rows g,
                      float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {
    if (m == 1) {
        cell_row(K, lstm_row(a, 0), w_hh, lstm_row(g, 0), c, t0, t1, H, lstm_row(h, 0));
        return;
    }
    float tmp[CELL_ROWS][LSTM_PANEL];
    for (int64_t t = t0; t < t1; t++) {
        const float *wp = w_hh + t * K * LSTM_PANEL;
        const int64_t unit0 = t * LSTM_TILE;
        const int64_t units = H - unit0 < LSTM_TILE ? H - unit0 : LSTM_TILE;
        for (int64_t r0 = 0; r0 < m; r0 += CELL_ROWS) {
            const int64_t rows = m - r0 < CELL_ROWS ? m - r0 : CELL_ROWS;
            lstm_rows gt = lstm_rows_from(g, r0);
            gt.base += t * LSTM_PANEL;
            panel_rows(rows, K, lstm_rows_from(a, r0), wp, &gt, NULL,
                       (lstm_rows){tmp[0], LSTM_PANEL, NULL});
            for (int64_t r = 0; r < rows; r++) {
                const float *q = tmp[r];
                float *cr = c + (r0 + r) * ldc + unit0, hbuf[LSTM_TILE];
                for (int half = 0; half < LSTM_TILE; half += 8)
                    _mm256_storeu_ps(hbuf + half,
                                     cell_update(_mm256_loadu_ps(q + half),
                                                 _mm256_loadu_ps(q + LSTM_TILE + half),
                                                 _mm256_loadu_ps(q + 2 * LSTM_TILE + half),
                                                 _mm256_loadu_ps(q + 3 * LSTM_TILE + half), cr + half));
                memcpy(lstm_row(h, r0 + r) + unit0, hbuf, (size_t)units * sizeof(float));
            }
        }
    }
}

const lstm_kernels lstm_kernels_avx2 = {"avx2", gemm_avx2, cell_avx2};
