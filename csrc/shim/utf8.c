/* rkllm-cffi shim: UTF-8 repair of token texts (see utf8.h). */
#include "utf8.h"

#include <stdlib.h>
#include <string.h>

static size_t put_replacement(char *dst, uint32_t *chars) {
    memcpy(dst, "\xEF\xBF\xBD", 3);
    ++*chars;
    return 3;
}

/* Writes the complete, valid characters of s to dst (invalid bytes become U+FFFD); a
 * character cut at the end goes to pending. dst must have room for 3 * len bytes. Returns
 * the bytes written; adds the code points to *chars. */
static size_t take(rkshim_utf8 *u, char *dst, const unsigned char *s, size_t len,
                   uint32_t *chars) {
    size_t i = 0, o = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            size_t j = i + 1;
            while (j < len && s[j] < 0x80) j++;
            memcpy(dst + o, s + i, j - i);
            o += j - i;
            *chars += (uint32_t)(j - i);
            i = j;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) { need = 2; lo = 0xA0; }
        else if (c == 0xED) { need = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) need = 2;
        else if (c == 0xF0) { need = 3; lo = 0x90; }
        else if (c == 0xF4) { need = 3; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else {
            o += put_replacement(dst + o, chars);
            i++;
            continue;
        }
        size_t k = 1;
        for (; k <= need && i + k < len; k++) {
            unsigned d = s[i + k];
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) break;
        }
        if (k > need) { /* complete */
            memcpy(dst + o, s + i, need + 1);
            o += need + 1;
            ++*chars;
            i += need + 1;
        } else if (i + k == len) { /* valid so far, cut by the end of this piece */
            u->pending_len = (int)(len - i);
            memcpy(u->pending, s + i, len - i);
            break;
        } else { /* broken sequence: one replacement for the valid prefix */
            o += put_replacement(dst + o, chars);
            i += k;
        }
    }
    return o;
}

const char *rkshim_utf8_fix(rkshim_utf8 *u, const char *text, size_t len, char *buf,
                            size_t buf_cap, size_t *bytes, uint32_t *chars) {
    size_t total = (size_t)u->pending_len + len;
    /* the joined input (only when bytes were held back) followed by the output */
    size_t need = (u->pending_len ? total : 0) + 3 * total;
    char *area = buf;
    if (need > buf_cap) { /* rare: one scratch allocation, kept and reused */
        if (need > u->scratch_cap) {
            char *s = realloc(u->scratch, need);
            if (!s) {
                u->pending_len = 0;
                return NULL;
            }
            u->scratch = s;
            u->scratch_cap = need;
        }
        area = u->scratch;
    }
    const unsigned char *src = (const unsigned char *)text;
    char *out = area;
    if (u->pending_len) {
        memcpy(area, u->pending, (size_t)u->pending_len);
        memcpy(area + u->pending_len, text, len);
        u->pending_len = 0;
        src = (const unsigned char *)area;
        out = area + total;
    }
    *chars = 0;
    *bytes = take(u, out, src, total, chars);
    return out;
}

size_t rkshim_utf8_flush(rkshim_utf8 *u, char out[3], uint32_t *chars) {
    if (!u->pending_len) return 0;
    u->pending_len = 0;
    return put_replacement(out, chars);
}

void rkshim_utf8_reset(rkshim_utf8 *u) { u->pending_len = 0; }

void rkshim_utf8_free(rkshim_utf8 *u) {
    free(u->scratch);
    u->scratch = NULL;
    u->scratch_cap = 0;
}
