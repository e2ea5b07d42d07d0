/* rkllm-cffi shim: one loaded model: its lifetime, its generation session and the result
 * queue between the runtime's thread and Python.
 *
 * Threads: the runtime calls back on its own thread (the "producer"); rkllm_run itself is
 * called on a runner thread the shim starts per generation; Python pulls batches (the
 * "consumer", one thread at a time) with the GIL released; any thread may abort, end or
 * close. One mutex guards the session state; the tokens themselves go through a
 * single-producer / single-consumer ring that takes no lock on the common path.
 *
 * The ring: the callback appends a token (its text, made valid UTF-8, and its id) and
 * publishes it with one atomic store; the consumer copies everything published into its own
 * batch buffers and hands them to Python. Nobody sleeps or signals while both keep up: the
 * consumer spins a few microseconds when the ring is empty, then sleeps on a condition
 * variable after saying so in `wake`, and only then does the producer take the lock to wake
 * it (the same for the eventfd: it is written only when an event loop waits on it).
 *
 * Lifetime (a small state machine, so close from another thread is never a use-after-free):
 * open -> [session: start .. end]* -> closing -> closed -> free. close waits for the runner
 * and for any short runtime call in progress before rkllm_destroy; the struct itself lives
 * until rkshim_model_free, which Python calls when its last reference goes.
 *
 * Back-pressure: the ring holds at most RING_TOKENS tokens / RING_TEXT bytes (one token
 * longer than BIG_TEXT travels in its own allocation, one at a time); when the consumer does
 * not drain, the callback waits (the runtime pauses) until it does, or until the run is
 * cancelled. Memory never grows without bound.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define RING_TOKENS 16384u         /* power of two */
#define RING_TEXT (256u << 10)     /* power of two */
#define BIG_TEXT (RING_TEXT / 4)   /* longer texts go in their own allocation */
#define SPIN_NS 5000               /* how long an empty-handed consumer spins before sleeping */
#define SPIN_POLL_NS 1000          /* how often it looks meanwhile */
#define ABORT_REPEAT_MS 20

enum { WAKE_COND = 1, WAKE_FD = 2 }; /* what the consumer waits on (bits of `wake`) */

typedef struct {
    uint32_t bytes;     /* text bytes in the ring (or in big) */
    uint32_t chars;     /* code points in them */
    int32_t id;
    char *big;          /* a text longer than BIG_TEXT, owned by the entry; else NULL */
} ring_entry;

struct rkshim_model {
    rkshim_runtime *rt;
    void *handle;
    pthread_mutex_t lock;
    pthread_cond_t data_cond;  /* consumer: data, done, closing */
    pthread_cond_t state_cond; /* producer space, run done, op finished, closed */
    _Atomic int event_fd;      /* -1 until someone asks for it */

    _Atomic int closing, closed;
    int op_active;             /* a short runtime call (clear_kv_cache, ...) is running */
    _Atomic int session;       /* start() .. end() */
    unsigned long gen;         /* which session: bumped by every start() */
    int orphaned;              /* end() gave up waiting: the next start/op/close finishes it */
    int in_run;                /* the runner is inside rkllm_run */
    _Atomic int run_done;      /* the runner has returned */
    int runner_live, join_claimed;
    pthread_t runner;

    _Atomic int stop_wanted;   /* drop further output and ask the runtime to stop */
    int cancelled, limit_hit, terminal;
    _Atomic int abort_sent;
    int aborters;              /* helper threads inside rkllm_abort */

    rkshim_job *job;
    int generate_mode;         /* the job generates text (no arrays to keep) */
    int32_t max_tokens;
    rkshim_outcome outcome;
    double t_start, t_first, t_last;

    float *arrays[3];          /* indexed by RKSHIM_MODE_HIDDEN / RKSHIM_MODE_LOGITS */
    int rows[3], cols[3];

    void *kept[8];             /* what rkllm_init may keep pointers to (rkshim_model_keep) */
    int n_kept;

    /* ---- the ring (allocated with the model) ---- */
    ring_entry *entries;       /* RING_TOKENS */
    char *text;                /* RING_TEXT */
    /* shared, each on its own cache line */
    _Alignas(64) _Atomic uint32_t head;      /* entries published (producer) */
    _Alignas(64) _Atomic uint32_t tail;      /* entries consumed (consumer) */
    _Atomic uint32_t text_tail;              /* text bytes consumed */
    _Alignas(64) _Atomic int wake;           /* WAKE_* the consumer waits on */
    _Atomic int producer_waiting;            /* the callback waits for room */
    _Atomic int fd_signalled;                /* the eventfd was written since the last reset */
    /* the producer's own */
    _Alignas(64) uint32_t p_head, p_text_head, p_tail_seen, p_text_tail_seen;
    _Atomic int32_t p_tokens;                /* tokens delivered in this run */
    unsigned char pending[4];                /* bytes of a character not complete yet */
    int pending_len;
    char *scratch;                           /* for a text too long for the stack */
    size_t scratch_cap;
    /* the consumer's own: the batch handed to Python (valid until the next pull) */
    _Alignas(64) _Atomic int consuming;      /* a thread is inside pull */
    uint32_t c_text_tail;
    char *c_text;
    size_t c_text_cap;
    uint32_t *c_ends;                        /* RING_TOKENS */
    int32_t *c_ids;                          /* RING_TOKENS */
};

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

static void deadline_after(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ---- UTF-8 ----------------------------------------------------------------------------- */

static size_t put_replacement(char *dst, uint32_t *chars) {
    memcpy(dst, "\xEF\xBF\xBD", 3);
    ++*chars;
    return 3;
}

/* Writes the complete, valid characters of s to dst (invalid bytes become U+FFFD, as
 * Python's "replace" would); a character cut at the end goes to pending. dst must have room
 * for 3 * len bytes. Returns the bytes written; adds the code points to *chars. */
static size_t utf8_take(rkshim_model *m, char *dst, const unsigned char *s, size_t len,
                        uint32_t *chars) {
    size_t i = 0, o = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            size_t j = i + 1;
            while (j < len && s[j] < 0x80) j++;
            memcpy(dst + o, s + i, j - i);
            o += j - i;
            *chars += (uint32_t)(j - i);
            i = j;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) { need = 2; lo = 0xA0; }
        else if (c == 0xED) { need = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) need = 2;
        else if (c == 0xF0) { need = 3; lo = 0x90; }
        else if (c == 0xF4) { need = 3; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else {
            o += put_replacement(dst + o, chars);
            i++;
            continue;
        }
        size_t k = 1;
        for (; k <= need && i + k < len; k++) {
            unsigned d = s[i + k];
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) break;
        }
        if (k > need) { /* complete */
            memcpy(dst + o, s + i, need + 1);
            o += need + 1;
            ++*chars;
            i += need + 1;
        } else if (i + k == len) { /* valid so far, cut by the end of this piece */
            m->pending_len = (int)(len - i);
            memcpy(m->pending, s + i, len - i);
            break;
        } else { /* broken sequence: one replacement for the valid prefix */
            o += put_replacement(dst + o, chars);
            i += k;
        }
    }
    return o;
}

/* ---- the result queue: producer side (the runtime's thread) ---------------------------- */

static void write_event_fd(rkshim_model *m) {
    int fd = atomic_load(&m->event_fd);
    if (fd < 0) return;
    uint64_t one = 1;
    ssize_t w = write(fd, &one, sizeof one);
    (void)w;
    atomic_store(&m->fd_signalled, 1);
}

/* Wakes the consumer if it said it waits (any thread, without the lock). */
static void wake_consumer(rkshim_model *m) {
    if (!atomic_load(&m->wake)) return;
    int w = atomic_exchange(&m->wake, 0);
    if (w & WAKE_FD) write_event_fd(m);
    if (w & WAKE_COND) {
        /* the consumer armed WAKE_COND with the lock held and holds it until it waits:
         * once we had the lock, it waits; signalled after unlocking, it does not wake up
         * only to block on the lock we hold */
        pthread_mutex_lock(&m->lock);
        pthread_mutex_unlock(&m->lock);
        pthread_cond_signal(&m->data_cond);
    }
}

/* The same with the lock held. */
static void wake_consumer_locked(rkshim_model *m) {
    int w = atomic_exchange(&m->wake, 0);
    if (w & WAKE_FD) write_event_fd(m);
    pthread_cond_broadcast(&m->data_cond);
}

/* Is there room for one entry and text bytes of text (or, for a big text, is the ring
 * empty)? Re-reads the consumer's position only when the last one seen is not enough. */
static int has_room(rkshim_model *m, uint32_t text, int big) {
    for (int fresh = 0;; fresh = 1) {
        uint32_t used = m->p_head - m->p_tail_seen;
        if (big ? used == 0
                : used < RING_TOKENS && m->p_text_head - m->p_text_tail_seen + text <= RING_TEXT)
            return 1;
        if (fresh) return 0;
        m->p_tail_seen = atomic_load(&m->tail);
        m->p_text_tail_seen = atomic_load(&m->text_tail);
    }
}

/* Waits for room; 0 when there is some, -1 when the run is being stopped. */
static int wait_room(rkshim_model *m, uint32_t text, int big) {
    pthread_mutex_lock(&m->lock);
    atomic_store(&m->producer_waiting, 1);
    int ok;
    while (!(ok = has_room(m, text, big)) && !m->stop_wanted && !m->closing)
        pthread_cond_wait(&m->state_cond, &m->lock);
    atomic_store(&m->producer_waiting, 0);
    pthread_mutex_unlock(&m->lock);
    return ok && !m->stop_wanted && !m->closing ? 0 : -1;
}

/* Appends one token (text already valid UTF-8) and publishes it; -1 if it was dropped. */
static int push(rkshim_model *m, const char *text, uint32_t bytes, uint32_t chars, int32_t id) {
    int big = bytes > BIG_TEXT;
    uint32_t in_ring = big ? 0 : bytes;
    if (!has_room(m, in_ring, big) && wait_room(m, in_ring, big) != 0) return -1;
    ring_entry *e = &m->entries[m->p_head & (RING_TOKENS - 1)];
    e->bytes = bytes;
    e->chars = chars;
    e->id = id;
    e->big = NULL;
    if (big) {
        e->big = malloc(bytes);
        if (e->big) memcpy(e->big, text, bytes);
        else e->bytes = e->chars = 0; /* out of memory: this token's text is lost */
    } else if (bytes) {
        uint32_t at = m->p_text_head & (RING_TEXT - 1), first = RING_TEXT - at;
        if (first > bytes) first = bytes;
        memcpy(m->text + at, text, first);
        memcpy(m->text, text + first, bytes - first);
        m->p_text_head += bytes;
    }
    m->p_head++;
    atomic_store(&m->head, m->p_head); /* publish; seq_cst: ordered before reading wake */
    wake_consumer(m);
    return 0;
}

/* Makes text valid UTF-8 (with the bytes held back from the last token) and pushes it. */
static int push_text(rkshim_model *m, const char *text, size_t len, int32_t id) {
    unsigned char joined_small[256];
    char out_small[3 * sizeof joined_small];
    size_t total = (size_t)m->pending_len + len;
    const unsigned char *src = (const unsigned char *)text;
    unsigned char *joined = joined_small;
    char *out = out_small;
    if (total > sizeof joined_small) { /* rare: one scratch allocation, kept and reused */
        size_t need = total + 3 * total;
        if (need > m->scratch_cap) {
            char *s = realloc(m->scratch, need);
            if (!s) {
                m->pending_len = 0;
                return push(m, "", 0, 0, id); /* out of memory: the token, without its text */
            }
            m->scratch = s;
            m->scratch_cap = need;
        }
        joined = (unsigned char *)m->scratch;
        out = m->scratch + total;
    }
    if (m->pending_len) {
        memcpy(joined, m->pending, (size_t)m->pending_len);
        memcpy(joined + m->pending_len, text, len);
        m->pending_len = 0;
        src = joined;
    }
    uint32_t chars = 0;
    size_t bytes = utf8_take(m, out, src, total, &chars);
    if (bytes > UINT32_MAX / 2) bytes = 0, chars = 0; /* a text of gigabytes: not shown */
    return push(m, out, (uint32_t)bytes, chars, id);
}

/* With the lock held: the token limit is reached; the consumer sends the abort. */
static void hit_limit_locked(rkshim_model *m) {
    m->limit_hit = 1;
    m->stop_wanted = 1;
    wake_consumer_locked(m);
}

static void deliver_token(rkshim_model *m, const char *text, int32_t id) {
    if (m->stop_wanted || m->closing) return; /* output after a stop is dropped */
    int32_t n = atomic_load_explicit(&m->p_tokens, memory_order_relaxed);
    if (m->max_tokens >= 0 && n >= m->max_tokens) {
        pthread_mutex_lock(&m->lock);
        hit_limit_locked(m);
        pthread_mutex_unlock(&m->lock);
        return;
    }
    if (n == 0) {
        pthread_mutex_lock(&m->lock);
        m->t_first = now_ms();
        pthread_mutex_unlock(&m->lock);
    }
    if (push_text(m, text ? text : "", text ? strlen(text) : 0, id) != 0) return;
    atomic_store_explicit(&m->p_tokens, ++n, memory_order_relaxed);
    if (m->max_tokens >= 0 && n >= m->max_tokens) {
        pthread_mutex_lock(&m->lock);
        hit_limit_locked(m);
        pthread_mutex_unlock(&m->lock);
    }
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
}

int rkshim_deliver(rkshim_model *m, const rkshim_event *ev) {
    if (!m) return 0;
    int is_token = ev->kind == EV_TOKEN || ev->kind == EV_WAITING;
    if (is_token && m->generate_mode) { /* the common path: no lock */
        deliver_token(m, ev->text, ev->token_id);
        return 0;
    }
    if (ev->kind == EV_FINISH || ev->kind == EV_ERROR) {
        /* the run ended inside a character: a run the shim stopped drops it; one the
         * runtime ended there shows it as U+FFFD (a piece that is not a token) */
        if (m->pending_len) {
            m->pending_len = 0;
            if (!m->stop_wanted && !m->closing) {
                char rep[3];
                uint32_t chars = 0;
                push(m, rep, (uint32_t)put_replacement(rep, &chars), chars, -1);
            }
        }
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

/* ---- the result queue: consumer side (Python, GIL released) ----------------------------- */

/* Copies every published token into the consumer's batch buffers; returns how many. */
static size_t take(rkshim_model *m, rkshim_batch *out) {
    uint32_t head = atomic_load_explicit(&m->head, memory_order_acquire);
    uint32_t tail = atomic_load_explicit(&m->tail, memory_order_relaxed);
    uint32_t n = head - tail;
    if (!n) return 0;
    size_t text_bytes = 0, ring_bytes = 0;
    int any_big = 0;
    for (uint32_t i = tail; i != head; i++) {
        const ring_entry *e = &m->entries[i & (RING_TOKENS - 1)];
        text_bytes += e->bytes;
        if (e->big) any_big = 1;
        else ring_bytes += e->bytes;
    }
    if (text_bytes + 1 > m->c_text_cap) {
        size_t cap = m->c_text_cap * 2 > text_bytes + 1 ? m->c_text_cap * 2 : text_bytes + 1;
        char *t = realloc(m->c_text, cap);
        if (t) m->c_text = t, m->c_text_cap = cap;
    }
    int fits = text_bytes + 1 <= m->c_text_cap; /* else (out of memory): tokens without text */
    uint32_t at = m->c_text_tail;
    size_t o = 0;
    uint32_t chars = 0;
    if (!any_big && fits && ring_bytes) { /* the common case: one or two copies */
        uint32_t from = at & (RING_TEXT - 1), first = RING_TEXT - from;
        if (first > ring_bytes) first = (uint32_t)ring_bytes;
        memcpy(m->c_text, m->text + from, first);
        memcpy(m->c_text + first, m->text, ring_bytes - first);
        o = ring_bytes;
        at += (uint32_t)ring_bytes;
    }
    for (uint32_t i = tail, k = 0; i != head; i++, k++) {
        ring_entry *e = &m->entries[i & (RING_TOKENS - 1)];
        if (any_big || !fits) {
            if (e->big) {
                if (fits) memcpy(m->c_text + o, e->big, e->bytes);
                free(e->big);
                e->big = NULL;
            } else {
                uint32_t from = at & (RING_TEXT - 1), first = RING_TEXT - from;
                if (first > e->bytes) first = e->bytes;
                if (fits) {
                    memcpy(m->c_text + o, m->text + from, first);
                    memcpy(m->c_text + o + first, m->text, e->bytes - first);
                }
                at += e->bytes;
            }
            if (fits) o += e->bytes;
        }
        if (fits) chars += e->chars;
        m->c_ends[k] = chars;
        m->c_ids[k] = e->id;
    }
    m->c_text_tail = at;
    atomic_store(&m->text_tail, at);
    atomic_store(&m->tail, head); /* seq_cst: ordered before reading producer_waiting */
    if (atomic_load(&m->producer_waiting)) {
        pthread_mutex_lock(&m->lock);
        pthread_cond_broadcast(&m->state_cond);
        pthread_mutex_unlock(&m->lock);
    }
    out->text = m->c_text;
    out->text_len = o;
    out->ends = m->c_ends;
    out->token_ids = m->c_ids;
    out->n_tokens = n;
    return n;
}

/* Nothing to take, nothing to report: the consumer would have to wait. */
static int idle(rkshim_model *m) {
    return atomic_load(&m->head) == atomic_load_explicit(&m->tail, memory_order_relaxed) &&
           !m->run_done && !m->closing && !m->closed && !(m->stop_wanted && !m->abort_sent);
}

/* With the lock held (start, free): empties the ring; no producer or consumer is active. */
static void ring_reset(rkshim_model *m) {
    uint32_t head = atomic_load(&m->head);
    for (uint32_t i = atomic_load(&m->tail); i != head; i++) {
        ring_entry *e = &m->entries[i & (RING_TOKENS - 1)];
        free(e->big);
        e->big = NULL;
    }
    atomic_store(&m->head, 0);
    atomic_store(&m->tail, 0);
    atomic_store(&m->text_tail, 0);
    atomic_store(&m->wake, 0);
    atomic_store(&m->producer_waiting, 0);
    m->p_head = m->p_text_head = m->p_tail_seen = m->p_text_tail_seen = 0;
    atomic_store(&m->p_tokens, 0);
    m->pending_len = 0;
    m->c_text_tail = 0;
}

/* ---- the runner ------------------------------------------------------------------------ */

static void *runner_main(void *arg) {
    rkshim_model *m = arg;
    pthread_mutex_lock(&m->lock);
    int skip = m->stop_wanted; /* cancelled before it began */
    m->in_run = !skip;
    m->t_start = now_ms();
    pthread_mutex_unlock(&m->lock);
    int rc = skip ? 0 : m->rt->family->run(m->rt, m->handle, m->job, m);
    pthread_mutex_lock(&m->lock);
    m->in_run = 0;
    double t_end = now_ms();
    /* (bytes held back from a character are flushed by the final callback, on the
     * runtime's thread: this thread never writes to the ring) */
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
    wake_consumer_locked(m);
    write_event_fd(m); /* the end is always signalled */
    pthread_cond_broadcast(&m->state_cond);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* rkllm_abort may block until the run has stopped (the simulator's does, and a real
 * runtime may), so it is called from a short-lived helper thread: whoever asks for a stop
 * can still wait with a time limit. close() waits for these threads before destroying. */
static void *aborter_main(void *arg) {
    rkshim_model *m = arg;
    ((int (*)(void *))m->rt->sym[SYM_abort])(m->handle);
    pthread_mutex_lock(&m->lock);
    m->aborters--;
    pthread_cond_broadcast(&m->state_cond);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* With the lock held: one abort in flight at a time, while the runner is inside rkllm_run. */
static void send_abort(rkshim_model *m) {
    if (!m->in_run || m->aborters) return;
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
                m->stop_wanted = 1;
                if (!m->limit_hit) m->cancelled = 1;
                pthread_cond_broadcast(&m->state_cond); /* a producer waiting for room */
            }
            send_abort(m); /* repeated: an abort sent just before rkllm_run began is lost */
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

/* ---- lifetime -------------------------------------------------------------------------- */

int rkshim_model_open(rkshim_runtime *rt, const char *model_path, const rkshim_param *param,
                      rkshim_model **out) {
    rkshim_clear_error();
    *out = NULL;
    if (!rt || !model_path || !param) return rkshim_fail(RKSHIM_E_PARAM, "NULL argument");
    rkshim_model *m = aligned_alloc(64, (sizeof *m + 63) / 64 * 64);
    if (!m) return rkshim_fail(RKSHIM_E_NOMEM, "out of memory");
    memset(m, 0, sizeof *m);
    m->entries = malloc(RING_TOKENS * sizeof *m->entries);
    m->text = malloc(RING_TEXT);
    m->c_ends = malloc(RING_TOKENS * sizeof *m->c_ends);
    m->c_ids = malloc(RING_TOKENS * sizeof *m->c_ids);
    if (!m->entries || !m->text || !m->c_ends || !m->c_ids) {
        free(m->entries); free(m->text); free(m->c_ends); free(m->c_ids);
        free(m);
        return rkshim_fail(RKSHIM_E_NOMEM, "out of memory");
    }
    m->rt = rt;
    m->event_fd = -1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&m->data_cond, &attr);
    pthread_cond_init(&m->state_cond, &attr);
    pthread_condattr_destroy(&attr);

    rkshim_capture cap;
    rkshim_capture_begin(&cap);
    void *handle = NULL;
    int rc = rt->family->init(rt, &handle, model_path, param, m);
    rkshim_capture_end(&cap);
    if (rc != 0 || !handle) {
        if (rc == 0)
            rkshim_fail_rc(RKSHIM_E_LOAD, 0,
                           "rkllm_init returned 0 but no model handle (out of memory?)");
        else
            rkshim_fail_rc(RKSHIM_E_LOAD, rc, "rkllm_init failed for %s (code %d)", model_path,
                           rc);
        m->closed = 1;
        rkshim_model_free(m);
        return RKSHIM_E_LOAD;
    }
    m->handle = handle;
    *out = m;
    return RKSHIM_OK;
}

int rkshim_model_close(rkshim_model *m) {
    rkshim_clear_error();
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
    wake_consumer_locked(m);
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
    if (!m->closed) rkshim_model_close(m);
    pthread_mutex_lock(&m->lock);
    int busy = m->aborters || (m->runner_live && !m->run_done);
    pthread_mutex_unlock(&m->lock);
    if (busy) return; /* a runtime that never stopped: leak rather than free under it */
    ring_reset(m);
    free(m->entries);
    free(m->text);
    free(m->scratch);
    free(m->c_text);
    free(m->c_ends);
    free(m->c_ids);
    for (int i = 0; i < 3; i++) free(m->arrays[i]);
    for (int i = 0; i < m->n_kept; i++) free(m->kept[i]);
    free(m->job);
    if (m->event_fd >= 0) close(m->event_fd);
    pthread_cond_destroy(&m->data_cond);
    pthread_cond_destroy(&m->state_cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

int rkshim_model_is_closed(rkshim_model *m) {
    pthread_mutex_lock(&m->lock);
    int closed = m->closed || m->closing;
    pthread_mutex_unlock(&m->lock);
    return closed;
}

/* ---- generation ------------------------------------------------------------------------ */

static char *copy_str(char **cursor, const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = memcpy(*cursor, s, n);
    *cursor += n;
    return d;
}

static void *copy_mem(char **cursor, const void *p, size_t n) {
    if (!p) return NULL;
    *cursor = (char *)(((uintptr_t)*cursor + 7) & ~(uintptr_t)7);
    void *d = memcpy(*cursor, p, n);
    *cursor += n;
    return d;
}

/* One allocation holding the args and copies of everything they point to. */
static rkshim_job *copy_job(const rkshim_run_args *a) {
    const char *strs[] = {a->role, a->prompt, a->image_start, a->image_end, a->image_content,
                          a->lora_adapter_name, a->save_prompt_cache_path};
    size_t size = sizeof(rkshim_job) + 64;
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (strs[i]) size += strlen(strs[i]) + 1;
    size += a->n_token_ids * sizeof(int32_t) + 8;
    size += a->n_embed_floats * sizeof(float) + 8;
    size += a->n_image_floats * sizeof(float) + 8;
    rkshim_job *job = malloc(size);
    if (!job) return NULL;
    job->a = *a;
    char *cur = (char *)(job + 1);
    rkshim_run_args *c = &job->a;
    c->token_ids = copy_mem(&cur, a->token_ids, a->n_token_ids * sizeof(int32_t));
    c->embed = copy_mem(&cur, a->embed, a->n_embed_floats * sizeof(float));
    c->image_embed = copy_mem(&cur, a->image_embed, a->n_image_floats * sizeof(float));
    c->role = copy_str(&cur, a->role);
    c->prompt = copy_str(&cur, a->prompt);
    c->image_start = copy_str(&cur, a->image_start);
    c->image_end = copy_str(&cur, a->image_end);
    c->image_content = copy_str(&cur, a->image_content);
    c->lora_adapter_name = copy_str(&cur, a->lora_adapter_name);
    c->save_prompt_cache_path = copy_str(&cur, a->save_prompt_cache_path);
    return job;
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

int rkshim_model_start(rkshim_model *m, const rkshim_run_args *args) {
    rkshim_clear_error();
    rkshim_job *job = copy_job(args);
    if (!job) return rkshim_fail(RKSHIM_E_NOMEM, "out of memory");
    pthread_mutex_lock(&m->lock);
    reap_orphan(m);
    int rc = RKSHIM_OK;
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
    ring_reset(m);
    m->stop_wanted = m->cancelled = m->limit_hit = m->abort_sent = m->terminal = 0;
    m->run_done = m->in_run = 0;
    m->max_tokens = args->max_new_tokens;
    memset(&m->outcome, 0, sizeof m->outcome);
    m->t_first = m->t_last = 0;
    for (int i = 0; i < 3; i++) m->rows[i] = m->cols[i] = 0;
    if (m->event_fd >= 0) { /* a fresh run starts unsignalled */
        uint64_t v;
        ssize_t r = read(m->event_fd, &v, sizeof v);
        (void)r;
        atomic_store(&m->fd_signalled, 0);
    }
    int err = pthread_create(&m->runner, NULL, runner_main, m);
    if (err != 0) {
        pthread_mutex_unlock(&m->lock);
        return rkshim_fail(RKSHIM_E_NOMEM, "cannot start the generation thread: %s",
                           strerror(err));
    }
    m->session = 1;
    m->gen++;
    m->runner_live = 1;
    pthread_mutex_unlock(&m->lock);
    return RKSHIM_OK;
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
        if (m->closing || m->closed) return rkshim_fail(RKSHIM_E_CLOSED, "the model was closed");
        if (!m->session) return rkshim_fail(RKSHIM_E_PARAM, "no generation in progress");
        if (m->stop_wanted && !m->abort_sent) { /* e.g. the token limit was hit */
            pthread_mutex_lock(&m->lock);
            if (m->stop_wanted && !m->abort_sent && m->in_run) send_abort(m);
            pthread_mutex_unlock(&m->lock);
        }
        int done = m->run_done; /* read first: everything published before it is taken */
        if (take(m, out) || done) {
            out->done = done;
            return RKSHIM_OK;
        }
        if (timeout_ms == 0) return RKSHIM_OK;
        if (!spun) {
            spun = 1;
            spin(m);
            continue;
        }
        pthread_mutex_lock(&m->lock);
        atomic_fetch_or(&m->wake, WAKE_COND); /* from here on the producer wakes us */
        if (idle(m)) {
            if (timeout_ms > 0 && !have_deadline) {
                deadline_after(&deadline, timeout_ms);
                have_deadline = 1;
            }
            int w = timeout_ms < 0 ? pthread_cond_wait(&m->data_cond, &m->lock)
                                   : pthread_cond_timedwait(&m->data_cond, &m->lock, &deadline);
            if (w == ETIMEDOUT) timeout_ms = 0; /* one last look */
        }
        atomic_fetch_and(&m->wake, ~WAKE_COND);
        pthread_mutex_unlock(&m->lock);
    }
}

static void reset_event_fd(rkshim_model *m) {
    uint64_t v;
    ssize_t r = read(m->event_fd, &v, sizeof v);
    (void)r;
}

int rkshim_model_pull(rkshim_model *m, rkshim_batch *out, int timeout_ms) {
    memset(out, 0, sizeof *out);
    if (atomic_exchange(&m->consuming, 1))
        return rkshim_fail(RKSHIM_E_BUSY, "another thread is reading this generation");
    int rc = pull_inner(m, out, timeout_ms);
    if (rc == RKSHIM_OK && !out->done && m->event_fd >= 0) {
        if (out->n_tokens) { /* consumed: unsignal (the end stays signalled) */
            if (atomic_exchange(&m->fd_signalled, 0)) reset_event_fd(m);
        } else if (timeout_ms == 0) {
            /* an event loop is about to wait on the fd: reset it, ask the producer to
             * write it, and look once more (something may have come in meanwhile) */
            atomic_store(&m->fd_signalled, 0);
            reset_event_fd(m);
            atomic_fetch_or(&m->wake, WAKE_FD);
            if (!idle(m)) wake_consumer(m);
        }
    }
    atomic_store(&m->consuming, 0);
    return rc;
}

int rkshim_model_abort(rkshim_model *m) {
    rkshim_clear_error();
    pthread_mutex_lock(&m->lock);
    if (m->session && !m->run_done) {
        m->stop_wanted = 1;
        if (!m->limit_hit) m->cancelled = 1;
        pthread_cond_broadcast(&m->state_cond);
        send_abort(m);
    }
    pthread_mutex_unlock(&m->lock);
    return RKSHIM_OK;
}

int rkshim_model_end(rkshim_model *m, int timeout_ms, rkshim_outcome *out) {
    rkshim_clear_error();
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
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int rkshim_model_outcome(rkshim_model *m, rkshim_outcome *out) {
    pthread_mutex_lock(&m->lock);
    *out = m->outcome;
    if (!m->run_done) {
        out->status = RKSHIM_RUN_NONE;
        out->n_tokens = atomic_load(&m->p_tokens);
    }
    pthread_mutex_unlock(&m->lock);
    return RKSHIM_OK;
}

int rkshim_model_array(rkshim_model *m, int kind, const float **data, int *rows, int *cols) {
    *data = NULL;
    *rows = *cols = 0;
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
    pthread_mutex_lock(&m->lock);
    if (m->event_fd < 0) {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd >= 0) {
            m->event_fd = fd;
            atomic_fetch_or(&m->wake, WAKE_FD); /* readable as soon as a pull would not block */
            if (!idle(m)) wake_consumer_locked(m);
        }
    }
    int fd = m->event_fd;
    pthread_mutex_unlock(&m->lock);
    if (fd < 0) return rkshim_fail(RKSHIM_E_NOMEM, "eventfd: %s", strerror(errno));
    return fd;
}

/* ---- the other runtime functions ------------------------------------------------------- */

static int op_begin(rkshim_model *m) {
    rkshim_clear_error();
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

static int op_end(rkshim_model *m, int rc, const char *what) {
    pthread_mutex_lock(&m->lock);
    m->op_active = 0;
    pthread_cond_broadcast(&m->state_cond);
    pthread_mutex_unlock(&m->lock);
    if (rc != 0) return rkshim_fail_rc(RKSHIM_E_RUNTIME, rc, "%s failed (code %d)", what, rc);
    return RKSHIM_OK;
}

#define NEED(index, what)                                                                   \
    do {                                                                                    \
        if (!m->rt->sym[index])                                                             \
            return rkshim_fail(RKSHIM_E_MISSING, "%s is not in RKLLM runtime family %s",    \
                               what, m->rt->family->name);                                  \
    } while (0)

int rkshim_model_clear_kv_cache(rkshim_model *m, int keep_system_prompt, int *start_pos,
                                int *end_pos) {
    NEED(SYM_clear_kv_cache, "rkllm_clear_kv_cache");
    int rc = op_begin(m);
    if (rc) return rc;
    rc = m->rt->family->clear_kv_cache(m->rt, m->handle, keep_system_prompt, start_pos, end_pos);
    return op_end(m, rc, "rkllm_clear_kv_cache");
}

int rkshim_model_kv_cache_size(rkshim_model *m, int *sizes, int n_sizes) {
    NEED(SYM_get_kv_cache_size, "rkllm_get_kv_cache_size");
    if (n_sizes < 100) return rkshim_fail(RKSHIM_E_PARAM, "room for 100 sizes (n_batch) needed");
    int rc = op_begin(m);
    if (rc) return rc;
    rc = ((int (*)(void *, int *))m->rt->sym[SYM_get_kv_cache_size])(m->handle, sizes);
    return op_end(m, rc, "rkllm_get_kv_cache_size");
}

int rkshim_model_set_chat_template(rkshim_model *m, const char *system_prompt,
                                   const char *prompt_prefix, const char *prompt_postfix) {
    NEED(SYM_set_chat_template, "rkllm_set_chat_template");
    int rc = op_begin(m);
    if (rc) return rc;
    rc = ((int (*)(void *, const char *, const char *, const char *))
              m->rt->sym[SYM_set_chat_template])(m->handle, system_prompt, prompt_prefix,
                                                 prompt_postfix);
    return op_end(m, rc, "rkllm_set_chat_template");
}

int rkshim_model_set_function_tools(rkshim_model *m, const char *system_prompt,
                                    const char *tools, const char *tool_response_str) {
    NEED(SYM_set_function_tools, "rkllm_set_function_tools");
    int rc = op_begin(m);
    if (rc) return rc;
    rc = ((int (*)(void *, const char *, const char *, const char *))
              m->rt->sym[SYM_set_function_tools])(m->handle, system_prompt, tools,
                                                  tool_response_str);
    return op_end(m, rc, "rkllm_set_function_tools");
}

int rkshim_model_load_lora(rkshim_model *m, const char *path, const char *name, float scale) {
    NEED(SYM_load_lora, "rkllm_load_lora");
    int rc = op_begin(m);
    if (rc) return rc;
    rkshim_capture cap;
    rkshim_capture_begin(&cap);
    rc = m->rt->family->load_lora(m->rt, m->handle, path, name, scale);
    rkshim_capture_end(&cap);
    return op_end(m, rc, "rkllm_load_lora");
}

int rkshim_model_load_prompt_cache(rkshim_model *m, const char *path) {
    NEED(SYM_load_prompt_cache, "rkllm_load_prompt_cache");
    int rc = op_begin(m);
    if (rc) return rc;
    rkshim_capture cap;
    rkshim_capture_begin(&cap);
    rc = ((int (*)(void *, const char *))m->rt->sym[SYM_load_prompt_cache])(m->handle, path);
    rkshim_capture_end(&cap);
    return op_end(m, rc, "rkllm_load_prompt_cache");
}

int rkshim_model_release_prompt_cache(rkshim_model *m) {
    NEED(SYM_release_prompt_cache, "rkllm_release_prompt_cache");
    int rc = op_begin(m);
    if (rc) return rc;
    rc = ((int (*)(void *))m->rt->sym[SYM_release_prompt_cache])(m->handle);
    return op_end(m, rc, "rkllm_release_prompt_cache");
}

int rkshim_model_is_running(rkshim_model *m) {
    pthread_mutex_lock(&m->lock);
    int running = m->session && !m->run_done;
    pthread_mutex_unlock(&m->lock);
    return running;
}
