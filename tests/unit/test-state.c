/* SPDX-License-Identifier: MIT */
/*
 * test-state.c - the persisted plan record: what a restarted daemon knows.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "state.h"
#include "tests.h"

static char *tmpdir(void) {
        static char t[64];
        (void) snprintf(t, sizeof(t), "/tmp/test-state-XXXXXX");
        ASSERT_TRUE(mkdtemp(t) != NULL);
        return t;
}

static void append(const char *dir, const char *text) {
        char path[256];
        FILE *f;

        (void) snprintf(path, sizeof(path), "%s/%s", dir, STATE_FILE);
        f = fopen(path, "a");
        ASSERT_TRUE(f != NULL);
        fputs(text, f);
        fclose(f);
}

static void test_roundtrip(void) {
        char *dir = tmpdir(), sub[256], interrupted[4][160];
        Notice n;

        (void) snprintf(sub, sizeof(sub), "%s/a/b", dir);
        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(state_load(sub, &n, interrupted, 4), 0); /* nothing yet */
        ASSERT_OK(state_record(sub, "start", "aws:spot:terminate:T1", true));
        ASSERT_OK(state_record(sub, "done", "aws:spot:terminate:T1", true));
        ASSERT_OK(state_record(sub, "start", "aws:spot:stop:T2", false));

        ASSERT_OK(state_sync(sub));
        ASSERT_ERR(state_sync("/proc/no/such"), ENOENT);
        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(state_load(sub, &n, interrupted, 4), 1);
        ASSERT_STREQ(interrupted[0], "aws:spot:stop:T2");
        ASSERT_TRUE(notice_has_seen(&n, "aws:spot:terminate:T1"));
        ASSERT_TRUE(notice_has_seen(&n, "aws:spot:stop:T2"));

        /* A restarted daemon does not run the plan again for the same notice. */
        NoticeEvent out, e = { .kind = EVENT_TERMINATE, .cloud = CLOUD_AWS };
        (void) snprintf(e.id, sizeof(e.id), "aws:spot:terminate:T1");
        ASSERT_EQ(notice_feed(&n, &e, 1, &out), NOTICE_ACTION_NONE);
}

static void test_garbage_and_torn_lines(void) {
        char *dir = tmpdir(), interrupted[4][160];
        Notice n;

        append(dir, "start a\nnonsense line\n\ndone\ndone \nstart b\ndone a\nstart c-torn");
        notice_init(&n, EVENT_MASK_DEFAULT);
        ASSERT_EQ(state_load(dir, &n, interrupted, 4), 1);
        ASSERT_STREQ(interrupted[0], "b");
        ASSERT_TRUE(notice_has_seen(&n, "a"));
        ASSERT_FALSE(notice_has_seen(&n, "c-torn"));
}

static void test_bad_ids(void) {
        char *dir = tmpdir();
        char big[300];

        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = 0;
        ASSERT_ERR(state_record(dir, "start", "a\nb", true), EINVAL);
        ASSERT_ERR(state_record(dir, "start", big, true), EINVAL);
        ASSERT_ERR(state_record("/proc/no/such", "start", "x", true), ENOENT);
}

int main(void) {
        RUN(test_roundtrip);
        RUN(test_garbage_and_torn_lines);
        RUN(test_bad_ids);
        return 0;
}
