/*
 * loader.c - reads the model files `lstm-infer convert` writes (the format is
 * lstm_infer/modelfile.py's): a safetensors file, that is an 8-byte
 * little-endian header length N, N bytes of UTF-8 JSON, then the tensors back
 * to back. The header's "__metadata__" holds format "lstm_infer",
 * format_version "1", the kind (torch class name) and the config (the class's
 * constructor arguments as a JSON string); the tensors are float32 under the
 * torch module's key names. Format_version "2" adds "weights" ("float16" or
 * "int8"): each tensor then has the dtype of its lstm_weight_storage (F32, F16
 * or I8) and an I8 tensor K its F32 row scales K_scale, read through
 * lstm_model_create_reduced.
 *
 * It accepts exactly the files the Python reader (lstm_infer.load) accepts;
 * tests/test_loader_agreement.py holds the two to that. The JSON reader below
 * is specialised to the shapes of this header (an object of objects of
 * strings and arrays of integers; a config of scalars), so anything else is
 * refused where it is met: nesting is at most 3 deep, and work and memory grow
 * linearly with the header, which is at most MAX_HEADER_BYTES.
 */
#define _POSIX_C_SOURCE 200809L /* fstat, O_CLOEXEC, O_NONBLOCK, uselocale */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lstm_infer.h"

#define MAX_HEADER_BYTES (1 << 20) /* modelfile.MAX_HEADER_BYTES */
#define MAX_NDIM 64                /* NumPy's limit, which the Python reader applies */
/* format_version "1": float32 weights; "2" adds "weights" (modelfile.FORMAT_VERSIONS) */
static const char *const VERSIONS[] = {"1", "2"};
#define SCALE_SUFFIX "_scale"

/* ------------------------------------------------------------ JSON reader */

typedef struct {
    const char *s;
    size_t n;
} str_view;

typedef struct {
    const unsigned char *p, *end;
    char *out; /* decoded strings, bump-allocated: decoding never lengthens a string */
} jreader;

static int str_is(str_view v, const char *lit) {
    return v.n == strlen(lit) && memcmp(v.s, lit, v.n) == 0;
}

static int str_cmp(const str_view *a, const str_view *b) {
    int c = memcmp(a->s, b->s, a->n < b->n ? a->n : b->n);
    return c ? c : (a->n > b->n) - (a->n < b->n);
}

/* Strict UTF-8 as Python's decoder reads it: no overlong forms, no surrogates, <= U+10FFFF. */
static int utf8_valid(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
        else return 0;
        if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) return 0;
        for (size_t k = 2; k < len; k++)
            if (p[i + k] < 0x80 || p[i + k] > 0xBF) return 0;
        i += len;
    }
    return 1;
}

/* The next character after JSON whitespace, or -1 at the end. */
static int peek(jreader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
    return r->p < r->end ? *r->p : -1;
}

static int expect(jreader *r, int c) {
    if (peek(r) != c) return 0;
    r->p++;
    return 1;
}

static int literal(jreader *r, const char *word) {
    size_t n = strlen(word);
    if (peek(r) < 0 || (size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0) return 0;
    r->p += n;
    return 1;
}

static int hex4(const unsigned char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        *v = *v << 4 | d;
    }
    return 1;
}

static char *put_utf8(char *o, unsigned cp) {
    /* Lone surrogates (which Python's json keeps) get the 3-byte form, which no
     * valid UTF-8 input holds: decoded strings stay equal exactly when Python's are. */
    if (cp < 0x80) *o++ = (char)cp;
    else if (cp < 0x800) { *o++ = (char)(0xC0 | cp >> 6); *o++ = (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | cp >> 12);
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | cp >> 18);
        *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* A JSON string, decoded into r->out (control characters refused, as json.loads does). */
static int read_string(jreader *r, str_view *v) {
    if (!expect(r, '"')) return 0;
    char *o = r->out;
    v->s = o;
    for (;;) {
        if (r->p >= r->end) return 0;
        unsigned c = *r->p++;
        if (c == '"') break;
        if (c < 0x20) return 0;
        if (c != '\\') { *o++ = (char)c; continue; }
        if (r->p >= r->end) return 0;
        c = *r->p++;
        switch (c) {
        case '"': case '\\': case '/': *o++ = (char)c; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (r->end - r->p < 4 || !hex4(r->p, &cp)) return 0;
            r->p += 4;
            /* a high surrogate followed by an escaped low one is one code point */
            if (cp >= 0xD800 && cp <= 0xDBFF && r->end - r->p >= 6 && r->p[0] == '\\' &&
                r->p[1] == 'u' && hex4(r->p + 2, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                r->p += 6;
            }
            o = put_utf8(o, cp);
            break;
        }
        default: return 0;
        }
    }
    v->n = (size_t)(o - v->s);
    r->out = o;
    return 1;
}

/* A JSON number's token: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][-+]?[0-9]+)?. NaN and
 * Infinity (which json.loads takes) are refused: no field of this header may hold them. */
static int read_number(jreader *r, str_view *text, int *is_int) {
    if (peek(r) < 0) return 0;
    const unsigned char *p = r->p, *start = p;
#define DIGIT(q) ((q) < r->end && *(q) >= '0' && *(q) <= '9')
    if (p < r->end && *p == '-') p++;
    if (!DIGIT(p)) return 0;
    if (*p == '0') p++;
    else while (DIGIT(p)) p++;
    *is_int = 1;
    if (p < r->end && *p == '.') {
        p++;
        if (!DIGIT(p)) return 0;
        while (DIGIT(p)) p++;
        *is_int = 0;
    }
    if (p < r->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < r->end && (*p == '+' || *p == '-')) p++;
        if (!DIGIT(p)) return 0;
        while (DIGIT(p)) p++;
        *is_int = 0;
    }
#undef DIGIT
    text->s = (const char *)start;
    text->n = (size_t)(p - start);
    r->p = p;
    return 1;
}

/* A JSON integer that fits in int64_t (larger ones never describe a valid file). */
static int read_int(jreader *r, int64_t *v) {
    str_view t;
    int is_int;
    if (!read_number(r, &t, &is_int) || !is_int) return 0;
    int neg = t.s[0] == '-';
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, x = 0;
    for (size_t i = neg; i < t.n; i++) {
        unsigned d = (unsigned)(t.s[i] - '0');
        if (x > (limit - d) / 10) return 0;
        x = x * 10 + d;
    }
    *v = neg ? (x == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)x) : (int64_t)x;
    return 1;
}

/* The number's value as json.loads gives it (strtod rounds the same way), read
 * in the "C" locale of this thread alone (the token's decimal point is '.').
 * 1 if it is a number, 0 if not, -1 out of memory. */
static int number_value(str_view t, double *v) {
    char *buf = malloc(t.n + 1), *end;
    locale_t c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    int ok = -1;
    if (buf && c) {
        memcpy(buf, t.s, t.n);
        buf[t.n] = 0;
        locale_t old = uselocale(c);
        *v = strtod(buf, &end);
        uselocale(old);
        ok = end == buf + t.n;
    }
    if (c) freelocale(c);
    free(buf);
    return ok;
}

static int read_bool(jreader *r, int *v) {
    if (literal(r, "true")) *v = 1;
    else if (literal(r, "false")) *v = 0;
    else return 0;
    return 1;
}

/* Between members of an object or array: 1 for another, 0 at the close, -1 on an error. */
static int next_item(jreader *r, int close, int first) {
    if (first) {
        if (peek(r) == close) { r->p++; return 0; }
        return 1;
    }
    if (expect(r, ',')) return 1;
    return expect(r, close) ? 0 : -1;
}

/* -------------------------------------------------------- the safetensors layer */

/* safetensors dtypes (the Python reader's table), with their item size and the
 * size NumPy's shape check counts (4 for BF16, which is widened to float32). */
static const struct { const char *name; int size, check_size; } DTYPES[] = {
    {"F64", 8, 8}, {"F32", 4, 4}, {"F16", 2, 2}, {"BF16", 2, 4}, {"I64", 8, 8}, {"I32", 4, 4},
    {"I16", 2, 2}, {"I8", 1, 1}, {"U64", 8, 8}, {"U32", 4, 4}, {"U16", 2, 2}, {"U8", 1, 1},
    {"BOOL", 1, 1},
};
#define DTYPE_F32 1
#define DTYPE_F16 2
#define DTYPE_I8 7

typedef struct {
    str_view name;
    int dtype;
    int ndim;
    int64_t dims[2]; /* the first two */
    int64_t begin, end; /* offsets in the data section */
} tensor_entry;

typedef struct {
    tensor_entry *t;
    size_t n, cap;
    str_view *meta_keys;
    size_t n_meta, cap_meta;
    int has_meta;
    str_view format, version, kind, config, weights;
    int has_format, has_version, has_kind, has_config, has_weights;
} header;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t c = *cap ? *cap * 2 : 16;
    void *q = realloc(*p, c * elem);
    if (!q) return 0;
    *p = q;
    *cap = c;
    return 1;
}

/* *acc *= b for non-negative numbers; *over becomes 1 (and stays) past INT64_MAX. */
static void mul_clamped(int64_t *acc, int64_t b, int *over) {
    if (*over) return;
    if (b != 0 && *acc > INT64_MAX / b) *over = 1;
    else *acc *= b;
}

/* One tensor entry: exactly dtype, shape, data_offsets, all checked as parse_safetensors does. */
static lstm_status read_entry(jreader *r, int64_t data_size, tensor_entry *t) {
    int seen = 0, more;
    int64_t nbytes = 1, checked = 1; /* shape x itemsize; NumPy's count with 0 read as 1 */
    int nbytes_over = 0, checked_over = 0, zero = 0;
    if (!expect(r, '{')) return LSTM_ERR_BAD_FILE;
    for (int first = 1; (more = next_item(r, '}', first)) > 0; first = 0) {
        str_view key;
        if (!read_string(r, &key) || !expect(r, ':')) return LSTM_ERR_BAD_FILE;
        if (str_is(key, "dtype") && !(seen & 1)) {
            str_view d;
            if (!read_string(r, &d)) return LSTM_ERR_BAD_FILE;
            t->dtype = -1;
            for (int i = 0; i < (int)(sizeof DTYPES / sizeof DTYPES[0]); i++)
                if (str_is(d, DTYPES[i].name)) t->dtype = i;
            if (t->dtype < 0) return LSTM_ERR_BAD_FILE;
            seen |= 1;
        } else if (str_is(key, "shape") && !(seen & 2)) {
            if (!expect(r, '[')) return LSTM_ERR_BAD_FILE;
            t->ndim = 0;
            for (int f = 1; (more = next_item(r, ']', f)) > 0; f = 0) {
                int64_t s;
                if (!read_int(r, &s) || s < 0 || t->ndim == MAX_NDIM) return LSTM_ERR_BAD_FILE;
                if (t->ndim < 2) t->dims[t->ndim] = s;
                t->ndim++;
                if (s == 0) zero = 1;
                mul_clamped(&nbytes, s, &nbytes_over);
                mul_clamped(&checked, s ? s : 1, &checked_over);
            }
            if (more < 0) return LSTM_ERR_BAD_FILE;
            seen |= 2;
        } else if (str_is(key, "data_offsets") && !(seen & 4)) {
            if (!expect(r, '[') || !read_int(r, &t->begin) || !expect(r, ',') ||
                !read_int(r, &t->end) || !expect(r, ']'))
                return LSTM_ERR_BAD_FILE;
            if (t->begin < 0 || t->begin > t->end || t->end > data_size) return LSTM_ERR_BAD_FILE;
            seen |= 4;
        } else {
            return LSTM_ERR_BAD_FILE; /* another key, or one of these twice */
        }
    }
    if (more < 0 || seen != 7) return LSTM_ERR_BAD_FILE;
    mul_clamped(&nbytes, DTYPES[t->dtype].size, &nbytes_over);
    mul_clamped(&checked, DTYPES[t->dtype].check_size, &checked_over);
    if (zero) nbytes = 0, nbytes_over = 0;
    if (nbytes_over || nbytes != t->end - t->begin || checked_over) return LSTM_ERR_BAD_FILE;
    return LSTM_OK;
}

/* "__metadata__": an object mapping strings to strings, without repeated names. */
static lstm_status read_metadata(jreader *r, header *h) {
    int more;
    if (!expect(r, '{')) return LSTM_ERR_BAD_FILE; /* null, too, counts as no metadata */
    for (int first = 1; (more = next_item(r, '}', first)) > 0; first = 0) {
        str_view key, value;
        if (!read_string(r, &key) || !expect(r, ':') || !read_string(r, &value))
            return LSTM_ERR_BAD_FILE;
        if (!grow((void **)&h->meta_keys, &h->cap_meta, h->n_meta + 1, sizeof(str_view)))
            return LSTM_ERR_OUT_OF_MEMORY;
        h->meta_keys[h->n_meta++] = key;
        if (str_is(key, "format")) h->format = value, h->has_format = 1;
        else if (str_is(key, "format_version")) h->version = value, h->has_version = 1;
        else if (str_is(key, "kind")) h->kind = value, h->has_kind = 1;
        else if (str_is(key, "config")) h->config = value, h->has_config = 1;
        else if (str_is(key, "weights")) h->weights = value, h->has_weights = 1;
    }
    h->has_meta = 1;
    return more < 0 ? LSTM_ERR_BAD_FILE : LSTM_OK;
}

static int cmp_name(const void *a, const void *b) {
    return str_cmp(&((const tensor_entry *)a)->name, &((const tensor_entry *)b)->name);
}
static int cmp_view(const void *a, const void *b) { return str_cmp(a, b); }
static int cmp_span(const void *a, const void *b) {
    const tensor_entry *x = *(tensor_entry *const *)a, *y = *(tensor_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* The header JSON: tensor entries and metadata, then the checks across entries. */
static lstm_status read_header(jreader *r, int64_t data_size, header *h) {
    int more;
    lstm_status s;
    if (!expect(r, '{')) return LSTM_ERR_BAD_FILE;
    for (int first = 1; (more = next_item(r, '}', first)) > 0; first = 0) {
        str_view name;
        if (!read_string(r, &name) || !expect(r, ':')) return LSTM_ERR_BAD_FILE;
        if (str_is(name, "__metadata__")) {
            if (h->has_meta) return LSTM_ERR_BAD_FILE;
            if ((s = read_metadata(r, h)) != LSTM_OK) return s;
            continue;
        }
        if (!grow((void **)&h->t, &h->cap, h->n + 1, sizeof(tensor_entry))) return LSTM_ERR_OUT_OF_MEMORY;
        tensor_entry *t = &h->t[h->n++];
        t->name = name;
        if ((s = read_entry(r, data_size, t)) != LSTM_OK) return s;
    }
    if (more < 0 || peek(r) >= 0) return LSTM_ERR_BAD_FILE; /* only whitespace may follow */

    /* names are unique (tensors, then metadata keys) */
    if (h->n > 1) qsort(h->t, h->n, sizeof *h->t, cmp_name);
    for (size_t i = 1; i < h->n; i++)
        if (str_cmp(&h->t[i - 1].name, &h->t[i].name) == 0) return LSTM_ERR_BAD_FILE;
    if (h->n_meta > 1) qsort(h->meta_keys, h->n_meta, sizeof *h->meta_keys, cmp_view);
    for (size_t i = 1; i < h->n_meta; i++)
        if (str_cmp(&h->meta_keys[i - 1], &h->meta_keys[i]) == 0) return LSTM_ERR_BAD_FILE;

    /* the tensors tile the data section in order, without gaps or overlaps */
    tensor_entry **order = malloc((h->n ? h->n : 1) * sizeof *order);
    if (!order) return LSTM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < h->n; i++) order[i] = &h->t[i];
    qsort(order, h->n, sizeof *order, cmp_span);
    int64_t pos = 0;
    for (size_t i = 0; i < h->n && pos >= 0; i++) pos = order[i]->begin == pos ? order[i]->end : -1;
    free(order);
    return pos == data_size ? LSTM_OK : LSTM_ERR_BAD_FILE;
}

/* ------------------------------------------------------------- the model layer */

/* Each kind's config keys (its torch constructor's arguments) and cell. */
enum {
    K_INPUT = 1 << 0, K_HIDDEN = 1 << 1, K_LAYERS = 1 << 2, K_BIAS = 1 << 3, K_BATCH_FIRST = 1 << 4,
    K_DROPOUT = 1 << 5, K_BIDIR = 1 << 6, K_PROJ = 1 << 7, K_NONLIN = 1 << 8
};
#define K_CELL (K_INPUT | K_HIDDEN | K_BIAS)
#define K_LAYER (K_CELL | K_LAYERS | K_BATCH_FIRST | K_DROPOUT | K_BIDIR)
static const struct { const char *name; int keys, cell, is_cell; } KINDS[] = {
    {"LSTM", K_LAYER | K_PROJ, LSTM_CELL_LSTM, 0},
    {"GRU", K_LAYER, LSTM_CELL_GRU, 0},
    {"RNN", K_LAYER | K_NONLIN, LSTM_CELL_RNN_TANH, 0},
    {"LSTMCell", K_CELL, LSTM_CELL_LSTM, 1},
    {"GRUCell", K_CELL, LSTM_CELL_GRU, 1},
    {"RNNCell", K_CELL | K_NONLIN, LSTM_CELL_RNN_TANH, 1},
};
static const char *const KEY_NAMES[] = {"input_size", "hidden_size", "num_layers", "bias", "batch_first",
                                        "dropout", "bidirectional", "proj_size", "nonlinearity"};
#define N_KEYS ((int)(sizeof KEY_NAMES / sizeof KEY_NAMES[0]))

/* The config JSON: exactly the kind's keys, each of its type and range (modelfile._check_config). */
static lstm_status read_config(jreader *r, int kind_keys, lstm_config *cfg, int *batch_first) {
    int seen = 0, more, relu = 0;
    int64_t ints[N_KEYS] = {0};
    if (!expect(r, '{')) return LSTM_ERR_BAD_FILE;
    for (int first = 1; (more = next_item(r, '}', first)) > 0; first = 0) {
        str_view key;
        int k = 0;
        if (!read_string(r, &key) || !expect(r, ':')) return LSTM_ERR_BAD_FILE;
        while (k < N_KEYS && !str_is(key, KEY_NAMES[k])) k++;
        if (k == N_KEYS || !(kind_keys & 1 << k) || (seen & 1 << k)) return LSTM_ERR_BAD_FILE;
        seen |= 1 << k;
        int flag = 1 << k, b;
        if (flag & (K_INPUT | K_HIDDEN | K_LAYERS | K_PROJ)) {
            if (!read_int(r, &ints[k]) || ints[k] < 0) return LSTM_ERR_BAD_FILE;
        } else if (flag & (K_BIAS | K_BATCH_FIRST | K_BIDIR)) {
            if (!read_bool(r, &b)) return LSTM_ERR_BAD_FILE;
            ints[k] = b;
        } else if (flag == K_DROPOUT) {
            str_view t;
            int is_int;
            double v;
            if (!read_number(r, &t, &is_int)) return LSTM_ERR_BAD_FILE;
            int got = number_value(t, &v);
            if (got < 0) return LSTM_ERR_OUT_OF_MEMORY;
            if (!got || !(v >= 0 && v <= 1)) return LSTM_ERR_BAD_FILE;
        } else { /* K_NONLIN */
            str_view v;
            if (!read_string(r, &v) || !(str_is(v, "tanh") || str_is(v, "relu"))) return LSTM_ERR_BAD_FILE;
            relu = str_is(v, "relu");
        }
    }
    if (more < 0 || peek(r) >= 0 || seen != kind_keys) return LSTM_ERR_BAD_FILE;
    int64_t layers = kind_keys & K_LAYERS ? ints[2] : 1;
    if (ints[1] < 1 || layers < 1 || ints[7] >= ints[1]) return LSTM_ERR_BAD_FILE;
    /* Sizes the library does not take (the Python classes refuse them too). */
    if (ints[0] < 1 || ints[0] > LSTM_MAX_FEATURES || ints[1] > LSTM_MAX_FEATURES || layers > LSTM_MAX_LAYERS)
        return LSTM_ERR_BAD_FILE;
    cfg->input_size = (int32_t)ints[0];
    cfg->hidden_size = (int32_t)ints[1];
    cfg->num_layers = (int32_t)layers;
    cfg->bias = (int32_t)ints[3];
    cfg->bidirectional = (int32_t)ints[6];
    cfg->proj_size = (int32_t)ints[7];
    if (relu) cfg->cell = LSTM_CELL_RNN_RELU;
    *batch_first = (int)ints[4];
    return LSTM_OK;
}

/* The torch key name of weight `index` of cfg (lstm_weight_count's order). */
static void weight_name(const lstm_config *cfg, int is_cell, size_t index, char *buf, size_t size) {
    static const char *const names[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"};
    size_t per_dir = 2 + (cfg->bias ? 2 : 0) + (cfg->proj_size ? 1 : 0);
    size_t dirs = cfg->bidirectional ? 2 : 1, j = index % per_dir;
    size_t which = j < 2 ? j : (cfg->bias && j < 4 ? j : 4);
    if (is_cell) {
        snprintf(buf, size, "%s", names[which]);
        return;
    }
    snprintf(buf, size, "%s_l%zu%s", names[which], index / per_dir / dirs,
             (index / per_dir) % dirs ? "_reverse" : "");
}

static int little_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* The tensor named name, or NULL. */
static const tensor_entry *find(const header *h, const char *name) {
    tensor_entry key = {.name = {name, strlen(name)}};
    return bsearch(&key, h->t, h->n, sizeof *h->t, cmp_name);
}

/* Tensor t's data as its dtype's C type: in place when the file's little-endian
 * bytes are that already (aligned, on a little-endian CPU), else a copy in *copy. */
static lstm_status tensor_data(const tensor_entry *t, const unsigned char *data, const void **p, void **copy) {
    const unsigned char *src = data + t->begin;
    size_t size = (size_t)DTYPES[t->dtype].size, count = (size_t)(t->end - t->begin) / size;
    if (size == 1 || (little_endian() && (uintptr_t)src % size == 0)) {
        *p = src;
        return LSTM_OK;
    }
    /* misaligned or big-endian: a copy, read byte by byte */
    unsigned char *out = malloc(count ? count * size : 1);
    if (!out) return LSTM_ERR_OUT_OF_MEMORY;
    for (size_t k = 0; k < count; k++) {
        uint32_t bits = 0;
        for (size_t b = 0; b < size; b++) bits |= (uint32_t)src[size * k + b] << (8 * b);
        if (size == 4) {
            memcpy(out + 4 * k, &bits, 4);
        } else {
            uint16_t half = (uint16_t)bits;
            memcpy(out + 2 * k, &half, 2);
        }
    }
    *p = out;
    *copy = out;
    return LSTM_OK;
}

/* Builds the model from the checked tensors (in lstm_weight_count's order): each in
 * the dtype of its lstm_weight_storage, an int8 one with its row scales. */
static lstm_status build(const lstm_config *cfg, int is_cell, const header *h, const unsigned char *data,
                         lstm_model **out) {
    static const int dtype_of[] = {[LSTM_WEIGHTS_F32] = DTYPE_F32, [LSTM_WEIGHTS_F16] = DTYPE_F16,
                                   [LSTM_WEIGHTS_I8] = DTYPE_I8};
    size_t n = lstm_weight_count(cfg), n_scales = 0;
    if (n == 0) return LSTM_ERR_BAD_FILE;
    const void **w = calloc(n, sizeof *w);
    const float **scales = calloc(n, sizeof *scales);
    void **copies = calloc(2 * n, sizeof *copies); /* a weight's, then its scales' */
    lstm_status s = w && scales && copies ? LSTM_OK : LSTM_ERR_OUT_OF_MEMORY;
    char name[64 + sizeof SCALE_SUFFIX];
    for (size_t i = 0; i < n && s == LSTM_OK; i++) {
        int64_t shape[2];
        int32_t storage = lstm_weight_storage(cfg, i);
        weight_name(cfg, is_cell, i, name, 64);
        const tensor_entry *t = find(h, name);
        if ((s = lstm_weight_shape(cfg, i, shape)) != LSTM_OK || storage < 0) {
            s = LSTM_ERR_BAD_FILE;
            break;
        }
        if (!t || t->dtype != dtype_of[storage] || t->ndim != (shape[1] ? 2 : 1) || t->dims[0] != shape[0] ||
            (shape[1] && t->dims[1] != shape[1])) {
            s = LSTM_ERR_BAD_FILE;
            break;
        }
        if ((s = tensor_data(t, data, &w[i], &copies[2 * i])) != LSTM_OK) break;
        if (storage != LSTM_WEIGHTS_I8) continue;
        strcat(name, SCALE_SUFFIX);
        const tensor_entry *sc = find(h, name);
        if (!sc || sc->dtype != DTYPE_F32 || sc->ndim != 1 || sc->dims[0] != shape[0]) {
            s = LSTM_ERR_BAD_FILE;
            break;
        }
        const void *p;
        if ((s = tensor_data(sc, data, &p, &copies[2 * i + 1])) != LSTM_OK) break;
        scales[i] = p;
        n_scales++;
    }
    if (s == LSTM_OK && h->n != n + n_scales) s = LSTM_ERR_BAD_FILE; /* tensors of no weight */
    if (s == LSTM_OK)
        s = cfg->weights == LSTM_WEIGHTS_F32 ? lstm_model_create(cfg, (const float *const *)w, n, out)
                                             : lstm_model_create_reduced(cfg, w, scales, n, out);
    /* a config, int8 value or scale the library refuses */
    if (s == LSTM_ERR_INVALID_ARGUMENT) s = LSTM_ERR_BAD_FILE;
    for (size_t i = 0; copies && i < 2 * n; i++) free(copies[i]);
    free(copies);
    free((void *)scales);
    free((void *)w);
    return s;
}

static lstm_status load(const unsigned char *data, size_t size, lstm_model **out, lstm_file_info *info) {
    if (size < 8) return LSTM_ERR_BAD_FILE;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | data[i];
    /* byte 8 is '{' in any safetensors file (the Python reader names other formats by it) */
    if (n > MAX_HEADER_BYTES || n > size - 8 || n == 0 || data[8] != '{') return LSTM_ERR_BAD_FILE;
    const unsigned char *json = data + 8;
    if (!utf8_valid(json, (size_t)n)) return LSTM_ERR_BAD_FILE;

    header h = {0};
    /* decoded strings: the header's, then the config's (each at most its source's length) */
    char *strings = malloc(2 * (size_t)n);
    lstm_status s = strings ? LSTM_OK : LSTM_ERR_OUT_OF_MEMORY;
    const unsigned char *tensors = json + n;
    int64_t data_size = (int64_t)(size - 8 - (size_t)n);
    jreader r = {json, json + n, strings};
    if (s == LSTM_OK) s = read_header(&r, data_size, &h);
    if (s == LSTM_OK && (!h.has_meta || !h.has_format || !str_is(h.format, "lstm_infer")))
        s = LSTM_ERR_BAD_FILE;
    int kind = -1;
    if (s == LSTM_OK) {
        int known = 0;
        for (int i = 0; i < (int)(sizeof VERSIONS / sizeof VERSIONS[0]); i++) known |= str_is(h.version, VERSIONS[i]);
        if (!h.has_version) s = LSTM_ERR_BAD_FILE;
        else if (!known) s = LSTM_ERR_UNSUPPORTED;
        else if (!h.has_kind) s = LSTM_ERR_BAD_FILE;
        else {
            for (int i = 0; i < (int)(sizeof KINDS / sizeof KINDS[0]); i++)
                if (str_is(h.kind, KINDS[i].name)) kind = i;
            if (kind < 0) s = LSTM_ERR_UNSUPPORTED;
        }
    }
    lstm_config cfg = {0};
    int batch_first = 0;
    if (s == LSTM_OK && !h.has_config) s = LSTM_ERR_BAD_FILE;
    if (s == LSTM_OK) {
        /* the config is JSON inside a string: read it from its decoded bytes */
        jreader c = {(const unsigned char *)h.config.s, (const unsigned char *)h.config.s + h.config.n,
                     r.out};
        cfg.cell = KINDS[kind].cell;
        s = read_config(&c, KINDS[kind].keys, &cfg, &batch_first);
    }
    if (s == LSTM_OK && h.has_weights) { /* "weights" needs format_version "2" */
        static const char *const names[] = {[LSTM_WEIGHTS_F32] = "float32", [LSTM_WEIGHTS_F16] = "float16",
                                            [LSTM_WEIGHTS_I8] = "int8"};
        cfg.weights = -1;
        for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
            if (str_is(h.weights, names[i])) cfg.weights = i;
        if (str_is(h.version, VERSIONS[0]) || cfg.weights < 0) s = LSTM_ERR_BAD_FILE;
    }
    if (s == LSTM_OK) s = build(&cfg, KINDS[kind].is_cell, &h, tensors, out);
    if (s == LSTM_OK && info) {
        memset(info, 0, sizeof *info);
        snprintf(info->kind, sizeof info->kind, "%s", KINDS[kind].name);
        info->is_cell = KINDS[kind].is_cell;
        info->batch_first = batch_first;
    }
    free(h.t);
    free(h.meta_keys);
    free(strings);
    return s;
}

/* ------------------------------------------------------------------ public */

lstm_status lstm_model_load_buffer_info(const void *data, size_t size, lstm_model **out,
                                        lstm_file_info *info) {
    if (!out || (!data && size)) return LSTM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    return load(data, size, out, info);
}

lstm_status lstm_model_load_buffer(const void *data, size_t size, lstm_model **out) {
    return lstm_model_load_buffer_info(data, size, out, NULL);
}

lstm_status lstm_model_load_info(const char *path, lstm_model **out, lstm_file_info *info) {
    if (!path || !out) return LSTM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer (it is refused below) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return LSTM_ERR_IO;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return LSTM_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) { /* a directory, FIFO, device or socket */
        close(fd);
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return LSTM_ERR_IO;
    }
    if ((uintmax_t)st.st_size > SIZE_MAX) {
        close(fd);
        return LSTM_ERR_OUT_OF_MEMORY;
    }
    /* At most the size the file had when opened is read (as the Python reader does). */
    size_t size = (size_t)st.st_size, got = 0;
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return LSTM_ERR_OUT_OF_MEMORY;
    }
    while (got < size) {
        ssize_t k = read(fd, buf + got, size - got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int e = errno;
            free(buf);
            close(fd);
            errno = e;
            return LSTM_ERR_IO;
        }
        if (k == 0) break; /* the file shrank */
        got += (size_t)k;
    }
    close(fd);
    lstm_status s = load(buf, got, out, info);
    free(buf);
    return s;
}

lstm_status lstm_model_load(const char *path, lstm_model **out) {
    return lstm_model_load_info(path, out, NULL);
}
