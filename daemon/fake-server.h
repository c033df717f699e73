/* SPDX-License-Identifier: MIT */
/*
 * fake-server.h - the --fake-metadata HTTP server: libmicrohttpd in external
 * epoll mode, its epoll fd under a uv_poll_t and its timeout on a uv_timer_t
 * of the daemon's loop (no threads). Serves a cloud's real metadata paths
 * with its real rules (AWS: IMDSv2 only, a token is required on every GET)
 * on loopback. Only manager drives it; it knows nothing of plans.
 */
#pragma once

#include <stdint.h>
#include <uv.h>

#include "event.h"

typedef struct FakeServer FakeServer;

/**
 * fake_server_new() - listen on @address (IPv4 or IPv6 literal; loopback
 * only, -EADDRNOTAVAIL otherwise) and @port (0 = ephemeral). Only
 * CLOUD_AWS for now (-EOPNOTSUPP for the rest).
 */
int fake_server_new(uv_loop_t *loop, CloudKind cloud, const char *address, uint16_t port, FakeServer **ret);
uint16_t fake_server_port(FakeServer *s);
/** fake_server_url() - "http://127.0.0.1:PORT", static to @s. */
const char *fake_server_url(FakeServer *s);

/**
 * fake_server_set_notice() - from now on serve a notice: @action is the
 * cloud's word (AWS: terminate, stop, hibernate), @time_usec its wall-clock
 * deadline. -EINVAL for an action the cloud does not have.
 */
int fake_server_set_notice(FakeServer *s, const char *action, uint64_t time_usec);
void fake_server_clear_notice(FakeServer *s);
/** fake_server_set_rebalance() - AWS rebalance recommendation with its noticeTime. */
int fake_server_set_rebalance(FakeServer *s, uint64_t time_usec);

uint64_t fake_server_requests(FakeServer *s);
void fake_server_close(FakeServer *s);
