/* SPDX-License-Identifier: MIT */
/*
 * action.h - executing a response plan: the signal stage (action-signal.c),
 * the hook stage (action-hook.c) and the plan that runs them in order against
 * the deadline (action.c). Actions execute, they do not decide (notice.c
 * decides); the plan emits its records through report.c.
 *
 * Times: deadlines handed to stages are monotonic usec as returned by
 * now_monotonic_usec(); only the cloud's deadline in NoticeEvent is wall-clock.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "event.h"

uint64_t now_monotonic_usec(void);
uint64_t now_realtime_usec(void);

/* ---- signal stage ------------------------------------------------------ */

typedef struct SignalStage SignalStage;

typedef struct SignalStageCallbacks {
        /* One process was signalled (@error 0) or could not be (@error < 0, @pid may be 0). */
        void (*on_signalled)(SignalStage *s, const char *process, pid_t pid, int sig, int error,
                             const char *detail, void *userdata);
        /* A signalled process exited (seen through its pidfd) or said done. */
        void (*on_finished)(SignalStage *s, const char *process, pid_t pid, bool exited, void *userdata);
        /* Every process with wait > 0 has exited or said done, or the wait ran out. Called once. */
        void (*on_done)(SignalStage *s, unsigned n_signalled, unsigned n_failed, unsigned n_waited_out,
                        void *userdata);
} SignalStageCallbacks;

/**
 * signal_stage_new() - @until_usec (monotonic) bounds every wait, whatever
 * the process's own wait = says.
 */
int signal_stage_new(uv_loop_t *loop, const Config *config, uint64_t until_usec, const SignalStageCallbacks *cb,
                     void *userdata, SignalStage **ret);
/**
 * signal_stage_start() - resolve every [process] (pidfile, match; never our
 * own pid), open a pidfd for each, send the signal, start waiting. on_done
 * is always called later from the loop, never from inside this call.
 */
int signal_stage_start(SignalStage *s);
/** signal_stage_mark_done() - `spotwatchctl done` for @pid; -ESRCH if not one of ours. */
int signal_stage_mark_done(SignalStage *s, pid_t pid);
/** signal_stage_close() - stop waiting, close pidfds, free from the loop. No callbacks after. */
void signal_stage_close(SignalStage *s);

/* ---- hook stage -------------------------------------------------------- */

typedef struct HookStage HookStage;

typedef struct HookStageCallbacks {
        void (*on_started)(HookStage *s, const char *hook, pid_t pid, void *userdata);
        /* One line of output (without the newline; long lines are cut at 4 KiB). @stream "stdout"/"stderr". */
        void (*on_output)(HookStage *s, const char *hook, pid_t pid, const char *stream, const char *line,
                          void *userdata);
        /*
         * A hook ended. @exit_status >= 0 when it exited, -1 when it was killed
         * by @term_signal; @timed_out when we killed its process group at the
         * timeout or the deadline; @error < 0 when it could not be started.
         */
        void (*on_exited)(HookStage *s, const char *hook, pid_t pid, int exit_status, int term_signal,
                          bool timed_out, int error, uint64_t duration_usec, void *userdata);
        /* All order groups ran (or the deadline cut them). Called once. */
        void (*on_done)(HookStage *s, unsigned n_ok, unsigned n_failed, void *userdata);
} HookStageCallbacks;

/**
 * hook_stage_new() - run @hooks (copied; sorted by order here, stable). @env is a NULL-terminated list of "SPOTWATCH_X=..."
 * strings added to each hook's environment (copied). Each hook is killed
 * (its whole process group, SIGKILL) at min(its timeout, @until_usec).
 */
int hook_stage_new(uv_loop_t *loop, const HookConfig *hooks, size_t n_hooks, char *const *env,
                   uint64_t until_usec, const HookStageCallbacks *cb, void *userdata, HookStage **ret);
/** hook_stage_start() - start the lowest order group; on_done is always called later from the loop. */
int hook_stage_start(HookStage *s);
/** hook_stage_close() - kill what still runs, free from the loop. No callbacks after. */
void hook_stage_close(HookStage *s);

/* ---- upload stage (action-upload.c) ------------------------------------- */

typedef struct UploadStage UploadStage;

/* What the object stores (s3://, gs://, az://) need from the daemon. */
typedef struct UploadContext {
        Http *http;                /* NULL: only file:// destinations work */
        CloudKind cloud;           /* whose metadata service has the instance credentials */
        const char *metadata_url;  /* its base URL (the fake's in --fake-metadata mode); copied */
        uint64_t request_timeout_usec; /* each metadata request */
        uint64_t rate_limit;       /* bytes/s per object (continuous sync's sync_rate); 0 = none */
} UploadContext;

/* About the object just settled, valid inside on_object only. */
typedef struct UploadObjectStats {
        unsigned parts;            /* 1 for a single PUT or a file:// copy, 0 if nothing was sent */
        unsigned retries;          /* requests sent again */
} UploadObjectStats;

/* The manifest of what was sent, in state_dir: "OBJECT SIZE MTIME_NSEC SHA256" lines. */
#define UPLOAD_MANIFEST_FILE "uploads"
/* Files sent per [upload] at most (newest first); older matches are reported failed (-E2BIG). */
#define UPLOAD_FILES_MAX 10000

typedef struct UploadStageCallbacks {
        /*
         * One source file is settled: uploaded (@error 0, @skipped false),
         * skipped because the manifest says it is already there unchanged
         * (@skipped true), or failed (@error < 0, @detail says what). @object
         * is the destination URL of the object (the destination's, when the
         * error is about the whole [upload], e.g. its directory is missing;
         * @source is then the source= as configured). @bytes is the source
         * file's size. Details to expect: "deadline reached" (-ETIME),
         * "source changed while being read" (-EBUSY), "verification failed:
         * ..." (-EIO), "cannot create destination directory '...': ...",
         * "not sent: more than 10000 files match, ..." (-E2BIG).
         */
        void (*on_object)(UploadStage *s, const char *upload, const char *source, const char *object,
                          uint64_t bytes, uint64_t duration_usec, bool skipped, int error, const char *detail,
                          void *userdata);
        /* Every [upload] is done or the deadline cut it. Called once, from the loop. */
        void (*on_done)(UploadStage *s, unsigned n_ok, unsigned n_skipped, unsigned n_failed, uint64_t bytes,
                        void *userdata);
        /*
         * Optional: the manifest could not be read or written (@detail says
         * which and why). Not fatal: objects are still sent, but unchanged
         * ones may be sent again next time. At most once per read or write.
         */
        void (*on_manifest)(UploadStage *s, int error, const char *detail, void *userdata);
} UploadStageCallbacks;

/**
 * upload_stage_new() - send the files of @uploads (copied) — all of them, or
 * only the one named @only (NULL: all) — newest first, recording what was
 * sent in @state_dir's manifest, and stop cleanly at @until_usec (monotonic).
 * @state_dir NULL: no manifest (nothing skipped, nothing recorded). -ENOENT
 * if @only names no [upload]. on_done's @bytes counts the objects sent (not
 * the skipped ones).
 */
int upload_stage_new(uv_loop_t *loop, const UploadConfig *uploads, size_t n_uploads, const char *only,
                     const char *state_dir, const UploadContext *ctx, uint64_t until_usec,
                     const UploadStageCallbacks *cb, void *userdata, UploadStage **ret);
/**
 * upload_log_manifest() - an on_manifest callback for every stage: the
 * manifest could not be read or written; a warning, not fatal.
 */
void upload_log_manifest(UploadStage *s, int error, const char *detail, void *userdata);
/** upload_stage_object_stats() - parts and retries of the object on_object reports; only inside on_object. */
const UploadObjectStats *upload_stage_object_stats(UploadStage *s);
/**
 * upload_stage_progress() - the object in flight: its URL (NULL if none),
 * bytes done and its size. For `spotwatchctl status`.
 */
const char *upload_stage_progress(UploadStage *s, uint64_t *ret_done, uint64_t *ret_size);
/** upload_stage_start() - on_done is always called later from the loop, never from inside this call. */
int upload_stage_start(UploadStage *s);
/** upload_stage_close() - stop (a partial object is removed, never left half-visible), free from the loop. */
void upload_stage_close(UploadStage *s);

/* ---- the plan ----------------------------------------------------------- */

typedef struct Plan Plan;

typedef struct PlanSummary {
        unsigned n_signalled, n_signal_failed, n_waited_out;
        unsigned n_hooks_ok, n_hooks_failed;
        unsigned n_uploaded, n_upload_skipped, n_upload_failed;
        uint64_t bytes_uploaded;
        uint64_t duration_usec;
        int64_t seconds_left; /* at the end, against the deadline */
        bool cut_by_deadline;
        bool aborted;         /* the daemon stopped before the plan finished */
} PlanSummary;

typedef void (*PlanDoneFn)(Plan *p, const PlanSummary *summary, void *userdata);

/**
 * plan_new() - a plan for @ev (already reported by the caller). @instance_id
 * may be NULL. @extra_hook, if not NULL, runs with the configured hooks (GCP's
 * own shutdown-script); it is copied. The plan keeps a reference to @config
 * until it finishes.
 */
int plan_new(uv_loop_t *loop, const Config *config, const NoticeEvent *ev, const char *instance_id,
             const HookConfig *extra_hook, PlanDoneFn done, void *userdata, Plan **ret);
/** plan_set_upload_context() - what the upload stage needs for object stores (copied); before plan_start(). */
int plan_set_upload_context(Plan *p, const UploadContext *ctx);
/** plan_upload_stage() - the running upload stage, or NULL. */
UploadStage *plan_upload_stage(Plan *p);
int plan_start(Plan *p);
/** plan_mark_done() - forwards `spotwatchctl done PID` to the signal stage. */
int plan_mark_done(Plan *p, pid_t pid);
const char *plan_stage_name(Plan *p);
/** plan_deadline_usec() - the wall-clock deadline the plan works to (the cloud's, or default_deadline's). */
uint64_t plan_deadline_usec(Plan *p);
/** plan_abort() - the daemon is stopping: emit the plan-done record as aborted (once); no callback. */
void plan_abort(Plan *p);
/** plan_close() - abort whatever runs and free from the loop; no callback. */
void plan_close(Plan *p);
