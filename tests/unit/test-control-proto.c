/* SPDX-License-Identifier: MIT */
/*
 * test-control-proto.c - the control line protocol: requests, escapes, replies.
 */
#include <errno.h>
#include <string.h>

#include "shared/control-proto.h"
#include "tests.h"

static void test_parse_ok(void) {
        ControlRequest r;
        const char *err = NULL;
        const char *line = "fake-notice action=terminate in=120 note=a%20b%3Dc";

        ASSERT_OK(control_request_parse(line, strlen(line), &r, &err));
        ASSERT_STREQ(r.command, "fake-notice");
        ASSERT_EQ(r.n_args, 3);
        ASSERT_STREQ(control_request_get(&r, "action"), "terminate");
        ASSERT_STREQ(control_request_get(&r, "in"), "120");
        ASSERT_STREQ(control_request_get(&r, "note"), "a b=c");
        ASSERT_TRUE(control_request_get(&r, "nope") == NULL);

        line = "status\r";
        ASSERT_OK(control_request_parse(line, strlen(line), &r, &err));
        ASSERT_STREQ(r.command, "status");
        ASSERT_EQ(r.n_args, 0);

        line = "register pid=";
        ASSERT_OK(control_request_parse(line, strlen(line), &r, &err));
        ASSERT_STREQ(control_request_get(&r, "pid"), "");
}

static void test_parse_bad(void) {
        static const struct {
                const char *line;
                int error;
        } cases[] = {
                { "", EINVAL },
                { "   ", EINVAL },
                { "STATUS", EINVAL },
                { "st@tus", EINVAL },
                { "trigger wait", EINVAL },
                { "trigger =x", EINVAL },
                { "trigger a=1 a=2", EINVAL },
                { "trigger a=%zz", EINVAL },
                { "trigger a=%4", EINVAL },
                { "trigger a=%00", EINVAL },
                { "trigger A-B!=1", EINVAL },
                { "x a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1 j=1 k=1 l=1 m=1 n=1 o=1 p=1 q=1", E2BIG },
        };
        ControlRequest r;

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const char *err = NULL;
                int k = control_request_parse(cases[i].line, strlen(cases[i].line), &r, &err);
                if (k != -cases[i].error)
                        TEST_FAIL("case '%s': got %d, expected %d", cases[i].line, k, -cases[i].error);
                ASSERT_TRUE(err != NULL);
        }

        char big[CONTROL_LINE_MAX + 10];
        const char *err = NULL;
        memset(big, 'a', sizeof(big));
        ASSERT_ERR(control_request_parse(big, sizeof(big), &r, &err), EMSGSIZE);
        ASSERT_ERR(control_request_parse("a\0b", 3, &r, &err), EINVAL);
}

static void test_check_keys(void) {
        static const char *const allowed[] = { "action", "in", NULL };
        ControlRequest r;
        const char *err = NULL, *bad = NULL;
        const char *line = "fake-notice action=stop when=3";

        ASSERT_OK(control_request_parse(line, strlen(line), &r, &err));
        ASSERT_ERR(control_request_check_keys(&r, allowed, &bad), EINVAL);
        ASSERT_STREQ(bad, "when");
}

static void test_encode_roundtrip(void) {
        static const char *const values[] = { "", "plain-1.2_x:y/z+@,~", "a b", "x=y\nz", "100%", "\xff\x01" };
        char buf[256];

        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
                ASSERT_OK(control_encode(buf, sizeof(buf), values[i]));
                ASSERT_TRUE(strpbrk(buf, " =\n") == NULL);
                ASSERT_OK(control_decode(buf));
                ASSERT_STREQ(buf, values[i]);
        }
        ASSERT_ERR(control_encode(buf, 3, "abc"), ENOBUFS);
        ASSERT_ERR(control_encode(buf, 3, " "), ENOBUFS);
}

static void test_reply_lines(void) {
        char l1[] = "ok", l2[] = "error no such command 'x'", l3[] = "state=plan-running",
             l4[] = "last_error=HTTP%20503", l5[] = "garbage line", l6[] = "error", l7[] = "ok\r";
        char *k = NULL, *v = NULL;

        ASSERT_EQ(control_parse_reply_line(l1, &k, &v), 1);
        ASSERT_EQ(control_parse_reply_line(l2, &k, &v), 2);
        ASSERT_STREQ(v, "no such command 'x'");
        ASSERT_EQ(control_parse_reply_line(l3, &k, &v), 0);
        ASSERT_STREQ(k, "state");
        ASSERT_STREQ(v, "plan-running");
        ASSERT_EQ(control_parse_reply_line(l4, &k, &v), 0);
        ASSERT_STREQ(v, "HTTP 503");
        ASSERT_ERR(control_parse_reply_line(l5, &k, &v), EBADMSG);
        ASSERT_EQ(control_parse_reply_line(l6, &k, &v), 2);
        ASSERT_STREQ(v, "");
        ASSERT_EQ(control_parse_reply_line(l7, &k, &v), 1);
}

int main(void) {
        RUN(test_parse_ok);
        RUN(test_parse_bad);
        RUN(test_check_keys);
        RUN(test_encode_roundtrip);
        RUN(test_reply_lines);
        return 0;
}
