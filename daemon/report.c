/* SPDX-License-Identifier: MIT */
/*
 * report.c - build each record once as a list of fields, then send it to the
 * journal (sd_journal_sendv, MESSAGE_ID + SPOTWATCH_* fields) or print it to
 * stderr as one line. Holds no state besides what log.c decided.
 */
#define SD_JOURNAL_SUPPRESS_LOCATION 1

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "report-ids.h"
#include "report.h"
#include "shared/log.h"
#include "shared/parse.h"

#define FIELDS_MAX 24
#define FIELD_MAX 1024
#define MESSAGE_MAX 4400

typedef struct Record {
        ReportKind kind;
        int priority;
        char message[MESSAGE_MAX];
        unsigned n;
        char fields[FIELDS_MAX][FIELD_MAX]; /* "NAME=value" */
} Record;

static const char *const report_kind_table[_REPORT_KIND_MAX] = {
        [REPORT_NOTICE] = "notice",       [REPORT_PLAN_START] = "plan-start",
        [REPORT_SIGNAL] = "signal",       [REPORT_PROCESS] = "process",
        [REPORT_HOOK] = "hook",           [REPORT_HOOK_OUTPUT] = "hook-output",
        [REPORT_PLAN_DONE] = "plan-done",   [REPORT_CANCEL] = "cancel",
        [REPORT_ACK] = "ack",               [REPORT_UPLOAD] = "upload",
};

static const char *const report_id_table[_REPORT_KIND_MAX] = {
        [REPORT_NOTICE] = REPORT_ID_NOTICE,   [REPORT_PLAN_START] = REPORT_ID_PLAN_START,
        [REPORT_SIGNAL] = REPORT_ID_SIGNAL,   [REPORT_PROCESS] = REPORT_ID_PROCESS,
        [REPORT_HOOK] = REPORT_ID_HOOK,       [REPORT_HOOK_OUTPUT] = REPORT_ID_HOOK_OUTPUT,
        [REPORT_PLAN_DONE] = REPORT_ID_PLAN_DONE, [REPORT_CANCEL] = REPORT_ID_CANCEL,
        [REPORT_ACK] = REPORT_ID_ACK,             [REPORT_UPLOAD] = REPORT_ID_UPLOAD,
};

const char *report_kind_to_string(ReportKind k) {
        if (k < 0 || k >= _REPORT_KIND_MAX)
                return NULL;
        return report_kind_table[k];
}

const char *report_kind_message_id(ReportKind k) {
        if (k < 0 || k >= _REPORT_KIND_MAX)
                return NULL;
        return report_id_table[k];
}

static void record_init(Record *r, ReportKind kind, int priority) {
        r->kind = kind;
        r->priority = priority;
        r->n = 0;
        r->message[0] = 0;
}

_printf_(3, 4) static void field(Record *r, const char *name, const char *fmt, ...) {
        va_list ap;
        int k;

        if (r->n >= FIELDS_MAX)
                return;
        k = snprintf(r->fields[r->n], FIELD_MAX, "%s=", name);
        if (k < 0 || k >= FIELD_MAX)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(r->fields[r->n] + k, FIELD_MAX - (size_t) k, fmt, ap);
        va_end(ap);
        r->n++;
}

_printf_(2, 3) static void message(Record *r, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(r->message, sizeof(r->message), fmt, ap);
        va_end(ap);
}

static void event_fields(Record *r, const NoticeEvent *ev) {
        char t[64];

        if (!ev)
                return;
        field(r, "SPOTWATCH_EVENT", "%s", strna(event_kind_to_string(ev->kind)));
        field(r, "SPOTWATCH_CLOUD", "%s", strna(cloud_kind_to_string(ev->cloud)));
        if (ev->deadline_usec > 0)
                field(r, "SPOTWATCH_DEADLINE", "%" PRIu64, ev->deadline_usec / USEC_PER_SEC);
        if (ev->notice_usec > 0)
                field(r, "SPOTWATCH_NOTICE_TIME", "%s", format_rfc3339(t, sizeof(t), ev->notice_usec));
        if (!isempty(ev->id))
                field(r, "SPOTWATCH_NOTICE_ID", "%s", ev->id);
}

/* A value printed bare unless it is empty or holds a space, quote or control byte. */
static void print_value(FILE *f, const char *v) {
        bool plain = *v != 0;

        for (const char *p = v; *p; p++)
                if ((unsigned char) *p <= ' ' || *p == '"' || *p == '\\' || *p == '{' || *p == '}')
                        plain = false;
        if (plain) {
                fputs(v, f);
                return;
        }
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *) v; *p; p++) {
                if (*p == '"' || *p == '\\')
                        fprintf(f, "\\%c", *p);
                else if (*p < ' ' || *p == 0x7f)
                        fprintf(f, "\\u%04x", *p);
                else
                        fputc(*p, f);
        }
        fputc('"', f);
}

static void record_emit(Record *r) {
        if (log_is_journal()) {
                struct iovec iov[FIELDS_MAX + 4];
                char mid[64], prio[16], msg[MESSAGE_MAX + 16];
                unsigned n = 0;

                (void) snprintf(mid, sizeof(mid), "MESSAGE_ID=%s", report_id_table[r->kind]);
                (void) snprintf(prio, sizeof(prio), "PRIORITY=%d", r->priority);
                (void) snprintf(msg, sizeof(msg), "MESSAGE=%s", r->message);
                iov[n++] = (struct iovec) { .iov_base = mid, .iov_len = strlen(mid) };
                iov[n++] = (struct iovec) { .iov_base = prio, .iov_len = strlen(prio) };
                iov[n++] = (struct iovec) { .iov_base = msg, .iov_len = strlen(msg) };
                iov[n++] = (struct iovec) { .iov_base = (char *) "SYSLOG_IDENTIFIER=spotwatchd",
                                            .iov_len = strlen("SYSLOG_IDENTIFIER=spotwatchd") };
                for (unsigned i = 0; i < r->n; i++)
                        iov[n++] = (struct iovec) { .iov_base = r->fields[i], .iov_len = strlen(r->fields[i]) };
                (void) sd_journal_sendv(iov, (int) n);
                return;
        }

        /* One line, written with a single fputs of a built buffer so that
         * records from the daemon and its hooks never interleave mid-line. */
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);
        if (!f)
                return;
        fprintf(f, "spotwatchd[%d]: [%s] ", (int) getpid(), report_kind_table[r->kind]);
        for (const char *p = r->message; *p; p++)
                fputc(*p == '\n' ? ' ' : *p, f);
        if (r->n > 0) {
                fputs(" {", f);
                for (unsigned i = 0; i < r->n; i++) {
                        char *eq = strchr(r->fields[i], '=');
                        if (i > 0)
                                fputc(' ', f);
                        fwrite(r->fields[i], 1, (size_t) (eq - r->fields[i] + 1), f);
                        print_value(f, eq + 1);
                }
                fputc('}', f);
        }
        fputc('\n', f);
        if (fclose(f) == 0 && buf) {
                (void) fputs(buf, stderr);
                (void) fflush(stderr);
        }
        free(buf);
}

void report_notice(const NoticeEvent *ev, bool starts_plan, const char *why_not) {
        Record r;
        char t[64], what[200] = "";

        record_init(&r, REPORT_NOTICE, starts_plan ? LOG_WARNING : LOG_NOTICE);
        /* The cloud's own word only when it says more than the kind. */
        if (!isempty(ev->detail) && !streq(ev->detail, event_kind_to_string(ev->kind)))
                (void) snprintf(what, sizeof(what), " (%s)", ev->detail);
        if (ev->deadline_usec > 0)
                (void) snprintf(t, sizeof(t), ", deadline %s",
                                format_rfc3339((char[64]) {}, 64, ev->deadline_usec));
        else
                t[0] = 0;
        message(&r, "%s notice%s from %s%s%s%s", event_kind_to_string(ev->kind), what,
                cloud_kind_to_string(ev->cloud), t,
                starts_plan ? ", starting the response plan" : ", reported only: ",
                starts_plan ? "" : strna(why_not));
        event_fields(&r, ev);
        if (!isempty(ev->detail))
                field(&r, "SPOTWATCH_DETAIL", "%s", ev->detail);
        field(&r, "SPOTWATCH_STARTS_PLAN", "%s", starts_plan ? "yes" : "no");
        record_emit(&r);
}

void report_plan_start(const NoticeEvent *ev, const char *instance_id) {
        Record r;
        uint64_t now = now_realtime_usec();

        record_init(&r, REPORT_PLAN_START, LOG_NOTICE);
        if (ev->deadline_usec > 0)
                message(&r, "Response plan started for %s notice, %" PRId64 "s left",
                        event_kind_to_string(ev->kind),
                        ((int64_t) ev->deadline_usec - (int64_t) now) / (int64_t) USEC_PER_SEC);
        else
                message(&r, "Response plan started for %s notice", event_kind_to_string(ev->kind));
        event_fields(&r, ev);
        if (instance_id)
                field(&r, "SPOTWATCH_INSTANCE_ID", "%s", instance_id);
        record_emit(&r);
}

void report_signal(const NoticeEvent *ev, const char *process, pid_t pid, int sig, int error, const char *detail) {
        Record r;
        const char *sn = signal_to_string(sig);

        record_init(&r, REPORT_SIGNAL, error < 0 ? LOG_ERR : LOG_NOTICE);
        if (error < 0)
                message(&r, "Failed to send %s to process '%s': %s", strna(sn), process,
                        detail ? detail : strerror(-error));
        else
                message(&r, "Sent %s to process '%s' (PID %d)", strna(sn), process, (int) pid);
        event_fields(&r, ev);
        field(&r, "SPOTWATCH_PROCESS", "%s", process);
        if (pid > 0)
                field(&r, "SPOTWATCH_PID", "%d", (int) pid);
        field(&r, "SPOTWATCH_SIGNAL", "%s", strna(sn));
        if (error < 0) {
                field(&r, "SPOTWATCH_ERROR", "%s", detail ? detail : strerror(-error));
                field(&r, "ERRNO", "%d", -error);
        }
        record_emit(&r);
}

void report_process(const NoticeEvent *ev, const char *process, pid_t pid, bool exited) {
        Record r;

        record_init(&r, REPORT_PROCESS, LOG_NOTICE);
        message(&r, "Process '%s' (PID %d) %s", process, (int) pid, exited ? "exited" : "reported done");
        event_fields(&r, ev);
        field(&r, "SPOTWATCH_PROCESS", "%s", process);
        field(&r, "SPOTWATCH_PID", "%d", (int) pid);
        field(&r, "SPOTWATCH_STATE", "%s", exited ? "exited" : "done");
        record_emit(&r);
}

void report_hook(const NoticeEvent *ev, const char *hook, pid_t pid, int exit_status, int term_signal,
                 bool timed_out, int error, uint64_t duration_usec) {
        Record r;
        char d[32];
        bool ok = error >= 0 && !timed_out && exit_status == 0;

        record_init(&r, REPORT_HOOK, ok ? LOG_NOTICE : LOG_ERR);
        (void) format_duration(d, sizeof(d), duration_usec);
        if (error < 0 && timed_out)
                message(&r, "Hook '%s' not run: no time left before the deadline", hook);
        else if (error < 0)
                message(&r, "Hook '%s' could not be started: %s", hook, strerror(-error));
        else if (timed_out)
                message(&r, "Hook '%s' timed out after %s, its process group was killed", hook, d);
        else if (exit_status >= 0)
                message(&r, "Hook '%s' exited with status %d after %s", hook, exit_status, d);
        else
                message(&r, "Hook '%s' was killed by %s after %s", hook, strna(signal_to_string(term_signal)),
                        d);
        event_fields(&r, ev);
        field(&r, "SPOTWATCH_HOOK", "%s", hook);
        if (pid > 0)
                field(&r, "SPOTWATCH_PID", "%d", (int) pid);
        if (error >= 0 && exit_status >= 0)
                field(&r, "SPOTWATCH_EXIT_STATUS", "%d", exit_status);
        if (error >= 0 && exit_status < 0)
                field(&r, "SPOTWATCH_SIGNAL", "%s", strna(signal_to_string(term_signal)));
        field(&r, "SPOTWATCH_TIMED_OUT", "%s", timed_out ? "yes" : "no");
        field(&r, "SPOTWATCH_DURATION_USEC", "%" PRIu64, duration_usec);
        if (error < 0)
                field(&r, "ERRNO", "%d", -error);
        record_emit(&r);
}

void report_hook_output(const NoticeEvent *ev, const char *hook, pid_t pid, const char *stream, const char *line) {
        Record r;

        record_init(&r, REPORT_HOOK_OUTPUT, streq(stream, "stderr") ? LOG_WARNING : LOG_INFO);
        message(&r, "%s[%d]: %s", hook, (int) pid, line);
        event_fields(&r, ev);
        field(&r, "SPOTWATCH_HOOK", "%s", hook);
        field(&r, "SPOTWATCH_PID", "%d", (int) pid);
        field(&r, "SPOTWATCH_STREAM", "%s", stream);
        record_emit(&r);
}

void report_plan_done(const NoticeEvent *ev, const PlanSummary *s) {
        Record r;
        char d[32];

        record_init(&r, REPORT_PLAN_DONE,
                    s->n_signal_failed + s->n_hooks_failed + s->n_upload_failed > 0 || s->cut_by_deadline ||
                                    s->aborted
                            ? LOG_WARNING
                                                                                                 : LOG_NOTICE);
        (void) format_duration(d, sizeof(d), s->duration_usec);
        if (s->aborted)
                message(&r, "Response plan for %s notice aborted after %s: the daemon is stopping",
                        event_kind_to_string(ev->kind), d);
        else if (ev->deadline_usec > 0)
                message(&r,
                        "Response plan for %s notice finished in %s: %u signalled (%u failed), %u hooks ok, "
                        "%u failed, %u objects uploaded (%u failed), %" PRId64 "s left before the deadline%s",
                        event_kind_to_string(ev->kind), d, s->n_signalled, s->n_signal_failed, s->n_hooks_ok,
                        s->n_hooks_failed, s->n_uploaded, s->n_upload_failed, s->seconds_left,
                        s->cut_by_deadline ? " (cut by the deadline)" : "");
        else
                message(&r,
                        "Response plan for %s notice finished in %s: %u signalled (%u failed), %u hooks ok, "
                        "%u failed",
                        event_kind_to_string(ev->kind), d, s->n_signalled, s->n_signal_failed, s->n_hooks_ok,
                        s->n_hooks_failed);
        event_fields(&r, ev);
        field(&r, "SPOTWATCH_SIGNALLED", "%u", s->n_signalled);
        field(&r, "SPOTWATCH_SIGNAL_FAILED", "%u", s->n_signal_failed);
        field(&r, "SPOTWATCH_WAITED_OUT", "%u", s->n_waited_out);
        field(&r, "SPOTWATCH_HOOKS_OK", "%u", s->n_hooks_ok);
        field(&r, "SPOTWATCH_HOOKS_FAILED", "%u", s->n_hooks_failed);
        if (s->n_uploaded + s->n_upload_skipped + s->n_upload_failed > 0) {
                field(&r, "SPOTWATCH_UPLOADED", "%u", s->n_uploaded);
                field(&r, "SPOTWATCH_UPLOAD_SKIPPED", "%u", s->n_upload_skipped);
                field(&r, "SPOTWATCH_UPLOAD_FAILED", "%u", s->n_upload_failed);
                field(&r, "SPOTWATCH_BYTES", "%" PRIu64, s->bytes_uploaded);
        }
        field(&r, "SPOTWATCH_DURATION_USEC", "%" PRIu64, s->duration_usec);
        if (ev->deadline_usec > 0)
                field(&r, "SPOTWATCH_SECONDS_LEFT", "%" PRId64, s->seconds_left);
        field(&r, "SPOTWATCH_CUT_BY_DEADLINE", "%s", s->cut_by_deadline ? "yes" : "no");
        if (s->aborted)
                field(&r, "SPOTWATCH_ABORTED", "yes");
        record_emit(&r);
}

void report_cancel(const NoticeEvent *ev) {
        Record r;

        record_init(&r, REPORT_CANCEL, LOG_NOTICE);
        message(&r, "%s notice%s%s%s from %s was cancelled before its time", event_kind_to_string(ev->kind),
                isempty(ev->detail) ? "" : " (", isempty(ev->detail) ? "" : ev->detail,
                isempty(ev->detail) ? "" : ")", cloud_kind_to_string(ev->cloud));
        event_fields(&r, ev);
        if (!isempty(ev->detail))
                field(&r, "SPOTWATCH_DETAIL", "%s", ev->detail);
        record_emit(&r);
}

void report_ack(const NoticeEvent *ev, int error, const char *detail) {
        Record r;

        record_init(&r, REPORT_ACK, error < 0 ? LOG_ERR : LOG_NOTICE);
        if (error < 0)
                message(&r, "Failed to acknowledge the %s notice to %s: %s", event_kind_to_string(ev->kind),
                        cloud_kind_to_string(ev->cloud), detail ? detail : strerror(-error));
        else
                message(&r, "Acknowledged the %s notice to %s: the platform may go ahead",
                        event_kind_to_string(ev->kind), cloud_kind_to_string(ev->cloud));
        event_fields(&r, ev);
        field(&r, "SPOTWATCH_ACK", "%s", error < 0 ? "failed" : "sent");
        if (error < 0) {
                field(&r, "SPOTWATCH_ERROR", "%s", detail ? detail : strerror(-error));
                field(&r, "ERRNO", "%d", -error);
        }
        record_emit(&r);
}

void report_upload(const NoticeEvent *ev, const char *upload, const char *source, const char *object,
                   uint64_t bytes, uint64_t duration_usec, bool skipped, int error, const char *detail,
                   unsigned parts, unsigned retries) {
        Record r;
        char d[32];
        /* MiB/s with two decimals, in integers: no floating point in records. */
        uint64_t centi = duration_usec > 0 ? bytes * 100 * USEC_PER_SEC / duration_usec / (1024 * 1024) : 0;

        record_init(&r, REPORT_UPLOAD, error < 0 ? LOG_ERR : LOG_NOTICE);
        (void) format_duration(d, sizeof(d), duration_usec);
        if (error < 0)
                message(&r, "Upload '%s': %s not sent to %s: %s", upload, source, object,
                        detail ? detail : strerror(-error));
        else if (skipped)
                message(&r, "Upload '%s': %s is already at %s, unchanged, skipped", upload, source, object);
        else
                message(&r, "Upload '%s': %s sent to %s, %" PRIu64 " bytes in %s (%" PRIu64 ".%02" PRIu64
                            " MiB/s, %u part%s, %u retr%s), verified",
                        upload, source, object, bytes, d, centi / 100, centi % 100, parts, parts == 1 ? "" : "s",
                        retries, retries == 1 ? "y" : "ies");
        event_fields(&r, ev);
        field(&r, "SPOTWATCH_UPLOAD", "%s", upload);
        field(&r, "SPOTWATCH_SOURCE", "%s", source);
        field(&r, "SPOTWATCH_OBJECT", "%s", object);
        field(&r, "SPOTWATCH_BYTES", "%" PRIu64, bytes);
        field(&r, "SPOTWATCH_DURATION_USEC", "%" PRIu64, duration_usec);
        if (error >= 0 && !skipped)
                field(&r, "SPOTWATCH_MIBPS", "%" PRIu64 ".%02" PRIu64, centi / 100, centi % 100);
        if (!skipped) {
                field(&r, "SPOTWATCH_PARTS", "%u", parts);
                field(&r, "SPOTWATCH_RETRIES", "%u", retries);
        }
        field(&r, "SPOTWATCH_STATE", "%s", error < 0 ? "failed" : skipped ? "skipped" : "sent");
        if (error < 0) {
                field(&r, "SPOTWATCH_ERROR", "%s", detail ? detail : strerror(-error));
                field(&r, "ERRNO", "%d", -error);
        }
        record_emit(&r);
}
