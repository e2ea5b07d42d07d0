/* rkllm-cffi shim: conversions between the neutral interface and one ABI family's layout.
 *
 * Included once per family by family_<x_y_z>.c after that family's include/<family>/rkllm.h,
 * with FAM_ID (110, 120, 121, 130), FAM_NAME and FAM_TABLE defined. Every family header
 * uses the same type names, so each family is its own translation unit and everything here
 * is static except the table.
 *
 * Every struct given to the runtime starts zeroed (or from rkllm_createDefaultParam), so
 * fields a family adds that the neutral interface does not know stay at safe values.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define HAS_CPU_PARAMS (FAM_ID >= 120) /* n_keep, embed_flash, enabled_cpus_* */
#define HAS_KEEP_HISTORY (FAM_ID >= 120)
#define HAS_LOGITS (FAM_ID >= 120)
#define HAS_V121 (FAM_ID >= 121)       /* role, n_batch, perf, int callback, kv range */
#define HAS_V130 (FAM_ID >= 130)

/* rkllm_createDefaultParam returns the struct by value: it must be called through a
 * function pointer of this family's exact type. */
static RKLLMParam fam_runtime_defaults(rkshim_runtime *rt) {
    RKLLMParam (*create)(void) = (RKLLMParam(*)(void))rt->sym[SYM_createDefaultParam];
    return create();
}

static int fam_default_param(rkshim_runtime *rt, rkshim_param *o) {
    RKLLMParam p = fam_runtime_defaults(rt);
    o->max_context_len = p.max_context_len;
    o->max_new_tokens = p.max_new_tokens;
    o->top_k = p.top_k;
    o->top_p = p.top_p;
    o->temperature = p.temperature;
    o->repeat_penalty = p.repeat_penalty;
    o->frequency_penalty = p.frequency_penalty;
    o->presence_penalty = p.presence_penalty;
    o->mirostat = p.mirostat;
    o->mirostat_tau = p.mirostat_tau;
    o->mirostat_eta = p.mirostat_eta;
    o->skip_special_token = p.skip_special_token;
    o->base_domain_id = p.extend_param.base_domain_id;
#if HAS_CPU_PARAMS
    o->n_keep = p.n_keep;
    o->embed_flash = p.extend_param.embed_flash;
    o->enabled_cpus_num = p.extend_param.enabled_cpus_num;
    o->enabled_cpus_mask = p.extend_param.enabled_cpus_mask;
#endif
#if HAS_V121
    o->n_batch = p.extend_param.n_batch;
    o->use_cross_attn = p.extend_param.use_cross_attn;
#endif
#if HAS_V130
    o->ignore_eos_token = p.ignore_eos_token;
#else
    o->img_start = p.img_start;
    o->img_end = p.img_end;
    o->img_content = p.img_content;
#endif
    return RKSHIM_OK;
}

static const char *fam_keep_str(rkshim_model *m, const char *s) {
    return s ? rkshim_model_keep(m, s, strlen(s) + 1) : NULL;
}

#if HAS_V121
static int fam_result_cb(RKLLMResult *r, void *userdata, LLMCallState state)
#else
static void fam_result_cb(RKLLMResult *r, void *userdata, LLMCallState state)
#endif
{
    rkshim_event ev;
    memset(&ev, 0, sizeof ev);
    switch ((int)state) {
    case RKLLM_RUN_NORMAL: ev.kind = EV_TOKEN; break;
    case RKLLM_RUN_WAITING: ev.kind = EV_WAITING; break;
    case RKLLM_RUN_FINISH: ev.kind = EV_FINISH; break;
    case RKLLM_RUN_ERROR: ev.kind = EV_ERROR; break;
#if FAM_ID == 110
    case RKLLM_RUN_GET_LAST_HIDDEN_LAYER: ev.kind = EV_HIDDEN_ONLY; break;
#endif
    default:
#if HAS_V121
        return 0;
#else
        return;
#endif
    }
    if (r) {
        if (ev.kind == EV_TOKEN || ev.kind == EV_WAITING) {
            ev.text = r->text;
            ev.token_id = r->token_id;
        }
        ev.hidden = r->last_hidden_layer.hidden_states;
        ev.hidden_rows = r->last_hidden_layer.num_tokens;
        ev.hidden_cols = r->last_hidden_layer.embd_size;
#if HAS_LOGITS
        ev.logits = r->logits.logits;
        ev.logits_rows = r->logits.num_tokens;
        ev.logits_cols = r->logits.vocab_size;
#endif
#if HAS_V121
        if (ev.kind == EV_FINISH) {
            ev.has_perf = 1;
            ev.prefill_ms = r->perf.prefill_time_ms;
            ev.prefill_tokens = r->perf.prefill_tokens;
            ev.generate_ms = r->perf.generate_time_ms;
            ev.generate_tokens = r->perf.generate_tokens;
            ev.memory_mb = r->perf.memory_usage_mb;
        }
#endif
    }
#if HAS_V121
    return rkshim_deliver(userdata, &ev);
#else
    rkshim_deliver(userdata, &ev);
#endif
}

static int fam_init(rkshim_runtime *rt, void **handle, const char *model_path,
                    const rkshim_param *o, rkshim_model *m, void *userdata) {
    RKLLMParam p = fam_runtime_defaults(rt);
    p.model_path = fam_keep_str(m, model_path);
    p.max_context_len = o->max_context_len;
    p.max_new_tokens = o->max_new_tokens;
    p.top_k = o->top_k;
    p.top_p = o->top_p;
    p.temperature = o->temperature;
    p.repeat_penalty = o->repeat_penalty;
    p.frequency_penalty = o->frequency_penalty;
    p.presence_penalty = o->presence_penalty;
    p.mirostat = o->mirostat;
    p.mirostat_tau = o->mirostat_tau;
    p.mirostat_eta = o->mirostat_eta;
    p.skip_special_token = o->skip_special_token != 0;
    p.is_async = false; /* the shim's runner thread makes every run asynchronous */
    p.extend_param.base_domain_id = o->base_domain_id;
#if HAS_CPU_PARAMS
    p.n_keep = o->n_keep;
    p.extend_param.embed_flash = (int8_t)o->embed_flash;
    p.extend_param.enabled_cpus_num = (int8_t)o->enabled_cpus_num;
    p.extend_param.enabled_cpus_mask = o->enabled_cpus_mask;
#endif
#if HAS_V121
    p.extend_param.n_batch = (uint8_t)o->n_batch;
    p.extend_param.use_cross_attn = (int8_t)o->use_cross_attn;
#endif
#if HAS_V130
    p.ignore_eos_token = o->ignore_eos_token != 0;
    RKLLMCallback cb;
    memset(&cb, 0, sizeof cb);
    cb.result_callback = fam_result_cb;
    cb.result_userdata = userdata;
    RKLLMCallback *kept = rkshim_model_keep(m, &cb, sizeof cb);
    if (!kept) return -1;
    return ((int (*)(LLMHandle *, RKLLMParam *, RKLLMCallback *))rt->sym[SYM_init])(handle, &p,
                                                                                  kept);
#else
    (void)userdata; /* the callback gets rkllm_run's userdata */
    p.img_start = fam_keep_str(m, o->img_start);
    p.img_end = fam_keep_str(m, o->img_end);
    p.img_content = fam_keep_str(m, o->img_content);
    return ((int (*)(LLMHandle *, RKLLMParam *, LLMResultCallback))rt->sym[SYM_init])(
        handle, &p, fam_result_cb);
#endif
}

static int fam_run(rkshim_runtime *rt, void *handle, const rkshim_job *job, void *userdata) {
    const rkshim_run_args *a = &job->a;
    RKLLMInput in;
    memset(&in, 0, sizeof in);
#if HAS_V121
    in.role = a->role;
    in.enable_thinking = a->enable_thinking != 0;
#endif
    in.input_type = (RKLLMInputType)a->input_type;
    switch (a->input_type) {
    case RKSHIM_INPUT_PROMPT:
        in.prompt_input = a->prompt;
        break;
    case RKSHIM_INPUT_TOKEN:
        in.token_input.input_ids = (int32_t *)a->token_ids;
        in.token_input.n_tokens = a->n_token_ids;
        break;
    case RKSHIM_INPUT_EMBED:
        in.embed_input.embed = (float *)a->embed;
        in.embed_input.n_tokens = a->n_embed_tokens;
        break;
    case RKSHIM_INPUT_MULTIMODAL:
        in.multimodal_input.prompt = (char *)a->prompt;
#if HAS_V130
        in.multimodal_input.image.image_embed = (float *)a->image_embed;
        in.multimodal_input.image.n_image_tokens = a->n_image_tokens;
        in.multimodal_input.image.n_image = a->n_image;
        in.multimodal_input.image.image_start = a->image_start;
        in.multimodal_input.image.image_end = a->image_end;
        in.multimodal_input.image.image_content = a->image_content;
        in.multimodal_input.image.image_width = a->image_width;
        in.multimodal_input.image.image_height = a->image_height;
#else
        in.multimodal_input.image_embed = (float *)a->image_embed;
        in.multimodal_input.n_image_tokens = a->n_image_tokens;
#if HAS_V121
        in.multimodal_input.n_image = a->n_image;
        in.multimodal_input.image_width = a->image_width;
        in.multimodal_input.image_height = a->image_height;
#endif
#endif
        break;
    default:
        break;
    }
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    ip.mode = (RKLLMInferMode)a->mode;
    RKLLMLoraParam lora;
    if (a->lora_adapter_name) {
        lora.lora_adapter_name = a->lora_adapter_name;
        ip.lora_params = &lora;
    }
    RKLLMPromptCacheParam cache;
    if (a->save_prompt_cache_path) {
        cache.save_prompt_cache = 1;
        cache.prompt_cache_path = a->save_prompt_cache_path;
        ip.prompt_cache_params = &cache;
    }
#if HAS_KEEP_HISTORY
    ip.keep_history = a->keep_history;
#endif
#if HAS_V130
    RKLLMSamplingParam sampling;
    if (a->has_sampling) {
        sampling.top_k = a->sampling.top_k;
        sampling.top_p = a->sampling.top_p;
        sampling.temperature = a->sampling.temperature;
        sampling.repeat_penalty = a->sampling.repeat_penalty;
        sampling.frequency_penalty = a->sampling.frequency_penalty;
        sampling.presence_penalty = a->sampling.presence_penalty;
        sampling.mirostat = a->sampling.mirostat;
        sampling.mirostat_tau = a->sampling.mirostat_tau;
        sampling.mirostat_eta = a->sampling.mirostat_eta;
        ip.sampling_params = &sampling;
    }
    ip.max_new_tokens = a->max_new_tokens > 0 ? a->max_new_tokens : 0; /* 0: the model's */
#endif
    return ((int (*)(LLMHandle, RKLLMInput *, RKLLMInferParam *, void *))rt->sym[SYM_run])(
        handle, &in, &ip, userdata);
}

static int fam_clear_kv_cache(rkshim_runtime *rt, void *handle, int keep, int *start, int *end) {
#if HAS_V121
    return ((int (*)(LLMHandle, int, int *, int *))rt->sym[SYM_clear_kv_cache])(handle, keep,
                                                                               start, end);
#elif HAS_CPU_PARAMS
    (void)start;
    (void)end;
    return ((int (*)(LLMHandle, int))rt->sym[SYM_clear_kv_cache])(handle, keep);
#else
    (void)rt, (void)handle, (void)keep, (void)start, (void)end;
    return -1; /* not in 1.1 (callers check the symbol first) */
#endif
}

static int fam_load_lora(rkshim_runtime *rt, void *handle, const char *path, const char *name,
                         float scale) {
    RKLLMLoraAdapter adapter;
    memset(&adapter, 0, sizeof adapter);
    adapter.lora_adapter_path = path;
    adapter.lora_adapter_name = name;
    adapter.scale = scale;
    return ((int (*)(LLMHandle, RKLLMLoraAdapter *))rt->sym[SYM_load_lora])(handle, &adapter);
}

#if HAS_V121
_Static_assert(sizeof(RKLLMCrossAttnParam) <= RKSHIM_CROSS_PARAM_SIZE, "cross attn param size");
static int fam_set_cross_attn(rkshim_runtime *rt, void *handle, void *param_mem, float *k_cache,
                              float *v_cache, float *mask, int32_t *pos, int num_tokens) {
    RKLLMCrossAttnParam *p = param_mem;
    memset(p, 0, sizeof *p);
    p->encoder_k_cache = k_cache;
    p->encoder_v_cache = v_cache;
    p->encoder_mask = mask;
    p->encoder_pos = pos;
    p->num_tokens = num_tokens;
    return ((int (*)(LLMHandle, RKLLMCrossAttnParam *))rt->sym[SYM_set_cross_attn_params])(
        handle, p);
}
#define FAM_CROSS fam_set_cross_attn
#else
#define FAM_CROSS NULL
#endif

const rkshim_family FAM_TABLE = {
    FAM_NAME, fam_default_param, fam_init, fam_run, fam_clear_kv_cache, fam_load_lora,
    FAM_CROSS, FAM_ID,
};
