/*
 * The pure-C consumer of the runtime: the limit any binding is measured against.
 *
 * cc_run(.., threaded=0): the result callback copies each token's text into a buffer on the
 *   runtime's own thread (no other work at all): the floor for "getting the text out".
 * cc_run(.., threaded=1): the runtime runs on a worker thread; the callback appends to a
 *   mutex/condvar ring and the calling thread (the consumer) wakes up to take the text, as an
 *   application would: the floor for latency at a board's pace (one futex wake per token).
 * Called from Python through ctypes (which releases the GIL), so it runs in the same process
 * and the same interleaved repetitions as the Python designs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rkllm.h"

#define CC_API __attribute__((visibility("default")))
#define RING_BYTES (1 << 20)

typedef struct {
    int64_t run_ns;    /* from the run call to the consumer holding the last text */
    int64_t first_ns;  /* from the run call to the consumer holding the first text */
    int64_t tokens;    /* callbacks that carried a token (NORMAL, or WAITING: part of a character) */
    int64_t bytes;     /* text bytes received */
    int64_t cpu_ns;    /* process CPU time over the run */
    int64_t wakeups;   /* consumer wake-ups (threaded mode) */
    int32_t final_state;
} cc_stats;

struct cc {
    void *lib;
    LLMHandle handle;
    int (*run)(LLMHandle, RKLLMInput *, RKLLMInferParam *, void *);
    int (*destroy)(LLMHandle);
    int threaded;
    /* sync mode */
    char sink[4096];
    size_t sink_pos;
    /* both modes */
    int64_t t_start, t_first, tokens, bytes;
    int finished;
    int32_t final_state;
    /* threaded mode: ring of text bytes */
    pthread_mutex_t lock;
    pthread_cond_t ready, space;
    char *ring;
    size_t head, tail; /* produced / consumed byte counts */
    const char *prompt;
    int run_rc;
};

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int callback(RKLLMResult *result, void *userdata, LLMCallState state) {
    struct cc *c = userdata;
    if (state == RKLLM_RUN_NORMAL && result && result->text) {
        size_t n = strlen(result->text);
        if (!c->threaded) {
            /* copy the text out, as any consumer must; wrap instead of growing */
            if (c->sink_pos + n > sizeof c->sink) c->sink_pos = 0;
            if (n > sizeof c->sink) n = sizeof c->sink;
            memcpy(c->sink + c->sink_pos, result->text, n);
            c->sink_pos += n;
            if (!c->tokens) c->t_first = now_ns();
            c->tokens++;
            c->bytes += n;
            return 0;
        }
        if (n > RING_BYTES) n = RING_BYTES;
        pthread_mutex_lock(&c->lock);
        while (c->head - c->tail + n > RING_BYTES) pthread_cond_wait(&c->space, &c->lock);
        for (size_t i = 0; i < n; i++) c->ring[(c->head + i) & (RING_BYTES - 1)] = result->text[i];
        c->head += n;
        c->tokens++;
        pthread_cond_signal(&c->ready);
        pthread_mutex_unlock(&c->lock);
    } else if (state == RKLLM_RUN_WAITING) {
        if (c->threaded) pthread_mutex_lock(&c->lock);
        c->tokens++;
        if (c->threaded) pthread_mutex_unlock(&c->lock);
    } else if (state == RKLLM_RUN_FINISH || state == RKLLM_RUN_ERROR) {
        if (c->threaded) pthread_mutex_lock(&c->lock);
        c->finished = 1;
        c->final_state = state;
        if (c->threaded) {
            pthread_cond_signal(&c->ready);
            pthread_mutex_unlock(&c->lock);
        }
    }
    return 0;
}

static int run_prompt(struct cc *c) {
    RKLLMInput input;
    memset(&input, 0, sizeof input);
    input.role = "user";
    input.input_type = RKLLM_INPUT_PROMPT;
    input.prompt_input = c->prompt;
    RKLLMInferParam infer;
    memset(&infer, 0, sizeof infer);
    infer.mode = RKLLM_INFER_GENERATE;
    return c->run(c->handle, &input, &infer, c);
}

static void *worker(void *arg) {
    struct cc *c = arg;
    int rc = run_prompt(c);
    pthread_mutex_lock(&c->lock);
    c->run_rc = rc;
    if (rc != 0) c->finished = 1;
    pthread_cond_signal(&c->ready);
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

CC_API void *cc_open(const char *lib_path, const char *model_path, int max_new_tokens, int max_context_len,
                     int top_k) {
    struct cc *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
    if (!c->lib) { fprintf(stderr, "cconsumer: %s\n", dlerror()); free(c); return NULL; }
    RKLLMParam (*defaults)(void) = (RKLLMParam(*)(void))dlsym(c->lib, "rkllm_createDefaultParam");
    int (*init)(LLMHandle *, RKLLMParam *, LLMResultCallback) =
        (int (*)(LLMHandle *, RKLLMParam *, LLMResultCallback))dlsym(c->lib, "rkllm_init");
    c->run = (int (*)(LLMHandle, RKLLMInput *, RKLLMInferParam *, void *))dlsym(c->lib, "rkllm_run");
    c->destroy = (int (*)(LLMHandle))dlsym(c->lib, "rkllm_destroy");
    if (!defaults || !init || !c->run || !c->destroy) {
        fprintf(stderr, "cconsumer: %s lacks the rkllm_* entry points\n", lib_path);
        dlclose(c->lib); free(c); return NULL;
    }
    RKLLMParam p = defaults();
    p.model_path = model_path;
    p.max_new_tokens = max_new_tokens;
    p.max_context_len = max_context_len;
    p.top_k = top_k;
    p.is_async = false;
    int rc = init(&c->handle, &p, callback);
    if (rc != 0) {
        fprintf(stderr, "cconsumer: rkllm_init failed (%d)\n", rc);
        dlclose(c->lib); free(c); return NULL;
    }
    c->ring = malloc(RING_BYTES);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->ready, NULL);
    pthread_cond_init(&c->space, NULL);
    return c;
}

/*
 * One generation. In threaded mode the consumer records, for each wake-up, the time it held
 * the text and the cumulative byte count (up to `cap` entries in recv_ns / recv_bytes), which
 * the benchmark matches against the tap's callback entry times for latency.
 */
CC_API int cc_run(void *handle, const char *prompt, int threaded, int64_t *recv_ns, int64_t *recv_bytes,
                  long cap, cc_stats *out) {
    struct cc *c = handle;
    memset(out, 0, sizeof *out);
    c->threaded = threaded;
    c->prompt = prompt;
    c->tokens = c->bytes = 0;
    c->t_first = 0;
    c->finished = 0;
    c->final_state = -1;
    c->head = c->tail = 0;
    c->run_rc = 0;
    c->sink_pos = 0;
    int64_t cpu0 = cpu_ns();
    c->t_start = now_ns();
    int rc = 0;
    if (!threaded) {
        rc = run_prompt(c);
        out->run_ns = now_ns() - c->t_start;
        out->first_ns = c->t_first ? c->t_first - c->t_start : 0;
        out->bytes = c->bytes;
    } else {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, c) != 0) return -1;
        static char chunk[RING_BYTES];
        long n_recv = 0;
        int64_t got = 0;
        pthread_mutex_lock(&c->lock);
        for (;;) {
            while (c->head == c->tail && !c->finished) pthread_cond_wait(&c->ready, &c->lock);
            size_t avail = c->head - c->tail;
            for (size_t i = 0; i < avail; i++) chunk[i] = c->ring[(c->tail + i) & (RING_BYTES - 1)];
            c->tail += avail;
            pthread_cond_signal(&c->space);
            int done = c->finished && c->head == c->tail;
            pthread_mutex_unlock(&c->lock);
            if (avail) {
                int64_t t = now_ns();
                got += (int64_t)avail;
                c->sink[0] ^= chunk[avail - 1];
                if (!c->t_first) c->t_first = t;
                if (n_recv < cap) { recv_ns[n_recv] = t; recv_bytes[n_recv] = got; }
                n_recv++;
            }
            if (done) break;
            pthread_mutex_lock(&c->lock);
        }
        out->run_ns = now_ns() - c->t_start;
        pthread_join(t, NULL);
        rc = c->run_rc;
        out->first_ns = c->t_first ? c->t_first - c->t_start : 0;
        out->bytes = got;
        out->wakeups = n_recv;
    }
    out->cpu_ns = cpu_ns() - cpu0;
    out->tokens = c->tokens;
    out->final_state = c->final_state;
    return rc;
}

CC_API void cc_close(void *handle) {
    struct cc *c = handle;
    if (!c) return;
    c->destroy(c->handle);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->ready);
    pthread_cond_destroy(&c->space);
    free(c->ring);
    /* the runtime library stays loaded: other designs in this process share it */
    free(c);
}
