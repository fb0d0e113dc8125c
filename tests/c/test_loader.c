/*
 * test_loader.c - the model-file loader (src/loader.c) on the files of
 * tests/fuzz/corpus (written by tools/make_loader_corpus.py), named by the
 * answer the loader owes them: valid-*, bad-*, unsupported-*. Valid files
 * must load as the config their name says and run; every truncation and many
 * byte flips of them must give a status (under ASan: without reading past the
 * buffer, which is always exactly the file's size); paths that are not
 * regular files must give LSTM_ERR_IO. Reduced weights (format_version 2):
 * a file built from lstm_reduce_weight's arrays loads as the model
 * lstm_model_create_reduced builds from them, bit for bit.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "lstm_infer.h"

#define CORPUS "../fuzz/corpus"

static unsigned char *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

/* Loads a copy of data[0:size] in a buffer of exactly that size. */
static lstm_status load_copy(const unsigned char *data, size_t size, lstm_file_info *info) {
    unsigned char *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    lstm_model *m = (lstm_model *)&m; /* must be reset to NULL on failure */
    lstm_status s = lstm_model_load_buffer_info(copy, size, &m, info);
    CHECK((s == LSTM_OK) == (m != NULL), "status %d with model %p", (int)s, (void *)m);
    lstm_model_free(s == LSTM_OK ? m : NULL);
    free(copy);
    return s;
}

/* A forward call of 3 steps, 2 sequences (lengths 3 and 1), into NaN-filled outputs. */
static void run(const lstm_model *m, const char *name) {
    const lstm_config *c = lstm_model_config(m);
    int64_t D = c->bidirectional ? 2 : 1, out = c->proj_size ? c->proj_size : c->hidden_size;
    int64_t T = 3, B = 2, I = c->input_size, lengths[2] = {3, 1};
    float x[3 * 2 * 16], y[3 * 2 * 16];
    CHECK(I <= 16 && D * out <= 16, "%s: the corpus models are small", name);
    for (int i = 0; i < 3 * 2 * 16; i++) x[i] = rnd_f(-1, 1), y[i] = 0.0f / 0.0f;
    lstm_forward_args a = {.seq_len = T, .batch = B, .input = x, .input_stride_t = B * I,
                           .input_stride_b = I, .lengths = lengths, .output = y,
                           .output_stride_t = B * D * out, .output_stride_b = D * out};
    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "%s: forward", name);
    for (int64_t i = 0; i < T * B * D * out; i++) CHECK(y[i] == y[i], "%s: output %lld is NaN", name, (long long)i);
}

/* What valid-<name> holds (tools/make_loader_corpus.py). */
static const struct {
    const char *name, *kind;
    lstm_config cfg;
    int batch_first;
} VALID[] = {
    {"lstm", "LSTM", {3, 4, 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 0},
    {"lstm-bi-proj-stack2", "LSTM", {2, 3, 2, 1, 1, 2, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 0},
    {"lstm-nobias-bf", "LSTM", {2, 2, 1, 0, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 1},
    {"gru-bi", "GRU", {3, 2, 1, 1, 1, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 0},
    {"gru-stack2-nobias", "GRU", {2, 3, 2, 0, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 0},
    {"rnn-tanh-stack2", "RNN", {3, 2, 2, 1, 0, 0, LSTM_CELL_RNN_TANH, LSTM_WEIGHTS_F32}, 0},
    {"rnn-relu-bi-bf", "RNN", {2, 3, 1, 1, 1, 0, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F32}, 1},
    {"lstmcell", "LSTMCell", {3, 2, 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F32}, 0},
    {"grucell-nobias", "GRUCell", {2, 3, 1, 0, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F32}, 0},
    {"rnncell-relu", "RNNCell", {2, 2, 1, 1, 0, 0, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_F32}, 0},
    {"lstm-bi-proj-stack2-int8", "LSTM", {2, 3, 2, 1, 1, 2, LSTM_CELL_LSTM, LSTM_WEIGHTS_I8}, 0},
    {"gru-nobias-bf-float16", "GRU", {3, 2, 1, 0, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_F16}, 1},
    {"rnn-relu-bi-int8", "RNN", {2, 3, 1, 1, 1, 0, LSTM_CELL_RNN_RELU, LSTM_WEIGHTS_I8}, 0},
    {"lstmcell-float16", "LSTMCell", {3, 2, 1, 1, 0, 0, LSTM_CELL_LSTM, LSTM_WEIGHTS_F16}, 0},
    {"grucell-int8", "GRUCell", {2, 3, 1, 1, 0, 0, LSTM_CELL_GRU, LSTM_WEIGHTS_I8}, 0},
};
#define N_VALID (sizeof VALID / sizeof VALID[0])

static void test_valid(const char *name, const char *path) {
    size_t k = 0, size;
    while (k < N_VALID && strcmp(VALID[k].name, name + strlen("valid-")) != 0) k++;
    CHECK(k < N_VALID, "%s: not in VALID", name);
    if (k == N_VALID) return;
    lstm_model *m = NULL;
    lstm_file_info info;
    lstm_status s = lstm_model_load_info(path, &m, &info);
    CHECK(s == LSTM_OK, "%s: %s", name, lstm_status_string(s));
    if (s != LSTM_OK) return;
    const lstm_config *c = lstm_model_config(m);
    CHECK(memcmp(c, &VALID[k].cfg, sizeof *c) == 0, "%s: config", name);
    CHECK(strcmp(info.kind, VALID[k].kind) == 0, "%s: kind %s", name, info.kind);
    CHECK(info.is_cell == (strstr(VALID[k].kind, "Cell") != NULL), "%s: is_cell", name);
    CHECK(info.batch_first == VALID[k].batch_first, "%s: batch_first", name);
    run(m, name);
    lstm_model_free(m);

    /* the same bytes from memory, also at an odd address (the weights are then copied) */
    unsigned char *data = read_all(path, &size);
    CHECK(data != NULL, "%s: read", name);
    if (!data) return;
    unsigned char *odd = malloc(size + 1);
    memcpy(odd + 1, data, size);
    CHECK(lstm_model_load_buffer(odd + 1, size, &m) == LSTM_OK, "%s: odd address", name);
    lstm_model_free(m);
    free(odd);

    /* every truncation is refused; byte flips give a status, whatever it is */
    for (size_t n = 0; n < size; n++)
        CHECK(load_copy(data, n, NULL) == LSTM_ERR_BAD_FILE, "%s: truncated to %zu loads", name, n);
    for (int i = 0; i < 2000; i++) {
        size_t at = (size_t)rnd_i(0, (int64_t)size - 1);
        unsigned char old = data[at];
        data[at] = (unsigned char)(i % 7 == 0 ? rnd_i(0, 255) : old ^ (1u << rnd_i(0, 7)));
        lstm_status st = load_copy(data, size, NULL);
        CHECK(st == LSTM_OK || st == LSTM_ERR_BAD_FILE || st == LSTM_ERR_UNSUPPORTED,
              "%s: byte %zu flipped: status %d", name, at, (int)st);
        data[at] = old;
    }
    free(data);
}

static void test_corpus(void) {
    DIR *d = opendir(CORPUS);
    CHECK(d != NULL, "cannot open %s (run from tests/c)", CORPUS);
    if (!d) return;
    int counts[3] = {0, 0, 0};
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[512];
        size_t size;
        snprintf(path, sizeof path, "%s/%s", CORPUS, e->d_name);
        if (strncmp(e->d_name, "valid-", 6) == 0) {
            test_valid(e->d_name, path);
            counts[0]++;
        } else if (strncmp(e->d_name, "bad-", 4) == 0 || strncmp(e->d_name, "unsupported-", 12) == 0) {
            lstm_status want = e->d_name[0] == 'b' ? LSTM_ERR_BAD_FILE : LSTM_ERR_UNSUPPORTED;
            unsigned char *data = read_all(path, &size);
            lstm_status s = data ? load_copy(data, size, NULL) : LSTM_ERR_IO;
            CHECK(s == want, "%s: status %d (%s)", e->d_name, (int)s, lstm_status_string(s));
            counts[e->d_name[0] == 'b' ? 1 : 2]++;
            free(data);
        }
    }
    closedir(d);
    CHECK(counts[0] == (int)N_VALID && counts[1] >= 10 && counts[2] >= 2, "corpus: %d valid, %d bad, %d unsupported",
          counts[0], counts[1], counts[2]);
}

/* Hand-written headers: each names one rule of the format. */
static lstm_status load_header(const char *json, const unsigned char *tensors, size_t tsize) {
    size_t n = strlen(json), size = 8 + n + tsize;
    unsigned char *buf = malloc(size);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    memcpy(buf + 8 + n, tensors, tsize);
    lstm_status s = load_copy(buf, size, NULL);
    free(buf);
    return s;
}

#define META(kind, cfg) "\"__metadata__\":{\"format\":\"lstm_infer\",\"format_version\":\"1\",\"kind\":\"" kind "\",\"config\":\"" cfg "\"}"
#define RNNCELL_CFG "{\\\"input_size\\\":1,\\\"hidden_size\\\":1,\\\"bias\\\":false,\\\"nonlinearity\\\":\\\"tanh\\\"}"
#define W(name, at) "\"" name "\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[" at "]}"

static void test_headers(void) {
    static const unsigned char two[8] = {0, 0, 128, 63, 0, 0, 0, 64}; /* 1.0f, 2.0f */
    struct { const char *json; lstm_status want; } cases[] = {
        {"{" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "," W("weight_hh", "4,8") "}", LSTM_OK},
        /* names and whitespace as json.loads reads them */
        {"{\t" META("RNNCell", RNNCELL_CFG) ",\n" W("weight_\\u0069h", "0,4") "," W("weight_hh", "4,8") "}  ",
         LSTM_OK},
        /* byte 8 is '{' in a safetensors file (the Python reader calls anything else another format) */
        {" {" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "," W("weight_hh", "4,8") "}", LSTM_ERR_BAD_FILE},
        {"{" W("weight_hh", "4,8") "," W("weight_ih", "0,4") "," META("RNNCell", RNNCELL_CFG) "}", LSTM_OK},
        {"{" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "-0,4") "," W("weight_hh", "4,8") "}", LSTM_OK},
        /* the same name twice, spelled differently */
        {"{" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "," W("weight_i\\u0068", "4,8") "}",
         LSTM_ERR_BAD_FILE},
        {"{" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "," W("weight_hh", "4,8") ",}", LSTM_ERR_BAD_FILE},
        {"{" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "," W("weight_hh", "4.0,8") "}", LSTM_ERR_BAD_FILE},
        {"{" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "," W("weight_hh", "4,8") "} x", LSTM_ERR_BAD_FILE},
        {"{" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "," W("weight_hh", "4,18446744073709551620") "}",
         LSTM_ERR_BAD_FILE},
        {"{" META("RNNCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "}", LSTM_ERR_BAD_FILE},
        {"{" META("Sequential", "{}") "," W("weight_ih", "0,4") "," W("weight_hh", "4,8") "}", LSTM_ERR_UNSUPPORTED},
        {"{" META("GRUCell", RNNCELL_CFG) "," W("weight_ih", "0,4") "," W("weight_hh", "4,8") "}", LSTM_ERR_BAD_FILE},
        {"{" META("RNNCell", "{}") "," W("weight_ih", "0,4") "," W("weight_hh", "4,8") "}", LSTM_ERR_BAD_FILE},
        {"{\"__metadata__\":null," W("weight_ih", "0,4") "," W("weight_hh", "4,8") "}", LSTM_ERR_BAD_FILE},
        {"[]", LSTM_ERR_BAD_FILE},
        {"", LSTM_ERR_BAD_FILE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lstm_status s = load_header(cases[i].json, two, sizeof two);
        CHECK(s == cases[i].want, "header %zu: status %d, want %d: %s", i, (int)s, (int)cases[i].want,
              cases[i].json);
    }
    /* dropout: a number in [0, 1] once rounded to a double, as json.loads and Python compare it */
    struct { const char *text; lstm_status want; } dropouts[] = {
        {"0", LSTM_OK}, {"1", LSTM_OK}, {"0.5", LSTM_OK}, {"-0.0", LSTM_OK}, {"-1e-400", LSTM_OK},
        {"1.00000000000000011", LSTM_OK}, {"1E0", LSTM_OK}, {"1.0000000000000002", LSTM_ERR_BAD_FILE},
        {"-1e-300", LSTM_ERR_BAD_FILE}, {"2", LSTM_ERR_BAD_FILE}, {"true", LSTM_ERR_BAD_FILE},
        {"NaN", LSTM_ERR_BAD_FILE}, {"\\\"0\\\"", LSTM_ERR_BAD_FILE}, {".5", LSTM_ERR_BAD_FILE},
    };
    for (size_t i = 0; i < sizeof dropouts / sizeof dropouts[0]; i++) {
        char json[1024];
        snprintf(json, sizeof json,
                 "{\"__metadata__\":{\"format\":\"lstm_infer\",\"format_version\":\"1\",\"kind\":\"RNN\","
                 "\"config\":\"{\\\"input_size\\\":1,\\\"hidden_size\\\":1,\\\"num_layers\\\":1,"
                 "\\\"nonlinearity\\\":\\\"relu\\\",\\\"bias\\\":false,\\\"batch_first\\\":true,"
                 "\\\"dropout\\\":%s,\\\"bidirectional\\\":false}\"},"
                 W("weight_ih_l0", "0,4") "," W("weight_hh_l0", "4,8") "}", dropouts[i].text);
        lstm_status s = load_header(json, two, sizeof two);
        CHECK(s == dropouts[i].want, "dropout %s: status %d", dropouts[i].text, (int)s);
    }
    /* invalid UTF-8 (a surrogate, an overlong '/') inside a name */
    const char *bad_utf8[] = {"\xed\xa0\x80", "\xc0\xaf"};
    for (int i = 0; i < 2; i++) {
        char json[512];
        snprintf(json, sizeof json, "{" META("RNNCell", RNNCELL_CFG) ",\"%s\":{}}", bad_utf8[i]);
        CHECK(load_header(json, two, 0) == LSTM_ERR_BAD_FILE, "bad UTF-8 %d", i);
    }
    /* a header length past the limit, whatever the file holds */
    unsigned char big[16] = {0, 0, 0x10, 0x01, 0, 0, 0, 0, '{', '}'};
    CHECK(load_copy(big, sizeof big, NULL) == LSTM_ERR_BAD_FILE, "huge header length");
}

/* ------------------------------------------------------------ reduced weights */

/* A GRUCell (input 2, hidden 3) file with `weights` storage, written here from
 * lstm_reduce_weight's arrays: each tensor in the dtype lstm_weight_storage gives
 * it, an int8 one followed by its row scales. version, weights and edit (a change
 * to make: 0 none, 1 a scale short, 2 q = -128 in the first int8 array, 3 a scale
 * < 0) make the hostile variants. On return ref holds the model
 * lstm_model_create_reduced builds from the same arrays (NULL for edit != 0). */
static size_t reduced_file(unsigned char *buf, size_t cap, const char *version, const char *weights,
                           int32_t type, int edit, lstm_model **ref) {
    lstm_config cfg = {.input_size = 2, .hidden_size = 3, .num_layers = 1, .bias = 1,
                       .cell = LSTM_CELL_GRU, .weights = type};
    static const char *const names[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    static const char *const dtypes[] = {"F32", "F16", "I8"};
    static const int sizes[] = {4, 2, 1};
    unsigned char data[1024], stored[4][64];
    float w[4][9 * 3], scales[4][9];
    const void *ptrs[4];
    const float *sptrs[4] = {0};
    char json[2048];
    size_t pos = 0, n = 0;
    int first_i8 = 1;
    n += (size_t)snprintf(json + n, sizeof json - n,
                          "{\"__metadata__\":{\"format\":\"lstm_infer\",\"format_version\":\"%s\","
                          "\"kind\":\"GRUCell\",\"weights\":\"%s\",\"config\":\"{\\\"input_size\\\":2,"
                          "\\\"hidden_size\\\":3,\\\"bias\\\":true}\"}", version, weights);
    for (size_t i = 0; i < 4; i++) {
        int64_t shape[2];
        lstm_weight_shape(&cfg, i, shape);
        int32_t st = lstm_weight_storage(&cfg, i);
        int64_t count = shape[0] * (shape[1] ? shape[1] : 1);
        for (int64_t k = 0; k < count; k++) w[i][k] = rnd_f(-1, 1);
        if (st == LSTM_WEIGHTS_F32) memcpy(stored[i], w[i], (size_t)count * 4);
        else CHECK(lstm_reduce_weight(st, w[i], shape[0], shape[1], stored[i], scales[i]) == LSTM_OK, "reduce");
        if (st == LSTM_WEIGHTS_I8 && edit == 2 && first_i8) ((int8_t *)stored[i])[0] = -128;
        ptrs[i] = stored[i];
        size_t bytes = (size_t)count * (size_t)sizes[st];
        memcpy(data + pos, stored[i], bytes);
        n += (size_t)snprintf(json + n, sizeof json - n, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld%s%.0lld],"
                              "\"data_offsets\":[%zu,%zu]}", names[i], dtypes[st], (long long)shape[0],
                              shape[1] ? "," : "", (long long)shape[1], pos, pos + bytes);
        pos += bytes;
        if (st != LSTM_WEIGHTS_I8) continue;
        sptrs[i] = scales[i];
        int64_t rows = shape[0] - (edit == 1 && first_i8);
        if (edit == 3 && first_i8) scales[i][0] = -1.0f;
        memcpy(data + pos, scales[i], (size_t)rows * 4);
        n += (size_t)snprintf(json + n, sizeof json - n, ",\"%s_scale\":{\"dtype\":\"F32\",\"shape\":[%lld],"
                              "\"data_offsets\":[%zu,%zu]}", names[i], (long long)rows, pos, pos + (size_t)rows * 4);
        pos += (size_t)rows * 4;
        first_i8 = 0;
    }
    n += (size_t)snprintf(json + n, sizeof json - n, "}");
    *ref = NULL;
    if (edit == 0 && type != LSTM_WEIGHTS_F32)
        CHECK(lstm_model_create_reduced(&cfg, ptrs, sptrs, 4, ref) == LSTM_OK, "create_reduced");
    CHECK(8 + n + pos <= cap, "buffer");
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    memcpy(buf + 8 + n, data, pos);
    return 8 + n + pos;
}

/* out = h_1 of a GRUCell step on x from zero state. */
static void cell_step(const lstm_model *m, const float *x, float *h) {
    lstm_forward_args a = {.seq_len = 1, .batch = 1, .input = x, .input_stride_t = 2, .input_stride_b = 2,
                           .output = h, .output_stride_t = 3, .output_stride_b = 3};
    CHECK(lstm_model_forward(m, &a, NULL, 0) == LSTM_OK, "forward");
}

static void test_reduced(void) {
    static unsigned char buf[4096];
    const float x[2] = {0.5f, -1.25f};
    struct { int32_t type; const char *name; } types[] = {{LSTM_WEIGHTS_F16, "float16"}, {LSTM_WEIGHTS_I8, "int8"}};
    for (int t = 0; t < 2; t++) {
        lstm_model *ref, *m = NULL;
        size_t size = reduced_file(buf, sizeof buf, "2", types[t].name, types[t].type, 0, &ref);
        lstm_status s = lstm_model_load_buffer(buf, size, &m);
        CHECK(s == LSTM_OK, "%s: %s", types[t].name, lstm_status_string(s));
        if (s == LSTM_OK && ref) {
            float h[3], h_ref[3];
            CHECK(lstm_model_config(m)->weights == types[t].type, "%s: weights", types[t].name);
            cell_step(m, x, h);
            cell_step(ref, x, h_ref);
            CHECK(memcmp(h, h_ref, sizeof h) == 0, "%s: the loaded model computes other bits", types[t].name);
        }
        lstm_model_free(m);
        lstm_model_free(ref);
        /* misaligned: the weights are copied, same result */
        CHECK(load_copy(buf, size, NULL) == LSTM_OK, "%s: copy", types[t].name);
        struct { const char *version, *weights; int edit; lstm_status want; } bad[] = {
            {"1", types[t].name, 0, LSTM_ERR_BAD_FILE},       /* "weights" needs version 2 */
            {"3", types[t].name, 0, LSTM_ERR_UNSUPPORTED},    /* a newer format */
            {"2", "int4", 0, LSTM_ERR_BAD_FILE},
            {"2", "float32", 0, LSTM_ERR_BAD_FILE},           /* reduced dtypes in a float32 model */
            {"2", types[1 - t].name, 0, LSTM_ERR_BAD_FILE},   /* the other storage's dtypes or scales */
            {"2", types[t].name, 1, LSTM_ERR_BAD_FILE},       /* a scale short */
            {"2", types[t].name, 2, LSTM_ERR_BAD_FILE},       /* -128 */
            {"2", types[t].name, 3, LSTM_ERR_BAD_FILE},       /* a negative scale */
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            if (bad[i].edit && types[t].type != LSTM_WEIGHTS_I8) continue; /* float16 has no scales */
            size = reduced_file(buf, sizeof buf, bad[i].version, bad[i].weights, types[t].type, bad[i].edit, &ref);
            lstm_model_free(ref);
            s = load_copy(buf, size, NULL);
            CHECK(s == bad[i].want, "%s: case %zu: status %d", types[t].name, i, (int)s);
        }
    }
}

static void test_arguments(void) {
    lstm_model *m = NULL;
    CHECK(lstm_model_load(NULL, &m) == LSTM_ERR_INVALID_ARGUMENT, "NULL path");
    CHECK(lstm_model_load(CORPUS "/valid-lstm", NULL) == LSTM_ERR_INVALID_ARGUMENT, "NULL out");
    CHECK(lstm_model_load_buffer(NULL, 4, &m) == LSTM_ERR_INVALID_ARGUMENT, "NULL data");
    CHECK(lstm_model_load_buffer(NULL, 0, &m) == LSTM_ERR_BAD_FILE, "empty buffer");
    errno = 0;
    CHECK(lstm_model_load(CORPUS "/no-such-file", &m) == LSTM_ERR_IO && errno == ENOENT, "missing file");
    CHECK(lstm_model_load(CORPUS, &m) == LSTM_ERR_IO && errno == EISDIR, "directory");
    CHECK(lstm_model_load("/dev/null", &m) == LSTM_ERR_IO, "character device");
    CHECK(m == NULL, "no model on failure");
    CHECK(strcmp(lstm_status_string(LSTM_ERR_BAD_FILE), "unknown status") != 0, "status text");
    CHECK(strcmp(lstm_status_string(LSTM_ERR_UNSUPPORTED), "unknown status") != 0, "status text");
    CHECK(strcmp(lstm_status_string(LSTM_ERR_IO), "unknown status") != 0, "status text");
}

/* Loads from several threads at once (the loader keeps no state; run under TSan by `make tsan`). */
static void *load_many(void *arg) {
    for (int i = 0; i < 20; i++) {
        lstm_model *m = NULL;
        lstm_status s = lstm_model_load((const char *)arg, &m);
        CHECK(s == LSTM_OK, "concurrent load: %s", lstm_status_string(s));
        lstm_model_free(m);
    }
    return NULL;
}

static void test_threads(void) {
    pthread_t th[4];
    for (int k = 0; k < 4; k++)
        pthread_create(&th[k], NULL, load_many, (void *)(k % 2 ? CORPUS "/valid-rnn-relu-bi-bf" : CORPUS "/valid-lstm"));
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
}

int main(void) {
    lstm_set_num_threads(2);
    test_arguments();
    test_headers();
    test_reduced();
    test_corpus();
    test_threads();
    printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "OK", (int)checks, (int)failures);
    return failures != 0;
}
