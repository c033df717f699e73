/* SPDX-License-Identifier: MIT */
/*
 * test-action.c - the signal stage and the hook stage against real child
 * processes (sleep, sh with traps, yes), real pidfiles and real /proc, in a
 * private temporary directory. No mocks. Every test runs its own uv loop to
 * completion and checks uv_loop_close() == 0, so a leaked handle fails it.
 * Waits for events poll with a deadline; nothing sleeps for an event.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "action.h"
#include "shared/macro.h"
#include "tests.h"

extern char **environ;

static char tmpdir[] = "/tmp/test-action-XXXXXX";

/* ---- helpers ------------------------------------------------------------ */

static char *tmp_path(const char *name) {
        char *p;

        ASSERT_TRUE(asprintf(&p, "%s/%s", tmpdir, name) >= 0);
        return p;
}

static void write_file(const char *path, const char *content) {
        FILE *f = fopen(path, "we");

        ASSERT_TRUE(f);
        ASSERT_TRUE(fputs(content, f) >= 0);
        ASSERT_EQ(fclose(f), 0);
}

static void write_pidfile(const char *path, pid_t pid) {
        char buf[32];

        (void) snprintf(buf, sizeof(buf), "%d\n", (int) pid);
        write_file(path, buf);
}

static char *read_file(const char *path) {
        static char buf[4096];
        FILE *f = fopen(path, "re");
        size_t n;

        if (!f)
                return NULL;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

static bool file_exists(const char *path) {
        return access(path, F_OK) == 0;
}

static void short_nap(void) {
        /* One polling step while waiting for a condition with a deadline. */
        struct timespec ts = { .tv_nsec = 5 * 1000 * 1000 };

        (void) nanosleep(&ts, NULL);
}

static pid_t spawn_child(const char *path, char *const argv[]) {
        posix_spawnattr_t attr;
        sigset_t none, def;
        pid_t pid;

        sigemptyset(&none);
        sigemptyset(&def);
        sigaddset(&def, SIGUSR1);
        sigaddset(&def, SIGTERM);
        sigaddset(&def, SIGPIPE);
        ASSERT_EQ(posix_spawnattr_init(&attr), 0);
        ASSERT_EQ(posix_spawnattr_setsigmask(&attr, &none), 0);
        ASSERT_EQ(posix_spawnattr_setsigdefault(&attr, &def), 0);
        ASSERT_EQ(posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF), 0);
        ASSERT_EQ(posix_spawn(&pid, path, NULL, &attr, argv, environ), 0);
        posix_spawnattr_destroy(&attr);
        return pid;
}

static pid_t spawn_sh(const char *script, const char *arg0) {
        char *argv[] = { (char *) "sh", (char *) "-c", (char *) script, (char *) arg0, NULL };

        return spawn_child("/bin/sh", argv);
}

/* Wait for @pid to exit (with a deadline) and return its wait status. */
static int reap(pid_t pid, uint64_t timeout_usec) {
        uint64_t end = now_monotonic_usec() + timeout_usec;
        int status;

        for (;;) {
                pid_t r = waitpid(pid, &status, WNOHANG);

                ASSERT_TRUE(r >= 0);
                if (r == pid)
                        return status;
                if (now_monotonic_usec() > end)
                        TEST_FAIL("process %d did not exit in time", (int) pid);
                short_nap();
        }
}

static void kill_and_reap(pid_t pid) {
        (void) kill(pid, SIGKILL);
        (void) reap(pid, 5 * USEC_PER_SEC);
}

static bool still_running(pid_t pid) {
        int status;

        return waitpid(pid, &status, WNOHANG) == 0;
}

/* Gone, or a zombie not reaped by its new parent: either way it no longer runs. */
static bool process_gone(pid_t pid) {
        char path[64], *s, *p;

        (void) snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        s = read_file(path);
        if (!s)
                return true;
        p = strrchr(s, ')');
        return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static void wait_gone(pid_t pid) {
        uint64_t end = now_monotonic_usec() + 3 * USEC_PER_SEC;

        while (!process_gone(pid)) {
                if (now_monotonic_usec() > end)
                        TEST_FAIL("process %d still runs", (int) pid);
                short_nap();
        }
}

static void wait_file(const char *path) {
        uint64_t end = now_monotonic_usec() + 5 * USEC_PER_SEC;

        while (!file_exists(path)) {
                if (now_monotonic_usec() > end)
                        TEST_FAIL("%s did not appear", path);
                short_nap();
        }
}

static bool cmdline_contains(pid_t pid, const char *token) {
        char path[64], buf[4096];
        ssize_t n;
        int fd;

        (void) snprintf(path, sizeof(path), "/proc/%d/cmdline", (int) pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return false;
        buf[n] = '\0';
        return strstr(buf, token);
}

/* Wait until @pid has exec'd into a program whose argv contains @token. */
static void wait_cmdline(pid_t pid, const char *token) {
        uint64_t end = now_monotonic_usec() + 5 * USEC_PER_SEC;

        while (!cmdline_contains(pid, token)) {
                if (now_monotonic_usec() > end)
                        TEST_FAIL("process %d never showed '%s'", (int) pid, token);
                short_nap();
        }
}

static long rss_kib(void) {
        char *s = read_file("/proc/self/status"), *p;

        ASSERT_TRUE(s);
        p = strstr(s, "VmRSS:");
        ASSERT_TRUE(p);
        return strtol(p + strlen("VmRSS:"), NULL, 10);
}

/* ---- configs built by hand, freed with config_free() ----------------------- */

static Config *test_config_new(void) {
        Config *c = calloc(1, sizeof(Config));

        ASSERT_TRUE(c);
        return c;
}

static void test_config_add_process(Config *c, const char *name, const char *pidfile, const char *match,
                                    int sig, uint64_t wait_usec) {
        ProcessConfig *p;

        c->processes = reallocarray(c->processes, c->n_processes + 1, sizeof(ProcessConfig));
        ASSERT_TRUE(c->processes);
        p = &c->processes[c->n_processes++];
        *p = (ProcessConfig) {
                .name = strdup(name),
                .pidfile = pidfile ? strdup(pidfile) : NULL,
                .match = match ? strdup(match) : NULL,
                .signal = sig,
                .wait_usec = wait_usec,
        };
}

/* argv is NULL-terminated. */
static void test_config_add_hook(Config *c, const char *name, long order, uint64_t timeout_usec,
                                 const char *user, ...) {
        HookConfig *h;
        va_list ap;
        size_t n = 0;

        c->hooks = reallocarray(c->hooks, c->n_hooks + 1, sizeof(HookConfig));
        ASSERT_TRUE(c->hooks);
        h = &c->hooks[c->n_hooks++];
        *h = (HookConfig) {
                .name = strdup(name),
                .timeout_usec = timeout_usec,
                .order = order,
                .user = user ? strdup(user) : NULL,
        };
        h->argv = calloc(16, sizeof(char *));
        ASSERT_TRUE(h->argv);
        va_start(ap, user);
        for (const char *a; (a = va_arg(ap, const char *));) {
                ASSERT_TRUE(n < 15);
                h->argv[n++] = strdup(a);
        }
        va_end(ap);
}

/* ---- loop helpers ------------------------------------------------------- */

static void guard_cb(uv_timer_t *t) {
        TEST_FAIL("timed out waiting for the stage (%s)", (const char *) t->data);
}

static void guard_close_cb(uv_handle_t *h) {
        h->data = h;
}

/* Run @loop until *@flag, failing after @timeout_usec. */
static void run_until(uv_loop_t *loop, const bool *flag, uint64_t timeout_usec, const char *what) {
        uv_timer_t guard;

        ASSERT_OK(uv_timer_init(loop, &guard));
        guard.data = (void *) what;
        ASSERT_OK(uv_timer_start(&guard, guard_cb, timeout_usec / USEC_PER_MSEC, 0));
        /*
         * Not UV_RUN_ONCE: after running a due timer it still blocks in poll
         * until the next event. The done callbacks call uv_stop().
         */
        while (!*flag)
                (void) uv_run(loop, UV_RUN_DEFAULT);
        /* The guard lives in this frame: see it closed before returning. */
        guard.data = NULL;
        uv_close((uv_handle_t *) &guard, guard_close_cb);
        while (!guard.data)
                (void) uv_run(loop, UV_RUN_NOWAIT);
}

static void stuck_cb(uv_timer_t *t) {
        uv_print_all_handles(t->loop, stderr);
        TEST_FAIL("loop still has handles after the stage was closed");
}

/* After the stage was closed: everything must wind down, and the loop must close. */
static void loop_finish(uv_loop_t *loop) {
        uv_timer_t stuck;

        ASSERT_OK(uv_timer_init(loop, &stuck));
        ASSERT_OK(uv_timer_start(&stuck, stuck_cb, 5000, 0));
        uv_unref((uv_handle_t *) &stuck);
        (void) uv_run(loop, UV_RUN_DEFAULT);
        uv_close((uv_handle_t *) &stuck, NULL);
        (void) uv_run(loop, UV_RUN_DEFAULT);
        ASSERT_EQ(uv_loop_close(loop), 0);
}

/* ---- signal stage ------------------------------------------------------- */

#define SIG_EVENTS_MAX 64

typedef struct SigCtx {
        uv_loop_t *loop; /* stopped at on_done, so run_until() returns at once */
        bool in_start, done, closed;
        unsigned n_signalled, n_failed, n_waited_out;
        unsigned n_sig_ok;
        size_t n_sig;
        struct {
                char process[64];
                pid_t pid;
                int sig;
                int error;
                char detail[512];
        } sig[SIG_EVENTS_MAX];
        size_t n_fin;
        struct {
                pid_t pid;
                bool exited;
        } fin[SIG_EVENTS_MAX];
        uint64_t done_usec;
} SigCtx;

static void on_signalled(SignalStage *s, const char *process, pid_t pid, int sig, int error,
                         const char *detail, void *userdata) {
        SigCtx *c = userdata;

        ASSERT_FALSE(c->closed);
        if (error == 0)
                c->n_sig_ok++;
        if (c->n_sig >= SIG_EVENTS_MAX)
                return;
        (void) snprintf(c->sig[c->n_sig].process, sizeof(c->sig[0].process), "%s", process);
        (void) snprintf(c->sig[c->n_sig].detail, sizeof(c->sig[0].detail), "%s", strna(detail));
        c->sig[c->n_sig].pid = pid;
        c->sig[c->n_sig].sig = sig;
        c->sig[c->n_sig].error = error;
        c->n_sig++;
}

static void on_finished(SignalStage *s, const char *process, pid_t pid, bool exited, void *userdata) {
        SigCtx *c = userdata;

        ASSERT_FALSE(c->closed);
        ASSERT_FALSE(c->done);
        ASSERT_TRUE(c->n_fin < SIG_EVENTS_MAX);
        c->fin[c->n_fin].pid = pid;
        c->fin[c->n_fin].exited = exited;
        c->n_fin++;
}

static void on_sig_done(SignalStage *s, unsigned n_signalled, unsigned n_failed, unsigned n_waited_out,
                        void *userdata) {
        SigCtx *c = userdata;

        ASSERT_FALSE(c->closed);
        ASSERT_FALSE(c->in_start); /* never from inside signal_stage_start() */
        ASSERT_FALSE(c->done);     /* exactly once */
        c->done = true;
        c->n_signalled = n_signalled;
        c->n_failed = n_failed;
        c->n_waited_out = n_waited_out;
        c->done_usec = now_monotonic_usec();
        uv_stop(c->loop);
}

static const SignalStageCallbacks sig_callbacks = {
        .on_signalled = on_signalled,
        .on_finished = on_finished,
        .on_done = on_sig_done,
};

static SignalStage *sig_start(uv_loop_t *loop, const Config *config, uint64_t until_usec, SigCtx *c) {
        SignalStage *s;

        c->loop = loop;
        ASSERT_OK(signal_stage_new(loop, config, until_usec, &sig_callbacks, c, &s));
        c->in_start = true;
        ASSERT_OK(signal_stage_start(s));
        c->in_start = false;
        ASSERT_FALSE(c->done);
        return s;
}

static const char *sig_detail(const SigCtx *c, const char *process) {
        for (size_t i = 0; i < c->n_sig; i++)
                if (streq(c->sig[i].process, process))
                        return c->sig[i].detail;
        TEST_FAIL("no on_signalled for %s", process);
}

static int sig_error(const SigCtx *c, const char *process) {
        for (size_t i = 0; i < c->n_sig; i++)
                if (streq(c->sig[i].process, process))
                        return c->sig[i].error;
        TEST_FAIL("no on_signalled for %s", process);
}

/* (a) sleep dies of SIGUSR1; wait > 0 sees the exit through the pidfd. */
static void test_signal_pidfile_exit(void) {
        _cleanup_free_ char *pidfile = tmp_path("a.pid");
        char *argv[] = { (char *) "sleep", (char *) "30", NULL };
        SigCtx c = {};
        uv_loop_t loop;
        SignalStage *s;
        Config *config;
        uint64_t start;
        pid_t pid;
        int status;

        pid = spawn_child("/bin/sleep", argv);
        write_pidfile(pidfile, pid);

        config = test_config_new();
        test_config_add_process(config, "sleeper", pidfile, NULL, SIGUSR1, 5 * USEC_PER_SEC);

        ASSERT_OK(uv_loop_init(&loop));
        start = now_monotonic_usec();
        s = sig_start(&loop, config, start + 10 * USEC_PER_SEC, &c);
        /* The Config is copied; the stage must not need it any more. */
        (void) config_free(config);

        ASSERT_EQ(c.n_sig, 1);
        ASSERT_STREQ(c.sig[0].process, "sleeper");
        ASSERT_EQ(c.sig[0].pid, pid);
        ASSERT_EQ(c.sig[0].sig, SIGUSR1);
        ASSERT_EQ(c.sig[0].error, 0);
        ASSERT_CONTAINS(c.sig[0].detail, pidfile);

        run_until(&loop, &c.done, 5 * USEC_PER_SEC, "pidfile exit");
        ASSERT_EQ(c.n_fin, 1);
        ASSERT_EQ(c.fin[0].pid, pid);
        ASSERT_TRUE(c.fin[0].exited);
        ASSERT_EQ(c.n_signalled, 1);
        ASSERT_EQ(c.n_failed, 0);
        ASSERT_EQ(c.n_waited_out, 0);
        ASSERT_TRUE(c.done_usec - start < 2 * USEC_PER_SEC);

        status = reap(pid, 5 * USEC_PER_SEC);
        ASSERT_TRUE(WIFSIGNALED(status));
        ASSERT_EQ(WTERMSIG(status), SIGUSR1);

        signal_stage_close(s);
        loop_finish(&loop);
}

/* (b) a process that traps SIGUSR1, "checkpoints" (marker file) and exits 0. */
static void test_signal_trap(void) {
        _cleanup_free_ char *base = tmp_path("b"), *pidfile = tmp_path("b.pid"),
                            *ready = tmp_path("b.ready"),
                            *mark = tmp_path("b.mark");
        SigCtx c = {};
        uv_loop_t loop;
        SignalStage *s;
        Config *config;
        pid_t pid;
        int status;

        pid = spawn_sh("trap 'echo got > \"$0.mark\"; exit 0' USR1; : > \"$0.ready\"; "
                       "while :; do sleep 0.05; done",
                       base);
        write_pidfile(pidfile, pid);
        wait_file(ready);

        config = test_config_new();
        test_config_add_process(config, "trapper", pidfile, NULL, SIGUSR1, 5 * USEC_PER_SEC);
        ASSERT_OK(uv_loop_init(&loop));
        s = sig_start(&loop, config, now_monotonic_usec() + 10 * USEC_PER_SEC, &c);

        run_until(&loop, &c.done, 5 * USEC_PER_SEC, "trap");
        ASSERT_EQ(c.n_signalled, 1);
        ASSERT_EQ(c.n_fin, 1);
        ASSERT_TRUE(c.fin[0].exited);
        ASSERT_EQ(c.n_waited_out, 0);

        status = reap(pid, 5 * USEC_PER_SEC);
        ASSERT_TRUE(WIFEXITED(status));
        ASSERT_EQ(WEXITSTATUS(status), 0);
        ASSERT_STREQ(read_file(mark), "got\n");

        signal_stage_close(s);
        loop_finish(&loop);
        (void) config_free(config);
}

static char *source_path(const char *rel) {
        const char *root = getenv("SOURCE_ROOT");
        char *p, *abs;

        /* Absolute: config requires it, and hooks run in /. */
        ASSERT_TRUE(asprintf(&p, "%s/%s", root ? root : "../..", rel) >= 0);
        abs = realpath(p, NULL);
        ASSERT_TRUE(abs);
        free(p);
        return abs;
}

/* scripts/example-trainer.py: SIGUSR1 -> checkpoint at the next step, pidfile removed, exit 0. */
static void test_signal_example_trainer(void) {
        _cleanup_free_ char *script = source_path("scripts/example-trainer.py"),
                            *pidfile = tmp_path("trainer.pid"),
                            *ckpt = tmp_path("trainer-ckpt"), *ckpt_file = NULL;
        char *argv[] = { script, (char *) "--pidfile", pidfile, (char *) "--checkpoint-dir", ckpt, NULL };
        SigCtx c = {};
        uv_loop_t loop;
        SignalStage *s;
        Config *config;
        pid_t pid;
        int status;
        DIR *d;
        struct dirent *de;

        pid = spawn_child(script, argv);
        /* The pidfile appears once the signal handlers are installed. */
        wait_file(pidfile);

        config = test_config_new();
        test_config_add_process(config, "trainer", pidfile, NULL, SIGUSR1, 10 * USEC_PER_SEC);
        ASSERT_OK(uv_loop_init(&loop));
        s = sig_start(&loop, config, now_monotonic_usec() + 20 * USEC_PER_SEC, &c);
        ASSERT_EQ(c.n_sig_ok, 1);
        run_until(&loop, &c.done, 10 * USEC_PER_SEC, "trainer");
        ASSERT_EQ(c.n_fin, 1);
        ASSERT_TRUE(c.fin[0].exited);
        ASSERT_EQ(c.n_waited_out, 0);

        status = reap(pid, 5 * USEC_PER_SEC);
        ASSERT_TRUE(WIFEXITED(status));
        ASSERT_EQ(WEXITSTATUS(status), 0);
        ASSERT_FALSE(file_exists(pidfile));

        d = opendir(ckpt);
        ASSERT_TRUE(d);
        while ((de = readdir(d)))
                if (strncmp(de->d_name, "checkpoint-", strlen("checkpoint-")) == 0) {
                        ASSERT_TRUE(!ckpt_file);
                        ASSERT_TRUE(asprintf(&ckpt_file, "%s/%s", ckpt, de->d_name) >= 0);
                } else /* no temporary file left behind */
                        ASSERT_TRUE(streq(de->d_name, ".") || streq(de->d_name, ".."));
        closedir(d);
        ASSERT_TRUE(ckpt_file);
        ASSERT_CONTAINS(read_file(ckpt_file), "\"step\": ");
        ASSERT_CONTAINS(read_file(ckpt_file), "\"weights\": ");

        signal_stage_close(s);
        loop_finish(&loop);
        (void) config_free(config);
}

/* (c) match = finds two processes by a token in their argv; a pattern nobody has is an error. */
static void test_signal_match(void) {
        char token[64], none[64];
        SigCtx c = {};
        uv_loop_t loop;
        SignalStage *s;
        Config *config;
        pid_t pids[2];

        (void) snprintf(token, sizeof(token), "spotwatch-test-match-%d", (int) getpid());
        (void) snprintf(none, sizeof(none), "spotwatch-test-nobody-%d", (int) getpid());
        for (size_t i = 0; i < 2; i++) {
                char *argv[] = { token, (char *) "30", NULL };

                pids[i] = spawn_child("/bin/sleep", argv);
        }
        for (size_t i = 0; i < 2; i++)
                wait_cmdline(pids[i], token);

        config = test_config_new();
        test_config_add_process(config, "two", NULL, token, SIGUSR1, 5 * USEC_PER_SEC);
        test_config_add_process(config, "none", NULL, none, SIGUSR1, 5 * USEC_PER_SEC);
        ASSERT_OK(uv_loop_init(&loop));
        s = sig_start(&loop, config, now_monotonic_usec() + 10 * USEC_PER_SEC, &c);

        ASSERT_EQ(c.n_sig, 3);
        /* Reported in config order, the matches by pid. */
        ASSERT_STREQ(c.sig[0].process, "two");
        ASSERT_STREQ(c.sig[1].process, "two");
        ASSERT_EQ(c.sig[0].error, 0);
        ASSERT_EQ(c.sig[1].error, 0);
        ASSERT_EQ(c.sig[0].pid, MIN(pids[0], pids[1]));
        ASSERT_EQ(c.sig[1].pid, MAX(pids[0], pids[1]));
        ASSERT_CONTAINS(c.sig[0].detail, token);
        ASSERT_EQ(sig_error(&c, "none"), -ESRCH);
        ASSERT_CONTAINS(sig_detail(&c, "none"), "no process matches");
        ASSERT_CONTAINS(sig_detail(&c, "none"), none);

        run_until(&loop, &c.done, 5 * USEC_PER_SEC, "match");
        ASSERT_EQ(c.n_signalled, 2);
        ASSERT_EQ(c.n_failed, 1);
        ASSERT_EQ(c.n_fin, 2);
        ASSERT_TRUE(c.fin[0].exited && c.fin[1].exited);
        for (size_t i = 0; i < 2; i++) {
                int status = reap(pids[i], 5 * USEC_PER_SEC);

                ASSERT_TRUE(WIFSIGNALED(status));
                ASSERT_EQ(WTERMSIG(status), SIGUSR1);
        }

        signal_stage_close(s);
        loop_finish(&loop);
        (void) config_free(config);
}

/* The SPEC's fan-out: 1000 matched processes signalled in one synchronous pass. */
#define FANOUT 1000

static void test_signal_fanout(void) {
        _cleanup_free_ pid_t *pids = calloc(FANOUT, sizeof(pid_t));
        char token[64];
        SigCtx c = {};
        uv_loop_t loop;
        SignalStage *s;
        Config *config;
        uint64_t t0, t1;

        ASSERT_TRUE(pids);
        (void) snprintf(token, sizeof(token), "spotwatch-test-fanout-%d", (int) getpid());
        for (size_t i = 0; i < FANOUT; i++) {
                char *argv[] = { token, (char *) "30", NULL };

                pids[i] = spawn_child("/bin/sleep", argv);
        }
        for (size_t i = 0; i < FANOUT; i++)
                wait_cmdline(pids[i], token);

        config = test_config_new();
        test_config_add_process(config, "fanout", NULL, token, SIGUSR1, 0);
        ASSERT_OK(uv_loop_init(&loop));
        c.loop = &loop;
        ASSERT_OK(signal_stage_new(&loop, config, now_monotonic_usec() + 10 * USEC_PER_SEC, &sig_callbacks,
                                   &c, &s));
        c.in_start = true;
        t0 = now_monotonic_usec();
        ASSERT_OK(signal_stage_start(s));
        t1 = now_monotonic_usec();
        c.in_start = false;
        /*
         * Includes the /proc scan, and the reports after the last signal,
         * during which the dying processes take the CPU from us.
         */
        fprintf(stderr, "   %d processes: signal_stage_start() took %.2f ms\n", FANOUT,
                (double) (t1 - t0) / 1000.0);
        ASSERT_EQ(c.n_sig_ok, FANOUT);
        /* The SPEC says 20 ms; leave room for sanitizers and a busy build machine. */
        ASSERT_TRUE(t1 - t0 < 2 * USEC_PER_SEC);

        run_until(&loop, &c.done, 5 * USEC_PER_SEC, "fanout");
        ASSERT_EQ(c.n_signalled, FANOUT);
        ASSERT_EQ(c.n_failed, 0);
        for (size_t i = 0; i < FANOUT; i++) {
                int status = reap(pids[i], 5 * USEC_PER_SEC);

                ASSERT_TRUE(WIFSIGNALED(status));
                ASSERT_EQ(WTERMSIG(status), SIGUSR1);
        }

        signal_stage_close(s);
        loop_finish(&loop);
        (void) config_free(config);
}

/* (d) bad, stale and dangerous pidfiles: each an error with a detail, nothing signalled. */
static void test_signal_pidfile_bad(void) {
        _cleanup_free_ char *dir = tmp_path("d"), *stale = tmp_path("d/stale.pid"),
                            *old = tmp_path("d/old.pid"),
                            *self = tmp_path("d/self.pid"), *missing = tmp_path("d/missing.pid");
        static const struct {
                const char *name, *content, *detail;
        } contents[] = {
                { "empty", "", "does not contain a PID" },
                { "word", "abc\n", "does not contain a PID" },
                { "negative", "-5", "does not contain a PID" },
                { "trailing", "12abc", "does not contain a PID" },
                { "huge", "99999999999", "does not contain a PID" },
                { "two", "12 13", "does not contain a PID" },
                { "init", "1\n", "PID 1 is not a process to signal" },
                { "zero", "0", "PID 0 is not a process to signal" },
        };
        char *sleep_argv[] = { (char *) "sleep", (char *) "30", NULL };
        char *true_argv[] = { (char *) "true", NULL };
        struct timespec times[2];
        SigCtx c = {};
        uv_loop_t loop;
        SignalStage *s;
        Config *config;
        pid_t reaped, alive;
        int status;

        ASSERT_EQ(mkdir(dir, 0755), 0);
        config = test_config_new();

        for (size_t i = 0; i < ELEMENTSOF(contents); i++) {
                _cleanup_free_ char *p = NULL;

                ASSERT_TRUE(asprintf(&p, "%s/%s.pid", dir, contents[i].name) >= 0);
                write_file(p, contents[i].content);
                test_config_add_process(config, contents[i].name, p, NULL, SIGUSR1, 0);
        }

        test_config_add_process(config, "missing", missing, NULL, SIGUSR1, 0);
        test_config_add_process(config, "directory", dir, NULL, SIGUSR1, 0);

        write_pidfile(self, getpid());
        test_config_add_process(config, "self", self, NULL, SIGUSR1, 0);

        /* The pid of a child that is gone and reaped. */
        reaped = spawn_child("/bin/true", true_argv);
        (void) reap(reaped, 5 * USEC_PER_SEC);
        write_pidfile(stale, reaped);
        test_config_add_process(config, "stale", stale, NULL, SIGUSR1, 0);

        /*
         * A live process named by a pidfile written long before it started:
         * what a reused PID looks like. It must not be signalled.
         */
        alive = spawn_child("/bin/sleep", sleep_argv);
        write_pidfile(old, alive);
        times[0] = times[1] = (struct timespec) { .tv_sec = time(NULL) - 3600 };
        ASSERT_EQ(utimensat(AT_FDCWD, old, times, 0), 0);
        test_config_add_process(config, "old", old, NULL, SIGUSR1, 0);

        ASSERT_OK(uv_loop_init(&loop));
        s = sig_start(&loop, config, now_monotonic_usec() + 10 * USEC_PER_SEC, &c);
        run_until(&loop, &c.done, 5 * USEC_PER_SEC, "bad pidfiles");

        ASSERT_EQ(c.n_signalled, 0);
        ASSERT_EQ(c.n_failed, config->n_processes);
        ASSERT_EQ(c.n_sig, config->n_processes);
        for (size_t i = 0; i < ELEMENTSOF(contents); i++) {
                ASSERT_EQ(sig_error(&c, contents[i].name), -EINVAL);
                ASSERT_CONTAINS(sig_detail(&c, contents[i].name), contents[i].detail);
        }
        ASSERT_EQ(sig_error(&c, "missing"), -ENOENT);
        {
                _cleanup_free_ char *expect = NULL;

                ASSERT_TRUE(asprintf(&expect, "pidfile %s: No such file or directory", missing) >= 0);
                ASSERT_STREQ(sig_detail(&c, "missing"), expect);
        }
        ASSERT_EQ(sig_error(&c, "directory"), -EINVAL);
        ASSERT_CONTAINS(sig_detail(&c, "directory"), "not a regular file");
        ASSERT_EQ(sig_error(&c, "self"), -EINVAL);
        ASSERT_CONTAINS(sig_detail(&c, "self"), "spotwatchd itself");
        ASSERT_EQ(sig_error(&c, "stale"), -ESRCH);
        ASSERT_CONTAINS(sig_detail(&c, "stale"), "does not exist");
        ASSERT_EQ(sig_error(&c, "old"), -ESRCH);
        ASSERT_CONTAINS(sig_detail(&c, "old"), "stale");
        for (size_t i = 0; i < c.n_sig; i++)
                ASSERT_EQ(c.sig[i].sig, SIGUSR1);

        /* Not signalled: it still runs, and dies of our SIGKILL, not of SIGUSR1. */
        ASSERT_TRUE(still_running(alive));
        (void) kill(alive, SIGKILL);
        status = reap(alive, 5 * USEC_PER_SEC);
        ASSERT_TRUE(WIFSIGNALED(status));
        ASSERT_EQ(WTERMSIG(status), SIGKILL);

        signal_stage_close(s);
        loop_finish(&loop);
        (void) config_free(config);
}

/* A shell that ignores SIGUSR1, ready once the trap is set. */
static pid_t spawn_ignorer(const char *name) {
        _cleanup_free_ char *base = tmp_path(name), *ready = NULL;
        pid_t pid;

        ASSERT_TRUE(asprintf(&ready, "%s.ready", base) >= 0);
        (void) unlink(ready); /* from an earlier run of the same name */
        pid = spawn_sh("trap '' USR1; : > \"$0.ready\"; while :; do sleep 0.05; done", base);
        wait_file(ready);
        return pid;
}

/* (e) the wait runs out: at wait =, or at the stage deadline when that is earlier. */
static void test_signal_wait_timeout(void) {
        static const struct {
                uint64_t wait_usec, until_usec;
        } cases[] = {
                { 300 * USEC_PER_MSEC, 10 * USEC_PER_SEC },
                { 10 * USEC_PER_SEC, 300 * USEC_PER_MSEC },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *pidfile = tmp_path("e.pid");
                SigCtx c = {};
                uv_loop_t loop;
                SignalStage *s;
                Config *config;
                uint64_t start, took;
                pid_t pid;

                pid = spawn_ignorer("e");
                write_pidfile(pidfile, pid);
                config = test_config_new();
                test_config_add_process(config, "stubborn", pidfile, NULL, SIGUSR1, cases[i].wait_usec);

                ASSERT_OK(uv_loop_init(&loop));
                start = now_monotonic_usec();
                s = sig_start(&loop, config, start + cases[i].until_usec, &c);
                run_until(&loop, &c.done, 5 * USEC_PER_SEC, "wait timeout");

                took = c.done_usec - start;
                ASSERT_EQ(c.n_signalled, 1);
                ASSERT_EQ(c.n_waited_out, 1);
                ASSERT_EQ(c.n_fin, 0);
                ASSERT_TRUE(took >= 290 * USEC_PER_MSEC);
                ASSERT_TRUE(took < 1500 * USEC_PER_MSEC);
                ASSERT_TRUE(still_running(pid));

                signal_stage_close(s);
                loop_finish(&loop);
                kill_and_reap(pid);
                (void) config_free(config);
                (void) unlink(pidfile);
        }
}

typedef struct MarkCtx {
        SignalStage *stage;
        pid_t pid;
} MarkCtx;

static void mark_cb(uv_timer_t *t) {
        MarkCtx *m = t->data;

        ASSERT_ERR(signal_stage_mark_done(m->stage, 1), ESRCH);
        ASSERT_OK(signal_stage_mark_done(m->stage, m->pid));
        /* Again: still one of ours, nothing left to end. */
        ASSERT_OK(signal_stage_mark_done(m->stage, m->pid));
        uv_close((uv_handle_t *) t, NULL);
}

/* (f) `spotwatchctl done` ends the wait of a process that does not exit. */
static void test_signal_mark_done(void) {
        _cleanup_free_ char *pidfile = tmp_path("f.pid");
        SigCtx c = {};
        MarkCtx m = {};
        uv_loop_t loop;
        uv_timer_t t;
        Config *config;
        uint64_t start;
        pid_t pid;

        pid = spawn_ignorer("f");
        write_pidfile(pidfile, pid);
        config = test_config_new();
        test_config_add_process(config, "stubborn", pidfile, NULL, SIGUSR1, 10 * USEC_PER_SEC);

        ASSERT_OK(uv_loop_init(&loop));
        start = now_monotonic_usec();
        m.stage = sig_start(&loop, config, start + 20 * USEC_PER_SEC, &c);
        m.pid = pid;
        ASSERT_OK(uv_timer_init(&loop, &t));
        t.data = &m;
        ASSERT_OK(uv_timer_start(&t, mark_cb, 50, 0));

        run_until(&loop, &c.done, 5 * USEC_PER_SEC, "mark done");
        ASSERT_EQ(c.n_fin, 1);
        ASSERT_EQ(c.fin[0].pid, pid);
        ASSERT_FALSE(c.fin[0].exited);
        ASSERT_EQ(c.n_signalled, 1);
        ASSERT_EQ(c.n_waited_out, 0);
        ASSERT_TRUE(c.done_usec - start < 2 * USEC_PER_SEC);

        signal_stage_close(m.stage);
        loop_finish(&loop);
        kill_and_reap(pid);
        (void) config_free(config);
}

/* Closing mid-wait: no callbacks after, nothing left on the loop; an empty config is done at once. */
static void test_signal_close_and_empty(void) {
        _cleanup_free_ char *pidfile = tmp_path("g.pid");
        SigCtx c = {}, e = {};
        uv_loop_t loop;
        SignalStage *s;
        Config *config, *empty;
        pid_t pid;

        pid = spawn_ignorer("g");
        write_pidfile(pidfile, pid);
        config = test_config_new();
        test_config_add_process(config, "stubborn", pidfile, NULL, SIGUSR1, 10 * USEC_PER_SEC);

        ASSERT_OK(uv_loop_init(&loop));
        s = sig_start(&loop, config, now_monotonic_usec() + 20 * USEC_PER_SEC, &c);
        ASSERT_EQ(c.n_sig_ok, 1);
        (void) uv_run(&loop, UV_RUN_NOWAIT);
        signal_stage_close(s);
        c.closed = true;
        loop_finish(&loop);
        ASSERT_FALSE(c.done);
        kill_and_reap(pid);

        empty = test_config_new();
        ASSERT_OK(uv_loop_init(&loop));
        s = sig_start(&loop, empty, now_monotonic_usec() + USEC_PER_SEC, &e);
        ASSERT_ERR(signal_stage_start(s), EBUSY);
        run_until(&loop, &e.done, USEC_PER_SEC, "empty");
        ASSERT_EQ(e.n_signalled + e.n_failed + e.n_waited_out, 0);
        signal_stage_close(s);
        loop_finish(&loop);

        (void) config_free(config);
        (void) config_free(empty);
}

/* ---- hook stage --------------------------------------------------------- */

#define HOOK_EVENTS_MAX 32
#define HOOK_LINES_MAX 2048

typedef struct HookEvent {
        char hook[64];
        pid_t pid;
        int exit_status, term_signal, error;
        bool timed_out;
        uint64_t duration_usec, started_usec, exited_usec;
} HookEvent;

typedef struct HookCtx {
        uv_loop_t *loop; /* stopped at on_done, so run_until() returns at once */
        bool in_start, done, closed;
        unsigned n_ok, n_failed;
        uint64_t done_usec;
        size_t n_ev;
        HookEvent ev[HOOK_EVENTS_MAX];
        size_t n_lines, n_lines_total;
        struct {
                char hook[64];
                const char *stream;
                char *line;
        } lines[HOOK_LINES_MAX];
        HookStage *stage;
} HookCtx;

static HookEvent *hook_event(HookCtx *c, const char *hook) {
        for (size_t i = 0; i < c->n_ev; i++)
                if (streq(c->ev[i].hook, hook))
                        return &c->ev[i];
        ASSERT_TRUE(c->n_ev < HOOK_EVENTS_MAX);
        (void) snprintf(c->ev[c->n_ev].hook, sizeof(c->ev[0].hook), "%s", hook);
        return &c->ev[c->n_ev++];
}

static void proc_stat_ids(pid_t pid, long *ret_pgrp, long *ret_session) {
        char path[64], *s, *p;
        char state;

        (void) snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        s = read_file(path);
        ASSERT_TRUE(s);
        p = strrchr(s, ')');
        ASSERT_TRUE(p);
        ASSERT_EQ(sscanf(p + 1, " %c %*d %ld %ld", &state, ret_pgrp, ret_session), 3);
}

static void on_started(HookStage *s, const char *hook, pid_t pid, void *userdata) {
        HookCtx *c = userdata;
        HookEvent *e = hook_event(c, hook);
        long pgrp, session;

        ASSERT_FALSE(c->closed);
        ASSERT_FALSE(c->in_start);
        ASSERT_TRUE(pid > 0);
        e->pid = pid;
        e->started_usec = now_monotonic_usec();

        /* Its own session and process group, so the timeout can kill all of it. */
        proc_stat_ids(pid, &pgrp, &session);
        ASSERT_EQ(pgrp, pid);
        ASSERT_EQ(session, pid);
}

static void on_output(HookStage *s, const char *hook, pid_t pid, const char *stream, const char *line,
                      void *userdata) {
        HookCtx *c = userdata;
        size_t n;

        ASSERT_FALSE(c->closed);
        ASSERT_TRUE(strlen(line) <= 4096);
        ASSERT_TRUE(streq(stream, "stdout") || streq(stream, "stderr"));
        c->n_lines_total++;
        n = c->n_lines;
        if (n >= HOOK_LINES_MAX)
                return;
        (void) snprintf(c->lines[n].hook, sizeof(c->lines[0].hook), "%s", hook);
        c->lines[n].stream = streq(stream, "stdout") ? "stdout" : "stderr";
        c->lines[n].line = strdup(line);
        ASSERT_TRUE(c->lines[n].line);
        c->n_lines++;
}

static void on_exited(HookStage *s, const char *hook, pid_t pid, int exit_status, int term_signal,
                      bool timed_out, int error, uint64_t duration_usec, void *userdata) {
        HookCtx *c = userdata;
        HookEvent *e = hook_event(c, hook);

        ASSERT_FALSE(c->closed);
        ASSERT_FALSE(c->in_start);
        ASSERT_FALSE(c->done);
        ASSERT_EQ(e->exited_usec, 0); /* once per hook */
        ASSERT_EQ(e->pid, pid);
        e->exit_status = exit_status;
        e->term_signal = term_signal;
        e->timed_out = timed_out;
        e->error = error;
        e->duration_usec = duration_usec;
        e->exited_usec = now_monotonic_usec();
}

static void on_hook_done(HookStage *s, unsigned n_ok, unsigned n_failed, void *userdata) {
        HookCtx *c = userdata;

        ASSERT_FALSE(c->closed);
        ASSERT_FALSE(c->in_start);
        ASSERT_FALSE(c->done);
        c->done = true;
        c->n_ok = n_ok;
        c->n_failed = n_failed;
        c->done_usec = now_monotonic_usec();
        uv_stop(c->loop);
}

static const HookStageCallbacks hook_callbacks = {
        .on_started = on_started,
        .on_output = on_output,
        .on_exited = on_exited,
        .on_done = on_hook_done,
};

static void hook_ctx_free(HookCtx *c) {
        for (size_t i = 0; i < c->n_lines; i++)
                free(c->lines[i].line);
        free(c);
}

/* Run the hooks of @config to the end of the stage, then close it and the loop. */
static HookCtx *hooks_run(const Config *config, char *const *env, uint64_t until_usec,
                          uint64_t timeout_usec) {
        HookCtx *c = calloc(1, sizeof(HookCtx));
        uv_loop_t loop;

        ASSERT_TRUE(c);
        ASSERT_OK(uv_loop_init(&loop));
        c->loop = &loop;
        ASSERT_OK(hook_stage_new(&loop, config->hooks, config->n_hooks, env, until_usec, &hook_callbacks, c, &c->stage));
        c->in_start = true;
        ASSERT_OK(hook_stage_start(c->stage));
        c->in_start = false;
        ASSERT_FALSE(c->done);
        ASSERT_ERR(hook_stage_start(c->stage), EBUSY);

        run_until(&loop, &c->done, timeout_usec, "hooks");
        hook_stage_close(c->stage);
        c->stage = NULL;
        loop_finish(&loop);
        return c;
}

/* The lines of @hook on @stream, joined with '|'. */
static char *hook_lines(const HookCtx *c, const char *hook, const char *stream) {
        static char buf[65536];
        size_t n = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < c->n_lines; i++) {
                if (!streq(c->lines[i].hook, hook) || !streq(c->lines[i].stream, stream))
                        continue;
                n += (size_t) snprintf(buf + n, sizeof(buf) - n, "%s%s", n > 0 ? "|" : "", c->lines[i].line);
                ASSERT_TRUE(n < sizeof(buf));
        }
        return buf;
}

static const char *hook_first_line(const HookCtx *c, const char *hook, const char *stream) {
        for (size_t i = 0; i < c->n_lines; i++)
                if (streq(c->lines[i].hook, hook) && streq(c->lines[i].stream, stream))
                        return c->lines[i].line;
        TEST_FAIL("no %s line from hook %s", stream, hook);
}

/* (g) same order in parallel, a higher order after them, each in its own process group. */
static void test_hook_groups(void) {
        Config *config = test_config_new();
        HookEvent *a, *b, *z;
        HookCtx *c;

        /* Listed out of order on purpose; the stage runs by order. */
        test_config_add_hook(config, "late", 20, 5 * USEC_PER_SEC, NULL, "/bin/sleep", "0.1", NULL);
        test_config_add_hook(config, "a", 10, 5 * USEC_PER_SEC, NULL, "/bin/sleep", "0.3", NULL);
        test_config_add_hook(config, "b", 10, 5 * USEC_PER_SEC, NULL, "/bin/sleep", "0.3", NULL);

        c = hooks_run(config, NULL, now_monotonic_usec() + 10 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        a = hook_event(c, "a");
        b = hook_event(c, "b");
        z = hook_event(c, "late");
        ASSERT_EQ(c->n_ev, 3);
        ASSERT_EQ(c->n_ok, 3);
        ASSERT_EQ(c->n_failed, 0);
        ASSERT_EQ(a->exit_status, 0);
        ASSERT_EQ(b->exit_status, 0);
        ASSERT_EQ(z->exit_status, 0);
        /* a and b overlapped: each started before the other ended. */
        ASSERT_TRUE(a->started_usec < b->exited_usec);
        ASSERT_TRUE(b->started_usec < a->exited_usec);
        /* late started after both ended. */
        ASSERT_TRUE(z->started_usec >= a->exited_usec);
        ASSERT_TRUE(z->started_usec >= b->exited_usec);
        ASSERT_TRUE(a->duration_usec >= 290 * USEC_PER_MSEC);

        hook_ctx_free(c);
        (void) config_free(config);
}

/* (h) stdout and stderr lines in order, CRLF, an unterminated last line, a cut long line. */
static void test_hook_output(void) {
        Config *config = test_config_new();
        const char *cut;
        HookCtx *c;

        test_config_add_hook(config, "talk", 10, 5 * USEC_PER_SEC, NULL, "/bin/sh", "-c",
                             "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'crlf\\r\\n'; "
                             "echo; head -c 10000 /dev/zero | tr '\\0' x; echo; echo after; printf partial",
                             NULL);
        c = hooks_run(config, NULL, now_monotonic_usec() + 10 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        ASSERT_EQ(c->n_ok, 1);
        ASSERT_STREQ(hook_lines(c, "talk", "stderr"), "err1|err2");

        /* The long line, by itself. */
        cut = NULL;
        for (size_t i = 0; i < c->n_lines; i++)
                if (c->lines[i].line[0] == 'x')
                        cut = c->lines[i].line;
        ASSERT_TRUE(cut);
        ASSERT_EQ(strlen(cut), 4096);
        ASSERT_CONTAINS(cut, "[...cut]");
        ASSERT_EQ(strspn(cut, "x"), 4096 - strlen(" [...cut]"));

        {
                _cleanup_free_ char *expect = NULL;

                ASSERT_TRUE(asprintf(&expect, "out1|out2|crlf||%s|after|partial", cut) >= 0);
                ASSERT_STREQ(hook_lines(c, "talk", "stdout"), expect);
        }

        hook_ctx_free(c);
        (void) config_free(config);
}

/* (i) a hung hook with a background grandchild: at the timeout the whole group dies. */
static void test_hook_timeout_kills_group(void) {
        Config *config = test_config_new();
        HookEvent *e;
        HookCtx *c;
        pid_t grandchild;

        test_config_add_hook(config, "hang", 10, 300 * USEC_PER_MSEC, NULL, "/bin/sh", "-c",
                             "sleep 100 & echo $!; sleep 100", NULL);
        c = hooks_run(config, NULL, now_monotonic_usec() + 10 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        e = hook_event(c, "hang");
        ASSERT_TRUE(e->timed_out);
        ASSERT_EQ(e->exit_status, -1);
        ASSERT_EQ(e->term_signal, SIGKILL);
        ASSERT_EQ(e->error, 0);
        ASSERT_TRUE(e->duration_usec >= 290 * USEC_PER_MSEC);
        ASSERT_TRUE(e->duration_usec < 1500 * USEC_PER_MSEC);
        ASSERT_EQ(c->n_ok, 0);
        ASSERT_EQ(c->n_failed, 1);

        grandchild = (pid_t) atoi(hook_first_line(c, "hang", "stdout"));
        ASSERT_TRUE(grandchild > 1);
        wait_gone(grandchild);

        hook_ctx_free(c);
        (void) config_free(config);
}

/* (i) the hook exits, a background child keeps its stdout: short grace, then the group is killed. */
static void test_hook_pipe_held(void) {
        Config *config = test_config_new();
        HookEvent *e;
        HookCtx *c;
        pid_t grandchild;

        test_config_add_hook(config, "leak", 10, 10 * USEC_PER_SEC, NULL, "/bin/sh", "-c",
                             "sleep 100 & echo $!; exit 0", NULL);
        c = hooks_run(config, NULL, now_monotonic_usec() + 20 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        e = hook_event(c, "leak");
        ASSERT_FALSE(e->timed_out);
        ASSERT_EQ(e->exit_status, 0);
        ASSERT_EQ(e->term_signal, 0);
        ASSERT_TRUE(e->duration_usec >= 190 * USEC_PER_MSEC);
        ASSERT_TRUE(e->duration_usec < 1500 * USEC_PER_MSEC);
        ASSERT_EQ(c->n_ok, 1);

        grandchild = (pid_t) atoi(hook_first_line(c, "leak", "stdout"));
        ASSERT_TRUE(grandchild > 1);
        wait_gone(grandchild);

        hook_ctx_free(c);
        (void) config_free(config);
}

/*
 * (j) the environment: ours minus stale SPOTWATCH_* of the plan, plus the
 * stage's; an operator's own SPOTWATCH_* passes; cwd /, stdin /dev/null.
 */
static void test_hook_environment(void) {
        char *env[] = { (char *) "SPOTWATCH_EVENT=terminate", (char *) "SPOTWATCH_CLOUD=aws",
                        (char *) "SPOTWATCH_DEADLINE=1700000000", NULL };
        Config *config = test_config_new();
        const char *out;
        HookCtx *c;

        ASSERT_EQ(setenv("SPOTWATCH_INSTANCE_ID", "i-stale", 1), 0);
        ASSERT_EQ(setenv("SPOTWATCH_EVENT", "old", 1), 0);
        ASSERT_EQ(setenv("SPOTWATCH_OPERATOR", "kept", 1), 0);
        test_config_add_hook(config, "env", 10, 5 * USEC_PER_SEC, NULL, "/bin/sh", "-c",
                             "env | sort; pwd; readlink /proc/self/fd/0; cat; echo end", NULL);
        c = hooks_run(config, env, now_monotonic_usec() + 10 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        (void) unsetenv("SPOTWATCH_INSTANCE_ID");
        (void) unsetenv("SPOTWATCH_EVENT");
        (void) unsetenv("SPOTWATCH_OPERATOR");

        ASSERT_EQ(c->n_ok, 1);
        out = hook_lines(c, "env", "stdout");
        ASSERT_CONTAINS(out,
                        "|SPOTWATCH_CLOUD=aws|SPOTWATCH_DEADLINE=1700000000|SPOTWATCH_EVENT=terminate|"
                        "SPOTWATCH_OPERATOR=kept|");
        ASSERT_TRUE(!strstr(out, "SPOTWATCH_INSTANCE_ID"));
        ASSERT_TRUE(!strstr(out, "SPOTWATCH_EVENT=old"));
        ASSERT_CONTAINS(out, "PATH=");
        ASSERT_CONTAINS(out, "|/|/dev/null|end");

        hook_ctx_free(c);
        (void) config_free(config);
}

/* (j) scripts/example-hook, as the demo runs it. */
static void test_hook_example_script(void) {
        _cleanup_free_ char *script = NULL, *log = tmp_path("hook.log"), *ckpt = tmp_path("ckpt"),
                            *model = tmp_path("ckpt/model-0042.json"), *env_log = NULL, *env_ckpt = NULL;
        char *env[] = { (char *) "SPOTWATCH_EVENT=terminate", (char *) "SPOTWATCH_CLOUD=gcp", NULL, NULL,
                        NULL };
        Config *config = test_config_new();
        const char *out;
        HookCtx *c;

        script = source_path("scripts/example-hook");
        ASSERT_TRUE(asprintf(&env_log, "SPOTWATCH_HOOK_LOG=%s", log) >= 0);
        ASSERT_TRUE(asprintf(&env_ckpt, "SPOTWATCH_CHECKPOINT_DIR=%s", ckpt) >= 0);
        env[2] = env_log;
        env[3] = env_ckpt;
        ASSERT_EQ(mkdir(ckpt, 0755), 0);
        write_file(model, "{}\n");

        test_config_add_hook(config, "example", 10, 5 * USEC_PER_SEC, NULL, script, NULL);
        c = hooks_run(config, env, now_monotonic_usec() + 10 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        ASSERT_EQ(c->n_ok, 1);
        out = hook_lines(c, "example", "stdout");
        ASSERT_CONTAINS(out, "SPOTWATCH_EVENT=terminate");
        ASSERT_CONTAINS(out, "SPOTWATCH_CLOUD=gcp");
        ASSERT_CONTAINS(out, "model-0042.json");
        ASSERT_CONTAINS(read_file(log), "terminate");

        hook_ctx_free(c);
        (void) config_free(config);
}

/* (k) a hook printing without end: capped, one truncation note, killed at its timeout, bounded memory. */
static void test_hook_endless_output(void) {
        Config *config = test_config_new();
        unsigned n_y = 0, n_note = 0;
        long rss_before, rss_after;
        HookEvent *e;
        HookCtx *c;

        test_config_add_hook(config, "yes", 10, 500 * USEC_PER_MSEC, NULL, "/usr/bin/yes", NULL);
        /* Long lines this time: the byte cap ends it before the line cap. */
        test_config_add_hook(config, "wide", 20, 5 * USEC_PER_SEC, NULL, "/bin/sh", "-c",
                             "yes \"$(head -c 999 /dev/zero | tr '\\0' w)\" | head -n 300", NULL);

        rss_before = rss_kib();
        c = hooks_run(config, NULL, now_monotonic_usec() + 10 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        rss_after = rss_kib();

        e = hook_event(c, "yes");
        ASSERT_TRUE(e->timed_out);
        ASSERT_EQ(e->term_signal, SIGKILL);
        ASSERT_TRUE(e->duration_usec < 1500 * USEC_PER_MSEC);
        for (size_t i = 0; i < c->n_lines; i++) {
                if (!streq(c->lines[i].hook, "yes"))
                        continue;
                if (streq(c->lines[i].line, "y"))
                        n_y++;
                else {
                        ASSERT_CONTAINS(c->lines[i].line, "output truncated after 1000 lines");
                        n_note++;
                }
        }
        ASSERT_EQ(n_y, 1000);
        ASSERT_EQ(n_note, 1);

        e = hook_event(c, "wide");
        ASSERT_FALSE(e->timed_out);
        ASSERT_EQ(e->exit_status, 0);
        n_y = n_note = 0;
        for (size_t i = 0; i < c->n_lines; i++) {
                if (!streq(c->lines[i].hook, "wide"))
                        continue;
                if (c->lines[i].line[0] == 'w')
                        n_y++;
                else {
                        ASSERT_CONTAINS(c->lines[i].line, "output truncated after 262144 bytes");
                        n_note++;
                }
        }
        ASSERT_EQ(n_y, 262144 / 1000);
        ASSERT_EQ(n_note, 1);
        ASSERT_EQ(c->n_ok, 1);
        ASSERT_EQ(c->n_failed, 1);

        fprintf(stderr, "   RSS %ld KiB -> %ld KiB\n", rss_before, rss_after);
        ASSERT_TRUE(rss_after - rss_before < 16 * 1024);

        hook_ctx_free(c);
        (void) config_free(config);
}

/* (l) exit 3, missing, not executable, unknown user, killed: all failed; the next group still runs. */
static void test_hook_failures(void) {
        _cleanup_free_ char *noexec = tmp_path("noexec.sh");
        Config *config = test_config_new();
        HookEvent *e;
        HookCtx *c;

        write_file(noexec, "#!/bin/sh\nexit 0\n");
        ASSERT_EQ(chmod(noexec, 0644), 0);

        test_config_add_hook(config, "exit3", 10, 5 * USEC_PER_SEC, NULL, "/bin/sh", "-c", "exit 3", NULL);
        test_config_add_hook(config, "missing", 10, 5 * USEC_PER_SEC, NULL, "/nonexistent/spotwatch-hook",
                             NULL);
        test_config_add_hook(config, "noexec", 10, 5 * USEC_PER_SEC, NULL, noexec, NULL);
        test_config_add_hook(config, "nouser", 10, 5 * USEC_PER_SEC, "spotwatch-no-such-user", "/bin/true",
                             NULL);
        test_config_add_hook(config, "crash", 10, 5 * USEC_PER_SEC, NULL, "/bin/sh", "-c", "kill -TERM $$",
                             NULL);
        test_config_add_hook(config, "next", 20, 5 * USEC_PER_SEC, NULL, "/bin/true", NULL);

        c = hooks_run(config, NULL, now_monotonic_usec() + 10 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        ASSERT_EQ(c->n_ev, 6);
        ASSERT_EQ(c->n_ok, 1);
        ASSERT_EQ(c->n_failed, 5);

        e = hook_event(c, "exit3");
        ASSERT_EQ(e->exit_status, 3);
        ASSERT_EQ(e->error, 0);
        ASSERT_FALSE(e->timed_out);
        e = hook_event(c, "missing");
        ASSERT_EQ(e->error, -ENOENT);
        ASSERT_EQ(e->pid, 0);
        e = hook_event(c, "noexec");
        ASSERT_EQ(e->error, -EACCES);
        e = hook_event(c, "nouser");
        ASSERT_EQ(e->error, -ESRCH);
        e = hook_event(c, "crash");
        ASSERT_EQ(e->exit_status, -1);
        ASSERT_EQ(e->term_signal, SIGTERM);
        ASSERT_FALSE(e->timed_out);
        e = hook_event(c, "next");
        ASSERT_EQ(e->exit_status, 0);
        ASSERT_TRUE(e->started_usec >= hook_event(c, "exit3")->exited_usec);

        hook_ctx_free(c);
        (void) config_free(config);
}

/*
 * (m) the deadline: already past, nothing runs; reached mid-stage, the
 * running hook dies and the rest is skipped.
 */
static void test_hook_deadline(void) {
        Config *config = test_config_new();
        uint64_t start;
        HookEvent *e;
        HookCtx *c;

        test_config_add_hook(config, "first", 10, 30 * USEC_PER_SEC, NULL, "/bin/sleep", "10", NULL);
        test_config_add_hook(config, "second", 20, 30 * USEC_PER_SEC, NULL, "/bin/true", NULL);

        c = hooks_run(config, NULL, now_monotonic_usec() - 1, 5 * USEC_PER_SEC);
        ASSERT_EQ(c->n_ev, 2);
        ASSERT_EQ(c->n_ok, 0);
        ASSERT_EQ(c->n_failed, 2);
        for (size_t i = 0; i < 2; i++) {
                ASSERT_EQ(c->ev[i].error, -ETIME);
                ASSERT_TRUE(c->ev[i].timed_out);
                ASSERT_EQ(c->ev[i].pid, 0);
                ASSERT_EQ(c->ev[i].started_usec, 0);
        }
        hook_ctx_free(c);

        start = now_monotonic_usec();
        c = hooks_run(config, NULL, start + 300 * USEC_PER_MSEC, 5 * USEC_PER_SEC);
        e = hook_event(c, "first");
        ASSERT_TRUE(e->timed_out);
        ASSERT_EQ(e->term_signal, SIGKILL);
        ASSERT_EQ(e->error, 0);
        e = hook_event(c, "second");
        ASSERT_EQ(e->error, -ETIME);
        ASSERT_EQ(e->started_usec, 0);
        ASSERT_EQ(c->n_failed, 2);
        ASSERT_TRUE(c->done_usec - start >= 290 * USEC_PER_MSEC);
        ASSERT_TRUE(c->done_usec - start < 1500 * USEC_PER_MSEC);
        hook_ctx_free(c);

        (void) config_free(config);
}

/* user = : uid, gid and HOME/USER/LOGNAME of that user. */
static void test_hook_user(void) {
        Config *config = test_config_new();
        struct passwd *pw;
        char expect[512];
        HookCtx *c;

        pw = getpwnam("nobody");
        if (getuid() != 0 || !pw) {
                fprintf(stderr, "   skipped: needs root and user nobody\n");
                (void) config_free(config);
                return;
        }
        (void) snprintf(expect, sizeof(expect), "%u|%u|%s %s %s", (unsigned) pw->pw_uid,
                        (unsigned) pw->pw_gid, pw->pw_dir, pw->pw_name, pw->pw_name);

        test_config_add_hook(config, "as-nobody", 10, 5 * USEC_PER_SEC, "nobody", "/bin/sh", "-c",
                             "id -u; id -g; echo \"$HOME $USER $LOGNAME\"", NULL);
        c = hooks_run(config, NULL, now_monotonic_usec() + 10 * USEC_PER_SEC, 5 * USEC_PER_SEC);
        ASSERT_EQ(c->n_ok, 1);
        ASSERT_STREQ(hook_lines(c, "as-nobody", "stdout"), expect);

        hook_ctx_free(c);
        (void) config_free(config);
}

static void close_cb(uv_timer_t *t) {
        HookCtx *c = t->data;

        hook_stage_close(c->stage);
        c->closed = true;
        c->done = true; /* ends run loop below; on_done itself must not come */
        uv_stop(c->loop);
        uv_close((uv_handle_t *) t, NULL);
}

/* hook_stage_close() while a hook runs: it is killed and reaped, no callbacks after, the loop closes. */
static void test_hook_close_running(void) {
        Config *config = test_config_new();
        HookCtx *c = calloc(1, sizeof(HookCtx));
        uv_loop_t loop;
        uv_timer_t t;
        pid_t pid;

        ASSERT_TRUE(c);
        test_config_add_hook(config, "long", 10, 30 * USEC_PER_SEC, NULL, "/bin/sleep", "100", NULL);
        ASSERT_OK(uv_loop_init(&loop));
        c->loop = &loop;
        ASSERT_OK(hook_stage_new(&loop, config->hooks, config->n_hooks, NULL, now_monotonic_usec() + 60 * USEC_PER_SEC,
                                 &hook_callbacks, c, &c->stage));
        ASSERT_OK(hook_stage_start(c->stage));
        ASSERT_OK(uv_timer_init(&loop, &t));
        t.data = c;
        ASSERT_OK(uv_timer_start(&t, close_cb, 100, 0));
        run_until(&loop, &c->done, 5 * USEC_PER_SEC, "close");
        loop_finish(&loop);

        pid = hook_event(c, "long")->pid;
        ASSERT_TRUE(pid > 1);
        /* libuv reaped it: not even a zombie is left. */
        {
                char path[64];

                (void) snprintf(path, sizeof(path), "/proc/%d", (int) pid);
                ASSERT_FALSE(file_exists(path));
        }

        hook_ctx_free(c);
        (void) config_free(config);
}

/* ---- main --------------------------------------------------------------- */

static void rm_rf(const char *path) {
        DIR *d = opendir(path);
        struct dirent *de;

        if (!d) {
                (void) unlink(path);
                return;
        }
        while ((de = readdir(d))) {
                char *p;

                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                ASSERT_TRUE(asprintf(&p, "%s/%s", path, de->d_name) >= 0);
                rm_rf(p);
                free(p);
        }
        closedir(d);
        (void) rmdir(path);
}

int main(void) {
        /* As the daemon does: nothing of ours leaks into the children. */
        uv_disable_stdio_inheritance();
        ASSERT_TRUE(mkdtemp(tmpdir));

        RUN(test_signal_pidfile_exit);
        RUN(test_signal_trap);
        RUN(test_signal_example_trainer);
        RUN(test_signal_match);
        RUN(test_signal_fanout);
        RUN(test_signal_pidfile_bad);
        RUN(test_signal_wait_timeout);
        RUN(test_signal_mark_done);
        RUN(test_signal_close_and_empty);

        RUN(test_hook_groups);
        RUN(test_hook_output);
        RUN(test_hook_timeout_kills_group);
        RUN(test_hook_pipe_held);
        RUN(test_hook_environment);
        RUN(test_hook_example_script);
        RUN(test_hook_endless_output);
        RUN(test_hook_failures);
        RUN(test_hook_deadline);
        RUN(test_hook_user);
        RUN(test_hook_close_running);

        rm_rf(tmpdir);
        return 0;
}
