/* cpuid_mask.so: run a process natively on this x86 CPU as if it had AVX2 but no AVX-512,
 * VNNI or AMX (the x86-avx2 profile's ISA: Intel before Ice Lake, AMD Zen 1-3).
 *
 * Why: onnxruntime (MLAS), numpy and OpenBLAS pick their kernels from CPUID. Hiding the newer
 * features makes them take their AVX2 paths - real AVX2 instructions at native speed, e.g.
 * MLAS's saturating VPMADDUBSW INT8 GEMM - so the x86-avx2 profile's arithmetic and relative
 * speeds can be measured on a VNNI machine (qemu's emulated Haswell gives the arithmetic only).
 *
 * How: arch_prctl(ARCH_SET_CPUID, 0) makes every CPUID instruction of this process (and of the
 * threads it starts; execve resets it, so children load this library again through LD_PRELOAD)
 * trap with SIGSEGV. The handler runs the real CPUID, clears the hidden feature bits and
 * resumes after the instruction. /proc/cpuinfo is answered with the same features removed from
 * its "flags" lines and " [CPUID masked: AVX2]" after each "model name", so every label that
 * names the CPU says what ran. Needs the kernel's CPUID faulting (the "cpuid_fault" flag: Intel
 * CPUs and KVM guests); without it the process exits with status 97 before main.
 *
 * Not hidden: glibc chose its string functions (memcpy, ...) before this library loads, from
 * the real CPUID; the CPU's microarchitecture (caches, ports) stays the real one. Timings are
 * "AVX2 code on this CPU", not those of an AVX2-only CPU model.
 *
 * Built and used by tools/avx2-only. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define MARK " [CPUID masked: AVX2]"

static struct sigaction chained; /* the SIGSEGV handler somebody else asked for (e.g. faulthandler) */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static FILE *(*real_fopen)(const char *, const char *);

/* other libraries' constructors may open files before ours has run */
static void resolve(void) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (!real_open) real_open = dlsym(RTLD_NEXT, "open");
    if (!real_openat) real_openat = dlsym(RTLD_NEXT, "openat");
    if (!real_fopen) real_fopen = dlsym(RTLD_NEXT, "fopen");
}

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

/* Feature bits hidden (Intel SDM vol. 2A, CPUID leaf 07H and 0DH). */
static void mask(unsigned leaf, unsigned sub, unsigned r[4]) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        /* ECX: AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: AVX_VNNI, AVX512_BF16, AMX_FP16, AVX_IFMA; EDX: AVX_VNNI_INT8, AVX_NE_CONVERT, AVX_VNNI_INT16 */
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
        r[3] &= ~((1u << 4) | (1u << 5) | (1u << 10));
    } else if (leaf == 0xd && sub == 0) {
        /* XCR0 bits the CPU supports: opmask, ZMM_Hi256, Hi16_ZMM, TILECFG, TILEDATA */
        r[0] &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned r[4], leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX];
        set_cpuid(1);
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
        set_cpuid(0);
        mask(leaf, sub, r);
        g[REG_RAX] = r[0];
        g[REG_RBX] = r[1];
        g[REG_RCX] = r[2];
        g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        return;
    }
    /* a real fault: hand it on, or let it kill the process as it would without us */
    if ((chained.sa_flags & SA_SIGINFO) && chained.sa_sigaction) {
        chained.sa_sigaction(sig, info, context);
        return;
    }
    if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN && chained.sa_handler) {
        chained.sa_handler(sig);
        return;
    }
    struct sigaction dfl = {0};
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL); /* the instruction runs again and faults for real */
}

/* Others may install SIGSEGV handlers later (Python's faulthandler, pytest): ours stays, theirs
 * is called for real faults. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    resolve();
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = chained;
    if (act) chained = *act;
    return 0;
}

/* signal() does not go through sigaction's symbol in glibc (gcc's cc1 installs its crash
 * handler this way): the same rule. */
sighandler_t signal(int sig, sighandler_t handler) {
    static sighandler_t (*real_signal)(int, sighandler_t);
    if (!real_signal) real_signal = (sighandler_t(*)(int, sighandler_t))dlsym(RTLD_NEXT, "signal");
    if (sig != SIGSEGV) return real_signal(sig, handler);
    sighandler_t old = (chained.sa_flags & SA_SIGINFO) ? SIG_DFL : chained.sa_handler;
    memset(&chained, 0, sizeof chained);
    chained.sa_handler = handler;
    sigemptyset(&chained.sa_mask);
    return old;
}
sighandler_t sysv_signal(int sig, sighandler_t handler) __attribute__((alias("signal")));

static int is_cpuinfo(const char *path) { return path && strcmp(path, "/proc/cpuinfo") == 0; }


/* /proc/cpuinfo with the hidden features' flags removed, as a memfd. */
static int masked_cpuinfo(void) {
    int src = real_open("/proc/cpuinfo", O_RDONLY);
    if (src < 0) return src;
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    ssize_t n;
    while (text && (n = read(src, text + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (len + 1 >= cap) text = realloc(text, cap *= 2);
    }
    close(src);
    if (!text) return -1;
    text[len] = 0;
    int out = memfd_create("cpuinfo", MFD_CLOEXEC);
    FILE *w = out >= 0 ? fdopen(dup(out), "w") : NULL;
    if (!w) {
        free(text);
        return out;
    }
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        /* strtok skips empty lines: cpuinfo separates processors by one */
        int blank_after = line[strlen(line) + 1] == '\n';
        if (strncmp(line, "flags", 5) == 0 && strchr(line, ':')) {
            char *colon = strchr(line, ':');
            fwrite(line, 1, (size_t)(colon - line + 1), w);
            for (char *flag = strtok_r(colon + 1, " ", &colon); flag; flag = strtok_r(NULL, " ", &colon)) {
                if (strncmp(flag, "avx512", 6) == 0 || strncmp(flag, "amx", 3) == 0 || strncmp(flag, "avx_vnni", 8) == 0 ||
                    strcmp(flag, "avx_ifma") == 0 || strcmp(flag, "avx_ne_convert") == 0)
                    continue;
                fprintf(w, " %s", flag);
            }
            fputc('\n', w);
        } else if (strncmp(line, "model name", 10) == 0) {
            fprintf(w, "%s%s\n", line, MARK);
        } else {
            fprintf(w, "%s\n", line);
        }
        if (blank_after) fputc('\n', w);
    }
    fclose(w);
    free(text);
    lseek(out, 0, SEEK_SET);
    return out;
}

int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    resolve();
    if (is_cpuinfo(path)) return masked_cpuinfo();
    return real_open(path, flags, mode);
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dir, const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    resolve();
    if (is_cpuinfo(path)) return masked_cpuinfo();
    return real_openat(dir, path, flags, mode);
}
int openat64(int dir, const char *path, int flags, ...) __attribute__((alias("openat")));

FILE *fopen(const char *path, const char *how) {
    resolve();
    if (is_cpuinfo(path)) {
        int fd = masked_cpuinfo();
        return fd < 0 ? NULL : fdopen(fd, "r");
    }
    return real_fopen(path, how);
}
FILE *fopen64(const char *path, const char *how) __attribute__((alias("fopen")));

__attribute__((constructor)) static void install(void) {
    resolve();
    struct sigaction ours = {0};
    ours.sa_sigaction = on_segv;
    ours.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    real_sigaction(SIGSEGV, &ours, &chained);
    if (set_cpuid(0) != 0) {
        fprintf(stderr, "cpuid_mask: this CPU or kernel cannot make CPUID trap (arch_prctl ARCH_SET_CPUID: %m; "
                        "no cpuid_fault flag in /proc/cpuinfo?)\n");
        _exit(97);
    }
}
