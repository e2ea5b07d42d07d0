/*
 * rkllm-cffi: declarations of the RKLLM runtime C API, ABI family 1.3.0
 * (Rockchip RKLLM release 1.3.0).
 *
 * Written for rkllm-cffi from the facts of the public API (names, types, field order and enum
 * values); this is not Rockchip's header. Plain C (C11 for the anonymous union), also usable
 * from C++, so a program written against that release's rkllm.h builds unchanged with
 * -I include/1.3.0.
 *
 * Family traits (against 1.2.1): rkllm_init's third argument is now an RKLLMCallback*
 * (result, tokenizer and embedding callbacks, each with its own userdata) - same arity as
 * before, so an old caller still links and then crashes; ignore_eos_token is in the params
 * and the img_* strings left them; the multimodal input holds an image and a video part;
 * RKLLMInferParam gains per-run sampling params and max_new_tokens.
 */
#ifndef RKLLM_CFFI_RKLLM_H_1_3_0
#define RKLLM_CFFI_RKLLM_H_1_3_0
#define _RKLLM_H_ /* same guard name as the vendor's, so both are never mixed in one unit */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RKLLM_CFFI_ABI_FAMILY "1.3.0"

/* Bits of RKLLMExtendParam.enabled_cpus_mask. */
#define CPU0 (1 << 0)
#define CPU1 (1 << 1)
#define CPU2 (1 << 2)
#define CPU3 (1 << 3)
#define CPU4 (1 << 4)
#define CPU5 (1 << 5)
#define CPU6 (1 << 6)
#define CPU7 (1 << 7)

/* Opaque handle of one loaded model. */
typedef void* LLMHandle;

/* What a callback invocation reports. */
typedef enum {
    RKLLM_RUN_NORMAL = 0,                /* a piece of text (or token) is delivered */
    RKLLM_RUN_WAITING = 1,               /* bytes of an incomplete UTF-8 character so far */
    RKLLM_RUN_FINISH = 2,                /* the run ended normally */
    RKLLM_RUN_ERROR = 3                  /* the run failed */
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
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
    RKLLM_INFER_GET_LOGITS = 2
} RKLLMInferMode;

/* Asked by the runtime for the embeddings of num_tokens tokens (len bytes at embed). */
typedef int (*LLMGetEmbedCallback)(void* userdata, int32_t* tokens, uint64_t num_tokens,
                                   void* embed, uint64_t len);
/* Asked by the runtime to tokenize text_len bytes into at most n_tokens_max ids. */
typedef int (*LLMTokenizerCallback)(void* userdata, const char* text, int32_t text_len,
                                    int32_t* tokens, int32_t n_tokens_max);

/* Platform-specific settings; 120 bytes on every architecture. */
typedef struct {
    int32_t base_domain_id;
    int8_t embed_flash;          /* 1: keep the embedding table in flash, not RAM */
    int8_t enabled_cpus_num;     /* how many CPU cores the runtime may use */
    uint32_t enabled_cpus_mask;  /* which cores (CPU0..CPU7 bits) */
    uint8_t n_batch;             /* prompts decoded together (1..100) */
    int8_t use_cross_attn;       /* 1: the model takes cross-attention params */
    uint8_t reserved[104];
} RKLLMExtendParam;

/* Model parameters given to rkllm_init (returned by value by rkllm_createDefaultParam). */
typedef struct {
    const char* model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
    int32_t n_keep;  /* kv entries kept at the start when the context window shifts */
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
    bool ignore_eos_token;
    bool is_async;
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

/* A text prompt with image and video embeddings; the *_start/_end/_content strings mark
 * where the embeddings go in the prompt. */
typedef struct {
    char* prompt;
    struct {
        float* image_embed;
        size_t n_image_tokens;
        size_t n_image;
        const char* image_start;
        const char* image_end;
        const char* image_content;
        size_t image_width;
        size_t image_height;
    } image;
    struct {
        float* video_embed;
        size_t n_frame_tokens;
        size_t n_frame_per_video;
        size_t n_video;
        const char* video_start;
        const char* video_end;
        const char* video_content;
        size_t frame_width;
        size_t frame_height;
    } video;
} RKLLMMultiModalInput;

/* One run's input; input_type selects the union member. */
typedef struct {
    const char* role;      /* "user", "tool", ...; NULL means "user" */
    bool enable_thinking;  /* let reasoning models think before answering */
    RKLLMInputType input_type;
    union {
        const char* prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
        RKLLMMultiModalInput multimodal_input;
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

/* Encoder outputs for models that use cross attention (num_tokens rows). */
typedef struct {
    float* encoder_k_cache;
    float* encoder_v_cache;
    float* encoder_mask;
    int32_t* encoder_pos;
    int num_tokens;
} RKLLMCrossAttnParam;

/* Sampling settings that override the model's for one run. */
typedef struct {
    int32_t top_k;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
} RKLLMSamplingParam;

/* Per-run settings; the pointers may be NULL. */
typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam* lora_params;
    RKLLMPromptCacheParam* prompt_cache_params;
    RKLLMSamplingParam* sampling_params;
    int keep_history;  /* 1: this run's turn stays in the kv cache for the next run */
    int32_t max_new_tokens;  /* this run's limit on new tokens */
} RKLLMInferParam;

/* Hidden states of the last layer: num_tokens * embd_size floats. */
typedef struct {
    const float* hidden_states;
    int embd_size;
    int num_tokens;
} RKLLMResultLastHiddenLayer;

/* Logits: num_tokens * vocab_size floats. */
typedef struct {
    const float* logits;
    int vocab_size;
    int num_tokens;
} RKLLMResultLogits;

/* Timing and memory of a run, filled in the final callback. */
typedef struct {
    float prefill_time_ms;
    int prefill_tokens;
    float generate_time_ms;
    int generate_tokens;
    float memory_usage_mb;
} RKLLMPerfStat;

/* What the result callback receives. */
typedef struct {
    const char* text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
    RKLLMResultLogits logits;
    RKLLMPerfStat perf;
} RKLLMResult;

/* Return 0 to go on; 1 pauses the run with its state kept, and a later rkllm_run resumes it. */
typedef int (*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);

/* Everything rkllm_init calls back into, each with its own userdata; unused ones are NULL. */
typedef struct {
    LLMResultCallback result_callback;
    void* result_userdata;
    LLMTokenizerCallback tokenizer_callback;
    void* tokenizer_userdata;
    LLMGetEmbedCallback embed_callback;
    void* embed_userdata;
} RKLLMCallback;

RKLLMParam rkllm_createDefaultParam(void);
int rkllm_init(LLMHandle* handle, RKLLMParam* param, RKLLMCallback* callback);
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
int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int* start_pos, int* end_pos);
int rkllm_get_kv_cache_size(LLMHandle handle, int* cache_sizes);
int rkllm_set_chat_template(LLMHandle handle, const char* system_prompt, const char* prompt_prefix,
                            const char* prompt_postfix);
int rkllm_set_function_tools(LLMHandle handle, const char* system_prompt, const char* tools,
                             const char* tool_response_str);
int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam* cross_attn_params);

#ifdef __cplusplus
}
#endif

#endif /* RKLLM_CFFI_RKLLM_H_1_3_0 */
