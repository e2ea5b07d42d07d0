/* rkllm-cffi shim: what the shim's own files share (never seen by Python). */
#ifndef RKSHIM_INTERNAL_H
#define RKSHIM_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>

#include "rkshim.h"

/* Runtime symbols the shim may call, looked up once by name. */
enum {
    SYM_createDefaultParam,
    SYM_init,
    SYM_load_lora,
    SYM_load_prompt_cache,
    SYM_release_prompt_cache,
    SYM_destroy,
    SYM_run,
    SYM_abort,
    SYM_is_running,
    SYM_clear_kv_cache,
    SYM_get_kv_cache_size,
    SYM_set_chat_template,
    SYM_set_function_tools,
    SYM_set_cross_attn_params,
    SYM_COUNT
};
extern const char *const rkshim_symbol_names[SYM_COUNT];

/* What a family's result callback reports, in neutral form. */
enum { EV_TOKEN, EV_WAITING, EV_FINISH, EV_ERROR, EV_HIDDEN_ONLY };
typedef struct {
    int kind;
    const char *text;
    int32_t token_id;
    const float *hidden;
    int hidden_rows, hidden_cols;
    const float *logits;
    int logits_rows, logits_cols;
    int has_perf;
    float prefill_ms;
    int prefill_tokens;
    float generate_ms;
    int generate_tokens;
    float memory_mb;
} rkshim_event;

/* A run's input and infer params, deep-copied from rkshim_run_args (one allocation). */
typedef struct {
    rkshim_run_args a; /* pointers inside point into this job's own copies */
} rkshim_job;

typedef struct rkshim_family {
    const char *name;
    int (*default_param)(rkshim_runtime *rt, rkshim_param *out);
    /* userdata: what the result callback gets when a run passes none (1.3.0) */
    int (*init)(rkshim_runtime *rt, void **handle, const char *model_path,
                const rkshim_param *p, rkshim_model *m, void *userdata);
    /* userdata: the run's tag (model.h), given to the result callback */
    int (*run)(rkshim_runtime *rt, void *handle, const rkshim_job *job, void *userdata);
    int (*clear_kv_cache)(rkshim_runtime *rt, void *handle, int keep, int *start, int *end);
    int (*load_lora)(rkshim_runtime *rt, void *handle, const char *path, const char *name,
                     float scale);
    /* NULL before 1.2.1; param_mem: RKSHIM_CROSS_PARAM_SIZE bytes for the runtime's struct,
     * kept alive by the caller with the arrays */
    int (*set_cross_attn)(rkshim_runtime *rt, void *handle, void *param_mem, float *k_cache,
                          float *v_cache, float *mask, int32_t *pos, int num_tokens);
    int id; /* 110, 120, 121, 130 */
} rkshim_family;
#define RKSHIM_CROSS_PARAM_SIZE 64

extern const rkshim_family rkshim_family_1_1_0, rkshim_family_1_2_0, rkshim_family_1_2_1,
    rkshim_family_1_3_0;

struct rkshim_runtime {
    char path[4096];
    char release[32];
    char detected_by[160];
    char sim_info[256];
    int is_sim;
    void *dl;
    void *sym[SYM_COUNT];
    const rkshim_family *family;
};

/* Called by a family's result callback with its userdata (a run tag, model.h); returns what
 * the callback returns (1.2.1+): always 0, because there 1 means "pause" (the runtime keeps
 * the run's state to be resumed by the next rkllm_run), which rkllm-cffi does not use. Runs
 * are stopped with rkllm_abort. Output after a stop was asked for, and any call whose tag is
 * not the live run's, is dropped here. */
int rkshim_deliver(void *userdata, const rkshim_event *ev);

/* A copy of data owned by the model until it is freed (for what rkllm_init may keep a
 * pointer to: the model path, strings in the params, 1.3.0's callback struct). */
void *rkshim_model_keep(rkshim_model *m, const void *data, size_t size);

/* errors.c */
int rkshim_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int rkshim_fail_rc(int code, int runtime_rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void rkshim_clear_error(void);
/* Capture what the runtime prints on stderr during a short call: begin, call, end (the
 * text goes back to the real stderr; the last line is kept for rkshim_last_runtime_message). */
typedef struct {
    int saved_fd, capture_fd;
} rkshim_capture;
void rkshim_capture_begin(rkshim_capture *c);
void rkshim_capture_end(rkshim_capture *c);
/* In the child after fork() (pthread_atfork): undoes a capture the parent had in progress. */
void rkshim_capture_after_fork_child(void);

#endif
