/*
 * The registry of live handles: a handle given to the client is an id, never a pointer it
 * could keep after destroy, so a NULL, made-up or destroyed handle is an error, not a crash.
 * Also: which thread is executing which handle's run (calls from inside a callback).
 */
#include <stdlib.h>

#include "sim.h"

#define HANDLE_BASE 0x51000000u
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static sim_handle **g_live;
static size_t g_n_live, g_cap_live;
static uint32_t g_next_id = 1;

LLMHandle sim_handle_value(const sim_handle *h) { return (LLMHandle)(uintptr_t)(HANDLE_BASE + 16u * h->id); }

/* After fork() the child has none of the parent's threads, and the parent's locks may be held
 * forever: its handles are marked, and every call on them (destroy too) fails at once
 * instead of waiting for a thread that does not exist. The child may create new handles. */
static void in_forked_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh_cv = PTHREAD_COND_INITIALIZER;
    g_mu = fresh;
    g_cv = fresh_cv;
    for (size_t i = 0; i < g_n_live; i++)
        g_live[i]->forked = 1;
}

__attribute__((constructor)) static void watch_fork(void) { pthread_atfork(NULL, NULL, in_forked_child); }

int sim_register(sim_handle *h)
{
    pthread_mutex_lock(&g_mu);
    if (g_n_live == g_cap_live) {
        size_t cap = g_cap_live ? g_cap_live * 2 : 16;
        sim_handle **live = realloc(g_live, cap * sizeof *live);
        if (live)
            g_live = live, g_cap_live = cap;
    }
    int ok = g_n_live < g_cap_live;
    if (ok) {
        h->id = g_next_id++;
        g_live[g_n_live++] = h;
    }
    pthread_mutex_unlock(&g_mu);
    return ok ? 0 : -1;
}

void sim_unregister(sim_handle *h)
{
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_n_live; i++)
        if (g_live[i] == h) {
            g_live[i] = g_live[--g_n_live];
            break;
        }
    pthread_mutex_unlock(&g_mu);
}

sim_handle *sim_acquire(LLMHandle handle, const char *fn)
{
    if (!handle) {
        sim_error("%s: the handle is NULL", fn);
        return NULL;
    }
    sim_handle *h = NULL;
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_n_live; i++)
        if (sim_handle_value(g_live[i]) == handle) {
            h = g_live[i];
            h->users++;
            break;
        }
    if (h && h->forked) {
        h->users--;
        pthread_mutex_unlock(&g_mu);
        sim_error("%s: handle %p was created before fork(), in the parent process; it cannot be used "
                  "(or destroyed) in the child", fn, handle);
        return NULL;
    }
    pthread_mutex_unlock(&g_mu);
    if (!h)
        sim_error("%s: invalid handle %p (never created by rkllm_init, or already destroyed)", fn, handle);
    return h;
}

void sim_release(sim_handle *h)
{
    pthread_mutex_lock(&g_mu);
    h->users--;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

void sim_release_last(sim_handle *h)
{
    pthread_mutex_lock(&g_mu);
    h->users--;
    while (h->users > 0)
        pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
}

/* The runs this thread is executing, innermost first (a callback may run another handle). */
static __thread sim_run_frame *t_runs;

void sim_enter_run(sim_run_frame *f, sim_handle *h)
{
    f->h = h;
    f->outer = t_runs;
    t_runs = f;
}

void sim_leave_run(sim_run_frame *f) { t_runs = f->outer; }

int sim_on_run_thread(const sim_handle *h)
{
    for (const sim_run_frame *f = t_runs; f; f = f->outer)
        if (f->h == h)
            return 1;
    return 0;
}

int sim_busy_locked(sim_handle *h)
{
    while (h->running && h->finishing && !sim_on_run_thread(h))
        pthread_cond_wait(&h->cv, &h->mu);
    return h->running;
}

sim_handle *sim_acquire_idle(LLMHandle handle, const char *fn)
{
    sim_handle *h = sim_acquire(handle, fn);
    if (!h)
        return NULL;
    pthread_mutex_lock(&h->mu);
    int busy = sim_busy_locked(h);
    pthread_mutex_unlock(&h->mu);
    if (busy) {
        sim_error("%s: a run is in progress on this handle", fn);
        sim_release(h);
        return NULL;
    }
    return h;
}
