/*
 * Calls rkllm_init (1.3.0 ABI) N times on a model and destroys what succeeds; prints
 * "failed K" with the number of failed inits. tests/test_sim_faults.py runs it under
 * AddressSanitizer with RKLLM_SIM_FAULT=init_partial: every failure must free what it
 * allocated.
 */
#include <stdio.h>
#include <stdlib.h>

#include "rkllm.h"

static int on_result(RKLLMResult *r, void *userdata, LLMCallState state)
{
    (void)r, (void)userdata, (void)state;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL N\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[2]), failed = 0;
    for (int i = 0; i < n; i++) {
        RKLLMParam p = rkllm_createDefaultParam();
        p.model_path = argv[1];
        RKLLMCallback cb = {0};
        cb.result_callback = on_result;
        LLMHandle h = NULL;
        if (rkllm_init(&h, &p, &cb) != 0 || !h)
            failed++;
        else
            rkllm_destroy(h);
    }
    printf("failed %d\n", failed);
    return 0;
}
