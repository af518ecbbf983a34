/*
 * probe.c - in-sandbox test helper for runbox.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -pthread -o probe probe.c
 *
 * argv[1] selects a subcommand (see usage() below).  Unless noted, a
 * subcommand prints at most one line on stdout.  Bad usage or an unknown
 * subcommand prints a message on stderr and exits 64.
 *
 * Some subcommands deliberately attempt privileged or destructive operations
 * (mount, umount /proc, ptrace pid 1, kill(-1), forkbomb, sysrq, ...).  They
 * are meant to run INSIDE the sandbox only.  Never run them on a host as root.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif
#ifndef SYS_userfaultfd
#define SYS_userfaultfd 323
#endif
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef __WALL
#define __WALL 0x40000000
#endif

#define EXIT_USAGE 64

static const char *prog = "probe";

/* ------------------------------------------------------------------------ */
/* errno names                                                              */

static const char *errno_name(int e)
{
    static char buf[32];
    switch (e) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case E2BIG: return "E2BIG";
    case ENOEXEC: return "ENOEXEC";
    case EBADF: return "EBADF";
    case ECHILD: return "ECHILD";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case ENOTBLK: return "ENOTBLK";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case EXDEV: return "EXDEV";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case ENOTTY: return "ENOTTY";
    case ETXTBSY: return "ETXTBSY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case EMLINK: return "EMLINK";
    case EPIPE: return "EPIPE";
    case EDOM: return "EDOM";
    case ERANGE: return "ERANGE";
    case EDEADLK: return "EDEADLK";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ENOLCK: return "ENOLCK";
    case ENOSYS: return "ENOSYS";
    case ENOTEMPTY: return "ENOTEMPTY";
    case ELOOP: return "ELOOP";
    case ENOMSG: return "ENOMSG";
    case EIDRM: return "EIDRM";
    case ENODATA: return "ENODATA";
    case ETIME: return "ETIME";
    case EPROTO: return "EPROTO";
    case EBADMSG: return "EBADMSG";
    case EOVERFLOW: return "EOVERFLOW";
    case EILSEQ: return "EILSEQ";
    case EUSERS: return "EUSERS";
    case ENOTSOCK: return "ENOTSOCK";
    case EDESTADDRREQ: return "EDESTADDRREQ";
    case EMSGSIZE: return "EMSGSIZE";
    case EPROTOTYPE: return "EPROTOTYPE";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EPFNOSUPPORT: return "EPFNOSUPPORT";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case ENETDOWN: return "ENETDOWN";
    case ENETUNREACH: return "ENETUNREACH";
    case ENETRESET: return "ENETRESET";
    case ECONNABORTED: return "ECONNABORTED";
    case ECONNRESET: return "ECONNRESET";
    case ENOBUFS: return "ENOBUFS";
    case EISCONN: return "EISCONN";
    case ENOTCONN: return "ENOTCONN";
    case ESHUTDOWN: return "ESHUTDOWN";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EHOSTDOWN: return "EHOSTDOWN";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case EALREADY: return "EALREADY";
    case EINPROGRESS: return "EINPROGRESS";
    case ESTALE: return "ESTALE";
    case EDQUOT: return "EDQUOT";
    case ECANCELED: return "ECANCELED";
    case ENOMEDIUM: return "ENOMEDIUM";
    case EMEDIUMTYPE: return "EMEDIUMTYPE";
    case ENOKEY: return "ENOKEY";
    case EKEYEXPIRED: return "EKEYEXPIRED";
    case EKEYREVOKED: return "EKEYREVOKED";
    case EKEYREJECTED: return "EKEYREJECTED";
    case EOWNERDEAD: return "EOWNERDEAD";
    case ENOTRECOVERABLE: return "ENOTRECOVERABLE";
    default:
        snprintf(buf, sizeof buf, "E%d", e);
        return buf;
    }
}

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */

static void usage(void)
{
    fprintf(stderr,
        "usage: %s SUBCOMMAND [ARGS...]\n"
        "  true | exit N | echo ARGS... | signal N\n"
        "  sleep SECS | spin SECS | spin-threads N SECS\n"
        "  memhog MIB | forkbomb | zombies N | daemon | stackoverflow\n"
        "  syscall NAME | status | fds | write-bytes N [PATH]\n"
        "  hostname | uid | rlimits\n"
        "  sigqueue-hoard SECS | sigqueue | pty-hoard SECS | pty\n"
        "  fcntl-locks N PATH | flock-hold PATH SECS | inotify DIR SECS\n",
        prog);
}

static void die_usage(const char *what, const char *arg)
{
    fprintf(stderr, "%s: %s: '%s'\n", prog, what, arg);
    usage();
    exit(EXIT_USAGE);
}

static void need_args(int argc, int n, const char *cmd)
{
    if (argc < n)
        die_usage("missing argument for", cmd);
}

static long long parse_ll(const char *s, long long min, long long max)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        die_usage("invalid integer", s);
    return v;
}

static unsigned long long parse_ull(const char *s)
{
    char *end;
    if (*s == '-')
        die_usage("invalid non-negative integer", s);
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end)
        die_usage("invalid non-negative integer", s);
    return v;
}

static double parse_secs(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0)
        die_usage("invalid seconds value", s);
    return v;
}

static void sleep_secs(double secs)
{
    struct timespec ts, rem;
    ts.tv_sec = (time_t)secs;
    ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_nsec = 999999999L;
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR)
        ts = rem;
}

static double clock_secs(clockid_t clk)
{
    struct timespec ts;
    if (clock_gettime(clk, &ts) != 0) {
        fprintf(stderr, "%s: clock_gettime: %s\n", prog, errno_name(errno));
        exit(1);
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void out_line(const char *line)
{
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

/* ------------------------------------------------------------------------ */
/* simple subcommands                                                       */

static int cmd_echo(int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        if (i > 2)
            fputc(' ', stdout);
        fputs(argv[i], stdout);
    }
    fputc('\n', stdout);
    fflush(stdout);
    return 0;
}

static int cmd_signal(int argc, char **argv)
{
    need_args(argc, 3, "signal");
    int sig = (int)parse_ll(argv[2], 1, 64);
    /* Make sure the default action applies even if the runtime left the
     * signal ignored or blocked. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    signal(sig, SIG_DFL);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    fflush(stdout);
    raise(sig);
    return 1;
}

static int cmd_spin(int argc, char **argv)
{
    need_args(argc, 3, "spin");
    double secs = parse_secs(argv[2]);
    volatile unsigned long sink = 0;
    while (clock_secs(CLOCK_PROCESS_CPUTIME_ID) < secs) {
        for (int i = 0; i < 10000; i++)
            sink += (unsigned long)i;
    }
    (void)sink;
    return 0;
}

static void *spin_thread(void *arg)
{
    double secs = *(const double *)arg;
    volatile unsigned long sink = 0;
    while (clock_secs(CLOCK_THREAD_CPUTIME_ID) < secs) {
        for (int i = 0; i < 10000; i++)
            sink += (unsigned long)i;
    }
    (void)sink;
    return NULL;
}

static int cmd_spin_threads(int argc, char **argv)
{
    need_args(argc, 4, "spin-threads");
    long n = (long)parse_ll(argv[2], 1, 4096);
    static double secs;
    secs = parse_secs(argv[3]);
    pthread_t *t = calloc((size_t)n, sizeof *t);
    if (!t) {
        fprintf(stderr, "%s: spin-threads: out of memory\n", prog);
        return 1;
    }
    long started = 0;
    int rc = 0;
    for (long i = 0; i < n; i++) {
        int e = pthread_create(&t[i], NULL, spin_thread, &secs);
        if (e != 0) {
            fprintf(stderr, "%s: spin-threads: pthread_create #%ld: %s\n",
                    prog, i, errno_name(e));
            rc = 1;
            break;
        }
        started++;
    }
    for (long i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    free(t);
    return rc;
}

static int cmd_memhog(int argc, char **argv)
{
    need_args(argc, 3, "memhog");
    unsigned long long mib = parse_ull(argv[2]);
    const size_t chunk = 1024 * 1024;
    for (unsigned long long i = 0; i < mib; i++) {
        char *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "%s: memhog: mmap failed after %llu MiB: %s\n",
                    prog, i, errno_name(errno));
            return 1;
        }
        for (size_t off = 0; off < chunk; off += 4096)
            ((volatile char *)p)[off] = 1;
    }
    printf("allocated %llu\n", mib);
    fflush(stdout);
    return 0;
}

static int cmd_forkbomb(void)
{
    unsigned long successes = 0, failures = 0;
    int last_errno = 0;
    fflush(stdout);
    fflush(stderr);
    while (failures < 50 && successes < 100000) {
        pid_t pid = fork();
        if (pid == 0) {
            sleep(1);
            _exit(0);
        }
        if (pid < 0) {
            last_errno = errno;
            failures++;
        } else {
            successes++;
            failures = 0;
        }
    }
    printf("forks=%lu failures=%lu errno=%s\n", successes, failures,
           errno_name(last_errno));
    fflush(stdout);
    while (wait(NULL) > 0 || errno == EINTR)
        ;
    return 0;
}

static int cmd_zombies(int argc, char **argv)
{
    need_args(argc, 3, "zombies");
    long n = (long)parse_ll(argv[2], 0, 1000000);
    fflush(stdout);
    fflush(stderr);
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid < 0) {
            fprintf(stderr, "%s: zombies: fork #%ld: %s\n", prog, i,
                    errno_name(errno));
            return 1;
        }
    }
    sleep_secs(0.2);
    return 0;
}

/* Recursion bounded only by a depth no stack holds (2^40 frames of 1 KiB): ends in SIGSEGV at
 * the stack limit. */
static int recurse(volatile char *prev, long depth)
{
    volatile char frame[1024];
    frame[0] = (char)depth;
    frame[1023] = prev ? prev[0] : 0;
    if (depth > (1L << 40))
        return frame[0];
    return recurse(frame, depth + 1) + frame[1023];
}

static int cmd_stackoverflow(void)
{
    return recurse(NULL, 0);
}

static int cmd_daemon(void)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: daemon: fork: %s\n", prog, errno_name(errno));
        return 1;
    }
    if (pid == 0) {
        pid_t gc = fork();
        if (gc == 0) {
            setsid();
            sleep_secs(3600);
            _exit(0);
        }
        _exit(gc < 0 ? 1 : 0);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return 0;
}

static int cmd_status(void)
{
    static const char *keys[] = {
        "Uid:", "Gid:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:",
        "CapAmb:", "NoNewPrivs:", "Seccomp:",
    };
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        fprintf(stderr, "%s: status: open /proc/self/status: %s\n", prog,
                errno_name(errno));
        return 1;
    }
    char *lines[sizeof keys / sizeof keys[0]] = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] == '\n')
            line[len - 1] = '\0';
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            if (!lines[k] && strncmp(line, keys[k], strlen(keys[k])) == 0)
                lines[k] = strdup(line);
        }
    }
    free(line);
    fclose(f);
    int rc = 0;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        if (lines[k]) {
            puts(lines[k]);
            free(lines[k]);
        } else {
            fprintf(stderr, "%s: status: no %s line\n", prog, keys[k]);
            rc = 1;
        }
    }
    fflush(stdout);
    return rc;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int cmd_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        fprintf(stderr, "%s: fds: opendir /proc/self/fd: %s\n", prog,
                errno_name(errno));
        return 1;
    }
    int self = dirfd(d);
    size_t n = 0, cap = 64;
    int *fds = malloc(cap * sizeof *fds);
    struct dirent *de;
    while (fds && (de = readdir(d)) != NULL) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        int fd = atoi(de->d_name);
        if (fd == self)
            continue;
        if (n == cap) {
            cap *= 2;
            int *nf = realloc(fds, cap * sizeof *fds);
            if (!nf) {
                free(fds);
                fds = NULL;
                break;
            }
            fds = nf;
        }
        fds[n++] = fd;
    }
    closedir(d);
    if (!fds) {
        fprintf(stderr, "%s: fds: out of memory\n", prog);
        return 1;
    }
    qsort(fds, n, sizeof *fds, cmp_int);
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", fds[i]);
    putchar('\n');
    fflush(stdout);
    free(fds);
    return 0;
}

static int cmd_write_bytes(int argc, char **argv)
{
    need_args(argc, 3, "write-bytes");
    unsigned long long total = parse_ull(argv[2]);
    /* Report errors instead of dying from them (pipe closed, RLIMIT_FSIZE). */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    int fd = 1;
    if (argc >= 4) {
        fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            fprintf(stderr, "error %s after 0\n", errno_name(errno));
            return 1;
        }
    }
    static char buf[65536];
    memset(buf, 'x', sizeof buf);
    unsigned long long done = 0;
    while (done < total) {
        size_t want = sizeof buf;
        if (total - done < want)
            want = (size_t)(total - done);
        ssize_t w = write(fd, buf, want);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "error %s after %llu\n", errno_name(errno), done);
            return 1;
        }
        if (w == 0) {
            fprintf(stderr, "error %s after %llu\n", errno_name(EIO), done);
            return 1;
        }
        done += (unsigned long long)w;
    }
    if (fd != 1 && close(fd) != 0) {
        fprintf(stderr, "error %s after %llu\n", errno_name(errno), done);
        return 1;
    }
    return 0;
}

static int cmd_hostname(void)
{
    struct utsname u;
    if (uname(&u) != 0) {
        fprintf(stderr, "%s: uname: %s\n", prog, errno_name(errno));
        return 1;
    }
    out_line(u.nodename);
    return 0;
}

static int cmd_uid(void)
{
    printf("uid=%u gid=%u euid=%u\n", (unsigned)getuid(), (unsigned)getgid(),
           (unsigned)geteuid());
    fflush(stdout);
    return 0;
}

static const char *rlim_str(int res, char *buf, size_t len)
{
    struct rlimit rl;
    if (getrlimit(res, &rl) != 0)
        snprintf(buf, len, "%s", errno_name(errno));
    else if (rl.rlim_cur == RLIM_INFINITY)
        snprintf(buf, len, "inf");
    else
        snprintf(buf, len, "%llu", (unsigned long long)rl.rlim_cur);
    return buf;
}

static int cmd_rlimits(void)
{
    char a[32], b[32], c[32];
    printf("core=%s nofile=%s fsize=%s\n",
           rlim_str(RLIMIT_CORE, a, sizeof a),
           rlim_str(RLIMIT_NOFILE, b, sizeof b),
           rlim_str(RLIMIT_FSIZE, c, sizeof c));
    fflush(stdout);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* syscall NAME: each returns 0 on success or an errno value                */

static int ret_errno(long r)
{
    return r < 0 ? errno : 0;
}

/* Wait for a fork-like child created by a raw clone/clone3. */
static int reap(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, __WALL) < 0) {
        if (errno != EINTR)
            return 0; /* child was created; ignore reaping problems */
    }
    return 0;
}

static int sc_keyctl(void)
{
    /* KEYCTL_GET_KEYRING_ID = 0, KEY_SPEC_SESSION_KEYRING = -3, create = 0 */
    return ret_errno(syscall(SYS_keyctl, 0L, -3L, 0L));
}

static int sc_add_key(void)
{
    /* KEY_SPEC_PROCESS_KEYRING = -2: the key dies with this process. */
    return ret_errno(syscall(SYS_add_key, "user", "runbox-probe", "x",
                             (size_t)1, -2L));
}

static int sc_unshare(int flags)
{
    return ret_errno(unshare(flags));
}

static int sc_clone_newuser(void)
{
    fflush(stdout);
    fflush(stderr);
    long r = syscall(SYS_clone, (unsigned long)(CLONE_NEWUSER | SIGCHLD),
                     0UL, 0UL, 0UL, 0UL);
    if (r == 0)
        _exit(0);
    if (r < 0)
        return errno;
    return reap((pid_t)r);
}

struct probe_clone_args { /* struct clone_args, CLONE_ARGS_SIZE_VER0 = 64 */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack,
        stack_size, tls;
};

static int sc_clone3(void)
{
    struct probe_clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.exit_signal = SIGCHLD;
    fflush(stdout);
    fflush(stderr);
    long r = syscall(SYS_clone3, &ca, (size_t)64);
    if (r == 0)
        _exit(0);
    if (r < 0)
        return errno;
    return reap((pid_t)r);
}

static int sc_mount(void)
{
    struct stat st;
    const char *target = (stat("/mnt", &st) == 0 && S_ISDIR(st.st_mode))
                             ? "/mnt" : "/tmp";
    if (mount("runbox-probe", target, "tmpfs", MS_NOSUID | MS_NODEV,
              "size=1m") != 0)
        return errno;
    umount2(target, MNT_DETACH);
    return 0;
}

static int sc_umount(void)
{
    return ret_errno(umount2("/proc", MNT_DETACH));
}

static int sc_ptrace(void)
{
    if (ptrace(PTRACE_ATTACH, (pid_t)1, NULL, NULL) != 0)
        return errno;
    int st;
    while (waitpid(1, &st, __WALL) < 0 && errno == EINTR)
        ;
    ptrace(PTRACE_DETACH, (pid_t)1, NULL, NULL);
    return 0;
}

static int sc_bpf(void)
{
    static const uint64_t garbage[2] = {0xffffffffffffffffULL,
                                        0xdeadbeefdeadbeefULL};
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insn_cnt = 2;
    attr.insns = (uint64_t)(uintptr_t)garbage;
    attr.license = (uint64_t)(uintptr_t)"GPL";
    long r = syscall(SYS_bpf, (long)BPF_PROG_LOAD, &attr, sizeof attr);
    if (r < 0)
        return errno;
    close((int)r);
    return 0;
}

static int sc_perf_event_open(void)
{
    struct perf_event_attr pa;
    memset(&pa, 0, sizeof pa);
    pa.type = PERF_TYPE_SOFTWARE;
    pa.size = sizeof pa;
    pa.config = PERF_COUNT_SW_CPU_CLOCK;
    pa.disabled = 1;
    pa.exclude_kernel = 1;
    pa.exclude_hv = 1;
    long r = syscall(SYS_perf_event_open, &pa, 0L, -1L, -1L,
                     (unsigned long)PERF_FLAG_FD_CLOEXEC);
    if (r < 0)
        return errno;
    close((int)r);
    return 0;
}

static int sc_io_uring_setup(void)
{
    unsigned char params[120]; /* struct io_uring_params */
    memset(params, 0, sizeof params);
    long r = syscall(SYS_io_uring_setup, 1U, params);
    if (r < 0)
        return errno;
    close((int)r);
    return 0;
}

static int sc_userfaultfd(void)
{
    long r = syscall(SYS_userfaultfd, (long)(O_CLOEXEC | O_NONBLOCK));
    if (r < 0)
        return errno;
    close((int)r);
    return 0;
}

static int sc_setns(void)
{
    int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int e = ret_errno(setns(fd, CLONE_NEWNET));
    close(fd);
    return e;
}

static int sc_kexec_load(void)
{
    /* nr_segments > KEXEC_SEGMENT_MAX: EPERM without CAP_SYS_BOOT,
     * EINVAL with it; never loads or unloads anything. */
    return ret_errno(syscall(SYS_kexec_load, 0UL, 0xffffUL, NULL, 0UL));
}

static int sc_init_module(void)
{
    static const char garbage[64] = "this is not an ELF module";
    return ret_errno(syscall(SYS_init_module, garbage, sizeof garbage, ""));
}

static int sc_chroot(void)
{
    return ret_errno(chroot("/"));
}

static int sc_sethostname(void)
{
    /* Re-set the current name so that success changes nothing. */
    struct utsname u;
    if (uname(&u) != 0)
        return errno;
    return ret_errno(sethostname(u.nodename, strlen(u.nodename)));
}

static int sc_socket(int domain)
{
    int fd = socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

static int sc_connect_out(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return errno;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(80);
    sa.sin_addr.s_addr = htonl(0x01010101); /* 1.1.1.1 */
    int e = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        e = errno;
        if (e == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int r;
            while ((r = poll(&p, 1, 1000)) < 0 && errno == EINTR)
                ;
            if (r < 0) {
                e = errno;
            } else if (r == 0) {
                e = ETIMEDOUT;
            } else {
                socklen_t l = sizeof e;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) != 0)
                    e = errno;
            }
        }
    }
    close(fd);
    return e;
}

static int sc_tiocsti(void)
{
    char c = 'x';
    return ret_errno(ioctl(0, TIOCSTI, &c));
}

static int sc_x32(void)
{
    return ret_errno(syscall(0x40000000L | 39L));
}

static int sc_getpid(void)
{
    return ret_errno(syscall(SYS_getpid));
}

static int sc_sysrq(void)
{
    int fd = open("/proc/sysrq-trigger", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int e = 0;
    if (write(fd, "h", 1) != 1)
        e = errno ? errno : EIO;
    close(fd);
    return e;
}

static int sc_write_sys(void)
{
    /* Only open for writing; never write, so success changes nothing. */
    static const char *paths[] = {
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/kernel/uevent_helper",
        "/sys/kernel/mm/ksm/run",
        "/sys/power/state",
    };
    int e = ENOENT;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        int fd = open(paths[i], O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        e = errno;
        if (e != ENOENT)
            return e;
    }
    return e;
}

static int sc_kill_all(void)
{
    return ret_errno(kill(-1, SIGKILL));
}

struct syscall_test {
    const char *name;
    int (*fn)(void);
};

static int sc_unshare_user(void) { return sc_unshare(CLONE_NEWUSER); }
static int sc_unshare_net(void) { return sc_unshare(CLONE_NEWNET); }
static int sc_unshare_ns(void) { return sc_unshare(CLONE_NEWNS); }
static int sc_socket_vsock(void) { return sc_socket(AF_VSOCK); }
static int sc_socket_inet(void) { return sc_socket(AF_INET); }

static int sc_socket_uevent(void)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, 15 /* KOBJECT_UEVENT */);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

static int sc_socket_netlink_route(void)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, 0 /* ROUTE */);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

static int sc_io_setup(void)
{
    unsigned long ctx = 0;
    if (syscall(SYS_io_setup, 1, &ctx) < 0)
        return errno;
    syscall(SYS_io_destroy, ctx);
    return 0;
}

/* A read lease on a file of the image's shared /usr (needs ownership: uid 0). */
static int sc_setlease(void)
{
    int fd = open("/usr/bin/env", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int e = fcntl(fd, F_SETLEASE, F_RDLCK) < 0 ? errno : 0;
    close(fd);
    return e;
}

static const struct syscall_test syscall_tests[] = {
    {"socket-uevent", sc_socket_uevent},
    {"socket-netlink-route", sc_socket_netlink_route},
    {"io_setup", sc_io_setup},
    {"setlease", sc_setlease},
    {"keyctl", sc_keyctl},
    {"add_key", sc_add_key},
    {"unshare-user", sc_unshare_user},
    {"unshare-net", sc_unshare_net},
    {"unshare-ns", sc_unshare_ns},
    {"clone-newuser", sc_clone_newuser},
    {"clone3", sc_clone3},
    {"mount", sc_mount},
    {"umount", sc_umount},
    {"ptrace", sc_ptrace},
    {"bpf", sc_bpf},
    {"perf_event_open", sc_perf_event_open},
    {"io_uring_setup", sc_io_uring_setup},
    {"userfaultfd", sc_userfaultfd},
    {"setns", sc_setns},
    {"kexec_load", sc_kexec_load},
    {"init_module", sc_init_module},
    {"chroot", sc_chroot},
    {"sethostname", sc_sethostname},
    {"socket-vsock", sc_socket_vsock},
    {"socket-inet", sc_socket_inet},
    {"connect-out", sc_connect_out},
    {"tiocsti", sc_tiocsti},
    {"x32", sc_x32},
    {"getpid", sc_getpid},
    {"sysrq", sc_sysrq},
    {"write-sys", sc_write_sys},
    {"kill-all", sc_kill_all},
};

static int cmd_syscall(int argc, char **argv)
{
    need_args(argc, 3, "syscall");
    for (size_t i = 0; i < sizeof syscall_tests / sizeof syscall_tests[0];
         i++) {
        if (strcmp(argv[2], syscall_tests[i].name) == 0) {
            errno = 0;
            int e = syscall_tests[i].fn();
            printf("%s %s\n", argv[2], e ? errno_name(e) : "ok");
            fflush(stdout);
            return 0;
        }
    }
    fprintf(stderr, "%s: syscall: unknown name '%s'; known:", prog, argv[2]);
    for (size_t i = 0; i < sizeof syscall_tests / sizeof syscall_tests[0];
         i++)
        fprintf(stderr, " %s", syscall_tests[i].name);
    fputc('\n', stderr);
    return EXIT_USAGE;
}

/* ------------------------------------------------------------------------ */
/* neighbours: per-uid budgets, system-wide tables, shared inodes           */

/* Queues SIGRTMIN (blocked) to itself until sigqueue fails; prints "hoarded N ERRNO",
 * then holds them for SECS. */
static int cmd_sigqueue_hoard(int argc, char **argv)
{
    need_args(argc, 3, "sigqueue-hoard");
    double secs = parse_secs(argv[2]);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &set, NULL);
    union sigval v = {0};
    long n = 0;
    int e = 0;
    for (;;) {
        if (sigqueue(getpid(), SIGRTMIN, v) < 0) {
            e = errno;
            break;
        }
        if (++n >= 10000000)
            break;
    }
    printf("hoarded %ld %s\n", n, errno_name(e));
    fflush(stdout);
    sleep_secs(secs);
    return 0;
}

/* Queues one blocked SIGRTMIN to itself: "sigqueue ok" or "sigqueue ERRNO". */
static int cmd_sigqueue(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &set, NULL);
    union sigval v = {0};
    int e = sigqueue(getpid(), SIGRTMIN, v) < 0 ? errno : 0;
    printf("sigqueue %s\n", e ? errno_name(e) : "ok");
    return 0;
}

/* Opens /dev/ptmx until it fails; prints "ptys N ERRNO", then holds them for SECS. */
static int cmd_pty_hoard(int argc, char **argv)
{
    need_args(argc, 3, "pty-hoard");
    double secs = parse_secs(argv[2]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    long n = 0;
    int e = 0;
    for (;;) {
        int fd = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
            e = errno;
            break;
        }
        n++;
    }
    printf("ptys %ld %s\n", n, errno_name(e));
    fflush(stdout);
    sleep_secs(secs);
    return 0;
}

/* Opens one pty: "pty ok" or "pty ERRNO". */
static int cmd_pty(void)
{
    int fd = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    printf("pty %s\n", fd < 0 ? errno_name(errno) : "ok");
    return 0;
}

/* Takes up to N one-byte write locks on distinct bytes of PATH (created):
 * "locks K ERRNO" (K taken before the first failure). */
static int cmd_fcntl_locks(int argc, char **argv)
{
    need_args(argc, 4, "fcntl-locks");
    long want = (long)parse_ll(argv[2], 1, 100000000);
    int fd = open(argv[3], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        printf("locks 0 %s\n", errno_name(errno));
        return 0;
    }
    long n = 0;
    int e = 0;
    for (; n < want; n++) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                           .l_start = 2 * n, .l_len = 1};
        if (fcntl(fd, F_SETLK, &fl) < 0) {
            e = errno;
            break;
        }
    }
    printf("locks %ld %s\n", n, errno_name(e));
    return 0;
}

/* flock(LOCK_EX) on PATH opened read-only; prints "locked" (or "flock ERRNO") and holds
 * the lock for SECS. */
static int cmd_flock_hold(int argc, char **argv)
{
    need_args(argc, 4, "flock-hold");
    double secs = parse_secs(argv[3]);
    int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
        printf("flock %s\n", errno_name(errno));
        return 0;
    }
    printf("locked\n");
    fflush(stdout);
    sleep_secs(secs);
    return 0;
}

/* Watches DIR for opens and reads for SECS after printing "watching"; then prints
 * "events N". */
static int cmd_inotify(int argc, char **argv)
{
    need_args(argc, 4, "inotify");
    double secs = parse_secs(argv[3]);
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (fd < 0 || inotify_add_watch(fd, argv[2], IN_OPEN | IN_ACCESS) < 0) {
        printf("inotify %s\n", errno_name(errno));
        return 0;
    }
    printf("watching\n");
    fflush(stdout);
    long events = 0;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double left = secs - ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9);
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(left * 1000) + 1) > 0) {
            char buf[4096];
            ssize_t r = read(fd, buf, sizeof buf);
            for (ssize_t off = 0; r > 0 && off < r;) {
                struct inotify_event *ev = (struct inotify_event *)(buf + off);
                events++;
                off += (ssize_t)(sizeof *ev + ev->len);
            }
        }
    }
    printf("events %ld\n", events);
    return 0;
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];

    if (!strcmp(cmd, "true"))
        return 0;
    if (!strcmp(cmd, "exit")) {
        need_args(argc, 3, "exit");
        return (int)(parse_ll(argv[2], 0, 255));
    }
    if (!strcmp(cmd, "echo"))
        return cmd_echo(argc, argv);
    if (!strcmp(cmd, "signal"))
        return cmd_signal(argc, argv);
    if (!strcmp(cmd, "sleep")) {
        need_args(argc, 3, "sleep");
        sleep_secs(parse_secs(argv[2]));
        return 0;
    }
    if (!strcmp(cmd, "spin"))
        return cmd_spin(argc, argv);
    if (!strcmp(cmd, "spin-threads"))
        return cmd_spin_threads(argc, argv);
    if (!strcmp(cmd, "memhog"))
        return cmd_memhog(argc, argv);
    if (!strcmp(cmd, "forkbomb"))
        return cmd_forkbomb();
    if (!strcmp(cmd, "syscall"))
        return cmd_syscall(argc, argv);
    if (!strcmp(cmd, "status"))
        return cmd_status();
    if (!strcmp(cmd, "fds"))
        return cmd_fds();
    if (!strcmp(cmd, "write-bytes"))
        return cmd_write_bytes(argc, argv);
    if (!strcmp(cmd, "hostname"))
        return cmd_hostname();
    if (!strcmp(cmd, "uid"))
        return cmd_uid();
    if (!strcmp(cmd, "rlimits"))
        return cmd_rlimits();
    if (!strcmp(cmd, "zombies"))
        return cmd_zombies(argc, argv);
    if (!strcmp(cmd, "daemon"))
        return cmd_daemon();
    if (!strcmp(cmd, "stackoverflow"))
        return cmd_stackoverflow();
    if (!strcmp(cmd, "sigqueue-hoard"))
        return cmd_sigqueue_hoard(argc, argv);
    if (!strcmp(cmd, "sigqueue"))
        return cmd_sigqueue();
    if (!strcmp(cmd, "pty-hoard"))
        return cmd_pty_hoard(argc, argv);
    if (!strcmp(cmd, "pty"))
        return cmd_pty();
    if (!strcmp(cmd, "fcntl-locks"))
        return cmd_fcntl_locks(argc, argv);
    if (!strcmp(cmd, "flock-hold"))
        return cmd_flock_hold(argc, argv);
    if (!strcmp(cmd, "inotify"))
        return cmd_inotify(argc, argv);

    fprintf(stderr, "%s: unknown subcommand '%s'\n", prog, cmd);
    usage();
    return EXIT_USAGE;
}
