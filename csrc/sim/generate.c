/*
 * One run of the simulated runtime, on its own thread: build the prompt, prefill, then
 * generate token by token (or compute hidden states / logits), calling the client back.
 *
 * The generation loop allocates nothing and makes no system call unless a delay is set,
 * so a client's per-token overhead can be measured against it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim.h"

#define NOISE 1.2f       /* weight of the hashed "model noise" that makes greedy text vary */
#define TOPIC_BOOST 0.8f /* favour words that appear in the prompt */
#define LORA_BOOST 2.0f
#define TOPIC_WINDOW 64  /* the last this many tokens of the context are the topic */
#define LATE_CALLBACK_MS 50 /* RKLLM_SIM_FAULT=late_callback: after the aborted run's end */

static uint32_t mix32(uint32_t h)
{
    h ^= h >> 16; h *= 0x7feb352du;
    h ^= h >> 15; h *= 0x846ca68bu;
    h ^= h >> 16;
    return h;
}

static uint32_t hash_ids(uint32_t h, const int32_t *ids, long n)
{
    for (long i = 0; i < n; i++)
        h = mix32(h ^ (uint32_t)ids[i]) + 0x9e3779b9u;
    return h;
}

static float unit(uint32_t h) { return (float)(h >> 8) * (1.0f / 8388608.0f) - 1.0f; } /* [-1,1) */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Sleeps until *deadline (ns, monotonic) advanced by us microseconds; no-op when us <= 0. */
static void pace(long us, long long *deadline)
{
    if (us <= 0)
        return;
    struct timespec ts;
    if (!*deadline) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        *deadline = ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    *deadline += us * 1000LL;
    ts.tv_sec = *deadline / 1000000000LL;
    ts.tv_nsec = *deadline % 1000000000LL;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
    }
}

void sim_job_free(sim_job *job)
{
    free(job->role);
    free(job->prompt);
    free(job->ids);
    free(job->cache_path);
    memset(job, 0, sizeof *job);
}

/* ---- callbacks ---- */

typedef struct {
    sim_handle *h;
    void *userdata;
    RKLLMResult r;
    int pend_n;     /* bytes of an incomplete character held back */
    int raw;        /* RKLLM_SIM_RAW_TOKENS: hand out token bytes as they are */
    long prefilled, cached, generated; /* for the trace's run_end line */
} emitter;

static int deliver(emitter *e, LLMCallState state)
{
#if SIM_FAMILY >= 121
    return e->h->callback(&e->r, e->userdata, state);
#else
    e->h->callback(&e->r, e->userdata, state);
    return 0;
#endif
}

/* Length of the longest prefix of s that does not end inside a UTF-8 character. */
static int complete_len(const unsigned char *s, int n)
{
    for (int back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = s[n - back];
        if ((c & 0xC0) == 0x80)
            continue;               /* continuation byte: keep looking for its lead */
        int need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return back < need ? n - back : n;
    }
    return n; /* stray continuation bytes: nothing to wait for */
}

/* Delivers one token; returns the callback's answer (non-zero: the client wants to stop). */
static int emit(emitter *e, int tok)
{
    const sim_model *m = e->h->model;
    const char *t = m->tok[tok];
    int n = m->tok_len[tok];
    e->r.token_id = tok;
    if (e->raw || (!e->pend_n && complete_len((const unsigned char *)t, n) == n)) {
        e->r.text = t;
        return deliver(e, RKLLM_RUN_NORMAL);
    }
    char *b = e->h->emit_buf;
    memcpy(b + e->pend_n, t, n);
    int total = e->pend_n + n, k = complete_len((unsigned char *)b, total);
    if (k == 0) {
        /* waiting for the rest of a character: say so, hand out nothing yet */
        e->pend_n = total;
        e->r.text = "";
        return deliver(e, RKLLM_RUN_WAITING);
    }
    char keep[4];
    int rest = total - k;
    memcpy(keep, b + k, rest);
    b[k] = 0;
    e->r.text = b;
    int rc = deliver(e, RKLLM_RUN_NORMAL);
    memcpy(b, keep, rest);
    e->pend_n = rest;
    return rc;
}

/* The final callback (FINISH or ERROR); end is how the run ended (SIM_END_*). */
static void finish(emitter *e, LLMCallState state, int end)
{
    sim_handle *h = e->h;
    h->last_end = end;
    sim_trace_run_end(h, e->prefilled, e->cached, e->generated, end);
    if (h->faults.kind == SIM_FAULT_NO_FINISH && state == RKLLM_RUN_FINISH)
        return; /* a runtime that never says it finished */
    /* from here on a new run may be submitted: it waits until this callback returns */
    pthread_mutex_lock(&h->mu);
    h->finishing = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    e->r.text = NULL;
    e->r.token_id = -1;
    deliver(e, state);
}

void sim_late_callback(sim_handle *h, void *userdata)
{
    sim_sleep_ms(LATE_CALLBACK_MS, NULL);
    emitter e = {.h = h, .userdata = userdata};
    e.r.text = " late";
    e.r.token_id = -1;
    deliver(&e, RKLLM_RUN_NORMAL);
}

static int fail(emitter *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(emitter *e, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sim_error("%s", msg);
    memset(&e->r, 0, sizeof e->r);
    finish(e, RKLLM_RUN_ERROR, SIM_END_ERROR);
    return -1;
}

/* ---- sampling ---- */

typedef struct {
    int top_k, mirostat, ignore_eos;
    float top_p, temperature, repeat_penalty, frequency_penalty, presence_penalty;
    float tau, eta, mu;
    uint32_t seed;
    uint64_t rng;
    long step, words;
    float lora_scale;
    const uint8_t *lora_boost;
} sampler;

static double rng01(sampler *s)
{
    s->rng ^= s->rng >> 12; s->rng ^= s->rng << 25; s->rng ^= s->rng >> 27;
    return (double)((s->rng * 2685821657736338717ULL) >> 11) * (1.0 / 9007199254740992.0);
}

/* The score of candidate c (the i-th successor, at off + i) at this step. */
static inline __attribute__((always_inline)) float score(const sim_handle *h, const sampler *s, uint32_t at, int c)
{
    const sim_model *m = h->model;
    float x = m->next_logc[at] +
              NOISE * unit(mix32(s->seed ^ mix32((uint32_t)s->step * 0x9e3779b9u ^ (uint32_t)c)));
    if (c) {
        x += TOPIC_BOOST * h->in_prompt[c];
        if (s->lora_boost)
            x += LORA_BOOST * s->lora_scale * s->lora_boost[c];
        if (h->recent[c])
            x = x > 0 ? x / s->repeat_penalty : x * s->repeat_penalty;
        if (s->frequency_penalty != 0 || s->presence_penalty != 0) /* x - 0 is x: skip it */
            x -= s->frequency_penalty * (float)h->freq[c] + s->presence_penalty * (h->freq[c] > 0);
    }
    else
        x -= 3.0f * (s->words < 40 ? 1.0f - (float)s->words / 40.0f : 0.0f); /* answers of some length */
    return x;
}

/* Greedy choice: the first candidate with the highest score. Scores only ever lower a
 * candidate's logc + the bonuses' maximum (when the penalties cannot raise one), so the
 * rest of the list is skipped once its best logc cannot beat the best score so far. */
static int pick_greedy(sim_handle *h, sampler *s, int prev)
{
    const sim_model *m = h->model;
    uint32_t off = m->next_off[prev];
    int n = m->next_n[prev], best = -1;
    float best_x = 0;
    int can_prune = s->repeat_penalty >= 1 && s->frequency_penalty >= 0 && s->presence_penalty >= 0;
    float lora_max = s->lora_boost && LORA_BOOST * s->lora_scale > 0 ? LORA_BOOST * s->lora_scale : 0;
    float slack = NOISE + TOPIC_BOOST + lora_max + 0.01f; /* 0.01: far above float rounding */
    for (int i = 0; i < n; i++) {
        if (best >= 0 && can_prune && m->next_logc_rest[off + i] + slack < best_x)
            break;
        int c = (int)m->next_word[off + i];
        if (c == 0 && s->ignore_eos)
            continue;
        if (best >= 0 && can_prune && c && !h->in_prompt[c] &&
            m->next_logc[off + i] + (slack - TOPIC_BOOST) < best_x)
            continue; /* not even its full noise would do */
        float x = score(h, s, off + i, c);
        if (best < 0 || x > best_x)
            best = c, best_x = x;
    }
    return best;
}

/* Chooses the word after prev; -1 if nothing is allowed (only the end, and it is ignored). */
static int pick_word(sim_handle *h, sampler *s, int prev)
{
    if (s->temperature <= 0 || s->top_k == 1)
        return pick_greedy(h, s, prev);
    const sim_model *m = h->model;
    uint32_t off = m->next_off[prev];
    int n = m->next_n[prev], k = 0;
    float lg[SIM_MAX_NEXT];
    int id[SIM_MAX_NEXT];
    for (int i = 0; i < n; i++) {
        int c = (int)m->next_word[off + i];
        if (c == 0 && s->ignore_eos)
            continue;
        lg[k] = score(h, s, off + i, c), id[k] = c, k++;
    }
    if (k <= 1)
        return k ? id[0] : -1;
    /* sort descending (k <= 64) */
    for (int i = 1; i < k; i++) {
        float x = lg[i];
        int c = id[i], j = i - 1;
        for (; j >= 0 && lg[j] < x; j--)
            lg[j + 1] = lg[j], id[j + 1] = id[j];
        lg[j + 1] = x, id[j + 1] = c;
    }
    if (s->top_k > 0 && s->top_k < k)
        k = s->top_k;
    float p[SIM_MAX_NEXT], sum = 0;
    for (int i = 0; i < k; i++)
        sum += p[i] = expf((lg[i] - lg[0]) / s->temperature);
    if (s->mirostat) {
        /* keep the candidates whose surprise is below mu, then move mu towards tau */
        int kk = 1;
        while (kk < k && -log2f(p[kk] / sum) <= s->mu)
            kk++;
        k = kk;
        sum = 0;
        for (int i = 0; i < k; i++)
            sum += p[i];
    } else if (s->top_p > 0 && s->top_p < 1) {
        float acc = 0;
        int kk = 0;
        while (kk < k && acc < s->top_p * sum)
            acc += p[kk++];
        k = kk ? kk : 1;
        sum = acc ? acc : p[0];
    }
    double r = rng01(s) * sum;
    int i = 0;
    for (; i < k - 1 && (r -= p[i]) > 0; i++) {
    }
    if (s->mirostat)
        s->mu -= s->eta * (-log2f(p[i] / sum) - s->tau);
    return id[i];
}

static void note_word(sim_handle *h, long nth, int w)
{
    int slot = (int)(nth % 64);
    if (nth >= 64 && h->recent[h->ring[slot]])
        h->recent[h->ring[slot]]--;
    h->ring[slot] = w;
    h->recent[w]++;
    h->freq[w]++;
}

/* Appends a token to the kv cache, shifting out old history when it is full. */
static void push_ctx(sim_handle *h, int32_t tok)
{
    if (h->ctx_len >= h->max_context_len) {
        long keep = h->n_keep > 0 ? h->n_keep : h->sys_len;
        if (keep > h->max_context_len / 2)
            keep = h->max_context_len / 2;
        long drop = (h->ctx_len - keep) / 2;
        if (drop < 1)
            drop = 1;
        memmove(h->ctx + keep, h->ctx + keep + drop, (h->ctx_len - keep - drop) * sizeof *h->ctx);
        h->ctx_len -= drop;
    }
    h->ctx[h->ctx_len++] = tok;
}

static long vm_hwm_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static int save_cache(sim_handle *h, const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint32_t head[3] = {1, h->model->crc, (uint32_t)h->ctx_len};
    uint32_t crc = sim_crc32(0, "RKSIMPCH", 8);
    crc = sim_crc32(crc, head, sizeof head);
    crc = sim_crc32(crc, h->ctx, h->ctx_len * sizeof *h->ctx);
    /* little-endian hosts only (all supported targets are) */
    int ok = fwrite("RKSIMPCH", 1, 8, f) == 8 && fwrite(head, 4, 3, f) == 3 &&
             fwrite(h->ctx, 4, h->ctx_len, f) == (size_t)h->ctx_len && fwrite(&crc, 4, 1, f) == 1;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* A failed run leaves the kv cache as it was before its turn (or empty without history). */
static int drop_turn(sim_handle *h, const sim_job *job, long turn_start, int rc)
{
    h->ctx_len = job->keep_history ? turn_start : 0;
    if (!h->ctx_len)
        h->sys_len = 0;
    return rc;
}

/* ---- the run ---- */

int sim_execute(sim_handle *h, sim_job *job)
{
    const sim_model *m = h->model;
    emitter e = {.h = h, .userdata = job->userdata ? job->userdata : h->result_userdata,
                 .raw = (int)sim_env_long("RKLLM_SIM_RAW_TOKENS", 0)};
    double t0 = now_ms();
    long long deadline = 0;
    long prefill_us = sim_env_long("RKLLM_SIM_PREFILL_US", 0);
    long token_us = sim_env_long("RKLLM_SIM_TOKEN_US", 0);
    int32_t *buf = h->scratch;
    long cap = h->max_context_len;

    /* 1. the new tokens: system part (new conversation), then the turn */
    char err[256];
    long n = 0, sys_n = 0;
    if (job->input_type == RKLLM_INPUT_PROMPT || job->input_type == RKLLM_INPUT_MULTIMODAL)
        n = sim_prompt_tokens(h, job, buf, cap, &sys_n, err, sizeof err);
    else if ((long)job->n_ids > cap)
        n = -1, snprintf(err, sizeof err, "the input has %zu tokens, more than max_context_len (%d)",
                         job->n_ids, h->max_context_len);
    else if (job->n_ids)
        memcpy(buf, job->ids, job->n_ids * sizeof *buf), n = (long)job->n_ids;
    if (n < 0)
        return fail(&e, "%s", err);
    if (n == 0)
        return fail(&e, "the input is empty");

    /* 2. prefill: the kv cache takes the new tokens (old history shifts out if needed) */
    long reused = 0;
    if (h->ctx_len == 0 && h->cache_n && h->cache_n <= n &&
        memcmp(h->cache_ids, buf, h->cache_n * sizeof *buf) == 0)
        reused = h->cache_n;
    if (h->ctx_len == 0)
        h->sys_len = sys_n;
    if (h->ctx_len + n > h->max_context_len) {
        long keep = h->n_keep > 0 && h->n_keep < h->ctx_len ? h->n_keep : h->sys_len;
        long drop = h->ctx_len + n - h->max_context_len;
        if (drop > h->ctx_len - keep) { /* cannot happen: n <= cap and keep <= ctx_len */
            keep = 0;
            drop = h->ctx_len;
        }
        memmove(h->ctx + keep, h->ctx + keep + drop, (h->ctx_len - keep - drop) * sizeof *h->ctx);
        h->ctx_len -= drop;
    }
    long turn_start = h->ctx_len;
    memcpy(h->ctx + h->ctx_len, buf, n * sizeof *buf);
    h->ctx_len += n;
#if SIM_FAMILY >= 130
    if (h->embed_callback) {
        size_t len = (size_t)n * m->embed_size * sizeof(float);
        float *emb = malloc(len);
        int rc = emb ? h->embed_callback(h->embed_userdata, buf, (uint64_t)n, emb, len) : -1;
        if (rc == 0)
            job->extra_hash ^= sim_crc32(0, emb, len);
        free(emb);
        if (rc != 0)
            return drop_turn(h, job, turn_start, fail(&e, "the embedding callback returned %d", rc));
    }
#endif
    e.cached = reused;
    e.prefilled = n - reused;
    int prefill_fault = h->faults.kind == SIM_FAULT_PREFILL_ERROR;
    long stop_at = prefill_fault ? reused + (n - reused) / 2 : n;
    for (long i = reused; i < stop_at && prefill_us > 0 && !h->abort_flag; i++)
        pace(prefill_us, &deadline);
    if (prefill_fault) {
        e.prefilled = stop_at - reused;
        return drop_turn(h, job, turn_start,
                         fail(&e, "simulated fault: prefill failed after %ld of %ld tokens "
                              "(RKLLM_SIM_FAULT=prefill_error)", stop_at - reused, n - reused));
    }
    if (job->cache_path && save_cache(h, job->cache_path) != 0)
        return drop_turn(h, job, turn_start,
                         fail(&e, "cannot write the prompt cache file '%s'", job->cache_path));
    sim_sleep_ms(h->faults.stall_ms, &h->abort_flag); /* RKLLM_SIM_STALL_MS */
    double t1 = now_ms();
    long generated = 0;
    int paused = 0;

    /* 3. what the run computes */
    uint32_t seed = hash_ids((uint32_t)sim_env_long("RKLLM_SIM_SEED", 0) * 0x9e3779b9u ^ job->extra_hash ^
                             h->cross_hash, h->ctx, h->ctx_len);
    memset(&e.r, 0, sizeof e.r);
    if (job->mode == RKLLM_INFER_GET_LAST_HIDDEN_LAYER) {
        /* one row per token of this turn */
        size_t rows = (size_t)n, dim = (size_t)m->embed_size;
        float *hs = malloc(rows * dim * sizeof *hs);
        if (!hs)
            return drop_turn(h, job, turn_start, fail(&e, "out of memory"));
        for (size_t i = 0; i < rows; i++) {
            uint32_t rs = mix32(seed ^ mix32((uint32_t)buf[i] + 0x51u * (uint32_t)i));
            for (size_t d = 0; d < dim; d++)
                hs[i * dim + d] = unit(mix32(rs + (uint32_t)d * 0x9e3779b9u));
        }
        e.r.last_hidden_layer.hidden_states = hs;
        e.r.last_hidden_layer.embd_size = (int)dim;
        e.r.last_hidden_layer.num_tokens = (int)rows;
        e.r.token_id = -1;
#if SIM_FAMILY >= 120
        deliver(&e, RKLLM_RUN_NORMAL);
#else
        deliver(&e, RKLLM_RUN_GET_LAST_HIDDEN_LAYER);
#endif
        free(hs);
        memset(&e.r.last_hidden_layer, 0, sizeof e.r.last_hidden_layer);
#if SIM_FAMILY >= 120
    } else if (job->mode == RKLLM_INFER_GET_LOGITS) {
        /* the next-token scores after the last token of this turn */
        int V = m->vocab_size, last = buf[n - 1], w = m->tok_word[last];
        float *lg = malloc((size_t)V * sizeof *lg);
        if (!lg)
            return drop_turn(h, job, turn_start, fail(&e, "out of memory"));
        for (int t = 0; t < V; t++)
            lg[t] = -8.0f + unit(mix32(seed ^ (uint32_t)t));
        if (w < 0)
            w = 0;
        for (int i = 0; i < m->next_n[w]; i++) {
            uint32_t nw = m->next_word[m->next_off[w] + i];
            int first = (int)m->pieces[m->word_off[nw]];
            lg[first] = m->next_logc[m->next_off[w] + i] + NOISE * unit(mix32(seed ^ nw));
        }
        e.r.logits.logits = lg;
        e.r.logits.vocab_size = V;
        e.r.logits.num_tokens = 1;
        e.r.token_id = -1;
        deliver(&e, RKLLM_RUN_NORMAL);
        free(lg);
        memset(&e.r.logits, 0, sizeof e.r.logits);
#endif
    } else {
        /* generate */
        sampler s = {.top_k = h->top_k, .mirostat = h->mirostat, .top_p = h->top_p,
                     .temperature = h->temperature, .repeat_penalty = h->repeat_penalty,
                     .frequency_penalty = h->frequency_penalty, .presence_penalty = h->presence_penalty,
                     .tau = h->mirostat_tau, .eta = h->mirostat_eta,
                     .ignore_eos = h->ignore_eos || sim_env_long("RKLLM_SIM_IGNORE_EOS", 0) != 0};
        if (job->has_sampling) {
            s.top_k = job->top_k, s.mirostat = job->mirostat, s.top_p = job->top_p;
            s.temperature = job->temperature, s.repeat_penalty = job->repeat_penalty;
            s.frequency_penalty = job->frequency_penalty, s.presence_penalty = job->presence_penalty;
            s.tau = job->mirostat_tau, s.eta = job->mirostat_eta;
        }
        s.mu = 2 * s.tau;
        s.seed = seed;
        s.rng = ((uint64_t)seed << 32 | mix32(seed + 1)) | 1;
        if (job->lora >= 0) {
            s.lora_boost = h->loras[job->lora].boost;
            s.lora_scale = h->loras[job->lora].scale;
        }
        long max_new = job->max_new_tokens > 0 ? job->max_new_tokens : h->max_new_tokens;
        memset(h->freq, 0, m->n_words * sizeof *h->freq);
        memset(h->recent, 0, m->n_words * sizeof *h->recent);
        memset(h->in_prompt, 0, m->n_words);
        /* the topic: words in the last tokens of the context, however it was built (one
         * prefill or turn by turn), so that the same context gives the same answer */
        for (long i = h->ctx_len > TOPIC_WINDOW ? h->ctx_len - TOPIC_WINDOW : 0; i < h->ctx_len; i++)
            if (m->tok_word[h->ctx[i]] > 0)
                h->in_prompt[m->tok_word[h->ctx[i]]] = 1;

        /* scripted parts: a tool call, or the opening and closing of a thought */
        int32_t script[256];
        long script_n = 0, script_pos = 0, close_n = 0;
        int32_t close_think[32];
        int think = 0, end_after_script = 0;
        char tool[128];
#if SIM_FAMILY >= 121
        if (job->input_type == RKLLM_INPUT_PROMPT && h->tools &&
            sim_find_tool(h, job, tool, sizeof tool)) {
            char call[256];
            snprintf(call, sizeof call, "<tool_call>\n{\"name\": \"%s\", \"arguments\": {}}\n</tool_call>", tool);
            script_n = sim_tokenize(m, call, strlen(call), script, 256);
            end_after_script = 1;
        } else if (job->enable_thinking) {
            script_n = sim_tokenize(m, "<think>\n", 8, script, 256);
            close_n = sim_tokenize(m, "\n</think>\n\n", 11, close_think, 32);
            think = 1;
        }
#else
        (void)tool;
#endif
        if (script_n < 0 || close_n < 0)
            script_n = close_n = 0;
        const uint32_t *pieces = NULL;
        int piece_n = 0, piece_pos = 0, prev = 0, nl2 = (int)sim_tokenize(m, "\n\n", 2, close_think + 31, 1) == 1 ?
                                                                close_think[31] : m->eos_id;
        long think_words = 0;
        long error_at = h->faults.kind == SIM_FAULT_ERROR_AFTER ? h->faults.error_after : -1;
        while (!h->abort_flag && (max_new <= 0 || generated < max_new)) {
            if (generated == error_at) {
                e.generated = generated;
                return drop_turn(h, job, turn_start,
                                 fail(&e, "simulated fault: generation failed after %ld tokens "
                                      "(RKLLM_SIM_FAULT=error_after:%ld)", generated, error_at));
            }
            int tok;
            if (script_pos < script_n) {
                tok = script[script_pos++];
            } else if (piece_pos < piece_n) {
                tok = (int)pieces[piece_pos++];
            } else if (end_after_script) {
                tok = -1;
            } else if (think == 2) { /* the thought ended: close it, answer from a fresh start */
                memcpy(script, close_think, close_n * sizeof *script);
                script_n = close_n, script_pos = 0, think = 0, prev = 0;
                continue;
            } else {
                s.step++;
                int w = pick_word(h, &s, prev);
                if (w < 0 || (w == 0 && think)) { /* a new paragraph instead of the end */
                    prev = 0;
                    tok = nl2;
                    if (think) think = 2;
                } else if (w == 0) {
                    tok = -1;
                } else {
                    note_word(h, s.words++, w);
                    prev = w;
                    pieces = m->pieces + m->word_off[w];
                    piece_n = m->word_n[w];
                    piece_pos = 1;
                    tok = (int)pieces[0];
                    if (think == 1) {
                        const char *t = m->tok[tok];
                        if ((piece_n == 1 && (!strcmp(t, ".") || !strcmp(t, "?") || !strcmp(t, "!"))) ||
                            ++think_words > 60)
                            think = 2;
                    }
                }
            }
            if (tok < 0) { /* the end of the text */
                push_ctx(h, m->eos_id);
                if (!h->skip_special_token) {
                    generated++;
                    if (emit(&e, m->eos_id))
                        paused = 1;
                }
                break;
            }
            push_ctx(h, tok);
            generated++;
            if (!(h->skip_special_token && m->tok_special[tok]) && emit(&e, tok)) {
                paused = 1;
                break;
            }
#if SIM_FAMILY >= 130
            if (h->embed_callback) {
                int32_t one = tok;
                int rc = h->embed_callback(h->embed_userdata, &one, 1, h->embed_buf,
                                           (uint64_t)m->embed_size * sizeof(float));
                if (rc != 0)
                    return drop_turn(h, job, turn_start, fail(&e, "the embedding callback returned %d", rc));
            }
#endif
            pace(token_us, &deadline);
        }
    }

    /* 4. the end: perf stats, and what stays in the kv cache */
    double t2 = now_ms();
    memset(&e.r, 0, sizeof e.r);
#if SIM_FAMILY >= 121
    e.r.perf.prefill_time_ms = (float)(t1 - t0);
    e.r.perf.prefill_tokens = (int)(n - reused);
    e.r.perf.generate_time_ms = (float)(t2 - t1);
    e.r.perf.generate_tokens = (int)generated;
    e.r.perf.memory_usage_mb = (float)vm_hwm_kb() / 1024.0f;
#else
    (void)t0; (void)t1; (void)t2; (void)vm_hwm_kb;
#endif
#if SIM_FAMILY >= 120
    if (!job->keep_history && !paused)
        h->ctx_len = 0, h->sys_len = 0;
#else
    h->ctx_len = 0, h->sys_len = 0;
    (void)paused;
#endif
    e.generated = generated;
    finish(&e, RKLLM_RUN_FINISH, paused ? SIM_END_PAUSE : h->abort_flag ? SIM_END_ABORT : SIM_END_FINISH);
    return 0;
}
