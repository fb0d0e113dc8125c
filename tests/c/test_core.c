/*
 * test_core.c - tests of the C core without Python.
 *
 *   (a) the kernels: in test_kernels.c;
 *   (b) lstm_model_forward against a naive double-precision LSTM, GRU and
 *       RNN (tanh, relu) written from torch's equations, many configs, every
 *       ISA (only the one LSTM_INFER_ISA names, if set), 1 and 2 threads,
 *       library and caller-provided workspace, strided input/output;
 *       interrupts; scratch sized by the valid steps; the pipe's bits;
 *   (c) error statuses.
 *
 * Exits non-zero on any failure. Built by tests/c/Makefile (also under
 * ASan+UBSan) and, for aarch64 under qemu, by tests/c/aarch64.mk.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lstm_infer.h"
#include "harness.h"



static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "out of memory in test\n");
        exit(2);
    }
    return p;
}

static int close_enough(double got, double want, double atol, double rtol) {
    if (isnan(got) || isnan(want)) return isnan(got) && isnan(want);
    return fabs(got - want) <= atol + rtol * fabs(want);
}

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

static const float SENTINEL = -12345.0f;


/* ------------------------------------------------------------------ (b) forward */

typedef struct {
    lstm_config cfg;
    int64_t T, B;
    int ragged;   /* random lengths in [0, T] incl. 0 and T */
    int with_hx;  /* h_0/c_0 given */
} fcase;

typedef struct {
    lstm_config cfg;
    size_t n;
    float **w;         /* torch order */
    int64_t *rows, *cols;
} weights;

static void make_weights(const lstm_config *cfg, weights *W) {
    const int64_t H = cfg->hidden_size, P = cfg->proj_size, out = P ? P : H;
    const int64_t GH = lstm_gates(cfg->cell) * H;
    const int64_t D = 1 + cfg->bidirectional;
    W->cfg = *cfg;
    W->n = lstm_weight_count(cfg);
    W->w = xcalloc(W->n, sizeof(float *));
    W->rows = xcalloc(W->n, sizeof(int64_t));
    W->cols = xcalloc(W->n, sizeof(int64_t));
    size_t i = 0;
    const float scale = 1.0f / sqrtf((float)H);
    for (int64_t l = 0; l < cfg->num_layers; l++)
        for (int64_t d = 0; d < D; d++) {
            const int64_t in = l == 0 ? cfg->input_size : D * out;
            int64_t shapes[5][2] = {{GH, in}, {GH, out}, {GH, 1}, {GH, 1}, {P, H}};
            for (int s = 0; s < 5; s++) {
                if ((s == 2 || s == 3) && !cfg->bias) continue;
                if (s == 4 && !P) continue;
                W->rows[i] = shapes[s][0];
                W->cols[i] = shapes[s][1];
                int64_t shape[2] = {-1, -1};
                CHECK(lstm_weight_shape(cfg, i, shape) == LSTM_OK && shape[0] == shapes[s][0] &&
                          (shape[1] ? shape[1] : 1) == shapes[s][1],
                      "weight_shape %zu: (%ld, %ld)", i, (long)shape[0], (long)shape[1]);
                const int64_t cnt = shapes[s][0] * shapes[s][1];
                W->w[i] = xcalloc((size_t)cnt, sizeof(float));
                for (int64_t e = 0; e < cnt; e++) W->w[i][e] = rnd_f(-scale, scale) * 1.5f;
                i++;
            }
        }
    if (i != W->n) {
        fprintf(stderr, "weight count mismatch: %zu vs %zu\n", i, W->n);
        exit(2);
    }
}

static void free_weights(weights *W) {
    for (size_t i = 0; i < W->n; i++) free(W->w[i]);
    free(W->w), free(W->rows), free(W->cols);
}

/* naive LSTM / GRU / RNN from torch's equations, double precision,
 * packed-sequence semantics; x (T,B,I) contiguous; c0, cn for the LSTM only */
static void naive_forward(const weights *W, int64_t T, int64_t B, const float *x,
                          const int64_t *lengths, const float *h0, const float *c0, double *out,
                          double *hn, double *cn) {
    const lstm_config *cfg = &W->cfg;
    const int64_t H = cfg->hidden_size, P = cfg->proj_size, O = P ? P : H;
    const int64_t D = 1 + cfg->bidirectional, L = cfg->num_layers;
    int64_t in = cfg->input_size;
    double *layer_in = xcalloc((size_t)(T * B * (in > D * O ? in : D * O)), sizeof(double));
    for (int64_t i = 0; i < T * B * in; i++) layer_in[i] = x[i];
    double *layer_out = xcalloc((size_t)(T * B * D * O), sizeof(double));
    double *h = xcalloc((size_t)H, sizeof(double)), *c = xcalloc((size_t)H, sizeof(double));
    const int kind = cfg->cell;
    const int64_t GH = lstm_gates(kind) * H;
    double *hp = xcalloc((size_t)O, sizeof(double)), *gates = xcalloc((size_t)GH, sizeof(double));
    double *gh = xcalloc((size_t)GH, sizeof(double)); /* W_hh h + b_hh, apart for the GRU */
    size_t wi = 0;
    for (int64_t l = 0; l < L; l++) {
        memset(layer_out, 0, (size_t)(T * B * D * O) * sizeof(double));
        for (int64_t d = 0; d < D; d++) {
            const float *w_ih = W->w[wi++], *w_hh = W->w[wi++];
            const float *b_ih = cfg->bias ? W->w[wi++] : NULL, *b_hh = cfg->bias ? W->w[wi++] : NULL;
            const float *w_hr = P ? W->w[wi++] : NULL;
            const int64_t slot = l * D + d;
            for (int64_t b = 0; b < B; b++) {
                const int64_t len = lengths ? lengths[b] : T;
                for (int64_t u = 0; u < O; u++) hp[u] = h0 ? h0[(slot * B + b) * O + u] : 0.0;
                for (int64_t u = 0; u < H; u++) c[u] = c0 ? c0[(slot * B + b) * H + u] : 0.0;
                if (kind != LSTM_CELL_LSTM) memcpy(h, hp, (size_t)H * sizeof(double));
                for (int64_t s = 0; s < len; s++) {
                    const int64_t t = d == 0 ? s : len - 1 - s;
                    const double *xt = layer_in + (t * B + b) * in;
                    for (int64_t r = 0; r < GH; r++) {
                        double acc = cfg->bias ? (double)b_ih[r] : 0.0, acc_h = cfg->bias ? (double)b_hh[r] : 0.0;
                        for (int64_t k = 0; k < in; k++) acc += (double)w_ih[r * in + k] * xt[k];
                        for (int64_t k = 0; k < O; k++) acc_h += (double)w_hh[r * O + k] * hp[k];
                        gates[r] = acc, gh[r] = acc_h;
                    }
                    for (int64_t u = 0; u < H; u++) {
                        if (kind == LSTM_CELL_LSTM) {
                            const double ig = sigm(gates[u] + gh[u]), fg = sigm(gates[H + u] + gh[H + u]);
                            const double gg = tanh(gates[2 * H + u] + gh[2 * H + u]);
                            const double og = sigm(gates[3 * H + u] + gh[3 * H + u]);
                            c[u] = fg * c[u] + ig * gg;
                            h[u] = og * tanh(c[u]);
                        } else if (kind == LSTM_CELL_GRU) { /* torch: r, z, n */
                            const double rg = sigm(gates[u] + gh[u]), zg = sigm(gates[H + u] + gh[H + u]);
                            const double ng = tanh(gates[2 * H + u] + rg * gh[2 * H + u]);
                            h[u] = (1.0 - zg) * ng + zg * h[u];
                        } else {
                            const double v = gates[u] + gh[u];
                            h[u] = kind == LSTM_CELL_RNN_TANH ? tanh(v) : v > 0.0 ? v : 0.0;
                        }
                    }
                    if (P) {
                        for (int64_t p = 0; p < P; p++) {
                            double acc = 0;
                            for (int64_t u = 0; u < H; u++) acc += (double)w_hr[p * H + u] * h[u];
                            hp[p] = acc;
                        }
                    } else {
                        memcpy(hp, h, (size_t)H * sizeof(double));
                    }
                    memcpy(layer_out + (t * B + b) * D * O + d * O, hp, (size_t)O * sizeof(double));
                }
                memcpy(hn + (slot * B + b) * O, hp, (size_t)O * sizeof(double));
                if (cn) memcpy(cn + (slot * B + b) * H, c, (size_t)H * sizeof(double));
            }
        }
        in = D * O;
        memcpy(layer_in, layer_out, (size_t)(T * B * D * O) * sizeof(double));
    }
    memcpy(out, layer_out, (size_t)(T * B * D * O) * sizeof(double));
    free(layer_in), free(layer_out), free(h), free(c), free(hp), free(gates), free(gh);
}

static int compare(const char *what, const char *ctx, const float *got, const double *want,
                   int64_t n) {
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (!close_enough(got[i], want[i], 3e-5, 1e-4)) {
            if (bad < 3)
                CHECK(0, "%s %s[%ld] = %.8g, want %.8g", ctx, what, (long)i, got[i], want[i]);
            bad++;
        }
    checks++;
    return bad;
}

static void run_case(const fcase *fc, const char *isa, int threads, int own_workspace) {
    const lstm_config *cfg = &fc->cfg;
    const int64_t T = fc->T, B = fc->B, I = cfg->input_size, H = cfg->hidden_size;
    const int64_t O = cfg->proj_size ? cfg->proj_size : H, D = 1 + cfg->bidirectional;
    const int64_t S = cfg->num_layers * D;
    const int lstm = cfg->cell == LSTM_CELL_LSTM;
    char ctx[256];
    snprintf(ctx, sizeof ctx,
             "[isa=%s thr=%d ws=%d cell=%d I=%d H=%d L=%d bi=%d bias=%d P=%d T=%ld B=%ld ragged=%d hx=%d]",
             isa, threads, own_workspace, cfg->cell, cfg->input_size, cfg->hidden_size, cfg->num_layers,
             cfg->bidirectional, cfg->bias, cfg->proj_size, (long)T, (long)B, fc->ragged,
             fc->with_hx);
    CHECK(lstm_set_isa(isa) == LSTM_OK, "set_isa(%s)", isa);
    CHECK(strcmp(lstm_get_isa(), isa) == 0, "get_isa after set_isa(%s) = %s", isa, lstm_get_isa());
    lstm_set_num_threads(threads);
    CHECK(lstm_get_num_threads() == threads, "get_num_threads = %d", lstm_get_num_threads());

    weights W;
    make_weights(cfg, &W);
    lstm_model *m = NULL;
    lstm_status s = lstm_model_create(cfg, (const float *const *)W.w, W.n, &m);
    CHECK(s == LSTM_OK && m, "%s create: %s", ctx, lstm_status_string(s));
    if (!m) {
        free_weights(&W);
        return;
    }
    CHECK(memcmp(lstm_model_config(m), cfg, sizeof *cfg) == 0, "%s config round trip", ctx);

    float *x = xcalloc((size_t)(T * B * I), sizeof(float));
    for (int64_t i = 0; i < T * B * I; i++) x[i] = rnd_f(-2, 2);
    /* a strided copy of x for the library: padding between batch rows and steps */
    const int64_t xsb = I + 3, xst = B * xsb + 5;
    float *xs = xcalloc((size_t)(T * xst), sizeof(float));
    for (int64_t t = 0; t < T; t++)
        for (int64_t b = 0; b < B; b++) memcpy(xs + t * xst + b * xsb, x + (t * B + b) * I, (size_t)I * sizeof(float));
    int64_t *lengths = NULL;
    if (fc->ragged) {
        lengths = xcalloc((size_t)B, sizeof(int64_t));
        for (int64_t b = 0; b < B; b++) lengths[b] = rnd_i(0, T);
        lengths[0] = T;
        if (B > 2) lengths[B - 1] = 0;
        if (B > 3) lengths[1] = 1;
    }
    float *h0 = NULL, *c0 = NULL;
    if (fc->with_hx) {
        h0 = xcalloc((size_t)(S * B * O), sizeof(float));
        c0 = xcalloc((size_t)(S * B * H), sizeof(float));
        for (int64_t i = 0; i < S * B * O; i++) h0[i] = rnd_f(-1, 1);
        for (int64_t i = 0; i < S * B * H; i++) c0[i] = rnd_f(-1, 1);
    }
    const int64_t osb = D * O + 2, ost = B * osb + 1;
    float *out = xcalloc((size_t)(T * ost), sizeof(float));
    for (int64_t i = 0; i < T * ost; i++) out[i] = SENTINEL;
    float *hn = xcalloc((size_t)(S * B * O), sizeof(float)), *cn = xcalloc((size_t)(S * B * H), sizeof(float));
    double *rout = xcalloc((size_t)(T * B * D * O), sizeof(double));
    double *rhn = xcalloc((size_t)(S * B * O), sizeof(double)), *rcn = xcalloc((size_t)(S * B * H), sizeof(double));
    naive_forward(&W, T, B, x, lengths, h0, lstm ? c0 : NULL, rout, rhn, rcn);

    lstm_forward_args a = {.seq_len = T, .batch = B, .input = xs, .input_stride_t = xst,
                           .input_stride_b = xsb, .lengths = lengths, .h_0 = h0,
                           .c_0 = lstm ? c0 : NULL, .output = out, .output_stride_t = ost,
                           .output_stride_b = osb, .h_n = hn, .c_n = lstm ? cn : NULL};
    void *ws = NULL;
    size_t ws_size = 0;
    if (own_workspace) {
        s = lstm_workspace_size(m, T, B, lengths, &ws_size);
        CHECK(s == LSTM_OK, "%s workspace_size: %s", ctx, lstm_status_string(s));
        size_t padded_size = 0;
        CHECK(lstm_workspace_size(m, T, B, NULL, &padded_size) == LSTM_OK && padded_size >= ws_size,
              "%s workspace by lengths %zu > padded %zu", ctx, ws_size, padded_size);
        ws = malloc(ws_size ? ws_size : 1);
        /* garbage in the workspace must not matter */
        memset(ws, 0xA5, ws_size);
    }
    if (!own_workspace) {
        /* leave stale data of a bigger call in the model's spare scratch block */
        const int64_t T2 = T + 3, B2 = B + 2;
        float *x2 = xcalloc((size_t)(T2 * B2 * I), sizeof(float));
        float *o2 = xcalloc((size_t)(T2 * B2 * D * O), sizeof(float));
        for (int64_t i = 0; i < T2 * B2 * I; i++) x2[i] = rnd_f(-50, 50);
        lstm_forward_args big = {.seq_len = T2, .batch = B2, .input = x2, .input_stride_t = B2 * I,
                                 .input_stride_b = I, .output = o2,
                                 .output_stride_t = B2 * D * O, .output_stride_b = D * O};
        CHECK(lstm_model_forward(m, &big, NULL, 0) == LSTM_OK, "%s bigger call", ctx);
        free(x2), free(o2);
    }
    s = lstm_model_forward(m, &a, ws, ws_size);
    CHECK(s == LSTM_OK, "%s forward: %s", ctx, lstm_status_string(s));
    /* gather the strided output and check the padding was not touched */
    float *og = xcalloc((size_t)(T * B * D * O), sizeof(float));
    int pad_bad = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t b = 0; b < B; b++) {
            memcpy(og + (t * B + b) * D * O, out + t * ost + b * osb, (size_t)(D * O) * sizeof(float));
            for (int64_t e = D * O; e < osb; e++)
                if (out[t * ost + b * osb + e] != SENTINEL) pad_bad++;
        }
    CHECK(pad_bad == 0, "%s output padding overwritten (%d floats)", ctx, pad_bad);
    compare("output", ctx, og, rout, T * B * D * O);
    compare("h_n", ctx, hn, rhn, S * B * O);
    if (lstm) compare("c_n", ctx, cn, rcn, S * B * H);
    /* outputs past a length must be exactly 0, length-0 states exactly h_0/c_0 */
    if (lengths)
        for (int64_t b = 0; b < B; b++) {
            int nz = 0;
            for (int64_t t = lengths[b]; t < T; t++)
                for (int64_t e = 0; e < D * O; e++) nz += og[(t * B + b) * D * O + e] != 0.0f;
            CHECK(nz == 0, "%s output past length of seq %ld not zero", ctx, (long)b);
            if (lengths[b] == 0)
                for (int64_t sl = 0; sl < S; sl++) {
                    for (int64_t e = 0; e < O; e++) {
                        const float want = h0 ? h0[(sl * B + b) * O + e] : 0.0f;
                        if (hn[(sl * B + b) * O + e] != want) nz++;
                    }
                    for (int64_t e = 0; lstm && e < H; e++) {
                        const float want = c0 ? c0[(sl * B + b) * H + e] : 0.0f;
                        if (cn[(sl * B + b) * H + e] != want) nz++;
                    }
                }
            CHECK(nz == 0, "%s length-0 seq %ld state is not h_0/c_0 exactly", ctx, (long)b);
        }
    /* the same call again must be bit-identical (deterministic, no state in the model) */
    float *out2 = xcalloc((size_t)(T * ost), sizeof(float));
    float *hn2 = xcalloc((size_t)(S * B * O), sizeof(float)), *cn2 = xcalloc((size_t)(S * B * H), sizeof(float));
    for (int64_t i = 0; i < T * ost; i++) out2[i] = SENTINEL;
    a.output = out2, a.h_n = hn2, a.c_n = lstm ? cn2 : NULL;
    s = lstm_model_forward(m, &a, ws, ws_size);
    CHECK(s == LSTM_OK && memcmp(out, out2, (size_t)(T * ost) * sizeof(float)) == 0 &&
              memcmp(hn, hn2, (size_t)(S * B * O) * sizeof(float)) == 0 &&
              memcmp(cn, cn2, (size_t)(S * B * H) * sizeof(float)) == 0,
          "%s second call differs", ctx);
    /* h_n / c_n NULL are allowed; c_0 / c_n are refused for the other cells */
    a.h_n = NULL, a.c_n = NULL;
    s = lstm_model_forward(m, &a, NULL, 0);
    CHECK(s == LSTM_OK && memcmp(out, out2, (size_t)(T * ost) * sizeof(float)) == 0,
          "%s call without h_n/c_n differs", ctx);
    if (!lstm) {
        a.c_n = cn;
        CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "%s c_n refused", ctx);
        a.c_n = NULL, a.c_0 = c0 ? c0 : cn;
        CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "%s c_0 refused", ctx);
    }

    free(ws);
    free(og), free(out2), free(hn2), free(cn2);
    free(x), free(xs), free(lengths), free(h0), free(c0), free(out), free(hn), free(cn);
    free(rout), free(rhn), free(rcn);
    lstm_model_free(m);
    free_weights(&W);
}

static void test_forward(const char *const *isas, int n_isas) {
    const fcase cases[] = {
        /* I, H, L, bias, bi, P;  T, B, ragged, hx */
        {{37, 50, 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 7, 5, 1, 0},
        {{37, 50, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 6, 4, 1, 1},
        {{5, 16, 3, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 5, 3, 1, 1},
        {{8, 20, 2, 0, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 4, 3, 0, 1},     /* no bias */
        {{8, 20, 2, 1, 1, 7, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 5, 4, 1, 1},     /* proj, bi */
        {{3, 33, 3, 0, 1, 5, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 4, 6, 1, 0},     /* proj, no bias, 3 layers, bi */
        {{1, 1, 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 3, 1, 0, 0},      /* tiny */
        {{9, 17, 1, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 1, 1, 0, 1},     /* T 1, batch 1 */
        {{9, 17, 2, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 1, 1, 0, 1},     /* one step (forward.c's own path) */
        {{9, 17, 2, 0, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 1, 1, 1, 0},     /* one step or length 0, no h_0 */
        {{6, 12, 2, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 5, 1, 1, 1},     /* batch 1 ragged (len T) */
        {{11, 24, 1, 1, 1, 3, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 6, 7, 1, 1},
        /* big enough for the pool's threads, team split and bidirectional teams */
        {{40, 128, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 12, 8, 1, 1},
        {{40, 130, 1, 1, 0, 64, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 10, 9, 1, 0},
        /* the other cells: GRU, RNN tanh and relu */
        {{37, 50, 1, 1, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 7, 5, 1, 0},
        {{5, 16, 3, 1, 1, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 5, 3, 1, 1},
        {{8, 20, 2, 0, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 4, 3, 0, 1},
        {{9, 17, 1, 1, 1, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 1, 1, 0, 1},
        {{9, 17, 3, 1, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 1, 1, 0, 1},
        {{40, 128, 2, 1, 1, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 12, 8, 1, 1},
        {{40, 130, 1, 0, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 10, 9, 1, 0},
        {{37, 50, 2, 1, 1, 0, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32}, 6, 4, 1, 1},
        {{3, 33, 3, 0, 1, 0, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32}, 4, 6, 1, 0},
        {{1, 1, 1, 1, 0, 0, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32}, 3, 1, 0, 0},
        {{40, 128, 2, 1, 1, 0, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32}, 12, 8, 1, 1},
        {{11, 24, 2, 1, 1, 0, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F32}, 6, 7, 1, 1},
        {{6, 12, 1, 0, 0, 0, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F32}, 5, 1, 1, 1},
        {{40, 130, 2, 1, 0, 0, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F32}, 10, 9, 1, 0},
    };
    const int threads[] = {1, 2};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
        for (int i = 0; i < n_isas; i++)
            for (int t = 0; t < 2; t++)
                for (int ws = 0; ws < 2; ws++) run_case(&cases[c], isas[i], threads[t], ws);
    /* all sequences of length 0 */
    fcase zero = {{4, 8, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 3, 4, 0, 1};
    for (int i = 0; i < n_isas; i++) {
        CHECK(lstm_set_isa(isas[i]) == LSTM_OK, "set_isa");
        weights W;
        make_weights(&zero.cfg, &W);
        lstm_model *m = NULL;
        CHECK(lstm_model_create(&zero.cfg, (const float *const *)W.w, W.n, &m) == LSTM_OK, "create");
        int64_t lens[4] = {0, 0, 0, 0};
        float x[3 * 4 * 4] = {0}, out[3 * 4 * 16], hn[4 * 4 * 8], cn[4 * 4 * 8], h0[4 * 4 * 8], c0[4 * 4 * 8];
        for (int e = 0; e < 128; e++) h0[e] = rnd_f(-1, 1), c0[e] = rnd_f(-1, 1);
        for (int e = 0; e < 3 * 4 * 16; e++) out[e] = 7.0f;
        lstm_forward_args a = {.seq_len = 3, .batch = 4, .input = x, .input_stride_t = 16,
                               .input_stride_b = 4, .lengths = lens, .h_0 = h0, .c_0 = c0,
                               .output = out, .output_stride_t = 64, .output_stride_b = 16,
                               .h_n = hn, .c_n = cn};
        CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "all-zero lengths forward");
        int bad = 0;
        for (int e = 0; e < 3 * 4 * 16; e++) bad += out[e] != 0.0f;
        bad += memcmp(hn, h0, sizeof hn) != 0;
        bad += memcmp(cn, c0, sizeof cn) != 0;
        CHECK(bad == 0, "all-zero lengths: output not 0 or state not h_0/c_0 (%d)", bad);
        lstm_model_free(m);
        free_weights(&W);
    }
}

/* One sequence whose output rows are back to back is copied out in one piece:
 * the same numbers as through a padded output, zeros past its length, and
 * nothing written past the output. */
static void test_single_sequence_output(const char *const *isas, int n_isas) {
    enum { T = 9, I = 5, H = 20, PAD = 3 };
    lstm_config cfg = {I, H, 2, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32};
    weights W;
    make_weights(&cfg, &W);
    float x[T * I], dense[T * H + PAD], padded[T * (H + PAD)];
    for (int i = 0; i < T * I; i++) x[i] = rnd_f(-1, 1);
    for (int i = 0; i < n_isas; i++)
        for (int threads = 1; threads <= 2; threads++)
            for (int64_t len = 0; len <= T; len += 4) {
                CHECK(lstm_set_isa(isas[i]) == LSTM_OK, "set_isa");
                lstm_set_num_threads(threads);
                lstm_model *m = NULL;
                CHECK(lstm_model_create(&cfg, (const float *const *)W.w, W.n, &m) == LSTM_OK, "create");
                for (int e = 0; e < T * H + PAD; e++) dense[e] = SENTINEL;
                for (int e = 0; e < T * (H + PAD); e++) padded[e] = SENTINEL;
                lstm_forward_args a = {.seq_len = T, .batch = 1, .input = x, .input_stride_t = I,
                                       .input_stride_b = I, .lengths = &len, .output = dense,
                                       .output_stride_t = H, .output_stride_b = H};
                CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "dense forward");
                a.output = padded, a.output_stride_t = H + PAD;
                CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "padded forward");
                int bad = 0;
                for (int t = 0; t < T; t++)
                    for (int e = 0; e < H; e++) {
                        bad += memcmp(&dense[t * H + e], &padded[t * (H + PAD) + e], sizeof(float)) != 0;
                        if (t >= len) bad += dense[t * H + e] != 0.0f;
                    }
                for (int e = T * H; e < T * H + PAD; e++) bad += dense[e] != SENTINEL;
                CHECK(bad == 0, "%s threads=%d len=%ld: one-sequence output differs (%d)", isas[i],
                      threads, (long)len, bad);
                lstm_model_free(m);
            }
    free_weights(&W);
}

/*
 * A batch whose sequences all run the same steps on one thread (a stream's
 * step, a short call, any call with one thread set) takes a path of its own
 * in forward.c: it must give the bits of the general path, here the same
 * rows inside a batch with one more row, a shorter one, which makes that
 * batch ragged. Every kind and weight type, several layers, hidden sizes
 * past a one-row chunk, B 1, 3 and 50 (past a cell chunk of rows), T 1 and 4,
 * lengths NULL or all T, h_0/c_0 given or NULL, the state updated in place
 * (h_n = h_0, c_n = c_0), input rows evenly spaced or not (the input of the
 * bigger batch), 1 and 2 threads (2 take this path only under the thread
 * threshold). Lengths of 0 go the general way and keep the state.
 */
static float *fbuf(int64_t n) { return xcalloc((size_t)n, sizeof(float)); }

static void test_uniform_batch(const char *const *isas, int n_isas) {
    const lstm_config cfgs[] = {
        /* I, H, L, bias, bi, P, cell, weights */
        {9, 40, 2, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {9, 40, 1, 0, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {7, 130, 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, /* more tiles than a one-row chunk */
        {9, 40, 3, 1, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32},
        {5, 17, 2, 1, 0, 0, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32},
        {5, 17, 1, 0, 0, 0, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F32},
        {9, 40, 2, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F16},
        {9, 40, 2, 1, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_I8},
        {9, 33, 2, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_I8},
    };
    const int64_t batches[] = {1, 3, 50};
    for (size_t ci = 0; ci < sizeof cfgs / sizeof *cfgs; ci++) {
        const lstm_config *cfg = &cfgs[ci];
        const int64_t I = cfg->input_size, H = cfg->hidden_size, L = cfg->num_layers;
        const int lstm = cfg->cell == LSTM_CELL_LSTM;
        weights W;
        make_weights(cfg, &W);
        for (int i = 0; i < n_isas; i++)
            for (int threads = 1; threads <= 2; threads++) {
                CHECK(lstm_set_isa(isas[i]) == LSTM_OK, "set_isa");
                lstm_set_num_threads(threads);
                lstm_model *m = NULL;
                CHECK(lstm_model_create(cfg, (const float *const *)W.w, W.n, &m) == LSTM_OK, "create");
                for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++)
                    for (int64_t T = 1; T <= 4; T += 3) {
                        const int64_t B = batches[bi], B2 = B + 1;
                        // the bigger batch: rows 0..B-1 are the uniform batch's, row B runs T - 1 steps
                        float *x2 = fbuf(T * B2 * I), *x1 = fbuf(T * B * I);
                        float *h02 = fbuf(L * B2 * H), *c02 = fbuf(L * B2 * H);
                        float *h01 = fbuf(L * B * H), *c01 = fbuf(L * B * H);
                        float *out2 = fbuf(T * B2 * H), *out1 = fbuf(T * B * H);
                        float *hn2 = fbuf(L * B2 * H), *cn2 = fbuf(L * B2 * H);
                        float *hn1 = fbuf(L * B * H), *cn1 = fbuf(L * B * H);
                        int64_t *lens2 = xcalloc((size_t)B2, sizeof(int64_t)), *lens1 = xcalloc((size_t)B, sizeof(int64_t));
                        for (int64_t e = 0; e < T * B2 * I; e++) x2[e] = rnd_f(-2, 2);
                        for (int64_t e = 0; e < L * B2 * H; e++) h02[e] = rnd_f(-1, 1), c02[e] = rnd_f(-3, 3);
                        for (int64_t t = 0; t < T; t++)
                            memcpy(x1 + t * B * I, x2 + t * B2 * I, (size_t)(B * I) * sizeof(float));
                        for (int64_t l = 0; l < L; l++) {
                            memcpy(h01 + l * B * H, h02 + l * B2 * H, (size_t)(B * H) * sizeof(float));
                            memcpy(c01 + l * B * H, c02 + l * B2 * H, (size_t)(B * H) * sizeof(float));
                        }
                        for (int64_t b = 0; b < B2; b++) lens2[b] = b < B ? T : T - 1;
                        for (int64_t b = 0; b < B; b++) lens1[b] = T;
                        for (int given = 0; given < 2; given++) {
                            lstm_forward_args r = {.seq_len = T, .batch = B2, .input = x2, .input_stride_t = B2 * I,
                                                   .input_stride_b = I, .lengths = lens2, .h_0 = given ? h02 : NULL,
                                                   .c_0 = given && lstm ? c02 : NULL, .output = out2,
                                                   .output_stride_t = B2 * H, .output_stride_b = H, .h_n = hn2,
                                                   .c_n = lstm ? cn2 : NULL};
                            CHECK(lstm_model_forward(m, &r, NULL, 0) == LSTM_OK, "ragged batch");
                            for (int variant = 0; variant < 3 + given; variant++) {
                                // 0: lengths NULL, 1: all T, 2: rows spaced as the bigger batch's, 3: in place
                                float hx[3 * 50 * 130], cx[3 * 50 * 130];
                                lstm_forward_args a = {.seq_len = T, .batch = B, .input = x1, .input_stride_t = B * I,
                                                       .input_stride_b = I, .lengths = variant == 1 ? lens1 : NULL,
                                                       .h_0 = given ? h01 : NULL, .c_0 = given && lstm ? c01 : NULL,
                                                       .output = out1, .output_stride_t = B * H,
                                                       .output_stride_b = H, .h_n = hn1, .c_n = lstm ? cn1 : NULL};
                                if (variant == 2) a.input = x2, a.input_stride_t = B2 * I;
                                if (variant == 3) {
                                    memcpy(hx, h01, (size_t)(L * B * H) * sizeof(float));
                                    memcpy(cx, c01, (size_t)(L * B * H) * sizeof(float));
                                    a.h_0 = a.h_n = hx;
                                    if (lstm) a.c_0 = a.c_n = cx;
                                }
                                CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "uniform batch");
                                int bad = 0;
                                for (int64_t t = 0; t < T; t++)
                                    bad += memcmp(out1 + t * B * H, out2 + t * B2 * H, (size_t)(B * H) * sizeof(float)) != 0;
                                for (int64_t l = 0; l < L; l++) {
                                    bad += memcmp(a.h_n + l * B * H, hn2 + l * B2 * H, (size_t)(B * H) * sizeof(float)) != 0;
                                    if (lstm)
                                        bad += memcmp(a.c_n + l * B * H, cn2 + l * B2 * H, (size_t)(B * H) * sizeof(float)) != 0;
                                }
                                CHECK(bad == 0, "%s cfg %zu threads %d B %ld T %ld h_0 %s variant %d: differs from the ragged batch (%d)",
                                      isas[i], ci, threads, (long)B, (long)T, given ? "given" : "NULL", variant, bad);
                            }
                        }
                        // all T - 1 steps (zeros after them), against the same rows beside one of T
                        if (T > 1) {
                            for (int64_t b = 0; b < B2; b++) lens2[b] = b < B ? T - 1 : T;
                            for (int64_t b = 0; b < B; b++) lens1[b] = T - 1;
                            lstm_forward_args r = {.seq_len = T, .batch = B2, .input = x2, .input_stride_t = B2 * I,
                                                   .input_stride_b = I, .lengths = lens2, .h_0 = h02,
                                                   .c_0 = lstm ? c02 : NULL, .output = out2,
                                                   .output_stride_t = B2 * H, .output_stride_b = H, .h_n = hn2,
                                                   .c_n = lstm ? cn2 : NULL};
                            lstm_forward_args a = r;
                            a.batch = B, a.input = x1, a.input_stride_t = B * I, a.lengths = lens1, a.h_0 = h01;
                            a.c_0 = lstm ? c01 : NULL, a.output = out1, a.output_stride_t = B * H, a.h_n = hn1;
                            a.c_n = lstm ? cn1 : NULL;
                            for (int64_t e = 0; e < T * B * H; e++) out1[e] = SENTINEL;
                            CHECK(lstm_model_forward(m, &r, NULL, 0) == LSTM_OK, "ragged batch");
                            CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "uniform batch");
                            int bad = 0;
                            for (int64_t t = 0; t < T; t++)
                                bad += memcmp(out1 + t * B * H, out2 + t * B2 * H, (size_t)(B * H) * sizeof(float)) != 0;
                            for (int64_t l = 0; l < L; l++) {
                                bad += memcmp(hn1 + l * B * H, hn2 + l * B2 * H, (size_t)(B * H) * sizeof(float)) != 0;
                                if (lstm) bad += memcmp(cn1 + l * B * H, cn2 + l * B2 * H, (size_t)(B * H) * sizeof(float)) != 0;
                            }
                            CHECK(bad == 0, "%s cfg %zu threads %d B %ld T %ld: lengths T - 1 differ from the ragged batch (%d)",
                                  isas[i], ci, threads, (long)B, (long)T, bad);
                        }
                        // lengths of 0: the general path, state kept and output zero
                        for (int64_t b = 0; b < B; b++) lens1[b] = 0;
                        lstm_forward_args z = {.seq_len = T, .batch = B, .input = x1, .input_stride_t = B * I,
                                               .input_stride_b = I, .lengths = lens1, .h_0 = h01,
                                               .c_0 = lstm ? c01 : NULL, .output = out1, .output_stride_t = B * H,
                                               .output_stride_b = H, .h_n = hn1, .c_n = lstm ? cn1 : NULL};
                        CHECK(lstm_model_forward(m, &z, NULL, 0) == LSTM_OK, "length 0");
                        int bad = memcmp(hn1, h01, (size_t)(L * B * H) * sizeof(float)) != 0;
                        if (lstm) bad += memcmp(cn1, c01, (size_t)(L * B * H) * sizeof(float)) != 0;
                        for (int64_t e = 0; e < T * B * H; e++) bad += out1[e] != 0.0f;
                        CHECK(bad == 0, "%s cfg %zu B %ld: length 0 changed the state or wrote output", isas[i], ci, (long)B);
                        free(x2), free(x1), free(h02), free(c02), free(h01), free(c01), free(out2), free(out1);
                        free(hn2), free(cn2), free(hn1), free(cn1), free(lens2), free(lens1);
                    }
                lstm_model_free(m);
            }
        free_weights(&W);
    }
}

/* NaN in one input step must poison that sequence's outputs from there on (and
 * the reverse direction up to there), as in PyTorch; returns 1 if it does. */
static int nan_propagates(const char *isa) {
    lstm_config cfg = {5, 20, 1, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32};
    weights W;
    make_weights(&cfg, &W);
    lstm_model *m = NULL;
    int ok = 0;
    if (lstm_set_isa(isa) == LSTM_OK &&
        lstm_model_create(&cfg, (const float *const *)W.w, W.n, &m) == LSTM_OK) {
        float x[3 * 2 * 5], out[3 * 2 * 40], hn[2 * 2 * 20], cn[2 * 2 * 20];
        for (int i = 0; i < 30; i++) x[i] = rnd_f(-1, 1);
        x[(1 * 2 + 0) * 5 + 2] = NAN; /* step 1 of sequence 0 */
        lstm_forward_args a = {.seq_len = 3, .batch = 2, .input = x, .input_stride_t = 10,
                               .input_stride_b = 5, .output = out, .output_stride_t = 80,
                               .output_stride_b = 40, .h_n = hn, .c_n = cn};
        if (lstm_model_forward(m, &a, NULL, 0) == LSTM_OK) {
            int nan0 = 0, nan1 = 0;
            for (int t = 0; t < 3; t++)
                for (int e = 0; e < 40; e++) {
                    const int want = e < 20 ? t >= 1 : t <= 1; /* forward / reverse half */
                    nan0 += isnan(out[t * 80 + e]) == want;
                    nan1 += isnan(out[t * 80 + 40 + e]) != 0;
                }
            ok = nan0 == 3 * 40 && nan1 == 0;
        }
    }
    lstm_model_free(m);
    free_weights(&W);
    return ok;
}

/* Several caller threads on one model at once (the pool serves one call, the
 * others run on their own thread): every result bit-identical to a serial call. */
typedef struct {
    const lstm_model *m;
    lstm_forward_args a;
    int ok;
} caller;

static void *caller_main(void *p) {
    caller *c = p;
    c->ok = 1;
    for (int rep = 0; rep < 3; rep++) c->ok &= lstm_model_forward(c->m, &c->a, NULL, 0) == LSTM_OK;
    return NULL;
}

static int never_stop(void *ctx) {
    (void)ctx;
    return 0;
}

/*
 * A projection of 192 tokens or more and 1,024 columns or more reads its
 * rows packed on a set that packs (forward.c, PACK_MIN_ROWS, PACK_MIN_COLS),
 * a chunk of up to 1536 rows at a time (fewer when the call polls for
 * interrupts): each sequence of such a batch gets the bits it gets alone
 * (then under 192 tokens, not packed), on 1 and 2 threads, ragged and equal
 * lengths (the one-thread short path packs too), for every kind and weight
 * type, with a wider and a narrower layer 1 input.
 */
static void test_packed_projection(const char *const *isas, int n_isas) {
    static struct {
        lstm_config cfg; /* I, H, L, bias, bi, P, cell, weights */
        int64_t B, lo, hi; /* lengths in [lo, hi]; equal ones (lo + hi) / 2 */
    } cases[] = {
        {{20, 128, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 24, 40, 130}, /* ~2,000 tokens; polls */
        {{64, 256, 2, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 24, 60, 120}, /* short path */
        {{20, 128, 2, 1, 1, 11, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 8, 20, 60},  /* layer 1 input 22 */
        {{13, 352, 1, 1, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 8, 20, 60},
        {{7, 512, 1, 0, 1, 0, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32}, 8, 20, 60},
        {{20, 128, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F16}, 8, 20, 60},
        {{13, 352, 1, 1, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_I8}, 8, 20, 60},
        /* 17 panels, uneven over 2 and 3 threads, and chunks for polls under pack_rows: every
         * thread must take the same chunks (each once took its own from its share of panels,
         * packing over another's rows and meeting barriers out of step) */
        {{100, 272, 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 24, 40, 130},
        /* hidden size set below from this CPU's L2: chunks of steps (forward.c's chunk_rows)
         * of ~350 tokens whatever the L2, so ~2,000 tokens run in several */
        {{20, 0, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 24, 40, 130},
    };
    enum { MAX_B = 24 };
    {
        const int64_t tiles = lstm_cache_sizes()->l2 / (2 * LSTM_TILE * 4 * (int64_t)sizeof(float) * 350);
        cases[sizeof cases / sizeof *cases - 1].cfg.hidden_size = LSTM_TILE * (tiles < 1 ? 1 : tiles);
    }
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const lstm_config *cfg = &cases[ci].cfg;
        const int64_t B = cases[ci].B, T = cases[ci].hi, I = cfg->input_size, H = cfg->hidden_size;
        const int64_t D = 1 + cfg->bidirectional, P = cfg->proj_size ? cfg->proj_size : H;
        const int64_t S = cfg->num_layers * D;
        const int lstm = cfg->cell == LSTM_CELL_LSTM;
        weights W;
        make_weights(cfg, &W);
        float *x = fbuf(T * B * I), *out = fbuf(T * B * D * P), *hn = fbuf(S * B * P), *cn = fbuf(S * B * H);
        float *out1 = fbuf(T * D * P), *hn1 = fbuf(S * P), *cn1 = fbuf(S * H);
        int64_t lens[MAX_B];
        for (int64_t e = 0; e < T * B * I; e++) x[e] = rnd_f(-2, 2);
        for (int i = 0; i < n_isas; i++) {
            CHECK(lstm_set_isa(isas[i]) == LSTM_OK, "set_isa");
            const int packs = lstm_active_kernels()->packs; // only the sets that pack read packed rows
            for (int threads = 1; threads <= 3 && packs; threads++)
                for (int mode = 0; mode < 3; mode++) { // 0 ragged, 1 ragged with polls, 2 equal lengths
                    CHECK(lstm_set_isa(isas[i]) == LSTM_OK, "set_isa");
                    lstm_set_num_threads(threads);
                    lstm_model *m = NULL;
                    CHECK(lstm_model_create(cfg, (const float *const *)W.w, W.n, &m) == LSTM_OK, "create");
                    int64_t N = 0;
                    for (int64_t b = 0; b < B; b++)
                        N += lens[b] = mode == 2 ? (cases[ci].lo + cases[ci].hi) / 2 : rnd_i(cases[ci].lo, T);
                    CHECK(N >= 192, "case %zu: %ld tokens, too few to pack", ci, (long)N);
                    lstm_forward_args a = {.seq_len = T, .batch = B, .input = x, .input_stride_t = B * I,
                                           .input_stride_b = I, .lengths = lens, .output = out,
                                           .output_stride_t = B * D * P, .output_stride_b = D * P, .h_n = hn,
                                           .c_n = lstm ? cn : NULL, .interrupt = mode == 1 ? never_stop : NULL};
                    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "batch");
                    int bad = 0;
                    for (int64_t b = 0; b < B; b++) {
                        lstm_forward_args o = {.seq_len = lens[b], .batch = 1, .input = x + b * I,
                                               .input_stride_t = B * I, .input_stride_b = I, .output = out1,
                                               .output_stride_t = D * P, .output_stride_b = D * P, .h_n = hn1,
                                               .c_n = lstm ? cn1 : NULL};
                        CHECK(lstm_model_forward(m, &o, NULL, 0) == LSTM_OK, "one sequence");
                        for (int64_t t = 0; t < lens[b]; t++)
                            bad += memcmp(out1 + t * D * P, out + (t * B + b) * D * P, (size_t)(D * P) * sizeof(float)) != 0;
                        for (int64_t sl = 0; sl < S; sl++) {
                            bad += memcmp(hn1 + sl * P, hn + (sl * B + b) * P, (size_t)P * sizeof(float)) != 0;
                            if (lstm) bad += memcmp(cn1 + sl * H, cn + (sl * B + b) * H, (size_t)H * sizeof(float)) != 0;
                        }
                    }
                    CHECK(bad == 0, "%s case %zu threads %d mode %d (%ld tokens): %d rows differ from the sequences alone",
                          isas[i], ci, threads, mode, (long)N, bad);
                    lstm_model_free(m);
                }
        }
        free(x), free(out), free(hn), free(cn), free(out1), free(hn1), free(cn1);
        free_weights(&W);
    }
    lstm_set_isa("auto");
    lstm_set_num_threads(1);
}

static void test_concurrent_callers(const char *isa) {
    enum { NC = 4, TT = 20, BB = 6, II = 24, HH = 96 };
    lstm_config cfg = {II, HH, 1, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32};
    weights W;
    make_weights(&cfg, &W);
    lstm_model *m = NULL;
    CHECK(lstm_set_isa(isa) == LSTM_OK, "set_isa");
    lstm_set_num_threads(2);
    CHECK(lstm_model_create(&cfg, (const float *const *)W.w, W.n, &m) == LSTM_OK, "create");
    static float x[NC][TT * BB * II], out[NC][TT * BB * 2 * HH], want[NC][TT * BB * 2 * HH];
    static int64_t lens[NC][BB];
    caller c[NC];
    pthread_t th[NC];
    for (int k = 0; k < NC; k++) {
        for (int i = 0; i < TT * BB * II; i++) x[k][i] = rnd_f(-1, 1);
        for (int b = 0; b < BB; b++) lens[k][b] = rnd_i(0, TT);
        lstm_forward_args a = {.seq_len = TT, .batch = BB, .input = x[k],
                               .input_stride_t = BB * II, .input_stride_b = II,
                               .lengths = lens[k], .output = want[k],
                               .output_stride_t = BB * 2 * HH, .output_stride_b = 2 * HH};
        CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "serial forward");
        a.output = out[k];
        c[k] = (caller){m, a, 0};
    }
    for (int k = 0; k < NC; k++) pthread_create(&th[k], NULL, caller_main, &c[k]);
    for (int k = 0; k < NC; k++) {
        pthread_join(th[k], NULL);
        CHECK(c[k].ok, "%s concurrent caller %d failed", isa, k);
        CHECK(memcmp(out[k], want[k], sizeof out[k]) == 0, "%s concurrent caller %d differs", isa, k);
    }
    /* calls far apart: the workers have gone to sleep and may wake too late to
       join, so a call runs with fewer threads than planned; same results */
    for (int rep = 0; rep < 4; rep++) {
        usleep(20000);
        memset(out[0], 0, sizeof out[0]);
        CHECK(lstm_model_forward(m, &c[0].a, NULL, 0) == LSTM_OK, "%s sporadic call", isa);
        CHECK(memcmp(out[0], want[0], sizeof out[0]) == 0, "%s sporadic call %d differs", isa, rep);
    }
    lstm_model_free(m);
    free_weights(&W);
}

/* ------------------------------------------------------------------ (c) errors */

static void test_errors(void) {
    lstm_config cfg = {6, 10, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32};
    weights W;
    make_weights(&cfg, &W);
    const float *const *w = (const float *const *)W.w;
    lstm_model *m = (lstm_model *)(uintptr_t)1; /* must be left alone or set to NULL */

    /* status strings */
    for (int st = 0; st <= 6; st++) CHECK(lstm_status_string((lstm_status)st) != NULL, "status string %d", st);
    CHECK(lstm_status_string((lstm_status)999) != NULL, "status string 999");
    CHECK(lstm_status_string((lstm_status)-1) != NULL, "status string -1");

    /* create */
    CHECK(lstm_model_create(NULL, w, W.n, &m) != LSTM_OK, "create NULL cfg");
    CHECK(lstm_model_create(&cfg, w, W.n, NULL) != LSTM_OK, "create NULL out");
    CHECK(lstm_model_create(&cfg, NULL, W.n, &m) != LSTM_OK, "create NULL weights");
    CHECK(lstm_model_create(&cfg, w, W.n - 1, &m) == LSTM_ERR_INVALID_ARGUMENT, "create too few weights");
    CHECK(lstm_model_create(&cfg, w, W.n + 1, &m) == LSTM_ERR_INVALID_ARGUMENT, "create too many weights");
    {
        float *saved = W.w[3];
        W.w[3] = NULL;
        CHECK(lstm_model_create(&cfg, w, W.n, &m) == LSTM_ERR_INVALID_ARGUMENT, "create a NULL weight");
        W.w[3] = saved;
    }
    const lstm_config bad_cfgs[] = {
        {6, 0, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},  {6, -1, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, {0, 10, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, {-3, 10, 2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {6, 10, 0, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, {6, 10, -2, 1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, {6, 10, 2, 2, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, {6, 10, 2, 1, 2, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {6, 10, 2, 1, 1, 10, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, {6, 10, 2, 1, 1, 11, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, {6, 10, 2, 1, 1, -1, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, {6, 10, 2, -1, 1, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {6, 10, 2, 1, 1, 0, 4, LSTM_WEIGHTS_F32}, {6, 10, 2, 1, 1, 0, -1, LSTM_WEIGHTS_F32}, {6, 10, 2, 1, 1, 3, LSTM_CELL_GRU, LSTM_WEIGHTS_F32},
        {6, 10, 2, 1, 1, 3, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32}, {6, LSTM_MAX_FEATURES + 1, 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {6, 10, LSTM_MAX_LAYERS + 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
    };
    for (size_t i = 0; i < sizeof bad_cfgs / sizeof *bad_cfgs; i++) {
        CHECK(lstm_weight_count(&bad_cfgs[i]) == 0, "weight_count of bad cfg %zu", i);
        CHECK(lstm_model_create(&bad_cfgs[i], w, W.n, &m) == LSTM_ERR_INVALID_ARGUMENT,
              "create bad cfg %zu", i);
    }
    CHECK(lstm_weight_count(NULL) == 0, "weight_count NULL");
    {
        int64_t shape[2];
        CHECK(lstm_weight_shape(&cfg, W.n, shape) == LSTM_ERR_INVALID_ARGUMENT, "weight_shape past the end");
        CHECK(lstm_weight_shape(&bad_cfgs[0], 0, shape) == LSTM_ERR_INVALID_ARGUMENT, "weight_shape bad cfg");
        CHECK(lstm_weight_shape(&cfg, 0, NULL) == LSTM_ERR_INVALID_ARGUMENT, "weight_shape NULL");
    }
    /* sizes whose weights cannot be represented */
    {
        lstm_config huge = {INT32_MAX, INT32_MAX, INT32_MAX, 1, 1, INT32_MAX - 1, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32};
        size_t n = lstm_weight_count(&huge);
        lstm_status s = lstm_model_create(&huge, w, n, &m);
        CHECK(s == LSTM_ERR_SIZE_OVERFLOW || s == LSTM_ERR_INVALID_ARGUMENT || s == LSTM_ERR_OUT_OF_MEMORY,
              "create huge cfg -> %d", s);
    }
    lstm_model_free(NULL); /* allowed */
    CHECK(lstm_model_config(NULL) == NULL, "config(NULL)");

    m = NULL;
    CHECK(lstm_model_create(&cfg, w, W.n, &m) == LSTM_OK && m, "create good");
    const int64_t T = 4, B = 3, O = 10, S = 4;
    float x[4 * 3 * 6], out[4 * 3 * 20], hn[4 * 3 * 10], cn[4 * 3 * 10];
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = rnd_f(-1, 1);
    int64_t lens[3] = {4, 2, 0};
    lstm_forward_args good = {.seq_len = T, .batch = B, .input = x, .input_stride_t = B * 6,
                              .input_stride_b = 6, .lengths = lens, .output = out,
                              .output_stride_t = B * 2 * O, .output_stride_b = 2 * O, .h_n = hn,
                              .c_n = cn};
    (void)S;
    CHECK(lstm_model_forward(m, &good, NULL, 0) == LSTM_OK, "good forward");
    CHECK(lstm_model_forward(NULL, &good, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "forward NULL model");
    CHECK(lstm_model_forward(m, NULL, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "forward NULL args");
    lstm_forward_args a = good;
    a.input = NULL;
    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "forward NULL input");
    a = good, a.output = NULL;
    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "forward NULL output");
    a = good, a.seq_len = -1;
    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "forward T<0");
    a = good, a.batch = -1;
    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "forward B<0");
    {
        int64_t l1[3] = {4, -1, 2}, l2[3] = {5, 1, 2}, l3[3] = {INT64_MIN, 1, 1}, l4[3] = {1, 1, INT64_MAX};
        const int64_t *ls[] = {l1, l2, l3, l4};
        for (int i = 0; i < 4; i++) {
            a = good, a.lengths = ls[i];
            CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_ERR_INVALID_ARGUMENT, "forward bad lengths %d", i);
        }
    }
    size_t need = 0;
    CHECK(lstm_workspace_size(m, T, B, NULL, &need) == LSTM_OK && need > 0, "workspace_size");
    CHECK(lstm_workspace_size(NULL, T, B, NULL, &need) == LSTM_ERR_INVALID_ARGUMENT, "workspace_size NULL model");
    CHECK(lstm_workspace_size(m, T, B, NULL, NULL) == LSTM_ERR_INVALID_ARGUMENT, "workspace_size NULL out");
    CHECK(lstm_workspace_size(m, -1, B, NULL, &need) == LSTM_ERR_INVALID_ARGUMENT, "workspace_size T<0");
    CHECK(lstm_workspace_size(m, T, -1, NULL, &need) == LSTM_ERR_INVALID_ARGUMENT, "workspace_size B<0");
    {
        int64_t bad_lens[3] = {4, 5, 0};
        CHECK(lstm_workspace_size(m, T, B, bad_lens, &need) == LSTM_ERR_INVALID_ARGUMENT,
              "workspace_size bad lengths");
    }
    lstm_workspace_size(m, T, B, lens, &need);
    {
        char *ws = malloc(need);
        CHECK(lstm_model_forward(m, &good, ws, need - 1) == LSTM_ERR_WORKSPACE_TOO_SMALL, "workspace one byte short");
        CHECK(lstm_model_forward(m, &good, ws, 0) == LSTM_ERR_WORKSPACE_TOO_SMALL, "workspace size 0");
        CHECK(lstm_model_forward(m, &good, ws, need) == LSTM_OK, "workspace exact");
        /* an unaligned workspace of the announced size must still be enough */
        char *ws2 = malloc(need + 1);
        CHECK(lstm_model_forward(m, &good, ws2 + 1, need) == LSTM_OK, "workspace unaligned");
        free(ws2);
        free(ws);
    }
    /* overflow: checked before allocating anything */
    {
        const int64_t big[][2] = {{INT64_C(1) << 40, INT64_C(1) << 40}, {INT64_MAX, 1},
                                  {1, INT64_MAX}, {INT64_MAX, INT64_MAX},
                                  {INT64_C(1) << 31, INT64_C(1) << 31}, {INT64_C(1) << 62, 2}};
        for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
            need = 12345;
            CHECK(lstm_workspace_size(m, big[i][0], big[i][1], NULL, &need) == LSTM_ERR_SIZE_OVERFLOW,
                  "workspace_size overflow %zu (T=%lld B=%lld)", i, (long long)big[i][0], (long long)big[i][1]);
            a = good;
            a.seq_len = big[i][0], a.batch = big[i][1], a.lengths = NULL;
            /* lengths NULL and T*B huge: the library must refuse before touching input */
            lstm_status s = lstm_model_forward(m, &a, NULL, 0);
            CHECK(s == LSTM_ERR_SIZE_OVERFLOW, "forward overflow %zu -> %d (%s)", i, s, lstm_status_string(s));
            s = lstm_model_forward(m, &a, out, sizeof out);
            CHECK(s == LSTM_ERR_SIZE_OVERFLOW, "forward overflow with workspace %zu -> %d", i, s);
        }
        /* T 0 passes T * B, but the copy of B lengths cannot be sized (it once wrapped to a
         * tiny block that was then read past its end) */
        for (int i = 0; i < 2; i++) {
            a = good;
            a.seq_len = 0, a.batch = (INT64_C(1) << 61) + i;
            lstm_status s = lstm_model_forward(m, &a, NULL, 0);
            CHECK(s == LSTM_ERR_SIZE_OVERFLOW, "forward T=0 B=2^61+%d with lengths -> %d", i, s);
        }
    }
    /* representable but impossible to allocate: OUT_OF_MEMORY, not a crash */
    {
        const int64_t Tb = INT64_C(1) << 36;
        lstm_status s = lstm_workspace_size(m, Tb, 64, NULL, &need);
        if (s == LSTM_OK && need >= (size_t)1 << 44) { /* tens of TiB: no malloc gives them */
            a = good;
            a.seq_len = Tb, a.batch = 64, a.lengths = NULL;
            s = lstm_model_forward(m, &a, NULL, 0);
            CHECK(s == LSTM_ERR_OUT_OF_MEMORY, "forward unallocatable -> %d", s);
        } else {
            CHECK(s == LSTM_ERR_SIZE_OVERFLOW, "workspace_size(2^36, 64) -> %d", s);
        }
    }
    /* T = 0 or B = 0 are valid no-ops */
    a = good, a.seq_len = 0, a.lengths = NULL;
    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "forward T=0");
    a = good, a.batch = 0, a.lengths = NULL;
    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "forward B=0");

    /* ISA and threads */
    const char *before = lstm_get_isa();
    CHECK(lstm_set_isa("bogus") == LSTM_ERR_UNKNOWN_ISA, "set_isa bogus");
    CHECK(lstm_set_isa("") == LSTM_ERR_UNKNOWN_ISA, "set_isa empty");
    CHECK(lstm_set_isa(NULL) != LSTM_OK, "set_isa NULL");
    CHECK(strcmp(lstm_get_isa(), before) == 0, "a failed set_isa changed the ISA");
    CHECK(lstm_set_isa("scalar") == LSTM_OK, "set_isa scalar");
    lstm_set_num_threads(0);
    CHECK(lstm_get_num_threads() >= 1, "threads after set 0: %d", lstm_get_num_threads());
    lstm_set_num_threads(-5);
    CHECK(lstm_get_num_threads() >= 1, "threads after set -5: %d", lstm_get_num_threads());
    lstm_set_num_threads(3);
    CHECK(lstm_model_forward(m, &good, NULL, 0) == LSTM_OK, "forward after thread changes");
    lstm_set_num_threads(1);

    lstm_model_release_memory(m);
    lstm_model_release_memory(NULL); /* allowed */
    CHECK(lstm_model_forward(m, &good, NULL, 0) == LSTM_OK, "forward after release_memory");
    lstm_model_free(m);
    free_weights(&W);
}

/* An interrupt callback that says stop on its n-th call. */
typedef struct {
    int calls, stop_at;
} interrupt_state;

static int interrupt_at(void *ctx) {
    interrupt_state *st = ctx;
    return ++st->calls >= st->stop_at;
}

/* A long call polls its interrupt callback; a non-zero answer stops it with
 * LSTM_ERR_INTERRUPTED (on 1 and 2 threads, through every stage), and the
 * model then gives the same results as before. */
static void test_interrupt(const char *isa) {
    /* a batch (polls in the input projection and between layers) and one long
       sequence (polls between steps too); both just above the polling threshold */
    const struct { int64_t T, B, I, H, L, bi; } shapes[] = {{100, 8, 32, 64, 2, 1}, {3000, 1, 8, 64, 1, 0}};
    for (int sh = 0; sh < 2; sh++)
        for (int cell = 0; cell < 2; cell++)
            for (int threads = 1; threads <= 2; threads++) {
                const int64_t T = shapes[sh].T, B = shapes[sh].B, I = shapes[sh].I, H = shapes[sh].H;
                const int64_t DH = (1 + shapes[sh].bi) * H, n_out = T * B * DH;
                lstm_config cfg = {(int32_t)I, (int32_t)H, (int32_t)shapes[sh].L, 1, (int32_t)shapes[sh].bi, 0,
                                   cell ? LSTM_CELL_GRU : LSTM_CELL_LSTM, LSTM_WEIGHTS_F32};
                weights W;
                make_weights(&cfg, &W);
                lstm_model *m = NULL;
                CHECK(lstm_set_isa(isa) == LSTM_OK, "set_isa");
                lstm_set_num_threads(threads);
                CHECK(lstm_model_create(&cfg, (const float *const *)W.w, W.n, &m) == LSTM_OK, "create");
                float *x = xcalloc((size_t)(T * B * I), sizeof(float));
                float *want = xcalloc((size_t)n_out, sizeof(float)), *out = xcalloc((size_t)n_out, sizeof(float));
                for (int64_t i = 0; i < T * B * I; i++) x[i] = rnd_f(-1, 1);
                lstm_forward_args a = {.seq_len = T, .batch = B, .input = x, .input_stride_t = B * I,
                                       .input_stride_b = I, .output = want,
                                       .output_stride_t = B * DH, .output_stride_b = DH};
                CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "uninterrupted");
                interrupt_state never = {0, 1 << 30};
                a.interrupt = interrupt_at, a.interrupt_ctx = &never, a.output = out;
                CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "callback that never stops");
                CHECK(never.calls >= 3, "%s %d threads shape %d: the callback was polled %d times", isa,
                      threads, sh, never.calls);
                CHECK(memcmp(out, want, (size_t)n_out * sizeof(float)) == 0, "polling changed results");
                for (int at = 1; at <= never.calls; at++) {
                    interrupt_state st = {0, at};
                    a.interrupt_ctx = &st;
                    lstm_status s = lstm_model_forward(m, &a, NULL, 0);
                    /* a call that ran with fewer threads than planned polls less often */
                    CHECK((s == LSTM_ERR_INTERRUPTED && st.calls == at) ||
                              (s == LSTM_OK && st.calls < at && threads > 1),
                          "%s %d threads shape %d: stop at poll %d -> %d after %d polls", isa, threads, sh,
                          at, s, st.calls);
                }
                a.interrupt = NULL;
                memset(out, 0, (size_t)n_out * sizeof(float));
                CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK &&
                          memcmp(out, want, (size_t)n_out * sizeof(float)) == 0,
                      "%s %d threads: results after an interrupt differ", isa, threads);
                free(x), free(want), free(out);
                lstm_model_free(m);
                free_weights(&W);
            }
}

/*
 * forward.c's pipe (one direction, steps too small to split, 2 threads: one
 * projects while the other steps, waiting for each step's projections)
 * gives the bits of 1 thread: outputs, h_n and c_n, 1 and 2 layers, every
 * cell, float32, float16 and int8, batch 1 and a ragged batch of 2, the
 * library's and the caller's workspace. The shapes are the pipe's: the
 * projection 0.05-2x the steps' flops, each step under 40 K flops (int8 on
 * AVX512-VNNI under 330 K; elsewhere those steps are split, also checked).
 */
static void test_pipe(const char *const *isas, int n_isas) {
    const struct { int cell, weights; int64_t I, H, L, T, B; } cases[] = {
        {LSTM_CELL_LSTM, LSTM_WEIGHTS_F32, 64, 64, 2, 300, 1},
        {LSTM_CELL_GRU, LSTM_WEIGHTS_F32, 48, 40, 1, 257, 2},
        {LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32, 64, 64, 1, 300, 1},
        {LSTM_CELL_LSTM, LSTM_WEIGHTS_F16, 64, 64, 1, 300, 1},
        {LSTM_CELL_LSTM, LSTM_WEIGHTS_I8, 64, 128, 2, 200, 1},
        {LSTM_CELL_GRU, LSTM_WEIGHTS_I8, 64, 128, 1, 201, 2},
    };
    for (int i = 0; i < n_isas; i++)
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            const int64_t I = cases[c].I, H = cases[c].H, T = cases[c].T, B = cases[c].B, L = cases[c].L;
            const int lstm = cases[c].cell == LSTM_CELL_LSTM;
            lstm_config cfg = {(int32_t)I, (int32_t)H, (int32_t)L, 1, 0, 0, cases[c].cell, cases[c].weights};
            weights W;
            make_weights(&cfg, &W);
            lstm_model *m = NULL;
            CHECK(lstm_set_isa(isas[i]) == LSTM_OK, "set_isa");
            CHECK(lstm_model_create(&cfg, (const float *const *)W.w, W.n, &m) == LSTM_OK, "create");
            const int64_t n_x = T * B * I, n_out = T * B * H, n_state = L * B * H;
            float *x = xcalloc((size_t)n_x, sizeof(float));
            for (int64_t e = 0; e < n_x; e++) x[e] = rnd_f(-2, 2);
            const int64_t lens[2] = {T, T * 2 / 3};
            float *out[2], *hn[2], *cn[2];
            for (int t = 0; t < 2; t++) {
                out[t] = xcalloc((size_t)n_out, sizeof(float));
                hn[t] = xcalloc((size_t)n_state, sizeof(float));
                cn[t] = xcalloc((size_t)n_state, sizeof(float));
            }
            for (int ws = 0; ws < 2; ws++) {
                for (int t = 0; t < 2; t++) {
                    lstm_set_num_threads(t + 1);
                    lstm_forward_args a = {.seq_len = T, .batch = B, .input = x, .input_stride_t = B * I,
                                           .input_stride_b = I, .lengths = B > 1 ? lens : NULL,
                                           .output = out[t], .output_stride_t = B * H, .output_stride_b = H,
                                           .h_n = hn[t], .c_n = lstm ? cn[t] : NULL};
                    size_t bytes = 0;
                    void *w = NULL;
                    if (ws) {
                        CHECK(lstm_workspace_size(m, T, B, a.lengths, &bytes) == LSTM_OK, "workspace size");
                        w = xcalloc(bytes ? bytes : 1, 1);
                    }
                    CHECK(lstm_model_forward(m, &a, w, bytes) == LSTM_OK, "forward");
                    free(w);
                }
                CHECK(memcmp(out[0], out[1], (size_t)n_out * sizeof(float)) == 0 &&
                          memcmp(hn[0], hn[1], (size_t)n_state * sizeof(float)) == 0 &&
                          memcmp(cn[0], cn[1], (size_t)n_state * sizeof(float)) == 0,
                      "%s pipe case %zu (workspace %d): 2 threads differ from 1", isas[i], c, ws);
            }
            for (int t = 0; t < 2; t++) free(out[t]), free(hn[t]), free(cn[t]);
            free(x);
            lstm_model_free(m);
            free_weights(&W);
        }
    lstm_set_num_threads(1);
}

/* ------------------------------------------------------------------ reduced weights */

/* out (T, B, D*O) of model m on x, ragged lengths; returns 0 on failure */
static int forward_plain(const lstm_model *m, int64_t T, int64_t B, const float *x,
                         const int64_t *lengths, float *out) {
    const lstm_config *cfg = lstm_model_config(m);
    const int64_t I = cfg->input_size, O = cfg->proj_size ? cfg->proj_size : cfg->hidden_size;
    const int64_t DO = (1 + cfg->bidirectional) * O;
    lstm_forward_args a = {.seq_len = T, .batch = B, .input = x, .input_stride_t = B * I,
                           .input_stride_b = I, .lengths = lengths, .output = out,
                           .output_stride_t = B * DO, .output_stride_b = DO};
    return lstm_model_forward(m, &a, NULL, 0) == LSTM_OK;
}

/*
 * A float16 model computes what a float32 model of the rounded weights does,
 * to the bit, on each of forward.c's paths for halves: every block
 * converting its own tiles (under CONVERT_MIN_TOKENS tokens); w_hh converted
 * to float32 once (a small one, or a batch of CONVERT_MIN_BATCH); w_ih too
 * (more tokens than one chunk of projections, chunk_rows); and w_ih
 * converted with w_hh kept in halves (over half of L2 as float32, at a small
 * batch; only where L2 passes 512 KB can such a w_hh come in chunks). The
 * sizes follow this CPU's L2. Ragged, 2 layers, 1 and 2 threads.
 */
static void test_f16_paths(const char *const *isas, int n_isas) {
    const int64_t l2 = lstm_cache_sizes()->l2;
    int64_t big = 16; /* the smallest hidden size whose float32 LSTM w_hh passes half of L2 */
    while (16 * big * big <= l2 / 2) big += 16;
    const int chunked_big = l2 / (16 * big) >= 256; /* its chunks' rows reach MIN_CHUNK_ROWS */
    const int64_t fit40 = l2 / (3 * 64 * 4);        /* an LSTM chunk's rows at hidden 40 */
    const struct {
        int cell, I, H, L, bi;
        int64_t T, B;
        int ih, hh; /* converted: w_ih, w_hh */
    } cases[] = {
        {LSTM_CELL_LSTM, 7, 40, 2, 1, 3, 3, 0, 0},  /* at most 6 tokens: no conversion */
        {LSTM_CELL_GRU, 7, 40, 2, 0, 3, 3, 0, 0},
        {LSTM_CELL_LSTM, 7, 40, 2, 1, 9, 5, 0, 1},  /* 35 tokens, one chunk, a small w_hh */
        {LSTM_CELL_GRU, 5, 20, 2, 0, 4, 20, 0, 1},  /* a batch of 20 */
        {LSTM_CELL_LSTM, 5, 40, 2, 0, 2 * fit40 / 20 + 20, 20, 1, 1}, /* two chunks and more */
        {LSTM_CELL_LSTM, 9, big, 1, 0, l2 / (16 * big) / 3 + 3, 3, 1, 0}, /* over a chunk, a big w_hh */
    };
    const size_t n_cases = sizeof cases / sizeof *cases - !chunked_big;
    for (size_t ci = 0; ci < n_cases; ci++) {
        lstm_config cfg = {.input_size = cases[ci].I, .hidden_size = cases[ci].H, .num_layers = cases[ci].L, .bias = 1,
                           .bidirectional = cases[ci].bi, .cell = cases[ci].cell};
        const int64_t T = cases[ci].T, B = cases[ci].B;
        weights W;
        make_weights(&cfg, &W);
        float **rounded = xcalloc(W.n, sizeof(float *));
        uint16_t *half = NULL;
        for (size_t i = 0; i < W.n; i++) {
            const int64_t n = W.rows[i] * W.cols[i];
            rounded[i] = xcalloc((size_t)n, sizeof(float));
            memcpy(rounded[i], W.w[i], (size_t)n * sizeof(float));
            if (W.cols[i] == 1) continue; /* a bias stays float32 */
            half = realloc(half, (size_t)n * sizeof(uint16_t));
            CHECK(half && lstm_reduce_weight(LSTM_WEIGHTS_F16, W.w[i], W.rows[i], W.cols[i], half, NULL) == LSTM_OK,
                  "reduce %zu", i);
            for (int64_t e = 0; half && e < n; e++) rounded[i][e] = lstm_half_to_float(half[e]);
        }
        free(half);
        const int64_t D = 1 + cfg.bidirectional, n_out = T * B * D * cfg.hidden_size;
        float *x = xcalloc((size_t)(T * B * cfg.input_size), sizeof(float));
        for (int64_t i = 0; i < T * B * cfg.input_size; i++) x[i] = rnd_f(-2, 2);
        int64_t *lengths = xcalloc((size_t)B, sizeof(int64_t));
        for (int64_t b = 0; b < B; b++) lengths[b] = (T - b % (T + 1)); /* T, T - 1, .., 0, T, ..: the tokens fixed */
        float *o16 = xcalloc((size_t)n_out, sizeof(float)), *o32 = xcalloc((size_t)n_out, sizeof(float));
        for (int i = 0; i < n_isas; i++)
            for (int threads = 1; threads <= 2; threads++) {
                lstm_set_isa(isas[i]);
                lstm_set_num_threads(threads);
                lstm_model *m16 = NULL, *m32 = NULL;
                lstm_config c16 = cfg;
                c16.weights = LSTM_WEIGHTS_F16;
                CHECK(lstm_model_create(&c16, (const float *const *)W.w, W.n, &m16) == LSTM_OK &&
                          lstm_model_create(&cfg, (const float *const *)rounded, W.n, &m32) == LSTM_OK,
                      "f16 paths: create");
                if (m16 && m32) {
                    /* the path taken shows in the workspace: float32 copies of the converted halves */
                    const int64_t panels = (1 + cfg.bidirectional) * ((cfg.hidden_size + 15) / 16) * 16 *
                                           lstm_gates(cfg.cell) * (int64_t)sizeof(float);
                    const int64_t widest = cfg.num_layers > 1 ? (1 + cfg.bidirectional) * cfg.hidden_size : 0;
                    const int64_t in = cfg.input_size > widest ? cfg.input_size : widest;
                    const int64_t want = (cases[ci].ih ? panels * in : 0) + (cases[ci].hh ? panels * cfg.hidden_size : 0);
                    size_t ws16 = 0, ws32 = 0;
                    CHECK(lstm_workspace_size(m16, T, B, lengths, &ws16) == LSTM_OK &&
                              lstm_workspace_size(m32, T, B, lengths, &ws32) == LSTM_OK,
                          "f16 paths: workspace size");
                    const int64_t extra = (int64_t)ws16 - (int64_t)ws32;
                    CHECK(extra >= want && extra < want + 128, "[f16 paths case %zu] %ld extra workspace bytes, "
                          "want %ld (w_ih %sconverted, w_hh %sconverted)", ci, (long)extra, (long)want,
                          cases[ci].ih ? "" : "not ", cases[ci].hh ? "" : "not ");
                    memset(o16, 0xff, (size_t)n_out * sizeof(float));
                    CHECK(forward_plain(m16, T, B, x, lengths, o16) && forward_plain(m32, T, B, x, lengths, o32),
                          "f16 paths: forward");
                    CHECK(memcmp(o16, o32, (size_t)n_out * sizeof(float)) == 0,
                          "[f16 paths isa=%s thr=%d cell=%d H=%d T=%ld B=%ld] float16 differs from float32 on the "
                          "rounded weights", isas[i], threads, cfg.cell, cfg.hidden_size, (long)T, (long)B);
                }
                lstm_model_free(m16), lstm_model_free(m32);
            }
        for (size_t i = 0; i < W.n; i++) free(rounded[i]);
        free(rounded), free(x), free(lengths), free(o16), free(o32);
        free_weights(&W);
    }
}

/*
 * float16 and int8 models through the whole forward pass, every kind, bi,
 * layers, proj, ragged, both ISAs, 1 and 2 threads: lstm_model_create on
 * float32 weights and lstm_model_create_reduced on lstm_reduce_weight's
 * output give the same bits; float16 matches the naive reference on the
 * rounded weights within the float32 tolerance; int8 stays within 5e-2 of it
 * on the dequantized weights (its quantized step is checked exactly in
 * test_kernels.c).
 */
static void test_reduced_forward(const char *const *isas, int n_isas) {
    const lstm_config cfgs[] = {
        {.input_size = 37, .hidden_size = 50, .num_layers = 2, .bias = 1, .bidirectional = 1, .cell = LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {.input_size = 8, .hidden_size = 20, .num_layers = 2, .bias = 1, .bidirectional = 1, .proj_size = 7, .cell = LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {.input_size = 40, .hidden_size = 130, .num_layers = 1, .bias = 1, .proj_size = 64, .cell = LSTM_CELL_LSTM, LSTM_WEIGHTS_F32},
        {.input_size = 40, .hidden_size = 128, .num_layers = 2, .bias = 1, .bidirectional = 1, .cell = LSTM_CELL_GRU, LSTM_WEIGHTS_F32},
        {.input_size = 9, .hidden_size = 17, .num_layers = 1, .bias = 0, .cell = LSTM_CELL_GRU, LSTM_WEIGHTS_F32},
        {.input_size = 11, .hidden_size = 24, .num_layers = 2, .bias = 1, .bidirectional = 1, .cell = LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F32},
        {.input_size = 3, .hidden_size = 33, .num_layers = 3, .bias = 0, .bidirectional = 1, .cell = LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32},
    };
    const int64_t T = 9, B = 6;
    for (size_t ci = 0; ci < sizeof cfgs / sizeof *cfgs; ci++)
        for (int type = LSTM_WEIGHTS_F16; type <= LSTM_WEIGHTS_I8; type++) {
            lstm_config cfg = cfgs[ci];
            cfg.weights = type;
            weights W;
            make_weights(&cfg, &W);
            /* the reduced copies, and the float32 model of their dequantized values */
            void **red = xcalloc(W.n, sizeof(void *));
            float **sc = xcalloc(W.n, sizeof(float *)), **deq = xcalloc(W.n, sizeof(float *));
            for (size_t i = 0; i < W.n; i++) {
                const int64_t rows = W.rows[i], cols = W.cols[i], n = rows * cols;
                deq[i] = xcalloc((size_t)n, sizeof(float));
                memcpy(deq[i], W.w[i], (size_t)n * sizeof(float));
                red[i] = W.w[i];
                /* int8 models keep weight_hh int8, the other matrices float16, biases float32 */
                const int32_t storage = lstm_weight_storage(&cfg, i);
                int64_t shape[2];
                lstm_weight_shape(&cfg, i, shape);
                CHECK(storage == (!shape[1] ? LSTM_WEIGHTS_F32
                                  : type == LSTM_WEIGHTS_I8 && i % (2 + 2 * cfg.bias + !!cfg.proj_size) != 1
                                      ? LSTM_WEIGHTS_F16 : type),
                      "storage of array %zu: %d", i, storage);
                if (storage == LSTM_WEIGHTS_F32) continue;
                red[i] = xcalloc((size_t)n, 2); /* room for halves or int8 */
                sc[i] = xcalloc((size_t)rows, sizeof(float));
                CHECK(lstm_reduce_weight(storage, W.w[i], rows, cols, red[i], sc[i]) == LSTM_OK, "reduce %zu", i);
                for (int64_t e = 0; e < n; e++)
                    deq[i][e] = storage == LSTM_WEIGHTS_F16 ? lstm_half_to_float(((uint16_t *)red[i])[e])
                                                            : (float)((int8_t *)red[i])[e] * sc[i][e / cols];
            }
            weights Wd = W;
            Wd.w = deq;
            float *x = xcalloc((size_t)(T * B * cfg.input_size), sizeof(float));
            for (int64_t i = 0; i < T * B * cfg.input_size; i++) x[i] = rnd_f(-2, 2);
            int64_t lengths[6] = {9, 1, 4, 0, 9, 7};
            const int64_t O = cfg.proj_size ? cfg.proj_size : cfg.hidden_size, DO = (1 + cfg.bidirectional) * O;
            const int64_t n_out = T * B * DO;
            double *ref = xcalloc((size_t)n_out, sizeof(double));
            double *rhn = xcalloc((size_t)(cfg.num_layers * 2 * B * O), sizeof(double));
            double *rcn = xcalloc((size_t)(cfg.num_layers * 2 * B * cfg.hidden_size), sizeof(double));
            naive_forward(&Wd, T, B, x, lengths, NULL, NULL, ref, rhn, rcn);
            float *o1 = xcalloc((size_t)n_out, sizeof(float)), *o2 = xcalloc((size_t)n_out, sizeof(float));
            for (int i = 0; i < n_isas; i++)
                for (int threads = 1; threads <= 2; threads++) {
                    char ctx[160];
                    snprintf(ctx, sizeof ctx, "[reduced %s isa=%s thr=%d cell=%d H=%d P=%d bi=%d]",
                             type == LSTM_WEIGHTS_F16 ? "f16" : "i8", isas[i], threads, cfg.cell,
                             cfg.hidden_size, cfg.proj_size, cfg.bidirectional);
                    lstm_set_isa(isas[i]);
                    lstm_set_num_threads(threads);
                    lstm_model *m1 = NULL, *m2 = NULL;
                    CHECK(lstm_model_create(&cfg, (const float *const *)W.w, W.n, &m1) == LSTM_OK, "%s create", ctx);
                    CHECK(lstm_model_create_reduced(&cfg, (const void *const *)red, (const float *const *)sc,
                                                    W.n, &m2) == LSTM_OK, "%s create_reduced", ctx);
                    if (!m1 || !m2) {
                        lstm_model_free(m1), lstm_model_free(m2);
                        continue;
                    }
                    CHECK(forward_plain(m1, T, B, x, lengths, o1) && forward_plain(m2, T, B, x, lengths, o2),
                          "%s forward", ctx);
                    CHECK(memcmp(o1, o2, (size_t)n_out * sizeof(float)) == 0,
                          "%s create and create_reduced differ", ctx);
                    if (type == LSTM_WEIGHTS_F16) {
                        compare("output", ctx, o1, ref, n_out);
                    } else {
                        double worst = 0;
                        for (int64_t e = 0; e < n_out; e++) worst = fmax(worst, fabs(o1[e] - ref[e]));
                        CHECK(worst <= 5e-2, "%s int8 max error %.3g vs the dequantized reference", ctx, worst);
                    }
                    lstm_model_free(m1), lstm_model_free(m2);
                }
            for (size_t i = 0; i < W.n; i++) {
                if (red[i] != W.w[i]) free(red[i]);
                free(sc[i]), free(deq[i]);
            }
            free(red), free(sc), free(deq), free(x), free(ref), free(rhn), free(rcn), free(o1), free(o2);
            free_weights(&W);
        }

    /* what reduced weights refuse */
    lstm_config cfg = {.input_size = 4, .hidden_size = 8, .num_layers = 1, .bias = 1, .weights = 3};
    CHECK(lstm_weight_count(&cfg) == 0, "weights type 3 accepted");
    cfg.weights = LSTM_WEIGHTS_I8;
    cfg.hidden_size = LSTM_MAX_I8_STATE + 1;
    CHECK(lstm_weight_count(&cfg) == 0, "int8 accepted a state wider than LSTM_MAX_I8_STATE");
    cfg.proj_size = 16;
    CHECK(lstm_weight_count(&cfg) != 0, "int8 refused a wide hidden size with a narrow projection");
    const float bad_f16[2] = {1.0f, 65520.0f}, ok_f16[3] = {65519.0f, NAN, -INFINITY};
    const float bad_i8[2] = {1.0f, NAN};
    uint16_t h[3];
    int8_t q[2];
    float s[1];
    CHECK(lstm_reduce_weight(LSTM_WEIGHTS_F16, bad_f16, 1, 2, h, s) == LSTM_ERR_INVALID_ARGUMENT, "65520 as a half");
    CHECK(lstm_reduce_weight(LSTM_WEIGHTS_F16, ok_f16, 1, 3, h, s) == LSTM_OK && h[0] == 0x7bff &&
              (h[1] & 0x7c00) == 0x7c00 && (h[1] & 0x3ff) && h[2] == 0xfc00, "65519, NaN, -Inf as halves");
    CHECK(lstm_reduce_weight(LSTM_WEIGHTS_I8, bad_i8, 1, 2, q, s) == LSTM_ERR_INVALID_ARGUMENT, "NaN as int8");
    CHECK(lstm_reduce_weight(LSTM_WEIGHTS_F32, bad_i8, 1, 2, q, s) == LSTM_ERR_INVALID_ARGUMENT, "reduce to f32");
    lstm_config small = {.input_size = 1, .hidden_size = 1, .num_layers = 1, .weights = LSTM_WEIGHTS_I8,
                         .cell = LSTM_CELL_RNN_TANH};
    uint16_t w_ih[1] = {0x4500}; /* 5.0 as a half: int8 models keep weight_ih in float16 */
    int8_t w_hh[1] = {-128};
    float s_ih[1] = {0.5f}, s_hh[1] = {0.5f};
    const void *ws[2] = {w_ih, w_hh};
    const float *ss[2] = {s_ih, s_hh};
    lstm_model *m = NULL;
    CHECK(lstm_model_create_reduced(&small, ws, ss, 2, &m) == LSTM_ERR_INVALID_ARGUMENT && !m, "int8 -128 accepted");
    w_hh[0] = -127;
    s_hh[0] = NAN;
    CHECK(lstm_model_create_reduced(&small, ws, ss, 2, &m) == LSTM_ERR_INVALID_ARGUMENT && !m, "NaN scale accepted");
    s_hh[0] = 0.5f;
    CHECK(lstm_model_create_reduced(&small, ws, NULL, 2, &m) == LSTM_ERR_INVALID_ARGUMENT && !m, "int8 without scales");
    CHECK(lstm_model_create_reduced(&small, ws, ss, 2, &m) == LSTM_OK && m, "a valid int8 model refused");
    lstm_model_free(m);
    small.weights = LSTM_WEIGHTS_F32;
    CHECK(lstm_model_create_reduced(&small, ws, ss, 2, &m) == LSTM_ERR_INVALID_ARGUMENT, "create_reduced float32");
    CHECK(lstm_weight_storage(&small, 2) == -1 && lstm_weight_storage(NULL, 0) == -1, "storage of no array");
}

int main(void) {
    const char *isas[3] = {"scalar", NULL, NULL};
    int n_isas = 1;
#if defined(__x86_64__)
    if (cpu_has_avx2()) {
        isas[n_isas++] = "avx2";
        if (cpu_has_avx512()) isas[n_isas++] = "avx512";
    } else {
        CHECK(lstm_set_isa("avx2") == LSTM_ERR_UNKNOWN_ISA, "avx2 refused without CPU support");
        printf("note: CPU has no AVX2+FMA; avx2 kernels not tested\n");
    }
#elif defined(__aarch64__)
    isas[n_isas++] = "neon"; /* aarch64 always has it */
#endif
    /* LSTM_INFER_ISA (read at the first use) picks the kernels when it names a set this CPU
       has; the test then covers that set alone */
    /* every 2-thread call on its 2 threads, even where the sanitizers' slowness or a busy
       machine looks like crowded CPUs to the pool (pool.c; test_pool.c tests that) */
    setenv("LSTM_INFER_DYNAMIC", "0", 1);
    keep_only_isa(getenv("LSTM_INFER_ISA"), isas, &n_isas);
    keep_best_simd(isas, &n_isas);
    if (n_isas == 1 && getenv("LSTM_INFER_ISA"))
        CHECK(strcmp(lstm_get_isa(), isas[0]) == 0, "LSTM_INFER_ISA=%s gave %s", isas[0], lstm_get_isa());
    test_forward(isas, n_isas);
    test_single_sequence_output(isas, n_isas);
    test_uniform_batch(isas, n_isas);
    test_packed_projection(isas, n_isas);
    /* avx2 once swallowed NaN: exp_avx2 clamped with _mm256_max_ps(x, lo), which returns
     * lo for a NaN x (fixed by putting x second). */
    for (int i = 0; i < n_isas; i++)
        CHECK(nan_propagates(isas[i]), "%s: NaN does not propagate like PyTorch", isas[i]);
    for (int i = 0; i < n_isas; i++) test_concurrent_callers(isas[i]);
    for (int i = 0; i < n_isas; i++) test_interrupt(isas[i]);
    test_errors();
    test_reduced_forward(isas, n_isas);
    test_f16_paths(isas, n_isas);
    test_pipe(isas, n_isas);
    lstm_set_num_threads(1);
    printf("%s: %d checks, %d failures (ISAs:", failures ? "FAILED" : "OK", checks, failures);
    for (int i = 0; i < n_isas; i++) printf(" %s", isas[i]);
    printf(")\n");
    return failures ? 1 : 0;
}
