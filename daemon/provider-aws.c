/* SPDX-License-Identifier: MIT */
/*
 * provider-aws.c - the AWS IMDSv2 watcher: one uv timer drives a poll cycle
 * of sequential requests (token, instance id, spot/instance-action,
 * rebalance recommendation; see provider-aws.h for the cycle, the token
 * rule and the backoff), each endpoint through its own reusable
 * HttpRequest. It owns the session token, the backoff state and the timer.
 * It must not signal, spawn, write files or log above debug: notices go to
 * cb.on_event (on every poll that serves them), and each cycle ends with
 * exactly one cb.on_poll carrying the first error, for the manager to log and
 * rate-limit. Callbacks may call provider_stop() but must not free the
 * provider.
 *
 * The timer lives in its own small AwsTimer block that frees itself in its
 * close callback, so provider_free() can release the provider at once while
 * libuv still holds the handle until the next loop iteration.
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
#include "provider.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "shared/parse.h"

#define AWS_TOKEN_HEADER "X-aws-ec2-metadata-token"
#define AWS_TOKEN_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds"
#define AWS_TOKEN_MAX 1024
#define AWS_DETAIL_QUOTE_MAX 32
#define AWS_TIME_MAX 64

typedef enum AwsEndpoint {
        AWS_ENDPOINT_TOKEN,
        AWS_ENDPOINT_INSTANCE_ID,
        AWS_ENDPOINT_INSTANCE_ACTION,
        AWS_ENDPOINT_REBALANCE,
        _AWS_ENDPOINT_MAX,
        _AWS_ENDPOINT_INVALID = -EINVAL,
} AwsEndpoint;

static const struct {
        const char *path;
        const char *what; /* for on_poll and debug logs */
} aws_endpoints[_AWS_ENDPOINT_MAX] = {
        [AWS_ENDPOINT_TOKEN] = { "/latest/api/token", "api/token" },
        [AWS_ENDPOINT_INSTANCE_ID] = { "/latest/meta-data/instance-id", "instance-id" },
        [AWS_ENDPOINT_INSTANCE_ACTION] = { "/latest/meta-data/spot/instance-action", "spot/instance-action" },
        [AWS_ENDPOINT_REBALANCE] = { "/latest/meta-data/events/recommendations/rebalance",
                                     "events/recommendations/rebalance" },
};

typedef struct AwsProvider AwsProvider;

typedef struct AwsTimer {
        uv_timer_t handle;
        AwsProvider *owner; /* NULL once the provider let go of it */
} AwsTimer;

struct AwsProvider {
        Provider p;

        AwsTimer *timer;
        char *url[_AWS_ENDPOINT_MAX];
        HttpRequest *req[_AWS_ENDPOINT_MAX];
        bool running;

        /* The cycle in progress. */
        bool in_cycle;
        AwsEndpoint step;        /* the GET running or next */
        bool token_retried;      /* the one token re-fetch after a 401 is used */
        uint64_t cycle_start_usec; /* monotonic */
        int cycle_error;
        const char *cycle_what;
        char cycle_detail[160];

        /* IMDSv2 session. */
        char *token_header;      /* "X-aws-ec2-metadata-token: T", NULL without a token */
        uint64_t token_expiry_usec; /* CLOCK_BOOTTIME, so a suspend cannot make it look fresh */
        uint64_t token_ttl_usec; /* as granted */
        char ttl_header[80];
        bool imds_v1_mode;       /* tokenless GETs, after the PUT was refused and imds_v1 = yes */
        uint64_t v1_probe_usec;  /* CLOCK_BOOTTIME: try a PUT again from then on */

        unsigned instance_id_tries;
        unsigned failures;       /* failed cycles in a row */
};

static AwsProvider *aws_from_provider(Provider *p) {
        return container_of(p, AwsProvider, p);
}

static uint64_t now_usec(clockid_t clock) {
        struct timespec ts;

        (void) clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* ---- pure parts ------------------------------------------------------ */

/* Copy at most AWS_DETAIL_QUOTE_MAX bytes of untrusted @s for a message, non-printables as '?'. */
static void quote_untrusted(char *buf, size_t size, const char *s, size_t len) {
        size_t n = MIN(len, (size_t) AWS_DETAIL_QUOTE_MAX), j = 0;

        for (size_t i = 0; i < n && j + 1 < size; i++)
                buf[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        if (len > n)
                for (size_t k = 0; k < 3 && j + 1 < size; k++)
                        buf[j++] = '.';
        buf[j] = 0;
}

static bool is_json_space(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

_printf_(3, 4) static int set_error(char *err, size_t size, const char *fmt, ...) {
        va_list ap;

        if (err && size > 0) {
                va_start(ap, fmt);
                (void) vsnprintf(err, size, fmt, ap);
                va_end(ap);
        }
        return -EBADMSG;
}

static void json_object_putp(json_object **o) {
        if (*o)
                (void) json_object_put(*o);
}

static void json_tokener_freep(json_tokener **t) {
        if (*t)
                json_tokener_free(*t);
}

/* Parse @body as exactly one JSON object, with a nesting limit and nothing after it. */
static int parse_json_object(const char *body, size_t size, json_object **ret, char *err, size_t errsz) {
        _cleanup_(json_tokener_freep) json_tokener *tok = NULL;
        _cleanup_(json_object_putp) json_object *o = NULL;
        enum json_tokener_error jerr;
        size_t end;

        if (!body || size == 0)
                return set_error(err, errsz, "empty body");
        if (size > INT_MAX)
                return set_error(err, errsz, "body too large");
        /* json-c would stop at a NUL and never see what follows. */
        if (memchr(body, 0, size))
                return set_error(err, errsz, "NUL byte in body");

        tok = json_tokener_new_ex(AWS_JSON_MAX_DEPTH);
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);

        o = json_tokener_parse_ex(tok, body, (int) size);
        jerr = json_tokener_get_error(tok);
        if (jerr == json_tokener_continue)
                return set_error(err, errsz, "invalid JSON: truncated");
        if (jerr != json_tokener_success)
                return set_error(err, errsz, "invalid JSON: %s", json_tokener_error_desc(jerr));
        end = json_tokener_get_parse_end(tok);
        for (; end < size; end++)
                if (!is_json_space(body[end]))
                        return set_error(err, errsz, "invalid JSON: data after the object");
        if (!o || !json_object_is_type(o, json_type_object))
                return set_error(err, errsz, "JSON is not an object");

        *ret = TAKE_PTR(o);
        return 0;
}

/* A string member of @o without embedded NULs ("\u0000" decodes to one). */
static int get_string_member(json_object *o, const char *key, const char **ret, size_t *ret_len, char *err,
                             size_t errsz) {
        json_object *v;
        const char *s;
        int len;

        if (!json_object_object_get_ex(o, key, &v) || !v)
                return set_error(err, errsz, "missing \"%s\"", key);
        if (!json_object_is_type(v, json_type_string))
                return set_error(err, errsz, "\"%s\" is not a string", key);
        s = json_object_get_string(v);
        len = json_object_get_string_len(v);
        if (!s || len < 0 || strlen(s) != (size_t) len)
                return set_error(err, errsz, "NUL in \"%s\"", key);

        *ret = s;
        *ret_len = (size_t) len;
        return 0;
}

static int get_time_member(json_object *o, const char *key, uint64_t *ret_usec, char *ret_norm, size_t normsz,
                           char *err, size_t errsz) {
        char q[AWS_DETAIL_QUOTE_MAX + 8];
        const char *s;
        size_t len;
        uint64_t usec;
        int r;

        r = get_string_member(o, key, &s, &len, err, errsz);
        if (r < 0)
                return r;
        if (len > AWS_TIME_MAX || parse_rfc3339(s, &usec) < 0 || usec == 0) {
                quote_untrusted(q, sizeof(q), s, len);
                return set_error(err, errsz, "invalid \"%s\" '%s'", key, q);
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
        char q[AWS_DETAIL_QUOTE_MAX + 8], norm[AWS_TIME_MAX];
        const char *action;
        size_t len, i;
        uint64_t usec;
        int r;

        r = parse_json_object(body, size, &o, err, errsz);
        if (r < 0)
                return r;
        r = get_string_member(o, "action", &action, &len, err, errsz);
        if (r < 0)
                return r;
        for (i = 0; i < ELEMENTSOF(actions); i++)
                if (streq(actions[i].action, action))
                        break;
        if (i >= ELEMENTSOF(actions)) {
                quote_untrusted(q, sizeof(q), action, len);
                return set_error(err, errsz, "unknown action '%s'", q);
        }
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

        r = parse_json_object(body, size, &o, err, errsz);
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

int aws_parse_instance_action(const char *body, size_t size, NoticeEvent *ret) {
        return parse_instance_action(body, size, ret, NULL, 0);
}

int aws_parse_rebalance(const char *body, size_t size, NoticeEvent *ret) {
        return parse_rebalance(body, size, ret, NULL, 0);
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
        uint64_t cap = MAX(poll_interval_usec, AWS_BACKOFF_CAP_USEC), d = poll_interval_usec;

        for (unsigned i = 0; i < failures && d < cap; i++)
                d = d > cap / 2 ? cap : 2 * d;
        return MIN(d, cap);
}

static bool visible_ascii(const char *s, size_t size) {
        for (size_t i = 0; i < size; i++)
                if (s[i] <= 0x20 || s[i] >= 0x7f)
                        return false;
        return true;
}

/* Instance ids look like "i-0123456789abcdef0"; accept any short run of visible ASCII. */
static bool instance_id_valid(const char *s, size_t size) {
        return size > 0 && size <= AWS_INSTANCE_ID_MAX && visible_ascii(s, size);
}

/* ---- the poll cycle -------------------------------------------------- */

static void aws_timer_cb(uv_timer_t *t);
static void aws_cycle_run(AwsProvider *a, AwsEndpoint from);

static uint64_t aws_poll_interval(AwsProvider *a) {
        /* A zero interval would spin; config checks should not let one through. */
        return MAX(a->p.config->poll_interval_usec, USEC_PER_MSEC);
}

static uint64_t aws_asked_ttl_sec(AwsProvider *a) {
        uint64_t s = a->p.config->token_ttl_usec / USEC_PER_SEC;

        return MIN(MAX(s, UINT64_C(1)), (uint64_t) AWS_TOKEN_TTL_MAX_SEC);
}

static void aws_drop_token(AwsProvider *a) {
        free(a->token_header);
        a->token_header = NULL;
        a->token_expiry_usec = 0;
}

static const char *transport_error_to_string(int error) {
        switch (error) {
        case -ETIMEDOUT:
                return "timed out";
        case -ECONNREFUSED:
                return "connection refused";
        case -ECONNRESET:
                return "connection reset";
        case -EFBIG:
                return "body over the 4 KiB cap";
        case -EPROTO:
                return "not an HTTP answer";
        case -EHOSTUNREACH:
                return "host unreachable";
        default:
                return NULL;
        }
}

/* Note a failure; on_poll reports the first one of the cycle. */
_printf_(4, 5) static void aws_cycle_fail(AwsProvider *a, int error, const char *what, const char *fmt, ...) {
        char detail[sizeof(a->cycle_detail)];
        va_list ap;

        assert(error < 0);
        va_start(ap, fmt);
        (void) vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
        log_debug("aws: %s: %s", what, detail);
        if (a->cycle_error < 0)
                return;
        a->cycle_error = error;
        a->cycle_what = what;
        memcpy(a->cycle_detail, detail, sizeof(detail));
}

static void aws_cycle_fail_transport(AwsProvider *a, int error, const char *what) {
        const char *s = transport_error_to_string(error);

        if (s)
                aws_cycle_fail(a, error, what, "%s", s);
        else
                aws_cycle_fail(a, error, what, "%s", strerror(-error));
}

static int http_status_to_errno(long status) {
        if (status == 401 || status == 403)
                return -EACCES;
        if (status == 429)
                return -EBUSY;
        return -EIO;
}

static void aws_arm_timer(AwsProvider *a, uint64_t delay_usec) {
        uint64_t ms = delay_usec / USEC_PER_MSEC + (delay_usec % USEC_PER_MSEC != 0);
        int r;

        if (!a->running || !a->timer)
                return;
        r = uv_timer_start(&a->timer->handle, aws_timer_cb, ms, 0);
        if (r < 0)
                log_debug_errno(r, "aws: cannot arm the poll timer: %m");
}

static void aws_cycle_finish(AwsProvider *a) {
        Provider *p = &a->p;
        uint64_t now = now_usec(CLOCK_MONOTONIC), interval = aws_poll_interval(a), delay;

        a->in_cycle = false;
        p->polls++;
        p->last_poll_usec = now_usec(CLOCK_REALTIME);
        p->last_poll_error = a->cycle_error;

        if (a->cycle_error < 0) {
                if (a->failures < 64)
                        a->failures++;
                delay = aws_backoff_usec(interval, a->failures);
                log_debug("aws: cycle failed (%s: %s), next in %" PRIu64 " ms", a->cycle_what,
                          a->cycle_detail, delay / USEC_PER_MSEC);
        } else {
                a->failures = 0;
                /* Fixed rate: the next cycle starts one interval after this one started. */
                delay = a->cycle_start_usec + interval > now ? a->cycle_start_usec + interval - now : 0;
        }
        aws_arm_timer(a, delay);

        /* Last: the owner may stop us from here. */
        if (p->cb.on_poll)
                p->cb.on_poll(p, a->cycle_error, a->cycle_error < 0 ? a->cycle_what : NULL,
                              a->cycle_error < 0 ? a->cycle_detail : NULL, p->userdata);
}

static void aws_http_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata);

static HttpRequestParams aws_params(AwsProvider *a, AwsEndpoint e) {
        return (HttpRequestParams) {
                .method = "GET",
                .url = a->url[e],
                .timeout_usec = a->p.config->request_timeout_usec,
                .max_body = AWS_MAX_BODY,
        };
}

static int aws_start_token(AwsProvider *a, AwsEndpoint resume) {
        const char *headers[] = { a->ttl_header, NULL };
        HttpRequestParams params = aws_params(a, AWS_ENDPOINT_TOKEN);

        (void) snprintf(a->ttl_header, sizeof(a->ttl_header), AWS_TOKEN_TTL_HEADER ": %" PRIu64,
                        aws_asked_ttl_sec(a));
        params.method = "PUT";
        params.headers = headers;
        a->step = resume;
        log_debug("aws: PUT %s (%s)", a->url[AWS_ENDPOINT_TOKEN], a->ttl_header);
        return http_request_start(a->req[AWS_ENDPOINT_TOKEN], &params, aws_http_done, a);
}

static int aws_start_get(AwsProvider *a, AwsEndpoint e) {
        const char *headers[] = { a->token_header, NULL };
        HttpRequestParams params = aws_params(a, e);

        params.headers = a->token_header ? headers : NULL;
        a->step = e;
        return http_request_start(a->req[e], &params, aws_http_done, a);
}

/* Start the first GET from @from on that this cycle needs; finish the cycle when none is left. */
static void aws_cycle_run(AwsProvider *a, AwsEndpoint from) {
        int r;

        for (AwsEndpoint e = MAX(from, AWS_ENDPOINT_INSTANCE_ID); e < _AWS_ENDPOINT_MAX; e++) {
                if (e == AWS_ENDPOINT_INSTANCE_ID &&
                    (a->p.instance_id || a->instance_id_tries >= AWS_INSTANCE_ID_TRIES))
                        continue;
                r = aws_start_get(a, e);
                if (r >= 0)
                        return;
                aws_cycle_fail(a, r, aws_endpoints[e].what, "cannot start request: %s", strerror(-r));
                break;
        }
        aws_cycle_finish(a);
}

static bool aws_token_needed(AwsProvider *a, uint64_t now) {
        if (a->imds_v1_mode)
                return now >= a->v1_probe_usec;
        if (!a->token_header)
                return true;
        return now + aws_token_refresh_margin_usec(a->token_ttl_usec, aws_poll_interval(a)) >=
               a->token_expiry_usec;
}

static void aws_cycle_start(AwsProvider *a) {
        int r;

        assert(!a->in_cycle);
        a->in_cycle = true;
        a->cycle_start_usec = now_usec(CLOCK_MONOTONIC);
        a->cycle_error = 0;
        a->cycle_what = NULL;
        a->cycle_detail[0] = 0;
        a->token_retried = false;

        if (aws_token_needed(a, now_usec(CLOCK_BOOTTIME))) {
                r = aws_start_token(a, AWS_ENDPOINT_INSTANCE_ID);
                if (r < 0) {
                        aws_cycle_fail(a, r, aws_endpoints[AWS_ENDPOINT_TOKEN].what,
                                       "cannot start request: %s", strerror(-r));
                        aws_cycle_finish(a);
                }
                return;
        }
        aws_cycle_run(a, AWS_ENDPOINT_INSTANCE_ID);
}

static void aws_timer_cb(uv_timer_t *t) {
        AwsTimer *timer = t->data;

        if (!timer->owner || !timer->owner->running || timer->owner->in_cycle)
                return;
        aws_cycle_start(timer->owner);
}

/* Keep the token in @body for the TTL the answer grants (@ttl_value), else for the asked one. */
static int aws_take_token(AwsProvider *a, const char *body, size_t size, const char *ttl_value, uint64_t now) {
        _cleanup_free_ char *header = NULL;
        uint64_t ttl;

        /* Tolerate a trailing newline; the token goes into a header, so nothing else odd. */
        while (size > 0 && is_json_space(body[size - 1]))
                size--;
        if (size == 0 || size > AWS_TOKEN_MAX || !visible_ascii(body, size))
                return -EBADMSG;
        if (asprintf(&header, AWS_TOKEN_HEADER ": %.*s", (int) size, body) < 0)
                return -ENOMEM;
        if (aws_parse_token_ttl(ttl_value, &ttl) < 0) {
                log_debug("aws: token answer has no valid TTL header, assuming the asked %" PRIu64 " s",
                          aws_asked_ttl_sec(a));
                ttl = aws_asked_ttl_sec(a) * USEC_PER_SEC;
        }

        free(a->token_header);
        a->token_header = TAKE_PTR(header);
        a->token_ttl_usec = ttl;
        a->token_expiry_usec = now + ttl;
        a->imds_v1_mode = false;
        log_debug("aws: got a token for %" PRIu64 " s", ttl / USEC_PER_SEC);
        return 0;
}

/* The token PUT ended. Continue the cycle at a->step, or end it. */
static void aws_on_token(AwsProvider *a, int error, long status, const char *body, size_t size,
                         const char *ttl_value) {
        const char *what = aws_endpoints[AWS_ENDPOINT_TOKEN].what;
        uint64_t now = now_usec(CLOCK_BOOTTIME);
        int r;

        if (error < 0)
                aws_cycle_fail_transport(a, error, what);
        else if (status == 200) {
                r = aws_take_token(a, body, size, ttl_value, now);
                if (r >= 0) {
                        aws_cycle_run(a, a->step);
                        return;
                }
                aws_cycle_fail(a, r, what, "%s", r == -EBADMSG ? "invalid token" : strerror(-r));
        } else if (status == 403 || status == 404 || status == 405) {
                /* No IMDSv2 here (or it is switched off). */
                if (a->p.config->imds_v1) {
                        log_debug("aws: token PUT answered HTTP %ld, using IMDSv1 (imds_v1 = yes)", status);
                        aws_drop_token(a);
                        a->imds_v1_mode = true;
                        a->v1_probe_usec = now + aws_asked_ttl_sec(a) * USEC_PER_SEC;
                        aws_cycle_run(a, a->step);
                        return;
                }
                aws_cycle_fail(a, -EOPNOTSUPP, what, "HTTP %ld, and IMDSv1 is not allowed (imds_v1 = no)",
                               status);
                aws_drop_token(a);
                aws_cycle_finish(a);
                return;
        } else
                aws_cycle_fail(a, http_status_to_errno(status), what, "HTTP %ld", status);

        /* A failed refresh is not the end: the old token is good until it expires. */
        if (a->token_header && now < a->token_expiry_usec) {
                aws_cycle_run(a, a->step);
                return;
        }
        aws_drop_token(a);
        aws_cycle_finish(a);
}

/* A GET ended. Report what it found, then go on with the next step. */
static void aws_on_get(AwsProvider *a, AwsEndpoint e, int error, long status, const char *body, size_t size) {
        Provider *p = &a->p;
        const char *what = aws_endpoints[e].what;
        char err[160];
        NoticeEvent ev;
        int r;

        if (error == 0 && status == 401) {
                aws_drop_token(a);
                if (!a->token_retried) {
                        log_debug("aws: %s answered 401, fetching a new token", what);
                        a->token_retried = true;
                        a->imds_v1_mode = false;
                        r = aws_start_token(a, e);
                        if (r >= 0)
                                return;
                        aws_cycle_fail(a, r, aws_endpoints[AWS_ENDPOINT_TOKEN].what, "cannot start request: %s",
                                       strerror(-r));
                } else
                        aws_cycle_fail(a, -EACCES, what, "HTTP 401 with a fresh token");
                aws_cycle_finish(a);
                return;
        }

        if (e == AWS_ENDPOINT_INSTANCE_ID) {
                /* Nice to have for hooks, never a reason to fail a cycle. */
                if (error == 0 && status == 200 && instance_id_valid(body, size)) {
                        p->instance_id = strndup(body, size);
                        log_debug("aws: instance id '%s'", strna(p->instance_id));
                } else {
                        a->instance_id_tries++;
                        log_debug("aws: cannot get the instance id (error %d, HTTP %ld), try %u of %u", error,
                                  status, a->instance_id_tries, AWS_INSTANCE_ID_TRIES);
                }
                aws_cycle_run(a, AWS_ENDPOINT_INSTANCE_ACTION);
                return;
        }

        if (error < 0)
                aws_cycle_fail_transport(a, error, what);
        else if (status == 404)
                log_debug("aws: %s: none", what);
        else if (status != 200)
                aws_cycle_fail(a, http_status_to_errno(status), what, "HTTP %ld", status);
        else {
                if (e == AWS_ENDPOINT_INSTANCE_ACTION)
                        r = parse_instance_action(body, size, &ev, err, sizeof(err));
                else
                        r = parse_rebalance(body, size, &ev, err, sizeof(err));
                if (r < 0)
                        aws_cycle_fail(a, r, what, "%s", r == -EBADMSG ? err : strerror(-r));
                else {
                        log_debug("aws: %s: %s", what, ev.id);
                        if (p->cb.on_event)
                                p->cb.on_event(p, &ev, p->userdata);
                        if (!a->running)
                                return;
                }
        }

        aws_cycle_run(a, e + 1);
}

static void aws_http_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        AwsProvider *a = userdata;

        /* We cancel only in stop(); whatever was running then is of no interest. */
        if (error == -ECANCELED || !a->running || !a->in_cycle)
                return;

        if (r == a->req[AWS_ENDPOINT_TOKEN])
                aws_on_token(a, error, status, body, size,
                             error == 0 ? http_request_header(r, AWS_TOKEN_TTL_HEADER) : NULL);
        else
                aws_on_get(a, a->step, error, status, body, size);
}

/* ---- vtable ----------------------------------------------------------- */

static void aws_timer_close_cb(uv_handle_t *h) {
        free(h->data);
}

static int aws_init(Provider *p) {
        AwsProvider *a = aws_from_provider(p);
        int r;

        for (AwsEndpoint e = 0; e < _AWS_ENDPOINT_MAX; e++) {
                if (asprintf(&a->url[e], "%s%s", p->base_url, aws_endpoints[e].path) < 0) {
                        a->url[e] = NULL;
                        return -ENOMEM;
                }
                r = http_request_new(p->http, aws_endpoints[e].what, &a->req[e]);
                if (r < 0)
                        return r;
        }

        a->timer = calloc(1, sizeof(*a->timer));
        if (!a->timer)
                return -ENOMEM;
        r = uv_timer_init(p->loop, &a->timer->handle);
        if (r < 0) {
                free(a->timer);
                a->timer = NULL;
                return r;
        }
        a->timer->handle.data = a->timer;
        a->timer->owner = a;
        return 0;
}

static int aws_start(Provider *p) {
        AwsProvider *a = aws_from_provider(p);
        int r;

        if (a->running)
                return 0;
        /* A request cancelled by stop() may still wait to report it; don't let it block a restart. */
        for (AwsEndpoint e = 0; e < _AWS_ENDPOINT_MAX; e++)
                if (http_request_is_running(a->req[e]) > 0) {
                        a->req[e] = http_request_free(a->req[e]);
                        r = http_request_new(p->http, aws_endpoints[e].what, &a->req[e]);
                        if (r < 0)
                                return r;
                }

        a->running = true;
        a->in_cycle = false;
        a->failures = 0;
        r = uv_timer_start(&a->timer->handle, aws_timer_cb, 0, 0);
        if (r < 0) {
                a->running = false;
                return r;
        }
        return 0;
}

static void aws_stop(Provider *p) {
        AwsProvider *a = aws_from_provider(p);

        a->running = false;
        a->in_cycle = false;
        if (a->timer)
                (void) uv_timer_stop(&a->timer->handle);
        for (AwsEndpoint e = 0; e < _AWS_ENDPOINT_MAX; e++)
                if (a->req[e])
                        http_request_cancel(a->req[e]);
}

static void aws_done(Provider *p) {
        AwsProvider *a = aws_from_provider(p);

        for (AwsEndpoint e = 0; e < _AWS_ENDPOINT_MAX; e++) {
                a->req[e] = http_request_free(a->req[e]);
                free(a->url[e]);
                a->url[e] = NULL;
        }
        if (a->timer) {
                a->timer->owner = NULL;
                uv_close((uv_handle_t *) &a->timer->handle, aws_timer_close_cb);
                a->timer = NULL;
        }
        aws_drop_token(a);
}

const ProviderVTable provider_aws_vtable = {
        .cloud = CLOUD_AWS,
        .object_size = sizeof(AwsProvider),
        .init = aws_init,
        .start = aws_start,
        .stop = aws_stop,
        .done = aws_done,
};
