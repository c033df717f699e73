/* SPDX-License-Identifier: MIT */
/*
 * provider-util.c - helpers the cloud providers share (see provider-util.h):
 * clocks, untrusted-text handling, json-c under a nesting limit with typed
 * member getters, the "D Mon YYYY HH:MM:SS" date, the backoff, the words for
 * failed requests, request renewal and self-freeing timers. It owns no state,
 * does no I/O beyond reading clocks, and never logs or calls back.
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider-util.h"

uint64_t provider_now_usec(clockid_t clock) {
        struct timespec ts;

        (void) clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

uint64_t provider_timeout_ms(uint64_t usec) {
        return usec / USEC_PER_MSEC + (usec % USEC_PER_MSEC != 0);
}

uint64_t provider_poll_interval_usec(const Config *config) {
        return MAX(config->poll_interval_usec, USEC_PER_MSEC);
}

uint64_t provider_backoff_usec(uint64_t poll_interval_usec, unsigned doublings, uint64_t cap_usec) {
        uint64_t cap = MAX(poll_interval_usec, cap_usec), d = poll_interval_usec;

        for (unsigned i = 0; i < doublings && d < cap; i++)
                d = d > cap / 2 ? cap : 2 * d;
        return MIN(d, cap);
}

/* ---- untrusted text --------------------------------------------------------- */

bool provider_is_space(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

bool provider_visible_ascii(const char *s, size_t size) {
        for (size_t i = 0; i < size; i++)
                if (s[i] <= 0x20 || s[i] >= 0x7f)
                        return false;
        return true;
}

size_t provider_trim_end(const char *s, size_t size) {
        if (!s)
                return 0;
        while (size > 0 && provider_is_space(s[size - 1]))
                size--;
        return size;
}

int provider_parse_word(const char *body, size_t size, size_t max, char **ret) {
        char *s;

        assert(ret);

        if (!body)
                return -EBADMSG;
        size = provider_trim_end(body, size);
        if (size == 0 || size > max || !provider_visible_ascii(body, size))
                return -EBADMSG;
        s = strndup(body, size);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

void provider_quote_untrusted(char *buf, size_t size, const char *s, size_t len) {
        size_t n = MIN(len, (size_t) PROVIDER_QUOTE_MAX), j = 0;

        if (size == 0)
                return;
        for (size_t i = 0; i < n && j + 1 < size; i++)
                buf[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        if (len > n)
                for (size_t k = 0; k < 3 && j + 1 < size; k++)
                        buf[j++] = '.';
        buf[j] = 0;
}

int provider_set_error(char *err, size_t size, const char *fmt, ...) {
        va_list ap;

        if (err && size > 0) {
                va_start(ap, fmt);
                (void) vsnprintf(err, size, fmt, ap);
                va_end(ap);
        }
        return -EBADMSG;
}

/* ---- JSON ------------------------------------------------------------------- */

static void json_tokener_freep(json_tokener **t) {
        if (*t)
                json_tokener_free(*t);
}

static const char *json_type_word(json_type type) {
        return type == json_type_array ? "array" : "object";
}

int provider_json_parse(const char *body, size_t size, json_type type, int max_depth, json_object **ret,
                        char *err, size_t errsz) {
        _cleanup_(json_tokener_freep) json_tokener *tok = NULL;
        _cleanup_(json_object_putp) json_object *o = NULL;
        enum json_tokener_error jerr;
        size_t end;

        assert(type == json_type_object || type == json_type_array);
        assert(max_depth > 0);
        assert(ret);

        if (!body || size == 0)
                return provider_set_error(err, errsz, "empty body");
        if (size > INT_MAX)
                return provider_set_error(err, errsz, "body too large");
        /* json-c would stop at a NUL and never see what follows. */
        if (memchr(body, 0, size))
                return provider_set_error(err, errsz, "NUL byte in body");

        tok = json_tokener_new_ex(max_depth);
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);

        o = json_tokener_parse_ex(tok, body, (int) size);
        jerr = json_tokener_get_error(tok);
        if (jerr == json_tokener_continue)
                return provider_set_error(err, errsz, "invalid JSON: truncated");
        if (jerr != json_tokener_success)
                return provider_set_error(err, errsz, "invalid JSON: %s", json_tokener_error_desc(jerr));
        end = json_tokener_get_parse_end(tok);
        for (; end < size; end++)
                if (!provider_is_space(body[end]))
                        return provider_set_error(err, errsz, "invalid JSON: data after the %s",
                                                  json_type_word(type));
        if (!o || !json_object_is_type(o, type))
                return provider_set_error(err, errsz, "JSON is not an %s", json_type_word(type));

        *ret = TAKE_PTR(o);
        return 0;
}

int provider_json_get_member(json_object *o, const char *prefix, const char *key, unsigned flags,
                             json_object **ret, char *err, size_t errsz) {
        json_object *v = NULL;

        assert(key);
        assert(ret);

        prefix = prefix ?: "";
        /* A member that is there but null comes back present, as NULL. */
        if (!json_object_object_get_ex(o, key, &v) || (!v && (flags & PROVIDER_JSON_NULL_IS_ABSENT))) {
                if (flags & PROVIDER_JSON_OPTIONAL)
                        return 0;
                return provider_set_error(err, errsz, "%smissing \"%s\"", prefix, key);
        }
        if (!v)
                return provider_set_error(err, errsz, "%s\"%s\" is null", prefix, key);

        *ret = v;
        return 1;
}

int provider_json_string_value(json_object *v, const char *what, const char **ret, size_t *ret_len,
                               char *err, size_t errsz) {
        const char *s;
        int len;

        assert(ret);
        assert(ret_len);

        if (!json_object_is_type(v, json_type_string))
                return provider_set_error(err, errsz, "%s is not a string", what);
        s = json_object_get_string(v);
        len = json_object_get_string_len(v);
        if (!s || len < 0 || strlen(s) != (size_t) len)
                return provider_set_error(err, errsz, "NUL in %s", what);

        *ret = s;
        *ret_len = (size_t) len;
        return 0;
}

int provider_json_get_string(json_object *o, const char *prefix, const char *key, unsigned flags,
                             const char **ret, size_t *ret_len, char *err, size_t errsz) {
        char what[96];
        json_object *v;
        int r;

        r = provider_json_get_member(o, prefix, key, flags, &v, err, errsz);
        if (r <= 0)
                return r;
        (void) snprintf(what, sizeof(what), "%s\"%s\"", prefix ?: "", key);
        r = provider_json_string_value(v, what, ret, ret_len, err, errsz);
        if (r < 0)
                return r;
        return 1;
}

int provider_json_get_int64(json_object *o, const char *prefix, const char *key, unsigned flags, int64_t min,
                            int64_t *ret, char *err, size_t errsz) {
        json_object *v;
        int64_t x;
        int r;

        assert(ret);

        r = provider_json_get_member(o, prefix, key, flags, &v, err, errsz);
        if (r <= 0)
                return r;
        prefix = prefix ?: "";
        if (!json_object_is_type(v, json_type_int))
                return provider_set_error(err, errsz, "%s\"%s\" is not an integer", prefix, key);
        /* json-c says "out of range" only through errno. */
        errno = 0;
        x = json_object_get_int64(v);
        if (errno != 0 || x < min)
                return provider_set_error(err, errsz, "%sinvalid \"%s\"", prefix, key);

        *ret = x;
        return 1;
}

int provider_json_get_array(json_object *o, const char *prefix, const char *key, unsigned flags,
                            json_object **ret, char *err, size_t errsz) {
        json_object *v;
        int r;

        assert(ret);

        r = provider_json_get_member(o, prefix, key, flags, &v, err, errsz);
        if (r <= 0)
                return r;
        if (!json_object_is_type(v, json_type_array))
                return provider_set_error(err, errsz, "%s\"%s\" is not an array", prefix ?: "", key);

        *ret = v;
        return 1;
}

/* ---- dates ------------------------------------------------------------------ */

/* @min..@max decimal digits at *@s, advancing it. */
static bool take_digits(const char **s, unsigned min, unsigned max, unsigned *ret) {
        unsigned v = 0, n = 0;

        while (n < max && **s >= '0' && **s <= '9') {
                v = v * 10 + (unsigned) (**s - '0');
                (*s)++;
                n++;
        }
        if (n < min)
                return false;
        *ret = v;
        return true;
}

static bool take_char(const char **s, char c) {
        if (**s != c)
                return false;
        (*s)++;
        return true;
}

static bool leap_year(unsigned y) {
        return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days since 1970-01-01 of a valid proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
        int64_t era, yoe, doy, doe;

        y -= m <= 2;
        era = (y >= 0 ? y : y - 399) / 400;
        yoe = y - era * 400;
        doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
        doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + doe - 719468;
}

int provider_parse_date_time(const char **s, uint64_t *ret_usec) {
        static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        static const unsigned month_days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        unsigned day, year, hour, minute, second;
        const char *p;
        int month = -1;
        int64_t t;

        assert(s);
        assert(ret_usec);

        p = *s;
        if (!p)
                return -EINVAL;
        /* Each field is checked before the next is read, so nothing is read past a NUL. */
        if (!take_digits(&p, 1, 2, &day) || !take_char(&p, ' '))
                return -EINVAL;
        for (int i = 0; i < 12 && month < 0; i++)
                if (strncmp(p, months[i], 3) == 0)
                        month = i;
        if (month < 0)
                return -EINVAL;
        p += 3;
        if (!take_char(&p, ' ') || !take_digits(&p, 4, 4, &year) || !take_char(&p, ' ') ||
            !take_digits(&p, 2, 2, &hour) || !take_char(&p, ':') || !take_digits(&p, 2, 2, &minute) ||
            !take_char(&p, ':') || !take_digits(&p, 2, 2, &second))
                return -EINVAL;
        if (year < 1970 || day < 1 || day > month_days[month] + (month == 1 && leap_year(year)) ||
            hour > 23 || minute > 59 || second > 59)
                return -EINVAL;

        t = days_from_civil(year, (unsigned) month + 1, day) * 86400 + (int64_t) hour * 3600 +
            (int64_t) minute * 60 + second;
        *s = p;
        *ret_usec = (uint64_t) t * USEC_PER_SEC;
        return 0;
}

/* ---- requests --------------------------------------------------------------- */

const char *provider_transport_error_to_string(int error) {
        switch (error) {
        case -ETIMEDOUT:
                return "timed out";
        case -ECONNREFUSED:
                return "connection refused";
        case -ECONNRESET:
                return "connection reset";
        case -EFBIG:
                return "body over the cap";
        case -EPROTO:
                return "not an HTTP answer";
        case -EHOSTUNREACH:
                return "host unreachable";
        default:
                return strerror(error < 0 ? -error : error);
        }
}

int provider_http_status_to_errno(long status) {
        if (status == 401 || status == 403)
                return -EACCES;
        if (status == 429)
                return -EBUSY;
        return -EIO;
}

int provider_request_renew(Http *http, const char *name, HttpRequest **req) {
        assert(req);

        if (http_request_is_running(*req) <= 0)
                return 0;
        *req = http_request_free(*req);
        return http_request_new(http, name, req);
}

void provider_count_poll(Provider *p, int error) {
        p->polls++;
        p->last_poll_usec = provider_now_usec(CLOCK_REALTIME);
        p->last_poll_error = error;
}

/* ---- timers ----------------------------------------------------------------- */

int provider_timer_new(uv_loop_t *loop, void *owner, ProviderTimer **ret) {
        ProviderTimer *t;
        int r;

        assert(loop);
        assert(ret);

        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        r = uv_timer_init(loop, &t->handle);
        if (r < 0) {
                free(t);
                return r;
        }
        t->handle.data = t;
        t->owner = owner;
        *ret = t;
        return 0;
}

void *provider_timer_owner(uv_timer_t *handle) {
        ProviderTimer *t = handle->data;

        return t->owner;
}

static void timer_close_cb(uv_handle_t *h) {
        free(h->data);
}

ProviderTimer *provider_timer_close(ProviderTimer *t) {
        if (!t)
                return NULL;
        t->owner = NULL;
        uv_close((uv_handle_t *) &t->handle, timer_close_cb);
        return NULL;
}
