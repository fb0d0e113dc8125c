/*
 * model.c - the LSTM model: config checks, weight packing, and the forward
 * pass over a variable-length batch.
 *
 * The forward pass follows PyTorch's packed-sequence algorithm:
 *   1. sort the batch by length (descending, stable) so that the sequences
 *      alive at step s are always the first bs[s] rows;
 *   2. per layer, one matrix product G = X @ W_ih^T + b over every valid
 *      token, for both directions at once (the "hoisted" input projection);
 *   3. per direction, the recurrence: at step s the first bs[s] sequences run
 *      the fused cell kernel; the reverse direction visits each sequence from
 *      its own last valid step, so nothing is copied or reversed.
 * Tokens are stored in packed order: row off[t] + i is step t of sorted
 * sequence i (valid while i < bs[t]).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lstm_infer.h"
#include "pool.h"

#define ALIGN 64
/* Below this many flops per call, threads cost more than they save. */
#define MIN_FLOPS_FOR_THREADS 1500000.0
/* A call waits for workers to join for its flops / this (in ns): 5% of its time at 30 GFLOP/s. */
#define JOIN_WAIT_FLOPS_PER_NS 600.0
/* Below this many flops per recurrent step, a team does not split hidden units. */
#define MIN_STEP_FLOPS_TO_SPLIT 40000.0

// ------------------------------------------------------------------ config

typedef struct {
    float *w_ih;   // D*tiles panels of (K_in rows x 64): both directions' input weights
    float *bias;   // D*tiles*64: b_ih + b_hh, packed like a panel row
    float *w_hh[2];  // tiles panels of (out rows x 64)
    float *w_hr[2];  // ceil(P/64) panels of (H rows x 64), projection only
    int64_t in;    // K_in: input_size for layer 0, else D*out
} layer_weights;

/* A library-owned scratch block: its size, then the workspace. */
typedef struct scratch {
    size_t size;
    max_align_t data[];
} scratch;

struct lstm_model {
    lstm_config cfg;
    int64_t H, P, D, L;   // P = out = proj_size or H
    int64_t Hp, tiles;    // hidden padded to a multiple of 16, and Hp/16
    int64_t proj_panels;  // ceil(P/64)
    layer_weights *layers;
    void *block;          // every packed weight in one allocation
    /* One spare scratch block (see take_scratch), the only mutable part of a
     * model. Reusing it spares the page faults of fresh memory on every call,
     * which cost up to a fifth of a large 2-thread call. */
    _Atomic(scratch *) spare;
};

const char *lstm_status_string(lstm_status s) {
    switch (s) {
    case LSTM_OK: return "ok";
    case LSTM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LSTM_ERR_OUT_OF_MEMORY: return "out of memory";
    case LSTM_ERR_SIZE_OVERFLOW: return "sizes too large (overflow)";
    case LSTM_ERR_WORKSPACE_TOO_SMALL: return "workspace too small";
    case LSTM_ERR_UNKNOWN_ISA: return "unknown or unsupported instruction set";
    }
    return "unknown status";
}

static int config_ok(const lstm_config *c) {
    /* 2^24 bounds every per-layer product well inside int64 and size_t. */
    const int32_t big = 1 << 24;
    return c && c->input_size > 0 && c->input_size <= big && c->hidden_size > 0 &&
           c->hidden_size <= big && c->num_layers > 0 && c->num_layers <= 1024 &&
           (c->bias == 0 || c->bias == 1) && (c->bidirectional == 0 || c->bidirectional == 1) &&
           c->proj_size >= 0 && c->proj_size < c->hidden_size;
}

size_t lstm_weight_count(const lstm_config *cfg) {
    if (!config_ok(cfg)) return 0;
    const size_t per = 2 + (cfg->bias ? 2 : 0) + (cfg->proj_size ? 1 : 0);
    return per * (size_t)(1 + cfg->bidirectional) * (size_t)cfg->num_layers;
}

const lstm_config *lstm_model_config(const lstm_model *m) { return m ? &m->cfg : NULL; }

// ------------------------------------------------------------------ sizes

/* Checked arithmetic: every size is built with these, so overflow is an error. */
static int mul_ok(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_mul_overflow(a, b, out) && *out >= 0;
}
static int add_ok(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_add_overflow(a, b, out) && *out >= 0;
}

/* Bump allocator over one block; `size` counts bytes needed when base is NULL. */
typedef struct {
    char *base;
    int64_t size;
    int ok;
} arena;

static void *arena_take(arena *a, int64_t count, int64_t elem) {
    int64_t bytes, padded;
    if (!a->ok || !mul_ok(count, elem, &bytes) || !add_ok(bytes, ALIGN - 1, &padded)) {
        a->ok = 0;
        return NULL;
    }
    padded &= ~(int64_t)(ALIGN - 1);
    void *p = a->base ? a->base + a->size : NULL;
    if (!add_ok(a->size, padded, &a->size)) a->ok = 0;
    return p;
}

// ------------------------------------------------------------------ packing

// gate weights W (4H, K) row-major, gates i,f,g,o -> tiles panels of (K x 64)
static void pack_gates(const float *w, int64_t K, int64_t H, int64_t tiles, float *dst) {
    for (int64_t t = 0; t < tiles; t++)
        for (int q = 0; q < 4; q++)
            for (int u = 0; u < LSTM_TILE; u++) {
                const int64_t unit = t * LSTM_TILE + u, col = t * LSTM_PANEL + q * LSTM_TILE + u;
                for (int64_t k = 0; k < K; k++)
                    dst[lstm_packed_at(K, k, col)] = unit < H ? w[(q * H + unit) * K + k] : 0.0f;
            }
}

// plain W (N, K) row-major -> ceil(N/64) panels of (K x 64) holding W^T
static void pack_plain(const float *w, int64_t N, int64_t K, float *dst) {
    const int64_t cols = (N + LSTM_PANEL - 1) / LSTM_PANEL * LSTM_PANEL;
    for (int64_t col = 0; col < cols; col++)
        for (int64_t k = 0; k < K; k++) dst[lstm_packed_at(K, k, col)] = col < N ? w[col * K + k] : 0.0f;
}

// b_ih + b_hh (4H each) -> one packed panel row per tile
static void pack_bias(const float *b_ih, const float *b_hh, int64_t H, int64_t tiles, float *dst) {
    for (int64_t t = 0; t < tiles; t++)
        for (int q = 0; q < 4; q++)
            for (int u = 0; u < LSTM_TILE; u++) {
                const int64_t unit = t * LSTM_TILE + u;
                float v = 0.0f;
                if (unit < H && b_ih) v = b_ih[q * H + unit] + b_hh[q * H + unit];
                dst[t * LSTM_PANEL + q * LSTM_TILE + u] = v;
            }
}

/* Lays out (base NULL: sizes) every packed weight of the model in one arena. */
static void layout_weights(lstm_model *m, arena *a) {
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *lw = &m->layers[l];
        lw->in = l == 0 ? m->cfg.input_size : m->D * m->P;
        int64_t n;
        if (!mul_ok(m->D * m->tiles * LSTM_PANEL, lw->in, &n)) a->ok = 0;
        lw->w_ih = arena_take(a, n, sizeof(float));
        lw->bias = arena_take(a, m->D * m->tiles * LSTM_PANEL, sizeof(float));
        for (int64_t d = 0; d < m->D; d++) {
            lw->w_hh[d] = arena_take(a, m->tiles * LSTM_PANEL * m->P, sizeof(float));
            lw->w_hr[d] = m->cfg.proj_size
                              ? arena_take(a, m->proj_panels * LSTM_PANEL * m->H, sizeof(float))
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
    m->H = cfg->hidden_size;
    m->P = cfg->proj_size ? cfg->proj_size : cfg->hidden_size;
    m->D = 1 + cfg->bidirectional;
    m->L = cfg->num_layers;
    m->Hp = (m->H + LSTM_TILE - 1) / LSTM_TILE * LSTM_TILE;
    m->tiles = m->Hp / LSTM_TILE;
    m->proj_panels = (m->P + LSTM_PANEL - 1) / LSTM_PANEL;
    m->layers = calloc((size_t)m->L, sizeof(layer_weights));
    if (!m->layers) {
        free(m);
        return LSTM_ERR_OUT_OF_MEMORY;
    }
    arena a = {NULL, 0, 1};
    layout_weights(m, &a);
    if (!a.ok || (uint64_t)a.size > (uint64_t)SIZE_MAX - ALIGN) {
        lstm_model_free(m);
        return LSTM_ERR_SIZE_OVERFLOW;
    }
    if (posix_memalign(&m->block, ALIGN, (size_t)a.size ? (size_t)a.size : ALIGN)) {
        m->block = NULL;
        lstm_model_free(m);
        return LSTM_ERR_OUT_OF_MEMORY;
    }
    a = (arena){m->block, 0, 1};
    layout_weights(m, &a);

    size_t w = 0;
    for (int64_t l = 0; l < m->L; l++) {
        layer_weights *lw = &m->layers[l];
        for (int64_t d = 0; d < m->D; d++) {
            const float *w_ih = weights[w++], *w_hh = weights[w++];
            const float *b_ih = cfg->bias ? weights[w++] : NULL;
            const float *b_hh = cfg->bias ? weights[w++] : NULL;
            const float *w_hr = cfg->proj_size ? weights[w++] : NULL;
            pack_gates(w_ih, lw->in, m->H, m->tiles, lw->w_ih + d * m->tiles * lw->in * LSTM_PANEL);
            pack_bias(b_ih, b_hh, m->H, m->tiles, lw->bias + d * m->tiles * LSTM_PANEL);
            pack_gates(w_hh, m->P, m->H, m->tiles, lw->w_hh[d]);
            if (w_hr) pack_plain(w_hr, m->P, m->H, lw->w_hr[d]);
        }
    }
    *out = m;
    return LSTM_OK;
}

void lstm_model_free(lstm_model *m) {
    if (!m) return;
    free(atomic_load(&m->spare));
    free(m->block);
    free(m->layers);
    free(m);
}

// ------------------------------------------------------------------ run state

/* Per-call scratch, carved from the workspace; N = valid tokens, at most T*B. */
typedef struct {
    float *G;        // (N, D*4Hp) input projections of every valid token, both directions
    float *Y[2];     // (B + N, D*P) ping-pong layer outputs; rows [0,B) hold h_0
    float *cst;      // (D, B, Hp) cell state per sorted sequence
    float *hbuf;     // (D, B, Hp) pre-projection hidden state (proj_size only)
    int64_t *perm;   // (B) sorted position -> batch index
    int64_t *inv;    // (B) batch index -> sorted position
    int64_t *len;    // (B) lengths in sorted order, descending
    int64_t *bs;     // (T) sequences alive at step t
    int64_t *off;    // (T+1) packed row of step t's first sequence
    int64_t *x_off;  // (N) input offset (floats) of each packed token
    int64_t *cur[2]; // (N) per direction, step-major: packed row computed at that step
    int64_t *prev[2];// (N) per direction, step-major: Y row holding the previous h
} run_state;

static void layout_run(const lstm_model *m, int64_t T, int64_t B, int64_t N, arena *a,
                       run_state *r) {
    int64_t rows, dp, g;
    if (!add_ok(B, N, &rows) || !mul_ok(m->D * 4, m->Hp, &g) || !mul_ok(g, N, &g) ||
        !mul_ok(m->D, m->P, &dp) || !mul_ok(rows, dp, &rows)) {
        a->ok = 0;
        return;
    }
    int64_t state;
    if (!mul_ok(m->D * B, m->Hp, &state)) a->ok = 0;
    r->G = arena_take(a, g, sizeof(float));
    r->Y[0] = arena_take(a, rows, sizeof(float));
    r->Y[1] = arena_take(a, rows, sizeof(float));
    r->cst = arena_take(a, state, sizeof(float));
    r->hbuf = m->cfg.proj_size ? arena_take(a, state, sizeof(float)) : NULL;
    r->perm = arena_take(a, B, sizeof(int64_t));
    r->inv = arena_take(a, B, sizeof(int64_t));
    r->len = arena_take(a, B, sizeof(int64_t));
    r->bs = arena_take(a, T, sizeof(int64_t));
    r->off = arena_take(a, T + 1, sizeof(int64_t));
    r->x_off = arena_take(a, N, sizeof(int64_t));
    for (int d = 0; d < 2; d++) {
        r->cur[d] = d < m->D ? arena_take(a, N, sizeof(int64_t)) : NULL;
        r->prev[d] = d < m->D ? arena_take(a, N, sizeof(int64_t)) : NULL;
    }
}

lstm_status lstm_workspace_size(const lstm_model *m, int64_t T, int64_t B, size_t *bytes) {
    if (!m || !bytes || T < 0 || B < 0) return LSTM_ERR_INVALID_ARGUMENT;
    int64_t N;
    if (!mul_ok(T, B, &N)) return LSTM_ERR_SIZE_OVERFLOW;
    arena a = {NULL, 0, 1};
    run_state r;
    layout_run(m, T, B, N, &a, &r);
    if (!a.ok || !add_ok(a.size, ALIGN, &a.size) || (uint64_t)a.size > (uint64_t)SIZE_MAX)
        return LSTM_ERR_SIZE_OVERFLOW;
    *bytes = (size_t)a.size;
    return LSTM_OK;
}

// ------------------------------------------------------------------ forward

typedef struct {
    const lstm_model *m;
    const lstm_forward_args *args;
    const lstm_kernels *k;
    run_state r;
    int64_t T, B, N, steps; // steps: the longest length
    int nth, teams, team_size, split;
    int64_t join_wait_ns; // how long the call waits for workers: ~5% of its 1-thread time
    lstm_barrier all, team[2];
} forward_job;

static void split_range(int64_t n, int parts, int part, int64_t *lo, int64_t *hi) {
    *lo = n * part / parts;
    *hi = n * (part + 1) / parts;
}

/* Sorts by length and builds every index table of the packed layout. */
static void build_tables(forward_job *j) {
    const lstm_model *m = j->m;
    const lstm_forward_args *a = j->args;
    run_state *r = &j->r;
    const int64_t T = j->T, B = j->B;

    // counting sort, descending, stable: bs[t] also falls out of the counts
    int64_t *count = r->off; // T+1 entries, reused before off is built
    memset(count, 0, (size_t)(T + 1) * sizeof(int64_t));
    for (int64_t b = 0; b < B; b++) count[a->lengths ? a->lengths[b] : T]++;
    int64_t pos = 0;
    for (int64_t len = T; len >= 0; len--) {
        const int64_t c = count[len];
        count[len] = pos;
        pos += c;
    }
    for (int64_t b = 0; b < B; b++) {
        const int64_t len = a->lengths ? a->lengths[b] : T;
        const int64_t i = count[len]++;
        r->perm[i] = b;
        r->inv[b] = i;
        r->len[i] = len;
    }
    j->steps = B ? r->len[0] : 0;
    int64_t alive = B;
    for (int64_t t = 0; t < T; t++) {
        while (alive > 0 && r->len[alive - 1] <= t) alive--;
        r->bs[t] = alive;
    }
    r->off[0] = 0;
    for (int64_t t = 0; t < T; t++) r->off[t + 1] = r->off[t] + r->bs[t];

    for (int64_t t = 0; t < j->steps; t++)
        for (int64_t i = 0; i < r->bs[t]; i++)
            r->x_off[r->off[t] + i] = t * a->input_stride_t + r->perm[i] * a->input_stride_b;

    // the reverse direction's step s of sequence i is its time len_i - 1 - s
    for (int64_t d = 0; d < m->D; d++)
        for (int64_t s = 0; s < j->steps; s++)
            for (int64_t i = 0; i < r->bs[s]; i++) {
                const int64_t t = d ? r->len[i] - 1 - s : s;
                const int64_t at = r->off[s] + i;
                r->cur[d][at] = r->off[t] + i;
                r->prev[d][at] = s ? B + r->cur[d][r->off[s - 1] + i] : i;
            }
}

/* h_0 and c_0 of one layer into rows [0, B) of Y and into the cell state. */
static void init_state(forward_job *j, int64_t l, float *Y) {
    const lstm_model *m = j->m;
    const int64_t B = j->B, P = m->P, H = m->H, Hp = m->Hp, DP = m->D * P;
    for (int64_t d = 0; d < m->D; d++) {
        const int64_t slot = l * m->D + d;
        for (int64_t i = 0; i < B; i++) {
            const int64_t b = j->r.perm[i];
            float *h = Y + i * DP + d * P, *c = j->r.cst + (d * B + i) * Hp;
            if (j->args->h_0) memcpy(h, j->args->h_0 + (slot * B + b) * P, (size_t)P * sizeof(float));
            else memset(h, 0, (size_t)P * sizeof(float));
            if (j->args->c_0) memcpy(c, j->args->c_0 + (slot * B + b) * H, (size_t)H * sizeof(float));
            else memset(c, 0, (size_t)H * sizeof(float));
            memset(c + H, 0, (size_t)(Hp - H) * sizeof(float));
        }
    }
}

/* h_n and c_n of one layer: each sequence's state after its own last step. */
static void write_final(forward_job *j, int64_t l, const float *Y) {
    const lstm_model *m = j->m;
    const lstm_forward_args *a = j->args;
    const int64_t B = j->B, P = m->P, H = m->H, Hp = m->Hp, DP = m->D * P;
    for (int64_t d = 0; d < m->D; d++) {
        const int64_t slot = l * m->D + d;
        for (int64_t i = 0; i < B; i++) {
            const int64_t b = j->r.perm[i], len = j->r.len[i];
            // a length-0 sequence keeps h_0, which sits in row i
            const int64_t row = len ? B + j->r.cur[d][j->r.off[len - 1] + i] : i;
            if (a->h_n) memcpy(a->h_n + (slot * B + b) * P, Y + row * DP + d * P, (size_t)P * sizeof(float));
            if (a->c_n) memcpy(a->c_n + (slot * B + b) * H, j->r.cst + (d * B + i) * Hp, (size_t)H * sizeof(float));
        }
    }
}

/* The recurrence of one direction of one layer, by one member of its team. */
static void recur(forward_job *j, int64_t l, int64_t d, float *Y, int rank, int n, lstm_barrier *bar) {
    const lstm_model *m = j->m;
    const layer_weights *lw = &m->layers[l];
    const run_state *r = &j->r;
    const int64_t B = j->B, P = m->P, DP = m->D * P, G_ld = m->D * m->Hp * 4;
    const int proj = m->cfg.proj_size != 0;
    float *cst = r->cst + d * B * m->Hp;
    float *hbuf = proj ? r->hbuf + d * B * m->Hp : NULL;
    int64_t t0 = 0, t1 = m->tiles, q0 = 0, q1 = m->proj_panels;
    if (n > 1) {
        split_range(m->tiles, n, rank, &t0, &t1);
        split_range(m->proj_panels, n, rank, &q0, &q1);
    }
    for (int64_t s = 0; s < j->steps; s++) {
        const int64_t rows = r->bs[s];
        const lstm_rows prev = {Y + d * P, DP, r->prev[d] + r->off[s]};
        const lstm_rows gates = {r->G + d * m->Hp * 4, G_ld, r->cur[d] + r->off[s]};
        const lstm_rows out = {Y + B * DP + d * P, DP, r->cur[d] + r->off[s]};
        if (!proj) {
            j->k->cell(rows, P, prev, lw->w_hh[d], gates, cst, m->Hp, t0, t1, m->H, out);
        } else {
            const lstm_rows hr = {hbuf, m->Hp, NULL};
            j->k->cell(rows, P, prev, lw->w_hh[d], gates, cst, m->Hp, t0, t1, m->H, hr);
            if (n > 1) lstm_barrier_wait(bar);
            j->k->gemm(rows, m->H, hr, lw->w_hr[d], NULL, q0, q1, P, out);
        }
        if (n > 1) lstm_barrier_wait(bar);
    }
}

static void forward_thread(void *arg, int tid, int nth) {
    forward_job *j = arg;
    const lstm_model *m = j->m;
    const lstm_forward_args *a = j->args;
    run_state *r = &j->r;
    const int64_t B = j->B, DP = m->D * m->P;
    const unsigned fp_mode = lstm_denormals_off();

    for (int64_t l = 0; l < m->L; l++) {
        const layer_weights *lw = &m->layers[l];
        float *Y = r->Y[l & 1];
        if (tid == 0) init_state(j, l, Y);

        // input projection of every valid token, both directions: panels split over threads
        const int64_t panels = m->D * m->tiles;
        int64_t p0, p1;
        split_range(panels, nth, tid, &p0, &p1);
        const lstm_rows x = l == 0 ? (lstm_rows){(float *)a->input, 1, r->x_off}
                                   : (lstm_rows){r->Y[(l - 1) & 1] + B * DP, DP, NULL};
        const lstm_rows g = {r->G, panels * LSTM_PANEL, NULL};
        if (j->N) j->k->gemm(j->N, lw->in, x, lw->w_ih, lw->bias, p0, p1, panels * LSTM_PANEL, g);
        if (nth > 1) lstm_barrier_wait(&j->all);

        // recurrence: one team per direction when there are threads for both
        if (j->teams == 2) {
            const int team = tid % 2, rank = tid / 2;
            const int size = j->team_size;
            if (rank < size) recur(j, l, team, Y, rank, j->split ? size : 1, &j->team[team]);
        } else if (tid < j->team_size) {
            for (int64_t d = 0; d < m->D; d++)
                recur(j, l, d, Y, tid, j->split ? j->team_size : 1, &j->team[0]);
        }
        if (nth > 1) lstm_barrier_wait(&j->all);
        if (tid == 0) write_final(j, l, Y);
    }

    // scatter to the caller's padded layout, zeros past each length
    const float *Y = r->Y[(m->L - 1) & 1];
    int64_t t_lo, t_hi;
    split_range(j->T, nth, tid, &t_lo, &t_hi);
    if (B == 1 && a->output_stride_t == DP) { // one sequence, rows back to back: one copy
        const int64_t valid = r->len[0] < t_lo ? t_lo : r->len[0] < t_hi ? r->len[0] : t_hi;
        memcpy(a->output + t_lo * DP, Y + (1 + t_lo) * DP, (size_t)((valid - t_lo) * DP) * sizeof(float));
        memset(a->output + valid * DP, 0, (size_t)((t_hi - valid) * DP) * sizeof(float));
        t_hi = t_lo; // done
    }
    for (int64_t t = t_lo; t < t_hi; t++)
        for (int64_t b = 0; b < B; b++) {
            float *o = a->output + t * a->output_stride_t + b * a->output_stride_b;
            const int64_t i = r->inv[b];
            if (t < r->len[i]) memcpy(o, Y + (B + r->off[t] + i) * DP, (size_t)DP * sizeof(float));
            else memset(o, 0, (size_t)DP * sizeof(float));
        }
    lstm_denormals_restore(fp_mode);
}

static int args_ok(const lstm_forward_args *a) {
    if (!a || a->seq_len < 0 || a->batch < 0 || !a->output) return 0;
    if (a->seq_len > 0 && a->batch > 0 && !a->input) return 0;
    if (a->lengths)
        for (int64_t b = 0; b < a->batch; b++)
            if (a->lengths[b] < 0 || a->lengths[b] > a->seq_len) return 0;
    return 1;
}

/* Teams and hidden-unit split for nth threads. */
static void plan_teams(forward_job *j, int nth) {
    const lstm_model *m = j->m;
    j->teams = (m->D == 2 && nth >= 2) ? 2 : 1;
    j->team_size = nth / j->teams;
    // a team splits hidden units only when every member gets real work per step
    const double step_flops = 2.0 * (double)j->B * 4.0 * (double)m->Hp * (double)m->P;
    j->split = j->team_size > 1 && m->tiles >= j->team_size && step_flops >= MIN_STEP_FLOPS_TO_SPLIT;
    if (!j->split) j->team_size = 1;
}

/* Chooses threads and teams from the amount of work. */
static void plan_threads(forward_job *j) {
    const lstm_model *m = j->m;
    double gemm_flops = 0.0, flops = 0.0;
    for (int64_t l = 0; l < m->L; l++) {
        const double per_token = 2.0 * (double)m->D * 4.0 * (double)m->H;
        gemm_flops += per_token * (double)j->N * (double)m->layers[l].in;
        flops += per_token * (double)j->N * (double)(m->layers[l].in + m->P);
    }
    int wanted = flops < MIN_FLOPS_FOR_THREADS ? 1 : lstm_get_num_threads();
    plan_teams(j, wanted);
    // one recurrence that cannot be shared: threads only pay off for a big input projection
    // (the idle thread spins through the recurrence, which costs the busy one on shared cores)
    if (j->teams == 1 && !j->split &&
        (gemm_flops < 4.0 * MIN_FLOPS_FOR_THREADS || gemm_flops < flops - gemm_flops))
        wanted = 1;
    j->nth = lstm_pool_begin(wanted); // at most this many: see set_team
    // a worker that has gone to sleep wakes in 10-20 us, at worst in milliseconds
    const double wait = flops / JOIN_WAIT_FLOPS_PER_NS;
    j->join_wait_ns = wait < 20000.0 ? 20000 : wait > 2e6 ? 2000000 : (int64_t)wait;
}

/* The team is fixed (the pool may bring fewer threads than asked): plan for it. */
static void set_team(void *arg, int nth) {
    forward_job *j = arg;
    j->nth = nth;
    plan_teams(j, nth);
    lstm_barrier_init(&j->all, nth);
    for (int t = 0; t < 2; t++) lstm_barrier_init(&j->team[t], j->team_size);
}

/*
 * The model's spare scratch block if it is big enough, else a new one. The
 * model is shared by threads, so the spare goes by atomic exchange: a call
 * that finds the slot empty (another call holds the block) allocates its own.
 */
static scratch *take_scratch(const lstm_model *m, size_t need) {
    lstm_model *mm = (lstm_model *)m; // only the atomic slot is written
    scratch *s = atomic_exchange(&mm->spare, NULL);
    if (s && s->size >= need) return s;
    free(s);
    if (need > SIZE_MAX - sizeof(scratch)) return NULL;
    s = malloc(sizeof(scratch) + need);
    if (s) s->size = need;
    return s;
}

// back into the slot; a block another call put there meanwhile goes
static void give_scratch(const lstm_model *m, scratch *s) {
    free(atomic_exchange(&((lstm_model *)m)->spare, s));
}

lstm_status lstm_model_forward(const lstm_model *m, const lstm_forward_args *args,
                               void *workspace, size_t workspace_size) {
    if (!m || !args_ok(args)) return LSTM_ERR_INVALID_ARGUMENT;
    forward_job j = {.m = m, .args = args, .k = lstm_active_kernels(), .T = args->seq_len,
                     .B = args->batch};
    size_t need;
    lstm_status s = lstm_workspace_size(m, j.T, j.B, &need);
    if (s != LSTM_OK) return s;
    scratch *own = NULL;
    if (!workspace) {
        own = take_scratch(m, need);
        if (!own) return LSTM_ERR_OUT_OF_MEMORY;
        workspace = own->data;
    } else if (workspace_size < need) {
        return LSTM_ERR_WORKSPACE_TOO_SMALL;
    }
    char *base = (char *)(((uintptr_t)workspace + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1));
    int64_t N = 0;
    for (int64_t b = 0; b < j.B; b++) N += args->lengths ? args->lengths[b] : j.T;
    j.N = N;
    arena a = {base, 0, 1};
    layout_run(m, j.T, j.B, N, &a, &j.r);

    build_tables(&j);
    plan_threads(&j);
    lstm_pool_run(j.nth, j.join_wait_ns, set_team, forward_thread, &j);
    if (own) give_scratch(m, own);
    return LSTM_OK;
}

void lstm_set_num_threads(int n) { lstm_pool_set_size(n); }
int lstm_get_num_threads(void) { return lstm_pool_size(); }
