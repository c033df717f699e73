/* SPDX-License-Identifier: MIT */
/*
 * fake-server-internal.h - what fake-server.c (the HTTP plumbing: MHD under
 * the uv loop, connections, request bodies) shares with the per-cloud fakes
 * (fake-aws.c, ...), and the helpers more than one fake needs: answers, the
 * clouds' time formats, random ids and the IMDS session-token ring. A cloud's
 * fake is a FakeCloud table: it answers requests with that cloud's real paths
 * and rules and keeps its own state in FakeServer.state. Private to the fake
 * server; manager uses fake-server.h.
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

/* Which instance credentials a cloud's fake serves. */
typedef enum FakeCredsKind {
        FAKE_CREDS_NONE,     /* zeroed: none (Alibaba) */
        FAKE_CREDS_KEY_PAIR, /* AWS instance role */
        FAKE_CREDS_BEARER,   /* GCP service account, Azure managed identity */
        _FAKE_CREDS_KIND_MAX,
        _FAKE_CREDS_KIND_INVALID = -EINVAL,
} FakeCredsKind;

typedef struct FakeCloud {
        CloudKind cloud;
        FakeCredsKind creds_kind;
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

/* What fake_server_set_credentials() set, owned; the clouds' fakes serve it. */
typedef struct FakeCreds {
        bool none;
        char *access_key_id;
        char *secret_access_key;
        char *session_token;     /* NULL: an empty Token */
        char *token;             /* the bearer token */
        uint64_t lifetime_usec;
        unsigned raw_status;     /* non-zero: fake_server_set_credentials_reply() */
        char *raw_body;
        uint64_t fetches;
} FakeCreds;

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

        FakeCreds creds;
};

extern const FakeCloud fake_cloud_aws;
/**
 * fake_aws_set_v1_only() - for tests: with @on, behave like an IMDS (or an
 * emulator) without session tokens: the token PUT answers 404 and GETs need
 * no token. -EOPNOTSUPP for another cloud's fake.
 */
int fake_aws_set_v1_only(FakeServer *s, bool on);
extern const FakeCloud fake_cloud_alibaba;
extern const FakeCloud fake_cloud_gcp;

/** fake_gcp_set_shutdown_script() - serve @script (NULL: 404) as instance/attributes/shutdown-script. */
int fake_gcp_set_shutdown_script(FakeServer *s, const char *script);
extern const FakeCloud fake_cloud_azure;

/**
 * fake_server_set_credentials_reply() - for tests of the credentials' callers:
 * from now on the credential document (AWS's role document, GCP's and
 * Azure's token) is answered @status with @body as it is (JSON or garbage,
 * as application/json); @body NULL goes back to the normal answers. -ENOMEM.
 */
int fake_server_set_credentials_reply(FakeServer *s, unsigned status, const char *body);

/**
 * fake_creds_reply_raw() - for a credential document request: count it, and
 * queue the answer fake_server_set_credentials_reply() set. Returns true when
 * it did (with MHD's answer in *@ret), false to serve normally.
 */
bool fake_creds_reply_raw(FakeServer *s, const FakeRequest *req, enum MHD_Result *ret);

uint64_t fake_now_monotonic_usec(void);
uint64_t fake_now_realtime_usec(void);

/* The ways the clouds write a time, all UTC with seconds, in English whatever the locale. */
typedef enum FakeTimeFormat {
        FAKE_TIME_RFC3339,   /* "2026-11-27T13:20:00Z": AWS spot and rebalance, Alibaba */
        FAKE_TIME_AWS_EVENT, /* "27 Nov 2026 13:20:00 GMT": AWS scheduled events */
        FAKE_TIME_RFC1123,   /* "Fri, 27 Nov 2026 13:20:00 GMT": Azure Scheduled Events */
        _FAKE_TIME_MAX,
        _FAKE_TIME_INVALID = -EINVAL,
} FakeTimeFormat;

/** fake_format_time() - wall-clock @usec as @format into @buf. -EINVAL, -ENOBUFS when @size is too small. */
int fake_format_time(uint64_t usec, FakeTimeFormat format, char *buf, size_t size);

/**
 * fake_random_hex() - @digits random lower-case hex digits and a NUL into
 * @buf. -ENOBUFS when @size cannot hold them, -EIO without randomness.
 */
int fake_random_hex(char *buf, size_t size, size_t digits);

/* ---- IMDS-style session tokens (AWS, Alibaba) ------------------------------ */

#define FAKE_TOKENS_MAX 64
#define FAKE_TOKEN_SIZE 64          /* a token's text and its NUL */
#define FAKE_TOKEN_TTL_MAX 21600U   /* seconds; what IMDS allows */

typedef struct FakeToken {
        char value[FAKE_TOKEN_SIZE];
        uint64_t expire_usec; /* monotonic; 0 = slot unused */
} FakeToken;

/* The tokens handed out, a ring: a new token replaces the oldest. Zeroed memory is an empty ring. */
typedef struct FakeTokenRing {
        FakeToken tokens[FAKE_TOKENS_MAX];
        size_t next;
} FakeTokenRing;

/**
 * fake_token_parse_ttl() - a TTL request header as IMDS takes it: decimal
 * seconds 1..FAKE_TOKEN_TTL_MAX. -EINVAL, -ERANGE.
 */
int fake_token_parse_ttl(const char *s, unsigned *ret);

/**
 * fake_token_put() - answer PUT /latest/api/token: 403 when it came through
 * a proxy (X-Forwarded-For), 400 without a valid @ttl_header, else a new
 * token written by @make (500 when it cannot) that @ring keeps for the TTL,
 * as text/plain; with @echo_ttl the answer carries @ttl_header with the TTL
 * granted, as AWS's does.
 */
enum MHD_Result fake_token_put(FakeServer *s, const FakeRequest *req, FakeTokenRing *ring,
                               const char *ttl_header, bool echo_ttl, bool (*make)(char *buf, size_t size));

/** fake_token_valid() - @value is a token of @ring that has not expired (NULL and "" never are). */
bool fake_token_valid(const FakeTokenRing *ring, const char *value);

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

/**
 * fake_reply_headers() - queue an answer with Content-Type @type, the cloud's
 * Server: header and then @headers, a NULL-terminated list of name, value
 * pairs (or NULL).
 */
enum MHD_Result fake_reply_headers(FakeServer *s, const FakeRequest *req, unsigned status, const char *type,
                                   const char *body, size_t size, const char *const *headers);
/** fake_reply() - queue an answer; @header/@value add one more header (or NULL). */
enum MHD_Result fake_reply(FakeServer *s, const FakeRequest *req, unsigned status, const char *type,
                           const char *body, size_t size, const char *header, const char *value);
enum MHD_Result fake_reply_text(FakeServer *s, const FakeRequest *req, const char *text);
/** fake_reply_json_status() - @status with @o serialised by json-c (never hand-written) as @type. */
enum MHD_Result fake_reply_json_status(FakeServer *s, const FakeRequest *req, unsigned status,
                                       const char *type, json_object *o);
/** fake_reply_json() - 200 with @o as application/json. */
enum MHD_Result fake_reply_json(FakeServer *s, const FakeRequest *req, json_object *o);
/** fake_reply_error() - @status with a small error page; @allow sets Allow: for 405. */
enum MHD_Result fake_reply_error(FakeServer *s, const FakeRequest *req, unsigned status, const char *allow);

static inline void json_unrefp(json_object **o) {
        if (*o)
                (void) json_object_put(*o);
}

/** fake_json_add_string() - add member @key = @value (a copy) to @o. -ENOMEM. */
int fake_json_add_string(json_object *o, const char *key, const char *value);
