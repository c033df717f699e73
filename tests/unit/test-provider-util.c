/* SPDX-License-Identifier: MIT */
/*
 * test-provider-util.c - tables through the helpers the providers share
 * (provider-util.c): the backoff and timer arithmetic, one-word bodies and
 * quoting of untrusted text, JSON under a nesting limit and the typed member
 * getters with their messages, the "D Mon YYYY HH:MM:SS" date, the words
 * for failed requests; then the poll counters, request renewal and the
 * self-freeing timer on a real loop (no network).
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "http.h"
#include "provider-util.h"
#include "provider.h"
#include "shared/macro.h"
#include "tests-provider.h"
#include "tests.h"

static void test_backoff(void) {
        const uint64_t ms = USEC_PER_MSEC, s = USEC_PER_SEC;
        static const struct {
                uint64_t interval;
                unsigned doublings;
                uint64_t cap;
                uint64_t delay;
        } cases[] = {
                { 200 * ms, 0, 5 * s, 200 * ms },
                { 200 * ms, 1, 5 * s, 400 * ms },
                { 200 * ms, 4, 5 * s, 3200 * ms },
                { 200 * ms, 5, 5 * s, 5 * s },
                { 200 * ms, 64, 5 * s, 5 * s },
                { 200 * ms, UINT32_MAX, 5 * s, 5 * s },
                { 1 * s, 1, 5 * s, 2 * s },
                { 1 * s, 3, 5 * s, 5 * s },
                /* A long interval is never shortened, nor stretched. */
                { 10 * s, 1, 5 * s, 10 * s },
                { 10 * s, 0, 5 * s, 10 * s },
                { 3, 1, 0, 3 },
                { 0, 9, 5 * s, 0 },
                /* No overflow near the top. */
                { UINT64_MAX / 2 + 1, 1, UINT64_MAX, UINT64_MAX },
                { UINT64_MAX / 2, 7, 5 * s, UINT64_MAX / 2 },
                { UINT64_MAX, 7, 5 * s, UINT64_MAX },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                fprintf(stderr, "  case %zu\n", i);
                ASSERT_U64_EQ(provider_backoff_usec(cases[i].interval, cases[i].doublings, cases[i].cap),
                              cases[i].delay);
        }
}

static void test_timeout_and_interval(void) {
        _cleanup_(config_freep) Config *c = NULL;

        ASSERT_U64_EQ(provider_timeout_ms(0), 0);
        ASSERT_U64_EQ(provider_timeout_ms(1), 1);
        ASSERT_U64_EQ(provider_timeout_ms(999), 1);
        ASSERT_U64_EQ(provider_timeout_ms(1000), 1);
        ASSERT_U64_EQ(provider_timeout_ms(1001), 2);
        ASSERT_U64_EQ(provider_timeout_ms(5 * USEC_PER_SEC), 5000);
        ASSERT_U64_EQ(provider_timeout_ms(UINT64_MAX), UINT64_MAX / 1000 + 1);

        ASSERT_OK(config_new_default(&c));
        ASSERT_U64_EQ(provider_poll_interval_usec(c), USEC_PER_SEC);
        c->poll_interval_usec = 200 * USEC_PER_MSEC;
        ASSERT_U64_EQ(provider_poll_interval_usec(c), 200 * USEC_PER_MSEC);
        /* Config checks keep it from 0, but a zero interval would spin. */
        c->poll_interval_usec = 0;
        ASSERT_U64_EQ(provider_poll_interval_usec(c), USEC_PER_MSEC);
}

static void test_text(void) {
        static const char spaces[] = " \t\r\n";
        static const char others[] = "\v\f\0ax-";

        for (size_t i = 0; i < sizeof(spaces) - 1; i++)
                ASSERT_TRUE(provider_is_space(spaces[i]));
        for (size_t i = 0; i < sizeof(others) - 1; i++)
                ASSERT_FALSE(provider_is_space(others[i]));

        ASSERT_TRUE(provider_visible_ascii("i-0abc~!", 8));
        ASSERT_TRUE(provider_visible_ascii("", 0));
        ASSERT_FALSE(provider_visible_ascii("a b", 3));
        ASSERT_FALSE(provider_visible_ascii("ab\n", 3));
        ASSERT_FALSE(provider_visible_ascii("a\0b", 3));
        ASSERT_FALSE(provider_visible_ascii("a\x7f", 2));
        ASSERT_FALSE(provider_visible_ascii("\xc3\xa9", 2));
        /* Only @size bytes count. */
        ASSERT_TRUE(provider_visible_ascii("ab cd", 2));

        ASSERT_EQ(provider_trim_end("abc \r\n\t", 7), 3);
        ASSERT_EQ(provider_trim_end("a b ", 4), 3);
        ASSERT_EQ(provider_trim_end("   ", 3), 0);
        ASSERT_EQ(provider_trim_end("abc", 3), 3);
        ASSERT_EQ(provider_trim_end("abc\v", 4), 4);
        ASSERT_EQ(provider_trim_end("", 0), 0);
        ASSERT_EQ(provider_trim_end(NULL, 5), 0);
}

static void test_parse_word(void) {
        static const struct {
                const char *body;
                size_t size;
                size_t max;
                const char *word; /* NULL: -EBADMSG */
        } cases[] = {
                { BODY("i-0123456789abcdef0"), 64, "i-0123456789abcdef0" },
                { BODY("i-0abc\n"), 64, "i-0abc" },
                { BODY("i-0abc \r\n\t"), 64, "i-0abc" },
                { BODY("abc"), 3, "abc" },
                { BODY("abc\n"), 3, "abc" },
                { BODY("abcd"), 3, NULL },
                { BODY(""), 64, NULL },
                { BODY("\n"), 64, NULL },
                { BODY(" abc"), 64, NULL },
                { BODY("a b"), 64, NULL },
                { BODY("a\nb"), 64, NULL },
                { BODY("abc\0"), 64, NULL },
                { BODY("\0abc"), 64, NULL },
                { BODY("abc\xff"), 64, NULL },
                { BODY("abc\v"), 64, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *w = (char *) "untouched";

                fprintf(stderr, "  case %zu\n", i);
                if (!cases[i].word) {
                        ASSERT_ERR(provider_parse_word(cases[i].body, cases[i].size, cases[i].max, &w),
                                   EBADMSG);
                        ASSERT_STREQ(w, "untouched");
                        continue;
                }
                ASSERT_OK(provider_parse_word(cases[i].body, cases[i].size, cases[i].max, &w));
                ASSERT_STREQ(w, cases[i].word);
                free(w);
        }

        char *w = (char *) "untouched";
        ASSERT_ERR(provider_parse_word(NULL, 0, 64, &w), EBADMSG);
        ASSERT_ERR(provider_parse_word(NULL, 5, 64, &w), EBADMSG);
        ASSERT_STREQ(w, "untouched");
}

static void test_quote(void) {
        static const char forty[] = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        static const struct {
                const char *s;
                size_t len;
                size_t size;
                const char *quoted;
        } cases[] = {
                { "hello", 5, 40, "hello" },
                { "", 0, 40, "" },
                { "a\nb\0c", 5, 40, "a?b?c" },
                { "\x7f\x80\x1f ~", 5, 40, "??? ~" },
                /* Only @len bytes are read. */
                { "abcdef", 3, 40, "abc" },
                { forty, 32, 40, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" },
                { forty, 33, 40, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..." },
                { forty, 40, 40, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..." },
                /* Cut to fit, the dots first. */
                { forty, 40, 34, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx." },
                { forty, 40, 10, "xxxxxxxxx" },
                { "hello", 5, 3, "he" },
                { "hello", 5, 1, "" },
        };
        char buf[64];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                fprintf(stderr, "  case %zu\n", i);
                memset(buf, 0xA5, sizeof(buf));
                provider_quote_untrusted(buf, cases[i].size, cases[i].s, cases[i].len);
                ASSERT_STREQ(buf, cases[i].quoted);
                assert_untouched(buf + cases[i].size, sizeof(buf) - cases[i].size);
        }

        memset(buf, 0xA5, sizeof(buf));
        provider_quote_untrusted(buf, 0, "hello", 5);
        assert_untouched(buf, sizeof(buf));
}

static void test_set_error(void) {
        char err[16];

        ASSERT_ERR(provider_set_error(err, sizeof(err), "bad %s %d", "thing", 42), EBADMSG);
        ASSERT_STREQ(err, "bad thing 42");
        ASSERT_ERR(provider_set_error(err, sizeof(err), "%s", "a message longer than the buffer"), EBADMSG);
        ASSERT_STREQ(err, "a message longe");
        ASSERT_ERR(provider_set_error(NULL, 0, "%s", "nowhere"), EBADMSG);
        ASSERT_ERR(provider_set_error(NULL, 16, "%s", "nowhere"), EBADMSG);
        memset(err, 0xA5, sizeof(err));
        ASSERT_ERR(provider_set_error(err, 0, "%s", "nowhere"), EBADMSG);
        assert_untouched(err, sizeof(err));
}

/* ---- JSON ------------------------------------------------------------------ */

typedef struct JsonCase {
        const char *name;
        const char *body;
        size_t size;
        json_type type;
        const char *error; /* NULL: parses; else the message, or its start when it ends in '*' */
} JsonCase;

static const JsonCase json_cases[] = {
        { "empty object", BODY("{}"), json_type_object, NULL },
        { "object, whitespace around", BODY(" \t{\"a\": [1, {\"b\": null}]}\r\n"), json_type_object, NULL },
        { "empty array", BODY("[]"), json_type_array, NULL },
        { "array, newline", BODY("[1, \"x\", {}]\n"), json_type_array, NULL },
        { "nested within the limit", BODY("{\"a\": [[[[[1]]]]]}"), json_type_object, NULL },
        { "UTF-8", BODY("{\"a\": \"\xc3\xa9\"}"), json_type_object, NULL },
        { "empty", BODY(""), json_type_object, "empty body" },
        { "NUL after the object", BODY("{}\0"), json_type_object, "NUL byte in body" },
        { "NUL inside", BODY("{\"a\0\": 1}"), json_type_object, "NUL byte in body" },
        { "truncated", BODY("{\"a\": "), json_type_object, "invalid JSON: truncated" },
        { "only space", BODY("  \n"), json_type_object, "invalid JSON: truncated" },
        { "not strict", BODY("{a: 1}"), json_type_object, "invalid JSON: *" },
        { "trailing comma", BODY("[1,]"), json_type_array, "invalid JSON: *" },
        { "bad UTF-8", BODY("{\"a\": \"\xff\"}"), json_type_object, "invalid JSON: *" },
        { "too deep", BODY("{\"a\": [[[[[[[[[[[[1]]]]]]]]]]]]}"), json_type_object, "invalid JSON: *" },
        /* Strict json-c stops at trailing data itself; the check after it is for other versions. */
        { "two objects", BODY("{} {}"), json_type_object, "invalid JSON: *" },
        { "array and garbage", BODY("[] x"), json_type_array, "invalid JSON: *" },
        { "object and bracket", BODY("{}]"), json_type_object, "invalid JSON: *" },
        { "array for an object", BODY("[]"), json_type_object, "JSON is not an object" },
        { "object for an array", BODY("{}"), json_type_array, "JSON is not an array" },
        /* json-c waits for the end of a bare literal or number: without one it is cut short. */
        { "null", BODY("null"), json_type_object, "invalid JSON: truncated" },
        { "null, newline", BODY("null\n"), json_type_object, "JSON is not an object" },
        { "string", BODY("\"{}\""), json_type_object, "JSON is not an object" },
        { "number, newline", BODY("1\n"), json_type_array, "JSON is not an array" },
};

static void assert_message(const char *got, const char *want) {
        size_t n = strlen(want);

        if (n > 0 && want[n - 1] == '*') {
                if (strncmp(got, want, n - 1) != 0)
                        TEST_FAIL("message \"%s\" does not start with \"%.*s\"", got, (int) n - 1, want);
                return;
        }
        ASSERT_STREQ(got, want);
}

/* Stands for "not written" in an output pointer. */
static char marker;
#define UNWRITTEN ((json_object *) &marker)

static void test_json_parse(void) {
        json_object *const sentinel = UNWRITTEN;

        for (size_t i = 0; i < ELEMENTSOF(json_cases); i++) {
                const JsonCase *c = &json_cases[i];
                json_object *o = sentinel;
                char err[128] = "";

                fprintf(stderr, "  %s\n", c->name);
                if (!c->error) {
                        ASSERT_OK(provider_json_parse(c->body, c->size, c->type, 8, &o, err, sizeof(err)));
                        ASSERT_TRUE(json_object_is_type(o, c->type));
                        (void) json_object_put(o);
                        /* Without a place for the message, too. */
                        ASSERT_OK(provider_json_parse(c->body, c->size, c->type, 8, &o, NULL, 0));
                        (void) json_object_put(o);
                        continue;
                }
                ASSERT_ERR(provider_json_parse(c->body, c->size, c->type, 8, &o, err, sizeof(err)), EBADMSG);
                ASSERT_TRUE(o == sentinel);
                assert_message(err, c->error);
                ASSERT_ERR(provider_json_parse(c->body, c->size, c->type, 8, &o, NULL, 0), EBADMSG);
                ASSERT_TRUE(o == sentinel);
        }

        /* The limit is the caller's. */
        json_object *o = NULL;
        char err[128];
        ASSERT_ERR(provider_json_parse(BODY_ARGS("[[[1]]]"), json_type_array, 2, &o, err, sizeof(err)),
                   EBADMSG);
        ASSERT_OK(provider_json_parse(BODY_ARGS("[[[1]]]"), json_type_array, 8, &o, err, sizeof(err)));
        (void) json_object_put(o);
        ASSERT_ERR(provider_json_parse(NULL, 0, json_type_object, 8, &o, err, sizeof(err)), EBADMSG);
        ASSERT_STREQ(err, "empty body");
}

typedef enum GetKind {
        GET_MEMBER,
        GET_STRING,
        GET_INT64,
        GET_ARRAY,
} GetKind;

typedef struct GetCase {
        GetKind kind;
        const char *prefix;
        const char *key;
        unsigned flags;
        int64_t min;
        int r;             /* 1 present, 0 absent, -EBADMSG */
        const char *value; /* GET_STRING: the string; GET_MEMBER, GET_ARRAY: its JSON; else the message */
        int64_t number;    /* GET_INT64 */
} GetCase;

#define OPT PROVIDER_JSON_OPTIONAL
#define NIA PROVIDER_JSON_NULL_IS_ABSENT

static const GetCase get_cases[] = {
        { GET_STRING, NULL, "s", 0, 0, 1, "x" },
        { GET_STRING, "", "s", OPT | NIA, 0, 1, "x" },
        { GET_STRING, NULL, "empty", 0, 0, 1, "" },
        { GET_STRING, NULL, "missing", 0, 0, -EBADMSG, "missing \"missing\"" },
        { GET_STRING, "event 2: ", "missing", NIA, 0, -EBADMSG, "event 2: missing \"missing\"" },
        { GET_STRING, NULL, "missing", OPT, 0, 0, NULL },
        { GET_STRING, NULL, "missing", OPT | NIA, 0, 0, NULL },
        /* null: an error of its own, unless it counts as absent. */
        { GET_STRING, NULL, "n", 0, 0, -EBADMSG, "\"n\" is null" },
        { GET_STRING, NULL, "n", OPT, 0, -EBADMSG, "\"n\" is null" },
        { GET_STRING, "event 0: ", "n", NIA, 0, -EBADMSG, "event 0: missing \"n\"" },
        { GET_STRING, NULL, "n", OPT | NIA, 0, 0, NULL },
        { GET_STRING, NULL, "i", 0, 0, -EBADMSG, "\"i\" is not a string" },
        { GET_STRING, "event 2: ", "a", OPT, 0, -EBADMSG, "event 2: \"a\" is not a string" },
        { GET_STRING, NULL, "t", 0, 0, -EBADMSG, "\"t\" is not a string" },
        { GET_STRING, NULL, "nul", 0, 0, -EBADMSG, "NUL in \"nul\"" },
        { GET_STRING, "event 7: ", "nul", OPT, 0, -EBADMSG, "NUL in event 7: \"nul\"" },
        { GET_INT64, NULL, "i", 0, 0, 1, NULL, 5 },
        { GET_INT64, NULL, "zero", 0, 0, 1, NULL, 0 },
        { GET_INT64, NULL, "neg", 0, -2, 1, NULL, -2 },
        { GET_INT64, NULL, "neg", 0, -1, -EBADMSG, "invalid \"neg\"" },
        { GET_INT64, "event 1: ", "neg", OPT, 0, -EBADMSG, "event 1: invalid \"neg\"" },
        { GET_INT64, NULL, "min", 0, INT64_MIN, 1, NULL, INT64_MIN },
        { GET_INT64, NULL, "s", 0, 0, -EBADMSG, "\"s\" is not an integer" },
        { GET_INT64, "event 3: ", "f", 0, 0, -EBADMSG, "event 3: \"f\" is not an integer" },
        { GET_INT64, NULL, "t", 0, 0, -EBADMSG, "\"t\" is not an integer" },
        { GET_INT64, NULL, "n", NIA, 0, -EBADMSG, "missing \"n\"" },
        { GET_INT64, NULL, "n", OPT | NIA, 0, 0, NULL },
        { GET_INT64, NULL, "missing", OPT, 0, 0, NULL },
        { GET_ARRAY, NULL, "a", 0, 0, 1, "[1]" },
        { GET_ARRAY, NULL, "o", 0, 0, -EBADMSG, "\"o\" is not an array" },
        { GET_ARRAY, "event 4: ", "s", 0, 0, -EBADMSG, "event 4: \"s\" is not an array" },
        { GET_ARRAY, NULL, "missing", 0, 0, -EBADMSG, "missing \"missing\"" },
        { GET_ARRAY, NULL, "missing", OPT, 0, 0, NULL },
        { GET_MEMBER, NULL, "o", 0, 0, 1, "{}" },
        { GET_MEMBER, NULL, "i", OPT, 0, 1, "5" },
        { GET_MEMBER, NULL, "n", 0, 0, -EBADMSG, "\"n\" is null" },
        { GET_MEMBER, NULL, "missing", 0, 0, -EBADMSG, "missing \"missing\"" },
};

static void test_json_get(void) {
        static const char doc[] = "{\"s\": \"x\", \"empty\": \"\", \"n\": null, \"i\": 5, \"zero\": 0, "
                                  "\"neg\": -2, \"min\": -9223372036854775808, \"f\": 1.5, \"t\": true, "
                                  "\"a\": [1], \"o\": {}, \"nul\": \"a\\u0000b\"}";
        _cleanup_(json_object_putp) json_object *o = NULL;
        char err[128];

        ASSERT_OK(provider_json_parse(doc, sizeof(doc) - 1, json_type_object, 8, &o, err, sizeof(err)));

        for (size_t i = 0; i < ELEMENTSOF(get_cases); i++) {
                const GetCase *c = &get_cases[i];
                json_object *v = UNWRITTEN;
                const char *s = "untouched";
                size_t len = 4242;
                int64_t x = 4242;
                int r = 0;

                fprintf(stderr, "  case %zu: \"%s\"\n", i, c->key);
                err[0] = 0;
                switch (c->kind) {
                case GET_MEMBER:
                        r = provider_json_get_member(o, c->prefix, c->key, c->flags, &v, err, sizeof(err));
                        break;
                case GET_STRING:
                        r = provider_json_get_string(o, c->prefix, c->key, c->flags, &s, &len, err,
                                                     sizeof(err));
                        break;
                case GET_INT64:
                        r = provider_json_get_int64(o, c->prefix, c->key, c->flags, c->min, &x, err,
                                                    sizeof(err));
                        break;
                case GET_ARRAY:
                        r = provider_json_get_array(o, c->prefix, c->key, c->flags, &v, err, sizeof(err));
                        break;
                }
                ASSERT_EQ(r, c->r);
                if (r < 0) {
                        ASSERT_STREQ(err, c->value);
                        ASSERT_STREQ(s, "untouched");
                        ASSERT_EQ(x, 4242);
                        continue;
                }
                ASSERT_STREQ(err, "");
                if (r == 0) {
                        /* Absent: nothing written. */
                        ASSERT_TRUE(v == UNWRITTEN);
                        ASSERT_STREQ(s, "untouched");
                        ASSERT_EQ(len, 4242);
                        ASSERT_EQ(x, 4242);
                        continue;
                }
                switch (c->kind) {
                case GET_STRING:
                        ASSERT_STREQ(s, c->value);
                        ASSERT_EQ(len, strlen(c->value));
                        break;
                case GET_INT64:
                        ASSERT_EQ(x, c->number);
                        break;
                case GET_MEMBER:
                case GET_ARRAY:
                        ASSERT_STREQ(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN), c->value);
                        break;
                }
        }

        /* An array element. */
        json_object *a = NULL, *e;
        const char *s = "untouched";
        size_t len = 0;
        ASSERT_EQ(provider_json_get_array(o, NULL, "a", 0, &a, err, sizeof(err)), 1);
        e = json_object_array_get_idx(a, 0);
        ASSERT_ERR(provider_json_string_value(e, "a resource", &s, &len, err, sizeof(err)), EBADMSG);
        ASSERT_STREQ(err, "a resource is not a string");
        ASSERT_STREQ(s, "untouched");
        ASSERT_EQ(provider_json_get_member(o, NULL, "s", 0, &e, NULL, 0), 1);
        ASSERT_OK(provider_json_string_value(e, "x", &s, &len, NULL, 0));
        ASSERT_STREQ(s, "x");
        ASSERT_EQ(len, 1);
        /* No place for the message is fine. */
        ASSERT_ERR(provider_json_get_string(o, NULL, "i", 0, &s, &len, NULL, 0), EBADMSG);
}

/* ---- dates ----------------------------------------------------------------- */

static void test_date_time(void) {
        static const struct {
                const char *s;
                int64_t t;        /* -1: -EINVAL */
                const char *rest; /* where it stops */
        } cases[] = {
                { "21 Jan 2019 09:00:43", 1548061243, "" },
                { "21 Jan 2019 09:00:43 GMT", 1548061243, " GMT" },
                { "1 Feb 2019 00:00:00 GMT", 1548979200, " GMT" },
                { "01 Feb 2019 00:00:00", 1548979200, "" },
                { "19 Sep 2016 18:29:47 UTC", 1474309787, " UTC" },
                { "29 Feb 2024 12:00:00", 1709208000, "" },
                { "29 Feb 2000 23:59:59", 951868799, "" },
                { "27 Nov 2026 13:20:00Zjunk", 1795785600, "Zjunk" },
                { "1 Jan 1970 00:00:00", 0, "" },
                { "31 Dec 9999 23:59:59", INT64_C(253402300799), "" },
                { "", -1, NULL },
                { "21", -1, NULL },
                { "21 Jan", -1, NULL },
                { "21 Jan 2019", -1, NULL },
                { "21 Jan 2019 09:00", -1, NULL },
                { "21 Jan 2019 09:00:4", -1, NULL },
                { " 1 Feb 2019 00:00:00", -1, NULL },
                { "1  Feb 2019 00:00:00", -1, NULL },
                { "123 Jan 2019 00:00:00", -1, NULL },
                { "0 Jan 2019 00:00:00", -1, NULL },
                { "32 Jan 2019 00:00:00", -1, NULL },
                { "29 Feb 2023 00:00:00", -1, NULL },
                { "29 Feb 1900 00:00:00", -1, NULL },
                { "31 Apr 2020 00:00:00", -1, NULL },
                { "21 jan 2019 09:00:43", -1, NULL },
                { "21 January 2019 09:00:43", -1, NULL },
                { "21 Jan 1969 23:59:59", -1, NULL },
                { "21 Jan 19 09:00:43", -1, NULL },
                { "21 Jan 20190 09:00:43", -1, NULL },
                { "21 Jan 2019 24:00:00", -1, NULL },
                { "21 Jan 2019 23:60:00", -1, NULL },
                { "21 Jan 2019 23:59:60", -1, NULL },
                { "21 Jan 2019 9:00:43", -1, NULL },
                { "21-Jan-2019 09:00:43", -1, NULL },
                { "2019-01-21T09:00:43Z", -1, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                const char *p = cases[i].s;
                uint64_t usec = 4242;

                fprintf(stderr, "  '%s'\n", cases[i].s);
                if (cases[i].t < 0) {
                        ASSERT_ERR(provider_parse_date_time(&p, &usec), EINVAL);
                        ASSERT_TRUE(p == cases[i].s);
                        ASSERT_U64_EQ(usec, 4242);
                        continue;
                }
                ASSERT_OK(provider_parse_date_time(&p, &usec));
                ASSERT_U64_EQ(usec, (uint64_t) cases[i].t * USEC_PER_SEC);
                ASSERT_STREQ(p, cases[i].rest);
        }

        const char *p = NULL;
        uint64_t usec;
        ASSERT_ERR(provider_parse_date_time(&p, &usec), EINVAL);

        /* Every prefix of a good date is refused, and none is read past its end. */
        static const char good[] = "21 Jan 2019 09:00:43";
        for (size_t len = 0; len < sizeof(good) - 1; len++) {
                char *copy = strndup(good, len);

                ASSERT_TRUE(copy);
                p = copy;
                ASSERT_ERR(provider_parse_date_time(&p, &usec), EINVAL);
                free(copy);
        }
}

/* ---- requests ------------------------------------------------------------- */

static void test_request_words(void) {
        static const struct {
                int error;
                const char *word;
        } words[] = {
                { -ETIMEDOUT, "timed out" },
                { -ECONNREFUSED, "connection refused" },
                { -ECONNRESET, "connection reset" },
                { -EFBIG, "body over the cap" },
                { -EPROTO, "not an HTTP answer" },
                { -EHOSTUNREACH, "host unreachable" },
        };
        static const struct {
                long status;
                int error;
        } statuses[] = {
                { 401, -EACCES }, { 403, -EACCES }, { 429, -EBUSY }, { 404, -EIO },
                { 500, -EIO },    { 503, -EIO },    { 400, -EIO },   { 0, -EIO },
        };

        for (size_t i = 0; i < ELEMENTSOF(words); i++)
                ASSERT_STREQ(provider_transport_error_to_string(words[i].error), words[i].word);
        ASSERT_STREQ(provider_transport_error_to_string(-ENOMEM), strerror(ENOMEM));
        ASSERT_STREQ(provider_transport_error_to_string(-EIO), strerror(EIO));
        ASSERT_STREQ(provider_transport_error_to_string(ENOMEM), strerror(ENOMEM));

        for (size_t i = 0; i < ELEMENTSOF(statuses); i++)
                ASSERT_EQ(provider_http_status_to_errno(statuses[i].status), statuses[i].error);
}

static void test_count_poll(void) {
        Provider p = {};
        uint64_t before, after;

        before = provider_now_usec(CLOCK_REALTIME);
        provider_count_poll(&p, -EIO);
        after = provider_now_usec(CLOCK_REALTIME);
        ASSERT_U64_EQ(p.polls, 1);
        ASSERT_EQ(p.last_poll_error, -EIO);
        ASSERT_TRUE(p.last_poll_usec >= before && p.last_poll_usec <= after);
        provider_count_poll(&p, 0);
        ASSERT_U64_EQ(p.polls, 2);
        ASSERT_EQ(p.last_poll_error, 0);

        /* The clocks: wall clock in usec, monotonic never back. */
        ASSERT_TRUE(before / USEC_PER_SEC >= (uint64_t) time(NULL) - 1);
        before = provider_now_usec(CLOCK_MONOTONIC);
        after = provider_now_usec(CLOCK_MONOTONIC);
        ASSERT_TRUE(after >= before && before > 0);
}

static void on_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        unsigned *calls = userdata;

        (*calls)++;
}

static void test_request_renew(void) {
        const HttpRequestParams params = {
                .method = "GET",
                .url = "http://127.0.0.1:9/",
                .timeout_usec = USEC_PER_SEC,
        };
        uv_loop_t loop;
        Http *h = NULL;
        HttpRequest *r = NULL;
        unsigned calls = 0;

        ASSERT_EQ(uv_loop_init(&loop), 0);
        ASSERT_OK(http_new(&loop, &h));
        ASSERT_OK(http_request_new(h, "x", &r));

        /* Idle: kept. */
        HttpRequest *before = r;
        ASSERT_OK(provider_request_renew(h, "x", &r));
        ASSERT_TRUE(r == before);

        /* Cancelled but not yet called back: it would refuse to start, so it is replaced. */
        ASSERT_OK(http_request_start(r, &params, on_done, &calls));
        http_request_cancel(r);
        ASSERT_EQ(http_request_is_running(r), 1);
        ASSERT_ERR(http_request_start(r, &params, on_done, &calls), EBUSY);
        ASSERT_OK(provider_request_renew(h, "x", &r));
        ASSERT_TRUE(r != NULL);
        ASSERT_EQ(http_request_is_running(r), 0);

        r = http_request_free(r);
        http_close(h);
        ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
        ASSERT_EQ(calls, 0);
        ASSERT_EQ(uv_loop_close(&loop), 0);
}

/* ---- timers ----------------------------------------------------------------- */

typedef struct TimerRun {
        unsigned fired;
        void *owner_seen;
} TimerRun;

static TimerRun timer_run;

static void on_timer(uv_timer_t *t) {
        timer_run.fired++;
        timer_run.owner_seen = provider_timer_owner(t);
}

static void test_timer(void) {
        uv_loop_t loop;
        ProviderTimer *t = NULL, *u = NULL;
        int owner;

        ASSERT_EQ(uv_loop_init(&loop), 0);

        ASSERT_OK(provider_timer_new(&loop, &owner, &t));
        ASSERT_TRUE(provider_timer_owner(&t->handle) == &owner);
        ASSERT_EQ(uv_timer_start(&t->handle, on_timer, provider_timeout_ms(1), 0), 0);
        ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
        ASSERT_EQ(timer_run.fired, 1);
        ASSERT_TRUE(timer_run.owner_seen == &owner);

        /* Closed while armed: it never fires, and the block frees itself with the handle. */
        ASSERT_OK(provider_timer_new(&loop, &owner, &u));
        ASSERT_EQ(uv_timer_start(&u->handle, on_timer, 10000, 0), 0);
        ASSERT_TRUE(provider_timer_close(u) == NULL);
        ASSERT_TRUE(provider_timer_close(t) == NULL);
        ASSERT_TRUE(provider_timer_close(NULL) == NULL);
        ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
        ASSERT_EQ(timer_run.fired, 1);
        ASSERT_EQ(uv_loop_close(&loop), 0);
}

int main(void) {
        RUN(test_backoff);
        RUN(test_timeout_and_interval);
        RUN(test_text);
        RUN(test_parse_word);
        RUN(test_quote);
        RUN(test_set_error);
        RUN(test_json_parse);
        RUN(test_json_get);
        RUN(test_date_time);
        RUN(test_request_words);
        RUN(test_count_poll);
        RUN(test_request_renew);
        RUN(test_timer);
        return 0;
}
