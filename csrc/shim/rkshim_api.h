/* rkllm-cffi shim: the version-neutral interface Python sees.
 *
 * This file is read twice: by the C compiler (through rkshim.h) and by cffi's ffi.cdef()
 * (build_ffi.py), so it holds plain declarations only: no #include, no #if, no macros.
 * Every struct here is ours and the same for every runtime release; the shim converts
 * to and from the loaded family's layout in C (family_impl.h).
 */

/* Return codes of every rkshim_* function that returns int. */
enum {
    RKSHIM_OK = 0,
    RKSHIM_E_NOTFOUND = -1,    /* no usable library at any place tried */
    RKSHIM_E_UNSUPPORTED = -2, /* a runtime, but of an unknown or unsupported release */
    RKSHIM_E_CLOSED = -3,      /* the model was closed */
    RKSHIM_E_BUSY = -4,        /* the model is generating */
    RKSHIM_E_PARAM = -5,       /* an argument the shim refuses */
    RKSHIM_E_LOAD = -6,        /* rkllm_init failed */
    RKSHIM_E_RUNTIME = -7,     /* a runtime function returned an error code */
    RKSHIM_E_NOMEM = -8,
    RKSHIM_E_TIMEOUT = -9,     /* the runtime did not stop in time */
    RKSHIM_E_MISSING = -10     /* the loaded release has no such function */
};

/* Why a run ended (rkshim_outcome.status). */
enum {
    RKSHIM_RUN_NONE = 0,     /* no run yet / still running */
    RKSHIM_RUN_FINISHED = 1, /* the runtime finished on its own */
    RKSHIM_RUN_LENGTH = 2,   /* stopped by the shim at the per-run token limit */
    RKSHIM_RUN_ABORTED = 3,  /* cancelled (abort, close) */
    RKSHIM_RUN_ERROR = 4     /* the runtime reported an error */
};

/* Input kinds and infer modes (same numbers as the runtime's enums). */
enum {
    RKSHIM_INPUT_PROMPT = 0,
    RKSHIM_INPUT_TOKEN = 1,
    RKSHIM_INPUT_EMBED = 2,
    RKSHIM_INPUT_MULTIMODAL = 3
};
enum {
    RKSHIM_MODE_GENERATE = 0,
    RKSHIM_MODE_HIDDEN = 1,
    RKSHIM_MODE_LOGITS = 2
};

/* Model parameters, a superset of every family's RKLLMParam; fields a family lacks are
 * ignored when converting (Python validates that they were left at their defaults). */
typedef struct {
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
    int32_t n_keep;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    int32_t skip_special_token;
    int32_t ignore_eos_token;
    const char *img_start;
    const char *img_end;
    const char *img_content;
    int32_t base_domain_id;
    int32_t embed_flash;
    int32_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
    int32_t n_batch;
    int32_t use_cross_attn;
} rkshim_param;

/* Per-run sampling overrides (family 1.3.0). */
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
} rkshim_sampling;

/* One run: the input, then the infer params. Everything is copied by rkshim_model_start,
 * so the caller's buffers may go away as soon as it returns. Every buffer comes with its
 * element count (n_token_ids, n_embed_floats, n_image_floats), and start refuses
 * (RKSHIM_E_PARAM) a request whose buffers are shorter than what the runtime will read:
 * rows x embed_size floats (csrc/shim/job.c says how the embedding size is known). */
typedef struct {
    int32_t input_type;          /* RKSHIM_INPUT_* */
    const char *role;            /* NULL: the runtime's default ("user") */
    int32_t enable_thinking;
    const char *prompt;          /* PROMPT and MULTIMODAL */
    const int32_t *token_ids;    /* TOKEN */
    size_t n_token_ids;
    const float *embed;          /* EMBED: n_embed_tokens rows, n_embed_floats floats */
    size_t n_embed_tokens;
    size_t n_embed_floats;
    const float *image_embed;    /* MULTIMODAL */
    size_t n_image_tokens;
    size_t n_image_floats;
    size_t n_image;
    size_t image_width;
    size_t image_height;
    const char *image_start;     /* 1.3.0 carries these per run */
    const char *image_end;
    const char *image_content;
    int32_t mode;                /* RKSHIM_MODE_* */
    const char *lora_adapter_name;       /* NULL: no adapter */
    const char *save_prompt_cache_path;  /* NULL: do not save */
    int32_t keep_history;
    int32_t max_new_tokens;      /* < 0: the model's limit */
    int32_t has_sampling;
    rkshim_sampling sampling;
    size_t embed_size;           /* floats per embedding row if the caller knows; 0: not known */
} rkshim_run_args;

/* What one rkshim_model_pull hands over; valid until the next pull or end on that model.
 * text holds only complete, valid UTF-8; piece i of the batch is the code points
 * [ends[i-1], ends[i]) of text (ends[-1] = 0), and token_ids[i] is its token. */
typedef struct {
    const char *text;
    size_t text_len;
    const uint32_t *ends;
    const int32_t *token_ids;
    size_t n_tokens;
    int32_t done;                /* 1: the run has ended and everything was handed over */
} rkshim_batch;

/* How a run ended and what it cost. perf_source: 1 from the runtime, 0 measured by the shim
 * (then prefill_tokens is -1: unknown). */
typedef struct {
    int32_t status;              /* RKSHIM_RUN_* */
    int32_t runtime_rc;          /* what rkllm_run returned */
    int32_t n_tokens;            /* result callbacks that carried a token */
    int32_t perf_source;
    float prefill_ms;
    int32_t prefill_tokens;
    float generate_ms;
    int32_t generate_tokens;
    float memory_mb;
} rkshim_outcome;

typedef struct rkshim_runtime rkshim_runtime;
typedef struct rkshim_model rkshim_model;

/* Stamp of this interface; rkllm/_lowlevel.py refuses a module with another one. */
int rkshim_interface_version(void);

/* The last error of the calling thread: a message, the runtime's return code (0 if none)
 * and the last line the runtime printed on stderr during the failed call (may be ""). */
const char *rkshim_last_error(void);
int rkshim_last_runtime_rc(void);
const char *rkshim_last_runtime_message(void);

/* Find, check and load a runtime. path: an explicit library (no fallback); NULL: the
 * RKLLM_LIBRARY variable, else the bundled one under package_dir/libs/<arch>/, else the
 * system's. path_source names where path came from, for messages ("runtime=", ...).
 * abi: a release or family ("1.2.2") forcing the ABI, or NULL/"" to detect it.
 * Runtimes are never unloaded. */
int rkshim_runtime_open(const char *path, const char *path_source, const char *package_dir,
                        const char *abi, rkshim_runtime **out);
const char *rkshim_runtime_path(const rkshim_runtime *rt);
const char *rkshim_runtime_family(const rkshim_runtime *rt);
const char *rkshim_runtime_release(const rkshim_runtime *rt);   /* "" when not known */
const char *rkshim_runtime_detected_by(const rkshim_runtime *rt);
const char *rkshim_runtime_sim_info(const rkshim_runtime *rt);  /* NULL: not a simulator */
int rkshim_runtime_default_param(rkshim_runtime *rt, rkshim_param *out);

/* A loaded model. Every function below is safe from any thread at any time, before and
 * after close; free closes and drops the owner's reference: the memory lives until that and
 * the end of the last session started (a stream may be ended after its model was freed).
 * After fork(), a model of the parent fails every call in the child with RKSHIM_E_CLOSED
 * (close and free succeed without touching the runtime; is_closed is 1). */
int rkshim_model_open(rkshim_runtime *rt, const char *model_path, const rkshim_param *param,
                      rkshim_model **out);
int rkshim_model_close(rkshim_model *m);
void rkshim_model_free(rkshim_model *m);
int rkshim_model_is_closed(rkshim_model *m);

/* Generation: start one run (E_BUSY if one is going), pull batches (timeout_ms: 0 polls,
 * < 0 waits without limit), then end it (aborts it if still running and waits for the
 * runtime's last callback; timeout_ms bounds that wait; out, if not NULL, gets how the
 * run ended, unless the session had already ended; on E_TIMEOUT the session is left to
 * the model, whose next start/call/close waits for the runtime and finishes it). abort only
 * asks the runtime to stop; the consumer still pulls until done. A successful start holds a
 * reference to the model until the first end after it (also one that returns E_TIMEOUT or
 * E_CLOSED): call end exactly once per started run, even after free. */
int rkshim_model_start(rkshim_model *m, const rkshim_run_args *args);
int rkshim_model_pull(rkshim_model *m, rkshim_batch *out, int timeout_ms);
int rkshim_model_abort(rkshim_model *m);
int rkshim_model_end(rkshim_model *m, int timeout_ms, rkshim_outcome *out);
/* The last hidden states (kind RKSHIM_MODE_HIDDEN) or logits (RKSHIM_MODE_LOGITS) of the
 * current run: rows x cols floats, valid until the next start or end. */
int rkshim_model_array(rkshim_model *m, int kind, const float **data, int *rows, int *cols);
/* Readable (counter > 0) whenever a pull would not block; for event loops. */
int rkshim_model_event_fd(rkshim_model *m);

/* The runtime's other functions (E_MISSING where the family lacks them). */
int rkshim_model_clear_kv_cache(rkshim_model *m, int keep_system_prompt,
                                int *start_pos, int *end_pos);
int rkshim_model_kv_cache_size(rkshim_model *m, int *sizes, int n_sizes);
int rkshim_model_set_chat_template(rkshim_model *m, const char *system_prompt,
                                   const char *prompt_prefix, const char *prompt_postfix);
int rkshim_model_set_function_tools(rkshim_model *m, const char *system_prompt,
                                    const char *tools, const char *tool_response_str);
int rkshim_model_load_lora(rkshim_model *m, const char *path, const char *name, float scale);
int rkshim_model_load_prompt_cache(rkshim_model *m, const char *path);
int rkshim_model_release_prompt_cache(rkshim_model *m);
int rkshim_model_is_running(rkshim_model *m);
/* 1.2.1+ (E_MISSING before): the encoder outputs for cross attention (the model must have been
 * loaded with use_cross_attn = 1). mask and pos hold num_tokens values; the caches' shape
 * depends on the model's layers: equal lengths, whole multiples of num_tokens. Copied and
 * kept by the shim until the next successful call or the model's end. */
int rkshim_model_set_cross_attn_params(rkshim_model *m, const float *k_cache, size_t n_k,
                                       const float *v_cache, size_t n_v, const float *mask,
                                       size_t n_mask, const int32_t *pos, size_t n_pos,
                                       int num_tokens);
