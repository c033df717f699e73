/* SPDX-License-Identifier: MIT */
/*
 * provider-gcp.h - the GCP metadata server watcher's pure parts, exposed for
 * unit tests: the parsers of instance/preempted, instance/maintenance-event,
 * the ETag response header and the shutdown-script attribute, the URL and
 * notice-id builders, and the retry arithmetic. The watcher itself is reached
 * through provider_gcp_vtable (provider.h). Nothing here does I/O or logs.
 *
 * Every request goes to BASE/computeMetadata/v1/PATH with the header
 * "Metadata-Flavor: Google". At start the watcher fetches instance/id once,
 * then watches instance/preempted and instance/maintenance-event, each with
 * its own request, as GCP documents ("waiting for changes"):
 *
 *   GET PATH                                                        first, so a value present at
 *                                                                   start-up is seen at once
 *   GET PATH?wait_for_change=true&last_etag=E&timeout_sec=S         then, re-armed at once with
 *                                                                   the ETag E of the last answer
 *
 * S is gcp_wait in whole seconds, and the request may take S +
 * request_timeout. The server answers at once when its ETag differs from E,
 * so the last ETag is kept across errors: a change during an outage comes
 * back with the first request after it. On timeout the server answers 200
 * with the unchanged value and ETag; more than GCP_FAST_ANSWERS_MAX such
 * answers in a row within GCP_FAST_ANSWER_USEC of the request mean the server
 * does not hang, and the watch then waits max(poll_interval, 100 ms) between
 * requests. A failed request (transport error, HTTP status other than 200,
 * bad body) is retried after gcp_backoff_usec(), never sooner than
 * GCP_RETRY_MIN_USEC.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "shared/macro.h"

#define GCP_METADATA_PREFIX "/computeMetadata/v1/"
#define GCP_FLAVOR_HEADER "Metadata-Flavor: Google"
#define GCP_MAX_BODY 4096                             /* cap on every watched body */
#define GCP_SCRIPT_MAX_BODY ((size_t) 64 * 1024)      /* cap on the shutdown-script attribute */
#define GCP_SCRIPT_TIMEOUT_USEC (2 * USEC_PER_SEC)    /* the longest a preempt notice waits for it */
#define GCP_ETAG_MAX 64
#define GCP_INSTANCE_ID_MAX 64
#define GCP_INSTANCE_ID_TRIES 3
#define GCP_PREEMPT_LEAD_USEC (30 * USEC_PER_SEC)     /* ACPI soft-off to power-off */
#define GCP_RETRY_MIN_USEC (200 * USEC_PER_MSEC)      /* never retry sooner than this */
#define GCP_BACKOFF_CAP_USEC (5 * USEC_PER_SEC)
#define GCP_FAST_ANSWER_USEC (100 * USEC_PER_MSEC)
#define GCP_FAST_ANSWERS_MAX 3
#define GCP_WAIT_SEC_MAX 3600

typedef enum GcpMaintenance {
        GCP_MAINTENANCE_NONE,
        GCP_MAINTENANCE_MIGRATE,   /* MIGRATE_ON_HOST_MAINTENANCE */
        GCP_MAINTENANCE_TERMINATE, /* TERMINATE_ON_HOST_MAINTENANCE */
        _GCP_MAINTENANCE_MAX,
        _GCP_MAINTENANCE_INVALID = -EINVAL,
} GcpMaintenance;

/** gcp_maintenance_to_string() - GCP's own word: "NONE", "MIGRATE_ON_HOST_MAINTENANCE", ... */
const char *gcp_maintenance_to_string(GcpMaintenance m);

/**
 * gcp_parse_preempted() - an instance/preempted body, "TRUE" or "FALSE"
 * (trailing whitespace allowed), into *@ret. -EBADMSG for anything else.
 */
int gcp_parse_preempted(const char *body, size_t size, bool *ret);

/**
 * gcp_parse_maintenance() - an instance/maintenance-event body, "NONE",
 * "MIGRATE_ON_HOST_MAINTENANCE" or "TERMINATE_ON_HOST_MAINTENANCE" (trailing
 * whitespace allowed). -EBADMSG for anything else.
 */
int gcp_parse_maintenance(const char *body, size_t size, GcpMaintenance *ret);

/**
 * gcp_parse_etag() - the ETag response header @value (trimmed; surrounding
 * double quotes are dropped) into @ret (@size >= GCP_ETAG_MAX + 1). -EINVAL
 * for NULL, empty or anything but visible ASCII, -ERANGE when longer than
 * GCP_ETAG_MAX.
 */
int gcp_parse_etag(const char *value, char *ret, size_t size);

/**
 * gcp_parse_instance_id() - an instance/id body (GCP: a decimal number; any
 * run of 1..GCP_INSTANCE_ID_MAX visible ASCII is taken, trailing whitespace
 * dropped) as a new string. -EBADMSG, -ENOMEM.
 */
int gcp_parse_instance_id(const char *body, size_t size, char **ret);

/**
 * gcp_parse_shutdown_script() - the instance/attributes/shutdown-script body
 * as a new string, or NULL in *@ret for an empty one. -EBADMSG for a body
 * with a NUL byte or over GCP_SCRIPT_MAX_BODY, -ENOMEM.
 */
int gcp_parse_shutdown_script(const char *body, size_t size, char **ret);

/**
 * gcp_watch_url() - BASE + GCP_METADATA_PREFIX + @path, and when @wait_sec >
 * 0 "?wait_for_change=true" with "&last_etag=E" (percent-encoded) when @etag
 * is not empty and "&timeout_sec=S". -EINVAL, -ENOMEM.
 */
int gcp_watch_url(const char *base, const char *path, const char *etag, unsigned wait_sec, char **ret);

/**
 * gcp_preempt_event() - the EVENT_PREEMPT of a preemption first seen at
 * wall-clock @detect_usec in an answer carrying @etag (may be NULL): deadline
 * @detect_usec + GCP_PREEMPT_LEAD_USEC, detail "preempted", id
 * "gcp:preempted:ETAG" ("gcp:preempted:tSECONDS" without an ETag), with
 * ":N" appended for the N-th (N >= 2) preemption this watcher saw, so a
 * FALSE -> TRUE -> FALSE -> TRUE sequence is two notices.
 */
void gcp_preempt_event(const char *etag, uint64_t detect_usec, unsigned generation, NoticeEvent *ret);

/**
 * gcp_maintenance_event() - the EVENT_MAINTENANCE for @m (not NONE: -EINVAL)
 * first seen as above: detail GCP's word, deadline 0 (GCP gives none), id
 * "gcp:maintenance-event:WORD:ETAG" (or ":tSECONDS"), ":N" as above.
 */
int gcp_maintenance_event(GcpMaintenance m, const char *etag, uint64_t detect_usec, unsigned generation,
                          NoticeEvent *ret);

/**
 * gcp_backoff_usec() - the delay before a retry after @failures (>= 1) failed
 * requests in a row: poll_interval * 2^(failures - 1), at least
 * GCP_RETRY_MIN_USEC, at most max(poll_interval, GCP_BACKOFF_CAP_USEC).
 */
uint64_t gcp_backoff_usec(uint64_t poll_interval_usec, unsigned failures);

/** gcp_wait_sec() - timeout_sec for a gcp_wait of @wait_usec: whole seconds rounded up, 1..GCP_WAIT_SEC_MAX. */
unsigned gcp_wait_sec(uint64_t wait_usec);
