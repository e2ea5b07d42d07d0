/* Unit test of the shim's token ring (csrc/shim/ring.c), without any runtime.
 *
 * Build: cc -O2 -pthread -Icsrc/shim -Iinclude tests/c/ring_test.c csrc/shim/ring.c
 * Run:   ./ring_test [tokens]   (prints "ok" and exits 0, or names the failed check)
 * Also built with -fsanitize=thread by .ci/sanitize.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ring.h"

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "ring_test: %s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                           \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

/* Token i's text: deterministic, 0..63 bytes (ASCII, so chars == bytes), sometimes long. */
static uint32_t text_of(uint32_t i, char *buf, size_t cap) {
    uint32_t x = i * 2654435761u;
    uint32_t len = (x >> 7) % 64;
    if (i % 9973 == 17) len = RKSHIM_RING_TEXT / 4 + 100 + i % 50; /* a big one */
    if (len > cap) len = (uint32_t)cap;
    for (uint32_t k = 0; k < len; k++) buf[k] = (char)('a' + (x + k * 7) % 26);
    return len;
}

static void deadline_in(struct timespec *ts, long ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) ts->tv_sec++, ts->tv_nsec -= 1000000000L;
}

/* ---- one thread: contents, wrap-around, big texts ---- */

static void test_contents_and_wrap(void) {
    rkshim_ring r;
    CHECK(ring_init(&r) == 0);
    static char buf[RKSHIM_RING_TEXT];
    rkshim_batch b;
    uint32_t next = 0;
    /* far more text than the ring holds: its text position wraps many times */
    for (int round = 0; round < 200; round++) {
        uint32_t first = next;
        for (int k = 0; k < 300; k++, next++) {
            uint32_t len = text_of(next, buf, sizeof buf);
            if (len > RKSHIM_RING_TEXT / 4) len = 40; /* big ones are tested below */
            CHECK(ring_push(&r, buf, len, len, (int32_t)next) == 0);
        }
        memset(&b, 0, sizeof b);
        CHECK(ring_take(&r, &b) == 300);
        size_t at = 0;
        for (uint32_t k = 0; k < 300; k++) {
            uint32_t len = text_of(first + k, buf, sizeof buf);
            if (len > RKSHIM_RING_TEXT / 4) len = 40;
            CHECK(b.token_ids[k] == (int32_t)(first + k));
            CHECK(b.ends[k] == at + len);
            CHECK(memcmp(b.text + at, buf, len) == 0);
            at += len;
        }
        CHECK(b.text_len == at);
        CHECK(ring_take(&r, &b) == 0 && ring_empty(&r));
    }
    ring_destroy(&r);
}

static void test_big_alone(void) {
    rkshim_ring r;
    CHECK(ring_init(&r) == 0);
    static char big[RKSHIM_RING_TEXT / 2];
    memset(big, 'y', sizeof big);
    rkshim_batch b;
    CHECK(ring_push(&r, big, sizeof big, sizeof big, 7) == 0); /* empty ring: goes at once */
    CHECK(ring_take(&r, &b) == 1);
    CHECK(b.text_len == sizeof big && b.ends[0] == sizeof big && b.token_ids[0] == 7);
    CHECK(memcmp(b.text, big, sizeof big) == 0);
    CHECK(ring_push(&r, "é", 2, 1, 8) == 0); /* chars, not bytes, in ends */
    CHECK(ring_take(&r, &b) == 1 && b.ends[0] == 1 && b.text_len == 2);
    ring_destroy(&r);
}

/* ---- a full ring: the producer waits, a take wakes it; stop releases it ---- */

typedef struct {
    rkshim_ring *r;
    int rc;
    _Atomic int returned;
} pusher;

static void *push_one(void *arg) {
    pusher *p = arg;
    p->rc = ring_push(p->r, "z", 1, 1, 99);
    atomic_store(&p->returned, 1);
    return NULL;
}

static void test_full_ring(void) {
    rkshim_ring r;
    CHECK(ring_init(&r) == 0);
    for (uint32_t i = 0; i < RKSHIM_RING_TOKENS; i++) CHECK(ring_push(&r, "q", 1, 1, 0) == 0);
    pusher p = {&r, -2, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, push_one, &p) == 0);
    while (!atomic_load(&r.producer_waiting)) usleep(100);
    CHECK(!atomic_load(&p.returned));
    rkshim_batch b;
    CHECK(ring_take(&r, &b) == RKSHIM_RING_TOKENS); /* makes room and wakes it */
    pthread_join(t, NULL);
    CHECK(p.rc == 0);
    CHECK(ring_take(&r, &b) == 1 && b.token_ids[0] == 99);

    /* full again, then stopped: the waiting push gives up and drops */
    for (uint32_t i = 0; i < RKSHIM_RING_TOKENS; i++) CHECK(ring_push(&r, "q", 1, 1, 0) == 0);
    pusher p2 = {&r, -2, 0};
    CHECK(pthread_create(&t, NULL, push_one, &p2) == 0);
    while (!atomic_load(&r.producer_waiting)) usleep(100);
    ring_stop(&r);
    pthread_join(t, NULL);
    CHECK(p2.rc == -1);
    CHECK(ring_push(&r, "q", 1, 1, 0) == -1); /* still full and stopped: dropped at once */
    ring_reset(&r); /* a new run: empty and accepting again */
    CHECK(ring_empty(&r));
    CHECK(ring_push(&r, "w", 1, 1, 5) == 0);
    CHECK(ring_take(&r, &b) == 1 && b.token_ids[0] == 5);
    ring_destroy(&r);
}

/* ---- wake-ups: notify, timeout, the eventfd ---- */

static void *notify_later(void *arg) {
    usleep(20000);
    ring_notify(arg);
    return NULL;
}

static void test_wakeups(void) {
    rkshim_ring r;
    CHECK(ring_init(&r) == 0);
    struct timespec ts;
    deadline_in(&ts, 30);
    CHECK(ring_wait(&r, ring_events(&r), &ts) == ETIMEDOUT);
    pthread_t t;
    uint32_t seen = ring_events(&r);
    CHECK(pthread_create(&t, NULL, notify_later, &r) == 0);
    CHECK(ring_wait(&r, seen, NULL) == 0); /* woken by the notification, not by data */
    CHECK(ring_empty(&r) && ring_events(&r) != seen);
    pthread_join(t, NULL);

    int fd = ring_event_fd(&r);
    CHECK(fd >= 0);
    struct pollfd pfd = {fd, POLLIN, 0};
    ring_fd_arm(&r);
    CHECK(poll(&pfd, 1, 0) == 0);          /* nothing yet */
    CHECK(ring_push(&r, "e", 1, 1, 1) == 0); /* an armed fd is written by push */
    CHECK(poll(&pfd, 1, 1000) == 1);
    rkshim_batch b;
    CHECK(ring_take(&r, &b) == 1);
    ring_fd_consumed(&r);
    CHECK(poll(&pfd, 1, 0) == 0);          /* unsignalled once consumed */
    ring_notify(&r);                       /* events are always signalled */
    CHECK(poll(&pfd, 1, 0) == 1);
    ring_destroy(&r);
}

/* ---- producer and consumer threads, many tokens ---- */

typedef struct {
    rkshim_ring *r;
    uint32_t n;
    _Atomic int done;
} stream;

static void *producer(void *arg) {
    stream *s = arg;
    static char buf[RKSHIM_RING_TEXT];
    for (uint32_t i = 0; i < s->n; i++) {
        uint32_t len = text_of(i, buf, sizeof buf);
        CHECK(ring_push(s->r, buf, len, len, (int32_t)i) == 0);
        if (i % 50000 == 0) usleep(2000); /* let the consumer go to sleep */
    }
    atomic_store(&s->done, 1);
    ring_notify(s->r);
    return NULL;
}

static void test_threads(uint32_t n) {
    rkshim_ring r;
    CHECK(ring_init(&r) == 0);
    stream s = {&r, n, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, producer, &s) == 0);
    static char want[RKSHIM_RING_TEXT];
    uint32_t next = 0;
    unsigned long batches = 0;
    for (;;) {
        uint32_t seen = ring_events(&r);
        int done = atomic_load(&s.done);
        rkshim_batch b;
        size_t got = ring_take(&r, &b);
        size_t at = 0, prev_end = 0;
        for (size_t k = 0; k < got; k++, next++) {
            uint32_t len = text_of(next, want, sizeof want);
            CHECK(b.token_ids[k] == (int32_t)next);
            CHECK(b.ends[k] - prev_end == len);
            CHECK(memcmp(b.text + at, want, len) == 0);
            at += len;
            prev_end = b.ends[k];
        }
        if (got) batches++;
        if (got && batches % 997 == 0) usleep(3000); /* let the ring fill up */
        if (!got && done) break;
        if (!got) CHECK(ring_wait(&r, seen, NULL) == 0);
    }
    CHECK(next == n);
    pthread_join(t, NULL);
    ring_destroy(&r);
}

int main(int argc, char **argv) {
    uint32_t n = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 2000000;
    test_big_alone();
    test_contents_and_wrap();
    test_full_ring();
    test_wakeups();
    for (int i = 0; i < 3; i++) test_threads(n);
    printf("ok\n");
    return 0;
}
