/*
 * test_kernels.c - the kernels (src/kernels.h) of every ISA the CPU supports
 * (scalar, and avx2 on x86-64 or neon on aarch64; only the one LSTM_INFER_ISA
 * names, if set), reached through dispatch.c, against naive double-precision
 * C written from the equations over the documented packed layout:
 *
 *   gemm   1 to 4 strips a panel, odd widths, K small and past one K-block,
 *          m = 0 .. 7, 13, 48, 49, 101, row index tables, panel ranges,
 *          bias or none;
 *   cell   every kind (LSTM, GRU, RNN tanh/relu), odd H, tile ranges, b_hh
 *          or none, one row and many, NaN and Inf;
 *   both   nothing written outside the given rows, columns and units
 *          (sentinels); nothing read past a row of a or past a buffer (the
 *          buffers are exactly their size and the last row of a ends at the
 *          end of its block, for ASan; a row's padding and the parts of g
 *          outside the range are NaN, which would show in the results);
 *   the activations' relative error on dense grids (sigmoid, tanh) and relu;
 *   the same kernels on float16 and int8 weights (the gemm_r / cell_r of
 *   kernels.h, or the scalar ones a kernel set falls back to), int8 against a
 *   reference that quantizes each row from lstm_infer.h's definition and sums
 *   exactly; every half -> float conversion against F16C; a set's float16
 *   kernels bit for bit its float32 ones on the same values, its int8 sums
 *   bit for bit the scalar reference's.
 *   a row alone gets the same bits as among many rows.
 *
 * Links only the kernels and dispatch.c. Exits non-zero on any failure.
 * Built by tests/c/Makefile (`make kernels`, also under ASan+UBSan and TSan).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lstm_infer.h"
#include "harness.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#endif



/* n floats (exactly: ASan sees any access past them), each set to fill */
static float *floats(int64_t n, float fill) {
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory in test\n");
        exit(2);
    }
    for (int64_t i = 0; i < n; i++) p[i] = fill;
    return p;
}

static int64_t *identity(int64_t n) {
    int64_t *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    if (!v) exit(2);
    for (int64_t i = 0; i < n; i++) v[i] = i;
    return v;
}

static void shuffle(int64_t *v, int64_t n) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = rnd_i(0, i), t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

static int close_enough(double got, double want, double atol, double rtol) {
    if (isnan(got) || isnan(want)) return isnan(got) && isnan(want);
    if (isinf(want)) return got == want;
    return fabs(got - want) <= atol + rtol * fabs(want);
}

static int same_bits(float x, float y) { return memcmp(&x, &y, sizeof x) == 0; }

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
static double relu(double x) { return x > 0 || isnan(x) ? x : 0.0; }
/* a magnitude for a tolerance: a sum with NaN or Inf in it has no rounding to allow for */
static double fin(double x) { return isfinite(x) ? x : 0.0; }

static const float SENTINEL = -12345.0f;

/*
 * The rows of an operand that is only read, for r < m: with idx, m of
 * `spare` more storage rows in random order, the last storage row among
 * them; each row `width` floats then padding up to ld, NaN. The block ends
 * with the last storage row's last float (no padding after it), so reading
 * past `width` there is an ASan error, and elsewhere a NaN in the result.
 */
typedef struct {
    float *block;
    int64_t *idx;
    lstm_rows rows;
    int64_t width;
} operand;

static operand operand_new(int64_t m, int64_t width, int use_idx, float lo, float hi) {
    operand o;
    const int64_t ld = width + rnd_i(0, 3), n = use_idx ? m + 3 : m;
    const int64_t size = n ? (n - 1) * ld + width : 0;
    o.block = floats(size, NAN);
    o.idx = identity(n);
    o.width = width;
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < width; j++) o.block[r * ld + j] = rnd_f(lo, hi);
    if (use_idx && m > 0) {
        shuffle(o.idx, n);
        for (int64_t i = 0; i < n; i++) /* the block's last row is one of the m used */
            if (o.idx[i] == n - 1) {
                const int64_t j = rnd_i(0, m - 1), t = o.idx[j];
                o.idx[j] = o.idx[i], o.idx[i] = t;
                break;
            }
    }
    o.rows = (lstm_rows){o.block, ld, use_idx ? o.idx : NULL};
    return o;
}

static void operand_free(operand *o) { free(o->block), free(o->idx); }

/*
 * The rows a kernel writes: m of m + 3 storage rows (in random order with
 * idx), each ld floats, all SENTINEL; `written` marks the storage rows given.
 */
typedef struct {
    float *block;
    int64_t *idx;
    char *written;
    lstm_rows rows;
    int64_t n;
} result;

static result result_new(int64_t m, int64_t ld, int use_idx) {
    result o;
    o.n = m + 3;
    o.block = floats(o.n * ld, SENTINEL);
    o.idx = identity(o.n);
    if (use_idx) shuffle(o.idx, o.n);
    o.written = calloc((size_t)o.n, 1);
    if (!o.written) exit(2);
    for (int64_t r = 0; r < m; r++) o.written[o.idx[r]] = 1;
    o.rows = (lstm_rows){o.block, ld, use_idx ? o.idx : NULL};
    return o;
}

static int result_untouched(const result *o) { /* the storage rows not given */
    for (int64_t r = 0; r < o->n; r++)
        if (!o->written[r])
            for (int64_t j = 0; j < o->rows.ld; j++)
                if (!same_bits(o->block[r * o->rows.ld + j], SENTINEL)) return 0;
    return 1;
}

static void result_free(result *o) { free(o->block), free(o->idx), free(o->written); }

/*
 * A (K, N) matrix: dense (row-major) and packed in panels of `gates` strips,
 * zero beyond N, of weight type `type`: for F16 the values are n * 2^-11
 * (exact halves, written here from their definition), for I8 q * scale with q
 * in [-127, 127] and a random scale per column (dense holds the float product).
 */
typedef struct {
    float *dense, *packed, *scale;
    int type;
    int32_t *colsum; /* I8: lstm_i8_colsums of packed */
} matrix;

/* the half of v = n * 2^-11, 0 < |n| < 2048 or v = 0 (|v| < 1: normal halves) */
static uint16_t half_bits(float v) {
    if (v == 0.0f) return 0;
    int e;
    const double m = frexp(fabs(v), &e); /* |v| = m 2^e, m in [0.5, 1) */
    return (uint16_t)((v < 0 ? 0x8000 : 0) | (e - 1 + 15) << 10 | (int)((m * 2 - 1) * 1024));
}

static matrix matrix_new_typed(int type, int64_t K, int64_t N, int gates, float lo, float hi) {
    const int64_t w = gates * LSTM_TILE, panels = (N + w - 1) / w;
    const int64_t Kw = type == LSTM_WEIGHTS_I8 ? lstm_i8_k(K) : K;
    matrix b = {floats(K * N, 0), floats(panels * Kw * w, 0), floats(panels * w, 0), type,
                calloc((size_t)(panels * w), sizeof(int32_t))};
    for (int64_t col = 0; col < N; col++) b.scale[col] = rnd_f(0.001f, 0.02f);
    for (int64_t k = 0; k < K; k++)
        for (int64_t col = 0; col < N; col++) {
            float v = rnd_f(lo, hi);
            if (type == LSTM_WEIGHTS_F16) {
                v = (float)ldexp((double)(int64_t)ldexp(v, 11), -11);
                ((uint16_t *)b.packed)[lstm_packed_at(K, gates, k, col)] = half_bits(v);
            } else if (type == LSTM_WEIGHTS_I8) {
                const int8_t q = (int8_t)rnd_i(-127, 127);
                v = (float)q * b.scale[col];
                ((int8_t *)b.packed)[lstm_packed_i8_at(K, gates, k, col)] = q;
            } else {
                b.packed[lstm_packed_at(K, gates, k, col)] = v;
            }
            b.dense[k * N + col] = v;
        }
    if (type == LSTM_WEIGHTS_I8) lstm_i8_colsums((const int8_t *)b.packed, K, panels * w, b.colsum);
    return b;
}

static void matrix_free(matrix *b) { free(b->dense), free(b->packed), free(b->scale), free(b->colsum); }

static lstm_wmat wmat_of(const matrix *b) { return (lstm_wmat){b->packed, b->scale, b->type, b->colsum}; }

/* the kernel set's kernels for reduced weights, or the reference's it falls back to */
static lstm_gemm_r_fn gemm_r_of(const lstm_kernels *k) {
    return k->gemm_r ? k->gemm_r : lstm_kernels_scalar.gemm_r;
}
static lstm_cell_r_fn cell_r_of(const lstm_kernels *k) {
    return k->cell_r ? k->cell_r : lstm_kernels_scalar.cell_r;
}

static const char *const TYPE_NAMES[] = {"f32", "f16", "i8"};

/* ------------------------------------------------------------------ gemm */

static void test_gemm_typed(const lstm_kernels *k, int type, int64_t m, int64_t K, int64_t ncols,
                            int gates, int use_idx, int use_bias, int64_t p0, int64_t p1) {
    const int64_t w = gates * LSTM_TILE, panels = (ncols + w - 1) / w;
    const int64_t ldc = panels * w + 5;
    operand a = operand_new(m, K, use_idx, -1, 1);
    matrix b = matrix_new_typed(type, K, ncols, gates, -1, 1);
    float *bias = floats(panels * w, 0); /* packed: bias + p w + j is column p w + j */
    for (int64_t col = 0; col < ncols; col++) bias[col] = rnd_f(-1, 1);
    result c = result_new(m, ldc, use_idx), cp = result_new(m, ldc, use_idx);
    /* and again with a's rows packed (kernels.h), which must give the same bits */
    float *ap = floats(m / LSTM_PACK_ROWS * LSTM_PACK_ROWS * K + 1, 0);
    lstm_pack_rows(a.rows, 0, m / LSTM_PACK_ROWS, K, ap);
    for (int packed = 0; packed < 2; packed++) {
        const lstm_rows out = packed ? cp.rows : c.rows;
        const float *rows_packed = packed ? ap : NULL;
        if (type == LSTM_WEIGHTS_F32)
            k->gemm(m, K, a.rows, rows_packed, b.packed, gates, use_bias ? bias : NULL, p0, p1, ncols, out);
        else
            gemm_r_of(k)(m, K, a.rows, rows_packed, wmat_of(&b), gates, use_bias ? bias : NULL, p0, p1,
                         ncols, out);
    }
    int bad = 0;
    for (int64_t r = 0; r < m; r++)
        bad += memcmp(lstm_row(c.rows, r), lstm_row(cp.rows, r), (size_t)ldc * sizeof(float)) != 0;
    CHECK(bad == 0, "%s %s gemm m=%ld K=%ld n=%ld: %d rows differ with the rows packed", k->name,
          TYPE_NAMES[type], (long)m, (long)K, (long)ncols, bad);
    if (!result_untouched(&cp)) {
        bad++;
        CHECK(0, "%s gemm on packed rows wrote to a row it was not given", k->name);
    }
    for (int64_t r = 0; r < m && bad < 5; r++) {
        const float *ar = lstm_row(a.rows, r), *cr = lstm_row(c.rows, r);
        for (int64_t col = 0; col < ldc && bad < 5; col++) {
            if (col < ncols && col / w >= p0 && col / w < p1) {
                double want = use_bias ? bias[col] : 0.0, mag = fabs(want);
                for (int64_t kk = 0; kk < K; kk++) {
                    const double t = (double)ar[kk] * b.dense[kk * ncols + col];
                    want += t, mag += fabs(t);
                }
                if (!close_enough(cr[col], want, 1e-6 * (mag + 1), 1e-5)) {
                    bad++;
                    CHECK(0, "%s %s gemm m=%ld K=%ld n=%ld gates=%d idx=%d bias=%d: c[%ld][%ld]=%g want %g",
                          k->name, TYPE_NAMES[type], (long)m, (long)K, (long)ncols, gates, use_idx, use_bias,
                          (long)r, (long)col, cr[col], want);
                }
            } else if (!same_bits(cr[col], SENTINEL)) {
                bad++;
                CHECK(0, "%s gemm gates=%d panels [%ld,%ld) n=%ld wrote outside its range: row %ld col %ld",
                      k->name, gates, (long)p0, (long)p1, (long)ncols, (long)r, (long)col);
            }
        }
    }
    if (!result_untouched(&c)) {
        bad++;
        CHECK(0, "%s gemm wrote to a row it was not given", k->name);
    }
    CHECK(bad == 0, "%s %s gemm case failed", k->name, TYPE_NAMES[type]);
    operand_free(&a), matrix_free(&b), free(bias), result_free(&c), result_free(&cp), free(ap);
}

static void test_gemm(const lstm_kernels *k, int64_t m, int64_t K, int64_t ncols, int gates,
                      int use_idx, int use_bias, int64_t p0, int64_t p1) {
    test_gemm_typed(k, LSTM_WEIGHTS_F32, m, K, ncols, gates, use_idx, use_bias, p0, p1);
}

/* ------------------------------------------------------------------ cell */

static const char *const KIND_NAMES[] = {"lstm", "gru", "rnn_tanh", "rnn_relu"};

enum { SPECIAL_NONE, SPECIAL_A, SPECIAL_G, SPECIAL_STATE, N_SPECIAL };

static float special_value(void) {
    const float v[3] = {NAN, INFINITY, -INFINITY};
    return v[rnd_i(0, 2)];
}

/*
 * One step of kind `kind` for rows < m, tiles [t0, t1) against the equations
 * of kernels.h. special puts NaN or +-Inf into a (SPECIAL_A), into g
 * (SPECIAL_G) or into c (LSTM) / b_hh (GRU) (SPECIAL_STATE); the reference
 * computes with them, as torch does.
 */
/*
 * The int8 step's quantization of one row of a, from its definition in
 * lstm_infer.h: with Kq = K rounded up to 4 and qmax = min(32767,
 * INT32_MAX / (127 Kq)), qa[k] = round-half-even(a[k] * (qmax / max|a|));
 * returns the scale max|a| / qmax (0 below 2^-100, NaN for a row with NaN or
 * Inf).
 */
static double quantize_ref(const float *a, int64_t K, int32_t *qa) {
    const int64_t Kq = (K + 3) / 4 * 4, bound = INT32_MAX / (127 * (Kq ? Kq : 1));
    const int64_t qmax = bound < 32767 ? bound : 32767;
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        if (!isfinite(a[k])) return NAN;
        amax = fmaxf(amax, fabsf(a[k]));
    }
    const int live = amax >= 0x1p-100f;
    const float inv = live ? (float)qmax / amax : 0.0f;
    for (int64_t k = 0; k < K; k++) qa[k] = (int32_t)nearbyintf(a[k] * inv);
    return live ? amax / (float)qmax : 0.0;
}

static void test_cell_typed(const lstm_kernels *k, int type, int kind, int64_t m, int64_t K,
                            int64_t H, int use_idx, int64_t t0, int64_t t1, int use_bhh,
                            int special);

static void test_cell(const lstm_kernels *k, int kind, int64_t m, int64_t K, int64_t H,
                      int use_idx, int64_t t0, int64_t t1, int use_bhh, int special) {
    test_cell_typed(k, LSTM_WEIGHTS_F32, kind, m, K, H, use_idx, t0, t1, use_bhh, special);
}

/* For I8 the reference quantizes each row of a as the kernels must, then sums exactly. */
static void test_cell_typed(const lstm_kernels *k, int type, int kind, int64_t m, int64_t K,
                            int64_t H, int use_idx, int64_t t0, int64_t t1, int use_bhh,
                            int special) {
    const int gates = lstm_gates(kind), w = gates * LSTM_TILE;
    const int lstm = kind == LSTM_CELL_LSTM, gru = kind == LSTM_CELL_GRU;
    const int64_t tiles = (H + LSTM_TILE - 1) / LSTM_TILE, Hp = tiles * LSTM_TILE;
    if (gru) K = H;
    operand a = operand_new(m, K, use_idx, -1, 1);
    /* g: only the columns of tiles [t0, t1) are the kernel's to read; the rest is NaN */
    operand g = operand_new(m, tiles * w, use_idx, -2, 2);
    for (int64_t r = 0; r < (use_idx ? m + 3 : m); r++)
        for (int64_t col = 0; col < tiles * w; col++)
            if (col < t0 * w || col >= t1 * w) g.block[r * g.rows.ld + col] = NAN;
    matrix wm = matrix_new_typed(type, K, tiles * w, gates, -0.5f, 0.5f);
    int32_t *qa = calloc((size_t)(K > 0 ? K : 1), sizeof(int32_t));
    float *b_hh = NULL;
    if (gru && use_bhh) {
        b_hh = floats(tiles * w, 0);
        for (int64_t i = 0; i < tiles * w; i++) b_hh[i] = rnd_f(-1, 1);
    }
    const int64_t ldc = Hp + rnd_i(0, 7);
    float *c = lstm ? floats(m * ldc, 0) : NULL, *c0 = lstm ? floats(m * ldc, 0) : NULL;
    for (int64_t i = 0; lstm && i < m * ldc; i++) c[i] = c0[i] = rnd_f(-2, 2);
    const int64_t ldh = Hp + 2;
    result h = result_new(m, ldh, use_idx);

    if (special == SPECIAL_A && m > 0 && K > 0)
        for (int i = 0; i < 2; i++) lstm_row(a.rows, rnd_i(0, m - 1))[rnd_i(0, K - 1)] = special_value();
    if (special == SPECIAL_G && m > 0)
        for (int i = 0; i < 6; i++)
            lstm_row(g.rows, rnd_i(0, m - 1))[rnd_i(t0 * w, t1 * w - 1)] = special_value();
    if (special == SPECIAL_STATE && lstm && m > 0) {
        for (int i = 0; i < 6; i++)
            c[rnd_i(0, m - 1) * ldc + rnd_i(t0 * LSTM_TILE, t1 * LSTM_TILE - 1)] = special_value();
        memcpy(c0, c, (size_t)(m * ldc) * sizeof(float));
    }
    if (special == SPECIAL_STATE && b_hh)
        for (int i = 0; i < 3; i++) b_hh[rnd_i(t0 * w, t1 * w - 1)] = special_value();

    if (type == LSTM_WEIGHTS_F32)
        k->cell(kind, m, K, a.rows, wm.packed, b_hh, g.rows, c, ldc, t0, t1, H, h.rows);
    else
        cell_r_of(k)(kind, m, K, a.rows, wmat_of(&wm), b_hh, g.rows, c, ldc, t0, t1, H, h.rows);

    int bad = 0;
    for (int64_t r = 0; r < m && bad < 5; r++) {
        const float *ar = lstm_row(a.rows, r), *gr = lstm_row(g.rows, r), *hr = lstm_row(h.rows, r);
        const double sa = type == LSTM_WEIGHTS_I8 ? quantize_ref(ar, K, qa) : 0.0;
        for (int64_t unit = 0; unit < ldh && bad < 5; unit++) {
            const int64_t t = unit / LSTM_TILE, u = unit % LSTM_TILE;
            const int in_range = unit < Hp && t >= t0 && t < t1;
            double q[LSTM_MAX_GATES], gi[LSTM_MAX_GATES], mag[LSTM_MAX_GATES];
            double cn = lstm && unit < ldc ? c0[r * ldc + unit] : 0, hn = 0;
            if (in_range && (lstm || unit < H)) {
                for (int j = 0; j < gates; j++) {
                    const int64_t col = t * w + j * LSTM_TILE + u;
                    gi[j] = gr[col];
                    q[j] = gru ? (b_hh ? b_hh[col] : 0.0) : gi[j];
                    mag[j] = fabs(q[j]) + (gru ? fabs(gi[j]) : 0);
                    if (type == LSTM_WEIGHTS_I8) { /* exact int sums, then one product */
                        int64_t isum = 0;
                        for (int64_t kk = 0; kk < K && !isnan(sa); kk++)
                            isum += qa[kk] * (int64_t)lrint(wm.dense[kk * tiles * w + col] / wm.scale[col]);
                        const double term = (double)isum * (double)(float)(sa * wm.scale[col]);
                        q[j] = isnan(sa) ? NAN : q[j] + term, mag[j] += fabs(term);
                        continue;
                    }
                    for (int64_t kk = 0; kk < K; kk++) {
                        const double term = (double)ar[kk] * wm.dense[kk * tiles * w + col];
                        q[j] += term, mag[j] += fabs(term);
                    }
                }
            }
            double tol = 2e-6;
            if (in_range && lstm) {
                cn = sigm(q[1]) * cn + sigm(q[0]) * tanh(q[2]);
                hn = sigm(q[3]) * tanh(cn);
                /* float rounding of the gate sums; the activations' slopes are at most 1 */
                tol += 1e-6 * (fin(mag[0]) + fin(mag[1]) + fin(mag[2]) + fin(mag[3]));
            } else if (in_range && gru && unit < H) {
                const double hp = ar[unit];
                const double rg = sigm(gi[0] + q[0]), z = sigm(gi[1] + q[1]);
                const double n = tanh(gi[2] + rg * q[2]);
                hn = (1 - z) * n + z * hp;
                tol += 1e-6 * (fin(mag[0]) * (1 + fin(fabs(q[2]))) + fin(mag[2]) +
                               fin(mag[1]) * (2 + fin(fabs(hp))));
            } else if (in_range && unit < H) {
                hn = kind == LSTM_CELL_RNN_RELU ? relu(q[0]) : tanh(q[0]);
                tol += 1e-6 * fin(mag[0]);
            }
            if (lstm && unit < ldc) {
                const float got = c[r * ldc + unit];
                if (in_range ? !close_enough(got, cn, tol, 1e-5) : !same_bits(got, c0[r * ldc + unit])) {
                    bad++;
                    CHECK(0, "%s %s lstm cell m=%ld K=%ld H=%ld idx=%d tiles [%ld,%ld) special=%d: c[%ld][%ld]=%g want %g",
                          k->name, TYPE_NAMES[type], (long)m, (long)K, (long)H, use_idx, (long)t0, (long)t1, special,
                          (long)r, (long)unit, got, cn);
                }
            }
            const float got = hr[unit];
            if (in_range && unit < H) {
                if (!close_enough(got, hn, tol, 1e-5)) {
                    bad++;
                    CHECK(0, "%s %s %s cell m=%ld K=%ld H=%ld idx=%d tiles [%ld,%ld) b_hh=%d special=%d: h[%ld][%ld]=%g want %g",
                          k->name, TYPE_NAMES[type], KIND_NAMES[kind], (long)m, (long)K, (long)H, use_idx, (long)t0,
                          (long)t1, b_hh != NULL, special, (long)r, (long)unit, got, hn);
                }
            } else if (!same_bits(got, SENTINEL)) {
                bad++;
                CHECK(0, "%s %s cell wrote h outside its range: row %ld unit %ld (H=%ld, tiles [%ld,%ld))",
                      k->name, KIND_NAMES[kind], (long)r, (long)unit, (long)H, (long)t0, (long)t1);
            }
        }
    }
    if (!result_untouched(&h)) {
        bad++;
        CHECK(0, "%s %s cell wrote to an h row it was not given", k->name, KIND_NAMES[kind]);
    }
    CHECK(bad == 0, "%s %s %s cell case failed", k->name, TYPE_NAMES[type], KIND_NAMES[kind]);
    operand_free(&a), operand_free(&g), matrix_free(&wm), free(b_hh), free(c), free(c0), free(qa);
    result_free(&h);
}

/* ------------------------------------------------------------------ activations */

/*
 * Relative error of an activation over the points xs, through the cell
 * kernel with K = 1, a = 0 (the sums are g): what 0..2 = sigmoid, tanh
 * (through the LSTM: c_0 = 0 and the other gate saturated at 40, where
 * sigmoid and tanh are 1 within 1e-17, so c = sigmoid(x) or tanh(x) alone),
 * 3 = tanh through the RNN cell (h = tanh(x)). Points whose exact value is
 * below FLT_MIN are skipped.
 */
static double activation_error(const lstm_kernels *k, int what, const float *xs, int64_t n) {
    const int kind = what == 3 ? LSTM_CELL_RNN_TANH : LSTM_CELL_LSTM;
    const int w = lstm_gates(kind) * LSTM_TILE, of_tanh = what != 0;
    const int64_t m = (n + LSTM_TILE - 1) / LSTM_TILE;
    float *a = floats(m, 0), *wt = floats(w, 0), *g = floats(m * w, 0);
    float *c = floats(m * LSTM_TILE, 0), *h = floats(m * LSTM_TILE, 0);
    for (int64_t p = 0; p < m * LSTM_TILE; p++) {
        float *gr = g + p / LSTM_TILE * w + p % LSTM_TILE;
        const float x = p < n ? xs[p] : 0.0f;
        if (kind == LSTM_CELL_RNN_TANH) {
            gr[0] = x;
        } else {
            gr[0] = of_tanh ? 40.0f : x;             /* i */
            gr[2 * LSTM_TILE] = of_tanh ? x : 40.0f; /* g */
        }
    }
    k->cell(kind, m, 1, (lstm_rows){a, 1, NULL}, wt, NULL, (lstm_rows){g, w, NULL},
            kind == LSTM_CELL_LSTM ? c : NULL, LSTM_TILE, 0, 1, LSTM_TILE,
            (lstm_rows){h, LSTM_TILE, NULL});
    const float *got = kind == LSTM_CELL_LSTM ? c : h;
    double worst = 0;
    for (int64_t p = 0; p < n; p++) {
        const double x = xs[p], want = of_tanh ? tanh(x) : 1.0 / (1.0 + exp(-x));
        if (fabs(want) < FLT_MIN) continue;
        const double err = fabs(got[p] - want) / fabs(want);
        if (!(err <= worst)) worst = err; /* NaN sticks */
    }
    free(a), free(wt), free(g), free(c), free(h);
    return worst;
}

/* relu through the RNN cell: exactly max(x, 0), NaN kept; returns the points that differ */
static int64_t relu_mismatches(const lstm_kernels *k, const float *xs, int64_t n) {
    const int64_t m = (n + LSTM_TILE - 1) / LSTM_TILE;
    float *a = floats(m, 0), wt[LSTM_TILE] = {0}, *g = floats(m * LSTM_TILE, 0);
    float *h = floats(m * LSTM_TILE, 0);
    memcpy(g, xs, (size_t)n * sizeof(float));
    k->cell(LSTM_CELL_RNN_RELU, m, 1, (lstm_rows){a, 1, NULL}, wt, NULL,
            (lstm_rows){g, LSTM_TILE, NULL}, NULL, 0, 0, 1, LSTM_TILE,
            (lstm_rows){h, LSTM_TILE, NULL});
    int64_t bad = 0;
    for (int64_t p = 0; p < n; p++) {
        const float want = (float)relu(xs[p]);
        bad += isnan(want) ? !isnan(h[p]) : h[p] != want;
    }
    free(a), free(g), free(h);
    return bad;
}

/* ~1e-7 relative everywhere, near 0 (tanh) and deep in the tails included */
static void test_activation_accuracy(const lstm_kernels *k) {
    enum { N = 120000 };
    static float xs[N];
    int64_t n = 0;
    for (int i = 0; i <= 6000; i++) { /* tanh: +-1e-30 .. +-20, log-spaced, and a fine linear grid */
        const float x = (float)pow(10.0, -30.0 + 31.30103 * i / 6000);
        xs[n++] = x, xs[n++] = -x;
    }
    for (int i = 0; i <= 48000; i++) xs[n++] = -12.0f + 24.0f * (float)i / 48000;
    const double et = activation_error(k, 1, xs, n), et_rnn = activation_error(k, 3, xs, n);
    n = 0;
    for (int i = 0; i <= 57500; i++) xs[n++] = -86.0f + 116.0f * (float)i / 57500; /* sigmoid */
    const double es = activation_error(k, 0, xs, n);
    n = 0; /* relu: signed zeros, denormals, the extremes, NaN, +-Inf, and a grid */
    const float edges[] = {0.0f, -0.0f, FLT_MIN, -FLT_MIN, 1e-45f, -1e-45f, FLT_MAX, -FLT_MAX,
                           NAN, -NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++) xs[n++] = edges[i];
    for (int i = 0; i <= 20000; i++) xs[n++] = -100.0f + 200.0f * (float)i / 20000;
    const int64_t er = relu_mismatches(k, xs, n);
    printf("%s activations: max relative error sigmoid %.2g, tanh %.2g (rnn %.2g); relu %ld of %ld differ\n",
           k->name, es, et, et_rnn, (long)er, (long)n);
    CHECK(es <= 4e-7, "%s sigmoid max relative error %.3g", k->name, es);
    CHECK(et <= 4e-7, "%s tanh max relative error %.3g", k->name, et);
    CHECK(et_rnn <= 4e-7, "%s tanh (rnn) max relative error %.3g", k->name, et_rnn);
    CHECK(er == 0, "%s relu: %ld points differ from max(x, 0)", k->name, (long)er);
}

/* ------------------------------------------------------------------ reduced weights */

/* every half -> float: kernels.h's conversion (the scalar kernels') against F16C */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("f16c"))) static int64_t half_mismatches_f16c(void) {
    int64_t bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const float want = _cvtsh_ss((unsigned short)h), got = lstm_half_to_float((uint16_t)h);
        bad += !same_bits(got, want); /* NaN payloads included */
    }
    return bad;
}
#endif

/*
 * The kernels on float16 and int8 weights against the same double-precision
 * references (int8: the reference quantizes each row of a from the
 * definition): every kind, one row and many, row index tables, tile and panel
 * ranges, K across K-blocks and not a multiple of 4, NaN and Inf.
 */
static void test_reduced(const lstm_kernels *k) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    unsigned eax, ebx, ecx, edx;
    if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29))) { /* F16C */
        const int64_t bad = half_mismatches_f16c();
        CHECK(bad == 0, "%ld halves convert differently from F16C", (long)bad);
    }
#endif
    const int64_t Ks[] = {1, 3, 7, 16, 37, 65, 300};
    const int64_t ms[] = {0, 1, 2, 5, 7, 13, 49};
    for (int type = LSTM_WEIGHTS_F16; type <= LSTM_WEIGHTS_I8; type++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
            for (size_t mi = 0; mi < sizeof ms / sizeof *ms; mi++) {
                const int64_t m = ms[mi], K = Ks[ki];
                const int use_idx = (int)(rnd_u64() & 1);
                for (int gates = 1; gates <= LSTM_MAX_GATES; gates++) {
                    const int64_t w = gates * LSTM_TILE, ncols = rnd_i(1, 200);
                    const int64_t panels = (ncols + w - 1) / w;
                    const int64_t p0 = rnd_i(0, panels - 1), p1 = rnd_i(p0 + 1, panels);
                    test_gemm_typed(k, type, m, K, ncols, gates, use_idx, (int)(rnd_u64() & 1), p0, p1);
                }
                for (int kind = 0; kind < 4; kind++) {
                    const int64_t H = kind == LSTM_CELL_GRU ? K : rnd_i(1, 70);
                    const int64_t tiles = (H + 15) / 16;
                    test_cell_typed(k, type, kind, m, K, H, use_idx, 0, tiles, 1, SPECIAL_NONE);
                    const int64_t t0 = rnd_i(0, tiles - 1), t1 = rnd_i(t0 + 1, tiles);
                    test_cell_typed(k, type, kind, m, K, H, use_idx, t0, t1, (int)(rnd_u64() & 1),
                                    (int)rnd_i(0, N_SPECIAL - 1));
                }
            }
    for (int type = LSTM_WEIGHTS_F16; type <= LSTM_WEIGHTS_I8; type++) {
        test_gemm_typed(k, type, 101, 530, 130, 4, 1, 1, 0, 3);
        for (int kind = 0; kind < 4; kind++) {
            /* one row over more tiles than a one-row chunk */
            test_cell_typed(k, type, kind, 1, 20, 530, kind & 1, 0, 34, kind & 1, SPECIAL_NONE);
            test_cell_typed(k, type, kind, 1, 20, 530, 1, 3, 30, 0, SPECIAL_NONE);
            test_cell_typed(k, type, kind, 9, 530, 40, 1, 0, 3, 1, SPECIAL_NONE);
            for (int special = 0; special < N_SPECIAL; special++) {
                test_cell_typed(k, type, kind, 1, 33, 33, 0, 0, 3, 1, special);
                test_cell_typed(k, type, kind, 7, 33, 33, 1, 0, 3, 0, special);
            }
        }
    }
}

/* ------------------------------------------------------------------ a row alone */

/*
 * A row alone (m = 1: a stream, or the last sequence still running) gets the
 * same bits from gemm and cell as it does among m rows: forward.c runs a
 * step's rows together or alone depending on the other lengths, and a
 * sequence must not round differently for that.
 */
static void test_row_alone(const lstm_kernels *k, int kind, int64_t m, int64_t K, int64_t H) {
    const int gates = lstm_gates(kind), w = gates * LSTM_TILE;
    const int64_t tiles = (H + LSTM_TILE - 1) / LSTM_TILE, Hp = tiles * LSTM_TILE, N = tiles * w;
    if (kind == LSTM_CELL_GRU) K = H;
    operand a = operand_new(m, K, 1, -1, 1), g = operand_new(m, N, 1, -2, 2);
    matrix wm = matrix_new_typed(LSTM_WEIGHTS_F32, K, N, gates, -0.5f, 0.5f);
    float *bias = floats(N, 0), *c_all = floats(m * Hp, 0), *c_one = floats(m * Hp, 0);
    float *h_all = floats(m * Hp, 0), *h_one = floats(Hp, 0);
    float *y_all = floats(m * N, 0), *y_one = floats(N, 0);
    for (int64_t i = 0; i < N; i++) bias[i] = rnd_f(-1, 1);
    for (int64_t i = 0; i < m * Hp; i++) c_all[i] = c_one[i] = rnd_f(-2, 2);
    k->cell(kind, m, K, a.rows, wm.packed, bias, g.rows, c_all, Hp, 0, tiles, H,
            (lstm_rows){h_all, Hp, NULL});
    k->gemm(m, K, a.rows, NULL, wm.packed, gates, bias, 0, tiles, N, (lstm_rows){y_all, N, NULL});
    int differ = 0;
    for (int64_t r = 0; r < m; r++) {
        k->cell(kind, 1, K, lstm_rows_from(a.rows, r), wm.packed, bias, lstm_rows_from(g.rows, r),
                c_one + r * Hp, Hp, 0, tiles, H, (lstm_rows){h_one, Hp, NULL});
        k->gemm(1, K, lstm_rows_from(a.rows, r), NULL, wm.packed, gates, bias, 0, tiles, N,
                (lstm_rows){y_one, N, NULL});
        differ += memcmp(h_one, h_all + r * Hp, (size_t)H * sizeof(float)) != 0;
        differ += memcmp(c_one + r * Hp, c_all + r * Hp, (size_t)Hp * sizeof(float)) != 0;
        differ += memcmp(y_one, y_all + r * N, (size_t)N * sizeof(float)) != 0;
    }
    CHECK(differ == 0, "%s %s m=%ld K=%ld H=%ld: %d results of a row alone differ from the batch's",
          k->name, KIND_NAMES[kind], (long)m, (long)K, (long)H, differ);
    operand_free(&a), operand_free(&g), matrix_free(&wm);
    free(bias), free(c_all), free(c_one), free(h_all), free(h_one), free(y_all), free(y_one);
}

/*
 * A set's F16 kernels give bit for bit what its float32 kernels give on the
 * dequantized weights (kernels.h), one row or many, across K-blocks: so a
 * sequence alone also gets the same bits as in a batch on half weights.
 */
static void test_half_as_float(const lstm_kernels *k, int kind, int64_t m, int64_t K, int64_t H) {
    if (!k->gemm_r || !k->cell_r) return; /* a set that falls back computes the reference's */
    const int gates = lstm_gates(kind), w = gates * LSTM_TILE;
    const int64_t tiles = (H + LSTM_TILE - 1) / LSTM_TILE, Hp = tiles * LSTM_TILE, N = tiles * w;
    if (kind == LSTM_CELL_GRU) K = H;
    operand a = operand_new(m, K, 1, -1, 1), g = operand_new(m, N, 1, -2, 2);
    matrix wh = matrix_new_typed(LSTM_WEIGHTS_F16, K, N, gates, -0.5f, 0.5f);
    float *wf = floats(tiles * K * w, 0); /* the same values packed as float32 */
    for (int64_t kk = 0; kk < K; kk++)
        for (int64_t col = 0; col < N; col++) wf[lstm_packed_at(K, gates, kk, col)] = wh.dense[kk * N + col];
    float *bias = floats(N, 0), *c_f = floats(m * Hp, 0), *c_h = floats(m * Hp, 0);
    float *h_f = floats(m * Hp, 0), *h_h = floats(m * Hp, 0), *y_f = floats(m * N, 0), *y_h = floats(m * N, 0);
    for (int64_t i = 0; i < N; i++) bias[i] = rnd_f(-1, 1);
    for (int64_t i = 0; i < m * Hp; i++) c_f[i] = c_h[i] = rnd_f(-2, 2);
    k->cell(kind, m, K, a.rows, wf, bias, g.rows, c_f, Hp, 0, tiles, H, (lstm_rows){h_f, Hp, NULL});
    k->cell_r(kind, m, K, a.rows, wmat_of(&wh), bias, g.rows, c_h, Hp, 0, tiles, H, (lstm_rows){h_h, Hp, NULL});
    k->gemm(m, K, a.rows, NULL, wf, gates, bias, 0, tiles, N - 5, (lstm_rows){y_f, N, NULL});
    k->gemm_r(m, K, a.rows, NULL, wmat_of(&wh), gates, bias, 0, tiles, N - 5, (lstm_rows){y_h, N, NULL});
    int differ = 0;
    for (int64_t r = 0; r < m; r++) {
        differ += memcmp(h_f + r * Hp, h_h + r * Hp, (size_t)H * sizeof(float)) != 0;
        differ += memcmp(y_f + r * N, y_h + r * N, (size_t)(N - 5) * sizeof(float)) != 0;
    }
    differ += memcmp(c_f, c_h, (size_t)(m * Hp) * sizeof(float)) != 0;
    CHECK(differ == 0, "%s %s m=%ld K=%ld H=%ld: %d results on half weights differ from float32's",
          k->name, KIND_NAMES[kind], (long)m, (long)K, (long)H, differ);
    operand_free(&a), operand_free(&g), matrix_free(&wh), free(wf);
    free(bias), free(c_f), free(c_h), free(h_f), free(h_h), free(y_f), free(y_h);
}

/*
 * A set's int8 sums are bit for bit the scalar reference's (the int32 sums
 * are exact and the epilogue is one fmaf): the RNN relu step shows them
 * unchanged (its h = relu(g + sums), no activation of the set's own).
 */
static void test_i8_as_scalar(const lstm_kernels *k, int64_t m, int64_t K, int64_t H) {
    if (!k->cell_r) return;
    const int64_t tiles = (H + LSTM_TILE - 1) / LSTM_TILE, Hp = tiles * LSTM_TILE;
    operand a = operand_new(m, K, 1, -1, 1), g = operand_new(m, Hp, 1, -2, 2);
    matrix wq = matrix_new_typed(LSTM_WEIGHTS_I8, K, Hp, 1, -0.5f, 0.5f);
    float *h_k = floats(m * Hp, 0), *h_s = floats(m * Hp, 0);
    k->cell_r(LSTM_CELL_RNN_RELU, m, K, a.rows, wmat_of(&wq), NULL, g.rows, NULL, 0, 0, tiles, H,
              (lstm_rows){h_k, Hp, NULL});
    lstm_kernels_scalar.cell_r(LSTM_CELL_RNN_RELU, m, K, a.rows, wmat_of(&wq), NULL, g.rows, NULL, 0, 0,
                               tiles, H, (lstm_rows){h_s, Hp, NULL});
    int differ = 0;
    for (int64_t r = 0; r < m; r++) differ += memcmp(h_k + r * Hp, h_s + r * Hp, (size_t)H * sizeof(float)) != 0;
    CHECK(differ == 0, "%s int8 m=%ld K=%ld H=%ld: %d rows differ from the scalar reference's", k->name,
          (long)m, (long)K, (long)H, differ);
    /* and with the weights widened to int16 beside them (lstm_wmat.wide, as forward.c gives a batch) */
    const int64_t n = lstm_i8_k(K) * Hp;
    int16_t *wide = aligned_alloc(64, (size_t)((n * 2 + 63) / 64 * 64));
    (k->widen ? k->widen : lstm_kernels_scalar.widen)(LSTM_WEIGHTS_I8, wq.packed, wide, n);
    for (int64_t i = 0; i < n; i++) differ += wide[i] != ((const int8_t *)wq.packed)[i];
    CHECK(differ == 0, "%s widen: %d int16 differ from their int8", k->name, differ);
    lstm_wmat ww = wmat_of(&wq);
    ww.wide = wide;
    memset(h_k, 0, (size_t)(m * Hp) * sizeof(float));
    k->cell_r(LSTM_CELL_RNN_RELU, m, K, a.rows, ww, NULL, g.rows, NULL, 0, 0, tiles, H, (lstm_rows){h_k, Hp, NULL});
    for (int64_t r = 0; r < m; r++) differ += memcmp(h_k + r * Hp, h_s + r * Hp, (size_t)H * sizeof(float)) != 0;
    CHECK(differ == 0, "%s int8 m=%ld K=%ld H=%ld, widened: %d rows differ from the scalar reference's", k->name,
          (long)m, (long)K, (long)H, differ);
    free(wide);
    operand_free(&a), operand_free(&g), matrix_free(&wq), free(h_k), free(h_s);
}

/* ------------------------------------------------------------------ all */

static void test_kernels(const lstm_kernels *k) {
    /* every row-tail shape (m mod 6), a row chunk of the cell (48) and past it,
     * several K-blocks (K > 256); for the GRU K is H */
    const int64_t Ks[] = {1, 2, 7, 16, 37, 65, 300};
    const int64_t ms[] = {0, 1, 2, 3, 4, 5, 6, 7, 13, 48, 49, 101};
    const int64_t n_K = sizeof Ks / sizeof *Ks, n_m = sizeof ms / sizeof *ms;
    for (int64_t ki = 0; ki < n_K; ki++)
        for (int64_t mi = 0; mi < n_m; mi++)
            for (int use_idx = 0; use_idx < 2; use_idx++) {
                const int64_t m = ms[mi], K = Ks[ki];
                if (m > 13 && K > 65 && use_idx == 0) continue; /* the big ones once */
                for (int gates = 1; gates <= LSTM_MAX_GATES; gates++) {
                    const int64_t w = gates * LSTM_TILE, ncols = rnd_i(1, 200);
                    const int64_t panels = (ncols + w - 1) / w;
                    test_gemm(k, m, K, ncols, gates, use_idx, (int)(rnd_u64() & 1), 0, panels);
                    const int64_t p0 = rnd_i(0, panels - 1), p1 = rnd_i(p0 + 1, panels);
                    test_gemm(k, m, K, ncols, gates, use_idx, 1, p0, p1);
                }
                for (int kind = 0; kind < 4; kind++) {
                    const int64_t H = kind == LSTM_CELL_GRU ? K : rnd_i(1, 70);
                    const int64_t tiles = (H + 15) / 16;
                    test_cell(k, kind, m, K, H, use_idx, 0, tiles, 1, SPECIAL_NONE);
                    const int64_t t0 = rnd_i(0, tiles - 1), t1 = rnd_i(t0 + 1, tiles);
                    test_cell(k, kind, m, K, H, use_idx, t0, t1, (int)(rnd_u64() & 1),
                              (int)rnd_i(0, N_SPECIAL - 1));
                }
            }
    /* every gate count on a 530-wide K (three K-blocks), several row blocks */
    for (int gates = 1; gates <= LSTM_MAX_GATES; gates++) test_gemm(k, 101, 530, 130, gates, 1, 1, 0, (130 + 16 * gates - 1) / (16 * gates));
    /* a K so wide that the rows A keeps in L2 (avx2: from the CPU's L2 size, 48 at
     * least) are fewer than m: several row blocks on any cache */
    test_gemm(k, 101, 4100, 70, 4, 1, 1, 0, 2);
    test_cell(k, LSTM_CELL_LSTM, 101, 4100, 40, 1, 0, 3, 1, SPECIAL_NONE);
    test_cell(k, LSTM_CELL_RNN_TANH, 101, 4100, 40, 1, 0, 3, 1, SPECIAL_NONE);
    for (int kind = 0; kind < 4; kind++) {
        /* one row over more tiles than a one-row chunk (8 LSTM, 10 GRU, 32 RNN tiles) */
        test_cell(k, kind, 1, 20, 530, kind & 1, 0, 34, kind & 1, SPECIAL_NONE);
        test_cell(k, kind, 1, 20, 530, 1, 3, 30, 0, SPECIAL_NONE);
        test_cell(k, kind, 101, 530, 40, 1, 0, 3, 1, SPECIAL_NONE);
        /* the GRU with and without b_hh, every special case, both row paths */
        for (int special = 0; special < N_SPECIAL; special++)
            for (int use_bhh = 0; use_bhh < 2; use_bhh++) {
                test_cell(k, kind, 1, 33, 33, 0, 0, 3, use_bhh, special);
                test_cell(k, kind, 7, 33, 33, 1, 0, 3, use_bhh, special);
                test_cell(k, kind, 13, 70, 70, 1, 1, 5, use_bhh, special);
            }
    }
    for (int kind = 0; kind < 4; kind++) { /* every row-tail shape; K past one K-block */
        test_row_alone(k, kind, 11, 37, 50);
        test_row_alone(k, kind, 6, 300, 20);
        test_row_alone(k, kind, 5, 16, 32); /* the small steps (at most two tiles), full and cut */
        test_row_alone(k, kind, 3, 40, 9);
        const int64_t ms[] = {1, 2, 3, 4, 5, 7, 13, 49};
        for (size_t i = 0; i < sizeof ms / sizeof *ms; i++) { /* every row-tail shape */
            test_half_as_float(k, kind, ms[i], 37, 50);
            test_half_as_float(k, kind, ms[i], 300, 20);
        }
    }
    const int64_t i8_Ks[] = {1, 7, 16, 37, 300};
    for (size_t i = 0; i < sizeof i8_Ks / sizeof *i8_Ks; i++) {
        test_i8_as_scalar(k, 3, i8_Ks[i], 70);
        test_i8_as_scalar(k, 13, i8_Ks[i], 40); /* more rows than a microkernel's */
    }
    test_activation_accuracy(k);
    test_reduced(k);
}


int main(void) {
    const char *isas[3] = {"scalar", NULL, NULL};
    int n_isas = 1;
    char only[16] = ""; /* LSTM_INFER_ISA as given: the test covers only the set it names */
    if (getenv("LSTM_INFER_ISA")) snprintf(only, sizeof only, "%s", getenv("LSTM_INFER_ISA"));
    /* LSTM_INFER_ISA is read at the first use */
    setenv("LSTM_INFER_ISA", "scalar", 1);
    CHECK(strcmp(lstm_get_isa(), "scalar") == 0, "LSTM_INFER_ISA=scalar gave %s", lstm_get_isa());
    CHECK(lstm_set_isa("bogus") == LSTM_ERR_UNKNOWN_ISA, "set_isa bogus");
    CHECK(lstm_set_isa(NULL) != LSTM_OK, "set_isa NULL");
#if defined(__x86_64__)
    if (cpu_has_avx2()) {
        isas[n_isas++] = "avx2";
        const char *best = cpu_has_avx512() ? "avx512" : "avx2";
        CHECK(lstm_set_isa("auto") == LSTM_OK && strcmp(lstm_get_isa(), best) == 0, "auto is not %s", best);
        if (cpu_has_avx512()) isas[n_isas++] = "avx512";
        else {
            CHECK(lstm_set_isa("avx512") == LSTM_ERR_UNKNOWN_ISA, "avx512 refused without CPU support");
            printf("note: CPU has no AVX-512; avx512 kernels not tested\n");
        }
    } else {
        CHECK(lstm_set_isa("avx2") == LSTM_ERR_UNKNOWN_ISA, "avx2 refused without CPU support");
        printf("note: CPU has no AVX2+FMA; avx2 kernels not tested\n");
    }
    CHECK(lstm_set_isa("neon") == LSTM_ERR_UNKNOWN_ISA, "neon refused on x86");
#elif defined(__aarch64__)
    isas[n_isas++] = "neon"; /* aarch64 always has it */
    CHECK(lstm_set_isa("auto") == LSTM_OK && strcmp(lstm_get_isa(), "neon") == 0, "auto is not neon");
    CHECK(lstm_set_isa("avx2") == LSTM_ERR_UNKNOWN_ISA, "avx2 refused on aarch64");
    CHECK(lstm_set_isa("avx512") == LSTM_ERR_UNKNOWN_ISA, "avx512 refused on aarch64");
#endif
    keep_only_isa(*only ? only : NULL, isas, &n_isas);
    for (int i = 0; i < n_isas; i++) {
        CHECK(lstm_set_isa(isas[i]) == LSTM_OK, "set_isa %s", isas[i]);
        const lstm_kernels *k = lstm_active_kernels();
        CHECK(strcmp(k->name, isas[i]) == 0, "set_isa %s gave %s", isas[i], k->name);
        test_kernels(k);
    }
    printf("%s: %d checks, %d failures (ISAs:", failures ? "FAILED" : "OK", checks, failures);
    for (int i = 0; i < n_isas; i++) printf(" %s", isas[i]);
    printf(")\n");
    return failures ? 1 : 0;
}
