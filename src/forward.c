/*
 * forward.c - the forward pass over a variable-length batch, for every cell
 * kind, and its thread plan.
 *
 * It follows PyTorch's packed-sequence algorithm:
 *   1. sort the batch by length (descending, stable) so that the sequences
 *      alive at step s are always the first bs[s] rows;
 *   2. per layer, a chunk of steps at a time: one matrix product G = X @
 *      W_ih^T + b over the tokens those steps read, per direction (the
 *      "hoisted" input projection), then
 *   3. per direction, the recurrence over those steps: at step s the first
 *      bs[s] sequences run the fused cell kernel; the reverse direction visits
 *      each sequence from its own last valid step, so nothing is copied or
 *      reversed.
 * Tokens are stored in packed order: row off[t] + i is step t of sorted
 * sequence i (valid while i < bs[t]). Scratch grows with the valid tokens N,
 * not with T x B; G with the chunk (chunk_rows), not with N.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lstm_infer.h"
#include "model.h"
#include "pool.h"

/* Below this many flops per call, threads cost more than they save. */
#define MIN_FLOPS_FOR_THREADS 1500000.0
/* A call waits for workers to join for its flops / this (in ns): 5% of its time at 30 GFLOP/s. */
#define JOIN_WAIT_FLOPS_PER_NS 600.0
/* Below this many flops per recurrent step, a team does not split hidden units. */
#define MIN_STEP_FLOPS_TO_SPLIT 40000.0
/*
 * A pipe (one direction whose steps are not split): a second thread projects
 * while the first steps, when the projection is at least this share of the
 * steps' work (less gains too little for a thread) and at most twice it
 * (more: both threads project, one steps, as before). The first piece of a
 * chunk's projections, which the first step waits for, is this many rows;
 * the others are ~1/16 of the chunk, at least as many.
 */
#define PIPE_MIN_SHARE 0.05
#define PIPE_PIECE_ROWS 16
/* Calls above this many flops (~2 ms) poll the interrupt callback, about this often. */
#define INTERRUPT_FLOPS 6e7
/*
 * From this many valid tokens and projection columns, the input projection
 * reads its rows packed (kernels.h, lstm_pack_rows) on a kernel set that
 * packs, this many rows (a multiple of 6) at a time. Measured on Zen 3,
 * packing included, 2,048 columns: 1.13x at 384 rows (K 128), 1.04-1.19x
 * at 1,200 (K 64-1024); 1,024 columns, 390 rows: 1.10x; 512 columns: 0.99-
 * 1.01x (packing takes 4% there); 96 rows: 0.99x. The chunk bounds the
 * scratch it takes (rows x the widest layer input); the gemm streams W_ih
 * past every 96-1536 rows anyway.
 */
#define PACK_MIN_ROWS 192
#define PACK_MIN_COLS 1024
#define PACK_CHUNK_ROWS 1536
/*
 * Reduced weights a call widens once, into its scratch (convert_ih,
 * convert_hh), from this many valid tokens: widening costs about as much as
 * a few tokens' steps, and the other way pays for its tiles' conversions
 * every step; and an F16 w_hh from this batch, whose steps are bound by
 * arithmetic.
 */
#define CONVERT_MIN_TOKENS 16
#define CONVERT_MIN_BATCH 16
/* A kept scratch block above this size goes when a call needs under a quarter of it. */
#define KEEP_ANY_SCRATCH (1u << 20)
/* Lengths are copied once; up to this many on the stack. */
#define STACK_LENGTHS 64

// ------------------------------------------------------------------ run state

/* Per-call scratch, carved from the workspace; N = valid tokens. */
typedef struct {
    float *G[2];     // per direction (gc_rows, tiles*W): a chunk's input projections, step-major
    float *Y[2];     // (B + N, D*P) ping-pong layer outputs; rows [0,B) hold h_0
    float *cst;      // (D, B, Hp) LSTM cell state per sorted sequence
    float *hbuf;     // (D, B, Hp) pre-projection hidden state (proj_size only)
    int64_t *perm;   // (B) sorted position -> batch index
    int64_t *inv;    // (B) batch index -> sorted position
    int64_t *len;    // (B) lengths in sorted order, descending
    int64_t *bs;     // (T) sequences alive at step t
    int64_t *off;    // (T+1) packed row of step t's first sequence
    int64_t *x_off;  // (N) input offset (floats) of each packed token
    int64_t *x_rev;  // (N) two directions: step-major, the input offset of the reverse one's token
    int64_t *cur[2]; // (N) per direction, step-major: packed row computed at that step
    int64_t *prev[2];// (N) per direction, step-major: Y row holding the previous h
    float *xp;       // per direction (pack_rows(m, gc_rows), widest layer input): projection rows packed, or NULL
    float *wc_ih;    // (D*tiles panels of the widest input): a layer's half w_ih as float32 (convert_ih), or NULL
    void *wc_hh;     // (D, tiles panels): a layer's w_hh widened (convert_hh, hh_panel), or NULL
    int64_t gc_rows;
} run_state;

/* Rows of the projection of N tokens packed at a time, or 0 for none. */
static int64_t pack_rows(const lstm_model *m, int64_t N) {
    if (N < PACK_MIN_ROWS || m->D * m->tiles * m->W < PACK_MIN_COLS) return 0;
    return (N < PACK_CHUNK_ROWS ? N : PACK_CHUNK_ROWS) / LSTM_PACK_ROWS * LSTM_PACK_ROWS;
}

/*
 * Rows of a chunk's G: as many as fill this CPU's L2 (both directions), at
 * most every token's; every token's when that is under one step's or under
 * MIN_CHUNK_ROWS. The recurrence then reads G from L2 soon after the
 * projection wrote it, not from L3 or memory. Measured on the Xeon (2 MB
 * L2), paired against projecting every token first, 1 thread, ragged:
 * big-like (B 256, hidden 256; 512 rows) 1.07x, 256 rows 1.05x; nlp-like
 * (B 32, hidden 256, two directions; 256 rows) 1.02-1.03x; server-like (B
 * 64, hidden 512, two directions) 0.98x in chunks of 128 rows, 0.96x in 4 MB
 * ones (512 rows), and 0.96x in one-step chunks at B 256: those run whole.
 */
#define MIN_CHUNK_ROWS 256
static int64_t chunk_rows(const lstm_model *m, int64_t B, int64_t N) {
    const int64_t fit = (int64_t)lstm_cache_sizes()->l2 / (m->D * m->tiles * m->W * (int64_t)sizeof(float));
    const int64_t rows = fit >= B && fit >= MIN_CHUNK_ROWS ? fit : N;
    return rows < N ? rows : N;
}

/* The widest layer input: a packed row's length at most. */
static int64_t widest_input(const lstm_model *m) {
    int64_t widest = 0;
    for (int64_t l = 0; l < m->L; l++)
        if (m->layers[l].in > widest) widest = m->layers[l].in;
    return widest;
}

/*
 * Whether a call of N valid tokens, projected gc_rows at a time
 * (chunk_rows), converts its layers' half w_ih (F16 and I8 models) to
 * float32 once, each thread the panels it projects, so that the projection
 * runs the float32 kernels on the same values (the same bits). A gemm on
 * halves converts every weight in its tiles once per block of rows (at
 * most ~1,500 rows), so that pays from two chunks or over 1,024 tokens; one
 * pass would only add the copy's bytes (a wide-like call, 100 tokens, 4 MB
 * of float32 w_ih a layer, ran 0.97x converting). Server-like calls (4,800
 * tokens in one chunk) ran 1.09x (float16) and 1.12x (int8) converting.
 */
static int convert_ih(const lstm_model *m, int64_t N, int64_t gc_rows) {
    return m->cfg.weights != LSTM_WEIGHTS_F32 && N >= CONVERT_MIN_TOKENS && (N > gc_rows || N > 1024);
}

/* Elements of a panel of w_hh: int8 ones pad K to a multiple of 4 (kernels.h). */
static int64_t hh_panel(const lstm_model *m) {
    return (m->cfg.weights == LSTM_WEIGHTS_I8 ? lstm_i8_k(m->P) : m->P) * m->W;
}

/* Bytes of an element of w_hh widened: halves to float32, int8 to int16. */
static int64_t wide_bytes(const lstm_model *m) {
    return m->cfg.weights == LSTM_WEIGHTS_I8 ? (int64_t)sizeof(int16_t) : (int64_t)sizeof(float);
}

/*
 * Whether a call widens its layers' w_hh once, each thread the tiles it
 * steps. F16 models, to float32: where that copy (one direction) fits in
 * half of L2, a step reads it at float32's speed, while halves are converted
 * as they are read (vcvtph2ps and the FMA together ran at a third of the
 * FMA's rate on the Xeon, tools/ceilings.c); and from CONVERT_MIN_BATCH rows,
 * whose steps are bound by arithmetic. Bigger w_hh at small batches keep
 * their halves: there the bytes bound. Measured on the Xeon, 1 thread, T 50,
 * halves against float32 before this: batch 2-16 at hidden 128 0.70-0.84x,
 * batch 16 at hidden 512 0.98x, batch 32-256 0.89-0.92x; batch 2 at hidden
 * 512 (4 MB) 1.54x. I8 models, to int16 (lstm_wmat.wide): from batches of
 * 2, whose VNNI step otherwise widens its int8 weights for every chunk of
 * rows (batch 4 at hidden 256 1.14x, big-like 1.03x), on the kernel sets
 * that read the copy (lstm_kernels.wide_i8); a one-row step reads the int8
 * weights as they are. Never for one step (a stream's): its tiles convert
 * each weight once a chunk of rows, so a copy would only add its bytes.
 */
static int convert_hh(const lstm_model *m, const lstm_kernels *k, int64_t T, int64_t B, int64_t N) {
    if (m->cfg.weights == LSTM_WEIGHTS_F32 || N < CONVERT_MIN_TOKENS || T < 2) return 0;
    if (m->cfg.weights == LSTM_WEIGHTS_I8) return B >= 2 && k->wide_i8 && k->wide_i8();
    const double bytes = (double)sizeof(float) * (double)(m->tiles * m->W) * (double)m->P;
    return B >= CONVERT_MIN_BATCH || bytes <= 0.5 * (double)lstm_cache_sizes()->l2;
}

static void layout_run(const lstm_model *m, const lstm_kernels *k, int64_t T, int64_t B, int64_t N,
                       lstm_arena *a, run_state *r) {
    int64_t rows, dp, g;
    r->gc_rows = chunk_rows(m, B, N);
    if (!lstm_add_ok(B, N, &rows) || !lstm_mul_ok(m->tiles, m->W, &g) ||
        !lstm_mul_ok(g, r->gc_rows, &g) || !lstm_mul_ok(m->D, m->P, &dp) || !lstm_mul_ok(rows, dp, &rows)) {
        a->ok = 0;
        return;
    }
    int64_t state, packed;
    if (!lstm_mul_ok(m->D * B, m->Hp, &state)) a->ok = 0;
    if (!lstm_mul_ok(m->D * widest_input(m), pack_rows(m, r->gc_rows), &packed)) a->ok = 0;
    r->G[0] = lstm_arena_take(a, g, sizeof(float));
    r->G[1] = m->D == 2 ? lstm_arena_take(a, g, sizeof(float)) : NULL;
    r->Y[0] = lstm_arena_take(a, rows, sizeof(float));
    r->Y[1] = lstm_arena_take(a, rows, sizeof(float));
    r->cst = m->cfg.cell == LSTM_CELL_LSTM ? lstm_arena_take(a, state, sizeof(float)) : NULL;
    r->hbuf = m->cfg.proj_size ? lstm_arena_take(a, state, sizeof(float)) : NULL;
    r->perm = lstm_arena_take(a, B, sizeof(int64_t));
    r->inv = lstm_arena_take(a, B, sizeof(int64_t));
    r->len = lstm_arena_take(a, B, sizeof(int64_t));
    r->bs = lstm_arena_take(a, T, sizeof(int64_t));
    r->off = lstm_arena_take(a, T + 1, sizeof(int64_t));
    r->x_off = lstm_arena_take(a, N, sizeof(int64_t));
    r->x_rev = m->D == 2 ? lstm_arena_take(a, N, sizeof(int64_t)) : NULL;
    for (int d = 0; d < 2; d++) {
        r->cur[d] = d < m->D ? lstm_arena_take(a, N, sizeof(int64_t)) : NULL;
        r->prev[d] = d < m->D ? lstm_arena_take(a, N, sizeof(int64_t)) : NULL;
    }
    r->xp = packed ? lstm_arena_take(a, packed, sizeof(float)) : NULL;
    const int64_t panels = m->D * m->tiles * m->W; // floats of a panel row, both directions
    const int ih = convert_ih(m, N, r->gc_rows), hh = convert_hh(m, k, T, B, N);
    r->wc_ih = ih ? lstm_arena_take(a, panels * widest_input(m), sizeof(float)) : NULL;
    r->wc_hh = hh ? lstm_arena_take(a, m->D * m->tiles * hh_panel(m), wide_bytes(m)) : NULL;
}

/* The valid tokens of a batch, or -1 for a length outside [0, T]. */
static int64_t valid_tokens(int64_t T, int64_t B, const int64_t *lengths) {
    if (!lengths) return T * B; // the caller checked T * B for overflow
    int64_t N = 0;
    for (int64_t b = 0; b < B; b++) {
        if (lengths[b] < 0 || lengths[b] > T) return -1;
        N += lengths[b];
    }
    return N;
}

static lstm_status scratch_size(const lstm_model *m, const lstm_kernels *k, int64_t T, int64_t B, int64_t N,
                               size_t *bytes) {
    lstm_arena a = {NULL, 0, 1};
    run_state r;
    layout_run(m, k, T, B, N, &a, &r);
    if (!a.ok || !lstm_add_ok(a.size, LSTM_ALIGN, &a.size) || (uint64_t)a.size > (uint64_t)SIZE_MAX)
        return LSTM_ERR_SIZE_OVERFLOW;
    *bytes = (size_t)a.size;
    return LSTM_OK;
}

lstm_status lstm_workspace_size(const lstm_model *m, int64_t T, int64_t B, const int64_t *lengths,
                                size_t *bytes) {
    int64_t TB;
    if (!m || !bytes || T < 0 || B < 0) return LSTM_ERR_INVALID_ARGUMENT;
    if (!lstm_mul_ok(T, B, &TB)) return LSTM_ERR_SIZE_OVERFLOW;
    const int64_t N = valid_tokens(T, B, lengths);
    if (N < 0) return LSTM_ERR_INVALID_ARGUMENT;
    return scratch_size(m, lstm_active_kernels(), T, B, N, bytes);
}

// ------------------------------------------------------------------ forward

typedef struct {
    const lstm_model *m;
    const lstm_forward_args *args;
    const int64_t *lengths; // the call's private copy, or NULL for all T
    const lstm_kernels *k;
    lstm_gemm_r_fn gemm_r;  // reduced weights: the kernel set's, else the scalar reference's
    lstm_cell_r_fn cell_r;
    lstm_widen_fn widen;    // the kernel set's, else the scalar reference's
    run_state r;
    int64_t T, B, N, steps; // steps: the longest length
    int nth, teams, team_size, split;
    int pipe, pipe_worth;   // 2 threads: tid 1 projects while tid 0 steps (plan_threads)
    int64_t join_wait_ns;   // how long the call waits for workers: ~5% of its 1-thread time
    int64_t check_every;    // steps between interrupt checks, 0 for none
    int packs;              // the projection's gemm reads packed rows (kernels.h)
    atomic_int stop;        // the interrupt callback said stop (written by the caller only)
    int team_stop[2];       // stop as each team leader saw it, read by its team after a barrier
    lstm_barrier all, team[2];
    _Alignas(64) _Atomic int64_t projected; // pipe: rows tid 1 has projected, over the whole call
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
    for (int64_t b = 0; b < B; b++) count[j->lengths ? j->lengths[b] : T]++;
    int64_t pos = 0;
    for (int64_t len = T; len >= 0; len--) {
        const int64_t c = count[len];
        count[len] = pos;
        pos += c;
    }
    for (int64_t b = 0; b < B; b++) {
        const int64_t len = j->lengths ? j->lengths[b] : T;
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
                if (d) r->x_rev[at] = r->x_off[r->cur[d][at]];
            }
}

/* h_0 (and c_0) of one layer into rows [0, B) of Y (and into the cell state). */
static void init_state(forward_job *j, int64_t l, float *Y) {
    const lstm_model *m = j->m;
    const int64_t B = j->B, P = m->P, H = m->H, Hp = m->Hp, DP = m->D * P;
    for (int64_t d = 0; d < m->D; d++) {
        const int64_t slot = l * m->D + d;
        for (int64_t i = 0; i < B; i++) {
            const int64_t b = j->r.perm[i];
            float *h = Y + i * DP + d * P;
            if (j->args->h_0) memcpy(h, j->args->h_0 + (slot * B + b) * P, (size_t)P * sizeof(float));
            else memset(h, 0, (size_t)P * sizeof(float));
            if (!j->r.cst) continue;
            float *c = j->r.cst + (d * B + i) * Hp;
            if (j->args->c_0) memcpy(c, j->args->c_0 + (slot * B + b) * H, (size_t)H * sizeof(float));
            else memset(c, 0, (size_t)H * sizeof(float));
            memset(c + H, 0, (size_t)(Hp - H) * sizeof(float));
        }
    }
}

/* h_n (and c_n) of one layer: each sequence's state after its own last step. */
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
            if (a->c_n && j->r.cst)
                memcpy(a->c_n + (slot * B + b) * H, j->r.cst + (d * B + i) * Hp, (size_t)H * sizeof(float));
        }
    }
}

/* The caller asks the interrupt callback; the stop flag only ever goes to 1. */
static void poll_interrupt(forward_job *j) {
    const lstm_forward_args *a = j->args;
    if (j->check_every && !atomic_load_explicit(&j->stop, memory_order_relaxed) &&
        a->interrupt(a->interrupt_ctx))
        atomic_store(&j->stop, 1);
}

/*
 * Whether the call stops, the same answer for every thread: all meet, read
 * the flag, and (when it can change) meet again before the caller may write it.
 */
static int agreed_stop(forward_job *j, int nth) {
    if (nth > 1) lstm_barrier_wait(&j->all);
    const int stop = atomic_load(&j->stop);
    if (nth > 1 && j->check_every) lstm_barrier_wait(&j->all);
    return stop;
}

/* The gemm of kernels.h on w_ih or w_hr stored as `type`: float32 (also a converted copy), or
   halves (F16 and I8 models). */
static void run_gemm(const forward_job *j, int type, int64_t m, int64_t K, lstm_rows a, const float *ap,
                     const void *b, int gates, const float *bias, int64_t p0, int64_t p1,
                     int64_t ncols, lstm_rows c) {
    if (type == LSTM_WEIGHTS_F32) j->k->gemm(m, K, a, ap, b, gates, bias, p0, p1, ncols, c);
    else j->gemm_r(m, K, a, ap, (lstm_wmat){.w = b, .type = LSTM_WEIGHTS_F16}, gates, bias, p0, p1, ncols, c);
}

/* The storage of the model's w_ih and w_hr: float32, or halves in F16 and I8 models. */
static int gemm_type(const lstm_model *m) {
    return m->cfg.weights == LSTM_WEIGHTS_F32 ? LSTM_WEIGHTS_F32 : LSTM_WEIGHTS_F16;
}

/* Direction d's panels of w_ih as stored (gemm_type). */
static const void *w_ih_of(const lstm_model *m, const layer_weights *lw, int64_t d) {
    const size_t bytes = gemm_type(m) == LSTM_WEIGHTS_F32 ? sizeof(float) : sizeof(uint16_t);
    return (const char *)lw->w_ih + (size_t)(d * m->tiles * lw->in * m->W) * bytes;
}

/* The cell of kernels.h on direction d's w_hh, with wc its widened copy when given (convert_hh):
   float32 for an F16 model, which the float32 cell then reads; int16 for an I8 one. */
static void run_cell(const forward_job *j, int64_t m, int64_t K, lstm_rows a, const layer_weights *lw,
                     int64_t d, const void *wc, const float *b_hh, lstm_rows g, float *c, int64_t ldc,
                     int64_t t0, int64_t t1, lstm_rows h) {
    const lstm_model *md = j->m;
    const int type = md->cfg.weights, cell = md->cfg.cell;
    if (type == LSTM_WEIGHTS_F32 || (wc && type == LSTM_WEIGHTS_F16))
        j->k->cell(cell, m, K, a, wc ? wc : lw->w_hh[d], b_hh, g, c, ldc, t0, t1, md->H, h);
    else
        j->cell_r(cell, m, K, a, (lstm_wmat){lw->w_hh[d], lw->s_hh[d], type, lw->colsum_hh[d], wc}, b_hh, g,
                  c, ldc, t0, t1, md->H, h);
}

/* Whether thread tid steps direction d's recurrence (the teams of forward_thread), and its
   tiles [t0, t1) of every step then (recur's split). */
static int recur_tiles(const forward_job *j, int tid, int64_t d, int64_t *t0, int64_t *t1) {
    int rank = tid;
    if (j->teams == 2) {
        if (tid % 2 != d) return 0;
        rank = tid / 2;
    }
    if (rank >= j->team_size) return 0;
    *t0 = 0, *t1 = j->m->tiles;
    if (j->split && j->team_size > 1) split_range(j->m->tiles, j->team_size, rank, t0, t1);
    return 1;
}

/*
 * Layer l's reduced weights widened into the call's scratch (convert_ih,
 * convert_hh: halves to float32, int8 to int16), each thread the w_ih panels
 * it projects (project_chunk's split) and the w_hh tiles it steps
 * (recur_tiles): no thread reads another's, so none waits.
 */
static void convert_layer(const forward_job *j, int64_t l, int tid, int nth) {
    const lstm_model *m = j->m;
    const layer_weights *lw = &m->layers[l];
    const run_state *r = &j->r;
    if (r->wc_ih) {
        int64_t p0 = m->D * m->tiles, p1 = p0;
        if (!j->pipe) split_range(m->D * m->tiles, nth, tid, &p0, &p1);
        else if (tid == 1) p0 = 0; // the projecting thread reads them all
        const int64_t panel = lw->in * m->W;
        j->widen(LSTM_WEIGHTS_F16, (const uint16_t *)lw->w_ih + p0 * panel, r->wc_ih + p0 * panel,
                 (p1 - p0) * panel);
    }
    for (int64_t d = 0; r->wc_hh && d < m->D; d++) {
        int64_t t0, t1;
        const int64_t panel = hh_panel(m), stored = m->cfg.weights == LSTM_WEIGHTS_I8 ? 1 : 2;
        if (recur_tiles(j, tid, d, &t0, &t1))
            j->widen(m->cfg.weights, (const char *)lw->w_hh[d] + t0 * panel * stored,
                     (char *)r->wc_hh + (d * m->tiles + t0) * panel * wide_bytes(m), (t1 - t0) * panel);
    }
}

/* Steps [s0, s1) of the recurrence of one direction of one layer, by one member of a
 * team, on the chunk's projections. Returns early, in step with its team, when the
 * call is interrupted. piped >= 0: a pipe's stepping thread, which waits for each
 * step's projections (the chunk's rows start at `piped` of j->projected). */
static void recur(forward_job *j, int64_t l, int64_t d, float *Y, int tid, int team, int rank, int n,
                  lstm_barrier *bar, int64_t s0, int64_t s1, int64_t piped) {
    const lstm_model *m = j->m;
    const layer_weights *lw = &m->layers[l];
    const run_state *r = &j->r;
    const int64_t B = j->B, P = m->P, DP = m->D * P, G_ld = m->tiles * m->W;
    const int proj = m->cfg.proj_size != 0;
    float *cst = r->cst ? r->cst + d * B * m->Hp : NULL;
    float *hbuf = proj ? r->hbuf + d * B * m->Hp : NULL;
    const void *wc = r->wc_hh ? (char *)r->wc_hh + d * m->tiles * hh_panel(m) * wide_bytes(m) : NULL;
    int64_t t0 = 0, t1 = m->tiles, q0 = 0, q1 = m->proj_panels;
    if (n > 1) {
        split_range(m->tiles, n, rank, &t0, &t1);
        split_range(m->proj_panels, n, rank, &q0, &q1);
    }
    for (int64_t s = s0; s < s1; s++) {
        if (j->check_every && s > s0 && s % j->check_every == 0) {
            // the leader decides for its team; the barrier publishes the decision to all
            // (not at a chunk's first step: forward_thread has just polled, and a member
            // may still read team_stop, from before its last barrier)
            if (rank == 0) {
                if (tid == 0) poll_interrupt(j);
                j->team_stop[team] = atomic_load(&j->stop);
            }
            if (n > 1) lstm_barrier_wait(bar);
            if (j->team_stop[team]) return;
        }
        if (piped >= 0) lstm_wait_at_least(&j->projected, piped + r->off[s + 1] - r->off[s0]);
        const int64_t rows = r->bs[s];
        const lstm_rows prev = {Y + d * P, DP, r->prev[d] + r->off[s]};
        const lstm_rows gates = {r->G[d] + (r->off[s] - r->off[s0]) * G_ld, G_ld, NULL};
        const lstm_rows out = {Y + B * DP + d * P, DP, r->cur[d] + r->off[s]};
        if (!proj) {
            run_cell(j, rows, P, prev, lw, d, wc, lw->b_hh[d], gates, cst, m->Hp, t0, t1, out);
        } else {
            const lstm_rows hr = {hbuf, m->Hp, NULL};
            run_cell(j, rows, P, prev, lw, d, wc, NULL, gates, cst, m->Hp, t0, t1, hr);
            if (n > 1) lstm_barrier_wait(bar);
            run_gemm(j, gemm_type(m), rows, m->H, hr, NULL, lw->w_hr[d], 4, NULL, q0, q1, P, out);
        }
        if (n > 1) lstm_barrier_wait(bar);
    }
}

/*
 * The input projections of the tokens that steps [s0, s1) of layer l read, in
 * step-major order into each direction's G: the directions' panels split over
 * the threads, rows packed (kernels.h) by all of them a piece at a time when
 * the kernel set reads packed rows and there are enough. A call that polls
 * for interrupts polls after every piece of ~INTERRUPT_FLOPS (a batch of
 * thousands makes a chunk of one step big), all threads stopping together.
 * piped >= 0: the pipe's projecting thread alone (tid 0 of 1 here), which
 * says after every piece how far it is (j->projected, from `piped` at the
 * chunk's first row) and stops when the stepping thread has stopped the call.
 */
static void project_chunk(forward_job *j, int64_t l, int64_t s0, int64_t s1, int tid, int nth,
                          int64_t piped) {
    const lstm_model *m = j->m;
    const layer_weights *lw = &m->layers[l];
    const run_state *r = &j->r;
    const int64_t B = j->B, DP = m->D * m->P, G_ld = m->tiles * m->W, first = r->off[s0];
    const int64_t rows = r->off[s1] - first, packed = j->packs && piped < 0 ? pack_rows(m, rows) : 0;
    int64_t piece = packed ? packed : rows;
    if (piped >= 0) {
        piece = rows / 16 < PIPE_PIECE_ROWS ? PIPE_PIECE_ROWS : rows / 16;
    } else if (j->check_every) { // the same pieces on every thread: from the largest share of panels
        const int64_t share = (m->D * m->tiles + nth - 1) / nth;
        const double polled = INTERRUPT_FLOPS / (2.0 * (double)lw->in * (double)(share * m->W) + 1.0);
        const int64_t most = polled < 384.0 ? 384 : polled > (double)rows ? rows : (int64_t)polled / 6 * 6;
        if (most < piece) piece = most;
    }
    const float *Yin = r->Y[(l - 1) & 1] + B * DP; // layer l > 0: the last one's outputs
    int64_t p0, p1;
    split_range(m->D * m->tiles, nth, tid, &p0, &p1);
    lstm_rows x[2];
    int64_t q0[2], q1[2];
    for (int64_t d = 0; d < m->D; d++) {
        // step-major row `at` reads token cur[d][at], which is `at` itself going forward
        x[d] = l == 0 ? (lstm_rows){(float *)j->args->input, 1, (d ? r->x_rev : r->x_off) + first}
             : d      ? (lstm_rows){(float *)Yin, DP, r->cur[d] + first}
                      : (lstm_rows){(float *)Yin + first * DP, DP, NULL};
        q0[d] = (p0 > d * m->tiles ? p0 : d * m->tiles) - d * m->tiles; // this thread's panels of d
        q1[d] = (p1 < (d + 1) * m->tiles ? p1 : (d + 1) * m->tiles) - d * m->tiles;
    }
    for (int64_t r0 = 0, n; r0 < rows; r0 += n) {
        n = rows - r0 < piece ? rows - r0 : piece;
        if (piped >= 0 && r0 == 0 && n > PIPE_PIECE_ROWS) n = PIPE_PIECE_ROWS; // the first step's wait
        if (packed) {
            // every thread packs a share of the piece's groups (both directions'), all read all
            if (r0 && nth > 1) lstm_barrier_wait(&j->all); // nobody reads the last piece now
            const int64_t groups = n / LSTM_PACK_ROWS; // of each direction
            int64_t g0, g1;
            split_range(m->D * groups, nth, tid, &g0, &g1);
            for (int64_t d = 0; d < m->D; d++) {
                const int64_t lo = g0 - d * groups, hi = g1 - d * groups;
                lstm_pack_rows(lstm_rows_from(x[d], r0), lo < 0 ? 0 : lo, hi > groups ? groups : hi, lw->in,
                               r->xp + d * packed * lw->in);
            }
            if (nth > 1) lstm_barrier_wait(&j->all);
        }
        for (int64_t d = 0; d < m->D; d++)
            if (q0[d] < q1[d])
                run_gemm(j, r->wc_ih ? LSTM_WEIGHTS_F32 : gemm_type(m), n, lw->in, lstm_rows_from(x[d], r0),
                         packed ? r->xp + d * packed * lw->in : NULL,
                         r->wc_ih ? r->wc_ih + d * m->tiles * lw->in * m->W : w_ih_of(m, lw, d), m->gates,
                         lw->bias + d * G_ld, q0[d], q1[d], G_ld, (lstm_rows){r->G[d] + r0 * G_ld, G_ld, NULL});
        if (piped >= 0) {
            atomic_store_explicit(&j->projected, piped + r0 + n, memory_order_release);
            if (atomic_load_explicit(&j->stop, memory_order_relaxed)) return;
            continue;
        }
        if (j->check_every && r0 + n < rows) {
            if (tid == 0) poll_interrupt(j);
            if (agreed_stop(j, nth)) return;
        }
    }
    if (tid == 0 && piped < 0) poll_interrupt(j);
}

static void forward_thread(void *arg, int tid, int nth) {
    forward_job *j = arg;
    const lstm_model *m = j->m;
    const lstm_forward_args *a = j->args;
    run_state *r = &j->r;
    const int64_t B = j->B, DP = m->D * m->P;
    const unsigned fp_mode = lstm_denormals_off();
    int64_t piped = 0; // a pipe: rows projected before this chunk, over the whole call

    for (int64_t l = 0; l < m->L; l++) {
        float *Y = r->Y[l & 1];
        if (tid == 0) init_state(j, l, Y);
        convert_layer(j, l, tid, nth);

        // chunks of steps: their tokens' projections, then their recurrence (a pipe: both at once)
        int stopped = 0;
        for (int64_t s0 = 0, s1; s0 < j->steps && !stopped; s0 = s1) {
            for (s1 = s0 + 1; s1 < j->steps && r->off[s1 + 1] - r->off[s0] <= r->gc_rows;) s1++;
            if (j->pipe) {
                if (tid == 1) project_chunk(j, l, s0, s1, 0, 1, piped);
                else if (tid == 0) recur(j, l, 0, Y, 0, 0, 0, 1, &j->team[0], s0, s1, piped);
                piped += r->off[s1] - r->off[s0];
                if (tid == 0) poll_interrupt(j);
                stopped = agreed_stop(j, nth); // (no thread reads the chunk's projections any more)
                continue;
            }
            project_chunk(j, l, s0, s1, tid, nth, -1);
            if ((stopped = agreed_stop(j, nth))) break; // (and the chunk's projections are there for all)
            // one team per direction when there are threads for both
            if (j->teams == 2) {
                const int team = tid % 2, rank = tid / 2;
                const int size = j->team_size;
                if (rank < size)
                    recur(j, l, team, Y, tid, team, rank, j->split ? size : 1, &j->team[team], s0, s1, -1);
            } else if (tid < j->team_size) {
                for (int64_t d = 0; d < m->D && !j->team_stop[0]; d++)
                    recur(j, l, d, Y, tid, 0, tid, j->split ? j->team_size : 1, &j->team[0], s0, s1, -1);
            }
            if (tid == 0) poll_interrupt(j);
            stopped = agreed_stop(j, nth); // (no thread reads the chunk's projections any more)
        }
        if (stopped) break;
        if (tid == 0) write_final(j, l, Y);
    }

    // scatter to the caller's padded layout, zeros past each length
    const float *Y = r->Y[(m->L - 1) & 1];
    int64_t t_lo, t_hi;
    split_range(j->T, nth, tid, &t_lo, &t_hi);
    if (atomic_load(&j->stop)) t_hi = t_lo; // interrupted (all agreed above): outputs unspecified
    if (B == 1 && a->output_stride_t == DP && t_lo < t_hi) { // one sequence, rows back to back: one copy
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

static int args_ok(const lstm_model *m, const lstm_forward_args *a) {
    if (!a || a->seq_len < 0 || a->batch < 0 || !a->output) return 0;
    if (a->seq_len > 0 && a->batch > 0 && !a->input) return 0;
    if (m->cfg.cell != LSTM_CELL_LSTM && (a->c_0 || a->c_n)) return 0;
    return 1;
}

/* Teams and hidden-unit split for nth threads. */
static void plan_teams(forward_job *j, int nth) {
    const lstm_model *m = j->m;
    j->teams = (m->D == 2 && nth >= 2) ? 2 : 1;
    j->team_size = nth / j->teams;
    // a team splits hidden units only when every member gets real work per step (in float32 flops)
    const double cost = j->k->step_cost ? j->k->step_cost(m->cfg.weights) : 1.0;
    const double step_flops = cost * 2.0 * (double)j->B * (double)m->W * (double)m->tiles * (double)m->P;
    j->split = j->team_size > 1 && m->tiles >= j->team_size && step_flops >= MIN_STEP_FLOPS_TO_SPLIT;
    if (!j->split) j->team_size = 1;
    j->pipe = j->pipe_worth && nth >= 2 && j->teams == 1 && !j->split;
}

/* Chooses threads, teams and interrupt checks from the amount of work. */
static void plan_threads(forward_job *j) {
    const lstm_model *m = j->m;
    double gemm_flops = 0.0, flops = 0.0;
    const double per_token = 2.0 * (double)m->D * (double)m->gates * (double)m->H;
    for (int64_t l = 0; l < m->L; l++) {
        gemm_flops += per_token * (double)j->N * (double)m->layers[l].in;
        flops += per_token * (double)j->N * (double)(m->layers[l].in + m->P);
    }
    if (j->args->interrupt && flops >= INTERRUPT_FLOPS) {
        const double step_flops = 2.0 * (double)j->B * (double)m->gates * (double)m->Hp * (double)m->P;
        const double every = INTERRUPT_FLOPS / (step_flops > 1.0 ? step_flops : 1.0);
        j->check_every = every < 1.0 ? 1 : every > 1e9 ? 1000000000 : (int64_t)every;
    }
    int wanted = flops < MIN_FLOPS_FOR_THREADS ? 1 : lstm_get_num_threads();
    const double steps = flops - gemm_flops;
    j->pipe_worth = m->D == 1 && gemm_flops >= PIPE_MIN_SHARE * steps && gemm_flops <= 2.0 * steps;
    plan_teams(j, wanted);
    // one recurrence that cannot be shared: a pipe takes two threads; else threads only pay off
    // for a big input projection (the idle thread spins through the recurrence, which costs the
    // busy one on shared cores)
    if (j->pipe) wanted = 2;
    else if (j->teams == 1 && !j->split &&
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
 * The model's spare scratch block if it fits this call, else a new one. The
 * model is shared by threads, so the spare goes by atomic exchange: a call
 * that finds the slot empty (another call holds the block) allocates its own.
 * A kept block over 1 MiB goes when the call needs under a quarter of it, so
 * one huge call does not pin its memory through many small ones.
 */
static scratch *take_scratch(const lstm_model *m, size_t need) {
    lstm_model *mm = (lstm_model *)m; // only the atomic slot is written
    scratch *s = atomic_exchange(&mm->spare, NULL);
    if (s && s->size >= need && (s->size <= KEEP_ANY_SCRATCH || need >= s->size / 4)) return s;
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

/*
 * A batch whose sequences all run the same n >= 1 steps, on the calling
 * thread: the kernel calls of forward_thread for it (the same bits), without
 * its sort, index tables, thread plan and the copy of h_0 (its sort is the
 * identity then, and every step runs every row). They cost a one-step call
 * of one sequence a tenth of its time; a batch-64 step at hidden size 64
 * ran 1.04x as fast here. Taken when the plan would be one thread (under
 * MIN_FLOPS_FOR_THREADS, or one thread set) with no interrupt polls; ragged
 * lengths, length 0, a projection or two directions go the general way.
 * Returns the steps to run, or 0.
 */
static int64_t uniform_steps(const forward_job *j) {
    const lstm_model *m = j->m;
    const int64_t n = j->lengths && j->B ? j->lengths[0] : j->T; // the call's private copy
    if (j->B < 1 || n < 1 || m->D != 1 || m->cfg.proj_size) return 0;
    for (int64_t b = 1; j->lengths && b < j->B; b++)
        if (j->lengths[b] != n) return 0;
    double flops = 0.0;
    for (int64_t l = 0; l < m->L; l++)
        flops += 2.0 * m->gates * (double)m->H * (double)n * (double)j->B *
                 (double)(m->layers[l].in + m->P);
    if (j->args->interrupt && flops >= INTERRUPT_FLOPS) return 0;
    return flops < MIN_FLOPS_FOR_THREADS || lstm_get_num_threads() == 1 ? n : 0;
}

/*
 * The input projection of `rows` rows of x into g on this thread alone, all
 * panels; with xp (room for pack_rows(m, rows) rows), packed a chunk at a time
 * when there are enough rows.
 */
static void project(const forward_job *j, int64_t rows, const layer_weights *lw, const float *wc,
                    lstm_rows x, float *xp, lstm_rows g) {
    const lstm_model *m = j->m;
    const int64_t chunk = xp ? pack_rows(m, rows) : 0, ncols = m->D * m->tiles * m->W;
    const int type = wc ? LSTM_WEIGHTS_F32 : gemm_type(m);
    const void *w = wc ? (const void *)wc : lw->w_ih;
    if (!chunk) {
        run_gemm(j, type, rows, lw->in, x, NULL, w, m->gates, lw->bias, 0, m->D * m->tiles, ncols, g);
        return;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
        const lstm_rows xr = lstm_rows_from(x, r0);
        lstm_pack_rows(xr, 0, n / LSTM_PACK_ROWS, lw->in, xp);
        run_gemm(j, type, n, lw->in, xr, xp, w, m->gates, lw->bias, 0, m->D * m->tiles, ncols,
                 lstm_rows_from(g, r0));
    }
}

/*
 * The n steps of uniform_steps, in a workspace laid out for (T, B, n B),
 * which holds these: the projections g of a chunk of steps (at most
 * chunk_rows), c (B Hp) and two layer outputs of (1 + n) B rows (rows [0, B)
 * for a zero h_0).
 */
static void forward_uniform(const forward_job *j, int64_t n, char *base) {
    const lstm_model *m = j->m;
    const lstm_forward_args *a = j->args;
    const int64_t B = j->B, H = m->H, P = m->P, Hp = m->Hp, G_ld = m->tiles * m->W;
    const int64_t per = chunk_rows(m, B, n * B) / B; // steps a chunk (n B valid tokens)
    lstm_arena ar = {base, 0, 1};
    float *g = lstm_arena_take(&ar, per * B * G_ld, sizeof(float));
    float *c = m->cfg.cell == LSTM_CELL_LSTM ? lstm_arena_take(&ar, B * Hp, sizeof(float)) : NULL;
    float *Y[2] = {lstm_arena_take(&ar, (1 + n) * B * P, sizeof(float)),
                   lstm_arena_take(&ar, (1 + n) * B * P, sizeof(float))};
    // the general layout holds all of these and more, so they fit its size
    const int64_t packed = j->packs ? pack_rows(m, per * B) : 0;
    float *xp = packed ? lstm_arena_take(&ar, packed * widest_input(m), sizeof(float)) : NULL;
    // half weights converted once (convert_ih, convert_hh), as the general layout has room for
    const int64_t panel_row = m->tiles * m->W;
    const int ih = convert_ih(m, n * B, chunk_rows(m, B, n * B)), hh = convert_hh(m, j->k, n, B, n * B);
    float *wc_ih = ih ? lstm_arena_take(&ar, panel_row * widest_input(m), sizeof(float)) : NULL;
    void *wc_hh = hh ? lstm_arena_take(&ar, m->tiles * hh_panel(m), wide_bytes(m)) : NULL;
    const unsigned fp_mode = lstm_denormals_off();
    // the input's rows (t, b) evenly spaced, as one sequence's or a packed batch's are
    const int64_t sb = a->input_stride_b, st = a->input_stride_t;
    const int even = B == 1 || n == 1 || st == B * sb;
    for (int64_t l = 0; l < m->L; l++) {
        const layer_weights *lw = &m->layers[l];
        float *y = Y[l & 1];
        // h_0 is read in place; c_0 goes into padded scratch, which the cell updates
        for (int64_t b = 0; c && b < B; b++) {
            if (a->c_0) memcpy(c + b * Hp, a->c_0 + (l * B + b) * H, (size_t)H * sizeof(float));
            else memset(c + b * Hp, 0, (size_t)H * sizeof(float));
            memset(c + b * Hp + H, 0, (size_t)(Hp - H) * sizeof(float));
        }
        float *h0 = a->h_0 ? (float *)a->h_0 + l * B * P : y;
        if (!a->h_0) memset(y, 0, (size_t)(B * P) * sizeof(float));
        if (wc_ih) j->widen(LSTM_WEIGHTS_F16, lw->w_ih, wc_ih, panel_row * lw->in);
        if (wc_hh) j->widen(m->cfg.weights, lw->w_hh[0], wc_hh, m->tiles * hh_panel(m));
        for (int64_t t0 = 0; t0 < n; t0 += per) {
            const int64_t steps = n - t0 < per ? n - t0 : per;
            if (l) {
                project(j, steps * B, lw, wc_ih, (lstm_rows){Y[(l - 1) & 1] + (1 + t0) * B * P, P, NULL}, xp,
                        (lstm_rows){g, G_ld, NULL});
            } else {
                for (int64_t t = 0; t < (even ? 1 : steps); t++)
                    project(j, even ? steps * B : B, lw, wc_ih,
                            (lstm_rows){(float *)a->input + (t0 + t) * st, B == 1 ? st : sb, NULL}, xp,
                            (lstm_rows){g + t * B * G_ld, G_ld, NULL});
            }
            for (int64_t t = t0; t < t0 + steps; t++)
                run_cell(j, B, P, (lstm_rows){t ? y + t * B * P : h0, P, NULL}, lw, 0, wc_hh, lw->b_hh[0],
                         (lstm_rows){g + (t - t0) * B * G_ld, G_ld, NULL}, c, Hp, 0, m->tiles,
                         (lstm_rows){y + (t + 1) * B * P, P, NULL});
        }
        if (a->h_n) memcpy(a->h_n + l * B * P, y + n * B * P, (size_t)(B * P) * sizeof(float));
        for (int64_t b = 0; a->c_n && c && b < B; b++)
            memcpy(a->c_n + (l * B + b) * H, c + b * Hp, (size_t)H * sizeof(float));
    }
    const float *y = Y[(m->L - 1) & 1] + B * P;
    for (int64_t t = 0; t < j->T; t++)
        for (int64_t b = 0; b < B; b++) {
            float *o = a->output + t * a->output_stride_t + b * a->output_stride_b;
            if (t < n) memcpy(o, y + (t * B + b) * P, (size_t)P * sizeof(float));
            else memset(o, 0, (size_t)P * sizeof(float));
        }
    lstm_denormals_restore(fp_mode);
}

lstm_status lstm_model_forward(const lstm_model *m, const lstm_forward_args *args,
                               void *workspace, size_t workspace_size) {
    if (!m || !args_ok(m, args)) return LSTM_ERR_INVALID_ARGUMENT;
    forward_job j = {.m = m, .args = args, .k = lstm_active_kernels(), .T = args->seq_len,
                     .B = args->batch};
    j.gemm_r = j.k->gemm_r ? j.k->gemm_r : lstm_kernels_scalar.gemm_r;
    j.cell_r = j.k->cell_r ? j.k->cell_r : lstm_kernels_scalar.cell_r;
    j.widen = j.k->widen ? j.k->widen : lstm_kernels_scalar.widen;
    j.packs = j.k->packs && (m->cfg.weights == LSTM_WEIGHTS_F32 || j.k->gemm_r);
    atomic_init(&j.stop, 0);
    int64_t TB;
    if (!lstm_mul_ok(j.T, j.B, &TB)) return LSTM_ERR_SIZE_OVERFLOW;
    // lengths are read once, into a private copy: everything after uses the copy
    int64_t stack_lengths[STACK_LENGTHS], *lengths = NULL;
    if (args->lengths) {
        if ((uint64_t)j.B > SIZE_MAX / sizeof(int64_t)) return LSTM_ERR_SIZE_OVERFLOW;
        lengths = j.B <= STACK_LENGTHS ? stack_lengths : malloc((size_t)j.B * sizeof(int64_t));
        if (!lengths) return LSTM_ERR_OUT_OF_MEMORY;
        memcpy(lengths, args->lengths, (size_t)j.B * sizeof(int64_t));
    }
    j.lengths = lengths;
    lstm_status s = LSTM_OK;
    scratch *own = NULL;
    size_t need;
    j.N = valid_tokens(j.T, j.B, lengths);
    if (j.N < 0) s = LSTM_ERR_INVALID_ARGUMENT;
    else s = scratch_size(m, j.k, j.T, j.B, j.N, &need); // the layout below takes the same kernels
    if (s == LSTM_OK && !workspace) {
        own = take_scratch(m, need);
        if (!own) s = LSTM_ERR_OUT_OF_MEMORY;
        else workspace = own->data;
    } else if (s == LSTM_OK && workspace_size < need) {
        s = LSTM_ERR_WORKSPACE_TOO_SMALL;
    }
    if (s == LSTM_OK) {
        char *base = (char *)(((uintptr_t)workspace + LSTM_ALIGN - 1) & ~(uintptr_t)(LSTM_ALIGN - 1));
        const int64_t n = uniform_steps(&j);
        if (n) {
            forward_uniform(&j, n, base);
        } else {
            lstm_arena a = {base, 0, 1};
            layout_run(m, j.k, j.T, j.B, j.N, &a, &j.r);
            build_tables(&j);
            plan_threads(&j);
            lstm_pool_run(j.nth, j.join_wait_ns, set_team, forward_thread, &j);
            if (atomic_load(&j.stop)) s = LSTM_ERR_INTERRUPTED;
        }
    }
    if (own) give_scratch(m, own);
    if (lengths && lengths != stack_lengths) free(lengths);
    return s;
}

void lstm_set_num_threads(int n) { lstm_pool_set_size(n); }
int lstm_get_num_threads(void) { return lstm_pool_size(); }
