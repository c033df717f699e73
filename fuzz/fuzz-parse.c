/* SPDX-License-Identifier: MIT */
/*
 * fuzz-parse.c - the typed value parsers of shared/parse.h, each fed the
 * input as one NUL-terminated string (as the config reader passes values):
 * parse_duration(), parse_rfc3339(), parse_signal(), split_words(), and
 * parse_bool()/parse_int() along the way. Checks the round trips the unit
 * tests promise: a duration or signal we print parses back to itself.
 */
#include <errno.h>
#include <limits.h>

#include "fuzz.h"
#include "shared/parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *s = fuzz_strndup(data, size);
        char buf[128];
        uint64_t usec, back;
        char **words = NULL;
        long v;
        bool b;
        int sig, r;

        if (!s)
                return 0;

        r = parse_duration(s, &usec);
        FUZZ_CHECK(r == 0 || r == -EINVAL || r == -ERANGE);
        if (r == 0) {
                format_duration(buf, sizeof(buf), usec);
                FUZZ_CHECK(parse_duration(buf, &back) == 0);
                FUZZ_CHECK(back == usec);
        }

        r = parse_rfc3339(s, &usec);
        FUZZ_CHECK(r == 0 || r == -EINVAL || r == -ERANGE);
        if (r == 0)
                (void) format_rfc3339(buf, sizeof(buf), usec);

        r = parse_signal(s, &sig);
        FUZZ_CHECK(r == 0 || r == -EINVAL || r == -ERANGE);
        if (r == 0) {
                const char *name = signal_to_string(sig);
                int sig2;

                if (name) {
                        FUZZ_CHECK(parse_signal(name, &sig2) == 0);
                        FUZZ_CHECK(sig2 == sig);
                }
        }

        r = split_words(s, &words);
        FUZZ_CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
        if (r == 0) {
                FUZZ_CHECK(words);
                (void) strv_length(words);
        }
        words = strv_free(words);

        (void) parse_bool(s, &b);
        (void) parse_int(s, LONG_MIN, LONG_MAX, &v);
        (void) parse_int(s, -5, 10000, &v);

        free(s);
        return 0;
}
