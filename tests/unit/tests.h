/* SPDX-License-Identifier: MIT */
/*
 * tests.h - assertions for the unit tests; each prints both sides and the
 * location, then aborts (after libuv test/task.h).
 */
#pragma once

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_FAIL(...)                                                         \
        do {                                                                   \
                fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, __func__);  \
                fprintf(stderr, __VA_ARGS__);                                  \
                fputc('\n', stderr);                                           \
                abort();                                                       \
        } while (0)

#define ASSERT_TRUE(x)                                                         \
        do {                                                                   \
                if (!(x))                                                      \
                        TEST_FAIL("expected true: %s", #x);                    \
        } while (0)

#define ASSERT_FALSE(x) ASSERT_TRUE(!(x))

#define ASSERT_EQ(a, b)                                                                        \
        do {                                                                                   \
                long long _a = (long long) (a), _b = (long long) (b);                          \
                if (_a != _b)                                                                  \
                        TEST_FAIL("%s == %s: %lld != %lld", #a, #b, _a, _b);                   \
        } while (0)

#define ASSERT_NE(a, b)                                                                        \
        do {                                                                                   \
                long long _a = (long long) (a), _b = (long long) (b);                          \
                if (_a == _b)                                                                  \
                        TEST_FAIL("%s != %s: both %lld", #a, #b, _a);                          \
        } while (0)

#define ASSERT_U64_EQ(a, b)                                                                    \
        do {                                                                                   \
                uint64_t _a = (uint64_t) (a), _b = (uint64_t) (b);                             \
                if (_a != _b)                                                                  \
                        TEST_FAIL("%s == %s: %" PRIu64 " != %" PRIu64, #a, #b, _a, _b);        \
        } while (0)

#define ASSERT_STREQ(a, b)                                                                     \
        do {                                                                                   \
                const char *_a = (a), *_b = (b);                                               \
                if (!_a || !_b || strcmp(_a, _b) != 0)                                         \
                        TEST_FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, _a ? _a : "(null)",    \
                                  _b ? _b : "(null)");                                         \
        } while (0)

/* @hay contains @needle */
#define ASSERT_CONTAINS(hay, needle)                                                           \
        do {                                                                                   \
                const char *_h = (hay), *_n = (needle);                                        \
                if (!_h || !strstr(_h, _n))                                                    \
                        TEST_FAIL("%s contains \"%s\": got \"%s\"", #hay, _n, _h ? _h : "(null)"); \
        } while (0)

#define ASSERT_OK(expr)                                                                        \
        do {                                                                                   \
                long long _r = (long long) (expr);                                             \
                if (_r < 0)                                                                    \
                        TEST_FAIL("%s: %lld (%s)", #expr, _r, strerror((int) -_r));            \
        } while (0)

#define ASSERT_ERR(expr, err)                                                                  \
        do {                                                                                   \
                long long _r = (long long) (expr);                                             \
                if (_r != -(long long) (err))                                                  \
                        TEST_FAIL("%s: expected -%s, got %lld", #expr, #err, _r);              \
        } while (0)

#define RUN(fn)                                                                \
        do {                                                                   \
                fprintf(stderr, "== %s\n", #fn);                               \
                fn();                                                          \
        } while (0)
