/* SPDX-License-Identifier: MIT */
/*
 * provider-aws.h - the AWS instance metadata (IMDSv2) watcher's pure parts,
 * exposed for unit tests: the parsers of spot/instance-action, the rebalance
 * recommendation and the token TTL header, and the constants of the poll
 * cycle. The watcher itself is reached through provider_aws_vtable
 * (provider.h). Nothing here does I/O or logs.
 *
 * The poll cycle, one every poll_interval on a monotonic uv timer, runs its
 * requests one after the other so a single keep-alive connection serves it:
 *
 *   [PUT  /latest/api/token]                        when no token or it expires soon
 *   [GET  /latest/meta-data/instance-id]            until known, at most AWS_INSTANCE_ID_TRIES cycles
 *    GET  /latest/meta-data/spot/instance-action
 *    GET  /latest/meta-data/events/recommendations/rebalance
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

#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "shared/macro.h"

#define AWS_TOKEN_TTL_MAX_SEC 21600        /* what IMDSv2 allows */
#define AWS_MAX_BODY 4096                  /* cap on every metadata response body */
#define AWS_JSON_MAX_DEPTH 8               /* json_tokener nesting limit */
#define AWS_INSTANCE_ID_MAX 64
#define AWS_INSTANCE_ID_TRIES 3
#define AWS_BACKOFF_CAP_USEC (5 * USEC_PER_SEC)

/**
 * aws_parse_instance_action() - parse a spot/instance-action body,
 * {"action": "terminate"|"stop"|"hibernate", "time": "<RFC 3339>"}, into an
 * event of that kind with deadline_usec = time, id "aws:spot:ACTION:TIME"
 * (TIME normalised to UTC seconds), detail = the action, cloud = AWS.
 * Other members are ignored. -EBADMSG for anything else (not JSON, not an
 * object, NULs, nesting deeper than AWS_JSON_MAX_DEPTH, trailing data,
 * missing or mistyped members, unknown action, bad time). @ret is written
 * only on success.
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
