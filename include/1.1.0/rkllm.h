/*
 * rkllm-cffi: declarations of the RKLLM runtime C API, ABI family 1.1
 * (Rockchip RKLLM releases 1.1.0, 1.1.1, 1.1.2, 1.1.3 and 1.1.4, whose headers are identical).
 *
 * Written for rkllm-cffi from the facts of the public API (names, types, field order and enum
 * values); this is not Rockchip's header. Plain C (C11 for the anonymous union), also usable
 * from C++, so a program written against that release's rkllm.h builds unchanged with
 * -I include/1.1.0.
 *
 * Family traits: the result callback returns void; rkllm_init takes the callback itself;
 * the call state has RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4; no chat template, kv-cache or
 * logits functions yet.
 */
#ifndef RKLLM_CFFI_RKLLM_H_1_1
#define RKLLM_CFFI_RKLLM_H_1_1
#define _RKLLM_H_ /* same guard name as the vendor's, so both are never mixed in one unit */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RKLLM_CFFI_ABI_FAMILY "1.1.0"

/* Opaque handle of one loaded model. */
typedef void* LLMHandle;

/* What a callback invocation reports. */
typedef enum {
    RKLLM_RUN_NORMAL = 0,                /* a piece of text (or token) is delivered */
    RKLLM_RUN_WAITING = 1,               /* bytes of an incomplete UTF-8 character so far */
    RKLLM_RUN_FINISH = 2,                /* the run ended normally */
    RKLLM_RUN_ERROR = 3,                 /* the run failed */
    RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4  /* hidden states are delivered (1.1 only) */
} LLMCallState;

/* Which member of RKLLMInput's union is used. */
typedef enum {
    RKLLM_INPUT_PROMPT = 0,
    RKLLM_INPUT_TOKEN = 1,
    RKLLM_INPUT_EMBED = 2,
    RKLLM_INPUT_MULTIMODAL = 3
} RKLLMInputType;

/* What a run computes. */
typedef enum {
    RKLLM_INFER_GENERATE = 0,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1
} RKLLMInferMode;

/* Platform-specific settings; 116 bytes on every architecture. */
typedef struct {
    int32_t base_domain_id;
    uint8_t reserved[112];
} RKLLMExtendParam;

/* Model parameters given to rkllm_init (returned by value by rkllm_createDefaultParam). */
typedef struct {
    const char* model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
    bool is_async;
    const char* img_start;
    const char* img_end;
    const char* img_content;
    RKLLMExtendParam extend_param;
} RKLLMParam;

/* A LoRA adapter file to load next to the model. */
typedef struct {
    const char* lora_adapter_path;
    const char* lora_adapter_name;
    float scale;
} RKLLMLoraAdapter;

/* n_tokens rows of embeddings (n_tokens * embedding size floats). */
typedef struct {
    float* embed;
    size_t n_tokens;
} RKLLMEmbedInput;

/* n_tokens token ids. */
typedef struct {
    int32_t* input_ids;
    size_t n_tokens;
} RKLLMTokenInput;

/* A text prompt with image embeddings (n_image_tokens * embedding size floats). */
typedef struct {
    char* prompt;
    float* image_embed;
    size_t n_image_tokens;
} RKLLMMultiModelInput;

/* One run's input; input_type selects the union member. */
typedef struct {
    RKLLMInputType input_type;
    union {
        const char* prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
        RKLLMMultiModelInput multimodal_input;
    };
} RKLLMInput;

/* Which loaded LoRA adapter a run uses. */
typedef struct {
    const char* lora_adapter_name;
} RKLLMLoraParam;

/* Save the prompt's cache to a file during a run (save_prompt_cache = 1). */
typedef struct {
    int save_prompt_cache;
    const char* prompt_cache_path;
} RKLLMPromptCacheParam;

/* Per-run settings; the pointers may be NULL. */
typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam* lora_params;
    RKLLMPromptCacheParam* prompt_cache_params;
} RKLLMInferParam;

/* Hidden states of the last layer: num_tokens * embd_size floats. */
typedef struct {
    const float* hidden_states;
    int embd_size;
    int num_tokens;
} RKLLMResultLastHiddenLayer;

/* What the result callback receives. */
typedef struct {
    const char* text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
} RKLLMResult;

typedef void (*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);

RKLLMParam rkllm_createDefaultParam(void);
int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter* lora_adapter);
int rkllm_load_prompt_cache(LLMHandle handle, const char* prompt_cache_path);
int rkllm_release_prompt_cache(LLMHandle handle);
int rkllm_destroy(LLMHandle handle);
int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input, RKLLMInferParam* rkllm_infer_params,
              void* userdata);
int rkllm_run_async(LLMHandle handle, RKLLMInput* rkllm_input,
                    RKLLMInferParam* rkllm_infer_params, void* userdata);
int rkllm_abort(LLMHandle handle);
int rkllm_is_running(LLMHandle handle);

#ifdef __cplusplus
}
#endif

#endif /* RKLLM_CFFI_RKLLM_H_1_1 */
