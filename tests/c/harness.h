/*
 * harness.h - what every C test shares: CHECK (counts checks and failures,
 * from any thread), deterministic random numbers, and the test's own CPU
 * probe (not dispatch.c's, so that the tests can check that dispatch
 * refuses avx2 on a CPU without it instead of trusting dispatch).
 */
#ifndef LSTM_TEST_HARNESS_H
#define LSTM_TEST_HARNESS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <string.h>

static atomic_int failures;
static atomic_int checks;

#define CHECK(cond, ...)                                            \
    do {                                                            \
        atomic_fetch_add(&checks, 1);                               \
        if (!(cond)) {                                              \
            atomic_fetch_add(&failures, 1);                         \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
            fprintf(stderr, __VA_ARGS__);                           \
            fprintf(stderr, "\n");                                  \
        }                                                           \
    } while (0)

/* deterministic xorshift random numbers (one sequence, for the main thread) */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t rnd_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static inline float rnd_f(float lo, float hi) {
    return lo + (hi - lo) * (float)((rnd_u64() >> 11) * (1.0 / 9007199254740992.0));
}
static inline int64_t rnd_i(int64_t lo, int64_t hi) { /* inclusive */
    return lo + (int64_t)(rnd_u64() % (uint64_t)(hi - lo + 1));
}

/* The avx2 kernel set needs AVX2, FMA and F16C (the half weights); clang 14's
   __builtin_cpu_supports does not know "f16c", so CPUID 1 ECX bit 29 is read here. */
static inline int cpu_has_avx2(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    unsigned a, b, c, d;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
#else
    return 0;
#endif
}

/* The avx512 kernel set needs AVX-512 F, VL, BW and DQ (and the OS saving their state,
   which __builtin_cpu_supports checks) besides what avx2 needs. */
static inline int cpu_has_avx512(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}

/* `name` (LSTM_INFER_ISA) naming one of isas[0 .. *n) keeps only that one (aarch64.mk tests
   each set in a run of its own under emulation); NULL or another name keeps them all */
static inline void keep_only_isa(const char *name, const char **isas, int *n) {
    for (int i = 0; name && i < *n; i++)
        if (strcmp(name, isas[i]) == 0) {
            isas[0] = isas[i], *n = 1;
            return;
        }
}

/* LSTM_TEST_BEST_SIMD set (the tsan target): only scalar and the best SIMD set, the last of
   isas[0 .. *n): the threads' work and its partition are the same for every set, and a
   kernel touches only its own rows and tiles (test_kernels checks that under ASan), so a
   narrower set under ThreadSanitizer adds time, not coverage */
static inline void keep_best_simd(const char **isas, int *n) {
    if (getenv("LSTM_TEST_BEST_SIMD") && *n > 2) isas[1] = isas[*n - 1], *n = 2;
}

#endif /* LSTM_TEST_HARNESS_H */
