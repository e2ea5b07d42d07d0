/*
 * The calls that change or read a handle's state between runs: LoRA adapters, prompt
 * caches, the kv cache, the chat template, function tools and cross attention. Each
 * refuses while a run is in progress.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

/* ---- LoRA ---- */

SIM_EXPORT int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora_adapter)
{
    static const char *fn = "rkllm_load_lora";
    sim_json j;
    sim_json_begin(&j, fn);
    sim_trace_handle(&j, handle);
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
    sim_handle *h = sim_acquire_idle(handle, fn);
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
    sim_release(h);
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
    sim_trace_handle(&j, handle);
    sim_json_str(&j, "prompt_cache_path", prompt_cache_path);
    int rc = -1;
    sim_handle *h = sim_acquire_idle(handle, fn);
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
    sim_release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}

SIM_EXPORT int rkllm_release_prompt_cache(LLMHandle handle)
{
    sim_json j;
    sim_json_begin(&j, "rkllm_release_prompt_cache");
    sim_trace_handle(&j, handle);
    int rc = -1;
    sim_handle *h = sim_acquire_idle(handle, "rkllm_release_prompt_cache");
    if (h) {
        free(h->cache_ids);
        h->cache_ids = NULL, h->cache_n = 0;
        sim_release(h);
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
    sim_trace_handle(&j, handle);
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
    sim_handle *h = sim_acquire_idle(handle, fn);
    if (!h)
        goto out;
#if SIM_FAMILY >= 121
    if (!start_pos != !end_pos) {
        sim_error("%s: start_pos and end_pos must both be NULL or both be set", fn);
        sim_release(h);
        goto out;
    }
    if (start_pos) {
        /* one range per batch; the simulator holds one sequence (batch 0) */
        for (int b = 0; b < h->n_batch; b++) {
            if (start_pos[b] < 0 || end_pos[b] < start_pos[b] || (b == 0 && end_pos[b] > h->ctx_len) ||
                (b > 0 && start_pos[b] != end_pos[b] && end_pos[b] > 0)) {
                sim_error("%s: range [%d, %d) of batch %d is outside the kv cache (size %ld)", fn,
                          start_pos[b], end_pos[b], b, b == 0 ? h->ctx_len : 0L);
                sim_release(h);
                goto out;
            }
        }
        if (start_pos[0] < end_pos[0]) {
            long s = start_pos[0], e = end_pos[0];
            memmove(h->ctx + s, h->ctx + e, (h->ctx_len - e) * sizeof *h->ctx);
            h->ctx_len -= e - s;
            if (h->sys_len > s)
                h->sys_len = s;
            sim_release(h);
            rc = 0;
            goto out;
        }
    }
#endif
    h->ctx_len = keep_system_prompt ? h->sys_len : 0;
    if (!keep_system_prompt)
        h->sys_len = 0;
    sim_release(h);
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
    sim_trace_handle(&j, handle);
    sim_json_str(&j, "system_prompt", system_prompt);
    sim_json_str(&j, "prompt_prefix", prompt_prefix);
    sim_json_str(&j, "prompt_postfix", prompt_postfix);
    int rc = -1;
    sim_handle *h = sim_acquire_idle(handle, fn);
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
    sim_release(h);
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
    sim_trace_handle(&j, handle);
    sim_json_ptr(&j, "cache_sizes", cache_sizes);
    int rc = -1;
    sim_handle *h = sim_acquire(handle, fn);
    if (!h)
        goto out;
    if (!cache_sizes) {
        sim_error("%s: cache_sizes is NULL (it needs room for n_batch ints)", fn);
    } else {
        pthread_mutex_lock(&h->mu);
        int busy = sim_busy_locked(h);
        pthread_mutex_unlock(&h->mu);
        if (busy) {
            sim_error("%s: a run is in progress on this handle", fn);
        } else {
            for (int b = 0; b < h->n_batch; b++)
                cache_sizes[b] = b == 0 ? (int)h->ctx_len : 0;
            rc = 0;
        }
    }
    sim_release(h);
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
    sim_trace_handle(&j, handle);
    sim_json_str(&j, "system_prompt", system_prompt);
    sim_json_str(&j, "tools", tools);
    sim_json_str(&j, "tool_response_str", tool_response_str);
    int rc = -1;
    sim_handle *h = sim_acquire_idle(handle, fn);
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
    sim_release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}

SIM_EXPORT int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam *cross_attn_params)
{
    static const char *fn = "rkllm_set_cross_attn_params";
    sim_json j;
    sim_json_begin(&j, fn);
    sim_trace_handle(&j, handle);
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
    sim_handle *h = sim_acquire_idle(handle, fn);
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
    sim_release(h);
out:
    sim_json_end(&j, rc);
    return rc;
}
#endif
