/* SPDX-License-Identifier: MIT */
/*
 * fake-aws.c - the fake AWS instance metadata service (IMDSv2 only): a
 * session token from PUT /latest/api/token is required on every GET, a PUT
 * that came through a proxy (X-Forwarded-For) is refused, and the spot
 * instance-action, the rebalance recommendation, a scheduled maintenance
 * event and the Auto Scaling target lifecycle state (InService, or
 * Terminated) are served as manager sets them, and so is the instance role
 * (iam/security-credentials/ lists FAKE_ROLE_NAME, whose document carries
 * the key pair fake_server_set_credentials() set). HTTP plumbing is
 * fake-server.c's; this file owns only AWS's rules.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "fake-server-internal.h"

#define FAKE_TOKEN_RANDOM_BYTES 36
#define FAKE_NOTICE_LEAD_USEC (120 * USEC_PER_SEC) /* AWS's two-minute warning */
#define FAKE_AWS_INSTANCE_ID "i-0fake0000000000001"
#define FAKE_EVENT_ID_DIGITS 17
#define FAKE_MAINTENANCE_WINDOW_USEC (2 * 3600 * USEC_PER_SEC)

#define AWS_TOKEN_PATH "/latest/api/token"
#define AWS_TOKEN_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds"
#define AWS_TOKEN_HEADER "X-aws-ec2-metadata-token"
#define AWS_ROLES_PATH "/latest/meta-data/iam/security-credentials/"

typedef struct FakeAws {
        FakeTokenRing tokens;
        bool v1_only;            /* fake_aws_set_v1_only(): no token PUT, tokenless GETs */

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

static enum MHD_Result aws_instance_action(FakeServer *s, const FakeRequest *req) {
        FakeAws *a = s->state;
        _cleanup_(json_unrefp) json_object *o = NULL;
        char when[32];

        if (!a->notice || fake_format_time(a->notice_usec, FAKE_TIME_RFC3339, when, sizeof(when)) < 0)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);

        o = json_object_new_object();
        if (!o || fake_json_add_string(o, "action", a->notice_action) < 0 ||
            fake_json_add_string(o, "time", when) < 0)
                return MHD_NO;
        return fake_reply_json(s, req, o);
}

static enum MHD_Result aws_rebalance(FakeServer *s, const FakeRequest *req) {
        FakeAws *a = s->state;
        _cleanup_(json_unrefp) json_object *o = NULL;
        char when[32];

        if (!a->rebalance || fake_format_time(a->rebalance_usec, FAKE_TIME_RFC3339, when, sizeof(when)) < 0)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);

        o = json_object_new_object();
        if (!o || fake_json_add_string(o, "noticeTime", when) < 0)
                return MHD_NO;
        return fake_reply_json(s, req, o);
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

        /* Scheduled events write their times as "21 Jan 2019 09:00:43 GMT". */
        if (fake_format_time(a->maintenance_usec, FAKE_TIME_AWS_EVENT, not_before, sizeof(not_before)) < 0 ||
            fake_format_time(a->maintenance_usec + FAKE_MAINTENANCE_WINDOW_USEC, FAKE_TIME_AWS_EVENT,
                             not_after, sizeof(not_after)) < 0)
                return fake_reply_error(s, req, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
        e = json_object_new_object();
        if (!e)
                return MHD_NO;
        if (json_object_array_add(list, e) < 0) {
                (void) json_object_put(e);
                return MHD_NO;
        }
        if (fake_json_add_string(e, "NotBefore", not_before) < 0 ||
            fake_json_add_string(e, "Code", "instance-retirement") < 0 ||
            fake_json_add_string(e, "Description", "The instance is running on degraded hardware") < 0 ||
            fake_json_add_string(e, "EventId", a->maintenance_id) < 0 ||
            fake_json_add_string(e, "NotAfter", not_after) < 0 ||
            fake_json_add_string(e, "State", "active") < 0)
                return MHD_NO;
        return fake_reply_json(s, req, list);
}

/* The role's document, as IMDS serves it; Token "" without a session token (the keys of a plain user). */
static enum MHD_Result aws_role_document(FakeServer *s, const FakeRequest *req) {
        const FakeCreds *c = &s->creds;
        _cleanup_(json_unrefp) json_object *o = NULL;
        uint64_t now = fake_now_realtime_usec();
        char updated[32], expiration[32];
        enum MHD_Result ret;

        if (fake_creds_reply_raw(s, req, &ret))
                return ret;
        if (c->none)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);
        if (fake_format_time(now, FAKE_TIME_RFC3339, updated, sizeof(updated)) < 0 ||
            fake_format_time(now + c->lifetime_usec, FAKE_TIME_RFC3339, expiration, sizeof(expiration)) < 0)
                return fake_reply_error(s, req, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);

        o = json_object_new_object();
        if (!o || fake_json_add_string(o, "Code", "Success") < 0 ||
            fake_json_add_string(o, "LastUpdated", updated) < 0 ||
            fake_json_add_string(o, "Type", "AWS-HMAC") < 0 ||
            fake_json_add_string(o, "AccessKeyId", c->access_key_id) < 0 ||
            fake_json_add_string(o, "SecretAccessKey", c->secret_access_key) < 0 ||
            fake_json_add_string(o, "Token", c->session_token ?: "") < 0 ||
            fake_json_add_string(o, "Expiration", expiration) < 0)
                return MHD_NO;
        return fake_reply_json_status(s, req, MHD_HTTP_OK, "text/plain", o);
}

static enum MHD_Result aws_handle(FakeServer *s, const FakeRequest *req) {
        FakeAws *a = s->state;
        const char *url = req->url, *method = req->method;

        if (streq(url, AWS_TOKEN_PATH)) {
                if (a->v1_only)
                        return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);
                if (!streq(method, MHD_HTTP_METHOD_PUT))
                        return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_PUT);
                return fake_token_put(s, req, &a->tokens, AWS_TOKEN_TTL_HEADER, true, token_random);
        }

        if (!streq(method, MHD_HTTP_METHOD_GET))
                return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_GET);
        if (strncmp(url, "/latest/", 8) != 0)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);

        /* IMDSv2 only: without a live session token nothing is served, not even a 404. */
        if (!a->v1_only && !fake_token_valid(&a->tokens, fake_request_header(req, AWS_TOKEN_HEADER)))
                return fake_reply_error(s, req, MHD_HTTP_UNAUTHORIZED, NULL);

        if (streq(url, "/latest/meta-data/") || streq(url, "/latest/meta-data")) {
                char list[128];

                (void) snprintf(list, sizeof(list), "autoscaling/\nevents/\n%sinstance-id%s",
                                s->creds.none ? "" : "iam/\n", a->notice ? "\nspot/" : "");
                return fake_reply_text(s, req, list);
        }
        /* IMDS lists the instance profile's one role; its document is below it. */
        if (streq(url, AWS_ROLES_PATH) || streq(url, "/latest/meta-data/iam/security-credentials")) {
                if (s->creds.none)
                        return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);
                return fake_reply_text(s, req, FAKE_ROLE_NAME);
        }
        if (streq(url, AWS_ROLES_PATH FAKE_ROLE_NAME))
                return aws_role_document(s, req);
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
                char digits[FAKE_EVENT_ID_DIGITS + 1];
                int r;

                /* A fresh event each time, as AWS schedules a new one: "instance-event-" and 17 hex digits. */
                r = fake_random_hex(digits, sizeof(digits), FAKE_EVENT_ID_DIGITS);
                if (r < 0)
                        return r;
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

int fake_aws_set_v1_only(FakeServer *s, bool on) {
        FakeAws *a = s->state;

        if (s->vt != &fake_cloud_aws)
                return -EOPNOTSUPP;
        a->v1_only = on;
        return 0;
}

static const char *aws_instance_id(FakeServer *s) {
        return FAKE_AWS_INSTANCE_ID;
}

const FakeCloud fake_cloud_aws = {
        .cloud = CLOUD_AWS,
        .creds_kind = FAKE_CREDS_KEY_PAIR,
        .server_header = "EC2ws",
        .events = "terminate, stop, hibernate, rebalance, maintenance, asg-terminated",
        .state_size = sizeof(FakeAws),
        .handle = aws_handle,
        .set_notice = aws_set_notice,
        .clear_notice = aws_clear_notice,
        .instance_id = aws_instance_id,
};
