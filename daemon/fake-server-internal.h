/* SPDX-License-Identifier: MIT */
/*
 * fake-server-internal.h - what fake-server.c (the HTTP plumbing: MHD under
 * the uv loop, connections, request bodies) shares with the per-cloud fakes
 * (fake-aws.c, ...). A cloud's fake is a FakeCloud table: it answers requests
 * with that cloud's real paths and rules and keeps its own state in
 * FakeServer.state. Private to the fake server; manager uses fake-server.h.
 */
#pragma once

#include <json-c/json.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "fake-server.h"
#include "shared/macro.h"

#define FAKE_BODY_MAX ((size_t) 16 * 1024) /* request bodies beyond this get 413 */
#define FAKE_WAITERS_MAX 32U /* parked requests at most; MHD's connection limit is 64 */
#define FAKE_TOPIC_ALL (~0U)

/* A request parked by fake_request_suspend() (GCP's hanging GETs). */
typedef struct FakeWaiter {
        struct MHD_Connection *connection; /* NULL: the slot is free */
        unsigned topic;
        uint64_t deadline_usec;            /* monotonic */
        bool resumed;
        bool timed_out;
} FakeWaiter;

typedef struct FakeRequest {
        struct MHD_Connection *connection;
        const char *url;    /* path only; the query is read with fake_request_arg() */
        const char *method;
        const char *body;   /* NUL-terminated; "" when there was none */
        size_t body_size;
} FakeRequest;

typedef struct FakeCloud {
        CloudKind cloud;
        const char *server_header; /* the Server: header the real service sends */
        const char *events;        /* the event words set_notice() takes, for messages */
        size_t state_size;         /* zeroed memory at FakeServer.state */
        int (*init)(FakeServer *s);
        void (*done)(FakeServer *s);
        enum MHD_Result (*handle)(FakeServer *s, const FakeRequest *req);
        /* @event is the cloud's own word (AWS: terminate, stop, hibernate, rebalance); -EINVAL if unknown. */
        int (*set_notice)(FakeServer *s, const char *event, uint64_t time_usec);
        void (*clear_notice)(FakeServer *s);
        const char *(*instance_id)(FakeServer *s);
} FakeCloud;

struct FakeServer {
        uv_loop_t *loop;
        const FakeCloud *vt;
        void *state;
        struct MHD_Daemon *mhd;
        uv_poll_t poll;   /* MHD's epoll fd */
        uv_timer_t timer; /* MHD_get_timeout() */
        bool poll_initialized;
        bool timer_initialized;
        unsigned n_handles; /* uv handles not yet closed; @s is freed when it drops to 0 */
        bool closing;

        uint16_t port;
        char url[64];
        uint64_t requests;

        /* Parked requests, and a timer for the earliest deadline among them. */
        FakeWaiter waiters[FAKE_WAITERS_MAX];
        unsigned n_waiters;
        uv_timer_t wait_timer;
        bool wait_timer_initialized;
};

extern const FakeCloud fake_cloud_aws;
extern const FakeCloud fake_cloud_alibaba;
extern const FakeCloud fake_cloud_gcp;

/** fake_gcp_set_shutdown_script() - serve @script (NULL: 404) as instance/attributes/shutdown-script. */
int fake_gcp_set_shutdown_script(FakeServer *s, const char *script);
extern const FakeCloud fake_cloud_azure;

uint64_t fake_now_monotonic_usec(void);
uint64_t fake_now_realtime_usec(void);
/** RFC 3339 in UTC with seconds, as AWS writes it: 2026-11-27T13:20:00Z. */
int fake_format_time(uint64_t usec, char *buf, size_t size);

/** A request header, or NULL. */
const char *fake_request_header(const FakeRequest *req, const char *name);
/** A query argument, or NULL. */
const char *fake_request_arg(const FakeRequest *req, const char *name);

/**
 * fake_request_suspend() - park @req (MHD_suspend_connection()) until
 * fake_resume() wakes @topic or @deadline_usec (monotonic) passes; then the
 * cloud's handle() is called again for it and fake_request_resumed() says
 * so. Return MHD_YES from handle() after it. -EBUSY when FAKE_WAITERS_MAX
 * requests are parked already, -ESHUTDOWN while the server closes.
 */
int fake_request_suspend(FakeServer *s, const FakeRequest *req, unsigned topic, uint64_t deadline_usec);
/**
 * fake_request_resumed() - for a request handle() sees: 0 if it was not
 * parked, 1 if fake_resume() woke it, 2 if its deadline passed; it is
 * forgotten either way.
 */
int fake_request_resumed(FakeServer *s, const FakeRequest *req);
/** fake_resume() - wake every request parked on @topic (FAKE_TOPIC_ALL: all) and let MHD answer them. */
void fake_resume(FakeServer *s, unsigned topic);

/** fake_reply() - queue an answer; @header/@value add one more header (or NULL). */
enum MHD_Result fake_reply(FakeServer *s, const FakeRequest *req, unsigned status, const char *type,
                           const char *body, size_t size, const char *header, const char *value);
enum MHD_Result fake_reply_text(FakeServer *s, const FakeRequest *req, const char *text);
/** fake_reply_json() - 200 with @o serialised by json-c (never hand-written). */
enum MHD_Result fake_reply_json(FakeServer *s, const FakeRequest *req, json_object *o);
/** fake_reply_error() - @status with a small error page; @allow sets Allow: for 405. */
enum MHD_Result fake_reply_error(FakeServer *s, const FakeRequest *req, unsigned status, const char *allow);

static inline void json_unrefp(json_object **o) {
        if (*o)
                (void) json_object_put(*o);
}
