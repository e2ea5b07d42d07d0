/*
 * The exported API of the simulated runtime for one ABI family: init, destroy, run, abort,
 * and the threads that execute runs. A blocking rkllm_run executes on the caller's thread
 * (as the real runtime does: its callbacks arrive on the thread that called rkllm_run); an
 * async run (rkllm_run_async, is_async) on the handle's own worker thread.
 * RKLLM_SIM_CALLBACK_THREAD=worker sends blocking runs to the worker too.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

/* The release string the shim looks for in the file, and the simulator's own label. */
static const char sim_info_text[] =
    "rkllm-cffi simulated runtime (not an NPU), RKLLM SDK (version: " SIM_RELEASE "), "
    "ABI family " RKLLM_SIM_FAMILY;

SIM_EXPORT const char *rkllm_sim_info(void) { return sim_info_text; }


/* ---- rkllm_createDefaultParam ---- */

SIM_EXPORT RKLLMParam rkllm_createDefaultParam(void)
{
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.model_path = NULL;
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 40;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.mirostat = 0;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = false;
    p.is_async = false;
#if SIM_FAMILY >= 120
    p.n_keep = -1;
    p.extend_param.enabled_cpus_num = 4;
    p.extend_param.enabled_cpus_mask = CPU4 | CPU5 | CPU6 | CPU7;
#endif
#if SIM_FAMILY >= 121
    p.extend_param.n_batch = 1;
#endif
#if SIM_FAMILY < 130
    p.img_start = "";
    p.img_end = "";
    p.img_content = "";
#endif
    sim_json j;
    sim_json_begin(&j, "rkllm_createDefaultParam");
    sim_trace_param(&j, "result", &p);
    sim_json_end(&j, 0);
    return p;
}

/* ---- executing runs ---- */

/* RKLLM_SIM_FAULT=late_callback: a thread of the runtime calls back once more after the
 * aborted run ended, whatever runs by then (rkllm_destroy waits for it). */
typedef struct {
    sim_handle *h;
    void *userdata;
} late_args;

static void *late_main(void *arg)
{
    late_args a = *(late_args *)arg;
    free(arg);
    sim_late_callback(a.h, a.userdata);
    return NULL;
}

/* Guards late_thread / late_started; not h->mu, which the late callback's client may need. */
static pthread_mutex_t late_mu = PTHREAD_MUTEX_INITIALIZER;

static void join_late_locked(sim_handle *h)
{
    if (h->late_started)
        pthread_join(h->late_thread, NULL);
    h->late_started = 0;
}

static void join_late_callback(sim_handle *h)
{
    pthread_mutex_lock(&late_mu);
    join_late_locked(h);
    pthread_mutex_unlock(&late_mu);
}

static void start_late_callback(sim_handle *h, void *userdata)
{
    pthread_mutex_lock(&late_mu);
    join_late_locked(h); /* one at a time */
    late_args *a = malloc(sizeof *a);
    if (a) {
        a->h = h, a->userdata = userdata;
        h->late_started = pthread_create(&h->late_thread, NULL, late_main, a) == 0;
        if (!h->late_started)
            free(a);
    }
    pthread_mutex_unlock(&late_mu);
}

/* Executes the submitted job on this thread (the worker, or a blocking rkllm_run's caller),
 * then marks the handle idle. An accepted run always ends with a final callback, even when
 * destroy aborts it (unless RKLLM_SIM_FAULT=no_finish). Called and returns with h->mu free. */
static int execute(sim_handle *h)
{
    sim_run_frame f;
    sim_enter_run(&f, h);
    int rc = sim_execute(h, &h->job);
    sim_leave_run(&f);
    void *userdata = h->job.userdata ? h->job.userdata : h->result_userdata;
    sim_job_free(&h->job);
    pthread_mutex_lock(&h->mu);
    h->job_rc = rc;
    h->running = 0;
    h->finishing = 0;
    h->done_seq++;
    int late = h->faults.kind == SIM_FAULT_LATE_CALLBACK && h->last_end == SIM_END_ABORT;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    if (late)
        start_late_callback(h, userdata);
    return rc;
}

/* The handle's own thread: async runs (and blocking ones with RKLLM_SIM_CALLBACK_THREAD=worker). */
static void *worker(void *arg)
{
    sim_handle *h = arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->has_job && !h->quit)
            pthread_cond_wait(&h->cv, &h->mu);
        if (!h->has_job)
            break; /* quit */
        h->has_job = 0;
        pthread_mutex_unlock(&h->mu);
        execute(h);
        pthread_mutex_lock(&h->mu);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* Stops the worker thread and waits for it. */
static void stop_worker(sim_handle *h)
{
    pthread_mutex_lock(&h->mu);
    h->quit = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
}

static void free_handle(sim_handle *h)
{
    for (int i = 0; i < h->n_loras; i++) {
        free(h->loras[i].name);
        free(h->loras[i].boost);
    }
    free(h->system_prompt); free(h->prompt_prefix); free(h->prompt_postfix);
    free(h->tools_system); free(h->tools); free(h->tool_response);
    free(h->cache_ids); free(h->ctx); free(h->scratch);
    free(h->freq); free(h->recent); free(h->in_prompt); free(h->embed_buf);
    sim_model_free(h->model);
    free(h);
}


/* ---- rkllm_init ---- */

#if SIM_FAMILY >= 130
#define CALLBACK_ARG RKLLMCallback *callback
#else
#define CALLBACK_ARG LLMResultCallback callback
#endif

static int init(LLMHandle *handle, RKLLMParam *param, CALLBACK_ARG)
{
    static const char *fn = "rkllm_init";
    if (!handle) {
        sim_error("%s: the handle pointer is NULL", fn);
        return -1;
    }
    *handle = NULL; /* nothing is left behind on failure */
    if (!param) {
        sim_error("%s: param is NULL", fn);
        return -1;
    }
#if SIM_FAMILY >= 130
    if (!callback || !callback->result_callback) {
        sim_error("%s: the callback struct or its result_callback is NULL", fn);
        return -1;
    }
#else
    if (!callback) {
        sim_error("%s: the result callback is NULL", fn);
        return -1;
    }
#endif
    if (!param->model_path || !*param->model_path) {
        sim_error("%s: model_path is NULL or empty", fn);
        return -1;
    }
    if (sim_check_sampling(fn, param->top_k, param->top_p, param->temperature, param->repeat_penalty,
                       param->frequency_penalty, param->presence_penalty, param->mirostat,
                       param->mirostat_tau, param->mirostat_eta))
        return -1;
#if SIM_FAMILY >= 121
    if (param->extend_param.n_batch < 1 || param->extend_param.n_batch > 100) {
        sim_error("The n_batch must be between 1 and 100, but got %d", param->extend_param.n_batch);
        return -1;
    }
    if (param->extend_param.use_cross_attn != 0 && param->extend_param.use_cross_attn != 1) {
        sim_error("%s: use_cross_attn must be 0 or 1, but got %d", fn, param->extend_param.use_cross_attn);
        return -1;
    }
#endif
    char err[1024];
    sim_model *m = sim_model_load(param->model_path, err, sizeof err);
    if (!m) {
        sim_error("%s: %s", fn, err);
        return -1;
    }
    long limit = sim_env_long("RKLLM_SIM_MAX_CONTEXT", m->max_context_len);
    if (param->max_context_len <= 0 || param->max_context_len > limit) {
        sim_error("%s: max_context_len must be between 1 and %ld (the model's limit), but got %d",
                  fn, limit, param->max_context_len);
        sim_model_free(m);
        return -1;
    }
    sim_faults faults;
    if (sim_faults_read(&faults, err, sizeof err) != 0) {
        sim_error("%s: %s", fn, err);
        sim_model_free(m);
        return -1;
    }
    sim_handle *h = calloc(1, sizeof *h);
    if (!h) {
        sim_model_free(m);
        sim_error("%s: out of memory", fn);
        return -1;
    }
    h->model = m;
    h->faults = faults;
    h->max_context_len = param->max_context_len;
    h->max_new_tokens = param->max_new_tokens;
    h->top_k = param->top_k;
    h->top_p = param->top_p;
    h->temperature = param->temperature;
    h->repeat_penalty = param->repeat_penalty;
    h->frequency_penalty = param->frequency_penalty;
    h->presence_penalty = param->presence_penalty;
    h->mirostat = param->mirostat;
    h->mirostat_tau = param->mirostat_tau;
    h->mirostat_eta = param->mirostat_eta;
    h->skip_special_token = param->skip_special_token;
    h->is_async = param->is_async;
    h->n_batch = 1;
#if SIM_FAMILY >= 120
    h->n_keep = param->n_keep;
#endif
#if SIM_FAMILY >= 121
    h->n_batch = param->extend_param.n_batch;
    h->use_cross_attn = param->extend_param.use_cross_attn;
#endif
#if SIM_FAMILY >= 130
    h->ignore_eos = param->ignore_eos_token;
    h->callback = callback->result_callback;
    h->result_userdata = callback->result_userdata;
    h->tokenizer_callback = callback->tokenizer_callback;
    h->tokenizer_userdata = callback->tokenizer_userdata;
    h->embed_callback = callback->embed_callback;
    h->embed_userdata = callback->embed_userdata;
#else
    h->callback = callback;
#endif
    h->system_prompt = strdup(m->system_prompt);
    h->prompt_prefix = strdup(m->prompt_prefix);
    h->prompt_postfix = strdup(m->prompt_postfix);
    h->ctx = malloc((h->max_context_len + 1) * sizeof *h->ctx);
    h->scratch = malloc((h->max_context_len + 1) * sizeof *h->scratch);
    h->freq = malloc(m->n_words * sizeof *h->freq);
    h->recent = malloc(m->n_words * sizeof *h->recent);
    h->in_prompt = malloc(m->n_words);
    h->embed_buf = malloc(m->embed_size * sizeof *h->embed_buf);
    int ok = h->system_prompt && h->prompt_prefix && h->prompt_postfix && h->ctx && h->scratch &&
             h->freq && h->recent && h->in_prompt && h->embed_buf;
    if (ok) {
        pthread_mutex_init(&h->mu, NULL);
        pthread_cond_init(&h->cv, NULL);
        ok = pthread_create(&h->thread, NULL, worker, h) == 0;
        if (!ok) {
            pthread_mutex_destroy(&h->mu);
            pthread_cond_destroy(&h->cv);
        }
    }
    if (ok && (h->faults.kind == SIM_FAULT_INIT_PARTIAL || h->faults.kind == SIM_FAULT_INIT_NULL ||
               sim_register(h) != 0)) {
        stop_worker(h);
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cv);
        ok = 0;
    }
    if (!ok) {
        int fault = h->faults.kind;
        free_handle(h);
        if (fault == SIM_FAULT_INIT_NULL)
            return 0; /* everything freed, *handle is NULL: a runtime that "succeeds" without a handle */
        sim_error("%s: %s", fn, fault == SIM_FAULT_INIT_PARTIAL
                  ? "simulated fault: failed after allocating the model and starting its thread "
                    "(RKLLM_SIM_FAULT=init_partial)"
                  : "out of resources");
        return -1;
    }
    *handle = sim_handle_value(h);
    sim_info("%s; model '%s' (%s, %s, toolkit %s), max_context_len %d", sim_info_text, m->name,
             m->platform, m->dtype, m->toolkit, h->max_context_len);
    return 0;
}

SIM_EXPORT int rkllm_init(LLMHandle *handle, RKLLMParam *param, CALLBACK_ARG)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_init");
    sim_json_ptr(&j, "handle_ptr", handle);
    sim_trace_param(&j, "param", param);
    sim_trace_callback(&j, (const void *)(uintptr_t)callback);
    int rc = init(handle, param, callback);
    if (rc == 0)
        sim_trace_handle(&j, *handle);
    sim_json_end(&j, rc);
    return rc;
}

/* ---- rkllm_destroy ---- */

SIM_EXPORT int rkllm_destroy(LLMHandle handle)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_destroy");
    sim_trace_handle(&j, handle);
    int rc = -1;
    sim_handle *h = sim_acquire(handle, "rkllm_destroy");
    if (h && sim_on_run_thread(h)) {
        sim_error("rkllm_destroy: called from the result callback; destroy the handle after the run ends");
        sim_release(h);
        h = NULL;
    }
    if (h) {
        /* unlist it (new calls fail), stop the run, wait for calls in progress, then free */
        sim_unregister(h);
        pthread_mutex_lock(&h->mu);
        h->quit = 1; /* later runs are refused */
        h->abort_flag = 1;
        pthread_cond_broadcast(&h->cv);
        while (h->running)
            pthread_cond_wait(&h->cv, &h->mu);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->thread, NULL);
        join_late_callback(h);
        sim_release_last(h);
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cv);
        free_handle(h);
        rc = 0;
    }
    sim_json_end(&j, rc);
    return rc;
}

/* ---- rkllm_run / rkllm_run_async ---- */

static int submit(LLMHandle handle, RKLLMInput *in, RKLLMInferParam *ip, void *userdata, int async,
                  const char *fn)
{
    sim_json j;
    sim_json_begin(&j, fn);
    sim_trace_handle(&j, handle);
    sim_trace_input(&j, in);
    sim_trace_infer(&j, ip);
    sim_json_ptr(&j, "userdata", userdata);
    int rc = -1;
    sim_handle *h = sim_acquire(handle, fn);
    if (!h)
        goto out;
    sim_job job;
    sim_faults faults;
    char err[256];
    if (sim_faults_read(&faults, err, sizeof err) != 0) {
        sim_error("%s: %s", fn, err);
        goto done;
    }
    /* RKLLM_SIM_START_DELAY_MS: a run still being set up; an rkllm_abort meanwhile finds
     * no run and is lost, as a runtime's can be */
    sim_sleep_ms(faults.start_delay_ms, NULL);
    if (sim_make_job(h, in, ip, userdata, &job, fn) != 0) {
        sim_job_free(&job);
        goto done;
    }
    pthread_mutex_lock(&h->mu);
    if (sim_busy_locked(h) || h->quit) {
        pthread_mutex_unlock(&h->mu);
        sim_error("%s: %s", fn, h->quit ? "the handle is being destroyed"
                  : "another run is in progress on this handle (wait for it, or rkllm_abort it)");
        sim_job_free(&job);
        goto done;
    }
    h->faults = faults; /* read per run: a test can inject a fault into one run */
    h->job = job;
    h->abort_flag = 0;
    h->running = 1;
    if (async || h->is_async) {
        h->has_job = 1;
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->mu);
        rc = 0;
    } else if (h->faults.worker_callbacks) {
        h->has_job = 1;
        unsigned long seq = h->done_seq;
        pthread_cond_broadcast(&h->cv);
        while (h->done_seq == seq)
            pthread_cond_wait(&h->cv, &h->mu);
        rc = h->job_rc;
        pthread_mutex_unlock(&h->mu);
    } else {
        pthread_mutex_unlock(&h->mu);
        rc = execute(h); /* callbacks on this thread */
    }
done:
    sim_release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}

SIM_EXPORT int rkllm_run(LLMHandle handle, RKLLMInput *rkllm_input, RKLLMInferParam *rkllm_infer_params,
                         void *userdata)
{
    return submit(handle, rkllm_input, rkllm_infer_params, userdata, 0, "rkllm_run");
}

SIM_EXPORT int rkllm_run_async(LLMHandle handle, RKLLMInput *rkllm_input,
                               RKLLMInferParam *rkllm_infer_params, void *userdata)
{
    return submit(handle, rkllm_input, rkllm_infer_params, userdata, 1, "rkllm_run_async");
}

/* ---- abort, is_running ---- */

SIM_EXPORT int rkllm_abort(LLMHandle handle)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_abort");
    sim_trace_handle(&j, handle);
    int rc = -1;
    sim_handle *h = sim_acquire(handle, "rkllm_abort");
    if (h) {
        pthread_mutex_lock(&h->mu);
        if (h->running && h->faults.abort_delay_ms > 0) {
            /* RKLLM_SIM_ABORT_DELAY_MS: a slow abort; the run goes on meanwhile */
            unsigned long seq = h->done_seq;
            pthread_mutex_unlock(&h->mu);
            sim_sleep_ms(h->faults.abort_delay_ms, NULL);
            pthread_mutex_lock(&h->mu);
            if (h->done_seq != seq) /* that run ended; never abort a later one */
                goto unlock;
        }
        if (h->running) {
            h->abort_flag = 1;
            /* from another thread: return once the run has stopped (it checks every token) */
            while (h->running && !sim_on_run_thread(h))
                pthread_cond_wait(&h->cv, &h->mu);
        }
    unlock:
        pthread_mutex_unlock(&h->mu);
        sim_release(h);
        rc = 0;
    }
    sim_json_end(&j, rc);
    return rc;
}

SIM_EXPORT int rkllm_is_running(LLMHandle handle)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_is_running");
    sim_trace_handle(&j, handle);
    int rc = -1;
    sim_handle *h = sim_acquire(handle, "rkllm_is_running");
    if (h) {
        pthread_mutex_lock(&h->mu);
        rc = h->running ? 1 : 0;
        pthread_mutex_unlock(&h->mu);
        sim_release(h);
    }
    sim_json_end(&j, rc);
    return rc;
}

