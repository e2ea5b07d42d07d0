/*
 * What a client passes to rkllm_init / rkllm_run, checked and copied: sampling values, and
 * a run's input and settings as a sim_job (an async run may start after the caller's
 * memory is gone).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

/* ---- checks of sampling values (shared by RKLLMParam and, in 1.3.0, RKLLMSamplingParam) ---- */

int sim_check_sampling(const char *fn, int top_k, float top_p, float temperature, float repeat_penalty,
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

/* ---- a run's input ---- */

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
int sim_make_job(sim_handle *h, const RKLLMInput *in, const RKLLMInferParam *ip, void *userdata,
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
        if (sim_check_sampling(fn, s->top_k, s->top_p, s->temperature, s->repeat_penalty, s->frequency_penalty,
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
