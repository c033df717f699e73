/* SPDX-License-Identifier: MIT */
/*
 * action-util.c - the clocks the plan and its stages measure deadlines with.
 * CLOCK_MONOTONIC is the clock libuv's timers run on, so a monotonic deadline
 * converts to a timer timeout by plain subtraction; wall-clock time is only
 * for the cloud's deadline and for records. No state, no I/O.
 */
#include <assert.h>
#include <time.h>

#include "action.h"
#include "shared/macro.h"

static uint64_t timespec_load(const struct timespec *ts) {
        return (uint64_t) ts->tv_sec * USEC_PER_SEC + (uint64_t) ts->tv_nsec / NSEC_PER_USEC;
}

uint64_t now_monotonic_usec(void) {
        struct timespec ts;
        int r;

        /* Cannot fail for a valid clock id and a valid pointer. */
        r = clock_gettime(CLOCK_MONOTONIC, &ts);
        assert(r == 0);
        (void) r;
        return timespec_load(&ts);
}

uint64_t now_realtime_usec(void) {
        struct timespec ts;
        int r;

        r = clock_gettime(CLOCK_REALTIME, &ts);
        assert(r == 0);
        (void) r;
        return timespec_load(&ts);
}
