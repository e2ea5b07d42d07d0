/*
 * Messages on stderr and the RKLLM_SIM_TRACE call log (one JSON object per line per call).
 */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sim.h"

long sim_env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    return *end ? dflt : x;
}

static void vmessage(const char *prefix, const char *fmt, va_list ap)
{
    char line[1200];
    int n = snprintf(line, sizeof line, "%s", prefix);
    vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    strcat(line, "\n");
    fputs(line, stderr); /* one call, so concurrent messages do not interleave mid-line */
}

void sim_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmessage("E RKLLM-SIM: ", fmt, ap);
    va_end(ap);
}

void sim_info(const char *fmt, ...)
{
    if (sim_env_long("RKLLM_SIM_QUIET", 0))
        return;
    va_list ap;
    va_start(ap, fmt);
    vmessage("I RKLLM-SIM: ", fmt, ap);
    va_end(ap);
}

static int trace_on(void)
{
    const char *path = getenv("RKLLM_SIM_TRACE");
    return path && *path;
}

static void put(sim_json *j, const char *s, size_t n)
{
    if (!j->p)
        return;
    if (j->n + n + 1 > j->cap) {
        size_t cap = (j->cap + n + 1) * 2;
        char *p = realloc(j->p, cap);
        if (!p) {
            free(j->p);
            j->p = NULL;
            return;
        }
        j->p = p;
        j->cap = cap;
    }
    memcpy(j->p + j->n, s, n);
    j->n += n;
    j->p[j->n] = 0;
}

static void puts_(sim_json *j, const char *s) { put(j, s, strlen(s)); }

static void quoted(sim_json *j, const char *s, size_t n)
{
    put(j, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            put(j, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(j, esc, 6);
        } else if (c < 0x80) {
            put(j, (const char *)&c, 1);
        } else {
            /* pass valid UTF-8 sequences through, replace stray bytes */
            int len = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
            int ok = len && i + len <= n;
            for (int k = 1; ok && k < len; k++)
                ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
            if (ok && c < 0xf5) {
                put(j, s + i, len);
                i += len - 1;
            } else {
                puts_(j, "\\ufffd");
            }
        }
    }
    put(j, "\"", 1);
}

static void comma_key(sim_json *j, const char *key)
{
    if (!j->first)
        put(j, ",", 1);
    j->first = 0;
    if (key) {
        quoted(j, key, strlen(key));
        put(j, ":", 1);
    }
}

void sim_json_begin(sim_json *j, const char *call)
{
    memset(j, 0, sizeof *j);
    if (!trace_on())
        return;
    j->cap = 512;
    j->p = malloc(j->cap);
    if (!j->p)
        return;
    j->p[0] = 0;
    j->first = 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char head[128];
    snprintf(head, sizeof head, "{\"time\":%lld.%06ld,\"pid\":%ld,\"tid\":%ld,",
             (long long)ts.tv_sec, ts.tv_nsec / 1000, (long)getpid(), (long)syscall(SYS_gettid));
    puts_(j, head);
    sim_json_str(j, "sim", "rkllm-cffi " RKLLM_SIM_FAMILY);
    sim_json_str(j, "call", call);
    sim_json_open(j, "args");
}

void sim_json_open(sim_json *j, const char *key)
{
    comma_key(j, key);
    put(j, "{", 1);
    j->first = 1;
}

void sim_json_close(sim_json *j)
{
    put(j, "}", 1);
    j->first = 0;
}

static void json_strn(sim_json *j, const char *key, const char *s, size_t n)
{
    if (!j->p)
        return;
    comma_key(j, key);
    if (s)
        quoted(j, s, n);
    else
        puts_(j, "null");
}

void sim_json_str(sim_json *j, const char *key, const char *s)
{
    json_strn(j, key, s, s ? strlen(s) : 0);
}

void sim_json_int(sim_json *j, const char *key, long long v)
{
    if (!j->p)
        return;
    char b[32];
    comma_key(j, key);
    snprintf(b, sizeof b, "%lld", v);
    puts_(j, b);
}

void sim_json_float(sim_json *j, const char *key, double v)
{
    if (!j->p)
        return;
    char b[40];
    comma_key(j, key);
    if (isfinite(v))
        snprintf(b, sizeof b, "%.9g", v);
    else
        snprintf(b, sizeof b, "\"%s\"", isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
    puts_(j, b);
}

void sim_json_bool(sim_json *j, const char *key, int v)
{
    if (!j->p)
        return;
    comma_key(j, key);
    puts_(j, v ? "true" : "false");
}

void sim_json_ptr(sim_json *j, const char *key, const void *p)
{
    if (!j->p)
        return;
    comma_key(j, key);
    puts_(j, p ? "\"non-null\"" : "null");
}

void sim_json_end(sim_json *j, int rc)
{
    if (!j->p)
        return;
    sim_json_close(j); /* args */
    sim_json_int(j, "rc", rc);
    puts_(j, "}\n");
    const char *path = getenv("RKLLM_SIM_TRACE");
    if (j->p && path && *path) {
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            ssize_t w = write(fd, j->p, j->n); /* one append: lines from threads stay whole */
            (void)w;
            close(fd);
        } else {
            sim_error("cannot open trace file '%s' (RKLLM_SIM_TRACE)", path);
        }
    }
    free(j->p);
    j->p = NULL;
}
