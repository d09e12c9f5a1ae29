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
 * SIGSEGV stays ours: sigaction()/signal()/sysv_signal() calls for it are recorded and the
 * recorded handler is called for real faults (with its mask and SA_RESETHAND); SIGSEGV is kept
 * out of signal masks, since a blocked fault signal would make the kernel kill the process at
 * its next CPUID. Unmasked: static or setuid binaries, children with a cleaned environment,
 * raw system calls (Go).
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
#include <errno.h>
#include <pthread.h>
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
static int (*real_openat)(int, const char *, int, ...);
static FILE *(*real_fopen)(const char *, const char *);

/* other libraries' constructors may open files before ours has run */
static void resolve(void) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
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
        /* EAX: AVX_VNNI, AVX512_BF16, AMX_FP16, AVX_IFMA */
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
        /* EDX: AVX_VNNI_INT8, AVX_NE_CONVERT, AVX_VNNI_INT16, AVX10 */
        r[3] &= ~((1u << 4) | (1u << 5) | (1u << 10) | (1u << 19));
    } else if (leaf == 0x24) {
        /* the AVX10 converged vector ISA leaf: nothing to report without AVX10 */
        r[0] = r[1] = r[2] = r[3] = 0;
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
    /* A real fault: hand it on as the kernel would have (its mask, SA_RESETHAND), or let it
     * kill the process as it would without us. */
    struct sigaction theirs = chained;
    int has_handler = (theirs.sa_flags & SA_SIGINFO) ? theirs.sa_sigaction != NULL
                                                     : (theirs.sa_handler != SIG_DFL && theirs.sa_handler != SIG_IGN);
    if (!has_handler) {
        struct sigaction dfl = {0};
        dfl.sa_handler = SIG_DFL;
        real_sigaction(SIGSEGV, &dfl, NULL); /* the instruction runs again and faults for real */
        return;
    }
    if (theirs.sa_flags & SA_RESETHAND) {
        memset(&chained, 0, sizeof chained);
        chained.sa_handler = SIG_DFL;
    }
    sigset_t blocked, before;
    blocked = theirs.sa_mask;
    sigdelset(&blocked, SIGSEGV); /* a blocked fault signal would kill the next CPUID */
    pthread_sigmask(SIG_BLOCK, &blocked, &before);
    if (theirs.sa_flags & SA_SIGINFO)
        theirs.sa_sigaction(sig, info, context);
    else
        theirs.sa_handler(sig);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
}

/* Others may install SIGSEGV handlers later (Python's faulthandler, pytest, gcc): ours stays,
 * theirs is called for real faults. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    resolve();
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = chained;
    if (act) chained = *act;
    return 0;
}

static sighandler_t set_chained(sighandler_t handler, int flags) {
    sighandler_t old = (chained.sa_flags & SA_SIGINFO) ? SIG_DFL : chained.sa_handler;
    memset(&chained, 0, sizeof chained);
    chained.sa_handler = handler;
    chained.sa_flags = flags;
    sigemptyset(&chained.sa_mask);
    return old;
}

/* signal() and its variants do not go through sigaction's symbol in glibc (gcc's cc1 installs
 * its crash handler with signal()): the same rule, with their semantics. */
sighandler_t signal(int sig, sighandler_t handler) {
    static sighandler_t (*real_signal)(int, sighandler_t);
    if (sig != SIGSEGV) {
        if (!real_signal) real_signal = (sighandler_t(*)(int, sighandler_t))dlsym(RTLD_NEXT, "signal");
        return real_signal(sig, handler);
    }
    return set_chained(handler, SA_RESTART); /* BSD semantics, glibc's signal() */
}

sighandler_t sysv_signal(int sig, sighandler_t handler) {
    static sighandler_t (*real_sysv)(int, sighandler_t);
    if (sig != SIGSEGV) {
        if (!real_sysv) real_sysv = (sighandler_t(*)(int, sighandler_t))dlsym(RTLD_NEXT, "sysv_signal");
        return real_sysv(sig, handler);
    }
    return set_chained(handler, SA_RESETHAND | SA_NODEFER);
}

/* A thread that blocks SIGSEGV (e.g. a worker started with every signal blocked) would be
 * killed by its first CPUID: the kernel forces a blocked fault signal to its default action.
 * Blocking a fault signal has no other effect, so it is left out of every mask. */
int pthread_sigmask(int how, const sigset_t *set, sigset_t *old) {
    static int (*real_mask)(int, const sigset_t *, sigset_t *);
    if (!real_mask) real_mask = (int (*)(int, const sigset_t *, sigset_t *))dlsym(RTLD_NEXT, "pthread_sigmask");
    if (set && how != SIG_UNBLOCK && sigismember(set, SIGSEGV) == 1) {
        sigset_t without = *set;
        sigdelset(&without, SIGSEGV);
        return real_mask(how, &without, old);
    }
    return real_mask(how, set, old);
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old) {
    return pthread_sigmask(how, set, old) == 0 ? 0 : (errno = EINVAL, -1);
}

static int is_cpuinfo(const char *path) { return path && strcmp(path, "/proc/cpuinfo") == 0; }


static int hidden_flag(const char *flag, size_t n) {
    static const char *prefixes[] = {"avx512", "amx", "avx_vnni", "avx10"};
    static const char *names[] = {"avx_ifma", "avx_ne_convert"};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (n >= strlen(prefixes[i]) && strncmp(flag, prefixes[i], strlen(prefixes[i])) == 0) return 1;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (n == strlen(names[i]) && strncmp(flag, names[i], n) == 0) return 1;
    return 0;
}

/* /proc/cpuinfo with the hidden features' flags removed, as a memfd (no strtok: the caller may
 * be inside its own strtok loop, or two threads may read cpuinfo at once). */
static int masked_cpuinfo(void) {
    int src = real_openat(AT_FDCWD, "/proc/cpuinfo", O_RDONLY | O_CLOEXEC);
    if (src < 0) return src;
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    ssize_t n;
    while (text && (n = read(src, text + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (len + 1 >= cap) {
            char *bigger = realloc(text, cap *= 2);
            if (!bigger) free(text);
            text = bigger;
        }
    }
    close(src);
    if (!text) return -1;
    text[len] = 0;
    int out = memfd_create("cpuinfo", MFD_CLOEXEC);
    int copy = out >= 0 ? dup(out) : -1;
    FILE *w = copy >= 0 ? fdopen(copy, "w") : NULL;
    if (!w) {
        if (copy >= 0) close(copy);
        if (out >= 0) close(out);
        free(text);
        return -1;
    }
    for (char *line = text; *line;) {
        char *end = strchr(line, '\n');
        size_t length = end ? (size_t)(end - line) : strlen(line);
        char *colon = memchr(line, ':', length);
        if (strncmp(line, "flags", 5) == 0 && colon) {
            fwrite(line, 1, (size_t)(colon - line + 1), w);
            for (char *flag = colon + 1; flag < line + length;) {
                while (flag < line + length && *flag == ' ') flag++;
                char *stop = flag;
                while (stop < line + length && *stop != ' ') stop++;
                if (stop > flag && !hidden_flag(flag, (size_t)(stop - flag))) fprintf(w, " %.*s", (int)(stop - flag), flag);
                flag = stop;
            }
        } else if (strncmp(line, "model name", 10) == 0) {
            fprintf(w, "%.*s%s", (int)length, line, MARK);
        } else {
            fwrite(line, 1, length, w);
        }
        if (!end) break;
        fputc('\n', w);
        line = end + 1;
    }
    fclose(w);
    free(text);
    lseek(out, 0, SEEK_SET);
    return out;
}

/* open()'s mode argument exists only with O_CREAT or O_TMPFILE (which includes O_DIRECTORY) */
#define MODE_ARGUMENT(flags, mode)                                   \
    do {                                                             \
        if (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE) { \
            va_list ap;                                              \
            va_start(ap, flags);                                     \
            mode = va_arg(ap, mode_t);                               \
            va_end(ap);                                              \
        }                                                            \
    } while (0)

int openat(int dir, const char *path, int flags, ...) {
    mode_t mode = 0;
    MODE_ARGUMENT(flags, mode);
    resolve();
    if (is_cpuinfo(path)) return masked_cpuinfo();
    return real_openat(dir, path, flags, mode);
}

int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    MODE_ARGUMENT(flags, mode);
    return openat(AT_FDCWD, path, flags, mode);
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat64(int dir, const char *path, int flags, ...) __attribute__((alias("openat")));

/* _FORTIFY_SOURCE builds call these instead of open()/openat() */
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));
int __openat_2(int dir, const char *path, int flags) { return openat(dir, path, flags); }
int __openat64_2(int dir, const char *path, int flags) __attribute__((alias("__openat_2")));

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
    /* SA_ONSTACK: a stack overflow still reaches the chained handler on its alternate stack */
    ours.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    real_sigaction(SIGSEGV, &ours, &chained);
    if (set_cpuid(0) != 0) {
        fprintf(stderr, "cpuid_mask: this CPU or kernel cannot make CPUID trap (arch_prctl ARCH_SET_CPUID: %m; "
                        "no cpuid_fault flag in /proc/cpuinfo?)\n");
        _exit(97);
    }
}
