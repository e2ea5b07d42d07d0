/*
 * A C client of the simulated runtime, compiled once per ABI family against
 * include/<family>/rkllm.h and linked with that family's librkllmrt-sim-<family>.so.
 * It calls every function of the family, including the failure paths, and prints one line
 * per check: "ok NAME" or "FAIL NAME: why". tests/test_sim_c.py builds and runs it.
 *
 * Environment: SIM_MODEL (demo model), SIM_DIR (directory with the damaged / other model
 * files made by the test driver), SIM_LIB (the library path, for the dlopen checks).
 *
 * Longer than 700 lines on purpose: one list of checks, one per API behaviour, sharing the
 * collector and helpers above them; split into files, each would repeat that scaffolding.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rkllm.h"

#if defined(RKLLM_CFFI_RKLLM_H_1_1)
#define FAM 110
#elif defined(RKLLM_CFFI_RKLLM_H_1_2_0)
#define FAM 120
#elif defined(RKLLM_CFFI_RKLLM_H_1_2_1)
#define FAM 121
#else
#define FAM 130
#endif

#if FAM >= 121
#define CB_TYPE int
#define CB_RETURN(x) return (x)
#else
#define CB_TYPE void
#define CB_RETURN(x) return
#endif

static int failures;
static const char *model, *dir;

static void check(int ok, const char *name, const char *fmt, ...)
{
    if (ok) {
        printf("ok %s\n", name);
    } else {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL %s: ", name);
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
        failures++;
    }
    fflush(stdout);
}

static char *path_in_dir(const char *file)
{
    static char buf[8][1024];
    static int i;
    char *b = buf[i++ % 8];
    snprintf(b, 1024, "%s/%s", dir, file);
    return b;
}

/* ---- stderr capture: the runtime's messages ---- */
static int saved_fd = -1;
static char capture_path[1024];

static void capture_begin(void)
{
    fflush(stderr);
    snprintf(capture_path, sizeof capture_path, "%s/stderr.txt", dir);
    int fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    saved_fd = dup(2);
    dup2(fd, 2);
    close(fd);
}

static char *capture_end(void)
{
    static char text[16384];
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    FILE *f = fopen(capture_path, "r");
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    text[n] = 0;
    if (f)
        fclose(f);
    return text;
}

/* ---- a collector of one run's callbacks ---- */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *text;
    size_t len, cap;
    int normal, waiting, finish, error, hidden, after_finish;
    int tokens;          /* NORMAL + WAITING callbacks */
    int stop_after;      /* return 1 after this many tokens (1.2.1+), 0 = never */
    int foreign_thread;  /* every callback ran on another thread than the caller's */
    int caller_thread;   /* every callback ran on the caller's thread */
    pthread_t caller;
    int incomplete_normal; /* a NORMAL text that ends inside a UTF-8 character */
    int waiting_nonempty;
    int hidden_tokens, hidden_dim, hidden_finite;
    int logits_vocab, logits_tokens;
    void *userdata_seen;
    LLMHandle handle;    /* for calls from inside the callback */
    int inner_run_rc, inner_destroy_rc, inner_running;
    int call_inside;
    RKLLMInput *inner_input;
    RKLLMInferParam *inner_params;
#if FAM >= 121
    RKLLMPerfStat perf;
#endif
} collector;

static void col_init(collector *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->caller = pthread_self();
    c->foreign_thread = 1;
    c->caller_thread = 1;
    c->inner_run_rc = c->inner_destroy_rc = 99;
}

static void col_free(collector *c)
{
    free(c->text);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

static void col_append(collector *c, const char *s)
{
    size_t n = strlen(s);
    if (c->len + n + 1 > c->cap) {
        c->cap = (c->len + n + 1) * 2;
        c->text = realloc(c->text, c->cap);
    }
    memcpy(c->text + c->len, s, n + 1);
    c->len += n;
}

static int ends_incomplete(const char *s)
{
    size_t n = strlen(s);
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char ch = (unsigned char)s[n - back];
        if ((ch & 0xC0) == 0x80)
            continue;
        size_t need = ch >= 0xF0 ? 4 : ch >= 0xE0 ? 3 : ch >= 0xC0 ? 2 : 1;
        return back < need;
    }
    return 0;
}

static int valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3 : (*p & 0xF8) == 0xF0 ? 4 : 0;
        if (!n)
            return 0;
        for (int k = 1; k < n; k++)
            if ((p[k] & 0xC0) != 0x80)
                return 0;
        p += n;
    }
    return 1;
}

static collector *g_fallback; /* 1.3.0: result_userdata */

static CB_TYPE callback(RKLLMResult *r, void *userdata, LLMCallState state)
{
    collector *c = userdata ? userdata : g_fallback;
    if (!c)
        CB_RETURN(0);
    int stop = 0;
    pthread_mutex_lock(&c->mu);
    c->userdata_seen = userdata;
    if (pthread_equal(pthread_self(), c->caller))
        c->foreign_thread = 0;
    else
        c->caller_thread = 0;
    if (c->finish || c->error)
        c->after_finish++;
    switch ((int)state) {
    case RKLLM_RUN_NORMAL:
        if (r->text) {
            c->normal++, c->tokens++;
            if (ends_incomplete(r->text))
                c->incomplete_normal++;
            col_append(c, r->text);
        }
        if (r->last_hidden_layer.num_tokens) {
            c->hidden++;
            c->hidden_tokens = r->last_hidden_layer.num_tokens;
            c->hidden_dim = r->last_hidden_layer.embd_size;
            c->hidden_finite = 1;
            for (long i = 0; i < (long)c->hidden_tokens * c->hidden_dim; i++)
                c->hidden_finite &= isfinite(r->last_hidden_layer.hidden_states[i]) &&
                                    fabsf(r->last_hidden_layer.hidden_states[i]) <= 1.0f;
        }
#if FAM >= 120
        if (r->logits.num_tokens) {
            c->logits_vocab = r->logits.vocab_size;
            c->logits_tokens = r->logits.num_tokens;
            float mx = -1e30f;
            for (int i = 0; i < r->logits.vocab_size * r->logits.num_tokens; i++)
                mx = r->logits.logits[i] > mx ? r->logits.logits[i] : mx;
            if (!isfinite(mx))
                c->logits_vocab = -1;
        }
#endif
        break;
    case RKLLM_RUN_WAITING:
        c->waiting++, c->tokens++;
        if (r->text && *r->text)
            c->waiting_nonempty++;
        break;
#if FAM == 110
    case RKLLM_RUN_GET_LAST_HIDDEN_LAYER:
        c->hidden++;
        c->hidden_tokens = r->last_hidden_layer.num_tokens;
        c->hidden_dim = r->last_hidden_layer.embd_size;
        c->hidden_finite = 1;
        for (long i = 0; i < (long)c->hidden_tokens * c->hidden_dim; i++)
            c->hidden_finite &= isfinite(r->last_hidden_layer.hidden_states[i]);
        break;
#endif
    case RKLLM_RUN_FINISH:
        c->finish++;
#if FAM >= 121
        c->perf = r->perf;
#endif
        break;
    case RKLLM_RUN_ERROR:
        c->error++;
        break;
    }
    if (c->stop_after && c->tokens >= c->stop_after)
        stop = 1;
    int inside = c->call_inside && c->tokens == 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (inside) {
        c->inner_running = rkllm_is_running(c->handle);
        c->inner_run_rc = rkllm_run(c->handle, c->inner_input, c->inner_params, c);
        c->inner_destroy_rc = rkllm_destroy(c->handle);
    }
    (void)stop;
    CB_RETURN(stop);
}

static void col_wait(collector *c)
{
    pthread_mutex_lock(&c->mu);
    while (!c->finish && !c->error)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

/* ---- helpers for init and runs ---- */

static RKLLMParam base_param(void)
{
    RKLLMParam p = rkllm_createDefaultParam();
    p.model_path = model;
    p.max_context_len = 4096;
    p.max_new_tokens = 60;
    p.skip_special_token = true;
    return p;
}

#if FAM >= 130
static LLMTokenizerCallback g_tokenizer;
static LLMGetEmbedCallback g_embedder;
#endif

static int init_with(LLMHandle *h, RKLLMParam *p)
{
#if FAM >= 130
    RKLLMCallback cb = {0};
    cb.result_callback = callback;
    cb.result_userdata = g_fallback;
    cb.tokenizer_callback = g_tokenizer;
    cb.embed_callback = g_embedder;
    return rkllm_init(h, p, &cb);
#else
    return rkllm_init(h, p, callback);
#endif
}

static LLMHandle open_default(void)
{
    RKLLMParam p = base_param();
    LLMHandle h = NULL;
    if (init_with(&h, &p) != 0) {
        printf("FAIL open: rkllm_init failed on the demo model\n");
        exit(2);
    }
    return h;
}

static RKLLMInput prompt_input(const char *text)
{
    RKLLMInput in;
    memset(&in, 0, sizeof in);
#if FAM >= 121
    in.role = "user";
#endif
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = text;
    return in;
}

static RKLLMInferParam infer_param(void)
{
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    ip.mode = RKLLM_INFER_GENERATE;
    return ip;
}

/* Runs a prompt to the end on h; returns rkllm_run's code, the collector holds the result. */
static int run_text(LLMHandle h, const char *text, collector *c)
{
    RKLLMInput in = prompt_input(text);
    RKLLMInferParam ip = infer_param();
    col_init(c);
    return rkllm_run(h, &in, &ip, c);
}

/* Generates for a prompt on a fresh handle made with param p; returns malloc'd text or NULL. */
static char *generate_with(RKLLMParam *p, const char *text)
{
    LLMHandle h = NULL;
    if (init_with(&h, p) != 0)
        return NULL;
    collector c;
    int rc = run_text(h, text, &c);
    rkllm_destroy(h);
    char *out = rc == 0 && c.finish == 1 ? strdup(c.text ? c.text : "") : NULL;
    col_free(&c);
    return out;
}

static int differs(const char *a, const char *b) { return a && b && strcmp(a, b) != 0; }

/* ---- checks ---- */

static void check_default_param(void)
{
    RKLLMParam p = rkllm_createDefaultParam();
    check(p.max_context_len > 0 && p.top_p > 0 && p.top_p <= 1 && p.repeat_penalty > 0 && p.model_path == NULL,
          "default_param", "max_context_len %d top_p %g", p.max_context_len, p.top_p);
#if FAM >= 121
    check(p.extend_param.n_batch == 1, "default_param_n_batch", "n_batch %d", p.extend_param.n_batch);
#endif
}

/* This process's virtual memory size (kB), 0 if unknown. */
static long vm_size_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %ld", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static void expect_init_fails(const char *name, RKLLMParam *p, const char *needle)
{
    LLMHandle h = (LLMHandle)(uintptr_t)0x1234;
    capture_begin();
    int rc = init_with(&h, p);
    char *err = capture_end();
    check(rc != 0 && h == NULL && strstr(err, "E RKLLM-SIM:") && strstr(err, needle), name,
          "rc %d handle %p, stderr: %s", rc, h, err);
    if (rc == 0)
        rkllm_destroy(h);
}

static void check_init_failures(void)
{
    RKLLMParam p = base_param();
    p.model_path = path_in_dir("does-not-exist.rkllm");
    expect_init_fails("init_missing_file", &p, "cannot open");
    p.model_path = path_in_dir("empty.rkllm");
    expect_init_fails("init_empty_file", &p, "empty");
    p.model_path = path_in_dir("truncated.rkllm");
    expect_init_fails("init_truncated_file", &p, "truncated");
    p.model_path = path_in_dir("corrupt.rkllm");
    expect_init_fails("init_corrupt_file", &p, "CRC");
    p.model_path = path_in_dir("other.bin");
    expect_init_fails("init_other_format", &p, "not a simulated RKLLM model");
    p.model_path = path_in_dir("newer.rkllm");
    expect_init_fails("init_incompatible_model", &p, "needs a newer runtime");
    p.model_path = path_in_dir("lora.rkllm");
    expect_init_fails("init_lora_as_model", &p, "not a model");
    p.model_path = dir; /* a directory */
    expect_init_fails("init_directory", &p, "not a regular file");
    /* a FIFO: refused at once, not waited on for a writer */
    char *fifo = path_in_dir("fifo.rkllm");
    unlink(fifo);
    if (mkfifo(fifo, 0600) == 0) {
        p.model_path = fifo;
        expect_init_fails("init_fifo", &p, "not a regular file");
        unlink(fifo);
    }
    /* a big file of another format (1.5 GB, sparse) is refused from its header, unread: with
     * the address space limited to less than the file, reading it whole would fail */
    char *big = path_in_dir("big.bin");
    int bfd = open(big, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (bfd >= 0 && ftruncate(bfd, 1536L * 1024 * 1024) == 0) {
        struct rlimit saved;
        long vm_kb = vm_size_kb();
        int limited = vm_kb > 0 && vm_kb < 512 * 1024 && getrlimit(RLIMIT_AS, &saved) == 0;
        if (limited) { /* not under an emulator that maps a large address space up front */
            struct rlimit small = saved;
            small.rlim_cur = (rlim_t)(vm_kb + 768 * 1024) * 1024;
            limited = setrlimit(RLIMIT_AS, &small) == 0;
        }
        p.model_path = big;
        expect_init_fails("init_big_other_file", &p, "not a simulated RKLLM model");
        if (limited)
            setrlimit(RLIMIT_AS, &saved);
    }
    if (bfd >= 0)
        close(bfd);
    unlink(big);
    p = base_param();
    p.model_path = NULL;
    expect_init_fails("init_null_model_path", &p, "model_path");
    p = base_param();
    p.max_context_len = 0;
    expect_init_fails("init_context_zero", &p, "max_context_len");
    p.max_context_len = 1 << 20;
    expect_init_fails("init_context_too_big", &p, "max_context_len");
    p = base_param();
    p.top_p = 1.5f;
    expect_init_fails("init_bad_top_p", &p, "top_p");
    p = base_param();
    p.mirostat = 3;
    expect_init_fails("init_bad_mirostat", &p, "mirostat");
    p = base_param();
    p.temperature = NAN;
    expect_init_fails("init_nan_temperature", &p, "temperature");
#if FAM >= 121
    p = base_param();
    p.extend_param.n_batch = 0;
    expect_init_fails("init_n_batch_zero", &p, "The n_batch must be between 1 and 100, but got 0");
    p.extend_param.n_batch = 101;
    expect_init_fails("init_n_batch_big", &p, "but got 101");
#endif
    /* NULL arguments */
    capture_begin();
    LLMHandle h = NULL;
    p = base_param();
    int rc1 = init_with(NULL, &p);
    int rc2 = init_with(&h, NULL);
#if FAM >= 130
    int rc3 = rkllm_init(&h, &p, NULL);
    RKLLMCallback empty = {0};
    int rc4 = rkllm_init(&h, &p, &empty);
#else
    int rc3 = rkllm_init(&h, &p, NULL), rc4 = -1;
#endif
    char *err = capture_end();
    check(rc1 && rc2 && rc3 && rc4 && h == NULL && strstr(err, "E RKLLM-SIM:"), "init_null_arguments",
          "%d %d %d %d %p", rc1, rc2, rc3, rc4, h);
}

static void check_basic(void)
{
    LLMHandle h = open_default();
    collector c;
    int rc = run_text(h, "Tell me about the river and the old bridge.", &c);
    check(rc == 0 && c.finish == 1 && c.error == 0 && c.normal > 3 && c.after_finish == 0, "run_blocking",
          "rc %d finish %d error %d normal %d after %d", rc, c.finish, c.error, c.normal, c.after_finish);
    /* a blocking rkllm_run calls back on the thread that called it, as the real runtime does
     * (RKLLM_SIM_CALLBACK_THREAD=worker: on the runtime's thread) */
    const char *cb_thread = getenv("RKLLM_SIM_CALLBACK_THREAD");
    if (cb_thread && strcmp(cb_thread, "worker") == 0)
        check(c.foreign_thread, "blocking_callbacks_on_caller_thread", "worker mode: a callback ran on the caller's thread");
    else
        check(c.caller_thread, "blocking_callbacks_on_caller_thread", "a callback ran on another thread");
    check(c.text && valid_utf8(c.text), "text_valid_utf8", "text: %s", c.text ? c.text : "(none)");
    check(c.userdata_seen == &c, "userdata_passed", "got %p", c.userdata_seen);
    check(c.tokens <= 60, "max_new_tokens_60", "%d tokens", c.tokens);
    check(rkllm_is_running(h) == 0, "not_running_after", "is_running %d", rkllm_is_running(h));
    char *first = c.text ? strdup(c.text) : NULL;
    printf("# sample: %s\n", first ? first : "");
    col_free(&c);
    run_text(h, "Tell me about the river and the old bridge.", &c);
    check(first && c.text && strcmp(first, c.text) == 0, "deterministic_same_handle", "texts differ");
    col_free(&c);
    run_text(h, "What is your favourite bread recipe?", &c);
    check(differs(first, c.text), "prompt_changes_text", "same text for another prompt");
    col_free(&c);
    check(rkllm_destroy(h) == 0, "destroy", "");
    RKLLMParam p = base_param();
    char *again = generate_with(&p, "Tell me about the river and the old bridge.");
    check(first && again && strcmp(first, again) == 0, "deterministic_new_handle", "texts differ");
    free(again);
    free(first);
}

static void check_max_new_tokens(void)
{
    RKLLMParam p = base_param();
    p.max_new_tokens = 5;
    LLMHandle h = NULL;
    init_with(&h, &p);
    collector c;
    run_text(h, "Hello", &c);
    check(c.tokens == 5 && c.finish == 1, "max_new_tokens_5", "%d tokens", c.tokens);
#if FAM >= 121
    check(c.perf.generate_tokens == 5 && c.perf.prefill_tokens > 0, "perf_stats",
          "generate_tokens %d prefill_tokens %d", c.perf.generate_tokens, c.perf.prefill_tokens);
#endif
    col_free(&c);
    rkllm_destroy(h);
    /* the vendor's examples: -1 (no limit) with a 4096 context */
    p = base_param();
    p.max_new_tokens = -1;
    init_with(&h, &p);
    int rc = run_text(h, "Hello there", &c);
    check(rc == 0 && c.finish == 1 && c.tokens > 0, "max_new_tokens_minus_one", "rc %d tokens %d", rc, c.tokens);
    col_free(&c);
    rkllm_destroy(h);
}

static void check_params_change_output(void)
{
    const char *q = "Describe a walk along the coast path in spring.";
    RKLLMParam p = base_param();
    p.max_new_tokens = 80;
    char *base = generate_with(&p, q);
    p = base_param(); p.max_new_tokens = 80; p.top_k = 1;
    char *t = generate_with(&p, q);
    check(differs(base, t), "top_k_changes_text", "same text");
    free(t);
    p = base_param(); p.max_new_tokens = 80; p.temperature = 1.6f;
    t = generate_with(&p, q);
    check(differs(base, t), "temperature_changes_text", "same text");
    free(t);
    p = base_param(); p.max_new_tokens = 80; p.top_p = 0.3f;
    t = generate_with(&p, q);
    check(differs(base, t), "top_p_changes_text", "same text");
    free(t);
    p = base_param(); p.max_new_tokens = 80; p.repeat_penalty = 3.0f;
    t = generate_with(&p, q);
    check(differs(base, t), "repeat_penalty_changes_text", "same text");
    free(t);
    p = base_param(); p.max_new_tokens = 80; p.frequency_penalty = 2.0f;
    t = generate_with(&p, q);
    check(differs(base, t), "frequency_penalty_changes_text", "same text");
    free(t);
    p = base_param(); p.max_new_tokens = 80; p.presence_penalty = 2.0f;
    t = generate_with(&p, q);
    check(differs(base, t), "presence_penalty_changes_text", "same text");
    free(t);
    p = base_param(); p.max_new_tokens = 80; p.mirostat = 2; p.mirostat_tau = 2.0f;
    t = generate_with(&p, q);
    check(differs(base, t), "mirostat_changes_text", "same text");
    free(t);
    /* greedy decoding is still varied text, not a loop */
    p = base_param(); p.max_new_tokens = 80; p.top_k = 1;
    t = generate_with(&p, q);
    check(t && strlen(t) > 40, "greedy_text", "%s", t ? t : "(none)");
    free(t);
    /* skip_special_token */
    p = base_param(); p.max_new_tokens = -1; p.skip_special_token = false;
    t = generate_with(&p, q);
    check(t && strstr(t, "<|im_end|>"), "special_tokens_shown", "%s", t ? t : "(none)");
    free(t);
    p = base_param(); p.max_new_tokens = -1; p.skip_special_token = true;
    t = generate_with(&p, q);
    check(t && !strstr(t, "<|im_end|>"), "special_tokens_skipped", "%s", t ? t : "(none)");
    free(t);
    free(base);
}

static void check_utf8_splitting(void)
{
    /* a long output passes many split characters (— “ ” ’ and CJK/emoji) */
    setenv("RKLLM_SIM_IGNORE_EOS", "1", 1);
    RKLLMParam p = base_param();
    p.max_new_tokens = 4000;
    LLMHandle h = NULL;
    init_with(&h, &p);
    collector c;
    run_text(h, "Write a long story.", &c);
    check(c.waiting > 0 && c.waiting_nonempty == 0, "waiting_state", "waiting %d (non-empty %d)", c.waiting,
          c.waiting_nonempty);
    check(c.incomplete_normal == 0 && valid_utf8(c.text), "normal_texts_complete", "%d incomplete",
          c.incomplete_normal);
    check(c.tokens == 4000, "ignore_eos_long_output", "%d tokens", c.tokens);
    char *cooked = strdup(c.text);
    col_free(&c);
    setenv("RKLLM_SIM_RAW_TOKENS", "1", 1);
    run_text(h, "Write a long story.", &c);
    check(c.incomplete_normal > 0 && c.waiting == 0 && strcmp(c.text, cooked) == 0, "raw_token_bytes",
          "incomplete %d waiting %d same %d", c.incomplete_normal, c.waiting, strcmp(c.text, cooked) == 0);
    unsetenv("RKLLM_SIM_RAW_TOKENS");
    unsetenv("RKLLM_SIM_IGNORE_EOS");
    col_free(&c);
    free(cooked);
    rkllm_destroy(h);
}

static void check_context_limit(void)
{
    RKLLMParam p = base_param();
    p.max_context_len = 48;
    LLMHandle h = NULL;
    init_with(&h, &p);
    collector c;
    capture_begin();
    int rc = run_text(h, "This prompt is certainly much longer than forty-eight tokens, because it goes on and on "
                         "about rivers, bridges, bread, lighthouses and the sea, and then it goes on some more about "
                         "mountains, markets, festivals, libraries and trains.", &c);
    char *err = capture_end();
    check(rc != 0 && c.error == 1 && c.finish == 0 && strstr(err, "too long"), "prompt_longer_than_context",
          "rc %d error %d stderr %s", rc, c.error, err);
    col_free(&c);
    rc = run_text(h, "Hi", &c);
    check(rc == 0 && c.finish == 1, "short_prompt_after_long", "rc %d", rc);
    col_free(&c);
    rkllm_destroy(h);
}

static void check_bad_handles_and_inputs(void)
{
    LLMHandle h = open_default();
    LLMHandle dead = open_default();
    rkllm_destroy(dead);
    LLMHandle bogus = (LLMHandle)(uintptr_t)0xdeadbee0;
    RKLLMInput in = prompt_input("Hello");
    RKLLMInferParam ip = infer_param();
    capture_begin();
    int n_bad = 0, total = 0;
    LLMHandle hs[3] = {NULL, dead, bogus};
    for (int i = 0; i < 3; i++) {
        LLMHandle x = hs[i];
        RKLLMLoraAdapter la = {"x", "x", 1.0f};
        int rcs[] = {
            rkllm_run(x, &in, &ip, NULL), rkllm_run_async(x, &in, &ip, NULL), rkllm_abort(x),
            rkllm_is_running(x) < 0 ? -1 : 0, rkllm_destroy(x), rkllm_load_lora(x, &la),
            rkllm_load_prompt_cache(x, "x"), rkllm_release_prompt_cache(x),
#if FAM >= 120
            rkllm_set_chat_template(x, "", "", ""),
#endif
#if FAM == 120
            rkllm_clear_kv_cache(x, 0),
#endif
#if FAM >= 121
            rkllm_clear_kv_cache(x, 0, NULL, NULL), rkllm_get_kv_cache_size(x, (int[1]){0}),
            rkllm_set_function_tools(x, "", "[]", ""), rkllm_set_cross_attn_params(x, NULL),
#endif
        };
        for (size_t k = 0; k < sizeof rcs / sizeof rcs[0]; k++, total++)
            n_bad += rcs[k] != 0;
    }
    char *err = capture_end();
    check(n_bad == total && strstr(err, "is NULL") && strstr(err, "already destroyed"), "bad_handles",
          "%d of %d calls failed", n_bad, total);

    collector c;
    col_init(&c);
    capture_begin();
    int rc_null_input = rkllm_run(h, NULL, &ip, &c);
    int rc_null_params = rkllm_run(h, &in, NULL, &c);
    RKLLMInput bad = in;
    bad.input_type = (RKLLMInputType)7;
    int rc_type = rkllm_run(h, &bad, &ip, &c);
    RKLLMInferParam badmode = ip;
    badmode.mode = (RKLLMInferMode)9;
    int rc_mode = rkllm_run(h, &in, &badmode, &c);
    RKLLMInput nullprompt = prompt_input(NULL);
    int rc_nullprompt = rkllm_run(h, &nullprompt, &ip, &c);
    RKLLMInput tok = in;
    int32_t ids[2] = {5, 1 << 30};
    tok.input_type = RKLLM_INPUT_TOKEN;
    tok.token_input.input_ids = ids;
    tok.token_input.n_tokens = 2;
    int rc_badtok = rkllm_run(h, &tok, &ip, &c);
    RKLLMLoraParam lp = {"no-such-adapter"};
    RKLLMInferParam withlora = ip;
    withlora.lora_params = &lp;
    int rc_lora = rkllm_run(h, &in, &withlora, &c);
#if FAM >= 121
    RKLLMInput badrole = in;
    badrole.role = "wizard";
    int rc_role = rkllm_run(h, &badrole, &ip, &c);
#else
    int rc_role = -1;
#endif
    err = capture_end();
    check(rc_null_input && rc_null_params && rc_type && rc_mode && rc_nullprompt && rc_badtok && rc_lora && rc_role &&
              c.finish == 0 && c.error == 0,
          "bad_inputs", "%d %d %d %d %d %d %d %d", rc_null_input, rc_null_params, rc_type, rc_mode, rc_nullprompt,
          rc_badtok, rc_lora, rc_role);
    check(strstr(err, "unknown input type 7") && strstr(err, "unknown infer mode 9") && strstr(err, "outside the vocabulary"),
          "bad_input_messages", "%s", err);
    col_free(&c);
    run_text(h, "Still fine?", &c);
    check(c.finish == 1, "handle_usable_after_misuse", "");
    col_free(&c);
    rkllm_destroy(h);
}

static void check_async_abort_busy(void)
{
    setenv("RKLLM_SIM_TOKEN_US", "2000", 1);
    setenv("RKLLM_SIM_IGNORE_EOS", "1", 1);
    RKLLMParam p = base_param();
    p.max_new_tokens = -1;
    LLMHandle h = NULL;
    init_with(&h, &p);
    collector c;
    col_init(&c);
    RKLLMInput in = prompt_input("Go on forever.");
    RKLLMInferParam ip = infer_param();
    int rc = rkllm_run_async(h, &in, &ip, &c);
    check(rc == 0 && rkllm_is_running(h) == 1, "run_async_returns", "rc %d running %d", rc, rkllm_is_running(h));
    capture_begin();
    collector other;
    col_init(&other);
    int busy = rkllm_run(h, &in, &ip, &other);
    int busy2 = rkllm_load_lora(h, &(RKLLMLoraAdapter){path_in_dir("lora.rkllm"), "a", 1.0f});
    char *err = capture_end();
    check(busy != 0 && busy2 != 0 && strstr(err, "in progress") && other.tokens == 0, "run_while_running",
          "rc %d/%d %s", busy, busy2, err);
    col_free(&other);
    usleep(30000);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int rc_abort = rkllm_abort(h);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    pthread_mutex_lock(&c.mu);
    int tokens_at_abort = c.tokens, finished = c.finish;
    pthread_mutex_unlock(&c.mu);
    usleep(20000);
    check(rc_abort == 0 && rkllm_is_running(h) == 0 && finished == 1 && c.tokens == tokens_at_abort &&
              tokens_at_abort > 3 && ms < 50,
          "abort_within_a_token", "rc %d tokens %d->%d finish %d in %.1f ms", rc_abort, tokens_at_abort, c.tokens,
          finished, ms);
    col_free(&c);
    check(rkllm_abort(h) == 0, "abort_when_idle", "");
    unsetenv("RKLLM_SIM_TOKEN_US");
    unsetenv("RKLLM_SIM_IGNORE_EOS");

    /* abort during a long prefill (2000 tokens at 1 ms: 2 s) stops it, not only generation */
    setenv("RKLLM_SIM_PREFILL_US", "1000", 1);
    static int32_t long_ids[2000];
    for (int i = 0; i < 2000; i++)
        long_ids[i] = 300 + i % 50;
    RKLLMInput tin;
    memset(&tin, 0, sizeof tin);
    tin.input_type = RKLLM_INPUT_TOKEN;
    tin.token_input.input_ids = long_ids;
    tin.token_input.n_tokens = 2000;
    col_init(&c);
    rc = rkllm_run_async(h, &tin, &ip, &c);
    usleep(50000);
    clock_gettime(CLOCK_MONOTONIC, &a);
    rc_abort = rkllm_abort(h);
    clock_gettime(CLOCK_MONOTONIC, &b);
    ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    col_wait(&c);
    check(rc == 0 && rc_abort == 0 && rkllm_is_running(h) == 0 && c.finish == 1 && c.tokens == 0 && ms < 500,
          "abort_during_prefill", "rc %d/%d tokens %d finish %d abort took %.1f ms", rc, rc_abort, c.tokens,
          c.finish, ms);
    col_free(&c);
    unsetenv("RKLLM_SIM_PREFILL_US");
    rkllm_destroy(h);

    /* is_async in the params makes rkllm_run return at once */
    setenv("RKLLM_SIM_TOKEN_US", "1000", 1);
    p = base_param();
    p.is_async = true;
    p.max_new_tokens = 40;
    init_with(&h, &p);
    col_init(&c);
    rc = rkllm_run(h, &in, &ip, &c);
    int running = rkllm_is_running(h);
    col_wait(&c);
    check(rc == 0 && running == 1 && c.finish == 1, "param_is_async", "rc %d running %d", rc, running);
    check(c.foreign_thread, "async_callbacks_on_runtime_thread", "a callback ran on the caller's thread");
    col_free(&c);
    /* destroy during a run stops it */
    col_init(&c);
    rkllm_run_async(h, &in, &ip, &c);
    check(rkllm_destroy(h) == 0 && c.finish + c.error == 1, "destroy_while_running", "finish %d", c.finish);
    col_free(&c);
    unsetenv("RKLLM_SIM_TOKEN_US");

    /* two handles run at once */
    LLMHandle h1 = open_default(), h2 = open_default();
    collector c1, c2;
    col_init(&c1);
    col_init(&c2);
    RKLLMInput in2 = prompt_input("Tell me about bread.");
    int r1 = rkllm_run_async(h1, &in, &ip, &c1), r2 = rkllm_run_async(h2, &in2, &ip, &c2);
    col_wait(&c1);
    col_wait(&c2);
    check(r1 == 0 && r2 == 0 && c1.finish == 1 && c2.finish == 1 && differs(c1.text, c2.text), "two_handles", "");
    col_free(&c1);
    col_free(&c2);
    rkllm_destroy(h1);
    rkllm_destroy(h2);
}

static void check_calls_from_callback(void)
{
    LLMHandle h = open_default();
    collector c;
    col_init(&c);
    RKLLMInput in = prompt_input("Hello");
    RKLLMInferParam ip = infer_param();
    c.handle = h;
    c.call_inside = 1;
    c.inner_input = &in;
    c.inner_params = &ip;
    capture_begin();
    int rc = rkllm_run(h, &in, &ip, &c);
    char *err = capture_end();
    check(rc == 0 && c.inner_running == 1 && c.inner_run_rc != 0 && c.inner_destroy_rc != 0 && c.finish == 1,
          "calls_from_callback", "running %d run %d destroy %d", c.inner_running, c.inner_run_rc,
          c.inner_destroy_rc);
    check(strstr(err, "from the result callback") != NULL, "destroy_from_callback_message", "%s", err);
    col_free(&c);
    rkllm_destroy(h);
}

#if FAM >= 121
static void check_callback_return(void)
{
    LLMHandle h = open_default();
    collector c;
    col_init(&c);
    c.stop_after = 3;
    RKLLMInput in = prompt_input("Tell me about the mountains.");
    RKLLMInferParam ip = infer_param();
    int rc = rkllm_run(h, &in, &ip, &c);
    int sizes[1] = {-1};
    rkllm_get_kv_cache_size(h, sizes);
    check(rc == 0 && c.tokens == 3 && c.finish == 1 && c.perf.generate_tokens == 3, "callback_return_stops",
          "tokens %d finish %d", c.tokens, c.finish);
    check(sizes[0] > 3, "pause_keeps_kv_cache", "kv size %d", sizes[0]);
    /* clear a range of the paused run's cache */
    int s = 0, e = 2, s2, e2;
    int rc_range = rkllm_clear_kv_cache(h, 0, &s, &e);
    int after[1];
    rkllm_get_kv_cache_size(h, after);
    s2 = 0, e2 = after[0] + 10;
    capture_begin();
    int rc_bad = rkllm_clear_kv_cache(h, 0, &s2, &e2);
    int rc_half = rkllm_clear_kv_cache(h, 0, &s2, NULL);
    capture_end();
    check(rc_range == 0 && after[0] == sizes[0] - 2 && rc_bad != 0 && rc_half != 0, "clear_kv_cache_range",
          "%d %d->%d %d %d", rc_range, sizes[0], after[0], rc_bad, rc_half);
    check(rkllm_clear_kv_cache(h, 0, NULL, NULL) == 0 && rkllm_get_kv_cache_size(h, after) == 0 && after[0] == 0,
          "clear_kv_cache_all", "size %d", after[0]);
    capture_begin();
    int rc_null = rkllm_get_kv_cache_size(h, NULL);
    capture_end();
    check(rc_null != 0, "kv_cache_size_null", "");
    col_free(&c);
    rkllm_destroy(h);
}
#endif

#if FAM >= 120
static void check_history(void)
{
    LLMHandle h = open_default();
    collector c;
    RKLLMInput in = prompt_input("My name is Ada and I like lighthouses.");
    RKLLMInferParam ip = infer_param();
    ip.keep_history = 1;
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    col_free(&c);
#if FAM >= 121
    int size[1] = {0};
    rkllm_get_kv_cache_size(h, size);
    check(size[0] > 20, "kv_cache_grows_with_history", "size %d", size[0]);
#endif
    RKLLMInput in2 = prompt_input("What do I like?");
    col_init(&c);
    rkllm_run(h, &in2, &ip, &c);
    char *with_history = strdup(c.text ? c.text : "");
    col_free(&c);
    RKLLMParam p = base_param();
    char *fresh = generate_with(&p, "What do I like?");
    check(differs(with_history, fresh), "history_changes_answer", "same answer");
#if FAM >= 121
    check(rkllm_clear_kv_cache(h, 1, NULL, NULL) == 0, "clear_kv_cache_keep_system", "");
    rkllm_get_kv_cache_size(h, size);
    check(size[0] > 0, "system_prompt_kept", "size %d", size[0]);
    rkllm_clear_kv_cache(h, 0, NULL, NULL);
#else
    check(rkllm_clear_kv_cache(h, 1) == 0, "clear_kv_cache_keep_system", "");
    rkllm_clear_kv_cache(h, 0);
#endif
    ip.keep_history = 0;
    col_init(&c);
    rkllm_run(h, &in2, &ip, &c);
    check(fresh && c.text && strcmp(fresh, c.text) == 0, "clear_kv_cache_forgets", "answers differ");
    col_free(&c);
    free(with_history);
    free(fresh);

    /* chat template */
    char *before = generate_with(&p, "Hello");
    check(rkllm_set_chat_template(h, "", "Q: ", "\nA:") == 0, "set_chat_template", "");
    col_init(&c);
    run_text(h, "Hello", &c);
    check(differs(before, c.text), "chat_template_changes_text", "same text");
    col_free(&c);
    capture_begin();
    int rc = rkllm_set_chat_template(h, NULL, "", "");
    capture_end();
    check(rc != 0, "chat_template_null", "");
    free(before);
    rkllm_destroy(h);
}

static void check_logits(void)
{
    LLMHandle h = open_default();
    collector c;
    col_init(&c);
    RKLLMInput in = prompt_input("The river");
    RKLLMInferParam ip = infer_param();
    ip.mode = RKLLM_INFER_GET_LOGITS;
    int rc = rkllm_run(h, &in, &ip, &c);
    check(rc == 0 && c.logits_vocab > 256 && c.logits_tokens == 1 && c.finish == 1 && c.normal == 0,
          "logits_mode", "vocab %d tokens %d", c.logits_vocab, c.logits_tokens);
    col_free(&c);
    rkllm_destroy(h);
}
#endif

static void check_hidden(void)
{
    LLMHandle h = open_default();
    collector c;
    col_init(&c);
    RKLLMInput in = prompt_input("The river starts in the hills");
    RKLLMInferParam ip = infer_param();
    ip.mode = RKLLM_INFER_GET_LAST_HIDDEN_LAYER;
    int rc = rkllm_run(h, &in, &ip, &c);
    check(rc == 0 && c.hidden == 1 && c.hidden_dim == 128 && c.hidden_tokens > 3 && c.hidden_finite && c.finish == 1,
          "hidden_layer_mode", "hidden %d dim %d tokens %d", c.hidden, c.hidden_dim, c.hidden_tokens);
    col_free(&c);
    rkllm_destroy(h);
}

static void check_token_embed_multimodal(void)
{
    LLMHandle h = open_default();
    RKLLMInferParam ip = infer_param();
    collector c;
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    int32_t ids[] = {300, 301, 302, 303};
    in.input_type = RKLLM_INPUT_TOKEN;
    in.token_input.input_ids = ids;
    in.token_input.n_tokens = 4;
    col_init(&c);
    int rc = rkllm_run(h, &in, &ip, &c);
    check(rc == 0 && c.finish == 1 && c.tokens > 0, "token_input", "rc %d", rc);
    col_free(&c);

    static float emb[3 * 128], emb2[3 * 128];
    for (int i = 0; i < 3 * 128; i++)
        emb[i] = sinf((float)i), emb2[i] = cosf((float)i);
    memset(&in, 0, sizeof in);
    in.input_type = RKLLM_INPUT_EMBED;
    in.embed_input.embed = emb;
    in.embed_input.n_tokens = 3;
    col_init(&c);
    rc = rkllm_run(h, &in, &ip, &c);
    char *t1 = c.text ? strdup(c.text) : NULL;
    col_free(&c);
    in.embed_input.embed = emb2;
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    check(rc == 0 && differs(t1, c.text), "embed_input", "rc %d", rc);
    col_free(&c);
    free(t1);

    memset(&in, 0, sizeof in);
    in.input_type = RKLLM_INPUT_MULTIMODAL;
    char prompt[] = "<image>What is in this picture?";
    in.multimodal_input.prompt = prompt;
#if FAM >= 130
    in.multimodal_input.image.image_embed = emb;
    in.multimodal_input.image.n_image_tokens = 3;
    in.multimodal_input.image.n_image = 1;
#else
    in.multimodal_input.image_embed = emb;
    in.multimodal_input.n_image_tokens = 3;
#if FAM >= 121
    in.multimodal_input.n_image = 1;
#endif
#endif
    col_init(&c);
    rc = rkllm_run(h, &in, &ip, &c);
    check(rc == 0 && c.finish == 1, "multimodal_input", "rc %d", rc);
    col_free(&c);
    char noplace[] = "What is in this picture?";
    in.multimodal_input.prompt = noplace;
    col_init(&c);
    capture_begin();
    rc = rkllm_run(h, &in, &ip, &c);
    char *err = capture_end();
    check(rc != 0 && strstr(err, "<image>"), "multimodal_needs_placeholder", "rc %d", rc);
    col_free(&c);
#if FAM >= 130
    char vprompt[] = "<video>Describe the clip.";
    memset(&in.multimodal_input, 0, sizeof in.multimodal_input);
    in.multimodal_input.prompt = vprompt;
    in.multimodal_input.video.video_embed = emb;
    in.multimodal_input.video.n_video = 1;
    in.multimodal_input.video.n_frame_per_video = 3;
    in.multimodal_input.video.n_frame_tokens = 1;
    col_init(&c);
    rc = rkllm_run(h, &in, &ip, &c);
    check(rc == 0 && c.finish == 1, "multimodal_video", "rc %d", rc);
    col_free(&c);
#endif
    rkllm_destroy(h);
}

static void check_prompt_cache(void)
{
    LLMHandle h = open_default();
    const char *cache = path_in_dir("cache.bin");
    unlink(cache);
    RKLLMInput in = prompt_input("You are a baker. Tell me about croissants.");
    RKLLMInferParam ip = infer_param();
    RKLLMPromptCacheParam pc = {1, cache};
    ip.prompt_cache_params = &pc;
    collector c;
    col_init(&c);
    int rc = rkllm_run(h, &in, &ip, &c);
    char *t1 = c.text ? strdup(c.text) : NULL;
#if FAM >= 121
    int prefill1 = c.perf.prefill_tokens;
#endif
    col_free(&c);
    struct stat st;
    check(rc == 0 && stat(cache, &st) == 0 && st.st_size > 20, "prompt_cache_saved", "rc %d", rc);
    check(rkllm_load_prompt_cache(h, cache) == 0, "prompt_cache_loaded", "");
    ip.prompt_cache_params = NULL;
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    check(t1 && c.text && strcmp(t1, c.text) == 0, "prompt_cache_same_text", "texts differ");
#if FAM >= 121
    check(c.perf.prefill_tokens < prefill1, "prompt_cache_reused", "prefill %d then %d", prefill1,
          c.perf.prefill_tokens);
#endif
    col_free(&c);
    check(rkllm_release_prompt_cache(h) == 0, "prompt_cache_released", "");
    /* damaged caches are refused */
    FILE *f = fopen(path_in_dir("badcache.bin"), "wb");
    fwrite("RKSIMPCH\1\0\0\0garbage-garbage", 1, 27, f);
    fclose(f);
    capture_begin();
    int rc_missing = rkllm_load_prompt_cache(h, path_in_dir("no-cache.bin"));
    int rc_bad = rkllm_load_prompt_cache(h, path_in_dir("badcache.bin"));
    int rc_model = rkllm_load_prompt_cache(h, model);
    int rc_null = rkllm_load_prompt_cache(h, NULL);
    char *err = capture_end();
    check(rc_missing && rc_bad && rc_model && rc_null && strstr(err, "cannot open"), "prompt_cache_bad_files",
          "%d %d %d %d", rc_missing, rc_bad, rc_model, rc_null);
    RKLLMPromptCacheParam nopath = {1, NULL};
    ip.prompt_cache_params = &nopath;
    col_init(&c);
    capture_begin();
    rc = rkllm_run(h, &in, &ip, &c);
    capture_end();
    check(rc != 0, "prompt_cache_save_needs_path", "");
    RKLLMPromptCacheParam unwritable = {1, "/nonexistent-dir/cache.bin"};
    ip.prompt_cache_params = &unwritable;
    capture_begin();
    rc = rkllm_run(h, &in, &ip, &c);
    capture_end();
    check(rc != 0 && c.error == 1, "prompt_cache_unwritable", "rc %d error %d", rc, c.error);
    col_free(&c);
    free(t1);
    rkllm_destroy(h);
}

static void check_lora(void)
{
    LLMHandle h = open_default();
    const char *q = "Tell me something about the harbour.";
    RKLLMLoraAdapter la = {path_in_dir("lora.rkllm"), "sea", 1.0f};
    check(rkllm_load_lora(h, &la) == 0, "load_lora", "");
    collector c;
    run_text(h, q, &c);
    char *plain = c.text ? strdup(c.text) : NULL;
    col_free(&c);
    RKLLMInput in = prompt_input(q);
    RKLLMInferParam ip = infer_param();
    RKLLMLoraParam lp = {"sea"};
    ip.lora_params = &lp;
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    check(differs(plain, c.text), "lora_changes_text", "same text");
    col_free(&c);
    capture_begin();
    int rc_dup = rkllm_load_lora(h, &la);
    RKLLMLoraAdapter other = {path_in_dir("lora_other.rkllm"), "other", 1.0f};
    int rc_other = rkllm_load_lora(h, &other);
    RKLLMLoraAdapter missing = {path_in_dir("nope.rkllm"), "nope", 1.0f};
    int rc_missing = rkllm_load_lora(h, &missing);
    RKLLMLoraAdapter as_model = {model, "model", 1.0f};
    int rc_model = rkllm_load_lora(h, &as_model);
    int rc_null = rkllm_load_lora(h, NULL);
    char *err = capture_end();
    check(rc_dup && rc_other && rc_missing && rc_model && rc_null && strstr(err, "already loaded") &&
              strstr(err, "is for model"),
          "lora_failures", "%d %d %d %d %d: %s", rc_dup, rc_other, rc_missing, rc_model, rc_null, err);
    free(plain);
    rkllm_destroy(h);
}

#if FAM >= 121
static void check_tools_and_cross_attn(void)
{
    LLMHandle h = open_default();
    const char *tools = "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": "
                        "\"Weather for a city\", \"parameters\": {\"type\": \"object\", \"properties\": "
                        "{\"city\": {\"type\": \"string\"}}}}}]";
    check(rkllm_set_function_tools(h, "You can call tools.", tools, "tool_response") == 0, "set_function_tools", "");
    collector c;
    run_text(h, "Please call get_weather for Paris.", &c);
    check(c.text && strstr(c.text, "<tool_call>") && strstr(c.text, "\"get_weather\""), "tool_call_generated", "%s",
          c.text ? c.text : "");
    col_free(&c);
    RKLLMInput in = prompt_input("{\"temperature\": 21}");
    in.role = "tool";
    RKLLMInferParam ip = infer_param();
    col_init(&c);
    int rc = rkllm_run(h, &in, &ip, &c);
    check(rc == 0 && c.text && !strstr(c.text, "<tool_call>") && strlen(c.text) > 0, "tool_role_input", "%s",
          c.text ? c.text : "");
    col_free(&c);
    capture_begin();
    int rc_bad = rkllm_set_function_tools(h, "x", "not json", "tool_response");
    int rc_null = rkllm_set_function_tools(h, "x", NULL, "tool_response");
    int rc_cross = rkllm_set_cross_attn_params(h, &(RKLLMCrossAttnParam){0});
    capture_end();
    check(rc_bad && rc_null && rc_cross, "function_tools_and_cross_attn_refused", "%d %d %d", rc_bad, rc_null,
          rc_cross);
    rkllm_destroy(h);

    /* cross attention */
    RKLLMParam p = base_param();
    p.extend_param.use_cross_attn = 1;
    init_with(&h, &p);
    col_init(&c);
    in = prompt_input("Translate this.");
    capture_begin();
    rc = rkllm_run(h, &in, &ip, &c);
    char *err = capture_end();
    check(rc != 0 && strstr(err, "rkllm_set_cross_attn_params"), "cross_attn_required", "%s", err);
    static float k[64], v[64], mask[4] = {0, 0, 0, 0}, mask2[4] = {0, 0, -1e9f, -1e9f};
    int32_t pos[4] = {0, 1, 2, 3};
    RKLLMCrossAttnParam cp = {k, v, mask, pos, 4};
    int rc_set = rkllm_set_cross_attn_params(h, &cp);
    col_free(&c);
    col_init(&c);
    rc = rkllm_run(h, &in, &ip, &c);
    char *t1 = c.text ? strdup(c.text) : NULL;
    col_free(&c);
    cp.encoder_mask = mask2;
    rkllm_set_cross_attn_params(h, &cp);
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    check(rc_set == 0 && rc == 0 && differs(t1, c.text), "cross_attn_changes_text", "rc %d/%d", rc_set, rc);
    col_free(&c);
    cp.num_tokens = 0;
    capture_begin();
    rc = rkllm_set_cross_attn_params(h, &cp);
    capture_end();
    check(rc != 0, "cross_attn_bad_num_tokens", "");
    free(t1);
    rkllm_destroy(h);

    /* thinking */
    h = open_default();
    in = prompt_input("Think about the sea.");
    in.enable_thinking = true;
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    check(c.text && strncmp(c.text, "<think>\n", 8) == 0 && strstr(c.text, "</think>"), "enable_thinking", "%s",
          c.text ? c.text : "");
    col_free(&c);
    rkllm_destroy(h);
}
#endif

#if FAM >= 130
static int tokenizer_calls, tokenizer_fail, embed_calls, embed_prefill_tokens, embed_len_ok = 1;

static int my_tokenizer(void *ud, const char *text, int32_t len, int32_t *tokens, int32_t max)
{
    (void)ud;
    __atomic_add_fetch(&tokenizer_calls, 1, __ATOMIC_SEQ_CST);
    if (tokenizer_fail)
        return -1;
    int n = 0;
    for (int i = 0; i < len && n < max; i++)
        tokens[n++] = 300 + (unsigned char)text[i] % 200; /* one token per byte */
    return n;
}

static int my_embedder(void *ud, int32_t *tokens, uint64_t n, void *embed, uint64_t len)
{
    (void)ud, (void)tokens;
    if (len != n * 128 * sizeof(float))
        embed_len_ok = 0;
    if (embed_calls++ == 0)
        embed_prefill_tokens = (int)n;
    float *e = embed;
    for (uint64_t i = 0; i < n * 128; i++)
        e[i] = (float)(i % 7);
    return 0;
}

static void check_130(void)
{
    /* per-run sampling params and max_new_tokens */
    LLMHandle h = open_default();
    RKLLMInput in = prompt_input("Tell me about apples.");
    RKLLMInferParam ip = infer_param();
    collector c;
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    char *base = c.text ? strdup(c.text) : NULL;
    col_free(&c);
    RKLLMSamplingParam sp = {1, 0.9f, 0.8f, 1.1f, 0, 0, 0, 5.0f, 0.1f};
    ip.sampling_params = &sp;
    ip.max_new_tokens = 7;
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    check(differs(base, c.text) && c.tokens == 7, "per_run_sampling_and_max_new_tokens", "tokens %d", c.tokens);
    col_free(&c);
    sp.top_p = 2.0f;
    col_init(&c);
    capture_begin();
    int rc = rkllm_run(h, &in, &ip, &c);
    capture_end();
    check(rc != 0 && c.finish == 0, "per_run_sampling_checked", "rc %d", rc);
    col_free(&c);
    /* ignore_eos_token */
    rkllm_destroy(h);
    RKLLMParam p = base_param();
    p.ignore_eos_token = true;
    p.max_new_tokens = 500;
    init_with(&h, &p);
    ip = infer_param();
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    check(c.tokens == 500, "ignore_eos_token", "tokens %d", c.tokens);
    col_free(&c);
    rkllm_destroy(h);
    /* result_userdata when rkllm_run's userdata is NULL */
    collector fb;
    col_init(&fb);
    g_fallback = &fb;
    h = open_default();
    rc = rkllm_run(h, &in, &ip, NULL);
    check(rc == 0 && fb.finish == 1 && fb.userdata_seen == &fb, "result_userdata_fallback", "finish %d", fb.finish);
    rkllm_destroy(h);
    g_fallback = NULL;
    col_free(&fb);
    /* tokenizer and embedding callbacks */
    g_tokenizer = my_tokenizer;
    g_embedder = my_embedder;
    h = open_default();
    col_init(&c);
    rc = rkllm_run(h, &in, &ip, &c);
    check(rc == 0 && tokenizer_calls > 0 && c.finish == 1, "tokenizer_callback", "calls %d", tokenizer_calls);
    check(embed_calls == 1 + c.tokens && embed_prefill_tokens > 0 && embed_len_ok, "embed_callback",
          "calls %d tokens %d prefill %d", embed_calls, c.tokens, embed_prefill_tokens);
    col_free(&c);
    tokenizer_fail = 1;
    col_init(&c);
    capture_begin();
    rc = rkllm_run(h, &in, &ip, &c);
    capture_end();
    check(rc != 0 && c.error == 1, "tokenizer_callback_failure", "rc %d", rc);
    col_free(&c);
    rkllm_destroy(h);
    g_tokenizer = NULL;
    g_embedder = NULL;
    free(base);
}
#endif

static void check_dlopen(const char *lib)
{
    void *dl = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    check(dl != NULL, "dlopen", "%s", dlerror());
    if (!dl)
        return;
    const char *(*info)(void) = (const char *(*)(void))dlsym(dl, "rkllm_sim_info");
    check(info && strstr(info(), "simulated") && strstr(info(), "ABI family " RKLLM_CFFI_ABI_FAMILY),
          "sim_info", "%s", info ? info() : "(missing)");
    const char *all[] = {"rkllm_createDefaultParam", "rkllm_init", "rkllm_load_lora", "rkllm_load_prompt_cache",
                         "rkllm_release_prompt_cache", "rkllm_destroy", "rkllm_run", "rkllm_run_async",
                         "rkllm_abort", "rkllm_is_running", "rkllm_clear_kv_cache", "rkllm_set_chat_template",
                         "rkllm_get_kv_cache_size", "rkllm_set_function_tools", "rkllm_set_cross_attn_params"};
    int expected = FAM >= 121 ? 15 : FAM >= 120 ? 12 : 10, found = 0, in_order = 1;
    for (int i = 0; i < 15; i++) {
        int has = dlsym(dl, all[i]) != NULL;
        found += has;
        if (has != (i < expected))
            in_order = 0;
    }
    check(in_order && found == expected, "exported_functions", "found %d expected %d", found, expected);
    check(dlsym(dl, "sim_execute") == NULL && dlsym(dl, "sim_model_load") == NULL, "internals_hidden", "");
    dlclose(dl);
}

int main(void)
{
    model = getenv("SIM_MODEL");
    dir = getenv("SIM_DIR");
    if (!model || !dir) {
        fprintf(stderr, "set SIM_MODEL and SIM_DIR\n");
        return 2;
    }
    setenv("RKLLM_SIM_QUIET", "1", 1);
    if (getenv("SIM_LIB"))
        check_dlopen(getenv("SIM_LIB"));
    check_default_param();
    check_init_failures();
    check_basic();
    check_max_new_tokens();
    check_params_change_output();
    check_utf8_splitting();
    check_context_limit();
    check_bad_handles_and_inputs();
    check_async_abort_busy();
    check_calls_from_callback();
    check_hidden();
    check_token_embed_multimodal();
    check_prompt_cache();
    check_lora();
#if FAM >= 120
    check_history();
    check_logits();
#endif
#if FAM >= 121
    check_callback_return();
    check_tools_and_cross_attn();
#endif
#if FAM >= 130
    check_130();
#endif
    printf("# %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
