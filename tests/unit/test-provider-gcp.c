/* SPDX-License-Identifier: MIT */
/*
 * test-provider-gcp.c - tables of instance/preempted, maintenance-event,
 * ETag, instance id and shutdown-script inputs through the GCP provider's
 * pure parsers, the URL and notice-id builders, the retry arithmetic, and
 * one run of the real watcher against the daemon's own fake GCP server
 * (fake-gcp.c) on loopback: plain GET, a hanging GET that times out and is
 * re-armed, a preemption delivered by the parked GET, the shutdown script
 * fetched before the notice.
 */
#include <errno.h>
#include <string.h>

#include "config.h"
#include "fake-server-internal.h"
#include "http.h"
#include "provider-gcp.h"
#include "provider.h"
#include "shared/macro.h"
#include "tests-provider.h"
#include "tests.h"


typedef struct BodyCase {
        const char *body;
        size_t size;
        int value; /* expected value, or -1: -EBADMSG */
} BodyCase;

static const BodyCase preempted_cases[] = {
        { BODY("TRUE"), 1 },
        { BODY("FALSE"), 0 },
        { BODY("TRUE\n"), 1 },
        { BODY("FALSE \r\n\t"), 0 },
        { BODY(""), -1 },
        { BODY("\n"), -1 },
        { BODY("true"), -1 },
        { BODY("True"), -1 },
        { BODY("false"), -1 },
        { BODY(" TRUE"), -1 },
        { BODY("TRUEX"), -1 },
        { BODY("TRU"), -1 },
        { BODY("TRUE FALSE"), -1 },
        { BODY("TRUE\0"), -1 },
        { BODY("TRUE\0garbage"), -1 },
        { BODY("1"), -1 },
        { BODY("YES"), -1 },
        { BODY("NONE"), -1 },
        { BODY("<html><body>Service Unavailable</body></html>"), -1 },
        { BODY("\xff\xfe"), -1 },
};

static const BodyCase maintenance_cases[] = {
        { BODY("NONE"), GCP_MAINTENANCE_NONE },
        { BODY("MIGRATE_ON_HOST_MAINTENANCE"), GCP_MAINTENANCE_MIGRATE },
        { BODY("TERMINATE_ON_HOST_MAINTENANCE"), GCP_MAINTENANCE_TERMINATE },
        { BODY("TERMINATE_ON_HOST_MAINTENANCE\n"), GCP_MAINTENANCE_TERMINATE },
        { BODY("NONE\r\n"), GCP_MAINTENANCE_NONE },
        { BODY(""), -1 },
        { BODY("none"), -1 },
        { BODY("MIGRATE"), -1 },
        { BODY("TERMINATE"), -1 },
        { BODY("MIGRATE_ON_HOST_MAINTENANCE_"), -1 },
        { BODY("TERMINATE_ON_HOST_MAINTENANCEX"), -1 },
        { BODY(" NONE"), -1 },
        { BODY("NONE NONE"), -1 },
        { BODY("NONE\0"), -1 },
        { BODY("TRUE"), -1 },
        { BODY("{\"maintenance\": \"NONE\"}"), -1 },
};

static void test_preempted(void) {
        for (size_t i = 0; i < ELEMENTSOF(preempted_cases); i++) {
                const BodyCase *c = &preempted_cases[i];
                bool v = !c->value;

                fprintf(stderr, "   case %zu\n", i);
                if (c->value < 0) {
                        ASSERT_ERR(gcp_parse_preempted(c->body, c->size, &v), EBADMSG);
                        ASSERT_EQ(v, !c->value); /* untouched */
                } else {
                        ASSERT_OK(gcp_parse_preempted(c->body, c->size, &v));
                        ASSERT_EQ(v, c->value);
                }
        }
        bool v;
        ASSERT_ERR(gcp_parse_preempted(NULL, 0, &v), EBADMSG);
}

static void test_maintenance(void) {
        for (size_t i = 0; i < ELEMENTSOF(maintenance_cases); i++) {
                const BodyCase *c = &maintenance_cases[i];
                GcpMaintenance m = _GCP_MAINTENANCE_INVALID;

                fprintf(stderr, "   case %zu\n", i);
                if (c->value < 0) {
                        ASSERT_ERR(gcp_parse_maintenance(c->body, c->size, &m), EBADMSG);
                        ASSERT_EQ(m, _GCP_MAINTENANCE_INVALID);
                } else {
                        ASSERT_OK(gcp_parse_maintenance(c->body, c->size, &m));
                        ASSERT_EQ(m, c->value);
                }
        }

        ASSERT_STREQ(gcp_maintenance_to_string(GCP_MAINTENANCE_NONE), "NONE");
        ASSERT_STREQ(gcp_maintenance_to_string(GCP_MAINTENANCE_MIGRATE), "MIGRATE_ON_HOST_MAINTENANCE");
        ASSERT_STREQ(gcp_maintenance_to_string(GCP_MAINTENANCE_TERMINATE), "TERMINATE_ON_HOST_MAINTENANCE");
        ASSERT_TRUE(gcp_maintenance_to_string(_GCP_MAINTENANCE_MAX) == NULL);
        ASSERT_TRUE(gcp_maintenance_to_string(_GCP_MAINTENANCE_INVALID) == NULL);
}

static void test_etag(void) {
        static const struct {
                const char *value;
                int error;
                const char *etag;
        } cases[] = {
                { "411261ca6c9e654e", 0, "411261ca6c9e654e" },
                { "  411261ca6c9e654e \r\n", 0, "411261ca6c9e654e" },
                { "\"411261ca6c9e654e\"", 0, "411261ca6c9e654e" },
                { "a", 0, "a" },
                { "a&b=c%d", 0, "a&b=c%d" }, /* taken; the URL builder encodes it */
                { "0123456789012345678901234567890123456789012345678901234567890123", 0,
                  "0123456789012345678901234567890123456789012345678901234567890123" },
                { "01234567890123456789012345678901234567890123456789012345678901234", ERANGE, NULL },
                { NULL, EINVAL, NULL },
                { "", EINVAL, NULL },
                { "   ", EINVAL, NULL },
                { "\"\"", EINVAL, NULL },
                { "\"", EINVAL, NULL },
                { "a b", EINVAL, NULL },
                { "W/\"abc\"", EINVAL, NULL },
                { "abc\x01", EINVAL, NULL },
                { "abc\x7f", EINVAL, NULL },
                { "\xc3\xa9t\xc3\xa9", EINVAL, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char buf[GCP_ETAG_MAX + 1] = "untouched";

                fprintf(stderr, "   case %zu\n", i);
                if (cases[i].error) {
                        ASSERT_ERR(gcp_parse_etag(cases[i].value, buf, sizeof(buf)), cases[i].error);
                        ASSERT_STREQ(buf, "untouched");
                } else {
                        ASSERT_OK(gcp_parse_etag(cases[i].value, buf, sizeof(buf)));
                        ASSERT_STREQ(buf, cases[i].etag);
                }
        }
}

static void test_instance_id(void) {
        static const struct {
                const char *body;
                size_t size;
                const char *id;
        } cases[] = {
                { BODY("4520031799277581759"), "4520031799277581759" },
                { BODY("4520031799277581759\n"), "4520031799277581759" },
                { BODY("x"), "x" },
                { BODY(""), NULL },
                { BODY("\n"), NULL },
                { BODY("45 20"), NULL },
                { BODY("4520\0"), NULL },
                { BODY("\x01"), NULL },
                { BODY("01234567890123456789012345678901234567890123456789012345678901234"), NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *id = NULL;

                fprintf(stderr, "   case %zu\n", i);
                if (!cases[i].id)
                        ASSERT_ERR(gcp_parse_instance_id(cases[i].body, cases[i].size, &id), EBADMSG);
                else {
                        ASSERT_OK(gcp_parse_instance_id(cases[i].body, cases[i].size, &id));
                        ASSERT_STREQ(id, cases[i].id);
                }
        }
        char *id = NULL;
        ASSERT_ERR(gcp_parse_instance_id(NULL, 0, &id), EBADMSG);
}

static void test_shutdown_script(void) {
        static const char script[] = "#!/bin/bash\nspotwatchctl trigger --wait --event preempt\n";
        _cleanup_free_ char *big = NULL;
        char *s = (char *) "untouched";

        ASSERT_OK(gcp_parse_shutdown_script("", 0, &s));
        ASSERT_TRUE(s == NULL);
        ASSERT_OK(gcp_parse_shutdown_script(script, sizeof(script) - 1, &s));
        ASSERT_STREQ(s, script);
        free(s);
        s = (char *) "untouched";
        ASSERT_ERR(gcp_parse_shutdown_script("echo\0rm -rf /", 13, &s), EBADMSG);
        ASSERT_STREQ(s, "untouched");

        big = malloc(GCP_SCRIPT_MAX_BODY + 1);
        ASSERT_TRUE(big != NULL);
        memset(big, '#', GCP_SCRIPT_MAX_BODY + 1);
        ASSERT_OK(gcp_parse_shutdown_script(big, GCP_SCRIPT_MAX_BODY, &s));
        ASSERT_EQ(strlen(s), GCP_SCRIPT_MAX_BODY);
        free(s);
        ASSERT_ERR(gcp_parse_shutdown_script(big, GCP_SCRIPT_MAX_BODY + 1, &s), EBADMSG);
}

static void test_watch_url(void) {
        static const struct {
                const char *etag;
                unsigned wait;
                const char *url;
        } cases[] = {
                { NULL, 0, "http://h/computeMetadata/v1/instance/preempted" },
                { "abc", 0, "http://h/computeMetadata/v1/instance/preempted" },
                { NULL, 60, "http://h/computeMetadata/v1/instance/preempted?wait_for_change=true&timeout_sec=60" },
                { "", 2, "http://h/computeMetadata/v1/instance/preempted?wait_for_change=true&timeout_sec=2" },
                { "411261ca6c9e654e", 2,
                  "http://h/computeMetadata/v1/instance/preempted?wait_for_change=true&last_etag=411261ca6c9e654e"
                  "&timeout_sec=2" },
                { "a&b=c%d/~._-", 1,
                  "http://h/computeMetadata/v1/instance/preempted?wait_for_change=true&last_etag=a%26b%3Dc%25d%2F~._-"
                  "&timeout_sec=1" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *u = NULL;

                fprintf(stderr, "   case %zu\n", i);
                ASSERT_OK(gcp_watch_url("http://h", "instance/preempted", cases[i].etag, cases[i].wait, &u));
                ASSERT_STREQ(u, cases[i].url);
        }

        char *u = NULL;
        char long_etag[GCP_ETAG_MAX + 2];
        memset(long_etag, '%', sizeof(long_etag) - 1);
        long_etag[sizeof(long_etag) - 1] = 0;
        ASSERT_ERR(gcp_watch_url("http://h", "instance/preempted", long_etag, 1, &u), EINVAL);
        long_etag[GCP_ETAG_MAX] = 0; /* all 64 encoded: fits */
        ASSERT_OK(gcp_watch_url("http://h", "x", long_etag, 1, &u));
        ASSERT_CONTAINS(u, "&last_etag=%25%25");
        free(u);
        ASSERT_ERR(gcp_watch_url("", "x", NULL, 0, &u), EINVAL);
        ASSERT_ERR(gcp_watch_url(NULL, "x", NULL, 0, &u), EINVAL);
        ASSERT_ERR(gcp_watch_url("http://h", "", NULL, 0, &u), EINVAL);
}

#define T0 (UINT64_C(1795785600) * USEC_PER_SEC + 123456) /* 2026-11-27T13:20:00.123456Z */

static void test_events(void) {
        static const struct {
                const char *etag;
                unsigned gen;
                const char *id;
        } preempt[] = {
                { "411261ca6c9e654e", 1, "gcp:preempted:411261ca6c9e654e" },
                { "411261ca6c9e654e", 2, "gcp:preempted:411261ca6c9e654e:2" },
                { "411261ca6c9e654e", 0, "gcp:preempted:411261ca6c9e654e" },
                { NULL, 1, "gcp:preempted:t1795785600" },
                { "", 3, "gcp:preempted:t1795785600:3" },
        };
        NoticeEvent ev;

        for (size_t i = 0; i < ELEMENTSOF(preempt); i++) {
                fprintf(stderr, "   preempt case %zu\n", i);
                gcp_preempt_event(preempt[i].etag, T0, preempt[i].gen, &ev);
                ASSERT_EQ(ev.kind, EVENT_PREEMPT);
                ASSERT_EQ(ev.cloud, CLOUD_GCP);
                ASSERT_STREQ(ev.id, preempt[i].id);
                ASSERT_STREQ(ev.detail, "preempted");
                ASSERT_U64_EQ(ev.deadline_usec, T0 + 30 * USEC_PER_SEC);
                ASSERT_U64_EQ(ev.notice_usec, 0);
        }

        /* The same preemption seen again keeps its id; a later one after FALSE does not. */
        NoticeEvent a, b;
        gcp_preempt_event("e1", T0, 1, &a);
        gcp_preempt_event("e1", T0 + 5 * USEC_PER_SEC, 1, &b);
        ASSERT_STREQ(a.id, b.id);
        gcp_preempt_event("e1", T0, 2, &b);
        ASSERT_TRUE(!streq(a.id, b.id));

        ASSERT_OK(gcp_maintenance_event(GCP_MAINTENANCE_TERMINATE, "e7", T0, 1, &ev));
        ASSERT_EQ(ev.kind, EVENT_MAINTENANCE);
        ASSERT_EQ(ev.cloud, CLOUD_GCP);
        ASSERT_STREQ(ev.id, "gcp:maintenance-event:TERMINATE_ON_HOST_MAINTENANCE:e7");
        ASSERT_STREQ(ev.detail, "TERMINATE_ON_HOST_MAINTENANCE");
        ASSERT_U64_EQ(ev.deadline_usec, 0);
        ASSERT_FALSE(ev.report_only);

        ASSERT_OK(gcp_maintenance_event(GCP_MAINTENANCE_MIGRATE, NULL, T0, 2, &ev));
        ASSERT_TRUE(ev.report_only);
        ASSERT_EQ(ev.kind, EVENT_MAINTENANCE);
        ASSERT_STREQ(ev.id, "gcp:maintenance-event:MIGRATE_ON_HOST_MAINTENANCE:t1795785600:2");
        ASSERT_STREQ(ev.detail, "MIGRATE_ON_HOST_MAINTENANCE");

        ev.kind = EVENT_MANUAL;
        ASSERT_ERR(gcp_maintenance_event(GCP_MAINTENANCE_NONE, "e", T0, 1, &ev), EINVAL);
        ASSERT_ERR(gcp_maintenance_event(_GCP_MAINTENANCE_MAX, "e", T0, 1, &ev), EINVAL);
        ASSERT_ERR(gcp_maintenance_event(_GCP_MAINTENANCE_INVALID, "e", T0, 1, &ev), EINVAL);
        ASSERT_EQ(ev.kind, EVENT_MANUAL);

        /* The longest ETag still fits the id. */
        char etag[GCP_ETAG_MAX + 1];
        memset(etag, 'e', GCP_ETAG_MAX);
        etag[GCP_ETAG_MAX] = 0;
        ASSERT_OK(gcp_maintenance_event(GCP_MAINTENANCE_TERMINATE, etag, T0, 4000000000U, &ev));
        ASSERT_CONTAINS(ev.id, ":4000000000");
        ASSERT_CONTAINS(ev.id, etag);
}

static void test_backoff(void) {
        const uint64_t ms = USEC_PER_MSEC;
        static const struct {
                uint64_t poll_ms;
                unsigned failures;
                uint64_t delay_ms;
        } cases[] = {
                { 200, 1, 200 },   { 200, 2, 400 },   { 200, 3, 800 },   { 200, 4, 1600 },
                { 200, 5, 3200 },  { 200, 6, 5000 },  { 200, 64, 5000 }, { 1000, 1, 1000 },
                { 1000, 3, 4000 }, { 1000, 4, 5000 }, { 50, 1, 200 },    { 50, 2, 200 },
                { 50, 3, 200 },    { 50, 4, 400 },    { 1, 1, 200 },     { 0, 9, 200 },
                { 10000, 1, 10000 }, { 10000, 5, 10000 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t d = gcp_backoff_usec(cases[i].poll_ms * ms, cases[i].failures);

                fprintf(stderr, "   case %zu: %" PRIu64 " ms\n", i, d / ms);
                ASSERT_U64_EQ(d, cases[i].delay_ms * ms);
                ASSERT_TRUE(d >= GCP_RETRY_MIN_USEC);
        }

        ASSERT_EQ(gcp_wait_sec(0), 1);
        ASSERT_EQ(gcp_wait_sec(1), 1);
        ASSERT_EQ(gcp_wait_sec(USEC_PER_SEC), 1);
        ASSERT_EQ(gcp_wait_sec(1500 * ms), 2);
        ASSERT_EQ(gcp_wait_sec(60 * USEC_PER_SEC), 60);
        ASSERT_EQ(gcp_wait_sec(7200 * USEC_PER_SEC), GCP_WAIT_SEC_MAX);
        ASSERT_EQ(gcp_wait_sec(UINT64_MAX), GCP_WAIT_SEC_MAX);
}

/* ---- the watcher against the daemon's own fake -------------------------- */

typedef struct Run {
        uv_loop_t loop;
        Http *http;
        FakeServer *fake;
        Provider *p;
        unsigned polls;
        unsigned errors;
        unsigned events;
        bool flipped;
        uint64_t flip_usec;
        NoticeEvent ev;
        char *script_at_event;
        char *instance_id_at_event;
        uv_timer_t guard;
} Run;

static void run_end(Run *r) {
        provider_stop(r->p);
        fake_server_close(r->fake);
        r->fake = NULL;
        uv_close((uv_handle_t *) &r->guard, NULL);
}

static void on_event(Provider *p, const NoticeEvent *ev, void *userdata) {
        Run *r = userdata;

        r->events++;
        r->ev = *ev;
        free(r->script_at_event);
        r->script_at_event = p->shutdown_script ? strdup(p->shutdown_script) : NULL;
        free(r->instance_id_at_event);
        r->instance_id_at_event = p->instance_id ? strdup(p->instance_id) : NULL;
        run_end(r);
}

static void on_poll(Provider *p, int error, const char *what, const char *detail, void *userdata) {
        Run *r = userdata;

        if (error < 0) {
                fprintf(stderr, "   poll error: %s: %s\n", what, detail);
                r->errors++;
                return;
        }
        r->polls++;
        /* Flip only after both first answers and one timed-out hanging GET (gcp_wait = 1 s). */
        if (r->polls == 4 && !r->flipped) {
                r->flipped = true;
                r->flip_usec = uv_hrtime() / NSEC_PER_USEC;
                ASSERT_OK(fake_server_set_notice(r->fake, "preempt", 0));
        }
}

static void on_guard(uv_timer_t *t) {
        Run *r = container_of(t, Run, guard);

        fprintf(stderr, "   guard timer fired: polls %u, errors %u\n", r->polls, r->errors);
        run_end(r);
}

static void run_against_fake(bool with_script) {
        static const ProviderCallbacks cb = { .on_event = on_event, .on_poll = on_poll };
        _cleanup_(config_freep) Config *c = NULL;
        Run r = {};
        uint64_t t0;

        ASSERT_OK(config_new_default(&c));
        c->gcp_wait_usec = USEC_PER_SEC;
        c->poll_interval_usec = 100 * USEC_PER_MSEC;
        c->gcp_shutdown_script = with_script;

        ASSERT_EQ(uv_loop_init(&r.loop), 0);
        ASSERT_OK(http_new(&r.loop, &r.http));
        ASSERT_OK(fake_server_new(&r.loop, CLOUD_GCP, "127.0.0.1", 0, &r.fake));
        ASSERT_STREQ(fake_server_events(r.fake), "preempt, maintenance, migrate");
        ASSERT_ERR(fake_server_set_notice(r.fake, "terminate", 0), EINVAL);
        if (with_script)
                ASSERT_OK(fake_gcp_set_shutdown_script(r.fake, "#!/bin/sh\necho bye\n"));
        ASSERT_OK(provider_new(CLOUD_GCP, &r.loop, r.http, c, fake_server_url(r.fake), &cb, &r, &r.p));
        ASSERT_TRUE(r.p->vtable == &provider_gcp_vtable);
        ASSERT_EQ(uv_timer_init(&r.loop, &r.guard), 0);
        ASSERT_EQ(uv_timer_start(&r.guard, on_guard, 10000, 0), 0);

        t0 = uv_hrtime() / NSEC_PER_USEC;
        ASSERT_OK(provider_start(r.p));
        (void) uv_run(&r.loop, UV_RUN_DEFAULT);

        ASSERT_EQ(r.errors, 0);
        ASSERT_EQ(r.events, 1);
        ASSERT_TRUE(r.flipped);
        ASSERT_EQ(r.ev.kind, EVENT_PREEMPT);
        ASSERT_EQ(r.ev.cloud, CLOUD_GCP);
        ASSERT_CONTAINS(r.ev.id, "gcp:preempted:");
        ASSERT_STREQ(r.instance_id_at_event, "4510000000000000001");
        if (with_script)
                ASSERT_STREQ(r.script_at_event, "#!/bin/sh\necho bye\n");
        else
                ASSERT_TRUE(r.script_at_event == NULL);
        /* Both first answers, then at least one hanging GET on each ran to its 1 s timeout. */
        ASSERT_TRUE(r.flip_usec - t0 >= 900 * USEC_PER_MSEC);
        fprintf(stderr, "   flip after %" PRIu64 " ms\n", (r.flip_usec - t0) / USEC_PER_MSEC);

        r.p = provider_free(r.p);
        http_close(r.http);
        ASSERT_EQ(uv_run(&r.loop, UV_RUN_DEFAULT), 0);
        ASSERT_EQ(uv_loop_close(&r.loop), 0);
        free(r.script_at_event);
        free(r.instance_id_at_event);
}

static void test_against_fake(void) {
        run_against_fake(false);
        run_against_fake(true);
}

static void test_provider_new(void) {
        test_provider_lifecycle(CLOUD_GCP, &provider_gcp_vtable);
}

int main(void) {
        RUN(test_preempted);
        RUN(test_maintenance);
        RUN(test_etag);
        RUN(test_instance_id);
        RUN(test_shutdown_script);
        RUN(test_watch_url);
        RUN(test_events);
        RUN(test_backoff);
        RUN(test_provider_new);
        RUN(test_against_fake);
        return 0;
}
