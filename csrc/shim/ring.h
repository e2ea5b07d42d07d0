/* rkllm-cffi shim: the single-producer / single-consumer token ring and its wake-ups.
 *
 * The producer (the runtime's callback thread) appends a token (its valid UTF-8 text, code
 * point count and id) and publishes it with one atomic store; the consumer copies everything
 * published into its own batch buffers. Nobody sleeps or signals while both keep up: the
 * consumer says in `wake` that it is about to sleep (on the condition variable, or on the
 * eventfd an event loop polls), and only then does the producer take the lock to wake it.
 *
 * Back-pressure: at most RKSHIM_RING_TOKENS tokens / RKSHIM_RING_TEXT bytes (a text longer
 * than a quarter of that travels in its own allocation, one at a time); when the consumer
 * does not drain, push waits until it does or until ring_stop. Memory never grows.
 *
 * Events: whoever changes something else the consumer must look at (the run ended, the
 * model is closing) calls ring_notify; the consumer reads ring_events before looking at that
 * state and passes the value to ring_wait, so no notification is lost.
 *
 * Locking: the ring's own mutex is taken only to sleep and to wake a sleeper; callers may
 * hold their own locks around any ring call except push and wait (a lock order: theirs,
 * then the ring's).
 */
#ifndef RKSHIM_RING_H
#define RKSHIM_RING_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "rkshim.h"

#define RKSHIM_RING_TOKENS 16384u    /* power of two */
#define RKSHIM_RING_TEXT (256u << 10) /* power of two */

typedef struct {
    uint32_t bytes; /* text bytes in the ring (or in big) */
    uint32_t chars; /* code points in them */
    int32_t id;
    char *big;      /* a long text, owned by the entry; else NULL */
} rkshim_ring_entry;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t data_cond;  /* the consumer sleeps here */
    pthread_cond_t room_cond;  /* the producer sleeps here */
    rkshim_ring_entry *entries;
    char *text;
    _Atomic int event_fd;      /* -1 until someone asks for it */
    _Atomic int stopped;       /* push drops and does not wait */
    _Atomic uint32_t events;   /* bumped by ring_notify */
    /* shared, each on its own cache line */
    _Alignas(64) _Atomic uint32_t head;  /* entries published (producer) */
    _Alignas(64) _Atomic uint32_t tail;  /* entries consumed (consumer) */
    _Atomic uint32_t text_tail;          /* text bytes consumed */
    _Alignas(64) _Atomic int wake;       /* what the consumer sleeps on */
    _Atomic int producer_waiting;        /* push waits for room */
    _Atomic int fd_signalled;            /* the eventfd was written since the last reset */
    /* the producer's own */
    _Alignas(64) uint32_t p_head, p_text_head, p_tail_seen, p_text_tail_seen;
    /* the consumer's own: the batch handed out (valid until the next take) */
    _Alignas(64) uint32_t c_text_tail;
    char *c_text;
    size_t c_text_cap;
    uint32_t *c_ends;
    int32_t *c_ids;
} rkshim_ring;

int ring_init(rkshim_ring *r);    /* 0, or -1 when out of memory (nothing to destroy) */
void ring_destroy(rkshim_ring *r);
/* Empties the ring and clears stop and the eventfd; no push or take may be running. */
void ring_reset(rkshim_ring *r);

/* Producer. Returns 0, or -1 when the token was dropped (stopped). */
int ring_push(rkshim_ring *r, const char *text, uint32_t bytes, uint32_t chars, int32_t id);

/* Consumer: copies every published token into out (text, ends, token_ids, n_tokens); returns
 * how many. ring_wait sleeps until a token is published, ring_events differs from seen, or
 * the deadline (CLOCK_MONOTONIC; NULL: none) passes (then returns ETIMEDOUT, else 0). */
size_t ring_take(rkshim_ring *r, rkshim_batch *out);
int ring_wait(rkshim_ring *r, uint32_t seen, const struct timespec *deadline);
int ring_empty(rkshim_ring *r);
uint32_t ring_events(rkshim_ring *r);

/* Any thread. */
void ring_notify(rkshim_ring *r); /* wakes the consumer (and writes the eventfd) */
void ring_stop(rkshim_ring *r);   /* releases a waiting producer; later pushes drop */

/* The eventfd, readable whenever a take or an event is waiting (for event loops). */
int ring_event_fd(rkshim_ring *r);  /* created on the first call; -1 on failure */
void ring_fd_consumed(rkshim_ring *r); /* after a take that got tokens: unsignal */
void ring_fd_arm(rkshim_ring *r);   /* before polling the fd: reset it, have push write it */
void ring_fd_write(rkshim_ring *r); /* signal it now (if it exists) */

#endif
