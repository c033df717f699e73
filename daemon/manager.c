/* SPDX-License-Identifier: MIT */
/*
 * manager.c - the daemon's wiring (see manager.h). It owns the loop and every
 * long-lived object, turns provider observations into notice_feed() calls,
 * starts plans for what notice decides, answers control requests, reloads the
 * configuration on SIGHUP and speaks sd_notify. It logs; the modules it
 * drives return errors to it.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "action.h"
#include "build-config.h"
#include "control.h"
#include "detect.h"
#include "fake-server.h"
#include "http.h"
#include "manager.h"
#include "notice.h"
#include "provider.h"
#include "report.h"
#include "state.h"
#include "sync.h"
#include "shared/log.h"
#include "shared/parse.h"

/* Metadata errors: the first is logged at once, then at most one summary per
 * this interval, so a broken metadata service cannot flood the journal. */
#define ERROR_LOG_INTERVAL_USEC (60 * USEC_PER_SEC)

typedef struct Waiter {
        ControlClient *client;
        struct Waiter *next;
} Waiter;

struct Manager {
        uv_loop_t loop;
        bool loop_initialized;

        Config *config;
        Config *retired_config;     /* the config a running plan still uses after a reload */
        char *config_path;
        CloudKind fake_cloud;

        Http *http;
        FakeServer *fake;
        Provider *provider;
        CloudKind cloud;
        char *base_url;
        ControlServer *control;

        Notice notice;
        Plan *plan;
        Plan *plan_closing;
        uv_timer_t plan_reaper;     /* frees a finished plan outside its own callbacks */
        Waiter *waiters;            /* trigger wait=yes clients, answered when the plan ends */
        UploadStage *upload;        /* `spotwatchctl upload` by hand */
        ControlClient *upload_client;
        uv_timer_t upload_reaper;
        SyncWatch *sync;            /* [upload] sections with sync = continuous */
        UploadStage *sync_stage;    /* the background sync run, if one runs */
        char *sync_name;            /* its [upload] */
        uv_timer_t sync_reaper;
        PlanSummary last_summary;
        bool have_summary;

        uv_signal_t sigterm, sigint, sighup;
        uv_timer_t watchdog;
        uint64_t watchdog_usec;

        /* metadata error accounting */
        int last_poll_error;
        char last_poll_what[64];
        char last_poll_detail[160];
        uint64_t errors_since_log;
        uint64_t last_error_log_usec;
        bool in_error;

        char status[256];
        int exit_code;
        bool stopping;
        bool detecting;             /* cloud = auto probes turn the loop */
        bool stop_after_plan;       /* SIGTERM came while a plan ran: finish it, then stop */
};

/* ---- sd_notify ---------------------------------------------------------- */

static void manager_set_status(Manager *m, const char *fmt, ...) _printf_(2, 3);
static void manager_set_status(Manager *m, const char *fmt, ...) {
        char buf[sizeof(m->status)];
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (streq(buf, m->status))
                return;
        memcpy(m->status, buf, sizeof(buf));
        (void) sd_notifyf(false, "STATUS=%s", m->status);
}

static void manager_update_status(Manager *m) {
        if (m->stopping)
                return;
        if (m->plan)
                manager_set_status(m, "Running the response plan for a %s notice (%s stage)",
                                   event_kind_to_string(m->notice.plan_event.kind), plan_stage_name(m->plan));
        else if (m->in_error)
                manager_set_status(m, "Watching %s metadata at %s; last poll failed: %s: %s",
                                   cloud_kind_to_string(m->cloud), m->base_url, m->last_poll_what,
                                   m->last_poll_detail);
        else if (m->notice.state == NOTICE_PLAN_DONE)
                manager_set_status(m, "Watching %s metadata at %s; the plan for a %s notice has finished",
                                   cloud_kind_to_string(m->cloud), m->base_url,
                                   event_kind_to_string(m->notice.plan_event.kind));
        else
                manager_set_status(m, "Watching %s metadata at %s every %s", cloud_kind_to_string(m->cloud),
                                   m->base_url,
                                   format_duration((char[32]) {}, 32, m->config->poll_interval_usec));
}

static void on_watchdog(uv_timer_t *t) {
        (void) sd_notify(false, "WATCHDOG=1");
}

/* ---- plans -------------------------------------------------------------- */

static bool event_persisted(const NoticeEvent *ev) {
        /* Manual plans are not the cloud's notices: a restart forgets them. */
        return ev->kind != EVENT_MANUAL;
}

static void reply_waiters(Manager *m, const PlanSummary *s) {
        while (m->waiters) {
                Waiter *w = m->waiters;
                m->waiters = w->next;
                if (control_client_is_connected(w->client)) {
                        if (s) {
                                control_client_reply_kv(w->client, "signalled", "%u", s->n_signalled);
                                control_client_reply_kv(w->client, "hooks_ok", "%u", s->n_hooks_ok);
                                control_client_reply_kv(w->client, "hooks_failed", "%u", s->n_hooks_failed);
                                control_client_reply_ok(w->client);
                        } else
                                control_client_reply_error(w->client, "the daemon is stopping");
                }
                control_client_unref(w->client);
                free(w);
        }
}

static void manager_stop(Manager *m, int code);

static void on_plan_reaper(uv_timer_t *t) {
        Manager *m = container_of(t, Manager, plan_reaper);

        if (m->plan_closing) {
                plan_close(m->plan_closing);
                m->plan_closing = NULL;
        }
        if (m->stop_after_plan && !m->plan) {
                log_info("The response plan has finished: stopping");
                manager_stop(m, 0);
        }
}

static void on_plan_done(Plan *p, const PlanSummary *s, void *userdata) {
        Manager *m = userdata;

        notice_plan_finished(&m->notice, now_realtime_usec());
        provider_plan_finished(m->provider, &m->notice.plan_event);
        if (event_persisted(&m->notice.plan_event)) {
                int r = state_record(m->config->state_dir, "done", m->notice.plan_event.id, true);
                if (r < 0)
                        log_warning_errno(r, "Failed to record the end of the plan in '%s': %m, ignoring",
                                          m->config->state_dir);
        }
        m->last_summary = *s;
        m->have_summary = true;
        /* We are inside the plan's own callback: free it from the loop. */
        m->plan_closing = m->plan;
        m->plan = NULL;
        (void) uv_timer_start(&m->plan_reaper, on_plan_reaper, 0, 0);
        m->retired_config = config_free(m->retired_config);
        reply_waiters(m, s);
        manager_update_status(m);
        /* A pending stop happens from the reaper, outside the plan's callbacks. */
}

/*
 * GCP: gcp_shutdown_script = yes runs the instance's own shutdown-script (the
 * provider fetched it at the preemption) as one more hook, at once, so it gets
 * the whole 30 s window instead of what is left after the ACPI power-off.
 * Written next to the control socket (the RuntimeDirectory), mode 0700.
 */
static int manager_shutdown_script_hook(Manager *m, const NoticeEvent *ev, char **ret_path, HookConfig *ret) {
        _cleanup_free_ char *dir = NULL, *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *script = m->provider ? m->provider->shutdown_script : NULL;
        size_t n;
        char *slash;

        if (!m->config->gcp_shutdown_script || m->cloud != CLOUD_GCP || ev->kind != EVENT_PREEMPT ||
            isempty(script))
                return 0;
        dir = strdup(m->config->control_socket);
        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (slash && slash != dir)
                *slash = 0;
        if (asprintf(&path, "%s/gce-shutdown-script", dir) < 0)
                return -ENOMEM;
        (void) unlink(path);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0700);
        if (fd < 0)
                return -errno;
        n = strlen(script);
        if (write(fd, script, n) != (ssize_t) n)
                return errno > 0 ? -errno : -EIO;

        *ret = (HookConfig) {
                .name = (char *) "gce-shutdown-script",
                /* As the guest agent does: a script without "#!" runs under a shell. */
                .timeout_usec = ev->deadline_usec > now_realtime_usec() ? ev->deadline_usec - now_realtime_usec()
                                                                         : USEC_PER_SEC,
                .order = 0,
        };
        *ret_path = TAKE_PTR(path);
        return 1;
}

/* ---- continuous sync --------------------------------------------------------- */


static UploadContext manager_upload_context(Manager *m, uint64_t rate_limit) {
        return (UploadContext) {
                .http = m->http,
                .cloud = m->cloud,
                .metadata_url = m->base_url,
                .request_timeout_usec = m->config->request_timeout_usec,
                .rate_limit = rate_limit,
        };
}

/* Stop a background sync run (a plan needs the way, the config changed, the daemon stops). */
static void manager_stop_sync(Manager *m, bool again) {
        _cleanup_free_ char *name = TAKE_PTR(m->sync_name);

        if (!m->sync_stage)
                return;
        upload_stage_close(m->sync_stage);
        m->sync_stage = NULL;
        log_debug("Continuous sync of [upload \"%s\"] ended", strna(name));
        if (name)
                sync_watch_done(m->sync, name, again);
}

static void on_sync_reaper(uv_timer_t *t) {
        /* The run is over: free it outside its own callback. */
        manager_stop_sync(container_of(t, Manager, sync_reaper), false);
}

static void on_sync_object(UploadStage *s, const char *upload, const char *source, const char *object, uint64_t bytes,
                           uint64_t duration_usec, bool skipped, int error, const char *detail, void *userdata) {
        const UploadObjectStats *st = upload_stage_object_stats(s);

        /* Only what moved or failed: the periodic rescans skip everything most of the time. */
        if (!skipped)
                report_upload(NULL, upload, source, object, bytes, duration_usec, skipped, error, detail,
                              st ? st->parts : 0, st ? st->retries : 0);
}

static void on_sync_done(UploadStage *s, unsigned n_ok, unsigned n_skipped, unsigned n_failed, uint64_t bytes,
                         void *userdata) {
        Manager *m = userdata;

        if (n_ok > 0 || n_failed > 0)
                log_info("Continuous sync of [upload \"%s\"]: %u sent, %u failed, %" PRIu64 " bytes",
                         strna(m->sync_name), n_ok, n_failed, bytes);
        /* Inside the stage's own callback: free it from the loop. */
        (void) uv_timer_start(&m->sync_reaper, on_sync_reaper, 0, 0);
}

static void on_sync_due(SyncWatch *w, const char *upload, void *userdata) {
        static const UploadStageCallbacks cb = {
                .on_object = on_sync_object,
                .on_done = on_sync_done,
                .on_manifest = upload_log_manifest,
        };
        Manager *m = userdata;
        const UploadConfig *u = NULL;
        UploadContext ctx;
        int r;

        for (size_t i = 0; i < m->config->n_uploads; i++)
                if (streq(m->config->uploads[i].name, upload))
                        u = &m->config->uploads[i];
        /* A plan, a run by hand or another sync has the way: later. */
        if (!u || m->plan || m->upload || m->sync_stage || m->stopping) {
                sync_watch_done(w, upload, true);
                return;
        }
        m->sync_name = strdup(upload);
        if (!m->sync_name) {
                sync_watch_done(w, upload, true);
                return;
        }
        ctx = manager_upload_context(m, u->sync_rate);
        /* No deadline of its own: a notice stops it (the plan sends what is left). */
        r = upload_stage_new(&m->loop, m->config->uploads, m->config->n_uploads, upload, m->config->state_dir, &ctx,
                             now_monotonic_usec() + 24 * 3600 * USEC_PER_SEC, &cb, m, &m->sync_stage);
        if (r >= 0)
                r = upload_stage_start(m->sync_stage);
        if (r < 0) {
                log_warning_errno(r, "Continuous sync of [upload \"%s\"] could not start: %m", upload);
                if (m->sync_stage) {
                        upload_stage_close(m->sync_stage);
                        m->sync_stage = NULL;
                }
                free(m->sync_name);
                m->sync_name = NULL;
                sync_watch_done(w, upload, true);
        }
}

static void manager_restart_sync(Manager *m) {
        int r;

        manager_stop_sync(m, false);
        m->sync = sync_watch_free(m->sync);
        r = sync_watch_new(&m->loop, m->config->uploads, m->config->n_uploads, on_sync_due, m, &m->sync);
        if (r < 0)
                log_warning_errno(r, "Failed to start continuous sync: %m, uploads happen at a notice only");
}

static int manager_start_plan(Manager *m, const NoticeEvent *ev) {
        const char *instance_id = m->provider ? m->provider->instance_id : NULL;
        UploadContext ctx;
        _cleanup_free_ char *script_path = NULL;
        HookConfig extra = {};
        char *argv[3] = {};
        int r, k;

        /* Durably before the first action, so a restart never runs it again. */
        if (event_persisted(ev)) {
                r = state_record(m->config->state_dir, "start", ev->id, false);
                if (r < 0)
                        log_warning_errno(r, "Failed to record the plan in '%s': %m; a restart during the "
                                             "plan could run it again, going on",
                                          m->config->state_dir);
        }

        /* The plan sends everything itself, newest first: a background run would compete with it. */
        manager_stop_sync(m, true);

        k = manager_shutdown_script_hook(m, ev, &script_path, &extra);
        if (k < 0)
                log_warning_errno(k, "Failed to write the instance's shutdown-script: %m, running the plan "
                                     "without it");
        if (k > 0) {
                bool shebang = strncmp(m->provider->shutdown_script, "#!", 2) == 0;
                argv[0] = shebang ? script_path : (char *) "/bin/sh";
                argv[1] = shebang ? NULL : script_path;
                extra.argv = argv;
                log_notice("Running the instance's shutdown-script (%s) as a hook now",
                           script_path);
        }
        r = plan_new(&m->loop, m->config, ev, instance_id, k > 0 ? &extra : NULL, on_plan_done, m, &m->plan);
        if (r < 0)
                return r;
        ctx = manager_upload_context(m, 0);
        r = plan_set_upload_context(m->plan, &ctx);
        if (r >= 0)
                r = plan_start(m->plan);
        /* The signals are out (plan_start sends them at once): now make the record durable. */
        if (event_persisted(ev))
                (void) state_sync(m->config->state_dir);
        if (r < 0) {
                /* plan_start emitted what it could; end it now so the next notice is not blocked. */
                PlanSummary s = { .n_signal_failed = (unsigned) m->config->n_processes };
                log_error_errno(r, "Failed to run the response plan: %m");
                on_plan_done(m->plan, &s, m);
                return r;
        }
        manager_update_status(m);
        return 0;
}

static void manager_handle_event(Manager *m, const NoticeEvent *ev) {
        NoticeEvent out;
        NoticeAction a;
        bool was_running = m->notice.state == NOTICE_PLAN_RUNNING;

        a = notice_feed(&m->notice, ev, now_realtime_usec(), &out);
        switch (a) {
        case NOTICE_ACTION_NONE:
        case NOTICE_ACTION_JOIN:
        case NOTICE_ACTION_ALREADY:
                return;
        case NOTICE_ACTION_REPORT:
                report_notice(&out, false,
                              out.report_only ? "the machine stays up (a live migration)"
                              : was_running ? "a response plan is already running"
                              : (m->notice.triggered_kinds & EVENT_MASK(out.kind))
                                      ? "a plan for it already ran from `spotwatchctl trigger`"
                                      : "this kind of notice is not in [daemon] events");
                return;
        case NOTICE_ACTION_START_PLAN:
                report_notice(&out, true, NULL);
                (void) manager_start_plan(m, &out);
                return;
        case _NOTICE_ACTION_MAX:
        case _NOTICE_ACTION_INVALID:
                return;
        }
}

/* ---- provider ------------------------------------------------------------- */

static void on_provider_event(Provider *p, const NoticeEvent *ev, void *userdata) {
        manager_handle_event(userdata, ev);
}

static void on_provider_poll(Provider *p, int error, const char *what, const char *detail, void *userdata) {
        Manager *m = userdata;
        uint64_t now = now_monotonic_usec();

        if (error >= 0) {
                if (m->in_error)
                        log_info("Metadata service answers again after %" PRIu64 " failed polls",
                                 m->errors_since_log + 1);
                m->in_error = false;
                m->last_poll_error = 0;
                m->errors_since_log = 0;
                manager_update_status(m);
                return;
        }

        (void) snprintf(m->last_poll_what, sizeof(m->last_poll_what), "%s", strna(what));
        (void) snprintf(m->last_poll_detail, sizeof(m->last_poll_detail), "%s", detail ? detail : strerror(-error));
        m->last_poll_error = error;
        if (!m->in_error || now - m->last_error_log_usec >= ERROR_LOG_INTERVAL_USEC) {
                if (m->errors_since_log > 0)
                        log_warning_errno(error,
                                          "Metadata poll failed: %s: %s (%" PRIu64
                                          " more failures since the last message), retrying with backoff",
                                          m->last_poll_what, m->last_poll_detail, m->errors_since_log);
                else
                        log_warning_errno(error, "Metadata poll failed: %s: %s, retrying with backoff",
                                          m->last_poll_what, m->last_poll_detail);
                m->last_error_log_usec = now;
                m->errors_since_log = 0;
        } else
                m->errors_since_log++;
        m->in_error = true;
        manager_update_status(m);
}

static void on_provider_cancel(Provider *p, const NoticeEvent *ev, void *userdata) {
        report_cancel(ev);
}

static void on_provider_ack(Provider *p, const NoticeEvent *ev, int error, const char *detail, void *userdata) {
        report_ack(ev, error, detail);
}

static int manager_start_provider(Manager *m) {
        static const ProviderCallbacks cb = {
                .on_event = on_provider_event,
                .on_poll = on_provider_poll,
                .on_cancel = on_provider_cancel,
                .on_ack = on_provider_ack,
        };
        int r;

        r = provider_new(m->cloud, &m->loop, m->http, m->config, m->base_url, &cb, m, &m->provider);
        if (r == -EOPNOTSUPP)
                return log_error_errno(r, "%s: [daemon] cloud = %s is not supported by this version",
                                       strna(m->config->path), cloud_kind_to_string(m->cloud));
        if (r < 0)
                return log_error_errno(r, "Failed to set up the %s metadata watcher: %m",
                                       cloud_kind_to_string(m->cloud));
        r = provider_start(m->provider);
        if (r < 0)
                return log_error_errno(r, "Failed to start the %s metadata watcher: %m",
                                       cloud_kind_to_string(m->cloud));
        return 0;
}

/* ---- cloud = auto ------------------------------------------------------------ */

typedef struct AutoDetect {
        bool done;
        CloudKind cloud;
        char why[1024];
} AutoDetect;

static void on_detect_done(DetectProbe *p, CloudKind cloud, const char *why, void *userdata) {
        AutoDetect *d = userdata;

        d->done = true;
        d->cloud = cloud;
        (void) snprintf(d->why, sizeof(d->why), "%s", why);
}

/*
 * cloud = auto (see detect.h): the DMI data first, then one round of metadata
 * probes, at [daemon] metadata_url for every cloud when it is set. Start-up
 * only: the probes turn the loop here, before anything but the signal
 * handlers is on it, which must never happen inside a callback (a reload).
 */
static int manager_detect_cloud(Manager *m, const Config *c, CloudKind *ret_cloud) {
        _cleanup_(detect_probe_freep) DetectProbe *probe = NULL;
        const char *root = detect_dmi_root();
        const char *urls[_CLOUD_MAX] = {};
        AutoDetect d = { .cloud = _CLOUD_INVALID };
        char dmi_why[512];
        CloudKind cloud;
        int r;

        r = detect_from_dmi(root, &cloud, dmi_why, sizeof(dmi_why));
        if (r > 0) {
                log_info("cloud = auto: %s (%s)", cloud_kind_to_string(cloud), dmi_why);
                *ret_cloud = cloud;
                return 0;
        }
        if (r < 0)
                (void) snprintf(dmi_why, sizeof(dmi_why), "cannot read the DMI data in '%s': %s", root,
                                strerror(-r));
        log_debug("cloud = auto: %s; probing the metadata services", dmi_why);

        for (CloudKind k = CLOUD_AUTO + 1; k < _CLOUD_MAX; k++)
                urls[k] = c->metadata_url ? c->metadata_url : provider_default_url(k);
        r = detect_probe_start(&m->loop, m->http, urls, c->probe_timeout_usec, on_detect_done, &d, &probe);
        if (r < 0)
                return log_error_errno(r, "cloud = auto: could not tell the cloud: %s; cannot probe the "
                                          "metadata services: %m", dmi_why);

        /* Every probe is bounded by probe_timeout; SIGTERM ends the wait early (http is closed then,
         * so done() is never called). SIGHUP is ignored meanwhile (m->detecting). */
        m->detecting = true;
        while (!d.done && !m->stopping)
                (void) uv_run(&m->loop, UV_RUN_ONCE);
        m->detecting = false;
        if (!d.done)
                return -ECANCELED;
        if (d.cloud < 0)
                return log_error_errno(ENXIO, "cloud = auto: could not tell the cloud: %s; %s (set [daemon] "
                                              "cloud in '%s')", dmi_why, d.why, strna(c->path));

        log_info("cloud = auto: %s (%s)", cloud_kind_to_string(d.cloud), d.why);
        *ret_cloud = d.cloud;
        return 0;
}

/*
 * Which cloud and which address, from the config and --fake-metadata. cloud =
 * auto is detected at start-up (@at_start) only; a reload keeps the cloud
 * being watched.
 */
static int manager_pick_cloud(Manager *m, const Config *c, bool at_start, CloudKind *ret_cloud, char **ret_url) {
        CloudKind cloud = c->cloud;
        const char *url;
        char *u;
        int r;

        if (m->fake) {
                cloud = m->fake_cloud;
                url = fake_server_url(m->fake);
        } else {
                if (cloud == CLOUD_AUTO && at_start) {
                        r = manager_detect_cloud(m, c, &cloud);
                        if (r < 0)
                                return r;
                } else if (cloud == CLOUD_AUTO)
                        cloud = m->cloud;
                url = c->metadata_url ? c->metadata_url : provider_default_url(cloud);
        }
        u = strdup(url);
        if (!u)
                return log_oom();
        *ret_cloud = cloud;
        *ret_url = u;
        return 0;
}

/* ---- control ---------------------------------------------------------------- */

static bool client_privileged(Manager *m, ControlClient *c) {
        return control_client_uid(c) == 0 || control_client_uid(c) == geteuid();
}

/* The object an upload stage is sending, with the bytes done: "s3://b/k 123/456". */
static void status_upload_progress(ControlClient *c, UploadStage *u) {
        uint64_t done = 0, size = 0;
        const char *object;

        if (!u)
                return;
        object = upload_stage_progress(u, &done, &size);
        if (object)
                control_client_reply_kv(c, "upload_in_progress", "%s %" PRIu64 "/%" PRIu64 " bytes", object, done,
                                        size);
}

static void cmd_status(Manager *m, ControlClient *c) {
        char t[64], d[32];
        Provider *p = m->provider;

        control_client_reply_kv(c, "version", "%s", PACKAGE_VERSION);
        control_client_reply_kv(c, "pid", "%d", (int) getpid());
        control_client_reply_kv(c, "state", "%s", notice_state_to_string(m->notice.state));
        control_client_reply_kv(c, "cloud", "%s", cloud_kind_to_string(m->cloud));
        control_client_reply_kv(c, "metadata_url", "%s", m->base_url);
        if (m->fake)
                control_client_reply_kv(c, "fake_metadata", "%s", fake_server_url(m->fake));
        control_client_reply_kv(c, "poll_interval", "%s",
                                format_duration(d, sizeof(d), m->config->poll_interval_usec));
        {
                char ev[128] = "";
                for (EventKind k = 0; k < _EVENT_MAX; k++)
                        if (m->config->events_mask & EVENT_MASK(k)) {
                                if (ev[0])
                                        strncat(ev, " ", sizeof(ev) - strlen(ev) - 1);
                                strncat(ev, event_kind_to_string(k), sizeof(ev) - strlen(ev) - 1);
                        }
                control_client_reply_kv(c, "events", "%s", ev);
        }
        if (p) {
                control_client_reply_kv(c, "instance_id", "%s", strna(p->instance_id));
                control_client_reply_kv(c, "polls", "%" PRIu64, p->polls);
                if (p->last_poll_usec > 0)
                        control_client_reply_kv(c, "last_poll", "%s",
                                                format_rfc3339(t, sizeof(t), p->last_poll_usec));
                else
                        control_client_reply_kv(c, "last_poll", "never");
                if (m->in_error)
                        control_client_reply_kv(c, "last_poll_result", "error: %s: %s", m->last_poll_what,
                                                m->last_poll_detail);
                else
                        control_client_reply_kv(c, "last_poll_result", "%s", p->polls > 0 ? "ok" : "pending");
        }
        for (size_t i = 0; i < m->config->n_processes; i++) {
                const ProcessConfig *pc = &m->config->processes[i];
                control_client_reply_kv(c, "process", "%s %s=%s signal=%s", pc->name,
                                        pc->pidfile ? "pidfile" : "match", pc->pidfile ? pc->pidfile : pc->match,
                                        strna(signal_to_string(pc->signal)));
        }
        for (size_t i = 0; i < m->config->n_hooks; i++) {
                const HookConfig *h = &m->config->hooks[i];
                control_client_reply_kv(c, "hook", "%s order=%ld timeout=%s exec=%s", h->name, h->order,
                                        format_duration(d, sizeof(d), h->timeout_usec), h->argv[0]);
        }
        control_client_reply_kv(c, "plans", "%u", m->notice.n_plans);
        status_upload_progress(c, m->upload ? m->upload : m->plan ? plan_upload_stage(m->plan) : m->sync_stage);
        if (m->plan) {
                control_client_reply_kv(c, "plan_stage", "%s", plan_stage_name(m->plan));
                control_client_reply_kv(c, "plan_event", "%s",
                                        event_kind_to_string(m->notice.plan_event.kind));
        }
        if (m->notice.n_plans > 0) {
                control_client_reply_kv(c, "last_notice", "%s", m->notice.plan_event.id);
                if (m->notice.plan_event.deadline_usec > 0)
                        control_client_reply_kv(c, "last_deadline", "%s",
                                                format_rfc3339(t, sizeof(t),
                                                               m->notice.plan_event.deadline_usec));
        }
        if (m->have_summary)
                control_client_reply_kv(c, "last_plan", "signalled=%u signal_failed=%u hooks_ok=%u hooks_failed=%u",
                                        m->last_summary.n_signalled, m->last_summary.n_signal_failed,
                                        m->last_summary.n_hooks_ok, m->last_summary.n_hooks_failed);
        control_client_reply_ok(c);
}

static void cmd_trigger(Manager *m, ControlClient *c, const ControlRequest *req) {
        static const char *const keys[] = { "wait", "event", NULL };
        NoticeEvent out;
        const char *bad = NULL, *w, *e;
        EventKind kind = EVENT_MANUAL;
        bool wait = false;
        NoticeAction a;

        if (control_request_check_keys(req, keys, &bad) < 0)
                return control_client_reply_error(c, "unknown argument '%s'", bad);
        w = control_request_get(req, "wait");
        if (w && parse_bool(w, &wait) < 0)
                return control_client_reply_error(c, "wait: expected yes or no, got '%s'", w);
        e = control_request_get(req, "event");
        if (e) {
                kind = event_kind_from_string(e);
                if (kind < 0)
                        return control_client_reply_error(c, "event: unknown event '%s' (expected terminate, "
                                                             "stop, hibernate, preempt, rebalance, maintenance, "
                                                             "manual or shutdown)", e);
        }
        if (!client_privileged(m, c))
                return control_client_reply_error(c, "permission denied (uid %u)",
                                                  (unsigned) control_client_uid(c));

        log_notice("Trigger (%s) from PID %d (uid %u)", event_kind_to_string(kind), (int) control_client_pid(c),
                   (unsigned) control_client_uid(c));
        a = notice_trigger(&m->notice, kind, now_realtime_usec(), &out);
        switch (a) {
        case NOTICE_ACTION_START_PLAN:
                out.cloud = m->cloud;
                out.deadline_usec = now_realtime_usec() + m->config->default_deadline_usec;
                /* The shutdown path says the cloud is taking the machine: keep the
                 * deadline the cloud gives for it, if it is shorter. */
                if (kind == EVENT_PREEMPT && m->cloud == CLOUD_GCP)
                        out.deadline_usec = MIN(out.deadline_usec, now_realtime_usec() + 30 * USEC_PER_SEC);
                m->notice.plan_event = out;
                report_notice(&out, true, NULL);
                if (manager_start_plan(m, &out) < 0 && !m->plan)
                        return control_client_reply_error(c, "the plan failed to start");
                control_client_reply_kv(c, "plan", "started");
                break;
        case NOTICE_ACTION_JOIN:
                control_client_reply_kv(c, "plan", "joined");
                break;
        case NOTICE_ACTION_ALREADY:
                control_client_reply_kv(c, "plan", "already-done");
                if (m->have_summary) {
                        control_client_reply_kv(c, "signalled", "%u", m->last_summary.n_signalled);
                        control_client_reply_kv(c, "hooks_ok", "%u", m->last_summary.n_hooks_ok);
                        control_client_reply_kv(c, "hooks_failed", "%u", m->last_summary.n_hooks_failed);
                }
                return control_client_reply_ok(c);
        case NOTICE_ACTION_NONE:
        case NOTICE_ACTION_REPORT:
        case _NOTICE_ACTION_MAX:
        case _NOTICE_ACTION_INVALID:
                return control_client_reply_error(c, "refused (%s)", notice_action_to_string(a));
        }

        if (!wait || !m->plan)
                return control_client_reply_ok(c);

        Waiter *wt = calloc(1, sizeof(*wt));
        if (!wt)
                return control_client_reply_error(c, "out of memory");
        wt->client = control_client_ref(c);
        wt->next = m->waiters;
        m->waiters = wt;
}

static void cmd_fake_notice(Manager *m, ControlClient *c, const ControlRequest *req) {
        static const char *const keys[] = { "action", "in", "clear", NULL };
        const char *bad = NULL, *action, *in, *clear;
        uint64_t in_usec = 120 * USEC_PER_SEC, when;
        char t[64];
        bool b = false;
        int r;

        if (!m->fake)
                return control_client_reply_error(c, "the daemon is not in fake-metadata mode "
                                                     "(start it with --fake-metadata)");
        if (control_request_check_keys(req, keys, &bad) < 0)
                return control_client_reply_error(c, "unknown argument '%s'", bad);
        if (!client_privileged(m, c))
                return control_client_reply_error(c, "permission denied");

        clear = control_request_get(req, "clear");
        if (clear && (parse_bool(clear, &b) < 0))
                return control_client_reply_error(c, "clear: expected yes or no, got '%s'", clear);
        if (b) {
                fake_server_clear_notice(m->fake);
                log_info("Fake metadata: notice cleared");
                return control_client_reply_ok(c);
        }

        /* Default: the cloud's first word (aws: terminate, gcp and azure: preempt). */
        char first[32];
        (void) snprintf(first, sizeof(first), "%.*s", (int) strcspn(fake_server_events(m->fake), ","),
                        fake_server_events(m->fake));
        action = control_request_get(req, "action") ?: first;
        in = control_request_get(req, "in");
        if (in && parse_duration(in, &in_usec) < 0)
                return control_client_reply_error(c, "in: invalid duration '%s'", in);
        when = now_realtime_usec() + in_usec;
        r = fake_server_set_notice(m->fake, action, when);
        if (r < 0)
                return control_client_reply_error(c, "action: '%s' is not one of %s", action,
                                                  fake_server_events(m->fake));
        log_info("Fake metadata: %s notice for %s put on %s", action, format_rfc3339(t, sizeof(t), when),
                 fake_server_url(m->fake));
        control_client_reply_kv(c, "action", "%s", action);
        control_client_reply_kv(c, "time", "%s", t);
        control_client_reply_ok(c);
}

/*
 * fake-credentials: what the fake hands out as the instance's credentials.
 * AWS: access_key_id + secret_access_key (+ token: the session token); GCP
 * and Azure: token (the bearer token); none=yes: no role/account/identity.
 */
static void cmd_fake_credentials(Manager *m, ControlClient *c, const ControlRequest *req) {
        static const char *const keys[] = {
                "access_key_id", "secret_access_key", "token", "expires_in", "none", NULL,
        };
        const char *bad = NULL, *id, *secret, *token, *expires_in, *none;
        FakeCredentials fc = { .lifetime_usec = FAKE_CREDENTIALS_LIFETIME_USEC };
        char d[32];
        int r;

        if (!m->fake)
                return control_client_reply_error(c, "the daemon is not in fake-metadata mode "
                                                     "(start it with --fake-metadata)");
        if (control_request_check_keys(req, keys, &bad) < 0)
                return control_client_reply_error(c, "unknown argument '%s'", bad);
        if (!client_privileged(m, c))
                return control_client_reply_error(c, "permission denied");
        if (m->fake_cloud != CLOUD_AWS && m->fake_cloud != CLOUD_GCP && m->fake_cloud != CLOUD_AZURE)
                return control_client_reply_error(c, "the fake %s metadata service serves no instance "
                                                     "credentials", cloud_kind_to_string(m->fake_cloud));

        id = control_request_get(req, "access_key_id");
        secret = control_request_get(req, "secret_access_key");
        token = control_request_get(req, "token");
        expires_in = control_request_get(req, "expires_in");
        none = control_request_get(req, "none");
        if (none && parse_bool(none, &fc.none) < 0)
                return control_client_reply_error(c, "none: expected yes or no, got '%s'", none);
        if (expires_in && parse_duration(expires_in, &fc.lifetime_usec) < 0)
                return control_client_reply_error(c, "expires-in: invalid duration '%s'", expires_in);
        if (fc.lifetime_usec > FAKE_CREDENTIALS_LIFETIME_MAX_USEC)
                return control_client_reply_error(c, "expires-in: '%s' is longer than %s", expires_in,
                                                  format_duration(d, sizeof(d),
                                                                  FAKE_CREDENTIALS_LIFETIME_MAX_USEC));
        if (fc.none && (id || secret || token))
                return control_client_reply_error(c, "--none takes no keys or token");
        if (m->fake_cloud == CLOUD_AWS) {
                if (!fc.none && (!id || !secret))
                        return control_client_reply_error(c, "give ACCESS_KEY_ID and SECRET (or --none)");
                fc.access_key_id = id;
                fc.secret_access_key = secret;
                fc.session_token = token;
        } else {
                if (id || secret)
                        return control_client_reply_error(c, "%s serves a bearer token, not a key "
                                                             "pair: give --token",
                                                          cloud_kind_to_string(m->fake_cloud));
                if (!fc.none && !token)
                        return control_client_reply_error(c, "give --token TOKEN (or --none)");
                fc.token = token;
        }
        r = fake_server_set_credentials(m->fake, &fc);
        if (r == -EINVAL)
                return control_client_reply_error(c, "keys and tokens must be 1..%d printable characters "
                                                     "without spaces", FAKE_CREDENTIALS_VALUE_MAX);
        if (r < 0)
                return control_client_reply_error(c, "%s", strerror(-r));

        if (fc.none)
                log_info("Fake metadata: serving no instance credentials");
        else
                log_info("Fake metadata: serving %s%s%s, each answer expiring %s later",
                         m->fake_cloud == CLOUD_AWS ? "access key " : "a new bearer token",
                         m->fake_cloud == CLOUD_AWS ? id : "",
                         m->fake_cloud == CLOUD_AWS && token ? " with a session token" : "",
                         format_duration(d, sizeof(d), fc.lifetime_usec));
        if (!fc.none) {
                if (m->fake_cloud == CLOUD_AWS) {
                        control_client_reply_kv(c, "role", "%s", FAKE_ROLE_NAME);
                        control_client_reply_kv(c, "access_key_id", "%s", id);
                }
                control_client_reply_kv(c, "expires_in", "%s",
                                        format_duration(d, sizeof(d), fc.lifetime_usec));
        }
        control_client_reply_ok(c);
}

/* The real uid of @pid from /proc, or -1. */
static long process_uid(pid_t pid) {
        char path[64], line[256];
        long uid = -1;
        FILE *f;

        (void) snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, "Uid:", 4) == 0) {
                        uid = strtol(line + 4, NULL, 10);
                        break;
                }
        fclose(f);
        return uid;
}

static void cmd_done(Manager *m, ControlClient *c, const ControlRequest *req) {
        static const char *const keys[] = { "pid", NULL };
        const char *bad = NULL, *p;
        long pid;
        int r;

        if (control_request_check_keys(req, keys, &bad) < 0)
                return control_client_reply_error(c, "unknown argument '%s'", bad);
        p = control_request_get(req, "pid");
        if (!p)
                pid = control_client_pid(c);
        else if (parse_int(p, 1, INT32_MAX, &pid) < 0)
                return control_client_reply_error(c, "pid: not a PID: '%s'", p);
        if (!client_privileged(m, c) && pid != control_client_pid(c) &&
            process_uid((pid_t) pid) != (long) control_client_uid(c))
                return control_client_reply_error(c, "permission denied: PID %ld is not yours", pid);
        if (!m->plan)
                return control_client_reply_error(c, "no response plan is running");
        r = plan_mark_done(m->plan, (pid_t) pid);
        if (r < 0)
                return control_client_reply_error(c, "PID %ld is not a process the plan waits for", pid);
        control_client_reply_ok(c);
}

static void on_manual_upload_object(UploadStage *s, const char *upload, const char *source, const char *object,
                                    uint64_t bytes, uint64_t duration_usec, bool skipped, int error,
                                    const char *detail, void *userdata) {
        Manager *m = userdata;
        const UploadObjectStats *st = upload_stage_object_stats(s);

        report_upload(NULL, upload, source, object, bytes, duration_usec, skipped, error, detail,
                      st ? st->parts : 0, st ? st->retries : 0);
        if (m->upload_client)
                control_client_reply_kv(m->upload_client, "object", "%s %s %s%s%s", object,
                                        error < 0 ? "failed" : skipped ? "skipped" : "sent", error < 0 ? "(" : "",
                                        error < 0 ? strna(detail) : "", error < 0 ? ")" : "");
}

static void on_upload_reaper(uv_timer_t *t) {
        Manager *m = container_of(t, Manager, upload_reaper);

        if (m->upload) {
                upload_stage_close(m->upload);
                m->upload = NULL;
        }
}

static void on_manual_upload_done(UploadStage *s, unsigned n_ok, unsigned n_skipped, unsigned n_failed,
                                  uint64_t bytes, void *userdata) {
        Manager *m = userdata;
        ControlClient *c = TAKE_PTR(m->upload_client);

        log_info("Upload by hand: %u sent, %u skipped, %u failed, %" PRIu64 " bytes", n_ok, n_skipped, n_failed,
                 bytes);
        /* Inside the stage's own callback: free it from the loop. */
        (void) uv_timer_start(&m->upload_reaper, on_upload_reaper, 0, 0);
        if (!c)
                return;
        if (control_client_is_connected(c)) {
                control_client_reply_kv(c, "sent", "%u", n_ok);
                control_client_reply_kv(c, "skipped", "%u", n_skipped);
                control_client_reply_kv(c, "failed", "%u", n_failed);
                control_client_reply_kv(c, "bytes", "%" PRIu64, bytes);
                if (n_failed > 0)
                        control_client_reply_failed(c, "%u object(s) failed, see above and the journal", n_failed);
                else
                        control_client_reply_ok(c);
        }
        control_client_unref(c);
}

static void cmd_upload(Manager *m, ControlClient *c, const ControlRequest *req) {
        static const UploadStageCallbacks cb = {
                .on_object = on_manual_upload_object,
                .on_done = on_manual_upload_done,
                .on_manifest = upload_log_manifest,
        };
        static const char *const keys[] = { "name", NULL };
        const char *bad = NULL, *name;
        UploadContext ctx;
        bool found = false;
        int r;

        if (control_request_check_keys(req, keys, &bad) < 0)
                return control_client_reply_error(c, "unknown argument '%s'", bad);
        if (!client_privileged(m, c))
                return control_client_reply_error(c, "permission denied (uid %u)", (unsigned) control_client_uid(c));
        name = control_request_get(req, "name");
        for (size_t i = 0; i < m->config->n_uploads; i++)
                if (!name || streq(m->config->uploads[i].name, name))
                        found = true;
        if (!found)
                return control_client_reply_error(c, name ? "no [upload \"%s\"] in the configuration"
                                                          : "no [upload] sections in the configuration%s",
                                                  name ? name : "");
        if (m->plan || m->upload)
                return control_client_reply_error(c, "busy: %s", m->plan ? "the response plan is running (it "
                                                                          "uploads itself)"
                                                                        : "an upload is already running");
        /* By hand wins over the background run: it would send the same files. */
        manager_stop_sync(m, true);

        ctx = manager_upload_context(m, 0);
        r = upload_stage_new(&m->loop, m->config->uploads, m->config->n_uploads, name, m->config->state_dir, &ctx,
                             now_monotonic_usec() + m->config->default_deadline_usec, &cb, m, &m->upload);
        /* (A background sync run goes on; the manifest keeps the two from sending a file twice after.) */
        if (r >= 0)
                r = upload_stage_start(m->upload);
        if (r < 0) {
                if (m->upload) {
                        upload_stage_close(m->upload);
                        m->upload = NULL;
                }
                return control_client_reply_error(c, "could not start the upload: %s", strerror(-r));
        }
        log_info("Upload by hand (%s) from PID %d", name ? name : "all", (int) control_client_pid(c));
        m->upload_client = control_client_ref(c);
}

static void on_control_request(ControlClient *c, const ControlRequest *req, void *userdata) {
        Manager *m = userdata;

        log_debug("Control: '%s' from PID %d", req->command, (int) control_client_pid(c));
        if (streq(req->command, "status"))
                cmd_status(m, c);
        else if (streq(req->command, "trigger"))
                cmd_trigger(m, c, req);
        else if (streq(req->command, "fake-notice"))
                cmd_fake_notice(m, c, req);
        else if (streq(req->command, "fake-credentials"))
                cmd_fake_credentials(m, c, req);
        else if (streq(req->command, "done"))
                cmd_done(m, c, req);
        else if (streq(req->command, "upload"))
                cmd_upload(m, c, req);
        else if (streq(req->command, "ping"))
                control_client_reply_ok(c);
        else
                control_client_reply_error(c, "unknown command '%s'", req->command);
}

/* ---- reload and stop -------------------------------------------------------- */

static int manager_reload(Manager *m) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *err = NULL, *url = NULL;
        CloudKind cloud;
        bool new_provider, new_socket;
        int r;

        if (!m->config_path) {
                log_info("Reload requested, but the daemon runs on built-in defaults, nothing to reload");
                return 0;
        }
        (void) sd_notifyf(false, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, now_monotonic_usec());
        r = config_load(m->config_path, &c, &err);
        if (r < 0) {
                log_error_errno(r, "%s, keeping previous configuration", err ? err : "Failed to load config");
                (void) sd_notify(false, "READY=1");
                return r;
        }
        r = manager_pick_cloud(m, c, false, &cloud, &url);
        if (r < 0) {
                log_error("Reload: keeping previous configuration");
                (void) sd_notify(false, "READY=1");
                return r;
        }

        new_provider = cloud != m->cloud || !streq(url, m->base_url);
        new_socket = !streq(c->control_socket, m->config->control_socket);

        if (new_socket) {
                ControlServer *s = NULL;
                r = control_server_new(&m->loop, c->control_socket, on_control_request, m, &s);
                if (r < 0) {
                        log_error_errno(r, "Reload: failed to listen on '%s': %m, keeping previous configuration",
                                        c->control_socket);
                        (void) sd_notify(false, "READY=1");
                        return r;
                }
                control_server_close(m->control);
                m->control = s;
        }

        /* A running plan keeps the configuration it started with. */
        if (m->plan) {
                config_free(m->retired_config);
                m->retired_config = m->config;
        } else
                config_free(m->config);
        m->config = TAKE_PTR(c);

        log_open(m->config->log);
        notice_set_events_mask(&m->notice, m->config->events_mask);
        manager_restart_sync(m);
        if (new_provider) {
                log_info("Reload: now watching %s metadata at %s", cloud_kind_to_string(cloud), url);
                provider_stop(m->provider);
                m->provider = provider_free(m->provider);
                free(m->base_url);
                m->base_url = TAKE_PTR(url);
                m->cloud = cloud;
                r = manager_start_provider(m);
                if (r < 0)
                        return r;
        } else
                provider_set_config(m->provider, m->config);

        log_info("Configuration reloaded from '%s'", m->config_path);
        (void) sd_notify(false, "READY=1");
        manager_update_status(m);
        return 0;
}

static void manager_stop(Manager *m, int code) {
        if (m->stopping)
                return;
        m->stopping = true;
        m->exit_code = code;
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Stopping");

        if (m->plan) {
                log_warning("Stopping while the response plan runs (%s stage): its hooks are killed",
                            plan_stage_name(m->plan));
                plan_abort(m->plan);
                plan_close(m->plan);
                m->plan = NULL;
        }
        reply_waiters(m, NULL);
        if (m->provider) {
                provider_stop(m->provider);
                m->provider = provider_free(m->provider);
        }
        if (m->control) {
                control_server_close(m->control);
                m->control = NULL;
        }
        if (m->fake) {
                fake_server_close(m->fake);
                m->fake = NULL;
        }
        if (m->http) {
                http_close(m->http);
                m->http = NULL;
        }
        uv_close((uv_handle_t *) &m->sigterm, NULL);
        uv_close((uv_handle_t *) &m->sigint, NULL);
        uv_close((uv_handle_t *) &m->sighup, NULL);
        uv_close((uv_handle_t *) &m->watchdog, NULL);
        uv_close((uv_handle_t *) &m->plan_reaper, NULL);
        uv_close((uv_handle_t *) &m->upload_reaper, NULL);
        manager_stop_sync(m, false);
        m->sync = sync_watch_free(m->sync);
        uv_close((uv_handle_t *) &m->sync_reaper, NULL);
        if (m->upload) {
                upload_stage_close(m->upload);
                m->upload = NULL;
        }
        if (m->upload_client) {
                if (control_client_is_connected(m->upload_client))
                        control_client_reply_error(m->upload_client, "the daemon is stopping");
                m->upload_client = control_client_unref(m->upload_client);
        }
        if (m->plan_closing) {
                plan_close(m->plan_closing);
                m->plan_closing = NULL;
        }
}

static void on_signal(uv_signal_t *s, int signum) {
        Manager *m = s->data;

        if (signum == SIGHUP && m->detecting) {
                log_info("SIGHUP while detecting the cloud, ignoring");
                return;
        }
        if (signum == SIGHUP) {
                log_info("SIGHUP: reloading configuration");
                (void) manager_reload(m);
                return;
        }
        /* A stop while a plan runs (a system shutdown during a preemption, say)
         * waits for the plan, which the deadline bounds; a second signal stops
         * at once. */
        if (m->plan && !m->stop_after_plan) {
                /* The plan's own deadline: a notice without one works to default_deadline. */
                int64_t left = (int64_t) plan_deadline_usec(m->plan) - (int64_t) now_realtime_usec();
                uint64_t extend = (uint64_t) MAX(left, (int64_t) 0) + 5 * USEC_PER_SEC;

                m->stop_after_plan = true;
                log_notice("%s: stopping once the response plan has finished (at most %" PRIu64
                           "s; send it again to stop now)",
                           signal_to_string(signum), extend / USEC_PER_SEC);
                (void) sd_notifyf(false, "EXTEND_TIMEOUT_USEC=%" PRIu64 "\nSTATUS=Finishing the response plan "
                                         "before stopping", extend);
                return;
        }
        log_info("%s: stopping", signal_to_string(signum));
        manager_stop(m, 0);
}

/* ---- lifecycle ---------------------------------------------------------------- */

int manager_new(Config *config, const ManagerOptions *opts, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        r = uv_loop_init(&m->loop);
        if (r < 0)
                return r;
        m->loop_initialized = true;
        m->config = config;
        m->fake_cloud = opts->fake_cloud;
        if (opts->config_path) {
                m->config_path = strdup(opts->config_path);
                if (!m->config_path)
                        return -ENOMEM;
        }
        notice_init(&m->notice, config->events_mask);
        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        if (m->loop_initialized) {
                if (!m->stopping && (m->http || m->control || m->fake || m->provider))
                        manager_stop(m, 0);
                (void) uv_run(&m->loop, UV_RUN_DEFAULT);
                if (uv_loop_close(&m->loop) < 0)
                        log_debug("Loop still has handles at exit");
        }
        config_free(m->retired_config);
        config_free(m->config);
        free(m->config_path);
        free(m->base_url);
        free(m);
        return NULL;
}

static int manager_setup_signals(Manager *m) {
        struct {
                uv_signal_t *h;
                int sig;
        } table[] = { { &m->sigterm, SIGTERM }, { &m->sigint, SIGINT }, { &m->sighup, SIGHUP } };
        int r;

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                r = uv_signal_init(&m->loop, table[i].h);
                if (r < 0)
                        return r;
                table[i].h->data = m;
                r = uv_signal_start(table[i].h, on_signal, table[i].sig);
                if (r < 0)
                        return r;
        }
        return 0;
}

int manager_run(Manager *m) {
        uint64_t wd = 0;
        int r;

        /* Handles that manager_stop() closes unconditionally come first. */
        r = manager_setup_signals(m);
        if (r < 0)
                return log_error_errno(r, "Failed to set up signal handling: %m");
        (void) uv_timer_init(&m->loop, &m->watchdog);
        (void) uv_timer_init(&m->loop, &m->plan_reaper);
        (void) uv_timer_init(&m->loop, &m->upload_reaper);
        (void) uv_timer_init(&m->loop, &m->sync_reaper);

        r = http_new(&m->loop, &m->http);
        if (r < 0) {
                log_error_errno(r, "Failed to set up HTTP: %m");
                goto fail;
        }

        if (m->fake_cloud != _CLOUD_INVALID) {
                r = fake_server_new(&m->loop, m->fake_cloud, "127.0.0.1", 0, &m->fake);
                if (r == -EOPNOTSUPP) {
                        log_error("--fake-metadata=%s: no fake for this cloud in this version",
                                  cloud_kind_to_string(m->fake_cloud));
                        goto fail;
                }
                if (r < 0) {
                        log_error_errno(r, "Failed to start the fake metadata service: %m");
                        goto fail;
                }
                /* On stdout too, so a script can read the address. */
                printf("spotwatchd: fake metadata service (%s) at %s\n", cloud_kind_to_string(m->fake_cloud),
                       fake_server_url(m->fake));
                fflush(stdout);
                log_info("Fake metadata service (%s) listening at %s", cloud_kind_to_string(m->fake_cloud),
                         fake_server_url(m->fake));
        }

        r = manager_pick_cloud(m, m->config, true, &m->cloud, &m->base_url);
        if (r == -ECANCELED && m->stopping) {
                /* SIGTERM while the cloud = auto probes ran: a normal stop. */
                (void) uv_run(&m->loop, UV_RUN_DEFAULT);
                log_info("Stopped");
                return m->exit_code;
        }
        if (r < 0)
                goto fail;

        r = control_server_new(&m->loop, m->config->control_socket, on_control_request, m, &m->control);
        if (r < 0) {
                log_error_errno(r, "Failed to listen on control socket '%s': %m", m->config->control_socket);
                goto fail;
        }

        {
                char interrupted[4][160];
                r = state_load(m->config->state_dir, &m->notice, interrupted, ELEMENTSOF(interrupted));
                if (r < 0)
                        log_warning_errno(r, "Failed to read the plan record in '%s': %m; notices already "
                                             "acted on may be acted on again, going on",
                                          m->config->state_dir);
                for (int i = 0; i < r && i < (int) ELEMENTSOF(interrupted); i++)
                        log_warning("The plan for notice '%s' was interrupted by a stop or crash; it is not "
                                    "run again", interrupted[i]);
        }

        r = manager_start_provider(m);
        if (r < 0)
                goto fail;
        manager_restart_sync(m);

        if (sd_watchdog_enabled(false, &wd) > 0 && wd > 0) {
                m->watchdog_usec = wd;
                (void) uv_timer_start(&m->watchdog, on_watchdog, wd / 2 / USEC_PER_MSEC,
                                      MAX(wd / 2 / USEC_PER_MSEC, 1));
        }

        log_info("spotwatchd %s watching %s metadata at %s (control socket %s)", PACKAGE_VERSION,
                 cloud_kind_to_string(m->cloud), m->base_url, m->config->control_socket);
        (void) sd_notify(false, "READY=1");
        manager_update_status(m);

        (void) uv_run(&m->loop, UV_RUN_DEFAULT);
        log_info("Stopped");
        return m->exit_code;

fail:
        manager_stop(m, r);
        (void) uv_run(&m->loop, UV_RUN_DEFAULT);
        return r;
}
