/*
 * The exported API of the simulated runtime for one ABI family: handles, checks of what the
 * client passes, tracing, and the runtime's own thread that executes runs.
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

/* ---- registry of live handles: a handle is an id, never a pointer the client could stale ---- */

#define HANDLE_BASE 0x51000000u
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static sim_handle **g_live;
static size_t g_n_live, g_cap_live;
static uint32_t g_next_id = 1;

static LLMHandle handle_value(uint32_t id) { return (LLMHandle)(uintptr_t)(HANDLE_BASE + 16u * id); }

/* Finds a live handle and marks it in use; NULL (with a message) if it is not live. */
static sim_handle *acquire(LLMHandle handle, const char *fn)
{
    if (!handle) {
        sim_error("%s: the handle is NULL", fn);
        return NULL;
    }
    sim_handle *h = NULL;
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_n_live; i++)
        if (handle_value(g_live[i]->id) == handle) {
            h = g_live[i];
            h->users++;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    if (!h)
        sim_error("%s: invalid handle %p (never created by rkllm_init, or already destroyed)", fn, handle);
    return h;
}

static void release(sim_handle *h)
{
    pthread_mutex_lock(&g_mu);
    h->users--;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

static int on_runtime_thread(sim_handle *h) { return pthread_equal(pthread_self(), h->thread); }

/* With h->mu held: is a run in progress? A run that is delivering its final callback is
 * waited for (from another thread), so "wait for FINISH, then run again" never fails. */
static int busy_locked(sim_handle *h)
{
    while (h->running && h->finishing && !on_runtime_thread(h))
        pthread_cond_wait(&h->cv, &h->mu);
    return h->running;
}

/* ---- tracing helpers ---- */

static void trace_handle(sim_json *j, LLMHandle handle)
{
    if (!j->p)
        return;
    if (!handle) {
        sim_json_ptr(j, "handle", NULL);
        return;
    }
    char b[32];
    snprintf(b, sizeof b, "%p", handle);
    sim_json_str(j, "handle", b);
}

static void trace_param(sim_json *j, const char *key, const RKLLMParam *p)
{
    if (!j->p)
        return;
    if (!p) {
        sim_json_ptr(j, key, NULL);
        return;
    }
    sim_json_open(j, key);
    sim_json_str(j, "model_path", p->model_path);
    sim_json_int(j, "max_context_len", p->max_context_len);
    sim_json_int(j, "max_new_tokens", p->max_new_tokens);
    sim_json_int(j, "top_k", p->top_k);
#if SIM_FAMILY >= 120
    sim_json_int(j, "n_keep", p->n_keep);
#endif
    sim_json_float(j, "top_p", p->top_p);
    sim_json_float(j, "temperature", p->temperature);
    sim_json_float(j, "repeat_penalty", p->repeat_penalty);
    sim_json_float(j, "frequency_penalty", p->frequency_penalty);
    sim_json_float(j, "presence_penalty", p->presence_penalty);
    sim_json_int(j, "mirostat", p->mirostat);
    sim_json_float(j, "mirostat_tau", p->mirostat_tau);
    sim_json_float(j, "mirostat_eta", p->mirostat_eta);
    sim_json_bool(j, "skip_special_token", p->skip_special_token);
#if SIM_FAMILY >= 130
    sim_json_bool(j, "ignore_eos_token", p->ignore_eos_token);
#endif
    sim_json_bool(j, "is_async", p->is_async);
#if SIM_FAMILY < 130
    sim_json_str(j, "img_start", p->img_start);
    sim_json_str(j, "img_end", p->img_end);
    sim_json_str(j, "img_content", p->img_content);
#endif
    sim_json_open(j, "extend_param");
    sim_json_int(j, "base_domain_id", p->extend_param.base_domain_id);
#if SIM_FAMILY >= 120
    sim_json_int(j, "embed_flash", p->extend_param.embed_flash);
    sim_json_int(j, "enabled_cpus_num", p->extend_param.enabled_cpus_num);
    sim_json_int(j, "enabled_cpus_mask", p->extend_param.enabled_cpus_mask);
#endif
#if SIM_FAMILY >= 121
    sim_json_int(j, "n_batch", p->extend_param.n_batch);
    sim_json_int(j, "use_cross_attn", p->extend_param.use_cross_attn);
#endif
    int nonzero = 0;
    for (size_t i = 0; i < sizeof p->extend_param.reserved; i++)
        nonzero += p->extend_param.reserved[i] != 0;
    sim_json_int(j, "reserved_nonzero_bytes", nonzero);
    sim_json_close(j);
    sim_json_close(j);
}

static void trace_input(sim_json *j, const RKLLMInput *in)
{
    if (!j->p)
        return;
    if (!in) {
        sim_json_ptr(j, "rkllm_input", NULL);
        return;
    }
    sim_json_open(j, "rkllm_input");
#if SIM_FAMILY >= 121
    sim_json_str(j, "role", in->role);
    sim_json_bool(j, "enable_thinking", in->enable_thinking);
#endif
    sim_json_int(j, "input_type", in->input_type);
    switch (in->input_type) {
    case RKLLM_INPUT_PROMPT:
        sim_json_str(j, "prompt_input", in->prompt_input);
        break;
    case RKLLM_INPUT_TOKEN:
        sim_json_open(j, "token_input");
        sim_json_ptr(j, "input_ids", in->token_input.input_ids);
        sim_json_int(j, "n_tokens", (long long)in->token_input.n_tokens);
        sim_json_close(j);
        break;
    case RKLLM_INPUT_EMBED:
        sim_json_open(j, "embed_input");
        sim_json_ptr(j, "embed", in->embed_input.embed);
        sim_json_int(j, "n_tokens", (long long)in->embed_input.n_tokens);
        sim_json_close(j);
        break;
    case RKLLM_INPUT_MULTIMODAL: {
        const __typeof__(in->multimodal_input) *mm = &in->multimodal_input;
        sim_json_open(j, "multimodal_input");
        sim_json_str(j, "prompt", mm->prompt);
#if SIM_FAMILY >= 130
        sim_json_open(j, "image");
        sim_json_ptr(j, "image_embed", mm->image.image_embed);
        sim_json_int(j, "n_image_tokens", (long long)mm->image.n_image_tokens);
        sim_json_int(j, "n_image", (long long)mm->image.n_image);
        sim_json_str(j, "image_start", mm->image.image_start);
        sim_json_str(j, "image_end", mm->image.image_end);
        sim_json_str(j, "image_content", mm->image.image_content);
        sim_json_int(j, "image_width", (long long)mm->image.image_width);
        sim_json_int(j, "image_height", (long long)mm->image.image_height);
        sim_json_close(j);
        sim_json_open(j, "video");
        sim_json_ptr(j, "video_embed", mm->video.video_embed);
        sim_json_int(j, "n_frame_tokens", (long long)mm->video.n_frame_tokens);
        sim_json_int(j, "n_frame_per_video", (long long)mm->video.n_frame_per_video);
        sim_json_int(j, "n_video", (long long)mm->video.n_video);
        sim_json_str(j, "video_start", mm->video.video_start);
        sim_json_str(j, "video_end", mm->video.video_end);
        sim_json_str(j, "video_content", mm->video.video_content);
        sim_json_int(j, "frame_width", (long long)mm->video.frame_width);
        sim_json_int(j, "frame_height", (long long)mm->video.frame_height);
        sim_json_close(j);
#else
        sim_json_ptr(j, "image_embed", mm->image_embed);
        sim_json_int(j, "n_image_tokens", (long long)mm->n_image_tokens);
#if SIM_FAMILY >= 121
        sim_json_int(j, "n_image", (long long)mm->n_image);
        sim_json_int(j, "image_width", (long long)mm->image_width);
        sim_json_int(j, "image_height", (long long)mm->image_height);
#endif
#endif
        sim_json_close(j);
        break;
    }
    default:
        break;
    }
    sim_json_close(j);
}

static void trace_infer(sim_json *j, const RKLLMInferParam *p)
{
    if (!j->p)
        return;
    if (!p) {
        sim_json_ptr(j, "rkllm_infer_params", NULL);
        return;
    }
    sim_json_open(j, "rkllm_infer_params");
    sim_json_int(j, "mode", p->mode);
    if (p->lora_params) {
        sim_json_open(j, "lora_params");
        sim_json_str(j, "lora_adapter_name", p->lora_params->lora_adapter_name);
        sim_json_close(j);
    } else {
        sim_json_ptr(j, "lora_params", NULL);
    }
    if (p->prompt_cache_params) {
        sim_json_open(j, "prompt_cache_params");
        sim_json_int(j, "save_prompt_cache", p->prompt_cache_params->save_prompt_cache);
        sim_json_str(j, "prompt_cache_path", p->prompt_cache_params->prompt_cache_path);
        sim_json_close(j);
    } else {
        sim_json_ptr(j, "prompt_cache_params", NULL);
    }
#if SIM_FAMILY >= 130
    if (p->sampling_params) {
        const RKLLMSamplingParam *s = p->sampling_params;
        sim_json_open(j, "sampling_params");
        sim_json_int(j, "top_k", s->top_k);
        sim_json_float(j, "top_p", s->top_p);
        sim_json_float(j, "temperature", s->temperature);
        sim_json_float(j, "repeat_penalty", s->repeat_penalty);
        sim_json_float(j, "frequency_penalty", s->frequency_penalty);
        sim_json_float(j, "presence_penalty", s->presence_penalty);
        sim_json_int(j, "mirostat", s->mirostat);
        sim_json_float(j, "mirostat_tau", s->mirostat_tau);
        sim_json_float(j, "mirostat_eta", s->mirostat_eta);
        sim_json_close(j);
    } else {
        sim_json_ptr(j, "sampling_params", NULL);
    }
#endif
#if SIM_FAMILY >= 120
    sim_json_int(j, "keep_history", p->keep_history);
#endif
#if SIM_FAMILY >= 130
    sim_json_int(j, "max_new_tokens", p->max_new_tokens);
#endif
    sim_json_close(j);
}

/* ---- checks of sampling values (shared by RKLLMParam and, in 1.3.0, RKLLMSamplingParam) ---- */

static int check_sampling(const char *fn, int top_k, float top_p, float temperature, float repeat_penalty,
                          float frequency_penalty, float presence_penalty, int mirostat, float tau, float eta)
{
    const char *bad = NULL;
    char why[160];
    if (top_k < 0)
        snprintf(why, sizeof why, "top_k must be >= 0 (0: no limit), but got %d", top_k), bad = why;
    else if (!(top_p > 0 && top_p <= 1))
        snprintf(why, sizeof why, "top_p must be in (0, 1], but got %g", top_p), bad = why;
    else if (!(temperature >= 0 && temperature < 1e6))
        snprintf(why, sizeof why, "temperature must be >= 0, but got %g", temperature), bad = why;
    else if (!(repeat_penalty > 0 && repeat_penalty < 1e6))
        snprintf(why, sizeof why, "repeat_penalty must be > 0, but got %g", repeat_penalty), bad = why;
    else if (!isfinite(frequency_penalty) || !isfinite(presence_penalty))
        snprintf(why, sizeof why, "frequency_penalty and presence_penalty must be finite"), bad = why;
    else if (mirostat < 0 || mirostat > 2)
        snprintf(why, sizeof why, "mirostat must be 0, 1 or 2, but got %d", mirostat), bad = why;
    else if (mirostat && !(tau > 0 && eta > 0 && tau < 1e6 && eta < 1e6))
        snprintf(why, sizeof why, "mirostat_tau and mirostat_eta must be > 0, but got %g and %g", tau, eta),
            bad = why;
    if (bad)
        sim_error("%s: %s", fn, bad);
    return bad ? -1 : 0;
}

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
    trace_param(&j, "result", &p);
    sim_json_end(&j, 0);
    return p;
}

/* ---- the runtime's thread ---- */

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
        /* an accepted run always ends with a final callback, even when destroy aborts it */
        int rc = sim_execute(h, &h->job);
        sim_job_free(&h->job);
        pthread_mutex_lock(&h->mu);
        h->job_rc = rc;
        h->running = 0;
        h->finishing = 0;
        h->done_seq++;
        pthread_cond_broadcast(&h->cv);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
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
    if (check_sampling(fn, param->top_k, param->top_p, param->temperature, param->repeat_penalty,
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
    sim_handle *h = calloc(1, sizeof *h);
    if (!h) {
        sim_model_free(m);
        sim_error("%s: out of memory", fn);
        return -1;
    }
    h->model = m;
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
    if (ok) {
        pthread_mutex_lock(&g_mu);
        if (g_n_live == g_cap_live) {
            size_t cap = g_cap_live ? g_cap_live * 2 : 16;
            sim_handle **live = realloc(g_live, cap * sizeof *live);
            if (live)
                g_live = live, g_cap_live = cap;
        }
        ok = g_n_live < g_cap_live;
        if (ok) {
            h->id = g_next_id++;
            g_live[g_n_live++] = h;
        }
        pthread_mutex_unlock(&g_mu);
        if (!ok) {
            pthread_mutex_lock(&h->mu);
            h->quit = 1;
            pthread_cond_signal(&h->cv);
            pthread_mutex_unlock(&h->mu);
            pthread_join(h->thread, NULL);
        }
    }
    if (!ok) {
        sim_error("%s: out of resources", fn);
        free_handle(h);
        return -1;
    }
    *handle = handle_value(h->id);
    sim_info("%s; model '%s' (%s, %s, toolkit %s), max_context_len %d", sim_info_text, m->name,
             m->platform, m->dtype, m->toolkit, h->max_context_len);
    return 0;
}

SIM_EXPORT int rkllm_init(LLMHandle *handle, RKLLMParam *param, CALLBACK_ARG)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_init");
    sim_json_ptr(&j, "handle_ptr", handle);
    trace_param(&j, "param", param);
#if SIM_FAMILY >= 130
    if (callback) {
        sim_json_open(&j, "callback");
        sim_json_ptr(&j, "result_callback", (const void *)(uintptr_t)callback->result_callback);
        sim_json_ptr(&j, "result_userdata", callback->result_userdata);
        sim_json_ptr(&j, "tokenizer_callback", (const void *)(uintptr_t)callback->tokenizer_callback);
        sim_json_ptr(&j, "tokenizer_userdata", callback->tokenizer_userdata);
        sim_json_ptr(&j, "embed_callback", (const void *)(uintptr_t)callback->embed_callback);
        sim_json_ptr(&j, "embed_userdata", callback->embed_userdata);
        sim_json_close(&j);
    } else {
        sim_json_ptr(&j, "callback", NULL);
    }
#else
    sim_json_ptr(&j, "callback", (const void *)(uintptr_t)callback);
#endif
    int rc = init(handle, param, callback);
    if (rc == 0)
        trace_handle(&j, *handle);
    sim_json_end(&j, rc);
    return rc;
}

/* ---- rkllm_destroy ---- */

SIM_EXPORT int rkllm_destroy(LLMHandle handle)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_destroy");
    trace_handle(&j, handle);
    int rc = -1;
    sim_handle *h = acquire(handle, "rkllm_destroy");
    if (h && on_runtime_thread(h)) {
        sim_error("rkllm_destroy: called from the result callback; destroy the handle after the run ends");
        release(h);
        h = NULL;
    }
    if (h) {
        /* unlist it (new calls fail), stop the run, wait for calls in progress, then free */
        pthread_mutex_lock(&g_mu);
        for (size_t i = 0; i < g_n_live; i++)
            if (g_live[i] == h) {
                g_live[i] = g_live[--g_n_live];
                break;
            }
        pthread_mutex_unlock(&g_mu);
        pthread_mutex_lock(&h->mu);
        h->quit = 1; /* later runs are refused */
        h->abort_flag = 1;
        pthread_cond_broadcast(&h->cv);
        while (h->running)
            pthread_cond_wait(&h->cv, &h->mu);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->thread, NULL);
        pthread_mutex_lock(&g_mu);
        h->users--;
        while (h->users > 0)
            pthread_cond_wait(&g_cv, &g_mu);
        pthread_mutex_unlock(&g_mu);
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cv);
        free_handle(h);
        rc = 0;
    }
    sim_json_end(&j, rc);
    return rc;
}

/* ---- rkllm_run / rkllm_run_async ---- */

static uint32_t hash_floats(uint32_t h, const float *f, size_t n)
{
    return sim_crc32(h, f, n * sizeof *f);
}

/* Pseudo token ids standing for rows of embeddings (images, embed input). */
static void embed_ids(const sim_model *m, const float *rows, size_t n_rows, int32_t *out)
{
    int first = 3 + 256, span = m->vocab_size - first;
    for (size_t i = 0; i < n_rows; i++)
        out[i] = first + (int32_t)(hash_floats((uint32_t)i, rows + i * m->embed_size, m->embed_size) % (uint32_t)span);
}

static int append_embeds(sim_job *job, const sim_model *m, const float *rows, size_t n_rows, const char *what)
{
    if (!n_rows)
        return 0;
    if (!rows) {
        sim_error("rkllm_run: %s is NULL but %zu tokens are announced", what, n_rows);
        return -1;
    }
    if (n_rows > (1u << 24)) {
        sim_error("rkllm_run: %s: %zu tokens is too many", what, n_rows);
        return -1;
    }
    int32_t *ids = realloc(job->ids, (job->n_ids + n_rows) * sizeof *ids);
    if (!ids)
        return -1;
    job->ids = ids;
    embed_ids(m, rows, n_rows, ids + job->n_ids);
    job->n_ids += n_rows;
    job->extra_hash = hash_floats(job->extra_hash, rows, n_rows * m->embed_size);
    return 0;
}

/* Checks and copies what the client passed into a job. */
static int make_job(sim_handle *h, const RKLLMInput *in, const RKLLMInferParam *ip, void *userdata,
                    sim_job *job, const char *fn)
{
    const sim_model *m = h->model;
    memset(job, 0, sizeof *job);
    job->lora = -1;
    job->userdata = userdata;
    if (!in) {
        sim_error("%s: rkllm_input is NULL", fn);
        return -1;
    }
    if (!ip) { /* the vendor's examples always pass one; strict: required */
        sim_error("%s: rkllm_infer_params is NULL", fn);
        return -1;
    }
    job->input_type = in->input_type;
    job->mode = ip->mode;
    if (ip->mode != RKLLM_INFER_GENERATE && ip->mode != RKLLM_INFER_GET_LAST_HIDDEN_LAYER
#if SIM_FAMILY >= 120
        && ip->mode != RKLLM_INFER_GET_LOGITS
#endif
    ) {
        sim_error("%s: unknown infer mode %d", fn, (int)ip->mode);
        return -1;
    }
#if SIM_FAMILY >= 121
    if (in->role && strcmp(in->role, "user") != 0 && strcmp(in->role, "tool") != 0) {
        sim_error("%s: unknown role '%s' (expected \"user\" or \"tool\")", fn, in->role);
        return -1;
    }
    job->role = in->role ? strdup(in->role) : NULL;
    job->enable_thinking = in->enable_thinking;
#endif
    switch (in->input_type) {
    case RKLLM_INPUT_PROMPT:
        if (!in->prompt_input) {
            sim_error("%s: prompt_input is NULL", fn);
            return -1;
        }
        job->prompt = strdup(in->prompt_input);
        break;
    case RKLLM_INPUT_TOKEN:
        if (!in->token_input.input_ids || !in->token_input.n_tokens) {
            sim_error("%s: token_input has no tokens (input_ids NULL or n_tokens 0)", fn);
            return -1;
        }
        if (in->token_input.n_tokens > (size_t)h->max_context_len) {
            sim_error("%s: token_input has %zu tokens, more than max_context_len (%d)", fn,
                      in->token_input.n_tokens, h->max_context_len);
            return -1;
        }
        for (size_t i = 0; i < in->token_input.n_tokens; i++)
            if (in->token_input.input_ids[i] < 0 || in->token_input.input_ids[i] >= m->vocab_size) {
                sim_error("%s: token id %d at index %zu is outside the vocabulary (0..%d)", fn,
                          in->token_input.input_ids[i], i, m->vocab_size - 1);
                return -1;
            }
        job->ids = malloc(in->token_input.n_tokens * sizeof *job->ids);
        if (!job->ids)
            return -1;
        memcpy(job->ids, in->token_input.input_ids, in->token_input.n_tokens * sizeof *job->ids);
        job->n_ids = in->token_input.n_tokens;
        break;
    case RKLLM_INPUT_EMBED:
        if (!in->embed_input.embed || !in->embed_input.n_tokens) {
            sim_error("%s: embed_input has no rows (embed NULL or n_tokens 0)", fn);
            return -1;
        }
        if (in->embed_input.n_tokens > (size_t)h->max_context_len) {
            sim_error("%s: embed_input has %zu tokens, more than max_context_len (%d)", fn,
                      in->embed_input.n_tokens, h->max_context_len);
            return -1;
        }
        if (append_embeds(job, m, in->embed_input.embed, in->embed_input.n_tokens, "embed_input.embed"))
            return -1;
        break;
    case RKLLM_INPUT_MULTIMODAL: {
        const __typeof__(in->multimodal_input) *mm = &in->multimodal_input;
        if (!mm->prompt) {
            sim_error("%s: multimodal_input.prompt is NULL", fn);
            return -1;
        }
        size_t img = 0, vid = 0;
        const float *img_embed, *vid_embed = NULL;
#if SIM_FAMILY >= 130
        img = mm->image.n_image * mm->image.n_image_tokens;
        img_embed = mm->image.image_embed;
        vid = mm->video.n_video * mm->video.n_frame_per_video * mm->video.n_frame_tokens;
        vid_embed = mm->video.video_embed;
#elif SIM_FAMILY >= 121
        img = (mm->n_image ? mm->n_image : 1) * mm->n_image_tokens;
        img_embed = mm->image_embed;
#else
        img = mm->n_image_tokens;
        img_embed = mm->image_embed;
#endif
        if (img && !strstr(mm->prompt, "<image>")) {
            sim_error("%s: the multimodal prompt has no <image> placeholder for its image tokens", fn);
            return -1;
        }
        if (vid && !strstr(mm->prompt, "<video>")) {
            sim_error("%s: the multimodal prompt has no <video> placeholder for its video tokens", fn);
            return -1;
        }
        if (img + vid > (size_t)h->max_context_len) {
            sim_error("%s: %zu image/video tokens do not fit max_context_len (%d)", fn, img + vid,
                      h->max_context_len);
            return -1;
        }
        job->prompt = strdup(mm->prompt);
        if (append_embeds(job, m, img_embed, img, "image_embed") ||
            append_embeds(job, m, vid_embed, vid, "video_embed"))
            return -1;
        break;
    }
    default:
        sim_error("%s: unknown input type %d", fn, (int)in->input_type);
        return -1;
    }
    if ((in->input_type == RKLLM_INPUT_PROMPT || in->input_type == RKLLM_INPUT_MULTIMODAL) && !job->prompt)
        return -1;
    if (ip->lora_params) {
        const char *name = ip->lora_params->lora_adapter_name;
        for (int i = 0; name && i < h->n_loras; i++)
            if (strcmp(h->loras[i].name, name) == 0)
                job->lora = i;
        if (job->lora < 0) {
            sim_error("%s: no LoRA adapter named '%s' is loaded", fn, name ? name : "(NULL)");
            return -1;
        }
    }
    if (ip->prompt_cache_params && ip->prompt_cache_params->save_prompt_cache) {
        const char *path = ip->prompt_cache_params->prompt_cache_path;
        if (!path || !*path) {
            sim_error("%s: save_prompt_cache is set but prompt_cache_path is NULL or empty", fn);
            return -1;
        }
        job->cache_path = strdup(path);
    }
#if SIM_FAMILY >= 120
    job->keep_history = ip->keep_history;
#endif
#if SIM_FAMILY >= 130
    if (ip->sampling_params) {
        const RKLLMSamplingParam *s = ip->sampling_params;
        if (check_sampling(fn, s->top_k, s->top_p, s->temperature, s->repeat_penalty, s->frequency_penalty,
                           s->presence_penalty, s->mirostat, s->mirostat_tau, s->mirostat_eta))
            return -1;
        job->has_sampling = 1;
        job->top_k = s->top_k, job->top_p = s->top_p, job->temperature = s->temperature;
        job->repeat_penalty = s->repeat_penalty, job->frequency_penalty = s->frequency_penalty;
        job->presence_penalty = s->presence_penalty, job->mirostat = s->mirostat;
        job->mirostat_tau = s->mirostat_tau, job->mirostat_eta = s->mirostat_eta;
    }
    job->max_new_tokens = ip->max_new_tokens;
#endif
#if SIM_FAMILY >= 121
    if (h->use_cross_attn && !h->cross_set) {
        sim_error("%s: the model was initialised with use_cross_attn=1 but rkllm_set_cross_attn_params "
                  "was not called", fn);
        return -1;
    }
#endif
    return 0;
}

static int submit(LLMHandle handle, RKLLMInput *in, RKLLMInferParam *ip, void *userdata, int async,
                  const char *fn)
{
    sim_json j;
    sim_json_begin(&j, fn);
    trace_handle(&j, handle);
    trace_input(&j, in);
    trace_infer(&j, ip);
    sim_json_ptr(&j, "userdata", userdata);
    int rc = -1;
    sim_handle *h = acquire(handle, fn);
    if (!h)
        goto out;
    sim_job job;
    if (make_job(h, in, ip, userdata, &job, fn) != 0) {
        sim_job_free(&job);
        goto done;
    }
    pthread_mutex_lock(&h->mu);
    if (busy_locked(h) || h->quit) {
        pthread_mutex_unlock(&h->mu);
        sim_error("%s: %s", fn, h->quit ? "the handle is being destroyed"
                  : "another run is in progress on this handle (wait for it, or rkllm_abort it)");
        sim_job_free(&job);
        goto done;
    }
    h->job = job;
    h->abort_flag = 0;
    h->has_job = 1;
    h->running = 1;
    unsigned long seq = h->done_seq;
    pthread_cond_broadcast(&h->cv);
    if (async || h->is_async) {
        rc = 0;
    } else {
        while (h->done_seq == seq)
            pthread_cond_wait(&h->cv, &h->mu);
        rc = h->job_rc;
    }
    pthread_mutex_unlock(&h->mu);
done:
    release(h);
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
    trace_handle(&j, handle);
    int rc = -1;
    sim_handle *h = acquire(handle, "rkllm_abort");
    if (h) {
        pthread_mutex_lock(&h->mu);
        if (h->running) {
            h->abort_flag = 1;
            /* from another thread: return once the run has stopped (it checks every token) */
            while (h->running && !on_runtime_thread(h))
                pthread_cond_wait(&h->cv, &h->mu);
        }
        pthread_mutex_unlock(&h->mu);
        release(h);
        rc = 0;
    }
    sim_json_end(&j, rc);
    return rc;
}

SIM_EXPORT int rkllm_is_running(LLMHandle handle)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_is_running");
    trace_handle(&j, handle);
    int rc = -1;
    sim_handle *h = acquire(handle, "rkllm_is_running");
    if (h) {
        pthread_mutex_lock(&h->mu);
        rc = h->running ? 1 : 0;
        pthread_mutex_unlock(&h->mu);
        release(h);
    }
    sim_json_end(&j, rc);
    return rc;
}

/* Calls that change a handle's state refuse while a run is in progress. */
static sim_handle *acquire_idle(LLMHandle handle, const char *fn)
{
    sim_handle *h = acquire(handle, fn);
    if (!h)
        return NULL;
    pthread_mutex_lock(&h->mu);
    int busy = busy_locked(h);
    pthread_mutex_unlock(&h->mu);
    if (busy) {
        sim_error("%s: a run is in progress on this handle", fn);
        release(h);
        return NULL;
    }
    return h;
}

/* ---- LoRA ---- */

SIM_EXPORT int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora_adapter)
{
    static const char *fn = "rkllm_load_lora";
    sim_json j;
    sim_json_begin(&j, fn);
    trace_handle(&j, handle);
    if (lora_adapter) {
        sim_json_open(&j, "lora_adapter");
        sim_json_str(&j, "lora_adapter_path", lora_adapter->lora_adapter_path);
        sim_json_str(&j, "lora_adapter_name", lora_adapter->lora_adapter_name);
        sim_json_float(&j, "scale", lora_adapter->scale);
        sim_json_close(&j);
    } else {
        sim_json_ptr(&j, "lora_adapter", NULL);
    }
    int rc = -1;
    sim_handle *h = acquire_idle(handle, fn);
    if (!h)
        goto out;
    char err[1024];
    if (!lora_adapter || !lora_adapter->lora_adapter_path || !lora_adapter->lora_adapter_name ||
        !*lora_adapter->lora_adapter_name) {
        sim_error("%s: lora_adapter, its path or its name is NULL or empty", fn);
    } else if (!isfinite(lora_adapter->scale)) {
        sim_error("%s: scale must be a finite number", fn);
    } else if (h->n_loras >= SIM_MAX_LORAS) {
        sim_error("%s: at most %d LoRA adapters can be loaded", fn, SIM_MAX_LORAS);
    } else {
        int dup = 0;
        for (int i = 0; i < h->n_loras; i++)
            dup |= strcmp(h->loras[i].name, lora_adapter->lora_adapter_name) == 0;
        sim_lora l = {0};
        if (dup) {
            sim_error("%s: a LoRA adapter named '%s' is already loaded", fn, lora_adapter->lora_adapter_name);
        } else if (sim_lora_load(h->model, lora_adapter->lora_adapter_path, &l, err, sizeof err) != 0) {
            sim_error("%s: %s", fn, err);
        } else if (!(l.name = strdup(lora_adapter->lora_adapter_name))) {
            free(l.boost);
        } else {
            l.scale = lora_adapter->scale;
            h->loras[h->n_loras++] = l;
            rc = 0;
        }
    }
    release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}

/* ---- prompt cache ---- */

SIM_EXPORT int rkllm_load_prompt_cache(LLMHandle handle, const char *prompt_cache_path)
{
    static const char *fn = "rkllm_load_prompt_cache";
    sim_json j;
    sim_json_begin(&j, fn);
    trace_handle(&j, handle);
    sim_json_str(&j, "prompt_cache_path", prompt_cache_path);
    int rc = -1;
    sim_handle *h = acquire_idle(handle, fn);
    if (!h)
        goto out;
    FILE *f = prompt_cache_path ? fopen(prompt_cache_path, "rb") : NULL;
    uint8_t head[20];
    uint32_t v[4], crc;
    if (!prompt_cache_path) {
        sim_error("%s: prompt_cache_path is NULL", fn);
    } else if (!f) {
        sim_error("%s: cannot open prompt cache '%s'", fn, prompt_cache_path);
    } else if (fread(head, 1, 20, f) != 20 || memcmp(head, "RKSIMPCH", 8) != 0) {
        sim_error("%s: '%s' is not a prompt cache of the simulated runtime", fn, prompt_cache_path);
    } else {
        memcpy(v, head + 8, 12);
        if (v[0] != 1 || v[1] != h->model->crc || v[2] > (uint32_t)h->max_context_len) {
            sim_error("%s: prompt cache '%s' belongs to another model, format or context size", fn,
                      prompt_cache_path);
        } else {
            int32_t *ids = malloc((v[2] + 1) * sizeof *ids);
            crc = sim_crc32(0, head, 20);
            if (ids && fread(ids, 4, v[2], f) == v[2] && fread(&v[3], 4, 1, f) == 1 &&
                sim_crc32(crc, ids, v[2] * 4u) == v[3] && fgetc(f) == EOF) {
                int in_vocab = 1;
                for (uint32_t i = 0; i < v[2]; i++)
                    in_vocab &= ids[i] >= 0 && ids[i] < h->model->vocab_size;
                if (in_vocab) {
                    free(h->cache_ids);
                    h->cache_ids = ids, h->cache_n = v[2];
                    ids = NULL;
                    rc = 0;
                }
            }
            if (rc)
                sim_error("%s: prompt cache '%s' is truncated or corrupt", fn, prompt_cache_path);
            free(ids);
        }
    }
    if (f)
        fclose(f);
    release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}

SIM_EXPORT int rkllm_release_prompt_cache(LLMHandle handle)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_release_prompt_cache");
    trace_handle(&j, handle);
    int rc = -1;
    sim_handle *h = acquire_idle(handle, "rkllm_release_prompt_cache");
    if (h) {
        free(h->cache_ids);
        h->cache_ids = NULL, h->cache_n = 0;
        release(h);
        rc = 0;
    }
    sim_json_end(&j, rc);
    return rc;
}

#if SIM_FAMILY >= 120
/* ---- kv cache ---- */

#if SIM_FAMILY >= 121
SIM_EXPORT int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos, int *end_pos)
#else
SIM_EXPORT int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt)
#endif
{
    static const char *fn = "rkllm_clear_kv_cache";
    sim_json j;
    sim_json_begin(&j, fn);
    trace_handle(&j, handle);
    sim_json_int(&j, "keep_system_prompt", keep_system_prompt);
#if SIM_FAMILY >= 121
    sim_json_ptr(&j, "start_pos", start_pos);
    sim_json_ptr(&j, "end_pos", end_pos);
    if (start_pos && end_pos) {
        sim_json_int(&j, "start_pos[0]", start_pos[0]);
        sim_json_int(&j, "end_pos[0]", end_pos[0]);
    }
#endif
    int rc = -1;
    sim_handle *h = acquire_idle(handle, fn);
    if (!h)
        goto out;
#if SIM_FAMILY >= 121
    if (!start_pos != !end_pos) {
        sim_error("%s: start_pos and end_pos must both be NULL or both be set", fn);
        release(h);
        goto out;
    }
    if (start_pos) {
        /* one range per batch; the simulator holds one sequence (batch 0) */
        for (int b = 0; b < h->n_batch; b++) {
            if (start_pos[b] < 0 || end_pos[b] < start_pos[b] || (b == 0 && end_pos[b] > h->ctx_len) ||
                (b > 0 && start_pos[b] != end_pos[b] && end_pos[b] > 0)) {
                sim_error("%s: range [%d, %d) of batch %d is outside the kv cache (size %ld)", fn,
                          start_pos[b], end_pos[b], b, b == 0 ? h->ctx_len : 0L);
                release(h);
                goto out;
            }
        }
        if (start_pos[0] < end_pos[0]) {
            long s = start_pos[0], e = end_pos[0];
            memmove(h->ctx + s, h->ctx + e, (h->ctx_len - e) * sizeof *h->ctx);
            h->ctx_len -= e - s;
            if (h->sys_len > s)
                h->sys_len = s;
            release(h);
            rc = 0;
            goto out;
        }
    }
#endif
    h->ctx_len = keep_system_prompt ? h->sys_len : 0;
    if (!keep_system_prompt)
        h->sys_len = 0;
    release(h);
    rc = 0;
out:
    sim_json_end(&j, rc);
    return rc;
}

/* ---- chat template ---- */

SIM_EXPORT int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt, const char *prompt_prefix,
                                       const char *prompt_postfix)
{
    static const char *fn = "rkllm_set_chat_template";
    sim_json j;
    sim_json_begin(&j, fn);
    trace_handle(&j, handle);
    sim_json_str(&j, "system_prompt", system_prompt);
    sim_json_str(&j, "prompt_prefix", prompt_prefix);
    sim_json_str(&j, "prompt_postfix", prompt_postfix);
    int rc = -1;
    sim_handle *h = acquire_idle(handle, fn);
    if (!h)
        goto out;
    if (!system_prompt || !prompt_prefix || !prompt_postfix) {
        sim_error("%s: system_prompt, prompt_prefix and prompt_postfix must not be NULL (use \"\")", fn);
    } else {
        char *a = strdup(system_prompt), *b = strdup(prompt_prefix), *c = strdup(prompt_postfix);
        if (a && b && c) {
            free(h->system_prompt); free(h->prompt_prefix); free(h->prompt_postfix);
            h->system_prompt = a, h->prompt_prefix = b, h->prompt_postfix = c;
            rc = 0;
        } else {
            free(a); free(b); free(c);
        }
    }
    release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}
#endif

#if SIM_FAMILY >= 121
SIM_EXPORT int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes)
{
    static const char *fn = "rkllm_get_kv_cache_size";
    sim_json j;
    sim_json_begin(&j, fn);
    trace_handle(&j, handle);
    sim_json_ptr(&j, "cache_sizes", cache_sizes);
    int rc = -1;
    sim_handle *h = acquire(handle, fn);
    if (!h)
        goto out;
    if (!cache_sizes) {
        sim_error("%s: cache_sizes is NULL (it needs room for n_batch ints)", fn);
    } else {
        pthread_mutex_lock(&h->mu);
        int busy = busy_locked(h);
        pthread_mutex_unlock(&h->mu);
        if (busy) {
            sim_error("%s: a run is in progress on this handle", fn);
        } else {
            for (int b = 0; b < h->n_batch; b++)
                cache_sizes[b] = b == 0 ? (int)h->ctx_len : 0;
            rc = 0;
        }
    }
    release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}

SIM_EXPORT int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt, const char *tools,
                                        const char *tool_response_str)
{
    static const char *fn = "rkllm_set_function_tools";
    sim_json j;
    sim_json_begin(&j, fn);
    trace_handle(&j, handle);
    sim_json_str(&j, "system_prompt", system_prompt);
    sim_json_str(&j, "tools", tools);
    sim_json_str(&j, "tool_response_str", tool_response_str);
    int rc = -1;
    sim_handle *h = acquire_idle(handle, fn);
    if (!h)
        goto out;
    const char *p = tools;
    while (p && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
        p++;
    if (!tools || (*p != '[' && *p != '{')) {
        sim_error("%s: tools must be a JSON list (or object) of function definitions", fn);
    } else {
        char *a = strdup(system_prompt ? system_prompt : ""), *b = strdup(tools);
        char *c = strdup(tool_response_str && *tool_response_str ? tool_response_str : "tool_response");
        if (a && b && c) {
            free(h->tools_system); free(h->tools); free(h->tool_response);
            h->tools_system = a, h->tools = b, h->tool_response = c;
            /* an empty list declares no tools (tool-calling chat templates write their tools
               block only when there are tools): the model is as before any declaration */
            const char *q = p + 1;
            while (*q == ' ' || *q == '\n' || *q == '\t' || *q == '\r')
                q++;
            if (*p == '[' && *q == ']') {
                free(h->tools); free(h->tools_system);
                h->tools = h->tools_system = NULL;
            }
            rc = 0;
        } else {
            free(a); free(b); free(c);
        }
    }
    release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}

SIM_EXPORT int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam *cross_attn_params)
{
    static const char *fn = "rkllm_set_cross_attn_params";
    sim_json j;
    sim_json_begin(&j, fn);
    trace_handle(&j, handle);
    const RKLLMCrossAttnParam *c = cross_attn_params;
    if (c) {
        sim_json_open(&j, "cross_attn_params");
        sim_json_ptr(&j, "encoder_k_cache", c->encoder_k_cache);
        sim_json_ptr(&j, "encoder_v_cache", c->encoder_v_cache);
        sim_json_ptr(&j, "encoder_mask", c->encoder_mask);
        sim_json_ptr(&j, "encoder_pos", c->encoder_pos);
        sim_json_int(&j, "num_tokens", c->num_tokens);
        sim_json_close(&j);
    } else {
        sim_json_ptr(&j, "cross_attn_params", NULL);
    }
    int rc = -1;
    sim_handle *h = acquire_idle(handle, fn);
    if (!h)
        goto out;
    if (!h->use_cross_attn) {
        sim_error("%s: the model was not initialised with extend_param.use_cross_attn = 1", fn);
    } else if (!c || !c->encoder_k_cache || !c->encoder_v_cache || !c->encoder_mask || !c->encoder_pos) {
        sim_error("%s: cross_attn_params or one of its arrays is NULL", fn);
    } else if (c->num_tokens <= 0 || c->num_tokens > h->max_context_len) {
        sim_error("%s: num_tokens must be between 1 and %d, but got %d", fn, h->max_context_len, c->num_tokens);
    } else {
        /* the k/v caches' shapes depend on the model's layers; only mask and positions are read */
        uint32_t x = sim_crc32(0, c->encoder_mask, c->num_tokens * sizeof(float));
        h->cross_hash = sim_crc32(x, c->encoder_pos, c->num_tokens * sizeof(int32_t));
        h->cross_tokens = c->num_tokens;
        h->cross_set = 1;
        rc = 0;
    }
    release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}
#endif
