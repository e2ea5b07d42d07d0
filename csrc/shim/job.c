/* rkllm-cffi shim: a run request checked against what the runtime will read, then copied.
 *
 * The runtime reads the input through bare pointers with counts of its own (n_tokens rows of
 * embedding_size floats, n_image * n_image_tokens rows of image embeddings), so a count larger
 * than the buffer makes it read past the end. The caller also passes every buffer's element
 * count, and the shim refuses a request whose buffers are shorter than what the runtime will
 * read, independently of the Python checks.
 *
 * The embedding size (floats per row) is a property of the model the runtime does not
 * report before a run. The shim uses, in this order: rkshim_run_args.embed_size when the
 * caller knows it, else the size the runtime reported for this model's hidden states (the
 * same width), else it checks what it can: at least one float per row and a whole number of
 * rows (floats % rows == 0), so a buffer never holds fewer floats than rows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define MAX_ITEMS (SIZE_MAX / 64) /* keeps every size computation below from overflowing */

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

/* rows of embeddings in a buffer of n floats (what, count_name: for messages). */
static int check_rows(const char *what, const float *data, size_t n, size_t rows,
                      const char *rows_name, size_t width) {
    if (!rows) return RKSHIM_OK;
    if (!data || !n)
        return rkshim_fail(RKSHIM_E_PARAM, "%s is empty but %s is %zu", what, rows_name, rows);
    if (rows > MAX_ITEMS)
        return rkshim_fail(RKSHIM_E_PARAM, "%s %zu is too large", rows_name, rows);
    if (width) {
        if (n != rows * width)
            return rkshim_fail(RKSHIM_E_PARAM,
                               "%s has %zu floats, but %s %zu rows of the model's embedding "
                               "size %zu need %zu",
                               what, n, rows_name, rows, width, rows * width);
    } else if (n < rows || n % rows != 0) {
        return rkshim_fail(RKSHIM_E_PARAM,
                           "%s has %zu floats, which is not %s = %zu whole rows (the runtime "
                           "would read past the end)",
                           what, n, rows_name, rows);
    }
    return RKSHIM_OK;
}

/* How many image rows the family's runtime reads (1.2.1 counts a 0 n_image as 1). */
static size_t image_rows(const rkshim_run_args *a, int family_id, int *overflow) {
    size_t images = family_id >= 130 ? a->n_image : family_id >= 121 ? (a->n_image ? a->n_image : 1) : 1;
    *overflow = images && a->n_image_tokens > MAX_ITEMS / images;
    return *overflow ? 0 : images * a->n_image_tokens;
}

static int check_args(const rkshim_run_args *a, int family_id, size_t width) {
    if (a->mode < RKSHIM_MODE_GENERATE || a->mode > RKSHIM_MODE_LOGITS)
        return rkshim_fail(RKSHIM_E_PARAM, "unknown infer mode %d", a->mode);
    if (a->n_token_ids > MAX_ITEMS || a->n_embed_floats > MAX_ITEMS ||
        a->n_image_floats > MAX_ITEMS)
        return rkshim_fail(RKSHIM_E_PARAM, "an input buffer is too large");
    if ((a->n_token_ids && !a->token_ids) || (a->n_embed_floats && !a->embed) ||
        (a->n_image_floats && !a->image_embed))
        return rkshim_fail(RKSHIM_E_PARAM, "an input buffer is NULL but has a length");
    switch (a->input_type) {
    case RKSHIM_INPUT_PROMPT:
        if (!a->prompt) return rkshim_fail(RKSHIM_E_PARAM, "the prompt is NULL");
        return RKSHIM_OK;
    case RKSHIM_INPUT_TOKEN:
        if (!a->n_token_ids) return rkshim_fail(RKSHIM_E_PARAM, "no token ids given");
        if (a->n_token_ids > INT32_MAX)
            return rkshim_fail(RKSHIM_E_PARAM, "%zu token ids is too many", a->n_token_ids);
        for (size_t i = 0; i < a->n_token_ids; i++)
            if (a->token_ids[i] < 0)
                return rkshim_fail(RKSHIM_E_PARAM, "token id %d at index %zu is negative",
                                   (int)a->token_ids[i], i);
        return RKSHIM_OK;
    case RKSHIM_INPUT_EMBED:
        if (!a->n_embed_tokens)
            return rkshim_fail(RKSHIM_E_PARAM, "embeddings need n_embed_tokens >= 1");
        return check_rows("embeddings", a->embed, a->n_embed_floats, a->n_embed_tokens,
                          "n_embed_tokens", width);
    case RKSHIM_INPUT_MULTIMODAL: {
        if (!a->prompt) return rkshim_fail(RKSHIM_E_PARAM, "the multimodal prompt is NULL");
        int overflow;
        size_t rows = image_rows(a, family_id, &overflow);
        if (overflow)
            return rkshim_fail(RKSHIM_E_PARAM, "n_image x n_image_tokens is too large");
        return check_rows("image embeddings", a->image_embed, a->n_image_floats, rows,
                          "n_images x n_image_tokens", width);
    }
    default:
        return rkshim_fail(RKSHIM_E_PARAM, "unknown input type %d", a->input_type);
    }
}

int rkshim_job_make(const rkshim_run_args *a, const rkshim_family *family, int32_t embed_size,
                    rkshim_job **out) {
    *out = NULL;
    size_t width = a->embed_size ? a->embed_size : embed_size > 0 ? (size_t)embed_size : 0;
    if (width > MAX_ITEMS) return rkshim_fail(RKSHIM_E_PARAM, "embed_size is too large");
    int rc = check_args(a, family->id, width);
    if (rc != RKSHIM_OK) return rc;
    *out = copy_job(a);
    return *out ? RKSHIM_OK : rkshim_fail(RKSHIM_E_NOMEM, "out of memory");
}
