/*
 * dispatch.c - picks the kernels for this CPU once, at first use: on x86-64
 * avx2 where the CPU has AVX2+FMA, on aarch64 neon (always there, so chosen
 * at build time), else scalar. LSTM_INFER_ISA=scalar|avx2|neon overrides the
 * choice (tests use it to cover every path); asking for an ISA the CPU
 * lacks falls back to the best it has.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lstm_infer.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

static const lstm_kernels *active;

#if defined(__x86_64__)
static int cpu_has_avx2(void) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_cpu_init();
    unsigned a, b, c, d; // F16C (the half weights' conversions): CPUID 1, ECX bit 29
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
#else
    return 0;
#endif
}
#endif

static const lstm_kernels *best(void) {
#if defined(__x86_64__)
    if (cpu_has_avx2()) return &lstm_kernels_avx2;
#elif defined(__aarch64__)
    return &lstm_kernels_neon;
#endif
    return &lstm_kernels_scalar;
}

static const lstm_kernels *by_name(const char *name) {
    if (strcmp(name, "scalar") == 0) return &lstm_kernels_scalar;
#if defined(__x86_64__)
    if (strcmp(name, "avx2") == 0 && cpu_has_avx2()) return &lstm_kernels_avx2;
#elif defined(__aarch64__)
    if (strcmp(name, "neon") == 0) return &lstm_kernels_neon;
#endif
    return NULL;
}

const lstm_kernels *lstm_active_kernels(void) {
    const lstm_kernels *k = __atomic_load_n(&active, __ATOMIC_ACQUIRE);
    if (k) return k;
    const char *env = getenv("LSTM_INFER_ISA");
    k = (env && *env) ? by_name(env) : NULL;
    if (!k) k = best();
    __atomic_store_n(&active, k, __ATOMIC_RELEASE);
    return k;
}

const char *lstm_get_isa(void) { return lstm_active_kernels()->name; }

lstm_status lstm_set_isa(const char *name) {
    if (!name) return LSTM_ERR_INVALID_ARGUMENT;
    const lstm_kernels *k = strcmp(name, "auto") == 0 ? best() : by_name(name);
    if (!k) return LSTM_ERR_UNKNOWN_ISA;
    __atomic_store_n(&active, k, __ATOMIC_RELEASE);
    return LSTM_OK;
}
