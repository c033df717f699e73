/* SPDX-License-Identifier: MIT */
/*
 * fake-aws.c - the fake AWS instance metadata service (IMDSv2 only): a
 * session token from PUT /latest/api/token is required on every GET, a PUT
 * that came through a proxy (X-Forwarded-For) is refused, and the spot
 * instance-action, the rebalance recommendation, a scheduled maintenance
 * event and the Auto Scaling target lifecycle state (InService, or
 * Terminated) are served as manager sets them. HTTP plumbing is
 * fake-server.c's; this file owns only AWS's rules.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "fake-server-internal.h"

#define FAKE_TOKENS_MAX 64
#define FAKE_TOKEN_TTL_MAX 21600U
#define FAKE_TOKEN_RANDOM_BYTES 36
#define FAKE_NOTICE_LEAD_USEC (120 * USEC_PER_SEC) /* AWS's two-minute warning */
#define FAKE_AWS_INSTANCE_ID "i-0fake0000000000001"
#define FAKE_EVENT_ID_RANDOM_BYTES 9
#define FAKE_MAINTENANCE_WINDOW_USEC (2 * 3600 * USEC_PER_SEC)

#define AWS_TOKEN_PATH "/latest/api/token"
#define AWS_TOKEN_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds"
#define AWS_TOKEN_HEADER "X-aws-ec2-metadata-token"

typedef struct FakeToken {
        char value[8 + FAKE_TOKEN_RANDOM_BYTES * 4 / 3];
        uint64_t expire_usec; /* monotonic; 0 = slot unused */
} FakeToken;

typedef struct FakeAws {
        FakeToken tokens[FAKE_TOKENS_MAX]; /* a ring: a new token replaces the oldest */
        size_t token_next;

        bool notice;
        char notice_action[16];
        uint64_t notice_usec;
        bool rebalance;
        uint64_t rebalance_usec;
        bool maintenance;
        uint64_t maintenance_usec;
        char maintenance_id[40];
        bool asg_terminated;
} FakeAws;

static bool token_random(char *buf, size_t size) {
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        uint8_t raw[FAKE_TOKEN_RANDOM_BYTES];
        size_t o = 0;

        if (getrandom(raw, sizeof(raw), GRND_NONBLOCK) != (ssize_t) sizeof(raw))
                return false;

        /* AWS tokens look like "AQAEA...": a version prefix, then URL-safe base64. */
        assert(size >= 5 + sizeof(raw) / 3 * 4 + 1);
        memcpy(buf, "AQAEA", 5);
        o = 5;
        for (size_t i = 0; i + 3 <= sizeof(raw); i += 3) {
                uint32_t v = (uint32_t) raw[i] << 16 | (uint32_t) raw[i + 1] << 8 | raw[i + 2];

                buf[o++] = alphabet[(v >> 18) & 63];
                buf[o++] = alphabet[(v >> 12) & 63];
                buf[o++] = alphabet[(v >> 6) & 63];
                buf[o++] = alphabet[v & 63];
        }
        buf[o] = 0;
        return true;
}

/* The TTL header as AWS takes it: decimal seconds, 1..21600. */
static int parse_ttl(const char *s, unsigned *ret) {
        unsigned long v = 0;

        if (isempty(s))
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                v = v * 10 + (unsigned long) (*p - '0');
                if (v > FAKE_TOKEN_TTL_MAX)
                        return -ERANGE;
        }
        if (v < 1)
                return -ERANGE;
        *ret = (unsigned) v;
        return 0;
}

static bool token_valid(FakeAws *a, const char *value) {
        uint64_t now = fake_now_monotonic_usec();

        if (isempty(value))
                return false;
        for (size_t i = 0; i < FAKE_TOKENS_MAX; i++)
                if (a->tokens[i].expire_usec > now && streq(a->tokens[i].value, value))
                        return true;
        return false;
}

static enum MHD_Result aws_token(FakeServer *s, const FakeRequest *req) {
        FakeAws *a = s->state;
        const char *ttl_s;
        FakeToken *t;
        unsigned ttl;
        char buf[16];

        /* IMDSv2 refuses token requests that passed through a proxy. */
        if (fake_request_header(req, "X-Forwarded-For"))
                return fake_reply_error(s, req, MHD_HTTP_FORBIDDEN, NULL);

        ttl_s = fake_request_header(req, AWS_TOKEN_TTL_HEADER);
        if (parse_ttl(ttl_s, &ttl) < 0)
                return fake_reply_error(s, req, MHD_HTTP_BAD_REQUEST, NULL);

        t = &a->tokens[a->token_next++ % FAKE_TOKENS_MAX];
        if (!token_random(t->value, sizeof(t->value))) {
                t->expire_usec = 0;
                return fake_reply_error(s, req, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
        }
        t->expire_usec = fake_now_monotonic_usec() + ttl * USEC_PER_SEC;

        (void) snprintf(buf, sizeof(buf), "%u", ttl);
        return fake_reply(s, req, MHD_HTTP_OK, "text/plain", t->value, strlen(t->value), AWS_TOKEN_TTL_HEADER, buf);
}

static enum MHD_Result aws_instance_action(FakeServer *s, const FakeRequest *req) {
        FakeAws *a = s->state;
        _cleanup_(json_unrefp) json_object *o = NULL;
        char when[32];

        if (!a->notice || fake_format_time(a->notice_usec, when, sizeof(when)) < 0)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);

        o = json_object_new_object();
        if (!o || json_object_object_add(o, "action", json_object_new_string(a->notice_action)) < 0 ||
            json_object_object_add(o, "time", json_object_new_string(when)) < 0)
                return MHD_NO;
        return fake_reply_json(s, req, o);
}

static enum MHD_Result aws_rebalance(FakeServer *s, const FakeRequest *req) {
        FakeAws *a = s->state;
        _cleanup_(json_unrefp) json_object *o = NULL;
        char when[32];

        if (!a->rebalance || fake_format_time(a->rebalance_usec, when, sizeof(when)) < 0)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);

        o = json_object_new_object();
        if (!o || json_object_object_add(o, "noticeTime", json_object_new_string(when)) < 0)
                return MHD_NO;
        return fake_reply_json(s, req, o);
}

/* Scheduled events write their times as "21 Jan 2019 09:00:43 GMT". */
static int format_event_time(uint64_t usec, char *buf, size_t size) {
        time_t t = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;

        if (!gmtime_r(&t, &tm))
                return -EINVAL;
        if (strftime(buf, size, "%d %b %Y %H:%M:%S GMT", &tm) == 0)
                return -ENOBUFS;
        return 0;
}

static int add_string(json_object *o, const char *key, const char *value) {
        json_object *v = json_object_new_string(value);

        if (!v)
                return -ENOMEM;
        if (json_object_object_add(o, key, v) < 0) {
                (void) json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

static enum MHD_Result aws_scheduled_events(FakeServer *s, const FakeRequest *req) {
        FakeAws *a = s->state;
        _cleanup_(json_unrefp) json_object *list = NULL;
        json_object *e;
        char not_before[48], not_after[48];

        /* Without maintenance: an empty list, as IMDS serves it. */
        list = json_object_new_array();
        if (!list)
                return MHD_NO;
        if (!a->maintenance)
                return fake_reply_json(s, req, list);

        if (format_event_time(a->maintenance_usec, not_before, sizeof(not_before)) < 0 ||
            format_event_time(a->maintenance_usec + FAKE_MAINTENANCE_WINDOW_USEC, not_after, sizeof(not_after)) < 0)
                return fake_reply_error(s, req, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
        e = json_object_new_object();
        if (!e)
                return MHD_NO;
        if (json_object_array_add(list, e) < 0) {
                (void) json_object_put(e);
                return MHD_NO;
        }
        if (add_string(e, "NotBefore", not_before) < 0 || add_string(e, "Code", "instance-retirement") < 0 ||
            add_string(e, "Description", "The instance is running on degraded hardware") < 0 ||
            add_string(e, "EventId", a->maintenance_id) < 0 || add_string(e, "NotAfter", not_after) < 0 ||
            add_string(e, "State", "active") < 0)
                return MHD_NO;
        return fake_reply_json(s, req, list);
}

static enum MHD_Result aws_handle(FakeServer *s, const FakeRequest *req) {
        FakeAws *a = s->state;
        const char *url = req->url, *method = req->method;

        if (streq(url, AWS_TOKEN_PATH)) {
                if (!streq(method, MHD_HTTP_METHOD_PUT))
                        return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_PUT);
                return aws_token(s, req);
        }

        if (!streq(method, MHD_HTTP_METHOD_GET))
                return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_GET);
        if (strncmp(url, "/latest/", 8) != 0)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);

        /* IMDSv2 only: without a live session token nothing is served, not even a 404. */
        if (!token_valid(a, fake_request_header(req, AWS_TOKEN_HEADER)))
                return fake_reply_error(s, req, MHD_HTTP_UNAUTHORIZED, NULL);

        if (streq(url, "/latest/meta-data/") || streq(url, "/latest/meta-data"))
                return fake_reply_text(s, req, a->notice ? "autoscaling/\nevents/\ninstance-id\nspot/"
                                                         : "autoscaling/\nevents/\ninstance-id");
        if (streq(url, "/latest/meta-data/instance-id"))
                return fake_reply_text(s, req, FAKE_AWS_INSTANCE_ID);
        if (streq(url, "/latest/meta-data/spot/instance-action"))
                return aws_instance_action(s, req);
        if (streq(url, "/latest/meta-data/events/recommendations/rebalance"))
                return aws_rebalance(s, req);
        if (streq(url, "/latest/meta-data/events/maintenance/scheduled"))
                return aws_scheduled_events(s, req);
        if (streq(url, "/latest/meta-data/autoscaling/target-lifecycle-state"))
                return fake_reply_text(s, req, a->asg_terminated ? "Terminated" : "InService");
        return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);
}

static int aws_set_notice(FakeServer *s, const char *event, uint64_t time_usec) {
        static const char *const actions[] = { "terminate", "stop", "hibernate" };
        FakeAws *a = s->state;

        if (!event)
                return -EINVAL;
        if (streq(event, "rebalance")) {
                a->rebalance_usec = time_usec > 0 ? time_usec : fake_now_realtime_usec();
                a->rebalance = true;
                return 0;
        }
        if (streq(event, "maintenance")) {
                static const char hex[] = "0123456789abcdef";
                uint8_t raw[FAKE_EVENT_ID_RANDOM_BYTES];
                char digits[FAKE_EVENT_ID_RANDOM_BYTES * 2 + 1];

                /* A fresh event each time, as AWS schedules a new one: "instance-event-" and 17 hex digits. */
                if (getrandom(raw, sizeof(raw), GRND_NONBLOCK) != (ssize_t) sizeof(raw))
                        return -EIO;
                for (size_t i = 0; i < sizeof(raw); i++) {
                        digits[2 * i] = hex[raw[i] >> 4];
                        digits[2 * i + 1] = hex[raw[i] & 15];
                }
                digits[17] = 0;
                (void) snprintf(a->maintenance_id, sizeof(a->maintenance_id), "instance-event-%s", digits);
                a->maintenance_usec = time_usec > 0 ? time_usec : fake_now_realtime_usec() + FAKE_NOTICE_LEAD_USEC;
                a->maintenance = true;
                return 0;
        }
        if (streq(event, "asg-terminated")) {
                a->asg_terminated = true;
                return 0;
        }
        for (size_t i = 0; i < ELEMENTSOF(actions); i++)
                if (streq(actions[i], event)) {
                        (void) snprintf(a->notice_action, sizeof(a->notice_action), "%s", event);
                        a->notice_usec = time_usec > 0 ? time_usec : fake_now_realtime_usec() + FAKE_NOTICE_LEAD_USEC;
                        a->notice = true;
                        return 0;
                }
        return -EINVAL;
}

static void aws_clear_notice(FakeServer *s) {
        FakeAws *a = s->state;

        a->notice = false;
        a->rebalance = false;
        a->maintenance = false;
        a->asg_terminated = false;
}

static const char *aws_instance_id(FakeServer *s) {
        return FAKE_AWS_INSTANCE_ID;
}

const FakeCloud fake_cloud_aws = {
        .cloud = CLOUD_AWS,
        .server_header = "EC2ws",
        .events = "terminate, stop, hibernate, rebalance, maintenance, asg-terminated",
        .state_size = sizeof(FakeAws),
        .handle = aws_handle,
        .set_notice = aws_set_notice,
        .clear_notice = aws_clear_notice,
        .instance_id = aws_instance_id,
};
