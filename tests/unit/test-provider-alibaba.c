/* SPDX-License-Identifier: MIT */
/*
 * test-provider-alibaba.c - a table of instance/spot/termination-time bodies
 * through the Alibaba provider's pure parser, and provider_new() for
 * CLOUD_ALIBABA (its default address, start and free without a loop turn).
 * No network.
 */
#include <errno.h>
#include <string.h>

#include "config.h"
#include "http.h"
#include "provider-alibaba.h"
#include "provider.h"
#include "shared/macro.h"
#include "tests-provider.h"
#include "tests.h"

#define T_1320 UINT64_C(1795785600) /* 2026-11-27T13:20:00Z */


static void test_termination_time_good(void) {
        static const struct {
                const char *body;
                size_t size;
                uint64_t deadline_usec;
                const char *id;
        } cases[] = {
                { BODY("2026-11-27T13:20:00Z"), T_1320 * USEC_PER_SEC, "alibaba:spot:2026-11-27T13:20:00Z" },
                /* What curl hands over may end in a newline. */
                { BODY("2026-11-27T13:20:00Z\n"), T_1320 * USEC_PER_SEC, "alibaba:spot:2026-11-27T13:20:00Z" },
                { BODY("2026-11-27T13:20:00Z\r\n"), T_1320 * USEC_PER_SEC, "alibaba:spot:2026-11-27T13:20:00Z" },
                { BODY("2026-11-27T13:20:00Z \t"), T_1320 * USEC_PER_SEC, "alibaba:spot:2026-11-27T13:20:00Z" },
                /* Other RFC 3339 spellings of the same moment; the id is normalised. */
                { BODY("2026-11-27T21:20:00+08:00"), T_1320 * USEC_PER_SEC, "alibaba:spot:2026-11-27T13:20:00Z" },
                { BODY("2026-11-27T13:20:00.5Z"), T_1320 * USEC_PER_SEC + 500000,
                  "alibaba:spot:2026-11-27T13:20:00Z" },
                /* A time in the past is still a notice: the plan gets what is left. */
                { BODY("2015-01-05T18:02:00Z"), UINT64_C(1420480920) * USEC_PER_SEC,
                  "alibaba:spot:2015-01-05T18:02:00Z" },
                { BODY("2024-02-29T00:00:00Z"), UINT64_C(1709164800) * USEC_PER_SEC,
                  "alibaba:spot:2024-02-29T00:00:00Z" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                NoticeEvent ev;

                fprintf(stderr, "  good[%zu]\n", i);
                memset(&ev, 0xA5, sizeof(ev));
                ASSERT_OK(alibaba_parse_termination_time(cases[i].body, cases[i].size, &ev));
                ASSERT_EQ(ev.kind, EVENT_TERMINATE);
                ASSERT_EQ(ev.cloud, CLOUD_ALIBABA);
                ASSERT_U64_EQ(ev.deadline_usec, cases[i].deadline_usec);
                ASSERT_U64_EQ(ev.notice_usec, 0);
                ASSERT_STREQ(ev.id, cases[i].id);
                ASSERT_STREQ(ev.detail, "termination-time");
        }
}

static void test_termination_time_bad(void) {
        static const struct {
                const char *name;
                const char *body;
                size_t size;
        } cases[] = {
                { "empty", BODY("") },
                { "space", BODY(" \r\n") },
                { "leading space", BODY(" 2026-11-27T13:20:00Z") },
                { "html 404 page", BODY("<html><body><h1>404 Not Found</h1></body></html>") },
                { "json", BODY("{\"time\": \"2026-11-27T13:20:00Z\"}") },
                { "quoted", BODY("\"2026-11-27T13:20:00Z\"") },
                { "no zone", BODY("2026-11-27T13:20:00") },
                { "date only", BODY("2026-11-27") },
                { "space for T", BODY("2026-11-27 13:20:00Z") },
                { "month 13", BODY("2026-13-27T13:20:00Z") },
                { "Feb 29 of a common year", BODY("2026-02-29T13:20:00Z") },
                { "hour 24", BODY("2026-11-27T24:00:00Z") },
                { "trailing garbage", BODY("2026-11-27T13:20:00Zjunk") },
                { "two times", BODY("2026-11-27T13:20:00Z\n2026-11-27T13:25:00Z") },
                { "AWS event time", BODY("27 Nov 2026 13:20:00 GMT") },
                { "epoch seconds", BODY("1795785600") },
                { "the epoch itself", BODY("1970-01-01T00:00:00Z") },
                { "NUL inside", BODY("2026-11-27T13:20:00Z\0") },
                { "NUL first", BODY("\0002026-11-27T13:20:00Z") },
                { "control byte", BODY("2026-11-27T13:20:00\001Z") },
                { "high byte", BODY("2026-11-27T13:20:00Z\xff") },
                { "too long", BODY("2026-11-27T13:20:00.00000000000000000000000000000000000000000000000000Z") },
        };
        NoticeEvent ev;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                fprintf(stderr, "  bad: %s\n", cases[i].name);
                memset(&ev, 0xA5, sizeof(ev));
                ASSERT_ERR(alibaba_parse_termination_time(cases[i].body, cases[i].size, &ev), EBADMSG);
                assert_untouched(&ev, sizeof(NoticeEvent));
        }

        memset(&ev, 0xA5, sizeof(ev));
        ASSERT_ERR(alibaba_parse_termination_time(NULL, 0, &ev), EBADMSG);
        ASSERT_ERR(alibaba_parse_termination_time("2026-11-27T13:20:00Z", 0, &ev), EBADMSG);
        assert_untouched(&ev, sizeof(NoticeEvent));
}

/* Every prefix of a good body is refused or means something else; none reads past its size. */
static void test_termination_time_prefixes(void) {
        static const char good[] = "2026-11-27T13:20:00Z";
        NoticeEvent ev;

        for (size_t len = 0; len < sizeof(good) - 1; len++) {
                char *copy = malloc(len ? len : 1);

                ASSERT_TRUE(copy);
                memcpy(copy, good, len);
                ASSERT_ERR(alibaba_parse_termination_time(copy, len, &ev), EBADMSG);
                free(copy);
        }
}

static void test_provider_new(void) {
        _cleanup_(config_freep) Config *c = NULL;

        ASSERT_STREQ(provider_default_url(CLOUD_ALIBABA), "http://100.100.100.200");
        ASSERT_OK(config_new_default(&c));
        ASSERT_FALSE(c->alibaba_token);
        test_provider_lifecycle(CLOUD_ALIBABA, &provider_alibaba_vtable);
}

int main(void) {
        RUN(test_termination_time_good);
        RUN(test_termination_time_bad);
        RUN(test_termination_time_prefixes);
        RUN(test_provider_new);
        return 0;
}
