/* rkllm-cffi shim: one loaded model: its lifetime, its generation session and the result
 * queue between the runtime's thread and Python.
 *
 * Threads: the runtime calls back on its own thread (the "producer"); rkllm_run itself is
 * called on a runner thread the shim starts per generation; Python pulls batches (the
 * "consumer") with the GIL released; any thread may abort, end or close. One mutex guards
 * the state below; the callback only copies bytes into a buffer under it.
 *
 * Lifetime (a small state machine, so close from another thread is never a use-after-free):
 * open -> [session: start .. end]* -> closing -> closed -> free. close waits for the runner
 * and for any short runtime call in progress before rkllm_destroy; the struct itself lives
 * until rkshim_model_free, which Python calls when its last reference goes.
 *
 * Back-pressure: the producer buffer holds at most MAX_BATCH_TOKENS tokens / MAX_BATCH_TEXT
 * bytes; when the consumer does not drain, the callback waits (the runtime pauses) until it
 * does, or until the run is cancelled. Memory never grows without bound.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MAX_BATCH_TOKENS 65536
#define MAX_BATCH_TEXT (4u << 20)
#define ABORT_REPEAT_MS 20

struct rkshim_model {
    rkshim_runtime *rt;
    void *handle;
    pthread_mutex_t lock;
    pthread_cond_t data_cond;  /* consumer: data, done, closing */
    pthread_cond_t state_cond; /* producer space, run done, op finished, closed */
    int event_fd;              /* -1 until someone asks for it */

    int closing, closed;
    int op_active;             /* a short runtime call (clear_kv_cache, ...) is running */
    int session;               /* start() .. end() */
    unsigned long gen;         /* which session: bumped by every start() */
    int orphaned;              /* end() gave up waiting: the next start/op/close finishes it */
    int in_run;                /* the runner is inside rkllm_run */
    int run_done;              /* the runner has returned */
    int runner_live, join_claimed;
    pthread_t runner;

    int stop_wanted;           /* drop further output and ask the runtime to stop */
    int cancelled, limit_hit, abort_sent, terminal;
    int aborters;              /* helper threads inside rkllm_abort */
    int consumer_waiting, producer_waiting;

    rkshim_buf bufs[2];
    int prod;                  /* index of the producer's buffer; the other is the consumer's */
    unsigned char pending[4];  /* bytes of a character not complete yet */
    int pending_len;

    rkshim_job *job;
    int32_t max_tokens;
    rkshim_outcome outcome;
    double t_start, t_first, t_last;

    float *arrays[3];          /* indexed by RKSHIM_MODE_HIDDEN / RKSHIM_MODE_LOGITS */
    int rows[3], cols[3];

    void *kept[8];             /* what rkllm_init may keep pointers to (rkshim_model_keep) */
    int n_kept;
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

/* ---- the result queue ------------------------------------------------------------------ */

static int buf_reserve(rkshim_buf *b, size_t text_more) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        uint32_t *ends = realloc(b->ends, cap * sizeof *ends);
        if (!ends) return -1;
        b->ends = ends;
        int32_t *ids = realloc(b->ids, cap * sizeof *ids);
        if (!ids) return -1;
        b->ids = ids;
        b->cap = cap;
    }
    if (b->text_len + text_more > b->text_cap) {
        size_t cap = b->text_cap ? b->text_cap : 16384;
        while (cap < b->text_len + text_more) cap *= 2;
        char *text = realloc(b->text, cap);
        if (!text) return -1;
        b->text = text;
        b->text_cap = cap;
    }
    return 0;
}

static void buf_reset(rkshim_buf *b) {
    b->text_len = 0;
    b->n = 0;
    b->n_codepoints = 0;
}

static void put_replacement(rkshim_buf *b) {
    memcpy(b->text + b->text_len, "\xEF\xBF\xBD", 3);
    b->text_len += 3;
    b->n_codepoints++;
}

/* Appends the complete, valid characters of s to b (invalid bytes become U+FFFD, as
 * Python's "replace" would); a character cut at the end goes to pending. b must have room
 * for 3 * len bytes. */
static void utf8_take(rkshim_model *m, rkshim_buf *b, const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            size_t j = i + 1;
            while (j < len && s[j] < 0x80) j++;
            memcpy(b->text + b->text_len, s + i, j - i);
            b->text_len += j - i;
            b->n_codepoints += (uint32_t)(j - i);
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
            put_replacement(b);
            i++;
            continue;
        }
        size_t k = 1;
        for (; k <= need && i + k < len; k++) {
            unsigned d = s[i + k];
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) break;
        }
        if (k > need) { /* complete */
            memcpy(b->text + b->text_len, s + i, need + 1);
            b->text_len += need + 1;
            b->n_codepoints++;
            i += need + 1;
        } else if (i + k == len) { /* valid so far, cut by the end of this piece */
            m->pending_len = (int)(len - i);
            memcpy(m->pending, s + i, len - i);
            return;
        } else { /* broken sequence: one replacement for the valid prefix */
            put_replacement(b);
            i += k;
        }
    }
}

static void feed_text(rkshim_model *m, rkshim_buf *b, const char *text, size_t len) {
    if (m->pending_len == 0) {
        utf8_take(m, b, (const unsigned char *)text, len);
        return;
    }
    unsigned char small[256];
    size_t total = (size_t)m->pending_len + len;
    unsigned char *tmp = total <= sizeof small ? small : malloc(total);
    if (!tmp) {
        m->pending_len = 0;
        utf8_take(m, b, (const unsigned char *)text, len);
        return;
    }
    memcpy(tmp, m->pending, (size_t)m->pending_len);
    memcpy(tmp + m->pending_len, text, len);
    m->pending_len = 0;
    utf8_take(m, b, tmp, total);
    if (tmp != small) free(tmp);
}

static void notify_consumer(rkshim_model *m) {
    if (m->consumer_waiting) pthread_cond_signal(&m->data_cond);
    if (m->event_fd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(m->event_fd, &one, sizeof one);
        (void)w;
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
    pthread_mutex_lock(&m->lock);
    int mode = m->job ? m->job->a.mode : RKSHIM_MODE_GENERATE;
    if (ev->kind == EV_FINISH || ev->kind == EV_ERROR) {
        m->terminal = ev->kind == EV_FINISH ? RKSHIM_RUN_FINISHED : RKSHIM_RUN_ERROR;
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
    if (ev->kind != EV_TOKEN && ev->kind != EV_WAITING) {
        pthread_mutex_unlock(&m->lock);
        return 0;
    }
    if (m->stop_wanted) {
        pthread_mutex_unlock(&m->lock);
        return 0;
    }
    if (m->max_tokens >= 0 && m->outcome.n_tokens >= m->max_tokens) {
        m->limit_hit = m->stop_wanted = 1;
        notify_consumer(m); /* the consumer sends the abort */
        pthread_mutex_unlock(&m->lock);
        return 0;
    }
    size_t len = ev->text ? strlen(ev->text) : 0;
    rkshim_buf *b = &m->bufs[m->prod];
    /* back-pressure: wait for the consumer when the batch is full */
    while ((b->n >= MAX_BATCH_TOKENS ||
            (b->text_len > 0 && b->text_len + 3 * (len + 4) > MAX_BATCH_TEXT)) &&
           !m->stop_wanted && !m->closing) {
        m->producer_waiting++;
        pthread_cond_wait(&m->state_cond, &m->lock);
        m->producer_waiting--;
        b = &m->bufs[m->prod];
    }
    if (m->stop_wanted || m->closing) {
        pthread_mutex_unlock(&m->lock);
        return 0;
    }
    if (buf_reserve(b, 3 * (len + 4)) != 0) {
        pthread_mutex_unlock(&m->lock);
        return 0; /* out of memory: this token's text is lost, the run goes on */
    }
    int was_empty = b->n == 0;
    m->t_last = now_ms();
    if (m->outcome.n_tokens == 0) m->t_first = m->t_last;
    if (len) feed_text(m, b, ev->text, len);
    b->ends[b->n] = b->n_codepoints;
    b->ids[b->n] = ev->token_id;
    b->n++;
    m->outcome.n_tokens++;
    if (was_empty) notify_consumer(m);
    if (m->max_tokens >= 0 && m->outcome.n_tokens >= m->max_tokens) {
        m->limit_hit = m->stop_wanted = 1; /* the consumer sends the abort */
        notify_consumer(m);
    }
    pthread_mutex_unlock(&m->lock);
    return 0;
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
    rkshim_buf *b = &m->bufs[m->prod];
    if (m->pending_len) { /* the run ended inside a character */
        m->pending_len = 0;
        /* a run the shim stopped drops the partial character; one the runtime ended
         * there shows it as U+FFFD */
        if (!m->limit_hit && !m->cancelled && buf_reserve(b, 4) == 0) {
            put_replacement(b);
            b->ends[b->n] = b->n_codepoints;
            b->ids[b->n] = -1;
            b->n++;
        }
    }
    rkshim_outcome *o = &m->outcome;
    o->runtime_rc = rc;
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
    notify_consumer(m);
    pthread_cond_broadcast(&m->data_cond);
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
    rkshim_model *m = calloc(1, sizeof *m);
    if (!m) return rkshim_fail(RKSHIM_E_NOMEM, "out of memory");
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
    pthread_cond_broadcast(&m->data_cond);
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
    for (int i = 0; i < 2; i++) {
        free(m->bufs[i].text);
        free(m->bufs[i].ends);
        free(m->bufs[i].ids);
    }
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
    buf_reset(&m->bufs[0]);
    buf_reset(&m->bufs[1]);
    m->pending_len = 0;
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

int rkshim_model_pull(rkshim_model *m, rkshim_batch *out, int timeout_ms) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&m->lock);
    struct timespec deadline;
    if (timeout_ms > 0) deadline_after(&deadline, timeout_ms);
    int rc = RKSHIM_OK;
    for (;;) {
        if (m->closing || m->closed) {
            rc = rkshim_fail(RKSHIM_E_CLOSED, "the model was closed");
            break;
        }
        if (!m->session) {
            rc = rkshim_fail(RKSHIM_E_PARAM, "no generation in progress");
            break;
        }
        if (m->stop_wanted && !m->abort_sent && m->in_run)
            send_abort(m); /* the token limit was hit */
        rkshim_buf *p = &m->bufs[m->prod];
        if (p->n > 0) {
            m->prod ^= 1;
            buf_reset(&m->bufs[m->prod]);
            if (m->producer_waiting) pthread_cond_broadcast(&m->state_cond);
            out->text = p->text;
            out->text_len = p->text_len;
            out->ends = p->ends;
            out->token_ids = p->ids;
            out->n_tokens = p->n;
            out->done = m->run_done;
            break;
        }
        if (m->run_done) {
            out->done = 1;
            break;
        }
        if (timeout_ms == 0) break;
        m->consumer_waiting++;
        int w = timeout_ms < 0 ? pthread_cond_wait(&m->data_cond, &m->lock)
                               : pthread_cond_timedwait(&m->data_cond, &m->lock, &deadline);
        m->consumer_waiting--;
        if (w == ETIMEDOUT) timeout_ms = 0; /* one last look */
    }
    if (m->event_fd >= 0 && rc == RKSHIM_OK && !m->run_done) { /* consumed: unsignal */
        uint64_t v;
        ssize_t r = read(m->event_fd, &v, sizeof v);
        (void)r;
    }
    pthread_mutex_unlock(&m->lock);
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
    if (!m->run_done) out->status = RKSHIM_RUN_NONE;
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
        m->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        rkshim_buf *p = &m->bufs[m->prod];
        if (m->event_fd >= 0 && (p->n > 0 || m->run_done)) {
            uint64_t one = 1;
            ssize_t w = write(m->event_fd, &one, sizeof one);
            (void)w;
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
