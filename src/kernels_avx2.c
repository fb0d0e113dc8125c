/*
 * kernels_avx2.c - AVX2 + FMA kernels (8 floats a vector, 16 registers).
 * Built with -mavx2 -mfma; only called after the CPU reported both.
 *
 * One register-blocked microkernel serves both kernels: MR rows x NS strips
 * (16 columns, two vectors each) accumulated over a K-block of KC with
 * broadcast-FMA. Full groups of 6 rows run 6x1 (12 accumulators) strip by
 * strip, so a K-block of one strip (16 KB) stays in L1 while every row group
 * passes over it (for K <= 64, all four strips fit, and each row group takes
 * them in turn); the 1 to 5 rows left run 3x2 / 2x2 / 1x4 shapes so that
 * 8 to 12 independent accumulators still hide the FMA latency. A step with
 * one row (streaming, batch 1) has its own loop, cell_row: the four gates of
 * a tile in eight registers over the whole of K.
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
#define SMALL_K 64    /* up to this K, a panel's four strips (16 KB) fit in L1 together */
#define ROW_BLOCK 96  /* gemm rows of A kept hot in L2 while panels stream past */
#define CELL_ROWS 48  /* cell rows whose gate pre-activations wait in a stack tile */

// ---------------------------------------------------------------- activations

/*
 * The activations run on n vectors in lockstep: each step of the formula is
 * applied to all n before the next, so n independent dependency chains sit
 * next to each other in the instruction stream. One chain is long (exp, then
 * a reciprocal, then the cell update, then tanh) and a single 8-unit chain
 * already overflows the reorder window, so written one vector at a time the
 * CPU ran the chains of a tile one after another (measured: half the time of
 * a batch-1 step at hidden size 32 went to waiting on them).
 */
#define EACH(v, n) _Pragma("GCC unroll 8") for (int v = 0; v < (n); v++)

/*
 * exp(x), or exp(x) - 1 where m1[v], for x in [-87.3, 88.3] (exp clamps to
 * it, and NaN stays NaN; e^x - 1 is only asked for x in [0, 18]):
 * x = k ln2 + r by Cody-Waite, e^r - 1 = r + r^2 P(r) with a degree-5 P
 * (~1 ulp), then 2^k + 2^k (e^r - 1), or 2^k (e^r - 1) + (2^k - 1),
 * each one rounding. The second keeps e^x - 1 accurate relative to itself
 * near 0, which is what lets tanh below do without a separate small-x branch.
 */
INLINE void exp_n(const int n, __m256 *x, const int *m1) {
    __m256 k[8], p[8], s[8];
    // max/min return their second operand when either is NaN: x goes second so NaN survives
    // (tanh's arguments, the e^x - 1 ones, come in [0, 18] already)
    EACH(v, n) if (!m1[v]) x[v] = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x[v]));
    // k = round(x / ln2) by adding 1.5 * 2^23 + 127: the sum's low bits are k + 127, 2^k's exponent
    const __m256 shift = _mm256_set1_ps(12583039.0f);
    EACH(v, n) s[v] = _mm256_fmadd_ps(x[v], _mm256_set1_ps(1.44269504088896341f), shift);
    EACH(v, n) k[v] = _mm256_sub_ps(s[v], shift);
    EACH(v, n) x[v] = _mm256_fnmadd_ps(k[v], _mm256_set1_ps(0.693359375f), x[v]);
    EACH(v, n) x[v] = _mm256_fnmadd_ps(k[v], _mm256_set1_ps(-2.12194440e-4f), x[v]);
    EACH(v, n) p[v] = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), x[v], _mm256_set1_ps(1.3981999507e-3f));
    EACH(v, n) p[v] = _mm256_fmadd_ps(p[v], x[v], _mm256_set1_ps(8.3334519073e-3f));
    EACH(v, n) p[v] = _mm256_fmadd_ps(p[v], x[v], _mm256_set1_ps(4.1665795894e-2f));
    EACH(v, n) p[v] = _mm256_fmadd_ps(p[v], x[v], _mm256_set1_ps(1.6666665459e-1f));
    EACH(v, n) p[v] = _mm256_fmadd_ps(p[v], x[v], _mm256_set1_ps(5.0000001201e-1f));
    EACH(v, n) p[v] = _mm256_fmadd_ps(p[v], _mm256_mul_ps(x[v], x[v]), x[v]);
    EACH(v, n) s[v] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(s[v]), 23));
    EACH(v, n) x[v] = _mm256_fmadd_ps(s[v], p[v], m1[v] ? _mm256_sub_ps(s[v], _mm256_set1_ps(1.0f)) : s[v]);
}

/*
 * Activations of n vectors: x[v] becomes sigmoid(x[v]), or tanh(x[v]) where
 * is_tanh[v]. sigmoid is 1 / (1 + e^-x); tanh(|x|) is m / (m + 2) with
 * m = e^(2|x|) - 1 and |x| capped at 9 (tanh(9) rounds to 1), then x's sign.
 * Both are ~1e-7 relative everywhere (tests/c measures them on dense grids).
 * sigmoid's reciprocal is the 12-bit estimate and one Newton step; tanh
 * divides, on the divider, which the FMA-bound rest leaves idle (measured at
 * hidden size 32: dividing for both was 4% slower, rcp for both 2%).
 */
INLINE void act_n(const int n, __m256 *x, const int *is_tanh) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    __m256 e[8];
    EACH(v, n) {
        if (is_tanh[v]) {
            const __m256 ax = _mm256_min_ps(_mm256_set1_ps(9.0f), _mm256_andnot_ps(sign, x[v])); // NaN kept
            e[v] = _mm256_add_ps(ax, ax);
        } else {
            e[v] = _mm256_xor_ps(sign, x[v]);
        }
    }
    exp_n(n, e, is_tanh);
    __m256 d[8], r[8];
    EACH(v, n) d[v] = _mm256_add_ps(e[v], is_tanh[v] ? two : one);
    EACH(v, n) if (!is_tanh[v]) r[v] = _mm256_rcp_ps(d[v]);
    EACH(v, n) if (!is_tanh[v]) r[v] = _mm256_fmadd_ps(r[v], _mm256_fnmadd_ps(d[v], r[v], one), r[v]);
    EACH(v, n) x[v] = is_tanh[v] ? _mm256_or_ps(_mm256_div_ps(e[v], d[v]), _mm256_and_ps(sign, x[v])) : r[v];
}

/*
 * The cell update of one tile (16 units) from its gate sums
 * q = i[0:8] i[8:16] f[0:8] f[8:16] g[0:8] g[8:16] o[0:8] o[8:16]:
 * c (16 floats) is updated in place, h[0..1] receives the new hidden state.
 */
INLINE void tile_update(__m256 *q, float *c, __m256 *h) {
    static const int sig4[4] = {0, 0, 0, 0}, go4[4] = {1, 1, 0, 0}, all_tanh[2] = {1, 1};
    act_n(4, q, sig4);
    act_n(4, q + 4, go4);
    __m256 cn[2];
    EACH(v, 2) cn[v] = _mm256_fmadd_ps(q[2 + v], _mm256_loadu_ps(c + 8 * v), _mm256_mul_ps(q[v], q[4 + v]));
    EACH(v, 2) _mm256_storeu_ps(c + 8 * v, cn[v]);
    act_n(2, cn, all_tanh);
    EACH(v, 2) h[v] = _mm256_mul_ps(q[6 + v], cn[v]);
}

// the new h of a tile's units [0, units), units <= 16: h ends inside the last tile
INLINE void store_h(float *h, const __m256 *hv, int64_t units) {
    if (units >= LSTM_TILE) {
        EACH(v, 2) _mm256_storeu_ps(h + 8 * v, hv[v]);
        return;
    }
    float hbuf[LSTM_TILE];
    EACH(v, 2) _mm256_storeu_ps(hbuf + 8 * v, hv[v]);
    memcpy(h, hbuf, (size_t)units * sizeof(float));
}

// ---------------------------------------------------------------- microkernel

/*
 * block_MRxNS: out[r][col + 16s .. +16] for rows r < MR and strips s < NS,
 * over one K-block:
 *   (init ? init[r][col ..] : bias ? bias : 0)[16s ..] + sum_k a[r][k] * strip s row k
 * a[r] and bs already point at the block's first k; strips are sstride apart.
 * One function per shape, each with an accumulator array of exactly its size:
 * GCC keeps such arrays in registers, but spills a larger shared one to the
 * stack on every iteration when it inlines it into a big caller.
 */
#define DEFINE_BLOCK(MR, NS)                                                                  \
    static __attribute__((noipa)) void block_##MR##x##NS(                                    \
        int64_t kc, const float *const *a, const float *bs, int64_t sstride,                \
        const float *const *init, const float *bias, float *const *out, int64_t col) {      \
        __m256 acc[MR][2 * NS];                                                               \
        EACH(r, MR) EACH(v, 2 * NS)                                                           \
            acc[r][v] = init ? _mm256_loadu_ps(init[r] + col + 8 * v)                         \
                      : bias ? _mm256_loadu_ps(bias + 8 * v)                                  \
                             : _mm256_setzero_ps();                                           \
        for (int64_t k = 0; k < kc; k++) {                                                    \
            __m256 bv[2 * NS];                                                                \
            EACH(v, 2 * NS)                                                                   \
                bv[v] = _mm256_loadu_ps(bs + (v / 2) * sstride + k * LSTM_TILE + 8 * (v % 2)); \
            EACH(r, MR) {                                                                     \
                const __m256 x = _mm256_broadcast_ss(a[r] + k);                               \
                EACH(v, 2 * NS) acc[r][v] = _mm256_fmadd_ps(x, bv[v], acc[r][v]);             \
            }                                                                                 \
        }                                                                                     \
        EACH(r, MR) EACH(v, 2 * NS) _mm256_storeu_ps(out[r] + col + 8 * v, acc[r][v]);        \
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
    const int ns = mr >= 4 ? 1 : mr == 1 ? 4 : 2;
    for (int s = 0; s < 4; s += ns) {
        const float *b = bias ? bias + s * LSTM_TILE : NULL, *w = bs + s * sstride;
        const int64_t col = s * LSTM_TILE;
        switch (mr) {
        case 5: block_5x1(kc, a, w, sstride, init, b, out, col); break;
        case 4: block_4x1(kc, a, w, sstride, init, b, out, col); break;
        case 3: block_3x2(kc, a, w, sstride, init, b, out, col); break;
        case 2: block_2x2(kc, a, w, sstride, init, b, out, col); break;
        default: block_1x4(kc, a, w, sstride, init, b, out, col); break;
        }
    }
}

/*
 * out[r][0 .. 64] = (init rows, or bias, or 0) + a[r] (K) @ packed panel bp,
 * for rows r < m. Full groups of 6 rows run 6x1 strip by strip; a later
 * K-block accumulates onto out. Where all four strips fit in L1 together
 * (small K) a row group takes them one after another; otherwise a strip's
 * K-block stays in L1 while every row group passes over it.
 */
static void panel_rows(int64_t m, int64_t K, lstm_rows a, const float *bp, const lstm_rows *init,
                       const float *bias, lstm_rows out) {
    const float *ar[MR_MAX], *ir[MR_MAX];
    float *orow[MR_MAX];
    const int64_t full = m / MR_MAX * MR_MAX, sstride = K * LSTM_TILE;
    if (K <= SMALL_K) {
        for (int64_t r0 = 0; r0 < full; r0 += MR_MAX) {
            for (int r = 0; r < MR_MAX; r++) {
                ar[r] = lstm_row(a, r0 + r);
                orow[r] = lstm_row(out, r0 + r);
                ir[r] = init ? lstm_row(*init, r0 + r) : NULL;
            }
            for (int s = 0; s < 4; s++)
                block_6x1(K, ar, bp + s * sstride, 0, init ? ir : NULL,
                          bias ? bias + s * LSTM_TILE : NULL, orow, s * LSTM_TILE);
        }
    } else {
        for (int s = 0; s < 4; s++)
            for (int64_t k0 = 0; k0 < K; k0 += KC) {
                const int64_t kc = K - k0 < KC ? K - k0 : KC;
                const float *bs = bp + s * sstride + k0 * LSTM_TILE;
                for (int64_t r0 = 0; r0 < full; r0 += MR_MAX) {
                    for (int r = 0; r < MR_MAX; r++) {
                        ar[r] = lstm_row(a, r0 + r) + k0;
                        orow[r] = lstm_row(out, r0 + r);
                        ir[r] = k0 ? orow[r] : init ? lstm_row(*init, r0 + r) : NULL;
                    }
                    block_6x1(kc, ar, bs, 0, k0 || init ? ir : NULL,
                              k0 ? NULL : bias ? bias + s * LSTM_TILE : NULL, orow, s * LSTM_TILE);
                }
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

#define ROW_TILES 8 /* tiles whose gates a one-row step computes before their updates */

/*
 * One row (a streaming step, or the last live sequence). The gate sums of up
 * to 8 tiles go first, then all their cell updates, so that the updates' long
 * dependency chains are not separated by matrix-vector loops.
 */
static __attribute__((noipa)) void cell_row(int64_t K, const float *a, const float *w_hh,
                                               const float *g, float *c, int64_t t0, int64_t t1,
                                               int64_t H, float *h) {
    const int64_t sstride = K * LSTM_TILE;
    float gates[ROW_TILES][LSTM_PANEL];
    for (int64_t c0 = t0; c0 < t1; c0 += ROW_TILES) {
        const int64_t n = t1 - c0 < ROW_TILES ? t1 - c0 : ROW_TILES;
        for (int64_t j = 0; j < n; j++) {
            const float *wp = w_hh + (c0 + j) * K * LSTM_PANEL, *gt = g + (c0 + j) * LSTM_PANEL;
            __m256 acc[8];
            EACH(v, 8) acc[v] = _mm256_loadu_ps(gt + 8 * v);
            for (int64_t k = 0; k < K; k++, wp += LSTM_TILE) {
                const __m256 x = _mm256_broadcast_ss(a + k);
                EACH(v, 8) acc[v] = _mm256_fmadd_ps(x, _mm256_loadu_ps(wp + (v / 2) * sstride + 8 * (v % 2)), acc[v]);
            }
            EACH(v, 8) _mm256_storeu_ps(gates[j] + 8 * v, acc[v]);
        }
        for (int64_t j = 0; j < n; j++) {
            const int64_t unit0 = (c0 + j) * LSTM_TILE;
            __m256 q[8], hv[2];
            EACH(v, 8) q[v] = _mm256_loadu_ps(gates[j] + 8 * v);
            tile_update(q, c + unit0, hv);
            store_h(h + unit0, hv, H - unit0);
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
        for (int64_t r0 = 0; r0 < m; r0 += CELL_ROWS) {
            const int64_t rows = m - r0 < CELL_ROWS ? m - r0 : CELL_ROWS;
            lstm_rows gt = lstm_rows_from(g, r0);
            gt.base += t * LSTM_PANEL;
            panel_rows(rows, K, lstm_rows_from(a, r0), wp, &gt, NULL,
                       (lstm_rows){tmp[0], LSTM_PANEL, NULL});
            for (int64_t r = 0; r < rows; r++) {
                __m256 q[8], hv[2];
                EACH(v, 8) q[v] = _mm256_loadu_ps(tmp[r] + 8 * v);
                tile_update(q, c + (r0 + r) * ldc + unit0, hv);
                store_h(lstm_row(h, r0 + r) + unit0, hv, H - unit0);
            }
        }
    }
}

const lstm_kernels lstm_kernels_avx2 = {"avx2", gemm_avx2, cell_avx2};
