/*
 * Simulated model files (docs/sim-model-format.md): reading, checking, tokenizing.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sim.h"

#define MAGIC "RKSIMLLM"
#define FORMAT_VERSION 1

static uint32_t crc_table[256];

static void make_crc_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t sim_crc32(uint32_t crc, const void *data, size_t len)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT; /* threads may load models at once */
    pthread_once(&once, make_crc_table);
    const uint32_t *table = crc_table;
    const uint8_t *p = data;
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

int sim_family_of(const char *release)
{
    static const struct { const char *rel; int fam; } known[] = {
        {"1.1.0", 110}, {"1.1.1", 110}, {"1.1.2", 110}, {"1.1.3", 110}, {"1.1.4", 110},
        {"1.2.0", 120}, {"1.2.1", 121}, {"1.2.2", 121}, {"1.2.3", 121}, {"1.3.0", 130},
    };
    for (size_t i = 0; release && i < sizeof known / sizeof known[0]; i++)
        if (strcmp(release, known[i].rel) == 0)
            return known[i].fam;
    return 0;
}

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

static uint32_t hash_bytes(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint32_t h = 2166136261u;
    while (n--)
        h = (h ^ *p++) * 16777619u;
    return h;
}

/* ---- META: key=value lines ---- */
typedef struct {
    const char *key;
    char *value;
} kv;

static char *unescape(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            char c = s[++i];
            *o++ = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
        } else {
            *o++ = s[i];
        }
    }
    *o = 0;
    return out;
}

/* Finds key in a META blob; returns a malloc'd unescaped value or NULL. */
static char *meta_get(const char *meta, size_t len, const char *key)
{
    size_t klen = strlen(key), i = 0;
    while (i < len) {
        const char *line = meta + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t llen = nl ? (size_t)(nl - line) : len - i;
        if (llen > klen && memcmp(line, key, klen) == 0 && line[klen] == '=')
            return unescape(line + klen + 1, llen - klen - 1);
        i += llen + 1;
    }
    return NULL;
}

static int meta_valid(const char *meta, size_t len)
{
    /* UTF-8 text without NULs, every non-empty line has '=' */
    size_t i = 0;
    while (i < len) {
        const char *line = meta + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t llen = nl ? (size_t)(nl - line) : len - i;
        if (llen && !memchr(line, '=', llen))
            return 0;
        if (memchr(line, 0, llen))
            return 0;
        i += llen + 1;
    }
    return 1;
}

typedef struct {
    const uint8_t *data;
    uint64_t size;
} section;

/* Reads and checks the container; fills sections by tag. Returns the buffer or NULL. */
static uint8_t *read_container(const char *path, const char *what, section *meta, section *vocb,
                               section *word, section *chan, uint32_t *crc_out, char *err, size_t errlen)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s file '%s': %s", what, path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s file '%s' is not a regular file", what, path);
        close(fd);
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s file '%s': %s", what, path, strerror(errno));
        close(fd);
        return NULL;
    }
    /* the header first: a file that is not a simulated model is refused before it is read */
    size_t size = (size_t)st.st_size;
    uint8_t head[32];
    size_t got = fread(head, 1, sizeof head, f);
    if (size == 0) {
        snprintf(err, errlen, "%s file '%s' is empty", what, path);
        fclose(f);
        return NULL;
    }
    if (got < sizeof head || memcmp(head, MAGIC, 8) != 0) {
        snprintf(err, errlen, "'%s' is not a simulated RKLLM model (no RKSIMLLM magic; this "
                 "simulated runtime cannot load real RKLLM models or other files)", path);
        fclose(f);
        return NULL;
    }
    if (le32(head + 8) != FORMAT_VERSION) {
        snprintf(err, errlen, "'%s' uses simulated model format version %u; this runtime reads "
                 "version %d", path, le32(head + 8), FORMAT_VERSION);
        fclose(f);
        return NULL;
    }
    uint64_t declared = le64(head + 16);
    if (declared != size) {
        snprintf(err, errlen, "%s file '%s' is %s: %zu bytes, its header says %llu", what, path,
                 size < declared ? "truncated" : "longer than declared", size,
                 (unsigned long long)declared);
        fclose(f);
        return NULL;
    }
    uint8_t *buf = malloc(size);
    if (buf)
        memcpy(buf, head, sizeof head);
    if (!buf || fread(buf + sizeof head, 1, size - sizeof head, f) != size - sizeof head) {
        snprintf(err, errlen, "cannot read %s file '%s'", what, path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    uint32_t crc = sim_crc32(0, buf, size - 4);
    if (crc != le32(buf + size - 4)) {
        snprintf(err, errlen, "%s file '%s' is corrupt (CRC-32 mismatch)", what, path);
        goto fail;
    }
    uint32_t nsec = le32(buf + 12);
    uint64_t data_start = 24 + 24 * (uint64_t)nsec;
    if (nsec > 64 || data_start > size - 4) {
        snprintf(err, errlen, "%s file '%s' is corrupt (bad section table)", what, path);
        goto fail;
    }
    for (uint32_t i = 0; i < nsec; i++) {
        const uint8_t *e = buf + 24 + 24 * i;
        uint64_t off = le64(e + 8), len = le64(e + 16);
        if (off < data_start || off > size - 4 || len > size - 4 - off) {
            snprintf(err, errlen, "%s file '%s' is corrupt (section outside the file)", what, path);
            goto fail;
        }
        section s = {buf + off, len};
        if (memcmp(e, "META", 4) == 0) *meta = s;
        else if (memcmp(e, "VOCB", 4) == 0 && vocb) *vocb = s;
        else if (memcmp(e, "WORD", 4) == 0 && word) *word = s;
        else if (memcmp(e, "CHAN", 4) == 0 && chan) *chan = s;
    }
    if (!meta->data || !meta_valid((const char *)meta->data, meta->size)) {
        snprintf(err, errlen, "%s file '%s' is corrupt (missing or bad META section)", what, path);
        goto fail;
    }
    *crc_out = crc;
    return buf;
fail:
    free(buf);
    return NULL;
}

void sim_model_free(sim_model *m)
{
    if (!m)
        return;
    free(m->name); free(m->platform); free(m->toolkit); free(m->dtype);
    free(m->system_prompt); free(m->prompt_prefix); free(m->prompt_postfix);
    if (m->tok)
        for (int i = 0; i < m->vocab_size; i++)
            free(m->tok[i]);
    free(m->tok); free(m->tok_len); free(m->tok_special); free(m->tok_hash);
    free(m->word_off); free(m->pieces); free(m->word_n); free(m->tok_word);
    free(m->next_off); free(m->next_word); free(m->next_n); free(m->next_logc);
    free(m->next_logc_rest);
    free(m);
}

static long token_lookup(const sim_model *m, const char *s, size_t n)
{
    uint32_t i = hash_bytes(s, n) & m->tok_hash_mask;
    for (;;) {
        uint32_t v = m->tok_hash[i];
        if (!v)
            return -1;
        if (m->tok_len[v - 1] == n && memcmp(m->tok[v - 1], s, n) == 0)
            return v - 1;
        i = (i + 1) & m->tok_hash_mask;
    }
}

long sim_tokenize(const sim_model *m, const char *text, size_t len, int32_t *out, long cap)
{
    long n = 0;
    size_t i = 0;
    while (i < len) {
        size_t l = len - i < (size_t)m->max_tok_len ? len - i : (size_t)m->max_tok_len;
        long id = -1;
        for (; l > 0; l--)
            if ((id = token_lookup(m, text + i, l)) >= 0)
                break;
        if (id < 0) /* cannot happen with the 256 byte tokens, but stay safe */
            return -1;
        if (n >= cap)
            return -1;
        out[n++] = (int32_t)id;
        i += l;
    }
    return n;
}

#define NEED(cond, what)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            snprintf(err, errlen, "model file '%s' is corrupt (%s)", path, what);         \
            goto fail;                                                                    \
        }                                                                                 \
    } while (0)

static int meta_int(const section *meta, const char *key, int *out)
{
    char *v = meta_get((const char *)meta->data, meta->size, key), *end;
    if (!v)
        return 0;
    long x = strtol(v, &end, 10);
    int ok = *v && !*end && x >= 0 && x <= 0x7fffffff;
    free(v);
    if (ok)
        *out = (int)x;
    return ok;
}

sim_model *sim_model_load(const char *path, char *err, size_t errlen)
{
    section meta = {0}, vocb = {0}, word = {0}, chan = {0};
    uint32_t crc = 0;
    uint8_t *buf = read_container(path, "model", &meta, &vocb, &word, &chan, &crc, err, errlen);
    if (!buf)
        return NULL;
    sim_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        free(buf);
        return NULL;
    }
    m->crc = crc;
    const char *md = (const char *)meta.data;
    char *kind = meta_get(md, meta.size, "kind");
    int is_model = kind && strcmp(kind, "model") == 0;
    free(kind);
    if (!is_model) {
        snprintf(err, errlen, "'%s' is a simulated LoRA adapter or another kind of file, not a "
                 "model", path);
        goto fail;
    }
    m->name = meta_get(md, meta.size, "model_name");
    m->platform = meta_get(md, meta.size, "target_platform");
    m->toolkit = meta_get(md, meta.size, "toolkit_version");
    m->dtype = meta_get(md, meta.size, "dtype");
    m->system_prompt = meta_get(md, meta.size, "system_prompt");
    m->prompt_prefix = meta_get(md, meta.size, "prompt_prefix");
    m->prompt_postfix = meta_get(md, meta.size, "prompt_postfix");
    NEED(m->name && m->platform && m->toolkit && m->dtype, "missing model_name, "
         "target_platform, toolkit_version or dtype");
    NEED(m->system_prompt && m->prompt_prefix && m->prompt_postfix, "missing chat template");
    NEED(meta_int(&meta, "max_context_len", &m->max_context_len) && m->max_context_len > 0,
         "bad max_context_len");
    NEED(meta_int(&meta, "vocab_size", &m->vocab_size) && m->vocab_size > 256, "bad vocab_size");
    NEED(meta_int(&meta, "embed_size", &m->embed_size) && m->embed_size > 0 &&
         m->embed_size <= 65536, "bad embed_size");
    NEED(meta_int(&meta, "eos_token_id", &m->eos_id) && m->eos_id < m->vocab_size, "bad eos_token_id");
    if (!meta_int(&meta, "bos_token_id", &m->bos_id) || m->bos_id >= m->vocab_size)
        m->bos_id = -1;
    NEED(vocb.data && word.data && chan.data, "missing VOCB, WORD or CHAN section");

    /* compatibility: the model's toolkit family must not be newer than ours */
    int fam = sim_family_of(m->toolkit);
    if (fam == 0 || fam > SIM_FAMILY) {
        snprintf(err, errlen, "model '%s' was made by rkllm-toolkit %s, which needs a newer "
                 "runtime than this one (RKLLM SDK %s, ABI family %s)", path, m->toolkit,
                 SIM_RELEASE, RKLLM_SIM_FAMILY);
        goto fail;
    }

    /* VOCB */
    const uint8_t *p = vocb.data, *end = vocb.data + vocb.size;
    NEED(vocb.size >= 4 && le32(p) == (uint32_t)m->vocab_size, "VOCB size differs from vocab_size");
    p += 4;
    int V = m->vocab_size;
    m->tok = calloc(V, sizeof *m->tok);
    m->tok_len = calloc(V, 1);
    m->tok_special = calloc(V, 1);
    m->tok_word = malloc(V * sizeof *m->tok_word);
    uint32_t hcap = 1;
    while (hcap < (uint32_t)V * 2) hcap <<= 1;
    m->tok_hash = calloc(hcap, sizeof *m->tok_hash);
    m->tok_hash_mask = hcap - 1;
    NEED(m->tok && m->tok_len && m->tok_special && m->tok_word && m->tok_hash, "out of memory");
    for (int i = 0; i < V; i++) {
        NEED(end - p >= 2, "VOCB truncated");
        uint8_t flags = p[0], n = p[1];
        p += 2;
        NEED(end - p >= n && n > 0, "VOCB truncated or empty token");
        m->tok[i] = malloc(n + 1u);
        NEED(m->tok[i], "out of memory");
        memcpy(m->tok[i], p, n);
        m->tok[i][n] = 0;
        m->tok_len[i] = n;
        m->tok_special[i] = flags & 1;
        m->tok_word[i] = -1;
        if (n > m->max_tok_len)
            m->max_tok_len = n;
        p += n;
        if (token_lookup(m, m->tok[i], n) < 0) { /* first spelling wins */
            uint32_t h = hash_bytes(m->tok[i], n) & m->tok_hash_mask;
            while (m->tok_hash[h])
                h = (h + 1) & m->tok_hash_mask;
            m->tok_hash[h] = (uint32_t)i + 1;
        }
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        NEED(token_lookup(m, &c, 1) >= 0, "VOCB lacks single-byte tokens");
    }

    /* WORD */
    p = word.data, end = word.data + word.size;
    NEED(word.size >= 4, "WORD truncated");
    int W = (int)le32(p);
    p += 4;
    NEED(W > 1 && W < 16 * 1024 * 1024, "bad word count");
    m->n_words = W;
    m->word_off = malloc(W * sizeof *m->word_off);
    m->word_n = malloc(W);
    m->pieces = malloc(word.size); /* more than enough: every piece is 4 bytes of the section */
    NEED(m->word_off && m->word_n && m->pieces, "out of memory");
    uint32_t np = 0;
    for (int w = 0; w < W; w++) {
        NEED(end - p >= 1, "WORD truncated");
        uint8_t n = *p++;
        NEED(n > 0 && end - p >= 4 * n, "WORD truncated or empty word");
        m->word_off[w] = np;
        m->word_n[w] = n;
        for (int k = 0; k < n; k++, p += 4) {
            uint32_t t = le32(p);
            NEED(t < (uint32_t)V, "WORD names an unknown token");
            m->pieces[np++] = t;
        }
        if (n == 1 && m->tok_word[m->pieces[np - 1]] < 0)
            m->tok_word[m->pieces[np - 1]] = w;
    }
    NEED(m->word_n[0] == 1 && m->pieces[0] == (uint32_t)m->eos_id, "word 0 is not the end of text");
    /* a bare spelling ("river") counts as the spaced word (" river") for topicality */
    for (int w = 1; w < W; w++) {
        if (m->word_n[w] != 1)
            continue;
        uint32_t t = m->pieces[m->word_off[w]];
        if (m->tok_len[t] > 1 && m->tok[t][0] == ' ') {
            long bare = token_lookup(m, m->tok[t] + 1, m->tok_len[t] - 1u);
            if (bare >= 0 && m->tok_word[bare] < 0)
                m->tok_word[bare] = w;
        }
    }

    /* CHAN */
    p = chan.data, end = chan.data + chan.size;
    m->next_off = malloc(W * sizeof *m->next_off);
    m->next_n = malloc(W);
    m->next_word = malloc(chan.size / 2 + 4);
    m->next_logc = malloc(chan.size / 2 + 4); /* entries take 8 bytes there, 4 here */
    NEED(m->next_off && m->next_n && m->next_word && m->next_logc, "out of memory");
    uint32_t ne = 0;
    for (int w = 0; w < W; w++) {
        NEED(end - p >= 4, "CHAN truncated");
        uint32_t n = le32(p);
        p += 4;
        NEED(n <= SIM_MAX_NEXT && (uint64_t)(end - p) >= 8ull * n, "CHAN truncated");
        m->next_off[w] = ne;
        m->next_n[w] = (uint8_t)n;
        for (uint32_t k = 0; k < n; k++, p += 8) {
            uint32_t nw = le32(p), cnt = le32(p + 4);
            NEED(nw < (uint32_t)W && cnt > 0, "CHAN names an unknown word");
            m->next_word[ne] = nw;
            m->next_logc[ne] = logf((float)cnt);
            ne++;
        }
    }
    NEED(m->next_n[0] > 0, "the chain has no start");
    m->next_logc_rest = malloc((ne + 1) * sizeof *m->next_logc_rest);
    NEED(m->next_logc_rest, "out of memory");
    for (int w = 0; w < W; w++)
        for (int k = m->next_n[w] - 1; k >= 0; k--) {
            uint32_t i = m->next_off[w] + (uint32_t)k;
            float rest = k + 1 < m->next_n[w] ? m->next_logc_rest[i + 1] : m->next_logc[i];
            m->next_logc_rest[i] = m->next_logc[i] > rest ? m->next_logc[i] : rest;
        }
    free(buf);
    return m;
fail:
    free(buf);
    sim_model_free(m);
    return NULL;
}

int sim_lora_load(const sim_model *m, const char *path, sim_lora *out, char *err, size_t errlen)
{
    section meta = {0};
    uint32_t crc;
    uint8_t *buf = read_container(path, "LoRA adapter", &meta, NULL, NULL, NULL, &crc, err, errlen);
    if (!buf)
        return -1;
    const char *md = (const char *)meta.data;
    char *kind = meta_get(md, meta.size, "kind");
    char *base = meta_get(md, meta.size, "base_model");
    char *toolkit = meta_get(md, meta.size, "toolkit_version");
    char *boost = meta_get(md, meta.size, "boost");
    int rc = -1;
    if (!kind || strcmp(kind, "lora") != 0) {
        snprintf(err, errlen, "'%s' is not a simulated LoRA adapter (kind=%s)", path, kind ? kind : "?");
    } else if (!base || strcmp(base, m->name) != 0) {
        snprintf(err, errlen, "LoRA adapter '%s' is for model '%s', not for the loaded '%s'", path,
                 base ? base : "?", m->name);
    } else if (sim_family_of(toolkit) == 0 || sim_family_of(toolkit) > SIM_FAMILY) {
        snprintf(err, errlen, "LoRA adapter '%s' was made by rkllm-toolkit %s, which needs a newer "
                 "runtime than this one (RKLLM SDK %s)", path, toolkit ? toolkit : "?", SIM_RELEASE);
    } else if (!boost) {
        snprintf(err, errlen, "LoRA adapter '%s' is corrupt (no boost words)", path);
    } else if (!(out->boost = calloc(m->n_words, 1))) {
        snprintf(err, errlen, "out of memory");
    } else {
        /* mark every word whose text (without a leading space) is one of the boost words */
        for (char *tok = strtok(boost, " "); tok; tok = strtok(NULL, " ")) {
            for (int w = 1; w < m->n_words; w++) {
                if (m->word_n[w] != 1)
                    continue;
                const char *t = m->tok[m->pieces[m->word_off[w]]];
                if (*t == ' ')
                    t++;
                if (strcmp(t, tok) == 0)
                    out->boost[w] = 1;
            }
        }
        rc = 0;
    }
    free(kind); free(base); free(toolkit); free(boost); free(buf);
    return rc;
}
