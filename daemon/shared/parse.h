/* SPDX-License-Identifier: MIT */
/*
 * parse.h - typed parsers for config values and protocol fields. Pure
 * functions: no I/O, no logging, no global state. Each returns 0 or -EINVAL
 * (-ERANGE for overflow) and writes its ret_ only on success.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

/**
 * parse_duration() - "500ms", "2s", "5m", "1h", "1d", "250us", or a bare
 * number of seconds ("3", "1.5"); also sums like "1m30s". Whitespace around
 * the value is not accepted (the config reader strips it). Result in usec.
 */
int parse_duration(const char *s, uint64_t *ret_usec);

/** format_duration() - "1.5s", "500ms", "2m" into @buf; returns @buf. */
char *format_duration(char *buf, size_t size, uint64_t usec);

/** parse_bool() - yes/no/true/false/on/off/1/0. */
int parse_bool(const char *s, bool *ret);

/** parse_signal() - "SIGUSR1", "USR1", "10", "SIGRTMIN+2". Rejects SIGKILL-less numbers out of range. */
int parse_signal(const char *s, int *ret_sig);
/** signal_to_string() - "SIGUSR1"; static storage for named ones, NULL if unknown. */
const char *signal_to_string(int sig);

/** parse_int() - decimal integer within [min, max]. */
int parse_int(const char *s, long min, long max, long *ret);

/**
 * parse_rfc3339() - "2026-11-27T13:18:01Z", with optional fraction and a
 * "+01:00" style offset. Result: wall-clock usec since the epoch.
 */
int parse_rfc3339(const char *s, uint64_t *ret_usec);
/** format_rfc3339() - UTC, second precision, "2026-11-27T13:18:01Z". Returns @buf (>= 21 bytes). */
char *format_rfc3339(char *buf, size_t size, uint64_t usec);

/**
 * split_words() - split @s at runs of spaces/tabs into a NULL-terminated,
 * malloc'd strv. Honours "double" and 'single' quotes and backslash escapes
 * (so exec = /bin/x "a b" works); -EINVAL for an unterminated quote.
 */
int split_words(const char *s, char ***ret_strv);
char **strv_free(char **l);
size_t strv_length(char *const *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(char **, strv_free);
