/*
 * RKLLM_SIM_TRACE: every field of the structs a client passes, as JSON members (trace.c
 * writes the lines). Pointers are traced as null / "non-null", strings as text.
 */
#include <stdio.h>

#include "sim.h"

void sim_trace_handle(sim_json *j, LLMHandle handle)
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

void sim_trace_param(sim_json *j, const char *key, const RKLLMParam *p)
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

void sim_trace_input(sim_json *j, const RKLLMInput *in)
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

void sim_trace_infer(sim_json *j, const RKLLMInferParam *p)
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

void sim_trace_callback(sim_json *j, const void *callback)
{
    if (!j->p)
        return;
#if SIM_FAMILY >= 130
    const RKLLMCallback *c = callback;
    if (!c) {
        sim_json_ptr(j, "callback", NULL);
        return;
    }
    sim_json_open(j, "callback");
    sim_json_ptr(j, "result_callback", (const void *)(uintptr_t)c->result_callback);
    sim_json_ptr(j, "result_userdata", c->result_userdata);
    sim_json_ptr(j, "tokenizer_callback", (const void *)(uintptr_t)c->tokenizer_callback);
    sim_json_ptr(j, "tokenizer_userdata", c->tokenizer_userdata);
    sim_json_ptr(j, "embed_callback", (const void *)(uintptr_t)c->embed_callback);
    sim_json_ptr(j, "embed_userdata", c->embed_userdata);
    sim_json_close(j);
#else
    sim_json_ptr(j, "callback", callback);
#endif
}

void sim_trace_run_end(const sim_handle *h, long prefilled, long cached, long generated, int end)
{
    static const char *const ends[] = {"finish", "abort", "pause", "error"};
    sim_json j;
    sim_json_begin(&j, "run_end");
    if (!j.p)
        return;
    char b[32];
    snprintf(b, sizeof b, "%p", sim_handle_value(h));
    sim_json_str(&j, "handle", b);
    sim_json_int(&j, "prefill_tokens", prefilled);
    sim_json_int(&j, "cached_tokens", cached);
    sim_json_int(&j, "generate_tokens", generated);
    sim_json_str(&j, "end", ends[end]);
    sim_json_end(&j, end == SIM_END_ERROR ? -1 : 0);
}
