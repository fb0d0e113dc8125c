/*
 * test_reduced.c - the int8 step's integer arithmetic at its edges, on every
 * kernel set (test_kernels.c compares the reduced kernels with references
 * on random values; these values are chosen):
 *   the int32 sums at their bound: every weight +-127 and every h at the
 *   largest |q| = min(32767, INT32_MAX / (127 Kq)), for state widths where
 *   that bound changes (516, 517, 520) and at LSTM_MAX_I8_STATE, so that
 *   |sum| = K * 127 * qmax, just below 2^31; the kernel must give
 *   fmaf((float)sum, scale_h * scale_w, g) exactly;
 *   the quantization of h on ties (x.5 rounds to even) in the vector part
 *   and the tail of a row, and the largest element quantized to qmax.
 * The cell is RNN relu on one tile, so h = relu(g + sums) shows the sums.
 *
 * Links only the kernels and dispatch.c. Exits non-zero on any failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels.h"
#include "lstm_infer.h"

/* An int8 strip (one RNN tile: 16 columns, K rows) with w(k, j), scale 1. */
static int8_t *strip(int64_t K, int (*w)(int64_t k, int j), float **scale) {
    const int64_t Kq = lstm_i8_k(K);
    int8_t *q = calloc((size_t)(Kq * LSTM_TILE), 1);
    *scale = malloc(LSTM_TILE * sizeof(float));
    for (int j = 0; j < LSTM_TILE; j++) {
        (*scale)[j] = 1.0f;
        for (int64_t k = 0; k < K; k++) q[lstm_packed_i8_at(K, 1, k, j)] = (int8_t)w(k, j);
    }
    return q;
}

/* h = relu(g + a @ W) of m equal rows a (K) through cell_r, one tile, 16 units */
static void step(const lstm_kernels *k, int64_t m, int64_t K, const float *a, const int8_t *q,
                 const float *scale, float g0, float *h) {
    float *rows = malloc((size_t)(m * K) * sizeof(float)), *g = malloc((size_t)m * LSTM_TILE * sizeof(float));
    for (int64_t r = 0; r < m; r++) {
        memcpy(rows + r * K, a, (size_t)K * sizeof(float));
        for (int j = 0; j < LSTM_TILE; j++) g[r * LSTM_TILE + j] = g0;
    }
    int32_t colsum[LSTM_TILE];
    lstm_i8_colsums(q, K, LSTM_TILE, colsum);
    const lstm_wmat w = {q, scale, LSTM_WEIGHTS_I8, colsum};
    k->cell_r(LSTM_CELL_RNN_RELU, m, K, (lstm_rows){rows, K, NULL}, w, NULL,
              (lstm_rows){g, LSTM_TILE, NULL}, NULL, 0, 0, 1, LSTM_TILE, (lstm_rows){h, LSTM_TILE, NULL});
    free(rows), free(g);
}

static int w_plus(int64_t k, int j) { return 127; }
static int w_alternating(int64_t k, int j) { return k % 2 ? -127 : 127; }
static int64_t unit_k0;
static int w_unit(int64_t k, int j) { return k == unit_k0 + j ? 1 : 0; } /* column j reads k0 + j */

static void test_bound(const lstm_kernels *k, int64_t K, int alternating) {
    const int64_t Kq = lstm_i8_k(K), bound = INT32_MAX / (127 * Kq);
    const int64_t qmax = bound < 32767 ? bound : 32767;
    float *scale, *a = malloc((size_t)K * sizeof(float)), h[3 * LSTM_TILE];
    int8_t *q = strip(K, alternating ? w_alternating : w_plus, &scale);
    for (int64_t i = 0; i < K; i++) a[i] = alternating && i % 2 ? -0.75f : 0.75f; /* every |q| = qmax */
    const int64_t isum = K * 127 * qmax;
    CHECK(isum <= INT32_MAX && (Kq + 4) * 127 * qmax > INT32_MAX, "K=%ld: qmax %ld is not the bound",
          (long)K, (long)qmax);
    const float sa = 0.75f / (float)qmax, want = fmaf((float)isum, sa * 1.0f, 0.0f);
    for (int64_t m = 1; m <= 3; m += 2) {
        step(k, m, K, a, q, scale, 0.0f, h);
        for (int64_t i = 0; i < m * LSTM_TILE; i++)
            CHECK(h[i] == want, "%s K=%ld m=%ld%s: h[%ld]=%.9g want %.9g", k->name, (long)K, (long)m,
                  alternating ? " alternating" : "", (long)i, h[i], want);
    }
    free(q), free(scale), free(a);
}

/* a[0] the row's largest (qmax exactly: scale 1), then ties x.5 that round to
 * even; column j reads k0 + j */
static void test_ties(const lstm_kernels *k, int64_t K, int64_t k0) {
    const int64_t Kq = lstm_i8_k(K), bound = INT32_MAX / (127 * Kq);
    const float qmax = (float)(bound < 32767 ? bound : 32767);
    float *scale, a[64], h[LSTM_TILE];
    unit_k0 = k0;
    int8_t *q = strip(K, w_unit, &scale);
    a[0] = qmax;
    for (int64_t i = 1; i < K; i++) a[i] = (float)((i % 7) - 3) + (i % 2 ? 0.5f : -0.5f);
    step(k, 1, K, a, q, scale, 1000.0f, h);
    for (int j = 0; j < LSTM_TILE; j++) {
        const float x = a[k0 + j], lo = floorf(x), even = fmodf(lo, 2.0f) == 0.0f ? lo : lo + 1.0f;
        CHECK(h[j] == 1000.0f + even, "%s ties K=%ld: unit %d of %.1f gave %.1f, want %.1f", k->name,
              (long)K, j, x, h[j] - 1000.0f, even);
    }
    free(q), free(scale);
}

static void test_set(const lstm_kernels *k) {
    const int64_t Ks[] = {516, 517, 520, 4099, LSTM_MAX_I8_STATE};
    for (size_t i = 0; i < sizeof Ks / sizeof *Ks; i++) {
        test_bound(k, Ks[i], 0);
        test_bound(k, Ks[i], 1);
    }
    test_ties(k, 17, 1);  /* the tail only (AVX2: under 16 values) */
    test_ties(k, 40, 24); /* across the vector part (32) and the tail */
}

int main(void) {
    const char *isas[3] = {"scalar", NULL, NULL};
    int n_isas = 1;
#if defined(__x86_64__)
    if (cpu_has_avx2()) isas[n_isas++] = "avx2";
    if (cpu_has_avx512()) isas[n_isas++] = "avx512"; /* its own int8 step where the CPU has VNNI */
#elif defined(__aarch64__)
    isas[n_isas++] = "neon";
#endif
    keep_only_isa(getenv("LSTM_INFER_ISA"), isas, &n_isas);
    for (int i = 0; i < n_isas; i++) {
        CHECK(lstm_set_isa(isas[i]) == LSTM_OK, "set_isa %s", isas[i]);
        const lstm_kernels *k = lstm_active_kernels();
        test_set(k->cell_r ? k : &lstm_kernels_scalar); /* a set without reduced kernels falls back */
    }
    printf("%s: %d checks, %d failures (ISAs:", failures ? "FAILED" : "OK", checks, failures);
    for (int i = 0; i < n_isas; i++) printf(" %s", isas[i]);
    printf(")\n");
    return failures ? 1 : 0;
}
