/* SPDX-License-Identifier: MIT */
/*
 * test-provider-aws.c - tables of spot/instance-action, rebalance, scheduled
 * maintenance (and its "21 Jan 2019 09:00:43 GMT" times), Auto Scaling
 * lifecycle state and token TTL inputs through the AWS provider's pure
 * parsers, the token refresh and backoff arithmetic, provider_new()'s
 * argument handling, and the IMDS engine's cadence against the daemon's own
 * fake (fake-aws.c) on loopback: which endpoints each cycle polls.
 */
#include <errno.h>
#include <string.h>

#include "config.h"
#include "fake-server.h"
#include "http.h"
#include "provider-aws.h"
#include "provider.h"
#include "shared/macro.h"
#include "tests-provider.h"
#include "tests.h"

#define T_1320 UINT64_C(1795785600) /* 2026-11-27T13:20:00Z */
#define T_1220 UINT64_C(1795782000) /* 2026-11-27T12:20:00Z */
#define T_REBALANCE UINT64_C(1603786920) /* 2020-10-27T08:22:00Z */


typedef struct GoodCase {
        const char *body;
        size_t size;
        EventKind kind;
        uint64_t deadline_usec;
        const char *id;
        const char *detail;
} GoodCase;

static const GoodCase good_actions[] = {
        { BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\"}"), EVENT_TERMINATE,
          T_1320 * USEC_PER_SEC, "aws:spot:terminate:2026-11-27T13:20:00Z", "terminate" },
        { BODY("{\"action\":\"stop\",\"time\":\"2026-11-27T13:20:00Z\"}"), EVENT_STOP, T_1320 * USEC_PER_SEC,
          "aws:spot:stop:2026-11-27T13:20:00Z", "stop" },
        { BODY("{\"action\": \"hibernate\", \"time\": \"2026-11-27T13:20:00Z\"}"), EVENT_HIBERNATE,
          T_1320 * USEC_PER_SEC, "aws:spot:hibernate:2026-11-27T13:20:00Z", "hibernate" },
        /* Fractions are kept in the deadline; the id is normalised to seconds. */
        { BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00.250Z\"}"), EVENT_TERMINATE,
          T_1320 * USEC_PER_SEC + 250000, "aws:spot:terminate:2026-11-27T13:20:00Z", "terminate" },
        { BODY("{\"action\": \"stop\", \"time\": \"2026-11-27T13:20:00.123456789Z\"}"), EVENT_STOP,
          T_1320 * USEC_PER_SEC + 123456, "aws:spot:stop:2026-11-27T13:20:00Z", "stop" },
        /* Offsets become UTC. */
        { BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T14:20:00+01:00\"}"), EVENT_TERMINATE,
          T_1320 * USEC_PER_SEC, "aws:spot:terminate:2026-11-27T13:20:00Z", "terminate" },
        { BODY("{\"action\": \"hibernate\", \"time\": \"2026-11-27T07:50:00.5-04:30\"}"), EVENT_HIBERNATE,
          T_1220 * USEC_PER_SEC + 500000, "aws:spot:hibernate:2026-11-27T12:20:00Z", "hibernate" },
        /* Member order, extra members, whitespace and a trailing newline do not matter. */
        { BODY(" {\"time\": \"2026-11-27T13:20:00Z\", \"x\": [1, {\"y\": null}], \"action\": \"terminate\"}\n"),
          EVENT_TERMINATE, T_1320 * USEC_PER_SEC, "aws:spot:terminate:2026-11-27T13:20:00Z", "terminate" },
        /* The same member twice: the last one counts, as in json-c. */
        { BODY("{\"action\": \"reboot\", \"action\": \"stop\", \"time\": \"2026-11-27T13:20:00Z\"}"), EVENT_STOP,
          T_1320 * USEC_PER_SEC, "aws:spot:stop:2026-11-27T13:20:00Z", "stop" },
};

typedef struct BadCase {
        const char *name;
        const char *body;
        size_t size;
} BadCase;

static const BadCase bad_actions[] = {
        { "empty", BODY("") },
        { "space", BODY("  \n") },
        { "garbage", BODY("<html><body>Service Unavailable</body></html>") },
        { "null", BODY("null") },
        { "true", BODY("true") },
        { "number", BODY("5") },
        { "string", BODY("\"terminate\"") },
        { "array", BODY("[]") },
        { "array of object", BODY("[{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\"}]") },
        { "empty object", BODY("{}") },
        { "missing time", BODY("{\"action\": \"terminate\"}") },
        { "missing action", BODY("{\"time\": \"2026-11-27T13:20:00Z\"}") },
        { "action number", BODY("{\"action\": 5, \"time\": []}") },
        { "action null", BODY("{\"action\": null, \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "action object", BODY("{\"action\": {}, \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "action bool", BODY("{\"action\": true, \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "time number", BODY("{\"action\": \"terminate\", \"time\": 1795785600}") },
        { "time array", BODY("{\"action\": \"terminate\", \"time\": [\"2026-11-27T13:20:00Z\"]}") },
        { "time null", BODY("{\"action\": \"terminate\", \"time\": null}") },
        { "unknown action", BODY("{\"action\": \"reboot\", \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "action case", BODY("{\"action\": \"Terminate\", \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "action padded", BODY("{\"action\": \"terminate \", \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "action empty", BODY("{\"action\": \"\", \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "time words", BODY("{\"action\": \"terminate\", \"time\": \"in two minutes\"}") },
        { "time empty", BODY("{\"action\": \"terminate\", \"time\": \"\"}") },
        { "time no zone", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00\"}") },
        { "time month 13", BODY("{\"action\": \"terminate\", \"time\": \"2026-13-27T13:20:00Z\"}") },
        { "time Feb 30", BODY("{\"action\": \"terminate\", \"time\": \"2026-02-30T13:20:00Z\"}") },
        { "time trailing", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Zjunk\"}") },
        { "time date only", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27\"}") },
        { "NUL in body", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\"}\0garbage") },
        { "NUL first", BODY("\0{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "NUL in string", BODY("{\"action\": \"term\0inate\", \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "escaped NUL action", BODY("{\"action\": \"terminate\\u0000x\", \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "escaped NUL time", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\\u0000\"}") },
        { "truncated", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\"") },
        { "truncated string", BODY("{\"action\": \"termin") },
        { "trailing garbage", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\"} x") },
        { "two objects", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\"}{}") },
        { "single quotes", BODY("{'action': 'terminate', 'time': '2026-11-27T13:20:00Z'}") },
        { "trailing comma", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\",}") },
        { "bad UTF-8", BODY("{\"action\": \"terminate\xff\", \"time\": \"2026-11-27T13:20:00Z\"}") },
        { "huge number", BODY("{\"action\": 1e999999, \"time\": 99999999999999999999999999999999}") },
        { "huge time number", BODY("{\"action\": \"terminate\", \"time\": 1e400}") },
        { "deep member", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\", "
                              "\"x\": [[[[[[[[[[[[1]]]]]]]]]]]]}") },
};

static void test_instance_action_good(void) {
        for (size_t i = 0; i < ELEMENTSOF(good_actions); i++) {
                const GoodCase *c = &good_actions[i];
                NoticeEvent ev;

                fprintf(stderr, "  good[%zu]: %s\n", i, c->body);
                memset(&ev, 0xA5, sizeof(ev));
                ASSERT_OK(aws_parse_instance_action(c->body, c->size, &ev));
                ASSERT_EQ(ev.kind, c->kind);
                ASSERT_EQ(ev.cloud, CLOUD_AWS);
                ASSERT_U64_EQ(ev.deadline_usec, c->deadline_usec);
                ASSERT_U64_EQ(ev.notice_usec, 0);
                ASSERT_STREQ(ev.id, c->id);
                ASSERT_STREQ(ev.detail, c->detail);
        }
}

static void test_instance_action_bad(void) {
        for (size_t i = 0; i < ELEMENTSOF(bad_actions); i++) {
                const BadCase *c = &bad_actions[i];
                NoticeEvent ev;

                fprintf(stderr, "  bad: %s\n", c->name);
                memset(&ev, 0xA5, sizeof(ev));
                ASSERT_ERR(aws_parse_instance_action(c->body, c->size, &ev), EBADMSG);
                assert_untouched(&ev, sizeof(NoticeEvent));
        }

        /* NULL and size 0 with a non-empty buffer. */
        NoticeEvent ev;
        memset(&ev, 0xA5, sizeof(ev));
        ASSERT_ERR(aws_parse_instance_action(NULL, 0, &ev), EBADMSG);
        ASSERT_ERR(aws_parse_instance_action("{\"action\": \"stop\"}", 0, &ev), EBADMSG);
        assert_untouched(&ev, sizeof(NoticeEvent));
}

/* Build "{" "[" * n ... "]" * n "}" style inputs and very long strings at run time. */
static void test_instance_action_generated(void) {
        const size_t big = 1 << 20;
        NoticeEvent ev;
        char *b;
        size_t n;

        b = malloc(big + 256);
        ASSERT_TRUE(b);

        /* 100-deep nesting, as an array and as objects. */
        n = 0;
        for (int i = 0; i < 100; i++)
                b[n++] = '[';
        for (int i = 0; i < 100; i++)
                b[n++] = ']';
        memset(&ev, 0xA5, sizeof(ev));
        ASSERT_ERR(aws_parse_instance_action(b, n, &ev), EBADMSG);
        assert_untouched(&ev, sizeof(NoticeEvent));

        n = 0;
        for (int i = 0; i < 100; i++)
                n += (size_t) sprintf(b + n, "{\"a\":");
        n += (size_t) sprintf(b + n, "1");
        for (int i = 0; i < 100; i++)
                b[n++] = '}';
        ASSERT_ERR(aws_parse_instance_action(b, n, &ev), EBADMSG);
        assert_untouched(&ev, sizeof(NoticeEvent));

        /* 100,000 unclosed brackets: the depth limit, not the stack, stops it. */
        memset(b, '[', 100000);
        ASSERT_ERR(aws_parse_instance_action(b, 100000, &ev), EBADMSG);
        assert_untouched(&ev, sizeof(NoticeEvent));

        /* A 1 MiB action string. */
        n = (size_t) sprintf(b, "{\"action\": \"");
        memset(b + n, 'x', big);
        n += big;
        n += (size_t) sprintf(b + n, "\", \"time\": \"2026-11-27T13:20:00Z\"}");
        ASSERT_ERR(aws_parse_instance_action(b, n, &ev), EBADMSG);
        assert_untouched(&ev, sizeof(NoticeEvent));

        /* A 1 MiB time string. */
        n = (size_t) sprintf(b, "{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00");
        memset(b + n, '0', big);
        n += big;
        n += (size_t) sprintf(b + n, "Z\"}");
        ASSERT_ERR(aws_parse_instance_action(b, n, &ev), EBADMSG);
        assert_untouched(&ev, sizeof(NoticeEvent));

        /* A long fraction that is still a valid time is fine (64 bytes max). */
        n = (size_t) sprintf(b, "{\"action\": \"stop\", \"time\": \"2026-11-27T13:20:00.%s\"}",
                             "123456789012345678901234567890123456Z");
        ASSERT_OK(aws_parse_instance_action(b, n, &ev));
        ASSERT_U64_EQ(ev.deadline_usec, T_1320 * USEC_PER_SEC + 123456);

        /* A valid object padded with 1 MiB of whitespace. */
        n = (size_t) sprintf(b, "{\"action\": \"stop\", \"time\": \"2026-11-27T13:20:00Z\"}");
        memset(b + n, ' ', big);
        n += big;
        ASSERT_OK(aws_parse_instance_action(b, n, &ev));
        ASSERT_EQ(ev.kind, EVENT_STOP);

        /* Every byte value in the action. */
        for (int c = 1; c < 256; c++) {
                n = (size_t) sprintf(b, "{\"action\": \"stop%c\", \"time\": \"2026-11-27T13:20:00Z\"}", c);
                memset(&ev, 0xA5, sizeof(ev));
                ASSERT_ERR(aws_parse_instance_action(b, n, &ev), EBADMSG);
                assert_untouched(&ev, sizeof(NoticeEvent));
        }

        /* Every prefix of a valid body is rejected; none reads past its size. */
        n = (size_t) sprintf(b, "{\"action\": \"hibernate\", \"time\": \"2026-11-27T13:20:00.5+01:00\"}");
        for (size_t len = 0; len < n; len++) {
                char *copy = malloc(len ? len : 1);

                ASSERT_TRUE(copy);
                memcpy(copy, b, len);
                ASSERT_ERR(aws_parse_instance_action(copy, len, &ev), EBADMSG);
                free(copy);
        }

        free(b);
}

static void test_rebalance(void) {
        static const BadCase bad[] = {
                { "empty", BODY("") },
                { "garbage", BODY("Not Found") },
                { "null", BODY("null") },
                { "array", BODY("[\"2020-10-27T08:22:00Z\"]") },
                { "missing", BODY("{}") },
                { "wrong name", BODY("{\"noticetime\": \"2020-10-27T08:22:00Z\"}") },
                { "instance-action body", BODY("{\"action\": \"terminate\", \"time\": \"2026-11-27T13:20:00Z\"}") },
                { "number", BODY("{\"noticeTime\": 1603786920}") },
                { "bad time", BODY("{\"noticeTime\": \"soon\"}") },
                { "NUL", BODY("{\"noticeTime\": \"2020-10-27T08:22:00Z\"}\0") },
                { "escaped NUL", BODY("{\"noticeTime\": \"2020-10-27T08:22:00Z\\u0000\"}") },
                { "truncated", BODY("{\"noticeTime\": \"2020-10-27T08:22:00Z\"") },
        };
        NoticeEvent ev;

        memset(&ev, 0xA5, sizeof(ev));
        ASSERT_OK(aws_parse_rebalance(BODY_ARGS("{\"noticeTime\": \"2020-10-27T08:22:00Z\"}"), &ev));
        ASSERT_EQ(ev.kind, EVENT_REBALANCE);
        ASSERT_EQ(ev.cloud, CLOUD_AWS);
        ASSERT_U64_EQ(ev.deadline_usec, 0);
        ASSERT_STREQ(ev.id, "aws:rebalance:2020-10-27T08:22:00Z");
        ASSERT_STREQ(ev.detail, "rebalance");

        ASSERT_OK(aws_parse_rebalance(BODY_ARGS("{\"noticeTime\":\"2020-10-27T09:22:00.9+01:00\",\"x\":1}\n"), &ev));
        ASSERT_STREQ(ev.id, "aws:rebalance:2020-10-27T08:22:00Z");

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                fprintf(stderr, "  bad: %s\n", bad[i].name);
                memset(&ev, 0xA5, sizeof(ev));
                ASSERT_ERR(aws_parse_rebalance(bad[i].body, bad[i].size, &ev), EBADMSG);
                assert_untouched(&ev, sizeof(NoticeEvent));
        }
}

#define T_EVENT UINT64_C(1548061243) /* 21 Jan 2019 09:00:43 GMT */

static void test_event_time(void) {
        static const struct {
                const char *s;
                uint64_t sec; /* 0: invalid */
        } cases[] = {
                { "21 Jan 2019 09:00:43 GMT", T_EVENT },
                { "27 Nov 2026 13:20:00 GMT", T_1320 },
                { "01 Feb 2019 00:00:00 GMT", UINT64_C(1548979200) },
                { "1 Feb 2019 00:00:00 GMT", UINT64_C(1548979200) },
                { "29 Feb 2024 23:59:59 GMT", UINT64_C(1709251199) },
                { "31 Dec 2099 12:00:00 GMT", UINT64_C(4102401600) },
                { "", 0 },
                { "21 Jan 2019 09:00:43", 0 },
                { "21 Jan 2019 09:00:43 UTC", 0 },
                { "21 Jan 2019 09:00:43 GMT ", 0 },
                { "21 Jan 2019 09:00:43 GMTx", 0 },
                { " 21 Jan 2019 09:00:43 GMT", 0 },
                { "Mon, 21 Jan 2019 09:00:43 GMT", 0 },
                { "21 jan 2019 09:00:43 GMT", 0 },
                { "21 January 2019 09:00:43 GMT", 0 },
                { "21 Jan 19 09:00:43 GMT", 0 },
                { "21-Jan-2019 09:00:43 GMT", 0 },
                { "2019-01-21T09:00:43Z", 0 },
                { "21  Jan 2019 09:00:43 GMT", 0 },
                { "121 Jan 2019 09:00:43 GMT", 0 },
                { "00 Jan 2019 09:00:43 GMT", 0 },
                { "32 Jan 2019 09:00:43 GMT", 0 },
                { "29 Feb 2019 09:00:43 GMT", 0 },
                { "31 Apr 2019 09:00:43 GMT", 0 },
                { "21 Jan 2019 24:00:00 GMT", 0 },
                { "21 Jan 2019 09:60:00 GMT", 0 },
                { "21 Jan 2019 09:00:60 GMT", 0 },
                { "21 Jan 2019 9:00:43 GMT", 0 },
                { "21 Jan 1969 09:00:43 GMT", 0 },
                { "21 Jan 2019 09:00:4 GMT", 0 },
                { "21 Jan 2019 09:00 GMT", 0 },
                { "21 Jan +019 09:00:43 GMT", 0 },
        };
        uint64_t usec;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                fprintf(stderr, "  '%s'\n", cases[i].s);
                usec = 4242;
                if (cases[i].sec > 0) {
                        ASSERT_OK(aws_parse_event_time(cases[i].s, &usec));
                        ASSERT_U64_EQ(usec, cases[i].sec * USEC_PER_SEC);
                } else {
                        ASSERT_ERR(aws_parse_event_time(cases[i].s, &usec), EINVAL);
                        ASSERT_U64_EQ(usec, 4242);
                }
        }
        ASSERT_ERR(aws_parse_event_time(NULL, &usec), EINVAL);
}

/* One scheduled event, as IMDS writes it. */
#define EV(code, id, state, nb)                                                                        \
        "{\"NotBefore\": \"" nb "\", \"Code\": \"" code "\", \"Description\": \"The instance is running " \
        "on degraded hardware\", \"EventId\": \"" id "\", \"NotAfter\": \"21 Jan 2019 09:17:23 GMT\", "   \
        "\"State\": \"" state "\"}"

typedef struct MaintenanceCase {
        const char *name;
        const char *body;
        size_t size;
        size_t n;             /* events expected */
        const char *ids[3];   /* their ids, in order */
        const char *codes[3];
} MaintenanceCase;

static const MaintenanceCase good_maintenance[] = {
        { "none", BODY("[]"), 0, {}, {} },
        { "none, spaced", BODY(" [ ]\n"), 0, {}, {} },
        { "empty body", BODY(""), 0, {}, {} },
        { "blank body", BODY("\n"), 0, {}, {} },
        { "one active", BODY("[" EV("instance-retirement", "instance-event-1d59937288b749b32", "active",
                                    "21 Jan 2019 09:00:43 GMT") "]"),
          1, { "aws:maintenance:instance-event-1d59937288b749b32" }, { "instance-retirement" } },
        { "canceled", BODY("[" EV("instance-reboot", "instance-event-0a", "canceled", "21 Jan 2019 09:00:43 GMT") "]"),
          0, {}, {} },
        { "completed", BODY("[" EV("system-reboot", "instance-event-0b", "completed", "21 Jan 2019 09:00:43 GMT")
                            "]"),
          0, {}, {} },
        { "unknown state", BODY("[" EV("system-reboot", "instance-event-0c", "paused", "21 Jan 2019 09:00:43 GMT")
                                "]"),
          0, {}, {} },
        { "state is case-sensitive", BODY("[" EV("system-reboot", "instance-event-0d", "Active",
                                                 "21 Jan 2019 09:00:43 GMT") "]"),
          0, {}, {} },
        /* A canceled event may carry a NotBefore that no longer means anything, or none. */
        { "canceled without NotBefore", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e1\", "
                                             "\"State\": \"canceled\"}]"),
          0, {}, {} },
        { "canceled with an odd NotBefore", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e1\", "
                                                 "\"State\": \"completed\", \"NotBefore\": \"soon\"}]"),
          0, {}, {} },
        { "mixed", BODY("[" EV("instance-stop", "e-1", "completed", "01 Jan 2019 00:00:00 GMT") ", "
                        EV("system-maintenance", "e-2", "active", "21 Jan 2019 09:00:43 GMT") ", "
                        EV("instance-reboot", "e-3", "canceled", "21 Jan 2019 09:00:43 GMT") ", "
                        EV("instance-stop", "e-4", "active", "27 Nov 2026 13:20:00 GMT") "]"),
          2, { "aws:maintenance:e-2", "aws:maintenance:e-4" }, { "system-maintenance", "instance-stop" } },
        /* Codes AWS may add later still count; only the members we use need to be there. */
        { "new code, minimal members", BODY("[{\"Code\": \"system-upgrade\", \"EventId\": \"e-9\", "
                                            "\"State\": \"active\", \"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}]"),
          1, { "aws:maintenance:e-9" }, { "system-upgrade" } },
        { "extra members", BODY("[{\"Code\": \"instance-reboot\", \"EventId\": \"e-8\", \"State\": \"active\", "
                                "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\", \"NotBeforeDeadline\": \"x\", "
                                "\"Extra\": [1, {\"y\": null}]}]"),
          1, { "aws:maintenance:e-8" }, { "instance-reboot" } },
};

static void test_maintenance_good(void) {
        for (size_t i = 0; i < ELEMENTSOF(good_maintenance); i++) {
                const MaintenanceCase *c = &good_maintenance[i];
                NoticeEvent ev[4];
                size_t n = 4242;

                fprintf(stderr, "  good: %s\n", c->name);
                memset(ev, 0xA5, sizeof(ev));
                ASSERT_OK(aws_parse_maintenance(c->body, c->size, ev, ELEMENTSOF(ev), &n));
                ASSERT_EQ(n, c->n);
                for (size_t k = 0; k < n; k++) {
                        ASSERT_EQ(ev[k].kind, EVENT_MAINTENANCE);
                        ASSERT_EQ(ev[k].cloud, CLOUD_AWS);
                        ASSERT_U64_EQ(ev[k].notice_usec, 0);
                        ASSERT_STREQ(ev[k].id, c->ids[k]);
                        ASSERT_STREQ(ev[k].detail, c->codes[k]);
                }
                for (size_t k = n; k < ELEMENTSOF(ev); k++)
                        assert_untouched(&ev[k], sizeof(NoticeEvent));
        }

        /* The deadline is NotBefore. */
        NoticeEvent e;
        size_t n;
        ASSERT_OK(aws_parse_maintenance(BODY_ARGS("[" EV("instance-retirement", "x", "active",
                                                         "21 Jan 2019 09:00:43 GMT") "]"), &e, 1, &n));
        ASSERT_EQ(n, 1);
        ASSERT_U64_EQ(e.deadline_usec, T_EVENT * USEC_PER_SEC);
}

static const BadCase bad_maintenance[] = {
        { "garbage", BODY("<html>Service Unavailable</html>") },
        { "null", BODY("null") },
        { "object", BODY("{\"Code\": \"instance-stop\", \"EventId\": \"e\", \"State\": \"active\", "
                         "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}") },
        { "string", BODY("\"[]\"") },
        { "number element", BODY("[5]") },
        { "null element", BODY("[null]") },
        { "array element", BODY("[[]]") },
        { "good then bad element",
          BODY("[" EV("instance-stop", "e", "active", "21 Jan 2019 09:00:43 GMT") ", 1]") },
        { "missing Code", BODY("[{\"EventId\": \"e\", \"State\": \"active\", "
                               "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}]") },
        { "missing EventId", BODY("[{\"Code\": \"instance-stop\", \"State\": \"active\", "
                                  "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}]") },
        { "missing State", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e\", "
                                "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}]") },
        { "active without NotBefore",
          BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e\", \"State\": \"active\"}]") },
        { "Code number", BODY("[{\"Code\": 5, \"EventId\": \"e\", \"State\": \"active\", "
                              "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}]") },
        { "EventId number", BODY("[{\"Code\": \"instance-stop\", \"EventId\": 17, \"State\": \"active\", "
                                 "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}]") },
        { "State bool", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e\", \"State\": true, "
                             "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}]") },
        { "State null", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e\", \"State\": null, "
                             "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\"}]") },
        { "NotBefore number", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e\", \"State\": \"active\", "
                                   "\"NotBefore\": 1548061243}]") },
        { "NotBefore null on a canceled event", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e\", "
                                                     "\"State\": \"canceled\", \"NotBefore\": null}]") },
        { "NotBefore RFC 3339", BODY("[" EV("instance-stop", "e", "active", "2019-01-21T09:00:43Z") "]") },
        { "NotBefore words", BODY("[" EV("instance-stop", "e", "active", "next Tuesday") "]") },
        { "NotBefore Feb 30", BODY("[" EV("instance-stop", "e", "active", "30 Feb 2019 09:00:43 GMT") "]") },
        { "NotAfter array", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e\", \"State\": \"active\", "
                                 "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\", \"NotAfter\": []}]") },
        { "Description object", BODY("[{\"Code\": \"instance-stop\", \"EventId\": \"e\", \"State\": \"active\", "
                                     "\"NotBefore\": \"21 Jan 2019 09:00:43 GMT\", \"Description\": {}}]") },
        { "EventId empty", BODY("[" EV("instance-stop", "", "active", "21 Jan 2019 09:00:43 GMT") "]") },
        { "EventId with a space", BODY("[" EV("instance-stop", "e 1", "active", "21 Jan 2019 09:00:43 GMT") "]") },
        { "EventId too long", BODY("[" EV("instance-stop", "instance-event-0123456789012345678901234567890123456789"
                                          "0123456789", "active", "21 Jan 2019 09:00:43 GMT") "]") },
        { "Code empty", BODY("[" EV("", "e", "active", "21 Jan 2019 09:00:43 GMT") "]") },
        { "Code with a newline", BODY("[" EV("instance\\nstop", "e", "active", "21 Jan 2019 09:00:43 GMT") "]") },
        { "escaped NUL in EventId",
          BODY("[" EV("instance-stop", "e\\u0000x", "active", "21 Jan 2019 09:00:43 GMT") "]") },
        { "NUL in body", BODY("[]\0") },
        { "truncated", BODY("[" EV("instance-stop", "e", "active", "21 Jan 2019 09:00:43 GMT")) },
        { "trailing data", BODY("[] []") },
        { "trailing comma", BODY("[" EV("instance-stop", "e", "active", "21 Jan 2019 09:00:43 GMT") ",]") },
        { "too deep", BODY("[[[[[[[[[[[[1]]]]]]]]]]]]") },
        { "bad UTF-8", BODY("[" EV("instance-stop\xff", "e", "active", "21 Jan 2019 09:00:43 GMT") "]") },
};

static void test_maintenance_bad(void) {
        for (size_t i = 0; i < ELEMENTSOF(bad_maintenance); i++) {
                const BadCase *c = &bad_maintenance[i];
                NoticeEvent ev[2];
                size_t n = 4242;

                fprintf(stderr, "  bad: %s\n", c->name);
                memset(ev, 0xA5, sizeof(ev));
                ASSERT_ERR(aws_parse_maintenance(c->body, c->size, ev, ELEMENTSOF(ev), &n), EBADMSG);
                ASSERT_EQ(n, 4242);
                assert_untouched(&ev[0], sizeof(NoticeEvent));
                assert_untouched(&ev[1], sizeof(NoticeEvent));
        }
}

/* More active events than room: the first ones are kept, the rest dropped, nothing overflows. */
static void test_maintenance_many(void) {
        char body[8192];
        NoticeEvent ev[4];
        size_t n = 0, len = 0;

        len += (size_t) snprintf(body + len, sizeof(body) - len, "[");
        for (int i = 0; i < 10; i++)
                len += (size_t) snprintf(body + len, sizeof(body) - len,
                                         "%s{\"Code\": \"instance-stop\", \"EventId\": \"e-%d\", \"State\": \"%s\", "
                                         "\"NotBefore\": \"21 Jan 2019 09:00:%02d GMT\"}",
                                         i ? ", " : "", i, i % 3 == 1 ? "canceled" : "active", i);
        len += (size_t) snprintf(body + len, sizeof(body) - len, "]");
        ASSERT_TRUE(len < sizeof(body) - 1);

        memset(ev, 0xA5, sizeof(ev));
        ASSERT_OK(aws_parse_maintenance(body, len, ev, 3, &n));
        ASSERT_EQ(n, 3);
        ASSERT_STREQ(ev[0].id, "aws:maintenance:e-0");
        ASSERT_STREQ(ev[1].id, "aws:maintenance:e-2");
        ASSERT_STREQ(ev[2].id, "aws:maintenance:e-3");
        ASSERT_U64_EQ(ev[2].deadline_usec, (T_EVENT - 43 + 3) * USEC_PER_SEC);
        assert_untouched(&ev[3], sizeof(NoticeEvent));

        ASSERT_OK(aws_parse_maintenance(body, len, ev, 0, &n));
        ASSERT_EQ(n, 0);
}

static void test_lifecycle_state(void) {
        static const struct {
                const char *name;
                const char *body;
                size_t size;
                int terminated; /* -1: bad */
        } cases[] = {
                { "InService", BODY("InService"), 0 },
                { "Terminated", BODY("Terminated"), 1 },
                { "Terminated, newline", BODY("Terminated\n"), 1 },
                { "Terminated, CRLF", BODY("Terminated\r\n"), 1 },
                { "Warmed:Terminated", BODY("Warmed:Terminated"), 1 },
                { "Warmed:Stopped", BODY("Warmed:Stopped"), 0 },
                { "Warmed:Running", BODY("Warmed:Running"), 0 },
                { "Warmed:Hibernated", BODY("Warmed:Hibernated"), 0 },
                { "Detached", BODY("Detached"), 0 },
                { "a state AWS adds", BODY("Quarantined"), 0 },
                { "case matters", BODY("terminated"), 0 },
                { "prefix", BODY("Terminate"), 0 },
                { "empty", BODY(""), -1 },
                { "blank", BODY("\n"), -1 },
                { "leading space", BODY(" Terminated"), -1 },
                { "two words", BODY("Terminated InService"), -1 },
                { "two lines", BODY("Terminated\nInService"), -1 },
                { "json", BODY("\"Terminated\""), -1 },
                { "html", BODY("<html>404</html>"), -1 },
                { "NUL", BODY("Terminated\0"), -1 },
                { "NUL inside", BODY("Term\0inated"), -1 },
                { "digits", BODY("State1"), -1 },
                { "high byte", BODY("Terminated\xff"), -1 },
                { "too long", BODY("Terminatedxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), -1 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                bool t = true;

                fprintf(stderr, "  %s\n", cases[i].name);
                if (cases[i].terminated < 0) {
                        ASSERT_ERR(aws_parse_lifecycle_state(cases[i].body, cases[i].size, &t), EBADMSG);
                        ASSERT_TRUE(t);
                } else {
                        t = !cases[i].terminated;
                        ASSERT_OK(aws_parse_lifecycle_state(cases[i].body, cases[i].size, &t));
                        ASSERT_EQ(t, cases[i].terminated);
                }
        }
        bool t;
        ASSERT_ERR(aws_parse_lifecycle_state(NULL, 0, &t), EBADMSG);
}

static void test_asg_event(void) {
        NoticeEvent ev;

        memset(&ev, 0xA5, sizeof(ev));
        aws_asg_event(NULL, T_1320 * USEC_PER_SEC + 999999, &ev);
        ASSERT_EQ(ev.kind, EVENT_TERMINATE);
        ASSERT_EQ(ev.cloud, CLOUD_AWS);
        ASSERT_U64_EQ(ev.deadline_usec, 0);
        ASSERT_U64_EQ(ev.notice_usec, 0);
        ASSERT_STREQ(ev.id, "aws:asg:terminated:2026-11-27T13:20:00Z");
        ASSERT_STREQ(ev.detail, "Terminated");
        aws_asg_event("i-0abc", T_1320 * USEC_PER_SEC, &ev);
        ASSERT_STREQ(ev.id, "aws:asg:terminated:i-0abc");
}

static void test_token_ttl(void) {
        static const struct {
                const char *value;
                int error;
                uint64_t usec;
        } cases[] = {
                { "21600", 0, 21600 * USEC_PER_SEC },
                { "3", 0, 3 * USEC_PER_SEC },
                { "1", 0, USEC_PER_SEC },
                { "0021", 0, 21 * USEC_PER_SEC },
                { "0", ERANGE, 0 },
                { "21601", ERANGE, 0 },
                { "99999999999999999999999999", ERANGE, 0 },
                { "", EINVAL, 0 },
                { "-5", EINVAL, 0 },
                { "+5", EINVAL, 0 },
                { " 5", EINVAL, 0 },
                { "5 ", EINVAL, 0 },
                { "5s", EINVAL, 0 },
                { "3.5", EINVAL, 0 },
                { "0x10", EINVAL, 0 },
                { "abc", EINVAL, 0 },
                { "1e3", EINVAL, 0 },
        };
        uint64_t usec;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                fprintf(stderr, "  ttl '%s'\n", cases[i].value);
                usec = 4242;
                if (cases[i].error == 0) {
                        ASSERT_OK(aws_parse_token_ttl(cases[i].value, &usec));
                        ASSERT_U64_EQ(usec, cases[i].usec);
                } else {
                        ASSERT_EQ(aws_parse_token_ttl(cases[i].value, &usec), -cases[i].error);
                        ASSERT_U64_EQ(usec, 4242);
                }
        }
        ASSERT_ERR(aws_parse_token_ttl(NULL, &usec), EINVAL);
}

static void test_refresh_margin(void) {
        /* The integration test's numbers: TTL 3 s, poll 200 ms -> refetch 400 ms before expiry. */
        ASSERT_U64_EQ(aws_token_refresh_margin_usec(3 * USEC_PER_SEC, 200 * USEC_PER_MSEC), 400 * USEC_PER_MSEC);
        ASSERT_U64_EQ(aws_token_refresh_margin_usec(21600 * USEC_PER_SEC, USEC_PER_SEC), 2160 * USEC_PER_SEC);
        ASSERT_U64_EQ(aws_token_refresh_margin_usec(10 * USEC_PER_SEC, 5 * USEC_PER_SEC), 10 * USEC_PER_SEC);
        ASSERT_U64_EQ(aws_token_refresh_margin_usec(USEC_PER_SEC, UINT64_MAX), UINT64_MAX);
}

static void test_backoff(void) {
        const uint64_t ms = USEC_PER_MSEC;

        ASSERT_U64_EQ(aws_backoff_usec(200 * ms, 1), 400 * ms);
        ASSERT_U64_EQ(aws_backoff_usec(200 * ms, 2), 800 * ms);
        ASSERT_U64_EQ(aws_backoff_usec(200 * ms, 3), 1600 * ms);
        ASSERT_U64_EQ(aws_backoff_usec(200 * ms, 4), 3200 * ms);
        ASSERT_U64_EQ(aws_backoff_usec(200 * ms, 5), AWS_BACKOFF_CAP_USEC);
        ASSERT_U64_EQ(aws_backoff_usec(200 * ms, 64), AWS_BACKOFF_CAP_USEC);
        ASSERT_U64_EQ(aws_backoff_usec(200 * ms, UINT32_MAX), AWS_BACKOFF_CAP_USEC);
        ASSERT_U64_EQ(aws_backoff_usec(USEC_PER_SEC, 1), 2 * USEC_PER_SEC);
        ASSERT_U64_EQ(aws_backoff_usec(USEC_PER_SEC, 3), AWS_BACKOFF_CAP_USEC);
        /* A long interval is never shortened, nor stretched. */
        ASSERT_U64_EQ(aws_backoff_usec(10 * USEC_PER_SEC, 1), 10 * USEC_PER_SEC);
        ASSERT_U64_EQ(aws_backoff_usec(UINT64_MAX / 2, 7), UINT64_MAX / 2);
        ASSERT_U64_EQ(aws_backoff_usec(UINT64_MAX, 7), UINT64_MAX);
}

static void test_provider_new(void) {
        _cleanup_(config_freep) Config *c = NULL;
        uv_loop_t loop;
        Http *h = NULL;
        Provider *p = NULL;

        ASSERT_STREQ(provider_default_url(CLOUD_AWS), "http://169.254.169.254");
        ASSERT_STREQ(provider_default_url(CLOUD_GCP), "http://169.254.169.254");
        ASSERT_STREQ(provider_default_url(CLOUD_AZURE), "http://169.254.169.254");
        ASSERT_STREQ(provider_default_url(CLOUD_ALIBABA), "http://100.100.100.200");
        ASSERT_TRUE(provider_default_url(CLOUD_AUTO) == NULL);
        ASSERT_TRUE(provider_default_url(_CLOUD_MAX) == NULL);
        ASSERT_TRUE(provider_default_url(_CLOUD_INVALID) == NULL);

        ASSERT_OK(config_new_default(&c));
        ASSERT_EQ(uv_loop_init(&loop), 0);
        ASSERT_OK(http_new(&loop, &h));

        ASSERT_ERR(provider_new(CLOUD_AUTO, &loop, h, c, NULL, NULL, NULL, &p), EINVAL);
        ASSERT_ERR(provider_new(_CLOUD_MAX, &loop, h, c, NULL, NULL, NULL, &p), EINVAL);
        ASSERT_ERR(provider_new(CLOUD_AWS, &loop, h, c, "///", NULL, NULL, &p), EINVAL);
        ASSERT_TRUE(p == NULL);
        ASSERT_TRUE(provider_free(NULL) == NULL);
        provider_stop(NULL);

        http_close(h);
        ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
        ASSERT_EQ(uv_loop_close(&loop), 0);

        test_provider_lifecycle(CLOUD_AWS, &provider_aws_vtable);
}

/* ---- the engine's cadence against the daemon's own fake -------------------- */

#define CADENCE_CYCLES 6

typedef struct Cadence {
        uv_loop_t loop;
        uv_timer_t guard;
        FakeServer *fake;
        unsigned polls, errors;
        uint64_t requests[CADENCE_CYCLES + 1]; /* the fake's request count at the end of each cycle */
        bool timed_out;
} Cadence;

static void cadence_on_poll(Provider *p, int error, const char *what, const char *detail, void *userdata) {
        Cadence *c = userdata;

        if (error < 0) {
                fprintf(stderr, "  poll error: %s: %s\n", what, detail);
                c->errors++;
        }
        c->polls++;
        if (c->polls <= CADENCE_CYCLES)
                c->requests[c->polls] = fake_server_requests(c->fake);
}

static void cadence_on_guard(uv_timer_t *t) {
        Cadence *c = container_of(t, Cadence, guard);

        c->timed_out = true;
}

static void cadence_run(Cadence *c, unsigned polls) {
        ASSERT_EQ(uv_timer_start(&c->guard, cadence_on_guard, 10000, 0), 0);
        while (c->polls < polls && !c->timed_out)
                (void) uv_run(&c->loop, UV_RUN_ONCE);
        ASSERT_FALSE(c->timed_out);
        (void) uv_timer_stop(&c->guard);
}

/*
 * Requests per cycle with @events_mask: the first cycle is the token PUT, the
 * instance id and every endpoint; later ones instance-action, plus rebalance
 * and scheduled maintenance only when their kinds start the plan (100 ms
 * cycles never reach their 5 s and 60 s intervals here). After a restart the
 * first cycle polls every endpoint again.
 */
static void run_cadence(unsigned events_mask, unsigned per_cycle) {
        static const ProviderCallbacks cb = { .on_poll = cadence_on_poll };
        _cleanup_(config_freep) Config *cfg = NULL;
        Cadence c = {};
        Http *h = NULL;
        Provider *p = NULL;

        fprintf(stderr, "  events 0x%x: %u GETs a cycle\n", events_mask, per_cycle);
        ASSERT_OK(config_new_default(&cfg));
        cfg->poll_interval_usec = 100 * USEC_PER_MSEC;
        cfg->events_mask = events_mask;
        ASSERT_EQ(uv_loop_init(&c.loop), 0);
        ASSERT_EQ(uv_timer_init(&c.loop, &c.guard), 0);
        ASSERT_OK(http_new(&c.loop, &h));
        ASSERT_OK(fake_server_new(&c.loop, CLOUD_AWS, "127.0.0.1", 0, &c.fake));
        ASSERT_OK(provider_new(CLOUD_AWS, &c.loop, h, cfg, fake_server_url(c.fake), &cb, &c, &p));
        ASSERT_OK(provider_start(p));

        cadence_run(&c, CADENCE_CYCLES);
        ASSERT_EQ(c.errors, 0);
        ASSERT_U64_EQ(c.requests[1], 2 + 3);
        for (unsigned i = 2; i <= CADENCE_CYCLES; i++)
                ASSERT_U64_EQ(c.requests[i] - c.requests[i - 1], per_cycle);
        ASSERT_STREQ(p->instance_id, fake_server_instance_id(c.fake));

        /* A restart polls everything once more: the token and the instance id are kept. */
        provider_stop(p);
        uint64_t before = fake_server_requests(c.fake);
        c.polls = 0;
        ASSERT_OK(provider_start(p));
        cadence_run(&c, 2);
        ASSERT_U64_EQ(c.requests[1] - before, 3);
        ASSERT_U64_EQ(c.requests[2] - c.requests[1], per_cycle);
        ASSERT_EQ(c.errors, 0);

        p = provider_free(p);
        fake_server_close(c.fake);
        http_close(h);
        uv_close((uv_handle_t *) &c.guard, NULL);
        ASSERT_EQ(uv_run(&c.loop, UV_RUN_DEFAULT), 0);
        ASSERT_EQ(uv_loop_close(&c.loop), 0);
}

static void test_cadence(void) {
        run_cadence(EVENT_MASK_DEFAULT, 1);
        run_cadence(EVENT_MASK_DEFAULT | EVENT_MASK(EVENT_REBALANCE), 2);
        run_cadence(EVENT_MASK_DEFAULT | EVENT_MASK(EVENT_MAINTENANCE), 2);
        run_cadence(EVENT_MASK_DEFAULT | EVENT_MASK(EVENT_REBALANCE) | EVENT_MASK(EVENT_MAINTENANCE), 3);
}

int main(void) {
        RUN(test_instance_action_good);
        RUN(test_instance_action_bad);
        RUN(test_instance_action_generated);
        RUN(test_rebalance);
        RUN(test_event_time);
        RUN(test_maintenance_good);
        RUN(test_maintenance_bad);
        RUN(test_maintenance_many);
        RUN(test_lifecycle_state);
        RUN(test_asg_event);
        RUN(test_token_ttl);
        RUN(test_refresh_margin);
        RUN(test_backoff);
        RUN(test_provider_new);
        RUN(test_cadence);
        return 0;
}
