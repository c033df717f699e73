/* SPDX-License-Identifier: MIT */
/*
 * provider-aws.c - the AWS IMDSv2 watcher and the IMDS poll engine under it.
 *
 * The engine (AwsImds) drives a poll cycle of sequential requests on one uv
 * timer: the session token, the instance id, then a flavour's endpoints, each
 * through its own reusable HttpRequest (see provider-aws.h for the cycle, the
 * token rule and the backoff). It owns the session token, the backoff state
 * and the timer; provider-alibaba.c runs it with Alibaba's header names and
 * endpoint. The AWS part is the parsers of AWS's answers and its endpoint
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
#include "provider.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "shared/parse.h"

#define AWS_TOKEN_HEADER "X-aws-ec2-metadata-token"
#define AWS_TOKEN_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds"
#define AWS_TOKEN_MAX 1024
#define AWS_DETAIL_QUOTE_MAX 32
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
};

typedef struct AwsProvider {
        Provider p;
        AwsImds *imds;
        uint64_t asg_terminated_usec; /* wall clock when "Terminated" was first seen; 0 while not */
} AwsProvider;

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

static bool visible_ascii(const char *s, size_t size) {
        for (size_t i = 0; i < size; i++)
                if (s[i] <= 0x20 || s[i] >= 0x7f)
                        return false;
        return true;
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

/* Parse @body as exactly one JSON value of @type, with a nesting limit and nothing after it. */
static int parse_json(const char *body, size_t size, json_type type, json_object **ret, char *err,
                      size_t errsz) {
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
                        return set_error(err, errsz, "invalid JSON: data after the %s",
                                         type == json_type_array ? "array" : "object");
        if (!o || !json_object_is_type(o, type))
                return set_error(err, errsz, "JSON is not an %s", type == json_type_array ? "array" : "object");

        *ret = TAKE_PTR(o);
        return 0;
}

/*
 * A string member of @o without embedded NULs ("\u0000" decodes to one).
 * With @optional, a missing member is fine: *@ret is NULL then.
 */
static int get_string_member_full(json_object *o, const char *key, bool optional, const char **ret,
                                  size_t *ret_len, char *err, size_t errsz) {
        json_object *v;
        const char *s;
        int len;

        if (!json_object_object_get_ex(o, key, &v)) {
                if (!optional)
                        return set_error(err, errsz, "missing \"%s\"", key);
                *ret = NULL;
                *ret_len = 0;
                return 0;
        }
        if (!v)
                return set_error(err, errsz, "\"%s\" is null", key);
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

static int get_string_member(json_object *o, const char *key, const char **ret, size_t *ret_len, char *err,
                             size_t errsz) {
        return get_string_member_full(o, key, false, ret, ret_len, err, errsz);
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

        r = parse_json(body, size, json_type_object, &o, err, errsz);
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

        r = parse_json(body, size, json_type_object, &o, err, errsz);
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

/* Exactly @n decimal digits at *@s, advancing it. */
static bool take_digits(const char **s, unsigned n, int *ret) {
        int v = 0;

        for (unsigned i = 0; i < n; i++) {
                if ((*s)[i] < '0' || (*s)[i] > '9')
                        return false;
                v = v * 10 + ((*s)[i] - '0');
        }
        *s += n;
        *ret = v;
        return true;
}

static bool take_char(const char **s, char c) {
        if (**s != c)
                return false;
        (*s)++;
        return true;
}

static bool leap_year(int y) {
        return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int aws_parse_event_time(const char *s, uint64_t *ret_usec) {
        static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        int day, month = -1, year, hour, minute, second;
        struct tm tm = {};
        time_t t;

        if (!s)
                return -EINVAL;
        /* "21 Jan 2019 09:00:43 GMT"; AWS writes "1 Feb" as well as "01 Feb". */
        if (s[0] >= '0' && s[0] <= '9' && s[1] == ' ') {
                day = s[0] - '0';
                s++;
        } else if (!take_digits(&s, 2, &day))
                return -EINVAL;
        if (!take_char(&s, ' '))
                return -EINVAL;
        for (int i = 0; i < 12; i++)
                if (strncmp(s, months[i], 3) == 0)
                        month = i;
        if (month < 0)
                return -EINVAL;
        s += 3;
        if (!take_char(&s, ' ') || !take_digits(&s, 4, &year) || !take_char(&s, ' ') ||
            !take_digits(&s, 2, &hour) || !take_char(&s, ':') || !take_digits(&s, 2, &minute) ||
            !take_char(&s, ':') || !take_digits(&s, 2, &second) || !streq(s, " GMT"))
                return -EINVAL;
        if (year < 1970 || day < 1 || day > mdays[month] + (month == 1 && leap_year(year)) || hour > 23 ||
            minute > 59 || second > 59)
                return -EINVAL;

        tm.tm_year = year - 1900;
        tm.tm_mon = month;
        tm.tm_mday = day;
        tm.tm_hour = hour;
        tm.tm_min = minute;
        tm.tm_sec = second;
        t = timegm(&tm);
        if (t <= 0)
                return -EINVAL;

        *ret_usec = (uint64_t) t * USEC_PER_SEC;
        return 0;
}

/* One element of the scheduled events array; *@ret_active false for events that are not active. */
static int parse_maintenance_event(json_object *o, size_t index, NoticeEvent *ret, bool *ret_active, char *err,
                                   size_t errsz) {
        static const char *const optional[] = { "Description", "NotAfter" };
        const char *code, *id, *state, *not_before, *s;
        char q[AWS_DETAIL_QUOTE_MAX + 8];
        size_t code_len, id_len, state_len, not_before_len, len;
        uint64_t usec;
        int r;

        if (!json_object_is_type(o, json_type_object))
                return set_error(err, errsz, "event %zu is not an object", index);
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
        if (id_len == 0 || id_len > AWS_EVENT_ID_MAX || !visible_ascii(id, id_len)) {
                quote_untrusted(q, sizeof(q), id, id_len);
                return set_error(err, errsz, "invalid \"EventId\" '%s'", q);
        }
        if (code_len == 0 || code_len > AWS_EVENT_CODE_MAX || !visible_ascii(code, code_len)) {
                quote_untrusted(q, sizeof(q), code, code_len);
                return set_error(err, errsz, "invalid \"Code\" '%s'", q);
        }

        /* Only active events concern us; canceled and completed ones stay in the list for a while. */
        if (!streq(state, "active")) {
                *ret_active = false;
                return 0;
        }
        if (!not_before)
                return set_error(err, errsz, "active event '%s' has no \"NotBefore\"", id);
        if (not_before_len > AWS_TIME_MAX || aws_parse_event_time(not_before, &usec) < 0) {
                quote_untrusted(q, sizeof(q), not_before, not_before_len);
                return set_error(err, errsz, "invalid \"NotBefore\" '%s'", q);
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
        for (k = 0; k < size && body && is_json_space(body[k]); k++)
                ;
        if (body && k == size) {
                *ret_n = 0;
                return 0;
        }

        r = parse_json(body, size, json_type_array, &a, err, errsz);
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
        char q[AWS_DETAIL_QUOTE_MAX + 8];

        if (!body || size == 0)
                return set_error(err, errsz, "empty body");
        while (size > 0 && is_json_space(body[size - 1]))
                size--;
        if (!lifecycle_word(body, size)) {
                quote_untrusted(q, sizeof(q), body, size);
                return set_error(err, errsz, "not a lifecycle state: '%s'", q);
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
        uint64_t cap = MAX(poll_interval_usec, AWS_BACKOFF_CAP_USEC), d = poll_interval_usec;

        for (unsigned i = 0; i < failures && d < cap; i++)
                d = d > cap / 2 ? cap : 2 * d;
        return MIN(d, cap);
}

/* Instance ids look like "i-0123456789abcdef0"; accept any short run of visible ASCII. */
static bool instance_id_valid(const char *s, size_t size) {
        return size > 0 && size <= AWS_INSTANCE_ID_MAX && visible_ascii(s, size);
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

static bool imds_token_enabled(const AwsImds *m) {
        return !m->flavor->token_enabled || m->flavor->token_enabled(m->p->config);
}

static bool imds_tokenless_allowed(const AwsImds *m) {
        return m->flavor->tokenless_allowed && m->flavor->tokenless_allowed(m->p->config);
}

static uint64_t imds_poll_interval(const AwsImds *m) {
        /* A zero interval would spin; config checks should not let one through. */
        return MAX(m->p->config->poll_interval_usec, USEC_PER_MSEC);
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

static const char *transport_error_to_string(int error) {
        switch (error) {
        case -ETIMEDOUT:
                return "timed out";
        case -ECONNREFUSED:
                return "connection refused";
        case -ECONNRESET:
                return "connection reset";
        case -EPROTO:
                return "not an HTTP answer";
        case -EHOSTUNREACH:
                return "host unreachable";
        default:
                return NULL;
        }
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
        const char *s = transport_error_to_string(error);

        if (error == -EFBIG)
                imds_cycle_fail(m, error, step_what(m, step), "body over the %zu KiB cap",
                                step_max_body(m, step) / 1024);
        else if (s)
                imds_cycle_fail(m, error, step_what(m, step), "%s", s);
        else
                imds_cycle_fail(m, error, step_what(m, step), "%s", strerror(-error));
}

static int http_status_to_errno(long status) {
        if (status == 401 || status == 403)
                return -EACCES;
        if (status == 429)
                return -EBUSY;
        return -EIO;
}

static void imds_arm_timer(AwsImds *m, uint64_t delay_usec) {
        uint64_t ms = delay_usec / USEC_PER_MSEC + (delay_usec % USEC_PER_MSEC != 0);
        int r;

        if (!m->running)
                return;
        r = uv_timer_start(&m->timer, imds_timer_cb, ms, 0);
        if (r < 0)
                log_debug_errno(r, "%s: cannot arm the poll timer: %m", m->flavor->name);
}

static void imds_cycle_finish(AwsImds *m) {
        Provider *p = m->p;
        uint64_t now = now_usec(CLOCK_MONOTONIC), interval = imds_poll_interval(m), delay;

        m->in_cycle = false;
        p->polls++;
        p->last_poll_usec = now_usec(CLOCK_REALTIME);
        p->last_poll_error = m->cycle_error;

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
                if (!step_enabled(m, s))
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
        m->cycle_start_usec = now_usec(CLOCK_MONOTONIC);
        m->cycle_error = 0;
        m->cycle_what = NULL;
        m->cycle_detail[0] = 0;
        m->token_retried = false;

        /* A reload may have switched tokens off. */
        if (!imds_token_enabled(m)) {
                imds_drop_token(m);
                m->tokenless_mode = false;
        }

        if (imds_token_needed(m, now_usec(CLOCK_BOOTTIME))) {
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
        _cleanup_free_ char *header = NULL;
        uint64_t ttl;

        /* Tolerate a trailing newline; the token goes into a header, so nothing else odd. */
        while (size > 0 && is_json_space(body[size - 1]))
                size--;
        if (size == 0 || size > AWS_TOKEN_MAX || !visible_ascii(body, size))
                return -EBADMSG;
        if (asprintf(&header, "%s: %.*s", m->flavor->token_header, (int) size, body) < 0)
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
        uint64_t now = now_usec(CLOCK_BOOTTIME);
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
                imds_cycle_fail(m, http_status_to_errno(status), what, "HTTP %ld", status);

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
                if (e->absent)
                        e->absent(p);
        } else if (status != 200)
                imds_cycle_fail(m, http_status_to_errno(status), what, "HTTP %ld", status);
        else {
                r = e->parse(p, body, size, events, ELEMENTSOF(events), &n, err, sizeof(err));
                if (r < 0)
                        imds_cycle_fail(m, r, what, "%s", r == -EBADMSG ? err : strerror(-r));
                else if (n == 0)
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
        /* A request cancelled by stop() may still wait to report it; don't let it block a restart. */
        for (size_t s = 0; s < m->n_steps; s++)
                if (http_request_is_running(m->req[s]) > 0) {
                        m->req[s] = http_request_free(m->req[s]);
                        r = http_request_new(m->p->http, step_what(m, s), &m->req[s]);
                        if (r < 0)
                                return r;
                }

        m->running = true;
        m->in_cycle = false;
        m->failures = 0;
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
                a->asg_terminated_usec = now_usec(CLOCK_REALTIME);
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
                .parse = endpoint_rebalance,
        },
        {
                .path = "/latest/meta-data/events/maintenance/scheduled",
                .what = "events/maintenance/scheduled",
                .max_body = AWS_MAINTENANCE_MAX_BODY,
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
