/* SPDX-License-Identifier: MIT */
/*
 * report.h - the structured records of what the daemon saw and did: one
 * MESSAGE_ID per kind (report-ids.h), the SPEC's SPOTWATCH_* fields, sent with
 * sd_journal_sendv(); without a journal the same record goes to stderr as one
 * line:  spotwatchd[PID]: [KIND] MESSAGE {SPOTWATCH_X=... ...}
 * The only module that emits MESSAGE_ID records.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "action.h"
#include "event.h"

typedef enum ReportKind {
        REPORT_NOTICE,
        REPORT_PLAN_START,
        REPORT_SIGNAL,
        REPORT_PROCESS,
        REPORT_HOOK,
        REPORT_HOOK_OUTPUT,
        REPORT_PLAN_DONE,
        REPORT_CANCEL,
        REPORT_ACK,
        REPORT_UPLOAD,
        _REPORT_KIND_MAX,
        _REPORT_KIND_INVALID = -EINVAL,
} ReportKind;

const char *report_kind_to_string(ReportKind k);
const char *report_kind_message_id(ReportKind k);

/** A notice was seen for the first time; @starts_plan says whether it starts one. */
void report_notice(const NoticeEvent *ev, bool starts_plan, const char *why_not);
void report_plan_start(const NoticeEvent *ev, const char *instance_id);
void report_signal(const NoticeEvent *ev, const char *process, pid_t pid, int sig, int error, const char *detail);
/** A signalled process exited (@exited) or said done. */
void report_process(const NoticeEvent *ev, const char *process, pid_t pid, bool exited);
void report_hook(const NoticeEvent *ev, const char *hook, pid_t pid, int exit_status, int term_signal,
                 bool timed_out, int error, uint64_t duration_usec);
void report_hook_output(const NoticeEvent *ev, const char *hook, pid_t pid, const char *stream, const char *line);
void report_plan_done(const NoticeEvent *ev, const PlanSummary *s);
/** A notice the cloud withdrew before its time (Azure: the event left the document). */
void report_cancel(const NoticeEvent *ev);
/** The cloud was told the plan is done (Azure StartRequests): @error 0 or -errno with @detail. */
void report_ack(const NoticeEvent *ev, int error, const char *detail);
/** One object of an [upload]: sent, skipped (already there, unchanged) or failed. @ev may be NULL (by hand). */
void report_upload(const NoticeEvent *ev, const char *upload, const char *source, const char *object,
                   uint64_t bytes, uint64_t duration_usec, bool skipped, int error, const char *detail,
                   unsigned parts, unsigned retries);
