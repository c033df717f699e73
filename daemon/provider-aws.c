/* SPDX-License-Identifier: MIT */
/*
 * provider-aws.c - the AWS IMDSv2 watcher and the IMDS poll engine under it.
 *
 * The engine (AwsImds) drives a poll cycle of sequential requests on one uv
 * timer: the session token, the instance id, then a flavour's endpoints, each
 * through its own reusable HttpRequest (see provider-aws.h for the cycle, the
 * endpoints' cadence, the token rule and the backoff). It owns the session
 * token, the backoff state, when each endpoint is next due and the timer;
 * provider-alibaba.c runs it with Alibaba's header names and endpoint.
 * Instance-action is polled every cycle, the rebalance recommendation at most
 * every 5 s and scheduled maintenance at most every 60 s, unless their kind
 * is in [daemon] events. The AWS part is the parsers of AWS's answers and its endpoint
 * table: spot/instance-action, the rebalance recommendation, scheduled
 * maintenance events and, with aws_asg = yes, the Auto Scaling target
 * lifecycle state.
 *
 * Nothing here signals, spawns, writes files or logs above debug: notices go
 * to cb.on_event (on every poll that serves them), and each cycle ends with
 * exactly one cb.on_poll carrying the first error, for the manager to log and
 * rate-limit. Callbacks may call provider_stop() but must not free the
 * provider. The engine holds its timer, so it is freed in the timer's close
 * callback; the provider may go at once.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "provider-aws.h"
#include "provider-util.h"
#include "provider.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "shared/parse.h"

#define AWS_TOKEN_HEADER "X-aws-ec2-metadata-token"
#define AWS_TOKEN_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds"
#define AWS_TOKEN_MAX 1024
#define AWS_QUOTE_SIZE (PROVIDER_QUOTE_MAX + 8)
#define AWS_TIME_MAX 64
#define AWS_EVENT_ID_MAX 64
#define AWS_EVENT_CODE_MAX 64
#define AWS_LIFECYCLE_STATE_MAX 64

/* The engine's steps: the token PUT, the instance id, then the flavour's endpoints. */
enum {
        STEP_TOKEN,
        STEP_INSTANCE_ID,
        STEP_ENDPOINT,
};
#define STEPS_MAX (STEP_ENDPOINT + AWS_IMDS_ENDPOINTS_MAX)

struct AwsImds {
        uv_timer_t timer;        /* first: the close callback frees the whole block */
        Provider *p;             /* NULL once closed */
        const AwsImdsFlavor *flavor;
        size_t n_steps;
        char *url[STEPS_MAX];
        HttpRequest *req[STEPS_MAX];
        bool running;

        /* The cycle in progress. */
        bool in_cycle;
        size_t step;             /* the GET running or next */
        bool token_retried;      /* the one token re-fetch after a 401 is used */
        uint64_t cycle_start_usec; /* monotonic */
        int cycle_error;
        const char *cycle_what;
        char cycle_detail[160];

        /* The session. */
        char *token_header;      /* "X-aws-ec2-metadata-token: T", NULL without a token */
        uint64_t token_expiry_usec; /* CLOCK_BOOTTIME, so a suspend cannot make it look fresh */
        uint64_t token_ttl_usec; /* as granted */
        char ttl_header[96];
        bool tokenless_mode;     /* tokenless GETs, after the PUT was refused and that is allowed */
        uint64_t tokenless_probe_usec; /* CLOCK_BOOTTIME: try a PUT again from then on */

        unsigned instance_id_tries;
        unsigned failures;       /* failed cycles in a row */

        /* Monotonic: an endpoint with a min_interval_usec is next due in a cycle starting then; 0: now. */
        uint64_t due_usec[AWS_IMDS_ENDPOINTS_MAX];
};

typedef struct AwsProvider {
        Provider p;
        AwsImds *imds;
        uint64_t asg_terminated_usec; /* wall clock when "Terminated" was first seen; 0 while not */
} AwsProvider;

static AwsProvider *aws_from_provider(Provider *p) {
        return container_of(p, AwsProvider, p);
}

/* ---- pure parts ------------------------------------------------------ */

/*
 * JSON members as AWS serves them: a missing required member or a null one
 * is an error; an optional one may be missing, then *@ret is NULL.
 */
static int get_string_member_full(json_object *o, const char *key, bool optional, const char **ret,
                                  size_t *ret_len, char *err, size_t errsz) {
        int r;

        r = provider_json_get_string(o, NULL, key, optional ? PROVIDER_JSON_OPTIONAL : 0, ret, ret_len, err,
                                     errsz);
        if (r == 0) {
                *ret = NULL;
                *ret_len = 0;
        }
        return r < 0 ? r : 0;
}

static int get_string_member(json_object *o, const char *key, const char **ret, size_t *ret_len, char *err,
                             size_t errsz) {
        return get_string_member_full(o, key, false, ret, ret_len, err, errsz);
}

static int get_time_member(json_object *o, const char *key, uint64_t *ret_usec, char *ret_norm, size_t normsz,
                           char *err, size_t errsz) {
        char q[AWS_QUOTE_SIZE];
        const char *s;
        size_t len;
        uint64_t usec;
        int r;

        r = get_string_member(o, key, &s, &len, err, errsz);
        if (r < 0)
                return r;
        if (len > AWS_TIME_MAX || parse_rfc3339(s, &usec) < 0 || usec == 0) {
                provider_quote_untrusted(q, sizeof(q), s, len);
                return provider_set_error(err, errsz, "invalid \"%s\" '%s'", key, q);
        }

        format_rfc3339(ret_norm, normsz, usec);
        *ret_usec = usec;
        return 0;
}

static int parse_instance_action(const char *body, size_t size, NoticeEvent *ret, char *err, size_t errsz) {
        static const struct {
                const char *action;
                EventKind kind;
        } actions[] = {
                { "terminate", EVENT_TERMINATE },
                { "stop", EVENT_STOP },
                { "hibernate", EVENT_HIBERNATE },
        };
        _cleanup_(json_object_putp) json_object *o = NULL;
        char q[AWS_QUOTE_SIZE], norm[AWS_TIME_MAX];
        const char *action;
        size_t len, i;
        uint64_t usec;
        int r;

        r = provider_json_parse(body, size, json_type_object, AWS_JSON_MAX_DEPTH, &o, err, errsz);
        if (r < 0)
                return r;
        r = get_string_member(o, "action", &action, &len, err, errsz);
        if (r < 0)
                return r;
        for (i = 0; i < ELEMENTSOF(actions); i++)
                if (streq(actions[i].action, action))
                        break;
        if (i >= ELEMENTSOF(actions)) {
                provider_quote_untrusted(q, sizeof(q), action, len);
                return provider_set_error(err, errsz, "unknown action '%s'", q);
        }
        /* Any time, even a past one: hibernation comes without a lead, and the plan gets what is left. */
        r = get_time_member(o, "time", &usec, norm, sizeof(norm), err, errsz);
        if (r < 0)
                return r;

        *ret = (NoticeEvent) {
                .kind = actions[i].kind,
                .cloud = CLOUD_AWS,
                .deadline_usec = usec,
        };
        (void) snprintf(ret->id, sizeof(ret->id), "aws:spot:%s:%s", actions[i].action, norm);
        (void) snprintf(ret->detail, sizeof(ret->detail), "%s", actions[i].action);
        return 0;
}

static int parse_rebalance(const char *body, size_t size, NoticeEvent *ret, char *err, size_t errsz) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        char norm[AWS_TIME_MAX];
        uint64_t usec;
        int r;

        r = provider_json_parse(body, size, json_type_object, AWS_JSON_MAX_DEPTH, &o, err, errsz);
        if (r < 0)
                return r;
        r = get_time_member(o, "noticeTime", &usec, norm, sizeof(norm), err, errsz);
        if (r < 0)
                return r;

        *ret = (NoticeEvent) {
                .kind = EVENT_REBALANCE,
                .cloud = CLOUD_AWS,
                .deadline_usec = 0,
        };
        (void) snprintf(ret->id, sizeof(ret->id), "aws:rebalance:%s", norm);
        (void) snprintf(ret->detail, sizeof(ret->detail), "rebalance");
        return 0;
}

int aws_parse_event_time(const char *s, uint64_t *ret_usec) {
        uint64_t usec;

        if (!s)
                return -EINVAL;
        /* "21 Jan 2019 09:00:43 GMT"; AWS writes "1 Feb" as well as "01 Feb". */
        if (provider_parse_date_time(&s, &usec) < 0 || !streq(s, " GMT"))
                return -EINVAL;
        /* The epoch itself is no time AWS would schedule anything for. */
        if (usec == 0)
                return -EINVAL;

        *ret_usec = usec;
        return 0;
}

/* One element of the scheduled events array; *@ret_active false for events that are not active. */
static int parse_maintenance_event(json_object *o, size_t index, NoticeEvent *ret, bool *ret_active, char *err,
                                   size_t errsz) {
        static const char *const optional[] = { "Description", "NotAfter" };
        const char *code, *id, *state, *not_before, *s;
        char q[AWS_QUOTE_SIZE];
        size_t code_len, id_len, state_len, not_before_len, len;
        uint64_t usec;
        int r;

        if (!json_object_is_type(o, json_type_object))
                return provider_set_error(err, errsz, "event %zu is not an object", index);
        r = get_string_member(o, "Code", &code, &code_len, err, errsz);
        if (r >= 0)
                r = get_string_member(o, "EventId", &id, &id_len, err, errsz);
        if (r >= 0)
                r = get_string_member(o, "State", &state, &state_len, err, errsz);
        if (r >= 0)
                r = get_string_member_full(o, "NotBefore", true, &not_before, &not_before_len, err, errsz);
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(optional); i++)
                r = get_string_member_full(o, optional[i], true, &s, &len, err, errsz);
        if (r < 0)
                return r;
        if (id_len == 0 || id_len > AWS_EVENT_ID_MAX || !provider_visible_ascii(id, id_len)) {
                provider_quote_untrusted(q, sizeof(q), id, id_len);
                return provider_set_error(err, errsz, "invalid \"EventId\" '%s'", q);
        }
        if (code_len == 0 || code_len > AWS_EVENT_CODE_MAX || !provider_visible_ascii(code, code_len)) {
                provider_quote_untrusted(q, sizeof(q), code, code_len);
                return provider_set_error(err, errsz, "invalid \"Code\" '%s'", q);
        }

        /* Only active events concern us; canceled and completed ones stay in the list for a while. */
        if (!streq(state, "active")) {
                *ret_active = false;
                return 0;
        }
        if (!not_before)
                return provider_set_error(err, errsz, "active event '%s' has no \"NotBefore\"", id);
        if (not_before_len > AWS_TIME_MAX || aws_parse_event_time(not_before, &usec) < 0) {
                provider_quote_untrusted(q, sizeof(q), not_before, not_before_len);
                return provider_set_error(err, errsz, "invalid \"NotBefore\" '%s'", q);
        }

        *ret = (NoticeEvent) {
                .kind = EVENT_MAINTENANCE,
                .cloud = CLOUD_AWS,
                .deadline_usec = usec,
        };
        (void) snprintf(ret->id, sizeof(ret->id), "aws:maintenance:%s", id);
        (void) snprintf(ret->detail, sizeof(ret->detail), "%s", code);
        *ret_active = true;
        return 0;
}

static int parse_maintenance(const char *body, size_t size, NoticeEvent *ret_events, size_t n_max,
                             size_t *ret_n, char *err, size_t errsz) {
        _cleanup_(json_object_putp) json_object *a = NULL;
        size_t n = 0, k, n_all;
        NoticeEvent ev;
        bool active;
        int r;

        /* No events may also come as an empty answer. */
        for (k = 0; k < size && body && provider_is_space(body[k]); k++)
                ;
        if (body && k == size) {
                *ret_n = 0;
                return 0;
        }

        r = provider_json_parse(body, size, json_type_array, AWS_JSON_MAX_DEPTH, &a, err, errsz);
        if (r < 0)
                return r;
        n_all = json_object_array_length(a);
        /* Check every element first, so nothing is written for a body that is bad further on. */
        for (size_t i = 0; i < n_all; i++) {
                r = parse_maintenance_event(json_object_array_get_idx(a, i), i, &ev, &active, err, errsz);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < n_all && n < n_max; i++) {
                r = parse_maintenance_event(json_object_array_get_idx(a, i), i, &ev, &active, err, errsz);
                if (r < 0)
                        return r;
                if (active)
                        ret_events[n++] = ev;
        }

        *ret_n = n;
        return 0;
}

static bool lifecycle_word(const char *s, size_t size) {
        if (size == 0 || size > AWS_LIFECYCLE_STATE_MAX)
                return false;
        for (size_t i = 0; i < size; i++)
                if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || s[i] == ':'))
                        return false;
        return true;
}

static bool word_is(const char *s, size_t size, const char *word) {
        return size == strlen(word) && memcmp(s, word, size) == 0;
}

static int parse_lifecycle_state(const char *body, size_t size, bool *ret_terminated, char *err, size_t errsz) {
        char q[AWS_QUOTE_SIZE];

        if (!body || size == 0)
                return provider_set_error(err, errsz, "empty body");
        size = provider_trim_end(body, size);
        if (!lifecycle_word(body, size)) {
                provider_quote_untrusted(q, sizeof(q), body, size);
                return provider_set_error(err, errsz, "not a lifecycle state: '%s'", q);
        }

        /* Other states (InService, Warmed:Stopped, one AWS adds later) mean no notice. */
        *ret_terminated = word_is(body, size, "Terminated") || word_is(body, size, "Warmed:Terminated");
        return 0;
}

int aws_parse_instance_action(const char *body, size_t size, NoticeEvent *ret) {
        return parse_instance_action(body, size, ret, NULL, 0);
}

int aws_parse_rebalance(const char *body, size_t size, NoticeEvent *ret) {
        return parse_rebalance(body, size, ret, NULL, 0);
}

int aws_parse_maintenance(const char *body, size_t size, NoticeEvent *ret_events, size_t n_max, size_t *ret_n) {
        return parse_maintenance(body, size, ret_events, n_max, ret_n, NULL, 0);
}

int aws_parse_lifecycle_state(const char *body, size_t size, bool *ret_terminated) {
        return parse_lifecycle_state(body, size, ret_terminated, NULL, 0);
}

void aws_asg_event(const char *instance_id, uint64_t first_seen_usec, NoticeEvent *ret) {
        char t[AWS_TIME_MAX];

        *ret = (NoticeEvent) {
                .kind = EVENT_TERMINATE,
                .cloud = CLOUD_AWS,
                .deadline_usec = 0,
        };
        /* An instance is terminated once: with its id, the notice keeps its
         * identity across a daemon restart (state_dir), which a time would not. */
        if (!isempty(instance_id))
                (void) snprintf(ret->id, sizeof(ret->id), "aws:asg:terminated:%s", instance_id);
        else
                (void) snprintf(ret->id, sizeof(ret->id), "aws:asg:terminated:%s",
                                format_rfc3339(t, sizeof(t), first_seen_usec));
        (void) snprintf(ret->detail, sizeof(ret->detail), "Terminated");
}

int aws_parse_token_ttl(const char *value, uint64_t *ret_usec) {
        long v;
        int r;

        if (isempty(value))
                return -EINVAL;
        /* Digits only: no sign, space, fraction or hex, whatever parse_int() tolerates. */
        for (const char *c = value; *c; c++)
                if (*c < '0' || *c > '9')
                        return -EINVAL;
        r = parse_int(value, LONG_MIN, LONG_MAX, &v);
        if (r < 0)
                return r == -ERANGE ? -ERANGE : -EINVAL;
        if (v < 1 || v > AWS_TOKEN_TTL_MAX_SEC)
                return -ERANGE;

        *ret_usec = (uint64_t) v * USEC_PER_SEC;
        return 0;
}

uint64_t aws_token_refresh_margin_usec(uint64_t ttl_usec, uint64_t poll_interval_usec) {
        uint64_t twice = poll_interval_usec > UINT64_MAX / 2 ? UINT64_MAX : 2 * poll_interval_usec;

        return MAX(ttl_usec / 10, twice);
}

uint64_t aws_backoff_usec(uint64_t poll_interval_usec, unsigned failures) {
        return provider_backoff_usec(poll_interval_usec, failures, AWS_BACKOFF_CAP_USEC);
}

/* Instance ids look like "i-0123456789abcdef0"; accept any short run of visible ASCII. */
static bool instance_id_valid(const char *s, size_t size) {
        return size > 0 && size <= AWS_INSTANCE_ID_MAX && provider_visible_ascii(s, size);
}

/* ---- the poll cycle -------------------------------------------------- */

static void imds_timer_cb(uv_timer_t *t);
static void imds_cycle_run(AwsImds *m, size_t from);

static const char *step_path(const AwsImds *m, size_t step) {
        if (step == STEP_TOKEN)
                return "/latest/api/token";
        if (step == STEP_INSTANCE_ID)
                return "/latest/meta-data/instance-id";
        return m->flavor->endpoints[step - STEP_ENDPOINT].path;
}

static const char *step_what(const AwsImds *m, size_t step) {
        if (step == STEP_TOKEN)
                return "api/token";
        if (step == STEP_INSTANCE_ID)
                return "instance-id";
        return m->flavor->endpoints[step - STEP_ENDPOINT].what;
}

static size_t step_max_body(const AwsImds *m, size_t step) {
        if (step < STEP_ENDPOINT || m->flavor->endpoints[step - STEP_ENDPOINT].max_body == 0)
                return AWS_MAX_BODY;
        return m->flavor->endpoints[step - STEP_ENDPOINT].max_body;
}

static bool step_enabled(const AwsImds *m, size_t step) {
        const AwsImdsEndpoint *e;

        if (step < STEP_ENDPOINT)
                return true;
        e = &m->flavor->endpoints[step - STEP_ENDPOINT];
        return !e->enabled || e->enabled(m->p->config);
}

/*
 * Whether @step belongs in the cycle in progress. An advance warning
 * (rebalance, scheduled maintenance) is polled at most every
 * min_interval_usec, because each GET costs CPU while the machine idles,
 * unless its kind starts the plan ([daemon] events) and so deserves the
 * instance-action cadence.
 */
static bool step_due(const AwsImds *m, size_t step) {
        const AwsImdsEndpoint *e;

        if (step < STEP_ENDPOINT)
                return true;
        e = &m->flavor->endpoints[step - STEP_ENDPOINT];
        if (e->min_interval_usec == 0 || (e->every_cycle_events & m->p->config->events_mask))
                return true;
        return m->cycle_start_usec >= m->due_usec[step - STEP_ENDPOINT];
}

/* @step got an answer (200 that parsed, or 404): it may rest for its interval from this cycle's start. */
static void step_answered(AwsImds *m, size_t step) {
        const AwsImdsEndpoint *e = &m->flavor->endpoints[step - STEP_ENDPOINT];

        m->due_usec[step - STEP_ENDPOINT] = m->cycle_start_usec + e->min_interval_usec;
}

static bool imds_token_enabled(const AwsImds *m) {
        return !m->flavor->token_enabled || m->flavor->token_enabled(m->p->config);
}

static bool imds_tokenless_allowed(const AwsImds *m) {
        return m->flavor->tokenless_allowed && m->flavor->tokenless_allowed(m->p->config);
}

static uint64_t imds_poll_interval(const AwsImds *m) {
        return provider_poll_interval_usec(m->p->config);
}

static uint64_t imds_asked_ttl_sec(const AwsImds *m) {
        uint64_t s = m->p->config->token_ttl_usec / USEC_PER_SEC;

        return MIN(MAX(s, UINT64_C(1)), (uint64_t) AWS_TOKEN_TTL_MAX_SEC);
}

static void imds_drop_token(AwsImds *m) {
        free(m->token_header);
        m->token_header = NULL;
        m->token_expiry_usec = 0;
}

/* Note a failure; on_poll reports the first one of the cycle. */
_printf_(4, 5) static void imds_cycle_fail(AwsImds *m, int error, const char *what, const char *fmt, ...) {
        char detail[sizeof(m->cycle_detail)];
        va_list ap;

        assert(error < 0);
        va_start(ap, fmt);
        (void) vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
        log_debug("%s: %s: %s", m->flavor->name, what, detail);
        if (m->cycle_error < 0)
                return;
        m->cycle_error = error;
        m->cycle_what = what;
        memcpy(m->cycle_detail, detail, sizeof(detail));
}

static void imds_cycle_fail_transport(AwsImds *m, int error, size_t step) {
        if (error == -EFBIG)
                imds_cycle_fail(m, error, step_what(m, step), "body over the %zu KiB cap",
                                step_max_body(m, step) / 1024);
        else
                imds_cycle_fail(m, error, step_what(m, step), "%s",
                                provider_transport_error_to_string(error));
}

static void imds_arm_timer(AwsImds *m, uint64_t delay_usec) {
        int r;

        if (!m->running)
                return;
        r = uv_timer_start(&m->timer, imds_timer_cb, provider_timeout_ms(delay_usec), 0);
        if (r < 0)
                log_debug_errno(r, "%s: cannot arm the poll timer: %m", m->flavor->name);
}

static void imds_cycle_finish(AwsImds *m) {
        Provider *p = m->p;
        uint64_t now = provider_now_usec(CLOCK_MONOTONIC), interval = imds_poll_interval(m), delay;

        m->in_cycle = false;
        provider_count_poll(p, m->cycle_error);

        if (m->cycle_error < 0) {
                if (m->failures < 64)
                        m->failures++;
                delay = aws_backoff_usec(interval, m->failures);
                log_debug("%s: cycle failed (%s: %s), next in %" PRIu64 " ms", m->flavor->name, m->cycle_what,
                          m->cycle_detail, delay / USEC_PER_MSEC);
        } else {
                m->failures = 0;
                /* Fixed rate: the next cycle starts one interval after this one started. */
                delay = m->cycle_start_usec + interval > now ? m->cycle_start_usec + interval - now : 0;
        }
        imds_arm_timer(m, delay);

        /* Last: the owner may stop us from here. */
        if (p->cb.on_poll)
                p->cb.on_poll(p, m->cycle_error, m->cycle_error < 0 ? m->cycle_what : NULL,
                              m->cycle_error < 0 ? m->cycle_detail : NULL, p->userdata);
}

static void imds_http_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata);

static HttpRequestParams imds_params(AwsImds *m, size_t step) {
        return (HttpRequestParams) {
                .method = "GET",
                .url = m->url[step],
                .timeout_usec = m->p->config->request_timeout_usec,
                .max_body = step_max_body(m, step),
        };
}

static int imds_start_token(AwsImds *m, size_t resume) {
        const char *headers[] = { m->ttl_header, NULL };
        HttpRequestParams params = imds_params(m, STEP_TOKEN);

        (void) snprintf(m->ttl_header, sizeof(m->ttl_header), "%s: %" PRIu64, m->flavor->token_ttl_header,
                        imds_asked_ttl_sec(m));
        params.method = "PUT";
        params.headers = headers;
        m->step = resume;
        log_debug("%s: PUT %s (%s)", m->flavor->name, m->url[STEP_TOKEN], m->ttl_header);
        return http_request_start(m->req[STEP_TOKEN], &params, imds_http_done, m);
}

static int imds_start_get(AwsImds *m, size_t step) {
        const char *headers[] = { m->token_header, NULL };
        HttpRequestParams params = imds_params(m, step);

        params.headers = m->token_header ? headers : NULL;
        m->step = step;
        return http_request_start(m->req[step], &params, imds_http_done, m);
}

/* Start the first GET from @from on that this cycle needs; finish the cycle when none is left. */
static void imds_cycle_run(AwsImds *m, size_t from) {
        int r;

        for (size_t s = MAX(from, (size_t) STEP_INSTANCE_ID); s < m->n_steps; s++) {
                if (s == STEP_INSTANCE_ID && (m->p->instance_id || m->instance_id_tries >= AWS_INSTANCE_ID_TRIES))
                        continue;
                if (!step_enabled(m, s) || !step_due(m, s))
                        continue;
                r = imds_start_get(m, s);
                if (r >= 0)
                        return;
                imds_cycle_fail(m, r, step_what(m, s), "cannot start request: %s", strerror(-r));
                break;
        }
        imds_cycle_finish(m);
}

static bool imds_token_needed(AwsImds *m, uint64_t now) {
        if (!imds_token_enabled(m))
                return false;
        if (m->tokenless_mode)
                return now >= m->tokenless_probe_usec;
        if (!m->token_header)
                return true;
        return now + aws_token_refresh_margin_usec(m->token_ttl_usec, imds_poll_interval(m)) >=
               m->token_expiry_usec;
}

static void imds_cycle_start(AwsImds *m) {
        int r;

        assert(!m->in_cycle);
        m->in_cycle = true;
        m->cycle_start_usec = provider_now_usec(CLOCK_MONOTONIC);
        m->cycle_error = 0;
        m->cycle_what = NULL;
        m->cycle_detail[0] = 0;
        m->token_retried = false;

        /* A reload may have switched tokens off. */
        if (!imds_token_enabled(m)) {
                imds_drop_token(m);
                m->tokenless_mode = false;
        }

        if (imds_token_needed(m, provider_now_usec(CLOCK_BOOTTIME))) {
                r = imds_start_token(m, STEP_INSTANCE_ID);
                if (r < 0) {
                        imds_cycle_fail(m, r, step_what(m, STEP_TOKEN), "cannot start request: %s",
                                        strerror(-r));
                        imds_cycle_finish(m);
                }
                return;
        }
        imds_cycle_run(m, STEP_INSTANCE_ID);
}

static void imds_timer_cb(uv_timer_t *t) {
        AwsImds *m = container_of(t, AwsImds, timer);

        if (!m->p || !m->running || m->in_cycle)
                return;
        imds_cycle_start(m);
}

/* Keep the token in @body for the TTL the answer grants (@ttl_value), else for the asked one. */
static int imds_take_token(AwsImds *m, const char *body, size_t size, const char *ttl_value, uint64_t now) {
        _cleanup_free_ char *token = NULL, *header = NULL;
        uint64_t ttl;
        int r;

        /* Tolerate a trailing newline; the token goes into a header, so nothing else odd. */
        r = provider_parse_word(body, size, AWS_TOKEN_MAX, &token);
        if (r < 0)
                return r;
        if (asprintf(&header, "%s: %s", m->flavor->token_header, token) < 0)
                return -ENOMEM;
        if (aws_parse_token_ttl(ttl_value, &ttl) < 0) {
                log_debug("%s: token answer has no valid TTL header, assuming the asked %" PRIu64 " s",
                          m->flavor->name, imds_asked_ttl_sec(m));
                ttl = imds_asked_ttl_sec(m) * USEC_PER_SEC;
        }

        free(m->token_header);
        m->token_header = TAKE_PTR(header);
        m->token_ttl_usec = ttl;
        m->token_expiry_usec = now + ttl;
        m->tokenless_mode = false;
        log_debug("%s: got a token for %" PRIu64 " s", m->flavor->name, ttl / USEC_PER_SEC);
        return 0;
}

/* The token PUT ended. Continue the cycle at m->step, or end it. */
static void imds_on_token(AwsImds *m, int error, long status, const char *body, size_t size,
                          const char *ttl_value) {
        const char *what = step_what(m, STEP_TOKEN);
        uint64_t now = provider_now_usec(CLOCK_BOOTTIME);
        int r;

        if (error < 0)
                imds_cycle_fail_transport(m, error, STEP_TOKEN);
        else if (status == 200) {
                r = imds_take_token(m, body, size, ttl_value, now);
                if (r >= 0) {
                        imds_cycle_run(m, m->step);
                        return;
                }
                imds_cycle_fail(m, r, what, "%s", r == -EBADMSG ? "invalid token" : strerror(-r));
        } else if (status == 403 || status == 404 || status == 405) {
                /* No session tokens here (or they are switched off). */
                if (imds_tokenless_allowed(m)) {
                        log_debug("%s: token PUT answered HTTP %ld, going on without a token", m->flavor->name,
                                  status);
                        imds_drop_token(m);
                        m->tokenless_mode = true;
                        m->tokenless_probe_usec = now + imds_asked_ttl_sec(m) * USEC_PER_SEC;
                        imds_cycle_run(m, m->step);
                        return;
                }
                imds_cycle_fail(m, -EOPNOTSUPP, what, "HTTP %ld, and %s", status, m->flavor->tokenless_hint);
                imds_drop_token(m);
                imds_cycle_finish(m);
                return;
        } else
                imds_cycle_fail(m, provider_http_status_to_errno(status), what, "HTTP %ld", status);

        /* A failed refresh is not the end: the old token is good until it expires. */
        if (m->token_header && now < m->token_expiry_usec) {
                imds_cycle_run(m, m->step);
                return;
        }
        imds_drop_token(m);
        imds_cycle_finish(m);
}

/* A 401 on a GET: fetch a new token and retry it, once per cycle. */
static void imds_on_unauthorized(AwsImds *m, size_t step) {
        const char *what = step_what(m, step);
        int r;

        if (!imds_token_enabled(m)) {
                imds_cycle_fail(m, -EACCES, what, "HTTP 401: the service wants a session token (%s)",
                                m->flavor->token_hint);
                imds_cycle_finish(m);
                return;
        }

        imds_drop_token(m);
        if (m->token_retried) {
                imds_cycle_fail(m, -EACCES, what, "HTTP 401 with a fresh token");
                imds_cycle_finish(m);
                return;
        }
        log_debug("%s: %s answered 401, fetching a new token", m->flavor->name, what);
        m->token_retried = true;
        m->tokenless_mode = false;
        r = imds_start_token(m, step);
        if (r >= 0)
                return;
        imds_cycle_fail(m, r, step_what(m, STEP_TOKEN), "cannot start request: %s", strerror(-r));
        imds_cycle_finish(m);
}

static void imds_on_instance_id(AwsImds *m, int error, long status, const char *body, size_t size) {
        Provider *p = m->p;

        /* Nice to have for hooks, never a reason to fail a cycle. */
        if (error == 0 && status == 200 && instance_id_valid(body, size)) {
                p->instance_id = strndup(body, size);
                log_debug("%s: instance id '%s'", m->flavor->name, strna(p->instance_id));
        } else {
                m->instance_id_tries++;
                log_debug("%s: cannot get the instance id (error %d, HTTP %ld), try %u of %u", m->flavor->name,
                          error, status, m->instance_id_tries, AWS_INSTANCE_ID_TRIES);
        }
        imds_cycle_run(m, STEP_INSTANCE_ID + 1);
}

/* A GET ended. Report what it found, then go on with the next step. */
static void imds_on_get(AwsImds *m, size_t step, int error, long status, const char *body, size_t size) {
        Provider *p = m->p;
        const AwsImdsEndpoint *e;
        const char *what = step_what(m, step);
        NoticeEvent events[AWS_IMDS_EVENTS_MAX];
        char err[160];
        size_t n = 0;
        int r;

        if (error == 0 && status == 401) {
                imds_on_unauthorized(m, step);
                return;
        }
        if (step == STEP_INSTANCE_ID) {
                imds_on_instance_id(m, error, status, body, size);
                return;
        }

        e = &m->flavor->endpoints[step - STEP_ENDPOINT];
        if (error < 0)
                imds_cycle_fail_transport(m, error, step);
        else if (status == 404) {
                log_debug("%s: %s: none", m->flavor->name, what);
                step_answered(m, step);
                if (e->absent)
                        e->absent(p);
        } else if (status != 200)
                imds_cycle_fail(m, provider_http_status_to_errno(status), what, "HTTP %ld", status);
        else {
                r = e->parse(p, body, size, events, ELEMENTSOF(events), &n, err, sizeof(err));
                if (r < 0)
                        imds_cycle_fail(m, r, what, "%s", r == -EBADMSG ? err : strerror(-r));
                else
                        step_answered(m, step);
                if (r >= 0 && n == 0)
                        log_debug("%s: %s: none", m->flavor->name, what);
                for (size_t i = 0; r >= 0 && i < n; i++) {
                        log_debug("%s: %s: %s", m->flavor->name, what, events[i].id);
                        if (p->cb.on_event)
                                p->cb.on_event(p, &events[i], p->userdata);
                        if (!m->running)
                                return;
                }
        }

        imds_cycle_run(m, step + 1);
}

static void imds_http_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        AwsImds *m = userdata;

        /* We cancel only in stop(); whatever was running then is of no interest. */
        if (error == -ECANCELED || !m->p || !m->running || !m->in_cycle)
                return;

        if (r == m->req[STEP_TOKEN])
                imds_on_token(m, error, status, body, size,
                              error == 0 ? http_request_header(r, m->flavor->token_ttl_header) : NULL);
        else
                imds_on_get(m, m->step, error, status, body, size);
}

/* ---- the engine's life ------------------------------------------------ */

static void imds_timer_close_cb(uv_handle_t *h) {
        free(container_of((uv_timer_t *) h, AwsImds, timer));
}

int aws_imds_new(Provider *p, const AwsImdsFlavor *flavor, AwsImds **ret) {
        AwsImds *m;
        int r;

        assert(p);
        assert(flavor);
        assert(ret);

        if (flavor->n_endpoints > AWS_IMDS_ENDPOINTS_MAX)
                return -EINVAL;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        r = uv_timer_init(p->loop, &m->timer);
        if (r < 0) {
                free(m);
                return r;
        }
        /* From here on only the close callback frees @m. */
        m->p = p;
        m->flavor = flavor;
        m->n_steps = STEP_ENDPOINT + flavor->n_endpoints;

        for (size_t s = 0; s < m->n_steps; s++) {
                if (asprintf(&m->url[s], "%s%s", p->base_url, step_path(m, s)) < 0) {
                        m->url[s] = NULL;
                        aws_imds_close(m);
                        return -ENOMEM;
                }
                r = http_request_new(p->http, step_what(m, s), &m->req[s]);
                if (r < 0) {
                        aws_imds_close(m);
                        return r;
                }
        }

        *ret = m;
        return 0;
}

int aws_imds_start(AwsImds *m) {
        int r;

        assert(m);
        assert(m->p);

        if (m->running)
                return 0;
        for (size_t s = 0; s < m->n_steps; s++) {
                r = provider_request_renew(m->p->http, step_what(m, s), &m->req[s]);
                if (r < 0)
                        return r;
        }

        m->running = true;
        m->in_cycle = false;
        m->failures = 0;
        /* The first cycle after a start polls every endpoint. */
        memset(m->due_usec, 0, sizeof(m->due_usec));
        r = uv_timer_start(&m->timer, imds_timer_cb, 0, 0);
        if (r < 0) {
                m->running = false;
                return r;
        }
        return 0;
}

void aws_imds_stop(AwsImds *m) {
        if (!m)
                return;
        m->running = false;
        m->in_cycle = false;
        (void) uv_timer_stop(&m->timer);
        for (size_t s = 0; s < m->n_steps; s++)
                if (m->req[s])
                        http_request_cancel(m->req[s]);
}

AwsImds *aws_imds_close(AwsImds *m) {
        if (!m)
                return NULL;
        aws_imds_stop(m);
        for (size_t s = 0; s < m->n_steps; s++) {
                m->req[s] = http_request_free(m->req[s]);
                free(m->url[s]);
                m->url[s] = NULL;
        }
        imds_drop_token(m);
        m->p = NULL;
        uv_close((uv_handle_t *) &m->timer, imds_timer_close_cb);
        return NULL;
}

/* ---- AWS's endpoints -------------------------------------------------- */

static int endpoint_instance_action(Provider *p, const char *body, size_t size, NoticeEvent *events,
                                    size_t n_max, size_t *ret_n, char *err, size_t errsz) {
        int r;

        assert(n_max >= 1);
        r = parse_instance_action(body, size, &events[0], err, errsz);
        if (r < 0)
                return r;
        *ret_n = 1;
        return 0;
}

static int endpoint_rebalance(Provider *p, const char *body, size_t size, NoticeEvent *events, size_t n_max,
                              size_t *ret_n, char *err, size_t errsz) {
        int r;

        assert(n_max >= 1);
        r = parse_rebalance(body, size, &events[0], err, errsz);
        if (r < 0)
                return r;
        *ret_n = 1;
        return 0;
}

static int endpoint_maintenance(Provider *p, const char *body, size_t size, NoticeEvent *events, size_t n_max,
                                size_t *ret_n, char *err, size_t errsz) {
        return parse_maintenance(body, size, events, n_max, ret_n, err, errsz);
}

static int endpoint_lifecycle_state(Provider *p, const char *body, size_t size, NoticeEvent *events,
                                    size_t n_max, size_t *ret_n, char *err, size_t errsz) {
        AwsProvider *a = aws_from_provider(p);
        bool terminated;
        int r;

        assert(n_max >= 1);
        r = parse_lifecycle_state(body, size, &terminated, err, errsz);
        if (r < 0)
                return r;
        if (!terminated) {
                a->asg_terminated_usec = 0;
                *ret_n = 0;
                return 0;
        }
        /* The same "Terminated" on every poll is one notice: its id carries when it was first seen. */
        if (a->asg_terminated_usec == 0)
                a->asg_terminated_usec = provider_now_usec(CLOCK_REALTIME);
        aws_asg_event(p->instance_id, a->asg_terminated_usec, &events[0]);
        *ret_n = 1;
        return 0;
}

/* Not in an Auto Scaling group: the normal case for most instances. */
static void endpoint_lifecycle_absent(Provider *p) {
        aws_from_provider(p)->asg_terminated_usec = 0;
}

static bool aws_asg_enabled(const Config *config) {
        return config->aws_asg;
}

static bool aws_tokenless_allowed(const Config *config) {
        return config->imds_v1;
}

static const AwsImdsEndpoint aws_endpoints[] = {
        {
                .path = "/latest/meta-data/spot/instance-action",
                .what = "spot/instance-action",
                .parse = endpoint_instance_action,
        },
        {
                .path = "/latest/meta-data/events/recommendations/rebalance",
                .what = "events/recommendations/rebalance",
                .min_interval_usec = AWS_REBALANCE_INTERVAL_USEC,
                .every_cycle_events = EVENT_MASK(EVENT_REBALANCE),
                .parse = endpoint_rebalance,
        },
        {
                .path = "/latest/meta-data/events/maintenance/scheduled",
                .what = "events/maintenance/scheduled",
                .max_body = AWS_MAINTENANCE_MAX_BODY,
                .min_interval_usec = AWS_MAINTENANCE_INTERVAL_USEC,
                .every_cycle_events = EVENT_MASK(EVENT_MAINTENANCE),
                .parse = endpoint_maintenance,
        },
        {
                .path = "/latest/meta-data/autoscaling/target-lifecycle-state",
                .what = "autoscaling/target-lifecycle-state",
                .enabled = aws_asg_enabled,
                .parse = endpoint_lifecycle_state,
                .absent = endpoint_lifecycle_absent,
        },
};

static const AwsImdsFlavor aws_flavor = {
        .name = "aws",
        .token_header = AWS_TOKEN_HEADER,
        .token_ttl_header = AWS_TOKEN_TTL_HEADER,
        .tokenless_allowed = aws_tokenless_allowed,
        .tokenless_hint = "IMDSv1 is not allowed (imds_v1 = no)",
        .token_hint = "IMDSv2 only",
        .endpoints = aws_endpoints,
        .n_endpoints = ELEMENTSOF(aws_endpoints),
};

/* ---- vtable ----------------------------------------------------------- */

static int aws_init(Provider *p) {
        return aws_imds_new(p, &aws_flavor, &aws_from_provider(p)->imds);
}

static int aws_start(Provider *p) {
        return aws_imds_start(aws_from_provider(p)->imds);
}

static void aws_stop(Provider *p) {
        aws_imds_stop(aws_from_provider(p)->imds);
}

static void aws_done(Provider *p) {
        AwsProvider *a = aws_from_provider(p);

        a->imds = aws_imds_close(a->imds);
}

const ProviderVTable provider_aws_vtable = {
        .cloud = CLOUD_AWS,
        .object_size = sizeof(AwsProvider),
        .init = aws_init,
        .start = aws_start,
        .stop = aws_stop,
        .done = aws_done,
};
