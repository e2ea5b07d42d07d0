/* rkllm-cffi shim: the model struct, shared by model.c (lifetime, generation) and calls.c
 * (the runtime's other functions). Never seen by Python. */
#ifndef RKSHIM_MODEL_H
#define RKSHIM_MODEL_H

#include <stdatomic.h>

#include "internal.h"
#include "ring.h"
#include "utf8.h"

/* Each run hands the runtime its own userdata, a run tag: &run_tags[gen % RKSHIM_RUN_TAGS],
 * an entry that points back at the model. The result callback drops a call whose tag is not
 * the live run's, so a runtime that calls back after rkllm_abort returned (or after
 * rkllm_run returned) never writes into a later run's output. A stale tag could only pass
 * again RKSHIM_RUN_TAGS runs later. The last entry is 1.3.0's init-time result_userdata:
 * whether that runtime passes it instead of rkllm_run's userdata is unknown, so it is taken
 * as the live run's while one is live (no protection then, but the output is not lost). */
#define RKSHIM_RUN_TAGS 64
#define RKSHIM_INIT_TAG RKSHIM_RUN_TAGS

struct rkshim_model {
    rkshim_runtime *rt;
    void *handle;
    pthread_mutex_t lock;
    pthread_cond_t state_cond; /* run done, op finished, aborter done, closed */
    unsigned epoch;            /* the fork epoch it was opened in (see rkshim_model_forked) */
    /* who keeps the memory: Python's owner (until rkshim_model_free) and the consumer of a
     * session (from start until its end): a stream ended after its model was garbage
     * collected still finds the struct */
    _Atomic int refs;
    int held;                  /* the current session's consumer holds a reference */

    _Atomic int closing, closed;
    int op_active;             /* a short runtime call (clear_kv_cache, ...) is running */
    _Atomic int session;       /* start() .. end() */
    unsigned long gen;         /* which session: bumped by every start() */
    int orphaned;              /* end() gave up waiting: the next start/op/close finishes it */
    int in_run;                /* the runner is inside rkllm_run */
    _Atomic int run_done;      /* the runner has returned */
    int runner_live, join_claimed;
    pthread_t runner;

    _Atomic int stop_wanted;   /* drop further output and ask the runtime to stop */
    int cancelled, limit_hit, terminal;
    _Atomic int abort_sent;
    int aborters;              /* helper threads inside rkllm_abort */
    double abort_returned;     /* when the last rkllm_abort returned (ms), 0: none yet */

    rkshim_job *job;
    int generate_mode;         /* the job generates text (no arrays to keep) */
    int32_t max_tokens;
    int32_t embed_size;        /* floats per embedding row, once the runtime said (0: unknown) */
    rkshim_outcome outcome;
    double t_start, t_first, t_last;

    float *arrays[3];          /* indexed by RKSHIM_MODE_HIDDEN / RKSHIM_MODE_LOGITS */
    int rows[3], cols[3];
    void *cross;               /* the arrays given to rkllm_set_cross_attn_params (kept) */

    rkshim_model *run_tags[RKSHIM_RUN_TAGS + 1]; /* each entry is this model (see above) */
    rkshim_model **run_tag;    /* the current session's tag (live_tag while in rkllm_run) */

    void *kept[8];             /* what rkllm_init may keep pointers to (rkshim_model_keep) */
    int n_kept;

    /* written for every token (producer) or every batch (consumer): own cache lines */
    _Alignas(64) _Atomic int32_t p_tokens; /* tokens delivered in this run (producer) */
    /* the tag of the run inside rkllm_run (NULL between runs): read by every callback */
    _Atomic(rkshim_model **) live_tag;
    rkshim_utf8 utf8;                      /* the producer's held-back bytes */
    _Alignas(64) _Atomic int consuming;    /* a thread is inside pull */
    rkshim_ring ring;
};

/* 1 (with the error set) when m was loaded in the parent of this process: fork() happened
 * since; such a model never touches the runtime again (its threads are not in the child). */
int rkshim_model_forked(rkshim_model *m);

/* Around a short runtime call: waits for another one, refuses during a session. */
int rkshim_op_begin(rkshim_model *m);
int rkshim_op_end(rkshim_model *m, int rc, const char *what);

/* job.c: checks a run request against what the runtime will read and copies it. */
int rkshim_job_make(const rkshim_run_args *a, const rkshim_family *family, int32_t embed_size,
                    rkshim_job **out);

#endif
