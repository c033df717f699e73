/* SPDX-License-Identifier: MIT */
/*
 * action.c - the response plan: report → signal (and wait) → hooks → summary,
 * each stage bounded by the deadline the cloud gave, less deadline_margin.
 * It runs stages and emits records through report.c; it decides nothing
 * about notices (notice.c does) and owns no socket.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "action.h"
#include "report.h"
#include "shared/log.h"
#include "shared/parse.h"

typedef enum PlanStage {
        PLAN_STAGE_NEW,
        PLAN_STAGE_SIGNAL,
        PLAN_STAGE_HOOKS,
        PLAN_STAGE_UPLOADS,
        PLAN_STAGE_DONE,
        _PLAN_STAGE_MAX,
        _PLAN_STAGE_INVALID = -EINVAL,
} PlanStage;

static const char *const plan_stage_table[_PLAN_STAGE_MAX] = {
        [PLAN_STAGE_NEW] = "new",
        [PLAN_STAGE_SIGNAL] = "signal",
        [PLAN_STAGE_HOOKS] = "hooks",
        [PLAN_STAGE_UPLOADS] = "uploads",
        [PLAN_STAGE_DONE] = "done",
};

struct Plan {
        uv_loop_t *loop;
        const Config *config;
        NoticeEvent event;
        char *instance_id;
        PlanDoneFn done;
        void *userdata;

        HookConfig *hooks;      /* the config's hooks (shallow copies) plus the extra one */
        size_t n_hooks;
        HookConfig extra;       /* owned deep copy of plan_new()'s extra hook */
        PlanStage stage;
        uint64_t started_usec;  /* monotonic */
        uint64_t until_usec;    /* monotonic: stages must be over by then */
        SignalStage *signal;
        HookStage *hook_stage;
        UploadStage *upload_stage;
        UploadContext upload_ctx;
        char *metadata_url;     /* upload_ctx's, owned */
        PlanSummary summary;
};

static void plan_free(Plan *p) {
        if (!p)
                return;
        if (p->signal)
                signal_stage_close(p->signal);
        if (p->hook_stage)
                hook_stage_close(p->hook_stage);
        if (p->upload_stage)
                upload_stage_close(p->upload_stage);
        free(p->instance_id);
        free(p->metadata_url);
        free(p->hooks);
        free(p->extra.name);
        strv_free(p->extra.argv);
        free(p->extra.user);
        free(p);
}

/* The caller's extra hook may live on its stack: keep our own copy. */
static int hook_config_copy(HookConfig *to, const HookConfig *from) {
        size_t n = strv_length(from->argv);

        *to = (HookConfig) {
                .timeout_usec = from->timeout_usec,
                .order = from->order,
                .line = from->line,
        };
        to->name = strdup(from->name);
        to->argv = calloc(n + 1, sizeof(char *));
        if (!to->name || !to->argv)
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
        return 0;
}

int plan_new(uv_loop_t *loop, const Config *config, const NoticeEvent *ev, const char *instance_id,
             const HookConfig *extra_hook, PlanDoneFn done, void *userdata, Plan **ret) {
        Plan *p;
        uint64_t now_real = now_realtime_usec(), now_mono = now_monotonic_usec(), left;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->loop = loop;
        p->config = config;
        p->event = *ev;
        p->done = done;
        p->userdata = userdata;
        if (instance_id) {
                p->instance_id = strdup(instance_id);
                if (!p->instance_id) {
                        plan_free(p);
                        return -ENOMEM;
                }
        }

        p->n_hooks = config->n_hooks + (extra_hook ? 1 : 0);
        p->hooks = calloc(MAX(p->n_hooks, (size_t) 1), sizeof(HookConfig));
        if (!p->hooks) {
                plan_free(p);
                return -ENOMEM;
        }
        for (size_t i = 0; i < config->n_hooks; i++)
                p->hooks[i] = config->hooks[i];
        if (extra_hook) {
                if (hook_config_copy(&p->extra, extra_hook) < 0) {
                        plan_free(p);
                        return -ENOMEM;
                }
                p->hooks[config->n_hooks] = p->extra;
        }

        /* A notice without a time from the cloud (a manual trigger, a
         * rebalance the config acts on) gets the configured budget. */
        if (p->event.deadline_usec == 0)
                p->event.deadline_usec = now_real + config->default_deadline_usec;

        left = p->event.deadline_usec > now_real ? p->event.deadline_usec - now_real : 0;
        left = left > config->deadline_margin_usec ? left - config->deadline_margin_usec : 0;
        p->until_usec = now_mono + left;
        p->started_usec = now_mono;

        *ret = p;
        return 0;
}

uint64_t plan_deadline_usec(Plan *p) {
        return p->event.deadline_usec;
}

const char *plan_stage_name(Plan *p) {
        if (p->stage < 0 || p->stage >= _PLAN_STAGE_MAX)
                return "?";
        return plan_stage_table[p->stage];
}

static void plan_finish(Plan *p) {
        uint64_t now_real = now_realtime_usec();

        p->stage = PLAN_STAGE_DONE;
        p->summary.duration_usec = now_monotonic_usec() - p->started_usec;
        p->summary.seconds_left = ((int64_t) p->event.deadline_usec - (int64_t) now_real) / (int64_t) USEC_PER_SEC;
        if (now_monotonic_usec() >= p->until_usec)
                p->summary.cut_by_deadline = p->summary.cut_by_deadline || p->summary.n_waited_out > 0 ||
                                             p->summary.n_hooks_failed > 0 || p->summary.n_upload_failed > 0;
        report_plan_done(&p->event, &p->summary);
        if (p->done)
                p->done(p, &p->summary, p->userdata);
}

/* ---- hooks ------------------------------------------------------------- */

static void on_hook_started(HookStage *s, const char *hook, pid_t pid, void *userdata) {
        log_debug("Hook '%s' started as PID %d", hook, (int) pid);
}

static void on_hook_output(HookStage *s, const char *hook, pid_t pid, const char *stream, const char *line,
                           void *userdata) {
        Plan *p = userdata;
        report_hook_output(&p->event, hook, pid, stream, line);
}

static void on_hook_exited(HookStage *s, const char *hook, pid_t pid, int exit_status, int term_signal,
                           bool timed_out, int error, uint64_t duration_usec, void *userdata) {
        Plan *p = userdata;

        if (timed_out && p->until_usec <= now_monotonic_usec())
                p->summary.cut_by_deadline = true;
        report_hook(&p->event, hook, pid, exit_status, term_signal, timed_out, error, duration_usec);
}

/* ---- uploads ----------------------------------------------------------- */

static void on_upload_object(UploadStage *s, const char *upload, const char *source, const char *object,
                             uint64_t bytes, uint64_t duration_usec, bool skipped, int error, const char *detail,
                             void *userdata) {
        Plan *p = userdata;
        const UploadObjectStats *st = upload_stage_object_stats(s);

        report_upload(&p->event, upload, source, object, bytes, duration_usec, skipped, error, detail,
                      st ? st->parts : 0, st ? st->retries : 0);
}

void upload_log_manifest(UploadStage *s, int error, const char *detail, void *userdata) {
        log_warning_errno(error, "Upload manifest: %s, going on (unchanged files may be sent again)",
                          detail ? detail : "failed");
}

static void on_uploads_done(UploadStage *s, unsigned n_ok, unsigned n_skipped, unsigned n_failed, uint64_t bytes,
                            void *userdata) {
        Plan *p = userdata;

        p->summary.n_uploaded = n_ok;
        p->summary.n_upload_skipped = n_skipped;
        p->summary.n_upload_failed = n_failed;
        p->summary.bytes_uploaded = bytes;
        plan_finish(p);
}

/* The checkpoints the signals and hooks made leave the machine last. */
static int plan_start_uploads(Plan *p) {
        static const UploadStageCallbacks cb = {
                .on_object = on_upload_object,
                .on_done = on_uploads_done,
                .on_manifest = upload_log_manifest,
        };
        int r;

        p->stage = PLAN_STAGE_UPLOADS;
        r = upload_stage_new(p->loop, p->config->uploads, p->config->n_uploads, NULL, p->config->state_dir,
                             &p->upload_ctx, p->until_usec, &cb, p, &p->upload_stage);
        if (r < 0)
                return r;
        return upload_stage_start(p->upload_stage);
}

static void on_hooks_done(HookStage *s, unsigned n_ok, unsigned n_failed, void *userdata) {
        Plan *p = userdata;
        int r;

        p->summary.n_hooks_ok = n_ok;
        p->summary.n_hooks_failed = n_failed;
        if (p->config->n_uploads == 0) {
                plan_finish(p);
                return;
        }
        r = plan_start_uploads(p);
        if (r < 0) {
                log_error_errno(r, "Failed to start the upload stage: %m, finishing the plan without uploads");
                p->summary.n_upload_failed = (unsigned) p->config->n_uploads;
                plan_finish(p);
        }
}

static int hook_env(Plan *p, char ***ret) {
        char t[64], **env;
        uint64_t now = now_realtime_usec();
        int64_t left = ((int64_t) p->event.deadline_usec - (int64_t) now) / (int64_t) USEC_PER_SEC;
        unsigned n = 0;

        env = calloc(8, sizeof(char *));
        if (!env)
                return -ENOMEM;
        if (asprintf(&env[n++], "SPOTWATCH_EVENT=%s", event_kind_to_string(p->event.kind)) < 0 ||
            asprintf(&env[n++], "SPOTWATCH_CLOUD=%s", cloud_kind_to_string(p->event.cloud)) < 0 ||
            asprintf(&env[n++], "SPOTWATCH_NOTICE_TIME=%s", format_rfc3339(t, sizeof(t), p->event.notice_usec)) <
                    0 ||
            asprintf(&env[n++], "SPOTWATCH_DEADLINE=%" PRIu64, p->event.deadline_usec / USEC_PER_SEC) < 0 ||
            asprintf(&env[n++], "SPOTWATCH_SECONDS_LEFT=%" PRId64, left > 0 ? left : 0) < 0 ||
            (p->instance_id && asprintf(&env[n++], "SPOTWATCH_INSTANCE_ID=%s", p->instance_id) < 0)) {
                /* asprintf leaves the pointer undefined on failure: clear it. */
                env[n - 1] = NULL;
                strv_free(env);
                return -ENOMEM;
        }
        *ret = env;
        return 0;
}

static int plan_start_hooks(Plan *p) {
        static const HookStageCallbacks cb = {
                .on_started = on_hook_started,
                .on_output = on_hook_output,
                .on_exited = on_hook_exited,
                .on_done = on_hooks_done,
        };
        char **env = NULL;
        int r;

        p->stage = PLAN_STAGE_HOOKS;
        r = hook_env(p, &env);
        if (r < 0)
                return r;
        r = hook_stage_new(p->loop, p->hooks, p->n_hooks, env, p->until_usec, &cb, p, &p->hook_stage);
        strv_free(env);
        if (r < 0)
                return r;
        return hook_stage_start(p->hook_stage);
}

/* ---- signals ----------------------------------------------------------- */

static void on_signalled(SignalStage *s, const char *process, pid_t pid, int sig, int error, const char *detail,
                         void *userdata) {
        Plan *p = userdata;
        report_signal(&p->event, process, pid, sig, error, detail);
}

static void on_process_finished(SignalStage *s, const char *process, pid_t pid, bool exited, void *userdata) {
        Plan *p = userdata;
        report_process(&p->event, process, pid, exited);
}

static void on_signals_done(SignalStage *s, unsigned n_signalled, unsigned n_failed, unsigned n_waited_out,
                            void *userdata) {
        Plan *p = userdata;
        int r;

        p->summary.n_signalled = n_signalled;
        p->summary.n_signal_failed = n_failed;
        p->summary.n_waited_out = n_waited_out;

        r = plan_start_hooks(p);
        if (r < 0) {
                log_error_errno(r, "Failed to start the hook stage: %m, finishing the plan without hooks");
                p->summary.n_hooks_failed = (unsigned) p->n_hooks;
                plan_finish(p);
        }
}

int plan_start(Plan *p) {
        static const SignalStageCallbacks cb = {
                .on_signalled = on_signalled,
                .on_finished = on_process_finished,
                .on_done = on_signals_done,
        };
        int r;

        if (p->stage != PLAN_STAGE_NEW)
                return -EBUSY;
        report_plan_start(&p->event, p->instance_id);
        p->stage = PLAN_STAGE_SIGNAL;
        r = signal_stage_new(p->loop, p->config, p->until_usec, &cb, p, &p->signal);
        if (r < 0)
                return r;
        return signal_stage_start(p->signal);
}

void plan_abort(Plan *p) {
        if (p->stage == PLAN_STAGE_DONE || p->stage == PLAN_STAGE_NEW)
                return;
        p->summary.aborted = true;
        p->stage = PLAN_STAGE_DONE;
        p->summary.duration_usec = now_monotonic_usec() - p->started_usec;
        p->summary.seconds_left = ((int64_t) p->event.deadline_usec - (int64_t) now_realtime_usec()) /
                                  (int64_t) USEC_PER_SEC;
        report_plan_done(&p->event, &p->summary);
}

int plan_mark_done(Plan *p, pid_t pid) {
        if (p->stage != PLAN_STAGE_SIGNAL || !p->signal)
                return -ESRCH;
        return signal_stage_mark_done(p->signal, pid);
}

int plan_set_upload_context(Plan *p, const UploadContext *ctx) {
        char *url = NULL;

        if (ctx->metadata_url) {
                url = strdup(ctx->metadata_url);
                if (!url)
                        return -ENOMEM;
        }
        free(p->metadata_url);
        p->metadata_url = url;
        p->upload_ctx = *ctx;
        p->upload_ctx.metadata_url = url;
        return 0;
}

UploadStage *plan_upload_stage(Plan *p) {
        return p ? p->upload_stage : NULL;
}

void plan_close(Plan *p) {
        plan_free(p);
}
