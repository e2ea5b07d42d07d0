/* A 1.2.0-family "runtime" whose rkllm_init reports success but gives no handle (what peers
 * report the real one doing when memory runs out), for tests/test_lowlevel.py. Build with
 * -I include/1.2.0. */
#include <string.h>

#include "rkllm.h"

#define EXPORT __attribute__((visibility("default"), used))

EXPORT const char fake_version_text[] = "RKLLM SDK (version: 1.2.0)";

EXPORT RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 1;
    return p;
}

EXPORT int rkllm_init(LLMHandle *handle, RKLLMParam *param, LLMResultCallback callback) {
    (void)param, (void)callback;
    *handle = NULL;
    return 0;
}

EXPORT int rkllm_load_lora(LLMHandle h, RKLLMLoraAdapter *a) { (void)h, (void)a; return -1; }
EXPORT int rkllm_load_prompt_cache(LLMHandle h, const char *p) { (void)h, (void)p; return -1; }
EXPORT int rkllm_release_prompt_cache(LLMHandle h) { (void)h; return -1; }
EXPORT int rkllm_destroy(LLMHandle h) { (void)h; return -1; }
EXPORT int rkllm_run(LLMHandle h, RKLLMInput *i, RKLLMInferParam *p, void *u) {
    (void)h, (void)i, (void)p, (void)u;
    return -1;
}
EXPORT int rkllm_run_async(LLMHandle h, RKLLMInput *i, RKLLMInferParam *p, void *u) {
    (void)h, (void)i, (void)p, (void)u;
    return -1;
}
EXPORT int rkllm_abort(LLMHandle h) { (void)h; return -1; }
EXPORT int rkllm_is_running(LLMHandle h) { (void)h; return 0; }
EXPORT int rkllm_clear_kv_cache(LLMHandle h, int k) { (void)h, (void)k; return -1; }
EXPORT int rkllm_set_chat_template(LLMHandle h, const char *a, const char *b, const char *c) {
    (void)h, (void)a, (void)b, (void)c;
    return -1;
}
