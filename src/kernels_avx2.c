/*
 * kernels_avx2.c - AVX2 + FMA kernels (8 floats a vector, 16 registers).
 * Built with -mavx2 -mfma -mf16c (F16C converts the half weights); only
 * called after the CPU reported all three.
 *
 * One register-blocked microkernel serves both kernels: MR rows x NS strips
 * (16 columns, two vectors each) accumulated over a K-block of KC with
 * broadcast-FMA. Full groups of 6 rows run 6x1 (12 accumulators) strip by
 * strip, so a K-block of one strip (16 KB) stays in L1 while every row group
 * passes over it (for K <= 64, all the strips of a panel fit, and each row
 * group takes them in turn); the 1 to 5 rows left run 3x2 / 2x2 / 1x4 shapes
 * (3x1 / 2x1 / 1x3 / 1x2 / 1x1 where fewer strips are left) so that 8 to 12
 * independent accumulators still hide the FMA latency. A step with one row
 * (streaming, batch 1) has its own loop: four strips in eight registers over
 * the whole of K. The row blocks come from this CPU's cache sizes
 * (lstm_cache_sizes): a cell chunk's K-block of A stays in L1 (cell_rows), a
 * block of A's rows in L2 while B streams past (l2_rows). A large input
 * projection's rows come packed (kernels.h, lstm_pack_rows): 6x1 then reads
 * one stream of six values a k instead of six rows (block_6x1_packed).
 *
 * The cell is one generic step in two bodies, one row (row_kind) and more
 * (rows_kind), each compiled once per cell kind with the kind a constant
 * (cell_row_lstm, cell_rows_lstm, cell_row_gru, ...): the sums of a tile's
 * gates come from the same loops for every kind, and only the pointwise
 * update of a tile differs (tile_update for the LSTM, tile_update_gru,
 * tile_update_rnn).
 *
 * Reduced weights (kernels.h): half weights convert with F16C in the one-row
 * sums (row_strips) or a K-block at a time into a stack tile that the float32
 * microkernels run over (lstm_gemm_r_avx2); int8 weight_hh runs row by row, h
 * quantized to int16 first (quantize_row), with vpmovsxbw / vpmaddwd
 * (row_strip_i8), one byte read per weight.
 */
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "kernels_avx2.c must be compiled with -mavx2 -mfma -mf16c"
#endif

/*
 * Every loop starts on a 64-byte boundary: where the one-row step's inner
 * loop (14 instructions, 74 bytes) starts decides how many fetch windows it
 * spans, which moved a step at hidden size 32 by up to 10% from one build
 * to the next with no change in the instructions.
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("align-loops=64")
#endif

#include <float.h>
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define INLINE static inline __attribute__((always_inline))
#define MR_MAX 6
_Static_assert(MR_MAX == LSTM_PACK_ROWS, "packed rows (kernels.h) come in groups of the 6x1 block's rows");
#define KC 256        /* K-block: 6 rows of A and one strip's block fit in L1 */
#define SMALL_K 64    /* up to this K, a panel's strips (at most four, 16 KB) fit in L1 together */
#define ROW_BLOCK 96  /* reduced gemm rows of A kept hot in L2 while strips stream past */
#define CELL_ROWS 48  /* at most this many cell rows' gate pre-activations wait in a stack tile */
#define MAX_L2_ROWS 1536

/*
 * Cell rows whose sums run together (at most CELL_ROWS, a multiple of 6): as
 * many as keep their K-block of A (KC floats at most) in half of this CPU's
 * L1d beside the strips' K-block. More, and every strip re-read A from L2
 * (measured: a batch-256 step at hidden size 256 ran 13% slower with 48
 * rows than with 12 on a 32 KB L1d).
 */
static int64_t cell_rows(int64_t K) {
    const int64_t kc = K < KC ? (K > 0 ? K : 1) : KC;
    const int64_t rows = lstm_cache_sizes()->l1d / 2 / (kc * (int64_t)sizeof(float)) / MR_MAX * MR_MAX;
    return rows < MR_MAX ? MR_MAX : rows > CELL_ROWS ? CELL_ROWS : rows;
}

/*
 * Rows of A (K floats each) kept in L2 while the strips of B stream past:
 * three quarters of this CPU's L2 (B's strip block, the outputs' lines and
 * the cell's state take the rest), a multiple of 6, at least CELL_ROWS. More
 * rows, and A would come from L3 again for every strip; fewer, and B would
 * stream past more often (cachegrind's model of a 512 KB L2 on gemms of
 * 512-768 rows, K 256 and 1024: 3/4 missed 26% less than 96 fixed rows at K
 * 256 and as little at K 1024, where 1/4 missed 35% more).
 */
static int64_t l2_rows(int64_t K) {
    const int64_t rows = lstm_cache_sizes()->l2 * 3 / 4 / ((K > 0 ? K : 1) * (int64_t)sizeof(float));
    return rows < CELL_ROWS ? CELL_ROWS : rows > MAX_L2_ROWS ? MAX_L2_ROWS : rows / MR_MAX * MR_MAX;
}

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
 * q = i[0:8] i[8:16] f[0:8] f[8:16] g[0:8] g[8:16] o[0:8] o[8:16], or from
 * the gates themselves where `pre` (tile_gates ran): c (16 floats) is updated
 * in place, h[0..1] receives the new hidden state. The gates go two vectors
 * at a time: four at a time, GCC juggled their temporaries through spare
 * registers and a batch-64 tile's update took 1.14x as long (the one-row
 * step ran as fast either way).
 */
INLINE void tile_update(const int pre, __m256 *q, float *c, __m256 *h) {
    static const int sig2[2] = {0, 0}, tanh2[2] = {1, 1}, all_tanh[2] = {1, 1};
    if (!pre) {
        act_n(2, q, sig2);
        act_n(2, q + 2, sig2);
        act_n(2, q + 4, tanh2);
        act_n(2, q + 6, sig2);
    }
    __m256 cn[2];
    EACH(v, 2) cn[v] = _mm256_fmadd_ps(q[2 + v], _mm256_loadu_ps(c + 8 * v), _mm256_mul_ps(q[v], q[4 + v]));
    EACH(v, 2) _mm256_storeu_ps(c + 8 * v, cn[v]);
    act_n(2, cn, all_tanh);
    EACH(v, 2) h[v] = _mm256_mul_ps(q[6 + v], cn[v]);
}

/*
 * The GRU update of one tile from the sums q = b_hh + a @ W_hh
 * (r[0:8] r[8:16] z[0:8] z[8:16] n[0:8] n[8:16]), the input part gi (48 floats, same
 * order) and the previous h (16 floats): h[0..1] receives the new hidden state.
 * Where `pre`, q's r and z are the gates already (tile_gates ran).
 * h = n + z * (h_prev - n) is torch's (1 - z) * n + z * h_prev as torch computes it.
 */
INLINE void tile_update_gru(const int pre, const __m256 *q, const float *gi, const float *h_prev,
                            __m256 *h) {
    static const int sig4[4] = {0, 0, 0, 0}, all_tanh[2] = {1, 1};
    __m256 rz[4], n[2];
    if (pre) {
        EACH(v, 4) rz[v] = q[v];
    } else {
        EACH(v, 4) rz[v] = _mm256_add_ps(_mm256_loadu_ps(gi + 8 * v), q[v]);
        act_n(4, rz, sig4);
    }
    EACH(v, 2) n[v] = _mm256_fmadd_ps(rz[v], q[4 + v], _mm256_loadu_ps(gi + 32 + 8 * v));
    act_n(2, n, all_tanh);
    EACH(v, 2) h[v] = _mm256_fmadd_ps(rz[2 + v], _mm256_sub_ps(_mm256_loadu_ps(h_prev + 8 * v), n[v]), n[v]);
}

/*
 * The gates of one LSTM or GRU tile from its sums q, in place: the first half
 * of tile_update(_gru) for rows_kind, which runs it for a chunk's rows before
 * any row's update (see there). GRU: gi as in tile_update_gru.
 */
INLINE void tile_gates(const int kind, float *q, const float *gi) {
    static const int lstm8[8] = {0, 0, 0, 0, 1, 1, 0, 0}, sig4[4] = {0, 0, 0, 0};
    __m256 s[8];
    if (kind == LSTM_CELL_LSTM) {
        EACH(v, 8) s[v] = _mm256_loadu_ps(q + 8 * v);
        act_n(4, s, lstm8);
        act_n(4, s + 4, lstm8 + 4);
        EACH(v, 8) _mm256_storeu_ps(q + 8 * v, s[v]);
    } else {
        EACH(v, 4) s[v] = _mm256_add_ps(_mm256_loadu_ps(gi + 8 * v), _mm256_loadu_ps(q + 8 * v));
        act_n(4, s, sig4);
        EACH(v, 4) _mm256_storeu_ps(q + 8 * v, s[v]);
    }
}

// The RNN update of one tile from its sums q[0..1]: h = tanh(q) or relu(q)
INLINE void tile_update_rnn(const int relu, __m256 *q, __m256 *h) {
    static const int all_tanh[2] = {1, 1};
    if (relu) {
        // max returns its second operand when either is NaN: q goes second so NaN survives
        EACH(v, 2) h[v] = _mm256_max_ps(_mm256_setzero_ps(), q[v]);
        return;
    }
    act_n(2, q, all_tanh);
    EACH(v, 2) h[v] = q[v];
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
 * stack on every iteration when it inlines it into a big caller. The k loop
 * of the shapes whose accumulators, strip vectors and broadcast fit the 16
 * registers runs UNROLL k an iteration (the same sums in the same order):
 * one k an iteration, 6x1 over L1-resident data ran at 72-83% of this CPU's
 * FMA peak at K 32-128, four at 83-90%. 3x2 and 1x4 need all 16 and more;
 * unrolled, GCC spilled an accumulator.
 */
#define PRAGMA_(x) _Pragma(#x)
#define UNROLLED(n) PRAGMA_(GCC unroll n)
#if defined(__clang__)
#define NOIPA /* clang has no noipa: its own inlining choice stands */
#else
#define NOIPA __attribute__((noipa))
#endif
#define DEFINE_BLOCK(MR, NS, UNROLL)                                                          \
    static NOIPA void block_##MR##x##NS(                                                     \
        int64_t kc, const float *const *a, const float *bs, int64_t sstride,                \
        const float *const *init, const float *bias, float *const *out, int64_t col) {      \
        __m256 acc[MR][2 * NS];                                                               \
        EACH(r, MR) EACH(v, 2 * NS)                                                           \
            acc[r][v] = init ? _mm256_loadu_ps(init[r] + col + 8 * v)                         \
                      : bias ? _mm256_loadu_ps(bias + 8 * v)                                  \
                             : _mm256_setzero_ps();                                           \
        UNROLLED(UNROLL) for (int64_t k = 0; k < kc; k++) {                                   \
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

DEFINE_BLOCK(6, 1, 4)

/*
 * block_6x1 on packed rows (kernels.h, lstm_pack_rows): ap points at the
 * block's first k of one group, whose six values a k lie side by side. The
 * same sums in the same order as block_6x1, so the same bits.
 */
static NOIPA void block_6x1_packed(int64_t kc, const float *ap, const float *bs,
                                   const float *const *init, const float *bias, float *const *out,
                                   int64_t col) {
    __m256 acc[MR_MAX][2];
    EACH(r, MR_MAX) EACH(v, 2)
        acc[r][v] = init ? _mm256_loadu_ps(init[r] + col + 8 * v)
                  : bias ? _mm256_loadu_ps(bias + 8 * v)
                         : _mm256_setzero_ps();
    UNROLLED(4) for (int64_t k = 0; k < kc; k++) {
        __m256 bv[2];
        EACH(v, 2) bv[v] = _mm256_loadu_ps(bs + k * LSTM_TILE + 8 * v);
        EACH(r, MR_MAX) {
            const __m256 x = _mm256_broadcast_ss(ap + k * MR_MAX + r);
            EACH(v, 2) acc[r][v] = _mm256_fmadd_ps(x, bv[v], acc[r][v]);
        }
    }
    EACH(r, MR_MAX) EACH(v, 2) _mm256_storeu_ps(out[r] + col + 8 * v, acc[r][v]);
}
DEFINE_BLOCK(5, 1, 4)
DEFINE_BLOCK(4, 1, 4)
DEFINE_BLOCK(3, 2, 1)
DEFINE_BLOCK(3, 1, 4)
DEFINE_BLOCK(2, 2, 4)
DEFINE_BLOCK(2, 1, 4)
DEFINE_BLOCK(1, 4, 1)
DEFINE_BLOCK(1, 3, 4)
DEFINE_BLOCK(1, 2, 4)
DEFINE_BLOCK(1, 1, 4)

// fewer than 6 rows: the ns strips of a panel, in the shapes that suit mr
static void block_tail(int mr, int ns, int64_t kc, const float *const *a, const float *bs,
                       int64_t sstride, const float *const *init, const float *bias,
                       float *const *out) {
    for (int s = 0; s < ns;) {
        const float *b = bias ? bias + s * LSTM_TILE : NULL, *w = bs + s * sstride;
        const int64_t col = s * LSTM_TILE;
        const int left = ns - s;
        switch (mr) {
        case 5: block_5x1(kc, a, w, sstride, init, b, out, col), s += 1; break;
        case 4: block_4x1(kc, a, w, sstride, init, b, out, col), s += 1; break;
        case 3:
            if (left >= 2) block_3x2(kc, a, w, sstride, init, b, out, col), s += 2;
            else block_3x1(kc, a, w, sstride, init, b, out, col), s += 1;
            break;
        case 2:
            if (left >= 2) block_2x2(kc, a, w, sstride, init, b, out, col), s += 2;
            else block_2x1(kc, a, w, sstride, init, b, out, col), s += 1;
            break;
        default:
            switch (left) {
            case 1: block_1x1(kc, a, w, sstride, init, b, out, col); break;
            case 2: block_1x2(kc, a, w, sstride, init, b, out, col); break;
            case 3: block_1x3(kc, a, w, sstride, init, b, out, col); break;
            default: block_1x4(kc, a, w, sstride, init, b, out, col); break;
            }
            s += left < 4 ? left : 4;
            break;
        }
    }
}

/*
 * out[r][0 .. 16 ns] = (init rows, or bias, or 0) + a[r] (K) @ the ns strips
 * (1 to 4) at bp, for rows r < m. Full groups of 6 rows run 6x1 strip by
 * strip, reading ap when given (a's rows packed, its group g at
 * ap + 6 g pk for packed rows of pk columns; ap at this call's first
 * column); a later K-block accumulates onto out. Where the strips fit in L1
 * together (small K) a row group takes them one after another; otherwise a
 * strip's K-block stays in L1 while every row group passes over it.
 */
static void panel_rows(int64_t m, int64_t K, lstm_rows a, const float *ap, int64_t pk,
                       const float *bp, int ns, const lstm_rows *init, const float *bias,
                       lstm_rows out) {
    const float *ar[MR_MAX], *ir[MR_MAX];
    float *orow[MR_MAX];
    const int64_t full = m / MR_MAX * MR_MAX, sstride = K * LSTM_TILE;
#define ROW_GROUP(r0, k0)                                                                          \
    for (int r = 0; r < MR_MAX; r++) {                                                             \
        ar[r] = lstm_row(a, (r0) + r) + (k0);                                                      \
        orow[r] = lstm_row(out, (r0) + r);                                                         \
        ir[r] = (k0) ? orow[r] : init ? lstm_row(*init, (r0) + r) : NULL;                          \
    }
#define BLOCK(kc, r0, k0, bs, in, bi, col)                                                         \
    (ap ? block_6x1_packed(kc, ap + (r0) * pk + (k0) * MR_MAX, bs, in, bi, orow, col)              \
        : block_6x1(kc, ar, bs, 0, in, bi, orow, col))
    if (K <= SMALL_K) {
        for (int64_t r0 = 0; r0 < full; r0 += MR_MAX) {
            ROW_GROUP(r0, 0)
            for (int s = 0; s < ns; s++)
                BLOCK(K, r0, 0, bp + s * sstride, init ? ir : NULL, bias ? bias + s * LSTM_TILE : NULL,
                      s * LSTM_TILE);
        }
    } else {
        for (int s = 0; s < ns; s++)
            for (int64_t k0 = 0; k0 < K; k0 += KC) {
                const int64_t kc = K - k0 < KC ? K - k0 : KC;
                const float *bs = bp + s * sstride + k0 * LSTM_TILE;
                for (int64_t r0 = 0; r0 < full; r0 += MR_MAX) {
                    ROW_GROUP(r0, k0)
                    BLOCK(kc, r0, k0, bs, k0 || init ? ir : NULL,
                          k0 ? NULL : bias ? bias + s * LSTM_TILE : NULL, s * LSTM_TILE);
                }
            }
    }
#undef BLOCK
#undef ROW_GROUP
    const int mr = (int)(m - full);
    if (!mr) return;
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = K - k0 < KC ? K - k0 : KC;
        for (int r = 0; r < mr; r++) {
            ar[r] = lstm_row(a, full + r) + k0;
            orow[r] = lstm_row(out, full + r);
            ir[r] = k0 ? orow[r] : init ? lstm_row(*init, full + r) : NULL;
        }
        block_tail(mr, ns, kc, ar, bp + k0 * LSTM_TILE, sstride, k0 || init ? ir : NULL,
                   k0 ? NULL : bias, orow);
    }
}

// ---------------------------------------------------------------- kernels

INLINE void row_sums(const int type, int64_t K, const float *a, const int16_t *qa, float sa,
                     lstm_wmat w, int64_t s0, int64_t ns, const float *init, float *out);

/*
 * gemm of one row (K <= KC) over strips [s0, s1): the sums of the one-row
 * step, which are the microkernels' to the bit. A function of its own: inlined
 * into gemm_avx2, its loop reloaded a pointer from the stack every iteration.
 */
static __attribute__((noinline)) void gemm_row_avx2(int64_t K, const float *ar, const float *b,
                                                    const float *bias, int64_t s0, int64_t s1,
                                                    int64_t ncols, float *cr) {
    float tmp[4 * LSTM_TILE];
    for (int64_t s = s0; s < s1; s += 4) {
        const int ns = s1 - s < 4 ? (int)(s1 - s) : 4;
        const int64_t width = ncols - s * LSTM_TILE;
        float *out = width >= ns * LSTM_TILE ? cr + s * LSTM_TILE : tmp;
        row_sums(LSTM_WEIGHTS_F32, K, ar, NULL, 0.0f, (lstm_wmat){.w = b, .type = LSTM_WEIGHTS_F32}, s, ns,
                 bias ? bias + s * LSTM_TILE : NULL, out);
        if (out == tmp) memcpy(cr + s * LSTM_TILE, tmp, (size_t)width * sizeof(float));
    }
}

/*
 * A packed matrix is its strips one after another, whatever the strips a
 * panel (lstm_packed_at), and so is its bias: panels [p0, p1) of `gates`
 * strips are strips [p0 gates, p1 gates), which run here four at a time,
 * leaving out the strips wholly past ncols.
 */
static void gemm_avx2(int64_t m, int64_t K, lstm_rows a, const float *ap, const float *b, int gates,
                      const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    float tmp[MR_MAX][LSTM_PANEL];
    const int64_t s0 = p0 * gates, s_end = (ncols + LSTM_TILE - 1) / LSTM_TILE;
    const int64_t s1 = p1 * gates < s_end ? p1 * gates : s_end;
    if (m == 1 && K <= KC) { // one row (a stream's step): the one-row step's loop, the same sums
        gemm_row_avx2(K, lstm_row(a, 0), b, bias, s0, s1, ncols, lstm_row(c, 0));
        return;
    }
    const int64_t block = l2_rows(K);
    for (int64_t rb = 0; rb < m; rb += block) {
        const int64_t rows = m - rb < block ? m - rb : block;
        const lstm_rows ab = lstm_rows_from(a, rb);
        const float *apb = ap ? ap + rb * K : NULL; // rb is a multiple of 6
        for (int64_t s = s0; s < s1; s += 4) {
            const int ns = s1 - s < 4 ? (int)(s1 - s) : 4;
            const float *bp = b + s * K * LSTM_TILE;
            const float *bias_p = bias ? bias + s * LSTM_TILE : NULL;
            const int64_t width = ncols - s * LSTM_TILE;
            const lstm_rows cb = lstm_rows_col(lstm_rows_from(c, rb), s * LSTM_TILE);
            if (width >= ns * LSTM_TILE) {
                panel_rows(rows, K, ab, apb, K, bp, ns, NULL, bias_p, cb);
                continue;
            }
            // the last strip of a matrix whose width is not a multiple of 16: via a stack tile
            for (int64_t r0 = 0; r0 < rows; r0 += MR_MAX) {
                const int64_t mr = rows - r0 < MR_MAX ? rows - r0 : MR_MAX;
                panel_rows(mr, K, lstm_rows_from(ab, r0), apb ? apb + r0 * K : NULL, K, bp, ns, NULL,
                           bias_p, (lstm_rows){tmp[0], LSTM_PANEL, NULL});
                for (int64_t r = 0; r < mr; r++)
                    memcpy(lstm_row(cb, r0 + r), tmp[r], (size_t)width * sizeof(float));
            }
        }
    }
}

/* kernels.h's widen: F16C, and vpmovsxbw; also dequantize_strip's halves */
static void widen_avx2(int type, const void *src, void *dst, int64_t n) {
    int64_t i = 0;
    if (type == LSTM_WEIGHTS_F16) {
        const uint16_t *h = src;
        float *f = dst;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
        for (; i < n; i++) f[i] = lstm_half_to_float(h[i]);
    } else {
        const int8_t *q = src;
        int16_t *w = dst;
        for (; i + 16 <= n; i += 16)
            _mm256_storeu_si256((__m256i *)(w + i), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + i))));
        for (; i < n; i++) w[i] = q[i];
    }
}

/*
 * Rows [k0, k0 + kc) of strip s of a reduced packed matrix (K rows) as floats:
 * tile (rounded up to 4 rows for I8, kc <= KC), each value as the scalar
 * reference dequantizes it (half -> float exactly, q * scale one rounding).
 */
static void dequantize_strip(lstm_wmat w, int64_t K, int64_t s, int64_t k0, int64_t kc, float *tile) {
    if (w.type == LSTM_WEIGHTS_F16) {
        widen_avx2(LSTM_WEIGHTS_F16, (const uint16_t *)w.w + (s * K + k0) * LSTM_TILE, tile, kc * LSTM_TILE);
        return;
    }
    // a strip row of int8 is 4 k of 16 columns: 32-bit lane j of each half holds column j's 4 bytes
    const int8_t *src = (const int8_t *)w.w + s * lstm_i8_k(K) * LSTM_TILE + k0 * LSTM_TILE;
    const __m256 sc[2] = {_mm256_loadu_ps(w.scale + s * LSTM_TILE), _mm256_loadu_ps(w.scale + s * LSTM_TILE + 8)};
    for (int64_t k = 0; k < kc; k += 4, src += 4 * LSTM_TILE)
        EACH(v, 2) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(src + 32 * v));
            const __m256i b[4] = {_mm256_srai_epi32(_mm256_slli_epi32(x, 24), 24),
                                  _mm256_srai_epi32(_mm256_slli_epi32(x, 16), 24),
                                  _mm256_srai_epi32(_mm256_slli_epi32(x, 8), 24),
                                  _mm256_srai_epi32(x, 24)};
            EACH(i, 4)
                _mm256_storeu_ps(tile + (k + i) * LSTM_TILE + 8 * v, _mm256_mul_ps(_mm256_cvtepi32_ps(b[i]), sc[v]));
        }
}

/*
 * A row's int8 sums over one int8 strip at w, from the int16 quantized row
 * qa (Kq, see lstm_i8_row_scale):
 * out[j] = fmaf(qa . column j, sa * scale[j], init ? init[j] : 0).
 * A strip row (4 k of 16 columns) is four 16-byte pieces of 4 columns, each
 * widened to int16 (vpmovsxbw) and multiplied with the 4 k of qa by vpmaddwd:
 * lane 2i holds column i's k 0-1 and lane 2i + 1 its k 2-3 of every group of
 * four (int32, exact as lstm_i8_state_max bounds the sums), the two added
 * once at the end. Four accumulators a strip, one strip a call: with two,
 * GCC spilled an accumulator and the step took 1.5x as long.
 */
INLINE void row_strip_i8(int64_t Kq, const int16_t *qa, const int8_t *w, const float *scale,
                         float sa, const float *init, float *out) {
    __m256i acc[4];
    EACH(v, 4) acc[v] = _mm256_setzero_si256();
    for (int64_t k = 0; k < Kq; k += 4, w += 4 * LSTM_TILE) {
        int64_t x4;
        memcpy(&x4, qa + k, sizeof x4);
        const __m256i x = _mm256_set1_epi64x(x4);
        EACH(v, 4) {
            const __m128i b = _mm_loadu_si128((const __m128i *)(w + 16 * v));
            acc[v] = _mm256_add_epi32(acc[v], _mm256_madd_epi16(_mm256_cvtepi8_epi16(b), x));
        }
    }
    // hadd of columns 0-3 and 4-7 gives 0 1 4 5 | 2 3 6 7
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    const __m256 sav = _mm256_set1_ps(sa);
    EACH(v, 2) {
        const __m256i isum = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(acc[2 * v], acc[2 * v + 1]), order);
        const __m256 start = init ? _mm256_loadu_ps(init + 8 * v) : _mm256_setzero_ps();
        _mm256_storeu_ps(out + 8 * v, _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
                                                      _mm256_mul_ps(sav, _mm256_loadu_ps(scale + 8 * v)), start));
    }
}

/* a (K) quantized to qa (Kq, zeros past K) as lstm_i8_row_scale says, to int16
 * in [-lstm_i8_state_max(Kq), ..]; returns the scale */
static float quantize_row(const float *a, int64_t K, int16_t *qa) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 big = _mm256_set1_ps(FLT_MAX);
    const int64_t Kq = lstm_i8_k(K);
    const int32_t qmax = lstm_i8_state_max(Kq);
    __m256 mx = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const __m256 v = _mm256_and_ps(_mm256_loadu_ps(a + k), abs_mask);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, big, _CMP_NLE_UQ)); // NaN, Inf
        mx = _mm256_max_ps(mx, v);
    }
    float lanes[8], amax = 0.0f;
    _mm256_storeu_ps(lanes, mx);
    for (int i = 0; i < 8; i++) amax = lanes[i] > amax ? lanes[i] : amax;
    int finite = !_mm256_movemask_ps(bad);
    for (; k < K; k++) {
        const float v = a[k] < 0 ? -a[k] : a[k];
        if (!(v <= FLT_MAX)) finite = 0;
        else if (v > amax) amax = v;
    }
    float inv;
    const float sa = lstm_i8_row_scale(amax, finite, qmax, &inv);
    const __m256 iv = _mm256_set1_ps(inv);
    k = 0;
    // |a * inv| <= qmax rounds to at most qmax: no clamping needed
    if (inv != 0.0f)
        for (; k + 16 <= K; k += 16) {
            const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + k), iv));
            const __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + k + 8), iv));
            _mm256_storeu_si256((__m256i *)(qa + k), _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xd8));
        }
    for (; k < Kq; k++) qa[k] = (int16_t)(k < K ? lstm_i8_quantize(a[k], inv, qmax) : 0);
    return sa;
}

/*
 * A row's sums over ns (compile-time, 1 to 4) strips at w, sstride elements
 * apart, float32 or (half) F16 values: out[16s ..] = (init ? init[16s ..] :
 * 0) + a (K) @ strip s, each sum in k order like the batched path's, so a
 * sequence gets the same bits alone as in a batch (splitting K over more
 * accumulators for one or two strips was faster, but rounded differently).
 */
INLINE void row_strips(const int ns, const int half, int64_t K, const float *a, const void *w,
                       int64_t sstride, const float *init, float *out) {
    const int nv = 2 * ns;
    const float *wf = w;
    const uint16_t *wh = w;
    __m256 acc[8];
    EACH(v, nv) acc[v] = init ? _mm256_loadu_ps(init + 8 * v) : _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const __m256 x = _mm256_broadcast_ss(a + k);
        EACH(v, nv) {
            const int64_t at = (v / 2) * sstride + k * LSTM_TILE + 8 * (v % 2);
            const __m256 wv = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wh + at)))
                                   : _mm256_loadu_ps(wf + at);
            acc[v] = _mm256_fmadd_ps(x, wv, acc[v]);
        }
    }
    EACH(v, nv) _mm256_storeu_ps(out + 8 * v, acc[v]);
}

/*
 * The sums of one row for the ns strips of w from strip s0: out[16s ..] =
 * (init ? init[16s ..] : 0) + a (K) @ strip s0 + s, or for I8 the int8 sums
 * of qa (scale sa) as row_strip_i8 says. Four strips at a time (an LSTM
 * tile, four RNN tiles, a GRU tile and a third; I8 one); a GRU or RNN step
 * may end with 1 to 3.
 */
INLINE void row_sums(const int type, int64_t K, const float *a, const int16_t *qa, float sa,
                     lstm_wmat w, int64_t s0, int64_t ns, const float *init, float *out) {
    const int64_t Kw = type == LSTM_WEIGHTS_I8 ? lstm_i8_k(K) : K, sstride = Kw * LSTM_TILE;
    for (int64_t s = 0; s < ns;) {
        const int64_t left = ns - s, n = left < 4 ? left : 4, at = (s0 + s) * sstride;
        const float *init_s = init ? init + s * LSTM_TILE : NULL;
        float *out_s = out + s * LSTM_TILE;
        if (type == LSTM_WEIGHTS_I8) { // a strip at a time
            row_strip_i8(Kw, qa, (const int8_t *)w.w + at, w.scale + (s0 + s) * LSTM_TILE, sa, init_s, out_s);
            s += 1;
            continue;
        }
        const int half = type == LSTM_WEIGHTS_F16;
        const void *ws = half ? (const void *)((const uint16_t *)w.w + at) : (const void *)((const float *)w.w + at);
#define STRIPS(N) row_strips(N, half, K, a, ws, sstride, init_s, out_s)
        switch (n) {
        case 4: STRIPS(4); break;
        case 3: STRIPS(3); break;
        case 2: STRIPS(2); break;
        default: STRIPS(1); break;
        }
#undef STRIPS
        s += n;
    }
}

/*
 * panel_rows on the ns strips from strip s0 of a reduced matrix: a strip's
 * K-block at a time is dequantized into a stack tile (16 KB, in L1) which the
 * float32 microkernels then run over every row, so the sums are the float32
 * ones on the dequantized matrix, in the same order (the same bits as
 * row_sums).
 */
static void panel_rows_r(int64_t m, int64_t K, lstm_rows a, const float *ap, lstm_wmat w, int64_t s0,
                         int ns, const lstm_rows *init, const float *bias, lstm_rows out) {
    _Alignas(64) float tile[KC * LSTM_TILE];
    for (int s = 0; s < ns; s++) {
        const lstm_rows os = lstm_rows_col(out, s * LSTM_TILE);
        const lstm_rows is = init ? lstm_rows_col(*init, s * LSTM_TILE) : (lstm_rows){NULL, 0, NULL};
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            dequantize_strip(w, K, s0 + s, k0, kc, tile);
            panel_rows(m, kc, lstm_rows_col(a, k0), ap ? ap + k0 * MR_MAX : NULL, K, tile, 1,
                       k0 ? &os : init ? &is : NULL, k0 || !bias ? NULL : bias + s * LSTM_TILE, os);
        }
    }
}

/*
 * gemm on reduced weights: panel_rows_r over row blocks, strip by strip.
 * Fewer rows than GEMM_R_ROWS read halves directly (row_sums: the same sums
 * in the same order, so the same bits).
 */
#define GEMM_R_ROWS 4

// c's strips [s0, s1) of one row straight from the halves (a function apart, like
// cell_row_*: inlined into lstm_gemm_r_avx2 its loop reloaded a pointer from the stack)
static __attribute__((noinline)) void gemm_row_f16(int64_t K, const float *ar, lstm_wmat b,
                                                   const float *bias, int64_t s0, int64_t s1,
                                                   int64_t ncols, float *cr) {
    float tmp[LSTM_TILE];
    const int64_t full = (ncols - s0 * LSTM_TILE) / LSTM_TILE, n = s1 - s0 < full ? s1 - s0 : full;
    row_sums(LSTM_WEIGHTS_F16, K, ar, NULL, 0.0f, b, s0, n, bias ? bias + s0 * LSTM_TILE : NULL,
             cr + s0 * LSTM_TILE);
    if (s0 + n < s1) { // the last strip of a width that is not a multiple of 16
        row_sums(LSTM_WEIGHTS_F16, K, ar, NULL, 0.0f, b, s0 + n, 1,
                 bias ? bias + (s0 + n) * LSTM_TILE : NULL, tmp);
        memcpy(cr + (s0 + n) * LSTM_TILE, tmp, (size_t)(ncols - (s0 + n) * LSTM_TILE) * sizeof(float));
    }
}

void lstm_gemm_r_avx2(int64_t m, int64_t K, lstm_rows a, const float *ap, lstm_wmat b, int gates,
                      const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    float tmp[ROW_BLOCK][LSTM_TILE];
    const int64_t s0 = p0 * gates, s_end = (ncols + LSTM_TILE - 1) / LSTM_TILE;
    const int64_t s1 = p1 * gates < s_end ? p1 * gates : s_end;
    if (m < GEMM_R_ROWS && b.type == LSTM_WEIGHTS_F16) { // a streaming step's input, a projection
        for (int64_t r = 0; r < m; r++) gemm_row_f16(K, lstm_row(a, r), b, bias, s0, s1, ncols, lstm_row(c, r));
        return;
    }
    for (int64_t rb = 0; rb < m; rb += ROW_BLOCK) {
        const int64_t rows = m - rb < ROW_BLOCK ? m - rb : ROW_BLOCK;
        for (int64_t s = s0; s < s1; s++) {
            const int64_t width = ncols - s * LSTM_TILE;
            const lstm_rows cb = lstm_rows_col(lstm_rows_from(c, rb), s * LSTM_TILE);
            // the last strip of a width that is not a multiple of 16 goes via a stack tile
            const lstm_rows out = width >= LSTM_TILE ? cb : (lstm_rows){tmp[0], LSTM_TILE, NULL};
            panel_rows_r(rows, K, lstm_rows_from(a, rb), ap ? ap + rb * K : NULL, b, s, 1, NULL,
                         bias ? bias + s * LSTM_TILE : NULL, out); // rb: a multiple of 6
            if (width < LSTM_TILE)
                for (int64_t r = 0; r < rows; r++) memcpy(lstm_row(cb, r), tmp[r], (size_t)width * sizeof(float));
        }
    }
}

/*
 * The update of tile t of one row from its sums q (W = gates * 16 floats): h's
 * units [16t, min(16t + 16, H)) written and, for the LSTM, c's 16 units. gr
 * is the row of g (the GRU's input part), ar the row of a (the GRU's h_prev),
 * cr the row of c; each is read only by the kinds that use it. `pre`: q holds
 * the LSTM's or the GRU's gates already (tile_gates ran on it).
 */
INLINE void tile_step(const int kind, const int pre, const float *q, const float *gr,
                      const float *ar, float *cr, int64_t t, int64_t H, float *hr) {
    const int64_t unit0 = t * LSTM_TILE, units = H - unit0;
    __m256 s[8], hv[2];
    EACH(v, 2 * lstm_gates(kind)) s[v] = _mm256_loadu_ps(q + 8 * v);
    if (kind == LSTM_CELL_LSTM) {
        tile_update(pre, s, cr + unit0, hv);
    } else if (kind == LSTM_CELL_GRU) {
        const float *h_prev = ar + unit0;
        float hbuf[LSTM_TILE];
        if (units < LSTM_TILE) { // the units past H are not a's to read
            memset(hbuf, 0, sizeof hbuf);
            memcpy(hbuf, h_prev, (size_t)units * sizeof(float));
            h_prev = hbuf;
        }
        tile_update_gru(pre, s, gr + t * 3 * LSTM_TILE, h_prev, hv);
    } else {
        tile_update_rnn(kind == LSTM_CELL_RNN_RELU, s, hv);
    }
    store_h(hr + unit0, hv, units);
}

#define ROW_STRIPS 32 /* strips whose sums a one-row step computes before their updates */

/*
 * One row's step of cell kind `kind` (a streaming step, or the last live
 * sequence): the sums of up to 32 strips go first, then all their updates,
 * so that the updates' long dependency chains are not separated by
 * matrix-vector loops. The sums start from g (LSTM, RNN: the input part with
 * both biases) or from b_hh (GRU, whose input part enters the update apart).
 */
INLINE void row_kind(const int kind, const int type, int64_t K, const float *ar, lstm_wmat w_hh,
                     const int16_t *qa, float sa, const float *b_hh, const float *gr, float *c,
                     int64_t t0, int64_t t1, int64_t H, float *hr) {
    const int gates = lstm_gates(kind), W = gates * LSTM_TILE;
    const int64_t chunk = ROW_STRIPS / gates;
    float sums[ROW_STRIPS * LSTM_TILE];
    if (type != LSTM_WEIGHTS_I8) lstm_prefetch_row(ar, K); // (int8: quantizing read it already)
    for (int64_t c0 = t0; c0 < t1; c0 += chunk) {
        const int64_t n = t1 - c0 < chunk ? t1 - c0 : chunk;
        const float *init = kind != LSTM_CELL_GRU ? gr + c0 * W : b_hh ? b_hh + c0 * W : NULL;
        row_sums(type, K, ar, qa, sa, w_hh, c0 * gates, n * gates, init, sums);
        for (int64_t j = 0; j < n; j++) tile_step(kind, 0, sums + j * W, gr, ar, c, c0 + j, H, hr);
    }
}

/*
 * The step of more than one row, of cell kind `kind`. A group of tiles whose
 * strips number at most four (one LSTM or GRU tile, four RNN tiles) is one
 * panel_rows call over a chunk of rows (`chunk`, at most CELL_ROWS), then the
 * updates of each row. The sums start from g or b_hh as in row_kind.
 * The LSTM's and the GRU's updates take two passes over the chunk: every
 * row's gates (tile_gates), then every row's update from them. In one pass,
 * a unit's update chained its activations through the cell's (~125 cycles)
 * and a row's work filled the out-of-order window; in two, the rows of a
 * pass overlap (a batch-64 step at hidden 64: LSTM 1.03x, GRU 1.06x; the
 * same bits).
 */
INLINE void rows_kind(const int kind, const int type, int64_t m, int64_t K, lstm_rows a,
                      lstm_wmat w_hh, const float *b_hh, lstm_rows g, float *c, int64_t ldc,
                      int64_t t0, int64_t t1, int64_t H, lstm_rows h, const int64_t chunk) {
    const int gates = lstm_gates(kind), W = gates * LSTM_TILE, group = 4 / gates;
    const int gru = kind == LSTM_CELL_GRU, pre = kind == LSTM_CELL_LSTM || gru;
    float tmp[CELL_ROWS][LSTM_PANEL];
    for (int64_t t = t0; t < t1; t += group) {
        const int64_t nt = t1 - t < group ? t1 - t : group;
        const float *wp = type == LSTM_WEIGHTS_F32 ? (const float *)w_hh.w + t * K * W : NULL;
        for (int64_t r0 = 0; r0 < m; r0 += chunk) {
            const int64_t rows = m - r0 < chunk ? m - r0 : chunk;
            const lstm_rows out = {tmp[0], LSTM_PANEL, NULL}, ar0 = lstm_rows_from(a, r0);
            const int ns = gru ? gates : (int)nt * gates;
            const lstm_rows gt = lstm_rows_col(lstm_rows_from(g, r0), t * W);
            const lstm_rows *init = gru ? NULL : &gt;
            const float *bias = gru && b_hh ? b_hh + t * W : NULL;
            if (type == LSTM_WEIGHTS_F32) panel_rows(rows, K, ar0, NULL, 0, wp, ns, init, bias, out);
            else panel_rows_r(rows, K, ar0, NULL, w_hh, t * gates, ns, init, bias, out);
            if (pre) // one tile (nt = 1)
                for (int64_t r = 0; r < rows; r++)
                    tile_gates(kind, tmp[r], gru ? lstm_row(g, r0 + r) + t * W : NULL);
            for (int64_t r = 0; r < rows; r++) {
                const float *ar = gru ? lstm_row(a, r0 + r) : NULL;
                const float *gr = gru ? lstm_row(g, r0 + r) : NULL;
                float *cr = kind == LSTM_CELL_LSTM ? c + (r0 + r) * ldc : NULL;
                float *hr = lstm_row(h, r0 + r);
                for (int64_t j = 0; j < nt; j++)
                    tile_step(kind, pre, tmp[r] + j * W, gr, ar, cr, t + j, H, hr);
            }
        }
    }
}

/*
 * The two bodies compiled for each kind as functions of their own,
 * cell_row_<kind> and cell_rows_<kind>: the one-row step inlined into the
 * other, GCC moved the activations' constants out of its loops into stack
 * slots, and both inlined into cell_avx2 made its prologue save the many-row
 * step's state before every one-row step (together 12% more instructions a
 * step at hidden size 32; the sums of the one row in a function apart, 2%).
 */
#define CELL_KIND(name, kind)                                                                      \
    static __attribute__((noinline)) void cell_row_##name(int64_t K, const float *ar,              \
                                                          const float *w_hh, const float *b_hh,    \
                                                          const float *gr, float *c, int64_t t0,   \
                                                          int64_t t1, int64_t H, float *hr) {      \
        row_kind(kind, LSTM_WEIGHTS_F32, K, ar, (lstm_wmat){.w = w_hh, .type = LSTM_WEIGHTS_F32},  \
                 NULL, 0.0f, b_hh, gr, c, t0, t1, H, hr);                                          \
    }                                                                                              \
    static __attribute__((noinline)) void cell_rows_##name(                                        \
        int64_t m, int64_t K, lstm_rows a, const float *w_hh, const float *b_hh, lstm_rows g,      \
        float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {                   \
        const int64_t block = l2_rows(K), chunk = cell_rows(K);                                    \
        for (int64_t rb = 0; rb < m; rb += block)                                                  \
            rows_kind(kind, LSTM_WEIGHTS_F32, m - rb < block ? m - rb : block, K,                  \
                      lstm_rows_from(a, rb), (lstm_wmat){.w = w_hh, .type = LSTM_WEIGHTS_F32},     \
                      b_hh,                                                                        \
                      lstm_rows_from(g, rb), c + rb * ldc, ldc, t0, t1, H, lstm_rows_from(h, rb),  \
                      chunk);                                                                      \
    }
CELL_KIND(lstm, LSTM_CELL_LSTM)
CELL_KIND(gru, LSTM_CELL_GRU)
CELL_KIND(rnn_tanh, LSTM_CELL_RNN_TANH)
CELL_KIND(rnn_relu, LSTM_CELL_RNN_RELU)

static void cell_avx2(int cell, int64_t m, int64_t K, lstm_rows a, const float *w_hh,
                      const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                      int64_t t1, int64_t H, lstm_rows h) {
#define STEP(name)                                                                                 \
    (m == 1 ? cell_row_##name(K, lstm_row(a, 0), w_hh, b_hh, lstm_row(g, 0), c, t0, t1, H,      \
                              lstm_row(h, 0))                                                      \
            : cell_rows_##name(m, K, a, w_hh, b_hh, g, c, ldc, t0, t1, H, h))
    switch (cell) {
    case LSTM_CELL_GRU: STEP(gru); break;
    case LSTM_CELL_RNN_TANH: STEP(rnn_tanh); break;
    case LSTM_CELL_RNN_RELU: STEP(rnn_relu); break;
    default: STEP(lstm); break;
    }
#undef STEP
}

/*
 * The step on reduced weights, compiled per kind: float16 like float32, one
 * row or many (the many from dequantized tiles, the same bits); int8 row by
 * row through the one-row body, each row quantized first, so a sequence gets
 * the same bits alone as in a batch (a batch gains no reuse of the weights
 * from L1 there).
 */
#define CELL_KIND_R(name, kind)                                                                    \
    static __attribute__((noinline)) void cell_r_##name(                                           \
        int64_t m, int64_t K, lstm_rows a, lstm_wmat w, const float *b_hh, lstm_rows g, float *c,  \
        int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {                             \
        _Alignas(32) int16_t qa[LSTM_MAX_I8_STATE];                                                 \
        if (w.type == LSTM_WEIGHTS_F16 && m > 1) {                                                 \
            rows_kind(kind, LSTM_WEIGHTS_F16, m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h, CELL_ROWS); \
            return;                                                                                \
        }                                                                                          \
        for (int64_t r = 0; r < m; r++) {                                                          \
            const float *ar = lstm_row(a, r), *gr = lstm_row(g, r);                                \
            float *cr = kind == LSTM_CELL_LSTM ? c + r * ldc : NULL, *hr = lstm_row(h, r);         \
            if (w.type == LSTM_WEIGHTS_F16) {                                                      \
                row_kind(kind, LSTM_WEIGHTS_F16, K, ar, w, NULL, 0.0f, b_hh, gr, cr, t0, t1, H, hr); \
            } else {                                                                               \
                const float sa = quantize_row(ar, K, qa);                                          \
                row_kind(kind, LSTM_WEIGHTS_I8, K, ar, w, qa, sa, b_hh, gr, cr, t0, t1, H, hr);    \
            }                                                                                      \
        }                                                                                          \
    }
CELL_KIND_R(lstm, LSTM_CELL_LSTM)
CELL_KIND_R(gru, LSTM_CELL_GRU)
CELL_KIND_R(rnn_tanh, LSTM_CELL_RNN_TANH)
CELL_KIND_R(rnn_relu, LSTM_CELL_RNN_RELU)

void lstm_cell_r_avx2(int cell, int64_t m, int64_t K, lstm_rows a, lstm_wmat w,
                      const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                      int64_t t1, int64_t H, lstm_rows h) {
    switch (cell) {
    case LSTM_CELL_GRU: cell_r_gru(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
    case LSTM_CELL_RNN_TANH: cell_r_rnn_tanh(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
    case LSTM_CELL_RNN_RELU: cell_r_rnn_relu(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
    default: cell_r_lstm(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
    }
}

const lstm_kernels lstm_kernels_avx2 = {"avx2", gemm_avx2, cell_avx2, lstm_gemm_r_avx2, lstm_cell_r_avx2, 1, NULL,
                                        widen_avx2, NULL};
