/* SPDX-License-Identifier: MIT */
/*
 * fake-gcp.c - the fake GCP metadata server: /computeMetadata/v1/instance/
 * preempted, maintenance-event, id, hostname and attributes/shutdown-script,
 * with GCP's rules: every request needs "Metadata-Flavor: Google" and must
 * not carry X-Forwarded-For (403 otherwise), every answer carries an ETag
 * and "Metadata-Flavor: Google", and ?wait_for_change=true is a hanging GET:
 * answered at once when last_etag differs from the current ETag, else parked
 * (fake_request_suspend()) until the value changes or timeout_sec passes,
 * when the unchanged value is served again. ETags change on every change of
 * a value, FALSE -> TRUE -> FALSE included. instance/service-accounts/
 * default/token serves the bearer token fake_server_set_credentials() set
 * as {"access_token", "expires_in", "token_type"} (404 without a service
 * account). HTTP plumbing and parking are fake-server.c's; this file owns
 * only GCP's paths and rules.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fake-server-internal.h"

#define FAKE_GCP_PREFIX "/computeMetadata/v1/"
#define FAKE_GCP_INSTANCE_ID "4510000000000000001"
#define FAKE_GCP_HOSTNAME "spotwatch-fake.c.fake-project.internal"
#define FAKE_GCP_WAIT_MAX_SEC 3600U
#define FAKE_GCP_SCRIPT_MAX ((size_t) 256 * 1024)
#define FAKE_GCP_TOKEN_PATH "instance/service-accounts/default/token"

/* What a parked request waits for; fake_resume() wakes one topic. */
typedef enum FakeGcpTopic {
        FAKE_GCP_TOPIC_PREEMPTED,
        FAKE_GCP_TOPIC_MAINTENANCE,
        FAKE_GCP_TOPIC_SCRIPT,
        FAKE_GCP_TOPIC_STATIC, /* never changes: waits for its timeout */
        _FAKE_GCP_TOPIC_MAX,
        _FAKE_GCP_TOPIC_INVALID = -EINVAL,
} FakeGcpTopic;

typedef struct FakeGcp {
        bool preempted;
        const char *maintenance; /* GCP's word */
        uint64_t version[_FAKE_GCP_TOPIC_MAX]; /* changes so far, part of the ETag */
        char *shutdown_script;   /* NULL: 404 */
} FakeGcp;

/* One path's answer as it stands. */
typedef struct FakeGcpValue {
        FakeGcpTopic topic;
        bool found;
        const char *body;
        char etag[17];
} FakeGcpValue;

static uint64_t fnv1a(uint64_t h, const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                h ^= (uint8_t) s[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

/* 16 hex digits, like GCP's, from the path, the value and how often it changed. */
static void make_etag(char buf[static 17], const char *path, const char *value, uint64_t version) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        h = fnv1a(h, path, strlen(path) + 1);
        h = fnv1a(h, value, strlen(value) + 1);
        h = fnv1a(h, (const char *) &version, sizeof(version));
        (void) snprintf(buf, 17, "%016" PRIx64, h);
}

static bool lookup(FakeGcp *g, const char *path, FakeGcpValue *ret) {
        FakeGcpValue v = { .topic = FAKE_GCP_TOPIC_STATIC, .found = true };

        if (streq(path, "instance/preempted")) {
                v.topic = FAKE_GCP_TOPIC_PREEMPTED;
                v.body = g->preempted ? "TRUE" : "FALSE";
        } else if (streq(path, "instance/maintenance-event")) {
                v.topic = FAKE_GCP_TOPIC_MAINTENANCE;
                v.body = g->maintenance;
        } else if (streq(path, "instance/attributes/shutdown-script")) {
                v.topic = FAKE_GCP_TOPIC_SCRIPT;
                v.found = g->shutdown_script != NULL;
                v.body = g->shutdown_script ? g->shutdown_script : "";
        } else if (streq(path, "instance/id"))
                v.body = FAKE_GCP_INSTANCE_ID;
        else if (streq(path, "instance/hostname"))
                v.body = FAKE_GCP_HOSTNAME;
        else
                return false;

        make_etag(v.etag, path, v.body, g->version[v.topic]);
        *ret = v;
        return true;
}

/* Any answer, with the headers the real server sends: Metadata-Flavor, ETag, its Server name. */
static enum MHD_Result gcp_reply(FakeServer *s, const FakeRequest *req, unsigned status, const char *type,
                                 const char *body, const char *etag) {
        const char *headers[] = { "Metadata-Flavor", "Google", MHD_HTTP_HEADER_ETAG, etag, NULL };

        /* Without an ETag the list ends after Metadata-Flavor. */
        if (!etag)
                headers[2] = NULL;
        return fake_reply_headers(s, req, status, type, body, strlen(body), headers);
}

static enum MHD_Result gcp_reply_error(FakeServer *s, const FakeRequest *req, unsigned status, const char *why) {
        char page[512];

        (void) snprintf(page, sizeof(page),
                        "<!DOCTYPE html>\n<html lang=en>\n<title>Error %u</title>\n<p>%s</p>\n", status, why);
        return gcp_reply(s, req, status, "text/html; charset=UTF-8", page, NULL);
}

static enum MHD_Result gcp_reply_value(FakeServer *s, const FakeRequest *req, const FakeGcpValue *v) {
        if (!v->found)
                return gcp_reply_error(s, req, MHD_HTTP_NOT_FOUND, "The requested URL was not found on this server.");
        return gcp_reply(s, req, MHD_HTTP_OK, "application/text", v->body, v->etag);
}

/* The service account's OAuth2 token, as JSON. */
static enum MHD_Result gcp_token(FakeServer *s, const FakeRequest *req) {
        const FakeCreds *c = &s->creds;
        _cleanup_(json_unrefp) json_object *o = NULL;
        json_object *expires_in;
        const char *text;
        size_t size;
        enum MHD_Result ret;

        if (fake_creds_reply_raw(s, req, &ret))
                return ret;
        if (c->none)
                return gcp_reply_error(s, req, MHD_HTTP_NOT_FOUND,
                                       "The requested URL was not found on this server.");

        o = json_object_new_object();
        if (!o || fake_json_add_string(o, "access_token", c->token) < 0)
                return MHD_NO;
        expires_in = json_object_new_int64((int64_t) (c->lifetime_usec / USEC_PER_SEC));
        if (!expires_in)
                return MHD_NO;
        if (json_object_object_add(o, "expires_in", expires_in) < 0) {
                (void) json_object_put(expires_in);
                return MHD_NO;
        }
        if (fake_json_add_string(o, "token_type", "Bearer") < 0)
                return MHD_NO;
        text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                 &size);
        if (!text)
                return MHD_NO;
        return gcp_reply(s, req, MHD_HTTP_OK, "application/json", text, NULL);
}

/* timeout_sec as GCP takes it: whole seconds; absent means the longest wait. */
static int parse_timeout_sec(const char *s, unsigned *ret) {
        unsigned long v = 0;

        if (!s) {
                *ret = FAKE_GCP_WAIT_MAX_SEC;
                return 0;
        }
        if (!*s)
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                v = v * 10 + (unsigned long) (*p - '0');
                if (v > FAKE_GCP_WAIT_MAX_SEC)
                        v = FAKE_GCP_WAIT_MAX_SEC;
        }
        *ret = (unsigned) MAX(v, 1UL);
        return 0;
}

static enum MHD_Result gcp_handle(FakeServer *s, const FakeRequest *req) {
        FakeGcp *g = s->state;
        const char *flavor, *wait, *last, *path;
        FakeGcpValue v;
        unsigned timeout_sec;
        int r;

        if (!strncmp(req->url, FAKE_GCP_PREFIX, strlen(FAKE_GCP_PREFIX)))
                path = req->url + strlen(FAKE_GCP_PREFIX);
        else
                path = NULL;

        /* A hanging GET back from parking: its value changed or its time is up. */
        if (fake_request_resumed(s, req) > 0) {
                if (!path || !lookup(g, path, &v))
                        return gcp_reply_error(s, req, MHD_HTTP_NOT_FOUND, "Not found.");
                return gcp_reply_value(s, req, &v);
        }

        if (!streq(req->method, MHD_HTTP_METHOD_GET))
                return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_GET);
        /* The metadata server refuses anything that came through a proxy. */
        if (fake_request_header(req, "X-Forwarded-For"))
                return gcp_reply_error(s, req, MHD_HTTP_FORBIDDEN,
                                       "Your client does not have permission to get this URL from this server: "
                                       "requests with X-Forwarded-For are refused.");
        flavor = fake_request_header(req, "Metadata-Flavor");
        if (!flavor || !streq(flavor, "Google"))
                return gcp_reply_error(s, req, MHD_HTTP_FORBIDDEN,
                                       "Your client does not have permission to get this URL from this server. "
                                       "Missing Metadata-Flavor:Google header.");
        if (path && streq(path, FAKE_GCP_TOKEN_PATH))
                return gcp_token(s, req);
        if (!path || !lookup(g, path, &v))
                return gcp_reply_error(s, req, MHD_HTTP_NOT_FOUND, "The requested URL was not found on this server.");

        wait = fake_request_arg(req, "wait_for_change");
        if (wait && streq(wait, "true")) {
                if (parse_timeout_sec(fake_request_arg(req, "timeout_sec"), &timeout_sec) < 0)
                        return gcp_reply_error(s, req, MHD_HTTP_BAD_REQUEST, "Invalid timeout_sec.");
                last = fake_request_arg(req, "last_etag");
                /* A stale ETag means the caller missed a change: it gets the value at once. */
                if (isempty(last) || streq(last, v.etag)) {
                        r = fake_request_suspend(s, req, v.topic,
                                                 fake_now_monotonic_usec() + timeout_sec * USEC_PER_SEC);
                        if (r == -EBUSY)
                                return gcp_reply_error(s, req, MHD_HTTP_SERVICE_UNAVAILABLE,
                                                       "Too many hanging requests.");
                        if (r < 0)
                                return MHD_NO;
                        return MHD_YES;
                }
        }
        return gcp_reply_value(s, req, &v);
}

/* A value changed: a new ETag, and every hanging GET on it returns. */
static void changed(FakeServer *s, FakeGcpTopic topic) {
        FakeGcp *g = s->state;

        g->version[topic]++;
        fake_resume(s, topic);
}

static int gcp_set_notice(FakeServer *s, const char *event, uint64_t time_usec) {
        FakeGcp *g = s->state;
        const char *m;

        if (!event)
                return -EINVAL;
        if (streq(event, "preempt")) {
                /* GCP gives no time: the 30 s run from the moment it flips. */
                if (!g->preempted) {
                        g->preempted = true;
                        changed(s, FAKE_GCP_TOPIC_PREEMPTED);
                }
                return 0;
        }
        if (streq(event, "maintenance"))
                m = "TERMINATE_ON_HOST_MAINTENANCE";
        else if (streq(event, "migrate"))
                m = "MIGRATE_ON_HOST_MAINTENANCE";
        else
                return -EINVAL;
        if (!streq(g->maintenance, m)) {
                g->maintenance = m;
                changed(s, FAKE_GCP_TOPIC_MAINTENANCE);
        }
        return 0;
}

static void gcp_clear_notice(FakeServer *s) {
        FakeGcp *g = s->state;

        if (g->preempted) {
                g->preempted = false;
                changed(s, FAKE_GCP_TOPIC_PREEMPTED);
        }
        if (!streq(g->maintenance, "NONE")) {
                g->maintenance = "NONE";
                changed(s, FAKE_GCP_TOPIC_MAINTENANCE);
        }
}

int fake_gcp_set_shutdown_script(FakeServer *s, const char *script) {
        FakeGcp *g = s->state;
        char *copy = NULL;

        if (s->vt != &fake_cloud_gcp)
                return -EOPNOTSUPP;
        if (script) {
                if (strlen(script) > FAKE_GCP_SCRIPT_MAX)
                        return -E2BIG;
                copy = strdup(script);
                if (!copy)
                        return -ENOMEM;
        }
        free(g->shutdown_script);
        g->shutdown_script = copy;
        changed(s, FAKE_GCP_TOPIC_SCRIPT);
        return 0;
}

static int gcp_init(FakeServer *s) {
        FakeGcp *g = s->state;

        g->maintenance = "NONE";
        return 0;
}

static void gcp_done(FakeServer *s) {
        FakeGcp *g = s->state;

        free(g->shutdown_script);
        g->shutdown_script = NULL;
}

static const char *gcp_instance_id(FakeServer *s) {
        return FAKE_GCP_INSTANCE_ID;
}

const FakeCloud fake_cloud_gcp = {
        .cloud = CLOUD_GCP,
        .creds_kind = FAKE_CREDS_BEARER,
        .server_header = "Metadata Server for VM",
        .events = "preempt, maintenance, migrate",
        .state_size = sizeof(FakeGcp),
        .init = gcp_init,
        .done = gcp_done,
        .handle = gcp_handle,
        .set_notice = gcp_set_notice,
        .clear_notice = gcp_clear_notice,
        .instance_id = gcp_instance_id,
};
