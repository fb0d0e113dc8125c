/*
 * test_dense.c - the dense layer (lstm_dense_*): against a double-precision
 * reference, each row's bits the same whatever rows share its call (every
 * ISA the CPU has), and its refusals.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "lstm_infer.h"

static const char *const ISAS[] = {"scalar", "avx2", "avx512", "neon"};

static void check_shape(const char *isa, int64_t in, int64_t out, int has_bias) {
    float *w = malloc(sizeof(float) * (size_t)(in * out)), *b = malloc(sizeof(float) * (size_t)out);
    const int64_t rows = 23, xs = in + 3, ys = out + 5; // padded rows: strides are honoured
    float *x = malloc(sizeof(float) * (size_t)(rows * xs)), *y = malloc(sizeof(float) * (size_t)(rows * ys));
    float *y1 = malloc(sizeof(float) * (size_t)ys);
    for (int64_t i = 0; i < in * out; i++) w[i] = rnd_f(-1, 1);
    for (int64_t i = 0; i < out; i++) b[i] = rnd_f(-1, 1);
    for (int64_t i = 0; i < rows * xs; i++) x[i] = rnd_f(-2, 2);
    for (int64_t i = 0; i < rows * ys; i++) y[i] = NAN;
    lstm_dense *d;
    CHECK(lstm_dense_create(in, out, w, has_bias ? b : NULL, &d) == LSTM_OK, "create %lld %lld",
          (long long)in, (long long)out);
    CHECK(lstm_dense_forward(d, rows, x, xs, y, ys) == LSTM_OK, "forward");
    double worst = 0;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t o = 0; o < out; o++) {
            double s = has_bias ? b[o] : 0.0, mag = fabs(s);
            for (int64_t k = 0; k < in; k++) {
                s += (double)x[r * xs + k] * w[o * in + k];
                mag += fabs((double)x[r * xs + k] * w[o * in + k]);
            }
            const double err = fabs(y[r * ys + o] - s) / (mag + 1e-30);
            if (err > worst) worst = err;
        }
        for (int64_t o = out; o < ys; o++) CHECK(isnan(y[r * ys + o]), "%s wrote past out_features", isa);
        // the row alone: the same bits
        CHECK(lstm_dense_forward(d, 1, x + r * xs, xs, y1, ys) == LSTM_OK, "forward one row");
        CHECK(memcmp(y1, y + r * ys, sizeof(float) * (size_t)out) == 0,
              "%s in %lld out %lld: row %lld alone differs from the batch", isa, (long long)in,
              (long long)out, (long long)r);
    }
    CHECK(worst < 1e-5, "%s in %lld out %lld: relative error %g", isa, (long long)in, (long long)out, worst);
    lstm_dense_free(d);
    free(w), free(b), free(x), free(y), free(y1);
}

int main(void) {
    static const int64_t shapes[][2] = {{1, 1}, {7, 3}, {16, 16}, {33, 65}, {256, 10}, {300, 130}, {1000, 64}};
    for (size_t i = 0; i < sizeof(ISAS) / sizeof(*ISAS); i++) {
        if (lstm_set_isa(ISAS[i]) != LSTM_OK) continue; // not on this CPU
        for (size_t s = 0; s < sizeof(shapes) / sizeof(*shapes); s++)
            for (int bias = 0; bias < 2; bias++) check_shape(ISAS[i], shapes[s][0], shapes[s][1], bias);
    }
    lstm_dense *d = NULL;
    float w[6] = {0}, x[3] = {0}, y[2];
    CHECK(lstm_dense_create(3, 2, NULL, NULL, &d) == LSTM_ERR_INVALID_ARGUMENT && !d, "NULL weight");
    CHECK(lstm_dense_create(0, 2, w, NULL, &d) == LSTM_ERR_INVALID_ARGUMENT, "in 0");
    CHECK(lstm_dense_create(3, -1, w, NULL, &d) == LSTM_ERR_INVALID_ARGUMENT, "out -1");
    CHECK(lstm_dense_create(3, LSTM_MAX_FEATURES + 1, w, NULL, &d) == LSTM_ERR_INVALID_ARGUMENT, "out too big");
    CHECK(lstm_dense_create(3, 2, w, NULL, NULL) == LSTM_ERR_INVALID_ARGUMENT, "NULL out");
    CHECK(lstm_dense_create(3, 2, w, NULL, &d) == LSTM_OK, "create");
    CHECK(lstm_dense_forward(d, 1, x, 2, y, 2) == LSTM_ERR_INVALID_ARGUMENT, "x stride below in");
    CHECK(lstm_dense_forward(d, 1, x, 3, y, 1) == LSTM_ERR_INVALID_ARGUMENT, "y stride below out");
    CHECK(lstm_dense_forward(d, -1, x, 3, y, 2) == LSTM_ERR_INVALID_ARGUMENT, "rows -1");
    CHECK(lstm_dense_forward(d, 1, NULL, 3, y, 2) == LSTM_ERR_INVALID_ARGUMENT, "NULL x");
    CHECK(lstm_dense_forward(d, 0, NULL, 3, NULL, 2) == LSTM_OK, "no rows");
    CHECK(lstm_dense_forward(NULL, 1, x, 3, y, 2) == LSTM_ERR_INVALID_ARGUMENT, "NULL layer");
    lstm_dense_free(d);
    lstm_dense_free(NULL);
    printf("test_dense: %d checks, %d failures\n", atomic_load(&checks), atomic_load(&failures));
    return atomic_load(&failures) != 0;
}
