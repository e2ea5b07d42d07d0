/* rkllm-cffi shim: per-thread error state and capture of the runtime's stderr lines. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

static __thread char tl_error[4096];
static __thread int tl_runtime_rc;
static __thread char tl_runtime_message[512];

int rkshim_interface_version(void) { return RKSHIM_INTERFACE_VERSION; }
const char *rkshim_last_error(void) { return tl_error; }
int rkshim_last_runtime_rc(void) { return tl_runtime_rc; }
const char *rkshim_last_runtime_message(void) { return tl_runtime_message; }

void rkshim_clear_error(void) {
    tl_error[0] = 0;
    tl_runtime_rc = 0;
    tl_runtime_message[0] = 0;
}

static int vfail(int code, int runtime_rc, const char *fmt, va_list ap) {
    vsnprintf(tl_error, sizeof tl_error, fmt, ap);
    tl_runtime_rc = runtime_rc;
    return code;
}

int rkshim_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(code, 0, fmt, ap);
    va_end(ap);
    return code;
}

int rkshim_fail_rc(int code, int runtime_rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(code, runtime_rc, fmt, ap);
    va_end(ap);
    return code;
}

/* fd 2 is pointed at an anonymous file (a pipe could fill up and block the runtime) for the
 * duration of one short call; everything is then copied back to the real stderr. Other
 * threads' stderr output during that window is delayed, not lost. RKLLM_CAPTURE_STDERR=0
 * turns this off. */
static pthread_mutex_t capture_lock = PTHREAD_MUTEX_INITIALIZER;
/* the real stderr while a capture is in progress (-1: none), for a child forked meanwhile */
static volatile sig_atomic_t capture_saved_fd = -1;

void rkshim_capture_begin(rkshim_capture *c) {
    c->saved_fd = c->capture_fd = -1;
    tl_runtime_message[0] = 0;
    const char *env = getenv("RKLLM_CAPTURE_STDERR");
    if (env && strcmp(env, "0") == 0) return;
    pthread_mutex_lock(&capture_lock);
    fflush(stderr);
    int fd = memfd_create("rkllm-stderr", MFD_CLOEXEC);
    int saved = fd >= 0 ? fcntl(2, F_DUPFD_CLOEXEC, 0) : -1;
    capture_saved_fd = saved;
    if (fd < 0 || saved < 0 || dup2(fd, 2) < 0) {
        capture_saved_fd = -1;
        if (fd >= 0) close(fd);
        if (saved >= 0) close(saved);
        pthread_mutex_unlock(&capture_lock);
        return;
    }
    c->saved_fd = saved;
    c->capture_fd = fd;
}

void rkshim_capture_end(rkshim_capture *c) {
    if (c->capture_fd < 0) return;
    fflush(stderr);
    dup2(c->saved_fd, 2);
    capture_saved_fd = -1;
    close(c->saved_fd);
    off_t size = lseek(c->capture_fd, 0, SEEK_END);
    if (size > 0) {
        char *buf = malloc((size_t)size + 1);
        if (buf && pread(c->capture_fd, buf, (size_t)size, 0) == size) {
            buf[size] = 0;
            for (off_t done = 0; done < size;) { /* tee back */
                ssize_t w = write(2, buf + done, (size_t)(size - done));
                if (w <= 0 && errno != EINTR) break;
                if (w > 0) done += w;
            }
            /* keep the last non-empty line */
            size_t end = (size_t)size;
            while (end > 0 && (buf[end - 1] == '\n' || buf[end - 1] == '\r' || buf[end - 1] == ' '))
                end--;
            size_t start = end;
            while (start > 0 && buf[start - 1] != '\n') start--;
            size_t len = end - start;
            if (len >= sizeof tl_runtime_message) len = sizeof tl_runtime_message - 1;
            memcpy(tl_runtime_message, buf + start, len);
            tl_runtime_message[len] = 0;
        }
        free(buf);
    }
    close(c->capture_fd);
    c->capture_fd = -1;
    pthread_mutex_unlock(&capture_lock);
}

/* In a child forked during a capture (fork does not wait for it: a model load may take
 * minutes): stderr is the real one again and the lock, held by a thread that is not in the
 * child, is made anew. */
void rkshim_capture_after_fork_child(void) {
    if (capture_saved_fd >= 0) dup2(capture_saved_fd, 2);
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&capture_lock, &fresh, sizeof fresh);
}
