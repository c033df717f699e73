/* SPDX-License-Identifier: MIT */
/*
 * credentials.c - an [upload]'s store credentials (see credentials.h): the
 * configured or environment keys, read once when the CredProvider is made,
 * or else what the cloud's metadata service hands out for the instance (AWS
 * instance role through IMDSv2, GCP service account token, Azure managed
 * identity token), fetched through the daemon's Http on the loop and cached
 * until shortly before they expire.
 *
 * One fetch runs at a time: every get() made meanwhile is queued and all of
 * them get its outcome. Callbacks always come from the loop (a zero timer
 * kicks the queue), never from inside cred_provider_get(). It parses the
 * metadata service's answers with json-c (provider-util's checked getters),
 * bounds every body, and logs at debug level only: failures go to the
 * callers as one line naming the destination.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <json-c/json.h>

#include "credentials.h"
#include "provider-util.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "shared/parse.h"

#define CRED_DETAIL_MAX 512
#define CRED_JSON_MAX_DEPTH 8
#define CRED_ERR_MAX 160
#define CRED_HINT_MAX 256

/* Caps on what the metadata service may send us. */
#define CRED_IMDS_TOKEN_BODY_MAX ((size_t) 4 * 1024)
#define CRED_ROLE_LIST_BODY_MAX ((size_t) 4 * 1024)
#define CRED_AWS_DOC_BODY_MAX ((size_t) 32 * 1024)
#define CRED_GCP_DOC_BODY_MAX ((size_t) 32 * 1024)
#define CRED_AZURE_DOC_BODY_MAX ((size_t) 64 * 1024)

/* Caps on the values themselves; each goes into a signature or a header. */
#define CRED_KEY_ID_MAX 128
#define CRED_SECRET_MAX 256
#define CRED_SESSION_TOKEN_MAX ((size_t) 8 * 1024)
#define CRED_BEARER_MAX ((size_t) 16 * 1024)
#define CRED_ROLE_NAME_MAX 128
#define CRED_IMDS_TOKEN_MAX 1024
#define CRED_TIME_MAX 64
#define ROLE_NAME_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+=,.@_-"

/* The IMDSv2 session token only has to last for the two GETs that follow it. */
#define CRED_IMDS_TOKEN_TTL_SEC 60
#define AWS_TOKEN_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds"
#define AWS_TOKEN_HEADER "X-aws-ec2-metadata-token"
#define AWS_TOKEN_PATH "/latest/api/token"
#define AWS_ROLES_PATH "/latest/meta-data/iam/security-credentials/"
#define GCP_TOKEN_PATH "/computeMetadata/v1/instance/service-accounts/default/token"
#define AZURE_TOKEN_PATH                                                                           \
        "/metadata/identity/oauth2/token?api-version=2018-02-01"                                   \
        "&resource=https%3A%2F%2Fstorage.azure.com%2F"

/*
 * Refresh 5 minutes before the expiry (AWS hands out new role credentials at
 * least that early); a lifetime under 10 minutes is used for 90 % of it.
 */
#define CRED_REFRESH_MARGIN_USEC (5 * 60 * USEC_PER_SEC)
#define CRED_SHORT_LIFETIME_USEC (10 * 60 * USEC_PER_SEC)
/* Fetched credentials the store rejected twice in a row are not fetched again before this. */
#define CRED_REJECT_HOLDOFF_USEC (60 * USEC_PER_SEC)

typedef enum FetchStep {
        FETCH_NONE,
        FETCH_AWS_TOKEN,
        FETCH_AWS_ROLE,
        FETCH_AWS_CREDENTIALS,
        FETCH_GCP_TOKEN,
        FETCH_AZURE_TOKEN,
} FetchStep;

typedef struct CredWaiter {
        CredDoneFn done;         /* NULL once cancelled */
        void *userdata;
        struct CredWaiter *next;
} CredWaiter;

struct CredProvider {
        UploadScheme scheme;
        CloudKind cloud;
        char *destination;       /* as written, for messages */
        char *name;              /* the [upload]'s name, for messages */
        char *metadata_url;      /* NULL: the instance step does not apply to this cloud */
        uint64_t timeout_usec;

        /* The configured or environment credentials, when there are any. */
        bool have_fixed;
        Credentials fixed;
        bool fixed_rejected;     /* the store said no: never again with these */
        char *fixed_error;       /* half a key pair was given: every get fails with this */

        /* What the metadata service gave last. */
        bool have_cached;
        Credentials cached;
        uint64_t refresh_usec;   /* CLOCK_REALTIME: fetch again from then on */
        bool cached_after_reject; /* cached replaced credentials the store rejected */
        bool fetch_after_reject; /* the next fetch replaces credentials the store rejected */
        uint64_t reject_until_usec; /* CLOCK_MONOTONIC: no fetch before then */

        /* The fetch in progress. */
        HttpRequest *req;
        FetchStep step;
        char *imds_token_header; /* "X-aws-ec2-metadata-token: T", NULL for a tokenless IMDS */
        char *role;

        CredWaiter *waiters;     /* FIFO */
        CredWaiter **waiters_tail;
        CredWaiter *batch;       /* the rest of the waiters deliver() is calling; owned by it */
        ProviderTimer *kick;
        bool *freed;             /* set while callbacks run, so they may free us */
};

static void erase_free(char *s) {
        if (!s)
                return;
        explicit_bzero(s, strlen(s));
        free(s);
}

void credentials_done(Credentials *c) {
        if (!c)
                return;
        free(c->access_key_id);
        erase_free(c->secret_access_key);
        erase_free(c->session_token);
        erase_free(c->token);
        free(c->source);
        *c = (Credentials) { .kind = _CRED_KIND_INVALID };
}

static int strdup_null(const char *s, char **ret) {
        if (!s) {
                *ret = NULL;
                return 0;
        }
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

int credentials_copy(Credentials *to, const Credentials *from) {
        Credentials c = {
                .kind = from->kind,
                .expires_usec = from->expires_usec,
        };

        assert(to);
        assert(from);

        if (strdup_null(from->access_key_id, &c.access_key_id) < 0 ||
            strdup_null(from->secret_access_key, &c.secret_access_key) < 0 ||
            strdup_null(from->session_token, &c.session_token) < 0 ||
            strdup_null(from->token, &c.token) < 0 || strdup_null(from->source, &c.source) < 0) {
                credentials_done(&c);
                return -ENOMEM;
        }
        *to = c;
        return 0;
}

/* ---- the callers' queue ----------------------------------------------------- */

/*
 * Call every waiter queued now with one outcome. A callback may get() again
 * (queued for later), cancel() others of this batch, invalidate() or free
 * @p; then the rest of this batch is dropped without a call. Returns false
 * when @p is gone.
 */
static bool deliver(CredProvider *p, int error, const Credentials *creds, const char *detail) {
        Credentials copy = { .kind = _CRED_KIND_INVALID };
        char msg[CRED_DETAIL_MAX] = "";
        CredWaiter *list;
        bool freed = false;

        assert(!p->freed);
        assert(!p->batch);

        list = TAKE_PTR(p->waiters);
        p->waiters_tail = &p->waiters;
        /* The callbacks may drop the cache or free @p: hand out copies. */
        if (error >= 0 && credentials_copy(&copy, creds) < 0) {
                error = -ENOMEM;
                detail = "out of memory";
        }
        if (error < 0)
                (void) snprintf(msg, sizeof(msg), "%s", detail ?: strerror(-error));

        p->freed = &freed;
        while (list) {
                CredWaiter *w = list;

                list = w->next;
                if (!freed)
                        p->batch = list;
                if (!freed && w->done)
                        w->done(p, error, error >= 0 ? &copy : NULL, error < 0 ? msg : NULL, w->userdata);
                free(w);
        }
        credentials_done(&copy);
        if (freed)
                return false;
        p->batch = NULL;
        p->freed = NULL;
        return true;
}

_printf_(3, 4) static bool deliver_error(CredProvider *p, int error, const char *fmt, ...) {
        char detail[CRED_DETAIL_MAX];
        int n;
        va_list ap;

        assert(error < 0);

        n = snprintf(detail, sizeof(detail), "no credentials for %s: ", p->destination);
        if (n < 0 || (size_t) n >= sizeof(detail))
                n = 0;
        va_start(ap, fmt);
        (void) vsnprintf(detail + n, sizeof(detail) - (size_t) n, fmt, ap);
        va_end(ap);
        log_debug("credentials: %s", detail);
        return deliver(p, error, NULL, detail);
}

static void kick_cb(uv_timer_t *t);

static int kick(CredProvider *p) {
        return uv_timer_start(&p->kick->handle, kick_cb, 0, 0);
}

/* ---- messages ------------------------------------------------------------------ */

/* Where nothing was found, for messages about a failed instance step. */
static const char *fixed_hint(const CredProvider *p, char *buf, size_t size) {
        if (p->scheme == UPLOAD_AZ)
                (void) snprintf(buf, size, "no sas_token or account_key in [upload \"%s\"]", p->name);
        else
                (void) snprintf(buf, size, "none in [upload \"%s\"] or the environment", p->name);
        return buf;
}

/* What to configure when the instance step does not apply to the daemon's cloud. */
static const char *configure_hint(const CredProvider *p, char *buf, size_t size) {
        if (p->scheme == UPLOAD_AZ)
                (void) snprintf(buf, size, "set sas_token or account_key in [upload \"%s\"]", p->name);
        else
                (void) snprintf(buf, size,
                                "set %saccess_key_id and secret_access_key in [upload \"%s\"], or "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment",
                                p->scheme == UPLOAD_GS ? "an HMAC key as " : "", p->name);
        return buf;
}

/* The metadata step's name: "instance role", "service account token", "managed identity token". */
static const char *instance_what(const CredProvider *p) {
        switch (p->scheme) {
        case UPLOAD_S3:
                return "instance role";
        case UPLOAD_GS:
                return "service account token";
        case UPLOAD_AZ:
                return "managed identity token";
        case UPLOAD_FILE:
        case _UPLOAD_SCHEME_MAX:
        case _UPLOAD_SCHEME_INVALID:
                break;
        }
        return "instance credentials";
}

static CloudKind scheme_cloud(UploadScheme s) {
        switch (s) {
        case UPLOAD_S3:
                return CLOUD_AWS;
        case UPLOAD_GS:
                return CLOUD_GCP;
        case UPLOAD_AZ:
                return CLOUD_AZURE;
        case UPLOAD_FILE:
        case _UPLOAD_SCHEME_MAX:
        case _UPLOAD_SCHEME_INVALID:
                break;
        }
        return _CLOUD_INVALID;
}

static const char *scheme_cloud_name(UploadScheme s) {
        return s == UPLOAD_S3 ? "AWS" : s == UPLOAD_GS ? "GCP" : "Azure";
}

static const char *fixed_rejected_what(const CredProvider *p) {
        switch (p->fixed.kind) {
        case CRED_AWS:
                return "access key";
        case CRED_AZURE_KEY:
                return "account_key";
        case CRED_AZURE_SAS:
                return "sas_token";
        case CRED_BEARER:
        case _CRED_KIND_MAX:
        case _CRED_KIND_INVALID:
                break;
        }
        return "key";
}

/* ---- configured and environment credentials --------------------------------- */

/* Printable ASCII without spaces or control characters: what may go into a signature or a header. */
static bool value_ok(const char *s, size_t max) {
        size_t n = strlen(s);

        return n > 0 && n <= max && provider_visible_ascii(s, n);
}

static const char *env_value(const char *name) {
        const char *v = getenv(name);

        return isempty(v) ? NULL : v;
}

/* *@ret = a formatted string (replacing nothing: @ret must be NULL or unowned); -ENOMEM. */
_printf_(2, 3) static int format_to(char **ret, const char *fmt, ...) {
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(ret, fmt, ap);
        va_end(ap);
        if (r < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

/*
 * An access key pair from the config (@from_config) or the environment; the
 * names are the keys' there. 1 when taken, 0 when none is given, and 0 with
 * p->fixed_error set when half a pair is.
 */
static int take_aws_pair(CredProvider *p, bool from_config, const char *id, const char *secret,
                         const char *token, const char *id_name, const char *secret_name,
                         const char *token_name) {
        Credentials c = { .kind = CRED_AWS };
        char where[128];

        if (from_config)
                (void) snprintf(where, sizeof(where), "[upload \"%s\"]", p->name);
        else
                (void) snprintf(where, sizeof(where), "the environment");

        if (!id || !secret) {
                if (!id && !secret && !token)
                        return 0;
                if (!id && !secret)
                        return format_to(&p->fixed_error, "%s is set in %s but %s and %s are not", token_name,
                                         where, id_name, secret_name);
                return format_to(&p->fixed_error, "%s is set in %s but %s is not", id ? id_name : secret_name,
                                 where, id ? secret_name : id_name);
        }
        if (!value_ok(id, CRED_KEY_ID_MAX))
                return format_to(&p->fixed_error, "%s in %s is not a valid access key id", id_name, where);
        if (!value_ok(secret, CRED_SECRET_MAX))
                return format_to(&p->fixed_error, "%s in %s is not a valid secret key", secret_name, where);
        if (token && !value_ok(token, CRED_SESSION_TOKEN_MAX))
                return format_to(&p->fixed_error, "%s in %s is not a valid session token", token_name, where);

        if (strdup_null(id, &c.access_key_id) < 0 || strdup_null(secret, &c.secret_access_key) < 0 ||
            strdup_null(token, &c.session_token) < 0 ||
            strdup_null(from_config ? "config" : "environment", &c.source) < 0) {
                credentials_done(&c);
                return -ENOMEM;
        }
        p->fixed = c;
        p->have_fixed = true;
        return 1;
}

static int take_fixed(CredProvider *p, const UploadConfig *u) {
        Credentials c = {};
        const char *sas;
        int r;

        switch (u->scheme) {
        case UPLOAD_S3:
        case UPLOAD_GS:
                r = take_aws_pair(p, true, isempty(u->access_key_id) ? NULL : u->access_key_id,
                                  isempty(u->secret_access_key) ? NULL : u->secret_access_key,
                                  isempty(u->session_token) ? NULL : u->session_token, "access_key_id",
                                  "secret_access_key", "session_token");
                if (r != 0 || p->fixed_error)
                        return r;
                return take_aws_pair(p, false, env_value("AWS_ACCESS_KEY_ID"),
                                     env_value("AWS_SECRET_ACCESS_KEY"), env_value("AWS_SESSION_TOKEN"),
                                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN");
        case UPLOAD_AZ:
                sas = u->sas_token;
                /* Pasted from the portal it starts with '?'. */
                if (sas && sas[0] == '?')
                        sas++;
                if (!isempty(sas)) {
                        if (!value_ok(sas, CRED_BEARER_MAX))
                                return format_to(&p->fixed_error,
                                                 "sas_token in [upload \"%s\"] is not a valid SAS token", p->name);
                        c.kind = CRED_AZURE_SAS;
                        r = strdup_null(sas, &c.token);
                } else if (!isempty(u->account_key)) {
                        if (!value_ok(u->account_key, CRED_SECRET_MAX))
                                return format_to(&p->fixed_error,
                                                 "account_key in [upload \"%s\"] is not a valid key", p->name);
                        c.kind = CRED_AZURE_KEY;
                        r = strdup_null(u->account_key, &c.token);
                } else
                        return 0;
                if (r >= 0)
                        r = strdup_null("config", &c.source);
                if (r < 0) {
                        credentials_done(&c);
                        return -ENOMEM;
                }
                p->fixed = c;
                p->have_fixed = true;
                return 1;
        case UPLOAD_FILE:
        case _UPLOAD_SCHEME_MAX:
        case _UPLOAD_SCHEME_INVALID:
                break;
        }
        return -EINVAL;
}

/* ---- the cache ---------------------------------------------------------------- */

static uint64_t refresh_time(uint64_t now, uint64_t expires) {
        uint64_t life;

        if (expires == 0)
                return UINT64_MAX;
        life = expires > now ? expires - now : 0;
        if (life >= CRED_SHORT_LIFETIME_USEC)
                return expires - CRED_REFRESH_MARGIN_USEC;
        return now + life / 10 * 9;
}

static bool cache_usable(const CredProvider *p, uint64_t now) {
        return p->have_cached && (p->cached.expires_usec == 0 || now < p->cached.expires_usec);
}

static bool cache_fresh(const CredProvider *p, uint64_t now) {
        return cache_usable(p, now) && now < p->refresh_usec;
}

static void cache_drop(CredProvider *p) {
        credentials_done(&p->cached);
        p->have_cached = false;
        p->refresh_usec = 0;
        p->cached_after_reject = false;
}

/* ---- the fetch ---------------------------------------------------------------- */

static void fetch_reset(CredProvider *p) {
        p->step = FETCH_NONE;
        erase_free(p->imds_token_header);
        p->imds_token_header = NULL;
        free(p->role);
        p->role = NULL;
}

/*
 * The fetch failed: the old credentials serve while they last, else every
 * waiter gets the error, "HINT, and the STEP: WHAT", or with @whole "HINT,
 * and WHAT".
 */
_printf_(4, 0) static void fetch_failv(CredProvider *p, int error, bool whole, const char *fmt, va_list ap) {
        char what[CRED_DETAIL_MAX], hint[CRED_HINT_MAX];
        uint64_t now = provider_now_usec(CLOCK_REALTIME);

        (void) vsnprintf(what, sizeof(what), fmt, ap);

        fetch_reset(p);
        if (cache_usable(p, now)) {
                log_debug("credentials: %s: refreshing the %s failed (%s), using the old ones until "
                          "they expire", p->destination, instance_what(p), what);
                (void) deliver(p, 0, &p->cached, NULL);
                return;
        }
        cache_drop(p);
        if (whole)
                (void) deliver_error(p, error, "%s, and %s", fixed_hint(p, hint, sizeof(hint)), what);
        else
                (void) deliver_error(p, error, "%s, and the %s: %s", fixed_hint(p, hint, sizeof(hint)),
                                     instance_what(p), what);
}

_printf_(3, 4) static void fetch_fail(CredProvider *p, int error, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        fetch_failv(p, error, false, fmt, ap);
        va_end(ap);
}

/* The metadata service says there is nothing for this instance: a sentence of its own. */
_printf_(3, 4) static void fetch_fail_whole(CredProvider *p, int error, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        fetch_failv(p, error, true, fmt, ap);
        va_end(ap);
}

static void fetch_succeed(CredProvider *p, Credentials *c) {
        uint64_t now = provider_now_usec(CLOCK_REALTIME);
        char t[CRED_TIME_MAX];

        fetch_reset(p);
        cache_drop(p);
        p->cached = *c;
        *c = (Credentials) { .kind = _CRED_KIND_INVALID };
        p->have_cached = true;
        p->refresh_usec = refresh_time(now, p->cached.expires_usec);
        p->cached_after_reject = p->fetch_after_reject;
        p->fetch_after_reject = false;
        log_debug("credentials: %s: %s, expiring %s", p->destination, p->cached.source,
                  format_rfc3339(t, sizeof(t), p->cached.expires_usec));
        (void) deliver(p, 0, &p->cached, NULL);
}

static void http_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                      void *userdata);

static int fetch_request(CredProvider *p, FetchStep step, const char *method, const char *path,
                         const char *header, size_t max_body) {
        _cleanup_free_ char *url = NULL;
        const char *headers[] = { header, NULL };
        HttpRequestParams params = {
                .method = method,
                .headers = header ? headers : NULL,
                .timeout_usec = p->timeout_usec,
                .max_body = max_body,
        };

        if (asprintf(&url, "%s%s", p->metadata_url, path) < 0)
                return -ENOMEM;
        params.url = url;
        p->step = step;
        log_debug("credentials: %s %s", method, url);
        return http_request_start(p->req, &params, http_done, p);
}

static int fetch_aws_role(CredProvider *p) {
        return fetch_request(p, FETCH_AWS_ROLE, "GET", AWS_ROLES_PATH, p->imds_token_header,
                             CRED_ROLE_LIST_BODY_MAX);
}

static int fetch_aws_credentials(CredProvider *p) {
        _cleanup_free_ char *path = NULL;

        if (asprintf(&path, "%s%s", AWS_ROLES_PATH, p->role) < 0)
                return -ENOMEM;
        return fetch_request(p, FETCH_AWS_CREDENTIALS, "GET", path, p->imds_token_header,
                             CRED_AWS_DOC_BODY_MAX);
}

static int fetch_start(CredProvider *p) {
        char ttl[64];

        assert(p->step == FETCH_NONE);

        switch (p->scheme) {
        case UPLOAD_S3:
                (void) snprintf(ttl, sizeof(ttl), "%s: %d", AWS_TOKEN_TTL_HEADER, CRED_IMDS_TOKEN_TTL_SEC);
                return fetch_request(p, FETCH_AWS_TOKEN, "PUT", AWS_TOKEN_PATH, ttl,
                                     CRED_IMDS_TOKEN_BODY_MAX);
        case UPLOAD_GS:
                return fetch_request(p, FETCH_GCP_TOKEN, "GET", GCP_TOKEN_PATH, "Metadata-Flavor: Google",
                                     CRED_GCP_DOC_BODY_MAX);
        case UPLOAD_AZ:
                return fetch_request(p, FETCH_AZURE_TOKEN, "GET", AZURE_TOKEN_PATH, "Metadata: true",
                                     CRED_AZURE_DOC_BODY_MAX);
        case UPLOAD_FILE:
        case _UPLOAD_SCHEME_MAX:
        case _UPLOAD_SCHEME_INVALID:
                break;
        }
        return -EINVAL;
}

/*
 * A string member that must be 1..@max visible ASCII bytes: 1. An optional
 * one may be missing or "": 0 with *@ret NULL.
 */
static int json_word(json_object *o, const char *key, bool optional, size_t max, const char **ret, char *err,
                     size_t errsz) {
        const char *s;
        size_t len;
        int r;

        r = provider_json_get_string(o, NULL, key, optional ? PROVIDER_JSON_OPTIONAL : 0, &s, &len, err,
                                     errsz);
        if (r < 0)
                return r;
        if (r == 0 || (optional && len == 0)) {
                *ret = NULL;
                return 0;
        }
        if (len == 0)
                return provider_set_error(err, errsz, "\"%s\" is empty", key);
        if (len > max)
                return provider_set_error(err, errsz, "\"%s\" is longer than %zu bytes", key, max);
        if (!provider_visible_ascii(s, len))
                return provider_set_error(err, errsz, "\"%s\" holds characters that cannot be sent", key);
        *ret = s;
        return 1;
}

static int check_expiry(uint64_t expires, char *err, size_t errsz) {
        char t[CRED_TIME_MAX];

        if (expires <= provider_now_usec(CLOCK_REALTIME)) {
                (void) provider_set_error(err, errsz, "already expired at %s",
                                          format_rfc3339(t, sizeof(t), expires));
                return -EKEYEXPIRED;
        }
        return 0;
}

/* {"Code": "Success", "AccessKeyId": ..., "SecretAccessKey": ..., "Token": ..., "Expiration": RFC 3339} */
static int parse_aws_credentials(const char *body, size_t size, Credentials *ret, char *err, size_t errsz) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        const char *code, *id, *secret, *token = NULL, *expiration;
        char q[PROVIDER_QUOTE_MAX + 8];
        uint64_t expires;
        size_t len;
        int r;

        r = provider_json_parse(body, size, json_type_object, CRED_JSON_MAX_DEPTH, &o, err, errsz);
        if (r < 0)
                return r;
        r = provider_json_get_string(o, NULL, "Code", 0, &code, &len, err, errsz);
        if (r < 0)
                return r;
        if (!streq(code, "Success")) {
                provider_quote_untrusted(q, sizeof(q), code, len);
                return provider_set_error(err, errsz, "\"Code\" is '%s', not 'Success'", q);
        }
        r = json_word(o, "AccessKeyId", false, CRED_KEY_ID_MAX, &id, err, errsz);
        if (r >= 0)
                r = json_word(o, "SecretAccessKey", false, CRED_SECRET_MAX, &secret, err, errsz);
        if (r >= 0)
                r = json_word(o, "Token", true, CRED_SESSION_TOKEN_MAX, &token, err, errsz);
        if (r >= 0)
                r = provider_json_get_string(o, NULL, "Expiration", 0, &expiration, &len, err, errsz);
        if (r < 0)
                return r;
        if (len > CRED_TIME_MAX || parse_rfc3339(expiration, &expires) < 0 || expires == 0) {
                provider_quote_untrusted(q, sizeof(q), expiration, len);
                return provider_set_error(err, errsz, "invalid \"Expiration\" '%s'", q);
        }
        r = check_expiry(expires, err, errsz);
        if (r < 0)
                return r;

        *ret = (Credentials) {
                .kind = CRED_AWS,
                .expires_usec = expires,
        };
        if (strdup_null(id, &ret->access_key_id) < 0 || strdup_null(secret, &ret->secret_access_key) < 0 ||
            strdup_null(token, &ret->session_token) < 0) {
                credentials_done(ret);
                return -ENOMEM;
        }
        return 0;
}

/* A token_type, where given, must say Bearer: anything else is no token we can send. */
static int check_token_type(json_object *o, char *err, size_t errsz) {
        char q[PROVIDER_QUOTE_MAX + 8];
        const char *type;
        size_t len;
        int r;

        r = provider_json_get_string(o, NULL, "token_type", PROVIDER_JSON_OPTIONAL, &type, &len, err, errsz);
        if (r <= 0)
                return r;
        if (strcasecmp(type, "Bearer") != 0) {
                provider_quote_untrusted(q, sizeof(q), type, len);
                return provider_set_error(err, errsz, "\"token_type\" is '%s', not 'Bearer'", q);
        }
        return 0;
}

static int bearer_credentials(const char *token, uint64_t expires, Credentials *ret) {
        *ret = (Credentials) {
                .kind = CRED_BEARER,
                .expires_usec = expires,
        };
        if (strdup_null(token, &ret->token) < 0)
                return -ENOMEM;
        return 0;
}

/* GCP: {"access_token": ..., "expires_in": SECONDS, "token_type": "Bearer"} */
static int parse_gcp_token(const char *body, size_t size, Credentials *ret, char *err, size_t errsz) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        const char *token;
        int64_t expires_in;
        uint64_t expires;
        int r;

        r = provider_json_parse(body, size, json_type_object, CRED_JSON_MAX_DEPTH, &o, err, errsz);
        if (r < 0)
                return r;
        r = json_word(o, "access_token", false, CRED_BEARER_MAX, &token, err, errsz);
        if (r >= 0)
                r = provider_json_get_int64(o, NULL, "expires_in", 0, 0, &expires_in, err, errsz);
        if (r >= 0)
                r = check_token_type(o, err, errsz);
        if (r < 0)
                return r;
        /* Ten years is more than any token lives; more is garbage. */
        if (expires_in > 10 * 366 * 86400)
                return provider_set_error(err, errsz, "invalid \"expires_in\"");
        expires = provider_now_usec(CLOCK_REALTIME) + (uint64_t) expires_in * USEC_PER_SEC;
        r = check_expiry(expires, err, errsz);
        if (r < 0)
                return r;
        return bearer_credentials(token, expires, ret);
}

/* Azure: {"access_token": ..., "expires_on": "UNIX SECONDS", "token_type": "Bearer", ...} */
static int parse_azure_token(const char *body, size_t size, Credentials *ret, char *err, size_t errsz) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        const char *token, *s;
        char q[PROVIDER_QUOTE_MAX + 8];
        json_object *v;
        uint64_t secs = 0, expires;
        size_t len;
        int64_t i;
        int r;

        r = provider_json_parse(body, size, json_type_object, CRED_JSON_MAX_DEPTH, &o, err, errsz);
        if (r < 0)
                return r;
        r = json_word(o, "access_token", false, CRED_BEARER_MAX, &token, err, errsz);
        if (r >= 0)
                r = check_token_type(o, err, errsz);
        if (r >= 0)
                r = provider_json_get_member(o, NULL, "expires_on", 0, &v, err, errsz);
        if (r < 0)
                return r;
        /* IMDS writes it as a string of digits; take a number too. */
        if (json_object_is_type(v, json_type_int)) {
                r = provider_json_get_int64(o, NULL, "expires_on", 0, 1, &i, err, errsz);
                if (r < 0)
                        return r;
                secs = (uint64_t) i;
        } else {
                r = provider_json_string_value(v, "\"expires_on\"", &s, &len, err, errsz);
                if (r < 0)
                        return provider_set_error(err, errsz,
                                                  "\"expires_on\" is neither a string nor a number");
                if (len == 0 || len > 12 || strspn(s, "0123456789") != len) {
                        provider_quote_untrusted(q, sizeof(q), s, len);
                        return provider_set_error(err, errsz, "invalid \"expires_on\" '%s'", q);
                }
                for (size_t k = 0; k < len; k++)
                        secs = secs * 10 + (uint64_t) (s[k] - '0');
        }
        if (secs == 0 || secs > UINT64_C(253402300799)) /* 9999-12-31 */
                return provider_set_error(err, errsz, "invalid \"expires_on\"");
        expires = secs * USEC_PER_SEC;
        r = check_expiry(expires, err, errsz);
        if (r < 0)
                return r;
        return bearer_credentials(token, expires, ret);
}

/* Azure explains a failure in {"error": ..., "error_description": ...}: a quoted part of it, or "". */
static void azure_error_hint(const char *body, size_t size, char *buf, size_t bufsz) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        char q[PROVIDER_QUOTE_MAX + 8];
        const char *s;
        size_t len;

        buf[0] = 0;
        if (provider_json_parse(body, size, json_type_object, CRED_JSON_MAX_DEPTH, &o, NULL, 0) < 0)
                return;
        if (provider_json_get_string(o, NULL, "error_description", PROVIDER_JSON_OPTIONAL, &s, &len, NULL,
                                     0) <= 0 &&
            provider_json_get_string(o, NULL, "error", PROVIDER_JSON_OPTIONAL, &s, &len, NULL, 0) <= 0)
                return;
        provider_quote_untrusted(q, sizeof(q), s, len);
        (void) snprintf(buf, bufsz, " (%s)", q);
}

/* The role listing: the first line is the role's name. */
static int parse_role(const char *body, size_t size, char **ret) {
        size_t n = 0;

        if (!body)
                return -EBADMSG;
        while (n < size && body[n] != '\n' && body[n] != '\r')
                n++;
        if (n == 0 || n > CRED_ROLE_NAME_MAX)
                return -EBADMSG;
        /* IAM role names are [A-Za-z0-9+=,.@_-]; they go into the URL as they are. */
        for (size_t i = 0; i < n; i++)
                if (body[i] == 0 || !strchr(ROLE_NAME_CHARS, body[i]))
                        return -EBADMSG;
        *ret = strndup(body, n);
        return *ret ? 0 : -ENOMEM;
}


static void on_aws_token(CredProvider *p, long status, const char *body, size_t size) {
        _cleanup_free_ char *token = NULL;
        int r;

        if (status == 404) {
                /* An IMDS without session tokens (an older emulator): plain GETs. */
                log_debug("credentials: %s answered HTTP 404, going on without a session token",
                          AWS_TOKEN_PATH);
                r = fetch_aws_role(p);
        } else if (status != 200)
                return fetch_fail(p, provider_http_status_to_errno(status), "IMDSv2 session token: HTTP %ld",
                                  status);
        else {
                r = provider_parse_word(body, size, CRED_IMDS_TOKEN_MAX, &token);
                if (r < 0)
                        return fetch_fail(p, r, "IMDSv2 session token: %s",
                                          r == -EBADMSG ? "invalid token" : strerror(-r));
                erase_free(p->imds_token_header);
                p->imds_token_header = NULL;
                if (asprintf(&p->imds_token_header, "%s: %s", AWS_TOKEN_HEADER, token) < 0) {
                        p->imds_token_header = NULL;
                        return fetch_fail(p, -ENOMEM, "out of memory");
                }
                explicit_bzero(token, strlen(token));
                r = fetch_aws_role(p);
        }
        if (r < 0)
                fetch_fail(p, r, "cannot start a request: %s", strerror(-r));
}

static void on_aws_role(CredProvider *p, long status, const char *body, size_t size) {
        char q[PROVIDER_QUOTE_MAX + 8];
        int r;

        if (status == 404)
                return fetch_fail_whole(p, -ENOKEY, "the metadata service has no instance role (HTTP 404)");
        if (status != 200)
                return fetch_fail(p, provider_http_status_to_errno(status), "%s: HTTP %ld",
                                  "iam/security-credentials/", status);
        r = parse_role(body, size, &p->role);
        if (r == -EBADMSG) {
                provider_quote_untrusted(q, sizeof(q), body, size);
                return fetch_fail(p, r, "iam/security-credentials/: not a role name: '%s'", q);
        }
        if (r >= 0)
                r = fetch_aws_credentials(p);
        if (r < 0)
                fetch_fail(p, r, "cannot start a request: %s", strerror(-r));
}

static void on_document(CredProvider *p, long status, const char *body, size_t size) {
        Credentials c = { .kind = _CRED_KIND_INVALID };
        char err[CRED_ERR_MAX] = "", hint[PROVIDER_QUOTE_MAX + 16] = "";
        int error, r;

        if (status != 200) {
                error = status == 404 ? -ENOKEY : provider_http_status_to_errno(status);
                if (p->step == FETCH_AWS_CREDENTIALS)
                        return fetch_fail_whole(p, error, "instance role '%s': HTTP %ld", p->role, status);
                if (p->step == FETCH_GCP_TOKEN && status == 404)
                        return fetch_fail_whole(p, -ENOKEY,
                                                "the metadata server has no service account (HTTP 404)");
                if (p->step == FETCH_AZURE_TOKEN)
                        azure_error_hint(body, size, hint, sizeof(hint));
                return fetch_fail(p, error, "HTTP %ld%s", status, hint);
        }

        if (p->step == FETCH_AWS_CREDENTIALS)
                r = parse_aws_credentials(body, size, &c, err, sizeof(err));
        else if (p->step == FETCH_GCP_TOKEN)
                r = parse_gcp_token(body, size, &c, err, sizeof(err));
        else
                r = parse_azure_token(body, size, &c, err, sizeof(err));
        if (r < 0 && p->step == FETCH_AWS_CREDENTIALS)
                return fetch_fail_whole(p, r, "instance role '%s': %s", p->role,
                                        r == -ENOMEM ? "out of memory" : err);
        if (r < 0)
                return fetch_fail(p, r, "%s", r == -ENOMEM ? "out of memory" : err);

        if (p->step == FETCH_AWS_CREDENTIALS)
                r = format_to(&c.source, "instance role '%s'", p->role);
        else
                r = format_to(&c.source, "%s", p->step == FETCH_GCP_TOKEN ? "service account" : "managed identity");
        if (r < 0) {
                credentials_done(&c);
                return fetch_fail(p, r, "out of memory");
        }
        fetch_succeed(p, &c);
}

static const char *step_what(FetchStep step) {
        switch (step) {
        case FETCH_AWS_TOKEN:
                return "IMDSv2 session token";
        case FETCH_AWS_ROLE:
                return "iam/security-credentials/";
        case FETCH_AWS_CREDENTIALS:
                return NULL; /* the role's name */
        case FETCH_GCP_TOKEN:
        case FETCH_AZURE_TOKEN:
        case FETCH_NONE:
                break;
        }
        return NULL;
}

static void http_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                      void *userdata) {
        CredProvider *p = userdata;
        const char *what = step_what(p->step);

        if (error < 0) {
                if (p->step == FETCH_AWS_CREDENTIALS)
                        return fetch_fail_whole(p, error, "instance role '%s': %s", p->role,
                                                provider_transport_error_to_string(error));
                return fetch_fail(p, error, "%s%s%s", what ?: "", what ? ": " : "",
                                  provider_transport_error_to_string(error));
        }
        switch (p->step) {
        case FETCH_AWS_TOKEN:
                return on_aws_token(p, status, body, size);
        case FETCH_AWS_ROLE:
                return on_aws_role(p, status, body, size);
        case FETCH_AWS_CREDENTIALS:
        case FETCH_GCP_TOKEN:
        case FETCH_AZURE_TOKEN:
                return on_document(p, status, body, size);
        case FETCH_NONE:
                break;
        }
}

/* ---- resolving the queue ------------------------------------------------------ */

static void resolve(CredProvider *p) {
        uint64_t now = provider_now_usec(CLOCK_REALTIME), mono;
        char hint[CRED_HINT_MAX];
        const char *cloud;
        int r;

        if (!p->waiters || p->step != FETCH_NONE)
                return;

        if (p->fixed_error) {
                (void) deliver_error(p, -EINVAL, "%s", p->fixed_error);
                return;
        }
        if (p->have_fixed) {
                if (!p->fixed_rejected)
                        (void) deliver(p, 0, &p->fixed, NULL);
                else if (p->fixed.kind == CRED_AWS)
                        (void) deliver_error(p, -EACCES, "the %s '%s' from the %s was rejected by the store",
                                             fixed_rejected_what(p), p->fixed.access_key_id,
                                             p->fixed.source);
                else
                        (void) deliver_error(p, -EACCES, "the %s from the %s was rejected by the store",
                                             fixed_rejected_what(p), p->fixed.source);
                return;
        }
        if (!p->metadata_url) {
                cloud = cloud_kind_to_string(p->cloud);
                (void) deliver_error(p, -ENOKEY,
                                     "%s (the %s is only asked for on %s; the daemon watches %s)",
                                     configure_hint(p, hint, sizeof(hint)), instance_what(p),
                                     scheme_cloud_name(p->scheme),
                                     p->cloud == CLOUD_AUTO || !cloud ? "no known cloud" : cloud);
                return;
        }
        if (cache_fresh(p, now)) {
                (void) deliver(p, 0, &p->cached, NULL);
                return;
        }
        mono = provider_now_usec(CLOCK_MONOTONIC);
        if (mono < p->reject_until_usec) {
                (void) deliver_error(p, -EACCES,
                                     "the %s was rejected by the store, also after fetching it again; "
                                     "next try in %" PRIu64 " s",
                                     instance_what(p),
                                     (p->reject_until_usec - mono + USEC_PER_SEC - 1) / USEC_PER_SEC);
                return;
        }

        r = fetch_start(p);
        if (r < 0)
                fetch_fail(p, r, "cannot start a request: %s", strerror(-r));
}

static void kick_cb(uv_timer_t *t) {
        CredProvider *p = provider_timer_owner(t);

        if (p)
                resolve(p);
}

/* ---- the interface ------------------------------------------------------------ */

int cred_provider_new(uv_loop_t *loop, Http *http, const UploadConfig *upload, CloudKind cloud,
                      const char *metadata_url, uint64_t request_timeout_usec, CredProvider **ret) {
        _cleanup_(cred_provider_freep) CredProvider *p = NULL;
        size_t n;
        int r;

        assert(loop);
        assert(http);
        assert(upload);
        assert(ret);

        if (scheme_cloud(upload->scheme) < 0)
                return -EINVAL;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->scheme = upload->scheme;
        p->cloud = cloud;
        p->timeout_usec = request_timeout_usec;
        p->waiters_tail = &p->waiters;
        p->fixed.kind = _CRED_KIND_INVALID;
        p->cached.kind = _CRED_KIND_INVALID;

        p->destination = strdup(upload->destination ?: "");
        p->name = strdup(upload->name ?: "");
        if (!p->destination || !p->name)
                return -ENOMEM;

        r = take_fixed(p, upload);
        if (r < 0)
                return r;

        if (!p->have_fixed && !p->fixed_error && cloud == scheme_cloud(p->scheme)) {
                const char *url = isempty(metadata_url) ? provider_default_url(cloud) : metadata_url;

                if (!url)
                        return -EINVAL;
                n = strlen(url);
                while (n > 0 && url[n - 1] == '/')
                        n--;
                p->metadata_url = strndup(url, n);
                if (!p->metadata_url)
                        return -ENOMEM;
                r = http_request_new(http, "credentials", &p->req);
                if (r < 0)
                        return r;
        }

        r = provider_timer_new(loop, p, &p->kick);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(p);
        return 0;
}

int cred_provider_get(CredProvider *p, CredDoneFn done, void *userdata) {
        CredWaiter *w;
        int r;

        assert(p);
        assert(done);

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->done = done;
        w->userdata = userdata;

        /* A fetch in progress calls it back when it ends; else the next loop turn does. */
        if (p->step == FETCH_NONE) {
                r = kick(p);
                if (r < 0) {
                        free(w);
                        return r;
                }
        }
        *p->waiters_tail = w;
        p->waiters_tail = &w->next;
        return 0;
}

void cred_provider_cancel(CredProvider *p, void *userdata) {
        CredWaiter **w, *dead;

        if (!p)
                return;
        /* Those deliver() is calling right now are only marked; it frees them. */
        for (CredWaiter *b = p->batch; b; b = b->next)
                if (b->userdata == userdata)
                        b->done = NULL;
        w = &p->waiters;
        while (*w) {
                if ((*w)->userdata != userdata) {
                        w = &(*w)->next;
                        continue;
                }
                dead = *w;
                *w = dead->next;
                free(dead);
        }
        /* The tail may have been the last one removed. */
        p->waiters_tail = &p->waiters;
        while (*p->waiters_tail)
                p->waiters_tail = &(*p->waiters_tail)->next;
}

void cred_provider_invalidate(CredProvider *p) {
        if (!p)
                return;

        if (p->have_fixed) {
                if (!p->fixed_rejected)
                        log_debug("credentials: %s: the store rejected the credentials from the %s",
                                  p->destination, p->fixed.source);
                p->fixed_rejected = true;
                return;
        }
        /*
         * Nothing cached: dropped already (parts in parallel all report the
         * same rejection) or a fetch is on its way, which brings new ones.
         */
        if (!p->have_cached)
                return;
        log_debug("credentials: %s: the store rejected the credentials of the %s", p->destination,
                  p->cached.source);
        /* Fetched again once; if the store rejects those too, a minute passes before the next fetch. */
        if (p->cached_after_reject)
                p->reject_until_usec = provider_now_usec(CLOCK_MONOTONIC) + CRED_REJECT_HOLDOFF_USEC;
        cache_drop(p);
        p->fetch_after_reject = true;
}

CredProvider *cred_provider_free(CredProvider *p) {
        CredWaiter *w;

        if (!p)
                return NULL;
        if (p->freed)
                *p->freed = true;

        p->req = http_request_free(p->req);
        p->kick = provider_timer_close(p->kick);
        while ((w = p->waiters)) {
                p->waiters = w->next;
                free(w);
        }
        fetch_reset(p);
        credentials_done(&p->fixed);
        credentials_done(&p->cached);
        free(p->fixed_error);
        free(p->metadata_url);
        free(p->destination);
        free(p->name);
        free(p);
        return NULL;
}

int credentials_parse_answer(CredAnswer what, const char *body, size_t size, Credentials *ret, char *err,
                             size_t errsz) {
        switch (what) {
        case CRED_ANSWER_AWS_ROLE:
                return parse_aws_credentials(body, size, ret, err, errsz);
        case CRED_ANSWER_GCP_TOKEN:
                return parse_gcp_token(body, size, ret, err, errsz);
        case CRED_ANSWER_AZURE_TOKEN:
                return parse_azure_token(body, size, ret, err, errsz);
        case _CRED_ANSWER_MAX:
                break;
        }
        return -EINVAL;
}

int credentials_parse_role_list(const char *body, size_t size, char **ret) {
        return parse_role(body, size, ret);
}
