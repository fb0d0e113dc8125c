/*
 * kernels_avx512.c - AVX-512 kernels (16 floats a vector, 32 registers) for
 * float32 weights: the gemm and the step of every cell kind. Built with
 * -mavx512f -mavx512vl -mavx512bw -mavx512dq -mavx2 -mfma -mf16c; only
 * called after the CPU and the OS reported all of them. Half weights
 * convert a K-block at a time into a stack tile the float32 microkernels run
 * over (or, one row, in the sums' loop), so they give the float32 kernels'
 * bits on the converted weights. Where the CPU has AVX512-VNNI (only those
 * functions are compiled for it) the int8 step of one row sums the weights
 * as they are with vpdpbusd, h split into bytes, and a batch's widens them
 * once to int16 for vpdpwssd; else it runs the avx2 set's; the int8 gemm (not on a
 * model's path: W_ih of an int8 model is half) is the avx2 set's.
 *
 * A strip row (16 columns, kernels.h) is one vector, so a panel of an LSTM
 * tile is four. One register-blocked microkernel serves both kernels: 6
 * rows x NS strips (up to 4: 24 accumulators, 4 strip vectors and the
 * broadcast of 32 registers) over a K-block, whose strips every row group
 * passes over in turn (from L2: see k_block). With one vector a
 * strip, the avx2 set's 6x1 (12 accumulators) would be 6 here: too few to
 * cover the FMA latency of two pipes, and 7 loads for 6 multiply-adds. A
 * step with one row (streaming, batch 1) sums eight strips at a time (eight
 * independent accumulators) over the whole of K.
 *
 * Each column's sum is one chain of multiply-adds in k order from its start
 * (bias, input part, or 0), as in every other set: the gemm gives the avx2
 * set's bits, and one row alone the same bits as in a batch. The
 * activations are the avx2 set's formulas, except that tanh too takes the
 * reciprocal estimate (14 bits here) and a Newton step instead of dividing:
 * test_kernels measures 1.6e-7 relative error for tanh, 1.3e-7 for sigmoid.
 */
#if !defined(__AVX512F__) || !defined(__AVX512VL__) || !defined(__AVX512BW__) ||                 \
    !defined(__AVX512DQ__) || !defined(__FMA__) || !defined(__F16C__)
#error "kernels_avx512.c must be compiled with -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma -mf16c"
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("align-loops=64") /* as in kernels_avx2.c: loop placement moved small steps */
#endif

#include <float.h>
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define INLINE static inline __attribute__((always_inline))
#define MR 6          /* rows of the full microkernel */
_Static_assert(MR == LSTM_PACK_ROWS, "packed rows (kernels.h) come in groups of the microkernel's rows");
#define MAX_NS 4      /* strips of one microkernel call (one panel) */
#define TILE_KC 128   /* rows of a half strip converted at once (a 32 KB stack tile: small thread stacks) */
#define CELL_ROWS 48  /* cell rows whose gate sums wait in a stack tile */
#define MAX_L2_ROWS 1536
#define ROW_STRIPS 32 /* strips whose sums a one-row step computes before their updates */

#define EACH(v, n) _Pragma("GCC unroll 8") for (int v = 0; v < (n); v++)
#define PRAGMA_(x) _Pragma(#x)
#define UNROLLED(n) PRAGMA_(GCC unroll n)
#if defined(__clang__)
#define NOIPA
#else
#define NOIPA __attribute__((noipa))
#endif

/*
 * K-block of ns strips: the strips' block (kc x ns x 64 bytes) in a quarter
 * of this CPU's L2, which streams it to the microkernel fast enough (4
 * vectors of B a k for 24 multiply-adds). Blocks sized to half of L1 (kc 96
 * on a 48 KB L1d) ran the batched cases 3-6% slower than one block for K up
 * to 512 (Xeon, 2 MB L2), and a full L1's blocks 1-4% slower.
 */
static int64_t k_block(int ns) {
    const int64_t kc = lstm_cache_sizes()->l2 / 4 / (ns * LSTM_TILE * (int64_t)sizeof(float)) / 8 * 8;
    return kc < 64 ? 64 : kc;
}

/* K-block of a half matrix's converted tile on the stack: in half of L1d, at most TILE_KC. */
static int64_t tile_block(int ns) {
    const int64_t kc = lstm_cache_sizes()->l1d / 2 / (ns * LSTM_TILE * (int64_t)sizeof(float)) / 8 * 8;
    return kc < 32 ? 32 : kc > TILE_KC ? TILE_KC : kc;
}

/* Rows of A kept in L2 while the strips stream past (as kernels_avx2.c's l2_rows). */
static int64_t l2_rows(int64_t K) {
    const int64_t rows = lstm_cache_sizes()->l2 * 3 / 4 / ((K > 0 ? K : 1) * (int64_t)sizeof(float));
    return rows < CELL_ROWS ? CELL_ROWS : rows > MAX_L2_ROWS ? MAX_L2_ROWS : rows / MR * MR;
}

// ---------------------------------------------------------------- activations

/* exp(x), or exp(x) - 1 where m1[v]: kernels_avx2.c's exp_n (see there), 16 lanes. */
INLINE void exp_n(const int n, __m512 *x, const int *m1) {
    __m512 k[8], p[8], s[8];
    // max/min return their second operand when either is NaN: x goes second so NaN survives
    EACH(v, n) if (!m1[v]) x[v] = _mm512_min_ps(_mm512_set1_ps(88.3f), _mm512_max_ps(_mm512_set1_ps(-87.3f), x[v]));
    const __m512 shift = _mm512_set1_ps(12583039.0f);
    EACH(v, n) s[v] = _mm512_fmadd_ps(x[v], _mm512_set1_ps(1.44269504088896341f), shift);
    EACH(v, n) k[v] = _mm512_sub_ps(s[v], shift);
    EACH(v, n) x[v] = _mm512_fnmadd_ps(k[v], _mm512_set1_ps(0.693359375f), x[v]);
    EACH(v, n) x[v] = _mm512_fnmadd_ps(k[v], _mm512_set1_ps(-2.12194440e-4f), x[v]);
    EACH(v, n) p[v] = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), x[v], _mm512_set1_ps(1.3981999507e-3f));
    EACH(v, n) p[v] = _mm512_fmadd_ps(p[v], x[v], _mm512_set1_ps(8.3334519073e-3f));
    EACH(v, n) p[v] = _mm512_fmadd_ps(p[v], x[v], _mm512_set1_ps(4.1665795894e-2f));
    EACH(v, n) p[v] = _mm512_fmadd_ps(p[v], x[v], _mm512_set1_ps(1.6666665459e-1f));
    EACH(v, n) p[v] = _mm512_fmadd_ps(p[v], x[v], _mm512_set1_ps(5.0000001201e-1f));
    EACH(v, n) p[v] = _mm512_fmadd_ps(p[v], _mm512_mul_ps(x[v], x[v]), x[v]);
    EACH(v, n) s[v] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(s[v]), 23));
    EACH(v, n) x[v] = _mm512_fmadd_ps(s[v], p[v], m1[v] ? _mm512_sub_ps(s[v], _mm512_set1_ps(1.0f)) : s[v]);
}

/*
 * x[v] becomes sigmoid(x[v]), or tanh(x[v]) where is_tanh[v]: the avx2 set's
 * formulas (1 / (1 + e^-x); m / (m + 2) with m = e^(2|x|) - 1, |x| capped at
 * 9, then x's sign), each reciprocal the 14-bit estimate and a Newton step.
 */
INLINE void act_n(const int n, __m512 *x, const int *is_tanh) {
    const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    __m512 e[8], d[8], r[8];
    EACH(v, n) {
        if (is_tanh[v]) {
            const __m512 ax = _mm512_min_ps(_mm512_set1_ps(9.0f), _mm512_andnot_ps(sign, x[v])); // NaN kept
            e[v] = _mm512_add_ps(ax, ax);
        } else {
            e[v] = _mm512_xor_ps(sign, x[v]);
        }
    }
    exp_n(n, e, is_tanh);
    EACH(v, n) d[v] = _mm512_add_ps(e[v], is_tanh[v] ? two : one);
    EACH(v, n) r[v] = _mm512_rcp14_ps(d[v]);
    EACH(v, n) r[v] = _mm512_fmadd_ps(r[v], _mm512_fnmadd_ps(d[v], r[v], one), r[v]);
    // a sigmoid below 2^-126 is 0, as the avx2 set's estimate flushes it: so that 0 * Inf
    // (a GRU's reset gate on an infinite sum) is NaN, as in torch, not Inf
    EACH(v, n) if (!is_tanh[v]) r[v] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(d[v], _mm512_set1_ps(0x1p126f), _CMP_NGE_UQ), r[v]);
    EACH(v, n) x[v] = is_tanh[v] ? _mm512_or_ps(_mm512_mul_ps(e[v], r[v]), _mm512_and_ps(sign, x[v])) : r[v];
}

/* lanes [0, units) of a tile, units <= 16 */
INLINE __mmask16 tile_mask(int64_t units) {
    return units >= LSTM_TILE ? (__mmask16)0xffff : (__mmask16)((1u << units) - 1);
}

/*
 * The gates of one LSTM or GRU tile from its sums q, in place (LSTM: i f g o
 * -> sigmoid, sigmoid, tanh, sigmoid; GRU: r z of gi + q -> sigmoid): the
 * first pass of rows_kind, as in kernels_avx2.c.
 */
INLINE void tile_gates(const int kind, float *q, const float *gi) {
    static const int lstm4[4] = {0, 0, 1, 0}, sig2[2] = {0, 0};
    __m512 s[4];
    if (kind == LSTM_CELL_LSTM) {
        EACH(v, 4) s[v] = _mm512_loadu_ps(q + 16 * v);
        act_n(4, s, lstm4);
        EACH(v, 4) _mm512_storeu_ps(q + 16 * v, s[v]);
    } else {
        EACH(v, 2) s[v] = _mm512_add_ps(_mm512_loadu_ps(gi + 16 * v), _mm512_loadu_ps(q + 16 * v));
        act_n(2, s, sig2);
        EACH(v, 2) _mm512_storeu_ps(q + 16 * v, s[v]);
    }
}

/*
 * The update of tile t of one row from its sums q (gates * 16 floats), as
 * kernels_avx2.c's tile_step: h's units [16t, min(16t + 16, H)) written
 * and, for the LSTM, c's 16 units. gr: the row of g (the GRU's input part);
 * ar: the row of a (the GRU's h_prev); cr: the row of c. `pre`: q holds the
 * LSTM's or GRU's gates already (tile_gates ran).
 */
INLINE void tile_step(const int kind, const int pre, const float *q, const float *gr,
                      const float *ar, float *cr, int64_t t, int64_t H, float *hr) {
    static const int lstm4[4] = {0, 0, 1, 0}, sig2[2] = {0, 0}, tanh1[1] = {1};
    const int64_t unit0 = t * LSTM_TILE;
    const __mmask16 mask = tile_mask(H - unit0);
    __m512 s[4], h;
    EACH(v, lstm_gates(kind)) s[v] = _mm512_loadu_ps(q + 16 * v);
    if (kind == LSTM_CELL_LSTM) {
        if (!pre) act_n(4, s, lstm4);
        __m512 c = _mm512_fmadd_ps(s[1], _mm512_loadu_ps(cr + unit0), _mm512_mul_ps(s[0], s[2]));
        _mm512_storeu_ps(cr + unit0, c);
        act_n(1, &c, tanh1);
        h = _mm512_mul_ps(s[3], c);
    } else if (kind == LSTM_CELL_GRU) {
        const float *gi = gr + t * 3 * LSTM_TILE;
        if (!pre) {
            EACH(v, 2) s[v] = _mm512_add_ps(_mm512_loadu_ps(gi + 16 * v), s[v]);
            act_n(2, s, sig2);
        }
        // h = n + z * (h_prev - n), torch's (1 - z) * n + z * h_prev as torch computes it
        __m512 n = _mm512_fmadd_ps(s[0], s[2], _mm512_loadu_ps(gi + 32));
        act_n(1, &n, tanh1);
        const __m512 h_prev = _mm512_maskz_loadu_ps(mask, ar + unit0); // units past H are not a's
        h = _mm512_fmadd_ps(s[1], _mm512_sub_ps(h_prev, n), n);
    } else if (kind == LSTM_CELL_RNN_RELU) {
        h = _mm512_max_ps(_mm512_setzero_ps(), s[0]); // NaN (second operand) survives
    } else {
        act_n(1, s, tanh1);
        h = s[0];
    }
    _mm512_mask_storeu_ps(hr + unit0, mask, h);
}

// ---------------------------------------------------------------- microkernel

/*
 * block_MRxNS: out[r][16s .. +16] for rows r < MR_ and strips s < NS,
 * over one K-block:
 *   (init ? init[r] : bias ? bias : 0)[16s ..] + sum_k a[r][k] * strip s row k
 * a[r] and bs point at the block's first k; strips are sstride apart. One
 * function per shape, its accumulators an array of exactly its size (kept
 * in registers; see kernels_avx2.c). block_6xNS_packed reads the six rows'
 * values of a k side by side (kernels.h, lstm_pack_rows): the same sums.
 */
#define BLOCK_BODY(MR_, NS, XOF)                                                                   \
    __m512 acc[MR_][NS];                                                                           \
    EACH(r, MR_) EACH(s, NS)                                                                       \
        acc[r][s] = init ? _mm512_loadu_ps(init[r] + 16 * s)                                       \
                  : bias ? _mm512_loadu_ps(bias + 16 * s)                                          \
                         : _mm512_setzero_ps();                                                    \
    UNROLLED(2) for (int64_t k = 0; k < kc; k++) {                                                 \
        __m512 bv[NS];                                                                             \
        EACH(s, NS) bv[s] = _mm512_loadu_ps(bs + s * sstride + k * LSTM_TILE);                     \
        EACH(r, MR_) {                                                                             \
            const __m512 x = _mm512_set1_ps(XOF(r, k));                                            \
            EACH(s, NS) acc[r][s] = _mm512_fmadd_ps(x, bv[s], acc[r][s]);                          \
        }                                                                                          \
    }                                                                                              \
    EACH(r, MR_) EACH(s, NS) _mm512_storeu_ps(out[r] + 16 * s, acc[r][s]);

typedef void (*block_fn)(int64_t kc, const float *const *a, const float *bs, int64_t sstride,
                         const float *const *init, const float *bias, float *const *out);
typedef void (*block_packed_fn)(int64_t kc, const float *ap, const float *bs, int64_t sstride,
                                const float *const *init, const float *bias, float *const *out);

#define ROWS_OF(r, k) a[r][k]
#define PACKED_OF(r, k) ap[(k) * MR + (r)]
#define DEFINE_BLOCK(MR_, NS)                                                                      \
    static NOIPA void block512_##MR_##x##NS(int64_t kc, const float *const *a, const float *bs,   \
                                            int64_t sstride, const float *const *init,             \
                                            const float *bias, float *const *out) {                \
        BLOCK_BODY(MR_, NS, ROWS_OF)                                                               \
    }
#define DEFINE_PACKED(NS)                                                                          \
    static NOIPA void block512_6x##NS##_packed(int64_t kc, const float *ap, const float *bs,      \
                                               int64_t sstride, const float *const *init,          \
                                               const float *bias, float *const *out) {              \
        BLOCK_BODY(MR, NS, PACKED_OF)                                                              \
    }
#define DEFINE_ROWS(MR_) DEFINE_BLOCK(MR_, 1) DEFINE_BLOCK(MR_, 2) DEFINE_BLOCK(MR_, 3) DEFINE_BLOCK(MR_, 4)
DEFINE_ROWS(1)
DEFINE_ROWS(2)
DEFINE_ROWS(3)
DEFINE_ROWS(4)
DEFINE_ROWS(5)
DEFINE_ROWS(6)
DEFINE_PACKED(1)
DEFINE_PACKED(2)
DEFINE_PACKED(3)
DEFINE_PACKED(4)

#define ROW_BLOCKS(MR_) {block512_##MR_##x1, block512_##MR_##x2, block512_##MR_##x3, block512_##MR_##x4}
static const block_fn blocks[MR][MAX_NS] = {ROW_BLOCKS(1), ROW_BLOCKS(2), ROW_BLOCKS(3),
                                            ROW_BLOCKS(4), ROW_BLOCKS(5), ROW_BLOCKS(6)};
static const block_packed_fn blocks_packed[MAX_NS] = {block512_6x1_packed, block512_6x2_packed,
                                                      block512_6x3_packed, block512_6x4_packed};

/*
 * The rows of the next group when `left` rows remain: groups of at most MR,
 * as even as their number allows (32 rows are 6 6 5 5 5 5, 7 are 4 3). Every
 * group passes over the strips' block once, and a group of 1 or 2 rows
 * streams it for few multiply-adds: a 7-row step ran 1.19x in 4 + 3 rows
 * against 6 + 1, 13 rows 1.13x (Xeon, hidden 256). A row's sums are the same
 * in any group.
 */
static int64_t group_rows(int64_t left) {
    const int64_t groups = (left + MR - 1) / MR;
    return (left + groups - 1) / groups;
}

/*
 * One K-block [k0, k0 + kc) of out[r][0 .. 16 ns] for rows r < m: the
 * strips' block at bs (sstride floats apart), onto (init rows, or bias, or
 * 0) where k0 is 0, else onto out. ap: a's full groups of 6 rows packed
 * (group g at ap + 6 g pk, pk columns a packed row; at this call's first
 * column), or NULL.
 */
static void rows_pass(int64_t m, int64_t k0, int64_t kc, lstm_rows a, const float *ap, int64_t pk,
                      const float *bs, int64_t sstride, int ns, const lstm_rows *init,
                      const float *bias, lstm_rows out) {
    const float *ar[MR], *ir[MR];
    float *orow[MR];
    const float *bi = k0 ? NULL : bias;
    for (int64_t r0 = 0, mr; r0 < m; r0 += mr) {
        mr = ap ? (m - r0 < MR ? m - r0 : MR) : group_rows(m - r0);
        for (int r = 0; r < mr; r++) {
            ar[r] = lstm_row(a, r0 + r) + k0;
            orow[r] = lstm_row(out, r0 + r);
            ir[r] = k0 ? orow[r] : init ? lstm_row(*init, r0 + r) : NULL;
        }
        const float *const *in = k0 || init ? ir : NULL;
        if (ap && mr == MR) blocks_packed[ns - 1](kc, ap + r0 * pk + k0 * MR, bs, sstride, in, bi, orow);
        else blocks[mr - 1][ns - 1](kc, ar, bs, sstride, in, bi, orow);
    }
}

/*
 * out[r][0 .. 16 ns] = (init rows, or bias, or 0) + a[r] (K) @ the ns strips
 * (1 to 4) at bp, for rows r < m (ap as in rows_pass): K-block by K-block,
 * every row group passing over the strips' block.
 */
static void panel_rows(int64_t m, int64_t K, lstm_rows a, const float *ap, int64_t pk,
                       const float *bp, int ns, const lstm_rows *init, const float *bias,
                       lstm_rows out) {
    const int64_t kb = k_block(ns);
    for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kb) // K = 0 still writes the starts
        rows_pass(m, k0, K - k0 < kb ? K - k0 : kb, a, ap, pk, bp + k0 * LSTM_TILE, K * LSTM_TILE, ns,
                  init, bias, out);
}

/* kernels.h's widen on zmm; also each block's tile of halves or int8 below */
static void widen_avx512(int type, const void *src, void *dst, int64_t n) {
    int64_t i = 0;
    if (type == LSTM_WEIGHTS_F16) {
        const uint16_t *h = src;
        float *f = dst;
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
        for (; i < n; i++) f[i] = lstm_half_to_float(h[i]);
    } else {
        const int8_t *q = src;
        int16_t *w = dst;
        for (; i + 32 <= n; i += 32)
            _mm512_storeu_si512(w + i, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + i))));
        for (; i < n; i++) w[i] = q[i];
    }
}

/*
 * panel_rows on the ns strips from strip s0 of a half (F16) matrix: each
 * K-block of them is converted into a stack tile, which the float32
 * microkernels then run over every row (the float32 sums on the converted
 * weights, in the same order: the same bits).
 */
static void panel_rows_f16(int64_t m, int64_t K, lstm_rows a, const float *ap, int64_t pk,
                           const uint16_t *w, int64_t s0, int ns, const lstm_rows *init,
                           const float *bias, lstm_rows out) {
    _Alignas(64) float tile[TILE_KC * MAX_NS * LSTM_TILE];
    const int64_t kb = tile_block(ns);
    for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kb) {
        const int64_t kc = K - k0 < kb ? K - k0 : kb;
        for (int s = 0; s < ns; s++)
            widen_avx512(LSTM_WEIGHTS_F16, w + ((s0 + s) * K + k0) * LSTM_TILE, tile + s * kc * LSTM_TILE,
                         kc * LSTM_TILE);
        rows_pass(m, k0, kc, a, ap, pk, tile, kc * LSTM_TILE, ns, init, bias, out);
    }
}

/* panel_rows on float32 or half weights w (strips from s0, K rows each) */
INLINE void panel_any(const int type, int64_t m, int64_t K, lstm_rows a, const float *ap, int64_t pk,
                      const void *w, int64_t s0, int ns, const lstm_rows *init, const float *bias,
                      lstm_rows out) {
    if (type == LSTM_WEIGHTS_F16) panel_rows_f16(m, K, a, ap, pk, w, s0, ns, init, bias, out);
    else panel_rows(m, K, a, ap, pk, (const float *)w + s0 * K * LSTM_TILE, ns, init, bias, out);
}

// ---------------------------------------------------------------- one row

/*
 * A row's sums over ns (compile-time, 1 to 8) strips at w, sstride values
 * apart, float32 or (half) F16: acc[s] = (init ? init[16s ..] : 0) + a (K)
 * @ strip s, each in k order (the microkernels' bits).
 */
INLINE void row_strips_acc(const int ns, const int half, int64_t K, const float *a, const void *w,
                           int64_t sstride, const float *init, __m512 *acc) {
    const float *wf = w;
    const uint16_t *wh = w;
    EACH(s, ns) acc[s] = init ? _mm512_loadu_ps(init + 16 * s) : _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const __m512 x = _mm512_set1_ps(a[k]);
        EACH(s, ns) {
            const int64_t at = s * sstride + k * LSTM_TILE;
            const __m512 wv = half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wh + at)))
                                   : _mm512_loadu_ps(wf + at);
            acc[s] = _mm512_fmadd_ps(x, wv, acc[s]);
        }
    }
}

/* row_strips_acc's sums stored at out */
INLINE void row_strips(const int ns, const int half, int64_t K, const float *a, const void *w,
                       int64_t sstride, const float *init, float *out) {
    __m512 acc[8];
    row_strips_acc(ns, half, K, a, w, sstride, init, acc);
    EACH(s, ns) _mm512_storeu_ps(out + 16 * s, acc[s]);
}

/* The sums of one row for the ns strips of w from strip s0 (as row_strips), eight at a time. */
INLINE void row_sums(const int type, int64_t K, const float *a, const void *w, int64_t s0, int64_t ns,
                     const float *init, float *out) {
    const int64_t sstride = K * LSTM_TILE;
    const int half = type == LSTM_WEIGHTS_F16;
    for (int64_t s = 0; s < ns;) {
        const int64_t n = ns - s < 8 ? ns - s : 8, at = (s0 + s) * sstride;
        const void *ws = half ? (const void *)((const uint16_t *)w + at) : (const void *)((const float *)w + at);
        const float *init_s = init ? init + s * LSTM_TILE : NULL;
        float *out_s = out + s * LSTM_TILE;
#define STRIPS(N) row_strips(N, half, K, a, ws, sstride, init_s, out_s)
        switch (n) {
        case 8: STRIPS(8); break;
        case 7: STRIPS(7); break;
        case 6: STRIPS(6); break;
        case 5: STRIPS(5); break;
        case 4: STRIPS(4); break;
        case 3: STRIPS(3); break;
        case 2: STRIPS(2); break;
        default: STRIPS(1); break;
        }
#undef STRIPS
        s += n;
    }
}

/* c's strips [s0, s1) of one row (a function apart, as gemm_row_avx2), float32 or half weights */
static __attribute__((noinline)) void gemm_row_avx512(int type, int64_t K, const float *ar, const void *b,
                                                      const float *bias, int64_t s0, int64_t s1,
                                                      int64_t ncols, float *cr) {
    float tmp[LSTM_TILE];
    const int64_t full = ncols / LSTM_TILE < s1 ? ncols / LSTM_TILE : s1;
    if (type == LSTM_WEIGHTS_F16) {
        if (full > s0)
            row_sums(LSTM_WEIGHTS_F16, K, ar, b, s0, full - s0, bias ? bias + s0 * LSTM_TILE : NULL,
                     cr + s0 * LSTM_TILE);
    } else if (full > s0) {
        row_sums(LSTM_WEIGHTS_F32, K, ar, b, s0, full - s0, bias ? bias + s0 * LSTM_TILE : NULL,
                 cr + s0 * LSTM_TILE);
    }
    if (full < s1) { // the last strip of a width that is not a multiple of 16
        const int64_t s = full > s0 ? full : s0;
        if (type == LSTM_WEIGHTS_F16) row_sums(LSTM_WEIGHTS_F16, K, ar, b, s, 1, bias ? bias + s * LSTM_TILE : NULL, tmp);
        else row_sums(LSTM_WEIGHTS_F32, K, ar, b, s, 1, bias ? bias + s * LSTM_TILE : NULL, tmp);
        memcpy(cr + s * LSTM_TILE, tmp, (size_t)(ncols - s * LSTM_TILE) * sizeof(float));
    }
}

// ---------------------------------------------------------------- kernels

/*
 * kernels.h's gemm on float32 or half weights: strips [p0 gates, p1 gates)
 * four at a time, those wholly past ncols left out. Up to GEMM_ROW_ROWS rows
 * run the one-row sums (the same bits).
 */
#define GEMM_ROW_ROWS 1
INLINE void gemm_typed(const int type, int64_t m, int64_t K, lstm_rows a, const float *ap, const void *b,
                       int gates, const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    float tmp[MR][LSTM_PANEL];
    const int64_t s0 = p0 * gates, s_end = (ncols + LSTM_TILE - 1) / LSTM_TILE;
    const int64_t s1 = p1 * gates < s_end ? p1 * gates : s_end;
    if (s0 >= s1) return;
    if (m <= GEMM_ROW_ROWS) {
        for (int64_t r = 0; r < m; r++) gemm_row_avx512(type, K, lstm_row(a, r), b, bias, s0, s1, ncols, lstm_row(c, r));
        return;
    }
    const int64_t block = l2_rows(K);
    for (int64_t rb = 0; rb < m; rb += block) {
        const int64_t rows = m - rb < block ? m - rb : block;
        const lstm_rows ab = lstm_rows_from(a, rb);
        const float *apb = ap ? ap + rb * K : NULL; // rb is a multiple of 6
        for (int64_t s = s0; s < s1; s += MAX_NS) {
            const int ns = s1 - s < MAX_NS ? (int)(s1 - s) : MAX_NS;
            const float *bias_p = bias ? bias + s * LSTM_TILE : NULL;
            const int64_t width = ncols - s * LSTM_TILE;
            const lstm_rows cb = lstm_rows_col(lstm_rows_from(c, rb), s * LSTM_TILE);
            if (width >= ns * LSTM_TILE) {
                panel_any(type, rows, K, ab, apb, K, b, s, ns, NULL, bias_p, cb);
                continue;
            }
            // the last strip of a matrix whose width is not a multiple of 16: via a stack tile
            for (int64_t r0 = 0; r0 < rows; r0 += MR) {
                const int64_t mr = rows - r0 < MR ? rows - r0 : MR;
                panel_any(type, mr, K, lstm_rows_from(ab, r0), apb ? apb + r0 * K : NULL, K, b, s, ns, NULL,
                          bias_p, (lstm_rows){tmp[0], LSTM_PANEL, NULL});
                for (int64_t r = 0; r < mr; r++)
                    memcpy(lstm_row(cb, r0 + r), tmp[r], (size_t)width * sizeof(float));
            }
        }
    }
}

static void gemm_avx512(int64_t m, int64_t K, lstm_rows a, const float *ap, const float *b, int gates,
                        const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    gemm_typed(LSTM_WEIGHTS_F32, m, K, a, ap, b, gates, bias, p0, p1, ncols, c);
}

/* half weights here; int8 ones in the avx2 set's kernel (whose float32 sums are these to the bit) */
static void gemm_r_avx512(int64_t m, int64_t K, lstm_rows a, const float *ap, lstm_wmat b, int gates,
                          const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    if (b.type == LSTM_WEIGHTS_F16) gemm_typed(LSTM_WEIGHTS_F16, m, K, a, ap, b.w, gates, bias, p0, p1, ncols, c);
    else lstm_gemm_r_avx2(m, K, a, ap, b, gates, bias, p0, p1, ncols, c);
}

/* One row's int8 sums, compiled for VNNI: row_kind calls it for int8 weights (below, with the
   int8 step; only called where the CPU has VNNI) */
static void row_sums_i8_vnni(int64_t K, const uint8_t *qb, float sa, lstm_wmat w, int64_t s0,
                             int64_t ns, const float *init, float *out);

/*
 * One row's step over nt (compile-time, 1 or 2) tiles from t0 with float32
 * or half weights: row_kind's sums and updates, the same operations in the
 * same order (tile_step's bits), with the sums kept in registers and every
 * tile's gates activated together. A small step (hidden <= 32, its W_hh in
 * L1) is a chain of sums, gates, c and h that row_kind passed through a
 * stack tile tile by tile: this way a tiny-like LSTM step (hidden 32) ran
 * 1.12x as fast on the Xeon, a whole tiny-like call 1.06-1.08x.
 */
INLINE void row_small(const int kind, const int half, const int nt, int64_t K, const float *ar,
                      const void *w, const float *b_hh, const float *gr, float *c, int64_t t0,
                      int64_t H, float *hr) {
    static const int lstm8[8] = {0, 0, 1, 0, 0, 0, 1, 0}, sig4[4] = {0, 0, 0, 0}, tanh2[2] = {1, 1};
    const int gates = lstm_gates(kind), W = gates * LSTM_TILE;
    const int64_t sstride = K * LSTM_TILE, unit0 = t0 * LSTM_TILE;
    const void *ws = half ? (const void *)((const uint16_t *)w + t0 * gates * sstride)
                          : (const void *)((const float *)w + t0 * gates * sstride);
    const float *init = kind != LSTM_CELL_GRU ? gr + t0 * W : b_hh ? b_hh + t0 * W : NULL;
    __m512 s[8], v[2];
    row_strips_acc(nt * gates, half, K, ar, ws, sstride, init, s);
    if (kind == LSTM_CELL_LSTM) {
        act_n(4 * nt, s, lstm8);
        EACH(t, nt) {
            v[t] = _mm512_fmadd_ps(s[4 * t + 1], _mm512_loadu_ps(c + unit0 + 16 * t), _mm512_mul_ps(s[4 * t], s[4 * t + 2]));
            _mm512_storeu_ps(c + unit0 + 16 * t, v[t]);
        }
        act_n(nt, v, tanh2);
        EACH(t, nt) v[t] = _mm512_mul_ps(s[4 * t + 3], v[t]);
    } else if (kind == LSTM_CELL_GRU) {
        __m512 rz[4];
        const float *gi = gr + t0 * W;
        EACH(t, nt) EACH(j, 2) rz[2 * t + j] = _mm512_add_ps(_mm512_loadu_ps(gi + W * t + 16 * j), s[3 * t + j]);
        act_n(2 * nt, rz, sig4);
        EACH(t, nt) v[t] = _mm512_fmadd_ps(rz[2 * t], s[3 * t + 2], _mm512_loadu_ps(gi + W * t + 32));
        act_n(nt, v, tanh2);
        EACH(t, nt) {
            const __m512 h_prev = _mm512_maskz_loadu_ps(tile_mask(H - unit0 - 16 * t), ar + unit0 + 16 * t);
            v[t] = _mm512_fmadd_ps(rz[2 * t + 1], _mm512_sub_ps(h_prev, v[t]), v[t]);
        }
    } else if (kind == LSTM_CELL_RNN_RELU) {
        EACH(t, nt) v[t] = _mm512_max_ps(_mm512_setzero_ps(), s[t]); // NaN (second operand) survives
    } else {
        act_n(nt, s, tanh2);
        EACH(t, nt) v[t] = s[t];
    }
    EACH(t, nt) _mm512_mask_storeu_ps(hr + unit0 + 16 * t, tile_mask(H - unit0 - 16 * t), v[t]);
}

/*
 * One row's step of kind `kind`, as kernels_avx2.c's row_kind: the sums of
 * up to 32 strips, then their updates (row_small's way for float32 and half
 * weights where the step has at most two tiles). The sums start from g
 * (LSTM, RNN) or b_hh (GRU); for int8 weights, qb and sa are the row ar
 * quantized (quantize_row_bytes).
 */
INLINE void row_kind(const int kind, const int type, int64_t K, const float *ar, lstm_wmat w,
                     const uint8_t *qb, float sa, const float *b_hh, const float *gr, float *c,
                     int64_t t0, int64_t t1, int64_t H, float *hr) {
    const int gates = lstm_gates(kind), W = gates * LSTM_TILE;
    const int64_t chunk = ROW_STRIPS / gates;
    _Alignas(64) float sums[ROW_STRIPS * LSTM_TILE];
    if (type != LSTM_WEIGHTS_I8) lstm_prefetch_row(ar, K); // (int8: quantizing read it already)
    if (type != LSTM_WEIGHTS_I8 && t1 - t0 <= 2) {
        const int half = type == LSTM_WEIGHTS_F16;
        if (t1 - t0 == 2) row_small(kind, half, 2, K, ar, w.w, b_hh, gr, c, t0, H, hr);
        else if (t1 > t0) row_small(kind, half, 1, K, ar, w.w, b_hh, gr, c, t0, H, hr);
        return;
    }
    for (int64_t c0 = t0; c0 < t1; c0 += chunk) {
        const int64_t n = t1 - c0 < chunk ? t1 - c0 : chunk;
        const float *init = kind != LSTM_CELL_GRU ? gr + c0 * W : b_hh ? b_hh + c0 * W : NULL;
        if (type == LSTM_WEIGHTS_I8) row_sums_i8_vnni(K, qb, sa, w, c0 * gates, n * gates, init, sums);
        else row_sums(type, K, ar, w.w, c0 * gates, n * gates, init, sums);
        for (int64_t j = 0; j < n; j++) tile_step(kind, 0, sums + j * W, gr, ar, c, c0 + j, H, hr);
    }
}

/*
 * The updates of tiles [t, t + nt) for a chunk's rows [r0, r0 + rows) from
 * their sums in tmp: the LSTM's and GRU's in two passes (every row's gates
 * by tile_gates, then every row's update; one tile, nt = 1), the RNN's in
 * one.
 */
INLINE void chunk_updates(const int kind, int64_t rows, int64_t r0, float (*tmp)[LSTM_PANEL], lstm_rows a,
                          lstm_rows g, float *c, int64_t ldc, int64_t t, int64_t nt, int64_t H,
                          lstm_rows h) {
    const int W = lstm_gates(kind) * LSTM_TILE, gru = kind == LSTM_CELL_GRU;
    const int pre = kind == LSTM_CELL_LSTM || gru;
    if (pre)
        for (int64_t r = 0; r < rows; r++) tile_gates(kind, tmp[r], gru ? lstm_row(g, r0 + r) + t * W : NULL);
    for (int64_t r = 0; r < rows; r++) {
        const float *ar = gru ? lstm_row(a, r0 + r) : NULL;
        const float *gr = gru ? lstm_row(g, r0 + r) : NULL;
        float *cr = kind == LSTM_CELL_LSTM ? c + (r0 + r) * ldc : NULL;
        float *hr = lstm_row(h, r0 + r);
        for (int64_t j = 0; j < nt; j++) tile_step(kind, pre, tmp[r] + j * W, gr, ar, cr, t + j, H, hr);
    }
}

/*
 * The step of more than one row, as kernels_avx2.c's rows_kind: a group of
 * tiles of at most four strips is one panel_rows call over a chunk of rows,
 * then (LSTM, GRU) every row's gates, then every row's update.
 */
INLINE void rows_kind(const int kind, const int type, int64_t m, int64_t K, lstm_rows a, const void *w_hh,
                      const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0, int64_t t1,
                      int64_t H, lstm_rows h) {
    const int gates = lstm_gates(kind), W = gates * LSTM_TILE, group = MAX_NS / gates;
    const int gru = kind == LSTM_CELL_GRU;
    _Alignas(64) float tmp[CELL_ROWS][LSTM_PANEL];
    for (int64_t t = t0; t < t1; t += group) {
        const int64_t nt = t1 - t < group ? t1 - t : group;
        for (int64_t r0 = 0; r0 < m; r0 += CELL_ROWS) {
            const int64_t rows = m - r0 < CELL_ROWS ? m - r0 : CELL_ROWS;
            const lstm_rows out = {tmp[0], LSTM_PANEL, NULL};
            const lstm_rows gt = lstm_rows_col(lstm_rows_from(g, r0), t * W);
            panel_any(type, rows, K, lstm_rows_from(a, r0), NULL, 0, w_hh, t * gates,
                      gru ? gates : (int)nt * gates, gru ? NULL : &gt, gru && b_hh ? b_hh + t * W : NULL, out);
            chunk_updates(kind, rows, r0, tmp, a, g, c, ldc, t, nt, H, h);
        }
    }
}

// ---------------------------------------------------------------- int8 (AVX512-VNNI)

#define VNNI __attribute__((target("avx512vnni")))

/* vpdpbusd and vpdpwssd are there: the int8 step below, else the avx2 set's (libgcc's check
   includes the OS's) */
static int cpu_has_vnni(void) { return __builtin_cpu_supports("avx512vnni"); }

/* The scale of a (K) as lstm_i8_row_scale says, for int16 in [-lstm_i8_state_max(Kq), ..],
 * and in *inv the factor that quantizes (kernels_avx2.c's quantize_row, 16 lanes). */
static float row_scale(const float *a, int64_t K, float *inv) {
    __m512 mx = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t k = 0; k < K; k += LSTM_TILE) {
        const __mmask16 m = tile_mask(K - k);
        const __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, a + k));
        bad |= _mm512_cmp_ps_mask(v, _mm512_set1_ps(FLT_MAX), _CMP_NLE_UQ); // NaN, Inf
        mx = _mm512_max_ps(mx, v);
    }
    return lstm_i8_row_scale(_mm512_reduce_max_ps(mx), !bad, lstm_i8_state_max(lstm_i8_k(K)), inv);
}

/* The int32 q of a[k, k + 16) (zeros past K): |a * inv| <= qmax rounds (to nearest, ties to
 * even) to at most qmax, so no clamping is needed. */
INLINE __m512i quantize_16(const float *a, int64_t K, int64_t k, __m512 inv) {
    return _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(tile_mask(K - k), a + k), inv));
}

/* a (K) quantized to int16 qa (Kq, zeros past K); returns the scale */
static float quantize_row(const float *a, int64_t K, int16_t *qa) {
    const int64_t Kq = lstm_i8_k(K);
    float inv;
    const float sa = row_scale(a, K, &inv);
    if (inv == 0.0f) { // a scale of 0 or NaN: all zeros (a * 0 would keep a NaN or Inf)
        memset(qa, 0, (size_t)Kq * sizeof *qa);
        return sa;
    }
    for (int64_t k = 0; k < Kq; k += LSTM_TILE) // k < K here (Kq < K + 4, k a multiple of 16)
        _mm256_mask_storeu_epi16(qa + k, tile_mask(Kq - k),
                                 _mm512_cvtsepi32_epi16(quantize_16(a, K, k, _mm512_set1_ps(inv))));
    return sa;
}

/* a (K) quantized as quantize_row does, each q kept as the two bytes of q + 32768, the low
 * ones in qb[0, Kq) and the high ones in qb[Kq, 2 Kq): q = 256 (high - 128) + low, two
 * unsigned bytes for vpdpbusd; returns the scale */
static float quantize_row_bytes(const float *a, int64_t K, uint8_t *qb) {
    const int64_t Kq = lstm_i8_k(K);
    float inv;
    const float sa = row_scale(a, K, &inv);
    const __m512 iv = _mm512_set1_ps(inv); // 0: every q is 0 (a * 0 would keep a NaN or Inf)
    for (int64_t k = 0; k < Kq; k += LSTM_TILE) {
        const __m512i q = inv != 0.0f ? quantize_16(a, K, k, iv) : _mm512_setzero_si512();
        const __m512i u = _mm512_add_epi32(q, _mm512_set1_epi32(32768));
        const __mmask16 m = tile_mask(Kq - k);
        _mm_mask_storeu_epi8(qb + k, m, _mm512_cvtepi32_epi8(u));
        _mm_mask_storeu_epi8(qb + Kq + k, m, _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 8)));
    }
    return sa;
}

/* acc + the products of u8's unsigned bytes and s8's signed ones, 4 to an int32 lane
   (vpdpbusd; written out because GCC 12 copies every accumulator of a loop of the intrinsic
   through another register on each use, and spills some) */
VNNI INLINE __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
    return acc;
}

/*
 * A row's int8 sums over ns (compile-time, 1 to 8) int8 strips at w,
 * sstride bytes apart, from the row quantized to bytes qb (quantize_row_bytes):
 * out[16s + j] = fmaf(q . column j, sa * scale[16s + j], init ? init[16s + j] : 0).
 * A strip row holds 4 k of each of 16 columns (kernels.h), one int32 lane a
 * column, as vpdpbusd takes them: it multiplies them, unwidened, with 4
 * unsigned bytes of q. So q . column = 256 (high . column - 128 colsum) + low
 * . column, in int32 arithmetic that wraps but ends exact (lstm_i8_state_max
 * bounds the true sum): the int16 pair sums' result (the batched step's), two
 * vpdpbusd a 4 k instead of two widenings and two vpdpwssd.
 */
VNNI INLINE void row_strips_i8(const int ns, int64_t Kq, const uint8_t *qb, const int8_t *w,
                               int64_t sstride, const float *scale, const int32_t *colsum, float sa,
                               const float *init, float *out) {
    __m512i high[8], low[8];
    EACH(s, ns) {
        const __m512i sum = _mm512_loadu_si512(colsum + 16 * s);
        high[s] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7)); // -128 colsum
        low[s] = _mm512_setzero_si512();
    }
    for (int64_t k = 0; k < Kq; k += 4, w += 4 * LSTM_TILE) {
        int32_t l4, h4;
        memcpy(&l4, qb + k, sizeof l4);
        memcpy(&h4, qb + Kq + k, sizeof h4);
        const __m512i xl = _mm512_set1_epi32(l4), xh = _mm512_set1_epi32(h4);
        EACH(s, ns) {
            const __m512i wv = _mm512_loadu_si512(w + s * sstride); // loaded once for both
            high[s] = dpbusd(high[s], xh, wv);
            low[s] = dpbusd(low[s], xl, wv);
        }
    }
    const __m512 sav = _mm512_set1_ps(sa);
    EACH(s, ns) {
        const __m512i isum = _mm512_add_epi32(_mm512_slli_epi32(high[s], 8), low[s]);
        const __m512 start = init ? _mm512_loadu_ps(init + 16 * s) : _mm512_setzero_ps();
        _mm512_storeu_ps(out + 16 * s, _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum),
                                                       _mm512_mul_ps(sav, _mm512_loadu_ps(scale + 16 * s)), start));
    }
}

/* row_strips_i8 for each ns, a function apart (named for test_kernel_code, which checks its loop) */
#define DEFINE_ROW_STRIPS_I8(N)                                                                    \
    static VNNI NOIPA void row_strips_i8_##N(int64_t Kq, const uint8_t *qb, const int8_t *w,       \
                                             int64_t sstride, const float *scale,                  \
                                             const int32_t *colsum, float sa, const float *init,   \
                                             float *out) {                                         \
        row_strips_i8(N, Kq, qb, w, sstride, scale, colsum, sa, init, out);                        \
    }
DEFINE_ROW_STRIPS_I8(1)
DEFINE_ROW_STRIPS_I8(2)
DEFINE_ROW_STRIPS_I8(3)
DEFINE_ROW_STRIPS_I8(4)
DEFINE_ROW_STRIPS_I8(5)
DEFINE_ROW_STRIPS_I8(6)
DEFINE_ROW_STRIPS_I8(7)
DEFINE_ROW_STRIPS_I8(8)

/* The int8 sums of one row for the ns strips of w from strip s0 (row_strips_i8's), eight at a
   time (sixteen sums in flight cover vpdpbusd's latency on two ports) */
static VNNI __attribute__((noinline)) void row_sums_i8_vnni(int64_t K, const uint8_t *qb, float sa,
                                                            lstm_wmat w, int64_t s0, int64_t ns,
                                                            const float *init, float *out) {
    const int64_t Kq = lstm_i8_k(K), sstride = Kq * LSTM_TILE;
    for (int64_t s = 0; s < ns;) {
        const int64_t n = ns - s < 8 ? ns - s : 8;
        const int8_t *ws = (const int8_t *)w.w + (s0 + s) * sstride;
        const float *sc = w.scale + (s0 + s) * LSTM_TILE, *init_s = init ? init + s * LSTM_TILE : NULL;
        const int32_t *cs = w.colsum + (s0 + s) * LSTM_TILE;
        float *out_s = out + s * LSTM_TILE;
#define STRIPS(N) row_strips_i8_##N(Kq, qb, ws, sstride, sc, cs, sa, init_s, out_s)
        switch (n) {
        case 8: STRIPS(8); break;
        case 7: STRIPS(7); break;
        case 6: STRIPS(6); break;
        case 5: STRIPS(5); break;
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
 * A batch's int8 sums: a chunk of rows is quantized first (quantize_row),
 * then each K-block of a pair of int8 strips is widened once to int16 in a
 * stack tile, which every row group multiplies with vpdpwssd straight from
 * memory: 75.7 multiply-adds a TSC cycle here, against 35 for widening at
 * every use (tools/ceilings.c). The int32 sums are exact, so each row gets
 * the bits its one-row step gives.
 */
#define I8_KC 128           /* k of a widened tile: 2 strips x 128 x 16 int16 = 8 KB */
#define I8_QA (8 * 1024)    /* int16 of a chunk's quantized rows (16 KB of stack) */

/* iacc[r] (2 strips x 2 halves x 16 int32) = (first ? 0 : iacc[r]) + the pair sums of rows
   r < MR_ over kq k (a multiple of 4) of NS widened strips at wt (strip s at wt + s * sstride,
   k at + 16 k) */
#define DEFINE_BLOCK_I8(MR_, NS)                                                                   \
    static VNNI NOIPA void block_i8_##MR_##x##NS(int64_t kq, const int16_t *const *qa,            \
                                                 const int16_t *wt, int64_t sstride, int first,    \
                                                 int32_t *const *iacc) {                           \
        __m512i acc[MR_][NS][2];                                                                   \
        EACH(r, MR_) EACH(s, NS) EACH(hf, 2)                                                       \
            acc[r][s][hf] = first ? _mm512_setzero_si512()                                         \
                                  : _mm512_loadu_si512(iacc[r] + (2 * s + hf) * LSTM_TILE);        \
        for (int64_t k = 0; k < kq; k += 4) {                                                      \
            __m512i wv[NS][2];                                                                     \
            EACH(s, NS) EACH(hf, 2)                                                                \
                wv[s][hf] = _mm512_load_si512(wt + s * sstride + k * LSTM_TILE + 32 * hf);         \
            EACH(r, MR_) {                                                                         \
                int64_t x4;                                                                        \
                memcpy(&x4, qa[r] + k, sizeof x4);                                                 \
                const __m512i x = _mm512_set1_epi64(x4);                                           \
                EACH(s, NS) EACH(hf, 2) acc[r][s][hf] = _mm512_dpwssd_epi32(acc[r][s][hf], wv[s][hf], x); \
            }                                                                                      \
        }                                                                                          \
        EACH(r, MR_) EACH(s, NS) EACH(hf, 2)                                                       \
            _mm512_storeu_si512(iacc[r] + (2 * s + hf) * LSTM_TILE, acc[r][s][hf]);                \
    }
#define DEFINE_ROWS_I8(MR_) DEFINE_BLOCK_I8(MR_, 1) DEFINE_BLOCK_I8(MR_, 2)
DEFINE_ROWS_I8(1)
DEFINE_ROWS_I8(2)
DEFINE_ROWS_I8(3)
DEFINE_ROWS_I8(4)
DEFINE_ROWS_I8(5)
DEFINE_ROWS_I8(6)
typedef void (*block_i8_fn)(int64_t kq, const int16_t *const *qa, const int16_t *wt, int64_t sstride, int first,
                            int32_t *const *iacc);
#define ROW_BLOCKS_I8(MR_) {block_i8_##MR_##x1, block_i8_##MR_##x2}
static const block_i8_fn blocks_i8[MR][2] = {ROW_BLOCKS_I8(1), ROW_BLOCKS_I8(2), ROW_BLOCKS_I8(3),
                                             ROW_BLOCKS_I8(4), ROW_BLOCKS_I8(5), ROW_BLOCKS_I8(6)};

/*
 * out[r][0 .. 16 ns] = fmaf(qa_r . column, sa[r] * scale[column], start) for
 * rows r < m (m <= CELL_ROWS) and the ns int8 strips of w from strip s0
 * (row_strips_i8's sums), start the init rows, or bias, or 0; qa holds the
 * rows quantized, Kq int16 apart.
 */
static VNNI NOIPA void panel_i8(int64_t m, int64_t K, const int16_t *qa, const float *sa, lstm_wmat w,
                                int64_t s0, int ns, const lstm_rows *init, const float *bias,
                                lstm_rows out) {
    _Alignas(64) int16_t tile[2 * I8_KC * LSTM_TILE];
    _Alignas(64) int32_t iacc[CELL_ROWS][4 * LSTM_TILE];
    const int16_t *qr[MR];
    int32_t *ir[MR];
    const int64_t Kq = lstm_i8_k(K);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int s = 0; s < ns; s += 2) {
        const int np = ns - s < 2 ? ns - s : 2;
        for (int64_t k0 = 0; k0 < Kq; k0 += I8_KC) {
            const int64_t kq = Kq - k0 < I8_KC ? Kq - k0 : I8_KC;
            const int16_t *wt = tile;
            int64_t sstride = I8_KC * LSTM_TILE;
            if (w.wide) { // widened once for the call (forward.c)
                wt = w.wide + ((s0 + s) * Kq + k0) * LSTM_TILE;
                sstride = Kq * LSTM_TILE;
            } else {
                for (int p = 0; p < np; p++) // int8 byte i of the block becomes int16 i of the tile
                    widen_avx512(LSTM_WEIGHTS_I8, (const int8_t *)w.w + ((s0 + s + p) * Kq + k0) * LSTM_TILE,
                                 tile + p * I8_KC * LSTM_TILE, kq * LSTM_TILE);
            }
            for (int64_t r0 = 0; r0 < m; r0 += MR) {
                const int mr = m - r0 < MR ? (int)(m - r0) : MR;
                for (int r = 0; r < mr; r++) qr[r] = qa + (r0 + r) * Kq + k0, ir[r] = iacc[r0 + r];
                blocks_i8[mr - 1][np - 1](kq, qr, wt, sstride, k0 == 0, ir);
            }
        }
        for (int64_t r = 0; r < m; r++) {
            const __m512 sav = _mm512_set1_ps(sa[r]);
            for (int p = 0; p < np; p++) {
                const int64_t col = (s + p) * LSTM_TILE;
                const __m512i lo = _mm512_loadu_si512(iacc[r] + 2 * p * LSTM_TILE);
                const __m512i hi = _mm512_loadu_si512(iacc[r] + (2 * p + 1) * LSTM_TILE);
                const __m512i isum = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, even, hi),
                                                      _mm512_permutex2var_epi32(lo, odd, hi));
                const __m512 start = init ? _mm512_loadu_ps(lstm_row(*init, r) + col)
                                   : bias ? _mm512_loadu_ps(bias + col) : _mm512_setzero_ps();
                const __m512 sc = _mm512_mul_ps(sav, _mm512_loadu_ps(w.scale + s0 * LSTM_TILE + col));
                _mm512_storeu_ps(lstm_row(out, r) + col, _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, start));
            }
        }
    }
}

/*
 * The int8 step of more than one row (AVX512-VNNI): a chunk of rows is
 * quantized, then each group of tiles (as rows_kind) takes panel_i8's sums
 * and the same two passes of updates.
 */
INLINE void rows_kind_i8(const int kind, int64_t m, int64_t K, lstm_rows a, lstm_wmat w,
                         const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                         int64_t t1, int64_t H, lstm_rows h) {
    const int gates = lstm_gates(kind), W = gates * LSTM_TILE, group = MAX_NS / gates;
    const int gru = kind == LSTM_CELL_GRU;
    const int64_t Kq = lstm_i8_k(K), fit = I8_QA / (Kq > 0 ? Kq : 1);
    const int64_t chunk = fit < 1 ? 1 : fit > CELL_ROWS ? CELL_ROWS : fit;
    _Alignas(64) int16_t qa[I8_QA > LSTM_MAX_I8_STATE ? I8_QA : LSTM_MAX_I8_STATE];
    _Alignas(64) float tmp[CELL_ROWS][LSTM_PANEL];
    float sa[CELL_ROWS];
    for (int64_t r0 = 0; r0 < m; r0 += chunk) {
        const int64_t rows = m - r0 < chunk ? m - r0 : chunk;
        for (int64_t r = 0; r < rows; r++) sa[r] = quantize_row(lstm_row(a, r0 + r), K, qa + r * Kq);
        for (int64_t t = t0; t < t1; t += group) {
            const int64_t nt = t1 - t < group ? t1 - t : group;
            const lstm_rows out = {tmp[0], LSTM_PANEL, NULL};
            const lstm_rows gt = lstm_rows_col(lstm_rows_from(g, r0), t * W);
            panel_i8(rows, K, qa, sa, w, t * gates, gru ? gates : (int)nt * gates, gru ? NULL : &gt,
                     gru && b_hh ? b_hh + t * W : NULL, out);
            chunk_updates(kind, rows, r0, tmp, a, g, c, ldc, t, nt, H, h);
        }
    }
}

/*
 * The int8 step of kind `kind`: one row through row_kind, more through
 * rows_kind_i8 (the same bits for each row).
 */
#define CELL_KIND_I8(name, kind)                                                                   \
    static VNNI __attribute__((noinline)) void cell_i8_##name(                                     \
        int64_t m, int64_t K, lstm_rows a, lstm_wmat w, const float *b_hh, lstm_rows g, float *c,  \
        int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {                             \
        if (m > 1) {                                                                               \
            rows_kind_i8(kind, m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h);                         \
        } else if (m == 1) {                                                                       \
            _Alignas(64) uint8_t qb[2 * LSTM_MAX_I8_STATE];                                        \
            const float *ar = lstm_row(a, 0);                                                      \
            const float sa = quantize_row_bytes(ar, K, qb);                                        \
            row_kind(kind, LSTM_WEIGHTS_I8, K, ar, w, qb, sa, b_hh, lstm_row(g, 0),                \
                     kind == LSTM_CELL_LSTM ? c : NULL, t0, t1, H, lstm_row(h, 0));                \
        }                                                                                          \
    }
CELL_KIND_I8(lstm, LSTM_CELL_LSTM)
CELL_KIND_I8(gru, LSTM_CELL_GRU)
CELL_KIND_I8(rnn_tanh, LSTM_CELL_RNN_TANH)
CELL_KIND_I8(rnn_relu, LSTM_CELL_RNN_RELU)

// ---------------------------------------------------------------- the cell

/*
 * The two bodies compiled for each kind and weight type (float32, half) as
 * functions of their own (see kernels_avx2.c), one row or many.
 */
#define CELL_KIND(name, kind, wtype)                                                               \
    static __attribute__((noinline)) void cell_row_##name(int64_t K, const float *ar,              \
                                                          const void *w_hh, const float *b_hh,     \
                                                          const float *gr, float *c, int64_t t0,   \
                                                          int64_t t1, int64_t H, float *hr) {      \
        row_kind(kind, wtype, K, ar, (lstm_wmat){.w = w_hh, .type = wtype}, NULL, 0.0f, b_hh, gr, \
                 c, t0, t1, H, hr);                                                                \
    }                                                                                              \
    static __attribute__((noinline)) void cell_rows_##name(                                        \
        int64_t m, int64_t K, lstm_rows a, const void *w_hh, const float *b_hh, lstm_rows g,       \
        float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {                   \
        const int64_t block = l2_rows(K);                                                          \
        for (int64_t rb = 0; rb < m; rb += block)                                                  \
            rows_kind(kind, wtype, m - rb < block ? m - rb : block, K, lstm_rows_from(a, rb), w_hh, \
                      b_hh, lstm_rows_from(g, rb), c + rb * ldc, ldc, t0, t1, H,                   \
                      lstm_rows_from(h, rb));                                                      \
    }
CELL_KIND(lstm, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32)
CELL_KIND(gru, LSTM_CELL_GRU, LSTM_WEIGHTS_F32)
CELL_KIND(rnn_tanh, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32)
CELL_KIND(rnn_relu, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F32)
CELL_KIND(lstm_f16, LSTM_CELL_LSTM, LSTM_WEIGHTS_F16)
CELL_KIND(gru_f16, LSTM_CELL_GRU, LSTM_WEIGHTS_F16)
CELL_KIND(rnn_tanh_f16, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F16)
CELL_KIND(rnn_relu_f16, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F16)

#define STEP(name)                                                                                 \
    (m == 1 ? cell_row_##name(K, lstm_row(a, 0), w_hh, b_hh, lstm_row(g, 0), c, t0, t1, H,      \
                              lstm_row(h, 0))                                                      \
            : cell_rows_##name(m, K, a, w_hh, b_hh, g, c, ldc, t0, t1, H, h))

static void cell_avx512(int cell, int64_t m, int64_t K, lstm_rows a, const float *w_hh,
                        const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                        int64_t t1, int64_t H, lstm_rows h) {
    switch (cell) {
    case LSTM_CELL_GRU: STEP(gru); break;
    case LSTM_CELL_RNN_TANH: STEP(rnn_tanh); break;
    case LSTM_CELL_RNN_RELU: STEP(rnn_relu); break;
    default: STEP(lstm); break;
    }
}

/* half weights here (the float32 step on the converted weights, to the bit); int8 here with
 * AVX512-VNNI, else in the avx2 set */
static void cell_r_avx512(int cell, int64_t m, int64_t K, lstm_rows a, lstm_wmat w,
                          const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                          int64_t t1, int64_t H, lstm_rows h) {
    if (w.type == LSTM_WEIGHTS_I8 && cpu_has_vnni()) {
        switch (cell) {
        case LSTM_CELL_GRU: cell_i8_gru(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
        case LSTM_CELL_RNN_TANH: cell_i8_rnn_tanh(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
        case LSTM_CELL_RNN_RELU: cell_i8_rnn_relu(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
        default: cell_i8_lstm(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
        }
        return;
    }
    if (w.type != LSTM_WEIGHTS_F16) {
        lstm_cell_r_avx2(cell, m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h);
        return;
    }
    const void *w_hh = w.w;
    switch (cell) {
    case LSTM_CELL_GRU: STEP(gru_f16); break;
    case LSTM_CELL_RNN_TANH: STEP(rnn_tanh_f16); break;
    case LSTM_CELL_RNN_RELU: STEP(rnn_relu_f16); break;
    default: STEP(lstm_f16); break;
    }
}
#undef STEP

/* int8 steps sum with VNNI at 2.3x the float32 FMA's multiply-adds a cycle (77.8 and 75.7 against
   33.5 in tools/ceilings.c), and a step split over two threads pays a hand-off of h (~600 TSC
   cycles at hidden 128) that a step this cheap does not earn back: measured on the Xeon (T 200,
   input 64, split against forward.c's pipe, alternated), int8 LSTM steps at hidden 128 ran 0.81x
   split, 192 0.95x, 256 1.06x, GRU 256 1.05x, where float32 LSTM ones run 1.14x split from
   hidden 96. Counted at 0.12 of their flops, split int8 steps start at ~330 K flops (LSTM ~204). */
static double step_cost_avx512(int type) { return type == LSTM_WEIGHTS_I8 && cpu_has_vnni() ? 0.12 : 1.0; }

const lstm_kernels lstm_kernels_avx512 = {"avx512", gemm_avx512, cell_avx512, gemm_r_avx512, cell_r_avx512, 1,
                                          step_cost_avx512, widen_avx512, cpu_has_vnni};
