/*
 * Fault injection (docs/simulator.md, "Fault injection"): environment variables, read at
 * rkllm_init, that make the simulator misbehave the way a runtime might, so that a
 * client's handling of each misbehaviour can be tested without a board.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim.h"

int sim_faults_read(sim_faults *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    f->stall_ms = sim_env_long("RKLLM_SIM_STALL_MS", 0);
    f->abort_delay_ms = sim_env_long("RKLLM_SIM_ABORT_DELAY_MS", 0);
    f->start_delay_ms = sim_env_long("RKLLM_SIM_START_DELAY_MS", 0);
    const char *thread = getenv("RKLLM_SIM_CALLBACK_THREAD");
    if (thread && *thread && strcmp(thread, "caller") != 0 && strcmp(thread, "worker") != 0) {
        snprintf(err, errlen, "RKLLM_SIM_CALLBACK_THREAD='%s': expected 'caller' or 'worker'", thread);
        return -1;
    }
    f->worker_callbacks = thread && strcmp(thread, "worker") == 0;
    const char *v = getenv("RKLLM_SIM_FAULT");
    if (!v || !*v)
        return 0;
    static const struct { const char *name; int kind; } names[] = {
        {"init_partial", SIM_FAULT_INIT_PARTIAL}, {"init_null", SIM_FAULT_INIT_NULL},
        {"prefill_error", SIM_FAULT_PREFILL_ERROR}, {"no_finish", SIM_FAULT_NO_FINISH},
        {"late_callback", SIM_FAULT_LATE_CALLBACK},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(v, names[i].name) == 0) {
            f->kind = names[i].kind;
            return 0;
        }
    char *end;
    if (strncmp(v, "error_after:", 12) == 0 && v[12]) {
        long n = strtol(v + 12, &end, 10);
        if (!*end && n >= 0) {
            f->kind = SIM_FAULT_ERROR_AFTER;
            f->error_after = n;
            return 0;
        }
    }
    snprintf(err, errlen, "RKLLM_SIM_FAULT='%s': expected init_partial, init_null, prefill_error, "
             "error_after:N, no_finish or late_callback", v);
    return -1;
}

void sim_sleep_ms(long ms, _Atomic int *stop)
{
    for (long i = 0; i < ms && !(stop && *stop); i++) {
        struct timespec step = {0, 1000000}; /* 1 ms: a stop is seen within about that */
        while (nanosleep(&step, &step) != 0) {
        }
    }
}
