/* SPDX-License-Identifier: MIT */
/*
 * tests-loop.h - turning a test's uv loop until something happened, with a
 * deadline instead of a sleep. @tick is an initialised timer of the loop: it
 * wakes uv_run(UV_RUN_ONCE) so the wait can look at its deadline.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "tests.h"

static inline void tests_tick_cb(uv_timer_t *t) {
        (void) t;
}

/** tests_run_until() - turn @loop until *@flag, failing the test after @wait_ms. */
static inline void tests_run_until(uv_loop_t *loop, uv_timer_t *tick, const bool *flag, int wait_ms) {
        uint64_t deadline = uv_hrtime() + (uint64_t) wait_ms * 1000000;

        ASSERT_OK(uv_timer_start(tick, tests_tick_cb, 20, 20));
        while (!*flag) {
                if (uv_hrtime() > deadline)
                        TEST_FAIL("event did not happen within %d ms", wait_ms);
                (void) uv_run(loop, UV_RUN_ONCE);
        }
        ASSERT_OK(uv_timer_stop(tick));
}

/** tests_run_for() - turn @loop for about @ms without expecting anything. */
static inline void tests_run_for(uv_loop_t *loop, uv_timer_t *tick, uint64_t ms) {
        uint64_t end = uv_hrtime() + ms * 1000000;

        ASSERT_OK(uv_timer_start(tick, tests_tick_cb, 5, 5));
        while (uv_hrtime() < end)
                (void) uv_run(loop, UV_RUN_ONCE);
        ASSERT_OK(uv_timer_stop(tick));
}
