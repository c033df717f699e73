/* SPDX-License-Identifier: MIT */
/*
 * notice.c - the notice/plan state machine (see notice.h). Pure: it owns no
 * fd, timer or clock and never logs; manager feeds it observations and acts
 * on the NoticeAction it returns.
 */
#include <stdio.h>
#include <string.h>

#include "notice.h"
#include "shared/macro.h"

static const char *const notice_state_table[_NOTICE_STATE_MAX] = {
        [NOTICE_IDLE] = "idle",
        [NOTICE_PLAN_RUNNING] = "plan-running",
        [NOTICE_PLAN_DONE] = "plan-done",
};

const char *notice_state_to_string(NoticeState s) {
        if (s < 0 || s >= _NOTICE_STATE_MAX)
                return NULL;
        return notice_state_table[s];
}

static const char *const notice_action_table[_NOTICE_ACTION_MAX] = {
        [NOTICE_ACTION_NONE] = "none",
        [NOTICE_ACTION_REPORT] = "report",
        [NOTICE_ACTION_START_PLAN] = "start-plan",
        [NOTICE_ACTION_JOIN] = "join",
        [NOTICE_ACTION_ALREADY] = "already",
};

const char *notice_action_to_string(NoticeAction a) {
        if (a < 0 || a >= _NOTICE_ACTION_MAX)
                return NULL;
        return notice_action_table[a];
}

void notice_init(Notice *n, unsigned events_mask) {
        *n = (Notice) {
                .state = NOTICE_IDLE,
                .events_mask = events_mask,
        };
}

void notice_set_events_mask(Notice *n, unsigned events_mask) {
        n->events_mask = events_mask;
}

bool notice_has_seen(const Notice *n, const char *id) {
        for (unsigned i = 0; i < n->n_seen; i++)
                if (streq(n->seen[i], id))
                        return true;
        return false;
}

void notice_mark_seen(Notice *n, const char *id) {
        if (notice_has_seen(n, id))
                return;
        /* A ring: the oldest id is forgotten first. Clouds serve one or two
         * notices in a VM's life, so 64 is far more than is ever needed. */
        (void) snprintf(n->seen[n->seen_next], sizeof(n->seen[0]), "%s", id);
        n->seen_next = (n->seen_next + 1) % NOTICE_SEEN_MAX;
        if (n->n_seen < NOTICE_SEEN_MAX)
                n->n_seen++;
}

static void notice_set_state(Notice *n, NoticeState state, uint64_t now_usec) {
        switch (state) {
        case NOTICE_IDLE:
                break;
        case NOTICE_PLAN_RUNNING:
                n->plan_started_usec = now_usec;
                n->plan_finished_usec = 0;
                n->n_plans++;
                break;
        case NOTICE_PLAN_DONE:
                n->plan_finished_usec = now_usec;
                break;
        case _NOTICE_STATE_MAX:
        case _NOTICE_STATE_INVALID:
                return;
        }
        n->state = state;
}

NoticeAction notice_feed(Notice *n, const NoticeEvent *ev, uint64_t now_usec, NoticeEvent *ret_event) {
        NoticeEvent e;

        if (!ev || ev->kind < 0 || ev->kind >= _EVENT_MAX)
                return NOTICE_ACTION_NONE;

        e = *ev;
        e.id[sizeof(e.id) - 1] = 0;
        e.detail[sizeof(e.detail) - 1] = 0;
        if (e.notice_usec == 0)
                e.notice_usec = now_usec;

        if (e.kind == EVENT_MANUAL)
                return notice_trigger(n, EVENT_MANUAL, now_usec, ret_event);

        /* A notice without an id cannot be told apart from the next poll's:
         * refuse it rather than risk a plan per poll. Providers always set one. */
        if (isempty(e.id))
                return NOTICE_ACTION_NONE;

        if (notice_has_seen(n, e.id))
                return NOTICE_ACTION_NONE;
        notice_mark_seen(n, e.id);

        if (e.report_only || !(n->events_mask & EVENT_MASK(e.kind)) || n->state == NOTICE_PLAN_RUNNING ||
            (n->triggered_kinds & EVENT_MASK(e.kind))) {
                *ret_event = e;
                return NOTICE_ACTION_REPORT;
        }

        n->planned_kinds |= EVENT_MASK(e.kind);
        n->plan_event = e;
        notice_set_state(n, NOTICE_PLAN_RUNNING, now_usec);
        *ret_event = e;
        return NOTICE_ACTION_START_PLAN;
}

NoticeAction notice_trigger(Notice *n, EventKind kind, uint64_t now_usec, NoticeEvent *ret_event) {
        NoticeEvent e = { .kind = kind, .notice_usec = now_usec };

        if (kind < 0 || kind >= _EVENT_MAX)
                return NOTICE_ACTION_NONE;
        if (n->state == NOTICE_PLAN_RUNNING)
                return NOTICE_ACTION_JOIN;
        if (kind != EVENT_MANUAL && (n->planned_kinds & EVENT_MASK(kind)))
                return NOTICE_ACTION_ALREADY;

        (void) snprintf(e.id, sizeof(e.id), "%s:%llu", kind == EVENT_MANUAL ? "manual" : "trigger",
                        (unsigned long long) ++n->manual_counter);
        if (kind != EVENT_MANUAL)
                (void) snprintf(e.detail, sizeof(e.detail), "spotwatchctl trigger --event %s",
                                event_kind_to_string(kind));
        notice_mark_seen(n, e.id);
        if (kind != EVENT_MANUAL) {
                n->planned_kinds |= EVENT_MASK(kind);
                n->triggered_kinds |= EVENT_MASK(kind);
        }
        n->plan_event = e;
        notice_set_state(n, NOTICE_PLAN_RUNNING, now_usec);
        *ret_event = e;
        return NOTICE_ACTION_START_PLAN;
}

void notice_plan_finished(Notice *n, uint64_t now_usec) {
        if (n->state != NOTICE_PLAN_RUNNING)
                return;
        notice_set_state(n, NOTICE_PLAN_DONE, now_usec);
}
