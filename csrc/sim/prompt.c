/*
 * A run's new tokens from a prompt: the system part and function tools when a conversation
 * starts, then the turn in the chat template (a tool response in its tag), tokenized by the
 * model or by the client's tokenizer callback (1.3.0), then any image / video tokens.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

typedef struct {
    char *p;
    size_t n, cap;
    int oom; /* an append failed: p is NULL from then on */
} sbuf;

static void sb_add(sbuf *b, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            free(b->p);
            b->p = NULL, b->oom = 1;
            return;
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s ? s : "", n);
    b->n += n;
    b->p[b->n] = 0;
}

/* Tokenizes text into out[0..cap); returns the count, -1 if it does not fit, -2 on a
 * tokenizer callback failure (message already printed). */
static long tokenize(sim_handle *h, const char *text, int32_t *out, long cap)
{
    size_t len = strlen(text);
#if SIM_FAMILY >= 130
    if (h->tokenizer_callback && len) {
        if (len > 0x7fffffff) return -1;
        int n = h->tokenizer_callback(h->tokenizer_userdata, text, (int32_t)len, out,
                                      (int32_t)(cap < 0x7fffffff ? cap : 0x7fffffff));
        if (n < 0 || n > cap) {
            sim_error("the tokenizer callback returned %d (capacity %ld)", n, cap);
            return -2;
        }
        for (int i = 0; i < n; i++)
            if (out[i] < 0 || out[i] >= h->model->vocab_size) {
                sim_error("the tokenizer callback returned token id %d, outside the vocabulary "
                          "(0..%d)", out[i], h->model->vocab_size - 1);
                return -2;
            }
        return n;
    }
#endif
    return sim_tokenize(h->model, text, len, out, cap);
}

/* The first tool name from a JSON tools list that the run's last turn mentions, copied into
 * name. The last turn is what follows the template's last user prefix in the run's text (a
 * client may send several turns in one run); a tool's response there calls nothing, so the
 * answer depends on the conversation, not on how it was split into runs. */
int sim_find_tool(const sim_handle *h, const sim_job *job, char *name, size_t cap)
{
#if SIM_FAMILY >= 121
    const char *tools = h->tools, *prompt = job->prompt;
    const char *tag = h->tool_response ? h->tool_response : "tool_response";
    if (!prompt || (job->role && strcmp(job->role, "tool") == 0))
        return 0;
    const char *prefix = h->prompt_prefix;
    for (const char *p; prefix && *prefix && (p = strstr(prompt, prefix));)
        prompt = p + strlen(prefix);
    size_t tag_n = strlen(tag);
    if (prompt[0] == '<' && strncmp(prompt + 1, tag, tag_n) == 0 && prompt[1 + tag_n] == '>')
        return 0;
#else
    const char *tools = NULL, *prompt = NULL;
    (void)h, (void)job;
#endif
    const char *p = tools;
    while (tools && prompt && (p = strstr(p, "\"name\""))) {
        p += 6;
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (*p != ':') continue;
        p++;
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (*p != '"') continue;
        const char *start = ++p, *end = strchr(start, '"');
        if (!end) break;
        size_t n = (size_t)(end - start);
        if (n && n < cap) {
            memcpy(name, start, n);
            name[n] = 0;
            if (strstr(prompt, name))
                return 1;
        }
        p = end + 1;
    }
    return 0;
}

long sim_prompt_tokens(sim_handle *h, const sim_job *job, int32_t *buf, long cap, long *sys_n, char *err,
                       size_t errlen)
{
    sbuf text = {0};
    *sys_n = 0;
    sb_add(&text, "");
#if SIM_FAMILY >= 120
    if (text.p && h->ctx_len == 0) {
        sb_add(&text, h->system_prompt);
        if (h->tools) {
            sb_add(&text, h->tools_system);
            sb_add(&text, "\n<tools>\n");
            sb_add(&text, h->tools);
            sb_add(&text, "\n</tools>\n");
        }
        if (*text.p) {
            *sys_n = tokenize(h, text.p, buf, cap);
            if (*sys_n < 0) {
                free(text.p);
                if (*sys_n == -2)
                    snprintf(err, errlen, "tokenizing the system prompt failed");
                else
                    snprintf(err, errlen, "the system prompt is longer than max_context_len (%d)",
                             h->max_context_len);
                return -1;
            }
        }
        text.n = 0;
        text.p[0] = 0;
    }
    sb_add(&text, h->prompt_prefix);
#if SIM_FAMILY >= 121
    const char *tag = h->tool_response ? h->tool_response : "tool_response";
    int is_tool = job->role && strcmp(job->role, "tool") == 0;
    if (is_tool) {
        sb_add(&text, "<"); sb_add(&text, tag); sb_add(&text, ">\n");
    }
    sb_add(&text, job->prompt);
    if (is_tool) {
        sb_add(&text, "\n</"); sb_add(&text, tag); sb_add(&text, ">");
    }
#else
    sb_add(&text, job->prompt);
#endif
    sb_add(&text, h->prompt_postfix);
#else
    sb_add(&text, job->prompt);
#endif
    if (!text.p) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    long k = tokenize(h, text.p, buf + *sys_n, cap - *sys_n);
    free(text.p);
    if (k == -2) {
        snprintf(err, errlen, "tokenizing the prompt failed");
        return -1;
    }
    if (k < 0 || *sys_n + k + (long)job->n_ids > cap) {
        snprintf(err, errlen, "the prompt is too long: it needs more than max_context_len (%d) tokens",
                 h->max_context_len);
        return -1;
    }
    long n = *sys_n + k;
    /* image / video tokens (pseudo-ids made from their embeddings) */
    if (job->n_ids)
        memcpy(buf + n, job->ids, job->n_ids * sizeof *buf);
    return n + (long)job->n_ids;
}
