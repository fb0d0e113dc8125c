/*
 * pool.h - the library's persistent worker threads and a spinning barrier.
 * Internal. One forward call holds the pool at a time; a call that finds it
 * held runs on its own thread, so concurrent callers never wait for each other.
 * Fork-safe: a forked child gets an idle pool of the same size, whose workers
 * start at its first call.
 */
#ifndef LSTM_POOL_H
#define LSTM_POOL_H

#include <stdatomic.h>
#include <stdint.h>

typedef void (*lstm_job_fn)(void *arg, int tid, int nthreads);
/* Called once on the caller, before fn, with the number of threads that run the job. */
typedef void (*lstm_team_fn)(void *arg, int nthreads);

/*
 * Asks for up to `wanted` threads (the caller included). Returns how many the
 * call may use: 1 means the caller runs alone and holds nothing; more means the
 * pool is held until lstm_pool_run returns. 1 also while the CPUs are crowded:
 * a recent job's waits gave the CPU to other threads for over a quarter of its
 * time (pool.c; not with LSTM_INFER_DYNAMIC=0).
 */
int lstm_pool_begin(int wanted);

/* Ends a pause for crowded CPUs (tests) */
void lstm_pool_forget_crowding(void);

/*
 * Runs fn(arg, tid, m) for tid in [0, m), the caller as tid 0, where m <= n
 * (n from lstm_pool_begin) counts the caller and the workers that joined
 * within join_wait_ns; team(arg, m) runs first, on the caller, to plan for m.
 */
void lstm_pool_run(int n, int64_t join_wait_ns, lstm_team_fn team, lstm_job_fn fn, void *arg);

/* Total threads, caller included (clamped to 1..256); waits for a running call, then
   joins or starts workers. */
void lstm_pool_set_size(int n);
/* The size; never waits for a lock (callers may hold the GIL). */
int lstm_pool_size(void);

typedef struct {
    atomic_int count;
    atomic_int phase;
    int n;
} lstm_barrier;

void lstm_barrier_init(lstm_barrier *b, int n);
void lstm_barrier_wait(lstm_barrier *b);

/* Spins (then yields, as the barrier) until *v >= at_least; *v's writer stores with release. */
void lstm_wait_at_least(_Atomic int64_t *v, int64_t at_least);

/* Flush denormals to zero on this thread (x86); returns the old mode for restore. */
unsigned lstm_denormals_off(void);
void lstm_denormals_restore(unsigned mode);

#endif /* LSTM_POOL_H */
