/*
 * model.c - building a model: config checks, the weight list, and packing
 * the weights of every cell kind into the panel layout of kernels.h.
 */
#define _POSIX_C_SOURCE 200809L /* posix_memalign */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lstm_infer.h"
#include "model.h"

// ------------------------------------------------------------------ config

static int config_ok(const lstm_config *c) {
    /* the limits bound every per-layer product well inside int64 and size_t */
    return c && c->input_size > 0 && c->input_size <= LSTM_MAX_FEATURES && c->hidden_size > 0 &&
           c->hidden_size <= LSTM_MAX_FEATURES && c->num_layers > 0 &&
           c->num_layers <= LSTM_MAX_LAYERS && (c->bias == 0 || c->bias == 1) &&
           (c->bidirectional == 0 || c->bidirectional == 1) && c->cell >= LSTM_CELL_LSTM &&
           c->cell <= LSTM_CELL_RNN_RELU && c->proj_size >= 0 && c->proj_size < c->hidden_size &&
           (c->proj_size == 0 || c->cell == LSTM_CELL_LSTM) && c->weights >= LSTM_WEIGHTS_F32 &&
           c->weights <= LSTM_WEIGHTS_I8 &&
           (c->weights != LSTM_WEIGHTS_I8 ||
            (c->proj_size ? c->proj_size : c->hidden_size) <= LSTM_MAX_I8_STATE);
}

static size_t arrays_per_direction(const lstm_config *cfg) {
    return 2 + (cfg->bias ? 2 : 0) + (cfg->proj_size ? 1 : 0);
}

size_t lstm_weight_count(const lstm_config *cfg) {
    if (!config_ok(cfg)) return 0;
    return arrays_per_direction(cfg) * (size_t)(1 + cfg->bidirectional) * (size_t)cfg->num_layers;
}

lstm_status lstm_weight_shape(const lstm_config *cfg, size_t index, int64_t shape[2]) {
    const size_t n = lstm_weight_count(cfg);
    if (!n || index >= n || !shape) return LSTM_ERR_INVALID_ARGUMENT;
    const size_t per = arrays_per_direction(cfg);
    const int64_t layer = (int64_t)(index / (per * (size_t)(1 + cfg->bidirectional)));
    const int64_t GH = (int64_t)lstm_gates(cfg->cell) * cfg->hidden_size;
    const int64_t out = cfg->proj_size ? cfg->proj_size : cfg->hidden_size;
    const int64_t in = layer == 0 ? cfg->input_size : (1 + cfg->bidirectional) * out;
    size_t which = index % per; // weight_ih, weight_hh, [bias_ih, bias_hh], [weight_hr]
    if (which >= 2 && !cfg->bias) which += 2;
    switch (which) {
    case 0: shape[0] = GH, shape[1] = in; break;
    case 1: shape[0] = GH, shape[1] = out; break;
    case 2:
    case 3: shape[0] = GH, shape[1] = 0; break;
    default: shape[0] = cfg->proj_size, shape[1] = cfg->hidden_size; break;
    }
    return LSTM_OK;
}

int32_t lstm_weight_storage(const lstm_config *cfg, size_t index) {
    int64_t shape[2];
    if (lstm_weight_shape(cfg, index, shape) != LSTM_OK) return -1;
    if (!shape[1]) return LSTM_WEIGHTS_F32; // a bias
    if (cfg->weights != LSTM_WEIGHTS_I8) return cfg->weights;
    const int is_hh = index % arrays_per_direction(cfg) == 1; // weight_ih, weight_hh, ...
    return is_hh ? LSTM_WEIGHTS_I8 : LSTM_WEIGHTS_F16;
}

/* The storage of the input (weight_ih) and projection (weight_hr) matrices. */
static int gemm_storage(int type) { return type == LSTM_WEIGHTS_I8 ? LSTM_WEIGHTS_F16 : type; }

static int64_t storage_bytes(int type) {
    return type == LSTM_WEIGHTS_F32 ? 4 : type == LSTM_WEIGHTS_F16 ? 2 : 1;
}

const lstm_config *lstm_model_config(const lstm_model *m) { return m ? &m->cfg : NULL; }

// ------------------------------------------------------------------ reducing

// f to the nearest half (ties to even); 0 when f is finite but beyond the half range
static int float_to_half(float f, uint16_t *h) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) { // Inf, NaN (kept quiet)
        *h = (uint16_t)(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 | (a >> 13 & 0x3ff) : 0));
        return 1;
    }
    if (a >= 0x477ff000u) return 0; // 65520 and up round to Inf
    if (a < 0x38800000u) {          // below 2^-14: a subnormal half, |f| * 2^24 rounded
        float af;
        memcpy(&af, &a, sizeof af);
        *h = (uint16_t)(sign | (uint32_t)__builtin_lrintf(af * 16777216.0f));
        return 1;
    }
    *h = (uint16_t)(sign | (((a + 0x0fffu + ((a >> 13) & 1)) >> 13) - (112u << 10)));
    return 1;
}

lstm_status lstm_reduce_weight(int32_t type, const float *src, int64_t rows, int64_t cols,
                               void *dst, float *scales) {
    int64_t n;
    if (!src || !dst || rows < 0 || cols < 0 || !lstm_mul_ok(rows, cols, &n) ||
        (type != LSTM_WEIGHTS_F16 && type != LSTM_WEIGHTS_I8) || (type == LSTM_WEIGHTS_I8 && !scales))
        return LSTM_ERR_INVALID_ARGUMENT;
    if (type == LSTM_WEIGHTS_F16) {
        for (int64_t i = 0; i < n; i++)
            if (!float_to_half(src[i], (uint16_t *)dst + i)) return LSTM_ERR_INVALID_ARGUMENT;
        return LSTM_OK;
    }
    // the one quantizer of kernels.h, which the int8 step also applies to h
    for (int64_t r = 0; r < rows; r++) {
        const float *w = src + r * cols;
        float amax = 0.0f, inv;
        for (int64_t k = 0; k < cols; k++) {
            const float v = w[k] < 0 ? -w[k] : w[k];
            if (!(v <= 3.40282347e38f)) return LSTM_ERR_INVALID_ARGUMENT; // NaN, Inf
            if (v > amax) amax = v;
        }
        scales[r] = lstm_i8_row_scale(amax, 1, LSTM_I8_WEIGHT_MAX, &inv);
        for (int64_t k = 0; k < cols; k++)
            ((int8_t *)dst)[r * cols + k] = (int8_t)lstm_i8_quantize(w[k], inv, LSTM_I8_WEIGHT_MAX);
    }
    return LSTM_OK;
}

// ------------------------------------------------------------------ packing

// element `at` of w (float, half or int8 as type says; at < 0: zero) to (k, col) of packed dst
static void put(int type, void *dst, int64_t K, int G, int64_t k, int64_t col, const void *w,
                int64_t at) {
    switch (type) {
    case LSTM_WEIGHTS_F16:
        ((uint16_t *)dst)[lstm_packed_at(K, G, k, col)] = at < 0 ? 0 : ((const uint16_t *)w)[at];
        break;
    case LSTM_WEIGHTS_I8:
        ((int8_t *)dst)[lstm_packed_i8_at(K, G, k, col)] = at < 0 ? 0 : ((const int8_t *)w)[at];
        break;
    default:
        ((float *)dst)[lstm_packed_at(K, G, k, col)] = at < 0 ? 0.0f : ((const float *)w)[at];
        break;
    }
}

// gate weights W (G*H, K) row-major, torch's gate order -> tiles panels of (K x G*16);
// I8: the row scales too, packed like a bias
static void pack_gates(int type, const void *w, const float *scale, int64_t K, int64_t H,
                       int64_t tiles, int G, void *dst, float *dst_scale) {
    for (int64_t t = 0; t < tiles; t++)
        for (int q = 0; q < G; q++)
            for (int u = 0; u < LSTM_TILE; u++) {
                const int64_t unit = t * LSTM_TILE + u, col = (t * G + q) * LSTM_TILE + u;
                if (dst_scale) dst_scale[col] = unit < H ? scale[q * H + unit] : 0.0f;
                for (int64_t k = 0; k < K; k++)
                    put(type, dst, K, G, k, col, w, unit < H ? (q * H + unit) * K + k : -1);
            }
}

// plain W (N, K) row-major -> ceil(N/64) panels of (K x 64) holding W^T (and its scales)
static void pack_plain(int type, const void *w, const float *scale, int64_t N, int64_t K,
                       void *dst, float *dst_scale) {
    const int64_t cols = (N + LSTM_PANEL - 1) / LSTM_PANEL * LSTM_PANEL;
    for (int64_t col = 0; col < cols; col++) {
        if (dst_scale) dst_scale[col] = col < N ? scale[col] : 0.0f;
        for (int64_t k = 0; k < K; k++) put(type, dst, K, 4, k, col, w, col < N ? col * K + k : -1);
    }
}

// a + b (G*H each; either may be NULL for zeros) -> one packed panel row per tile
static void pack_bias(const float *a, const float *b, int64_t H, int64_t tiles, int G, float *dst) {
    for (int64_t t = 0; t < tiles; t++)
        for (int q = 0; q < G; q++)
            for (int u = 0; u < LSTM_TILE; u++) {
                const int64_t unit = t * LSTM_TILE + u;
                float v = 0.0f;
                if (unit < H) v = (a ? a[q * H + unit] : 0.0f) + (b ? b[q * H + unit] : 0.0f);
                dst[(t * G + q) * LSTM_TILE + u] = v;
            }
}

/* Lays out (base NULL: sizes) every packed weight of the model in one arena. */
static void layout_weights(lstm_model *m, lstm_arena *a) {
    const int gru_bias = m->cfg.cell == LSTM_CELL_GRU && m->cfg.bias;
    const int i8 = m->cfg.weights == LSTM_WEIGHTS_I8;
    const int64_t es_hh = storage_bytes(m->cfg.weights), es = storage_bytes(gemm_storage(m->cfg.weights));
    const int64_t cols = m->tiles * m->W, proj_cols = m->proj_panels * LSTM_PANEL;
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *lw = &m->layers[l];
        lw->in = l == 0 ? m->cfg.input_size : m->D * m->P;
        int64_t n;
        if (!lstm_mul_ok(m->D * cols, lw->in, &n)) a->ok = 0;
        lw->w_ih = lstm_arena_take(a, n, es);
        lw->bias = lstm_arena_take(a, m->D * cols, sizeof(float));
        for (int64_t d = 0; d < m->D; d++) {
            lw->w_hh[d] = lstm_arena_take(a, cols * (i8 ? lstm_i8_k(m->P) : m->P), es_hh);
            lw->s_hh[d] = i8 ? lstm_arena_take(a, cols, sizeof(float)) : NULL;
            lw->colsum_hh[d] = i8 ? lstm_arena_take(a, cols, sizeof(int32_t)) : NULL;
            lw->b_hh[d] = gru_bias ? lstm_arena_take(a, cols, sizeof(float)) : NULL;
            lw->w_hr[d] = m->cfg.proj_size ? lstm_arena_take(a, proj_cols * m->H, es) : NULL;
        }
    }
}

/* The checked arguments of a create call. */
static int create_args_ok(const lstm_config *cfg, const void *const *weights, size_t n_weights,
                          lstm_model **out) {
    if (!out) return 0;
    *out = NULL;
    if (!config_ok(cfg) || !weights || n_weights != lstm_weight_count(cfg)) return 0;
    for (size_t i = 0; i < n_weights; i++)
        if (!weights[i]) return 0;
    return 1;
}

/* Builds the model from checked arguments: matrices in cfg->weights' type (with
 * their row scales for I8), biases float32. */
static lstm_status create(const lstm_config *cfg, const void *const *weights,
                          const float *const *scales, lstm_model **out) {
    lstm_model *m = calloc(1, sizeof(*m));
    if (!m) return LSTM_ERR_OUT_OF_MEMORY;
    atomic_init(&m->spare, NULL);
    m->cfg = *cfg;
    m->gates = lstm_gates(cfg->cell);
    m->H = cfg->hidden_size;
    m->P = cfg->proj_size ? cfg->proj_size : cfg->hidden_size;
    m->D = 1 + cfg->bidirectional;
    m->L = cfg->num_layers;
    m->Hp = (m->H + LSTM_TILE - 1) / LSTM_TILE * LSTM_TILE;
    m->tiles = m->Hp / LSTM_TILE;
    m->W = (int64_t)m->gates * LSTM_TILE;
    m->proj_panels = (m->P + LSTM_PANEL - 1) / LSTM_PANEL;
    m->layers = calloc((size_t)m->L, sizeof(layer_weights));
    if (!m->layers) {
        free(m);
        return LSTM_ERR_OUT_OF_MEMORY;
    }
    lstm_arena a = {NULL, 0, 1};
    layout_weights(m, &a);
    if (!a.ok || (uint64_t)a.size > (uint64_t)SIZE_MAX - LSTM_ALIGN) {
        lstm_model_free(m);
        return LSTM_ERR_SIZE_OVERFLOW;
    }
    if (posix_memalign(&m->block, LSTM_ALIGN, (size_t)a.size ? (size_t)a.size : LSTM_ALIGN)) {
        m->block = NULL;
        lstm_model_free(m);
        return LSTM_ERR_OUT_OF_MEMORY;
    }
    if (cfg->weights == LSTM_WEIGHTS_I8) memset(m->block, 0, (size_t)a.size); // the k padding
    a = (lstm_arena){m->block, 0, 1};
    layout_weights(m, &a);

    const int gru = cfg->cell == LSTM_CELL_GRU, type = cfg->weights, type_ih = gemm_storage(type);
    size_t w = 0;
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *lw = &m->layers[l];
        for (int64_t d = 0; d < m->D; d++) {
            const void *w_ih = weights[w++];
            const float *s_hh = scales ? scales[w] : NULL;
            const void *w_hh = weights[w++];
            const float *b_ih = cfg->bias ? weights[w++] : NULL;
            const float *b_hh = cfg->bias ? weights[w++] : NULL;
            const void *w_hr = cfg->proj_size ? weights[w++] : NULL;
            pack_gates(type_ih, w_ih, NULL, lw->in, m->H, m->tiles, m->gates,
                       (char *)lw->w_ih + d * m->tiles * lw->in * m->W * storage_bytes(type_ih), NULL);
            // the GRU's b_hn sits inside r * (W_hn h + b_hn), so its b_hh stays with the step
            pack_bias(b_ih, gru ? NULL : b_hh, m->H, m->tiles, m->gates, lw->bias + d * m->tiles * m->W);
            pack_gates(type, w_hh, s_hh, m->P, m->H, m->tiles, m->gates, lw->w_hh[d], lw->s_hh[d]);
            if (lw->colsum_hh[d]) lstm_i8_colsums(lw->w_hh[d], m->P, m->tiles * m->W, lw->colsum_hh[d]);
            if (lw->b_hh[d]) pack_bias(b_hh, NULL, m->H, m->tiles, m->gates, lw->b_hh[d]);
            if (w_hr) pack_plain(type_ih, w_hr, NULL, m->P, m->H, lw->w_hr[d], NULL);
        }
    }
    *out = m;
    return LSTM_OK;
}

lstm_status lstm_model_create(const lstm_config *cfg, const float *const *weights,
                              size_t n_weights, lstm_model **out) {
    if (!create_args_ok(cfg, (const void *const *)weights, n_weights, out))
        return LSTM_ERR_INVALID_ARGUMENT;
    if (cfg->weights == LSTM_WEIGHTS_F32) return create(cfg, (const void *const *)weights, NULL, out);
    // reduce each matrix into a temporary copy, then build from those
    const void **reduced = calloc(n_weights, sizeof(void *));
    const float **scales = calloc(n_weights, sizeof(float *));
    void **owned = calloc(n_weights, sizeof(void *));
    lstm_status s = reduced && scales && owned ? LSTM_OK : LSTM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n_weights && s == LSTM_OK; i++) {
        int64_t shape[2], n, bytes;
        lstm_weight_shape(cfg, i, shape);
        const int32_t type = lstm_weight_storage(cfg, i);
        reduced[i] = weights[i];
        if (type == LSTM_WEIGHTS_F32) continue; // a bias: float32 as given
        if (!lstm_mul_ok(shape[0], shape[1], &n) || !lstm_mul_ok(n, storage_bytes(type), &bytes) ||
            !lstm_add_ok(bytes, shape[0] * (int64_t)sizeof(float) + 16, &bytes) ||
            (uint64_t)bytes > (uint64_t)SIZE_MAX) {
            s = LSTM_ERR_SIZE_OVERFLOW;
            break;
        }
        // the scales first (aligned), then the values
        float *block = owned[i] = malloc((size_t)bytes);
        if (!block) {
            s = LSTM_ERR_OUT_OF_MEMORY;
            break;
        }
        scales[i] = block;
        reduced[i] = block + shape[0];
        s = lstm_reduce_weight(type, weights[i], shape[0], shape[1], block + shape[0], block);
    }
    if (s == LSTM_OK) s = create(cfg, reduced, scales, out);
    for (size_t i = 0; owned && i < n_weights; i++) free(owned[i]);
    free(owned), free(reduced), free(scales);
    return s;
}

lstm_status lstm_model_create_reduced(const lstm_config *cfg, const void *const *weights,
                                      const float *const *scales, size_t n_weights,
                                      lstm_model **out) {
    if (!create_args_ok(cfg, weights, n_weights, out) || cfg->weights == LSTM_WEIGHTS_F32 ||
        (cfg->weights == LSTM_WEIGHTS_I8 && !scales))
        return LSTM_ERR_INVALID_ARGUMENT;
    if (cfg->weights == LSTM_WEIGHTS_I8) // int8 in [-127, 127] (the kernels negate them), sane scales
        for (size_t i = 0; i < n_weights; i++) {
            int64_t shape[2];
            lstm_weight_shape(cfg, i, shape);
            if (lstm_weight_storage(cfg, i) != LSTM_WEIGHTS_I8) continue;
            if (!scales[i]) return LSTM_ERR_INVALID_ARGUMENT;
            const int8_t *q = weights[i];
            for (int64_t j = 0; j < shape[0] * shape[1]; j++)
                if (q[j] == -128) return LSTM_ERR_INVALID_ARGUMENT;
            for (int64_t r = 0; r < shape[0]; r++)
                if (!(scales[i][r] >= 0.0f && scales[i][r] <= 3.40282347e38f)) return LSTM_ERR_INVALID_ARGUMENT;
        }
    return create(cfg, weights, scales, out);
}

void lstm_model_release_memory(lstm_model *m) {
    if (m) free(atomic_exchange(&m->spare, NULL));
}

void lstm_model_free(lstm_model *m) {
    if (!m) return;
    free(atomic_load(&m->spare));
    free(m->block);
    free(m->layers);
    free(m);
}
