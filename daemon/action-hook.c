/* SPDX-License-Identifier: MIT */
/*
 * action-hook.c - the hook stage of a plan. It runs the [hook] scripts of the
 * config in order groups (same order in parallel, groups one after the
 * other), each in its own session and process group, with stdin on
 * /dev/null, stdout and stderr read line by line for the journal, and a
 * timeout at which the whole process group is killed. Nothing it starts
 * outlives min(hook timeout, stage deadline) by more than a short grace.
 *
 * It owns one uv_process_t, two uv_pipe_t and one uv_timer_t per running
 * hook plus one uv_timer_t for the stage, and it bounds what a hook can make
 * it hold: 4 KiB per line, 1000 lines and 256 KiB per hook, after which the
 * output is drained and dropped. It copies what it needs from the Config. It
 * never logs above debug and never decides about the plan; a hook's
 * success or failure is reported, not acted on.
 */
#include <assert.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "action.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "shared/parse.h"

extern char **environ;

/* Longest line handed to on_output(), the cut marker included. */
#define HOOK_LINE_MAX 4096U
#define HOOK_LINE_CUT_MARKER " [...cut]"
#define HOOK_OUTPUT_LINES_MAX 1000U
#define HOOK_OUTPUT_BYTES_MAX (256U * 1024U)
#define HOOK_READ_BUF_SIZE (64U * 1024U)
/* After a hook exited, how long its pipes may stay open (a background child holding them). */
#define HOOK_PIPE_GRACE_USEC (200 * USEC_PER_MSEC)
/* After SIGKILL, how long we wait for the exit before giving up on the process. */
#define HOOK_KILL_GRACE_USEC (1 * USEC_PER_SEC)

typedef struct HookRun HookRun;

typedef struct HookOutput {
        HookRun *hook;
        const char *stream;      /* "stdout" or "stderr" */
        uv_pipe_t pipe;
        bool open;               /* initialized, uv_close() not called yet */
        bool cutting;            /* dropping the rest of an over-long line */
        size_t len;
        char line[HOOK_LINE_MAX + 1];
} HookOutput;

struct HookRun {
        HookStage *stage;
        char *name;
        char **argv;
        uint64_t timeout_usec;
        long order;
        char *user;

        uv_process_t process;
        uv_timer_t timer;
        HookOutput out, err;
        bool process_open, timer_open;

        pid_t pid;
        uint64_t start_usec;
        uint64_t kill_at_usec;
        int exit_status;
        int term_signal;
        unsigned n_lines;
        size_t n_bytes;
        bool truncated;
        bool running;            /* spawned, not yet reported */
        bool exited;
        bool killed;
        bool timed_out;
};

struct HookStage {
        uv_loop_t *loop;
        char **env;              /* environ minus the plan's SPOTWATCH_* names, plus the stage's own */
        uint64_t until_usec;
        HookStageCallbacks cb;
        void *userdata;

        HookRun *hooks;          /* sorted by order, stable */
        size_t n_hooks;
        size_t next;             /* first hook of the next group */
        unsigned n_running;
        unsigned n_ok, n_failed;

        char *buf;               /* read buffer shared by all pipes; reads never interleave */
        uv_timer_t timer;
        unsigned n_handles;      /* initialized handles whose close callback has not run */
        bool started, done, closing;
};


static size_t env_length(char *const *l) {
        size_t n = 0;

        for (; l && l[n]; n++)
                ;
        return n;
}

static bool env_name_equal(const char *a, const char *b) {
        size_t la = strcspn(a, "="), lb = strcspn(b, "=");

        return la == lb && memcmp(a, b, la) == 0;
}

/*
 * The variables the SPEC gives hooks. One of these in the daemon's own
 * environment is stale by definition and must never reach a hook, whether
 * or not this plan sets it (SPOTWATCH_INSTANCE_ID is set only where known).
 * Other SPOTWATCH_* names are the operator's (the demo passes
 * SPOTWATCH_HOOK_LOG that way) and go through.
 */
static const char *const env_reserved[] = {
        "SPOTWATCH_EVENT=",       "SPOTWATCH_CLOUD=",        "SPOTWATCH_NOTICE_TIME=",
        "SPOTWATCH_DEADLINE=",    "SPOTWATCH_SECONDS_LEFT=", "SPOTWATCH_INSTANCE_ID=",
        NULL,
};

static bool env_has_name(char *const *l, const char *assignment) {
        for (; l && *l; l++)
                if (env_name_equal(*l, assignment))
                        return true;
        return false;
}

/*
 * @base without the variables named in @extra (and, if @drop_reserved,
 * without the plan's SPOTWATCH_* names), then @extra.
 */
static int env_merge(char *const *base, char *const *extra, bool drop_reserved, char ***ret) {
        _cleanup_(strv_freep) char **l = NULL;
        size_t n = 0;

        l = calloc(env_length(base) + env_length(extra) + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;

        for (char *const *i = base; i && *i; i++) {
                if (drop_reserved && env_has_name((char *const *) env_reserved, *i))
                        continue;
                if (!strchr(*i, '=') || env_has_name(extra, *i))
                        continue;
                l[n] = strdup(*i);
                if (!l[n])
                        return -ENOMEM;
                n++;
        }
        for (char *const *i = extra; i && *i; i++) {
                l[n] = strdup(*i);
                if (!l[n])
                        return -ENOMEM;
                n++;
        }

        *ret = TAKE_PTR(l);
        return 0;
}

static HookStage *hook_stage_free(HookStage *s) {
        if (!s)
                return NULL;

        for (size_t i = 0; i < s->n_hooks; i++) {
                free(s->hooks[i].name);
                strv_free(s->hooks[i].argv);
                free(s->hooks[i].user);
        }
        free(s->hooks);
        strv_free(s->env);
        free(s->buf);
        free(s);
        return NULL;
}

static void stage_handle_closed(HookStage *s) {
        assert(s->n_handles > 0);
        s->n_handles--;
        if (s->closing && s->n_handles == 0)
                hook_stage_free(s);
}

static void stage_timer_close_cb(uv_handle_t *handle) {
        stage_handle_closed(container_of((uv_timer_t *) handle, HookStage, timer));
}

static void process_close_cb(uv_handle_t *handle) {
        stage_handle_closed(container_of((uv_process_t *) handle, HookRun, process)->stage);
}

static void hook_timer_close_cb(uv_handle_t *handle) {
        stage_handle_closed(container_of((uv_timer_t *) handle, HookRun, timer)->stage);
}

static void pipe_close_cb(uv_handle_t *handle) {
        stage_handle_closed(container_of((uv_pipe_t *) handle, HookOutput, pipe)->hook->stage);
}

static void output_close(HookOutput *o) {
        if (!o->open)
                return;
        o->open = false;
        uv_close((uv_handle_t *) &o->pipe, pipe_close_cb);
}

/* Close whatever the hook still has open. */
static void hook_release(HookRun *h) {
        if (h->process_open) {
                h->process_open = false;
                uv_close((uv_handle_t *) &h->process, process_close_cb);
        }
        output_close(&h->out);
        output_close(&h->err);
        if (h->timer_open) {
                h->timer_open = false;
                uv_close((uv_handle_t *) &h->timer, hook_timer_close_cb);
        }
}

/* The hook runs in its own session, so its pid is its process group: kill all of it. */
static void hook_kill(HookRun *h) {
        h->killed = true;
        if (h->pid > 1 && kill(-h->pid, SIGKILL) < 0 && errno != ESRCH)
                log_debug_errno(errno, "Failed to kill process group of hook \"%s\": %m", h->name);
}

static uint64_t usec_add(uint64_t a, uint64_t b) {
        return a > USEC_INFINITY - b ? USEC_INFINITY : a + b;
}

static void hook_timer_cb(uv_timer_t *timer);

static void hook_arm(HookRun *h, uint64_t until_usec) {
        uint64_t now, msec;

        if (until_usec == USEC_INFINITY) {
                (void) uv_timer_stop(&h->timer);
                return;
        }
        /* Timers count from the loop's cached time; refresh it so they do not fire early. */
        uv_update_time(h->stage->loop);
        now = now_monotonic_usec();
        msec = until_usec <= now ? 0 : (until_usec - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC;
        (void) uv_timer_start(&h->timer, hook_timer_cb, msec, 0);
}

static void stage_timer_cb(uv_timer_t *timer);

/* on_done and the next group always start from the stage timer, never from a caller's stack. */
static void stage_schedule(HookStage *s) {
        if (s->closing || s->done)
                return;
        (void) uv_timer_start(&s->timer, stage_timer_cb, 0, 0);
}

static void report_exited(HookStage *s, const char *name, pid_t pid, int exit_status, int term_signal,
                          bool timed_out, int error, uint64_t duration_usec) {
        if (error == 0 && exit_status == 0)
                s->n_ok++;
        else
                s->n_failed++;
        if (s->cb.on_exited)
                s->cb.on_exited(s, name, pid, exit_status, term_signal, timed_out, error, duration_usec,
                                s->userdata);
}

static void output_emit(HookOutput *o, const char *line);

/* Hand one complete line to on_output(), within the per-hook caps. */
static void output_emit_line(HookOutput *o) {
        HookRun *h = o->hook;
        size_t len = o->len;

        o->len = 0;
        if (h->truncated)
                return;
        if (h->n_lines >= HOOK_OUTPUT_LINES_MAX) {
                char msg[128];

                h->truncated = true;
                (void) snprintf(msg, sizeof(msg),
                                "[spotwatchd: output truncated after %u lines, the rest is discarded]",
                                h->n_lines);
                output_emit(o, msg);
                return;
        }
        h->n_lines++;

        if (len > 0 && o->line[len - 1] == '\r')
                len--;
        /* The line goes on as a C string; a NUL inside must not cut it short. */
        for (size_t i = 0; i < len; i++)
                if (o->line[i] == '\0')
                        o->line[i] = '?';
        o->line[len] = '\0';
        output_emit(o, o->line);
}

static void output_emit(HookOutput *o, const char *line) {
        HookRun *h = o->hook;
        HookStage *s = h->stage;

        if (s->cb.on_output)
                s->cb.on_output(s, h->name, h->pid, o->stream, line, s->userdata);
}

/* The line buffer is full and the line goes on: emit it cut, with a marker, and drop the rest. */
static void output_emit_cut(HookOutput *o) {
        size_t cut = HOOK_LINE_MAX - strlen(HOOK_LINE_CUT_MARKER);

        /* Do not split a UTF-8 sequence. */
        while (cut > 0 && ((unsigned char) o->line[cut] & 0xC0) == 0x80)
                cut--;
        memcpy(o->line + cut, HOOK_LINE_CUT_MARKER, strlen(HOOK_LINE_CUT_MARKER));
        o->len = cut + strlen(HOOK_LINE_CUT_MARKER);
        o->cutting = true;
        output_emit_line(o);
}

static void output_feed(HookOutput *o, const char *data, size_t n) {
        HookRun *h = o->hook;
        HookStage *s = h->stage;
        bool over = false;

        if (h->truncated)
                return; /* drain: keep the pipe empty so the hook never blocks on it */

        if (n > HOOK_OUTPUT_BYTES_MAX - h->n_bytes) {
                n = HOOK_OUTPUT_BYTES_MAX - h->n_bytes;
                over = true;
        }
        h->n_bytes += n;

        while (n > 0) {
                const char *nl = memchr(data, '\n', n);
                size_t chunk = nl ? (size_t) (nl - data) : n;

                if (!o->cutting) {
                        size_t take = MIN(chunk, HOOK_LINE_MAX - o->len);

                        memcpy(o->line + o->len, data, take);
                        o->len += take;
                        if (take < chunk)
                                output_emit_cut(o);
                }
                if (nl) {
                        if (!o->cutting)
                                output_emit_line(o);
                        o->cutting = false;
                        o->len = 0;
                }
                if (s->closing || h->truncated)
                        return;
                if (!nl)
                        break;
                data = nl + 1;
                n -= chunk + 1;
        }

        if (over && !h->truncated) {
                char msg[128];

                h->truncated = true;
                (void) snprintf(msg, sizeof(msg),
                                "[spotwatchd: output truncated after %zu bytes, the rest is discarded]",
                                h->n_bytes);
                output_emit(o, msg);
        }
}

/* Emit what is left of an unterminated last line. */
static void output_flush(HookOutput *o) {
        if (!o->cutting && o->len > 0)
                output_emit_line(o);
        o->cutting = false;
        o->len = 0;
}

static void hook_finish(HookRun *h) {
        HookStage *s = h->stage;

        hook_release(h);
        if (!h->running)
                return;
        h->running = false;
        s->n_running--;

        report_exited(s, h->name, h->pid, h->exit_status, h->term_signal, h->timed_out, 0,
                      now_monotonic_usec() - h->start_usec);
        if (s->n_running == 0)
                stage_schedule(s);
}

static void hook_maybe_finish(HookRun *h) {
        if (h->exited && !h->out.open && !h->err.open)
                hook_finish(h);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested_size, uv_buf_t *buf) {
        HookOutput *o = container_of((uv_pipe_t *) handle, HookOutput, pipe);

        *buf = uv_buf_init(o->hook->stage->buf, HOOK_READ_BUF_SIZE);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
        HookOutput *o = container_of((uv_pipe_t *) stream, HookOutput, pipe);
        HookRun *h = o->hook;

        if (nread > 0) {
                output_feed(o, buf->base, (size_t) nread);
                return;
        }
        if (nread == 0)
                return; /* EAGAIN */

        /* EOF, or an error that ends this stream just the same. */
        if (nread != UV_EOF)
                log_debug_errno((int) nread, "Failed to read %s of hook \"%s\", closing it: %m", o->stream,
                                h->name);
        output_flush(o);
        if (h->stage->closing)
                return;
        output_close(o);
        hook_maybe_finish(h);
}

static void exit_cb(uv_process_t *process, int64_t exit_status, int term_signal) {
        HookRun *h = container_of(process, HookRun, process);
        HookStage *s = h->stage;
        uint64_t grace;

        h->exited = true;
        h->term_signal = term_signal;
        h->exit_status = term_signal != 0 ? -1 : (int) exit_status;
        h->process_open = false;
        uv_close((uv_handle_t *) &h->process, process_close_cb);

        if (s->closing) {
                hook_release(h);
                return;
        }
        if (!h->out.open && !h->err.open) {
                hook_finish(h);
                return;
        }

        /*
         * Something else in the hook's process group (a background child)
         * still holds stdout or stderr. Give it a moment to finish writing,
         * then kill the group and stop reading (hook_timer_cb).
         */
        grace = usec_add(now_monotonic_usec(), HOOK_PIPE_GRACE_USEC);
        if (!h->killed)
                grace = MIN(grace, h->kill_at_usec);
        hook_arm(h, grace);
}

static void hook_timer_cb(uv_timer_t *timer) {
        HookRun *h = container_of(timer, HookRun, timer);
        HookStage *s = h->stage;

        if (s->closing) {
                /* Closing, and the SIGKILLed hook did not exit in time: give up on it. */
                hook_release(h);
                return;
        }

        if (!h->exited) {
                if (!h->killed) {
                        h->timed_out = true;
                        hook_kill(h);
                        hook_arm(h, usec_add(now_monotonic_usec(), HOOK_KILL_GRACE_USEC));
                        return;
                }
                /*
                 * Not even SIGKILL ended it (uninterruptible sleep). Stop
                 * tracking it, so the stage ends; it stays a zombie.
                 */
                log_debug("Hook \"%s\" (PID %d) did not exit after SIGKILL, giving up on it.", h->name,
                          (int) h->pid);
                h->exit_status = -1;
                h->term_signal = 0;
        } else
                /* The pipe grace after the exit ran out. */
                hook_kill(h);

        output_flush(&h->out);
        if (s->closing)
                return;
        output_flush(&h->err);
        if (s->closing)
                return;
        hook_finish(h);
}

static int user_env(HookStage *s, const char *user, uv_uid_t *ret_uid, uv_gid_t *ret_gid, char ***ret_env) {
        _cleanup_free_ char *home = NULL, *name = NULL, *logname = NULL;
        char *extra[4];
        struct passwd *pw;
        int r;

        errno = 0;
        pw = getpwnam(user);
        if (!pw)
                return errno != 0 ? -errno : -ESRCH;

        if (asprintf(&home, "HOME=%s", pw->pw_dir) < 0 || asprintf(&name, "USER=%s", pw->pw_name) < 0 ||
            asprintf(&logname, "LOGNAME=%s", pw->pw_name) < 0)
                return -ENOMEM;
        extra[0] = home;
        extra[1] = name;
        extra[2] = logname;
        extra[3] = NULL;

        r = env_merge(s->env, extra, false, ret_env);
        if (r < 0)
                return r;
        *ret_uid = pw->pw_uid;
        *ret_gid = pw->pw_gid;
        return 0;
}

static int output_init(HookRun *h, HookOutput *o, const char *stream) {
        int r;

        o->hook = h;
        o->stream = stream;
        r = uv_pipe_init(h->stage->loop, &o->pipe, 0);
        if (r < 0)
                return r;
        o->open = true;
        h->stage->n_handles++;
        return 0;
}

/*
 * SPOTWATCH_SECONDS_LEFT as of now, for hooks of a later order group: the
 * plan computed it when the stage began. *ret is NULL when @base has no
 * SPOTWATCH_DEADLINE (then @base is used as it is).
 */
static int env_refresh_seconds_left(char *const *base, char ***ret) {
        static const char prefix[] = "SPOTWATCH_DEADLINE=";
        const char *deadline = NULL;
        char buf[64], *extra[] = { buf, NULL };
        long long d, now;

        *ret = NULL;
        for (char *const *i = base; i && *i; i++)
                if (strncmp(*i, prefix, sizeof(prefix) - 1) == 0)
                        deadline = *i + sizeof(prefix) - 1;
        if (!deadline)
                return 0;
        d = strtoll(deadline, NULL, 10);
        now = (long long) (now_realtime_usec() / USEC_PER_SEC);
        (void) snprintf(buf, sizeof(buf), "SPOTWATCH_SECONDS_LEFT=%lld", d > now ? d - now : 0);
        return env_merge(base, extra, false, ret);
}

/*
 * Start one hook. On failure everything it opened is being closed and the
 * caller reports the error; -ETIME means the deadline left it no time.
 */
static int hook_spawn(HookRun *h) {
        HookStage *s = h->stage;
        _cleanup_(strv_freep) char **env_user = NULL, **env_now = NULL;
        uv_process_options_t options = {};
        uv_stdio_container_t stdio[3] = {};
        uv_uid_t uid = 0;
        uv_gid_t gid = 0;
        uint64_t now;
        int r;

        now = now_monotonic_usec();
        h->start_usec = now;
        h->kill_at_usec = MIN(h->timeout_usec > 0 ? usec_add(now, h->timeout_usec) : USEC_INFINITY,
                              s->until_usec);
        if (h->kill_at_usec <= now)
                return -ETIME;
        if (!h->argv || !h->argv[0])
                return -EINVAL;

        if (h->user) {
                r = user_env(s, h->user, &uid, &gid, &env_user);
                if (r < 0)
                        return r;
                options.flags |= UV_PROCESS_SETUID | UV_PROCESS_SETGID;
                options.uid = uid;
                options.gid = gid;
        }

        r = env_refresh_seconds_left(env_user ? env_user : s->env, &env_now);
        if (r < 0)
                return r;

        r = output_init(h, &h->out, "stdout");
        if (r >= 0)
                r = output_init(h, &h->err, "stderr");
        if (r >= 0) {
                r = uv_timer_init(s->loop, &h->timer);
                if (r >= 0) {
                        h->timer_open = true;
                        s->n_handles++;
                }
        }
        if (r < 0) {
                hook_release(h);
                return r;
        }

        stdio[0].flags = UV_IGNORE; /* libuv opens /dev/null for it */
        stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
        stdio[1].data.stream = (uv_stream_t *) &h->out.pipe;
        stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
        stdio[2].data.stream = (uv_stream_t *) &h->err.pipe;

        options.exit_cb = exit_cb;
        options.file = h->argv[0];
        options.args = h->argv;
        options.env = env_now ? env_now : env_user ? env_user : s->env;
        options.cwd = "/";
        /* setsid(): the hook leads its own process group, which is what the timeout kills. */
        options.flags |= UV_PROCESS_DETACHED;
        options.stdio_count = 3;
        options.stdio = stdio;

        r = uv_spawn(s->loop, &h->process, &options);
        /* The process handle needs uv_close() whether or not the spawn worked. */
        h->process_open = true;
        s->n_handles++;
        if (r < 0) {
                hook_release(h);
                return r;
        }

        h->pid = h->process.pid;
        h->running = true;
        s->n_running++;

        r = uv_read_start((uv_stream_t *) &h->out.pipe, alloc_cb, read_cb);
        if (r < 0)
                output_close(&h->out);
        r = uv_read_start((uv_stream_t *) &h->err.pipe, alloc_cb, read_cb);
        if (r < 0)
                output_close(&h->err);
        hook_arm(h, h->kill_at_usec);
        return 0;
}

/*
 * Start the next order group; if the deadline has passed, report every
 * remaining hook as not run. Called only from the stage timer, when nothing
 * runs. Calls on_done when nothing is left.
 */
static void stage_advance(HookStage *s) {
        while (s->next < s->n_hooks) {
                size_t end = s->next;

                if (now_monotonic_usec() >= s->until_usec) {
                        for (; s->next < s->n_hooks; s->next++) {
                                report_exited(s, s->hooks[s->next].name, 0, -1, 0, true, -ETIME, 0);
                                if (s->closing)
                                        return;
                        }
                        break;
                }

                while (end < s->n_hooks && s->hooks[end].order == s->hooks[s->next].order)
                        end++;

                for (; s->next < end; s->next++) {
                        HookRun *h = &s->hooks[s->next];
                        int r;

                        r = hook_spawn(h);
                        if (r < 0) {
                                log_debug_errno(r, "Failed to start hook \"%s\": %m", h->name);
                                report_exited(s, h->name, 0, -1, 0, r == -ETIME, r, 0);
                        } else if (s->cb.on_started)
                                s->cb.on_started(s, h->name, h->pid, s->userdata);
                        if (s->closing)
                                return;
                }

                if (s->n_running > 0)
                        return;
                /* Nothing of that group could start; go on with the next. */
        }

        s->done = true;
        if (s->cb.on_done)
                s->cb.on_done(s, s->n_ok, s->n_failed, s->userdata);
}

static void stage_timer_cb(uv_timer_t *timer) {
        HookStage *s = container_of(timer, HookStage, timer);

        if (s->closing || s->done || s->n_running > 0)
                return;
        stage_advance(s);
}

static int hook_copy(HookRun *to, const HookConfig *from) {
        size_t n = env_length(from->argv);

        to->name = strdup(from->name ? from->name : "");
        if (!to->name)
                return -ENOMEM;
        to->argv = calloc(n + 1, sizeof(char *));
        if (!to->argv)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                to->argv[i] = strdup(from->argv[i]);
                if (!to->argv[i])
                        return -ENOMEM;
        }
        if (from->user) {
                to->user = strdup(from->user);
                if (!to->user)
                        return -ENOMEM;
        }
        to->timeout_usec = from->timeout_usec;
        to->order = from->order;
        to->exit_status = -1;
        return 0;
}

int hook_stage_new(uv_loop_t *loop, const HookConfig *hooks, size_t n_hooks, char *const *env,
                   uint64_t until_usec, const HookStageCallbacks *cb, void *userdata, HookStage **ret) {
        _cleanup_free_ size_t *order = NULL;
        HookStage *s;
        int r;

        assert(loop);
        assert(hooks || n_hooks == 0);
        assert(ret);

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->until_usec = until_usec;
        if (cb)
                s->cb = *cb;
        s->userdata = userdata;

        r = env_merge(environ, env, true, &s->env);
        if (r < 0)
                goto fail;

        s->buf = malloc(HOOK_READ_BUF_SIZE);
        if (!s->buf) {
                r = -ENOMEM;
                goto fail;
        }

        if (n_hooks > 0) {
                /* Config sorts by order already; a stable sort here keeps us correct if it did not. */
                order = calloc(n_hooks, sizeof(size_t));
                s->hooks = calloc(n_hooks, sizeof(HookRun));
                if (!order || !s->hooks) {
                        r = -ENOMEM;
                        goto fail;
                }
                for (size_t i = 0; i < n_hooks; i++) {
                        size_t j = i;

                        for (; j > 0 && hooks[order[j - 1]].order > hooks[i].order; j--)
                                order[j] = order[j - 1];
                        order[j] = i;
                }
                s->n_hooks = n_hooks;
                for (size_t i = 0; i < n_hooks; i++) {
                        s->hooks[i].stage = s;
                        r = hook_copy(&s->hooks[i], &hooks[order[i]]);
                        if (r < 0)
                                goto fail;
                }
        }

        /* The last step: from here on the stage holds a handle and is freed only by its close callback. */
        r = uv_timer_init(loop, &s->timer);
        if (r < 0)
                goto fail;
        s->n_handles = 1;

        *ret = s;
        return 0;

fail:
        hook_stage_free(s);
        return r;
}

int hook_stage_start(HookStage *s) {
        assert(s);

        if (s->started || s->closing)
                return -EBUSY;
        s->started = true;
        return uv_timer_start(&s->timer, stage_timer_cb, 0, 0);
}

void hook_stage_close(HookStage *s) {
        if (!s)
                return;
        assert(!s->closing);

        s->closing = true;
        for (size_t i = 0; i < s->n_hooks; i++) {
                HookRun *h = &s->hooks[i];

                if (!h->running || h->exited) {
                        hook_release(h);
                        continue;
                }

                /*
                 * Keep the process handle until the exit is seen, so libuv
                 * reaps the child; the timer bounds that wait.
                 */
                hook_kill(h);
                output_close(&h->out);
                output_close(&h->err);
                hook_arm(h, usec_add(now_monotonic_usec(), HOOK_KILL_GRACE_USEC));
        }
        uv_close((uv_handle_t *) &s->timer, stage_timer_close_cb);
}
