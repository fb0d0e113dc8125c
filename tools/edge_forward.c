/*
 * edge_forward.c - runs bench.py's "edge" case (T 200, B 1, I 64, H 128,
 * one unidirectional layer, bias; LSTM or GRU) `runs` times on one thread
 * with the kernel set LSTM_INFER_ISA names and the weights stored as float32
 * (the default), float16 or int8 (lstm_config.weights), for
 * tools/aarch64_insns.py to count the instructions of one forward call under
 * qemu (the difference between two run counts, so start-up and model
 * creation drop out).
 *
 *   edge_forward lstm|gru RUNS [f32|f16|i8]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lstm_infer.h"

enum { T = 200, B = 1, I = 64, H = 128 };

static float rnd(unsigned *s) { /* deterministic, in [-0.1, 0.1) */
    *s = *s * 1664525u + 1013904223u;
    return ((float)(*s >> 8) / 16777216.0f - 0.5f) * 0.2f;
}

static const char *const WEIGHTS[] = {"f32", "f16", "i8"}; /* by lstm_weight_type */

int main(int argc, char **argv) {
    int weights = -1;
    for (int t = 0; t < 3; t++)
        if (strcmp(argc > 3 ? argv[3] : "f32", WEIGHTS[t]) == 0) weights = t;
    if (argc < 3 || argc > 4 || (strcmp(argv[1], "lstm") && strcmp(argv[1], "gru")) || weights < 0) {
        fprintf(stderr, "usage: %s lstm|gru RUNS [f32|f16|i8]\n", argv[0]);
        return 2;
    }
    const lstm_config cfg = {.input_size = I, .hidden_size = H, .num_layers = 1, .bias = 1,
                             .cell = strcmp(argv[1], "gru") ? LSTM_CELL_LSTM : LSTM_CELL_GRU,
                             .weights = weights};
    const int runs = atoi(argv[2]);
    lstm_set_num_threads(1);
    const size_t n = lstm_weight_count(&cfg);
    float *w[8];
    unsigned seed = 1;
    for (size_t i = 0; i < n; i++) {
        int64_t shape[2];
        lstm_weight_shape(&cfg, i, shape);
        const int64_t count = shape[0] * (shape[1] ? shape[1] : 1);
        w[i] = malloc((size_t)count * sizeof(float));
        for (int64_t e = 0; e < count; e++) w[i][e] = rnd(&seed);
    }
    lstm_model *m = NULL;
    if (lstm_model_create(&cfg, (const float *const *)w, n, &m) != LSTM_OK) return 1;
    static float x[T * B * I], out[T * B * H];
    for (int i = 0; i < T * B * I; i++) x[i] = rnd(&seed) * 10;
    const lstm_forward_args a = {.seq_len = T, .batch = B, .input = x, .input_stride_t = B * I,
                                 .input_stride_b = I, .output = out, .output_stride_t = B * H,
                                 .output_stride_b = H};
    for (int r = 0; r < runs; r++)
        if (lstm_model_forward(m, &a, NULL, 0) != LSTM_OK) return 1;
    double sum = 0;
    for (int i = 0; i < T * B * H; i++) sum += out[i];
    printf("%s %s %s runs=%d checksum %.6f\n", lstm_get_isa(), argv[1], WEIGHTS[weights], runs, sum);
    lstm_model_free(m);
    for (size_t i = 0; i < n; i++) free(w[i]);
    return 0;
}
