/*
 * ceilings.c - what this x86 CPU can do at most, what that allows the
 * batch-1 benchmark cases (bench.py's edge and wide) in each weight type, and
 * how close the library gets: the "what bounds it, measured" of issue 17's
 * missed targets. It measures the kernel set the library chooses here, avx2
 * or avx512, against the ceilings of that set's instructions (ymm, or zmm
 * and, for int8, AVX512-VNNI's vpdpbusd and vpdpwssd).
 *
 *   make ceilings && build/c/ceilings [ROUNDS]
 *
 * Measures, in TSC cycles (the core clock may differ; both sides of every
 * comparison here are in the same unit):
 *   - the throughput of the instruction sequences each weight type's step
 *     needs per weight (hand-written loops over L1-resident data, 12
 *     independent accumulators, so only the execution ports limit them);
 *   - the FMA peak of two threads at once, against one alone: what a second
 *     thread can add to a compute-bound call at most (two busy cores may run
 *     slower clocks, or share a core with a neighbour's work);
 *   - read bandwidth per thread, 1 and 2 threads, for the footprints the
 *     steps stream (each thread its own buffer, read again and again);
 *   - a cache line's trip between two threads, and a step's hand-off of h.
 * Then a lower bound on each case's time: the input projection (one GEMM per
 * layer over all steps) at the FMA peak, plus every step's W_hh product at
 * the slower of its instruction ceiling and its read bandwidth, split over
 * the threads perfectly, plus on 2 threads a hand-off of h a step (measured:
 * each thread writes its half, a flag, reads the other's); or, where less,
 * the pipe's (one thread projects while the other steps: the longer of the
 * two); with nothing else (no activations, no call). A target below that
 * bound cannot be met by any kernel of that kind on this CPU.
 *
 * Each round measures the ceilings and then times the library on the same
 * cases (fastest of 3 calls each), so the share of the bound it reaches is
 * a ratio from one moment: on a shared VM the ceilings that need loads and
 * shuffles move by up to 1.4x with what the neighbour runs (the FMA peak
 * does not). Printed: the medians over the rounds, and the range of the
 * per-round shares.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lstm_infer.h"

#if !defined(__x86_64__)
int main(void) {
    fprintf(stderr, "ceilings: x86-64 only\n");
    return 2;
}
#else
#include <x86intrin.h>

static int cmpd(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Twelve copies of one instruction sequence per iteration, copy i
 * accumulating into ymm i; ymm12 is scratch, ymm14/15 are sources, %1 points
 * at 4 KB of L1-resident data. */
#define R12(I) I(0) I(1) I(2) I(3) I(4) I(5) I(6) I(7) I(8) I(9) I(10) I(11)
#define S(x) #x
#define FMA(i) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" S(i) "\n"
#define FMA_M(i) "vfmadd231ps " S(i) "*32(%1), %%ymm15, %%ymm" S(i) "\n"
#define F16(i) "vcvtph2ps " S(i) "*16(%1), %%ymm12\n vfmadd231ps %%ymm12, %%ymm15, %%ymm" S(i) "\n"
#define I8(i)                                                                                      \
    "vpmovsxbw " S(i) "*16(%1), %%ymm12\n vpmaddwd %%ymm12, %%ymm15, %%ymm12\n"                   \
    " vpaddd %%ymm12, %%ymm" S(i) ", %%ymm" S(i) "\n"
#define I16(i) "vpmaddwd " S(i) "*32(%1), %%ymm15, %%ymm12\n vpaddd %%ymm12, %%ymm" S(i) ", %%ymm" S(i) "\n"
#define LOOP(NAME, BODY)                                                                           \
    __attribute__((noinline)) static void NAME(long n, const void *p) {                            \
        __asm__ volatile("1:\n" R12(BODY) "dec %0\n jnz 1b\n"                                       \
                         : "+r"(n)                                                                  \
                         : "r"(p)                                                                   \
                         : "memory", "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", \
                           "ymm8", "ymm9", "ymm10", "ymm11", "ymm12", "ymm14", "ymm15");           \
    }
LOOP(loop_fma, FMA)
LOOP(loop_fma_m, FMA_M)
LOOP(loop_f16, F16)
LOOP(loop_i8, I8)
LOOP(loop_i16, I16)

/* The avx512 set's sequences: the same in zmm registers (a weight vector is 64 bytes of
 * float32, 32 of halves or int8 widened to 16 bits); int8 sums with vpdpwssd (AVX512-VNNI). */
#define FMA_Z(i) "vfmadd231ps %%zmm14, %%zmm15, %%zmm" S(i) "\n"
#define FMA_ZM(i) "vfmadd231ps " S(i) "*64(%1), %%zmm15, %%zmm" S(i) "\n"
#define F16_Z(i) "vcvtph2ps " S(i) "*32(%1), %%zmm12\n vfmadd231ps %%zmm12, %%zmm15, %%zmm" S(i) "\n"
#define I8_Z(i) "vpmovsxbw " S(i) "*32(%1), %%zmm12\n vpdpwssd %%zmm12, %%zmm15, %%zmm" S(i) "\n"
#define I16_Z(i) "vpdpwssd " S(i) "*64(%1), %%zmm15, %%zmm" S(i) "\n"
#define LOOP_Z(NAME, BODY, TARGET)                                                                 \
    __attribute__((noinline, target(TARGET))) static void NAME(long n, const void *p) {            \
        __asm__ volatile("1:\n" R12(BODY) "dec %0\n jnz 1b\n"                                      \
                         : "+r"(n)                                                                  \
                         : "r"(p)                                                                   \
                         : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
                           "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm14", "xmm15");           \
    }
LOOP_Z(loop_fma_z, FMA_Z, "avx512f")
LOOP_Z(loop_fma_zm, FMA_ZM, "avx512f")
LOOP_Z(loop_f16_z, F16_Z, "avx512f")
LOOP_Z(loop_i8_z, I8_Z, "avx512f,avx512bw,avx512vnni")
LOOP_Z(loop_i16_z, I16_Z, "avx512f,avx512vnni")

/* The avx512 set's one-row int8 step: a 64-byte weight vector (4 k of 16 columns) loaded once,
 * then vpdpbusd with h's high bytes (zmm14) into zmm i and with its low bytes (zmm15) into
 * zmm 16 + i: 64 multiply-adds with a 16-bit h. */
#define R12P(I) I(0, 16) I(1, 17) I(2, 18) I(3, 19) I(4, 20) I(5, 21) I(6, 22) I(7, 23) I(8, 24) \
    I(9, 25) I(10, 26) I(11, 27)
#define I8B_Z(i, j)                                                                                \
    "vmovdqu64 " S(i) "*64(%1), %%zmm12\n vpdpbusd %%zmm12, %%zmm14, %%zmm" S(i)                   \
    "\n vpdpbusd %%zmm12, %%zmm15, %%zmm" S(j) "\n"
__attribute__((noinline, target("avx512f,avx512vnni"))) static void loop_i8b_z(long n, const void *p) {
    __asm__ volatile("1:\n" R12P(I8B_Z) "dec %0\n jnz 1b\n"
                     : "+r"(n)
                     : "r"(p)
                     : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",
                       "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27");
}

enum { SEQ_FMA, SEQ_FMA_M, SEQ_F16, SEQ_I8, SEQ_I16, SEQ_FMA_Z, SEQ_FMA_ZM, SEQ_F16_Z, SEQ_I8_Z, SEQ_I16_Z, SEQ_I8B_Z, N_SEQ };
enum { NEEDS_AVX2, NEEDS_AVX512, NEEDS_VNNI };
static const struct {
    void (*run)(long, const void *);
    int macs; /* multiply-adds per copy */
    int needs;
    const char *what;
} SEQ[N_SEQ] = {
    {loop_fma, 8, NEEDS_AVX2, "vfmadd231ps ymm (registers): the FMA peak (avx2)"},
    {loop_fma_m, 8, NEEDS_AVX2, "vfmadd231ps m256: a float32 weight"},
    {loop_f16, 8, NEEDS_AVX2, "vcvtph2ps m128 + vfmadd231ps: a float16 weight"},
    {loop_i8, 16, NEEDS_AVX2, "vpmovsxbw m128 + vpmaddwd + vpaddd: an int8 weight, 16-bit h"},
    {loop_i16, 16, NEEDS_AVX2, "vpmaddwd m256 + vpaddd: a weight kept widened to int16"},
    {loop_fma_z, 16, NEEDS_AVX512, "vfmadd231ps zmm (registers): the FMA peak (avx512)"},
    {loop_fma_zm, 16, NEEDS_AVX512, "vfmadd231ps m512: a float32 weight"},
    {loop_f16_z, 16, NEEDS_AVX512, "vcvtph2ps m256 + vfmadd231ps zmm: a float16 weight"},
    {loop_i8_z, 32, NEEDS_VNNI, "vpmovsxbw m256 + vpdpwssd zmm: an int8 weight, 16-bit h (VNNI)"},
    {loop_i16_z, 32, NEEDS_VNNI, "vpdpwssd m512: a weight kept widened to int16 (VNNI)"},
    {loop_i8b_z, 64, NEEDS_VNNI, "2 vpdpbusd zmm a 64-byte load: an int8 weight, 16-bit h split in bytes (VNNI)"},
};
static int have[3]; /* have[NEEDS_...]: this CPU runs the sequences that need it */
static int peak_seq = SEQ_FMA; /* the FMA peak of the kernel set measured */

/* multiply-adds per TSC cycle, median of rounds */
static double mac_rate[N_SEQ];

static void measure_seq(void) {
    enum { ROUNDS = 21, ITERS = 100000 };
    char *data = aligned_alloc(64, 4096);
    if (!data) {
        fprintf(stderr, "ceilings: out of memory\n");
        exit(1);
    }
    memset(data, 1, 4096);
    double r[N_SEQ][ROUNDS];
    for (int k = 0; k < ROUNDS; k++)
        for (int s = 0; s < N_SEQ; s++) { // interleaved, so a slow moment hits every sequence
            if (!have[SEQ[s].needs]) {
                r[s][k] = 0;
                continue;
            }
            const uint64_t t = __rdtsc();
            SEQ[s].run(ITERS, data);
            r[s][k] = (double)ITERS * 12 * SEQ[s].macs / (double)(__rdtsc() - t);
        }
    for (int s = 0; s < N_SEQ; s++) {
        qsort(r[s], ROUNDS, sizeof(double), cmpd);
        mac_rate[s] = r[s][ROUNDS / 2];
    }
    free(data);
}

/* the FMA peak of each of two threads started together: the slower one's
 * multiply-adds per TSC cycle */
typedef struct {
    atomic_int *go;
    double rate;
} fma_job;

static void *fma_thread(void *arg) {
    enum { ITERS = 1000000 };
    fma_job *j = arg;
    while (!atomic_load(j->go)) _mm_pause();
    const uint64_t t = __rdtsc();
    SEQ[peak_seq].run(ITERS, NULL);
    j->rate = (double)ITERS * 12 * SEQ[peak_seq].macs / (double)(__rdtsc() - t);
    return NULL;
}

static double fma_pair_rate(void) {
    pthread_t th[2];
    atomic_int go = 0;
    fma_job j[2] = {{&go, 0}, {&go, 0}};
    for (int i = 0; i < 2; i++)
        if (pthread_create(&th[i], NULL, fma_thread, &j[i])) {
            fprintf(stderr, "ceilings: cannot start a thread\n");
            exit(1);
        }
    atomic_store(&go, 1);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    return j[0].rate < j[1].rate ? j[0].rate : j[1].rate;
}

/* the xor of every 32 bytes, so the loads cannot be dropped */
__attribute__((noinline, target("avx2"))) static uint64_t read_all(const char *p, size_t bytes) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < bytes; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    return (uint64_t)_mm256_extract_epi64(a0, 0);
}

typedef struct {
    size_t bytes;
    int reps;
    atomic_int *ready, *go;
    double cycles; // fastest pass
    uint64_t sink;
} reader_job;

static void *reader(void *arg) {
    reader_job *j = arg;
    char *p = aligned_alloc(64, j->bytes);
    if (!p) { // no rate (cycles stay 0), but the others must not wait for this thread
        atomic_fetch_add(j->ready, 1);
        return NULL;
    }
    memset(p, 1, j->bytes);
    for (int w = 0; w < 3; w++) j->sink += read_all(p, j->bytes);
    atomic_fetch_add(j->ready, 1);
    while (!atomic_load(j->go)) _mm_pause();
    double best = 1e300;
    for (int r = 0; r < j->reps; r++) {
        const uint64_t t = __rdtsc();
        j->sink += read_all(p, j->bytes);
        const double c = (double)(__rdtsc() - t);
        if (c < best) best = c;
    }
    j->cycles = best;
    free(p);
    return NULL;
}

/* bytes per TSC cycle per thread (the slower thread's), median of 5 tries */
static double read_rate(size_t bytes, int threads) {
    double tries[5];
    for (int k = 0; k < 5; k++) {
        pthread_t th[2];
        reader_job j[2];
        atomic_int ready = 0, go = 0;
        int reps = (int)(100000000 / bytes);
        reps = reps < 5 ? 5 : reps;
        for (int i = 0; i < threads; i++) {
            j[i] = (reader_job){bytes, reps, &ready, &go, 0, 0};
            if (pthread_create(&th[i], NULL, reader, &j[i])) {
                fprintf(stderr, "ceilings: cannot start a thread\n");
                exit(1);
            }
        }
        while (atomic_load(&ready) < threads) _mm_pause();
        atomic_store(&go, 1);
        double worst = 0;
        int failed = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(th[i], NULL);
            failed |= !(j[i].cycles > 0);
            if (j[i].cycles > worst) worst = j[i].cycles;
        }
        if (failed) {
            fprintf(stderr, "ceilings: out of memory\n");
            exit(1);
        }
        tries[k] = (double)bytes / worst;
    }
    qsort(tries, 5, sizeof(double), cmpd);
    return tries[2];
}

/* TSC cycles of a cache line's round trip between two threads (median of 5;
 * each waits with pause, as the library's barrier does) */
static atomic_int ping;
enum { PINGS = 20000 };
static void *pong(void *arg) {
    (void)arg;
    for (int i = 0; i < PINGS; i++) {
        while (atomic_load_explicit(&ping, memory_order_acquire) != 2 * i + 1) _mm_pause();
        atomic_store_explicit(&ping, 2 * i + 2, memory_order_release);
    }
    return NULL;
}
static double round_trip(void) {
    double tries[5];
    for (int k = 0; k < 5; k++) {
        pthread_t th;
        atomic_store(&ping, 0);
        if (pthread_create(&th, NULL, pong, NULL)) {
            fprintf(stderr, "ceilings: cannot start a thread\n");
            exit(1);
        }
        const uint64_t t = __rdtsc();
        for (int i = 0; i < PINGS; i++) {
            atomic_store_explicit(&ping, 2 * i + 1, memory_order_release);
            while (atomic_load_explicit(&ping, memory_order_acquire) != 2 * i + 2) _mm_pause();
        }
        tries[k] = (double)(__rdtsc() - t) / PINGS;
        pthread_join(th, NULL);
    }
    qsort(tries, 5, sizeof(double), cmpd);
    return tries[2];
}

/* TSC cycles of the least a step split over two threads must add: each
 * thread writes its half of an h of H floats (a row of its own a step, as
 * the library's output rows are), says so with a store to a line of its own,
 * waits for the other's word and reads the other's half (median of 5). The
 * flag is the cheaper of the two handshakes measured on the Xeon (the
 * library's barrier is the other), and the h lines cross once. */
enum { HANDOFFS = 20000, HANDOFF_H = 512 };
static struct {
    _Alignas(64) float h[2][HANDOFF_H]; // a row by step parity: a writer is at most a step ahead
    _Alignas(64) atomic_long said[2][8];  // [t][0], each on its own line
    int H;
    volatile float sink;
} handoff_state;
static void handoff_steps(int t) {
    const int H = handoff_state.H, half = H / 2, o = 1 - t;
    float acc = 0;
    for (long s = 1; s <= HANDOFFS; s++) {
        float *row = handoff_state.h[s & 1];
        for (int k = 0; k < half; k++) row[t * half + k] = acc + (float)k;
        atomic_store_explicit(&handoff_state.said[t][0], s, memory_order_release);
        while (atomic_load_explicit(&handoff_state.said[o][0], memory_order_acquire) < s) _mm_pause();
        for (int k = 0; k < half; k++) acc += row[o * half + k] * 1e-9f;
    }
    handoff_state.sink = acc;
}
static void *handoff_other(void *arg) {
    (void)arg;
    handoff_steps(1);
    return NULL;
}
static double handoff(int H) {
    double tries[5];
    handoff_state.H = H;
    for (int k = 0; k < 5; k++) {
        pthread_t th;
        atomic_store(&handoff_state.said[0][0], 0);
        atomic_store(&handoff_state.said[1][0], 0);
        if (pthread_create(&th, NULL, handoff_other, NULL)) {
            fprintf(stderr, "ceilings: cannot start a thread\n");
            exit(1);
        }
        const uint64_t t = __rdtsc();
        handoff_steps(0);
        tries[k] = (double)(__rdtsc() - t) / HANDOFFS;
        pthread_join(th, NULL);
    }
    qsort(tries, 5, sizeof(double), cmpd);
    return tries[2];
}

static double tsc_ghz(void) {
    struct timespec a, b, pause = {0, 200000000};
    clock_gettime(CLOCK_MONOTONIC, &a);
    const uint64_t c = __rdtsc();
    nanosleep(&pause, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    const uint64_t c1 = __rdtsc();
    return (double)(c1 - c) / ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec));
}

/* bench.py's batch-1 cases: LSTM, 4 gates, one direction, equal lengths */
static const struct {
    const char *name;
    int T, I, H, L;
} CASES[] = {{"edge", 200, 64, 128, 1}, {"wide", 100, 512, 512, 2}};

/* how each weight type runs: the sequence of its W_hh step, of its input
 * projection, and the bytes a W_hh weight takes in memory */
typedef struct {
    const char *name;
    int step_seq, proj_seq, bytes;
} weight_type;
enum { N_TYPES = 4 };
static const weight_type TYPES_AVX2[N_TYPES] = {
    {"float32", SEQ_FMA_M, SEQ_FMA, 4},
    {"float16", SEQ_F16, SEQ_FMA, 2}, // W_ih's halves are converted once per GEMM block
    {"int8 (as built: W_ih float16)", SEQ_I8, SEQ_FMA, 1},
    // no such kernel: the bound of any design that keeps h at 16 bits, on AVX2 without VNNI
    {"int8, any 16-bit-h design (vpmaddwd everywhere)", SEQ_I16, SEQ_I16, 1},
};
static const weight_type TYPES_AVX512[N_TYPES] = {
    {"float32", SEQ_FMA_ZM, SEQ_FMA_Z, 4},
    {"float16", SEQ_F16_Z, SEQ_FMA_Z, 2},
    {"int8 (as built: W_ih float16)", SEQ_I8B_Z, SEQ_FMA_Z, 1},
    {"int8, any 16-bit-h design (vpdpwssd everywhere)", SEQ_I16_Z, SEQ_I16_Z, 1},
};
static const weight_type *TYPES = TYPES_AVX2;

static float lcg(unsigned *s) { /* deterministic, in [-0.1, 0.1) */
    *s = *s * 1664525u + 1013904223u;
    return ((float)(*s >> 8) / 16777216.0f - 0.5f) * 0.2f;
}

/* an LSTM model of a case with random weights stored as `type`, or NULL */
static lstm_model *make_model(int c, int type) {
    const lstm_config cfg = {.input_size = CASES[c].I, .hidden_size = CASES[c].H,
                             .num_layers = CASES[c].L, .bias = 1, .weights = type};
    const size_t n = lstm_weight_count(&cfg);
    float *w[16] = {0};
    unsigned seed = 1;
    lstm_model *m = NULL;
    for (size_t i = 0; i < n && i < 16; i++) {
        int64_t shape[2];
        lstm_weight_shape(&cfg, i, shape);
        const int64_t count = shape[0] * (shape[1] ? shape[1] : 1);
        if (!(w[i] = malloc((size_t)count * sizeof(float)))) goto done;
        for (int64_t e = 0; e < count; e++) w[i][e] = lcg(&seed);
    }
    if (n > 16 || lstm_model_create(&cfg, (const float *const *)w, n, &m) != LSTM_OK) m = NULL;
done:
    for (size_t i = 0; i < n && i < 16; i++) free(w[i]);
    return m;
}

/* TSC cycles of the fastest of 3 forward calls on `threads` threads */
static double time_call(lstm_model *m, int c, int threads, const float *x, float *y) {
    const int64_t T = CASES[c].T, I = CASES[c].I, H = CASES[c].H;
    const lstm_forward_args a = {.seq_len = T, .batch = 1, .input = x, .input_stride_t = I,
                                 .input_stride_b = I, .output = y, .output_stride_t = H,
                                 .output_stride_b = H};
    lstm_set_num_threads(threads);
    double best = 1e300;
    for (int r = 0; r < 3; r++) {
        const uint64_t t = __rdtsc();
        if (lstm_model_forward(m, &a, NULL, 0) != LSTM_OK) return -1;
        const double d = (double)(__rdtsc() - t);
        if (d < best) best = d;
    }
    return best;
}

/* the lower bound of TSC cycles for case c, weights w, n threads, from this
 * round's rates; `hand` is the hand-off of the case's h between two threads
 * (handoff), paid once a step on more than one thread where the steps are
 * split; the other way to use 2 threads, forward.c's pipe (one projects
 * while the other steps), takes the longer of the two on one thread each:
 * the bound is the lesser */
static double step_cycles(int c, int w, int n) {
    const double step_macs = 4.0 * CASES[c].H * CASES[c].H, share = step_macs * TYPES[w].bytes / n;
    const double compute = step_macs / (n * mac_rate[TYPES[w].step_seq]);
    const double stream = share / read_rate((size_t)share, n);
    return compute > stream ? compute : stream;
}
static double bound(int c, int w, int n, double hand) {
    double split = 0, pipe = 0;
    for (int l = 0; l < CASES[c].L; l++) {
        const double in = l ? CASES[c].H : CASES[c].I, G = 4.0 * CASES[c].H;
        const double proj = CASES[c].T * in * G / mac_rate[TYPES[w].proj_seq]; // on 1 thread
        split += proj / n + CASES[c].T * (step_cycles(c, w, n) + (n > 1 ? hand : 0));
        const double steps = CASES[c].T * step_cycles(c, w, 1);
        pipe += proj > steps ? proj : steps;
    }
    return n > 1 && pipe < split ? pipe : split;
}

enum { N_CASES = sizeof CASES / sizeof *CASES, MAX_ROUNDS = 99 };

int main(int argc, char **argv) {
    // the library's best kernels, avx2 or avx512, against the ceilings of their instructions
    // (AVX2, FMA and F16C at least, as the avx2 set; AVX-512 and its VNNI where the CPU has them)
    if (lstm_set_isa("auto") != LSTM_OK ||
        (strcmp(lstm_get_isa(), "avx2") != 0 && strcmp(lstm_get_isa(), "avx512") != 0)) {
        fprintf(stderr, "ceilings: needs AVX2, FMA and F16C\n");
        return 2;
    }
    __builtin_cpu_init();
    have[NEEDS_AVX2] = 1;
    have[NEEDS_AVX512] = strcmp(lstm_get_isa(), "avx512") == 0;
    have[NEEDS_VNNI] = have[NEEDS_AVX512] && __builtin_cpu_supports("avx512vnni");
    if (have[NEEDS_AVX512]) {
        TYPES = TYPES_AVX512;
        peak_seq = SEQ_FMA_Z;
    }
    weight_type types[N_TYPES];
    memcpy(types, TYPES, sizeof types);
    if (have[NEEDS_AVX512] && !have[NEEDS_VNNI]) { // int8 runs the avx2 set's step there
        types[2].step_seq = SEQ_I8;
        types[3] = TYPES_AVX2[3];
    }
    TYPES = types;
    char *end = NULL;
    const long rounds = argc > 1 ? strtol(argv[1], &end, 10) : 7;
    if (argc > 2 || (end && *end) || rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "usage: %s [ROUNDS (1-%d, default 7)]\n", argv[0], MAX_ROUNDS);
        return 2;
    }
    const double ghz = tsc_ghz();
    // the library's weight types are TYPES[0..2] (lstm_weight_type's order); TYPES[3] is a bound only
    lstm_model *models[N_CASES][3];
    float *x[N_CASES], *y[N_CASES];
    for (int c = 0; c < N_CASES; c++) {
        const size_t nx = (size_t)CASES[c].T * (size_t)(CASES[c].I > CASES[c].H ? CASES[c].I : CASES[c].H);
        x[c] = malloc(nx * sizeof(float));
        y[c] = malloc(nx * sizeof(float));
        unsigned seed = 7;
        for (size_t i = 0; x[c] && i < nx; i++) x[c][i] = 10 * lcg(&seed);
        for (int w = 0; w < 3; w++)
            if (!x[c] || !y[c] || !(models[c][w] = make_model(c, w))) {
                fprintf(stderr, "ceilings: cannot build the %s model\n", CASES[c].name);
                return 1;
            }
    }
    static double rates[N_SEQ][MAX_ROUNDS], pair[MAX_ROUNDS], pair_gain[MAX_ROUNDS], hops[MAX_ROUNDS], hands[N_CASES][MAX_ROUNDS],
        bounds[N_CASES][N_TYPES][2][MAX_ROUNDS], ours[N_CASES][3][2][MAX_ROUNDS], share[N_CASES][3][2][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++) {
        measure_seq();
        for (int s = 0; s < N_SEQ; s++) rates[s][r] = mac_rate[s];
        pair[r] = fma_pair_rate();
        pair_gain[r] = 2 * pair[r] / mac_rate[peak_seq];
        hops[r] = round_trip() / 2;
        for (int c = 0; c < N_CASES; c++) hands[c][r] = handoff(CASES[c].H);
        for (int c = 0; c < N_CASES; c++)
            for (int w = 0; w < N_TYPES; w++)
                for (int n = 1; n <= 2; n++) {
                    bounds[c][w][n - 1][r] = bound(c, w, n, hands[c][r]);
                    if (w >= 3) continue;
                    const double t = time_call(models[c][w], c, n, x[c], y[c]);
                    if (t <= 0) {
                        fprintf(stderr, "ceilings: the %s call failed\n", CASES[c].name);
                        return 1;
                    }
                    ours[c][w][n - 1][r] = t;
                    share[c][w][n - 1][r] = bounds[c][w][n - 1][r] / t;
                }
    }
#define MEDIAN(a) (qsort((a), (size_t)rounds, sizeof(double), cmpd), (a)[rounds / 2])
    printf("kernels %s; TSC %.3f GHz; %ld rounds, medians [range].\n", lstm_get_isa(), ghz, rounds);
    printf("\nInstruction ceilings (multiply-adds per TSC cycle, one core, L1 data):\n");
    for (int s = 0; s < N_SEQ; s++) {
        if (!have[SEQ[s].needs]) continue;
        const double med = MEDIAN(rates[s]);
        printf("  %6.1f [%.1f-%.1f]  %s\n", med, rates[s][0], rates[s][rounds - 1], SEQ[s].what);
    }
    const double pr = MEDIAN(pair), pg = MEDIAN(pair_gain);
    printf("  %6.1f [%.1f-%.1f]  the FMA peak of each of two threads at once (the slower): together\n"
           "                     %.2fx one thread [%.2f-%.2f], the most a second thread adds to a compute-bound call\n",
           pr, pair[0], pair[rounds - 1], pg, pair_gain[0], pair_gain[rounds - 1]);
    const double hop = MEDIAN(hops);
    printf("\nA cache line between two threads: %.0f TSC cycles one way [%.0f-%.0f] (half a round trip)\n",
           hop, hops[0], hops[rounds - 1]);
    printf("A step's hand-off of h between two threads (each writes its half, a flag, reads the other's):\n");
    for (int c = 0; c < N_CASES; c++) {
        const double hd = MEDIAN(hands[c]);
        printf("  hidden %4d: %.0f TSC cycles [%.0f-%.0f], %.1f us over %s's %d steps a layer\n", CASES[c].H, hd,
               hands[c][0], hands[c][rounds - 1], hd * CASES[c].T / ghz / 1e3, CASES[c].name, CASES[c].T);
    }
    printf("\nRead bandwidth per thread (bytes per TSC cycle; each thread reads its own buffer):\n");
    printf("  %10s %9s %9s\n", "footprint", "1 thread", "2 threads");
    static const size_t SIZES[] = {32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20};
    for (size_t i = 0; i < sizeof SIZES / sizeof *SIZES; i++)
        printf("  %7zu KB %9.1f %9.1f\n", SIZES[i] >> 10, read_rate(SIZES[i], 1), read_rate(SIZES[i], 2));
    printf("\nLower bound per call (projection at its ceiling + each step's W_hh product at the slower of its\n"
           "instruction ceiling and the read bandwidth of its footprint, split perfectly, + on 2 threads the\n"
           "hand-off of h a step, or where less, a pipe's: the longer of projection and steps on a thread\n"
           "each; nothing else) and this library's call (fastest of 3 per round), in\n"
           "microseconds; share = bound / ours per round.\n");
    printf("  %-5s %-50s %3s %9s %9s %15s\n", "case", "weights", "thr", "bound", "ours", "share [range]");
    for (int c = 0; c < N_CASES; c++)
        for (int w = 0; w < N_TYPES; w++)
            for (int n = 0; n < 2; n++) {
                const double b = MEDIAN(bounds[c][w][n]) / ghz / 1e3;
                if (w >= 3) {
                    printf("  %-5s %-50s %3d %9.1f %9s %15s\n", CASES[c].name, TYPES[w].name, n + 1, b, "-", "-");
                    continue;
                }
                const double o = MEDIAN(ours[c][w][n]) / ghz / 1e3, sh = MEDIAN(share[c][w][n]);
                printf("  %-5s %-50s %3d %9.1f %9.1f %5.0f%% [%.0f-%.0f]\n", CASES[c].name, TYPES[w].name, n + 1,
                       b, o, 100 * sh, 100 * share[c][w][n][0], 100 * share[c][w][n][rounds - 1]);
            }
    for (int c = 0; c < N_CASES; c++) {
        for (int w = 0; w < 3; w++) lstm_model_free(models[c][w]);
        free(x[c]);
        free(y[c]);
    }
    return 0;
}
#endif
