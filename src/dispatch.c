/*
 * dispatch.c - picks the kernels for this CPU once, at first use: on x86-64
 * avx512 where the CPU and the OS have AVX-512 (F, VL, BW, DQ) besides what
 * avx2 needs, else avx2 where the CPU has AVX2+FMA+F16C; on aarch64 neon
 * (always there, so chosen at build time); else scalar.
 * LSTM_INFER_ISA=scalar|avx2|avx512|neon overrides the
 * choice (tests use it to cover every path); asking for an ISA the CPU
 * lacks falls back to the best it has. It also reads the CPU's cache sizes,
 * from which the kernels choose their cache blocks.
 */
#include <pthread.h>
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

// libgcc's and compiler-rt's checks include the OS's saving of the 512-bit state (XCR0)
static int cpu_has_avx512(void) {
#if defined(__GNUC__) || defined(__clang__)
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}
#endif

#define DEFAULT_L1D (32 * 1024)
#define DEFAULT_L2 (256 * 1024)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// the data or unified cache of `level` from CPUID's deterministic cache leaf (4 or 0x8000001D), or 0
static int64_t cpuid_cache(unsigned leaf, int level) {
    unsigned a, b, c, d;
    if ((unsigned)__get_cpuid_max(leaf & 0x80000000u, NULL) < leaf) return 0; // int in clang's cpuid.h
    for (unsigned i = 0; i < 16; i++) {
        __cpuid_count(leaf, i, a, b, c, d);
        const unsigned type = a & 0x1f; // 1 data, 2 instruction, 3 unified, 0 no more
        if (!type) break;
        if (type == 2 || (int)((a >> 5) & 7) != level) continue;
        const int64_t ways = ((b >> 22) & 0x3ff) + 1, parts = ((b >> 12) & 0x3ff) + 1,
                      line = (b & 0xfff) + 1, sets = (int64_t)c + 1;
        return ways * parts * line * sets;
    }
    return 0;
}
#endif

static lstm_caches caches;

static void read_caches(void) {
    int64_t l1 = 0, l2 = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    unsigned a, b, c, d;
    __cpuid(0, a, b, c, d);
    const int amd = b == 0x68747541u; // "Auth"enticAMD (Hygon shares the AMD leaf)
    const unsigned leaf = amd || b == 0x6f677948u ? 0x8000001Du : 4u;
    l1 = cpuid_cache(leaf, 1);
    l2 = cpuid_cache(leaf, 2);
#endif
    // a size out of any real range (a hypervisor's odd CPUID) is not trusted
    caches.l1d = l1 >= 16 * 1024 && l1 <= 1024 * 1024 ? l1 : DEFAULT_L1D;
    caches.l2 = l2 >= 128 * 1024 && l2 <= 64 * 1024 * 1024 ? l2 : DEFAULT_L2;
}

const lstm_caches *lstm_cache_sizes(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, read_caches);
    return &caches;
}

static const lstm_kernels *best(void) {
#if defined(__x86_64__)
    if (cpu_has_avx512()) return &lstm_kernels_avx512;
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
    if (strcmp(name, "avx512") == 0 && cpu_has_avx512()) return &lstm_kernels_avx512;
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
