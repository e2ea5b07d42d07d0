/* rkllm-cffi shim: repair of the runtime's token texts into valid UTF-8.
 *
 * A token may end inside a character (its other bytes come with the next token) or carry
 * invalid bytes. The repair keeps the bytes of a cut character until the next text and turns
 * invalid bytes into U+FFFD (as Python's "replace" does), so every text handed on is valid
 * UTF-8 and its code points can be counted. One rkshim_utf8 per producer; not thread-safe.
 */
#ifndef RKSHIM_UTF8_H
#define RKSHIM_UTF8_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    unsigned char pending[4]; /* bytes of a character not complete yet */
    int pending_len;
    char *scratch;            /* for a text too long for the caller's buffer */
    size_t scratch_cap;
} rkshim_utf8;

/* Room the caller's buffer needs for a text of len bytes to avoid the scratch allocation. */
#define RKSHIM_UTF8_OUT(len) (4 * ((len) + 4))

/* Repairs text (joined after the bytes held back last time): returns the valid UTF-8 (in buf
 * if buf_cap >= RKSHIM_UTF8_OUT(len), else in u's scratch), its length in *bytes and its code
 * points in *chars; NULL when out of memory (the held-back bytes are then dropped). */
const char *rkshim_utf8_fix(rkshim_utf8 *u, const char *text, size_t len, char *buf,
                            size_t buf_cap, size_t *bytes, uint32_t *chars);

/* At the end of a text stream: a character left incomplete becomes U+FFFD, written to out;
 * returns the bytes written (0 if nothing was pending) and adds its code point to *chars. */
size_t rkshim_utf8_flush(rkshim_utf8 *u, char out[3], uint32_t *chars);

void rkshim_utf8_reset(rkshim_utf8 *u); /* forgets held-back bytes */
void rkshim_utf8_free(rkshim_utf8 *u);

#endif
