/* SPDX-License-Identifier: MIT */
/*
 * tests-provider.h - what the provider unit tests (test-provider-*.c) share:
 * bodies with NULs in case tables, the check that a failed parser wrote
 * nothing, and the life cycle every provider must survive without a loop
 * turn. Header only, on top of tests.h.
 */
#pragma once

#include <string.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "provider.h"
#include "shared/macro.h"
#include "tests.h"

/* A body given with its exact size, so it may hold NULs: in a case table, and as arguments. */
#define BODY(s) .body = (s), .size = sizeof(s) - 1
#define BODY_ARGS(s) (s), sizeof(s) - 1

/* @size bytes at @p still hold the 0xA5 a test memset() there: the call under test wrote nothing. */
static inline void assert_untouched(const void *p, size_t size) {
        const unsigned char *b = p;

        for (size_t i = 0; i < size; i++)
                if (b[i] != 0xA5)
                        TEST_FAIL("byte %zu of %zu was written: 0x%02x", i, size, b[i]);
}

/*
 * provider_new() for @cloud with no address, an empty one (both mean the
 * cloud's own) and "http://127.0.0.1:9//" (trailing '/' dropped); then
 * started twice, told of a NULL plan, stopped twice, started again, given its
 * config again and freed without a loop turn: nothing runs, nothing leaks,
 * and the loop closes cleanly.
 */
static inline void test_provider_lifecycle(CloudKind cloud, const ProviderVTable *vtable) {
        _cleanup_(config_freep) Config *c = NULL;
        uv_loop_t loop;
        Http *h = NULL;
        Provider *p = NULL;

        ASSERT_OK(config_new_default(&c));
        ASSERT_EQ(uv_loop_init(&loop), 0);
        ASSERT_OK(http_new(&loop, &h));

        ASSERT_OK(provider_new(cloud, &loop, h, c, NULL, NULL, NULL, &p));
        ASSERT_STREQ(p->base_url, provider_default_url(cloud));
        ASSERT_TRUE(p->vtable == vtable);
        ASSERT_TRUE(p->instance_id == NULL);
        ASSERT_TRUE(p->shutdown_script == NULL);
        ASSERT_U64_EQ(p->polls, 0);
        p = provider_free(p);

        ASSERT_OK(provider_new(cloud, &loop, h, c, "", NULL, NULL, &p));
        ASSERT_STREQ(p->base_url, provider_default_url(cloud));
        p = provider_free(p);

        ASSERT_OK(provider_new(cloud, &loop, h, c, "http://127.0.0.1:9//", NULL, NULL, &p));
        ASSERT_STREQ(p->base_url, "http://127.0.0.1:9");
        ASSERT_OK(provider_start(p));
        ASSERT_OK(provider_start(p));
        provider_plan_finished(p, NULL);
        provider_stop(p);
        provider_stop(p);
        ASSERT_OK(provider_start(p));
        provider_set_config(p, c);
        p = provider_free(p);

        http_close(h);
        ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
        ASSERT_EQ(uv_loop_close(&loop), 0);
}
