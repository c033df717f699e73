/* SPDX-License-Identifier: MIT */
/*
 * test-notice.c - the notice/plan state machine, with time passed in.
 */
#include <stdio.h>
#include <string.h>

#include "notice.h"
#include "tests.h"

#define SEC UINT64_C(1000000)
#define T0 (UINT64_C(1795000000) * SEC)

static NoticeEvent ev(EventKind k, const char *id, uint64_t deadline) {
        NoticeEvent e = { .kind = k, .cloud = CLOUD_AWS, .deadline_usec = deadline };
        (void) snprintf(e.id, sizeof(e.id), "%s", id);
        return e;
}

static void test_one_plan_per_notice(void) {
        Notice n;
        NoticeEvent out, e = ev(EVENT_TERMINATE, "aws:spot:terminate:X", T0 + 120 * SEC);

        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(n.state, NOTICE_IDLE);
        ASSERT_EQ(notice_feed(&n, &e, T0, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_STREQ(out.id, e.id);
        ASSERT_U64_EQ(out.notice_usec, T0);
        ASSERT_U64_EQ(out.deadline_usec, T0 + 120 * SEC);
        ASSERT_EQ(n.state, NOTICE_PLAN_RUNNING);

        /* The same notice on every later poll, during and after the plan. */
        for (unsigned i = 1; i <= 20; i++)
                ASSERT_EQ(notice_feed(&n, &e, T0 + i * SEC, &out), NOTICE_ACTION_NONE);
        notice_plan_finished(&n, T0 + 30 * SEC);
        ASSERT_EQ(n.state, NOTICE_PLAN_DONE);
        for (unsigned i = 31; i <= 50; i++)
                ASSERT_EQ(notice_feed(&n, &e, T0 + i * SEC, &out), NOTICE_ACTION_NONE);
        ASSERT_EQ(n.n_plans, 1);
}

static void test_report_only_kinds(void) {
        Notice n;
        NoticeEvent out, r = ev(EVENT_REBALANCE, "aws:rebalance:X", 0);

        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(notice_feed(&n, &r, T0, &out), NOTICE_ACTION_REPORT);
        ASSERT_EQ(notice_feed(&n, &r, T0 + SEC, &out), NOTICE_ACTION_NONE);
        ASSERT_EQ(n.state, NOTICE_IDLE);
        ASSERT_EQ(n.n_plans, 0);

        /* Configured to act on it, a rebalance starts the plan. */
        notice_init(&n, EVENT_MASK_DEFAULT | EVENT_MASK(EVENT_REBALANCE));
        ASSERT_EQ(notice_feed(&n, &r, T0, &out), NOTICE_ACTION_START_PLAN);

        /* A report-only notice (GCP live migration) never starts a plan, even when its kind is listed. */
        notice_init(&n, EVENT_MASK_DEFAULT | EVENT_MASK(EVENT_MAINTENANCE));
        r = ev(EVENT_MAINTENANCE, "gcp:maintenance-event:MIGRATE_ON_HOST_MAINTENANCE:1", 0);
        r.report_only = true;
        ASSERT_EQ(notice_feed(&n, &r, T0, &out), NOTICE_ACTION_REPORT);
        ASSERT_EQ(n.n_plans, 0);

        /* And terminate may be switched off. */
        notice_init(&n, EVENT_MASK(EVENT_PREEMPT));
        r = ev(EVENT_TERMINATE, "t", T0);
        ASSERT_EQ(notice_feed(&n, &r, T0, &out), NOTICE_ACTION_REPORT);
}

static void test_other_notice_while_running(void) {
        Notice n;
        NoticeEvent out, a = ev(EVENT_TERMINATE, "a", T0 + 120 * SEC), b = ev(EVENT_STOP, "b", T0 + 90 * SEC);

        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(notice_feed(&n, &a, T0, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_EQ(notice_feed(&n, &b, T0 + SEC, &out), NOTICE_ACTION_REPORT);
        ASSERT_STREQ(n.plan_event.id, "a");
        /* b was seen while a ran: it does not start a plan later either. */
        notice_plan_finished(&n, T0 + 10 * SEC);
        ASSERT_EQ(notice_feed(&n, &b, T0 + 11 * SEC, &out), NOTICE_ACTION_NONE);
        ASSERT_EQ(n.n_plans, 1);
}

static void test_new_notice_after_plan(void) {
        Notice n;
        NoticeEvent out, a = ev(EVENT_STOP, "a", 0), b = ev(EVENT_TERMINATE, "b", 0);

        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(notice_feed(&n, &a, T0, &out), NOTICE_ACTION_START_PLAN);
        notice_plan_finished(&n, T0 + SEC);
        ASSERT_EQ(notice_feed(&n, &b, T0 + 2 * SEC, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_EQ(n.n_plans, 2);
}

static void test_manual(void) {
        Notice n;
        NoticeEvent out, m = ev(EVENT_MANUAL, "", 0), a = ev(EVENT_TERMINATE, "a", 0);

        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(notice_feed(&n, &m, T0, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_STREQ(out.id, "manual:1");
        ASSERT_EQ(notice_feed(&n, &m, T0 + SEC, &out), NOTICE_ACTION_JOIN);
        /* A cloud notice while the manual plan runs is reported, not a second plan. */
        ASSERT_EQ(notice_feed(&n, &a, T0 + SEC, &out), NOTICE_ACTION_REPORT);
        notice_plan_finished(&n, T0 + 2 * SEC);
        ASSERT_EQ(notice_feed(&n, &m, T0 + 3 * SEC, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_STREQ(out.id, "manual:2");
        ASSERT_EQ(n.n_plans, 2);
}

/* The GCP shutdown-script bridge: the cloud's notice and the guest's shutdown
 * path (trigger --event preempt) run one plan between them, in either order. */
static void test_bridge_notice_first(void) {
        Notice n;
        NoticeEvent out, p = ev(EVENT_PREEMPT, "gcp:preempted:1", T0 + 30 * SEC);

        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(notice_feed(&n, &p, T0, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_EQ(notice_trigger(&n, EVENT_PREEMPT, T0 + SEC, &out), NOTICE_ACTION_JOIN);
        notice_plan_finished(&n, T0 + 2 * SEC);
        ASSERT_EQ(notice_trigger(&n, EVENT_PREEMPT, T0 + 3 * SEC, &out), NOTICE_ACTION_ALREADY);
        ASSERT_EQ(n.n_plans, 1);
        /* A manual trigger is always a new plan; another kind too. */
        ASSERT_EQ(notice_trigger(&n, EVENT_SHUTDOWN, T0 + 4 * SEC, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_EQ(out.kind, EVENT_SHUTDOWN);
        ASSERT_EQ(n.n_plans, 2);
}

static void test_bridge_trigger_first(void) {
        Notice n;
        NoticeEvent out, p = ev(EVENT_PREEMPT, "gcp:preempted:1", T0 + 30 * SEC);

        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(notice_trigger(&n, EVENT_PREEMPT, T0, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_EQ(out.kind, EVENT_PREEMPT);
        ASSERT_CONTAINS(out.id, "trigger:");
        /* The cloud's notice while the plan runs, and after it: reported only. */
        ASSERT_EQ(notice_feed(&n, &p, T0 + SEC, &out), NOTICE_ACTION_REPORT);
        notice_plan_finished(&n, T0 + 2 * SEC);
        p = ev(EVENT_PREEMPT, "gcp:preempted:2", T0 + 30 * SEC);
        ASSERT_EQ(notice_feed(&n, &p, T0 + 3 * SEC, &out), NOTICE_ACTION_REPORT);
        ASSERT_EQ(notice_trigger(&n, EVENT_PREEMPT, T0 + 4 * SEC, &out), NOTICE_ACTION_ALREADY);
        ASSERT_EQ(n.n_plans, 1);
        /* Other kinds still start plans. */
        p = ev(EVENT_TERMINATE, "aws:x", 0);
        ASSERT_EQ(notice_feed(&n, &p, T0 + 5 * SEC, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_EQ(notice_trigger(&n, _EVENT_MAX, T0, &out), NOTICE_ACTION_NONE);
}

static void test_bad_input(void) {
        Notice n;
        NoticeEvent out, e = ev(EVENT_TERMINATE, "", 0);

        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(notice_feed(&n, NULL, T0, &out), NOTICE_ACTION_NONE);
        ASSERT_EQ(notice_feed(&n, &e, T0, &out), NOTICE_ACTION_NONE); /* no id */
        e.kind = _EVENT_MAX;
        (void) snprintf(e.id, sizeof(e.id), "x");
        ASSERT_EQ(notice_feed(&n, &e, T0, &out), NOTICE_ACTION_NONE);
        e.kind = _EVENT_INVALID;
        ASSERT_EQ(notice_feed(&n, &e, T0, &out), NOTICE_ACTION_NONE);
        /* An id that fills the whole buffer without a NUL is cut, not overrun. */
        e = ev(EVENT_TERMINATE, "", 0);
        memset(e.id, 'x', sizeof(e.id));
        ASSERT_EQ(notice_feed(&n, &e, T0, &out), NOTICE_ACTION_START_PLAN);
        ASSERT_EQ(strlen(out.id), sizeof(out.id) - 1);
        ASSERT_EQ(n.n_plans, 1);
}

static void test_seen_ring(void) {
        Notice n;
        char id[32];

        notice_init(&n, 0);
        for (unsigned i = 0; i < NOTICE_SEEN_MAX + 10; i++) {
                NoticeEvent out, e;
                (void) snprintf(id, sizeof(id), "n%u", i);
                e = ev(EVENT_REBALANCE, id, 0);
                ASSERT_EQ(notice_feed(&n, &e, T0, &out), NOTICE_ACTION_REPORT);
        }
        ASSERT_EQ(n.n_seen, NOTICE_SEEN_MAX);
        ASSERT_FALSE(notice_has_seen(&n, "n0"));
        ASSERT_TRUE(notice_has_seen(&n, "n73"));
        notice_mark_seen(&n, "restored");
        ASSERT_TRUE(notice_has_seen(&n, "restored"));
}

static void test_strings(void) {
        for (NoticeState s = 0; s < _NOTICE_STATE_MAX; s++)
                ASSERT_TRUE(notice_state_to_string(s) != NULL);
        for (NoticeAction a = 0; a < _NOTICE_ACTION_MAX; a++)
                ASSERT_TRUE(notice_action_to_string(a) != NULL);
        ASSERT_TRUE(notice_state_to_string(_NOTICE_STATE_MAX) == NULL);
        for (EventKind k = 0; k < _EVENT_MAX; k++)
                ASSERT_EQ(event_kind_from_string(event_kind_to_string(k)), k);
        ASSERT_EQ(event_kind_from_string("nope"), _EVENT_INVALID);
        for (CloudKind c = 0; c < _CLOUD_MAX; c++)
                ASSERT_EQ(cloud_kind_from_string(cloud_kind_to_string(c)), c);
}

int main(void) {
        RUN(test_one_plan_per_notice);
        RUN(test_report_only_kinds);
        RUN(test_other_notice_while_running);
        RUN(test_new_notice_after_plan);
        RUN(test_manual);
        RUN(test_bridge_notice_first);
        RUN(test_bridge_trigger_first);
        RUN(test_bad_input);
        RUN(test_seen_ring);
        RUN(test_strings);
        return 0;
}
