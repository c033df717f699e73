/* SPDX-License-Identifier: MIT */
/*
 * test-fake-server.c - the helpers the --fake-metadata fakes share
 * (fake-server.c): the clouds' three time formats (and that the providers'
 * parsers read them back), random hex ids, and the IMDS session-token TTL
 * rule and ring. No network; the fakes themselves are exercised by the
 * provider tests and the integration tests.
 */
#include <errno.h>
#include <locale.h>
#include <string.h>

#include "fake-server-internal.h"
#include "provider-aws.h"
#include "provider-azure.h"
#include "shared/macro.h"
#include "shared/parse.h"
#include "tests.h"

#define T_EXAMPLE UINT64_C(1474309787) /* Mon, 19 Sep 2016 18:29:47 GMT */
#define T_FEB UINT64_C(1548979200)     /* Fri, 01 Feb 2019 00:00:00 GMT */

static void test_format_time(void) {
        static const struct {
                uint64_t sec;
                FakeTimeFormat format;
                const char *text;
        } cases[] = {
                { T_EXAMPLE, FAKE_TIME_RFC3339, "2016-09-19T18:29:47Z" },
                { T_EXAMPLE, FAKE_TIME_AWS_EVENT, "19 Sep 2016 18:29:47 GMT" },
                { T_EXAMPLE, FAKE_TIME_RFC1123, "Mon, 19 Sep 2016 18:29:47 GMT" },
                { T_FEB, FAKE_TIME_RFC3339, "2019-02-01T00:00:00Z" },
                { T_FEB, FAKE_TIME_AWS_EVENT, "01 Feb 2019 00:00:00 GMT" },
                { T_FEB, FAKE_TIME_RFC1123, "Fri, 01 Feb 2019 00:00:00 GMT" },
                { 0, FAKE_TIME_RFC3339, "1970-01-01T00:00:00Z" },
                { 0, FAKE_TIME_RFC1123, "Thu, 01 Jan 1970 00:00:00 GMT" },
        };
        char buf[64];

        /* The names are the fake's own, not the locale's. */
        (void) setlocale(LC_ALL, "");

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t usec = cases[i].sec * USEC_PER_SEC + 999999, back = 0;

                fprintf(stderr, "  %s\n", cases[i].text);
                ASSERT_OK(fake_format_time(usec, cases[i].format, buf, sizeof(buf)));
                ASSERT_STREQ(buf, cases[i].text);

                /* Exactly the room needed, and one byte less. */
                ASSERT_OK(fake_format_time(usec, cases[i].format, buf, strlen(cases[i].text) + 1));
                ASSERT_ERR(fake_format_time(usec, cases[i].format, buf, strlen(cases[i].text)), ENOBUFS);

                /* What the fake serves, the provider reads back. */
                switch (cases[i].format) {
                case FAKE_TIME_RFC3339:
                        ASSERT_OK(parse_rfc3339(cases[i].text, &back));
                        break;
                case FAKE_TIME_AWS_EVENT:
                        ASSERT_OK(aws_parse_event_time(cases[i].text, &back));
                        break;
                case FAKE_TIME_RFC1123:
                        ASSERT_OK(azure_parse_rfc1123(cases[i].text, &back));
                        break;
                case _FAKE_TIME_MAX:
                case _FAKE_TIME_INVALID:
                        break;
                }
                ASSERT_U64_EQ(back, cases[i].sec * USEC_PER_SEC);
        }

        ASSERT_ERR(fake_format_time(T_EXAMPLE * USEC_PER_SEC, _FAKE_TIME_MAX, buf, sizeof(buf)), EINVAL);
        ASSERT_ERR(fake_format_time(T_EXAMPLE * USEC_PER_SEC, _FAKE_TIME_INVALID, buf, sizeof(buf)), EINVAL);
        (void) setlocale(LC_ALL, "C");
}

static void test_random_hex(void) {
        char a[49], b[49];

        for (size_t digits = 0; digits <= 48; digits++) {
                ASSERT_OK(fake_random_hex(a, digits + 1, digits));
                ASSERT_EQ(strlen(a), digits);
                ASSERT_EQ(strspn(a, "0123456789abcdef"), digits);
        }
        /* 17 digits, as an AWS event id: two in a row are not the same. */
        ASSERT_OK(fake_random_hex(a, sizeof(a), 17));
        ASSERT_OK(fake_random_hex(b, sizeof(b), 17));
        ASSERT_EQ(strlen(a), 17);
        ASSERT_TRUE(strcmp(a, b) != 0);

        memset(a, 'z', sizeof(a));
        ASSERT_ERR(fake_random_hex(a, 17, 17), ENOBUFS);
        ASSERT_ERR(fake_random_hex(a, 0, 0), ENOBUFS);
        ASSERT_EQ(a[0], 'z');
        char big[256];
        ASSERT_ERR(fake_random_hex(big, sizeof(big), 200), ENOBUFS);
}

static void test_token_ttl(void) {
        static const struct {
                const char *value;
                int error;
                unsigned ttl;
        } cases[] = {
                { "21600", 0, 21600 }, { "1", 0, 1 },           { "0021", 0, 21 },     { "0", ERANGE, 0 },
                { "21601", ERANGE, 0 }, { "99999999999999999999", ERANGE, 0 },         { "", EINVAL, 0 },
                { "-5", EINVAL, 0 },    { "+5", EINVAL, 0 },     { " 5", EINVAL, 0 },   { "5 ", EINVAL, 0 },
                { "3.5", EINVAL, 0 },   { "0x10", EINVAL, 0 },   { "abc", EINVAL, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                unsigned ttl = 4242;

                fprintf(stderr, "  ttl '%s'\n", cases[i].value);
                if (cases[i].error == 0) {
                        ASSERT_OK(fake_token_parse_ttl(cases[i].value, &ttl));
                        ASSERT_EQ(ttl, cases[i].ttl);
                } else {
                        ASSERT_EQ(fake_token_parse_ttl(cases[i].value, &ttl), -cases[i].error);
                        ASSERT_EQ(ttl, 4242);
                }
        }
        unsigned ttl;
        ASSERT_ERR(fake_token_parse_ttl(NULL, &ttl), EINVAL);
}

static void test_token_ring(void) {
        FakeTokenRing ring = {};
        uint64_t now = fake_now_monotonic_usec();

        ASSERT_FALSE(fake_token_valid(&ring, "AQAEA"));
        ASSERT_FALSE(fake_token_valid(&ring, ""));
        ASSERT_FALSE(fake_token_valid(&ring, NULL));

        (void) snprintf(ring.tokens[0].value, sizeof(ring.tokens[0].value), "live");
        ring.tokens[0].expire_usec = now + 60 * USEC_PER_SEC;
        (void) snprintf(ring.tokens[FAKE_TOKENS_MAX - 1].value, sizeof(ring.tokens[0].value), "expired");
        ring.tokens[FAKE_TOKENS_MAX - 1].expire_usec = now > 1 ? now - 1 : 1;

        ASSERT_TRUE(fake_token_valid(&ring, "live"));
        ASSERT_FALSE(fake_token_valid(&ring, "liv"));
        ASSERT_FALSE(fake_token_valid(&ring, "live2"));
        ASSERT_FALSE(fake_token_valid(&ring, "expired"));
        /* An unused slot's empty value is no token. */
        ASSERT_FALSE(fake_token_valid(&ring, ""));
}

int main(void) {
        RUN(test_format_time);
        RUN(test_random_hex);
        RUN(test_token_ttl);
        RUN(test_token_ring);
        return 0;
}
