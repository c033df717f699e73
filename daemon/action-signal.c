/* SPDX-License-Identifier: MIT */
/*
 * action-signal.c - the signal stage of a plan. It resolves every [process]
 * of the config (pidfile = or match =, one pass over /proc for all match
 * patterns), pins each process with a pidfd, checks that the pid still names
 * what was resolved (so a recycled PID is never signalled), sends the signal
 * through the pidfd and then waits, bounded by wait = and by the stage's
 * deadline, for the processes that asked for it to exit or to say done.
 * All signals go out in one tight loop before the first report, so what the
 * callbacks do never delays a signal.
 *
 * It owns its pidfds, one uv_poll_t per waited-for process and one
 * uv_timer_t. It copies what it needs from the Config, so the Config may go
 * away after signal_stage_new(). It never logs above debug, never spawns and
 * never decides anything about the plan.
 */
#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <time.h>

#include "action.h"
#include "shared/log.h"
#include "shared/macro.h"

/* At most this many processes are signalled per [process] with match =. */
#define MATCH_MAX 4096U
/* Bytes of /proc/PID/cmdline compared against match = patterns. */
#define CMDLINE_MAX (32U * 1024U)
/* A pidfile is a decimal PID and some whitespace; anything longer is not one. */
#define PIDFILE_MAX 64U
/*
 * A pidfile is written by the process it names, or by its parent after the
 * fork, so the process started before the pidfile was last written. A
 * process that started clearly later holds a recycled PID. The slack covers
 * the clock tick granularity of the start time and file systems with coarse
 * timestamps.
 */
#define PIDFILE_SLACK_USEC (2 * USEC_PER_SEC)

typedef struct SignalProcess {
        char *name;
        char *pidfile;
        char *match;
        int signal;
        uint64_t wait_usec;

        /* Filled while resolving, before any callback runs. */
        int error;
        char *error_detail;
        size_t n_matched;
} SignalProcess;

typedef struct Candidate {
        size_t process;
        pid_t pid;
        int pidfd;  /* match =: pinned and verified during the scan */
        int error;  /* match =: the pidfd could not be opened */
} Candidate;

typedef enum TargetState {
        TARGET_PENDING,
        TARGET_SIGNALLED,
        TARGET_FAILED,   /* reported with @error and @detail */
        TARGET_GONE,     /* matched, but exited before the signal: not reported */
} TargetState;

typedef struct SignalTarget {
        SignalStage *stage;
        size_t process;
        pid_t pid;
        int pidfd;
        TargetState state;
        int error;
        char *detail;    /* why it failed, if more than strerror(error) says; may be NULL */
        uint64_t wait_until_usec;
        uv_poll_t poll;
        bool poll_open;  /* initialized and not yet handed to uv_close() */
        bool waiting;
} SignalTarget;

struct SignalStage {
        uv_loop_t *loop;
        SignalProcess *processes;
        size_t n_processes;
        uint64_t until_usec;
        SignalStageCallbacks cb;
        void *userdata;

        uv_timer_t timer;
        SignalTarget *targets;
        size_t n_targets;

        unsigned n_signalled, n_failed, n_waited_out;
        unsigned n_waiting;
        unsigned n_handles; /* initialized handles whose close callback has not run */
        bool started, done, closing;
};

static SignalStage *signal_stage_free(SignalStage *s) {
        if (!s)
                return NULL;

        for (size_t i = 0; i < s->n_targets; i++) {
                (void) safe_close(s->targets[i].pidfd);
                free(s->targets[i].detail);
        }
        free(s->targets);

        for (size_t i = 0; i < s->n_processes; i++) {
                free(s->processes[i].name);
                free(s->processes[i].pidfile);
                free(s->processes[i].match);
                free(s->processes[i].error_detail);
        }
        free(s->processes);
        free(s);
        return NULL;
}

static void stage_handle_closed(SignalStage *s) {
        assert(s->n_handles > 0);
        s->n_handles--;
        if (s->closing && s->n_handles == 0)
                signal_stage_free(s);
}

static void timer_close_cb(uv_handle_t *handle) {
        SignalStage *s = container_of((uv_timer_t *) handle, SignalStage, timer);

        stage_handle_closed(s);
}

static void poll_close_cb(uv_handle_t *handle) {
        SignalTarget *t = container_of((uv_poll_t *) handle, SignalTarget, poll);

        /* libuv does not own the fd of a uv_poll_t; it may be closed only now. */
        t->pidfd = safe_close(t->pidfd);
        stage_handle_closed(t->stage);
}

static void target_stop_poll(SignalTarget *t) {
        if (!t->poll_open)
                return;
        t->poll_open = false;
        uv_close((uv_handle_t *) &t->poll, poll_close_cb);
}

static uint64_t usec_add(uint64_t a, uint64_t b) {
        return a > USEC_INFINITY - b ? USEC_INFINITY : a + b;
}

static uint64_t usec_to_timeout_msec(uint64_t until_usec, uint64_t now_usec) {
        if (until_usec <= now_usec)
                return 0;
        return (until_usec - now_usec + USEC_PER_MSEC - 1) / USEC_PER_MSEC;
}

static void timer_cb(uv_timer_t *timer);

/*
 * Arm the stage timer for the earliest wait deadline, or to fire at once when
 * nothing is waited for any more: on_done is only ever called from the timer,
 * so never from inside signal_stage_start() or signal_stage_mark_done().
 */
static void stage_arm(SignalStage *s) {
        uint64_t next = 0;

        if (s->n_waiting > 0) {
                next = USEC_INFINITY;
                for (size_t i = 0; i < s->n_targets; i++)
                        if (s->targets[i].waiting)
                                next = MIN(next, s->targets[i].wait_until_usec);
        }

        /* Timers count from the loop's cached time; refresh it so they do not fire early. */
        uv_update_time(s->loop);
        (void) uv_timer_start(&s->timer, timer_cb, usec_to_timeout_msec(next, now_monotonic_usec()), 0);
}

static void target_finish(SignalTarget *t, bool exited) {
        SignalStage *s = t->stage;
        const SignalProcess *p = &s->processes[t->process];

        if (!t->waiting)
                return;
        t->waiting = false;
        s->n_waiting--;
        target_stop_poll(t);

        if (s->n_waiting == 0)
                stage_arm(s);

        if (s->cb.on_finished)
                s->cb.on_finished(s, p->name, t->pid, exited, s->userdata);
}

static void timer_cb(uv_timer_t *timer) {
        SignalStage *s = container_of(timer, SignalStage, timer);
        uint64_t now = now_monotonic_usec();

        if (s->closing || s->done)
                return;

        for (size_t i = 0; i < s->n_targets; i++) {
                SignalTarget *t = &s->targets[i];

                if (!t->waiting || t->wait_until_usec > now)
                        continue;

                log_debug("Process %d of [process \"%s\"] did not exit within its wait, going on.",
                          (int) t->pid, s->processes[t->process].name);
                t->waiting = false;
                s->n_waiting--;
                s->n_waited_out++;
                target_stop_poll(t);
        }

        if (s->n_waiting > 0) {
                stage_arm(s);
                return;
        }

        s->done = true;
        if (s->cb.on_done)
                s->cb.on_done(s, s->n_signalled, s->n_failed, s->n_waited_out, s->userdata);
}

static void poll_cb(uv_poll_t *poll, int status, int events) {
        SignalTarget *t = container_of(poll, SignalTarget, poll);

        if (t->stage->closing)
                return;

        if (status < 0) {
                /* The pidfd cannot be watched; the timer or `done` still ends the wait. */
                log_debug_errno(status, "Failed to watch process %d, waiting for its deadline: %m",
                                (int) t->pid);
                target_stop_poll(t);
                return;
        }

        /* A pidfd polls readable once the process has exited. */
        target_finish(t, true);
}

static int read_full(int fd, char *buf, size_t size, size_t *ret_len) {
        size_t len = 0;

        while (len < size) {
                size_t want = size - len;
                ssize_t n;

                n = read(fd, buf + len, want);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                len += (size_t) n;
                /*
                 * Regular files and proc files hand out all they have in one
                 * read; a short read is the end, which saves a second read()
                 * per process in the /proc scan.
                 */
                if ((size_t) n < want)
                        break;
        }

        *ret_len = len;
        return 0;
}

/*
 * Read /proc/PID/cmdline relative to @proc_fd into @buf (CMDLINE_MAX + 1
 * bytes), argv joined by spaces and NUL-terminated; the length is 0 for
 * kernel threads and zombies, which have no command line. Returns the open
 * fd: it stays bound to that very process, even if the PID is reused.
 */
static int cmdline_read(int proc_fd, pid_t pid, char *buf, size_t *ret_len) {
        _cleanup_close_ int fd = -EBADF;
        char path[32];
        size_t len;
        int r;

        (void) snprintf(path, sizeof(path), "%d/cmdline", (int) pid);
        fd = openat(proc_fd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        r = read_full(fd, buf, CMDLINE_MAX, &len);
        if (r < 0)
                return r;

        if (len > 0 && buf[len - 1] == '\0')
                len--;
        for (size_t i = 0; i < len; i++)
                if (buf[i] == '\0')
                        buf[i] = ' ';
        buf[len] = '\0';

        *ret_len = len;
        return TAKE_FD(fd);
}

/*
 * Pin the process whose command line was read through @cmdline_fd with a
 * pidfd. pidfd_open() takes whatever holds @pid now; that is the same
 * process if it was not reaped in between, which a read through @cmdline_fd
 * (bound to the process, not to the number) tells afterwards: it fails for a
 * reaped process and returns nothing for a zombie. So no second read of the
 * command line is needed. Returns 1 with @ret_pidfd, 0 if the process is
 * gone, or -errno.
 */
static int pidfd_open_verified(pid_t pid, int cmdline_fd, int *ret_pidfd) {
        _cleanup_close_ int pidfd = -EBADF;
        char c;

        pidfd = pidfd_open(pid, 0);
        if (pidfd < 0)
                return errno == ESRCH ? 0 : -errno;
        if (pread(cmdline_fd, &c, 1, 0) != 1)
                return 0;
        *ret_pidfd = TAKE_FD(pidfd);
        return 1;
}

/*
 * Parse a pidfile's content: a decimal PID with optional surrounding
 * whitespace, nothing else.
 */
static int pid_parse(const char *s, pid_t *ret) {
        unsigned long v = 0;
        const char *p = s;

        p += strspn(p, " \t\r\n");
        if (*p < '0' || *p > '9')
                return -EINVAL;
        for (; *p >= '0' && *p <= '9'; p++) {
                v = v * 10 + (unsigned long) (*p - '0');
                if (v > INT_MAX)
                        return -ERANGE;
        }
        p += strspn(p, " \t\r\n");
        if (*p != '\0')
                return -EINVAL;

        *ret = (pid_t) v;
        return 0;
}

/*
 * Read @path and validate the PID in it. On failure @detail says why, in
 * words for the journal.
 */
static int pidfile_read(const char *path, pid_t *ret_pid, uint64_t *ret_mtime_usec, char *detail,
                        size_t size) {
        _cleanup_close_ int fd = -EBADF;
        char buf[PIDFILE_MAX + 2];
        struct stat st;
        size_t len;
        pid_t pid;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                r = -errno;
                (void) snprintf(detail, size, "pidfile %s: %s", path, strerror(-r));
                return r;
        }
        if (fstat(fd, &st) < 0) {
                r = -errno;
                (void) snprintf(detail, size, "pidfile %s: %s", path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                (void) snprintf(detail, size, "pidfile %s: not a regular file", path);
                return -EINVAL;
        }
        r = read_full(fd, buf, sizeof(buf) - 1, &len);
        if (r < 0) {
                (void) snprintf(detail, size, "pidfile %s: %s", path, strerror(-r));
                return r;
        }
        buf[len] = '\0';
        if (len > PIDFILE_MAX || memchr(buf, '\0', len) || pid_parse(buf, &pid) < 0) {
                (void) snprintf(detail, size, "pidfile %s: does not contain a PID", path);
                return -EINVAL;
        }
        if (pid <= 1) {
                (void) snprintf(detail, size, "pidfile %s: PID %d is not a process to signal", path,
                                (int) pid);
                return -EINVAL;
        }
        if (pid == getpid()) {
                (void) snprintf(detail, size, "pidfile %s: PID %d is spotwatchd itself", path, (int) pid);
                return -EINVAL;
        }

        *ret_pid = pid;
        if (ret_mtime_usec)
                *ret_mtime_usec = (uint64_t) st.st_mtim.tv_sec * USEC_PER_SEC +
                                  (uint64_t) st.st_mtim.tv_nsec / NSEC_PER_USEC;
        return 0;
}

/* When @pid started, in wall-clock usec, from field 22 of /proc/PID/stat. */
static int process_start_realtime(pid_t pid, uint64_t *ret) {
        _cleanup_close_ int fd = -EBADF;
        struct timespec rt, bt;
        unsigned long long ticks;
        char path[32], buf[2048], *p;
        size_t len;
        long hz;
        int r;

        (void) snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        r = read_full(fd, buf, sizeof(buf) - 1, &len);
        if (r < 0)
                return r;
        buf[len] = '\0';

        /* The command name in parentheses may contain anything; fields follow the last ')'. */
        p = strrchr(buf, ')');
        if (!p)
                return -EIO;
        p++;
        /* Field 3 (state) is the first after ')'; starttime is field 22. */
        for (int field = 3; field < 22; field++) {
                p += strspn(p, " ");
                p += strcspn(p, " ");
        }
        p += strspn(p, " ");
        if (*p < '0' || *p > '9')
                return -EIO;
        errno = 0;
        ticks = strtoull(p, NULL, 10);
        if (errno != 0)
                return -errno;

        hz = sysconf(_SC_CLK_TCK);
        if (hz <= 0)
                return -EIO;
        if (clock_gettime(CLOCK_REALTIME, &rt) < 0 || clock_gettime(CLOCK_BOOTTIME, &bt) < 0)
                return -errno;

        /* The start time counts from boot; the wall clock at boot is now minus the time since boot. */
        *ret = (uint64_t) rt.tv_sec * USEC_PER_SEC + (uint64_t) rt.tv_nsec / NSEC_PER_USEC -
               ((uint64_t) bt.tv_sec * USEC_PER_SEC + (uint64_t) bt.tv_nsec / NSEC_PER_USEC) +
               (uint64_t) ticks * USEC_PER_SEC / (uint64_t) hz;
        return 0;
}

/*
 * After the pidfd pinned the process: does the pidfile still name it? It
 * must, and it must not be older than the process. Returns 1 if yes, 0 if
 * not (with @detail).
 */
static int pidfile_recheck(const SignalProcess *p, pid_t pid, char *detail, size_t size) {
        uint64_t mtime_usec = 0, start_usec = 0;
        pid_t again;
        int r;

        r = pidfile_read(p->pidfile, &again, &mtime_usec, detail, size);
        if (r < 0)
                return 0;
        if (again != pid) {
                (void) snprintf(detail, size, "pidfile %s: changed from PID %d to %d while opening it",
                                p->pidfile, (int) pid, (int) again);
                return 0;
        }
        r = process_start_realtime(pid, &start_usec);
        if (r < 0) {
                (void) snprintf(detail, size, "pidfile %s: process %d: %s", p->pidfile, (int) pid,
                                strerror(-r));
                return 0;
        }
        if (start_usec > usec_add(mtime_usec, PIDFILE_SLACK_USEC)) {
                (void) snprintf(detail, size,
                                "pidfile %s: stale, process %d started after the file was written "
                                "(PID reused)",
                                p->pidfile, (int) pid);
                return 0;
        }
        return 1;
}

static int candidate_add(Candidate **cands, size_t *n, size_t *allocated, size_t process, pid_t pid,
                         int pidfd, int error) {
        if (*n >= *allocated) {
                size_t a = MAX(*allocated * 2, (size_t) 16);
                Candidate *c;

                c = reallocarray(*cands, a, sizeof(Candidate));
                if (!c)
                        return -ENOMEM;
                *cands = c;
                *allocated = a;
        }
        (*cands)[(*n)++] = (Candidate) { .process = process, .pid = pid, .pidfd = pidfd, .error = error };
        return 0;
}

static bool pid_name(const char *s, pid_t *ret) {
        unsigned long v = 0;

        if (*s == '\0')
                return false;
        for (; *s; s++) {
                if (*s < '0' || *s > '9')
                        return false;
                v = v * 10 + (unsigned long) (*s - '0');
                if (v > INT_MAX)
                        return false;
        }
        *ret = (pid_t) v;
        return true;
}

/*
 * One pass over /proc for all match = patterns: each command line is read
 * once, whatever the number of patterns, and a matching process is pinned
 * with a pidfd right away, so it needs no second look. Skips ourselves,
 * PID 1, kernel threads and zombies (no command line).
 */
static int proc_scan(SignalStage *s, Candidate **cands, size_t *n, size_t *allocated) {
        _cleanup_free_ char *buf = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct dirent *de;
        bool any = false;
        pid_t self = getpid();
        DIR *d;
        int r = 0;

        for (size_t i = 0; i < s->n_processes; i++)
                if (!s->processes[i].pidfile && s->processes[i].match)
                        any = true;
        if (!any)
                return 0;

        buf = malloc(CMDLINE_MAX + 1);
        if (!buf)
                return -ENOMEM;
        fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        d = fdopendir(fd);
        if (!d)
                return -errno;
        fd = -EBADF; /* owned by d now */

        for (;;) {
                _cleanup_close_ int cmdline_fd = -EBADF;
                int pin = -EBADF, pinned = 0;
                bool pin_taken = false;
                size_t len = 0;
                pid_t pid;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        r = -errno;
                        break;
                }
                if (!pid_name(de->d_name, &pid) || pid <= 1 || pid == self)
                        continue;
                /* The process may be gone already; that is no error. */
                cmdline_fd = cmdline_read(dirfd(d), pid, buf, &len);
                if (cmdline_fd < 0 || len == 0)
                        continue;

                for (size_t i = 0; i < s->n_processes; i++) {
                        SignalProcess *p = &s->processes[i];
                        int pidfd = -EBADF, error = 0;

                        if (p->pidfile || !p->match || !strstr(buf, p->match))
                                continue;
                        if (p->n_matched++ >= MATCH_MAX)
                                continue;

                        if (pinned == 0) {
                                pinned = pidfd_open_verified(pid, cmdline_fd, &pin);
                                if (pinned == 0) {
                                        p->n_matched--;
                                        break; /* gone */
                                }
                        }
                        if (pinned < 0)
                                error = pinned;
                        else if (!pin_taken) {
                                /* The first [process] matching it gets the pidfd, others a dup. */
                                pidfd = pin;
                                pin_taken = true;
                        } else {
                                pidfd = fcntl(pin, F_DUPFD_CLOEXEC, 3);
                                if (pidfd < 0)
                                        error = -errno;
                        }

                        r = candidate_add(cands, n, allocated, i, pid, pidfd, error);
                        if (r < 0) {
                                /* Not stored: whether @pin itself or a dup, it is ours to close. */
                                (void) safe_close(pidfd);
                                break;
                        }
                }
                if (pinned > 0 && !pin_taken)
                        (void) safe_close(pin);
                if (r < 0)
                        break;
        }

        (void) closedir(d);
        return r;
}

static int candidate_compare(const void *a, const void *b) {
        const Candidate *x = a, *y = b;

        if (x->process != y->process)
                return x->process < y->process ? -1 : 1;
        return (x->pid > y->pid) - (x->pid < y->pid);
}

static void report(SignalStage *s, const SignalProcess *p, pid_t pid, int error, const char *detail) {
        if (error < 0)
                s->n_failed++;
        else
                s->n_signalled++;
        if (s->cb.on_signalled)
                s->cb.on_signalled(s, p->name, pid, p->signal, error, detail, s->userdata);
}

static void target_fail(SignalTarget *t, int error, const char *detail) {
        t->pidfd = safe_close(t->pidfd);
        t->state = TARGET_FAILED;
        t->error = error;
        /* Without memory the report falls back to strerror(). */
        t->detail = detail ? strdup(detail) : NULL;
}

/*
 * Pin (for a pidfile), recheck and signal one target. No callbacks and
 * nothing slow here: every signal goes out before the first report, so
 * what the callbacks do (journal records) never delays a signal.
 */
static void target_send(SignalStage *s, SignalTarget *t) {
        const SignalProcess *p = &s->processes[t->process];
        char detail[512];

        if (t->state != TARGET_PENDING)
                return; /* match =: the scan could not pin it */

        if (p->pidfile) {
                t->pidfd = pidfd_open(t->pid, 0);
                if (t->pidfd < 0 && errno == ESRCH) {
                        (void) snprintf(detail, sizeof(detail),
                                        "pidfile %s: process %d does not exist (stale pidfile)",
                                        p->pidfile, (int) t->pid);
                        target_fail(t, -ESRCH, detail);
                        return;
                }
                if (t->pidfd < 0) {
                        target_fail(t, -errno, NULL);
                        return;
                }
                if (pidfile_recheck(p, t->pid, detail, sizeof(detail)) <= 0) {
                        target_fail(t, -ESRCH, detail);
                        return;
                }
        }

        if (pidfd_send_signal(t->pidfd, p->signal, NULL, 0) < 0) {
                if (errno == ESRCH && p->match) {
                        /* Exited since the scan. */
                        t->pidfd = safe_close(t->pidfd);
                        t->state = TARGET_GONE;
                        return;
                }
                target_fail(t, -errno, NULL);
                return;
        }
        t->state = TARGET_SIGNALLED;
}

/*
 * A fatal signal (SIGUSR1 to a process without a handler) or a handler
 * wakes the target at once, and the woken processes preempt us: sending
 * 1000 signals takes 3 ms of CPU but 50 ms of wall time under SCHED_OTHER.
 * For the send loop only, run as SCHED_FIFO (reset on fork, so nothing we
 * start inherits it). Without the privilege we stay as we are.
 */
static int sched_boost(struct sched_param *ret_saved) {
        struct sched_param fifo = { .sched_priority = 1 };
        int policy;

        policy = sched_getscheduler(0);
        if (policy < 0 || (policy & ~SCHED_RESET_ON_FORK) != SCHED_OTHER)
                return -1;
        if (sched_getparam(0, ret_saved) < 0)
                return -1;
        if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &fifo) < 0)
                return -1;
        return policy;
}

static void sched_restore(int policy, const struct sched_param *saved) {
        if (policy < 0)
                return;
        if (sched_setscheduler(0, policy, saved) < 0)
                log_debug_errno(errno, "Failed to restore the scheduling policy, ignoring: %m");
}

/* After all signals went out: report one target and start waiting for it. */
static void target_report(SignalStage *s, SignalTarget *t) {
        const SignalProcess *p = &s->processes[t->process];
        char detail[512];
        int r;

        switch (t->state) {
        case TARGET_PENDING:
        case TARGET_GONE:
                return;
        case TARGET_FAILED:
                if (!t->detail)
                        (void) snprintf(detail, sizeof(detail), "process %d: %s", (int) t->pid,
                                        strerror(-t->error));
                report(s, p, t->pid, t->error, t->detail ?: detail);
                return;
        case TARGET_SIGNALLED:
                break;
        }

        if (p->wait_usec > 0) {
                t->wait_until_usec = MIN(usec_add(now_monotonic_usec(), p->wait_usec), s->until_usec);
                t->waiting = true;
                s->n_waiting++;

                r = uv_poll_init(s->loop, &t->poll, t->pidfd);
                if (r >= 0) {
                        t->poll_open = true;
                        s->n_handles++;
                        r = uv_poll_start(&t->poll, UV_READABLE, poll_cb);
                        if (r < 0)
                                target_stop_poll(t);
                }
                if (r < 0)
                        log_debug_errno(r, "Failed to watch process %d, waiting for its deadline: %m",
                                        (int) t->pid);
        }
        if (!t->poll_open)
                t->pidfd = safe_close(t->pidfd);

        if (p->pidfile)
                (void) snprintf(detail, sizeof(detail), "pidfile %s", p->pidfile);
        else
                (void) snprintf(detail, sizeof(detail), "matches '%s'", p->match);
        report(s, p, t->pid, 0, detail);
}

static int process_copy(SignalProcess *to, const ProcessConfig *from) {
        to->name = strdup(from->name ? from->name : "");
        if (!to->name)
                return -ENOMEM;
        if (from->pidfile) {
                to->pidfile = strdup(from->pidfile);
                if (!to->pidfile)
                        return -ENOMEM;
        }
        if (from->match) {
                to->match = strdup(from->match);
                if (!to->match)
                        return -ENOMEM;
        }
        to->signal = from->signal;
        to->wait_usec = from->wait_usec;
        return 0;
}

int signal_stage_new(uv_loop_t *loop, const Config *config, uint64_t until_usec,
                     const SignalStageCallbacks *cb, void *userdata, SignalStage **ret) {
        SignalStage *s;
        int r;

        assert(loop);
        assert(config);
        assert(ret);

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->until_usec = until_usec;
        if (cb)
                s->cb = *cb;
        s->userdata = userdata;

        if (config->n_processes > 0) {
                s->processes = calloc(config->n_processes, sizeof(SignalProcess));
                if (!s->processes) {
                        signal_stage_free(s);
                        return -ENOMEM;
                }
                s->n_processes = config->n_processes;
                for (size_t i = 0; i < config->n_processes; i++) {
                        r = process_copy(&s->processes[i], &config->processes[i]);
                        if (r < 0) {
                                signal_stage_free(s);
                                return r;
                        }
                }
        }

        /* The last step: from here on the stage holds a handle and is freed only by its close callback. */
        r = uv_timer_init(loop, &s->timer);
        if (r < 0) {
                signal_stage_free(s);
                return r;
        }
        s->n_handles = 1;

        *ret = s;
        return 0;
}

static void candidates_free(Candidate *cands, size_t n) {
        for (size_t i = 0; i < n; i++)
                (void) safe_close(cands[i].pidfd);
        free(cands);
}

/*
 * Resolve everything without calling back, so that running out of memory
 * fails the start cleanly with nothing signalled.
 */
static int stage_resolve(SignalStage *s) {
        Candidate *cands = NULL;
        size_t n = 0, allocated = 0;
        int r;

        for (size_t i = 0; i < s->n_processes; i++) {
                SignalProcess *p = &s->processes[i];
                char detail[512];
                pid_t pid;

                if (!p->pidfile) {
                        if (!p->match) {
                                p->error = -EINVAL;
                                p->error_detail = strdup("neither pidfile = nor match = is set");
                                if (!p->error_detail) {
                                        r = -ENOMEM;
                                        goto fail;
                                }
                        }
                        continue;
                }

                r = pidfile_read(p->pidfile, &pid, NULL, detail, sizeof(detail));
                if (r < 0) {
                        p->error = r;
                        p->error_detail = strdup(detail);
                        if (!p->error_detail) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        continue;
                }
                r = candidate_add(&cands, &n, &allocated, i, pid, -EBADF, 0);
                if (r < 0)
                        goto fail;
        }

        r = proc_scan(s, &cands, &n, &allocated);
        if (r == -ENOMEM)
                goto fail;
        if (r < 0)
                /* What was found before the scan broke off is still signalled. */
                for (size_t i = 0; i < s->n_processes; i++) {
                        SignalProcess *p = &s->processes[i];
                        char detail[512];

                        if (p->pidfile || !p->match)
                                continue;
                        (void) snprintf(detail, sizeof(detail), "cannot scan /proc for '%s': %s", p->match,
                                        strerror(-r));
                        p->error = r;
                        p->error_detail = strdup(detail);
                        if (!p->error_detail) {
                                r = -ENOMEM;
                                goto fail;
                        }
                }

        if (n > 0) {
                qsort(cands, n, sizeof(Candidate), candidate_compare);
                s->targets = calloc(n, sizeof(SignalTarget));
                if (!s->targets) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        for (size_t i = 0; i < n; i++)
                s->targets[i] = (SignalTarget) {
                        .stage = s,
                        .process = cands[i].process,
                        .pid = cands[i].pid,
                        .pidfd = cands[i].pidfd,
                        .state = cands[i].error < 0 ? TARGET_FAILED : TARGET_PENDING,
                        .error = cands[i].error,
                };
        s->n_targets = n;
        free(cands);
        return 0;

fail:
        candidates_free(cands, n);
        return r;
}

int signal_stage_start(SignalStage *s) {
        size_t t = 0;
        int r;

        assert(s);

        if (s->started || s->closing)
                return -EBUSY;
        s->started = true;

        r = stage_resolve(s);
        if (r < 0)
                return r;

        if (s->n_targets > 0) {
                struct sched_param saved;
                int policy;

                policy = sched_boost(&saved);
                for (size_t i = 0; i < s->n_targets; i++)
                        target_send(s, &s->targets[i]);
                sched_restore(policy, &saved);
        }

        /* Report in config order; the targets are sorted by process. */
        for (size_t i = 0; i < s->n_processes; i++) {
                SignalProcess *p = &s->processes[i];
                unsigned n_reported = 0;
                char detail[512];

                if (p->error < 0) {
                        report(s, p, 0, p->error, p->error_detail);
                        if (s->closing)
                                return 0;
                }

                for (; t < s->n_targets && s->targets[t].process == i; t++) {
                        target_report(s, &s->targets[t]);
                        if (s->closing)
                                return 0;
                        if (s->targets[t].state != TARGET_GONE)
                                n_reported++;
                }

                if (p->pidfile || !p->match || p->error < 0)
                        continue;
                if (p->n_matched > MATCH_MAX) {
                        (void) snprintf(detail, sizeof(detail),
                                        "%zu more processes match '%s', not signalled "
                                        "(at most %u per [process])",
                                        p->n_matched - MATCH_MAX, p->match, MATCH_MAX);
                        report(s, p, 0, -E2BIG, detail);
                } else if (n_reported == 0) {
                        /* None found, or all that were found exited before the signal. */
                        (void) snprintf(detail, sizeof(detail), "no process matches '%s'", p->match);
                        report(s, p, 0, -ESRCH, detail);
                }
                if (s->closing)
                        return 0;
        }

        stage_arm(s);
        return 0;
}

int signal_stage_mark_done(SignalStage *s, pid_t pid) {
        bool found = false;

        if (!s || s->closing)
                return -ESRCH;

        for (size_t i = 0; i < s->n_targets; i++) {
                SignalTarget *t = &s->targets[i];

                if (t->pid != pid || t->state != TARGET_SIGNALLED)
                        continue;
                found = true;
                target_finish(t, false);
                if (s->closing)
                        break;
        }

        return found ? 0 : -ESRCH;
}

void signal_stage_close(SignalStage *s) {
        if (!s)
                return;
        assert(!s->closing);

        s->closing = true;
        for (size_t i = 0; i < s->n_targets; i++)
                target_stop_poll(&s->targets[i]);
        uv_close((uv_handle_t *) &s->timer, timer_close_cb);
}
