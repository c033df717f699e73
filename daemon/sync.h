/* SPDX-License-Identifier: MIT */
/*
 * sync.h - continuous sync (sync = continuous): watch the source directory
 * of each such [upload] with inotify (uv_fs_event_t) and say when it is time
 * to send what changed. It decides nothing else: the manager starts the
 * upload stage (which skips what the manifest has, so only new or changed
 * files go) and tells this module when that run is over.
 *
 * A run is due once the directory has been quiet for SYNC_QUIET_USEC after a
 * change (a checkpoint still being written keeps changing it), at start-up,
 * and every SYNC_RESCAN_USEC in any case (a missed event, a directory that
 * appeared later). Changes during a run make another run due after it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "config.h"

#define SYNC_QUIET_USEC (2 * USEC_PER_SEC)
#define SYNC_RESCAN_USEC (60 * USEC_PER_SEC)

typedef struct SyncWatch SyncWatch;

/* A run of [upload "@upload"] is due; answer with sync_watch_done() when it is over or could not start. */
typedef void (*SyncDueFn)(SyncWatch *w, const char *upload, void *userdata);

/** sync_watch_new() - watch every [upload] of @uploads with sync = continuous (none: *ret = NULL, 0). */
int sync_watch_new(uv_loop_t *loop, const UploadConfig *uploads, size_t n_uploads, SyncDueFn due, void *userdata,
                   SyncWatch **ret);
/**
 * sync_watch_done() - the run of @upload is over (@again false), or could not
 * run now, e.g. a plan is running (@again true: due again after the quiet time).
 */
void sync_watch_done(SyncWatch *w, const char *upload, bool again);
/** sync_watch_free() - stop watching; no callbacks after. NULL-safe. */
SyncWatch *sync_watch_free(SyncWatch *w);
