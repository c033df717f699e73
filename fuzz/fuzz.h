/* SPDX-License-Identifier: MIT */
/*
 * fuzz.h - the one entry point every fuzz target defines, in libFuzzer's
 * shape, and helpers shared by the targets. A target is linked either with
 * libFuzzer (-Dfuzzing=true under clang) or with replay-main.c, which feeds
 * it every file of a corpus directory, so the seeds run as ordinary tests
 * under gcc and the sanitizers. Targets must not keep state between inputs
 * beyond what they set up once.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property of the code under test failed: report it the way a crash is, so the fuzzer keeps the input. */
#define FUZZ_CHECK(x)                                                                          \
        do {                                                                                   \
                if (!(x)) {                                                                    \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x);  \
                        abort();                                                               \
                }                                                                              \
        } while (0)

/* @data as a NUL-terminated string in its own allocation (so ASan sees reads past its end); NULL on ENOMEM. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size) {
        char *s = malloc(size + 1);

        if (!s)
                return NULL;
        if (size > 0)
                memcpy(s, data, size);
        s[size] = '\0';
        return s;
}
