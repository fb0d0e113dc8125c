/*
 * fuzz_loader.c - libFuzzer harness for lstm_model_load_buffer: any bytes
 * must give a status (never a crash, an over-read or a leak), and a model it
 * accepts must run. Built and run by the top-level Makefile:
 *     make fuzz FUZZ_SECONDS=60
 * Each input is copied to a buffer of exactly its size, so ASan sees any read
 * past the end.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lstm_infer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    lstm_set_num_threads(1);
    return 0;
}

/* One short forward call (small models only, to keep executions fast). */
static void run(const lstm_model *m) {
    const lstm_config *c = lstm_model_config(m);
    int64_t D = c->bidirectional ? 2 : 1, out = c->proj_size ? c->proj_size : c->hidden_size;
    if ((int64_t)c->input_size + D * out * 3 > 4096) return;
    enum { T = 2 };
    float *x = calloc((size_t)(T * c->input_size), sizeof(float));
    float *y = calloc((size_t)(T * D * out), sizeof(float));
    if (x && y) {
        for (int64_t i = 0; i < T * c->input_size; i++) x[i] = (float)(i % 7) - 3.0f;
        lstm_forward_args a = {.seq_len = T, .batch = 1, .input = x, .input_stride_t = c->input_size,
                               .input_stride_b = c->input_size, .output = y,
                               .output_stride_t = D * out, .output_stride_b = D * out};
        if (lstm_model_forward(m, &a, NULL, 0) != LSTM_OK) abort();
    }
    free(x);
    free(y);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    lstm_model *m = NULL;
    lstm_file_info info;
    lstm_status s = lstm_model_load_buffer_info(copy, size, &m, &info);
    if ((s == LSTM_OK) != (m != NULL)) abort(); /* a model exactly on success */
    if (m) {
        run(m);
        lstm_model_free(m);
    }
    free(copy);
    return 0;
}
