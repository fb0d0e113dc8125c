/*
 * kernels_neon.c - NEON kernels for aarch64 (4 floats a vector, 32 registers).
 * aarch64 always has NEON (Advanced SIMD), so this set needs no flags and no
 * run-time check: dispatch.c picks it at build time there.
 *
 * One register-blocked microkernel serves both kernels: R rows x S strips
 * (16 columns, four vectors each) over a K-block, with a row's a[k .. k+4]
 * in one register and each multiply-add taking its lane (fmla by element),
 * so a strip row (one 64-byte ld1) feeds 4 R multiply-adds. Full groups of
 * 4 rows run 4x1 (16 accumulators, 24 registers with the strip row and the
 * four a vectors); the 1 to 3 rows left run 3x1 / 2x2 / 1x4 (2x1 / 1x3 /
 * 1x2 / 1x1 where fewer strips are left). A step of one row is the 1x4
 * shape over all of its strips.
 *
 * Every sum is one chain of fused multiply-adds in k order from its start
 * (g, a bias or 0) whatever the shape and K-block, so a sequence alone
 * (one row) gets the same bits as in a batch.
 *
 * The cell computes the sums of a chunk of tiles for a chunk of rows into a
 * stack tile, then the pointwise updates of those tiles; only the update
 * differs between kinds (tile_lstm, tile_gru, tile_rnn).
 *
 * Reduced weights (kernels.h): halves convert exactly (FCVTL), in the
 * microkernels as a strip row loads (the _h shapes, for fewer rows than a
 * group: a stream's step) or a K-block at a time into a stack tile that the
 * float32 shapes run over (panel_rows_h), so F16 sums are bit for bit the
 * float32 kernels' on the dequantized weights. The int8 step quantizes a
 * row of h to int16 (quantize_row) and sums exactly with widening
 * multiply-adds by lane (strips_i8); an int8 gemm (no model has one: int8
 * models keep weight_ih in float16) is the scalar reference's.
 */
#if !defined(__aarch64__) || !defined(__ARM_NEON)
#error "kernels_neon.c is for aarch64 (which always has NEON)"
#endif

#include <arm_neon.h>
#include <float.h>
#include <string.h>

#include "kernels.h"

#define INLINE static inline __attribute__((always_inline))
#if defined(__clang__)
#define NOIPA __attribute__((noinline))
#else
#define NOIPA __attribute__((noipa)) /* no inlining, cloning or specialising on the callers */
#endif
#define MR 4              /* rows of a full row group */
#define KC 256            /* K-block: a strip's block (16 KB) stays in L1 while the row groups pass */
#define GEMM_ROWS 96      /* gemm rows of A kept hot in L2 while strips stream past */
#define CELL_ROWS 48      /* cell rows whose sums wait in the stack tile */
#define CELL_FLOATS (CELL_ROWS * LSTM_PANEL) /* the cell's stack tile of sums (12 KB) */

/* n independent chains side by side: each step of a formula on all n before the next */
#define EACH(v, n) _Pragma("GCC unroll 16") for (int v = 0; v < (n); v++)

// ---------------------------------------------------------------- activations

/*
 * x[v] <- e^x[v], or e^x[v] - 1 where m1[v] (asked only for x in [0, 18]).
 * x is clamped to [-87.3, 88.3] (fmin/fmax return NaN for NaN, so NaN stays);
 * x = k ln2 + r (Cody-Waite, two parts), e^r - 1 = r + r^2 P(r) with cephes'
 * degree-5 P (as in kernels_avx2.c), then 2^k + 2^k (e^r - 1), or
 * 2^k (e^r - 1) + (2^k - 1), which keeps e^x - 1 accurate relative to itself
 * near 0 (tanh below needs no small-x branch).
 */
INLINE void exp_n(const int n, float32x4_t *x, const int *m1) {
    float32x4_t kf[8], p[8];
    int32x4_t ki[8];
    EACH(v, n) if (!m1[v]) x[v] = vminq_f32(vmaxq_f32(x[v], vdupq_n_f32(-87.3f)), vdupq_n_f32(88.3f));
    // log2(e) and ln(2) in two parts, in one register (multiplied by lane)
    const float32x4_t c = {1.44269504088896341f, 0.693359375f, -2.12194440e-4f, 0.0f};
    EACH(v, n) kf[v] = vrndnq_f32(vmulq_laneq_f32(x[v], c, 0));
    EACH(v, n) ki[v] = vcvtq_s32_f32(kf[v]); // NaN gives 0: the NaN travels in r
    EACH(v, n) x[v] = vfmsq_laneq_f32(x[v], kf[v], c, 1);
    EACH(v, n) x[v] = vfmsq_laneq_f32(x[v], kf[v], c, 2);
    EACH(v, n) p[v] = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), x[v], vdupq_n_f32(1.9875691500e-4f));
    EACH(v, n) p[v] = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p[v], x[v]);
    EACH(v, n) p[v] = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p[v], x[v]);
    EACH(v, n) p[v] = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p[v], x[v]);
    EACH(v, n) p[v] = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p[v], x[v]);
    EACH(v, n) p[v] = vfmaq_f32(x[v], p[v], vmulq_f32(x[v], x[v]));
    // 2^k: k + 127 in the exponent field (k in [-126, 127] after the clamp)
    EACH(v, n) kf[v] = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(ki[v], vdupq_n_s32(127)), 23));
    EACH(v, n) x[v] = vfmaq_f32(m1[v] ? vsubq_f32(kf[v], vdupq_n_f32(1.0f)) : kf[v], kf[v], p[v]);
}

/*
 * x[v] <- sigmoid(x[v]), or tanh(x[v]) where is_tanh[v]. sigmoid is
 * 1 / (1 + e^-x), exactly 0 below -88.3 (a denormal in torch, then 0);
 * tanh(|x|) is m / (m + 2) with m = e^(2|x|) - 1 and |x| capped at 9
 * (tanh(9) rounds to 1), then x's sign. Both divide: one
 * instruction, correctly rounded, ~1e-7 relative everywhere (tests/c
 * measures them on dense grids).
 */
INLINE void act_n(const int n, float32x4_t *x, const int *is_tanh) {
    __asm__ volatile(""); // GCC's scheduler would interleave the groups: constants spilled
    float32x4_t e[8];
    uint32x4_t under[8];
    EACH(v, n) {
        if (is_tanh[v]) {
            const float32x4_t ax = vminq_f32(vabsq_f32(x[v]), vdupq_n_f32(9.0f)); // NaN kept
            e[v] = vaddq_f32(ax, ax);
        } else {
            e[v] = vnegq_f32(x[v]);
            under[v] = vcgtq_f32(e[v], vdupq_n_f32(88.3f));
        }
    }
    exp_n(n, e, is_tanh);
    EACH(v, n) {
        const float32x4_t d = vaddq_f32(e[v], vdupq_n_f32(is_tanh[v] ? 2.0f : 1.0f));
        if (is_tanh[v]) {
            const uint32x4_t sign = vandq_u32(vreinterpretq_u32_f32(x[v]), vdupq_n_u32(0x80000000u));
            x[v] = vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(vdivq_f32(e[v], d)), sign));
        } else {
            // 0 where e^-x was clamped, as where it overflows in torch: sigmoid(-inf) * inf is NaN
            x[v] = vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(vdivq_f32(vdupq_n_f32(1.0f), d)), under[v]));
        }
    }
}

/*
 * The updates below read a tile's sums q (gate j's 16 at q + 16j) a gate at a
 * time, as each is needed: 16 sums held in registers through the update left
 * the activations too few, and GCC spilled and reloaded their constants.
 */
INLINE void load4(const float *p, float32x4_t *v) { EACH(i, 4) v[i] = vld1q_f32(p + 4 * i); }

/*
 * The LSTM update of one tile from its sums q (i, f, g, o): c (16 floats)
 * updated in place, h[4] the new hidden state.
 */
INLINE void tile_lstm(const float *q, float *c, float32x4_t *h) {
    static const int sig4[4] = {0}, tanh4[4] = {1, 1, 1, 1};
    float32x4_t g[4], i[4], f[4], cn[4];
    load4(q + 2 * LSTM_TILE, g);
    act_n(4, g, tanh4);
    load4(q, i);
    act_n(4, i, sig4);
    EACH(v, 4) cn[v] = vmulq_f32(i[v], g[v]);
    load4(q + LSTM_TILE, f);
    act_n(4, f, sig4);
    EACH(v, 4) cn[v] = vfmaq_f32(cn[v], f[v], vld1q_f32(c + 4 * v));
    EACH(v, 4) vst1q_f32(c + 4 * v, cn[v]);
    act_n(4, cn, tanh4);
    load4(q + 3 * LSTM_TILE, h);
    act_n(4, h, sig4);
    EACH(v, 4) h[v] = vmulq_f32(h[v], cn[v]);
}

/*
 * The GRU update of one tile from the sums q = b_hh + a @ W_hh (r, z, n), the
 * input part gi (48 floats, same order) and the previous h (16 floats).
 * h = n + z * (h_prev - n) is torch's (1 - z) * n + z * h_prev as torch
 * computes it.
 */
INLINE void tile_gru(const float *q, const float *gi, const float *h_prev, float32x4_t *h) {
    static const int sig4[4] = {0}, tanh4[4] = {1, 1, 1, 1};
    float32x4_t r[4], n[4];
    EACH(v, 4) r[v] = vaddq_f32(vld1q_f32(gi + 4 * v), vld1q_f32(q + 4 * v));
    act_n(4, r, sig4);
    EACH(v, 4) n[v] = vfmaq_f32(vld1q_f32(gi + 32 + 4 * v), r[v], vld1q_f32(q + 32 + 4 * v));
    act_n(4, n, tanh4);
    EACH(v, 4) h[v] = vaddq_f32(vld1q_f32(gi + 16 + 4 * v), vld1q_f32(q + 16 + 4 * v)); // z
    act_n(4, h, sig4);
    EACH(v, 4) h[v] = vfmaq_f32(n[v], h[v], vsubq_f32(vld1q_f32(h_prev + 4 * v), n[v]));
}

// The RNN update of one tile from its sums q: tanh, or relu (fmax keeps NaN, as torch)
INLINE void tile_rnn(const int relu, const float *q, float32x4_t *h) {
    static const int tanh4[4] = {1, 1, 1, 1};
    load4(q, h);
    if (relu) EACH(v, 4) h[v] = vmaxq_f32(h[v], vdupq_n_f32(0.0f));
    else act_n(4, h, tanh4);
}

// ---------------------------------------------------------------- microkernel

// acc[4s ..] += b (one strip row, 4 vectors) times x, by MUL(acc, b, x): by lane or by scalar
#define FMA_STRIP(acc, b, MUL, x)                                                                 \
    acc[0] = MUL(acc[0], b.val[0], x), acc[1] = MUL(acc[1], b.val[1], x),                         \
    acc[2] = MUL(acc[2], b.val[2], x), acc[3] = MUL(acc[3], b.val[3], x)
#define LANE0(acc, b, x) vfmaq_laneq_f32(acc, b, x, 0)
#define LANE1(acc, b, x) vfmaq_laneq_f32(acc, b, x, 1)
#define LANE2(acc, b, x) vfmaq_laneq_f32(acc, b, x, 2)
#define LANE3(acc, b, x) vfmaq_laneq_f32(acc, b, x, 3)

/*
 * The multiply-adds of one k: strip s's row at w[s], times a[r][k] (lane j of
 * av[r], or a scalar). One row takes its strips two at a time (SPLIT: an empty
 * asm with a memory clobber keeps the loads of the next two after it): GCC
 * otherwise loads all four strip rows ahead, 16 registers, and spills
 * accumulators of 1x4 on every pass.
 */
#define K_STEP(R, S, MUL, X, LOAD, SPLIT)                                                         \
    EACH(s, S) {                                                                                  \
        const float32x4x4_t b = LOAD(w[s]);                                                       \
        w[s] += LSTM_TILE;                                                                        \
        EACH(r, R) FMA_STRIP((acc[r] + 4 * s), b, MUL, X);                                        \
        if (SPLIT(R, s)) __asm__ volatile("" ::: "memory");                                       \
    }

/*
 * A strip row of 16 halves as four float vectors: FCVTL / FCVTL2 (base
 * AdvSIMD) convert exactly, so an F16 sum is the float32 one on the
 * dequantized weights.
 */
INLINE float32x4x4_t load_half_strip(const uint16_t *p) {
    const uint16x8x2_t x = vld1q_u16_x2(p);
    float32x4x4_t b;
    EACH(i, 2) {
        const float16x8_t h = vreinterpretq_f16_u16(x.val[i]);
        b.val[2 * i] = vcvt_f32_f16(vget_low_f16(h));
        b.val[2 * i + 1] = vcvt_high_f32_f16(h);
    }
    return b;
}
#define LOAD_F32(p) vld1q_f32_x4(p)
#define LOAD_F16(p) load_half_strip(p)

/*
 * block_RxS: out[r][col + 16s ..] for rows r < R and strips s < S over one
 * K-block, each sum (init ? init[r][col ..] : bias ? bias : 0)[16s ..] plus
 * a[r][k] * strip s row k in k order. a[r] and bs point at the block's first
 * k; strips are sstride apart. One function a shape, each with accumulators
 * of exactly its size, so that GCC keeps them in registers. The _h shapes
 * read half strips (T uint16_t), converting each strip row as it comes.
 */
#define DEFINE_BLOCK_T(R, S, SFX, T, LOAD, SPLIT)                                                 \
    static NOIPA void block_##R##x##S##SFX(                                                      \
        int64_t kc, const float *const *a, const T *bs, int64_t sstride,                        \
        const float *const *init, const float *bias, float *const *out, int64_t col) {          \
        float32x4_t acc[R][4 * S];                                                                \
        const T *w[S];                                                                            \
        const float *ar[R]; /* (locals: the memory clobber reloads no pointer) */                 \
        EACH(s, S) w[s] = bs + s * sstride;                                                       \
        EACH(r, R) ar[r] = a[r];                                                                  \
        EACH(r, R) EACH(v, 4 * S)                                                                 \
            acc[r][v] = init ? vld1q_f32(init[r] + col + 4 * v)                                   \
                      : bias ? vld1q_f32(bias + 4 * v)                                            \
                             : vdupq_n_f32(0.0f);                                                 \
        int64_t k = 0;                                                                            \
        for (; k + 4 <= kc; k += 4) {                                                             \
            float32x4_t av[R];                                                                    \
            EACH(r, R) av[r] = vld1q_f32(ar[r] + k);                                              \
            K_STEP(R, S, LANE0, av[r], LOAD, SPLIT) K_STEP(R, S, LANE1, av[r], LOAD, SPLIT)       \
            K_STEP(R, S, LANE2, av[r], LOAD, SPLIT) K_STEP(R, S, LANE3, av[r], LOAD, SPLIT)       \
        }                                                                                         \
        for (; k < kc; k++) /* the same fused multiply-add, one k at a time */                    \
            K_STEP(R, S, vfmaq_n_f32, ar[r][k], LOAD, SPLIT)                                      \
        EACH(r, R) EACH(v, 4 * S) vst1q_f32(out[r] + col + 4 * v, acc[r][v]);                     \
    }
#define SPLIT_F32(R, s) (R == 1 && s % 2 == 1)
// two rows too: with both strips' conversions ahead, 2x2 spilled accumulators
#define SPLIT_F16(R, s) (R == 1 ? s % 2 == 1 : R == 2)
#define DEFINE_BLOCK(R, S) DEFINE_BLOCK_T(R, S, , float, LOAD_F32, SPLIT_F32)
#define DEFINE_BLOCK_H(R, S) DEFINE_BLOCK_T(R, S, _h, uint16_t, LOAD_F16, SPLIT_F16)
DEFINE_BLOCK(4, 1)
DEFINE_BLOCK(3, 1)
DEFINE_BLOCK(2, 2)
DEFINE_BLOCK(2, 1)
DEFINE_BLOCK(1, 4)
DEFINE_BLOCK(1, 3)
DEFINE_BLOCK(1, 2)
DEFINE_BLOCK(1, 1)
// the half shapes of the rows left over (full groups go through a float tile: panel_rows_h)
DEFINE_BLOCK_H(3, 1)
DEFINE_BLOCK_H(2, 2)
DEFINE_BLOCK_H(2, 1)
DEFINE_BLOCK_H(1, 4)
DEFINE_BLOCK_H(1, 3)
DEFINE_BLOCK_H(1, 2)
DEFINE_BLOCK_H(1, 1)

// fewer than MR rows: the ns strips (float32, or halves for _h) in the shapes that suit mr
#define DEFINE_TAIL(SFX, T)                                                                       \
    static void block_tail##SFX(int mr, int64_t ns, int64_t kc, const float *const *a,           \
                                const T *bs, int64_t sstride, const float *const *init,          \
                                const float *bias, float *const *out) {                          \
        for (int64_t s = 0; s < ns;) {                                                            \
            const float *b = bias ? bias + s * LSTM_TILE : NULL;                                  \
            const T *w = bs + s * sstride;                                                        \
            const int64_t col = s * LSTM_TILE, left = ns - s;                                     \
            if (mr == 3) {                                                                        \
                block_3x1##SFX(kc, a, w, sstride, init, b, out, col), s += 1;                     \
            } else if (mr == 2) {                                                                 \
                if (left >= 2) block_2x2##SFX(kc, a, w, sstride, init, b, out, col), s += 2;      \
                else block_2x1##SFX(kc, a, w, sstride, init, b, out, col), s += 1;                \
            } else {                                                                              \
                switch (left) {                                                                   \
                case 1: block_1x1##SFX(kc, a, w, sstride, init, b, out, col); break;              \
                case 2: block_1x2##SFX(kc, a, w, sstride, init, b, out, col); break;              \
                case 3: block_1x3##SFX(kc, a, w, sstride, init, b, out, col); break;              \
                default: block_1x4##SFX(kc, a, w, sstride, init, b, out, col); break;             \
                }                                                                                 \
                s += left < 4 ? left : 4;                                                         \
            }                                                                                     \
        }                                                                                         \
    }
DEFINE_TAIL(, float)
DEFINE_TAIL(_h, uint16_t)

/*
 * out[r][0 .. 16 ns] = (init rows, or bias, or 0) + a[r] (K) @ the ns strips
 * at bp, for rows r < m. K runs in blocks of KC where there are full row
 * groups to share a strip's block (a later block accumulates onto out);
 * within a block, a strip at a time for every full row group, then the
 * rows left over all the strips.
 */
static void panel_rows(int64_t m, int64_t K, lstm_rows a, const float *bp, int64_t ns,
                       const lstm_rows *init, const float *bias, lstm_rows out) {
    const float *ar[MR], *ir[MR];
    float *orow[MR];
    const int64_t full = m / MR * MR, sstride = K * LSTM_TILE, kblock = full ? KC : K ? K : 1;
    for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kblock) { // (K = 0: once, the sums are their start)
        const int64_t kc = K - k0 < kblock ? K - k0 : kblock;
        for (int64_t s = 0; s < ns; s++)
            for (int64_t r0 = 0; r0 < full; r0 += MR) {
                for (int r = 0; r < MR; r++) {
                    ar[r] = lstm_row(a, r0 + r) + k0;
                    orow[r] = lstm_row(out, r0 + r);
                    ir[r] = k0 ? orow[r] : init ? lstm_row(*init, r0 + r) : NULL;
                }
                block_4x1(kc, ar, bp + s * sstride + k0 * LSTM_TILE, 0, k0 || init ? ir : NULL,
                          k0 || !bias ? NULL : bias + s * LSTM_TILE, orow, s * LSTM_TILE);
            }
        const int mr = (int)(m - full);
        if (mr) {
            for (int r = 0; r < mr; r++) {
                ar[r] = lstm_row(a, full + r) + k0;
                orow[r] = lstm_row(out, full + r);
                ir[r] = k0 ? orow[r] : init ? lstm_row(*init, full + r) : NULL;
            }
            block_tail(mr, ns, kc, ar, bp + k0 * LSTM_TILE, sstride, k0 || init ? ir : NULL,
                       k0 ? NULL : bias, orow);
        }
    }
}

/*
 * panel_rows on ns half strips at bp (F16). Full row groups share each
 * strip's K-block, converted once into a stack tile (16 KB, in L1) that
 * panel_rows runs over; fewer rows than a group read the halves directly.
 * Either way each sum is the float32 chain on the dequantized weights: the
 * same bits as panel_rows on them, whatever m.
 */
static void panel_rows_h(int64_t m, int64_t K, lstm_rows a, const uint16_t *bp, int64_t ns,
                         const lstm_rows *init, const float *bias, lstm_rows out) {
    if (m < MR) {
        const float *ar[MR], *ir[MR];
        float *orow[MR];
        for (int64_t r = 0; r < m; r++) {
            ar[r] = lstm_row(a, r);
            orow[r] = lstm_row(out, r);
            ir[r] = init ? lstm_row(*init, r) : NULL;
        }
        if (m) block_tail_h((int)m, ns, K, ar, bp, K * LSTM_TILE, init ? ir : NULL, bias, orow);
        return;
    }
    _Alignas(64) float tile[KC * LSTM_TILE];
    for (int64_t s = 0; s < ns; s++) {
        const lstm_rows os = lstm_rows_col(out, s * LSTM_TILE);
        const lstm_rows is = init ? lstm_rows_col(*init, s * LSTM_TILE) : (lstm_rows){NULL, 0, NULL};
        for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            const uint16_t *src = bp + (s * K + k0) * LSTM_TILE;
            for (int64_t i = 0; i < kc * LSTM_TILE; i += LSTM_TILE) vst1q_f32_x4(tile + i, load_half_strip(src + i));
            panel_rows(m, kc, lstm_rows_col(a, k0), tile, 1, k0 ? &os : init ? &is : NULL,
                       k0 || !bias ? NULL : bias + s * LSTM_TILE, os);
        }
    }
}

// panel_rows on ns float32 strips at bp, or (half) F16 ones; off counts elements
INLINE void strip_rows(const int half, int64_t m, int64_t K, lstm_rows a, const void *bp, int64_t off,
                       int64_t ns, const lstm_rows *init, const float *bias, lstm_rows out) {
    if (half) panel_rows_h(m, K, a, (const uint16_t *)bp + off, ns, init, bias, out);
    else panel_rows(m, K, a, (const float *)bp + off, ns, init, bias, out);
}

// ---------------------------------------------------------------- kernels

/*
 * Panels [p0, p1) of `gates` strips are strips [p0 gates, p1 gates) (a packed
 * matrix and its bias are their strips one after another), less the strips
 * wholly past ncols. The strips wholly inside ncols are written in place;
 * the last one, when ncols is not a multiple of 16, goes via a stack tile.
 */
INLINE void gemm_kind(const int half, int64_t m, int64_t K, lstm_rows a, const void *b, int gates,
                      const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    float tmp[GEMM_ROWS * LSTM_TILE];
    const int64_t s0 = p0 * gates, s_end = (ncols + LSTM_TILE - 1) / LSTM_TILE;
    const int64_t s1 = p1 * gates < s_end ? p1 * gates : s_end;
    const int64_t s_full = s1 < ncols / LSTM_TILE ? s1 : ncols / LSTM_TILE;
    for (int64_t rb = 0; rb < m; rb += GEMM_ROWS) {
        const int64_t rows = m - rb < GEMM_ROWS ? m - rb : GEMM_ROWS;
        const lstm_rows ab = lstm_rows_from(a, rb), cb = lstm_rows_from(c, rb);
        for (int64_t s = s0; s < s_full; s += 4) {
            const int64_t ns = s_full - s < 4 ? s_full - s : 4;
            strip_rows(half, rows, K, ab, b, s * K * LSTM_TILE, ns, NULL, bias ? bias + s * LSTM_TILE : NULL,
                       lstm_rows_col(cb, s * LSTM_TILE));
        }
        if (s_full >= s0 && s_full < s1) {
            const int64_t s = s_full, width = ncols - s * LSTM_TILE;
            strip_rows(half, rows, K, ab, b, s * K * LSTM_TILE, 1, NULL, bias ? bias + s * LSTM_TILE : NULL,
                       (lstm_rows){tmp, LSTM_TILE, NULL});
            for (int64_t r = 0; r < rows; r++)
                memcpy(lstm_row(cb, r) + s * LSTM_TILE, tmp + r * LSTM_TILE, (size_t)width * sizeof(float));
        }
    }
}

// (the set does not pack: ap is unread)
static void gemm_neon(int64_t m, int64_t K, lstm_rows a, const float *ap, const float *b, int gates,
                      const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    (void)ap;
    gemm_kind(0, m, K, a, b, gates, bias, p0, p1, ncols, c);
}

static void gemm_r_neon(int64_t m, int64_t K, lstm_rows a, const float *ap, lstm_wmat b, int gates,
                        const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c) {
    if (b.type == LSTM_WEIGHTS_F16) gemm_kind(1, m, K, a, b.w, gates, bias, p0, p1, ncols, c);
    else lstm_kernels_scalar.gemm_r(m, K, a, ap, b, gates, bias, p0, p1, ncols, c); // I8: models store no int8 gemm operand
}

/*
 * The update of tile t of one row from its sums q (gates * 16 floats): h's
 * units [16t, min(16t + 16, H)) written and, for the LSTM, c's 16 units. gr
 * is the row of g (the GRU's input part), ar the row of a (the GRU's h_prev),
 * cr the row of c; each is read only by the kinds that use it.
 */
INLINE void tile_step(const int kind, const float *q, const float *gr, const float *ar, float *cr,
                      int64_t t, int64_t H, float *hr) {
    const int64_t unit0 = t * LSTM_TILE, units = H - unit0;
    float32x4_t hv[4];
    if (kind == LSTM_CELL_LSTM) {
        tile_lstm(q, cr + unit0, hv);
    } else if (kind == LSTM_CELL_GRU) {
        const float *h_prev = ar + unit0;
        float hbuf[LSTM_TILE];
        if (units < LSTM_TILE) { // the units past H are not a's to read
            memset(hbuf, 0, sizeof hbuf);
            memcpy(hbuf, h_prev, (size_t)units * sizeof(float));
            h_prev = hbuf;
        }
        tile_gru(q, gr + t * 3 * LSTM_TILE, h_prev, hv);
    } else {
        tile_rnn(kind == LSTM_CELL_RNN_RELU, q, hv);
    }
    if (units >= LSTM_TILE) {
        EACH(v, 4) vst1q_f32(hr + unit0 + 4 * v, hv[v]);
    } else { // h ends inside this tile
        float hbuf[LSTM_TILE];
        EACH(v, 4) vst1q_f32(hbuf + 4 * v, hv[v]);
        memcpy(hr + unit0, hbuf, (size_t)units * sizeof(float));
    }
}

/*
 * One step of kind `kind`: for a chunk of tiles and a chunk of rows, the
 * sums (from g for the LSTM and RNN, whose g holds both biases; from b_hh
 * for the GRU, whose input part enters the update apart) into the stack
 * tile, then every update of the chunk, so that the updates' long
 * dependency chains sit together. A chunk is 48 rows of one LSTM tile (or
 * four RNN tiles), or fewer rows of more tiles: one row takes 192 strips.
 */
INLINE void cell_kind(const int kind, const int half, int64_t m, int64_t K, lstm_rows a, const void *w_hh,
                      const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                      int64_t t1, int64_t H, lstm_rows h) {
    const int gates = lstm_gates(kind), W = gates * LSTM_TILE, gru = kind == LSTM_CELL_GRU;
    const int64_t rows_max = m < CELL_ROWS ? m : CELL_ROWS, chunk = CELL_FLOATS / (rows_max * W);
    float tmp[CELL_FLOATS];
    for (int64_t c0 = t0; c0 < t1; c0 += chunk) {
        const int64_t nt = t1 - c0 < chunk ? t1 - c0 : chunk, ld = nt * W;
        const int64_t wp = c0 * K * W; // (elements)
        for (int64_t r0 = 0; r0 < m; r0 += CELL_ROWS) {
            const int64_t rows = m - r0 < CELL_ROWS ? m - r0 : CELL_ROWS;
            const lstm_rows sums = {tmp, ld, NULL};
            if (gru) {
                strip_rows(half, rows, K, lstm_rows_from(a, r0), w_hh, wp, nt * gates, NULL,
                           b_hh ? b_hh + c0 * W : NULL, sums);
            } else {
                const lstm_rows gc = lstm_rows_col(lstm_rows_from(g, r0), c0 * W);
                strip_rows(half, rows, K, lstm_rows_from(a, r0), w_hh, wp, nt * gates, &gc, NULL, sums);
            }
            for (int64_t r = 0; r < rows; r++) {
                const float *ar = gru ? lstm_row(a, r0 + r) : NULL;
                const float *gr = gru ? lstm_row(g, r0 + r) : NULL;
                float *cr = kind == LSTM_CELL_LSTM ? c + (r0 + r) * ldc : NULL;
                float *hr = lstm_row(h, r0 + r);
                for (int64_t j = 0; j < nt; j++) tile_step(kind, tmp + r * ld + j * W, gr, ar, cr, c0 + j, H, hr);
            }
        }
    }
}

/* a (K) quantized to qa (Kq, zeros past K) as lstm_i8_row_scale says, to int16
 * in [-lstm_i8_state_max(Kq), ..]; returns the scale */
static float quantize_row(const float *a, int64_t K, int16_t *qa) {
    const int64_t Kq = lstm_i8_k(K);
    const int32_t qmax = lstm_i8_state_max(Kq);
    float32x4_t mx = vdupq_n_f32(0.0f);
    uint32x4_t ok = vdupq_n_u32(~0u);
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const float32x4_t v = vabsq_f32(vld1q_f32(a + k));
        ok = vandq_u32(ok, vcleq_f32(v, vdupq_n_f32(FLT_MAX))); // false for NaN, Inf
        mx = vmaxq_f32(mx, v);
    }
    float amax = vmaxvq_f32(mx);
    int finite = vminvq_u32(ok) != 0;
    for (; k < K; k++) {
        const float v = a[k] < 0 ? -a[k] : a[k];
        if (!(v <= FLT_MAX)) finite = 0;
        else if (v > amax) amax = v;
    }
    float inv;
    const float sa = lstm_i8_row_scale(amax, finite, qmax, &inv);
    k = 0;
    // x * inv rounded once, then to nearest even (FCVTNS); |a * inv| <= qmax needs no clamping
    if (inv != 0.0f)
        for (; k + 8 <= K; k += 8) {
            const int32x4_t q0 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(a + k), inv));
            const int32x4_t q1 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(a + k + 4), inv));
            vst1q_s16(qa + k, vcombine_s16(vmovn_s32(q0), vmovn_s32(q1)));
        }
    for (; k < Kq; k++) qa[k] = (int16_t)(k < K ? lstm_i8_quantize(a[k], inv, qmax) : 0);
    return sa;
}

// acc[4s ..] += the 16 columns of k group lane i (b.val[i], int8) times qa lane i (x)
#define I8_K(i)                                                                                   \
    {                                                                                             \
        const int16x8_t lo = vmovl_s8(vget_low_s8(b.val[i])), hi = vmovl_high_s8(b.val[i]);       \
        acc[4 * s] = vmlal_lane_s16(acc[4 * s], vget_low_s16(lo), x, i);                          \
        acc[4 * s + 1] = vmlal_high_lane_s16(acc[4 * s + 1], lo, x, i);                           \
        acc[4 * s + 2] = vmlal_lane_s16(acc[4 * s + 2], vget_low_s16(hi), x, i);                  \
        acc[4 * s + 3] = vmlal_high_lane_s16(acc[4 * s + 3], hi, x, i);                           \
    }

/*
 * A row's int8 sums over ns (1 to 4) strips at w, sstride bytes apart, from
 * the int16 quantized row qa (Kq, scale sa): out[16s + j] = fmaf(qa .
 * column j, sa * scale[16s + j], init ? init[16s + j] : 0), as the scalar
 * reference computes it. LD4 takes a strip row (4 k of 16 columns) apart
 * into the 16 columns of each k, which SMLAL / SMLAL2 by lane multiply by
 * qa[k] into int32 (exact: lstm_i8_state_max bounds the sums), one strip at
 * a time (an empty asm keeps the next strip's loads after it: 16
 * accumulators and all four strips' rows do not fit in 32 registers).
 */
INLINE void strips_i8(const int ns, int64_t Kq, const int16_t *qa, const int8_t *w, int64_t sstride,
                      const float *scale, float sa, const float *init, float *out) {
    int32x4_t acc[16];
    EACH(v, 4 * ns) acc[v] = vdupq_n_s32(0);
    for (int64_t k = 0; k < Kq; k += 4) {
        const int16x4_t x = vld1_s16(qa + k);
        EACH(s, ns) {
            const int8x16x4_t b = vld4q_s8(w + s * sstride + k * LSTM_TILE);
            I8_K(0) I8_K(1) I8_K(2) I8_K(3)
            __asm__ volatile("" ::: "memory");
        }
    }
    EACH(v, 4 * ns) {
        const float32x4_t start = init ? vld1q_f32(init + 4 * v) : vdupq_n_f32(0.0f);
        const float32x4_t prod = vmulq_n_f32(vld1q_f32(scale + 4 * v), sa);
        vst1q_f32(out + 4 * v, vfmaq_f32(start, vcvtq_f32_s32(acc[v]), prod));
    }
}

/*
 * The int8 step of kind `kind`, row by row: each row of a quantized (so a
 * row gets the same bits alone as in a batch), then per tile the sums of its
 * gates' strips, from g or b_hh as in cell_kind, and its update.
 */
INLINE void cell_i8_kind(const int kind, int64_t m, int64_t K, lstm_rows a, lstm_wmat w,
                         const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                         int64_t t1, int64_t H, lstm_rows h) {
    const int gates = lstm_gates(kind), W = gates * LSTM_TILE, gru = kind == LSTM_CELL_GRU;
    const int64_t Kq = lstm_i8_k(K), sstride = Kq * LSTM_TILE;
    int16_t qa[LSTM_MAX_I8_STATE];
    float sums[LSTM_MAX_GATES * LSTM_TILE];
    for (int64_t r = 0; r < m; r++) {
        const float *ar = lstm_row(a, r), *gr = lstm_row(g, r);
        float *cr = kind == LSTM_CELL_LSTM ? c + r * ldc : NULL, *hr = lstm_row(h, r);
        const float sa = quantize_row(ar, K, qa);
        for (int64_t t = t0; t < t1; t++) {
            const float *init = !gru ? gr + t * W : b_hh ? b_hh + t * W : NULL;
            strips_i8(gates, Kq, qa, (const int8_t *)w.w + t * gates * sstride, sstride,
                      w.scale + t * W, sa, init, sums);
            tile_step(kind, sums, gr, ar, cr, t, H, hr);
        }
    }
}

// each kind compiled apart, with the kind a constant; cell_h_* on half weights, cell_i8_* on int8
#define CELL_KIND(name, kind)                                                                     \
    static __attribute__((noinline)) void cell_##name(                                            \
        int64_t m, int64_t K, lstm_rows a, const float *w_hh, const float *b_hh, lstm_rows g,     \
        float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {                  \
        cell_kind(kind, 0, m, K, a, w_hh, b_hh, g, c, ldc, t0, t1, H, h);                         \
    }                                                                                             \
    static __attribute__((noinline)) void cell_h_##name(                                          \
        int64_t m, int64_t K, lstm_rows a, const void *w_hh, const float *b_hh, lstm_rows g,      \
        float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {                  \
        cell_kind(kind, 1, m, K, a, w_hh, b_hh, g, c, ldc, t0, t1, H, h);                         \
    }                                                                                             \
    static __attribute__((noinline)) void cell_i8_##name(                                         \
        int64_t m, int64_t K, lstm_rows a, lstm_wmat w, const float *b_hh, lstm_rows g,           \
        float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H, lstm_rows h) {                  \
        cell_i8_kind(kind, m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h);                            \
    }
CELL_KIND(lstm, LSTM_CELL_LSTM)
CELL_KIND(gru, LSTM_CELL_GRU)
CELL_KIND(rnn_tanh, LSTM_CELL_RNN_TANH)
CELL_KIND(rnn_relu, LSTM_CELL_RNN_RELU)

static void cell_neon(int cell, int64_t m, int64_t K, lstm_rows a, const float *w_hh,
                      const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                      int64_t t1, int64_t H, lstm_rows h) {
    if (m <= 0 || t0 >= t1) return;
    switch (cell) {
    case LSTM_CELL_GRU: cell_gru(m, K, a, w_hh, b_hh, g, c, ldc, t0, t1, H, h); break;
    case LSTM_CELL_RNN_TANH: cell_rnn_tanh(m, K, a, w_hh, b_hh, g, c, ldc, t0, t1, H, h); break;
    case LSTM_CELL_RNN_RELU: cell_rnn_relu(m, K, a, w_hh, b_hh, g, c, ldc, t0, t1, H, h); break;
    default: cell_lstm(m, K, a, w_hh, b_hh, g, c, ldc, t0, t1, H, h); break;
    }
}

static void cell_r_neon(int cell, int64_t m, int64_t K, lstm_rows a, lstm_wmat w,
                        const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                        int64_t t1, int64_t H, lstm_rows h) {
    if (m <= 0 || t0 >= t1) return;
    if (w.type == LSTM_WEIGHTS_I8) {
        switch (cell) {
        case LSTM_CELL_GRU: cell_i8_gru(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
        case LSTM_CELL_RNN_TANH: cell_i8_rnn_tanh(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
        case LSTM_CELL_RNN_RELU: cell_i8_rnn_relu(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
        default: cell_i8_lstm(m, K, a, w, b_hh, g, c, ldc, t0, t1, H, h); break;
        }
        return;
    }
    switch (cell) {
    case LSTM_CELL_GRU: cell_h_gru(m, K, a, w.w, b_hh, g, c, ldc, t0, t1, H, h); break;
    case LSTM_CELL_RNN_TANH: cell_h_rnn_tanh(m, K, a, w.w, b_hh, g, c, ldc, t0, t1, H, h); break;
    case LSTM_CELL_RNN_RELU: cell_h_rnn_relu(m, K, a, w.w, b_hh, g, c, ldc, t0, t1, H, h); break;
    default: cell_h_lstm(m, K, a, w.w, b_hh, g, c, ldc, t0, t1, H, h); break;
    }
}

/* kernels.h's widen: FCVTL (exact), and SXTL */
static void widen_neon(int type, const void *src, void *dst, int64_t n) {
    int64_t i = 0;
    if (type == LSTM_WEIGHTS_F16) {
        const uint16_t *h = src;
        float *f = dst;
        for (; i + 8 <= n; i += 8) {
            const float16x8_t v = vreinterpretq_f16_u16(vld1q_u16(h + i));
            vst1q_f32(f + i, vcvt_f32_f16(vget_low_f16(v)));
            vst1q_f32(f + i + 4, vcvt_high_f32_f16(v));
        }
        for (; i < n; i++) f[i] = lstm_half_to_float(h[i]);
    } else {
        const int8_t *q = src;
        int16_t *w = dst;
        for (; i + 16 <= n; i += 16) {
            const int8x16_t v = vld1q_s8(q + i);
            vst1q_s16(w + i, vmovl_s8(vget_low_s8(v)));
            vst1q_s16(w + i + 8, vmovl_high_s8(v));
        }
        for (; i < n; i++) w[i] = q[i];
    }
}

const lstm_kernels lstm_kernels_neon = {"neon", gemm_neon, cell_neon, gemm_r_neon, cell_r_neon, 0, NULL,
                                        widen_neon, NULL};
