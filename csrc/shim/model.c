/* rkllm-cffi shim: one loaded model: its lifetime and its generation session.
 *
 * Threads: rkllm_run is called on a runner thread the shim starts per generation; the
 * runtime calls back (the "producer") from inside it, on that runner thread (a blocking
 * rkllm_run that calls back on its caller's thread, as the simulator does by default) or on
 * a thread of its own; Python pulls batches (the "consumer", one thread at a time) with the
 * GIL released; any thread may abort, end or close. One mutex guards the session state; the
 * tokens go through the ring (ring.c), which takes no lock on the common path, after the
 * UTF-8 repair (utf8.c). A callback made outside its run (after rkllm_run returned, e.g. a
 * late one after an abort) carries a retired run tag (model.h) and is dropped.
 *
 * Lifetime (a small state machine, so close from another thread is never a use-after-free):
 * open -> [session: start .. end]* -> closing -> closed -> free. close waits for the runner
 * and for any short runtime call in progress before rkllm_destroy. The struct is reference
 * counted: Python's owner holds one reference until rkshim_model_free, and each session's
 * consumer one from start until its end, so the order in which the garbage collector
 * finalises a model and its stream does not matter.
 *
 * fork(): a model loaded before fork() is unusable in the child (the runtime's and the
 * shim's threads do not exist there): every call fails with RKSHIM_E_CLOSED, close and free
 * never touch the runtime or the locks (a parent's thread may have held them).
 *
 * The runtime's reason for a failed run (its last stderr line) is not captured: it prints it
 * from its own thread during a run that may last minutes, and redirecting the process's
 * stderr that long is not acceptable; it stays visible on stderr. (Short calls capture it:
 * errors.c.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "model.h"

#define SPIN_NS 5000       /* how long an empty-handed consumer spins before sleeping */
#define SPIN_POLL_NS 1000  /* how often it looks meanwhile */
#define ABORT_REPEAT_MS 20 /* an abort the runtime lost (sent as rkllm_run began) is repeated */

void *rkshim_model_keep(rkshim_model *m, const void *data, size_t size) {
    if (!data || m->n_kept == (int)(sizeof m->kept / sizeof m->kept[0])) return NULL;
    void *copy = malloc(size);
    if (!copy) return NULL;
    memcpy(copy, data, size);
    m->kept[m->n_kept++] = copy;
    return copy;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void deadline_after(struct timespec *ts, double ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    long long ns = ts->tv_nsec + (long long)(ms * 1e6);
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

/* ---- fork ------------------------------------------------------------------------------ */

static _Atomic unsigned fork_epoch;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_child(void) {
    atomic_fetch_add(&fork_epoch, 1);
    rkshim_capture_after_fork_child();
}
static void register_atfork(void) { pthread_atfork(NULL, NULL, atfork_child); }

int rkshim_model_forked(rkshim_model *m) {
    if (m->epoch == atomic_load_explicit(&fork_epoch, memory_order_relaxed)) return 0;
    rkshim_fail(RKSHIM_E_CLOSED, "this model was loaded in the parent process before fork(); "
                                 "load it again in the child");
    return 1;
}

/* ---- the producer (the runtime's thread) ----------------------------------------------- */

static void push_text(rkshim_model *m, const char *text, size_t len, int32_t id) {
    char buf[RKSHIM_UTF8_OUT(256)];
    size_t bytes;
    uint32_t chars;
    const char *out = rkshim_utf8_fix(&m->utf8, text, len, buf, sizeof buf, &bytes, &chars);
    if (!out || bytes > UINT32_MAX / 2) bytes = 0, chars = 0; /* no memory / gigabytes */
    ring_push(&m->ring, out ? out : "", (uint32_t)bytes, chars, id);
}

/* With the lock held: a stop is wanted (the ring drops further output); the consumer is told,
 * because it sends the abort (limit) or must see the end. */
static void want_stop_locked(rkshim_model *m) {
    m->stop_wanted = 1;
    ring_stop(&m->ring);
    ring_notify(&m->ring);
}

static void hit_limit(rkshim_model *m) {
    pthread_mutex_lock(&m->lock);
    m->limit_hit = 1;
    want_stop_locked(m);
    pthread_mutex_unlock(&m->lock);
}

static void deliver_token(rkshim_model *m, const char *text, int32_t id) {
    if (m->stop_wanted || m->closing) return; /* output after a stop is dropped */
    int32_t n = atomic_load_explicit(&m->p_tokens, memory_order_relaxed);
    if (m->max_tokens >= 0 && n >= m->max_tokens) {
        hit_limit(m);
        return;
    }
    if (n == 0) {
        pthread_mutex_lock(&m->lock);
        m->t_first = now_ms();
        pthread_mutex_unlock(&m->lock);
    }
    push_text(m, text ? text : "", text ? strlen(text) : 0, id);
    atomic_store_explicit(&m->p_tokens, ++n, memory_order_relaxed);
    if (m->max_tokens >= 0 && n >= m->max_tokens) hit_limit(m);
}

static void keep_array(rkshim_model *m, int kind, const float *data, int rows, int cols) {
    if (!data || rows <= 0 || cols <= 0) return;
    size_t count = (size_t)rows * (size_t)cols;
    float *copy = realloc(m->arrays[kind], count * sizeof *copy);
    if (!copy) return;
    memcpy(copy, data, count * sizeof *copy);
    m->arrays[kind] = copy;
    m->rows[kind] = rows;
    m->cols[kind] = cols;
    if (kind == RKSHIM_MODE_HIDDEN) m->embed_size = cols; /* the width of the model's rows */
}

/* 1 when tag is the live run's (the common path: one compare). */
static int tag_is_live(rkshim_model **tag, rkshim_model *m) {
    rkshim_model **live = atomic_load_explicit(&m->live_tag, memory_order_relaxed);
    if (tag == live) return 1;
    return tag == &m->run_tags[RKSHIM_INIT_TAG] && live; /* 1.3.0 without a run userdata */
}

int rkshim_deliver(void *userdata, const rkshim_event *ev) {
    rkshim_model **tag = userdata;
    if (!tag) return 0;
    rkshim_model *m = *tag;
    if (!tag_is_live(tag, m)) return 0; /* from a run that is over */
    int is_token = ev->kind == EV_TOKEN || ev->kind == EV_WAITING;
    if (is_token && m->generate_mode) { /* the common path: no lock */
        deliver_token(m, ev->text, ev->token_id);
        return 0;
    }
    if (ev->kind == EV_FINISH || ev->kind == EV_ERROR) {
        /* the run ended inside a character: a run the shim stopped drops it; one the
         * runtime ended there shows it as U+FFFD (a piece that is not a token) */
        char rep[3];
        uint32_t chars = 0;
        size_t n = rkshim_utf8_flush(&m->utf8, rep, &chars);
        if (n && !m->stop_wanted && !m->closing) ring_push(&m->ring, rep, (uint32_t)n, chars, -1);
    }
    pthread_mutex_lock(&m->lock);
    int mode = m->job ? m->job->a.mode : RKSHIM_MODE_GENERATE;
    if (ev->kind == EV_FINISH || ev->kind == EV_ERROR) {
        m->terminal = ev->kind == EV_FINISH ? RKSHIM_RUN_FINISHED : RKSHIM_RUN_ERROR;
        m->t_last = now_ms();
        if (ev->has_perf) {
            m->outcome.perf_source = 1;
            m->outcome.prefill_ms = ev->prefill_ms;
            m->outcome.prefill_tokens = ev->prefill_tokens;
            m->outcome.generate_ms = ev->generate_ms;
            m->outcome.generate_tokens = ev->generate_tokens;
            m->outcome.memory_mb = ev->memory_mb;
        }
    }
    if (mode == RKSHIM_MODE_HIDDEN || ev->kind == EV_HIDDEN_ONLY)
        keep_array(m, RKSHIM_MODE_HIDDEN, ev->hidden, ev->hidden_rows, ev->hidden_cols);
    if (mode == RKSHIM_MODE_LOGITS)
        keep_array(m, RKSHIM_MODE_LOGITS, ev->logits, ev->logits_rows, ev->logits_cols);
    pthread_mutex_unlock(&m->lock);
    if (is_token) deliver_token(m, ev->text, ev->token_id);
    return 0;
}

/* ---- the runner and the aborts --------------------------------------------------------- */

static void *runner_main(void *arg) {
    rkshim_model *m = arg;
    pthread_mutex_lock(&m->lock);
    int skip = m->stop_wanted; /* cancelled before it began */
    m->in_run = !skip;
    m->t_start = now_ms();
    pthread_mutex_unlock(&m->lock);
    int rc = skip ? 0 : m->rt->family->run(m->rt, m->handle, m->job, m->run_tag);
    pthread_mutex_lock(&m->lock);
    /* the run is over: a callback after this (one the runtime makes late) is dropped, so
     * from here on nothing writes to this run's ring (bytes held back from a character were
     * flushed by the final callback, inside rkllm_run) */
    atomic_store_explicit(&m->live_tag, NULL, memory_order_relaxed);
    m->in_run = 0;
    double t_end = now_ms();
    if (!m->terminal) m->t_last = t_end;
    rkshim_outcome *o = &m->outcome;
    o->runtime_rc = rc;
    o->n_tokens = atomic_load(&m->p_tokens);
    if (m->terminal == RKSHIM_RUN_ERROR || (rc != 0 && !m->cancelled && !m->limit_hit))
        o->status = RKSHIM_RUN_ERROR;
    else if (m->limit_hit)
        o->status = RKSHIM_RUN_LENGTH;
    else if (m->cancelled)
        o->status = RKSHIM_RUN_ABORTED;
    else
        o->status = RKSHIM_RUN_FINISHED;
    if (!o->perf_source) { /* measured here: prefill = until the first token */
        double first = o->n_tokens ? m->t_first : t_end;
        o->prefill_ms = (float)(first - m->t_start);
        o->prefill_tokens = -1;
        o->generate_ms = o->n_tokens ? (float)(m->t_last - m->t_first) : 0.0f;
        o->generate_tokens = o->n_tokens;
    }
    m->run_done = 1;
    ring_notify(&m->ring); /* the end is always signalled, also on the eventfd */
    pthread_cond_broadcast(&m->state_cond);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* rkllm_abort may block until the run has stopped (the simulator's does, and a real
 * runtime may), so it is called from a short-lived helper thread: whoever asks for a stop
 * can still wait with a time limit. close() waits for these threads before destroying.
 * An abort that reaches the runtime just before its rkllm_run begins is lost, and then
 * nobody may be left to ask again (a reader waits for the run's end, an event loop for the
 * fd): while the same run goes on, the thread asks again every ABORT_REPEAT_MS. */
static void *aborter_main(void *arg) {
    rkshim_model *m = arg;
    pthread_mutex_lock(&m->lock);
    unsigned long gen = m->gen;
    void *handle = m->handle;
    for (int first = 1;; first = 0) {
        if (!first) {
            struct timespec ts;
            deadline_after(&ts, ABORT_REPEAT_MS);
            pthread_cond_timedwait(&m->state_cond, &m->lock, &ts);
        }
        if (!first && (m->run_done || !m->in_run || m->gen != gen || m->closed || !m->handle))
            break;
        pthread_mutex_unlock(&m->lock);
        ((int (*)(void *))m->rt->sym[SYM_abort])(handle);
        pthread_mutex_lock(&m->lock);
        if (m->run_done || !m->in_run || m->gen != gen || m->closed || !m->handle) break;
    }
    m->aborters--;
    m->abort_returned = now_ms();
    pthread_cond_broadcast(&m->state_cond);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* With the lock held: while the runner is inside rkllm_run, one abort at a time, and a new
 * one only ABORT_REPEAT_MS after the last one returned without the run ending (an abort that
 * blocks until the run stops is never sent twice). */
static void send_abort(rkshim_model *m) {
    if (!m->in_run || m->aborters) return;
    if (m->abort_sent && now_ms() < m->abort_returned + ABORT_REPEAT_MS) return;
    m->abort_sent = 1;
    m->aborters++;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int err = pthread_create(&t, &attr, aborter_main, m);
    pthread_attr_destroy(&attr);
    if (err != 0) { /* no thread: abort from here */
        pthread_mutex_unlock(&m->lock);
        ((int (*)(void *))m->rt->sym[SYM_abort])(m->handle);
        pthread_mutex_lock(&m->lock);
        m->aborters--;
        m->abort_returned = now_ms();
    }
}

/* Called with the lock held: asks the runtime to stop the run of session gen and waits (up
 * to timeout_ms, < 0 no limit) for the runner to return, then joins it (exactly one thread
 * joins; every wait re-checks the state, which may have moved on meanwhile). Returns OK
 * (also when that session is already over) or E_TIMEOUT. */
static int stop_and_join(rkshim_model *m, unsigned long gen, int timeout_ms) {
    double give_up = timeout_ms < 0 ? 0 : now_ms() + timeout_ms;
    for (;;) {
        if (!m->runner_live || m->gen != gen) return RKSHIM_OK;
        if (!m->run_done) {
            if (!m->stop_wanted) {
                if (!m->limit_hit) m->cancelled = 1;
                want_stop_locked(m);
            }
            send_abort(m);
            if (m->gen != gen || m->run_done) continue;
            if (timeout_ms >= 0 && now_ms() >= give_up) return RKSHIM_E_TIMEOUT;
            struct timespec ts;
            deadline_after(&ts, ABORT_REPEAT_MS);
            pthread_cond_timedwait(&m->state_cond, &m->lock, &ts);
            continue;
        }
        if (m->aborters || m->join_claimed) { /* a late abort must not hit the next run */
            pthread_cond_wait(&m->state_cond, &m->lock);
            continue;
        }
        m->join_claimed = 1;
        pthread_t runner = m->runner;
        pthread_mutex_unlock(&m->lock);
        pthread_join(runner, NULL);
        pthread_mutex_lock(&m->lock);
        m->runner_live = 0;
        m->join_claimed = 0;
        pthread_cond_broadcast(&m->state_cond);
        return RKSHIM_OK;
    }
}

/* With the lock held: finishes a session whose consumer gave up waiting for it. */
static void reap_orphan(rkshim_model *m) {
    unsigned long gen = m->gen;
    if (m->session && m->orphaned && stop_and_join(m, gen, -1) == RKSHIM_OK &&
        m->gen == gen && m->orphaned) {
        m->session = m->orphaned = 0;
        pthread_cond_broadcast(&m->state_cond);
    }
}

/* ---- lifetime -------------------------------------------------------------------------- */

static void destroy(rkshim_model *m) {
    ring_destroy(&m->ring);
    rkshim_utf8_free(&m->utf8);
    for (int i = 0; i < 3; i++) free(m->arrays[i]);
    for (int i = 0; i < m->n_kept; i++) free(m->kept[i]);
    free(m->cross);
    free(m->job);
    pthread_cond_destroy(&m->state_cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static void unref(rkshim_model *m) {
    if (atomic_fetch_sub(&m->refs, 1) != 1) return;
    pthread_mutex_lock(&m->lock);
    if (m->runner_live && m->run_done && !m->join_claimed) { /* finished, not joined yet */
        m->join_claimed = 1;
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->runner, NULL);
        pthread_mutex_lock(&m->lock);
        m->runner_live = m->join_claimed = 0;
    }
    int busy = m->aborters || m->runner_live;
    pthread_mutex_unlock(&m->lock);
    if (!busy) destroy(m); /* else a runtime that never stopped: leak rather than free under it */
}

int rkshim_model_open(rkshim_runtime *rt, const char *model_path, const rkshim_param *param,
                      rkshim_model **out) {
    rkshim_clear_error();
    *out = NULL;
    if (!rt || !model_path || !param) return rkshim_fail(RKSHIM_E_PARAM, "NULL argument");
    pthread_once(&atfork_once, register_atfork);
    rkshim_model *m = aligned_alloc(64, (sizeof *m + 63) / 64 * 64);
    if (!m) return rkshim_fail(RKSHIM_E_NOMEM, "out of memory");
    memset(m, 0, sizeof *m);
    if (ring_init(&m->ring) != 0) {
        free(m);
        return rkshim_fail(RKSHIM_E_NOMEM, "out of memory");
    }
    m->rt = rt;
    for (int i = 0; i <= RKSHIM_RUN_TAGS; i++) m->run_tags[i] = m;
    m->epoch = atomic_load(&fork_epoch);
    m->refs = 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&m->state_cond, &attr);
    pthread_condattr_destroy(&attr);

    rkshim_capture cap;
    rkshim_capture_begin(&cap);
    void *handle = NULL;
    int rc = rt->family->init(rt, &handle, model_path, param, m, &m->run_tags[RKSHIM_INIT_TAG]);
    rkshim_capture_end(&cap);
    if (rc != 0 || !handle) {
        if (rc == 0)
            rkshim_fail_rc(RKSHIM_E_LOAD, 0,
                           "rkllm_init returned 0 but no model handle (out of memory?)");
        else
            rkshim_fail_rc(RKSHIM_E_LOAD, rc, "rkllm_init failed for %s (code %d)", model_path,
                           rc);
        destroy(m);
        return RKSHIM_E_LOAD;
    }
    m->handle = handle;
    *out = m;
    return RKSHIM_OK;
}

int rkshim_model_close(rkshim_model *m) {
    rkshim_clear_error();
    if (rkshim_model_forked(m)) { /* nothing of it is this process's to close */
        rkshim_clear_error();
        return RKSHIM_OK;
    }
    pthread_mutex_lock(&m->lock);
    if (m->closed) {
        pthread_mutex_unlock(&m->lock);
        return RKSHIM_OK;
    }
    if (m->closing) { /* another thread is closing it */
        while (!m->closed) pthread_cond_wait(&m->state_cond, &m->lock);
        pthread_mutex_unlock(&m->lock);
        return RKSHIM_OK;
    }
    m->closing = 1;
    ring_stop(&m->ring);
    ring_notify(&m->ring);
    pthread_cond_broadcast(&m->state_cond);
    int rc = stop_and_join(m, m->gen, 60000);
    if (rc != RKSHIM_OK) { /* destroying under a live run would crash: leak it instead */
        m->closed = 1;
        m->handle = NULL;
        pthread_cond_broadcast(&m->state_cond);
        pthread_mutex_unlock(&m->lock);
        return rkshim_fail(RKSHIM_E_TIMEOUT,
                           "the runtime did not stop within 60 s; the model was not destroyed");
    }
    while (m->op_active || m->aborters) pthread_cond_wait(&m->state_cond, &m->lock);
    m->session = m->orphaned = 0;
    void *handle = m->handle;
    pthread_mutex_unlock(&m->lock);
    int drc = ((int (*)(void *))m->rt->sym[SYM_destroy])(handle);
    pthread_mutex_lock(&m->lock);
    m->handle = NULL;
    m->closed = 1;
    pthread_cond_broadcast(&m->state_cond);
    pthread_mutex_unlock(&m->lock);
    if (drc != 0) return rkshim_fail_rc(RKSHIM_E_RUNTIME, drc, "rkllm_destroy failed");
    return RKSHIM_OK;
}

void rkshim_model_free(rkshim_model *m) {
    if (!m) return;
    if (m->epoch != atomic_load(&fork_epoch)) return; /* the parent's: left alone */
    if (!m->closed) rkshim_model_close(m);
    unref(m);
}

int rkshim_model_is_closed(rkshim_model *m) {
    if (m->epoch != atomic_load(&fork_epoch)) return 1;
    return m->closed || m->closing;
}

/* ---- generation ------------------------------------------------------------------------ */

int rkshim_model_start(rkshim_model *m, const rkshim_run_args *args) {
    rkshim_clear_error();
    if (rkshim_model_forked(m)) return RKSHIM_E_CLOSED;
    rkshim_job *job;
    int rc = rkshim_job_make(args, m->rt->family, m->embed_size, &job);
    if (rc != RKSHIM_OK) return rc;
    pthread_mutex_lock(&m->lock);
    reap_orphan(m);
    if (m->closed || m->closing)
        rc = rkshim_fail(RKSHIM_E_CLOSED, "the model is closed");
    else if (m->session)
        rc = rkshim_fail(RKSHIM_E_BUSY, "the model is already generating (one generation at "
                                        "a time per model)");
    else if (m->op_active)
        rc = rkshim_fail(RKSHIM_E_BUSY, "the model is busy with another call");
    if (rc != RKSHIM_OK) {
        pthread_mutex_unlock(&m->lock);
        free(job);
        return rc;
    }
    free(m->job);
    m->job = job;
    m->generate_mode = args->mode == RKSHIM_MODE_GENERATE;
    ring_reset(&m->ring);
    rkshim_utf8_reset(&m->utf8);
    atomic_store(&m->p_tokens, 0);
    m->stop_wanted = m->cancelled = m->limit_hit = m->abort_sent = m->terminal = 0;
    m->run_done = m->in_run = 0;
    m->abort_returned = 0;
    m->max_tokens = args->max_new_tokens;
    memset(&m->outcome, 0, sizeof m->outcome);
    m->t_first = m->t_last = 0;
    for (int i = 0; i < 3; i++) m->rows[i] = m->cols[i] = 0;
    m->run_tag = &m->run_tags[(m->gen + 1) % RKSHIM_RUN_TAGS]; /* this session's gen */
    atomic_store_explicit(&m->live_tag, m->run_tag, memory_order_relaxed);
    int err = pthread_create(&m->runner, NULL, runner_main, m);
    if (err != 0) {
        atomic_store_explicit(&m->live_tag, NULL, memory_order_relaxed);
        pthread_mutex_unlock(&m->lock);
        return rkshim_fail(RKSHIM_E_NOMEM, "cannot start the generation thread: %s",
                           strerror(err));
    }
    m->session = 1;
    m->gen++;
    m->runner_live = 1;
    m->held = 1;
    atomic_fetch_add(&m->refs, 1);
    pthread_mutex_unlock(&m->lock);
    return RKSHIM_OK;
}

/* Nothing to take, nothing to report: the consumer would have to wait. */
static int idle(rkshim_model *m) {
    return ring_empty(&m->ring) && !m->run_done && !m->closing && !m->closed &&
           !(m->stop_wanted && !m->abort_sent);
}

/* Spins a few microseconds while the consumer would have to wait: at full rate the next
 * token is a fraction of a microsecond away, and sleeping costs a wake-up on both sides.
 * Each round yields the CPU: when the producer shares this CPU (a busy machine) it runs
 * and fills the ring instead of being woken for every few tokens; on an idle CPU
 * sched_yield returns at once, and the ring is looked at every few hundred nanoseconds
 * (each look takes the cache line the producer writes for every token away from it). */
static int64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void spin(rkshim_model *m) {
    static _Atomic long cpus;
    if (!cpus) cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus <= 1) return;
    int64_t start = mono_ns(), now = start;
    do {
        sched_yield();
        for (int64_t look = now + SPIN_POLL_NS; (now = mono_ns()) < look;) {
        }
        if (!idle(m)) return;
    } while (now - start < SPIN_NS);
}

static int pull_inner(rkshim_model *m, rkshim_batch *out, int timeout_ms) {
    struct timespec deadline;
    int have_deadline = 0, spun = 0;
    for (;;) {
        uint32_t seen = ring_events(&m->ring); /* before looking at the state */
        if (m->closing || m->closed) return rkshim_fail(RKSHIM_E_CLOSED, "the model was closed");
        if (!m->session) return rkshim_fail(RKSHIM_E_PARAM, "no generation in progress");
        if (m->stop_wanted && !m->abort_sent) { /* e.g. the token limit was hit */
            pthread_mutex_lock(&m->lock);
            if (m->stop_wanted && !m->abort_sent && m->in_run) send_abort(m);
            pthread_mutex_unlock(&m->lock);
        }
        int done = m->run_done; /* read first: everything published before it is taken */
        if (ring_take(&m->ring, out) || done) {
            out->done = done;
            return RKSHIM_OK;
        }
        if (timeout_ms == 0) return RKSHIM_OK;
        if (!spun) {
            spun = 1;
            spin(m);
            continue;
        }
        if (timeout_ms > 0 && !have_deadline) {
            deadline_after(&deadline, timeout_ms);
            have_deadline = 1;
        }
        if (ring_wait(&m->ring, seen, have_deadline ? &deadline : NULL) == ETIMEDOUT)
            timeout_ms = 0; /* one last look */
    }
}

int rkshim_model_pull(rkshim_model *m, rkshim_batch *out, int timeout_ms) {
    memset(out, 0, sizeof *out);
    if (rkshim_model_forked(m)) return RKSHIM_E_CLOSED;
    if (atomic_exchange(&m->consuming, 1))
        return rkshim_fail(RKSHIM_E_BUSY, "another thread is reading this generation");
    int rc = pull_inner(m, out, timeout_ms);
    if (rc == RKSHIM_OK && !out->done) {
        if (out->n_tokens) { /* consumed: unsignal (the end stays signalled) */
            ring_fd_consumed(&m->ring);
        } else if (timeout_ms == 0) {
            /* an event loop is about to wait on the fd: reset it, have the producer write
             * it, and look once more (something may have come in meanwhile) */
            ring_fd_arm(&m->ring);
            if (!idle(m)) ring_fd_write(&m->ring);
        }
    }
    atomic_store(&m->consuming, 0);
    return rc;
}

int rkshim_model_abort(rkshim_model *m) {
    rkshim_clear_error();
    if (rkshim_model_forked(m)) return RKSHIM_E_CLOSED;
    pthread_mutex_lock(&m->lock);
    if (m->session && !m->run_done) {
        if (!m->limit_hit) m->cancelled = 1;
        want_stop_locked(m);
        send_abort(m);
    }
    pthread_mutex_unlock(&m->lock);
    return RKSHIM_OK;
}

int rkshim_model_end(rkshim_model *m, int timeout_ms, rkshim_outcome *out) {
    rkshim_clear_error();
    if (rkshim_model_forked(m)) return RKSHIM_E_CLOSED;
    pthread_mutex_lock(&m->lock);
    int rc = RKSHIM_OK;
    unsigned long gen = m->gen;
    if (m->session) {
        rc = stop_and_join(m, gen, timeout_ms);
        if (m->gen != gen || !m->session) {
            rc = RKSHIM_OK; /* another thread ended this session meanwhile */
        } else if (rc == RKSHIM_OK) {
            if (out) *out = m->outcome;
            m->session = m->orphaned = 0;
            pthread_cond_broadcast(&m->state_cond);
        } else {
            m->orphaned = 1;
            rkshim_fail(rc, "the runtime did not stop within %d ms; the model finishes the "
                            "run's clean-up before its next call", timeout_ms);
        }
    }
    int release = m->held; /* the consumer's reference goes with its end, even a timed-out one */
    m->held = 0;
    pthread_mutex_unlock(&m->lock);
    if (release) unref(m);
    return rc;
}

int rkshim_model_array(rkshim_model *m, int kind, const float **data, int *rows, int *cols) {
    *data = NULL;
    *rows = *cols = 0;
    if (rkshim_model_forked(m)) return RKSHIM_E_CLOSED;
    if (kind != RKSHIM_MODE_HIDDEN && kind != RKSHIM_MODE_LOGITS)
        return rkshim_fail(RKSHIM_E_PARAM, "unknown array kind %d", kind);
    pthread_mutex_lock(&m->lock);
    if (m->rows[kind]) {
        *data = m->arrays[kind];
        *rows = m->rows[kind];
        *cols = m->cols[kind];
    }
    pthread_mutex_unlock(&m->lock);
    return RKSHIM_OK;
}

int rkshim_model_event_fd(rkshim_model *m) {
    if (rkshim_model_forked(m)) return RKSHIM_E_CLOSED;
    int fd = ring_event_fd(&m->ring);
    if (fd < 0) return rkshim_fail(RKSHIM_E_NOMEM, "eventfd: %s", strerror(errno));
    if (!idle(m)) ring_fd_write(&m->ring); /* readable as soon as a pull would not block */
    return fd;
}

int rkshim_model_is_running(rkshim_model *m) {
    if (m->epoch != atomic_load(&fork_epoch)) return 0;
    pthread_mutex_lock(&m->lock);
    int running = m->session && !m->run_done;
    pthread_mutex_unlock(&m->lock);
    return running;
}

/* ---- around the runtime's other functions (calls.c) ------------------------------------ */

int rkshim_op_begin(rkshim_model *m) {
    rkshim_clear_error();
    if (rkshim_model_forked(m)) return RKSHIM_E_CLOSED;
    pthread_mutex_lock(&m->lock);
    for (;;) {
        if (m->closed || m->closing) {
            pthread_mutex_unlock(&m->lock);
            return rkshim_fail(RKSHIM_E_CLOSED, "the model is closed");
        }
        if (m->session && m->orphaned) {
            reap_orphan(m);
            continue;
        }
        if (m->session) {
            pthread_mutex_unlock(&m->lock);
            return rkshim_fail(RKSHIM_E_BUSY, "the model is generating; wait for the "
                                              "generation to end (or abort it) first");
        }
        if (!m->op_active) break;
        pthread_cond_wait(&m->state_cond, &m->lock);
    }
    m->op_active = 1;
    pthread_mutex_unlock(&m->lock);
    return RKSHIM_OK;
}

int rkshim_op_end(rkshim_model *m, int rc, const char *what) {
    pthread_mutex_lock(&m->lock);
    m->op_active = 0;
    pthread_cond_broadcast(&m->state_cond);
    pthread_mutex_unlock(&m->lock);
    if (rc != 0) return rkshim_fail_rc(RKSHIM_E_RUNTIME, rc, "%s failed (code %d)", what, rc);
    return RKSHIM_OK;
}
