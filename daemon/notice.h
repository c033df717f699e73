/* SPDX-License-Identifier: MIT */
/*
 * notice.h - the notice/plan state machine. It decides, it does nothing: no
 * fd, no timer, no clock (time is an argument), so its tests never sleep.
 *
 * Rules: a notice whose kind is in the events mask starts one plan; the same
 * notice (same id) seen again on any later poll never starts another; while a
 * plan runs, any other notice is recorded and reported but does not start a
 * second plan; a manual trigger starts a plan unless one is running, in which
 * case the caller joins the running one; a trigger for a kind (the shutdown
 * path saying "preempt") and the cloud's notice of that kind run one plan.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "event.h"

typedef enum NoticeState {
        NOTICE_IDLE,         /* watching, nothing pending */
        NOTICE_PLAN_RUNNING, /* a plan is running */
        NOTICE_PLAN_DONE,    /* the last plan has finished; still watching */
        _NOTICE_STATE_MAX,
        _NOTICE_STATE_INVALID = -EINVAL,
} NoticeState;

const char *notice_state_to_string(NoticeState s);

typedef enum NoticeAction {
        NOTICE_ACTION_NONE,       /* seen before, or nothing to do */
        NOTICE_ACTION_REPORT,     /* new notice: report it, start nothing */
        NOTICE_ACTION_START_PLAN, /* new notice: report it and start the plan */
        NOTICE_ACTION_JOIN,       /* manual trigger while a plan runs: wait for that one */
        NOTICE_ACTION_ALREADY,    /* trigger for a kind whose plan has already run: nothing to do */
        _NOTICE_ACTION_MAX,
        _NOTICE_ACTION_INVALID = -EINVAL,
} NoticeAction;

const char *notice_action_to_string(NoticeAction a);

#define NOTICE_SEEN_MAX 64

typedef struct Notice {
        NoticeState state;
        unsigned events_mask;
        NoticeEvent plan_event;              /* the notice the current/last plan serves */
        uint64_t plan_started_usec;
        uint64_t plan_finished_usec;
        unsigned n_plans;                    /* plans started since init */
        char seen[NOTICE_SEEN_MAX][160];     /* ids of notices already acted on, a ring */
        unsigned n_seen, seen_next;
        uint64_t manual_counter;
        unsigned planned_kinds;              /* EVENT_MASK()s of every kind a plan has started for */
        unsigned triggered_kinds;            /* ... of the kinds a trigger (not a cloud notice) started */
} Notice;

void notice_init(Notice *n, unsigned events_mask);
/** notice_set_events_mask() - on reload; does not touch what was seen. */
void notice_set_events_mask(Notice *n, unsigned events_mask);

/**
 * notice_feed() - one observation @ev at wall-clock @now_usec. Returns the
 * action; for REPORT and START_PLAN, *ret_event is @ev with notice_usec set
 * (and, for a plan, the id remembered). For a MANUAL @ev, the id may be empty:
 * a fresh one is made.
 */
NoticeAction notice_feed(Notice *n, const NoticeEvent *ev, uint64_t now_usec, NoticeEvent *ret_event);

/**
 * notice_trigger() - `spotwatchctl trigger [--event KIND]`. While a plan runs:
 * JOIN. For a KIND other than manual whose plan already ran (from a cloud
 * notice or an earlier trigger): ALREADY. Otherwise START_PLAN, and from then
 * on a cloud notice of KIND is reported only: the GCP shutdown-script path and
 * the metadata watcher run one plan between them, whichever comes first.
 */
NoticeAction notice_trigger(Notice *n, EventKind kind, uint64_t now_usec, NoticeEvent *ret_event);

/** notice_plan_finished() - the running plan ended (in any way). */
void notice_plan_finished(Notice *n, uint64_t now_usec);

/** notice_has_seen() - whether @id was already acted on. */
bool notice_has_seen(const Notice *n, const char *id);
/** notice_mark_seen() - remember @id without acting, e.g. restored from state_dir. */
void notice_mark_seen(Notice *n, const char *id);
