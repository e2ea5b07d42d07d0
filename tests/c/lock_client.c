/*
 * A client written the way bindings that hold a lock across a blocking call are (a pybind11
 * module holds the GIL during rkllm_run, and its callback takes the GIL again): it holds a
 * recursive lock across rkllm_run and takes it in the result callback. With the callbacks on
 * the caller's thread (the real runtime's way, the simulator's default) this works; with
 * RKLLM_SIM_CALLBACK_THREAD=worker it would deadlock, so the callback only tries the lock
 * for a while and counts its failures. Also: rkllm_abort from another thread stops a
 * blocking run that is calling back on the caller's thread.
 *
 * Prints "runs_ok", "lock_failures N", "abort_ok" (one per line); exit status 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rkllm.h"

#if defined(RKLLM_CFFI_RKLLM_H_1_1) || defined(RKLLM_CFFI_RKLLM_H_1_2_0)
#define CB_TYPE void
#define CB_RETURN(x) return
#else
#define CB_TYPE int
#define CB_RETURN(x) return (x)
#endif

static pthread_mutex_t big_lock; /* recursive, like the GIL seen from PyGILState_Ensure */
static int tokens, finished, lock_failures;

static CB_TYPE on_result(RKLLMResult *r, void *userdata, LLMCallState state)
{
    (void)r, (void)userdata;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 200 * 1000000L; /* 200 ms: far longer than a token, short of a hang */
    if (until.tv_nsec >= 1000000000L)
        until.tv_sec++, until.tv_nsec -= 1000000000L;
    /* after one failure only try: a deadlock is shown, no need to wait for each token */
    if ((lock_failures ? pthread_mutex_trylock(&big_lock) : pthread_mutex_timedlock(&big_lock, &until)) != 0) {
        lock_failures++;
        CB_RETURN(0);
    }
    if (state == RKLLM_RUN_NORMAL)
        tokens++;
    if (state == RKLLM_RUN_FINISH || state == RKLLM_RUN_ERROR)
        finished++;
    pthread_mutex_unlock(&big_lock);
    CB_RETURN(0);
}

static int init(LLMHandle *h, const char *model)
{
    RKLLMParam p = rkllm_createDefaultParam();
    p.model_path = model;
    p.max_context_len = 1024;
    p.max_new_tokens = 30;
#if defined(RKLLM_CFFI_RKLLM_H_1_3_0)
    RKLLMCallback cb;
    memset(&cb, 0, sizeof cb);
    cb.result_callback = on_result;
    return rkllm_init(h, &p, &cb);
#else
    return rkllm_init(h, &p, on_result);
#endif
}

static int run(LLMHandle h)
{
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = "Tell me about the river.";
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    ip.mode = RKLLM_INFER_GENERATE;
    pthread_mutex_lock(&big_lock); /* held across the blocking call */
    int rc = rkllm_run(h, &in, &ip, NULL);
    pthread_mutex_unlock(&big_lock);
    return rc;
}

static void *aborter(void *arg)
{
    LLMHandle h = arg;
    usleep(50 * 1000);
    return (void *)(intptr_t)rkllm_abort(h);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&big_lock, &a);
    LLMHandle h = NULL;
    if (init(&h, argv[1]) != 0)
        return 3;
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        finished = 0;
        ok &= run(h) == 0 && finished == 1;
    }
    if (ok)
        printf("runs_ok\n");
    printf("lock_failures %d\n", lock_failures);

    /* abort from another thread while the blocking run calls back on this one */
    setenv("RKLLM_SIM_TOKEN_US", "2000", 1);
    setenv("RKLLM_SIM_IGNORE_EOS", "1", 1);
    rkllm_destroy(h);
    if (init(&h, argv[1]) != 0)
        return 3;
    tokens = finished = 0;
    pthread_t t;
    pthread_create(&t, NULL, aborter, h);
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = "Go on.";
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    ip.mode = RKLLM_INFER_GENERATE;
    int rc = rkllm_run(h, &in, &ip, NULL); /* max_new_tokens 30 at 2 ms: 60 ms unless aborted */
    void *abort_rc;
    pthread_join(t, &abort_rc);
    if (rc == 0 && abort_rc == NULL && finished == 1 && tokens > 3 && tokens < 30)
        printf("abort_ok\n");
    else
        printf("abort_failed rc %d abort %ld finished %d tokens %d\n", rc, (long)(intptr_t)abort_rc,
               finished, tokens);
    rkllm_destroy(h);
    return 0;
}
