/* SPDX-License-Identifier: MIT */
/*
 * fake-server.c - the --fake-metadata HTTP server's plumbing. libmicrohttpd
 * runs in "external" epoll mode: MHD binds the loopback socket and keeps its
 * own epoll set; that one epoll fd sits under a uv_poll_t of the daemon's
 * loop, and after every MHD_run() a uv_timer_t is armed from
 * MHD_get_timeout(), so MHD never needs a thread. Request bodies are
 * collected (bounded) and each complete request goes to the cloud's fake
 * (fake-aws.c, ...), which owns that cloud's paths and rules; the helpers
 * several fakes use (answers, time formats, random ids, the session-token
 * ring of the IMDS copies, the instance credentials the clouds' fakes hand
 * out) live here too. It knows nothing of plans and logs at debug level only.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "fake-server-internal.h"
#include "shared/log.h"

#define FAKE_CONNECTIONS_MAX 64U
#define FAKE_CONNECTION_TIMEOUT_SEC 30U
#define FAKE_CONNECTION_MEMORY ((size_t) 32 * 1024)
#define FAKE_HOST_MAX 32 /* "http://" and an IPv4 literal, or "http://[::1]" */

/* One request in progress: its body as it arrives. */
typedef struct FakeConn {
        char *body;
        size_t size;
        bool too_large;
} FakeConn;

static const FakeCloud *const fake_clouds[] = {
        &fake_cloud_aws,
        &fake_cloud_gcp,
        &fake_cloud_alibaba,
        &fake_cloud_azure,
};

uint64_t fake_now_monotonic_usec(void) {
        return uv_hrtime() / NSEC_PER_USEC;
}

uint64_t fake_now_realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

int fake_format_time(uint64_t usec, FakeTimeFormat format, char *buf, size_t size) {
        /* Spelled out here so no locale can change them. */
        static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                              "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        time_t t = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;
        int n = -1;

        if (!gmtime_r(&t, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 || tm.tm_mon > 11)
                return -EINVAL;
        switch (format) {
        case FAKE_TIME_RFC3339:
                n = snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
                break;
        case FAKE_TIME_AWS_EVENT:
                n = snprintf(buf, size, "%02d %s %04d %02d:%02d:%02d GMT", tm.tm_mday, months[tm.tm_mon],
                             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
                break;
        case FAKE_TIME_RFC1123:
                n = snprintf(buf, size, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
                             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
                break;
        case _FAKE_TIME_MAX:
        case _FAKE_TIME_INVALID:
                return -EINVAL;
        }
        if (n < 0 || (size_t) n >= size)
                return -ENOBUFS;
        return 0;
}

int fake_random_hex(char *buf, size_t size, size_t digits) {
        static const char hex[] = "0123456789abcdef";
        uint8_t raw[64];
        size_t n = (digits + 1) / 2;

        if (size <= digits || n > sizeof(raw))
                return -ENOBUFS;
        if (getrandom(raw, n, GRND_NONBLOCK) != (ssize_t) n)
                return -EIO;
        for (size_t i = 0; i < digits; i++)
                buf[i] = hex[i % 2 == 0 ? raw[i / 2] >> 4 : raw[i / 2] & 15];
        buf[digits] = 0;
        return 0;
}

/* ---- session tokens ------------------------------------------------------ */

int fake_token_parse_ttl(const char *s, unsigned *ret) {
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

enum MHD_Result fake_token_put(FakeServer *s, const FakeRequest *req, FakeTokenRing *ring,
                               const char *ttl_header, bool echo_ttl, bool (*make)(char *buf, size_t size)) {
        FakeToken *t;
        unsigned ttl;
        char buf[16];

        /* IMDS and its copies refuse token requests that passed through a proxy. */
        if (fake_request_header(req, "X-Forwarded-For"))
                return fake_reply_error(s, req, MHD_HTTP_FORBIDDEN, NULL);
        if (fake_token_parse_ttl(fake_request_header(req, ttl_header), &ttl) < 0)
                return fake_reply_error(s, req, MHD_HTTP_BAD_REQUEST, NULL);

        t = &ring->tokens[ring->next++ % FAKE_TOKENS_MAX];
        if (!make(t->value, sizeof(t->value))) {
                t->expire_usec = 0;
                return fake_reply_error(s, req, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
        }
        t->expire_usec = fake_now_monotonic_usec() + ttl * USEC_PER_SEC;

        (void) snprintf(buf, sizeof(buf), "%u", ttl);
        return fake_reply(s, req, MHD_HTTP_OK, "text/plain", t->value, strlen(t->value),
                          echo_ttl ? ttl_header : NULL, echo_ttl ? buf : NULL);
}

bool fake_token_valid(const FakeTokenRing *ring, const char *value) {
        uint64_t now = fake_now_monotonic_usec();

        if (isempty(value))
                return false;
        for (size_t i = 0; i < FAKE_TOKENS_MAX; i++)
                if (ring->tokens[i].expire_usec > now && streq(ring->tokens[i].value, value))
                        return true;
        return false;
}

int fake_json_add_string(json_object *o, const char *key, const char *value) {
        json_object *v = json_object_new_string(value);

        if (!v)
                return -ENOMEM;
        if (json_object_object_add(o, key, v) < 0) {
                (void) json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

/* ---- instance credentials ------------------------------------------------ */

#define FAKE_DEFAULT_ACCESS_KEY_ID "ASIAFAKESPOTWATCHD00"
#define FAKE_DEFAULT_SECRET_ACCESS_KEY "fakeSecretAccessKey/spotwatchd/000000000"
#define FAKE_DEFAULT_SESSION_TOKEN "FakeSessionToken/spotwatchd/IQoJb3JpZ2luX2VjEFAKE"
/* Shaped like each cloud's: a GCP OAuth2 access token, an Azure AD JWT. */
#define FAKE_DEFAULT_GCP_TOKEN "ya29.spotwatchd-fake-bearer-token"
#define FAKE_DEFAULT_AZURE_TOKEN "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJzdWIiOiJzcG90d2F0Y2hkLWZha2UifQ."

static bool creds_value_ok(const char *v) {
        size_t n;

        if (!v)
                return false;
        n = strlen(v);
        if (n == 0 || n > FAKE_CREDENTIALS_VALUE_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (v[i] <= 0x20 || v[i] >= 0x7f)
                        return false;
        return true;
}

static const char *env_or(const char *name, const char *fallback) {
        const char *v = getenv(name);

        return creds_value_ok(v) ? v : fallback;
}

static void creds_free_values(FakeCreds *c) {
        free(c->access_key_id);
        free(c->secret_access_key);
        free(c->session_token);
        free(c->token);
        c->access_key_id = c->secret_access_key = c->session_token = c->token = NULL;
}

static void creds_done(FakeCreds *c) {
        creds_free_values(c);
        free(c->raw_body);
        c->raw_body = NULL;
        c->raw_status = 0;
}

static int strdup_or_null(const char *v, char **ret) {
        *ret = NULL;
        if (!v)
                return 0;
        *ret = strdup(v);
        return *ret ? 0 : -ENOMEM;
}

int fake_server_set_credentials(FakeServer *s, const FakeCredentials *c) {
        FakeCreds n = { .none = c->none, .lifetime_usec = c->lifetime_usec };
        FakeCredsKind kind;

        assert(s);
        assert(c);

        kind = s->vt->creds_kind;
        if (kind == FAKE_CREDS_NONE || c->lifetime_usec > FAKE_CREDENTIALS_LIFETIME_MAX_USEC)
                return -EINVAL;
        if (kind == FAKE_CREDS_KEY_PAIR) {
                if (c->token)
                        return -EINVAL;
                if (!c->none && (!creds_value_ok(c->access_key_id) || !creds_value_ok(c->secret_access_key)))
                        return -EINVAL;
                if (c->session_token && !creds_value_ok(c->session_token))
                        return -EINVAL;
        } else {
                if (c->access_key_id || c->secret_access_key || c->session_token)
                        return -EINVAL;
                if (!c->none && !creds_value_ok(c->token))
                        return -EINVAL;
        }
        if (c->none && (c->access_key_id || c->secret_access_key || c->session_token || c->token))
                return -EINVAL;

        if (strdup_or_null(c->access_key_id, &n.access_key_id) < 0 ||
            strdup_or_null(c->secret_access_key, &n.secret_access_key) < 0 ||
            strdup_or_null(c->session_token, &n.session_token) < 0 ||
            strdup_or_null(c->token, &n.token) < 0) {
                creds_free_values(&n);
                return -ENOMEM;
        }
        creds_free_values(&s->creds);
        s->creds.none = n.none;
        s->creds.access_key_id = n.access_key_id;
        s->creds.secret_access_key = n.secret_access_key;
        s->creds.session_token = n.session_token;
        s->creds.token = n.token;
        s->creds.lifetime_usec = n.lifetime_usec;
        return 0;
}

/* What is served until someone says otherwise: the environment's keys, else fixed fake ones. */
static int creds_init(FakeServer *s) {
        FakeCredentials c = { .lifetime_usec = FAKE_CREDENTIALS_LIFETIME_USEC };
        const char *id = getenv("SPOTWATCHD_FAKE_ACCESS_KEY_ID");
        const char *secret = getenv("SPOTWATCHD_FAKE_SECRET_ACCESS_KEY");

        switch (s->vt->creds_kind) {
        case FAKE_CREDS_KEY_PAIR:
                if (creds_value_ok(id) && creds_value_ok(secret)) {
                        c.access_key_id = id;
                        c.secret_access_key = secret;
                        c.session_token = env_or("SPOTWATCHD_FAKE_SESSION_TOKEN", NULL);
                } else {
                        c.access_key_id = FAKE_DEFAULT_ACCESS_KEY_ID;
                        c.secret_access_key = FAKE_DEFAULT_SECRET_ACCESS_KEY;
                        c.session_token = FAKE_DEFAULT_SESSION_TOKEN;
                }
                break;
        case FAKE_CREDS_BEARER:
                c.token = env_or("SPOTWATCHD_FAKE_BEARER_TOKEN", s->vt->cloud == CLOUD_AZURE
                                                                         ? FAKE_DEFAULT_AZURE_TOKEN
                                                                         : FAKE_DEFAULT_GCP_TOKEN);
                break;
        case FAKE_CREDS_NONE:
        case _FAKE_CREDS_KIND_MAX:
        case _FAKE_CREDS_KIND_INVALID:
                return 0;
        }
        return fake_server_set_credentials(s, &c);
}

int fake_server_set_credentials_reply(FakeServer *s, unsigned status, const char *body) {
        char *copy = NULL;

        assert(s);

        if (body) {
                copy = strdup(body);
                if (!copy)
                        return -ENOMEM;
        }
        free(s->creds.raw_body);
        s->creds.raw_body = copy;
        s->creds.raw_status = body ? status : 0;
        return 0;
}

bool fake_creds_reply_raw(FakeServer *s, const FakeRequest *req, enum MHD_Result *ret) {
        s->creds.fetches++;
        if (!s->creds.raw_body)
                return false;
        *ret = fake_reply(s, req, s->creds.raw_status, "application/json", s->creds.raw_body,
                          strlen(s->creds.raw_body), NULL, NULL);
        return true;
}

uint64_t fake_server_credential_fetches(FakeServer *s) {
        assert(s);
        return s->creds.fetches;
}

/* Everything fake_server_new() made before the uv handles: the cloud's state, the credentials, @s. */
static void fake_server_free_now(FakeServer *s) {
        if (s->vt->done)
                s->vt->done(s);
        creds_done(&s->creds);
        free(s->state);
        free(s);
}

static void fake_server_maybe_free(FakeServer *s) {
        if (!s->closing || s->n_handles > 0)
                return;
        fake_server_free_now(s);
}

static void handle_close_cb(uv_handle_t *handle) {
        FakeServer *s = handle->data;

        assert(s->n_handles > 0);
        s->n_handles--;
        fake_server_maybe_free(s);
}

void fake_server_close(FakeServer *s) {
        if (!s || s->closing)
                return;
        s->closing = true;

        /* Stop watching the epoll fd before MHD closes it. */
        if (s->poll_initialized)
                uv_close((uv_handle_t *) &s->poll, handle_close_cb);
        if (s->timer_initialized)
                uv_close((uv_handle_t *) &s->timer, handle_close_cb);
        if (s->wait_timer_initialized)
                uv_close((uv_handle_t *) &s->wait_timer, handle_close_cb);
        /* MHD refuses to stop while a connection is suspended; completed_cb() forgets them. */
        for (unsigned i = 0; i < FAKE_WAITERS_MAX; i++)
                if (s->waiters[i].connection && !s->waiters[i].resumed) {
                        s->waiters[i].resumed = true;
                        MHD_resume_connection(s->waiters[i].connection);
                }
        if (s->mhd)
                MHD_stop_daemon(s->mhd);
        s->mhd = NULL;

        fake_server_maybe_free(s);
}

/* ---- requests ------------------------------------------------------------ */

const char *fake_request_header(const FakeRequest *req, const char *name) {
        return MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, name);
}

const char *fake_request_arg(const FakeRequest *req, const char *name) {
        return MHD_lookup_connection_value(req->connection, MHD_GET_ARGUMENT_KIND, name);
}

/* ---- responses ----------------------------------------------------------- */

enum MHD_Result fake_reply_headers(FakeServer *s, const FakeRequest *req, unsigned status, const char *type,
                                   const char *body, size_t size, const char *const *headers) {
        struct MHD_Response *resp;
        enum MHD_Result ret;

        resp = MHD_create_response_from_buffer(size, (void *) body, MHD_RESPMEM_MUST_COPY);
        if (!resp)
                return MHD_NO;
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type) != MHD_YES ||
            MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, s->vt->server_header) != MHD_YES)
                goto fail;
        for (size_t i = 0; headers && headers[i]; i += 2)
                if (MHD_add_response_header(resp, headers[i], headers[i + 1]) != MHD_YES)
                        goto fail;
        ret = MHD_queue_response(req->connection, status, resp);
        MHD_destroy_response(resp);
        return ret;

fail:
        MHD_destroy_response(resp);
        return MHD_NO;
}

enum MHD_Result fake_reply(FakeServer *s, const FakeRequest *req, unsigned status, const char *type,
                           const char *body, size_t size, const char *header, const char *value) {
        const char *const headers[] = { header, value, NULL };

        return fake_reply_headers(s, req, status, type, body, size, header ? headers : NULL);
}

enum MHD_Result fake_reply_text(FakeServer *s, const FakeRequest *req, const char *text) {
        return fake_reply(s, req, MHD_HTTP_OK, "text/plain", text, strlen(text), NULL, NULL);
}

enum MHD_Result fake_reply_json_status(FakeServer *s, const FakeRequest *req, unsigned status,
                                       const char *type, json_object *o) {
        const char *text;
        size_t size;

        if (!o)
                return MHD_NO;
        text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                 &size);
        if (!text)
                return MHD_NO;
        /* fake_reply() copies the text before @o goes. */
        return fake_reply(s, req, status, type, text, size, NULL, NULL);
}

enum MHD_Result fake_reply_json(FakeServer *s, const FakeRequest *req, json_object *o) {
        return fake_reply_json_status(s, req, MHD_HTTP_OK, "application/json", o);
}

/* The small XHTML page IMDS sends with its errors. */
enum MHD_Result fake_reply_error(FakeServer *s, const FakeRequest *req, unsigned status, const char *allow) {
        char page[512];
        const char *reason;
        int n;

        switch (status) {
        case MHD_HTTP_BAD_REQUEST:
                reason = "Bad Request";
                break;
        case MHD_HTTP_UNAUTHORIZED:
                reason = "Unauthorized";
                break;
        case MHD_HTTP_FORBIDDEN:
                reason = "Forbidden";
                break;
        case MHD_HTTP_NOT_FOUND:
                reason = "Not Found";
                break;
        case MHD_HTTP_METHOD_NOT_ALLOWED:
                reason = "Method Not Allowed";
                break;
        case MHD_HTTP_CONTENT_TOO_LARGE:
                reason = "Payload Too Large";
                break;
        case MHD_HTTP_TOO_MANY_REQUESTS:
                reason = "Too Many Requests";
                break;
        case MHD_HTTP_SERVICE_UNAVAILABLE:
                reason = "Service Unavailable";
                break;
        default:
                reason = "Internal Server Error";
                break;
        }

        n = snprintf(page, sizeof(page),
                     "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n"
                     "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n"
                     "\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n"
                     "<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n"
                     " <head>\n  <title>%u - %s</title>\n </head>\n"
                     " <body>\n  <h1>%u - %s</h1>\n </body>\n</html>\n",
                     status, reason, status, reason);
        if (n < 0 || (size_t) n >= sizeof(page))
                return MHD_NO;
        return fake_reply(s, req, status, "text/html", page, (size_t) n, allow ? MHD_HTTP_HEADER_ALLOW : NULL, allow);
}

/* ---- parked requests ----------------------------------------------------- */

static void fake_server_run(FakeServer *s);

static FakeWaiter *waiter_find(FakeServer *s, struct MHD_Connection *c) {
        for (unsigned i = 0; i < FAKE_WAITERS_MAX; i++)
                if (s->waiters[i].connection == c)
                        return &s->waiters[i];
        return NULL;
}

static void waiter_drop(FakeServer *s, FakeWaiter *w) {
        assert(s->n_waiters > 0);
        *w = (FakeWaiter) {};
        s->n_waiters--;
}

static void wait_timer_cb(uv_timer_t *timer);

/* Wake up at the earliest deadline of a parked request, if any. */
static void waiters_arm(FakeServer *s) {
        uint64_t next = UINT64_MAX, now, ms;

        if (s->closing || !s->wait_timer_initialized)
                return;
        for (unsigned i = 0; i < FAKE_WAITERS_MAX; i++)
                if (s->waiters[i].connection && !s->waiters[i].resumed)
                        next = MIN(next, s->waiters[i].deadline_usec);
        if (next == UINT64_MAX) {
                (void) uv_timer_stop(&s->wait_timer);
                return;
        }
        now = fake_now_monotonic_usec();
        ms = next > now ? (next - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC : 0;
        (void) uv_timer_start(&s->wait_timer, wait_timer_cb, ms, 0);
}

static void waiter_resume(FakeWaiter *w, bool timed_out) {
        w->resumed = true;
        w->timed_out = timed_out;
        MHD_resume_connection(w->connection);
}

static void wait_timer_cb(uv_timer_t *timer) {
        FakeServer *s = container_of(timer, FakeServer, wait_timer);
        uint64_t now = fake_now_monotonic_usec();
        bool any = false;

        for (unsigned i = 0; i < FAKE_WAITERS_MAX; i++) {
                FakeWaiter *w = &s->waiters[i];

                if (w->connection && !w->resumed && w->deadline_usec <= now) {
                        waiter_resume(w, true);
                        any = true;
                }
        }
        waiters_arm(s);
        if (any)
                fake_server_run(s);
}

int fake_request_suspend(FakeServer *s, const FakeRequest *req, unsigned topic, uint64_t deadline_usec) {
        FakeWaiter *w;

        assert(s);
        assert(req);

        if (s->closing)
                return -ESHUTDOWN;
        if (waiter_find(s, req->connection))
                return -EBUSY;
        w = waiter_find(s, NULL);
        if (!w)
                return -EBUSY;
        MHD_suspend_connection(req->connection);
        *w = (FakeWaiter) {
                .connection = req->connection,
                .topic = topic,
                .deadline_usec = deadline_usec,
        };
        s->n_waiters++;
        waiters_arm(s);
        return 0;
}

int fake_request_resumed(FakeServer *s, const FakeRequest *req) {
        FakeWaiter *w;
        int r;

        assert(s);
        assert(req);

        w = waiter_find(s, req->connection);
        if (!w || !w->resumed)
                return 0;
        r = w->timed_out ? 2 : 1;
        waiter_drop(s, w);
        return r;
}

void fake_resume(FakeServer *s, unsigned topic) {
        bool any = false;

        assert(s);

        for (unsigned i = 0; i < FAKE_WAITERS_MAX; i++) {
                FakeWaiter *w = &s->waiters[i];

                if (w->connection && !w->resumed && (topic == FAKE_TOPIC_ALL || w->topic == topic)) {
                        waiter_resume(w, false);
                        any = true;
                }
        }
        waiters_arm(s);
        /* Not from inside an MHD callback: the callers are the control socket and timers. */
        if (any)
                fake_server_run(s);
}

/* ---- dispatch ------------------------------------------------------------ */

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
        FakeServer *s = cls;
        FakeConn *fc = *con_cls;
        FakeRequest req;

        /* First call: headers only. Answering later lets MHD deal with any body and "Expect:". */
        if (!fc) {
                fc = calloc(1, sizeof(*fc));
                if (!fc)
                        return MHD_NO;
                *con_cls = fc;
                s->requests++;
                return MHD_YES;
        }
        /* The body, in pieces; beyond FAKE_BODY_MAX it is dropped and answered 413. */
        if (*upload_data_size > 0) {
                if (!fc->too_large && fc->size + *upload_data_size <= FAKE_BODY_MAX) {
                        char *p = realloc(fc->body, fc->size + *upload_data_size + 1);
                        if (!p)
                                return MHD_NO;
                        memcpy(p + fc->size, upload_data, *upload_data_size);
                        fc->body = p;
                        fc->size += *upload_data_size;
                        fc->body[fc->size] = 0;
                } else
                        fc->too_large = true;
                *upload_data_size = 0;
                return MHD_YES;
        }

        log_debug("fake-server: %s %s", method, url);
        req = (FakeRequest) {
                .connection = c,
                .url = url,
                .method = method,
                .body = fc->body ? fc->body : "",
                .body_size = fc->size,
        };
        if (fc->too_large)
                return fake_reply_error(s, &req, MHD_HTTP_CONTENT_TOO_LARGE, NULL);
        return s->vt->handle(s, &req);
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
        FakeServer *s = cls;
        FakeConn *fc = *con_cls;
        FakeWaiter *w = waiter_find(s, c);

        /* A parked request whose connection went without being answered. */
        if (w)
                waiter_drop(s, w);
        if (!fc)
                return;
        free(fc->body);
        free(fc);
        *con_cls = NULL;
}

/* ---- the loop ------------------------------------------------------------ */

static void timer_cb(uv_timer_t *timer);

/*
 * Let MHD accept, read, answer and expire connections, then wake up again when
 * MHD_get_timeout() says: MHD's epoll set is edge-triggered, so data MHD has
 * seen but not processed yet is only announced through a timeout of 0.
 */
static void fake_server_run(FakeServer *s) {
        MHD_UNSIGNED_LONG_LONG timeout_ms;

        if (s->closing)
                return;
        if (MHD_run(s->mhd) != MHD_YES)
                log_debug("fake-server: MHD_run() failed, ignoring");
        if (MHD_get_timeout(s->mhd, &timeout_ms) == MHD_YES)
                (void) uv_timer_start(&s->timer, timer_cb, (uint64_t) timeout_ms, 0);
        else
                (void) uv_timer_stop(&s->timer);
}

static void timer_cb(uv_timer_t *timer) {
        fake_server_run(container_of(timer, FakeServer, timer));
}

static void poll_cb(uv_poll_t *poll, int status, int events) {
        FakeServer *s = container_of(poll, FakeServer, poll);

        if (status < 0)
                log_debug("fake-server: polling MHD's epoll fd failed: %s", uv_strerror(status));
        fake_server_run(s);
}

_printf_(2, 0) static void mhd_log(void *cls, const char *fmt, va_list ap) {
        char buf[256];
        size_t n;

        (void) vsnprintf(buf, sizeof(buf), fmt, ap);
        n = strlen(buf);
        while (n > 0 && buf[n - 1] == '\n')
                buf[--n] = 0;
        log_debug("fake-server: microhttpd: %s", buf);
}

/*
 * A loopback literal into *@ret_sa with @port set, and its URL host part into
 * @ret_host: AF_INET or AF_INET6, -EINVAL for no literal, -EADDRNOTAVAIL for
 * an address that is not loopback.
 */
static int parse_loopback(const char *address, uint16_t port, struct sockaddr_storage *ret_sa,
                          char ret_host[static FAKE_HOST_MAX]) {
        struct sockaddr_storage sa = {};
        struct sockaddr_in *in = (struct sockaddr_in *) &sa;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &sa;
        int family;

        if (!address)
                return -EINVAL;
        if (inet_pton(AF_INET, address, &in->sin_addr) == 1) {
                if ((ntohl(in->sin_addr.s_addr) >> 24) != 127)
                        return -EADDRNOTAVAIL;
                in->sin_family = family = AF_INET;
                in->sin_port = htons(port);
        } else if (inet_pton(AF_INET6, address, &in6->sin6_addr) == 1) {
                if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
                        return -EADDRNOTAVAIL;
                in6->sin6_family = family = AF_INET6;
                in6->sin6_port = htons(port);
        } else
                return -EINVAL;

        /* Written from the parsed address, so nothing the caller typed ends up in the URL. */
        if (family == AF_INET) {
                char a[INET_ADDRSTRLEN];

                if (!inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a)))
                        return -EINVAL;
                (void) snprintf(ret_host, FAKE_HOST_MAX, "http://%s", a);
        } else
                (void) snprintf(ret_host, FAKE_HOST_MAX, "http://[::1]");
        *ret_sa = sa;
        return family;
}

int fake_server_new(uv_loop_t *loop, CloudKind cloud, const char *address, uint16_t port, FakeServer **ret) {
        const union MHD_DaemonInfo *info;
        const FakeCloud *vt = NULL;
        struct sockaddr_storage sa;
        unsigned flags;
        FakeServer *s;
        char host[FAKE_HOST_MAX];
        int family, r, epoll_fd;

        assert(loop);
        assert(ret);

        for (size_t i = 0; i < ELEMENTSOF(fake_clouds); i++)
                if (fake_clouds[i]->cloud == cloud)
                        vt = fake_clouds[i];
        if (!vt)
                return -EOPNOTSUPP;
        family = parse_loopback(address, port, &sa, host);
        if (family < 0)
                return family;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->vt = vt;
        s->state = calloc(1, MAX(vt->state_size, (size_t) 1));
        if (!s->state) {
                free(s);
                return -ENOMEM;
        }
        if (vt->init) {
                r = vt->init(s);
                if (r < 0) {
                        free(s->state);
                        free(s);
                        return r;
                }
        }
        r = creds_init(s);
        if (r < 0) {
                fake_server_free_now(s);
                return r;
        }

        /*
         * External epoll mode: no MHD_USE_INTERNAL_POLLING_THREAD, and
         * MHD_USE_TURBO is not needed. GCP's hanging GETs need
         * MHD_ALLOW_SUSPEND_RESUME (which adds an ITC fd to MHD's epoll set);
         * fake_resume() runs MHD after each resume.
         */
        flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
        if (family == AF_INET6)
                flags |= MHD_USE_IPv6;

        errno = 0;
        s->mhd = MHD_start_daemon(flags, port, NULL, NULL, access_cb, s,
                                  /* First, or MHD prints what it finds before it to stderr. */
                                  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                                  MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &sa,
                                  MHD_OPTION_CONNECTION_LIMIT, FAKE_CONNECTIONS_MAX,
                                  MHD_OPTION_CONNECTION_TIMEOUT, FAKE_CONNECTION_TIMEOUT_SEC,
                                  MHD_OPTION_CONNECTION_MEMORY_LIMIT, FAKE_CONNECTION_MEMORY,
                                  MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s,
                                  MHD_OPTION_END);
        if (!s->mhd) {
                /* MHD has no error codes; errno is usually what bind() or epoll_create() left. */
                r = errno > 0 ? -errno : -EIO;
                fake_server_free_now(s);
                return r;
        }

        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        epoll_fd = info ? info->epoll_fd : -1;
        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
        s->port = info ? info->port : 0;
        if (epoll_fd < 0 || s->port == 0) {
                MHD_stop_daemon(s->mhd);
                fake_server_free_now(s);
                return -EIO;
        }
        (void) snprintf(s->url, sizeof(s->url), "%s:%u", host, (unsigned) s->port);

        /* From here on @s is freed only by fake_server_close(). */
        (void) uv_timer_init(loop, &s->timer);
        s->timer.data = s;
        s->timer_initialized = true;
        s->n_handles++;
        (void) uv_timer_init(loop, &s->wait_timer);
        s->wait_timer.data = s;
        s->wait_timer_initialized = true;
        s->n_handles++;

        r = uv_poll_init(loop, &s->poll, epoll_fd);
        if (r < 0)
                goto fail;
        s->poll.data = s;
        s->poll_initialized = true;
        s->n_handles++;

        r = uv_poll_start(&s->poll, UV_READABLE, poll_cb);
        if (r < 0)
                goto fail;

        fake_server_run(s);

        log_debug("fake-server: serving %s metadata on %s", cloud_kind_to_string(cloud), s->url);
        *ret = s;
        return 0;

fail:
        fake_server_close(s);
        return r;
}

uint16_t fake_server_port(FakeServer *s) {
        assert(s);
        return s->port;
}

const char *fake_server_url(FakeServer *s) {
        assert(s);
        return s->url;
}

const char *fake_server_instance_id(FakeServer *s) {
        assert(s);
        return s->vt->instance_id ? s->vt->instance_id(s) : NULL;
}

const char *fake_server_events(FakeServer *s) {
        assert(s);
        return s->vt->events;
}

int fake_server_set_notice(FakeServer *s, const char *event, uint64_t time_usec) {
        assert(s);
        return s->vt->set_notice(s, event, time_usec);
}

void fake_server_clear_notice(FakeServer *s) {
        assert(s);
        s->vt->clear_notice(s);
}

uint64_t fake_server_requests(FakeServer *s) {
        assert(s);
        return s->requests;
}
