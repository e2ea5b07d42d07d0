/*
 * A forwarding RKLLM runtime (ABI family 1.2.1) that times the result callback.
 *
 * Every rkllm_* call is passed to the library named by RKLLM_BENCH_TAP_TARGET (the simulated
 * runtime). The callback given to rkllm_init is wrapped: the wrapper reads CLOCK_MONOTONIC
 * before and after calling it, so the benchmark sees exactly how long the runtime's thread
 * was kept inside the callback, and when each token was handed over (for latency), whatever
 * binding sits on top (rkllm-cffi, ctypes, C).
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

#define TAP_API __attribute__((visibility("default")))
#define MAX_HANDLES 64

/* Release marker read by rkllm-cffi's loader (it scans the file), so the tap is taken for the
 * 1.2.1-family release the simulator plays, without forcing RKLLM_ABI. */
__attribute__((used)) static const char release_marker[] = "RKLLM SDK (version: 1.2.3)";

static void *target;
static pthread_once_t target_once = PTHREAD_ONCE_INIT;

static void open_target(void) {
    const char *path = getenv("RKLLM_BENCH_TAP_TARGET");
    if (!path) {
        fprintf(stderr, "rkllm bench tap: RKLLM_BENCH_TAP_TARGET is not set\n");
        return;
    }
    target = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!target) fprintf(stderr, "rkllm bench tap: %s\n", dlerror());
}

static void *sym(const char *name) {
    pthread_once(&target_once, open_target);
    void *f = target ? dlsym(target, name) : NULL;
    if (!f) fprintf(stderr, "rkllm bench tap: %s not found in the target runtime\n", name);
    return f;
}

/* ---- recording ---- */
static int64_t *rec_entry, *rec_dur, *rec_bytes; /* per callback: entry time, ns inside, cumulative text bytes */
static int32_t *rec_state;
static long rec_cap;
static volatile long rec_n;          /* callbacks seen since tap_reset */
static int64_t total_bytes, dur_sum, dur_max;

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Start a new recording keeping the first `capacity` callbacks individually (0: totals only). */
TAP_API int tap_reset(long capacity) {
    free(rec_entry); free(rec_dur); free(rec_bytes); free(rec_state);
    rec_entry = rec_dur = rec_bytes = NULL; rec_state = NULL; rec_cap = 0;
    if (capacity > 0) {
        rec_entry = malloc(capacity * sizeof *rec_entry);
        rec_dur = malloc(capacity * sizeof *rec_dur);
        rec_bytes = malloc(capacity * sizeof *rec_bytes);
        rec_state = malloc(capacity * sizeof *rec_state);
        if (!rec_entry || !rec_dur || !rec_bytes || !rec_state) return -1;
        /* touch the pages now, not inside the timed callback */
        memset(rec_entry, 0, capacity * sizeof *rec_entry);
        memset(rec_dur, 0, capacity * sizeof *rec_dur);
        memset(rec_bytes, 0, capacity * sizeof *rec_bytes);
        memset(rec_state, 0, capacity * sizeof *rec_state);
        rec_cap = capacity;
    }
    rec_n = 0; total_bytes = 0; dur_sum = 0; dur_max = 0;
    return 0;
}

TAP_API long tap_count(void) { return rec_n; }
TAP_API long tap_recorded(void) { return rec_n < rec_cap ? rec_n : rec_cap; }
TAP_API int64_t tap_dur_sum(void) { return dur_sum; }
TAP_API int64_t tap_dur_max(void) { return dur_max; }
TAP_API int64_t *tap_entry_array(void) { return rec_entry; }
TAP_API int64_t *tap_dur_array(void) { return rec_dur; }
TAP_API int64_t *tap_bytes_array(void) { return rec_bytes; }
TAP_API int32_t *tap_state_array(void) { return rec_state; }

/* ---- the wrapped callback ---- */
struct handle_slot { LLMHandle handle; LLMResultCallback callback; };
static struct handle_slot slots[MAX_HANDLES];
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

struct run_ctx { LLMResultCallback callback; void *userdata; };
static struct run_ctx run_ctx[MAX_HANDLES];

static LLMResultCallback callback_of(LLMHandle h, int *slot) {
    LLMResultCallback cb = NULL;
    pthread_mutex_lock(&slots_lock);
    for (int i = 0; i < MAX_HANDLES; i++)
        if (slots[i].handle == h) { cb = slots[i].callback; *slot = i; break; }
    pthread_mutex_unlock(&slots_lock);
    return cb;
}

static int tap_callback(RKLLMResult *result, void *userdata, LLMCallState state) {
    struct run_ctx *ctx = userdata;
    int64_t t0 = now_ns();
    int rc = ctx->callback ? ctx->callback(result, ctx->userdata, state) : 0;
    int64_t t1 = now_ns();
    if (state == RKLLM_RUN_NORMAL && result && result->text) total_bytes += (int64_t)strlen(result->text);
    long i = rec_n;
    int64_t d = t1 - t0;
    dur_sum += d;
    if (d > dur_max) dur_max = d;
    if (i < rec_cap) {
        rec_entry[i] = t0; rec_dur[i] = d; rec_bytes[i] = total_bytes; rec_state[i] = (int32_t)state;
    }
    rec_n = i + 1;
    return rc;
}

/* ---- forwarded API ---- */
#define FWD(ret, name, params, args)                         \
    TAP_API ret name params {                                \
        static ret(*f) params;                               \
        if (!f) f = (ret(*) params)sym(#name);               \
        if (!f) return (ret)-1;                              \
        return f args;                                       \
    }

TAP_API RKLLMParam rkllm_createDefaultParam(void) {
    static RKLLMParam (*f)(void);
    if (!f) f = (RKLLMParam(*)(void))sym("rkllm_createDefaultParam");
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    return f ? f() : p;
}

TAP_API int rkllm_init(LLMHandle *handle, RKLLMParam *param, LLMResultCallback callback) {
    static int (*f)(LLMHandle *, RKLLMParam *, LLMResultCallback);
    if (!f) f = (int (*)(LLMHandle *, RKLLMParam *, LLMResultCallback))sym("rkllm_init");
    if (!f) return -1;
    int rc = f(handle, param, tap_callback);
    if (rc == 0 && handle && *handle) {
        pthread_mutex_lock(&slots_lock);
        int placed = 0;
        for (int i = 0; i < MAX_HANDLES && !placed; i++)
            if (!slots[i].handle) { slots[i].handle = *handle; slots[i].callback = callback; placed = 1; }
        pthread_mutex_unlock(&slots_lock);
        if (!placed) fprintf(stderr, "rkllm bench tap: more than %d handles open\n", MAX_HANDLES);
    }
    return rc;
}

TAP_API int rkllm_destroy(LLMHandle handle) {
    static int (*f)(LLMHandle);
    if (!f) f = (int (*)(LLMHandle))sym("rkllm_destroy");
    if (!f) return -1;
    int rc = f(handle);
    pthread_mutex_lock(&slots_lock);
    for (int i = 0; i < MAX_HANDLES; i++)
        if (slots[i].handle == handle) slots[i].handle = NULL;
    pthread_mutex_unlock(&slots_lock);
    return rc;
}

TAP_API int rkllm_run(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    static int (*f)(LLMHandle, RKLLMInput *, RKLLMInferParam *, void *);
    if (!f) f = (int (*)(LLMHandle, RKLLMInput *, RKLLMInferParam *, void *))sym("rkllm_run");
    if (!f) return -1;
    int slot = 0;
    LLMResultCallback cb = callback_of(handle, &slot);
    /* kept per handle, not on the stack: with is_async the run may outlive this call */
    run_ctx[slot].callback = cb;
    run_ctx[slot].userdata = userdata;
    return f(handle, input, infer, &run_ctx[slot]);
}

TAP_API int rkllm_run_async(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    static int (*f)(LLMHandle, RKLLMInput *, RKLLMInferParam *, void *);
    if (!f) f = (int (*)(LLMHandle, RKLLMInput *, RKLLMInferParam *, void *))sym("rkllm_run_async");
    if (!f) return -1;
    int slot = 0;
    LLMResultCallback cb = callback_of(handle, &slot);
    run_ctx[slot].callback = cb;  /* one run at a time per handle */
    run_ctx[slot].userdata = userdata;
    return f(handle, input, infer, &run_ctx[slot]);
}

/* The simulator's self-description, passed through so the tap is seen as the simulator. */
TAP_API const char *rkllm_sim_info(void) {
    const char *(*f)(void) = (const char *(*)(void))sym("rkllm_sim_info");
    return f ? f() : "rkllm bench tap";
}

FWD(int, rkllm_load_lora, (LLMHandle h, RKLLMLoraAdapter *a), (h, a))
FWD(int, rkllm_load_prompt_cache, (LLMHandle h, const char *p), (h, p))
FWD(int, rkllm_release_prompt_cache, (LLMHandle h), (h))
FWD(int, rkllm_abort, (LLMHandle h), (h))
FWD(int, rkllm_is_running, (LLMHandle h), (h))
FWD(int, rkllm_clear_kv_cache, (LLMHandle h, int k, int *s, int *e), (h, k, s, e))
FWD(int, rkllm_get_kv_cache_size, (LLMHandle h, int *c), (h, c))
FWD(int, rkllm_set_chat_template, (LLMHandle h, const char *a, const char *b, const char *c), (h, a, b, c))
FWD(int, rkllm_set_function_tools, (LLMHandle h, const char *a, const char *b, const char *c), (h, a, b, c))
FWD(int, rkllm_set_cross_attn_params, (LLMHandle h, RKLLMCrossAttnParam *p), (h, p))
