/* SPDX-License-Identifier: MIT */
/*
 * provider-azure.c - the Azure Scheduled Events watcher: polls the
 * scheduledevents document, learns this VM's name (and vmId, for hooks),
 * turns the events that concern this VM into NoticeEvents, notices when one
 * of them is cancelled, and acknowledges an event with StartRequests once
 * the plan for it has finished (azure_ack = yes). See provider-azure.h for
 * the requests, the rate limit and the enabling call.
 *
 * One uv timer drives a small scheduler: each kind of request (a "job") has
 * its own HttpRequest, at most one of each runs at a time, and a job starts
 * when it is due and AZURE_REQUEST_SPACING_USEC have passed since the last
 * start of any job. It owns the VM name, the events of the last document
 * (to tell a cancellation), the acknowledgement queue and the timer.
 *
 * It must not signal, spawn, write files or log above debug: notices go to
 * cb.on_event (on every poll that serves them), cancellations to
 * cb.on_cancel, acknowledgement outcomes to cb.on_ack, and each
 * scheduledevents poll ends with exactly one cb.on_poll for the manager to
 * log and rate-limit. Callbacks may call provider_stop() but must not free
 * the provider.
 *
 * The timer is a ProviderTimer (provider-util.h), a small block that frees
 * itself in its close callback, so provider_free() can release the provider
 * at once.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "provider-azure.h"
#include "provider-util.h"
#include "provider.h"
#include "shared/log.h"
#include "shared/macro.h"

#define AZURE_METADATA_HEADER "Metadata: true"
#define AZURE_CONTENT_TYPE_JSON "Content-Type: application/json"
#define AZURE_NOTICE_PREFIX "azure:"
#define AZURE_QUOTE_SIZE (PROVIDER_QUOTE_MAX + 8)

typedef enum AzureJob {
        AZURE_JOB_ACK,    /* first: a tie goes to the job listed first */
        AZURE_JOB_NAME,
        AZURE_JOB_EVENTS,
        AZURE_JOB_VM_ID,
        _AZURE_JOB_MAX,
        _AZURE_JOB_INVALID = -EINVAL,
} AzureJob;

static const struct {
        const char *path;
        const char *what; /* for on_poll, on_ack and debug logs */
} azure_jobs[_AZURE_JOB_MAX] = {
        [AZURE_JOB_ACK] = { "/metadata/scheduledevents?api-version=" AZURE_EVENTS_API_VERSION,
                            "scheduledevents StartRequests" },
        [AZURE_JOB_NAME] = { "/metadata/instance/compute/name?api-version=" AZURE_COMPUTE_API_VERSION
                             "&format=text",
                             "compute/name" },
        [AZURE_JOB_EVENTS] = { "/metadata/scheduledevents?api-version=" AZURE_EVENTS_API_VERSION,
                               "scheduledevents" },
        [AZURE_JOB_VM_ID] = { "/metadata/instance/compute/vmId?api-version=" AZURE_COMPUTE_API_VERSION
                              "&format=text",
                              "compute/vmId" },
};

typedef struct AzureProvider AzureProvider;

/* An event of this VM from the last document, to tell a cancellation from an end. */
typedef struct AzureTracked {
        NoticeEvent ev;           /* as reported; its deadline stays as first computed */
        uint64_t not_before_usec; /* the last NotBefore served; 0 = "" (started) */
        bool started;             /* served with EventStatus Started */
        bool acked;               /* we sent StartRequests for it */
        bool seen;                /* in the document being processed */
} AzureTracked;

struct AzureProvider {
        Provider p;

        ProviderTimer *timer;       /* its owner is the provider */
        char *url[_AZURE_JOB_MAX];
        HttpRequest *req[_AZURE_JOB_MAX];
        bool running;
        uint64_t next_start_usec;   /* monotonic: no request starts before this (rate limit) */

        /* scheduledevents */
        uint64_t poll_due_usec;     /* monotonic */
        uint64_t poll_start_usec;
        bool enabled;               /* a GET was answered 200: the service is on */
        unsigned failures;          /* failed polls in a row */
        bool have_incarnation;
        uint64_t incarnation;
        AzureTracked tracked[AZURE_EVENTS_MAX];
        size_t n_tracked;

        /* compute/name and compute/vmId */
        char *vm_name;
        uint64_t name_due_usec;
        unsigned name_failures;
        int name_error;
        char name_detail[128];
        uint64_t vm_id_due_usec;
        unsigned vm_id_tries;

        /* StartRequests, oldest first; acks[0] is the one running or next */
        NoticeEvent acks[AZURE_ACKS_MAX];
        size_t n_acks;
        unsigned ack_tries;
        uint64_t ack_due_usec;
};

static AzureProvider *azure_from_provider(Provider *p) {
        return container_of(p, AzureProvider, p);
}

/* ---- pure parts ------------------------------------------------------ */

static const char *const azure_event_type_table[_AZURE_EVENT_TYPE_MAX] = {
        [AZURE_EVENT_FREEZE] = "Freeze",
        [AZURE_EVENT_REBOOT] = "Reboot",
        [AZURE_EVENT_REDEPLOY] = "Redeploy",
        [AZURE_EVENT_PREEMPT] = "Preempt",
        [AZURE_EVENT_TERMINATE] = "Terminate",
};

const char *azure_event_type_to_string(AzureEventType t) {
        if (t < 0 || t >= _AZURE_EVENT_TYPE_MAX)
                return NULL;
        return azure_event_type_table[t];
}

AzureEventType azure_event_type_from_string(const char *s) {
        if (!s)
                return _AZURE_EVENT_TYPE_INVALID;
        for (AzureEventType t = 0; t < _AZURE_EVENT_TYPE_MAX; t++)
                if (streq(azure_event_type_table[t], s))
                        return t;
        return _AZURE_EVENT_TYPE_INVALID;
}

static const char *const azure_event_status_table[_AZURE_EVENT_STATUS_MAX] = {
        [AZURE_EVENT_STATUS_OTHER] = "other",
        [AZURE_EVENT_STATUS_SCHEDULED] = "Scheduled",
        [AZURE_EVENT_STATUS_STARTED] = "Started",
};

const char *azure_event_status_to_string(AzureEventStatus s) {
        if (s < 0 || s >= _AZURE_EVENT_STATUS_MAX)
                return NULL;
        return azure_event_status_table[s];
}

static bool event_id_valid(const char *s, size_t len) {
        return len > 0 && len <= AZURE_EVENT_ID_MAX && provider_visible_ascii(s, len);
}

static bool ascii_caseeq(const char *a, size_t alen, const char *b) {
        size_t blen = strlen(b);

        if (alen != blen)
                return false;
        for (size_t i = 0; i < alen; i++) {
                char x = a[i], y = b[i];

                if (x >= 'A' && x <= 'Z')
                        x = (char) (x - 'A' + 'a');
                if (y >= 'A' && y <= 'Z')
                        y = (char) (y - 'A' + 'a');
                if (x != y)
                        return false;
        }
        return true;
}

static int parse_event(json_object *e, size_t i, const char *vm_name, AzureEvent *ret, bool *ret_ours,
                       char *err, size_t errsz) {
        /* A missing member and a null one are the same to Azure. */
        const unsigned required = PROVIDER_JSON_NULL_IS_ABSENT,
                       optional = PROVIDER_JSON_NULL_IS_ABSENT | PROVIDER_JSON_OPTIONAL;
        const char *id, *type, *s, *status = NULL, *source = NULL, *not_before = NULL;
        size_t id_len, type_len, len, status_len = 0, source_len = 0, not_before_len = 0;
        json_object *resources = NULL;
        AzureEvent ev = {
                .status = AZURE_EVENT_STATUS_OTHER,
                .duration_sec = -1,
        };
        bool ours = false;
        char q[AZURE_QUOTE_SIZE], prefix[32];
        size_t n;
        int r;

        if (!json_object_is_type(e, json_type_object))
                return provider_set_error(err, errsz, "event %zu is not an object", i);
        (void) snprintf(prefix, sizeof(prefix), "event %zu: ", i);

        r = provider_json_get_string(e, prefix, "EventId", required, &id, &id_len, err, errsz);
        if (r < 0)
                return r;
        if (!event_id_valid(id, id_len)) {
                provider_quote_untrusted(q, sizeof(q), id, id_len);
                return provider_set_error(err, errsz, "event %zu: invalid \"EventId\" '%s'", i, q);
        }
        r = provider_json_get_string(e, prefix, "EventType", required, &type, &type_len, err, errsz);
        if (r < 0)
                return r;

        r = provider_json_get_array(e, prefix, "Resources", required, &resources, err, errsz);
        if (r < 0)
                return r;
        n = json_object_array_length(resources);
        for (size_t k = 0; k < n; k++) {
                r = provider_json_string_value(json_object_array_get_idx(resources, k), "a resource", &s,
                                               &len, err, errsz);
                if (r < 0)
                        return provider_set_error(err, errsz, "event %zu: resource %zu is not a string", i,
                                                  k);
                if (vm_name && ascii_caseeq(s, len, vm_name))
                        ours = true;
        }

        /* Optional members: checked, mostly for the log. */
        r = provider_json_get_string(e, prefix, "ResourceType", optional, &s, &len, err, errsz);
        if (r < 0)
                return r;
        r = provider_json_get_string(e, prefix, "Description", optional, &s, &len, err, errsz);
        if (r < 0)
                return r;
        r = provider_json_get_string(e, prefix, "EventSource", optional, &source, &source_len, err, errsz);
        if (r < 0)
                return r;
        r = provider_json_get_string(e, prefix, "EventStatus", optional, &status, &status_len, err, errsz);
        if (r < 0)
                return r;
        r = provider_json_get_string(e, prefix, "NotBefore", optional, &not_before, &not_before_len, err,
                                     errsz);
        if (r < 0)
                return r;
        if (not_before_len > 0 &&
            (not_before_len > 64 || azure_parse_rfc1123(not_before, &ev.not_before_usec) < 0)) {
                provider_quote_untrusted(q, sizeof(q), not_before, not_before_len);
                return provider_set_error(err, errsz, "event %zu: invalid \"NotBefore\" '%s'", i, q);
        }
        r = provider_json_get_int64(e, prefix, "DurationInSeconds", optional, -1, &ev.duration_sec, err,
                                    errsz);
        if (r < 0)
                return r;

        if (!ours) {
                *ret_ours = false;
                return 0;
        }

        memcpy(ev.event_id, id, id_len);
        ev.event_id[id_len] = 0;
        ev.type = azure_event_type_from_string(type);
        provider_quote_untrusted(ev.event_type, sizeof(ev.event_type), type, type_len);
        if (status && streq(status, "Scheduled"))
                ev.status = AZURE_EVENT_STATUS_SCHEDULED;
        else if (status && streq(status, "Started"))
                ev.status = AZURE_EVENT_STATUS_STARTED;
        if (source)
                provider_quote_untrusted(ev.event_source, sizeof(ev.event_source), source, source_len);

        *ret = ev;
        *ret_ours = true;
        return 0;
}

static int parse_document(const char *body, size_t size, const char *vm_name, AzureDocument *ret, char *err,
                          size_t errsz) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        _cleanup_free_ AzureDocument *doc = NULL;
        json_object *events;
        int64_t incarnation;
        size_t n;
        int r;

        r = provider_json_parse(body, size, json_type_object, AZURE_JSON_MAX_DEPTH, &o, err, errsz);
        if (r < 0)
                return r;

        r = provider_json_get_int64(o, NULL, "DocumentIncarnation", PROVIDER_JSON_NULL_IS_ABSENT, 0,
                                    &incarnation, err, errsz);
        if (r < 0)
                return r;
        r = provider_json_get_array(o, NULL, "Events", PROVIDER_JSON_NULL_IS_ABSENT, &events, err, errsz);
        if (r < 0)
                return r;
        n = json_object_array_length(events);
        if (n > AZURE_DOC_ENTRIES_MAX)
                return provider_set_error(err, errsz, "%zu events, more than %d", n, AZURE_DOC_ENTRIES_MAX);

        doc = calloc(1, sizeof(*doc));
        if (!doc)
                return -ENOMEM;
        doc->incarnation = (uint64_t) incarnation;
        doc->n_entries = n;
        for (size_t i = 0; i < n; i++) {
                AzureEvent ev;
                bool ours = false;

                r = parse_event(json_object_array_get_idx(events, i), i, vm_name, &ev, &ours, err, errsz);
                if (r < 0)
                        return r;
                if (!ours)
                        continue;
                if (doc->n_events < AZURE_EVENTS_MAX)
                        doc->events[doc->n_events++] = ev;
                else
                        doc->n_dropped++;
        }

        *ret = *doc;
        return 0;
}

int azure_parse_document(const char *body, size_t size, const char *vm_name, AzureDocument *ret) {
        return parse_document(body, size, vm_name, ret, NULL, 0);
}

int azure_parse_rfc1123(const char *s, uint64_t *ret_usec) {
        static const char weekdays[7][4] = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" };
        const char *p = s;
        uint64_t usec;
        bool weekday = false;

        if (!s)
                return -EINVAL;
        /* Never step past a NUL: each field is checked before the next is read. */
        for (size_t i = 0; i < ELEMENTSOF(weekdays) && !weekday; i++)
                weekday = strncmp(p, weekdays[i], 3) == 0;
        if (!weekday || p[3] != ',' || p[4] != ' ')
                return -EINVAL;
        p += 5;
        if (provider_parse_date_time(&p, &usec) < 0 || (!streq(p, " GMT") && !streq(p, " UTC")))
                return -EINVAL;

        *ret_usec = usec;
        return 0;
}

int azure_event_to_notice(const AzureEvent *e, uint64_t now_usec, NoticeEvent *ret) {
        EventKind kind = _EVENT_INVALID;

        assert(e);
        assert(ret);

        switch (e->type) {
        case AZURE_EVENT_PREEMPT:
                kind = EVENT_PREEMPT;
                break;
        case AZURE_EVENT_TERMINATE:
                kind = EVENT_TERMINATE;
                break;
        case AZURE_EVENT_FREEZE:
        case AZURE_EVENT_REBOOT:
        case AZURE_EVENT_REDEPLOY:
                kind = EVENT_MAINTENANCE;
                break;
        case _AZURE_EVENT_TYPE_MAX:
        case _AZURE_EVENT_TYPE_INVALID:
                break;
        }
        if (kind < 0)
                return -EOPNOTSUPP;

        *ret = (NoticeEvent) {
                .kind = kind,
                .cloud = CLOUD_AZURE,
                .deadline_usec = e->not_before_usec > now_usec ? e->not_before_usec
                                                               : now_usec + AZURE_MIN_NOTICE_USEC,
        };
        (void) snprintf(ret->id, sizeof(ret->id), AZURE_NOTICE_PREFIX "%s", e->event_id);
        (void) snprintf(ret->detail, sizeof(ret->detail), "%s", azure_event_type_to_string(e->type));
        return 0;
}

const char *azure_event_id_from_notice(const char *id) {
        size_t n = strlen(AZURE_NOTICE_PREFIX);

        if (!id || strncmp(id, AZURE_NOTICE_PREFIX, n) != 0 || !event_id_valid(id + n, strlen(id + n)))
                return NULL;
        return id + n;
}

int azure_parse_vm_name(const char *body, size_t size, char **ret) {
        return provider_parse_word(body, size, AZURE_VM_NAME_MAX, ret);
}

int azure_build_ack_body(const char *event_id, char **ret) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        json_object *list, *req, *id;
        const char *text;
        char *s;

        if (!event_id || !event_id_valid(event_id, strlen(event_id)))
                return -EINVAL;

        o = json_object_new_object();
        if (!o)
                return -ENOMEM;
        list = json_object_new_array();
        if (!list)
                return -ENOMEM;
        if (json_object_object_add(o, "StartRequests", list) < 0) {
                (void) json_object_put(list);
                return -ENOMEM;
        }
        req = json_object_new_object();
        if (!req)
                return -ENOMEM;
        if (json_object_array_add(list, req) < 0) {
                (void) json_object_put(req);
                return -ENOMEM;
        }
        id = json_object_new_string(event_id);
        if (!id)
                return -ENOMEM;
        if (json_object_object_add(req, "EventId", id) < 0) {
                (void) json_object_put(id);
                return -ENOMEM;
        }

        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!text)
                return -ENOMEM;
        s = strdup(text);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

uint64_t azure_backoff_usec(uint64_t poll_interval_usec, unsigned failures) {
        return provider_backoff_usec(poll_interval_usec, failures, AZURE_BACKOFF_CAP_USEC);
}

/* ---- the scheduler ---------------------------------------------------- */

static void azure_dispatch(AzureProvider *a);

static uint64_t azure_poll_interval(AzureProvider *a) {
        return provider_poll_interval_usec(a->p.config);
}

static void describe_failure(int error, long status, char *buf, size_t size) {
        if (error < 0)
                (void) snprintf(buf, size, "%s", provider_transport_error_to_string(error));
        else if (status == 429)
                (void) snprintf(buf, size, "HTTP 429 (throttled)");
        else
                (void) snprintf(buf, size, "HTTP %ld", status);
}

static bool status_retryable(int error, long status) {
        return error < 0 || status == 429 || status >= 500;
}

/* A 429 from any endpoint: IMDS counts every request, so all of ours wait. */
static void azure_throttled(AzureProvider *a, uint64_t now) {
        a->next_start_usec = MAX(a->next_start_usec, now + AZURE_THROTTLE_PAUSE_USEC);
}

/* When @job should start (monotonic), or UINT64_MAX when it has nothing to do or is running. */
static uint64_t azure_job_due(AzureProvider *a, AzureJob job) {
        if (http_request_is_running(a->req[job]) > 0)
                return UINT64_MAX;
        switch (job) {
        case AZURE_JOB_ACK:
                return a->n_acks > 0 ? a->ack_due_usec : UINT64_MAX;
        case AZURE_JOB_NAME:
                return a->vm_name ? UINT64_MAX : a->name_due_usec;
        case AZURE_JOB_EVENTS:
                return a->poll_due_usec;
        case AZURE_JOB_VM_ID:
                /* Only nice to have for hooks: after the name, and not forever. */
                if (!a->vm_name || a->p.instance_id || a->vm_id_tries >= AZURE_VM_ID_TRIES)
                        return UINT64_MAX;
                return a->vm_id_due_usec;
        case _AZURE_JOB_MAX:
        case _AZURE_JOB_INVALID:
                break;
        }
        return UINT64_MAX;
}

static void azure_http_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                            void *userdata);

static int azure_job_start(AzureProvider *a, AzureJob job) {
        const char *get_headers[] = { AZURE_METADATA_HEADER, NULL };
        const char *post_headers[] = { AZURE_METADATA_HEADER, AZURE_CONTENT_TYPE_JSON, NULL };
        _cleanup_free_ char *body = NULL;
        HttpRequestParams params = {
                .method = "GET",
                .url = a->url[job],
                .headers = get_headers,
                .timeout_usec = a->p.config->request_timeout_usec,
                .max_body = AZURE_MAX_SMALL_BODY,
        };
        int r;

        switch (job) {
        case AZURE_JOB_ACK:
                r = azure_build_ack_body(azure_event_id_from_notice(a->acks[0].id), &body);
                if (r < 0)
                        return r;
                params.method = "POST";
                params.headers = post_headers;
                params.body = body;
                params.body_size = strlen(body);
                log_debug("azure: POST %s %s", a->url[job], body);
                break;
        case AZURE_JOB_EVENTS:
                params.max_body = AZURE_MAX_BODY;
                if (!a->enabled) {
                        /* The first call switches Scheduled Events on and may take up to 2 minutes. */
                        params.timeout_usec = MAX(params.timeout_usec, AZURE_FIRST_CALL_TIMEOUT_USEC);
                        log_debug("azure: GET %s (may take up to %" PRIu64 " s while the service starts)",
                                  a->url[job], params.timeout_usec / USEC_PER_SEC);
                }
                a->poll_start_usec = provider_now_usec(CLOCK_MONOTONIC);
                break;
        case AZURE_JOB_NAME:
        case AZURE_JOB_VM_ID:
                break;
        case _AZURE_JOB_MAX:
        case _AZURE_JOB_INVALID:
                return -EINVAL;
        }

        return http_request_start(a->req[job], &params, azure_http_done, a);
}

static void azure_events_failed(AzureProvider *a, int error, const char *what, const char *detail);
static void azure_ack_finished(AzureProvider *a, int error, const char *detail);

/* A job could not even be started: treat it as a failed attempt of that job. */
static void azure_job_start_failed(AzureProvider *a, AzureJob job, int error, uint64_t now) {
        char detail[128];

        if (job < 0 || job >= _AZURE_JOB_MAX)
                return;
        (void) snprintf(detail, sizeof(detail), "cannot start request: %s", strerror(-error));
        log_debug("azure: %s: %s", strna(azure_jobs[job].what), detail);
        switch (job) {
        case AZURE_JOB_ACK:
                /* A bad EventId or no memory: retrying will not help. */
                azure_ack_finished(a, error, detail);
                break;
        case AZURE_JOB_NAME:
                a->name_failures = MIN(a->name_failures + 1, 64U);
                a->name_error = error;
                (void) snprintf(a->name_detail, sizeof(a->name_detail), "%s", detail);
                a->name_due_usec = now + azure_backoff_usec(azure_poll_interval(a), a->name_failures);
                break;
        case AZURE_JOB_EVENTS:
                azure_events_failed(a, error, azure_jobs[job].what, detail);
                break;
        case AZURE_JOB_VM_ID:
                a->vm_id_tries++;
                a->vm_id_due_usec = now + azure_poll_interval(a);
                break;
        case _AZURE_JOB_MAX:
        case _AZURE_JOB_INVALID:
                break;
        }
}

static void azure_timer_cb(uv_timer_t *t) {
        AzureProvider *a = provider_timer_owner(t);

        if (!a)
                return;
        azure_dispatch(a);
}

static void azure_arm_timer(AzureProvider *a, uint64_t at_usec, uint64_t now) {
        uint64_t delay = at_usec > now ? at_usec - now : 0;
        int r;

        r = uv_timer_start(&a->timer->handle, azure_timer_cb, provider_timeout_ms(delay), 0);
        if (r < 0)
                log_debug_errno(r, "azure: cannot arm the timer: %m");
}

/*
 * Start whatever is due, one request per AZURE_REQUEST_SPACING_USEC, and arm
 * the timer for the next thing to do. Called after every answer, from the
 * timer, and when an acknowledgement is queued.
 */
static void azure_dispatch(AzureProvider *a) {
        if (!a->running || !a->timer)
                return;

        for (unsigned guard = 0; guard < 2 * _AZURE_JOB_MAX && a->running; guard++) {
                uint64_t now = provider_now_usec(CLOCK_MONOTONIC), best_due = UINT64_MAX;
                AzureJob best = _AZURE_JOB_INVALID;
                int r;

                for (AzureJob j = 0; j < _AZURE_JOB_MAX; j++) {
                        uint64_t due = azure_job_due(a, j);

                        if (due < best_due) {
                                best_due = due;
                                best = j;
                        }
                }
                if (best < 0) {
                        (void) uv_timer_stop(&a->timer->handle);
                        return;
                }
                best_due = MAX(best_due, a->next_start_usec);
                if (best_due > now) {
                        azure_arm_timer(a, best_due, now);
                        return;
                }

                /* Count every attempt against the rate, even one that fails to start. */
                a->next_start_usec = now + AZURE_REQUEST_SPACING_USEC;
                r = azure_job_start(a, best);
                if (r < 0)
                        azure_job_start_failed(a, best, r, now);
        }
        /* Each pass started a job or pushed its due time; the next one waits for the spacing. */
        if (a->running)
                azure_arm_timer(a, a->next_start_usec, provider_now_usec(CLOCK_MONOTONIC));
}

/* ---- scheduledevents -------------------------------------------------- */

static AzureTracked *azure_find_tracked(AzureProvider *a, const char *event_id) {
        for (size_t i = 0; i < a->n_tracked; i++)
                if (streq(azure_event_id_from_notice(a->tracked[i].ev.id) ?: "", event_id))
                        return &a->tracked[i];
        return NULL;
}

/* End of a poll: schedule the next one, then report. The owner may stop us from on_poll. */
static void azure_poll_report(AzureProvider *a, int error, const char *what, const char *detail) {
        Provider *p = &a->p;
        uint64_t now = provider_now_usec(CLOCK_MONOTONIC), interval = azure_poll_interval(a);

        provider_count_poll(p, error);

        if (error < 0) {
                a->failures = MIN(a->failures + 1, 64U);
                a->poll_due_usec = now + azure_backoff_usec(interval, a->failures);
                log_debug("azure: poll failed (%s: %s), next in %" PRIu64 " ms", strna(what), strna(detail),
                          (a->poll_due_usec - now) / USEC_PER_MSEC);
        } else {
                a->failures = 0;
                /* Fixed rate: the next poll is due one interval after this one started. */
                a->poll_due_usec = MAX(a->poll_start_usec + interval, now);
        }

        if (p->cb.on_poll)
                p->cb.on_poll(p, error, error < 0 ? what : NULL, error < 0 ? detail : NULL, p->userdata);
}

static void azure_events_failed(AzureProvider *a, int error, const char *what, const char *detail) {
        azure_poll_report(a, error, what, detail);
}

/*
 * Match the events of this VM in @doc against the last document's: report
 * each one (on_event, every poll), and each one that left the document before
 * its NotBefore without having started or been acknowledged (on_cancel, once).
 */
static void azure_process_document(AzureProvider *a, const AzureDocument *doc) {
        Provider *p = &a->p;
        uint64_t now = provider_now_usec(CLOCK_REALTIME);
        AzureTracked next[AZURE_EVENTS_MAX], cancelled[AZURE_EVENTS_MAX];
        NoticeEvent report[AZURE_EVENTS_MAX];
        size_t n_next = 0, n_cancelled = 0, n_report = 0;

        for (size_t i = 0; i < doc->n_events; i++) {
                const AzureEvent *e = &doc->events[i];
                AzureTracked *t = azure_find_tracked(a, e->event_id);
                NoticeEvent ev;

                if (azure_event_to_notice(e, now, &ev) < 0) {
                        log_debug("azure: ignoring event %s of unknown type '%s'", e->event_id,
                                  e->event_type);
                        continue;
                }
                if (t) {
                        /* Keep the deadline first given unless Azure names a later, real one. */
                        if (e->not_before_usec <= now)
                                ev.deadline_usec = t->ev.deadline_usec;
                        t->seen = true;
                }
                next[n_next] = (AzureTracked) {
                        .ev = ev,
                        .not_before_usec = e->not_before_usec,
                        .started = e->status == AZURE_EVENT_STATUS_STARTED || (t && t->started),
                        .acked = t && t->acked,
                };
                n_next++;
                report[n_report++] = ev;
                if (!t)
                        log_debug("azure: new event %s: %s, status %s, NotBefore %" PRIu64 ", source '%s', "
                                  "duration %" PRIi64 " s",
                                  e->event_id, e->event_type, strna(azure_event_status_to_string(e->status)),
                                  e->not_before_usec / USEC_PER_SEC, e->event_source, e->duration_sec);
        }

        for (size_t i = 0; i < a->n_tracked; i++) {
                AzureTracked *t = &a->tracked[i];

                if (t->seen)
                        continue;
                /* An event that started (or that we let start) and ended is not a cancellation. */
                if (!t->started && !t->acked && t->not_before_usec > now)
                        cancelled[n_cancelled++] = *t;
                else
                        log_debug("azure: event %s has ended", t->ev.id);
        }

        memcpy(a->tracked, next, n_next * sizeof(next[0]));
        a->n_tracked = n_next;
        for (size_t i = 0; i < a->n_tracked; i++)
                a->tracked[i].seen = false;

        for (size_t i = 0; i < n_report; i++) {
                log_debug("azure: event %s (%s)", report[i].id, report[i].detail);
                if (p->cb.on_event)
                        p->cb.on_event(p, &report[i], p->userdata);
                if (!a->running)
                        return;
        }
        for (size_t i = 0; i < n_cancelled; i++) {
                log_debug("azure: event %s left the document before its NotBefore: cancelled",
                          cancelled[i].ev.id);
                if (p->cb.on_cancel)
                        p->cb.on_cancel(p, &cancelled[i].ev, p->userdata);
                if (!a->running)
                        return;
        }
}

static void azure_on_events(AzureProvider *a, int error, long status, const char *body, size_t size) {
        const char *what = azure_jobs[AZURE_JOB_EVENTS].what;
        _cleanup_free_ AzureDocument *doc = NULL;
        char detail[256];
        int r;

        if (error < 0 || status != 200) {
                describe_failure(error, status, detail, sizeof(detail));
                log_debug("azure: %s: %s", what, detail);
                if (error == 0 && status == 429)
                        azure_throttled(a, provider_now_usec(CLOCK_MONOTONIC));
                azure_events_failed(a, error < 0 ? error : provider_http_status_to_errno(status), what,
                                    detail);
                return;
        }
        if (!a->enabled)
                log_debug("azure: Scheduled Events answered: the service is on");
        a->enabled = true;

        doc = malloc(sizeof(*doc));
        if (!doc) {
                azure_events_failed(a, -ENOMEM, what, "out of memory");
                return;
        }
        r = parse_document(body, size, a->vm_name, doc, detail, sizeof(detail));
        if (r < 0) {
                if (r != -EBADMSG)
                        (void) snprintf(detail, sizeof(detail), "%s", strerror(-r));
                log_debug("azure: %s: %s", what, detail);
                azure_events_failed(a, r, what, detail);
                return;
        }
        if (!a->have_incarnation || doc->incarnation != a->incarnation)
                log_debug("azure: DocumentIncarnation %" PRIu64 ", %zu events, %zu for this VM%s",
                          doc->incarnation, doc->n_entries, doc->n_events + doc->n_dropped,
                          a->vm_name ? "" : " (name not known yet)");
        a->have_incarnation = true;
        a->incarnation = doc->incarnation;
        if (doc->n_dropped > 0)
                log_debug("azure: %zu more events for this VM ignored", doc->n_dropped);

        if (a->vm_name) {
                azure_process_document(a, doc);
                if (!a->running)
                        return;
                azure_poll_report(a, 0, NULL, NULL);
                return;
        }

        /* Nothing can be told to concern us before the name is known. */
        if (a->name_failures > 0) {
                (void) snprintf(detail, sizeof(detail),
                                "%s; events are not acted on until this VM's name is known", a->name_detail);
                azure_poll_report(a, a->name_error, azure_jobs[AZURE_JOB_NAME].what, detail);
        } else
                azure_poll_report(a, 0, NULL, NULL);
}

/* ---- compute/name, compute/vmId --------------------------------------- */

static void azure_on_name(AzureProvider *a, int error, long status, const char *body, size_t size) {
        uint64_t now = provider_now_usec(CLOCK_MONOTONIC);
        char *name = NULL;
        int r = -EBADMSG;

        if (error == 0 && status == 200) {
                r = azure_parse_vm_name(body, size, &name);
                if (r >= 0) {
                        a->vm_name = name;
                        a->name_failures = 0;
                        log_debug("azure: VM name '%s'", a->vm_name);
                        return;
                }
                (void) snprintf(a->name_detail, sizeof(a->name_detail), "%s",
                                r == -EBADMSG ? "not a VM name" : strerror(-r));
        } else {
                describe_failure(error, status, a->name_detail, sizeof(a->name_detail));
                if (error == 0 && status == 429)
                        azure_throttled(a, now);
                r = error < 0 ? error : provider_http_status_to_errno(status);
        }
        a->name_error = r;
        a->name_failures = MIN(a->name_failures + 1, 64U);
        a->name_due_usec = now + azure_backoff_usec(azure_poll_interval(a), a->name_failures);
        log_debug("azure: compute/name: %s, retrying in %" PRIu64 " ms", a->name_detail,
                  (a->name_due_usec - now) / USEC_PER_MSEC);
}

static void azure_on_vm_id(AzureProvider *a, int error, long status, const char *body, size_t size) {
        uint64_t now = provider_now_usec(CLOCK_MONOTONIC);
        int r;

        if (error == 0 && status == 200) {
                r = provider_parse_word(body, size, AZURE_VM_ID_MAX, &a->p.instance_id);
                if (r >= 0) {
                        log_debug("azure: vmId '%s'", a->p.instance_id);
                        return;
                }
        }
        if (error == 0 && status == 429)
                azure_throttled(a, now);
        a->vm_id_tries++;
        a->vm_id_due_usec = now + azure_poll_interval(a);
        log_debug("azure: cannot get the vmId (error %d, HTTP %ld), try %u of %u", error, status,
                  a->vm_id_tries, AZURE_VM_ID_TRIES);
}

/* ---- StartRequests ---------------------------------------------------- */

/* The head of the queue is done with (either way): tell the owner, drop it. */
static void azure_ack_finished(AzureProvider *a, int error, const char *detail) {
        Provider *p = &a->p;
        NoticeEvent ev;

        assert(a->n_acks > 0);
        ev = a->acks[0];
        memmove(&a->acks[0], &a->acks[1], (a->n_acks - 1) * sizeof(a->acks[0]));
        a->n_acks--;
        a->ack_tries = 0;
        a->ack_due_usec = provider_now_usec(CLOCK_MONOTONIC);

        log_debug("azure: StartRequests for %s: %s", ev.id, error < 0 ? detail : "acknowledged");
        if (p->cb.on_ack)
                p->cb.on_ack(p, &ev, error, detail, p->userdata);
}

static void azure_on_ack(AzureProvider *a, int error, long status) {
        uint64_t now = provider_now_usec(CLOCK_MONOTONIC);
        AzureTracked *t;
        char detail[128];

        assert(a->n_acks > 0);
        describe_failure(error, status, detail, sizeof(detail));
        if (error == 0 && status >= 200 && status < 300) {
                t = azure_find_tracked(a, azure_event_id_from_notice(a->acks[0].id) ?: "");
                if (t)
                        t->acked = true;
                azure_ack_finished(a, 0, detail);
                return;
        }
        if (error == 0 && status == 429)
                azure_throttled(a, now);

        a->ack_tries++;
        if (status_retryable(error, status) && a->ack_tries < AZURE_ACK_TRIES) {
                a->ack_due_usec = now + azure_backoff_usec(azure_poll_interval(a), a->ack_tries);
                log_debug("azure: StartRequests for %s: %s, retrying in %" PRIu64 " ms", a->acks[0].id,
                          detail, (a->ack_due_usec - now) / USEC_PER_MSEC);
                return;
        }
        azure_ack_finished(a, error < 0 ? error : provider_http_status_to_errno(status), detail);
}

/* ---- HTTP edge -------------------------------------------------------- */

static void azure_http_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                            void *userdata) {
        AzureProvider *a = userdata;
        AzureJob job = _AZURE_JOB_INVALID;

        /* We cancel only in stop(); whatever was running then is of no interest. */
        if (error == -ECANCELED || !a->running)
                return;

        for (AzureJob j = 0; j < _AZURE_JOB_MAX; j++)
                if (a->req[j] == r)
                        job = j;
        switch (job) {
        case AZURE_JOB_ACK:
                if (a->n_acks > 0)
                        azure_on_ack(a, error, status);
                break;
        case AZURE_JOB_NAME:
                azure_on_name(a, error, status, body, size);
                break;
        case AZURE_JOB_EVENTS:
                azure_on_events(a, error, status, body, size);
                break;
        case AZURE_JOB_VM_ID:
                azure_on_vm_id(a, error, status, body, size);
                break;
        case _AZURE_JOB_MAX:
        case _AZURE_JOB_INVALID:
                return;
        }
        azure_dispatch(a);
}

/* ---- vtable ----------------------------------------------------------- */

static int azure_init(Provider *p) {
        AzureProvider *a = azure_from_provider(p);
        int r;

        for (AzureJob j = 0; j < _AZURE_JOB_MAX; j++) {
                if (asprintf(&a->url[j], "%s%s", p->base_url, azure_jobs[j].path) < 0) {
                        a->url[j] = NULL;
                        return -ENOMEM;
                }
                r = http_request_new(p->http, azure_jobs[j].what, &a->req[j]);
                if (r < 0)
                        return r;
        }

        return provider_timer_new(p->loop, a, &a->timer);
}

static int azure_start(Provider *p) {
        AzureProvider *a = azure_from_provider(p);
        uint64_t now = provider_now_usec(CLOCK_MONOTONIC);
        int r;

        if (a->running)
                return 0;
        for (AzureJob j = 0; j < _AZURE_JOB_MAX; j++) {
                r = provider_request_renew(p->http, azure_jobs[j].what, &a->req[j]);
                if (r < 0)
                        return r;
        }

        a->running = true;
        a->failures = 0;
        a->poll_due_usec = now;
        a->name_due_usec = now;
        a->vm_id_due_usec = now;
        a->ack_due_usec = now;
        azure_dispatch(a);
        return 0;
}

static void azure_stop(Provider *p) {
        AzureProvider *a = azure_from_provider(p);

        a->running = false;
        if (a->timer)
                (void) uv_timer_stop(&a->timer->handle);
        for (AzureJob j = 0; j < _AZURE_JOB_MAX; j++)
                if (a->req[j])
                        http_request_cancel(a->req[j]);
}

static void azure_done(Provider *p) {
        AzureProvider *a = azure_from_provider(p);

        for (AzureJob j = 0; j < _AZURE_JOB_MAX; j++) {
                a->req[j] = http_request_free(a->req[j]);
                free(a->url[j]);
                a->url[j] = NULL;
        }
        a->timer = provider_timer_close(a->timer);
        free(a->vm_name);
        a->vm_name = NULL;
}

static void azure_plan_finished(Provider *p, const NoticeEvent *ev) {
        AzureProvider *a = azure_from_provider(p);
        const char *event_id;

        if (!ev || ev->cloud != CLOUD_AZURE)
                return;
        event_id = azure_event_id_from_notice(ev->id);
        if (!event_id)
                return;
        if (!p->config->azure_ack) {
                log_debug("azure: not acknowledging %s (azure_ack = no)", ev->id);
                return;
        }
        for (size_t i = 0; i < a->n_acks; i++)
                if (streq(a->acks[i].id, ev->id))
                        return;
        /* Gone from the document (cancelled, or over): Azure would refuse the StartRequests. */
        bool tracked = false;
        for (size_t i = 0; i < a->n_tracked; i++)
                if (streq(a->tracked[i].ev.id, ev->id))
                        tracked = true;
        if (!tracked) {
                if (p->cb.on_ack)
                        p->cb.on_ack(p, ev, -ECANCELED,
                                     "not sent: the event is no longer scheduled (cancelled, or over)", p->userdata);
                return;
        }
        if (a->n_acks >= AZURE_ACKS_MAX) {
                if (p->cb.on_ack)
                        p->cb.on_ack(p, ev, -ENOBUFS, "too many acknowledgements waiting", p->userdata);
                return;
        }

        log_debug("azure: the plan for %s has finished, acknowledging it", ev->id);
        if (a->n_acks == 0) {
                a->ack_tries = 0;
                a->ack_due_usec = provider_now_usec(CLOCK_MONOTONIC);
        }
        a->acks[a->n_acks++] = *ev;
        azure_dispatch(a);
}

const ProviderVTable provider_azure_vtable = {
        .cloud = CLOUD_AZURE,
        .object_size = sizeof(AzureProvider),
        .init = azure_init,
        .start = azure_start,
        .stop = azure_stop,
        .done = azure_done,
        .plan_finished = azure_plan_finished,
};
