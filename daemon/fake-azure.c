/* SPDX-License-Identifier: MIT */
/*
 * fake-azure.c - the fake Azure Instance Metadata Service, as far as
 * Scheduled Events needs it: every request must carry "Metadata: true" and an
 * api-version and must not come through a proxy (X-Forwarded-For), else 400
 * with IMDS's JSON error; more than 5 requests in any second get 429. It
 * serves the scheduledevents document ({"DocumentIncarnation": N, "Events":
 * [...]}, NotBefore in RFC 1123) with the events manager puts on it, takes
 * StartRequests POSTs (the events start, the incarnation goes up, the
 * EventIds are recorded), and serves compute/name and compute/vmId as text
 * and the managed identity's token (/metadata/identity/oauth2/token, which
 * wants a resource= and is not counted against the 5 requests/s, as its
 * limits are separate) with the bearer token fake_server_set_credentials()
 * set; without an identity, 400 "Identity not found", as IMDS answers.
 * HTTP plumbing is fake-server.c's; this file owns only Azure's rules.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "fake-server-internal.h"
#include "shared/log.h"

#define FAKE_AZURE_VM_NAME "spotwatch-fake-vm"
#define FAKE_AZURE_VM_ID "5c0f2a57-7e3d-4c1e-9a3b-0fa4e5d6c7b8"
#define FAKE_AZURE_EVENTS_MAX 16
#define FAKE_AZURE_ACKED_MAX 32
#define FAKE_AZURE_RATE_MAX 5 /* requests in any one second; the next gets 429 */
#define FAKE_AZURE_UUID_LEN 36

#define AZURE_EVENTS_PATH "/metadata/scheduledevents"
#define AZURE_NAME_PATH "/metadata/instance/compute/name"
#define AZURE_VM_ID_PATH "/metadata/instance/compute/vmId"
#define AZURE_IDENTITY_PATH "/metadata/identity/oauth2/token"
#define FAKE_AZURE_CLIENT_ID "7e6f0e3a-5d4c-4b2a-9f1e-0c8d7b6a5f40"
#define AZURE_JSON "application/json; charset=utf-8"
#define BAD_BODY "Bad request. Invalid request body."

typedef struct FakeAzureType {
        const char *word;      /* fake_server_set_notice()'s word */
        const char *event_type;
        const char *source;
        int64_t duration_sec;
        uint64_t lead_usec;    /* NotBefore from now when the caller gives no time */
        const char *description;
} FakeAzureType;

static const FakeAzureType fake_azure_types[] = {
        /* Spot evictions come with at least 30 s; user deletes with the configured 5-15 min. */
        { "preempt", "Preempt", "Platform", -1, 30 * USEC_PER_SEC,
          "The Spot virtual machine is being evicted." },
        { "terminate", "Terminate", "User", -1, 5 * 60 * USEC_PER_SEC,
          "The virtual machine is being deleted." },
        { "reboot", "Reboot", "Platform", -1, 15 * 60 * USEC_PER_SEC,
          "Host server is undergoing maintenance." },
        { "redeploy", "Redeploy", "Platform", -1, 10 * 60 * USEC_PER_SEC,
          "The virtual machine is moving to another host." },
        { "freeze", "Freeze", "Platform", 9, 15 * 60 * USEC_PER_SEC,
          "Host server is undergoing maintenance." },
};

typedef struct FakeAzureEvent {
        char id[FAKE_AZURE_UUID_LEN + 1];
        const FakeAzureType *type;
        uint64_t not_before_usec; /* wall clock; 0 once started */
        bool started;
} FakeAzureEvent;

typedef struct FakeAzure {
        FakeAzureEvent events[FAKE_AZURE_EVENTS_MAX]; /* oldest first */
        size_t n_events;
        uint64_t incarnation;
        char acked[FAKE_AZURE_ACKED_MAX][FAKE_AZURE_UUID_LEN + 1]; /* a ring of acknowledged EventIds */
        size_t n_acked;
        uint64_t recent[FAKE_AZURE_RATE_MAX]; /* monotonic arrival of the last served requests, a ring */
        size_t recent_next;
} FakeAzure;

static int fake_azure_init(FakeServer *s) {
        FakeAzure *a = s->state;

        a->incarnation = 1;
        return 0;
}

/* A version 4 UUID in capitals, as Azure writes EventIds. */
static int uuid_random(char buf[static FAKE_AZURE_UUID_LEN + 1]) {
        uint8_t raw[16];

        if (getrandom(raw, sizeof(raw), GRND_NONBLOCK) != (ssize_t) sizeof(raw))
                return -EAGAIN;
        raw[6] = (uint8_t) ((raw[6] & 0x0F) | 0x40);
        raw[8] = (uint8_t) ((raw[8] & 0x3F) | 0x80);
        (void) snprintf(buf, FAKE_AZURE_UUID_LEN + 1,
                        "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-%02X%02X%02X%02X%02X%02X",
                        raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7], raw[8], raw[9],
                        raw[10], raw[11], raw[12], raw[13], raw[14], raw[15]);
        return 0;
}

/* IMDS's errors are small JSON objects: {"error": "..."}. */
static enum MHD_Result azure_reply_error(FakeServer *s, const FakeRequest *req, unsigned status,
                                         const char *message, bool with_versions) {
        _cleanup_(json_unrefp) json_object *o = NULL;
        json_object *versions;

        o = json_object_new_object();
        if (!o || fake_json_add_string(o, "error", message) < 0)
                return MHD_NO;
        if (with_versions) {
                versions = json_object_new_array();
                if (!versions || json_object_object_add(o, "newest-versions", versions) < 0 ||
                    json_object_array_add(versions, json_object_new_string("2023-07-01")) < 0 ||
                    json_object_array_add(versions, json_object_new_string("2021-12-13")) < 0 ||
                    json_object_array_add(versions, json_object_new_string("2021-02-01")) < 0)
                        return MHD_NO;
        }
        return fake_reply_json_status(s, req, status, "application/json; charset=utf-8", o);
}

/* "YYYY-MM-DD": the shape of every IMDS api-version. */
static bool api_version_valid(const char *v) {
        if (!v || strlen(v) != 10)
                return false;
        for (size_t i = 0; i < 10; i++) {
                if (i == 4 || i == 7) {
                        if (v[i] != '-')
                                return false;
                } else if (v[i] < '0' || v[i] > '9')
                        return false;
        }
        return true;
}

/* Sliding one-second window over the requests served: at most FAKE_AZURE_RATE_MAX in it. */
static bool rate_allow(FakeAzure *a) {
        uint64_t now = fake_now_monotonic_usec(), oldest = a->recent[a->recent_next];

        if (oldest != 0 && now - oldest < USEC_PER_SEC)
                return false;
        a->recent[a->recent_next] = now;
        a->recent_next = (a->recent_next + 1) % FAKE_AZURE_RATE_MAX;
        return true;
}

static json_object *event_to_json(const FakeAzureEvent *e) {
        _cleanup_(json_unrefp) json_object *o = NULL;
        json_object *resources;
        char when[64] = "";

        /* "Mon, 19 Sep 2016 18:29:47 GMT" */
        if (!e->started && fake_format_time(e->not_before_usec, FAKE_TIME_RFC1123, when, sizeof(when)) < 0)
                return NULL;
        o = json_object_new_object();
        resources = json_object_new_array();
        if (!o || !resources) {
                if (resources)
                        (void) json_object_put(resources);
                return NULL;
        }
        if (json_object_object_add(o, "EventId", json_object_new_string(e->id)) < 0 ||
            json_object_object_add(o, "EventStatus",
                                   json_object_new_string(e->started ? "Started" : "Scheduled")) < 0 ||
            json_object_object_add(o, "EventType", json_object_new_string(e->type->event_type)) < 0 ||
            json_object_object_add(o, "ResourceType", json_object_new_string("VirtualMachine")) < 0) {
                (void) json_object_put(resources);
                return NULL;
        }
        if (json_object_object_add(o, "Resources", resources) < 0) {
                (void) json_object_put(resources);
                return NULL;
        }
        if (json_object_array_add(resources, json_object_new_string(FAKE_AZURE_VM_NAME)) < 0 ||
            json_object_object_add(o, "NotBefore", json_object_new_string(when)) < 0 ||
            json_object_object_add(o, "Description", json_object_new_string(e->type->description)) < 0 ||
            json_object_object_add(o, "EventSource", json_object_new_string(e->type->source)) < 0 ||
            json_object_object_add(o, "DurationInSeconds", json_object_new_int64(e->type->duration_sec)) < 0)
                return NULL;
        return TAKE_PTR(o);
}

static enum MHD_Result azure_document(FakeServer *s, const FakeRequest *req) {
        FakeAzure *a = s->state;
        _cleanup_(json_unrefp) json_object *o = NULL;
        json_object *events, *e;

        o = json_object_new_object();
        if (!o || json_object_object_add(o, "DocumentIncarnation",
                                         json_object_new_int64((int64_t) a->incarnation)) < 0)
                return MHD_NO;
        events = json_object_new_array();
        if (!events)
                return MHD_NO;
        if (json_object_object_add(o, "Events", events) < 0) {
                (void) json_object_put(events);
                return MHD_NO;
        }
        for (size_t i = 0; i < a->n_events; i++) {
                e = event_to_json(&a->events[i]);
                if (!e)
                        return MHD_NO;
                if (json_object_array_add(events, e) < 0) {
                        (void) json_object_put(e);
                        return MHD_NO;
                }
        }
        return fake_reply_json(s, req, o);
}

static FakeAzureEvent *find_event(FakeAzure *a, const char *id) {
        for (size_t i = 0; i < a->n_events; i++)
                if (streq(a->events[i].id, id))
                        return &a->events[i];
        return NULL;
}

/*
 * POST {"StartRequests": [{"EventId": "..."}, ...]}: every EventId must be a
 * current event; they start at once (EventStatus Started, NotBefore "").
 */
static enum MHD_Result azure_start_requests(FakeServer *s, const FakeRequest *req) {
        FakeAzure *a = s->state;
        _cleanup_(json_unrefp) json_object *o = NULL;
        json_object *list, *item, *id;
        enum json_tokener_error jerr;
        size_t n;

        if (req->body_size == 0 || strlen(req->body) != req->body_size)
                return azure_reply_error(s, req, MHD_HTTP_BAD_REQUEST, BAD_BODY, false);
        o = json_tokener_parse_verbose(req->body, &jerr);
        if (!o || !json_object_is_type(o, json_type_object) ||
            !json_object_object_get_ex(o, "StartRequests", &list) ||
            !json_object_is_type(list, json_type_array) || json_object_array_length(list) == 0)
                return azure_reply_error(s, req, MHD_HTTP_BAD_REQUEST, BAD_BODY, false);

        n = json_object_array_length(list);
        for (size_t i = 0; i < n; i++) {
                item = json_object_array_get_idx(list, i);
                if (!json_object_is_type(item, json_type_object) ||
                    !json_object_object_get_ex(item, "EventId", &id) ||
                    !json_object_is_type(id, json_type_string) || !find_event(a, json_object_get_string(id)))
                        return azure_reply_error(s, req, MHD_HTTP_BAD_REQUEST,
                                                 "Bad request. Invalid or unknown EventId.", false);
        }
        for (size_t i = 0; i < n; i++) {
                const char *event_id;
                FakeAzureEvent *e;

                (void) json_object_object_get_ex(json_object_array_get_idx(list, i), "EventId", &id);
                event_id = json_object_get_string(id);
                e = find_event(a, event_id);
                if (!e)
                        continue;
                e->started = true;
                e->not_before_usec = 0;
                (void) snprintf(a->acked[a->n_acked % FAKE_AZURE_ACKED_MAX], sizeof(a->acked[0]), "%s",
                                event_id);
                a->n_acked++;
                log_debug("fake-azure: StartRequests for %s", event_id);
        }
        a->incarnation++;
        return fake_reply(s, req, MHD_HTTP_OK, "application/json; charset=utf-8", "", 0, NULL, NULL);
}

/*
 * The managed identity's token: {"access_token", "client_id", "expires_in",
 * "expires_on", "ext_expires_in", "not_before", "resource", "token_type"},
 * every number written as a string, as IMDS does.
 */
static enum MHD_Result azure_identity_token(FakeServer *s, const FakeRequest *req) {
        const FakeCreds *c = &s->creds;
        _cleanup_(json_unrefp) json_object *o = NULL;
        const char *resource = fake_request_arg(req, "resource");
        uint64_t now = fake_now_realtime_usec() / USEC_PER_SEC, life = c->lifetime_usec / USEC_PER_SEC;
        char expires_in[32], expires_on[32], not_before[32];
        enum MHD_Result ret;

        if (!streq(req->method, MHD_HTTP_METHOD_GET))
                return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_GET);
        if (isempty(resource)) {
                o = json_object_new_object();
                if (!o || fake_json_add_string(o, "error", "invalid_request") < 0 ||
                    fake_json_add_string(o, "error_description",
                                         "Required query variable 'resource' is missing") < 0)
                        return MHD_NO;
                return fake_reply_json_status(s, req, MHD_HTTP_BAD_REQUEST, AZURE_JSON, o);
        }
        if (fake_creds_reply_raw(s, req, &ret))
                return ret;
        o = json_object_new_object();
        if (!o)
                return MHD_NO;
        if (c->none) {
                if (fake_json_add_string(o, "error", "invalid_request") < 0 ||
                    fake_json_add_string(o, "error_description", "Identity not found") < 0)
                        return MHD_NO;
                return fake_reply_json_status(s, req, MHD_HTTP_BAD_REQUEST, AZURE_JSON, o);
        }

        (void) snprintf(expires_in, sizeof(expires_in), "%" PRIu64, life);
        (void) snprintf(expires_on, sizeof(expires_on), "%" PRIu64, now + life);
        (void) snprintf(not_before, sizeof(not_before), "%" PRIu64, now);
        if (fake_json_add_string(o, "access_token", c->token) < 0 ||
            fake_json_add_string(o, "client_id", FAKE_AZURE_CLIENT_ID) < 0 ||
            fake_json_add_string(o, "expires_in", expires_in) < 0 ||
            fake_json_add_string(o, "expires_on", expires_on) < 0 ||
            fake_json_add_string(o, "ext_expires_in", expires_in) < 0 ||
            fake_json_add_string(o, "not_before", not_before) < 0 ||
            fake_json_add_string(o, "resource", resource) < 0 ||
            fake_json_add_string(o, "token_type", "Bearer") < 0)
                return MHD_NO;
        return fake_reply_json_status(s, req, MHD_HTTP_OK, AZURE_JSON, o);
}

static enum MHD_Result azure_handle(FakeServer *s, const FakeRequest *req) {
        FakeAzure *a = s->state;
        const char *url = req->url, *method = req->method, *metadata, *format;
        bool get = streq(method, MHD_HTTP_METHOD_GET), post = streq(method, MHD_HTTP_METHOD_POST);

        if (!streq(url, AZURE_IDENTITY_PATH) && !rate_allow(a))
                return azure_reply_error(s, req, MHD_HTTP_TOO_MANY_REQUESTS, "Too many requests", false);

        if (strncmp(url, "/metadata/", 10) != 0)
                return azure_reply_error(s, req, MHD_HTTP_NOT_FOUND, "Not found", false);
        /* IMDS refuses anything that passed through a proxy. */
        if (fake_request_header(req, "X-Forwarded-For"))
                return azure_reply_error(s, req, MHD_HTTP_BAD_REQUEST,
                                         "Bad request. Requests through a proxy are not allowed.", false);
        metadata = fake_request_header(req, "Metadata");
        if (!metadata || strcasecmp(metadata, "true") != 0)
                return azure_reply_error(s, req, MHD_HTTP_BAD_REQUEST,
                                         "Bad request. Required metadata header not specified", false);
        if (!api_version_valid(fake_request_arg(req, "api-version")))
                return azure_reply_error(s, req, MHD_HTTP_BAD_REQUEST,
                                         "Bad request. api-version was not specified in the request. "
                                         "For more information refer to aka.ms/azureimds",
                                         true);

        if (streq(url, AZURE_IDENTITY_PATH))
                return azure_identity_token(s, req);
        if (streq(url, AZURE_EVENTS_PATH)) {
                if (get)
                        return azure_document(s, req);
                if (post)
                        return azure_start_requests(s, req);
                return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, "GET, POST");
        }
        if (streq(url, AZURE_NAME_PATH) || streq(url, AZURE_VM_ID_PATH)) {
                if (!get)
                        return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_GET);
                /* Leaf nodes are served as text only, and only when asked for it. */
                format = fake_request_arg(req, "format");
                if (!format || !streq(format, "text"))
                        return azure_reply_error(s, req, MHD_HTTP_BAD_REQUEST,
                                                 "Bad request. Leaf nodes only support text format.", false);
                return fake_reply_text(s, req,
                                       streq(url, AZURE_NAME_PATH) ? FAKE_AZURE_VM_NAME : FAKE_AZURE_VM_ID);
        }
        return azure_reply_error(s, req, MHD_HTTP_NOT_FOUND, "Not found", false);
}

static int fake_azure_set_notice(FakeServer *s, const char *event, uint64_t time_usec) {
        FakeAzure *a = s->state;
        const FakeAzureType *type = NULL;
        FakeAzureEvent e = {};
        int r;

        if (!event)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(fake_azure_types); i++)
                if (streq(fake_azure_types[i].word, event))
                        type = &fake_azure_types[i];
        if (!type)
                return -EINVAL;

        r = uuid_random(e.id);
        if (r < 0)
                return r;
        e.type = type;
        e.not_before_usec = time_usec > 0 ? time_usec : fake_now_realtime_usec() + type->lead_usec;

        /* Full: the oldest event goes, as if it had ended. */
        if (a->n_events >= FAKE_AZURE_EVENTS_MAX) {
                memmove(&a->events[0], &a->events[1], (FAKE_AZURE_EVENTS_MAX - 1) * sizeof(a->events[0]));
                a->n_events--;
        }
        a->events[a->n_events++] = e;
        a->incarnation++;
        log_debug("fake-azure: %s event %s", type->event_type, e.id);
        return 0;
}

static void fake_azure_clear_notice(FakeServer *s) {
        FakeAzure *a = s->state;

        if (a->n_events == 0)
                return;
        a->n_events = 0;
        a->incarnation++;
}

static const char *fake_azure_instance_id(FakeServer *s) {
        return FAKE_AZURE_VM_ID;
}

const FakeCloud fake_cloud_azure = {
        .cloud = CLOUD_AZURE,
        .creds_kind = FAKE_CREDS_BEARER,
        /* IMDS's own Server: header is not documented; the fake names itself. */
        .server_header = "spotwatchd-fake-imds",
        .events = "preempt, terminate, reboot, redeploy, freeze",
        .state_size = sizeof(FakeAzure),
        .init = fake_azure_init,
        .handle = azure_handle,
        .set_notice = fake_azure_set_notice,
        .clear_notice = fake_azure_clear_notice,
        .instance_id = fake_azure_instance_id,
};
