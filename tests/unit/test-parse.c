/* SPDX-License-Identifier: MIT */
/*
 * test-parse.c - unit tests for shared/parse.c: durations, booleans, signals,
 * integers, RFC 3339 and word splitting, each as a table of cases, plus
 * round trips through the formatters. Pure functions, so no fixtures.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "shared/macro.h"
#include "shared/parse.h"
#include "tests.h"

#define SEC USEC_PER_SEC
#define MSEC USEC_PER_MSEC

static void test_parse_duration(void) {
        static const struct {
                const char *in;
                int ret;
                uint64_t usec;
        } cases[] = {
                { "0", 0, 0 },
                { "1", 0, 1 * SEC },
                { "3", 0, 3 * SEC },
                { "1.5", 0, 1500 * MSEC },
                { "0.25", 0, 250 * MSEC },
                { "250us", 0, 250 },
                { "500ms", 0, 500 * MSEC },
                { "2s", 0, 2 * SEC },
                { "5m", 0, 300 * SEC },
                { "1h", 0, 3600 * SEC },
                { "1d", 0, 86400 * SEC },
                { "1.5s", 0, 1500 * MSEC },
                { "0.5ms", 0, 500 },
                { "1.5us", 0, 1 },               /* below resolution: truncated */
                { "1.0000019s", 0, 1000001 },    /* digits past usec: truncated */
                { "1.5h", 0, 5400 * SEC },
                { "1m30s", 0, 90 * SEC },
                { "30s1m", 0, 90 * SEC },        /* any order, summed */
                { "1h1m1s1ms1us", 0, 3661 * SEC + 1 * MSEC + 1 },
                { "1m0.5s", 0, 60 * SEC + 500 * MSEC },
                { "007s", 0, 7 * SEC },
                { "18446744073709551614us", 0, UINT64_MAX - 1 },
                { "18446744073709551615us", -ERANGE, 0 }, /* that is USEC_INFINITY */
                { "18446744073709551616us", -ERANGE, 0 },
                { "99999999999999999999s", -ERANGE, 0 },
                { "213503982335d", -ERANGE, 0 },
                { "18446744073709551614us1us", -ERANGE, 0 },
                { "18446744073709551614us2us", -ERANGE, 0 },
                { "", -EINVAL, 0 },
                { "-1", -EINVAL, 0 },
                { "-1s", -EINVAL, 0 },
                { "+1s", -EINVAL, 0 },
                { "s", -EINVAL, 0 },
                { "ms", -EINVAL, 0 },
                { "1x", -EINVAL, 0 },
                { "1sec", -EINVAL, 0 },
                { "1 s", -EINVAL, 0 },
                { " 1s", -EINVAL, 0 },
                { "1s ", -EINVAL, 0 },
                { "1m30", -EINVAL, 0 },          /* a bare number only on its own */
                { "1.s", -EINVAL, 0 },
                { ".5s", -EINVAL, 0 },
                { "1..5s", -EINVAL, 0 },
                { "1.5.5s", -EINVAL, 0 },
                { "1ss", -EINVAL, 0 },
                { "1sm", -EINVAL, 0 },
                { "abc", -EINVAL, 0 },
                { "1,5s", -EINVAL, 0 },
                { "0x10", -EINVAL, 0 },
                { "inf", -EINVAL, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t usec = 4242;
                int r;

                r = parse_duration(cases[i].in, &usec);
                if (r != cases[i].ret)
                        TEST_FAIL("parse_duration(\"%s\") = %d, expected %d", cases[i].in, r, cases[i].ret);
                if (r == 0 && usec != cases[i].usec)
                        TEST_FAIL("parse_duration(\"%s\") = %" PRIu64 "us, expected %" PRIu64 "us",
                                  cases[i].in, usec, cases[i].usec);
                if (r < 0)
                        ASSERT_U64_EQ(usec, 4242); /* untouched on failure */
        }

        ASSERT_ERR(parse_duration(NULL, &(uint64_t) { 0 }), EINVAL);
}

static void test_format_duration(void) {
        static const struct {
                uint64_t usec;
                const char *out;
        } cases[] = {
                { 0, "0" },
                { 1, "1us" },
                { 999, "999us" },
                { 1500, "1.5ms" },
                { 500 * MSEC, "500ms" },
                { 1 * SEC, "1s" },
                { 1500 * MSEC, "1.5s" },
                { 1000001, "1.000001s" },
                { 2 * SEC + 250 * MSEC, "2.25s" },
                { 120 * SEC, "2m" },
                { 90 * SEC, "1m30s" },
                { 90 * SEC + 500 * MSEC, "1m30.5s" },
                { 3600 * SEC, "1h" },
                { 3600 * SEC + 1, "1h1us" },
                { 6 * 3600 * SEC, "6h" },
                { 86400 * SEC, "1d" },
                { 25 * 3600 * SEC, "1d1h" },
                { USEC_INFINITY, "infinity" },
        };
        char buf[64];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t back;

                ASSERT_STREQ(format_duration(buf, sizeof(buf), cases[i].usec), cases[i].out);
                if (cases[i].usec == USEC_INFINITY)
                        continue;
                /* Whatever we print, we read back to the same value. */
                ASSERT_OK(parse_duration(buf, &back));
                ASSERT_U64_EQ(back, cases[i].usec);
        }

        /* A short buffer truncates, never overflows. */
        ASSERT_STREQ(format_duration(buf, 4, 90 * SEC), "1m3");
        ASSERT_STREQ(format_duration(buf, 1, 90 * SEC), "");
        ASSERT_TRUE(format_duration(buf, 0, 90 * SEC) == buf);
}

static void test_parse_bool(void) {
        static const struct {
                const char *in;
                int ret;
                bool value;
        } cases[] = {
                { "yes", 0, true },   { "no", 0, false },   { "true", 0, true }, { "false", 0, false },
                { "on", 0, true },    { "off", 0, false },  { "1", 0, true },    { "0", 0, false },
                { "YES", 0, true },   { "False", 0, false }, { "", -EINVAL, 0 }, { "maybe", -EINVAL, 0 },
                { "2", -EINVAL, 0 },  { " yes", -EINVAL, 0 }, { "yes ", -EINVAL, 0 }, { "y", -EINVAL, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                bool b = !cases[i].value;
                int r;

                r = parse_bool(cases[i].in, &b);
                if (r != cases[i].ret)
                        TEST_FAIL("parse_bool(\"%s\") = %d, expected %d", cases[i].in, r, cases[i].ret);
                if (r == 0)
                        ASSERT_EQ(b, cases[i].value);
        }
        ASSERT_ERR(parse_bool(NULL, &(bool) { false }), EINVAL);
}

static void test_parse_int(void) {
        static const struct {
                const char *in;
                long min, max;
                int ret;
                long value;
        } cases[] = {
                { "0", -10, 10, 0, 0 },
                { "-5", -10, 10, 0, -5 },
                { "+7", -10, 10, 0, 7 },
                { "10", -10, 10, 0, 10 },
                { "11", -10, 10, -ERANGE, 0 },
                { "-11", -10, 10, -ERANGE, 0 },
                { "2147483647", INT32_MIN, INT32_MAX, 0, INT32_MAX },
                { "2147483648", INT32_MIN, INT32_MAX, -ERANGE, 0 },
                { "99999999999999999999", 0, 10, -ERANGE, 0 },
                { "", 0, 10, -EINVAL, 0 },
                { "-", 0, 10, -EINVAL, 0 },
                { "abc", 0, 10, -EINVAL, 0 },
                { "1x", 0, 10, -EINVAL, 0 },
                { " 1", 0, 10, -EINVAL, 0 },
                { "1 ", 0, 10, -EINVAL, 0 },
                { "1.0", 0, 10, -EINVAL, 0 },
                { "0x1", 0, 10, -EINVAL, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                long v = 4242;
                int r;

                r = parse_int(cases[i].in, cases[i].min, cases[i].max, &v);
                if (r != cases[i].ret)
                        TEST_FAIL("parse_int(\"%s\") = %d, expected %d", cases[i].in, r, cases[i].ret);
                if (r == 0)
                        ASSERT_EQ(v, cases[i].value);
                else
                        ASSERT_EQ(v, 4242);
        }
}

static void test_parse_signal(void) {
        /* Not static: SIGRTMIN and SIGRTMAX are known only at run time. */
        const struct {
                const char *in;
                int ret;
                int sig;
        } cases[] = {
                { "SIGUSR1", 0, SIGUSR1 },
                { "USR1", 0, SIGUSR1 },
                { "usr1", 0, SIGUSR1 },
                { "sigusr2", 0, SIGUSR2 },
                { "SIGTERM", 0, SIGTERM },
                { "INT", 0, SIGINT },
                { "SIGKILL", 0, SIGKILL },
                { "SIGWINCH", 0, SIGWINCH },
                { "SIGIOT", 0, SIGABRT },
                { "POLL", 0, SIGIO },
                { "SIGCLD", 0, SIGCHLD },
                { "10", 0, 10 },
                { "1", 0, 1 },
                { "15", 0, SIGTERM },
                { "64", 0, SIGRTMAX },
                { "SIGRTMIN", 0, SIGRTMIN },
                { "RTMIN", 0, SIGRTMIN },
                { "SIGRTMIN+2", 0, SIGRTMIN + 2 },
                { "RTMIN+2", 0, SIGRTMIN + 2 },
                { "SIGRTMIN+0", 0, SIGRTMIN },
                { "SIGRTMAX", 0, SIGRTMAX },
                { "SIGRTMAX-1", 0, SIGRTMAX - 1 },
                { "SIGRTMIN+30", 0, SIGRTMIN + 30 },
                { "SIGRTMIN+31", -EINVAL, 0 }, /* past SIGRTMAX */
                { "SIGRTMAX-31", -EINVAL, 0 }, /* below SIGRTMIN */
                { "SIGRTMIN+", -EINVAL, 0 },
                { "SIGRTMIN-1", -EINVAL, 0 },
                { "SIGRTMAX+1", -EINVAL, 0 },
                { "SIGRTMIN+x", -EINVAL, 0 },
                { "SIGRTMIN+-1", -EINVAL, 0 },
                { "0", -EINVAL, 0 },
                { "65", -EINVAL, 0 },
                { "-1", -EINVAL, 0 },
                { "+10", -EINVAL, 0 },
                { "", -EINVAL, 0 },
                { "SIG", -EINVAL, 0 },
                { "SIGFOO", -EINVAL, 0 },
                { "SIGSIGUSR1", -EINVAL, 0 },
                { " SIGUSR1", -EINVAL, 0 },
                { "SIGUSR1 ", -EINVAL, 0 },
                { "10 ", -EINVAL, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int sig = -42, r;

                r = parse_signal(cases[i].in, &sig);
                if (r != cases[i].ret)
                        TEST_FAIL("parse_signal(\"%s\") = %d, expected %d", cases[i].in, r, cases[i].ret);
                if (r == 0)
                        ASSERT_EQ(sig, cases[i].sig);
                else
                        ASSERT_EQ(sig, -42);
        }
        ASSERT_ERR(parse_signal(NULL, &(int) { 0 }), EINVAL);
}

static void test_signal_to_string(void) {
        const struct {
                int sig;
                const char *name;
        } cases[] = {
                { SIGHUP, "SIGHUP" },
                { SIGUSR1, "SIGUSR1" },
                { SIGTERM, "SIGTERM" },
                { SIGSYS, "SIGSYS" },
                { SIGRTMIN, "SIGRTMIN" },
                { SIGRTMIN + 2, "SIGRTMIN+2" },
                { SIGRTMAX, "SIGRTMIN+30" }, /* glibc: SIGRTMIN 34, SIGRTMAX 64 */
                { 0, NULL },
                { -1, NULL },
                { SIGRTMAX + 1, NULL },
                { 1000, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                const char *s = signal_to_string(cases[i].sig);

                if (!cases[i].name)
                        ASSERT_TRUE(s == NULL);
                else
                        ASSERT_STREQ(s, cases[i].name);
        }

        /* Every name we print parses back to its number. */
        for (int sig = 1; sig <= SIGRTMAX; sig++) {
                const char *s = signal_to_string(sig);
                int back = 0;

                if (!s)
                        continue;
                ASSERT_OK(parse_signal(s, &back));
                ASSERT_EQ(back, sig);
        }
}

static void test_parse_rfc3339(void) {
        static const struct {
                const char *in;
                int ret;
                uint64_t usec;
        } cases[] = {
                { "1970-01-01T00:00:00Z", 0, 0 },
                { "2026-11-27T13:18:01Z", 0, UINT64_C(1795785481) * SEC },
                { "2026-11-27t13:18:01z", 0, UINT64_C(1795785481) * SEC },
                { "2026-11-27 13:18:01Z", 0, UINT64_C(1795785481) * SEC },
                { "2026-11-27T13:18:01.5Z", 0, UINT64_C(1795785481) * SEC + 500 * MSEC },
                { "2026-11-27T13:18:01.000001Z", 0, UINT64_C(1795785481) * SEC + 1 },
                { "2026-11-27T13:18:01.123456789Z", 0, UINT64_C(1795785481) * SEC + 123456 },
                { "2026-11-27T14:18:01+01:00", 0, UINT64_C(1795785481) * SEC },
                { "2026-11-27T08:48:01-04:30", 0, UINT64_C(1795785481) * SEC },
                { "2026-11-27T13:18:01+00:00", 0, UINT64_C(1795785481) * SEC },
                { "2026-11-27T13:18:01-00:00", 0, UINT64_C(1795785481) * SEC },
                { "2026-11-28T00:18:01.25+11:00", 0, UINT64_C(1795785481) * SEC + 250 * MSEC },
                { "2024-02-29T00:00:00Z", 0, UINT64_C(1709164800) * SEC },
                { "2016-12-31T23:59:60Z", 0, UINT64_C(1483228800) * SEC }, /* leap second */
                { "1970-01-01T01:00:00+01:00", 0, 0 },
                { "2023-02-29T00:00:00Z", -EINVAL, 0 },
                { "2026-11-31T00:00:00Z", -EINVAL, 0 },
                { "2026-13-01T00:00:00Z", -EINVAL, 0 },
                { "2026-00-01T00:00:00Z", -EINVAL, 0 },
                { "2026-11-00T00:00:00Z", -EINVAL, 0 },
                { "2026-11-27T24:00:00Z", -EINVAL, 0 },
                { "2026-11-27T13:60:00Z", -EINVAL, 0 },
                { "2026-11-27T13:18:61Z", -EINVAL, 0 },
                { "2026-11-27T13:18:01", -EINVAL, 0 },   /* no offset */
                { "2026-11-27", -EINVAL, 0 },
                { "2026-11-27T13:18Z", -EINVAL, 0 },
                { "2026-11-27T13:18:01.Z", -EINVAL, 0 },
                { "2026-11-27T13:18:01+0100", -EINVAL, 0 },
                { "2026-11-27T13:18:01+01", -EINVAL, 0 },
                { "2026-11-27T13:18:01+24:00", -EINVAL, 0 },
                { "2026-11-27T13:18:01+01:60", -EINVAL, 0 },
                { "2026-11-27T13:18:01Zjunk", -EINVAL, 0 },
                { "2026-11-27X13:18:01Z", -EINVAL, 0 },
                { "26-11-27T13:18:01Z", -EINVAL, 0 },
                { " 2026-11-27T13:18:01Z", -EINVAL, 0 },
                { "2026-11-27T13:18:01Z ", -EINVAL, 0 },
                { "2026-1-27T13:18:01Z", -EINVAL, 0 },
                { "", -EINVAL, 0 },
                { "1969-12-31T23:59:59Z", -ERANGE, 0 },
                { "1970-01-01T00:30:00+01:00", -ERANGE, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t usec = 4242;
                int r;

                r = parse_rfc3339(cases[i].in, &usec);
                if (r != cases[i].ret)
                        TEST_FAIL("parse_rfc3339(\"%s\") = %d, expected %d", cases[i].in, r, cases[i].ret);
                if (r == 0 && usec != cases[i].usec)
                        TEST_FAIL("parse_rfc3339(\"%s\") = %" PRIu64 ", expected %" PRIu64, cases[i].in,
                                  usec, cases[i].usec);
                if (r < 0)
                        ASSERT_U64_EQ(usec, 4242);
        }
        ASSERT_ERR(parse_rfc3339(NULL, &(uint64_t) { 0 }), EINVAL);
}

static void test_format_rfc3339(void) {
        static const struct {
                uint64_t usec;
                const char *out;
        } cases[] = {
                { 0, "1970-01-01T00:00:00Z" },
                { UINT64_C(1795785481) * SEC, "2026-11-27T13:18:01Z" },
                { UINT64_C(1795785481) * SEC + 999999, "2026-11-27T13:18:01Z" }, /* seconds precision */
                { UINT64_C(1709164800) * SEC, "2024-02-29T00:00:00Z" },
        };
        char buf[32];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t back;

                ASSERT_STREQ(format_rfc3339(buf, sizeof(buf), cases[i].usec), cases[i].out);
                ASSERT_OK(parse_rfc3339(buf, &back));
                ASSERT_U64_EQ(back, cases[i].usec / SEC * SEC);
        }

        /* Exactly the documented minimum size fits. */
        ASSERT_STREQ(format_rfc3339(buf, 21, 0), "1970-01-01T00:00:00Z");
        /* Too small: an empty string, no overflow. */
        ASSERT_STREQ(format_rfc3339(buf, 10, 0), "");
}

/* Up to 5 words; the rest of the array is NULL. */
#define W(...) { __VA_ARGS__ }

static void test_split_words(void) {
        static const struct {
                const char *in;
                int ret;
                const char *words[6];
        } cases[] = {
                { "a b c", 0, W("a", "b", "c") },
                { "  a\t b  ", 0, W("a", "b") },
                { "/usr/bin/flush --fast", 0, W("/usr/bin/flush", "--fast") },
                { "/bin/x \"a b\"", 0, W("/bin/x", "a b") },
                { "/bin/x 'a b' c", 0, W("/bin/x", "a b", "c") },
                { "a\\ b", 0, W("a b") },
                { "a\"b c\"d", 0, W("ab cd") },
                { "\"\"", 0, W("") },
                { "'' x", 0, W("", "x") },
                { "\"a\\\"b\"", 0, W("a\"b") },
                { "\"a\\\\b\"", 0, W("a\\b") },
                { "\"a\\nb\"", 0, W("a\\nb") },    /* inside "", only \" and \\ escape */
                { "'a\\b'", 0, W("a\\b") },        /* inside '', nothing does */
                { "'a\"b'", 0, W("a\"b") },
                { "\"a'b\"", 0, W("a'b") },
                { "\\\"x", 0, W("\"x") },
                { "a;b", 0, W("a;b") },
                { "x=1 y=2", 0, W("x=1", "y=2") },
                { "\"abc", -EINVAL, {} },
                { "'abc", -EINVAL, {} },
                { "abc\\", -EINVAL, {} },
                { "\"abc\\\"", -EINVAL, {} },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char **l = NULL;
                int r;

                r = split_words(cases[i].in, &l);
                if (r != cases[i].ret)
                        TEST_FAIL("split_words(\"%s\") = %d, expected %d", cases[i].in, r, cases[i].ret);
                if (r < 0) {
                        ASSERT_TRUE(l == NULL);
                        continue;
                }
                for (size_t j = 0;; j++) {
                        if (!cases[i].words[j]) {
                                ASSERT_TRUE(l[j] == NULL);
                                ASSERT_EQ(strv_length(l), j);
                                break;
                        }
                        ASSERT_STREQ(l[j], cases[i].words[j]);
                }
                l = strv_free(l);
        }
}

static void test_split_words_empty(void) {
        static const char *const inputs[] = { "", " ", "\t \t" };

        for (size_t i = 0; i < ELEMENTSOF(inputs); i++) {
                char **l = NULL;

                ASSERT_OK(split_words(inputs[i], &l));
                ASSERT_TRUE(l && !l[0]);
                ASSERT_EQ(strv_length(l), 0);
                strv_free(l);
        }
        ASSERT_ERR(split_words(NULL, &(char **) { NULL }), EINVAL);
        ASSERT_EQ(strv_length(NULL), 0);
        ASSERT_TRUE(strv_free(NULL) == NULL);
}

int main(void) {
        RUN(test_parse_duration);
        RUN(test_format_duration);
        RUN(test_parse_bool);
        RUN(test_parse_int);
        RUN(test_parse_signal);
        RUN(test_signal_to_string);
        RUN(test_parse_rfc3339);
        RUN(test_format_rfc3339);
        RUN(test_split_words);
        RUN(test_split_words_empty);
        return 0;
}
