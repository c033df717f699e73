/* SPDX-License-Identifier: MIT */
/*
 * state.h - the plan record persisted in state_dir, so that a restarted
 * daemon never runs the plan of a notice it has already acted on. The file
 * state_dir/plans holds one line per event: "start ID" when a plan begins,
 * "done ID" when it ends, appended before the plan's first action (and made
 * durable right after the signals went out: an fsync can take milliseconds on
 * a busy disk, and only a machine crash, which ends the VM anyway, could lose
 * an unsynced line). No logging; errors go to the caller.
 */
#pragma once

#include <stdbool.h>

#include "notice.h"

#define STATE_FILE "plans"

/**
 * state_load() - mark every id in @dir/plans as seen in @n. Returns the number
 * of plans that were started but never finished (interrupted by a crash or a
 * stop), 0 if none or no file yet, or -errno. The ids of the interrupted ones
 * are written to @ret_interrupted (size @n_interrupted) as far as they fit.
 */
int state_load(const char *dir, Notice *n, char (*ret_interrupted)[160], unsigned n_interrupted);

/**
 * state_record() - append "@what @id" (what: "start" or "done"); creates @dir
 * 0700. The line is in the kernel when this returns, so a crash of the daemon
 * cannot lose it; with @sync it is also on disk (fsync) before it returns.
 */
int state_record(const char *dir, const char *what, const char *id, bool sync);
/** state_sync() - fsync the record: for a "start" written without @sync once the urgent work is done. */
int state_sync(const char *dir);
