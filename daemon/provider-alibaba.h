/* SPDX-License-Identifier: MIT */
/*
 * provider-alibaba.h - the Alibaba Cloud ECS metadata watcher's pure part,
 * exposed for unit tests: the parser of instance/spot/termination-time. The
 * watcher itself is reached through provider_alibaba_vtable (provider.h);
 * it runs the IMDS poll engine of provider-aws.h, since ECS's metadata
 * service (http://100.100.100.200) copies IMDS:
 *
 *   [PUT  /latest/api/token]                             hardened mode only (alibaba_token = yes)
 *   [GET  /latest/meta-data/instance-id]                 until known
 *    GET  /latest/meta-data/instance/spot/termination-time
 *
 * In hardened mode the token comes with X-aliyun-ecs-metadata-token-ttl-seconds
 * (token_ttl), goes out as X-aliyun-ecs-metadata-token on every GET, and is
 * refreshed, retried after a 401 and backed off exactly as AWS's (see
 * provider-aws.h). In normal mode no token is ever asked for. Nothing here
 * does I/O or logs.
 */
#pragma once

#include <stddef.h>

#include "event.h"

#define ALIBABA_TIME_MAX 64

/**
 * alibaba_parse_termination_time() - parse a spot/termination-time body, a
 * UTC time "2026-11-27T13:20:00Z" (about 5 minutes ahead; any RFC 3339 time
 * is taken, trailing whitespace is ignored), into EVENT_TERMINATE with
 * deadline_usec = that time, id "alibaba:spot:TIME" (TIME normalised to UTC
 * seconds), detail "termination-time", cloud = ALIBABA. -EBADMSG for anything
 * else (empty, NULs or control bytes, longer than ALIBABA_TIME_MAX, not a
 * time). @ret is written only on success.
 */
int alibaba_parse_termination_time(const char *body, size_t size, NoticeEvent *ret);
