/*
 * test_pool.c - the thread pool (src/pool.c) alone, without the model.
 *
 *   (a) the first size comes from LSTM_INFER_NUM_THREADS;
 *   (b) many jobs at every size: each seat runs once, the caller as tid 0,
 *       workers on their own threads, the team callback once with the team;
 *       callers on several threads at once while another thread resizes;
 *   (c) lstm_pool_size never waits: not while a resize waits for a long job;
 *   (d) fork: from an idle pool with sleeping workers, during a job another
 *       thread runs, during resizes, and again in the child. A child must get
 *       a working pool of the configured size (its workers really run) and
 *       the parent must not notice. Children run under a timeout.
 *   (e) crowded CPUs: a job whose barriers wait for threads that busy
 *       threads keep off the CPUs makes the next calls run alone, unless
 *       LSTM_INFER_DYNAMIC=0; once the pause is over, jobs get their team
 *       again. (The other tests run with LSTM_INFER_DYNAMIC=0: they count
 *       teams, on a machine that may be busy.)
 *
 * Exits non-zero on any failure. Built by tests/c/Makefile (also under
 * ASan+UBSan and TSan).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"
#include "harness.h"


/* TSan cannot follow a child forked from a multi-threaded process (it turns itself off
   there and aborts when the child starts a thread: "dup thread with used id"). Under
   TSan the children only check what needs no thread; the -O2 and ASan builds run them
   in full, and TSan still watches the parent across every fork. */
#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif
#ifndef TSAN
#define TSAN 0
#endif

#define MAXT 8
#define LONG_WAIT_NS 2000000000LL /* a job waits up to 2 s for its workers: all come */
#ifndef CHILD_TIMEOUT_S
#define CHILD_TIMEOUT_S 60        /* a working child needs well under 1 s */
#endif

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int count_threads(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

// ------------------------------------------------------------------ one job

typedef struct {
    int team_calls, team_nth; /* written by the caller before the workers start */
    atomic_int hits[MAXT];
    pthread_t who[MAXT];
    atomic_int bad_nth;
    atomic_int inside;        /* threads that entered fn */
    atomic_int *hold;         /* while *hold != 0, every thread of the job waits in fn */
} job;

static void team_fn(void *arg, int nth) {
    job *j = arg;
    j->team_calls++;
    j->team_nth = nth;
}

static void job_fn(void *arg, int tid, int nth) {
    job *j = arg;
    if (nth != j->team_nth || tid < 0 || tid >= nth || tid >= MAXT) {
        atomic_fetch_add(&j->bad_nth, 1);
        return;
    }
    j->who[tid] = pthread_self();
    atomic_fetch_add(&j->hits[tid], 1);
    atomic_fetch_add(&j->inside, 1);
    if (j->hold)
        while (atomic_load(j->hold)) sleep_ms(1);
}

/* Runs one job wanting `wanted` threads; checks every seat ran once, on the
   right threads; returns how many threads ran it. */
static int run_job(int wanted, int64_t wait_ns, atomic_int *hold, job *j) {
    memset(j, 0, sizeof *j);
    j->hold = hold;
    const int n = lstm_pool_begin(wanted);
    CHECK(n >= 1 && n <= (wanted < 1 ? 1 : wanted), "begin(%d) = %d", wanted, n);
    lstm_pool_run(n, wait_ns, team_fn, job_fn, j);
    const int nth = j->team_nth;
    CHECK(j->team_calls == 1, "team called %d times", j->team_calls);
    CHECK(nth >= 1 && nth <= n, "team of %d for %d asked", nth, n);
    CHECK(atomic_load(&j->bad_nth) == 0, "fn saw a wrong tid or nth");
    for (int t = 0; t < MAXT; t++)
        CHECK(atomic_load(&j->hits[t]) == (t < nth), "tid %d ran %d times (team %d)", t,
              atomic_load(&j->hits[t]), nth);
    CHECK(pthread_equal(j->who[0], pthread_self()), "tid 0 is not the caller");
    for (int t = 1; t < nth && t < MAXT; t++) {
        CHECK(!pthread_equal(j->who[t], pthread_self()), "tid %d ran on the caller", t);
        for (int u = 1; u < t; u++)
            CHECK(!pthread_equal(j->who[t], j->who[u]), "tids %d and %d on one thread", u, t);
    }
    return nth;
}

// ------------------------------------------------------------------ helpers for threads

typedef struct {
    int wanted;
    atomic_int *hold;
    job j;
    int nth;
} job_thread_arg;

static void *job_thread(void *p) {
    job_thread_arg *a = p;
    a->nth = run_job(a->wanted, LONG_WAIT_NS, a->hold, &a->j);
    return NULL;
}

/* Starts a job on its own thread that stays inside fn until *hold is 0. */
static void start_long_job(pthread_t *th, job_thread_arg *a, int wanted, atomic_int *hold) {
    memset(a, 0, sizeof *a);
    a->wanted = wanted;
    a->hold = hold;
    atomic_store(hold, 1);
    pthread_create(th, NULL, job_thread, a);
    /* the caller (tid 0) is inside: the pool is held */
    while (atomic_load(&a->j.inside) < 1) sleep_ms(1);
}

typedef struct {
    int n;
    atomic_int done;
    int result;
} size_arg;

static void *set_size_thread(void *p) {
    size_arg *a = p;
    lstm_pool_set_size(a->n);
    atomic_store(&a->done, 1);
    return NULL;
}

static void *get_size_thread(void *p) {
    size_arg *a = p;
    a->result = lstm_pool_size();
    atomic_store(&a->done, 1);
    return NULL;
}

static int wait_flag(atomic_int *f, double seconds) {
    const double end = now_s() + seconds;
    while (!atomic_load(f) && now_s() < end) sleep_ms(1);
    return atomic_load(f);
}

/* Runs fn in a forked child; fails if it fails, crashes or is not done in time. */
static void in_child(const char *what, void (*fn)(void *), void *arg) {
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid < 0) {
        CHECK(0, "%s: fork failed", what);
        return;
    }
    if (pid == 0) {
        alarm(CHILD_TIMEOUT_S + 5); /* backstop: the parent kills first */
        atomic_store(&failures, 0);
        fn(arg);
        fflush(stderr);
        _exit(atomic_load(&failures) ? 1 : 0);
    }
    const double end = now_s() + CHILD_TIMEOUT_S;
    int status = 0;
    pid_t got;
    while ((got = waitpid(pid, &status, WNOHANG)) == 0 && now_s() < end) sleep_ms(2);
    if (got == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        CHECK(0, "%s: child hung (killed after %d s)", what, CHILD_TIMEOUT_S);
        return;
    }
    CHECK(got == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "%s: child failed (status 0x%x)", what, status);
}

// ------------------------------------------------------------------ (a), (b)

static void test_first_size(void) {
    /* before anything else touches the pool: the size is chosen on first use */
    setenv("LSTM_INFER_NUM_THREADS", "3", 1);
    CHECK(lstm_pool_size() == 3, "first size %d, want 3 from the environment", lstm_pool_size());
    unsetenv("LSTM_INFER_NUM_THREADS");
}

static void test_jobs(void) {
    for (int size = 1; size <= 4; size++) {
        lstm_pool_set_size(size);
        CHECK(lstm_pool_size() == size, "size %d after set_size(%d)", lstm_pool_size(), size);
        job j;
        for (int wanted = 1; wanted <= size + 1; wanted++) {
            const int want = wanted < size ? wanted : size;
            CHECK(run_job(wanted, LONG_WAIT_NS, NULL, &j) == want, "size %d wanted %d: team %d",
                  size, wanted, j.team_nth);
        }
        for (int i = 0; i < 2000; i++) run_job(1 + i % (size + 1), 20000, NULL, &j);
        sleep_ms(5); /* the workers go to sleep: a job must wake them */
        CHECK(run_job(size, LONG_WAIT_NS, NULL, &j) == size, "after sleeping: team %d of %d",
              j.team_nth, size);
    }
    lstm_pool_set_size(0);
    CHECK(lstm_pool_size() == 1, "set_size(0) -> %d", lstm_pool_size());
    lstm_pool_set_size(100000);
    CHECK(lstm_pool_size() == 256, "set_size(100000) -> %d", lstm_pool_size());
    lstm_pool_set_size(2);
}

#define CALLERS 3
static atomic_int stop_resizing;

static void *caller_thread(void *p) {
    (void)p;
    job j;
    for (int i = 0; i < 1500; i++) run_job(1 + i % 3, 20000, NULL, &j);
    return NULL;
}

static void *resizer_thread(void *p) {
    (void)p;
    for (int i = 0; !atomic_load(&stop_resizing); i++) {
        lstm_pool_set_size(1 + i % 3);
        const int s = lstm_pool_size();
        CHECK(s >= 1 && s <= 3, "size %d while resizing", s);
    }
    return NULL;
}

static void test_concurrent_callers_and_resizes(void) {
    pthread_t callers[CALLERS], resizer;
    atomic_store(&stop_resizing, 0);
    pthread_create(&resizer, NULL, resizer_thread, NULL);
    for (int i = 0; i < CALLERS; i++) pthread_create(&callers[i], NULL, caller_thread, NULL);
    for (int i = 0; i < CALLERS; i++) pthread_join(callers[i], NULL);
    atomic_store(&stop_resizing, 1);
    pthread_join(resizer, NULL);
    lstm_pool_set_size(2);
}

// ------------------------------------------------------------------ (c)

static void test_size_never_waits(void) {
    lstm_pool_set_size(2);
    atomic_int hold;
    pthread_t th, setter, getter;
    job_thread_arg a;
    start_long_job(&th, &a, 2, &hold);
    size_arg set = {.n = 3}, get = {0};
    pthread_create(&setter, NULL, set_size_thread, &set);
    sleep_ms(20); /* the setter now waits for the job */
    pthread_create(&getter, NULL, get_size_thread, &get);
    CHECK(wait_flag(&get.done, 2.0), "lstm_pool_size waited for a resize that waits for a job");
    CHECK(!atomic_load(&set.done), "set_size did not wait for the running job");
    atomic_store(&hold, 0);
    pthread_join(th, NULL);
    pthread_join(setter, NULL);
    pthread_join(getter, NULL);
    CHECK(get.result == 2, "size %d during the resize, want the old 2", get.result);
    CHECK(a.nth == 2, "the long job ran on %d threads", a.nth);
    CHECK(lstm_pool_size() == 3, "size %d after the resize, want 3", lstm_pool_size());
    lstm_pool_set_size(2);
}

// ------------------------------------------------------------------ (d)

/* In a child: the pool has the parent's size, no thread until a job, then all of them. */
static void child_uses_pool(void *arg) {
    const int size = *(const int *)arg;
    CHECK(lstm_pool_size() == size, "child: size %d, want the parent's %d", lstm_pool_size(), size);
    CHECK(count_threads() == 1, "child: %d threads before its first job", count_threads());
    if (TSAN) return;
    job j;
    CHECK(run_job(size, LONG_WAIT_NS, NULL, &j) == size, "child: team %d of %d", j.team_nth, size);
    CHECK(count_threads() == size, "child: %d threads for a pool of %d", count_threads(), size);
    for (int i = 0; i < 200; i++) run_job(size, 20000, NULL, &j);
    lstm_pool_set_size(3);
    CHECK(run_job(3, LONG_WAIT_NS, NULL, &j) == 3, "child: team %d of 3 after growing", j.team_nth);
    lstm_pool_set_size(1);
    CHECK(run_job(2, LONG_WAIT_NS, NULL, &j) == 1, "child: team %d of 1 after shrinking", j.team_nth);
    lstm_pool_set_size(2);
    sleep_ms(5);
    CHECK(run_job(2, LONG_WAIT_NS, NULL, &j) == 2, "child: team %d of 2 at the end", j.team_nth);
}

static void grandparent_child(void *arg) {
    child_uses_pool(arg);
    if (TSAN) return;
    sleep_ms(5); /* its workers asleep */
    int two = 2;
    in_child("grandchild", child_uses_pool, &two);
}

static void test_fork_idle(void) {
    int two = 2;
    lstm_pool_set_size(2);
    job j;
    for (int i = 0; i < 100; i++) run_job(2, 20000, NULL, &j);
    in_child("fork right after jobs", child_uses_pool, &two);
    sleep_ms(5); /* the worker sleeps on the condition variable */
    for (int k = 0; k < 5; k++) in_child("fork from an idle pool", child_uses_pool, &two);
    in_child("fork in a child", grandparent_child, &two);
    CHECK(run_job(2, LONG_WAIT_NS, NULL, &j) == 2, "parent after fork: team %d", j.team_nth);
}

static void test_fork_during_job(void) {
    int two = 2;
    lstm_pool_set_size(2);
    for (int k = 0; k < 3; k++) {
        atomic_int hold;
        pthread_t th;
        job_thread_arg a;
        start_long_job(&th, &a, 2, &hold);
        while (atomic_load(&a.j.inside) < a.j.team_nth) sleep_ms(1); /* whole team inside */
        in_child("fork during a job", child_uses_pool, &two);
        CHECK(atomic_load(&a.j.inside) == a.j.team_nth, "the parent's job moved on");
        atomic_store(&hold, 0);
        pthread_join(th, NULL);
        CHECK(a.nth == 2, "the parent's job ran on %d threads", a.nth);
        job j;
        CHECK(run_job(2, LONG_WAIT_NS, NULL, &j) == 2, "parent after: team %d", j.team_nth);
    }
}

static void child_after_resizes(void *arg) {
    (void)arg;
    const int size = lstm_pool_size();
    CHECK(size >= 1 && size <= 3, "child: size %d, want one the parent set", size);
    if (TSAN) return;
    job j;
    CHECK(run_job(3, LONG_WAIT_NS, NULL, &j) == size, "child: team %d of %d", j.team_nth, size);
}

static void test_fork_during_resizes(void) {
    pthread_t resizer;
    atomic_store(&stop_resizing, 0);
    pthread_create(&resizer, NULL, resizer_thread, NULL);
    for (int k = 0; k < 20; k++) {
        sleep_ms(1);
        in_child("fork during resizes", child_after_resizes, NULL);
    }
    atomic_store(&stop_resizing, 1);
    pthread_join(resizer, NULL);
    lstm_pool_set_size(2);
    job j;
    CHECK(run_job(2, LONG_WAIT_NS, NULL, &j) == 2, "parent after: team %d", j.team_nth);
}

// ------------------------------------------------------------------ (e)

static atomic_int busy_stop;
static void *busy_thread(void *p) {
    (void)p;
    volatile unsigned x = 0;
    while (!atomic_load_explicit(&busy_stop, memory_order_relaxed)) x++;
    return NULL;
}

typedef struct {
    lstm_barrier b;
    int nth;
} barrier_job;
static void barrier_team(void *arg, int nth) {
    barrier_job *j = arg;
    j->nth = nth;
    lstm_barrier_init(&j->b, nth);
}
static void barrier_fn(void *arg, int tid, int nth) {
    (void)tid, (void)nth;
    barrier_job *j = arg;
    for (int i = 0; i < 3000; i++) lstm_barrier_wait(&j->b); /* a step-by-step call's waits */
}
static int barrier_job_run(int wanted) {
    barrier_job j;
    const int n = lstm_pool_begin(wanted);
    lstm_pool_run(n, LONG_WAIT_NS, barrier_team, barrier_fn, &j);
    return j.nth;
}

static void test_crowded(void) {
    lstm_pool_set_size(2);
    lstm_pool_forget_crowding(); /* (the tests before may have crowded the CPUs) */
    unsetenv("LSTM_INFER_DYNAMIC");
    CHECK(barrier_job_run(2) == 2, "a job on idle CPUs: not a team of 2");
    /* a busy thread on every CPU: the job's two threads share the CPUs with them */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cpus = cpus < 1 ? 1 : cpus > 64 ? 64 : cpus;
    pthread_t busy[64];
    atomic_store(&busy_stop, 0);
    int started = 0;
    for (long i = 0; i < cpus; i++) started += pthread_create(&busy[started], NULL, busy_thread, NULL) == 0;
    int crowded = 0;
    for (int tries = 0; tries < 20 && !crowded; tries++) { /* a job with its team says so */
        const int n = barrier_job_run(2);
        crowded = n == 2 && lstm_pool_begin(2) == 1;
        if (!crowded && n == 1) crowded = 1; /* (a job already ran alone: crowded before) */
        if (!crowded) { /* begin took the pool: give it back with a job */
            barrier_job j;
            lstm_pool_run(2, LONG_WAIT_NS, barrier_team, barrier_fn, &j);
        }
    }
    CHECK(crowded, "busy threads on every CPU: calls still get a team of 2");
    setenv("LSTM_INFER_DYNAMIC", "0", 1);
    CHECK(barrier_job_run(2) == 2, "LSTM_INFER_DYNAMIC=0: a crowded call did not get its team");
    unsetenv("LSTM_INFER_DYNAMIC");
    atomic_store(&busy_stop, 1);
    for (int i = 0; i < started; i++) pthread_join(busy[i], NULL);
    /* the pause ends (100 ms, doubled per crowded retry, 10 s at most): a team again */
    int team = 0;
    const double end = now_s() + 25;
    while (!team && now_s() < end) {
        sleep_ms(50);
        team = barrier_job_run(2) == 2;
    }
    CHECK(team, "the CPUs are free again: calls still run alone after 25 s");
    setenv("LSTM_INFER_DYNAMIC", "0", 1);
}

int main(void) {
    setenv("LSTM_INFER_DYNAMIC", "0", 1); /* these count teams; test_crowded unsets it */
    test_first_size();
    test_jobs();
    test_concurrent_callers_and_resizes();
    test_size_never_waits();
    test_crowded();
    /* qemu-user cannot fork a process that has threads (the child aborts in cpu_exec) and
       shows its own threads in /proc/self/task: aarch64.mk sets LSTM_TEST_NO_FORK */
    if (getenv("LSTM_TEST_NO_FORK")) {
        printf("note: LSTM_TEST_NO_FORK: the fork tests (d) skipped\n");
    } else {
        test_fork_idle();
        test_fork_during_job();
        test_fork_during_resizes();
    }
    lstm_pool_set_size(1);
    const int f = atomic_load(&failures);
    printf("%s: %d checks, %d failures (pool)\n", f ? "FAILED" : "OK", atomic_load(&checks), f);
    return f ? 1 : 0;
}
