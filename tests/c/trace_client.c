/*
 * Makes a few calls to the simulated runtime with RKLLM_SIM_TRACE set; tests/test_sim_c.py
 * checks the JSON lines it leaves. Compiled once per ABI family.
 */
#include <stdio.h>
#include <string.h>

#include "rkllm.h"

#if defined(RKLLM_CFFI_RKLLM_H_1_1) || defined(RKLLM_CFFI_RKLLM_H_1_2_0)
static void callback(RKLLMResult *r, void *userdata, LLMCallState state) { (void)r, (void)userdata, (void)state; }
#else
static int callback(RKLLMResult *r, void *userdata, LLMCallState state) { (void)r, (void)userdata, (void)state; return 0; }
#endif

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    RKLLMParam p = rkllm_createDefaultParam();
    p.model_path = argv[1];
    p.max_context_len = 1024;
    p.max_new_tokens = 8;
    p.top_k = 7;
    LLMHandle h = NULL;
#if defined(RKLLM_CFFI_RKLLM_H_1_3_0)
    RKLLMCallback cb = {0};
    cb.result_callback = callback;
    int rc = rkllm_init(&h, &p, &cb);
#else
    int rc = rkllm_init(&h, &p, callback);
#endif
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = "Say \"h\xc3\xa9llo\"\n\xe2\x80\x9cquoted\xe2\x80\x9d";
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    RKLLMPromptCacheParam pc = {0, "unused.bin"};
    ip.prompt_cache_params = &pc;
    int rc_run = rkllm_run(h, &in, &ip, &in);
    int rc_destroy = rkllm_destroy(h);
    int rc_again = rkllm_destroy(h);
    printf("%d %d %d %d\n", rc, rc_run, rc_destroy, rc_again);
    return 0;
}
