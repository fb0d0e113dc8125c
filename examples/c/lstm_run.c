/*
 * lstm_run - runs a converted model file on a .npy input, from C alone.
 *
 *     lstm-infer convert model.pt -o model.lstm        # once, in Python
 *     lstm_run model.lstm x.npy OUT_DIR [lengths.npy]
 *
 * x.npy: float32, C order, as torch takes it: for LSTM/GRU/RNN (T, B, I),
 * (B, T, I) when the model is batch_first, or unbatched (T, I); for the cells
 * (B, I) or (I,). lengths.npy: int64 (B,), each in [0, T], any order (as
 * pack_padded_sequence(enforce_sorted=False)); steps past a length give zeros.
 * Writes OUT_DIR/output.npy, h_n.npy (and c_n.npy for LSTM) shaped as torch
 * returns them; for the cells h_1.npy (and c_1.npy for LSTMCell). Initial
 * states are zeros. A model converted with --weights float16 or int8 runs the
 * same way: the file holds the reduced weights and the library reads them.
 *
 * Build: make example (in the repository), or against an installed library:
 *     cc -std=c11 lstm_run.c $(pkg-config --cflags --libs lstm_infer) -o lstm_run
 * The .npy code reads and writes little-endian data only.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lstm_infer.h>

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "lstm_run: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

/* ------------------------------------------------------------------ .npy */

/* Reads a C-order .npy of dtype `descr` ('<f4' or '<i8') with 1 to 3 dimensions. */
static void *read_npy(const char *path, const char *descr, size_t item, int *ndim, int64_t shape[3]) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char pre[12];
    void *data = NULL;
    char *header = NULL;
    size_t hlen = 0;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) goto done;
    if (pre[6] == 1) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) goto done;
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    } else {
        goto done;
    }
    if (hlen > 1 << 16 || !(header = calloc(hlen + 1, 1)) || fread(header, 1, hlen, f) != hlen) goto done;
    char want[32];
    snprintf(want, sizeof want, "'descr': '%s'", descr);
    const char *sh = strstr(header, "'shape': (");
    if (!strstr(header, want) || !strstr(header, "'fortran_order': False") || !sh) goto done;
    sh += strlen("'shape': (");
    size_t count = 1;
    for (*ndim = 0; *sh != ')';) {
        char *end;
        long long v = strtoll(sh, &end, 10);
        if (end == sh || v < 0 || *ndim == 3 || (v && count > SIZE_MAX / item / (size_t)v)) goto done;
        shape[(*ndim)++] = v;
        count *= (size_t)v;
        sh = end;
        while (*sh == ',' || *sh == ' ') sh++;
    }
    if (*ndim == 0 || !(data = malloc(count * item + 1))) goto done;
    if (fread(data, item, count, f) != count || fgetc(f) != EOF) { /* exactly the array */
        free(data);
        data = NULL;
    }
done:
    free(header);
    fclose(f);
    return data;
}

/* Writes a float32 .npy (format 1.0) to path, through a temp file renamed into place. */
static int write_npy(const char *dir, const char *name, const float *data, int ndim, const int64_t *shape) {
    char path[4096], tmp[4200], header[256];
    size_t count = 1;
    int n = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < ndim; i++) {
        n += snprintf(header + n, sizeof header - (size_t)n, "%lld,%s", (long long)shape[i],
                      i + 1 < ndim ? " " : "");
        count *= (size_t)shape[i];
    }
    if (ndim > 1) header[--n] = 0; /* (a, b) but (a,) */
    n += snprintf(header + n, sizeof header - (size_t)n, "), }");
    while ((10 + n + 1) % 64) header[n++] = ' '; /* data 64-byte aligned, as NumPy writes it */
    header[n++] = '\n';
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return 0;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n & 0xFF), (unsigned char)(n >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(header, 1, (size_t)n, f) == (size_t)n &&
             fwrite(data, sizeof(float), count, f) == count;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: lstm_run MODEL INPUT.npy OUT_DIR [LENGTHS.npy]\n");
        return 2;
    }
    lstm_model *m;
    lstm_file_info info;
    lstm_status s = lstm_model_load_info(argv[1], &m, &info);
    if (s != LSTM_OK) return fail(argv[1], lstm_status_string(s));
    const lstm_config *c = lstm_model_config(m);
    const int64_t I = c->input_size, H = c->hidden_size, D = c->bidirectional ? 2 : 1;
    const int64_t L = c->num_layers, out = c->proj_size ? c->proj_size : H;
    const int is_lstm = c->cell == LSTM_CELL_LSTM;

    int ndim, lndim = 0, rc = 1;
    int64_t shape[3], lshape[3];
    float *x = read_npy(argv[2], "<f4", sizeof(float), &ndim, shape);
    int64_t *lengths = argc == 5 ? read_npy(argv[4], "<i8", sizeof(int64_t), &lndim, lshape) : NULL;
    float *y = NULL, *h_n = NULL, *c_n = NULL;
    if (!x) {
        fail(argv[2], "not a C-order float32 .npy file of 1 to 3 dimensions");
        goto done;
    }
    if (argc == 5 && !lengths) {
        fail(argv[4], "not an int64 .npy file");
        goto done;
    }
    /* T, B and the layout; unbatched input is a batch of one */
    const int batched = info.is_cell ? ndim == 2 : ndim == 3;
    if (ndim != (info.is_cell ? 1 : 2) + batched || shape[ndim - 1] != I) {
        fail(argv[2], info.is_cell ? "expected shape (B, input_size) or (input_size,)"
                                   : "expected shape (T, B, input_size), (B, T, input_size) when "
                                     "batch_first, or (T, input_size)");
        goto done;
    }
    int64_t T = info.is_cell ? 1 : shape[batched && info.batch_first ? 1 : 0];
    int64_t B = !batched ? 1 : shape[info.is_cell || info.batch_first ? 0 : 1];
    if (lengths && (info.is_cell || !batched || lndim != 1 || lshape[0] != B)) {
        fail(argv[4], "lengths go with batched input of a layer and must have shape (B,)");
        goto done;
    }
    /* (B, T, .) input is read through its strides, and the output written the same way */
    const int bf = batched && info.batch_first;
    y = malloc((size_t)(T * B * D * out) * sizeof(float) + 1);
    h_n = malloc((size_t)(L * D * B * out) * sizeof(float) + 1);
    c_n = is_lstm ? malloc((size_t)(L * D * B * H) * sizeof(float) + 1) : NULL;
    if (!y || !h_n || (is_lstm && !c_n)) {
        fail("out of memory", NULL);
        goto done;
    }
    lstm_forward_args a = {.seq_len = T, .batch = B, .input = x,
                           .input_stride_t = bf ? I : B * I, .input_stride_b = bf ? T * I : I,
                           .lengths = lengths, .output = y,
                           .output_stride_t = bf ? D * out : B * D * out,
                           .output_stride_b = bf ? T * D * out : D * out,
                           .h_n = h_n, .c_n = c_n};
    if ((s = lstm_model_forward(m, &a, NULL, 0)) != LSTM_OK) {
        fail("forward", lstm_status_string(s));
        goto done;
    }
    int ok;
    if (info.is_cell) { /* h_1 (B, H) or (H,) */
        int64_t hs[2] = {B, H};
        ok = write_npy(argv[3], "h_1.npy", h_n, 1 + batched, batched ? hs : hs + 1) &&
             (!is_lstm || write_npy(argv[3], "c_1.npy", c_n, 1 + batched, batched ? hs : hs + 1));
    } else {
        int64_t os[3] = {bf ? B : T, bf ? T : B, D * out}, hs[3] = {L * D, B, out}, cs[3] = {L * D, B, H};
        int64_t os1[2] = {T, D * out}, hs1[2] = {L * D, out}, cs1[2] = {L * D, H};
        ok = write_npy(argv[3], "output.npy", y, batched ? 3 : 2, batched ? os : os1) &&
             write_npy(argv[3], "h_n.npy", h_n, batched ? 3 : 2, batched ? hs : hs1) &&
             (!is_lstm || write_npy(argv[3], "c_n.npy", c_n, batched ? 3 : 2, batched ? cs : cs1));
    }
    if (!ok) {
        fail(argv[3], "cannot write the outputs there");
        goto done;
    }
    rc = 0;
done:
    free(x);
    free(lengths);
    free(y);
    free(h_n);
    free(c_n);
    lstm_model_free(m);
    return rc;
}
