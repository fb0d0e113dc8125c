/*
 * pool.c - persistent worker threads. Workers spin briefly for the next job
 * (a streaming caller issues calls back to back) and then sleep on a condition
 * variable so an idle library costs nothing.
 *
 * A job has seats; the caller waits a few microseconds for workers to take
 * them, then closes the job and runs with whoever came. A worker that wakes
 * late (measured on a shared VM: 10-20 us typically, milliseconds at the tail,
 * and sometimes on the caller's own CPU) therefore never holds up a job whose
 * work is split statically between threads.
 *
 * Locks. busy is held by a call that uses the workers and by a resize; a call
 * only try-locks it. config is held only while workers are started or stopped
 * (never while waiting for busy), so fork, which takes it, never waits for a
 * call. The size is an atomic: reading it takes no lock (Python asks for it
 * with the GIL held).
 *
 * fork. The child has only the forking thread: none of the workers, and no
 * call that another thread was running. pthread_atfork handlers make fork wait
 * for a start or stop of workers in progress, and give the child a fresh pool
 * (locks, condition variable, counters) of the configured size whose workers
 * start at its first call that wants them.
 */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* pause is ~27 ns on the CPUs measured: ~0.5 ms of spinning before sleeping,
   ~3 us before a barrier starts yielding (a team mate may share our CPU) */
#define SPIN_BEFORE_SLEEP 20000
#define SPIN_BEFORE_YIELD 100
#define MAX_THREADS 256
/*
 * More runnable threads than CPUs (two processes that each use all cores:
 * gunicorn or multiprocessing workers) make threads that wait for each other
 * every step wait for the scheduler instead: measured on a 2-CPU VM, two
 * processes running 2-thread edge-like calls took 8 ms a call, against 0.39
 * ms alone and 0.55 ms with 1 thread each. The waits say so: a waiting
 * thread's looks at the clock (every 16 spins, ~1 us, and around each yield)
 * find gaps of over LONG_GAP_NS, where it was off its CPU: a yield that ran
 * another thread (a yield with nothing else to run takes under 0.5 us), or
 * preemption. When the job's threads' gaps add up to a quarter of its time
 * and to CROWDED_GAPS_NS, in two jobs in a row, calls run on their own
 * thread for a while (on a quiet machine, kernel threads take 30-80 us of a
 * waiting thread's CPU now and then, a pipe's projecting thread waits for
 * half of a short call, and one job in a few hundred loses a millisecond or
 * more): CROWDED_MIN_NS, doubled while each retry finds it so, up to
 * CROWDED_MAX_NS. The same two processes then take 0.53-0.55 ms a call;
 * alone, calls are as before. LSTM_INFER_DYNAMIC=0 keeps every call on its
 * threads, as OMP_DYNAMIC=false does.
 */
#define LONG_GAP_NS 2000
#define CROWDED_GAPS_NS 500000
#define CROWDED_MIN_NS 100000000LL
#define CROWDED_MAX_NS 10000000000LL

static struct {
    pthread_mutex_t busy;      /* held by the call that uses the workers, and by resizes */
    pthread_mutex_t config;    /* held while workers start or stop (busy held); fork takes it */
    pthread_mutex_t sleep_mu;  /* with wake: idle workers sleep here */
    pthread_cond_t wake;
    atomic_uint generation;    /* bumped once per job */
    _Atomic uint64_t seats;    /* generation << 32 | seats still open in that job */
    atomic_uint go;            /* generation whose team is fixed: joined workers start */
    atomic_int remaining;      /* workers still running the current job */
    atomic_int sleepers;
    atomic_int quit;
    lstm_job_fn fn;
    void *arg;
    int n;                     /* threads asked for by the current job */
    int nth;                   /* threads that run it: the caller and those that joined */
    atomic_int size;           /* threads in all, caller included; 0 = not yet chosen */
    int started;               /* workers running (busy and config held to change) */
    atomic_uint start_generation; /* generation when the workers were started */
    pthread_t threads[MAX_THREADS];
} pool = {
    .busy = PTHREAD_MUTEX_INITIALIZER,
    .config = PTHREAD_MUTEX_INITIALIZER,
    .sleep_mu = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
};

static struct {
    _Atomic int64_t gaps_ns;    /* the current job's threads' time off their CPUs in waits */
    _Atomic int64_t until_ns;   /* calls run alone until then (CLOCK_MONOTONIC) */
    _Atomic int64_t window_ns;  /* the last such pause, 0 after a job that ran clear */
    int strikes;                /* crowded jobs in a row (busy held) */
} crowd;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Whether LSTM_INFER_DYNAMIC=0 (read when it matters: only while crowded) */
static int dynamic_off(void) {
    const char *e = getenv("LSTM_INFER_DYNAMIC");
    return e && strcmp(e, "0") == 0;
}

/* One wait of a job's thread: spins, then yields; its gaps count against the job. */
typedef struct {
    int spins;
    int64_t seen; /* the clock at the last look, 0 before the first */
} waiter;

static void wait_start(waiter *w) {
    w->spins = 0;
    w->seen = 0;
}

static void wait_pause(waiter *w) {
    if (++w->spins < SPIN_BEFORE_YIELD) CPU_RELAX();
    else sched_yield(); /* the threads we wait for may need our CPU */
    if (w->spins >= SPIN_BEFORE_YIELD || w->spins % 16 == 0) {
        const int64_t t = now_ns();
        if (w->seen && t - w->seen > LONG_GAP_NS)
            atomic_fetch_add_explicit(&crowd.gaps_ns, t - w->seen, memory_order_relaxed);
        w->seen = t;
    }
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static int fork_handlers; /* 1 once registered: without them no worker starts */

unsigned lstm_denormals_off(void) {
#if defined(__x86_64__) || defined(__i386__)
    const unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040); /* FTZ | DAZ: denormals would cost ~100 cycles each */
    return old;
#else
    return 0;
#endif
}

void lstm_denormals_restore(unsigned mode) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(mode);
#else
    (void)mode;
#endif
}

/* Takes a seat in job `gen`: returns the thread's id in the job, or 0 if too late. */
static int join_job(unsigned gen) {
    uint64_t w = atomic_load_explicit(&pool.seats, memory_order_acquire);
    while ((unsigned)(w >> 32) == gen && (uint32_t)w > 0)
        if (atomic_compare_exchange_weak_explicit(&pool.seats, &w, w - 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return pool.n - (int)(uint32_t)w;
    return 0;
}

static void *worker_main(void *p) {
    (void)p;
    /* the generation at creation, not now: a job published before this thread
       ran must not be missed (busy is held while workers start, so none is lost) */
    unsigned seen = atomic_load(&pool.start_generation);
    lstm_denormals_off();
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool.generation, memory_order_acquire) == seen) {
            if (++spins < SPIN_BEFORE_SLEEP) { CPU_RELAX(); continue; }
            pthread_mutex_lock(&pool.sleep_mu);
            atomic_fetch_add(&pool.sleepers, 1);
            while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.wake, &pool.sleep_mu);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.sleep_mu);
        }
        seen = atomic_load_explicit(&pool.generation, memory_order_acquire);
        if (atomic_load(&pool.quit)) return NULL;
        const int tid = join_job(seen);
        if (!tid) continue; /* the job started without us */
        while (atomic_load_explicit(&pool.go, memory_order_acquire) != seen) CPU_RELAX();
        pool.fn(pool.arg, tid, pool.nth);
        atomic_fetch_sub_explicit(&pool.remaining, 1, memory_order_release);
    }
}

static unsigned publish(void) {
    const unsigned gen = atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release) + 1;
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.sleep_mu);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.sleep_mu);
    }
    return gen;
}

static int usable_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
    return 1;
}

static int default_size(void) {
    const char *env = getenv("LSTM_INFER_NUM_THREADS");
    if (env && *env) {
        const int n = atoi(env);
        if (n > 0) return n;
    }
    return usable_cores();
}

static int clamp_size(int n) { return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : n; }

/* ------------------------------------------------------------------ fork */

/* Waits for a start or stop of workers in progress: never for a call. */
static void fork_prepare(void) { pthread_mutex_lock(&pool.config); }

static void fork_parent(void) { pthread_mutex_unlock(&pool.config); }

/*
 * Only this thread exists in the child. The workers, the call another thread
 * may have been running (with busy held) and any worker asleep on wake are
 * gone, so the locks and the condition variable are made anew rather than
 * unlocked, and the pool is empty; the size stays.
 */
static void fork_child(void) {
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.config, NULL);
    pthread_mutex_init(&pool.sleep_mu, NULL);
    pthread_cond_init(&pool.wake, NULL);
    atomic_store(&pool.generation, 0);
    atomic_store(&pool.seats, 0);
    atomic_store(&pool.go, 0);
    atomic_store(&pool.remaining, 0);
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.quit, 0);
    atomic_store(&pool.start_generation, 0);
    pool.started = 0;
}

static void register_fork_handlers(void) {
    fork_handlers = pthread_atfork(fork_prepare, fork_parent, fork_child) == 0;
}

/* ------------------------------------------------------------------ workers */

/* Starts workers up to `workers`; busy held. Fewer start if threads run out. */
static void start_workers(int workers) {
    if (pool.started >= workers) return;
    /* before the first worker, and outside config: glibc's fork holds the lock that
       pthread_atfork takes while it runs fork_prepare, which waits for config */
    pthread_once(&fork_once, register_fork_handlers);
    pthread_mutex_lock(&pool.config);
    atomic_store(&pool.start_generation, atomic_load(&pool.generation));
    /* without the handlers a forked child would hang: no workers then */
    while (fork_handlers && pool.started < workers &&
           pthread_create(&pool.threads[pool.started], NULL, worker_main, NULL) == 0)
        pool.started++;
    if (pool.started < workers) atomic_store(&pool.size, pool.started + 1); /* still correct */
    pthread_mutex_unlock(&pool.config);
}

/* Joins every worker; busy held, so they are idle. */
static void stop_workers(void) {
    pthread_mutex_lock(&pool.config);
    atomic_store(&pool.quit, 1);
    publish();
    for (int i = 0; i < pool.started; i++) pthread_join(pool.threads[i], NULL);
    atomic_store(&pool.quit, 0);
    pool.started = 0;
    pthread_mutex_unlock(&pool.config);
}

void lstm_pool_set_size(int n) {
    n = clamp_size(n);
    pthread_mutex_lock(&pool.busy); /* waits for a running call, holding nothing else */
    if (pool.started > n - 1) stop_workers();
    atomic_store(&pool.size, n);
    start_workers(n - 1);
    pthread_mutex_unlock(&pool.busy);
}

int lstm_pool_size(void) {
    int n = atomic_load_explicit(&pool.size, memory_order_acquire);
    if (n == 0) { /* first use: choose, without a lock; a concurrent resize wins */
        const int chosen = clamp_size(default_size());
        n = atomic_compare_exchange_strong(&pool.size, &n, chosen) ? chosen : n;
    }
    return n;
}

int lstm_pool_begin(int wanted) {
    if (wanted <= 1) return 1;
    if (lstm_pool_size() <= 1) return 1;
    if (now_ns() < atomic_load_explicit(&crowd.until_ns, memory_order_relaxed) && !dynamic_off())
        return 1; /* crowded */
    if (pthread_mutex_trylock(&pool.busy) != 0) return 1;
    /* busy held: the size is settled; workers start here on first use and after fork */
    start_workers(atomic_load(&pool.size) - 1);
    const int avail = pool.started + 1;
    const int n = wanted < avail ? wanted : avail;
    if (n <= 1) pthread_mutex_unlock(&pool.busy);
    return n;
}

void lstm_pool_forget_crowding(void) {
    atomic_store(&crowd.until_ns, 0);
    atomic_store(&crowd.window_ns, 0);
}

void lstm_pool_run(int n, int64_t join_wait_ns, lstm_team_fn team, lstm_job_fn fn, void *arg) {
    if (n <= 1) {
        team(arg, 1);
        fn(arg, 0, 1);
        return;
    }
    pool.fn = fn;
    pool.arg = arg;
    pool.n = n;
    const unsigned gen = atomic_load(&pool.generation) + 1; /* busy is held: nobody else publishes */
    atomic_store_explicit(&pool.seats, (uint64_t)gen << 32 | (uint32_t)(n - 1), memory_order_release);
    publish();
    const int64_t t0 = now_ns();
    for (int spins = 1; atomic_load_explicit(&pool.seats, memory_order_acquire) & 0xffffffffu; spins++) {
        CPU_RELAX();
        if (spins % 32 == 0 && now_ns() - t0 > join_wait_ns) break;
    }
    const uint64_t left = atomic_exchange(&pool.seats, (uint64_t)gen << 32);
    const int nth = n - (int)(uint32_t)left;
    pool.nth = nth;
    atomic_store(&pool.remaining, nth - 1);
    team(arg, nth);
    atomic_store_explicit(&crowd.gaps_ns, 0, memory_order_relaxed); /* (busy held: our job's) */
    const int64_t started = now_ns();
    atomic_store_explicit(&pool.go, gen, memory_order_release);
    fn(arg, 0, nth);
    waiter w;
    wait_start(&w);
    while (atomic_load_explicit(&pool.remaining, memory_order_acquire) > 0) wait_pause(&w);
    const int64_t end = now_ns();
    const int64_t gaps = atomic_load_explicit(&crowd.gaps_ns, memory_order_relaxed);
    if (gaps * 4 <= end - started || gaps <= CROWDED_GAPS_NS) { /* ran clear */
        crowd.strikes = 0;
        atomic_store_explicit(&crowd.window_ns, 0, memory_order_relaxed);
    } else if (++crowd.strikes >= 2) {
        crowd.strikes = 0;
        const int64_t w = atomic_load_explicit(&crowd.window_ns, memory_order_relaxed);
        const int64_t next = w < CROWDED_MIN_NS ? CROWDED_MIN_NS : w * 2 > CROWDED_MAX_NS ? CROWDED_MAX_NS : w * 2;
        atomic_store_explicit(&crowd.window_ns, next, memory_order_relaxed);
        atomic_store_explicit(&crowd.until_ns, end + next, memory_order_relaxed);
    }
    pthread_mutex_unlock(&pool.busy);
}

void lstm_barrier_init(lstm_barrier *b, int n) {
    atomic_init(&b->count, 0);
    atomic_init(&b->phase, 0);
    b->n = n;
}

void lstm_wait_at_least(_Atomic int64_t *v, int64_t at_least) {
    waiter w;
    wait_start(&w);
    while (atomic_load_explicit(v, memory_order_acquire) < at_least) wait_pause(&w);
}

void lstm_barrier_wait(lstm_barrier *b) {
    if (b->n <= 1) return;
    const int phase = atomic_load_explicit(&b->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->phase, 1, memory_order_release);
        return;
    }
    waiter w;
    wait_start(&w);
    while (atomic_load_explicit(&b->phase, memory_order_acquire) == phase) wait_pause(&w);
}
