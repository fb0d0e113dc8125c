/*
 * kernels.h - the two numeric kernels every instruction set provides, and the
 * packed weight layout they share. Internal to the library.
 *
 * Packed layout ("panels"): a (K, N) right-hand matrix is cut into panels of
 * LSTM_PANEL = 64 columns, zero beyond N. A panel is four "strips" of
 * LSTM_TILE = 16 columns one after another, each strip K rows of 16 floats
 * (so one strip row is one cache line and a strip is contiguous: a K-block of
 * it stays in L1 without set conflicts). For gate matrices the strips of
 * panel j are the gates i, f, g, o of hidden units [16j, 16j+16), so one
 * panel carries everything a tile of hidden units needs for its cell update.
 * The layout does not depend on the ISA.
 */
#ifndef LSTM_KERNELS_H
#define LSTM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define LSTM_TILE 16             /* hidden units per panel */
#define LSTM_PANEL (4 * LSTM_TILE) /* floats per panel row */

/* Offset of element (k, col) in a packed (K, N) matrix. */
static inline int64_t lstm_packed_at(int64_t K, int64_t k, int64_t col) {
    const int64_t p = col / LSTM_PANEL, j = col % LSTM_PANEL;
    return (p * LSTM_PANEL + j / LSTM_TILE * LSTM_TILE) * K + k * LSTM_TILE + j % LSTM_TILE;
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

/*
 * gemm: c[r][col] = bias[col] + sum_k a[r][k] * b[k][col]
 *   for rows r < m and columns col in panels [p0, p1) with col < ncols.
 *   b: packed panels (K rows each); bias: packed like one panel row per
 *   panel (npanels * 64 floats) or NULL for zero.
 */
typedef void (*lstm_gemm_fn)(int64_t m, int64_t K, lstm_rows a, const float *b,
                             const float *bias, int64_t p0, int64_t p1, int64_t ncols,
                             lstm_rows c);

/*
 * cell: the fused LSTM step for rows r < m and tiles [t0, t1):
 *   gates = g[r][64t .. 64t+64] + a[r] (K) @ w_hh panel t   (i, f, g, o)
 *   c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)
 *   c rows: c + r * ldc, units 16t .. 16t+16 updated in place;
 *   h rows: units 16t .. min(16t+16, H) written.
 */
typedef void (*lstm_cell_fn)(int64_t m, int64_t K, lstm_rows a, const float *w_hh,
                             lstm_rows g, float *c, int64_t ldc, int64_t t0, int64_t t1,
                             int64_t H, lstm_rows h);

typedef struct {
    const char *name;
    lstm_gemm_fn gemm;
    lstm_cell_fn cell;
} lstm_kernels;

extern const lstm_kernels lstm_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const lstm_kernels lstm_kernels_avx2;
#endif

/* The kernels in use (see lstm_set_isa). */
const lstm_kernels *lstm_active_kernels(void);

#endif /* LSTM_KERNELS_H */
