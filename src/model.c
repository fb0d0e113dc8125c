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
           (c->proj_size == 0 || c->cell == LSTM_CELL_LSTM);
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

const lstm_config *lstm_model_config(const lstm_model *m) { return m ? &m->cfg : NULL; }

// ------------------------------------------------------------------ packing

// gate weights W (G*H, K) row-major, torch's gate order -> tiles panels of (K x G*16)
static void pack_gates(const float *w, int64_t K, int64_t H, int64_t tiles, int G, float *dst) {
    for (int64_t t = 0; t < tiles; t++)
        for (int q = 0; q < G; q++)
            for (int u = 0; u < LSTM_TILE; u++) {
                const int64_t unit = t * LSTM_TILE + u, col = (t * G + q) * LSTM_TILE + u;
                for (int64_t k = 0; k < K; k++)
                    dst[lstm_packed_at(K, G, k, col)] = unit < H ? w[(q * H + unit) * K + k] : 0.0f;
            }
}

// plain W (N, K) row-major -> ceil(N/64) panels of (K x 64) holding W^T
static void pack_plain(const float *w, int64_t N, int64_t K, float *dst) {
    const int64_t cols = (N + LSTM_PANEL - 1) / LSTM_PANEL * LSTM_PANEL;
    for (int64_t col = 0; col < cols; col++)
        for (int64_t k = 0; k < K; k++)
            dst[lstm_packed_at(K, 4, k, col)] = col < N ? w[col * K + k] : 0.0f;
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
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *lw = &m->layers[l];
        lw->in = l == 0 ? m->cfg.input_size : m->D * m->P;
        int64_t n;
        if (!lstm_mul_ok(m->D * m->tiles * m->W, lw->in, &n)) a->ok = 0;
        lw->w_ih = lstm_arena_take(a, n, sizeof(float));
        lw->bias = lstm_arena_take(a, m->D * m->tiles * m->W, sizeof(float));
        for (int64_t d = 0; d < m->D; d++) {
            lw->w_hh[d] = lstm_arena_take(a, m->tiles * m->W * m->P, sizeof(float));
            lw->b_hh[d] = gru_bias ? lstm_arena_take(a, m->tiles * m->W, sizeof(float)) : NULL;
            lw->w_hr[d] = m->cfg.proj_size
                              ? lstm_arena_take(a, m->proj_panels * LSTM_PANEL * m->H, sizeof(float))
                              : NULL;
        }
    }
}

lstm_status lstm_model_create(const lstm_config *cfg, const float *const *weights,
                              size_t n_weights, lstm_model **out) {
    if (!out) return LSTM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!config_ok(cfg) || !weights || n_weights != lstm_weight_count(cfg))
        return LSTM_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; i < n_weights; i++)
        if (!weights[i]) return LSTM_ERR_INVALID_ARGUMENT;

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
    a = (lstm_arena){m->block, 0, 1};
    layout_weights(m, &a);

    const int gru = cfg->cell == LSTM_CELL_GRU;
    size_t w = 0;
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *lw = &m->layers[l];
        for (int64_t d = 0; d < m->D; d++) {
            const float *w_ih = weights[w++], *w_hh = weights[w++];
            const float *b_ih = cfg->bias ? weights[w++] : NULL;
            const float *b_hh = cfg->bias ? weights[w++] : NULL;
            const float *w_hr = cfg->proj_size ? weights[w++] : NULL;
            pack_gates(w_ih, lw->in, m->H, m->tiles, m->gates, lw->w_ih + d * m->tiles * lw->in * m->W);
            // the GRU's b_hn sits inside r * (W_hn h + b_hn), so its b_hh stays with the step
            pack_bias(b_ih, gru ? NULL : b_hh, m->H, m->tiles, m->gates, lw->bias + d * m->tiles * m->W);
            pack_gates(w_hh, m->P, m->H, m->tiles, m->gates, lw->w_hh[d]);
            if (lw->b_hh[d]) pack_bias(b_hh, NULL, m->H, m->tiles, m->gates, lw->b_hh[d]);
            if (w_hr) pack_plain(w_hr, m->P, m->H, lw->w_hr[d]);
        }
    }
    *out = m;
    return LSTM_OK;
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
