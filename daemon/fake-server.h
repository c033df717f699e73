/* SPDX-License-Identifier: MIT */
/*
 * fake-server.h - the --fake-metadata HTTP server: libmicrohttpd in external
 * epoll mode, its epoll fd under a uv_poll_t and its timeout on a uv_timer_t
 * of the daemon's loop (no threads). Serves a cloud's real metadata paths
 * with its real rules (AWS: IMDSv2 tokens; GCP: Metadata-Flavor and hanging
 * GETs with ETags; Azure: Metadata: true, Scheduled Events and StartRequests,
 * 5 requests/s; Alibaba: termination-time, optional tokens) on loopback. Only
 * manager drives it; it knows nothing of plans.
 */
#pragma once

#include <stdint.h>
#include <uv.h>

#include "event.h"

typedef struct FakeServer FakeServer;

/**
 * fake_server_new() - listen on @address (IPv4 or IPv6 literal; loopback
 * only: 127.0.0.0/8 or ::1, -EADDRNOTAVAIL for any other address, -EINVAL
 * for NULL or a name) and @port (0 = ephemeral); -EOPNOTSUPP for a cloud
 * without a fake (CLOUD_AUTO). When MHD cannot start, the errno it left
 * (e.g. -EADDRINUSE), else -EIO.
 */
int fake_server_new(uv_loop_t *loop, CloudKind cloud, const char *address, uint16_t port, FakeServer **ret);
uint16_t fake_server_port(FakeServer *s);
/** fake_server_url() - "http://127.0.0.1:PORT" (or "http://[::1]:PORT"), static to @s. */
const char *fake_server_url(FakeServer *s);
/** fake_server_instance_id() - the instance id the fake serves (AWS "i-0fake0000000000001"), static. */
const char *fake_server_instance_id(FakeServer *s);

/**
 * fake_server_set_notice() - from now on serve a notice: @event is the
 * cloud's own word (fake_server_events(): AWS terminate, stop, hibernate,
 * rebalance, maintenance, asg-terminated; GCP preempt, maintenance, migrate;
 * Azure preempt, terminate, reboot, redeploy, freeze; Alibaba terminate),
 * @time_usec its wall-clock time (0: the cloud's usual lead; GCP gives no
 * time). -EINVAL for a word the cloud does not have.
 */
int fake_server_set_notice(FakeServer *s, const char *event, uint64_t time_usec);
/** fake_server_clear_notice() - serve no notice of any kind any more. */
void fake_server_clear_notice(FakeServer *s);
/** fake_server_events() - the words fake_server_set_notice() takes, "a, b, c", for messages. */
const char *fake_server_events(FakeServer *s);

uint64_t fake_server_requests(FakeServer *s);
/**
 * fake_server_close() - stop serving at once (open connections are dropped);
 * @s is freed from the loop's close callbacks. NULL-safe.
 */
void fake_server_close(FakeServer *s);
