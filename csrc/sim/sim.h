/*
 * rkllm-cffi simulated runtime: internal declarations shared by its sources.
 *
 * Built once per ABI family with -DRKLLM_SIM_FAMILY="x.y.z" -Iinclude/<family>; the family's
 * rkllm.h gives the types, SIM_FAMILY (a number) drives the #if's.
 */
#ifndef RKLLM_SIM_H
#define RKLLM_SIM_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "rkllm.h"

#if defined(RKLLM_CFFI_RKLLM_H_1_1)
#define SIM_FAMILY 110
#define SIM_RELEASE "1.1.4"
#elif defined(RKLLM_CFFI_RKLLM_H_1_2_0)
#define SIM_FAMILY 120
#define SIM_RELEASE "1.2.0"
#elif defined(RKLLM_CFFI_RKLLM_H_1_2_1)
#define SIM_FAMILY 121
#define SIM_RELEASE "1.2.3"
#elif defined(RKLLM_CFFI_RKLLM_H_1_3_0)
#define SIM_FAMILY 130
#define SIM_RELEASE "1.3.0"
#else
#error "build with -Iinclude/<family> so that rkllm-cffi's rkllm.h is found"
#endif

#ifndef RKLLM_SIM_FAMILY
#define RKLLM_SIM_FAMILY RKLLM_CFFI_ABI_FAMILY
#endif

#define SIM_EXPORT __attribute__((visibility("default")))
#define SIM_MAX_LORAS 8
#define SIM_MAX_NEXT 64

/* ---- model (model.c) ---- */
typedef struct {
    uint32_t crc; /* of the whole file; ties prompt caches to the model */
    char *name, *platform, *toolkit, *dtype, *system_prompt, *prompt_prefix, *prompt_postfix;
    int max_context_len, vocab_size, embed_size, bos_id, eos_id;
    /* tokens: NUL-terminated copies so a token can be handed out as result->text */
    char **tok;
    uint8_t *tok_len, *tok_special;
    int max_tok_len;
    uint32_t *tok_hash; /* open addressing: token id + 1, 0 = empty */
    uint32_t tok_hash_mask;
    /* words: word w is spelled by pieces[word_off[w] .. + word_n[w]] */
    int n_words;
    uint32_t *word_off, *pieces;
    uint8_t *word_n;
    int32_t *tok_word; /* token -> word it spells alone (or -1), for prompt topicality */
    /* chain: successors of w are next_word/next_logc[next_off[w] .. + next_n[w]] */
    uint32_t *next_off, *next_word;
    uint8_t *next_n;
    float *next_logc;
    float *next_logc_rest; /* max of next_logc[i ..] over the rest of i's list (greedy pruning) */
} sim_model;

typedef struct {
    char *name;        /* the adapter's name given to rkllm_load_lora */
    float scale;
    uint8_t *boost;    /* per word: 1 if the adapter favours it */
    uint32_t name_hash;
} sim_lora;

/* Load and check a model file; on failure writes a message to err and returns NULL. */
sim_model *sim_model_load(const char *path, char *err, size_t errlen);
void sim_model_free(sim_model *m);
/* Load a LoRA adapter for model m. */
int sim_lora_load(const sim_model *m, const char *path, sim_lora *out, char *err, size_t errlen);
/* Tokenize len bytes, appending to out (capacity cap); returns the count or -1 if > cap. */
long sim_tokenize(const sim_model *m, const char *text, size_t len, int32_t *out, long cap);
uint32_t sim_crc32(uint32_t crc, const void *data, size_t len);
/* the family of a release "x.y.z" as 110/120/121/130, 0 if unknown */
int sim_family_of(const char *release);

/* ---- messages and tracing (trace.c) ---- */
void sim_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sim_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

typedef struct {
    char *p;
    size_t n, cap;
    int first; /* no comma needed before the next member */
} sim_json;

void sim_json_begin(sim_json *j, const char *call);
void sim_json_open(sim_json *j, const char *key);  /* "key": { */
void sim_json_close(sim_json *j);                  /* } */
void sim_json_str(sim_json *j, const char *key, const char *s);
void sim_json_int(sim_json *j, const char *key, long long v);
void sim_json_float(sim_json *j, const char *key, double v);
void sim_json_bool(sim_json *j, const char *key, int v);
void sim_json_ptr(sim_json *j, const char *key, const void *p);
void sim_json_end(sim_json *j, int rc); /* adds "rc", writes the line, frees */

/* ---- faults injected for testing clients (faults.c; read at rkllm_init and at each run) ---- */

enum { SIM_FAULT_NONE, SIM_FAULT_INIT_PARTIAL, SIM_FAULT_INIT_NULL, SIM_FAULT_PREFILL_ERROR,
       SIM_FAULT_ERROR_AFTER, SIM_FAULT_NO_FINISH, SIM_FAULT_LATE_CALLBACK };

typedef struct {
    int kind;              /* RKLLM_SIM_FAULT */
    long error_after;      /* error_after:N */
    long stall_ms;         /* RKLLM_SIM_STALL_MS: before the first token */
    long abort_delay_ms;   /* RKLLM_SIM_ABORT_DELAY_MS */
    long start_delay_ms;   /* RKLLM_SIM_START_DELAY_MS: rkllm_run begins its run this late */
    int worker_callbacks;  /* RKLLM_SIM_CALLBACK_THREAD=worker: blocking runs on the worker too */
} sim_faults;

/* Reads the fault variables; -1 with a message for a value it does not know. */
int sim_faults_read(sim_faults *f, char *err, size_t errlen);
/* Sleeps ms milliseconds, in short steps, returning early once *stop is set (stop may be NULL). */
void sim_sleep_ms(long ms, _Atomic int *stop);

/* ---- handles (runtime.c, registry.c) and runs (job.c, generate.c) ---- */

/* How a run ended (for the trace and the late-callback fault). */
enum { SIM_END_FINISH, SIM_END_ABORT, SIM_END_PAUSE, SIM_END_ERROR };

/* One run's input and settings, copied at submission (the caller's memory may be gone by
 * the time an async run starts). */
typedef struct {
    int input_type, mode;
    char *role;          /* NULL = user */
    int enable_thinking;
    char *prompt;        /* prompt and multimodal inputs */
    int32_t *ids;        /* token input, or pseudo-ids of embedding rows / image tokens */
    size_t n_ids;
    uint32_t extra_hash; /* embeddings and images given with the input */
    int has_image, has_video;
    int lora;            /* index into loras, -1 = none */
    char *cache_path;    /* save the prompt cache here, or NULL */
    int keep_history;
    int has_sampling;
    int top_k, mirostat;
    float top_p, temperature, repeat_penalty, frequency_penalty, presence_penalty;
    float mirostat_tau, mirostat_eta;
    int max_new_tokens;
    void *userdata;
} sim_job;

typedef struct sim_handle {
    uint32_t id;
    sim_model *model;
    /* from RKLLMParam */
    int max_context_len, max_new_tokens, top_k, n_keep, mirostat, n_batch, use_cross_attn;
    float top_p, temperature, repeat_penalty, frequency_penalty, presence_penalty;
    float mirostat_tau, mirostat_eta;
    int skip_special_token, is_async, ignore_eos;
    LLMResultCallback callback;
    void *result_userdata;
#if SIM_FAMILY >= 130
    LLMTokenizerCallback tokenizer_callback;
    void *tokenizer_userdata;
    LLMGetEmbedCallback embed_callback;
    void *embed_userdata;
#endif
    /* chat template and function tools */
    char *system_prompt, *prompt_prefix, *prompt_postfix;
    char *tools_system, *tools, *tool_response;
    /* cross attention */
    int cross_set, cross_tokens;
    uint32_t cross_hash;
    /* adapters */
    sim_lora loras[SIM_MAX_LORAS];
    int n_loras;
    /* loaded prompt cache */
    int32_t *cache_ids;
    long cache_n;
    /* the kv cache, as the token ids it holds */
    int32_t *ctx;
    long ctx_len, sys_len;
    int32_t *scratch;      /* max_context_len + 1 ids for prompt building */
    /* per-run sampling state, allocated once */
    int32_t *freq;          /* per word: uses in this run */
    uint16_t *recent;       /* per word: uses in the repeat window */
    int32_t ring[64];
    uint8_t *in_prompt;     /* per word: named in the prompt */
    float *embed_buf;       /* one row for the embedding callback */
    char emit_buf[512];
    /* the handle's worker thread (async runs) */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int has_job, running, quit, job_rc;
    int finishing;          /* the run is delivering its final callback */
    unsigned long done_seq;
    _Atomic int abort_flag;   /* set by rkllm_abort, read by the run every token */
    sim_job job;
    int users;              /* API calls in progress (registry) */
    sim_faults faults;
    int forked;             /* made by the parent of this (forked) process: unusable here */
    int last_end;           /* SIM_END_* of the last run */
    pthread_t late_thread;  /* RKLLM_SIM_FAULT=late_callback's caller */
    int late_started;
} sim_handle;

/* registry.c: the live handles; a client's handle is an id checked against them */
int sim_register(sim_handle *h);   /* gives h its id; -1 when out of memory */
void sim_unregister(sim_handle *h); /* later calls with its handle fail */
LLMHandle sim_handle_value(const sim_handle *h);
/* Finds a live handle and marks it in use (NULL with a message if it is not live). */
sim_handle *sim_acquire(LLMHandle handle, const char *fn);
/* The same, refused (NULL, message) while a run is in progress: for calls that change it. */
sim_handle *sim_acquire_idle(LLMHandle handle, const char *fn);
void sim_release(sim_handle *h);
void sim_release_last(sim_handle *h); /* releases, then waits until no other call uses h */

/* The runs a thread is executing, innermost first: calls from inside a callback must not
 * wait for the run they are called from. */
typedef struct sim_run_frame {
    sim_handle *h;
    struct sim_run_frame *outer;
} sim_run_frame;
void sim_enter_run(sim_run_frame *f, sim_handle *h);
void sim_leave_run(sim_run_frame *f);
int sim_on_run_thread(const sim_handle *h); /* is this thread executing h's run? */
/* With h->mu held: is a run in progress? A run that is delivering its final callback is
 * waited for (from another thread), so "wait for FINISH, then run again" never fails. */
int sim_busy_locked(sim_handle *h);

/* job.c: checks and copies of what the client passes */
int sim_check_sampling(const char *fn, int top_k, float top_p, float temperature, float repeat_penalty,
                       float frequency_penalty, float presence_penalty, int mirostat, float tau, float eta);
int sim_make_job(sim_handle *h, const RKLLMInput *in, const RKLLMInferParam *ip, void *userdata,
                 sim_job *job, const char *fn);

/* trace_args.c: the structs a client passes, as trace members */
void sim_trace_handle(sim_json *j, LLMHandle handle);
void sim_trace_param(sim_json *j, const char *key, const RKLLMParam *p);
void sim_trace_input(sim_json *j, const RKLLMInput *in);
void sim_trace_infer(sim_json *j, const RKLLMInferParam *p);
void sim_trace_callback(sim_json *j, const void *callback); /* RKLLMCallback* (1.3.0) or the function */
/* One "run_end" line per executed run: what it prefilled and generated, and how it ended. */
void sim_trace_run_end(const sim_handle *h, long prefilled, long cached, long generated, int end);

/* Runs h->job on this thread; returns 0 or a negative code (after an ERROR callback). */
int sim_execute(sim_handle *h, sim_job *job);
/* prompt.c: the new tokens of a prompt run into buf[0..cap) (the system part first when the
 * kv cache is empty; *sys_n its length); -1 with a message in err. */
long sim_prompt_tokens(sim_handle *h, const sim_job *job, int32_t *buf, long cap, long *sys_n, char *err,
                       size_t errlen);
/* The first tool name of the JSON tools list that the run's last user turn mentions (not a
 * tool's response), copied into name. */
int sim_find_tool(const sim_handle *h, const sim_job *job, char *name, size_t cap);
/* RKLLM_SIM_FAULT=late_callback: one more NORMAL callback, after the run was aborted. */
void sim_late_callback(sim_handle *h, void *userdata);
void sim_job_free(sim_job *job);

/* ---- environment ---- */
long sim_env_long(const char *name, long dflt);

#endif
