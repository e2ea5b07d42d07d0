/* rkllm-cffi shim: the runtime's functions other than generation, each one a short call
 * made between sessions (rkshim_op_begin / rkshim_op_end in model.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define NEED(index, what)                                                                   \
    do {                                                                                    \
        if (!m->rt->sym[index])                                                             \
            return rkshim_fail(RKSHIM_E_MISSING, "%s is not in RKLLM runtime family %s",    \
                               what, m->rt->family->name);                                  \
    } while (0)

int rkshim_model_clear_kv_cache(rkshim_model *m, int keep_system_prompt, int *start_pos,
                                int *end_pos) {
    NEED(SYM_clear_kv_cache, "rkllm_clear_kv_cache");
    int rc = rkshim_op_begin(m);
    if (rc) return rc;
    rc = m->rt->family->clear_kv_cache(m->rt, m->handle, keep_system_prompt, start_pos, end_pos);
    return rkshim_op_end(m, rc, "rkllm_clear_kv_cache");
}

int rkshim_model_kv_cache_size(rkshim_model *m, int *sizes, int n_sizes) {
    NEED(SYM_get_kv_cache_size, "rkllm_get_kv_cache_size");
    if (n_sizes < 100) return rkshim_fail(RKSHIM_E_PARAM, "room for 100 sizes (n_batch) needed");
    int rc = rkshim_op_begin(m);
    if (rc) return rc;
    rc = ((int (*)(void *, int *))m->rt->sym[SYM_get_kv_cache_size])(m->handle, sizes);
    return rkshim_op_end(m, rc, "rkllm_get_kv_cache_size");
}

/* The three string functions share one shape. */
static int call_strings(rkshim_model *m, int sym, const char *what, const char *a,
                        const char *b, const char *c) {
    if (!m->rt->sym[sym])
        return rkshim_fail(RKSHIM_E_MISSING, "%s is not in RKLLM runtime family %s", what,
                           m->rt->family->name);
    int rc = rkshim_op_begin(m);
    if (rc) return rc;
    rc = ((int (*)(void *, const char *, const char *, const char *))m->rt->sym[sym])(
        m->handle, a, b, c);
    return rkshim_op_end(m, rc, what);
}

int rkshim_model_set_chat_template(rkshim_model *m, const char *system_prompt,
                                   const char *prompt_prefix, const char *prompt_postfix) {
    return call_strings(m, SYM_set_chat_template, "rkllm_set_chat_template", system_prompt,
                        prompt_prefix, prompt_postfix);
}

int rkshim_model_set_function_tools(rkshim_model *m, const char *system_prompt,
                                    const char *tools, const char *tool_response_str) {
    return call_strings(m, SYM_set_function_tools, "rkllm_set_function_tools", system_prompt,
                        tools, tool_response_str);
}

int rkshim_model_load_lora(rkshim_model *m, const char *path, const char *name, float scale) {
    NEED(SYM_load_lora, "rkllm_load_lora");
    int rc = rkshim_op_begin(m);
    if (rc) return rc;
    rkshim_capture cap;
    rkshim_capture_begin(&cap);
    rc = m->rt->family->load_lora(m->rt, m->handle, path, name, scale);
    rkshim_capture_end(&cap);
    return rkshim_op_end(m, rc, "rkllm_load_lora");
}

int rkshim_model_load_prompt_cache(rkshim_model *m, const char *path) {
    NEED(SYM_load_prompt_cache, "rkllm_load_prompt_cache");
    int rc = rkshim_op_begin(m);
    if (rc) return rc;
    rkshim_capture cap;
    rkshim_capture_begin(&cap);
    rc = ((int (*)(void *, const char *))m->rt->sym[SYM_load_prompt_cache])(m->handle, path);
    rkshim_capture_end(&cap);
    return rkshim_op_end(m, rc, "rkllm_load_prompt_cache");
}

int rkshim_model_release_prompt_cache(rkshim_model *m) {
    NEED(SYM_release_prompt_cache, "rkllm_release_prompt_cache");
    int rc = rkshim_op_begin(m);
    if (rc) return rc;
    rc = ((int (*)(void *))m->rt->sym[SYM_release_prompt_cache])(m->handle);
    return rkshim_op_end(m, rc, "rkllm_release_prompt_cache");
}

/* Whether the runtime copies the arrays or keeps the pointers is not documented; strict:
 * the shim keeps its own copy (and the struct) alive until the next successful call or the
 * model's end. Only mask and positions have a known length (num_tokens each); the caches'
 * shape depends on the model's layers, so they are checked to be whole rows of num_tokens. */
int rkshim_model_set_cross_attn_params(rkshim_model *m, const float *k_cache, size_t n_k,
                                       const float *v_cache, size_t n_v, const float *mask,
                                       size_t n_mask, const int32_t *pos, size_t n_pos,
                                       int num_tokens) {
    rkshim_clear_error();
    if (!m->rt->sym[SYM_set_cross_attn_params] || !m->rt->family->set_cross_attn)
        return rkshim_fail(RKSHIM_E_MISSING,
                           "rkllm_set_cross_attn_params is not in RKLLM runtime family %s "
                           "(it is new in 1.2.1)", m->rt->family->name);
    size_t n = num_tokens > 0 ? (size_t)num_tokens : 0;
    if (!n) return rkshim_fail(RKSHIM_E_PARAM, "num_tokens must be >= 1, got %d", num_tokens);
    if (!mask || n_mask != n || !pos || n_pos != n)
        return rkshim_fail(RKSHIM_E_PARAM, "encoder_mask and encoder_pos need num_tokens = %zu "
                                           "values each, got %zu and %zu", n, n_mask, n_pos);
    if (!k_cache || !v_cache || !n_k || n_k != n_v || n_k % n != 0 || n_k > SIZE_MAX / 16)
        return rkshim_fail(RKSHIM_E_PARAM, "encoder_k_cache and encoder_v_cache must have the "
                                           "same, non-zero length, a multiple of num_tokens "
                                           "(%zu); got %zu and %zu", n, n_k, n_v);
    size_t size = RKSHIM_CROSS_PARAM_SIZE + (2 * n_k + n) * sizeof(float) + n * sizeof(int32_t);
    char *copy = malloc(size);
    if (!copy) return rkshim_fail(RKSHIM_E_NOMEM, "out of memory");
    float *k = (float *)(copy + RKSHIM_CROSS_PARAM_SIZE), *v = k + n_k, *msk = v + n_k;
    int32_t *p = (int32_t *)(msk + n);
    memcpy(k, k_cache, n_k * sizeof *k);
    memcpy(v, v_cache, n_k * sizeof *v);
    memcpy(msk, mask, n * sizeof *msk);
    memcpy(p, pos, n * sizeof *p);
    int rc = rkshim_op_begin(m);
    if (rc) {
        free(copy);
        return rc;
    }
    rkshim_capture cap;
    rkshim_capture_begin(&cap);
    rc = m->rt->family->set_cross_attn(m->rt, m->handle, copy, k, v, msk, p, num_tokens);
    rkshim_capture_end(&cap);
    if (rc == 0) { /* the runtime now uses the new arrays */
        free(m->cross);
        m->cross = copy;
    } else {
        free(copy);
    }
    return rkshim_op_end(m, rc, "rkllm_set_cross_attn_params");
}
