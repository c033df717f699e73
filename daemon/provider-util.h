/* SPDX-License-Identifier: MIT */
/*
 * provider-util.h - what the cloud providers (provider-{aws,gcp,azure,
 * alibaba}.c) share: the clocks, words for untrusted metadata bodies, JSON
 * through json-c under a nesting limit with typed member getters, the
 * "D Mon YYYY HH:MM:SS" date both AWS and Azure write, the retry backoff,
 * the words for a failed request, and the bookkeeping around the uv timer
 * and the reusable HttpRequests a provider owns.
 *
 * Everything here is a helper of one provider at a time: it keeps no state
 * of its own, never logs and never calls a provider's callbacks. The parsers
 * write their ret_ only on success and report a bad body as -EBADMSG with a
 * message for the log in @err (which may be NULL).
 */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "provider.h"
#include "shared/macro.h"

#define PROVIDER_QUOTE_MAX 32 /* bytes of an untrusted value shown in a message */

/** provider_now_usec() - @clock (CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME) in usec. */
uint64_t provider_now_usec(clockid_t clock);

/** provider_timeout_ms() - @usec as a uv timer timeout: whole ms, rounded up, so never early. */
uint64_t provider_timeout_ms(uint64_t usec);

/**
 * provider_poll_interval_usec() - @config's poll_interval, at least 1 ms: a
 * zero interval would spin, and config checks should not let one through.
 */
uint64_t provider_poll_interval_usec(const Config *config);

/**
 * provider_backoff_usec() - the delay before the next try after a failure:
 * min(@poll_interval_usec << @doublings, max(@poll_interval_usec, @cap_usec)),
 * without overflow. A poll interval longer than the cap is never shortened.
 */
uint64_t provider_backoff_usec(uint64_t poll_interval_usec, unsigned doublings, uint64_t cap_usec);

/** provider_is_space() - JSON's whitespace: space, tab, CR, LF. */
bool provider_is_space(char c);
/** provider_visible_ascii() - every one of @size bytes is printable ASCII other than space. */
bool provider_visible_ascii(const char *s, size_t size);
/** provider_trim_end() - @size without the trailing provider_is_space() bytes of @s (NULL: 0). */
size_t provider_trim_end(const char *s, size_t size);

/**
 * provider_parse_word() - a one-word body (an instance id, a VM name, a
 * session token): trailing whitespace is dropped, what is left must be
 * 1..@max provider_visible_ascii() bytes. Returns a malloc'd copy in *@ret.
 * -EBADMSG otherwise (also for a NULL @body), -ENOMEM.
 */
int provider_parse_word(const char *body, size_t size, size_t max, char **ret);

/**
 * provider_quote_untrusted() - at most PROVIDER_QUOTE_MAX bytes of untrusted
 * @s (@len bytes, NULs allowed) for a message, non-printables as '?', "..."
 * when cut; always NUL-terminated within @size (nothing happens for @size 0).
 */
void provider_quote_untrusted(char *buf, size_t size, const char *s, size_t len);

/** provider_set_error() - format a message into @err (if non-NULL) and return -EBADMSG. */
int provider_set_error(char *err, size_t size, const char *fmt, ...) _printf_(3, 4);

/* ---- JSON ------------------------------------------------------------------ */

static inline void json_object_putp(json_object **o) {
        if (*o)
                (void) json_object_put(*o);
}

/**
 * provider_json_parse() - @body (@size bytes) as exactly one JSON value of
 * @type (json_type_object or json_type_array): strict, valid UTF-8, no NUL
 * byte, nesting at most @max_depth, nothing but whitespace after it. The
 * object goes to *@ret (the caller puts it). -EBADMSG ("empty body", "NUL
 * byte in body", "invalid JSON: ...", "JSON is not an object", ...), -ENOMEM.
 */
int provider_json_parse(const char *body, size_t size, json_type type, int max_depth, json_object **ret,
                        char *err, size_t errsz);

/* How provider_json_get_*() treat a member that is not there. */
typedef enum ProviderJsonFlags {
        PROVIDER_JSON_OPTIONAL = 1 << 0,       /* missing is fine: 0 is returned, *ret untouched */
        PROVIDER_JSON_NULL_IS_ABSENT = 1 << 1, /* null counts as missing; without this null is an error */
} ProviderJsonFlags;

/*
 * The member getters: member @key of the object @o. They return 1 with the
 * value in *@ret when it is present, 0 when it is absent and @flags allow
 * that, else -EBADMSG with a message that starts with @prefix (e.g.
 * "event 3: ", or "" or NULL): "PREFIXmissing \"KEY\"", "PREFIX\"KEY\" is
 * null", "PREFIX\"KEY\" is not a string", ...
 */

/** provider_json_get_member() - a value of any type (borrowed from @o). */
int provider_json_get_member(json_object *o, const char *prefix, const char *key, unsigned flags,
                             json_object **ret, char *err, size_t errsz);
/**
 * provider_json_get_string() - a string without embedded NULs ("\u0000"
 * decodes to one, "NUL in PREFIX\"KEY\""); *@ret_len is its length. *@ret
 * lives as long as @o.
 */
int provider_json_get_string(json_object *o, const char *prefix, const char *key, unsigned flags,
                             const char **ret, size_t *ret_len, char *err, size_t errsz);
/** provider_json_get_int64() - an integer in int64_t, at least @min ("PREFIXinvalid \"KEY\""). */
int provider_json_get_int64(json_object *o, const char *prefix, const char *key, unsigned flags, int64_t min,
                            int64_t *ret, char *err, size_t errsz);
/** provider_json_get_array() - an array (borrowed from @o). */
int provider_json_get_array(json_object *o, const char *prefix, const char *key, unsigned flags,
                            json_object **ret, char *err, size_t errsz);
/**
 * provider_json_string_value() - @v itself as a string without NULs, for
 * array elements: -EBADMSG "WHAT is not a string" or "NUL in WHAT".
 */
int provider_json_string_value(json_object *v, const char *what, const char **ret, size_t *ret_len,
                               char *err, size_t errsz);

/* ---- dates ----------------------------------------------------------------- */

/**
 * provider_parse_date_time() - "D Mon YYYY HH:MM:SS" at *@s, the core of
 * AWS's scheduled event times and of RFC 1123 dates: a day of one or two
 * digits, an English month abbreviation, a year 1970..9999, a real date and
 * time of day (no leap second). On success *@s points after the seconds and
 * *@ret_usec is the time as UTC. -EINVAL otherwise; it never reads past a
 * NUL.
 */
int provider_parse_date_time(const char **s, uint64_t *ret_usec);

/* ---- requests -------------------------------------------------------------- */

/**
 * provider_transport_error_to_string() - a few words for a transport error
 * from http (HttpDoneFn's @error): "timed out", "connection refused",
 * "connection reset", "body over the cap", "not an HTTP answer", "host
 * unreachable", else strerror().
 */
const char *provider_transport_error_to_string(int error);

/** provider_http_status_to_errno() - 401, 403: -EACCES; 429: -EBUSY; any other status: -EIO. */
int provider_http_status_to_errno(long status);

/**
 * provider_request_renew() - a request cancelled by stop() may still wait to
 * report it, which would block a restart: replace *@req by a new one named
 * @name when it is still running. 0, or what http_request_new() returns (then
 * *@req is NULL).
 */
int provider_request_renew(Http *http, const char *name, HttpRequest **req);

/**
 * provider_count_poll() - note one poll (cycle or answer) of @p in its
 * counters: polls, last_poll_usec (wall clock), last_poll_error. The caller
 * then calls on_poll as its rules say.
 */
void provider_count_poll(Provider *p, int error);

/* ---- timers ---------------------------------------------------------------- */

/*
 * A uv timer in its own small block that frees itself in its close callback,
 * so the provider that owns it can be freed at once while libuv still holds
 * the handle until the next loop iteration. @owner goes NULL when the
 * provider lets go of it; the callback must check it.
 */
typedef struct ProviderTimer {
        uv_timer_t handle;
        void *owner;
} ProviderTimer;

/** provider_timer_new() - a timer on @loop for @owner. -ENOMEM or what uv_timer_init() returns. */
int provider_timer_new(uv_loop_t *loop, void *owner, ProviderTimer **ret);
/** provider_timer_owner() - the owner of the timer of @handle, NULL once let go of. */
void *provider_timer_owner(uv_timer_t *handle);
/** provider_timer_close() - stop @t, forget its owner and let libuv free it. NULL-safe; returns NULL. */
ProviderTimer *provider_timer_close(ProviderTimer *t);
