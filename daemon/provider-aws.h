/* SPDX-License-Identifier: MIT */
/*
 * provider-aws.h - the AWS instance metadata (IMDSv2) watcher's pure parts,
 * exposed for unit tests, and the IMDS poll engine it runs on, which
 * provider-alibaba.c shares: Alibaba Cloud's metadata service copies IMDS
 * (the same /latest/meta-data/ tree and PUT /latest/api/token session
 * tokens, under other header names). The watcher itself is reached through
 * provider_aws_vtable (provider.h). The parsers do no I/O and never log.
 *
 * The poll cycle, one every poll_interval on a monotonic uv timer, runs its
 * requests one after the other so a single keep-alive connection serves it:
 *
 *   [PUT  /latest/api/token]                        when no token or it expires soon
 *   [GET  /latest/meta-data/instance-id]            until known, at most AWS_INSTANCE_ID_TRIES cycles
 *    GET  the flavour's endpoints that are due, in order; for AWS:
 *           /latest/meta-data/spot/instance-action               every cycle
 *          [/latest/meta-data/events/recommendations/rebalance]  at most every AWS_REBALANCE_INTERVAL_USEC
 *          [/latest/meta-data/events/maintenance/scheduled]      at most every AWS_MAINTENANCE_INTERVAL_USEC
 *          [/latest/meta-data/autoscaling/target-lifecycle-state]   every cycle, only with aws_asg = yes
 *
 * Idle polling costs CPU per request, and only instance-action is the
 * two-minute notice; a rebalance recommendation and scheduled maintenance
 * come minutes to days ahead. So those two are polled at most every 5 s and
 * every 60 s, unless their kind (rebalance, maintenance) is listed in
 * [daemon] events, where they start the plan and are polled every cycle
 * like instance-action. The first cycle after start polls every endpoint. An
 * endpoint whose last poll failed (transport error, unexpected status, bad
 * body) is polled again in the next cycle; one that answered (200 or 404)
 * waits its interval from the start of that cycle.
 *
 * A 404 on an endpoint means "nothing there" and is no error (outside an
 * Auto Scaling group the lifecycle state is always 404).
 *
 * The token is kept for the TTL the answer grants and fetched again once less
 * than max(TTL / 10, 2 poll intervals) of it remains, so exactly one PUT
 * happens per TTL and a token never expires between two polls. A 401 on a
 * GET drops the token, fetches one and retries that GET, once per cycle.
 *
 * A cycle that fails (transport error, unexpected status, bad body) delays
 * the next one: poll_interval * 2^n after the n-th failure in a row, capped at
 * max(poll_interval, AWS_BACKOFF_CAP_USEC), so a notice that appears during an
 * outage is seen at most ~5 s after the service recovers; the first good
 * cycle resets it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "event.h"
#include "shared/macro.h"

typedef struct Provider Provider;

#define AWS_TOKEN_TTL_MAX_SEC 21600        /* what IMDSv2 allows */
#define AWS_MAX_BODY 4096                  /* cap on a metadata response body, unless the endpoint says more */
#define AWS_MAINTENANCE_MAX_BODY 16384     /* events/maintenance/scheduled may list a few events */
#define AWS_JSON_MAX_DEPTH 8               /* json_tokener nesting limit */
#define AWS_INSTANCE_ID_MAX 64
#define AWS_INSTANCE_ID_TRIES 3
#define AWS_BACKOFF_CAP_USEC (5 * USEC_PER_SEC)
#define AWS_IMDS_ENDPOINTS_MAX 8           /* endpoints a flavour may poll per cycle */
#define AWS_IMDS_EVENTS_MAX 16             /* notices one answer may carry */
#define AWS_REBALANCE_INTERVAL_USEC (5 * USEC_PER_SEC)    /* unless rebalance is in [daemon] events */
#define AWS_MAINTENANCE_INTERVAL_USEC (60 * USEC_PER_SEC) /* unless maintenance is in [daemon] events */

/**
 * aws_parse_instance_action() - parse a spot/instance-action body,
 * {"action": "terminate"|"stop"|"hibernate", "time": "<RFC 3339>"}, into an
 * event of that kind with deadline_usec = time, id "aws:spot:ACTION:TIME"
 * (TIME normalised to UTC seconds), detail = the action, cloud = AWS.
 * Other members are ignored. A time in the past is accepted (hibernation
 * gives no lead; the plan gets what is left). -EBADMSG for anything else
 * (not JSON, not an object, NULs, nesting deeper than AWS_JSON_MAX_DEPTH,
 * trailing data, missing or mistyped members, unknown action, bad time).
 * @ret is written only on success.
 */
int aws_parse_instance_action(const char *body, size_t size, NoticeEvent *ret);

/**
 * aws_parse_rebalance() - parse an events/recommendations/rebalance body,
 * {"noticeTime": "<RFC 3339>"}, into EVENT_REBALANCE with id
 * "aws:rebalance:TIME", detail "rebalance", deadline_usec 0 (the cloud gives
 * none). -EBADMSG as above.
 */
int aws_parse_rebalance(const char *body, size_t size, NoticeEvent *ret);

/**
 * aws_parse_event_time() - the time format of scheduled events,
 * "21 Jan 2019 09:00:43 GMT" (day of one or two digits, English month
 * abbreviation, always GMT), into wall-clock usec. -EINVAL for anything else,
 * including impossible dates.
 */
int aws_parse_event_time(const char *s, uint64_t *ret_usec);

/**
 * aws_parse_maintenance() - parse an events/maintenance/scheduled body, a
 * JSON array of {"Code", "Description", "EventId", "NotBefore", "NotAfter",
 * "State"}. Each event whose State is "active" becomes EVENT_MAINTENANCE with
 * id "aws:maintenance:EVENTID", detail = Code (instance-stop,
 * instance-retirement, instance-reboot, system-reboot, system-maintenance, or
 * whatever AWS adds), deadline_usec = NotBefore. "canceled", "completed" and
 * unknown states are skipped. Code, EventId and State must be strings,
 * NotBefore must be a valid time for an active event, and the optional
 * members must be strings when present. Up to @n_max events are written to
 * @ret_events (later ones are dropped), their number to *@ret_n. An empty
 * body counts as an empty list. -EBADMSG for anything else; nothing is
 * written then.
 */
int aws_parse_maintenance(const char *body, size_t size, NoticeEvent *ret_events, size_t n_max, size_t *ret_n);

/**
 * aws_parse_lifecycle_state() - parse an autoscaling/target-lifecycle-state
 * body: one word of letters and ':' ("InService", "Terminated",
 * "Warmed:Stopped", ...), a trailing newline allowed. *@ret_terminated is
 * true for "Terminated" and "Warmed:Terminated", false for any other word.
 * -EBADMSG for a body that is no such word.
 */
int aws_parse_lifecycle_state(const char *body, size_t size, bool *ret_terminated);

/**
 * aws_asg_event() - the notice for an Auto Scaling group's "Terminated":
 * EVENT_TERMINATE with id "aws:asg:terminated:INSTANCE_ID" (the same across
 * daemon restarts), or "aws:asg:terminated:TIME" with @first_seen_usec (when
 * the state was first seen, UTC seconds) while the instance id is not known,
 * so every poll that serves the same state reports the same notice; detail
 * "Terminated", deadline_usec 0 (AWS gives none; the plan uses
 * default_deadline).
 */
void aws_asg_event(const char *instance_id, uint64_t first_seen_usec, NoticeEvent *ret);

/**
 * aws_parse_token_ttl() - the value of the X-aws-ec2-metadata-token-ttl-seconds
 * response header: decimal seconds in 1..AWS_TOKEN_TTL_MAX_SEC, in usec.
 * -EINVAL for NULL or garbage, -ERANGE out of range.
 */
int aws_parse_token_ttl(const char *value, uint64_t *ret_usec);

/**
 * aws_token_refresh_margin_usec() - how long before expiry the token is
 * fetched again: max(@ttl_usec / 10, 2 * @poll_interval_usec).
 */
uint64_t aws_token_refresh_margin_usec(uint64_t ttl_usec, uint64_t poll_interval_usec);

/**
 * aws_backoff_usec() - the delay before the next cycle after @failures (>= 1)
 * failed cycles in a row: min(@poll_interval_usec << failures,
 * max(@poll_interval_usec, AWS_BACKOFF_CAP_USEC)).
 */
uint64_t aws_backoff_usec(uint64_t poll_interval_usec, unsigned failures);

/* ---- the IMDS poll engine ------------------------------------------------ */

/*
 * One GET of the cycle. @parse turns a 200 answer into notices; it gets the
 * provider so it may keep state across polls (e.g. when a state was first
 * seen). @absent, if set, hears of a 404 ("nothing there"), which is never an
 * error. An endpoint with @min_interval_usec is polled at most that often
 * (see the cycle above) unless config->events_mask has one of the
 * @every_cycle_events bits.
 */
typedef struct AwsImdsEndpoint {
        const char *path;                         /* "/latest/meta-data/spot/instance-action" */
        const char *what;                         /* for on_poll and debug logs */
        size_t max_body;                          /* 0: AWS_MAX_BODY */
        bool (*enabled)(const Config *config);    /* NULL: always polled */
        uint64_t min_interval_usec;               /* 0: every cycle */
        unsigned every_cycle_events;              /* EVENT_MASK()s that make it every cycle after all */
        /* Up to @n_max notices into @events and their count into *@ret_n; -EBADMSG with a message in @err. */
        int (*parse)(Provider *p, const char *body, size_t size, NoticeEvent *events, size_t n_max,
                     size_t *ret_n, char *err, size_t errsz);
        void (*absent)(Provider *p);
} AwsImdsEndpoint;

/* What differs between IMDS and its copies. */
typedef struct AwsImdsFlavor {
        const char *name;                         /* debug log prefix: "aws" */
        const char *token_header;                 /* "X-aws-ec2-metadata-token" */
        const char *token_ttl_header;             /* "X-aws-ec2-metadata-token-ttl-seconds" */
        /* Whether GETs carry a session token; NULL: always. */
        bool (*token_enabled)(const Config *config);
        /* Whether to go on without a token when the PUT is refused (403, 404, 405); NULL: never. */
        bool (*tokenless_allowed)(const Config *config);
        /* Why the PUT was needed, for "HTTP 403, and <tokenless_hint>". */
        const char *tokenless_hint;
        /* The setting that turns tokens on, for the message when a tokenless GET gets 401. */
        const char *token_hint;
        const AwsImdsEndpoint *endpoints;         /* polled in this order, after token and instance id */
        size_t n_endpoints;                       /* at most AWS_IMDS_ENDPOINTS_MAX */
} AwsImdsFlavor;

typedef struct AwsImds AwsImds;

/**
 * aws_imds_new() - an engine polling @p->base_url for @p, with @p's config,
 * http and callbacks: notices go to p->cb.on_event on every poll that serves
 * them, each cycle ends with one p->cb.on_poll, the instance id lands in
 * p->instance_id. @flavor must outlive it. -EINVAL for a flavour with too
 * many endpoints, -ENOMEM, or what uv_timer_init() returns.
 */
int aws_imds_new(Provider *p, const AwsImdsFlavor *flavor, AwsImds **ret);
/** aws_imds_start() - the first cycle runs from the loop at once. Idempotent. */
int aws_imds_start(AwsImds *m);
/** aws_imds_stop() - cancel the running request and the timer; no callbacks afterwards. Idempotent. */
void aws_imds_stop(AwsImds *m);
/**
 * aws_imds_close() - stop and let go of @p; the memory goes in the timer's
 * close callback, so @p may be freed at once. NULL-safe; returns NULL.
 */
AwsImds *aws_imds_close(AwsImds *m);
