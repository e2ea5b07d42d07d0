/* rkllm-cffi shim: finding a runtime library, checking it, and telling its release.
 *
 * Each candidate is checked before it is loaded (exists, is an ELF file for this machine),
 * its release is read from the version string inside the file, and after dlopen (which runs
 * no API function) its exported symbols are checked against that release. Only then is the
 * family's conversion table chosen; nothing calls into an ABI the shim does not know.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

const char *const rkshim_symbol_names[SYM_COUNT] = {
    "rkllm_createDefaultParam", "rkllm_init", "rkllm_load_lora", "rkllm_load_prompt_cache",
    "rkllm_release_prompt_cache", "rkllm_destroy", "rkllm_run", "rkllm_abort",
    "rkllm_is_running", "rkllm_clear_kv_cache", "rkllm_get_kv_cache_size",
    "rkllm_set_chat_template", "rkllm_set_function_tools", "rkllm_set_cross_attn_params",
};

#define SUPPORTED "1.1.0-1.1.4, 1.2.0, 1.2.1-1.2.3, 1.3.0"
#define VERSION_MARK "RKLLM SDK (version: "

#if defined(__aarch64__)
#define HOST_MACHINE EM_AARCH64
#define HOST_CLASS ELFCLASS64
#define HOST_ARCH "aarch64"
#elif defined(__arm__)
#define HOST_MACHINE EM_ARM
#define HOST_CLASS ELFCLASS32
#define HOST_ARCH "armhf"
#elif defined(__x86_64__)
#define HOST_MACHINE EM_X86_64
#define HOST_CLASS ELFCLASS64
#define HOST_ARCH "x86_64"
#elif defined(__i386__)
#define HOST_MACHINE EM_386
#define HOST_CLASS ELFCLASS32
#define HOST_ARCH "i386"
#elif defined(__riscv)
#define HOST_MACHINE EM_RISCV
#define HOST_CLASS (__riscv_xlen == 64 ? ELFCLASS64 : ELFCLASS32)
#define HOST_ARCH "riscv"
#else
#error "unknown host architecture"
#endif

static const char *machine_name(unsigned machine, unsigned cls) {
    switch (machine) {
    case EM_AARCH64: return "aarch64";
    case EM_ARM: return "armv7 (32-bit ARM)";
    case EM_X86_64: return "x86_64";
    case EM_386: return "i386";
    case EM_RISCV: return cls == ELFCLASS64 ? "riscv64" : "riscv32";
    default: return NULL;
    }
}

static void copy_text(char *dst, size_t n, const char *src) {
    size_t len = strlen(src);
    if (len >= n) len = n - 1;
    memcpy(dst, src, len);
    dst[len] = 0;
}

/* Family of a release or family name; NULL when unsupported. */
static const rkshim_family *family_of_release(const char *rel) {
    static const struct { const char *release; const rkshim_family *family; } table[] = {
        {"1.1.0", &rkshim_family_1_1_0}, {"1.1.1", &rkshim_family_1_1_0},
        {"1.1.2", &rkshim_family_1_1_0}, {"1.1.3", &rkshim_family_1_1_0},
        {"1.1.4", &rkshim_family_1_1_0}, {"1.2.0", &rkshim_family_1_2_0},
        {"1.2.1", &rkshim_family_1_2_1}, {"1.2.2", &rkshim_family_1_2_1},
        {"1.2.3", &rkshim_family_1_2_1}, {"1.3.0", &rkshim_family_1_3_0},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(rel, table[i].release) == 0) return table[i].family;
    return NULL;
}

/* The ELF header: class, machine and type of this host's shared libraries. */
static int check_header(const unsigned char *h, char *why, size_t n) {
    unsigned cls = h[EI_CLASS];
    unsigned machine = h[EI_DATA] == ELFDATA2MSB ? (unsigned)(h[18] << 8 | h[19])
                                                 : (unsigned)(h[18] | h[19] << 8);
    if (machine != HOST_MACHINE || cls != (unsigned)HOST_CLASS) {
        const char *name = machine_name(machine, cls);
        if (name)
            snprintf(why, n, "built for %s, this is %s", name, HOST_ARCH);
        else
            snprintf(why, n, "built for another machine (ELF machine %u), this is %s", machine,
                     HOST_ARCH);
        return -1;
    }
    unsigned type = h[EI_DATA] == ELFDATA2MSB ? (unsigned)(h[16] << 8 | h[17])
                                              : (unsigned)(h[16] | h[17] << 8);
    if (type != ET_DYN) {
        snprintf(why, n, "an ELF file but not a shared library");
        return -1;
    }
    if (h[EI_DATA] != (ELFDATA2LSB + (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__))) {
        snprintf(why, n, "an ELF file of the other byte order");
        return -1;
    }
    return 0;
}

/* Do the program headers, the segments they name (loaded and dynamic) and the section
 * headers lie inside the file? A truncated library would otherwise be mapped by dlopen and
 * die with SIGBUS on the first page past the end. 0, or -1 with a reason in why. */
static int check_extent(int fd, const ElfW(Ehdr) *e, off_t size, char *why, size_t n) {
    uint64_t fsize = (uint64_t)size;
    uint64_t ph_end = (uint64_t)e->e_phoff + (uint64_t)e->e_phnum * e->e_phentsize;
    uint64_t sh_end = (uint64_t)e->e_shoff + (uint64_t)e->e_shnum * e->e_shentsize;
    if (e->e_phentsize != sizeof(ElfW(Phdr)) || e->e_phnum == 0 || ph_end > fsize ||
        (e->e_shoff && sh_end > fsize)) {
        snprintf(why, n, "a truncated or damaged ELF file (%lld bytes; its headers reach "
                         "past the end)", (long long)size);
        return -1;
    }
    for (unsigned i = 0; i < e->e_phnum; i++) {
        ElfW(Phdr) ph;
        off_t at = (off_t)(e->e_phoff + (uint64_t)i * sizeof ph);
        if (pread(fd, &ph, sizeof ph, at) != (ssize_t)sizeof ph) {
            snprintf(why, n, "cannot read its program headers (%s)", strerror(errno));
            return -1;
        }
        if ((ph.p_type == PT_LOAD || ph.p_type == PT_DYNAMIC) &&
            (uint64_t)ph.p_offset + ph.p_filesz > fsize) {
            snprintf(why, n, "a truncated ELF file: it is %lld bytes, but its %s segment "
                             "reaches byte %llu",
                     (long long)size, ph.p_type == PT_LOAD ? "loadable" : "dynamic",
                     (unsigned long long)((uint64_t)ph.p_offset + ph.p_filesz));
            return -1;
        }
    }
    return 0;
}

/* 0 if path is a complete ELF shared library for this machine, else a reason in why. Opened
 * non-blocking and checked to be a regular file first: a FIFO or device never blocks us. */
static int check_elf(const char *path, char *why, size_t n) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, n, errno == ENOENT ? "no such file" : "cannot open (%s)", strerror(errno));
        return -1;
    }
    struct stat st;
    int rc = -1;
    unsigned char h[sizeof(ElfW(Ehdr))];
    if (fstat(fd, &st) != 0) {
        snprintf(why, n, "cannot stat (%s)", strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        snprintf(why, n, "not a regular file (%s)",
                 S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO"
                                                       : "a device or socket");
    } else if (pread(fd, h, sizeof h, 0) < 20 || memcmp(h, ELFMAG, SELFMAG) != 0) {
        snprintf(why, n, "not an ELF shared library");
    } else {
        rc = check_header(h, why, n);
        if (rc == 0) {
            if ((size_t)st.st_size < sizeof(ElfW(Ehdr))) {
                snprintf(why, n, "a truncated ELF file (%lld bytes)", (long long)st.st_size);
                rc = -1;
            } else {
                ElfW(Ehdr) e;
                memcpy(&e, h, sizeof e);
                rc = check_extent(fd, &e, st.st_size, why, n);
            }
        }
    }
    close(fd);
    return rc;
}

/* Looks for "RKLLM SDK (version: X.Y.Z" in the file; release gets "X.Y.Z" or "". */
static void scan_release(const char *path, char *release, size_t n) {
    release[0] = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
        close(fd);
        return;
    }
    size_t size = (size_t)st.st_size;
    const char *data = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (data == MAP_FAILED) return;
    const char *p = data, *end = data + size;
    size_t mark = strlen(VERSION_MARK);
    while ((p = memmem(p, (size_t)(end - p), VERSION_MARK, mark)) != NULL) {
        p += mark;
        const char *q = p;
        if (q < end && (*q == 'v' || *q == 'V')) q++;
        const char *start = q;
        int dots = 0;
        while (q < end && (isdigit((unsigned char)*q) || (*q == '.' && dots < 2))) {
            if (*q == '.') dots++;
            q++;
        }
        if (dots == 2 && isdigit((unsigned char)q[-1]) && (size_t)(q - start) < n) {
            memcpy(release, start, (size_t)(q - start));
            release[q - start] = 0;
            break;
        }
    }
    munmap((void *)data, size);
}

/* What the exported symbols say: 0 older than 1.1, 110, 120, or 121 (1.2.1 or 1.3.0). */
static int symbol_level(const rkshim_runtime *rt) {
    if (!rt->sym[SYM_createDefaultParam] || !rt->sym[SYM_run] || !rt->sym[SYM_destroy] ||
        !rt->sym[SYM_abort] || !rt->sym[SYM_is_running] || !rt->sym[SYM_load_prompt_cache])
        return 0;
    if (!rt->sym[SYM_set_chat_template]) return 110;
    if (!rt->sym[SYM_set_function_tools] || !rt->sym[SYM_get_kv_cache_size]) return 120;
    return 121;
}

static const char *level_text(int level) {
    switch (level) {
    case 0: return "lacks functions every release since 1.1.0 has (older than 1.1.0?)";
    case 110: return "has no rkllm_set_chat_template (a 1.1.x runtime)";
    case 120: return "has rkllm_set_chat_template but no rkllm_set_function_tools (a 1.2.0 runtime)";
    default: return "has rkllm_set_function_tools and rkllm_get_kv_cache_size (1.2.1 or later)";
    }
}

static int family_level(const rkshim_family *f) {
    if (f == &rkshim_family_1_1_0) return 110;
    if (f == &rkshim_family_1_2_0) return 120;
    return 121;
}

/* Chooses the family from the override, the version string and the symbols. */
static int choose_family(rkshim_runtime *rt, const char *abi) {
    int level = symbol_level(rt);
    const rkshim_family *found = rt->release[0] ? family_of_release(rt->release) : NULL;
    if (abi && abi[0]) {
        const rkshim_family *forced = family_of_release(abi);
        if (!forced)
            return rkshim_fail(RKSHIM_E_UNSUPPORTED,
                               "%s: RKLLM_ABI=%s is not a supported release (supported: %s)",
                               rt->path, abi, SUPPORTED);
        if (found && found != forced)
            return rkshim_fail(RKSHIM_E_UNSUPPORTED,
                               "%s: RKLLM_ABI=%s, but the library says it is release %s "
                               "(family %s); refusing to use the wrong ABI",
                               rt->path, abi, rt->release, found->name);
        if (family_level(forced) != level)
            return rkshim_fail(RKSHIM_E_UNSUPPORTED,
                               "%s: RKLLM_ABI=%s, but the library %s; refusing to use the "
                               "wrong ABI",
                               rt->path, abi, level_text(level));
        rt->family = forced;
        if (rt->release[0])
            snprintf(rt->detected_by, sizeof rt->detected_by,
                     "RKLLM_ABI=%s (the library says %s)", abi, rt->release);
        else
            snprintf(rt->detected_by, sizeof rt->detected_by, "RKLLM_ABI=%s", abi);
        return RKSHIM_OK;
    }
    if (rt->release[0]) {
        if (!found)
            return rkshim_fail(RKSHIM_E_UNSUPPORTED,
                               "%s: RKLLM runtime release %s is not supported (supported: %s); "
                               "if it keeps the ABI of a supported release, set RKLLM_ABI to "
                               "that release",
                               rt->path, rt->release, SUPPORTED);
        if (family_level(found) != level)
            return rkshim_fail(RKSHIM_E_UNSUPPORTED,
                               "%s: the library says it is release %s but it %s; refusing "
                               "an inconsistent runtime",
                               rt->path, rt->release, level_text(level));
        rt->family = found;
        snprintf(rt->detected_by, sizeof rt->detected_by, "version string");
        return RKSHIM_OK;
    }
    switch (level) {
    case 110:
        rt->family = &rkshim_family_1_1_0;
        break;
    case 120:
        rt->family = &rkshim_family_1_2_0;
        break;
    case 121:
        return rkshim_fail(RKSHIM_E_UNSUPPORTED,
                           "%s: no version string found and the library %s: 1.2.1-1.2.3 and "
                           "1.3.0 cannot be told apart by their symbols; set RKLLM_ABI to "
                           "the runtime's release (supported: %s)",
                           rt->path, level_text(level), SUPPORTED);
    default:
        return rkshim_fail(RKSHIM_E_UNSUPPORTED,
                           "%s: an RKLLM runtime that %s; supported releases: %s", rt->path,
                           level_text(level), SUPPORTED);
    }
    snprintf(rt->detected_by, sizeof rt->detected_by, "exported symbols (no version string)");
    return RKSHIM_OK;
}

/* Tries one candidate. Returns OK (rt filled), E_NOTFOUND (reason in why: try the next
 * one) or E_UNSUPPORTED (an RKLLM runtime we refuse: stop, error already set). */
static int try_candidate(const char *path, int by_loader, const char *abi, rkshim_runtime *rt,
                         char *why, size_t n) {
    memset(rt, 0, sizeof *rt);
    if (!by_loader && check_elf(path, why, n) != 0) return RKSHIM_E_NOTFOUND;
    dlerror();
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *err = dlerror();
        if (by_loader)
            snprintf(why, n, "not found by the dynamic loader");
        else
            snprintf(why, n, "cannot be loaded: %s", err ? err : "unknown dlopen error");
        return RKSHIM_E_NOTFOUND;
    }
    if (by_loader) {
        struct link_map *map = NULL;
        if (dlinfo(dl, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name && map->l_name[0])
            copy_text(rt->path, sizeof rt->path, map->l_name);
        else
            copy_text(rt->path, sizeof rt->path, path);
    } else {
        char *real = realpath(path, NULL);
        copy_text(rt->path, sizeof rt->path, real ? real : path);
        free(real);
    }
    for (int i = 0; i < SYM_COUNT; i++) rt->sym[i] = dlsym(dl, rkshim_symbol_names[i]);
    if (!rt->sym[SYM_init]) {
        snprintf(why, n, "not an RKLLM runtime (it does not export rkllm_init)");
        dlclose(dl);
        return RKSHIM_E_NOTFOUND;
    }
    rt->dl = dl;
    scan_release(rt->path, rt->release, sizeof rt->release);
    int rc = choose_family(rt, abi);
    if (rc != RKSHIM_OK) {
        /* keep it loaded: dlclose of a runtime that started threads is not safe */
        return rc;
    }
    const char *(*sim_info)(void) = (const char *(*)(void))dlsym(dl, "rkllm_sim_info");
    if (sim_info) {
        const char *info = sim_info();
        rt->is_sim = 1;
        snprintf(rt->sim_info, sizeof rt->sim_info, "%s", info ? info : "simulator");
    }
    return RKSHIM_OK;
}

int rkshim_runtime_open(const char *path, const char *path_source, const char *package_dir,
                        const char *abi, rkshim_runtime **out) {
    rkshim_clear_error();
    *out = NULL;
    rkshim_runtime *rt = calloc(1, sizeof *rt);
    if (!rt) return rkshim_fail(RKSHIM_E_NOMEM, "out of memory");

    struct { char path[4096]; char label[160]; int by_loader; } cand[8];
    int n_cand = 0;
    const char *env = getenv("RKLLM_LIBRARY");
    if (path && path[0]) {
        snprintf(cand[n_cand].path, sizeof cand[0].path, "%s", path);
        snprintf(cand[n_cand].label, sizeof cand[0].label, "%s",
                 path_source && path_source[0] ? path_source : "given path");
        cand[n_cand++].by_loader = 0;
    } else if (env && env[0]) {
        snprintf(cand[n_cand].path, sizeof cand[0].path, "%s", env);
        snprintf(cand[n_cand].label, sizeof cand[0].label, "RKLLM_LIBRARY");
        cand[n_cand++].by_loader = 0;
    } else {
        if (package_dir && package_dir[0]) {
            snprintf(cand[n_cand].path, sizeof cand[0].path, "%s/libs/%s/librkllmrt.so",
                     package_dir, HOST_ARCH);
            snprintf(cand[n_cand].label, sizeof cand[0].label, "bundled with rkllm-cffi");
            cand[n_cand++].by_loader = 0;
        }
        snprintf(cand[n_cand].path, sizeof cand[0].path, "librkllmrt.so");
        snprintf(cand[n_cand].label, sizeof cand[0].label, "dynamic loader search path");
        cand[n_cand++].by_loader = 1;
        const char *dirs[] = {"/usr/lib", "/usr/local/lib"};
        for (int i = 0; i < 2; i++) {
            snprintf(cand[n_cand].path, sizeof cand[0].path, "%s/librkllmrt.so", dirs[i]);
            snprintf(cand[n_cand].label, sizeof cand[0].label, "system");
            cand[n_cand++].by_loader = 0;
        }
    }

    char report[3072] = "";
    size_t used = 0;
    for (int i = 0; i < n_cand; i++) {
        char why[512] = "";
        int rc = try_candidate(cand[i].path, cand[i].by_loader, abi, rt, why, sizeof why);
        if (rc == RKSHIM_OK) {
            *out = rt;
            return RKSHIM_OK;
        }
        if (rc != RKSHIM_E_NOTFOUND) {
            free(rt);
            return rc;
        }
        int w = snprintf(report + used, sizeof report - used, "\n  - %s (%s): %s",
                         cand[i].path, cand[i].label, why);
        if (w > 0 && used + (size_t)w < sizeof report) used += (size_t)w;
    }
    free(rt);
    return rkshim_fail(RKSHIM_E_NOTFOUND, "no usable RKLLM runtime (librkllmrt.so) found; tried:%s",
                       report);
}

const char *rkshim_runtime_path(const rkshim_runtime *rt) { return rt->path; }
const char *rkshim_runtime_family(const rkshim_runtime *rt) { return rt->family->name; }
const char *rkshim_runtime_release(const rkshim_runtime *rt) { return rt->release; }
const char *rkshim_runtime_detected_by(const rkshim_runtime *rt) { return rt->detected_by; }
const char *rkshim_runtime_sim_info(const rkshim_runtime *rt) {
    return rt->is_sim ? rt->sim_info : NULL;
}

int rkshim_runtime_default_param(rkshim_runtime *rt, rkshim_param *out) {
    rkshim_clear_error();
    memset(out, 0, sizeof *out);
    if (!rt->sym[SYM_createDefaultParam])
        return rkshim_fail(RKSHIM_E_MISSING, "the runtime has no rkllm_createDefaultParam");
    return rt->family->default_param(rt, out);
}
