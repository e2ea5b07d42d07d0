/* rkllm-cffi shim: the token ring (see ring.h). */
#define _GNU_SOURCE
#include "ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define BIG_TEXT (RKSHIM_RING_TEXT / 4)

enum { WAKE_COND = 1, WAKE_FD = 2 }; /* what the consumer sleeps on (bits of `wake`) */

int ring_init(rkshim_ring *r) {
    memset(r, 0, sizeof *r);
    r->entries = malloc(RKSHIM_RING_TOKENS * sizeof *r->entries);
    r->text = malloc(RKSHIM_RING_TEXT);
    r->c_ends = malloc(RKSHIM_RING_TOKENS * sizeof *r->c_ends);
    r->c_ids = malloc(RKSHIM_RING_TOKENS * sizeof *r->c_ids);
    if (!r->entries || !r->text || !r->c_ends || !r->c_ids) {
        free(r->entries), free(r->text), free(r->c_ends), free(r->c_ids);
        return -1;
    }
    for (uint32_t i = 0; i < RKSHIM_RING_TOKENS; i++) r->entries[i].big = NULL;
    r->event_fd = -1;
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&r->data_cond, &attr);
    pthread_cond_init(&r->room_cond, &attr);
    pthread_condattr_destroy(&attr);
    return 0;
}

static void drop_entries(rkshim_ring *r) {
    uint32_t head = atomic_load(&r->head);
    for (uint32_t i = atomic_load(&r->tail); i != head; i++) {
        rkshim_ring_entry *e = &r->entries[i & (RKSHIM_RING_TOKENS - 1)];
        free(e->big);
        e->big = NULL;
    }
}

void ring_destroy(rkshim_ring *r) {
    drop_entries(r);
    free(r->entries), free(r->text), free(r->c_text), free(r->c_ends), free(r->c_ids);
    if (r->event_fd >= 0) close(r->event_fd);
    pthread_cond_destroy(&r->data_cond);
    pthread_cond_destroy(&r->room_cond);
    pthread_mutex_destroy(&r->lock);
}

static void fd_reset(rkshim_ring *r) {
    uint64_t v;
    ssize_t got = read(r->event_fd, &v, sizeof v);
    (void)got;
}

void ring_reset(rkshim_ring *r) {
    drop_entries(r);
    atomic_store(&r->head, 0);
    atomic_store(&r->tail, 0);
    atomic_store(&r->text_tail, 0);
    atomic_store(&r->wake, 0);
    atomic_store(&r->producer_waiting, 0);
    atomic_store(&r->stopped, 0);
    r->p_head = r->p_text_head = r->p_tail_seen = r->p_text_tail_seen = 0;
    r->c_text_tail = 0;
    if (r->event_fd >= 0) { /* a fresh run starts unsignalled */
        fd_reset(r);
        atomic_store(&r->fd_signalled, 0);
    }
}

void ring_fd_write(rkshim_ring *r) {
    int fd = atomic_load(&r->event_fd);
    if (fd < 0) return;
    uint64_t one = 1;
    ssize_t w = write(fd, &one, sizeof one);
    (void)w;
    atomic_store(&r->fd_signalled, 1);
}

/* ---- producer ---------------------------------------------------------------------------- */

/* Wakes the consumer if it said it sleeps (without the lock on the common path). */
static void wake_consumer(rkshim_ring *r) {
    if (!atomic_load(&r->wake)) return;
    int w = atomic_exchange(&r->wake, 0);
    if (w & WAKE_FD) ring_fd_write(r);
    if (w & WAKE_COND) {
        /* the consumer armed WAKE_COND with the lock held and holds it until it sleeps:
         * once we had the lock, it sleeps; signalled after unlocking, it does not wake up
         * only to block on the lock we hold */
        pthread_mutex_lock(&r->lock);
        pthread_mutex_unlock(&r->lock);
        pthread_cond_signal(&r->data_cond);
    }
}

/* Is there room for one entry and text bytes of text (or, for a big text, is the ring
 * empty)? Re-reads the consumer's position only when the last one seen is not enough. */
static int has_room(rkshim_ring *r, uint32_t text, int big) {
    for (int fresh = 0;; fresh = 1) {
        uint32_t used = r->p_head - r->p_tail_seen;
        if (big ? used == 0
                : used < RKSHIM_RING_TOKENS &&
                      r->p_text_head - r->p_text_tail_seen + text <= RKSHIM_RING_TEXT)
            return 1;
        if (fresh) return 0;
        r->p_tail_seen = atomic_load(&r->tail);
        r->p_text_tail_seen = atomic_load(&r->text_tail);
    }
}

static int wait_room(rkshim_ring *r, uint32_t text, int big) {
    pthread_mutex_lock(&r->lock);
    atomic_store(&r->producer_waiting, 1);
    int ok;
    while (!(ok = has_room(r, text, big)) && !atomic_load(&r->stopped))
        pthread_cond_wait(&r->room_cond, &r->lock);
    atomic_store(&r->producer_waiting, 0);
    pthread_mutex_unlock(&r->lock);
    return ok && !atomic_load(&r->stopped) ? 0 : -1;
}

int ring_push(rkshim_ring *r, const char *text, uint32_t bytes, uint32_t chars, int32_t id) {
    int big = bytes > BIG_TEXT;
    uint32_t in_ring = big ? 0 : bytes;
    if (!has_room(r, in_ring, big) && wait_room(r, in_ring, big) != 0) return -1;
    rkshim_ring_entry *e = &r->entries[r->p_head & (RKSHIM_RING_TOKENS - 1)];
    e->bytes = bytes;
    e->chars = chars;
    e->id = id;
    e->big = NULL;
    if (big) {
        e->big = malloc(bytes);
        if (e->big) memcpy(e->big, text, bytes);
        else e->bytes = e->chars = 0; /* out of memory: this token's text is lost */
    } else if (bytes) {
        uint32_t at = r->p_text_head & (RKSHIM_RING_TEXT - 1), first = RKSHIM_RING_TEXT - at;
        if (first > bytes) first = bytes;
        memcpy(r->text + at, text, first);
        memcpy(r->text, text + first, bytes - first);
        r->p_text_head += bytes;
    }
    r->p_head++;
    atomic_store(&r->head, r->p_head); /* publish; seq_cst: ordered before reading wake */
    wake_consumer(r);
    return 0;
}

void ring_stop(rkshim_ring *r) {
    atomic_store(&r->stopped, 1);
    pthread_mutex_lock(&r->lock);
    pthread_cond_broadcast(&r->room_cond);
    pthread_mutex_unlock(&r->lock);
}

/* ---- consumer ---------------------------------------------------------------------------- */

int ring_empty(rkshim_ring *r) {
    return atomic_load(&r->head) == atomic_load_explicit(&r->tail, memory_order_relaxed);
}

uint32_t ring_events(rkshim_ring *r) { return atomic_load(&r->events); }

/* Copies n entries' text from the ring (and big allocations) into c_text; fits == 0 (out of
 * memory) hands the tokens over without text. */
static size_t copy_text(rkshim_ring *r, uint32_t tail, uint32_t head, int fits, int any_big,
                        size_t ring_bytes, uint32_t *ends_chars) {
    uint32_t at = r->c_text_tail;
    size_t o = 0;
    uint32_t chars = 0;
    if (!any_big && fits && ring_bytes) { /* the common case: one or two copies */
        uint32_t from = at & (RKSHIM_RING_TEXT - 1), first = RKSHIM_RING_TEXT - from;
        if (first > ring_bytes) first = (uint32_t)ring_bytes;
        memcpy(r->c_text, r->text + from, first);
        memcpy(r->c_text + first, r->text, ring_bytes - first);
        o = ring_bytes;
        at += (uint32_t)ring_bytes;
    }
    for (uint32_t i = tail, k = 0; i != head; i++, k++) {
        rkshim_ring_entry *e = &r->entries[i & (RKSHIM_RING_TOKENS - 1)];
        if (any_big || !fits) {
            if (e->big) {
                if (fits) memcpy(r->c_text + o, e->big, e->bytes);
                free(e->big);
                e->big = NULL;
            } else {
                uint32_t from = at & (RKSHIM_RING_TEXT - 1), first = RKSHIM_RING_TEXT - from;
                if (first > e->bytes) first = e->bytes;
                if (fits) {
                    memcpy(r->c_text + o, r->text + from, first);
                    memcpy(r->c_text + o + first, r->text, e->bytes - first);
                }
                at += e->bytes;
            }
            if (fits) o += e->bytes;
        }
        if (fits) chars += e->chars;
        r->c_ends[k] = chars;
        r->c_ids[k] = e->id;
    }
    r->c_text_tail = at;
    *ends_chars = chars;
    return o;
}

size_t ring_take(rkshim_ring *r, rkshim_batch *out) {
    uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint32_t n = head - tail;
    if (!n) return 0;
    size_t text_bytes = 0, ring_bytes = 0;
    int any_big = 0;
    for (uint32_t i = tail; i != head; i++) {
        const rkshim_ring_entry *e = &r->entries[i & (RKSHIM_RING_TOKENS - 1)];
        text_bytes += e->bytes;
        if (e->big) any_big = 1;
        else ring_bytes += e->bytes;
    }
    if (text_bytes + 1 > r->c_text_cap) {
        size_t cap = r->c_text_cap * 2 > text_bytes + 1 ? r->c_text_cap * 2 : text_bytes + 1;
        char *t = realloc(r->c_text, cap);
        if (t) r->c_text = t, r->c_text_cap = cap;
    }
    uint32_t chars;
    size_t o = copy_text(r, tail, head, text_bytes + 1 <= r->c_text_cap, any_big, ring_bytes,
                         &chars);
    atomic_store(&r->text_tail, r->c_text_tail);
    atomic_store(&r->tail, head); /* seq_cst: ordered before reading producer_waiting */
    if (atomic_load(&r->producer_waiting)) {
        pthread_mutex_lock(&r->lock);
        pthread_cond_broadcast(&r->room_cond);
        pthread_mutex_unlock(&r->lock);
    }
    out->text = r->c_text;
    out->text_len = o;
    out->ends = r->c_ends;
    out->token_ids = r->c_ids;
    out->n_tokens = n;
    return n;
}

int ring_wait(rkshim_ring *r, uint32_t seen, const struct timespec *deadline) {
    int rc = 0;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        atomic_fetch_or(&r->wake, WAKE_COND); /* from here on push wakes us */
        if (!ring_empty(r) || atomic_load(&r->events) != seen || rc == ETIMEDOUT) break;
        rc = deadline ? pthread_cond_timedwait(&r->data_cond, &r->lock, deadline)
                      : pthread_cond_wait(&r->data_cond, &r->lock);
    }
    atomic_fetch_and(&r->wake, ~WAKE_COND);
    pthread_mutex_unlock(&r->lock);
    return rc == ETIMEDOUT && ring_empty(r) && atomic_load(&r->events) == seen ? ETIMEDOUT : 0;
}

void ring_notify(rkshim_ring *r) {
    atomic_fetch_add(&r->events, 1);
    pthread_mutex_lock(&r->lock);
    pthread_cond_broadcast(&r->data_cond);
    pthread_mutex_unlock(&r->lock);
    ring_fd_write(r);
}

/* ---- the eventfd --------------------------------------------------------------------------- */

int ring_event_fd(rkshim_ring *r) {
    pthread_mutex_lock(&r->lock);
    if (r->event_fd < 0) {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd >= 0) {
            r->event_fd = fd;
            atomic_fetch_or(&r->wake, WAKE_FD); /* readable as soon as a take would get tokens */
            if (!ring_empty(r)) ring_fd_write(r);
        }
    }
    int fd = r->event_fd;
    pthread_mutex_unlock(&r->lock);
    return fd;
}

void ring_fd_consumed(rkshim_ring *r) {
    if (r->event_fd >= 0 && atomic_exchange(&r->fd_signalled, 0)) fd_reset(r);
}

void ring_fd_arm(rkshim_ring *r) {
    if (r->event_fd < 0) return;
    atomic_store(&r->fd_signalled, 0);
    fd_reset(r);
    atomic_fetch_or(&r->wake, WAKE_FD);
    if (!ring_empty(r)) wake_consumer(r); /* something came in meanwhile */
}
