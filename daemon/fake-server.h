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

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "event.h"
#include "shared/macro.h"

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

/*
 * The instance's own credentials the fake hands out: AWS's instance role
 * "spotwatchd-fake-role" (iam/security-credentials/), GCP's default service
 * account token, Azure's managed identity token. Until told otherwise it
 * serves SPOTWATCHD_FAKE_ACCESS_KEY_ID, SPOTWATCHD_FAKE_SECRET_ACCESS_KEY and
 * SPOTWATCHD_FAKE_SESSION_TOKEN from the environment when the first two are
 * set (else fixed fake keys), SPOTWATCHD_FAKE_BEARER_TOKEN (else a fixed
 * fake token), each expiring FAKE_CREDENTIALS_LIFETIME_USEC after the
 * request that fetched it.
 */
#define FAKE_ROLE_NAME "spotwatchd-fake-role"
#define FAKE_CREDENTIALS_LIFETIME_USEC (3600 * USEC_PER_SEC)
#define FAKE_CREDENTIALS_LIFETIME_MAX_USEC (24 * 3600 * USEC_PER_SEC)
#define FAKE_CREDENTIALS_VALUE_MAX 2048 /* bytes of one key or token */

typedef struct FakeCredentials {
        bool none;                     /* no role / service account / identity at all */
        const char *access_key_id;     /* AWS: required unless @none */
        const char *secret_access_key; /* AWS: required unless @none */
        const char *session_token;     /* AWS: NULL serves an empty Token */
        const char *token;             /* GCP, Azure: the bearer token; required unless @none */
        /* Each answer's Expiration (expires_in, expires_on) is this long after it: 0..MAX. */
        uint64_t lifetime_usec;
} FakeCredentials;

/**
 * fake_server_set_credentials() - serve @c (copied) from now on. -EINVAL for
 * a value that is missing or not 1..FAKE_CREDENTIALS_VALUE_MAX bytes of
 * printable ASCII without spaces, a value this cloud does not serve (a key
 * pair on GCP or Azure, a bearer token on AWS; Alibaba serves none), or a
 * lifetime over the maximum; -ENOMEM.
 */
int fake_server_set_credentials(FakeServer *s, const FakeCredentials *c);
/** fake_server_credential_fetches() - credential documents asked for so far (whatever the answer). */
uint64_t fake_server_credential_fetches(FakeServer *s);

uint64_t fake_server_requests(FakeServer *s);
/**
 * fake_server_close() - stop serving at once (open connections are dropped);
 * @s is freed from the loop's close callbacks. NULL-safe.
 */
void fake_server_close(FakeServer *s);
