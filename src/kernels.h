/*
 * kernels.h - the two numeric kernels every instruction set provides, and the
 * packed weight layout they share. Internal to the library.
 *
 * Packed layout ("panels"): a (K, N) right-hand matrix is cut into panels of
 * `gates` strips, each strip LSTM_TILE = 16 columns wide, zero beyond N (a
 * panel is gates * 16 columns). A strip is K rows of 16 floats one after
 * another (one strip row is one cache line and a strip is contiguous: a
 * K-block of it stays in L1 without set conflicts), and a panel's strips
 * follow each other. For gate matrices the strips of panel j are the gates
 * of hidden units [16j, 16j+16) in torch's order (LSTM i, f, g, o; GRU r, z,
 * n; RNN the one), so one panel carries everything a tile of hidden units
 * needs for its update. Plain matrices (the projection) use 4 strips a panel.
 * The layout does not depend on the ISA.
 */
#ifndef LSTM_KERNELS_H
#define LSTM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "lstm_infer.h"

#define LSTM_TILE 16                   /* hidden units per panel */
#define LSTM_MAX_GATES 4
#define LSTM_PANEL (4 * LSTM_TILE)     /* floats per panel row of a plain matrix */

/* Gates of a cell kind: 4 LSTM, 3 GRU, 1 RNN. */
static inline int lstm_gates(int cell) {
    return cell == LSTM_CELL_LSTM ? 4 : cell == LSTM_CELL_GRU ? 3 : 1;
}

/* Offset of element (k, col) in a packed (K, N) matrix of `gates` strips a panel. */
static inline int64_t lstm_packed_at(int64_t K, int gates, int64_t k, int64_t col) {
    const int64_t w = (int64_t)gates * LSTM_TILE, p = col / w, j = col % w;
    return (p * w + j / LSTM_TILE * LSTM_TILE) * K + k * LSTM_TILE + j % LSTM_TILE;
}

/*
 * Reduced weights (lstm_config.weights) use the same panels and strips.
 * F16: the float's place holds its half (uint16_t bits). I8: K is padded
 * with zeros to Kq, a multiple of 4, and a strip row holds 4 k of each of
 * its 16 columns (k/4, then the column, then k%4: a column's k in groups of
 * 4, as vpmaddubsw / vpdpbusd take them, and pairs for vpmaddwd once
 * widened); a scale per packed column (laid out like a bias, 0 past N)
 * multiplies the column's int8 values.
 */
typedef struct {
    const void *w;         // packed panels of float, uint16_t (half) or int8_t
    const float *scale;    // I8: one per packed column
    int type;              // lstm_weight_type
    const int32_t *colsum; // I8 in a cell: one per packed column, the sum of its int8 values
    const int16_t *wide;   // I8 in a cell: the same values as int16 (widen), or NULL; a kernel set
                           // whose batched step widens its weights may read these instead
} lstm_wmat;

static inline int64_t lstm_i8_k(int64_t K) { return (K + 3) / 4 * 4; }

/* The sum of each packed column's int8 values (ncols a multiple of 16: strip after strip of
   Kq x 16, as lstm_packed_i8_at lays them out), for lstm_wmat.colsum. */
static inline void lstm_i8_colsums(const int8_t *w, int64_t K, int64_t ncols, int32_t *colsum) {
    const int64_t Kq = lstm_i8_k(K);
    for (int64_t col = 0; col < ncols; col++) {
        const int8_t *strip = w + col / LSTM_TILE * LSTM_TILE * Kq + col % LSTM_TILE * 4;
        int32_t sum = 0;
        for (int64_t k = 0; k < Kq; k++) sum += strip[k / 4 * 4 * LSTM_TILE + k % 4];
        colsum[col] = sum;
    }
}

/* Offset of int8 element (k, col) in a packed (K, N) matrix of `gates` strips a panel. */
static inline int64_t lstm_packed_i8_at(int64_t K, int gates, int64_t k, int64_t col) {
    const int64_t w = (int64_t)gates * LSTM_TILE, p = col / w, j = col % w;
    return (p * w + j / LSTM_TILE * LSTM_TILE) * lstm_i8_k(K) + k / 4 * 4 * LSTM_TILE +
           j % LSTM_TILE * 4 + k % 4;
}

/* The float a half holds (exact). */
static inline float lstm_half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (e == 0x1f) v.u = sign | 0x7f800000u | f << 13 | (f ? 0x400000u : 0); // Inf, NaN (quieted, as F16C)
    else if (e) v.u = sign | (e + 112) << 23 | f << 13;
    else {                                               // zero, subnormal: f * 2^-24
        v.f = (float)f * 5.9604644775390625e-8f;
        v.u |= sign;
    }
    return v.f;
}

/*
 * The symmetric per-row quantization, to integers in [-qmax, qmax]: scale
 * max|a| / qmax (0 below 2^-100, NaN when a holds NaN or Inf), and q =
 * round-half-even(a * (qmax / max|a|)) for each k, 0 where the scale is 0 or
 * NaN. Weights use qmax 127 (int8); the int8 step quantizes each row of h to
 * lstm_i8_state_max(Kq) (int16), so the state adds ~15 bits' error, not 8
 * (on the trained example GRU, h in int8 cost as much as weight_hh in int8).
 * Every kernel set quantizes exactly so.
 */
#define LSTM_I8_WEIGHT_MAX 127
static inline float lstm_i8_row_scale(float amax, int finite, int32_t qmax, float *inv) {
    *inv = 0.0f;
    if (!finite) return __builtin_nanf("");
    if (!(amax >= 0x1p-100f)) return 0.0f; // also keeps qmax / amax finite
    *inv = (float)qmax / amax;
    return amax / (float)qmax;
}

/* One value of a row's quantization (inv from lstm_i8_row_scale); in [-qmax, qmax]. */
static inline int32_t lstm_i8_quantize(float x, float inv, int32_t qmax) {
    if (inv == 0.0f) return 0;
    const long q = __builtin_lrintf(x * inv); // the current rounding: to nearest, ties to even
    return (int32_t)(q > qmax ? qmax : q < -qmax ? -qmax : q);
}

/* The largest |q| of a quantized state row of Kq values: 32767, or less where
 * Kq * 127 * 32767 would pass INT32_MAX, so the int32 sums stay exact. */
static inline int32_t lstm_i8_state_max(int64_t Kq) {
    const int64_t m = 2147483647 / (LSTM_I8_WEIGHT_MAX * (Kq > 0 ? Kq : 1));
    return (int32_t)(m < 32767 ? m : 32767);
}

/* Asks for a row of K floats to be brought into L1 ahead of its reads. A
 * one-row step split over threads reads an h of which the other thread
 * wrote part: fetched up front, those lines' trip between the cores overlaps
 * the sums over this thread's own part instead of stalling the k loop when
 * it gets there (edge-like steps on 2 threads ran 1.10x as fast on the Xeon). */
static inline void lstm_prefetch_row(const float *a, int64_t K) {
    if (K <= 0) return;
    for (int64_t k = 0; k < K; k += 16) __builtin_prefetch(a + k);
    __builtin_prefetch(a + K - 1); // the last line, where a is not 64-byte aligned
}

/* A set of rows: row r is at base + (idx ? idx[r] : r) * ld. */
typedef struct {
    float *base;
    int64_t ld;
    const int64_t *idx;
} lstm_rows;

static inline float *lstm_row(lstm_rows rows, int64_t r) {
    return rows.base + (rows.idx ? rows.idx[r] : r) * rows.ld;
}

/* The same rows starting at row r0. */
static inline lstm_rows lstm_rows_from(lstm_rows rows, int64_t r0) {
    if (rows.idx) rows.idx += r0;
    else rows.base += r0 * rows.ld;
    return rows;
}

/* The same rows starting at column col. */
static inline lstm_rows lstm_rows_col(lstm_rows rows, int64_t col) {
    rows.base += col;
    return rows;
}

/*
 * A's rows packed for a kernel set whose gemm reads them (lstm_kernels.packs):
 * each full group of LSTM_PACK_ROWS rows as one block, column k of group g
 * at ap[(g * K + k) * LSTM_PACK_ROWS + i] for its row i, so the microkernel
 * reads one stream instead of six rows (a large gemm at K 128-256 ran
 * 1.1-1.2x as fast). The rows past the last full group are not packed.
 */
#define LSTM_PACK_ROWS 6

/* Packs groups [g0, g1) of a (K columns) into ap. */
static inline void lstm_pack_rows(lstm_rows a, int64_t g0, int64_t g1, int64_t K, float *ap) {
    for (int64_t g = g0; g < g1; g++) {
        const float *row[LSTM_PACK_ROWS];
        for (int i = 0; i < LSTM_PACK_ROWS; i++) row[i] = lstm_row(a, g * LSTM_PACK_ROWS + i);
        float *dst = ap + g * K * LSTM_PACK_ROWS;
        for (int64_t k = 0; k < K; k++)
            for (int i = 0; i < LSTM_PACK_ROWS; i++) dst[k * LSTM_PACK_ROWS + i] = row[i][k];
    }
}

/*
 * gemm: c[r][col] = bias[col] + sum_k a[r][k] * b[k][col]
 *   for rows r < m and columns col in panels [p0, p1) with col < ncols.
 *   b: packed panels of `gates` strips (K rows each); bias: packed like one
 *   panel row per panel (npanels * gates * 16 floats) or NULL for zero.
 *   ap: a's rows packed (lstm_pack_rows), or NULL; the sums are the same
 *   either way, and a set that does not pack reads a alone.
 */
typedef void (*lstm_gemm_fn)(int64_t m, int64_t K, lstm_rows a, const float *ap, const float *b,
                             int gates, const float *bias, int64_t p0, int64_t p1, int64_t ncols,
                             lstm_rows c);

/*
 * cell: one recurrent step of kind `cell` for rows r < m and tiles [t0, t1),
 * with W = gates * 16 and the sums s = a[r] (K) @ w_hh panel t:
 *   LSTM:  q = g[r][Wt ..] + s             (i, f, g, o)
 *          c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)
 *          c rows: c + r * ldc, units 16t .. 16t+16 updated in place
 *   GRU:   q = b_hh[Wt ..] + s             (r, z, n); gi = g[r][Wt ..]
 *          r = sigmoid(gi_r + q_r); z = sigmoid(gi_z + q_z)
 *          n = tanh(gi_n + r * q_n);  h = (1 - z) * n + z * a[r][unit]  (K = H)
 *   RNN:   h = tanh or relu(g[r][Wt ..] + s)
 *   h rows: units 16t .. min(16t+16, H) written. b_hh (tiles * W floats) is
 *   read by the GRU only; c by the LSTM only.
 */
typedef void (*lstm_cell_fn)(int cell, int64_t m, int64_t K, lstm_rows a, const float *w_hh,
                             const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                             int64_t t1, int64_t H, lstm_rows h);

/*
 * The same two kernels for reduced weights (w.type F16 or I8):
 *   gemm_r: as gemm with b's values dequantized (half -> float, or q * scale
 *           as a float product), float32 arithmetic;
 *   cell_r: F16 as cell on the dequantized w_hh; I8: each row a[r] is
 *           quantized to int16 (lstm_i8_row_scale with lstm_i8_state_max,
 *           K <= LSTM_MAX_I8_STATE), the int32 sums qa . q_col are exact,
 *           and sum = fmaf((float)isum, sa * scale[col], start) with start
 *           g or b_hh as in cell; then the same update. w_hh.colsum is
 *           set (lstm_i8_colsums).
 */
typedef void (*lstm_gemm_r_fn)(int64_t m, int64_t K, lstm_rows a, const float *ap, lstm_wmat b,
                               int gates, const float *bias, int64_t p0, int64_t p1, int64_t ncols,
                               lstm_rows c);
typedef void (*lstm_cell_r_fn)(int cell, int64_t m, int64_t K, lstm_rows a, lstm_wmat w_hh,
                               const float *b_hh, lstm_rows g, float *c, int64_t ldc, int64_t t0,
                               int64_t t1, int64_t H, lstm_rows h);

/*
 * widen: dst[i] = src[i] exactly, for i < n: halves (type F16) to float, or
 * int8 (I8) to int16. A call of many tokens converts its reduced weights
 * once (forward.c) rather than in every step's and every block's tiles.
 */
typedef void (*lstm_widen_fn)(int type, const void *src, void *dst, int64_t n);

typedef struct {
    const char *name;
    lstm_gemm_fn gemm;
    lstm_cell_fn cell;
    lstm_gemm_r_fn gemm_r; /* NULL: the scalar reference's */
    lstm_cell_r_fn cell_r;
    int packs; /* nonzero: gemm and gemm_r read packed rows (ap) when given them */
    /* A step's time per multiply-add on weights of this lstm_weight_type against float32's,
       for the thread plan (forward.c); NULL: 1 for every type. */
    double (*step_cost)(int type);
    lstm_widen_fn widen; /* NULL: the scalar reference's */
    /* Nonzero where cell_r's batched int8 step reads lstm_wmat.wide when given it; NULL: never. */
    int (*wide_i8)(void);
} lstm_kernels;

extern const lstm_kernels lstm_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const lstm_kernels lstm_kernels_avx2;
extern const lstm_kernels lstm_kernels_avx512;
/* The avx2 set's reduced-weight kernels, which the avx512 set shares. */
void lstm_gemm_r_avx2(int64_t m, int64_t K, lstm_rows a, const float *ap, lstm_wmat b, int gates,
                      const float *bias, int64_t p0, int64_t p1, int64_t ncols, lstm_rows c);
void lstm_cell_r_avx2(int cell, int64_t m, int64_t K, lstm_rows a, lstm_wmat w, const float *b_hh,
                      lstm_rows g, float *c, int64_t ldc, int64_t t0, int64_t t1, int64_t H,
                      lstm_rows h);
#endif
#if defined(__aarch64__)
extern const lstm_kernels lstm_kernels_neon;
#endif

/*
 * Data cache sizes of this CPU (bytes of one cache as CPUID reports it,
 * shared or not), read once: CPUID leaf 4 on Intel, 0x8000001D on AMD and
 * Hygon. Elsewhere, or where a hypervisor reports none or absurd ones,
 * sizes any CPU of the kernels' generation has at least (32 KB L1d, 256 KB
 * L2). The kernels size their cache blocks from them, not from one
 * machine's tuning.
 */
typedef struct {
    int64_t l1d, l2;
} lstm_caches;

const lstm_caches *lstm_cache_sizes(void);

/* The kernels in use (see lstm_set_isa). */
const lstm_kernels *lstm_active_kernels(void);

#endif /* LSTM_KERNELS_H */
