/* SPDX-License-Identifier: MIT */
/*
 * test-provider-azure.c - tables of scheduledevents documents, RFC 1123 times,
 * VM names and StartRequests bodies through the Azure provider's pure
 * parsers, the event-to-notice mapping and the backoff arithmetic; then the
 * provider against the daemon's own fake (fake-azure.c) on one loop on
 * loopback: a notice, its acknowledgement and a cancellation.
 */
#include <errno.h>
#include <string.h>

#include "config.h"
#include "fake-server.h"
#include "http.h"
#include "provider-azure.h"
#include "provider.h"
#include "shared/macro.h"
#include "tests-provider.h"
#include "tests.h"

#define T_EXAMPLE UINT64_C(1474309787) /* Mon, 19 Sep 2016 18:29:47 GMT */
#define T_FLATCAR UINT64_C(1626929417) /* Thu, 22 Jul 2021 04:50:17 GMT */


#define EVENT(id, type, resources, extra)                                                          \
        "{\"EventId\": \"" id "\", \"EventStatus\": \"Scheduled\", \"EventType\": \"" type "\", " \
        "\"ResourceType\": \"VirtualMachine\", \"Resources\": [" resources "], " extra "}"

/* ---- documents -------------------------------------------------------- */

typedef struct GoodDoc {
        const char *name;
        const char *body;
        size_t size;
        const char *vm;
        uint64_t incarnation;
        size_t n_entries;
        size_t n_events;
        /* the first kept event, when n_events > 0 */
        const char *event_id;
        AzureEventType type;
        const char *event_type;
        AzureEventStatus status;
        uint64_t not_before;
        int64_t duration;
        const char *source;
} GoodDoc;

static const GoodDoc good_docs[] = {
        { "Azure's example", BODY("{\"DocumentIncarnation\": 2, \"Events\": [{"
                                  "\"EventId\": \"4CAEA225-A741-474D-A72E-428C86FCD853\", "
                                  "\"EventStatus\": \"Scheduled\", \"EventType\": \"Reboot\", "
                                  "\"ResourceType\": \"VirtualMachine\", \"Resources\": [\"flatcar-vm1\"], "
                                  "\"NotBefore\": \"Thu, 22 Jul 2021 04:50:17 GMT\", \"Description\": \"\", "
                                  "\"EventSource\": \"User\", \"DurationInSeconds\": -1}]}"),
          "flatcar-vm1", 2, 1, 1, "4CAEA225-A741-474D-A72E-428C86FCD853", AZURE_EVENT_REBOOT, "Reboot",
          AZURE_EVENT_STATUS_SCHEDULED, T_FLATCAR * USEC_PER_SEC, -1, "User" },
        { "no events", BODY("{\"DocumentIncarnation\": 0, \"Events\": []}"), "vm", 0, 0, 0 },
        { "no events, whitespace", BODY("\n {\"Events\":[],\"DocumentIncarnation\":17}\r\n"), "vm", 17, 0, 0 },
        { "another VM's event", BODY("{\"DocumentIncarnation\": 3, \"Events\": ["
                                     EVENT("A", "Preempt", "\"other-vm\"", "\"NotBefore\": \"\"") "]}"),
          "my-vm", 3, 1, 0 },
        { "a name that only starts like ours", BODY("{\"DocumentIncarnation\": 3, \"Events\": ["
                                                    EVENT("A", "Preempt", "\"my-vm2\", \"my-v\"", "\"NotBefore\": \"\"")
                                                    "]}"),
          "my-vm", 3, 1, 0 },
        { "ours among others, case-insensitively",
          BODY("{\"DocumentIncarnation\": 9, \"Events\": ["
               EVENT("B1", "Freeze", "\"vm-a\", \"vm-b\"", "\"NotBefore\": \"Mon, 19 Sep 2016 18:29:47 GMT\"") ", "
               EVENT("B2", "Preempt", "\"vm-a\", \"My-VM\"",
                     "\"NotBefore\": \"Mon, 19 Sep 2016 18:29:47 GMT\", \"DurationInSeconds\": 0, "
                     "\"EventSource\": \"Platform\"") "]}"),
          "my-vm", 9, 2, 1, "B2", AZURE_EVENT_PREEMPT, "Preempt", AZURE_EVENT_STATUS_SCHEDULED,
          T_EXAMPLE * USEC_PER_SEC, 0, "Platform" },
        { "started, NotBefore empty",
          BODY("{\"DocumentIncarnation\": 4, \"Events\": [{\"EventId\": \"C\", \"EventStatus\": \"Started\", "
               "\"EventType\": \"Terminate\", \"Resources\": [\"vm\"], \"NotBefore\": \"\"}]}"),
          "vm", 4, 1, 1, "C", AZURE_EVENT_TERMINATE, "Terminate", AZURE_EVENT_STATUS_STARTED, 0, -1, "" },
        { "only the required members",
          BODY("{\"DocumentIncarnation\": 5, \"Events\": [{\"EventId\": \"D\", \"EventType\": \"Redeploy\", "
               "\"Resources\": [\"vm\"]}]}"),
          "vm", 5, 1, 1, "D", AZURE_EVENT_REDEPLOY, "Redeploy", AZURE_EVENT_STATUS_OTHER, 0, -1, "" },
        { "null optional members, unknown members",
          BODY("{\"DocumentIncarnation\": 5, \"x\": {\"y\": [1, 2]}, \"Events\": [{\"EventId\": \"E\", "
               "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"], \"NotBefore\": null, \"Description\": null, "
               "\"EventSource\": null, \"EventStatus\": null, \"DurationInSeconds\": null, \"Future\": [{}]}]}"),
          "vm", 5, 1, 1, "E", AZURE_EVENT_PREEMPT, "Preempt", AZURE_EVENT_STATUS_OTHER, 0, -1, "" },
        { "unknown EventType and EventStatus are kept",
          BODY("{\"DocumentIncarnation\": 6, \"Events\": [{\"EventId\": \"F\", \"EventType\": \"LiveMigration\", "
               "\"EventStatus\": \"Pending\", \"Resources\": [\"vm\"], \"NotBefore\": \"\"}]}"),
          "vm", 6, 1, 1, "F", _AZURE_EVENT_TYPE_INVALID, "LiveMigration", AZURE_EVENT_STATUS_OTHER, 0, -1, "" },
        { "EventType is case-sensitive",
          BODY("{\"DocumentIncarnation\": 6, \"Events\": [{\"EventId\": \"G\", \"EventType\": \"preempt\", "
               "\"Resources\": [\"vm\"]}]}"),
          "vm", 6, 1, 1, "G", _AZURE_EVENT_TYPE_INVALID, "preempt", AZURE_EVENT_STATUS_OTHER, 0, -1, "" },
        { "a name is not checked without one",
          BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("H", "Preempt", "\"vm\"", "\"NotBefore\": \"\"")
               "]}"),
          NULL, 1, 1, 0 },
        { "the same member twice: the last counts",
          BODY("{\"DocumentIncarnation\": 1, \"DocumentIncarnation\": 8, \"Events\": []}"), "vm", 8, 0, 0 },
        { "a big incarnation", BODY("{\"DocumentIncarnation\": 9007199254740993, \"Events\": []}"), "vm",
          UINT64_C(9007199254740993), 0, 0 },
};

typedef struct BadDoc {
        const char *name;
        const char *body;
        size_t size;
} BadDoc;

static const BadDoc bad_docs[] = {
        { "empty", BODY("") },
        { "space", BODY(" \n") },
        { "garbage", BODY("<html><body>Bad Gateway</body></html>") },
        { "IMDS error", BODY("{\"error\": \"Bad request. Required metadata header not specified\"}") },
        { "null", BODY("null") },
        { "array", BODY("[]") },
        { "string", BODY("\"Events\"") },
        { "no incarnation", BODY("{\"Events\": []}") },
        { "no events", BODY("{\"DocumentIncarnation\": 1}") },
        { "incarnation string", BODY("{\"DocumentIncarnation\": \"1\", \"Events\": []}") },
        { "incarnation float", BODY("{\"DocumentIncarnation\": 1.5, \"Events\": []}") },
        { "incarnation negative", BODY("{\"DocumentIncarnation\": -1, \"Events\": []}") },
        { "incarnation null", BODY("{\"DocumentIncarnation\": null, \"Events\": []}") },
        { "incarnation huge", BODY("{\"DocumentIncarnation\": 1e999, \"Events\": []}") },
        { "events object", BODY("{\"DocumentIncarnation\": 1, \"Events\": {}}") },
        { "events null", BODY("{\"DocumentIncarnation\": 1, \"Events\": null}") },
        { "events string", BODY("{\"DocumentIncarnation\": 1, \"Events\": \"none\"}") },
        { "event not an object", BODY("{\"DocumentIncarnation\": 1, \"Events\": [1]}") },
        { "event null", BODY("{\"DocumentIncarnation\": 1, \"Events\": [null]}") },
        { "event empty", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{}]}") },
        { "no EventId", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventType\": \"Preempt\", "
                             "\"Resources\": [\"vm\"]}]}") },
        { "EventId number", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": 5, "
                                 "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"]}]}") },
        { "EventId empty", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"\", "
                                "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"]}]}") },
        { "EventId with a space", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"a b\", "
                                       "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"]}]}") },
        { "EventId with a newline", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"a\\nb\", "
                                         "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"]}]}") },
        { "EventId escaped NUL", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"a\\u0000b\", "
                                      "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"]}]}") },
        { "EventId too long", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": "
                                   "\"0123456789012345678901234567890123456789012345678901234567890123X\", "
                                   "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"]}]}") },
        { "no EventType", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                               "\"Resources\": [\"vm\"]}]}") },
        { "EventType array", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                                  "\"EventType\": [\"Preempt\"], \"Resources\": [\"vm\"]}]}") },
        { "no Resources", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                               "\"EventType\": \"Preempt\"}]}") },
        { "Resources string", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                                   "\"EventType\": \"Preempt\", \"Resources\": \"vm\"}]}") },
        { "Resources null", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                                 "\"EventType\": \"Preempt\", \"Resources\": null}]}") },
        { "a resource number", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                                    "\"EventType\": \"Preempt\", \"Resources\": [\"vm\", 5]}]}") },
        { "a resource with NUL", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                                      "\"EventType\": \"Preempt\", \"Resources\": [\"vm\\u0000x\"]}]}") },
        { "NotBefore number", BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("A", "Preempt", "\"vm\"",
                                                                                      "\"NotBefore\": 1474309787")
                                   "]}") },
        { "NotBefore RFC 3339", BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("A", "Preempt", "\"vm\"",
                                                                                        "\"NotBefore\": "
                                                                                        "\"2016-09-19T18:29:47Z\"")
                                     "]}") },
        { "NotBefore words", BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("A", "Preempt", "\"vm\"",
                                                                                     "\"NotBefore\": \"soon\"")
                                  "]}") },
        { "NotBefore Feb 30", BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("A", "Preempt", "\"vm\"",
                                                                                      "\"NotBefore\": \"Mon, 30 "
                                                                                      "Feb 2026 10:00:00 GMT\"")
                                   "]}") },
        { "bad NotBefore on another VM's event too",
          BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("A", "Preempt", "\"other\"", "\"NotBefore\": \"x\"")
               "]}") },
        { "Description number", BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("A", "Preempt", "\"vm\"",
                                                                                        "\"Description\": 5")
                                     "]}") },
        { "EventStatus object", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                                     "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"], \"EventStatus\": {}}]}") },
        { "EventSource bool", BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("A", "Preempt", "\"vm\"",
                                                                                      "\"EventSource\": true")
                                   "]}") },
        { "ResourceType number", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", "
                                      "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"], \"ResourceType\": 1}]}") },
        { "DurationInSeconds string", BODY("{\"DocumentIncarnation\": 1, \"Events\": ["
                                           EVENT("A", "Preempt", "\"vm\"", "\"DurationInSeconds\": \"9\"") "]}") },
        { "DurationInSeconds float", BODY("{\"DocumentIncarnation\": 1, \"Events\": ["
                                          EVENT("A", "Preempt", "\"vm\"", "\"DurationInSeconds\": 9.5") "]}") },
        { "DurationInSeconds -2", BODY("{\"DocumentIncarnation\": 1, \"Events\": ["
                                       EVENT("A", "Preempt", "\"vm\"", "\"DurationInSeconds\": -2") "]}") },
        { "NUL in body", BODY("{\"DocumentIncarnation\": 1, \"Events\": []}\0garbage") },
        { "NUL first", BODY("\0{\"DocumentIncarnation\": 1, \"Events\": []}") },
        { "truncated", BODY("{\"DocumentIncarnation\": 1, \"Events\": [") },
        { "trailing garbage", BODY("{\"DocumentIncarnation\": 1, \"Events\": []} x") },
        { "two objects", BODY("{\"DocumentIncarnation\": 1, \"Events\": []}{}") },
        { "trailing comma", BODY("{\"DocumentIncarnation\": 1, \"Events\": [],}") },
        /* json-c takes single-quoted keys even in strict mode, but not single-quoted values. */
        { "single-quoted value", BODY("{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": 'A', "
                                      "\"EventType\": \"Preempt\", \"Resources\": [\"vm\"]}]}") },
        { "bad UTF-8", BODY("{\"DocumentIncarnation\": 1, \"Events\": [], \"x\": \"\xff\"}") },
        { "deep member", BODY("{\"DocumentIncarnation\": 1, \"Events\": [], \"x\": [[[[[[[[[[[[1]]]]]]]]]]]]}") },
        { "deep inside an event",
          BODY("{\"DocumentIncarnation\": 1, \"Events\": [" EVENT("A", "Preempt", "\"vm\"", "\"x\": [[[[[[1]]]]]]")
               "]}") },
};

static void test_document_good(void) {
        for (size_t i = 0; i < ELEMENTSOF(good_docs); i++) {
                const GoodDoc *c = &good_docs[i];
                AzureDocument doc;

                fprintf(stderr, "  good: %s\n", c->name);
                memset(&doc, 0xA5, sizeof(doc));
                ASSERT_OK(azure_parse_document(c->body, c->size, c->vm, &doc));
                ASSERT_U64_EQ(doc.incarnation, c->incarnation);
                ASSERT_EQ(doc.n_entries, c->n_entries);
                ASSERT_EQ(doc.n_events, c->n_events);
                ASSERT_EQ(doc.n_dropped, 0);
                if (c->n_events == 0)
                        continue;
                ASSERT_STREQ(doc.events[0].event_id, c->event_id);
                ASSERT_EQ(doc.events[0].type, c->type);
                ASSERT_STREQ(doc.events[0].event_type, c->event_type);
                ASSERT_EQ(doc.events[0].status, c->status);
                ASSERT_U64_EQ(doc.events[0].not_before_usec, c->not_before);
                ASSERT_EQ(doc.events[0].duration_sec, c->duration);
                ASSERT_STREQ(doc.events[0].event_source, c->source);
        }
}

static void test_document_bad(void) {
        AzureDocument doc;

        for (size_t i = 0; i < ELEMENTSOF(bad_docs); i++) {
                const BadDoc *c = &bad_docs[i];

                fprintf(stderr, "  bad: %s\n", c->name);
                memset(&doc, 0xA5, sizeof(doc));
                ASSERT_ERR(azure_parse_document(c->body, c->size, "vm", &doc), EBADMSG);
                assert_untouched(&doc, sizeof(doc));
                /* Without a name the document is checked all the same. */
                ASSERT_ERR(azure_parse_document(c->body, c->size, NULL, &doc), EBADMSG);
                assert_untouched(&doc, sizeof(doc));
        }
        memset(&doc, 0xA5, sizeof(doc));
        ASSERT_ERR(azure_parse_document(NULL, 0, "vm", &doc), EBADMSG);
        ASSERT_ERR(azure_parse_document("{\"DocumentIncarnation\": 1, \"Events\": []}", 0, "vm", &doc),
                   EBADMSG);
        assert_untouched(&doc, sizeof(doc));
}

/* Append to a growing buffer; the tests own the memory. */
static size_t put(char *b, size_t n, const char *s) {
        size_t l = strlen(s);

        memcpy(b + n, s, l);
        return n + l;
}

static void test_document_generated(void) {
        const size_t cap = 4 << 20;
        AzureDocument doc;
        char *b, item[256];
        size_t n;

        b = malloc(cap);
        ASSERT_TRUE(b);

        /* AZURE_DOC_ENTRIES_MAX events for other VMs are fine; one more is refused. */
        for (int extra = 0; extra <= 1; extra++) {
                n = put(b, 0, "{\"DocumentIncarnation\": 7, \"Events\": [");
                for (int i = 0; i < AZURE_DOC_ENTRIES_MAX + extra; i++) {
                        (void) snprintf(item, sizeof(item),
                                        "%s" EVENT("E%d", "Freeze", "\"other-%d\"", "\"NotBefore\": \"\""),
                                        i ? ", " : "", i, i);
                        n = put(b, n, item);
                }
                n = put(b, n, "]}");
                memset(&doc, 0xA5, sizeof(doc));
                if (extra) {
                        ASSERT_ERR(azure_parse_document(b, n, "vm", &doc), EBADMSG);
                        assert_untouched(&doc, sizeof(doc));
                } else {
                        ASSERT_OK(azure_parse_document(b, n, "vm", &doc));
                        ASSERT_EQ(doc.n_entries, AZURE_DOC_ENTRIES_MAX);
                        ASSERT_EQ(doc.n_events, 0);
                }
        }

        /* 40 events of ours: the first AZURE_EVENTS_MAX are kept, in order, the rest counted. */
        n = put(b, 0, "{\"DocumentIncarnation\": 8, \"Events\": [");
        for (int i = 0; i < 40; i++) {
                (void) snprintf(item, sizeof(item),
                                "%s" EVENT("P%d", "Preempt", "\"vm\"", "\"NotBefore\": \"\""), i ? ", " : "", i);
                n = put(b, n, item);
        }
        n = put(b, n, "]}");
        ASSERT_OK(azure_parse_document(b, n, "vm", &doc));
        ASSERT_EQ(doc.n_entries, 40);
        ASSERT_EQ(doc.n_events, AZURE_EVENTS_MAX);
        ASSERT_EQ(doc.n_dropped, 40 - AZURE_EVENTS_MAX);
        ASSERT_STREQ(doc.events[0].event_id, "P0");
        ASSERT_STREQ(doc.events[AZURE_EVENTS_MAX - 1].event_id, "P15");

        /* One event listing 100,000 VMs, ours last. */
        n = put(b, 0, "{\"DocumentIncarnation\": 9, \"Events\": [{\"EventId\": \"X\", "
                      "\"EventType\": \"Reboot\", \"Resources\": [");
        for (int i = 0; i < 100000; i++) {
                (void) snprintf(item, sizeof(item), "\"vm-%d\", ", i);
                n = put(b, n, item);
        }
        n = put(b, n, "\"VM\"]}]}");
        ASSERT_OK(azure_parse_document(b, n, "vm", &doc));
        ASSERT_EQ(doc.n_events, 1);
        ASSERT_EQ(doc.events[0].type, AZURE_EVENT_REBOOT);

        /* 100-deep nesting as arrays and as objects, and 100,000 unclosed brackets. */
        n = 0;
        for (int i = 0; i < 100; i++)
                b[n++] = '[';
        for (int i = 0; i < 100; i++)
                b[n++] = ']';
        ASSERT_ERR(azure_parse_document(b, n, "vm", &doc), EBADMSG);
        n = put(b, 0, "{\"DocumentIncarnation\": 1, \"Events\": [], \"x\": ");
        for (int i = 0; i < 100; i++)
                n = put(b, n, "{\"a\":");
        n = put(b, n, "1");
        for (int i = 0; i < 101; i++)
                b[n++] = '}';
        ASSERT_ERR(azure_parse_document(b, n, "vm", &doc), EBADMSG);
        memset(b, '[', 100000);
        ASSERT_ERR(azure_parse_document(b, 100000, "vm", &doc), EBADMSG);

        /* A 1 MiB EventId and a 1 MiB EventType (kept cut, as it is only logged). */
        n = put(b, 0, "{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"");
        memset(b + n, 'x', 1 << 20);
        n += 1 << 20;
        n = put(b, n, "\", \"EventType\": \"Preempt\", \"Resources\": [\"vm\"]}]}");
        ASSERT_ERR(azure_parse_document(b, n, "vm", &doc), EBADMSG);
        n = put(b, 0, "{\"DocumentIncarnation\": 1, \"Events\": [{\"EventId\": \"A\", \"EventType\": \"");
        memset(b + n, 'T', 1 << 20);
        n += 1 << 20;
        n = put(b, n, "\", \"Resources\": [\"vm\"]}]}");
        ASSERT_OK(azure_parse_document(b, n, "vm", &doc));
        ASSERT_EQ(doc.n_events, 1);
        ASSERT_EQ(doc.events[0].type, _AZURE_EVENT_TYPE_INVALID);
        ASSERT_EQ(strlen(doc.events[0].event_type), sizeof(doc.events[0].event_type) - 1);

        free(b);
}

/* ---- RFC 1123 --------------------------------------------------------- */

static void test_rfc1123(void) {
        static const struct {
                const char *s;
                uint64_t sec;
        } good[] = {
                { "Mon, 19 Sep 2016 18:29:47 GMT", T_EXAMPLE },
                { "Thu, 22 Jul 2021 04:50:17 GMT", T_FLATCAR },
                { "Thu, 01 Jan 1970 00:00:00 GMT", 0 },
                { "Sat, 01 Jan 2000 00:00:00 GMT", UINT64_C(946684800) },
                { "Thu, 29 Feb 2024 00:00:00 GMT", UINT64_C(1709164800) },
                { "Mon, 09 Sep 2024 07:05:03 GMT", UINT64_C(1725865503) },
                { "Mon, 9 Sep 2024 07:05:03 GMT", UINT64_C(1725865503) },
                { "Mon, 09 Sep 2024 07:05:03 UTC", UINT64_C(1725865503) },
                /* The weekday is not checked against the date (2100-03-01 is a Monday). */
                { "Sun, 01 Mar 2100 12:00:00 GMT", UINT64_C(4107585600) },
                { "Fri, 31 Dec 9999 23:59:59 GMT", UINT64_C(253402300799) },
        };
        static const char *const bad[] = {
                "",
                "M",
                "Mon",
                "Mon,",
                "Mon, ",
                "Mon, 1",
                "Mon, 19 Sep",
                "Mon, 19 Sep 2016",
                "Mon, 19 Sep 2016 18:29",
                "Mon, 19 Sep 2016 18:29:47",
                "Mon, 19 Sep 2016 18:29:47 ",
                "Mon, 19 Sep 2016 18:29:47 GM",
                "Mon, 19 Sep 2016 18:29:47 GMTx",
                "Mon, 19 Sep 2016 18:29:47 GMT ",
                "Mon, 19 Sep 2016 18:29:47 +0000",
                "Mon, 19 Sep 2016 18:29:47 PST",
                " Mon, 19 Sep 2016 18:29:47 GMT",
                "mon, 19 Sep 2016 18:29:47 GMT",
                "Monday, 19 Sep 2016 18:29:47 GMT",
                "Mon 19 Sep 2016 18:29:47 GMT",
                "Mon,19 Sep 2016 18:29:47 GMT",
                "Mon, 19 sep 2016 18:29:47 GMT",
                "Mon, 19 Sept 2016 18:29:47 GMT",
                "Mon, 19-Sep-2016 18:29:47 GMT",
                "Mon, 019 Sep 2016 18:29:47 GMT",
                "Mon, 19 Sep 16 18:29:47 GMT",
                "Mon, 19 Sep 20166 18:29:47 GMT",
                "Mon, 00 Sep 2016 18:29:47 GMT",
                "Mon, 31 Sep 2016 18:29:47 GMT",
                "Mon, 29 Feb 2023 18:29:47 GMT",
                "Mon, 29 Feb 2100 18:29:47 GMT",
                "Mon, 19 Sep 1969 18:29:47 GMT",
                "Mon, 19 Sep 2016 24:00:00 GMT",
                "Mon, 19 Sep 2016 18:60:00 GMT",
                "Mon, 19 Sep 2016 18:29:60 GMT",
                "Mon, 19 Sep 2016 8:29:47 GMT",
                "Mon, 19 Sep 2016 18:29:4 GMT",
                "Mon, 19 Sep 2016 18:29:47.5 GMT",
                "Mon, 19 Sep 2016 18.29.47 GMT",
                "2016-09-19T18:29:47Z",
                "Monday, 19-Sep-16 18:29:47 GMT",
                "Mon Sep 19 18:29:47 2016",
        };
        uint64_t usec;

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                fprintf(stderr, "  good: %s\n", good[i].s);
                usec = 1;
                ASSERT_OK(azure_parse_rfc1123(good[i].s, &usec));
                ASSERT_U64_EQ(usec, good[i].sec * USEC_PER_SEC);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                fprintf(stderr, "  bad: '%s'\n", bad[i]);
                usec = 42;
                ASSERT_ERR(azure_parse_rfc1123(bad[i], &usec), EINVAL);
                ASSERT_U64_EQ(usec, 42);
        }
        ASSERT_ERR(azure_parse_rfc1123(NULL, &usec), EINVAL);
}

/* ---- events to notices ------------------------------------------------ */

static void test_event_to_notice(void) {
        const uint64_t now = T_EXAMPLE * USEC_PER_SEC, later = now + 120 * USEC_PER_SEC;
        static const struct {
                AzureEventType type;
                EventKind kind;
                const char *detail;
        } kinds[] = {
                { AZURE_EVENT_PREEMPT, EVENT_PREEMPT, "Preempt" },
                { AZURE_EVENT_TERMINATE, EVENT_TERMINATE, "Terminate" },
                { AZURE_EVENT_REBOOT, EVENT_MAINTENANCE, "Reboot" },
                { AZURE_EVENT_REDEPLOY, EVENT_MAINTENANCE, "Redeploy" },
                { AZURE_EVENT_FREEZE, EVENT_MAINTENANCE, "Freeze" },
        };
        const struct {
                uint64_t not_before;
                uint64_t deadline;
        } deadlines[] = {
                { later, later },
                { now + 1, now + 1 },
                { 0, now + AZURE_MIN_NOTICE_USEC },      /* NotBefore "" */
                { now, now + AZURE_MIN_NOTICE_USEC },    /* due now */
                { now - 5 * USEC_PER_SEC, now + AZURE_MIN_NOTICE_USEC },
        };
        AzureEvent e = { .event_id = "4CAEA225-A741-474D-A72E-428C86FCD853" };
        NoticeEvent ev;

        for (size_t i = 0; i < ELEMENTSOF(kinds); i++)
                for (size_t j = 0; j < ELEMENTSOF(deadlines); j++) {
                        e.type = kinds[i].type;
                        e.not_before_usec = deadlines[j].not_before;
                        memset(&ev, 0xA5, sizeof(ev));
                        ASSERT_OK(azure_event_to_notice(&e, now, &ev));
                        ASSERT_EQ(ev.kind, kinds[i].kind);
                        ASSERT_EQ(ev.cloud, CLOUD_AZURE);
                        ASSERT_STREQ(ev.id, "azure:4CAEA225-A741-474D-A72E-428C86FCD853");
                        ASSERT_STREQ(ev.detail, kinds[i].detail);
                        ASSERT_U64_EQ(ev.notice_usec, 0);
                        ASSERT_U64_EQ(ev.deadline_usec, deadlines[j].deadline);
                }

        e.type = _AZURE_EVENT_TYPE_INVALID;
        memset(&ev, 0xA5, sizeof(ev));
        ASSERT_ERR(azure_event_to_notice(&e, now, &ev), EOPNOTSUPP);
        assert_untouched(&ev, sizeof(ev));
        e.type = _AZURE_EVENT_TYPE_MAX;
        ASSERT_ERR(azure_event_to_notice(&e, now, &ev), EOPNOTSUPP);

        ASSERT_STREQ(azure_event_id_from_notice("azure:ABC-1"), "ABC-1");
        ASSERT_TRUE(azure_event_id_from_notice("azure:") == NULL);
        ASSERT_TRUE(azure_event_id_from_notice("azure:a b") == NULL);
        ASSERT_TRUE(azure_event_id_from_notice("aws:spot:terminate:2026-11-27T13:20:00Z") == NULL);
        ASSERT_TRUE(azure_event_id_from_notice("manual:1") == NULL);
        ASSERT_TRUE(azure_event_id_from_notice("") == NULL);
        ASSERT_TRUE(azure_event_id_from_notice(NULL) == NULL);

        for (AzureEventType t = 0; t < _AZURE_EVENT_TYPE_MAX; t++)
                ASSERT_EQ(azure_event_type_from_string(azure_event_type_to_string(t)), t);
        ASSERT_EQ(azure_event_type_from_string("preempt"), _AZURE_EVENT_TYPE_INVALID);
        ASSERT_EQ(azure_event_type_from_string(NULL), _AZURE_EVENT_TYPE_INVALID);
        ASSERT_TRUE(azure_event_type_to_string(_AZURE_EVENT_TYPE_MAX) == NULL);
        ASSERT_STREQ(azure_event_status_to_string(AZURE_EVENT_STATUS_STARTED), "Started");
        ASSERT_TRUE(azure_event_status_to_string(_AZURE_EVENT_STATUS_INVALID) == NULL);
}

/* ---- VM name, ack body, backoff --------------------------------------- */

static void test_vm_name(void) {
        static const struct {
                const char *body;
                size_t size;
                const char *name;
        } cases[] = {
                { BODY("myvm"), "myvm" },
                { BODY("spotwatch-fake-vm\n"), "spotwatch-fake-vm" },
                { BODY("My_VM.01 \r\n"), "My_VM.01" },
                { BODY("0123456789012345678901234567890123456789012345678901234567890123456789012345678X"),
                  "0123456789012345678901234567890123456789012345678901234567890123456789012345678X" },
                { BODY(""), NULL },
                { BODY("\n"), NULL },
                { BODY("my vm"), NULL },
                { BODY(" myvm"), NULL },
                { BODY("my\0vm"), NULL },
                { BODY("myvm\x7f"), NULL },
                { BODY("m\xc3\xa9vm"), NULL },
                { BODY("0123456789012345678901234567890123456789012345678901234567890123456789012345678XY"), NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *name = (char *) "untouched";

                if (cases[i].name) {
                        ASSERT_OK(azure_parse_vm_name(cases[i].body, cases[i].size, &name));
                        ASSERT_STREQ(name, cases[i].name);
                        free(name);
                } else {
                        ASSERT_ERR(azure_parse_vm_name(cases[i].body, cases[i].size, &name), EBADMSG);
                        ASSERT_STREQ(name, "untouched");
                }
        }
}

static void test_ack_body(void) {
        static const struct {
                const char *id;
                const char *body;
        } good[] = {
                { "4CAEA225-A741-474D-A72E-428C86FCD853",
                  "{\"StartRequests\":[{\"EventId\":\"4CAEA225-A741-474D-A72E-428C86FCD853\"}]}" },
                { "x", "{\"StartRequests\":[{\"EventId\":\"x\"}]}" },
                /* Whatever the id holds is escaped by json-c, never pasted. */
                { "a\"b\\c/d", "{\"StartRequests\":[{\"EventId\":\"a\\\"b\\\\c/d\"}]}" },
        };
        static const char *const bad[] = {
                "", "a b", "a\nb", "\xc3\xa9", "0123456789012345678901234567890123456789012345678901234567890123X",
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                char *body = NULL;

                ASSERT_OK(azure_build_ack_body(good[i].id, &body));
                ASSERT_STREQ(body, good[i].body);
                free(body);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char *body = (char *) "untouched";

                ASSERT_ERR(azure_build_ack_body(bad[i], &body), EINVAL);
                ASSERT_STREQ(body, "untouched");
        }
        char *body = NULL;
        ASSERT_ERR(azure_build_ack_body(NULL, &body), EINVAL);
        ASSERT_TRUE(body == NULL);
}

static void test_backoff(void) {
        const uint64_t s = USEC_PER_SEC;

        ASSERT_U64_EQ(azure_backoff_usec(s, 1), 2 * s);
        ASSERT_U64_EQ(azure_backoff_usec(s, 2), 4 * s);
        ASSERT_U64_EQ(azure_backoff_usec(s, 3), 5 * s);
        ASSERT_U64_EQ(azure_backoff_usec(s, 64), 5 * s);
        ASSERT_U64_EQ(azure_backoff_usec(s, 1000), 5 * s);
        ASSERT_U64_EQ(azure_backoff_usec(100 * USEC_PER_MSEC, 1), 200 * USEC_PER_MSEC);
        ASSERT_U64_EQ(azure_backoff_usec(100 * USEC_PER_MSEC, 5), 3200 * USEC_PER_MSEC);
        ASSERT_U64_EQ(azure_backoff_usec(100 * USEC_PER_MSEC, 6), 5 * s);
        ASSERT_U64_EQ(azure_backoff_usec(60 * s, 1), 60 * s);
        ASSERT_U64_EQ(azure_backoff_usec(UINT64_MAX, 7), UINT64_MAX);
}

/* ---- the provider against the daemon's own fake ------------------------- */

typedef struct Loop {
        uv_loop_t loop;
        uv_timer_t guard;
        FakeServer *fake;
        Provider *p;
        unsigned polls, poll_errors, events, cancels, acks;
        int ack_error;
        NoticeEvent last_event, last_cancel, last_ack;
        bool timed_out;
} Loop;

static void on_event(Provider *p, const NoticeEvent *ev, void *userdata) {
        Loop *l = userdata;

        l->events++;
        l->last_event = *ev;
}

static void on_poll(Provider *p, int error, const char *what, const char *detail, void *userdata) {
        Loop *l = userdata;

        l->polls++;
        if (error < 0) {
                l->poll_errors++;
                fprintf(stderr, "  poll error: %s: %s\n", what, detail);
        }
}

static void on_cancel(Provider *p, const NoticeEvent *ev, void *userdata) {
        Loop *l = userdata;

        l->cancels++;
        l->last_cancel = *ev;
}

static void on_ack(Provider *p, const NoticeEvent *ev, int error, const char *detail, void *userdata) {
        Loop *l = userdata;

        l->acks++;
        l->ack_error = error;
        l->last_ack = *ev;
        fprintf(stderr, "  ack %s: %d %s\n", ev->id, error, detail);
}

static void on_guard(uv_timer_t *t) {
        Loop *l = container_of(t, Loop, guard);

        l->timed_out = true;
        uv_stop(&l->loop);
}

/* Run the loop until *@counter exceeds @before (or 10 s pass). */
static void run_until(Loop *l, const unsigned *counter, unsigned before) {
        ASSERT_EQ(uv_timer_start(&l->guard, on_guard, 10000, 0), 0);
        while (*counter <= before && !l->timed_out)
                (void) uv_run(&l->loop, UV_RUN_ONCE);
        ASSERT_FALSE(l->timed_out);
        (void) uv_timer_stop(&l->guard);
}

static void test_provider_loop(void) {
        static const ProviderCallbacks cb = {
                .on_event = on_event,
                .on_poll = on_poll,
                .on_cancel = on_cancel,
                .on_ack = on_ack,
        };
        _cleanup_(config_freep) Config *c = NULL;
        Loop l = {};
        Http *h = NULL;
        unsigned n;

        ASSERT_OK(config_new_default(&c));
        c->poll_interval_usec = 100 * USEC_PER_MSEC; /* the rate limit, not the interval, sets the pace */
        c->azure_ack = true;
        ASSERT_EQ(uv_loop_init(&l.loop), 0);
        ASSERT_EQ(uv_timer_init(&l.loop, &l.guard), 0);
        ASSERT_OK(http_new(&l.loop, &h));
        ASSERT_OK(fake_server_new(&l.loop, CLOUD_AZURE, "127.0.0.1", 0, &l.fake));
        ASSERT_STREQ(fake_server_events(l.fake), "preempt, terminate, reboot, redeploy, freeze");
        ASSERT_ERR(fake_server_set_notice(l.fake, "Preempt", 0), EINVAL);
        ASSERT_ERR(fake_server_set_notice(l.fake, "stop", 0), EINVAL);

        ASSERT_OK(provider_new(CLOUD_AZURE, &l.loop, h, c, fake_server_url(l.fake), &cb, &l, &l.p));
        ASSERT_TRUE(l.p->vtable == &provider_azure_vtable);
        ASSERT_OK(provider_start(l.p));

        /* A few clean polls; the vmId becomes the instance id. */
        run_until(&l, &l.polls, 3);
        ASSERT_EQ(l.poll_errors, 0);
        ASSERT_EQ(l.events, 0);
        ASSERT_STREQ(l.p->instance_id, fake_server_instance_id(l.fake));

        /* A Preempt: reported on every poll with the same id and the fake's NotBefore. */
        ASSERT_OK(fake_server_set_notice(l.fake, "preempt", (T_EXAMPLE + 1000000000) * USEC_PER_SEC));
        run_until(&l, &l.events, 0);
        ASSERT_EQ(l.last_event.kind, EVENT_PREEMPT);
        ASSERT_EQ(l.last_event.cloud, CLOUD_AZURE);
        ASSERT_STREQ(l.last_event.detail, "Preempt");
        ASSERT_U64_EQ(l.last_event.deadline_usec, (T_EXAMPLE + 1000000000) * USEC_PER_SEC);
        ASSERT_EQ(strlen(l.last_event.id), strlen("azure:") + 36);
        NoticeEvent first = l.last_event;
        n = l.events;
        run_until(&l, &l.events, n);
        ASSERT_STREQ(l.last_event.id, first.id);
        ASSERT_U64_EQ(l.last_event.deadline_usec, first.deadline_usec);

        /* The plan is done: StartRequests, then the event is Started and its end is no cancellation. */
        provider_plan_finished(l.p, &l.last_event);
        run_until(&l, &l.acks, 0);
        ASSERT_EQ(l.ack_error, 0);
        ASSERT_STREQ(l.last_ack.id, l.last_event.id);
        n = l.polls;
        run_until(&l, &l.polls, n + 1);
        fake_server_clear_notice(l.fake);
        n = l.polls;
        run_until(&l, &l.polls, n + 1);
        ASSERT_EQ(l.cancels, 0);

        /* Not ours, or not Azure's: nothing to acknowledge. */
        NoticeEvent manual = { .kind = EVENT_MANUAL, .cloud = CLOUD_AZURE, .id = "manual:1" };
        provider_plan_finished(l.p, &manual);
        NoticeEvent aws = { .kind = EVENT_TERMINATE, .cloud = CLOUD_AWS, .id = "azure:X" };
        provider_plan_finished(l.p, &aws);

        /* A Redeploy that goes away before its NotBefore was cancelled: reported once. */
        ASSERT_OK(fake_server_set_notice(l.fake, "redeploy", 0));
        n = l.events;
        run_until(&l, &l.events, n);
        ASSERT_EQ(l.last_event.kind, EVENT_MAINTENANCE);
        ASSERT_STREQ(l.last_event.detail, "Redeploy");
        fake_server_clear_notice(l.fake);
        run_until(&l, &l.cancels, 0);
        ASSERT_STREQ(l.last_cancel.id, l.last_event.id);
        n = l.polls;
        run_until(&l, &l.polls, n + 2);
        ASSERT_EQ(l.cancels, 1);
        ASSERT_EQ(l.acks, 1);
        ASSERT_EQ(l.poll_errors, 0);

        /* No ack for an event that is not (or no longer) scheduled: Azure would refuse it. */
        NoticeEvent gone = { .kind = EVENT_PREEMPT, .cloud = CLOUD_AZURE, .id = "azure:NOT-THERE" };
        provider_plan_finished(l.p, &gone);
        run_until(&l, &l.acks, 1);
        ASSERT_EQ(l.ack_error, -ECANCELED);

        /* Never above the fake's 5 requests per second, which would have been a 429. */
        ASSERT_EQ(l.poll_errors, 0);

        provider_stop(l.p);
        provider_stop(l.p);
        ASSERT_OK(provider_start(l.p));
        l.p = provider_free(l.p);
        fake_server_close(l.fake);
        http_close(h);
        uv_close((uv_handle_t *) &l.guard, NULL);
        ASSERT_EQ(uv_run(&l.loop, UV_RUN_DEFAULT), 0);
        ASSERT_EQ(uv_loop_close(&l.loop), 0);
}

static void test_provider_new(void) {
        test_provider_lifecycle(CLOUD_AZURE, &provider_azure_vtable);
}

int main(void) {
        RUN(test_document_good);
        RUN(test_document_bad);
        RUN(test_document_generated);
        RUN(test_rfc1123);
        RUN(test_event_to_notice);
        RUN(test_vm_name);
        RUN(test_ack_body);
        RUN(test_backoff);
        RUN(test_provider_new);
        RUN(test_provider_loop);
        return 0;
}
